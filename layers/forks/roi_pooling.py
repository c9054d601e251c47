"""Fast/Faster R-CNN's ROIPooling (rbgirshick/caffe-fast-rcnn, roi_pooling_layer.cpp / .cu)."""

from __future__ import annotations

import torch

from layers.base import Layer, Param, Params
from layers.caffe.pooling import FLT_MAX
from layers.registry import register_layer


def c_round(v: torch.Tensor) -> torch.Tensor:
    """C's round(): halves away from zero (torch.round rounds them to even)."""
    t = torch.trunc(v)
    return t + torch.where((v - t).abs() >= 0.5, torch.sign(v), torch.zeros_like(v))


def roi_geometry(rois: torch.Tensor, spatial_scale: float, pooled_h: int, pooled_w: int):
    """The fork's per-ROI integers, in the rois' dtype as its Dtype arithmetic: batch index (truncated),
    start_w, start_h, end_w, end_h (round(coordinate * spatial_scale)) and the bin sizes
    max(end - start + 1, 1) / pooled (as (R, 1) tensors)."""
    scale = torch.tensor(spatial_scale, dtype=torch.float32).to(rois.dtype)   # a float in caffe.proto
    batch = rois[:, 0].to(torch.int64)
    start_w, start_h, end_w, end_h = (c_round(rois[:, k] * scale).to(torch.int64) for k in range(1, 5))
    bin_h = (end_h - start_h + 1).clamp(min=1).to(rois.dtype) / pooled_h
    bin_w = (end_w - start_w + 1).clamp(min=1).to(rois.dtype) / pooled_w
    return batch, start_w, start_h, end_w, end_h, bin_h[:, None], bin_w[:, None]


def bin_bounds(start: torch.Tensor, bin_size: torch.Tensor, pooled: int, size: int):
    """[lo, hi) of each bin along one axis, (R, pooled): floor(p * bin) and ceil((p + 1) * bin), plus the ROI's
    start, clipped to [0, size]."""
    p = torch.arange(pooled, device=bin_size.device).to(bin_size.dtype)
    lo = torch.floor(p * bin_size).to(torch.int64) + start[:, None]
    hi = torch.ceil((p + 1) * bin_size).to(torch.int64) + start[:, None]
    return lo.clamp(0, size), hi.clamp(0, size)


class _ROIPool(torch.autograd.Function):
    """Forward: the fork's max over each bin (first maximum in row-major order, strictly above -FLT_MAX; empty
    bins 0) and its argmax h * W + w (-1: none). Backward: the fork's ROIPoolBackward (see ROIPooling)."""

    @staticmethod
    def forward(ctx, x, rois, spatial_scale, pooled_h, pooled_w):
        _, ch, height, width = x.shape
        batch, start_w, start_h, end_w, end_h, bin_h, bin_w = roi_geometry(rois, spatial_scale, pooled_h, pooled_w)
        hs, he = bin_bounds(start_h, bin_h, pooled_h, height)
        ws, we = bin_bounds(start_w, bin_w, pooled_w, width)
        feats = x.detach()[batch]                                             # (R, C, H, W)
        # Caffe keeps a value only when it beats -FLT_MAX (NaN never does)
        floor = -min(FLT_MAX, torch.finfo(x.dtype).max)
        feats = torch.where(feats > floor, feats, torch.full((), -float("inf"), dtype=x.dtype, device=x.device))
        w_pos = torch.arange(width, device=x.device)
        h_pos = torch.arange(height, device=x.device)
        ninf = torch.full((), -float("inf"), dtype=x.dtype, device=x.device)
        row_max, row_arg = [], []
        for pw in range(pooled_w):                                            # max over w within each column bin
            inside = (w_pos >= ws[:, pw, None]) & (w_pos < we[:, pw, None])   # (R, W)
            m, a = torch.where(inside[:, None, None, :], feats, ninf).max(dim=3)
            row_max.append(m)
            row_arg.append(a)
        row_max, row_arg = torch.stack(row_max, -1), torch.stack(row_arg, -1)  # (R, C, H, PW)
        top, arg = [], []
        for ph in range(pooled_h):                                            # then over h within each row bin
            inside = (h_pos >= hs[:, ph, None]) & (h_pos < he[:, ph, None])   # (R, H)
            m, a_h = torch.where(inside[:, None, :, None], row_max, ninf).max(dim=2)   # (R, C, PW)
            a_w = row_arg.gather(2, a_h[:, :, None, :]).squeeze(2)
            top.append(m)
            arg.append(a_h * width + a_w)
        top, arg = torch.stack(top, 2), torch.stack(arg, 2)                  # (R, C, PH, PW)
        empty = ((he <= hs)[:, :, None] | (we <= ws)[:, None, :])[:, None]    # (R, 1, PH, PW)
        found = top > -float("inf")
        arg = torch.where(found & ~empty, arg, -1)
        top = torch.where(empty, torch.zeros((), dtype=x.dtype, device=x.device),
                          torch.where(found, top, torch.full((), floor, dtype=x.dtype, device=x.device)))
        ctx.save_for_backward(rois, arg)
        ctx.geometry = (x.shape, spatial_scale, pooled_h, pooled_w)
        return top

    @staticmethod
    def backward(ctx, grad):
        rois, arg = ctx.saved_tensors
        shape, spatial_scale, pooled_h, pooled_w = ctx.geometry
        _, ch, height, width = shape
        batch, start_w, start_h, end_w, end_h, bin_h, bin_w = roi_geometry(rois, spatial_scale, pooled_h, pooled_w)
        h, w = arg.div(width, rounding_mode="floor"), arg.remainder(width)  # (R, C, PH, PW)
        r4 = (slice(None), None, None, None)
        in_roi = (w >= start_w[r4]) & (w <= end_w[r4]) & (h >= start_h[r4]) & (h <= end_h[r4])
        # the bins the fork thinks could have pooled (h, w): floor((h - start) / bin) <= ph < ceil((h - start + 1) / bin)
        bh, bw = bin_h[:, 0][r4], bin_w[:, 0][r4]
        dh, dw = (h - start_h[r4]).to(bh.dtype), (w - start_w[r4]).to(bw.dtype)
        ph = torch.arange(pooled_h, device=grad.device)[:, None]
        pw = torch.arange(pooled_w, device=grad.device)
        feasible = ((torch.floor(dh / bh).to(torch.int64).clamp(0, pooled_h) <= ph)
                    & (ph < torch.ceil((dh + 1) / bh).to(torch.int64).clamp(0, pooled_h))
                    & (torch.floor(dw / bw).to(torch.int64).clamp(0, pooled_w) <= pw)
                    & (pw < torch.ceil((dw + 1) / bw).to(torch.int64).clamp(0, pooled_w)))
        take = (arg >= 0) & in_roi & feasible
        dx = grad.new_zeros(shape)
        flat = (batch[r4] * ch + torch.arange(ch, device=grad.device)[:, None, None]) * (height * width) + arg
        dx.view(-1).index_add_(0, flat[take], grad[take])
        return dx, None, None, None, None


@register_layer("ROIPooling")
class ROIPooling(Layer):
    """Max pooling of each region of interest into a fixed pooled_h x pooled_w grid (Fast R-CNN).

    For ROI r = [b, x1, y1, x2, y2] (image coordinates): start_w = round(x1 * spatial_scale), start_h =
    round(y1 * spatial_scale), end_w, end_h likewise from x2, y2 (C's round, halves away from 0; b truncated);
    roi_h = max(end_h - start_h + 1, 1) (malformed ROIs are 1 x 1), bin_h = roi_h / pooled_h (W alike), and bin
    (ph, pw) covers rows [floor(ph * bin_h), ceil((ph + 1) * bin_h)) + start_h clipped to [0, H] (W alike):
        y[r, c, ph, pw] = max of x[b, c] over the bin (the first maximum in row-major order, only values above
                          -FLT_MAX; none: -FLT_MAX),  0 for an empty bin (wholly outside the image).
    Backward (the fork's ROIPoolBackward): x[b, c, h, w] gets the sum of dy[r, c, ph, pw] over the ROIs r of
    image b with start <= (h, w) <= end (the unclipped, unforced ROI: a malformed ROI passes no gradient) and
    the bins whose argmax is (h, w) among those with floor((h - start_h) / bin_h) <= ph < ceil((h - start_h +
    1) / bin_h) (W alike); the rois get none.

    Bottoms: features (N, C, H, W), rois (R, 5) (or (R, 5, 1, 1)) [batch_index x1 y1 x2 y2].
    Tops: y (R, C, pooled_h, pooled_w).
    Params (roi_pooling_param): pooled_h = 0, pooled_w = 0 (both > 0), spatial_scale = 1 (the features' scale
    relative to the ROI coordinates, e.g. 0.0625 for VGG16's conv5_3).
    A batch index outside [0, N) is an error at run time (as the fork's CPU CHECK).
    Fork: rbgirshick/caffe-fast-rcnn (roi_pooling_layer.cpp forward, roi_pooling_layer.cu backward). The ROI
    arithmetic runs in the features' dtype, as the fork's Dtype (in float32 for 16-bit features). Differences: a NaN feature never wins a bin (as the fork's
    `>`), nothing else.

    Examples::

        >>> import torch
        >>> from layers.build import make_layer
        >>> roi = make_layer('type: "ROIPooling" bottom: "x" bottom: "rois" top: "y" '
        ...                  'roi_pooling_param { pooled_h: 1 pooled_w: 2 spatial_scale: 0.5 }',
        ...                  bottom_shapes=[(1, 1, 4, 4), (1, 5)])
        >>> x = torch.arange(16.0).view(1, 1, 4, 4)
        >>> roi(x, torch.tensor([[0.0, 0.0, 0.0, 6.0, 2.0]])).tolist()   # rows 0-1, columns 0-1 and 2-3
        [[[[5.0, 7.0]]]]
    """
    params = Params("roi_pooling_param", pooled_h=Param(int, 0), pooled_w=Param(int, 0),
                    spatial_scale=Param(float, 1.0))
    num_bottoms = 2

    def setup(self, bottom_shapes):
        p = self.p
        if p.pooled_h <= 0 or p.pooled_w <= 0:
            raise self.error(f"pooled_h and pooled_w must be > 0, got {p.pooled_h} and {p.pooled_w}")
        self.infer_top_shapes(bottom_shapes)

    def infer_top_shapes(self, bottom_shapes):
        shape, rois = bottom_shapes
        if len(shape) != 4:
            raise self.error(f"the features must have 4 axes (N, C, H, W), got shape {tuple(shape)}")
        count = 1
        for d in rois[1:]:
            count *= d
        if len(rois) < 2 or count != 5:
            raise self.error(f"the rois must be (R, 5) [batch_index x1 y1 x2 y2], got shape {tuple(rois)}")
        return [(rois[0], shape[1], self.p.pooled_h, self.p.pooled_w)]

    def forward(self, x, rois):
        self.infer_top_shapes([tuple(x.shape), tuple(rois.shape)])
        # the fork's Dtype arithmetic, in x's dtype (float32 at least: 16-bit types would move the ROIs)
        rois = rois.detach().reshape(rois.shape[0], 5).to(torch.promote_types(x.dtype, torch.float32))
        batch = rois[:, 0].to(torch.int64)
        bad = (batch < 0) | (batch >= x.shape[0])
        if bool(bad.any()):
            r = int(bad.nonzero()[0, 0])
            raise self.error(f"roi {r} has batch index {int(batch[r])}, outside [0, {x.shape[0]}) (the features' "
                             f"batch)")
        return _ROIPool.apply(x, rois, self.p.spatial_scale, self.p.pooled_h, self.p.pooled_w)
