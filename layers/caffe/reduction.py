"""Caffe's layers that reduce a blob: Reduction (SUM, ASUM, SUMSQ, MEAN over the tail axes) and ArgMax."""

from __future__ import annotations

import math

import torch

from layers.base import Layer, Param, Params, channel_axis
from layers.registry import register_layer


@register_layer("Reduction")
class Reduction(Layer):
    """Reduces all axes from `axis` on to one number per index of the axes before it, times coeff:

        SUM: coeff * sum(x)   ASUM: coeff * sum(|x|)   SUMSQ: coeff * sum(x^2)   MEAN: coeff / D * sum(x)

    with D = the number of values reduced (the product of the dims from `axis` on).
    Bottoms: x (d_0, ..., d_{n-1}).  Tops: y (d_0, ..., d_{axis-1}); axis 0 (the default) gives a 0-axis blob.
    Params (reduction_param): operation = SUM (SUM = 1, ASUM = 2, SUMSQ = 3, MEAN = 4), axis = 0 (negative counts
    from the end), coeff = 1.
    Gradient (Caffe's): SUM, MEAN coeff (/ D); ASUM coeff * sign(x) (0 at 0); SUMSQ 2 coeff x.

    Examples::

        >>> import torch
        >>> from layers.build import make_layer
        >>> red = make_layer('type: "Reduction" bottom: "x" top: "y" reduction_param { operation: SUMSQ axis: 1 }',
        ...                  bottom_shapes=[(2, 2)])
        >>> red(torch.tensor([[1.0, 2.0], [3.0, -1.0]])).tolist()   # per row: 1 + 4, 9 + 1
        [5.0, 10.0]
    """
    params = Params("reduction_param", operation=Param(("0", "SUM", "ASUM", "SUMSQ", "MEAN"), "SUM"),
                    axis=Param(int, 0), coeff=Param(float, 1.0))

    def setup(self, bottom_shapes):
        if self.p.operation == "0":
            raise self.error("operation 0 is not a ReductionOp (SUM = 1, ASUM = 2, SUMSQ = 3, MEAN = 4)")
        self.axis = channel_axis(self.p.axis, len(bottom_shapes[0]), self.where, "reduction_param axis")

    def forward(self, x):
        flat = x.reshape(tuple(x.shape[:self.axis]) + (-1,))
        op = self.p.operation
        if op == "ASUM":
            y = flat.abs().sum(-1)
        elif op == "SUMSQ":
            y = (flat * flat).sum(-1)
        else:
            y = flat.sum(-1)
        coeff = self.p.coeff / flat.shape[-1] if op == "MEAN" else self.p.coeff
        return y if coeff == 1 else y * coeff


@register_layer("ArgMax")
class ArgMax(Layer):
    """The top_k largest values of each item and where they are (not differentiable).

    Without axis: per item n of axis 0, over its D = count / N values flattened; top (N, 1, top_k) holding the
    indices, or with out_max_val (N, 2, top_k): [n, 0] the indices, [n, 1] the values; 1s pad the top to the
    bottom's number of axes (at least 3), e.g. (N, 1, top_k, 1) for a 4-D bottom.
    With axis: along that axis; top = the bottom's shape with dim `axis` = top_k, holding the indices, or the
    values when out_max_val.
    Order: largest first; equal values as Caffe's std::partial_sort of (value, index) pairs with
    std::greater: the larger index first. Indices are stored as floats.
    Bottoms: x.  Tops: one blob (above).
    Params (argmax_param): out_max_val = false, top_k = 1 (at most the number of candidates), axis (none).

    Examples::

        >>> import torch
        >>> from layers.build import make_layer
        >>> argmax = make_layer('type: "ArgMax" bottom: "x" top: "y" argmax_param { top_k: 2 }',
        ...                     bottom_shapes=[(1, 4)])
        >>> argmax(torch.tensor([[0.5, 2.0, 0.5, 1.0]])).tolist()   # (1, 1, 2): 2.0 at 1, then 1.0 at 3
        [[[1.0, 3.0]]]
    """
    params = Params("argmax_param", out_max_val=Param(bool, False), top_k=Param(int, 1), axis=Param(int))

    def setup(self, bottom_shapes):
        (shape,) = bottom_shapes
        p = self.p
        if p.top_k < 1:
            raise self.error(f"top_k must be >= 1, got {p.top_k}")
        self.has_axis = p.has("axis")
        if self.has_axis:
            self.axis = channel_axis(p.axis, len(shape), self.where, "argmax_param axis")
            if p.top_k > shape[self.axis]:
                raise self.error(f"top_k {p.top_k} is more than the {shape[self.axis]} values along axis "
                                 f"{self.axis} of {shape}")
        else:
            if not shape:
                raise self.error("the bottom needs at least one axis (the items) when no axis is given")
            if p.top_k > math.prod(shape[1:]):
                raise self.error(f"top_k {p.top_k} is more than the {math.prod(shape[1:])} values per item of "
                                 f"{shape}")

    def infer_top_shapes(self, bottom_shapes):
        (shape,) = bottom_shapes
        k = self.p.top_k
        if self.has_axis:
            top = list(shape)
            top[self.axis] = k
            return [tuple(top)]
        top = [1] * max(len(shape), 3)
        top[0], top[1], top[2] = shape[0], 2 if self.p.out_max_val else 1, k
        return [tuple(top)]

    def forward(self, x):
        x = x.detach()
        k = self.p.top_k
        rows = x.movedim(self.axis, -1) if self.has_axis else x.reshape(x.shape[0], -1)
        d = rows.shape[-1]
        # (value, index) pairs in descending order: ties put the larger index first, as std::greater on pairs
        values, order = torch.sort(rows.flip(-1), dim=-1, descending=True, stable=True)
        values, index = values[..., :k], (d - 1 - order[..., :k]).to(x.dtype)
        (top_shape,) = self.infer_top_shapes([tuple(x.shape)])
        if self.has_axis:
            return (values if self.p.out_max_val else index).movedim(-1, self.axis)
        if self.p.out_max_val:
            return torch.stack([index, values], dim=1).reshape(top_shape)
        return index.reshape(top_shape)
