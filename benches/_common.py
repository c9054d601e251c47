"""Shared by the benches: the rhd_latent25d network part as a Net and as a hand-written module, timing, the
common row format and the machine line.

A row (dict) of the common table:
    bench, case, device   what was measured, where
    unit                  of baseline and value ("ms", "images/s", "samples/s")
    baseline_name         what the baseline is ("hand-written module", "numpy loop", ...)
    baseline, value       the two numbers, measured in the same run
    ratio                 value / baseline
    goal                  the condition on ratio (or value) the issue asks for, "" when none
    met                   True / False, None when there is no goal
"""

from __future__ import annotations

import math
import os
import platform
import re
import sys
import tempfile
import time

import torch
import torch.nn.functional as F
from torch import nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from layers.caffe.pooling import window_max  # noqa: E402

TEST_NET = os.path.join(ROOT, "prototxt", "rhd_latent25d_test.prototxt")
SOLVER = os.path.join(ROOT, "prototxt", "rhd_latent25d_solver.prototxt")
IMAGE_SIZE = 128
COLUMNS = ("bench", "case", "device", "baseline", "value", "ratio", "goal", "met")
FLT_MAX = torch.finfo(torch.float32).max


# ---- rows and the table ------------------------------------------------------------------------------------

def row(bench: str, case: str, device: str, unit: str, baseline_name: str, baseline: float, value: float,
        goal: str = "", met: bool | None = None) -> dict:
    return {"bench": bench, "case": case, "device": device, "unit": unit, "baseline_name": baseline_name,
            "baseline": float(baseline), "value": float(value), "ratio": float(value) / float(baseline),
            "goal": goal, "met": met}


def _num(x: float) -> str:
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:.0f}"


def markdown(rows: list[dict]) -> str:
    """One table for all benches: baseline and value carry their unit, the baseline its name."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        met = "—" if r["met"] is None else ("yes" if r["met"] else "**no**")
        cells = (r["bench"], r["case"], r["device"], f"{r['baseline_name']}: {_num(r['baseline'])} {r['unit']}",
                 f"{_num(r['value'])} {r['unit']}", f"{r['ratio']:.3f}", r["goal"] or "—", met)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_line() -> str:
    cores = os.cpu_count() or 1
    gpu = f"; GPU: {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "; no GPU"
    return (f"Machine: {cpu_model()}, {cores} logical CPUs, torch {torch.__version__} "
            f"({torch.get_num_threads()} intra-op threads){gpu}; Python {platform.python_version()}.")


def cpu_name() -> str:
    return f"cpu ({torch.get_num_threads()} threads)"


def device_name(dev: str) -> str:
    return torch.cuda.get_device_name(0) if dev == "cuda" else cpu_name()


def devices() -> list[str]:
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def sync(dev: str) -> None:
    if dev == "cuda":
        torch.cuda.synchronize()


# ---- timing ------------------------------------------------------------------------------------------------

def interleaved_ms(fns: dict, repeats: int, dev: str = "cpu", warmup: int = 2) -> dict[str, float]:
    """Best ms of each function, run alternately (a, b, b, a, a, b, ...) so drifts (clock, other load) hit
    all alike; the best time is the least noisy estimate of a function's own cost on a shared machine
    (timeit's advice: medians on the 2-core VM moved by +-5% between runs)."""
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    sync(dev)
    times = {n: [] for n in names}
    for i in range(repeats):
        for n in (names if i % 2 == 0 else names[::-1]):
            t0 = time.perf_counter()
            fns[n]()
            sync(dev)
            times[n].append((time.perf_counter() - t0) * 1e3)
    return {n: min(t) for n, t in times.items()}


# ---- the network part of rhd_latent25d ---------------------------------------------------------------------

LAYER_BLOCK = re.compile(r"^layer \{\n.*?^\}\n?", re.M | re.S)


def network_part_text(batch: int, path: str = TEST_NET, size: int = IMAGE_SIZE) -> str:
    """The layers of a committed net that run on the image alone (image_01 ... pred_zr: the network part,
    without data reading, ground truth, losses, reconstruction and metrics), fed by an Input 'image'."""
    text = open(path).read()
    have = {"image"}
    kept = []
    for block in LAYER_BLOCK.findall(text):
        bottoms = re.findall(r'^  bottom: "(.*)"', block, re.M)
        if bottoms and all(b in have for b in bottoms):
            kept.append(block)
            have.update(re.findall(r'^  top: "(.*)"', block, re.M))
    head = ('name: "rhd_latent25d_network"\nlayer {\n  name: "image"\n  type: "Input"\n  top: "image"\n'
            f'  input_param {{ shape {{ dim: {batch} dim: 3 dim: {size} dim: {size} }} }}\n}}\n')
    return head + "".join(kept)


def network_net(batch: int, device: str = "cpu", size: int = IMAGE_SIZE):
    from nets.net import Net
    return Net(network_part_text(batch, size=size), phase="TEST", device=device)


def _pool(x, kernel: int, stride: int, pad: int):
    # Caffe's MAX pooling as the Pooling layer computes it: pad with -inf, pool, clamp at -FLT_MAX
    # (strided running maxima on the CPU without gradient, PyTorch's max_pool2d otherwise)
    far = (math.ceil((x.shape[-1] + 2 * pad - kernel) / stride)) * stride + kernel - x.shape[-1] - pad
    xp = F.pad(x, [pad, far, pad, far], value=-float("inf"))
    if x.device.type == "cpu" and not (torch.is_grad_enabled() and x.requires_grad):
        return window_max(xp, (kernel, kernel), (stride, stride)).clamp_min(-FLT_MAX)
    return F.max_pool2d(xp, kernel, stride).clamp_min(-FLT_MAX)


class HandNet(nn.Module):
    """The same ops as the network part, written by hand in one forward (no graph, no layer objects); the
    weights are copied from a Net built by network_net()."""

    CONVS = ("conv1", "conv2", "conv3", "conv4", "conv5", "conv6", "conv5_shortcut", "conv4_shortcut",
             "pool3_shortcut", "conv3_shortcut", "conv2_shortcut", "maps")
    DECONVS = ("h0_deconv", "h1_deconv", "h2_deconv", "h3_deconv", "h4_deconv")

    def __init__(self, net):
        super().__init__()
        params = net.params
        for name in self.CONVS:
            self.register_parameter(name, nn.Parameter(params[name][0].detach().clone()))
        for name in self.DECONVS:
            self.register_parameter(name + "_w", nn.Parameter(params[name][0].detach().clone()))
            self.register_parameter(name + "_b", nn.Parameter(params[name][1].detach().clone()))
        self.beta = nn.Parameter(params["heatmap_norm"][0].detach().clone())
        self.mul = net.layer("image_01").p.mul_factor
        latent = net.layer("pred_zr").p
        self.lb, self.ub = latent.depth_lower_bound, latent.depth_upper_bound

    def forward(self, image):
        x = image * self.mul
        c1 = torch.relu(F.conv2d(x, self.conv1, None, 1, 1))
        p1 = _pool(c1, 3, 1, 1)
        c2 = torch.relu(F.conv2d(p1, self.conv2, None, 2, 1))
        p2 = _pool(c2, 3, 1, 1)
        c3 = torch.relu(F.conv2d(p2, self.conv3, None, 2, 1))
        p3 = _pool(c3, 2, 2, 0)
        c4 = torch.relu(F.conv2d(p3, self.conv4, None, 2, 1))
        c5 = torch.relu(F.conv2d(c4, self.conv5, None, 2, 1))
        c6 = torch.relu(F.conv2d(c5, self.conv6, None, 2, 1))
        h = c6
        for i, skip, w in ((0, c5, self.conv5_shortcut), (1, c4, self.conv4_shortcut), (2, p3, self.pool3_shortcut),
                           (3, c3, self.conv3_shortcut), (4, c2, self.conv2_shortcut)):
            up = F.conv_transpose2d(h, getattr(self, f"h{i}_deconv_w"), getattr(self, f"h{i}_deconv_b"), 2, 1)
            h = F.conv2d(skip, w) + up
        maps = F.conv2d(h, self.maps)
        logits, depth = torch.split(maps, [21, 21], dim=1)
        norm = torch.softmax(logits.flatten(2) * self.beta[:, None], dim=-1).view_as(logits)
        hh, ww = norm.shape[-2:]
        cols = torch.arange(ww, dtype=norm.dtype, device=norm.device) / ww
        rows = torch.arange(hh, dtype=norm.dtype, device=norm.device) / hh
        u = (norm.sum(dim=-2) * cols).sum(dim=-1)
        v = (norm.sum(dim=-1) * rows).sum(dim=-1)
        pred_2d = torch.stack([u, v], dim=-1).flatten(1)
        z01 = (norm * torch.sigmoid(depth)).sum(dim=(-2, -1))
        return {"pred_2d": pred_2d, "pred_zr": z01 * (self.ub - self.lb) + self.lb}


def check_equal(net, hand, image, backward: bool = True, rtol: float = 1e-4, atol: float = 1e-5) -> None:
    """Assert the Net and the hand-written module give the same outputs (and weight gradients)."""
    want = net.forward(image=image)
    got = hand(image)
    for k in ("pred_2d", "pred_zr"):
        torch.testing.assert_close(got[k], want[k], rtol=rtol, atol=atol, msg=lambda m: f"{k}: {m}")
    if backward:
        net.zero_grad(set_to_none=True)
        hand.zero_grad(set_to_none=True)
        (want["pred_2d"].sum() + want["pred_zr"].sum()).backward()
        (got["pred_2d"].sum() + got["pred_zr"].sum()).backward()
        params = net.params
        for name in HandNet.CONVS:
            torch.testing.assert_close(getattr(hand, name).grad, params[name][0].grad, rtol=rtol, atol=atol)
        for name in HandNet.DECONVS:
            torch.testing.assert_close(getattr(hand, name + "_w").grad, params[name][0].grad, rtol=rtol,
                                       atol=atol)
            torch.testing.assert_close(getattr(hand, name + "_b").grad, params[name][1].grad, rtol=rtol,
                                       atol=atol)
        torch.testing.assert_close(hand.beta.grad, params["heatmap_norm"][0].grad, rtol=rtol, atol=atol)


# ---- a synthetic converted set -----------------------------------------------------------------------------

def make_converted(folder: str, num_train: int = 64, num_eval: int = 64, seed: int = 0) -> str:
    """A synthetic RHD release converted to the memo layout under `folder`; returns the converted root."""
    from layers.hand.rhd.convert import convert
    from layers.hand.rhd.synthetic import make_dataset
    release = make_dataset(os.path.join(folder, "synth"), num_train, num_eval, seed=seed)
    out = os.path.join(folder, "rhd")
    convert(release, out, workers=1)
    return out


def prototxt_for(path: str, root: str, **replace) -> str:
    """A committed net's text with its data root (data/rhd) pointed at `root` and other text replaced."""
    text = open(path).read().replace('"data/rhd', f'"{root}')
    for old, new in replace.items():
        text = text.replace(old, new)
    return text


def bench_solver_text(tmp: str, solver: str, train_text: str) -> str:
    """A committed solver's text training `train_text` (written to tmp/train.prototxt), without test nets,
    display or snapshots: what a bench times."""
    train = os.path.join(tmp, "train.prototxt")
    with open(train, "w") as f:
        f.write(train_text)
    text = open(solver).read()
    text = re.sub(r"^(train_net|test_net|test_iter|test_interval|display|snapshot|snapshot_prefix):.*\n", "",
                  text, flags=re.M)
    return text + f'train_net: "{train}"\ndisplay: 0\nsnapshot: 0\nsnapshot_after_train: false\n'


def temp_dir() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="bench_")
