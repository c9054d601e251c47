"""The Layer base class (param declarations: netdef.params, re-exported here for layer files).

A layer is an nn.Module built from a LayerDef and the shapes of its bottoms (Caffe's LayerSetUp):

    @register_layer("Power")
    class Power(Layer):
        '''y = (shift + scale * x) ** power.  Bottoms: x (any).  Tops: y (same shape).
        Params (power_param): power = 1, scale = 1, shift = 0.'''
        params = Params("power_param", power=Param(float, 1.0), scale=Param(float, 1.0),
                        shift=Param(float, 0.0))

        def forward(self, x):
            return (self.p.shift + self.p.scale * x) ** self.p.power

Declared params are validated against the prototxt (unknown name -> "did you mean", wrong type, missing
required value), with the layer's name and file:line:col in the message. Learnable blobs are created with
`self.add_blob(...)` in Caffe's order so that weights files and `param { }` entries line up.
"""

from __future__ import annotations

import os
import re
from typing import Iterable, Sequence

import torch
from torch import nn

from netdef.errors import NetError
from netdef.params import BLOB_SHAPE, FILLER, REQUIRED, Param, Params, Values, as_message, did_you_mean, show
from netdef.spec import LayerDef

__all__ = ["Layer", "SourceLayer", "Params", "Param", "Values", "FILLER", "BLOB_SHAPE", "REQUIRED", "Shape", "as_tuple",
           "check_allocation", "memory_available", "channel_axis", "all_shapes_equal"]

Shape = tuple[int, ...]


class Layer(nn.Module):
    """Base of every layer. Subclasses set the class attributes below and override `setup` and `forward`.

    Class attributes:
      params      the param block(s) the layer reads (Params), validated at build.
      num_bottoms exact count, or (min, max) with max None for unbounded.
      num_tops    likewise.
      is_loss     top 0 gets loss_weight 1 unless the prototxt says otherwise.
      is_input    the Net feeds this layer's tops from forward(**inputs) instead of calling it.
    Layers that read data ahead of the network derive from SourceLayer (below).
    Instance attributes after construction: name, type, phase ("TRAIN"/"TEST"), where (for messages),
    p (parsed params), param_str (python_param's string, for Python layers), blob_names (Caffe order).
    """

    params: Params = Params()
    num_bottoms: int | tuple[int, int | None] = 1
    num_tops: int | tuple[int, int | None] = 1
    is_loss: bool = False
    is_input: bool = False

    def __init__(self, spec: LayerDef, bottom_shapes: Sequence[Shape] = (), phase: str = "TRAIN",
                 param_str: str = ""):
        super().__init__()
        self.name, self.type, self.phase, self.where = spec.name, spec.type, phase, spec.where
        self.param_str = param_str
        self.blob_names: list[str] = []
        # Lets layers without parameters (data generators) know the net's device; not saved.
        self.register_buffer("_anchor", torch.empty(0), persistent=False)
        self.num_top_blobs = len(spec.tops)
        self._check_count("bottom", len(spec.bottoms), self.num_bottoms)
        self._check_count("top", len(spec.tops), self.num_tops)
        self.label = spec.label
        self.p, self.p_blocks = self._parse_params(spec)
        self.setup([tuple(s) for s in bottom_shapes])

    def _parse_params(self, spec: LayerDef) -> tuple[Values, dict[str, Values]]:
        """The declared blocks from the prototxt; for a Python layer that declares blocks, python_param's
        param_str is their text too: the one block's fields ("beta: 2"), or blocks ("a_param { } b_param { }")
        when it declares several. self.param_str keeps the raw string either way."""
        if not (self.param_str.strip() and self.params.blocks):
            return self.params.parse_blocks(spec.blocks, self.label, self.where)
        from netdef.text_format import parse
        quoted = show(self.param_str)
        try:
            msg = parse(self.param_str, "param_str")
            if len(self.params.blocks) == 1:
                given = {next(iter(self.params.blocks)): msg}
            else:
                given = {}
                for f in msg:
                    if f.name not in self.params.blocks or f.name in given:
                        what = "repeated" if f.name in given else "unknown"
                        raise NetError(f"{f.loc}: {what} param block '{f.name}' (this layer takes "
                                       f"{', '.join(self.params.blocks)}){did_you_mean(f.name, self.params.blocks)}")
                    given[f.name] = as_message(f)
            both = [b for b in given if b in spec.blocks]
            if both:
                raise NetError(f"{self.where}: {both[0]} is given both in param_str and as a block; give it once")
            return self.params.parse_blocks({**spec.blocks, **given}, self.label, self.where)
        except NetError as e:
            text = str(e)
            if not text.startswith("param_str:"):
                raise
            # 'param_str:LINE:COL: [label: ]msg' -> 'FILE:LINE:COL: label: in param_str "...": msg'
            rest = text.split(": ", 1)[1] if ": " in text else text
            rest = rest[len(self.label) + 2:] if rest.startswith(self.label + ": ") else rest
            raise NetError(f"{self.where}: in param_str {quoted}: {rest}") from None

    # -- for subclasses --------------------------------------------------------------------------------------
    def setup(self, bottom_shapes: list[Shape]) -> None:
        """Check params against bottom shapes and create blobs. Runs once, at build."""

    def error(self, msg: str) -> NetError:
        """A user error about this layer: raise self.error('...')."""
        return NetError(f"{self.where}: {msg}")

    def add_blob(self, name: str, shape: Sequence[int], filler: Values | None = None, *,
                 learnable: bool = True, value: float = 0.0) -> torch.Tensor:
        """Create a Caffe blob (parameter, or buffer when not learnable), filled, in Caffe's blob order."""
        from layers.fillers import fill
        shape = tuple(int(s) for s in shape)
        check_allocation(shape, torch.get_default_dtype().itemsize, f"{self.where}: blob '{name}'")
        t = torch.empty(shape)
        if filler is not None:
            with torch.no_grad():
                fill(t, filler, self.where)
        else:
            t.fill_(value)
        if learnable:
            self.register_parameter(name, nn.Parameter(t))
        else:
            self.register_buffer(name, t)
        self.blob_names.append(name)
        return getattr(self, name)

    def share_blob(self, name: str, tensor: torch.Tensor) -> None:
        """Make blob `name` the very tensor `tensor` of another layer (Caffe's ShareData): a parameter when
        `tensor` is one, else a buffer."""
        if isinstance(tensor, nn.Parameter):
            setattr(self, name, tensor)
        else:
            self._parameters.pop(name, None)
            self._buffers[name] = tensor

    @property
    def device(self) -> torch.device:
        return self._anchor.device

    def caffe_blobs(self) -> list[torch.Tensor]:
        """The layer's blobs in Caffe's order (parameters and buffers), as weights files store them."""
        return [getattr(self, n) for n in self.blob_names]

    def infer_top_shapes(self, bottom_shapes: list[Shape]) -> list[Shape]:
        """Top shapes for the given bottom shapes. Default: run forward on meta tensors (no compute)."""
        from torch.func import functional_call
        state = {k: v.to("meta") for k, v in list(self.named_parameters()) + list(self.named_buffers())}
        bottoms = [torch.empty(s, device="meta") for s in bottom_shapes]
        try:
            with torch.no_grad():
                tops = functional_call(self, state, tuple(bottoms))
        except (RuntimeError, TypeError, ValueError, NotImplementedError) as e:
            if not re.search(r"\bmeta\b", str(e), re.IGNORECASE):
                raise
            # forward read values (NumPy, .item(), .tolist(), `if x.any():`), which meta tensors do not have
            detail = str(e).strip().splitlines()[0]
            raise self.error(f"forward cannot run on meta tensors (shapes without data), which infer the top "
                             f"shapes: declare infer_top_shapes(self, bottom_shapes) in the layer class, returning "
                             f"the top shapes as a list of tuples (torch: {detail})") from e
        return [tuple(t.shape) for t in as_tuple(tops)]

    def _check_count(self, what: str, n: int, rule) -> None:
        lo, hi = (rule, rule) if isinstance(rule, int) else rule
        if n < lo or (hi is not None and n > hi):
            want = f"{lo}" if lo == hi else (f"at least {lo}" if hi is None else f"{lo} to {hi}")
            raise self.error(f"takes {want} {what}(s), got {n}")


class SourceLayer(Layer):
    """Base of the layers that read data on the CPU ahead of the network (Caffe's BaseDataLayer); the source
    stage (nets/source.py) runs them, a Net never calls them in its layer loop.

    Where a source layer runs:
      stateful = True   it keeps state across batches (an index cursor, a random generator): it runs in the
                        main process, one batch at a time, in order, fed by no layer or by stateful source
                        layers only; get_state() -> a JSON-able value and set_state(value) are its contract, and
                        snapshots save the state after the last batch the network consumed.
      stateful = False  a reader, a pure function of its bottoms (index blobs): it runs in the data worker
                        processes (in the main process when it has no bottoms).
    forward_compact(*bottoms): the tops in their stored type on the CPU (uint8 pixels), shipped from the workers
    and cast by the Net to its dtype; it must equal forward() up to that cast. Default: forward().

    Two halves in one layer (Caffe's data layers: Data, ImageData, HDF5Data): a layer that defines both
      draw_batch(*bottoms) -> ticket  the stateful half, in the main process: moves the cursor, reshuffles,
                                      draws the random transform decisions, and returns a small picklable
                                      ticket (record keys, file paths, raw random numbers) that decides the
                                      batch completely;
      read_batch(ticket) -> tops      the pure half, in the worker processes: reads, decodes and transforms
                                      what the ticket names; tops on the CPU in their stored type (cast by the
                                      Net);
    is stateful (get_state/set_state as above: the state after the draws handed out), declares its top shapes
    (infer_top_shapes: nothing may be drawn to infer them), and has forward() = read_batch(draw_batch()) in the
    default float dtype on the layer's device (nets run inline, pycaffe's layer-by-layer forward).
    """

    stateful: bool = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        split = cls.draw_batch is not SourceLayer.draw_batch
        if split != (cls.read_batch is not SourceLayer.read_batch):
            raise TypeError(f"{cls.__qualname__}: a two-half source layer defines both draw_batch and read_batch")
        if split and (not cls.stateful or cls.infer_top_shapes is Layer.infer_top_shapes):
            raise TypeError(f"{cls.__qualname__}: a two-half source layer is stateful and defines infer_top_shapes")
        if cls.stateful and (cls.get_state is SourceLayer.get_state or cls.set_state is SourceLayer.set_state):
            raise TypeError(f"{cls.__qualname__}: a stateful source layer must define get_state and set_state")

    def get_state(self):
        """The state to snapshot (None: nothing to restore)."""
        return None

    def set_state(self, state) -> None:
        """Restore what get_state() gave."""

    def forward_compact(self, *bottoms):
        if self.is_split():
            return self.read_batch(self.draw_batch(*bottoms))
        return self.forward(*bottoms)

    def forward(self, *bottoms):
        if not self.is_split():
            raise NotImplementedError(f"{type(self).__qualname__} defines no forward")
        dtype = torch.get_default_dtype()
        tops = tuple(t.to(self.device, dtype) for t in as_tuple(self.read_batch(self.draw_batch(*bottoms))))
        return tops if len(tops) > 1 else tops[0]

    def draw_batch(self, *bottoms):
        """Two-half layers: the next batch's ticket (main process; moves the state)."""
        raise NotImplementedError

    def read_batch(self, ticket):
        """Two-half layers: the tops for a ticket (worker processes; a pure function of the ticket)."""
        raise NotImplementedError

    @classmethod
    def is_split(cls) -> bool:
        """Whether the layer has two halves (draw in the main process, read in the workers)."""
        return cls.draw_batch is not SourceLayer.draw_batch

    @classmethod
    def has_compact_form(cls) -> bool:
        """Whether forward_compact differs from forward (the stage ships compact tops from its workers)."""
        return cls.forward_compact is not SourceLayer.forward_compact or cls.is_split()


def memory_available() -> int:
    """Bytes this process can still allocate without swapping: Linux's MemAvailable, else free physical pages;
    0 when neither is known."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


def check_allocation(shape: Sequence[int], itemsize: int, what: str) -> None:
    """Refuse, before allocating, a tensor of `shape` that could not be held in memory: one line saying how much it
    needs and how much there is. `what` names it ('FILE:L:C: layer ... : blob 'weight'')."""
    count = 1
    for d in shape:
        count *= int(d)
    need = count * itemsize
    have = memory_available()
    if count >= 2 ** 63 or (have and need > have):
        raise NetError(f"{what} of shape {tuple(int(d) for d in shape)} needs {_human_bytes(need)}, more than the "
                       f"{_human_bytes(have)} of memory available")


def _human_bytes(n: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB", "PB", "EB"):
        if n < 1024 or unit == "EB":
            return f"{n:.3g} {unit}" if unit != "bytes" else f"{n} bytes"
        n /= 1024
    return f"{n:.3g} EB"


def as_tuple(x) -> tuple:
    if isinstance(x, (tuple, list)):
        return tuple(x)
    return (x,)


def channel_axis(axis: int, ndim: int, where: str, what: str = "axis") -> int:
    """Caffe's CanonicalAxisIndex: negative axes count from the end; out of range is a user error."""
    if not -ndim <= axis < ndim:
        raise NetError(f"{where}: {what} {axis} is out of range for a {ndim}-D blob")
    return axis % ndim


def all_shapes_equal(shapes: Iterable[Shape]) -> bool:
    shapes = list(shapes)
    return all(s == shapes[0] for s in shapes)
