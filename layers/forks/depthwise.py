"""Depthwise convolution from two Caffe forks: ConvolutionDepthwise (sp2823's conv_dw_layer, BVLC/caffe pull
request 5665, the one ShuffleNet nets such as strawberryfg/RHDHand's use) and DepthwiseConvolution
(yonghenglh6/DepthwiseConvolution, for MobileNet)."""

from __future__ import annotations

from layers.base import Param, Params
from layers.caffe.conv import CONVOLUTION_PARAM, Convolution
from layers.registry import register_layer

# num_output is optional here: sp2823's layer never reads it (the top has the bottom's channels)
DEPTHWISE_PARAM = Params("convolution_param", **{**CONVOLUTION_PARAM.fields(), "num_output": Param(int, 0)})


@register_layer("ConvolutionDepthwise", aliases=("DepthwiseConvolution",))
class ConvolutionDepthwise(Convolution):
    """Depthwise convolution: each channel convolved with its own kernel, plus an optional bias per channel:
        y[n, c, i] = bias[c] + sum_k W[c, 0, k] * x_pad[n, c, i * stride + k * dilation]
    i.e. Convolution with group = num_output = C.

    Bottoms: one or more x (..., C, *spatial), all of one shape.  Tops: one y per bottom, (..., C, *out),
        out = (in + 2 * pad - (dilation * (kernel - 1) + 1)) // stride + 1 (as Convolution).
    Params (convolution_param, as Convolution): kernel_size (required) or kernel_h + kernel_w, stride = 1,
    pad = 0, dilation = 1 (and their _h / _w forms), bias_term = true, weight_filler / bias_filler (default
    constant 0); num_output is optional and, when given, must equal C; group is ignored (any value).
    Blobs: weight (C, 1, *kernel), bias (C,) when bias_term: Caffe's Convolution blobs for group = C, so weights
    convert both ways between this type and Convolution { group: C }.

    Forks. ConvolutionDepthwise is sp2823's conv_dw_layer (BVLC/caffe PR 5665, shipped with ShuffleNet
    forks): it reads neither num_output nor group (its top always has C channels; strawberryfg/RHDHand's
    ShuffleNet gives num_output: C everywhere and group: 3 on its last blocks), 2-D only. DepthwiseConvolution
    is yonghenglh6/DepthwiseConvolution: a BaseConvolutionLayer whose CPU path is Caffe's grouped convolution
    with the given num_output and group, and whose GPU kernel assumes group = num_output = C (its nets, made
    by its transfer script from MobileNet, give exactly that); the one case both paths agree on is this layer.
    Differences: num_output other than C is an error (sp2823's fork would silently output C channels,
    yonghenglh6's CPU path would compute a different layer); 1 to 3 spatial axes (the forks: 2); pad and stride
    may be left out (sp2823 reads pad(0) and stride(0) without a default).

    Examples::

        >>> import torch
        >>> from layers.build import make_layer
        >>> dw = make_layer('type: "ConvolutionDepthwise" bottom: "x" top: "y" convolution_param { num_output: 2 '
        ...                 'kernel_size: 2 bias_term: false weight_filler { type: "constant" value: 1 } }',
        ...                 bottom_shapes=[(1, 2, 2, 2)])
        >>> dw.weight.shape
        torch.Size([2, 1, 2, 2])
        >>> dw(torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]], [[[10.0, 20.0], [30.0, 40.0]]]]).view(1, 2, 2, 2)).tolist()
        [[[[10.0]], [[100.0]]]]
    """
    params = DEPTHWISE_PARAM

    def output_channels_and_group(self, channels):
        if self.p.has("num_output") and self.p.num_output != channels:
            raise self.error(f"num_output {self.p.num_output} must equal the bottom's {channels} channels (a "
                             f"depthwise convolution has one output channel per input channel; for other counts "
                             f"use Convolution with group)")
        return channels, channels
