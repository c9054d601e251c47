"""The SSD fork's layers (weiliu89/caffe, branch ssd): Permute, Normalize, PriorBox, DetectionOutput.

Each against a literal Python port of the fork's C++ (permute_layer.cpp, normalize_layer.cpp,
prior_box_layer.cpp, detection_output_layer.cpp and util/bbox_util.cpp's DecodeBBox, JaccardOverlap,
GetMaxScoreIndex, ApplyNMSFast), written loop by loop from the C++ and independent of the layers' torch/NumPy
code; float64 gradcheck for Normalize and Permute; PriorBox against boxes worked out by hand; DetectionOutput on
a crafted case with known detections; an SSD-style head built as a Net; user errors."""

import math
import warnings

import numpy as np
import pytest
import torch
from torch.func import functional_call

from layers.build import make_layer
from netdef.errors import NetError, NetWarning
from nets.net import Net

f32 = np.float32
FLT_MAX = 3.4028234663852886e38


def mk(body, shapes, bottoms=("x",), phase="TRAIN"):
    head = 'name: "l" ' + " ".join(f'bottom: "{b}"' for b in bottoms) + ' top: "y" '
    return make_layer(head + body, [tuple(s) for s in shapes], phase)


def gradcheck(fn, *inputs):
    inputs = tuple(t.detach().requires_grad_(True) for t in inputs)
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5)


# ================================================================ Permute

def port_permute(x: np.ndarray, order_param):
    """permute_layer.cpp: LayerSetUp's orders, Reshape's steps, the Permute() index loop."""
    num_axes = x.ndim
    orders = []
    for o in order_param:
        assert o < num_axes
        assert o not in orders
        orders.append(o)
    for i in range(num_axes):
        if i not in orders:
            orders.append(i)
    top_shape = [x.shape[orders[i]] for i in range(num_axes)]
    count = lambda shape, start: int(np.prod(shape[start:], dtype=np.int64))   # noqa: E731
    old_steps = [1 if i == num_axes - 1 else count(x.shape, i + 1) for i in range(num_axes)]
    new_steps = [1 if i == num_axes - 1 else count(top_shape, i + 1) for i in range(num_axes)]
    bottom = x.reshape(-1)
    top = np.empty(count(top_shape, 0), dtype=x.dtype)
    for i in range(top.size):
        old_idx = 0
        idx = i
        for j in range(num_axes):
            order = orders[j]
            old_idx += (idx // new_steps[j]) * old_steps[order]
            idx %= new_steps[j]
        top[i] = bottom[old_idx]
    return top.reshape(top_shape)


@pytest.mark.parametrize("shape,order", [((2, 3, 4, 5), [0, 2, 3, 1]), ((2, 3, 4, 5), [3, 1]), ((2, 3, 4), [1]),
                                         ((2, 3, 4), [2, 0]), ((2, 3, 4, 5), []), ((2, 3, 4, 5), [0, 1, 2, 3]),
                                         ((3, 4), [1, 0]), ((2, 1, 3, 2, 2), [4, 0, 2])])
def test_permute_matches_the_forks_loop(shape, order):
    body = 'type: "Permute" permute_param { ' + " ".join(f"order: {o}" for o in order) + " }"
    layer = mk(body, [shape])
    x = torch.randn(*shape)
    want = port_permute(x.numpy(), order)
    y = layer(x)
    assert tuple(y.shape) == want.shape
    assert layer.infer_top_shapes([shape]) == [want.shape]
    np.testing.assert_array_equal(y.numpy(), want)


def test_permute_ssd_order_is_nchw_to_nhwc():
    layer = mk('type: "Permute" permute_param { order: 0 order: 2 order: 3 order: 1 }', [(1, 2, 1, 2)])
    x = torch.tensor([[[[1.0, 2.0]], [[10.0, 20.0]]]])       # channel 0: 1, 2; channel 1: 10, 20
    assert layer(x).tolist() == [[[[1.0, 10.0], [2.0, 20.0]]]]


def test_permute_gradcheck():
    layer = mk('type: "Permute" permute_param { order: 0 order: 3 order: 1 }', [(2, 3, 2, 4)])
    gradcheck(layer, torch.randn(2, 3, 2, 4, dtype=torch.float64))


def test_permute_errors():
    with pytest.raises(NetError, match=r"layer 'l' \(Permute\).*lists axis 2 twice"):
        mk('type: "Permute" permute_param { order: 2 order: 0 order: 2 }', [(2, 3, 4)])
    with pytest.raises(NetError, match=r"order 4 is out of range for a 4-D bottom"):
        mk('type: "Permute" permute_param { order: 0 order: 4 }', [(2, 3, 4, 5)])
    with pytest.raises(NetError, match=r"order -1 is out of range"):
        mk('type: "Permute" permute_param { order: -1 }', [(2, 3, 4, 5)])
    with pytest.raises(NetError, match=r"unknown param 'orders' in permute_param \(did you mean order\?\)"):
        mk('type: "Permute" permute_param { orders: 1 }', [(2, 3)])
    for e in (NetError,):
        try:
            mk('type: "Permute" permute_param { order: 1 order: 1 }', [(2, 3)])
        except e as err:
            assert "\n" not in str(err)


# ================================================================ Normalize

def port_normalize(x: np.ndarray, scale: np.ndarray, across_spatial: bool, channel_shared: bool, eps: float):
    """normalize_layer.cpp Forward_cpu, for (N, C, H, W) (legacy accessors: missing axes are 1)."""
    shape = list(x.shape) + [1] * (4 - x.ndim)
    num, channels, height, width = shape
    spatial_dim = height * width
    dim = channels * spatial_dim
    bottom = x.reshape(num, dim)
    top = np.empty_like(bottom)
    norm = np.full(num if across_spatial else num * spatial_dim, eps, dtype=np.float64)   # caffe_set(eps)
    for n in range(num):
        buffer = [bottom[n, i] * bottom[n, i] for i in range(dim)]                         # caffe_sqr
        if across_spatial:
            norm[n] = (sum(abs(b) for b in buffer) + eps) ** 0.5                          # asum + eps, ^0.5
            for i in range(dim):
                top[n, i] = (1.0 / norm[n]) * bottom[n, i]
        else:
            base = n * spatial_dim
            for s in range(spatial_dim):                                                   # gemv, beta = 1
                for c in range(channels):
                    norm[base + s] += buffer[c * spatial_dim + s]
            for s in range(spatial_dim):
                norm[base + s] = norm[base + s] ** 0.5
            for c in range(channels):
                for s in range(spatial_dim):
                    top[n, c * spatial_dim + s] = bottom[n, c * spatial_dim + s] / norm[base + s]
        if channel_shared:
            top[n] *= scale.reshape(-1)[0]
        else:
            for c in range(channels):
                for s in range(spatial_dim):
                    top[n, c * spatial_dim + s] *= scale[c]
    return top.reshape(x.shape)


@pytest.mark.parametrize("across", [True, False])
@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("shape", [(2, 3, 2, 4), (2, 5), (3, 2, 4)])
def test_normalize_matches_the_forks_loop(across, shared, shape):
    eps = 0.25   # large, so where it is added shows
    body = (f'type: "Normalize" norm_param {{ across_spatial: {str(across).lower()} '
            f'channel_shared: {str(shared).lower()} eps: {eps} }}')
    layer = mk(body, [shape]).double()
    scale = torch.randn(tuple(layer.scale.shape), dtype=torch.float64)
    with torch.no_grad():
        layer.scale.copy_(scale)
    x = torch.randn(*shape, dtype=torch.float64)
    want = port_normalize(x.numpy(), scale.numpy(), across, shared, eps)
    np.testing.assert_allclose(layer(x).detach().numpy(), want, rtol=1e-12, atol=1e-14)


def test_normalize_eps_goes_inside_the_square_root():
    # across channels at one location: (3, 4) has sum of squares 25; eps 11 -> norm sqrt(36) = 6
    layer = mk('type: "Normalize" norm_param { across_spatial: false eps: 11 }', [(1, 2, 1, 1)])
    assert layer(torch.tensor([3.0, 4.0]).view(1, 2, 1, 1)).flatten().tolist() == [0.5, pytest.approx(4 / 6)]
    # across everything: (1, 2, 2, 0) per sample: sum 9, eps 16 -> norm 5
    layer = mk('type: "Normalize" norm_param { eps: 16 }', [(1, 2, 2)])
    y = layer(torch.tensor([[[1.0, 2.0], [2.0, 0.0]]]))
    np.testing.assert_allclose(y.detach().numpy(), [[[0.2, 0.4], [0.4, 0.0]]], rtol=1e-6)


def test_normalize_blob_defaults_and_filler():
    layer = mk('type: "Normalize"', [(2, 3, 4, 4)])
    assert layer.blob_names == ["scale"]
    assert tuple(layer.scale.shape) == ()               # the fork's 0-axis blob (count 1) when channel_shared
    assert layer.scale.item() == 1.0                    # default filler: constant 1
    assert isinstance(layer.scale, torch.nn.Parameter)
    assert layer.p.across_spatial is True and layer.p.channel_shared is True
    assert layer.p.eps == pytest.approx(1e-10)
    per_c = mk('type: "Normalize" norm_param { channel_shared: false scale_filler { type: "constant" value: 20 } }',
               [(2, 3, 4, 4)])
    assert tuple(per_c.scale.shape) == (3,) and per_c.scale.tolist() == [20.0, 20.0, 20.0]
    # SSD's conv4_3_norm: a per-location unit vector times 20
    x = torch.randn(2, 3, 4, 4)
    y = mk('type: "Normalize" norm_param { across_spatial: false channel_shared: false '
           'scale_filler { type: "constant" value: 20 } }', [(2, 3, 4, 4)])(x)
    np.testing.assert_allclose(y.detach().norm(dim=1).numpy(), np.full((2, 4, 4), 20.0), rtol=1e-5)


@pytest.mark.parametrize("across", [True, False])
@pytest.mark.parametrize("shared", [True, False])
def test_normalize_gradcheck_including_scale(across, shared):
    body = (f'type: "Normalize" norm_param {{ across_spatial: {str(across).lower()} '
            f'channel_shared: {str(shared).lower()} eps: 0.01 }}')
    layer = mk(body, [(2, 3, 2, 2)]).double()
    scale = torch.randn(tuple(layer.scale.shape), dtype=torch.float64)
    gradcheck(lambda x, s: functional_call(layer, {"scale": s}, (x,)), torch.randn(2, 3, 2, 2, dtype=torch.float64),
              scale)


def test_normalize_gradient_is_the_forks_backward():
    # normalize_layer.cpp Backward_cpu, across_spatial, channel_shared: dx = s (g - x (x.g) / n^2) / n,
    # dscale = sum(y * g) / s
    layer = mk('type: "Normalize" norm_param { eps: 0.5 }', [(1, 4)]).double()
    with torch.no_grad():
        layer.scale.fill_(1.5)
    x = torch.tensor([[1.0, -2.0, 0.5, 3.0]], dtype=torch.float64, requires_grad=True)
    g = torch.tensor([[0.3, 0.1, -0.7, 0.2]], dtype=torch.float64)
    y = layer(x)
    y.backward(g)
    xn, gn = x.detach().numpy()[0], g.numpy()[0]
    n = math.sqrt(float((xn ** 2).sum()) + 0.5)
    a = float(xn @ gn)
    want = [1.5 * (gn[i] - xn[i] * a / n / n) / n for i in range(4)]
    np.testing.assert_allclose(x.grad.numpy()[0], want, rtol=1e-12)
    assert layer.scale.grad.item() == pytest.approx(float((y.detach().numpy()[0] * gn).sum()) / 1.5, rel=1e-12)


def test_normalize_errors():
    with pytest.raises(NetError, match=r"layer 'l' \(Normalize\): bottom must have 2 to 4 axes"):
        mk('type: "Normalize"', [(2, 3, 4, 4, 4)])
    with pytest.raises(NetError, match=r"bottom must have 2 to 4 axes"):
        mk('type: "Normalize"', [(6,)])
    with pytest.raises(NetError, match=r"unknown param 'across_spacial' in norm_param \(did you mean across_spatial\?\)"):
        mk('type: "Normalize" norm_param { across_spacial: false }', [(2, 3)])


# ================================================================ PriorBox

def port_prior_box(layer_h, layer_w, img_hw_bottom, min_size, max_size=(), aspect_ratio=(), flip=True, clip=False,
                   variance=(), img_size=None, img_h=None, img_w=None, step=None, step_h=None, step_w=None,
                   offset=0.5):
    """prior_box_layer.cpp LayerSetUp and Forward_cpu, float where the C++ has float, double where it has
    double; the result as a float32 top (1, 2, dim)."""
    min_sizes = [f32(m) for m in min_size]
    aspect_ratios = [f32(1.0)]
    for a in aspect_ratio:
        ar = f32(a)
        already_exist = False
        for j in range(len(aspect_ratios)):
            if abs(ar - aspect_ratios[j]) < 1e-6:
                already_exist = True
                break
        if not already_exist:
            aspect_ratios.append(ar)
            if flip:
                aspect_ratios.append(f32(1.0 / float(ar)))
    num_priors = len(aspect_ratios) * len(min_sizes)
    max_sizes = [f32(m) for m in max_size]
    num_priors += len(max_sizes)
    variance_ = [f32(v) for v in variance] or [f32(0.1)]
    if img_h is not None or img_w is not None:
        img_h_, img_w_ = img_h, img_w
    elif img_size is not None:
        img_h_ = img_w_ = img_size
    else:
        img_h_ = img_w_ = 0
    if step_h is not None or step_w is not None:
        step_h_, step_w_ = f32(step_h), f32(step_w)
    elif step is not None:
        step_h_ = step_w_ = f32(step)
    else:
        step_h_ = step_w_ = f32(0)
    # Forward_cpu
    if img_h_ == 0 or img_w_ == 0:
        img_height, img_width = img_hw_bottom
    else:
        img_width, img_height = img_w_, img_h_
    if step_w_ == 0 or step_h_ == 0:
        step_w = f32(img_width) / f32(layer_w)
        step_h = f32(img_height) / f32(layer_h)
    else:
        step_w, step_h = step_w_, step_h_
    dim = layer_h * layer_w * num_priors * 4
    top = np.zeros(2 * dim, dtype=np.float32)
    idx = 0

    def put(center_x, center_y, box_width, box_height):
        nonlocal idx
        for v in ((float(center_x) - float(box_width) / 2.0) / img_width,
                  (float(center_y) - float(box_height) / 2.0) / img_height,
                  (float(center_x) + float(box_width) / 2.0) / img_width,
                  (float(center_y) + float(box_height) / 2.0) / img_height):
            top[idx] = v
            idx += 1

    for h in range(layer_h):
        for w in range(layer_w):
            center_x = (f32(w) + f32(offset)) * step_w
            center_y = (f32(h) + f32(offset)) * step_h
            for s in range(len(min_sizes)):
                min_size_ = int(min_sizes[s])
                box_width = box_height = f32(min_size_)
                put(center_x, center_y, box_width, box_height)
                if max_sizes:
                    max_size_ = int(max_sizes[s])
                    box_width = box_height = f32(math.sqrt(min_size_ * max_size_))
                    put(center_x, center_y, box_width, box_height)
                for r in range(len(aspect_ratios)):
                    ar = aspect_ratios[r]
                    if abs(float(ar) - 1.0) < 1e-6:
                        continue
                    box_width = f32(min_size_ * math.sqrt(float(ar)))
                    box_height = f32(min_size_ / math.sqrt(float(ar)))
                    put(center_x, center_y, box_width, box_height)
    if clip:
        for d in range(dim):
            top[d] = min(max(top[d], f32(0.0)), f32(1.0))
    if len(variance_) == 1:
        top[dim:] = variance_[0]
    else:
        count = 0
        for h in range(layer_h):
            for w in range(layer_w):
                for i in range(num_priors):
                    for j in range(4):
                        top[dim + count] = variance_[j]
                        count += 1
    return top.reshape(1, 2, dim)


def prior_layer(params: str, fm=(1, 4, 2, 2), img=(1, 3, 8, 8)):
    shapes = [fm] if img is None else [fm, img]
    bottoms = ("fm",) if img is None else ("fm", "img")
    return mk(f'type: "PriorBox" prior_box_param {{ {params} }}', shapes, bottoms)


def run_prior(layer, fm=(1, 4, 2, 2), img=(1, 3, 8, 8), dtype=torch.float32):
    args = [torch.zeros(fm, dtype=dtype)] + ([] if img is None else [torch.zeros(img, dtype=dtype)])
    return layer(*args)


def test_prior_box_2x2_by_hand():
    # 8x8 image, 2x2 map: step 4, centers (2, 2), (6, 2), (2, 6), (6, 6) (x, y), row by row.
    # min_size 2, max_size 8, aspect_ratio 2 with flip: per cell 2x2, sqrt(16) = 4 -> 4x4, then w x h =
    # 2 sqrt(2) x sqrt(2), then sqrt(2) x 2 sqrt(2).
    layer = prior_layer("min_size: 2 max_size: 8 aspect_ratio: 2")
    assert layer.num_priors == 4
    top = run_prior(layer)
    assert tuple(top.shape) == (1, 2, 2 * 2 * 4 * 4)
    r2 = math.sqrt(2)
    want = []
    for cy in (2, 6):
        for cx in (2, 6):
            for bw, bh in ((2, 2), (4, 4), (2 * r2, r2), (r2, 2 * r2)):
                want += [(cx - bw / 2) / 8, (cy - bh / 2) / 8, (cx + bw / 2) / 8, (cy + bh / 2) / 8]
    np.testing.assert_allclose(top[0, 0].numpy(), want, rtol=0, atol=1e-7)
    assert top[0, 0, :8].tolist() == [0.125, 0.125, 0.375, 0.375, 0.0, 0.0, 0.5, 0.5]
    np.testing.assert_array_equal(top[0, 1].numpy(), np.full(64, np.float32(0.1)))
    assert not top.requires_grad and layer.blob_names == []


@pytest.mark.parametrize("params,kw", [
    ("min_size: 2 max_size: 8 aspect_ratio: 2", dict(min_size=[2], max_size=[8], aspect_ratio=[2])),
    ("min_size: 3 aspect_ratio: 2 aspect_ratio: 3 flip: false clip: true variance: 0.1 variance: 0.1 "
     "variance: 0.2 variance: 0.2", dict(min_size=[3], aspect_ratio=[2, 3], flip=False, clip=True,
                                         variance=[0.1, 0.1, 0.2, 0.2])),
    ("min_size: 2 min_size: 5.7 max_size: 4 max_size: 9 aspect_ratio: 2 aspect_ratio: 2 aspect_ratio: 0.5 "
     "aspect_ratio: 1 aspect_ratio: 3 variance: 0.3", dict(min_size=[2, 5.7], max_size=[4, 9],
                                                        aspect_ratio=[2, 2, 0.5, 1, 3], variance=[0.3])),
    ("min_size: 3 img_size: 10 step: 3 offset: 0.25 clip: true", dict(min_size=[3], img_size=10, step=3,
                                                                      offset=0.25, clip=True)),
    ("min_size: 3 img_h: 12 img_w: 9 step_h: 2.5 step_w: 4 aspect_ratio: 1.7",
     dict(min_size=[3], img_h=12, img_w=9, step_h=2.5, step_w=4, aspect_ratio=[1.7])),
])
@pytest.mark.parametrize("fm,img", [((1, 4, 2, 3), (1, 3, 9, 13)), ((2, 4, 3, 3), (2, 3, 7, 7))])
def test_prior_box_matches_the_forks_loop_exactly(params, kw, fm, img):
    layer = prior_layer(params, fm, img)
    top = run_prior(layer, fm, img)
    want = port_prior_box(fm[2], fm[3], img[2:], **kw)
    assert tuple(top.shape) == want.shape == tuple(layer.infer_top_shapes([fm, img])[0])
    np.testing.assert_array_equal(top.numpy(), want)
    # a float64 top holds the same float-computed values (stored without the float rounding)
    top64 = run_prior(layer, fm, img, torch.float64)
    assert top64.dtype == torch.float64
    np.testing.assert_allclose(top64.numpy(), want, rtol=1e-7, atol=1e-7)


def test_prior_box_rules():
    # duplicate aspect ratios, 1, and flips of ratios already there are dropped: 2, 0.5, 3, 1/3 -> 5 per min_size
    assert prior_layer("min_size: 2 aspect_ratio: 2 aspect_ratio: 0.5 aspect_ratio: 1 aspect_ratio: 3 "
                       "aspect_ratio: 2").num_priors == 5
    assert prior_layer("min_size: 2 aspect_ratio: 2 flip: false").num_priors == 2
    assert prior_layer("min_size: 2 min_size: 3 max_size: 4 max_size: 5 aspect_ratio: 2").num_priors == 8
    # the fork truncates min_size to an integer when it makes the boxes: 3.9 -> a 3-pixel box
    top = run_prior(prior_layer("min_size: 3.9"), (1, 1, 1, 1), (1, 1, 6, 6))
    assert top[0, 0].tolist() == [0.25, 0.25, 0.75, 0.75]
    # one bottom with the image size given; the top depends only on shapes and is a fresh tensor each time
    layer = prior_layer("min_size: 4 img_size: 8", img=None)
    a, b = run_prior(layer, img=None), run_prior(layer, img=None)
    assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()
    assert torch.equal(a, run_prior(prior_layer("min_size: 4")))
    # a new feature-map shape gives its own priors
    assert tuple(run_prior(layer, fm=(1, 4, 3, 1), img=None).shape) == (1, 2, 3 * 1 * 1 * 4)


@pytest.mark.parametrize("params,img,msg", [
    ("max_size: 3", (1, 3, 8, 8), r"missing min_size"),
    ("min_size: 0", (1, 3, 8, 8), r"min_size must be positive"),
    ("min_size: 4 max_size: 4", (1, 3, 8, 8), r"max_size 4 must be greater than its min_size 4"),
    ("min_size: 4 min_size: 5 max_size: 9", (1, 3, 8, 8), r"1 max_size value\(s\) for 2 min_size"),
    ("min_size: 4 variance: 0.1 variance: 0.2", (1, 3, 8, 8), r"give 1 or 4 variance values"),
    ("min_size: 4 variance: 0", (1, 3, 8, 8), r"variance values must be positive"),
    ("min_size: 4 img_size: 8 img_h: 8", (1, 3, 8, 8), r"either img_size or img_h/img_w, not both"),
    ("min_size: 4 img_h: 8", (1, 3, 8, 8), r"img_h and img_w must both be given"),
    ("min_size: 4 step: 2 step_w: 2", (1, 3, 8, 8), r"either step or step_h/step_w"),
    ("min_size: 4 step_h: 2", (1, 3, 8, 8), r"step_h and step_w must both be given"),
    ("min_size: 4 aspect_ratio: -2", (1, 3, 8, 8), r"aspect_ratio must be positive"),
    ("min_size: 4", None, r"with one bottom \(the feature map\) the image size must be given"),
    ("min_size: 4", (3, 8, 8), r"bottom 1 \(the image\) must have 4 axes"),
    ("min_size: 4 flipp: true", (1, 3, 8, 8), r"unknown param 'flipp' in prior_box_param \(did you mean flip\?\)"),
])
def test_prior_box_errors(params, img, msg):
    with pytest.raises(NetError, match=r"layer 'l' \(PriorBox\)") as e:
        prior_layer(params, img=img)
    assert e.match(msg) and "\n" not in str(e.value)


# ================================================================ bbox_util ports (DetectionOutput)

class BBox:
    """NormalizedBBox (the fields used here), Python floats."""

    def __init__(self, xmin=0.0, ymin=0.0, xmax=0.0, ymax=0.0):
        self.xmin, self.ymin, self.xmax, self.ymax = xmin, ymin, xmax, ymax
        self.size = None

    def coords(self):
        return [self.xmin, self.ymin, self.xmax, self.ymax]


def port_bbox_size(bbox):
    if bbox.xmax < bbox.xmin or bbox.ymax < bbox.ymin:
        return 0.0
    if bbox.size is not None:
        return bbox.size
    return (bbox.xmax - bbox.xmin) * (bbox.ymax - bbox.ymin)


def port_intersect_bbox(b1, b2):
    if b2.xmin > b1.xmax or b2.xmax < b1.xmin or b2.ymin > b1.ymax or b2.ymax < b1.ymin:
        return BBox(0, 0, 0, 0)
    return BBox(max(b1.xmin, b2.xmin), max(b1.ymin, b2.ymin), min(b1.xmax, b2.xmax), min(b1.ymax, b2.ymax))


def port_jaccard_overlap(b1, b2):
    inter = port_intersect_bbox(b1, b2)
    intersect_width = inter.xmax - inter.xmin
    intersect_height = inter.ymax - inter.ymin
    if intersect_width > 0 and intersect_height > 0:
        intersect_size = intersect_width * intersect_height
        return intersect_size / (port_bbox_size(b1) + port_bbox_size(b2) - intersect_size)
    return 0.0


def port_decode_bbox(prior, var, code_type, variance_encoded_in_target, bbox):
    d = BBox()
    if code_type == "CORNER":
        if variance_encoded_in_target:
            d.xmin, d.ymin = prior.xmin + bbox.xmin, prior.ymin + bbox.ymin
            d.xmax, d.ymax = prior.xmax + bbox.xmax, prior.ymax + bbox.ymax
        else:
            d.xmin = prior.xmin + var[0] * bbox.xmin
            d.ymin = prior.ymin + var[1] * bbox.ymin
            d.xmax = prior.xmax + var[2] * bbox.xmax
            d.ymax = prior.ymax + var[3] * bbox.ymax
    elif code_type == "CENTER_SIZE":
        prior_width = prior.xmax - prior.xmin
        assert prior_width > 0
        prior_height = prior.ymax - prior.ymin
        assert prior_height > 0
        prior_center_x = (prior.xmin + prior.xmax) / 2.0
        prior_center_y = (prior.ymin + prior.ymax) / 2.0
        if variance_encoded_in_target:
            cx = bbox.xmin * prior_width + prior_center_x
            cy = bbox.ymin * prior_height + prior_center_y
            w = math.exp(bbox.xmax) * prior_width
            h = math.exp(bbox.ymax) * prior_height
        else:
            cx = var[0] * bbox.xmin * prior_width + prior_center_x
            cy = var[1] * bbox.ymin * prior_height + prior_center_y
            w = math.exp(var[2] * bbox.xmax) * prior_width
            h = math.exp(var[3] * bbox.ymax) * prior_height
        d.xmin, d.ymin, d.xmax, d.ymax = cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0
    elif code_type == "CORNER_SIZE":
        prior_width = prior.xmax - prior.xmin
        assert prior_width > 0
        prior_height = prior.ymax - prior.ymin
        assert prior_height > 0
        if variance_encoded_in_target:
            d.xmin = prior.xmin + bbox.xmin * prior_width
            d.ymin = prior.ymin + bbox.ymin * prior_height
            d.xmax = prior.xmax + bbox.xmax * prior_width
            d.ymax = prior.ymax + bbox.ymax * prior_height
        else:
            d.xmin = prior.xmin + var[0] * bbox.xmin * prior_width
            d.ymin = prior.ymin + var[1] * bbox.ymin * prior_height
            d.xmax = prior.xmax + var[2] * bbox.xmax * prior_width
            d.ymax = prior.ymax + var[3] * bbox.ymax * prior_height
    d.size = port_bbox_size(d)
    return d


def port_get_max_score_index(scores, threshold, top_k):
    score_index_vec = [(scores[i], i) for i in range(len(scores)) if scores[i] > threshold]
    score_index_vec = sorted(score_index_vec, key=lambda p: -p[0])        # std::stable_sort, descending
    if -1 < top_k < len(score_index_vec):
        score_index_vec = score_index_vec[:top_k]
    return score_index_vec


def port_apply_nms_fast(bboxes, scores, score_threshold, nms_threshold, eta, top_k):
    score_index_vec = port_get_max_score_index(scores, score_threshold, top_k)
    adaptive_threshold = f32(nms_threshold)
    indices = []
    while score_index_vec:
        idx = score_index_vec[0][1]
        keep = True
        for k in range(len(indices)):
            if keep:
                kept_idx = indices[k]
                overlap = port_jaccard_overlap(bboxes[idx], bboxes[kept_idx])
                keep = overlap <= adaptive_threshold
            else:
                break
        if keep:
            indices.append(idx)
        score_index_vec.pop(0)
        if keep and eta < 1 and adaptive_threshold > 0.5:
            adaptive_threshold = f32(adaptive_threshold * f32(eta))
    return indices


def port_detection_output(loc_data, conf_data, prior_data, num_classes, share_location=True, background_label_id=0,
                          nms_threshold=0.3, top_k=-1, eta=1.0, code_type="CORNER",
                          variance_encoded_in_target=False, keep_top_k=-1, confidence_threshold=None,
                          gpu_decode=False):
    """detection_output_layer.cpp Forward_cpu with bbox_util's GetLocPredictions, GetConfidenceScores,
    GetPriorBBoxes and DecodeBBoxesAll: flat lists in, the top as a list of 7-value rows. LOG(FATAL) raises
    RuntimeError. gpu_decode: skip loc classes as bbox_util.cu's DecodeBBoxesKernel does (only when not
    share_location), not as DecodeBBoxesAll (which also skips the shared label -1 when background_label_id is
    -1, and then stops)."""
    num = len(loc_data) // (len(prior_data) // 8 * (1 if share_location else num_classes) * 4)
    num_priors = len(prior_data) // 8
    num_loc_classes = 1 if share_location else num_classes
    conf_threshold = float(f32(confidence_threshold)) if confidence_threshold is not None else -FLT_MAX
    # GetLocPredictions
    all_loc_preds = []
    off = 0
    for i in range(num):
        label_bbox = {}
        for p in range(num_priors):
            start_idx = p * num_loc_classes * 4
            for c in range(num_loc_classes):
                label = -1 if share_location else c
                label_bbox.setdefault(label, [None] * num_priors)
                label_bbox[label][p] = BBox(*[loc_data[off + start_idx + c * 4 + k] for k in range(4)])
        off += num_priors * num_loc_classes * 4
        all_loc_preds.append(label_bbox)
    # GetConfidenceScores
    all_conf_scores = []
    off = 0
    for i in range(num):
        label_scores = {}
        for p in range(num_priors):
            start_idx = p * num_classes
            for c in range(num_classes):
                label_scores.setdefault(c, []).append(conf_data[off + start_idx + c])
        off += num_priors * num_classes
        all_conf_scores.append(label_scores)
    # GetPriorBBoxes
    prior_bboxes, prior_variances = [], []
    for i in range(num_priors):
        b = BBox(*prior_data[i * 4:i * 4 + 4])
        b.size = port_bbox_size(b)
        prior_bboxes.append(b)
    for i in range(num_priors):
        start_idx = (num_priors + i) * 4
        prior_variances.append([prior_data[start_idx + j] for j in range(4)])
    # DecodeBBoxesAll
    all_decode_bboxes = []
    for i in range(num):
        decode_bboxes = {}
        for c in range(num_loc_classes):
            label = -1 if share_location else c
            if (not share_location and c == background_label_id) if gpu_decode else label == background_label_id:
                continue
            decode_bboxes[label] = [port_decode_bbox(prior_bboxes[k], prior_variances[k], code_type,
                                                     variance_encoded_in_target, all_loc_preds[i][label][k])
                                    for k in range(num_priors)]
        all_decode_bboxes.append(decode_bboxes)
    num_kept = 0
    all_indices = []
    for i in range(num):
        decode_bboxes, conf_scores = all_decode_bboxes[i], all_conf_scores[i]
        indices = {}
        num_det = 0
        for c in range(num_classes):
            if c == background_label_id:
                continue
            scores = conf_scores[c]
            label = -1 if share_location else c
            if label not in decode_bboxes:
                raise RuntimeError(f"Could not find location predictions for label {label}")
            bboxes = decode_bboxes[label]
            indices[c] = port_apply_nms_fast(bboxes, scores, conf_threshold, nms_threshold, eta, top_k)
            num_det += len(indices[c])
        if keep_top_k > -1 and num_det > keep_top_k:
            score_index_pairs = []
            for label in sorted(indices):
                for idx in indices[label]:
                    score_index_pairs.append((conf_scores[label][idx], (label, idx)))
            score_index_pairs = sorted(score_index_pairs, key=lambda p: -p[0])[:keep_top_k]
            new_indices = {}
            for score, (label, idx) in score_index_pairs:
                new_indices.setdefault(label, []).append(idx)
            all_indices.append(new_indices)
            num_kept += keep_top_k
        else:
            all_indices.append(indices)
            num_kept += num_det
    if num_kept == 0:
        return [[i, -1, -1, -1, -1, -1, -1] for i in range(num)]
    rows = []
    for i in range(num):
        for label in sorted(all_indices[i]):
            scores = all_conf_scores[i][label]
            bboxes = all_decode_bboxes[i][-1 if share_location else label]
            for idx in all_indices[i][label]:
                rows.append([i, label, scores[idx], *bboxes[idx].coords()])
    return rows


# ================================================================ DetectionOutput

def det_layer(params, loc_shape, conf_shape, prior_shape):
    return mk(f'type: "DetectionOutput" detection_output_param {{ {params} }}', [loc_shape, conf_shape, prior_shape],
              ("loc", "conf", "prior"), phase="TEST")


def random_case(gen, num, num_priors, num_classes, share_location=True):
    """Priors clustered around a few centers (so NMS has overlaps to suppress), locs, softmaxed confs."""
    centers = gen.uniform(0.25, 0.75, size=(3, 2))
    pc = centers[gen.integers(0, 3, size=num_priors)] + gen.normal(0, 0.03, size=(num_priors, 2))
    wh = gen.uniform(0.1, 0.4, size=(num_priors, 2))
    prior = np.concatenate([pc - wh / 2, pc + wh / 2], axis=1)
    var = np.tile([0.1, 0.1, 0.2, 0.2], (num_priors, 1))
    prior_blob = np.stack([prior.reshape(-1), var.reshape(-1)])[None]
    n_loc = 1 if share_location else num_classes
    loc = gen.normal(0, 0.5, size=(num, num_priors * n_loc * 4))
    logits = gen.normal(0, 2, size=(num, num_priors, num_classes))
    conf = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    return loc, conf.reshape(num, -1), prior_blob


@pytest.mark.parametrize("code_type", ["CORNER", "CENTER_SIZE", "CORNER_SIZE"])
@pytest.mark.parametrize("encoded", [False, True])
def test_decode_matches_decode_bbox(code_type, encoded):
    gen = np.random.default_rng(3)
    loc, _, prior = random_case(gen, 2, 7, 3)
    layer = det_layer(f"num_classes: 3 code_type: {code_type} variance_encoded_in_target: {str(encoded).lower()}",
                      loc.shape, (2, 21), prior.shape)
    got = layer.decode(torch.from_numpy(loc).view(2, 7, 1, 4).transpose(1, 2),
                       torch.from_numpy(prior).view(2, 7, 4)).numpy()
    pv = prior.reshape(2, 7, 4)
    for n in range(2):
        for k in range(7):
            want = port_decode_bbox(BBox(*pv[0, k]), list(pv[1, k]), code_type, encoded,
                                    BBox(*loc[n, k * 4:k * 4 + 4]))
            np.testing.assert_allclose(got[n, 0, k], want.coords(), rtol=1e-12, atol=1e-15)


def test_code_type_default_and_numbers():
    shapes = ((1, 8), (1, 4), (1, 2, 8))
    assert det_layer("num_classes: 2", *shapes).p.code_type == "CORNER"      # caffe.proto's default
    assert det_layer("num_classes: 2 code_type: 2", *shapes).p.code_type == "CENTER_SIZE"   # CORNER = 1
    assert det_layer("num_classes: 2 code_type: 3", *shapes).p.code_type == "CORNER_SIZE"
    with pytest.raises(NetError, match=r"'code_type' expects one of CORNER \(1\), CENTER_SIZE \(2\)"):
        det_layer("num_classes: 2 code_type: 0", *shapes)
    with pytest.raises(NetError, match=r"'code_type' expects one of CORNER, CENTER_SIZE, CORNER_SIZE.*did you mean "
                                       r"CENTER_SIZE"):
        det_layer("num_classes: 2 code_type: CENTER_SIZ", *shapes)


CONFIGS = [
    dict(),
    dict(confidence_threshold=0.05, nms_threshold=0.45, keep_top_k=6),
    dict(share_location=False, confidence_threshold=0.01, nms_threshold=0.3, top_k=5),
    dict(background_label_id=-1, nms_threshold=0.6, eta=0.9, code_type="CENTER_SIZE", gpu_decode=True),
    dict(background_label_id=-1, share_location=False, nms_threshold=0.7, eta=0.8, top_k=6),
    dict(background_label_id=2, code_type="CORNER_SIZE", variance_encoded_in_target=True, keep_top_k=3, top_k=4,
         nms_threshold=0.2),
    dict(code_type="CENTER_SIZE", confidence_threshold=0.3, keep_top_k=0),
]


def config_text(cfg, num_classes):
    nms = {k: cfg[k] for k in ("nms_threshold", "top_k", "eta") if k in cfg}
    parts = [f"num_classes: {num_classes}"]
    for k, v in cfg.items():
        if k in nms or k == "gpu_decode":
            continue
        parts.append(f"{k}: {str(v).lower() if isinstance(v, bool) else v}")
    if nms:
        parts.append("nms_param { " + " ".join(f"{k}: {v}" for k, v in nms.items()) + " }")
    return " ".join(parts)


@pytest.mark.parametrize("cfg", CONFIGS)
@pytest.mark.parametrize("seed,row_by_row", [(0, False), (1, False), (2, True)])
def test_detection_output_matches_the_forks_forward(cfg, seed, row_by_row, monkeypatch):
    if row_by_row:   # the path taken for classes with many candidates: overlaps a row at a time
        import layers.forks.ssd
        monkeypatch.setattr(layers.forks.ssd, "MASK_LIMIT", 4)
    gen = np.random.default_rng(seed)
    num, num_priors, num_classes = 2, 24, 4
    loc, conf, prior = random_case(gen, num, num_priors, num_classes, cfg.get("share_location", True))
    if cfg.get("gpu_decode"):
        # the fork's CPU forward stops here (DecodeBBoxesAll skips the shared label -1 as the background);
        # its GPU forward, which the layer follows, decodes the shared boxes
        with pytest.raises(RuntimeError, match="Could not find location predictions for label -1"):
            port_detection_output(list(loc.reshape(-1)), list(conf.reshape(-1)), list(prior.reshape(-1)),
                                  num_classes, **{**cfg, "gpu_decode": False})
    layer = det_layer(config_text(cfg, num_classes), loc.shape, conf.shape, prior.shape)
    want = port_detection_output(list(loc.reshape(-1)), list(conf.reshape(-1)), list(prior.reshape(-1)),
                                 num_classes, **cfg)
    top = layer(torch.from_numpy(loc), torch.from_numpy(conf), torch.from_numpy(prior))
    assert top.dtype == torch.float64 and top.shape == (1, 1, len(want), 7)
    got = top[0, 0].numpy()
    np.testing.assert_array_equal(got[:, :2], np.array(want)[:, :2])     # the same image, class, order
    np.testing.assert_allclose(got, np.array(want, dtype=np.float64), rtol=1e-12, atol=1e-14)


def test_detection_output_float32_agrees_with_the_port():
    gen = np.random.default_rng(5)
    loc, conf, prior = random_case(gen, 2, 30, 5)
    cfg = dict(confidence_threshold=0.02, nms_threshold=0.45, keep_top_k=10, code_type="CENTER_SIZE")
    layer = det_layer(config_text(cfg, 5), loc.shape, conf.shape, prior.shape)
    loc32, conf32, prior32 = (a.astype(np.float32) for a in (loc, conf, prior))
    top = layer(*(torch.from_numpy(a) for a in (loc32, conf32, prior32)))
    want = port_detection_output(*(list(a.reshape(-1).astype(np.float64)) for a in (loc32, conf32, prior32)), 5, **cfg)
    assert top.dtype == torch.float32
    np.testing.assert_array_equal(top[0, 0, :, :2].numpy(), np.array(want)[:, :2])
    np.testing.assert_allclose(top[0, 0].numpy(), np.array(want), rtol=1e-6, atol=1e-6)


def test_apply_nms_fast_and_jaccard_port_cases():
    # the ports themselves on cases worked out by hand (the layer is checked against them above)
    a, b = BBox(0, 0, 0.4, 0.4), BBox(0.2, 0.2, 0.6, 0.6)
    assert port_jaccard_overlap(a, b) == pytest.approx(0.04 / (0.16 + 0.16 - 0.04))
    assert port_jaccard_overlap(a, BBox(0.4, 0, 0.8, 0.4)) == 0.0          # touching: zero-width intersection
    assert port_jaccard_overlap(a, BBox(0.5, 0.5, 0.3, 0.3)) == 0.0        # invalid box
    boxes = [a, BBox(0.01, 0, 0.41, 0.4), b, BBox(0.7, 0.7, 0.9, 0.9)]
    assert port_apply_nms_fast(boxes, [0.9, 0.8, 0.7, 0.05], 0.1, 0.5, 1.0, -1) == [0, 2]
    assert port_apply_nms_fast(boxes, [0.9, 0.8, 0.7, 0.05], -1, 0.5, 1.0, 2) == [0]    # top_k before NMS
    assert port_apply_nms_fast(boxes, [0.5, 0.5, 0.5, 0.5], -1, 0.05, 1.0, -1) == [0, 3]  # ties: index order


def test_detection_output_crafted_case():
    # 4 priors used as they are (CORNER, zero offsets): A, B nearly on A (IoU 0.82), C apart, D small apart.
    A, B, C, D = [0.0, 0.0, 0.4, 0.4], [0.02, 0.02, 0.42, 0.42], [0.6, 0.6, 0.9, 0.9], [0.45, 0.45, 0.55, 0.55]
    prior = torch.tensor([[A + B + C + D, [0.1] * 16]])
    loc = torch.zeros(1, 16)
    #                  bg    cls1   cls2
    conf = torch.tensor([[0.95, 0.90, 0.10],    # A
                         [0.99, 0.80, 0.05],    # B: suppressed by A in both classes
                         [0.50, 0.30, 0.70],    # C
                         [0.90, 0.005, 0.60]]).view(1, 12)   # D: below the threshold for class 1
    body = "num_classes: 3 confidence_threshold: 0.01 nms_param { nms_threshold: 0.45 }"
    layer = det_layer(body, (1, 16), (1, 12), (1, 2, 16))
    rows = layer(loc, conf, prior)[0, 0].tolist()
    want = [[0, 1, 0.90, *A], [0, 1, 0.30, *C], [0, 2, 0.70, *C], [0, 2, 0.60, *D], [0, 2, 0.10, *A]]
    np.testing.assert_allclose(rows, want, rtol=1e-6)
    # keep_top_k 3 keeps the 3 best scores over the classes: 0.9 (1, A), 0.7 (2, C), 0.6 (2, D)
    layer = det_layer(body + " keep_top_k: 3", (1, 16), (1, 12), (1, 2, 16))
    rows = layer(loc, conf, prior)[0, 0].tolist()
    np.testing.assert_allclose(rows, [[0, 1, 0.90, *A], [0, 2, 0.70, *C], [0, 2, 0.60, *D]], rtol=1e-6)
    # a looser NMS keeps B too; with background_label_id -1 the background class is a class like the others
    layer = det_layer("num_classes: 3 background_label_id: -1 confidence_threshold: 0.92 nms_param { "
                      "nms_threshold: 0.9 }", (1, 16), (1, 12), (1, 2, 16))
    rows = layer(loc, conf, prior)[0, 0].tolist()
    np.testing.assert_allclose(rows, [[0, 0, 0.99, *B], [0, 0, 0.95, *A]], rtol=1e-6)


def test_detection_output_boundaries_ties_and_adaptive_nms():
    # an overlap exactly at the threshold is kept (the fork's test is overlap <= threshold): A vs B has
    # IoU 0.125 / 0.25 = 0.5 exactly (in float too)
    A, B = [0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.5, 0.25]
    prior = torch.tensor([[A + B, [0.1] * 8]])
    conf = torch.tensor([[0.1, 0.9, 0.1, 0.8]])
    for thr, n in ((0.5, 2), (0.49, 1)):
        layer = det_layer(f"num_classes: 2 nms_param {{ nms_threshold: {thr} }}", (1, 8), (1, 4), (1, 2, 8))
        assert layer(torch.zeros(1, 8), conf, prior).shape == (1, 1, n, 7)
    # equal scores keep the priors' order (std::stable_sort in GetMaxScoreIndex): 60 disjoint boxes, 3 scores
    n = 60
    xs = torch.arange(n, dtype=torch.float64) / n
    boxes = torch.stack([xs, xs * 0, xs + 0.5 / n, xs * 0 + 0.5], 1)
    prior = torch.stack([boxes.reshape(-1), torch.full((4 * n,), 0.1, dtype=torch.float64)])[None]
    gen = np.random.default_rng(0)
    s = torch.from_numpy(gen.choice([0.2, 0.5, 0.7], size=n))
    conf = torch.stack([1 - s, s], 1).reshape(1, -1)
    layer = det_layer("num_classes: 2 nms_param { top_k: 50 } keep_top_k: 45", (1, 4 * n), (1, 2 * n), (1, 2, 4 * n))
    rows = layer(torch.zeros(1, 4 * n, dtype=torch.float64), conf, prior)[0, 0]
    want = port_detection_output([0.0] * (4 * n), list(conf.reshape(-1).numpy()), list(prior.reshape(-1).numpy()), 2,
                                 top_k=50, keep_top_k=45)
    assert rows.shape[0] == 45
    np.testing.assert_array_equal(rows.numpy(), np.array(want))
    order = [int(round(x * n)) for x in rows[:, 3].tolist()]
    assert order == sorted(range(n), key=lambda i: -float(s[i]))[:45]
    # adaptive NMS: the threshold 0.9 shrinks by eta 0.5 after the first kept box, to 0.45 (<= 0.5: then fixed),
    # so a box overlapping the second kept one by 0.5 is suppressed, which a fixed 0.9 would keep
    C, D, E = [0.0, 0.0, 0.1, 0.1], [0.5, 0.5, 1.0, 1.0], [0.5, 0.5, 1.0, 0.75]
    prior = torch.tensor([[C + D + E, [0.1] * 12]])
    conf = torch.tensor([[0.1, 0.9, 0.2, 0.8, 0.3, 0.7]])
    for eta, n_det in ((1.0, 3), (0.5, 2)):
        layer = det_layer(f"num_classes: 2 nms_param {{ nms_threshold: 0.9 eta: {eta} }}", (1, 12), (1, 6), (1, 2, 12))
        assert layer(torch.zeros(1, 12), conf, prior).shape == (1, 1, n_det, 7)


def test_detection_output_nothing_detected():
    # the fork's convention: one row per image, [image_id, -1, -1, -1, -1, -1, -1]
    gen = np.random.default_rng(0)
    loc, conf, prior = random_case(gen, 3, 5, 3)
    layer = det_layer("num_classes: 3 confidence_threshold: 0.999", loc.shape, conf.shape, prior.shape)
    top = layer(*(torch.from_numpy(a).float() for a in (loc, conf, prior)))
    assert top.shape == (1, 1, 3, 7)
    assert top[0, 0].tolist() == [[i, -1, -1, -1, -1, -1, -1] for i in range(3)]
    one = det_layer("num_classes: 3 confidence_threshold: 0.999", (1, 20), (1, 15), prior.shape)
    assert one(*(torch.from_numpy(a[:1] if a is not prior else a).float() for a in (loc, conf, prior))).tolist() == \
        [[[[0, -1, -1, -1, -1, -1, -1]]]]


def test_detection_output_no_gradient_and_static_shape():
    gen = np.random.default_rng(1)
    loc, conf, prior = (torch.from_numpy(a).requires_grad_(True) for a in random_case(gen, 1, 6, 3))
    layer = det_layer("num_classes: 3", tuple(loc.shape), tuple(conf.shape), tuple(prior.shape))
    top = layer(loc, conf, prior)
    assert not top.requires_grad and top.grad_fn is None
    assert layer.infer_top_shapes([tuple(loc.shape), tuple(conf.shape), tuple(prior.shape)]) == [(1, 1, 1, 7)]
    # a 4th bottom (the image, for the fork's visualize) is accepted and not read
    layer4 = mk('type: "DetectionOutput" detection_output_param { num_classes: 3 }',
                [tuple(loc.shape), tuple(conf.shape), tuple(prior.shape), (1, 3, 8, 8)],
                ("loc", "conf", "prior", "img"), phase="TEST")
    assert torch.equal(layer4(loc, conf, prior, torch.zeros(1, 3, 8, 8)), top)


def test_detection_output_defaults():
    p = det_layer("num_classes: 2", (1, 8), (1, 4), (1, 2, 8)).p
    assert (p.share_location, p.background_label_id, p.code_type, p.variance_encoded_in_target, p.keep_top_k) == \
        (True, 0, "CORNER", False, -1)
    assert p.nms_param.nms_threshold == pytest.approx(0.3) and p.nms_param.eta == 1.0
    assert not p.nms_param.has("top_k") and not p.has("confidence_threshold")


@pytest.mark.parametrize("params,shapes,msg", [
    ("share_location: true", ((1, 8), (1, 4), (1, 2, 8)), r"missing required param 'num_classes'"),
    ("num_classes: 0", ((1, 8), (1, 4), (1, 2, 8)), r"num_classes must be > 0"),
    ("num_classes: 2", ((1, 12), (1, 4), (1, 2, 8)), r"loc \(1, 12\) has 12 values per image, but 2 priors need 2 \* 4"),
    ("num_classes: 2 share_location: false", ((1, 8), (1, 4), (1, 2, 8)),
     r"but 2 priors need 2 \* 4 \* num_classes \(2\) = 16"),
    ("num_classes: 3", ((1, 8), (1, 4), (1, 2, 8)), r"conf \(1, 4\) has 4 values per image, but 2 priors need"),
    ("num_classes: 2", ((1, 8), (2, 4), (1, 2, 8)), r"loc and conf must have the same number of images"),
    ("num_classes: 2", ((1, 8), (1, 4), (1, 8)), r"bottom 2 \(the priors\) must have shape \(1, 2, P \* 4\)"),
    ("num_classes: 2", ((1, 8), (1, 4), (1, 2, 9)), r"bottom 2 \(the priors\) must have shape"),
    ("num_classes: 2 nms_param { eta: 0 }", ((1, 8), (1, 4), (1, 2, 8)), r"nms_param.eta must be in \(0, 1\]"),
    ("num_classes: 2 nms_param { nms_threshold: -0.1 }", ((1, 8), (1, 4), (1, 2, 8)), r"must be non negative"),
    ("num_classes: 2 nms_param { nms_treshold: 0.5 }", ((1, 8), (1, 4), (1, 2, 8)),
     r"unknown param 'nms_treshold' in nms_param \(did you mean nms_threshold\?\)"),
])
def test_detection_output_errors(params, shapes, msg):
    with pytest.raises(NetError, match=r"layer 'l' \(DetectionOutput\)") as e:
        det_layer(params, *shapes)
    assert e.match(msg) and "\n" not in str(e.value)


def test_detection_output_zero_size_prior_is_an_error_for_size_codes():
    prior = torch.tensor([[[0.1, 0.1, 0.1, 0.5, 0.2, 0.2, 0.4, 0.4], [0.1] * 8]])
    for code in ("CENTER_SIZE", "CORNER_SIZE"):
        layer = det_layer(f"num_classes: 2 code_type: {code}", (1, 8), (1, 4), (1, 2, 8))
        with pytest.raises(NetError, match=rf"prior 0 .* has a width or height <= 0, which code_type {code}"):
            layer(torch.zeros(1, 8), torch.full((1, 4), 0.5), prior)
    corner = det_layer("num_classes: 2", (1, 8), (1, 4), (1, 2, 8))
    assert corner(torch.zeros(1, 8), torch.full((1, 4), 0.5), prior).shape[2] >= 1


def test_detection_output_save_output_param_is_ignored_with_a_warning():
    body = ('num_classes: 2 save_output_param { output_directory: "out" output_format: "VOC" '
            'label_map_file: "labels.prototxt" resize_param { height: 300 width: 300 } }')
    with pytest.warns(NetWarning, match=r"save_output_param is ignored: no result files are written to 'out'"):
        det_layer(body, (1, 8), (1, 4), (1, 2, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        det_layer('num_classes: 2 save_output_param { label_map_file: "x" }', (1, 8), (1, 4), (1, 2, 8))


# ================================================================ an SSD-style head as a Net

SSD_HEAD = """
name: "ssd_head"
input: "data" input_shape { dim: 2 dim: 3 dim: 16 dim: 16 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 8 kernel_size: 3 stride: 2 pad: 1 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "conv1_norm" type: "Normalize" bottom: "conv1" top: "conv1_norm"
        norm_param { across_spatial: false scale_filler { type: "constant" value: 20 } channel_shared: false } }
layer { name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2"
        convolution_param { num_output: 8 kernel_size: 3 stride: 2 pad: 1 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "c1_loc" type: "Convolution" bottom: "conv1_norm" top: "c1_loc"
        convolution_param { num_output: 16 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.01 } } }
layer { name: "c1_loc_perm" type: "Permute" bottom: "c1_loc" top: "c1_loc_perm"
        permute_param { order: 0 order: 2 order: 3 order: 1 } }
layer { name: "c1_loc_flat" type: "Flatten" bottom: "c1_loc_perm" top: "c1_loc_flat" flatten_param { axis: 1 } }
layer { name: "c1_conf" type: "Convolution" bottom: "conv1_norm" top: "c1_conf"
        convolution_param { num_output: 12 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "c1_conf_perm" type: "Permute" bottom: "c1_conf" top: "c1_conf_perm"
        permute_param { order: 0 order: 2 order: 3 order: 1 } }
layer { name: "c1_conf_flat" type: "Flatten" bottom: "c1_conf_perm" top: "c1_conf_flat" flatten_param { axis: 1 } }
layer { name: "c1_prior" type: "PriorBox" bottom: "conv1_norm" bottom: "data" top: "c1_prior"
        prior_box_param { min_size: 4 max_size: 8 aspect_ratio: 2 flip: true clip: false
                          variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 step: 2 offset: 0.5 } }
layer { name: "c2_loc" type: "Convolution" bottom: "conv2" top: "c2_loc"
        convolution_param { num_output: 24 kernel_size: 1 weight_filler { type: "gaussian" std: 0.01 } } }
layer { name: "c2_loc_perm" type: "Permute" bottom: "c2_loc" top: "c2_loc_perm"
        permute_param { order: 0 order: 2 order: 3 order: 1 } }
layer { name: "c2_loc_flat" type: "Flatten" bottom: "c2_loc_perm" top: "c2_loc_flat" flatten_param { axis: 1 } }
layer { name: "c2_conf" type: "Convolution" bottom: "conv2" top: "c2_conf"
        convolution_param { num_output: 18 kernel_size: 1 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "c2_conf_perm" type: "Permute" bottom: "c2_conf" top: "c2_conf_perm"
        permute_param { order: 0 order: 2 order: 3 order: 1 } }
layer { name: "c2_conf_flat" type: "Flatten" bottom: "c2_conf_perm" top: "c2_conf_flat" flatten_param { axis: 1 } }
layer { name: "c2_prior" type: "PriorBox" bottom: "conv2" bottom: "data" top: "c2_prior"
        prior_box_param { min_size: 8 max_size: 14 aspect_ratio: 2 aspect_ratio: 3 flip: true clip: true
                          variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 } }
layer { name: "mbox_loc" type: "Concat" bottom: "c1_loc_flat" bottom: "c2_loc_flat" top: "mbox_loc"
        concat_param { axis: 1 } }
layer { name: "mbox_conf" type: "Concat" bottom: "c1_conf_flat" bottom: "c2_conf_flat" top: "mbox_conf"
        concat_param { axis: 1 } }
layer { name: "mbox_priorbox" type: "Concat" bottom: "c1_prior" bottom: "c2_prior" top: "mbox_priorbox"
        concat_param { axis: 2 } }
layer { name: "mbox_conf_reshape" type: "Reshape" bottom: "mbox_conf" top: "mbox_conf_reshape"
        reshape_param { shape { dim: 0 dim: -1 dim: 3 } } }
layer { name: "mbox_conf_softmax" type: "Softmax" bottom: "mbox_conf_reshape" top: "mbox_conf_softmax"
        softmax_param { axis: 2 } }
layer { name: "mbox_conf_flatten" type: "Flatten" bottom: "mbox_conf_softmax" top: "mbox_conf_flatten"
        flatten_param { axis: 1 } }
layer { name: "detection_out" type: "DetectionOutput" bottom: "mbox_loc" bottom: "mbox_conf_flatten"
        bottom: "mbox_priorbox" top: "detection_out" include { phase: TEST }
        detection_output_param { num_classes: 3 share_location: true background_label_id: 0
          nms_param { nms_threshold: 0.45 top_k: 40 } code_type: CENTER_SIZE keep_top_k: 20
          confidence_threshold: 0.01 } }
"""


def test_ssd_head_net_forward():
    torch.manual_seed(0)
    net = Net(SSD_HEAD, phase="TEST", device="cpu")
    # 8x8 map x 4 priors + 4x4 map x 6 priors = 352 priors
    assert net.blob_shapes["c1_prior"] == (1, 2, 8 * 8 * 4 * 4)
    assert net.blob_shapes["c2_prior"] == (1, 2, 4 * 4 * 6 * 4)
    assert net.blob_shapes["mbox_loc"] == (2, 352 * 4) and net.blob_shapes["mbox_conf_flatten"] == (2, 352 * 3)
    assert net.blob_shapes["mbox_priorbox"] == (1, 2, 352 * 4)
    assert net.blob_shapes["detection_out"] == (1, 1, 1, 7)        # the static shape; the real one after forward
    assert net.params["conv1_norm"][0].shape == (8,)
    data = torch.rand(2, 3, 16, 16)
    out = net.forward(data=data)
    assert list(out) == ["detection_out"]
    det = out["detection_out"]
    b = net.blobs
    want = port_detection_output(list(b["mbox_loc"].detach().double().reshape(-1).numpy()),
                                 list(b["mbox_conf_flatten"].detach().double().reshape(-1).numpy()),
                                 list(b["mbox_priorbox"].detach().double().reshape(-1).numpy()), 3,
                                 nms_threshold=0.45, top_k=40, code_type="CENTER_SIZE", keep_top_k=20,
                                 confidence_threshold=0.01)
    assert det.shape == (1, 1, len(want), 7) and 2 <= len(want) <= 40
    np.testing.assert_array_equal(det[0, 0, :, :2].numpy(), np.array(want)[:, :2])
    np.testing.assert_allclose(det[0, 0].numpy(), np.array(want), rtol=1e-5, atol=1e-6)
    # the priors of the first map, against the port
    np.testing.assert_array_equal(b["c1_prior"].numpy(), port_prior_box(
        8, 8, (16, 16), [4], [8], [2], variance=[0.1, 0.1, 0.2, 0.2], step=2))
    # the softmax really ran: each prior's 3 scores add to 1
    np.testing.assert_allclose(b["mbox_conf_flatten"].detach().view(2, 352, 3).sum(-1).numpy(), 1.0, rtol=1e-5)


@pytest.mark.parametrize("name", ["Permute", "Normalize", "PriorBox"])
def test_docstring_examples(name):
    # tests/test_layer_examples.py collects layers/caffe and layers/hand only; these are the fork's examples
    import doctest

    import layers.forks.ssd as ssd
    tests = doctest.DocTestFinder(recurse=False).find(getattr(ssd, name), name, module=ssd, globs={})
    assert tests and tests[0].examples
    torch.set_printoptions(precision=4, sci_mode=False)
    try:
        result = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS).run(tests[0])
    finally:
        torch.set_printoptions(profile="default")
    assert result.failed == 0 and result.attempted >= 2
