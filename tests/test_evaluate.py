"""tools/evaluate.py and layers/hand/evaluation.py: weights are required (or --random-init), blobs are found from
the net (the shipped test nets need no names), --debug-images K draws K samples, and a split that no batch divides
is counted over exactly its samples (issue 11 items 2, issue 14 item 5).

The data is tests/rhd_fixture.py's memo layout: 10 evaluation images, 2 of 20 hands unusable, so 18 samples.
"""

import json
import os
import sys

import h5py
import numpy as np
import pytest
import torch

from conftest import ROOT, prototxt_for
from rhd_fixture import write_memo

sys.path.insert(0, os.path.join(ROOT, "tools"))
import evaluate  # noqa: E402

from layers.hand import evaluation  # noqa: E402
from layers.hand.reconstruct import ROOT_CLAMPED, ROOT_STATUS_NAMES  # noqa: E402
from nets.net import Net  # noqa: E402
from nets.weights import load_weights, save_weights  # noqa: E402

SYNTH_SMALL_TEST = os.path.join(ROOT, "prototxt", "rhd_synth_small_test.prototxt")

# Ground truth through memo steps 13-19 with two layers of weights: heat_scale (per-map scale, no effect on the
# SUM-normalised maps) and zr_scale (pred_zr = w * zr per joint, so w sets how the root depth's cases fall).
NET = """
name: "eval_test"
layer { name: "index" type: "ReadIndexFromFile" top: "index"
        read_index_from_file_param { index_file_path: "ROOT/evaluation/all_hand/all_evaluation_index.txt"
                                     batch_size: BATCH } }
layer { name: "image" type: "ReadImage" bottom: "index" top: "image" read_image_param { resize_size: 32 }
        rhd_data_param { root: "ROOT" split: "evaluation" } }
layer { name: "bbox" type: "ReadBBox" bottom: "index" top: "bbox" rhd_data_param { root: "ROOT" split: "evaluation" } }
layer { name: "intrinsics" type: "ReadCameraIntrinsics" bottom: "index" top: "intrinsics"
        rhd_data_param { root: "ROOT" split: "evaluation" } }
layer { name: "joint_2d" type: "ReadJoint2D" bottom: "index" top: "joint_2d"
        rhd_data_param { root: "ROOT" split: "evaluation" } }
layer { name: "joint_3d" type: "ReadJoint3D" bottom: "index" top: "joint_3d"
        rhd_data_param { root: "ROOT" split: "evaluation" } }
layer { name: "vis" type: "ReadVisibility" bottom: "index" top: "vis"
        rhd_data_param { root: "ROOT" split: "evaluation" } }
layer { name: "avg_bone" type: "ReadBoneLength" bottom: "index" top: "avg_bone"
        rhd_data_param { root: "ROOT" split: "evaluation" } }
layer { name: "scale" type: "HandScale" bottom: "joint_3d" top: "scale" }
layer { name: "depth" type: "NormalizedRootDepth" bottom: "joint_3d" bottom: "scale" top: "depth_01" top: "depth_zr" }
layer { name: "heatmap" type: "GenHeatmap" bottom: "joint_2d" top: "heatmap" gen_heatmap_param { gen_size: 16 } }
layer { name: "heat_scale" type: "Scale" bottom: "heatmap" top: "heat_scaled" }
layer { name: "soft_argmax" type: "SoftArgmax" bottom: "heat_scaled" top: "heatmap_norm" top: "pred_2d"
        soft_argmax_param { normalization: SUM sigmoid: false } }
layer { name: "zr_scale" type: "Scale" bottom: "depth_zr" top: "pred_zr" }
layer { name: "pred_2d_px" type: "CropToImage" bottom: "pred_2d" bottom: "bbox" top: "pred_2d_px" }
layer { name: "gt_2d_px" type: "CropToImage" bottom: "joint_2d" bottom: "bbox" top: "gt_2d_px" }
layer { name: "zroot" type: "RootDepth" bottom: "pred_2d_px" bottom: "pred_zr" bottom: "intrinsics"
        top: "zroot" top: "root_clamped" top: "ambiguous" }
layer { name: "pred_3d_norm" type: "Reconstruct3D" bottom: "pred_2d_px" bottom: "pred_zr" bottom: "zroot"
        bottom: "intrinsics" top: "pred_3d_norm" }
layer { name: "pred_scale" type: "ScaleRecovery" bottom: "pred_3d_norm" bottom: "avg_bone" top: "pred_scale" }
layer { name: "pred_3d" type: "Reconstruct3D" bottom: "pred_2d_px" bottom: "pred_zr" bottom: "zroot"
        bottom: "intrinsics" bottom: "pred_scale" top: "pred_3d" }
layer { name: "epe_2d_px" type: "EPE2D" bottom: "pred_2d_px" bottom: "gt_2d_px" bottom: "vis" top: "epe_2d_px" }
layer { name: "epe_3d" type: "EPE3D" bottom: "pred_3d" bottom: "joint_3d" bottom: "vis" top: "epe_3d" }
"""
ZR_SCALE = 1.5     # on this data: 8 of the 18 root depths have no real root, 2 of them among the first 6


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """(folder, memo root, truth, net path with batch 8, weights path) for the 18-sample split."""
    base = tmp_path_factory.mktemp("evaluate")
    root = str(base / "rhd")
    truth = write_memo(root, num_images=10, unusable=(3, 6), split="evaluation", packed=False)
    assert len(truth["index_list"]) == 18
    net_path = write_net(base, root, 8)
    net = Net(net_path, phase="TEST", device="cpu", workers=0)
    with torch.no_grad():
        net.params["zr_scale"][0].fill_(ZR_SCALE)
        net.params["heat_scale"][0].fill_(2.0)
    weights = str(base / "w.caffemodel.h5")
    save_weights(net, weights)
    net.close()
    return base, root, truth, net_path, weights


def write_net(folder, root, batch, name=None, text=NET):
    path = folder / (name or f"net_batch{batch}.prototxt")
    path.write_text(text.replace("ROOT", root).replace("BATCH", str(batch)))
    return str(path)


def run(argv, capsys):
    code = evaluate.main(argv + ["--device", "cpu", "--workers", "0"])
    out, err = capsys.readouterr()
    return code, out, err.strip().splitlines()


def one_error_line(code, err, *words):
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ")
    for w in words:
        assert w in err[0]


# ---------------------------------------------------------------- weights

def test_no_weights_is_refused_unless_random_init(data, tmp_path, capsys):
    _, _, _, net_path, _ = data
    code, _, err = run([net_path, "--out", str(tmp_path / "a")], capsys)
    one_error_line(code, err, "no --weights", "2 layer(s) with weights", "--random-init")
    assert not (tmp_path / "a").exists()                       # nothing written for a random net
    code, out, err = run([net_path, "--out", str(tmp_path / "b"), "--random-init"], capsys)
    assert code == 0 and (tmp_path / "b" / "metrics.md").exists()
    assert err == ["warning: --random-init: the net's 2 layer(s) with weights keep their random fillers"]


def test_weights_that_match_no_layer_are_refused(data, tmp_path, capsys):
    _, _, _, net_path, _ = data
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.create_dataset("data/conv9/0", data=np.ones((2, 3), np.float32))
    code, _, err = run([net_path, "--weights", str(other), "--out", str(tmp_path / "a")], capsys)
    one_error_line(code, err, "match no layer of the net", "conv9", "heat_scale, zr_scale")
    assert not (tmp_path / "a").exists()


def test_weights_that_match_some_layers_name_those_left_at_their_fillers(data, tmp_path, capsys):
    _, _, _, net_path, weights = data
    partial = tmp_path / "partial.h5"
    with h5py.File(weights, "r") as src, h5py.File(partial, "w") as f:
        src.copy("data", f)
        del f["data/heat_scale"]
    code, out, err = run([net_path, "--weights", str(partial), "--out", str(tmp_path / "a"), "--dtype", "float64"],
                         capsys)
    assert code == 0
    assert err == [f"warning: 1 of the net's 2 layer(s) with weights are not in '{partial}' and keep their random "
                   f"fillers: heat_scale"]
    # the loaded layer took the file's value: the same numbers as with the whole file
    code, _, err = run([net_path, "--weights", weights, "--out", str(tmp_path / "b"), "--dtype", "float64"], capsys)
    assert code == 0 and err == []
    a, b = (json.loads((tmp_path / d / "metrics.json").read_text())["net"] for d in "ab")
    assert a["epe_3d_rel_mm"] == b["epe_3d_rel_mm"] and a["clamped_roots"] == b["clamped_roots"]


# ---------------------------------------------------------------- blobs from the net, debug images

def test_shipped_test_net_needs_no_blob_names_and_draws_k_debug_images(data, tmp_path, capsys):
    _, root, truth, _, _ = data
    net_path = tmp_path / "synth_small_test.prototxt"
    net_path.write_text(prototxt_for(SYNTH_SMALL_TEST, root, **{"batch_size: 50": "batch_size: 8",
                                                                "packed: true": "packed: false"}))
    out = tmp_path / "eval"
    code, text, err = run([str(net_path), "--random-init", "--out", str(out), "--debug-images", "3"], capsys)
    assert code == 0, err
    net = Net(str(net_path), phase="TEST", device="cpu", workers=0)
    roles = evaluation.find_roles(net)
    net.close()
    assert roles == {"pred_2d": "pred_2d_px", "gt_2d": "gt_2d_px", "pred_3d": "pred_3d", "gt_3d": "joint_3d",
                     "visibility": "vis", "ambiguous": "ambiguous", "clamped": "root_clamped", "image": "image",
                     "pred_2d_crop": "pred_2d", "gt_2d_crop": "joint_2d", "heatmaps": "heatmap_view"}
    # the net sees left hands mirrored: the pictures take its maps mirrored back (HandMirror of heatmap_norm)
    first = truth["index_list"][:3]
    assert sorted(p for p in os.listdir(out) if p.endswith(".png") and p != "pck.png") == sorted(
        [f"heatmaps_{i}.png" for i in first] + [f"skeleton_{i}.png" for i in first])
    assert "3 debug image(s)" in text
    assert json.loads((out / "metrics.json").read_text())["net"]["samples"] == 18


def test_debug_images_say_why_none_can_be_drawn(data, tmp_path, capsys):
    _, root, _, _, weights = data
    text = NET.replace('layer { name: "image" type: "ReadImage" bottom: "index" top: "image" read_image_param '
                       '{ resize_size: 32 }\n        rhd_data_param { root: "ROOT" split: "evaluation" } }\n', "")
    assert "ReadImage" not in text
    net_path = write_net(tmp_path, root, 8, "no_image.prototxt", text)
    out = tmp_path / "eval"
    code, _, err = run([net_path, "--weights", weights, "--out", str(out), "--debug-images", "2"], capsys)
    assert code == 0
    assert err == ["warning: no debug images: cannot tell which blob is the crop image (no ReadImage layer); "
                   "name it with --image BLOB"]
    assert not [p for p in os.listdir(out) if p.startswith(("skeleton_", "heatmaps_"))]


def test_blob_flags_override_and_are_checked(data, tmp_path, capsys):
    _, _, _, net_path, weights = data
    code, _, err = run([net_path, "--weights", weights, "--pred-2d", "nope"], capsys)
    one_error_line(code, err, "the net has no blob 'nope' for --pred-2d")
    code, _, err = run([net_path, "--weights", weights, "--pred-2d", "pred_3d"], capsys)
    one_error_line(code, err, "pred_2d blob 'pred_3d' (--pred-2d)", "shape (8, 63)")
    code, _, err = run([net_path, "--weights", weights, "--samples", "19"], capsys)
    one_error_line(code, err, "--samples 19 exceeds the split's 18 samples")


# ---------------------------------------------------------------- a split that no batch divides

def test_split_that_no_batch_divides_counts_exactly_its_samples(data, tmp_path, capsys):
    base, root, truth, net_path, weights = data
    out = tmp_path / "eval"
    roles = ["--pred-2d", "pred_2d_px", "--gt-2d", "gt_2d_px", "--pred-3d", "pred_3d", "--gt-3d", "joint_3d",
             "--visibility", "vis", "--clamped", "root_clamped", "--ambiguous", "ambiguous"]   # as found, named
    code, _, err = run([net_path, "--weights", weights, "--out", str(out), "--dtype", "float64",
                        "--debug-images", "0", "--name", "b8"] + roles, capsys)
    assert code == 0, err
    m = json.loads((out / "metrics.json").read_text())["b8"]

    # the direct computation: one batch of exactly the 18 samples
    net = Net(write_net(base, root, 18), phase="TEST", device="cpu", workers=0).double()
    load_weights(net, weights)
    with torch.no_grad():
        net.forward()
    b = {k: v.detach().numpy().astype(np.float64) for k, v in net.blobs.items()}
    layer = net.layers["zroot"]
    status = layer.sample_status(*(net.blobs[x] for x in ("pred_2d_px", "pred_zr", "intrinsics"))).numpy()
    net.close()
    np.testing.assert_array_equal(b["index"].reshape(-1), truth["index_list"])
    clamped = np.isin(status, ROOT_CLAMPED)
    # the data makes the count meaningful: some samples clamped, some not, and some among the first 6, which the
    # last batch of 8 (samples 16, 17, then 0-5 again) repeats: the old count added those
    assert 0 < clamped.sum() < 18 and clamped[:6].any()
    assert b["root_clamped"].tolist() == [clamped.sum()]

    assert m["samples"] == 18
    assert m["clamped_roots"] == clamped.sum()
    assert m["root_depth_cases"] == {name: int((status == code).sum()) for code, name in ROOT_STATUS_NAMES.items()}
    assert sum(m["root_depth_cases"].values()) == 18
    assert m["ambiguous_roots"] == b["ambiguous"].sum()
    vis = b["vis"] != 0
    e2 = np.linalg.norm((b["pred_2d_px"] - b["gt_2d_px"]).reshape(18, 21, 2), axis=-1)
    p3, g3 = b["pred_3d"].reshape(18, 21, 3), b["joint_3d"].reshape(18, 21, 3)
    e3_abs = np.linalg.norm(p3 - g3, axis=-1)
    e3_rel = np.linalg.norm((p3 - p3[:, :1]) - (g3 - g3[:, :1]), axis=-1)
    assert m["epe_2d_px"] == pytest.approx(e2[vis].mean(), rel=1e-12)
    assert m["epe_3d_abs_mm"] == pytest.approx(e3_abs[vis].mean(), rel=1e-12)
    assert m["epe_3d_rel_mm"] == pytest.approx(e3_rel[vis].mean(), rel=1e-12)
    pck = [(e3_rel[vis] <= t).mean() for t in range(51)]
    np.testing.assert_allclose(m["pck"], pck, rtol=0, atol=1e-12)
    table = (out / "metrics.md").read_text()
    assert f"| clamped root depths | {clamped.sum()} |" in table and "| samples | 18 |" in table
