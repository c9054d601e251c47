"""Element-wise layers and Softmax: ReLU, PReLU, Sigmoid, TanH, AbsVal, Power, Exp, Log, Dropout, Softmax.

Each against a numpy formula, float64 gradcheck where differentiable, Caffe's phase rules, and user errors."""

import numpy as np
import pytest
import torch
from torch.func import functional_call

from layers.build import make_layer
from netdef.errors import NetError, NetNote
from nets.net import Net


def mk(body, shapes=((2, 3, 4, 5),), phase="TRAIN", bottoms=("x",)):
    head = 'name: "l" ' + " ".join(f'bottom: "{b}"' for b in bottoms) + ' top: "y" '
    return make_layer(head + body, [tuple(s) for s in shapes], phase)


def away_from_zero(*shape, margin=0.1):
    """float64 values with |x| >= margin, so kinks at 0 do not upset gradcheck."""
    x = torch.randn(*shape, dtype=torch.float64)
    return x + margin * torch.sign(x)


def gradcheck(fn, *inputs):
    inputs = tuple(t.detach().requires_grad_(True) for t in inputs)
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5)


# ---------------------------------------------------------------- ReLU

@pytest.mark.parametrize("slope", [0.0, 0.1, -0.5])
def test_relu_formula(slope):
    layer = mk(f'type: "ReLU" relu_param {{ negative_slope: {slope} }}')
    x = torch.randn(2, 3, 4, 5)
    xn = x.numpy()
    want = np.maximum(xn, 0) + slope * np.minimum(xn, 0)
    y = layer(x)
    assert y.shape == x.shape and y.dtype == torch.float32
    np.testing.assert_allclose(y.numpy(), want, rtol=1e-6, atol=1e-7)


def test_relu_gradient_at_zero_is_caffes():
    # Caffe's backward: dy/dx = 1 if x > 0 else negative_slope (so negative_slope at exactly 0)
    layer = mk('type: "ReLU" relu_param { negative_slope: 0.25 }', [(4,)])
    x = torch.tensor([-1.0, 0.0, 0.0, 2.0], requires_grad=True)
    layer(x).sum().backward()
    assert x.grad.tolist() == [0.25, 0.25, 0.25, 1.0]


def test_relu_gradcheck():
    layer = mk('type: "ReLU" relu_param { negative_slope: 0.3 engine: CAFFE }', [(2, 3, 3)])
    gradcheck(layer, away_from_zero(2, 3, 3))
    gradcheck(mk('type: "ReLU"', [(2, 3, 3)]), away_from_zero(2, 3, 3))


def test_relu_unknown_param_did_you_mean():
    with pytest.raises(NetError, match=r"unknown param 'negative_slop' in relu_param \(did you mean negative_slope\?\)"):
        mk('type: "ReLU" relu_param { negative_slop: 0.1 }')
    with pytest.warns(NetNote, match=r"ignores power_param \(this layer takes relu_param; Caffe ignores it too\)"):
        mk('type: "ReLU" power_param { power: 2 }')
    with pytest.raises(NetError, match=r"unknown param block 'rellu_param' \(this layer takes relu_param\) "
                                       r"\(did you mean relu_param\?\)"):
        mk('type: "ReLU" rellu_param { negative_slope: 2 }')
    with pytest.raises(NetError, match=r"engine"):
        mk('type: "ReLU" relu_param { engine: FAST }')


# ---------------------------------------------------------------- PReLU

def test_prelu_blob_default_filler_and_shapes():
    layer = mk('type: "PReLU"', [(2, 3, 4, 5)])
    assert layer.blob_names == ["slope"]
    assert tuple(layer.slope.shape) == (3,)
    assert layer.slope.tolist() == [0.25, 0.25, 0.25]
    assert isinstance(layer.slope, torch.nn.Parameter)
    shared = mk('type: "PReLU" prelu_param { channel_shared: true filler { type: "constant" value: 0.1 } }')
    assert tuple(shared.slope.shape) == ()     # Caffe's 0-axis blob (count 1)
    assert shared.slope.item() == pytest.approx(0.1)


def test_prelu_formula_per_channel_and_shared():
    layer = mk('type: "PReLU"', [(2, 3, 4)])
    with torch.no_grad():
        layer.slope.copy_(torch.tensor([0.1, -2.0, 0.5]))
    x = torch.randn(2, 3, 4)
    xn, a = x.numpy(), [0.1, -2.0, 0.5]
    want = np.empty_like(xn)
    for n in range(2):
        for c in range(3):
            for i in range(4):
                v = xn[n, c, i]
                want[n, c, i] = v if v > 0 else a[c] * v
    np.testing.assert_allclose(layer(x).detach().numpy(), want, rtol=1e-6)

    shared = mk('type: "PReLU" prelu_param { channel_shared: true }', [(2, 3)])
    x2 = torch.tensor([[-4.0, 1.0, -2.0], [3.0, -1.0, 0.0]])
    assert shared(x2).detach().tolist() == [[-1.0, 1.0, -0.5], [3.0, -0.25, 0.0]]


def test_prelu_gradcheck_including_slope():
    for body in ('type: "PReLU"', 'type: "PReLU" prelu_param { channel_shared: true }'):
        layer = mk(body, [(2, 3, 2, 2)]).double()
        slope = torch.randn(tuple(layer.slope.shape), dtype=torch.float64)
        gradcheck(lambda x, a: functional_call(layer, {"slope": a}, (x,)), away_from_zero(2, 3, 2, 2), slope)


def test_prelu_gradients_by_hand():
    # Caffe: dy/dx = 1 if x > 0 else a (so a at exactly 0); dy/da = x where x <= 0
    layer = mk('type: "PReLU" prelu_param { channel_shared: true }', [(1, 4)])
    x = torch.tensor([[-2.0, 0.0, 0.0, 3.0]], requires_grad=True)
    layer(x).sum().backward()
    assert x.grad.tolist() == [[0.25, 0.25, 0.25, 1.0]]
    assert layer.slope.grad.item() == -2.0


def test_prelu_float64_input_on_float32_layer():
    layer = mk('type: "PReLU"', [(1, 3, 2)])
    x = -torch.ones(1, 3, 2, dtype=torch.float64)
    y = layer(x)
    assert y.dtype == torch.float64
    assert torch.equal(y, torch.full((1, 3, 2), -0.25, dtype=torch.float64))


def test_prelu_errors():
    with pytest.raises(NetError, match=r"at least 2 axes.*\(5,\)"):
        mk('type: "PReLU"', [(5,)])
    with pytest.raises(NetError, match=r"did you mean channel_shared"):
        mk('type: "PReLU" prelu_param { channel_share: true }')
    with pytest.raises(NetError, match=r"unknown filler type 'constnt'"):
        mk('type: "PReLU" prelu_param { filler { type: "constnt" } }')


# ---------------------------------------------------------------- Sigmoid, TanH, AbsVal

def test_sigmoid_tanh_absval_formulas():
    x = torch.randn(2, 3, 4)
    xn = x.numpy().astype(np.float64)
    np.testing.assert_allclose(mk('type: "Sigmoid"', [x.shape])(x).numpy(), 1 / (1 + np.exp(-xn)), rtol=1e-6)
    np.testing.assert_allclose(mk('type: "TanH" tanh_param { engine: CUDNN }', [x.shape])(x).numpy(),
                               (np.exp(xn) - np.exp(-xn)) / (np.exp(xn) + np.exp(-xn)), rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(mk('type: "AbsVal"', [x.shape])(x).numpy(), np.abs(x.numpy()))


def test_sigmoid_tanh_absval_gradcheck():
    for t in ("Sigmoid", "TanH", "AbsVal"):
        gradcheck(mk(f'type: "{t}"', [(2, 3)]), away_from_zero(2, 3))


def test_absval_takes_no_params():
    with pytest.raises(NetError, match=r"unknown param block 'absval_param'"):
        mk('type: "AbsVal" absval_param { }')


# ---------------------------------------------------------------- Power

def test_power_formula():
    layer = mk('type: "Power" power_param { power: 3 scale: -0.5 shift: 2 }', [(3, 4)])
    x = torch.randn(3, 4)
    np.testing.assert_allclose(layer(x).numpy(), (2 + -0.5 * x.numpy().astype(np.float64)) ** 3, rtol=1e-5)
    identity = mk('type: "Power"', [(3, 4)])
    assert torch.equal(identity(x), x)
    sqrt = mk('type: "Power" power_param { power: 0.5 shift: 1 }', [(3,)])
    np.testing.assert_allclose(sqrt(torch.tensor([0.0, 3.0, 8.0])).numpy(), [1.0, 2.0, 3.0], rtol=1e-6)


def test_power_constant_cases_ignore_input():
    x = torch.tensor([1.0, float("nan"), -3.0], requires_grad=True)
    # power 0 -> 1; scale 0 -> shift ** power (Caffe's special case, even for a NaN input)
    assert mk('type: "Power" power_param { power: 0 scale: 2 }', [(3,)])(x).tolist() == [1.0, 1.0, 1.0]
    assert mk('type: "Power" power_param { power: 3 scale: 0 shift: 2 }', [(3,)])(x).tolist() == [8.0, 8.0, 8.0]


def test_power_gradcheck():
    layer = mk('type: "Power" power_param { power: 2.5 scale: 0.7 shift: 3 }', [(2, 3)])
    gradcheck(layer, torch.rand(2, 3, dtype=torch.float64))
    gradcheck(mk('type: "Power" power_param { power: 2 scale: -1.5 }', [(2, 3)]), torch.randn(2, 3, dtype=torch.float64))


def test_power_bad_type():
    with pytest.raises(NetError, match=r"'power' expects a number"):
        mk('type: "Power" power_param { power: "two" }')


# ---------------------------------------------------------------- Exp, Log

def test_exp_formula():
    x = torch.randn(2, 5, dtype=torch.float64)
    xn = x.numpy()
    np.testing.assert_allclose(mk('type: "Exp"', [x.shape])(x).numpy(), np.exp(xn), rtol=1e-12)
    layer = mk('type: "Exp" exp_param { base: 2 scale: 0.5 shift: 1 }', [x.shape])
    np.testing.assert_allclose(layer(x).numpy(), 2.0 ** (1 + 0.5 * xn), rtol=1e-12)
    assert mk('type: "Exp" exp_param { base: 10 }', [(2,)])(torch.tensor([2.0, -1.0])).tolist() == \
        pytest.approx([100.0, 0.1], rel=1e-6)


def test_log_formula():
    x = torch.rand(2, 5, dtype=torch.float64) + 0.1
    xn = x.numpy()
    np.testing.assert_allclose(mk('type: "Log"', [x.shape])(x).numpy(), np.log(xn), rtol=1e-12)
    layer = mk('type: "Log" log_param { base: 10 scale: 3 shift: 0.5 }', [x.shape])
    np.testing.assert_allclose(layer(x).numpy(), np.log10(0.5 + 3 * xn), rtol=1e-12)
    assert mk('type: "Log" log_param { base: 2 }', [(2,)])(torch.tensor([8.0, 0.25])).tolist() == \
        pytest.approx([3.0, -2.0], rel=1e-6)


def test_exp_log_gradcheck():
    gradcheck(mk('type: "Exp" exp_param { base: 3 scale: -0.4 shift: 0.2 }', [(2, 3)]), torch.randn(2, 3, dtype=torch.float64))
    gradcheck(mk('type: "Exp"', [(2, 3)]), torch.randn(2, 3, dtype=torch.float64))
    gradcheck(mk('type: "Log" log_param { base: 5 scale: 2 shift: 1 }', [(2, 3)]), torch.rand(2, 3, dtype=torch.float64))
    gradcheck(mk('type: "Log"', [(2, 3)]), torch.rand(2, 3, dtype=torch.float64) + 0.1)


@pytest.mark.parametrize("body, msg", [
    ('type: "Exp" exp_param { base: -2 }', r"base must be strictly positive \(or -1 for e\), got -2"),
    ('type: "Exp" exp_param { base: 0 }', r"base must be strictly positive"),
    ('type: "Log" log_param { base: -0.5 }', r"base must be strictly positive"),
    ('type: "Log" log_param { base: 1 }', r"base 1 has no logarithm"),
    ('type: "Log" log_param { bse: 2 }', r"unknown param 'bse' in log_param \(did you mean base\?\)"),
])
def test_exp_log_errors(body, msg):
    with pytest.raises(NetError, match=msg) as info:
        mk(body)
    assert "layer 'l'" in str(info.value)


# ---------------------------------------------------------------- Dropout

def test_dropout_train_scales_kept_units():
    layer = mk('type: "Dropout" dropout_param { dropout_ratio: 0.25 }', [(200, 100)])
    x = torch.rand(200, 100) + 1.0
    y = layer(x)
    kept = y != 0
    torch.testing.assert_close(y[kept], x[kept] / 0.75)
    assert abs((~kept).float().mean().item() - 0.25) < 0.01   # 20000 draws: sd 0.003
    y2 = layer(x)
    assert not torch.equal(kept, y2 != 0)                   # a new mask every pass


def test_dropout_gradient_follows_mask():
    layer = mk('type: "Dropout"', [(50, 40)])
    x = (torch.rand(50, 40) + 1.0).requires_grad_(True)
    y = layer(x)
    y.sum().backward()
    torch.testing.assert_close(x.grad, (y != 0).float() * 2.0)


def test_dropout_test_phase_is_identity():
    layer = mk('type: "Dropout" dropout_param { dropout_ratio: 0.7 }', [(4, 5)], phase="TEST")
    x = torch.randn(4, 5)
    assert torch.equal(layer(x), x)


def test_dropout_scale_train_false():
    train = mk('type: "Dropout" dropout_param { dropout_ratio: 0.4 scale_train: false }', [(100, 50)])
    x = torch.rand(100, 50) + 1.0
    y = train(x)
    kept = y != 0
    assert torch.equal(y[kept], x[kept])
    assert 0.35 < (~kept).float().mean().item() < 0.45
    test = mk('type: "Dropout" dropout_param { dropout_ratio: 0.4 scale_train: false }', [(100, 50)], phase="TEST")
    torch.testing.assert_close(test(x), x * 0.6)


def test_dropout_in_a_net_by_phase():
    text = """
        input: "x" input_shape { dim: 8 dim: 16 }
        layer { name: "drop" type: "Dropout" bottom: "x" top: "x" dropout_param { dropout_ratio: 0.5 } }
    """
    x = torch.ones(8, 16)
    assert torch.equal(Net(text, phase="TEST", device="cpu").forward(x=x)["x"], x)
    y = Net(text, phase="TRAIN", device="cpu").forward(x=x)["x"]
    assert set(y.unique().tolist()) == {0.0, 2.0}


@pytest.mark.parametrize("ratio", ["1.0", "-0.1", "1.5"])
def test_dropout_bad_ratio(ratio):
    with pytest.raises(NetError, match=rf"dropout_ratio must be in \[0, 1\), got {ratio}"):
        mk(f'type: "Dropout" dropout_param {{ dropout_ratio: {ratio} }}')


# ---------------------------------------------------------------- Softmax

def np_softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


@pytest.mark.parametrize("axis, np_axis", [(1, 1), (-1, 3), (0, 0), (2, 2)])
def test_softmax_formula(axis, np_axis):
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64) * 3
    layer = mk(f'type: "Softmax" softmax_param {{ axis: {axis} }}', [x.shape])
    y = layer(x)
    np.testing.assert_allclose(y.numpy(), np_softmax(x.numpy(), np_axis), rtol=1e-12)
    np.testing.assert_allclose(y.sum(dim=np_axis).numpy(), 1.0, rtol=1e-12)


def test_softmax_default_axis_is_channels_and_large_inputs_are_stable():
    layer = mk('type: "Softmax"', [(1, 3, 1, 1)])
    y = layer(torch.tensor([1000.0, 1000.0, -1000.0]).view(1, 3, 1, 1))
    assert y.flatten().tolist() == pytest.approx([0.5, 0.5, 0.0])


def test_softmax_gradcheck():
    gradcheck(mk('type: "Softmax" softmax_param { engine: CAFFE }', [(2, 4, 3)]), torch.randn(2, 4, 3, dtype=torch.float64))
    gradcheck(mk('type: "Softmax" softmax_param { axis: -1 }', [(2, 4, 3)]), torch.randn(2, 4, 3, dtype=torch.float64))


def test_softmax_errors():
    with pytest.raises(NetError, match=r"axis 4 is out of range for a 4-D blob"):
        mk('type: "Softmax" softmax_param { axis: 4 }')
    with pytest.raises(NetError, match=r"axis -3 is out of range for a 2-D blob"):
        mk('type: "Softmax" softmax_param { axis: -3 }', [(2, 3)])
    with pytest.raises(NetError, match=r"did you mean axis"):
        mk('type: "Softmax" softmax_param { axes: 1 }')


def test_neuron_layers_take_one_bottom():
    with pytest.raises(NetError, match=r"takes 1 bottom\(s\), got 2"):
        mk('type: "ReLU"', [(2, 3), (2, 3)], bottoms=("a", "b"))


@pytest.mark.parametrize("body", ['type: "ReLU"', 'type: "PReLU"', 'type: "Sigmoid"', 'type: "TanH"',
                                  'type: "AbsVal"', 'type: "Power" power_param { power: 2 }', 'type: "Exp"',
                                  'type: "Log"', 'type: "Dropout"', 'type: "Softmax"'])
def test_shape_inference_keeps_shape(body):
    layer = mk(body, [(2, 3, 4, 5)])
    assert layer.infer_top_shapes([(2, 3, 4, 5)]) == [(2, 3, 4, 5)]
    assert layer(torch.rand(2, 3, 4, 5, dtype=torch.float64)).dtype == torch.float64
