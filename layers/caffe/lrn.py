"""Caffe's local response normalisation (LRN)."""

from __future__ import annotations

import torch.nn.functional as F

from layers.base import Layer, Param, Params
from layers.registry import register_layer


@register_layer("LRN")
class LRN(Layer):
    """Local response normalisation, n = local_size (odd), windows centred and zero padded:

    ACROSS_CHANNELS: y = x / (k + alpha / n * sum_{n neighbouring channels} x^2) ** beta
    WITHIN_CHANNEL:  y = x / (1 + alpha / n^2 * sum_{n x n spatial window} x^2) ** beta
    (Caffe builds WITHIN_CHANNEL from AVE pooling with pad (n-1)/2, whose divisor is always n*n here, then a
    Power layer with shift 1: k is not used in that mode.)
    Bottoms: x (N, C, H, W).  Tops: y (same shape).
    Params (lrn_param): local_size = 5, alpha = 1, beta = 0.75, norm_region = ACROSS_CHANNELS
    (or WITHIN_CHANNEL), k = 1, engine (ignored).
    """
    params = Params("lrn_param", local_size=Param(int, 5), alpha=Param(float, 1.0), beta=Param(float, 0.75),
                    norm_region=Param(("ACROSS_CHANNELS", "WITHIN_CHANNEL"), "ACROSS_CHANNELS"), k=Param(float, 1.0),
                    engine=Param(("DEFAULT", "CAFFE", "CUDNN"), "DEFAULT"))

    def setup(self, bottom_shapes):
        n = self.p.local_size
        if n <= 0 or n % 2 == 0:
            raise self.error(f"LRN only supports odd positive values for local_size, got {n}")
        (shape,) = bottom_shapes
        if len(shape) != 4:
            raise self.error(f"bottom must have 4 axes (num, channels, height, width), got shape {shape}")

    def forward(self, x):
        n, pad = self.p.local_size, (self.p.local_size - 1) // 2
        sq = x.square()
        # zero padding made explicit: the windows always divide by their full size, as Caffe's do
        if self.p.norm_region == "ACROSS_CHANNELS":
            # mean over n neighbouring channels: pool a (N, 1, C, H, W) view along C only
            padded = F.pad(sq, (0, 0, 0, 0, pad, pad)).unsqueeze(1)
            scale = self.p.k + self.p.alpha * F.avg_pool3d(padded, (n, 1, 1), stride=1).squeeze(1)
        else:
            padded = F.pad(sq, (pad, pad, pad, pad))
            scale = 1.0 + self.p.alpha * F.avg_pool2d(padded, n, stride=1)
        return x * scale.pow(-self.p.beta)
