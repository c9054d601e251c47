"""ONNX export of a net's network part: the layers between its inputs and its outputs, as one ONNX graph.

    part = NetworkPart(net)                   # the layers a Net runs in its layer loop, as an nn.Module
    report = export_onnx(net, "net.onnx")     # traced with torch.onnx.export(dynamo=False), checked by onnx
    checks = compare_onnx("net.onnx", part)   # onnxruntime vs our forward: Comparison(batch, output, max_abs_diff, ...)

What the graph holds:
  * inputs: the tops of Input layers (and of a net's `input:` fields) and of the layers that feed the network
    from outside it (the source layers: readers, index layers, DummyData), as far as the network reads them;
    the data reading itself is not exported. Names are the blob names.
  * outputs: the net's outputs (blobs no layer consumes, Caffe's rule, in Caffe's sorted order) that the network
    part computes; a source top nothing reads is no graph output.
  * a dynamic batch dimension: axis 0 of every input whose first dimension is the net's batch size, and of every
    output whose first dimension follows it (found by running the part at two batch sizes).
  * the weights as initializers; layers in the net's phase (export a TEST net: Dropout is the identity and
    BatchNorm uses its stored statistics there).

The exporter is torch's TorchScript-based one (`torch.onnx.export(..., dynamo=False)`): the dynamo-based one,
torch's default since 2.9, needs the onnxscript package and torch.export's symbolic shapes, and our layers check
shapes in Python (Caffe's errors), which torch.export would have to turn into guards; the tracer records the
tensor operations of one run at a sample batch and leaves the batch axis symbolic. A trace cannot follow
Python or NumPy computation (it would freeze its result as a constant) nor outputs whose size depends on the
values, so layers of that kind are refused before tracing, one line each:

    cannot export layer 'keep' (Filter): the number of items it keeps depends on the selector's values

`compare_onnx` runs the file at two batch sizes, which would also catch a user's layer that computes in NumPy.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from layers.base import as_tuple
from netdef.errors import NetError

__all__ = ["UNEXPORTABLE", "NetworkPart", "ExportReport", "export_onnx", "compare_onnx", "random_inputs",
           "Comparison", "DEFAULT_OPSET"]

DEFAULT_OPSET = 17

# layer type -> why a trace cannot stand for it
UNEXPORTABLE = {
    "Filter": "the number of items it keeps depends on the selector's values (a data-dependent shape)",
    "DetectionOutput": "the number of detections depends on the scores (NMS: a data-dependent shape)",
    "HDF5Output": "it writes files as it runs (a side effect a graph cannot hold)",
    "Python": "a Python layer runs its own Python/NumPy code, which a trace would freeze as constants",
    "ROIPooling": "its pooling is a Python autograd function with no ONNX form",
    "DrawSkeleton": "it draws images with OpenCV/NumPy (a side effect a graph cannot hold)",
    "DeepHandModelOutputHeatmapSepChannel": "it draws images with OpenCV/NumPy (a side effect a graph cannot hold)",
    "DeepHandModelOutputJointOnSkeletonMapRHD": "it draws images with OpenCV/NumPy (a side effect a graph cannot "
                                                "hold)",
}

# layers outside the network whose tops become graph inputs, besides the source stage's and Input layers
_FED_FROM_OUTSIDE = ("DummyData",)


class NetworkPart(nn.Module):
    """The network part of a Net as a module of positional tensors: forward(*inputs) -> tuple of outputs, in the
    order of `input_names` and `output_names`. It runs the same layer objects (the same weights) as the net."""

    def __init__(self, net):
        super().__init__()
        self.net = net
        fed = []          # blobs that enter the network from outside: (blob, where it comes from)
        self.steps = []
        produced: set[str] = set()
        for step in net.plan:
            layer = net.layers[step.key]
            if step.is_source or layer.is_input or step.definition.type in _FED_FROM_OUTSIDE:
                kind = "Input" if layer.is_input else f"{step.definition.type} '{step.name}'"
                fed.extend((t, kind) for t in step.tops)
                continue
            self.steps.append(step)
        fed_kind = dict(fed)
        needed: list[str] = []
        for step in self.steps:
            for b in step.bottoms:
                if b not in produced and b not in needed:
                    needed.append(b)
            produced.update(step.tops)
        # Input blobs are inputs even when nothing reads them (the net's interface); source tops when read
        self.input_names = [b for b, kind in fed if kind == "Input"]
        self.input_names += [b for b in needed if b not in self.input_names]
        self.input_kinds = {b: fed_kind.get(b, "Input") for b in self.input_names}
        self.output_names = [o for o in net.outputs if o in produced]
        self.unexported_outputs = [o for o in net.outputs if o not in produced and o not in self.input_names]
        both = [o for o in self.output_names if o in self.input_names]
        if both:
            raise NetError(f"net '{net.name}': blob '{both[0]}' would be both a graph input and a graph output "
                           f"(an in-place layer on an input blob that nothing reads after it); ONNX names must "
                           f"differ")
        if not self.output_names:
            raise NetError(f"net '{net.name}': the network part has no outputs to export")

    def check_exportable(self) -> None:
        """A NetError naming the first layer a trace cannot stand for."""
        for step in self.steps:
            kind = step.definition.type
            reason = UNEXPORTABLE.get(kind)
            if reason is None and type(self.net.layers[step.key]).__module__.startswith("layers.pycaffe"):
                reason = UNEXPORTABLE["Python"]
            if reason is not None:
                raise NetError(f"cannot export layer '{step.name}' ({kind}): {reason}")

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        blobs = dict(zip(self.input_names, inputs))
        for step in self.steps:
            layer = self.net.layers[step.key]
            try:
                tops = as_tuple(layer(*[blobs[b] for b in step.bottoms]))
            except NetError:
                raise
            except Exception as e:   # noqa: BLE001 - torch's and the tracer's errors, named by layer
                detail = (str(e).strip().splitlines() or [type(e).__name__])[0]
                raise NetError(f"cannot export layer '{step.name}' ({step.definition.type}): {detail}") from e
            blobs.update(zip(step.tops, tops))
        return tuple(blobs[o] for o in self.output_names)

    def batch_size(self) -> int | None:
        """The net's batch size: the first dimension of its first input (None without inputs or dims)."""
        for name in self.input_names:
            shape = self.net.blob_shapes[name]
            if shape:
                return shape[0]
        return None

    def batched_inputs(self) -> list[str]:
        n = self.batch_size()
        return [b for b in self.input_names if self.net.blob_shapes[b][:1] == (n,)]


def random_inputs(part: NetworkPart, batch: int, generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """Uniform [0, 1) inputs of the net's shapes, batch `batch` on the batched ones (in [0, 1): valid as labels
    and indices too, which truncate to 0)."""
    batched = set(part.batched_inputs())
    out = []
    for name in part.input_names:
        shape = part.net.blob_shapes[name]
        if name in batched:
            shape = (batch,) + tuple(shape[1:])
        out.append(torch.rand(shape, generator=generator, dtype=part.net.dtype).to(part.net.device))
    return out


class ExportReport:
    """What export_onnx wrote: input names and where each comes from, output names, which axes are dynamic."""

    def __init__(self, path, part: NetworkPart, dynamic_axes: dict, opset: int):
        self.path = path
        self.inputs = list(part.input_names)
        self.input_kinds = dict(part.input_kinds)
        self.outputs = list(part.output_names)
        self.unexported_outputs = list(part.unexported_outputs)
        self.dynamic = sorted(dynamic_axes)
        self.opset = opset
        self.shapes = {b: part.net.blob_shapes[b] for b in self.inputs + self.outputs}


def _floor_divide(g, a, b):
    """aten::floor_divide as floor division: torch's own symbolic truncates (its legacy meaning), which breaks
    Caffe's ceil-mode sizes, -(-n // s), once the tracer records them from a tensor's shape."""
    from torch.onnx import symbolic_opset9
    return symbolic_opset9._floor_divide(g, a, b)


def _avg_pool2d(g, x, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override=None):
    """aten::avg_pool2d with divisor_override (Pooling's window sums): torch's symbolic drops the divisor. ONNX's
    AveragePool (count_include_pad) divides by the kernel's area; the sum is that times the area."""
    from torch.onnx import symbolic_helper as sh
    kernel = sh._maybe_get_const(kernel, "is")
    stride = sh._maybe_get_const(stride, "is") or kernel
    padding = sh._maybe_get_const(padding, "is")
    ceil = bool(sh._maybe_get_const(ceil_mode, "b"))
    include = bool(sh._maybe_get_const(count_include_pad, "b"))
    divisor = None if sh._is_none(divisor_override) else sh._maybe_get_const(divisor_override, "i")
    kernel, stride, padding = (list(v) * (2 // len(v)) if len(v) == 1 else list(v) for v in (kernel, stride, padding))
    if divisor is not None and ceil:
        raise NetError("avg_pool2d with both divisor_override and ceil_mode has no ONNX form")
    attrs = {"ceil_mode_i": 1} if ceil else {}      # the attribute exists from opset 10
    y = g.op("AveragePool", x, kernel_shape_i=kernel, strides_i=stride, pads_i=padding + padding,
             count_include_pad_i=int(include or divisor is not None), **attrs)
    if divisor is None:
        return y
    dtype = {"Double": torch.float64, "Half": torch.float16, "BFloat16": torch.bfloat16}.get(
        x.type().scalarType(), torch.float32)
    scale = g.op("Constant", value_t=torch.tensor(kernel[0] * kernel[1] / divisor, dtype=dtype))
    return g.op("Mul", y, scale)


_SYMBOLICS = {"aten::floor_divide": _floor_divide, "aten::avg_pool2d": _avg_pool2d}


@contextlib.contextmanager
def _symbolics(opset: int):
    """Our corrections to torch's TorchScript symbolics, registered for the export only."""
    for name, fn in _SYMBOLICS.items():
        torch.onnx.register_custom_op_symbolic(name, fn, opset)
    try:
        yield
    finally:
        for name in _SYMBOLICS:
            torch.onnx.unregister_custom_op_symbolic(name, opset)


@contextlib.contextmanager
def _quiet_tracer():
    """The tracer's warnings are about Python shape checks (Caffe's errors) it records as constants; the
    second-batch-size comparison is what tells whether the graph generalises."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)   # the TorchScript exporter's own notices
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx.*")
        yield


@contextlib.contextmanager
def _quiet_native_output():
    """torch's C++ side prints its exporter warnings (a PythonOp it cannot inline, with a Python stack) straight to
    file descriptor 2, and its Python side the graph at an error to stdout; a failure is reported as one NetError
    line instead, so they are set aside."""
    import sys
    import tempfile
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    with tempfile.TemporaryFile() as sink:
        for fd in saved:
            os.dup2(sink.fileno(), fd)
        try:
            yield
        finally:
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)


def _dynamic_outputs(part: NetworkPart, batches: tuple[int, int]) -> list[str]:
    """The outputs whose first dimension is the batch size at both sizes."""
    shapes = []
    for b in batches:
        outs = part(*random_inputs(part, b))
        shapes.append([tuple(o.shape) for o in outs])
    return [name for name, s1, s2 in zip(part.output_names, *shapes)
            if s1[:1] == (batches[0],) and s2[:1] == (batches[1],)]


def export_onnx(net, path, opset: int = DEFAULT_OPSET, trace_batch: int = 2) -> ExportReport:
    """Export `net`'s network part to `path` (ONNX, weights inside) and check it with onnx.checker; returns an
    ExportReport. NetError for a layer a trace cannot stand for, or when the exporter fails (naming the layer)."""
    import onnx

    part = NetworkPart(net)
    part.check_exportable()
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad(), _quiet_tracer(), _symbolics(opset):
            dynamic = {}
            if part.batch_size() is not None:
                dynamic = {b: {0: "batch"} for b in part.batched_inputs()}
                if dynamic:
                    dynamic.update({o: {0: "batch"} for o in _dynamic_outputs(part, (trace_batch, trace_batch + 1))})
            sample = tuple(random_inputs(part, trace_batch))
            try:
                with _quiet_native_output():
                    torch.onnx.export(part, sample, str(path), dynamo=False, opset_version=opset,
                                      input_names=part.input_names, output_names=part.output_names,
                                      dynamic_axes=dynamic or None, do_constant_folding=True)
            except NetError:
                raise
            except Exception as e:   # noqa: BLE001 - an op with no ONNX form: find the layer that uses it
                raise _layer_that_fails(part, sample, opset, e) from e
    finally:
        net.train(was_training)
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as e:   # noqa: BLE001 - onnx's own errors
        os.remove(path)      # no invalid file left behind
        detail = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise NetError(f"{path}: the exported graph fails onnx.checker at opset {opset}: {detail} (a newer opset "
                       f"may have the operator)") from e
    return ExportReport(path, part, dynamic, opset)


class _OneLayer(nn.Module):
    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, *bottoms):
        return as_tuple(self.layer(*bottoms))


def _layer_that_fails(part: NetworkPart, sample: tuple, opset: int, error: Exception) -> NetError:
    """Export each layer alone on its bottoms (from an eager run) until one fails: the error names it."""
    import io

    blobs = dict(zip(part.input_names, sample))
    for step in part.steps:
        layer = part.net.layers[step.key]
        bottoms = tuple(blobs[b] for b in step.bottoms)
        try:
            with _quiet_native_output():
                torch.onnx.export(_OneLayer(layer), bottoms, io.BytesIO(), dynamo=False, opset_version=opset)
        except Exception as e:   # noqa: BLE001
            detail = (str(e).strip().splitlines() or [type(e).__name__])[0]
            return NetError(f"cannot export layer '{step.name}' ({step.definition.type}): {detail}")
        blobs.update(zip(step.tops, as_tuple(layer(*bottoms))))
    detail = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return NetError(f"net '{part.net.name}': ONNX export failed: {detail}")


@dataclass
class Comparison:
    """One output at one batch size: the largest |onnxruntime - ours| and the largest |ours| (its scale)."""
    batch: int
    output: str
    max_abs_diff: float
    max_abs_value: float

    @property
    def relative(self) -> float:
        """max_abs_diff over max(1, max_abs_value)."""
        return self.max_abs_diff / max(1.0, self.max_abs_value)


def compare_onnx(path, part: NetworkPart, batches=(1, 3), inputs: list[list[torch.Tensor]] | None = None,
                 seed: int = 0) -> list[Comparison]:
    """Run the exported file with onnxruntime and the network part with torch on the same inputs (random, seeded,
    or `inputs`: one list per run) at each batch size; one Comparison per run and output. NaN in both counts as
    equal; a shape mismatch is a NetError."""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, torch.get_num_threads())
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    graph_inputs = {i.name for i in session.get_inputs()}
    generator = torch.Generator().manual_seed(seed)
    result = []
    runs = inputs if inputs is not None else [random_inputs(part, b, generator) for b in batches]
    batched = set(part.batched_inputs())
    for tensors in runs:
        batch = next((int(t.shape[0]) for n, t in zip(part.input_names, tensors) if n in batched), 0)
        with torch.no_grad():
            ours = part(*tensors)
        feed = {n: t.detach().cpu().float().numpy() for n, t in zip(part.input_names, tensors) if n in graph_inputs}
        theirs = session.run(part.output_names, feed)
        for name, a, b in zip(part.output_names, ours, theirs):
            a = a.detach().cpu().double().numpy()
            b = np.asarray(b, dtype=np.float64)
            if a.shape != b.shape:
                raise NetError(f"{path}: output '{name}' has shape {b.shape} in onnxruntime but {a.shape} in the "
                               f"net at batch {batch}; a layer may compute in Python/NumPy or for a fixed batch "
                               f"size, which a trace freezes")
            both_nan = np.isnan(a) & np.isnan(b)
            d = np.nan_to_num(np.abs(np.where(both_nan, 0.0, a - b)), nan=np.inf)
            finite = np.abs(a[np.isfinite(a)])
            result.append(Comparison(batch, name, float(d.max()) if d.size else 0.0,
                                     float(finite.max()) if finite.size else 0.0))
    return result
