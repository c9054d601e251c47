#!/usr/bin/env python
"""Convert Caffe weights between HDF5 (.h5, .caffemodel.h5) and the binary .caffemodel, either way.

    python tools/convert_weights.py IN OUT [--net NET.prototxt [--phase TRAIN|TEST] [--stage S]]
                                    [--format hdf5|caffemodel] [--import MODULE_OR_FILE] [--debug]

IN's format is read from its content (an HDF5 signature, else a protobuf NetParameter of any of Caffe's
forms: new `layer`, V1 `layers`, V0); OUT's from its name (`.caffemodel`: binary; anything else: HDF5) unless
--format says. Without --net the layers are copied as they are (names, blobs, and for a caffemodel source the
types, bottoms and tops); this needs no net, but two cases need one:
  * HDF5 -> caffemodel when the HDF5 file leaves out blobs shared through `param { name }` (a caffemodel
    stores every layer's blobs, so the net must say which layer holds them): refused without --net;
  * a legacy caffemodel (blobs with num/channels/height/width) -> HDF5 keeps the 4-D shapes, e.g. (1, 1,
    500, 800) for an InnerProduct weight: this project loads them, Caffe's own HDF5 loader wants the net's
    shapes, so a note says to give --net.
With --net the weights are loaded into that net (Caffe's rules, every net layer with weights must be in IN)
and written from it: the net's shapes, types, bottoms and tops, shared blobs as Caffe writes them. File
layers the net lacks are dropped, with a note.

Errors (a missing, corrupt, truncated or foreign file) print one line and exit with status 2.
"""

import argparse
import os
import sys

# Runs from a checkout without installing: the repository root holds the nets package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from netdef.errors import add_debug_flag, run_tool  # noqa: E402


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="convert_weights.py",
                                 description="Convert Caffe weights between HDF5 and binary .caffemodel.")
    ap.add_argument("input", metavar="IN", help="weights file (HDF5 or .caffemodel, told by content)")
    ap.add_argument("output", metavar="OUT", help="file to write (.caffemodel: binary; else HDF5)")
    ap.add_argument("--net", metavar="NET.prototxt", help="load into this net and write from it")
    ap.add_argument("--phase", choices=("TRAIN", "TEST"), default="TEST", help="with --net: its phase (TEST)")
    ap.add_argument("--stage", action="append", default=[], metavar="S", help="with --net: a stage (repeatable)")
    ap.add_argument("--format", choices=("hdf5", "caffemodel"), help="OUT's format (default: from its name)")
    ap.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE_OR_FILE",
                    help="with --net: import a module or .py file that registers layers (repeatable)")
    add_debug_flag(ap)
    return ap


def _note(text: str) -> None:
    print(f"note: {text}", file=sys.stderr)


def convert(args) -> int:
    from nets.weights import format_for_path, load_weights, read_weights_file, save_weights, \
        write_weights_file
    fmt = args.format or format_for_path(args.output)
    if args.net:
        from layers.registry import import_user_module
        from nets.net import Net
        for module in args.imports:
            import_user_module(module)
        stages = [s for arg in args.stage for s in arg.split(",") if s]
        net = Net(args.net, phase=args.phase, stages=stages, device="cpu", workers=0)
        try:
            report = load_weights(net, args.input, strict=True)
            if report.ignored:
                _note(f"{len(report.ignored)} layer(s) of '{args.input}' are not in the net and are not written: "
                      f"{', '.join(report.ignored)}")
            save_weights(net, args.output, format=fmt)
        finally:
            net.close()
        print(f"wrote '{args.output}' ({fmt}): {len(report.loaded)} layer(s) with weights, from '{args.input}' "
              f"through '{args.net}'")
        return 0
    model = read_weights_file(args.input)
    legacy = [rec.name for rec in model.layers if any(b is not None and b.legacy for b in rec.blobs)]
    write_weights_file(args.output, model, format=fmt)
    if fmt == "hdf5" and legacy:
        _note(f"{len(legacy)} layer(s) have legacy 4-D blob shapes, kept as they are ({', '.join(legacy)}); this "
              f"project loads them, Caffe's HDF5 loader wants the net's shapes: give --net NET.prototxt for those")
    with_blobs = sum(1 for rec in model.layers if rec.blobs)
    print(f"wrote '{args.output}' ({fmt}): {len(model.layers)} layer(s), {with_blobs} with weights, from "
          f"'{args.input}' ({model.form})")
    return 0


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    return run_tool(lambda: convert(args), args.debug)


if __name__ == "__main__":
    sys.exit(main())
