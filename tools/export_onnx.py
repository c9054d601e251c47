#!/usr/bin/env python
"""Export a net's network part to ONNX, then check the file (onnx.checker) and compare it with our forward.

    python tools/export_onnx.py NET.prototxt --weights W --out net.onnx [--phase TEST] [--stage S] [--opset N]
                                [--import MODULE_OR_FILE] [--no-check] [--debug]

The graph holds the layers between the net's inputs and its outputs (see nets/onnx_export.py): Input blobs and
the tops of source layers (readers, index layers, DummyData) that the network reads become graph inputs, the
net's outputs (blobs no layer consumes) its outputs, named as the blobs; the batch axis is dynamic. Weights:
HDF5 or binary .caffemodel (told by content); without --weights the fillers' values are exported, with a note.
After writing, onnx.checker checks the file and, when onnxruntime is installed, the graph runs on random
inputs at batch sizes 1 and 3 beside our forward, and the largest absolute difference of each output is printed
(--no-check skips the run). A layer that cannot be exported prints one line and exits with status 2:

    error: cannot export layer 'keep' (Filter): the number of items it keeps depends on the selector's values ...
"""

import argparse
import os
import sys

# Runs from a checkout without installing: the repository root holds the nets package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from netdef.errors import NetError, add_debug_flag, run_tool  # noqa: E402

# the largest difference accepted, relative to the output's largest magnitude (at least 1)
TOLERANCE = 1e-3


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="export_onnx.py", description="Export a net's network part to ONNX.")
    ap.add_argument("net", metavar="NET.prototxt", help="the net (a deploy or TEST net)")
    ap.add_argument("--weights", metavar="W", help="weights: HDF5 or .caffemodel (default: the fillers' values)")
    ap.add_argument("--out", required=True, metavar="OUT.onnx", help="the ONNX file to write")
    ap.add_argument("--phase", choices=("TRAIN", "TEST"), default="TEST", help="the net's phase (TEST)")
    ap.add_argument("--stage", action="append", default=[], metavar="S", help="a stage (repeatable)")
    ap.add_argument("--opset", type=int, default=None, metavar="N", help="ONNX opset version (default 17)")
    ap.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE_OR_FILE",
                    help="import a module or .py file that registers layers (repeatable)")
    ap.add_argument("--no-check", action="store_true", help="skip running the file with onnxruntime")
    add_debug_flag(ap)
    return ap


def _shape(shape, dynamic: bool) -> str:
    dims = [str(d) for d in shape]
    if dynamic and dims:
        dims[0] = "batch"
    return "(" + ", ".join(dims) + ")"


def export(args) -> int:
    import torch

    from layers.registry import import_user_module
    from nets.net import Net
    from nets.onnx_export import DEFAULT_OPSET, NetworkPart, compare_onnx, export_onnx
    from nets.weights import load_weights

    for module in args.imports:
        import_user_module(module)
    stages = [s for arg in args.stage for s in arg.split(",") if s]
    opset = args.opset if args.opset is not None else DEFAULT_OPSET
    if not 7 <= opset <= 20:
        raise NetError(f"--opset {opset}: the exporter writes opsets 7 to 20")
    net = Net(args.net, phase=args.phase, stages=stages, device="cpu", workers=0)
    try:
        if args.weights:
            load_weights(net, args.weights)
        else:
            print("note: no --weights: the fillers' values are exported", file=sys.stderr)
        torch.manual_seed(0)
        report = export_onnx(net, args.out, opset=opset)
        dyn = set(report.dynamic)
        print(f"wrote '{args.out}' (ONNX opset {opset}), checked by onnx.checker")
        for name in report.inputs:
            print(f"  input  {name} {_shape(report.shapes[name], name in dyn)}  <- {report.input_kinds[name]}")
        for name in report.outputs:
            print(f"  output {name} {_shape(report.shapes[name], name in dyn)}")
        for name in report.unexported_outputs:
            print(f"note: net output '{name}' comes from a source layer, not the network: not a graph output",
                  file=sys.stderr)
        if args.no_check:
            return 0
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            print("note: onnxruntime is not installed: the graph was not run", file=sys.stderr)
            return 0
        results = compare_onnx(args.out, NetworkPart(net))
        for c in results:
            print(f"  batch {c.batch}: {c.output} max |onnxruntime - ours| = {c.max_abs_diff:.3g} "
                  f"(outputs up to {c.max_abs_value:.3g})")
        print(f"max abs difference: {max(c.max_abs_diff for c in results):.3g}")
        bad = [c for c in results if not c.relative <= TOLERANCE]
        if bad:
            c = bad[0]
            raise NetError(f"{args.out}: onnxruntime's '{c.output}' differs from the net's by {c.max_abs_diff:.3g} "
                           f"at batch {c.batch}; a layer may compute in Python/NumPy or for a fixed batch size, "
                           f"which a trace freezes")
        return 0
    finally:
        net.close()


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    return run_tool(lambda: export(args), args.debug)


if __name__ == "__main__":
    sys.exit(main())
