"""One side for every hand: HandMirror flips the crops of one side's hands left-right, and their 2D poses with
them, so a net sees right hands only (RHD's two sides; Zimmermann & Brox feed the side to their network for
the same reason).

Why: a hand and the mirror image of the other hand, turned to face the other way, have the same silhouette
with every relative depth negated; a net that sees both sides can only guess which it is looking at. Mirroring
is exact in the crop: pixel column c of a crop w pixels wide goes to column w - 1 - c, i.e. in crop units
u' = c / w goes to (w - 1) / w - u', at any resize of the crop (pixel centres (c + 1/2) / w go to 1 - that).
The relative depths zr and the hand scale do not change; the mirrored 2D prediction, mapped back by the same
layer (it is its own inverse), goes into CropToImage and the 3D steps as before.
"""

from __future__ import annotations

import torch

from layers.base import Layer
from layers.registry import register_layer


@register_layer("HandMirror")
class HandMirror(Layer):
    """Mirror the samples whose flag is 1 (e.g. ReadHandSide's is_left): crops left-right, 2D poses to match.

        images (B, C, H, W):          y[b] = x[b] flipped along W              where flag[b] = 1, else x[b]
        2D pose (B, 2K), with bbox:   u'_k -> (w - 1) / w - u'_k, v'_k kept,   w = x2 - x1 + 1 of bbox[b]

    The map is its own inverse, so one HandMirror before the network and one after its 2D output put the
    prediction back in the original crop.
    Bottoms: x (an image blob, 4-D, or a 2D pose (B, 2K) in crop units); flag (B, 1), 1 to mirror, 0 to keep;
    bbox (B, 4) x1, y1, x2, y2 (integer bounds, inclusive), required for a 2D pose.
    Tops: y (x's shape). Params: none. Gradients flow to x only (the flag and the box are data).

    Examples::

        >>> import torch
        >>> from layers.build import make_layer
        >>> m = make_layer('type: "HandMirror" bottom: "uv" bottom: "left" bottom: "bbox" top: "y"',
        ...                bottom_shapes=[(2, 2), (2, 1), (2, 4)])
        >>> box = torch.tensor([[10.0, 0, 19, 9], [10.0, 0, 19, 9]])      # 10 px wide: column 1 -> 8
        >>> m(torch.tensor([[0.1, 0.5], [0.1, 0.5]]), torch.tensor([[1.0], [0.0]]), box)   # the first is mirrored
        tensor([[0.8000, 0.5000],
                [0.1000, 0.5000]])
    """
    num_bottoms = (2, 3)

    def setup(self, bottom_shapes):
        x, flag = bottom_shapes[:2]
        n = x[0] if x else None
        if len(flag) < 1 or flag[0] != n or any(d != 1 for d in flag[1:]):
            raise self.error(f"bottom 1 (flag) must be (B, 1) with B = {n}, one 0/1 per sample; got shape {flag}")
        if len(x) == 4:
            if len(bottom_shapes) == 3:
                raise self.error("an image blob takes no bbox bottom (2 bottoms: images, flag)")
            self.pose = False
        elif len(x) == 2 and x[1] > 0 and x[1] % 2 == 0:
            if len(bottom_shapes) != 3 or tuple(bottom_shapes[2]) != (n, 4):
                raise self.error(f"a 2D pose (B, 2K) needs bottom 2, the crop boxes (B, 4) with B = {n}; got "
                                 f"{[tuple(s) for s in bottom_shapes[2:]] or 'none'}")
            self.pose = True
        else:
            raise self.error(f"bottom 0 must be images (B, C, H, W) or a 2D pose (B, 2K) in crop units; got shape "
                             f"{x}")

    def forward(self, x, flag, bbox=None):
        mirror = flag.reshape(-1).to(torch.bool)
        if not self.pose:
            return torch.where(mirror.view(-1, 1, 1, 1), x.flip(-1), x)
        width = (bbox[:, 2] - bbox[:, 0] + 1).to(x.dtype)
        uv = x.reshape(x.shape[0], -1, 2)
        u = torch.where(mirror.view(-1, 1), ((width - 1) / width).view(-1, 1) - uv[..., 0], uv[..., 0])
        return torch.stack([u, uv[..., 1]], dim=-1).reshape(x.shape)
