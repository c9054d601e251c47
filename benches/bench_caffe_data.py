"""Caffe's data layers' reading speed: images/s of a net holding only a Data layer (LMDB of Datum records) or an
ImageData layer (image files and a list), with 2 worker processes, against a plain single-process loop over the
same images doing the same work, in the same run.

    python benches/bench_caffe_data.py [--quick] [--workers 2]

Cases (TRAIN phase, so crops and mirrors are drawn as Caffe's DataTransformer draws them in training):
  * LeNet's input: 28x28 gray digits (tools/make_digits.py) in an LMDB of raw Datum records (as
    tools/convert_imageset.py --gray writes them), batch 64, transform_param { scale: 0.00390625 }.
  * ImageNet-style: 256x256 color JPEGs (quality 90), batch 32, transform_param { crop_size: 224 mirror: true
    mean_value: 104 mean_value: 117 mean_value: 123 }, read from an LMDB of encoded Datum records
    (convert_imageset --encoded) and by ImageData from the files.

The baseline is a loop written for speed in one process, as one would write it by hand: read the record (an
LMDB cursor with buffers=True) or the file (cv2.imread), decode it the same way (layers.caffe.datum.decode_datum,
i.e. np.frombuffer or cv2.imdecode), crop/mirror/subtract/scale with numpy slicing into one preallocated
float32 batch, then torch.from_numpy. Both sides start warm (files in the page cache, workers started, the
first batches read) and are timed over the same number of batches; the table's ratio is layer / loop. The
layers are timed with 0 workers (read in the main process: the layer's own cost against the loop's) and 2.

Measured on the 2-core VM (torch 1 intra-op thread; other jobs running, load average ~3), images/s:
  case                                   loop    layer, 0 workers    layer, 2 workers
  Data, 28x28 raw Datum, batch 64       69884    50334 (0.72)        33515 (0.48)
  Data, 256x256 JPEG Datum, crop 224     1589     1301 (0.82)          673 (0.42)
  ImageData, 256x256 JPEG, crop 224      1753     1302 (0.74)          627 (0.36)
In the main process the layers reach 0.72-0.82 of the loop: the same decode (cv2.imdecode is 45% of the time),
plus a per-image transform output stacked into the batch (the loop writes straight into it). Workers lose on
this busy 2-core machine, as in bench_data: the hand-off of each batch costs more than the reading they take
over when the net does nothing else; in training the net's work overlaps them.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

MEAN = (104.0, 117.0, 123.0)
CROP = 224


def _tool(name):
    spec = importlib.util.spec_from_file_location(f"{name}_tool", os.path.join(ROOT, "tools", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ---- data --------------------------------------------------------------------------------------------------

def make_digits(folder: str, count: int) -> tuple[str, str]:
    """(root/, list) of `count` 28x28 digits and an LMDB of them (raw gray Datum); returns (lmdb, list)."""
    digits = os.path.join(folder, "digits")
    train_list, _ = _tool("make_digits").make(digits, count, 0, seed=0)
    db = os.path.join(folder, "digits_lmdb")
    _quiet(_tool("convert_imageset").main, ["--gray", digits + "/", train_list, db])
    return db, train_list


def make_photos(folder: str, count: int) -> tuple[str, str, str]:
    """`count` 256x256 color JPEGs (smooth color fields with shapes, so JPEG sizes are photo-like); returns
    (root/, list file, LMDB of encoded Datum)."""
    import cv2
    rng = np.random.default_rng(0)
    root = os.path.join(folder, "photos")
    os.makedirs(root, exist_ok=True)
    yy, xx = np.mgrid[0:256, 0:256].astype(np.float32) / 255
    lines = []
    for i in range(count):
        a = rng.uniform(0, 255, size=(3, 3))
        img = np.stack([a[c, 0] + (a[c, 1] - a[c, 0]) * xx + (a[c, 2] - a[c, 0]) * yy / 2 for c in range(3)], -1)
        img = np.clip(img + rng.normal(0, 12, size=img.shape), 0, 255).astype(np.uint8)
        for _ in range(6):
            color = tuple(int(v) for v in rng.integers(0, 256, 3))
            center = tuple(int(v) for v in rng.integers(0, 256, 2))
            cv2.circle(img, center, int(rng.integers(10, 60)), color, -1, cv2.LINE_AA)
        name = f"{i:05d}.jpg"
        cv2.imwrite(os.path.join(root, name), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
        lines.append(f"{name} {i % 1000}\n")
    listfile = os.path.join(folder, "photos.txt")
    with open(listfile, "w") as f:
        f.writelines(lines)
    db = os.path.join(folder, "photos_lmdb")
    _quiet(_tool("convert_imageset").main, ["--encoded", root + "/", listfile, db])
    return root + "/", listfile, db


def _quiet(fn, argv):
    import contextlib
    import io
    with contextlib.redirect_stdout(io.StringIO()):
        if fn(argv) != 0:
            raise RuntimeError(f"convert_imageset {' '.join(argv)} failed")


# ---- the layers ---------------------------------------------------------------------------------------------

def data_net_text(source: str, batch: int, transform: str) -> str:
    return (f'name: "bench"\nlayer {{ name: "data" type: "Data" top: "data" top: "label"\n'
            f'  transform_param {{ {transform} }}\n'
            f'  data_param {{ source: "{source}" batch_size: {batch} backend: LMDB }} }}\n')


def image_data_net_text(root: str, listfile: str, batch: int, transform: str) -> str:
    return (f'name: "bench"\nlayer {{ name: "data" type: "ImageData" top: "data" top: "label"\n'
            f'  transform_param {{ {transform} }}\n'
            f'  image_data_param {{ source: "{listfile}" root_folder: "{root}" batch_size: {batch} }} }}\n')


def layer_rate(text: str, batches: int, batch: int, workers: int) -> float:
    """images/s of Net(text).forward() in TRAIN, after 3 warm-up batches."""
    import torch
    from nets.net import Net
    net = Net(text, phase="TRAIN", device="cpu", workers=workers)
    try:
        with torch.no_grad():
            for _ in range(3):
                net.forward()
            t0 = time.perf_counter()
            for _ in range(batches):
                net.forward()
            return batches * batch / (time.perf_counter() - t0)
    finally:
        net.close()


# ---- the baseline loop -------------------------------------------------------------------------------------

class Transform:
    """transform_param's work in numpy, into a preallocated batch: (x[crop] - mean) * scale, mirrored."""

    def __init__(self, batch: int, shape: tuple, crop: int = 0, mirror: bool = False, mean=None,
                 scale: float = 1.0, seed: int = 0):
        c, h, w = shape
        self.crop, self.mirror, self.scale = crop, mirror, np.float32(scale)
        self.mean = None if mean is None else np.asarray(mean, np.float32).reshape(-1, 1, 1)
        out_h, out_w = (crop, crop) if crop else (h, w)
        self.out = np.empty((batch, c, out_h, out_w), np.float32)
        self.rng = np.random.default_rng(seed)

    def put(self, i: int, x: np.ndarray) -> None:
        if self.crop:
            h_off = int(self.rng.integers(x.shape[1] - self.crop + 1))
            w_off = int(self.rng.integers(x.shape[2] - self.crop + 1))
            x = x[:, h_off:h_off + self.crop, w_off:w_off + self.crop]
        if self.mirror and self.rng.integers(2):
            x = x[:, :, ::-1]
        dst = self.out[i]
        if self.mean is not None:
            np.subtract(x, self.mean, out=dst, dtype=np.float32)
            if self.scale != 1:
                dst *= self.scale
        else:
            np.multiply(x, self.scale, out=dst, dtype=np.float32)


def loop_rate_lmdb(db: str, batches: int, batch: int, transform: Transform) -> float:
    """images/s of the hand loop over the LMDB (cycling), after one warm-up batch."""
    import lmdb
    import torch
    from layers.caffe.datum import decode_datum
    env = lmdb.open(db, readonly=True, lock=False, readahead=False)
    labels = np.empty(batch, np.float32)
    try:
        with env.begin(buffers=True) as txn:
            cursor = txn.cursor()
            cursor.first()

            def one_batch():
                for i in range(batch):
                    if not cursor.next():
                        cursor.first()
                    x, labels[i] = decode_datum(cursor.value(), "bench")
                    transform.put(i, x)
                return torch.from_numpy(transform.out), torch.from_numpy(labels)
            one_batch()
            t0 = time.perf_counter()
            for _ in range(batches):
                one_batch()
            return batches * batch / (time.perf_counter() - t0)
    finally:
        env.close()


def loop_rate_files(root: str, listfile: str, batches: int, batch: int, transform: Transform) -> float:
    """images/s of the hand loop over the image files (cv2.imread, color), after one warm-up batch."""
    import cv2
    import torch
    entries = [(root + line.rsplit(" ", 1)[0], int(line.rsplit(" ", 1)[1])) for line in
               open(listfile).read().splitlines() if line.strip()]
    labels = np.empty(batch, np.float32)
    pos = [0]

    def one_batch():
        for i in range(batch):
            path, labels[i] = entries[pos[0] % len(entries)]
            pos[0] += 1
            transform.put(i, cv2.imread(path, cv2.IMREAD_COLOR).transpose(2, 0, 1))
        return torch.from_numpy(transform.out), torch.from_numpy(labels)
    one_batch()
    t0 = time.perf_counter()
    for _ in range(batches):
        one_batch()
    return batches * batch / (time.perf_counter() - t0)


# ---- the run -----------------------------------------------------------------------------------------------

def run(quick: bool = False, workers=(0, 2)) -> list[dict]:
    """Rows {case, layer, workers, layer_rate, loop_rate} (images/s), one per case and worker count; the loop is
    timed once per case, right before the layer."""
    import tempfile
    n_digits, n_photos = (256, 64) if quick else (4000, 600)
    digit_batches, photo_batches = (2, 2) if quick else (150, 40)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_caffe_data_") as tmp:
        digits_db, _ = make_digits(tmp, n_digits)
        root, listfile, photos_db = make_photos(tmp, n_photos)
        scale = "scale: 0.00390625"
        imagenet = f"crop_size: {CROP} mirror: true " + " ".join(f"mean_value: {m:g}" for m in MEAN)
        cases = [
            ("LeNet 28x28 gray, raw Datum, batch 64", "Data",
             data_net_text(digits_db, 64, scale), 64, digit_batches,
             lambda b, n: loop_rate_lmdb(digits_db, n, b, Transform(b, (1, 28, 28), scale=1 / 256))),
            ("256x256 JPEG, encoded Datum, crop 224 + mirror + mean, batch 32", "Data",
             data_net_text(photos_db, 32, imagenet), 32, photo_batches,
             lambda b, n: loop_rate_lmdb(photos_db, n, b, Transform(b, (3, 256, 256), CROP, True, MEAN))),
            ("256x256 JPEG files, crop 224 + mirror + mean, batch 32", "ImageData",
             image_data_net_text(root, listfile, 32, imagenet), 32, photo_batches,
             lambda b, n: loop_rate_files(root, listfile, n, b, Transform(b, (3, 256, 256), CROP, True, MEAN))),
        ]
        for case, layer, text, batch, batches, loop in cases:
            base = loop(batch, batches)
            for w in workers:
                value = layer_rate(text, batches, batch, w)
                rows.append({"case": case, "layer": layer, "workers": w, "layer_rate": value, "loop_rate": base})
    return rows


def rows(quick: bool = False) -> list[dict]:
    """The common table's rows (benches/_common.row): the layer with 0 and 2 workers vs the loop, images/s."""
    from _common import cpu_name, row
    return [row("caffe_data", f"{r['layer']}: {r['case']}, {r['workers']} workers", cpu_name(), "images/s",
                "numpy loop, 1 process", r["loop_rate"], r["layer_rate"]) for r in run(quick)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="few images and batches (checks that it runs)")
    ap.add_argument("--workers", default="0,2", help="worker counts to time the layers with (default 0,2)")
    args = ap.parse_args(argv)
    rows = run(args.quick, [int(w) for w in args.workers.split(",")])
    print("| layer | case | workers | layer images/s | loop images/s | ratio |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['layer']} | {r['case']} | {r['workers']} | {r['layer_rate']:.0f} | {r['loop_rate']:.0f} | "
              f"{r['layer_rate'] / r['loop_rate']:.2f} |")
    print(f"\n{os.cpu_count()} CPU cores; files in the page cache.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
