"""Metrics (SPEC section 5): EPE 2D/3D, PCK, AUC_20-50 and ColorHandPose3D's AUC; the EPE2D, EPE3D and PCK3D
layers.

References are written independently of layers/hand/metrics.py: per-sample, per-keypoint Python loops, closed
forms (3-4-5 triangles, step PCK curves), and a literal port of ColorHandPose3D's EvalUtil / calc_auc
(lmb-freiburg/hand3d utils/general.py, eval_full.py), in metres as they compute it."""

import math

import numpy as np
import pytest
import torch

import layers.hand  # noqa: F401  (registers the hand layers)
from layers.build import make_layer
from layers.hand import metrics as M
from netdef.errors import NetError
from nets.net import Net


def mk(body, shapes, bottoms=("p", "g"), tops=("y",)):
    head = 'name: "l" ' + " ".join(f'bottom: "{b}"' for b in bottoms) + " " + \
        " ".join(f'top: "{t}"' for t in tops) + " "
    return make_layer(head + body, [tuple(s) for s in shapes], "TEST")


def rand_hands(b, k=21, d=3, seed=0, scale=30.0):
    rng = np.random.default_rng(seed)
    gt = rng.normal(0, 50, (b, k, d)) + (np.array([0, 0, 500.0])[:d] if d == 3 else 100.0)
    pred = gt + rng.normal(0, scale, (b, k, d))
    vis = (rng.random((b, k)) < 0.7).astype(np.float64)
    vis[:, 0] = 1
    return pred.reshape(b, k * d), gt.reshape(b, k * d), vis


# ---------------------------------------------------------------- literal references

def loop_errors(pred, gt, d, root_relative=False):
    b, k = pred.shape[0], pred.shape[1] // d
    out = np.zeros((b, k))
    for s in range(b):
        for j in range(k):
            acc = 0.0
            for c in range(d):
                p, g = pred[s, j * d + c], gt[s, j * d + c]
                if root_relative:
                    p, g = p - pred[s, c], g - gt[s, c]
                acc += (p - g) ** 2
            out[s, j] = math.sqrt(acc)
    return out


def loop_mean(err, vis):
    total, n = 0.0, 0
    for s in range(err.shape[0]):
        for j in range(err.shape[1]):
            if vis is None or vis[s, j]:
                total += err[s, j]
                n += 1
    return total / n


def loop_pck(err, thresholds, vis=None):
    out = []
    for t in thresholds:
        hit = n = 0
        for s in range(err.shape[0]):
            for j in range(err.shape[1]):
                if vis is None or vis[s, j]:
                    n += 1
                    hit += err[s, j] <= t
        out.append(hit / n)
    return np.array(out)


class EvalUtilPort:
    """ColorHandPose3D's EvalUtil and calc_auc (hand3d utils/general.py), as written there (metres)."""

    def __init__(self, num_kp=21):
        self.data = [[] for _ in range(num_kp)]
        self.num_kp = num_kp

    def feed(self, keypoint_gt, keypoint_vis, keypoint_pred):
        diff = keypoint_gt - keypoint_pred
        euclidean_dist = np.sqrt(np.sum(np.square(diff), axis=1))
        for i in range(keypoint_gt.shape[0]):
            if keypoint_vis.astype("bool")[i]:
                self.data[i].append(euclidean_dist[i])

    def get_measures(self, val_min, val_max, steps):
        thresholds = np.linspace(val_min, val_max, steps)
        norm_factor = np.trapezoid(np.ones_like(thresholds), thresholds)
        auc_all, pck_curve_all = [], []
        for part_id in range(self.num_kp):
            if len(self.data[part_id]) == 0:
                continue
            data = np.array(self.data[part_id])
            pck_curve = np.array([np.mean((data <= t).astype("float")) for t in thresholds])
            pck_curve_all.append(pck_curve)
            auc_all.append(np.trapezoid(pck_curve, thresholds) / norm_factor)
        return np.mean(np.array(auc_all)), np.mean(np.array(pck_curve_all), 0), thresholds


def calc_auc(x, y):
    return np.trapezoid(y, x) / np.trapezoid(np.ones_like(y), x)


def chp3d_literal(pred_m, gt_m, vis):
    """eval_full.py: feed per sample (root-relative xyz in metres), get_measures(0.0, 0.050, 20), [8:]."""
    util = EvalUtilPort()
    for s in range(pred_m.shape[0]):
        util.feed(gt_m[s], vis[s], pred_m[s])
    _, pck_curve_all, threshs = util.get_measures(0.0, 0.050, 20)
    return calc_auc(threshs[8:] * 1000.0, pck_curve_all[8:]), pck_curve_all


# ---------------------------------------------------------------- EPE

def test_epe_2d_matches_loops_with_and_without_visibility():
    pred, gt, vis = rand_hands(6, d=2, seed=1)
    err = loop_errors(pred, gt, 2)
    assert M.epe_2d(pred, gt).item() == pytest.approx(loop_mean(err, None), rel=1e-12)
    assert M.epe_2d(pred, gt, vis).item() == pytest.approx(loop_mean(err, vis), rel=1e-12)
    # (B, K, 2) input and torch float32 tensors give the same
    t = M.epe_2d(torch.tensor(pred, dtype=torch.float32).reshape(6, 21, 2), torch.tensor(gt).reshape(6, 21, 2))
    assert t.dtype == torch.float32 and t.item() == pytest.approx(loop_mean(err, None), rel=1e-5)


@pytest.mark.parametrize("root_relative", [True, False])
def test_epe_3d_matches_loops(root_relative):
    pred, gt, vis = rand_hands(5, seed=2)
    err = loop_errors(pred, gt, 3, root_relative)
    assert M.epe_3d(pred, gt, root_relative=root_relative).item() == pytest.approx(loop_mean(err, None), rel=1e-12)
    assert M.epe_3d(pred, gt, vis, root_relative=root_relative).item() == \
        pytest.approx(loop_mean(err, vis), rel=1e-12)


def test_epe_3d_closed_forms_345():
    gt = np.random.default_rng(3).normal(0, 40, (2, 21, 3))
    shifted = gt + np.array([3.0, 4.0, 0.0])          # every keypoint off by a 3-4-5 triangle
    assert M.epe_3d(shifted, gt, root_relative=False).item() == pytest.approx(5.0, abs=1e-12)
    assert M.epe_3d(shifted, gt, root_relative=True).item() == pytest.approx(0.0, abs=1e-12)
    one = gt.copy()
    one[:, 5] += np.array([0.0, 3.0, 4.0])            # one keypoint off: 5 mm on 1 of 21
    assert M.epe_3d(one, gt).item() == pytest.approx(5.0 / 21, abs=1e-12)
    root = gt.copy()
    root[:, 0] += np.array([4.0, 0.0, 3.0])           # the root moves: every other keypoint is 5 mm off
    assert M.epe_3d(root, gt).item() == pytest.approx(20 * 5.0 / 21, abs=1e-12)
    assert M.epe_3d(root, gt, root_relative=False).item() == pytest.approx(5.0 / 21, abs=1e-12)
    vis = np.zeros((2, 21))
    vis[:, 5] = 1
    assert M.epe_3d(one, gt, vis).item() == pytest.approx(5.0, abs=1e-12)   # only the visible one counts
    assert math.isnan(M.epe_3d(one, gt, np.zeros((2, 21))).item())        # nothing visible: NaN, not 0


# ---------------------------------------------------------------- PCK and AUC

def test_pck_curve_matches_loops_default_thresholds():
    pred, gt, vis = rand_hands(7, seed=4)
    err = loop_errors(pred, gt, 3, True)
    curve = M.pck_curve(err)
    assert curve.shape == (51,) and np.array_equal(M.DEFAULT_THRESHOLDS_MM, np.arange(51.0))
    np.testing.assert_allclose(curve.numpy(), loop_pck(err, range(51)), rtol=0, atol=1e-12)
    np.testing.assert_allclose(M.pck_curve(err, vis=vis).numpy(), loop_pck(err, range(51), vis), atol=1e-12)
    # an error exactly on a threshold counts (<=)
    assert M.pck_curve(np.array([[10.0, 10.5]]), [10.0, 10.5]).tolist() == [0.5, 1.0]


def test_auc_of_step_curve_has_known_area():
    t = np.arange(51.0)
    step = (t >= 35).astype(float)           # 0 up to 34 mm, 1 from 35 mm: linear between 34 and 35
    assert M.auc(t, step).item() == pytest.approx((15 + 0.5) / 30, abs=1e-12)
    assert M.auc(t, np.ones(51)).item() == pytest.approx(1.0, abs=1e-12)
    assert M.auc(t, np.zeros(51)).item() == 0.0
    # with 20 and 50 among the thresholds it is numpy's trapezoid on the sub-range / 30
    pck = np.sort(np.random.default_rng(5).random(51))
    assert M.auc(t, pck).item() == pytest.approx(np.trapezoid(pck[20:], t[20:]) / 30, abs=1e-12)
    # lo, hi between thresholds: the linear curve is integrated exactly (mean of t/50 on [25, 45] = 0.7)
    coarse = np.arange(0.0, 51.0, 10.0)
    assert M.auc(coarse, coarse / 50, 25, 45).item() == pytest.approx(0.7, abs=1e-12)


def test_auc_weights_by_hand_and_errors():
    # on [5, 10]: 5 * (p(5) + p1) / 2 with p(5) = (p0 + p1) / 2; on [10, 15] likewise; divided by 10
    w = M.auc_weights([0, 10, 20], 5, 15)
    np.testing.assert_allclose(w, [0.125, 0.75, 0.125], atol=1e-15)
    assert w.sum() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="not covered"):
        M.auc(np.arange(0.0, 41.0), np.ones(41))
    with pytest.raises(ValueError, match="strictly increasing"):
        M.auc_weights([0, 20, 10, 50])
    with pytest.raises(ValueError, match="lo < hi"):
        M.auc_weights(np.arange(51.0), 30, 30)


# ---------------------------------------------------------------- ColorHandPose3D's AUC

def test_chp3d_auc_matches_literal_port_with_unequal_visibility():
    rng = np.random.default_rng(6)
    n = 40
    gt = rng.normal(0, 0.05, (n, 21, 3))
    gt -= gt[:, :1]                                               # root-relative, as eval_full.py centres it
    pred = gt + rng.normal(0, 0.012, (n, 21, 3)) * rng.uniform(0.3, 3.0, (1, 21, 1))
    pred[:, 0] = 0
    vis = rng.random((n, 21)) < np.linspace(0.2, 1.0, 21)       # keypoints seen very different numbers of times
    vis[:, 3] = False                                             # one keypoint never visible: left out
    want_auc, want_curve = chp3d_literal(pred, gt, vis.astype(float))
    err_mm = np.linalg.norm(pred - gt, axis=-1) * 1000.0
    t, curve = M.pck_curve_colorhandpose3d(err_mm, vis)
    np.testing.assert_allclose(t.numpy(), np.linspace(0, 0.050, 20) * 1000.0, rtol=1e-12)
    np.testing.assert_allclose(curve.numpy(), want_curve, atol=1e-12)
    assert M.auc_colorhandpose3d(err_mm, vis).item() == pytest.approx(want_auc, abs=1e-12)
    # per-keypoint-then-mean differs from our pooled AUC when visibility counts differ
    ours = M.auc(t.numpy(), M.pck_curve(err_mm, t.numpy(), vis), t[8].item(), 50.0).item()
    assert abs(ours - want_auc) > 1e-3
    assert M.CHP3D_AUC_NAME == "AUC (ColorHandPose3D protocol)"


def test_chp3d_auc_closed_form_and_all_visible_equivalence():
    err = np.full((3, 21), 30.0)             # every error 30 mm: pck 0 up to t_11, 1 from t_12 = 31.58 mm
    # area on [t_8, t_19] = (50 - t_12) + (t_12 - t_11) / 2 = 50 * 15/38; span = 50 * 11/19 -> 15/22
    assert M.auc_colorhandpose3d(err).item() == pytest.approx(15 / 22, abs=1e-12)
    want, _ = chp3d_literal(np.zeros((3, 21, 3)) + [0.030, 0, 0], np.zeros((3, 21, 3)), np.ones((3, 21)))
    assert want == pytest.approx(15 / 22, abs=1e-12)
    # all visible: same as auc() on the pooled curve at their thresholds from t_8 = 400/19 mm
    e = np.random.default_rng(7).gamma(4.0, 7.0, (25, 21))
    t = M.CHP3D_THRESHOLDS_MM
    assert M.auc_colorhandpose3d(e).item() == pytest.approx(
        M.auc(t, M.pck_curve(e, t), 400 / 19, 50).item(), abs=1e-12)


# ---------------------------------------------------------------- layers

def test_epe_layers_match_functions_and_take_visibility():
    pred, gt, vis = rand_hands(4, seed=8)
    p, g, v = (torch.tensor(a) for a in (pred, gt, vis))
    epe3 = mk('type: "EPE3D"', [(4, 63), (4, 63), (4, 21)], bottoms=("p", "g", "v"))
    assert epe3(p, g, v).item() == pytest.approx(loop_mean(loop_errors(pred, gt, 3, True), vis), rel=1e-12)
    absolute = mk('type: "EPE3D" epe_3d_param { root_relative: false }', [(4, 63), (4, 63)])
    assert absolute(p, g).item() == pytest.approx(loop_mean(loop_errors(pred, gt, 3), None), rel=1e-12)
    pred2, gt2, vis2 = rand_hands(4, d=2, seed=9)
    epe2 = mk('type: "EPE2D"', [(4, 42), (4, 42), (4, 21)], bottoms=("p", "g", "v"))
    out = epe2(torch.tensor(pred2, dtype=torch.float32), torch.tensor(gt2, dtype=torch.float32),
               torch.tensor(vis2, dtype=torch.float32))
    assert out.shape == () and out.dtype == torch.float32
    assert out.item() == pytest.approx(loop_mean(loop_errors(pred2, gt2, 2), vis2), rel=1e-5)


def test_metric_layers_do_not_track_gradients():
    pred, gt, _ = rand_hands(2, seed=10)
    p = torch.tensor(pred, requires_grad=True)
    epe3 = mk('type: "EPE3D"', [(2, 63), (2, 63)])
    assert not epe3(p, torch.tensor(gt)).requires_grad


def test_pck3d_layer_curve_and_auc():
    pred, gt, vis = rand_hands(6, seed=11, scale=15.0)
    layer = mk('type: "PCK3D"', [(6, 63), (6, 63), (6, 21)], bottoms=("p", "g", "v"), tops=("pck", "auc"))
    pck, auc = layer(*(torch.tensor(a) for a in (pred, gt, vis)))
    err = loop_errors(pred, gt, 3, True)
    want = loop_pck(err, range(51), vis)
    assert pck.shape == (51,) and auc.shape == ()
    np.testing.assert_allclose(pck.numpy(), want, atol=1e-12)
    assert auc.item() == pytest.approx(np.trapezoid(want[20:], np.arange(20.0, 51.0)) / 30, abs=1e-12)
    assert 0.05 < auc.item() < 0.95                       # a curve that actually rises inside [20, 50]


def test_pck3d_layer_explicit_thresholds_and_range():
    pred, gt, _ = rand_hands(3, seed=12)
    body = ('type: "PCK3D" pck_3d_param { threshold: 0 threshold: 10 threshold: 30 threshold: 60 '
            'auc_min: 10 auc_max: 30 root_relative: false }')
    pck, auc = mk(body, [(3, 63), (3, 63)], tops=("pck", "auc"))(torch.tensor(pred), torch.tensor(gt))
    want = loop_pck(loop_errors(pred, gt, 3), [0, 10, 30, 60])
    np.testing.assert_allclose(pck.numpy(), want, atol=1e-12)
    assert auc.item() == pytest.approx((want[1] + want[2]) / 2, abs=1e-12)
    step = mk('type: "PCK3D" pck_3d_param { threshold_min: 0 threshold_max: 50 threshold_step: 2.5 }',
              [(3, 63), (3, 63)], tops=("pck",))
    assert step(torch.tensor(pred), torch.tensor(gt)).shape == (21,)


def test_metric_layers_in_a_net_shapes_and_float64():
    text = """
    layer { name: "in" type: "Input" top: "p" top: "g" top: "v"
            input_param { shape { dim: 2 dim: 63 } shape { dim: 2 dim: 63 } shape { dim: 2 dim: 21 } } }
    layer { name: "pck" type: "PCK3D" bottom: "p" bottom: "g" bottom: "v" top: "pck" top: "auc" }
    layer { name: "epe" type: "EPE3D" bottom: "p" bottom: "g" bottom: "v" top: "epe" }
    """
    net = Net(text, phase="TEST", device="cpu").double()   # float64 data: the net computes in float64
    assert net.blob_shapes["pck"] == (51,) and net.blob_shapes["auc"] == () and net.blob_shapes["epe"] == ()
    pred, gt, vis = rand_hands(2, seed=13)
    out = net.forward(p=torch.tensor(pred), g=torch.tensor(gt), v=torch.tensor(vis))
    assert out["epe"].dtype == torch.float64
    assert out["epe"].item() == pytest.approx(loop_mean(loop_errors(pred, gt, 3, True), vis), rel=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_metric_layers_on_cuda():
    pred, gt, vis = rand_hands(3, seed=14)
    layer = mk('type: "PCK3D"', [(3, 63), (3, 63), (3, 21)], bottoms=("p", "g", "v"), tops=("pck", "auc")).cuda()
    pck, auc = layer(*(torch.tensor(a, device="cuda") for a in (pred, gt, vis)))
    assert pck.device.type == "cuda"
    np.testing.assert_allclose(pck.cpu().numpy(), loop_pck(loop_errors(pred, gt, 3, True), range(51), vis))


def test_user_errors():
    with pytest.raises(NetError, match=r"unknown param 'root_relativ' in epe_3d_param "
                                       r"\(did you mean root_relative\?\)"):
        mk('type: "EPE3D" epe_3d_param { root_relativ: false }', [(2, 63), (2, 63)])
    with pytest.raises(NetError, match=r"bottom 1 \(ground truth\) has shape \(2, 60\)"):
        mk('type: "EPE3D"', [(2, 63), (2, 60)])
    with pytest.raises(NetError, match=r"\(B, 3K\)"):
        mk('type: "EPE3D"', [(2, 62), (2, 62)])
    with pytest.raises(NetError, match=r"visibility\) must be \(B, K\) = \(2, 21\)"):
        mk('type: "EPE2D"', [(2, 42), (2, 42), (2, 42)], bottoms=("p", "g", "v"))
    with pytest.raises(NetError, match="root_joint_id = 21"):
        mk('type: "EPE3D" epe_3d_param { root_joint_id: 21 }', [(2, 63), (2, 63)])
    with pytest.raises(NetError, match="threshold_step must be positive"):
        mk('type: "PCK3D" pck_3d_param { threshold_step: 0 }', [(2, 63), (2, 63)])
    with pytest.raises(NetError, match=r"AUC range \[20, 50\] is not covered by the thresholds \[0, 40\]"):
        mk('type: "PCK3D" pck_3d_param { threshold_max: 40 }', [(2, 63), (2, 63)])
    with pytest.raises(NetError, match="not both"):
        mk('type: "PCK3D" pck_3d_param { threshold: 0 threshold: 50 threshold_step: 2 }', [(2, 63), (2, 63)])
    with pytest.raises(NetError, match="strictly increasing"):
        mk('type: "PCK3D" pck_3d_param { threshold: 0 threshold: 50 threshold: 40 }', [(2, 63), (2, 63)])
