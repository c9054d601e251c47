"""Failures a user can cause end in one line with nothing lost (issue 11): SIGTERM snapshots like Ctrl-C, stale
snapshot temp files are cleared, Ctrl-C in test mode and in prepare_rhd is one line, --debug shows tracebacks,
non-finite weights warn, a diverged solver state is refused."""

import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import h5py
import numpy as np
import pytest

from netdef.errors import NetError, NetWarning, Terminated, run_tool
from nets.cli import main
from nets.net import Net
from nets.solver import Solver
from nets.solver.progress import strip_header
from nets.weights import save_weights

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_NET = os.path.join(ROOT, "tools", "run_net.py")

# constant data, so every iteration is alike and fast
NET = """
name: "rel"
layer { name: "data" type: "DummyData" top: "x" top: "y"
        dummy_data_param { shape { dim: 4 dim: 3 } shape { dim: 4 dim: 2 } data_filler { type: "constant" value: 1 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "p" inner_product_param { num_output: 2 } }
layer { name: "loss" type: "EuclideanLoss" bottom: "p" bottom: "y" top: "loss" }
"""


def write(folder, name, text):
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def solver_file(folder, max_iter=3, **extra):
    write(folder, "net.prototxt", NET)
    fields = dict(net='"net.prototxt"', base_lr=0.01, lr_policy='"fixed"', max_iter=max_iter, display=1,
                  snapshot_prefix='"snap"', random_seed=1, **extra)
    return write(folder, "solver.prototxt", "".join(f"{k}: {v}\n" for k, v in fields.items()))


def _default_sigint():
    # a shell's background job starts with SIGINT ignored, and a child inherits that: undo it, as a terminal has it
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(args, cwd, **kw):
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.Popen([sys.executable, RUN_NET, *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint, **kw)


def read_until(proc, prefix, timeout=60):
    deadline = time.time() + timeout
    lines = []
    while time.time() < deadline:
        line = proc.stdout.readline()
        lines.append(line)
        if strip_header(line).startswith(prefix) or not line:
            return lines
    raise AssertionError(f"no line starting with {prefix!r}: {lines[-5:]}")


def test_sigterm_during_training_snapshots_like_ctrl_c(tmp_path):
    solver_file(tmp_path, max_iter=10 ** 7)
    proc = start(["--solver", "solver.prototxt", "--device", "cpu", "--workers", "0"], tmp_path)
    read_until(proc, "Iteration 3, lr")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    done = re.search(r"interrupted at iteration (\d+): snapshot written; resume with --solver solver.prototxt "
                     r"--snapshot (snap_iter_(\d+)\.solverstate\.h5)$", err.strip())
    assert done and done.group(1) == done.group(3), err
    assert (tmp_path / done.group(2)).exists() and (tmp_path / f"snap_iter_{done.group(1)}.caffemodel.h5").exists()
    # one iteration number in what the user reads: the notice names none
    assert "SIGTERM: stopping after the current iteration" in err and "Traceback" not in err
    assert re.findall(r"iteration (\d+)", err) == [done.group(1)]


def test_stale_snapshot_temp_files_are_removed_at_the_next_start(tmp_path, capsys):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / f"snap_iter_4.solverstate.h5.{dead_pid}.tmp"
    live = tmp_path / f"snap_iter_4.caffemodel.h5.{os.getpid()}.tmp"     # a writer still at work
    other = tmp_path / f"other_iter_4.caffemodel.h5.{dead_pid}.tmp"       # another run's prefix
    for path in (stale, live, other):
        path.write_bytes(b"half")
    with Solver(solver_file(tmp_path), device="cpu", workers=0):
        pass
    assert not stale.exists() and live.exists() and other.exists()
    assert f"removed 1 temporary file(s) of a snapshot that was killed while being written: {stale}" in \
        capsys.readouterr().err


def test_ctrl_c_in_test_mode_is_one_line_and_130(tmp_path):
    write(tmp_path, "big.prototxt", """
        input: "data" input_shape { dim: 64 dim: 3 dim: 64 dim: 64 }
        layer { name: "conv" type: "Convolution" bottom: "data" top: "c"
                convolution_param { num_output: 32 kernel_size: 5 } }
    """)
    proc = start(["big.prototxt", "--iterations", "100000", "--device", "cpu"], tmp_path)
    deadline = time.time() + 60
    err = ""
    while "filled with random normal data" not in err and time.time() < deadline:
        err += proc.stderr.readline()
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, rest = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert rest.strip() == "error: interrupted by Ctrl-C", rest


@pytest.mark.slow
def test_ctrl_c_during_prepare_rhd_is_quiet(tmp_path):
    from layers.hand.rhd.synthetic import make_dataset
    release = make_dataset(str(tmp_path / "synth"), 120, 0, 0, workers=2)
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "tools", "prepare_rhd.py"), "--rhd-root", release,
                             "--out", str(tmp_path / "rhd"), "--workers", "2"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, preexec_fn=_default_sigint)
    state = tmp_path / "rhd" / ".convert_state" / "training"
    deadline = time.time() + 60
    while not (state.is_dir() and any(state.iterdir())) and time.time() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGINT)      # as a terminal does: the pool's workers get it too
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert err.strip() == "error: interrupted by Ctrl-C: run the same command again to finish", err


USER_LAYER = """
from layers import Layer, register_layer

@register_layer("RelFailing")
class Failing(Layer):
    def forward(self, x):
        raise ValueError("the user's own bug")
"""


def test_debug_shows_the_traceback_of_a_failing_user_layer(tmp_path, capsys):
    write(tmp_path, "failing.py", USER_LAYER)
    net = write(tmp_path, "net.prototxt", """
        input: "data" input_shape { dim: 1 dim: 2 }
        layer { name: "bad" type: "RelFailing" bottom: "data" top: "y" }
    """)
    # shape inference runs forward on meta tensors: the error surfaces at build
    assert main([net, "--import", str(tmp_path / "failing.py")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the user's own bug" in err[0] and err[0].endswith("(run with --debug for the traceback)")
    assert main([net, "--import", str(tmp_path / "failing.py"), "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "failing.py" in err and 'raise ValueError' in err
    assert err.strip().splitlines()[-1].startswith("error: ") and "--debug for" not in err


def test_run_tool_endings(capsys):
    def interrupted():
        raise KeyboardInterrupt

    def user_error():
        raise NetError("net.prototxt:3:1: bad")

    assert run_tool(interrupted, interrupted="stopped, rerun to finish") == 130
    assert capsys.readouterr().err == "error: stopped, rerun to finish\n"

    def terminated():
        os.kill(os.getpid(), signal.SIGTERM)    # the handler raises Terminated at the next bytecode
        time.sleep(5)
        raise AssertionError("SIGTERM did not interrupt the body")

    def outside(signum, frame):      # what SIGTERM does when run_tool does not take it over (not pytest's death)
        raise AssertionError("run_tool did not handle SIGTERM")

    before = signal.signal(signal.SIGTERM, outside)
    try:
        assert run_tool(terminated) == 143
        assert capsys.readouterr().err == "error: terminated by SIGTERM\n"
        assert run_tool(terminated, interrupted="interrupted by Ctrl-C: run the same command again to finish") == 143
        assert capsys.readouterr().err == "error: terminated by SIGTERM: run the same command again to finish\n"
        assert signal.getsignal(signal.SIGTERM) is outside      # given back
    finally:
        signal.signal(signal.SIGTERM, before)
    assert isinstance(Terminated(), KeyboardInterrupt)      # `except KeyboardInterrupt` cleanups run for it
    assert run_tool(user_error) == 2
    assert capsys.readouterr().err == "error: net.prototxt:3:1: bad\n"   # no cause: no --debug hint


def test_weights_with_nan_warn_naming_the_layer(tmp_path, capsys):
    net_path = write(tmp_path, "net.prototxt", NET)
    net = Net(net_path, device="cpu")
    with h5py.File(tmp_path / "w.h5", "w"):
        pass
    save_weights(net, tmp_path / "w.h5")
    with h5py.File(tmp_path / "w.h5", "r+") as f:
        f["data/ip/0"][0, 0] = np.nan
    with pytest.warns(NetWarning, match=r"'.*w\.h5' holds NaN or Inf values in layer\(s\) ip \("):
        assert main([net_path, "--weights", str(tmp_path / "w.h5"), "--iterations", "1"]) == 0


def test_a_diverged_solver_state_is_refused(tmp_path):
    with Solver(solver_file(tmp_path), device="cpu", workers=0) as solver:
        solver.step(2)
        state = solver.snapshot()
    with h5py.File(state, "r+") as f:
        f["history/0"][...] = np.inf
    with Solver(solver_file(tmp_path), device="cpu", workers=0) as solver:
        with pytest.raises(NetError, match=r"cannot restore solver state '.*snap_iter_2\.solverstate\.h5': "
                                           r"history/0 \(param 0 of layer 'ip'\) holds NaN or Inf values"):
            solver.restore(state)


def test_a_net_with_nothing_to_run_is_refused(tmp_path):
    empty = write(tmp_path, "empty.prototxt", 'name: "nothing"\n')
    with pytest.raises(NetError, match=r"empty\.prototxt: net 'nothing' has no layers in phase TEST: nothing to run"):
        Net(empty, phase="TEST", device="cpu")
    train_only = write(tmp_path, "train.prototxt", """
        layer { name: "d" type: "DummyData" top: "x" dummy_data_param { shape { dim: 1 } } include { phase: TRAIN } }
    """)
    with pytest.raises(NetError, match="the net has no layers in phase TEST"):
        Net(train_only, phase="TEST", device="cpu")


def test_a_duplicate_layer_name_warns_in_one_line(tmp_path, capsys):
    net = write(tmp_path, "dup.prototxt", """
        input: "data" input_shape { dim: 1 dim: 2 }
        layer { name: "act" type: "ReLU" bottom: "data" top: "a" }
        layer { name: "act" type: "Sigmoid" bottom: "a" top: "b" }
    """)
    proc = start([net, "--iterations", "1", "--device", "cpu"], tmp_path)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    warned = [line for line in err.splitlines() if "duplicate" in line]
    assert warned == [f"warning: {net}:4:1: layer 'act' (Sigmoid): duplicate layer name 'act' (also at {net}:3:1); "
                      f"Caffe allows it, but net.layer('act') finds the first only"]


@pytest.mark.parametrize("text, blob, need", [
    ('input: "data" input_shape { dim: 1 dim: 3 }\nlayer { name: "ip" type: "InnerProduct" bottom: "data" top: "p" '
     'inner_product_param { num_output: 99999999999999999999999 } }', "layer 'ip' (InnerProduct): blob 'weight'",
     r"of shape \(99999999999999999999999, 3\) needs [\d.e+]+ EB"),
    ('input: "data" input_shape { dim: 1 dim: 100000 }\nlayer { name: "ip" type: "InnerProduct" bottom: "data" '
     'top: "p" inner_product_param { num_output: 1000000 } }', "layer 'ip' (InnerProduct): blob 'weight'",
     r"of shape \(1000000, 100000\) needs 373 GB"),
    ('input: "data" input_shape { dim: 1000000 dim: 100000 }\nlayer { name: "r" type: "ReLU" bottom: "data" '
     'top: "p" }', "input 'data'", r"of shape \(1000000, 100000\) needs 373 GB"),
])
def test_shapes_that_cannot_fit_in_memory_are_refused_before_allocating(tmp_path, capsys, text, blob, need):
    net = write(tmp_path, "big.prototxt", text)
    assert main([net, "--iterations", "1", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and blob in err[0] and re.search(need + r", more than the [\d.]+ [KMGT]?B of memory "
                                                          r"available$", err[0]), err


def data_layer_run(folder, workers=2):
    """A training run whose batches come from Caffe's Data layer (a 10-record LMDB) through `workers` data worker
    processes, started in a new session so that the test signals its whole process group, as a shell does."""
    import lmdb
    from layers.caffe.datum import encode_datum
    env = lmdb.open(str(folder / "db"), map_size=1 << 24)
    images = np.random.default_rng(0).integers(0, 256, (10, 3, 6, 7), dtype=np.uint8)
    with env.begin(write=True) as txn:
        for i in range(10):
            txn.put(b"%08d" % i, encode_datum(images[i], i % 2))
    env.close()
    write(folder, "net.prototxt", """
        layer { name: "d" type: "Data" top: "x" top: "y" data_param { source: "db" batch_size: 4 backend: LMDB }
                transform_param { scale: 0.00390625 } }
        layer { name: "ip" type: "InnerProduct" bottom: "x" top: "p" inner_product_param { num_output: 2 } }
        layer { name: "loss" type: "SoftmaxWithLoss" bottom: "p" bottom: "y" top: "loss" }
    """)
    write(folder, "solver.prototxt", 'net: "net.prototxt"\nbase_lr: 0.01\nlr_policy: "fixed"\nmax_iter: 10000000\n'
                                     'display: 1\nsnapshot_prefix: "snap"\nrandom_seed: 1\n')
    return ["--solver", "solver.prototxt", "--device", "cpu", "--workers", str(workers)]


def worker_pids(pid):
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def test_sigterm_to_the_process_group_with_workers_snapshots_in_one_line(tmp_path):
    """`kill -TERM -- -PGID` (a scheduler, `timeout`, a closing terminal) reaches the data workers too. torch's
    workers died of it and the main process printed torch's "DataLoader worker (pid X) is killed by signal:
    Terminated" traceback; now they ignore it, the run finishes its iteration, snapshots, exits 143 in one line,
    and the snapshot resumes (and stops on SIGTERM again the same way)."""
    args = data_layer_run(tmp_path)

    def run_and_terminate(extra, prefix):
        proc = start(args + extra, tmp_path, start_new_session=True)
        lines = read_until(proc, prefix)
        assert len(worker_pids(proc.pid)) == 2
        os.killpg(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        out = "".join(lines) + out
        assert proc.returncode == 128 + signal.SIGTERM, err
        assert "Traceback" not in err and "DataLoader" not in err, err
        done = re.search(r"^interrupted at iteration (\d+): snapshot written; resume with --solver solver.prototxt "
                         r"--snapshot (snap_iter_(\d+)\.solverstate\.h5)$", err.strip(), re.M)
        assert done and done.group(1) == done.group(3), err
        assert err.strip().splitlines()[-1] == done.group(0)
        assert (tmp_path / done.group(2)).exists() and (tmp_path / f"snap_iter_{done.group(1)}.caffemodel.h5").exists()
        return int(done.group(1)), done.group(2), out

    first, state, _ = run_and_terminate([], "Iteration 3, lr")
    second, _, out = run_and_terminate(["--snapshot", state], f"Iteration {first + 3}, lr")
    assert second >= first + 3
    # it went on from the snapshot: Caffe's first display after a restore is the restored iteration's
    assert f"Restoring previous solver status from {state}" in out
    assert re.findall(r"Iteration (\d+), lr", out)[0] == str(first)


def test_a_data_worker_killed_alone_is_one_line(tmp_path):
    """A worker killed on its own (SIGKILL here; the OOM killer alike) ends the run with one line naming it,
    not torch's traceback."""
    proc = start(data_layer_run(tmp_path), tmp_path, start_new_session=True)
    read_until(proc, "Iteration 3, lr")
    victim = worker_pids(proc.pid)[0]
    os.kill(victim, signal.SIGKILL)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err
    assert re.fullmatch(rf"error: a data worker process died: DataLoader worker \(pid(\(s\))? {victim}\) "
                        r"(is killed by signal: Killed|exited unexpectedly) \(run with --debug for the traceback\)\n",
                        err), err


def wait_for_workers(proc, n=2, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, proc.communicate()
        if len(worker_pids(proc.pid)) == n:
            return
        time.sleep(0.05)
    raise AssertionError(f"no {n} data workers after {timeout} s")


@pytest.mark.parametrize("mode", [[], ["--time"]])
def test_sigterm_to_the_process_group_in_test_and_time_mode_is_one_line_and_143(tmp_path, mode):
    """Test mode (and time mode) with 2 data workers reading Caffe's Data layer, SIGTERM to the whole process
    group: it died silently with status 143 from the default action; now one line, 143, and no traceback from
    the main process or the workers."""
    data_layer_run(tmp_path)         # its LMDB and net.prototxt
    proc = start(["net.prototxt", "--iterations", "10000000", *mode, "--device", "cpu", "--workers", "2"], tmp_path,
                 start_new_session=True)
    wait_for_workers(proc)
    time.sleep(0.5)                  # batches flowing
    os.killpg(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert err == "error: terminated by SIGTERM\n" and out == "", (out, err)


def test_sigterm_during_convert_imageset_is_one_line_and_leaves_no_temporary_files(tmp_path):
    """Another tool through run_tool: SIGTERM mid-conversion removes the half-written database (its temporary
    folder), prints one line and exits 143; before, the default action left DB_NAME.*.tmp behind."""
    import cv2
    (tmp_path / "img").mkdir()
    cv2.imwrite(str(tmp_path / "img" / "a.png"), np.random.default_rng(0).integers(0, 256, (8, 8, 3), np.uint8))
    (tmp_path / "list.txt").write_text("a.png 1\n" * 1000000)
    env = dict(os.environ, PYTHONPATH=ROOT, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "tools", "convert_imageset.py"),
                             str(tmp_path / "img") + "/", str(tmp_path / "list.txt"), str(tmp_path / "db")],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    lines = read_until(proc, "Processed 1000 files.")
    assert any(p.name.startswith("db.") and p.name.endswith(".tmp") for p in tmp_path.iterdir()), lines
    os.killpg(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert err == "error: terminated by SIGTERM\n", err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img", "list.txt"]
