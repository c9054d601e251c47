"""Losses of the latent 2.5D training (Iqbal et al. Sec 4: L1 on the 2D soft-argmax pose and on the latent
depth), beside Caffe's EuclideanLoss and SigmoidCrossEntropyLoss (layers/caffe/loss.py)."""

from __future__ import annotations

import math

from layers.base import Layer
from layers.registry import register_layer


@register_layer("L1Loss")
class L1Loss(Layer):
    """loss = sum_i w_i |a_i - b_i| / N, N = a.shape[0] (the batch: EuclideanLoss's normalisation, without its 1/2).

    Bottoms: a (N, ...), b (N, ...) with the same count per item (shapes may differ, e.g. (N, 42) and
    (N, 42, 1, 1)); optional weights w (N, ...) whose count per item G divides a's count per item D: each
    weight applies to a run of D / G consecutive elements, so a (N, 21) visibility mask weights the u, v pairs
    of a (N, 42) 2D pose, or x, y, z triples of a (N, 63) 3D pose. Without weights every w_i is 1.
    Tops: loss (0-d).  Params: none.
    Gradients flow to a and b (sign(a - b) w / N, 0 where a = b); none to the weights (constants, like
    a label). The loss is not divided by the weights' sum, so a batch with
    fewer visible keypoints weighs less, as in the mean of the per-sample sums.

    Examples::

        >>> import torch
        >>> from layers.build import make_layer
        >>> l1 = make_layer('type: "L1Loss" bottom: "a" bottom: "b" bottom: "w" top: "loss"',
        ...                 bottom_shapes=[(2, 4), (2, 4), (2, 2)])
        >>> a, w = torch.tensor([[1.0, -1.0, 5.0, 5.0], [2.0, 0.0, 0.0, 0.0]]), torch.tensor([[1.0, 0.0], [1.0, 1.0]])
        >>> l1(a, torch.zeros(2, 4), w).item()   # w weights (u, v) pairs: (|1| + |-1| + 0 + |2|) / 2 samples
        2.0
    """
    num_bottoms = (2, 3)
    is_loss = True

    def setup(self, bottom_shapes):
        a, b = bottom_shapes[:2]
        if not a or not b or a[0] != b[0]:
            raise self.error(f"bottoms must have the same first dim (batch size): {a} and {b}")
        per_item = math.prod(a[1:])
        if per_item != math.prod(b[1:]):
            raise self.error(f"inputs must have the same dimension per item: {a} and {b}")
        if len(bottom_shapes) == 3:
            w = bottom_shapes[2]
            groups = math.prod(w[1:]) if w else 0
            if not w or w[0] != a[0] or groups == 0 or per_item % groups:
                raise self.error(f"bottom 2 (weights) must be (N, G) with N = {a[0]} and G dividing the "
                                 f"{per_item} values per item (one weight per run of values); got shape {w}")

    def forward(self, a, b, weights=None):
        n = a.shape[0]
        d = (a - b.reshape(a.shape)).abs().reshape(n, -1)
        if weights is not None:
            w = weights.detach().to(d.dtype).reshape(n, -1)
            d = (d.reshape(n, w.shape[1], -1) * w.unsqueeze(-1)).reshape(n, -1)
        return d.sum() / n
