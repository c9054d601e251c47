"""Whole pipeline vs the network alone: per-iteration time of the full rhd_latent25d TEST net (the memo's 19
steps: data reading in worker processes, ground truth, network, reconstruction, metrics; source layers reading
a synthetic converted set) against the network part alone fed a ready image batch (benches/_common.py), both
under no_grad, batch 32, CPU. ratio = full / network alone. Goal (issue 6): <= 1.05, since the data stage runs
ahead in worker processes.

    python benches/bench_pipeline.py [--quick] [--workers N]
    from benches.bench_pipeline import run

The two run in alternating blocks (the full net's prefetch queue refills during its own block, so the workers'
CPU use lands where it belongs); medians per forward. quick: batch 2, 2 per block.

Measured on a 2-core AMD EPYC (KVM), torch 2.13 CPU, 2 threads, 2 data workers, batch 32 (benches/run_all.py,
idle machine): network alone 4.26 s / batch, full pipeline 4.09 s / batch, ratio 0.96 (goal met; the full net
is not really faster: the blocks differ by run-to-run noise, +-5% here). Reading, cropping and the ground
truth for 32 samples take ~25 ms of CPU in the workers (bench_data: ~1300 samples/s on 2 cores), under 1% of
the network's time on the same two cores; the steps after the network (reconstruction, metrics on (32, 21)
poses) are negligible.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import (TEST_NET, cpu_name, make_converted, markdown, network_net, prototxt_for, row,  # noqa: E402
                     temp_dir)

GOAL = 1.05


def _block_ms(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def run(quick: bool = False, batch: int | None = None, repeats: int | None = None, blocks: int = 2,
        workers: int | None = None, root: str | None = None) -> list[dict]:
    """`repeats`: forwards per block (default 3; quick 2), `blocks`: alternations; `root`: a converted set
    (default: a synthetic one made in a temporary folder)."""
    from nets.net import Net
    batch = batch or (2 if quick else 32)
    repeats = repeats or (2 if quick else 3)
    with temp_dir() as tmp:
        root = root or make_converted(tmp, num_train=2, num_eval=max(8, batch // 2) if quick else 40)
        full = Net(prototxt_for(TEST_NET, root, **{"batch_size: 32": f"batch_size: {batch}"}), phase="TEST",
                   device="cpu", workers=workers)
        try:
            alone = network_net(batch)
            image = torch.rand(batch, 3, 128, 128) * 255
            times = {"alone": [], "full": []}
            with torch.no_grad():
                full.forward()          # starts the workers
                alone.forward(image=image)
                for i in range(blocks):
                    for name in (("alone", "full") if i % 2 == 0 else ("full", "alone")):
                        fn = full.forward if name == "full" else (lambda: alone.forward(image=image))
                        times[name] += _block_ms(fn, repeats)
            n_workers = full.source.workers
        finally:
            full.close()
    base, value = statistics.median(times["alone"]), statistics.median(times["full"])
    return [row("pipeline", f"full test net (19 steps), batch {batch}, {n_workers} workers", cpu_name(), "ms",
                "network alone", base, value, f"ratio ≤ {GOAL}", value / base <= GOAL)]


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="batch 2, few repeats")
    ap.add_argument("--workers", type=int, help="data worker processes (default: the Net's default)")
    args = ap.parse_args()
    print(markdown(run(args.quick, workers=args.workers)))
