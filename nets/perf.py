"""Process-wide settings of the source stage's processes (Linux, glibc, through ctypes).

    from nets.perf import die_with_parent, keep_freed_memory
    keep_freed_memory()          # once per process: the source stage does it, and in its DataLoader workers
    die_with_parent(parent_pid)  # in each DataLoader worker: it ends when the main process ends, even by SIGKILL

It does not import torch.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import sys
import threading
import time

__all__ = ["die_with_parent", "keep_freed_memory", "heap_never_trimmed"]

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


def _glibc():
    """glibc through ctypes, with mallopt typed; None elsewhere (not Linux, or musl, whose mallopt is a no-op)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version      # only glibc has it
        libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc


def _apply() -> bool:
    libc = _glibc()
    if libc is None:
        return False
    if not any(libc.mallopt(_M_MMAP_THRESHOLD, value) for value in _MMAP_THRESHOLDS):
        return False
    return bool(libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))


@contextlib.contextmanager
def heap_never_trimmed():
    """keep_freed_memory(), and inside the block glibc never trims the heap (M_TRIM_THRESHOLD -1, "disables
    trimming completely", mallopt(3)): a working set above keep_freed_memory's 2 GiB trim threshold (a batch-32
    training step, ~8 GB) is otherwise handed back and page-faulted in again, more or less depending on what sits
    at the heap's top. On leaving, keep_freed_memory's threshold is back and the free heap is trimmed. Yields
    whether the setting is in effect (glibc only)."""
    libc = _glibc() if keep_freed_memory() else None
    if libc is not None and not libc.mallopt(_M_TRIM_THRESHOLD, -1):
        libc = None
    try:
        yield libc is not None
    finally:
        if libc is not None:
            libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
            libc.malloc_trim(0)


_PR_SET_PDEATHSIG = 1      # linux/prctl.h
POLL_SECONDS = 0.5


def die_with_parent(parent_pid: int | None, kernel_signal: bool = True) -> str:
    """End this process (SIGKILL to itself) as soon as its parent process dies, however the parent dies.

    Why: torch's DataLoader workers look for a dead main process only every 5 s while idle, and a worker whose
    results fill its pipe to a dead main process never ends (at exit it waits to flush them into a pipe whose
    read end the other workers still hold open): SIGKILLed or OOM-killed main processes left workers running.
    Call it first thing in the child, with `parent_pid` the pid of the process that started it (None when that
    is not this process's direct parent, e.g. under a forkserver).

    kernel_signal=True (Linux): prctl(PR_SET_PDEATHSIG, SIGKILL), the kernel kills this process the moment its
    parent exits; then, against the race of a parent that died before the prctl, this process kills itself
    when its parent is no longer `parent_pid`. The kernel ties the signal to the parent *thread* that forked
    this process, so use it only for children started from the parent's main thread (or any thread that
    outlives them). Otherwise (kernel_signal=False, or no prctl), a daemon thread polls os.getppid() every
    POLL_SECONDS and kills this process when the parent has changed (needs `parent_pid`).

    Returns "signal", "poll" or "none" (nothing could be set up: not Linux, or no parent_pid to poll against).
    """
    if kernel_signal and sys.platform.startswith("linux") and _set_pdeathsig(signal.SIGKILL):
        if parent_pid is not None and os.getppid() != parent_pid:
            os.kill(os.getpid(), signal.SIGKILL)     # the parent died before the prctl took effect
        return "signal"
    if parent_pid is None or not hasattr(os, "getppid") or sys.platform.startswith("win"):
        return "none"
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), signal.SIGKILL)
    threading.Thread(target=_watch_parent, args=(parent_pid,), name="die_with_parent", daemon=True).start()
    return "poll"


def _set_pdeathsig(sig: int) -> bool:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return False
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0


def _watch_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(POLL_SECONDS)
    os.kill(os.getpid(), signal.SIGKILL)
