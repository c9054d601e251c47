#!/usr/bin/env python
"""Write a synthetic RHD dataset in the official release's format (SPEC section 2).

    python tools/make_synthetic_rhd.py --out DIR --train N --eval M --seed S [--workers K]

writes DIR/RHD_published_v2/{training,evaluation}/{color,mask,depth}/%05d.png and anno_*.pickle. The images
depend only on the seed (not on --workers). See layers/hand/rhd/synthetic.py for the model and the renderer.
A user error prints one line, `error: <message>`, and exits with status 2.
"""

import argparse
import os
import sys
import time

# Runs from a checkout without installing: the repository root holds the layers and nets packages.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from layers.hand.rhd.synthetic import make_dataset  # noqa: E402
from netdef.errors import add_debug_flag, run_tool  # noqa: E402


def _count(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got '{text}'")
    return n


def _positive(text: str) -> int:
    n = _count(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'")
    return n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="make_synthetic_rhd.py",
                                 description="Write a synthetic RHD dataset in the official release's format.")
    ap.add_argument("--out", required=True, metavar="DIR", help="output folder (RHD_published_v2 goes inside)")
    ap.add_argument("--train", type=_count, required=True, metavar="N", help="number of training images")
    ap.add_argument("--eval", type=_count, required=True, metavar="M", help="number of evaluation images")
    ap.add_argument("--seed", type=_count, default=0, metavar="S", help="random seed (default 0)")
    ap.add_argument("--workers", type=_positive, default=None, metavar="K",
                    help="worker processes (default: the number of CPUs)")
    add_debug_flag(ap)
    args = ap.parse_args(argv)
    return run_tool(lambda: _make(args), args.debug,
                    "interrupted by Ctrl-C: the release is incomplete, run the same command again")


def _make(args) -> int:
    from tqdm import tqdm
    start = time.perf_counter()
    with tqdm(total=args.train + args.eval, desc="images", file=sys.stderr, disable=not sys.stderr.isatty(),
              leave=False) as bar:
        root = make_dataset(args.out, args.train, args.eval, args.seed, workers=args.workers,
                            progress=bar.update)
    seconds = time.perf_counter() - start
    print(f"wrote {args.train} training and {args.eval} evaluation images to {root} in {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
