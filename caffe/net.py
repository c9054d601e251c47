"""pycaffe's Net and solvers over nets.net.Net and nets.solver.Solver, so pycaffe scripts run unchanged:

    import caffe
    caffe.set_mode_cpu()
    net = caffe.Net("deploy.prototxt", "weights.caffemodel.h5", caffe.TEST)
    net.blobs["data"].data[...] = transformer.preprocess("data", image)
    out = net.forward()                       # {output blob: ndarray}
    net.params["conv1"][0].data[...] = w      # changes the weights the next forward uses

Blobs are pycaffe Blobs (layers.pycaffe.Blob): `data`/`diff` are float32 NumPy arrays written in place; on the CPU
a blob's data is the very memory of the tensor the net computed (on a GPU, a copy taken when first read), and
`net.params` views are the weights' own memory on the CPU (on a GPU, a copy pushed back before the next
forward, backward, save or solver step when the weights did not change meanwhile).

Caffe's mode is the CPU until set_mode_gpu(); nets and solvers are built on the device of the mode in force.
Where this differs from pycaffe: backward runs autograd through the graph of the last forward (a layer's
Backward is not called on its own), and an in-place blob's diff is the gradient at its last producer's output;
save() writes a binary .caffemodel for a name ending in .caffemodel, else HDF5 in Caffe's layout (nets.weights).
"""

from __future__ import annotations

import os
from collections import OrderedDict

import numpy as np
import torch

from layers.base import as_tuple
from layers.pycaffe import TEST, TRAIN, Blob, PythonLayer
from layers.registry import registered_types
from netdef.errors import NetError
from nets.net import Net as _CoreNet
from nets.solver import UPDATE_RULES, Solver as _CoreSolver
from nets.weights import load_weights, save_weights

__all__ = ["Net", "SGDSolver", "NesterovSolver", "AdaGradSolver", "RMSPropSolver", "AdaDeltaSolver", "AdamSolver",
           "get_solver", "set_mode_cpu", "set_mode_gpu", "set_device", "set_random_seed", "layer_type_list"]

_MODE = {"gpu": False, "device_id": 0}


def set_mode_cpu() -> None:
    _MODE["gpu"] = False


def set_mode_gpu() -> None:
    _MODE["gpu"] = True


def set_device(device_id: int) -> None:
    _MODE["device_id"] = int(device_id)


def set_random_seed(seed: int) -> None:
    torch.manual_seed(int(seed))


def layer_type_list() -> list[str]:
    return sorted(registered_types())


def _device() -> str:
    return f"cuda:{_MODE['device_id']}" if _MODE["gpu"] else "cpu"


def _phase_name(phase) -> str:
    if phase in (TRAIN, "TRAIN"):
        return "TRAIN"
    if phase in (TEST, "TEST"):
        return "TEST"
    raise NetError(f"caffe.Net: phase must be caffe.TRAIN or caffe.TEST, got {phase!r}")


def _as_array(t: torch.Tensor) -> np.ndarray:
    """The tensor's own memory for float32 CPU tensors, else a float32 copy on the CPU."""
    t = t.detach()
    if t.device.type == "cpu" and t.dtype == torch.float32:
        return t.numpy()
    return t.to("cpu", torch.float32).numpy()


class _NetBlob(Blob):
    """A net blob: its data is the tensor of the last pass (read lazily), or what was written into it."""

    def __init__(self, shape):
        super().__init__(shape)
        self._source: torch.Tensor | None = None

    def _point(self, tensor: torch.Tensor) -> None:
        self._source = tensor
        if self._diff is not None and self._diff.shape != tuple(tensor.shape):
            self._diff = None

    @property
    def data(self) -> np.ndarray:
        if self._source is not None:
            self._data, self._source = _as_array(self._source), None
        return self._data

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._source.shape) if self._source is not None else tuple(self._data.shape)

    def reshape(self, *shape) -> None:
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        if tuple(int(d) for d in shape) != self.shape:
            self._source = None
        super().reshape(*shape)


class _ParamBlob(Blob):
    """A layer's blob: data is the tensor's memory (float32 CPU) or a mirror pushed back by push()."""

    def __init__(self, layer, index: int):
        self._layer, self._index = layer, index
        self._mirror: np.ndarray | None = None
        self._version = -1
        self._diff = None

    @property
    def _tensor(self) -> torch.Tensor:
        return self._layer.caffe_blobs()[self._index]

    @property
    def data(self) -> np.ndarray:
        t = self._tensor
        if t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous():
            return t.detach().numpy()
        if self._mirror is None or self._version != t._version:
            self._mirror, self._version = t.detach().to("cpu", torch.float32).contiguous().numpy(), t._version
        return self._mirror

    @property
    def diff(self) -> np.ndarray:
        t = self._tensor
        if t.grad is None:
            if self._diff is None or self._diff.shape != tuple(t.shape):
                self._diff = np.zeros(tuple(t.shape), np.float32)
            return self._diff
        return _as_array(t.grad)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._tensor.shape)

    def reshape(self, *shape) -> None:
        raise NetError("a layer's parameter blobs cannot be reshaped from Python")

    def push(self) -> None:
        """Copy the mirror into the tensor (when the tensor did not change since the mirror was taken)."""
        t = self._tensor
        if self._mirror is not None and self._version == t._version:
            with torch.no_grad():
                t.copy_(torch.from_numpy(self._mirror).to(t.device, t.dtype))
            self._version = t._version


class _LayerView:
    """pycaffe's net.layers[i] for our layers: type and blobs."""

    def __init__(self, type_name: str, blobs: list):
        self.type, self.blobs = type_name, blobs

    def __repr__(self) -> str:
        return f"<caffe layer {self.type}>"


class Net:
    """pycaffe's Net: Net(network_file, phase, level=0, stages=None, weights=None), or the old
    Net(network_file, weights, phase). See the module docstring."""

    def __init__(self, network_file, *args, phase=None, level=0, stages=None, weights=None):
        args = list(args)
        if args and isinstance(args[0], (str, os.PathLike)):
            weights = args.pop(0)
        if args:
            phase = args.pop(0)
        if args:
            level = args.pop(0)
        if args:
            stages = args.pop(0)
        if args:
            raise NetError(f"caffe.Net: too many arguments ({len(args)} left over)")
        if phase is None:
            raise NetError("caffe.Net: give the phase, caffe.TRAIN or caffe.TEST")
        core = _CoreNet(os.fspath(network_file), phase=_phase_name(phase), stages=tuple(stages or ()),
                        level=int(level), device=_device())
        self._attach(core)
        if weights is not None:
            self.copy_from(weights)

    @classmethod
    def _wrap(cls, core: _CoreNet) -> "Net":
        net = cls.__new__(cls)
        net._attach(core)
        return net

    def _attach(self, core: _CoreNet) -> None:
        self._net = core
        self._layer_names = [st.name for st in core.plan]
        self._blobs: "OrderedDict[str, Blob]" = OrderedDict((n, _NetBlob(s)) for n, s in core.blob_shapes.items())
        self.inputs = list(core.inputs)
        self.outputs = list(core.outputs)
        self._loss_weights = {t: w for st in core.plan for t, w in zip(st.tops, st.loss_weights) if w}
        self.blob_loss_weights = OrderedDict((n, self._loss_weights.get(n, 0.0)) for n in self._blobs)
        self.top_names = OrderedDict((st.name, list(st.tops)) for st in core.plan)
        self.bottom_names = OrderedDict((st.name, list(st.bottoms)) for st in core.plan)
        self.layers = []
        self.params: "OrderedDict[str, list]" = OrderedDict()
        for st in core.plan:
            layer = core.layers[st.key]
            blobs = [_ParamBlob(layer, i) for i in range(len(layer.blob_names))]
            self.layers.append(layer.user if isinstance(layer, PythonLayer) else _LayerView(st.definition.type, blobs))
            if blobs and st.name not in self.params:
                self.params[st.name] = blobs
        self.layer_dict = OrderedDict(zip(self._layer_names, self.layers))
        self._tensors: dict[str, torch.Tensor] = {}
        self._synced = core.blobs
        self._loss: torch.Tensor | None = None

    # -- pycaffe's Python API ---------------------------------------------------------------------------------
    def forward(self, blobs=None, start=None, end=None, **kwargs):
        """Run the net (layers start..end, inclusive); kwargs fill input blobs. Returns {blob: ndarray} for the
        outputs (the end layer's tops when `end` is given) and `blobs`."""
        if blobs is None:
            blobs = []
        start_ind = self._layer_index(start) if start is not None else 0
        if end is not None:
            end_ind = self._layer_index(end)
            outputs = set(self.top_names[end] + list(blobs))
        else:
            end_ind = len(self.layers) - 1
            outputs = set(self.outputs + list(blobs))
        if kwargs:
            if set(kwargs.keys()) != set(self.inputs):
                raise NetError(f"Input blob arguments do not match net inputs ({', '.join(self.inputs)})")
            for in_, blob in kwargs.items():
                if np.shape(blob)[0] != self.blobs[in_].shape[0]:
                    raise NetError(f"Input is not batch sized: '{in_}' has {np.shape(blob)[0]}, the blob "
                                   f"{self.blobs[in_].shape[0]}")
                self.blobs[in_].data[...] = blob
        self._forward(start_ind, end_ind)
        return {out: self.blobs[out].data for out in outputs}

    def backward(self, diffs=None, start=None, end=None, **kwargs):
        """Backward through the last forward, layers start..end (inclusive, downwards): the diffs the tops of the
        range hold that no layer of the range consumes (an output's diff, one written into a blob; a loss top's
        is its loss weight) go down to the bottoms, and the parameters' diffs accumulate. kwargs set output
        diffs. Returns {blob: diff ndarray} for the inputs (the end layer's bottoms when `end` is given) and
        `diffs`."""
        if diffs is None:
            diffs = []
        start_ind = self._layer_index(start) if start is not None else len(self.layers) - 1
        if end is not None:
            end_ind = self._layer_index(end)
            outputs = set(self.bottom_names[end] + list(diffs))
        else:
            end_ind = 0
            outputs = set(self.inputs + list(diffs))
        if kwargs:
            if set(kwargs.keys()) != set(self.outputs):
                raise NetError(f"Top diff arguments do not match net outputs ({', '.join(self.outputs)})")
            for top, diff in kwargs.items():
                if np.shape(diff)[0] != self.blobs[top].shape[0]:
                    raise NetError(f"Diff is not batch sized: '{top}'")
                self.blobs[top].diff[...] = diff
        self._backward(start_ind, end_ind)
        return {out: self.blobs[out].diff for out in outputs}

    def set_input_arrays(self, data, labels) -> None:
        """pycaffe's: feed the net's first layer, a MemoryData layer, from arrays: data (N, C, H, W) float32,
        labels (N,) or (N, 1, 1, 1), N a multiple of its batch_size (layers/caffe/memory_data.py). Batches read
        ahead from earlier arrays are dropped."""
        core = self._net
        first = core.plan[0] if core.plan else None
        if first is None or first.definition.type != "MemoryData":
            raise NetError("set_input_arrays may only be called if the first layer is a MemoryDataLayer")
        labels = np.asarray(labels)
        if labels.ndim == 1:
            labels = np.ascontiguousarray(labels[:, np.newaxis, np.newaxis, np.newaxis])
        if core.source is not None:
            core.source.close()
        core.layers[first.key].reset(data, labels)

    def forward_all(self, blobs=None, **kwargs):
        """Run the net over inputs of any length in batches of the net's batch size; {blob: stacked ndarray}."""
        all_outs = {out: [] for out in set(self.outputs + (blobs or []))}
        for batch in self._batch(kwargs):
            outs = self.forward(blobs=blobs, **batch)
            for out, out_blob in outs.items():
                all_outs[out].extend(out_blob.copy())
        for out in all_outs:
            all_outs[out] = np.asarray(all_outs[out])
        pad = len(next(iter(all_outs.values()))) - len(next(iter(kwargs.values())))
        if pad:
            for out in all_outs:
                all_outs[out] = all_outs[out][:-pad]
        return all_outs

    def _batch(self, blobs):
        num = len(next(iter(blobs.values())))
        batch_size = next(iter(self.blobs.values())).shape[0]
        remainder = num % batch_size
        for b in range(num // batch_size):
            i = b * batch_size
            yield {name: blobs[name][i:i + batch_size] for name in blobs}
        if remainder > 0:
            padded = {}
            for name in blobs:
                padding = np.zeros((batch_size - remainder,) + blobs[name].shape[1:])
                padded[name] = np.concatenate([blobs[name][-remainder:], padding])
            yield padded

    def reshape(self) -> None:
        """Propagate the input blobs' shapes (after net.blobs[name].reshape(...)) through every layer."""
        core = self._net
        shapes: dict[str, tuple] = {}
        for st in core.plan:
            layer = core.layers[st.key]
            if layer.is_input:
                shapes.update((t, self.blobs[t].shape) for t in st.tops)
                continue
            if st.is_source:
                shapes.update((t, core.blob_shapes[t]) for t in st.tops)
                continue
            bottom_shapes = [shapes[b] for b in st.bottoms]
            try:
                tops = layer.infer_top_shapes(bottom_shapes)
            except NetError:
                raise
            except Exception as e:  # noqa: BLE001 - a shape the layer cannot take
                detail = (str(e).strip().splitlines() or [type(e).__name__])[0]
                shown = ", ".join(f"{b} {tuple(s)}" for b, s in zip(st.bottoms, bottom_shapes))
                raise NetError(f"{st.definition.where}: cannot run on bottoms {shown}: {detail}") from e
            shapes.update((t, tuple(int(d) for d in s)) for t, s in zip(st.tops, tops))
        for name, shape in shapes.items():
            self.blobs[name].reshape(*shape)

    def copy_from(self, path) -> None:
        """Load weights into the layers of the same names (nets.weights.load_weights)."""
        self._push_params()
        load_weights(self._net, os.fspath(path))

    def save(self, path) -> None:
        """Write the weights: binary Caffe for a '.caffemodel' name, else HDF5 in Caffe's layout (nets.weights)."""
        self._push_params()
        save_weights(self._net, os.fspath(path))

    def clear_param_diffs(self) -> None:
        for p in self._net.parameters():
            p.grad = None

    def share_with(self, other: "Net") -> None:
        """Take the other net's trained blobs by layer name (Caffe's ShareTrainedLayersWith)."""
        from nets.solver.build import share_trained_layers
        share_trained_layers(self._net, other._net)

    @property
    def net(self) -> _CoreNet:
        """The nets.net.Net underneath."""
        return self._net

    # -- running ------------------------------------------------------------------------------------------------
    def _layer_index(self, name: str) -> int:
        if name not in self._layer_names:
            raise NetError(f"net '{self._net.name}' has no layer '{name}'")
        return self._layer_names.index(name)

    def _push_params(self) -> None:
        for blobs in self.params.values():
            for b in blobs:
                b.push()

    def _refresh(self) -> None:
        """Point the blob views at the tensors of the core net's last pass, when it ran since (a solver step)."""
        if self._net.blobs is not self._synced:
            self._synced = self._net.blobs
            self._tensors = dict(self._net.blobs)
            self._loss = self._net.loss
            for name, t in self._tensors.items():
                if name in self._blobs:
                    self._blobs[name]._point(t)

    @property
    def blobs(self) -> "OrderedDict[str, Blob]":
        """Blob name -> Blob, in Caffe's order (inputs first, then each new top in layer order)."""
        self._refresh()
        return self._blobs

    def _input_tensor(self, name: str) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(self.blobs[name].data, np.float32))
        if self._net.definition.force_backward:
            t = t.to(self._net.device).requires_grad_(True)
        return t

    def _forward(self, start: int, end: int) -> None:
        core = self._net
        self._push_params()
        if start == 0 and end == len(core.plan) - 1:
            core.forward(**{name: self._input_tensor(name) for name in self.inputs})
            self._refresh()
            return
        blobs = self.blobs
        tensors = dict(self._tensors)
        produced: set[str] = set()     # blobs computed in this pass; the others are read from their views
        loss = None
        for st in core.plan[start:end + 1]:
            layer = core.layers[st.key]
            if layer.is_input:
                tensors.update((t, self._input_tensor(t).to(core.device, core.dtype)) for t in st.tops)
                produced.update(st.tops)
                continue
            bottoms = []
            for b, keep in zip(st.bottoms, st.propagate):
                t = tensors[b] if b in produced else torch.from_numpy(
                    np.ascontiguousarray(blobs[b].data, np.float32)).to(core.device, core.dtype)
                bottoms.append(t if keep else t.detach())
            try:
                tops = as_tuple(layer(*bottoms))
            except NetError:
                raise
            except Exception as e:  # noqa: BLE001 - torch's errors, and any error of a user's own layer
                shown = ", ".join(f"{b} {tuple(t.shape)}" for b, t in zip(st.bottoms, bottoms))
                detail = (str(e).strip().splitlines() or [type(e).__name__])[0]
                raise NetError(f"{st.definition.where}: failed on bottoms {shown}: {detail}") from e
            tensors.update(zip(st.tops, tops))
            produced.update(st.tops)
            for i, w in enumerate(st.loss_weights):
                if w:
                    term = w * tops[i].sum()
                    loss = term if loss is None else loss + term
        self._tensors, self._loss = tensors, loss
        for name, t in tensors.items():
            blobs[name]._point(t)

    def _backward(self, start: int, end: int) -> None:
        self._push_params()
        blobs = self.blobs
        steps = self._net.plan[end:start + 1]
        produced: set[str] = set()
        consumed: set[str] = set()       # blobs whose diff comes from a layer of the range
        wanted_names: dict[str, None] = {}
        for st in steps:
            for b in st.bottoms:
                if b in produced:
                    consumed.add(b)
                wanted_names[b] = None
            for t in st.tops:
                produced.add(t)
                consumed.discard(t)          # an in-place top is a new blob from here on
        weighted = {t: w for st in steps for t, w in zip(st.tops, st.loss_weights) if w}
        roots, seeds, seeded = [], [], set()
        for name in dict.fromkeys([t for st in steps for t in st.tops if t not in consumed] + list(weighted)):
            t = self._tensors.get(name)
            if t is None or not t.requires_grad:
                continue
            diff = blobs[name].diff
            if name in weighted:
                diff[...] = weighted[name]     # Caffe: a loss top's diff is its loss weight
            if not diff.any():
                continue
            roots.append(t)
            seeds.append(torch.from_numpy(np.array(diff, np.float32)).to(t.device, t.dtype).reshape(t.shape))
            seeded.add(name)
        if not roots:
            return
        wanted = [(n, self._tensors[n]) for n in wanted_names
                  if n not in seeded and n in self._tensors and self._tensors[n].requires_grad]
        params, seen = [], set()
        for st in steps:
            for p in self._net.layers[st.key].caffe_blobs():
                if p.requires_grad and id(p) not in seen:
                    seen.add(id(p))
                    params.append(p)
        grads = torch.autograd.grad(roots, [t for _, t in wanted] + params, seeds, retain_graph=True,
                                    allow_unused=True)
        for (name, t), g in zip(wanted, grads[:len(wanted)]):
            if g is not None:
                blobs[name].diff[...] = _as_array(g).reshape(blobs[name].diff.shape)
        with torch.no_grad():
            for p, g in zip(params, grads[len(wanted):]):
                if g is not None:
                    p.grad = g.clone() if p.grad is None else p.grad + g


# -- solvers ------------------------------------------------------------------------------------------------------

class _Solver:
    """pycaffe's solvers: .net, .test_nets, .iter, .step(n), .solve(), .snapshot(), .restore(path)."""

    _type: str | None = None     # the update rule (None: the solver file's `type`)

    def __init__(self, filename):
        self._solver = s = _CoreSolver(os.fspath(filename), device=_device())
        if self._type is not None and s.param.type != self._type:
            s.param.type = self._type
            s.rule = UPDATE_RULES[self._type](s.param)
            s.history = [torch.zeros_like(pi.tensor) for _ in range(s.rule.n_history) for pi in s.params]
        self.net = Net._wrap(s.train_net)
        self.test_nets = [Net._wrap(n) for n in s.test_nets]

    @property
    def iter(self) -> int:
        return self._solver.iter

    @property
    def param(self):
        return self._solver.param

    def _push(self) -> None:
        for net in [self.net, *self.test_nets]:
            net._push_params()

    def step(self, iters: int) -> None:
        self._push()
        self._solver.step(int(iters))

    def solve(self, resume=None) -> None:
        self._push()
        self._solver.solve(resume)

    def snapshot(self) -> None:
        self._push()
        self._solver.snapshot()

    def restore(self, path) -> None:
        self._solver.restore(os.fspath(path))


def _solver_class(type_name: str | None, name: str) -> type:
    return type(name, (_Solver,), {"_type": type_name, "__module__": __name__,
                                   "__doc__": f"pycaffe's {name}: the solver file with the {type_name} update rule."})


SGDSolver = _solver_class("SGD", "SGDSolver")
NesterovSolver = _solver_class("Nesterov", "NesterovSolver")
AdaGradSolver = _solver_class("AdaGrad", "AdaGradSolver")
RMSPropSolver = _solver_class("RMSProp", "RMSPropSolver")
AdaDeltaSolver = _solver_class("AdaDelta", "AdaDeltaSolver")
AdamSolver = _solver_class("Adam", "AdamSolver")


def get_solver(filename) -> _Solver:
    """The solver its file's `type` names (pycaffe's caffe.get_solver)."""
    return _solver_class(None, "Solver")(filename)
