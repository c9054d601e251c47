"""Ground truth for the latent 2.5D net (memo steps 8-11, SPEC section 4): hand scale, scale-normalised
root-relative depth, 2D heatmaps and depth maps; the author's Caffe types for them (SPEC section 6), and
the small per-sample vector arithmetic his net builds the same ground truth from.

All run on the net's device in the bottoms' dtype, vectorised over the batch, and are differentiable
(autograd) where the formula is. Param block names of the author's types are the ones his layers read
(strawberryfg/RHDHand: deep_hand_model_calc_norm_scale_layer.cpp, its GenHeatmapAllChannels and GenDepthMap
sources, RHDLatentHMMapRawPaper/train.prototxt); his caffe.proto is not published, so their defaults are
the values his net uses. The new types' blocks (hand_scale_param...) are this project's.
"""

from __future__ import annotations

import torch

from layers.base import Layer, Param, Params, Shape
from layers.hand.skeleton import REF_BONE, ROOT
from layers.registry import register_layer

# The author's depth range for zr (SPEC section 4: add 3.269, multiply by 1/6.539).
DEPTH_LB, DEPTH_UB = -3.269, 3.270


def _num_joints_3d(layer: Layer, shape: Shape) -> int:
    """K for a (B, 3K) bottom of x, y, z per joint."""
    if len(shape) != 2 or shape[1] == 0 or shape[1] % 3:
        raise layer.error(f"bottom 0 (3D joints) must be (B, 3K) with x, y, z per joint, e.g. (B, 63); got shape {shape}")
    return shape[1] // 3


def _check_joint(layer: Layer, name: str, value: int, k: int) -> None:
    if not 0 <= value < k:
        raise layer.error(f"{name} = {value} is not a joint of a {k}-joint bottom (0..{k - 1})")


def _check_range(layer: Layer) -> None:
    lb, ub = layer.p.depth_lower_bound, layer.p.depth_upper_bound
    if not ub > lb:
        raise layer.error(f"depth_upper_bound ({ub:g}) must be greater than depth_lower_bound ({lb:g})")


def _check_per_sample(layer: Layer, shape: Shape, batch: int, what: str) -> None:
    """A bottom of one value per sample: (B, 1), or (B,) / (B, 1, 1, ...)."""
    if not shape or shape[0] != batch or any(d != 1 for d in shape[1:]):
        raise layer.error(f"{what} must hold one value per sample, shape ({batch}, 1); got shape {shape}")


def _to_unit(z: torch.Tensor, lb: float, ub: float) -> torch.Tensor:
    """clamp((z - lb) / (ub - lb), 0, 1)."""
    return ((z - lb) / (ub - lb)).clamp(0.0, 1.0)


# ------------------------------------------------------------------------------------------ step 8: scale

@register_layer("HandScale")
class HandScale(Layer):
    """Hand scale s = ||J_n - J_m|| per sample (memo step 8; Iqbal et al. Sec 3.1, Eq. 2).

    Bottoms: joints_3d (B, 3K) camera frame, x y z per joint (RHD: (B, 63) mm).
    Tops: scale (B, 1), in the joints' unit.
    Params (hand_scale_param): n = 8 (index MCP), m = 0 (wrist): the reference bone of SPEC section 1.
    Coinciding joints n and m give s = 0 (and a zero gradient).

    Examples::

        >>> import torch
        >>> from layers.build import make_layer
        >>> hand_scale = make_layer('type: "HandScale" bottom: "joints_3d" top: "scale"', bottom_shapes=[(1, 63)])
        >>> joints = torch.zeros(1, 21, 3)                    # 21 joints, x y z; the wrist (0) at the origin
        >>> joints[0, 8] = torch.tensor([30.0, 40.0, 0.0])    # the index MCP (8), 50 mm from the wrist
        >>> hand_scale(joints.view(1, 63)).tolist()
        [[50.0]]
    """
    params = Params("hand_scale_param", n=Param(int, REF_BONE[0]), m=Param(int, REF_BONE[1]))

    def setup(self, bottom_shapes):
        k = _num_joints_3d(self, bottom_shapes[0])
        _check_joint(self, "n", self.p.n, k)
        _check_joint(self, "m", self.p.m, k)
        if self.p.n == self.p.m:
            raise self.error(f"n and m must be different joints (both are {self.p.n})")

    def forward(self, joints_3d):
        j = joints_3d.reshape(joints_3d.shape[0], -1, 3)
        return torch.linalg.vector_norm(j[:, self.p.n] - j[:, self.p.m], dim=1, keepdim=True)


@register_layer("DeepHandModelCalcNormScale")
class DeepHandModelCalcNormScale(HandScale):
    """The author's type: the INVERSE hand scale 1 / ||J_n - J_m|| per sample (SPEC section 6).

    His net multiplies root-relative z by this top (ScaleVectorBySingleVector) to get zr = (Z - Z_root) / s.
    Bottoms: joints_3d (B, 3K).  Tops: inv_scale (B, 1), in 1 / the joints' unit.
    Params (deep_hand_model_calc_norm_scale_param): n = 8, m = 0 (his net gives no block, so these are
    his defaults).
    Differs from the original: each sample gets its own scale (the original used sample 0's joints for the
    whole batch), and the gradient flows (the original's backward was empty). Coinciding joints give inf.
    """
    params = Params("deep_hand_model_calc_norm_scale_param", n=Param(int, REF_BONE[0]), m=Param(int, REF_BONE[1]))

    def forward(self, joints_3d):
        return 1.0 / super().forward(joints_3d)


# ------------------------------------------------------------------------------------------ step 9: depth

@register_layer("NormalizedRootDepth")
class NormalizedRootDepth(Layer):
    """Scale-normalised root-relative depth (memo step 9; Iqbal et al. Sec 3.1, Eq. 2), mapped to [0, 1].

        zr_k  = (Z_k - Z_root) / s
        z01_k = clamp((zr_k - lb) / (ub - lb), 0, 1)

    Bottoms: joints_3d (B, 3K) camera frame; scale (B, 1) = s from HandScale (same unit as the joints).
    Tops: z01 (B, K) in [0, 1] (the depth target the maps use); optional second top zr (B, K), unclamped
    (what GenDepthMap and the root-depth solver take).
    Params (normalized_root_depth_param): root_joint_id = 0 (wrist), depth_lower_bound = -3.269,
    depth_upper_bound = 3.270 (the author's range: his net adds 3.269 and multiplies by 1/6.539).
    Replaces the author's chain Slice / ScaleVector(-1) / AddVectorBySingleVector / ScaleVectorBySingleVector
    (by 1/s) / AddVectorByConstant(3.269) / ScaleVector(1/6.539). z01's gradient is 0 where it is clamped.

    Examples::

        >>> import torch
        >>> from layers.build import make_layer
        >>> depth = make_layer('type: "NormalizedRootDepth" bottom: "joints_3d" bottom: "scale" top: "z01" top: "zr" '
        ...                    'normalized_root_depth_param { depth_lower_bound: -1 depth_upper_bound: 1 }',
        ...                    bottom_shapes=[(1, 6), (1, 1)])
        >>> z01, zr = depth(torch.tensor([[0.0, 0.0, 500.0, 0.0, 0.0, 525.0]]), torch.tensor([[50.0]]))
        >>> zr.tolist(), z01.tolist()   # zr = (Z - Z_root) / s;  z01 = (zr - -1) / (1 - -1)
        ([[0.0, 0.5]], [[0.5, 0.75]])
    """
    params = Params("normalized_root_depth_param", root_joint_id=Param(int, ROOT),
                    depth_lower_bound=Param(float, DEPTH_LB), depth_upper_bound=Param(float, DEPTH_UB))
    num_bottoms = 2
    num_tops = (1, 2)

    def setup(self, bottom_shapes):
        joints, scale = bottom_shapes
        k = _num_joints_3d(self, joints)
        _check_per_sample(self, scale, joints[0], "bottom 1 (scale)")
        _check_joint(self, "root_joint_id", self.p.root_joint_id, k)
        _check_range(self)

    def forward(self, joints_3d, scale):
        b = joints_3d.shape[0]
        z = joints_3d.reshape(b, -1, 3)[..., 2]
        r = self.p.root_joint_id
        zr = (z - z[:, r:r + 1]) / scale.reshape(b, 1)
        z01 = _to_unit(zr, self.p.depth_lower_bound, self.p.depth_upper_bound)
        return z01 if self.num_top_blobs == 1 else (z01, zr)


# ------------------------------------------------------------------------------------------ step 10: heatmaps

@register_layer("GenHeatmap")
class GenHeatmap(Layer):
    """Gaussian 2D heatmaps, peak 1, one per joint (memo step 10; SPEC section 4):

        H_k(r, c) = exp(-((c/S - u'_k)^2 + (r/S - v'_k)^2) / (2 sigma^2))

    pixel (r, c) sits at (c/S, r/S) (the author's convention, not (c + 0.5)/S), so a joint at u' = c/S
    peaks exactly on column c. Computed as the outer product of two 1-D Gaussians (rows x columns), both
    evaluated in one pass.
    Bottoms: joints_2d (B, 2K), u' v' per joint in crop units ([0, 1] inside the crop).
    Tops: heatmaps (B, K, S, S).
    Params (gen_heatmap_param): gen_size S = 64, render_sigma = 0.08 (in crop units: 0.08 * 64 = 5.12 px).
    Differentiable in the 2D input.

    Examples::

        >>> import torch
        >>> from layers.build import make_layer
        >>> gen = make_layer('type: "GenHeatmap" bottom: "uv" top: "heatmaps" gen_heatmap_param { gen_size: 4 }',
        ...                  bottom_shapes=[(1, 2)])
        >>> h = gen(torch.tensor([[0.75, 0.25]]))    # one joint at u' = 3 / 4, v' = 1 / 4
        >>> h.shape, (h == h.max()).nonzero().tolist()   # peak 1 at row 1, column 3
        (torch.Size([1, 1, 4, 4]), [[0, 0, 1, 3]])
    """
    params = Params("gen_heatmap_param", gen_size=Param(int, 64), render_sigma=Param(float, 0.08))

    def setup(self, bottom_shapes):
        shape = bottom_shapes[0]
        if len(shape) != 2 or shape[1] == 0 or shape[1] % 2:
            raise self.error(f"bottom must be (B, 2K) with u, v per joint, e.g. (B, 42); got shape {shape}")
        if self.p.gen_size < 1:
            raise self.error(f"gen_size must be positive, got {self.p.gen_size}")
        if not self.p.render_sigma > 0:
            raise self.error(f"render_sigma must be positive, got {self.p.render_sigma:g}")

    def forward(self, joints_2d):
        s = self.p.gen_size
        uv = joints_2d.reshape(joints_2d.shape[0], -1, 2, 1)
        grid = torch.arange(s, device=uv.device, dtype=uv.dtype) / s              # (S,)
        k = -0.5 / self.p.render_sigma ** 2
        d = grid - uv                        # (B, K, 2, S): column offsets (u), then row offsets (v)
        if d.requires_grad:
            g = torch.exp(d.square() * k)
        else:                                # no graph to keep: in place, one buffer for both axes
            g = d.square_().mul_(k).exp_()
        return torch.mul(g[:, :, 1, :, None], g[:, :, 0, None, :])


@register_layer("DeepHandModelGenHeatmapAllChannels")
class DeepHandModelGenHeatmapAllChannels(GenHeatmap):
    """The author's type for GenHeatmap: the same heatmaps (B, K, S, S) from (B, 2K) (SPEC section 6).

    Params (deep_hand_model_gen_heatmap_all_channels_param): gen_size = 64, render_sigma = 0.08 (his net's
    values). Same as the original's forward; the original computed in float whatever the blob dtype.
    """
    params = Params("deep_hand_model_gen_heatmap_all_channels_param", gen_size=Param(int, 64),
                    render_sigma=Param(float, 0.08))


# ------------------------------------------------------------------------------------------ step 11: depth maps

@register_layer("GenDepthMap")
class GenDepthMap(Layer):
    """Ground-truth depth maps (memo step 11; Iqbal et al. Sec 4.1, Eq. 12 baseline; SPEC section 4):

        D_k = H_k * clamp((z_k - lb) / (ub - lb), 0, 1)

    Bottoms: heatmaps (B, K, H, W) (GenHeatmap's top); depth z (B, K) in zr units, the scale-normalised
    root-relative depth (NormalizedRootDepth's second top). With depth_lower_bound 0 and
    depth_upper_bound 1 it takes an already mapped z01 (NormalizedRootDepth's first top) instead.
    Tops: depth_maps (B, K, H, W).
    Params (gen_depth_map_param): depth_lower_bound = -3.269, depth_upper_bound = 3.270 (the author's range).
    Differentiable in both bottoms (in z only where it is not clamped).
    """
    params = Params("gen_depth_map_param", depth_lower_bound=Param(float, DEPTH_LB),
                    depth_upper_bound=Param(float, DEPTH_UB))
    num_bottoms = 2

    def setup(self, bottom_shapes):
        maps, depth = bottom_shapes
        if len(maps) != 4:
            raise self.error(f"bottom 0 (heatmaps) must be (B, K, H, W); got shape {maps}")
        if tuple(depth) != tuple(maps[:2]):
            raise self.error(f"bottom 1 (depth) must be (B, K) = {tuple(maps[:2])} to match the heatmaps "
                             f"{tuple(maps)}; got shape {depth}")
        _check_range(self)

    def forward(self, heatmaps, depth):
        z01 = _to_unit(depth, self.p.depth_lower_bound, self.p.depth_upper_bound)
        return heatmaps * z01[..., None, None]


@register_layer("DeepHandModelGenDepthMap")
class DeepHandModelGenDepthMap(GenDepthMap):
    """The author's type for GenDepthMap, with his semantics: D_k = H_k * clamp((z_k - lb)/(ub - lb), 0, 1).

    His net feeds it z already mapped to [0, 1] (z01) with lb = 0, ub = 1, which are the defaults here.
    Bottoms: heatmaps (B, K, S, S); depth (B, K).  Tops: depth_maps (B, K, S, S).
    Params (deep_hand_model_gen_depth_map_param): map_size = 64, joint_num = 21, depth_lower_bound = 0,
    depth_upper_bound = 1. The top's shape comes from the heatmaps; map_size and joint_num, when given,
    must match them (the original took K from the depth bottom and S from map_size without checking,
    reading out of bounds on a mismatch).
    """
    params = Params("deep_hand_model_gen_depth_map_param", map_size=Param(int, 64), joint_num=Param(int, 21),
                    depth_lower_bound=Param(float, 0.0), depth_upper_bound=Param(float, 1.0))

    def setup(self, bottom_shapes):
        super().setup(bottom_shapes)
        _, k, h, w = bottom_shapes[0]
        if self.p.has("map_size") and (h, w) != (self.p.map_size,) * 2:
            raise self.error(f"map_size {self.p.map_size} does not match the heatmaps' {h}x{w}")
        if self.p.has("joint_num") and k != self.p.joint_num:
            raise self.error(f"joint_num {self.p.joint_num} does not match the bottoms' {k} joints")


# ------------------------------------------------------------------------------------------ vector arithmetic

class _VectorLayer(Layer):
    """The author's (B, N) vector layers: top (B, N), bottom 1 (if any) one value per sample."""

    def setup(self, bottom_shapes):
        x = bottom_shapes[0]
        if len(x) != 2:
            raise self.error(f"bottom 0 must be a (B, N) vector blob; got shape {x}")
        if len(bottom_shapes) == 2:
            _check_per_sample(self, bottom_shapes[1], x[0], "bottom 1")


@register_layer("AddVectorBySingleVector")
class AddVectorBySingleVector(_VectorLayer):
    """y[b, i] = x[b, i] + a[b]: adds each sample's own value to its whole vector (SPEC section 6).

    Bottoms: x (B, N); a (B, 1).  Tops: y (B, N).  Params: none.
    """
    num_bottoms = 2

    def forward(self, x, a):
        return x + a.reshape(-1, 1)


@register_layer("ScaleVectorBySingleVector")
class ScaleVectorBySingleVector(_VectorLayer):
    """y[b, i] = x[b, i] * a[b]: scales each sample's vector by its own value (SPEC section 6).

    Bottoms: x (B, N); a (B, 1).  Tops: y (B, N).  Params: none.
    The gradient w.r.t. a is sum_i x[b, i] dy[b, i] (the original's backward wrote it at a[b + i]).
    """
    num_bottoms = 2

    def forward(self, x, a):
        return x * a.reshape(-1, 1)


@register_layer("AddVectorByConstant")
class AddVectorByConstant(_VectorLayer):
    """y = x + add_value (SPEC section 6).

    Bottoms: x (B, N).  Tops: y (B, N).  Params (add_vector_by_constant_param): add_value = 0.
    """
    params = Params("add_vector_by_constant_param", add_value=Param(float, 0.0))

    def forward(self, x):
        return x + self.p.add_value


@register_layer("ScaleVector")
class ScaleVector(_VectorLayer):
    """y = x * scale_factor (SPEC section 6).

    Bottoms: x (B, N).  Tops: y (B, N).  Params (scale_vector_param): scale_factor = 1.
    """
    params = Params("scale_vector_param", scale_factor=Param(float, 1.0))

    def forward(self, x):
        return x * self.p.scale_factor
