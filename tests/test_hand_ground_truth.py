"""Ground-truth layers (memo steps 8-11): HandScale, NormalizedRootDepth, GenHeatmap, GenDepthMap, the
author's types for them, and his vector arithmetic layers.

Closed forms and numpy loops (written independently of the layers' vectorised code), the author's own
layer chain from his RawPaper net against the new layers, float64 gradchecks, batches of different hands,
and user errors."""

import math
import textwrap

import numpy as np
import pytest
import torch

import layers.hand  # noqa: F401  (registers the hand layers)
from layers.build import make_layer
from layers.hand import ground_truth as gt
from layers.registry import get_layer_class
from netdef.errors import NetError
from nets.net import Net

LB, UB = -3.269, 3.270


def mk(body, shapes, bottoms=("x",), tops=("y",)):
    head = 'name: "l" ' + " ".join(f'bottom: "{b}"' for b in bottoms) + " " + \
        " ".join(f'top: "{t}"' for t in tops) + " "
    return make_layer(head + body, [tuple(s) for s in shapes], "TRAIN")


def hands(b, seed=0, dtype=torch.float64):
    """b plausible hands (b, 63) in mm: wrist near (0, 0, 500), joints within ~10 cm of it, so that every
    zr stays well inside the author's [-3.269, 3.270]."""
    rng = np.random.default_rng(seed)
    j = rng.normal(0.0, 25.0, size=(b, 21, 3))
    j[:, 0] = 0.0
    j[:, 8] = rng.uniform(60.0, 110.0, size=(b, 1)) * _unit(rng.normal(size=(b, 3)))
    j += np.array([0.0, 0.0, 500.0]) + rng.normal(0.0, 50.0, size=(b, 1, 3))
    return torch.tensor(j.reshape(b, 63), dtype=dtype)


def _unit(v):
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def gradcheck(fn, *inputs):
    inputs = tuple(t.detach().double().requires_grad_(True) for t in inputs)
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6)


# ---------------------------------------------------------------- registration

@pytest.mark.parametrize("name, cls", [
    ("HandScale", gt.HandScale), ("DeepHandModelCalcNormScale", gt.DeepHandModelCalcNormScale),
    ("NormalizedRootDepth", gt.NormalizedRootDepth), ("GenHeatmap", gt.GenHeatmap),
    ("DeepHandModelGenHeatmapAllChannels", gt.DeepHandModelGenHeatmapAllChannels),
    ("GenDepthMap", gt.GenDepthMap), ("DeepHandModelGenDepthMap", gt.DeepHandModelGenDepthMap),
    ("AddVectorBySingleVector", gt.AddVectorBySingleVector),
    ("ScaleVectorBySingleVector", gt.ScaleVectorBySingleVector),
    ("AddVectorByConstant", gt.AddVectorByConstant), ("ScaleVector", gt.ScaleVector)])
def test_registered_under_exact_type_names(name, cls):
    assert get_layer_class(name) is cls and cls.type_name == name


# ---------------------------------------------------------------- HandScale (step 8)

def test_hand_scale_of_a_known_hand_is_50():
    j = torch.zeros(1, 21, 3)
    j[0, :, 2] = 400.0
    j[0, 8] += torch.tensor([30.0, 40.0, 0.0])
    j[0, 3] = torch.tensor([7.0, -9.0, 123.0])   # other joints do not matter
    s = mk('type: "HandScale"', [(1, 63)])(j.reshape(1, 63))
    assert s.shape == (1, 1) and s.dtype == torch.float32
    assert s.item() == pytest.approx(50.0, abs=1e-5)


def test_hand_scale_each_sample_its_own():
    j = hands(5)
    s = mk('type: "HandScale"', [(5, 63)])(j)
    jn = j.numpy().reshape(5, 21, 3)
    want = [math.sqrt(sum((jn[b, 8, i] - jn[b, 0, i]) ** 2 for i in range(3))) for b in range(5)]
    np.testing.assert_allclose(s.numpy()[:, 0], want, rtol=1e-12)
    assert len(set(np.round(want, 6))) == 5   # five different scales


def test_hand_scale_other_bone():
    j = hands(3)
    s = mk('type: "HandScale" hand_scale_param { n: 12 m: 9 }', [(3, 63)])(j)
    jn = j.numpy().reshape(3, 21, 3)
    np.testing.assert_allclose(s.numpy()[:, 0], np.linalg.norm(jn[:, 12] - jn[:, 9], axis=1), rtol=1e-12)


def test_calc_norm_scale_alias_is_inverse_per_sample():
    # the original wrote 1/s of sample 0 for every sample; here each sample gets its own 1/s
    j = hands(5)
    inv = mk('type: "DeepHandModelCalcNormScale"', [(5, 63)])(j)
    s = mk('type: "HandScale"', [(5, 63)])(j)
    np.testing.assert_allclose((inv * s).numpy(), np.ones((5, 1)), rtol=1e-12)
    assert inv.shape == (5, 1) and inv[1, 0] != inv[0, 0]
    j1 = torch.zeros(1, 63)
    j1[0, 24:27] = torch.tensor([30.0, 40.0, 0.0])
    layer = mk('type: "DeepHandModelCalcNormScale" deep_hand_model_calc_norm_scale_param { n: 8 m: 0 }',
               [(1, 63)])
    assert layer(j1).item() == pytest.approx(0.02)


def test_hand_scale_gradcheck():
    gradcheck(mk('type: "HandScale"', [(3, 63)]), hands(3))
    gradcheck(mk('type: "DeepHandModelCalcNormScale"', [(2, 63)]), hands(2, seed=1))


@pytest.mark.parametrize("body, shape, msg", [
    ('type: "HandScale"', (2, 62), r"bottom 0 \(3D joints\) must be \(B, 3K\).*got shape \(2, 62\)"),
    ('type: "HandScale"', (2, 21, 3), r"must be \(B, 3K\)"),
    ('type: "HandScale" hand_scale_param { n: 21 }', (2, 63), r"n = 21 is not a joint of a 21-joint bottom"),
    ('type: "HandScale" hand_scale_param { m: -1 }', (2, 63), r"m = -1 is not a joint"),
    ('type: "HandScale" hand_scale_param { n: 0 }', (2, 63), r"n and m must be different joints"),
    ('type: "HandScale" hand_scale_param { nn: 3 }', (2, 63),
     r"unknown param 'nn' in hand_scale_param \(did you mean n\?\)"),
    ('type: "DeepHandModelCalcNormScale" hand_scale_param { n: 3 }', (2, 63),
     r"unknown param block 'hand_scale_param' \(this layer takes deep_hand_model_calc_norm_scale_param\)"),
])
def test_hand_scale_errors(body, shape, msg):
    with pytest.raises(NetError, match=msg):
        mk(body, [shape])


# ---------------------------------------------------------------- NormalizedRootDepth (step 9)

def test_normalized_root_depth_values():
    j = hands(5)
    s = mk('type: "HandScale"', [(5, 63)])(j)
    layer = mk('type: "NormalizedRootDepth"', [(5, 63), (5, 1)], bottoms=("j", "s"), tops=("z01", "zr"))
    z01, zr = layer(j, s)
    jn, sn = j.numpy().reshape(5, 21, 3), s.numpy()
    for b in range(5):
        for k in range(21):
            want = (jn[b, k, 2] - jn[b, 0, 2]) / sn[b, 0]
            assert zr[b, k].item() == pytest.approx(want, rel=1e-12, abs=1e-12)
            assert z01[b, k].item() == pytest.approx((want + 3.269) / 6.539, rel=1e-12)
    assert (zr[:, 0] == 0).all() and z01.shape == zr.shape == (5, 21)
    assert zr.abs().max() < 3.0   # the hands stay in range: nothing was clamped above


def test_normalized_root_depth_one_top_and_clamping_at_the_bounds():
    # scale 10 mm; Z - Z_root = 10 * zr for chosen zr values
    zr_want = [0.0, LB, UB, (LB + UB) / 2, -10.0, 10.0, LB - 1e-9, UB + 1e-9] + [0.5] * 13
    j = torch.zeros(1, 21, 3, dtype=torch.float64)
    j[0, :, 2] = 300.0 + 10.0 * torch.tensor(zr_want, dtype=torch.float64)
    layer = mk('type: "NormalizedRootDepth"', [(1, 63), (1, 1)], bottoms=("j", "s"), tops=("z01",))
    z01 = layer(j.reshape(1, 63), torch.tensor([[10.0]], dtype=torch.float64))
    assert isinstance(z01, torch.Tensor) and z01.shape == (1, 21) and z01.dtype == torch.float64
    got = z01[0, :8].tolist()
    assert got[1] == pytest.approx(0.0, abs=1e-12) and got[2] == pytest.approx(1.0, abs=1e-12)
    assert got[3] == pytest.approx(0.5)
    assert got[4:8] == [0.0, 1.0, 0.0, 1.0]
    assert got[0] == pytest.approx(3.269 / 6.539)


def test_normalized_root_depth_params():
    j = hands(2)
    s = torch.full((2, 1), 50.0, dtype=torch.float64)
    body = ('type: "NormalizedRootDepth" normalized_root_depth_param { root_joint_id: 4 '
            'depth_lower_bound: -2 depth_upper_bound: 6 }')
    z01, zr = mk(body, [(2, 63), (2, 1)], bottoms=("j", "s"), tops=("z01", "zr"))(j, s)
    z = j.numpy().reshape(2, 21, 3)[..., 2]
    want = (z - z[:, 4:5]) / 50.0
    np.testing.assert_allclose(zr.numpy(), want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(z01.numpy(), np.clip((want + 2) / 8, 0, 1), rtol=1e-12, atol=1e-12)


def test_normalized_root_depth_gradcheck():
    j, s = hands(3), torch.tensor([[80.0], [95.0], [70.0]])
    layer = mk('type: "NormalizedRootDepth"', [(3, 63), (3, 1)], bottoms=("j", "s"), tops=("z01", "zr"))
    gradcheck(layer, j, s)


@pytest.mark.parametrize("body, shapes, msg", [
    ('', [(2, 63), (3, 1)], r"bottom 1 \(scale\) must hold one value per sample, shape \(2, 1\); got shape \(3, 1\)"),
    ('', [(2, 63), (2, 2)], r"bottom 1 \(scale\) must hold one value per sample"),
    ('', [(2, 60, 1), (2, 1)], r"bottom 0 \(3D joints\) must be \(B, 3K\)"),
    ('normalized_root_depth_param { depth_lower_bound: 1 depth_upper_bound: 1 }', [(2, 63), (2, 1)],
     r"depth_upper_bound \(1\) must be greater than depth_lower_bound \(1\)"),
    ('normalized_root_depth_param { root_joint_id: 30 }', [(2, 63), (2, 1)], r"root_joint_id = 30 is not a joint"),
    ('normalized_root_depth_param { depth_upper_bond: 3 }', [(2, 63), (2, 1)],
     r"did you mean depth_upper_bound\?"),
])
def test_normalized_root_depth_errors(body, shapes, msg):
    with pytest.raises(NetError, match=msg):
        mk('type: "NormalizedRootDepth" ' + body, shapes, bottoms=("j", "s"), tops=("z01",))


def test_normalized_root_depth_three_tops_is_an_error():
    with pytest.raises(NetError, match=r"takes 1 to 2 top\(s\), got 3"):
        mk('type: "NormalizedRootDepth"', [(2, 63), (2, 1)], bottoms=("j", "s"), tops=("a", "b", "c"))


# ---------------------------------------------------------------- GenHeatmap (step 10)

def heatmap_loops(uv, size, sigma):
    """The SPEC's formula, one pixel at a time."""
    b, k2 = uv.shape
    out = np.zeros((b, k2 // 2, size, size))
    for n in range(b):
        for k in range(k2 // 2):
            u, v = uv[n, 2 * k], uv[n, 2 * k + 1]
            for r in range(size):
                for c in range(size):
                    out[n, k, r, c] = math.exp(-((c / size - u) ** 2 + (r / size - v) ** 2) / (2 * sigma ** 2))
    return out


@pytest.mark.parametrize("type_name, block", [("GenHeatmap", "gen_heatmap_param"),
                                              ("DeepHandModelGenHeatmapAllChannels",
                                               "deep_hand_model_gen_heatmap_all_channels_param")])
def test_heatmap_matches_the_pixel_formula(type_name, block):
    uv = torch.rand(2, 6, dtype=torch.float64) * 1.2 - 0.1    # some joints just outside the crop
    layer = mk(f'type: "{type_name}" {block} {{ gen_size: 7 render_sigma: 0.21 }}', [(2, 6)])
    h = layer(uv)
    assert h.shape == (2, 3, 7, 7) and h.dtype == torch.float64
    np.testing.assert_allclose(h.numpy(), heatmap_loops(uv.numpy(), 7, 0.21), rtol=1e-12, atol=1e-300)


def test_heatmap_defaults_are_the_authors_64_and_0_08():
    uv = torch.rand(1, 42, dtype=torch.float64)
    h = mk('type: "GenHeatmap"', [(1, 42)])(uv)
    assert h.shape == (1, 21, 64, 64)
    np.testing.assert_allclose(h[:, :2].numpy(), heatmap_loops(uv[:, :4].numpy(), 64, 0.08), rtol=1e-12)


def test_heatmap_peak_is_one_on_grid_points():
    s = 64
    rc = torch.randint(0, s, (5, 21, 2))                     # (row, col) per joint
    uv = torch.stack([rc[..., 1], rc[..., 0]], -1).double() / s
    h = mk('type: "GenHeatmap"', [(5, 42)])(uv.reshape(5, 42))
    b, k = torch.meshgrid(torch.arange(5), torch.arange(21), indexing="ij")
    assert (h[b, k, rc[..., 0], rc[..., 1]] == 1.0).all()
    assert (h <= 1.0).all()
    flat = h.reshape(5, 21, -1).argmax(-1)
    assert torch.equal(flat // s, rc[..., 0]) and torch.equal(flat % s, rc[..., 1])


def test_heatmap_argmax_is_the_nearest_pixel():
    s = 64
    uv = torch.rand(5, 21, 2, dtype=torch.float64) * (s - 1) / s
    frac = (uv * s) % 1
    uv = torch.where((frac - 0.5).abs() < 0.05, uv + 0.1 / s, uv)   # no ties between two pixels
    h = mk('type: "GenHeatmap" gen_heatmap_param { render_sigma: 0.05 }', [(5, 42)])(uv.reshape(5, 42))
    flat = h.reshape(5, 21, -1).argmax(-1)
    assert torch.equal(flat % s, torch.round(uv[..., 0] * s).long())
    assert torch.equal(flat // s, torch.round(uv[..., 1] * s).long())
    assert (h.amax((-1, -2)) < 1.0).all() and (h.amax((-1, -2)) > math.exp(-0.5 * (0.5 / 64 / 0.05) ** 2 * 2)).all()


def test_heatmap_sigma_is_in_crop_units():
    # joint on pixel (8, 8) of 32; sigma = 4 pixels = 0.125: one sigma away exp(-1/2), diagonal exp(-1)
    layer = mk('type: "GenHeatmap" gen_heatmap_param { gen_size: 32 render_sigma: 0.125 }', [(1, 2)])
    h = layer(torch.tensor([[0.25, 0.25]], dtype=torch.float64))[0, 0]
    assert h[8, 12].item() == pytest.approx(math.exp(-0.5), rel=1e-12)   # 4 columns right
    assert h[4, 8].item() == pytest.approx(math.exp(-0.5), rel=1e-12)    # 4 rows up
    assert h[12, 12].item() == pytest.approx(math.exp(-1.0), rel=1e-12)
    assert h[8, 16].item() == pytest.approx(math.exp(-2.0), rel=1e-12)


def test_heatmap_float32_and_batch_items_differ():
    uv = torch.rand(5, 42)
    h = mk('type: "GenHeatmap" gen_heatmap_param { gen_size: 16 }', [(5, 42)])(uv)
    assert h.dtype == torch.float32
    np.testing.assert_allclose(h.numpy(), heatmap_loops(uv.double().numpy(), 16, 0.08), rtol=1e-5, atol=1e-7)


def test_heatmap_gradcheck_wrt_2d():
    layer = mk('type: "GenHeatmap" gen_heatmap_param { gen_size: 5 render_sigma: 0.3 }', [(2, 4)])
    gradcheck(layer, torch.rand(2, 4, dtype=torch.float64))


@pytest.mark.parametrize("body, shape, msg", [
    ('', (2, 41), r"bottom must be \(B, 2K\) with u, v per joint.*got shape \(2, 41\)"),
    ('', (2, 21, 2), r"bottom must be \(B, 2K\)"),
    ('gen_heatmap_param { render_sigma: 0 }', (2, 42), r"render_sigma must be positive, got 0"),
    ('gen_heatmap_param { gen_size: 0 }', (2, 42), r"gen_size must be positive, got 0"),
    ('gen_heatmap_param { gen_size: 2.5 }', (2, 42), r"gen_size"),
    ('gen_heatmap_param { render_sigm: 0.1 }', (2, 42), r"did you mean render_sigma\?"),
])
def test_heatmap_errors(body, shape, msg):
    with pytest.raises(NetError, match=msg):
        mk('type: "GenHeatmap" ' + body, [shape])


# ---------------------------------------------------------------- GenDepthMap (step 11)

def test_depth_map_is_heatmap_times_mapped_depth():
    h = torch.rand(5, 21, 8, 8, dtype=torch.float64)
    zr = torch.randn(5, 21, dtype=torch.float64) * 3
    zr[0, :4] = torch.tensor([LB, UB, -9.0, 9.0], dtype=torch.float64)
    d = mk('type: "GenDepthMap"', [(5, 21, 8, 8), (5, 21)], bottoms=("h", "z"))(h, zr)
    z01 = np.clip((zr.numpy() + 3.269) / 6.539, 0, 1)
    np.testing.assert_allclose(d.numpy(), h.numpy() * z01[:, :, None, None], rtol=1e-12)
    assert (d[0, 0] == 0).all() and (d[0, 2] == 0).all() and torch.equal(d[0, 3], h[0, 3])


def test_depth_map_zero_far_from_the_joint():
    uv = torch.tensor([[0.125, 0.25] * 21])   # on pixel (r, c) = (16, 8)
    h = mk('type: "GenHeatmap"', [(1, 42)])(uv)
    zr = torch.full((1, 21), 1.0)
    d = mk('type: "GenDepthMap"', [(1, 21, 64, 64), (1, 21)], bottoms=("h", "z"))(h, zr)
    z01 = (1.0 + 3.269) / 6.539
    assert d[0, 0, 16, 8].item() == pytest.approx(z01, rel=1e-6)
    assert d[0, :, 50:, 40:].abs().max().item() < 1e-15   # >= 6.5 sigma away
    assert d.dtype == torch.float32


def test_depth_map_alias_keeps_the_original_semantics():
    # his net: z already in [0, 1] from the ScaleVector chain, bounds 0 and 1
    h = torch.rand(2, 3, 4, 4, dtype=torch.float64)
    z = torch.tensor([[0.25, -0.5, 1.5], [0.0, 1.0, 0.75]], dtype=torch.float64)
    d = mk('type: "DeepHandModelGenDepthMap" deep_hand_model_gen_depth_map_param { map_size: 4 joint_num: 3 '
           'depth_lower_bound: 0 depth_upper_bound: 1 }', [(2, 3, 4, 4), (2, 3)], bottoms=("h", "z"))(h, z)
    want = h.numpy() * np.clip(z.numpy(), 0, 1)[:, :, None, None]
    np.testing.assert_allclose(d.numpy(), want, rtol=1e-12)
    # default bounds are 0 and 1 too; other bounds map z first
    d0 = mk('type: "DeepHandModelGenDepthMap"', [(2, 3, 4, 4), (2, 3)], bottoms=("h", "z"))(h, z)
    assert torch.equal(d0, d)
    d2 = mk('type: "DeepHandModelGenDepthMap" deep_hand_model_gen_depth_map_param { depth_lower_bound: -1 '
            'depth_upper_bound: 3 }', [(2, 3, 4, 4), (2, 3)], bottoms=("h", "z"))(h, z)
    np.testing.assert_allclose(d2.numpy(), h.numpy() * np.clip((z.numpy() + 1) / 4, 0, 1)[:, :, None, None])


def test_depth_map_gradcheck():
    layer = mk('type: "GenDepthMap"', [(2, 3, 4, 4), (2, 3)], bottoms=("h", "z"))
    gradcheck(layer, torch.rand(2, 3, 4, 4), torch.rand(2, 3) * 4 - 2)


@pytest.mark.parametrize("body, shapes, msg", [
    ('type: "GenDepthMap"', [(2, 21, 8), (2, 21)], r"bottom 0 \(heatmaps\) must be \(B, K, H, W\)"),
    ('type: "GenDepthMap"', [(2, 21, 8, 8), (2, 20)],
     r"bottom 1 \(depth\) must be \(B, K\) = \(2, 21\) to match the heatmaps \(2, 21, 8, 8\); got shape \(2, 20\)"),
    ('type: "GenDepthMap"', [(2, 21, 8, 8), (3, 21)], r"bottom 1 \(depth\) must be \(B, K\)"),
    ('type: "GenDepthMap" gen_depth_map_param { depth_lower_bound: 2 depth_upper_bound: -2 }',
     [(2, 21, 8, 8), (2, 21)], r"depth_upper_bound \(-2\) must be greater than depth_lower_bound \(2\)"),
    ('type: "DeepHandModelGenDepthMap" deep_hand_model_gen_depth_map_param { map_size: 64 }',
     [(2, 21, 8, 8), (2, 21)], r"map_size 64 does not match the heatmaps' 8x8"),
    ('type: "DeepHandModelGenDepthMap" deep_hand_model_gen_depth_map_param { joint_num: 20 }',
     [(2, 21, 8, 8), (2, 21)], r"joint_num 20 does not match the bottoms' 21 joints"),
    ('type: "DeepHandModelGenDepthMap" deep_hand_model_gen_depth_map_param { map_sise: 8 }',
     [(2, 21, 8, 8), (2, 21)], r"did you mean map_size\?"),
])
def test_depth_map_errors(body, shapes, msg):
    with pytest.raises(NetError, match=msg):
        mk(body, shapes, bottoms=("h", "z"))


# ---------------------------------------------------------------- vector arithmetic

def test_vector_by_single_vector_per_sample():
    x = torch.randn(5, 7, dtype=torch.float64)
    a = torch.randn(5, 1, dtype=torch.float64)
    add = mk('type: "AddVectorBySingleVector"', [(5, 7), (5, 1)], bottoms=("x", "a"))(x, a)
    mul = mk('type: "ScaleVectorBySingleVector"', [(5, 7), (5, 1)], bottoms=("x", "a"))(x, a)
    xn, an = x.numpy(), a.numpy()
    for b in range(5):
        for i in range(7):
            assert add[b, i].item() == xn[b, i] + an[b, 0]
            assert mul[b, i].item() == xn[b, i] * an[b, 0]


def test_vector_by_constant():
    x = torch.randn(3, 4)
    y = mk('type: "AddVectorByConstant" add_vector_by_constant_param { add_value: 3.269 }', [(3, 4)])(x)
    np.testing.assert_allclose(y.numpy(), x.numpy() + np.float32(3.269), rtol=1e-6)
    y = mk('type: "ScaleVector" scale_vector_param { scale_factor: -0.001 }', [(3, 4)])(x)
    np.testing.assert_allclose(y.numpy(), x.numpy() * -0.001, rtol=1e-6)
    assert torch.equal(mk('type: "ScaleVector"', [(3, 4)])(x), x)
    assert torch.equal(mk('type: "AddVectorByConstant"', [(3, 4)])(x), x)


def test_scale_vector_by_single_vector_gradient_per_sample():
    # the original accumulated d/da at a[b + i] instead of a[b]
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    a = torch.randn(3, 1, dtype=torch.float64, requires_grad=True)
    layer = mk('type: "ScaleVectorBySingleVector"', [(3, 4), (3, 1)], bottoms=("x", "a"))
    dy = torch.randn(3, 4, dtype=torch.float64)
    layer(x, a).backward(dy)
    np.testing.assert_allclose(a.grad.numpy()[:, 0], (x.detach() * dy).sum(1).numpy(), rtol=1e-12)
    gradcheck(layer, x, a)
    gradcheck(mk('type: "AddVectorBySingleVector"', [(3, 4), (3, 1)], bottoms=("x", "a")), x, a)


@pytest.mark.parametrize("body, shapes, msg", [
    ('type: "AddVectorBySingleVector"', [(5, 7), (5, 2)], r"bottom 1 must hold one value per sample, shape \(5, 1\)"),
    ('type: "ScaleVectorBySingleVector"', [(5, 7), (4, 1)], r"bottom 1 must hold one value per sample"),
    ('type: "ScaleVectorBySingleVector"', [(5, 7, 2), (5, 1)], r"bottom 0 must be a \(B, N\) vector blob"),
    ('type: "ScaleVector" scale_vector_param { scale_facter: 2 }', [(5, 7)], r"did you mean scale_factor\?"),
    ('type: "AddVectorByConstant" add_vector_by_constant_param { add_value: "x" }', [(5, 7)], r"add_value"),
    ('type: "AddVectorBySingleVector"', [(5, 7)], r"takes 2 bottom\(s\), got 1"),
])
def test_vector_errors(body, shapes, msg):
    with pytest.raises(NetError, match=msg):
        mk(body, shapes, bottoms=("x", "a")[:len(shapes)])


# ---------------------------------------------------------------- the author's chain vs the new layers

AUTHOR_VS_NEW = """
name: "gt"
layer { name: "in" type: "Input" top: "joints" top: "uv"
        input_param { shape { dim: 5 dim: 63 } shape { dim: 5 dim: 42 } } }
# the author's RawPaper chain (x 0.001 to metres as he did: zr does not depend on the unit)
layer { name: "m" type: "ScaleVector" bottom: "joints" top: "joints_m" scale_vector_param { scale_factor: 0.001 } }
layer { name: "inv_s" type: "DeepHandModelCalcNormScale" bottom : "joints_m" top: "inv_s" }
layer { name: "j3" type: "Reshape" bottom: "joints_m" top: "j3" reshape_param { shape { dim: 0 dim: 21 dim: 3 } } }
layer { name: "xyz" type: "Slice" bottom: "j3" top: "x" top: "y" top: "z3" slice_param { axis: 2 } }
layer { name: "z" type: "Flatten" bottom: "z3" top: "z" }
layer { name: "root" type: "Slice" bottom: "z" top: "z_root" top: "z_rest" slice_param { slice_point: 1 } }
layer { name: "neg_root" type: "ScaleVector" bottom: "z_root" top: "neg_root" scale_vector_param { scale_factor: -1 } }
layer { name: "rel" type: "AddVectorBySingleVector" bottom: "z" bottom: "neg_root" top: "rel" }
layer { name: "zr_old" type: "ScaleVectorBySingleVector" bottom: "rel" bottom: "inv_s" top: "zr_old" }
layer { name: "plus" type: "AddVectorByConstant" bottom: "zr_old" top: "plus"
        add_vector_by_constant_param { add_value: 3.26900 } }
layer { name: "z01_old" type: "ScaleVector" bottom: "plus" top: "z01_old"
        scale_vector_param { scale_factor: 0.1529285823520416 } }
layer { bottom : "uv"	top: "hm_old"	name: "hm_old"	type: "DeepHandModelGenHeatmapAllChannels"
	deep_hand_model_gen_heatmap_all_channels_param { gen_size: 16	render_sigma: 0.08 } }
layer { type: "DeepHandModelGenDepthMap" bottom: "hm_old" bottom: "z01_old" top: "dm_old" name: "dm_old"
        deep_hand_model_gen_depth_map_param { map_size: 16 joint_num: 21
                                              depth_lower_bound: 0.0 depth_upper_bound: 1.0 } }
# the new layers
layer { name: "s" type: "HandScale" bottom: "joints" top: "s" }
layer { name: "d" type: "NormalizedRootDepth" bottom: "joints" bottom: "s" top: "z01" top: "zr" }
layer { name: "hm" type: "GenHeatmap" bottom: "uv" top: "hm" gen_heatmap_param { gen_size: 16 } }
layer { name: "dm" type: "GenDepthMap" bottom: "hm" bottom: "zr" top: "dm" }
"""

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_authors_chain_equals_the_new_layers(device):
    net = Net(textwrap.dedent(AUTHOR_VS_NEW), phase="TRAIN", device=device).double()   # float64 data: the net computes in float64
    assert net.blob_shapes["z01"] == net.blob_shapes["zr"] == (5, 21)
    assert net.blob_shapes["dm"] == net.blob_shapes["dm_old"] == (5, 21, 16, 16)
    joints, uv = hands(5, seed=3, dtype=torch.float32), torch.rand(5, 42)
    net.forward(joints=joints, uv=uv)
    b = {k: v.detach().cpu().double().numpy() for k, v in net.blobs.items()}
    np.testing.assert_allclose(b["inv_s"] * b["s"], 1000.0, rtol=1e-5)
    np.testing.assert_allclose(b["zr"], b["zr_old"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(b["z01"], b["z01_old"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(b["hm"], b["hm_old"], rtol=0, atol=0)
    np.testing.assert_allclose(b["dm"], b["dm_old"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(b["hm"], heatmap_loops(uv.double().numpy(), 16, 0.08), rtol=1e-5, atol=1e-7)
    assert net.blobs["dm"].device.type == device
