"""The latent 2.5D head (memo steps 13-15): SoftArgmax (SOFTMAX and SUM), LatentDepth, and the author's
EltAddChannels, DeepHandModelNormalizationResponse, DeepHandModelNumericalCoordinateRegression.

Closed forms (one-pixel maps, constant depth maps, GenHeatmap's peak convention), numpy references written
independently of the layers, the author's RawPaper chain in a Net against the new layers, float64 gradchecks,
and user errors."""

import textwrap

import numpy as np
import pytest
import torch

import layers.hand  # noqa: F401  (registers the hand layers)
from layers.build import make_layer
from layers.hand import latent
from layers.registry import get_layer_class
from netdef.errors import NetError, NetNote
from nets.net import Net

LB, UB = -3.269, 3.270
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def mk(body, shapes, bottoms=("x",), tops=("y",)):
    head = 'name: "l" ' + " ".join(f'bottom: "{b}"' for b in bottoms) + " " + \
        " ".join(f'top: "{t}"' for t in tops) + " "
    return make_layer(head + body, [tuple(s) for s in shapes], "TRAIN")


def soft_argmax(shape, body="", dtype=torch.float64):
    layer = mk('type: "SoftArgmax" ' + body, [shape], tops=("hn", "uv"))
    return layer.to(dtype)


def gradcheck(fn, *inputs):
    inputs = tuple(t.detach().double().requires_grad_(True) for t in inputs)
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6)


def delta_maps(b, k, h, w, seed=0):
    """One-pixel maps: 1 at a random (r, c) per (b, k), 0 elsewhere; returns maps and the (r, c) pairs."""
    rng = np.random.default_rng(seed)
    rows, cols = rng.integers(0, h, (b, k)), rng.integers(0, w, (b, k))
    maps = np.zeros((b, k, h, w))
    for i in range(b):
        for j in range(k):
            maps[i, j, rows[i, j], cols[i, j]] = 1.0
    return torch.tensor(maps), rows, cols


def expectation_loops(hn):
    """(B, K, H, W) weights -> (B, 2K) by plain loops over pixels: u = sum w c / W, v = sum w r / H."""
    b, k, h, w = hn.shape
    out = np.zeros((b, k, 2))
    for i in range(b):
        for j in range(k):
            for r in range(h):
                for c in range(w):
                    out[i, j, 0] += hn[i, j, r, c] * c / w
                    out[i, j, 1] += hn[i, j, r, c] * r / h
    return out.reshape(b, 2 * k)


# ---------------------------------------------------------------- registration

@pytest.mark.parametrize("name, cls", [
    ("SoftArgmax", latent.SoftArgmax), ("LatentDepth", latent.LatentDepth),
    ("EltAddChannels", latent.EltAddChannels),
    ("DeepHandModelNormalizationResponse", latent.DeepHandModelNormalizationResponse),
    ("DeepHandModelNumericalCoordinateRegression", latent.DeepHandModelNumericalCoordinateRegression)])
def test_registered_under_exact_type_names(name, cls):
    assert get_layer_class(name) is cls and cls.type_name == name


# ---------------------------------------------------------------- SoftArgmax (step 14)

def test_sum_mode_one_pixel_map_gives_that_pixel_exactly():
    # non-square 6 x 8: u' = c / W = c / 8, v' = r / H = r / 6
    maps, rows, cols = delta_maps(3, 4, 6, 8)
    hn, uv = soft_argmax((3, 4, 6, 8), "soft_argmax_param { normalization: SUM sigmoid: false }")(maps)
    want = np.stack([cols / 8.0, rows / 6.0], axis=-1).reshape(3, 8)
    np.testing.assert_array_equal(uv.numpy(), want)
    np.testing.assert_array_equal(hn.numpy(), maps.numpy())
    assert uv.shape == (3, 8) and hn.shape == (3, 4, 6, 8)


def test_softmax_with_huge_beta_approaches_the_one_pixel_coordinate():
    maps, rows, cols = delta_maps(2, 3, 5, 7, seed=1)
    layer = soft_argmax((2, 3, 5, 7), "soft_argmax_param { beta_filler { type: 'constant' value: 50 } }")
    _, uv = layer(maps)
    want = np.stack([cols / 7.0, rows / 5.0], axis=-1).reshape(2, 6)
    # the other 34 pixels each weigh exp(-50) ~ 2e-22 relative to the peak
    np.testing.assert_allclose(uv.detach().numpy(), want, rtol=0, atol=1e-15)
    # beta = 1: the 1-pixel still dominates only weakly: weight e / (e + 34)
    _, uv1 = soft_argmax((2, 3, 5, 7))(maps)
    assert np.abs(uv1.detach().numpy() - want).max() > 0.05


def test_softmax_equals_numpy_with_per_joint_beta():
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    layer = soft_argmax((2, 3, 4, 5), "soft_argmax_param { beta_filler { type: 'uniform' min: 0.5 max: 4 } }")
    beta = layer.beta.detach().numpy()
    assert beta.shape == (3,) and len(set(beta.tolist())) == 3 and np.all((beta >= 0.5) & (beta <= 4))
    hn, uv = layer(x)
    e = np.exp(beta[None, :, None, None] * x.numpy())
    ref = e / e.sum(axis=(2, 3), keepdims=True)
    np.testing.assert_allclose(hn.detach().numpy(), ref, rtol=1e-12)
    np.testing.assert_allclose(uv.detach().numpy(), expectation_loops(ref), rtol=1e-12)


def test_softmax_default_beta_is_one_and_learnable():
    layer = soft_argmax((1, 21, 8, 8), dtype=torch.float32)
    assert layer.blob_names == ["beta"] and torch.equal(layer.beta.detach(), torch.ones(21))
    assert [n for n, _ in layer.named_parameters()] == ["beta"]
    _, uv = layer(torch.randn(1, 21, 8, 8))
    uv.sum().backward()
    assert layer.beta.grad.shape == (21,) and torch.all(layer.beta.grad != 0)


def test_softmax_is_stable_for_large_scores_float32():
    # naive exp(120) overflows float32; the max-shifted softmax does not
    x = torch.zeros(1, 2, 4, 4)
    x[0, 0, 1, 2] = 120.0
    x[0, 1] = 300.0
    x[0, 1, 3, 0] = 200.0
    hn, uv = soft_argmax((1, 2, 4, 4), dtype=torch.float32)(x)
    assert torch.isfinite(hn).all() and torch.isfinite(uv).all()
    np.testing.assert_allclose(uv[0, :2].detach().numpy(), [2 / 4, 1 / 4], atol=1e-6)
    # channel 1: 15 pixels at 300 share the weight, the 200 one gets exp(-100) ~ 0
    cols = np.tile(np.arange(4), 4) / 4
    rows = np.repeat(np.arange(4), 4) / 4
    keep = np.ones(16, bool)
    keep[12] = False
    np.testing.assert_allclose(uv[0, 2:].detach().numpy(), [cols[keep].mean(), rows[keep].mean()], rtol=1e-6)


def test_sum_mode_with_sigmoid_equals_numpy():
    x = torch.randn(2, 3, 4, 6, dtype=torch.float64)
    hn, uv = soft_argmax((2, 3, 4, 6), "soft_argmax_param { normalization: SUM }")(x)
    s = 1.0 / (1.0 + np.exp(-x.numpy()))
    ref = s / s.sum(axis=(2, 3), keepdims=True)
    np.testing.assert_allclose(hn.numpy(), ref, rtol=1e-12)
    np.testing.assert_allclose(uv.numpy(), expectation_loops(ref), rtol=1e-12)
    assert soft_argmax((2, 3, 4, 6), "soft_argmax_param { normalization: SUM }").blob_names == []


@pytest.mark.parametrize("body", ["", "soft_argmax_param { normalization: SUM }",
                                  "soft_argmax_param { normalization: SUM sigmoid: false }"])
def test_normalised_maps_sum_to_one(body):
    x = torch.rand(3, 5, 7, 4, dtype=torch.float64) + 0.01
    hn, _ = soft_argmax((3, 5, 7, 4), body)(x)
    np.testing.assert_allclose(hn.detach().sum(dim=(2, 3)).numpy(), np.ones((3, 5)), rtol=1e-12)
    assert (hn >= 0).all()


def test_sum_mode_all_zero_map_gives_zeros_not_nan():
    x = torch.zeros(2, 2, 3, 3, dtype=torch.float64)
    x[1, 1, 2, 0] = 4.0                       # one ordinary map next to three all-zero ones
    x.requires_grad_(True)
    hn, uv = soft_argmax((2, 2, 3, 3), "soft_argmax_param { normalization: SUM sigmoid: false }")(x)
    assert torch.isfinite(hn).all() and torch.isfinite(uv).all()
    assert hn[0].abs().sum() == 0 and hn[1, 0].abs().sum() == 0
    np.testing.assert_array_equal(uv.detach().numpy(), [[0, 0, 0, 0], [0, 0, 0, 2 / 3]])
    (uv.sum() + hn.sum()).backward()
    assert torch.isfinite(x.grad).all()


def test_expectation_matches_genheatmap_peak_convention():
    # GenHeatmap puts u' = c / S on column c; a symmetric Gaussian well inside the map is read back exactly
    s = 64
    uv = torch.tensor([[26 / 64, 36 / 64, 0.5, 30 / 64]], dtype=torch.float64)
    gen = mk('type: "GenHeatmap" gen_heatmap_param { gen_size: 64 render_sigma: 0.05 }', [(1, 4)]).double()
    _, back = soft_argmax((1, 2, s, s), "soft_argmax_param { normalization: SUM sigmoid: false }")(gen(uv))
    np.testing.assert_allclose(back.detach().numpy(), uv.numpy(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("body", ["", "soft_argmax_param { beta_filler { type: 'uniform' min: 1 max: 3 } }",
                                  "soft_argmax_param { normalization: SUM }",
                                  "soft_argmax_param { normalization: SUM sigmoid: false }"])
def test_soft_argmax_gradcheck(body):
    layer = soft_argmax((2, 3, 4, 5), body)
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    if "false" in body:
        x = x.abs() + 0.1
    gradcheck(lambda t: layer(t), x)
    if not body or "beta" in body:   # and through beta
        beta = layer.beta.detach().clone()
        gradcheck(lambda t, b: torch.func.functional_call(layer, {"beta": b}, (t,)), x, beta)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_soft_argmax_keeps_dtype_and_device(device, dtype):
    layer = soft_argmax((2, 3, 4, 4), dtype=dtype).to(device)
    hn, uv = layer(torch.randn(2, 3, 4, 4, dtype=dtype, device=device))
    assert hn.dtype == uv.dtype == dtype and hn.device.type == uv.device.type == device


@pytest.mark.parametrize("body, shape, tops, msg", [
    ("", (2, 21, 64), ("hn", "uv"), r"bottom 0 \(heatmaps\) must be \(B, K, H, W\) maps; got shape \(2, 21, 64\)"),
    ("soft_argmax_param { sigmoid: false }", (2, 3, 4, 4), ("hn", "uv"),
     r"sigmoid applies to normalization: SUM only"),
    ("soft_argmax_param { normalization: SUM beta_filler { value: 2 } }", (2, 3, 4, 4), ("hn", "uv"),
     r"beta_filler applies to normalization: SOFTMAX only"),
    ("soft_argmax_param { normalization: SOFTARGMAX }", (2, 3, 4, 4), ("hn", "uv"), r"SOFTMAX"),
    ("soft_argmax_param { normalisation: SUM }", (2, 3, 4, 4), ("hn", "uv"), r"did you mean normalization\?"),
    ("", (2, 3, 4, 4), ("uv",), r"takes 2 top\(s\), got 1"),
])
def test_soft_argmax_errors(body, shape, tops, msg):
    with pytest.raises(NetError, match=msg):
        mk('type: "SoftArgmax" ' + body, [shape], tops=tops)


# ---------------------------------------------------------------- LatentDepth (step 15)

def test_constant_depth_map_gives_that_depth():
    hn, _ = soft_argmax((2, 3, 5, 5))(torch.randn(2, 3, 5, 5, dtype=torch.float64))
    z01 = torch.tensor([[0.0, 0.25, 1.0], [0.5, 0.75, 0.1]], dtype=torch.float64)
    d = z01[..., None, None].expand(2, 3, 5, 5)
    zr, back = mk('type: "LatentDepth"', [(2, 3, 5, 5)] * 2, bottoms=("hn", "d"), tops=("zr", "z01"))(hn, d)
    np.testing.assert_allclose(back.detach().numpy(), z01.numpy(), rtol=1e-12)
    np.testing.assert_allclose(zr.detach().numpy(), z01.numpy() * (UB - LB) + LB, rtol=1e-12, atol=1e-12)
    assert zr.detach()[0, 0].item() == pytest.approx(-3.269) and zr.detach()[0, 2].item() == pytest.approx(3.270)


def test_latent_depth_equals_numpy_and_custom_range():
    rng = np.random.default_rng(3)
    hn = rng.random((2, 4, 3, 6))
    hn /= hn.sum(axis=(2, 3), keepdims=True)
    d = rng.random((2, 4, 3, 6))
    layer = mk('type: "LatentDepth" latent_depth_param { depth_lower_bound: -2 depth_upper_bound: 6 }',
               [(2, 4, 3, 6)] * 2, bottoms=("hn", "d"), tops=("zr",))
    zr = layer(torch.tensor(hn), torch.tensor(d))
    ref = np.array([[sum(hn[i, k].ravel()[p] * d[i, k].ravel()[p] for p in range(18)) for k in range(4)]
                    for i in range(2)]) * 8.0 - 2.0
    np.testing.assert_allclose(zr.numpy(), ref, rtol=1e-12)


def test_latent_depth_reads_genheatmap_depth_at_the_peak():
    # one-pixel normalised maps read the depth map at that pixel: D = H * z01 with H = 1 at the peak
    uv = torch.tensor([[10 / 16, 3 / 16, 0.0, 15 / 16]], dtype=torch.float64)
    zr_true = torch.tensor([[1.5, -2.0]], dtype=torch.float64)
    heat = mk('type: "GenHeatmap" gen_heatmap_param { gen_size: 16 }', [(1, 4)]).double()(uv)
    dmap = mk('type: "GenDepthMap"', [(1, 2, 16, 16), (1, 2)], bottoms=("h", "z")).double()(heat, zr_true)
    hn, _ = soft_argmax((1, 2, 16, 16), "soft_argmax_param { beta_filler { value: 1e4 } }")(heat)
    zr = mk('type: "LatentDepth"', [(1, 2, 16, 16)] * 2, bottoms=("hn", "d"), tops=("zr",))(hn, dmap)
    np.testing.assert_allclose(zr.detach().numpy(), zr_true.numpy(), rtol=0, atol=1e-9)


def test_latent_depth_gradcheck():
    layer = mk('type: "LatentDepth"', [(2, 3, 4, 4)] * 2, bottoms=("hn", "d"), tops=("zr", "z01"))
    gradcheck(lambda a, b: layer(a, b), torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4, 4))


@pytest.mark.parametrize("body, shapes, tops, msg", [
    ("", [(2, 3, 4, 4), (2, 3, 4, 5)], ("zr",),
     r"bottom 1 \(depth maps\) must have the heatmaps' shape \(2, 3, 4, 4\); got shape \(2, 3, 4, 5\)"),
    ("", [(2, 3, 16), (2, 3, 16)], ("zr",), r"bottom 0 \(normalised heatmaps\) must be \(B, K, H, W\)"),
    ("latent_depth_param { depth_lower_bound: 2 depth_upper_bound: 1 }", [(2, 3, 4, 4)] * 2, ("zr",),
     r"depth_upper_bound \(1\) must be greater than depth_lower_bound \(2\)"),
    ("latent_depth_param { depth_upper_bond: 1 }", [(2, 3, 4, 4)] * 2, ("zr",), r"did you mean depth_upper_bound\?"),
    ("", [(2, 3, 4, 4)] * 2, ("a", "b", "c"), r"takes 1 to 2 top\(s\), got 3"),
])
def test_latent_depth_errors(body, shapes, tops, msg):
    with pytest.raises(NetError, match=msg):
        mk('type: "LatentDepth" ' + body, shapes, bottoms=("hn", "d"), tops=tops)


# ---------------------------------------------------------------- the author's types

def test_elt_add_channels_sums_the_inclusive_range():
    x = torch.randn(2, 5, 3, 4, dtype=torch.float64)
    y = mk('type: "EltAddChannels" elt_add_channels_param { dim_lb: 1 dim_ub: 3 }', [(2, 5, 3, 4)])(x)
    assert y.shape == (2, 1, 3, 4)
    np.testing.assert_allclose(y.numpy()[:, 0], x.numpy()[:, 1] + x.numpy()[:, 2] + x.numpy()[:, 3], rtol=1e-12)
    # defaults 0..0: channel 0 alone
    y0 = mk('type: "EltAddChannels"', [(2, 5, 3, 4)])(x)
    np.testing.assert_array_equal(y0.numpy(), x.numpy()[:, :1])


def test_elt_add_channels_gradient_reaches_only_the_range():
    x = torch.randn(1, 4, 2, 2, dtype=torch.float64, requires_grad=True)
    layer = mk('type: "EltAddChannels" elt_add_channels_param { dim_lb: 1 dim_ub: 2 }', [(1, 4, 2, 2)])
    layer(x).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy()[0, :, 0, 0], [0, 1, 1, 0])
    gradcheck(lambda t: layer(t), x)


@pytest.mark.parametrize("body, msg", [
    ("elt_add_channels_param { dim_lb: 0 dim_ub: 5 }", r"0 <= dim_lb <= dim_ub < 5"),
    ("elt_add_channels_param { dim_lb: 3 dim_ub: 1 }", r"dim_lb..dim_ub = 3..1 must satisfy"),
    ("elt_add_channels_param { dim_ubb: 1 }", r"did you mean dim_ub\?"),
])
def test_elt_add_channels_errors(body, msg):
    with pytest.raises(NetError, match=msg):
        mk('type: "EltAddChannels" ' + body, [(2, 5, 3, 4)])


def test_normalization_response_and_coordinate_regression_equal_soft_argmax_sum():
    x = torch.rand(2, 3, 5, 6, dtype=torch.float64) + 1e-3
    hn = mk('type: "DeepHandModelNormalizationResponse"', [(2, 3, 5, 6)])(x)
    uv = mk('type: "DeepHandModelNumericalCoordinateRegression"', [(2, 3, 5, 6)])(hn)
    ref = x.numpy() / x.numpy().sum(axis=(2, 3), keepdims=True)
    np.testing.assert_allclose(hn.numpy(), ref, rtol=1e-12)
    np.testing.assert_allclose(uv.numpy(), expectation_loops(ref), rtol=1e-12)
    hn2, uv2 = soft_argmax((2, 3, 5, 6), "soft_argmax_param { normalization: SUM sigmoid: false }")(x)
    np.testing.assert_array_equal(hn.numpy(), hn2.numpy())
    np.testing.assert_array_equal(uv.numpy(), uv2.numpy())


def test_coordinate_regression_gradient_reaches_every_channel():
    # the original's backward wrote every channel's gradient into channel 0: here d u'_k / d Hn_k(r, c) = c / W
    hn = torch.rand(1, 3, 2, 4, dtype=torch.float64, requires_grad=True)
    layer = mk('type: "DeepHandModelNumericalCoordinateRegression"', [(1, 3, 2, 4)])
    uv = layer(hn)
    uv[0, 4].backward()   # u' of channel 2
    want = np.zeros((3, 2, 4))
    want[2] = np.arange(4) / 4.0
    np.testing.assert_array_equal(hn.grad.numpy()[0], want)
    gradcheck(lambda t: layer(t), hn)
    gradcheck(lambda t: mk('type: "DeepHandModelNormalizationResponse"', [(1, 3, 2, 4)])(t), hn.detach() + 0.1)


@pytest.mark.parametrize("kind", ["DeepHandModelNormalizationResponse", "DeepHandModelNumericalCoordinateRegression"])
def test_author_map_layers_errors(kind):
    with pytest.raises(NetError, match=r"must be \(B, K, H, W\) maps; got shape \(2, 42\)"):
        mk(f'type: "{kind}"', [(2, 42)])
    with pytest.warns(NetNote, match=r"ignores scale_param"):
        mk(f'type: "{kind}" scale_param {{ }}', [(2, 3, 4, 4)])
    with pytest.raises(NetError, match=r"unknown param block 'hand_param'"):
        mk(f'type: "{kind}" hand_param {{ }}', [(2, 3, 4, 4)])


# The author's RawPaper head (two joints, 4 x 4 maps) against SoftArgmax + LatentDepth.
AUTHOR_HEAD = """
name: "head"
layer { name: "in" type: "Input" top: "out" input_param { shape { dim: 3 dim: 4 dim: 4 dim: 4 } } }
layer { name: "sig" type: "Sigmoid" bottom: "out" top: "out_sig" }
layer { name: "slice_map" bottom: "out_sig" top: "latent_heatmap" top: "latent_depthmap" type: "Slice"
        slice_param { axis: 1 } }
layer {	bottom: "latent_heatmap" top: "heatmap_norm" name: "norm_hm" type: "DeepHandModelNormalizationResponse" }
layer { bottom : "heatmap_norm" top: "pred_joint_2d" type: "DeepHandModelNumericalCoordinateRegression"
        name: "pred_joint_2d" }
layer { bottom: "heatmap_norm" bottom: "latent_depthmap" top: "elemulmap" name: "elemulmap" type: "Eltwise"
        eltwise_param { operation: PROD } }
layer { bottom: "elemulmap" top: "elemulmap_0" top: "elemulmap_1" name: "sl" type: "Slice" slice_param { axis: 1 } }
layer { bottom: "elemulmap_0" top: "r0" type: "Reshape" name: "r0"
        reshape_param { shape { dim: 0 dim: 16 dim: 1 dim: 1 } } }
layer { bottom: "elemulmap_1" top: "r1" type: "Reshape" name: "r1"
        reshape_param { shape { dim: 0 dim: 16 dim: 1 dim: 1 } } }
layer { type: "EltAddChannels" name: "e0" bottom: "r0" top: "d0" elt_add_channels_param { dim_lb: 0 dim_ub: 15 } }
layer { type: "EltAddChannels" name: "e1" bottom: "r1" top: "d1" elt_add_channels_param { dim_lb: 0 dim_ub: 15 } }
layer { type: "Flatten" bottom: "d0" top: "f0" name: "f0" }
layer { type: "Flatten" bottom: "d1" top: "f1" name: "f1" }
layer { type: "Concat" bottom: "f0" bottom: "f1" top: "rel_z" name: "rel_z" }
layer { type: "ScaleVector" bottom: "rel_z" top: "rel_z_s" name: "zs" scale_vector_param { scale_factor: 6.539 } }
layer { type: "AddVectorByConstant" bottom: "rel_z_s" top: "zr_old" name: "za"
        add_vector_by_constant_param { add_value: -3.26900 } }
# the new layers
layer { name: "sl2" type: "Slice" bottom: "out" top: "hm" top: "dm_raw" slice_param { axis: 1 } }
layer { name: "dm" type: "Sigmoid" bottom: "dm_raw" top: "dm" }
layer { name: "sa" type: "SoftArgmax" bottom: "hm" top: "hn" top: "uv" soft_argmax_param { normalization: SUM } }
layer { name: "ld" type: "LatentDepth" bottom: "hn" bottom: "dm" top: "zr" top: "z01" }
"""


@pytest.mark.parametrize("device", DEVICES)
def test_authors_head_equals_the_new_layers(device):
    net = Net(textwrap.dedent(AUTHOR_HEAD), phase="TEST", device=device).double()   # float64 data: the net computes in float64
    assert net.blob_shapes["d0"] == (3, 1, 1, 1) and net.blob_shapes["zr"] == net.blob_shapes["zr_old"] == (3, 2)
    net.forward(out=torch.randn(3, 4, 4, 4, dtype=torch.float64))
    b = {k: v.detach().cpu().numpy() for k, v in net.blobs.items()}
    np.testing.assert_allclose(b["uv"], b["pred_joint_2d"], rtol=1e-12)
    np.testing.assert_allclose(b["z01"], b["rel_z"], rtol=1e-12)
    np.testing.assert_allclose(b["zr"], b["zr_old"], rtol=1e-12, atol=1e-12)
