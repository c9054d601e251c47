"""tools/prepare_rhd.py and layers/hand/rhd/convert.py: RHD release -> memo layout + packed HDF5 (SPEC 2-3).

The fixture is a hand-made release whose crop boxes are computed by hand below: a few 320x320 images with
rectangular hand masks, keypoints placed at chosen pixels and lifted to 3D through K, and one hand per
exclusion reason."""

import importlib.util
import json
import os
import pickle
import shutil
import subprocess
import sys

import cv2
import h5py
import numpy as np
import pytest

from layers.hand.rhd import convert, memo, release
from netdef.errors import NetError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
K = np.array([[283.1, 0.0, 160.0], [0.0, 283.1, 160.0], [0.0, 0.0, 1.0]])
SIZE = 320


# ---- the hand-made release ------------------------------------------------------------------------------------

def _hand(rng, u_range, v_range, z=0.5):
    """21 keypoints whose u, v boxes are exactly u_range x v_range (points 0 and 1 sit on the corners)."""
    uv = np.column_stack([rng.uniform(*u_range, 21), rng.uniform(*v_range, 21)])
    uv[0] = u_range[0], v_range[0]
    uv[1] = u_range[1], v_range[1]
    zs = rng.uniform(z - 0.05, z + 0.05, 21)
    xyz = np.column_stack([(uv[:, 0] - K[0, 2]) * zs / K[0, 0], (uv[:, 1] - K[1, 2]) * zs / K[1, 1], zs])
    return xyz, uv


def _paint(mask, x_range, y_range, labels):
    """Fill the inclusive rectangle with vertical stripes of the given labels (several parts of one hand)."""
    (x0, x1), (y0, y1) = x_range, y_range
    for j, x in enumerate(range(x0, x1 + 1)):
        mask[y0:y1 + 1, x] = labels[j % len(labels)]


LEFT, RIGHT = (2, 5, 9, 17), (18, 23, 30, 33)

# Each image: (left hand, right hand); a hand: (u_range, v_range, z, [(x_range, y_range)] mask rectangles).
# Expected boxes (by hand, see test_crop_boxes_computed_by_hand).
LAYOUT = {
    "training": [
        # 0: plain left hand; right hand with a stray blob that the 1.5x GT box clips away
        ((((105.0, 135.0), (64.0, 86.0), 0.5, [((100, 139), (60, 89))]),
          ((205.3, 225.3), (205.0, 235.0), 0.6, [((200, 229), (200, 239)), ((300, 309), (200, 209))]))),
        # 1: left hand in the top-left corner (crop leaves the image); right hand has a keypoint off the image
        ((((5.0, 35.0), (3.0, 25.0), 0.45, [((0, 39), (0, 29))]),
          ((-3.0, 30.0), (250.0, 280.0), 0.5, [((0, 30), (250, 280))]))),
        # 2: left hand with no mask pixels; right hand too small (10 x 10 px)
        ((((150.0, 180.0), (150.0, 180.0), 0.5, []),
          ((250.0, 262.0), (250.0, 262.0), 0.5, [((252, 261), (252, 261))]))),
        # 3: colour PNG missing (both hands unusable)
        ((((100.0, 130.0), (100.0, 130.0), 0.5, [((100, 130), (100, 130))]),
          ((200.0, 230.0), (200.0, 230.0), 0.5, [((200, 230), (200, 230))]))),
    ],
    "evaluation": [
        # 0: left mask far from its keypoints; right hand behind the camera
        ((((50.0, 80.0), (50.0, 80.0), 0.5, [((200, 240), (200, 240))]),
          ((150.0, 180.0), (150.0, 180.0), -0.5, [((150, 180), (150, 180))]))),
        # 1: two plain hands (the right one at the bottom-right border)
        ((((60.0, 100.0), (120.0, 150.0), 0.55, [((58, 101), (118, 152))]),
          ((280.0, 318.0), (285.0, 319.0), 0.5, [((280, 319), (283, 319))]))),
        # 2: mask PNG corrupt (both hands unusable)
        ((((60.0, 100.0), (120.0, 150.0), 0.55, [((58, 101), (118, 152))]),
          ((200.0, 230.0), (200.0, 230.0), 0.5, [((200, 230), (200, 230))]))),
    ],
}
USABLE = {"training": [0, 1, 2], "evaluation": [2, 3]}
REASONS = {
    "training": {"keypoint_off_image": 1, "empty_mask": 1, "too_small": 1, "unreadable_color": 2},
    "evaluation": {"mask_outside_gt_box": 1, "behind_camera": 1, "unreadable_mask": 2},
}
BOXES = {("training", 0): (95, 50, 144, 99),      # mask 40x30, centroid (119.5, 74.5), side 50
         ("training", 1): (191, 195, 240, 244),   # clipped to x 201..230 (GT u 205.3..225.3 x1.5), y 200..239
         ("training", 2): (-5, -10, 44, 39)}      # mask 40x30 at the corner, centroid (19.5, 14.5)


def make_release(root):
    """Write RHD_published_v2 under root; return {split: annotations dict}."""
    rng = np.random.default_rng(0)
    base = os.path.join(root, "RHD_published_v2")
    annotations = {}
    for split, images in LAYOUT.items():
        anno = {}
        for image_id, hands in enumerate(images):
            color = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
            mask = np.zeros((SIZE, SIZE), np.uint8)
            mask[:, 150:153] = 1                                # the person
            xyz, uv_vis = np.zeros((42, 3)), np.zeros((42, 3))
            for hand, (u_range, v_range, z, rects) in enumerate(hands):
                xyz_h, uv = _hand(rng, u_range, v_range, z)
                xyz[21 * hand:21 * hand + 21] = xyz_h
                uv_vis[21 * hand:21 * hand + 21] = np.column_stack([uv, rng.integers(0, 2, 21)])
                for x_range, y_range in rects:
                    _paint(mask, x_range, y_range, LEFT if hand == 0 else RIGHT)
            anno[image_id] = {"xyz": xyz.astype(np.float32), "uv_vis": uv_vis.astype(np.float32), "K": K.copy()}
            if (split, image_id) != ("training", 3):
                _mkdir_write(release.image_path(base, split, "color", image_id), color)
            mask_path = release.image_path(base, split, "mask", image_id)
            if (split, image_id) == ("evaluation", 2):
                os.makedirs(os.path.dirname(mask_path), exist_ok=True)
                with open(mask_path, "wb") as f:
                    f.write(b"\x89PNG not really")
            else:
                _mkdir_write(mask_path, mask)
        release.write_annotations(release.annotation_path(base, split), anno)
        annotations[split] = anno
    return base, annotations


def _mkdir_write(path, image):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    assert cv2.imwrite(path, image)


def tree_bytes(root):
    """{relative path: bytes} of every file under root."""
    out = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rhd")
    base, annotations = make_release(str(tmp))
    out = str(tmp / "out")
    summary = convert.convert(base, out, workers=1)
    return base, out, annotations, summary


def _usable_indices(split):
    return [2 * i + h for i, hands in enumerate(LAYOUT[split]) for h in (0, 1)
            if 2 * i + h in USABLE[split]]


def _read(out, split, field, idx, count, integer=False):
    return memo.read_numbers(memo.sample_path(out, split, field, idx), count, integer=integer)


# ---- the crop box and the crop -------------------------------------------------------------------------------

def test_crop_boxes_computed_by_hand(converted):
    _, out, _, _ = converted
    for (split, idx), box in BOXES.items():
        got = tuple(int(_read(out, split, f, idx, 1, True)[0]) for f in memo.BBOX_FIELDS)
        assert got == box, (split, idx)
        png = cv2.imread(memo.sample_path(out, split, "crop_image", idx), cv2.IMREAD_UNCHANGED)
        assert png.shape == (box[3] - box[1] + 1, box[2] - box[0] + 1, 3)   # native size, square


def test_crop_pixels_are_the_source_region_and_128_outside(converted):
    base, out, _, _ = converted
    for split, idx in [("training", 0), ("training", 1), ("training", 2), ("evaluation", 3)]:
        x1, y1, x2, y2 = (int(_read(out, split, f, idx, 1, True)[0]) for f in memo.BBOX_FIELDS)
        source = cv2.imread(release.image_path(base, split, "color", idx // 2))
        crop = cv2.imread(memo.sample_path(out, split, "crop_image", idx))
        for r in range(crop.shape[0]):           # pixel by pixel, unlike the converter's slicing
            y = y1 + r
            for c in range(0, crop.shape[1], 7):
                x = x1 + c
                inside = 0 <= x < SIZE and 0 <= y < SIZE
                expected = source[y, x] if inside else [128, 128, 128]
                assert np.array_equal(crop[r, c], expected), (split, idx, r, c)
    corner = cv2.imread(memo.sample_path(out, "training", "crop_image", 2))
    assert (corner[:10] == 128).all() and (corner[:, :5] == 128).all() and not (corner[10:, 5:] == 128).all()


def test_crop_box_randomised_invariants():
    rng = np.random.default_rng(1)
    for _ in range(40):
        mask = np.zeros((SIZE, SIZE), bool)
        x0, y0 = rng.integers(0, SIZE - 90, 2)
        w, h = rng.integers(convert.MIN_BOX_SIDE + 4, 90, 2)
        mask[y0:y0 + h, x0:x0 + w] = rng.random((h, w)) < 0.9
        mask[y0, x0] = mask[y0 + h - 1, x0 + w - 1] = True
        uv = np.array([[x0 + 0.2 * w, y0 + 0.2 * h], [x0 + 0.8 * w, y0 + 0.8 * h]])   # 1.5x -> 0.05..0.95
        x1, y1, x2, y2 = convert.crop_box(mask, uv)
        ys, xs = np.nonzero(mask)
        gx1, gx2 = np.ceil(x0 + 0.05 * w), np.floor(x0 + 0.95 * w)
        gy1, gy2 = np.ceil(y0 + 0.05 * h), np.floor(y0 + 0.95 * h)
        keep = (xs >= gx1) & (xs <= gx2) & (ys >= gy1) & (ys <= gy2)
        longer = max(gx2 - gx1 + 1, gy2 - gy1 + 1)
        assert x2 - x1 == y2 - y1 == np.ceil(1.25 * longer) - 1
        assert abs((x1 + x2) / 2 - xs[keep].mean()) <= 0.5 and abs((y1 + y2) / 2 - ys[keep].mean()) <= 0.5


# ---- per-sample values --------------------------------------------------------------------------------------

def test_sample_values_match_the_annotations(converted):
    _, out, annotations, _ = converted
    for split in memo.SPLITS:
        for idx in USABLE[split]:
            i, hand = divmod(idx, 2)
            a = annotations[split][i]
            xyz = np.asarray(a["xyz"], np.float64)[21 * hand:21 * hand + 21]
            u = K[0, 0] * xyz[:, 0] / xyz[:, 2] + K[0, 2]
            v = K[1, 1] * xyz[:, 1] / xyz[:, 2] + K[1, 2]
            np.testing.assert_allclose(u, a["uv_vis"][21 * hand:21 * hand + 21, 0], atol=1e-3)  # float32 pickle
            x1, y1, x2, y2 = (int(_read(out, split, f, idx, 1, True)[0]) for f in memo.BBOX_FIELDS)
            raw = _read(out, split, "gt_2d_in_raw", idx, 42).reshape(21, 2)
            np.testing.assert_allclose(raw, np.column_stack([u, v]), rtol=0, atol=0.5e-6 + 1e-9)
            crop = _read(out, split, "crop_gt_2d", idx, 42).reshape(21, 2)
            # %12.6f rounds u' by <= 5e-7, so back in pixels the error is <= 5e-7 * width (+ float noise)
            tol = 0.5e-6 * (x2 - x1 + 1) + 1e-9
            np.testing.assert_allclose(crop[:, 0] * (x2 - x1 + 1) + x1, u, rtol=0, atol=tol)
            np.testing.assert_allclose(crop[:, 1] * (y2 - y1 + 1) + y1, v, rtol=0, atol=tol)
            assert tol < 1e-4
            gt3d = _read(out, split, "gt_3d", idx, 63).reshape(21, 3)
            np.testing.assert_allclose(gt3d, xyz * 1000.0, rtol=0, atol=0.5e-6 + 1e-9)
            assert 400 < gt3d[0, 2] < 700                                   # millimetres
            vis = _read(out, split, "gt_vis", idx, 21, True)
            assert np.array_equal(vis, a["uv_vis"][21 * hand:21 * hand + 21, 2].astype(int))
            assert _read(out, split, "image_index", idx, 1, True)[0] == i
            assert _read(out, split, "is_left_hand_or_not", idx, 1, True)[0] == (1 if hand == 0 else 0)


def test_text_formats(converted):
    _, out, _, _ = converted
    with open(memo.sample_path(out, "training", "crop_gt_2d", 0)) as f:
        lines = f.read().splitlines()
    assert len(lines) == 21 and all(len(line) == 25 and line[12] == " " for line in lines)
    with open(memo.sample_path(out, "training", "bbx_x1", 2)) as f:
        assert f.read() == "-5\n"
    with open(memo.camera_k_path(out, "training", 0)) as f:
        assert f.read() == "283.100000 0.000000 160.000000\n0.000000 283.100000 160.000000\n" \
                           "0.000000 0.000000 1.000000\n"


def test_camera_k_written_for_every_image(converted):
    _, out, _, _ = converted
    for split in memo.SPLITS:
        for i in range(len(LAYOUT[split])):
            k = memo.read_numbers(memo.camera_k_path(out, split, i), 9).reshape(3, 3)
            np.testing.assert_allclose(k, K, atol=5e-7)


# ---- lists, reasons, avg_bone -------------------------------------------------------------------------------

def test_index_and_missing_lists_partition_the_samples(converted):
    _, out, _, summary = converted
    for split in memo.SPLITS:
        n = 2 * len(LAYOUT[split])
        index = memo.read_index_list(memo.index_list_path(out, split)).tolist()
        missing = {w: memo.read_missing_list(memo.missing_list_path(out, split, w)).tolist()
                   for w in ("all", "left", "right")}
        assert index == USABLE[split]
        assert sorted(index + missing["all"]) == list(range(n))
        # left (right) hands only: every other hand excluded, and the unusable ones of this hand
        assert missing["left"] == sorted(set(missing["all"]) | set(range(1, n, 2)))
        assert missing["right"] == sorted(set(missing["all"]) | set(range(0, n, 2)))
        for which in ("all", "left", "right"):     # whatever a list leaves is usable and has its files
            left_in = sorted(set(range(n)) - set(missing[which]))
            assert set(left_in) <= set(index)
            assert all(os.path.exists(memo.sample_path(out, split, "crop_image", i)) for i in left_in)
        assert summary[split]["usable"] == len(index)
        # unusable samples get no per-sample files
        for idx in missing["all"]:
            assert not any(os.path.exists(memo.sample_path(out, split, f, idx)) for f in convert.SAMPLE_FIELDS)


def test_unusable_reasons_counted_and_named(converted):
    base, _, _, summary = converted
    for split in memo.SPLITS:
        assert dict(summary[split]["reasons"]) == REASONS[split]
    text = convert.format_summary(summary)
    assert "excluded: keypoint_off_image" in text and "excluded: too_small" in text
    assert release.image_path(base, "training", "color", 3) in text          # the missing file, by name
    assert release.image_path(base, "evaluation", "mask", 2) in text         # the corrupt one
    row = next(line for line in text.splitlines() if line.startswith("excluded: unreadable_mask"))
    assert row.split()[-2:] == ["0", "2"]


def test_avg_bone_is_the_mean_over_usable_training_samples(converted):
    _, out, annotations, _ = converted
    lengths = []
    for idx in USABLE["training"]:
        i, hand = divmod(idx, 2)
        j = np.asarray(annotations["training"][i]["xyz"], np.float64)[21 * hand:21 * hand + 21] * 1000.0
        bones = []
        for finger in range(5):              # SPEC 1: tip-DIP, DIP-PIP, PIP-MCP, MCP-wrist
            b = 1 + 4 * finger
            bones += [np.linalg.norm(j[b] - j[b + 1]), np.linalg.norm(j[b + 1] - j[b + 2]),
                      np.linalg.norm(j[b + 2] - j[b + 3]), np.linalg.norm(j[b + 3] - j[0])]
        lengths.append(bones)
    avg = memo.read_numbers(memo.avg_bone_path(out), 20)
    np.testing.assert_allclose(avg, np.mean(lengths, axis=0), rtol=0, atol=3e-6)
    assert avg.min() > 0


# ---- the packed file -----------------------------------------------------------------------------------------

def test_packed_file_equals_the_text_files(converted):
    _, out, _, _ = converted
    avg = memo.read_numbers(memo.avg_bone_path(out), 20)
    for split in memo.SPLITS:
        num_images = len(LAYOUT[split])
        with h5py.File(memo.packed_path(out, split), "r") as f:
            assert f.attrs["split"] == split and f.attrs["num_images"] == num_images
            assert f.attrs["format_version"] == 3
            assert f["crop_pixels"].shape == (2 * num_images,) and f["gt_3d"].dtype == np.float32
            assert f["index_list"][:].tolist() == USABLE[split] and f["index_list"].dtype == np.int32
            assert np.array_equal(f["avg_bone"][:], avg.astype(np.float32))
            for i in range(num_images):
                k = memo.read_numbers(memo.camera_k_path(out, split, i), 9).reshape(3, 3)
                assert np.array_equal(f["camera_k"][i], k.astype(np.float32))
            for idx in range(2 * num_images):
                usable = idx in USABLE[split]
                assert f["usable"][idx] == usable
                if not usable:
                    assert len(f["crop_pixels"][idx]) == 0 and not f["crop_shape"][idx].any()
                    assert not f["gt_3d"][idx].any() and not f["bbox"][idx].any()
                    continue
                png = cv2.imread(memo.sample_path(out, split, "crop_image", idx), cv2.IMREAD_UNCHANGED)
                assert f["crop_shape"][idx].tolist() == list(png.shape[:2])
                assert np.array_equal(f["crop_pixels"][idx].reshape(png.shape), png)
                box = [int(_read(out, split, b, idx, 1, True)[0]) for b in memo.BBOX_FIELDS]
                assert f["bbox"][idx].tolist() == box
                assert f["image_index"][idx] == _read(out, split, "image_index", idx, 1, True)[0]
                assert f["is_left"][idx] == _read(out, split, "is_left_hand_or_not", idx, 1, True)[0]
                for field, (rows, cols) in memo.ARRAY_FIELDS.items():
                    text = _read(out, split, field, idx, rows * cols).reshape(rows, cols)
                    packed = f[field][idx].reshape(rows, cols)
                    assert np.array_equal(packed, text.astype(packed.dtype)), (split, idx, field)


# ---- resume and interruption --------------------------------------------------------------------------------

def test_resume_rebuilds_an_identical_tree(converted, tmp_path):
    base, reference_out, _, _ = converted
    reference = tree_bytes(reference_out)
    out = str(tmp_path / "out")
    shutil.copytree(reference_out, out)
    for path in [memo.sample_path(out, "training", "crop_image", 0), memo.sample_path(out, "training", "gt_3d", 2),
                 memo.sample_path(out, "evaluation", "bbx_y2", 3), memo.camera_k_path(out, "training", 1),
                 memo.packed_path(out, "evaluation"), memo.index_list_path(out, "training"),
                 memo.avg_bone_path(out), convert.state_path(out, "evaluation", 1)]:
        os.unlink(path)
    summary = convert.convert(base, out, workers=2)                       # through the process pool
    assert summary["training"]["converted"] == 3     # 0 and 1 lost files; 3 (missing colour) is retried
    assert summary["evaluation"]["converted"] == 2   # image 1 lost a file and its record; 2 (bad mask) retried
    assert tree_bytes(out) == reference


def test_interrupted_run_leaves_no_partial_file_and_finishes(converted, tmp_path, monkeypatch):
    base, reference_out, _, _ = converted
    out = str(tmp_path / "out")
    calls = []
    real = convert.hand_sample

    def interrupted(*args):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(convert, "hand_sample", interrupted)
    with pytest.raises(KeyboardInterrupt):
        convert.convert(base, out, workers=1)
    monkeypatch.setattr(convert, "hand_sample", real)
    state = tree_bytes(out)
    assert not any(os.path.basename(p).startswith(".tmp-") for p in state)
    assert not os.path.exists(memo.packed_path(out, "training"))
    stale = os.path.join(out, "training", "all_hand", "gt_3d", ".tmp-x1.txt")     # as a SIGKILL would leave
    with open(stale, "w") as f:
        f.write("half")
    convert.convert(base, out, workers=1)
    assert tree_bytes(out) == tree_bytes(reference_out)


def test_records_made_under_other_rules_are_redone(converted, tmp_path, monkeypatch):
    base, reference_out, _, _ = converted
    out = str(tmp_path / "out")
    shutil.copytree(reference_out, out)
    # training idx 1 keeps 29 x 40 = 1160 mask pixels inside its clipped box, the others 1200 or more
    monkeypatch.setattr(convert, "MIN_MASK_PIXELS", 1190)
    monkeypatch.setattr(convert, "RULES", convert.RULES[:5] + [1190] + convert.RULES[6:])
    summary = convert.convert(base, out, workers=1)
    assert summary["training"]["converted"] == 4 and summary["training"]["reasons"]["too_small"] == 2
    assert memo.read_index_list(memo.index_list_path(out, "training")).tolist() == [0, 2]
    assert not any(os.path.exists(memo.sample_path(out, "training", f, 1)) for f in convert.SAMPLE_FIELDS)
    monkeypatch.undo()
    convert.convert(base, out, workers=1)
    assert tree_bytes(out) == tree_bytes(reference_out)


def test_no_temp_files_after_a_run(converted):
    _, out, _, _ = converted
    names = [n for _, _, files in os.walk(out) for n in files]
    assert len(names) > 50 and not any(n.startswith(".tmp-") for n in names)


def test_state_records(converted):
    _, out, _, _ = converted
    with open(convert.state_path(out, "training", 1)) as f:
        record = json.load(f)
    assert record["usable"] == [True, False] and record["reasons"] == [None, "keypoint_off_image"]


# ---- bad input and the CLI -----------------------------------------------------------------------------------

def _load_cli():
    spec = importlib.util.spec_from_file_location("prepare_rhd", os.path.join(ROOT, "tools", "prepare_rhd.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rewrite_pickle(base, split, change):
    path = release.annotation_path(base, split)
    with open(path, "rb") as f:
        anno = pickle.load(f)
    change(anno)
    with open(path, "wb") as f:
        pickle.dump(anno, f)
    return path


@pytest.fixture
def release_copy(converted, tmp_path):
    base = str(tmp_path / "RHD_published_v2")
    shutil.copytree(converted[0], base)
    return base


def test_missing_and_corrupt_pickle_name_the_path(release_copy, tmp_path):
    path = release.annotation_path(release_copy, "evaluation")
    os.unlink(path)
    with pytest.raises(NetError, match="missing annotation file '.*anno_evaluation.pickle'"):
        convert.convert(release_copy, str(tmp_path / "out"))
    with open(path, "wb") as f:
        f.write(b"garbage")
    with pytest.raises(NetError, match="corrupt annotation file '.*anno_evaluation.pickle'"):
        convert.convert(release_copy, str(tmp_path / "out"))


@pytest.mark.parametrize("change, message", [
    (lambda a: a[1].__setitem__("xyz", np.zeros((21, 3))), "image 1 .*xyz \\(42,3\\)"),
    (lambda a: a[2]["xyz"].__setitem__((5, 0), np.nan), "image 2 .*non-finite"),
    (lambda a: a[0]["uv_vis"].__setitem__((3, 2), 0.5), "image 0 .*visibility"),
    (lambda a: a[1]["K"].__setitem__((0, 0), 0.0), "image 1 .*fx, fy > 0"),
    (lambda a: a.pop(1), "image ids must be 0..2, image 1 is missing"),
])
def test_malformed_entry_names_path_and_image(release_copy, tmp_path, change, message):
    _rewrite_pickle(release_copy, "training", change)
    with pytest.raises(NetError, match="anno_training.pickle") as e:
        convert.convert(release_copy, str(tmp_path / "out"))
    assert e.match(message)


def test_cli_errors_are_one_line_exit_2(release_copy, tmp_path, capsys):
    cli = _load_cli()
    _rewrite_pickle(release_copy, "training", lambda a: a[2]["K"].__setitem__((2, 2), 2.0))
    assert cli.main(["--rhd-root", release_copy, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: malformed annotation for image 2 in '")
    assert cli.main(["--rhd-root", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "RHD release folder" in capsys.readouterr().err
    assert cli.main(["--rhd-root", release_copy, "--out", str(tmp_path / "o2"), "--splits", "evaluation"]) == 2
    assert "convert the training split first" in capsys.readouterr().err


def test_cli_runs_as_a_script(converted, tmp_path):
    base, reference_out, _, _ = converted
    out = str(tmp_path / "out")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "prepare_rhd.py"), "--rhd-root", base,
                           "--out", out, "--workers", "2"], capture_output=True, text=True, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""                             # no progress bar when stderr is not a terminal
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["training", "evaluation"]
    assert next(line for line in lines if line.startswith("usable samples")).split()[-2:] == ["3", "2"]
    assert tree_bytes(out) == tree_bytes(reference_out)


# ---- end to end on the synthetic release --------------------------------------------------------------------

def test_synthetic_release_end_to_end(tmp_path):
    from layers.hand.rhd import packed, synthetic
    base = synthetic.make_tiny_release(str(tmp_path))
    out = str(tmp_path / "out")
    summary = convert.convert(base, out, workers=2)
    # the generator's scheduled bad hands: training 3 mostly outside, training 5 far and tiny, evaluation 3 outside
    assert dict(summary["training"]["reasons"]) == {"keypoint_off_image": 1, "too_small": 1}
    assert dict(summary["evaluation"]["reasons"]) == {"keypoint_off_image": 1}
    for split, num_images in (("training", 6), ("evaluation", 4)):
        anno = release.read_annotations(release.annotation_path(base, split))
        index = memo.read_index_list(memo.index_list_path(out, split))
        assert len(index) == 2 * num_images - sum(summary[split]["reasons"].values())
        reader = packed.PackedRHD(memo.packed_path(out, split))
        assert np.array_equal(reader.index_list(), index)
        bbox, crop_2d = reader.rows("bbox", index), reader.rows("crop_gt_2d", index)
        assert np.array_equal(reader.rows("gt_3d", index),
                              [_read(out, split, "gt_3d", i, 63).reshape(21, 3).astype(np.float32) for i in index])
        for row, idx in enumerate(index):
            i, hand = divmod(int(idx), 2)
            uv = np.asarray(anno[i]["uv_vis"], np.float64)[21 * hand:21 * hand + 21, :2]
            x1, y1, x2, y2 = bbox[row]
            back = crop_2d[row] * (x2 - x1 + 1, y2 - y1 + 1) + (x1, y1)
            np.testing.assert_allclose(back, uv, rtol=0, atol=1e-3)      # float32 storage of u' and uv_vis
            assert crop_2d[row].min() >= 0 and crop_2d[row].max() <= 1   # the whole hand is in its crop
        reader.close()
