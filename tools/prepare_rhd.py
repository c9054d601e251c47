#!/usr/bin/env python
"""Convert the official RHD release into the memo's layout plus packed HDF5 files (layers/hand/rhd/convert.py).

    python tools/prepare_rhd.py --rhd-root DIR/RHD_published_v2 --out OUT [--workers K] [--splits training evaluation]

Safe to interrupt and run again: it finishes what is missing. The summary table goes to stdout, the progress bar
(only on a terminal) to stderr. A user error prints one line `error: <message>` and exits with status 2.
"""

import argparse
import os
import sys

# Runs from a checkout without installing: the repository root holds the layers and nets packages.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from layers.hand.rhd import convert, memo  # noqa: E402
from nets.cli import positive_int  # noqa: E402
from netdef.errors import add_debug_flag, run_tool  # noqa: E402


def _parser():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rhd-root", required=True, metavar="DIR", help="the release's RHD_published_v2 folder")
    ap.add_argument("--out", required=True, metavar="OUT", help="output root (memo layout + packed.h5 files)")
    ap.add_argument("--workers", type=positive_int, default=os.cpu_count() or 1, metavar="K",
                    help="worker processes (default: all cores, %(default)s here)")
    ap.add_argument("--splits", nargs="+", choices=memo.SPLITS, default=list(memo.SPLITS),
                    help="splits to convert (default: both)")
    add_debug_flag(ap)
    return ap


def main(argv=None) -> int:
    args = _parser().parse_args(argv)

    def prepare() -> int:
        summary = convert.convert(args.rhd_root, args.out, args.splits, args.workers, progress=sys.stderr.isatty())
        print(convert.format_summary(summary))
        return 0
    return run_tool(prepare, args.debug, "interrupted by Ctrl-C: run the same command again to finish")


if __name__ == "__main__":
    sys.exit(main())
