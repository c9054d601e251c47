"""Layer types from public Caffe forks (layers/forks): ConvolutionDepthwise / DepthwiseConvolution, ShuffleChannel,
Interp, Upsample (with Pooling's mask top), ROIPooling.

Each against a literal Python port of its fork's C++ loops (forward, and backward where the fork's differs from
autograd's adjoint), float64 gradchecks, blob and top shapes, the forks' size rules, one-line user errors, the
docstring examples, and a ShuffleNet block written as strawberryfg/RHDHand's train.prototxt writes them."""

import doctest
import importlib
import math
import re
import textwrap

import numpy as np
import pytest
import torch

from layers.build import make_layer
from layers.caffe.pooling import FLT_MAX
from netdef.errors import NetError
from nets.net import Net

FORK_MODULES = ("depthwise", "shuffle_channel", "interp", "upsample", "roi_pooling")


def mk(kind, block, shapes, tops=1, phase="TRAIN"):
    bottoms = " ".join(f'bottom: "b{i}"' for i in range(len(shapes)))
    top = " ".join(f'top: "t{i}"' for i in range(tops))
    return make_layer(f'name: "L" type: "{kind}" {bottoms} {top} {block}', [tuple(s) for s in shapes], phase)


def randomize(layer):
    layer.double()
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_()
    return layer


def expect_error(message, kind, block, shapes, tops=1):
    with pytest.raises(NetError, match=re.escape(message)) as info:
        mk(kind, block, shapes, tops)
    text = str(info.value)
    assert "\n" not in text and f"layer 'L' ({kind}): " in text
    return text


@pytest.mark.parametrize("module", FORK_MODULES)
def test_docstring_examples(module):
    mod = importlib.import_module(f"layers.forks.{module}")
    result = doctest.testmod(mod, optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


# ---------------------------------------------------------------- ConvolutionDepthwise

def dw_forward_caffe(x, weight, bias, kh, kw, sh, sw, ph, pw, dh, dw):
    """Literal port of sp2823's ConvolutionDepthwiseLayer::Reshape + Forward_cpu."""
    num, channels, height, width = x.shape
    top_h = (height + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
    top_w = (width + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
    bottom, w_flat = x.reshape(-1), weight.reshape(-1)
    top = np.zeros(num * channels * top_h * top_w)
    t = 0
    for n in range(num):
        for c in range(channels):
            for h in range(top_h):
                for w in range(top_w):
                    k = c * kh * kw
                    value = 0.0
                    for i in range(kh):
                        for j in range(kw):
                            h_in, w_in = -ph + h * sh + i * dh, -pw + w * sw + j * dw
                            if 0 <= h_in < height and 0 <= w_in < width:
                                value += w_flat[k] * bottom[((n * channels + c) * height + h_in) * width + w_in]
                            k += 1
                    top[t] = value
                    t += 1
    top = top.reshape(num, channels, top_h, top_w)
    if bias is not None:
        top += bias.reshape(1, -1, 1, 1)
    return top


def dw_backward_caffe(x, weight, top_diff, kh, kw, sh, sw, ph, pw, dh, dw):
    """Literal port of sp2823's Backward_cpu: (weight diff, bottom diff, bias diff)."""
    num, channels, height, width = x.shape
    _, _, top_h, top_w = top_diff.shape
    wd, bd = np.zeros(weight.size), np.zeros(x.size)
    bottom, w_flat, td = x.reshape(-1), weight.reshape(-1), top_diff.reshape(-1)
    t = 0
    for n in range(num):
        for c in range(channels):
            for h in range(top_h):
                for w in range(top_w):
                    k = c * kh * kw
                    for i in range(kh):
                        for j in range(kw):
                            h_in, w_in = -ph + h * sh + i * dh, -pw + w * sw + j * dw
                            if 0 <= h_in < height and 0 <= w_in < width:
                                off = ((n * channels + c) * height + h_in) * width + w_in
                                wd[k] += bottom[off] * td[t]
                                bd[off] += w_flat[k] * td[t]
                            k += 1
                    t += 1
    return wd.reshape(weight.shape), bd.reshape(x.shape), top_diff.sum(axis=(0, 2, 3))


@pytest.mark.parametrize("kind", ["ConvolutionDepthwise", "DepthwiseConvolution"])
@pytest.mark.parametrize("shape, params, geometry", [
    ((2, 3, 7, 6), "num_output: 3 kernel_size: 3 stride: 1 pad: 1", (3, 3, 1, 1, 1, 1, 1, 1)),
    ((1, 4, 9, 8), "num_output: 4 kernel_size: 3 stride: 2 pad: 1 bias_term: false", (3, 3, 2, 2, 1, 1, 1, 1)),
    ((2, 2, 8, 9), "kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 2 pad_w: 0 dilation: 2",
     (3, 2, 2, 1, 2, 0, 2, 2)),
    ((1, 5, 6, 6), "num_output: 5 kernel_size: 5 group: 5 pad: 1", (5, 5, 1, 1, 1, 1, 1, 1)),
])
def test_depthwise_matches_the_forks_loops(kind, shape, params, geometry):
    layer = mk(kind, f"convolution_param {{ {params} }}", [shape])
    top_shape = layer.infer_top_shapes([shape])[0]
    randomize(layer)
    c = shape[1]
    kh, kw = geometry[:2]
    assert layer.weight.shape == (c, 1, kh, kw)
    has_bias = "bias_term: false" not in params
    assert [n for n, _ in layer.named_parameters()] == (["weight", "bias"] if has_bias else ["weight"])
    if has_bias:
        assert layer.bias.shape == (c,)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    w = layer.weight.detach().numpy()
    b = layer.bias.detach().numpy() if has_bias else None
    want = dw_forward_caffe(x.detach().numpy(), w, b, *geometry)
    assert y.shape == want.shape == top_shape
    np.testing.assert_allclose(y.detach().numpy(), want, rtol=1e-12, atol=1e-12)
    gy = torch.randn_like(y)
    y.backward(gy)
    wd, bd, bias_d = dw_backward_caffe(x.detach().numpy(), w, gy.numpy(), *geometry)
    np.testing.assert_allclose(layer.weight.grad.numpy(), wd, rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(x.grad.numpy(), bd, rtol=1e-11, atol=1e-12)
    if has_bias:
        np.testing.assert_allclose(layer.bias.grad.numpy(), bias_d, rtol=1e-11, atol=1e-12)


def test_depthwise_is_convolution_with_group_c_and_shares_its_blobs():
    shape = (2, 6, 7, 7)
    dw = randomize(mk("ConvolutionDepthwise", "convolution_param { kernel_size: 3 stride: 2 pad: 1 }", [shape]))
    conv = mk("Convolution", "convolution_param { num_output: 6 group: 6 kernel_size: 3 stride: 2 pad: 1 }",
              [shape]).double()
    conv.load_state_dict(dw.state_dict())                 # same names and shapes: weights convert both ways
    x = torch.randn(shape, dtype=torch.float64)
    np.testing.assert_allclose(dw(x).detach().numpy(), conv(x).detach().numpy(), rtol=1e-13, atol=1e-13)


def test_depthwise_ignores_group_and_defaults_num_output_to_c():
    # strawberryfg/RHDHand's resx22_conv2: num_output 30 on 30 channels with group: 3 (the fork reads neither)
    shape = (1, 30, 5, 5)
    with_group = mk("ConvolutionDepthwise", "convolution_param { num_output: 30 kernel_size: 3 stride: 1 pad: 1 "
                                           "group: 3 bias_term: false }", [shape])
    without = mk("ConvolutionDepthwise", "convolution_param { kernel_size: 3 pad: 1 bias_term: false }", [shape])
    assert with_group.weight.shape == without.weight.shape == (30, 1, 3, 3)
    assert with_group.infer_top_shapes([shape]) == [(1, 30, 5, 5)]


def test_depthwise_gradcheck():
    layer = randomize(mk("ConvolutionDepthwise", "convolution_param { kernel_size: 3 stride: 2 pad: 1 dilation: 1 }",
                         [(1, 3, 6, 5)]))
    x = torch.randn(1, 3, 6, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x,))
    assert torch.autograd.gradcheck(lambda w, b: torch.nn.functional.conv2d(x, w, b, 2, 1, 1, 3),
                                    (layer.weight.detach().clone().requires_grad_(),
                                     layer.bias.detach().clone().requires_grad_()))


@pytest.mark.parametrize("block, shape, message", [
    ("convolution_param { num_output: 8 kernel_size: 3 }", (1, 4, 6, 6),
     "num_output 8 must equal the bottom's 4 channels"),
    ("convolution_param { num_output: 4 }", (1, 4, 6, 6), "missing kernel_size"),
    ("convolution_param { kernel_size: 7 }", (1, 4, 6, 6), "kernel extent 7 is larger than the padded input"),
    ("convolution_param { kernel_size: 3 stride: 0 }", (1, 4, 6, 6), "stride must be >= 1"),
    ("convolution_param { kernal_size: 3 }", (1, 4, 6, 6), "unknown param 'kernal_size' in convolution_param"),
])
def test_depthwise_user_errors(block, shape, message):
    expect_error(message, "ConvolutionDepthwise", block, [shape])


# ---------------------------------------------------------------- ShuffleChannel

def shuffle_caffe(x, group, backward=False):
    """Literal port of the fork's Resize_cpu as Forward_cpu (group_row = group) and Backward_cpu (group_row =
    C / group) call it, on each sample."""
    num, chs = x.shape[:2]
    sp = int(np.prod(x.shape[2:]))
    rows, cols = (chs // group, group) if backward else (group, chs // group)
    src = x.reshape(num, -1)
    out = np.zeros_like(src)
    for n in range(num):
        for i in range(rows):
            for j in range(cols):
                out[n, (j * rows + i) * sp:(j * rows + i + 1) * sp] = src[n, (i * cols + j) * sp:(i * cols + j + 1) * sp]
    return out.reshape(x.shape)


@pytest.mark.parametrize("shape, group", [((2, 6, 3, 4), 3), ((1, 12, 2, 2), 4), ((2, 8, 5), 2), ((1, 5, 2, 2), 1),
                                          ((1, 7, 1, 1), 7), ((3, 240, 2, 3), 3)])
def test_shuffle_channel_matches_the_forks_loops(shape, group):
    layer = mk("ShuffleChannel", f"shuffle_channel_param {{ group: {group} }}", [shape])
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    assert y.shape == x.shape and layer.infer_top_shapes([shape]) == [shape]
    np.testing.assert_array_equal(y.detach().numpy(), shuffle_caffe(x.detach().numpy(), group))
    gy = torch.randn_like(y)
    y.backward(gy)
    np.testing.assert_array_equal(x.grad.numpy(), shuffle_caffe(gy.numpy(), group, backward=True))
    # (N, g, C/g, ...) -> (N, C/g, g, ...): channel j * g + i of y is channel i * (C/g) + j of x
    c = shape[1]
    for i in range(group):
        for j in range(c // group):
            assert torch.equal(y[:, j * group + i], x[:, i * (c // group) + j])


def test_shuffle_channel_default_group_is_identity_and_gradcheck():
    x = torch.randn(2, 6, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.equal(mk("ShuffleChannel", "", [x.shape])(x), x)
    assert torch.autograd.gradcheck(mk("ShuffleChannel", "shuffle_channel_param { group: 2 }", [x.shape]), (x,))


@pytest.mark.parametrize("block, shape, message", [
    ("shuffle_channel_param { group: 4 }", (1, 6, 2, 2), "the bottom's 6 channels are not divisible by group 4"),
    ("shuffle_channel_param { group: 0 }", (1, 6, 2, 2), "group must be > 0, got 0"),
    ("shuffle_channel_param { group: 2 }", (6,), "bottom must have at least 2 axes"),
    ("shuffle_channel_param { groups: 2 }", (1, 6, 2, 2), "unknown param 'groups' in shuffle_channel_param"),
])
def test_shuffle_channel_user_errors(block, shape, message):
    expect_error(message, "ShuffleChannel", block, [shape])


def test_shuffle_channel_runtime_channels_not_divisible():
    layer = mk("ShuffleChannel", "shuffle_channel_param { group: 3 }", [(1, 6, 2, 2)])
    with pytest.raises(NetError, match="the bottom's 8 channels are not divisible by group 3"):
        layer(torch.randn(1, 8, 2, 2))


# ---------------------------------------------------------------- Interp

def interp2_caffe(data1, x1, y1, height1, width1, height2, width2, backward_of=None):
    """Literal port of caffe_cpu_interp2<Dtype, false> (and, with backward_of = the top diff,
    caffe_cpu_interp2_backward) for one (Height1, Width1) plane per channel; the ratio, r and lambda in float32
    as the C++ float variables."""
    channels = data1.shape[0]
    f32 = np.float32
    if backward_of is None:
        data2 = np.zeros((channels, height2, width2))
    else:
        data2, data1 = backward_of, np.zeros_like(data1)
    if height1 == height2 and width1 == width2:
        for h2 in range(height2):
            for w2 in range(width2):
                if backward_of is None:
                    data2[:, h2, w2] = data1[:, y1 + h2, x1 + w2]
                else:
                    data1[:, y1 + h2, x1 + w2] += data2[:, h2, w2]
        return data2 if backward_of is None else data1
    rheight = f32(height1 - 1) / f32(height2 - 1) if height2 > 1 else f32(0)
    rwidth = f32(width1 - 1) / f32(width2 - 1) if width2 > 1 else f32(0)
    for h2 in range(height2):
        h1r = f32(rheight * f32(h2))
        h1 = int(h1r)
        h1p = 1 if h1 < height1 - 1 else 0
        h1lambda = float(f32(h1r - f32(h1)))
        h0lambda = 1.0 - h1lambda
        for w2 in range(width2):
            w1r = f32(rwidth * f32(w2))
            w1 = int(w1r)
            w1p = 1 if w1 < width1 - 1 else 0
            w1lambda = float(f32(w1r - f32(w1)))
            w0lambda = 1.0 - w1lambda
            r, c = y1 + h1, x1 + w1
            if backward_of is None:
                data2[:, h2, w2] = (h0lambda * (w0lambda * data1[:, r, c] + w1lambda * data1[:, r, c + w1p])
                                    + h1lambda * (w0lambda * data1[:, r + h1p, c] + w1lambda * data1[:, r + h1p, c + w1p]))
            else:
                d = data2[:, h2, w2]
                data1[:, r, c] += h0lambda * w0lambda * d
                data1[:, r, c + w1p] += h0lambda * w1lambda * d
                data1[:, r + h1p, c] += h1lambda * w0lambda * d
                data1[:, r + h1p, c + w1p] += h1lambda * w1lambda * d
    return data2 if backward_of is None else data1


def interp_size_caffe(h_eff, p):
    """The fork's Reshape rules along one axis (p: the given interp_param fields)."""
    if "shrink_factor" in p and "zoom_factor" not in p:
        return (h_eff - 1) // p["shrink_factor"] + 1
    if "zoom_factor" in p and "shrink_factor" not in p:
        return h_eff + (h_eff - 1) * (p["zoom_factor"] - 1)
    if "height" in p and "width" in p:
        return p["height"]
    out = (h_eff - 1) // p["shrink_factor"] + 1
    return out + (out - 1) * (p["zoom_factor"] - 1)


@pytest.mark.parametrize("shape, fields", [
    ((2, 3, 5, 7), dict(zoom_factor=2)),
    ((1, 2, 9, 6), dict(zoom_factor=3, pad_beg=-1, pad_end=-1)),
    ((1, 2, 9, 9), dict(shrink_factor=2)),
    ((1, 2, 10, 7), dict(shrink_factor=3, zoom_factor=4)),
    ((1, 3, 6, 5), dict(height=13, width=11)),
    ((1, 3, 6, 5), dict(height=4, width=2)),          # downsampling
    ((1, 3, 6, 5), dict(height=1, width=9)),          # a single row: ratio 0
    ((1, 3, 6, 5), dict(height=6, width=5)),          # same size: the copy path
    ((1, 2, 8, 8), dict(height=6, width=6, pad_beg=-1, pad_end=-1)),   # crop to 6 x 6 then copy
    ((1, 2, 8, 8), dict(shrink_factor=2, height=100, width=100)),       # shrink alone wins over height/width
    ((1, 1, 11, 11), dict(zoom_factor=8)),            # DeepLab's fc8 -> labels: zoom 8 (41 -> 321 there)
])
def test_interp_matches_the_forks_loops(shape, fields):
    block = "interp_param { " + " ".join(f"{k}: {v}" for k, v in fields.items()) + " }"
    layer = mk("Interp", block, [shape])
    pad_beg, pad_end = fields.get("pad_beg", 0), fields.get("pad_end", 0)
    h_eff, w_eff = shape[2] + pad_beg + pad_end, shape[3] + pad_beg + pad_end
    out_h = interp_size_caffe(h_eff, fields)
    out_w = interp_size_caffe(w_eff, {**fields, "height": fields.get("width")})
    assert layer.infer_top_shapes([shape]) == [(shape[0], shape[1], out_h, out_w)]
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    assert y.shape == (shape[0], shape[1], out_h, out_w)
    planes = x.detach().numpy().reshape(-1, shape[2], shape[3])
    want = interp2_caffe(planes, -pad_beg, -pad_beg, h_eff, w_eff, out_h, out_w)
    np.testing.assert_allclose(y.detach().numpy().reshape(want.shape), want, rtol=1e-14, atol=1e-14)
    gy = torch.randn_like(y)
    y.backward(gy)
    want_dx = interp2_caffe(planes, -pad_beg, -pad_beg, h_eff, w_eff, out_h, out_w,
                            backward_of=gy.numpy().reshape(-1, out_h, out_w))
    np.testing.assert_allclose(x.grad.numpy().reshape(want_dx.shape), want_dx, rtol=1e-12, atol=1e-13)


def test_interp_float32_coordinates_are_caffes():
    # 4 -> 11: ratio 3/10 in float32 is not 0.3; r = 0.3f * 10 rounds to exactly 3, so the last sample is pure
    x = torch.arange(4.0, dtype=torch.float64).view(1, 1, 1, 4) ** 2
    y = mk("Interp", "interp_param { height: 1 width: 11 }", [x.shape])(x)
    want = interp2_caffe(x.numpy().reshape(1, 1, 4), 0, 0, 1, 4, 1, 11)
    np.testing.assert_array_equal(y.numpy().reshape(want.shape), want)
    r = np.float32(np.float32(3) / np.float32(10)) * np.float32(np.arange(11, dtype=np.float32))
    assert np.any(np.float32(r - np.floor(r)) != (np.arange(11) * 0.3) % 1)     # float32 differs from exact


def test_interp_second_bottom_gives_the_size():
    x = torch.randn(2, 3, 5, 4, dtype=torch.float64, requires_grad=True)
    like = torch.randn(2, 1, 9, 13, dtype=torch.float64)
    layer = mk("Interp", "", [x.shape, like.shape])
    assert layer.infer_top_shapes([x.shape, like.shape]) == [(2, 3, 9, 13)]
    y = layer(x, like)
    want = interp2_caffe(x.detach().numpy().reshape(6, 5, 4), 0, 0, 5, 4, 9, 13)
    np.testing.assert_allclose(y.detach().numpy().reshape(want.shape), want, rtol=1e-14, atol=1e-14)
    assert torch.autograd.gradcheck(lambda t: layer(t, like), (x,))


def test_interp_gradcheck():
    x = torch.randn(1, 2, 4, 5, dtype=torch.float64, requires_grad=True)
    for block in ("interp_param { zoom_factor: 3 pad_beg: -1 pad_end: 0 }", "interp_param { height: 3 width: 7 }"):
        assert torch.autograd.gradcheck(mk("Interp", block, [x.shape]), (x,))


@pytest.mark.parametrize("block, shapes, message", [
    ("interp_param { pad_beg: 1 zoom_factor: 2 }", [(1, 1, 4, 4)], "only non-positive padding (cropping)"),
    ("interp_param { height: 5 }", [(1, 1, 4, 4)], "the output size is unspecified"),
    ("", [(1, 1, 4, 4)], "the output size is unspecified"),
    ("interp_param { zoom_factor: 0 }", [(1, 1, 4, 4)], "zoom_factor must be >= 1, got 0"),
    ("interp_param { shrink_factor: 0 }", [(1, 1, 4, 4)], "shrink_factor must be >= 1, got 0"),
    ("interp_param { zoom_factor: 2 pad_beg: -2 pad_end: -2 }", [(1, 1, 4, 4)], "cropped input size [0, 0] must be"),
    ("interp_param { height: 0 width: 3 }", [(1, 1, 4, 4)], "output size [0, 3] must be positive"),
    ("interp_param { zoom_factor: 2 }", [(1, 1, 4, 4), (1, 1, 8, 8)], "zoom_factor cannot be given"),
    ("", [(1, 1, 4, 4), (2, 1, 8, 8)], "the second bottom's num 2 differs from the first's 1"),
    ("interp_param { zoom_factor: 2 }", [(1, 4, 4)], "bottom must have 4 axes"),
    ("interp_param { zoom: 2 }", [(1, 1, 4, 4)], "unknown param 'zoom' in interp_param"),
])
def test_interp_user_errors(block, shapes, message):
    expect_error(message, "Interp", block, shapes)


# ---------------------------------------------------------------- Upsample (and Pooling's mask top)

def upsample_caffe(x, mask, out_h, out_w, top_diff=None):
    """Literal port of caffe-segnet's UpsampleLayer Forward_cpu (and Backward_cpu with top_diff)."""
    num, ch, h, w = x.shape
    top = np.zeros((num, ch, out_h * out_w))
    dx = np.zeros((num, ch, h * w))
    for n in range(num):
        for c in range(ch):
            for i in range(h * w):
                idx = int(mask[n, c].reshape(-1)[i])
                assert idx < out_h * out_w
                top[n, c, idx] = x[n, c].reshape(-1)[i]
                if top_diff is not None:
                    dx[n, c, i] = top_diff[n, c].reshape(-1)[idx]
    return top.reshape(num, ch, out_h, out_w), dx.reshape(x.shape)


def pool_with_mask(x, params):
    pool = mk("Pooling", f"pooling_param {{ pool: MAX {params} }}", [x.shape], tops=2)
    return pool(x)


@pytest.mark.parametrize("shape, pool, block, out", [
    ((2, 3, 8, 8), "kernel_size: 2 stride: 2", "upsample_param { scale: 2 }", (8, 8)),
    ((1, 2, 7, 9), "kernel_size: 2 stride: 2", "upsample_param { upsample_h: 7 upsample_w: 9 }", (7, 9)),
    ((1, 2, 7, 9), "kernel_size: 2 stride: 2", "upsample_param { scale: 2 pad_out_h: true pad_out_w: true }", (7, 9)),
    ((1, 2, 9, 7), "kernel_size: 3 stride: 2", "upsample_param { upsample_h: 9 upsample_w: 7 }", (9, 7)),
    ((1, 2, 9, 6), "kernel_h: 3 kernel_w: 2 stride_h: 3 stride_w: 2", "upsample_param { scale_h: 3 scale_w: 2 }",
     (9, 6)),
])
def test_upsample_unpools_the_pooling_mask_like_the_fork(shape, pool, block, out):
    x = torch.randint(0, 4, shape).double()            # ties: the mask must be Caffe's first maximum
    pooled, mask = pool_with_mask(x, pool)
    layer = mk("Upsample", block, [pooled.shape, mask.shape])
    assert layer.infer_top_shapes([pooled.shape, mask.shape]) == [(shape[0], shape[1], *out)]
    v = pooled.clone().requires_grad_()
    y = layer(v, mask)
    gy = torch.randn_like(y)
    y.backward(gy)
    want, want_dx = upsample_caffe(pooled.numpy(), mask.numpy(), *out, top_diff=gy.numpy())
    np.testing.assert_array_equal(y.detach().numpy(), want)
    np.testing.assert_array_equal(v.grad.numpy(), want_dx)
    # unpooling puts every window's maximum back where it was
    kept = y.detach() != 0
    assert torch.equal(y.detach()[kept], x[..., :out[0], :out[1]][kept])


def test_upsample_shared_targets_last_write_wins_and_every_input_gets_the_gradient():
    # overlapping 3x3 / stride 2 windows choose the same input: the fork's loop writes it twice (the later wins)
    # and its backward gives both pooled values that input's gradient (not autograd's adjoint)
    x = torch.zeros(1, 1, 5, 5, dtype=torch.float64)
    x[0, 0, 2, 2] = 9.0
    pooled, mask = pool_with_mask(x, "kernel_size: 3 stride: 2")
    assert (mask == 12).all()                          # all four windows picked (2, 2)
    v = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]], dtype=torch.float64, requires_grad=True)
    layer = mk("Upsample", "upsample_param { upsample_h: 5 upsample_w: 5 }", [v.shape, mask.shape])
    y = layer(v, mask)
    assert y[0, 0, 2, 2] == 4.0 and y.abs().sum() == 4.0
    gy = torch.randn_like(y)
    y.backward(gy)
    assert torch.equal(v.grad, torch.full_like(v, gy[0, 0, 2, 2].item()))
    want, want_dx = upsample_caffe(v.detach().numpy(), mask.numpy(), 5, 5, top_diff=gy.numpy())
    np.testing.assert_array_equal(y.detach().numpy(), want)
    np.testing.assert_array_equal(v.grad.numpy(), want_dx)


def test_upsample_gradcheck_without_shared_targets():
    x = torch.randn(2, 2, 6, 6, dtype=torch.float64)
    pooled, mask = pool_with_mask(x, "kernel_size: 2 stride: 2")
    layer = mk("Upsample", "upsample_param { scale: 2 }", [pooled.shape, mask.shape])
    assert torch.autograd.gradcheck(lambda t: layer(t, mask), (pooled.clone().requires_grad_(),))


def test_upsample_mask_out_of_range_is_one_line():
    layer = mk("Upsample", "upsample_param { scale: 2 }", [(1, 1, 2, 2), (1, 1, 2, 2)])
    for bad, shown in ((16.0, "16"), (-1.0, "-1")):
        mask = torch.tensor([[[[0.0, 1.0], [bad, 3.0]]]])
        with pytest.raises(NetError, match=f"mask index {shown} is out of range for the 4 x 4 output") as info:
            layer(torch.ones(1, 1, 2, 2), mask)
        assert "\n" not in str(info.value)


@pytest.mark.parametrize("block, shapes, message", [
    ("upsample_param { upsample_h: 8 }", [(1, 1, 4, 4)] * 2, "give both upsample_h and upsample_w"),
    ("upsample_param { upsample_h: 1 upsample_w: 8 }", [(1, 1, 4, 4)] * 2, "must be > 1, got 1 and 8"),
    ("upsample_param { scale: 2 scale_h: 2 scale_w: 2 }", [(1, 1, 4, 4)] * 2, "give either scale or scale_h"),
    ("upsample_param { scale_h: 2 }", [(1, 1, 4, 4)] * 2, "give both scale_h and scale_w"),
    ("upsample_param { scale: 1 }", [(1, 1, 4, 4)] * 2, "the scale must be > 1, got [1, 1]"),
    ("upsample_param { scale: 3 pad_out_h: true }", [(1, 1, 4, 4)] * 2, "pad_out_h needs scale_h 2 (got 3)"),
    ("upsample_param { scale: 2 }", [(1, 1, 4, 4), (1, 1, 4, 3)], "the mask's shape (1, 1, 4, 3) differs"),
    ("upsample_param { scale: 2 }", [(1, 4, 4), (1, 4, 4)], "both bottoms must have 4 axes"),
])
def test_upsample_user_errors(block, shapes, message):
    expect_error(message, "Upsample", block, shapes)


def test_segnet_encoder_decoder_net_runs_forward_and_backward():
    net = Net(textwrap.dedent("""
        layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 9 dim: 10 } } }
        layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
                convolution_param { num_output: 4 kernel_size: 3 pad: 1 weight_filler { type: "msra" } } }
        layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" top: "pool1_mask"
                pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
        layer { name: "upsample1" type: "Upsample" bottom: "pool1" bottom: "pool1_mask" top: "up1"
                upsample_param { scale: 2 upsample_h: 9 upsample_w: 10 } }
        layer { name: "loss" type: "EuclideanLoss" bottom: "up1" bottom: "conv1" top: "loss" }
    """), phase="TRAIN", device="cpu")
    assert net.blob_shapes["pool1_mask"] == (2, 4, 5, 5) and net.blob_shapes["up1"] == (2, 4, 9, 10)
    net.forward(data=torch.randn(2, 3, 9, 10))
    up, conv = net.blobs["up1"], net.blobs["conv1"]
    kept = up != 0
    assert kept.sum() > 0 and torch.equal(up[kept], conv[kept])     # the maxima are back in place
    net.loss.backward()
    assert net.params["conv1"][0].grad.abs().sum() > 0


# ---------------------------------------------------------------- ROIPooling

def c_round(v):
    return math.floor(v + 0.5) if v >= 0 else -math.floor(-v + 0.5)


def roi_pool_caffe(x, rois, ph_n, pw_n, scale, top_diff=None):
    """Literal port of caffe-fast-rcnn's ROIPoolingLayer Forward_cpu (-> top, argmax) and, with top_diff, of
    its ROIPoolBackward CUDA kernel (-> bottom diff). Arithmetic in float64 (Dtype = double), spatial_scale
    through float32 (a float in caffe.proto)."""
    scale = float(np.float32(scale))
    batch_size, channels, height, width = x.shape
    num_rois = rois.shape[0]
    top = np.full((num_rois, channels, ph_n, pw_n), -FLT_MAX)
    argmax = np.full(top.shape, -1, dtype=np.int64)
    geo = []
    for n in range(num_rois):
        b = int(rois[n, 0])
        sw, sh = c_round(rois[n, 1] * scale), c_round(rois[n, 2] * scale)
        ew, eh = c_round(rois[n, 3] * scale), c_round(rois[n, 4] * scale)
        assert 0 <= b < batch_size
        roi_h, roi_w = max(eh - sh + 1, 1), max(ew - sw + 1, 1)
        bin_h, bin_w = float(roi_h) / float(ph_n), float(roi_w) / float(pw_n)
        geo.append((b, sw, sh, ew, eh, bin_h, bin_w))
        for c in range(channels):
            plane = x[b, c].reshape(-1)
            for ph in range(ph_n):
                for pw in range(pw_n):
                    hstart, wstart = int(math.floor(ph * bin_h)), int(math.floor(pw * bin_w))
                    hend, wend = int(math.ceil((ph + 1) * bin_h)), int(math.ceil((pw + 1) * bin_w))
                    hstart, hend = min(max(hstart + sh, 0), height), min(max(hend + sh, 0), height)
                    wstart, wend = min(max(wstart + sw, 0), width), min(max(wend + sw, 0), width)
                    if hend <= hstart or wend <= wstart:
                        top[n, c, ph, pw] = 0
                        argmax[n, c, ph, pw] = -1
                    for h in range(hstart, hend):
                        for w in range(wstart, wend):
                            if plane[h * width + w] > top[n, c, ph, pw]:
                                top[n, c, ph, pw] = plane[h * width + w]
                                argmax[n, c, ph, pw] = h * width + w
    if top_diff is None:
        return top, argmax
    dx = np.zeros_like(x)
    for n_, c, h, w in np.ndindex(*x.shape):
        gradient = 0.0
        for r in range(num_rois):
            b, sw, sh, ew, eh, bin_h, bin_w = geo[r]
            if n_ != b or not (sw <= w <= ew and sh <= h <= eh):
                continue
            phstart, phend = int(math.floor((h - sh) / bin_h)), int(math.ceil((h - sh + 1) / bin_h))
            pwstart, pwend = int(math.floor((w - sw) / bin_w)), int(math.ceil((w - sw + 1) / bin_w))
            phstart, phend = min(max(phstart, 0), ph_n), min(max(phend, 0), ph_n)
            pwstart, pwend = min(max(pwstart, 0), pw_n), min(max(pwend, 0), pw_n)
            for ph in range(phstart, phend):
                for pw in range(pwstart, pwend):
                    if argmax[r, c, ph, pw] == h * width + w:
                        gradient += top_diff[r, c, ph, pw]
        dx[n_, c, h, w] = gradient
    return top, argmax, dx


ROIS = np.array([
    [0, 0, 0, 15, 11],        # the whole image at scale 0.5 (x2 = 15 -> 7.5 -> 8: clipped)
    [1, 2, 3, 9, 6],          # 1.5 -> 2 (half away from zero), 4.5 -> 5
    [0, -6, -6, -1, -1],      # wholly outside: empty bins give 0
    [1, 5, 5, 5, 5],          # 1 x 1
    [0, 9, 7, 3, 2],          # malformed (end < start): forced to 1 x 1, and no gradient (the kernel's in_roi)
    [1, 3.2, 0.9, 12.7, 10.1],
    [0, 13, 9, 22, 17],       # partly outside at the bottom right
    [1.7, 1, 1, 1, 14],       # batch index truncated; a tall thin ROI (bins of 0.25 px wide)
], dtype=np.float64)


@pytest.mark.parametrize("pooled, scale", [((2, 3), 0.5), ((3, 2), 0.5), ((4, 4), 0.5), ((1, 1), 1.0)])
def test_roi_pooling_matches_the_forks_loops(pooled, scale):
    x = torch.randint(-3, 4, (2, 3, 6, 7)).double()    # ties: the first maximum in row-major order
    x[1, 2] = torch.randn(6, 7, dtype=torch.float64)
    rois = torch.from_numpy(ROIS)
    ph_n, pw_n = pooled
    layer = mk("ROIPooling", f"roi_pooling_param {{ pooled_h: {ph_n} pooled_w: {pw_n} spatial_scale: {scale} }}",
               [x.shape, rois.shape])
    assert layer.infer_top_shapes([x.shape, rois.shape]) == [(len(ROIS), 3, ph_n, pw_n)]
    v = x.clone().requires_grad_()
    y = layer(v, rois)
    gy = torch.randn_like(y)
    y.backward(gy)
    want, argmax, want_dx = roi_pool_caffe(x.numpy(), ROIS, ph_n, pw_n, scale, top_diff=gy.numpy())
    np.testing.assert_array_equal(y.detach().numpy(), want)
    np.testing.assert_allclose(v.grad.numpy(), want_dx, rtol=1e-12, atol=1e-12)
    if scale == 0.5:
        assert (want[2] == 0).all()                             # the ROI outside the image
        assert (argmax[4] >= 0).all()                           # the malformed ROI pooled, yet passes no gradient
        only_malformed = roi_pool_caffe(x.numpy(), ROIS[4:5], ph_n, pw_n, scale, gy.numpy()[4:5])[2]
        assert not only_malformed.any()


def test_roi_pooling_c_rounding_and_float32_scale():
    # 0.0625 and 1/3: spatial_scale is a float; 2.5 rounds to 3 and -2.5 to -3 (torch.round would give 2, -2)
    x = torch.arange(2 * 10 * 10, dtype=torch.float64).view(2, 1, 10, 10)
    rois = np.array([[0, 5, 5, 9, 9], [1, -5, -5, 15, 15], [0, 7.5, 4.5, 28.5, 28.5]])
    for scale in (0.5, 1 / 3, 0.0625):
        layer = mk("ROIPooling", f"roi_pooling_param {{ pooled_h: 2 pooled_w: 3 spatial_scale: {scale} }}",
                   [x.shape, rois.shape])
        y = layer(x, torch.from_numpy(rois))
        np.testing.assert_array_equal(y.numpy(), roi_pool_caffe(x.numpy(), rois, 2, 3, scale)[0])


def test_roi_pooling_float32_and_rois_as_4d_blob():
    x = torch.randn(2, 4, 8, 8)
    rois = torch.tensor(ROIS, dtype=torch.float32).view(-1, 5, 1, 1)
    layer = mk("ROIPooling", "roi_pooling_param { pooled_h: 3 pooled_w: 3 spatial_scale: 0.5 }", [x.shape, rois.shape])
    y = layer(x, rois)
    assert y.dtype == torch.float32 and y.shape == (len(ROIS), 4, 3, 3)
    np.testing.assert_array_equal(y.numpy(), roi_pool_caffe(x.double().numpy(), ROIS, 3, 3, 0.5)[0].astype(np.float32))


def test_roi_pooling_gradcheck():
    x = torch.randn(2, 2, 6, 7, dtype=torch.float64, requires_grad=True)   # distinct values: no ties
    rois = torch.tensor([[0, 0, 0, 12, 10], [1, 2, 1, 9, 9], [1, 4, 4, 6, 6]], dtype=torch.float64)
    layer = mk("ROIPooling", "roi_pooling_param { pooled_h: 2 pooled_w: 2 spatial_scale: 0.5 }", [x.shape, rois.shape])
    assert torch.autograd.gradcheck(lambda t: layer(t, rois), (x,))


def test_roi_pooling_bad_batch_index_is_one_line():
    layer = mk("ROIPooling", "roi_pooling_param { pooled_h: 2 pooled_w: 2 }", [(2, 1, 4, 4), (2, 5)])
    with pytest.raises(NetError, match=r"roi 1 has batch index 2, outside \[0, 2\)") as info:
        layer(torch.randn(2, 1, 4, 4), torch.tensor([[0.0, 0, 0, 1, 1], [2.0, 0, 0, 1, 1]]))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("block, shapes, message", [
    ("roi_pooling_param { pooled_h: 0 pooled_w: 2 }", [(1, 1, 4, 4), (3, 5)], "pooled_h and pooled_w must be > 0"),
    ("", [(1, 1, 4, 4), (3, 5)], "pooled_h and pooled_w must be > 0, got 0 and 0"),
    ("roi_pooling_param { pooled_h: 2 pooled_w: 2 }", [(1, 1, 4, 4), (3, 4)], "the rois must be (R, 5)"),
    ("roi_pooling_param { pooled_h: 2 pooled_w: 2 }", [(1, 4, 4), (3, 5)], "the features must have 4 axes"),
    ("roi_pooling_param { pooled_height: 2 }", [(1, 1, 4, 4), (3, 5)], "unknown param 'pooled_height'"),
])
def test_roi_pooling_user_errors(block, shapes, message):
    expect_error(message, "ROIPooling", block, shapes)


# ---------------------------------------------------------------- a ShuffleNet net (strawberryfg/RHDHand's blocks)

def bn_scale(name):
    """RHDHand's BatchNorm (frozen-statistics params, one layer per phase) + Scale pair, in place."""
    bn = "".join(f"""
        layer {{
          name: "{name}_bn"
          type: "BatchNorm"
          bottom: "{name}"
          top: "{name}"
          param {{ lr_mult: 0 decay_mult: 0 }}
          param {{ lr_mult: 0 decay_mult: 0 }}
          param {{ lr_mult: 0 decay_mult: 0 }}
          batch_norm_param {{ use_global_stats: {stats} }}
          include {{ phase: {phase} }}
        }}""" for phase, stats in (("TRAIN", "false"), ("TEST", "true")))
    return bn + f"""
        layer {{
          name: "{name}_scale"
          bottom: "{name}"
          top: "{name}"
          type: "Scale"
          scale_param {{
            filler {{
              value: 1
            }}
            bias_term: true
            bias_filler {{
              value: 0
            }}
          }}
        }}"""


SHUFFLENET = """
name: "ShuffleNetBlocks"
layer {
  name: "data"
  type: "Input"
  top: "data"
  input_param { shape { dim: 2 dim: 24 dim: 12 dim: 12 } }
}
layer {
  name: "resx1_match_conv"
  type: "Pooling"
  bottom: "data"
  top: "resx1_match_conv"
  pooling_param {
    pool: AVE
    kernel_size: 3
    stride: 2
  }
}
layer {
  name: "resx1_conv1"
  type: "Convolution"
  bottom: "data"
  top: "resx1_conv1"
  convolution_param {
    num_output: 30
    kernel_size: 1
    stride: 1
    pad: 0
    group: 3
    bias_term: false
    weight_filler {
      type: "msra"
    }
  }
}
""" + bn_scale("resx1_conv1") + """
layer {
  name: "resx1_conv1_relu"
  type: "ReLU"
  bottom: "resx1_conv1"
  top: "resx1_conv1"
}
layer {
  name: "shuffle1"
  type: "ShuffleChannel"
  bottom: "resx1_conv1"
  top: "shuffle1"
  shuffle_channel_param {
    group: 3
  }
}
layer {
  name: "resx1_conv2"
  type: "ConvolutionDepthwise"
  bottom: "shuffle1"
  top: "resx1_conv2"
  convolution_param {
    num_output: 30
    kernel_size: 3
    stride: 2
    pad: 1
    bias_term: false
    weight_filler {
      type: "msra"
    }
  }
}
""" + bn_scale("resx1_conv2") + """
layer {
  name: "resx1_conv3"
  type: "Convolution"
  bottom: "resx1_conv2"
  top: "resx1_conv3"
  convolution_param {
    num_output: 96
    kernel_size: 1
    stride: 1
    pad: 0
    group: 3
    bias_term: false
    weight_filler {
      type: "msra"
    }
  }
}
""" + bn_scale("resx1_conv3") + """
layer {
  name: "resx1_concat"
  type: "Concat"
  bottom: "resx1_match_conv"
  bottom: "resx1_conv3"
  top: "resx1_concat"
}
layer {
  name: "resx1_concat_relu"
  type: "ReLU"
  bottom: "resx1_concat"
  top: "resx1_concat"
}
layer {
  name: "resx2_conv1"
  type: "Convolution"
  bottom: "resx1_concat"
  top: "resx2_conv1"
  convolution_param {
    num_output: 30
    kernel_size: 1
    stride: 1
    pad: 0
    group: 3
    bias_term: false
    weight_filler {
      type: "msra"
    }
  }
}
""" + bn_scale("resx2_conv1") + """
layer {
  name: "shuffle2"
  type: "ShuffleChannel"
  bottom: "resx2_conv1"
  top: "shuffle2"
  shuffle_channel_param {
    group: 3
  }
}
layer {
  name: "resx2_conv2"
  type: "ConvolutionDepthwise"
  bottom: "shuffle2"
  top: "resx2_conv2"
  convolution_param {
    num_output: 30
    kernel_size: 3
    stride: 1
    pad: 1
	group: 3
    bias_term: false
    weight_filler {
      type: "msra"
    }
  }
}
""" + bn_scale("resx2_conv2") + """
layer {
  name: "resx2_conv3"
  type: "Convolution"
  bottom: "resx2_conv2"
  top: "resx2_conv3"
  convolution_param {
    num_output: 120
    kernel_size: 1
    stride: 1
    pad: 0
    group: 3
    bias_term: false
    weight_filler {
      type: "msra"
    }
  }
}
""" + bn_scale("resx2_conv3") + """
layer {
  name: "resx2_elewise"
  type: "Eltwise"
  bottom: "resx1_concat"
  bottom: "resx2_conv3"
  top: "resx2_elewise"
  eltwise_param {
    operation: SUM
  }
}
layer {
  name: "target"
  type: "DummyData"
  top: "target"
  dummy_data_param { shape { dim: 2 dim: 120 dim: 6 dim: 6 } data_filler { type: "gaussian" std: 1 } }
}
layer {
  name: "loss"
  type: "EuclideanLoss"
  bottom: "resx2_elewise"
  bottom: "target"
  top: "loss"
}
"""


def test_shufflenet_blocks_build_and_run_forward_backward():
    net = Net(SHUFFLENET, phase="TRAIN", device="cpu")
    assert net.blob_shapes["shuffle1"] == (2, 30, 12, 12)
    assert net.blob_shapes["resx1_conv2"] == (2, 30, 6, 6)
    assert net.blob_shapes["resx1_concat"] == net.blob_shapes["resx2_elewise"] == (2, 120, 6, 6)
    assert [tuple(p.shape) for p in net.params["resx1_conv2"]] == [(30, 1, 3, 3)]
    assert [tuple(p.shape) for p in net.params["resx2_conv2"]] == [(30, 1, 3, 3)]
    data = torch.randn(2, 24, 12, 12)
    net.forward(data=data)
    # the shuffle and the depthwise convolution, recomputed from the blobs the net kept
    c1 = net.blobs["resx2_conv1"]
    assert torch.equal(net.blobs["shuffle2"], c1.view(2, 3, 10, 6, 6).transpose(1, 2).reshape(2, 30, 6, 6))
    assert torch.isfinite(net.loss) and net.loss > 0
    net.loss.backward()
    for name in ("resx1_conv2", "resx2_conv2", "resx1_conv1", "resx2_conv3"):
        g = net.params[name][0].grad
        assert g is not None and g.abs().sum() > 0, name
    test_net = Net(SHUFFLENET, phase="TEST", device="cpu")
    test_net.load_state_dict(net.state_dict())
    out = test_net.forward(data=data)
    assert out["loss"].shape == () and torch.isfinite(out["loss"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    x = torch.randint(-3, 4, (2, 6, 9, 8)).double()           # ties: CUDA must pick the same maxima
    rois = torch.from_numpy(ROIS)
    pooled, mask = pool_with_mask(x, "kernel_size: 3 stride: 2")
    cases = [
        (mk("ConvolutionDepthwise", "convolution_param { kernel_size: 3 stride: 2 pad: 1 }", [x.shape]), (x,)),
        (mk("ShuffleChannel", "shuffle_channel_param { group: 3 }", [x.shape]), (x,)),
        (mk("Interp", "interp_param { zoom_factor: 3 pad_beg: -1 }", [x.shape]), (x,)),
        (mk("Upsample", "upsample_param { upsample_h: 9 upsample_w: 8 }", [pooled.shape, mask.shape]), (pooled, mask)),
        (mk("ROIPooling", "roi_pooling_param { pooled_h: 3 pooled_w: 2 spatial_scale: 0.5 }", [x.shape, rois.shape]),
         (x, rois)),
    ]
    for layer, inputs in cases:
        randomize(layer)
        outs = []
        for device in ("cpu", "cuda"):
            layer.to(device)
            v = inputs[0].to(device).requires_grad_()
            y = layer(v, *(t.to(device) for t in inputs[1:]))
            y.backward(torch.linspace(-1, 1, y.numel(), dtype=y.dtype, device=device).view(y.shape))
            outs.append((y.detach().cpu(), v.grad.cpu()))
        assert outs[1][0].shape == outs[0][0].shape, layer.type
        for a, b in zip(*outs):
            np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-12, atol=1e-12, err_msg=layer.type)
    gpu_y, gpu_mask = pool_with_mask(x.cuda(), "kernel_size: 3 stride: 2")
    assert torch.equal(gpu_mask.cpu(), mask) and torch.equal(gpu_y.cpu(), pooled)
