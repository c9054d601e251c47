"""Process-wide performance settings.

    from nets.perf import keep_freed_memory
    keep_freed_memory()      # once per process: the source stage does it, and in its DataLoader workers

It does not import torch.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

__all__ = ["keep_freed_memory"]

# glibc's mallopt parameter numbers (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Blocks below this come from the heap and are reused; older glibc caps it at HEAP_MAX_SIZE / 2 (32 MiB on
# 64-bit), hence the fallback.
_MMAP_THRESHOLDS = (1 << 30, 32 << 20)
_TRIM_THRESHOLD = 2 ** 31 - 1

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse instead of handing it back to the OS.

    Why: a net allocates the same large tensors every batch (a batch of 32 heatmaps and depth maps is 11 MB
    each, a batch of 128 x 128 crops 6 MB). By default glibc serves blocks above its mmap threshold with a
    fresh mmap and unmaps them on free, and trims the heap top when more than its trim threshold is free, so
    every batch touches new pages again: each 4 KiB page costs a page fault and zeroing, which made the
    ground-truth layers ~20x slower than their arithmetic (benches/bench_gt.py). Raising both thresholds
    (mallopt M_MMAP_THRESHOLD to 1 GiB, M_TRIM_THRESHOLD to 2 GiB) keeps those blocks in the heap, where the
    next batch reuses them. The cost: a process's resident memory stays at its peak. PyTorch's CPU
    performance guide recommends a caching allocator (jemalloc or tcmalloc via LD_PRELOAD) for the same reason;
    this gets most of the benefit without a preload.

    Applies once per process (later calls just return the first result); forked children inherit the
    settings, spawned ones must call it themselves. Returns True when the settings are in effect, False where
    they cannot be applied (not Linux with glibc), in which case nothing is changed.
    """
    global _applied
    if _applied is None:
        _applied = _apply()
    return _applied


def _apply() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version      # only glibc has it (musl's mallopt is a no-op)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if not any(mallopt(_M_MMAP_THRESHOLD, value) for value in _MMAP_THRESHOLDS):
        return False
    return bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
