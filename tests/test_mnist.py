"""Caffe's MNIST example end to end: Caffe's own examples/mnist/lenet_train_test.prototxt and lenet_solver.prototxt
(tests/data/mnist/, only their paths changed) train LeNet from Data layers reading LMDBs that this test builds
with tools/convert_imageset.py from MNIST-like digits it renders itself (tools/make_digits.py: 28x28 gray,
white on black, several fonts, thicknesses, scales, shifts and rotations; separate train and test sets).

The default test runs the solver with fewer iterations (an override of the solver text) and checks the test
accuracy on the rendered test digits; a snapshot + resume of such a run ends in weights bit-identical to an
uninterrupted one. The slow test runs Caffe's solver file as it is (10000 iterations; -m slow).
"""

import importlib.util
import os
import re
import time

import numpy as np
import pytest
import torch

from nets.solver import Solver

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MNIST = os.path.join(ROOT, "tests", "data", "mnist")
NET = os.path.join(MNIST, "lenet_train_test.prototxt")
SOLVER = os.path.join(MNIST, "lenet_solver.prototxt")
NUM_TRAIN, NUM_TEST = 3000, 1000

# Measured on the 2-core VM (one thread, 3000 training digits): test accuracy after 300 / 400 / 500 iterations
# 0.942 / 0.968 / 0.976, 0.947 / 0.963 / 0.970, 0.953 / 0.968 / 0.973 (solver random_seed 1, 2, 3), about
# 65 ms an iteration; 400 iterations are asserted with a margin.
SHORT_ITERS = 400
SHORT_MIN_ACCURACY = 0.95
FULL_MIN_ACCURACY = 0.99


def _tool(name):
    spec = importlib.util.spec_from_file_location(f"{name}_tool", os.path.join(ROOT, "tools", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def build_lmdbs(base, num_train: int, num_test: int) -> tuple:
    """(train LMDB, test LMDB) of rendered digits, built by the tools as a user would."""
    digits = str(base / "digits")
    train_list, test_list = _tool("make_digits").make(digits, num_train, num_test, seed=0)
    convert = _tool("convert_imageset")
    train_db, test_db = str(base / "mnist_train_lmdb"), str(base / "mnist_test_lmdb")
    assert convert.main(["--gray", "--shuffle", digits + "/", train_list, train_db]) == 0
    assert convert.main(["--gray", digits + "/", test_list, test_db]) == 0
    return train_db, test_db


@pytest.fixture(scope="module")
def lmdbs(tmp_path_factory):
    return build_lmdbs(tmp_path_factory.mktemp("mnist"), NUM_TRAIN, NUM_TEST)


def solver_text(folder, lmdbs, **overrides) -> str:
    """Caffe's lenet_solver.prototxt with the net pointed at a copy of lenet_train_test.prototxt reading `lmdbs`,
    the snapshot prefix in `folder` and the given fields replaced (or added)."""
    train_db, test_db = lmdbs
    net = open(NET).read()
    assert net.count('"runs/mnist/mnist_train_lmdb"') == 1 and net.count('"runs/mnist/mnist_test_lmdb"') == 1
    net = net.replace('"runs/mnist/mnist_train_lmdb"', f'"{train_db}"').replace('"runs/mnist/mnist_test_lmdb"',
                                                                                  f'"{test_db}"')
    net_path = os.path.join(folder, "lenet_train_test.prototxt")
    with open(net_path, "w") as f:
        f.write(net)
    text = open(SOLVER).read()
    fields = {"net": f'"{net_path}"', "snapshot_prefix": f'"{os.path.join(folder, "lenet")}"', **overrides}
    for key, value in fields.items():
        pattern = re.compile(rf"^{key}:.*$", re.M)
        line = f"{key}: {value}"
        text, n = pattern.subn(line, text)
        if n == 0:
            text += line + "\n"
    return text


def measured_accuracy(solver) -> float:
    """Mean `accuracy` of the test net over test_iter batches (what Caffe's Solver::Test prints)."""
    net = solver.test_nets[0]
    values = []
    with torch.no_grad():
        for _ in range(solver.param.test_iter[0]):
            values.append(float(net.forward()["accuracy"]))
    return float(np.mean(values))




def test_solver_files_are_caffes_with_paths_changed():
    """The committed copies differ from Caffe's only in the lines their header names."""
    net = open(NET).read()
    solver = open(SOLVER).read()
    assert 'source: "runs/mnist/mnist_train_lmdb"' in net and "batch_size: 64" in net and "scale: 0.00390625" in net
    for line in ("base_lr: 0.01", "momentum: 0.9", "weight_decay: 0.0005", 'lr_policy: "inv"', "gamma: 0.0001",
                 "power: 0.75", "max_iter: 10000", "test_iter: 100", "test_interval: 500", "snapshot: 5000"):
        assert re.search(rf"^{re.escape(line)}$", solver, re.M), line


def test_lenet_learns_rendered_digits(lmdbs, tmp_path, capsys):
    text = solver_text(str(tmp_path), lmdbs, max_iter=SHORT_ITERS, test_iter=NUM_TEST // 100,
                       test_interval=SHORT_ITERS, test_initialization="false", snapshot=0,
                       snapshot_after_train="false", display=50, random_seed=1)
    with Solver(text, device="cpu") as solver:
        start = time.perf_counter()
        losses = solver.solve()
        seconds = time.perf_counter() - start
        accuracy = measured_accuracy(solver)
    out = capsys.readouterr().out
    with capsys.disabled():
        print(f"\nLeNet on rendered digits: {SHORT_ITERS} iterations in {seconds:.1f} s, test accuracy "
              f"{accuracy:.4f}")
    assert len(losses) == SHORT_ITERS
    assert np.mean(losses[:10]) > 1.5 and np.mean(losses[-20:]) < 0.3
    assert accuracy >= SHORT_MIN_ACCURACY
    assert "Iteration 50" in out and "Optimization Done." in out


def _weights(solver):
    return [pi.tensor.detach().cpu().numpy().tobytes() for pi in solver.params]


def test_snapshot_resume_is_bit_identical(lmdbs, tmp_path):
    """20 iterations straight vs 10, a snapshot, a new solver resumed from it and 10 more: the same weights, bit
    for bit (the Data layers' read positions, the update history and the RNGs are all in the snapshot)."""
    common = dict(max_iter=20, test_iter=2, test_interval=10, display=0, random_seed=7,
                  snapshot_after_train="false")
    straight_dir, split_dir = tmp_path / "straight", tmp_path / "split"
    straight_dir.mkdir()
    split_dir.mkdir()
    with Solver(solver_text(str(straight_dir), lmdbs, snapshot=0, **common), device="cpu") as solver:
        solver.solve()
        want = _weights(solver)
    with Solver(solver_text(str(split_dir), lmdbs, snapshot=10, **common), device="cpu") as solver:
        solver.step(10)
        state = solver.last_snapshot
    assert state is not None and state.endswith("lenet_iter_10.solverstate.h5")
    with Solver(solver_text(str(split_dir), lmdbs, snapshot=10, **common), device="cpu") as solver:
        solver.solve(resume=state)
        assert solver.iter == 20
        got = _weights(solver)
    assert len(got) == 8
    assert got == want


@pytest.mark.slow
def test_lenet_caffe_solver_as_written(tmp_path, capsys):
    """Caffe's solver file as it is (10000 iterations, a test of 100 batches every 500, snapshots at 5000 and
    10000) on MNIST's sizes: 60000 rendered training digits, 10000 test digits."""
    lmdbs = build_lmdbs(tmp_path, 60000, 10000)
    with Solver(solver_text(str(tmp_path), lmdbs), device="cpu") as solver:
        start = time.perf_counter()
        solver.solve()
        seconds = time.perf_counter() - start
        accuracy = measured_accuracy(solver)
    with capsys.disabled():
        print(f"\nLeNet on rendered digits: 10000 iterations in {seconds:.0f} s, test accuracy {accuracy:.4f}")
    assert accuracy >= FULL_MIN_ACCURACY
    assert os.path.exists(tmp_path / "lenet_iter_10000.caffemodel.h5")
    assert os.path.exists(tmp_path / "lenet_iter_5000.solverstate.h5")
