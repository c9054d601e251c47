"""Solver state: the random states a run depends on, and the .solverstate.h5 file (written, read, checked).

The file holds Caffe's SnapshotSolverStateToHDF5 fields (iter, learned_net, current_step, history/<i>) plus
loss_window (oldest first), rng/{torch_cpu, torch_cuda, numpy_keys (+ attrs), python (JSON)}, rng/rank_<r> for
the other ranks of a data-parallel run, the float16 loss scale, and source_state (JSON: per net, train then
tests, the index layers' states after the last consumed batch). Reading is split in two: read_state() takes
what the file holds and refuses a file that is not a solver state; check_state() compares it with the solver
that is to continue from it. Nothing changes before both have passed.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field

import numpy as np
import torch

from netdef.errors import NetError

__all__ = ["STATE_VERSION", "SavedState", "capture_rng", "restore_rng", "seed_all", "rank_seed", "write_state",
           "read_state", "check_state"]

STATE_VERSION = 1


def seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2 ** 32)
    random.seed(seed)


def rank_seed(base: int, rank: int) -> int:
    """A seed for rank > 0 of a data-parallel run, distinct per rank and from the base seed."""
    return (base * 1_000_003 + rank * 7_919) % (2 ** 63)


def capture_rng(device: torch.device, nets) -> dict:
    """Every RNG state and the nets' index layers' states (after the last consumed batch, JSON)."""
    return {
        "torch_cpu": torch.get_rng_state(),
        "torch_cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "numpy": np.random.get_state(),
        "python": random.getstate(),
        "sources": json.dumps([net.source.state() if net.source else [] for net in nets]),
    }


def restore_rng(s: dict, device: torch.device, nets, scaler=None) -> None:
    """Put back what capture_rng() (or SavedState.rng_states()) gave."""
    for net, state in zip(nets, json.loads(s["sources"])):
        if net.source is not None:
            net.source.set_state(state)
    torch.set_rng_state(s["torch_cpu"])
    if s["torch_cuda"] is not None and device.type == "cuda":
        torch.cuda.set_rng_state(s["torch_cuda"], device)
    np.random.set_state(s["numpy"])
    random.setstate(s["python"])
    if s.get("reseed") is not None:
        seed_all(s["reseed"])
    if s.get("scaler") is not None and scaler is not None:
        scaler.set_state(s["scaler"])


# ---- writing ---------------------------------------------------------------------------------------------------

def write_state(f, *, solver_type: str, iteration: int, current_step: int, learned_net: str, history,
                loss_window, average_loss: int, states: dict, scaler=None) -> None:
    """Write a solver state into the open h5py file `f`."""
    f.attrs["format"] = "nets.solver state"
    f.attrs["format_version"] = STATE_VERSION
    f.attrs["type"] = solver_type
    f.create_dataset("iter", data=np.int64(iteration))
    f.create_dataset("learned_net", data=learned_net)
    f.create_dataset("current_step", data=np.int64(current_step))
    hist = f.create_group("history")
    for i, h in enumerate(history):
        hist.create_dataset(str(i), data=h.detach().cpu().numpy())
    f.create_dataset("loss_window", data=np.asarray(list(loss_window), np.float64))
    f["loss_window"].attrs["average_loss"] = average_loss
    rng = f.create_group("rng")
    _write_torch(rng, states)
    kind, keys, pos, has_gauss, cached = states["numpy"]
    ds = rng.create_dataset("numpy_keys", data=np.asarray(keys, np.uint32))
    ds.attrs["kind"], ds.attrs["pos"], ds.attrs["has_gauss"], ds.attrs["cached_gaussian"] = \
        kind, int(pos), int(has_gauss), float(cached)
    rng.create_dataset("python", data=json.dumps(states["python"]))
    ranks = states.get("ranks") or [None]
    rng.attrs["world_size"] = len(ranks)
    for r, rs in enumerate(ranks[1:], start=1):
        _write_torch(rng.create_group(f"rank_{r}"), rs)
    if scaler is not None:
        f.attrs["amp_loss_scale"] = scaler.scale
        f.attrs["amp_good_steps"] = scaler.good_steps
    f.create_dataset("source_state", data=states["sources"])


def _write_torch(group, states: dict) -> None:
    group.create_dataset("torch_cpu", data=states["torch_cpu"].numpy())
    if states["torch_cuda"] is not None:
        group.create_dataset("torch_cuda", data=states["torch_cuda"].cpu().numpy())


# ---- reading ---------------------------------------------------------------------------------------------------

@dataclass
class SavedState:
    """What a solver state file holds."""
    iter: int
    solver_type: str
    learned_net: str
    history: list[np.ndarray]
    loss_window: list[float]
    rng: dict                                   # this process's (rank 0's) states, as capture_rng() gives them
    rank_rng: dict[int, dict] = field(default_factory=dict)   # the other ranks' torch states
    world_size: int = 1
    scaler: dict | None = None

    @property
    def sources(self) -> list:
        return json.loads(self.rng["sources"])

    def rng_states(self, rank: int, world: int, fallback_seed: int) -> dict:
        """The states for `rank` of a run of `world` processes: its own when the file was written by as many
        ranks, else (another rank count) a fresh stream of its own from `fallback_seed`."""
        states = dict(self.rng)
        if rank > 0:
            mine = self.rank_rng.get(rank)
            if mine is not None and self.world_size == world:
                states.update(mine)
            else:
                states["reseed"] = rank_seed(fallback_seed + self.iter, rank)
        if self.scaler is not None:
            states["scaler"] = self.scaler
        return states


def _read_str(ds) -> str:
    v = ds[()]
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)


def _bytes(ds) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(ds[()], np.uint8))


def read_state(path: str) -> SavedState:
    """Read a solver state file; a file that is not one (or is truncated) raises NetError (or the h5py /
    numpy error, which the caller words)."""
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
        it = int(f["iter"][()])
        if it < 0:
            raise NetError(f"negative iteration {it}")
        hist = f["history"]
        history = []
        for i in range(len(hist)):
            if str(i) not in hist:
                raise NetError(f"missing history/{i}")
            history.append(np.ascontiguousarray(hist[str(i)][()]))
        rng = f["rng"]
        keys = rng["numpy_keys"]
        a = keys.attrs
        version_, internal, gauss = json.loads(_read_str(rng["python"]))
        states = {
            "torch_cpu": _bytes(rng["torch_cpu"]),
            "torch_cuda": _bytes(rng["torch_cuda"]) if "torch_cuda" in rng else None,
            "numpy": (str(a["kind"]), keys[()], int(a["pos"]), int(a["has_gauss"]), float(a["cached_gaussian"])),
            "python": (version_, tuple(internal), gauss),
            "sources": _read_str(f["source_state"]),
        }
        rank_rng = {}
        for name in rng:
            if name.startswith("rank_"):
                g = rng[name]
                rank_rng[int(name[5:])] = {"torch_cpu": _bytes(g["torch_cpu"]),
                                           "torch_cuda": _bytes(g["torch_cuda"]) if "torch_cuda" in g else None}
        scaler = None
        if "amp_loss_scale" in f.attrs:
            scaler = {"scale": float(f.attrs["amp_loss_scale"]), "good_steps": int(f.attrs["amp_good_steps"])}
        saved = SavedState(iter=it, solver_type=str(f.attrs.get("type", "")), learned_net=_read_str(f["learned_net"]),
                           history=history, loss_window=[float(x) for x in f["loss_window"][()]], rng=states,
                           rank_rng=rank_rng, world_size=int(rng.attrs.get("world_size", 1)), scaler=scaler)
    json.loads(states["sources"])
    # the RNG states are checked by setting them on scratch objects
    torch.Generator().set_state(states["torch_cpu"])
    np.random.RandomState().set_state(states["numpy"])
    random.Random().setstate(states["python"])
    return saved


def check_state(saved: SavedState, *, solver_type: str, params, history, n_history: int, nets) -> None:
    """Whether `saved` fits the solver: its type, one history blob of the right shape per param and rule
    blob, and one index-layer state per index layer of each net (train, then tests)."""
    if saved.solver_type != solver_type:
        raise NetError(f"written by a {saved.solver_type or 'unknown'} solver, this solver is {solver_type}")
    if len(saved.history) != len(history):
        raise NetError(f"{len(saved.history)} history blob(s), the net and solver need {len(history)} "
                       f"({len(params)} learnable param(s) x {n_history})")
    for i, (value, h) in enumerate(zip(saved.history, history)):
        pi = params[i % len(params)]
        if tuple(value.shape) != tuple(h.shape):
            raise NetError(f"history/{i} has shape {tuple(value.shape)} but param {pi.index} of layer "
                           f"'{pi.layer}' has {tuple(h.shape)}")
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise NetError(f"history/{i} (param {pi.index} of layer '{pi.layer}') holds NaN or Inf values: the run "
                           f"had diverged; resume from an earlier snapshot")
    sources = saved.sources
    if len(sources) != len(nets):
        raise NetError(f"index states for {len(sources)} net(s), the solver has {len(nets)}")
    for net, st in zip(nets, sources):
        n_index = len(net.source.index_steps) if net.source else 0
        if len(st) != n_index:
            raise NetError(f"{len(st)} index layer state(s) for net '{net.name}' ({net.phase}), it has {n_index}")
