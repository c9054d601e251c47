"""RNN, LSTM and LSTMUnit (layers/caffe/recurrent.py) against literal NumPy ports of Caffe's unrolled nets
(rnn_layer.cpp / lstm_layer.cpp FillUnrolledNet) and of LSTMUnit's Forward_cpu / Backward_cpu loops: resets by
cont = 0 mid-sequence, static input, expose_hidden, state carried between passes (Caffe's TestForward), blob
order and shapes, float64 gradcheck, user errors, and a prototxt net trained by the Solver."""

import os

import h5py
import numpy as np
import pytest
import torch
from torch.func import functional_call

from layers.build import make_layer
from netdef.errors import NetError
from nets.net import Net
from nets.solver import Solver
from nets.weights import save_weights

WF = 'weight_filler { type: "gaussian" std: 0.4 } bias_filler { type: "gaussian" std: 0.3 }'


def mk(kind, shapes, num_output=3, extra="", tops=None, fillers=WF):
    bottoms = [f"b{i}" for i in range(len(shapes))]
    tops = tops or ["y"]
    text = (f'name: "rec" type: "{kind}" ' + " ".join(f'bottom: "{b}"' for b in bottoms) + " "
            + " ".join(f'top: "{t}"' for t in tops)
            + f" recurrent_param {{ num_output: {num_output} {fillers} {extra} }}")
    return make_layer(text, [tuple(s) for s in shapes]).double()


def blobs(layer):
    return {n: b.detach().numpy() for n, b in zip(layer.blob_names, layer.caffe_blobs())}


# ---- literal NumPy ports of Caffe ---------------------------------------------------------------------------------

def sigmoid(x):
    return 1. / (1. + np.exp(-x))


def tanh(x):   # lstm_unit_layer.cpp's tanh
    return 2. * sigmoid(2. * x) - 1.


def np_lstm_unit_forward(C_prev, X, cont):
    """LSTMUnitLayer::Forward_cpu, loop for loop: (1, N, H), (1, N, 4H), (1, N) -> C, H."""
    num, hidden_dim = C_prev.shape[1], C_prev.shape[2]
    C, Hd = np.zeros_like(C_prev), np.zeros_like(C_prev)
    for n in range(num):
        for d in range(hidden_dim):
            x = X[0, n]
            i = sigmoid(x[d])
            f = 0 if cont[0, n] == 0 else cont[0, n] * sigmoid(x[1 * hidden_dim + d])
            o = sigmoid(x[2 * hidden_dim + d])
            g = tanh(x[3 * hidden_dim + d])
            c = f * C_prev[0, n, d] + i * g
            C[0, n, d] = c
            Hd[0, n, d] = o * tanh(c)
    return C, Hd


def np_lstm_unit_backward(C_prev, X, cont, C, C_diff, H_diff):
    """LSTMUnitLayer::Backward_cpu, loop for loop: -> C_prev_diff, X_diff."""
    num, hidden_dim = C_prev.shape[1], C_prev.shape[2]
    C_prev_diff, X_diff = np.zeros_like(C_prev), np.zeros_like(X)
    for n in range(num):
        for d in range(hidden_dim):
            x = X[0, n]
            i = sigmoid(x[d])
            f = 0 if cont[0, n] == 0 else cont[0, n] * sigmoid(x[1 * hidden_dim + d])
            o = sigmoid(x[2 * hidden_dim + d])
            g = tanh(x[3 * hidden_dim + d])
            c_prev, c = C_prev[0, n, d], C[0, n, d]
            tanh_c = tanh(c)
            c_term_diff = C_diff[0, n, d] + H_diff[0, n, d] * o * (1 - tanh_c * tanh_c)
            C_prev_diff[0, n, d] = c_term_diff * f
            X_diff[0, n, d] = c_term_diff * g * i * (1 - i)
            X_diff[0, n, hidden_dim + d] = c_term_diff * c_prev * f * (1 - f)
            X_diff[0, n, 2 * hidden_dim + d] = H_diff[0, n, d] * tanh_c * o * (1 - o)
            X_diff[0, n, 3 * hidden_dim + d] = c_term_diff * i * (1 - g * g)
    return C_prev_diff, X_diff


def ip(x, w, b=None):
    """InnerProduct on flattened rows."""
    y = x @ w.T
    return y if b is None else y + b


def np_lstm(x, cont, b, x_static=None, h_0=None, c_0=None):
    """lstm_layer.cpp's unrolled net: x_transform, W_xc_x_static (+ reshape), cont_slice / W_xc_x_slice, then per
    t: h_conted (Scale by cont_t), transform_t (W_hc), gate_input_t (Eltwise SUM), unit_t (LSTMUnit), h_concat."""
    T, N = cont.shape
    H = b["W_hc"].shape[1]
    W_xc_x = ip(x.reshape(T, N, -1), b["W_xc"], b["b_c"])
    if x_static is not None:
        W_xc_x_static = ip(x_static.reshape(N, -1), b["W_xc_static"]).reshape(1, N, 4 * H)
    h = np.zeros((1, N, H)) if h_0 is None else h_0
    c = np.zeros((1, N, H)) if c_0 is None else c_0
    hs = []
    for t in range(T):
        cont_t = cont[t:t + 1]
        h_conted = h * cont_t[:, :, None]
        gate_input = ip(h_conted, b["W_hc"]) + W_xc_x[t:t + 1]
        if x_static is not None:
            gate_input = gate_input + W_xc_x_static
        c, h = np_lstm_unit_forward(c, gate_input, cont_t)
        hs.append(h)
    return np.concatenate(hs, 0), h, c


def np_rnn(x, cont, b, x_static=None, h_0=None):
    """rnn_layer.cpp's unrolled net: per t h_conted, W_hh_h, h_input_sum, h_neuron (TanH), W_ho_h, o_neuron."""
    T, N = cont.shape
    H = b["W_hh"].shape[0]
    W_xh_x = ip(x.reshape(T, N, -1), b["W_xh"], b["b_h"])
    if x_static is not None:
        W_xh_x_static = ip(x_static.reshape(N, -1), b["W_xh_static"]).reshape(1, N, H)
    h = np.zeros((1, N, H)) if h_0 is None else h_0
    os_ = []
    for t in range(T):
        h_conted = h * cont[t:t + 1][:, :, None]
        h_neuron_input = ip(h_conted, b["W_hh"]) + W_xh_x[t:t + 1]
        if x_static is not None:
            h_neuron_input = h_neuron_input + W_xh_x_static
        h = np.tanh(h_neuron_input)
        os_.append(np.tanh(ip(h, b["W_ho"], b["b_o"])))
    return np.concatenate(os_, 0), h


# cont with a sequence start at t = 0 for both streams and a new one at t = 2 for stream 0
CONT = np.array([[0, 0], [1, 1], [0, 1], [1, 1]], dtype=np.float64)


def data(T=4, N=2, feat=(3, 2), static=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((T, N) + feat, generator=g, dtype=torch.float64) * 2 - 1
    xs = None if static is None else torch.rand((N,) + static, generator=g, dtype=torch.float64) * 2 - 1
    return x, xs


# ---- blobs -------------------------------------------------------------------------------------------------------

def test_lstm_blobs_in_the_unrolled_nets_order():
    layer = mk("LSTM", [(4, 2, 3, 2), (4, 2)], num_output=5)
    assert layer.blob_names == ["W_xc", "b_c", "W_hc"]
    assert [tuple(b.shape) for b in layer.caffe_blobs()] == [(20, 6), (20,), (20, 5)]
    static = mk("LSTM", [(4, 2, 3, 2), (4, 2), (2, 2, 3, 4)], num_output=5)
    assert static.blob_names == ["W_xc", "b_c", "W_xc_static", "W_hc"]
    assert [tuple(b.shape) for b in static.caffe_blobs()] == [(20, 6), (20,), (20, 24), (20, 5)]
    assert all(isinstance(b, torch.nn.Parameter) for b in static.caffe_blobs())


def test_rnn_blobs_in_the_unrolled_nets_order():
    layer = mk("RNN", [(4, 2, 3), (4, 2)], num_output=5)
    assert layer.blob_names == ["W_xh", "b_h", "W_hh", "W_ho", "b_o"]
    assert [tuple(b.shape) for b in layer.caffe_blobs()] == [(5, 3), (5,), (5, 5), (5, 5), (5,)]
    static = mk("RNN", [(4, 2, 3), (4, 2), (2, 7)], num_output=5)
    assert static.blob_names == ["W_xh", "b_h", "W_xh_static", "W_hh", "W_ho", "b_o"]
    assert [tuple(b.shape) for b in static.caffe_blobs()] == [(5, 3), (5,), (5, 7), (5, 5), (5, 5), (5,)]


def test_fillers_weights_and_biases_and_caffes_default_constant_zero():
    layer = mk("LSTM", [(3, 2, 4), (3, 2), (2, 3)], num_output=8,
               fillers='weight_filler { type: "uniform" min: -0.08 max: 0.08 } '
                       'bias_filler { type: "constant" value: 0.5 }')
    for name in ("W_xc", "W_xc_static", "W_hc"):
        w = getattr(layer, name).detach()
        assert w.abs().max() <= 0.08 and w.std() > 0.02 and len(torch.unique(w)) == w.numel()
    assert torch.all(layer.b_c == 0.5)
    bare = mk("RNN", [(3, 2, 4), (3, 2)], fillers="")
    assert all(torch.all(b == 0) for b in bare.caffe_blobs())


# ---- forward against the ports -----------------------------------------------------------------------------------

@pytest.mark.parametrize("static", [None, (2, 3)])
def test_lstm_forward_matches_caffes_unrolled_net(static):
    x, xs = data(static=static)
    shapes = [x.shape, (4, 2)] + ([xs.shape] if static else [])
    layer = mk("LSTM", shapes)
    cont = torch.from_numpy(CONT)
    h = layer(x, cont, *([xs] if static else []))
    want, _, _ = np_lstm(x.numpy(), CONT, blobs(layer), None if xs is None else xs.numpy())
    assert h.shape == (4, 2, 3)
    np.testing.assert_allclose(h.detach().numpy(), want, rtol=1e-12, atol=1e-13)


def test_lstm_cont_zero_mid_sequence_restarts_the_stream():
    """Stream 0 restarts at t = 2: its outputs from t = 2 on are those of the sequence x[2:] run from zeros."""
    x, _ = data()
    layer = mk("LSTM", [x.shape, (4, 2)])
    h = layer(x, torch.from_numpy(CONT)).detach().numpy()
    fresh, _, _ = np_lstm(x.numpy()[2:], np.array([[0, 0], [1, 1]], dtype=np.float64), blobs(layer))
    np.testing.assert_allclose(h[2:, 0], fresh[:, 0], rtol=1e-12, atol=1e-13)
    cont_on = CONT.copy()
    cont_on[2, 0] = 1   # without the restart stream 0 differs from t = 2, stream 1 not at all
    h_on = layer(x, torch.from_numpy(cont_on)).detach().numpy()
    assert np.abs(h_on[2:, 0] - h[2:, 0]).min() > 1e-6
    np.testing.assert_array_equal(h_on[:, 1], h[:, 1])


@pytest.mark.parametrize("static", [None, (5,)])
def test_rnn_forward_matches_caffes_unrolled_net_and_tops_o(static):
    x, xs = data(feat=(3,), static=static)
    shapes = [x.shape, (4, 2)] + ([xs.shape] if static else [])
    layer = mk("RNN", shapes, num_output=4)
    o = layer(x, torch.from_numpy(CONT), *([xs] if static else []))
    want, h_T = np_rnn(x.numpy(), CONT, blobs(layer), None if xs is None else xs.numpy())
    np.testing.assert_allclose(o.detach().numpy(), want, rtol=1e-12, atol=1e-13)
    assert o.shape == (4, 2, 4) and not np.allclose(want[-1], h_T[0])   # the top is o, not h


def test_lstm_expose_hidden_takes_h0_c0_and_gives_hT_cT_as_data():
    x, xs = data(static=(4,))
    g = torch.Generator().manual_seed(3)
    h_0, c_0 = (torch.randn(1, 2, 3, generator=g, dtype=torch.float64) for _ in range(2))
    layer = mk("LSTM", [x.shape, (4, 2), xs.shape, (1, 2, 3), (1, 2, 3)], extra="expose_hidden: true",
               tops=["h", "h_T", "c_T"])
    cont = np.ones((4, 2))
    cont[2, 1] = 0
    x.requires_grad_(True)
    h_0.requires_grad_(True)
    h, h_T, c_T = layer(x, torch.from_numpy(cont), xs, h_0, c_0)
    want_h, want_hT, want_cT = np_lstm(x.detach().numpy(), cont, blobs(layer), xs.numpy(), h_0.detach().numpy(),
                                       c_0.numpy())
    np.testing.assert_allclose(h.detach().numpy(), want_h, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(h_T.numpy(), want_hT, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(c_T.numpy(), want_cT, rtol=1e-12, atol=1e-13)
    np.testing.assert_array_equal(h_T.numpy()[0], h.detach().numpy()[-1])
    # Caffe shares only the data of h_0/c_0 and h_T/c_T: no gradient through them
    assert not h_T.requires_grad and not c_T.requires_grad
    h.sum().backward()
    assert h_0.grad is None and x.grad is not None and x.grad.abs().sum() > 0
    # no state carries over in expose_hidden mode: the same call gives the same result
    again = layer(x, torch.from_numpy(cont), xs, h_0, c_0)[0]
    torch.testing.assert_close(again, h, rtol=0, atol=0)


def test_rnn_expose_hidden():
    x, _ = data(feat=(2,))
    h_0 = torch.randn(1, 2, 3, dtype=torch.float64)
    layer = mk("RNN", [x.shape, (4, 2), (1, 2, 3)], extra="expose_hidden: true", tops=["o", "h_T"])
    o, h_T = layer(x, torch.from_numpy(CONT[[1, 1, 2, 3]]), h_0)
    want_o, want_h = np_rnn(x.numpy(), CONT[[1, 1, 2, 3]], blobs(layer), None, h_0.numpy())
    np.testing.assert_allclose(o.detach().numpy(), want_o, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(h_T.numpy(), want_h, rtol=1e-12, atol=1e-13)
    assert layer.infer_top_shapes([x.shape, (4, 2), (1, 2, 3)]) == [(4, 2, 3), (1, 2, 3)]


def test_state_carries_between_passes_like_caffes_test_forward():
    """Caffe's LSTMLayerTest.TestForward: a sequence in one pass of T = 3 equals three passes of T = 1 with the
    same weights; with cont 0 at every step the later steps differ."""
    x, _ = data(T=3, N=3)
    full = mk("LSTM", [x.shape, (3, 3)], num_output=7)
    cont = torch.tensor([[0.0] * 3, [1.0] * 3, [1.0] * 3], dtype=torch.float64)
    want = full(x, cont).detach()
    step = mk("LSTM", [(1, 3, 3, 2), (1, 3)], num_output=7)
    step.load_state_dict(full.state_dict())
    for t in range(3):
        got = step(x[t:t + 1], cont[t:t + 1]).detach()
        torch.testing.assert_close(got[0], want[t], rtol=1e-12, atol=1e-13)
    step.reset()
    for t in range(3):
        got = step(x[t:t + 1], torch.zeros(1, 3, dtype=torch.float64)).detach()
        if t == 0:
            torch.testing.assert_close(got[0], want[0], rtol=1e-12, atol=1e-13)
        else:
            assert (got[0] - want[t]).abs().min() > 1e-9
    # the carried state, as Caffe copies h_T/c_T into h_0/c_0: a second pass continues the first
    rnn = mk("RNN", [(2, 2, 3), (2, 2)], num_output=4)
    x, _ = data(T=2, feat=(3,))
    ones = np.ones((2, 2))
    o1 = rnn(x, torch.from_numpy(ones)).detach().numpy()
    o2 = rnn(x, torch.from_numpy(ones)).detach().numpy()
    want1, h1 = np_rnn(x.numpy(), ones, blobs(rnn))
    want2, _ = np_rnn(x.numpy(), ones, blobs(rnn), None, h1)
    np.testing.assert_allclose(o1, want1, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(o2, want2, rtol=1e-12, atol=1e-13)
    # a new batch size N starts from zeros again (Caffe's reshaped blobs hold no meaningful state)
    x3, _ = data(T=2, N=3, feat=(3,))
    o3 = rnn(x3, torch.ones(2, 3, dtype=torch.float64)).detach().numpy()
    np.testing.assert_allclose(o3, np_rnn(x3.numpy(), np.ones((2, 3)), blobs(rnn))[0], rtol=1e-12, atol=1e-13)
    rnn.reset()
    np.testing.assert_allclose(rnn(x, torch.from_numpy(ones)).detach().numpy(), want1, rtol=1e-12, atol=1e-13)


# ---- gradients ---------------------------------------------------------------------------------------------------

def gradcheck_layer(layer, bottoms, wrt):
    """float64 gradcheck with respect to every blob and the bottoms at indices `wrt`."""
    names = layer.blob_names
    params = [b.detach().clone().requires_grad_(True) for b in layer.caffe_blobs()]
    inputs = [bottoms[i].detach().clone().requires_grad_(True) for i in wrt]

    def fn(*args):
        bs = list(bottoms)
        for i, a in zip(wrt, args[len(names):]):
            bs[i] = a
        return functional_call(layer, dict(zip(names, args[:len(names)])), tuple(bs))

    assert torch.autograd.gradcheck(fn, (*params, *inputs), eps=1e-6, atol=1e-6)


def test_lstm_gradcheck_with_static_input_and_a_restart():
    x, xs = data(T=3, feat=(2,), static=(3,))
    layer = mk("LSTM", [x.shape, (3, 2), xs.shape])
    cont = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]], dtype=torch.float64)   # t = 0 restarts: no carry
    gradcheck_layer(layer, [x, cont, xs], wrt=[0, 2])


def test_rnn_gradcheck_with_static_input_and_expose_hidden():
    x, xs = data(T=3, feat=(2,), static=(3,))
    h_0 = torch.randn(1, 2, 3, dtype=torch.float64)
    layer = mk("RNN", [x.shape, (3, 2), xs.shape, (1, 2, 3)], extra="expose_hidden: true", tops=["o", "h_T"])
    cont = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]], dtype=torch.float64)
    gradcheck_layer(layer, [x, cont, xs, h_0], wrt=[0, 2])


def test_lstm_gradient_equals_caffes_backward_through_the_units():
    """Back-propagating through the unrolled net with LSTMUnit's Backward_cpu (ported) and the linear layers
    gives autograd's gradient for x (binary cont, one restart mid-sequence)."""
    x, _ = data(feat=(2,))
    layer = mk("LSTM", [x.shape, (4, 2)])
    b = blobs(layer)
    xt = x.clone().requires_grad_(True)
    h = layer(xt, torch.from_numpy(CONT))
    g = torch.randn(h.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    (h * g).sum().backward()
    # forward, keeping each unit's inputs
    T, N, H = 4, 2, 3
    W_xc_x = ip(x.numpy().reshape(T, N, -1), b["W_xc"], b["b_c"])
    hs, cs, gates = [np.zeros((1, N, H))], [np.zeros((1, N, H))], []
    for t in range(T):
        gi = ip(hs[-1] * CONT[t:t + 1, :, None], b["W_hc"]) + W_xc_x[t:t + 1]
        c, hh = np_lstm_unit_forward(cs[-1], gi, CONT[t:t + 1])
        gates.append(gi)
        cs.append(c)
        hs.append(hh)
    # backward, t = T..1
    h_diff, c_diff = np.zeros((1, N, H)), np.zeros((1, N, H))
    x_diff = np.zeros((T, N, b["W_xc"].shape[1]))
    for t in reversed(range(T)):
        h_diff = h_diff + g.numpy()[t:t + 1]
        c_prev_diff, gate_diff = np_lstm_unit_backward(cs[t], gates[t], CONT[t:t + 1], cs[t + 1], c_diff, h_diff)
        x_diff[t] = gate_diff[0] @ b["W_xc"]
        h_diff = (gate_diff @ b["W_hc"]) * CONT[t:t + 1, :, None]
        c_diff = c_prev_diff
    np.testing.assert_allclose(xt.grad.numpy().reshape(x_diff.shape), x_diff, rtol=1e-10, atol=1e-12)


# ---- LSTMUnit ----------------------------------------------------------------------------------------------------

def unit_inputs(N=3, H=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    c_prev = torch.rand(1, N, H, generator=g, dtype=torch.float64) * 2 - 1
    X = torch.rand(1, N, 4 * H, generator=g, dtype=torch.float64) * 2 - 1
    return c_prev, X


def mk_unit(N=3, H=4):
    return make_layer('name: "unit" type: "LSTMUnit" bottom: "c_prev" bottom: "x" bottom: "cont" top: "c" top: "h"',
                      [(1, N, H), (1, N, 4 * H), (1, N)])


def test_lstm_unit_forward_and_backward_match_caffe():
    unit = mk_unit()
    c_prev, X = unit_inputs()
    cont = torch.tensor([[1.0, 0.0, 1.0]], dtype=torch.float64, requires_grad=True)   # Caffe's NonZeroCont case
    c_prev.requires_grad_(True)
    X.requires_grad_(True)
    c, h = unit(c_prev, X, cont)
    want_c, want_h = np_lstm_unit_forward(c_prev.detach().numpy(), X.detach().numpy(), cont.detach().numpy())
    np.testing.assert_allclose(c.detach().numpy(), want_c, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(h.detach().numpy(), want_h, rtol=1e-12, atol=1e-14)
    g = torch.Generator().manual_seed(1)
    dc = torch.randn(c.shape, generator=g, dtype=torch.float64)
    dh = torch.randn(h.shape, generator=g, dtype=torch.float64)
    (c * dc + h * dh).sum().backward()
    want_dc, want_dx = np_lstm_unit_backward(c_prev.detach().numpy(), X.detach().numpy(), cont.detach().numpy(),
                                             want_c, dc.numpy(), dh.numpy())
    np.testing.assert_allclose(c_prev.grad.numpy(), want_dc, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(X.grad.numpy(), want_dx, rtol=1e-12, atol=1e-14)
    assert cont.grad is None   # Caffe: "Cannot backpropagate to sequence indicators."
    assert not np.any(want_dc[0, 1]) and not np.any(want_dx[0, 1, 4:8])   # cont 0: no gradient to c_prev, f


def test_lstm_unit_gradcheck_and_non_binary_cont():
    unit = mk_unit()
    c_prev, X = unit_inputs(seed=2)
    for cont in ([[1.0, 0.0, 1.0]], [[0.5, 0.25, 1.0]]):
        cont = torch.tensor(cont, dtype=torch.float64)
        assert torch.autograd.gradcheck(lambda c, x: unit(c, x, cont), (c_prev.clone().requires_grad_(True),
                                        X.clone().requires_grad_(True)), eps=1e-6, atol=1e-7)
    # for cont = 0.5 Caffe's backward takes f (1 - f) with f = cont * sigmoid(f'): not the derivative (documented)
    X.requires_grad_(True)
    c, _ = unit(c_prev, X, cont)
    c.sum().backward()
    _, caffe_dx = np_lstm_unit_backward(c_prev.numpy(), X.detach().numpy(), cont.numpy(), c.detach().numpy(),
                                        np.ones(c.shape), np.zeros(c.shape))
    assert not np.allclose(X.grad.numpy()[0, 0, 4:8], caffe_dx[0, 0, 4:8])
    np.testing.assert_allclose(X.grad.numpy()[0, 2], caffe_dx[0, 2], rtol=1e-12)   # cont 1: the same


def test_lstm_unit_shape_errors():
    assert mk_unit(2, 5).infer_top_shapes([(1, 2, 5), (1, 2, 20), (1, 2)]) == [(1, 2, 5), (1, 2, 5)]
    head = 'name: "unit" type: "LSTMUnit" bottom: "c_prev" bottom: "x" bottom: "cont" top: "c" top: "h" '
    with pytest.raises(NetError, match=r"layer 'unit'.*bottom gates \(1, 2, 12\) must have 4 \* H = 20"):
        make_layer(head, [(1, 2, 5), (1, 2, 12), (1, 2)])
    with pytest.raises(NetError, match=r"bottom c_prev must have 3 axes with the first 1 \(one timestep\), got "
                                       r"shape \(2, 2, 5\)"):
        make_layer(head, [(2, 2, 5), (2, 2, 20), (2, 2)])
    with pytest.raises(NetError, match=r"bottom cont must have 2 axes"):
        make_layer(head, [(1, 2, 5), (1, 2, 20), (1, 2, 1)])
    with pytest.raises(NetError, match=r"must have the same N"):
        make_layer(head, [(1, 2, 5), (1, 3, 20), (1, 2)])
    with pytest.raises(NetError, match=r"takes 2 top"):
        make_layer(head.replace(' top: "h"', ""), [(1, 2, 5), (1, 2, 20), (1, 2)])


# ---- user errors -------------------------------------------------------------------------------------------------

def test_recurrent_shape_and_param_errors():
    with pytest.raises(NetError, match=r"layer 'rec'.*bottom cont has shape \(3, 2\) but x \(4, 2, 5\) has T = 4 "
                                       r"timesteps of N = 2 streams"):
        mk("LSTM", [(4, 2, 5), (3, 2)])
    with pytest.raises(NetError, match=r"bottom cont has shape \(4, 3\)"):
        mk("RNN", [(4, 2, 5), (4, 3)])
    with pytest.raises(NetError, match=r"bottom cont must have exactly 2 axes \(T timesteps, N streams\), got "
                                       r"shape \(4, 2, 1\)"):
        mk("LSTM", [(4, 2, 5), (4, 2, 1)])
    with pytest.raises(NetError, match=r"bottom x must have at least 3 axes"):
        mk("LSTM", [(4, 2), (4, 2)])
    with pytest.raises(NetError, match=r"bottom x_static must have shape \(N = 2, \.\.\.\) like x \(4, 2, 5\), "
                                       r"got \(3, 6\)"):
        mk("LSTM", [(4, 2, 5), (4, 2), (3, 6)])
    with pytest.raises(NetError, match=r"recurrent_param.num_output must be positive, got 0"):
        mk("LSTM", [(4, 2, 5), (4, 2)], num_output=0)
    with pytest.raises(NetError, match=r"takes 2 to 3 bottoms \(x, cont, \[x_static\]\), got 4"):
        mk("RNN", [(4, 2, 5), (4, 2), (2, 3), (1, 2, 3)])
    with pytest.raises(NetError, match=r"takes 4 to 5 bottoms \(x, cont, \[x_static\], h_0, c_0 \(expose_hidden\)\), "
                                       r"got 3"):
        mk("LSTM", [(4, 2, 5), (4, 2), (2, 3)], extra="expose_hidden: true", tops=["h", "h_T", "c_T"])
    with pytest.raises(NetError, match=r"takes 3 top\(s\) \(h, h_T, c_T\), got 1"):
        mk("LSTM", [(4, 2, 5), (4, 2), (1, 2, 3), (1, 2, 3)], extra="expose_hidden: true")
    with pytest.raises(NetError, match=r"takes 1 top\(s\) \(o\), got 2"):
        mk("RNN", [(4, 2, 5), (4, 2)], tops=["o", "h_T"])
    with pytest.raises(NetError, match=r"bottom h_0 must have shape \(1, 2, 3\) \(1, N, num_output\), got \(1, 2, 4\)"):
        mk("LSTM", [(4, 2, 5), (4, 2), (1, 2, 4), (1, 2, 3)], extra="expose_hidden: true", tops=["h", "h_T", "c_T"])
    with pytest.raises(NetError, match=r"unknown param 'num_ouput' in recurrent_param \(did you mean num_output\?\)"):
        make_layer('type: "LSTM" bottom: "x" bottom: "cont" top: "h" recurrent_param { num_ouput: 3 }',
                   [(4, 2, 5), (4, 2)])


def test_forward_refuses_a_changed_number_of_timesteps_and_features():
    layer = mk("LSTM", [(4, 2, 5), (4, 2)])
    with pytest.raises(NetError, match=r"input number of timesteps changed: the layer was built for T = 4, bottom x "
                                       r"has shape \(3, 2, 5\)"):
        layer(torch.zeros(3, 2, 5, dtype=torch.float64), torch.zeros(3, 2, dtype=torch.float64))
    with pytest.raises(NetError, match=r"has 6 features per step, but the weights expect 5"):
        layer(torch.zeros(4, 2, 6, dtype=torch.float64), torch.zeros(4, 2, dtype=torch.float64))
    with pytest.raises(NetError, match=r"bottom cont has shape \(4, 3\)"):
        layer(torch.zeros(4, 2, 5, dtype=torch.float64), torch.zeros(4, 3, dtype=torch.float64))


# ---- in a net ----------------------------------------------------------------------------------------------------

# Delayed copy: y_t = x_{t-1}. Sequences of T = 6 begin at t = 0 (cont 0 there); the LSTM's h_2..h_6 predict
# x_1..x_5 through an InnerProduct on axis 2. Data from DummyData, cut and joined by Slice and Concat.
COPY_NET = """
name: "delayed_copy"
layer { name: "x" type: "DummyData" top: "x"
        dummy_data_param { shape { dim: 6 dim: 16 dim: 1 } data_filler { type: "gaussian" std: 1 } } }
layer { name: "cont_start" type: "DummyData" top: "cont_start" dummy_data_param { shape { dim: 1 dim: 16 } } }
layer { name: "cont_rest" type: "DummyData" top: "cont_rest"
        dummy_data_param { shape { dim: 5 dim: 16 } data_filler { type: "constant" value: 1 } } }
layer { name: "cont" type: "Concat" bottom: "cont_start" bottom: "cont_rest" top: "cont" concat_param { axis: 0 } }
layer { name: "lstm1" type: "LSTM" bottom: "x" bottom: "cont" top: "lstm1"
        recurrent_param { num_output: 8
                          weight_filler { type: "uniform" min: -0.08 max: 0.08 }
                          bias_filler { type: "constant" value: 0 } } }
layer { name: "split_h" type: "Slice" bottom: "lstm1" top: "h_first" top: "h_rest"
        slice_param { axis: 0 slice_point: 1 } }
layer { name: "split_x" type: "Slice" bottom: "x" top: "target" top: "x_last" slice_param { axis: 0 slice_point: 5 } }
layer { name: "silence" type: "Silence" bottom: "h_first" bottom: "x_last" }
layer { name: "predict" type: "InnerProduct" bottom: "h_rest" top: "predict"
        inner_product_param { num_output: 1 axis: 2 weight_filler { type: "uniform" min: -0.08 max: 0.08 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "predict" bottom: "target" top: "loss" }
"""


def test_prototxt_lstm_learns_a_delayed_copy_with_the_solver(tmp_path):
    (tmp_path / "net.prototxt").write_text(COPY_NET)
    torch.manual_seed(0)
    solver = Solver(f'net: "{tmp_path / "net.prototxt"}"\nbase_lr: 0.02\nlr_policy: "fixed"\ntype: "Adam"\n'
                    f"max_iter: 150\nclip_gradients: 10\nsnapshot_after_train: false\n", device="cpu")
    lstm = solver.train_net.layers["lstm1"]
    assert lstm.blob_names == ["W_xc", "b_c", "W_hc"]
    losses = solver.step(150)
    first, last = np.mean(losses[:10]), np.mean(losses[-10:])
    assert last < 0.1 * first, (first, last)   # ~7 (predicting 0) -> ~0.15
    # the weights file holds Caffe's blob indices for the layer
    save_weights(solver.train_net, tmp_path / "w.h5")
    with h5py.File(tmp_path / "w.h5") as f:
        assert sorted(f["data/lstm1"]) == ["0", "1", "2"]
        assert [f[f"data/lstm1/{i}"].shape for i in range(3)] == [(32, 1), (32,), (32, 8)]


def test_net_infers_shapes_and_runs_with_static_input_and_expose_hidden():
    net = Net("""
        input: "x" input_shape { dim: 3 dim: 2 dim: 4 }
        input: "cont" input_shape { dim: 3 dim: 2 }
        input: "img" input_shape { dim: 2 dim: 5 }
        input: "h0" input_shape { dim: 1 dim: 2 dim: 6 }
        input: "c0" input_shape { dim: 1 dim: 2 dim: 6 }
        layer { name: "lstm" type: "LSTM" bottom: "x" bottom: "cont" bottom: "img" bottom: "h0" bottom: "c0"
                top: "h" top: "hT" top: "cT"
                recurrent_param { num_output: 6 expose_hidden: true weight_filler { type: "xavier" } } }
    """, phase="TEST", device="cpu")
    assert net.blob_shapes["h"] == (3, 2, 6) and net.blob_shapes["hT"] == (1, 2, 6) == net.blob_shapes["cT"]
    assert [tuple(p.shape) for p in net.params["lstm"]] == [(24, 4), (24,), (24, 5), (24, 6)]
    out = net.forward(x=torch.randn(3, 2, 4), cont=torch.ones(3, 2), img=torch.randn(2, 5),
                      h0=torch.zeros(1, 2, 6), c0=torch.zeros(1, 2, 6))
    torch.testing.assert_close(out["hT"][0], out["h"][-1])
