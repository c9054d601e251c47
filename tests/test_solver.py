"""nets/solver/: lr policies, each update rule vs a literal numpy port of Caffe's .cpp, iter_size, gradient
clipping, weight decay, lr_mult, test nets sharing weights, log lines, snapshots (atomic, Ctrl-C), exact resume,
refused state files, solver file errors, and run_net.py --solver."""

import math
import os
import re
import signal
import textwrap
import zlib
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import torch

from layers.base import Layer, Param, Params, SourceLayer
from layers.registry import register_layer
from nets.cli import main
from netdef.errors import NetError
from nets.solver import UPDATE_RULES, Solver, learning_rate

from caffe_log import messages


# ---- test-only data layers -------------------------------------------------------------------------------------

@register_layer("SolverTestRandIndex")
class RandIndex(SourceLayer):
    """batch_size random integers in [0, num) from a numpy Generator seeded from torch's initial seed (like the
    project's random index layers), with get_state/set_state (test-only)."""
    params = Params("rand_index_param", batch_size=Param(int, 4), num=Param(int, 100))
    num_bottoms = 0
    stateful = True

    def setup(self, bottom_shapes):
        seed = np.random.SeedSequence([torch.initial_seed(), zlib.crc32(self.name.encode())])
        self.rng = np.random.Generator(np.random.PCG64(seed))

    def infer_top_shapes(self, bottom_shapes):
        return [(self.p.batch_size, 1)]

    def forward(self):
        return torch.from_numpy(self.rng.integers(0, self.p.num, self.p.batch_size).astype(np.float32)).view(-1, 1)

    def get_state(self):
        return {"rng": self.rng.bit_generator.state}

    def set_state(self, state):
        self.rng.bit_generator.state = state["rng"]


@register_layer("SolverTestCount")
class CountIndex(SourceLayer):
    """0, 1, 2, ... in batches of batch_size (test-only)."""
    params = Params("count_param", batch_size=Param(int, 4))
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


@register_layer("SolverTestReader")
class Reader(SourceLayer):
    """Sample i -> x = (i, sin i, cos i) / (1, 1, 1) scaled, y = (sin 2i, cos 3i): a pure function (test-only)."""
    num_tops = 2

    def infer_top_shapes(self, bottom_shapes):
        return [(bottom_shapes[0][0], 3), (bottom_shapes[0][0], 2)]

    def forward(self, i):
        i = i.view(-1, 1)
        return torch.cat([i / 10, torch.sin(i), torch.cos(i)], 1), torch.cat([torch.sin(2 * i), torch.cos(3 * i)], 1)


def write(folder, name, text):
    path = os.path.join(folder, name)
    with open(path, "w") as fh:
        fh.write(textwrap.dedent(text))
    return path


def solver_text(net="net.prototxt", prefix=None, **fields):
    lines = [f'net: "{net}"'] + ([f'snapshot_prefix: "{prefix}"'] if prefix else [])
    defaults = dict(base_lr=0.1, lr_policy='"fixed"', max_iter=3, snapshot_after_train="false")
    for k, v in {**defaults, **fields}.items():
        for item in (v if isinstance(v, list) else [v]):
            lines.append(f"{k}: {item}")
    return "\n".join(lines) + "\n"


# y = ip2(dropout(relu(ip1(x)))): random indices in TRAIN, counted ones in TEST
RESUME_NET = """
name: "resume"
layer { name: "idx" type: "SolverTestRandIndex" top: "idx" rand_index_param { batch_size: 4 } include { phase: TRAIN } }
layer { name: "idx" type: "SolverTestCount" top: "idx" count_param { batch_size: 3 } include { phase: TEST } }
layer { name: "read" type: "SolverTestReader" bottom: "idx" top: "x" top: "y" }
layer { name: "ip1" type: "InnerProduct" bottom: "x" top: "h"
        inner_product_param { num_output: 8 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "relu" type: "ReLU" bottom: "h" top: "h" }
layer { name: "drop" type: "Dropout" bottom: "h" top: "h" dropout_param { dropout_ratio: 0.3 } }
layer { name: "ip2" type: "InnerProduct" bottom: "h" top: "p"
        inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "p" bottom: "y" top: "loss" }
"""

# DummyData (random every pass) -> ip1 -> ip2 -> loss; ip1's bias frozen, ip2's weight with lr_mult 2, decay_mult 3
DUMMY_NET = """
name: "dummy"
layer { name: "data" type: "DummyData" top: "x" top: "y"
        dummy_data_param { shape { dim: 5 dim: 3 } shape { dim: 5 dim: 2 } data_filler { type: "gaussian" } } }
layer { name: "ip1" type: "InnerProduct" bottom: "x" top: "h"
        param { lr_mult: 1 } param { lr_mult: 0 }
        inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 0.5 }
                              bias_filler { type: "constant" value: 0.3 } } }
layer { name: "ip2" type: "InnerProduct" bottom: "h" top: "p"
        param { lr_mult: 2 decay_mult: 3 } param { lr_mult: 1 decay_mult: 0 }
        inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "p" bottom: "y" top: "loss" loss_weight: 0.5 }
"""


@pytest.fixture
def deterministic():
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(False)


# ---- learning rate policies -------------------------------------------------------------------------------------

def lr_param(**kw):
    base = dict(base_lr=0.01, lr_policy="fixed", gamma=0.0, power=0.0, stepsize=0, stepvalue=[], max_iter=0)
    return SimpleNamespace(**{**base, **kw})


@pytest.mark.parametrize("kw, expected", [
    (dict(lr_policy="fixed"), {0: 0.01, 12345: 0.01}),
    (dict(lr_policy="step", gamma=0.1, stepsize=100), {0: 0.01, 99: 0.01, 100: 0.001, 250: 1e-4}),
    (dict(lr_policy="exp", gamma=0.99), {0: 0.01, 1: 0.0099, 2: 0.009801}),
    # LeNet's solver: 0.01 * (1 + 1e-4 * 10000) ^ -0.75 = 0.01 / 2^0.75
    (dict(lr_policy="inv", gamma=1e-4, power=0.75), {0: 0.01, 10000: 0.0059460355750136}),
    (dict(lr_policy="multistep", base_lr=1.0, gamma=0.5, stepvalue=[2, 4]), {0: 1, 1: 1, 2: 0.5, 3: 0.5, 4: 0.25,
                                                                           100: 0.25}),
    # Caffe moves one step per iteration at most: a repeated stepvalue takes effect one iteration later
    (dict(lr_policy="multistep", base_lr=1.0, gamma=0.5, stepvalue=[2, 2]), {1: 1, 2: 0.5, 3: 0.25}),
    (dict(lr_policy="poly", base_lr=1.0, power=2.0, max_iter=10), {0: 1.0, 5: 0.25, 9: 0.01, 10: 0.0, 12: 0.0}),
    # base / (1 + exp(-gamma (iter - stepsize)))
    (dict(lr_policy="sigmoid", base_lr=1.0, gamma=0.5, stepsize=4), {4: 0.5, 6: 0.7310585786300049,
                                                                    2: 0.2689414213699951}),
])
def test_learning_rate_policies(kw, expected):
    p = lr_param(**kw)
    for it, lr in expected.items():
        assert learning_rate(p, it) == pytest.approx(lr, rel=1e-12, abs=1e-15), (kw, it)


# ---- update rules vs literal numpy ports of Caffe's ComputeUpdateValue ------------------------------------------

def numpy_update(kind, p, g, hist, local_rate, it):
    """Line by line from sgd/nesterov/adagrad/rmsprop/adadelta/adam_solver.cpp (CPU branch); returns the diff."""
    m, delta = p.momentum, p.delta
    if kind == "SGD":
        hist[0] = local_rate * g + m * hist[0]                      # caffe_cpu_axpby(local_rate, diff, momentum, h)
        return hist[0].copy()                                       # caffe_copy(h -> diff)
    if kind == "Nesterov":
        update = hist[0].copy()                                     # save history momentum for stepping back
        hist[0] = local_rate * g + m * hist[0]
        update = (1 + m) * hist[0] + (-m) * update                  # axpby(1 + momentum, h, -momentum, update)
        return update
    if kind == "AdaGrad":
        update = g ** 2
        hist[0] = update + hist[0]
        update = hist[0] ** 0.5
        update = update + delta
        update = g / update
        return local_rate * update
    if kind == "RMSProp":
        update = g ** 2
        hist[0] = (1 - p.rms_decay) * update + p.rms_decay * hist[0]
        update = hist[0] ** 0.5 + delta
        return local_rate * (g / update)
    if kind == "AdaDelta":
        update = g ** 2
        hist[0] = (1 - m) * update + m * hist[0]
        temp = np.full_like(g, delta)
        update = temp + hist[1]
        temp = temp + hist[0]
        update = (update / temp) ** 0.5
        diff = g * update
        update = diff ** 2
        hist[1] = (1 - m) * update + m * hist[1]
        return local_rate * diff
    if kind == "Adam":
        b1, b2 = p.momentum, p.momentum2
        t = it + 1
        correction = math.sqrt(1 - b2 ** t) / (1 - b1 ** t)
        hist[0] = (1 - b1) * g + b1 * hist[0]
        val_t = g * g
        hist[1] = (1 - b2) * val_t + b2 * hist[1]
        val_t = hist[1] ** 0.5 + delta
        val_t = hist[0] / val_t
        return local_rate * correction * val_t
    raise AssertionError(kind)


RULE_PARAMS = {"SGD": dict(momentum=0.9), "Nesterov": dict(momentum=0.9), "AdaGrad": dict(momentum=0.0),
               "RMSProp": dict(momentum=0.0, rms_decay=0.95), "AdaDelta": dict(momentum=0.95, delta=1e-6),
               "Adam": dict(momentum=0.9, momentum2=0.999)}


@pytest.mark.parametrize("kind", sorted(UPDATE_RULES))
def test_update_rule_matches_numpy_port(kind):
    p = SimpleNamespace(**{**dict(momentum=0.0, momentum2=0.999, delta=1e-8, rms_decay=0.99), **RULE_PARAMS[kind]})
    rule = UPDATE_RULES[kind](p)
    rs = np.random.default_rng(1)
    hist_t = [torch.zeros(3, 4, dtype=torch.float64) for _ in range(rule.n_history)]
    hist_n = [np.zeros((3, 4)) for _ in range(rule.n_history)]
    for it in range(4):
        g = rs.normal(size=(3, 4))
        rate = 0.1 * (it + 1)
        got = rule(torch.from_numpy(g.copy()), hist_t, rate, it).numpy()
        want = numpy_update(kind, p, g, hist_n, rate, it)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
        for a, b in zip(hist_t, hist_n):
            np.testing.assert_allclose(a.numpy(), b, rtol=1e-12, atol=1e-15)
        assert np.abs(got).max() > 1e-4


@pytest.mark.parametrize("kind", sorted(UPDATE_RULES))
def test_update_many_equals_the_per_param_rule_bit_for_bit(kind):
    """update_many (Adam: torch's _foreach ops) gives each param exactly the numbers of rule(g, h, rate, it)."""
    p = SimpleNamespace(**{**dict(momentum=0.0, momentum2=0.999, delta=1e-8, rms_decay=0.99), **RULE_PARAMS[kind]})
    rule = UPDATE_RULES[kind](p)
    shapes, rates = [(3, 4), (5,), (2, 1, 3)], [0.1, 0.2, 0.0]
    gen = torch.Generator().manual_seed(4)
    one = [[torch.zeros(s) for _ in range(rule.n_history)] for s in shapes]
    many = [[h.clone() for h in hs] for hs in one]
    for it in range(3):
        gs = [torch.randn(s, generator=gen) for s in shapes]
        want = [rule(g.clone(), h, r, it) for g, h, r in zip(gs, one, rates)]
        got = rule.update_many([g.clone() for g in gs], many, rates, it)
        for a, b in zip(got, want):
            assert torch.equal(a, b)
        for ha, hb in zip(many, one):
            assert all(torch.equal(a, b) for a, b in zip(ha, hb))
    assert UPDATE_RULES["Adam"](p).batched


def capture_grads(solver):
    """Each param's gradient per backward pass, as autograd delivers it (before the solver touches it)."""
    seen = {i: [] for i in range(len(solver.params))}
    for i, pi in enumerate(solver.params):
        if pi.tensor.requires_grad:
            pi.tensor.register_hook(lambda g, i=i: seen[i].append(g.detach().double().numpy().copy()))
    return seen


@pytest.mark.parametrize("kind, extra", [
    ("SGD", dict(momentum=0.9, weight_decay=0.01)),
    ("SGD", dict(momentum=0.5, weight_decay=0.02, regularization_type='"L1"', clip_gradients=0.05)),
    ("Nesterov", dict(momentum=0.9, weight_decay=0.01, lr_policy='"step"', gamma=0.5, stepsize=1, iter_size=2)),
    ("AdaGrad", dict(weight_decay=0.01)),
    ("RMSProp", dict(rms_decay=0.9, weight_decay=0.01)),
    ("AdaDelta", dict(momentum=0.95, delta=1e-6, base_lr=1.0)),
    ("Adam", dict(momentum=0.9, momentum2=0.99, base_lr=0.01, iter_size=2)),
])
def test_solver_steps_match_caffe_apply_update(tmp_path, kind, extra):
    """Through the solver: clip (global norm, before anything else), 1/iter_size, decay * decay_mult (L2 or L1),
    the rule with rate * lr_mult, W -= update; lr_mult 0 leaves the param untouched."""
    write(tmp_path, "net.prototxt", DUMMY_NET)
    text = solver_text(str(tmp_path / "net.prototxt"), type=f'"{kind}"', **extra)
    solver = Solver(text, device="cpu")
    p = solver.param
    seen = capture_grads(solver)
    w = [pi.tensor.detach().double().numpy().copy() for pi in solver.params]
    hist = [[np.zeros_like(x) for _ in range(solver.rule.n_history)] for x in w]
    start = [x.copy() for x in w]
    solver.step(3)
    n = p.iter_size
    for it in range(3):
        diffs = [sum(seen[i][it * n:(it + 1) * n]) if seen[i] else np.zeros_like(w[i]) for i in range(len(w))]
        if p.clip_gradients >= 0:
            norm = math.sqrt(sum((d ** 2).sum() for d in diffs))
            if norm > p.clip_gradients:
                diffs = [d * (p.clip_gradients / norm) for d in diffs]
        for i, pi in enumerate(solver.params):
            if pi.lr_mult == 0:
                continue
            d = diffs[i] * (1.0 / n)
            decay = p.weight_decay * pi.decay_mult
            d = d + decay * (w[i] if p.regularization_type == "L2" else np.sign(w[i]))
            w[i] = w[i] - numpy_update(kind, p, d, hist[i], learning_rate(p, it) * pi.lr_mult, it)
    for i, pi in enumerate(solver.params):
        np.testing.assert_allclose(pi.tensor.detach().double().numpy(), w[i], rtol=2e-5, atol=1e-6)
    assert np.array_equal(w[1], start[1]) and not np.allclose(w[0], start[0], atol=1e-4)   # lr_mult 0 frozen
    assert [pi.lr_mult for pi in solver.params] == [1, 0, 2, 1] and solver.params[2].decay_mult == 3


def test_clip_gradients_scales_to_the_global_norm(tmp_path, capsys):
    write(tmp_path, "net.prototxt", DUMMY_NET)
    solver = Solver(solver_text(str(tmp_path / "net.prototxt"), clip_gradients=0.01, base_lr=1.0), device="cpu")
    seen = capture_grads(solver)
    before = [pi.tensor.detach().clone() for pi in solver.params]
    solver.step(1)
    grads = [torch.from_numpy(seen[i][0]) if seen[i] else None for i in range(len(before))]
    norm = math.sqrt(sum(float((g ** 2).sum()) for g in grads if g is not None))
    assert norm > 0.01
    moved = [(b - pi.tensor.detach()).double() for b, pi in zip(before, solver.params)]
    total = math.sqrt(sum(float(((m / max(pi.lr_mult, 1)) ** 2).sum()) for m, pi in zip(moved, solver.params)))
    assert total == pytest.approx(0.01, rel=1e-4)        # rate 1, no momentum: update = clipped gradient
    out = capsys.readouterr().out
    assert re.search(r"Gradient clipping: scaling down gradients \(L2 norm [\d.e+-]+ > 0\.01\) by scale factor "
                     r"[\d.e+-]+", out)


# ---- iter_size ---------------------------------------------------------------------------------------------------

COUNT_NET = """
name: "count"
layer { name: "idx" type: "SolverTestCount" top: "idx" count_param { batch_size: BATCH } }
layer { name: "read" type: "SolverTestReader" bottom: "idx" top: "x" top: "y" }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "p"
        inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "p" bottom: "y" top: "loss" }
"""


def test_iter_size_accumulation_equals_one_big_batch(tmp_path):
    results = []
    for batch, iter_size in ((4, 1), (2, 2), (1, 4)):
        write(tmp_path, "net.prototxt", COUNT_NET.replace("BATCH", str(batch)))
        solver = Solver(solver_text(str(tmp_path / "net.prototxt"), iter_size=iter_size, momentum=0.9,
                                    weight_decay=0.01, random_seed=3), device="cpu", workers=0)
        losses = solver.step(3)
        results.append((losses, [pi.tensor.detach().clone() for pi in solver.params]))
    (l0, w0), others = results[0], results[1:]
    for losses, weights in others:
        assert losses == pytest.approx(l0, rel=1e-6)     # the reported loss is the mean over the iter_size passes
        for a, b in zip(weights, w0):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert l0[0] != pytest.approx(l0[2], rel=1e-3)


# ---- test nets ---------------------------------------------------------------------------------------------------

SHARE_NET = """
name: "share"
layer { name: "idx" type: "SolverTestCount" top: "idx" count_param { batch_size: 1 } }
layer { name: "read" type: "SolverTestReader" bottom: "idx" top: "x" top: "y" }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "p" inner_product_param { num_output: 2 } }
layer { name: "loss" type: "EuclideanLoss" bottom: "p" bottom: "y" top: "loss" include { phase: TRAIN } }
layer { name: "silence" type: "Silence" bottom: "y" include { phase: TEST } }
"""


def test_test_nets_share_the_train_weights_and_average_over_test_iter(tmp_path, capsys):
    write(tmp_path, "net.prototxt", SHARE_NET)
    solver = Solver(solver_text(str(tmp_path / "net.prototxt"), test_iter=3, test_interval=10, base_lr=0),
                    device="cpu", workers=0)
    train_ip, test_ip = solver.train_net.layer("ip"), solver.test_nets[0].layer("ip")
    assert test_ip.weight is train_ip.weight and test_ip.bias is train_ip.bias
    assert solver.test_nets[0].phase == "TEST" and "loss" not in solver.test_nets[0].layer_names
    with torch.no_grad():
        train_ip.weight.copy_(torch.tensor([[10.0, 0.0, 0.0], [0.0, 0.0, 0.0]]))   # p = (i, 0) + bias
        train_ip.bias.fill_(0.5)
    capsys.readouterr()
    solver.test(0)                                                  # samples 0, 1, 2 -> mean 1 + 0.5
    with torch.no_grad():
        train_ip.weight.mul_(2)                                     # p = 2 i + 0.5, samples 3, 4, 5 -> 8.5
    solver.test(0)
    out = messages(capsys.readouterr().out)
    assert out == ["Iteration 0, Testing net (#0)",
                   "    Test net output #0: p = 1.5", "    Test net output #1: p = 0.5",
                   "Iteration 0, Testing net (#0)",
                   "    Test net output #0: p = 8.5", "    Test net output #1: p = 0.5"]


# ---- log lines -----------------------------------------------------------------------------------------------------

def test_log_lines_follow_caffe(tmp_path, capsys):
    write(tmp_path, "net.prototxt", DUMMY_NET)
    text = solver_text("net.prototxt", prefix="snap", max_iter=4, display=2, average_loss=2, test_iter=2,
                       test_interval=2, snapshot=3, snapshot_after_train="true", momentum=0.9, random_seed=5,
                       test_compute_loss="true")
    path = write(tmp_path, "solver.prototxt", text)
    solver = Solver(path, device="cpu")
    losses = solver.solve()
    raw = capsys.readouterr().out.splitlines()
    assert all(re.match(r"I\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ solver\.py\] ", line) for line in raw), raw[0]
    out = messages("\n".join(raw), keep_speed=True)
    num = r"-?[\d.]+(e[+-]\d+)?"
    speed = f"\\({num} iter/s, {num}s/2 iters\\)"
    prefix = os.path.join(str(tmp_path), "snap")
    patterns = [
        "Solving dummy", "Learning Rate Policy: fixed",
        "Iteration 0, Testing net \\(#0\\)", f"Test loss: {num}",
        f"    Test net output #0: loss = {num} \\(\\* 0.5 = {num} loss\\)",
        f"Iteration 0 {speed}, loss = {num}", f"    Train net output #0: loss = {num} \\(\\* 0.5 = {num} loss\\)",
        "Iteration 0, lr = 0.1",
        "Iteration 2, Testing net \\(#0\\)", f"Test loss: {num}", f"    Test net output #0: loss = {num} .*",
        f"Iteration 2 {speed}, loss = {num}", f"    Train net output #0: loss = {num} .*", "Iteration 2, lr = 0.1",
        f"Snapshotting to HDF5 file {re.escape(prefix)}_iter_3.caffemodel.h5",
        f"Snapshotting solver state to HDF5 file {re.escape(prefix)}_iter_3.solverstate.h5",
        f"Snapshotting to HDF5 file {re.escape(prefix)}_iter_4.caffemodel.h5",
        f"Snapshotting solver state to HDF5 file {re.escape(prefix)}_iter_4.solverstate.h5",
        f"Iteration 4, loss = {num}", "Iteration 4, Testing net \\(#0\\)", f"Test loss: {num}",
        f"    Test net output #0: loss = {num} .*", "Optimization Done.",
    ]
    assert len(out) == len(patterns), out
    for line, pat in zip(out, patterns):
        assert re.fullmatch(pat, line), (line, pat)
    # average_loss 2: iteration 2 shows the mean of iterations 1 and 2
    shown = float(out[out.index("Iteration 2, lr = 0.1") - 2].split("= ")[1])
    assert shown == pytest.approx((losses[1] + losses[2]) / 2, rel=1e-5)
    weighted = out[6].split("= ")
    assert float(weighted[2].split()[0]) == pytest.approx(0.5 * float(weighted[1].split()[0]), rel=1e-5)
    assert sorted(os.listdir(tmp_path)) == ["net.prototxt", "snap_iter_3.caffemodel.h5", "snap_iter_3.solverstate.h5",
                                            "snap_iter_4.caffemodel.h5", "snap_iter_4.solverstate.h5",
                                            "solver.prototxt"]


def test_multistep_status_line(tmp_path, capsys):
    write(tmp_path, "net.prototxt", DUMMY_NET)
    text = solver_text(str(tmp_path / "net.prototxt"), lr_policy='"multistep"', gamma=0.1, stepvalue=[1, 1],
                       display=1)
    Solver(text, device="cpu").step(3)
    out = [line for line in messages(capsys.readouterr().out) if "lr" in line or "MultiStep" in line]
    assert out == ["Iteration 0, lr = 0.1", "MultiStep Status: Iteration 1, step = 1", "Iteration 1, lr = 0.01",
                   "MultiStep Status: Iteration 2, step = 2", "Iteration 2, lr = 0.001"]


# ---- snapshots ----------------------------------------------------------------------------------------------------

def test_snapshot_contents_and_restore(tmp_path):
    write(tmp_path, "net.prototxt", DUMMY_NET)
    path = write(tmp_path, "solver.prototxt", solver_text("net.prototxt", prefix="s", momentum=0.9, type='"Adam"',
                                                          average_loss=5, random_seed=1))
    solver = Solver(path, device="cpu")
    solver.step(2)
    state = solver.snapshot()
    assert state == os.path.join(str(tmp_path), "s_iter_2.solverstate.h5")
    with h5py.File(state) as f:
        assert int(f["iter"][()]) == 2 and f["learned_net"][()].decode() == "s_iter_2.caffemodel.h5"
        assert len(f["history"]) == 8 and f["history/4"].shape == (4, 3)     # Adam: m then v for 4 params
        assert f.attrs["format_version"] == 1 and f.attrs["type"] == "Adam"
        assert len(f["loss_window"]) == 2 and f["rng/torch_cpu"].dtype == np.uint8
    other = Solver(path, device="cpu")
    other.restore(state)
    assert other.iter == 2 and list(other.losses) == list(solver.losses)
    for a, b in zip(other.history + [pi.tensor for pi in other.params],
                    solver.history + [pi.tensor for pi in solver.params]):
        assert torch.equal(a, b)
    continued = other.step(2)
    solver.restore(state)             # the RNGs are process-wide: rewind them for the original too
    assert solver.step(2) == continued


def test_snapshot_writes_are_atomic(tmp_path, monkeypatch):
    write(tmp_path, "net.prototxt", DUMMY_NET)
    path = write(tmp_path, "solver.prototxt", solver_text("net.prototxt", prefix="s", momentum=0.9))
    solver = Solver(path, device="cpu")
    solver.step(1)
    good = solver.snapshot()
    with open(good, "rb") as fh:
        good_bytes = fh.read()
    real = h5py.Group.create_dataset

    def failing(where):
        def create_dataset(self, name, *args, **kwargs):
            if self.name.startswith(where):
                raise RuntimeError("disk pulled out")
            return real(self, name, *args, **kwargs)
        return create_dataset

    solver.step(1)
    for where in ("/history", "/data"):          # in the middle of the state file, then of the weights file
        monkeypatch.setattr(h5py.Group, "create_dataset", failing(where))
        with pytest.raises(RuntimeError, match="disk pulled out"):
            solver.snapshot()
        monkeypatch.undo()
        assert sorted(os.listdir(tmp_path)) == sorted(["net.prototxt", "solver.prototxt", "s_iter_1.caffemodel.h5",
                                                       "s_iter_1.solverstate.h5"] +
                                                      (["s_iter_2.caffemodel.h5"] if where == "/history" else []))
        if where == "/history":
            os.remove(tmp_path / "s_iter_2.caffemodel.h5")
    with open(good, "rb") as fh:
        assert fh.read() == good_bytes
    fresh = Solver(path, device="cpu")
    fresh.restore(good)
    assert fresh.iter == 1


@pytest.fixture
def terminal_sigint():
    """SIGINT as in a terminal (Python's KeyboardInterrupt handler): a test run started in the background by a
    non-interactive shell inherits SIGINT ignored, and the solver restores whatever handler it found."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_finishes_the_iteration_snapshots_and_stops(tmp_path, terminal_sigint):
    write(tmp_path, "net.prototxt", DUMMY_NET)
    path = write(tmp_path, "solver.prototxt", solver_text("net.prototxt", prefix="s", max_iter=10, momentum=0.9))
    solver = Solver(path, device="cpu")
    calls = []

    def hook(module, inputs, output):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGINT)     # during iteration 2's forward pass
    solver.train_net.layer("ip2").register_forward_hook(hook)
    losses = solver.solve()
    assert solver.interrupted and solver.iter == 3 and len(losses) == 3
    assert solver.last_snapshot == os.path.join(str(tmp_path), "s_iter_3.solverstate.h5")
    assert os.path.exists(tmp_path / "s_iter_3.caffemodel.h5")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler

    calls2 = []

    def twice(module, inputs, output):
        calls2.append(1)
        if len(calls2) == 2:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
    solver.train_net.layer("ip1").register_forward_hook(twice)
    with pytest.raises(KeyboardInterrupt):
        solver.step(5)
    assert solver.iter == 4       # aborted inside iteration 4, no snapshot for it
    assert not os.path.exists(tmp_path / "s_iter_5.solverstate.h5")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


# ---- exact resume ---------------------------------------------------------------------------------------------------

def test_resume_is_exact(tmp_path, capsys, deterministic):
    """Random index layer (own RNG, prefetched by 2 workers), Dropout (torch RNG), momentum (history), a test net
    and the smoothed loss: 8 iterations straight == 4 + resume 4, bit for bit; likewise after a Ctrl-C during
    iteration 2, and after a Ctrl-C during the test pass at iteration 6."""
    write(tmp_path, "net.prototxt", RESUME_NET)
    path = write(tmp_path, "solver.prototxt", solver_text(
        "net.prototxt", prefix="r", max_iter=8, momentum=0.9, base_lr=0.05, lr_policy='"step"', gamma=0.5,
        stepsize=3, snapshot=4, test_iter=2, test_interval=3, display=1, average_loss=3, random_seed=7))

    def run(resume=None, interrupt=None):
        with Solver(path, device="cpu", workers=2) as solver:
            if interrupt:
                net, layer, at = interrupt
                calls = []

                def hook(module, inputs, output):
                    calls.append(1)
                    if len(calls) == at:
                        os.kill(os.getpid(), signal.SIGINT)
                (solver.train_net if net == "train" else solver.test_nets[0]).layer(layer).register_forward_hook(hook)
            capsys.readouterr()
            losses = solver.solve(resume=resume)
            log = messages(capsys.readouterr().out)
            return losses, log, [pi.tensor.detach().clone() for pi in solver.params], solver

    straight, log, weights, _ = run()
    assert len(straight) == 8 and len(set(straight)) == 8

    def after(log_lines, start):
        """Log lines from iteration `start` on, without the snapshot and resume lines."""
        first = next(i for i, line in enumerate(log_lines) if line.startswith(f"Iteration {start},"))
        return [line for line in log_lines[first:] if not line.startswith(("Snapshotting", "Restoring"))]

    resumed, log_r, weights_r, _ = run(resume=str(tmp_path / "r_iter_4.solverstate.h5"))
    assert resumed == straight[4:]
    assert after(log_r, 4) == after(log, 4)
    assert all(torch.equal(a, b) for a, b in zip(weights_r, weights))

    first, _, _, solver = run(interrupt=("train", "ip1", 3))
    assert first == straight[:3] and solver.interrupted
    resumed, log_r, weights_r, _ = run(resume=solver.last_snapshot)
    assert resumed == straight[3:] and after(log_r, 3) == after(log, 3)
    assert all(torch.equal(a, b) for a, b in zip(weights_r, weights))

    # the test at iteration 6 runs 2 passes; interrupted in the second, the snapshot is the state before the test
    first, _, _, solver = run(interrupt=("test", "ip1", 2 + 2 + 2))
    assert first == straight[:6] and solver.last_snapshot.endswith("r_iter_6.solverstate.h5")
    resumed, log_r, weights_r, _ = run(resume=solver.last_snapshot)
    assert resumed == straight[6:] and after(log_r, 6) == after(log, 6)
    assert all(torch.equal(a, b) for a, b in zip(weights_r, weights))


# ---- refused state files ---------------------------------------------------------------------------------------------

def test_bad_state_files_are_refused(tmp_path):
    write(tmp_path, "net.prototxt", DUMMY_NET)
    path = write(tmp_path, "solver.prototxt", solver_text("net.prototxt", prefix="s", momentum=0.9))
    solver = Solver(path, device="cpu")
    solver.step(1)
    good = solver.snapshot()
    with open(good, "rb") as fh:
        data = fh.read()

    def variant(name, edit=None, raw=None):
        target = str(tmp_path / name)
        with open(target, "wb") as fh:
            fh.write(raw if raw is not None else data)
        if edit:
            with h5py.File(target, "r+") as f:
                edit(f)
        return target

    def refused(target, message):
        fresh = Solver(path, device="cpu")
        before = [pi.tensor.detach().clone() for pi in fresh.params]
        with pytest.raises(NetError) as e:
            fresh.restore(target)
        text = str(e.value)
        assert "\n" not in text and text.startswith(f"cannot restore solver state '{target}'"), text
        assert re.search(message, text), text
        assert fresh.iter == 0 and all(torch.equal(a, pi.tensor) for a, pi in zip(before, fresh.params))

    refused(variant("t.h5", raw=data[:len(data) // 2]), "")
    refused(variant("j.h5", raw=b"not hdf5 at all"), "")
    refused(variant("v.h5", lambda f: f.attrs.__setitem__("format_version", 99)), "format version 99")
    refused(variant("m.h5", lambda f: f.__delitem__("iter")), "missing 'iter'")
    refused(variant("r.h5", lambda f: f.__delitem__("rng/torch_cpu")), "missing 'rng/torch_cpu'")
    refused(variant("c.h5", lambda f: f["history"].__delitem__("3")), "3 history blob\\(s\\), the net and solver "
                                                                       "need 4")

    def reshape(f):
        del f["history/2"]
        f["history"].create_dataset("2", data=np.zeros((3, 3), np.float32))
    refused(variant("s.h5", reshape), "history/2 has shape \\(3, 3\\) but param 0 of layer 'ip2' has \\(2, 4\\)")
    refused(variant("w.h5", lambda f: f.__delitem__("learned_net") or f.create_dataset("learned_net", data="no.h5")),
            "cannot read weights .*no.h5': no such file")
    refused(variant("k.h5", lambda f: f.attrs.__setitem__("type", "Adam")), "written by a Adam solver, this solver "
                                                                             "is SGD")
    refused(str(tmp_path / "absent.h5"), "no such file")


# ---- solver file errors and paths --------------------------------------------------------------------------------

@pytest.mark.parametrize("text, message", [
    ('net: "net.prototxt"\nbase_lr: 0.1\nlr_polcy: "fixed"\n',
     r"solver.prototxt:3:1: unknown field 'lr_polcy' in solver \(did you mean lr_policy\?\)"),
    ('base_lr: 0.1\nlr_policy: "fixed"\n', r"solver.prototxt: the solver has no train net"),
    ('net: "net.prototxt"\nlr_policy: "stepp"\n', r"solver.prototxt:2:1: unknown lr_policy 'stepp' \(did you mean "
                                                   r"step\?\)"),
    ('net: "net.prototxt"\n', r"solver.prototxt: missing lr_policy"),
    ('net: "net.prototxt"\nlr_policy: "step"\n', r"lr_policy 'step' needs stepsize > 0"),
    ('net: "nope.prototxt"\nlr_policy: "fixed"\n', r"solver.prototxt:1:1: net file 'nope.prototxt' not found"),
    ('net: "net.prototxt"\nlr_policy: "fixed"\nbase_lr: "x"\n', r"solver.prototxt:3:1: 'base_lr' expects a number"),
    ('net: "net.prototxt"\nlr_policy: "fixed"\ntype: "Adamm"\n', r"unknown solver type 'Adamm' \(did you mean "
                                                                  r"Adam\?\)"),
    ('net: "net.prototxt"\nlr_policy: "fixed"\nsnapshot_format: BINARYPROTO\n',
     r"solver.prototxt:3:1: snapshot_format BINARYPROTO is not supported: snapshots are written as HDF5"),
    ('net: "net.prototxt"\nlr_policy: "fixed"\ntype: "AdaGrad"\nmomentum: 0.9\n',
     r"momentum cannot be used with AdaGrad"),
    ('net: "net.prototxt"\nlr_policy: "fixed"\ntest_iter: 3\n', r"test_interval is not > 0"),
    ('train_net: "net.prototxt"\nlr_policy: "fixed"\ntest_iter: 3\ntest_interval: 5\n',
     r"test_iter must be given once per test net: 1 test_iter for 0 test net\(s\)"),
    ('net: "net.prototxt"\ntrain_net: "net.prototxt"\nlr_policy: "fixed"\n', r"more than one train net"),
    ('net: "net.prototxt"\nlr_policy: "fixed"\nsnapshot_prefix: "nodir/x"\n',
     r"solver.prototxt:3:1: snapshot_prefix 'nodir/x': folder 'nodir' does not exist"),
])
def test_solver_file_errors_name_the_place(tmp_path, monkeypatch, text, message):
    write(tmp_path, "net.prototxt", DUMMY_NET)
    path = write(tmp_path, "solver.prototxt", text)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(NetError, match=message):
        Solver("solver.prototxt", device="cpu")


def test_paths_resolve_against_the_solver_folder_and_legacy_fields(tmp_path, monkeypatch):
    """net and snapshot_prefix relative to the solver's folder when absent from the current directory;
    solver_type (legacy enum); net_param inline; the default prefix is the solver path without extension."""
    sub = tmp_path / "exp"
    sub.mkdir()
    write(sub, "net.prototxt", DUMMY_NET)
    write(sub, "solver.prototxt", 'net: "net.prototxt"\nlr_policy: "fixed"\nsolver_type: NESTEROV\nmomentum: 0.5\n'
                                  'snapshot_prefix: "snap"\n')
    write(sub, "default.prototxt", 'net: "net.prototxt"\nlr_policy: "fixed"\n')
    monkeypatch.chdir(tmp_path)
    solver = Solver("exp/solver.prototxt", device="cpu")
    assert solver.param.type == "Nesterov" and solver.prefix == os.path.join("exp", "snap")
    assert Solver("exp/default.prototxt", device="cpu").prefix == os.path.join("exp", "default")
    inline = Solver('net_param { name: "inline" ' + DUMMY_NET.split("\n", 2)[2] + '}\nlr_policy: "fixed"\n'
                    'snapshot_after_train: false\n', device="cpu")
    assert inline.train_net.name == "inline" and inline.test_nets == []


# ---- run_net.py --solver ---------------------------------------------------------------------------------------------

INTERRUPT_LAYER = """
import os, signal
from layers.base import Layer, SourceLayer
from layers.registry import register_layer

@register_layer("SolverTestCtrlC")
class CtrlC(Layer):
    '''Identity that sends SIGINT to its own process on its 3rd forward.'''
    calls = 0

    def forward(self, x):
        CtrlC.calls += 1
        if CtrlC.calls == 3:     # call 1 infers shapes at build; call 3 is iteration 1
            os.kill(os.getpid(), signal.SIGINT)
        return x
"""


def test_cli_trains_resumes_and_exits_130_on_ctrl_c(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "net.prototxt", DUMMY_NET.replace(
        'layer { name: "loss"',
        'layer { name: "c" type: "SolverTestCtrlC" bottom: "p" top: "p" }\nlayer { name: "loss"'))
    write(tmp_path, "ctrl_c.py", INTERRUPT_LAYER)
    write(tmp_path, "solver.prototxt", solver_text("net.prototxt", prefix="s", max_iter=4, display=1,
                                                   snapshot_after_train="true", random_seed=2))
    rc = main(["--solver", "solver.prototxt", "--device", "cpu", "--import", "ctrl_c.py"])
    captured = capsys.readouterr()
    assert rc == 130
    assert captured.err.strip().splitlines()[-1] == ("interrupted at iteration 2: snapshot written; resume with "
                                                     "--solver solver.prototxt --snapshot s_iter_2.solverstate.h5")
    assert "Iteration 1, lr = 0.1" in captured.out and "Iteration 2," not in captured.out
    rc = main(["--solver", "solver.prototxt", "--device", "cpu", "--snapshot", "s_iter_2.solverstate.h5"])
    out = messages(capsys.readouterr().out)
    assert rc == 0
    assert out[2] == "Restoring previous solver status from s_iter_2.solverstate.h5"
    assert out[3].startswith("Iteration 2, loss = ") and out[-1] == "Optimization Done."
    assert "Snapshotting solver state to HDF5 file s_iter_4.solverstate.h5" in out
    rc = main(["--solver", "solver.prototxt", "--device", "cpu", "--weights", "s_iter_4.caffemodel.h5"])
    assert rc == 0 and "Finetuning from s_iter_4.caffemodel.h5" in capsys.readouterr().out


def test_cli_solver_usage_errors(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "net.prototxt", DUMMY_NET)
    write(tmp_path, "solver.prototxt", 'net: "net.prototxt"\nlr_policy: "fixd"\n')
    assert main(["--solver", "solver.prototxt", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == ["error: solver.prototxt:2:1: unknown lr_policy 'fixd' (did you mean fixed?) (one of fixed, step, "
                   "exp, inv, multistep, poly, sigmoid)"]
    for argv in (["--solver", "solver.prototxt", "--snapshot", "a.h5", "--weights", "w.h5"],
                 ["net.prototxt", "--solver", "solver.prototxt"], ["--snapshot", "a.h5", "net.prototxt"], []):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
    err = capsys.readouterr().err
    assert "not both" in err and "NET cannot be used with --solver" in err and "--snapshot needs --solver" in err


SLOW_READER = """
import time
from layers.base import Layer, SourceLayer
from layers.registry import register_layer

@register_layer("SolverTestSlowReader")
class SlowReader(SourceLayer):
    '''x -> sin(x), 20 ms per batch (test-only reader).'''

    def infer_top_shapes(self, bottom_shapes):
        return [bottom_shapes[0]]

    def forward(self, x):
        time.sleep(0.02)
        return x.sin()
"""


@pytest.mark.slow
def test_ctrl_c_to_the_process_group_with_workers(tmp_path):
    """A terminal's Ctrl-C reaches the data workers too: they ignore it, the run snapshots and exits 130,
    and a second Ctrl-C during the resumed run aborts at once with status 130."""
    import subprocess
    import sys
    import time
    write(tmp_path, "reader.py", SLOW_READER)
    write(tmp_path, "net.prototxt", """
        name: "pg"
        layer { name: "idx" type: "SolverTestCount" top: "idx" count_param { batch_size: 4 } }
        layer { name: "read" type: "SolverTestSlowReader" bottom: "idx" top: "x" }
        layer { name: "ip" type: "InnerProduct" bottom: "x" top: "p" inner_product_param { num_output: 1 } }
        layer { name: "loss" type: "EuclideanLoss" bottom: "p" bottom: "x" top: "loss" }
    """)
    write(tmp_path, "solver.prototxt", solver_text("net.prototxt", prefix="pg", max_iter=100000, display=1))
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools", "run_net.py")
    # the test module registers SolverTestCount; the child imports it from its file
    cmd = [sys.executable, script, "--solver", "solver.prototxt", "--device", "cpu", "--workers", "2",
           "--import", os.path.abspath(__file__), "--import", "reader.py"]

    def run_until(extra, line, presses):
        proc = subprocess.Popen(cmd + extra, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        out = []
        deadline = time.time() + 120
        while time.time() < deadline:
            out.append(proc.stdout.readline())
            if messages(out[-1])[:1] and messages(out[-1])[0].startswith(line):
                break
        for _ in range(presses):
            os.killpg(proc.pid, signal.SIGINT)
            time.sleep(0.002)
        rest, err = proc.communicate(timeout=120)
        return proc.returncode, "".join(out) + rest, err

    rc, out, err = run_until([], "Iteration 3, lr", 1)
    assert rc == 130, err
    state = re.search(r"--snapshot (pg_iter_\d+\.solverstate\.h5)$", err.strip()).group(1)
    assert os.path.exists(tmp_path / state) and "Traceback" not in err
    # (an abort can catch a worker mid-transfer; multiprocessing may then print a connection-reset traceback)
    rc, out, err = run_until(["--snapshot", state], "Iteration 8, lr", 2)
    assert rc == 130, err
    assert re.search(r"error: aborted by Ctrl-C at iteration \d+; the last complete snapshot is pg_iter_\d+\."
                     r"solverstate\.h5", err), err
