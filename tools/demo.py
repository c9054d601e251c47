#!/usr/bin/env python
"""The main job, one command: synthetic RHD -> memo layout -> train rhd_synth_small -> evaluate beside the
mean-pose baseline. Nothing is downloaded.

    python tools/demo.py [--out runs/demo] [--data data] [--train 8000] [--eval 300] [--seed 0]
                         [--max-iter N] [--device cpu|cuda] [--workers N]

Leaves in OUT: train.log (Caffe's log lines), the snapshot (rhd_synth_small_iter_N.caffemodel.h5 and
.solverstate.h5), metrics.md / metrics.json (the trained net beside the baseline), pck.png, and skeleton
overlays and heatmap montages for a few evaluation samples; samples/ (the first SAMPLE_IMAGES evaluation images
as plain PNGs with a boxes.json of their hands' crop boxes, sides and cameras) and avg_bone.txt (the training
set's, beside the weights) for `python tools/predict.py OUT/samples --weights OUT/<snapshot>`. The data goes to
DATA/synth (the release, without its depth maps: nothing here reads them) and DATA/rhd (the memo layout); both
are reused when they already hold a set made with the same arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOLVER = os.path.join(REPO, "prototxt", "rhd_synth_small_solver.prototxt")
TEST_NET = os.path.join(REPO, "prototxt", "rhd_synth_small_test.prototxt")
SAMPLE_IMAGES = 4


class _Tee:
    """Write to the terminal and to the log file."""

    def __init__(self, *streams):
        self.streams = streams

    def write(self, text):
        for s in self.streams:
            s.write(text)
        return len(text)

    def flush(self):
        for s in self.streams:
            s.flush()

    def isatty(self):
        return False


def make_data(data: str, n_train: int, n_eval: int, seed: int, workers: int | None) -> str:
    """The synthetic release and its conversion, reused when made with the same arguments."""
    from layers.hand.rhd.convert import convert, format_summary
    from layers.hand.rhd.memo import atomic_write_bytes
    from layers.hand.rhd.synthetic import make_dataset
    synth, rhd = os.path.join(data, "synth"), os.path.join(data, "rhd")
    stamp_path = os.path.join(data, "demo_data.json")
    stamp = {"train": n_train, "eval": n_eval, "seed": seed}
    if os.path.isfile(stamp_path) and json.load(open(stamp_path)) == stamp and os.path.isdir(rhd):
        print(f"reusing the synthetic set in {data} ({n_train} training / {n_eval} evaluation images)")
        return rhd
    t0 = time.time()
    release = make_dataset(synth, n_train, n_eval, seed, workers=workers, depth=False)   # nothing here reads depth
    print(f"rendered {n_train} + {n_eval} synthetic images in {time.time() - t0:.0f} s")
    t0 = time.time()
    summary = convert(release, rhd, workers=workers)
    print(format_summary(summary))
    print(f"converted in {time.time() - t0:.0f} s")
    atomic_write_bytes(stamp_path, json.dumps(stamp).encode())
    return rhd


def solver_text(rhd: str, out: str, max_iter: int | None) -> str:
    """The committed solver with its nets, data root and snapshot prefix pointed at this run."""
    from netdef.text_format import Field, parse_file, write
    msg = parse_file(SOLVER)
    for f in msg:
        if f.name in ("train_net", "test_net", "net"):
            path = os.path.join(REPO, f.value)
            net_text = open(path).read().replace('"data/rhd', f'"{rhd}')
            target = os.path.join(out, os.path.basename(path))
            with open(target, "w") as g:
                g.write(net_text)
            f.value = target
        elif f.name == "snapshot_prefix":
            f.value = os.path.join(out, "rhd_synth_small")
        elif f.name == "max_iter" and max_iter:
            f.value = max_iter
    if max_iter and "max_iter" not in msg:
        msg.fields.append(Field("max_iter", max_iter))
    return write(msg)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Synthetic RHD -> train rhd_synth_small -> evaluate vs baseline.")
    ap.add_argument("--out", default="runs/demo")
    ap.add_argument("--data", default="data")
    ap.add_argument("--train", type=int, default=8000, help="synthetic training images")
    ap.add_argument("--eval", type=int, default=300, help="synthetic evaluation images")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-iter", type=int, help="override the solver's max_iter")
    ap.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    ap.add_argument("--workers", type=int, default=None,
                    help="processes that render and convert (default: one per core) and that read training batches "
                         "(default: none; the net reads the packed file, faster in the training process)")
    from netdef.errors import add_debug_flag, run_tool
    add_debug_flag(ap)
    args = ap.parse_args(argv)
    return run_tool(lambda: run(args), args.debug)


def run(args) -> int:
    import torch

    from layers.hand import evaluation
    from layers.hand.baseline import read_split_gt
    from nets.net import Net
    from nets.solver import Solver
    from nets.weights import load_weights

    os.makedirs(args.out, exist_ok=True)
    out = os.path.abspath(args.out)
    rhd = os.path.abspath(make_data(args.data, args.train, args.eval, args.seed, args.workers))

    solver_path = os.path.join(out, "solver.prototxt")
    with open(solver_path, "w") as f:
        f.write(solver_text(rhd, out, args.max_iter))
    log_path = os.path.join(out, "train.log")
    t0 = time.time()
    with open(log_path, "w") as log, contextlib.redirect_stdout(_Tee(sys.stdout, log)):
        readers = 0 if args.workers is None else args.workers
        # NHWC: 9 % less time per iteration on synth_small's CPU training (README "How the demo got there")
        with Solver(solver_path, device=args.device, workers=readers, channels_last=True) as solver:
            solver.solve()
            state = solver.last_snapshot        # <prefix>_iter_N.solverstate.h5, beside its weights
    train_s = time.time() - t0
    print(f"trained in {train_s:.0f} s; log: {log_path}")
    weights_path = state.replace(".solverstate.h5", ".caffemodel.h5")

    # the blobs of tools/make_rhd_nets.py's test nets
    names = {"pred_2d": "pred_2d_px", "gt_2d": "gt_2d_px", "pred_3d": "pred_3d", "gt_3d": "joint_3d",
             "visibility": "vis", "clamped": "root_clamped", "ambiguous": "ambiguous",
             "image": "image", "pred_2d_crop": "pred_2d", "gt_2d_crop": "joint_2d"}   # heatmaps: find_roles'
    net = Net(os.path.join(out, os.path.basename(TEST_NET)), phase="TEST", device=args.device, workers=0)
    try:
        load_weights(net, weights_path)
        collected = evaluation.collect(net, names, debug_count=6)
    finally:
        net.close()
    rows = {"rhd_synth_small (trained)": evaluation.compute_metrics(collected)}
    rows["mean-pose baseline"] = baseline_row(collected, read_split_gt(rhd, "training")[1])
    paths = evaluation.save_report(rows, out)
    evaluation.write_debug_images(collected.debug, out)
    table = evaluation.markdown_table(rows)
    ratio = rows["rhd_synth_small (trained)"]["epe_3d_rel_mm"] / rows["mean-pose baseline"]["epe_3d_rel_mm"]
    note = (f"\nTrained on {args.train} synthetic images ({train_s:.0f} s on {torch.get_num_threads()} threads); "
            f"root-relative 3D EPE {ratio:.3f} x the baseline's.\n")
    from layers.hand.rhd.memo import atomic_write_bytes
    atomic_write_bytes(paths["table"], (table + note).encode())
    write_samples(rhd, os.path.join(os.path.abspath(args.data), "synth", "RHD_published_v2"), out)
    print(table + note)
    print(f"outputs in {out}: train.log, {os.path.basename(weights_path)}, metrics.md, pck.png, "
          f"skeleton_*.png, heatmaps_*.png, samples/, avg_bone.txt")
    print(f"predict: python tools/predict.py {os.path.join(args.out, 'samples')} --weights "
          f"{os.path.join(args.out, os.path.basename(weights_path))}")
    return 0


def write_samples(rhd: str, release_root: str, out: str, count: int = SAMPLE_IMAGES) -> None:
    """OUT/samples: the first `count` evaluation images with a usable hand, as the release holds them, and
    boxes.json with each usable hand's crop box (the converter's bbx_*), side and camera K (tools/predict.py's
    format); OUT/avg_bone.txt: the training set's mean bones, beside the weights, where predict looks."""
    import shutil

    from layers.hand.rhd import memo, release
    folder = os.path.join(out, "samples")
    os.makedirs(folder, exist_ok=True)
    shutil.copyfile(memo.avg_bone_path(rhd), os.path.join(out, "avg_bone.txt"))
    usable = {int(i) for i in memo.read_index_list(memo.index_list_path(rhd, "evaluation"))}
    boxes = {}
    for image_id in sorted({i // 2 for i in usable})[:count]:
        name = f"{image_id:05d}.png"
        shutil.copyfile(release.image_path(release_root, "evaluation", "color", image_id), os.path.join(folder, name))
        hands = []
        for idx in (2 * image_id, 2 * image_id + 1):
            if idx in usable:
                box = [int(memo.read_numbers(memo.sample_path(rhd, "evaluation", f, idx), 1, f"sample {idx}",
                                             True)[0]) for f in memo.BBOX_FIELDS]
                hands.append({"crop_box": box, "hand": "left" if idx % 2 == 0 else "right", "sample": int(idx)})
        k = memo.read_numbers(memo.camera_k_path(rhd, "evaluation", image_id), 9, f"image {image_id}")
        boxes[name] = {"K": k.reshape(3, 3).tolist(), "hands": hands}
    memo.atomic_write_bytes(os.path.join(folder, "boxes.json"), json.dumps(boxes, indent=1).encode())


def baseline_row(collected, train_gt_3d):
    """The mean root-relative training pose predicted for every evaluation sample (root-relative numbers only)."""
    from layers.hand import evaluation
    mean = (train_gt_3d - train_gt_3d[:, :1]).mean(axis=0)                    # (21, 3), root at 0
    gt = collected.blobs["gt_3d"].reshape(-1, 21, 3)
    blobs = dict(collected.blobs)
    blobs["pred_3d"] = (gt[:, :1] + mean[None]).reshape(len(gt), -1)          # root-relative: the GT root
    row = evaluation.compute_metrics(evaluation.Collected(collected.index, blobs))
    row.update({"epe_2d_px": None, "epe_3d_abs_mm": None, "clamped_roots": None, "ambiguous_roots": None})
    return row


if __name__ == "__main__":
    sys.exit(main())
