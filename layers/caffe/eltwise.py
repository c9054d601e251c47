"""Eltwise: element-wise product, (weighted) sum or maximum of several blobs of one shape."""

from __future__ import annotations

import torch

from layers.base import Layer, Param, Params
from layers.registry import register_layer


@register_layer("Eltwise")
class Eltwise(Layer):
    """Element-wise combination of 2+ bottoms of identical shape.

    PROD: y = x_0 * x_1 * ... ;  SUM: y = sum_i coeff_i * x_i (coeff_i = 1 when no coeff is given);
    MAX: y = max_i x_i, the gradient going to one bottom per element, chosen as Caffe's mask does
    (between bottoms 0 and 1 a tie goes to 1; a later bottom must be strictly greater to win).

    Bottoms: 2 or more blobs, all of the same shape.  Tops: y (that shape).
    Params (eltwise_param): operation = SUM (PROD | SUM | MAX), coeff (repeated float, one per bottom,
    SUM only), stable_prod_grad = true (no effect: autograd's product gradient needs no division).
    Differs from Caffe: coeff with MAX is an error (Caffe ignores it silently).

    Examples::

        >>> import torch
        >>> from layers.build import make_layer
        >>> diff = make_layer('type: "Eltwise" bottom: "a" bottom: "b" top: "y" eltwise_param { operation: SUM '
        ...                   'coeff: 1 coeff: -1 }', bottom_shapes=[(1, 3), (1, 3)])
        >>> diff(torch.tensor([[5.0, 5.0, 5.0]]), torch.tensor([[1.0, 2.0, 3.0]])).tolist()   # 1 * a + (-1) * b
        [[4.0, 3.0, 2.0]]
    """
    params = Params("eltwise_param", operation=Param(("PROD", "SUM", "MAX"), "SUM"), coeff=Param(float, repeated=True),
                    stable_prod_grad=Param(bool, True))
    num_bottoms = (2, None)

    def setup(self, bottom_shapes):
        p = self.p
        if p.coeff and p.operation != "SUM":
            raise self.error(f"coeff is only allowed with operation SUM, not {p.operation}")
        if p.coeff and len(p.coeff) != len(bottom_shapes):
            raise self.error(f"takes one coeff per bottom: {len(p.coeff)} coeff(s) for "
                             f"{len(bottom_shapes)} bottoms")
        for i, s in enumerate(bottom_shapes[1:], 1):
            if s != bottom_shapes[0]:
                raise self.error(f"all bottoms must have the same shape: bottom 0 is {bottom_shapes[0]}, "
                                 f"bottom {i} is {s}")

    def forward(self, *xs):
        op = self.p.operation
        if op == "SUM":
            coeff = self.p.coeff or [1.0] * len(xs)
            y = xs[0] * coeff[0] if coeff[0] != 1.0 else xs[0]
            for c, x in zip(coeff[1:], xs[1:]):
                y = y + c * x if c != 1.0 else y + x
            return y
        if op == "PROD":
            y = xs[0]
            for x in xs[1:]:
                y = y * x
            return y
        y = torch.where(xs[0] > xs[1], xs[0], xs[1])
        for x in xs[2:]:
            y = torch.where(x > y, x, y)
        return y
