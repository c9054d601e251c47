"""3D reconstruction from the 2.5D pose (memo steps 16-19; Iqbal et al. Sec 3.2-3.3; SPEC section 4): back to the
original image, the scale-normalised root depth, scale recovery, camera-frame 3D; the author's Caffe types for
the same steps (SPEC section 6).

Notation: u, v pixels in the original image; (fx, fy, u0, v0) the camera (ReadCameraIntrinsics' top);
x_k = (u_k - u0) / fx, y_k = (v_k - v0) / fy the K^-1-normalised image coordinates; zr_k = (Z_k - Z_root) / s the
scale-normalised root-relative depth (LatentDepth's top). A joint at scale-normalised depth Zn_k lies at
Zn_k (x_k, y_k, 1); times the hand scale s it is the camera-frame point in mm.

The graph of memo steps 16-19 (bottoms' names are examples):
    CropToImage(joints_crop, bbox)                          -> joints_2d  (pixels)
    RootDepth(joints_2d, zr, intrinsics)                    -> zroot
    Reconstruct3D(joints_2d, zr, zroot, intrinsics)         -> joints_norm (scale-normalised 3D)
    ScaleRecovery(joints_norm, avg_bone)                    -> scale
    Reconstruct3D(joints_2d, zr, zroot, intrinsics, scale)  -> joints_3d (mm)    (or ScaleVectorBySingleVector)

All layers run on the bottoms' device in their dtype, vectorised over the batch, differentiable (autograd) where
the formula is. The author's types take the camera as four (B, 1) bottoms fx, fy, u0, v0, in his order (his
sources: strawberryfg/RHDHand, deep_hand_model_solve_*_layer.cpp, and RHDLatentHMMapRawPaper/train.prototxt).
"""

from __future__ import annotations

import torch

from layers.base import Layer, Param, Params, Shape
from layers.hand.ground_truth import _check_joint, _check_per_sample
from layers.hand.skeleton import BONES, NUM_BONES, NUM_JOINTS, REF_BONE
from layers.registry import register_layer

_BONE_A = [a for a, _ in BONES]
_BONE_B = [b for _, b in BONES]


def _num_joints_2d(layer: Layer, shape: Shape, what: str) -> int:
    if len(shape) != 2 or shape[1] == 0 or shape[1] % 2:
        raise layer.error(f"{what} must be (B, 2K) with u, v per joint, e.g. (B, 42); got shape {shape}")
    return shape[1] // 2


def _check_shape(layer: Layer, shape: Shape, want: Shape, what: str) -> None:
    if tuple(shape) != tuple(want):
        raise layer.error(f"{what} must be {_show(want)}; got shape {tuple(shape)}")


def _show(shape: Shape) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


def _check_2d_and_depth(layer: Layer, shapes: list[Shape]) -> int:
    """Bottoms 0-1: joints_2d (B, 2K), zr (B, K). Returns K."""
    k = _num_joints_2d(layer, shapes[0], "bottom 0 (2D joints)")
    _check_shape(layer, shapes[1], (shapes[0][0], k), "bottom 1 (zr), one depth per joint of bottom 0,")
    return k


def _camera_xy(joints_2d: torch.Tensor, intrinsics: torch.Tensor):
    """(x, y), each (B, K): K^-1-normalised image coordinates of pixels joints_2d (B, 2K)."""
    uv = joints_2d.reshape(joints_2d.shape[0], -1, 2)
    fx, fy, u0, v0 = intrinsics.reshape(-1, 4).unbind(dim=1)
    return (uv[..., 0] - u0[:, None]) / fx[:, None], (uv[..., 1] - v0[:, None]) / fy[:, None]


def _intrinsics_of(fx, fy, u0, v0) -> torch.Tensor:
    """The author's four (B, 1) camera bottoms -> (B, 4)."""
    return torch.cat([t.reshape(-1, 1) for t in (fx, fy, u0, v0)], dim=1)


# ------------------------------------------------------------------------------------------ step 16

def _crop_frame(bbox: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 4) x1 y1 x2 y2 -> the crop's origin and size, each (B, 1, 2); the size is x2 - x1 + 1 (inclusive)."""
    x1, y1, x2, y2 = bbox.unbind(dim=1)
    origin = torch.stack([x1, y1], dim=1)[:, None, :]
    size = torch.stack([x2 - x1 + 1, y2 - y1 + 1], dim=1)[:, None, :]
    return origin, size


@register_layer("CropToImage")
class CropToImage(Layer):
    """2D joints from crop units back to original-image pixels (memo step 16; SPEC section 4):

        u = u' (x2 - x1 + 1) + x1,    v = v' (y2 - y1 + 1) + y1

    the inverse of the converter's crop_gt_2d (u' = (u - x1) / (x2 - x1 + 1)).
    Bottoms: joints (B, 2K) u' v' per joint in crop units; bbox (B, 4) x1 y1 x2 y2 (ReadBBox's top).
    Tops: joints_2d (B, 2K) pixels.  Params: none.
    The author's net did this with ScaleVectorBySingleVector / AddVectorBySingleVector and a width of x2 - x1,
    one pixel short of the crop his layout defines.

    Examples::

        >>> import torch
        >>> from layers.build import make_layer
        >>> to_image = make_layer('type: "CropToImage" bottom: "uv_crop" bottom: "bbox" top: "uv"',
        ...                       bottom_shapes=[(1, 2), (1, 4)])
        >>> bbox = torch.tensor([[100.0, 50.0, 199.0, 149.0]])   # x1 y1 x2 y2: a 100 x 100 crop at (100, 50)
        >>> to_image(torch.tensor([[0.5, 0.25]]), bbox).tolist()   # u = 0.5 * 100 + 100, v = 0.25 * 100 + 50
        [[150.0, 75.0]]
    """
    num_bottoms = 2

    def setup(self, bottom_shapes):
        joints, bbox = bottom_shapes
        _num_joints_2d(self, joints, "bottom 0 (crop joints)")
        _check_shape(self, bbox, (joints[0], 4), "bottom 1 (bbox) x1, y1, x2, y2 per sample")

    def forward(self, joints, bbox):
        origin, size = _crop_frame(bbox)
        return (joints.reshape(joints.shape[0], -1, 2) * size + origin).flatten(1)


@register_layer("ImageToCrop")
class ImageToCrop(Layer):
    """2D joints from original-image pixels to crop units, the inverse of CropToImage (the converter's rule):

        u' = (u - x1) / (x2 - x1 + 1),    v' = (v - y1) / (y2 - y1 + 1)

    Bottoms: joints_2d (B, 2K) pixels; bbox (B, 4) x1 y1 x2 y2.  Tops: joints (B, 2K) crop units.  Params: none.
    """
    num_bottoms = 2

    def setup(self, bottom_shapes):
        joints, bbox = bottom_shapes
        _num_joints_2d(self, joints, "bottom 0 (pixel joints)")
        _check_shape(self, bbox, (joints[0], 4), "bottom 1 (bbox) x1, y1, x2, y2 per sample")

    def forward(self, joints, bbox):
        origin, size = _crop_frame(bbox)
        return ((joints.reshape(joints.shape[0], -1, 2) - origin) / size).flatten(1)


@register_layer("ProjectToImage")
class ProjectToImage(Layer):
    """Pinhole projection of camera-frame joints: u = fx X / Z + u0, v = fy Y / Z + v0.

    Bottoms: joints_3d (B, 3K) X Y Z per joint (any unit); intrinsics (B, 4) fx, fy, u0, v0.
    Tops: joints_2d (B, 2K) pixels.  Params: none.
    """
    num_bottoms = 2

    def setup(self, bottom_shapes):
        joints, intrinsics = bottom_shapes
        if len(joints) != 2 or joints[1] == 0 or joints[1] % 3:
            raise self.error(f"bottom 0 must be (B, 3K) with X, Y, Z per joint; got shape {tuple(joints)}")
        _check_shape(self, intrinsics, (joints[0], 4), "bottom 1 (intrinsics) fx, fy, u0, v0 per sample")

    def forward(self, joints, intrinsics):
        xyz = joints.reshape(joints.shape[0], -1, 3)
        fx, fy, u0, v0 = (t[:, None] for t in intrinsics.unbind(dim=1))
        u = fx * xyz[..., 0] / xyz[..., 2] + u0
        v = fy * xyz[..., 1] / xyz[..., 2] + v0
        return torch.stack([u, v], dim=-1).flatten(1)


# ------------------------------------------------------------------------------------------ step 17

# Per-sample outcome of RootDepth (its optional status top, RootDepth.sample_status): codes and names.
ROOT_OK = 0                # one positive root in [min_depth, max_depth] (c < 0, or c = 0 and b < 0)
ROOT_AMBIGUOUS = 1         # both roots positive (c > 0, b < 0): the larger one taken, in range
ROOT_NO_REAL_ROOT = 2      # b^2 - 4ac < 0: the vertex -b / (2a), then bounded
ROOT_BEHIND_CAMERA = 3     # the larger root <= 0 (c >= 0, b > 0: both roots negative or zero): min_depth
ROOT_UNDETERMINED = 4      # a = 0 (the reference bone's ends coincide in 2D, so b = 0 too): max_depth
ROOT_OUT_OF_RANGE = 5      # a positive root outside [min_depth, max_depth]: the nearer bound
ROOT_STATUS_NAMES = {ROOT_OK: "ok", ROOT_AMBIGUOUS: "ambiguous", ROOT_NO_REAL_ROOT: "no_real_root",
                     ROOT_BEHIND_CAMERA: "behind_camera", ROOT_UNDETERMINED: "undetermined",
                     ROOT_OUT_OF_RANGE: "out_of_range"}
ROOT_CLAMPED = (ROOT_NO_REAL_ROOT, ROOT_BEHIND_CAMERA, ROOT_UNDETERMINED, ROOT_OUT_OF_RANGE)


@register_layer("RootDepth")
class RootDepth(Layer):
    """Scale-normalised root depth Zroot (memo step 17; Iqbal et al. Sec 3.2; SPEC section 4): the larger root of
    a Z^2 + b Z + c = 0, which says that the bone n-m has length C once each joint k sits at depth Zroot + zr_k:

        a = (x_n - x_m)^2 + (y_n - y_m)^2
        b = 2 [ zr_n (x_n^2 + y_n^2 - x_n x_m - y_n y_m) + zr_m (x_m^2 + y_m^2 - x_n x_m - y_n y_m) ]
        c = (x_n zr_n - x_m zr_m)^2 + (y_n zr_n - y_m zr_m)^2 + (zr_n - zr_m)^2 - C^2
        Zroot = (-b + sqrt(b^2 - 4 a c)) / (2 a)

    Bottoms: joints_2d (B, 2K) original-image pixels (CropToImage's top); zr (B, K) scale-normalised
    root-relative depth (LatentDepth's top); intrinsics (B, 4) fx, fy, u0, v0 (ReadCameraIntrinsics' top).
    Tops: zroot (B, 1); optional clamped (1,): the number of samples of the batch whose Zroot is not the larger
    root of the quadratic inside [min_depth, max_depth] (statuses 2-5 below; no gradient); optional ambiguous
    (B, 1): 1 where c > 0 and both roots are positive (the bone n-m points nearly along the viewing ray, and
    the larger root may be the wrong one: SPEC section 4 wants them counted), else 0 (no gradient); optional
    status (B, 1): each sample's case below, as its code (no gradient).
    Params (root_depth_param): n = 8 (index MCP), m = 0 (wrist), c = 1 (C, the reference bone's length in
    scale-normalised units), min_depth = 1, max_depth = 100 (the range of Zroot, in the same units: 1 is one
    reference bone, ~9 cm, in front of the camera, 100 is ~9 m; 0 < min_depth < max_depth).

    Zroot is always finite and in [min_depth, max_depth]. The cases, in this order (eps: the dtype's epsilon):
      4 undetermined   a <= eps^2: the bone's two ends coincide in 2D (then b = 0 too), so any Z fits (c = 0)
                       or none does: Zroot = max_depth (the limit of the root as the 2D bone shrinks with
                       c < 0, where it grows like sqrt(-c / a)); zero gradient.
      2 no real root   b^2 - 4ac < 0 (inconsistent predictions; c > 0): the discriminant is clamped at 0, giving
                       the vertex -b / (2a) (the Z that brings the bone closest to length C), then bounded to
                       [min_depth, max_depth]; inside the bounds the vertex's gradient, else zero.
      3 behind camera  the larger root <= 0 (c >= 0 and b > 0: both roots negative or zero, a hand behind the
                       camera): Zroot = min_depth; zero gradient.
      5 out of range   a positive root below min_depth or above max_depth: the nearer bound; zero gradient.
      1 ambiguous      both roots positive (c > 0, b < 0), the larger in range: Zroot the larger root.
      0 ok             otherwise: Zroot the larger root, the only positive one.
    The clamped top counts cases 2-5. Numerics: where b > 0 the root is computed as -2c / (b + sqrt(b^2 - 4ac))
    (no cancellation, no division by a); sqrt's argument is floored at eps^2 and a at eps^2 in the other
    formula, so every branch (the unused ones too) is finite and torch.where passes no NaN or huge gradient.

    Examples::

        >>> import torch
        >>> from layers.build import make_layer
        >>> root_depth = make_layer('type: "RootDepth" bottom: "uv" bottom: "zr" bottom: "K" top: "zroot" '
        ...                         'root_depth_param { n: 1 m: 0 }', bottom_shapes=[(1, 4), (1, 2), (1, 4)])
        >>> uv = torch.tensor([[50.0, 50.0, 100.0, 50.0]])   # joint 0 at the principal point, joint 1 50 px right
        >>> K = torch.tensor([[100.0, 100.0, 50.0, 50.0]])   # fx, fy, u0, v0
        >>> root_depth(uv, torch.zeros(1, 2), K).tolist()    # both at depth Z: bone 0-1 = Z * 50 / 100 = c = 1
        [[2.0]]
    """
    params = Params("root_depth_param", n=Param(int, REF_BONE[0]), m=Param(int, REF_BONE[1]), c=Param(float, 1.0),
                    min_depth=Param(float, 1.0), max_depth=Param(float, 100.0))
    num_bottoms = 3
    num_tops = (1, 4)

    def setup(self, bottom_shapes):
        k = _check_2d_and_depth(self, bottom_shapes)
        _check_shape(self, bottom_shapes[2], (bottom_shapes[0][0], 4),
                     "bottom 2 (intrinsics) fx, fy, u0, v0 per sample")
        self._check_params(k)

    def _check_params(self, k: int) -> None:
        _check_joint(self, "n", self.p.n, k)
        _check_joint(self, "m", self.p.m, k)
        if self.p.n == self.p.m:
            raise self.error(f"n and m must be different joints (both are {self.p.n})")
        if not self.p.c > 0:
            raise self.error(f"c (the reference bone's length) must be positive, got {self.p.c:g}")
        if not 0 < self.p.min_depth < self.p.max_depth < float("inf"):
            raise self.error(f"need 0 < min_depth < max_depth < inf, got min_depth {self.p.min_depth:g}, "
                             f"max_depth {self.p.max_depth:g}")

    def _standard_bottoms(self, *bottoms):
        """(joints_2d, zr, intrinsics) from the layer's bottoms."""
        return bottoms

    def _solve(self, joints_2d, zr, intrinsics):
        """(zroot (B,), status (B,) int64, ambiguous (B,) bool), per the docstring's cases."""
        x, y = _camera_xy(joints_2d, intrinsics)
        n, m = self.p.n, self.p.m
        xn, yn, zn, xm, ym, zm = x[:, n], y[:, n], zr[:, n], x[:, m], y[:, m], zr[:, m]
        dx, dy = xn - xm, yn - ym
        px, py = xn * zn - xm * zm, yn * zn - ym * zm        # J_n - J_m at Zroot = 0 (x, y parts)
        a = dx * dx + dy * dy
        b = 2.0 * (dx * px + dy * py)
        c = px * px + py * py + (zn - zm) ** 2 - self.p.c ** 2
        disc = b * b - 4.0 * a * c
        tiny = torch.finfo(disc.dtype).eps ** 2
        undetermined = a <= tiny
        no_real = (disc < 0) & ~undetermined
        sq = torch.sqrt(disc.clamp_min(tiny))               # floored: sqrt's gradient stays finite
        stable = (b > 0) & ~no_real & ~undetermined
        # Every branch is finite everywhere (the unused ones too), so torch.where passes no NaN gradient.
        root_stable = -2.0 * c / torch.where(stable, b + sq, torch.ones_like(b))
        root_plain = (sq - b) / (2.0 * torch.where(stable | undetermined, torch.ones_like(a), a))
        root = torch.where(stable, root_stable, root_plain)
        lo, hi = self.p.min_depth, self.p.max_depth
        behind = (root <= 0) & ~no_real & ~undetermined
        out_of_range = ((root < lo) | (root > hi)) & ~behind & ~no_real & ~undetermined
        ambiguous = (c > 0) & (b < 0) & ~no_real & ~undetermined
        zroot = torch.where(undetermined, torch.full_like(root, hi), root.clamp(lo, hi))
        status = torch.zeros(root.shape, dtype=torch.int64, device=root.device)
        for code, mask in ((ROOT_AMBIGUOUS, ambiguous), (ROOT_OUT_OF_RANGE, out_of_range),
                           (ROOT_BEHIND_CAMERA, behind), (ROOT_NO_REAL_ROOT, no_real),
                           (ROOT_UNDETERMINED, undetermined)):             # later codes take precedence
            status = torch.where(mask, code, status)
        return zroot, status, ambiguous

    def sample_status(self, *bottoms) -> torch.Tensor:
        """Each sample's case (B,) int64 (ROOT_STATUS_NAMES), from the layer's bottoms; the clamped ones are
        ROOT_CLAMPED. Per sample, so a caller can count any subset of a batch (e.g. leave out padding)."""
        with torch.no_grad():
            return self._solve(*self._standard_bottoms(*bottoms))[1]

    def forward(self, *bottoms):
        zroot, status, ambiguous = self._solve(*self._standard_bottoms(*bottoms))
        zroot = zroot.unsqueeze(1)
        if self.num_top_blobs == 1:
            return zroot
        clamped = (status >= ROOT_NO_REAL_ROOT).sum().reshape(1).to(zroot.dtype)   # codes 2-5: ROOT_CLAMPED
        tops = [zroot, clamped]
        if self.num_top_blobs >= 3:
            tops.append(ambiguous.to(zroot.dtype).unsqueeze(1))
        if self.num_top_blobs == 4:
            tops.append(status.to(zroot.dtype).unsqueeze(1))
        return tuple(tops)


# ------------------------------------------------------------------------------------------ step 19 (and 17's end)

@register_layer("Reconstruct3D")
class Reconstruct3D(Layer):
    """Camera-frame 3D joints from the 2.5D pose (memo steps 17 and 19; SPEC section 4):

        Zn_k = Zroot + zr_k,   Xn_k = x_k Zn_k,   Yn_k = y_k Zn_k        (scale-normalised 3D)
        J_k = s (Xn_k, Yn_k, Zn_k)                                        (with the scale bottom)

    Two uses: without the scale bottom the top is the scale-normalised 3D (ScaleRecovery's input, the
    reference bone of length C); with it (ScaleRecovery's top, or the GT HandScale) it is the metric 3D in
    the scale's unit (mm with avg_bone.txt).
    Bottoms: joints_2d (B, 2K) pixels; zr (B, K); zroot (B, 1) (RootDepth's top); intrinsics (B, 4) fx, fy, u0,
    v0; optional scale (B, 1).
    Tops: joints_3d (B, 3K), x y z per joint.  Params: none.

    Examples::

        >>> import torch
        >>> from layers.build import make_layer
        >>> rec = make_layer('type: "Reconstruct3D" bottom: "uv" bottom: "zr" bottom: "zroot" bottom: "K" bottom: "s" '
        ...                  'top: "xyz"', bottom_shapes=[(1, 4), (1, 2), (1, 1), (1, 4), (1, 1)])
        >>> uv, K = torch.tensor([[50.0, 50.0, 100.0, 50.0]]), torch.tensor([[100.0, 100.0, 50.0, 50.0]])
        >>> zr, zroot, s = torch.tensor([[0.0, 0.5]]), torch.tensor([[2.0]]), torch.tensor([[10.0]])
        >>> rec(uv, zr, zroot, K, s).tolist()   # x = (0, 0.5), Z = 2 + zr = (2, 2.5): s (x Z, y Z, Z)
        [[0.0, 0.0, 20.0, 12.5, 0.0, 25.0]]
    """
    num_bottoms = (4, 5)

    def setup(self, bottom_shapes):
        _check_2d_and_depth(self, bottom_shapes)
        batch = bottom_shapes[0][0]
        _check_per_sample(self, bottom_shapes[2], batch, "bottom 2 (zroot)")
        _check_shape(self, bottom_shapes[3], (batch, 4), "bottom 3 (intrinsics) fx, fy, u0, v0 per sample")
        if len(bottom_shapes) == 5:
            _check_per_sample(self, bottom_shapes[4], batch, "bottom 4 (scale)")

    def forward(self, joints_2d, zr, zroot, intrinsics, scale=None):
        x, y = _camera_xy(joints_2d, intrinsics)
        z = zroot.reshape(-1, 1) + zr
        xyz = torch.stack([x * z, y * z, z], dim=-1).flatten(1)
        return xyz if scale is None else xyz * scale.reshape(-1, 1)


# ------------------------------------------------------------------------------------------ step 18

@register_layer("ScaleRecovery")
class ScaleRecovery(Layer):
    """Hand scale from the scale-normalised 3D and the mean bone lengths (memo step 18; Iqbal et al. Sec 3.3):

        s_hat = argmin_s sum_j (s d_j - L_j)^2 = sum_j L_j d_j / sum_j d_j^2

    d_j: the lengths of the 20 bones (skeleton.BONES) of the scale-normalised 3D; L_j: avg_bone.txt's.
    Bottoms: joints_norm (B, 63) scale-normalised 3D (Reconstruct3D's top without scale); avg_bone (B, 20)
    (ReadBoneLength's top).
    Tops: scale (B, 1), in avg_bone's unit (mm).  Params: none.
    A degenerate hand (all joints at one point) gives 0, with a zero gradient.

    Examples::

        >>> import torch
        >>> from layers.build import make_layer
        >>> recover = make_layer('type: "ScaleRecovery" bottom: "joints_norm" bottom: "avg_bone" top: "scale"',
        ...                      bottom_shapes=[(1, 63), (1, 20)])
        >>> j = torch.zeros(1, 21, 3)                                # the wrist (0) at the origin
        >>> j[0, 1:, 0] = torch.tensor([4.0, 3.0, 2.0, 1.0]).repeat(5)   # tip, DIP, PIP, MCP per finger: bones 1 long
        >>> recover(j.view(1, 63), torch.full((1, 20), 80.0)).tolist()   # sum(80 * 1) / sum(1 * 1)
        [[80.0]]
    """
    num_bottoms = 2

    def setup(self, bottom_shapes):
        joints, bones = bottom_shapes
        if len(joints) != 2 or joints[1] != 3 * NUM_JOINTS:
            raise self.error(f"bottom 0 (scale-normalised 3D) must be (B, {3 * NUM_JOINTS}), x y z of the "
                             f"{NUM_JOINTS} RHD joints; got shape {tuple(joints)}")
        _check_shape(self, bones, (joints[0], NUM_BONES), "bottom 1 (average bone lengths), skeleton.BONES order,")

    def forward(self, joints_norm, avg_bone):
        j = joints_norm.reshape(joints_norm.shape[0], NUM_JOINTS, 3)
        d = torch.linalg.vector_norm(j[:, _BONE_A] - j[:, _BONE_B], dim=-1)
        den = (d * d).sum(dim=1, keepdim=True)
        ok = den > 0
        # the unused branch divides by 1, so torch.where passes no NaN gradient
        return torch.where(ok, (avg_bone * d).sum(dim=1, keepdim=True) / torch.where(ok, den, 1.0), 0.0)


# ------------------------------------------------------------------------------------------ the author's types

def _check_camera_bottoms(layer: Layer, shapes: list[Shape]) -> None:
    """Bottoms 2-5 of the author's types: fx, fy, u0, v0, one value per sample each."""
    for i, name in enumerate(("fx", "fy", "u0", "v0"), start=2):
        _check_per_sample(layer, shapes[i], shapes[0][0], f"bottom {i} ({name})")


def _check_joint_num(layer: Layer, k: int) -> None:
    if layer.p.has("joint_num") and layer.p.joint_num != k:
        raise layer.error(f"joint_num {layer.p.joint_num} does not match the bottoms' {k} joints")


@register_layer("DeepHandModelSolveScaleNormalizedGlobalZRoot")
class DeepHandModelSolveScaleNormalizedGlobalZRoot(RootDepth):
    """The author's type for RootDepth (SPEC section 6), with his bottoms.

    Bottoms (his order): joints_2d (B, 2K) pixels; zr (B, K); fx, fy, u0, v0 (B, 1) each.
    Tops: zroot (B, 1); optional clamped count (1,), ambiguous flags (B, 1) and status (B, 1), as RootDepth.
    Params (deep_hand_model_solve_scale_normalized_global_z_root_param): joint_num = 21, n = 8, m = 0, c = 1
    (his net's values; joint_num, when given, must match the bottoms), min_depth = 1, max_depth = 100 (new).
    Differs from the original: sample t reads its own zr (the original read zr at offset t * 2K, another
    sample's or past the blob, for every t > 0); a negative discriminant is clamped (the original gave NaN);
    a zero discriminant gives the double root (the original gave 0); Zroot stays in [min_depth, max_depth]
    with RootDepth's rules (the original gave negative or infinite depths); the gradient flows (his backward
    was empty).
    """
    params = Params("deep_hand_model_solve_scale_normalized_global_z_root_param", joint_num=Param(int, NUM_JOINTS),
                    n=Param(int, REF_BONE[0]), m=Param(int, REF_BONE[1]), c=Param(float, 1.0),
                    min_depth=Param(float, 1.0), max_depth=Param(float, 100.0))
    num_bottoms = 6

    def setup(self, bottom_shapes):
        k = _check_2d_and_depth(self, bottom_shapes)
        _check_camera_bottoms(self, bottom_shapes)
        _check_joint_num(self, k)
        self._check_params(k)

    def _standard_bottoms(self, joints_2d, zr, fx, fy, u0, v0):
        return joints_2d, zr, _intrinsics_of(fx, fy, u0, v0)


@register_layer("DeepHandModelSolveScaleNormalizedGlobalLocation")
class DeepHandModelSolveScaleNormalizedGlobalLocation(Reconstruct3D):
    """The author's type for Reconstruct3D without scale (SPEC section 6): Zn_k = Zroot + zr_k,
    Xn_k = (u_k - u0) Zn_k / fx, Yn_k = (v_k - v0) Zn_k / fy.

    Bottoms (his order): joints_2d (B, 2K) pixels; zr (B, K); fx, fy, u0, v0 (B, 1) each; zroot (B, 1).
    Tops: joints_norm (B, 3K).
    Params (deep_hand_model_solve_scale_normalized_global_location_param): joint_num = 21 (his net's value;
    when given, must match the bottoms).
    Differs from the original: the gradient flows (his backward was empty).
    """
    params = Params("deep_hand_model_solve_scale_normalized_global_location_param", joint_num=Param(int, NUM_JOINTS))
    num_bottoms = 7

    def setup(self, bottom_shapes):
        k = _check_2d_and_depth(self, bottom_shapes)
        _check_camera_bottoms(self, bottom_shapes)
        _check_per_sample(self, bottom_shapes[6], bottom_shapes[0][0], "bottom 6 (zroot)")
        _check_joint_num(self, k)

    def forward(self, joints_2d, zr, fx, fy, u0, v0, zroot):
        return super().forward(joints_2d, zr, zroot, _intrinsics_of(fx, fy, u0, v0))


@register_layer("DeepHandModelSolveGlobalHandScale")
class DeepHandModelSolveGlobalHandScale(ScaleRecovery):
    """The author's type for ScaleRecovery (SPEC section 6): s_hat = sum_j L_j d_j / sum_j d_j^2.

    Bottoms (his order): joints_norm (B, 63); avg_bone (B, 20).  Tops: scale (B, 1).  Params: none.
    Differs from the original: the gradient flows (his backward was empty).
    """
