"""HandAugment (layers/hand/augment.py): the pose moves with the pixels (a quarter turn is an exact pixel
permutation; a bright disc cropped and resized the way the readers do it lands where the moved keypoint says),
colours and padding, TEST is the identity, the draws stay in their ranges and follow torch's seed, and the
generated nets put it in TRAIN only."""

import math

import cv2
import numpy as np
import pytest
import torch

from layers.build import make_layer
from layers.hand.readers import resize_square
from layers.hand.rhd.convert import crop_pixels
from netdef.errors import NetError

ALL = ("max_rotation: 30 max_scale: 0.2 max_shift: 0.1 max_brightness: 0.2 max_channel_gain: 0.1 "
       "pad_value: 128")


def augment(n, s, params=ALL, phase="TRAIN", k=2):
    text = (f'name: "aug" type: "HandAugment" bottom: "im" bottom: "uv" bottom: "box" top: "im2" top: "uv2" '
            f'hand_augment_param {{ {params} }}')
    return make_layer(text, bottom_shapes=[(n, 3, s, s), (n, 2 * k), (n, 4)], phase=phase)


def fixed(layer, angle, scale, shift, gain):
    """Make the layer's next draws these (one sample)."""
    layer.draw = lambda n, c: (torch.tensor([angle], dtype=torch.float64), torch.tensor([scale], dtype=torch.float64),
                               torch.tensor([shift], dtype=torch.float64), torch.tensor([gain], dtype=torch.float64))


def test_quarter_turn_permutes_pixels_and_their_keypoints():
    s = 8
    layer = augment(1, s, k=s * s).double()
    fixed(layer, math.pi / 2, 1.0, [0.0, 0.0], [1.0, 1.0, 1.0])
    x = torch.randn(1, 3, s, s, dtype=torch.float64)
    rows, cols = np.divmod(np.arange(s * s), s)
    uv = torch.tensor(np.stack([cols / s, rows / s], -1).reshape(1, -1))     # every pixel centre, box = s px
    box = torch.tensor([[0.0, 0, s - 1, s - 1]], dtype=torch.float64)
    y, moved = layer(x, uv, box)
    # R(90 deg) in image axes (y down): (x, y) - c -> (-(y - c), x - c), i.e. column c2 = s-1-r, row r2 = c
    np.testing.assert_allclose(y[0].numpy(), torch.rot90(x[0], k=-1, dims=(1, 2)).numpy(), atol=1e-12)
    got = moved.reshape(-1, 2).numpy() * s
    np.testing.assert_allclose(got, np.stack([s - 1 - rows, cols], -1), atol=1e-9)
    for r, c, (c2, r2) in zip(rows, cols, np.rint(got).astype(int)):
        assert y[0, 0, r2, c2].item() == pytest.approx(x[0, 0, r, c].item(), abs=1e-12)


@pytest.mark.parametrize("width", [40, 97])
@pytest.mark.parametrize("draw", [(0.4, 1.15, [0.06, -0.03]), (-0.5, 0.87, [-0.05, 0.08]), (0.0, 1.0, [0.1, 0.0])])
def test_a_cropped_disc_lands_where_its_keypoint_moves(width, draw):
    """A disc drawn at pixel (x, y) of a full image, cropped by box x1..x2 and resized to S like ReadImage: its
    keypoint is u' = (x - x1) / w; after the augmentation the disc's intensity centroid (in pixel-centre crop
    units) is the moved keypoint."""
    s = 64
    image = np.zeros((200, 240, 3), np.uint8)
    x1, y1 = 30, 20
    box = (x1, y1, x1 + width - 1, y1 + width - 1)
    px, py = x1 + width * 0.35, y1 + width * 0.6
    cv2.circle(image, (round(px * 16), round(py * 16)), max(3, width // 10) * 16, (255, 255, 255), -1,
               lineType=cv2.LINE_AA, shift=4)
    crop = torch.from_numpy(resize_square(crop_pixels(image, box), s).astype(np.float64)).permute(2, 0, 1)[None]
    uv = torch.tensor([[(px - x1) / width, (py - y1) / width]], dtype=torch.float64)
    layer = augment(1, s, params="pad_value: 0", k=1).double()
    fixed(layer, *draw, [1.0, 1.0, 1.0])
    y, moved = layer(crop, uv, torch.tensor([box], dtype=torch.float64))
    a = y[0, 0].numpy()
    centres = (np.arange(s) + 0.5) / s - 0.5 / width          # resized pixel centres in pixel-centre crop units
    cx = (a.sum(0) * centres).sum() / a.sum()
    cy = (a.sum(1) * centres).sum() / a.sum()
    # before: the same measure finds the keypoint (the disc is symmetric); after: the moved keypoint
    b = crop[0, 0].numpy()
    assert (b.sum(0) * centres).sum() / b.sum() == pytest.approx(uv[0, 0].item(), abs=2e-3)
    assert [cx, cy] == pytest.approx(moved[0].tolist(), abs=2e-3)


def test_colour_gains_and_padding():
    s = 8
    layer = augment(1, s).double()
    fixed(layer, 0.0, 1.0, [0.5, 0.0], [0.5, 1.0, 2.0])       # half a crop to the right: the left half is new
    x = torch.full((1, 3, s, s), 10.0, dtype=torch.float64)
    y, _ = layer(x, torch.zeros(1, 4, dtype=torch.float64), torch.tensor([[0.0, 0, 7, 7]], dtype=torch.float64))
    for c, g in enumerate((0.5, 1.0, 2.0)):
        np.testing.assert_allclose(y[0, c, :, : s // 2].numpy(), 128 * g)
        np.testing.assert_allclose(y[0, c, :, s // 2:].numpy(), 10 * g)


def test_zero_params_and_test_phase_are_the_identity():
    x, uv, box = torch.rand(3, 3, 16, 16) * 255, torch.rand(3, 42), torch.tensor([[5.0, 5, 104, 104]] * 3)
    for layer in (augment(3, 16, params="", k=21), augment(3, 16, phase="TEST", k=21)):
        y, moved = layer(x, uv, box)
        torch.testing.assert_close(y, x, atol=1e-3, rtol=0)     # float32 grid on values up to 255
        torch.testing.assert_close(moved, uv, atol=1e-6, rtol=0)


def test_draws_stay_in_range_and_follow_torchs_seed():
    layer = augment(4000, 4)
    torch.manual_seed(3)
    angle, scale, shift, gain = layer.draw(4000, 3)
    assert angle.abs().max() <= math.radians(30) and angle.abs().max() > math.radians(29.5)
    assert scale.min() >= 1 / 1.2 - 1e-12 and scale.max() <= 1.2 + 1e-12
    assert abs(scale.log().mean().item()) < 0.01                      # zooms in as often as out
    assert shift.abs().max() <= 0.1
    assert gain.min() >= 0.8 * 0.9 - 1e-12 and gain.max() <= 1.2 * 1.1 + 1e-12
    torch.manual_seed(3)
    again = layer.draw(4000, 3)
    assert all(torch.equal(a, b) for a, b in zip((angle, scale, shift, gain), again))


@pytest.mark.parametrize("shapes, params, message", [
    ([(2, 3, 8, 6), (2, 4), (2, 4)], "", "square images"),
    ([(2, 3, 8, 8), (2, 5), (2, 4)], "", "2D pose"),
    ([(2, 3, 8, 8), (2, 4), (3, 4)], "", "crop boxes"),
    ([(2, 3, 8, 8), (2, 4), (2, 4)], "max_scale: -0.1", "max_scale must be >= 0"),
    ([(2, 3, 8, 8), (2, 4), (2, 4)], "max_brightness: 1", "must be < 1"),
])
def test_errors(shapes, params, message):
    text = ('name: "aug" type: "HandAugment" bottom: "im" bottom: "uv" bottom: "box" top: "im2" top: "uv2" '
            f'hand_augment_param {{ {params} }}')
    with pytest.raises(NetError, match=message):
        make_layer(text, bottom_shapes=shapes)


def test_generated_nets_augment_in_train_only():
    import dataclasses

    from tools import make_rhd_nets as M
    cfg = dataclasses.replace(M.NETS["synth_small"], augment=dict(max_rotation=10.0, pad_value=128.0))
    train, test = (str(M.make_net(cfg, phase).to_proto()) for phase in ("TRAIN", "TEST"))
    assert train.count('type: "HandAugment"') == 1 and "HandAugment" not in test
    assert 'bottom: "joint_2d_aug"' in train and 'bottom: "image_aug"' in train
    assert "HandAugment" not in str(M.make_deploy_net(cfg).to_proto())
