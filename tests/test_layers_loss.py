"""Loss layers (SoftmaxWithLoss, SigmoidCrossEntropyLoss, EuclideanLoss) and Accuracy."""

import numpy as np
import pytest
import torch

from layers.build import make_layer
from netdef.errors import NetError, NetNote
from nets.net import Net


def layer(type_, params="", shapes=(), tops=("loss",)):
    text = f'name: "l" type: "{type_}" bottom: "x" bottom: "label" ' + \
        " ".join(f'top: "{t}"' for t in tops) + " " + params
    return make_layer(text, bottom_shapes=shapes)


def np_log_softmax(x, axis):
    m = x.max(axis=axis, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=axis, keepdims=True))


def np_softmax_loss(x, labels, mode="VALID", ignore=None):
    """Reference with an explicit loop over (n, h, w) positions, axis 1."""
    logp = np_log_softmax(x.astype(np.float64), 1)
    n, c = x.shape[:2]
    lab = labels.reshape(n, -1).astype(int)
    logp = logp.reshape(n, c, -1)
    total, valid = 0.0, 0
    for i in range(n):
        for j in range(lab.shape[1]):
            if ignore is not None and lab[i, j] == ignore:
                continue
            total -= logp[i, lab[i, j], j]
            valid += 1
    norm = {"FULL": lab.size, "VALID": valid if ignore is not None else lab.size, "BATCH_SIZE": n, "NONE": 1}[mode]
    return total / max(1, norm)


# ---- SoftmaxWithLoss ---------------------------------------------------------------------------------------

def spatial_case():
    x = torch.randn(3, 4, 2, 3)
    labels = torch.randint(0, 4, (3, 1, 2, 3)).float()
    labels[0, 0, 0, :2] = 255
    labels[2, 0, 1, 1] = 255
    return x, labels


@pytest.mark.parametrize("mode", ["FULL", "VALID", "BATCH_SIZE", "NONE"])
def test_softmax_loss_normalization_modes(mode):
    x, labels = spatial_case()
    lay = layer("SoftmaxWithLoss", f"loss_param {{ ignore_label: 255 normalization: {mode} }}",
                [(3, 4, 2, 3), (3, 1, 2, 3)])
    loss = lay(x, labels)
    assert loss.shape == ()
    assert loss.item() == pytest.approx(np_softmax_loss(x.numpy(), labels.numpy(), mode, 255), rel=1e-5)


def test_softmax_loss_defaults_and_legacy_normalize():
    x, labels = spatial_case()
    labels[labels == 255] = 1
    xn, ln = x.numpy(), labels.numpy()
    shapes = [(3, 4, 2, 3), (3, 2, 3)]
    flat = labels.reshape(3, 2, 3)   # labels may also come without the channel axis
    # default VALID without ignore_label: divide by every position (18)
    assert layer("SoftmaxWithLoss", "", shapes)(x, flat).item() == pytest.approx(np_softmax_loss(xn, ln), rel=1e-5)
    want_batch = np_softmax_loss(xn, ln, "BATCH_SIZE")
    assert want_batch == pytest.approx(6 * np_softmax_loss(xn, ln))
    got = layer("SoftmaxWithLoss", "loss_param { normalize: false }", shapes)(x, flat)
    assert got.item() == pytest.approx(want_batch, rel=1e-5)
    got = layer("SoftmaxWithLoss", "loss_param { normalize: true }", shapes)(x, flat)
    assert got.item() == pytest.approx(np_softmax_loss(xn, ln), rel=1e-5)
    # normalization wins over normalize; enum by number (FULL = 0, VALID = 1, BATCH_SIZE = 2, NONE = 3)
    got = layer("SoftmaxWithLoss", "loss_param { normalize: true normalization: 2 }", shapes)(x, flat)
    assert got.item() == pytest.approx(want_batch, rel=1e-5)
    got = layer("SoftmaxWithLoss", "loss_param { normalization: 3 }", shapes)(x, flat)
    assert got.item() == pytest.approx(np_softmax_loss(xn, ln, "NONE"), rel=1e-5)


def test_softmax_loss_all_ignored_and_truncated_labels():
    x = torch.randn(2, 3)
    lay = layer("SoftmaxWithLoss", "loss_param { ignore_label: -1 }", [(2, 3), (2,)])
    assert lay(x, torch.tensor([-1.0, -1.0])).item() == 0.0   # normalizer is at least 1
    # 1.9 -> class 1 (C's truncation), -0.5 -> 0
    want = np_softmax_loss(x.numpy(), np.array([1, 0]))
    assert lay(x, torch.tensor([1.9, -0.5])).item() == pytest.approx(want, rel=1e-5)


def test_softmax_loss_second_top_and_axis():
    x = torch.randn(2, 3, 5)   # classes on the last axis
    labels = torch.randint(0, 5, (2, 3)).float()
    lay = layer("SoftmaxWithLoss", "softmax_param { axis: -1 engine: CAFFE }", [(2, 3, 5), (2, 3)],
                tops=("loss", "prob"))
    assert lay.infer_top_shapes([(2, 3, 5), (2, 3)]) == [(), (2, 3, 5)]
    loss, prob = lay(x, labels)
    e = np.exp(x.numpy().astype(np.float64))
    np.testing.assert_allclose(prob.numpy(), e / e.sum(-1, keepdims=True), rtol=1e-5)
    moved = np.moveaxis(x.numpy(), -1, 1)
    assert loss.item() == pytest.approx(np_softmax_loss(moved, labels.numpy()), rel=1e-5)


@pytest.mark.parametrize("params", ["loss_param { ignore_label: 255 }",
                                    "loss_param { ignore_label: 255 normalization: FULL }",
                                    "loss_param { ignore_label: 255 normalization: BATCH_SIZE }",
                                    "loss_param { ignore_label: 255 normalization: NONE }"])
def test_softmax_loss_gradcheck(params):
    x = torch.randn(2, 3, 2, 2)
    labels = torch.tensor([[[[0.0, 255.0], [2.0, 1.0]]], [[[1.0, 1.0], [255.0, 0.0]]]])
    lay = layer("SoftmaxWithLoss", params, [tuple(x.shape), tuple(labels.shape)]).double()
    xd = x.double().requires_grad_()
    assert torch.autograd.gradcheck(lambda s: lay(s, labels.double()), (xd,))


def test_softmax_loss_gradient_matches_caffe_formula():
    # Caffe's backward: (softmax - onehot) / normalizer, zero on ignored positions
    x = torch.randn(4, 3, requires_grad=True)
    labels = torch.tensor([0.0, 2.0, 7.0, 1.0])
    layer("SoftmaxWithLoss", "loss_param { ignore_label: 7 }", [(4, 3), (4,)])(x, labels).backward()
    p = torch.softmax(x.detach(), 1)
    want = (p - torch.nn.functional.one_hot(torch.tensor([0, 2, 0, 1]), 3)) / 3
    want[2] = 0
    torch.testing.assert_close(x.grad, want)


def test_softmax_loss_errors():
    with pytest.raises(NetError, match=r"need 12 labels \(one per position\), but the label blob \(2, 3\) holds 6"):
        layer("SoftmaxWithLoss", "", [(2, 5, 2, 3), (2, 3)])
    with pytest.raises(NetError, match=r"same first dim \(batch size\): \(2, 5\) and \(3,\)"):
        layer("SoftmaxWithLoss", "", [(2, 5), (3,)])
    with pytest.raises(NetError, match=r"unknown param 'ignore_lable' in loss_param \(did you mean ignore_label\?\)"):
        layer("SoftmaxWithLoss", "loss_param { ignore_lable: 1 }", [(2, 5), (2,)])
    with pytest.raises(NetError, match="'normalization' expects one of FULL, VALID, BATCH_SIZE, NONE"):
        layer("SoftmaxWithLoss", "loss_param { normalization: BATCH }", [(2, 5), (2,)])
    with pytest.warns(NetNote, match=r"ignores accuracy_param"):
        layer("SoftmaxWithLoss", "accuracy_param { top_k: 1 }", [(2, 5), (2,)])
    lay = layer("SoftmaxWithLoss", "loss_param { ignore_label: -1 }", [(2, 5), (2,)])
    with pytest.raises(NetError, match=r"label 5 is out of range: class ids must be in 0..4 or equal ignore_label -1"):
        lay(torch.randn(2, 5), torch.tensor([1.0, 5.0]))
    with pytest.raises(NetError, match="label -2 is out of range"):
        lay(torch.randn(2, 5), torch.tensor([-2.0, 1.0]))


def test_softmax_loss_in_net_has_loss_weight_one():
    net = Net("""
    input: "x" input_shape { dim: 4 dim: 3 }
    input: "y" input_shape { dim: 4 }
    layer { name: "loss" type: "SoftmaxWithLoss" bottom: "x" bottom: "y" top: "loss" top: "prob" }
    """, phase="TRAIN", device="cpu")
    x, y = torch.randn(4, 3), torch.tensor([0.0, 1.0, 2.0, 1.0])
    out = net.forward(x=x, y=y)
    assert out["loss"].shape == () and out["prob"].shape == (4, 3)
    assert net.loss.item() == pytest.approx(np_softmax_loss(x.numpy(), y.numpy()), rel=1e-5)


# ---- SigmoidCrossEntropyLoss -------------------------------------------------------------------------------

def np_sigmoid_ce(x, t, ignore=None):
    """(sum of the kept elements' cross-entropy, number kept), from the textbook (unstable) form."""
    x, t = x.astype(np.float64).ravel(), t.astype(np.float64).ravel()
    p = 1 / (1 + np.exp(-x))
    per = -(t * np.log(p) + (1 - t) * np.log(1 - p))
    keep = np.ones_like(per, bool) if ignore is None else t.astype(int) != ignore
    return per[keep].sum(), keep.sum()


@pytest.mark.parametrize("params, divide_by", [
    ("", "batch"),                                            # Caffe's default for this layer: BATCH_SIZE
    ("loss_param { normalization: VALID }", "count"),          # no ignore_label: every element
    ("loss_param { normalization: FULL }", "count"),
    ("loss_param { normalization: NONE }", "one"),
    ("loss_param { normalize: true }", "count"),
    ("loss_param { normalize: false }", "batch"),
])
def test_sigmoid_ce_values(params, divide_by):
    x, t = torch.randn(3, 2, 4), torch.rand(3, 2, 4)
    total, _ = np_sigmoid_ce(x.numpy(), t.numpy())
    norm = {"batch": 3, "count": 24, "one": 1}[divide_by]
    lay = layer("SigmoidCrossEntropyLoss", params, [(3, 2, 4), (3, 8)])
    got = lay(x, t.reshape(3, 8))   # only the counts must match
    assert got.shape == ()
    assert got.item() == pytest.approx(total / norm, rel=1e-5)


def test_sigmoid_ce_ignore_label_and_stability():
    x = torch.tensor([[0.5, -1.0, 2.0, 0.0]])
    t = torch.tensor([[1.0, -1.0, 0.0, 1.0]])
    total, valid = np_sigmoid_ce(x.numpy(), t.numpy(), ignore=-1)
    assert valid == 3
    lay = layer("SigmoidCrossEntropyLoss", "loss_param { ignore_label: -1 normalization: VALID }", [(1, 4), (1, 4)])
    assert lay(x, t).item() == pytest.approx(total / 3, rel=1e-6)
    lay = layer("SigmoidCrossEntropyLoss", "loss_param { ignore_label: -1 }", [(1, 4), (1, 4)])
    assert lay(x, t).item() == pytest.approx(total / 1, rel=1e-6)    # BATCH_SIZE, N = 1
    # large logits: loss = |x| for the wrong target, 0 for the right one, never inf
    big = layer("SigmoidCrossEntropyLoss", "loss_param { normalization: NONE }", [(1, 4), (1, 4)])
    got = big(torch.tensor([[100.0, -100.0, 100.0, -100.0]]), torch.tensor([[0.0, 1.0, 1.0, 0.0]]))
    assert got.item() == pytest.approx(200.0, rel=1e-6)


def test_sigmoid_ce_gradient_and_gradcheck():
    x = torch.tensor([[0.0, 1.5, -2.0], [0.3, 0.0, 4.0]], requires_grad=True)
    t = torch.tensor([[1.0, 0.0, 9.0], [0.25, 0.0, 1.0]])
    layer("SigmoidCrossEntropyLoss", "loss_param { ignore_label: 9 }", [(2, 3), (2, 3)])(x, t).backward()
    want = (torch.sigmoid(x.detach()) - t) / 2     # Caffe: (sigmoid(x) - t) / N, 0 where ignored
    want[0, 2] = 0
    torch.testing.assert_close(x.grad, want)
    lay = layer("SigmoidCrossEntropyLoss", "loss_param { ignore_label: 9 normalization: VALID }",
                [(2, 3), (2, 3)]).double()
    assert torch.autograd.gradcheck(lambda a: lay(a, t.double()), (torch.randn(2, 3).double().requires_grad_(),))


def test_sigmoid_ce_errors():
    with pytest.raises(NetError, match=r"same count: \(2, 3\) has 6 elements, \(2, 4\) has 8"):
        layer("SigmoidCrossEntropyLoss", "", [(2, 3), (2, 4)])
    with pytest.raises(NetError, match=r"\(did you mean normalization\?\)"):
        layer("SigmoidCrossEntropyLoss", "loss_param { normalisation: FULL }", [(2, 3), (2, 3)])


# ---- EuclideanLoss -----------------------------------------------------------------------------------------

def test_euclidean_loss_value_gradient_and_shapes():
    a, b = torch.randn(4, 3), torch.randn(4, 3, 1, 1)
    lay = layer("EuclideanLoss", "", [(4, 3), (4, 3, 1, 1)])
    an, bn = a.numpy().astype(np.float64), b.numpy().reshape(4, 3).astype(np.float64)
    assert lay.infer_top_shapes([(4, 3), (4, 3, 1, 1)]) == [()]
    assert lay(a, b).item() == pytest.approx(((an - bn) ** 2).sum() / 8, rel=1e-5)
    lay.double()
    assert torch.autograd.gradcheck(lambda p, q: lay(p, q), (a.double().requires_grad_(),
                                                             b.double().requires_grad_()))


def test_euclidean_loss_errors():
    with pytest.raises(NetError, match=r"same dimension per item: \(4, 3\) and \(4, 2\)"):
        layer("EuclideanLoss", "", [(4, 3), (4, 2)])
    with pytest.warns(NetNote, match=r"ignores loss_param \(this layer takes no param block; Caffe ignores it too\)"):
        layer("EuclideanLoss", "loss_param { normalize: true }", [(4, 3), (4, 3)])
    with pytest.raises(NetError, match=r"unknown param block 'los_param' \(this layer takes no param block\) "
                                       r"\(did you mean loss_param\?\)"):
        layer("EuclideanLoss", "los_param { normalize: true }", [(4, 3), (4, 3)])


# ---- Accuracy ----------------------------------------------------------------------------------------------

def np_topk_accuracy(scores, labels, k):
    """No ties in `scores`: correct when the label is among the k largest (argsort)."""
    top = np.argsort(-scores, axis=1)[:, :k]
    return np.mean([lab in row for lab, row in zip(labels.astype(int), top)])


@pytest.mark.parametrize("k", [1, 2, 4])
def test_accuracy_top_k(k):
    scores = torch.randn(50, 6)
    labels = torch.randint(0, 6, (50,)).float()
    lay = layer("Accuracy", f"accuracy_param {{ top_k: {k} }}", [(50, 6), (50,)], tops=("acc",))
    got = lay(scores, labels)
    assert got.shape == ()
    assert got.item() == pytest.approx(np_topk_accuracy(scores.numpy(), labels.numpy(), k), abs=1e-6)


def test_accuracy_ties_count_against_the_label():
    scores = torch.tensor([[2.0, 2.0, 0.0], [2.0, 2.0, 0.0], [1.0, 3.0, 1.0], [1.0, 3.0, 1.0], [0.0, 1.0, 0.5]])
    labels = torch.tensor([0.0, 1.0, 0.0, 2.0, 1.0])
    top1 = layer("Accuracy", "", [(5, 3), (5,)], tops=("acc",))
    assert top1(scores, labels).item() == pytest.approx(1 / 5)      # only the untied last row
    top2 = layer("Accuracy", "accuracy_param { top_k: 2 }", [(5, 3), (5,)], tops=("acc",))
    # rows 0, 1: one other class ties -> 1 < 2, correct; rows 2, 3: two others >= -> wrong; row 4 correct
    assert top2(scores, labels).item() == pytest.approx(3 / 5)
    top3 = layer("Accuracy", "accuracy_param { top_k: 3 }", [(5, 3), (5,)], tops=("acc",))
    assert top3(scores, labels).item() == 1.0


def test_accuracy_per_class_spatial_and_ignore():
    # (N, C, H, W) = (2, 3, 1, 2): positions and labels written out by hand
    scores = torch.tensor([[[[0.9, 0.1]], [[0.05, 0.8]], [[0.05, 0.1]]],
                           [[[0.2, 0.3]], [[0.7, 0.3]], [[0.1, 0.4]]]])
    # predictions: (0, 1), (1, 2)
    labels = torch.tensor([[[[0.0, 1.0]]], [[[2.0, 5.0]]]])     # 5 is ignored
    lay = layer("Accuracy", "accuracy_param { ignore_label: 5 }", [(2, 3, 1, 2), (2, 1, 1, 2)],
                tops=("acc", "per_class"))
    assert lay.infer_top_shapes([(2, 3, 1, 2), (2, 1, 1, 2)]) == [(), (3,)]
    acc, per_class = lay(scores, labels)
    assert acc.item() == pytest.approx(2 / 3)
    assert per_class.tolist() == [1.0, 1.0, 0.0]
    labels = torch.tensor([[[[0.0, 0.0]]], [[[5.0, 5.0]]]])   # class 1 and 2 absent -> 0
    acc, per_class = lay(scores, labels)
    assert acc.item() == 0.5 and per_class.tolist() == [0.5, 0.0, 0.0]
    acc, per_class = lay(scores, torch.full((2, 1, 1, 2), 5.0))  # nothing left -> 0
    assert acc.item() == 0.0 and per_class.tolist() == [0.0, 0.0, 0.0]


def test_accuracy_is_not_differentiable_and_keeps_dtype():
    lay = layer("Accuracy", "", [(3, 4), (3,)], tops=("acc",)).double()
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    acc = lay(x, torch.tensor([0.0, 1.0, 2.0]))
    assert not acc.requires_grad and acc.dtype == torch.float64


def test_accuracy_errors():
    with pytest.raises(NetError, match=r"top_k 5 must be between 1 and the number of classes \(4\)"):
        layer("Accuracy", "accuracy_param { top_k: 5 }", [(3, 4), (3,)], tops=("acc",))
    with pytest.raises(NetError, match=r"need 6 labels \(one per position\), but the label blob \(3,\) holds 3"):
        layer("Accuracy", "", [(3, 4, 2), (3,)], tops=("acc",))
    with pytest.raises(NetError, match=r"\(did you mean top_k\?\)"):
        layer("Accuracy", "accuracy_param { topk: 2 }", [(3, 4), (3,)], tops=("acc",))
    with pytest.raises(NetError, match=r"takes 1 to 2 top\(s\), got 3"):
        layer("Accuracy", "", [(3, 4), (3,)], tops=("a", "b", "c"))
    lay = layer("Accuracy", "", [(3, 4), (3,)], tops=("acc",))
    with pytest.raises(NetError, match=r"label 4 is out of range: class ids must be in 0..3$"):
        lay(torch.randn(3, 4), torch.tensor([0.0, 4.0, 1.0]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_out_of_range_label_on_gpu_gives_nan_without_error():
    x = torch.randn(2, 3, device="cuda")
    bad = torch.tensor([1.0, 3.0], device="cuda")
    sm = layer("SoftmaxWithLoss", "", [(2, 3), (2,)]).cuda()
    acc = layer("Accuracy", "", [(2, 3), (2,)], tops=("acc", "pc")).cuda()
    assert torch.isnan(sm(x, bad)).item()
    a, pc = acc(x, bad)
    assert torch.isnan(a).item() and torch.isnan(pc).all().item()
    good = torch.tensor([1.0, 2.0], device="cuda")
    assert torch.isfinite(sm(x, good)).item()
    assert sm(x, good).item() == pytest.approx(np_softmax_loss(x.cpu().numpy(), good.cpu().numpy()), rel=1e-5)
