"""Caffe's Embed layer (embed_layer.cpp): a lookup table, InnerProduct on one-hot inputs."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from layers.base import FILLER, Layer, Param, Params
from layers.registry import register_layer


@register_layer("Embed")
class Embed(Layer):
    """y[..., :] = W[int(x[...]), :] + b: each input value picks a row of W (one-hot InnerProduct).

    Bottoms: x (any shape; item numbers as floats, truncated toward zero as Caffe's static_cast<int>, in
    0..input_dim-1).  Tops: y (x's shape + (num_output,)).
    Params (embed_param): num_output (> 0), input_dim (> 0; one more than the largest index), bias_term = true,
    weight_filler / bias_filler (default constant 0).
    Blobs: weight (input_dim, num_output) (transposed from InnerProduct's, as Caffe), bias (num_output,) when
    bias_term.
    Gradient: to W (rows summed over their uses) and b; none to x (Caffe refuses it).
    An index out of range is an error on the CPU; on other devices checking would sync, so it gives NaN rows.

    Examples::

        >>> import torch
        >>> from layers.build import make_layer
        >>> embed = make_layer('type: "Embed" bottom: "x" top: "y" embed_param { num_output: 2 input_dim: 3 '
        ...                    'bias_term: false }', bottom_shapes=[(2,)])
        >>> with torch.no_grad():
        ...     _ = embed.weight.copy_(torch.tensor([[0.0, 1.0], [10.0, 11.0], [20.0, 21.0]]))
        >>> embed(torch.tensor([2.0, 0.0])).tolist()   # rows 2 and 0 of W
        [[20.0, 21.0], [0.0, 1.0]]
    """
    params = Params("embed_param", num_output=Param(int, 0), input_dim=Param(int, 0), bias_term=Param(bool, True),
                    weight_filler=Param(FILLER), bias_filler=Param(FILLER))

    def setup(self, bottom_shapes):
        p = self.p
        if p.num_output <= 0:
            raise self.error(f"embed_param num_output must be > 0, got {p.num_output}")
        if p.input_dim <= 0:
            raise self.error(f"embed_param input_dim must be > 0 (one more than the largest index), got "
                             f"{p.input_dim}")
        self.add_blob("weight", (p.input_dim, p.num_output), p.weight_filler)
        if p.bias_term:
            self.add_blob("bias", (p.num_output,), p.bias_filler)

    def forward(self, x):
        k = self.p.input_dim
        values = x.detach()
        ids = values.long()                                    # truncates toward zero
        bad = (ids < 0) | (ids >= k) | values.isnan()
        if ids.device.type == "cpu" and bool(bad.any()):
            raise self.error(f"index {values[bad][0].item():g} is out of range: inputs must be in 0..{k - 1} "
                             f"(input_dim {k})")
        y = F.embedding(torch.where(bad, 0, ids), self.weight)      # in the weights' dtype, not the index blob's
        if self.p.bias_term:
            y = y + self.bias
        if ids.device.type != "cpu":
            y = y.masked_fill(bad.unsqueeze(-1), math.nan)
        return y
