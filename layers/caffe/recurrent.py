"""Caffe's recurrent layers: RNN, LSTM (recurrent_layer.cpp, rnn_layer.cpp, lstm_layer.cpp) and LSTMUnit
(lstm_unit_layer.cpp).

Caffe builds RNN and LSTM as an unrolled net of InnerProduct, Scale, Eltwise, TanH and LSTMUnit layers; here
a time loop in forward computes the same thing, and autograd gives the backward of that net. What the unrolled
net's wiring implies, and these layers keep:

- Blobs are the unrolled net's parameters in its order (a Caffe weights file's blob indices line up).
- cont_t (0 starts a sequence) multiplies h_{t-1} before W_hh / W_hc, and, in LSTMUnit, the forget gate.
  No gradient reaches cont (Caffe refuses to back-propagate to it).
- Without expose_hidden the state carries over between forward passes, as data only: h_0 (and c_0) of a pass
  is h_T (c_T) of the previous one (zeros at first, and again when the batch size N changes); the first cont
  of a new sequence being 0 is what resets it. `reset()` zeroes it (Caffe's Reset()).
- With expose_hidden, h_0 (c_0) come from bottoms and h_T (c_T) go to tops, again as data only: Caffe shares
  their data and not their diffs, so no gradient flows into h_0/c_0 or back from h_T/c_T.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from layers.base import FILLER, Layer, Param, Params
from layers.registry import register_layer

__all__ = ["RNN", "LSTM", "LSTMUnit"]

RECURRENT_PARAM = Params("recurrent_param", num_output=Param(int, 0), weight_filler=Param(FILLER),
                         bias_filler=Param(FILLER), debug_info=Param(bool, False),
                         expose_hidden=Param(bool, False))


def lstm_step(c_prev: torch.Tensor, gates: torch.Tensor, cont: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Caffe's LSTMUnit on (..., H) cells, (..., 4H) gate inputs (i, f, o, g) and cont broadcast to (..., 1):
    c = cont * sigmoid(f) * c_prev + sigmoid(i) * tanh(g), h = sigmoid(o) * tanh(c)."""
    i, f, o, g = gates.chunk(4, dim=-1)
    c = cont * torch.sigmoid(f) * c_prev + torch.sigmoid(i) * torch.tanh(g)
    return c, torch.sigmoid(o) * torch.tanh(c)


class _Recurrent(Layer):
    """Caffe's RecurrentLayer: bottoms, shapes, carried state. Subclasses set `states` ('h',) or ('h', 'c'),
    `gates` (rows of the input transforms per output) and `output` (the name of top 0), and define
    make_blobs(D, Ds) and run(x_proj, cont, states) -> (top 0, final states)."""

    params = RECURRENT_PARAM
    num_bottoms = (2, None)   # exact counts depend on expose_hidden: checked in setup
    num_tops = (1, None)
    states: tuple[str, ...] = ()
    gates = 1
    output = ""

    def setup(self, bottom_shapes):
        p = self.p
        k = len(self.states)
        names = ", ".join(f"{s}_0" for s in self.states)
        if p.expose_hidden:
            lo, what = 2 + k, f"x, cont, [x_static], {names} (expose_hidden)"
        else:
            lo, what = 2, "x, cont, [x_static]"
        if not lo <= len(bottom_shapes) <= lo + 1:
            raise self.error(f"takes {lo} to {lo + 1} bottoms ({what}), got {len(bottom_shapes)}")
        tops = 1 + k * p.expose_hidden
        if self.num_top_blobs != tops:
            finals = "".join(f", {s}_T" for s in self.states) * p.expose_hidden
            raise self.error(f"takes {tops} top(s) ({self.output}{finals}), got {self.num_top_blobs}")
        if p.num_output <= 0:
            raise self.error(f"recurrent_param.num_output must be positive, got {p.num_output}")
        self.static_input = len(bottom_shapes) == lo + 1
        self.T = None
        self.T, _, self.D, self.Ds = self._check(bottom_shapes)
        self.make_blobs(self.D, self.Ds)
        self._carried: tuple[torch.Tensor, ...] | None = None

    def _check(self, shapes) -> tuple[int, int, int, int]:
        """(T, N, D, Ds) from the bottom shapes, or a one-line error."""
        x, cont = tuple(shapes[0]), tuple(shapes[1])
        if len(x) < 3:
            raise self.error(f"bottom x must have at least 3 axes (T timesteps, N streams, features...), got "
                             f"shape {x}")
        T, N = x[0], x[1]
        if self.T is not None and T != self.T:
            raise self.error(f"input number of timesteps changed: the layer was built for T = {self.T}, bottom x "
                             f"has shape {x}")
        if len(cont) != 2:
            raise self.error(f"bottom cont must have exactly 2 axes (T timesteps, N streams), got shape {cont}")
        if cont != (T, N):
            raise self.error(f"bottom cont has shape {cont} but x {x} has T = {T} timesteps of N = {N} streams")
        D = math.prod(x[2:])
        if self.T is not None and D != self.D:
            raise self.error(f"bottom x {x} has {D} features per step, but the weights expect {self.D}")
        Ds = 0
        if self.static_input:
            s = tuple(shapes[2])
            if len(s) < 1 or s[0] != N:
                raise self.error(f"bottom x_static must have shape (N = {N}, ...) like x {x}, got {s}")
            Ds = math.prod(s[1:])
            if self.T is not None and Ds != self.Ds:
                raise self.error(f"bottom x_static {s} has {Ds} features, but the weights expect {self.Ds}")
        if self.p.expose_hidden:
            want = (1, N, self.p.num_output)
            for j, name in enumerate(self.states):
                got = tuple(shapes[2 + self.static_input + j])
                if got != want:
                    raise self.error(f"bottom {name}_0 must have shape {want} (1, N, num_output), got {got}")
        return T, N, D, Ds

    def infer_top_shapes(self, bottom_shapes):
        T, N, _, _ = self._check([tuple(s) for s in bottom_shapes])
        H = self.p.num_output
        return [(T, N, H)] + [(1, N, H)] * (len(self.states) * self.p.expose_hidden)

    def reset(self) -> None:
        """Zero the state carried between forward passes (Caffe's RecurrentLayer::Reset)."""
        self._carried = None

    def forward(self, x, cont, *rest):
        T, N, _, _ = self._check([x.shape, cont.shape] + [r.shape for r in rest])
        H = self.p.num_output
        w, b = self.caffe_blobs()[:2]
        x_proj = F.linear(x.reshape(T, N, self.D), w, b)           # x_transform: W_x x_t + b, every t at once
        if self.static_input:                                       # + W_x_static x_static, every t
            x_proj = x_proj + F.linear(rest[0].reshape(N, self.Ds), self.caffe_blobs()[2]).unsqueeze(0)
        cont = cont.detach().to(x_proj.dtype).unsqueeze(-1)         # (T, N, 1)
        if self.p.expose_hidden:
            states = [s.detach().to(x_proj.dtype)[0] for s in rest[self.static_input:]]
        elif self._carried is not None and self._carried[0].shape == (N, H):
            states = [s.to(device=x_proj.device, dtype=x_proj.dtype) for s in self._carried]
        else:
            states = [x_proj.new_zeros(N, H) for _ in self.states]
        top, finals = self.run(x_proj, cont, states)
        finals = tuple(s.detach() for s in finals)
        if self.p.expose_hidden:
            return (top, *(s.unsqueeze(0) for s in finals))
        self._carried = finals
        return top


@register_layer("RNN")
class RNN(_Recurrent):
    """Caffe's RNN (Elman): for t = 1..T
        h_t = tanh(W_hh (cont_t * h_{t-1}) + W_xh x_t + b_h [+ W_xh_static x_static]),
        o_t = tanh(W_ho h_t + b_o).
    The top is o (Caffe's output blob), not h; h_T is a top only with expose_hidden.

    Bottoms: x (T, N, ...) with D = prod(shape[2:]) features, cont (T, N), optional x_static (N, ...) with
    Ds = prod(shape[1:]); with expose_hidden also h_0 (1, N, H) after them.
    Tops: o (T, N, H); with expose_hidden also h_T (1, N, H).
    Params (recurrent_param): num_output H (must be > 0), weight_filler / bias_filler (default constant 0),
    debug_info = false (accepted; Caffe's log of the unrolled net is not printed), expose_hidden = false.
    Blobs (the unrolled net's order): W_xh (H, D), b_h (H), W_xh_static (H, Ds) with x_static, W_hh (H, H),
    W_ho (H, H), b_o (H).
    State: see the module docstring (carried between passes as data; no gradient through h_0, h_T, cont).

    Examples::

        >>> import torch
        >>> from layers.build import make_layer
        >>> rnn = make_layer('type: "RNN" bottom: "x" bottom: "cont" top: "o" recurrent_param { num_output: 3 '
        ...                  'weight_filler { type: "uniform" min: -0.08 max: 0.08 } }',
        ...                  bottom_shapes=[(4, 2, 5), (4, 2)])
        >>> [tuple(b.shape) for b in rnn.caffe_blobs()], rnn.blob_names
        ([(3, 5), (3,), (3, 3), (3, 3), (3,)], ['W_xh', 'b_h', 'W_hh', 'W_ho', 'b_o'])
        >>> tuple(rnn(torch.randn(4, 2, 5), torch.ones(4, 2)).shape)
        (4, 2, 3)
    """
    states = ("h",)
    gates = 1
    output = "o"

    def make_blobs(self, D, Ds):
        H, wf, bf = self.p.num_output, self.p.weight_filler, self.p.bias_filler
        self.add_blob("W_xh", (H, D), wf)
        self.add_blob("b_h", (H,), bf)
        if self.static_input:
            self.add_blob("W_xh_static", (H, Ds), wf)
        self.add_blob("W_hh", (H, H), wf)
        self.add_blob("W_ho", (H, H), wf)
        self.add_blob("b_o", (H,), bf)

    def run(self, x_proj, cont, states):
        (h,) = states
        hs = []
        for t in range(x_proj.shape[0]):
            h = torch.tanh(F.linear(cont[t] * h, self.W_hh) + x_proj[t])
            hs.append(h)
        return torch.tanh(F.linear(torch.stack(hs), self.W_ho, self.b_o)), (h,)


@register_layer("LSTM")
class LSTM(_Recurrent):
    """Caffe's LSTM: for t = 1..T, with gate inputs in Caffe's order (i, f, o, g), each H wide,
        [i', f', o', g'] = W_hc (cont_t * h_{t-1}) + W_xc x_t + b_c [+ W_xc_static x_static],
        c_t = cont_t * sigmoid(f') * c_{t-1} + sigmoid(i') * tanh(g'),   h_t = sigmoid(o') * tanh(c_t)
    (the second line is LSTMUnit). The top is h (all steps).

    Bottoms: x (T, N, ...) with D = prod(shape[2:]) features, cont (T, N), optional x_static (N, ...) with
    Ds = prod(shape[1:]); with expose_hidden also h_0 (1, N, H) and c_0 (1, N, H), in that order, after them.
    Tops: h (T, N, H); with expose_hidden also h_T (1, N, H) and c_T (1, N, H).
    Params (recurrent_param): num_output H (must be > 0), weight_filler / bias_filler (default constant 0),
    debug_info = false (accepted; Caffe's log of the unrolled net is not printed), expose_hidden = false.
    Blobs (the unrolled net's order): W_xc (4H, D), b_c (4H), W_xc_static (4H, Ds) with x_static, W_hc (4H, H).
    State: see the module docstring (carried between passes as data; no gradient through h_0, c_0, h_T, c_T,
    cont). For cont other than 0 or 1, the gradient is that of the forward above; Caffe's LSTMUnit backward
    uses f (1 - f) with f = cont * sigmoid(f'), which is the derivative only for cont in {0, 1}.
    """
    states = ("h", "c")
    gates = 4
    output = "h"

    def make_blobs(self, D, Ds):
        H, wf, bf = self.p.num_output, self.p.weight_filler, self.p.bias_filler
        self.add_blob("W_xc", (4 * H, D), wf)
        self.add_blob("b_c", (4 * H,), bf)
        if self.static_input:
            self.add_blob("W_xc_static", (4 * H, Ds), wf)
        self.add_blob("W_hc", (4 * H, H), wf)

    def run(self, x_proj, cont, states):
        h, c = states
        hs = []
        for t in range(x_proj.shape[0]):
            c, h = lstm_step(c, F.linear(cont[t] * h, self.W_hc) + x_proj[t], cont[t])
            hs.append(h)
        return torch.stack(hs), (h, c)


@register_layer("LSTMUnit")
class LSTMUnit(Layer):
    """One LSTM step (Caffe's LSTMUnit), gate inputs in the order (i, f, o, g), each H wide:
        c_t = cont_t * sigmoid(f') * c_{t-1} + sigmoid(i') * tanh(g'),   h_t = sigmoid(o') * tanh(c_t).

    Bottoms: c_prev (1, N, H), gates (1, N, 4H), cont (1, N).  Tops: c (1, N, H), h (1, N, H).
    Params: none. No gradient reaches cont (Caffe refuses to back-propagate to it). For cont in {0, 1} the
    gradient equals Caffe's Backward_cpu; for other cont Caffe's backward uses f (1 - f) with
    f = cont * sigmoid(f'), which is not the derivative of its forward, and this layer gives the derivative.

    Examples::

        >>> import torch
        >>> from layers.build import make_layer
        >>> unit = make_layer('type: "LSTMUnit" bottom: "c_prev" bottom: "gates" bottom: "cont" top: "c" top: "h"',
        ...                   bottom_shapes=[(1, 2, 1), (1, 2, 4), (1, 2)])
        >>> c, h = unit(torch.ones(1, 2, 1), torch.zeros(1, 2, 4), torch.tensor([[1.0, 0.0]]))
        >>> c.flatten().tolist()   # i = f = o = 1/2, g = 0: c = cont / 2 * c_prev
        [0.5, 0.0]
        >>> [round(v, 6) for v in h.flatten().tolist()]   # h = tanh(c) / 2
        [0.231059, 0.0]
    """
    num_bottoms = 3
    num_tops = 2

    def setup(self, bottom_shapes):
        self._check(bottom_shapes)

    def _check(self, shapes):
        c, g, cont = (tuple(s) for s in shapes)
        for name, s, axes in (("c_prev", c, 3), ("gates", g, 3), ("cont", cont, 2)):
            if len(s) != axes or s[0] != 1:
                raise self.error(f"bottom {name} must have {axes} axes with the first 1 (one timestep), got "
                                 f"shape {s}")
        if not c[1] == g[1] == cont[1]:
            raise self.error(f"bottoms c_prev {c}, gates {g} and cont {cont} must have the same N (axis 1)")
        if g[2] != 4 * c[2]:
            raise self.error(f"bottom gates {g} must have 4 * H = {4 * c[2]} values per stream (c_prev {c} has "
                             f"H = {c[2]})")

    def infer_top_shapes(self, bottom_shapes):
        self._check(bottom_shapes)
        return [tuple(bottom_shapes[0])] * 2

    def forward(self, c_prev, gates, cont):
        self._check([c_prev.shape, gates.shape, cont.shape])
        return lstm_step(c_prev, gates, cont.detach().to(gates.dtype).unsqueeze(-1))
