"""Caffe's SPP layer (spp_layer.cpp): spatial pyramid pooling, built from Caffe's Pooling layer."""

from __future__ import annotations

import torch

from layers.base import Layer, Param, Params
from layers.caffe.pooling import Pooling
from layers.registry import register_layer
from netdef.spec import LayerDef
from netdef.text_format import parse


def level_geometry(level: int, height: int, width: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Caffe's SPPLayer::GetPoolingParam for one pyramid level: ((kernel_h, kernel_w), (pad_h, pad_w)); the
    stride is the kernel. 2^level bins per axis: kernel = ceil(size / bins), pad = (kernel * bins - size + 1) / 2."""
    bins = 2 ** level
    kernel = tuple(-(-size // bins) for size in (height, width))
    pad = tuple((k * bins - size + 1) // 2 for k, size in zip(kernel, (height, width)))
    return kernel, pad


@register_layer("SPP")
class SPP(Layer):
    """Spatial pyramid pooling (He et al. 2014): for each level l = 0 .. pyramid_height-1, Caffe's Pooling of x
    with 2^l bins per axis (kernel = stride = ceil(H / 2^l), pad = (kernel 2^l - H + 1) // 2; W alike; CEIL
    rounding, Caffe's pooled-size rule), flattened to (N, C * H_l * W_l); the levels concatenated in order.

    Bottoms: x (N, C, H, W).  Tops: y (N, C * sum_l H_l * W_l) (usually C * (1 + 4 + 16 + ...)); with
    pyramid_height 1 the single pooling's own top, (N, C, 1, 1), as in Caffe.
    Params (spp_param): pyramid_height (required, >= 1), pool = MAX (MAX, AVE, STOCHASTIC), engine (ignored).
    A level whose padding would reach its kernel (an input smaller than 2^(pyramid_height-1), roughly) is an
    error, as Caffe's Pooling refuses it; STOCHASTIC needs every level unpadded.
    The pooling geometry follows the bottom's H x W at every forward, as Caffe's Reshape does.

    Examples::

        >>> import torch
        >>> from layers.build import make_layer
        >>> spp = make_layer('type: "SPP" bottom: "x" top: "y" spp_param { pyramid_height: 2 }',
        ...                  bottom_shapes=[(1, 1, 4, 4)])
        >>> spp(torch.arange(16.0).view(1, 1, 4, 4)).tolist()   # the max of all, then of each 2x2 quarter
        [[15.0, 5.0, 7.0, 13.0, 15.0]]
    """
    params = Params("spp_param", pyramid_height=Param(int), pool=Param(("MAX", "AVE", "STOCHASTIC"), "MAX"),
                    engine=Param(("DEFAULT", "CAFFE", "CUDNN"), "DEFAULT"))

    def __init__(self, spec: LayerDef, *args, **kwargs):
        self.spec = spec        # the internal Pooling layers name this layer in their messages
        self.pools: dict = {}   # (H, W, device) -> [Pooling per level]; plain attributes, not submodules
        super().__init__(spec, *args, **kwargs)

    def setup(self, bottom_shapes):
        if not self.p.has("pyramid_height") or self.p.pyramid_height < 1:
            raise self.error("needs spp_param { pyramid_height: ... } of at least 1")
        self.levels(bottom_shapes[0], torch.device("cpu"))

    def levels(self, shape, device) -> list[Pooling]:
        """The level poolings for this bottom shape (built once per H x W)."""
        if len(shape) != 4:
            raise self.error(f"bottom must have 4 axes (N, C, H, W), got shape {tuple(shape)}")
        key = (shape[2], shape[3], device)
        if key in self.pools:
            return self.pools[key]
        h, w = shape[2], shape[3]
        if h <= 0 or w <= 0:
            raise self.error(f"the bottom's H x W must be positive, got {h} x {w}")
        pools = []
        for level in range(self.p.pyramid_height):
            (kh, kw), (ph, pw) = level_geometry(level, h, w)
            if ph >= kh or pw >= kw:
                raise self.error(f"pyramid level {level} ({2 ** level} bins per axis) of a {h} x {w} bottom needs "
                                 f"pad {ph} x {pw} for kernel {kh} x {kw}; Caffe's pooling needs pad < kernel "
                                 f"(lower pyramid_height or use a larger input)")
            if self.p.pool == "STOCHASTIC" and (ph or pw):
                raise self.error(f"pyramid level {level} of a {h} x {w} bottom needs padding {ph} x {pw}, which "
                                 f"STOCHASTIC pooling does not take (use MAX or AVE)")
            text = (f"pool: {self.p.pool} kernel_h: {kh} kernel_w: {kw} stride_h: {kh} stride_w: {kw} "
                    f"pad_h: {ph} pad_w: {pw}")
            spec = LayerDef(name=self.spec.name, type=self.spec.type, bottoms=["x"], tops=["y"],
                            blocks={"pooling_param": parse(text, "<spp>")}, loc=self.spec.loc)
            pools.append(Pooling(spec, [tuple(shape)], self.phase).to(device))
        self.pools[key] = pools
        return pools

    def forward(self, x):
        pools = self.levels(tuple(x.shape), x.device)
        if len(pools) == 1:
            return pools[0](x)
        return torch.cat([pool(x).flatten(1) for pool in pools], dim=1)
