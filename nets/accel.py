"""Speed options shared by the solver and run-net: mixed precision (--amp) and channels_last.

Mixed precision runs each forward pass under torch.autocast: convolutions and matrix products in a 16-bit
type, reductions, softmax, exp and the losses in float32 (autocast's own op lists); weights, gradients, the
solver's history and snapshots stay float32. bfloat16 (the default where the device has it: CPUs, NVIDIA
Ampere and newer) keeps float32's exponent range and needs no loss scaling; float16 does, so training in it
scales the loss dynamically (LossScaler, the scheme of torch.amp.GradScaler): an iteration whose gradients
overflow is skipped and the scale halves; after `interval` good iterations it doubles.
"""

from __future__ import annotations

import contextlib

import torch

from netdef.errors import NetError

__all__ = ["AMP_DTYPES", "amp_dtype", "autocast", "LossScaler", "to_channels_last"]

AMP_DTYPES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def amp_dtype(device: torch.device, requested: str | None) -> torch.dtype | None:
    """The autocast dtype for `requested` (None: no mixed precision; "auto": bfloat16 where supported, else
    float16)."""
    if requested is None:
        return None
    if requested == "auto":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            return torch.float16
        return torch.bfloat16
    if requested not in AMP_DTYPES:
        raise NetError(f"unknown mixed-precision type '{requested}' (use bfloat16 or float16)")
    return AMP_DTYPES[requested]


def autocast(device: torch.device, dtype: torch.dtype | None):
    """torch.autocast for the device, or a no-op context when dtype is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    """4-D tensors in NHWC memory order (the faster layout for convolutions on tensor cores and oneDNN)."""
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


class LossScaler:
    """Dynamic loss scaling for float16 training: backward runs on loss * scale; `unscale` divides the
    gradients back and says whether they are all finite; `update` adapts the scale."""

    def __init__(self, scale: float = 2.0 ** 16, growth: float = 2.0, backoff: float = 0.5, interval: int = 2000):
        self.scale, self.growth, self.backoff, self.interval = float(scale), growth, backoff, interval
        self.good_steps = 0

    def unscale(self, grads: list[torch.Tensor]) -> bool:
        grads = [g for g in grads if g is not None]
        if not grads:
            return True
        torch._foreach_mul_(grads, 1.0 / self.scale)
        return bool(torch.stack([g.isfinite().all() for g in grads]).all())

    def update(self, finite: bool) -> None:
        if not finite:
            self.scale *= self.backoff
            self.good_steps = 0
            return
        self.good_steps += 1
        if self.good_steps >= self.interval:
            self.scale *= self.growth
            self.good_steps = 0

    def state(self) -> dict:
        return {"scale": self.scale, "good_steps": self.good_steps}

    def set_state(self, state: dict) -> None:
        self.scale, self.good_steps = float(state["scale"]), int(state["good_steps"])
