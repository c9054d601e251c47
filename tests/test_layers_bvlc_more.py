"""More of BVLC Caffe's layers: BNLL, Clip, ELU, Swish, Threshold, Crop, Tile, BatchReindex, Filter, Parameter,
Reduction, ArgMax, Embed, Im2col, SPP, MVN, HDF5Output (the loss layers are in test_layers_bvlc_more_loss.py).

Each against a literal NumPy/Python port of Caffe's C++ loops (forward and, where Caffe writes one, backward),
float64 gradcheck where differentiable, Caffe's defaults, shapes through a prototxt Net, and one-line user errors."""

import itertools
import math
import os
import textwrap

import numpy as np
import pytest
import torch
from torch.func import functional_call

from layers.build import make_layer
from netdef.errors import NetError
from nets.net import Net


def mk(body, shapes=((2, 3, 4, 5),), phase="TRAIN", bottoms=("x",), tops=("y",)):
    head = 'name: "l" ' + " ".join(f'bottom: "{b}"' for b in bottoms) + " " + \
        " ".join(f'top: "{t}"' for t in tops) + " "
    return make_layer(head + body, [tuple(s) for s in shapes], phase)


def net(text, **kw):
    return Net(textwrap.dedent(text), device="cpu", **kw)


def gradcheck(fn, *inputs):
    inputs = tuple(t.detach().requires_grad_(True) for t in inputs)
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5)


def grad_of(layer, *inputs, dy=None, which=0):
    """d(sum(dy * layer(*inputs)))/d inputs[which] by autograd (float64)."""
    xs = [t.detach().clone().requires_grad_(i == which) for i, t in enumerate(inputs)]
    y = layer(*xs)
    dy = torch.randn_like(y) if dy is None else dy
    (y * dy).sum().backward()
    return xs[which].grad, dy


def away_from(x, points, margin=0.05):
    """x moved so that no value is within `margin` of any of `points` (kinks)."""
    x = x.clone()
    for p in points:
        near = (x - p).abs() < margin
        x[near] = p + margin * 2
    return x


# ================================================================ neurons

def test_bnll_is_caffes_stable_formula_and_gradient():
    layer = mk('type: "BNLL"', [(50,)]).double()
    x = torch.cat([torch.linspace(-80, 80, 47, dtype=torch.float64),
                   torch.tensor([0.0, 60.0, -700.0], dtype=torch.float64)])
    want = np.array([v + math.log(1. + math.exp(-v)) if v > 0 else math.log(1. + math.exp(v)) for v in x.tolist()])
    # log1p keeps the digits of tiny values that Caffe's log(1. + exp(x)) rounds to 0: equal within 1e-16
    np.testing.assert_allclose(layer(x).detach().numpy(), want, rtol=1e-12, atol=2e-16)
    g, dy = grad_of(layer, x)
    # Caffe's Backward_cpu: expval = exp(min(x, kBNLL_THRESHOLD)); diff = top_diff * expval / (expval + 1)
    want_g = [d * math.exp(min(v, 50.)) / (math.exp(min(v, 50.)) + 1.) for v, d in zip(x.tolist(), dy.tolist())]
    np.testing.assert_allclose(g.numpy(), want_g, rtol=1e-12)
    assert g[x == 0].item() == pytest.approx(0.5 * dy[x == 0].item())
    assert torch.isfinite(layer(torch.tensor([1e4, -1e4]).double())).all()   # no overflow either way
    gradcheck(layer, torch.randn(3, 4, dtype=torch.float64) * 5)


def test_bnll_takes_no_params_and_keeps_float32():
    y = mk('type: "BNLL"', [(2, 3)])(torch.zeros(2, 3))
    assert y.dtype == torch.float32 and torch.allclose(y, torch.full((2, 3), math.log(2.0)))
    with pytest.raises(NetError, match=r"layer 'l' \(BNLL\): unknown param block 'bnll_param'"):
        mk('type: "BNLL" bnll_param { }')


def test_clip_forward_and_inclusive_gradient():
    layer = mk('type: "Clip" clip_param { min: -0.5 max: 1.0 }', [(9,)]).double()
    x = torch.tensor([-2.0, -0.5, -0.499, 0.0, 0.3, 0.999, 1.0, 1.001, 5.0], dtype=torch.float64)
    want = [max(-0.5, min(v, 1.0)) for v in x.tolist()]
    assert layer(x).tolist() == want
    g, dy = grad_of(layer, x)
    # Caffe: top_diff * (x >= min && x <= max): the bounds themselves pass the gradient
    assert g.tolist() == [d * (-0.5 <= v <= 1.0) for v, d in zip(x.tolist(), dy.tolist())]
    gradcheck(layer, away_from(torch.randn(4, 5, dtype=torch.float64), [-0.5, 1.0]))


def test_clip_min_above_max_gives_min_as_caffe_and_both_bounds_are_required():
    layer = mk('type: "Clip" clip_param { min: 2 max: 1 }', [(4,)])
    assert layer(torch.tensor([-5.0, 1.5, 3.0, 0.0])).tolist() == [2.0] * 4   # std::max(min, std::min(x, max))
    # std::min(NaN, max) is NaN (max < NaN is false), std::max(min, NaN) is min (min < NaN is false); no gradient
    nan_layer = mk('type: "Clip" clip_param { min: -1 max: 1 }', [(3,)])
    x = torch.tensor([float("nan"), 0.5, 2.0], requires_grad=True)
    y = nan_layer(x)
    assert y.tolist() == [-1.0, 0.5, 1.0]
    y.sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 0.0]
    with pytest.raises(NetError, match=r"missing required param 'max' in clip_param"):
        mk('type: "Clip" clip_param { min: 0 }')
    with pytest.raises(NetError, match=r"layer 'l' \(Clip\): missing clip_param \{ min: ... \}"):
        mk('type: "Clip"')


@pytest.mark.parametrize("alpha", [1.0, 0.3, 2.5])
def test_elu_forward_and_caffes_gradient(alpha):
    layer = mk(f'type: "ELU" elu_param {{ alpha: {alpha} }}', [(30,)]).double()
    x = torch.cat([torch.randn(29, dtype=torch.float64) * 3, torch.zeros(1, dtype=torch.float64)])
    want = [max(v, 0.) + alpha * (math.exp(min(v, 0.)) - 1.) for v in x.tolist()]
    y = layer(x)
    np.testing.assert_allclose(y.detach().numpy(), want, rtol=1e-12, atol=1e-15)
    g, dy = grad_of(layer, x)
    # Caffe: top_diff * ((x > 0) + (alpha + top_data) * (x <= 0)): alpha at x == 0
    want_g = [d * ((v > 0) + (alpha + t) * (v <= 0)) for v, t, d in zip(x.tolist(), want, dy.tolist())]
    np.testing.assert_allclose(g.numpy(), want_g, rtol=1e-12)
    assert g[-1].item() == pytest.approx(alpha * dy[-1].item())
    gradcheck(layer, away_from(torch.randn(3, 4, dtype=torch.float64), [0.0]))


def test_elu_default_alpha_is_one():
    assert mk('type: "ELU"', [(1,)])(torch.tensor([-1.0])).item() == pytest.approx(math.exp(-1) - 1)


@pytest.mark.parametrize("beta", [1.0, 0.5, -2.0])
def test_swish_forward_and_caffes_gradient(beta):
    body = 'type: "Swish"' + (f" swish_param {{ beta: {beta} }}" if beta != 1.0 else "")
    layer = mk(body, [(20,)]).double()
    x = torch.randn(20, dtype=torch.float64) * 3
    sig = [1. / (1. + math.exp(-beta * v)) for v in x.tolist()]
    want = [v * s for v, s in zip(x.tolist(), sig)]
    np.testing.assert_allclose(layer(x).detach().numpy(), want, rtol=1e-12)
    g, dy = grad_of(layer, x)
    # Caffe: top_diff * (beta * swish_x + sigmoid_x * (1 - beta * swish_x))
    want_g = [d * (beta * t + s * (1. - beta * t)) for t, s, d in zip(want, sig, dy.tolist())]
    np.testing.assert_allclose(g.numpy(), want_g, rtol=1e-10)
    gradcheck(layer, torch.randn(2, 5, dtype=torch.float64))


def test_threshold_is_strict_and_has_no_gradient():
    layer = mk('type: "Threshold" threshold_param { threshold: 0.5 }', [(5,)])
    x = torch.tensor([0.2, 0.5, 0.50001, 3.0, -1.0], requires_grad=True)
    y = layer(x)
    assert y.tolist() == [0.0, 0.0, 1.0, 1.0, 0.0] and y.dtype == torch.float32
    assert not y.requires_grad
    assert mk('type: "Threshold"', [(3,)])(torch.tensor([-0.1, 0.0, 0.1])).tolist() == [0.0, 0.0, 1.0]
    assert mk('type: "Threshold"', [(1,)]).p.threshold == 0.0


# ================================================================ Crop

def caffe_crop(x, ref_shape, axis, offsets):
    """CropLayer::Reshape's offsets and crop_copy, one element at a time."""
    nd = x.ndim
    off = [0] * nd
    for i in range(axis, nd):
        off[i] = offsets[0] if len(offsets) == 1 else (offsets[i - axis] if offsets else 0)
    top_shape = [x.shape[i] if i < axis else ref_shape[i] for i in range(nd)]
    out = np.zeros(top_shape, x.dtype)
    for idx in itertools.product(*[range(s) for s in top_shape]):
        out[idx] = x[tuple(i + o for i, o in zip(idx, off))]
    return out


@pytest.mark.parametrize("params, axis, offsets, ref", [
    ("", 2, [], (2, 3, 2, 3)),                                       # defaults: axis 2, offsets 0
    ("crop_param { offset: 1 }", 2, [1], (2, 3, 3, 2)),
    ("crop_param { axis: 1 offset: 1 offset: 0 offset: 2 }", 1, [1, 0, 2], (9, 2, 4, 3)),
    ("crop_param { axis: -1 offset: 2 }", 3, [2], (2, 3, 4, 3)),
    ("crop_param { axis: 0 offset: 0 }", 0, [0], (1, 3, 4, 5)),
])
def test_crop_matches_caffes_copy(params, axis, offsets, ref):
    layer = mk(f'type: "Crop" {params}', [(2, 3, 4, 5), ref], bottoms=("x", "ref"))
    x = torch.randn(2, 3, 4, 5)
    y = layer(x, torch.zeros(ref))
    np.testing.assert_array_equal(y.numpy(), caffe_crop(x.numpy(), ref, axis, offsets))


def test_crop_gradient_is_zero_outside_the_window():
    layer = mk('type: "Crop" crop_param { offset: 1 }', [(1, 2, 4, 4), (1, 2, 2, 3)], bottoms=("x", "ref"))
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64)
    ref = torch.zeros(1, 2, 2, 3, dtype=torch.float64, requires_grad=True)
    g, dy = grad_of(layer, x, ref)
    want = torch.zeros_like(x)
    want[:, :, 1:3, 1:4] = dy                           # Caffe's backward: crop_copy the other way, rest 0
    assert torch.equal(g, want)
    gradcheck(lambda a: layer(a, ref.detach()), x)


def test_crop_errors():
    with pytest.raises(NetError, match=r"layer 'l' \(Crop\): the crop of axis 3 is out of bounds: offset 2 \+ size 4"):
        mk('type: "Crop" crop_param { offset: 2 }', [(1, 1, 6, 5), (1, 1, 4, 4)], bottoms=("x", "r"))
    with pytest.raises(NetError, match=r"3 offset values for axis 2 of a 4-D bottom"):
        mk('type: "Crop" crop_param { offset: 1 offset: 1 offset: 1 }', [(1, 1, 6, 6), (1, 1, 4, 4)],
           bottoms=("x", "r"))
    with pytest.raises(NetError, match=r"crop_param axis 4 is out of range for a 4-D blob"):
        mk('type: "Crop" crop_param { axis: 4 }', [(1, 1, 6, 6), (1, 1, 4, 4)], bottoms=("x", "r"))
    with pytest.raises(NetError, match=r"takes 2 bottom\(s\), got 1"):
        mk('type: "Crop"', [(1, 1, 6, 6)])
    with pytest.raises(NetError, match=r"offset values must be >= 0"):
        mk('type: "Crop" crop_param { offset: -1 }', [(1, 1, 6, 6), (1, 1, 4, 4)], bottoms=("x", "r"))


# ================================================================ Tile

def caffe_tile(x, axis, tiles):
    outer, inner = int(np.prod(x.shape[:axis])), int(np.prod(x.shape[axis:]))
    src, out = x.reshape(-1), []
    for i in range(outer):
        for _ in range(tiles):
            out.extend(src[i * inner:(i + 1) * inner])
    shape = list(x.shape)
    shape[axis] *= tiles
    return np.array(out).reshape(shape)


@pytest.mark.parametrize("params, axis, tiles", [("tile_param { tiles: 3 }", 1, 3),
                                                 ("tile_param { axis: 0 tiles: 2 }", 0, 2),
                                                 ("tile_param { axis: -1 tiles: 4 }", 2, 4)])
def test_tile_matches_caffe_and_gradient_sums_the_copies(params, axis, tiles):
    layer = mk(f'type: "Tile" {params}', [(2, 3, 2)]).double()
    x = torch.randn(2, 3, 2, dtype=torch.float64)
    y = layer(x)
    np.testing.assert_array_equal(y.numpy(), caffe_tile(x.numpy(), axis, tiles))
    g, dy = grad_of(layer, x)
    outer, inner = int(np.prod(x.shape[:axis])), int(np.prod(x.shape[axis:]))
    d = dy.numpy().reshape(outer, tiles, inner)
    want = np.zeros((outer, inner))
    for i in range(outer):                              # Caffe: copy the first tile, axpy the others
        want[i] = d[i, 0]
        for t in range(1, tiles):
            want[i] += d[i, t]
    np.testing.assert_allclose(g.numpy().reshape(outer, inner), want, rtol=1e-12)
    gradcheck(layer, x)


def test_tile_errors():
    with pytest.raises(NetError, match=r"layer 'l' \(Tile\): missing tile_param \{ tiles: ... \}"):
        mk('type: "Tile"')
    with pytest.raises(NetError, match=r"tiles must be > 0, got 0"):
        mk('type: "Tile" tile_param { tiles: 0 }')


# ================================================================ BatchReindex

def test_batch_reindex_matches_caffe_and_gradient_accumulates():
    layer = mk('type: "BatchReindex"', [(4, 2, 3), (6,)], bottoms=("x", "idx")).double()
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    idx = torch.tensor([3.0, 0.0, 3.0, 1.7, 0.0, 3.0], dtype=torch.float64)   # repeats, 1.7 truncates to 1
    y = layer(x, idx)
    inner = 6
    xf, want = x.numpy().reshape(-1), np.zeros(6 * inner)
    for index in range(6 * inner):                      # Forward_cpu
        want[index] = xf[int(idx[index // inner]) * inner + index % inner]
    np.testing.assert_array_equal(y.numpy().reshape(-1), want)
    assert y.shape == (6, 2, 3)
    g, dy = grad_of(layer, x, idx)
    want_g, dyf = np.zeros(4 * inner), dy.numpy().reshape(-1)
    for index in range(6 * inner):                      # Backward_cpu: +=
        want_g[int(idx[index // inner]) * inner + index % inner] += dyf[index]
    np.testing.assert_allclose(g.numpy().reshape(-1), want_g, rtol=1e-12)
    assert g[2].abs().sum() == 0                         # never picked
    gradcheck(lambda a: layer(a, idx), x)


@pytest.mark.parametrize("bad", [-1.0, -0.5, 4.0, float("nan")])
def test_batch_reindex_index_out_of_range_is_one_line(bad):
    layer = mk('type: "BatchReindex"', [(4, 2), (2,)], bottoms=("x", "idx"))
    with pytest.raises(NetError, match=r"layer 'l' \(BatchReindex\): index .* is out of range for a batch of 4") as e:
        layer(torch.randn(4, 2), torch.tensor([0.0, bad]))
    assert "\n" not in str(e.value)


def test_batch_reindex_index_must_be_1d():
    with pytest.raises(NetError, match=r"the index bottom must be 1-D"):
        mk('type: "BatchReindex"', [(4, 2), (2, 1)], bottoms=("x", "idx"))


# ================================================================ Filter

def test_filter_keeps_nonzero_rows_of_every_bottom_and_routes_gradients():
    layer = mk('type: "Filter"', [(5, 3), (5, 2, 2), (5, 1, 1)], bottoms=("a", "b", "sel"), tops=("ya", "yb")).double()
    a, b = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 2, 2, dtype=torch.float64)
    sel = torch.tensor([0.0, 2.0, 0.0, -0.5, 1.0], dtype=torch.float64).view(5, 1, 1)
    ya, yb = layer(a, b, sel)
    keep = [i for i in range(5) if sel.view(-1)[i] != 0]           # indices_to_forward_
    assert keep == [1, 3, 4]
    assert torch.equal(ya, a[keep]) and torch.equal(yb, b[keep])
    g, dy = grad_of(lambda *t: layer(*t)[1], a, b, sel, which=1)
    want = torch.zeros_like(b)
    for k, i in enumerate(keep):                                     # Backward_cpu: forwarded rows, others 0
        want[i] = dy[k]
    assert torch.equal(g, want)
    gradcheck(lambda t: layer(a, t, sel)[1], b)


def test_filter_with_nothing_selected_gives_empty_tops():
    layer = mk('type: "Filter"', [(3, 2), (3,)], bottoms=("a", "sel"), tops=("y",))
    y = layer(torch.randn(3, 2), torch.zeros(3))
    assert y.shape == (0, 2)


def test_filter_shapes_through_a_net_are_caffes_first_reshape_then_the_data():
    n = net("""
        input: "a" input_shape { dim: 4 dim: 3 }
        input: "sel" input_shape { dim: 4 }
        layer { name: "f" type: "Filter" bottom: "a" bottom: "sel" top: "kept" }
        layer { name: "r" type: "Reduction" bottom: "kept" top: "s" reduction_param { axis: 1 } }
    """)
    assert n.blob_shapes["kept"] == (4, 3) and n.blob_shapes["s"] == (4,)     # build time: every row
    out = n.forward(a=torch.arange(12.0).view(4, 3), sel=torch.tensor([1.0, 0.0, 0.0, 1.0]))
    assert out["s"].tolist() == [3.0, 30.0]                                    # run time: rows 0 and 3


def test_filter_errors():
    with pytest.raises(NetError, match=r"layer 'l' \(Filter\): needs one top per bottom except the selector"):
        mk('type: "Filter"', [(3, 2), (3, 2), (3,)], bottoms=("a", "b", "sel"), tops=("y",))
    with pytest.raises(NetError, match=r"the selector \(last bottom\) must be \(N,\) or \(N, 1, ...\), got \(3, 2\)"):
        mk('type: "Filter"', [(3, 2), (3, 2)], bottoms=("a", "sel"))
    with pytest.raises(NetError, match=r"bottom 0 \(2, 2\) must have the selector's first dim 3"):
        mk('type: "Filter"', [(2, 2), (3,)], bottoms=("a", "sel"))


# ================================================================ Parameter

def test_parameter_is_a_zero_learnable_blob_as_top_and_learns_through_a_net():
    n = net("""
        input: "t" input_shape { dim: 2 dim: 3 }
        layer { name: "p" type: "Parameter" top: "p" parameter_param { shape { dim: 2 dim: 3 } } }
        layer { name: "loss" type: "EuclideanLoss" bottom: "p" bottom: "t" top: "loss" }
    """)
    layer = n.layer("p")
    assert layer.blob_names == ["parameter"] and isinstance(layer.parameter, torch.nn.Parameter)
    assert n.blob_shapes["p"] == (2, 3) and torch.equal(layer.parameter, torch.zeros(2, 3))
    t = torch.randn(2, 3)
    n.forward(t=t)
    n.loss.backward()
    assert torch.allclose(layer.parameter.grad, -t / 2)             # d/dp sum((p - t)^2) / (2 * 2)
    assert len(n.params["p"]) == 1


def test_parameter_defaults_to_a_0_axis_blob_and_takes_no_bottom():
    layer = mk('type: "Parameter"', [], bottoms=())
    assert layer().shape == () and layer.infer_top_shapes([]) == [()]
    with pytest.raises(NetError, match=r"layer 'l' \(Parameter\): takes 0 bottom\(s\), got 1"):
        mk('type: "Parameter" parameter_param { shape { dim: 2 } }', [(2,)])
    with pytest.raises(NetError, match=r"shape dims must be >= 0"):
        mk('type: "Parameter" parameter_param { shape { dim: -2 } }', [], bottoms=())


# ================================================================ Reduction

def caffe_reduction(x, op, axis, coeff):
    num, dim = int(np.prod(x.shape[:axis])), int(np.prod(x.shape[axis:]))
    data, out = x.reshape(-1), []
    c = coeff / dim if op == "MEAN" else coeff
    for i in range(num):
        row = data[i * dim:(i + 1) * dim]
        v = {"SUM": row.sum(), "MEAN": row.sum(), "ASUM": np.abs(row).sum(), "SUMSQ": (row * row).sum()}[op]
        out.append(v * c)
    return np.array(out).reshape(x.shape[:axis])


def caffe_reduction_backward(x, dy, op, axis, coeff):
    num, dim = int(np.prod(x.shape[:axis])), int(np.prod(x.shape[axis:]))
    data, dyf, out = x.reshape(num, dim), dy.reshape(-1), np.zeros((num, dim))
    c = coeff / dim if op == "MEAN" else coeff
    for i in range(num):
        bc = dyf[i] * c
        out[i] = {"SUM": bc, "MEAN": bc, "ASUM": np.sign(data[i]) * bc, "SUMSQ": 2 * bc * data[i]}[op]
    return out.reshape(x.shape)


@pytest.mark.parametrize("op", ["SUM", "ASUM", "SUMSQ", "MEAN"])
@pytest.mark.parametrize("axis, coeff", [(0, 1.0), (1, -0.5), (-1, 2.0), (2, 1.0)])
def test_reduction_matches_caffe_forward_and_backward(op, axis, coeff):
    layer = mk(f'type: "Reduction" reduction_param {{ operation: {op} axis: {axis} coeff: {coeff} }}',
               [(2, 3, 4)]).double()
    x = away_from(torch.randn(2, 3, 4, dtype=torch.float64), [0.0])
    a = axis % 3
    y = layer(x)
    assert y.shape == x.shape[:a]
    np.testing.assert_allclose(y.detach().numpy(), caffe_reduction(x.numpy(), op, a, coeff), rtol=1e-12)
    g, dy = grad_of(layer, x)
    np.testing.assert_allclose(g.numpy(), caffe_reduction_backward(x.numpy(), dy.numpy(), op, a, coeff), rtol=1e-12)
    gradcheck(layer, x)


def test_reduction_defaults_numeric_enum_and_errors():
    layer = mk('type: "Reduction"', [(2, 3)])
    assert (layer.p.operation, layer.p.axis, layer.p.coeff) == ("SUM", 0, 1.0)
    assert layer(torch.ones(2, 3)).shape == () and layer(torch.ones(2, 3)).item() == 6.0
    # protobuf numbers: SUM = 1, ASUM = 2, SUMSQ = 3, MEAN = 4
    assert mk('type: "Reduction" reduction_param { operation: 4 }', [(2, 3)]).p.operation == "MEAN"
    assert mk('type: "Reduction" reduction_param { operation: 1 }', [(2, 3)]).p.operation == "SUM"
    with pytest.raises(NetError, match=r"layer 'l' \(Reduction\): operation 0 is not a ReductionOp"):
        mk('type: "Reduction" reduction_param { operation: 0 }', [(2, 3)])
    with pytest.raises(NetError, match=r"did you mean SUMSQ"):
        mk('type: "Reduction" reduction_param { operation: SUMSQR }', [(2, 3)])
    with pytest.raises(NetError, match=r"reduction_param axis 2 is out of range for a 2-D blob"):
        mk('type: "Reduction" reduction_param { axis: 2 }', [(2, 3)])


# ================================================================ ArgMax

def caffe_argmax(x, top_k, out_max_val, axis=None):
    """ArgMaxLayer::Reshape and Forward_cpu: partial_sort of (value, index) pairs with std::greater."""
    shape = list(x.shape)
    if axis is not None:
        dim, axis_dist = shape[axis], int(np.prod(shape[axis:])) // shape[axis]
        top_shape = list(shape)
        top_shape[axis] = top_k
    else:
        dim, axis_dist = int(np.prod(shape[1:])), 1
        top_shape = [1] * max(len(shape), 3)
        top_shape[0], top_shape[2] = shape[0], top_k
        if out_max_val:
            top_shape[1] = 2
    data, num = x.reshape(-1), x.size // dim
    top = np.zeros(int(np.prod(top_shape)))
    for i in range(num):
        pairs = [(data[(i // axis_dist * dim + j) * axis_dist + i % axis_dist], j) for j in range(dim)]
        pairs.sort(reverse=True)                          # std::greater on pairs: value, then index
        for j in range(top_k):
            if out_max_val:
                if axis is not None:
                    top[(i // axis_dist * top_k + j) * axis_dist + i % axis_dist] = pairs[j][0]
                else:
                    top[2 * i * top_k + j] = pairs[j][1]
                    top[2 * i * top_k + top_k + j] = pairs[j][0]
            else:
                top[(i // axis_dist * top_k + j) * axis_dist + i % axis_dist] = pairs[j][1]
    return top.reshape(top_shape)


@pytest.mark.parametrize("shape", [(3, 7), (2, 3, 4), (2, 3, 2, 2)])
@pytest.mark.parametrize("params, top_k, out_max_val, axis", [
    ("", 1, False, None), ("argmax_param { top_k: 3 }", 3, False, None),
    ("argmax_param { top_k: 2 out_max_val: true }", 2, True, None),
    ("argmax_param { axis: 1 }", 1, False, 1), ("argmax_param { axis: -1 top_k: 2 out_max_val: true }", 2, True, -1),
    ("argmax_param { axis: 0 top_k: 2 }", 2, False, 0),
])
def test_argmax_matches_caffe_with_ties(shape, params, top_k, out_max_val, axis):
    x = torch.randint(0, 4, shape).float()             # few values: many ties
    layer = mk(f'type: "ArgMax" {params}', [shape])
    y = layer(x)
    want = caffe_argmax(x.numpy(), top_k, out_max_val, None if axis is None else axis % len(shape))
    assert y.shape == want.shape and layer.infer_top_shapes([shape]) == [want.shape]
    np.testing.assert_array_equal(y.numpy(), want)


def test_argmax_ties_pick_the_larger_index_and_no_gradient():
    layer = mk('type: "ArgMax" argmax_param { top_k: 3 out_max_val: true }', [(1, 4)])
    x = torch.tensor([[5.0, 1.0, 5.0, 5.0]], requires_grad=True)
    y = layer(x)
    assert y.tolist() == [[[3.0, 2.0, 0.0], [5.0, 5.0, 5.0]]]
    assert not y.requires_grad


def test_argmax_errors():
    with pytest.raises(NetError, match=r"layer 'l' \(ArgMax\): top_k 5 is more than the 4 values along axis 1"):
        mk('type: "ArgMax" argmax_param { axis: 1 top_k: 5 }', [(2, 4)])
    with pytest.raises(NetError, match=r"top_k 9 is more than the 8 values per item"):
        mk('type: "ArgMax" argmax_param { top_k: 9 }', [(2, 4, 2)])
    with pytest.raises(NetError, match=r"top_k must be >= 1, got 0"):
        mk('type: "ArgMax" argmax_param { top_k: 0 }', [(2, 4)])


# ================================================================ Embed

def test_embed_matches_caffe_forward_and_backward():
    layer = mk('type: "Embed" embed_param { num_output: 3 input_dim: 5 weight_filler { type: "gaussian" } '
               'bias_filler { type: "uniform" } }', [(2, 4)]).double()
    assert layer.blob_names == ["weight", "bias"]
    assert layer.weight.shape == (5, 3) and layer.bias.shape == (3,)    # (K, N): transposed from InnerProduct
    x = torch.tensor([[0.0, 4.0, 2.0, 2.0], [4.9, 1.0, 0.0, 2.0]], dtype=torch.float64)  # 4.9 truncates to 4
    y = layer(x)
    assert y.shape == (2, 4, 3)
    w, b = layer.weight.detach().numpy(), layer.bias.detach().numpy()
    xf, want = x.numpy().reshape(-1), np.zeros((8, 3))
    for n in range(8):                                  # caffe_copy(N_, weight + index * N_, ...) + bias
        want[n] = w[int(xf[n])] + b
    np.testing.assert_allclose(y.detach().numpy().reshape(8, 3), want, rtol=1e-12)
    dy = torch.randn_like(y)
    (y * dy).sum().backward()
    want_w, dyf = np.zeros((5, 3)), dy.numpy().reshape(8, 3)
    for n in range(8):                                  # caffe_axpy into weight_diff + index * N_
        want_w[int(xf[n])] += dyf[n]
    np.testing.assert_allclose(layer.weight.grad.numpy(), want_w, rtol=1e-12)
    np.testing.assert_allclose(layer.bias.grad.numpy(), dyf.sum(0), rtol=1e-12)
    wt = layer.weight.detach().clone()
    gradcheck(lambda w_: functional_call(layer, {"weight": w_}, (x,)), wt)


def test_embed_defaults_no_bias_no_input_gradient_and_errors():
    layer = mk('type: "Embed" embed_param { num_output: 2 input_dim: 3 bias_term: false }', [(4,)])
    assert layer.blob_names == ["weight"] and torch.equal(layer.weight, torch.zeros(3, 2))   # constant 0 filler
    x = torch.tensor([0.0, 1.0, 2.0, 1.0], requires_grad=True)
    layer(x).sum().backward()
    assert x.grad is None
    for bad in (3.0, -1.0):
        with pytest.raises(NetError, match=rf"layer 'l' \(Embed\): index {bad:g} is out of range: inputs must be "
                                           r"in 0\.\.2 \(input_dim 3\)"):
            layer(torch.tensor([0.0, bad, 1.0, 1.0]))
    with pytest.raises(NetError, match=r"embed_param num_output must be > 0, got 0"):
        mk('type: "Embed" embed_param { input_dim: 3 }', [(4,)])
    with pytest.raises(NetError, match=r"embed_param input_dim must be > 0"):
        mk('type: "Embed" embed_param { num_output: 3 }', [(4,)])


# ================================================================ Im2col

def caffe_im2col_2d(img, kh, kw, ph, pw, sh, sw, dh, dw):
    """im2col_cpu (util/im2col.cpp), loop for loop."""
    c, h, w = img.shape
    oh = (h + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
    ow = (w + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
    col = []
    for ch in range(c):
        for kr in range(kh):
            for kc in range(kw):
                input_row = -ph + kr * dh
                for _ in range(oh):
                    if not 0 <= input_row < h:
                        col.extend([0.0] * ow)
                    else:
                        input_col = -pw + kc * dw
                        for _ in range(ow):
                            col.append(img[ch, input_row, input_col] if 0 <= input_col < w else 0.0)
                            input_col += sw
                    input_row += sh
    return np.array(col).reshape(c * kh * kw, oh, ow)


def caffe_im2col_nd(img, kernel, pad, stride, dilation):
    """im2col_nd_cpu's result: column (c, kernel offsets) row-major, output positions row-major."""
    c, sizes = img.shape[0], img.shape[1:]
    out = [(s + 2 * p - (d * (k - 1) + 1)) // st + 1 for s, k, p, st, d in zip(sizes, kernel, pad, stride, dilation)]
    col = np.zeros((c * int(np.prod(kernel)), *out))
    for ch in range(c):
        for ki, koff in enumerate(itertools.product(*[range(k) for k in kernel])):
            for o in itertools.product(*[range(n) for n in out]):
                src = [oi * st - p + kk * d for oi, st, p, kk, d in zip(o, stride, pad, koff, dilation)]
                inside = all(0 <= s < n for s, n in zip(src, sizes))
                col[(ch * int(np.prod(kernel)) + ki, *o)] = img[(ch, *src)] if inside else 0.0
    return col


@pytest.mark.parametrize("params, geo", [
    ("kernel_size: 3", (3, 3, 0, 0, 1, 1, 1, 1)),
    ("kernel_size: 2 stride: 2 pad: 1", (2, 2, 1, 1, 2, 2, 1, 1)),
    ("kernel_h: 3 kernel_w: 2 stride_h: 1 stride_w: 2 pad_h: 2 dilation: 2", (3, 2, 2, 0, 1, 2, 2, 2)),
    ("kernel_size: 2 kernel_size: 3 dilation: 1 dilation: 2 pad: 1 pad: 0 force_nd_im2col: true",
     (2, 3, 1, 0, 1, 1, 1, 2)),
])
def test_im2col_2d_matches_caffes_loops(params, geo):
    layer = mk(f'type: "Im2col" convolution_param {{ {params} }}', [(2, 3, 6, 7)]).double()
    x = torch.randn(2, 3, 6, 7, dtype=torch.float64)
    y = layer(x)
    for n in range(2):
        np.testing.assert_array_equal(y[n].numpy(), caffe_im2col_2d(x[n].numpy(), *geo))
    assert layer.infer_top_shapes([(2, 3, 6, 7)]) == [tuple(y.shape)]
    gradcheck(layer, x[:1])


@pytest.mark.parametrize("shape, params, kernel, pad, stride, dilation", [
    ((2, 2, 7), "kernel_size: 3 stride: 2 pad: 1", (3,), (1,), (2,), (1,)),
    ((1, 2, 4, 5, 5), "kernel_size: 2 kernel_size: 3 kernel_size: 2 pad: 1 stride: 1 stride: 2 stride: 1 "
     "dilation: 1 dilation: 1 dilation: 2", (2, 3, 2), (1, 1, 1), (1, 2, 1), (1, 1, 2)),
])
def test_im2col_nd_matches_caffe(shape, params, kernel, pad, stride, dilation):
    layer = mk(f'type: "Im2col" convolution_param {{ {params} }}', [shape]).double()
    x = torch.randn(*shape, dtype=torch.float64)
    y = layer(x)
    for n in range(shape[0]):
        np.testing.assert_array_equal(y[n].numpy(), caffe_im2col_nd(x[n].numpy(), kernel, pad, stride, dilation))
    gradcheck(layer, x[:1])


def test_im2col_times_weights_is_convolution_and_axis():
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64)
    conv = mk('type: "Convolution" convolution_param { num_output: 4 kernel_size: 3 pad: 1 stride: 2 '
              'weight_filler { type: "gaussian" } }', [x.shape]).double()
    im2col = mk('type: "Im2col" convolution_param { num_output: 4 kernel_size: 3 pad: 1 stride: 2 }', [x.shape]).double()
    cols = im2col(x)
    via_cols = torch.einsum("ok,nkhw->nohw", conv.weight.detach().reshape(4, -1), cols) + \
        conv.bias.detach().view(1, 4, 1, 1)
    assert torch.allclose(via_cols, conv(x), atol=1e-12)
    # axis 2: the axes before it are samples
    lay = mk('type: "Im2col" convolution_param { axis: 2 kernel_size: 2 }', [(2, 3, 4, 5)]).double()
    z = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    out = lay(z)
    assert out.shape == (2, 3, 8, 4)
    np.testing.assert_array_equal(out[1, 2].numpy(), caffe_im2col_nd(z[1, 2].numpy(), (2,), (0,), (1,), (1,)))


def test_im2col_errors():
    with pytest.raises(NetError, match=r"layer 'l' \(Im2col\): missing kernel_size \(or kernel_h and kernel_w\)"):
        mk('type: "Im2col"', [(1, 1, 4, 4)])
    with pytest.raises(NetError, match=r"give both kernel_h and kernel_w"):
        mk('type: "Im2col" convolution_param { kernel_h: 2 }', [(1, 1, 4, 4)])
    with pytest.raises(NetError, match=r"kernel extent 5 is larger than the padded input size 3 \+ 2\*0"):
        mk('type: "Im2col" convolution_param { kernel_size: 5 }', [(1, 1, 3, 8)])
    with pytest.raises(NetError, match=r"kernel_size must be given once, or once per spatial axis \(2\)"):
        mk('type: "Im2col" convolution_param { kernel_size: 1 kernel_size: 2 kernel_size: 3 }', [(1, 1, 4, 4)])
    with pytest.raises(NetError, match=r"needs at least one spatial axis"):
        mk('type: "Im2col" convolution_param { kernel_size: 1 }', [(1, 4)])


# ================================================================ SPP

def caffe_pool(img, kh, kw, ph, pw, sh, sw, method):
    """PoolingLayer::Reshape's pooled size and Forward_cpu's MAX / AVE loops, for one (C, H, W) image."""
    c, h, w = img.shape
    oh = int(math.ceil((h + 2 * ph - kh) / sh)) + 1
    ow = int(math.ceil((w + 2 * pw - kw) / sw)) + 1
    if ph or pw:
        if (oh - 1) * sh >= h + ph:
            oh -= 1
        if (ow - 1) * sw >= w + pw:
            ow -= 1
    out = np.zeros((c, oh, ow))
    for ch in range(c):
        for i in range(oh):
            for j in range(ow):
                hs, ws = i * sh - ph, j * sw - pw
                if method == "MAX":
                    he, we = min(hs + kh, h), min(ws + kw, w)
                    hs, ws = max(hs, 0), max(ws, 0)
                    out[ch, i, j] = img[ch, hs:he, ws:we].max()
                else:
                    he, we = min(hs + kh, h + ph), min(ws + kw, w + pw)
                    size = (he - hs) * (we - ws)
                    hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, h), min(we, w)
                    out[ch, i, j] = img[ch, hs:he, ws:we].sum() / size
    return out


def caffe_spp(x, height, method):
    outs = []
    for n in range(x.shape[0]):
        parts = []
        for level in range(height):
            bins = 2 ** level
            kh, kw = int(math.ceil(x.shape[2] / bins)), int(math.ceil(x.shape[3] / bins))
            ph, pw = (kh * bins - x.shape[2] + 1) // 2, (kw * bins - x.shape[3] + 1) // 2
            parts.append(caffe_pool(x[n], kh, kw, ph, pw, kh, kw, method).reshape(-1))
        outs.append(np.concatenate(parts))
    return np.stack(outs)


@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("hw, height", [((8, 8), 3), ((9, 7), 3), ((13, 9), 2), ((16, 24), 4)])
def test_spp_matches_caffes_pyramid_of_poolings(method, hw, height):
    shape = (2, 3, *hw)
    layer = mk(f'type: "SPP" spp_param {{ pyramid_height: {height} pool: {method} }}', [shape]).double()
    x = torch.randn(*shape, dtype=torch.float64)
    y = layer(x)
    want = caffe_spp(x.numpy(), height, method)
    assert y.shape == want.shape
    np.testing.assert_allclose(y.numpy(), want, rtol=1e-12)


def test_spp_gradcheck_and_height_one_keeps_the_pooling_top():
    ave = mk('type: "SPP" spp_param { pyramid_height: 3 pool: AVE }', [(1, 2, 6, 7)]).double()
    gradcheck(ave, torch.randn(1, 2, 6, 7, dtype=torch.float64))
    mx = mk('type: "SPP" spp_param { pyramid_height: 2 }', [(1, 2, 4, 4)]).double()
    gradcheck(mx, torch.randperm(32).double().view(1, 2, 4, 4))       # distinct values: no ties
    one = mk('type: "SPP" spp_param { pyramid_height: 1 }', [(2, 3, 5, 4)])
    x = torch.randn(2, 3, 5, 4)
    assert one(x).shape == (2, 3, 1, 1) and torch.equal(one(x).view(2, 3), x.amax((2, 3)))


def test_spp_shapes_through_a_net_and_a_new_input_size():
    n = net("""
        input: "x" input_shape { dim: 2 dim: 4 dim: 9 dim: 7 }
        layer { name: "spp" type: "SPP" bottom: "x" top: "spp" spp_param { pyramid_height: 3 } }
        layer { name: "ip" type: "InnerProduct" bottom: "spp" top: "ip" inner_product_param { num_output: 2 } }
    """)
    assert n.blob_shapes["spp"] == (2, 4 * (1 + 4 + 16))
    layer = n.layer("spp")
    x = torch.randn(2, 4, 12, 10)                      # Caffe's Reshape recomputes the geometry
    np.testing.assert_allclose(layer(x).numpy(), caffe_spp(x.numpy().astype(np.float64), 3, "MAX"), rtol=1e-6)


def test_spp_errors():
    with pytest.raises(NetError, match=r"layer 'l' \(SPP\): needs spp_param \{ pyramid_height: ... \}"):
        mk('type: "SPP"', [(1, 1, 8, 8)])
    with pytest.raises(NetError, match=r"pyramid level 2 \(4 bins per axis\) of a 3 x 8 bottom needs pad 1 x 0 for "
                                       r"kernel 1 x 2"):
        mk('type: "SPP" spp_param { pyramid_height: 3 }', [(1, 1, 3, 8)])
    with pytest.raises(NetError, match=r"STOCHASTIC pooling does not take"):
        mk('type: "SPP" spp_param { pyramid_height: 2 pool: STOCHASTIC }', [(1, 1, 5, 5)])
    with pytest.raises(NetError, match=r"bottom must have 4 axes \(N, C, H, W\), got shape \(1, 8, 8\)"):
        mk('type: "SPP" spp_param { pyramid_height: 2 }', [(1, 8, 8)])


# ================================================================ MVN

def caffe_mvn(x, normalize_variance, across_channels, eps):
    """MVNLayer::Forward_cpu as loops over its (num, dim) rows; also returns the per-row std + eps."""
    n, c = x.shape[0], x.shape[1] if x.ndim > 1 else 1
    num = n if across_channels else n * c
    rows = x.reshape(num, -1)
    dim = rows.shape[1]
    out, scale = np.zeros_like(rows), np.ones(num)
    for i in range(num):
        mean = sum(rows[i]) * (1. / dim)
        out[i] = rows[i] - mean
        if normalize_variance:
            var = sum(v * v for v in out[i]) * (1. / dim)
            scale[i] = var ** 0.5 + eps
            out[i] /= scale[i]
    return out, scale


def caffe_mvn_backward(y, dy, scale, normalize_variance):
    """MVNLayer::Backward_cpu's gemv / gemm sequence on (num, dim) rows."""
    dim = y.shape[1]
    if not normalize_variance:
        return dy - dy.sum(1, keepdims=True) / dim
    bd = (y * dy).sum(1, keepdims=True) * np.ones_like(y)        # gemv sum, gemm broadcast
    bd = y * bd
    bd = bd + dy.sum(1, keepdims=True)
    bd = dy + (-1. / dim) * bd                                    # axpby(1, top_diff, -1/dim, bottom_diff)
    return bd / scale[:, None]


@pytest.mark.parametrize("normalize_variance", [True, False])
@pytest.mark.parametrize("across_channels", [False, True])
def test_mvn_matches_caffe_forward_and_backward(normalize_variance, across_channels):
    nv, ac = str(normalize_variance).lower(), str(across_channels).lower()
    layer = mk(f'type: "MVN" mvn_param {{ normalize_variance: {nv} across_channels: {ac} eps: 0.01 }}',
               [(2, 3, 4, 5)]).double()
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64) * 3 + 1
    y = layer(x)
    want, scale = caffe_mvn(x.numpy(), normalize_variance, across_channels, 0.01)
    np.testing.assert_allclose(y.detach().numpy().reshape(want.shape), want, rtol=1e-11, atol=1e-13)
    g, dy = grad_of(layer, x)
    want_g = caffe_mvn_backward(want, dy.numpy().reshape(want.shape), scale, normalize_variance)
    np.testing.assert_allclose(g.numpy().reshape(want.shape), want_g, rtol=1e-10, atol=1e-12)


def test_mvn_eps_is_added_to_the_std_and_gradcheck():
    layer = mk('type: "MVN" mvn_param { eps: 1 }', [(1, 1, 1, 2)]).double()
    y = layer(torch.tensor([[[[0.0, 2.0]]]], dtype=torch.float64))   # mean 1, std 1: (x - 1) / (1 + 1)
    assert y.view(-1).tolist() == [-0.5, 0.5]                          # (not / sqrt(1 + 1))
    default = mk('type: "MVN"', [(2, 3, 4)]).double()
    assert default.p.eps == pytest.approx(1e-9) and default.p.normalize_variance and not default.p.across_channels
    gradcheck(default, torch.randn(2, 3, 4, dtype=torch.float64))


def test_mvn_constant_rows_give_zeros_and_finite_caffe_gradients():
    layer = mk('type: "MVN" mvn_param { eps: 0.001 }', [(1, 2, 3)]).double()
    x = torch.tensor([[[2.0, 2.0, 2.0], [1.0, 2.0, 3.0]]], dtype=torch.float64, requires_grad=True)
    y = layer(x)
    assert y.shape == (1, 2, 3, 1)                                     # Caffe's 4-D top
    assert torch.equal(y[0, 0].view(-1), torch.zeros(3, dtype=torch.float64))
    dy = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0, 0.0], dtype=torch.float64).view(1, 2, 3, 1)
    (y * dy).sum().backward()
    assert x.grad[0, 0].tolist() == pytest.approx([(1 - 1 / 3) / 0.001, (-1 / 3) / 0.001, (-1 / 3) / 0.001])


def test_mvn_shapes_are_caffes_4d_and_errors():
    assert mk('type: "MVN"', [(2, 3)])(torch.randn(2, 3)).shape == (2, 3, 1, 1)
    n = net("""
        input: "x" input_shape { dim: 2 dim: 5 }
        layer { name: "m" type: "MVN" bottom: "x" top: "m" mvn_param { across_channels: true } }
    """)
    assert n.blob_shapes["m"] == (2, 5, 1, 1)
    with pytest.raises(NetError, match=r"layer 'l' \(MVN\): bottom must have 1 to 4 axes"):
        mk('type: "MVN"', [(1, 2, 3, 4, 5)])


# ================================================================ HDF5Output

def hdf5_net(path, dtype_dims=("dim: 3 dim: 2", "dim: 3")):
    return net(f"""
        input: "data" input_shape {{ {dtype_dims[0]} }}
        input: "label" input_shape {{ {dtype_dims[1]} }}
        layer {{ name: "out" type: "HDF5Output" bottom: "data" bottom: "label"
                 hdf5_output_param {{ file_name: "{path}" }} }}
    """)


def test_hdf5_output_writes_data_and_label_as_caffe_and_replaces_them(tmp_path):
    import h5py
    path = tmp_path / "out.h5"
    n = hdf5_net(path)
    assert not path.exists()
    data, label = torch.randn(3, 2), torch.tensor([0.0, 1.0, 2.0])
    out = n.forward(data=data, label=label)
    assert out == {}                                                   # no tops
    with h5py.File(path, "r") as f:
        assert sorted(f) == ["data", "label"]
        assert f["data"].shape == (3, 2, 1, 1) and f["label"].shape == (3, 1, 1, 1)   # legacy 4-D blobs
        assert f["data"].dtype == np.float32
        np.testing.assert_array_equal(f["data"][()].reshape(3, 2), data.numpy())
        np.testing.assert_array_equal(f["label"][()].reshape(3), label.numpy())
    n.forward(data=data + 1, label=label)                              # the next batch replaces the file
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["data"][()].reshape(3, 2), (data + 1).numpy())
    assert sorted(os.listdir(tmp_path)) == ["out.h5"]                 # no temporary file left


def test_hdf5_output_float64_net_writes_float64(tmp_path):
    import h5py
    n = hdf5_net(tmp_path / "d.h5").double()
    n.forward(data=torch.randn(3, 2, dtype=torch.float64), label=torch.zeros(3, dtype=torch.float64))
    with h5py.File(tmp_path / "d.h5", "r") as f:
        assert f["data"].dtype == np.float64


def test_hdf5_output_errors_are_one_line(tmp_path):
    with pytest.raises(NetError, match=r"layer 'out' \(HDF5Output\): cannot write '.*nope/out.h5': folder .* does "
                                       r"not exist") as e:
        hdf5_net(tmp_path / "nope" / "out.h5")
    assert "\n" not in str(e.value)
    with pytest.raises(NetError, match=r"data and label must have the same batch size"):
        hdf5_net(tmp_path / "a.h5", ("dim: 3 dim: 2", "dim: 4"))
    with pytest.raises(NetError, match=r"needs hdf5_output_param \{ file_name"):
        mk('type: "HDF5Output"', [(2, 1), (2, 1)], bottoms=("d", "l"), tops=())
    with pytest.raises(NetError, match=r"takes 0 top\(s\), got 1"):
        mk(f'type: "HDF5Output" hdf5_output_param {{ file_name: "{tmp_path}/x.h5" }}', [(2, 1), (2, 1)],
           bottoms=("d", "l"))
    with pytest.raises(NetError, match=r"bottom 0 must have 1 to 4 axes"):
        mk(f'type: "HDF5Output" hdf5_output_param {{ file_name: "{tmp_path}/x.h5" }}', [(2, 1, 1, 1, 1), (2, 1)],
           bottoms=("d", "l"), tops=())


# ================================================================ every new type in one net

def test_shape_inference_through_a_prototxt_net_matches_the_run():
    n = net("""
        input: "x" input_shape { dim: 2 dim: 3 dim: 8 dim: 8 }
        input: "ids" input_shape { dim: 2 dim: 4 }
        input: "perm" input_shape { dim: 3 }
        layer { name: "bnll" type: "BNLL" bottom: "x" top: "bnll" }
        layer { name: "clip" type: "Clip" bottom: "bnll" top: "clip" clip_param { min: 0 max: 2 } }
        layer { name: "elu" type: "ELU" bottom: "clip" top: "elu" }
        layer { name: "swish" type: "Swish" bottom: "elu" top: "swish" }
        layer { name: "thr" type: "Threshold" bottom: "swish" top: "thr" }
        layer { name: "mvn" type: "MVN" bottom: "swish" top: "mvn" }
        layer { name: "ref" type: "DummyData" top: "ref" dummy_data_param { shape { dim: 1 dim: 1 dim: 5 dim: 6 } } }
        layer { name: "crop" type: "Crop" bottom: "mvn" bottom: "ref" top: "crop" crop_param { offset: 1 } }
        layer { name: "tile" type: "Tile" bottom: "crop" top: "tile" tile_param { axis: 1 tiles: 2 } }
        layer { name: "reindex" type: "BatchReindex" bottom: "tile" bottom: "perm" top: "reindex" }
        layer { name: "spp" type: "SPP" bottom: "reindex" top: "spp" spp_param { pyramid_height: 2 pool: AVE } }
        layer { name: "im2col" type: "Im2col" bottom: "x" top: "cols" convolution_param { kernel_size: 3 stride: 2 } }
        layer { name: "red" type: "Reduction" bottom: "cols" top: "red" reduction_param { axis: 2 operation: MEAN } }
        layer { name: "argmax" type: "ArgMax" bottom: "x" top: "argmax" argmax_param { top_k: 2 out_max_val: true } }
        layer { name: "argmax1" type: "ArgMax" bottom: "x" top: "argmax1" argmax_param { axis: 1 } }
        layer { name: "embed" type: "Embed" bottom: "ids" top: "embed" embed_param { num_output: 5 input_dim: 7 } }
        layer { name: "param" type: "Parameter" top: "param" parameter_param { shape { dim: 4 dim: 2 } } }
    """)
    want = {"bnll": (2, 3, 8, 8), "clip": (2, 3, 8, 8), "elu": (2, 3, 8, 8), "swish": (2, 3, 8, 8),
            "thr": (2, 3, 8, 8), "mvn": (2, 3, 8, 8), "crop": (2, 3, 5, 6), "tile": (2, 6, 5, 6),
            "reindex": (3, 6, 5, 6), "spp": (3, 6 * 5), "cols": (2, 27, 3, 3), "red": (2, 27),
            "argmax": (2, 2, 2, 1), "argmax1": (2, 1, 8, 8), "embed": (2, 4, 5), "param": (4, 2)}
    for blob, shape in want.items():
        assert n.blob_shapes[blob] == shape, blob
    n.forward(x=torch.randn(2, 3, 8, 8), ids=torch.randint(0, 7, (2, 4)).float(), perm=torch.tensor([1.0, 0.0, 1.0]))
    for blob, shape in want.items():
        assert tuple(n.blobs[blob].shape) == shape, blob
