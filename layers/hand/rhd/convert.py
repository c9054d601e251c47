"""Official RHD release -> the memo's per-sample layout and its packed HDF5 form (SPEC sections 2-3).

For every image i and hand h (0 left: keypoints 0-20, 1 right: 21-41) the sample idx = 2 * i + h is either
usable, and gets its files (memo.py names them), or excluded with the first reason that applies, in this order:
    unreadable_color      the colour PNG is missing or cannot be decoded
    unreadable_mask       the mask PNG is missing, cannot be decoded, or its size differs from the colour image
    behind_camera         a keypoint has Z <= 0 (its projection is meaningless)
    keypoint_off_image    a projected keypoint lies outside [0, W) x [0, H)
    empty_mask            no mask pixel carries this hand's labels
    mask_outside_gt_box   the hand's mask box does not meet the GT box grown x1.5
    too_small             the clipped mask box (step 2 below) is under MIN_BOX_SIDE = 32 px on its longer side,
                          or holds fewer than MIN_MASK_PIXELS = 200 hand pixels: such a hand would be upscaled
                          more than 4x to the net's 128 px input (the synthetic generator's "far" hands, 10-25 px,
                          all fall under it; its usable hands measure 35 px and more)
An image-level reason (the first two) is retried on every run, so a file restored later gets converted.

Crop box (integer pixel bounds, x1..x2 inclusive, width x2 - x1 + 1):
  1. mask box: tight box of release.hand_mask's pixels;
  2. GT box: box of the 21 projected keypoints (u, v), grown x1.5 about its centre; the mask box is clipped to
     the pixels whose index lies inside it (so a stray mask blob cannot blow up the crop);
  3. side S = ceil(1.25 * max(width, height)) of the clipped box; the square is centred on the centroid of the
     hand's mask pixels inside the clipped box: x1 = floor(cx - (S - 1) / 2 + 1/2) (exact integer arithmetic),
     x2 = x1 + S - 1, likewise y.  Pixels outside the image are 128; the PNG is written at its native S x S.
2D points are the projection of xyz through K (for RHD they equal uv_vis's u, v); gt_vis is uv_vis's third column.

Files and formats (besides those memo.py fixes): matlab_gt_camera_k/<i>.txt is three lines of "%.6f %.6f %.6f"
(K row-major), written for every annotated image; mask_pixels/<i>.txt is "left right\n", the number of mask
pixels with the left hand's labels (2-17) and the right hand's (18-33), written for every image whose mask was
read, whatever its hands' usability (the rhd evaluation protocol takes the hand with more pixels, as
ColorHandPose3D does); avg_bone.txt is 20 lines of "%12.6f" (mm, the mean over the
usable training samples of the bone lengths of their gt_3d text values).

Resuming: after an image's files are written (each atomically), a record `OUT/.convert_state/<split>/<i>.json`
is written (atomically) with each hand's usable flag and reason and the RULES it was made under. An image is
skipped when its record exists with the current RULES and every file it implies exists; an image converted
again loses the per-sample files of a hand that is now unusable. The index lists, missing lists, avg_bone.txt
and the packed files are always rebuilt at the end, from the records and the per-sample files on disk. Temp
files (`.tmp-*`) of workers stopped by an interruption are removed before the error propagates; those of a
killed run are removed at the next start.

Over 400 lines as one cohesive thing: one conversion, its rules and its resumable bookkeeping.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sys
import tempfile
from collections import Counter

import cv2
import numpy as np

from layers.hand import skeleton
from layers.hand.readers import decode_image
from layers.hand.rhd import memo, packed, release
from netdef.errors import NetError

GT_BOX_LIMIT = 1.5
SQUARE_GROW_NUM, SQUARE_GROW_DEN = 5, 4      # x1.25, kept as a fraction for exact integer arithmetic
MIN_BOX_SIDE = 32
MIN_MASK_PIXELS = 200
PAD_VALUE = 128
# OpenCV's default (zlib level 1, RLE strategy): on the noisy crops half the encoding time of level 3 with the
# default strategy, and 4 % smaller
PNG_PARAMS: list = []
K_FORMAT = "%.6f"
AVG_BONE_FORMAT = "%12.6f"
STATE_DIR = ".convert_state"
STATE_VERSION = 1
# A record made under other rules is stale: its image is converted again.
RULES = [STATE_VERSION, GT_BOX_LIMIT, SQUARE_GROW_NUM, SQUARE_GROW_DEN, MIN_BOX_SIDE, MIN_MASK_PIXELS, PAD_VALUE,
         PNG_PARAMS, K_FORMAT]

REASONS = {
    "unreadable_color": "colour PNG missing or unreadable",
    "unreadable_mask": "mask PNG missing, unreadable or of another size",
    "behind_camera": "a keypoint has Z <= 0",
    "keypoint_off_image": "a keypoint projects outside the image",
    "empty_mask": "no mask pixel of this hand",
    "mask_outside_gt_box": "mask box outside the GT box grown x1.5",
    "too_small": f"hand box < {MIN_BOX_SIDE} px or < {MIN_MASK_PIXELS} mask pixels",
}
IMAGE_REASONS = ("unreadable_color", "unreadable_mask")
SAMPLE_FIELDS = ("crop_image",) + memo.INT_FIELDS + tuple(memo.ARRAY_FIELDS)


# ---- annotations ----------------------------------------------------------------------------------------------

def load_annotations(release_root: str, split: str) -> list:
    """The split's pickle as a list indexed by image id of (xyz (42,3) m, uv_vis (42,3), K (3,3)), float64.

    NetError naming the pickle (and the image id) when it is missing, corrupt, or an entry is malformed."""
    path = release.annotation_path(release_root, split)
    anno = release.read_annotations(path)
    ids = list(anno.keys())
    if not all(isinstance(k, (int, np.integer)) and not isinstance(k, bool) for k in ids):
        bad = next(k for k in ids if not isinstance(k, (int, np.integer)) or isinstance(k, bool))
        raise NetError(f"malformed annotation file '{path}': image id {bad!r} is not an integer")
    if sorted(int(k) for k in ids) != list(range(len(ids))):
        have = set(int(k) for k in ids)
        gap = next((i for i in range(len(ids)) if i not in have), None)
        raise NetError(f"malformed annotation file '{path}': image ids must be 0..{len(ids) - 1}"
                       + (f", image {gap} is missing" if gap is not None else ""))
    out = [None] * len(ids)
    for image_id, a in anno.items():
        try:
            xyz, uv_vis, k = (np.asarray(a[key], dtype=np.float64) for key in ("xyz", "uv_vis", "K"))
        except (TypeError, ValueError) as e:
            raise NetError(f"malformed annotation for image {image_id} in '{path}': {e}") from None
        problem = None
        if not (np.all(np.isfinite(xyz)) and np.all(np.isfinite(uv_vis)) and np.all(np.isfinite(k))):
            problem = "non-finite number"
        elif not np.all((uv_vis[:, 2] == 0) | (uv_vis[:, 2] == 1)):
            problem = "uv_vis visibility (third column) must be 0 or 1"
        elif not (k[0, 0] > 0 and k[1, 1] > 0 and np.array_equal(k[2], [0.0, 0.0, 1.0])):
            problem = "K must be [[fx, s, u0], [0, fy, v0], [0, 0, 1]] with fx, fy > 0"
        if problem:
            raise NetError(f"malformed annotation for image {image_id} in '{path}': {problem}")
        out[int(image_id)] = (xyz, uv_vis, k)
    return out


def project(xyz: np.ndarray, k: np.ndarray) -> np.ndarray:
    """(n, 3) camera-frame points -> (n, 2) pixel u, v through K."""
    p = xyz @ k.T
    return p[:, :2] / p[:, 2:3]


# ---- one hand ---------------------------------------------------------------------------------------------------

def crop_box(hand_pixels: np.ndarray, uv: np.ndarray):
    """Square crop box (x1, y1, x2, y2) of one hand, or the name of the reason it is unusable (see module doc).

    hand_pixels: (H, W) bool mask of the hand; uv: (21, 2) projected keypoints."""
    ys, xs = np.nonzero(hand_pixels)
    if len(xs) == 0:
        return "empty_mask"
    (gx1, gy1), (gx2, gy2) = uv.min(axis=0), uv.max(axis=0)
    half_w, half_h = GT_BOX_LIMIT * (gx2 - gx1) / 2, GT_BOX_LIMIT * (gy2 - gy1) / 2
    cx, cy = (gx1 + gx2) / 2, (gy1 + gy2) / 2
    bx1, bx2 = max(int(xs.min()), int(np.ceil(cx - half_w))), min(int(xs.max()), int(np.floor(cx + half_w)))
    by1, by2 = max(int(ys.min()), int(np.ceil(cy - half_h))), min(int(ys.max()), int(np.floor(cy + half_h)))
    if bx1 > bx2 or by1 > by2:
        return "mask_outside_gt_box"
    inside = (xs >= bx1) & (xs <= bx2) & (ys >= by1) & (ys <= by2)
    n = int(inside.sum())
    if n == 0:
        return "mask_outside_gt_box"
    longer = max(bx2 - bx1 + 1, by2 - by1 + 1)
    if longer < MIN_BOX_SIDE or n < MIN_MASK_PIXELS:
        return "too_small"
    return square_crop_box((bx1, by1, bx2, by2), (int(xs[inside].sum()), int(ys[inside].sum()), n))


def square_crop_box(box, centre_sums=None) -> tuple[int, int, int, int]:
    """Step 3 of the crop rule (module doc): the square crop box (x1, y1, x2, y2) grown from a hand's box.

    box: integer bounds (x1, y1, x2, y2), inclusive. The side is S = ceil(1.25 * the box's longer side); the
    square is centred on (sum_x / n, sum_y / n) for centre_sums = (sum_x, sum_y, n) (the converter passes its
    mask pixels' sums: their centroid), else on the box's centre ((x1 + x2) / 2, (y1 + y2) / 2):
    x1 = floor(cx - (S - 1) / 2 + 1/2), x2 = x1 + S - 1, likewise y, in exact integer arithmetic.
    tools/predict.py grows a user's hand box with it."""
    bx1, by1, bx2, by2 = (int(v) for v in box)
    sx, sy, n = centre_sums if centre_sums is not None else (bx1 + bx2, by1 + by2, 2)
    longer = max(bx2 - bx1 + 1, by2 - by1 + 1)
    side = -(-SQUARE_GROW_NUM * longer // SQUARE_GROW_DEN)
    # floor(sum/n - (side-1)/2 + 1/2) without float rounding
    x1 = (2 * sx - (side - 2) * n) // (2 * n)
    y1 = (2 * sy - (side - 2) * n) // (2 * n)
    return x1, y1, x1 + side - 1, y1 + side - 1


def crop_pixels(image: np.ndarray, box) -> np.ndarray:
    """image[y1:y2+1, x1:x2+1] with PAD_VALUE where the box leaves the image."""
    x1, y1, x2, y2 = box
    h, w = image.shape[:2]
    out = np.full((y2 - y1 + 1, x2 - x1 + 1) + image.shape[2:], PAD_VALUE, dtype=image.dtype)
    sx1, sy1, sx2, sy2 = max(x1, 0), max(y1, 0), min(x2, w - 1), min(y2, h - 1)
    if sx1 <= sx2 and sy1 <= sy2:
        out[sy1 - y1:sy2 - y1 + 1, sx1 - x1:sx2 - x1 + 1] = image[sy1:sy2 + 1, sx1:sx2 + 1]
    return out


def hand_sample(image, mask, xyz, uv_vis, k, image_id: int, hand: int):
    """One hand -> {field: file bytes} (SAMPLE_FIELDS) when usable, else the reason's name."""
    joints = slice(21 * hand, 21 * hand + 21)
    xyz_h = xyz[joints]
    if np.any(xyz_h[:, 2] <= 0):
        return "behind_camera"
    uv = project(xyz_h, k)
    h, w = mask.shape
    if np.any(uv < 0) or np.any(uv[:, 0] >= w) or np.any(uv[:, 1] >= h):
        return "keypoint_off_image"
    box = crop_box(release.hand_mask(mask, hand), uv)
    if isinstance(box, str):
        return box
    x1, y1, x2, y2 = box
    ok, png = cv2.imencode(".png", crop_pixels(image, box), PNG_PARAMS)
    if not ok:
        raise RuntimeError("cv2.imencode failed")   # a bug, not a user error
    crop_uv = (uv - (x1, y1)) / (x2 - x1 + 1, y2 - y1 + 1)
    texts = {
        "bbx_x1": memo.format_int(x1), "bbx_y1": memo.format_int(y1),
        "bbx_x2": memo.format_int(x2), "bbx_y2": memo.format_int(y2),
        "image_index": memo.format_int(image_id),
        "is_left_hand_or_not": memo.format_int(1 if hand == 0 else 0),
        "crop_gt_2d": memo.format_rows(crop_uv, memo.ARRAY_FORMATS["crop_gt_2d"]),
        "gt_3d": memo.format_rows(xyz_h * 1000.0, memo.ARRAY_FORMATS["gt_3d"]),
        "gt_2d_in_raw": memo.format_rows(uv, memo.ARRAY_FORMATS["gt_2d_in_raw"]),
        "gt_vis": memo.format_rows(uv_vis[joints, 2].astype(np.int64), memo.ARRAY_FORMATS["gt_vis"]),
    }
    files = {"crop_image": png.tobytes()}
    files.update({name: text.encode("ascii") for name, text in texts.items()})
    return files


# ---- one image (runs in a worker) --------------------------------------------------------------------------------

def mask_pixel_counts(mask: np.ndarray) -> tuple[int, int]:
    """(left, right): the number of mask pixels with each hand's labels (release.hand_mask)."""
    return int(release.hand_mask(mask, 0).sum()), int(release.hand_mask(mask, 1).sum())


def format_mask_pixels(counts) -> bytes:
    return ("%d %d\n" % tuple(counts)).encode("ascii")


def state_path(out: str, split: str, image_id: int) -> str:
    return os.path.join(out, STATE_DIR, split, f"{image_id}.json")


def _expected_files(out, split, image_id, usable):
    paths = [memo.camera_k_path(out, split, image_id), memo.mask_pixels_path(out, split, image_id)]
    for hand in (0, 1):
        if usable[hand]:
            paths += [memo.sample_path(out, split, f, 2 * image_id + hand) for f in SAMPLE_FIELDS]
    return paths


def _write(path: str, data: bytes) -> None:
    try:
        memo.atomic_write_bytes(path, data)
    except OSError as e:
        raise NetError(f"cannot write '{path}': {e.strerror or e}") from None


def _read_record(out, split, image_id):
    try:
        with open(state_path(out, split, image_id), "r", encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("rules") == RULES else None


def _is_done(out, split, image_id):
    record = _read_record(out, split, image_id)
    if record is None or any(r in IMAGE_REASONS for r in record["reasons"]):
        return None
    if all(os.path.exists(p) for p in _expected_files(out, split, image_id, record["usable"])):
        return record
    return None


def convert_image(task):
    """Convert one image (both hands) unless already done; return (image_id, record, converted_now)."""
    release_root, out, split, image_id, (xyz, uv_vis, k) = task
    record = _is_done(out, split, image_id)
    if record is not None:
        return image_id, record, False
    reasons, details = [None, None], [None, None]
    image = mask = None
    color_path = release.image_path(release_root, split, "color", image_id)
    mask_path = release.image_path(release_root, split, "mask", image_id)
    try:
        image = release.read_image(color_path, "colour image")
    except NetError as e:
        reasons, details = ["unreadable_color"] * 2, [str(e)] * 2
    if image is not None:
        try:
            mask = release.read_image(mask_path, "mask", cv2.IMREAD_UNCHANGED)
            if mask.ndim == 3:     # a mask saved with colour channels: the labels are in every channel
                mask = mask[..., 0]
            if mask.shape != image.shape[:2]:
                raise NetError(f"mask '{mask_path}' is {mask.shape[1]}x{mask.shape[0]}, the colour image "
                               f"{image.shape[1]}x{image.shape[0]}")
        except NetError as e:
            mask = None
            reasons, details = ["unreadable_mask"] * 2, [str(e)] * 2
    _write(memo.camera_k_path(out, split, image_id), memo.format_rows(k, K_FORMAT).encode("ascii"))
    if mask is None and os.path.exists(memo.mask_pixels_path(out, split, image_id)):   # an earlier run's count
        os.unlink(memo.mask_pixels_path(out, split, image_id))
    if mask is not None:
        _write(memo.mask_pixels_path(out, split, image_id), format_mask_pixels(mask_pixel_counts(mask)))
        for hand in (0, 1):
            result = hand_sample(image, mask, xyz, uv_vis, k, image_id, hand)
            if isinstance(result, str):
                reasons[hand] = result
                continue
            for field in SAMPLE_FIELDS:
                _write(memo.sample_path(out, split, field, 2 * image_id + hand), result[field])
    for hand in (0, 1):
        if reasons[hand] is not None:      # files left by a run under other rules (or another release)
            for field in SAMPLE_FIELDS:
                path = memo.sample_path(out, split, field, 2 * image_id + hand)
                if os.path.exists(path):
                    os.unlink(path)
    record = {"rules": RULES, "image_id": image_id, "usable": [r is None for r in reasons],
              "reasons": reasons, "details": details}
    _write(state_path(out, split, image_id), json.dumps(record, sort_keys=True).encode("utf-8"))
    return image_id, record, True


# ---- reading a converted image back (runs in a worker) ---------------------------------------------------------

def collect_image(task):
    """Everything the packed file needs of one converted image, read back from its files on disk: (image_id, K,
    per hand the sample's values or None, the mask pixel counts (-1, -1 when the mask was not read))."""
    out, split, image_id, usable, mask_read = task
    k = memo.read_numbers(memo.camera_k_path(out, split, image_id), 9, f"image {image_id}").reshape(3, 3)
    counts = (-1, -1)
    if mask_read:
        counts = tuple(int(v) for v in memo.read_numbers(memo.mask_pixels_path(out, split, image_id), 2,
                                                         f"image {image_id}", integer=True))
    hands = []
    for hand in (0, 1):
        if not usable[hand]:
            hands.append(None)
            continue
        idx = 2 * image_id + hand
        what = f"sample {idx}"
        crop_path = memo.sample_path(out, split, "crop_image", idx)
        try:
            with open(crop_path, "rb") as f:
                png = f.read()
        except OSError as e:
            raise NetError(f"cannot read '{crop_path}' ({what}): {e.strerror or e}") from None
        # the readers' own decoder: the packed pixels are exactly what reading the PNG gives
        values = {"crop_image": decode_image(png, f"'{crop_path}' ({what})")}
        for field in memo.INT_FIELDS:
            values[field] = int(memo.read_numbers(memo.sample_path(out, split, field, idx), 1, what, True)[0])
        for field, (rows, cols) in memo.ARRAY_FIELDS.items():
            values[field] = memo.read_numbers(memo.sample_path(out, split, field, idx), rows * cols, what,
                                              field == "gt_vis").reshape(rows, cols)
        hands.append(values)
    return image_id, k, hands, counts


# ---- the whole conversion ------------------------------------------------------------------------------------

def bone_lengths(joints: np.ndarray) -> np.ndarray:
    """(..., 21, 3) -> (..., 20) in skeleton.BONES order."""
    a, b = np.array(skeleton.BONES).T
    return np.linalg.norm(joints[..., a, :] - joints[..., b, :], axis=-1)


def _remove_temp_files(out: str, splits) -> None:
    """memo.atomic_write_bytes's `.tmp-*` files of a stopped run are never valid data. Only the converter's own
    folders are scanned (not their subfolders), so other programs' temp files elsewhere in `out` are left alone."""
    for split in splits:
        all_hand = os.path.join(out, split, "all_hand")
        folders = [all_hand, os.path.join(out, split, "matlab_gt_camera_k"), os.path.join(out, split, "mask_pixels"),
                   os.path.join(out, STATE_DIR, split)]
        for folder in folders + [os.path.join(all_hand, field) for field in SAMPLE_FIELDS]:
            try:
                names = os.listdir(folder)
            except FileNotFoundError:
                continue
            for name in names:
                if name.startswith(".tmp-"):
                    os.unlink(os.path.join(folder, name))


def _map(pool, fn, tasks, progress, desc, ordered=False):
    """Lazy map with an optional tqdm bar; pool None runs in this process."""
    if pool is None:
        results = map(fn, tasks)
    else:
        results = (pool.imap if ordered else pool.imap_unordered)(fn, tasks, chunksize=16)
    if progress:
        from tqdm import tqdm
        results = tqdm(results, total=len(tasks), desc=desc, unit="img", file=sys.stderr)
    return results


def convert(rhd_root: str, out: str, splits=memo.SPLITS, workers: int | None = None, progress: bool = False):
    """Convert `splits` of the release at rhd_root (its RHD_published_v2 folder) into `out`.

    Returns a summary: {split: {"images", "converted", "usable", "reasons": Counter, "unreadable": [messages]}}.
    NetError for a missing or malformed annotation pickle, or an output that cannot be written."""
    for split in splits:
        memo.split_dir(out, split)          # NetError on an unknown split
    splits = tuple(s for s in memo.SPLITS if s in splits)   # training first: evaluation's packed file needs avg_bone
    if not os.path.isdir(rhd_root):
        raise NetError(f"RHD release folder '{rhd_root}' not found (expected .../RHD_published_v2)")
    if "training" not in splits and not os.path.isfile(memo.avg_bone_path(out)):
        raise NetError(f"'{memo.avg_bone_path(out)}' is missing: convert the training split first "
                       f"(the evaluation packed file stores the training set's avg_bone)")
    annotations = {split: load_annotations(rhd_root, split) for split in splits}
    _remove_temp_files(out, splits)
    workers = max(1, workers or os.cpu_count() or 1)
    # fork where available: workers then need not re-import torch (pulled in by the layers package). No
    # cv2.setNumThreads in the workers: called in a forked child after the parent used OpenCV's thread pool,
    # it deadlocks.
    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
    # workers ignore Ctrl-C (the terminal sends it to all of them): the main process stops them, quietly
    pool = None
    if workers > 1:
        pool = ctx.Pool(workers, initializer=signal.signal, initargs=(signal.SIGINT, signal.SIG_IGN))
    try:
        summary = {}
        for split in splits:
            tasks = [(rhd_root, out, split, i, a) for i, a in enumerate(annotations[split])]
            results = sorted(_map(pool, convert_image, tasks, progress, split), key=lambda r: r[0])
            records = [r[1] for r in results]
            summary[split] = {
                "images": len(records),
                "converted": sum(r[2] for r in results),
                "usable": sum(sum(r["usable"]) for r in records),
                "reasons": Counter(x for r in records for x in r["reasons"] if x is not None),
                "unreadable": sorted({d for r in records for d in r["details"] if d is not None}),
            }
            _write_lists(out, split, records)
            collected = _map(pool, collect_image, [(out, split, r["image_id"], r["usable"],
                                                    not any(x in IMAGE_REASONS for x in r["reasons"]))
                                                   for r in records],
                             progress, f"{split} (packing)", ordered=True)   # HDF5 heap order: stable bytes
            _write_packed(out, split, len(records), collected)
        if pool is not None:
            pool.close()
            pool.join()
    except BaseException:
        if pool is not None:
            pool.terminate()    # a worker killed mid-write leaves its temp file: remove it now, not next run
            pool.join()
            _remove_temp_files(out, splits)
        raise
    return summary


def _write_lists(out, split, records):
    """The index list and the three exclusion lists (memo.MISSING_LISTS says what each excludes)."""
    usable = [2 * r["image_id"] + h for r in records for h in (0, 1) if r["usable"][h]]
    excluded = {"all": [], "left": [], "right": []}
    for r in records:
        for h, hand in ((0, "left"), (1, "right")):
            idx = 2 * r["image_id"] + h
            for which in ("all", "left", "right"):
                if not r["usable"][h] or which not in ("all", hand):
                    excluded[which].append(idx)
    _write(memo.index_list_path(out, split), "".join(f"{i}\n" for i in usable).encode("ascii"))
    for which, indices in excluded.items():
        text = f"{len(indices)}\n" + "".join(f"{i}\n" for i in sorted(indices))
        _write(memo.missing_list_path(out, split, which), text.encode("ascii"))


def _write_packed(out, split, num_images, collected):
    """memo.PACKED_FORMAT from collect_image's results, by image id: the values read back from the text files.

    Crops go to the file as they arrive (they are the bulk); for the training split avg_bone.txt is written
    first, from the gt_3d text values. Temp file, then rename."""
    import h5py

    n = 2 * num_images
    arrays = {
        "bbox": np.zeros((n, 4), np.int32), "image_index": np.zeros(n, np.int32), "is_left": np.zeros(n, np.uint8),
        "crop_gt_2d": np.zeros((n, 21, 2), np.float32), "gt_3d": np.zeros((n, 21, 3), np.float32),
        "gt_2d_in_raw": np.zeros((n, 21, 2), np.float32), "gt_vis": np.zeros((n, 21), np.uint8),
        "usable": np.zeros(n, np.uint8), "camera_k": np.zeros((num_images, 3, 3), np.float32),
        "mask_pixels": np.full((num_images, 2), -1, np.int32),
    }
    gt_3d_text = {}      # idx -> float64 values as the text holds them, for avg_bone
    path = memo.packed_path(out, split)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-", suffix=os.path.basename(path))
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as f:
            crops = f.create_dataset("crop_pixels", (n,), dtype=h5py.vlen_dtype(np.uint8))
            arrays["crop_shape"] = np.zeros((n, 2), np.int32)
            for image_id, k, hands, counts in collected:
                arrays["camera_k"][image_id] = k
                arrays["mask_pixels"][image_id] = counts
                for hand, v in enumerate(hands):
                    if v is None:
                        continue
                    idx = 2 * image_id + hand
                    crops[idx] = v["crop_image"].reshape(-1)
                    arrays["crop_shape"][idx] = v["crop_image"].shape[:2]
                    arrays["bbox"][idx] = [v[b] for b in memo.BBOX_FIELDS]
                    arrays["image_index"][idx] = v["image_index"]
                    arrays["is_left"][idx] = v["is_left_hand_or_not"]
                    for field in ("crop_gt_2d", "gt_3d", "gt_2d_in_raw"):
                        arrays[field][idx] = v[field]
                    arrays["gt_vis"][idx] = v["gt_vis"][:, 0]
                    arrays["usable"][idx] = 1
                    gt_3d_text[idx] = v["gt_3d"]
            if split == "training":
                _write_avg_bone(out, [gt_3d_text[i] for i in sorted(gt_3d_text)])
            arrays["index_list"] = memo.read_index_list(memo.index_list_path(out, split)).astype(np.int32)
            arrays["avg_bone"] = memo.read_numbers(memo.avg_bone_path(out), 20, "avg_bone").astype(np.float32)
            for name, value in arrays.items():
                f.create_dataset(name, data=value)
            f.attrs["split"] = split
            f.attrs["num_images"] = num_images
            f.attrs["format_version"] = packed.FORMAT_VERSION
        os.chmod(tmp, 0o666 & ~memo._UMASK)   # mkstemp made it 0600
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _write_avg_bone(out, gt_3d):
    """Mean bone lengths (mm) over the usable training samples, summed in idx order (byte-stable output)."""
    if not gt_3d:
        raise NetError(f"no usable training sample: cannot compute '{memo.avg_bone_path(out)}'")
    mean = bone_lengths(np.array(gt_3d)).mean(axis=0)
    _write(memo.avg_bone_path(out), memo.format_rows(mean, AVG_BONE_FORMAT).encode("ascii"))


def format_summary(summary: dict, max_listed: int = 20) -> str:
    """The reason -> count table per split, then the unreadable files by name (the first max_listed)."""
    splits = list(summary)
    rows = [("images", [summary[s]["images"] for s in splits]),
            ("converted this run", [summary[s]["converted"] for s in splits]),
            ("usable samples", [summary[s]["usable"] for s in splits])]
    rows += [(f"excluded: {reason}", [summary[s]["reasons"].get(reason, 0) for s in splits]) for reason in REASONS]
    width = max(len(r[0]) for r in rows)
    lines = [" " * width + "".join(f"{s:>12}" for s in splits)]
    lines += [name.ljust(width) + "".join(f"{c:>12}" for c in counts) for name, counts in rows]
    for reason, text in REASONS.items():
        lines.append(f"  {reason}: {text}")
    for s in splits:
        messages = summary[s]["unreadable"]
        lines += [f"{s}: unusable image: {m}" for m in messages[:max_listed]]
        if len(messages) > max_listed:
            lines.append(f"{s}: ... and {len(messages) - max_listed} more unusable images")
    return "\n".join(lines)
