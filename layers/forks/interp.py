"""DeepLab v2's bilinear Interp layer (interp_layer.cpp and George Papandreou's caffe_cpu_interp2), as PSPNet's
fork (hszhao/PSPNet) ships it, with the optional second bottom of later forks."""

from __future__ import annotations

import torch

from layers.base import Layer, Param, Params
from layers.registry import register_layer

SIZE_FIELDS = ("zoom_factor", "shrink_factor", "height", "width")


def interp_axis(size_in: int, size_out: int, device=None):
    """Caffe's caffe_cpu_interp2 along one axis, from `size_in` samples to `size_out`: per output index, the
    lower input index i0, the upper i1 (i0 + 1, or i0 at the last sample) and the weight lambda of i1, all
    computed in float32 as the C++ code does (ratio = float(in - 1) / (out - 1), 0 when out == 1; r = ratio * o,
    i0 = int(r), lambda = r - i0). Returns (i0, i1, lambda as float32)."""
    ratio = torch.tensor(0.0 if size_out <= 1 else float(size_in - 1), dtype=torch.float32, device=device)
    if size_out > 1:
        ratio = ratio / torch.tensor(float(size_out - 1), dtype=torch.float32, device=device)
    r = ratio * torch.arange(size_out, device=device).to(torch.float32)
    i0 = r.to(torch.int64)                         # truncation; r >= 0
    lam = r - i0.to(torch.float32)
    i1 = i0 + (i0 < size_in - 1).to(torch.int64)
    return i0, i1, lam


@register_layer("Interp")
class Interp(Layer):
    """Bilinear resize with aligned corners (input corners map onto output corners):
        y[n, c, h, w] = (1 - a) * ((1 - b) * x'[h0, w0] + b * x'[h0, w1]) + a * ((1 - b) * x'[h1, w0] + b * x'[h1, w1])
    where x' is x cropped by -pad_beg at the top left and -pad_end at the bottom right (size H' x W'),
    h * (H' - 1) / (H_out - 1) = h0 + a (h1 = h0 + 1, or h0 on the last row; likewise w, b), computed in float32
    as DeepLab's caffe_cpu_interp2 does; when H' x W' equals the output size the crop is copied unchanged.

    Bottoms: x (N, C, H, W), and optionally a second blob (N, ..., H2, W2) whose H2 x W2 is the output size.
    Tops: y (N, C, H_out, W_out), with H' = H + pad_beg + pad_end (W' alike), and H_out (W_out alike):
      second bottom:             H2 (none of zoom_factor, shrink_factor, height, width may be given)
      shrink_factor only:        (H' - 1) // shrink_factor + 1
      zoom_factor only:          H' + (H' - 1) * (zoom_factor - 1)
      height and width:          height
      shrink_factor, zoom_factor: S = (H' - 1) // shrink_factor + 1, then S + (S - 1) * (zoom_factor - 1)
    tried in this order, as the fork does (so shrink_factor alone wins over height and width).
    Params (interp_param): height = 0, width = 0, zoom_factor = 1, shrink_factor = 1 (>= 1), pad_beg = 0,
    pad_end = 0 (<= 0: cropping only).
    Backward: the adjoint of the forward (Caffe's caffe_cpu_interp2_backward), from autograd.
    Forks: DeepLab v2 (interp_layer.cpp, util/interp.cpp), as in hszhao/PSPNet; the second bottom as in the
    Interp layer of later forks (its "cannot have a second bottom ... ambiguous" rule). The fork's
    nearest-neighbour `type` is not supported.

    Examples::

        >>> import torch
        >>> from layers.build import make_layer
        >>> up = make_layer('type: "Interp" bottom: "x" top: "y" interp_param { zoom_factor: 2 }',
        ...                 bottom_shapes=[(1, 1, 1, 3)])
        >>> up(torch.tensor([[[[0.0, 2.0, 4.0]]]])).tolist()   # W: 3 + 2 * (2 - 1) = 5, corners kept
        [[[[0.0, 1.0, 2.0, 3.0, 4.0]]]]
    """
    params = Params("interp_param", height=Param(int, 0), width=Param(int, 0), zoom_factor=Param(int, 1),
                    shrink_factor=Param(int, 1), pad_beg=Param(int, 0), pad_end=Param(int, 0))
    num_bottoms = (1, 2)

    def setup(self, bottom_shapes):
        p = self.p
        if len(bottom_shapes[0]) != 4:
            raise self.error(f"bottom must have 4 axes (N, C, H, W), got shape {bottom_shapes[0]}")
        if p.pad_beg > 0 or p.pad_end > 0:
            raise self.error(f"only non-positive padding (cropping) is supported, got pad_beg {p.pad_beg} and "
                             f"pad_end {p.pad_end}")
        given = [f for f in SIZE_FIELDS if p.has(f)]
        if len(bottom_shapes) == 2:
            if given:
                raise self.error(f"with a second bottom (the output size) {given[0]} cannot be given: it would be "
                                 f"ambiguous")
            if len(bottom_shapes[1]) != 4:
                raise self.error(f"the second bottom must have 4 axes (N, C, H, W), got shape {bottom_shapes[1]}")
        elif not (p.has("shrink_factor") or p.has("zoom_factor") or (p.has("height") and p.has("width"))):
            raise self.error("the output size is unspecified: give zoom_factor, shrink_factor, both height and "
                             "width, or a second bottom")
        for f in ("shrink_factor", "zoom_factor"):
            if p.has(f) and getattr(p, f) < 1:
                raise self.error(f"{f} must be >= 1, got {getattr(p, f)}")
        self.output_size(*bottom_shapes)

    def output_size(self, shape, size_shape=None) -> tuple[int, int]:
        """(H_out, W_out) for a bottom of `shape` (and the second bottom's shape); user errors as one line."""
        p = self.p
        eff = [s + p.pad_beg + p.pad_end for s in shape[2:]]
        if min(eff) <= 0:
            raise self.error(f"the cropped input size {eff} must be positive (bottom H x W {list(shape[2:])}, "
                             f"pad_beg {p.pad_beg}, pad_end {p.pad_end})")
        if size_shape is not None:
            if size_shape[0] != shape[0]:
                raise self.error(f"the second bottom's num {size_shape[0]} differs from the first's {shape[0]}")
            out = list(size_shape[2:4])
        elif p.has("shrink_factor") and not p.has("zoom_factor"):
            out = [(e - 1) // p.shrink_factor + 1 for e in eff]
        elif p.has("zoom_factor") and not p.has("shrink_factor"):
            out = [e + (e - 1) * (p.zoom_factor - 1) for e in eff]
        elif p.has("height") and p.has("width"):
            out = [p.height, p.width]
        else:
            out = [(e - 1) // p.shrink_factor + 1 for e in eff]
            out = [o + (o - 1) * (p.zoom_factor - 1) for o in out]
        if min(out) <= 0:
            raise self.error(f"output size {out} must be positive")
        return out[0], out[1]

    def infer_top_shapes(self, bottom_shapes):
        shape = bottom_shapes[0]
        return [(shape[0], shape[1], *self.output_size(*bottom_shapes))]

    def forward(self, x, size=None):
        out_h, out_w = self.output_size(x.shape, None if size is None else size.shape)
        beg = -self.p.pad_beg
        h_eff = x.shape[2] + self.p.pad_beg + self.p.pad_end
        w_eff = x.shape[3] + self.p.pad_beg + self.p.pad_end
        xc = x[:, :, beg:beg + h_eff, beg:beg + w_eff]
        if (h_eff, w_eff) == (out_h, out_w):
            return xc.clone()
        h0, h1, a = interp_axis(h_eff, out_h, x.device)
        w0, w1, b = interp_axis(w_eff, out_w, x.device)
        a, b = a.to(x.dtype)[:, None], b.to(x.dtype)
        rows0, rows1 = xc.index_select(2, h0), xc.index_select(2, h1)
        # the C++ expression, in its order: h0l * (w0l * p00 + w1l * p01) + h1l * (w0l * p10 + w1l * p11)
        top = (1 - b) * rows0.index_select(3, w0) + b * rows0.index_select(3, w1)
        bottom = (1 - b) * rows1.index_select(3, w0) + b * rows1.index_select(3, w1)
        return (1 - a) * top + a * bottom
