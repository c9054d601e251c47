"""The Layer base class and its param declarations.

A layer is an nn.Module built from a LayerSpec and the shapes of its bottoms (Caffe's LayerSetUp):

    @register_layer("Power")
    class Power(Layer):
        '''y = (shift + scale * x) ** power.  Bottoms: x (any).  Tops: y (same shape).
        Params (power_param): power = 1, scale = 1, shift = 0.'''
        params = Params("power_param", power=P(float, 1.0), scale=P(float, 1.0), shift=P(float, 0.0))

        def forward(self, x):
            return (self.p.shift + self.p.scale * x) ** self.p.power

Declared params are validated against the prototxt (unknown name -> "did you mean", wrong type, missing
required value), with the layer's name and file:line:col in the message. Learnable blobs are created with
`self.add_blob(...)` in Caffe's order so that weights files and `param { }` entries line up.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import torch
from torch import nn

from nets.errors import NetError
from nets.spec import LayerSpec, show, _as_bool, _as_enum, _as_float, _as_int, _as_str, did_you_mean
from nets.text_format import Field, Message

__all__ = ["Layer", "Params", "P", "Values", "FILLER", "BLOB_SHAPE", "REQUIRED", "Shape"]

Shape = tuple[int, ...]


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED = _Required()


class P:
    """One declared param: its kind, default and whether it repeats.

    kind: int, float, bool, str, a tuple of enum names (in protobuf number order), or a Params schema for a
    nested message (e.g. FILLER). A repeated param's value is a list (default: empty list).
    """

    def __init__(self, kind, default: Any = None, *, repeated: bool = False):
        self.kind, self.default, self.repeated = kind, default, repeated

    def convert(self, f: Field, label: str):
        """The field's value as this kind; errors read 'FILE:LINE:COL: <label>: ...'."""
        k = self.kind
        if isinstance(k, Params):
            if not isinstance(f.value, Message):
                raise NetError(f"{f.loc}: {label}: '{f.name}' expects a {{ }} block, found {show(f.value)}")
            return k.parse(f.value, label)
        conv = {int: _as_int, float: _as_float, bool: _as_bool, str: _as_str}.get(k)
        try:
            return conv(f) if conv else _as_enum(f, k)
        except NetError as e:
            # the helpers say 'LOC: msg'; put the layer's label between the two
            raise NetError(f"{f.loc}: {label}: {str(e)[len(str(f.loc)) + 2:]}") from None


class Values:
    """Parsed param values: attribute access, plus `given` (names set explicitly, Caffe's has_xxx())."""

    def __init__(self, values: dict[str, Any], given: set[str]):
        self.__dict__.update(values)
        self.given = given

    def has(self, name: str) -> bool:
        return name in self.given

    def __repr__(self) -> str:
        return "Values(" + ", ".join(f"{k}={v!r}" for k, v in self.__dict__.items() if k != "given") + ")"


class Params:
    """A param block declaration: Params("convolution_param", num_output=P(int, REQUIRED), ...).

    Combine blocks with `+` for layers that read several (e.g. loss_param + softmax_param).
    """

    def __init__(self, block: str | None = None, **fields: P):
        self.blocks: dict[str, dict[str, P]] = {block: dict(fields)} if block else {}

    def __add__(self, other: "Params") -> "Params":
        out = Params()
        out.blocks = {**self.blocks, **other.blocks}
        return out

    def fields(self) -> dict[str, P]:
        """Nested use (a message-typed param): the single block's fields."""
        return next(iter(self.blocks.values())) if self.blocks else {}

    def parse(self, msg: Message | None, label: str = "") -> Values:
        """Parse one nested message against this (single-block) schema."""
        return _parse_fields(self.fields(), msg, label, next(iter(self.blocks), "block"))

    def parse_blocks(self, blocks: dict[str, Message], label: str, where: str = "") -> tuple[Values, dict[str, Values]]:
        for name, msg in blocks.items():
            if name not in self.blocks:
                takes = ", ".join(self.blocks) or "no param block"
                raise NetError(f"{msg.loc}: {label}: unknown param block '{name}' (this layer takes "
                               f"{takes}){did_you_mean(name, self.blocks)}")
        merged: dict[str, Any] = {}
        given: set[str] = set()
        per_block = {}
        for name, fields in self.blocks.items():
            required = [k for k, d in fields.items() if d.default is REQUIRED]
            if name not in blocks and required:
                raise NetError(f"{where or label}: missing {name} {{ {required[0]}: ... }}")
            vals = _parse_fields(fields, blocks.get(name), label, name)
            per_block[name] = vals
            merged.update({k: getattr(vals, k) for k in fields})
            given |= vals.given
        return Values(merged, given), per_block


def _parse_fields(fields: dict[str, P], msg: Message | None, label: str, block: str) -> Values:
    values: dict[str, Any] = {}
    given: set[str] = set()
    if msg is not None:
        for f in msg:
            decl = fields.get(f.name)
            if decl is None:
                raise NetError(f"{f.loc}: {label}: unknown param '{f.name}' in {block}"
                               f"{did_you_mean(f.name, fields)}")
            v = decl.convert(f, label)
            if decl.repeated:
                values.setdefault(f.name, []).append(v)
            else:
                values[f.name] = v  # protobuf: the last one wins
            given.add(f.name)
    for name, decl in fields.items():
        if name in values:
            continue
        if decl.default is REQUIRED:
            where = f"{msg.loc}: " if msg is not None else ""
            raise NetError(f"{where}{label}: missing required param '{name}' in {block}")
        if decl.repeated:
            values[name] = list(decl.default or [])
        elif isinstance(decl.kind, Params):
            values[name] = decl.kind.parse(None, label) if decl.default is None else decl.default
        else:
            values[name] = decl.default
    return Values(values, given)


# Caffe's FillerParameter and BlobShape, shared by many layers.
FILLER = Params("filler", type=P(str, "constant"), value=P(float, 0.0), min=P(float, 0.0), max=P(float, 1.0),
                mean=P(float, 0.0), std=P(float, 1.0), sparse=P(int, -1),
                variance_norm=P(("FAN_IN", "FAN_OUT", "AVERAGE"), "FAN_IN"))
BLOB_SHAPE = Params("shape", dim=P(int, repeated=True))


class Layer(nn.Module):
    """Base of every layer. Subclasses set the class attributes below and override `setup` and `forward`.

    Class attributes:
      params      the param block(s) the layer reads (Params), validated at build.
      num_bottoms exact count, or (min, max) with max None for unbounded.
      num_tops    likewise.
      is_loss     top 0 gets loss_weight 1 unless the prototxt says otherwise.
      is_input    the Net feeds this layer's tops from forward(**inputs) instead of calling it.
      is_source   reads data on the CPU ahead of the network (nets/source.py): index layers (no bottoms,
                  stateful: get_state()/set_state()) in the main process, readers in worker processes.
    Instance attributes after construction: name, type, phase ("TRAIN"/"TEST"), where (for messages),
    p (parsed params), param_str (python_param's string, for Python layers), blob_names (Caffe order).
    """

    params: Params = Params()
    num_bottoms: int | tuple[int, int | None] = 1
    num_tops: int | tuple[int, int | None] = 1
    is_loss: bool = False
    is_input: bool = False
    is_source: bool = False

    def __init__(self, spec: LayerSpec, bottom_shapes: Sequence[Shape] = (), phase: str = "TRAIN",
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
        self.p, self.p_blocks = self.params.parse_blocks(spec.blocks, self.label, self.where)
        self.setup([tuple(s) for s in bottom_shapes])

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
        t = torch.empty(tuple(int(s) for s in shape))
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
        with torch.no_grad():
            tops = functional_call(self, state, tuple(bottoms))
        return [tuple(t.shape) for t in as_tuple(tops)]

    def _check_count(self, what: str, n: int, rule) -> None:
        lo, hi = (rule, rule) if isinstance(rule, int) else rule
        if n < lo or (hi is not None and n > hi):
            want = f"{lo}" if lo == hi else (f"at least {lo}" if hi is None else f"{lo} to {hi}")
            raise self.error(f"takes {want} {what}(s), got {n}")


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
