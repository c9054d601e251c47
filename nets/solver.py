"""The solver: training like `caffe train`, configured by a Caffe SolverParameter prototxt.

    solver = Solver("solver.prototxt", device="cpu")
    solver.solve()                               # or solver.solve(resume="snap_iter_1000.solverstate.h5")
    solver.step(10); solver.snapshot(); solver.restore(path); solver.lr(); solver.iter
    solver.train_net, solver.test_nets           # the test nets share the train net's tensors

Semantics follow BVLC Caffe's solver.cpp / sgd_solver.cpp / solvers/*.cpp: per iteration, test (every
test_interval, and at 0 when test_initialization), iter_size forward/backward passes accumulating gradients
(the reported loss is their mean), display, then ApplyUpdate: clip the gradients (global L2 norm over all
params, before anything else), scale them by 1/iter_size, add weight decay (L2: decay * W, L1: decay *
sign(W); decay = weight_decay * decay_mult), compute the update with the solver type's rule (lr = rate *
lr_mult) and subtract it; then snapshot every `snapshot` iterations.

Paths: a net file (net, train_net, test_net) or a `weights` file is taken relative to the current directory
when it exists there, else relative to the solver file's folder. snapshot_prefix likewise: a prefix with a
folder part ("snapshots/lenet") is looked up relative to the current directory, then to the solver file's
folder; a bare name ("lenet") goes next to the solver file; unset, it is the solver file's path without
extension, and a prefix naming a directory gets the solver file's stem appended (Caffe's rules). A solver
given as text resolves everything against the current directory.

Snapshots: <prefix>_iter_N.caffemodel.h5 (nets.weights layout) then <prefix>_iter_N.solverstate.h5 (iter,
learned_net, current_step, history/<i> as Caffe writes them, plus the smoothed-loss window, the torch / CUDA /
numpy / python RNG states and the index layers' states, see `_write_state`); each is written to a temporary
file in the same folder and renamed, so an interruption leaves the last complete snapshot intact. Resuming
from a snapshot on the CPU continues exactly as the uninterrupted run would have.

Data-parallel (inside a torchrun process group, nets/distributed.py): the train net runs in
DistributedDataParallel, gradients are averaged over the ranks after the last iter_size pass, the reported
loss and outputs are the ranks' means, rank 0 alone logs, tests and writes snapshots, and a Ctrl-C stops
every rank after the same iteration. Speed options (nets/accel.py): amp runs forward passes under autocast
(float16 with dynamic loss scaling: an overflowing iteration is skipped), channels_last, compile.

Where this differs from Caffe:
- The learning rate is computed in double precision (Caffe: the net's Dtype).
- The smoothed-loss window is solver state (kept across step() calls and in snapshots), so a resumed run
  prints the same smoothed losses; Caffe restarts it at each Step() and at a resume.
- Params with lr_mult 0 are skipped: their weights are unchanged, as in Caffe, and their history stays zero.
- Non-learnable blobs (BatchNorm's statistics) are buffers here, so they have no history entries.
- snapshot_format defaults to HDF5; BINARYPROTO is refused. solver_mode/device_id are ignored (the device
  comes from the caller), as are debug_info, snapshot_diff and layer_wise_reduce.
- Ctrl-C (SIGINT) always snapshots: the current iteration finishes, a snapshot is written and training
  stops (`interrupted` is set); a second Ctrl-C raises KeyboardInterrupt at once. Ctrl-C during a test pass
  abandons the test and snapshots the state from before it, so a resume reruns that test exactly.
- poly: past max_iter the rate is 0 (Caffe would raise a negative number to `power`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import signal
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from nets import distributed as ddp
from nets.accel import LossScaler, amp_dtype, autocast, to_channels_last
from nets.errors import NetError
from nets.net import Net, default_device
from nets.spec import _as_bool, _as_enum, _as_float, _as_int, _as_msg, _as_str, _check_fields, did_you_mean
from nets.text_format import Message, parse, parse_file
from nets.weights import atomic_h5, load_weights, save_weights

__all__ = ["Solver", "SolverParam", "load_solver_param", "learning_rate", "UPDATE_RULES", "STATE_VERSION"]

STATE_VERSION = 1
LR_POLICIES = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid")
SOLVER_TYPES = ("SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam")
LEGACY_TYPES = ("SGD", "NESTEROV", "ADAGRAD", "RMSPROP", "ADADELTA", "ADAM")   # solver_type, in enum order
MSG = "message"

# caffe.proto's SolverParameter: name -> (kind, default, repeated). Fields without a default in the proto are 0.
FIELDS: dict[str, tuple] = {
    "net": (str, "", False), "net_param": (MSG, None, False),
    "train_net": (str, "", False), "test_net": (str, None, True),
    "train_net_param": (MSG, None, False), "test_net_param": (MSG, None, True),
    "train_state": (MSG, None, False), "test_state": (MSG, None, True),
    "test_iter": (int, None, True), "test_interval": (int, 0, False),
    "test_compute_loss": (bool, False, False), "test_initialization": (bool, True, False),
    "base_lr": (float, 0.0, False), "display": (int, 0, False), "average_loss": (int, 1, False),
    "max_iter": (int, 0, False), "iter_size": (int, 1, False), "lr_policy": (str, "", False),
    "gamma": (float, 0.0, False), "power": (float, 0.0, False), "momentum": (float, 0.0, False),
    "weight_decay": (float, 0.0, False), "regularization_type": (str, "L2", False),
    "stepsize": (int, 0, False), "stepvalue": (int, None, True), "clip_gradients": (float, -1.0, False),
    "snapshot": (int, 0, False), "snapshot_prefix": (str, "", False), "snapshot_diff": (bool, False, False),
    "snapshot_format": (("HDF5", "BINARYPROTO"), "HDF5", False),
    "solver_mode": (("CPU", "GPU"), "GPU", False), "device_id": (int, 0, False),
    "random_seed": (int, -1, False), "type": (str, "SGD", False), "delta": (float, 1e-8, False),
    "momentum2": (float, 0.999, False), "rms_decay": (float, 0.99, False), "debug_info": (bool, False, False),
    "snapshot_after_train": (bool, True, False), "solver_type": (LEGACY_TYPES, "SGD", False),
    "layer_wise_reduce": (bool, True, False), "weights": (str, None, True),
}


@dataclass
class NetStateParam:
    """A train_state / test_state block (Caffe's NetState)."""
    phase: str | None = None
    level: int | None = None
    stages: list[str] = field(default_factory=list)


@dataclass
class SolverParam:
    """Parsed solver file: every FIELDS entry as an attribute, plus where things came from."""
    filename: str = "<string>"
    folder: str | None = None          # the solver file's folder as given ("" for the current one; None for text)
    given: dict = field(default_factory=dict)     # field name -> Loc of its (last) occurrence

    def where(self, name: str) -> str:
        return str(self.given.get(name, self.filename))

    def has(self, name: str) -> bool:
        return name in self.given


def _convert(f, kind):
    if kind is MSG:
        return _as_msg(f)
    if isinstance(kind, tuple):
        return _as_enum(f, kind)
    return {int: _as_int, float: _as_float, bool: _as_bool, str: _as_str}[kind](f)


def _net_state(msg: Message) -> NetStateParam:
    _check_fields(msg, ("phase", "level", "stage"), "net state")
    st = NetStateParam()
    for f in msg:
        if f.name == "phase":
            st.phase = _as_enum(f, ("TRAIN", "TEST"))
        elif f.name == "level":
            st.level = _as_int(f)
        else:
            st.stages.append(_as_str(f))
    return st


def load_solver_param(source) -> SolverParam:
    """A solver file path, or solver text (anything with a newline or ':' that is not a file), or a Message."""
    if isinstance(source, Message):
        msg, filename, folder = source, source.loc.file, None
    else:
        text = os.fspath(source)
        if not os.path.isfile(text) and ("\n" in text or ":" in text):
            msg, filename, folder = parse(text, "<string>"), "<string>", None
        else:
            if not os.path.isfile(text):
                raise NetError(f"cannot read solver file '{text}': no such file")
            msg = parse_file(text)
            filename, folder = text, os.path.dirname(text)     # "" for the current directory
    p = SolverParam(filename=filename, folder=folder)
    _check_fields(msg, FIELDS, "solver")
    for name, (kind, default, repeated) in FIELDS.items():
        setattr(p, name, [] if repeated else default)
    for f in msg:
        kind, _, repeated = FIELDS[f.name]
        value = _convert(f, kind)
        if repeated:
            getattr(p, f.name).append(value)
        else:
            setattr(p, f.name, value)
        p.given[f.name] = f.loc
    p.train_state = _net_state(p.train_state) if p.train_state is not None else NetStateParam()
    p.test_state = [_net_state(m) for m in p.test_state]
    _validate(p)
    return p


def _validate(p: SolverParam) -> None:
    def err(name, msg):
        return NetError(f"{p.where(name)}: {msg}")

    if p.has("solver_type"):
        if p.has("type"):
            raise err("solver_type", "give 'type' or the deprecated 'solver_type', not both")
        p.type = SOLVER_TYPES[LEGACY_TYPES.index(p.solver_type)]
    if p.type not in SOLVER_TYPES:
        raise err("type", f"unknown solver type '{p.type}'{did_you_mean(p.type, SOLVER_TYPES)} "
                          f"(one of {', '.join(SOLVER_TYPES)})")
    if not p.lr_policy:
        raise err("lr_policy", f"missing lr_policy (one of {', '.join(LR_POLICIES)})")
    if p.lr_policy not in LR_POLICIES:
        raise err("lr_policy", f"unknown lr_policy '{p.lr_policy}'{did_you_mean(p.lr_policy, LR_POLICIES)} "
                               f"(one of {', '.join(LR_POLICIES)})")
    if p.lr_policy in ("step", "sigmoid") and p.stepsize <= 0:
        raise err("stepsize", f"lr_policy '{p.lr_policy}' needs stepsize > 0, got {p.stepsize}")
    if p.lr_policy in ("step", "exp", "inv", "multistep", "sigmoid") and p.gamma < 0:
        raise err("gamma", f"gamma must be >= 0, got {p.gamma:g}")
    if p.lr_policy == "poly" and p.max_iter <= 0:
        raise err("max_iter", "lr_policy 'poly' needs max_iter > 0")
    if p.regularization_type not in ("L1", "L2"):
        raise err("regularization_type", f"regularization_type must be L1 or L2, got '{p.regularization_type}'")
    if p.type in ("AdaGrad", "RMSProp") and p.momentum != 0:
        raise err("momentum", f"momentum cannot be used with {p.type} (got {p.momentum:g})")
    if p.type == "RMSProp" and not 0 <= p.rms_decay < 1:
        raise err("rms_decay", f"rms_decay must be in [0, 1), got {p.rms_decay:g}")
    if p.snapshot_format == "BINARYPROTO" and p.has("snapshot_format"):
        raise err("snapshot_format", "snapshot_format BINARYPROTO is not supported: snapshots are written as "
                                     "HDF5 (use snapshot_format: HDF5 or leave it out)")
    for name, low in (("average_loss", 1), ("iter_size", 1), ("max_iter", 0), ("display", 0), ("snapshot", 0),
                      ("test_interval", 0)):
        if getattr(p, name) < low:
            raise err(name, f"{name} must be >= {low}, got {getattr(p, name)}")
    if any(n <= 0 for n in p.test_iter):
        raise err("test_iter", f"test_iter must be positive, got {min(p.test_iter)}")
    trains = [n for n in ("net", "net_param", "train_net", "train_net_param") if p.has(n)]
    if not trains:
        raise NetError(f"{p.filename}: the solver has no train net (give one of net, net_param, train_net, "
                       f"train_net_param)")
    if len(trains) > 1:
        raise err(trains[1], f"more than one train net given ({', '.join(trains)})")
    generic = p.has("net") or p.has("net_param")
    n_specific = len(p.test_net) + len(p.test_net_param)
    if len(p.test_iter) < n_specific or (not generic and len(p.test_iter) != n_specific):
        raise err("test_iter", f"test_iter must be given once per test net: {len(p.test_iter)} test_iter for "
                               f"{n_specific} test net(s)")
    if p.test_state and len(p.test_state) != len(p.test_iter):
        raise err("test_state", f"test_state must be given once per test net or not at all: "
                                f"{len(p.test_state)} for {len(p.test_iter)} test net(s)")
    if p.test_iter and p.test_interval <= 0:
        raise err("test_iter", "test nets are given (test_iter) but test_interval is not > 0")


# ---- learning rate -----------------------------------------------------------------------------------------

def _multistep(stepvalue, iteration: int) -> int:
    """Caffe's current_step_ at `iteration`: it moves at most one step per iteration, when iter >= the next
    stepvalue (so t_1 = sv[0], t_{k+1} = max(sv[k], t_k + 1))."""
    step, t = 0, -1
    for sv in stepvalue:
        t = max(sv, t + 1)
        if t > iteration:
            break
        step += 1
    return step


def current_step(p, iteration: int) -> int:
    if p.lr_policy == "step":
        return iteration // p.stepsize
    if p.lr_policy == "multistep":
        return _multistep(p.stepvalue, iteration)
    return 0


def learning_rate(p, iteration: int) -> float:
    """The rate at `iteration` for the policy (caffe.proto's formulas; `p` needs base_lr, lr_policy, gamma,
    power, stepsize, stepvalue, max_iter)."""
    base, policy = p.base_lr, p.lr_policy
    if policy == "fixed":
        return base
    if policy in ("step", "multistep"):
        return base * p.gamma ** current_step(p, iteration)
    if policy == "exp":
        return base * p.gamma ** iteration
    if policy == "inv":
        return base * (1.0 + p.gamma * iteration) ** (-p.power)
    if policy == "poly":
        return base * max(0.0, 1.0 - iteration / p.max_iter) ** p.power
    if policy == "sigmoid":
        x = -p.gamma * (iteration - p.stepsize)
        return base / (1.0 + math.exp(x)) if x < 700 else 0.0
    raise NetError(f"unknown lr_policy '{policy}'")


# ---- update rules (Caffe's ComputeUpdateValue; each returns the value subtracted from the weights) ----------

class UpdateRule:
    """history: the per-param blobs Caffe keeps (n_history per param). g may be overwritten."""
    n_history = 1

    def __init__(self, p):
        self.momentum, self.delta = p.momentum, p.delta
        self.momentum2, self.rms_decay = p.momentum2, p.rms_decay

    def __call__(self, g: torch.Tensor, history: list[torch.Tensor], rate: float, iteration: int) -> torch.Tensor:
        raise NotImplementedError


class SGD(UpdateRule):
    """V = momentum * V + rate * g; W -= V."""

    def __call__(self, g, history, rate, iteration):
        h, = history
        return h.mul_(self.momentum).add_(g, alpha=rate)


class Nesterov(UpdateRule):
    """V' = momentum * V + rate * g; W -= (1 + momentum) * V' - momentum * V."""

    def __call__(self, g, history, rate, iteration):
        h, = history
        prev = h.clone()
        h.mul_(self.momentum).add_(g, alpha=rate)
        return prev.mul_(-self.momentum).add_(h, alpha=1.0 + self.momentum)


class AdaGrad(UpdateRule):
    """H += g^2; W -= rate * g / (sqrt(H) + delta)."""

    def __call__(self, g, history, rate, iteration):
        h, = history
        h.add_(g * g)
        return g.div_(h.sqrt().add_(self.delta)).mul_(rate)


class RMSProp(UpdateRule):
    """H = rms_decay * H + (1 - rms_decay) * g^2; W -= rate * g / (sqrt(H) + delta)."""

    def __call__(self, g, history, rate, iteration):
        h, = history
        h.mul_(self.rms_decay).add_(g * g, alpha=1.0 - self.rms_decay)
        return g.div_(h.sqrt().add_(self.delta)).mul_(rate)


class AdaDelta(UpdateRule):
    """H = m H + (1 - m) g^2; u = g sqrt((U + delta) / (H + delta)); U = m U + (1 - m) u^2; W -= rate u.
    History: H for every param, then U for every param (Caffe's order)."""
    n_history = 2

    def __call__(self, g, history, rate, iteration):
        h, hu = history
        m = self.momentum
        h.mul_(m).add_(g * g, alpha=1.0 - m)
        u = g.mul_(((hu + self.delta) / (h + self.delta)).sqrt_())
        hu.mul_(m).add_(u * u, alpha=1.0 - m)
        return u.mul_(rate)


class Adam(UpdateRule):
    """m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2; W -= rate * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v)
    + delta), t = iter + 1, b1 = momentum, b2 = momentum2 (the bias correction folded into the rate, as
    Caffe does). History: m for every param, then v for every param."""
    n_history = 2

    def __call__(self, g, history, rate, iteration):
        m, v = history
        b1, b2 = self.momentum, self.momentum2
        t = iteration + 1
        correction = math.sqrt(1.0 - b2 ** t) / (1.0 - b1 ** t)
        m.mul_(b1).add_(g, alpha=1.0 - b1)
        v.mul_(b2).add_(g * g, alpha=1.0 - b2)
        return (m / v.sqrt().add_(self.delta)).mul_(rate * correction)


UPDATE_RULES = {"SGD": SGD, "Nesterov": Nesterov, "AdaGrad": AdaGrad, "RMSProp": RMSProp, "AdaDelta": AdaDelta,
                "Adam": Adam}


# ---- helpers ------------------------------------------------------------------------------------------------

def _find(path: str, folder: str | None) -> str | None:
    """`path` as given when it exists (relative to the current directory), else relative to `folder`."""
    if os.path.exists(path) or os.path.isabs(path) or folder is None:
        return path if os.path.exists(path) else None
    candidate = os.path.join(folder, path)
    return candidate if os.path.exists(candidate) else None


def _fmt(x: float) -> str:
    """A number as Caffe's LOG(INFO) << float prints it (6 significant digits)."""
    return f"{x:.6g}"


def _share_trained_layers(test: Net, train: Net) -> None:
    """Caffe's ShareTrainedLayersWith: test layers take the train net's blobs by layer name (same tensors)."""
    source = {}
    for step in train.plan:
        layer = train.layers[step.key]
        if layer.blob_names and step.name not in source:
            source[step.name] = layer
    for step in test.plan:
        layer, src = test.layers[step.key], source.get(step.name)
        if src is None or not layer.blob_names:
            continue
        if len(src.blob_names) != len(layer.blob_names):
            raise NetError(f"{step.spec.where}: cannot share weights with the train net's layer '{step.name}': "
                           f"{len(layer.blob_names)} blob(s) here, {len(src.blob_names)} there")
        for i, (mine, theirs) in enumerate(zip(layer.blob_names, src.blob_names)):
            t = getattr(src, theirs)
            if tuple(t.shape) != tuple(getattr(layer, mine).shape):
                raise NetError(f"{step.spec.where}: cannot share weights with the train net's layer "
                               f"'{step.name}': blob {i} has shape {tuple(getattr(layer, mine).shape)} here, "
                               f"{tuple(t.shape)} there")
            if mine in layer._parameters and isinstance(t, nn.Parameter):
                layer._parameters[mine] = t
            else:
                layer._parameters.pop(mine, None)
                layer._buffers[mine] = t


def _read_str(ds) -> str:
    v = ds[()]
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)


def _seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2 ** 32)
    random.seed(seed)


def _rank_seed(base: int, rank: int) -> int:
    """A seed for rank > 0 of a data-parallel run, distinct per rank and from the base seed."""
    return (base * 1_000_003 + rank * 7_919) % (2 ** 63)


def _blobs_reaching_loss(net: Net) -> set[str]:
    """Blobs a loss-weighted top depends on through differentiable paths (propagate_down honoured)."""
    reaching = {t for st in net.plan for t, w in zip(st.tops, st.loss_weights) if w}
    for st in reversed(net.plan):
        if any(t in reaching for t in st.tops):
            reaching.update(b for b, keep in zip(st.bottoms, st.propagate) if keep)
    return reaching


# ---- the solver -----------------------------------------------------------------------------------------------

class Solver:
    def __init__(self, solver, device=None, workers: int | None = None, *, stages=(), level: int | None = None,
                 weights=None, seed: int | None = None, amp: str | None = None, channels_last: bool = False,
                 compile: bool = False):
        """`solver`: a solver file, solver text or parsed Message. `stages`/`level` add to train_state (as
        caffe train's --stage/--level). `weights`: files to fine-tune from, replacing the solver's `weights`
        field (None keeps it; [] loads none). `seed` replaces random_seed. `amp`: mixed precision ("auto",
        "bfloat16" or "float16", nets/accel.py); `channels_last`: NHWC memory order for 4-D weights and
        data; `compile`: torch.compile the nets (Net.compile). Inside a torchrun process group of several
        processes the solver trains data-parallel (nets/distributed.py)."""
        self.param = p = load_solver_param(solver)
        if seed is not None:
            p.random_seed = seed
        p.train_state.stages = list(p.train_state.stages) + list(stages)
        if level is not None:
            p.train_state.level = level
        self.rank, self.world = ddp.rank(), ddp.world_size()
        self.prefix = self._snapshot_prefix()
        self.device = default_device(device)
        seed_ = p.random_seed
        if seed_ < 0 and self.world > 1:
            # the ranks' index layers must draw alike (they shard one global batch): one seed for all
            seed_ = ddp.broadcast_object(int(torch.randint(0, 2 ** 31 - 1, ()).item()))
        if seed_ >= 0:   # before the nets: fillers and the index layers' RNGs derive from it
            _seed_all(seed_)
        self._seed = max(seed_, 0)
        self.train_net = self._make_net(*self._train_source(), p.train_state, "TRAIN", workers)
        self.test_nets: list[Net] = []
        for i, (src, where) in enumerate(self._test_sources()):
            state = p.test_state[i] if p.test_state else NetStateParam()
            net = self._make_net(src, where, state, "TEST", workers)
            _share_trained_layers(net, self.train_net)
            self.test_nets.append(net)
        if self.world > 1:
            if self.train_net.source is not None:
                self.train_net.source.shard(self.rank, self.world)
            if self.rank > 0:   # different Dropout masks on each rank's samples, as in one big batch
                _seed_all(_rank_seed(seed_, self.rank))
        self.amp_dtype = amp_dtype(self.device, amp)
        self.scaler = LossScaler() if self.amp_dtype == torch.float16 else None
        self.channels_last = channels_last
        for net in self._nets():
            if channels_last:
                net.to(memory_format=torch.channels_last)
            if compile:
                net.compile()
        self.rule = UPDATE_RULES[p.type](p)
        self.params = list(self.train_net.param_info)
        self._replica = self._wrap_data_parallel()
        n = self.rule.n_history
        self.history = [torch.zeros_like(pi.tensor) for _ in range(n) for pi in self.params]
        self.iter = 0
        self.losses: deque = deque(maxlen=p.average_loss)   # the smoothed-loss window
        self.interrupted = False
        self.last_snapshot: str | None = None     # solver state file of the last snapshot
        self._snapshot_iter: int | None = None
        self._stop = False
        self._stop_agreed = False
        self._sigints = 0
        self._guarded = False
        self._bar = None
        self._loss_weights = {t: w for st in self.train_net.plan for t, w in zip(st.tops, st.loss_weights)}
        for path in (p.weights if weights is None else ([weights] if isinstance(weights, str) else weights)):
            for name in str(path).split(","):
                if name.strip():
                    self.load_weights(name.strip(), from_solver=weights is None)

    # -- construction ------------------------------------------------------------------------------------------
    def _resolve(self, field_name: str, path: str) -> str:
        found = _find(path, self.param.folder)
        if found is None:
            looked = "the current directory" + (" or the solver's folder" if self.param.folder else "")
            raise NetError(f"{self.param.where(field_name)}: {field_name} file '{path}' not found (looked in "
                           f"{looked})")
        return found

    def _train_source(self):
        p = self.param
        for name in ("train_net_param", "train_net", "net_param", "net"):
            if p.has(name):
                value = getattr(p, name)
                return (value if isinstance(value, Message) else self._resolve(name, value)), name

    def _test_sources(self):
        p = self.param
        out = [(m, "test_net_param") for m in p.test_net_param]
        out += [(self._resolve("test_net", path), "test_net") for path in p.test_net]
        generic = p.net_param if p.has("net_param") else (self._resolve("net", p.net) if p.has("net") else None)
        out += [(generic, "net")] * (len(p.test_iter) - len(out))
        return out

    def _make_net(self, source, where: str, state: NetStateParam, phase: str, workers) -> Net:
        net = Net(source, phase=state.phase or phase, stages=tuple(state.stages), level=state.level or 0,
                  device=self.device, workers=workers)
        if net.inputs:
            raise NetError(f"{self.param.where(where)}: the {phase.lower()} net has input blob(s) "
                           f"{', '.join(net.inputs)}; a solver's nets need data layers")
        return net

    def _snapshot_prefix(self) -> str | None:
        p = self.param
        needed = p.snapshot > 0 or p.snapshot_after_train
        if not p.snapshot_prefix:
            if p.folder is None:
                if needed:
                    raise NetError(f"{p.filename}: snapshot_prefix is needed to write snapshots (snapshot > 0 or "
                                   f"snapshot_after_train); set it, or snapshot_after_train: false")
                return None
            return os.path.splitext(p.filename)[0]
        prefix = p.snapshot_prefix
        stem = os.path.splitext(os.path.basename(p.filename))[0] if p.folder is not None else "solver"
        if not p.folder or os.path.isabs(prefix):       # text, or a solver in the current directory
            candidates = [prefix]
        elif os.path.dirname(prefix) or os.path.isdir(prefix):
            candidates = [prefix, os.path.join(p.folder, prefix)]
        else:
            candidates = [os.path.join(p.folder, prefix)]    # a bare name: next to the solver file
        for cand in candidates:
            if os.path.isdir(cand):
                return os.path.join(cand, stem)
            if os.path.isdir(os.path.dirname(cand) or "."):
                folder = os.path.dirname(cand) or "."
                if needed and not os.access(folder, os.W_OK):
                    raise NetError(f"{p.where('snapshot_prefix')}: cannot write snapshots to '{folder}' "
                                   f"(not writable)")
                return cand
        raise NetError(f"{p.where('snapshot_prefix')}: snapshot_prefix '{prefix}': folder "
                       f"'{os.path.dirname(prefix)}' does not exist (looked relative to the current directory"
                       f"{' and to the solver' + chr(39) + 's folder' if p.folder else ''})")

    def _wrap_data_parallel(self):
        """The train net in DistributedDataParallel (None in a single process). find_unused_parameters only
        when some learnable tensor cannot reach a loss: it costs a graph traversal per iteration."""
        if self.world <= 1 or not any(pi.tensor.requires_grad for pi in self.params):
            return None
        from torch.nn.parallel import DistributedDataParallel
        net = self.train_net
        reaching = _blobs_reaching_loss(net)
        unused = any(pi.tensor.requires_grad for st in net.plan if not any(t in reaching for t in st.tops)
                     for pi in self.params if pi.layer == st.name)
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(net, device_ids=ids, find_unused_parameters=unused)

    def load_weights(self, path: str, from_solver: bool = False) -> None:
        """Fine-tune from an HDF5 weights file (into the train net and the test nets' own layers)."""
        if from_solver:
            path = self._resolve("weights", path)
        self._log(f"Finetuning from {path}")
        report = load_weights(self.train_net, path)
        for net in self.test_nets:
            load_weights(net, path)
        if self.rank == 0:
            print(f"note: {report}", file=sys.stderr, flush=True)

    def close(self) -> None:
        """Stop the nets' data worker processes."""
        for net in [self.train_net] + self.test_nets:
            net.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- logging ------------------------------------------------------------------------------------------------
    def _log(self, line: str) -> None:
        if self.rank != 0:
            return
        if self._bar is not None and not self._bar.disable:
            self._bar.write(line, file=sys.stdout)
            sys.stdout.flush()
        else:
            print(line, flush=True)

    def lr(self) -> float:
        """The learning rate of the current iteration."""
        return learning_rate(self.param, self.iter)

    # -- running the nets ---------------------------------------------------------------------------------------
    def _forward(self, net: Net, module: nn.Module | None = None) -> dict[str, torch.Tensor]:
        """One forward pass (through `module`, the data-parallel replica, when given). The source batch is
        drawn with torch's RNG state set aside: starting the data workers draws a seed from it, which would
        make a resumed run's Dropout masks differ."""
        batch = {}
        if net.source is not None:
            with torch.random.fork_rng(devices=[]):
                batch = net.source.next_batch()
            batch = {k: v.to(net.device, non_blocking=True) for k, v in batch.items()}
            if self.channels_last:
                batch = {k: to_channels_last(v) for k, v in batch.items()}
        with autocast(self.device, self.amp_dtype):
            return (module or net)(**batch)

    def _train_iteration(self) -> tuple[float, dict]:
        net = self.train_net
        net.zero_grad(set_to_none=True)
        total = 0.0
        outputs = {}
        n = self.param.iter_size
        for k in range(n):
            # gradients are averaged over the ranks once, after the last of the iter_size passes
            sync = self._replica.no_sync() if self._replica is not None and k < n - 1 else contextlib.nullcontext()
            with sync:
                outputs = self._forward(net, self._replica)
                if net.loss is not None:
                    if net.loss.requires_grad:
                        (net.loss * self.scaler.scale if self.scaler else net.loss).backward()
                    total += net.loss.item()
        return total / n, outputs

    def _agree(self, loss: float) -> float:
        """The loss averaged over the ranks, and the ranks' stop requests (Ctrl-C) merged, in one collective:
        every rank must stop after the same iteration."""
        if self.world <= 1:
            return loss
        both = ddp.all_reduce_mean(torch.tensor([loss, float(self._stop)], dtype=torch.float64,
                                                device=self.device))
        self._stop_agreed = bool(both[1].item() > 0)
        return float(both[0].item())

    def _stopping(self) -> bool:
        """Whether to stop now: the Ctrl-C flag itself in one process, the last agreed one across ranks."""
        return self._stop_agreed if self.world > 1 else self._stop

    def _agree_stop(self) -> bool:
        self._agree(0.0)
        return self._stopping()

    def _output_lines(self, kind: str, names, values: dict, weights: dict) -> None:
        i = 0
        for name in names:
            for v in values[name]:
                w = weights.get(name, 0.0)
                extra = f" (* {_fmt(w)} = {_fmt(w * v)} loss)" if w else ""
                self._log(f"    {kind} net output #{i}: {name} = {_fmt(v)}{extra}")
                i += 1

    def _smoothed(self, loss: float) -> float:
        self.losses.append(loss)
        return sum(self.losses) / len(self.losses)

    def _apply_update(self) -> None:
        p = self.param
        rate = self.lr()
        if p.lr_policy == "multistep" and current_step(p, self.iter) != current_step(p, self.iter - 1):
            self._log(f"MultiStep Status: Iteration {self.iter}, step = {current_step(p, self.iter)}")
        if p.display and self.iter % p.display == 0:
            self._log(f"Iteration {self.iter}, lr = {_fmt(rate)}")
        grads = [pi.tensor.grad for pi in self.params]    # None: no gradient reached it (zero in Caffe)
        if self.scaler is not None:
            finite = self.scaler.unscale(grads)
            self.scaler.update(finite)
            if not finite:
                self._log(f"Mixed precision: gradients overflowed at iteration {self.iter}, update skipped; "
                          f"loss scale now {_fmt(self.scaler.scale)}")
                self.iter += 1
                return
        with torch.no_grad():
            if p.clip_gradients >= 0:
                norm = math.sqrt(sum(float(g.pow(2).sum()) for g in grads if g is not None))
                if norm > p.clip_gradients:
                    scale = p.clip_gradients / norm
                    self._log(f"Gradient clipping: scaling down gradients (L2 norm {_fmt(norm)} > "
                              f"{_fmt(p.clip_gradients)}) by scale factor {_fmt(scale)}")
                    for g in grads:
                        if g is not None:
                            g.mul_(scale)
            n = len(self.params)
            for i, (pi, g) in enumerate(zip(self.params, grads)):
                if pi.lr_mult == 0:
                    continue
                w = pi.tensor
                if g is None:
                    g = torch.zeros_like(w)
                if p.iter_size > 1:
                    g.mul_(1.0 / p.iter_size)
                decay = p.weight_decay * pi.decay_mult
                if decay:
                    g.add_(w if p.regularization_type == "L2" else torch.sign(w), alpha=decay)
                history = self.history[i::n]
                w.sub_(self.rule(g, history, rate * pi.lr_mult, self.iter))
        self.iter += 1

    def step(self, iters: int) -> list[float]:
        """Run `iters` training iterations (Caffe's Solver::Step). Returns each iteration's loss."""
        p = self.param
        stop = self.iter + iters
        out = []
        with self._sigint_guard(), self._progress(stop):
            while self.iter < stop:
                if p.test_interval and self.iter % p.test_interval == 0 and (self.iter > 0 or p.test_initialization):
                    before = self._capture()
                    self.test_all()
                    if self._agree_stop():
                        self._stop_snapshot(before)
                        break
                display = p.display and self.iter % p.display == 0
                loss, outputs = self._train_iteration()
                loss = self._agree(loss)
                smoothed = self._smoothed(loss)
                if display:
                    self._log(f"Iteration {self.iter}, loss = {_fmt(smoothed)}")
                    values = self._mean_outputs(outputs)
                    self._output_lines("Train", self.train_net.outputs, values, self._loss_weights)
                self._apply_update()
                out.append(loss)
                if self._bar is not None:
                    self._bar.update(1)
                if p.snapshot and self.iter % p.snapshot == 0:
                    self.snapshot()
                if self._stopping():
                    self._stop_snapshot()
                    break
        return out

    def _mean_outputs(self, outputs: dict) -> dict[str, list[float]]:
        """Each output's values, averaged over the ranks."""
        names = list(outputs)
        flat = [outputs[k].detach().double().flatten() for k in names]
        if self.world > 1 and flat:
            joined = ddp.all_reduce_mean(torch.cat(flat).to(self.device))
            flat = list(joined.split([len(f) for f in flat]))
        return {k: f.tolist() for k, f in zip(names, flat)}

    def solve(self, resume: str | None = None) -> list[float]:
        """Train to max_iter (Caffe's Solver::Solve), optionally resuming from a solver state file. Returns the
        losses of the iterations run."""
        with self._sigint_guard():
            return self._solve(resume)

    def _solve(self, resume: str | None) -> list[float]:
        p = self.param
        self._log(f"Solving {self.train_net.name}")
        self._log(f"Learning Rate Policy: {p.lr_policy}")
        if resume is not None:
            self._log(f"Restoring previous solver status from {resume}")
            self.restore(resume)
        self.interrupted = False
        losses = self.step(p.max_iter - self.iter)
        if self.interrupted:
            self._log("Optimization stopped early.")
            return losses
        if p.snapshot_after_train and self._snapshot_iter != self.iter:
            self.snapshot()
        if p.display and self.iter % p.display == 0:
            with torch.no_grad():
                self._forward(self.train_net)
            loss = self.train_net.loss.item() if self.train_net.loss is not None else 0.0
            self._log(f"Iteration {self.iter}, loss = {_fmt(self._smoothed(self._agree(loss)))}")
        if p.test_interval and self.iter % p.test_interval == 0:
            self.test_all()
        self._log("Optimization Done.")
        return losses

    def test_all(self) -> None:
        """Run every test net (rank 0 only when training data-parallel, as Caffe's root solver)."""
        if self.rank != 0:
            return
        for i in range(len(self.test_nets)):
            if self._stop:
                break
            self.test(i)

    def test(self, k: int) -> None:
        """Run test net k for test_iter[k] passes; print each output element's mean (Caffe's Solver::Test)."""
        p = self.param
        net = self.test_nets[k]
        self._log(f"Iteration {self.iter}, Testing net (#{k})")
        sums: dict[str, torch.Tensor] = {}
        loss = 0.0
        n = p.test_iter[k]
        with torch.no_grad():
            for _ in range(n):
                if self._stop:
                    self._log("Test interrupted.")
                    return
                outputs = self._forward(net)
                if p.test_compute_loss and net.loss is not None:
                    loss += net.loss.item()
                for name, value in outputs.items():
                    v = value.detach().double().flatten()
                    sums[name] = sums[name] + v if name in sums else v
        if p.test_compute_loss:
            self._log(f"Test loss: {_fmt(loss / n)}")
        weights = {t: w for st in net.plan for t, w in zip(st.tops, st.loss_weights)}
        means = {name: (s / n).tolist() for name, s in sums.items()}
        self._output_lines("Test", net.outputs, means, weights)

    # -- Ctrl-C and progress ----------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _sigint_guard(self):
        """First SIGINT: finish the iteration, snapshot, stop. Second: KeyboardInterrupt now. Data worker
        processes forked meanwhile inherit the handler and ignore SIGINT (the main process stops them)."""
        if self._guarded or threading.current_thread() is not threading.main_thread():
            yield
            return
        pid = os.getpid()
        first = [0.0]
        # torchrun passes the terminal's Ctrl-C on to its workers, which got it already: one press
        echoes = "TORCHELASTIC_RUN_ID" in os.environ

        def handler(signum, frame):
            if os.getpid() != pid:
                return
            if echoes and self._sigints and time.monotonic() - first[0] < 1.0:
                return
            first[0] = first[0] or time.monotonic()
            self._sigints += 1
            if self._sigints > 1:
                signal.signal(signal.SIGINT, signal.default_int_handler)
                raise KeyboardInterrupt
            self._stop = True
            if self.world > 1:    # the ranks agree on the iteration at their next collective
                if self.rank == 0:
                    os.write(2, b"\nCtrl-C: all ranks stop after the next iteration they agree on, then rank 0 "
                                b"writes a snapshot (Ctrl-C again aborts at once)\n")
            else:
                os.write(2, f"\nCtrl-C: stopping after iteration {self.iter}, then writing a snapshot "
                            f"(Ctrl-C again aborts at once)\n".encode())

        previous = signal.signal(signal.SIGINT, handler)
        self._guarded, self._stop, self._stop_agreed = True, False, False
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)
            self._guarded, self._sigints = False, 0

    @contextlib.contextmanager
    def _progress(self, stop: int):
        from tqdm import tqdm
        self._bar = tqdm(total=stop, initial=self.iter, desc="train", file=sys.stderr,
                         disable=not sys.stderr.isatty(), leave=False)
        try:
            yield
        finally:
            self._bar.close()
            self._bar = None

    # -- snapshots ------------------------------------------------------------------------------------------------
    def _stop_snapshot(self, states: dict | None = None) -> None:
        self.interrupted = True
        if self.prefix is None:
            self._log("No snapshot_prefix: nothing was saved.")
        elif self._snapshot_iter != self.iter:
            self.snapshot(states)
        if states is not None:    # continue in-process exactly as a resume from that snapshot would
            self._restore_states(states)

    def _nets(self) -> list[Net]:
        return [self.train_net] + self.test_nets

    def _capture(self) -> dict:
        """Every RNG state and the index layers' states (after the last consumed batch), JSON for the latter."""
        return {
            "torch_cpu": torch.get_rng_state(),
            "torch_cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
            "numpy": np.random.get_state(),
            "python": random.getstate(),
            "sources": json.dumps([net.source.state() if net.source else [] for net in self._nets()]),
        }

    def _restore_states(self, s: dict) -> None:
        for net, state in zip(self._nets(), json.loads(s["sources"])):
            if net.source is not None:
                net.source.set_state(state)
        torch.set_rng_state(s["torch_cpu"])
        if s["torch_cuda"] is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(s["torch_cuda"], self.device)
        np.random.set_state(s["numpy"])
        random.setstate(s["python"])
        if s.get("reseed") is not None:
            _seed_all(s["reseed"])
        if s.get("scaler") is not None and self.scaler is not None:
            self.scaler.set_state(s["scaler"])

    def snapshot(self, states: dict | None = None) -> str:
        """Write <prefix>_iter_N.caffemodel.h5 and <prefix>_iter_N.solverstate.h5; returns the state path."""
        if self.prefix is None:
            raise NetError(f"{self.param.filename}: no snapshot_prefix, cannot snapshot")
        states = dict(states or self._capture())
        # data-parallel: every rank's Dropout RNG (rank 0 writes; a resume under the same N restores them all)
        states["ranks"] = ddp.all_gather_object({k: states[k] for k in ("torch_cpu", "torch_cuda")})
        model = f"{self.prefix}_iter_{self.iter}.caffemodel.h5"
        path = f"{self.prefix}_iter_{self.iter}.solverstate.h5"
        if self.rank == 0:
            self._log(f"Snapshotting to HDF5 file {model}")
            save_weights(self.train_net, model)
            self._log(f"Snapshotting solver state to HDF5 file {path}")
            atomic_h5(path, lambda f: self._write_state(f, os.path.basename(model), states), "solver state")
        self._snapshot_iter = self.iter
        self.last_snapshot = path
        return path

    def _write_state(self, f, learned_net: str, s: dict) -> None:
        """Caffe's SnapshotSolverStateToHDF5 fields (iter, learned_net, current_step, history/<i>) plus
        loss_window (oldest first), rng/{torch_cpu, torch_cuda, numpy_keys (+ attrs), python (JSON)} and
        source_state (JSON: per net, train then tests, the index layers' states)."""
        f.attrs["format"] = "nets.solver state"
        f.attrs["format_version"] = STATE_VERSION
        f.attrs["type"] = self.param.type
        f.create_dataset("iter", data=np.int64(self.iter))
        f.create_dataset("learned_net", data=learned_net)
        f.create_dataset("current_step", data=np.int64(current_step(self.param, self.iter)))
        hist = f.create_group("history")
        for i, h in enumerate(self.history):
            hist.create_dataset(str(i), data=h.detach().cpu().numpy())
        f.create_dataset("loss_window", data=np.asarray(list(self.losses), np.float64))
        f["loss_window"].attrs["average_loss"] = self.param.average_loss
        rng = f.create_group("rng")
        rng.create_dataset("torch_cpu", data=s["torch_cpu"].numpy())
        if s["torch_cuda"] is not None:
            rng.create_dataset("torch_cuda", data=s["torch_cuda"].cpu().numpy())
        kind, keys, pos, has_gauss, cached = s["numpy"]
        ds = rng.create_dataset("numpy_keys", data=np.asarray(keys, np.uint32))
        ds.attrs["kind"], ds.attrs["pos"], ds.attrs["has_gauss"], ds.attrs["cached_gaussian"] = \
            kind, int(pos), int(has_gauss), float(cached)
        rng.create_dataset("python", data=json.dumps(s["python"]))
        ranks = s.get("ranks") or [None]
        rng.attrs["world_size"] = len(ranks)
        for r, rs in enumerate(ranks[1:], start=1):
            g = rng.create_group(f"rank_{r}")
            g.create_dataset("torch_cpu", data=rs["torch_cpu"].numpy())
            if rs["torch_cuda"] is not None:
                g.create_dataset("torch_cuda", data=rs["torch_cuda"].cpu().numpy())
        if self.scaler is not None:
            f.attrs["amp_loss_scale"] = self.scaler.scale
            f.attrs["amp_good_steps"] = self.scaler.good_steps
        f.create_dataset("source_state", data=s["sources"])

    def restore(self, path) -> None:
        """Load a solver state (and the weights file it names, relative to its folder). Everything is checked
        before anything changes; a bad file is refused with a NetError."""
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise NetError(f"cannot restore solver state '{path}': no such file")
        try:
            it, weights, history, window, states = self._read_state(path)
        except NetError as e:
            raise NetError(f"cannot restore solver state '{path}': {e}") from None
        except (OSError, KeyError, ValueError, TypeError, RuntimeError) as e:
            detail = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise NetError(f"cannot restore solver state '{path}': {detail}") from None
        weights = weights if os.path.isabs(weights) else os.path.join(os.path.dirname(os.path.abspath(path)), weights)
        try:
            load_weights(self.train_net, weights, strict=True)
        except NetError as e:
            raise NetError(f"cannot restore solver state '{path}': {e}") from None
        with torch.no_grad():
            for h, value in zip(self.history, history):
                h.copy_(torch.from_numpy(value).to(h.dtype))
        self.iter = it
        self.losses = deque(window, maxlen=self.param.average_loss)
        self._restore_states(states)
        self._snapshot_iter = it
        self.last_snapshot = path

    def _read_state(self, path: str):
        import h5py
        with h5py.File(path, "r") as f:
            version = f.attrs.get("format_version")
            if version is None:
                raise NetError("not a solver state written by nets.solver (no format_version)")
            if int(version) != STATE_VERSION:
                raise NetError(f"format version {int(version)} is not supported (expected {STATE_VERSION})")
            required = ("iter", "learned_net", "history", "loss_window", "rng/torch_cpu", "rng/numpy_keys",
                        "rng/python", "source_state")
            missing = [k for k in required if k not in f]
            if missing:
                raise NetError(f"missing '{missing[0]}' (truncated or not a solver state)")
            kind = str(f.attrs.get("type", ""))
            if kind != self.param.type:
                raise NetError(f"written by a {kind or 'unknown'} solver, this solver is {self.param.type}")
            it = int(f["iter"][()])
            if it < 0:
                raise NetError(f"negative iteration {it}")
            hist = f["history"]
            if len(hist) != len(self.history):
                raise NetError(f"{len(hist)} history blob(s), the net and solver need {len(self.history)} "
                               f"({len(self.params)} learnable param(s) x {self.rule.n_history})")
            history = []
            for i, h in enumerate(self.history):
                if str(i) not in hist:
                    raise NetError(f"missing history/{i}")
                value = hist[str(i)][()]
                if tuple(value.shape) != tuple(h.shape):
                    pi = self.params[i % len(self.params)]
                    raise NetError(f"history/{i} has shape {tuple(value.shape)} but param {pi.index} of layer "
                                   f"'{pi.layer}' has {tuple(h.shape)}")
                history.append(np.ascontiguousarray(value))
            window = [float(x) for x in f["loss_window"][()]][-self.param.average_loss:]
            rng = f["rng"]
            keys = rng["numpy_keys"]
            a = keys.attrs
            states = {
                "torch_cpu": torch.from_numpy(np.ascontiguousarray(rng["torch_cpu"][()], np.uint8)),
                "torch_cuda": (torch.from_numpy(np.ascontiguousarray(rng["torch_cuda"][()], np.uint8))
                               if "torch_cuda" in rng else None),
                "numpy": (str(a["kind"]), keys[()], int(a["pos"]), int(a["has_gauss"]),
                          float(a["cached_gaussian"])),
                "sources": _read_str(f["source_state"]),
            }
            version_, internal, gauss = json.loads(_read_str(rng["python"]))
            states["python"] = (version_, tuple(internal), gauss)
            if self.rank > 0:
                mine = rng.get(f"rank_{self.rank}")
                if mine is not None and int(rng.attrs.get("world_size", 1)) == self.world:
                    states["torch_cpu"] = torch.from_numpy(np.ascontiguousarray(mine["torch_cpu"][()], np.uint8))
                    if "torch_cuda" in mine:
                        states["torch_cuda"] = torch.from_numpy(np.ascontiguousarray(mine["torch_cuda"][()],
                                                                                     np.uint8))
                else:    # another rank count: this rank gets a fresh stream of its own
                    states["reseed"] = _rank_seed(self._seed + it, self.rank)
            if self.scaler is not None and "amp_loss_scale" in f.attrs:
                states["scaler"] = {"scale": float(f.attrs["amp_loss_scale"]),
                                    "good_steps": int(f.attrs["amp_good_steps"])}
            sources = json.loads(states["sources"])
            nets = self._nets()
            if len(sources) != len(nets):
                raise NetError(f"index states for {len(sources)} net(s), the solver has {len(nets)}")
            for net, st in zip(nets, sources):
                n_index = len(net.source.index_steps) if net.source else 0
                if len(st) != n_index:
                    raise NetError(f"{len(st)} index layer state(s) for net '{net.name}' ({net.phase}), "
                                   f"it has {n_index}")
            learned = _read_str(f["learned_net"])
        # the RNG states are checked by setting them on scratch objects
        torch.Generator().set_state(states["torch_cpu"])
        np.random.RandomState().set_state(states["numpy"])
        random.Random().setstate(states["python"])
        return it, learned, history, window, states
