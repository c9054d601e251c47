"""Caffe's InnerProduct (fully connected) layer (inner_product_layer.cpp)."""

from __future__ import annotations

import math

import torch.nn.functional as F

from layers.base import FILLER, REQUIRED, Layer, Param, Params, channel_axis
from layers.registry import register_layer


@register_layer("InnerProduct")
class InnerProduct(Layer):
    """y = x_flat @ W^T + b, with x_flat the bottom with the axes from `axis` on flattened to K values.

    Bottoms: x (d0, ..., d_{axis-1}, ...) with prod(shape[axis:]) = K.  Tops: y (d0, ..., d_{axis-1},
    num_output).
    Params (inner_product_param): num_output (required), bias_term = true, weight_filler / bias_filler
    (default constant 0), axis = 1 (negative counts from the end), transpose = false.
    Blobs: weight (num_output, K), or (K, num_output) when transpose; bias (num_output,) when bias_term.

    Examples::

        >>> import torch
        >>> from layers.build import make_layer
        >>> ip = make_layer('type: "InnerProduct" bottom: "x" top: "y" inner_product_param { num_output: 2 '
        ...                 'weight_filler { type: "constant" value: 1 } bias_filler { type: "constant" value: 10 } }',
        ...                 bottom_shapes=[(1, 3, 1, 1)])
        >>> ip(torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1)).tolist()   # (3, 1, 1) flattened: 1 + 2 + 3 + 10
        [[16.0, 16.0]]
    """
    params = Params("inner_product_param", num_output=Param(int, REQUIRED), bias_term=Param(bool, True),
                    weight_filler=Param(FILLER), bias_filler=Param(FILLER), axis=Param(int, 1),
                    transpose=Param(bool, False))

    def setup(self, bottom_shapes):
        (shape,) = bottom_shapes
        p = self.p
        self.axis = channel_axis(p.axis, len(shape), self.where)
        self.k = math.prod(shape[self.axis:])
        if p.num_output <= 0:
            raise self.error(f"num_output must be > 0, got {p.num_output}")
        n = p.num_output
        self.add_blob("weight", (self.k, n) if p.transpose else (n, self.k), p.weight_filler)
        if p.bias_term:
            self.add_blob("bias", (n,), p.bias_filler)

    def forward(self, x):
        lead = tuple(x.shape[:self.axis])
        if math.prod(x.shape[self.axis:]) != self.k:
            raise self.error(f"bottom {tuple(x.shape)} has {math.prod(x.shape[self.axis:])} values per "
                             f"sample from axis {self.axis} on, but the weights expect {self.k}")
        w = self.weight.t() if self.p.transpose else self.weight
        return F.linear(x.reshape(lead + (self.k,)), w, self.bias if self.p.bias_term else None)
