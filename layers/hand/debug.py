"""Debugging output (the memo's "Debugging" section): predicted heatmaps as images, and the 2D skeleton drawn
on the input crop. Both layers write PNG files and have no tops; they copy their bottoms to the CPU, so they
run in a net on any device, and cost nothing when a net does not use them. Files are written atomically
(temp file + rename) under save_path, named by sample index.

`draw_skeleton` is the drawing as a plain function, for the evaluation tool.
"""

from __future__ import annotations

import math
import os

import cv2
import numpy as np
import torch

from layers.base import REQUIRED, Layer, Param, Params
from layers.hand.readers import resize_square, sample_indices
from layers.hand.rhd.memo import atomic_write_bytes
from layers.hand.skeleton import BONES, KEYPOINT_NAMES, NUM_JOINTS, finger_of
from layers.registry import register_layer

__all__ = ["draw_skeleton", "keypoint_color", "heatmap_montage", "FINGER_COLORS_BGR", "WRIST_COLOR_BGR",
           "DeepHandModelOutputHeatmapSepChannel", "DrawSkeleton", "DeepHandModelOutputJointOnSkeletonMapRHD"]

# BGR, one per finger in skeleton.FINGERS order: thumb red, index yellow, middle green, ring blue, little magenta
FINGER_COLORS_BGR = ((0, 0, 255), (0, 230, 255), (0, 200, 0), (255, 120, 0), (255, 0, 255))
WRIST_COLOR_BGR = (255, 255, 255)
MONTAGE_MIN_TILE = 128        # montage tiles are at least this wide, so their labels stay readable


def _write_png(path: str, image: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise OSError(f"cannot encode '{path}' as PNG")
    atomic_write_bytes(path, buf.tobytes())


def _to_bgr_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) BGR 0..255 floats (any device) -> (B, H, W, 3) uint8, rounded and clamped."""
    x = images.detach().to("cpu", torch.float32).nan_to_num(0.0).round().clamp(0, 255).to(torch.uint8)
    return np.ascontiguousarray(x.permute(0, 2, 3, 1).numpy())


def keypoint_color(k: int) -> tuple[int, int, int]:
    """BGR colour of keypoint k (and of the bones of its finger): its finger's colour, white for the wrist."""
    f = finger_of(k)
    return WRIST_COLOR_BGR if f < 0 else FINGER_COLORS_BGR[f]


def _pastel(color) -> tuple[int, int, int]:
    return tuple((c + 255) // 2 for c in color)


# ---- skeleton drawing -----------------------------------------------------------------------------------------

_SHIFT = 4                     # cv2 fixed-point bits: sub-pixel positions


def _fixed(p) -> tuple[int, int]:
    return int(round(p[0] * (1 << _SHIFT))), int(round(p[1] * (1 << _SHIFT)))


def _dashed_line(img, a, b, color, thickness: int, dash: float) -> None:
    """A dashed segment a -> b: dashes of length `dash` separated by gaps of the same length."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    length = float(np.linalg.norm(b - a))
    t = 0.0
    while t < length:
        e = min(t + dash, length)
        cv2.line(img, _fixed(a + (b - a) * t / length), _fixed(a + (b - a) * e / length), color, thickness,
                 cv2.LINE_AA, _SHIFT)
        t += 2 * dash


def draw_skeleton(image_bgr: np.ndarray, uv, gt_uv=None, *, line_width: int = 0,
                  circle_radius: int = 0) -> np.ndarray:
    """The 2D hand skeleton drawn on a copy of an H x W x 3 uint8 BGR image.

    uv: (21, 2) predicted u, v in the image's pixels (pixel (r, c) is at u = c, v = r). Bones (skeleton.BONES)
    as solid lines and keypoints as filled discs, in their finger's colour (FINGER_COLORS_BGR; wrist white).
    gt_uv: optional (21, 2) ground truth in the same units, drawn on top in another style: thin dashed lines
    and hollow circles in a lighter tint of the same colours. Keypoints with a non-finite coordinate (and
    their bones) are skipped; coordinates are clipped to +-1e6 px. line_width, circle_radius: pixels; 0 picks them from the image size.
    Returns the new image (the input is not modified).
    """
    img = np.ascontiguousarray(image_bgr, dtype=np.uint8).copy()
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"image must be H x W x 3 (BGR), got shape {img.shape}")
    size = min(img.shape[:2])
    width = line_width or max(1, round(size / 100))
    radius = circle_radius or max(2, round(size / 60))
    sets = [(np.asarray(uv, np.float64), False)]
    if gt_uv is not None:
        sets.append((np.asarray(gt_uv, np.float64), True))
    for pts, is_gt in sets:
        if pts.shape != (NUM_JOINTS, 2):
            raise ValueError(f"keypoints must be ({NUM_JOINTS}, 2) u, v pixels, got shape {pts.shape}")
        ok = np.isfinite(pts).all(axis=1)
        pts = np.clip(pts, -1e6, 1e6)      # wild predictions: keep cv2's fixed-point int32 from overflowing
        for a, b in BONES:
            if not (ok[a] and ok[b]):
                continue
            color = keypoint_color(a)
            if is_gt:
                _dashed_line(img, pts[a], pts[b], _pastel(color), max(1, width // 2), dash=2.0 * radius)
            else:
                cv2.line(img, _fixed(pts[a]), _fixed(pts[b]), color, width, cv2.LINE_AA, _SHIFT)
        for k in np.flatnonzero(ok):
            if is_gt:
                cv2.circle(img, _fixed(pts[k]), radius << _SHIFT, _pastel(keypoint_color(k)), 1, cv2.LINE_AA,
                           _SHIFT)
            else:
                cv2.circle(img, _fixed(pts[k]), radius << _SHIFT, keypoint_color(k), -1, cv2.LINE_AA, _SHIFT)
    return img


# ---- heatmap montage ------------------------------------------------------------------------------------------

def _label(img: np.ndarray, lines: list[str]) -> None:
    """Small white text on a dark band at the tile's top-left corner."""
    scale = img.shape[0] / 320
    thick = max(1, round(img.shape[0] / 160))
    sizes = [cv2.getTextSize(t, cv2.FONT_HERSHEY_SIMPLEX, scale, thick) for t in lines]
    height = sum(h + base + 2 for (_, h), base in sizes) + 2
    width = max(w for (w, _), _ in sizes) + 6
    band = img[:height, :width]
    band[:] = band // 3
    y = 0
    for text, ((_, h), base) in zip(lines, sizes):
        y += h + 3
        cv2.putText(img, text, (3, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thick, cv2.LINE_AA)
        y += base


def _slots(k: int) -> tuple[tuple[int, int], list[tuple[int, int]]]:
    """Grid (rows, cols) and the (row, col) of tiles [input, all, joint 0..k-1]. For the 21 RHD keypoints:
    5 x 5, column 0 = input, wrist, all joints; row f = finger f's tip, DIP, PIP, MCP in columns 1-4."""
    if k == NUM_JOINTS:
        return (5, 5), [(0, 0), (2, 0), (1, 0)] + [(f, 1 + j) for f in range(5) for j in range(4)]
    cols = math.ceil(math.sqrt(k + 2))
    rows = math.ceil((k + 2) / cols)
    return (rows, cols), [divmod(i, cols) for i in range(k + 2)]


def heatmap_montage(maps_u8: np.ndarray, crop_bgr: np.ndarray | None = None, tile: int = 160) -> np.ndarray:
    """One image of all of a sample's heatmaps (K, H, W) uint8 (value x 255): each tile is a heatmap as a JET
    colour map (cv2.applyColorMap) blended over the crop (alpha 0.2 + 0.6 x value, so the hand shows through
    where the map is low), labelled with the keypoint's name and its peak value in [0, 1]; plus a tile of the
    crop itself and one of the maximum over all maps. Layout: see _slots. tile: pixels per tile."""
    k = maps_u8.shape[0]
    (rows, cols), slots = _slots(k)
    out = np.full((rows * tile, cols * tile, 3), 40, np.uint8)
    bg = None if crop_bgr is None else resize_square(crop_bgr, tile).astype(np.float32)
    names = KEYPOINT_NAMES if k == NUM_JOINTS else tuple(f"joint {j}" for j in range(k))

    def put(slot, img):
        r, c = slot
        out[r * tile:(r + 1) * tile, c * tile:(c + 1) * tile] = img

    def colored(m: np.ndarray) -> np.ndarray:
        m = cv2.resize(m, (tile, tile), interpolation=cv2.INTER_LINEAR)
        heat = cv2.applyColorMap(m, cv2.COLORMAP_JET)
        if bg is None:
            return heat
        a = (0.2 + 0.6 * m.astype(np.float32) / 255)[..., None]
        return np.clip(bg * (1 - a) + heat * a + 0.5, 0, 255).astype(np.uint8)

    if bg is not None:
        img = bg.astype(np.uint8)
        _label(img, ["input"])
        put(slots[0], img)
    img = colored(maps_u8.max(axis=0))
    _label(img, ["all joints"])
    put(slots[1], img)
    for j in range(k):
        img = colored(maps_u8[j])
        _label(img, [names[j], f"max {maps_u8[j].max() / 255:.2f}"])
        put(slots[2 + j], img)
    return out


# ---- layers ---------------------------------------------------------------------------------------------------

@register_layer("DeepHandModelOutputHeatmapSepChannel")
class DeepHandModelOutputHeatmapSepChannel(Layer):
    """The author's heatmap dump (the memo's debugging layer; SPEC section 6), plus a montage per sample.

    For every sample b (idx = index[b]) and joint j writes
        save_path/<j>/<idx>.png   8-bit grey: clamp(round(255 * heatmaps[b, j]), 0, 255), resized (bilinear)
                                  from heatmap_size to save_size
        save_path/montage/<idx>.png   all K maps at once (heatmap_montage): colour maps over the crop, named
                                      (skeleton.KEYPOINT_NAMES), with the crop and the max over all maps
    Bottoms: heatmaps (B, K, H, H) (values in [0, 1], e.g. the sigmoid heatmaps or depth maps); index (B, 1);
      optional crop (B, 3, S, S) BGR 0..255 (ReadImage's top): the montage's background (black without it).
    Tops: none.
    Params (deep_hand_model_output_heatmap_sep_channel_param): save_path (required; folders are created),
      save_size = 0 (the heatmap size), heatmap_size = 0 (the bottom's; when given it must match it),
      montage = true (false: only the per-joint files, like the original).
    Differs from the original: values are rounded and clamped to 0..255 (the original truncated, and wrapped
    above 1); joint folders and files are created as needed and written atomically; runs on CPU copies.
    """
    params = Params("deep_hand_model_output_heatmap_sep_channel_param", save_path=Param(str, REQUIRED),
                    save_size=Param(int, 0), heatmap_size=Param(int, 0), montage=Param(bool, True))
    num_bottoms = (2, 3)
    num_tops = 0

    def setup(self, bottom_shapes):
        maps, index = bottom_shapes[:2]
        if len(maps) != 4 or maps[2] != maps[3]:
            raise self.error(f"bottom 0 (heatmaps) must be (B, K, H, H), square maps; got shape {maps}")
        if not index or index[0] != maps[0] or int(np.prod(index[1:])) != 1:
            raise self.error(f"bottom 1 must be the ({maps[0]}, 1) index blob; got shape {index}")
        p = self.p
        if p.has("heatmap_size") and p.heatmap_size != maps[2]:
            raise self.error(f"heatmap_size = {p.heatmap_size} but the heatmaps are {maps[2]} x {maps[3]}")
        if p.save_size < 0:
            raise self.error(f"save_size must be positive (or 0: the heatmap size), got {p.save_size}")
        if len(bottom_shapes) == 3:
            crop = bottom_shapes[2]
            if len(crop) != 4 or crop[0] != maps[0] or crop[1] != 3:
                raise self.error(f"bottom 2 (crop) must be ({maps[0]}, 3, S, S) BGR; got shape {crop}")
        self.save_size = p.save_size or maps[2]

    def infer_top_shapes(self, bottom_shapes):
        return []

    def forward(self, maps, index, crop=None):
        idx = sample_indices(self, index)
        m = (maps.detach().to("cpu", torch.float32).nan_to_num(0.0) * 255).round().clamp(0, 255)
        m = m.to(torch.uint8).numpy()
        crops = None if crop is None else _to_bgr_uint8(crop)
        s, root = self.save_size, self.p.save_path
        tile = max(s, MONTAGE_MIN_TILE)
        for b, i in enumerate(idx):
            for j in range(m.shape[1]):
                img = m[b, j] if s == m.shape[2] else cv2.resize(m[b, j], (s, s), interpolation=cv2.INTER_LINEAR)
                _write_png(os.path.join(root, str(j), f"{i}.png"), img)
            if self.p.montage:
                _write_png(os.path.join(root, "montage", f"{i}.png"),
                           heatmap_montage(m[b], None if crops is None else crops[b], tile))
        return ()


SKELETON_PARAMS = dict(save_path=Param(str, REQUIRED), show_gt=Param(bool, True), save_size=Param(int, 0),
                       skeleton_size=Param(int, 0), coords=Param(("CROP", "PIXEL"), "CROP"), line_width=Param(int, 0),
                       circle_radius=Param(int, 0))


@register_layer("DrawSkeleton")
class DrawSkeleton(Layer):
    """Draws the predicted (and ground-truth) 2D skeleton on the input image (draw_skeleton) and writes
    save_path/<idx>.png per sample.

    The image is resized to skeleton_size x skeleton_size, the skeleton drawn there, and the result resized
    to save_size. Coordinates: coords CROP takes u', v' in crop units ([0, 1] across the image: pixel
    = u' * skeleton_size), PIXEL takes pixels of the input image (pixel = u * skeleton_size / S).
    Bottoms: image (B, 3, S, S) BGR 0..255; pred (B, 42) u, v per keypoint; index (B, 1); optional gt (B, 42)
      (drawn when show_gt: dashed lines, hollow circles).
    Tops: none.
    Params (draw_skeleton_param): save_path (required; created), show_gt = true, save_size = 0 (the skeleton
      size), skeleton_size = 0 (the image size S), coords = CROP, line_width = 0, circle_radius = 0 (pixels on
      the skeleton canvas; 0 = from its size).
    """
    params = Params("draw_skeleton_param", **SKELETON_PARAMS)
    num_bottoms = (3, 4)
    num_tops = 0
    # bottom position of each role (image, pred, index, gt, overlay); None: absent
    roles = {"image": 0, "pred": 1, "index": 2, "gt": 3, "overlay": None}

    def bottom_roles(self, n: int) -> dict:
        return self.roles

    def setup(self, bottom_shapes):
        r = self.bottom_roles(len(bottom_shapes))
        shape = {k: (tuple(bottom_shapes[v]) if v is not None and v < len(bottom_shapes) else None)
                 for k, v in r.items()}
        order = ", ".join(sorted((k for k in r if shape[k] is not None), key=lambda k: r[k]))
        img = shape["image"]
        if len(img) != 4 or img[1] != 3 or img[2] != img[3]:
            raise self.error(f"bottom {r['image']} (image) must be (B, 3, S, S) BGR; got shape {img} "
                             f"(bottoms: {order})")
        b = img[0]
        index = shape["index"]
        if not index or index[0] != b or int(np.prod(index[1:])) != 1:
            raise self.error(f"bottom {r['index']} must be the ({b}, 1) index blob; got shape {index} "
                             f"(bottoms: {order})")
        for role in ("pred", "gt"):
            if shape[role] is not None and shape[role] != (b, 2 * NUM_JOINTS):
                raise self.error(f"bottom {r[role]} ({role} 2D) must be ({b}, {2 * NUM_JOINTS}) u, v per "
                                 f"keypoint; got shape {shape[role]} (bottoms: {order})")
        if shape["overlay"] is not None and shape["overlay"] != img:
            raise self.error(f"bottom {r['overlay']} (overlay image) must have the image's shape {img}; "
                             f"got {shape['overlay']}")
        p = self.p
        for name in ("save_size", "skeleton_size", "line_width", "circle_radius"):
            if getattr(p, name) < 0:
                raise self.error(f"{name} must not be negative, got {getattr(p, name)}")
        self.image_size = img[2]
        self.canvas = p.skeleton_size or img[2]
        self.save_size = p.save_size or self.canvas

    def infer_top_shapes(self, bottom_shapes):
        return []

    def forward(self, *bottoms):
        r = self.bottom_roles(len(bottoms))
        get = {k: (bottoms[v] if v is not None and v < len(bottoms) else None) for k, v in r.items()}
        image = get["image"]
        if get["overlay"] is not None:     # the author's rule: overlay pixels > 0 replace the image's
            image = torch.where(get["overlay"] > 0, get["overlay"], image)
        idx = sample_indices(self, get["index"])
        images = _to_bgr_uint8(image)
        unit = self.canvas if self.p.coords == "CROP" else self.canvas / self.image_size

        def points(t):
            return None if t is None else t.detach().to("cpu", torch.float64).reshape(-1, NUM_JOINTS, 2).numpy() * unit

        pred, gt = points(get["pred"]), points(get["gt"] if self.p.show_gt else None)
        for b, i in enumerate(idx):
            canvas = resize_square(images[b], self.canvas)
            img = draw_skeleton(canvas, pred[b], None if gt is None else gt[b], line_width=self.p.line_width,
                                circle_radius=self.p.circle_radius)
            _write_png(os.path.join(self.p.save_path, f"{i}.png"), resize_square(img, self.save_size))
        return ()


@register_layer("DeepHandModelOutputJointOnSkeletonMapRHD")
class DeepHandModelOutputJointOnSkeletonMapRHD(DrawSkeleton):
    """The author's type for DrawSkeleton (SPEC section 6), with his bottom order:

        5 bottoms: image, overlay image, index, pred 2D, gt 2D   (his RHD net: image, image, image_index,
                                                                  pred_joint_2d, gt_joint_2d)
        4 bottoms: image, index, pred 2D, gt 2D                   (his H36M version's order)
    The background is the image, replaced by the overlay where the overlay is > 0 (his rule; his net passes
    the same image twice). 2D in crop units (coords = CROP). Writes save_path/<idx>.png.
    Params (deep_hand_model_output_joint_on_skeleton_rhd_param): save_path (required), show_gt = false,
      save_size = 224, skeleton_size = 224 (his net's values), coords = CROP, line_width = 0, circle_radius = 0.
    Differs from the original: bones are coloured per finger, the GT has its own style, files are written
    atomically.
    """
    params = Params("deep_hand_model_output_joint_on_skeleton_rhd_param",
                    **{**SKELETON_PARAMS, "show_gt": Param(bool, False), "save_size": Param(int, 224),
                       "skeleton_size": Param(int, 224)})
    num_bottoms = (4, 5)

    def bottom_roles(self, n: int) -> dict:
        if n == 5:
            return {"image": 0, "overlay": 1, "index": 2, "pred": 3, "gt": 4}
        return {"image": 0, "overlay": None, "index": 1, "pred": 2, "gt": 3}
