"""BatchNorm, Scale, Bias and LRN: formulas (numpy / literal loops), Caffe's blob layout and running-average
rule, phase behaviour, float64 gradcheck, and user errors."""

import numpy as np
import pytest
import torch
from torch.func import functional_call

from layers.build import make_layer
from netdef.errors import NetError
from nets.net import Net


def mk(body, shapes=((2, 3, 4, 5),), phase="TRAIN", bottoms=None):
    bottoms = bottoms or ["x", "g"][:len(shapes)]
    head = 'name: "l" ' + " ".join(f'bottom: "{b}"' for b in bottoms) + ' top: "y" '
    return make_layer(head + body, [tuple(s) for s in shapes], phase)


def gradcheck(fn, *inputs):
    inputs = tuple(t.detach().requires_grad_(True) for t in inputs)
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5)


def d64(*shape):
    return torch.randn(*shape, dtype=torch.float64)


# ---------------------------------------------------------------- BatchNorm

def np_batchnorm(x, eps):
    axes = (0,) + tuple(range(2, x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)   # biased
    return (x - mean) / np.sqrt(var + eps)


def test_batchnorm_blobs_are_caffes_three_buffers():
    bn = mk('type: "BatchNorm"', [(2, 3, 4, 5)])
    assert bn.blob_names == ["mean", "variance", "scale_factor"]
    assert [tuple(b.shape) for b in bn.caffe_blobs()] == [(3,), (3,), (1,)]
    assert all(float(b.abs().sum()) == 0 for b in bn.caffe_blobs())
    assert list(bn.parameters()) == []
    assert sorted(n for n, _ in bn.named_buffers() if not n.startswith("_")) == ["mean", "scale_factor", "variance"]


@pytest.mark.parametrize("shape", [(4, 3, 5, 6), (6, 2), (3, 2, 2, 3, 4)])
def test_batchnorm_train_formula_any_spatial_dims(shape):
    bn = mk('type: "BatchNorm" batch_norm_param { eps: 0.001 }', [shape])
    x = torch.randn(*shape, dtype=torch.float64) * 3 + 1
    y = bn(x)
    np.testing.assert_allclose(y.numpy(), np_batchnorm(x.numpy(), 0.001), rtol=1e-10, atol=1e-12)
    assert y.dtype == torch.float64


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_batchnorm_stored_sums_with_eps_follow_caffe(dtype):
    """The path with eps > 0 (ATen's batch_norm): the stored sums follow Caffe's rule step by step."""
    maf = 0.9
    bn = mk(f'type: "BatchNorm" batch_norm_param {{ moving_average_fraction: {maf} eps: 0.01 }}', [(3, 2, 4, 5)])
    sums = np.zeros(2), np.zeros(2), 0.0
    for step in range(3):
        x = torch.randn(3, 2, 4, 5, dtype=dtype) * (step + 1) + step
        y = bn(x)
        xn = x.double().numpy()
        mean, var = xn.mean(axis=(0, 2, 3)), xn.var(axis=(0, 2, 3))
        m = 3 * 4 * 5
        sums = sums[0] * maf + mean, sums[1] * maf + m / (m - 1) * var, sums[2] * maf + 1
        tol = 1e-12 if dtype == torch.float64 else 1e-5
        np.testing.assert_allclose(bn.mean.numpy(), sums[0], rtol=1e-6, atol=1e-6)     # the blobs are float32
        np.testing.assert_allclose(bn.variance.numpy(), sums[1], rtol=1e-6, atol=1e-6)
        assert bn.scale_factor.item() == pytest.approx(sums[2])
        np.testing.assert_allclose(y.double().numpy(), np_batchnorm(xn, 0.01), rtol=tol, atol=tol)


def test_batchnorm_default_use_global_stats_follows_phase():
    assert mk('type: "BatchNorm"', phase="TRAIN").use_global_stats is False
    assert mk('type: "BatchNorm"', phase="TEST").use_global_stats is True
    assert mk('type: "BatchNorm" batch_norm_param { use_global_stats: false }', phase="TEST").use_global_stats is False
    assert mk('type: "BatchNorm" batch_norm_param { use_global_stats: true }', phase="TRAIN").use_global_stats is True


def test_batchnorm_running_average_two_steps_by_hand():
    bn = mk('type: "BatchNorm" batch_norm_param { moving_average_fraction: 0.5 eps: 0 }', [(2, 1, 1, 2)])
    # step 1: values 1, 3, 5, 7 -> mean 4, biased var 5, m = 4 -> unbiased 20/3
    bn(torch.tensor([[[[1.0, 3.0]]], [[[5.0, 7.0]]]]))
    assert bn.scale_factor.tolist() == [1.0]
    assert bn.mean.tolist() == [4.0]
    assert bn.variance.tolist() == pytest.approx([20 / 3])
    # step 2: values 0, 2 -> mean 1, biased var 1, m = 2 -> unbiased 2
    bn(torch.tensor([[[[0.0, 2.0]]]]))
    assert bn.scale_factor.tolist() == [1.5]                      # 1 * 0.5 + 1
    assert bn.mean.tolist() == [3.0]                              # 4 * 0.5 + 1
    assert bn.variance.tolist() == pytest.approx([16 / 3])        # 20/3 * 0.5 + 2
    # global stats: mean 3 / 1.5 = 2, var (16/3) / 1.5 = 32/9
    test = mk('type: "BatchNorm" batch_norm_param { eps: 0 }', [(1, 1, 1, 2)], phase="TEST")
    test.load_state_dict(bn.state_dict())
    y = test(torch.tensor([[[[2.0, 6.0]]]]))
    assert y.flatten().tolist() == pytest.approx([0.0, 4 / np.sqrt(32 / 9)])


def test_batchnorm_m_equal_one_has_no_bias_correction():
    bn = mk('type: "BatchNorm" batch_norm_param { moving_average_fraction: 0.9 }', [(1, 2)])
    bn(torch.tensor([[3.0, -1.0]]))
    assert bn.mean.tolist() == [3.0, -1.0]
    assert bn.variance.tolist() == [0.0, 0.0]
    assert bn.scale_factor.tolist() == [1.0]


def test_batchnorm_test_phase_freezes_stats_and_uses_them():
    bn = mk('type: "BatchNorm"', [(2, 3, 2, 2)], phase="TEST")
    x = torch.randn(2, 3, 2, 2)
    # scale_factor 0: mean and variance read as 0 -> y = x / sqrt(eps)
    torch.testing.assert_close(bn(x), x / np.sqrt(1e-5))
    with torch.no_grad():
        bn.mean.copy_(torch.tensor([2.0, 4.0, 6.0]))
        bn.variance.copy_(torch.tensor([8.0, 2.0, 0.5]))
        bn.scale_factor.fill_(2.0)
    before = [b.clone() for b in bn.caffe_blobs()]
    y = bn(x)
    mean = torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1)
    var = torch.tensor([4.0, 1.0, 0.25]).view(1, 3, 1, 1)
    torch.testing.assert_close(y, (x - mean) / torch.sqrt(var + 1e-5))
    assert all(torch.equal(a, b) for a, b in zip(before, bn.caffe_blobs()))


def test_batchnorm_explicit_global_stats_in_train_does_not_update():
    bn = mk('type: "BatchNorm" batch_norm_param { use_global_stats: true }', [(2, 3)])
    bn(torch.randn(2, 3))
    assert bn.scale_factor.item() == 0 and bn.mean.abs().sum() == 0


def test_batchnorm_train_stats_update_without_grad_history():
    bn = mk('type: "BatchNorm"', [(4, 2, 3)])
    x = torch.randn(4, 2, 3, requires_grad=True)
    bn(x).pow(2).sum().backward()
    assert not bn.mean.requires_grad and bn.mean.grad_fn is None
    torch.testing.assert_close(bn.mean, x.detach().mean(dim=(0, 2)))
    assert bn.scale_factor.item() == 1.0


def test_batchnorm_shape_inference_does_not_touch_stats():
    bn = mk('type: "BatchNorm"', [(2, 3, 4)])
    assert bn.infer_top_shapes([(2, 3, 4)]) == [(2, 3, 4)]
    assert bn.scale_factor.item() == 0.0


def test_batchnorm_gradcheck_train_and_global():
    bn = mk('type: "BatchNorm"', [(3, 2, 2, 2)]).double()
    gradcheck(bn, d64(3, 2, 2, 2))
    glob = mk('type: "BatchNorm"', [(3, 2, 2, 2)], phase="TEST").double()
    with torch.no_grad():
        glob.mean.copy_(torch.tensor([0.5, -1.0]))
        glob.variance.copy_(torch.tensor([2.0, 0.3]))
        glob.scale_factor.fill_(1.7)
    gradcheck(glob, d64(3, 2, 2, 2))


def test_batchnorm_errors():
    with pytest.raises(NetError, match=r"at least 2 axes \(N, C, \.\.\.\), got shape \(5,\)"):
        mk('type: "BatchNorm"', [(5,)])
    with pytest.raises(NetError, match=r"did you mean moving_average_fraction"):
        mk('type: "BatchNorm" batch_norm_param { moving_average_fractoin: 0.9 }')
    with pytest.raises(NetError, match=r"'use_global_stats' expects"):
        mk('type: "BatchNorm" batch_norm_param { use_global_stats: 2 }')


def test_batchnorm_with_scale_in_a_net():
    text = """
        input: "x" input_shape { dim: 2 dim: 3 dim: 4 dim: 4 }
        layer { name: "bn" type: "BatchNorm" bottom: "x" top: "x"
                param { lr_mult: 0 } param { lr_mult: 0 } param { lr_mult: 0 } }
        layer { name: "sc" type: "Scale" bottom: "x" top: "x" scale_param { bias_term: true } }
    """
    net = Net(text, phase="TRAIN", device="cpu")
    assert [tuple(b.shape) for b in net.params["bn"]] == [(3,), (3,), (1,)]
    assert [tuple(b.shape) for b in net.params["sc"]] == [(3,), (3,)]
    x = torch.randn(2, 3, 4, 4)
    y = net.forward(x=x)["x"]
    np.testing.assert_allclose(y.detach().numpy(), np_batchnorm(x.numpy().astype(np.float64), 1e-5), atol=1e-5)
    assert net.params["bn"][2].item() == 1.0
    bad = text.replace("param { lr_mult: 0 } param { lr_mult: 0 } param { lr_mult: 0 }", "param { lr_mult: 1 }")
    with pytest.raises(NetError, match=r":3:\d+: layer 'bn' \(BatchNorm\): .*lr_mult must be 0"):
        Net(bad, device="cpu")


# ---------------------------------------------------------------- Scale

@pytest.mark.parametrize("params, gamma_shape, view", [
    ("", (3,), (1, 3, 1, 1)),
    ("axis: 0 num_axes: 2", (2, 3), (2, 3, 1, 1)),
    ("num_axes: -1", (3, 4, 5), (1, 3, 4, 5)),
    ("axis: 2 num_axes: 2", (4, 5), (1, 1, 4, 5)),
    ("axis: -1", (5,), (1, 1, 1, 5)),
    ("num_axes: 0", (), (1, 1, 1, 1)),
])
def test_scale_learned_gamma_shapes_and_formula(params, gamma_shape, view):
    layer = mk(f'type: "Scale" scale_param {{ {params} }}', [(2, 3, 4, 5)])
    assert layer.blob_names == ["gamma"]
    assert tuple(layer.gamma.shape) == gamma_shape
    assert torch.all(layer.gamma == 1)                  # default filler: constant 1
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    assert torch.equal(layer(x).detach(), x)
    g = np.random.default_rng(0).normal(size=gamma_shape)
    with torch.no_grad():
        layer.gamma.copy_(torch.from_numpy(g))
    np.testing.assert_allclose(layer(x).detach().numpy(), x.numpy() * g.reshape(view), rtol=1e-6)


def test_scale_bias_term_and_fillers():
    layer = mk('type: "Scale" scale_param { bias_term: true filler { value: 3 } '
               'bias_filler { type: "constant" value: -1 } }', [(2, 3, 4)])
    assert layer.blob_names == ["gamma", "beta"]
    assert layer.gamma.tolist() == [3.0, 3.0, 3.0] and layer.beta.tolist() == [-1.0, -1.0, -1.0]
    x = torch.randn(2, 3, 4)
    torch.testing.assert_close(layer(x), 3 * x - 1)
    default_bias = mk('type: "Scale" scale_param { bias_term: true }', [(2, 3, 4)])
    assert default_bias.beta.tolist() == [0.0, 0.0, 0.0]


def test_scale_second_bottom_is_gamma():
    layer = mk('type: "Scale"', [(2, 3, 4, 5), (3, 4)])
    assert layer.blob_names == []
    x, g = torch.randn(2, 3, 4, 5), torch.randn(3, 4)
    xn, gn = x.numpy(), g.numpy()
    want = np.empty_like(xn)
    for n in range(2):
        for c in range(3):
            for h in range(4):
                want[n, c, h] = xn[n, c, h] * gn[c, h]
    np.testing.assert_allclose(layer(x, g).numpy(), want, rtol=1e-6)
    assert layer.infer_top_shapes([(2, 3, 4, 5), (3, 4)]) == [(2, 3, 4, 5)]


def test_scale_second_bottom_with_bias_and_scalar():
    layer = mk('type: "Scale" scale_param { axis: 0 bias_term: true bias_filler { value: 0.5 } }',
               [(2, 3), (2,)])
    assert layer.blob_names == ["beta"] and tuple(layer.beta.shape) == (2,)
    x, g = torch.randn(2, 3), torch.tensor([2.0, -1.0])
    torch.testing.assert_close(layer(x, g), x * g[:, None] + 0.5)
    scalar = mk('type: "Scale"', [(2, 3), ()])
    torch.testing.assert_close(scalar(x, torch.tensor(4.0)), 4 * x)


def test_scale_gradcheck_learned_and_second_bottom():
    layer = mk('type: "Scale" scale_param { axis: 1 num_axes: 2 bias_term: true }', [(2, 3, 2, 2)]).double()
    gradcheck(lambda x, g, b: functional_call(layer, {"gamma": g, "beta": b}, (x,)), d64(2, 3, 2, 2), d64(3, 2), d64(3, 2))
    two = mk('type: "Scale" scale_param { bias_term: true }', [(2, 3, 2), (3,)]).double()
    gradcheck(lambda x, g, b: functional_call(two, {"beta": b}, (x, g)), d64(2, 3, 2), d64(3), d64(3))


@pytest.mark.parametrize("shapes, params, msg", [
    ([(2, 3, 4, 5), (4, 4)], "", r"second bottom has shape \(4, 4\) but must equal bottom\[0\]'s shape "
                                 r"\(2, 3, 4, 5\) from axis 1, i.e. \(3, 4\)"),
    ([(2, 3, 4, 5), (4, 5, 6)], "axis: 2", r"second bottom has shape \(4, 5, 6\).*from axis 2, i.e. \(4, 5\)"),
    ([(2, 3, 4, 5)], "num_axes: -2", r"num_axes must be >= 0, or -1"),
    ([(2, 3, 4, 5)], "axis: 2 num_axes: 3", r"scale blob's shape extends past bottom\[0\]'s shape \(2, 3, 4, 5\)"),
    ([(2, 3)], "axis: 2", r"axis 2 is out of range for a 2-D blob"),
    ([(2, 3)], "bias_trem: true", r"did you mean bias_term"),
])
def test_scale_errors(shapes, params, msg):
    with pytest.raises(NetError, match=msg) as info:
        mk(f'type: "Scale" scale_param {{ {params} }}', shapes)
    assert "layer 'l' (Scale)" in str(info.value)


def test_scale_second_bottom_mismatch_in_a_net():
    text = """
        input: "x" input_shape { dim: 2 dim: 3 dim: 4 }
        input: "g" input_shape { dim: 4 }
        layer { name: "sc" type: "Scale" bottom: "x" bottom: "g" top: "y" }
    """
    with pytest.raises(NetError, match=r"layer 'sc' \(Scale\): second bottom has shape \(4,\)"):
        Net(text, device="cpu")


# ---------------------------------------------------------------- Bias

def test_bias_learned_and_formula():
    layer = mk('type: "Bias" bias_param { axis: 1 num_axes: 2 filler { type: "constant" value: 0.5 } }',
               [(2, 3, 4)])
    assert layer.blob_names == ["bias"] and tuple(layer.bias.shape) == (3, 4)
    x = torch.randn(2, 3, 4)
    torch.testing.assert_close(layer(x), x + 0.5)
    b = torch.randn(3, 4)
    with torch.no_grad():
        layer.bias.copy_(b)
    np.testing.assert_allclose(layer(x).detach().numpy(), x.numpy() + b.numpy()[None], rtol=1e-6)
    assert torch.all(mk('type: "Bias"', [(2, 3)]).bias == 0)   # default filler constant 0


def test_bias_second_bottom():
    layer = mk('type: "Bias" bias_param { axis: -2 }', [(2, 3, 4, 5), (4, 5)])
    assert layer.blob_names == []
    x, b = torch.randn(2, 3, 4, 5), torch.randn(4, 5)
    np.testing.assert_allclose(layer(x, b).numpy(), x.numpy() + b.numpy()[None, None], rtol=1e-6)


def test_bias_gradcheck():
    layer = mk('type: "Bias"', [(2, 3, 2)]).double()
    gradcheck(lambda x, b: functional_call(layer, {"bias": b}, (x,)), d64(2, 3, 2), d64(3))
    two = mk('type: "Bias" bias_param { num_axes: 0 }', [(2, 3, 2), (3, 2)]).double()
    gradcheck(two, d64(2, 3, 2), d64(3, 2))


def test_bias_errors():
    with pytest.raises(NetError, match=r"second bottom has shape \(3, 3\) .* i.e. \(3, 2\)"):
        mk('type: "Bias"', [(2, 3, 2), (3, 3)])
    with pytest.raises(NetError, match=r"bias blob's shape extends past"):
        mk('type: "Bias" bias_param { num_axes: 4 }', [(2, 3, 2)])
    with pytest.raises(NetError, match=r"takes 1 to 2 bottom\(s\), got 3"):
        mk('type: "Bias"', [(2,), (2,), (2,)], bottoms=["a", "b", "c"])
    with pytest.raises(NetError, match=r"unknown param 'bias_term' in bias_param"):
        mk('type: "Bias" bias_param { bias_term: true }')


# ---------------------------------------------------------------- LRN

def lrn_across_loop(x, n, alpha, beta, k):
    N, C, H, W = x.shape
    y = np.empty_like(x)
    half = (n - 1) // 2
    for b in range(N):
        for c in range(C):
            for h in range(H):
                for w in range(W):
                    s = sum(x[b, j, h, w] ** 2 for j in range(c - half, c + half + 1) if 0 <= j < C)
                    y[b, c, h, w] = x[b, c, h, w] / (k + alpha / n * s) ** beta
    return y


def lrn_within_loop(x, n, alpha, beta):
    N, C, H, W = x.shape
    y = np.empty_like(x)
    half = (n - 1) // 2
    for b in range(N):
        for c in range(C):
            for h in range(H):
                for w in range(W):
                    s = sum(x[b, c, i, j] ** 2 for i in range(h - half, h + half + 1)
                            for j in range(w - half, w + half + 1) if 0 <= i < H and 0 <= j < W)
                    y[b, c, h, w] = x[b, c, h, w] / (1 + alpha / n ** 2 * s) ** beta
    return y


@pytest.mark.parametrize("n, alpha, beta, k", [(5, 2.0, 0.75, 1.5), (3, 0.5, 1.2, 2.0), (1, 1.0, 0.5, 1.0),
                                               (9, 1e-4, 0.75, 1.0)])
def test_lrn_across_channels_loop(n, alpha, beta, k):
    x = torch.randn(2, 7, 3, 2, dtype=torch.float64) * 2
    layer = mk(f'type: "LRN" lrn_param {{ local_size: {n} alpha: {alpha} beta: {beta} k: {k} }}', [x.shape])
    np.testing.assert_allclose(layer(x).numpy(), lrn_across_loop(x.numpy(), n, alpha, beta, k), rtol=1e-12)


@pytest.mark.parametrize("n, alpha, beta", [(3, 2.0, 0.75), (5, 0.7, 1.5), (1, 1.0, 0.75)])
def test_lrn_within_channel_loop_ignores_k(n, alpha, beta):
    x = torch.randn(1, 2, 4, 5, dtype=torch.float64) * 2
    want = lrn_within_loop(x.numpy(), n, alpha, beta)
    for k in (1.0, 7.0):
        layer = mk(f'type: "LRN" lrn_param {{ norm_region: WITHIN_CHANNEL local_size: {n} alpha: {alpha} '
                   f'beta: {beta} k: {k} }}', [x.shape])
        np.testing.assert_allclose(layer(x).numpy(), want, rtol=1e-12)


def test_lrn_within_channel_window_larger_than_image():
    x = torch.randn(1, 1, 2, 2, dtype=torch.float64)
    layer = mk('type: "LRN" lrn_param { norm_region: WITHIN_CHANNEL local_size: 7 }', [x.shape])
    np.testing.assert_allclose(layer(x).numpy(), lrn_within_loop(x.numpy(), 7, 1.0, 0.75), rtol=1e-12)
    assert layer.infer_top_shapes([(1, 1, 2, 2)]) == [(1, 1, 2, 2)]


def test_lrn_defaults_by_hand():
    # one pixel, channels 0,1,2 with x = 1,2,3; defaults n 5, alpha 1, beta .75, k 1: window holds all 3
    layer = mk('type: "LRN" lrn_param { engine: CAFFE }', [(1, 3, 1, 1)])
    y = layer(torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1)).flatten()
    d = (1 + 14 / 5) ** 0.75
    assert y.tolist() == pytest.approx([1 / d, 2 / d, 3 / d], rel=1e-6)
    assert layer(torch.zeros(1, 3, 1, 1, dtype=torch.float64)).dtype == torch.float64


def test_lrn_gradcheck_both_regions():
    for region in ("ACROSS_CHANNELS", "WITHIN_CHANNEL"):
        layer = mk(f'type: "LRN" lrn_param {{ local_size: 3 alpha: 1.5 beta: 0.8 norm_region: {region} }}',
                   [(1, 4, 3, 3)])
        gradcheck(layer, d64(1, 4, 3, 3))


@pytest.mark.parametrize("params, shape, msg", [
    ("local_size: 4", (1, 3, 4, 4), r"LRN only supports odd positive values for local_size, got 4"),
    ("local_size: 0", (1, 3, 4, 4), r"odd positive values for local_size, got 0"),
    ("", (3, 4, 4), r"bottom must have 4 axes \(num, channels, height, width\), got shape \(3, 4, 4\)"),
    ("norm_region: WITHIN", (1, 3, 4, 4), r"norm_region"),
    ("locl_size: 3", (1, 3, 4, 4), r"did you mean local_size"),
])
def test_lrn_errors(params, shape, msg):
    with pytest.raises(NetError, match=msg) as info:
        mk(f'type: "LRN" lrn_param {{ {params} }}', [shape])
    assert "layer 'l' (LRN)" in str(info.value)
