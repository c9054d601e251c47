"""Debugging output layers (the memo's "Debugging" section): DeepHandModelOutputHeatmapSepChannel (per-joint
heatmap PNGs and a montage), DrawSkeleton / DeepHandModelOutputJointOnSkeletonMapRHD and draw_skeleton.

Files are read back with cv2 and checked pixel by pixel against values computed here: round(255 * map),
cv2.resize of those bytes, the finger colours at bone midpoints, the ground truth's other style."""

import os

import cv2
import numpy as np
import pytest
import torch

import layers.hand  # noqa: F401  (registers the hand layers)
from layers.build import make_layer
from layers.hand import debug as D
from layers.hand.skeleton import BONES
from netdef.errors import NetError
from nets.net import Net


def mk(body, shapes, bottoms):
    head = 'name: "l" ' + " ".join(f'bottom: "{b}"' for b in bottoms) + " "
    return make_layer(head + body, [tuple(s) for s in shapes], "TEST")


def read(path, flags=cv2.IMREAD_UNCHANGED):
    assert os.path.isfile(path), path
    return cv2.imread(path, flags)


def fan_hand(size=200.0):
    """(21, 2) pixel positions of a hand whose fingers fan out from the wrist, bones far apart."""
    s = size / 200
    uv = np.zeros((21, 2))
    uv[0] = (100 * s, 150 * s)
    for f in range(5):
        a = np.deg2rad(-170 + 40 * f)
        for j, r in enumerate((95, 75, 55, 35)):      # tip, DIP, PIP, MCP
            uv[1 + 4 * f + j] = uv[0] + r * s * np.array([np.cos(a), np.sin(a)])
    return uv


def pixel(img, p):
    return tuple(int(c) for c in img[int(round(p[1])), int(round(p[0]))])


# ---------------------------------------------------------------- heatmaps

HM = 'type: "DeepHandModelOutputHeatmapSepChannel" deep_hand_model_output_heatmap_sep_channel_param {{ {} }}'


def test_heatmap_files_hold_round_255_map(tmp_path):
    rng = np.random.default_rng(0)
    maps = rng.uniform(-0.2, 1.2, (2, 21, 8, 8))              # outside [0, 1] too: clamped
    idx = torch.tensor([[7.0], [42.0]])
    layer = mk(HM.format(f'save_path: "{tmp_path}" save_size: 8 heatmap_size: 8'), [(2, 21, 8, 8), (2, 1)],
               ("h", "i"))
    assert layer(torch.tensor(maps, dtype=torch.float32), idx) == ()
    for b, i in enumerate((7, 42)):
        for j in range(21):
            img = read(str(tmp_path / str(j) / f"{i}.png"))
            want = np.clip(np.round(maps[b, j].astype(np.float32) * 255), 0, 255).astype(np.uint8)
            assert img.dtype == np.uint8 and img.shape == (8, 8)
            np.testing.assert_array_equal(img, want)
        montage = read(str(tmp_path / "montage" / f"{i}.png"))
        assert montage.shape == (5 * 128, 5 * 128, 3)            # 5 x 5 tiles of at least 128 px


def test_heatmap_resized_to_save_size_and_montage_tiles(tmp_path):
    maps = np.zeros((1, 21, 16, 16), np.float32)
    maps[0, :, 4:8, 10:12] = 1.0
    maps[0, 3, 0, 0] = 0.5
    layer = mk(HM.format(f'save_path: "{tmp_path}/" save_size: 160'), [(1, 21, 16, 16), (1, 1), (1, 3, 40, 40)],
               ("h", "i", "c"))
    crop = torch.full((1, 3, 40, 40), 90.0)
    crop[0, 2] = 200.0                                            # a reddish (BGR) crop
    layer(torch.tensor(maps), torch.tensor([[3.0]]), crop)
    small = np.clip(np.round(maps[0, 3] * 255), 0, 255).astype(np.uint8)
    big = read(str(tmp_path / "3" / "3.png"))
    assert big.shape == (160, 160)
    np.testing.assert_array_equal(big, cv2.resize(small, (160, 160), interpolation=cv2.INTER_LINEAR))
    montage = read(str(tmp_path / "montage" / "3.png"))
    assert montage.shape == (800, 800, 3)                         # tiles of save_size = 160
    # tile (0, 0) is the crop (below its label), blank tiles are dark grey
    np.testing.assert_array_equal(montage[100:160, 100:160], np.broadcast_to([90, 90, 200], (60, 60, 3)))
    np.testing.assert_array_equal(montage[4 * 160:, :160], np.full((160, 160, 3), 40))
    # the thumb tip's tile (row 0, column 1): JET over the crop with alpha 0.2 + 0.6 * value
    tile = montage[:160, 160:320].astype(float)
    jet = cv2.applyColorMap(np.array([[0, 255]], np.uint8), cv2.COLORMAP_JET)[0].astype(float)
    crop_px = np.array([90.0, 90.0, 200.0])
    np.testing.assert_allclose(tile[60, 110], np.round(0.2 * crop_px + 0.8 * jet[1]), atol=1)   # value 1
    np.testing.assert_allclose(tile[150, 20], np.round(0.8 * crop_px + 0.2 * jet[0]), atol=1)   # value 0


def test_heatmap_montage_grid_for_other_joint_counts():
    m = np.zeros((3, 8, 8), np.uint8)
    assert D.heatmap_montage(m, tile=50).shape == (100, 150, 3)   # 3 maps + all + input: 2 x 3
    assert D.heatmap_montage(np.zeros((21, 8, 8), np.uint8), None, 64).shape == (320, 320, 3)


def test_heatmap_layer_in_a_net_runs_without_tops(tmp_path):
    text = f"""
    layer {{ name: "in" type: "Input" top: "h" top: "i"
            input_param {{ shape {{ dim: 2 dim: 21 dim: 4 dim: 4 }} shape {{ dim: 2 dim: 1 }} }} }}
    layer {{ name: "out" type: "DeepHandModelOutputHeatmapSepChannel" bottom: "h" bottom: "i"
            deep_hand_model_output_heatmap_sep_channel_param {{ save_path: "{tmp_path}" montage: false }} }}
    """
    net = Net(text, phase="TEST", device="cpu")
    out = net.forward(h=torch.full((2, 21, 4, 4), 0.5, dtype=torch.float64), i=torch.tensor([[1.0], [5.0]]))
    assert out == {}
    assert read(str(tmp_path / "20" / "5.png")).shape == (4, 4) and (read(str(tmp_path / "0" / "1.png")) == 128).all()
    assert not (tmp_path / "montage").exists()


def test_heatmap_user_errors(tmp_path):
    shapes = [(2, 21, 8, 8), (2, 1)]
    with pytest.raises(NetError, match="missing required param 'save_path'"):
        mk(HM.format("save_size: 8"), shapes, ("h", "i"))
    with pytest.raises(NetError, match="did you mean save_size"):
        mk(HM.format(f'save_path: "{tmp_path}" save_sise: 8'), shapes, ("h", "i"))
    with pytest.raises(NetError, match="heatmap_size = 64 but the heatmaps are 8 x 8"):
        mk(HM.format(f'save_path: "{tmp_path}" heatmap_size: 64'), shapes, ("h", "i"))
    with pytest.raises(NetError, match=r"must be the \(2, 1\) index blob"):
        mk(HM.format(f'save_path: "{tmp_path}"'), [(2, 21, 8, 8), (2, 42)], ("h", "i"))
    layer = mk(HM.format(f'save_path: "{tmp_path}"'), shapes, ("h", "i"))
    with pytest.raises(NetError, match="invalid sample index 1.5"):
        layer(torch.zeros(2, 21, 8, 8), torch.tensor([[1.0], [1.5]]))


# ---------------------------------------------------------------- skeleton

def test_draw_skeleton_finger_colours_at_bone_midpoints():
    uv = fan_hand()
    black = np.zeros((200, 200, 3), np.uint8)
    img = D.draw_skeleton(black, uv)
    assert (black == 0).all()                                      # input untouched
    for a, b in BONES:
        assert pixel(img, (uv[a] + uv[b]) / 2) == D.keypoint_color(a), (a, b)
    assert {D.keypoint_color(1 + 4 * f) for f in range(5)} == set(D.FINGER_COLORS_BGR)
    assert len(set(D.FINGER_COLORS_BGR) | {D.WRIST_COLOR_BGR}) == 6
    assert pixel(img, uv[0]) == D.WRIST_COLOR_BGR                  # a filled disc on each keypoint


def test_draw_skeleton_ground_truth_style_differs():
    uv = fan_hand()
    black = np.zeros((200, 200, 3), np.uint8)
    pred = D.draw_skeleton(black, uv)
    gt = D.draw_skeleton(black, np.full((21, 2), np.nan), uv)      # only the GT (NaN keypoints are skipped)
    a, b = uv[1], uv[2]                                            # the thumb's tip-DIP bone
    samples = a + (b - a) * np.linspace(0.2, 0.8, 61)[:, None]
    on_pred = [pixel(pred, p) for p in samples]
    on_gt = [pixel(gt, p) for p in samples]
    assert set(on_pred) == {(0, 0, 255)}                           # solid thumb red
    assert (0, 0, 0) in on_gt                                      # dashed: gaps
    lit = [c for c in on_gt if c != (0, 0, 0)]
    assert lit and all(c[0] == c[1] and 0.4 < c[0] / c[2] < 0.6 for c in lit)   # a light tint of red
    # keypoints: filled discs for the prediction, hollow circles for the GT
    only_wrist = np.full((21, 2), np.nan)
    only_wrist[0] = (100, 100)
    filled = D.draw_skeleton(black, only_wrist)
    hollow = D.draw_skeleton(black, np.full((21, 2), np.nan), only_wrist)
    r = max(2, round(200 / 60))
    assert pixel(filled, (100, 100)) == (255, 255, 255) and pixel(hollow, (100, 100)) == (0, 0, 0)
    assert pixel(hollow, (100 + r, 100)) != (0, 0, 0)
    with pytest.raises(ValueError, match=r"\(21, 2\)"):
        D.draw_skeleton(black, np.zeros((20, 2)))


SK = 'type: "DrawSkeleton" draw_skeleton_param {{ {} }}'


def test_draw_skeleton_layer_crop_and_pixel_coords(tmp_path):
    uv = fan_hand(100)                                             # pixels of a 100 x 100 image
    image = torch.zeros(2, 3, 100, 100)
    image[1] = 60.0
    pred = torch.tensor(np.stack([uv, uv]).reshape(2, 42) / 100)  # crop units
    idx = torch.tensor([[11.0], [12.0]])
    shapes = [(2, 3, 100, 100), (2, 42), (2, 1)]
    crop = mk(SK.format(f'save_path: "{tmp_path}/crop" skeleton_size: 200 save_size: 150'), shapes, ("im", "p", "i"))
    crop(image, pred, idx)
    pix = mk(SK.format(f'save_path: "{tmp_path}/pix" skeleton_size: 200 save_size: 150 coords: PIXEL'), shapes,
             ("im", "p", "i"))
    pix(image, pred * 100, idx)
    for i in (11, 12):
        a, b = read(str(tmp_path / "crop" / f"{i}.png")), read(str(tmp_path / "pix" / f"{i}.png"))
        assert a.shape == (150, 150, 3)
        np.testing.assert_array_equal(a, b)
    # drawn at 200 x 200 (the skeleton size) exactly as draw_skeleton draws, then resized to 150
    want = D.draw_skeleton(np.zeros((200, 200, 3), np.uint8), fan_hand(200))
    np.testing.assert_array_equal(read(str(tmp_path / "crop" / "11.png")),
                                  cv2.resize(want, (150, 150), interpolation=cv2.INTER_AREA))
    assert tuple(read(str(tmp_path / "crop" / "12.png"))[149, 149]) == (60, 60, 60)


def test_draw_skeleton_layer_show_gt(tmp_path):
    uv = fan_hand(64) / 64
    image = torch.zeros(1, 3, 64, 64)
    pred = torch.tensor(uv.reshape(1, 42), dtype=torch.float32)
    gt = torch.tensor((uv + 0.05).reshape(1, 42), dtype=torch.float32)
    shapes = [(1, 3, 64, 64), (1, 42), (1, 1), (1, 42)]
    for show in ("true", "false"):
        mk(SK.format(f'save_path: "{tmp_path}/{show}" show_gt: {show}'), shapes, ("im", "p", "i", "g"))(
            image, pred, torch.tensor([[0.0]]), gt)
    with_gt, without = read(str(tmp_path / "true" / "0.png")), read(str(tmp_path / "false" / "0.png"))
    assert with_gt.shape == (64, 64, 3)
    np.testing.assert_array_equal(without, D.draw_skeleton(np.zeros((64, 64, 3), np.uint8), uv * 64))
    np.testing.assert_array_equal(with_gt, D.draw_skeleton(np.zeros((64, 64, 3), np.uint8), uv * 64,
                                                           (uv + 0.05) * 64))
    assert (with_gt != without).any()


def test_author_alias_with_his_params_and_bottoms(tmp_path):
    """His RHD net: bottoms image, image, image_index, pred_joint_2d, gt_joint_2d; show_gt false, 224, 224."""
    body = ('type: "DeepHandModelOutputJointOnSkeletonMapRHD" deep_hand_model_output_joint_on_skeleton_rhd_param '
            f'{{ show_gt: false save_path: "{tmp_path}/a/" save_size: 224 skeleton_size: 224 }}')
    uv = fan_hand(224) / 224
    image = torch.full((1, 3, 128, 128), 30.0)
    overlay = torch.zeros(1, 3, 128, 128)
    overlay[0, :, :8, :8] = 250.0                                 # his rule: overlay pixels > 0 win
    pred = torch.tensor(uv.reshape(1, 42), dtype=torch.float32)
    layer = mk(body, [(1, 3, 128, 128)] * 2 + [(1, 1), (1, 42), (1, 42)], ("image", "image", "idx", "p", "g"))
    layer(image, overlay, torch.tensor([[5.0]]), pred, pred + 0.1)
    img = read(str(tmp_path / "a" / "5.png"))
    assert img.shape == (224, 224, 3)
    assert tuple(img[2, 2]) == (250, 250, 250) and tuple(img[200, 5]) == (30, 30, 30)
    for a, b in BONES:                                            # GT not drawn (show_gt false)
        assert pixel(img, (uv[a] + uv[b]) / 2 * 224) == D.keypoint_color(a)
    # defaults are his net's values; 4 bottoms take his H36M order (image, index, pred, gt)
    four = mk(f'type: "DeepHandModelOutputJointOnSkeletonMapRHD" deep_hand_model_output_joint_on_skeleton_rhd_param '
              f'{{ save_path: "{tmp_path}/b" }}', [(1, 3, 128, 128), (1, 1), (1, 42), (1, 42)], ("im", "i", "p", "g"))
    assert (four.p.show_gt, four.p.save_size, four.p.skeleton_size) == (False, 224, 224)
    four(image, torch.tensor([[6.0]]), pred, pred)
    assert read(str(tmp_path / "b" / "6.png")).shape == (224, 224, 3)


def test_skeleton_user_errors(tmp_path):
    with pytest.raises(NetError, match="missing required param 'save_path'"):
        mk(SK.format("save_size: 8"), [(1, 3, 8, 8), (1, 42), (1, 1)], ("im", "p", "i"))
    with pytest.raises(NetError, match="did you mean show_gt"):
        mk(SK.format(f'save_path: "{tmp_path}" show_gtt: true'), [(1, 3, 8, 8), (1, 42), (1, 1)], ("im", "p", "i"))
    with pytest.raises(NetError, match="'coords'.*CROP, PIXEL|CROP.*PIXEL"):
        mk(SK.format(f'save_path: "{tmp_path}" coords: PIXELS'), [(1, 3, 8, 8), (1, 42), (1, 1)], ("im", "p", "i"))
    # the brief's order given to the alias (pred where his index goes): a clear message
    alias = ('type: "DeepHandModelOutputJointOnSkeletonMapRHD" '
             f'deep_hand_model_output_joint_on_skeleton_rhd_param {{ save_path: "{tmp_path}" }}')
    with pytest.raises(NetError, match=r"bottom 1 must be the \(1, 1\) index blob; got shape \(1, 42\) "
                       r"\(bottoms: image, index, pred, gt\)"):
        mk(alias, [(1, 3, 8, 8), (1, 42), (1, 1), (1, 42)], ("im", "p", "i", "g"))
    with pytest.raises(NetError, match=r"\(B, 3, S, S\) BGR"):
        mk(SK.format(f'save_path: "{tmp_path}"'), [(1, 1, 8, 8), (1, 42), (1, 1)], ("im", "p", "i"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_debug_layers_take_cuda_bottoms(tmp_path):
    maps = torch.rand(1, 21, 8, 8, device="cuda")
    idx = torch.tensor([[2.0]], device="cuda")
    mk(HM.format(f'save_path: "{tmp_path}/h"'), [(1, 21, 8, 8), (1, 1)], ("h", "i")).cuda()(maps, idx)
    np.testing.assert_array_equal(read(str(tmp_path / "h" / "4" / "2.png")),
                                  np.round(maps[0, 4].cpu().numpy() * 255).astype(np.uint8))
    uv = torch.tensor(fan_hand(64).reshape(1, 42) / 64, device="cuda")
    layer = mk(SK.format(f'save_path: "{tmp_path}/s"'), [(1, 3, 64, 64), (1, 42), (1, 1)], ("im", "p", "i")).cuda()
    layer(torch.zeros(1, 3, 64, 64, device="cuda"), uv, idx)
    np.testing.assert_array_equal(read(str(tmp_path / "s" / "2.png")),
                                  D.draw_skeleton(np.zeros((64, 64, 3), np.uint8), fan_hand(64)))
