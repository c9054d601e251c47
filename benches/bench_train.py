"""Training throughput (images/s) of rhd_latent25d_train (prototxt/rhd_latent25d_solver.prototxt: Adam, batch 32)
with nets.solver.Solver on a synthetic converted set (data read by worker processes), against a plain PyTorch
loop training the hand-written module of benches/_common.py (the same network ops) with torch.optim.Adam on one
fixed batch, with the same two L1 losses. ratio = Solver / plain loop: what the framework costs (data
reading, ground truth and its own update rule included). On a GPU it adds Solver rows with mixed precision
(amp="auto") and channels_last, each against the Solver's float32 row.

    python benches/bench_train.py [--quick]
    from benches.bench_train import run

quick: batch 2, one round of 1 iteration.

Measured on a 2-core AMD EPYC (KVM), torch 2.13 CPU, 2 threads, batch 32, 1 warm-up + 3 alternating rounds of
2 iterations (benches/run_all.py, idle machine): plain loop 1.93 images/s, Solver 2.21 images/s, ratio 1.15.
The Solver is not slower than the plain loop; its lead is not explained (the network's forward+backward alone
measured 17.5 s vs 17.8 s in bench_overhead; the Solver trains on the rendered crops, the plain loop on
uniform noise; three rounds only). No GPU in the session that measured this: the amp and channels_last rows
appear where CUDA is present.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import (ROOT, SOLVER, HandNet, device_name, devices, make_converted, markdown,  # noqa: E402
                     network_net, prototxt_for, row, sync)


def _solver_text(tmp: str, root: str, batch: int) -> str:
    train = os.path.join(tmp, "train.prototxt")
    with open(train, "w") as f:
        f.write(prototxt_for(os.path.join(ROOT, "prototxt", "rhd_latent25d_train.prototxt"), root,
                             **{"batch_size: 32": f"batch_size: {batch}"}))
    text = open(SOLVER).read()
    text = re.sub(r"^(train_net|test_net|test_iter|test_interval|display|snapshot|snapshot_prefix):.*\n", "",
                  text, flags=re.M)
    return text + f'train_net: "{train}"\ndisplay: 0\nsnapshot: 0\nsnapshot_after_train: false\n'


class _SolverStep:
    """Solver.step on the converted set (data read by worker processes)."""

    def __init__(self, text: str, dev: str, **options):
        from nets.solver import Solver
        self.solver = Solver(text, device=dev, **options)

    def __call__(self, n: int) -> None:
        self.solver.step(n)
        # net.blobs keeps the last pass for inspection (GBs at batch 32); with several solvers alive at once
        # that adds up, and the plain loop keeps nothing either
        self.solver.train_net.blobs = {}

    def close(self) -> None:
        self.solver.close()


class _PlainStep:
    """A plain PyTorch loop: the hand-written module, torch.optim.Adam, one fixed batch, the same L1 losses."""

    def __init__(self, dev: str, batch: int):
        self.hand = HandNet(network_net(batch, dev)).to(dev).train()
        self.opt = torch.optim.Adam(self.hand.parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-8)
        self.image = torch.rand(batch, 3, 128, 128, device=dev) * 255
        self.joint_2d, self.depth_zr = torch.rand(batch, 42, device=dev), torch.randn(batch, 21, device=dev)
        self.batch = batch

    def __call__(self, n: int) -> None:
        for _ in range(n):
            self.opt.zero_grad(set_to_none=True)
            out = self.hand(self.image)
            loss = (64 * (out["pred_2d"] - self.joint_2d).abs().sum()
                    + 6 * (out["pred_zr"] - self.depth_zr).abs().sum()) / self.batch
            loss.backward()
            self.opt.step()

    def close(self) -> None:
        pass


def _rates(steps: dict, dev: str, rounds: int, iters: int, batch: int) -> dict:
    """Images/s of each step function: one warm-up iteration each, then `rounds` rounds in alternation of
    `iters` iterations each (a noisy neighbour slows both alike); the median round."""
    for step in steps.values():
        step(1)
    times = {k: [] for k in steps}
    for _ in range(rounds):
        for k, step in steps.items():
            sync(dev)
            t0 = time.perf_counter()
            step(iters)
            sync(dev)
            times[k].append(time.perf_counter() - t0)
    return {k: iters * batch / statistics.median(v) for k, v in times.items()}


def run(quick: bool = False, batch: int | None = None, rounds: int | None = None, iters: int | None = None,
        root: str | None = None) -> list[dict]:
    """`root`: a converted set (default: a synthetic one made in a temporary folder)."""
    from _common import temp_dir
    batch = batch or (2 if quick else 32)
    rounds = rounds or (1 if quick else 3)
    iters = iters or (1 if quick else 2)
    rows = []
    with temp_dir() as tmp:
        root = root or make_converted(tmp, num_train=max(4, batch // 2) if quick else 40, num_eval=2)
        text = _solver_text(tmp, root, batch)
        for dev in devices():
            name = device_name(dev)
            variants = {"plain": lambda: _PlainStep(dev, batch), "float32": lambda: _SolverStep(text, dev)}
            if dev == "cuda":
                variants.update({
                    "amp": lambda: _SolverStep(text, dev, amp="auto"),
                    "channels_last": lambda: _SolverStep(text, dev, channels_last=True),
                    "amp + channels_last": lambda: _SolverStep(text, dev, amp="auto", channels_last=True)})
            steps = {k: make() for k, make in variants.items()}
            try:
                rate = _rates(steps, dev, rounds, iters, batch)
            finally:
                for step in steps.values():
                    step.close()
            rows.append(row("train", f"Solver step, Adam, batch {batch}", name, "images/s",
                            "plain PyTorch loop", rate["plain"], rate["float32"]))
            for case in ("amp", "channels_last", "amp + channels_last"):
                if case in rate:
                    rows.append(row("train", f"Solver step, {case}, batch {batch}", name, "images/s",
                                    "Solver float32", rate["float32"], rate[case]))
    return rows


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="batch 2, one timed iteration")
    args = ap.parse_args()
    print(markdown(run(args.quick)))
