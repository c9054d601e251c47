"""Benchmark: ground-truth heatmaps + depth maps (memo steps 10-11) for one batch, the layers
(GenHeatmap + GenDepthMap, vectorised, separable) against a straightforward numpy loop over samples and
joints (exp over the whole S x S grid per joint), measured in the same run on the same data.

    python benches/bench_gt.py          # prints a markdown table
    from benches.bench_gt import run    # rows as dicts, for benches/run_all.py

Batch 32, 21 joints, 64 x 64, sigma 0.08 (the author's RawPaper settings), float32. One row per device:
the CPU, and the first CUDA device when there is one (the baseline is numpy on the CPU either way).
Times are the best of many runs, baseline and layers measured in alternation: on a shared VM the best
time is the least noisy estimate of each (timeit's advice), and both sides are treated alike. Freed memory
is kept for reuse (nets.perf.keep_freed_memory, as the source stage does), else the layers' time is mostly
page faults on their two fresh 11 MB outputs (and the baseline's too).

Measured on a 2-core VM (AMD EPYC, torch 2.13 CPU), CPU row, baseline ms / layers ms:
  glibc defaults (before nets.perf):   13-14 / 9-11    1.3-2x
  kept freed memory, best of runs:     9.6-9.9 / 0.47-0.51   19.5-20.5x
  (medians instead of best: 10-16 / 0.8-1.5, 10-17x: the VM's neighbours show up in every median)
The layers are at this machine's memory floor: writing 2 x 11 MB and reading 11 MB takes ~0.45 ms here.
On a 16-core host the CPU row read ~8x with glibc defaults and ~60x with kept memory; an H100 row ~95x.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from nets.perf import keep_freed_memory  # noqa: E402

import torch  # noqa: E402

import layers.hand  # noqa: F401,E402  (registers the hand layers)
from layers.build import make_layer  # noqa: E402

BATCH, JOINTS, SIZE, SIGMA = 32, 21, 64, 0.08
LB, UB = -3.269, 3.270
COLUMNS = ("bench", "device", "batch", "baseline_ms", "layers_ms", "speedup")


def baseline(uv: np.ndarray, zr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per sample, per joint: the SPEC's formula over the S x S grid."""
    grid = np.arange(SIZE, dtype=np.float32) / SIZE
    rows, cols = grid[:, None], grid[None, :]
    heat = np.empty((BATCH, JOINTS, SIZE, SIZE), np.float32)
    depth = np.empty_like(heat)
    for b in range(BATCH):
        for k in range(JOINTS):
            u, v = uv[b, 2 * k], uv[b, 2 * k + 1]
            h = np.exp(-((cols - u) ** 2 + (rows - v) ** 2) / (2 * SIGMA ** 2))
            heat[b, k] = h
            depth[b, k] = h * min(max((zr[b, k] - LB) / (UB - LB), 0.0), 1.0)
    return heat, depth


def _ms(fn, sync=lambda: None) -> float:
    t0 = time.perf_counter()
    fn()
    sync()
    return (time.perf_counter() - t0) * 1e3


def _interleaved_best(base_fn, layers_fn, repeats: int, sync) -> tuple[float, float]:
    """Best times of both, measured in alternation (a noisy neighbour slows both alike); the layers run
    `inner` times per round so both get similar wall time."""
    base_fn()
    layers_fn()
    sync()
    inner = 10
    base, lay = [], []
    for _ in range(repeats):
        base.append(_ms(base_fn))
        lay += [_ms(layers_fn, sync) for _ in range(inner)]
    return min(base), min(lay)


def run(repeats: int = 20) -> list[dict]:
    keep_freed_memory()      # as the CLI tools do; the baseline's outputs benefit alike
    rng = np.random.default_rng(0)
    uv = rng.uniform(0.0, 1.0, (BATCH, 2 * JOINTS)).astype(np.float32)
    zr = rng.normal(0.0, 1.5, (BATCH, JOINTS)).astype(np.float32)
    want_heat, want_depth = baseline(uv, zr)

    heat_layer = make_layer(f'name: "hm" type: "GenHeatmap" bottom: "uv" top: "hm" '
                            f'gen_heatmap_param {{ gen_size: {SIZE} render_sigma: {SIGMA} }}', [(BATCH, 2 * JOINTS)])
    depth_layer = make_layer('name: "dm" type: "GenDepthMap" bottom: "hm" bottom: "zr" top: "dm"',
                             [(BATCH, JOINTS, SIZE, SIZE), (BATCH, JOINTS)])
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for dev in devices:
        t_uv, t_zr = torch.from_numpy(uv).to(dev), torch.from_numpy(zr).to(dev)
        sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)

        def layers_fn():
            h = heat_layer(t_uv)
            return h, depth_layer(h, t_zr)

        with torch.no_grad():
            heat, depth = layers_fn()
            # same work as the baseline (not timed)
            np.testing.assert_allclose(heat.cpu().numpy(), want_heat, rtol=1e-4, atol=1e-6)
            np.testing.assert_allclose(depth.cpu().numpy(), want_depth, rtol=1e-4, atol=1e-6)
            base_ms, ms = _interleaved_best(lambda: baseline(uv, zr), layers_fn, repeats, sync)
        name = torch.cuda.get_device_name(0) if dev == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
        rows.append({"bench": f"GenHeatmap+GenDepthMap {JOINTS}j {SIZE}x{SIZE}", "device": name, "batch": BATCH,
                     "baseline_ms": round(base_ms, 3), "layers_ms": round(ms, 3),
                     "speedup": round(base_ms / ms, 1)})
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(str(r[c]) for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown(run()))
