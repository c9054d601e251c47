"""The memo's per-sample layout (SPEC section 3) and its packed HDF5 form: paths, writers and readers.

Text layout, under ROOT (the converter's --out):
    ROOT/{split}/all_hand/<field>/<idx>.txt|png     per sample, idx = 2 * image_id + hand (0 left, 1 right)
    ROOT/{split}/matlab_gt_camera_k/<image_id>.txt  per image, 9 numbers row-major
    ROOT/{split}/mask_pixels/<image_id>.txt         per image whose mask was read: "left right\n", the number of
                                                    mask pixels of each hand (labels 2-17, 18-33): which hand is
                                                    the image's dominant one (the rhd evaluation protocol)
    ROOT/training/all_hand/all_train_index.txt, ROOT/evaluation/all_hand/all_evaluation_index.txt
    ROOT/{split}/all_hand/missing_{all,left,right}_new.txt   (count, then indices: see MISSING_LISTS)
    ROOT/training/all_hand/avg_bone.txt                       (20 numbers, bone order of skeleton.BONES)
Packed form: ROOT/{split}/all_hand/packed.h5 holding the same values (see PACKED_FORMAT).

Every reader raises NetError naming the path and the sample index; writers are atomic (temp file + rename).
"""

from __future__ import annotations

import os
import tempfile

import numpy as np

from netdef.errors import NetError

SPLITS = ("training", "evaluation")
BBOX_FIELDS = ("bbx_x1", "bbx_y1", "bbx_x2", "bbx_y2")
INT_FIELDS = BBOX_FIELDS + ("image_index", "is_left_hand_or_not")
# field -> (rows, cols) of its text file
ARRAY_FIELDS = {"crop_gt_2d": (21, 2), "gt_3d": (21, 3), "gt_2d_in_raw": (21, 2), "gt_vis": (21, 1)}
ARRAY_FORMATS = {"crop_gt_2d": "%12.6f", "gt_3d": "%12.6f", "gt_2d_in_raw": "%12.6f", "gt_vis": "%d"}
INDEX_LIST_NAMES = {"training": "all_train_index.txt", "evaluation": "all_evaluation_index.txt"}

PACKED_FORMAT = """\
packed.h5 (one per split), N = 2 * num_images rows indexed by sample idx; rows of unusable samples are
present, zero-filled, with usable = 0:
  crop_pixels  (N,)        vlen uint8: the crop's pixels, crop_image/<idx>.png decoded (H x W x 3 BGR,
                           row-major), so readers decode no PNG; empty for unusable rows
  crop_shape   (N, 2)      int32: H, W of each crop (0, 0 for unusable rows)
  bbox         (N, 4)      int32: x1, y1, x2, y2
  image_index  (N,)        int32
  is_left      (N,)        uint8
  crop_gt_2d   (N, 21, 2)  float32   gt_3d (N, 21, 3) float32   gt_2d_in_raw (N, 21, 2) float32
  gt_vis       (N, 21)     uint8
  usable       (N,)        uint8
  camera_k     (num_images, 3, 3) float32, by image id
  mask_pixels  (num_images, 2) int32, by image id: the left and right hand's mask pixel counts
               (mask_pixels/<i>.txt); -1, -1 where the mask could not be read
  index_list   (M,)        int32: the split's all_*_index.txt
  avg_bone     (20,)       float32: the training set's avg_bone.txt
  attrs: split, num_images, format_version = 3
Float arrays hold the values the text files hold (parsed back from their %12.6f text), so both layouts
give identical numbers. Older formats are still read: format 2 lacked mask_pixels (the readers do not need
it; the rhd evaluation protocol says to re-run tools/prepare_rhd.py); format 1 also had crop_image (N,) vlen
uint8, the PNG file bytes, instead of crop_pixels and crop_shape: 1.5x smaller on the synthetic set, but
decoding the PNG was most of a reader's time."""


MISSING_LISTS = """\
The exclusion lists, as the author's nets use them (they draw indices over both hands of every image and exclude
one of these; see the README):
  missing_all_new.txt    every unusable sample, both hands (the memo's deprecated list)
  missing_left_new.txt   what to exclude to train on LEFT hands only: every right hand and every unusable left hand
  missing_right_new.txt  what to exclude to train on RIGHT hands only: every left hand and every unusable right hand
So every list leaves only usable samples, and an index not excluded has all its files."""


def split_dir(root: str, split: str) -> str:
    if split not in SPLITS:
        raise NetError(f"unknown RHD split '{split}' (use training or evaluation)")
    return os.path.join(root, split)


def sample_path(root: str, split: str, field: str, idx: int) -> str:
    ext = "png" if field == "crop_image" else "txt"
    return os.path.join(split_dir(root, split), "all_hand", field, f"{idx}.{ext}")


def camera_k_path(root: str, split: str, image_id: int) -> str:
    return os.path.join(split_dir(root, split), "matlab_gt_camera_k", f"{image_id}.txt")


def mask_pixels_path(root: str, split: str, image_id: int) -> str:
    """Per image: "left right\\n", each hand's number of mask pixels (the converter's count)."""
    return os.path.join(split_dir(root, split), "mask_pixels", f"{image_id}.txt")


def index_list_path(root: str, split: str) -> str:
    return os.path.join(split_dir(root, split), "all_hand", INDEX_LIST_NAMES[split])


def missing_list_path(root: str, split: str, which: str = "all") -> str:
    return os.path.join(split_dir(root, split), "all_hand", f"missing_{which}_new.txt")


def avg_bone_path(root: str) -> str:
    return os.path.join(root, "training", "all_hand", "avg_bone.txt")


def packed_path(root: str, split: str) -> str:
    return os.path.join(split_dir(root, split), "all_hand", "packed.h5")


# ---- writing (atomic) ----------------------------------------------------------------------------------------

_UMASK = os.umask(0)
os.umask(_UMASK)

def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write to a temp file in the same folder, then rename: a reader never sees half a file."""
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)   # mkstemp makes 0600; a dataset should read like any written file
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def format_int(value: int) -> str:
    return "%d\n" % value


def format_rows(array: np.ndarray, fmt: str) -> str:
    """One line per row, columns separated by one space, e.g. '%12.6f %12.6f\\n'."""
    array = np.asarray(array)
    if array.ndim == 1:
        array = array[:, None]
    return "".join(" ".join(fmt % v for v in row) + "\n" for row in array)


# ---- reading --------------------------------------------------------------------------------------------------

def read_numbers(path: str, count: int, what: str = "", integer: bool = False) -> np.ndarray:
    """Exactly `count` whitespace-separated numbers from a text file, as float64 (or int64)."""
    label = f" ({what})" if what else ""
    try:
        with open(path, "r", encoding="ascii") as f:
            text = f.read()
    except FileNotFoundError:
        raise NetError(f"missing file '{path}'{label}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise NetError(f"cannot read '{path}'{label}: {e}") from None
    tokens = text.split()
    if len(tokens) != count:
        raise NetError(f"malformed file '{path}'{label}: expected {count} numbers, found {len(tokens)}")
    try:
        values = np.array([int(t) if integer else float(t) for t in tokens])
    except ValueError as e:
        raise NetError(f"malformed file '{path}'{label}: {e}") from None
    if not integer and not np.all(np.isfinite(values)):
        raise NetError(f"malformed file '{path}'{label}: non-finite number")
    return values


def read_index_list(path: str) -> np.ndarray:
    """One integer per line."""
    try:
        with open(path, "r", encoding="ascii") as f:
            tokens = f.read().split()
    except OSError as e:
        raise NetError(f"cannot read index list '{path}': {e.strerror or e}") from None
    try:
        return np.array([int(t) for t in tokens], dtype=np.int64)
    except ValueError as e:
        raise NetError(f"malformed index list '{path}': {e}") from None


def read_missing_list(path: str) -> np.ndarray:
    """First line a count, then the indices."""
    values = read_index_list(path)
    if len(values) == 0 or values[0] != len(values) - 1:
        raise NetError(f"malformed missing list '{path}': first number must be the count of the rest")
    return values[1:]
