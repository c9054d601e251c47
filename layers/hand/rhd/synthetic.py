"""Synthetic hands in the official RHD release format (SPEC section 2): a kinematic hand model and a renderer.

    make_dataset(out_dir, num_train, num_eval, seed)   writes out_dir/RHD_published_v2/... like the real release
    render_sample(seed_or_rng, image_id, split)        one image: (color_bgr, mask, depth_m, anno)
    make_tiny_release(tmp_dir)                         a 6 + 4 image release for tests

Hand model (hand frame, metres, a right hand): wrist at the origin, fingers along +y, palm facing +z, thumb on
+x. Bone lengths are TEMPLATE_BONES (skeleton.BONES order) times a per-hand scale in HAND_SCALE_RANGE times a
per-bone factor within 1 +- BONE_NOISE_MAX. Fingers flex toward +z (MCP, PIP, DIP correlated through one curl
value per finger) and spread about the palm normal; the thumb has its own abduction and opposition. A left
hand is the mirror image (x -> -x) of the right hand with the same parameters.

Scene: camera at the origin looking along +Z (u = fx X / Z + u0, v = fy Y / Z + v0), fx = fy in FOCAL_RANGE,
principal point within PRINCIPAL_JITTER px of the centre. Each hand gets a random rotation (half of them biased
toward the palm facing the camera, fingers up) and a wrist WRIST_DISTANCE_RANGE metres from the camera, all 21
keypoints inside the image, the two hands' boxes barely overlapping. Images with
image_id % 20 in UNUSABLE_SCHEDULE have one hand (left or right at random) that a converter must drop:
  "outside": wrist 0.3-0.8 m but more than half of its keypoints outside the image;
  "far":     wrist FAR_DISTANCE_RANGE metres away, the longer side of its keypoints' box under FAR_MAX_SIDE px
             (a usable hand's is MIN_USABLE_SIDE px or more).

Rendering (painter's algorithm, far to near): cluttered background (3.6-5 m deep), a forearm capsule per hand
(mask 1, drawn before the hands), then per hand a palm polygon, 20 bone capsules and 21 joint discs. A disc's
depth is its keypoint's Z exactly, a capsule's depth is interpolated along its axis. A keypoint is visible
when it lies inside the image and its own disc is the topmost surface at its pixel (rounded u, v); so at a
visible keypoint the depth map holds the keypoint's depth and the mask its hand's label.
Mask labels per hand (base 2 left, 18 right): base + 3f + s for finger f (thumb 0 .. little 4) and phalanx s
(0 distal, 1 middle, 2 proximal), base + 15 palm (17, 33).

Over 400 lines as one cohesive thing: the hand model, the renderer and the release writer share one geometry.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from dataclasses import dataclass

import cv2
import numpy as np

from layers.hand import skeleton
from layers.hand.rhd import release
from layers.hand.rhd.memo import atomic_write_bytes
from netdef.errors import NetError

SPLITS = ("training", "evaluation")
ANNO_KEYS = ("xyz", "uv_vis", "K")
SIZE = release.IMAGE_SIZE

# Bone lengths (m) at scale 1, skeleton.BONES order: per finger tip-DIP, DIP-PIP, PIP-MCP, MCP-wrist.
TEMPLATE_BONES = np.array([
    0.028, 0.032, 0.042, 0.038,   # thumb (its "MCP" 4 is the CMC joint)
    0.024, 0.026, 0.042, 0.090,   # index (MCP-wrist is the reference bone)
    0.025, 0.030, 0.046, 0.088,   # middle
    0.025, 0.028, 0.043, 0.082,   # ring
    0.022, 0.022, 0.034, 0.076,   # little
])
HAND_SCALE_RANGE = (0.85, 1.15)
BONE_NOISE_MAX = 0.06            # per-bone factor in [1 - max, 1 + max]
WRIST_DISTANCE_RANGE = (0.3, 0.8)
FAR_DISTANCE_RANGE = (2.6, 3.4)
MIN_USABLE_SIDE = 30.0          # px: longer side of a usable hand's keypoint box, at least
FAR_MAX_SIDE = 24.0             # px: that of a far hand, less than
FOCAL_RANGE = (280.0, 300.0)
PRINCIPAL_JITTER = 4.0
UNUSABLE_SCHEDULE = {3: "outside", 5: "far"}    # image_id % 20 -> kind of the one unusable hand
BACKGROUND_DEPTH_RANGE = (3.6, 4.95)

# Direction of each finger's MCP from the wrist: angle in the palm plane from +y toward +x (deg).
_MCP_AZIMUTH = np.radians([48.0, 12.0, 1.0, -10.0, -22.0])
_MCP_ELEVATION = np.radians([15.0, 0.0, 0.0, 0.0, 0.0])   # toward the palm side; cupping adds to 1-4
_CUP_WEIGHT = np.array([0.0, 1.0, 0.0, 0.5, 1.2])
_SPREAD = np.array([14.0, 3.0, -8.0, -18.0])               # abduction (deg) at full spread, fingers 1-4
# Capsule radii (m) at scale 1 per finger for (distal, middle, proximal, metacarpal).
_RADII = np.array([[0.0085, 0.0095, 0.011, 0.010]] + [[0.0075, 0.0085, 0.0095, 0.010]] * 3
                  + [[0.0065, 0.0072, 0.0082, 0.010]])
_WRIST_RADIUS = 0.012
_PALM = 15                                                  # label offset of the palm within a hand


@dataclass(frozen=True)
class HandParams:
    """One hand's shape and pose (angles in degrees; see sample_hand_params for the ranges)."""
    scale: float
    bone_factor: np.ndarray     # (20,) per-bone length factor, skeleton.BONES order
    cup: float                  # palm cupping: extra MCP elevation of the outer fingers
    flex: np.ndarray            # (5, 3) per finger: (MCP, PIP, DIP) flexion; thumb (CMC, MCP, IP)
    abduction: np.ndarray       # (4,) fingers 1-4, toward the thumb side positive
    thumb_abduction: float      # thumb spread: turns the CMC joint and the thumb's chain toward +x
    thumb_opposition: float     # tilt of the thumb's chain toward the palm side
    wrist_flex: float           # forearm direction relative to the hand (for the arm drawn behind it)
    wrist_deviation: float

    def bone_lengths(self) -> np.ndarray:
        """(20,) metres, skeleton.BONES order: what hand_model's geometry has."""
        return TEMPLATE_BONES * self.scale * self.bone_factor


def sample_hand_params(rng: np.random.Generator) -> HandParams:
    """Random RHD-like hand: scale +-15%, bone noise, correlated finger flexion, spread, thumb opposition."""
    scale = rng.uniform(*HAND_SCALE_RANGE)
    bone_factor = 1.0 + np.clip(rng.normal(0.0, 0.03, 20), -BONE_NOISE_MAX, BONE_NOISE_MAX)
    curl = rng.beta(0.8, 1.2)                        # the whole hand's curl: open .. fist
    c = np.clip(curl + rng.normal(0.0, 0.15, 4), 0.0, 1.0)
    mcp = np.clip(80.0 * c + rng.normal(0.0, 8.0, 4), -20.0, 90.0)
    pip = np.clip(100.0 * c + rng.normal(0.0, 10.0, 4), 0.0, 110.0)
    dip = np.clip(0.65 * pip + rng.normal(0.0, 6.0, 4), 0.0, 80.0)
    ct = np.clip(curl + rng.normal(0.0, 0.2), 0.0, 1.0)
    thumb = [np.clip(15.0 * ct + rng.normal(0.0, 5.0), -10.0, 30.0),
             np.clip(45.0 * ct + rng.normal(0.0, 8.0), -10.0, 60.0),
             np.clip(60.0 * ct + rng.normal(0.0, 10.0), -15.0, 85.0)]
    flex = np.vstack([thumb, np.stack([mcp, pip, dip], axis=1)])
    abduction = (rng.uniform() * _SPREAD + rng.normal(0.0, 3.0, 4)) * (1.0 - 0.6 * c)
    return HandParams(scale=scale, bone_factor=bone_factor, cup=rng.uniform(0.0, 10.0), flex=flex,
                      abduction=abduction, thumb_abduction=rng.uniform(-5.0, 35.0),
                      thumb_opposition=rng.uniform(0.0, 70.0), wrist_flex=rng.uniform(-45.0, 45.0),
                      wrist_deviation=rng.uniform(-20.0, 20.0))


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _mirror(points: np.ndarray, left: bool) -> np.ndarray:
    return points * np.array([-1.0, 1.0, 1.0]) if left else points


def hand_model(params: HandParams, left: bool = False) -> np.ndarray:
    """(21, 3) keypoints in the hand frame (metres, RHD order); left = mirror image of the right hand."""
    return hand_geometry(params, left)[0]


def hand_geometry(params: HandParams, left: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """hand_model's keypoints and (20, 3) unit palmar normals per bone (skeleton.BONES order): the side of each
    phalanx a finger flexes toward, the palm's normal (+z) for the metacarpal bones. The renderer colours the
    palmar side paler than the back and puts nails on the back of the fingertips, as on real hands."""
    lengths = params.bone_lengths().reshape(5, 4)   # per finger: tip-DIP, DIP-PIP, PIP-MCP, MCP-wrist
    az = _MCP_AZIMUTH.copy()
    az[0] += np.radians(params.thumb_abduction) - np.radians(20.0)
    el = _MCP_ELEVATION + np.radians(params.cup) * _CUP_WEIGHT
    mcp_dir = np.stack([np.sin(az) * np.cos(el), np.cos(az) * np.cos(el), np.sin(el)], axis=1)
    mcp = mcp_dir * lengths[:, 3:4]

    # Fingers 1-4: flexion in the plane of the (abducted) finger direction and the palm normal.
    f = mcp_dir[1:]
    n = _unit(np.array([0.0, 0.0, 1.0]) - f[:, 2:3] * f)
    lat = np.cross(f, n)                                         # toward the thumb side
    ab = np.radians(params.abduction)[:, None]
    fwd = np.cos(ab) * f + np.sin(ab) * lat
    # Thumb: its chain leaves the CMC joint tilted toward the palm by the opposition angle and curls
    # toward the fingers and the palm.
    ta = np.radians(params.thumb_abduction + 25.0)
    opp = np.radians(params.thumb_opposition)
    t_fwd = np.cos(opp) * np.array([np.sin(ta), np.cos(ta), 0.0]) + np.sin(opp) * np.array([0.0, 0.0, 1.0])
    t_n = np.array([-np.cos(ta), np.sin(ta), 0.6])
    t_n = _unit(t_n - (t_n @ t_fwd) * t_fwd)
    fwd = np.vstack([t_fwd, fwd])
    n = np.vstack([t_n, n])

    phi = np.radians(np.cumsum(params.flex, axis=1))[:, :, None]   # (5, 3, 1) cumulative flexion
    seg_dir = np.cos(phi) * fwd[:, None, :] + np.sin(phi) * n[:, None, :]   # segments from the MCP outward
    seg = seg_dir * lengths[:, [2, 1, 0], None]                    # PIP-MCP, DIP-PIP, tip-DIP
    chain = mcp[:, None, :] + np.cumsum(seg, axis=1)               # (5, 3, 3): PIP, DIP, tip
    palmar = -np.sin(phi) * fwd[:, None, :] + np.cos(phi) * n[:, None, :]   # d seg_dir / d phi
    out = np.zeros((21, 3))
    normals = np.zeros((5, 4, 3))
    for fi in range(5):
        b = 1 + 4 * fi
        out[b:b + 4] = [chain[fi, 2], chain[fi, 1], chain[fi, 0], mcp[fi]]
        normals[fi] = [palmar[fi, 2], palmar[fi, 1], palmar[fi, 0], (0.0, 0.0, 1.0)]
    return _mirror(out, left), _mirror(_unit(normals.reshape(20, 3)), left)


def _extra_points(params: HandParams, left: bool) -> np.ndarray:
    """(3, 3) hand-frame points that are not keypoints: the wrist's thumb-side and little-side corners (for
    the palm polygon) and the elbow (the forearm leaves the wrist along -y, bent by wrist flexion/deviation)."""
    s = params.scale
    wf, wd = np.radians(params.wrist_flex), np.radians(params.wrist_deviation)
    elbow = 0.25 * np.array([np.sin(wd) * np.cos(wf), -np.cos(wd) * np.cos(wf), np.sin(wf)])
    return _mirror(np.array([[0.024 * s, 0.010 * s, 0.0], [-0.022 * s, 0.010 * s, 0.0], elbow]), left)


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """Hand frame -> camera frame. Half uniform over SO(3); half near palm-to-camera, fingers up."""
    def axis_angle(axis, angle):
        return cv2.Rodrigues(np.asarray(axis, np.float64) * angle)[0]
    if rng.uniform() < 0.5:
        w, x, y, z = _unit(rng.normal(size=4))      # a uniform unit quaternion
        return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                         [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                         [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])
    base = np.diag([1.0, -1.0, -1.0])            # fingers -> image up (-Y), palm normal -> camera (-Z)
    tilt = axis_angle(_unit(np.append(rng.normal(size=2), 0.0)), np.radians(rng.uniform(0.0, 50.0)))
    roll = axis_angle([0.0, 0.0, 1.0], np.radians(rng.normal(0.0, 45.0)))
    return roll @ tilt @ base


def camera_matrix(rng: np.random.Generator) -> np.ndarray:
    f = rng.uniform(*FOCAL_RANGE)
    u0, v0 = SIZE / 2.0 + rng.uniform(-PRINCIPAL_JITTER, PRINCIPAL_JITTER, 2)
    return np.array([[f, 0.0, u0], [0.0, f, v0], [0.0, 0.0, 1.0]])


def project(xyz: np.ndarray, K: np.ndarray) -> np.ndarray:
    """(N, 3) camera frame -> (N, 2) pixels: u = fx X / Z + u0, v = fy Y / Z + v0."""
    x = np.asarray(xyz, np.float64)
    return np.stack([K[0, 0] * x[:, 0] / x[:, 2] + K[0, 2], K[1, 1] * x[:, 1] / x[:, 2] + K[1, 2]], axis=1)


def image_rng(seed: int, split: str, image_id: int) -> np.random.Generator:
    """The RNG of one image: a function of (seed, split, image_id) only, whatever the worker count."""
    return np.random.default_rng(np.random.SeedSequence([seed, SPLITS.index(split), image_id]))


def unusable_kind(image_id: int):
    """None, "outside" or "far": the kind of unusable hand image `image_id` has (UNUSABLE_SCHEDULE)."""
    return UNUSABLE_SCHEDULE.get(image_id % 20)


# ---- placing hands ---------------------------------------------------------------------------------------------

def _inside(uv: np.ndarray, margin: float = 0.0) -> np.ndarray:
    return np.all((uv >= margin) & (uv <= SIZE - 1 - margin), axis=1)


def _box(uv: np.ndarray, pad: float) -> np.ndarray:
    return np.concatenate([uv.min(0) - pad, uv.max(0) + pad])


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection area over the smaller box's area."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return w * h / smaller


def _place(rng, points_h, R, K, kind, other_box):
    """Wrist position for a hand (points_h: hand frame, keypoints first) meeting its kind's condition.
    Returns (camera-frame points, 2D box of its keypoints clipped to the image)."""
    Kinv = np.linalg.inv(K)
    rotated = points_h @ R.T
    for attempt in range(400):
        far = kind == "far"
        d = rng.uniform(*(FAR_DISTANCE_RANGE if far else WRIST_DISTANCE_RANGE))
        if kind == "outside":
            span = 0.18 * K[0, 0] / d
            edge = rng.integers(4)
            along = rng.uniform(0.0, SIZE)
            across = rng.uniform(-0.3, 0.5) * span          # beyond the edge, positive outward
            pix = [(-across, along), (SIZE - 1 + across, along), (along, -across), (along, SIZE - 1 + across)][edge]
        else:
            pix = rng.uniform(30.0, SIZE - 30.0, 2)
        ray = Kinv @ np.array([pix[0], pix[1], 1.0])
        pts = rotated + d * ray / np.linalg.norm(ray)
        if np.any(pts[:21, 2] < 0.08):
            continue
        uv = project(pts[:21], K)
        inside = _inside(uv)
        if kind == "outside":
            ok = np.count_nonzero(~inside) >= 11
        else:
            ok = np.all(_inside(uv, 4.0))
            if far:
                ok = ok and np.ptp(uv, axis=0).max() < FAR_MAX_SIDE
            if kind is None:
                ok = ok and np.ptp(uv, axis=0).max() >= MIN_USABLE_SIDE
                if other_box is not None and attempt < 300:
                    ok = ok and _overlap(_box(uv, 8.0), other_box) <= 0.1
        if ok:
            return pts, np.clip(_box(uv, 8.0), 0, SIZE - 1)
    raise RuntimeError("could not place a hand")   # a bug: the conditions above are met within a few tries


# ---- rendering ------------------------------------------------------------------------------------------------

class _Canvas:
    """Colour (float), mask, depth and primitive-id buffers; primitives are painted in call order."""

    def __init__(self, color, depth):
        self.color = color
        self.depth = depth
        self.mask = np.zeros((SIZE, SIZE), np.uint8)
        self.ids = np.full((SIZE, SIZE), -1, np.int16)

    @staticmethod
    def roi(lo, hi):
        x0, y0 = np.maximum(np.floor(lo).astype(int), 0)
        x1, y1 = np.minimum(np.ceil(hi).astype(int) + 1, SIZE)
        if x1 <= x0 or y1 <= y0:
            return None
        return x0, y0, x1, y1

    def paint(self, box, cov, rgb, lum, z, label, pid):
        """rgb: one colour (3,) or one per pixel of the box (h, w, 3)."""
        x0, y0, x1, y1 = box
        rgb = np.asarray(rgb)
        self.color[y0:y1, x0:x1][cov] = lum[cov][:, None] * (rgb[cov] if rgb.ndim == 3 else rgb)
        self.depth[y0:y1, x0:x1][cov] = z[cov]
        self.mask[y0:y1, x0:x1][cov] = label
        self.ids[y0:y1, x0:x1][cov] = pid

    def capsule(self, a, b, ra, rb, za, zb, rgb, shade, label, nail=0.0):
        """Segment a-b (pixels) with radius ra..rb; depth 1/Z interpolated along the axis. nail > 0: a nail of
        that strength on the axis from t = NAIL_SPAN[0] to NAIL_SPAN[1] (a = the fingertip)."""
        box = self.roi(np.minimum(a, b) - max(ra, rb), np.maximum(a, b) + max(ra, rb))
        if box is None:
            return
        x0, y0, x1, y1 = box
        x = np.arange(x0, x1, dtype=np.float64)[None, :]
        y = np.arange(y0, y1, dtype=np.float64)[:, None]
        ab = b - a
        l2 = ab @ ab
        t = np.clip(((x - a[0]) * ab[0] + (y - a[1]) * ab[1]) / l2, 0.0, 1.0) if l2 > 1e-12 else np.zeros((1, 1))
        d2 = (x - a[0] - t * ab[0]) ** 2 + (y - a[1] - t * ab[1]) ** 2
        r2 = (ra + t * (rb - ra)) ** 2
        cov = d2 <= r2
        if not cov.any():
            return
        z = np.broadcast_to(1.0 / ((1.0 - t) / za + t / zb), d2.shape)
        lum = (0.55 + 0.45 * np.sqrt(np.clip(1.0 - d2 / r2, 0.0, 1.0))) * shade(z)
        if nail > 0:      # one colour per pixel only where a nail is drawn
            on = (t >= NAIL_SPAN[0]) & (t <= NAIL_SPAN[1]) & (d2 <= (NAIL_WIDTH ** 2) * r2)
            rgb = np.where(np.broadcast_to(on, d2.shape)[..., None], (1 - nail) * rgb + nail * _NAIL_BGR, rgb)
        self.paint(box, cov, rgb, lum, z, label, -1)

    def disc(self, c, r, z, rgb, shade, label, pid):
        """Disc of constant depth z; always covers the pixel nearest to its centre."""
        r = max(r, 1.0)
        box = self.roi(c - r, c + r)
        if box is None:
            return
        x0, y0, x1, y1 = box
        d2 = (np.arange(x0, x1)[None, :] - c[0]) ** 2 + (np.arange(y0, y1)[:, None] - c[1]) ** 2
        cov = d2 <= r * r
        zz = np.full(d2.shape, z)
        lum = (0.6 + 0.4 * np.sqrt(np.clip(1.0 - d2 / (r * r), 0.0, 1.0))) * shade(zz)
        self.paint(box, cov, rgb, lum, zz, label, pid)

    def polygon(self, uv, z, rgb, shade, label):
        """Convex hull of uv; depth from the least-squares plane 1/Z = a u + b v + c through the vertices."""
        hull = cv2.convexHull(np.round(uv * 16).astype(np.int32))
        box = self.roi(uv.min(0), uv.max(0))
        if box is None:
            return
        x0, y0, x1, y1 = box
        m = np.zeros((y1 - y0, x1 - x0), np.uint8)
        cv2.fillPoly(m, [hull - np.array([[x0 * 16, y0 * 16]], np.int32)], 1, lineType=cv2.LINE_8, shift=4)
        cov = m.astype(bool)
        if not cov.any():
            return
        coef = np.linalg.lstsq(np.column_stack([uv, np.ones(len(uv))]), 1.0 / z, rcond=None)[0]
        x = np.arange(x0, x1, dtype=np.float64)[None, :]
        y = np.arange(y0, y1, dtype=np.float64)[:, None]
        zz = np.clip(1.0 / np.maximum(coef[0] * x + coef[1] * y + coef[2], 1e-6), z.min(), z.max())
        self.paint(box, cov, rgb, 0.85 * shade(zz), zz, label, -1)


def _background(rng):
    """Cluttered colour image (float32) and its depth (BACKGROUND_DEPTH_RANGE): blobs, rectangles, circles,
    lines."""
    lo, hi = BACKGROUND_DEPTH_RANGE
    h0, w0 = rng.integers(2, 9, 2)
    blobs = cv2.resize(rng.uniform(0, 255, (h0, w0, 3)).astype(np.float32), (SIZE, SIZE),
                       interpolation=cv2.INTER_CUBIC)
    color = np.ascontiguousarray(0.5 * blobs + 0.5 * rng.uniform(0, 255, 3).astype(np.float32))
    g = np.arange(SIZE, dtype=np.float64) - SIZE / 2
    gu, gv = rng.uniform(-0.004, 0.004, 2)
    depth = np.clip(rng.uniform(lo + 0.5, hi) + gu * g[None, :] + gv * g[:, None], lo, hi)
    depth = np.ascontiguousarray(depth)

    def pt():
        return tuple(int(v) for v in rng.integers(-40, SIZE + 40, 2))
    for _ in range(rng.integers(3, 10)):
        col, z = tuple(float(v) for v in rng.uniform(0, 255, 3)), float(rng.uniform(lo, hi))
        kind = rng.integers(3)
        if kind == 0:
            p, q = pt(), pt()
            cv2.rectangle(color, p, q, col, -1)
            cv2.rectangle(depth, p, q, z, -1)
        elif kind == 1:
            c, r = pt(), int(rng.integers(5, 60))
            cv2.circle(color, c, r, col, -1)
            cv2.circle(depth, c, r, z, -1)
        else:
            p, q, w = pt(), pt(), int(rng.integers(1, 8))
            cv2.line(color, p, q, col, w)
            cv2.line(depth, p, q, z, w)
    return color, depth


# The palmar side: the skin blended toward a pale pink (palms are paler than backs, most of all on dark skin);
# nails on the back of the distal phalanges.
_PALM_BGR = np.array([150.0, 165.0, 250.0])
PALM_PALENESS = 0.5
BACK_DARKNESS = 0.85
_NAIL_BGR = np.array([220.0, 228.0, 250.0])
NAIL_SPAN = (0.05, 0.8)        # along the distal phalanx from the tip
NAIL_WIDTH = 0.85              # of the phalanx's radius
_SKIN_BGR = np.array([[175, 200, 240], [140, 175, 225], [110, 150, 205], [80, 115, 170], [55, 80, 125]])


def render_sample(seed_or_rng, image_id: int, split: str = "training"):
    """One synthetic RHD image.

    seed_or_rng: an int seed (the image's RNG is image_rng(seed, split, image_id), as make_dataset uses) or a
    numpy Generator. Returns (color_bgr (320, 320, 3) uint8, mask (320, 320) uint8, depth_m (320, 320) float64,
    anno {'xyz': (42, 3), 'uv_vis': (42, 3), 'K': (3, 3)} float64), keypoints 0-20 left hand, 21-41 right.
    """
    rng = seed_or_rng if isinstance(seed_or_rng, np.random.Generator) else image_rng(seed_or_rng, split, image_id)
    K = camera_matrix(rng)
    kinds = [None, None]
    if unusable_kind(image_id):
        kinds[rng.integers(2)] = unusable_kind(image_id)

    hands = []   # (hand 0 left / 1 right, params, camera-frame points: 21 keypoints, wrist corners, elbow)
    boxes = [None, None]
    order = rng.permutation(2)
    for hand in order:
        params = sample_hand_params(rng)
        left = hand == 0
        keypoints_h, palmar_h = hand_geometry(params, left)
        points_h = np.vstack([keypoints_h, _extra_points(params, left)])
        other = boxes[1 - hand]
        R = random_rotation(rng)
        pts, boxes[hand] = _place(rng, points_h, R, K, kinds[hand], other)
        hands.append((hand, params, pts, palmar_h @ R.T))
    hands.sort(key=lambda h: h[0])
    xyz = np.vstack([h[2][:21] for h in hands])
    uv = project(xyz, K)

    color, depth = _background(rng)
    canvas = _Canvas(color, depth)
    skin = _SKIN_BGR[rng.integers(len(_SKIN_BGR))] + rng.uniform(-15, 15, 3)
    sleeve = skin if rng.uniform() < 0.3 else rng.uniform(0, 255, 3)
    f = K[0, 0]

    # Forearms first (the person region behind the hands): a capsule from the wrist to the elbow.
    for hand, params, pts, _ in hands:
        wrist, elbow = pts[0], pts[23]
        if elbow[2] < 0.1:   # keep the elbow in front of the camera: shorten the forearm toward it
            elbow = wrist + (elbow - wrist) * (wrist[2] - 0.1) / (wrist[2] - elbow[2])
        ends = project(np.vstack([wrist, elbow]), K)
        r = 0.028 * params.scale * f
        canvas.capsule(ends[0], ends[1], r / wrist[2], 1.25 * r / elbow[2], wrist[2], elbow[2], sleeve,
                       lambda z: 0.9, 1)

    # Hand primitives, sorted far to near: a bone's key is its far end, so the discs of its joints (key =
    # their own depth, drawn after bones on ties) always come after it.
    prims = []
    for hand, params, pts, palmar in hands:
        base = 2 if hand == 0 else 18
        kp = pts[:21]
        kuv = project(kp, K)
        near = kp[:, 2].min()
        light = rng.uniform(0.8, 1.15)

        def shade(z, near=near, light=light):
            return light * np.clip(1.0 - 2.0 * (z - near), 0.6, 1.0)
        rgb = np.clip(skin + rng.uniform(-8, 8, 3), 0, 255)
        palm_rgb = (1 - PALM_PALENESS) * rgb + PALM_PALENESS * _PALM_BGR
        back_rgb = BACK_DARKNESS * rgb
        # How much of each bone's palmar side faces the camera (-1 its back .. 1 its palm side), at its middle.
        mid = 0.5 * (kp[[a for a, _ in skeleton.BONES]] + kp[[b for _, b in skeleton.BONES]])
        facing = np.einsum("ij,ij->i", palmar, -mid / np.linalg.norm(mid, axis=1, keepdims=True))
        palm_w = np.clip(0.5 + 1.5 * facing, 0.0, 1.0)[:, None]
        bone_rgb = (1 - palm_w) * back_rgb + palm_w * palm_rgb
        nails = np.clip(-2.5 * facing - 0.1, 0.0, 0.9)     # the back of a distal phalanx in view
        radii = _RADII * params.scale
        palm_idx = [0, 4, 8, 12, 16, 20]
        palm_pts = np.vstack([kp[palm_idx], pts[21:23]])   # + the wrist's corners
        prims.append((palm_pts[:, 2].max(), 0, "polygon",
                      (project(palm_pts, K), palm_pts[:, 2], bone_rgb[7], shade, base + _PALM)))
        for j, (a, b) in enumerate(skeleton.BONES):
            fi, seg = divmod(j, 4)
            r = radii[fi, seg]
            label = base + (_PALM if seg == 3 else 3 * fi + seg)
            prims.append((max(kp[a, 2], kp[b, 2]), 0, "capsule",
                          (kuv[a], kuv[b], f * r / kp[a, 2], f * r / kp[b, 2], kp[a, 2], kp[b, 2],
                           bone_rgb[j], shade, label, nails[j] if seg == 0 else 0.0)))
        for k in range(21):
            if k == 0:
                r, label, disc_rgb = _WRIST_RADIUS * params.scale, base + _PALM, bone_rgb[7]
            else:
                fi, j = divmod(k - 1, 4)
                seg = max(j - 1, 0)          # tip and DIP -> distal, PIP -> middle, MCP -> proximal
                r, label, disc_rgb = radii[fi, seg], base + 3 * fi + seg, bone_rgb[4 * fi + seg]
            prims.append((kp[k, 2], 1, "disc",
                          (kuv[k], f * r / kp[k, 2], kp[k, 2], disc_rgb, shade, label, 21 * hand + k)))
    prims.sort(key=lambda p: (-p[0], p[1]))
    for _, _, kind, args in prims:
        getattr(canvas, kind)(*args)

    inside = _inside(uv)
    px = np.clip(np.rint(uv).astype(int), 0, SIZE - 1)
    visible = inside & (canvas.ids[px[:, 1], px[:, 0]] == np.arange(42))

    color = canvas.color
    sigma = rng.uniform(0.3, 0.9)
    color = cv2.GaussianBlur(color, (0, 0), sigma)
    color += rng.standard_normal(color.shape, dtype=np.float32) * np.float32(rng.uniform(2.0, 8.0))
    color = np.clip(np.rint(color), 0, 255).astype(np.uint8)
    anno = {"xyz": xyz, "uv_vis": np.column_stack([uv, visible.astype(np.float64)]), "K": K}
    return color, canvas.mask, canvas.depth, anno


# ---- writing a release -----------------------------------------------------------------------------------------

def _png(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def _write_sample(task):
    """Worker: render one image, write its PNGs (colour, mask and, unless told not to, depth), return (split,
    image_id, anno)."""
    release_root, split, image_id, seed, with_depth = task
    color, mask, depth, anno = render_sample(seed, image_id, split)
    images = [("color", color), ("mask", mask)] + ([("depth", release.encode_depth(depth))] if with_depth else [])
    for kind, image in images:
        path = release.image_path(release_root, split, kind, image_id)
        try:
            atomic_write_bytes(path, _png(image))
        except OSError as e:
            raise NetError(f"cannot write '{path}': {e.strerror or e}") from None
    return split, image_id, anno


def _canonical(array: np.ndarray) -> np.ndarray:
    """A float64 copy with numpy's shared dtype object. An array unpickled from a worker carries its own
    dtype object, which the pickle memo would write again: the bytes would depend on the worker count."""
    out = np.empty(np.shape(array), np.float64)
    out[...] = array
    return out


def _pool_context():
    """fork where there is one: a spawned worker would re-import torch (through the layers package) and
    cannot start from a script read on stdin. Never call cv2.setNumThreads in a forked worker: it hangs
    when the parent has used OpenCV's thread pool."""
    return multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")


def make_dataset(out_dir: str, num_train: int, num_eval: int, seed: int, workers: int | None = None,
                 progress=None, depth: bool = True) -> str:
    """Write a synthetic release under out_dir/RHD_published_v2 (SPEC section 2); returns that path.

    Image i of a split is render_sample(seed, i, split): the bytes do not depend on `workers` (default
    os.cpu_count(); 1 renders in this process). progress: optional callable, called with the number of
    images just finished (e.g. a tqdm bar's update). Existing files of the same names are replaced.
    depth=False: no depth PNGs (the converter reads colour and mask only; a depth PNG is about a tenth of an
    image's time).
    """
    for name, n in (("num_train", num_train), ("num_eval", num_eval), ("seed", seed)):
        if int(n) != n or n < 0:
            raise NetError(f"{name} must be a non-negative integer, got {n!r}")
    root = os.path.join(out_dir, "RHD_published_v2")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise NetError(f"output path '{out_dir}' exists and is not a folder")
    tasks = [(root, split, i, int(seed), bool(depth))
             for split, n in zip(SPLITS, (num_train, num_eval)) for i in range(n)]
    annos = {split: {} for split in SPLITS}
    workers = max(1, min(workers or os.cpu_count() or 1, len(tasks) or 1))

    def collect(results):
        for split, image_id, anno in results:
            annos[split][image_id] = {key: _canonical(anno[key]) for key in ANNO_KEYS}
            if progress is not None:
                progress(1)

    if workers == 1:
        collect(map(_write_sample, tasks))
    else:
        # workers ignore Ctrl-C (the terminal sends it to all of them): the main process stops them, quietly
        ignore_sigint = dict(initializer=signal.signal, initargs=(signal.SIGINT, signal.SIG_IGN))
        with _pool_context().Pool(workers, **ignore_sigint) as pool:
            chunk = max(1, min(16, len(tasks) // (4 * workers)))
            collect(pool.imap_unordered(_write_sample, tasks, chunksize=chunk))
    for split in SPLITS:
        path = release.annotation_path(root, split)
        try:
            release.write_annotations(path, {i: annos[split][i] for i in sorted(annos[split])})
        except OSError as e:
            raise NetError(f"cannot write '{path}': {e.strerror or e}") from None
    return root


def make_tiny_release(tmp_dir: str, num_train: int = 6, num_eval: int = 4, seed: int = 0) -> str:
    """A small release for tests (in this process, well under 3 s); returns its RHD_published_v2 path.
    With the defaults: training image 3 has a hand mostly outside the image, training image 5 a far, tiny
    hand, evaluation image 3 a hand mostly outside; every other hand is usable."""
    return make_dataset(tmp_dir, num_train, num_eval, seed, workers=1)
