"""Training throughput (images/s) of rhd_latent25d_train (prototxt/rhd_latent25d_solver.prototxt: Adam, batch 32)
with nets.solver.Solver, against the plain PyTorch loop one would write for the same training, on a synthetic
converted set. ratio = Solver / plain loop: what the framework costs over hand-written PyTorch with the same
data feed (the graph's dispatch, the Solver's bookkeeping and its Caffe Adam rule against torch's fused Adam).
On a GPU it adds Solver rows with mixed precision (amp="auto") and channels_last, each against the Solver's
float32 row.

    python benches/bench_train.py [--quick]
    from benches.bench_train import run

The plain loop is the Solver's training with everything else equal:
  - the same data path: a Net of the train net's data layers alone (GenRandIndex, the readers, HandScale,
    NormalizedRootDepth) draws the same index stream from the same converted set through the same source stage
    (2 worker processes, the same prefetch), so both train on the same batches;
  - the same network and start: the hand-written module of benches/_common.py (the network's ops in one
    forward), from the weights the Solver's train net starts with (same random_seed, same fillers): the two
    give the same first loss and stay within 0.1% of each other over the next few iterations;
  - the same losses (64 * L1 on the 2D pose + 6 * L1 on the root-relative depths, each / batch) and
    hyper-parameters, with torch.optim.Adam(fused=True) (on 22.5M parameters, 2 threads: fused 67 ms, foreach
    133 ms, the default single-tensor 246 ms; the Solver's rule 222 ms);
  - the same process state: one process, the same intra-op threads, the same allocator settings from before
    either is built (nets.perf.heap_never_trimmed: the project's keep_freed_memory plus no heap trimming);
    every data worker started (forked) before any warm-up; a warm-up round; then `rounds` rounds of `iters`
    iterations each in alternating order (A B, B A, ...). The row gives the best round of each (as
    interleaved_ms), and "rounds" / "faults" the images/s and minor page faults of every round.

quick: batch 2, two rounds of 1 iteration (checks that it runs; the figure means little).

Measured on a 2-core Intel Xeon VM (KVM), torch 2.13 CPU, 2 threads, batch 32, 4 rounds of 2 iterations,
started at load average 1.0 and 0.1 (the bench's own threads are the rest): plain loop 3.33 / 3.17 images/s
(rounds 3.26-3.33 / 3.08-3.17), Solver 3.40 / 3.19 (3.08-3.40 / 3.02-3.19), ratio 1.02 / 1.005: the
framework costs nothing measurable at batch 32. No minor faults in a round beyond 0.07-0.12M (the heap still
growing to the Solver's peak: it keeps net.blobs of the previous iteration through the next forward, ~11 GB
resident for the two). --quick (batch 2), three runs: 2.83 / 2.86 / 2.93 against 2.66 / 2.63 / 2.79, ratio
0.92-0.95; a profile puts ~40 ms of the ~50 ms per iteration (of ~700) in the Solver's update rule (Caffe's
Adam, ~10 tensor ops per parameter, against one fused kernel); the rest is the same ops, within a few %.

What the old comparison measured instead (Solver 1.15x at batch 32 and 2.1x with --quick in the README's run;
the plain loop trained a fixed uniform-noise batch with torch's default Adam, built before the Solver, started
no workers, and timed first after the Solver's warm-up):
  - page faults, at batch 32. keep_freed_memory() sets glibc's trim threshold to 2 GiB, below a batch-32
    step's ~8 GB working set: when a step ended with more than that free at the heap's top, glibc returned it
    and the next step faulted it back in. Replaying the old bench at load ~1: 0.9-2.4M minor faults and 3-13 s
    of system time per 2-iteration round in both variants, how many depending on the heap's layout, so on the
    variant and the round, and the round's speed followed them (plain 2.80 / 2.54 / 2.40 images/s at 2.9 /
    6.9 / 12.8 s of system time; Solver 1.87-2.59): per round, Solver / plain ranged 0.81-1.07 in these
    replays of the same code, so the README's 1.15 says nothing about the Solver. The same replay with
    trimming disabled: once the heap had grown to both variants' peak, rounds without faults ran at 2.97-3.07
    images/s, either variant. (For nets/perf.py: mallopt(M_TRIM_THRESHOLD, -1) would disable trimming for
    every user, not only here.)
  - copy-on-write, with --quick. The Solver's warm-up forked its data workers; the plain loop's single timed
    iteration, next, then paid a copy-on-write fault on each heap page it wrote (86-91k faults, 2.1-2.4 s of
    system time: 1.9-2.1 s instead of 0.9 s), the Solver's (0.73-0.80 s) nothing: ratio 2.4-2.6 replayed.
  - the rest is small: the noise batch cost 0-4% more CPU time than rendered crops (forward+backward, one
    thread, batch 4, three runs; MAX pooling's branchy CPU kernel is 1.2x slower on noise; no op output is
    subnormal on either, and the ReLU sparsity is the same, ~50%), and torch's default Adam costs about what
    the Solver's rule does.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import (LAYER_BLOCK, ROOT, SOLVER, HandNet, bench_solver_text, device_name, devices,  # noqa: E402
                     make_converted, markdown, prototxt_for, row, sync)
from nets.perf import heap_never_trimmed  # noqa: E402  (the repository root is on the path now)

TRAIN_NET = os.path.join(ROOT, "prototxt", "rhd_latent25d_train.prototxt")
# the network's input scaling (the hand-written module does it) and the Silence of the unused depth_01
_NOT_DATA = ("image_01", "silence")


def _train_text(root: str, batch: int) -> str:
    return prototxt_for(TRAIN_NET, root, **{"batch_size: 32": f"batch_size: {batch}"})


def data_part_text(train_text: str) -> str:
    """The train net's data layers alone: those computed from the data sources only (index, readers,
    HandScale, NormalizedRootDepth), without image_01 (the network's first layer) and the Silence. Its
    outputs: image, joint_2d, depth_01, depth_zr."""
    have: set[str] = set()
    kept = []
    for block in LAYER_BLOCK.findall(train_text):
        name = re.search(r'^  name: "(.*)"', block, re.M).group(1)
        bottoms = re.findall(r'^  bottom: "(.*)"', block, re.M)
        if name not in _NOT_DATA and all(b in have for b in bottoms):
            kept.append(block)
            have.update(re.findall(r'^  top: "(.*)"', block, re.M))
    return 'name: "rhd_latent25d_data"\n' + "".join(kept)


class _SolverStep:
    """Solver.step on the converted set (data read by worker processes)."""

    def __init__(self, text: str, dev: str, **options):
        from nets.solver import Solver
        self.solver = Solver(text, device=dev, **options)

    def start(self) -> None:
        """Start the data workers (draws one batch, as _PlainStep.start does)."""
        self.solver.train_net.source.next_batch()

    def __call__(self, n: int) -> None:
        self.solver.step(n)
        # net.blobs keeps the last pass for inspection (GBs at batch 32); with several solvers alive at once
        # that adds up, and the plain loop keeps nothing either
        self.solver.train_net.blobs = {}

    def close(self) -> None:
        self.solver.close()


class _PlainStep:
    """A plain PyTorch loop: the same batches (the train net's data layers, through the same source stage), the
    hand-written module from the Solver's initial weights, torch.optim.Adam, the same L1 losses."""

    def __init__(self, train_text: str, dev: str, batch: int, seed: int = 0):
        from nets.net import Net
        from nets.solver.state import seed_all
        seed_all(seed)       # as the Solver does before building its nets: the same fillers' draws...
        start = Net(train_text, phase="TRAIN", device=dev, workers=0)
        self.hand = HandNet(start).to(dev).train()
        del start
        seed_all(seed)       # ... and the same index stream (GenRandIndex seeds from torch's initial seed)
        self.data = Net(data_part_text(train_text), phase="TRAIN", device=dev)
        self.opt = torch.optim.Adam(self.hand.parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-8, fused=True)
        self.batch = batch

    def start(self) -> None:
        """Start the data workers (draws one batch, as _SolverStep.start does)."""
        self.data.source.next_batch()

    def __call__(self, n: int) -> None:
        for _ in range(n):
            with torch.no_grad():
                b = self.data.forward()
            self.opt.zero_grad(set_to_none=True)
            out = self.hand(b["image"])
            loss = (64 * (out["pred_2d"] - b["joint_2d"]).abs().sum()
                    + 6 * (out["pred_zr"] - b["depth_zr"]).abs().sum()) / self.batch
            loss.backward()
            self.opt.step()

    def close(self) -> None:
        self.data.close()


def _minor_faults() -> int:
    try:
        import resource
    except ImportError:      # not Unix
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _rates(steps: dict, dev: str, rounds: int, iters: int, batch: int) -> tuple[dict, dict]:
    """Images/s and minor page faults of each step function, per round: all data workers started first, a
    warm-up round, then `rounds` rounds of `iters` iterations each, in alternating order (A B, B A, ...:
    drifts and a noisy neighbour hit all alike)."""
    for step in steps.values():
        step.start()
    for step in steps.values():
        step(iters)
    names = list(steps)
    rates: dict[str, list[float]] = {k: [] for k in names}
    faults: dict[str, list[int]] = {k: [] for k in names}
    for i in range(rounds):
        for k in (names if i % 2 == 0 else names[::-1]):
            sync(dev)
            f0, t0 = _minor_faults(), time.perf_counter()
            steps[k](iters)
            sync(dev)
            rates[k].append(iters * batch / (time.perf_counter() - t0))
            faults[k].append(_minor_faults() - f0)
    return rates, faults


def run(quick: bool = False, batch: int | None = None, rounds: int | None = None, iters: int | None = None,
        root: str | None = None) -> list[dict]:
    """`root`: a converted set (default: a synthetic one made in a temporary folder). Each row carries
    "rounds": the images/s of every round, of the baseline and of the value."""
    from _common import temp_dir
    batch = batch or (2 if quick else 32)
    rounds = rounds or (2 if quick else 4)
    iters = iters or (1 if quick else 2)
    rows = []
    # before either variant is built: both run under the same allocator settings
    with heap_never_trimmed(), temp_dir() as tmp:
        root = root or make_converted(tmp, num_train=max(4, batch // 2) if quick else 40, num_eval=2)
        text = bench_solver_text(tmp, SOLVER, _train_text(root, batch))
        train = _train_text(root, batch)
        for dev in devices():
            name = device_name(dev)
            variants = {"plain": lambda: _PlainStep(train, dev, batch), "float32": lambda: _SolverStep(text, dev)}
            if dev == "cuda":
                variants.update({
                    "amp": lambda: _SolverStep(text, dev, amp="auto"),
                    "channels_last": lambda: _SolverStep(text, dev, channels_last=True),
                    "amp + channels_last": lambda: _SolverStep(text, dev, amp="auto", channels_last=True)})
            steps = {}
            try:
                for k, make in variants.items():
                    steps[k] = make()
                rates, faults = _rates(steps, dev, rounds, iters, batch)
            finally:
                for step in steps.values():
                    step.close()
                steps.clear()
            rate = {k: max(v) for k, v in rates.items()}     # the best round, as interleaved_ms
            rows.append(row("train", f"Solver step, Adam, batch {batch}", name, "images/s",
                            "plain PyTorch loop", rate["plain"], rate["float32"]))
            rows[-1]["rounds"] = (rates["plain"], rates["float32"])
            rows[-1]["faults"] = (faults["plain"], faults["float32"])
            for case in ("amp", "channels_last", "amp + channels_last"):
                if case in rate:
                    rows.append(row("train", f"Solver step, {case}, batch {batch}", name, "images/s",
                                    "Solver float32", rate["float32"], rate[case]))
                    rows[-1]["rounds"] = (rates["float32"], rates[case])
                    rows[-1]["faults"] = (faults["float32"], faults[case])
    return rows


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="batch 2, two rounds of one iteration")
    args = ap.parse_args()
    rows = run(args.quick)
    print(markdown(rows))
    for r in rows:
        base, value = r["rounds"]
        fb, fv = r["faults"]
        print(f"\n{r['case']}: rounds (images/s), {r['baseline_name']}: "
              f"{', '.join(f'{x:.3g}' for x in base)}; value: {', '.join(f'{x:.3g}' for x in value)}. "
              f"Minor page faults per round: {fb}; {fv}")
