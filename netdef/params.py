"""The one param schema: declarations, converters and did-you-mean, for layers AND the solver (no torch).

A schema is a `Params` of `Param` declarations, one per field of a protobuf message:

    CONV = Params("convolution_param", num_output=Param(int, REQUIRED), bias_term=Param(bool, True),
                  weight_filler=Param(FILLER))
    values = CONV.parse(message, label="layer 'conv1' (Convolution)")
    values.num_output, values.has("bias_term"), values.loc("num_output")

Messages name the place: 'FILE:LINE:COL: <label>: unknown param 'kernal_size' in convolution_param (did you
mean kernel_size?)'. The scalar converters (`as_int`, `as_float`, ...) turn one parsed Field into a Python
value, or raise a NetError naming the field's location.
"""

from __future__ import annotations

import difflib
import warnings
from typing import Any

from netdef.errors import NetError, NetNote
from netdef.text_format import Field, Ident, Loc, Message

__all__ = ["Param", "Params", "Values", "REQUIRED", "FILLER", "BLOB_SHAPE", "CAFFE_PARAM_BLOCKS", "did_you_mean", "show", "field_error",
           "as_str", "as_float", "as_int", "as_bool", "as_enum", "as_message", "check_fields"]


def did_you_mean(name: str, choices) -> str:
    """' (did you mean X?)' for the closest choice, or ''."""
    by_lower = {str(c).lower(): str(c) for c in choices}
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=1, cutoff=0.6)
    return f" (did you mean {by_lower[close[0]]}?)" if close else ""


def show(v) -> str:
    """A value as the prototxt would write it: MAX, "text", 3, { ... }."""
    if isinstance(v, Ident):
        return str(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, Message):
        return "{ ... }"
    return repr(v)


def field_error(where: Field | Message | Loc, msg: str) -> NetError:
    """A NetError 'FILE:LINE:COL: msg' at a field, a message or a location."""
    loc = where if isinstance(where, Loc) else where.loc
    return NetError(f"{loc}: {msg}")


# ---- scalar converters (messages name the place) ---------------------------------------------------------------

def as_str(f: Field) -> str:
    if isinstance(f.value, str) and not isinstance(f.value, Ident):
        return str(f.value)
    raise field_error(f, f"'{f.name}' expects a quoted string, found {show(f.value)}")


def as_float(f: Field) -> float:
    if isinstance(f.value, (int, float)) and not isinstance(f.value, bool):
        return float(f.value)
    raise field_error(f, f"'{f.name}' expects a number, found {show(f.value)}")


def as_int(f: Field) -> int:
    if isinstance(f.value, int):
        return f.value
    raise field_error(f, f"'{f.name}' expects an integer, found {show(f.value)}")


def as_bool(f: Field) -> bool:
    v = f.value
    if isinstance(v, Ident) and v in ("true", "True", "t"):
        return True
    if isinstance(v, Ident) and v in ("false", "False", "f"):
        return False
    if isinstance(v, int) and v in (0, 1):
        return bool(v)
    raise field_error(f, f"'{f.name}' expects true or false, found {show(v)}")


def as_enum(f: Field, choices: tuple[str, ...]) -> str:
    v = f.value
    if isinstance(v, Ident) and v in choices:
        return str(v)
    if isinstance(v, int) and 0 <= v < len(choices):
        return choices[v]
    raise field_error(f, f"'{f.name}' expects one of {', '.join(choices)}, found {show(v)}"
                         f"{did_you_mean(str(v), choices)}")


def as_message(f: Field) -> Message:
    if isinstance(f.value, Message):
        return f.value
    raise field_error(f, f"'{f.name}' expects a {{ }} block, found {show(f.value)}")


def check_fields(msg: Message, allowed, what: str) -> None:
    """Refuse a field of `msg` whose name is not in `allowed` ('unknown field ... in <what>')."""
    for f in msg:
        if f.name not in allowed:
            raise field_error(f, f"unknown field '{f.name}' in {what}{did_you_mean(f.name, allowed)}")


_SCALARS = {int: as_int, float: as_float, bool: as_bool, str: as_str}


# ---- declarations ----------------------------------------------------------------------------------------------

class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED = _Required()


class Param:
    """One declared field: its kind, default and whether it repeats.

    kind: int, float, bool, str, a tuple of enum names (in protobuf number order), a Params schema for a
    nested message (e.g. FILLER), or Message for a nested block kept as parsed (checked by whoever reads it).
    A repeated field's value is a list (default: empty list). default REQUIRED: the field must be given.
    """

    def __init__(self, kind, default: Any = None, *, repeated: bool = False):
        self.kind, self.default, self.repeated = kind, default, repeated

    def convert(self, f: Field, label: str = ""):
        """The field's value as this kind; errors read 'FILE:LINE:COL: <label>: ...' ('FILE:LINE:COL: ...'
        without a label)."""
        k = self.kind
        if isinstance(k, Params):
            if not isinstance(f.value, Message):
                raise field_error(f, f"{label}: " * bool(label) +
                                  f"'{f.name}' expects a {{ }} block, found {show(f.value)}")
            return k.parse(f.value, label)
        try:
            if k is Message:
                return as_message(f)
            conv = _SCALARS.get(k)
            return conv(f) if conv else as_enum(f, k)
        except NetError as e:
            if not label:
                raise
            # the converters say 'LOC: msg'; put the label between the two
            raise NetError(f"{f.loc}: {label}: {str(e)[len(str(f.loc)) + 2:]}") from None


class Values:
    """Parsed values: attribute access, plus which names were set explicitly (Caffe's has_xxx()) and where."""

    def __init__(self, values: dict[str, Any], locs: dict[str, Loc]):
        self.__dict__.update(values)
        self.locs = locs   # name -> Loc of its last occurrence, for names given explicitly

    @property
    def given(self) -> set[str]:
        return set(self.locs)

    def has(self, name: str) -> bool:
        return name in self.locs

    def loc(self, name: str) -> Loc | None:
        return self.locs.get(name)

    def __repr__(self) -> str:
        return "Values(" + ", ".join(f"{k}={v!r}" for k, v in self.__dict__.items() if k != "locs") + ")"


class Params:
    """A param block declaration: Params("convolution_param", num_output=Param(int, REQUIRED), ...).

    Combine blocks with `+` for layers that read several (e.g. loss_param + softmax_param).
    """

    def __init__(self, block: str | None = None, **fields: Param):
        self.blocks: dict[str, dict[str, Param]] = {block: dict(fields)} if block else {}

    def __add__(self, other: "Params") -> "Params":
        out = Params()
        out.blocks = {**self.blocks, **other.blocks}
        return out

    def fields(self) -> dict[str, Param]:
        """Nested use (a message-typed field): the single block's fields."""
        return next(iter(self.blocks.values())) if self.blocks else {}

    def parse(self, msg: Message | None, label: str = "", what: str | None = None, noun: str = "param") -> Values:
        """Parse one message against this (single-block) schema. `what` names it in messages (default: the
        block name); `noun` is what its fields are called there ("unknown field 'x' in solver")."""
        return _parse_fields(self.fields(), msg, label, what or next(iter(self.blocks), "block"), noun)

    def parse_blocks(self, blocks: dict[str, Message], label: str, where: str = "") -> tuple[Values, dict[str, Values]]:
        """Every block a layer reads: (all fields merged, each block's own Values).

        A block the layer does not read is ignored with a NetNote when it is a real field of caffe.proto's
        LayerParameter (Caffe parses every such block and each layer reads its own), and refused otherwise."""
        for name, msg in blocks.items():
            if name in self.blocks:
                continue
            takes = ", ".join(self.blocks) or "no param block"
            if name in CAFFE_PARAM_BLOCKS:
                warnings.warn(f"{msg.loc}: {label}: ignores {name} (this layer takes {takes}; Caffe ignores it "
                              f"too)", NetNote, stacklevel=2)
                continue
            hint = did_you_mean(name, self.blocks) or did_you_mean(name, CAFFE_PARAM_BLOCKS)
            raise NetError(f"{msg.loc}: {label}: unknown param block '{name}' (this layer takes {takes}){hint}")
        blocks = {name: msg for name, msg in blocks.items() if name in self.blocks}
        merged: dict[str, Any] = {}
        locs: dict[str, Loc] = {}
        per_block = {}
        for name, fields in self.blocks.items():
            required = [k for k, d in fields.items() if d.default is REQUIRED]
            if name not in blocks and required:
                raise NetError(f"{where or label}: missing {name} {{ {required[0]}: ... }}")
            vals = _parse_fields(fields, blocks.get(name), label, name)
            per_block[name] = vals
            merged.update({k: getattr(vals, k) for k in fields})
            locs.update(vals.locs)
        return Values(merged, locs), per_block


def _parse_fields(fields: dict[str, Param], msg: Message | None, label: str, block: str,
                  noun: str = "param") -> Values:
    values: dict[str, Any] = {}
    locs: dict[str, Loc] = {}
    prefix = f"{label}: " if label else ""
    if msg is not None:
        for f in msg:
            decl = fields.get(f.name)
            if decl is None:
                raise NetError(f"{f.loc}: {prefix}unknown {noun} '{f.name}' in {block}"
                               f"{did_you_mean(f.name, fields)}")
            v = decl.convert(f, label)
            if decl.repeated:
                values.setdefault(f.name, []).append(v)
            else:
                values[f.name] = v  # protobuf: the last one wins
            locs[f.name] = f.loc
    for name, decl in fields.items():
        if name in values:
            continue
        if decl.default is REQUIRED:
            where = f"{msg.loc}: " if msg is not None else ""
            raise NetError(f"{where}{prefix}missing required {noun} '{name}' in {block}")
        if decl.repeated:
            values[name] = list(decl.default or [])
        elif isinstance(decl.kind, Params):
            values[name] = decl.kind.parse(None, label) if decl.default is None else decl.default
        else:
            values[name] = decl.default
    return Values(values, locs)


# The *_param fields of BVLC caffe.proto's LayerParameter (master), and V1LayerParameter's: a layer given one it
# does not read ignores it, as Caffe does; any other name is a typo or a fork's block for another layer type.
CAFFE_PARAM_BLOCKS = frozenset("""
    transform_param loss_param accuracy_param argmax_param batch_norm_param bias_param clip_param concat_param
    contrastive_loss_param convolution_param crop_param data_param dropout_param dummy_data_param eltwise_param
    elu_param embed_param exp_param flatten_param hdf5_data_param hdf5_output_param hinge_loss_param
    image_data_param infogain_loss_param inner_product_param input_param log_param lrn_param memory_data_param
    mvn_param parameter_param pooling_param power_param prelu_param python_param recurrent_param reduction_param
    relu_param reshape_param scale_param sigmoid_param softmax_param spp_param slice_param swish_param tanh_param
    threshold_param tile_param window_data_param""".split())

# Caffe's FillerParameter and BlobShape, shared by many layers.
FILLER = Params("filler", type=Param(str, "constant"), value=Param(float, 0.0), min=Param(float, 0.0),
                max=Param(float, 1.0), mean=Param(float, 0.0), std=Param(float, 1.0), sparse=Param(int, -1),
                variance_norm=Param(("FAN_IN", "FAN_OUT", "AVERAGE"), "FAN_IN"))
BLOB_SHAPE = Params("shape", dim=Param(int, repeated=True))
