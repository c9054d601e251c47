"""Caffe's BatchNorm (statistics only) and the Scale / Bias layers that usually follow it; MVN."""

from __future__ import annotations

import torch

from layers.base import FILLER, Layer, Param, Params, channel_axis
from layers.registry import register_layer


@register_layer("BatchNorm")
class BatchNorm(Layer):
    """y = (x - mean_c) / sqrt(var_c + eps) per channel (axis 1); no affine part (that is the Scale layer).

    Training mode (use_global_stats false): mean and biased variance of this batch over N and all spatial
    axes, and the stored sums are updated (Caffe's exact rule, m = N * spatial size):
        scale_factor = scale_factor * maf + 1
        mean_blob    = mean_blob * maf + batch_mean
        var_blob     = var_blob * maf + m / (m - 1) * batch_var      (m / (m - 1) is 1 when m == 1)
    Global mode: mean = mean_blob / scale_factor, var = var_blob / scale_factor (both 0 while
    scale_factor == 0).
    Bottoms: x (N, C, ...), at least 2 axes.  Tops: y (same shape).
    Params (batch_norm_param): use_global_stats (default false in TRAIN, true in TEST),
    moving_average_fraction = 0.999, eps = 1e-5.
    Blobs (buffers, never learned): mean (C,), variance (C,), scale_factor (1,).
    As in Caffe the statistics update whenever use_global_stats is false, also in a TEST net that sets it
    explicitly; a param { } entry with lr_mult != 0 is an error.

    Examples::

        >>> import torch
        >>> from layers.build import make_layer
        >>> bn = make_layer('type: "BatchNorm" bottom: "x" top: "y"', bottom_shapes=[(1, 2)], phase="TEST")
        >>> bn.mean[:], bn.variance[:], bn.scale_factor[:] = torch.tensor([2.0, 4.0]), torch.tensor([8.0, 2.0]), 2.0
        >>> bn(torch.tensor([[5.0, 0.0]])).round(decimals=4).tolist()   # sums / 2: mean (1, 2), var (4, 1)
        [[2.0, -2.0]]
    """
    params = Params("batch_norm_param", use_global_stats=Param(bool, False),
                    moving_average_fraction=Param(float, 0.999), eps=Param(float, 1e-5))

    def __init__(self, spec, *args, **kwargs):
        super().__init__(spec, *args, **kwargs)
        for ps in spec.param_specs:
            if ps.lr_mult != 0:
                raise self.error(f"param {{ lr_mult: {ps.lr_mult:g} }}: batch normalization statistics cannot "
                                 f"be learned (lr_mult must be 0)")

    def setup(self, bottom_shapes):
        (shape,) = bottom_shapes
        if len(shape) < 2:
            raise self.error(f"bottom must have at least 2 axes (N, C, ...), got shape {shape}")
        self.use_global_stats = self.p.use_global_stats if self.p.has("use_global_stats") else self.phase == "TEST"
        c = shape[1]
        self.add_blob("mean", (c,), learnable=False)
        self.add_blob("variance", (c,), learnable=False)
        self.add_blob("scale_factor", (1,), learnable=False)

    def forward(self, x):
        return self.normalize(x)

    def normalize(self, x, gamma=None, beta=None):
        """forward(x), then y * gamma + beta per channel where given (gamma and beta of shape (C,)): the Scale
        layer that usually follows, inside ATen's batch_norm kernel in training mode. The net runs an in-place
        Scale this way (nets/net.py, Net.fuse_scales); the layer's own forward never does."""
        bshape = (1, -1) + (1,) * (x.dim() - 2)
        if self.use_global_stats:
            s = self.scale_factor.to(x.dtype)
            f = torch.where(s == 0, torch.zeros_like(s), 1 / s)
            mean, var = self.mean.to(x.dtype) * f, self.variance.to(x.dtype) * f
        else:
            m = x.numel() // x.shape[1]
            dims = [0, *range(2, x.dim())]
            if m > 1 and self.p.eps > 0:   # the same formula, ATen's fused kernels: one autograd node, not seven
                # momentum 1 leaves this batch's mean and unbiased variance (Caffe's m / (m - 1) correction) in
                # the two scratch vectors
                c = x.shape[1]
                stats = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
                mean, unbiased = (torch.zeros(c, dtype=stats, device=x.device) for _ in range(2))
                # half-precision x takes float32 weights (ATen's mixed-type kernel), others x's own dtype
                weight, bias = (None if t is None else t.to(stats) for t in (gamma, beta))
                y = torch.nn.functional.batch_norm(x, mean, unbiased, weight, bias, training=True, momentum=1.0,
                                                   eps=self.p.eps)
                self._update(mean, unbiased)
                return y
            mean = x.mean(dim=dims)     # batch_norm refuses one value per channel and eps 0
            var = (x - mean.view(bshape)).square().mean(dim=dims)
            self._update(mean.detach(), var.detach() * (m / (m - 1) if m > 1 else 1.0))
        y = (x - mean.view(bshape)) / torch.sqrt(var.view(bshape) + self.p.eps)
        if gamma is not None:
            y = y * gamma.to(x.dtype).view(bshape)
        if beta is not None:
            y = y + beta.to(x.dtype).view(bshape)
        return y

    @torch.no_grad()
    def _update(self, mean, unbiased_var):
        """Caffe's sums; unbiased_var = m / (m - 1) times the batch's biased variance (itself when m == 1)."""
        maf = self.p.moving_average_fraction
        self.scale_factor.mul_(maf).add_(1)
        self.mean.mul_(maf).add_(mean.to(self.mean.dtype))
        self.variance.mul_(maf).add_(unbiased_var.to(self.variance.dtype))


def _operand_axis(layer: Layer, bottom_shapes, what: str):
    """Where the operand (learned blob or bottom[1]) sits along bottom[0]: (axis, operand shape).

    Caffe's rule: the operand covers bottom[0] axes [axis, axis + num_axes) (num_axes -1: to the end),
    or with a second bottom, as many axes as that bottom has.
    """
    x = bottom_shapes[0]
    axis = channel_axis(layer.p.axis, len(x), layer.where)
    if len(bottom_shapes) == 2:
        operand = tuple(bottom_shapes[1])
        if len(operand) == 0:
            return 0, operand
        if axis + len(operand) > len(x) or tuple(x[axis:axis + len(operand)]) != operand:
            raise layer.error(f"second bottom has shape {operand} but must equal bottom[0]'s shape "
                              f"{tuple(x)} from axis {axis}, i.e. {tuple(x[axis:axis + len(operand)])}")
        return axis, operand
    k = layer.p.num_axes
    if k < -1:
        raise layer.error(f"num_axes must be >= 0, or -1 to extend to the end of bottom[0], got {k}")
    if k >= 0 and axis + k > len(x):
        raise layer.error(f"{what} blob's shape extends past bottom[0]'s shape {tuple(x)} when applied from "
                          f"axis {axis} with num_axes {k}")
    return axis, tuple(x[axis:] if k == -1 else x[axis:axis + k])


def _aligned(t: torch.Tensor, axis: int, x: torch.Tensor) -> torch.Tensor:
    """`t` (covering x's axes from `axis`) viewed with trailing 1s so it broadcasts against x."""
    return t.to(x.dtype).reshape(tuple(t.shape) + (1,) * (x.dim() - axis - t.dim()))


@register_layer("Scale")
class Scale(Layer):
    """y = x * gamma (+ beta), gamma broadcast along bottom[0] from `axis`.

    gamma is a learned blob of shape bottom.shape[axis:axis + num_axes] (num_axes -1: to the end; 0: a
    scalar), or, with a second bottom, that bottom (shape equal to bottom[0].shape[axis:axis + its ndim]).
    Bottoms: x, optional gamma.  Tops: y (x's shape).
    Params (scale_param): axis = 1, num_axes = 1, filler (default constant 1), bias_term = false,
    bias_filler (default constant 0).
    Blobs: gamma (without a second bottom), then beta (if bias_term, gamma's shape).

    Examples::

        >>> import torch
        >>> from layers.build import make_layer
        >>> scale = make_layer('type: "Scale" bottom: "x" bottom: "gamma" top: "y" scale_param { bias_term: true '
        ...                    'bias_filler { type: "constant" value: 0.5 } }', bottom_shapes=[(1, 2, 1), (2,)])
        >>> scale(torch.ones(1, 2, 1), torch.tensor([2.0, 3.0])).tolist()   # x * gamma (one per channel) + beta
        [[[2.5], [3.5]]]
    """
    params = Params("scale_param", axis=Param(int, 1), num_axes=Param(int, 1), filler=Param(FILLER),
                    bias_term=Param(bool, False), bias_filler=Param(FILLER))
    num_bottoms = (1, 2)

    def setup(self, bottom_shapes):
        self.axis, shape = _operand_axis(self, bottom_shapes, "scale")
        if len(bottom_shapes) == 1:
            filler = self.p.filler
            if not self.p.has("filler"):
                filler = FILLER.parse(None, self.label)
                filler.value = 1.0
            self.add_blob("gamma", shape, filler)
        if self.p.bias_term:
            self.add_blob("beta", shape, self.p.bias_filler)

    def forward(self, x, gamma=None):
        y = x * _aligned(self.gamma if gamma is None else gamma, self.axis, x)
        if self.p.bias_term:
            y = y + _aligned(self.beta, self.axis, x)
        return y


@register_layer("Bias")
class Bias(Layer):
    """y = x + b, b broadcast along bottom[0] from `axis`.

    b is a learned blob of shape bottom.shape[axis:axis + num_axes] (num_axes -1: to the end; 0: a scalar),
    or, with a second bottom, that bottom (shape equal to bottom[0].shape[axis:axis + its ndim]).
    Bottoms: x, optional b.  Tops: y (x's shape).
    Params (bias_param): axis = 1, num_axes = 1, filler (default constant 0).
    Blobs: bias (without a second bottom).
    """
    params = Params("bias_param", axis=Param(int, 1), num_axes=Param(int, 1), filler=Param(FILLER))
    num_bottoms = (1, 2)

    def setup(self, bottom_shapes):
        self.axis, shape = _operand_axis(self, bottom_shapes, "bias")
        if len(bottom_shapes) == 1:
            self.add_blob("bias", shape, self.p.filler)

    def forward(self, x, b=None):
        return x + _aligned(self.bias if b is None else b, self.axis, x)


def _legacy_4d(layer: Layer, shape) -> tuple[int, int, int, int]:
    """Caffe's (num, channels, height, width) of a blob of up to 4 axes (missing axes are 1)."""
    if not 1 <= len(shape) <= 4:
        raise layer.error(f"bottom must have 1 to 4 axes (Caffe reads it as num, channels, height, width), got "
                          f"shape {tuple(shape)}")
    return tuple(shape) + (1,) * (4 - len(shape))


class _MVNFunction(torch.autograd.Function):
    """y = (x - mean) / (std + eps) per row of a (rows, D) view, with Caffe's backward (finite also where a row
    is constant): dx = (dy - mean(dy) - y * mean(y * dy)) / (std + eps)."""

    @staticmethod
    def forward(ctx, x, eps):
        u = x - x.mean(1, keepdim=True)
        scale = (u * u).mean(1, keepdim=True).sqrt() + eps
        y = u / scale
        ctx.save_for_backward(y, scale)
        return y

    @staticmethod
    def backward(ctx, dy):
        y, scale = ctx.saved_tensors
        dx = dy - dy.mean(1, keepdim=True) - y * (y * dy).mean(1, keepdim=True)
        return dx / scale, None


@register_layer("MVN")
class MVN(Layer):
    """Mean-variance normalization per item and channel (or per item across channels):

        y = x - mean(x)                        normalize_variance false
        y = (x - mean(x)) / (std(x) + eps)     normalize_variance true; std = sqrt(mean((x - mean)^2)), biased

    over each (n, c)'s H x W values, or each n's C x H x W values when across_channels. eps is added to the
    standard deviation, not the variance (Caffe's rule).
    Bottoms: x with 1 to 4 axes, read as (N, C, H, W).  Tops: y, shaped (N, C, H, W) (Caffe's 4-D top: (N, C)
    gives (N, C, 1, 1)).
    Params (mvn_param): normalize_variance = true, across_channels = false, eps = 1e-9.
    Gradient: Caffe's backward (dy - mean(dy) - y * mean(y * dy)) / (std + eps) with variance; dy - mean(dy)
    without (it differs from the exact derivative only by eps / std).
    """
    params = Params("mvn_param", normalize_variance=Param(bool, True), across_channels=Param(bool, False),
                    eps=Param(float, 1e-9))

    def setup(self, bottom_shapes):
        _legacy_4d(self, bottom_shapes[0])

    def forward(self, x):
        n, c, h, w = _legacy_4d(self, x.shape)
        rows = x.reshape(n if self.p.across_channels else n * c, -1)
        if self.p.normalize_variance:
            y = _MVNFunction.apply(rows, self.p.eps)
        else:
            y = rows - rows.mean(1, keepdim=True)
        return y.reshape(n, c, h, w)
