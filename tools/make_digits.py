#!/usr/bin/env python
"""Render MNIST-like handwritten-looking digits: 28x28 gray PNGs, white on black, for the LeNet check.

    python tools/make_digits.py OUT_DIR [--train 60000] [--test 10000] [--seed 0]

Writes OUT_DIR/train/NNNNN.png, OUT_DIR/test/NNNNN.png and the list files OUT_DIR/train.txt and
OUT_DIR/test.txt (`train/00000.png 7`, the format tools/convert_imageset.py reads). Labels cycle 0-9 so the
classes are balanced. Each digit is drawn with cv2.putText in one of OpenCV's seven Hershey fonts (plain,
simplex, duplex, complex, triplex, script simplex, script complex, some in italic), a random thickness
and scale, on a 96x96 canvas; then, as MNIST was made, its bounding box is scaled to fit 20x20 (aspect kept),
it is rotated by up to +-15 degrees, sheared, squeezed or stretched in width and elastically distorted
(a smooth random displacement field, bicubic from a 5x5 grid of random offsets, after Simard et al.
2003), placed by its center of mass in the middle of the
28x28 image and shifted by up to +-2 pixels. The train and test sets are drawn from different random streams
(seed and seed + 1), so no test image is a train image.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from netdef.errors import NetError, add_debug_flag, run_tool  # noqa: E402

SIZE = 28
BOX = 20
CANVAS = 96
ELASTIC = 5.0          # the distortion's displacement at its control points, canvas pixels (~2 px in 28x28)


_GRID = np.dstack(np.meshgrid(np.arange(CANVAS, dtype=np.float32), np.arange(CANVAS, dtype=np.float32)))


def _fonts():
    import cv2
    base = [cv2.FONT_HERSHEY_PLAIN, cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_COMPLEX,
            cv2.FONT_HERSHEY_TRIPLEX, cv2.FONT_HERSHEY_SCRIPT_SIMPLEX, cv2.FONT_HERSHEY_SCRIPT_COMPLEX]
    return base + [f | cv2.FONT_ITALIC for f in base[1:5]]


def render_digit(digit: int, rng):
    """One 28x28 uint8 image of `digit` (numpy Generator `rng` draws the style)."""
    import cv2
    import numpy as np
    fonts = _fonts()
    font = fonts[rng.integers(len(fonts))]
    scale = rng.uniform(1.6, 2.6)
    thickness = int(rng.integers(2, 7))
    canvas = np.zeros((CANVAS, CANVAS), np.uint8)
    (w, h), _ = cv2.getTextSize(str(digit), font, scale, thickness)
    org = ((CANVAS - w) // 2, (CANVAS + h) // 2)
    cv2.putText(canvas, str(digit), org, font, scale, 255, thickness, cv2.LINE_AA)
    # rotation, shear and a width squeeze or stretch about the canvas center
    angle = rng.uniform(-15, 15)
    m = cv2.getRotationMatrix2D((CANVAS / 2, CANVAS / 2), angle, 1.0)
    m[0, :2] *= rng.uniform(0.75, 1.15)
    m[0, 1] += rng.uniform(-0.25, 0.25)
    m[0, 2] = CANVAS / 2 - m[0, 0] * CANVAS / 2 - m[0, 1] * CANVAS / 2
    canvas = cv2.warpAffine(canvas, m, (CANVAS, CANVAS), flags=cv2.INTER_LINEAR)
    # an elastic distortion (Simard et al. 2003): a smooth random displacement field, up to a few pixels
    coarse = rng.uniform(-ELASTIC, ELASTIC, size=(5, 5, 2)).astype(np.float32)    # (dx, dy) on a 5x5 grid
    field = cv2.resize(coarse, (CANVAS, CANVAS), interpolation=cv2.INTER_CUBIC) + _GRID
    canvas = cv2.remap(canvas, field[..., 0], field[..., 1], cv2.INTER_LINEAR)
    ys, xs = np.nonzero(canvas > 20)
    if ys.size == 0:
        raise NetError(f"digit {digit} rendered empty")
    crop = canvas[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    ch, cw = crop.shape
    f = BOX / max(ch, cw)
    nh, nw = max(1, round(ch * f)), max(1, round(cw * f))
    small = cv2.resize(crop, (nw, nh), interpolation=cv2.INTER_AREA)
    # center of mass to the middle, plus a random shift
    yy, xx = np.mgrid[0:nh, 0:nw]
    mass = small.astype(np.float64)
    total = mass.sum()
    cy, cx = (yy * mass).sum() / total, (xx * mass).sum() / total
    dy, dx = rng.uniform(-2, 2, size=2)
    shift = np.float64([[1, 0, SIZE / 2 - cx + dx - 0.5], [0, 1, SIZE / 2 - cy + dy - 0.5]])
    return cv2.warpAffine(small, shift, (SIZE, SIZE), flags=cv2.INTER_LINEAR)


def write_set(out_dir: str, name: str, count: int, seed: int) -> str:
    """Render `count` digits (labels 0-9 in turn) to out_dir/name/NNNNN.png; returns the list file's path."""
    import cv2
    import numpy as np
    rng = np.random.default_rng(seed)
    folder = os.path.join(out_dir, name)
    os.makedirs(folder, exist_ok=True)
    lines = []
    for i in range(count):
        label = i % 10
        rel = f"{name}/{i:05d}.png"
        if not cv2.imwrite(os.path.join(out_dir, rel), render_digit(label, rng)):
            raise NetError(f"cannot write '{os.path.join(out_dir, rel)}'")
        lines.append(f"{rel} {label}\n")
    listfile = os.path.join(out_dir, f"{name}.txt")
    with open(listfile, "w") as f:
        f.writelines(lines)
    return listfile


def make(out_dir: str, train: int, test: int, seed: int) -> tuple:
    """(train list file, test list file)."""
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise NetError(f"cannot create '{out_dir}': {e.strerror or e}") from None
    return write_set(out_dir, "train", train, seed), write_set(out_dir, "test", test, seed + 1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="make_digits.py", description="Render MNIST-like digit images.")
    ap.add_argument("out", metavar="OUT_DIR")
    ap.add_argument("--train", type=int, default=60000, help="training images (default 60000, as MNIST)")
    ap.add_argument("--test", type=int, default=10000, help="test images (default 10000, as MNIST)")
    ap.add_argument("--seed", type=int, default=0)
    add_debug_flag(ap)
    args = ap.parse_args(argv)

    def body():
        tr, te = make(args.out, args.train, args.test, args.seed)
        print(f"wrote {args.train} train and {args.test} test digits, lists '{tr}' and '{te}'")
        return 0
    return run_tool(body, args.debug)


if __name__ == "__main__":
    sys.exit(main())
