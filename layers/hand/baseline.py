"""The mean-pose baseline: predict, for every evaluation sample, the training set's mean root-relative 3D pose.
A trained net must beat it by a wide margin before its numbers mean anything (the synthetic demo asks for less
than half of its root-relative error).

    from layers.hand.baseline import mean_pose_baseline
    mean_pose_baseline("data/rhd")   # {'epe_3d_rel_mm': ..., 'auc_20_50': ..., 'mean_pose_mm': (21, 3), ...}
"""

from __future__ import annotations

import numpy as np

from layers.hand import metrics
from layers.hand.rhd import memo
from layers.hand.skeleton import NUM_JOINTS, ROOT

__all__ = ["read_split_gt", "mean_pose_baseline"]


def read_split_gt(root: str, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(index list (N,), gt_3d (N, 21, 3) mm, visibility (N, 21) 0/1) of a split of the memo layout, in the
    order of its index list (all_train_index.txt / all_evaluation_index.txt). NetError on a missing file."""
    idx = memo.read_index_list(memo.index_list_path(root, split))
    xyz = np.stack([memo.read_numbers(memo.sample_path(root, split, "gt_3d", i), 3 * NUM_JOINTS, f"sample {i}")
                    for i in idx]).reshape(-1, NUM_JOINTS, 3)
    vis = np.stack([memo.read_numbers(memo.sample_path(root, split, "gt_vis", i), NUM_JOINTS, f"sample {i}")
                    for i in idx])
    return idx, xyz, vis


def mean_pose_baseline(root: str, train_split: str = "training", eval_split: str = "evaluation") -> dict:
    """The mean root-relative pose of train_split's samples (mean over samples of J_k - J_root, mm) as the
    prediction for every sample of eval_split. Returns:
      mean_pose_mm     (21, 3) the prediction (root at the origin)
      epe_3d_rel_mm    root-relative 3D EPE over the visible keypoints (SPEC section 5; the root counts, error 0)
      epe_3d_rel_all_mm  the same over all keypoints
      auc_20_50        AUC of the root-relative PCK on 20-50 mm (metrics.auc), visible keypoints
      auc_chp3d        the ColorHandPose3D protocol's AUC (metrics.auc_colorhandpose3d)
      num_train, num_eval  the samples used.
    Only the root-relative numbers exist: the baseline has no absolute position."""
    _, train, _ = read_split_gt(root, train_split)
    _, gt, vis = read_split_gt(root, eval_split)
    mean = (train - train[:, ROOT:ROOT + 1]).mean(axis=0)
    pred = np.repeat(mean[None], len(gt), axis=0)
    err = metrics.errors_3d(pred, gt, root_relative=True)
    pck = metrics.pck_curve(err, vis=vis)
    return {
        "mean_pose_mm": mean,
        "epe_3d_rel_mm": float(metrics.epe_3d(pred, gt, vis=vis)),
        "epe_3d_rel_all_mm": float(metrics.epe_3d(pred, gt)),
        "auc_20_50": float(metrics.auc(metrics.DEFAULT_THRESHOLDS_MM, pck)),
        "auc_chp3d": float(metrics.auc_colorhandpose3d(err, vis=vis)),
        "num_train": len(train),
        "num_eval": len(gt),
    }
