"""The latent 2.5D head (memo steps 13-15; Iqbal et al. Sec 4, Fig. 1; SPEC section 4): normalised heatmaps and
their soft-argmax 2D expectation, and the latent depth read through them; the author's Caffe types for the
same steps (SPEC section 6).

Pixel (r, c) of an H x W map sits at (c / W, r / H) in crop units, the convention of GenHeatmap (a heatmap
peaking on column c gives u' = c / W exactly) and of the author's NumericalCoordinateRegression.

All layers run on the bottoms' device in their dtype, vectorised over the batch, differentiable (autograd).
Step 13 (slicing the net's 42 channels into 21 heatmaps and 21 depth maps) is Caffe's Slice layer.
The author's sources: EltAddChannels (strawberryfg/Senorita-HANDS19-Pose, operations/elt_add_channels_layer.cpp
and its caffe.proto: dim_lb, dim_ub default 0), NumericalCoordinateRegression (his DeepHumanModel version in
strawberryfg/c2f-3dhm-human-caffe; the hand version is not published), and the RawPaper net's wiring
(strawberryfg/RHDHand). His DeepHandModelNormalizationResponse source is not published: SPEC's "divide each
channel by its sum" is what it does here.
"""

from __future__ import annotations

import torch

from layers.base import FILLER, Layer, Param, Params, Shape
from layers.hand.ground_truth import DEPTH_LB, DEPTH_UB, _check_range
from layers.registry import register_layer

SUM_EPS = 1e-12   # SUM normalisation divides by max(sum, SUM_EPS): an all-zero map gives zeros, never NaN


def _check_maps(layer: Layer, shape: Shape, what: str = "bottom 0 (heatmaps)") -> None:
    if len(shape) != 4 or 0 in shape:
        raise layer.error(f"{what} must be (B, K, H, W) maps; got shape {shape}")


def sum_normalise(maps: torch.Tensor) -> torch.Tensor:
    """maps / (sum over each map's pixels), the sum floored at SUM_EPS."""
    return maps / maps.sum(dim=(-2, -1), keepdim=True).clamp_min(SUM_EPS)


def expectation_2d(weights: torch.Tensor) -> torch.Tensor:
    """(B, K, H, W) pixel weights -> (B, 2K): u'_k = sum_p w(p) c_p / W, v'_k = sum_p w(p) r_p / H, interleaved."""
    h, w = weights.shape[-2:]
    cols = torch.arange(w, device=weights.device, dtype=weights.dtype) / w
    rows = torch.arange(h, device=weights.device, dtype=weights.dtype) / h
    u = (weights.sum(dim=-2) * cols).sum(dim=-1)     # column marginal (B, K, W)
    v = (weights.sum(dim=-1) * rows).sum(dim=-1)     # row marginal (B, K, H)
    return torch.stack([u, v], dim=-1).flatten(1)


# ------------------------------------------------------------------------------------------ step 14: soft-argmax

@register_layer("SoftArgmax")
class SoftArgmax(Layer):
    """Normalised heatmaps and their 2D expectation (memo step 14; Iqbal et al. Sec 4, Eq. 7-8):

        SOFTMAX (the paper):  Hn_k(p) = exp(beta_k H_k(p)) / sum_q exp(beta_k H_k(q))   (learnable beta, (K,))
        SUM (the author's):   Hn_k(p) = g(H_k(p)) / sum_q g(H_k(q)),  g = sigmoid, or identity if sigmoid: false
        u'_k = sum_p Hn_k(p) c_p / W,   v'_k = sum_p Hn_k(p) r_p / H      (pixel p at row r_p, column c_p)

    Bottoms: heatmaps (B, K, H, W), raw net output.
    Tops: normalised heatmaps (B, K, H, W) (each map sums to 1; LatentDepth's first bottom), and the 2D pose
    (B, 2K) in crop units, u'0 v'0 u'1 v'1 ... (a heatmap peaking at column c, row r gives (c / W, r / H)).
    Params (soft_argmax_param): normalization = SOFTMAX (SOFTMAX | SUM); beta_filler (SOFTMAX only; default
    constant 1) fills the blob `beta` (K,); sigmoid = true (SUM only; false for maps that are already
    non-negative, such as a Sigmoid layer's top).
    The softmax is computed stably (max-shifted, i.e. exp(x - logsumexp x)). In SUM mode each map's sum is
    floored at 1e-12, so an all-zero map (sigmoid: false) gives all-zero weights and u' = v' = 0, not NaN; the
    maps must be non-negative there.

    Examples::

        >>> import torch
        >>> from layers.build import make_layer
        >>> soft_argmax = make_layer('type: "SoftArgmax" bottom: "h" top: "hn" top: "uv"', bottom_shapes=[(1, 1, 4, 4)])
        >>> h = torch.zeros(1, 1, 4, 4)
        >>> h[0, 0, 1, 3] = 100.0                 # a sharp peak at row 1, column 3 of a 4 x 4 map
        >>> hn, uv = soft_argmax(h)
        >>> uv.round(decimals=4).tolist()         # (u', v') = (3 / 4, 1 / 4)
        [[0.75, 0.25]]
    """
    params = Params("soft_argmax_param", normalization=Param(("SOFTMAX", "SUM"), "SOFTMAX"), beta_filler=Param(FILLER),
                    sigmoid=Param(bool, True))
    num_tops = 2

    def setup(self, bottom_shapes):
        _check_maps(self, bottom_shapes[0])
        softmax = self.p.normalization == "SOFTMAX"
        if softmax and self.p.has("sigmoid"):
            raise self.error("sigmoid applies to normalization: SUM only (SOFTMAX normalises raw scores)")
        if not softmax and self.p.has("beta_filler"):
            raise self.error("beta_filler applies to normalization: SOFTMAX only (SUM has no beta)")
        if softmax:
            filler = self.p.beta_filler if self.p.has("beta_filler") else None
            self.add_blob("beta", (bottom_shapes[0][1],), filler, value=1.0)

    def forward(self, heatmaps):
        if self.p.normalization == "SOFTMAX":
            logits = heatmaps.flatten(2) * self.beta.to(heatmaps.dtype)[:, None]
            norm = torch.softmax(logits, dim=-1).view_as(heatmaps)
        else:
            norm = sum_normalise(torch.sigmoid(heatmaps) if self.p.sigmoid else heatmaps)
        return norm, expectation_2d(norm)


# ------------------------------------------------------------------------------------------ step 15: latent depth

@register_layer("LatentDepth")
class LatentDepth(Layer):
    """Scale-normalised root-relative depth read from the latent depth maps (memo step 15; Iqbal et al. Sec 4):

        z01_k = sum_p Hn_k(p) D_k(p)         zr_k = z01_k (ub - lb) + lb

    Bottoms: normalised heatmaps Hn (B, K, H, W) (SoftArgmax's first top); latent depth maps D (B, K, H, W)
    (the net's depth channels, e.g. after a Sigmoid, so z01 lies in [0, 1]).
    Tops: zr (B, K), the scale-normalised root-relative depth; optional second top z01 (B, K), the value
    before the mapping (what the maps encode; compare it with NormalizedRootDepth's z01).
    Params (latent_depth_param): depth_lower_bound = -3.269, depth_upper_bound = 3.270 (the names and the
    author's range of GenDepthMap / NormalizedRootDepth). Not clamped: differentiable everywhere.

    Examples::

        >>> import torch
        >>> from layers.build import make_layer
        >>> latent = make_layer('type: "LatentDepth" bottom: "hn" bottom: "d" top: "zr" top: "z01" '
        ...                     'latent_depth_param { depth_lower_bound: -1 depth_upper_bound: 1 }',
        ...                     bottom_shapes=[(1, 1, 2, 2), (1, 1, 2, 2)])
        >>> hn, d = torch.full((1, 1, 2, 2), 0.25), torch.tensor([[[[0.0, 1.0], [1.0, 1.0]]]])   # uniform Hn; D
        >>> [top.tolist() for top in latent(hn, d)]   # zr = z01 * (1 - -1) + -1, z01 = sum Hn D = 3 / 4
        [[[0.5]], [[0.75]]]
    """
    params = Params("latent_depth_param", depth_lower_bound=Param(float, DEPTH_LB),
                    depth_upper_bound=Param(float, DEPTH_UB))
    num_bottoms = 2
    num_tops = (1, 2)

    def setup(self, bottom_shapes):
        maps, depth = bottom_shapes
        _check_maps(self, maps, "bottom 0 (normalised heatmaps)")
        if tuple(depth) != tuple(maps):
            raise self.error(f"bottom 1 (depth maps) must have the heatmaps' shape {tuple(maps)}; got shape {depth}")
        _check_range(self)

    def forward(self, norm_heatmaps, depth_maps):
        z01 = (norm_heatmaps * depth_maps).sum(dim=(-2, -1))
        lb, ub = self.p.depth_lower_bound, self.p.depth_upper_bound
        zr = z01 * (ub - lb) + lb
        return zr if self.num_top_blobs == 1 else (zr, z01)


# ------------------------------------------------------------------------------------------ the author's types

@register_layer("EltAddChannels")
class EltAddChannels(Layer):
    """The author's channel sum (SPEC section 6): top[b, 0] = sum_{c = dim_lb..dim_ub} bottom[b, c] (inclusive).

    His RawPaper net reshapes each joint's product map Hn * D to (B, H*W, 1, 1) and sums channels 0..H*W-1 with
    it: LatentDepth's z01 in 21 layers per joint (plus Slice, Reshape, Flatten, Concat).
    Bottoms: x (B, C, ...) (the original: (B, C, H, W)).  Tops: (B, 1, ...).
    Params (elt_add_channels_param): dim_lb = 0, dim_ub = 0 (his caffe.proto's defaults).
    Differs from the original: a range outside the bottom's channels is an error (the original summed only the
    channels that exist, silently giving zeros for an empty range).
    """
    params = Params("elt_add_channels_param", dim_lb=Param(int, 0), dim_ub=Param(int, 0))

    def setup(self, bottom_shapes):
        shape = bottom_shapes[0]
        if len(shape) < 2:
            raise self.error(f"bottom must have a channel axis, (B, C, ...); got shape {shape}")
        lb, ub, c = self.p.dim_lb, self.p.dim_ub, shape[1]
        if not 0 <= lb <= ub < c:
            raise self.error(f"channel range dim_lb..dim_ub = {lb}..{ub} must satisfy 0 <= dim_lb <= dim_ub < {c} "
                             f"(the bottom's channels)")

    def forward(self, x):
        return x[:, self.p.dim_lb:self.p.dim_ub + 1].sum(dim=1, keepdim=True)


@register_layer("DeepHandModelNormalizationResponse")
class DeepHandModelNormalizationResponse(Layer):
    """The author's map normalisation (SPEC section 6): Hn_k(p) = H_k(p) / sum_q H_k(q), each (b, k) map alone.

    His net feeds it the Sigmoid of the heatmap channels: SoftArgmax with normalization: SUM, sigmoid: false.
    Bottoms: maps (B, K, H, W), non-negative.  Tops: normalised maps (B, K, H, W).  Params: none.
    A map whose sum is below 1e-12 is divided by 1e-12 (an all-zero map stays zero, not NaN).
    """

    def setup(self, bottom_shapes):
        _check_maps(self, bottom_shapes[0])

    def forward(self, maps):
        return sum_normalise(maps)


@register_layer("DeepHandModelNumericalCoordinateRegression")
class DeepHandModelNumericalCoordinateRegression(Layer):
    """The author's soft-argmax expectation (SPEC section 6), SoftArgmax's second top:
    u'_k = sum_p Hn_k(p) c_p / W, v'_k = sum_p Hn_k(p) r_p / H.

    Bottoms: normalised maps (B, K, H, W).  Tops: 2D pose (B, 2K) in [0, 1], u'0 v'0 u'1 v'1 ...  Params: none.
    Differs from the original (his DeepHumanModel version, the published one): non-square maps use W for u and
    H for v (the original took S = H for both), and the gradient reaches every channel (the original's backward
    wrote all channels' gradients over channel 0's first map).
    """

    def setup(self, bottom_shapes):
        _check_maps(self, bottom_shapes[0])

    def forward(self, maps):
        return expectation_2d(maps)
