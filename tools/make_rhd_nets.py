#!/usr/bin/env python
"""Write the RHD training nets (train / test prototxt and solver) with nets/netspec.py.

    python tools/make_rhd_nets.py [--root data/rhd] [--out-dir prototxt]

writes, for each net N of NETS, OUT/rhd_N_train.prototxt, OUT/rhd_N_test.prototxt and OUT/rhd_N_solver.prototxt:
  latent25d     Iqbal et al.'s latent 2.5D heatmaps on the author's RawPaper encoder-decoder (128x128 input,
                64x64 maps): softmax soft-argmax with a learnable beta, latent depth, L1 losses on the 2D pose
                and the scale-normalised depth; Adam.
  heatmap25d    the author's explicit variant: the same network, sigmoid cross-entropy against GT heatmaps
                (weight 1) and GT depth maps (weight 3); at test the 2D pose is the sigmoid-then-sum soft-argmax
                and the depth the maps' ratio at it (see heatmap_readout); his SGD solver.
  synth_small   the latent25d pipeline on a compact U-Net that trains on 2 CPU cores in about 8 minutes (64x64
                input, 32x32 maps, 32-128 channels, BatchNorm) on the synthetic set of tools/make_synthetic_rhd.py;
                left hands mirrored in the net (HandMirror: it sees right hands only), HeatmapKLLoss beside the
                L1 losses, the packed file read. README "How the demo got there" measures each choice.
Train nets: memo steps 1-15 and the losses; test nets also steps 16-19 and the metrics (EPE2D in pixels,
EPE3D root-relative and absolute in mm, over the visible keypoints). Paths in the files are relative to the
folder the commands run in (the repository root); snapshots go to runs/ (create it: mkdir -p runs).

Each family also gets OUT/rhd_N_deploy.prototxt (tools/predict.py runs it on a user's images): no data
layers and no ground truth, the test net's network and steps 16-19 fed by Input layers (DEPLOY_INPUTS):
  image     (N, 3, S, S)  the crop resized to S x S (S: the train net's image size), B, G, R planes, raw 0..255
                          pixels as ReadImage gives them; the net scales them by 1/255 itself (MulRGB)
  bbox      (N, 4)        the crop's box x1, y1, x2, y2 in the full image (integer bounds, inclusive)
  K         (N, 9)        the camera matrix, row-major (as matlab_gt_camera_k/<i>.txt): fx 0 u0 0 fy v0 0 0 1;
                          the net reads fx, fy, u0, v0 (entries 0, 4, 2, 5) and ignores the rest
  avg_bone  (N, 20)       mean bone lengths in mm, skeleton.BONES order (tools/predict.py feeds the training
                          set's avg_bone.txt unless told otherwise)
and outputs (DEPLOY_OUTPUTS): joints_2d (N, 21, 2) full-image pixels, joints_3d (N, 21, 3) camera frame mm,
joints_3d_rel (N, 21, 3) mm relative to the wrist (keypoint 0), root_status (N, 1) RootDepth's per-sample case
(layers.hand.reconstruct.ROOT_STATUS_NAMES: 0 ok, 1 ambiguous, 2-5 clamped). The Input shapes say N = 1; any
batch size runs. A train snapshot of the family loads into it as is (the same layer names).
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass

# Runs from a checkout without installing: the repository root holds the layers and nets packages.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import layers  # noqa: E402,F401  (registers the layer types NetSpec checks kwargs against)
from layers.hand.ground_truth import DEPTH_LB, DEPTH_UB  # noqa: E402
from layers.hand.rhd.convert import PAD_VALUE  # noqa: E402
from netdef.errors import add_debug_flag, run_tool  # noqa: E402
from nets.netspec import NetSpec, generated_by, layers as L, params as P  # noqa: E402

DEFAULT_ROOT = "data/rhd"
DEFAULT_OUT = "prototxt"
RENDER_SIGMA = 0.08       # the author's GT heatmap sigma (crop units) at 64x64
NUM_JOINTS = 21


@dataclass(frozen=True)
class Config:
    """One net family: network, batch, loss weights and solver."""
    name: str
    title: str
    arch: str = "rawpaper"         # "rawpaper" (the author's encoder-decoder) or "compact" (synth_small's U-Net)
    image_size: int = 128          # input S x S; the maps are S/2 x S/2
    enc_channels: tuple = (256,) * 6   # rawpaper: conv1..conv6; compact: the stem and its three levels
    dec_channels: int = 512        # deconvolutions and 1x1 skip convolutions
    batch: int = 32
    test_batch: int = 32
    explicit: bool = False         # True: the author's sigmoid cross-entropy on GT maps (heatmap25d)
    packed: bool = False           # readers take the converter's packed.h5 (bit-identical, no file per sample)
    mirror_left: bool = False      # HandMirror: left hands' crops (and 2D poses) mirrored, the net sees right hands
    augment: dict | None = None    # TRAIN: HandAugment's hand_augment_param (random rotation, zoom, shift, colour)
    # Latent losses (the paper: L1 on the 2D soft-argmax pose and on zr). 2D in crop units times the map size,
    # i.e. L1 in heatmap pixels; zr (reference bone = 1) times 6. On the synthetic set, weights 1 and 1 left the
    # net at the mean 2D pose, and a depth weight below ~4 at the mean depth; synth_small takes 12 (6 -> 12:
    # 43.2 -> 41.1 mm, README "How the demo got there").
    loss_2d_weight: float = 64.0
    loss_z_weight: float = 6.0
    # HeatmapKLLoss between the softmax heatmaps and Gaussians of this sigma (crop units) at the 2D ground truth
    # (0: off, the paper's loss alone)
    loss_heatmap_weight: float = 0.0
    heatmap_sigma: float = RENDER_SIGMA
    solver: dict | None = None
    test_iter: int = 47            # 1507 RHD evaluation samples / 32
    test_interval: int = 2000

    @property
    def map_size(self) -> int:
        return self.image_size // 2


NETS = {
    "latent25d": Config(   # Adam and its schedule: our choice for the paper's net (not tuned on real RHD)
        "latent25d", "Latent 2.5D heatmaps (Iqbal et al. 2018) on the author's RawPaper encoder-decoder",
        solver=dict(type="Adam", base_lr=1e-4, momentum=0.9, momentum2=0.999, lr_policy="multistep",
                    stepvalue=[150000, 250000], gamma=0.1, max_iter=300000, weight_decay=0.0,
                    display=20, snapshot=10000)),
    "heatmap25d": Config(
        "heatmap25d", "The author's explicit 2.5D variant (RHDLatentHMMapRawPaper): sigmoid cross-entropy on "
        "GT heatmaps and depth maps", explicit=True,
        # his solver.prototxt (SGD without momentum), with a finite max_iter
        solver=dict(type="SGD", base_lr=1e-6, momentum=0.0, lr_policy="multistep", stepvalue=[600000, 1500000],
                    gamma=0.1, max_iter=2000000, weight_decay=0.0002, display=10, snapshot=10000)),
    "synth_small": Config(
        "synth_small", "Latent 2.5D heatmaps, a compact U-Net for the synthetic set on 2 CPU cores",
        arch="compact", image_size=64, enc_channels=(32, 64, 96, 128), dec_channels=64, batch=16, test_batch=50,
        loss_2d_weight=32.0, loss_z_weight=12.0, loss_heatmap_weight=1.0, heatmap_sigma=1.0 / 32,
        packed=True, mirror_left=True,
        # mild: 30 degrees, 15 % zoom and 8 % shifts were worse than none in 9000 iterations (README)
        augment=dict(max_rotation=15.0, max_scale=0.08, max_shift=0.04, max_brightness=0.2, max_channel_gain=0.1,
                     pad_value=float(PAD_VALUE)),
        solver=dict(type="Adam", base_lr=2e-3, momentum=0.9, momentum2=0.999, lr_policy="multistep",
                    stepvalue=[7380, 8550], gamma=0.1, max_iter=9000, weight_decay=0.0, display=100, snapshot=0),
        test_iter=12, test_interval=9000),
}


# ---- pieces ---------------------------------------------------------------------------------------------------

def _split_path(root: str, split: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), split, "all_hand", *parts])


def data_layers(n: NetSpec, cfg: Config, phase: str, root: str) -> None:
    """Memo steps 1-9 (and 10-11 for the explicit variant): index, readers, GT scale and depth."""
    train = phase == "TRAIN"
    split = "training" if train else "evaluation"
    rhd = dict(root=root, split=split, packed=True) if cfg.packed else dict(root=root, split=split)
    if train:      # step 1: uniform over the usable training samples
        n.index = L.GenRandIndex(index_file=_split_path(root, split, "all_train_index.txt"), batch_size=cfg.batch)
    else:          # step 1: the evaluation list in order
        n.index = L.ReadIndexFromFile(index_file_path=_split_path(root, split, "all_evaluation_index.txt"),
                                      batch_size=cfg.test_batch)
    n.image = L.ReadImage(n.index, resize_size=cfg.image_size, rhd_data_param=rhd)           # step 2
    if not train:
        n.avg_bone = L.ReadBoneLength(n.index, rhd_data_param=rhd)                             # step 3
    if not train or cfg.mirror_left or cfg.augment:
        n.bbox = L.ReadBBox(n.index, rhd_data_param=rhd)                                       # step 4
    if not train:
        n.intrinsics = L.ReadCameraIntrinsics(n.index, rhd_data_param=rhd)                     # step 5
        if cfg.packed:
            n.vis = L.ReadVisibility(n.index, rhd_data_param=rhd)
        else:
            n.vis = L.ReadBlobFromFileIndexing(n.index, file_prefix=_split_path(root, split, "gt_vis") + "/",
                                               num_to_read=NUM_JOINTS)
    n.joint_2d = L.ReadJoint2D(n.index, rhd_data_param=rhd)                                    # step 6
    n.joint_3d = L.ReadJoint3D(n.index, rhd_data_param=rhd)                                    # step 7
    if cfg.mirror_left:     # the net's view: every hand a right hand
        n.is_left = L.ReadHandSide(n.index, rhd_data_param=rhd)
        n.image_net = L.HandMirror(n.image, n.is_left)
        n.joint_2d_net = L.HandMirror(n.joint_2d, n.is_left, n.bbox)
    image = n.image_net if cfg.mirror_left else n.image
    if train and cfg.augment:
        n.image_aug, n.joint_2d_aug = L.HandAugment(image, n.joint_2d_net if cfg.mirror_left else n.joint_2d, n.bbox,
                                                    hand_augment_param=cfg.augment, ntop=2)
        image = n.image_aug
    n.image_01 = L.MulRGB(image, mul_factor=1.0 / 255)
    n.scale = L.HandScale(n.joint_3d, n=8, m=0)                                                # step 8
    n.depth_01, n.depth_zr = L.NormalizedRootDepth(n.joint_3d, n.scale, depth_lower_bound=DEPTH_LB,   # step 9
                                                   depth_upper_bound=DEPTH_UB, ntop=2)
    if cfg.explicit:
        n.heatmap = L.GenHeatmap(n.joint_2d, gen_size=cfg.map_size, render_sigma=RENDER_SIGMA)   # step 10
        n.depth_map = L.GenDepthMap(n.heatmap, n.depth_zr, depth_lower_bound=DEPTH_LB,           # step 11
                                    depth_upper_bound=DEPTH_UB)


def _conv(bottom, channels: int, kernel: int, stride: int, pad: int):
    return L.Convolution(bottom, num_output=channels, kernel_size=kernel, stride=stride, pad=pad, bias_term=False,
                         weight_filler=dict(type="msra"))


def _deconv(bottom, channels: int):
    return L.Deconvolution(bottom, param=[dict(lr_mult=1), dict(lr_mult=2)],
                           convolution_param=dict(num_output=channels, kernel_size=4, stride=2, pad=1,
                                                  weight_filler=dict(type="xavier"),
                                                  bias_filler=dict(type="constant", value=0)))


def _heads(n: NetSpec, bottom, bias: bool) -> None:
    """The 1x1 convolution to 42 maps (21 heatmaps, then 21 depth maps) and memo step 13's Slice."""
    n.maps = L.Convolution(bottom, num_output=2 * NUM_JOINTS, kernel_size=1, bias_term=bias,
                           weight_filler=dict(type="msra"))
    n.heatmap_logits, n.depth_logits = L.Slice(n.maps, axis=1, slice_point=[NUM_JOINTS], ntop=2)


def rawpaper(n: NetSpec, cfg: Config, bottom) -> None:
    """Memo step 12, the author's RawPaper network (RHDHand/RHDLatentHMMapRawPaper/train.prototxt), widths from
    cfg: encoder of 3x3 convolutions (no bias, msra, ReLU) with 3x3 stride-1 max pools after conv1 and conv2 and a
    2x2 stride-2 pool after conv3, S -> S/64; decoder of five 4x4 stride-2 deconvolutions (xavier, lr_mult 1/2,
    no ReLU), each summed with a 1x1 convolution of the encoder feature of its size; a 1x1 convolution to 42
    maps of S/2 x S/2."""
    c, d = cfg.enc_channels, cfg.dec_channels
    n.conv1 = _conv(bottom, c[0], 3, 1, 1)
    n.conv1_relu = L.ReLU(n.conv1, in_place=True)
    n.pool1 = L.Pooling(n.conv1_relu, pool=P.Pooling.MAX, kernel_size=3, stride=1, pad=1)
    n.conv2 = _conv(n.pool1, c[1], 3, 2, 1)
    n.conv2_relu = L.ReLU(n.conv2, in_place=True)
    n.pool2 = L.Pooling(n.conv2_relu, pool=P.Pooling.MAX, kernel_size=3, stride=1, pad=1)
    n.conv3 = _conv(n.pool2, c[2], 3, 2, 1)
    n.conv3_relu = L.ReLU(n.conv3, in_place=True)
    n.pool3 = L.Pooling(n.conv3_relu, pool=P.Pooling.MAX, kernel_size=2, stride=2)
    n.conv4 = _conv(n.pool3, c[3], 3, 2, 1)
    n.conv4_relu = L.ReLU(n.conv4, in_place=True)
    n.conv5 = _conv(n.conv4_relu, c[4], 3, 2, 1)
    n.conv5_relu = L.ReLU(n.conv5, in_place=True)
    n.conv6 = _conv(n.conv5_relu, c[5], 3, 2, 1)
    n.conv6_relu = L.ReLU(n.conv6, in_place=True)
    up = n.conv6_relu
    skips = [("conv5", n.conv5_relu), ("conv4", n.conv4_relu), ("pool3", n.pool3), ("conv3", n.conv3_relu),
             ("conv2", n.conv2_relu)]
    for i, (name, feature) in enumerate(skips):
        n[f"{name}_shortcut"] = _conv(feature, d, 1, 1, 0)
        n[f"h{i}_deconv"] = _deconv(up, d)
        n[f"h{i}_output"] = L.Eltwise(n[f"{name}_shortcut"], n[f"h{i}_deconv"], operation=P.Eltwise.SUM)
        up = n[f"h{i}_output"]
    _heads(n, up, bias=False)


def _bn_relu(n: NetSpec, name: str, top):
    """BatchNorm (Caffe's: statistics by phase), Scale with bias, ReLU; all in place."""
    n[f"{name}_bn"] = L.BatchNorm(top, in_place=True)
    n[f"{name}_scale"] = L.Scale(n[f"{name}_bn"], bias_term=True, in_place=True)
    n[f"{name}_relu"] = L.ReLU(n[f"{name}_scale"], in_place=True)
    return n[f"{name}_relu"]


def compact(n: NetSpec, cfg: Config, bottom) -> None:
    """Memo step 12 for CPU training: the RawPaper layout (deconvolutions summed with 1x1 skip convolutions) made
    shallow and normalised. A 3x3 stride-2 stem (S/2), three levels of two 3x3 convolutions (the first of stride 2)
    down to S/16, and three 4x4 stride-2 deconvolutions back to S/2, each summed with a 1x1 convolution of the
    encoder feature of its size and followed by a 3x3 convolution (but the last); every convolution and sum is
    followed by BatchNorm, Scale and ReLU (the author's linear decoder without normalisation learned far slower)."""
    c, d = cfg.enc_channels, cfg.dec_channels
    n.stem = _conv(bottom, c[0], 3, 2, 1)
    feats = [_bn_relu(n, "stem", n.stem)]
    for i, ch in enumerate(c[1:], start=1):
        n[f"conv{i}a"] = _conv(feats[-1], ch, 3, 2, 1)
        n[f"conv{i}b"] = _conv(_bn_relu(n, f"conv{i}a", n[f"conv{i}a"]), ch, 3, 1, 1)
        feats.append(_bn_relu(n, f"conv{i}b", n[f"conv{i}b"]))
    up = feats[-1]
    for i, feature in enumerate(reversed(feats[:-1])):
        n[f"up{i}_deconv"] = L.Deconvolution(up, num_output=d, kernel_size=4, stride=2, pad=1, bias_term=False,
                                             weight_filler=dict(type="msra"))
        n[f"up{i}_shortcut"] = _conv(feature, d, 1, 1, 0)
        n[f"up{i}"] = L.Eltwise(n[f"up{i}_shortcut"], n[f"up{i}_deconv"], operation=P.Eltwise.SUM)
        up = _bn_relu(n, f"up{i}", n[f"up{i}"])
        if i < len(feats) - 2:
            n[f"up{i}_conv"] = _conv(up, d, 3, 1, 1)
            up = _bn_relu(n, f"up{i}_conv", n[f"up{i}_conv"])
    _heads(n, up, bias=True)


def encoder_decoder(n: NetSpec, cfg: Config, bottom) -> None:
    """Memo steps 12-13: cfg.arch's network, then the Slice into heatmap and depth logits."""
    {"rawpaper": rawpaper, "compact": compact}[cfg.arch](n, cfg, bottom)


def latent_readout(n: NetSpec, mirrored: bool = False, back: bool = True) -> None:
    """Memo steps 14-15, the paper's: softmax with a learnable beta per joint, soft-argmax, depth maps through a
    sigmoid (so z01 stays in [0, 1]) read through the normalised heatmaps. mirrored: the net saw left hands
    mirrored (Config.mirror_left): its 2D output is pred_2d_net and, with back (test and deploy nets), mirrored
    back into pred_2d, while heatmap_view holds its maps in the original crop (for pictures)."""
    n.heatmap_norm, n["pred_2d_net" if mirrored else "pred_2d"] = L.SoftArgmax(
        n.heatmap_logits, normalization=P.SoftArgmax.SOFTMAX, beta_filler=dict(type="constant", value=1), ntop=2)
    if mirrored and back:
        n.pred_2d = L.HandMirror(n.pred_2d_net, n.is_left, n.bbox)
        n.heatmap_view = L.HandMirror(n.heatmap_norm, n.is_left)
        n.silence_view = L.Silence(n.heatmap_view, ntop=0)     # read by pictures, not a net output
    n.depth_sigmoid = L.Sigmoid(n.depth_logits)
    n.pred_zr = L.LatentDepth(n.heatmap_norm, n.depth_sigmoid, depth_lower_bound=DEPTH_LB,
                              depth_upper_bound=DEPTH_UB)


def heatmap_readout(n: NetSpec) -> None:
    """The explicit variant's read-out (TEST). 2D: the author's sigmoid, divide by the sum, expectation (SoftArgmax
    SUM). Depth: the GT maps are D = H z01 at every pixel, so z01 = sum Hn sigmoid(D) / sum Hn sigmoid(H).
    (The author's net took sum Hn sigmoid(D) alone, which is z01 sum H^2 / sum H, about z01 / 2 for a Gaussian
    H; the division undoes that.) zr = z01 (ub - lb) + lb."""
    n.heatmap_norm, n.pred_2d = L.SoftArgmax(n.heatmap_logits, normalization=P.SoftArgmax.SUM, ntop=2)
    n.heatmap_sigmoid = L.Sigmoid(n.heatmap_logits)
    n.depth_sigmoid = L.Sigmoid(n.depth_logits)
    n.depth_at_joint = L.LatentDepth(n.heatmap_norm, n.depth_sigmoid, depth_lower_bound=0, depth_upper_bound=1)
    n.heat_at_joint = L.LatentDepth(n.heatmap_norm, n.heatmap_sigmoid, depth_lower_bound=0, depth_upper_bound=1)
    n.heat_at_joint_inv = L.Power(n.heat_at_joint, power=-1)
    n.pred_z01 = L.Eltwise(n.depth_at_joint, n.heat_at_joint_inv, operation=P.Eltwise.PROD)
    n.pred_zr = L.Power(n.pred_z01, scale=DEPTH_UB - DEPTH_LB, shift=DEPTH_LB)


def reconstruction_and_metrics(n: NetSpec) -> None:
    """Memo steps 16-19 and SPEC section 5's metrics over the visible keypoints."""
    n.pred_2d_px = L.CropToImage(n.pred_2d, n.bbox)                                            # step 16
    n.gt_2d_px = L.CropToImage(n.joint_2d, n.bbox)
    n.zroot, n.root_clamped, n.ambiguous = L.RootDepth(n.pred_2d_px, n.pred_zr, n.intrinsics, n=8, m=0, c=1,  # 17
                                                       ntop=3)
    n.silence_ambiguous = L.Silence(n.ambiguous, ntop=0)   # (B, 1) flags for evaluation tools, not an output
    n.pred_3d_norm = L.Reconstruct3D(n.pred_2d_px, n.pred_zr, n.zroot, n.intrinsics)
    n.pred_scale = L.ScaleRecovery(n.pred_3d_norm, n.avg_bone)                                 # step 18
    n.pred_3d = L.Reconstruct3D(n.pred_2d_px, n.pred_zr, n.zroot, n.intrinsics, n.pred_scale)  # step 19
    n.epe_2d_px = L.EPE2D(n.pred_2d_px, n.gt_2d_px, n.vis)
    n.epe_3d_rel_mm = L.EPE3D(n.pred_3d, n.joint_3d, n.vis, root_relative=True)
    n.epe_3d_abs_mm = L.EPE3D(n.pred_3d, n.joint_3d, n.vis, root_relative=False)


DEPLOY_INPUTS = ("image", "bbox", "K", "avg_bone")
DEPLOY_OUTPUTS = ("joints_2d", "joints_3d", "joints_3d_rel", "root_status")


def deploy_inputs(n: NetSpec, cfg: Config) -> None:
    """The deploy net's Input layers (module doc), the pixel scaling, and K's entries as intrinsics (B, 4)."""
    n.image = L.Input(shape=dict(dim=[1, 3, cfg.image_size, cfg.image_size]))
    n.bbox = L.Input(shape=dict(dim=[1, 4]))
    n.K = L.Input(shape=dict(dim=[1, 9]))
    n.avg_bone = L.Input(shape=dict(dim=[1, 20]))
    if cfg.mirror_left:
        n.is_left = L.Input(shape=dict(dim=[1, 1]))
        n.image_net = L.HandMirror(n.image, n.is_left)
    n.image_01 = L.MulRGB(n.image_net if cfg.mirror_left else n.image, mul_factor=1.0 / 255)
    # row-major K: entry 0 fx, 1 skew, 2 u0, 3, 4 fy, 5 v0, 6-8 the last row
    n.k_fx, n.k_skew, n.k_u0, n.k_3, n.k_fy, n.k_v0, n.k_row3 = L.Slice(n.K, axis=1, slice_point=[1, 2, 3, 4, 5, 6],
                                                                       ntop=7)
    n.silence_k = L.Silence(n.k_skew, n.k_3, n.k_row3, ntop=0)
    n.intrinsics = L.Concat(n.k_fx, n.k_fy, n.k_u0, n.k_v0, axis=1)


def deploy_outputs(n: NetSpec) -> None:
    """Memo steps 16-19 without ground truth, and the outputs of the module doc."""
    n.pred_2d_px = L.CropToImage(n.pred_2d, n.bbox)                                            # step 16
    n.zroot, n.root_clamped, n.ambiguous, n.root_status = L.RootDepth(n.pred_2d_px, n.pred_zr, n.intrinsics, n=8,
                                                                      m=0, c=1, ntop=4)        # step 17
    n.silence_root = L.Silence(n.root_clamped, n.ambiguous, ntop=0)     # both are in status (codes 1, 2-5)
    n.pred_3d_norm = L.Reconstruct3D(n.pred_2d_px, n.pred_zr, n.zroot, n.intrinsics)
    n.pred_scale = L.ScaleRecovery(n.pred_3d_norm, n.avg_bone)                                 # step 18
    n.pred_3d = L.Reconstruct3D(n.pred_2d_px, n.pred_zr, n.zroot, n.intrinsics, n.pred_scale)  # step 19
    n.joints_2d = L.Reshape(n.pred_2d_px, shape=dict(dim=[0, NUM_JOINTS, 2]))
    n.joints_3d = L.Reshape(n.pred_3d, shape=dict(dim=[0, NUM_JOINTS, 3]))
    n.joints_3d_in = L.Reshape(n.pred_3d, shape=dict(dim=[0, NUM_JOINTS, 3]))    # joints_3d stays an output
    n.root_3d, n.fingers_3d = L.Slice(n.joints_3d_in, axis=1, slice_point=[1], ntop=2)
    n.silence_fingers = L.Silence(n.fingers_3d, ntop=0)
    n.root_3d_tiled = L.Tile(n.root_3d, axis=1, tiles=NUM_JOINTS)
    n.joints_3d_rel = L.Eltwise(n.joints_3d_in, n.root_3d_tiled, operation=P.Eltwise.SUM, coeff=[1, -1])


def make_deploy_net(cfg: Config) -> NetSpec:
    """The family's deploy net (module doc): Input layers, the test net's network and read-out, steps 16-19."""
    n = NetSpec(name=f"RHD_{cfg.name}_deploy")
    deploy_inputs(n, cfg)
    encoder_decoder(n, cfg, n.image_01)
    if cfg.explicit:
        heatmap_readout(n)
    else:
        latent_readout(n, cfg.mirror_left)
    deploy_outputs(n)
    return n


def make_net(cfg: Config, phase: str, root: str = DEFAULT_ROOT) -> NetSpec:
    n = NetSpec(name=f"RHD_{cfg.name}")
    data_layers(n, cfg, phase, root)
    encoder_decoder(n, cfg, n.image_01)
    if cfg.explicit:
        n.loss_heatmap = L.SigmoidCrossEntropyLoss(n.heatmap_logits, n.heatmap, loss_weight=1)
        n.loss_depth_map = L.SigmoidCrossEntropyLoss(n.depth_logits, n.depth_map, loss_weight=3)
        if phase == "TEST":
            heatmap_readout(n)
        n.silence = L.Silence(n.depth_01, ntop=0)
    else:
        latent_readout(n, cfg.mirror_left, back=phase == "TEST")
        pred_2d, joint_2d = (n.pred_2d_net, n.joint_2d_net) if cfg.mirror_left else (n.pred_2d, n.joint_2d)
        if phase == "TRAIN" and cfg.augment:
            joint_2d = n.joint_2d_aug
        n.loss_2d = L.L1Loss(pred_2d, joint_2d, loss_weight=cfg.loss_2d_weight)
        n.loss_z = L.L1Loss(n.pred_zr, n.depth_zr, loss_weight=cfg.loss_z_weight)
        if cfg.loss_heatmap_weight:
            n.heatmap_target = L.GenHeatmap(joint_2d, gen_size=cfg.map_size, render_sigma=cfg.heatmap_sigma)
            n.loss_heatmap = L.HeatmapKLLoss(n.heatmap_norm, n.heatmap_target, loss_weight=cfg.loss_heatmap_weight)
        n.silence = L.Silence(n.depth_01, ntop=0)
    if phase == "TEST":
        reconstruction_and_metrics(n)
    return n


def solver_text(cfg: Config, out_dir: str, header: str) -> str:
    s = cfg.solver
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    lines += [f'train_net: "{out_dir}/rhd_{cfg.name}_train.prototxt"',
              f'test_net: "{out_dir}/rhd_{cfg.name}_test.prototxt"',
              f"test_iter: {cfg.test_iter}", f"test_interval: {cfg.test_interval}",
              "test_initialization: false", f'type: "{s["type"]}"', f"base_lr: {s['base_lr']!r}"]
    for key in ("momentum", "momentum2"):
        if key in s:
            lines.append(f"{key}: {s[key]!r}")
    lines.append(f'lr_policy: "{s["lr_policy"]}"')
    lines += [f"stepvalue: {v}" for v in s["stepvalue"]]
    lines += [f"gamma: {s['gamma']!r}", f"max_iter: {s['max_iter']}", f"weight_decay: {s['weight_decay']!r}",
              f"display: {s['display']}", "average_loss: 20", f"snapshot: {s['snapshot']}",
              f'snapshot_prefix: "runs/rhd_{cfg.name}"', "random_seed: 0"]
    return "\n".join(lines) + "\n"


def _header(cfg: Config, argv: list[str], what: str) -> str:
    return "\n".join([generated_by(argv), f"{cfg.title}: {what}.",
                      f"Train: python tools/run_net.py --solver prototxt/rhd_{cfg.name}_solver.prototxt",
                      "(from the repository root, after mkdir -p runs; data from tools/prepare_rhd.py)"])


def _deploy_header(cfg: Config, argv: list[str]) -> str:
    s = cfg.image_size
    return "\n".join([generated_by(argv), f"{cfg.title}: deploy net (no data layers, no ground truth).",
                      f"Inputs: image (N,3,{s},{s}) B,G,R 0..255, the crop resized; bbox (N,4) x1,y1,x2,y2 of the crop",
                      "in the full image; K (N,9) row-major camera matrix; avg_bone (N,20) mm (the training set's).",
                      "Outputs: joints_2d (N,21,2) px, joints_3d (N,21,3) mm, joints_3d_rel (N,21,3) mm,",
                      "root_status (N,1) (RootDepth's case: 0 ok, 1 ambiguous, 2-5 clamped).",
                      f"Run: python tools/predict.py IMAGES --weights runs/rhd_{cfg.name}_iter_N.caffemodel.h5"])


def write_all(out_dir: str = DEFAULT_OUT, root: str = DEFAULT_ROOT, argv: list[str] | None = None,
              nets=NETS) -> list[str]:
    """Write every net's three files into out_dir; returns the paths. argv: the command for the header."""
    argv = argv if argv is not None else ["tools/make_rhd_nets.py"]
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for cfg in nets.values():
        files = {f"rhd_{cfg.name}_{phase.lower()}.prototxt":
                 make_net(cfg, phase, root).to_prototxt(header=_header(cfg, argv, f"{phase.lower()} net"))
                 for phase in ("TRAIN", "TEST")}
        files[f"rhd_{cfg.name}_deploy.prototxt"] = make_deploy_net(cfg).to_prototxt(header=_deploy_header(cfg, argv))
        files[f"rhd_{cfg.name}_solver.prototxt"] = solver_text(cfg, DEFAULT_OUT, _header(cfg, argv, "solver"))
        for name, text in files.items():
            path = os.path.join(out_dir, name)
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
            written.append(path)
    return written


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="make_rhd_nets.py", description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=DEFAULT_ROOT, help=f"the converted data's folder (default {DEFAULT_ROOT})")
    ap.add_argument("--out-dir", default=DEFAULT_OUT, help=f"where the files go (default {DEFAULT_OUT})")
    add_debug_flag(ap)
    args = ap.parse_args(argv)
    command = ["tools/make_rhd_nets.py"] + (["--root", args.root] if args.root != DEFAULT_ROOT else [])

    def make() -> int:
        for path in write_all(args.out_dir, args.root, command):
            print(path)
        return 0
    return run_tool(make, args.debug)


if __name__ == "__main__":
    sys.exit(main())
