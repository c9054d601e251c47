"""Caffe's Convolution and Deconvolution layers (base_conv_layer.cpp, conv_layer.cpp, deconv_layer.cpp)."""

from __future__ import annotations

import math

import torch.nn.functional as F

from layers.base import FILLER, REQUIRED, Layer, Param, Params, all_shapes_equal, channel_axis
from layers.registry import register_layer

CONVOLUTION_PARAM = Params(
    "convolution_param",
    num_output=Param(int, REQUIRED), bias_term=Param(bool, True),
    pad=Param(int, repeated=True), kernel_size=Param(int, repeated=True), stride=Param(int, repeated=True),
    dilation=Param(int, repeated=True),
    pad_h=Param(int, 0), pad_w=Param(int, 0), kernel_h=Param(int, 0), kernel_w=Param(int, 0),
    stride_h=Param(int, 0), stride_w=Param(int, 0),
    group=Param(int, 1), weight_filler=Param(FILLER), bias_filler=Param(FILLER),
    engine=Param(("DEFAULT", "CAFFE", "CUDNN"), "DEFAULT"), axis=Param(int, 1), force_nd_im2col=Param(bool, False))

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_DECONV = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def per_axis(layer, name: str, short: str | None, n: int, default: int | None, what: str = "convolution"
             ) -> tuple[int, ...]:
    """Caffe's geometry rule (ConvolutionParameter, also read by Im2col): one value per spatial axis from
    `name` (given once or once per axis) or, 2-D only, from short_h / short_w; `what` names the op in messages."""
    p = layer.p
    values = getattr(p, name)
    if short is not None:
        h, w = f"{short}_h", f"{short}_w"
        if p.has(h) or p.has(w):
            if n != 2:
                raise layer.error(f"{h} / {w} can only be used for 2-D {what}; this bottom has {n} "
                                  f"spatial axes (use {name})")
            if values:
                raise layer.error(f"give either {name} or {h} / {w}, not both")
            # kernel_h/w and stride_h/w have no default in caffe.proto (Caffe then fails on the 0)
            if short != "pad" and not (p.has(h) and p.has(w)):
                raise layer.error(f"give both {h} and {w}")
            return getattr(p, h), getattr(p, w)
    if not values:
        if default is None:
            raise layer.error(f"missing {name}" + (f" (or {short}_h and {short}_w)" if n == 2 else ""))
        return (default,) * n
    if len(values) not in (1, n):
        raise layer.error(f"{name} must be given once, or once per spatial axis ({n}); given "
                          f"{len(values)} times")
    return tuple(values) * n if len(values) == 1 else tuple(values)


class _BaseConv(Layer):
    """Shared setup of Convolution and Deconvolution (Caffe's BaseConvolutionLayer)."""
    params = CONVOLUTION_PARAM
    num_bottoms = (1, None)
    num_tops = (1, None)
    transposed = False

    def setup(self, bottom_shapes):
        p = self.p
        if self.num_top_blobs != len(bottom_shapes):
            raise self.error(f"needs as many tops as bottoms (one output per input), got {len(bottom_shapes)} "
                             f"bottom(s) and {self.num_top_blobs} top(s)")
        if not all_shapes_equal(bottom_shapes):
            raise self.error(f"all bottoms must have the same shape, got {bottom_shapes}")
        shape = bottom_shapes[0]
        self.axis = channel_axis(p.axis, len(shape), self.where)
        n = len(shape) - self.axis - 1
        if n not in _CONV:
            raise self.error(f"supports 1 to 3 spatial axes after the channel axis {self.axis}, but the bottom "
                             f"{shape} has {n}")
        self.kernel = per_axis(self, "kernel_size", "kernel", n, None)
        self.stride = per_axis(self, "stride", "stride", n, 1)
        self.pad = per_axis(self, "pad", "pad", n, 0)
        self.dilation = per_axis(self, "dilation", None, n, 1)
        for name, vals, low in (("kernel size", self.kernel, 1), ("stride", self.stride, 1),
                                ("pad", self.pad, 0), ("dilation", self.dilation, 1)):
            if min(vals) < low:
                raise self.error(f"{name} must be >= {low}, got {list(vals)}")
        channels = shape[self.axis]
        num_output, group = self.output_channels_and_group(channels)
        if num_output <= 0:
            raise self.error(f"num_output must be > 0, got {num_output}")
        if group <= 0:
            raise self.error(f"group must be > 0, got {group}")
        if channels % group:
            raise self.error(f"the bottom's {channels} channels are not divisible by group {group}")
        if num_output % group:
            raise self.error(f"num_output {num_output} is not divisible by group {group}")
        self.groups = group
        self._check_sizes(shape[self.axis + 1:])
        if self.transposed:
            weight_shape = (channels, num_output // group, *self.kernel)
        else:
            weight_shape = (num_output, channels // group, *self.kernel)
        self.add_blob("weight", weight_shape, p.weight_filler)
        if p.bias_term:
            self.add_blob("bias", (num_output,), p.bias_filler)

    def output_channels_and_group(self, channels: int) -> tuple[int, int]:
        """(num_output, group) for a bottom of `channels` channels: convolution_param's, here. Subclasses that
        fix them (a depthwise convolution: (C, C)) override this; setup checks the values either way."""
        return self.p.num_output, self.p.group

    def _check_sizes(self, sizes) -> None:
        """Caffe's output size must be positive for these spatial sizes (see the class docstrings)."""
        for size, k, s, p, d in zip(sizes, self.kernel, self.stride, self.pad, self.dilation):
            extent = d * (k - 1) + 1
            if self.transposed:
                out = s * (size - 1) + extent - 2 * p
                if out <= 0:
                    raise self.error(f"output size {out} <= 0 for bottom spatial size {tuple(sizes)}")
            elif size + 2 * p < extent:
                raise self.error(f"kernel extent {extent} is larger than the padded input size "
                                 f"{size} + 2*{p} (bottom spatial size {tuple(sizes)})")

    def _one(self, x):
        lead = x.shape[:self.axis]
        self._check_sizes(x.shape[self.axis + 1:])
        x = x.reshape((math.prod(lead),) + tuple(x.shape[self.axis:]))
        bias = self.bias if self.p.bias_term else None
        n = len(self.kernel)
        if self.transposed:
            y = _DECONV[n](x, self.weight, bias, self.stride, self.pad, 0, self.groups, self.dilation)
        else:
            y = _CONV[n](x, self.weight, bias, self.stride, self.pad, self.dilation, self.groups)
        return y.reshape(tuple(lead) + tuple(y.shape[1:]))

    def forward(self, *bottoms):
        tops = tuple(self._one(x) for x in bottoms)
        return tops[0] if len(tops) == 1 else tops


@register_layer("Convolution")
class Convolution(_BaseConv):
    """N-D convolution (1-D, 2-D or 3-D spatial), grouped and dilated, with an optional bias:
        y[n, o, i] = bias[o] + sum_{c in group(o), k} W[o, c, k] * x_pad[n, c, i * stride + k * dilation]

    Bottoms: one or more x (..., C, *spatial), all of one shape; the axes before `axis` are independent
    samples.  Tops: one y per bottom, (..., num_output, *out), the same weights for all;
        out = (in + 2 * pad - (dilation * (kernel - 1) + 1)) // stride + 1.
    Params (convolution_param): num_output (required), bias_term = true, kernel_size (required; once, or once
    per spatial axis), stride = 1, pad = 0, dilation = 1 (same repeated forms), kernel_h/kernel_w,
    stride_h/stride_w, pad_h/pad_w (2-D only; not together with the repeated form), group = 1 (divides C and
    num_output), weight_filler / bias_filler (default constant 0), axis = 1, force_nd_im2col and engine
    (accepted, no effect).
    Blobs: weight (num_output, C / group, *kernel), bias (num_output,) when bias_term.
    Differences from Caffe: only 1 to 3 spatial axes (Caffe: any number); a kernel extent larger than the
    padded input is an error (Caffe's integer division would give one output computed over zeros).

    Examples::

        >>> import torch
        >>> from layers.build import make_layer
        >>> conv = make_layer('type: "Convolution" bottom: "x" top: "y" convolution_param { num_output: 1 '
        ...                   'kernel_size: 2 weight_filler { type: "constant" value: 1 } '
        ...                   'bias_filler { type: "constant" value: 0.5 } }', bottom_shapes=[(1, 1, 3, 3)])
        >>> conv(torch.arange(9.0).view(1, 1, 3, 3)).tolist()   # each 2x2 window's sum, plus 0.5
        [[[[8.5, 12.5], [20.5, 24.5]]]]
    """


@register_layer("Deconvolution")
class Deconvolution(_BaseConv):
    """Transposed convolution (the gradient of Convolution w.r.t. its input), with an optional bias:
    every input pixel adds W[c, o, :] * x[n, c, i] to the output window starting at i * stride - pad.

    Bottoms: one or more x (..., C, *spatial), all of one shape.  Tops: one y per bottom,
    (..., num_output, *out), out = stride * (in - 1) + dilation * (kernel - 1) + 1 - 2 * pad.
    Params (convolution_param): as Convolution. Group = C with num_output = C, a bilinear weight_filler and
    param { lr_mult: 0 } is the usual fixed bilinear upsampling (FCN).
    Blobs: weight (C, num_output / group, *kernel) (Caffe's layout, the same as torch's conv_transpose),
    bias (num_output,) when bias_term.
    Differences from Caffe: only 1 to 3 spatial axes.

    Examples::

        >>> import torch
        >>> from layers.build import make_layer
        >>> up = make_layer('type: "Deconvolution" bottom: "x" top: "y" convolution_param { num_output: 1 '
        ...                 'kernel_size: 2 stride: 2 bias_term: false weight_filler { type: "constant" value: 1 } }',
        ...                 bottom_shapes=[(1, 1, 2, 2)])
        >>> up(torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])).tolist()   # each pixel fills its own 2x2 block
        [[[[1.0, 1.0, 2.0, 2.0], [1.0, 1.0, 2.0, 2.0], [3.0, 3.0, 4.0, 4.0], [3.0, 3.0, 4.0, 4.0]]]]
    """
    transposed = True
