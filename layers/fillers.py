"""Caffe's weight fillers (filler.hpp): constant, uniform, gaussian (with sparse), positive_unitball,
xavier, msra, bilinear. Fan-in is count / shape[0]; fan-out is count / shape[1] (count for 1-D blobs)."""

from __future__ import annotations

import math

import torch

from netdef.errors import NetError

__all__ = ["fill", "FILLER_TYPES"]

FILLER_TYPES = ("constant", "uniform", "gaussian", "positive_unitball", "xavier", "msra", "bilinear")


def _fan_n(t: torch.Tensor, variance_norm: str) -> float:
    count = t.numel()
    fan_in = count / t.shape[0]
    fan_out = count / t.shape[1] if t.dim() > 1 else count
    if variance_norm == "FAN_OUT":
        return fan_out
    if variance_norm == "AVERAGE":
        return (fan_in + fan_out) / 2.0
    return fan_in


def fill(t: torch.Tensor, filler, where: str) -> torch.Tensor:
    """Fill `t` in place as Caffe's filler of `filler.type` would (distribution, not bit-identical RNG)."""
    kind = filler.type
    if kind not in FILLER_TYPES:
        from netdef.params import did_you_mean
        raise NetError(f"{where}: unknown filler type '{kind}'{did_you_mean(kind, FILLER_TYPES)}")
    if t.numel() == 0:
        return t    # nothing to fill (and fan-based rules would divide by zero)
    if kind == "constant":
        return t.fill_(filler.value)
    if kind == "uniform":
        return t.uniform_(filler.min, filler.max)
    if kind == "gaussian":
        t.normal_(filler.mean, filler.std)
        if filler.sparse >= 0:
            if t.dim() < 2:
                raise NetError(f"{where}: sparse gaussian filler needs a blob of 2 or more axes")
            keep = torch.bernoulli(torch.full_like(t, min(1.0, filler.sparse / t.shape[0])))
            t.mul_(keep)
        return t
    if kind == "positive_unitball":
        t.uniform_(0.0, 1.0)
        rows = t.view(t.shape[0], -1)
        rows.div_(rows.sum(dim=1, keepdim=True))
        return t
    if kind == "xavier":
        scale = math.sqrt(3.0 / _fan_n(t, filler.variance_norm))
        return t.uniform_(-scale, scale)
    if kind == "msra":
        std = math.sqrt(2.0 / _fan_n(t, filler.variance_norm))
        return t.normal_(0.0, std)
    if kind == "bilinear":
        if t.dim() != 4 or t.shape[2] != t.shape[3]:
            raise NetError(f"{where}: bilinear filler needs a 4-D blob with square kernels, got {tuple(t.shape)}")
        k = t.shape[3]
        f = math.ceil(k / 2.0)
        c = (k - 1) / (2.0 * f)   # Caffe after its 2017 fix; equals the older rule for k = 2f - f % 2
        ramp = 1 - (torch.arange(k, dtype=t.dtype) / f - c).abs()
        t.copy_((ramp[:, None] * ramp[None, :]).expand_as(t))
        return t
    raise AssertionError(kind)
