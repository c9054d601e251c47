"""Evaluate a test net over a split: collect its prediction and ground-truth blobs for every sample once, then the
metrics the field reports (SPEC section 5), a markdown table, a PCK-curve plot and a few debug images.

The net names its blobs by role (defaults below; each can be renamed): pred_2d / gt_2d (B, 42) original-image
pixels, pred_3d / gt_3d (B, 63) camera-frame mm, visibility (B, 21) (optional: all keypoints otherwise),
clamped (1,) and ambiguous (B, 1) from RootDepth (optional). The split's size comes from the net's
ReadIndexFromFile layer (its list, or num_of_samples), so every sample is seen exactly once.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field

import numpy as np
import torch

from layers.hand import metrics
from netdef.errors import NetError

ROLES = ("pred_2d", "gt_2d", "pred_3d", "gt_3d", "visibility", "ambiguous")
# blobs for the debug images: the crop (B, 3, S, S), 2D in crop units, the normalised heatmaps
DEBUG_ROLES = {"image": "image", "pred_2d_crop": "pred_2d_crop", "gt_2d_crop": "joint_2d",
               "heatmaps": "heatmap_norm"}
REQUIRED = ("pred_2d", "gt_2d", "pred_3d", "gt_3d")


@dataclass
class Collected:
    """Per-sample arrays of one pass over the split (float64), plus counts."""
    index: np.ndarray
    blobs: dict[str, np.ndarray]
    clamped: int = 0
    debug: list = field(default_factory=list)      # (idx, image, pred_crop, gt_crop, heatmap) of the first few


def split_size(net) -> tuple[int, int]:
    """(number of samples, batch size) from the net's ReadIndexFromFile layer."""
    for step in net.plan:
        layer = net.layers[step.key]
        if layer.type == "ReadIndexFromFile":
            return layer.num, layer.p.batch_size
    raise NetError("the net has no ReadIndexFromFile layer to say how many samples the split has; "
                   "give --samples")


def collect(net, names: dict[str, str], samples: int | None = None, debug_count: int = 0,
            progress=None) -> Collected:
    """Run the net until `samples` samples (default: the whole index list) have been seen once."""
    n, batch = split_size(net) if samples is None else (samples, None)
    missing = [names[r] for r in REQUIRED if names[r] not in net.blob_shapes]
    if missing:
        raise NetError(f"the net has no blob '{missing[0]}' (rename roles with --pred-2d etc.; "
                       f"blobs: {', '.join(sorted(net.blob_shapes))})")
    parts: dict[str, list] = {r: [] for r in ROLES}
    index_parts, seen, clamped = [], 0, 0
    debug = []
    with torch.no_grad():
        while seen < n:
            net.forward()
            b = net.blobs
            take = min(n - seen, next(iter(b[names["pred_3d"]].shape[:1])))
            for role in ROLES:
                name = names.get(role)
                if name in b:
                    parts[role].append(b[name][:take].double().cpu().numpy().reshape(take, -1))
            if "index" in b:
                index_parts.append(b["index"][:take].view(-1).cpu().numpy().astype(np.int64))
            if names.get("clamped") in b:
                clamped += int(b[names["clamped"]].sum().item())
            if len(debug) < debug_count:
                debug.extend(_debug_items(b, names, take, debug_count - len(debug)))
            seen += take
            if progress is not None:
                progress(take)
    blobs = {r: np.concatenate(p) for r, p in parts.items() if p}
    index = np.concatenate(index_parts) if index_parts else np.arange(seen)
    return Collected(index, blobs, clamped, debug)


def _debug_items(b, names, take, count):
    """(idx, crop image, predicted and GT 2D in crop units, normalised heatmaps) when the net has those blobs."""
    image, pred, gt, heat = (names.get(r, d) for r, d in DEBUG_ROLES.items())
    if not all(k in b for k in (image, pred, gt)):
        return []
    out = []
    for i in range(min(take, count)):
        maps = b[heat][i].float().cpu().numpy() if heat in b else None
        out.append((int(b["index"][i].item()) if "index" in b else i, b[image][i].cpu().numpy(),
                    b[pred][i].double().cpu().numpy().reshape(-1, 2),
                    b[gt][i].double().cpu().numpy().reshape(-1, 2), maps))
    return out


def compute_metrics(c: Collected) -> dict:
    """The table's numbers: EPE 2D (px), EPE 3D root-relative and absolute (mm), PCK curve, both AUCs."""
    b = c.blobs
    vis = b.get("visibility")
    rel = metrics.errors_3d(b["pred_3d"], b["gt_3d"], root_relative=True)
    thresholds = np.arange(0, 51, dtype=np.float64)
    pck = metrics.pck_curve(rel, thresholds, vis)
    ambiguous = int(b["ambiguous"].sum()) if "ambiguous" in b else None
    return {
        "samples": int(len(c.index)),
        "keypoints": "visible" if vis is not None else "all",
        "epe_2d_px": float(metrics.epe_2d(b["pred_2d"], b["gt_2d"], vis)),
        "epe_3d_rel_mm": float(metrics.epe_3d(b["pred_3d"], b["gt_3d"], vis, root_relative=True)),
        "epe_3d_abs_mm": float(metrics.epe_3d(b["pred_3d"], b["gt_3d"], vis, root_relative=False)),
        "auc_20_50": float(metrics.auc(thresholds, pck, 20.0, 50.0)),
        "auc_chp3d": float(metrics.auc_colorhandpose3d(rel, vis)),
        "pck_thresholds_mm": thresholds.tolist(),
        "pck": [float(v) for v in pck],
        "clamped_roots": int(c.clamped),
        "ambiguous_roots": ambiguous,
    }


def markdown_table(rows: dict[str, dict]) -> str:
    """One column per evaluated model (e.g. the trained net and a baseline)."""
    names = list(rows)
    lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]

    def row(label, key, fmt):
        vals = []
        for n in names:
            v = rows[n].get(key)
            vals.append("n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v))
        lines.append(f"| {label} | " + " | ".join(vals) + " |")

    row("samples", "samples", "{}")
    row("2D EPE (px)", "epe_2d_px", "{:.2f}")
    row("3D EPE root-relative (mm)", "epe_3d_rel_mm", "{:.2f}")
    row("3D EPE absolute (mm)", "epe_3d_abs_mm", "{:.2f}")
    row(metrics.AUC_NAME, "auc_20_50", "{:.3f}")
    row(metrics.CHP3D_AUC_NAME, "auc_chp3d", "{:.3f}")
    row("clamped root depths", "clamped_roots", "{}")
    row("ambiguous root depths", "ambiguous_roots", "{}")
    kp = {rows[n].get("keypoints", "all") for n in names}
    lines.append("")
    lines.append(f"Errors over {' / '.join(sorted(kp))} keypoints; 3D root-relative to the wrist; "
                 f"{metrics.AUC_NAME} on the PCK curve sampled every 1 mm.")
    return "\n".join(lines) + "\n"


def plot_pck(rows: dict[str, dict], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 4), dpi=120)
    for name, r in rows.items():
        if r.get("pck") is not None:
            ax.plot(r["pck_thresholds_mm"], r["pck"], label=f"{name} (AUC {r['auc_20_50']:.3f})")
    ax.axvspan(20, 50, color="0.9", zorder=0)
    ax.set_xlabel("threshold (mm), root-relative 3D")
    ax.set_ylabel("PCK")
    ax.set_xlim(0, 50)
    ax.set_ylim(0, 1.01)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)


def write_debug_images(items, out_dir: str) -> list[str]:
    """Skeleton overlays (prediction solid, GT dashed) and heatmap montages for the collected samples."""
    import cv2
    from layers.hand.debug import draw_skeleton, heatmap_montage
    from layers.hand.rhd.memo import atomic_write_bytes
    written = []
    for idx, image, pred, gt, heat in items:
        img = np.clip(image.transpose(1, 2, 0), 0, 255).astype(np.uint8)
        size = img.shape[0]
        scale = max(1, 256 // size)
        big = cv2.resize(img, (size * scale, size * scale), interpolation=cv2.INTER_NEAREST)
        drawn = draw_skeleton(big, pred * size * scale, gt * size * scale)
        path = os.path.join(out_dir, f"skeleton_{idx}.png")
        atomic_write_bytes(path, cv2.imencode(".png", drawn)[1].tobytes())
        written.append(path)
        if heat is not None:
            path = os.path.join(out_dir, f"heatmaps_{idx}.png")
            # each map scaled to its own peak: normalised heatmaps are far below 1
            peak = np.maximum(heat.reshape(len(heat), -1).max(1), 1e-12)[:, None, None]
            maps = np.clip(np.rint(heat / peak * 255), 0, 255).astype(np.uint8)
            atomic_write_bytes(path, cv2.imencode(".png", heatmap_montage(maps, img))[1].tobytes())
            written.append(path)
    return written


def save_report(rows: dict[str, dict], out_dir: str) -> dict[str, str]:
    from layers.hand.rhd.memo import atomic_write_bytes
    os.makedirs(out_dir, exist_ok=True)
    paths = {"table": os.path.join(out_dir, "metrics.md"), "json": os.path.join(out_dir, "metrics.json"),
             "pck": os.path.join(out_dir, "pck.png")}
    atomic_write_bytes(paths["table"], markdown_table(rows).encode())
    atomic_write_bytes(paths["json"], json.dumps(rows, indent=1).encode())
    plot_pck(rows, paths["pck"])
    return paths
