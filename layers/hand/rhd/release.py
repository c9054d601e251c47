"""The official RHD release format (SPEC section 2): what the synthetic generator writes and the converter reads.

    RHD_published_v2/{training,evaluation}/{color,mask,depth}/%05d.png   320x320
    RHD_published_v2/{training,evaluation}/anno_{training,evaluation}.pickle
        {image_id: {'xyz': (42, 3) metres, 'uv_vis': (42, 3) u, v, visible, 'K': (3, 3)}}
Keypoints 0-20 left hand, 21-41 right hand. Mask labels: 0 background, 1 person, 2-17 left hand,
18-33 right hand. Depth PNG: depth_m = (R * 256 + G) / 65535 * 5.0 (R high byte, G low byte; OpenCV is BGR).
The pickles are read with SafeUnpickler: only the numpy globals an array needs are resolved, so a crafted file
(a __reduce__ calling os.system, say) is refused with one line and runs nothing.
"""

from __future__ import annotations

import os
import pickle

import cv2
import numpy as np

from netdef.errors import NetError

IMAGE_SIZE = 320
DEPTH_MAX_M = 5.0
LEFT_LABELS = range(2, 18)
RIGHT_LABELS = range(18, 34)
PALM_LABEL = {0: 17, 1: 33}   # hand 0 left, 1 right (the last label of each hand's range)


def image_path(release_root: str, split: str, kind: str, image_id: int) -> str:
    """kind: color, mask or depth."""
    return os.path.join(release_root, split, kind, "%05d.png" % image_id)


def annotation_path(release_root: str, split: str) -> str:
    return os.path.join(release_root, split, f"anno_{split}.pickle")


def hand_mask(mask: np.ndarray, hand: int) -> np.ndarray:
    """Boolean mask of one hand's pixels (hand 0 left, 1 right)."""
    lo, hi = (2, 17) if hand == 0 else (18, 33)
    return (mask >= lo) & (mask <= hi)


def encode_depth(depth_m: np.ndarray) -> np.ndarray:
    """Metres -> BGR uint8 image with R = high byte, G = low byte of round(depth / 5 * 65535)."""
    q = np.clip(np.round(np.asarray(depth_m, np.float64) / DEPTH_MAX_M * 65535.0), 0, 65535).astype(np.uint16)
    out = np.zeros(q.shape + (3,), np.uint8)
    out[..., 2] = q >> 8
    out[..., 1] = q & 0xFF
    return out


def decode_depth(depth_bgr: np.ndarray) -> np.ndarray:
    """BGR uint8 image (as cv2.imread gives) -> metres."""
    r = depth_bgr[..., 2].astype(np.float64)
    g = depth_bgr[..., 1].astype(np.float64)
    return (r * 256.0 + g) / 65535.0 * DEPTH_MAX_M


def write_annotations(path: str, annotations: dict) -> None:
    from layers.hand.rhd.memo import atomic_write_bytes
    atomic_write_bytes(path, pickle.dumps(annotations, protocol=pickle.HIGHEST_PROTOCOL))


# The globals a pickle of {int: {str: numpy array}} asks for, and nothing else: Python 3 pickles (any protocol),
# numpy 1 or 2 module names, and Python 2 pickles (read with encoding latin1, as numpy documents for them).
SAFE_GLOBALS = frozenset({
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),   # protocols 0-4
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),               # numpy scalars
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),           # protocol 5
    ("_codecs", "encode"),                       # bytes in a protocol 2 pickle written by Python 3
})


class RefusedGlobal(pickle.UnpicklingError):
    """A pickle asked for a global outside SAFE_GLOBALS (nothing was called)."""

    def __init__(self, module: str, name: str):
        super().__init__(f"{module}.{name}")
        self.module, self.name = module, name


class SafeUnpickler(pickle.Unpickler):
    """pickle.Unpickler that resolves only SAFE_GLOBALS: numpy arrays, dtypes and scalars. Any other global
    (os.system, builtins.eval, a class with a __reduce__) raises RefusedGlobal before anything is called, so a
    crafted file runs nothing. numpy.core.* names (numpy 1 pickles) resolve to numpy._core.* under numpy 2."""

    def find_class(self, module, name):
        if (module, name) not in SAFE_GLOBALS:
            raise RefusedGlobal(module, name)
        if module.startswith("numpy.core.") and hasattr(np, "_core"):
            module = "numpy._core." + module[len("numpy.core."):]     # no numpy.core deprecation warning
        return super().find_class(module, name)


def safe_load(f) -> object:
    """Unpickle an open binary file with SafeUnpickler (encoding latin1: Python 2 pickles of numpy arrays)."""
    return SafeUnpickler(f, encoding="latin1").load()


def read_annotations(path: str) -> dict:
    """The annotation pickle, read with SafeUnpickler: NetError naming the path when it is missing, corrupt,
    asks for a global that an RHD annotation file never needs (nothing of it runs), or is malformed."""
    try:
        with open(path, "rb") as f:
            anno = safe_load(f)
    except FileNotFoundError:
        raise NetError(f"missing annotation file '{path}'") from None
    except RefusedGlobal as e:
        raise NetError(f"refused annotation file '{path}': it asks for the global '{e.module}.{e.name}', which an "
                       f"RHD annotation file never needs (only numpy arrays, dtypes and scalars are allowed); "
                       f"nothing of it was run") from None
    except Exception as e:   # unpickling garbage can raise nearly anything
        raise NetError(f"corrupt annotation file '{path}': {type(e).__name__}: {e}") from None
    if not isinstance(anno, dict):
        raise NetError(f"corrupt annotation file '{path}': expected a dict of samples")
    for image_id, a in anno.items():
        try:
            ok = (np.shape(a["xyz"]) == (42, 3) and np.shape(a["uv_vis"]) == (42, 3) and np.shape(a["K"]) == (3, 3))
        except (TypeError, KeyError, IndexError):
            ok = False
        if not ok:
            raise NetError(f"malformed annotation for image {image_id} in '{path}': need xyz (42,3), "
                           f"uv_vis (42,3) and K (3,3)")
    return anno


def read_image(path: str, what: str = "image", flags: int = cv2.IMREAD_COLOR) -> np.ndarray:
    """cv2.imread that names the path instead of returning None."""
    if not os.path.isfile(path):
        raise NetError(f"missing {what} '{path}'")
    img = cv2.imread(path, flags)
    if img is None:
        raise NetError(f"unreadable or corrupt {what} '{path}'")
    return img
