"""Graph overhead: the rhd_latent25d network part run by Net.forward (layer by layer, through the prototxt's
graph) against the same ops written by hand as one plain nn.Module (benches/_common.py HandNet, the Net's
weights copied in; the outputs and gradients are checked equal before timing).

    python benches/bench_overhead.py [--quick]     # prints a markdown table
    from benches.bench_overhead import run         # rows for benches/run_all.py

The network part is every layer of prototxt/rhd_latent25d_test.prototxt that runs on the image alone
(image_01 ... pred_zr: scaling, the encoder-decoder, Slice, SoftArgmax, Sigmoid, LatentDepth; 36 layers), fed
by an Input 'image' (B, 3, 128, 128). Cases: forward (no_grad) and forward+backward (of pred_2d + pred_zr
summed), batch 1 and 32, on the CPU and the first CUDA device when there is one. The two run alternately and
the best times are compared; ratio = Net time / hand-written time. Goal (issue 6): <= 1.03 at batch 1.

Measured on a 2-core AMD EPYC (KVM), torch 2.13 CPU, 2 threads (benches/run_all.py, idle machine; best of
the alternating runs), hand-written -> Net:
    forward           batch 1    125 ms -> 128 ms     ratio 1.028  (goal met)
    forward+backward  batch 1    460 ms -> 444 ms     ratio 0.966  (goal met)
    forward           batch 32   6.18 s -> 6.27 s     ratio 1.014
    forward+backward  batch 32   17.8 s -> 17.5 s     ratio 0.987
The network is compute-bound (~2.5 GMAC per image): Net.forward's own Python loop over 36 steps costs well
under 1 ms; medians of the same runs moved by +-5% between runs on this VM (a profile of both shows the same
ops and op counts), hence the best times. Net.compile() (torch.compile of the network steps) ran the
batch-1 forward in ~154 ms against ~217 ms eager in a separate check, before the MAX pooling fast path
(layers/caffe/pooling.py window_max, used by both sides here) took pool1 from 55 ms to ~4 ms.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import (IMAGE_SIZE, HandNet, check_equal, device_name, devices, interleaved_ms,  # noqa: E402
                     markdown, network_net, row)

GOAL = 1.03


def _fns(net, hand, x):
    def fwd(m):
        def f():
            with torch.no_grad():
                m(x) if m is hand else m.forward(image=x)
        return f

    def fwd_bwd(m):
        def f():
            m.zero_grad(set_to_none=True)
            out = m(x) if m is hand else m.forward(image=x)
            (out["pred_2d"].sum() + out["pred_zr"].sum()).backward()
        return f

    return {"forward": (fwd(hand), fwd(net)), "forward+backward": (fwd_bwd(hand), fwd_bwd(net))}


def run(quick: bool = False, batches=None, repeats: dict | None = None) -> list[dict]:
    """Rows per device, case and batch. `repeats`: batch -> timed pairs of forwards (default 20 at batch 1,
    3 at 32; half as many forward+backward pairs, at least 2). quick: batch 1, 2 pairs: exercises the code,
    its ratios mean little."""
    batches = batches or ((1,) if quick else (1, 32))
    size = IMAGE_SIZE
    repeats = repeats or {}
    rows = []
    for dev in devices():
        net = network_net(batches[0], dev, size)
        hand = HandNet(net).to(dev)
        check_equal(net, hand, torch.rand(1 if quick else 2, 3, size, size, device=dev) * 255)
        for batch in batches:
            x = torch.rand(batch, 3, size, size, device=dev) * 255
            n = repeats.get(batch, 2 if quick else 3 if batch > 8 else 20)
            for case, (f_hand, f_net) in _fns(net, hand, x).items():
                ms = interleaved_ms({"hand": f_hand, "net": f_net}, n if case == "forward" else max(2, n // 2),
                                    dev, warmup=1)
                at_goal = batch == 1
                rows.append(row("overhead", f"{case}, batch {batch}", device_name(dev), "ms",
                                "hand-written module", ms["hand"], ms["net"],
                                f"ratio ≤ {GOAL}" if at_goal else "",
                                ms["net"] / ms["hand"] <= GOAL if at_goal else None))
    return rows


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="batches 1 and 2, few repeats")
    args = ap.parse_args()
    print(markdown(run(args.quick)))
