"""Pooling: Caffe's output-size rule (ceil/floor, the padding drop rule), MAX (with argmax top) and AVE
against a literal port of Caffe's CPU loops, STOCHASTIC against Caffe's GPU kernels, global pooling,
gradients and user errors."""

import math
import random
import re
import textwrap

import numpy as np
import pytest
import torch

from layers.build import make_layer
from layers.caffe.pooling import FLT_MAX, window_max
from netdef.errors import NetError
from nets.net import Net


def pool_layer(params, shape, tops=1, phase="TRAIN"):
    top = " ".join(f'top: "t{i}"' for i in range(tops))
    return make_layer(f'name: "pool" type: "Pooling" bottom: "x" {top} pooling_param {{ {params} }}',
                      [shape], phase)


def caffe_pool(x, pool, kh, kw, sh, sw, ph, pw, ceil=True):
    """Literal port of Caffe's PoolingLayer Reshape + Forward_cpu (MAX with top mask, AVE) and of the GPU
    StoPoolForwardTest kernel. Returns (top, mask)."""
    n_, c_, height, width = x.shape
    rnd = math.ceil if ceil else math.floor
    pooled_h = int(rnd(float(height + 2 * ph - kh) / sh)) + 1
    pooled_w = int(rnd(float(width + 2 * pw - kw) / sw)) + 1
    if ph or pw:
        if (pooled_h - 1) * sh >= height + ph:
            pooled_h -= 1
        if (pooled_w - 1) * sw >= width + pw:
            pooled_w -= 1
    if pooled_h <= 0 or pooled_w <= 0:
        return np.zeros((n_, c_, max(pooled_h, 0), max(pooled_w, 0))), None
    top = np.zeros((n_, c_, pooled_h, pooled_w))
    mask = np.full(top.shape, -1.0)
    for n in range(n_):
        for c in range(c_):
            plane = x[n, c].reshape(-1)
            for i in range(pooled_h):
                for j in range(pooled_w):
                    hstart, wstart = i * sh - ph, j * sw - pw
                    if pool == "MAX":
                        hend, wend = min(hstart + kh, height), min(wstart + kw, width)
                        hstart, wstart = max(hstart, 0), max(wstart, 0)
                        best = -FLT_MAX
                        for h in range(hstart, hend):
                            for w in range(wstart, wend):
                                if plane[h * width + w] > best:
                                    best = plane[h * width + w]
                                    mask[n, c, i, j] = h * width + w
                        top[n, c, i, j] = best
                    elif pool == "AVE":
                        hend, wend = min(hstart + kh, height + ph), min(wstart + kw, width + pw)
                        pool_size = (hend - hstart) * (wend - wstart)
                        hstart, wstart = max(hstart, 0), max(wstart, 0)
                        hend, wend = min(hend, height), min(wend, width)
                        total = 0.0
                        for h in range(hstart, hend):
                            for w in range(wstart, wend):
                                total += plane[h * width + w]
                        with np.errstate(invalid="ignore", divide="ignore"):
                            top[n, c, i, j] = np.float64(total) / pool_size
                    else:  # STOCHASTIC, TEST phase (no padding)
                        hend, wend = min(hstart + kh, height), min(wstart + kw, width)
                        cumsum = cumvalues = 0.0
                        for h in range(hstart, hend):
                            for w in range(wstart, wend):
                                cumsum += plane[h * width + w]
                                cumvalues += plane[h * width + w] ** 2
                        top[n, c, i, j] = cumvalues / cumsum if cumsum > 0 else 0.0
    return top, mask


def _cases():
    """(H, kh, sh, ph) x (W, kw, sw, pw) x round_mode: every 1-axis combination with H <= 7, kernel <= 4,
    stride <= 3, pad < kernel, paired with a random other combination for the W axis."""
    axis = [(n, k, s, p) for n in range(1, 8) for k in range(1, 5) for s in range(1, 4) for p in range(k)]
    rng = random.Random(0)
    return [(a, rng.choice(axis), mode) for a in axis for mode in ("CEIL", "FLOOR")]


def _params(pool, kh, kw, sh, sw, ph, pw, mode):
    return (f"pool: {pool} kernel_h: {kh} kernel_w: {kw} stride_h: {sh} stride_w: {sw} pad_h: {ph} pad_w: {pw} "
            f"round_mode: {mode}")


def test_max_and_ave_match_caffe_loops_on_many_geometries():
    checked = drop_rule = ceil_differs = 0
    for (h, kh, sh, ph), (w, kw, sw, pw), mode in _cases():
        ceil = mode == "CEIL"
        x = np.random.default_rng(h * 1000 + kh * 100 + sh * 10 + ph).standard_normal((1, 2, h, w))
        ref_max, ref_mask = caffe_pool(x, "MAX", kh, kw, sh, sw, ph, pw, ceil)
        ref_ave, _ = caffe_pool(x, "AVE", kh, kw, sh, sw, ph, pw, ceil)
        if min(ref_max.shape[2:]) <= 0:
            with pytest.raises(NetError, match="output size"):
                pool_layer(_params("MAX", kh, kw, sh, sw, ph, pw, mode), x.shape)
            continue
        checked += 1
        raw = (h + 2 * ph - kh) / sh + 1
        drop_rule += ph > 0 and ref_max.shape[2] < math.floor(raw) + (ceil and raw != int(raw))
        ceil_differs += ceil and raw != int(raw)
        t = torch.from_numpy(x)
        y, mask = pool_layer(_params("MAX", kh, kw, sh, sw, ph, pw, mode), x.shape, tops=2).double()(t)
        assert y.shape == ref_max.shape, (h, kh, sh, ph, w, kw, sw, pw, mode)
        np.testing.assert_array_equal(y.numpy(), ref_max)
        np.testing.assert_array_equal(mask.numpy(), ref_mask)
        single = pool_layer(_params("MAX", kh, kw, sh, sw, ph, pw, mode), x.shape).double()
        np.testing.assert_array_equal(single(t).numpy(), ref_max)                     # window_max path
        np.testing.assert_array_equal(single(t.clone().requires_grad_()).detach().numpy(), ref_max)
        ave = pool_layer(_params("AVE", kh, kw, sh, sw, ph, pw, mode), x.shape).double()(t)
        np.testing.assert_allclose(ave.numpy(), ref_ave, rtol=1e-12, atol=1e-14)
    assert checked > 300 and drop_rule > 20 and ceil_differs > 50  # the rules under test were exercised


def test_max_ties_pick_the_first_in_row_major_order_like_caffe():
    x = torch.randint(0, 3, (2, 3, 9, 8)).double()
    for params in ("kernel_size: 3 stride: 2", "kernel_size: 3 stride: 2 pad: 1", "kernel_size: 2 stride: 1"):
        layer = pool_layer(f"pool: MAX {params}", x.shape, tops=2)
        y, mask = layer(x)
        p = layer.p
        ref, ref_mask = caffe_pool(x.numpy(), "MAX", p.kernel_size, p.kernel_size, p.stride, p.stride, p.pad, p.pad)
        np.testing.assert_array_equal(y.numpy(), ref)
        np.testing.assert_array_equal(mask.numpy(), ref_mask)


def test_window_max_equals_max_pool2d_with_ties_infinities_and_nan():
    x = torch.randint(-2, 3, (2, 3, 11, 10)).float()
    x[0, 0, 2, 3], x[1, 2, 5, 5], x[1, 1, 0, 0] = float("nan"), float("inf"), -float("inf")
    for kernel, stride in (((3, 3), (1, 1)), ((3, 2), (2, 1)), ((1, 1), (2, 3)), ((4, 5), (3, 2)), ((11, 10), (1, 1))):
        want = torch.nn.functional.max_pool2d(x, kernel, stride)
        got = window_max(x, kernel, stride)
        assert got.shape == want.shape
        assert torch.equal(got.isnan(), want.isnan()) and torch.equal(got.nan_to_num(), want.nan_to_num())


def test_window_outside_the_image_gives_caffes_values():
    # H = 4, kernel 1, stride 2, no pad: ceil(3 / 2) + 1 = 3 rows, the last window starts at row 4 (outside)
    x = torch.randn(1, 1, 4, 4, dtype=torch.float64)
    y, mask = pool_layer("pool: MAX kernel_size: 1 stride: 2", x.shape, tops=2)(x)
    assert y.shape == (1, 1, 3, 3)
    assert (y[..., 2, :] == -FLT_MAX).all() and (mask[..., 2, :] == -1).all()
    np.testing.assert_array_equal(y[..., :2, :2].numpy(), x[..., ::2, ::2].numpy())
    ave = pool_layer("pool: AVE kernel_size: 1 stride: 2", x.shape)(x)
    assert torch.isnan(ave[..., 2, :]).all() and torch.isnan(ave[..., :, 2]).all()
    np.testing.assert_array_equal(ave[..., :2, :2].numpy(), x[..., ::2, ::2].numpy())


@pytest.mark.parametrize("size, params, out", [
    (55, "kernel_size: 3 stride: 2", 27),            # AlexNet pool1
    (27, "kernel_size: 3 stride: 2", 13),            # AlexNet pool2
    (13, "kernel_size: 3 stride: 2", 6),             # AlexNet pool5
    (112, "kernel_size: 3 stride: 2", 56),           # GoogLeNet pool1/3x3_s2, ResNet pool1 (ceil; floor: 55)
    (112, "kernel_size: 3 stride: 2 round_mode: FLOOR", 55),
    (28, "kernel_size: 3 stride: 1 pad: 1", 28),     # GoogLeNet inception pool (3x3, s1, pad 1)
    (14, "kernel_size: 3 stride: 2", 7),             # GoogLeNet pool4/3x3_s2
    (7, "kernel_size: 7 stride: 1 pool: AVE", 1),    # GoogLeNet / ResNet final average pool
    (5, "kernel_size: 2 stride: 2 pad: 1", 3),       # ceil(5 / 2) + 1 = 4, last window starts in padding: 3
    (6, "kernel_size: 3 stride: 2 pad: 1", 4),       # ceil(5 / 2) + 1 = 4 (window 3 starts at 5 < 6 + 1)
    (4, "kernel_size: 1 stride: 2", 3),              # no pad: no drop rule, even for an empty last window
    (2, "kernel_size: 3 stride: 2", 1),              # kernel larger than the input: ceil(-1 / 2) + 1 = 1
])
def test_caffe_output_sizes(size, params, out):
    shape = (2, 3, size, size + 1)
    layer = pool_layer(params, shape)
    ref, _ = caffe_pool(np.zeros((1, 1, size, size + 1)), "MAX", layer.kernel[0], layer.kernel[1],
                        *layer.stride, *layer.pad, ceil=layer.p.round_mode == "CEIL")
    assert layer.infer_top_shapes([shape])[0][:3] == (2, 3, out)
    assert layer.infer_top_shapes([shape])[0][2:] == ref.shape[2:]


def test_argmax_top_in_a_net():
    net = Net(textwrap.dedent("""
        layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 9 dim: 9 } } }
        layer { name: "pool" type: "Pooling" bottom: "data" top: "pool" top: "argmax"
                pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
    """), phase="TEST", device="cpu")
    assert net.blob_shapes["pool"] == net.blob_shapes["argmax"] == (2, 3, 4, 4)
    x = torch.randn(2, 3, 9, 9)
    out = net.forward(data=x)
    assert out["argmax"].dtype == torch.float32 and not out["argmax"].requires_grad
    picked = x.reshape(2, 3, 81).gather(2, out["argmax"].long().reshape(2, 3, 16)).reshape(2, 3, 4, 4)
    assert torch.equal(picked, out["pool"])


def test_pooling_mask_is_minus_one_where_nothing_beats_minus_flt_max():
    # Caffe keeps a value only when it is > -FLT_MAX: in double, values below it are never chosen
    x = torch.tensor([[[[-1e300, -1e300], [-FLT_MAX, 5.0]]]], dtype=torch.float64)
    y, mask = pool_layer("pool: MAX kernel_size: 1 stride: 1", x.shape, tops=2)(x)
    assert mask.flatten().tolist() == [-1, -1, -1, 3]
    assert y.flatten().tolist() == [-FLT_MAX, -FLT_MAX, -FLT_MAX, 5.0]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_pooling_mask_of_a_16_bit_input_is_exact_float32(dtype):
    x = torch.randn(1, 1, 64, 64).to(dtype)
    y, mask = pool_layer("pool: MAX kernel_size: 2 stride: 2", x.shape, tops=2)(x)
    assert mask.dtype == torch.float32
    rows, cols = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    assert ((mask // 64) // 2 == rows).all() and ((mask % 64) // 2 == cols).all()   # > 256: bf16 would round
    assert torch.equal(x.reshape(-1)[mask.long().reshape(-1)].reshape(y.shape), y)


def test_global_pooling_follows_the_bottom_size():
    x = torch.randn(2, 3, 5, 7, dtype=torch.float64)
    ave = pool_layer("pool: AVE global_pooling: true", x.shape)
    mx = pool_layer("global_pooling: true", x.shape)
    assert ave.infer_top_shapes([x.shape]) == [(2, 3, 1, 1)]
    np.testing.assert_allclose(ave(x).numpy(), x.mean(dim=(2, 3), keepdim=True).numpy(), rtol=1e-13)
    np.testing.assert_array_equal(mx(x).numpy(), x.amax(dim=(2, 3), keepdim=True).numpy())
    bigger = torch.randn(1, 3, 8, 6, dtype=torch.float64)  # Caffe re-derives the kernel at every Reshape
    np.testing.assert_allclose(ave(bigger).numpy(), bigger.mean(dim=(2, 3), keepdim=True).numpy(), rtol=1e-13)


def test_stochastic_test_phase_matches_caffe_gpu_kernel():
    x = torch.rand(2, 3, 8, 7, dtype=torch.float64)
    x[0, 0] = 0  # all-zero windows give 0
    layer = pool_layer("pool: STOCHASTIC kernel_size: 3 stride: 2", x.shape, phase="TEST")
    ref, _ = caffe_pool(x.numpy(), "STOCHASTIC", 3, 3, 2, 2, 0, 0)
    y = layer(x)
    assert y.shape == (2, 3, 4, 3)  # ceil: the last row of windows is clipped
    np.testing.assert_allclose(y.numpy(), ref, rtol=1e-12)
    assert (y[0, 0] == 0).all()
    assert torch.autograd.gradcheck(layer, (x[1:].clone().requires_grad_(),))  # away from sum = 0


def test_stochastic_train_samples_in_proportion_and_routes_the_gradient():
    # one 2x2 window per channel with values 1, 2, 3, 4: picked with probabilities 0.1, 0.2, 0.3, 0.4
    x = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64).reshape(1, 1, 2, 2).repeat(1, 20000, 1, 1)
    layer = pool_layer("pool: STOCHASTIC kernel_size: 2 stride: 2", x.shape, phase="TRAIN")
    y = layer(x)
    freq = torch.stack([(y == v).double().mean() for v in (1, 2, 3, 4)])
    np.testing.assert_allclose(freq.numpy(), [0.1, 0.2, 0.3, 0.4], atol=0.015)
    # ceil-mode windows clipped at the border; the gradient is 1 at the sampled input of each window only
    x = (torch.rand(2, 3, 7, 7, dtype=torch.float64) + 0.1).requires_grad_()
    layer = pool_layer("pool: STOCHASTIC kernel_size: 2 stride: 2", x.shape, phase="TRAIN")
    y = layer(x)
    assert y.shape == (2, 3, 4, 4)
    y.sum().backward()
    g = x.grad
    for i in range(4):
        for j in range(4):
            win_g = g[:, :, 2 * i:2 * i + 2, 2 * j:2 * j + 2].reshape(6, -1)
            win_x = x.detach()[:, :, 2 * i:2 * i + 2, 2 * j:2 * j + 2].reshape(6, -1)
            assert torch.equal(win_g.sum(1), torch.ones(6, dtype=torch.float64))
            assert torch.equal((win_g * win_x).sum(1), y[:, :, i, j].detach().reshape(6))


@pytest.mark.parametrize("params", [
    "pool: MAX kernel_size: 3 stride: 2 pad: 1",       # ceil rounding plus padding
    "pool: MAX kernel_h: 2 kernel_w: 3 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 0 round_mode: FLOOR",
    "pool: AVE kernel_size: 3 stride: 2 pad: 1",       # divisor counts the padding, not the overhang
    "pool: AVE kernel_size: 2 stride: 2 pad: 1",       # drop rule
])
def test_gradcheck(params):
    x = torch.randn(1, 2, 6, 5, dtype=torch.float64, requires_grad=True)
    layer = pool_layer(params, x.shape)
    assert torch.autograd.gradcheck(layer, (x,))


def test_ave_gradient_is_caffes_backward():
    """Caffe's AVE backward: each input gets top_diff / pool_size of every window that covers it."""
    x = torch.randn(1, 1, 5, 5, dtype=torch.float64, requires_grad=True)
    layer = pool_layer("pool: AVE kernel_size: 3 stride: 2 pad: 1", x.shape)
    y = layer(x)
    gy = torch.randn_like(y)
    y.backward(gy)
    ref = np.zeros((5, 5))
    for i in range(y.shape[2]):
        for j in range(y.shape[3]):
            hs, ws = i * 2 - 1, j * 2 - 1
            he, we = min(hs + 3, 6), min(ws + 3, 6)
            size = (he - hs) * (we - ws)
            ref[max(hs, 0):min(he, 5), max(ws, 0):min(we, 5)] += gy[0, 0, i, j].item() / size
    np.testing.assert_allclose(x.grad[0, 0].numpy(), ref, rtol=1e-12)


def test_float32_and_dtype_preserved():
    x = torch.randn(2, 3, 8, 8)
    for pool in ("MAX", "AVE", "STOCHASTIC"):
        y = pool_layer(f"pool: {pool} kernel_size: 3 stride: 2", x.shape)(x.abs())
        assert y.dtype == torch.float32 and y.shape == (2, 3, 4, 4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    x = torch.randint(0, 3, (2, 3, 11, 10)).double()  # ties: the mask must pick the same input on both
    for params in ("pool: MAX kernel_size: 3 stride: 2 pad: 1", "pool: AVE kernel_size: 3 stride: 2 pad: 1",
                   "pool: MAX kernel_size: 1 stride: 2"):
        tops = 2 if "MAX" in params else 1
        layer = pool_layer(params, x.shape, tops=tops)
        cpu = layer(x)
        gpu = layer.cuda()(x.cuda())
        for a, b in zip(cpu if tops == 2 else (cpu,), gpu if tops == 2 else (gpu,)):
            assert b.device.type == "cuda"
            np.testing.assert_allclose(b.cpu().numpy(), a.numpy(), rtol=1e-12)
    x = torch.rand(2, 3, 9, 9, device="cuda")
    assert pool_layer("pool: STOCHASTIC kernel_size: 3 stride: 2", x.shape).cuda()(x).device.type == "cuda"


@pytest.mark.parametrize("params, tops, shape, message", [
    ("pool: MAX kernel_size: 3 pad: 3", 1, (1, 1, 8, 8), "pad [3, 3] must be smaller than the kernel [3, 3]"),
    ("pool: AVE kernel_h: 3 kernel_w: 2 pad_h: 1 pad_w: 2", 1, (1, 1, 8, 8), "must be smaller than the kernel"),
    ("kernel_size: 3 kernel_h: 3 kernel_w: 3", 1, (1, 1, 8, 8), "give either kernel_size or kernel_h and kernel_w"),
    ("kernel_h: 3", 1, (1, 1, 8, 8), "give both kernel_h and kernel_w"),
    ("kernel_size: 3 pad_h: 1", 1, (1, 1, 8, 8), "give both pad_h and pad_w"),
    ("kernel_size: 3 stride: 2 stride_h: 1 stride_w: 1", 1, (1, 1, 8, 8), "give either stride or stride_h"),
    ("pool: MAX stride: 2", 1, (1, 1, 8, 8), "missing kernel_size"),
    ("kernel_size: 0", 1, (1, 1, 8, 8), "kernel size must be > 0"),
    ("kernel_size: 2 stride: 0", 1, (1, 1, 8, 8), "stride must be > 0"),
    ("global_pooling: true kernel_size: 3", 1, (1, 1, 8, 8), "kernel size cannot be given"),
    ("global_pooling: true pad: 1", 1, (1, 1, 8, 8), "only pad 0 and stride 1"),
    ("global_pooling: true stride: 2", 1, (1, 1, 8, 8), "only pad 0 and stride 1"),
    ("pool: AVE kernel_size: 2", 2, (1, 1, 8, 8), "only MAX pooling has a second top"),
    ("pool: STOCHASTIC kernel_size: 3 pad: 1", 1, (1, 1, 8, 8), "padding is implemented only for MAX and AVE"),
    ("kernel_size: 3", 1, (1, 8, 8), "bottom must have 4 axes (N, C, H, W), got shape (1, 8, 8)"),
    ("kernel_size: 5 round_mode: FLOOR", 1, (1, 1, 3, 8), "output size [-1, 4] <= 0 for the bottom's H x W [3, 8]"),
    ("kernal_size: 3", 1, (1, 1, 8, 8), "unknown param 'kernal_size' in pooling_param (did you mean kernel_size?)"),
    ("pool: MEAN kernel_size: 3", 1, (1, 1, 8, 8), "'pool' expects one of MAX, AVE, STOCHASTIC"),
    ("kernel_size: 3", 3, (1, 1, 8, 8), "takes 1 to 2 top(s), got 3"),
])
def test_user_errors(params, tops, shape, message):
    with pytest.raises(NetError, match=re.escape(message)) as info:
        pool_layer(params, shape, tops=tops)
    assert str(info.value).startswith("<layer>:1:") and "layer 'pool' (Pooling): " in str(info.value)


def test_runtime_input_too_small():
    layer = pool_layer("kernel_size: 3 round_mode: FLOOR", (1, 1, 8, 8))
    with pytest.raises(NetError, match=r"output size \[0, 0\] <= 0 for the bottom's H x W \[2, 2\]"):
        layer(torch.randn(1, 1, 2, 2))
