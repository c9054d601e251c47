"""Hand-pose metrics as the field reports them (SPEC section 5): functions, and layers for nets.

Units: 2D errors are in the unit of the 2D inputs (pixels of the original image for the reported 2D EPE);
3D errors in the unit of the 3D inputs (millimetres for RHD's gt_3d); PCK thresholds and AUC ranges are in
that same unit (mm). Keypoints come as (B, K*D) rows (x, y[, z] per keypoint, the blobs' layout) or (B, K, D).
An optional visibility mask (B, K) (1 visible, 0 not) restricts every average to the visible keypoints;
with no visible keypoint at all the result is NaN (0 / 0), never a silent 0.

Two AUCs:
  auc()                  ours, AUC_20-50: the area under the PCK curve on [lo, hi] = [20, 50] mm divided by
                         (hi - lo), trapezoid rule on the curve sampled at the given thresholds (default
                         0, 1, ..., 50 mm: 51 points), the curve being the fraction of ALL visible keypoint
                         instances with error <= t (pooled over samples and keypoints).
  auc_colorhandpose3d()  "AUC (ColorHandPose3D protocol)", Zimmermann & Brox 2017, lmb-freiburg/hand3d
                         eval_full.py with utils/general.py (EvalUtil.get_measures, calc_auc):
                           thresholds = linspace(0, 50 mm, 20)  (their np.linspace(0.0, 0.050, 20) in metres)
                           pck_k(t)   = mean over the samples where keypoint k is visible of [err <= t]
                                        (keypoints never visible are left out)
                           pck(t)     = mean over keypoints of pck_k(t)   (per keypoint first, then the mean)
                           AUC        = trapz(pck[8:], t[8:]) / trapz(1, t[8:])
                                      = area on [t_8, t_19] = [21.05, 50] mm divided by 28.95 mm.
                         The first point is t_8 = 400/19 = 21.0526 mm, not 20 mm, although the script
                         prints "between 20mm - 50mm". When every keypoint is visible equally often it
                         equals auc(CHP3D_THRESHOLDS_MM, pck_curve(errors, CHP3D_THRESHOLDS_MM), 400/19, 50).
                         Their errors are root-relative 3D (GT centred on keypoint 0, which their RHD
                         reader sets to the palm centre, use_wrist_coord=False); feed ours root-relative
                         to the wrist (errors_3d's default) and say so when comparing, or take
                         palm_centred() first. first_index=0 gives the script's other number, the area on
                         the whole curve, 0-50 mm (EvalUtil.get_measures' auc: the mean of the per-keypoint
                         AUCs, which is the AUC of the mean curve).
  epe_colorhandpose3d()  that script's "Average mean EPE" and "Average median EPE": per keypoint the mean
                         (median) error over the samples where it is visible, then the mean over keypoints.

The palm-centre root (palm_centred): hand3d's BinaryDbReader with use_wrist_coord=False replaces keypoint 0
(the wrist) by 0.5 * (J_0 + J_12), 12 being the middle finger's MCP in RHD's order, visible when J_0 or J_12
is; eval_full.py then centres the GT on it. The wrist itself is then not evaluated.
"""

from __future__ import annotations

import numpy as np
import torch

from layers.base import Layer, Param, Params
from layers.hand.skeleton import ROOT
from layers.registry import register_layer

AUC_NAME = "AUC 20-50 mm"
CHP3D_AUC_NAME = "AUC (ColorHandPose3D protocol)"
DEFAULT_THRESHOLDS_MM = np.arange(0.0, 51.0, 1.0)        # 0, 1, ..., 50 mm (51 points)
CHP3D_THRESHOLDS_MM = np.linspace(0.0, 50.0, 20)         # hand3d: np.linspace(0.0, 0.050, 20) m
CHP3D_FIRST_INDEX = 8                                     # hand3d eval_full.py: pck_curve_all[8:], threshs[8:]
PALM_PAIR = (0, 12)                                       # wrist, middle-finger MCP (RHD order, SPEC section 1)

__all__ = ["errors_2d", "errors_3d", "epe_2d", "epe_3d", "pck_curve", "auc", "auc_weights",
           "pck_curve_colorhandpose3d", "auc_colorhandpose3d", "epe_colorhandpose3d", "palm_centred", "AUC_NAME",
           "CHP3D_AUC_NAME", "DEFAULT_THRESHOLDS_MM", "CHP3D_THRESHOLDS_MM", "PALM_PAIR", "EPE2D", "EPE3D", "PCK3D"]


# ---- functions ------------------------------------------------------------------------------------------------

def _points(x, dim: int) -> torch.Tensor:
    """(B, K*dim) or (B, K, dim) -> (B, K, dim); numpy input becomes a float64 tensor."""
    t = torch.as_tensor(x)
    if not t.is_floating_point():
        t = t.to(torch.float64)
    if t.dim() == 2 and t.shape[1] % dim == 0:
        return t.reshape(t.shape[0], -1, dim)
    if t.dim() == 3 and t.shape[2] == dim:
        return t
    raise ValueError(f"expected keypoints as (B, K*{dim}) or (B, K, {dim}), got shape {tuple(t.shape)}")


def _mask(vis, like: torch.Tensor) -> torch.Tensor:
    """The (B, K) weights of a visibility mask (ones when None), in `like`'s dtype and device."""
    if vis is None:
        return torch.ones_like(like)
    v = torch.as_tensor(vis).to(device=like.device, dtype=like.dtype)
    if v.numel() != like.numel():
        raise ValueError(f"visibility mask of shape {tuple(v.shape)} does not match errors of shape "
                         f"{tuple(like.shape)} (one 0/1 per keypoint)")
    return (v.reshape(like.shape) != 0).to(like.dtype)


def errors_2d(pred_uv, gt_uv) -> torch.Tensor:
    """Per-keypoint 2D distance ||pred - gt|| (B, K), in the inputs' unit (pixels)."""
    p, g = _points(pred_uv, 2), _points(gt_uv, 2)
    return torch.linalg.vector_norm(p - g.to(p), dim=-1)


def errors_3d(pred, gt, root_relative: bool = True, root: int = ROOT) -> torch.Tensor:
    """Per-keypoint 3D distance (B, K), in the inputs' unit (mm). root_relative: keypoint `root` is
    subtracted from both pred and gt first (so the root's own error is 0)."""
    p, g = _points(pred, 3), _points(gt, 3)
    g = g.to(p)
    if root_relative:
        p = p - p[:, root:root + 1]
        g = g - g[:, root:root + 1]
    return torch.linalg.vector_norm(p - g, dim=-1)


def _masked_mean(err: torch.Tensor, vis) -> torch.Tensor:
    w = _mask(vis, err)
    return (err * w).sum() / w.sum()


def epe_2d(pred_uv, gt_uv, vis=None) -> torch.Tensor:
    """2D end-point error: mean ||pred - gt|| over the (visible) keypoints of all samples; 0-d tensor, in
    the inputs' unit (pixels). pred_uv, gt_uv: (B, 2K) u, v per keypoint, or (B, K, 2); vis: (B, K)."""
    return _masked_mean(errors_2d(pred_uv, gt_uv), vis)


def epe_3d(pred, gt, vis=None, root_relative: bool = True, root: int = ROOT) -> torch.Tensor:
    """3D end-point error (MPJPE): mean ||pred - gt|| over the (visible) keypoints of all samples; 0-d
    tensor in the inputs' unit (mm). root_relative=True subtracts keypoint `root` (0, the wrist) from both
    first (the root, error 0, stays in the mean); False compares absolute camera-frame positions.
    pred, gt: (B, 3K) x, y, z per keypoint, or (B, K, 3); vis: (B, K)."""
    return _masked_mean(errors_3d(pred, gt, root_relative, root), vis)


def _thresholds(thresholds, like: torch.Tensor) -> torch.Tensor:
    t = DEFAULT_THRESHOLDS_MM if thresholds is None else thresholds
    return torch.as_tensor(np.asarray(t, dtype=np.float64)).to(device=like.device, dtype=like.dtype)


def pck_curve(errors, thresholds=None, vis=None) -> torch.Tensor:
    """PCK curve (T,): for each threshold t, the fraction of (visible) keypoint instances, pooled over all
    samples and keypoints, with error <= t. errors: any shape, e.g. (B, K), in mm; thresholds: (T,) in the
    errors' unit, default 0, 1, ..., 50 (DEFAULT_THRESHOLDS_MM); vis: 0/1 of the errors' shape."""
    e = torch.as_tensor(errors)
    if not e.is_floating_point():
        e = e.to(torch.float64)
    w = _mask(vis, e).reshape(-1)
    t = _thresholds(thresholds, e)
    hit = (e.reshape(-1, 1) <= t).to(e.dtype)                    # (N, T)
    return (w @ hit) / w.sum()


def auc_weights(thresholds, lo: float = 20.0, hi: float = 50.0) -> np.ndarray:
    """Weights w (T,) with AUC = sum_i w_i * pck_i: the trapezoid area on [lo, hi] of the curve through the
    points (t_i, pck_i), linear between them, divided by (hi - lo). Thresholds strictly increasing and
    covering [lo, hi]; lo and hi need not be thresholds (the curve is interpolated there)."""
    t = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    if t.size < 2 or not np.all(np.diff(t) > 0):
        raise ValueError("thresholds must be at least 2 strictly increasing values")
    if not lo < hi:
        raise ValueError(f"the AUC range needs lo < hi, got [{lo:g}, {hi:g}]")
    if lo < t[0] or hi > t[-1]:
        raise ValueError(f"the AUC range [{lo:g}, {hi:g}] is not covered by the thresholds "
                         f"[{t[0]:g}, {t[-1]:g}]")
    w = np.zeros_like(t)
    for i in range(t.size - 1):             # over segments, at setup time only
        a, b = max(t[i], lo), min(t[i + 1], hi)
        if b <= a:
            continue
        h = t[i + 1] - t[i]
        la, lb = (a - t[i]) / h, (b - t[i]) / h           # interpolation weights of pck_{i+1} at a and b
        w[i] += (b - a) / 2 * (2 - la - lb)
        w[i + 1] += (b - a) / 2 * (la + lb)
    return w / (hi - lo)


def auc(thresholds, pck, lo: float = 20.0, hi: float = 50.0) -> torch.Tensor:
    """AUC_lo-hi (SPEC: lo 20, hi 50 mm): trapezoid area under the PCK curve sampled at `thresholds`, on
    [lo, hi], divided by (hi - lo); 0-d tensor in [0, 1] (a PCK of 1 everywhere gives 1)."""
    p = torch.as_tensor(pck)
    if not p.is_floating_point():
        p = p.to(torch.float64)
    w = torch.as_tensor(auc_weights(thresholds, lo, hi)).to(device=p.device, dtype=p.dtype)
    if p.shape[-1:] != w.shape:
        raise ValueError(f"pck has {p.shape[-1] if p.dim() else 0} values for {w.numel()} thresholds")
    return (p * w).sum(-1)


def pck_curve_colorhandpose3d(errors, vis=None) -> tuple[torch.Tensor, torch.Tensor]:
    """ColorHandPose3D's PCK curve: (thresholds (20,) mm = linspace(0, 50, 20), pck (20,)), pck being the
    mean over keypoints of each keypoint's own PCK over the samples where it is visible (keypoints never
    visible are left out). errors: (N, K) in mm (root-relative 3D in their evaluation); vis: (N, K)."""
    e = torch.as_tensor(errors)
    if not e.is_floating_point():
        e = e.to(torch.float64)
    if e.dim() != 2:
        raise ValueError(f"errors must be (N, K), got shape {tuple(e.shape)}")
    w = _mask(vis, e)                                            # (N, K)
    t = _thresholds(CHP3D_THRESHOLDS_MM, e)
    hit = (e.unsqueeze(-1) <= t).to(e.dtype)                     # (N, K, T)
    count = w.sum(0)                                             # (K,)
    per_kp = (hit * w.unsqueeze(-1)).sum(0) / count.unsqueeze(-1).clamp(min=1)
    seen = (count > 0).to(e.dtype)
    return t, (per_kp * seen.unsqueeze(-1)).sum(0) / seen.sum()


def auc_colorhandpose3d(errors, vis=None, first_index: int = CHP3D_FIRST_INDEX) -> torch.Tensor:
    """"AUC (ColorHandPose3D protocol)": the area under pck_curve_colorhandpose3d on its points from index 8
    on (thresholds 21.05 .. 50 mm), divided by their span (50 - 400/19 mm); 0-d tensor. first_index=0: the
    whole curve, 0-50 mm (the script's "Area under curve between 0mm - 50mm"). See the module docstring."""
    t, pck = pck_curve_colorhandpose3d(errors, vis)
    t0 = float(CHP3D_THRESHOLDS_MM[first_index])
    return auc(CHP3D_THRESHOLDS_MM, pck, t0, float(CHP3D_THRESHOLDS_MM[-1]))


def epe_colorhandpose3d(errors, vis=None) -> tuple[float, float]:
    """(mean, median) as hand3d's EvalUtil.get_measures: for each keypoint the mean (median) of its errors over
    the samples where it is visible, then the mean of those over the keypoints ever visible. errors: (N, K)."""
    e = np.asarray(torch.as_tensor(errors).double().cpu().numpy())
    if e.ndim != 2:
        raise ValueError(f"errors must be (N, K), got shape {e.shape}")
    w = np.ones_like(e, bool) if vis is None else np.asarray(torch.as_tensor(vis).cpu().numpy()).reshape(e.shape) != 0
    per_kp = [(e[w[:, k], k].mean(), np.median(e[w[:, k], k])) for k in range(e.shape[1]) if w[:, k].any()]
    if not per_kp:
        return float("nan"), float("nan")
    means, medians = zip(*per_kp)
    return float(np.mean(means)), float(np.mean(medians))


def palm_centred(points, vis=None):
    """ColorHandPose3D's keypoint set (use_wrist_coord=False): keypoint 0 (the wrist) replaced by the palm
    centre 0.5 * (J_0 + J_12) (PALM_PAIR: wrist and middle-finger MCP), the others unchanged; visible when J_0
    or J_12 is. points: (B, 3K) or (B, K, 3); vis: (B, K) or None. Returns (points (B, K, 3), vis or None)."""
    p = _points(points, 3).clone()
    a, b = PALM_PAIR
    p[:, 0] = 0.5 * (p[:, a] + p[:, b])
    if vis is None:
        return p, None
    v = torch.as_tensor(vis).reshape(p.shape[0], -1).clone()
    v[:, 0] = ((v[:, a] != 0) | (v[:, b] != 0)).to(v.dtype)
    return p, v


# ---- layers ---------------------------------------------------------------------------------------------------

class _Metric(Layer):
    """Base: bottoms pred (B, D*K), gt (B, D*K), optional vis (B, K). Gradients are not tracked."""
    num_bottoms = (2, 3)
    dim = 2

    def setup(self, bottom_shapes):
        pred, gt = bottom_shapes[:2]
        d = self.dim
        what = "u, v" if d == 2 else "x, y, z"
        if len(pred) != 2 or pred[1] == 0 or pred[1] % d:
            raise self.error(f"bottom 0 (prediction) must be (B, {d}K) with {what} per keypoint; got shape {pred}")
        if tuple(gt) != tuple(pred):
            raise self.error(f"bottom 1 (ground truth) has shape {gt}, the prediction {pred}: they must match")
        self.k = pred[1] // d
        if len(bottom_shapes) == 3:
            vis = bottom_shapes[2]
            if not vis or vis[0] != pred[0] or int(np.prod(vis[1:])) != self.k:
                raise self.error(f"bottom 2 (visibility) must be (B, K) = ({pred[0]}, {self.k}); got shape {vis}")

    def errors(self, pred, gt) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, pred, gt, vis=None):
        with torch.no_grad():
            err = self.errors(pred, gt)
            w = torch.ones_like(err) if vis is None else (vis.reshape(err.shape) != 0).to(err.dtype)
            return self.reduce(err, w)

    def reduce(self, err, w):
        return (err * w).sum() / w.sum()


@register_layer("EPE2D")
class EPE2D(_Metric):
    """2D end-point error: mean over the (visible) keypoints of ||pred_k - gt_k||, in the inputs' unit
    (pixels of the original image for the reported 2D EPE; crop units [0, 1] if given crop coordinates).

    Bottoms: pred (B, 2K), gt (B, 2K) u, v per keypoint; optional vis (B, K) 0/1.
    Tops: epe () scalar; NaN when no keypoint is visible.  Params: none.
    Not differentiable (a metric: no gradient flows).

    Examples::

        >>> import torch
        >>> from layers.build import make_layer
        >>> epe = make_layer('type: "EPE2D" bottom: "pred" bottom: "gt" top: "epe"', bottom_shapes=[(1, 4), (1, 4)])
        >>> epe(torch.tensor([[3.0, 4.0, 1.0, 1.0]]), torch.tensor([[0.0, 0.0, 1.0, 1.0]])).item()   # errors 5 and 0
        2.5
    """

    def errors(self, pred, gt):
        return errors_2d(pred, gt)


@register_layer("EPE3D")
class EPE3D(_Metric):
    """3D end-point error (MPJPE): mean over the (visible) keypoints of ||pred_k - gt_k||, in the inputs'
    unit (mm for the reported number). root_relative subtracts keypoint root_joint_id from pred and gt first.

    Bottoms: pred (B, 3K), gt (B, 3K) x, y, z per keypoint; optional vis (B, K) 0/1.
    Tops: epe () scalar; NaN when no keypoint is visible.
    Params (epe_3d_param): root_relative = true, root_joint_id = 0 (the wrist).
    Not differentiable (a metric: no gradient flows).

    Examples::

        >>> import torch
        >>> from layers.build import make_layer
        >>> epe = make_layer('type: "EPE3D" bottom: "pred" bottom: "gt" top: "epe"', bottom_shapes=[(1, 6), (1, 6)])
        >>> gt = torch.tensor([[0.0, 0.0, 500.0, 0.0, 0.0, 600.0]])            # 2 joints (mm); joint 0 is the root
        >>> pred = gt + torch.tensor([[10.0, 10.0, 10.0, 13.0, 14.0, 10.0]])   # all + 10, joint 1 also + (3, 4, 0)
        >>> epe(pred, gt).item()                                               # root-relative errors 0 and 5
        2.5
    """
    params = Params("epe_3d_param", root_relative=Param(bool, True), root_joint_id=Param(int, ROOT))
    dim = 3

    def setup(self, bottom_shapes):
        super().setup(bottom_shapes)
        if not 0 <= self.p.root_joint_id < self.k:
            raise self.error(f"root_joint_id = {self.p.root_joint_id} is not a keypoint of a {self.k}-keypoint "
                             f"bottom (0..{self.k - 1})")

    def errors(self, pred, gt):
        return errors_3d(pred, gt, self.p.root_relative, self.p.root_joint_id)


@register_layer("PCK3D")
class PCK3D(EPE3D):
    """3D PCK curve and its AUC (SPEC section 5):

        pck[i] = (number of visible keypoint instances with ||pred - gt|| <= t_i) / (number visible)
        auc    = trapezoid area of the pck curve on [auc_min, auc_max] / (auc_max - auc_min)

    pooled over the batch's samples and keypoints. The curve is linear between thresholds, so auc_min and
    auc_max need not be thresholds. (ColorHandPose3D's variant is metrics.auc_colorhandpose3d: it needs the
    whole test set's per-keypoint errors, so it is an evaluation-tool number, not a per-batch layer.)
    Bottoms: pred (B, 3K), gt (B, 3K) x, y, z per keypoint (mm); optional vis (B, K) 0/1.
    Tops: pck (T,); optional auc () scalar.
    Params (pck_3d_param): threshold_min = 0, threshold_max = 50, threshold_step = 1 (mm; T = 51), or
      repeated threshold (explicit, increasing; replaces min/max/step); auc_min = 20, auc_max = 50;
      root_relative = true, root_joint_id = 0.
    Not differentiable (a metric: no gradient flows).

    Examples::

        >>> import torch
        >>> from layers.build import make_layer
        >>> pck = make_layer('type: "PCK3D" bottom: "pred" bottom: "gt" top: "pck" top: "auc" '
        ...                  'pck_3d_param { threshold: 0 threshold: 10 auc_min: 0 auc_max: 10 }',
        ...                  bottom_shapes=[(1, 6), (1, 6)])
        >>> curve, auc = pck(torch.tensor([[0.0, 0.0, 0.0, 3.0, 4.0, 0.0]]), torch.zeros(1, 6))   # errors 0 and 5 mm
        >>> curve.tolist(), auc.item()   # half within 0 mm, all within 10 mm; area (0.5 + 1) / 2
        ([0.5, 1.0], 0.75)
    """
    params = Params("pck_3d_param", threshold_min=Param(float, 0.0), threshold_max=Param(float, 50.0),
                    threshold_step=Param(float, 1.0), threshold=Param(float, repeated=True), auc_min=Param(float, 20.0),
                    auc_max=Param(float, 50.0), root_relative=Param(bool, True), root_joint_id=Param(int, ROOT))
    num_tops = (1, 2)

    def setup(self, bottom_shapes):
        super().setup(bottom_shapes)
        p = self.p
        if p.threshold:
            if any(p.has(n) for n in ("threshold_min", "threshold_max", "threshold_step")):
                raise self.error("give either repeated threshold or threshold_min/max/step, not both")
            t = np.asarray(p.threshold, dtype=np.float64)
            if t.size < 2 or not np.all(np.diff(t) > 0):
                raise self.error(f"threshold values must be at least 2, strictly increasing; got {p.threshold}")
        else:
            if not p.threshold_step > 0:
                raise self.error(f"threshold_step must be positive, got {p.threshold_step:g}")
            if not p.threshold_max > p.threshold_min:
                raise self.error(f"threshold_max ({p.threshold_max:g}) must be greater than threshold_min "
                                 f"({p.threshold_min:g})")
            n = int(np.floor((p.threshold_max - p.threshold_min) / p.threshold_step + 1e-9)) + 1
            t = p.threshold_min + p.threshold_step * np.arange(n)
        try:
            w = auc_weights(t, p.auc_min, p.auc_max)
        except ValueError as e:
            raise self.error(str(e)) from None
        self.register_buffer("thresholds", torch.as_tensor(t), persistent=False)
        self.register_buffer("weights", torch.as_tensor(w), persistent=False)

    def reduce(self, err, w):
        t = self.thresholds.to(err.dtype)
        hit = (err.reshape(-1, 1) <= t).to(err.dtype)               # (B*K, T)
        pck = (w.reshape(-1) @ hit) / w.sum()
        if self.num_top_blobs == 1:
            return pck
        return pck, (pck * self.weights.to(err.dtype)).sum()
