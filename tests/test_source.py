"""The source stage: index layers in the main process, readers in worker processes, order and exact state."""

import os

import pytest
import torch

from layers.base import Layer, Param, Params, SourceLayer
from layers.registry import register_layer
from netdef.errors import NetError
from nets.net import Net


@register_layer("CounterIndexForTest")
class CounterIndex(SourceLayer):
    """Next B integers from a cursor (a stateful index layer, test-only)."""
    params = Params("counter_param", batch_size=Param(int, 4))
    num_bottoms = 0
    stateful = True

    def setup(self, bottom_shapes):
        self.cursor = 0

    def infer_top_shapes(self, bottom_shapes):
        return [(self.p.batch_size, 1)]

    def forward(self):
        out = torch.arange(self.cursor, self.cursor + self.p.batch_size, dtype=torch.float32).view(-1, 1)
        self.cursor += self.p.batch_size
        return out

    def get_state(self):
        return {"cursor": self.cursor}

    def set_state(self, state):
        self.cursor = state["cursor"]


@register_layer("PidReaderForTest")
class PidReader(SourceLayer):
    """Reads 'sample i' = (10 * i, pid of the reading process) (test-only reader)."""
    num_tops = 2

    def infer_top_shapes(self, bottom_shapes):
        return [bottom_shapes[0], (bottom_shapes[0][0],)]

    def forward(self, index):
        return index * 10, torch.full((index.shape[0],), float(os.getpid()))


NET = """
layer { name: "idx" type: "CounterIndexForTest" top: "idx" counter_param { batch_size: 3 } }
layer { name: "read" type: "PidReaderForTest" bottom: "idx" top: "value" top: "pid" }
layer { name: "double" type: "Power" bottom: "value" top: "out" power_param { scale: 2 } }
"""


def values(net, n):
    return [net.forward()["out"].view(-1).tolist() for _ in range(n)]


@pytest.mark.parametrize("workers", [0, 2])
def test_batches_come_in_order_from_any_number_of_workers(workers):
    net = Net(NET, device="cpu", workers=workers)
    try:
        got = values(net, 5)
        assert got == [[20.0 * i for i in range(3 * b, 3 * b + 3)] for b in range(5)]
        pids = {net.blobs["pid"][0].item() for _ in range(4) if net.forward()}
        if workers:
            assert os.getpid() not in pids      # decoded in worker processes
        else:
            assert pids == {os.getpid()}
    finally:
        net.close()


def test_state_is_that_of_the_last_consumed_batch_despite_prefetch():
    net = Net(NET, device="cpu", workers=2)
    try:
        values(net, 2)
        assert net.layer("idx").cursor > 6            # the index layer ran ahead (prefetch)
        assert net.source.state() == [{"cursor": 6}]  # but two batches of 3 were consumed
        state = net.source.state()
        expected = values(net, 3)
        net.source.set_state(state)
        assert values(net, 3) == expected             # resume continues exactly
    finally:
        net.close()


def test_close_rewinds_prefetched_batches():
    net = Net(NET, device="cpu", workers=2)
    first = values(net, 1)
    net.close()
    assert net.layer("idx").cursor == 3
    assert values(net, 1) == [[60.0, 80.0, 100.0]] and first == [[0.0, 20.0, 40.0]]
    net.close()


def test_given_indices_are_read_inline():
    net = Net(NET, device="cpu", workers=2)
    out = net.forward(idx=torch.tensor([[7.0], [1.0]]))
    assert out["out"].view(-1).tolist() == [140.0, 20.0]
    assert net.layer("idx").cursor == 0 and net.source._iter is None
    with pytest.raises(NetError, match="no input blob 'idxx' \\(did you mean idx\\?\\)"):
        net.forward(idxx=torch.zeros(1, 1))


def test_only_layers_fed_by_source_layers_join_the_stage():
    net = Net(NET, device="cpu", workers=0)
    assert [s.name for s in net.plan if s.is_source] == ["idx", "read"]
    assert net.source.index_steps[0].name == "idx" and net.source.reader_steps[0].name == "read"


@register_layer("ChooserForTest")
class Chooser(SourceLayer):
    """A stateful source layer with a bottom (like CrossValidationRandomChooseIndex): adds a counter."""
    stateful = True

    def setup(self, bottom_shapes):
        self.calls = 0

    def infer_top_shapes(self, bottom_shapes):
        return [bottom_shapes[0]]

    def forward(self, x):
        self.calls += 1
        return x + 1000 * self.calls

    def get_state(self):
        return {"calls": self.calls}

    def set_state(self, state):
        self.calls = state["calls"]


def test_stateful_layers_fed_by_index_layers_run_in_the_main_process():
    net = Net("""
        layer { name: "idx" type: "CounterIndexForTest" top: "idx" counter_param { batch_size: 2 } }
        layer { name: "choose" type: "ChooserForTest" bottom: "idx" top: "chosen" }
        layer { name: "read" type: "PidReaderForTest" bottom: "chosen" top: "value" top: "pid" }
    """, device="cpu", workers=2)
    try:
        assert [s.name for s in net.source.index_steps] == ["idx", "choose"]
        firsts = [net.forward()["value"].view(-1).tolist() for _ in range(3)]
        assert firsts == [[10000.0, 10010.0], [20020.0, 20030.0], [30040.0, 30050.0]]
        assert net.source.state() == [{"cursor": 6}, {"calls": 3}]
    finally:
        net.close()


def test_stateful_layer_fed_by_a_reader_is_refused():
    with pytest.raises(NetError, match="stateful data layer must be fed by index layers only, but bottom 'value'"):
        Net("""
            layer { name: "idx" type: "CounterIndexForTest" top: "idx" }
            layer { name: "read" type: "PidReaderForTest" bottom: "idx" top: "value" top: "pid" }
            layer { name: "choose" type: "ChooserForTest" bottom: "value" top: "chosen" }
        """, device="cpu", workers=0)


def test_run_net_time_on_a_net_with_a_source_stage(tmp_path, capsys):
    from nets.cli import main
    path = tmp_path / "net.prototxt"
    path.write_text(NET)
    assert main([str(path), "--time", "--iterations", "2", "--workers", "0", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    # the wait for data is billed to the last source layer; the index layer ran ahead, at 0 ms here
    assert "idx\tforward: 0.000 ms." in out and "read\tforward:" in out and "double\tbackward:" in out


@register_layer("CompactReaderForTest")
class CompactReader(SourceLayer):
    """A reader with a compact form: 'sample i' = i % 256 as uint8 in forward_compact, float in forward."""

    def infer_top_shapes(self, bottom_shapes):
        return [bottom_shapes[0]]

    def forward_compact(self, index):
        return (index.to(torch.int64) % 256).to(torch.uint8)

    def forward(self, index):
        return self.forward_compact(index).to(index.dtype)


COMPACT_NET = """
layer { name: "idx" type: "CounterIndexForTest" top: "idx" counter_param { batch_size: 3 } }
layer { name: "read" type: "CompactReaderForTest" bottom: "idx" top: "pix" }
layer { name: "again" type: "CompactReaderForTest" bottom: "pix" top: "pix2" }
layer { name: "scale" type: "Power" bottom: "pix2" top: "out" power_param { scale: 0.5 } }
"""


@pytest.mark.parametrize("workers", [0, 2])
def test_compact_readers_ship_their_stored_type_and_the_net_casts_it(workers):
    net = Net(COMPACT_NET, device="cpu", workers=workers)
    try:
        # 'read' feeds another reader, which expects its float top: only 'again' ships compact
        assert net.source.compact == {net.source.reader_steps[1].key}
        batch = net.source.next_batch()
        assert batch["pix"].dtype == torch.float32 and batch["pix2"].dtype == torch.uint8
        assert batch["pix2"].view(-1).tolist() == [0, 1, 2]
        for _ in range(90):                 # cursor 3 .. 272: wraps at 256 like the uint8 form
            out = net.forward()["out"]
        assert net.blobs["pix2"].dtype == torch.float32
        assert out.view(-1).tolist() == [0.5 * (i % 256) for i in (270, 271, 272)]
        net.double()
        net.forward()
        assert net.blobs["pix2"].dtype == torch.float64 and net.blobs["pix2"].view(-1).tolist() == [17.0, 18.0, 19.0]
    finally:
        net.close()


# ---- errors in worker processes, workers dying with the main process ----------------------------------------

@register_layer("FailingReaderForTest")
class FailingReader(SourceLayer):
    """'sample i' = 10 * i, except samples listed in fail_param { sample } (a user error naming the sample)
    and fail_param { bug } (a bug: ValueError)."""
    params = Params("fail_param", sample=Param(int, -1), bug=Param(int, -1))

    def infer_top_shapes(self, bottom_shapes):
        return [bottom_shapes[0]]

    def forward(self, index):
        values = index.view(-1).tolist()
        if self.p.sample in values:
            raise self.error(f"cannot read sample {self.p.sample}")
        if self.p.bug in values:
            raise ValueError(f"a bug at sample {self.p.bug}")
        return index * 10


FAILING_NET = """
layer { name: "idx" type: "CounterIndexForTest" top: "idx" counter_param { batch_size: 3 } }
layer { name: "read" type: "FailingReaderForTest" bottom: "idx" top: "value" fail_param { %s } }
"""


def _run_until_error(workers):
    """Batch 1 reads, batch 2 (samples 3-5) fails on sample 4, then batch 3: what each gave."""
    net = Net(FAILING_NET % "sample: 4", device="cpu", workers=workers)
    try:
        first = net.forward()["value"].view(-1).tolist()
        with pytest.raises(NetError) as e:
            net.forward()
        state = net.source.state()
        after = net.forward()["value"].view(-1).tolist()
        return first, str(e.value), type(e.value), state, after
    finally:
        net.close()


def test_reader_error_in_a_worker_is_the_same_one_line_error_as_inline():
    inline, workers = _run_until_error(0), _run_until_error(2)
    first, msg, kind, state, after = workers
    assert msg == "<string>:3:1: layer 'read' (FailingReaderForTest): cannot read sample 4"
    assert kind is NetError and "\n" not in msg
    assert first == [0.0, 10.0, 20.0]
    # the failed batch counts as consumed, with any number of workers: reading goes on with the next one
    assert state == [{"cursor": 6}] and after == [60.0, 70.0, 80.0]
    assert workers == inline


@register_layer("FlakyIndexForTest")
class FlakyIndex(CounterIndex):
    """CounterIndexForTest whose third draw fails (a user error), before moving its cursor."""

    def setup(self, bottom_shapes):
        super().setup(bottom_shapes)
        self.calls = 0

    def forward(self):
        self.calls += 1
        if self.calls == 3:
            raise self.error("cannot draw batch 3")
        return super().forward()


@pytest.mark.parametrize("workers", [0, 2])
def test_index_layer_error_comes_in_its_batchs_turn_with_any_number_of_workers(workers):
    net = Net("""
        layer { name: "idx" type: "FlakyIndexForTest" top: "idx" counter_param { batch_size: 2 } }
        layer { name: "read" type: "PidReaderForTest" bottom: "idx" top: "value" top: "pid" }
    """, device="cpu", workers=workers)
    try:
        got = [net.forward()["value"].view(-1).tolist() for _ in range(2)]   # drawn before the failure
        with pytest.raises(NetError, match=r"^<string>:2:9: layer 'idx' \(FlakyIndexForTest\): cannot draw batch 3$"):
            net.forward()
        assert net.source.state() == [{"cursor": 4}]
        got += [net.forward()["value"].view(-1).tolist() for _ in range(2)]  # and reading goes on
        assert got == [[0.0, 10.0], [20.0, 30.0], [40.0, 50.0], [60.0, 70.0]]
    finally:
        net.close()


def test_a_bug_in_a_worker_keeps_torchs_worker_traceback():
    net = Net(FAILING_NET % "bug: 1", device="cpu", workers=2)
    try:
        with pytest.raises(ValueError, match="(?s)in DataLoader worker process.*a bug at sample 1"):
            net.forward()
    finally:
        net.close()


@register_layer("BulkyReaderForTest")
class BulkyReader(SourceLayer):
    """1 MB of zeros per sample: prefetched batches fill the pipes to the main process."""

    def infer_top_shapes(self, bottom_shapes):
        return [(bottom_shapes[0][0], 1 << 18)]

    def forward(self, index):
        return torch.zeros(index.shape[0], 1 << 18)


KILLED_MAIN = """
import os, sys, time
sys.path[:0] = [{root!r}, {tests!r}]
import test_source
from nets.net import Net
net = Net('''
layer {{ name: "idx" type: "CounterIndexForTest" top: "idx" counter_param {{ batch_size: 2 }} }}
layer {{ name: "read" type: "BulkyReaderForTest" bottom: "idx" top: "value" }}
''', device="cpu", workers=2)
net.forward()
print(" ".join(map(str, net.source.worker_pids())), flush=True)
time.sleep(600)
"""


def running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's zombie waits for a reaper that may not reap in a container)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def wait_gone(pids, seconds: float) -> list[int]:
    """The pids still running after up to `seconds` (a deadline for the wait, not a speed measurement)."""
    import time
    deadline = time.monotonic() + seconds
    while any(map(running, pids)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return [p for p in pids if running(p)]


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs Linux /proc")
def test_workers_die_within_5_s_when_the_main_process_is_sigkilled(tmp_path):
    import select
    import signal
    import subprocess
    import sys
    tests = os.path.dirname(os.path.abspath(__file__))
    script = tmp_path / "main.py"
    script.write_text(KILLED_MAIN.format(root=os.path.dirname(tests), tests=tests))
    main = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    pids = []
    try:
        assert select.select([main.stdout], [], [], 120)[0], "the child printed no pids"
        pids = [int(p) for p in main.stdout.readline().split()]
        assert len(pids) == 2 and all(map(running, pids))
        # their results fill the pipes (1 MB batches, 4 prefetched each): torch's own 5 s check never runs
        main.send_signal(signal.SIGKILL)
        main.wait()
        assert wait_gone(pids, 5.0) == []
    finally:
        main.kill()
        main.stdout.close()
        for pid in pids:
            if running(pid):
                os.kill(pid, signal.SIGKILL)


def test_workers_started_from_a_thread_outlive_that_thread():
    import threading
    net = Net(NET, device="cpu", workers=2)
    try:
        first = []
        thread = threading.Thread(target=lambda: first.append(net.forward()["out"].view(-1).tolist()))
        thread.start()
        thread.join()
        # the kernel's parent-death signal would follow the thread that forked the workers: they poll instead
        pids = net.source.worker_pids()
        assert first == [[0.0, 20.0, 40.0]] and len(pids) == 2
        assert values(net, 8)[-1] == [20.0 * i for i in (24, 25, 26)]
        assert net.source.worker_pids() == pids
    finally:
        net.close()
