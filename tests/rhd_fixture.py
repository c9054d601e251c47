"""A tiny memo layout with random values, in both forms (text files and packed.h5), for reader tests.

    truth = write_memo(root, num_images=4, unusable=(3, 6))

writes ROOT/<split>/all_hand/... with memo.py's writers and ROOT/<split>/all_hand/packed.h5 per
memo.PACKED_FORMAT (written here with h5py, independently of the converter). Unusable samples have no
per-sample files, zero rows and usable = 0 in packed.h5, are left out of the index list and listed in
missing_all_new.txt. Returns the values as the text holds them (parsed back with float()/int()), per sample:
truth["crop"][idx] (H x W x 3 BGR uint8), "bbox" (4,), "camera_k" (9,) by image, "crop_gt_2d" (21, 2),
"gt_3d" (21, 3), plus "avg_bone" (20,), "usable", "index_list", "missing".
"""

from __future__ import annotations

import os

import cv2
import h5py
import numpy as np

from layers.hand.rhd import memo


def _parsed(text: str, shape) -> np.ndarray:
    return np.array([float(t) for t in text.split()]).reshape(shape)


def write_memo(root: str, num_images: int = 4, unusable=(3, 6), split: str = "training", seed: int = 0,
               crop_sizes=None, packed: bool = True) -> dict:
    """crop_sizes: one side length per sample (default random 24..80)."""
    rng = np.random.default_rng(seed)
    n = 2 * num_images
    truth = {"crop": {}, "png": {}, "bbox": {}, "crop_gt_2d": {}, "gt_3d": {}, "camera_k": {},
             "usable": np.ones(n, bool), "missing": sorted(unusable)}
    truth["usable"][list(unusable)] = False

    for image_id in range(num_images):
        k = np.array([[rng.uniform(200, 400), 0, rng.uniform(140, 180)],
                      [0, rng.uniform(200, 400), rng.uniform(140, 180)], [0, 0, 1]])
        text = memo.format_rows(k, "%12.6f")
        memo.atomic_write_bytes(memo.camera_k_path(root, split, image_id), text.encode())
        truth["camera_k"][image_id] = _parsed(text, 9)

    for idx in range(n):
        if idx in unusable:
            continue
        size = int(crop_sizes[idx]) if crop_sizes is not None else int(rng.integers(24, 81))
        img = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        png = cv2.imencode(".png", img)[1].tobytes()
        memo.atomic_write_bytes(memo.sample_path(root, split, "crop_image", idx), png)
        truth["crop"][idx], truth["png"][idx] = img, png

        x1, y1 = (int(v) for v in rng.integers(0, 240, 2))
        bbox = np.array([x1, y1, x1 + size - 1, y1 + size - 1])
        for field, v in zip(memo.BBOX_FIELDS, bbox):
            memo.atomic_write_bytes(memo.sample_path(root, split, field, idx), memo.format_int(v).encode())
        truth["bbox"][idx] = bbox
        memo.atomic_write_bytes(memo.sample_path(root, split, "image_index", idx),
                                memo.format_int(idx // 2).encode())
        memo.atomic_write_bytes(memo.sample_path(root, split, "is_left_hand_or_not", idx),
                                memo.format_int(int(idx % 2 == 0)).encode())

        values = {"crop_gt_2d": rng.uniform(0, 1, (21, 2)),
                  "gt_3d": rng.uniform(-80, 80, (21, 3)) + [0, 0, 600],
                  "gt_2d_in_raw": rng.uniform(0, 320, (21, 2)),
                  "gt_vis": rng.integers(0, 2, (21, 1))}
        for field, v in values.items():
            text = memo.format_rows(v, memo.ARRAY_FORMATS[field])
            memo.atomic_write_bytes(memo.sample_path(root, split, field, idx), text.encode())
            truth.setdefault(field, {})[idx] = _parsed(text, memo.ARRAY_FIELDS[field])

    index_list = [i for i in range(n) if truth["usable"][i]]
    memo.atomic_write_bytes(memo.index_list_path(root, split), "".join(map(memo.format_int, index_list)).encode())
    missing = [len(unusable)] + sorted(unusable)
    memo.atomic_write_bytes(memo.missing_list_path(root, split), "".join(map(memo.format_int, missing)).encode())
    truth["index_list"] = np.array(index_list)

    bones = rng.uniform(20, 90, 20)
    text = memo.format_rows(bones, "%12.6f")
    memo.atomic_write_bytes(memo.avg_bone_path(root), text.encode())
    truth["avg_bone"] = _parsed(text, 20)

    if packed:
        write_packed(memo.packed_path(root, split), truth, split, num_images)
    return truth


def write_packed(path: str, truth: dict, split: str, num_images: int, version: int = 2) -> None:
    """memo.PACKED_FORMAT from the parsed text values; temp file, then rename (as the converter does, so a
    reader holding the old file open keeps a consistent view). version 1: the older format, crops as PNG
    bytes (truth["png"]); 2: crops as pixels (truth["crop"])."""
    n = 2 * num_images
    crops = np.empty(n, dtype=object)
    if version == 1:
        crops[:] = [np.frombuffer(truth["png"].get(i, b""), np.uint8) for i in range(n)]
    else:
        crops[:] = [truth["crop"][i].reshape(-1) if i in truth["crop"] else np.zeros(0, np.uint8) for i in range(n)]

    def per_sample(field, shape, dtype):
        out = np.zeros((n,) + shape, dtype)
        for i, v in truth[field].items():
            out[i] = np.reshape(v, shape)
        return out

    tmp = path + ".tmp"
    with h5py.File(tmp, "w") as f:
        if version == 1:
            f.create_dataset("crop_image", data=crops, dtype=h5py.vlen_dtype(np.uint8))
        else:
            f.create_dataset("crop_pixels", data=crops, dtype=h5py.vlen_dtype(np.uint8))
            f.create_dataset("crop_shape", data=np.array([truth["crop"][i].shape[:2] if i in truth["crop"] else (0, 0)
                                                          for i in range(n)], np.int32))
        f.create_dataset("bbox", data=per_sample("bbox", (4,), np.int32))
        f.create_dataset("image_index", data=np.where(truth["usable"], np.arange(n) // 2, 0).astype(np.int32))
        f.create_dataset("is_left", data=(truth["usable"] & (np.arange(n) % 2 == 0)).astype(np.uint8))
        f.create_dataset("crop_gt_2d", data=per_sample("crop_gt_2d", (21, 2), np.float32))
        f.create_dataset("gt_3d", data=per_sample("gt_3d", (21, 3), np.float32))
        f.create_dataset("gt_2d_in_raw", data=per_sample("gt_2d_in_raw", (21, 2), np.float32))
        f.create_dataset("gt_vis", data=per_sample("gt_vis", (21,), np.uint8))
        f.create_dataset("usable", data=truth["usable"].astype(np.uint8))
        f.create_dataset("camera_k", data=np.array([truth["camera_k"][i].reshape(3, 3)
                                                    for i in range(num_images)], np.float32))
        f.create_dataset("index_list", data=truth["index_list"].astype(np.int32))
        f.create_dataset("avg_bone", data=truth["avg_bone"].astype(np.float32))
        f.attrs["split"] = split
        f.attrs["num_images"] = num_images
        f.attrs["format_version"] = version
    os.replace(tmp, path)
