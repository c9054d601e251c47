"""SegNet's max-unpooling Upsample layer (alexgkendall/caffe-segnet, upsample_layer.cpp)."""

from __future__ import annotations

import torch

from layers.base import Layer, Param, Params
from layers.registry import register_layer


class _Unpool(torch.autograd.Function):
    """Forward: top[n, c, idx[i]] = x[n, c, i] over i in order (a later i wins a shared idx), the rest 0.
    Backward as SegNet's Backward_cpu: dx[n, c, i] = dtop[n, c, idx[i]] for every i (also the losers of a
    shared idx); the mask gets no gradient."""

    @staticmethod
    def forward(ctx, x, idx, out_hw):
        n, c = x.shape[:2]
        flat_x, flat_idx = x.reshape(n, c, -1), idx.reshape(n, c, -1)
        order = torch.arange(flat_idx.shape[-1], device=x.device).expand_as(flat_idx)
        last = torch.full((n, c, out_hw), -1, dtype=torch.int64, device=x.device)
        last.scatter_reduce_(2, flat_idx, order, reduce="amax")            # the last i written to each target
        top = torch.where(last >= 0, flat_x.gather(2, last.clamp(min=0)), flat_x.new_zeros(()))
        ctx.save_for_backward(flat_idx)
        ctx.in_shape = x.shape
        return top

    @staticmethod
    def backward(ctx, grad):
        (flat_idx,) = ctx.saved_tensors
        return grad.gather(2, flat_idx).reshape(ctx.in_shape), None, None


@register_layer("Upsample")
class Upsample(Layer):
    """Max unpooling with the argmax mask of a MAX Pooling layer (its second top): each input value goes to the
    position its mask names in an output plane of upsample_h x upsample_w, every other output is 0:
        y[n, c].flat[int(mask[n, c, i])] = x[n, c, i]      (i in row-major order: a later i wins a shared target)
    Backward (SegNet's): dx[n, c, i] = dy[n, c].flat[int(mask[n, c, i])], for every i, so inputs sharing a
    target (overlapping pooling windows that chose the same maximum) all get its gradient; the mask gets none.

    Bottoms: x (N, C, H, W), mask (N, C, H, W) (float, as Pooling's second top writes it).
    Tops: y (N, C, upsample_h, upsample_w), where, unless upsample_h and upsample_w are given,
        upsample_h = H * scale_h - pad_out_h,  upsample_w = W * scale_w - pad_out_w.
    Params (upsample_param): upsample_h, upsample_w (> 1, given together; no default), or (deprecated in the
    fork) scale = 2 or scale_h + scale_w (> 1) with pad_out_h = false, pad_out_w = false (only with scale 2: an
    odd input size of the pooling layer).
    A mask index outside [0, upsample_h * upsample_w) is an error at run time (the fork stops on too large ones;
    -1, a MAX window that held nothing, it writes out of bounds).
    Fork: alexgkendall/caffe-segnet. Differences: a lone upsample_h or upsample_w is an error (the fork then
    ignores it); the size from scale follows every new bottom size (the fork keeps its first one).

    Examples::

        >>> import torch
        >>> from layers.build import make_layer
        >>> up = make_layer('type: "Upsample" bottom: "x" bottom: "mask" top: "y" upsample_param { scale: 2 }',
        ...                 bottom_shapes=[(1, 1, 1, 2), (1, 1, 1, 2)])
        >>> up(torch.tensor([[[[5.0, 7.0]]]]), torch.tensor([[[[4.0, 3.0]]]])).tolist()   # 2 x 4 output
        [[[[0.0, 0.0, 0.0, 7.0], [5.0, 0.0, 0.0, 0.0]]]]
    """
    params = Params("upsample_param", scale=Param(int, 2), scale_h=Param(int, 0), scale_w=Param(int, 0),
                    pad_out_h=Param(bool, False), pad_out_w=Param(bool, False),
                    upsample_h=Param(int, 0), upsample_w=Param(int, 0))
    num_bottoms = 2

    def setup(self, bottom_shapes):
        p = self.p
        if p.has("upsample_h") or p.has("upsample_w"):
            if not (p.has("upsample_h") and p.has("upsample_w")):
                raise self.error("give both upsample_h and upsample_w")
            if p.upsample_h <= 1 or p.upsample_w <= 1:
                raise self.error(f"upsample_h and upsample_w must be > 1, got {p.upsample_h} and {p.upsample_w}")
            self.scale = None
        else:
            if p.has("scale_h") or p.has("scale_w"):
                if p.has("scale"):
                    raise self.error("give either scale or scale_h and scale_w, not both")
                if not (p.has("scale_h") and p.has("scale_w")):
                    raise self.error("give both scale_h and scale_w")
                self.scale = (p.scale_h, p.scale_w)
            else:
                self.scale = (p.scale, p.scale)
            if min(self.scale) <= 1:
                raise self.error(f"the scale must be > 1, got {list(self.scale)}")
            for pad, s, axis in ((p.pad_out_h, self.scale[0], "h"), (p.pad_out_w, self.scale[1], "w")):
                if pad and s != 2:
                    raise self.error(f"pad_out_{axis} needs scale_{axis} 2 (got {s}): otherwise the output size is "
                                     f"ill-defined")
        self.output_size(*bottom_shapes)

    def output_size(self, shape, mask_shape) -> tuple[int, int]:
        if len(shape) != 4 or len(mask_shape) != 4:
            raise self.error(f"both bottoms must have 4 axes (N, C, H, W), got shapes {tuple(shape)} and "
                             f"{tuple(mask_shape)}")
        if tuple(shape) != tuple(mask_shape):
            raise self.error(f"the mask's shape {tuple(mask_shape)} differs from the input's {tuple(shape)}")
        if self.scale is None:
            return self.p.upsample_h, self.p.upsample_w
        return (shape[2] * self.scale[0] - int(self.p.pad_out_h), shape[3] * self.scale[1] - int(self.p.pad_out_w))

    def infer_top_shapes(self, bottom_shapes):
        shape = bottom_shapes[0]
        return [(shape[0], shape[1], *self.output_size(*bottom_shapes))]

    def forward(self, x, mask):
        out_h, out_w = self.output_size(x.shape, mask.shape)
        idx = mask.detach().to(torch.int64)          # static_cast<int>: truncation toward zero
        bad = (idx < 0) | (idx >= out_h * out_w)
        if bool(bad.any()):
            v = int(idx[bad][0])
            raise self.error(f"mask index {v} is out of range for the {out_h} x {out_w} output (does the scale or "
                             f"upsample size match the pooling layer that made the mask?)")
        y = _Unpool.apply(x, idx, out_h * out_w)
        return y.reshape(x.shape[0], x.shape[1], out_h, out_w)
