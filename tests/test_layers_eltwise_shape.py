"""Eltwise and the data-movement layers (Concat, Slice, Split, Flatten, Reshape, Silence)."""

import numpy as np
import pytest
import torch

from layers.build import make_layer
from netdef.errors import NetError
from nets.net import Net


def layer(type_, params="", bottoms=("x",), tops=("y",), shapes=()):
    text = f'name: "l" type: "{type_}" ' + " ".join(f'bottom: "{b}"' for b in bottoms) + " " + \
        " ".join(f'top: "{t}"' for t in tops) + " " + params
    return make_layer(text, bottom_shapes=shapes)


def gradcheck(lay, *inputs):
    lay.double()
    inputs = tuple(x.double().requires_grad_() for x in inputs)
    assert torch.autograd.gradcheck(lambda *x: lay(*x), inputs)


# ---- Eltwise -----------------------------------------------------------------------------------------------

def eltwise(params, n, shape=(2, 3, 4)):
    return layer("Eltwise", params, bottoms=[f"b{i}" for i in range(n)], shapes=[shape] * n)


def test_eltwise_sum_default_and_coeff():
    xs = [torch.randn(2, 3, 4) for _ in range(3)]
    a, b, c = (x.numpy() for x in xs)
    np.testing.assert_allclose(eltwise("", 3)(*xs).numpy(), a + b + c, rtol=1e-6)
    y = eltwise("eltwise_param { operation: SUM coeff: 1 coeff: -2 coeff: 0.5 }", 3)(*xs)
    np.testing.assert_allclose(y.numpy(), a - 2 * b + 0.5 * c, rtol=1e-5, atol=1e-6)
    assert eltwise("", 3).infer_top_shapes([(2, 3, 4)] * 3) == [(2, 3, 4)]


def test_eltwise_prod_and_max_values():
    xs = [torch.randn(2, 3, 4) for _ in range(3)]
    a, b, c = (x.numpy() for x in xs)
    np.testing.assert_allclose(eltwise("eltwise_param { operation: PROD }", 3)(*xs).numpy(), a * b * c, rtol=1e-6)
    np.testing.assert_array_equal(eltwise("eltwise_param { operation: MAX }", 3)(*xs).numpy(),
                                  np.maximum(np.maximum(a, b), c))
    # enum by number, in caffe.proto order: PROD = 0, SUM = 1, MAX = 2
    np.testing.assert_allclose(eltwise("eltwise_param { operation: 0 }", 3)(*xs).numpy(), a * b * c, rtol=1e-6)
    np.testing.assert_array_equal(eltwise("eltwise_param { operation: 2 }", 3)(*xs).numpy(),
                                  np.maximum(np.maximum(a, b), c))


def test_eltwise_max_tie_gradient_follows_caffe_mask():
    # Caffe: a > b ? 0 : 1 for the first pair (tie -> bottom 1); later bottoms must be strictly greater.
    a = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    b = torch.tensor([1.0, 1.0, 3.0], requires_grad=True)
    c = torch.tensor([0.0, 2.0, 3.0], requires_grad=True)
    eltwise("eltwise_param { operation: MAX }", 3, (3,))(a, b, c).sum().backward()
    assert a.grad.tolist() == [0.0, 1.0, 0.0]
    assert b.grad.tolist() == [1.0, 0.0, 1.0]
    assert c.grad.tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("params", ["eltwise_param { coeff: 0.5 coeff: -1.5 coeff: 2 }",
                                    "eltwise_param { operation: PROD }",
                                    "eltwise_param { operation: MAX }"])
def test_eltwise_gradcheck(params):
    xs = [torch.randn(2, 3, 2) for _ in range(3)]
    if "MAX" in params:  # distinct values, well apart, so the max is differentiable
        xs = list(torch.randperm(36).reshape(3, 2, 3, 2).double() * 0.1)
    gradcheck(eltwise(params, 3, (2, 3, 2)), *xs)


def test_eltwise_errors():
    with pytest.raises(NetError, match=r"bottom 0 is \(2, 3, 4\), bottom 1 is \(2, 3, 5\)"):
        layer("Eltwise", bottoms=("a", "b"), shapes=[(2, 3, 4), (2, 3, 5)])
    with pytest.raises(NetError, match="one coeff per bottom: 1 coeff"):
        eltwise("eltwise_param { coeff: 2 }", 2)
    with pytest.raises(NetError, match="coeff is only allowed with operation SUM, not PROD"):
        eltwise("eltwise_param { operation: PROD coeff: 1 coeff: 2 }", 2)
    with pytest.raises(NetError, match=r"unknown param 'operaton' in eltwise_param \(did you mean operation\?\)"):
        eltwise("eltwise_param { operaton: SUM }", 2)
    with pytest.raises(NetError, match="'operation' expects one of PROD, SUM, MAX, found"):
        eltwise("eltwise_param { operation: MIN }", 2)
    with pytest.raises(NetError, match=r"takes at least 2 bottom\(s\), got 1"):
        eltwise("", 1)


# ---- Concat ------------------------------------------------------------------------------------------------

def test_concat_values_and_shapes():
    a, b = torch.randn(2, 3, 4), torch.randn(2, 5, 4)
    lay = layer("Concat", bottoms=("a", "b"), shapes=[(2, 3, 4), (2, 5, 4)])
    assert lay.infer_top_shapes([(2, 3, 4), (2, 5, 4)]) == [(2, 8, 4)]
    np.testing.assert_array_equal(lay(a, b).numpy(), np.concatenate([a.numpy(), b.numpy()], axis=1))
    c = torch.randn(2, 3, 1)
    lay = layer("Concat", "concat_param { axis: -1 }", bottoms=("a", "c"), shapes=[(2, 3, 4), (2, 3, 1)])
    np.testing.assert_array_equal(lay(a, c).numpy(), np.concatenate([a.numpy(), c.numpy()], axis=2))
    lay = layer("Concat", "concat_param { concat_dim: 0 }", bottoms=("a", "a2"), shapes=[(2, 3, 4), (2, 3, 4)])
    assert lay.infer_top_shapes([(2, 3, 4), (2, 3, 4)]) == [(4, 3, 4)]
    single = layer("Concat", shapes=[(2, 3)])
    x = torch.randn(2, 3)
    assert torch.equal(single(x), x)


def test_concat_gradcheck():
    lay = layer("Concat", "concat_param { axis: 2 }", bottoms=("a", "b", "c"),
                shapes=[(2, 2, 1), (2, 2, 3), (2, 2, 2)])
    gradcheck(lay, torch.randn(2, 2, 1), torch.randn(2, 2, 3), torch.randn(2, 2, 2))


def test_concat_errors():
    with pytest.raises(NetError, match=r"except along axis 1: bottom 0 is \(2, 3, 4\), bottom 1 is \(2, 3, 5\)"):
        layer("Concat", bottoms=("a", "b"), shapes=[(2, 3, 4), (2, 3, 5)])
    with pytest.raises(NetError, match=r"bottom 1 is \(2, 3\)"):
        layer("Concat", bottoms=("a", "b"), shapes=[(2, 3, 4), (2, 3)])
    with pytest.raises(NetError, match="either axis or concat_dim, not both"):
        layer("Concat", "concat_param { axis: 1 concat_dim: 1 }", shapes=[(2, 3)])
    with pytest.raises(NetError, match="concat_dim -1 is out of range"):
        layer("Concat", "concat_param { concat_dim: -1 }", shapes=[(2, 3)])
    with pytest.raises(NetError, match="axis 3 is out of range for a 3-D blob"):
        layer("Concat", "concat_param { axis: 3 }", shapes=[(2, 3, 4)])
    with pytest.raises(NetError, match=r"\(did you mean axis\?\)"):
        layer("Concat", "concat_param { axsi: 1 }", shapes=[(2, 3)])


# ---- Slice -------------------------------------------------------------------------------------------------

def test_slice_points_and_equal_split():
    x = torch.randn(2, 6, 3)
    lay = layer("Slice", "slice_param { slice_point: 1 slice_point: 4 }", tops=("a", "b", "c"), shapes=[(2, 6, 3)])
    assert lay.infer_top_shapes([(2, 6, 3)]) == [(2, 1, 3), (2, 3, 3), (2, 2, 3)]
    for got, want in zip(lay(x), np.split(x.numpy(), [1, 4], axis=1)):
        np.testing.assert_array_equal(got.numpy(), want)
    lay = layer("Slice", "slice_param { axis: -1 }", tops=("a", "b", "c"), shapes=[(2, 6, 3)])
    assert lay.infer_top_shapes([(2, 6, 3)]) == [(2, 6, 1)] * 3
    for i, got in enumerate(lay(x)):
        np.testing.assert_array_equal(got.numpy(), x.numpy()[:, :, i:i + 1])
    lay = layer("Slice", "slice_param { slice_dim: 0 }", tops=("a", "b"), shapes=[(2, 6, 3)])
    assert lay.infer_top_shapes([(2, 6, 3)]) == [(1, 6, 3)] * 2
    one = layer("Slice", shapes=[(2, 6, 3)])
    assert one.infer_top_shapes([(2, 6, 3)]) == [(2, 6, 3)]


def test_slice_gradcheck():
    lay = layer("Slice", "slice_param { slice_point: 2 slice_point: 3 }", tops=("a", "b", "c"),
                shapes=[(2, 5, 2)])
    gradcheck(lay, torch.randn(2, 5, 2))


def test_slice_errors():
    def mk(params, tops=("a", "b", "c")):
        return layer("Slice", params, tops=tops, shapes=[(2, 6, 3)])
    with pytest.raises(NetError, match=r"1 slice_point\(s\) make 2 pieces, but the layer has 3 top\(s\)"):
        mk("slice_param { slice_point: 2 }")
    with pytest.raises(NetError, match=r"slice_point values \[4, 2\] must be increasing"):
        mk("slice_param { slice_point: 4 slice_point: 2 }")
    with pytest.raises(NetError, match=r"strictly between 0 and 6 \(the size of axis 1 of bottom shape \(2, 6, 3\)\)"):
        mk("slice_param { slice_point: 2 slice_point: 6 }")
    with pytest.raises(NetError, match="must be increasing"):
        mk("slice_param { slice_point: 0 slice_point: 3 }")
    with pytest.raises(NetError, match="has size 6, which 4 tops cannot split equally"):
        mk("", tops=("a", "b", "c", "d"))
    with pytest.raises(NetError, match="either axis or slice_dim, not both"):
        mk("slice_param { axis: 1 slice_dim: 1 }")
    with pytest.raises(NetError, match=r"unknown param 'slice_points' in slice_param \(did you mean slice_point\?\)"):
        mk("slice_param { slice_points: 2 }")


# ---- Split -------------------------------------------------------------------------------------------------

def test_split_copies_and_sums_gradients():
    lay = layer("Split", tops=("a", "b", "c"), shapes=[(2, 3)])
    assert lay.infer_top_shapes([(2, 3)]) == [(2, 3)] * 3
    x = torch.randn(2, 3, requires_grad=True)
    a, b, c = lay(x)
    assert torch.equal(a, x) and torch.equal(b, x) and torch.equal(c, x)
    (a.sum() + 2 * b.sum() + 3 * c.sum()).backward()
    assert torch.equal(x.grad, torch.full((2, 3), 6.0))


# ---- Flatten -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("params, want", [
    ("", (2, 60)),
    ("flatten_param { axis: 2 }", (2, 3, 20)),
    ("flatten_param { axis: 1 end_axis: 2 }", (2, 12, 5)),
    ("flatten_param { axis: 0 end_axis: -2 }", (24, 5)),
    ("flatten_param { axis: -1 }", (2, 3, 4, 5)),
    ("flatten_param { axis: 0 }", (120,)),
])
def test_flatten_shapes_and_values(params, want):
    x = torch.randn(2, 3, 4, 5)
    lay = layer("Flatten", params, shapes=[(2, 3, 4, 5)])
    assert lay.infer_top_shapes([(2, 3, 4, 5)]) == [want]
    np.testing.assert_array_equal(lay(x).numpy(), x.numpy().reshape(want))


def test_flatten_gradcheck_and_errors():
    gradcheck(layer("Flatten", "flatten_param { axis: 1 end_axis: 2 }", shapes=[(2, 2, 3, 2)]),
              torch.randn(2, 2, 3, 2))
    with pytest.raises(NetError, match="end_axis 1 comes before axis 2"):
        layer("Flatten", "flatten_param { axis: 2 end_axis: 1 }", shapes=[(2, 3, 4, 5)])
    with pytest.raises(NetError, match="end_axis 4 is out of range for a 4-D blob"):
        layer("Flatten", "flatten_param { end_axis: 4 }", shapes=[(2, 3, 4, 5)])
    with pytest.raises(NetError, match=r"\(did you mean end_axis\?\)"):
        layer("Flatten", "flatten_param { endaxis: 4 }", shapes=[(2, 3, 4, 5)])


# ---- Reshape -----------------------------------------------------------------------------------------------

def reshape(params, shape=(2, 8)):
    return layer("Reshape", f"reshape_param {{ {params} }}", shapes=[shape])


@pytest.mark.parametrize("params, want", [
    # caffe.proto's examples for a 2 x 8 input
    ("shape { dim: 2 dim: 2 dim: 4 }", (2, 2, 4)),
    ("shape { dim: 0 dim: 2 dim: 4 }", (2, 2, 4)),
    ("shape { dim: 0 dim: 2 dim: -1 }", (2, 2, 4)),
    ("shape { dim: 0 dim: -1 dim: 4 }", (2, 2, 4)),
    ("shape { dim: 2 dim: 4 } axis: 1", (2, 2, 4)),
    # caffe.proto also lists axis: -3 here, but reshape_layer.cpp maps -3 to start 2 + (-3) + 1 = 0 (which
    # fails the count check, see test_reshape_errors); -2 is the axis that starts at 1
    ("shape { dim: 2 dim: 4 } axis: -2", (2, 2, 4)),
    ("shape { dim: 1 dim: 2 dim: 8 }", (1, 2, 8)),
    ("shape { dim: 1 dim: 2 } num_axes: 1", (1, 2, 8)),
    ("shape { dim: 1 } num_axes: 0", (1, 2, 8)),
    ("shape { dim: 2 dim: 1 dim: 8 }", (2, 1, 8)),
    ("shape { dim: 1 } axis: 1 num_axes: 0", (2, 1, 8)),
    # axis -1 starts after the last axis; -2 replaces only the last one
    ("shape { dim: 1 } axis: -1", (2, 8, 1)),
    ("shape { dim: -1 dim: 2 } axis: -2", (2, 4, 2)),
    ("shape { dim: 0 } axis: 1 num_axes: 1", (2, 8)),
    ("shape { dim: -1 }", (16,)),
])
def test_reshape_caffe_examples(params, want):
    x = torch.arange(16.0).reshape(2, 8)
    lay = reshape(params)
    assert lay.infer_top_shapes([(2, 8)]) == [want]
    np.testing.assert_array_equal(lay(x).numpy(), np.arange(16.0).reshape(want))


@pytest.mark.parametrize("params, want", [
    # test_reshape_layer.cpp, bottom 2 x 3 x 6 x 5
    ("shape { dim: 3 dim: 10 dim: -1 } axis: 1", (2, 3, 10, 3)),
    ("shape { dim: 1 dim: 1 dim: 1 } axis: 0 num_axes: 0", (1, 1, 1, 2, 3, 6, 5)),
    ("shape { dim: 1 dim: 1 dim: 1 } axis: 2 num_axes: 0", (2, 3, 1, 1, 1, 6, 5)),
    ("shape { dim: 1 dim: 1 dim: 1 } axis: -1 num_axes: 0", (2, 3, 6, 5, 1, 1, 1)),
    ("shape { dim: -1 } axis: 1 num_axes: 2", (2, 18, 5)),
    ("shape { dim: 6 dim: 2 dim: 3 dim: 5 }", (6, 2, 3, 5)),
])
def test_reshape_caffe_unit_tests(params, want):
    assert reshape(params, (2, 3, 6, 5)).infer_top_shapes([(2, 3, 6, 5)]) == [want]


def test_reshape_follows_batch_size_and_gradcheck():
    lay = reshape("shape { dim: 0 dim: -1 }", (2, 3, 4))
    assert lay(torch.randn(5, 3, 4)).shape == (5, 12)
    lay = reshape("shape { dim: 3 dim: 2 } axis: 1 num_axes: 1", (2, 6, 2))
    assert lay.infer_top_shapes([(2, 6, 2)]) == [(2, 3, 2, 2)]
    gradcheck(lay, torch.randn(2, 6, 2))


@pytest.mark.parametrize("params, msg", [
    ("shape { dim: -1 dim: -1 }", "more than one -1"),
    ("shape { dim: 3 dim: -1 }", r"bottom count 16 \(shape \(2, 8\)\) is not divisible by 3"),
    ("shape { dim: 0 dim: 0 dim: 0 }", r"shape dim 2 is 0 but the bottom \(2, 8\) has no axis 2"),
    ("shape { dim: 3 dim: 5 }", r"top shape \(3, 5\) with 15 elements, but the bottom \(2, 8\) has 16"),
    ("shape { dim: 2 dim: 4 } axis: -3", r"top shape \(2, 4\) with 8 elements, but the bottom \(2, 8\) has 16"),
    ("shape { dim: 16 } axis: 3", "axis 3 is out of range for a 2-D bottom"),
    ("shape { dim: 16 } axis: -4", "axis -4 is out of range"),
    ("shape { dim: 8 } axis: 1 num_axes: 2", r"axis \+ num_axes = 1 \+ 2 is beyond the 2 axes"),
    ("shape { dim: 16 } num_axes: -2", "num_axes must be >= 0, or -1"),
    ("shape { dim: -2 dim: -8 }", "a dim below -1"),
    ("shape { dims: 16 }", r"unknown param 'dims' in shape \(did you mean dim\?\)"),
    ("shapes { dim: 16 }", r"unknown param 'shapes' in reshape_param \(did you mean shape\?\)"),
])
def test_reshape_errors(params, msg):
    with pytest.raises(NetError, match=msg):
        reshape(params)


# ---- Silence, and the layers inside a Net -----------------------------------------------------------------

NET = """
name: "movers"
input: "data" input_shape { dim: 2 dim: 6 dim: 2 dim: 2 }
layer { name: "sl" type: "Slice" bottom: "data" top: "a" top: "b" slice_param { slice_point: 2 } }
layer { name: "sp" type: "Split" bottom: "a" top: "a1" top: "a2" }
layer { name: "sum" type: "Eltwise" bottom: "a1" bottom: "a2" top: "s" eltwise_param { coeff: 1 coeff: 2 } }
layer { name: "cat" type: "Concat" bottom: "s" bottom: "b" top: "c" }
layer { name: "fl" type: "Flatten" bottom: "c" top: "f" }
layer { name: "rs" type: "Reshape" bottom: "f" top: "r" reshape_param { shape { dim: 0 dim: -1 dim: 4 } } }
layer { name: "quiet" type: "Silence" bottom: "a2" }
"""


def test_layers_in_a_net():
    net = Net(NET, phase="TEST", device="cpu")
    assert net.blob_shapes["a"] == (2, 2, 2, 2) and net.blob_shapes["b"] == (2, 4, 2, 2)
    assert net.blob_shapes["c"] == (2, 6, 2, 2) and net.blob_shapes["f"] == (2, 24)
    assert net.blob_shapes["r"] == (2, 6, 4)
    assert net.outputs == ["r"]  # a2 is consumed by Silence
    x = torch.randn(2, 6, 2, 2)
    out = net.forward(data=x)["r"].numpy()
    xn = x.numpy()
    want = np.concatenate([3 * xn[:, :2], xn[:, 2:]], axis=1).reshape(2, 6, 4)
    np.testing.assert_allclose(out, want, rtol=1e-6)


def test_silence_has_no_tops():
    lay = layer("Silence", bottoms=("a", "b"), tops=(), shapes=[(2, 3), (4,)])
    assert lay.infer_top_shapes([(2, 3), (4,)]) == []
    assert lay(torch.randn(2, 3), torch.randn(4)) == ()
    with pytest.raises(NetError, match=r"takes 0 top\(s\), got 1"):
        layer("Silence", shapes=[(2, 3)])
