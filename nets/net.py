"""Net: an nn.Module built in order from a net definition's layers (Caffe's Net).

    net = Net("prototxt/lenet.prototxt", phase="TEST")
    outputs = net.forward(data=images)      # dict of output blobs (blobs no layer consumes)
    net.blobs["conv1"], net.params["conv1"], net.loss

Build checks, each a NetError naming the layer and its file:line:col: unknown layer type or param, unknown
bottom, a blob with two producers, a bottom produced only later (a cycle), a shape the layer cannot take.

Over 400 lines as one cohesive thing: building the run plan and running it share the Step records.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from layers.base import Layer, Shape, SourceLayer, as_tuple
from layers.caffe.normalization import BatchNorm, Scale
from layers.pycaffe import python_layer_class
from layers.registry import get_layer_class
from netdef.errors import NetError, NetWarning
from netdef.params import as_str, did_you_mean
from netdef.spec import LayerDef, NetDef, load_net_def
from nets.accel import to_channels_last
from nets.source import SourceStage

__all__ = ["Net", "default_device", "fuse_scales"]


def default_device(device=None) -> torch.device:
    """The device asked for, else CUDA when available, else CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise NetError(f"unknown device '{device}': {e}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise NetError(f"device '{device}' was asked for but CUDA is not available")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise NetError(f"device '{device}' does not exist ({torch.cuda.device_count()} CUDA device(s))")
    elif dev.type != "cpu":
        raise NetError(f"unsupported device '{device}' (use cpu or cuda)")
    return dev


# What torch raises for shapes, values and memory a layer cannot take (user errors, not bugs).
_SHAPE_ERRORS = (RuntimeError, ValueError, IndexError, TypeError, ArithmeticError)
_RUN_ERRORS = (RuntimeError, ValueError, IndexError, ArithmeticError)


def _users(layer: Layer) -> bool:
    """Whether the layer's class is a user's (not one of the project's layers)."""
    return not type(layer).__module__.startswith(("layers.", "nets."))


@dataclass
class Step:
    """One layer in the run plan."""
    name: str
    key: str                      # key in Net.layers (module names cannot contain '.')
    definition: LayerDef
    bottoms: list[str]
    tops: list[str]
    loss_weights: list[float]
    propagate: list[bool]
    lr_mults: list[float] = field(default_factory=list)
    decay_mults: list[float] = field(default_factory=list)
    has_blobs: bool = False
    is_source: bool = False       # runs in the source stage (nets/source.py), ahead of the network
    fused_scale: str = ""         # key of the in-place Scale layer this BatchNorm step also runs (fuse_scales)


@dataclass
class ParamInfo:
    """A learnable tensor of the net and its solver multipliers (shared tensors appear once)."""
    layer: str
    index: int
    tensor: torch.Tensor
    lr_mult: float
    decay_mult: float


def fuse_scales(steps: list[tuple[Step, list]], layers) -> list[tuple[Step, list]]:
    """The run plan with each BatchNorm step that is directly followed by an in-place Scale of its top (Caffe's
    BatchNorm + Scale idiom) made one step: BatchNorm.normalize with the Scale's gamma and beta, one ATen
    batch_norm kernel instead of a normalisation, a product and a sum (forward and backward). The blobs, the
    gradients and the BatchNorm statistics are those of the two layers run one after the other (up to rounding);
    the Scale's top was the BatchNorm's top, overwritten in place, so no blob goes missing. Steps are (step,
    weighted tops) pairs as Net._run_steps takes them; BatchNorm tops with a loss weight, a Scale with a second
    bottom, another axis or propagate_down false, and subclasses stay as written."""
    out: list[tuple[Step, list]] = []
    i = 0
    while i < len(steps):
        step, weighted = steps[i]
        nxt = steps[i + 1] if i + 1 < len(steps) else None
        if nxt is not None and _fusable(step, weighted, nxt[0], layers):
            out.append((replace(step, fused_scale=nxt[0].key), nxt[1]))
            i += 2
            continue
        out.append((step, weighted))
        i += 1
    return out


def _fusable(bn: Step, bn_weighted: list, scale: Step, layers) -> bool:
    bn_layer, scale_layer = layers[bn.key], layers[scale.key]
    if type(bn_layer) is not BatchNorm or type(scale_layer) is not Scale or bn_weighted:
        return False
    if len(bn.tops) != 1 or scale.bottoms != bn.tops or scale.tops != scale.bottoms or not all(scale.propagate):
        return False
    gamma = getattr(scale_layer, "gamma", None)
    channels = bn_layer.mean.shape[0]
    return scale_layer.axis == 1 and gamma is not None and tuple(gamma.shape) == (channels,)


class Net(nn.Module):
    def __init__(self, net, phase: str = "TRAIN", stages=(), level: int = 0, device=None,
                 workers: int | None = None):
        """`workers`: processes that read data ahead of the network (default nets.source.default_workers();
        0 reads inline)."""
        super().__init__()
        self.definition: NetDef = load_net_def(net, phase, stages, level)
        if not self.definition.layers:
            which = f"net '{self.definition.name}'" if self.definition.name else "the net"
            raise NetError(f"{self.definition.filename}: {which} has no layers in phase {phase}: nothing to run")
        self.phase = phase
        self.name = self.definition.name
        self.layers = nn.ModuleDict()
        self.plan: list[Step] = []
        self.blob_shapes: dict[str, Shape] = {}
        self.inputs: dict[str, Shape] = {}
        self.blobs: dict[str, torch.Tensor] = {}
        self.loss: torch.Tensor | None = None
        self.param_info: list[ParamInfo] = []
        # follows .double()/.float()/.to(dtype) like a parameter would, also in nets without parameters:
        # source blobs and inputs are cast to it
        self.register_buffer("_dtype_anchor", torch.empty(0), persistent=False)
        self.channels_last = False      # see use_channels_last()
        self._build()
        self.outputs: list[str] = self._find_outputs()
        # the plans the layer loop runs: (step, [(top index, loss weight) of nonzero weight])
        self._network_steps = [(st, [(i, w) for i, w in enumerate(st.loss_weights) if w]) for st in self.plan
                               if not st.is_source and not self.layers[st.key].is_input]
        # per-layer timings run the plan as written; the network itself with BatchNorm + Scale fused
        self._layerwise_steps = self._network_steps
        self._network_steps = fuse_scales(self._network_steps, self.layers)
        self._source_steps = [(st, []) for st in self.plan if st.is_source]
        self.device = default_device(device)
        self.source = None
        if self._source_steps:
            steps = [st for st, _ in self._source_steps]
            self.source = SourceStage(steps, {st.key: self.layers[st.key] for st in steps}, workers,
                                      pin_memory=self.device.type == "cuda")
        self.to(self.device)

    # -- build ---------------------------------------------------------------------------------------------
    def _build(self) -> None:
        producer: dict[str, LayerDef] = {}
        later_producers = {t: ls for ls in reversed(self.definition.layers) for t in ls.tops}
        shared: dict[str, tuple[Step, int, nn.Parameter]] = {}
        named: dict[str, Step] = {}
        source_blobs: set[str] = set()
        for ls in self.definition.layers:
            for b in ls.bottoms:
                if b not in self.blob_shapes:
                    later = later_producers.get(b)
                    if later is not None and later is not ls and later.loc != ls.loc:
                        raise NetError(f"{ls.where}: bottom '{b}' is produced only by a later layer "
                                       f"'{later.name}' at {later.loc} (layers must come in order; cycles "
                                       f"are not allowed)")
                    raise NetError(f"{ls.where}: unknown bottom blob '{b}'{did_you_mean(b, self.blob_shapes)}")
            for t in ls.tops:
                if t in producer and t not in ls.bottoms:
                    raise NetError(f"{ls.where}: top blob '{t}' is already produced by layer "
                                   f"'{producer[t].name}' at {producer[t].loc}")
            layer = self._make_layer(ls)
            bottom_shapes = [self.blob_shapes[b] for b in ls.bottoms]
            top_shapes = self._infer(layer, ls, bottom_shapes)
            step = self._make_step(ls, layer)
            step.is_source = isinstance(layer, SourceLayer) and all(b in source_blobs for b in ls.bottoms)
            if step.is_source:
                source_blobs.update(ls.tops)
            else:
                source_blobs.difference_update(ls.tops)   # an in-place layer on a source blob
            self._share_params(step, layer, shared)
            self._check_name(step, layer, named)
            key = ls.name.replace(".", "_")
            # module names must be unique (Caffe's layer names need not be) and not shadow ModuleDict's
            # methods (a layer named "double" or "train")
            while key in self.layers or hasattr(nn.ModuleDict, key):
                key += "_"
            step.key = key
            self.layers[key] = layer
            self.plan.append(step)
            for t, s in zip(ls.tops, top_shapes):
                self.blob_shapes[t] = s
                producer[t] = ls
            if layer.is_input:
                self.inputs.update(zip(ls.tops, top_shapes))

    @staticmethod
    def _check_name(step: Step, layer: Layer, named: dict[str, Step]) -> None:
        """Caffe allows two layers of one name (its own mnist_autoencoder has two 'loss' layers), but
        weights are stored by layer name, so only layers without blobs may share one."""
        other = named.get(step.name)
        if other is not None and (layer.blob_names or other.has_blobs):
            raise NetError(f"{step.definition.where}: duplicate layer name '{step.name}' (also at "
                           f"{other.definition.loc}); layers with weights need unique names")
        if other is not None:
            warnings.warn(f"{step.definition.where}: duplicate layer name '{step.name}' (also at "
                          f"{other.definition.loc}); Caffe allows it, but net.layer('{step.name}') finds the "
                          f"first only", NetWarning, stacklevel=4)
        step.has_blobs = bool(layer.blob_names) or (other is not None and other.has_blobs)
        named[step.name] = step

    def _make_layer(self, ls: LayerDef) -> Layer:
        param_str = ""
        if ls.type == "Python":
            pp = ls.blocks.get("python_param")
            if pp is None:
                raise NetError(f"{ls.where}: a Python layer needs python_param {{ module layer }}")
            for f in pp:
                if f.name not in ("module", "layer", "param_str", "share_in_parallel"):
                    raise NetError(f"{f.loc}: unknown param '{f.name}' in python_param"
                                   f"{did_you_mean(f.name, ('module', 'layer', 'param_str'))}")
            module, layer_name = pp.first("module"), pp.first("layer")
            if module is None or layer_name is None:
                raise NetError(f"{ls.where}: python_param needs both 'module' and 'layer'")
            # like Caffe run from the net's folder: its folder (and the current one) are searched too
            import os
            net_file = self.definition.filename
            search = [os.path.dirname(os.path.abspath(net_file))] if os.path.isfile(net_file) else []
            cls = python_layer_class(as_str(module), as_str(layer_name), ls.where, search)   # ours or caffe.Layer
            ps = pp.first("param_str")
            param_str = as_str(ps) if ps is not None else ""
            ls = LayerDef(**{**ls.__dict__, "blocks": {k: v for k, v in ls.blocks.items() if k != "python_param"}})
        else:
            cls = get_layer_class(ls.type, ls.where)
        bottom_shapes = [self.blob_shapes[b] for b in ls.bottoms]
        return cls(ls, bottom_shapes, self.phase, param_str)

    @staticmethod
    def _infer(layer: Layer, ls: LayerDef, bottom_shapes: list[Shape]) -> list[Shape]:
        try:
            shapes = layer.infer_top_shapes(bottom_shapes)
        except NetError:
            raise
        except Exception as e:   # noqa: BLE001 - torch's shape errors, and any error of a user's own layer
            if not isinstance(e, _SHAPE_ERRORS) and not _users(layer):
                raise   # a bug of ours
            detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            shown = ", ".join(f"{b} {tuple(s)}" for b, s in zip(ls.bottoms, bottom_shapes))
            raise NetError(f"{ls.where}: cannot run on bottoms {shown}: {detail}") from e
        if len(shapes) != len(ls.tops):
            raise NetError(f"{ls.where}: produces {len(shapes)} top(s) but {len(ls.tops)} are named")
        return [tuple(int(d) for d in s) for s in shapes]

    @staticmethod
    def _make_step(ls: LayerDef, layer: Layer) -> Step:
        n_top = len(ls.tops)
        if ls.loss_weights:
            if len(ls.loss_weights) != n_top:
                raise NetError(f"{ls.where}: {len(ls.loss_weights)} loss_weight value(s) for {n_top} top(s)")
            weights = list(ls.loss_weights)
        else:
            weights = [1.0 if (layer.is_loss and i == 0) else 0.0 for i in range(n_top)]
        if ls.propagate_down and len(ls.propagate_down) != len(ls.bottoms):
            raise NetError(f"{ls.where}: {len(ls.propagate_down)} propagate_down value(s) for "
                           f"{len(ls.bottoms)} bottom(s)")
        propagate = list(ls.propagate_down) or [True] * len(ls.bottoms)
        n_blobs = len(layer.blob_names)
        if len(ls.param_specs) > n_blobs:
            raise NetError(f"{ls.where}: {len(ls.param_specs)} param {{ }} entries but the layer has "
                           f"{n_blobs} parameter blob(s)")
        step = Step(ls.name, ls.name, ls, list(ls.bottoms), list(ls.tops), weights, propagate)
        for i in range(n_blobs):
            ps = ls.param_specs[i] if i < len(ls.param_specs) else None
            step.lr_mults.append(ps.lr_mult if ps else 1.0)
            step.decay_mults.append(ps.decay_mult if ps else 1.0)
        return step

    def _share_params(self, step: Step, layer: Layer, shared: dict) -> None:
        for i, blob_name in enumerate(layer.blob_names):
            tensor = getattr(layer, blob_name)
            ps = step.definition.param_specs[i] if i < len(step.definition.param_specs) else None
            if ps is not None and ps.name and ps.name in shared:
                owner_step, owner_i, owner_tensor = shared[ps.name]
                if tuple(owner_tensor.shape) != tuple(tensor.shape):
                    raise NetError(f"{step.definition.where}: shared param '{ps.name}' has shape "
                                   f"{tuple(tensor.shape)} here but {tuple(owner_tensor.shape)} in layer "
                                   f"'{owner_step.name}'")
                layer.share_blob(blob_name, owner_tensor)
                continue
            if ps is not None and ps.name:
                shared[ps.name] = (step, i, tensor)
            if isinstance(tensor, nn.Parameter):
                if step.lr_mults[i] == 0:
                    tensor.requires_grad_(False)   # lr_mult 0 freezes; gradients still reach the bottoms
                self.param_info.append(ParamInfo(step.name, i, tensor, step.lr_mults[i], step.decay_mults[i]))

    def _find_outputs(self) -> list[str]:
        """Caffe's rule: every top is available until a later layer consumes it as a bottom; Caffe keeps
        them in a std::set, so outputs come in sorted order."""
        available: dict[str, None] = {}
        for step in self.plan:
            for b in step.bottoms:
                available.pop(b, None)
            for t in step.tops:
                available[t] = None
        return sorted(available)

    # -- run -----------------------------------------------------------------------------------------------
    _compiled = None   # set by compile()

    def forward(self, _timings: dict[str, float] | None = None, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run every layer in order; inputs are tensors for the Input blobs. Returns the output blobs.

        The net draws its data from its source stage itself. A caller may instead give source blobs (e.g.
        chosen sample indices): the source layers then run inline from them.
        `_timings`, when given, accumulates each layer's forward seconds under its key in `self.layers` (the
        layers then run eagerly, also after compile())."""
        source_tops = self.source.tops if self.source else []
        unknown = set(inputs) - set(self.inputs) - set(source_tops)
        if unknown:
            name = sorted(unknown)[0]
            known = list(self.inputs) + source_tops
            raise NetError(f"net '{self.name}' has no input blob '{name}'{did_you_mean(name, known)}"
                           f" (inputs: {', '.join(known) or 'none'})")
        if _timings is not None and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)   # don't bill queued work to the first layer
        blobs = self._feed(inputs, _timings)
        if self._compiled is not None and _timings is None:
            blobs, loss = self._run_compiled(blobs)
        else:
            loss = self._run_steps(self._network_steps if _timings is None else self._layerwise_steps, blobs,
                                   _timings)
        self.blobs = blobs
        self.loss = loss
        return {name: blobs[name] for name in self.outputs}

    def _feed(self, inputs: dict, timings: dict | None) -> dict[str, torch.Tensor]:
        """The blobs entering the network: Input blobs from `inputs`, and the source blobs, drawn from the
        source stage or, when the caller gave source blobs, read inline from them."""
        blobs: dict[str, torch.Tensor] = {}
        inline = self.source is not None and any(t in inputs for t in self.source.tops)
        if self.source is not None and not inline:
            t0 = time.perf_counter()
            # torch's RNG set aside: starting the data workers must not move it (Dropout masks, exact resume);
            # data is read at full precision, also inside an autocast region (forked workers inherit it)
            with torch.random.fork_rng(devices=[]), torch.autocast(self.device.type, enabled=False):
                batch = self.source.next_batch()
            blobs.update({k: self._to_net(v) for k, v in batch.items()})
            if timings is not None:   # the source stage runs ahead: its cost is the time the net waited
                last = self._source_steps[-1][0].key
                timings[last] = timings.get(last, 0.0) + time.perf_counter() - t0
        for step in self.plan:
            if self.layers[step.key].is_input:
                t0 = time.perf_counter()
                blobs.update(zip(step.tops, self._input_tops(step, inputs)))
                if timings is not None:
                    self._bill(timings, step, t0)
        if inline:
            to_run = []
            for step, weighted in self._source_steps:
                if all(t in inputs for t in step.tops):
                    blobs.update({t: self._to_net(torch.as_tensor(inputs[t])) for t in step.tops})
                else:
                    to_run.append((step, weighted))
            self._run_steps(to_run, blobs, timings)
        return blobs

    def _input_tops(self, step: Step, inputs: dict) -> list[torch.Tensor]:
        layer = self.layers[step.key]
        tops = []
        for t in step.tops:
            if t not in inputs:
                raise NetError(f"{step.definition.where}: input blob '{t}' was not given "
                               f"(expected shape {self.blob_shapes[t]})")
            tops.append(layer(self._to_net(torch.as_tensor(inputs[t]))))
        return tops

    def _run_steps(self, steps: list[tuple[Step, list[tuple[int, float]]]], blobs: dict,
                   timings: dict | None = None, checked: bool = True):
        """The layer loop: each step on its bottoms (detached where propagate_down is false), in order, into
        `blobs`; returns the weighted loss (None without loss tops). `checked`: torch's errors become
        NetErrors naming the layer (off inside torch.compile); `timings`: per-layer seconds."""
        loss = None
        for step, weighted in steps:
            t0 = time.perf_counter() if timings is not None else 0.0
            bottoms = [blobs[b] if keep else blobs[b].detach() for b, keep in zip(step.bottoms, step.propagate)]
            if checked:
                tops = self._call(step, bottoms)
            else:
                tops = self._invoke(step, bottoms)
            if timings is not None:
                self._bill(timings, step, t0)
            blobs.update(zip(step.tops, tops))
            for i, w in weighted:
                term = w * tops[i].sum()
                loss = term if loss is None else loss + term
        return loss

    def _call(self, step: Step, bottoms: list[torch.Tensor]) -> tuple:
        """One layer on its bottoms; torch's errors become NetErrors."""
        layer = self.layers[step.key]
        try:
            return self._invoke(step, bottoms)
        except NetError:
            raise
        except Exception as e:   # noqa: BLE001 - torch's errors, and any error of a user's own layer
            if not isinstance(e, _RUN_ERRORS) and not _users(layer):
                raise   # a bug of ours
            # e.g. inputs of another shape than the net was built for; the cause stays chained (--debug shows it)
            shown = ", ".join(f"{b} {tuple(t.shape)}" for b, t in zip(step.bottoms, bottoms))
            detail = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise NetError(f"{step.definition.where}: failed on bottoms {shown}: {detail}") from e

    def _invoke(self, step: Step, bottoms: list[torch.Tensor]) -> tuple:
        layer = self.layers[step.key]
        if step.fused_scale:
            scale = self.layers[step.fused_scale]
            return (layer.normalize(bottoms[0], scale.gamma, scale.beta if scale.p.bias_term else None),)
        return as_tuple(layer(*bottoms))

    def _bill(self, timings: dict, step: Step, t0: float) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        timings[step.key] = timings.get(step.key, 0.0) + time.perf_counter() - t0

    def _network_fn(self, blobs: dict):
        """What compile() compiles: the network steps as one function of the input and source blobs,
        returning every blob (so net.blobs stays complete) and the loss."""
        blobs = dict(blobs)
        loss = self._run_steps(self._network_steps, blobs, checked=False)
        return blobs, loss

    def _run_compiled(self, blobs: dict):
        try:
            return self._compiled(blobs)
        except Exception:   # noqa: BLE001 - rerun eagerly: a user error then names its layer
            loss = self._run_steps(self._network_steps, blobs)
            # the eager run worked, so the compiler failed (e.g. no C++ compiler): stay eager from now on
            warnings.warn(f"net '{self.name}': torch.compile failed, running eagerly", RuntimeWarning,
                          stacklevel=3)
            self._compiled = None
            return blobs, loss

    def compile(self, **options) -> "Net":
        """Run the network steps (all but Input and source layers) through torch.compile(**options) from now
        on. forward(_timings=...) still runs layer by layer, eagerly; net.blobs still holds every blob. If
        compiling fails at the first forward, the net warns and stays eager. Returns the net."""
        self._compiled = torch.compile(self._network_fn, **options)
        return self

    def use_channels_last(self) -> "Net":
        """NHWC memory order for 4-D weights and for every 4-D blob entering the net (inputs, source blobs).
        Returns the net."""
        self.to(memory_format=torch.channels_last)
        self.channels_last = True
        return self

    @property
    def dtype(self) -> torch.dtype:
        """The floating dtype blobs enter the net with (float32 unless the net was .double()'d)."""
        return self._dtype_anchor.dtype

    def _to_net(self, x: torch.Tensor) -> torch.Tensor:
        """An input or source blob on the net's device, in the net's dtype (Caffe's blobs are all float), in
        NHWC order after use_channels_last()."""
        x = x.to(self.device, self.dtype, non_blocking=True)
        return to_channels_last(x) if self.channels_last else x

    def close(self) -> None:
        """Stop the source stage's worker processes."""
        if self.source is not None:
            self.source.close()

    # -- views -----------------------------------------------------------------------------------------------
    @property
    def params(self) -> dict[str, list[torch.Tensor]]:
        """Layer name -> its blobs in Caffe's order (learnable parameters and state such as BN statistics)."""
        out = {}
        for step in self.plan:
            blobs = self.layers[step.key].caffe_blobs()
            if blobs:
                out[step.name] = blobs
        return out

    def layer(self, name: str) -> Layer:
        """The (first) layer of that name."""
        for step in self.plan:
            if step.name == name:
                return self.layers[step.key]
        raise KeyError(name)

    @property
    def fused_scales(self) -> list[tuple[str, str]]:
        """(BatchNorm, Scale) layer names that forward runs as one step (fuse_scales)."""
        return [(st.name, self.layers[st.fused_scale].name) for st, _ in self._network_steps if st.fused_scale]

    @property
    def layer_names(self) -> list[str]:
        return [s.name for s in self.plan]

    def extra_repr(self) -> str:
        return f"name={self.name!r}, phase={self.phase}, inputs={list(self.inputs)}, outputs={self.outputs}"
