"""L1Loss (layers/hand/losses.py): value against an explicit loop, the optional weights, gradients (analytic and
gradcheck), its use in a net with loss_weight, and user errors."""

import numpy as np
import pytest
import torch

from layers.build import make_layer
from netdef.errors import NetError
from nets.net import Net


def l1(shapes):
    bottoms = "".join(f'bottom: "b{i}" ' for i in range(len(shapes)))
    return make_layer(f'name: "l1" type: "L1Loss" {bottoms}top: "loss"', bottom_shapes=shapes)


def np_l1(a, b, w=None):
    """Loop reference: per sample, per weight group, sum |a - b|; then divide by the batch."""
    n = a.shape[0]
    a, b = a.reshape(n, -1).astype(np.float64), b.reshape(n, -1).astype(np.float64)
    w = np.ones((n, a.shape[1])) if w is None else w.reshape(n, -1).astype(np.float64)
    run = a.shape[1] // w.shape[1]
    total = 0.0
    for i in range(n):
        for g in range(w.shape[1]):
            for j in range(g * run, (g + 1) * run):
                total += w[i, g] * abs(a[i, j] - b[i, j])
    return total / n


def test_value_matches_loop_and_shapes_may_differ():
    a, b = torch.randn(4, 42), torch.randn(4, 42, 1, 1)
    loss = l1([(4, 42), (4, 42, 1, 1)])(a, b)
    assert loss.shape == ()
    assert loss.item() == pytest.approx(np_l1(a.numpy(), b.numpy()), rel=1e-6)
    # worked number: |1 - 0| + |-2 - 1| + |0.5 - 0.5| over a batch of 2 -> 4 / 2
    two = l1([(2, 2), (2, 2)])(torch.tensor([[1.0, -2.0], [0.5, 0.0]]), torch.tensor([[0.0, 1.0], [0.5, 0.0]]))
    assert two.item() == pytest.approx(2.0)


@pytest.mark.parametrize("per_item,groups", [(42, 21), (63, 21), (21, 21), (12, 1)])
def test_weights_apply_to_runs_of_values(per_item, groups):
    a, b = torch.randn(3, per_item), torch.randn(3, per_item)
    w = torch.randint(0, 2, (3, groups)).float()
    w[0, 0] = 0.5
    got = l1([(3, per_item), (3, per_item), (3, groups)])(a, b, w)
    assert got.item() == pytest.approx(np_l1(a.numpy(), b.numpy(), w.numpy()), rel=1e-6)


def test_visibility_mask_drops_joints():
    """(N, 21) visibility weights u, v pairs of a (N, 42) pose: an invisible joint's error does not count."""
    a, b = torch.zeros(1, 42), torch.zeros(1, 42)
    a[0, 10], a[0, 11] = 3.0, -4.0            # joint 5 off by (3, -4)
    a[0, 0] = 1.0                              # joint 0 off by 1
    vis = torch.ones(1, 21)
    layer = l1([(1, 42), (1, 42), (1, 21)])
    assert layer(a, b, vis).item() == pytest.approx(8.0)
    vis[0, 5] = 0
    assert layer(a, b, vis).item() == pytest.approx(1.0)


def test_gradient_is_sign_over_batch_and_none_to_weights():
    a = torch.tensor([[1.0, -2.0, 0.3], [0.0, 5.0, -1.0]], requires_grad=True)
    b = torch.tensor([[0.0, 0.0, 1.0], [1.0, 1.0, -2.0]], requires_grad=True)
    w = torch.tensor([[1.0, 0.0, 2.0], [1.0, 1.0, 1.0]], requires_grad=True)
    l1([(2, 3), (2, 3), (2, 3)])(a, b, w).backward()
    want = np.sign(a.detach().numpy() - b.detach().numpy()) * w.detach().numpy() / 2
    np.testing.assert_allclose(a.grad.numpy(), want)
    np.testing.assert_allclose(b.grad.numpy(), -want)
    assert w.grad is None


def test_gradcheck_float64():
    layer = l1([(2, 6), (2, 6), (2, 3)]).double()
    a = torch.randn(2, 6, dtype=torch.float64)
    b = (a + torch.where(torch.rand(2, 6) < 0.5, -1.0, 1.0).double() * (0.2 + torch.rand(2, 6))).detach()
    w = torch.tensor([[1.0, 0.0, 0.5], [2.0, 1.0, 1.0]], dtype=torch.float64)   # |a - b| >= 0.2: no kink nearby
    assert torch.autograd.gradcheck(lambda x, y: layer(x, y, w), (a.requires_grad_(), b.requires_grad_()))
    assert layer(a.float(), b.float(), w.float()).dtype == torch.float32


def test_in_a_net_with_loss_weight():
    net = Net('name: "n" input: "a" input_shape { dim: 5 dim: 21 } input: "b" input_shape { dim: 5 dim: 21 } '
              'layer { name: "l1" type: "L1Loss" bottom: "a" bottom: "b" top: "l1" loss_weight: 3 }',
              phase="TRAIN", device="cpu")
    a, b = torch.randn(5, 21), torch.randn(5, 21)
    out = net.forward(a=a, b=b)
    assert out["l1"].item() == pytest.approx(np_l1(a.numpy(), b.numpy()), rel=1e-6)
    assert net.loss.item() == pytest.approx(3 * np_l1(a.numpy(), b.numpy()), rel=1e-6)


@pytest.mark.parametrize("shapes,message", [
    ([(2, 42), (3, 42)], "same first dim"),
    ([(2, 42), (2, 21)], "same dimension per item"),
    ([(2, 42), (2, 42), (2, 5)], "G dividing the 42 values"),
    ([(2, 42), (2, 42), (3, 21)], "N = 2"),
])
def test_shape_errors(shapes, message):
    with pytest.raises(NetError, match=message):
        l1(shapes)


def test_param_and_type_errors():
    with pytest.raises(NetError, match="unknown param block 'l1_loss_param'"):
        make_layer('name: "l" type: "L1Loss" bottom: "a" bottom: "b" top: "l" l1_loss_param { normalize: true }',
                   bottom_shapes=[(2, 3), (2, 3)])
    with pytest.raises(NetError, match="did you mean L1Loss"):
        make_layer('name: "l" type: "L1Los" bottom: "a" bottom: "b" top: "l"', bottom_shapes=[(2, 3), (2, 3)])
    with pytest.raises(NetError, match="takes 2 to 3 bottom"):
        l1([(2, 3)] * 4)


# ---- HeatmapKLLoss ----------------------------------------------------------------------------------------------

def kl(shape):
    return make_layer('name: "kl" type: "HeatmapKLLoss" bottom: "p" bottom: "t" top: "loss"',
                      bottom_shapes=[shape, shape])


def np_kl(p, t):
    """Loop reference: per sample and map, normalise the target, sum T (ln T - ln max(P, 1e-20)); / batch."""
    n, k = p.shape[:2]
    total = 0.0
    for i in range(n):
        for j in range(k):
            tm = t[i, j].astype(np.float64).ravel()
            if tm.sum() == 0:
                continue
            tm = tm / tm.sum()
            for tv, pv in zip(tm, p[i, j].astype(np.float64).ravel()):
                if tv > 0:
                    total += tv * (np.log(tv) - np.log(max(pv, 1e-20)))
    return total / n


def softmax_maps(n, k, h, w, dtype=torch.float64):
    return torch.softmax(torch.randn(n, k, h * w, dtype=dtype) * 2, dim=2).reshape(n, k, h, w)


def test_kl_value_matches_loop_and_is_zero_at_the_target():
    p, t = softmax_maps(3, 4, 5, 6), torch.rand(3, 4, 5, 6, dtype=torch.float64) * 7
    t[0, 1, 2, 3] = 0.0                                       # a zero target pixel: 0 ln 0 = 0
    layer = kl((3, 4, 5, 6)).double()
    assert layer(p, t).item() == pytest.approx(np_kl(p.numpy(), t.numpy()), rel=1e-10)
    assert layer(p, t).item() > 0
    target = t / t.sum(dim=(2, 3), keepdim=True)
    assert abs(layer(target, t).item()) < 1e-12              # P = the normalised target: KL 0
    # worked number: T = (0.75, 0.25), P = (0.5, 0.5): 0.75 ln 1.5 + 0.25 ln 0.5
    two = kl((1, 1, 1, 2))(torch.tensor([[[[0.5, 0.5]]]]), torch.tensor([[[[3.0, 1.0]]]]))
    assert two.item() == pytest.approx(0.75 * np.log(1.5) + 0.25 * np.log(0.5), rel=1e-6)


def test_kl_zero_target_map_and_zero_probability_stay_finite():
    p, t = softmax_maps(2, 3, 4, 4), torch.rand(2, 3, 4, 4, dtype=torch.float64)
    t[1, 2] = 0.0                                             # a joint whose Gaussian underflowed
    p[0, 0] = 0.0
    p[0, 0, 1, 1] = 1.0                                       # all mass on one pixel: ln 0 elsewhere floored
    p.requires_grad_()
    loss = kl((2, 3, 4, 4)).double()(p, t)
    assert loss.item() == pytest.approx(np_kl(p.detach().numpy(), t.numpy()), rel=1e-10)
    loss.backward()
    assert torch.isfinite(p.grad).all()
    assert (p.grad[1, 2] == 0).all()                          # the all-zero map adds nothing
    # where P > 1e-20 the gradient is -T / P / N
    tn = t[0, 1] / t[0, 1].sum()
    np.testing.assert_allclose(p.grad[0, 1].numpy(), (-tn / p.detach()[0, 1] / 2).numpy(), rtol=1e-10)


def test_kl_gradcheck_and_float32():
    layer = kl((2, 2, 3, 3)).double()
    p = softmax_maps(2, 2, 3, 3).requires_grad_()
    t = torch.rand(2, 2, 3, 3, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: layer(x, t), (p,))
    assert kl((2, 2, 3, 3))(p.detach().float(), t.float()).dtype == torch.float32


def test_kl_pulls_softmax_maps_to_one_peak():
    """DSNT's point: an L1 loss on the soft-argmax alone is met by two peaks either side of the joint; adding
    the KL term toward a Gaussian at the joint moves the mass onto one peak there."""
    net_text = ('name: "n" input: "logits" input_shape { dim: 1 dim: 1 dim: 16 dim: 16 } '
                'input: "uv" input_shape { dim: 1 dim: 2 } '
                'layer { name: "sa" type: "SoftArgmax" bottom: "logits" top: "hn" top: "pred" '
                '        soft_argmax_param { normalization: SOFTMAX } } '
                'layer { name: "gt" type: "GenHeatmap" bottom: "uv" top: "target" '
                '        gen_heatmap_param { gen_size: 16 render_sigma: 0.0625 } } '
                'layer { name: "kl" type: "HeatmapKLLoss" bottom: "hn" bottom: "target" top: "kl" } ')
    net = Net(net_text, phase="TRAIN", device="cpu")
    uv = torch.tensor([[0.5, 0.5]])                           # the joint at pixel (8, 8)
    logits = torch.full((1, 1, 16, 16), -10.0)
    logits[0, 0, 8, 3] = logits[0, 0, 8, 13] = 10.0          # two peaks whose mean is the joint
    out = net.forward(logits=logits, uv=uv)
    assert out["pred"].flatten().tolist() == pytest.approx([0.5, 0.5], abs=1e-6)   # L1 would be 0 here
    assert out["kl"].item() > 5
    x = logits.clone().requires_grad_()
    opt = torch.optim.Adam([x], lr=0.5)
    for _ in range(200):
        opt.zero_grad()
        loss = net.forward(logits=x, uv=uv)["kl"]
        loss.backward()
        opt.step()
    net.forward(logits=x.detach(), uv=uv)
    hn = net.blobs["hn"].data[0, 0]
    assert loss.item() < 0.05
    assert hn.argmax().item() == 8 * 16 + 8 and hn[8, 3] < 1e-3 and hn[8, 13] < 1e-3


@pytest.mark.parametrize("shapes,message", [
    ([(2, 21, 8, 8), (2, 21, 8, 4)], "target.*must have the heatmaps' shape"),
    ([(2, 42), (2, 42)], r"must be \(N, K, H, W\)"),
])
def test_kl_shape_errors(shapes, message):
    with pytest.raises(NetError, match=message):
        make_layer('name: "kl" type: "HeatmapKLLoss" bottom: "p" bottom: "t" top: "loss"', bottom_shapes=shapes)
