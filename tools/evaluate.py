#!/usr/bin/env python
"""Evaluate a test net over its split: a markdown metrics table, a PCK-curve plot and debug images.

    python tools/evaluate.py NET.prototxt [--weights W.h5] [--out DIR] [--device cpu|cuda] [--workers N]
                             [--dtype float32|float64] [--samples N] [--debug-images K] [--name LABEL]
                             [--pred-2d BLOB] [--gt-2d BLOB] [--pred-3d BLOB] [--gt-3d BLOB]
                             [--visibility BLOB] [--clamped BLOB] [--ambiguous BLOB]

Every sample of the net's ReadIndexFromFile list is evaluated once. Writes DIR/metrics.md, metrics.json, pck.png
and, for the first K samples, skeleton overlays (prediction solid, GT dashed) and heatmap montages.
A user error prints one line and exits 2.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from netdef.errors import NetError, report  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Evaluate a test net over its split (2D/3D EPE, PCK, AUC).")
    ap.add_argument("net", help="test net (.prototxt) with a ReadIndexFromFile layer over the split")
    ap.add_argument("--weights", help="HDF5 weights (Caffe's layout)")
    ap.add_argument("--out", default="runs/evaluation", help="output folder (default runs/evaluation)")
    ap.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    ap.add_argument("--workers", type=int, default=None, help="data reading processes")
    ap.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                    help="run the net in this precision (float64 for exactness checks)")
    ap.add_argument("--samples", type=int, help="evaluate this many samples (default: the whole index list)")
    ap.add_argument("--debug-images", type=int, default=4, metavar="K", help="overlays for the first K samples")
    ap.add_argument("--name", default="net", help="the column's name in the table")
    for role, default in (("pred-2d", "pred_2d"), ("gt-2d", "gt_2d"), ("pred-3d", "pred_3d"), ("gt-3d", "gt_3d"),
                          ("visibility", "visibility"), ("clamped", "clamped"), ("ambiguous", "ambiguous")):
        ap.add_argument(f"--{role}", default=default, metavar="BLOB", help=f"blob for {role} (default {default})")
    args = ap.parse_args(argv)
    try:
        return run(args)
    except NetError as e:
        return report(e)


def run(args) -> int:
    from layers.hand import evaluation
    from nets.net import Net
    from nets.weights import load_weights
    net = Net(args.net, phase="TEST", device=args.device, workers=args.workers)
    try:
        if args.dtype == "float64":
            net.double()
        if args.weights:
            load_weights(net, args.weights)
        names = {r: getattr(args, r) for r in ("pred_2d", "gt_2d", "pred_3d", "gt_3d", "visibility", "clamped",
                                                 "ambiguous")}
        total = args.samples or evaluation.split_size(net)[0]
        bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm
            bar = tqdm(total=total, desc="evaluate", unit="sample", file=sys.stderr)
        collected = evaluation.collect(net, names, args.samples, args.debug_images,
                                       progress=bar.update if bar else None)
        if bar:
            bar.close()
    finally:
        net.close()
    rows = {args.name: evaluation.compute_metrics(collected)}
    paths = evaluation.save_report(rows, args.out)
    evaluation.write_debug_images(collected.debug, args.out)
    print(evaluation.markdown_table(rows), end="")
    print(f"wrote {paths['table']}, {paths['pck']}")
    return 0


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    sys.exit(main())
