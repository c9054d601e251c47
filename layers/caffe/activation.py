"""Caffe's element-wise (neuron) layers and Softmax: ReLU, PReLU, Sigmoid, TanH, AbsVal, Power, Exp, Log,
Dropout, Softmax, BNLL, Clip, ELU, Swish, Threshold. Every one keeps the bottom's shape."""

from __future__ import annotations

import math

import torch

from layers.base import FILLER, REQUIRED, Layer, Param, Params, channel_axis
from layers.registry import register_layer

ENGINE = ("DEFAULT", "CAFFE", "CUDNN")


@register_layer("ReLU")
class ReLU(Layer):
    """y = x if x > 0 else negative_slope * x  (leaky when negative_slope != 0).

    Bottoms: x (any shape).  Tops: y (same shape).
    Params (relu_param): negative_slope = 0, engine (ignored).
    The gradient at x == 0 is negative_slope, as in Caffe's backward (x > 0 is the test).

    Examples::

        >>> import torch
        >>> from layers.build import make_layer
        >>> relu = make_layer('type: "ReLU" bottom: "x" top: "y" relu_param { negative_slope: 0.1 }',
        ...                   bottom_shapes=[(1, 3)])
        >>> relu(torch.tensor([[-1.0, 0.0, 2.0]]))
        tensor([[-0.1000,  0.0000,  2.0000]])
    """
    params = Params("relu_param", negative_slope=Param(float, 0.0), engine=Param(ENGINE, "DEFAULT"))

    def forward(self, x):
        if self.p.negative_slope == 0:
            return torch.relu(x)
        return torch.where(x > 0, x, x * self.p.negative_slope)


@register_layer("PReLU")
class PReLU(Layer):
    """y = x if x > 0 else a_c * x, with a learnable slope a per channel (axis 1) or one shared slope.

    Bottoms: x (N, C, ...), at least 2 axes.  Tops: y (same shape).
    Params (prelu_param): filler (default constant 0.25), channel_shared = false.
    Blobs: slope, shape (C,), or () when channel_shared (Caffe makes a 0-axis blob, count 1).
    """
    params = Params("prelu_param", filler=Param(FILLER), channel_shared=Param(bool, False))

    def setup(self, bottom_shapes):
        (shape,) = bottom_shapes
        if len(shape) < 2:
            raise self.error(f"bottom must have at least 2 axes (N, C, ...), got shape {shape}")
        filler = self.p.filler if self.p.has("filler") else FILLER.parse(None, self.label)
        if not self.p.has("filler"):
            filler.value = 0.25
        self.add_blob("slope", () if self.p.channel_shared else (shape[1],), filler)

    def forward(self, x):
        a = self.slope.to(x.dtype)
        if not self.p.channel_shared:
            a = a.view(-1, *([1] * (x.dim() - 2)))
        return torch.where(x > 0, x, a * x)


@register_layer("Sigmoid")
class Sigmoid(Layer):
    """y = 1 / (1 + exp(-x)).

    Bottoms: x (any shape).  Tops: y (same shape).  Params (sigmoid_param): engine (ignored).
    """
    params = Params("sigmoid_param", engine=Param(ENGINE, "DEFAULT"))

    def forward(self, x):
        return torch.sigmoid(x)


@register_layer("TanH")
class TanH(Layer):
    """y = tanh(x).

    Bottoms: x (any shape).  Tops: y (same shape).  Params (tanh_param): engine (ignored).
    """
    params = Params("tanh_param", engine=Param(ENGINE, "DEFAULT"))

    def forward(self, x):
        return torch.tanh(x)


@register_layer("AbsVal")
class AbsVal(Layer):
    """y = |x| (gradient sign(x), 0 at 0 as in Caffe).

    Bottoms: x (any shape).  Tops: y (same shape).  Params: none.
    """

    def forward(self, x):
        return torch.abs(x)


@register_layer("Power")
class Power(Layer):
    """y = (shift + scale * x) ** power.

    Bottoms: x (any shape).  Tops: y (same shape).
    Params (power_param): power = 1, scale = 1, shift = 0.
    When power * scale == 0 the input is ignored, as in Caffe: y = 1 if power == 0 else shift ** power
    (a constant, with no gradient to x).

    Examples::

        >>> import torch
        >>> from layers.build import make_layer
        >>> power = make_layer('type: "Power" bottom: "x" top: "y" power_param { power: 2 scale: 2 shift: 1 }',
        ...                    bottom_shapes=[(3,)])
        >>> power(torch.tensor([0.0, 1.0, 2.0])).tolist()   # (1 + 2 x) ** 2
        [1.0, 9.0, 25.0]
    """
    params = Params("power_param", power=Param(float, 1.0), scale=Param(float, 1.0), shift=Param(float, 0.0))

    def forward(self, x):
        p = self.p
        if p.power * p.scale == 0:
            return torch.full_like(x, 1.0 if p.power == 0 else p.shift ** p.power)
        y = x if p.scale == 1 else x * p.scale
        if p.shift != 0:
            y = y + p.shift
        return y if p.power == 1 else y ** p.power


def _check_base(layer: Layer) -> float:
    """Caffe's Exp/Log base: -1 means e; otherwise it must be > 0. Returns ln(base)."""
    base = layer.p.base
    if base == -1:
        return 1.0
    if not base > 0:
        raise layer.error(f"base must be strictly positive (or -1 for e), got {base}")
    return math.log(base)


@register_layer("Exp")
class Exp(Layer):
    """y = base ** (shift + scale * x)  (base -1 means e).

    Bottoms: x (any shape).  Tops: y (same shape).
    Params (exp_param): base = -1, scale = 1, shift = 0.  base must be > 0 unless -1.
    """
    params = Params("exp_param", base=Param(float, -1.0), scale=Param(float, 1.0), shift=Param(float, 0.0))

    def setup(self, bottom_shapes):
        self.log_base = _check_base(self)

    def forward(self, x):
        return torch.exp((self.p.shift + self.p.scale * x) * self.log_base)


@register_layer("Log")
class Log(Layer):
    """y = log_base(shift + scale * x)  (base -1 means e).

    Bottoms: x (any shape).  Tops: y (same shape).
    Params (log_param): base = -1, scale = 1, shift = 0.  base must be > 0 and != 1 unless -1.
    """
    params = Params("log_param", base=Param(float, -1.0), scale=Param(float, 1.0), shift=Param(float, 0.0))

    def setup(self, bottom_shapes):
        self.log_base = _check_base(self)
        if self.log_base == 0:
            raise self.error("base 1 has no logarithm (log(1) = 0)")

    def forward(self, x):
        y = torch.log(self.p.shift + self.p.scale * x)
        return y if self.log_base == 1 else y / self.log_base


@register_layer("Dropout")
class Dropout(Layer):
    """Zero each unit with probability dropout_ratio in TRAIN; identity in TEST.

    scale_train = true (Caffe's default): TRAIN y = x * mask / (1 - ratio), TEST y = x.
    scale_train = false: TRAIN y = x * mask, TEST y = x * (1 - ratio).
    Bottoms: x (any shape).  Tops: y (same shape).
    Params (dropout_param): dropout_ratio = 0.5 (0 <= ratio < 1), scale_train = true (a field of later
    Caffe versions and forks; BVLC's own proto lacks it).
    The mask comes from torch's RNG (same distribution as Caffe, not the same numbers).

    Examples::

        >>> import torch
        >>> from layers.build import make_layer
        >>> drop = make_layer('type: "Dropout" bottom: "x" top: "y"', bottom_shapes=[(1, 1000)])   # ratio 0.5
        >>> drop(torch.ones(1, 1000)).unique().tolist()   # TRAIN: each unit is 0, or 1 / (1 - 0.5) when kept
        [0.0, 2.0]
        >>> test = make_layer('type: "Dropout" bottom: "x" top: "y"', bottom_shapes=[(1, 3)], phase="TEST")
        >>> test(torch.ones(1, 3)).tolist()   # TEST: the identity
        [[1.0, 1.0, 1.0]]
    """
    params = Params("dropout_param", dropout_ratio=Param(float, 0.5), scale_train=Param(bool, True))

    def setup(self, bottom_shapes):
        r = self.p.dropout_ratio
        if not 0 <= r < 1:
            raise self.error(f"dropout_ratio must be in [0, 1), got {r}")

    def forward(self, x):
        keep = 1.0 - self.p.dropout_ratio
        if self.phase == "TRAIN":
            mask = torch.empty_like(x).bernoulli_(keep)
            return x * (mask / keep) if self.p.scale_train else x * mask
        return x if self.p.scale_train else x * keep


@register_layer("Softmax")
class Softmax(Layer):
    """y_i = exp(x_i) / sum_j exp(x_j) along `axis`.

    Bottoms: x (any shape).  Tops: y (same shape).
    Params (softmax_param): axis = 1 (negative counts from the end), engine (ignored).

    Examples::

        >>> import torch
        >>> from layers.build import make_layer
        >>> softmax = make_layer('type: "Softmax" bottom: "x" top: "y"', bottom_shapes=[(1, 2)])
        >>> softmax(torch.log(torch.tensor([[1.0, 3.0]]))).round(decimals=4)   # exp(x) = 1, 3 -> 1/4, 3/4
        tensor([[0.2500, 0.7500]])
    """
    params = Params("softmax_param", engine=Param(ENGINE, "DEFAULT"), axis=Param(int, 1))

    def setup(self, bottom_shapes):
        self.axis = channel_axis(self.p.axis, len(bottom_shapes[0]), self.where)

    def forward(self, x):
        return torch.softmax(x, dim=self.axis)


BNLL_THRESHOLD = 50.0   # Caffe's kBNLL_THRESHOLD


class _BNLLFunction(torch.autograd.Function):
    """BNLL with Caffe's backward: dy/dx = exp(min(x, 50)) / (exp(min(x, 50)) + 1) (1/2 at x = 0)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        # x > 0: x + log(1 + exp(-x)); else log(1 + exp(x)); both branches at once, without overflow
        return x.clamp(min=0) + torch.log1p(torch.exp(-x.abs()))

    @staticmethod
    def backward(ctx, dy):
        (x,) = ctx.saved_tensors
        return dy * torch.sigmoid(x.clamp(max=BNLL_THRESHOLD))


@register_layer("BNLL")
class BNLL(Layer):
    """Binomial normal log likelihood (softplus): y = log(1 + exp(x)), computed as Caffe does without overflow:
    x + log(1 + exp(-x)) for x > 0, log(1 + exp(x)) otherwise.

    Bottoms: x (any shape).  Tops: y (same shape).  Params: none.
    Gradient (Caffe's backward): exp(min(x, 50)) / (exp(min(x, 50)) + 1), i.e. sigmoid(x), 1/2 at x = 0.
    log(1 + t) is taken as log1p(t): values below ~1e-16, which Caffe's log(1. + exp(x)) rounds to 0, keep
    their digits.

    Examples::

        >>> import torch
        >>> from layers.build import make_layer
        >>> bnll = make_layer('type: "BNLL" bottom: "x" top: "y"', bottom_shapes=[(3,)])
        >>> bnll(torch.tensor([0.0, 1000.0, -1000.0])).tolist()   # log 2, x itself, exp(-1000) ~ 0: no overflow
        [0.6931471824645996, 1000.0, 0.0]
    """

    def forward(self, x):
        return _BNLLFunction.apply(x)


@register_layer("Clip")
class Clip(Layer):
    """y = max(min, min(x, max)) (Caffe's std::max / std::min order: when min > max every y is min, and a NaN
    input gives min).

    Bottoms: x (any shape).  Tops: y (same shape).
    Params (clip_param): min, max (both required).
    Gradient: 1 where min <= x <= max (bounds included, as Caffe), else 0 (NaN inputs included).
    """
    params = Params("clip_param", min=Param(float, REQUIRED), max=Param(float, REQUIRED))

    def forward(self, x):
        y = x.clamp(max=self.p.max).clamp(min=self.p.min)
        return torch.where(x.isnan(), torch.full_like(y, self.p.min), y)


@register_layer("ELU")
class ELU(Layer):
    """y = x if x > 0 else alpha * (exp(x) - 1).

    Bottoms: x (any shape).  Tops: y (same shape).
    Params (elu_param): alpha = 1.
    Gradient (Caffe's): 1 for x > 0, alpha + y = alpha * exp(x) for x <= 0 (so alpha at x = 0).
    """
    params = Params("elu_param", alpha=Param(float, 1.0))

    def forward(self, x):
        return torch.where(x > 0, x, self.p.alpha * torch.expm1(x.clamp(max=0)))


@register_layer("Swish")
class Swish(Layer):
    """y = x * sigmoid(beta * x).

    Bottoms: x (any shape).  Tops: y (same shape).
    Params (swish_param): beta = 1.
    Gradient (autograd, equal to Caffe's): beta * y + sigmoid(beta * x) * (1 - beta * y).
    """
    params = Params("swish_param", beta=Param(float, 1.0))

    def forward(self, x):
        return x * torch.sigmoid(self.p.beta * x)


@register_layer("Threshold")
class Threshold(Layer):
    """y = 1 if x > threshold else 0 (strictly greater), in x's dtype.

    Bottoms: x (any shape).  Tops: y (same shape, no gradient: Caffe has no backward for it).
    Params (threshold_param): threshold = 0.
    """
    params = Params("threshold_param", threshold=Param(float, 0.0))

    def forward(self, x):
        return (x.detach() > self.p.threshold).to(x.dtype)
