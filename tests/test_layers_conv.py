"""Convolution, Deconvolution and InnerProduct: values against direct numpy computations, Caffe's shapes
(AlexNet), the FCN bilinear upsampling pattern, gradients and user errors."""

import itertools
import math
import re
import textwrap

import numpy as np
import pytest
import torch
from torch.func import functional_call

from layers.build import make_layer
from netdef.errors import NetError
from nets.net import Net


def layer(kind, params, shapes, tops=None):
    block = {"Convolution": "convolution_param", "Deconvolution": "convolution_param",
             "InnerProduct": "inner_product_param"}[kind]
    bottoms = " ".join(f'bottom: "b{i}"' for i in range(len(shapes)))
    top = " ".join(f'top: "t{i}"' for i in range(len(shapes) if tops is None else tops))
    return make_layer(f'name: "L" type: "{kind}" {bottoms} {top} {block} {{ {params} }}', shapes)


def randomize(lay):
    """In float64, with random weights."""
    lay.double()
    with torch.no_grad():
        for p in lay.parameters():
            p.normal_()
    return lay


def np_conv(x, w, b, stride, pad, dil, group):
    """Direct N-D convolution: for every kernel offset, a strided slice of the padded input times W."""
    n_sp = x.ndim - 2
    xp = np.pad(x, [(0, 0), (0, 0)] + [(p, p) for p in pad])
    out = [(x.shape[2 + i] + 2 * pad[i] - dil[i] * (w.shape[2 + i] - 1) - 1) // stride[i] + 1 for i in range(n_sp)]
    o_g, c_g = w.shape[0] // group, w.shape[1]
    y = np.zeros((x.shape[0], w.shape[0], *out))
    for off in itertools.product(*(range(k) for k in w.shape[2:])):
        sl = tuple(slice(o * d, o * d + s * (n - 1) + 1, s) for o, d, s, n in zip(off, dil, stride, out))
        patch = xp[(slice(None), slice(None)) + sl]
        for g in range(group):
            wg = w[(slice(g * o_g, (g + 1) * o_g), slice(None)) + off]
            y[:, g * o_g:(g + 1) * o_g] += np.einsum("nc...,oc->no...", patch[:, g * c_g:(g + 1) * c_g], wg)
    if b is not None:
        y += b.reshape((1, -1) + (1,) * n_sp)
    return y


def np_deconv(x, w, b, stride, pad, dil, group):
    """Direct transposed convolution: every input pixel adds x * W (dilated) at i * stride; crop pad."""
    c_g, o_g = x.shape[1] // group, w.shape[1]
    full = [s * (n - 1) + d * (k - 1) + 1 for s, n, d, k in zip(stride, x.shape[2:], dil, w.shape[2:])]
    y = np.zeros((x.shape[0], o_g * group, *full))
    for idx in np.ndindex(*x.shape[2:]):
        sl = tuple(slice(i * s, i * s + d * (k - 1) + 1, d) for i, s, d, k in zip(idx, stride, dil, w.shape[2:]))
        for g in range(group):
            contrib = np.einsum("nc,co...->no...", x[(slice(None), slice(g * c_g, (g + 1) * c_g)) + idx],
                                w[g * c_g:(g + 1) * c_g])
            y[(slice(None), slice(g * o_g, (g + 1) * o_g)) + sl] += contrib
    y = y[(slice(None), slice(None)) + tuple(slice(p, f - p) for p, f in zip(pad, full))]
    if b is not None:
        y += b.reshape((1, -1) + (1,) * len(full))
    return y


def np_params(lay):
    return lay.weight.detach().numpy(), (lay.bias.detach().numpy() if hasattr(lay, "bias") else None)


# ---------------------------------------------------------------- Convolution

@pytest.mark.parametrize("shape, params, geometry, out_shape", [
    ((2, 3, 9, 8), "num_output: 4 kernel_size: 3", ((1, 1), (0, 0), (1, 1), 1), (2, 4, 7, 6)),
    ((2, 4, 9, 8), "num_output: 6 kernel_size: 3 stride: 2 pad: 1 dilation: 2 group: 2",
     ((2, 2), (1, 1), (2, 2), 2), (2, 6, 4, 3)),
    ((1, 2, 10, 7), "num_output: 3 kernel_h: 4 kernel_w: 2 stride_h: 3 stride_w: 1 pad_h: 2 pad_w: 0",
     ((3, 1), (2, 0), (1, 1), 1), (1, 3, 4, 6)),
    ((1, 2, 10, 7), "num_output: 2 kernel_size: 3 kernel_size: 2 stride: 2 stride: 1 pad: 0 pad: 1 dilation: 1 "
     "dilation: 3 bias_term: false", ((2, 1), (0, 1), (1, 3), 1), (1, 2, 4, 6)),
    ((2, 4, 11), "num_output: 4 kernel_size: 3 stride: 2 pad: 1 group: 4", ((2,), (1,), (1,), 4), (2, 4, 6)),
    ((1, 2, 5, 6, 7), "num_output: 3 kernel_size: 3 kernel_size: 2 kernel_size: 3 stride: 2 pad: 1",
     ((2, 2, 2), (1, 1, 1), (1, 1, 1), 1), (1, 3, 3, 4, 4)),
])
def test_convolution_matches_direct_numpy(shape, params, geometry, out_shape):
    stride, pad, dil, group = geometry
    conv = layer("Convolution", params, [shape])
    assert conv.infer_top_shapes([shape]) == [out_shape]
    randomize(conv)
    x = torch.randn(shape, dtype=torch.float64)
    y = conv(x)
    assert y.shape == out_shape
    w, b = np_params(conv)
    k = w.shape[2:]
    c_out = out_shape[1]
    assert w.shape == (c_out, shape[1] // group, *k)
    assert (b is None) == ("bias_term: false" in params)
    np.testing.assert_allclose(y.detach().numpy(), np_conv(x.numpy(), w, b, stride, pad, dil, group), rtol=1e-10,
                               atol=1e-10)


def test_alexnet_shapes():
    """AlexNet (Caffe's bvlc_alexnet deploy): conv1 227 -> 55, pool1 -> 27, conv2 (pad 2, group 2) -> 27,
    pool2 -> 13, conv3/4/5 -> 13, pool5 -> 6; fc6 sees 256 * 6 * 6 = 9216 inputs."""
    def conv(name, bottom, n, k, s=1, p=0, g=1):
        return (f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{name}" convolution_param '
                f'{{ num_output: {n} kernel_size: {k} stride: {s} pad: {p} group: {g} }} }}\n')

    def pool(name, bottom):
        return (f'layer {{ name: "{name}" type: "Pooling" bottom: "{bottom}" top: "{name}" '
                f'pooling_param {{ pool: MAX kernel_size: 3 stride: 2 }} }}\n')
    text = ('layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 227 '
            'dim: 227 } } }\n' + conv("conv1", "data", 96, 11, s=4) + pool("pool1", "conv1")
            + conv("conv2", "pool1", 256, 5, p=2, g=2) + pool("pool2", "conv2") + conv("conv3", "pool2", 384, 3, p=1)
            + conv("conv4", "conv3", 384, 3, p=1, g=2) + conv("conv5", "conv4", 256, 3, p=1, g=2)
            + pool("pool5", "conv5")
            + 'layer { name: "fc6" type: "InnerProduct" bottom: "pool5" top: "fc6" '
              'inner_product_param { num_output: 10 } }\n')
    net = Net(text, phase="TEST", device="cpu")
    s = net.blob_shapes
    assert s["conv1"] == (2, 96, 55, 55) and s["pool1"] == (2, 96, 27, 27)
    assert s["conv2"] == (2, 256, 27, 27) and s["pool2"] == (2, 256, 13, 13)
    assert s["conv3"] == (2, 384, 13, 13) and s["conv4"] == (2, 384, 13, 13) and s["conv5"] == (2, 256, 13, 13)
    assert s["pool5"] == (2, 256, 6, 6) and s["fc6"] == (2, 10)
    shapes = {name: [tuple(b.shape) for b in blobs] for name, blobs in net.params.items()}
    assert shapes["conv1"] == [(96, 3, 11, 11), (96,)]
    assert shapes["conv2"] == [(256, 48, 5, 5), (256,)]
    assert shapes["conv4"] == [(384, 192, 3, 3), (384,)]
    assert shapes["conv5"] == [(256, 192, 3, 3), (256,)]
    assert shapes["fc6"] == [(10, 9216), (10,)]


def test_default_fillers_are_constant_zero_and_fillers_apply():
    conv = make_layer('name: "c" type: "Convolution" bottom: "x" top: "y" convolution_param { num_output: 3 '
                      'kernel_size: 2 }', [(1, 2, 4, 4)])
    assert torch.equal(conv.weight, torch.zeros(3, 2, 2, 2)) and torch.equal(conv.bias, torch.zeros(3))
    assert conv.blob_names == ["weight", "bias"]
    conv = make_layer('name: "c" type: "Convolution" bottom: "x" top: "y" convolution_param { num_output: 64 '
                      'kernel_size: 5 weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "constant" '
                      'value: 0.25 } }', [(1, 8, 9, 9)])
    assert abs(conv.weight.std().item() - 0.5) < 0.02 and torch.equal(conv.bias, torch.full((64,), 0.25))


def test_several_bottoms_share_the_weights():
    conv = randomize(layer("Convolution", "num_output: 2 kernel_size: 3 pad: 1", [(2, 3, 5, 5)] * 2))
    a, b = torch.randn(2, 2, 3, 5, 5, dtype=torch.float64)
    ya, yb = conv(a, b)
    w, bias = np_params(conv)
    np.testing.assert_allclose(yb.detach().numpy(), np_conv(b.numpy(), w, bias, (1, 1), (1, 1), (1, 1), 1), rtol=1e-10)
    assert torch.equal(ya, conv(a, b)[0])


def test_axis_keeps_the_leading_axes_independent():
    # (A, B, C, H, W) with axis 2: A * B independent 2-D convolutions
    conv = randomize(layer("Convolution", "num_output: 4 kernel_size: 2 axis: 2", [(2, 3, 5, 6, 6)]))
    x = torch.randn(2, 3, 5, 6, 6, dtype=torch.float64)
    y = conv(x)
    assert y.shape == (2, 3, 4, 5, 5)
    w, b = np_params(conv)
    ref = np_conv(x.reshape(6, 5, 6, 6).numpy(), w, b, (1, 1), (0, 0), (1, 1), 1).reshape(2, 3, 4, 5, 5)
    np.testing.assert_allclose(y.detach().numpy(), ref, rtol=1e-10)
    assert layer("Convolution", "num_output: 4 kernel_size: 2 axis: -3", [(2, 5, 6, 6)]).infer_top_shapes(
        [(2, 5, 6, 6)]) == [(2, 4, 5, 5)]
    assert conv.float().infer_top_shapes([(2, 3, 5, 6, 6)]) == [(2, 3, 4, 5, 5)]


def test_convolution_gradcheck():
    conv = randomize(layer("Convolution", "num_output: 2 kernel_size: 2 stride: 2 pad: 1 dilation: 2 group: 2",
                           [(1, 4, 5, 4)]))
    x = torch.randn(1, 4, 5, 4, dtype=torch.float64, requires_grad=True)
    w = conv.weight.detach().clone().requires_grad_()
    b = conv.bias.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda x, w, b: functional_call(conv, {"weight": w, "bias": b}, (x,)), (x, w, b))


def test_float32_stays_float32():
    conv = make_layer('name: "c" type: "Convolution" bottom: "x" top: "y" convolution_param { num_output: 3 '
                      'kernel_size: 3 weight_filler { type: "xavier" } }', [(2, 3, 8, 8)])
    y = conv(torch.randn(2, 3, 8, 8))
    assert y.dtype == torch.float32 and y.shape == (2, 3, 6, 6)


# ---------------------------------------------------------------- Deconvolution

@pytest.mark.parametrize("shape, params, geometry, out_shape", [
    ((2, 3, 4, 5), "num_output: 2 kernel_size: 3", ((1, 1), (0, 0), (1, 1), 1), (2, 2, 6, 7)),
    ((1, 4, 4, 3), "num_output: 6 kernel_size: 4 stride: 2 pad: 1 group: 2", ((2, 2), (1, 1), (1, 1), 2),
     (1, 6, 8, 6)),
    ((1, 2, 3, 4), "num_output: 3 kernel_h: 3 kernel_w: 2 stride_h: 3 stride_w: 2 pad_h: 1 dilation: 2 "
     "bias_term: false", ((3, 2), (1, 0), (2, 2), 1), (1, 3, 9, 9)),
    ((2, 2, 5), "num_output: 2 kernel_size: 3 stride: 2 pad: 1", ((2,), (1,), (1,), 1), (2, 2, 9)),
    ((1, 2, 2, 3, 2), "num_output: 2 kernel_size: 2 stride: 2", ((2, 2, 2), (0, 0, 0), (1, 1, 1), 1),
     (1, 2, 4, 6, 4)),
])
def test_deconvolution_matches_direct_numpy(shape, params, geometry, out_shape):
    stride, pad, dil, group = geometry
    deconv = layer("Deconvolution", params, [shape])
    assert deconv.infer_top_shapes([shape]) == [out_shape]
    w, b = np_params(randomize(deconv))
    # Caffe's blob: (C_in, num_output / group, *kernel); out = stride * (in - 1) + dilation * (k - 1) + 1 - 2 pad
    assert w.shape == (shape[1], out_shape[1] // group, *w.shape[2:])
    for i, n in enumerate(shape[2:]):
        assert out_shape[2 + i] == stride[i] * (n - 1) + dil[i] * (w.shape[2 + i] - 1) + 1 - 2 * pad[i]
    x = torch.randn(shape, dtype=torch.float64)
    y = deconv(x)
    assert y.shape == out_shape
    np.testing.assert_allclose(y.detach().numpy(), np_deconv(x.numpy(), w, b, stride, pad, dil, group), rtol=1e-10,
                               atol=1e-10)


def fcn_upsample_filt(size):
    """The bilinear kernel of FCN's surgery.upsample_filt (written independently of the filler)."""
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    og = np.ogrid[:size, :size]
    return (1 - abs(og[0] - center) / factor) * (1 - abs(og[1] - center) / factor)


@pytest.mark.parametrize("factor", [2, 3, 4])
def test_bilinear_deconvolution_upsamples_like_fcn(factor):
    k, pad = 2 * factor - factor % 2, math.ceil((factor - 1) / 2)  # FCN's recipe
    h, w = 5, 6
    text = textwrap.dedent(f"""
        layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ dim: 2 dim: 3 dim: {h} dim: {w} }} }} }}
        layer {{ name: "up" type: "Deconvolution" bottom: "data" top: "up" param {{ lr_mult: 0 decay_mult: 0 }}
                convolution_param {{ num_output: 3 group: 3 kernel_size: {k} stride: {factor} pad: {pad}
                                     bias_term: false weight_filler {{ type: "bilinear" }} }} }}
    """)
    net = Net(text, phase="TRAIN", device="cpu")
    assert net.blob_shapes["up"] == (2, 3, factor * h, factor * w)
    weight = net.params["up"][0]
    assert weight.shape == (3, 1, k, k) and not weight.requires_grad  # lr_mult 0: frozen
    np.testing.assert_allclose(weight[1, 0].numpy(), fcn_upsample_filt(k), rtol=1e-6)
    x = torch.randn(2, 3, h, w)
    y = net.forward(data=x)["up"]
    filt = np.broadcast_to(fcn_upsample_filt(k), (3, 1, k, k))
    ref = np_deconv(x.double().numpy(), filt, None, (factor,) * 2, (pad,) * 2, (1, 1), 3)
    np.testing.assert_allclose(y.numpy(), ref, rtol=1e-5, atol=1e-5)
    # geometry: away from the border, a linear ramp is interpolated at input coordinate (y + 0.5) / f - 0.5
    ramp = (torch.arange(h, dtype=torch.float32)[:, None] * 2 + torch.arange(w, dtype=torch.float32)[None, :] * 3)
    up = net.forward(data=ramp.expand(2, 3, h, w))["up"][0, 1]
    u = (torch.arange(factor * h) + 0.5) / factor - 0.5
    v = (torch.arange(factor * w) + 0.5) / factor - 0.5
    expect = u[:, None] * 2 + v[None, :] * 3
    inner = (slice(factor, -factor), slice(factor, -factor))
    np.testing.assert_allclose(up[inner].numpy(), expect[inner].numpy(), rtol=1e-5, atol=1e-5)


def test_deconvolution_gradcheck():
    deconv = randomize(layer("Deconvolution", "num_output: 2 kernel_size: 2 stride: 2 pad: 1 dilation: 2 group: 2",
                             [(1, 2, 3, 3)]))
    x = torch.randn(1, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    w = deconv.weight.detach().clone().requires_grad_()
    b = deconv.bias.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda x, w, b: functional_call(deconv, {"weight": w, "bias": b}, (x,)),
                                    (x, w, b))


# ---------------------------------------------------------------- InnerProduct

@pytest.mark.parametrize("shape, params, out_shape", [
    ((4, 3, 2, 2), "num_output: 5", (4, 5)),
    ((4, 3, 2, 2), "num_output: 5 axis: 2", (4, 3, 5)),
    ((4, 3, 2, 2), "num_output: 5 axis: -1 transpose: true", (4, 3, 2, 5)),
    ((6, 7), "num_output: 2 bias_term: false", (6, 2)),
])
def test_inner_product_matches_numpy(shape, params, out_shape):
    ip = layer("InnerProduct", params, [shape])
    assert ip.infer_top_shapes([shape]) == [out_shape]
    randomize(ip)
    x = torch.randn(shape, dtype=torch.float64)
    y = ip(x)
    assert y.shape == out_shape
    w, b = np_params(ip)
    n_out = out_shape[-1]
    k = int(np.prod(shape[len(out_shape) - 1:]))
    assert w.shape == ((k, n_out) if "transpose: true" in params else (n_out, k))
    flat = x.numpy().reshape(-1, k)
    ref = flat @ (w if "transpose: true" in params else w.T) + (0 if b is None else b)
    np.testing.assert_allclose(y.detach().numpy(), ref.reshape(out_shape), rtol=1e-12)


@pytest.mark.parametrize("transpose", ["false", "true"])
def test_inner_product_gradcheck(transpose):
    ip = randomize(layer("InnerProduct", f"num_output: 3 axis: 2 transpose: {transpose}", [(2, 3, 2, 2)]))
    x = torch.randn(2, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    w = ip.weight.detach().clone().requires_grad_()
    b = ip.bias.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda x, w, b: functional_call(ip, {"weight": w, "bias": b}, (x,)), (x, w, b))


def test_inner_product_rejects_a_different_input_size_at_run_time():
    ip = layer("InnerProduct", "num_output: 3", [(2, 3, 4)])
    assert ip(torch.randn(5, 12)).shape == (5, 3)  # same K, other shape: fine, as in Caffe
    with pytest.raises(NetError, match=re.escape("bottom (2, 3, 5) has 15 values per sample from axis 1 on, but "
                                                 "the weights expect 12")):
        ip(torch.randn(2, 3, 5))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    for kind, params, shape in (("Convolution", "num_output: 4 kernel_size: 3 pad: 1 group: 2 dilation: 2",
                                 (2, 4, 9, 9)),
                                ("Deconvolution", "num_output: 4 kernel_size: 4 stride: 2 pad: 1", (2, 4, 5, 5)),
                                ("InnerProduct", "num_output: 4", (2, 4, 5, 5))):
        lay = randomize(layer(kind, params, [shape]))
        x = torch.randn(shape, dtype=torch.float64)
        cpu = lay(x)
        gpu = lay.cuda()(x.cuda())
        np.testing.assert_allclose(gpu.detach().cpu().numpy(), cpu.detach().numpy(), rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------- errors

@pytest.mark.parametrize("kind, params, shape, message", [
    ("Convolution", "num_output: 4 kernel_size: 3 group: 2", (1, 3, 8, 8),
     "the bottom's 3 channels are not divisible by group 2"),
    ("Convolution", "num_output: 3 kernel_size: 3 group: 2", (1, 4, 8, 8), "num_output 3 is not divisible by group 2"),
    ("Convolution", "num_output: 4 stride: 2", (1, 3, 8, 8), "missing kernel_size (or kernel_h and kernel_w)"),
    ("Convolution", "num_output: 4", (1, 3, 8), "missing kernel_size"),
    ("Convolution", "num_output: 4 kernel_size: 3 kernel_h: 3 kernel_w: 3", (1, 3, 8, 8),
     "give either kernel_size or kernel_h / kernel_w, not both"),
    ("Convolution", "num_output: 4 kernel_h: 3", (1, 3, 8, 8), "give both kernel_h and kernel_w"),
    ("Convolution", "num_output: 4 kernel_size: 3 stride_w: 2", (1, 3, 8, 8), "give both stride_h and stride_w"),
    ("Convolution", "num_output: 4 kernel_size: 3 pad: 1 pad_h: 1", (1, 3, 8, 8), "give either pad or pad_h / pad_w"),
    ("Convolution", "num_output: 4 kernel_size: 3 pad_h: 1", (1, 3, 8, 8, 8),
     "pad_h / pad_w can only be used for 2-D convolution; this bottom has 3 spatial axes"),
    ("Convolution", "num_output: 4 kernel_size: 3 kernel_size: 3 kernel_size: 3", (1, 3, 8, 8),
     "kernel_size must be given once, or once per spatial axis (2); given 3 times"),
    ("Convolution", "num_output: 4 kernel_size: 3 dilation: 0", (1, 3, 8, 8), "dilation must be >= 1, got [0, 0]"),
    ("Convolution", "num_output: 4 kernel_size: 0", (1, 3, 8, 8), "kernel size must be >= 1"),
    ("Convolution", "num_output: 0 kernel_size: 3", (1, 3, 8, 8), "num_output must be > 0, got 0"),
    ("Convolution", "kernel_size: 3", (1, 3, 8, 8), "missing required param 'num_output' in convolution_param"),
    ("Convolution", "num_output: 4 kernel_size: 5 dilation: 2", (1, 3, 8, 8),
     "kernel extent 9 is larger than the padded input size 8 + 2*0"),
    ("Convolution", "num_output: 4 kernel_size: 3", (1, 3, 8, 8, 8, 8), "supports 1 to 3 spatial axes"),
    ("Convolution", "num_output: 4 kernal_size: 3", (1, 3, 8, 8),
     "unknown param 'kernal_size' in convolution_param (did you mean kernel_size?)"),
    ("Convolution", "num_output: 4 kernel_size: 3 engine: CUDA", (1, 3, 8, 8),
     "'engine' expects one of DEFAULT, CAFFE, CUDNN"),
    ("Convolution", "num_output: 4 kernel_size: 3 axis: 4", (1, 3, 8, 8), "axis 4 is out of range for a 4-D blob"),
    ("Deconvolution", "num_output: 4 kernel_size: 2 pad: 2", (1, 3, 2, 2),
     "output size -1 <= 0 for bottom spatial size (2, 2)"),
    ("InnerProduct", "num_ouput: 4", (1, 3), "unknown param 'num_ouput' in inner_product_param (did you mean "
                                             "num_output?)"),
    ("InnerProduct", "bias_term: false", (1, 3), "missing required param 'num_output' in inner_product_param"),
    ("InnerProduct", "num_output: 2 axis: -3", (1, 3), "axis -3 is out of range for a 2-D blob"),
])
def test_user_errors(kind, params, shape, message):
    with pytest.raises(NetError, match=re.escape(message)) as info:
        layer(kind, params, [shape])
    assert f"layer 'L' ({kind})" in str(info.value)


def test_tops_must_match_bottoms():
    with pytest.raises(NetError, match=re.escape("needs as many tops as bottoms")):
        layer("Convolution", "num_output: 2 kernel_size: 1", [(1, 2, 3, 3)] * 2, tops=1)
    with pytest.raises(NetError, match=re.escape("all bottoms must have the same shape")):
        layer("Convolution", "num_output: 2 kernel_size: 1", [(1, 2, 3, 3), (1, 2, 4, 4)])
