"""nets.perf: keep_freed_memory (glibc keeps big freed blocks: no mmap per batch, in the main process and in the
source stage's worker processes)."""

import ctypes
import os
import sys

import pytest
import torch

import nets.perf as perf
from layers.base import Layer, SourceLayer
from layers.registry import register_layer
from nets.net import Net

GLIBC = sys.platform.startswith("linux") and os.confstr("CS_GNU_LIBC_VERSION") is not None


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def big_block_is_mmapped(nbytes: int = 16 << 20) -> bool:
    """Whether glibc serves a block of nbytes with its own mmap (mallinfo2's hblkhd grows while it is held)."""
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    before = libc.mallinfo2().hblkhd
    block = libc.malloc(nbytes)
    grown = libc.mallinfo2().hblkhd - before
    libc.free(block)
    return grown >= nbytes


@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_applies_once_and_keeps_big_blocks_in_the_heap(monkeypatch):
    assert perf.keep_freed_memory() is True
    calls = []
    monkeypatch.setattr(perf, "_apply", lambda: calls.append(1) or False)
    assert perf.keep_freed_memory() is True and calls == []     # idempotent: applied once per process
    assert not big_block_is_mmapped()


def test_is_a_no_op_returning_false_off_linux(monkeypatch):
    monkeypatch.setattr(perf, "_applied", None)
    monkeypatch.setattr(sys, "platform", "darwin")
    assert perf.keep_freed_memory() is False
    assert perf.keep_freed_memory() is False


@register_layer("MmapProbeForTest")
class MmapProbe(SourceLayer):
    """A reader reporting, per sample, whether its process serves a 16 MB block with mmap (1) or not (0)."""

    def infer_top_shapes(self, bottom_shapes):
        return [bottom_shapes[0]]

    def forward(self, index):
        return torch.full_like(index, float(big_block_is_mmapped()))


@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_source_stage_workers_keep_freed_memory_too():
    net = Net("""
        layer { name: "i" type: "GenSequentialIndex" top: "i"
                gen_sequential_index_param { batch_size: 2 num_of_samples: 10 start_index: 0 } }
        layer { name: "probe" type: "MmapProbeForTest" bottom: "i" top: "mmapped" }
    """, device="cpu", workers=2)
    try:
        net.forward()
        assert net.blobs["mmapped"].view(-1).tolist() == [0.0, 0.0]
    finally:
        net.close()


# ---- die_with_parent ------------------------------------------------------------------------------------------

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINUX = sys.platform.startswith("linux") and os.path.exists("/proc/self/stat")

GRANDCHILD = """
import os, sys, time
sys.path.insert(0, {root!r})
from nets.perf import die_with_parent
print(die_with_parent(os.getppid(), kernel_signal={kernel}), os.getpid(), flush=True)
time.sleep(600)
"""

PARENT = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", {grandchild!r}], stdout=subprocess.PIPE, text=True)
print(child.stdout.readline(), end="", flush=True)
time.sleep(600)
"""


def running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"    # a zombie has ended
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not LINUX, reason="Linux only")
@pytest.mark.parametrize("kernel, how", [(True, "signal"), (False, "poll")])
def test_die_with_parent_ends_the_child_when_its_parent_is_sigkilled(kernel, how):
    import select
    import signal
    import subprocess
    import time
    grandchild = GRANDCHILD.format(root=ROOT, kernel=kernel)
    parent = subprocess.Popen([sys.executable, "-c", PARENT.format(grandchild=grandchild)], stdout=subprocess.PIPE,
                              text=True)
    pid = None
    try:
        assert select.select([parent.stdout], [], [], 120)[0], "the grandchild printed nothing"
        got, pid = parent.stdout.readline().split()
        pid = int(pid)
        assert got == how and running(pid)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 5.0        # a deadline for the wait, not a speed measurement
        while running(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not running(pid)
    finally:
        parent.kill()
        parent.stdout.close()
        if pid is not None and running(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.skipif(not LINUX, reason="Linux only")
@pytest.mark.parametrize("kernel", [True, False])
def test_die_with_parent_ends_the_child_at_once_when_its_parent_is_already_gone(kernel):
    import subprocess
    code = (f"import os, sys; sys.path.insert(0, {ROOT!r}); from nets.perf import die_with_parent; "
            f"die_with_parent(os.getppid() + 1 if os.getppid() > 1 else 2, kernel_signal={kernel}); "
            f"print('still here')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == -9 and "still here" not in done.stdout
