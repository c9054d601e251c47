"""Caffe's own Python layers, run unchanged: pycaffe's Blob and caffe.Layer, and the adapter that runs a
caffe.Layer subclass as one of our layers (`type: "Python"`, Caffe's python_layer.hpp).

A Caffe user's layer file, as Caffe's examples/pycaffe/layers write it:

    import caffe

    class Double(caffe.Layer):
        def setup(self, bottom, top):
            if len(bottom) != 1:
                raise Exception("one bottom")
        def reshape(self, bottom, top):
            top[0].reshape(*bottom[0].data.shape)
        def forward(self, bottom, top):
            top[0].data[...] = 2 * bottom[0].data
        def backward(self, top, propagate_down, bottom):
            if propagate_down[0]:
                bottom[0].diff[...] = 2 * top[0].diff

`layer { type: "Python" python_param { module: "m" layer: "Double" param_str: "..." } }` builds it (our own
Layer subclasses keep working there too). Semantics as Caffe's:
  - the object gets `param_str` (the plain string, not parsed) and `phase` (TRAIN = 0, TEST = 1), then
    setup(bottom, top) runs once at build and reshape(bottom, top) after it; the tops' shapes at build are what
    they leave in top[i] (bottoms carry the shapes, their data is zeros);
  - reshape then forward run at every forward pass, in NumPy on the CPU (float32 arrays; tensors move to the
    CPU and back when the net runs on another device);
  - backward(top, propagate_down, bottom) runs inside autograd: top[i].diff holds the gradient reaching the
    top (a loss top's is its loss_weight, as Caffe's), bottom[i].diff is taken back for each bottom whose
    propagate_down is true (the bottom needs a gradient: Caffe's bottom_need_backward);
  - `self.blobs.add_blob(*shape)` in setup adds a learnable blob: a parameter of the layer (weights files, the
    solver, `param { lr_mult }`), whose diff the layer's backward fills.
An exception raised by the layer's code is one NetError line naming the layer; its traceback stays chained.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from layers.base import Layer, Shape
from layers.registry import import_user_module
from netdef.errors import NetError
from netdef.params import did_you_mean

__all__ = ["TRAIN", "TEST", "Blob", "BlobVec", "CaffeLayer", "PythonLayer", "python_layer_class", "phase_number"]

TRAIN = 0
TEST = 1


def phase_number(phase) -> int:
    """0 for TRAIN, 1 for TEST (Caffe's Phase enum) from "TRAIN"/"TEST" or an int."""
    if isinstance(phase, str):
        return TEST if phase.upper() == "TEST" else TRAIN
    return int(phase)


def _legacy(shape: tuple[int, ...], index: int) -> int:
    """Caffe's Blob::LegacyShape: axes past the blob's own are 1."""
    if index >= len(shape) or index < -len(shape):
        return 1
    return shape[index]


class Blob:
    """pycaffe's Blob: `data` and `diff` are float32 NumPy arrays of the blob's shape, written in place
    (`top[0].data[...] = x`); reshape(*shape) gives new arrays when the shape changes (Caffe's content after a
    reshape is undefined: here zeros)."""

    def __init__(self, shape: Sequence[int] = (), data: np.ndarray | None = None):
        self._data = np.zeros(tuple(int(d) for d in shape), np.float32) if data is None else data
        self._diff: np.ndarray | None = None

    @property
    def data(self) -> np.ndarray:
        return self._data

    @property
    def diff(self) -> np.ndarray:
        if self._diff is None or self._diff.shape != self.data.shape:
            self._diff = np.zeros(self.data.shape, np.float32)
        return self._diff

    def reshape(self, *shape) -> None:
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        shape = tuple(int(d) for d in shape)
        if any(d < 0 for d in shape):
            raise ValueError(f"Blob.reshape: negative dimension in {shape}")
        if shape != self.shape:
            self._data = np.zeros(shape, np.float32)
            self._diff = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def count(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def num(self) -> int:
        return _legacy(self.shape, 0)

    @property
    def channels(self) -> int:
        return _legacy(self.shape, 1)

    @property
    def height(self) -> int:
        return _legacy(self.shape, 2)

    @property
    def width(self) -> int:
        return _legacy(self.shape, 3)

    def __repr__(self) -> str:
        return f"Blob(shape={self.shape})"


class BlobVec(list):
    """A layer's learnable blobs (pycaffe's BlobVec): a list with add_blob(*shape)."""

    def add_blob(self, *shape) -> None:
        blob = Blob()
        blob.reshape(*shape)
        self.append(blob)


class CaffeLayer:
    """pycaffe's caffe.Layer: subclass it and define setup, reshape, forward and backward. The net sets
    `param_str` and `phase` before setup; `blobs` holds the learnable blobs (`self.blobs.add_blob(*shape)`)."""

    param_str: str = ""
    phase: int = TRAIN
    type: str = "Python"

    def __init__(self, *args, **kwargs):   # pycaffe passes the LayerParameter; nothing here reads it
        if "blobs" not in self.__dict__:
            self.blobs = BlobVec()

    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        pass

    def backward(self, top, propagate_down, bottom):
        pass


def _to_array(t: torch.Tensor) -> np.ndarray:
    """A float32 C-contiguous NumPy copy of a tensor (on the CPU)."""
    return np.array(t.detach().to("cpu", torch.float32).contiguous().numpy(), dtype=np.float32, copy=True)


class _Run(torch.autograd.Function):
    """The user's forward (NumPy) as one autograd node whose backward is the user's backward."""

    @staticmethod
    def forward(ctx, layer: "PythonLayer", n_bottoms: int, *tensors):
        tops, saved = layer._run_forward(tensors[:n_bottoms], tensors[n_bottoms:])
        ctx.layer, ctx.saved_arrays, ctx.n_bottoms = layer, saved, n_bottoms
        return tops

    @staticmethod
    def backward(ctx, *top_grads):
        needs = ctx.needs_input_grad[2:]
        grads = ctx.layer._run_backward(ctx.saved_arrays, top_grads, needs[:ctx.n_bottoms], needs[ctx.n_bottoms:])
        return (None, None, *grads)


class PythonLayer(Layer):
    """Runs a caffe.Layer subclass (`user_class`, set on the subclass python_layer_class makes) as a layer:
    see the module docstring. Its learnable blobs are this layer's parameters blob0, blob1, ..."""

    num_bottoms = (0, None)
    num_tops = (0, None)
    user_class: type = CaffeLayer

    def setup(self, bottom_shapes: list[Shape]) -> None:
        cls = self.user_class
        user = cls.__new__(cls)
        user.blobs = BlobVec()
        user.param_str = self.param_str
        user.phase = phase_number(self.phase)
        self.user = user
        self._bottoms = [Blob(s) for s in bottom_shapes]
        self._tops = [Blob() for _ in range(self.num_top_blobs)]
        self._call("__init__", None)
        self._call("setup", self._bottoms, self._tops)
        for i, blob in enumerate(user.blobs):
            if not isinstance(blob, Blob):
                raise self.error(f"{cls.__qualname__}.blobs[{i}] is a {type(blob).__name__}, not a Blob "
                                 f"(add blobs with self.blobs.add_blob(*shape))")
            param = self.add_blob(f"blob{i}", blob.shape)
            with torch.no_grad():
                param.copy_(torch.from_numpy(np.ascontiguousarray(blob.data, np.float32)))
        self._n_params = len(user.blobs)

    def _call(self, method: str, *args):
        """The user's method; its exceptions become one NetError line naming the layer (cause chained)."""
        try:
            if method == "__init__":
                if type(self.user).__init__ is not object.__init__:
                    type(self.user).__init__(self.user, self.label)
                return None
            return getattr(self.user, method)(*args)
        except NetError:
            raise
        except Exception as e:  # noqa: BLE001 - any error of the user's own code
            detail = (str(e).strip().splitlines() or [""])[0]
            detail = f"{type(e).__name__}: {detail}" if detail else type(e).__name__
            raise self.error(f"{self.user_class.__qualname__}.{method}: {detail}") from e

    def _sync_params(self, params: Sequence[torch.Tensor]) -> None:
        """The learnable blobs' data: the parameters' values (their very memory for float32 CPU tensors)."""
        for blob, p in zip(self.user.blobs, params):
            if p.device.type == "cpu" and p.dtype == torch.float32 and p.is_contiguous():
                blob._data = p.detach().numpy()
            else:
                blob._data = _to_array(p)

    def infer_top_shapes(self, bottom_shapes: list[Shape]) -> list[Shape]:
        """setup ran at construction; reshape runs on Blobs carrying the bottoms' shapes (zero data)."""
        for blob, shape in zip(self._bottoms, bottom_shapes):
            blob.reshape(*shape)
        self._sync_params([getattr(self, n) for n in self.blob_names[:self._n_params]])
        self._call("reshape", self._bottoms, self._tops)
        return [t.shape for t in self._tops]

    def forward(self, *bottoms: torch.Tensor):
        params = [getattr(self, n) for n in self.blob_names[:self._n_params]]
        if not self._tops:
            self._run_forward(bottoms, params)
            return ()
        return _Run.apply(self, len(bottoms), *bottoms, *params)

    def _out_dtype(self, bottoms) -> torch.dtype:
        floats = [b.dtype for b in bottoms if b.is_floating_point()]
        return floats[0] if floats else self._anchor.dtype

    def _run_forward(self, bottoms, params):
        for blob, b in zip(self._bottoms, bottoms):
            blob._data = _to_array(b)
            blob._diff = None
        self._sync_params(params)
        self._call("reshape", self._bottoms, self._tops)
        self._call("forward", self._bottoms, self._tops)
        device, dtype = self._anchor.device, self._out_dtype(bottoms)
        top_arrays = [np.array(t.data, np.float32, copy=True) for t in self._tops]
        tops = tuple(torch.from_numpy(a).to(device, dtype) for a in top_arrays)
        saved = ([blob.data for blob in self._bottoms], top_arrays, [b.dtype for b in bottoms])
        return tops, saved

    def _run_backward(self, saved, top_grads, bottom_needs, param_needs) -> list[torch.Tensor | None]:
        bottom_arrays, top_arrays, bottom_dtypes = saved
        for blob, data in zip(self._bottoms, bottom_arrays):
            blob._data, blob._diff = data, np.zeros(data.shape, np.float32)
        for blob, data, g in zip(self._tops, top_arrays, top_grads):
            blob._data = data
            blob._diff = (_to_array(g).reshape(data.shape) if g is not None
                          else np.zeros(data.shape, np.float32))
        params = [getattr(self, n) for n in self.blob_names[:self._n_params]]
        self._sync_params(params)
        for blob in self.user.blobs[:self._n_params]:
            blob._diff = np.zeros(blob.data.shape, np.float32)
        self._call("backward", self._tops, [bool(n) for n in bottom_needs], self._bottoms)
        device = self._anchor.device
        grads: list[torch.Tensor | None] = []
        for blob, need, data, dtype in zip(self._bottoms, bottom_needs, bottom_arrays, bottom_dtypes):
            grads.append(self._grad(blob.diff, data.shape, device, need, dtype))
        for blob, need, p in zip(self.user.blobs, param_needs, params):
            grads.append(self._grad(blob.diff, tuple(p.shape), device, need, p.dtype))
        return grads

    def _grad(self, diff: np.ndarray, shape, device, need: bool, dtype=None) -> torch.Tensor | None:
        if not need:
            return None
        if tuple(diff.shape) != tuple(shape):
            raise self.error(f"{self.user_class.__qualname__}.backward left a diff of shape {tuple(diff.shape)} "
                             f"for data of shape {tuple(shape)}")
        return torch.from_numpy(np.array(diff, np.float32, copy=True)).to(device, dtype or self._anchor.dtype)

    def extra_repr(self) -> str:
        return f"{self.user_class.__module__}.{self.user_class.__qualname__}"


_ADAPTERS: dict[type, type] = {}


def _adapter_for(cls: type) -> type:
    adapter = _ADAPTERS.get(cls)
    if adapter is None:
        adapter = type(f"Python_{cls.__name__}", (PythonLayer,), {"user_class": cls, "__module__": __name__,
                                                                  "__doc__": cls.__doc__})
        _ADAPTERS[cls] = adapter
    return adapter


def python_layer_class(module: str, layer: str, where: str, search=()) -> type:
    """The layer class for python_param { module layer }: one of our Layer subclasses as it is, a caffe.Layer
    subclass wrapped in PythonLayer. `search`: folders to look in besides the current one (the net's)."""
    mod = import_user_module(module, where, search)
    cls = getattr(mod, layer, None)
    if cls is None:
        names = [n for n, v in vars(mod).items()
                 if isinstance(v, type) and issubclass(v, (Layer, CaffeLayer)) and v not in (Layer, CaffeLayer)]
        raise NetError(f"{where}: module '{module}' has no layer class '{layer}'{did_you_mean(layer, names)}")
    if isinstance(cls, type) and issubclass(cls, CaffeLayer):
        return _adapter_for(cls)
    if isinstance(cls, type) and issubclass(cls, Layer):
        return cls
    raise NetError(f"{where}: '{module}.{layer}' is neither a caffe.Layer subclass nor a layers.base.Layer subclass")
