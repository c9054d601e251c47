"""Caffe's Pooling layer (pooling_layer.cpp / .cu): MAX (with optional argmax top), AVE, STOCHASTIC."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from layers.base import Layer, Param, Params
from layers.registry import register_layer

FLT_MAX = 3.4028234663852886e38  # Caffe starts every MAX window at -FLT_MAX (also for double)


def pooled_size(size: int, kernel: int, stride: int, pad: int, ceil: bool, padded: bool) -> int:
    """Caffe's output size along one axis: rounded (size + 2 pad - kernel) / stride + 1, then, if the layer
    has any padding (`padded`: on either axis, as Caffe checks), one less when the last window would start
    at or after size + pad."""
    num = size + 2 * pad - kernel
    out = (-(-num // stride) if ceil else num // stride) + 1
    if padded and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def window_max(xp: torch.Tensor, kernel, stride) -> torch.Tensor:
    """max_pool2d(xp, kernel, stride) (no padding, floor mode) as running maxima of strided slices, rows then
    columns: the same values (NaN wins as there), ~15x faster than PyTorch's CPU kernel for the 3x3 stride-1
    windows of the RHD nets. Ties would share the gradient (torch.maximum), not give it to the first maximum
    as Caffe does, so the Pooling layer uses it only where no gradient is taken."""
    (kh, kw), (sh, sw) = kernel, stride
    out_h, out_w = (xp.shape[-2] - kh) // sh + 1, (xp.shape[-1] - kw) // sw + 1
    rows = xp[..., 0:(out_h - 1) * sh + 1:sh, :]
    for i in range(1, kh):
        rows = torch.maximum(rows, xp[..., i:i + (out_h - 1) * sh + 1:sh, :])
    y = rows[..., 0:(out_w - 1) * sw + 1:sw]
    for j in range(1, kw):
        y = torch.maximum(y, rows[..., j:j + (out_w - 1) * sw + 1:sw])
    return y


@register_layer("Pooling")
class Pooling(Layer):
    """2-D pooling over windows of kernel_h x kernel_w placed every stride, starting at -pad.

    Window along H (W alike) for output row i: start = i * stride_h - pad_h, end = start + kernel_h.
      MAX: max of x over the window clipped to the image (padding never wins).
      AVE: sum of x over the window clipped to the image, divided by Caffe's pool size
           (min(end, H + pad_h) - start) * (min(end_w, W + pad_w) - start_w): padding counts, the part of a
           ceil-mode window that runs past the padded border does not.
      STOCHASTIC (no padding; windows clipped to the image; inputs meant to be >= 0, e.g. after ReLU):
           TRAIN: one x of the window drawn with probability x / sum(window) (the gradient goes to it);
           TEST: sum(x^2) / sum(x) over the window (0 when sum(x) <= 0). This is Caffe's GPU code; Caffe's
           CPU code has no STOCHASTIC pooling.
    Output size (per axis): ceil (round_mode CEIL) or floor ((in + 2 pad - kernel) / stride) + 1, minus 1
    when the layer has padding (on either axis, as Caffe checks) and the last window would start at or after
    in + pad.

    Bottoms: x (N, C, H, W).  Tops: y (N, C, H', W'); MAX only: optionally a second top, the argmax mask
    (same shape, x's dtype, float32 for a 16-bit x, no gradient): h * W + w of the chosen input in its (H, W)
    plane, the first maximum in row-major order (Caffe's strict `>`), -1 where no input beat -FLT_MAX. SegNet's
    Upsample (layers/forks/upsample.py) unpools with it.
    Params (pooling_param): pool = MAX (MAX, AVE, STOCHASTIC), kernel_size or kernel_h + kernel_w (required
    unless global_pooling), stride = 1 or stride_h + stride_w, pad = 0 or pad_h + pad_w (pad < kernel),
    global_pooling = false (kernel = H x W; pad 0 and stride 1 only), round_mode = CEIL (CEIL, FLOOR),
    engine (accepted, no effect).
    As in Caffe, a MAX window with nothing above -FLT_MAX gives -FLT_MAX and mask -1; this includes a
    ceil-mode window wholly outside the image (possible without padding when stride > kernel), which AVE
    turns into 0 / 0 = NaN.
    Differences from Caffe: kernel_size together with a lone kernel_h or kernel_w is an error (Caffe ignores
    the lone one); a NaN input wins its MAX window (Caffe skips it). Ties pick the first maximum in row-major
    order, as Caffe.

    Examples::

        >>> import torch
        >>> from layers.build import make_layer
        >>> pool = make_layer('type: "Pooling" bottom: "x" top: "y" pooling_param { pool: MAX kernel_size: 2 '
        ...                   'stride: 2 }', bottom_shapes=[(1, 1, 4, 4)])
        >>> pool(torch.arange(16.0).view(1, 1, 4, 4)).tolist()   # rows 0-3, 4-7, 8-11, 12-15: max of each 2x2 block
        [[[[5.0, 7.0], [13.0, 15.0]]]]
    """
    params = Params("pooling_param", pool=Param(("MAX", "AVE", "STOCHASTIC"), "MAX"),
                    pad=Param(int, 0), pad_h=Param(int, 0), pad_w=Param(int, 0),
                    kernel_size=Param(int, 0), kernel_h=Param(int, 0), kernel_w=Param(int, 0),
                    stride=Param(int, 1), stride_h=Param(int, 0), stride_w=Param(int, 0),
                    engine=Param(("DEFAULT", "CAFFE", "CUDNN"), "DEFAULT"), global_pooling=Param(bool, False),
                    round_mode=Param(("CEIL", "FLOOR"), "CEIL"))
    num_tops = (1, 2)

    def setup(self, bottom_shapes):
        p = self.p
        (shape,) = bottom_shapes
        if len(shape) != 4:
            raise self.error(f"bottom must have 4 axes (N, C, H, W), got shape {shape}")
        if self.num_top_blobs == 2 and p.pool != "MAX":
            raise self.error(f"only MAX pooling has a second top (the argmax mask); pool is {p.pool}")
        hw = {"kernel": None, "stride": None, "pad": None}
        for short in hw:
            full = "kernel_size" if short == "kernel" else short
            h, w = f"{short}_h", f"{short}_w"
            if p.has(h) or p.has(w):
                if p.has(full):
                    raise self.error(f"give either {full} or {h} and {w}, not both")
                if not (p.has(h) and p.has(w)):
                    raise self.error(f"give both {h} and {w}")
                hw[short] = (getattr(p, h), getattr(p, w))
            elif short != "kernel" or p.has(full):
                hw[short] = (getattr(p, full),) * 2
        self.global_pooling = p.global_pooling
        if self.global_pooling:
            if hw["kernel"] is not None:
                raise self.error("with global_pooling the kernel size cannot be given (it is the bottom's H x W)")
            if hw["pad"] != (0, 0) or hw["stride"] != (1, 1):
                raise self.error(f"with global_pooling only pad 0 and stride 1 are allowed, got pad "
                                 f"{list(hw['pad'])} and stride {list(hw['stride'])}")
            hw["kernel"] = tuple(shape[2:])
        elif hw["kernel"] is None:
            raise self.error("missing kernel_size (or kernel_h and kernel_w, or global_pooling: true)")
        self.kernel, self.stride, self.pad = hw["kernel"], hw["stride"], hw["pad"]
        if min(self.kernel) <= 0:
            raise self.error(f"kernel size must be > 0, got {list(self.kernel)}")
        if min(self.stride) <= 0:
            raise self.error(f"stride must be > 0, got {list(self.stride)}")
        if min(self.pad) < 0:
            raise self.error(f"pad must be >= 0, got {list(self.pad)}")
        if any(self.pad):
            if p.pool == "STOCHASTIC":
                raise self.error("padding is implemented only for MAX and AVE pooling")
            if any(pd >= k for pd, k in zip(self.pad, self.kernel)):
                raise self.error(f"pad {list(self.pad)} must be smaller than the kernel {list(self.kernel)}")
        self._geometry(shape)

    def _geometry(self, shape):
        """Per spatial axis: (size, kernel, stride, pad, pooled size) for this bottom shape."""
        sizes = shape[2:]
        kernel = tuple(sizes) if self.global_pooling else self.kernel
        ceil = self.p.round_mode == "CEIL"
        padded = any(self.pad)
        out = [pooled_size(n, k, s, pd, ceil, padded) for n, k, s, pd in zip(sizes, kernel, self.stride, self.pad)]
        if min(out) <= 0:
            raise self.error(f"output size {out} <= 0 for the bottom's H x W {list(sizes)} (kernel "
                             f"{list(kernel)}, stride {list(self.stride)}, pad {list(self.pad)}, round_mode "
                             f"{self.p.round_mode})")
        return list(zip(sizes, kernel, self.stride, self.pad, out))

    def forward(self, x):
        geo = self._geometry(x.shape)
        kernel = [g[1] for g in geo]
        # Pad explicitly to exactly the extent the windows cover: (out - 1) * stride + kernel per axis (the
        # far side may be negative, i.e. a crop, in FLOOR mode); then pool with no padding, floor mode.
        pads = []
        for n, k, s, pd, o in reversed(geo):
            pads += [pd, (o - 1) * s + k - n - pd]
        pool = self.p.pool
        if pool == "MAX":
            # Caffe keeps a value only if it beats -FLT_MAX: an empty window (or all -inf) gives -FLT_MAX, mask -1
            xp = F.pad(x, pads, value=-float("inf"))
            floor = -min(FLT_MAX, torch.finfo(x.dtype).max)     # 16-bit types (mixed precision) stop lower
            if self.num_top_blobs == 1:
                if x.device.type == "cpu" and not (torch.is_grad_enabled() and x.requires_grad):
                    return window_max(xp, kernel, self.stride).clamp_min(floor)
                return F.max_pool2d(xp, kernel, self.stride).clamp_min(floor)
            y, idx = F.max_pool2d(xp, kernel, self.stride, return_indices=True)
            wp = xp.shape[-1]
            mask = (idx // wp - self.pad[0]) * x.shape[-1] + idx % wp - self.pad[1]
            # Caffe takes a value only when it beats -FLT_MAX: none did -> -1 (values below it included, in double)
            mask = torch.where(y <= floor, -1, mask)
            # indices stay exact in float32 (to 2^24); a 16-bit x (mixed precision) would round them
            return y.clamp_min(floor), mask.to(x.dtype if x.dtype.itemsize >= 4 else torch.float32)
        xp = F.pad(x, pads)
        if pool == "AVE":
            sums = F.avg_pool2d(xp, kernel, self.stride, divisor_override=1)
            sizes = [(n + 2 * pd - torch.arange(o, device=x.device) * s).clamp(max=k) for n, k, s, pd, o in geo]
            return sums / (sizes[0][:, None] * sizes[1][None, :]).to(x.dtype)
        if self.phase == "TEST":
            s1 = F.avg_pool2d(xp, kernel, self.stride, divisor_override=1)
            s2 = F.avg_pool2d(xp * xp, kernel, self.stride, divisor_override=1)
            positive = s1 > 0
            return torch.where(positive, s2 / torch.where(positive, s1, torch.ones_like(s1)), 0)
        (kh, kw), (sh, sw) = kernel, self.stride
        win = xp.unfold(2, kh, sh).unfold(3, kw, sw).flatten(4)  # (N, C, H', W', kh * kw), row-major windows
        cum = win.detach().cumsum(-1)
        thres = torch.rand(win.shape[:4] + (1,), dtype=x.dtype, device=x.device) * cum[..., -1:]
        pick = (cum < thres).sum(-1, keepdim=True).clamp(max=kh * kw - 1)
        return win.gather(-1, pick).squeeze(-1)
