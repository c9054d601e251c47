#!/usr/bin/env python
"""Evaluate a test net over its split: a markdown metrics table, a PCK-curve plot and debug images.

    python tools/evaluate.py NET.prototxt (--weights W.h5 | --random-init) [--out DIR] [--device cpu|cuda]
                             [--workers N] [--dtype float32|float64] [--samples N] [--debug-images K]
                             [--protocol all|rhd] [--root wrist|palm] [--name LABEL] [--pred-2d BLOB] [--gt-2d BLOB] [--pred-3d BLOB] [--gt-3d BLOB]
                             [--visibility BLOB] [--clamped BLOB] [--ambiguous BLOB] [--image BLOB]
                             [--pred-2d-crop BLOB] [--gt-2d-crop BLOB] [--heatmaps BLOB] [--debug]

Every sample of the net's ReadIndexFromFile list is evaluated once (a last batch's extra rows count nowhere).
--protocol all (default) counts every usable hand; rhd counts one hand per image, the one with more mask pixels
(a tie: the right hand), as ColorHandPose3D and the papers quoting RHD (layers/hand/rhd/protocol.py). --root palm
measures the root-relative 3D error from the palm centre 0.5 (J0 + J12), as ColorHandPose3D; default the wrist.
Writes DIR/metrics.md, metrics.json, pck.png and, for the first K samples, skeleton overlays (prediction solid,
GT dashed) and heatmap montages. Blobs are found from the net's layers (layers.hand.evaluation.find_roles);
the flags name them instead. A net with weights needs --weights (a file that matches none of its layers is
refused; layers the file lacks are named on one line) or --random-init. A user error prints one line and
exits 2.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from layers.hand.rhd.protocol import PROTOCOLS  # noqa: E402
from netdef.errors import NetError, add_debug_flag, run_tool  # noqa: E402

ROLE_FLAGS = ("pred_2d", "gt_2d", "pred_3d", "gt_3d", "visibility", "clamped", "ambiguous", "image", "pred_2d_crop",
              "gt_2d_crop", "heatmaps")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Evaluate a test net over its split (2D/3D EPE, PCK, AUC).")
    ap.add_argument("net", help="test net (.prototxt) with a ReadIndexFromFile layer over the split")
    ap.add_argument("--weights", help="weights: HDF5 (Caffe's layout) or binary .caffemodel")
    ap.add_argument("--random-init", action="store_true",
                    help="evaluate a net with weights without --weights (its fillers' random values)")
    ap.add_argument("--out", default="runs/evaluation", help="output folder (default runs/evaluation)")
    ap.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    ap.add_argument("--workers", type=int, default=None, help="data reading processes")
    ap.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                    help="run the net in this precision (float64 for exactness checks)")
    ap.add_argument("--samples", type=int, help="evaluate the first N samples (default: the whole index list)")
    ap.add_argument("--debug-images", type=int, default=4, metavar="K", help="overlays for the first K samples")
    ap.add_argument("--protocol", choices=PROTOCOLS, default="all",
                    help="all: every usable hand (default); rhd: per image the hand with more mask pixels (a tie: "
                         "the right hand), as ColorHandPose3D and the papers quoting RHD")
    ap.add_argument("--root", choices=("wrist", "palm"), default="wrist",
                    help="root of the root-relative 3D numbers: the wrist (keypoint 0, default) or the palm centre "
                         "0.5 (J0 + J12), as ColorHandPose3D")
    ap.add_argument("--name", default="net", help="the column's name in the table")
    for role in ROLE_FLAGS:
        ap.add_argument("--" + role.replace("_", "-"), dest=role, metavar="BLOB",
                        help=f"blob for {role} (default: found from the net's layers)")
    add_debug_flag(ap)
    args = ap.parse_args(argv)
    return run_tool(lambda: run(args), args.debug)


def load_or_refuse(net, weights: str | None, random_init: bool) -> None:
    """--weights must match some layer of the net; without it, a net with weights needs --random-init.
    Layers left at their fillers are named on one line (stderr)."""
    from nets.weights import load_weights
    with_weights = [st.name for st in net.plan if st.has_blobs]
    if weights:
        report = load_weights(net, weights)     # NaN or Inf values: a NetWarning, one line
        if not report.loaded:
            theirs = ", ".join(report.ignored[:5]) + (", ..." if len(report.ignored) > 5 else "")
            ours = ", ".join(with_weights[:5]) + (", ..." if len(with_weights) > 5 else "")
            raise NetError(f"weights '{weights}' match no layer of the net: " +
                           (f"the file has {theirs or 'no layers'}; the net's layers with weights are {ours}"
                            if with_weights else "the net has no layers with weights"))
        if report.missing:
            print(f"warning: {len(report.missing)} of the net's {len(with_weights)} layer(s) with weights are not in "
                  f"'{weights}' and keep their random fillers: {', '.join(report.missing)}", file=sys.stderr)
    elif with_weights:
        if not random_init:
            raise NetError(f"no --weights: the net's {len(with_weights)} layer(s) with weights would keep their "
                           f"random fillers; give --weights W.caffemodel.h5, or --random-init to evaluate the "
                           f"untrained net")
        print(f"warning: --random-init: the net's {len(with_weights)} layer(s) with weights keep their random "
              f"fillers", file=sys.stderr)


def rhd_data(net, roles) -> tuple[str, str, bool, object]:
    """(root, split, packed, index list) of the data the net evaluates, for --protocol rhd: from the ReadJoint3D
    layer that gives the GT 3D (else the net's first) and the ReadIndexFromFile layer."""
    from layers.hand.index import ReadIndexFromFile
    from layers.hand.readers import ReadJoint3D
    found = [st for st in net.plan if isinstance(net.layers[st.key], ReadJoint3D)]
    if not found:
        raise NetError("--protocol rhd needs the converter's mask pixel counts, but the net has no ReadJoint3D "
                       "layer (rhd_data_param) to say where its data is")
    step = next((st for st in found if roles.get("gt_3d") in st.tops), found[0])
    reader = net.layers[step.key]
    lists = [net.layers[st.key] for st in net.plan if isinstance(net.layers[st.key], ReadIndexFromFile)]
    if not lists:
        raise NetError("--protocol rhd needs each row's sample index, but the net has no ReadIndexFromFile layer")
    from layers.hand.rhd.protocol import read_mask_pixels
    data = reader.root, reader.split, bool(reader.packed_path), lists[0].index_list
    read_mask_pixels(*data[:3], np.unique(data[3] // 2))     # a layout without the counts: one line, before the run
    return data


def select_protocol(collected, data, protocol: str):
    """(the rows of the protocol, a note for the table or None)."""
    if protocol == "all":
        return collected, None
    from layers.hand.rhd.protocol import select_dominant
    root, split, packed, index_list = data
    keep, info = select_dominant(collected.index, root, split, packed, index_list)
    note = (f"--protocol rhd: {info['images']} images, each its dominant hand (more mask pixels; a tie: the right "
            f"hand); {info['non_dominant']} other hand(s) left out; {info['dominant_unusable']} image(s) of the "
            f"split whose dominant hand is unusable, not evaluated.")
    return collected.subset(keep), dict(info, note=note)


def run(args) -> int:
    from layers.hand import evaluation
    from nets.net import Net
    net = Net(args.net, phase="TEST", device=args.device, workers=args.workers)
    try:
        if args.dtype == "float64":
            net.double()
        load_or_refuse(net, args.weights, args.random_init)
        roles = evaluation.find_roles(net, {r: getattr(args, r) for r in ROLE_FLAGS})
        evaluation.check_roles(net, roles)
        debug_count = max(args.debug_images, 0)
        problem = evaluation.debug_problem(net, roles) if debug_count else None
        if problem:
            print(f"warning: no debug images: {problem}", file=sys.stderr)
            debug_count = 0
        data = rhd_data(net, roles) if args.protocol == "rhd" else None
        total = args.samples or evaluation.split_size(net)[0]
        bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm
            bar = tqdm(total=total, desc="evaluate", unit="sample", file=sys.stderr)
        collected = evaluation.collect(net, roles, args.samples, debug_count,
                                       progress=bar.update if bar else None)
        if bar:
            bar.close()
    finally:
        net.close()
    collected, info = select_protocol(collected, data, args.protocol)
    row = evaluation.compute_metrics(collected, root=args.root)
    row["protocol"] = args.protocol
    if info is not None:
        row.update(protocol_note=info["note"], non_dominant_left_out=info["non_dominant"],
                   dominant_unusable=info["dominant_unusable"])
    rows = {args.name: row}
    paths = evaluation.save_report(rows, args.out)
    evaluation.write_debug_images(collected.debug, args.out)
    print(evaluation.markdown_table(rows), end="")
    shown = f"wrote {paths['table']}, {paths['json']}, {paths['pck']}"
    if collected.debug:
        heat = sum(1 for item in collected.debug if item[4] is not None)
        shown += (f" and {len(collected.debug)} debug image(s) skeleton_<index>.png" +
                  (f" (+ {heat} heatmaps_<index>.png)" if heat else "") + f" in {args.out}")
    print(shown)
    return 0


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    sys.exit(main())
