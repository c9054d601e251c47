"""3D reconstruction (memo steps 16-19): CropToImage, RootDepth, Reconstruct3D, ScaleRecovery and the author's
DeepHandModelSolveScaleNormalizedGlobalZRoot / ...GlobalLocation / DeepHandModelSolveGlobalHandScale.

A known hand and 200 random hands (the synthetic generator's) go 3D -> (u, v, zr, s) -> 3D; the quadratic is
checked against SPEC section 4's literal formula in numpy; the clamp, the ambiguous samples, the original's
per-batch indexing bug, the converter's crop convention, float64 gradchecks, and user errors."""

import textwrap

import numpy as np
import pytest
import torch

import layers.hand  # noqa: F401  (registers the hand layers)
from layers.build import make_layer
from layers.hand import reconstruct as rc
from layers.hand.rhd import convert, synthetic
from layers.hand.skeleton import BONES
from layers.registry import get_layer_class
from netdef.errors import NetError
from nets.net import Net

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
CAM = (300.0, 300.0, 160.0, 160.0)   # fx, fy, u0, v0


def mk(body, shapes, bottoms, tops=("y",)):
    head = 'name: "l" ' + " ".join(f'bottom: "{b}"' for b in bottoms) + " " + \
        " ".join(f'top: "{t}"' for t in tops) + " "
    return make_layer(head + body, [tuple(s) for s in shapes], "TRAIN").double()


def root_depth(b, tops=("z",), body=""):
    return mk('type: "RootDepth" ' + body, [(b, 42), (b, 21), (b, 4)], ("uv", "zr", "k"), tops)


def reconstruct(b, scale=True):
    shapes = [(b, 42), (b, 21), (b, 1), (b, 4)] + [(b, 1)] * scale
    return mk('type: "Reconstruct3D"', shapes, ("uv", "zr", "z0", "k", "s")[:len(shapes)])


def scale_recovery(b):
    return mk('type: "ScaleRecovery"', [(b, 63), (b, 20)], ("j", "bones"))


def gradcheck(fn, *inputs):
    inputs = tuple(t.detach().double().requires_grad_(True) for t in inputs)
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6)


def known_hand():
    """(21, 3) mm: an open right hand, fingers toward -Y (image up), wrist at (10, 40, 500)."""
    wrist = np.array([10.0, 40.0, 500.0])
    mcp = np.array([[-35.0, -20.0, -8.0], [-20.0, -85.0, 6.0], [0.0, -88.0, 4.0], [18.0, -82.0, 2.0],
                    [34.0, -72.0, 0.0]])
    step = np.array([[-12.0, -18.0, -6.0], [-3.0, -25.0, -4.0], [0.0, -27.0, -3.0], [3.0, -25.0, -2.0],
                     [5.0, -20.0, -2.0]])
    j = np.zeros((21, 3))
    j[0] = wrist
    for f in range(5):
        for i, joint in enumerate(range(4 + 4 * f, 4 * f, -1)):     # MCP, PIP, DIP, tip
            j[joint] = wrist + mcp[f] + i * step[f]
    return j


def random_hands(n, seed=0):
    """n synthetic hands (the generator's shapes, poses and uniform/palm-facing rotations), wrist 0.3-0.8 m away
    on a random ray through the image, each with its own camera: (n, 21, 3) mm and (n, 4) fx, fy, u0, v0."""
    rng = np.random.default_rng(seed)
    joints, cams = np.empty((n, 21, 3)), np.empty((n, 4))
    for i in range(n):
        pts = synthetic.hand_model(synthetic.sample_hand_params(rng), left=bool(rng.integers(2)))
        pts = pts @ synthetic.random_rotation(rng).T
        k = synthetic.camera_matrix(rng)
        ray = np.linalg.solve(k, np.append(rng.uniform(30.0, 290.0, 2), 1.0))
        joints[i] = (pts + rng.uniform(0.3, 0.8) * ray / np.linalg.norm(ray)) * 1000.0
        cams[i] = k[0, 0], k[1, 1], k[0, 2], k[1, 2]
    return joints, cams


def to_25d(joints, cams):
    """GT (n, 21, 3) mm -> uv (n, 42) pixels, zr (n, 21), s (n,), written with numpy from SPEC section 4."""
    s = np.linalg.norm(joints[:, 8] - joints[:, 0], axis=1)
    u = cams[:, 0:1] * joints[..., 0] / joints[..., 2] + cams[:, 2:3]
    v = cams[:, 1:2] * joints[..., 1] / joints[..., 2] + cams[:, 3:4]
    zr = (joints[..., 2] - joints[:, :1, 2]) / s[:, None]
    return np.stack([u, v], axis=-1).reshape(len(s), 42), zr, s


def spec_quadratic(uv, zr, cams, n=8, m=0, big_c=1.0):
    """SPEC section 4's a, b, c, written literally."""
    uv = uv.reshape(len(uv), -1, 2)
    x = (uv[..., 0] - cams[:, 2:3]) / cams[:, 0:1]
    y = (uv[..., 1] - cams[:, 3:4]) / cams[:, 1:2]
    xn, yn, xm, ym, zn, zm = x[:, n], y[:, n], x[:, m], y[:, m], zr[:, n], zr[:, m]
    a = (xn - xm) ** 2 + (yn - ym) ** 2
    b = 2 * (zn * (xn ** 2 + yn ** 2 - xn * xm - yn * ym) + zm * (xm ** 2 + ym ** 2 - xn * xm - yn * ym))
    c = (xn * zn - xm * zm) ** 2 + (yn * zn - ym * zm) ** 2 + (zn - zm) ** 2 - big_c ** 2
    return a, b, c


def t64(*arrays):
    return tuple(torch.tensor(np.asarray(a), dtype=torch.float64) for a in arrays)


# ---------------------------------------------------------------- registration

@pytest.mark.parametrize("name, cls", [
    ("CropToImage", rc.CropToImage), ("RootDepth", rc.RootDepth), ("Reconstruct3D", rc.Reconstruct3D),
    ("ScaleRecovery", rc.ScaleRecovery),
    ("DeepHandModelSolveScaleNormalizedGlobalZRoot", rc.DeepHandModelSolveScaleNormalizedGlobalZRoot),
    ("DeepHandModelSolveScaleNormalizedGlobalLocation", rc.DeepHandModelSolveScaleNormalizedGlobalLocation),
    ("DeepHandModelSolveGlobalHandScale", rc.DeepHandModelSolveGlobalHandScale)])
def test_registered_under_exact_type_names(name, cls):
    assert get_layer_class(name) is cls and cls.type_name == name


# ---------------------------------------------------------------- CropToImage (step 16)

def test_crop_to_image_closed_form():
    layer = mk('type: "CropToImage"', [(2, 4), (2, 4)], ("j", "box"))
    j = torch.tensor([[0.0, 0.0, 1.0, 0.5], [0.25, 0.75, 0.5, 1.0]], dtype=torch.float64)
    box = torch.tensor([[10.0, 20.0, 109.0, 219.0], [0.0, 5.0, 63.0, 36.0]], dtype=torch.float64)
    want = [[10.0, 20.0, 110.0, 120.0], [16.0, 5.0 + 24.0, 32.0, 37.0]]   # widths 100 / 64, heights 200 / 32
    np.testing.assert_array_equal(layer(j, box).numpy(), want)
    gradcheck(lambda a, b: layer(a, b), j, box)


def test_crop_to_image_inverts_the_converter():
    # the converter's own files: crop_gt_2d and bbx_* back to gt_2d_in_raw
    crop, boxes, raw = [], [], []
    for image_id in (1, 2):
        color, mask, _, anno = synthetic.render_sample(7, image_id)
        for hand in (0, 1):
            files = convert.hand_sample(color, mask, anno["xyz"], anno["uv_vis"], anno["K"], image_id, hand)
            if isinstance(files, str):
                continue
            crop.append(np.array(files["crop_gt_2d"].split(), float))
            boxes.append([int(files[f]) for f in ("bbx_x1", "bbx_y1", "bbx_x2", "bbx_y2")])
            raw.append(np.array(files["gt_2d_in_raw"].split(), float))
    assert len(crop) >= 3
    b = len(crop)
    out = mk('type: "CropToImage"', [(b, 42), (b, 4)], ("j", "box"))(*t64(crop, boxes))
    # both files hold 6 decimals; the crop's (<= 0.5e-6) is scaled by the box side (< 200 px)
    np.testing.assert_allclose(out.numpy(), np.array(raw), rtol=0, atol=2e-4)


@pytest.mark.parametrize("shapes, msg", [
    ([(2, 42), (2, 2)], r"bottom 1 \(bbox\) x1, y1, x2, y2 per sample must be \(2, 4\); got shape \(2, 2\)"),
    ([(2, 41), (2, 4)], r"bottom 0 \(crop joints\) must be \(B, 2K\)"),
])
def test_crop_to_image_errors(shapes, msg):
    with pytest.raises(NetError, match=msg):
        mk('type: "CropToImage"', shapes, ("j", "box"))


# ---------------------------------------------------------------- RootDepth + Reconstruct3D (steps 17, 19)

def test_known_hand_round_trip():
    j = known_hand()[None]
    cams = np.array([CAM])
    uv, zr, s = to_25d(j, cams)
    assert s[0] == pytest.approx(np.sqrt(20 ** 2 + 85 ** 2 + 6 ** 2))
    a, b, c = spec_quadratic(uv, zr, cams)
    assert c[0] < 0                                  # one positive root: no ambiguity
    z0, clamped, amb = root_depth(1, ("z", "n", "amb"))(*t64(uv, zr, cams))
    assert z0.item() == pytest.approx(500.0 / s[0], rel=1e-12)
    assert clamped.tolist() == [0.0] and amb.tolist() == [[0.0]]
    out = reconstruct(1)(*t64(uv, zr), z0, *t64(cams, s[:, None]))
    assert out.shape == (1, 63)
    np.testing.assert_allclose(out.numpy().reshape(21, 3), j[0], rtol=0, atol=1e-3)
    assert np.abs(out.numpy().reshape(21, 3) - j[0]).max() < 1e-9
    # without the scale: the scale-normalised 3D, the same hand / s, reference bone of length 1
    norm = reconstruct(1, scale=False)(*t64(uv, zr), z0, *t64(cams)).numpy().reshape(21, 3)
    np.testing.assert_allclose(norm, j[0] / s[0], rtol=1e-12)
    assert np.linalg.norm(norm[8] - norm[0]) == pytest.approx(1.0, rel=1e-12)


def test_random_hands_round_trip_and_ambiguous_samples():
    n = 200
    joints, cams = random_hands(n)
    uv, zr, s = to_25d(joints, cams)
    a, b, c = spec_quadratic(uv, zr, cams)
    z0, clamped, amb = root_depth(n, ("z", "n", "amb"))(*t64(uv, zr, cams))
    out = reconstruct(n)(*t64(uv, zr), z0, *t64(cams, s[:, None])).numpy().reshape(n, 21, 3)
    err = np.abs(out - joints).max(axis=(1, 2))
    ambiguous = amb.numpy()[:, 0] == 1
    wrong = np.abs(z0.numpy()[:, 0] - joints[:, 0, 2] / s) > 1e-9 * joints[:, 0, 2] / s
    print(f"\n{n} random hands: {ambiguous.sum()} ambiguous (c > 0), {wrong.sum()} wrong root, "
          f"max error elsewhere {err[~ambiguous].max():.2e} mm")
    assert clamped.item() == 0
    np.testing.assert_array_equal(ambiguous, c > 0)        # GT geometry: c > 0 <=> both roots positive
    assert np.all(err[c < 0] < 1e-3) and err[c < 0].max() < 1e-9
    assert np.all(ambiguous[wrong])                        # a wrong root only where the sample is flagged
    assert np.all(err[wrong] > 1.0)
    assert 0 < wrong.sum() < ambiguous.sum() < 0.1 * n     # this seed: 6 ambiguous, 3 of them wrong
    # where ambiguous, the other root is the GT one: the smaller root of SPEC's quadratic
    small = (-b - np.sqrt(b * b - 4 * a * c)) / (2 * a)
    np.testing.assert_allclose(small[wrong], joints[wrong, 0, 2] / s[wrong], rtol=1e-9)


def test_root_depth_equals_specs_formula_on_arbitrary_inputs():
    rng = np.random.default_rng(5)
    b = 50
    uv = rng.uniform(0, 320, (b, 42))
    zr = rng.uniform(-1, 1, (b, 21))
    cams = np.column_stack([rng.uniform(250, 350, (b, 2)), rng.uniform(140, 180, (b, 2))])
    a, bb, c = spec_quadratic(uv, zr, cams, n=5, m=17, big_c=1.5)
    d = bb * bb - 4 * a * c
    z0, clamped, amb, status = root_depth(b, ("z", "n", "amb", "st"), "root_depth_param { n: 5 m: 17 c: 1.5 }")(
        *t64(uv, zr, cams))
    ok = d >= 0
    raw = np.where(ok, (-bb + np.sqrt(np.maximum(d, 0))) / (2 * a), -bb / (2 * a))   # root, or the vertex
    # the rule: every value in [min_depth, max_depth] = [1, 100]; the cases by precedence
    want_status = np.select([~ok, raw <= 0, (raw < 1) | (raw > 100), (c > 0) & (bb < 0)], [2, 3, 5, 1], 0)
    assert 0 < ok.sum() < b and {0, 2, 5} <= set(want_status.tolist())
    np.testing.assert_array_equal(status.numpy()[:, 0], want_status)
    assert clamped.item() == np.isin(want_status, [2, 3, 4, 5]).sum()
    np.testing.assert_array_equal(amb.numpy()[:, 0], ((c > 0) & (bb < 0) & ok).astype(float))
    np.testing.assert_allclose(z0.numpy()[:, 0], np.clip(raw, 1.0, 100.0), rtol=1e-9)


def test_negative_discriminant_is_clamped_and_counted_without_nan():
    # wrist on the optical axis, index MCP at x = 0.1, and zr_n = -2 (|zr_n| > C): no Z fits a bone of length 1;
    # the vertex -b / (2a) = 2 is in front of the camera (zr_n = +2 puts it at -2: see the degenerate cases)
    uv_bad, zr_bad = np.full(42, 160.0), np.zeros(21)
    uv_bad[16] = 190.0
    zr_bad[8] = -2.0
    j = known_hand()[None]
    uv_ok, zr_ok, _ = to_25d(j, np.array([CAM]))
    uv = np.stack([uv_ok[0], uv_bad, uv_ok[0], uv_bad, uv_bad])
    zr = np.stack([zr_ok[0], zr_bad, zr_ok[0], zr_bad, zr_bad])
    cams = np.tile(CAM, (5, 1))
    a, b, c = spec_quadratic(uv, zr, cams)
    assert np.all((b * b - 4 * a * c)[[1, 3, 4]] < 0)
    inputs = t64(uv, zr, cams)
    for t in inputs:
        t.requires_grad_(True)
    z0, clamped, amb = root_depth(5, ("z", "n", "amb"))(*inputs)
    assert clamped.shape == (1,) and clamped.item() == 3.0 and not clamped.requires_grad
    np.testing.assert_allclose(z0.detach().numpy()[[1, 3, 4], 0], 0.04 / (2 * 0.01), rtol=1e-6)   # vertex -b/2a
    assert z0.detach()[0].item() == pytest.approx(500.0 / np.linalg.norm(j[0, 8] - j[0, 0]), rel=1e-12)
    assert amb.detach().numpy().sum() == 0
    out = reconstruct(5)(inputs[0], inputs[1], z0, inputs[2], torch.full((5, 1), 80.0, dtype=torch.float64))
    (out.sum() + z0.sum()).backward()
    assert torch.isfinite(out).all() and all(torch.isfinite(t.grad).all() for t in inputs)
    # the clamped samples' gradient is the vertex's: finite and nonzero in zr_n
    assert inputs[1].grad[1, 8] != 0


def one_bone(t, z, u_m=160.0, v_m=160.0):
    """One sample: wrist (joint 0) at pixel (u_m, v_m), index MCP (joint 8) 300 t px to its right, zr_8 = z, CAM.
    With the wrist on the optical axis, a = t^2, b = 2 t^2 z, c = (1 + t^2) z^2 - 1 and the roots are
    Zroot = -z +- sqrt(1 - z^2) / t."""
    uv = np.tile([u_m, v_m], 21)
    uv[16] = u_m + 300.0 * t
    zr = np.zeros(21)
    zr[8] = z
    return uv, zr


def root_depth_cases(cases, dtype=torch.float64, tops=("z", "n", "amb", "st"), body=""):
    uv, zr = (np.stack(v) for v in zip(*(one_bone(*case) for case in cases)))
    inputs = [t.to(dtype).requires_grad_(True) for t in t64(uv, zr, np.tile(CAM, (len(cases), 1)))]
    layer = root_depth(len(cases), tops, body).to(dtype)
    return inputs, layer(*inputs)


def test_both_roots_negative_gives_min_depth_counted_with_zero_gradient():
    # t = 0.5: zr_8 = 0.96 gives the roots -0.96 +- 0.56 = -0.4, -1.52 (c = 0.152 > 0, b = 0.48 > 0): a hand
    # behind the camera; zr_8 = -0.96 mirrors it, 0.96 +- 0.56 = 1.52, 0.4 (ambiguous, the larger taken);
    # zr_8 = 0 gives +-2; zr_8 = 2 has no real root and its vertex -b / (2a) = -2 is behind the camera too
    inputs, (z0, clamped, amb, status) = root_depth_cases([(0.5, 0.96), (0.5, -0.96), (0.5, 0.0), (0.5, 2.0)])
    a, b, c = spec_quadratic(*(t.detach().numpy() for t in inputs))
    assert c[0] > 0 and b[0] > 0 and b[0] ** 2 - 4 * a[0] * c[0] > 0          # both roots real and negative
    np.testing.assert_allclose(z0.detach().numpy()[:, 0], [1.0, 1.52, 2.0, 1.0], rtol=1e-12)   # min_depth = 1
    assert status[:, 0].tolist() == [rc.ROOT_BEHIND_CAMERA, rc.ROOT_AMBIGUOUS, rc.ROOT_OK, rc.ROOT_NO_REAL_ROOT]
    assert clamped.tolist() == [2.0] and amb[:, 0].tolist() == [0.0, 1.0, 0.0, 0.0]
    assert not (clamped.requires_grad or amb.requires_grad or status.requires_grad)
    grads = torch.autograd.grad(z0.sum(), inputs)
    assert all(torch.isfinite(g).all() for g in grads)
    for g in grads:                                    # the clamped samples' depth does not move with the inputs
        assert g[[0, 3]].abs().max().item() == 0.0
    # the others: dZ/dz = -1 - z / (t sqrt(1 - z^2)) for Z = -z + sqrt(1 - z^2) / t
    assert grads[1][1, 8].item() == pytest.approx(-1 + 0.96 / (0.5 * 0.28), rel=1e-9)
    assert grads[1][2, 8].item() == pytest.approx(-1.0, rel=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_coincident_bone_ends_give_max_depth_counted_with_bounded_gradient(dtype):
    # a = b = 0: the index MCP on the wrist's pixel, on the optical axis and off it (the original gave 1/(2 eps)
    # and gradients of 1e28); a 2D bone of 1.2 px (t = 0.004: the root 1/t = 250 > max_depth); a normal sample
    cases = [(0.0, 0.5), (0.0, 0.5, 200.0, 200.0), (0.004, 0.0), (0.5, 0.0)]
    inputs, (z0, clamped, amb, status) = root_depth_cases(cases, dtype)
    a = spec_quadratic(*(t.detach().double().numpy() for t in inputs))[0]
    assert a[0] == a[1] == 0
    assert z0.dtype == dtype and z0.detach()[:, 0].tolist() == pytest.approx([100.0, 100.0, 100.0, 2.0], rel=1e-6)
    assert status[:, 0].tolist() == [rc.ROOT_UNDETERMINED, rc.ROOT_UNDETERMINED, rc.ROOT_OUT_OF_RANGE, rc.ROOT_OK]
    assert clamped.tolist() == [3.0] and amb.sum().item() == 0
    grads = torch.autograd.grad(z0.sum(), inputs)
    assert all(torch.isfinite(g).all() for g in grads)
    assert max(g[:3].abs().max().item() for g in grads) == 0.0
    assert max(g.abs().max().item() for g in grads) < 10.0     # the normal sample's: dZ/dz = -1, dZ/du = -2/300


def test_root_depth_bounds_are_params_and_the_authors_type_follows_them():
    body = "root_depth_param { min_depth: 0.25 max_depth: 300 }"
    _, (z0, clamped, _, status) = root_depth_cases([(0.5, 0.96), (0.004, 0.0), (0.0, 0.5)], body=body)
    assert z0.detach()[:, 0].tolist() == pytest.approx([0.25, 250.0, 300.0], rel=1e-9)
    assert status[:, 0].tolist() == [rc.ROOT_BEHIND_CAMERA, rc.ROOT_OK, rc.ROOT_UNDETERMINED]
    assert clamped.item() == 2.0
    cases = [(0.5, 0.96), (0.5, -0.96), (0.5, 0.0), (0.5, 2.0), (0.0, 0.5), (0.004, 0.0)]
    uv, zr = (np.stack(v) for v in zip(*(one_bone(*case) for case in cases)))
    cams = np.tile(CAM, (6, 1))
    author = mk('type: "DeepHandModelSolveScaleNormalizedGlobalZRoot"', [(6, 42), (6, 21)] + [(6, 1)] * 4,
                ("uv", "zr", "fx", "fy", "u0", "v0"), ("z", "n", "amb", "st"))
    new = root_depth(6, ("z", "n", "amb", "st"))
    theirs, ours = author(*t64(uv, zr, *cams.T[:, :, None])), new(*t64(uv, zr, cams))
    for t, o in zip(theirs, ours):
        np.testing.assert_array_equal(t.numpy(), o.numpy())
    assert ours[3][:, 0].tolist() == [3, 1, 0, 2, 4, 5]
    # sample_status: the status top, from the bottoms, per sample (any subset of a batch can be counted)
    assert author.sample_status(*t64(uv, zr, *cams.T[:, :, None])).tolist() == [3, 1, 0, 2, 4, 5]
    assert new.sample_status(*t64(uv, zr, cams)).tolist() == [3, 1, 0, 2, 4, 5]
    assert [rc.ROOT_STATUS_NAMES[k] for k in rc.ROOT_CLAMPED] == ["no_real_root", "behind_camera", "undetermined",
                                                                "out_of_range"]


@pytest.mark.parametrize("device", DEVICES)
def test_root_depth_float32_keeps_dtype_and_device(device):
    joints, cams = random_hands(4, seed=2)
    uv, zr, s = to_25d(joints, cams)
    layer = root_depth(4, ("z", "n", "amb")).float().to(device)
    tops = layer(*(t.float().to(device) for t in t64(uv, zr, cams)))
    assert all(t.dtype == torch.float32 and t.device.type == device for t in tops)
    np.testing.assert_allclose(tops[0].cpu().numpy()[:, 0], joints[:, 0, 2] / s, rtol=1e-4)


def test_root_depth_and_reconstruct_gradcheck():
    joints, cams = random_hands(3, seed=3)
    uv, zr, s = to_25d(joints, cams)
    uv, zr, cams, s = t64(uv, zr, cams, s[:, None])
    layer = root_depth(3)
    gradcheck(lambda a, b, c: layer(a, b, c), uv, zr, cams)
    z0 = layer(uv, zr, cams).detach()
    gradcheck(lambda *t: reconstruct(3)(*t), uv, zr, z0, cams, s)
    gradcheck(lambda *t: reconstruct(3, scale=False)(*t), uv, zr, z0, cams)


@pytest.mark.parametrize("body, shapes, tops, msg", [
    ("", [(2, 42), (2, 20), (2, 4)], ("z",),
     r"bottom 1 \(zr\), one depth per joint of bottom 0, must be \(2, 21\); got shape \(2, 20\)"),
    ("", [(2, 42), (2, 21), (2, 3)], ("z",), r"bottom 2 \(intrinsics\) fx, fy, u0, v0 per sample must be \(2, 4\)"),
    ("", [(2, 42, 1), (2, 21), (2, 4)], ("z",), r"bottom 0 \(2D joints\) must be \(B, 2K\)"),
    ("root_depth_param { n: 0 }", [(2, 42), (2, 21), (2, 4)], ("z",), r"n and m must be different joints"),
    ("root_depth_param { n: 21 }", [(2, 42), (2, 21), (2, 4)], ("z",), r"n = 21 is not a joint of a 21-joint"),
    ("root_depth_param { c: 0 }", [(2, 42), (2, 21), (2, 4)], ("z",), r"c \(the reference bone's length\) must be"),
    ("root_depth_param { C: 1 }", [(2, 42), (2, 21), (2, 4)], ("z",), r"unknown param 'C'.*did you mean c\?"),
    ("", [(2, 42), (2, 21), (2, 4)], ("a", "b", "c", "d", "e"), r"takes 1 to 4 top\(s\), got 5"),
    ("root_depth_param { min_depth: 0 }", [(2, 42), (2, 21), (2, 4)], ("z",),
     r"need 0 < min_depth < max_depth < inf, got min_depth 0, max_depth 100"),
    ("root_depth_param { min_depth: 5 max_depth: 5 }", [(2, 42), (2, 21), (2, 4)], ("z",),
     r"need 0 < min_depth < max_depth < inf, got min_depth 5, max_depth 5"),
])
def test_root_depth_errors(body, shapes, tops, msg):
    with pytest.raises(NetError, match=msg):
        mk('type: "RootDepth" ' + body, shapes, ("uv", "zr", "k"), tops)


@pytest.mark.parametrize("shapes, msg", [
    ([(2, 42), (2, 21), (2, 2), (2, 4)], r"bottom 2 \(zroot\) must hold one value per sample"),
    ([(2, 42), (2, 21), (2, 1), (2, 4), (2, 3)], r"bottom 4 \(scale\) must hold one value per sample"),
    ([(2, 42), (2, 21), (2, 1), (1, 4)], r"bottom 3 \(intrinsics\) .* must be \(2, 4\); got shape \(1, 4\)"),
    ([(2, 42), (2, 21), (2, 1)], r"takes 4 to 5 bottom\(s\), got 3"),
])
def test_reconstruct_errors(shapes, msg):
    with pytest.raises(NetError, match=msg):
        mk('type: "Reconstruct3D"', shapes, ("uv", "zr", "z0", "k", "s")[:len(shapes)])


# ---------------------------------------------------------------- ScaleRecovery (step 18)

def bone_lengths(j):
    return np.stack([np.linalg.norm(j[:, a] - j[:, b], axis=-1) for a, b in BONES], axis=1)


def test_scale_recovery_is_exact_for_proportional_bones():
    joints, _ = random_hands(4, seed=4)
    scales = np.array([60.0, 85.0, 100.0, 120.0])
    norm = joints / np.linalg.norm(joints[:, 8] - joints[:, 0], axis=1)[:, None, None]
    bones = bone_lengths(norm) * scales[:, None]
    out = scale_recovery(4)(*t64(norm.reshape(4, 63), bones))
    np.testing.assert_allclose(out.numpy()[:, 0], scales, rtol=1e-12)


def test_scale_recovery_equals_least_squares():
    joints, _ = random_hands(3, seed=5)
    rng = np.random.default_rng(0)
    avg = rng.uniform(20.0, 90.0, 20)                     # one mean skeleton for the whole batch
    out = scale_recovery(3)(*t64(joints.reshape(3, 63) / 77.0, np.tile(avg, (3, 1)))).numpy()[:, 0]
    for i in range(3):
        d = bone_lengths(joints[i:i + 1] / 77.0)[0]
        want = np.linalg.lstsq(d[:, None], avg, rcond=None)[0][0]
        assert out[i] == pytest.approx(want, rel=1e-12)
        assert abs(out[i] - np.mean(avg / d)) > 1e-3      # not a plain ratio average
    # the original's formula, B / (-2A) with A = sum d^2, B = -2 sum d L
    d = bone_lengths(joints / 77.0)
    np.testing.assert_allclose(out, (-2 * (d * avg).sum(1)) / (-2 * (d * d).sum(1)), rtol=1e-12)


def test_scale_recovery_gradcheck_and_degenerate_hand():
    joints, _ = random_hands(2, seed=6)
    gradcheck(lambda a, b: scale_recovery(2)(a, b), *t64(joints.reshape(2, 63) / 80.0, np.full((2, 20), 40.0)))
    j = torch.zeros(1, 63, dtype=torch.float64, requires_grad=True)
    out = scale_recovery(1)(j, torch.full((1, 20), 40.0, dtype=torch.float64))
    out.sum().backward()
    assert out.item() == 0.0 and torch.isfinite(j.grad).all()


@pytest.mark.parametrize("shapes, msg", [
    ([(2, 60), (2, 20)], r"bottom 0 \(scale-normalised 3D\) must be \(B, 63\)"),
    ([(2, 63), (2, 21)], r"bottom 1 \(average bone lengths\), skeleton.BONES order, must be \(2, 20\)"),
])
def test_scale_recovery_errors(shapes, msg):
    with pytest.raises(NetError, match=msg):
        mk('type: "ScaleRecovery"', shapes, ("j", "bones"))


# ---------------------------------------------------------------- the author's types

def test_author_z_root_gives_each_sample_its_own_root():
    joints, cams = random_hands(12, seed=8)
    uv, zr, s = to_25d(joints, cams)
    c = spec_quadratic(uv, zr, cams)[2]
    keep = np.flatnonzero(c < 0)[:4]
    joints, cams, uv, zr, s = joints[keep], cams[keep], uv[keep], zr[keep], s[keep]
    layer = mk('type: "DeepHandModelSolveScaleNormalizedGlobalZRoot" '
               'deep_hand_model_solve_scale_normalized_global_z_root_param { joint_num: 21 n: 8 m: 0 c: 1.0 }',
               [(4, 42), (4, 21)] + [(4, 1)] * 4, ("uv", "zr", "fx", "fy", "u0", "v0"), ("z",))
    z0 = layer(*t64(uv, zr, *cams.T[:, :, None])).numpy()[:, 0]
    np.testing.assert_allclose(z0, joints[:, 0, 2] / s, rtol=1e-12)
    np.testing.assert_array_equal(z0, root_depth(4)(*t64(uv, zr, cams)).numpy()[:, 0])
    # the original read zr at offset t * 42 + joint: sample 1 got sample 2's zr_n (and zr_m)
    flat = zr.reshape(-1)
    x = (uv.reshape(4, 21, 2)[1, :, 0] - cams[1, 2]) / cams[1, 0]
    y = (uv.reshape(4, 21, 2)[1, :, 1] - cams[1, 3]) / cams[1, 1]
    zn, zm = flat[42 + 8], flat[42 + 0]
    a = (x[8] - x[0]) ** 2 + (y[8] - y[0]) ** 2
    b = 2 * ((x[8] - x[0]) * (x[8] * zn - x[0] * zm) + (y[8] - y[0]) * (y[8] * zn - y[0] * zm))
    cc = (x[8] * zn - x[0] * zm) ** 2 + (y[8] * zn - y[0] * zm) ** 2 + (zn - zm) ** 2 - 1
    buggy = (-b + np.sqrt(b * b - 4 * a * cc)) / (2 * a)
    assert abs(buggy - z0[1]) > 1e-3


def test_author_location_and_hand_scale_equal_the_new_layers():
    joints, cams = random_hands(3, seed=9)
    uv, zr, s = to_25d(joints, cams)
    z0 = torch.tensor(joints[:, :1, 2] / s[:, None])
    loc = mk('type: "DeepHandModelSolveScaleNormalizedGlobalLocation"', [(3, 42), (3, 21)] + [(3, 1)] * 5,
             ("uv", "zr", "fx", "fy", "u0", "v0", "z0"))
    norm = loc(*t64(uv, zr, *cams.T[:, :, None]), z0)
    np.testing.assert_array_equal(norm.numpy(), reconstruct(3, scale=False)(*t64(uv, zr), z0, *t64(cams)).numpy())
    np.testing.assert_allclose(norm.numpy(), joints.reshape(3, 63) / s[:, None], rtol=1e-12)
    bones = bone_lengths(joints)
    hs = mk('type: "DeepHandModelSolveGlobalHandScale"', [(3, 63), (3, 20)], ("j", "bones"))(norm, *t64(bones))
    np.testing.assert_allclose(hs.numpy()[:, 0], s, rtol=1e-12)


@pytest.mark.parametrize("kind, nb, body, msg", [
    ("DeepHandModelSolveScaleNormalizedGlobalZRoot", 6,
     "deep_hand_model_solve_scale_normalized_global_z_root_param { joint_num: 14 }",
     r"joint_num 14 does not match the bottoms' 21 joints"),
    ("DeepHandModelSolveScaleNormalizedGlobalZRoot", 6,
     "deep_hand_model_solve_scale_normalized_global_z_root_param { m: 8 }", r"n and m must be different"),
    ("DeepHandModelSolveScaleNormalizedGlobalZRoot", 3, "", r"takes 6 bottom\(s\), got 3"),
    ("DeepHandModelSolveScaleNormalizedGlobalLocation", 7,
     "deep_hand_model_solve_scale_normalized_global_location_param { joint_nums: 21 }",
     r"did you mean joint_num\?"),
    ("DeepHandModelSolveScaleNormalizedGlobalLocation", 6, "", r"takes 7 bottom\(s\), got 6"),
])
def test_author_types_errors(kind, nb, body, msg):
    shapes = ([(2, 42), (2, 21)] + [(2, 1)] * 5)[:nb]
    with pytest.raises(NetError, match=msg):
        mk(f'type: "{kind}" {body}', shapes, [f"b{i}" for i in range(nb)])


def test_author_camera_bottom_shape_error():
    with pytest.raises(NetError, match=r"bottom 4 \(u0\) must hold one value per sample"):
        mk('type: "DeepHandModelSolveScaleNormalizedGlobalZRoot"', [(2, 42), (2, 21), (2, 1), (2, 1), (2, 2), (2, 1)],
           [f"b{i}" for i in range(6)])


# The author's RawPaper tail (his layers, his bottoms) and the new layers, from the same 2.5D inputs.
AUTHOR_TAIL = """
name: "tail"
layer { name: "in" type: "Input" top: "crop_2d" top: "zr" top: "camera_k" top: "bbox" top: "avg_bone"
        input_param { shape { dim: 5 dim: 42 } shape { dim: 5 dim: 21 } shape { dim: 5 dim: 9 }
                      shape { dim: 5 dim: 4 } shape { dim: 5 dim: 20 } } }
layer { name: "slice_camera_k" bottom: "camera_k" top: "fx" top: "zero_0" top: "u0" top: "zero_1" top: "fy"
        top: "v0" top: "zero_2" top: "zero_3" top: "one" type: "Slice"
        slice_param { axis: 1 slice_point: 1 slice_point: 2 slice_point: 3 slice_point: 4 slice_point: 5
                      slice_point: 6 slice_point: 7 slice_point: 8 } }
layer { name: "k4" type: "Concat" bottom: "fx" bottom: "fy" bottom: "u0" bottom: "v0" top: "intrinsics" }
layer { name: "c2i" type: "CropToImage" bottom: "crop_2d" bottom: "bbox" top: "uv" }
layer { bottom: "uv" bottom: "zr" bottom: "fx" bottom: "fy" bottom: "u0" bottom: "v0" top: "pred_root_z"
        name: "pred_root_z" type: "DeepHandModelSolveScaleNormalizedGlobalZRoot"
        deep_hand_model_solve_scale_normalized_global_z_root_param { joint_num: 21 n: 8 m: 0 c: 1.0 } }
layer { bottom: "uv" bottom: "zr" bottom: "fx" bottom: "fy" bottom: "u0" bottom: "v0" bottom: "pred_root_z"
        top: "loc" name: "loc" type: "DeepHandModelSolveScaleNormalizedGlobalLocation"
        deep_hand_model_solve_scale_normalized_global_location_param { joint_num: 21 } }
layer { bottom: "loc" bottom: "avg_bone" top: "global_hand_scale" name: "ghs"
        type: "DeepHandModelSolveGlobalHandScale" }
layer { type: "ScaleVectorBySingleVector" bottom: "loc" bottom: "global_hand_scale" top: "old_3d" name: "old_3d" }
# the new layers
layer { name: "rd" type: "RootDepth" bottom: "uv" bottom: "zr" bottom: "intrinsics" top: "zroot" top: "clamped"
        top: "ambiguous" }
layer { name: "norm" type: "Reconstruct3D" bottom: "uv" bottom: "zr" bottom: "zroot" bottom: "intrinsics"
        top: "norm_3d" }
layer { name: "sr" type: "ScaleRecovery" bottom: "norm_3d" bottom: "avg_bone" top: "scale" }
layer { name: "metric" type: "Reconstruct3D" bottom: "uv" bottom: "zr" bottom: "zroot" bottom: "intrinsics"
        bottom: "scale" top: "joints_3d" }
"""


@pytest.mark.parametrize("device", DEVICES)
def test_authors_tail_equals_the_new_layers_and_recovers_gt(device):
    net = Net(textwrap.dedent(AUTHOR_TAIL), phase="TEST", device=device).double()   # float64 data: the net computes in float64
    assert net.blob_shapes["clamped"] == (1,) and net.blob_shapes["ambiguous"] == (5, 1)
    assert net.blob_shapes["joints_3d"] == net.blob_shapes["old_3d"] == (5, 63)
    joints, cams = random_hands(5, seed=10)
    uv, zr, s = to_25d(joints, cams)
    x1 = np.floor(uv.reshape(5, 21, 2).min(axis=1)) - 7
    side = np.ceil(np.ptp(uv.reshape(5, 21, 2), axis=1).max(axis=1)) + 15
    bbox = np.column_stack([x1, x1 + side[:, None] - 1])
    crop = ((uv.reshape(5, 21, 2) - x1[:, None]) / side[:, None, None]).reshape(5, 42)
    k9 = np.column_stack([cams[:, 0], np.zeros(5), cams[:, 2], np.zeros(5), cams[:, 1], cams[:, 3],
                          np.zeros(5), np.zeros(5), np.ones(5)])
    c = spec_quadratic(uv, zr, cams)[2]
    assert np.all(c < 0)
    # avg_bone: each hand's own bone lengths, so the recovered scale is the GT one
    net.forward(**dict(zip(("crop_2d", "zr", "camera_k", "bbox", "avg_bone"),
                           t64(crop, zr, k9, bbox, bone_lengths(joints)))))
    blobs = {k: v.detach().cpu().numpy() for k, v in net.blobs.items()}
    np.testing.assert_allclose(blobs["uv"], uv, rtol=1e-12)
    np.testing.assert_array_equal(blobs["pred_root_z"], blobs["zroot"])
    np.testing.assert_array_equal(blobs["loc"], blobs["norm_3d"])
    np.testing.assert_array_equal(blobs["global_hand_scale"], blobs["scale"])
    np.testing.assert_allclose(blobs["scale"][:, 0], s, rtol=1e-12)
    np.testing.assert_allclose(blobs["old_3d"], blobs["joints_3d"], rtol=1e-12)
    assert np.abs(blobs["joints_3d"] - joints.reshape(5, 63)).max() < 1e-6
    assert blobs["clamped"].tolist() == [0.0] and blobs["ambiguous"].sum() == 0


def test_image_to_crop_inverts_crop_to_image_and_projection_matches_pinhole():
    from layers.build import make_layer
    torch.manual_seed(1)
    bbox = torch.tensor([[10.0, 20.0, 109.0, 139.0], [0.0, 5.0, 63.0, 68.0]], dtype=torch.float64)
    crop = torch.rand(2, 42, dtype=torch.float64)
    to_img = make_layer('name: "a" type: "CropToImage" bottom: "j" bottom: "b" top: "p"', [(2, 42), (2, 4)])
    to_crop = make_layer('name: "b" type: "ImageToCrop" bottom: "p" bottom: "b" top: "j"', [(2, 42), (2, 4)])
    px = to_img(crop, bbox)
    assert px[0, 0].item() == pytest.approx(crop[0, 0].item() * 100 + 10)
    torch.testing.assert_close(to_crop(px, bbox), crop, rtol=0, atol=1e-12)
    xyz = torch.tensor([[30.0, -40.0, 500.0] * 21, [0.0, 0.0, 250.0] * 21], dtype=torch.float64)
    k = torch.tensor([[300.0, 310.0, 160.0, 150.0], [280.0, 280.0, 159.5, 161.0]], dtype=torch.float64)
    proj = make_layer('name: "p" type: "ProjectToImage" bottom: "x" bottom: "k" top: "uv"', [(2, 63), (2, 4)])
    uv = proj(xyz, k).view(2, 21, 2)
    assert uv[0, 3].tolist() == pytest.approx([300 * 30 / 500 + 160, 310 * -40 / 500 + 150])
    assert uv[1, 20].tolist() == pytest.approx([159.5, 161.0])
    x = xyz.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda a: proj(a, k), (x,))
