"""The solver file: caffe.proto's SolverParameter, parsed with the one param schema (netdef.params) and
checked as Caffe's Solver constructor checks it, with every message naming FILE:LINE:COL."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from netdef.errors import NetError
from netdef.params import Param, Params, Values, check_fields, did_you_mean
from netdef.spec import PHASES
from netdef.text_format import Message, parse, parse_file

__all__ = ["SolverParam", "NetStateParam", "SOLVER_PARAMETER", "LR_POLICIES", "SOLVER_TYPES", "load_solver_param"]

LR_POLICIES = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid")
SOLVER_TYPES = ("SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam")
LEGACY_TYPES = ("SGD", "NESTEROV", "ADAGRAD", "RMSPROP", "ADADELTA", "ADAM")   # solver_type, in enum order

NET_STATE = Params("net state", phase=Param(PHASES), level=Param(int), stage=Param(str, repeated=True))

# caffe.proto's SolverParameter. Fields without a default in the proto are 0; nets and states stay Messages
# (the Net parses a net; NET_STATE parses a state).
SOLVER_PARAMETER = Params(
    "solver",
    net=Param(str, ""), net_param=Param(Message),
    train_net=Param(str, ""), test_net=Param(str, repeated=True),
    train_net_param=Param(Message), test_net_param=Param(Message, repeated=True),
    train_state=Param(Message), test_state=Param(Message, repeated=True),
    test_iter=Param(int, repeated=True), test_interval=Param(int, 0),
    test_compute_loss=Param(bool, False), test_initialization=Param(bool, True),
    base_lr=Param(float, 0.0), display=Param(int, 0), average_loss=Param(int, 1),
    max_iter=Param(int, 0), iter_size=Param(int, 1), lr_policy=Param(str, ""),
    gamma=Param(float, 0.0), power=Param(float, 0.0), momentum=Param(float, 0.0),
    weight_decay=Param(float, 0.0), regularization_type=Param(str, "L2"),
    stepsize=Param(int, 0), stepvalue=Param(int, repeated=True), clip_gradients=Param(float, -1.0),
    snapshot=Param(int, 0), snapshot_prefix=Param(str, ""), snapshot_diff=Param(bool, False),
    snapshot_format=Param(("HDF5", "BINARYPROTO"), "HDF5"),
    solver_mode=Param(("CPU", "GPU"), "GPU"), device_id=Param(int, 0),
    random_seed=Param(int, -1), type=Param(str, "SGD"), delta=Param(float, 1e-8),
    momentum2=Param(float, 0.999), rms_decay=Param(float, 0.99), debug_info=Param(bool, False),
    snapshot_after_train=Param(bool, True), solver_type=Param(LEGACY_TYPES, "SGD"),
    layer_wise_reduce=Param(bool, True), weights=Param(str, repeated=True),
)


@dataclass
class NetStateParam:
    """A train_state / test_state block (Caffe's NetState)."""
    phase: str | None = None
    level: int | None = None
    stages: list[str] = field(default_factory=list)


class SolverParam(Values):
    """A parsed solver file: every SolverParameter field as an attribute, plus where things came from.

    filename: the file (or "<string>"); folder: its folder as given ("" for the current one; None for text)."""

    def __init__(self, values: Values, filename: str = "<string>", folder: str | None = None):
        super().__init__({k: v for k, v in vars(values).items() if k != "locs"}, values.locs)
        self.filename, self.folder = filename, folder

    def where(self, name: str) -> str:
        """FILE:LINE:COL of the field's (last) occurrence, or the file when it was not given."""
        return str(self.locs.get(name, self.filename))


def _net_state(msg: Message) -> NetStateParam:
    v = NET_STATE.parse(msg, noun="field")
    return NetStateParam(phase=v.phase, level=v.level, stages=list(v.stage))


def load_solver_param(solver) -> SolverParam:
    """A solver file path, or solver text (anything with a newline or ':' that is not a file), or a Message."""
    if isinstance(solver, Message):
        msg, filename, folder = solver, solver.loc.file, None
    else:
        text = os.fspath(solver)
        if not os.path.isfile(text) and ("\n" in text or ":" in text):
            msg, filename, folder = parse(text, "<string>"), "<string>", None
        else:
            if not os.path.isfile(text):
                raise NetError(f"cannot read solver file '{text}': no such file")
            msg = parse_file(text)
            filename, folder = text, os.path.dirname(text)     # "" for the current directory
    check_fields(msg, SOLVER_PARAMETER.fields(), "solver")
    p = SolverParam(SOLVER_PARAMETER.parse(msg, noun="field"), filename, folder)
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
    _validate_nets(p, err)


def _validate_nets(p: SolverParam, err) -> None:
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
