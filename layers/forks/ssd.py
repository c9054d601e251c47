"""The SSD fork's layer types (Wei Liu's weiliu89/caffe, branch ssd): Permute, Normalize, PriorBox and
DetectionOutput, with the fork's caffe.proto fields and defaults (PermuteParameter, NormalizeParameter,
PriorBoxParameter, DetectionOutputParameter with NonMaximumSuppressionParameter and SaveOutputParameter).

The box arithmetic follows src/caffe/util/bbox_util.cpp (DecodeBBox, JaccardOverlap, GetMaxScoreIndex,
ApplyNMSFast) and the layers' Forward_cpu, which is the spec here (the GPU path of DetectionOutput sorts with
std::sort, whose order of equal scores is unspecified; the CPU path's std::stable_sort is what is followed).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from layers.base import FILLER, REQUIRED, Layer, Param, Params
from layers.registry import register_layer
from netdef.errors import NetError, NetWarning
from netdef.params import as_enum, field_error
from netdef.text_format import Message

FLT_MAX = 3.4028234663852886e38
CODE_TYPES = ("CORNER", "CENTER_SIZE", "CORNER_SIZE")   # PriorBoxParameter.CodeType: numbered 1, 2, 3


class _CodeType(Param):
    """PriorBoxParameter.CodeType, whose numbers start at 1 (CORNER = 1), so `code_type: 2` is CENTER_SIZE."""

    def __init__(self, default: str):
        super().__init__(CODE_TYPES, default)

    def convert(self, f, label: str = ""):
        v = f.value
        if isinstance(v, int) and not isinstance(v, bool):
            if 1 <= v <= len(CODE_TYPES):
                return CODE_TYPES[v - 1]
            raise field_error(f, f"{label}: " * bool(label) + f"'{f.name}' expects one of CORNER (1), "
                                 f"CENTER_SIZE (2), CORNER_SIZE (3), found {v}")
        try:
            return as_enum(f, CODE_TYPES)
        except NetError as e:
            if not label:
                raise
            raise NetError(f"{f.loc}: {label}: {str(e)[len(str(f.loc)) + 2:]}") from None


def _as_f32(x: float) -> float:
    """A value as caffe.proto's `float` field holds it (thresholds are compared as floats in the fork)."""
    return float(np.float32(x))


# ------------------------------------------------------------------------------------------------ Permute

@register_layer("Permute")
class Permute(Layer):
    """Reorders the axes: y = x.permute(order), top shape (d_order[0], d_order[1], ...).

    The given `order` may list fewer axes than the bottom has: the axes it leaves out follow in their
    natural order (order {0 2 3 1} on a 4-D blob is NCHW -> NHWC; order {1} on a 3-D blob is (1, 0, 2)).
    An order equal to the natural one passes the bottom through (Caffe shares the data).
    Bottoms: x (any number of axes).  Tops: y (same elements, permuted axes).
    Params (permute_param): order (repeated, each in 0..ndim-1, no duplicates; none: the identity).
    Fork: SSD (weiliu89/caffe, permute_layer.cpp).

    Examples::

        >>> import torch
        >>> from layers.build import make_layer
        >>> perm = make_layer('type: "Permute" bottom: "x" top: "y" permute_param { order: 0 order: 2 order: 3 '
        ...                   'order: 1 }', bottom_shapes=[(2, 3, 4, 5)])
        >>> perm(torch.zeros(2, 3, 4, 5)).shape   # NCHW -> NHWC
        torch.Size([2, 4, 5, 3])
    """
    params = Params("permute_param", order=Param(int, repeated=True))

    def setup(self, bottom_shapes):
        (shape,) = bottom_shapes
        ndim = len(shape)
        orders: list[int] = []
        for o in self.p.order:
            if not 0 <= o < ndim:
                raise self.error(f"order {o} is out of range for a {ndim}-D bottom (each order must be in "
                                 f"0..{ndim - 1})")
            if o in orders:
                raise self.error(f"order {list(self.p.order)} lists axis {o} twice (no duplicate orders)")
            orders.append(o)
        orders += [i for i in range(ndim) if i not in orders]
        self.order = tuple(orders)
        self.need_permute = self.order != tuple(range(ndim))

    def forward(self, x):
        if x.dim() != len(self.order):
            raise self.error(f"bottom has {x.dim()} axes, the layer was set up for {len(self.order)}")
        return x.permute(self.order) if self.need_permute else x


# ------------------------------------------------------------------------------------------------ Normalize

@register_layer("Normalize")
class Normalize(Layer):
    """L2 normalization followed by a learned scale.

    across_spatial true:  y[n] = x[n] / sqrt(sum over c, h, w of x[n]^2 + eps) * s      (one norm per sample)
    across_spatial false: y[n, :, h, w] = x[n, :, h, w] / sqrt(sum over c of x[n, c, h, w]^2 + eps) * s
                          (one norm per location, across channels)
    eps is added to the sum of squares, inside the square root, as the fork does. s is scale[0] when
    channel_shared, else scale[c] for channel c. Backward: autograd, which is the fork's backward formula
    (d(x/n)/dx = (g - x (x.g) / n^2) / n, times s); for the scale, sum(g * x / n) (the fork divides
    sum(g * y) by s, which is the same except at s == 0, where it gives NaN).
    Bottoms: x (N, C[, H[, W]]), 2 to 4 axes as the fork's legacy accessors allow; spatial = the axes after C.
    Tops: y (same shape).
    Params (norm_param): across_spatial = true, scale_filler (default constant 1), channel_shared = true,
    eps = 1e-10.
    Blobs: scale, shape () when channel_shared (the fork's 0-axis blob, count 1), else (C,).
    Fork: SSD (weiliu89/caffe, normalize_layer.cpp).

    Examples::

        >>> import torch
        >>> from layers.build import make_layer
        >>> norm = make_layer('type: "Normalize" bottom: "x" top: "y" norm_param { across_spatial: false '
        ...                   'scale_filler { type: "constant" value: 2 } }', bottom_shapes=[(1, 2, 1, 1)])
        >>> norm(torch.tensor([3.0, 4.0]).view(1, 2, 1, 1)).detach().flatten()   # 2 * (3, 4) / 5
        tensor([1.2000, 1.6000])
    """
    params = Params("norm_param", across_spatial=Param(bool, True), scale_filler=Param(FILLER),
                    channel_shared=Param(bool, True), eps=Param(float, 1e-10))

    def setup(self, bottom_shapes):
        (shape,) = bottom_shapes
        if not 2 <= len(shape) <= 4:
            raise self.error(f"bottom must have 2 to 4 axes (N, C[, H[, W]]), got shape {shape}")
        filler = self.p.scale_filler
        if not self.p.has("scale_filler"):
            filler = FILLER.parse(None, self.label)
            filler.value = 1.0
        self.add_blob("scale", () if self.p.channel_shared else (shape[1],), filler)

    def forward(self, x):
        if not 2 <= x.dim() <= 4:
            raise self.error(f"bottom must have 2 to 4 axes (N, C[, H[, W]]), got shape {tuple(x.shape)}")
        sq = x * x
        if self.p.across_spatial:
            norm = torch.sqrt(sq.sum(dim=tuple(range(1, x.dim())), keepdim=True) + self.p.eps)
            y = x * (1.0 / norm)
        else:
            norm = torch.sqrt(sq.sum(dim=1, keepdim=True) + self.p.eps)
            y = x / norm
        s = self.scale.to(x.dtype)
        if not self.p.channel_shared:
            s = s.view(-1, *([1] * (x.dim() - 2)))
        return y * s


# ------------------------------------------------------------------------------------------------ PriorBox

@register_layer("PriorBox")
class PriorBox(Layer):
    """SSD's default (prior) boxes for every cell of a feature map, in coordinates normalized by the image size.

    For cell (h, w): center cx = (w + offset) * step_w, cy = (h + offset) * step_h, where step is the given
    step (or step_h, step_w), else image width / feature width (height alike); the image size is img_size (or
    img_h, img_w), else bottom 1's H x W. For each min_size m (and its max_size M), in this order:
      a box m x m; then, with max_size, a box sqrt(m M) x sqrt(m M); then, for each aspect ratio r other than
      1 (in the order given, duplicates dropped, each followed by 1/r when flip), a box m sqrt(r) x m / sqrt(r)
      (width x height).
    Each box is (xmin, ymin, xmax, ymax) = ((cx - bw/2) / img_w, (cy - bh/2) / img_h, (cx + bw/2) / img_w,
    (cy + bh/2) / img_h), clipped to [0, 1] when clip. Boxes are ordered by h, then w, then the order above.
    As in the fork, m and M are truncated to integers when the boxes are made (min_size: 30.5 makes 30-pixel
    boxes), the centers and sizes are computed in float and the coordinates in double, then stored in the
    top's dtype.
    Bottoms: feature map (N, C, H, W), and the image (N, C', H_img, W_img) (only its shape is read; it may be
    left out when img_size or img_h/img_w is given).
    Tops: (1, 2, H * W * num_priors * 4): channel 0 the boxes, channel 1 each box's 4 variances (variance:
    none -> 0.1 for all, one value -> for all, four values -> per coordinate). No gradient, no learnable blobs;
    the values depend only on the bottoms' shapes (computed once per shape and kept).
    num_priors = len(min_size) * (1 + number of aspect ratios other than 1, flips included) + len(max_size).
    Params (prior_box_param): min_size (repeated, required, > 0), max_size (repeated, none or one per min_size,
    each > its min_size), aspect_ratio (repeated, > 0), flip = true, clip = false, variance (repeated: 0, 1 or
    4 values, > 0), img_size, img_h, img_w (not img_size with img_h/img_w; both of img_h and img_w), step,
    step_h, step_w (likewise), offset = 0.5.
    Fork: SSD (weiliu89/caffe, prior_box_layer.cpp). Differs: an aspect ratio <= 0 is an error (the fork makes
    NaN or infinite boxes).

    Examples::

        >>> import torch
        >>> from layers.build import make_layer
        >>> pb = make_layer('type: "PriorBox" bottom: "fm" bottom: "img" top: "p" prior_box_param { min_size: 4 }',
        ...                 bottom_shapes=[(1, 8, 1, 1), (1, 3, 8, 8)])
        >>> top = pb(torch.zeros(1, 8, 1, 1), torch.zeros(1, 3, 8, 8))
        >>> top.shape                   # (1, 2, H * W * num_priors * 4)
        torch.Size([1, 2, 4])
        >>> top[0]                      # a 4x4 box centered in the 8x8 image; its variances (default 0.1)
        tensor([[0.2500, 0.2500, 0.7500, 0.7500],
                [0.1000, 0.1000, 0.1000, 0.1000]])
    """
    params = Params("prior_box_param", min_size=Param(float, repeated=True), max_size=Param(float, repeated=True),
                    aspect_ratio=Param(float, repeated=True), flip=Param(bool, True), clip=Param(bool, False),
                    variance=Param(float, repeated=True), img_size=Param(int, 0), img_h=Param(int, 0),
                    img_w=Param(int, 0), step=Param(float, 0.0), step_h=Param(float, 0.0), step_w=Param(float, 0.0),
                    offset=Param(float, 0.5))
    num_bottoms = (1, 2)

    def setup(self, bottom_shapes):
        p = self.p
        if not p.min_size:
            raise self.error("missing min_size in prior_box_param (give one or more)")
        if any(not m > 0 for m in p.min_size):
            raise self.error(f"min_size must be positive, got {p.min_size}")
        ratios = [1.0]
        for ar in p.aspect_ratio:
            if not ar > 0:
                raise self.error(f"aspect_ratio must be positive, got {ar:g}")
            ar32 = np.float32(ar)                          # the fork keeps ratios as float
            if any(abs(ar32 - np.float32(r)) < 1e-6 for r in ratios):
                continue
            ratios.append(float(ar32))
            if p.flip:
                ratios.append(float(np.float32(1.0 / float(ar32))))
        self.aspect_ratios = ratios
        if p.max_size:
            if len(p.max_size) != len(p.min_size):
                raise self.error(f"{len(p.max_size)} max_size value(s) for {len(p.min_size)} min_size value(s): "
                                 f"give one per min_size, or none")
            for m, big in zip(p.min_size, p.max_size):
                if not big > m:
                    raise self.error(f"max_size {big:g} must be greater than its min_size {m:g}")
        self.num_priors = len(ratios) * len(p.min_size) + len(p.max_size)
        if len(p.variance) > 1 and len(p.variance) != 4:
            raise self.error(f"give 1 or 4 variance values (or none for 0.1), got {len(p.variance)}")
        if any(not v > 0 for v in p.variance):
            raise self.error(f"variance values must be positive, got {p.variance}")
        self.variance = [float(np.float32(v)) for v in p.variance] or [float(np.float32(0.1))]
        self.img_hw = self._pair("img_size", "img_h", "img_w")
        self.step_hw = self._pair("step", "step_h", "step_w")
        shape = bottom_shapes[0]
        if len(shape) != 4:
            raise self.error(f"bottom 0 (the feature map) must have 4 axes (N, C, H, W), got shape {shape}")
        if len(bottom_shapes) == 2 and len(bottom_shapes[1]) != 4:
            raise self.error(f"bottom 1 (the image) must have 4 axes (N, C, H, W), got shape {bottom_shapes[1]}")
        if len(bottom_shapes) == 1 and self.img_hw == (0, 0):
            raise self.error("with one bottom (the feature map) the image size must be given: img_size, or "
                             "img_h and img_w (else add the image as bottom 1)")
        self._cache: dict = {}

    def _pair(self, both: str, h: str, w: str):
        """(h, w) from `both` or from `h` and `w` (the fork's rules); (0, 0) when none is given."""
        p = self.p
        if p.has(h) or p.has(w):
            if p.has(both):
                raise self.error(f"give either {both} or {h}/{w}, not both")
            vh, vw = getattr(p, h), getattr(p, w)
            if not (vh > 0 and vw > 0):
                raise self.error(f"{h} and {w} must both be given and larger than 0, got {h} {vh:g}, {w} {vw:g}")
            return vh, vw
        if p.has(both):
            v = getattr(p, both)
            if not v > 0:
                raise self.error(f"{both} must be larger than 0, got {v:g}")
            return v, v
        return 0, 0

    def infer_top_shapes(self, bottom_shapes):
        _, _, h, w = bottom_shapes[0]
        return [(1, 2, h * w * self.num_priors * 4)]

    def priors(self, layer_hw, img_hw) -> np.ndarray:
        """The top's values, (2, H * W * num_priors * 4) in float64 (each already rounded as the fork's float
        arithmetic rounds it; cast to float32 they are the fork's float values)."""
        p, f32 = self.p, np.float32
        lh, lw = layer_hw
        img_h, img_w = self.img_hw if self.img_hw[0] and self.img_hw[1] else img_hw
        if self.step_hw[0] and self.step_hw[1]:
            step_h, step_w = f32(self.step_hw[0]), f32(self.step_hw[1])
        else:
            step_h, step_w = f32(img_h) / f32(lh), f32(img_w) / f32(lw)
        offset = f32(p.offset)
        cx = (np.arange(lw, dtype=f32) + offset) * step_w                       # float, as the fork
        cy = (np.arange(lh, dtype=f32) + offset) * step_h
        sizes = []                                                              # (bw, bh) per prior, as float
        for s, m in enumerate(p.min_size):
            m = int(m)
            sizes.append((f32(m), f32(m)))
            if p.max_size:
                big = int(p.max_size[s])
                side = f32(math.sqrt(m * big))
                sizes.append((side, side))
            for ar in self.aspect_ratios:
                if abs(ar - 1.0) < 1e-6:
                    continue
                r = math.sqrt(ar)
                sizes.append((f32(m * r), f32(m / r)))
        bw = np.array([s[0] for s in sizes], dtype=np.float64)
        bh = np.array([s[1] for s in sizes], dtype=np.float64)
        cxg = np.broadcast_to(cx.astype(np.float64)[None, :, None], (lh, lw, len(sizes)))
        cyg = np.broadcast_to(cy.astype(np.float64)[:, None, None], (lh, lw, len(sizes)))
        boxes = np.stack([(cxg - bw / 2.0) / img_w, (cyg - bh / 2.0) / img_h,
                          (cxg + bw / 2.0) / img_w, (cyg + bh / 2.0) / img_h], axis=-1).reshape(-1)
        if p.clip:
            boxes = np.clip(boxes, 0.0, 1.0)
        var = np.tile(np.array(self.variance if len(self.variance) == 4 else self.variance * 4), boxes.size // 4)
        return np.stack([boxes, var])

    def forward(self, x, img=None):
        if x.dim() != 4:
            raise self.error(f"bottom 0 (the feature map) must have 4 axes (N, C, H, W), got shape {tuple(x.shape)}")
        img_hw = tuple(img.shape[2:]) if img is not None else self.img_hw
        dtype = x.dtype if x.dtype.is_floating_point else torch.get_default_dtype()
        key = (tuple(x.shape[2:]), img_hw, dtype, x.device)
        top = self._cache.get(key)
        if top is None:
            if x.device.type == "meta":
                return torch.empty((1, 2, x.shape[2] * x.shape[3] * self.num_priors * 4), dtype=dtype, device="meta")
            values = self.priors(tuple(x.shape[2:]), img_hw)
            top = torch.from_numpy(values[None]).to(device=x.device, dtype=dtype)
            self._cache = {key: top}        # one shape at a time, as the fork's Reshape
        return top.clone()


# ------------------------------------------------------------------------------------------------ DetectionOutput

NMS_PARAM = Params("nms_param", nms_threshold=Param(float, 0.3), top_k=Param(int), eta=Param(float, 1.0))
SAVE_OUTPUT_PARAM = Params("save_output_param", output_directory=Param(str, ""), output_name_prefix=Param(str, ""),
                           output_format=Param(str, ""), label_map_file=Param(str, ""),
                           name_size_file=Param(str, ""), num_test_image=Param(int, 0),
                           resize_param=Param(Message))


def _box_sizes(b: np.ndarray) -> np.ndarray:
    """BBoxSize (normalized) of each row of b (K, 4): 0 when xmax < xmin or ymax < ymin, else width * height."""
    x1, y1, x2, y2 = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    return np.where((x2 < x1) | (y2 < y1), b.dtype.type(0), (x2 - x1) * (y2 - y1))


def _jaccard(box: np.ndarray, size, boxes: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """JaccardOverlap (bbox_util.cpp, normalized boxes) of one box with each row of boxes, in their dtype: 0
    unless the intersection has positive width and height, else intersection / (size1 + size2 - intersection)."""
    iw = np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0])
    ih = np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1])
    inter = iw * ih
    iou = inter / ((size + sizes) - inter)
    return np.where((iw > 0) & (ih > 0), iou, boxes.dtype.type(0))


MASK_LIMIT = 1 << 24   # overlap-matrix entries computed at once; classes with more candidates than its root go row by row


def _candidates(scores: np.ndarray, score_threshold: float, top_k: int) -> np.ndarray:
    """GetMaxScoreIndex: the indices whose score is > score_threshold, best first (equal scores in index
    order: std::stable_sort), the first top_k of them (-1: all)."""
    cand = np.flatnonzero(scores > scores.dtype.type(score_threshold))
    order = cand[np.argsort(-scores[cand], kind="stable")]
    return order[:top_k] if top_k > -1 else order


def _overlap_masks(groups: list[np.ndarray], threshold: float, device) -> list[np.ndarray]:
    """For each group of candidate boxes (K, 4), best first: the (K, K) mask 'box j may not be kept next to
    kept box i', i.e. not JaccardOverlap(i, j) <= threshold; computed on `device` for all groups at once (in
    chunks of MASK_LIMIT entries)."""
    out: list[np.ndarray] = []
    k_max = max(len(g) for g in groups)
    per_chunk = max(1, MASK_LIMIT // max(1, k_max * k_max))
    for start in range(0, len(groups), per_chunk):
        chunk = groups[start:start + per_chunk]
        padded = np.zeros((len(chunk), k_max, 4), dtype=chunk[0].dtype)
        for g, boxes in enumerate(chunk):
            padded[g, :len(boxes)] = boxes
        b = torch.from_numpy(padded).to(device)
        x1, y1, x2, y2 = b.unbind(-1)
        sizes = torch.where((x2 < x1) | (y2 < y1), 0, (x2 - x1) * (y2 - y1))
        iw = torch.minimum(x2[:, :, None], x2[:, None, :]) - torch.maximum(x1[:, :, None], x1[:, None, :])
        ih = torch.minimum(y2[:, :, None], y2[:, None, :]) - torch.maximum(y1[:, :, None], y1[:, None, :])
        inter = iw * ih
        iou = torch.where((iw > 0) & (ih > 0), inter / ((sizes[:, :, None] + sizes[:, None, :]) - inter), 0)
        masks = (~(iou <= threshold)).cpu().numpy()
        out += [masks[g, :len(boxes), :len(boxes)] for g, boxes in enumerate(chunk)]
    return out


def _greedy(mask: np.ndarray) -> list[int]:
    """ApplyNMSFast's pass with a fixed threshold, run from the kept side: each kept box (in order) rules out
    the boxes its mask row marks."""
    removed = np.zeros(len(mask), dtype=bool)
    kept = []
    for i in range(len(mask)):
        if not removed[i]:
            kept.append(i)
            removed |= mask[i]
    return kept


def _nms_rows(b: np.ndarray, threshold: float, eta: float) -> list[int]:
    """ApplyNMSFast's pass on candidate boxes b (K, 4), best first, overlaps computed a row at a time (for many
    candidates, or with adaptive NMS, where after each kept box the threshold becomes threshold * eta (in
    float, as the fork) while it is > 0.5)."""
    sizes = _box_sizes(b)
    thr = np.float32(threshold)
    kept: list[int] = []
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if eta < 1:
            eta32 = np.float32(eta)
            for i in range(len(b)):
                if kept and not bool(np.all(_jaccard(b[i], sizes[i], b[kept], sizes[kept]) <= thr)):
                    continue
                kept.append(i)
                if thr > 0.5:
                    thr = np.float32(thr * eta32)
        else:
            removed = np.zeros(len(b), dtype=bool)
            for i in range(len(b)):
                if removed[i]:
                    continue
                kept.append(i)
                if i + 1 < len(b):
                    removed[i + 1:] |= ~(_jaccard(b[i], sizes[i], b[i + 1:], sizes[i + 1:]) <= thr)
    return kept


@register_layer("DetectionOutput")
class DetectionOutput(Layer):
    """SSD's detections: decodes the location predictions against the priors, keeps per class the boxes that
    survive non-maximum suppression, then the keep_top_k best over all classes.

    For each image and each class c other than background_label_id:
      1. decode every prior's box (code_type; v = the prior's variances, or 1 when variance_encoded_in_target;
         prior (pxmin, pymin, pxmax, pymax), width pw, height ph, center pcx, pcy; loc (l0, l1, l2, l3)):
           CORNER:      (pxmin + v0 l0, pymin + v1 l1, pxmax + v2 l2, pymax + v3 l3)
           CENTER_SIZE: center (v0 l0 pw + pcx, v1 l1 ph + pcy), size (exp(v2 l2) pw, exp(v3 l3) ph)
           CORNER_SIZE: (pxmin + v0 l0 pw, pymin + v1 l1 ph, pxmax + v2 l2 pw, pymax + v3 l3 ph)
         (not clipped: the fork decodes with clip_bbox false); with share_location one box per prior serves
         every class, else each class has its own;
      2. ApplyNMSFast: the priors whose score for c is > confidence_threshold, sorted by score (descending,
         stable), the first nms_param.top_k of them, then greedily kept unless their Jaccard overlap with a box
         already kept for c is > the threshold (nms_threshold, multiplied by eta after each kept box while it
         is > 0.5: adaptive NMS);
    then, if keep_top_k > -1 and more boxes were kept, the keep_top_k best scores over all classes (stable:
    equal scores keep class, then NMS order; the fork's std::sort leaves that order unspecified).
    Bottoms: loc (N, P * 4 * L) (L = 1 with share_location, else num_classes; per prior, per class, 4 values),
    conf (N, P * num_classes) (per prior, per class; already softmaxed by the net), prior (1, 2, P * 4) (from
    PriorBox: boxes, then variances; only its first item is read), and optionally a 4th bottom (the image,
    which the fork reads only to visualize; ignored). The per-image counts must match; the fork checks
    shape[1] alone.
    Top: (1, 1, D, 7), one row [image_id, label, score, xmin, ymin, xmax, ymax] per detection, by image,
    then class (ascending), then score (descending). When nothing is detected in the whole batch, the fork's
    convention: one row per image, [image_id, -1, -1, -1, -1, -1, -1] (shape (1, 1, N, 7)).
    D is known only after forward: the shape inferred at build is (1, 1, 1, 7), as the fork's Reshape gives.
    No gradient (the fork's backward is NOT_IMPLEMENTED): the top never requires grad. Computed in float32
    (float64 for float64 bottoms): boxes are decoded and overlaps computed on the bottoms' device, the
    candidates chosen and the greedy pass run on the CPU; thresholds are compared as the float values
    caffe.proto stores. With float32 bottoms the arithmetic is the fork's float arithmetic (exp may round
    differently in the last bit).
    Params (detection_output_param): num_classes (required, > 0), share_location = true, background_label_id
    = 0 (-1: none), nms_param { nms_threshold = 0.3 (>= 0), top_k (none: all), eta = 1 (in (0, 1]) },
    code_type = CORNER (CORNER, CENTER_SIZE, CORNER_SIZE; or 1, 2, 3), variance_encoded_in_target = false,
    keep_top_k = -1 (all), confidence_threshold (none: every score above -FLT_MAX), save_output_param,
    visualize = false, visualize_threshold, save_file.
    Not done here (accepted, with one warning line when asked for): save_output_param's result files (VOC,
    COCO, ILSVRC text written by the fork when output_directory, label_map_file and name_size_file are given)
    and visualize (an OpenCV window). A prior of zero or negative width or height under CENTER_SIZE or
    CORNER_SIZE is an error, as the fork's CHECK. With share_location and background_label_id -1 the fork's
    CPU forward stops (its DecodeBBoxesAll skips the shared boxes, label -1, as the background) while its GPU
    forward decodes them; the GPU's rule is followed (every class is scored against the shared boxes).
    Fork: SSD (weiliu89/caffe, detection_output_layer.cpp, util/bbox_util.cpp).
    """
    params = Params("detection_output_param", num_classes=Param(int, REQUIRED),
                    share_location=Param(bool, True), background_label_id=Param(int, 0),
                    nms_param=Param(NMS_PARAM), save_output_param=Param(SAVE_OUTPUT_PARAM),
                    code_type=_CodeType("CORNER"), variance_encoded_in_target=Param(bool, False),
                    keep_top_k=Param(int, -1), confidence_threshold=Param(float),
                    visualize=Param(bool, False), visualize_threshold=Param(float, 0.6), save_file=Param(str, ""))
    num_bottoms = (3, 4)

    def setup(self, bottom_shapes):
        p = self.p
        if p.num_classes <= 0:
            raise self.error(f"num_classes must be > 0, got {p.num_classes}")
        nms = p.nms_param
        if not nms.nms_threshold >= 0:
            raise self.error(f"nms_param.nms_threshold must be non negative, got {nms.nms_threshold:g}")
        if not 0 < nms.eta <= 1:
            raise self.error(f"nms_param.eta must be in (0, 1], got {nms.eta:g}")
        self.top_k = nms.top_k if nms.has("top_k") else -1
        self.num_loc_classes = 1 if p.share_location else p.num_classes
        self.confidence_threshold = _as_f32(p.confidence_threshold) if p.has("confidence_threshold") else -FLT_MAX
        if p.has("save_output_param") and p.save_output_param.output_directory:
            warnings.warn(f"{self.where}: save_output_param is ignored: no result files are written to "
                          f"'{p.save_output_param.output_directory}' (the detections are in the top)", NetWarning,
                          stacklevel=2)
        if p.visualize:
            warnings.warn(f"{self.where}: visualize is ignored (the fork draws the detections in an OpenCV "
                          f"window)", NetWarning, stacklevel=2)
        self._check_shapes(bottom_shapes)

    def _check_shapes(self, shapes) -> int:
        """num_priors, after checking the bottoms' shapes against each other."""
        loc, conf, prior = shapes[:3]
        if len(prior) != 3 or prior[1] != 2 or prior[2] % 4:
            raise self.error(f"bottom 2 (the priors) must have shape (1, 2, P * 4) as PriorBox gives, got {prior}")
        n_priors = prior[2] // 4
        if len(loc) < 2 or len(conf) < 2:
            raise self.error(f"bottoms 0 and 1 (loc, conf) must have at least 2 axes (N, ...), got {loc} and {conf}")
        if loc[0] != conf[0]:
            raise self.error(f"loc and conf must have the same number of images, got {loc[0]} and {conf[0]}")
        per_loc, per_conf = math.prod(loc[1:]), math.prod(conf[1:])
        if per_loc != n_priors * self.num_loc_classes * 4:
            what = "4" if self.p.share_location else f"4 * num_classes ({self.p.num_classes})"
            raise self.error(f"loc {loc} has {per_loc} values per image, but {n_priors} priors need "
                             f"{n_priors} * {what} = {n_priors * self.num_loc_classes * 4}")
        if per_conf != n_priors * self.p.num_classes:
            raise self.error(f"conf {conf} has {per_conf} values per image, but {n_priors} priors need "
                             f"{n_priors} * num_classes ({self.p.num_classes}) = {n_priors * self.p.num_classes}")
        return n_priors

    def infer_top_shapes(self, bottom_shapes):
        self._check_shapes(bottom_shapes)
        return [(1, 1, 1, 7)]

    def decode(self, loc: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
        """DecodeBBox for every prior: loc (N, L, P, 4), prior (2, P, 4) -> boxes (N, L, P, 4)."""
        pb, var = prior[0], prior[1]
        if self.p.variance_encoded_in_target:
            var = torch.ones_like(var)
        x1, y1, x2, y2 = pb.unbind(-1)
        l0, l1, l2, l3 = loc.unbind(-1)
        v0, v1, v2, v3 = var.unbind(-1)
        code = self.p.code_type
        if code == "CORNER":
            return torch.stack([x1 + v0 * l0, y1 + v1 * l1, x2 + v2 * l2, y2 + v3 * l3], dim=-1)
        pw, ph = x2 - x1, y2 - y1
        bad = (~(pw > 0)) | (~(ph > 0))
        if bool(bad.any()):
            i = int(torch.nonzero(bad)[0, 0])
            raise self.error(f"prior {i} {[round(float(v), 6) for v in pb[i].tolist()]} has a width or height "
                             f"<= 0, which code_type {code} cannot decode")
        if code == "CENTER_SIZE":
            pcx, pcy = (x1 + x2) / 2, (y1 + y2) / 2
            cx = v0 * l0 * pw + pcx
            cy = v1 * l1 * ph + pcy
            w = torch.exp(v2 * l2) * pw
            h = torch.exp(v3 * l3) * ph
            return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)
        return torch.stack([x1 + v0 * l0 * pw, y1 + v1 * l1 * ph, x2 + v2 * l2 * pw, y2 + v3 * l3 * ph], dim=-1)

    def forward(self, loc, conf, prior, image=None):
        p = self.p
        n_priors = self._check_shapes([tuple(loc.shape), tuple(conf.shape), tuple(prior.shape)])
        out_dtype = loc.dtype if loc.dtype.is_floating_point else torch.get_default_dtype()
        work = torch.float64 if loc.dtype == torch.float64 else torch.float32
        num, n_cls, n_loc = loc.shape[0], p.num_classes, self.num_loc_classes
        with torch.no_grad():
            loc = loc.detach().to(work).reshape(num, n_priors, n_loc, 4).transpose(1, 2)
            pri = prior.detach().to(work).reshape(-1)[:n_priors * 8].reshape(2, n_priors, 4)
            boxes = self.decode(loc, pri).cpu().numpy()                                  # (N, L, P, 4)
            scores = conf.detach().to(work).reshape(num, n_priors, n_cls).cpu().numpy()  # (N, P, C)
        nms = p.nms_param
        threshold = _as_f32(nms.nms_threshold)
        per_image = []
        for i in range(num):
            # ApplyNMSFast per class: candidates above the confidence threshold, best first, top_k of them;
            # then the greedy pass, on the overlap masks of all classes at once where they are small enough
            cands = {c: _candidates(scores[i, :, c], self.confidence_threshold, self.top_k)
                     for c in range(n_cls) if c != p.background_label_id}
            groups = {c: boxes[i, 0 if p.share_location else c][order] for c, order in cands.items() if order.size}
            small = [c for c, g in groups.items() if nms.eta >= 1 and len(g) * len(g) <= MASK_LIMIT]
            masks = dict(zip(small, _overlap_masks([groups[c] for c in small], threshold, loc.device))) if small else {}
            kept: dict[int, list[int]] = {}
            for c, order in cands.items():
                if not order.size:
                    kept[c] = []
                    continue
                picked = _greedy(masks[c]) if c in masks else _nms_rows(groups[c], threshold, nms.eta)
                kept[c] = [int(order[k]) for k in picked]
            n_det = sum(len(v) for v in kept.values())
            if -1 < p.keep_top_k < n_det:
                pairs = [(scores[i, j, c], c, j) for c in sorted(kept) for j in kept[c]]
                order = sorted(range(len(pairs)), key=lambda k: -pairs[k][0])[:p.keep_top_k]   # stable
                best: dict[int, list[int]] = {}
                for k in order:
                    best.setdefault(pairs[k][1], []).append(pairs[k][2])
                kept = best
            per_image.append(kept)
        rows = []
        for i, kept in enumerate(per_image):
            for c in sorted(kept):
                b = boxes[i, 0 if p.share_location else c]
                for j in kept[c]:
                    rows.append([i, c, scores[i, j, c], *b[j]])
        if rows:
            top = np.array(rows, dtype=boxes.dtype)
        else:
            top = np.full((num, 7), -1.0, dtype=boxes.dtype)
            top[:, 0] = np.arange(num)
        return torch.from_numpy(top).to(device=prior.device, dtype=out_dtype).view(1, 1, -1, 7)
