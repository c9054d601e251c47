"""From a parsed Message tree to plain NetSpec / LayerSpec dataclasses (no torch, no layers).

Handles what Caffe's NetParameter/LayerParameter define for every layer: name, type, bottom, top,
loss_weight, param {name lr_mult decay_mult}, propagate_down, include/exclude rules (phase, level, stage),
net-level `input`/`input_shape`/`input_dim` (turned into an Input layer, as Caffe's upgrade does), and the
legacy V1 `layers { type: CONVOLUTION blobs_lr: 1 }` form. Layer-specific `*_param` blocks are passed
through untouched for the layer to validate.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field

from nets.errors import NetError
from nets.text_format import Field, Ident, Loc, Message, parse, parse_file

__all__ = ["ParamSpec", "LayerSpec", "NetSpec", "NetState", "net_spec", "load_net_spec", "did_you_mean"]

PHASES = ("TRAIN", "TEST")

# Caffe's UpgradeV1LayerType.
V1_TYPES = {
    "ABSVAL": "AbsVal", "ACCURACY": "Accuracy", "ARGMAX": "ArgMax", "BNLL": "BNLL", "CONCAT": "Concat",
    "CONTRASTIVE_LOSS": "ContrastiveLoss", "CONVOLUTION": "Convolution", "DECONVOLUTION": "Deconvolution",
    "DATA": "Data", "DROPOUT": "Dropout", "DUMMY_DATA": "DummyData", "EUCLIDEAN_LOSS": "EuclideanLoss",
    "ELTWISE": "Eltwise", "EXP": "Exp", "FLATTEN": "Flatten", "HDF5_DATA": "HDF5Data",
    "HDF5_OUTPUT": "HDF5Output", "HINGE_LOSS": "HingeLoss", "IM2COL": "Im2col", "IMAGE_DATA": "ImageData",
    "INFOGAIN_LOSS": "InfogainLoss", "INNER_PRODUCT": "InnerProduct", "LRN": "LRN",
    "MEMORY_DATA": "MemoryData", "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss", "MVN": "MVN",
    "POOLING": "Pooling", "POWER": "Power", "RELU": "ReLU", "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss", "SILENCE": "Silence", "SOFTMAX": "Softmax",
    "SOFTMAX_LOSS": "SoftmaxWithLoss", "SPLIT": "Split", "SLICE": "Slice", "TANH": "TanH",
    "WINDOW_DATA": "WindowData", "THRESHOLD": "Threshold",
}

LAYER_FIELDS = ("name", "type", "bottom", "top", "phase", "loss_weight", "param", "blobs", "propagate_down",
                "include", "exclude")
V1_LAYER_FIELDS = LAYER_FIELDS + ("blobs_lr", "weight_decay")
NET_FIELDS = ("name", "input", "input_shape", "input_dim", "force_backward", "state", "debug_info", "layer",
              "layers")


def did_you_mean(name: str, choices) -> str:
    """' (did you mean X?)' for the closest choice, or ''."""
    by_lower = {str(c).lower(): str(c) for c in choices}
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=1, cutoff=0.6)
    return f" (did you mean {by_lower[close[0]]}?)" if close else ""


@dataclass
class ParamSpec:
    """One `param { }` entry: sharing name and learning-rate / weight-decay multipliers."""
    name: str = ""
    lr_mult: float = 1.0
    decay_mult: float = 1.0


@dataclass
class NetState:
    phase: str = "TRAIN"
    level: int = 0
    stages: tuple[str, ...] = ()


@dataclass
class LayerSpec:
    name: str
    type: str
    bottoms: list[str] = field(default_factory=list)
    tops: list[str] = field(default_factory=list)
    blocks: dict[str, Message] = field(default_factory=dict)   # "convolution_param" -> its Message
    param_specs: list[ParamSpec] = field(default_factory=list)
    loss_weights: list[float] = field(default_factory=list)
    propagate_down: list[bool] = field(default_factory=list)
    loc: Loc = Loc("<none>", 0, 0)
    source: Message | None = None

    @property
    def label(self) -> str:
        return f"layer '{self.name}' ({self.type})"

    @property
    def where(self) -> str:
        """Prefix for error messages: FILE:LINE:COL: layer 'name' (Type)."""
        return f"{self.loc}: {self.label}"


@dataclass
class NetSpec:
    name: str = ""
    layers: list[LayerSpec] = field(default_factory=list)
    state: NetState = field(default_factory=NetState)
    force_backward: bool = False
    filename: str = "<string>"


# ---- scalar helpers (messages name the place) ------------------------------------------------------------

def show(v) -> str:
    """A value as the prototxt would write it: MAX, "text", 3, { ... }."""
    if isinstance(v, Ident):
        return str(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, Message):
        return "{ ... }"
    return repr(v)


def _err(f: Field | Message | Loc, msg: str) -> NetError:
    loc = f if isinstance(f, Loc) else f.loc
    return NetError(f"{loc}: {msg}")


def _as_str(f: Field) -> str:
    if isinstance(f.value, str) and not isinstance(f.value, Ident):
        return str(f.value)
    raise _err(f, f"'{f.name}' expects a quoted string, found {show(f.value)}")


def _as_float(f: Field) -> float:
    if isinstance(f.value, (int, float)) and not isinstance(f.value, bool):
        return float(f.value)
    raise _err(f, f"'{f.name}' expects a number, found {show(f.value)}")


def _as_int(f: Field) -> int:
    if isinstance(f.value, int):
        return f.value
    raise _err(f, f"'{f.name}' expects an integer, found {show(f.value)}")


def _as_bool(f: Field) -> bool:
    v = f.value
    if isinstance(v, Ident) and v in ("true", "True", "t"):
        return True
    if isinstance(v, Ident) and v in ("false", "False", "f"):
        return False
    if isinstance(v, int) and v in (0, 1):
        return bool(v)
    raise _err(f, f"'{f.name}' expects true or false, found {show(v)}")


def _as_enum(f: Field, choices: tuple[str, ...]) -> str:
    v = f.value
    if isinstance(v, Ident) and v in choices:
        return str(v)
    if isinstance(v, int) and 0 <= v < len(choices):
        return choices[v]
    raise _err(f, f"'{f.name}' expects one of {', '.join(choices)}, found {show(v)}{did_you_mean(str(v), choices)}")


def _as_msg(f: Field) -> Message:
    if isinstance(f.value, Message):
        return f.value
    raise _err(f, f"'{f.name}' expects a {{ }} block, found {show(f.value)}")


def _check_fields(msg: Message, allowed, what: str) -> None:
    for f in msg:
        if f.name not in allowed:
            raise _err(f, f"unknown field '{f.name}' in {what}{did_you_mean(f.name, allowed)}")


# ---- rules -------------------------------------------------------------------------------------------------

def _rule_met(rule: Message, state: NetState) -> bool:
    """Caffe's Net::StateMeetsRule."""
    _check_fields(rule, ("phase", "min_level", "max_level", "stage", "not_stage"), "include/exclude rule")
    for f in rule:
        if f.name == "phase" and _as_enum(f, PHASES) != state.phase:
            return False
        if f.name == "min_level" and state.level < _as_int(f):
            return False
        if f.name == "max_level" and state.level > _as_int(f):
            return False
        if f.name == "stage" and _as_str(f) not in state.stages:
            return False
        if f.name == "not_stage" and _as_str(f) in state.stages:
            return False
    return True


def _included(layer: Message, state: NetState) -> bool:
    includes = [_as_msg(f) for f in layer.all("include")]
    excludes = [_as_msg(f) for f in layer.all("exclude")]
    if includes and excludes:
        raise _err(layer, "a layer may have include rules or exclude rules, not both")
    if includes:
        return any(_rule_met(r, state) for r in includes)
    return not any(_rule_met(r, state) for r in excludes)


# ---- layers ------------------------------------------------------------------------------------------------

def _layer_spec(msg: Message, v1: bool, loc: Loc | None = None) -> LayerSpec:
    """`loc`: where the layer's key (`layer {`) stands; defaults to its opening brace."""
    loc = loc or msg.loc
    allowed = V1_LAYER_FIELDS if v1 else LAYER_FIELDS
    for f in msg:
        if f.name not in allowed and not f.name.endswith("_param"):
            raise _err(f, f"unknown layer field '{f.name}'{did_you_mean(f.name, allowed)}")
    name_f, type_f = msg.first("name"), msg.first("type")
    name = _as_str(msg.all("name")[-1]) if name_f else ""
    if type_f is None:
        raise _err(loc, f"layer '{name}' has no type")
    type_f = msg.all("type")[-1]
    if v1:
        raw = str(type_f.value)
        if isinstance(type_f.value, Ident):
            if raw not in V1_TYPES:
                raise _err(type_f, f"unknown V1 layer type {raw}{did_you_mean(raw, V1_TYPES)}")
            ltype = V1_TYPES[raw]
        else:
            ltype = _as_str(type_f)
    else:
        ltype = _as_str(type_f)
    if not name:
        name = f"{ltype.lower()}_{loc.line}"
    spec = LayerSpec(name=name, type=ltype, loc=loc, source=msg)
    spec.bottoms = [_blob_name(f) for f in msg.all("bottom")]
    spec.tops = [_blob_name(f) for f in msg.all("top")]
    spec.loss_weights = [_as_float(f) for f in msg.all("loss_weight")]
    spec.propagate_down = [_as_bool(f) for f in msg.all("propagate_down")]
    if msg.all("blobs"):
        raise _err(msg.first("blobs"), "embedded 'blobs' are not supported; load weights with --weights")
    if v1:
        names = [f for f in msg.all("param")]
        lrs = [_as_float(f) for f in msg.all("blobs_lr")]
        decays = [_as_float(f) for f in msg.all("weight_decay")]
        for i in range(max(len(names), len(lrs), len(decays))):
            spec.param_specs.append(ParamSpec(
                name=_as_str(names[i]) if i < len(names) else "",
                lr_mult=lrs[i] if i < len(lrs) else 1.0,
                decay_mult=decays[i] if i < len(decays) else 1.0))
    else:
        for f in msg.all("param"):
            pm = _as_msg(f)
            _check_fields(pm, ("name", "lr_mult", "decay_mult", "share_mode"), "param")
            ps = ParamSpec()
            for g in pm:
                if g.name == "name":
                    ps.name = _as_str(g)
                elif g.name == "lr_mult":
                    ps.lr_mult = _as_float(g)
                elif g.name == "decay_mult":
                    ps.decay_mult = _as_float(g)
            spec.param_specs.append(ps)
    for f in msg:
        if f.name.endswith("_param"):
            if f.name in spec.blocks:
                raise _err(f, f"'{f.name}' given twice in layer '{name}'")
            spec.blocks[f.name] = _as_msg(f)
    return spec


def _blob_name(f: Field) -> str:
    name = _as_str(f)
    if not name:
        raise _err(f, f"'{f.name}' needs a non-empty blob name")
    return name


def _input_layers(msg: Message) -> list[LayerSpec]:
    """Net-level `input` with `input_shape` or 4 x `input_dim` -> Input layers (Caffe's upgrade)."""
    inputs = msg.all("input")
    shapes = [_as_msg(f) for f in msg.all("input_shape")]
    dims = [_as_int(f) for f in msg.all("input_dim")]
    if not inputs:
        if shapes or dims:
            raise _err((msg.first("input_shape") or msg.first("input_dim")), "input shape given without 'input'")
        return []
    if shapes and dims:
        raise _err(msg.first("input_dim"), "use input_shape or input_dim, not both")
    if dims:
        if len(dims) != 4 * len(inputs):
            raise _err(msg.first("input_dim"), f"{len(inputs)} input(s) need {4 * len(inputs)} input_dim values, "
                                               f"found {len(dims)}")
        shapes = [Message([Field("dim", d) for d in dims[4 * i:4 * i + 4]]) for i in range(len(inputs))]
    if len(shapes) != len(inputs):
        raise _err(inputs[0], f"{len(inputs)} input(s) but {len(shapes)} input_shape(s)")
    out = []
    for f, shape in zip(inputs, shapes):
        name = _blob_name(f)
        pm = Message([Field("shape", shape, f.loc)], f.loc)
        out.append(LayerSpec(name=name, type="Input", tops=[name], blocks={"input_param": pm}, loc=f.loc))
    return out


def net_spec(msg: Message, phase: str = "TRAIN", stages=(), level: int = 0, filename: str = "<string>") -> NetSpec:
    """Apply the net state (phase/level/stages) and return the ordered layers that remain."""
    if phase not in PHASES:
        raise NetError(f"phase must be TRAIN or TEST, got {phase!r}")
    _check_fields(msg, NET_FIELDS, "net")
    stage_list = list(stages)
    state_f = msg.first("state")
    if state_f is not None:
        sm = _as_msg(state_f)
        _check_fields(sm, ("phase", "level", "stage"), "net state")
        stage_list += [_as_str(f) for f in sm.all("stage")]
        if sm.first("level") is not None and level == 0:
            level = _as_int(sm.all("level")[-1])
    spec = NetSpec(name=_as_str(msg.all("name")[-1]) if msg.first("name") else "", filename=filename,
                   state=NetState(phase, level, tuple(stage_list)))
    fb = msg.first("force_backward")
    spec.force_backward = _as_bool(fb) if fb else False
    spec.layers.extend(_input_layers(msg))
    if msg.first("layer") and msg.first("layers"):
        raise _err(msg.first("layers"), "mixes V1 'layers' and V2 'layer' blocks")
    for f in msg:
        if f.name in ("layer", "layers"):
            lm = _as_msg(f)
            if _included(lm, spec.state):
                spec.layers.append(_layer_spec(lm, v1=f.name == "layers", loc=f.loc))
    return spec


def load_net_spec(source, phase: str = "TRAIN", stages=(), level: int = 0) -> NetSpec:
    """`source`: a path to a prototxt file, prototxt text, or an already parsed Message."""
    if isinstance(source, NetSpec):
        return source
    if isinstance(source, Message):
        return net_spec(source, phase, stages, level)
    text_like = isinstance(source, str) and ("{" in source or "\n" in source)
    if isinstance(source, os.PathLike) or not text_like:
        path = os.fspath(source)
        return net_spec(parse_file(path), phase, stages, level, filename=path)
    return net_spec(parse(source, "<string>"), phase, stages, level)
