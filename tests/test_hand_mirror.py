"""HandMirror and ReadHandSide (layers/hand/mirror.py, readers.py): the image flip and the crop-unit 2D map agree
pixel for pixel with a crop of a mirrored image, the map is its own inverse, mirrored left hands have a right
hand's chirality in (u', v', zr), and a deploy net that mirrors left hands gives mirrored 2D and equal depths
for a crop and its mirror image."""

import os

import cv2
import numpy as np
import pytest
import torch

from conftest import ROOT, prototxt_for
from layers.build import make_layer
from layers.hand.readers import resize_square
from layers.hand.rhd.convert import crop_pixels
from netdef.errors import NetError
from nets.net import Net


def mirror(shapes):
    bottoms = "".join(f'bottom: "b{i}" ' for i in range(len(shapes)))
    return make_layer(f'name: "m" type: "HandMirror" {bottoms}top: "y"', bottom_shapes=shapes)


def test_images_flip_where_the_flag_is_set_and_gradients_follow():
    x = torch.randn(3, 2, 4, 5, requires_grad=True)
    flag = torch.tensor([[1.0], [0.0], [1.0]])
    y = mirror([(3, 2, 4, 5), (3, 1)])(x, flag)
    np.testing.assert_array_equal(y[0].detach(), x[0].detach().flip(-1))
    np.testing.assert_array_equal(y[1].detach(), x[1].detach())
    np.testing.assert_array_equal(y[2].detach(), x[2].detach().flip(-1))
    w = torch.randn(3, 2, 4, 5)
    (y * w).sum().backward()
    np.testing.assert_array_equal(x.grad[0], w[0].flip(-1))
    np.testing.assert_array_equal(x.grad[1], w[1])


@pytest.mark.parametrize("width", [7, 40, 97])
def test_pose_map_is_the_pixel_flip_of_the_crop(width):
    """A bright pixel at column c of an image: in the crop of box x1..x2 it sits at u' = c' / w; mirror the
    crop left-right and it sits at column w - 1 - c', which HandMirror's (w - 1) / w - u' gives exactly, and
    resizing the mirrored crop moves its centre as it moves the mirrored point."""
    image = np.zeros((120, 160, 3), np.uint8)
    x1, y1 = 20, 10
    box = (x1, y1, x1 + width - 1, y1 + width - 1)
    layer = mirror([(1, 2), (1, 1), (1, 4)]).double()
    for c in range(0, width, max(1, width // 6)):
        image[:] = 0
        image[y1 + 3, x1 + c] = 255
        crop = crop_pixels(image, box)
        flipped = crop[:, ::-1]
        col = np.argwhere(flipped[..., 0] == 255)[0][1]
        uv = torch.tensor([[c / width, 3 / width]], dtype=torch.float64)
        got = layer(uv, torch.ones(1, 1, dtype=torch.float64), torch.tensor([box], dtype=torch.float64))
        assert got[0, 0].item() == pytest.approx(col / width, abs=1e-12)
        assert got[0, 1].item() == pytest.approx(3 / width, abs=1e-12)
        # its own inverse
        back = layer(got, torch.ones(1, 1, dtype=torch.float64), torch.tensor([box], dtype=torch.float64))
        assert back[0].tolist() == pytest.approx(uv[0].tolist(), abs=1e-12)
    # resized to S: the flipped crop's intensity centroid is the mirrored point's, in pixel centres
    image[:] = 0
    cv2.circle(image, (x1 + width // 3, y1 + width // 2), max(2, width // 8), (255, 255, 255), -1)
    crop = crop_pixels(image, box)
    for s in (16, 64):
        a = resize_square(crop, s)[..., 0].astype(np.float64)
        b = resize_square(np.ascontiguousarray(crop[:, ::-1]), s)[..., 0].astype(np.float64)
        cols = np.arange(s) + 0.5
        ua = (a.sum(0) * cols).sum() / a.sum() / s          # pixel-centre units of the crop
        ub = (b.sum(0) * cols).sum() / b.sum() / s
        assert ub == pytest.approx(1 - ua, abs=1e-6)


def test_mirrored_left_hands_have_a_right_hands_chirality(rhd_converted):
    """In (u', v', zr) a hand keeps its handedness; after HandMirror every hand of the converted set, left or
    right, turns the same way (the sign of det(thumb MCP, index MCP, little MCP) about the wrist)."""
    root = rhd_converted[0]

    def text(packed):
        rhd = f'rhd_data_param {{ root: "{root}" split: "training" packed: {str(packed).lower()} }}'
        return f'''
        layer {{ name: "index" type: "ReadIndexFromFile" top: "index"
                 read_index_from_file_param {{ index_file_path: "{root}/training/all_hand/all_train_index.txt"
                                              batch_size: 8 }} }}
        layer {{ name: "side" type: "ReadHandSide" bottom: "index" top: "is_left" {rhd} }}
        layer {{ name: "bbox" type: "ReadBBox" bottom: "index" top: "bbox" {rhd} }}
        layer {{ name: "j2" type: "ReadJoint2D" bottom: "index" top: "joint_2d" {rhd} }}
        layer {{ name: "j3" type: "ReadJoint3D" bottom: "index" top: "joint_3d" {rhd} }}
        layer {{ name: "m" type: "HandMirror" bottom: "joint_2d" bottom: "is_left" bottom: "bbox" top: "net_2d" }}
        '''
    for packed in (False, True):
        net = Net(text(packed), phase="TEST", device="cpu", workers=0)
        out = {}
        with torch.no_grad():
            net.forward()
        for name in ("index", "is_left", "net_2d", "joint_2d", "joint_3d"):
            out[name] = net.blobs[name].data.double().numpy()
        net.close()
        idx = out["index"].ravel().astype(int)
        np.testing.assert_array_equal(out["is_left"].ravel(), (idx % 2 == 0).astype(float))   # idx = 2 i + hand
        assert 0 < out["is_left"].sum() < len(idx)

        def chirality(uv, xyz):
            p = np.column_stack([uv.reshape(21, 2), xyz.reshape(21, 3)[:, 2] / 100.0])   # zr-like depth
            return np.sign(np.linalg.det(p[[4, 8, 20]] - p[0]))
        before = [chirality(u, x) for u, x in zip(out["joint_2d"], out["joint_3d"])]
        after = [chirality(u, x) for u, x in zip(out["net_2d"], out["joint_3d"])]
        left = out["is_left"].ravel() == 1
        assert set(np.array(before)[left]) == {-s for s in set(np.array(before)[~left])}    # two handednesses
        assert len(set(after)) == 1 and after[0] == before[int(np.argmin(left))]          # one after mirroring


def test_deploy_net_mirrors_left_hands_inside(tmp_path):
    """The synth_small deploy net (random weights): a crop fed as a left hand gives the in-crop mirror of what
    its mirror image gives as a right hand; the relative 3D is the same up to X's sign (the crop mirror is not
    a 3D mirror off the principal axis, so only depths and 2D are compared exactly)."""
    net = Net(os.path.join(ROOT, "prototxt", "rhd_synth_small_deploy.prototxt"), phase="TEST", device="cpu")
    assert net.inputs["is_left"] == (1, 1)
    rng = np.random.default_rng(0)
    image = torch.from_numpy(rng.uniform(0, 255, (1, 3, 64, 64)).astype(np.float32))
    bbox = torch.tensor([[100.0, 80.0, 179.0, 159.0]])
    k = torch.tensor([[290.0, 0, 160, 0, 290.0, 160, 0, 0, 1]])
    bones = torch.full((1, 20), 30.0)
    with torch.no_grad():
        net.forward(image=image, bbox=bbox, K=k, avg_bone=bones, is_left=torch.ones(1, 1))
        left = {b: net.blobs[b].data.clone() for b in ("pred_2d", "pred_2d_net", "pred_zr")}
        net.forward(image=image.flip(-1), bbox=bbox, K=k, avg_bone=bones, is_left=torch.zeros(1, 1))
        right = {b: net.blobs[b].data.clone() for b in ("pred_2d", "pred_2d_net", "pred_zr")}
    np.testing.assert_allclose(left["pred_2d_net"], right["pred_2d_net"], atol=1e-6)   # the net saw one image
    np.testing.assert_allclose(left["pred_zr"], right["pred_zr"], atol=1e-6)
    u_left, u_right = left["pred_2d"][0, 0::2], right["pred_2d"][0, 0::2]
    np.testing.assert_allclose(u_left, 79 / 80 - u_right, atol=1e-6)
    np.testing.assert_allclose(left["pred_2d"][0, 1::2], right["pred_2d"][0, 1::2], atol=1e-6)


@pytest.mark.parametrize("shapes,message", [
    ([(2, 42), (2, 1)], "needs bottom 2, the crop boxes"),
    ([(2, 42), (3, 1), (2, 4)], "flag.*B = 2"),
    ([(2, 3, 8, 8), (2, 1), (2, 4)], "an image blob takes no bbox"),
    ([(2, 41), (2, 1), (2, 4)], "images .* or a 2D pose"),
    ([(2, 42), (2, 2), (2, 4)], "one 0/1 per sample"),
])
def test_shape_errors(shapes, message):
    with pytest.raises(NetError, match=message):
        mirror(shapes)
