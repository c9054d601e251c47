"""Data-parallel training (nets/distributed.py) with torchrun and gloo on the CPU: 2 processes with batch B
train like 1 process with batch 2B; rank 0 alone logs and snapshots; resume works under any rank count."""

import json
import os
import re
import signal
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch

from nets.net import Net
from nets.solver import Solver, blobs_reaching_loss

from caffe_log import messages

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_NET = os.path.join(ROOT, "tools", "run_net.py")

READER = '''
import torch
from layers.base import Layer, SourceLayer
from layers.registry import register_layer


@register_layer("DDPTestReader")
class Reader(SourceLayer):
    """A fixed sample per index: x (3, 6, 6) and y (2,)."""
    num_bottoms, num_tops = 1, 2

    def infer_top_shapes(self, bottom_shapes):
        b = bottom_shapes[0][0]
        return [(b, 3, 6, 6), (b, 2)]

    def forward(self, idx):
        i = idx.reshape(-1).double()
        grid = torch.arange(3 * 6 * 6, dtype=torch.float64)
        x = torch.sin(i[:, None] * 0.37 + grid[None] * 0.11).reshape(-1, 3, 6, 6)
        y = torch.stack([torch.cos(i * 0.5), torch.sin(i * 0.21)], 1)
        return x.float(), y.float()
'''

NET = '''name: "ddp"
layer { name: "idx" type: "GenSequentialIndex" top: "idx"
        gen_sequential_index_param { batch_size: BATCH num_of_samples: 40 } }
layer { name: "read" type: "DDPTestReader" bottom: "idx" top: "x" top: "y" }
layer { name: "conv" type: "Convolution" bottom: "x" top: "c"
        convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "xavier" } } }
layer { name: "relu" type: "ReLU" bottom: "c" top: "c" }
layer { name: "ip" type: "InnerProduct" bottom: "c" top: "p"
        inner_product_param { num_output: 2 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "p" bottom: "y" top: "loss" }
'''

SOLVER = '''net: "NET" base_lr: 0.05 momentum: 0.9 lr_policy: "fixed" max_iter: 6 display: 1 random_seed: 3
snapshot: 3 snapshot_prefix: "PREFIX"
'''


@pytest.fixture
def setup(tmp_path):
    (tmp_path / "ddp_layers.py").write_text(READER)
    for batch in (4, 8):
        (tmp_path / f"net{batch}.prototxt").write_text(NET.replace("BATCH", str(batch)))
        (tmp_path / f"solver{batch}.prototxt").write_text(
            SOLVER.replace("NET", f"net{batch}.prototxt").replace("PREFIX", f"snap{batch}/s"))
        (tmp_path / f"snap{batch}").mkdir()
    return tmp_path


def run(folder, *args, ranks=1):
    launch = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"]
              if ranks > 1 else [sys.executable])
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    proc = subprocess.run(launch + [RUN_NET, *args, "--import", "ddp_layers.py", "--workers", "0"], cwd=folder,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def losses(log):
    return [float(v) for v in re.findall(r"^Iteration \d+, loss = (\S+)$", "\n".join(messages(log)), re.M)]


def weights(path):
    with h5py.File(path, "r") as f:
        return {k: f[f"data/{k}/0"][()] for k in ("conv", "ip")}


def cursor(state_path):
    with h5py.File(state_path, "r") as f:
        raw = f["source_state"][()]
    return json.loads(raw.decode() if isinstance(raw, bytes) else raw)[0][0]["cursor"]


def test_two_gloo_ranks_train_like_one_process_with_the_global_batch(setup):
    one = run(setup, "--solver", "solver8.prototxt")
    two = run(setup, "--solver", "solver4.prototxt", ranks=2)
    assert len(losses(two)) == 7
    np.testing.assert_allclose(losses(two), losses(one), rtol=1e-5)
    assert losses(one)[0] != losses(one)[-1]       # it trained
    for k, w in weights(setup / "snap8/s_iter_6.caffemodel.h5").items():
        np.testing.assert_allclose(weights(setup / "snap4/s_iter_6.caffemodel.h5")[k], w, rtol=1e-4, atol=1e-6)
    # rank 0 alone logs; both ranks drew the whole global batch: the cursor is past 6 x 8 samples
    assert two.count("Solving ddp") == 1 and two.count("Optimization Done.") == 1
    assert cursor(setup / "snap4/s_iter_6.solverstate.h5") == (6 * 8 - 1) % 40


def test_resume_under_the_same_and_other_rank_counts(setup):
    straight = run(setup, "--solver", "solver4.prototxt", ranks=2)
    final = weights(setup / "snap4/s_iter_6.caffemodel.h5")
    resumed = run(setup, "--solver", "solver4.prototxt", "--snapshot", "snap4/s_iter_3.solverstate.h5", ranks=2)
    assert losses(resumed) == losses(straight)[3:]
    for k, w in weights(setup / "snap4/s_iter_6.caffemodel.h5").items():
        np.testing.assert_array_equal(w, final[k])
    # one process from the 2-rank snapshot: the global batch is now 4, the samples continue after 3 x 8
    run(setup, "--solver", "solver4.prototxt", "--snapshot", "snap4/s_iter_3.solverstate.h5")
    assert cursor(setup / "snap4/s_iter_6.solverstate.h5") == 3 * 8 + 3 * 4 - 1


def _import_reader(folder):
    from layers.registry import import_user_module
    import_user_module(str(folder / "ddp_layers.py"))


def test_shard_reads_one_draw_of_the_global_batch(setup):
    _import_reader(setup)
    net = Net(str(setup / "net4.prototxt"), phase="TRAIN", device="cpu", workers=0)
    net.source.shard(1, 3)
    first = net.source.next_batch()["idx"].flatten().tolist()
    second = net.source.next_batch()["idx"].flatten().tolist()
    assert first == [4, 5, 6, 7] and second == [16, 17, 18, 19]
    assert net.source.state() == [{"cursor": 23}]


def test_blobs_reaching_the_loss_decide_find_unused_parameters():
    net = Net('''
        layer { name: "in" type: "Input" top: "x" top: "y" input_param { shape { dim: 2 dim: 3 } shape { dim: 2 dim: 4 } } }
        layer { name: "a" type: "InnerProduct" bottom: "x" top: "a" inner_product_param { num_output: 4 } }
        layer { name: "side" type: "InnerProduct" bottom: "x" top: "side" inner_product_param { num_output: 2 } }
        layer { name: "frozen_in" type: "InnerProduct" bottom: "x" top: "f" inner_product_param { num_output: 4 } }
        layer { name: "sum" type: "Eltwise" bottom: "a" bottom: "f" top: "s" propagate_down: true propagate_down: false }
        layer { name: "loss" type: "EuclideanLoss" bottom: "s" bottom: "y" top: "loss" }
    ''', device="cpu")
    reaching = blobs_reaching_loss(net)
    assert {"loss", "s", "a", "x"} <= reaching
    assert "side" not in reaching and "f" not in reaching


def test_outside_torchrun_the_solver_is_rank_0_of_1(setup, monkeypatch):
    from nets import distributed
    monkeypatch.chdir(setup)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.init_from_env("cpu") == "cpu" and not distributed.active()
    _import_reader(setup)
    solver = Solver("solver8.prototxt", device="cpu", workers=0)
    assert (solver.rank, solver.world, solver._replica) == (0, 1, None)
    t = torch.tensor([1.0, 2.0])
    assert distributed.all_reduce_mean(t) is t
    assert distributed.all_gather_object({"a": 1}) == [{"a": 1}]


def test_ctrl_c_under_torchrun_stops_every_rank_at_one_iteration_with_a_snapshot(setup):
    (setup / "slow.py").write_text("import time\n" + READER.replace('"DDPTestReader"', '"DDPSlowReader"').replace(
        "return x.float(), y.float()", "time.sleep(0.2)\n        return x.float(), y.float()"))
    (setup / "slow.prototxt").write_text(NET.replace("BATCH", "4").replace("DDPTestReader", "DDPSlowReader"))
    (setup / "slow_solver.prototxt").write_text(SOLVER.replace("NET", "slow.prototxt").replace(
        "PREFIX", "snap4/c").replace("max_iter: 6", "max_iter: 1000").replace("snapshot: 3", "snapshot: 0"))
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", RUN_NET,
              "--solver", "slow_solver.prototxt", "--import", "slow.py", "--workers", "0"]
    proc = subprocess.Popen(launch, cwd=setup, env=dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if messages(line)[0].startswith("Iteration 3, loss"):
            os.killpg(proc.pid, signal.SIGINT)     # as a terminal's Ctrl-C: torchrun and both ranks get it
            break
    log = "".join(seen) + proc.communicate(timeout=90)[0]
    assert log.count("Optimization stopped early.") == 1, log
    states = sorted(p.name for p in (setup / "snap4").glob("c_iter_*.solverstate.h5"))
    assert len(states) == 1, log
    stopped = int(re.search(r"c_iter_(\d+)", states[0]).group(1))
    assert 3 < stopped < 10
    # the snapshot resumes (under one process here) from that iteration
    text = (setup / "slow_solver.prototxt").read_text().replace("max_iter: 1000", f"max_iter: {stopped + 1}")
    (setup / "slow_solver.prototxt").write_text(text)
    out = run(setup, "--solver", "slow_solver.prototxt", "--snapshot", f"snap4/{states[0]}", "--import", "slow.py")
    assert f"Iteration {stopped}, loss" in "\n".join(messages(out))
