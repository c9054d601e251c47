"""Runs the benches and prints one markdown table (each row: a measurement against its baseline from the same
run, their ratio, and the issue's goal where it sets one), then a line naming the machine.

    python benches/run_all.py                          # all: overhead, gt, data, pipeline, train, soak, caffe_data
    python benches/run_all.py --quick                  # small batches and repeats: checks that all runs
    python benches/run_all.py --only overhead,train --out benches.md

Columns: bench | case | device | baseline (what it is: value and unit) | value (same unit) | ratio (value /
baseline) | goal | met. The benches (benches/bench_*.py) say what they measure and how in their docstrings.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import cpu_name, machine_line, make_converted, markdown, row, temp_dir  # noqa: E402

BENCHES = ("overhead", "gt", "data", "pipeline", "train", "soak", "caffe_data")
GT_GOAL_SPEEDUP = 20.0                           # bench_gt's goal (issue 6)
DATA_GOAL_RATE, DATA_GOAL_RATIO = 400.0, 10.0   # issue 3: packed with 2 workers; packed vs text, serially


def _overhead(quick: bool) -> list[dict]:
    import bench_overhead
    return bench_overhead.run(quick)


def _gt(quick: bool) -> list[dict]:
    import bench_gt
    rows = bench_gt.run(repeats=3 if quick else 20)
    # a time: ratio = layers / numpy, so the ">= 20x faster" is a ratio <= 0.05
    return [row("gt", f"{r['bench']}, batch {r.get('batch', bench_gt.BATCH)}", r["device"], "ms", "numpy loop",
                r["baseline_ms"], r["layers_ms"], f"ratio ≤ {1 / GT_GOAL_SPEEDUP:.2f} (≥ {GT_GOAL_SPEEDUP:.0f}x)",
                r["layers_ms"] * GT_GOAL_SPEEDUP <= r["baseline_ms"]) for r in rows]


def _data(quick: bool) -> list[dict]:
    import bench_data
    with temp_dir() as tmp:
        root = make_converted(tmp, num_train=2, num_eval=16) if quick else None
        rows = bench_data.run(root, batches=2 if quick else 15, batch_size=4 if quick else 32)
    base = rows[0]["samples/s"]
    out = []
    for r in rows:
        rate = r["samples/s"]
        goal, met = "", None
        if r["layout"] == "packed HDF5" and r["workers"] == 2:
            goal, met = f"value ≥ {DATA_GOAL_RATE:.0f} samples/s", rate >= DATA_GOAL_RATE
        elif r["layout"] == "packed HDF5" and r["workers"] == 0:     # serial vs serial
            goal, met = f"ratio ≥ {DATA_GOAL_RATIO:.0f} (issue 3)", rate / base >= DATA_GOAL_RATIO
        out.append(row("data", f"steps 1-11, {r['layout']}, {r['workers']} workers", cpu_name(), "samples/s",
                       "text files, serial", base, rate, goal, met))
    return out


def _pipeline(quick: bool) -> list[dict]:
    import bench_pipeline
    return bench_pipeline.run(quick)


def _train(quick: bool) -> list[dict]:
    import bench_train
    return bench_train.run(quick)


def _soak(quick: bool) -> list[dict]:
    import bench_soak
    return bench_soak.run(quick)


def _caffe_data(quick: bool) -> list[dict]:
    import bench_caffe_data
    return bench_caffe_data.rows(quick)


RUNNERS = {"overhead": _overhead, "gt": _gt, "data": _data, "pipeline": _pipeline, "train": _train, "soak": _soak,
           "caffe_data": _caffe_data}


def run(only=BENCHES, quick: bool = False, log=None, failed: list | None = None) -> list[dict]:
    """Rows of the benches in `only`. With a `failed` list, a bench that raises is recorded there (name,
    error) and the others still run; without one the error propagates."""
    rows = []
    for name in only:
        t0 = time.perf_counter()
        try:
            rows += RUNNERS[name](quick)
        except Exception as e:
            if failed is None:
                raise
            failed.append((name, f"{type(e).__name__}: {e}"))
        if log is not None:
            log(f"{name}: {time.perf_counter() - t0:.0f} s")
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small batches and repeats (checks the benches run; "
                                                         "the numbers mean little)")
    ap.add_argument("--only", default=",".join(BENCHES), help=f"comma-separated subset of {','.join(BENCHES)}")
    ap.add_argument("--out", help="also write the table and machine line to this markdown file")
    args = ap.parse_args(argv)
    only = [b.strip() for b in args.only.split(",") if b.strip()]
    unknown = [b for b in only if b not in RUNNERS]
    if unknown:
        ap.error(f"unknown bench '{unknown[0]}' (choose from {', '.join(BENCHES)})")
    failed: list = []
    rows = run(only, args.quick, log=lambda m: print(m, file=sys.stderr), failed=failed)
    text = markdown(rows) + "\n\n" + machine_line() + ("\n\n(--quick: small batches and repeats)" if args.quick
                                                       else "") + "\n"
    text += "".join(f"\nFAILED: {name}: {err}\n" for name, err in failed)
    print(text, end="")
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
