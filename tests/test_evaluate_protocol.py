"""tools/evaluate.py --protocol rhd and --root palm (issue 14 items 1-3): ColorHandPose3D's convention (one hand per
evaluation image, the one with more mask pixels, a tie to the right hand; visible keypoints; the palm-centre root
0.5 (J0 + J12)), the converter's mask pixel counts (text and packed format 3), and older layouts refused with one
line.

The release is made here: evaluation images whose dominant hand is known by construction (the mask rectangles'
areas), converted by the converter, evaluated by a net that feeds the ground truth through memo steps 13-19 with
a wrong depth scale (so the errors are not zero); the expected numbers are computed below with NumPy from that
net's blobs, the selection from the areas written here (not from the converter's counts)."""

import json
import os
import shutil
import sys

import cv2
import h5py
import numpy as np
import pytest
import torch

from conftest import ROOT
from layers.hand import metrics
from layers.hand.rhd import convert, memo, protocol, release
from netdef.errors import NetError

sys.path.insert(0, os.path.join(ROOT, "tools"))
import evaluate  # noqa: E402

from nets.net import Net  # noqa: E402
from nets.weights import load_weights, save_weights  # noqa: E402
from test_evaluate import NET, write_net  # noqa: E402

K = np.array([[283.1, 0.0, 160.0], [0.0, 283.1, 160.0], [0.0, 0.0, 1.0]])
SIZE = 320
LEFT, RIGHT = (2, 5, 9, 17), (18, 23, 30, 33)

# Each evaluation image: per hand (left, right) the inclusive mask rectangle (x0, x1, y0, y1) and the keypoints'
# u, v box; the mask area decides the dominant hand.
EVAL = [
    # 0: left 40x40 = 1600 px > right 40x36 = 1440 px: the left hand (idx 0)
    (((40, 79, 40, 79), 0), ((200, 239, 200, 235), 0)),
    # 1: left 36x40 = 1440 < right 44x40 = 1760: the right hand (idx 3)
    (((40, 75, 200, 239), 0), ((180, 223, 60, 99), 0)),
    # 2: a tie, 40x40 each: the right hand (idx 5), as ColorHandPose3D's tf.greater(left, right) gives
    (((60, 99, 60, 99), 0), ((200, 239, 180, 219), 0)),
    # 3: left 48x48 dominant but a keypoint off the image (unusable); right 40x40 usable: the image is left out
    (((0, 47, 100, 147), -6), ((200, 239, 100, 139), 0)),
    # 4: mask PNG corrupt: no counts, both hands unusable
    (((40, 79, 40, 79), 0), ((200, 239, 200, 239), 0)),
]
AREAS = [(1600, 1440), (1440, 1760), (1600, 1600), (48 * 48, 1600), None]
DOMINANT = [0, 3, 5]                  # the samples the rhd protocol evaluates
USABLE = [0, 1, 2, 3, 4, 5, 7]        # the index list
ZR_SCALE = 1.2


def _hand(rng, rect, shift, z=0.5):
    """21 keypoints spanning the mask rectangle (points 0 and 1 on its corners), lifted to 3D through K; shift
    moves point 1's u (a negative u: off the image)."""
    x0, x1, y0, y1 = rect
    uv = np.column_stack([rng.uniform(x0, x1, 21), rng.uniform(y0, y1, 21)])
    uv[0], uv[1] = (x0 + 0.5, y0 + 0.5), (x1 - 0.5, y1 - 0.5)
    if shift:
        uv[2] = (shift, y0 + 3)
    zs = rng.uniform(z - 0.04, z + 0.04, 21)
    xyz = np.column_stack([(uv[:, 0] - K[0, 2]) * zs / K[0, 0], (uv[:, 1] - K[1, 2]) * zs / K[1, 1], zs])
    return xyz, uv


def _write(path, image):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    assert cv2.imwrite(path, image)


def make_release(root):
    """RHD_published_v2 with EVAL as the evaluation split and one plain training image."""
    rng = np.random.default_rng(5)
    base = os.path.join(root, "RHD_published_v2")
    splits = {"training": [(((40, 79, 40, 79), 0), ((200, 239, 200, 239), 0))], "evaluation": EVAL}
    for split, images in splits.items():
        anno = {}
        for image_id, hands in enumerate(images):
            mask = np.zeros((SIZE, SIZE), np.uint8)
            mask[:, 150:153] = 1
            xyz, uv_vis = np.zeros((42, 3)), np.zeros((42, 3))
            for hand, (rect, shift) in enumerate(hands):
                xyz_h, uv = _hand(rng, rect, shift)
                vis = rng.integers(0, 2, 21)
                vis[[0, 12]] = [(0, 1), (0, 0)][hand]     # palm visible through J12 only / palm invisible
                xyz[21 * hand:21 * hand + 21], uv_vis[21 * hand:21 * hand + 21] = xyz_h, np.column_stack([uv, vis])
                x0, x1, y0, y1 = rect
                for j, x in enumerate(range(x0, x1 + 1)):
                    mask[y0:y1 + 1, x] = (LEFT if hand == 0 else RIGHT)[j % 4]
            anno[image_id] = {"xyz": xyz.astype(np.float32), "uv_vis": uv_vis.astype(np.float32), "K": K.copy()}
            _write(release.image_path(base, split, "color", image_id), rng.integers(0, 256, (SIZE, SIZE, 3), np.uint8))
            mask_path = release.image_path(base, split, "mask", image_id)
            if (split, image_id) == ("evaluation", 4):
                os.makedirs(os.path.dirname(mask_path), exist_ok=True)
                with open(mask_path, "wb") as f:
                    f.write(b"\x89PNG not really")
            else:
                _write(mask_path, mask)
        release.write_annotations(release.annotation_path(base, split), anno)
    return base


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """(folder, release, converted root, net paths {packed: path}, weights, direct blobs of all 7 samples)."""
    folder = tmp_path_factory.mktemp("protocol")
    base = make_release(str(folder))
    root = str(folder / "rhd")
    convert.convert(base, root, workers=1)
    nets = {packed: write_net(folder, root, 3, f"net_{packed}.prototxt",
                              NET.replace('split: "evaluation" }', f'split: "evaluation" packed: {str(packed).lower()} }}'))
            for packed in (False, True)}
    net = Net(nets[False], phase="TEST", device="cpu", workers=0)
    with torch.no_grad():
        net.params["zr_scale"][0].fill_(ZR_SCALE)
        net.params["heat_scale"][0].fill_(2.0)
    weights = str(folder / "w.caffemodel.h5")
    save_weights(net, weights)
    net.close()
    direct = Net(write_net(folder, root, len(USABLE), "net_all.prototxt"), phase="TEST", device="cpu",
                 workers=0).double()
    load_weights(direct, weights)
    with torch.no_grad():
        direct.forward()
    blobs = {k: v.detach().numpy().astype(np.float64) for k, v in direct.blobs.items()}
    direct.close()
    assert blobs["index"].reshape(-1).tolist() == USABLE
    return folder, base, root, nets, weights, blobs


def run(argv, capsys):
    code = evaluate.main(argv + ["--device", "cpu", "--workers", "0", "--dtype", "float64", "--debug-images", "0"])
    out, err = capsys.readouterr()
    return code, out, err.strip().splitlines()


# ---- the converter's counts ---------------------------------------------------------------------------------

def test_mask_pixel_counts_text_and_packed(data):
    _, _, root, _, _, _ = data
    for image_id, areas in enumerate(AREAS):
        path = memo.mask_pixels_path(root, "evaluation", image_id)
        if areas is None:                               # the mask was not read: no file, -1 in the pack
            assert not os.path.exists(path)
            continue
        with open(path) as f:
            assert f.read() == "%d %d\n" % areas
    with h5py.File(memo.packed_path(root, "evaluation"), "r") as f:
        assert f.attrs["format_version"] == 3
        assert f["mask_pixels"][:].tolist() == [list(a) if a else [-1, -1] for a in AREAS]
    assert memo.read_index_list(memo.index_list_path(root, "evaluation")).tolist() == USABLE


def test_a_layout_converted_before_the_counts_gets_them_on_a_rerun(data, tmp_path):
    _, base, root, _, _, _ = data
    out = str(tmp_path / "rhd")
    shutil.copytree(root, out)
    shutil.rmtree(os.path.dirname(memo.mask_pixels_path(out, "evaluation", 0)))
    with pytest.raises(NetError, match="run tools/prepare_rhd.py again"):
        protocol.read_mask_pixels(out, "evaluation", False, [0])
    summary = convert.convert(base, out, workers=1)
    assert summary["evaluation"]["converted"] == 5 and summary["training"]["converted"] == 0
    assert protocol.read_mask_pixels(out, "evaluation", False)[1].tolist() == list(AREAS[1])


# ---- the selection rule -------------------------------------------------------------------------------------

def test_dominant_hand_ties_go_to_the_right_hand():
    counts = np.array([[5, 3], [3, 5], [4, 4], [0, 0], [1, 0]])
    assert protocol.dominant_hand(counts).tolist() == [0, 1, 1, 1, 0]


@pytest.mark.parametrize("packed", [False, True])
def test_select_dominant(data, packed):
    _, _, root, _, _, _ = data
    keep, info = protocol.select_dominant(np.array(USABLE), root, "evaluation", packed, np.array(USABLE))
    assert np.array(USABLE)[keep].tolist() == DOMINANT
    assert info == {"images": 3, "non_dominant": 4, "dominant_unusable": 1}     # image 3 (image 4: no counts)


# ---- palm root, ColorHandPose3D's EPE and AUC on literal numbers ---------------------------------------------

def test_palm_centred_on_literal_points():
    gt = np.zeros((1, 21, 3))
    gt[0, 0], gt[0, 12], gt[0, 5] = (0, 0, 500), (0, 80, 520), (30, 60, 500)
    p, v = metrics.palm_centred(gt, np.array([[0] * 12 + [1] + [0] * 8]))
    assert p[0, 0].tolist() == [0, 40, 510] and p[0, 5].tolist() == [30, 60, 500] and p[0, 12].tolist() == [0, 80, 520]
    assert v[0].tolist() == [1] * 1 + [0] * 11 + [1] + [0] * 8        # palm visible: J12 is
    pred = gt.copy()
    pred[0, 5] += (3, 4, 0)            # keypoint 5 off by 5 mm
    pred[0, 12] += (0, 0, 10)          # the MCP off by 10 mm: the palm centre moves by 5 mm, so every keypoint
    pp, _ = metrics.palm_centred(pred)                  # but 12 is 5 mm off relative to it; 5 is |(3,4,-5)|
    e = metrics.errors_3d(pp, p).numpy()[0]
    assert e[0] == 0 and e[12] == pytest.approx(5.0) and e[5] == pytest.approx(np.sqrt(50)) and e[1] == pytest.approx(5)


def _get_measures(errors, vis, val_min, val_max, steps):
    """hand3d utils/general.py EvalUtil.get_measures, line for line (numpy's trapezoid for np.trapz)."""
    data = [list(errors[vis[:, k] != 0, k]) for k in range(errors.shape[1])]
    thresholds = np.linspace(val_min, val_max, steps)
    norm_factor = np.trapezoid(np.ones_like(thresholds), thresholds)
    epe_mean_all, epe_median_all, auc_all, pck_curve_all = [], [], [], []
    for part in data:
        if len(part) == 0:
            continue
        epe_mean_all.append(np.mean(part))
        epe_median_all.append(np.median(part))
        pck_curve = np.array([np.mean((np.array(part) <= t).astype("float")) for t in thresholds])
        pck_curve_all.append(pck_curve)
        auc_all.append(np.trapezoid(pck_curve, thresholds) / norm_factor)
    return (np.mean(epe_mean_all), np.mean(epe_median_all), np.mean(auc_all), np.mean(np.array(pck_curve_all), 0),
            thresholds)


def _calc_auc(x, y):
    return np.trapezoid(y, x) / np.trapezoid(np.ones_like(y), x)


def test_colorhandpose3d_measures_match_their_code():
    rng = np.random.default_rng(2)
    errors = rng.uniform(0, 70, (30, 21))
    vis = rng.integers(0, 2, (30, 21))
    vis[:, 4] = 0                                              # a keypoint never visible: left out
    mean, median, auc_0_50, curve, t = _get_measures(errors, vis, 0.0, 50.0, 20)
    assert metrics.epe_colorhandpose3d(errors, vis) == pytest.approx((mean, median), rel=1e-12)
    assert float(metrics.auc_colorhandpose3d(errors, vis, first_index=0)) == pytest.approx(auc_0_50, rel=1e-12)
    assert float(metrics.auc_colorhandpose3d(errors, vis)) == pytest.approx(_calc_auc(t[8:], curve[8:]), rel=1e-12)


# ---- the tool ------------------------------------------------------------------------------------------------

def _expected(blobs, rows, root):
    """The numbers from the net's blobs, with NumPy: rows selected, root-relative to the wrist or the palm centre,
    visible keypoints only."""
    p, g = blobs["pred_3d"].reshape(-1, 21, 3)[rows], blobs["joint_3d"].reshape(-1, 21, 3)[rows]
    v = blobs["vis"][rows] != 0
    p2, g2 = blobs["pred_2d_px"].reshape(-1, 21, 2)[rows], blobs["gt_2d_px"].reshape(-1, 21, 2)[rows]
    abs_err = np.linalg.norm(p - g, axis=-1)[v].mean()
    e2 = np.linalg.norm(p2 - g2, axis=-1)[v].mean()
    if root == "palm":
        p, g, v = p.copy(), g.copy(), v.copy()
        p[:, 0], g[:, 0] = (p[:, 0] + p[:, 12]) / 2, (g[:, 0] + g[:, 12]) / 2
        v[:, 0] = v[:, 0] | v[:, 12]
    e = np.linalg.norm((p - p[:, :1]) - (g - g[:, :1]), axis=-1)
    pck = np.array([(e[v] <= t).mean() for t in range(51)])
    mean, median, auc_0_50, curve, t = _get_measures(e, v, 0.0, 50.0, 20)
    return {"samples": len(rows), "epe_2d_px": e2, "epe_3d_abs_mm": abs_err, "epe_3d_rel_mm": e[v].mean(),
            "epe_3d_rel_chp3d_mean_mm": mean, "epe_3d_rel_chp3d_median_mm": median,
            "auc_20_50": np.trapezoid(pck[20:], np.arange(20, 51)) / 30, "auc_0_50": np.trapezoid(pck, np.arange(51)) / 50,
            "auc_chp3d": _calc_auc(t[8:], curve[8:]), "auc_chp3d_0_50": auc_0_50}, v


@pytest.mark.parametrize("packed, proto, root", [(False, "rhd", "palm"), (True, "rhd", "wrist"),
                                                 (False, "all", "palm"), (True, "all", "wrist")])
def test_evaluate_protocol_and_root(data, tmp_path, capsys, packed, proto, root):
    _, _, _, nets, weights, blobs = data
    out = tmp_path / "eval"
    code, text, err = run([nets[packed], "--weights", weights, "--out", str(out), "--protocol", proto,
                           "--root", root], capsys)
    assert code == 0, err
    m = json.loads((out / "metrics.json").read_text())["net"]
    rows = [USABLE.index(i) for i in (DOMINANT if proto == "rhd" else USABLE)]
    want, v = _expected(blobs, rows, root)
    if proto == "rhd" and root == "palm":     # the data exercises the palm's visibility rule both ways
        assert v[0, 0] and not blobs["vis"][rows[0], 0] and not v[1, 0]
    for key, value in want.items():
        assert m[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
    assert m["protocol"] == proto and m["root"] == root
    table = (out / "metrics.md").read_text()
    assert f"| samples | {len(rows)} |" in table and "| AUC 0-50 mm |" in table
    if proto == "rhd":
        assert m["non_dominant_left_out"] == 4 and m["dominant_unusable"] == 1
        assert "--protocol rhd: 3 images" in table and "a tie: the right hand" in table
        assert sum(m["root_depth_cases"].values()) == 3
    if root == "palm":
        assert "palm centre" in table


def test_protocol_all_is_todays_default(data, tmp_path, capsys):
    _, _, _, nets, weights, _ = data
    results = []
    for extra in ([], ["--protocol", "all", "--root", "wrist"]):
        out = tmp_path / f"eval{len(extra)}"
        assert run([nets[False], "--weights", weights, "--out", str(out)] + extra, capsys)[0] == 0
        results.append(json.loads((out / "metrics.json").read_text())["net"])
    assert results[0] == results[1] and results[0]["samples"] == len(USABLE)


def test_an_older_layout_is_refused_with_one_line(data, tmp_path, capsys):
    _, _, root, nets, weights, _ = data
    old = str(tmp_path / "rhd")
    shutil.copytree(root, old)
    with h5py.File(memo.packed_path(old, "evaluation"), "a") as f:      # a format-2 pack
        del f["mask_pixels"]
        f.attrs["format_version"] = 2
    shutil.rmtree(os.path.dirname(memo.mask_pixels_path(old, "evaluation", 0)))
    for packed, words in ((True, ["format_version 2", "no mask pixel counts", "run tools/prepare_rhd.py again"]),
                          (False, ["mask_pixels/0.txt", "run tools/prepare_rhd.py again"])):
        net = tmp_path / f"old_{packed}.prototxt"
        net.write_text(open(nets[packed]).read().replace(root, old))
        code, _, err = run([str(net), "--weights", weights, "--out", str(tmp_path / "e"), "--protocol", "rhd"], capsys)
        assert code == 2 and len(err) == 1 and err[0].startswith("error: "), err
        assert all(w in err[0] for w in words), err[0]
        assert not (tmp_path / "e").exists()                              # refused before the run
        # protocol all still reads the older layout
        assert run([str(net), "--weights", weights, "--out", str(tmp_path / "a")], capsys)[0] == 0
