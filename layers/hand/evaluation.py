"""Evaluate a test net over a split: collect its prediction and ground-truth blobs for every sample once, then the
metrics the field reports (SPEC section 5), a markdown table, a PCK-curve plot and a few debug images.

The blobs play roles: pred_2d / gt_2d (B, 2K) original-image pixels, pred_3d / gt_3d (B, 3K) camera-frame mm,
visibility (B, K) (optional: all keypoints otherwise), clamped and ambiguous from RootDepth (optional), and for
the debug images image (B, 3, S, S), pred_2d_crop / gt_2d_crop (B, 2K) crop units, heatmaps (B, K, H, W).
find_roles() reads each role's blob from the net's own layers (see its docstring), so the nets of
tools/make_rhd_nets.py and prototxt/rhd_gt_roundtrip.prototxt need no names; any role can be named instead.
The split's size comes from the net's ReadIndexFromFile layer (its list, or num_of_samples), so every sample is
seen exactly once: when the batch does not divide the split, the last batch's extra rows (the list's first
samples again) count nowhere, in no metric and no count.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch

from layers.hand import metrics
from layers.hand.index import ReadIndexFromFile
from layers.hand.latent import DeepHandModelNumericalCoordinateRegression, SoftArgmax
from layers.hand.mirror import HandMirror
from layers.hand.readers import ReadImage, ReadJoint2D, ReadJoint3D, ReadVisibility
from layers.hand.reconstruct import ROOT_CLAMPED, ROOT_STATUS_NAMES, CropToImage, Reconstruct3D, RootDepth
from netdef.errors import NetError

ROLES = ("pred_2d", "gt_2d", "pred_3d", "gt_3d", "visibility", "ambiguous")     # per-sample arrays collected
REQUIRED = ("pred_2d", "gt_2d", "pred_3d", "gt_3d")
DEBUG_ROLES = ("image", "pred_2d_crop", "gt_2d_crop", "heatmaps")               # heatmaps optional
ALL_ROLES = ROLES + ("clamped",) + DEBUG_ROLES
FLAGS = {r: "--" + r.replace("_", "-") for r in ALL_ROLES}                      # tools/evaluate.py's flags


@dataclass
class Collected:
    """Per-sample arrays of one pass over the split (float64), plus counts over exactly those samples."""
    index: np.ndarray
    blobs: dict[str, np.ndarray]
    clamped: int | None = None                     # None: the net has no RootDepth (nothing to count)
    debug: list = field(default_factory=list)      # (idx, image, pred_crop, gt_crop, heatmap) of the first few
    root_status: dict[str, int] | None = None      # RootDepth's cases (ROOT_STATUS_NAMES) -> number of samples
    status: np.ndarray | None = None               # per sample: RootDepth's case, or the user's 0/1 clamped flag
    status_is_root_depth: bool = False             # status holds RootDepth's cases (else 0/1 flags)

    def subset(self, keep: np.ndarray) -> "Collected":
        """The samples where keep (bool, one per sample) is true, counts recomputed over them; debug items kept."""
        keep = np.asarray(keep, bool)
        status = self.status[keep] if self.status is not None else None
        clamped, root_status = _counts(status, self.status_is_root_depth)
        return Collected(self.index[keep], {r: v[keep] for r, v in self.blobs.items()}, clamped, self.debug,
                         root_status, status, self.status_is_root_depth)


def _counts(status, is_root_depth: bool):
    """(clamped count, RootDepth's cases -> counts or None) of per-sample statuses; (None, None) without any."""
    if status is None:
        return None, None
    if not is_root_depth:
        return int(status.sum()), None
    return (int(np.isin(status, ROOT_CLAMPED).sum()),
            {name: int((status == code).sum()) for code, name in ROOT_STATUS_NAMES.items()})


def _index_step(net):
    for step in net.plan:
        if isinstance(net.layers[step.key], ReadIndexFromFile):
            return step
    return None


def split_size(net) -> tuple[int, int]:
    """(number of samples, batch size) from the net's ReadIndexFromFile layer."""
    step = _index_step(net)
    if step is None:
        raise NetError("the net has no ReadIndexFromFile layer to say how many samples the split has; "
                       "give --samples")
    layer = net.layers[step.key]
    return layer.num, layer.p.batch_size


# ---- which blob plays which role ------------------------------------------------------------------------------

def _steps(net, cls):
    return [st for st in net.plan if isinstance(net.layers[st.key], cls)]


def _producer(net, blob):
    """The last step that writes `blob` (an in-place layer rewrites it), or None."""
    found = None
    for st in net.plan:
        if blob in st.tops:
            found = st
    return found


def _most_used(blobs: list[str]) -> str | None:
    """The blob named most often; on a tie, the one named last."""
    if not blobs:
        return None
    counts = Counter(blobs)
    return max(reversed(blobs), key=lambda b: counts[b])


def find_roles(net, given: dict[str, str | None] | None = None) -> dict[str, str | None]:
    """Each role's blob: the one `given` names, else read from the net's layers (None: the net has none):

      pred_2d, gt_2d, visibility   the last EPE2D layer's bottoms (prediction, GT, visibility); without one, RootDepth's
                                   2D bottom and the CropToImage of the ReadJoint2D top
      pred_3d, gt_3d, visibility   the EPE3D layers' bottoms (the prediction most of them use, the last on a tie);
                                   without one, the last Reconstruct3D with a scale bottom and the ReadJoint3D top
      visibility                   else the ReadVisibility top
      clamped, ambiguous           RootDepth's second and third tops (the clamped count is recomputed per sample
                                   from RootDepth's bottoms, so it needs only the layer)
      pred_2d_crop, gt_2d_crop     the crop-unit bottoms of the CropToImage layers that give pred_2d and gt_2d
      heatmaps                     the SoftArgmax (or DeepHandModelNumericalCoordinateRegression) that gives
                                   pred_2d_crop: its normalised maps; where a HandMirror gives pred_2d_crop from
                                   the SoftArgmax's 2D (a net that sees left hands mirrored), the HandMirror of
                                   those maps with the same flag (the maps in the original crop)
      image                        the ReadImage top (the crop, 0..255)
    """
    given = {k: v for k, v in (given or {}).items() if v}
    roles: dict[str, str | None] = dict.fromkeys(ALL_ROLES)

    epe2d = _steps(net, metrics.EPE2D)
    epe3d = _steps(net, metrics.EPE3D)
    root = _steps(net, RootDepth)
    if epe2d:
        roles["pred_2d"], roles["gt_2d"] = epe2d[-1].bottoms[:2]
    else:
        if root:
            roles["pred_2d"] = root[0].bottoms[0]
        joint_2d = [t for st in _steps(net, ReadJoint2D) for t in st.tops]
        for st in _steps(net, CropToImage):
            if st.bottoms[0] in joint_2d:
                roles["gt_2d"] = st.tops[0]
    if epe3d:
        roles["pred_3d"] = _most_used([st.bottoms[0] for st in epe3d])
        roles["gt_3d"] = _most_used([st.bottoms[1] for st in epe3d if st.bottoms[0] == roles["pred_3d"]])
    else:
        scaled = [st for st in _steps(net, Reconstruct3D) if len(st.bottoms) == 5]
        if scaled:
            roles["pred_3d"] = scaled[-1].tops[0]
        gt_3d = _steps(net, ReadJoint3D)
        if gt_3d:
            roles["gt_3d"] = gt_3d[0].tops[0]
    vis = [st.bottoms[2] for st in epe2d + epe3d if len(st.bottoms) > 2]
    if vis:
        roles["visibility"] = vis[-1]
    elif _steps(net, ReadVisibility):
        roles["visibility"] = _steps(net, ReadVisibility)[0].tops[0]
    if root:
        tops = root[0].tops
        roles["clamped"] = tops[1] if len(tops) > 1 else None
        roles["ambiguous"] = tops[2] if len(tops) > 2 else None
    images = _steps(net, ReadImage)
    if images:
        roles["image"] = images[0].tops[0]
    roles.update(given)
    for role, crop_role in (("pred_2d", "pred_2d_crop"), ("gt_2d", "gt_2d_crop")):
        st = _producer(net, roles[role]) if roles[role] else None
        if crop_role not in given and st is not None and isinstance(net.layers[st.key], CropToImage):
            roles[crop_role] = st.bottoms[0]
    if "heatmaps" not in given and roles["pred_2d_crop"]:
        st = _producer(net, roles["pred_2d_crop"])
        if st is not None and isinstance(net.layers[st.key], HandMirror):   # a net that saw mirrored hands
            flag = st.bottoms[1]
            st = _producer(net, st.bottoms[0])
            if st is not None and isinstance(net.layers[st.key], SoftArgmax):
                back = [m.tops[0] for m in _steps(net, HandMirror) if list(m.bottoms[:2]) == [st.tops[0], flag]]
                roles["heatmaps"] = back[0] if back else None     # the maps in the original crop, or none
                st = None
        if st is not None and isinstance(net.layers[st.key], SoftArgmax):
            roles["heatmaps"] = st.tops[0]
        elif st is not None and isinstance(net.layers[st.key], DeepHandModelNumericalCoordinateRegression):
            roles["heatmaps"] = st.bottoms[0]
    return roles


def _shape_error(role: str, blob: str, shape, want: str) -> NetError:
    return NetError(f"{role} blob '{blob}' ({FLAGS[role]}) must be {want}; it has shape {tuple(shape)}")


def check_roles(net, roles: dict[str, str | None]) -> None:
    """Every required role has a blob of the net, and the shapes agree."""
    for role in REQUIRED:
        if not roles.get(role):
            raise NetError(f"cannot tell which blob of the net is the {role.replace('_', ' ')} (it has no EPE2D / "
                           f"EPE3D layer to say); name it with {FLAGS[role]} BLOB")
    for role, blob in roles.items():
        if blob and blob not in net.blob_shapes:
            raise NetError(f"the net has no blob '{blob}' for {FLAGS[role]} (blobs: "
                           f"{', '.join(sorted(net.blob_shapes))})")
    shape = {r: tuple(net.blob_shapes[b]) for r, b in roles.items() if b}
    p2, p3 = shape["pred_2d"], shape["pred_3d"]
    if len(p2) != 2 or p2[1] % 2:
        raise _shape_error("pred_2d", roles["pred_2d"], p2, "(B, 2K): u, v per keypoint")
    k = p2[1] // 2
    for role, want in (("gt_2d", (p2[0], 2 * k)), ("pred_3d", (p2[0], 3 * k)), ("gt_3d", (p2[0], 3 * k))):
        if shape[role] != want:
            raise _shape_error(role, roles[role], shape[role], f"({want[0]}, {want[1]}) like {roles['pred_2d']}'s "
                               f"{k} keypoints" + (" (x, y, z each)" if "3d" in role else ""))
    for role, per_sample, want in (("visibility", k, f"({p3[0]}, {k}), one 0/1 per keypoint"),
                                   ("ambiguous", 1, f"({p3[0]}, 1)")):
        if role in shape and (shape[role][:1] != p3[:1] or math.prod(shape[role]) != p3[0] * per_sample):
            raise _shape_error(role, roles[role], shape[role], want)


def debug_problem(net, roles: dict[str, str | None]) -> str | None:
    """Why debug images cannot be drawn (a missing role), or None."""
    for role in DEBUG_ROLES[:3]:
        if not roles.get(role):
            what = {"image": "the crop image (no ReadImage layer)",
                    "pred_2d_crop": "the predicted 2D pose in crop units (pred_2d is not a CropToImage top)",
                    "gt_2d_crop": "the GT 2D pose in crop units (gt_2d is not a CropToImage top)"}[role]
            return f"cannot tell which blob is {what}; name it with {FLAGS[role]} BLOB"
    return None


def _clamp_counter(net, roles, batch: int):
    """How to count clamped root depths over the first `take` rows of a batch: (function (blobs, take) -> (take,)
    int64, is_status). RootDepth's statuses (ROOT_STATUS_NAMES), recomputed per sample from its bottoms, when
    the clamped blob is its top or (no blob named) the net has one; else the user's per-sample 0/1 flags;
    (None, False) when there is nothing to count."""
    blob = roles.get("clamped")
    step = _producer(net, blob) if blob else None
    if step is None and not blob:
        roots = _steps(net, RootDepth)
        step = roots[0] if roots else None
    if step is not None and isinstance(net.layers[step.key], RootDepth):
        layer = net.layers[step.key]
        return (lambda b, take: layer.sample_status(*(b[x][:take] for x in step.bottoms))), True
    if blob is None:
        return None, False
    shape = net.blob_shapes[blob]
    if shape[:1] != (batch,) or math.prod(shape) != batch:
        raise NetError(f"clamped blob '{blob}' ({FLAGS['clamped']}) is not a RootDepth top, so it must hold one "
                       f"0/1 flag per sample, ({batch}, 1), to be counted over the split's samples alone; "
                       f"it has shape {tuple(shape)}")
    return (lambda b, take: (b[blob][:take].reshape(-1) != 0).long()), False


def collect(net, names: dict[str, str | None] | None = None, samples: int | None = None, debug_count: int = 0,
            progress=None) -> Collected:
    """Run the net until `samples` samples (default: the whole index list) have been seen once. `names`: role ->
    blob for the roles to name (the others come from find_roles)."""
    roles = find_roles(net, names)
    check_roles(net, roles)
    index_step = _index_step(net)
    if samples is None:
        n = split_size(net)[0]
    else:
        n = samples
        if n < 1:
            raise NetError(f"--samples must be positive, got {n}")
        if index_step is not None and n > split_size(net)[0]:
            raise NetError(f"--samples {n} exceeds the split's {split_size(net)[0]} samples (the index list would "
                           f"repeat)")
    batch = net.blob_shapes[roles["pred_3d"]][0]
    index_blob = index_step.tops[0] if index_step is not None else None
    counter, is_status = _clamp_counter(net, roles, batch)
    parts: dict[str, list] = {r: [] for r in ROLES}
    index_parts, statuses, seen = [], [], 0
    debug = []
    with torch.no_grad():
        while seen < n:
            net.forward()
            b = net.blobs
            take = min(n - seen, b[roles["pred_3d"]].shape[0])     # the last batch's extra rows count nowhere
            for role in ROLES:
                name = roles.get(role)
                if name:
                    parts[role].append(b[name][:take].double().cpu().numpy().reshape(take, -1))
            if index_blob is not None:
                index_parts.append(b[index_blob][:take].reshape(-1).cpu().numpy().astype(np.int64))
            if counter is not None:
                statuses.append(counter(b, take).cpu().numpy().astype(np.int64))
            if len(debug) < debug_count:
                debug.extend(_debug_items(b, roles, index_blob, take, debug_count - len(debug)))
            seen += take
            if progress is not None:
                progress(take)
    blobs = {r: np.concatenate(p) for r, p in parts.items() if p}
    index = np.concatenate(index_parts) if index_parts else np.arange(seen)
    status = np.concatenate(statuses) if counter is not None else None
    clamped, root_status = _counts(status, is_status)
    return Collected(index, blobs, clamped, debug, root_status, status, is_status)


def _debug_items(b, roles, index_blob, take, count):
    """(idx, crop image, predicted and GT 2D in crop units, normalised heatmaps) for the first rows of a batch."""
    image, pred, gt, heat = (roles.get(r) for r in DEBUG_ROLES)
    if not (image and pred and gt):
        return []
    out = []
    for i in range(min(take, count)):
        maps = b[heat][i].float().cpu().numpy() if heat else None
        out.append((int(b[index_blob][i].item()) if index_blob else i, b[image][i].float().cpu().numpy(),
                    b[pred][i].double().cpu().numpy().reshape(-1, 2),
                    b[gt][i].double().cpu().numpy().reshape(-1, 2), maps))
    return out


ROOTS = ("wrist", "palm")


def compute_metrics(c: Collected, root: str = "wrist") -> dict:
    """The table's numbers: EPE 2D (px), EPE 3D root-relative and absolute (mm), PCK curve, AUCs 20-50 and 0-50
    (ours and ColorHandPose3D's). root: "wrist" (keypoint 0) or "palm" (metrics.palm_centred: keypoint 0 replaced
    by the palm centre in prediction and GT, as ColorHandPose3D) for the root-relative numbers; the 2D and the
    absolute 3D errors are over the 21 RHD keypoints either way."""
    if root not in ROOTS:
        raise ValueError(f"root must be one of {ROOTS}, got {root!r}")
    b = c.blobs
    vis = b.get("visibility")
    pred, gt, rel_vis = b["pred_3d"], b["gt_3d"], vis
    if root == "palm":
        pred, _ = metrics.palm_centred(pred)
        gt, rel_vis = metrics.palm_centred(gt, vis)
    rel = metrics.errors_3d(pred, gt, root_relative=True)
    thresholds = np.arange(0, 51, dtype=np.float64)
    pck = metrics.pck_curve(rel, thresholds, rel_vis)
    ambiguous = int(b["ambiguous"].sum()) if "ambiguous" in b else None
    chp3d_mean, chp3d_median = metrics.epe_colorhandpose3d(rel, rel_vis)
    return {
        "samples": int(len(c.index)),
        "keypoints": "visible" if vis is not None else "all",
        "root": root,
        "epe_2d_px": float(metrics.epe_2d(b["pred_2d"], b["gt_2d"], vis)),
        "epe_3d_rel_mm": float(metrics.epe_3d(pred, gt, rel_vis, root_relative=True)),
        "epe_3d_rel_chp3d_mean_mm": chp3d_mean,
        "epe_3d_rel_chp3d_median_mm": chp3d_median,
        "epe_3d_abs_mm": float(metrics.epe_3d(b["pred_3d"], b["gt_3d"], vis, root_relative=False)),
        "auc_20_50": float(metrics.auc(thresholds, pck, 20.0, 50.0)),
        "auc_0_50": float(metrics.auc(thresholds, pck, 0.0, 50.0)),
        "auc_chp3d": float(metrics.auc_colorhandpose3d(rel, rel_vis)),
        "auc_chp3d_0_50": float(metrics.auc_colorhandpose3d(rel, rel_vis, first_index=0)),
        "pck_thresholds_mm": thresholds.tolist(),
        "pck": [float(v) for v in pck],
        "clamped_roots": c.clamped,
        "ambiguous_roots": ambiguous,
        "root_depth_cases": c.root_status,
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
    row("3D EPE root-relative, ColorHandPose3D mean (mm)", "epe_3d_rel_chp3d_mean_mm", "{:.2f}")
    row("3D EPE root-relative, ColorHandPose3D median (mm)", "epe_3d_rel_chp3d_median_mm", "{:.2f}")
    row("3D EPE absolute (mm)", "epe_3d_abs_mm", "{:.2f}")
    row(metrics.AUC_NAME, "auc_20_50", "{:.3f}")
    row("AUC 0-50 mm", "auc_0_50", "{:.3f}")
    row(metrics.CHP3D_AUC_NAME, "auc_chp3d", "{:.3f}")
    row(metrics.CHP3D_AUC_NAME[:-1] + ", 0-50 mm)", "auc_chp3d_0_50", "{:.3f}")
    row("clamped root depths", "clamped_roots", "{}")
    row("ambiguous root depths", "ambiguous_roots", "{}")
    kp = {rows[n].get("keypoints", "all") for n in names}
    lines.append("")
    for n in names:
        cases = rows[n].get("root_depth_cases") or {}
        clamped = [f"{cases[ROOT_STATUS_NAMES[k]]} {ROOT_STATUS_NAMES[k].replace('_', ' ')}" for k in ROOT_CLAMPED
                   if cases.get(ROOT_STATUS_NAMES[k])]
        if clamped:
            lines.append(f"Clamped root depths ({n}): {', '.join(clamped)} (RootDepth's cases).")
    for n in names:
        if rows[n].get("protocol_note"):
            lines.append(f"Samples ({n}): {rows[n]['protocol_note']}")
    roots = sorted({rows[n].get("root", "wrist") for n in names})
    root_text = " / ".join("the palm centre 0.5 (J0 + J12), as ColorHandPose3D" if r == "palm" else "the wrist"
                           for r in roots)
    lines.append(f"Errors over {' / '.join(sorted(kp))} keypoints; 3D root-relative to {root_text}; "
                 f"{metrics.AUC_NAME} and 0-50 mm on the PCK curve sampled every 1 mm; ColorHandPose3D's on its "
                 f"20 thresholds linspace(0, 50, 20), per keypoint first.")
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
