"""Training-time augmentation of hand crops: one random similarity transform and colour gain per sample, applied
to the crop and its 2D pose together."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from layers.base import Layer, Param, Params
from layers.registry import register_layer


@register_layer("HandAugment")
class HandAugment(Layer):
    """TRAIN: rotate, scale and shift each crop about its centre, and scale its colours; the 2D pose moves with
    the pixels. TEST: the identity (like Dropout).

    Per sample b, drawn from torch's RNG (so a solver snapshot resumes the same draws):
        theta ~ U(-max_rotation, max_rotation) degrees, s = exp(U(-ln(1 + max_scale), ln(1 + max_scale))),
        t ~ U(-max_shift, max_shift)^2 (crop units), gain_c = g * (1 + U(-max_channel_gain, max_channel_gain))
        with g ~ U(1 - max_brightness, 1 + max_brightness), one per colour channel c.
    In edge coordinates e of the crop (0 and 1 are its borders), a point goes to e' = c + s R(theta) (e - c) + t,
    c = (0.5, 0.5), R the rotation in image axes (x right, y down). The 2D pose is in the readers' crop units,
    pixel centres at u' = k / w for a box w = x2 - x1 + 1 pixels wide (HandMirror's convention), so
    e = u' + 0.5 / w. Output pixels are bilinear samples of the input at the inverse map; pixels from outside the
    crop take pad_value (the converter pads with 128). The colour gains multiply the warped pixels (no clamp).
    The relative depths zr are unchanged by a rotation about the crop centre and a zoom (to the paper's
    approximation of the crop centre as the optical axis), so depth targets need no change.
    Bottoms: images (B, C, S, S), square; 2D pose (B, 2K) in crop units; bbox (B, 4) x1, y1, x2, y2.
    Tops: images (B, C, S, S), 2D pose (B, 2K).
    Params (hand_augment_param): max_rotation = 0 (degrees), max_scale = 0, max_shift = 0 (crop units),
    max_brightness = 0, max_channel_gain = 0, pad_value = 0. All zero: the identity in TRAIN too.
    Gradients: none to the pose or the box (data); the images' flow through the warp.

    Examples::

        >>> import torch
        >>> from layers.build import make_layer
        >>> aug = make_layer('type: "HandAugment" bottom: "im" bottom: "uv" bottom: "box" top: "im2" top: "uv2" '
        ...                  'hand_augment_param { max_rotation: 30 }', bottom_shapes=[(1, 3, 8, 8), (1, 2), (1, 4)])
        >>> im2, uv2 = aug(torch.ones(1, 3, 8, 8), torch.tensor([[0.4375, 0.4375]]), torch.tensor([[0., 0, 7, 7]]))
        >>> [round(v, 4) for v in uv2[0].tolist()]     # the crop's centre stays where it is
        [0.4375, 0.4375]
    """
    params = Params("hand_augment_param", max_rotation=Param(float, 0.0), max_scale=Param(float, 0.0),
                    max_shift=Param(float, 0.0), max_brightness=Param(float, 0.0),
                    max_channel_gain=Param(float, 0.0), pad_value=Param(float, 0.0))
    num_bottoms = 3
    num_tops = 2

    def setup(self, bottom_shapes):
        images, pose, bbox = (tuple(s) for s in bottom_shapes)
        if len(images) != 4 or images[2] != images[3]:
            raise self.error(f"bottom 0 must be square images (B, C, S, S); got shape {images}")
        n = images[0]
        if len(pose) != 2 or pose[0] != n or pose[1] % 2:
            raise self.error(f"bottom 1 must be a 2D pose (B, 2K) with B = {n}; got shape {pose}")
        if bbox != (n, 4):
            raise self.error(f"bottom 2 must be the crop boxes (B, 4) with B = {n}; got shape {bbox}")
        p = self.p
        for name in ("max_rotation", "max_scale", "max_shift", "max_brightness", "max_channel_gain"):
            if getattr(p, name) < 0:
                raise self.error(f"{name} must be >= 0, got {getattr(p, name)}")
        if p.max_brightness >= 1 or p.max_channel_gain >= 1:
            raise self.error("max_brightness and max_channel_gain must be < 1 (a gain must stay positive)")

    def infer_top_shapes(self, bottom_shapes):
        return [tuple(bottom_shapes[0]), tuple(bottom_shapes[1])]

    def draw(self, n: int, channels: int):
        """The random parameters of n samples: angle (rad), scale, shift (n, 2), colour gain (n, channels)."""
        p = self.p

        def uniform(*shape, bound):
            return (torch.rand(*shape, dtype=torch.float64) * 2 - 1) * bound
        angle = uniform(n, bound=math.radians(p.max_rotation))
        scale = torch.exp(uniform(n, bound=math.log1p(p.max_scale)))
        shift = uniform(n, 2, bound=p.max_shift)
        gain = (1 + uniform(n, 1, bound=p.max_brightness)) * (1 + uniform(n, channels, bound=p.max_channel_gain))
        return angle, scale, shift, gain

    def forward(self, images, pose, bbox):
        if self.phase != "TRAIN":
            return images, pose
        n, channels = images.shape[:2]
        angle, scale, shift, gain = self.draw(n, channels)
        cos, sin = torch.cos(angle), torch.sin(angle)
        rot = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)     # (n, 2, 2)
        forward_map = scale.view(n, 1, 1) * rot                                                  # e - c -> e' - c
        # the sampling grid: output pixel q (in [-1, 1], align_corners=False) reads input A^-1 (q - 2 t),
        # A^-1 = R^T / s
        inverse = rot.transpose(1, 2) / scale.view(n, 1, 1)
        theta = torch.cat([inverse, -(inverse @ (2 * shift).unsqueeze(-1))], dim=-1)
        # drawn on the CPU (torch's CPU RNG, in solver snapshots); used where the blobs are
        grid = F.affine_grid(theta.to(images.device, images.dtype), list(images.shape), align_corners=False)
        pad = self.p.pad_value
        warped = F.grid_sample(images - pad if pad else images, grid, mode="bilinear", padding_mode="zeros",
                               align_corners=False)
        gain = gain.to(images.device, images.dtype).view(n, channels, 1, 1)
        warped = torch.addcmul(pad * gain, warped, gain) if pad else warped * gain

        half_pixel = 0.5 / torch.stack([bbox[:, 2] - bbox[:, 0] + 1, bbox[:, 3] - bbox[:, 1] + 1], -1).double()
        e = pose.detach().double().reshape(n, -1, 2) + half_pixel.unsqueeze(1)
        forward_map, shift = forward_map.to(e.device), shift.to(e.device)
        moved = 0.5 + (e - 0.5) @ forward_map.transpose(1, 2) + shift.unsqueeze(1) - half_pixel.unsqueeze(1)
        return warped, moved.reshape(pose.shape).to(pose.dtype)
