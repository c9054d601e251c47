"""Losses of the latent 2.5D training (Iqbal et al. Sec 4: L1 on the 2D soft-argmax pose and on the latent
depth), beside Caffe's EuclideanLoss and SigmoidCrossEntropyLoss (layers/caffe/loss.py)."""

from __future__ import annotations

import math

import torch

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


LOG_FLOOR = 1e-20     # Caffe's kLOG_THRESHOLD (MultinomialLogisticLoss): log(max(p, 1e-20)) stays finite


@register_layer("HeatmapKLLoss")
class HeatmapKLLoss(Layer):
    """loss = sum_{n,k} KL(T_nk || P_nk) / N = sum_{n,k,p} T_nkp (log T_nkp - log max(P_nkp, 1e-20)) / N, with
    T_nk = target_nk / sum_p target_nkp (each target map normalised to sum 1; 0 log 0 = 0).

    Pulls a normalised heatmap toward a target distribution, e.g. SoftArgmax's softmax maps toward GenHeatmap's
    Gaussians at the ground truth: the regulariser of Nibali et al. 2018 (DSNT), KL instead of their
    Jensen-Shannon. The soft-argmax L1 loss alone constrains only each map's expectation, so a map can put its
    mass on several separated peaks (or the dot grid of stride-2 deconvolutions) around the joint; this term
    makes it one peak of the target's width.
    Bottoms: heatmaps P (N, K, H, W), each map summing to 1 (SoftArgmax's first top); target (N, K, H, W),
    non-negative; a map that is all zero (a joint so far outside the crop that its Gaussian underflows) adds
    nothing. Tops: loss (0-d). Params: none.
    Gradients flow to P only (-T / P / N where P > 1e-20); the target is a constant, like a label.

    Examples::

        >>> import torch
        >>> from layers.build import make_layer
        >>> kl = make_layer('type: "HeatmapKLLoss" bottom: "p" bottom: "t" top: "loss"',
        ...                 bottom_shapes=[(1, 1, 1, 2), (1, 1, 1, 2)])
        >>> t = torch.tensor([[[[3.0, 1.0]]]])          # normalised: (0.75, 0.25)
        >>> round(kl(torch.tensor([[[[0.5, 0.5]]]]), t).item(), 6)   # 0.75 ln 1.5 + 0.25 ln 0.5
        0.130812
        >>> kl(t / 4, t).item()
        0.0
    """
    num_bottoms = 2
    is_loss = True

    def setup(self, bottom_shapes):
        p, t = bottom_shapes
        if len(p) != 4:
            raise self.error(f"bottom 0 (heatmaps) must be (N, K, H, W); got shape {p}")
        if tuple(t) != tuple(p):
            raise self.error(f"bottom 1 (target) must have the heatmaps' shape {p}; got {t}")

    def forward(self, heatmaps, target):
        n = heatmaps.shape[0]
        t = target.detach().to(torch.float32 if heatmaps.dtype in (torch.float16, torch.bfloat16)
                                else heatmaps.dtype).flatten(2)
        total = t.sum(dim=2, keepdim=True)
        t = t / torch.where(total > 0, total, torch.ones_like(total))    # an all-zero map stays zero
        p = heatmaps.to(t.dtype).flatten(2)
        # 0 log 0 = 0 by hand: torch.xlogy has no ONNX export
        log_ratio = torch.where(t > 0, t.clamp_min(LOG_FLOOR).log(), torch.zeros_like(t)) \
            - p.clamp_min(LOG_FLOOR).log()
        return (t * log_ratio).sum() / n
