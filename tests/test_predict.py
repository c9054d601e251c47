"""tools/predict.py and the deploy nets of tools/make_rhd_nets.py: on the tiny synthetic release (conftest's
rhd_converted), with untrained weights saved to a file, predict's 2D, 3D and root cases on the release's full
images and the converted crop boxes equal the test net's forward on the same samples; the crop rules, the
camera default, the mirrored-hand convention, predictions.json's fields, the pictures, folder batching and the
one-line errors."""

import json
import os
import shutil
import sys

import cv2
import h5py
import numpy as np
import pytest
import torch

from conftest import ROOT, prototxt_for

sys.path.insert(0, os.path.join(ROOT, "tools"))
import demo  # noqa: E402
import predict  # noqa: E402

from layers.caffe.normalization import BatchNorm  # noqa: E402
from layers.hand.reconstruct import ROOT_STATUS_NAMES, RootDepth  # noqa: E402
from layers.hand.rhd import memo  # noqa: E402
from layers.hand.rhd.convert import square_crop_box  # noqa: E402
from netdef.errors import NetError  # noqa: E402
from nets.net import Net  # noqa: E402
from nets.weights import load_weights, save_weights  # noqa: E402

DEPLOY = os.path.join(ROOT, "prototxt", "rhd_synth_small_deploy.prototxt")
TEST_NET = os.path.join(ROOT, "prototxt", "rhd_synth_small_test.prototxt")
HAND_FIELDS = {"hand", "box", "crop_box", "crop_rule", "mirrored", "joints_2d_px", "joints_3d_mm", "joints_3d_rel_mm",
               "root_depth_mm", "root_status", "root_status_code", "root_clamped", "root_ambiguous", "pictures"}


@pytest.fixture(scope="module")
def setup(rhd_converted, tmp_path_factory):
    """(folder, memo root, weights, samples folder): untrained synth_small weights (BatchNorm statistics set to
    mean 0, variance 1, so activations stay moderate), the demo's samples folder of every evaluation image."""
    root, release_root = rhd_converted
    base = tmp_path_factory.mktemp("predict")
    torch.manual_seed(1)
    net = Net(DEPLOY, phase="TEST", device="cpu")
    with torch.no_grad():
        for name in net.layer_names:
            layer = net.layer(name)
            if isinstance(layer, BatchNorm):
                layer.variance.fill_(1.0)
                layer.scale_factor.fill_(1.0)
    weights = str(base / "rhd_synth_small_iter_0.caffemodel.h5")
    save_weights(net, weights)
    net.close()
    demo.write_samples(root, release_root, str(base), count=100)
    return base, root, weights, str(base / "samples")


def run(argv, capsys):
    code = predict.main(argv + ["--device", "cpu"])
    out, err = capsys.readouterr()
    return code, out, err.strip().splitlines()


def one_error_line(code, err, *words):
    assert code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    for w in words:
        assert w in err[0], err[0]


def hands_by_sample(samples, result):
    """sample idx -> its hand record in predictions.json (boxes.json says which sample each hand is)."""
    boxes = json.load(open(os.path.join(samples, "boxes.json")))
    out = {}
    for image in result["images"]:
        for j, hand in enumerate(image["hands"]):
            out[boxes[os.path.basename(image["image"])]["hands"][j]["sample"]] = hand
    return out


def test_deploy_nets_have_the_documented_inputs_and_outputs():
    for name in ("synth_small", "latent25d", "heatmap25d"):
        net = Net(os.path.join(ROOT, "prototxt", f"rhd_{name}_deploy.prototxt"), phase="TEST", device="cpu")
        s = 64 if name == "synth_small" else 128
        side = {"is_left": (1, 1)} if name == "synth_small" else {}     # synth_small mirrors left hands itself
        assert net.inputs == {"image": (1, 3, s, s), "bbox": (1, 4), "K": (1, 9), "avg_bone": (1, 20), **side}
        assert net.outputs == ["joints_2d", "joints_3d", "joints_3d_rel", "root_status"]
        types = [st.definition.type for st in net.plan]
        assert "L1Loss" not in types and not any(t.startswith("Read") for t in types)
        net.close()


def test_deploy_net_reads_fx_fy_u0_v0_from_row_major_k_and_subtracts_the_wrist(setup):
    """K's entries 0, 4, 2, 5 are the intrinsics (the skew, K[1, 0] and the last row are ignored); joints_3d_rel
    is joints_3d minus its keypoint 0; a batch of 3 runs through the N = 1 declared shapes."""
    _, _, weights, _ = setup
    net = Net(DEPLOY, phase="TEST", device="cpu")
    net.double()
    load_weights(net, weights)
    rng = np.random.default_rng(0)
    feed = {"image": torch.tensor(rng.uniform(0, 255, (3, 3, 64, 64))),
            "bbox": torch.tensor([[10.0, 20.0, 89.0, 99.0]] * 3),
            "avg_bone": torch.full((3, 20), 40.0, dtype=torch.float64), "is_left": torch.tensor([[1.0], [0.0], [1.0]])}
    k = torch.tensor([[280.0, 0.0, 150.0, 0.0, 300.0, 170.0, 0.0, 0.0, 1.0]] * 3, dtype=torch.float64)
    with torch.no_grad():
        out = net.forward(K=k, **feed)
        intrinsics = net.blobs["intrinsics"].clone()
        junk = k.clone()
        junk[:, [1, 3, 6, 7, 8]] = torch.tensor([5.0, 7.0, 0.1, 0.2, 3.0], dtype=torch.float64)
        out2 = net.forward(K=junk, **feed)
    assert intrinsics.tolist() == [[280.0, 300.0, 150.0, 170.0]] * 3
    for name in ("joints_2d", "joints_3d", "joints_3d_rel", "root_status"):
        assert torch.equal(out[name], out2[name]), name
    assert out["joints_3d"].shape == (3, 21, 3) and out["joints_2d"].shape == (3, 21, 2)
    torch.testing.assert_close(out["joints_3d_rel"], out["joints_3d"] - out["joints_3d"][:, :1], rtol=0, atol=1e-12)
    net.close()


def test_predict_equals_the_test_net_on_the_same_samples(setup, tmp_path, capsys):
    """The demo's samples folder (release images, converter crop boxes, GT K), float64: 2D px, 3D mm,
    root-relative 3D and the root cases equal the test net's forward on those samples to 1e-4 mm."""
    base, root, weights, samples = setup
    code, out, err = run([samples, "--weights", weights, "--out", str(tmp_path), "--dtype", "float64",
                          "--batch", "4"], capsys)
    assert code == 0, err
    assert "net: prototxt/rhd_synth_small_deploy.prototxt (fits the weights)" in out
    assert f"boxes from {os.path.join(samples, 'boxes.json')}" in out
    assert f"bone lengths: {os.path.join(str(base), 'avg_bone.txt')}" in out      # beside the weights
    result = json.load(open(tmp_path / "predictions.json"))
    by_sample = hands_by_sample(samples, result)
    index = memo.read_index_list(memo.index_list_path(root, "evaluation"))
    assert sorted(by_sample) == sorted(int(i) for i in index) and len(index) >= 8

    text = prototxt_for(TEST_NET, root, **{"batch_size: 50": f"batch_size: {len(index)}"})
    net = Net(text, phase="TEST", device="cpu", workers=0)
    net.double()
    load_weights(net, weights)
    with torch.no_grad():
        net.forward(index=torch.tensor(index, dtype=torch.float64).reshape(-1, 1))
    b = net.blobs
    step = next(st for st in net.plan if isinstance(net.layers[st.key], RootDepth))
    status = net.layers[step.key].sample_status(*(b[x] for x in step.bottoms)).tolist()
    pred_3d = b["pred_3d"].numpy().reshape(-1, 21, 3)
    pred_2d = b["pred_2d_px"].numpy().reshape(-1, 21, 2)
    assert np.all(np.isfinite(pred_3d))
    for row, idx in enumerate(index):
        hand = by_sample[int(idx)]
        np.testing.assert_allclose(hand["joints_3d_mm"], pred_3d[row], rtol=0, atol=1e-4)
        np.testing.assert_allclose(hand["joints_3d_rel_mm"], pred_3d[row] - pred_3d[row, :1], rtol=0, atol=1e-4)
        np.testing.assert_allclose(hand["joints_2d_px"], pred_2d[row], rtol=0, atol=1e-6)
        assert hand["root_depth_mm"] == pytest.approx(pred_3d[row, 0, 2], abs=1e-4)
        assert hand["root_status_code"] == status[row] and hand["root_status"] == ROOT_STATUS_NAMES[status[row]]
        assert hand["root_clamped"] == (status[row] >= 2) and hand["root_ambiguous"] == (status[row] == 1)
        assert hand["hand"] == ("left" if idx % 2 == 0 else "right") and not hand["mirrored"]
        assert hand["crop_rule"] == "as given" and hand["box"] is None
        assert hand["crop_box"] == [int(memo.read_numbers(memo.sample_path(root, "evaluation", f, idx), 1, "", True)[0])
                                    for f in memo.BBOX_FIELDS]
    net.close()

    # the JSON's documented fields, the K used, the pictures (non-empty PNGs of the right sizes)
    assert {"net", "weights", "avg_bone_mm", "avg_bone_source", "keypoints", "units", "images"} <= set(result)
    assert len(result["keypoints"]) == 21 and result["keypoints"][0] == "wrist"
    np.testing.assert_allclose(result["avg_bone_mm"], memo.read_numbers(memo.avg_bone_path(root), 20))
    for image in result["images"]:
        image_id = int(os.path.basename(image["image"])[:5])
        k = memo.read_numbers(memo.camera_k_path(root, "evaluation", image_id), 9).reshape(3, 3)
        assert image["K"] == k.tolist() and image["K_source"].endswith("boxes.json")
        assert (image["width"], image["height"]) == (320, 320)
        assert cv2.imread(str(tmp_path / image["skeleton"])).shape == (320, 320, 3)
        for hand in image["hands"]:
            assert set(hand) == HAND_FIELDS
            assert cv2.imread(str(tmp_path / hand["pictures"]["3d"])).shape == (400, 800, 3)
            assert cv2.imread(str(tmp_path / hand["pictures"]["heatmaps"])).shape == (800, 800, 3)
    skeleton = cv2.imread(str(tmp_path / result["images"][0]["skeleton"]))
    original = cv2.imread(result["images"][0]["image"])
    assert np.count_nonzero(np.any(skeleton != original, axis=2)) > 200      # something was drawn

    # folder batching: one hand per forward gives the same numbers; --no-pictures writes the JSON alone
    code, _, err = run([samples, "--weights", weights, "--out", str(tmp_path / "b1"), "--dtype", "float64",
                        "--batch", "1", "--no-pictures"], capsys)
    assert code == 0, err
    assert os.listdir(tmp_path / "b1") == ["predictions.json"]
    again = json.load(open(tmp_path / "b1" / "predictions.json"))
    assert again["images"][0]["skeleton"] is None and again["images"][0]["hands"][0]["pictures"] == {}
    for a, c in zip(result["images"], again["images"]):
        for ha, hc in zip(a["hands"], c["hands"]):
            np.testing.assert_allclose(ha["joints_3d_mm"], hc["joints_3d_mm"], rtol=1e-9)


def test_box_rules_and_default_camera(setup, tmp_path, capsys):
    """--box grows to the converter's square (side ceil(1.25 x 40) = 50 about the box's centre); no box: the
    centre square; no K: 290 px x W / 320 at the image's centre, printed and stored."""
    _, _, weights, samples = setup
    img = cv2.imread(os.path.join(samples, "00000.png"))[:120, :200]
    path = tmp_path / "wide.png"
    cv2.imwrite(str(path), img)
    code, out, err = run([str(path), "--weights", weights, "--out", str(tmp_path / "a"), "--box", "100,20,139,49",
                          "--hand", "right"], capsys)
    assert code == 0, err
    hand = json.load(open(tmp_path / "a" / "predictions.json"))["images"][0]["hands"][0]
    # centre (119.5, 34.5): x1 = floor(119.5 - 24.5 + 0.5) = 95, y1 = floor(34.5 - 24.5 + 0.5) = 10
    assert hand["crop_box"] == [95, 10, 144, 59] == list(square_crop_box((100, 20, 139, 49)))
    assert hand["box"] == [100, 20, 139, 49] and hand["hand"] == "right"
    code, out, err = run([str(path), "--weights", weights, "--out", str(tmp_path / "b")], capsys)
    assert code == 0, err
    image = json.load(open(tmp_path / "b" / "predictions.json"))["images"][0]
    assert image["hands"][0]["crop_box"] == [40, 0, 159, 119] and image["hands"][0]["hand"] is None
    assert image["K"] == [[181.25, 0.0, 100.0], [0.0, 181.25, 60.0], [0.0, 0.0, 1.0]]
    assert image["K_source"].startswith("default")
    assert "centre square [40, 0, 159, 119]" in out and "fx = fy = 181.25, cx = 100, cy = 60" in out
    assert "hand 0: side not given, taken as a right hand" in out     # the net mirrors left hands: it must ask
    assert cv2.imread(str(tmp_path / "b" / image["skeleton"])).shape == (120, 200, 3)


def test_square_crop_box_with_centre_sums_is_the_converters_rule():
    # mask centroid (10.25, 7): side ceil(1.25 * 21) = 27, x1 = floor(10.25 - 13 + 0.5) = -3,
    # y1 = floor(7 - 13 + 0.5) = -6
    assert square_crop_box((0, 0, 20, 10), (41, 28, 4)) == (-3, -6, 23, 20)
    assert square_crop_box((0, 0, 20, 10)) == (-3, -8, 23, 18)          # centre (10, 5)


def test_a_net_trained_on_left_hands_sees_right_hands_mirrored(setup, tmp_path, capsys):
    """--net-hand left: a right hand's prediction is the mirror (u -> W - 1 - u, X -> -X) of the prediction on
    the image flipped left-right as a left hand (crop box and principal point flipped with it)."""
    _, _, weights, samples = setup
    boxes = json.load(open(os.path.join(samples, "boxes.json")))
    name = next(n for n, e in boxes.items() if any(h["hand"] == "right" for h in e["hands"]))
    entry = boxes[name]
    hand = next(h for h in entry["hands"] if h["hand"] == "right")
    x1, y1, x2, y2 = hand["crop_box"]
    k = np.array(entry["K"])
    img = cv2.imread(os.path.join(samples, name))
    w = img.shape[1]
    cv2.imwrite(str(tmp_path / "flipped.png"), img[:, ::-1])
    kf = f"{k[0, 0]},{k[1, 1]},{w - 1 - k[0, 2]},{k[1, 2]}"
    common = ["--weights", weights, "--net-hand", "left", "--dtype", "float64"]
    code, _, err = run([os.path.join(samples, name), f"--crop-box={x1},{y1},{x2},{y2}", "--hand", "right",
                        "--K", f"{k[0, 0]},{k[1, 1]},{k[0, 2]},{k[1, 2]}", "--out", str(tmp_path / "a")] + common,
                       capsys)
    assert code == 0, err
    code, _, err = run([str(tmp_path / "flipped.png"), f"--crop-box={w - 1 - x2},{y1},{w - 1 - x1},{y2}",
                        "--hand", "left", "--K", kf, "--out", str(tmp_path / "b")] + common, capsys)
    assert code == 0, err
    a = json.load(open(tmp_path / "a" / "predictions.json"))["images"][0]["hands"][0]
    b = json.load(open(tmp_path / "b" / "predictions.json"))["images"][0]["hands"][0]
    assert a["mirrored"] and not b["mirrored"]
    flip = np.array([-1.0, 1.0, 1.0])
    np.testing.assert_allclose(np.array(a["joints_3d_mm"]), np.array(b["joints_3d_mm"]) * flip, rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.array(a["joints_3d_rel_mm"]), np.array(b["joints_3d_rel_mm"]) * flip, atol=1e-6)
    uv_b = np.array(b["joints_2d_px"])
    np.testing.assert_allclose(np.array(a["joints_2d_px"]), np.stack([w - 1 - uv_b[:, 0], uv_b[:, 1]], 1), atol=1e-6)
    # the side must be known to mirror
    code, _, err = run([str(tmp_path / "flipped.png")] + common + ["--out", str(tmp_path / "c")], capsys)
    one_error_line(code, err, "--net-hand left needs each hand's side")


def test_errors_are_one_line(setup, tmp_path, capsys):
    _, _, weights, samples = setup
    image = os.path.join(samples, "00000.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(open(image, "rb").read()[:300])
    code, _, err = run([str(bad), "--weights", weights, "--out", str(tmp_path / "o")], capsys)
    one_error_line(code, err, "bad.png", "truncated PNG")
    code, _, err = run([image, "--weights", weights, "--out", str(tmp_path / "o"), "--box", "300,10,330,40"], capsys)
    one_error_line(code, err, "box [300, 10, 330, 40] is outside the image (320 x 320")
    code, _, err = run([image, "--weights", weights, "--out", str(tmp_path / "o"), "--crop-box=-50,0,-1,40"],
                       capsys)
    one_error_line(code, err, "crop box [-50, 0, -1, 40] is outside the image")
    code, _, err = run([image, "--weights", weights, "--out", str(tmp_path / "o"), "--box", "5,5,4,9"], capsys)
    one_error_line(code, err, "is empty")
    code, _, err = run([image, "--weights", weights, "--out", str(tmp_path / "o"), "--K", "0,1,2,3"], capsys)
    one_error_line(code, err, "fx, fy > 0")
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.create_dataset("data/conv9/0", data=np.ones((2, 3), np.float32))
    bones = ["--bones", os.path.join(os.path.dirname(weights), "avg_bone.txt")]
    code, _, err = run([image, "--weights", str(other), "--out", str(tmp_path / "o"), "--net", DEPLOY] + bones, capsys)
    one_error_line(code, err, "match no layer of the net", "conv9")
    partial = tmp_path / "partial.h5"
    with h5py.File(weights, "r") as src, h5py.File(partial, "w") as f:
        src.copy("data", f)
        del f["data/stem"]
    code, _, err = run([image, "--weights", str(partial), "--out", str(tmp_path / "o"), "--net", DEPLOY] + bones,
                       capsys)
    one_error_line(code, err, "do not fit the net", "stem")
    code, _, err = run([image, "--weights", str(partial), "--out", str(tmp_path / "o")] + bones, capsys)
    one_error_line(code, err, "fit none of the deploy nets", "give --net")
    code, _, err = run([str(tmp_path / "nowhere"), "--weights", weights, "--out", str(tmp_path / "o")], capsys)
    one_error_line(code, err, "no such image or folder")
    assert not (tmp_path / "o" / "predictions.json").exists()
    # no bone lengths anywhere
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    shutil.copy(weights, lonely / "w.h5")
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        code, _, err = run([image, "--weights", str(lonely / "w.h5"), "--out", str(tmp_path / "o")], capsys)
    finally:
        os.chdir(cwd)
    one_error_line(code, err, "no bone lengths", "--bones")


def test_a_detectors_fractional_box_is_rounded_to_pixels():
    tool = predict
    assert tool._int_box([162.57, 63.86, 256.5, 185.32], "box") == (163, 64, 257, 185)
    assert tool._int_box([1, 2, 3, 4], "box") == (1, 2, 3, 4)
    for bad in ([1, 2, 3], [1, 2, float("nan"), 4], ["a", 2, 3, 4], [True, 2, 3, 4]):
        with pytest.raises(NetError, match=r"box must be 4 numbers x1, y1, x2, y2"):
            tool._int_box(bad, "box")
