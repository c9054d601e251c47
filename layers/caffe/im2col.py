"""Caffe's Im2col layer (im2col_layer.cpp): the columns a convolution multiplies, as a blob."""

from __future__ import annotations

import math

import torch.nn.functional as F

from layers.base import Layer, Param, Params, channel_axis
from layers.caffe.conv import CONVOLUTION_PARAM, per_axis
from layers.registry import register_layer

# convolution_param as Convolution reads it, but num_output is not needed (Im2col ignores it, as Caffe)
IM2COL_PARAM = Params("convolution_param", **{**CONVOLUTION_PARAM.fields(), "num_output": Param(int, 0)})


@register_layer("Im2col")
class Im2col(Layer):
    """Rearranges every kernel window into a column, as Caffe's im2col:

        y[..., c * K + k, o_1, ..., o_n] = x_pad[..., c, o_1 * s_1 + k_1 * d_1, ..., o_n * s_n + k_n * d_n]

    with k = (k_1, ..., k_n) the kernel offset in row-major order (K = prod(kernel)), zero padding of `pad` on
    both sides. Convolution is W (num_output, C * K) times these columns.
    Bottoms: x (..., C, *spatial) (1 or more spatial axes after the channel axis `axis`; the axes before it are
    independent samples).  Tops: y (..., C * K, *out), out = (in + 2 pad - (dilation (kernel - 1) + 1)) // stride + 1.
    Params (convolution_param, as Convolution): kernel_size (required; once or once per spatial axis) or
    kernel_h + kernel_w, stride = 1 (or stride_h + stride_w), pad = 0 (or pad_h / pad_w), dilation = 1, axis = 1;
    num_output, bias_term, group, fillers, engine and force_nd_im2col are read and ignored (no blobs).
    Gradient: Caffe's col2im (each input gets the sum over the columns holding it).
    Differs from Caffe: a kernel extent larger than the padded input is an error (Caffe's integer division
    would give one column window of garbage).

    Examples::

        >>> import torch
        >>> from layers.build import make_layer
        >>> im2col = make_layer('type: "Im2col" bottom: "x" top: "y" convolution_param { kernel_size: 2 }',
        ...                     bottom_shapes=[(1, 1, 2, 3)])
        >>> im2col(torch.arange(6.0).view(1, 1, 2, 3)).flatten(2).tolist()   # windows at (0,0), (0,1)
        [[[0.0, 1.0], [1.0, 2.0], [3.0, 4.0], [4.0, 5.0]]]
    """
    params = IM2COL_PARAM

    def setup(self, bottom_shapes):
        (shape,) = bottom_shapes
        self.axis = channel_axis(self.p.axis, len(shape), self.where, "convolution_param axis")
        n = len(shape) - self.axis - 1
        if n < 1:
            raise self.error(f"needs at least one spatial axis after the channel axis {self.axis}; the bottom "
                             f"{shape} has none")
        self.kernel = per_axis(self, "kernel_size", "kernel", n, None, "im2col")
        self.stride = per_axis(self, "stride", "stride", n, 1, "im2col")
        self.pad = per_axis(self, "pad", "pad", n, 0, "im2col")
        self.dilation = per_axis(self, "dilation", None, n, 1, "im2col")
        for name, vals, low in (("kernel size", self.kernel, 1), ("stride", self.stride, 1), ("pad", self.pad, 0),
                                ("dilation", self.dilation, 1)):
            if min(vals) < low:
                raise self.error(f"{name} must be >= {low}, got {list(vals)}")
        self.out_sizes(shape)

    def out_sizes(self, shape) -> list[int]:
        sizes = shape[self.axis + 1:]
        out = []
        for size, k, s, p, d in zip(sizes, self.kernel, self.stride, self.pad, self.dilation):
            extent = d * (k - 1) + 1
            if size + 2 * p < extent:
                raise self.error(f"kernel extent {extent} is larger than the padded input size {size} + 2*{p} "
                                 f"(bottom {tuple(shape)})")
            out.append((size + 2 * p - extent) // s + 1)
        return out

    def forward(self, x):
        out = self.out_sizes(tuple(x.shape))
        lead, c, n = tuple(x.shape[:self.axis]), x.shape[self.axis], len(self.kernel)
        xb = x.reshape((math.prod(lead), c) + tuple(x.shape[self.axis + 1:]))
        if n == 2:
            cols = F.unfold(xb, self.kernel, self.dilation, self.pad, self.stride)
        else:
            # pad, take every window along each spatial axis, keep every dilation-th tap of it
            pads = [v for p in reversed(self.pad) for v in (p, p)]
            w = F.pad(xb, pads) if any(self.pad) else xb
            for i, (k, s, d) in enumerate(zip(self.kernel, self.stride, self.dilation)):
                w = w.unfold(2 + i, d * (k - 1) + 1, s)
            w = w[(Ellipsis,) + tuple(slice(None, None, d) for d in self.dilation)]
            # (B, C, *out, *kernel) -> (B, C, *kernel, *out)
            w = w.permute(0, 1, *range(2 + n, 2 + 2 * n), *range(2, 2 + n))
            cols = w.reshape(xb.shape[0], c * math.prod(self.kernel), -1)
        return cols.reshape(lead + (c * math.prod(self.kernel), *out))
