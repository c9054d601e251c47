"""Which evaluated samples count (tools/evaluate.py --protocol): every usable hand, or RHD's literature protocol.

  all   every sample of the net's index list: every usable hand of the split (both hands of an image count).
  rhd   the convention of ColorHandPose3D (Zimmermann & Brox 2017) that the papers quoting RHD numbers follow:
        one hand per evaluation image, the dominant one, i.e. the hand with more mask pixels. Followed from
        lmb-freiburg/hand3d, data/BinaryDbReader.py: num_px_left_hand counts the labels 2..17 (1 < m < 18),
        num_px_right_hand the labels > 17 (RHD has 18..33), and the left hand is taken when
        tf.greater(num_px_left_hand, num_px_right_hand), else the right hand: a TIE GOES TO THE RIGHT HAND
        (dominant_hand below). The counts come from the converter (mask_pixels/<i>.txt, or the packed
        mask_pixels dataset of format 3); the visible-keypoint averaging and the palm-centre root are
        evaluation.compute_metrics's (visibility blob, root="palm").

Our evaluation needs a usable sample (a crop): an image whose dominant hand is unusable (off the image, too
small; the converter's reasons) is not evaluated, and counted (dominant_unusable), where ColorHandPose3D,
which runs on the whole image, evaluates all 2728 images.
"""

from __future__ import annotations

import os

import numpy as np

from layers.hand.rhd import memo
from layers.hand.rhd.packed import packed_file
from netdef.errors import NetError

PROTOCOLS = ("all", "rhd")
RERUN = "run tools/prepare_rhd.py again (it adds the mask pixel counts the rhd protocol needs)"

__all__ = ["PROTOCOLS", "dominant_hand", "read_mask_pixels", "select_dominant"]


def dominant_hand(counts) -> np.ndarray:
    """(N, 2) left, right mask pixel counts -> (N,) 0 (left) where left > right, else 1 (right, ties included)."""
    c = np.asarray(counts).reshape(-1, 2)
    return np.where(c[:, 0] > c[:, 1], 0, 1).astype(np.int64)


def _read_text_counts(root: str, split: str, image_id: int) -> np.ndarray:
    path = memo.mask_pixels_path(root, split, image_id)
    if not os.path.exists(path):
        raise NetError(f"missing '{path}' (mask pixel counts of image {image_id}): the memo layout was converted "
                       f"before they were kept; {RERUN}")
    return memo.read_numbers(path, 2, f"image {image_id}", integer=True)


def read_mask_pixels(root: str, split: str, packed: bool, image_ids=None) -> dict[int, np.ndarray]:
    """{image id: (left, right) mask pixel counts} of the given images (default: every image the converter
    counted). packed: from packed.h5 (format 3; an older pack is refused with one line saying to re-run
    tools/prepare_rhd.py), else from mask_pixels/<i>.txt. NetError for an asked image without counts."""
    if packed:
        path = memo.packed_path(root, split)
        table = packed_file(path).mask_pixels()
        if image_ids is None:
            image_ids = np.nonzero(table[:, 0] >= 0)[0]
        out = {}
        for i in image_ids:
            i = int(i)
            if not 0 <= i < len(table) or table[i, 0] < 0:
                raise NetError(f"'{path}' has no mask pixel counts for image {i} (its mask was not read)")
            out[i] = table[i]
        return out
    if image_ids is None:
        folder = os.path.dirname(memo.mask_pixels_path(root, split, 0))
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            raise NetError(f"missing folder '{folder}' (mask pixel counts per image): {RERUN}") from None
        image_ids = sorted(int(n[:-4]) for n in names if n.endswith(".txt") and n[:-4].isdigit())
    return {int(i): _read_text_counts(root, split, int(i)) for i in image_ids}


def select_dominant(index, root: str, split: str, packed: bool, index_list=None) -> tuple[np.ndarray, dict]:
    """The rhd protocol's rows: keep[r] is true when sample index[r] (idx = 2 * image + hand) is its image's
    dominant hand. Returns (keep (N,) bool, info) with info:
      images               rows kept (one per image: the index list holds each sample once)
      non_dominant         rows left out: the other hand of an image
      dominant_unusable    images the converter counted whose dominant hand is not in index_list (it is
                           unusable), so not evaluated; None when index_list is not given."""
    index = np.asarray(index, np.int64).reshape(-1)
    images = index // 2
    counts = read_mask_pixels(root, split, packed, np.unique(images))
    dominant = dominant_hand(np.stack([counts[int(i)] for i in images])) if len(index) else np.zeros(0, np.int64)
    keep = (index % 2) == dominant
    info = {"images": int(keep.sum()), "non_dominant": int((~keep).sum()), "dominant_unusable": None}
    if index_list is not None:
        every = read_mask_pixels(root, split, packed)
        ids = np.array(sorted(every), np.int64)
        if len(ids):
            dom = 2 * ids + dominant_hand(np.stack([every[int(i)] for i in ids]))
            info["dominant_unusable"] = int((~np.isin(dom, np.asarray(index_list, np.int64))).sum())
        else:
            info["dominant_unusable"] = 0
    return keep, info
