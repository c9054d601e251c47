"""What a solver file names, made real: its files found, its train and test nets built (test nets share the
train net's tensors, Caffe's ShareTrainedLayersWith), the snapshot prefix resolved, the data-parallel wrap.

Paths: a net file (net, train_net, test_net) or a `weights` file is taken relative to the current directory
when it exists there, else relative to the solver file's folder. snapshot_prefix likewise: a prefix with a
folder part ("snapshots/lenet") is looked up relative to the current directory, then to the solver file's
folder; a bare name ("lenet") goes next to the solver file; unset, it is the solver file's path without
extension, and a prefix naming a directory gets the solver file's stem appended (Caffe's rules). A solver
given as text resolves everything against the current directory.
"""

from __future__ import annotations

import os

from netdef.errors import NetError
from netdef.text_format import Message
from nets.net import Net
from nets.solver.params import NetStateParam, SolverParam

__all__ = ["resolve_file", "train_net_definition", "test_net_definitions", "make_net", "share_trained_layers",
           "snapshot_prefix", "blobs_reaching_loss", "wrap_data_parallel"]


def _find(path: str, folder: str | None) -> str | None:
    """`path` as given when it exists (relative to the current directory), else relative to `folder`."""
    if os.path.exists(path) or os.path.isabs(path) or folder is None:
        return path if os.path.exists(path) else None
    candidate = os.path.join(folder, path)
    return candidate if os.path.exists(candidate) else None


def resolve_file(p: SolverParam, field_name: str, path: str) -> str:
    """The file a path field names, or a NetError saying where it was looked for."""
    found = _find(path, p.folder)
    if found is None:
        looked = "the current directory" + (" or the solver's folder" if p.folder else "")
        raise NetError(f"{p.where(field_name)}: {field_name} file '{path}' not found (looked in {looked})")
    return found


def train_net_definition(p: SolverParam) -> tuple:
    """(the train net: a Message or a file path, the field that gave it)."""
    for name in ("train_net_param", "train_net", "net_param", "net"):
        if p.has(name):
            value = getattr(p, name)
            return (value if isinstance(value, Message) else resolve_file(p, name, value)), name
    raise AssertionError("load_solver_param checks that a train net is given")


def test_net_definitions(p: SolverParam) -> list[tuple]:
    """(definition, field) per test net: test_net_param ones, then test_net files, then the generic net."""
    out = [(m, "test_net_param") for m in p.test_net_param]
    out += [(resolve_file(p, "test_net", path), "test_net") for path in p.test_net]
    generic = p.net_param if p.has("net_param") else (resolve_file(p, "net", p.net) if p.has("net") else None)
    out += [(generic, "net")] * (len(p.test_iter) - len(out))
    return out


def make_net(p: SolverParam, definition, field_name: str, state: NetStateParam, phase: str, device,
             workers) -> Net:
    net = Net(definition, phase=state.phase or phase, stages=tuple(state.stages), level=state.level or 0,
              device=device, workers=workers)
    if net.inputs:
        raise NetError(f"{p.where(field_name)}: the {phase.lower()} net has input blob(s) "
                       f"{', '.join(net.inputs)}; a solver's nets need data layers")
    return net


def share_trained_layers(test: Net, train: Net) -> None:
    """Caffe's ShareTrainedLayersWith: test layers take the train net's blobs by layer name (same tensors)."""
    trained = {}
    for step in train.plan:
        layer = train.layers[step.key]
        if layer.blob_names and step.name not in trained:
            trained[step.name] = layer
    for step in test.plan:
        layer, src = test.layers[step.key], trained.get(step.name)
        if src is None or not layer.blob_names:
            continue
        where = f"{step.definition.where}: cannot share weights with the train net's layer '{step.name}'"
        if len(src.blob_names) != len(layer.blob_names):
            raise NetError(f"{where}: {len(layer.blob_names)} blob(s) here, {len(src.blob_names)} there")
        for i, (mine, theirs) in enumerate(zip(layer.blob_names, src.blob_names)):
            t = getattr(src, theirs)
            if tuple(t.shape) != tuple(getattr(layer, mine).shape):
                raise NetError(f"{where}: blob {i} has shape {tuple(getattr(layer, mine).shape)} here, "
                               f"{tuple(t.shape)} there")
            layer.share_blob(mine, t)


def snapshot_prefix(p: SolverParam) -> str | None:
    """Where snapshots go (see the module doc), checked to be writable when snapshots will be written."""
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


def blobs_reaching_loss(net: Net) -> set[str]:
    """Blobs a loss-weighted top depends on through differentiable paths (propagate_down honoured)."""
    reaching = {t for st in net.plan for t, w in zip(st.tops, st.loss_weights) if w}
    for st in reversed(net.plan):
        if any(t in reaching for t in st.tops):
            reaching.update(b for b, keep in zip(st.bottoms, st.propagate) if keep)
    return reaching


def wrap_data_parallel(net: Net, params, device, world: int):
    """The train net in DistributedDataParallel (None in a single process). find_unused_parameters only
    when some learnable tensor cannot reach a loss: it costs a graph traversal per iteration."""
    if world <= 1 or not any(pi.tensor.requires_grad for pi in params):
        return None
    from torch.nn.parallel import DistributedDataParallel
    reaching = blobs_reaching_loss(net)
    unused = any(pi.tensor.requires_grad for st in net.plan if not any(t in reaching for t in st.tops)
                 for pi in params if pi.layer == st.name)
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(net, device_ids=ids, find_unused_parameters=unused)
