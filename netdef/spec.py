"""From a parsed Message tree to plain NetDef / LayerDef dataclasses (no torch, no layers).

Handles what Caffe's NetParameter/LayerParameter define for every layer: name, type, bottom, top,
loss_weight, param {name lr_mult decay_mult}, propagate_down, include/exclude rules (phase, level, stage),
net-level `input`/`input_shape`/`input_dim` (turned into an Input layer, as Caffe's upgrade does), and the
legacy V1 `layers { type: CONVOLUTION blobs_lr: 1 }` form. Layer-specific `*_param` blocks are passed
through untouched for the layer to validate.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from netdef.errors import NetError
from netdef.params import as_bool, as_enum, as_float, as_int, as_message, as_str, check_fields, did_you_mean, \
    field_error
from netdef.text_format import Field, Ident, Loc, Message, parse, parse_file

__all__ = ["ParamSpec", "LayerDef", "NetDef", "NetState", "PHASES", "net_def", "layer_def", "load_net_def"]

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
class LayerDef:
    name: str
    type: str
    bottoms: list[str] = field(default_factory=list)
    tops: list[str] = field(default_factory=list)
    blocks: dict[str, Message] = field(default_factory=dict)   # "convolution_param" -> its Message
    param_specs: list[ParamSpec] = field(default_factory=list)
    loss_weights: list[float] = field(default_factory=list)
    propagate_down: list[bool] = field(default_factory=list)
    loc: Loc = Loc("<none>", 0, 0)
    message: Message | None = None      # the layer { } block as parsed

    @property
    def label(self) -> str:
        return f"layer '{self.name}' ({self.type})"

    @property
    def where(self) -> str:
        """Prefix for error messages: FILE:LINE:COL: layer 'name' (Type)."""
        return f"{self.loc}: {self.label}"


@dataclass
class NetDef:
    name: str = ""
    layers: list[LayerDef] = field(default_factory=list)
    state: NetState = field(default_factory=NetState)
    force_backward: bool = False
    filename: str = "<string>"


# ---- rules -------------------------------------------------------------------------------------------------

def _rule_met(rule: Message, state: NetState) -> bool:
    """Caffe's Net::StateMeetsRule."""
    check_fields(rule, ("phase", "min_level", "max_level", "stage", "not_stage"), "include/exclude rule")
    for f in rule:
        if f.name == "phase" and as_enum(f, PHASES) != state.phase:
            return False
        if f.name == "min_level" and state.level < as_int(f):
            return False
        if f.name == "max_level" and state.level > as_int(f):
            return False
        if f.name == "stage" and as_str(f) not in state.stages:
            return False
        if f.name == "not_stage" and as_str(f) in state.stages:
            return False
    return True


def _included(layer: Message, state: NetState) -> bool:
    includes = [as_message(f) for f in layer.all("include")]
    excludes = [as_message(f) for f in layer.all("exclude")]
    if includes and excludes:
        raise field_error(layer, "a layer may have include rules or exclude rules, not both")
    if includes:
        return any(_rule_met(r, state) for r in includes)
    return not any(_rule_met(r, state) for r in excludes)


# ---- layers ------------------------------------------------------------------------------------------------

def layer_def(msg: Message, v1: bool = False, loc: Loc | None = None) -> LayerDef:
    """`loc`: where the layer's key (`layer {`) stands; defaults to its opening brace."""
    loc = loc or msg.loc
    allowed = V1_LAYER_FIELDS if v1 else LAYER_FIELDS
    for f in msg:
        if f.name not in allowed and not f.name.endswith("_param"):
            raise field_error(f, f"unknown layer field '{f.name}'{did_you_mean(f.name, allowed)}")
    name_f, type_f = msg.first("name"), msg.first("type")
    name = as_str(msg.all("name")[-1]) if name_f else ""
    if type_f is None:
        raise field_error(loc, f"layer '{name}' has no type")
    type_f = msg.all("type")[-1]
    if v1:
        raw = str(type_f.value)
        if isinstance(type_f.value, Ident):
            if raw not in V1_TYPES:
                raise field_error(type_f, f"unknown V1 layer type {raw}{did_you_mean(raw, V1_TYPES)}")
            ltype = V1_TYPES[raw]
        else:
            ltype = as_str(type_f)
    else:
        ltype = as_str(type_f)
    if not name:
        name = f"{ltype.lower()}_{loc.line}"
    spec = LayerDef(name=name, type=ltype, loc=loc, message=msg)
    spec.bottoms = [_blob_name(f) for f in msg.all("bottom")]
    spec.tops = [_blob_name(f) for f in msg.all("top")]
    spec.loss_weights = [as_float(f) for f in msg.all("loss_weight")]
    spec.propagate_down = [as_bool(f) for f in msg.all("propagate_down")]
    if msg.all("blobs"):
        raise field_error(msg.first("blobs"), "embedded 'blobs' are not supported; load weights with --weights")
    if v1:
        names = [f for f in msg.all("param")]
        lrs = [as_float(f) for f in msg.all("blobs_lr")]
        decays = [as_float(f) for f in msg.all("weight_decay")]
        for i in range(max(len(names), len(lrs), len(decays))):
            spec.param_specs.append(ParamSpec(
                name=as_str(names[i]) if i < len(names) else "",
                lr_mult=lrs[i] if i < len(lrs) else 1.0,
                decay_mult=decays[i] if i < len(decays) else 1.0))
    else:
        for f in msg.all("param"):
            pm = as_message(f)
            check_fields(pm, ("name", "lr_mult", "decay_mult", "share_mode"), "param")
            ps = ParamSpec()
            for g in pm:
                if g.name == "name":
                    ps.name = as_str(g)
                elif g.name == "lr_mult":
                    ps.lr_mult = as_float(g)
                elif g.name == "decay_mult":
                    ps.decay_mult = as_float(g)
            spec.param_specs.append(ps)
    for f in msg:
        if f.name.endswith("_param"):
            if f.name in spec.blocks:
                raise field_error(f, f"'{f.name}' given twice in layer '{name}'")
            spec.blocks[f.name] = as_message(f)
    return spec


def _blob_name(f: Field) -> str:
    name = as_str(f)
    if not name:
        raise field_error(f, f"'{f.name}' needs a non-empty blob name")
    return name


def _input_layers(msg: Message) -> list[LayerDef]:
    """Net-level `input` with `input_shape` or 4 x `input_dim` -> Input layers (Caffe's upgrade)."""
    inputs = msg.all("input")
    shapes = [as_message(f) for f in msg.all("input_shape")]
    dims = [as_int(f) for f in msg.all("input_dim")]
    if not inputs:
        if shapes or dims:
            raise field_error((msg.first("input_shape") or msg.first("input_dim")), "input shape given without 'input'")
        return []
    if shapes and dims:
        raise field_error(msg.first("input_dim"), "use input_shape or input_dim, not both")
    if dims:
        if len(dims) != 4 * len(inputs):
            raise field_error(msg.first("input_dim"), f"{len(inputs)} input(s) need {4 * len(inputs)} input_dim "
                                                     f"values, found {len(dims)}")
        shapes = [Message([Field("dim", d) for d in dims[4 * i:4 * i + 4]]) for i in range(len(inputs))]
    if len(shapes) != len(inputs):
        raise field_error(inputs[0], f"{len(inputs)} input(s) but {len(shapes)} input_shape(s)")
    out = []
    for f, shape in zip(inputs, shapes):
        name = _blob_name(f)
        pm = Message([Field("shape", shape, f.loc)], f.loc)
        out.append(LayerDef(name=name, type="Input", tops=[name], blocks={"input_param": pm}, loc=f.loc))
    return out


def net_def(msg: Message, phase: str = "TRAIN", stages=(), level: int = 0, filename: str = "<string>") -> NetDef:
    """Apply the net state (phase/level/stages) and return the ordered layers that remain."""
    if phase not in PHASES:
        raise NetError(f"phase must be TRAIN or TEST, got {phase!r}")
    check_fields(msg, NET_FIELDS, "net")
    stage_list = list(stages)
    state_f = msg.first("state")
    if state_f is not None:
        sm = as_message(state_f)
        check_fields(sm, ("phase", "level", "stage"), "net state")
        stage_list += [as_str(f) for f in sm.all("stage")]
        if sm.first("level") is not None and level == 0:
            level = as_int(sm.all("level")[-1])
    spec = NetDef(name=as_str(msg.all("name")[-1]) if msg.first("name") else "", filename=filename,
                   state=NetState(phase, level, tuple(stage_list)))
    fb = msg.first("force_backward")
    spec.force_backward = as_bool(fb) if fb else False
    spec.layers.extend(_input_layers(msg))
    if msg.first("layer") and msg.first("layers"):
        raise field_error(msg.first("layers"), "mixes V1 'layers' and V2 'layer' blocks")
    for f in msg:
        if f.name in ("layer", "layers"):
            lm = as_message(f)
            if _included(lm, spec.state):
                spec.layers.append(layer_def(lm, v1=f.name == "layers", loc=f.loc))
    return spec


def load_net_def(definition, phase: str = "TRAIN", stages=(), level: int = 0) -> NetDef:
    """`definition`: a path to a prototxt file, prototxt text, an already parsed Message or a NetDef."""
    if isinstance(definition, NetDef):
        return definition
    if isinstance(definition, Message):
        return net_def(definition, phase, stages, level)
    text_like = isinstance(definition, str) and ("{" in definition or "\n" in definition)
    if isinstance(definition, os.PathLike) or not text_like:
        path = os.fspath(definition)
        return net_def(parse_file(path), phase, stages, level, filename=path)
    return net_def(parse(definition, "<string>"), phase, stages, level)
