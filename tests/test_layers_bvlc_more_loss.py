"""More of BVLC Caffe's loss layers: MultinomialLogisticLoss, HingeLoss, ContrastiveLoss, InfogainLoss.

Each against literal Python ports of Caffe's Forward_cpu and Backward_cpu loops, float64 gradcheck where Caffe's
backward is the exact derivative, Caffe's defaults (loss_weight 1, normalization), shapes through a prototxt Net,
and one-line user errors."""

import math
import textwrap

import numpy as np
import pytest
import torch

from layers.build import make_layer
from netdef import protowire as pw
from netdef.errors import NetError
from nets.net import Net

LOG_THRESHOLD = 1e-20


def mk(type_, params="", shapes=(), bottoms=("x", "label"), tops=("loss",)):
    text = f'name: "l" type: "{type_}" ' + " ".join(f'bottom: "{b}"' for b in bottoms) + " " + \
        " ".join(f'top: "{t}"' for t in tops) + " " + params
    return make_layer(text, [tuple(s) for s in shapes])


def net(text, **kw):
    return Net(textwrap.dedent(text), device="cpu", **kw)


def gradcheck(fn, *inputs):
    inputs = tuple(t.detach().requires_grad_(True) for t in inputs)
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5)


def loss_and_grads(layer, *inputs, top_diff=1.0, wrt=(0,)):
    xs = [t.detach().clone().requires_grad_(i in wrt) for i, t in enumerate(inputs)]
    loss = layer(*xs)
    loss = loss[0] if isinstance(loss, tuple) else loss
    (loss * top_diff).backward()
    return loss.item(), [xs[i].grad for i in wrt]


# ================================================================ MultinomialLogisticLoss

def caffe_mll(prob, label, top_diff=1.0):
    num = prob.shape[0]
    dim = prob.size // num
    data, lab = prob.reshape(-1), label.reshape(-1)
    loss = 0.0
    for i in range(num):
        p = max(data[i * dim + int(lab[i])], LOG_THRESHOLD)
        loss -= math.log(p)
    diff = np.zeros(prob.size)
    scale = -top_diff / num
    for i in range(num):
        p = max(data[i * dim + int(lab[i])], LOG_THRESHOLD)
        diff[i * dim + int(lab[i])] = scale / p
    return loss / num, diff.reshape(prob.shape)


def test_multinomial_logistic_loss_matches_caffe_also_below_the_threshold():
    prob = torch.rand(4, 3, 2, 1, dtype=torch.float64) + 0.05
    prob[2, 1, 0, 0] = 0.0                        # the label's probability is 0: log(1e-20), gradient -1e20 / N
    label = torch.tensor([5.0, 0.0, 2.9, 1.0], dtype=torch.float64).view(4, 1, 1, 1)    # 2.9 truncates to 2
    layer = mk("MultinomialLogisticLoss", shapes=[prob.shape, label.shape]).double()
    loss, (g,) = loss_and_grads(layer, prob, label, top_diff=0.7)
    want, want_g = caffe_mll(prob.numpy(), label.numpy(), 0.7)
    assert loss == pytest.approx(want, rel=1e-12)
    np.testing.assert_allclose(g.numpy(), want_g, rtol=1e-12)
    assert g[2, 1, 0, 0].item() == pytest.approx(-0.7 / 4 / LOG_THRESHOLD, rel=1e-9)
    ok = torch.rand(3, 4, dtype=torch.float64) + 0.1
    gradcheck(lambda p: layer(p, torch.tensor([0.0, 3.0, 1.0], dtype=torch.float64)), ok)


def test_multinomial_logistic_loss_shapes_and_errors():
    layer = mk("MultinomialLogisticLoss", shapes=[(2, 3), (2,)])
    assert layer(torch.full((2, 3), 0.5), torch.tensor([0.0, 2.0])).shape == ()
    with pytest.raises(NetError, match=r"layer 'l' \(MultinomialLogisticLoss\): the label blob must hold one class "
                                       r"id per item"):
        mk("MultinomialLogisticLoss", shapes=[(2, 3), (2, 2)])
    with pytest.raises(NetError, match=r"bottoms must have the same first dim"):
        mk("MultinomialLogisticLoss", shapes=[(2, 3), (3,)])
    with pytest.raises(NetError, match=r"label 3 is out of range: class ids must be in 0\.\.2") as e:
        layer(torch.full((2, 3), 0.5), torch.tensor([0.0, 3.0]))
    assert "\n" not in str(e.value)


# ================================================================ HingeLoss

def caffe_hinge(x, label, norm, top_diff=1.0):
    num = x.shape[0]
    count = x.size
    dim = count // num
    diff = x.reshape(-1).copy()
    for i in range(num):
        diff[i * dim + int(label.reshape(-1)[i])] *= -1
    for i in range(num):
        for j in range(dim):
            diff[i * dim + j] = max(0.0, 1 + diff[i * dim + j])
    loss = np.abs(diff).sum() / num if norm == "L1" else (diff * diff).sum() / num
    for i in range(num):                                       # Backward_cpu
        diff[i * dim + int(label.reshape(-1)[i])] *= -1
    if norm == "L1":
        grad = np.sign(diff) * (top_diff / num)
    else:
        grad = diff * (top_diff * 2 / num)
    return loss, grad.reshape(x.shape)


@pytest.mark.parametrize("params, norm", [("", "L1"), ("hinge_loss_param { norm: L2 }", "L2"),
                                          ("hinge_loss_param { norm: 2 }", "L2"),
                                          ("hinge_loss_param { norm: 1 }", "L1")])
def test_hinge_loss_matches_caffe(params, norm):
    x = torch.randn(5, 4, 1, 1, dtype=torch.float64) * 1.5
    x[0, 0] = -1.0                                             # exactly at a kink: max(0, 1 + x) = 0
    label = torch.tensor([1.0, 3.0, 0.0, 2.0, 3.0], dtype=torch.float64)
    layer = mk("HingeLoss", params, [x.shape, label.shape]).double()
    assert layer.norm == norm
    loss, (g,) = loss_and_grads(layer, x, label, top_diff=1.3)
    want, want_g = caffe_hinge(x.numpy(), label.numpy(), norm, 1.3)
    assert loss == pytest.approx(want, rel=1e-12)
    np.testing.assert_allclose(g.numpy(), want_g, rtol=1e-12, atol=1e-15)
    smooth = torch.randn(3, 4, dtype=torch.float64)
    smooth = smooth + 0.1 * torch.sign(smooth + 1)             # keep 1 + s x away from 0
    gradcheck(lambda a: layer(a, label[:3]), smooth)


def test_hinge_loss_errors():
    with pytest.raises(NetError, match=r"layer 'l' \(HingeLoss\): norm 0 is not a valid value"):
        mk("HingeLoss", "hinge_loss_param { norm: 0 }", [(2, 3), (2,)])
    with pytest.raises(NetError, match=r"'norm' expects one of 0, L1, L2, found L3"):
        mk("HingeLoss", "hinge_loss_param { norm: L3 }", [(2, 3), (2,)])
    layer = mk("HingeLoss", shapes=[(2, 3), (2,)])
    with pytest.raises(NetError, match=r"label -1 is out of range"):
        layer(torch.randn(2, 3), torch.tensor([-1.0, 0.0]))


# ================================================================ ContrastiveLoss

def caffe_contrastive(a, b, y, margin, legacy, top_diff=1.0):
    num, channels = a.shape[0], a.size // a.shape[0]
    diff = (a - b).reshape(num, channels)
    dist_sq = np.array([diff[i] @ diff[i] for i in range(num)])
    loss = 0.0
    for i in range(num):
        if int(y.reshape(-1)[i]):
            loss += dist_sq[i]
        elif legacy:
            loss += max(margin - dist_sq[i], 0.0)
        else:
            d = max(margin - math.sqrt(dist_sq[i]), 0.0)
            loss += d * d
    loss = loss / num / 2
    grads = []
    for i in range(2):                                         # Backward_cpu
        sign = 1 if i == 0 else -1
        alpha = sign * top_diff / num
        out = np.zeros((num, channels))
        for j in range(num):
            if int(y.reshape(-1)[j]):
                out[j] = alpha * diff[j]
            else:
                if legacy:
                    mdist, beta = margin - dist_sq[j], -alpha
                else:
                    dist = math.sqrt(dist_sq[j])
                    mdist = margin - dist
                    beta = -alpha * mdist / (dist + 1e-4)
                out[j] = beta * diff[j] if mdist > 0 else 0.0
        grads.append(out.reshape(a.shape))
    return loss, grads


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("margin", [1.0, 3.0])
def test_contrastive_loss_matches_caffe_forward_and_backward(legacy, margin):
    a = torch.randn(6, 3, 1, 1, dtype=torch.float64)
    b = torch.randn(6, 3, 1, 1, dtype=torch.float64)
    b[4] = a[4]                                                # a dissimilar pair at distance 0
    y = torch.tensor([1.0, 0.0, 0.0, 0.7, 0.0, 2.0], dtype=torch.float64).view(6, 1, 1, 1)   # 0.7 -> 0: dissimilar
    params = f"contrastive_loss_param {{ margin: {margin} legacy_version: {str(legacy).lower()} }}"
    layer = mk("ContrastiveLoss", params, [a.shape, b.shape, y.shape], bottoms=("a", "b", "y")).double()
    loss, (ga, gb) = loss_and_grads(layer, a, b, y, top_diff=0.5, wrt=(0, 1))
    want, (want_a, want_b) = caffe_contrastive(a.numpy(), b.numpy(), y.numpy(), margin, legacy, 0.5)
    assert loss == pytest.approx(want, rel=1e-12)
    np.testing.assert_allclose(ga.numpy(), want_a, rtol=1e-12, atol=1e-15)    # Caffe's 1e-4 included
    np.testing.assert_allclose(gb.numpy(), want_b, rtol=1e-12, atol=1e-15)
    assert torch.isfinite(ga).all() and ga[4].abs().sum() == 0


def test_contrastive_loss_legacy_gradcheck_and_defaults():
    layer = mk("ContrastiveLoss", "contrastive_loss_param { legacy_version: true margin: 2 }",
               [(4, 3), (4, 3), (4,)], bottoms=("a", "b", "y")).double()
    y = torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    a, b = torch.randn(4, 3, dtype=torch.float64) * 0.5, torch.randn(4, 3, dtype=torch.float64) * 0.5
    gradcheck(lambda p, q: layer(p, q, y), a, b)
    default = mk("ContrastiveLoss", shapes=[(2, 2), (2, 2), (2,)], bottoms=("a", "b", "y"))
    assert default.p.margin == 1.0 and default.p.legacy_version is False
    # far apart dissimilar pair: 0; similar pair: d^2 / 2 / N
    out = default(torch.tensor([[0.0, 0.0], [0.0, 0.0]]), torch.tensor([[3.0, 4.0], [0.6, 0.8]]),
                  torch.tensor([0.0, 1.0]))
    assert out.item() == pytest.approx(1.0 / 2 / 2)


def test_contrastive_loss_errors():
    with pytest.raises(NetError, match=r"layer 'l' \(ContrastiveLoss\): bottom 0 must be \(N, C\) or \(N, C, 1, 1\)"):
        mk("ContrastiveLoss", shapes=[(2, 3, 2, 1), (2, 3, 2, 1), (2,)], bottoms=("a", "b", "y"))
    with pytest.raises(NetError, match=r"bottoms 0 and 1 must have the same channels"):
        mk("ContrastiveLoss", shapes=[(2, 3), (2, 4), (2,)], bottoms=("a", "b", "y"))
    with pytest.raises(NetError, match=r"the similarity blob must hold one value per pair"):
        mk("ContrastiveLoss", shapes=[(2, 3), (2, 3), (2, 2)], bottoms=("a", "b", "y"))
    with pytest.raises(NetError, match=r"takes 3 bottom\(s\), got 2"):
        mk("ContrastiveLoss", shapes=[(2, 3), (2, 3)], bottoms=("a", "b"))


# ================================================================ InfogainLoss

def np_softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def caffe_infogain(x, label, H, axis=1, ignore=None, mode="VALID", top_diff=1.0):
    prob = np_softmax(x, axis)
    outer, c = int(np.prod(x.shape[:axis])), x.shape[axis]
    inner = int(np.prod(x.shape[axis + 1:]))
    p, lab, h = prob.reshape(-1), label.reshape(-1), H.reshape(-1)
    loss, count = 0.0, 0
    for i in range(outer):
        for j in range(inner):
            lv = int(lab[i * inner + j])
            if ignore is not None and lv == ignore:
                continue
            for l in range(c):
                loss -= h[lv * c + l] * math.log(max(p[i * inner * c + l * inner + j], LOG_THRESHOLD))
            count += 1

    def normalizer(cnt):
        n = {"FULL": outer * inner, "VALID": cnt, "BATCH_SIZE": outer, "NONE": 1}[mode]
        return max(1.0, n)
    sum_rows = [sum(h[r * c + col] for col in range(c)) for r in range(c)]
    diff, dim, count2 = np.zeros(x.size), x.size // outer, 0
    for i in range(outer):
        for j in range(inner):
            lv = int(lab[i * inner + j])
            if ignore is not None and lv == ignore:
                for l in range(c):
                    diff[i * dim + l * inner + j] = 0
            else:
                for l in range(c):
                    diff[i * dim + l * inner + j] = p[i * dim + l * inner + j] * sum_rows[lv] - h[lv * c + l]
                count2 += 1
    return loss / normalizer(count), diff.reshape(x.shape) * (top_diff / normalizer(count2)), prob


@pytest.mark.parametrize("mode", ["FULL", "VALID", "BATCH_SIZE", "NONE"])
def test_infogain_loss_with_h_as_bottom_matches_caffe(mode):
    x = torch.randn(3, 4, 2, 3, dtype=torch.float64) * 2
    label = torch.randint(0, 4, (3, 1, 2, 3)).double()
    label[0, 0, 1, :2] = 7
    label[2, 0, 0, 0] = 7
    H = torch.rand(4, 4, dtype=torch.float64)
    params = f"loss_param {{ ignore_label: 7 normalization: {mode} }}"
    layer = mk("InfogainLoss", params, [x.shape, label.shape, (1, 1, 4, 4)], bottoms=("x", "label", "H")).double()
    loss, (g,) = loss_and_grads(layer, x, label, H.view(1, 1, 4, 4), top_diff=0.9)
    want, want_g, _ = caffe_infogain(x.numpy(), label.numpy(), H.numpy(), ignore=7, mode=mode, top_diff=0.9)
    assert loss == pytest.approx(want, rel=1e-12)
    np.testing.assert_allclose(g.numpy(), want_g, rtol=1e-10, atol=1e-14)
    gradcheck(lambda s: layer(s, label, H), x)


def test_infogain_loss_axis_second_top_and_the_log_threshold():
    x = torch.randn(2, 3, 5, dtype=torch.float64)
    x[0, 1, 0] = 80.0                                          # softmax underflows to 0 for the others there
    label = torch.randint(0, 5, (2, 3)).double()
    label[0, 1] = 2.0
    H = torch.rand(5, 5, dtype=torch.float64) + torch.eye(5, dtype=torch.float64)
    layer = mk("InfogainLoss", "infogain_loss_param { axis: -1 }", [x.shape, label.shape, (25,)],
               bottoms=("x", "label", "H"), tops=("loss", "prob")).double()
    loss, prob = layer(x, label, H.view(25))
    want, want_g, want_prob = caffe_infogain(x.numpy(), label.numpy(), H.numpy(), axis=2)
    assert loss.item() == pytest.approx(want, rel=1e-12)
    np.testing.assert_allclose(prob.numpy(), want_prob, rtol=1e-12)
    assert not prob.requires_grad
    _, (g,) = loss_and_grads(lambda *t: layer(*t)[0], x, label, H.view(25))
    np.testing.assert_allclose(g.numpy(), want_g, rtol=1e-10, atol=1e-14)     # Caffe's p * sum(H row) - H, clamp or not


def write_blobproto(path, values, shape=None, legacy=None, double=False):
    """A BlobProto written field by field with the wire codec (shape or legacy num/channels/height/width)."""
    body = b""
    if legacy is not None:
        body += b"".join(pw.varint_field(n, v) for n, v in zip((1, 2, 3, 4), legacy))
    body += pw.packed_doubles_field(8, values) if double else pw.packed_floats_field(5, values)
    if shape is not None:
        body += pw.len_field(7, pw.packed_varints_field(1, shape))
    path.write_bytes(body)


@pytest.mark.parametrize("form", ["shape", "legacy", "double"])
def test_infogain_loss_reads_h_from_a_binaryproto_source(tmp_path, form):
    H = np.array([[1.0, 0.5, 0.0], [0.25, 2.0, 0.0], [0.0, 0.0, 1.5]])
    path = tmp_path / "H.binaryproto"
    if form == "shape":
        write_blobproto(path, H.reshape(-1), shape=(3, 3))
    elif form == "legacy":
        write_blobproto(path, H.reshape(-1), legacy=(1, 1, 3, 3))
    else:
        write_blobproto(path, H.reshape(-1), shape=(9,), double=True)
    layer = mk("InfogainLoss", f'infogain_loss_param {{ source: "{path}" }}', [(4, 3), (4,)]).double()
    assert layer.blob_names == []                              # H is not a learnable/saved blob, as in Caffe
    x = torch.randn(4, 3, dtype=torch.float64)
    label = torch.tensor([0.0, 1.0, 2.0, 1.0], dtype=torch.float64)
    loss, (g,) = loss_and_grads(layer, x, label)
    want, want_g, _ = caffe_infogain(x.numpy(), label.numpy(), H)
    assert loss == pytest.approx(want, rel=1e-7)               # H went through float32 (packed floats)
    np.testing.assert_allclose(g.numpy(), want_g, rtol=1e-7)


def test_infogain_loss_through_a_net_has_loss_weight_one_on_the_loss_only():
    n = net("""
        input: "x" input_shape { dim: 2 dim: 3 }
        input: "label" input_shape { dim: 2 }
        input: "H" input_shape { dim: 3 dim: 3 }
        layer { name: "loss" type: "InfogainLoss" bottom: "x" bottom: "label" bottom: "H" top: "loss" top: "prob" }
    """)
    assert n.blob_shapes["loss"] == () and n.blob_shapes["prob"] == (2, 3)
    assert n.plan[-1].loss_weights == [1.0, 0.0]
    out = n.forward(x=torch.zeros(2, 3), label=torch.tensor([0.0, 2.0]), H=torch.eye(3))
    assert n.loss.item() == pytest.approx(math.log(3), rel=1e-6) == out["loss"].item()


def test_infogain_loss_errors(tmp_path):
    with pytest.raises(NetError, match=r"layer 'l' \(InfogainLoss\): needs the infogain matrix H: a third bottom, or "
                                       r"infogain_loss_param \{ source"):
        mk("InfogainLoss", shapes=[(2, 3), (2,)])
    with pytest.raises(NetError, match=r"normalize is deprecated for InfogainLoss"):
        mk("InfogainLoss", "loss_param { normalize: true }", [(2, 3), (2,), (3, 3)], bottoms=("x", "label", "H"))
    with pytest.raises(NetError, match=r"the infogain matrix H must hold 3 x 3 = 9 values .* got 4"):
        mk("InfogainLoss", shapes=[(2, 3), (2,), (2, 2)], bottoms=("x", "label", "H"))
    with pytest.raises(NetError, match=r"need 4 labels \(one per position\), but the label blob \(2,\) holds 2"):
        mk("InfogainLoss", shapes=[(2, 3, 2), (2,), (3, 3)], bottoms=("x", "label", "H"))
    missing = tmp_path / "nope.binaryproto"
    with pytest.raises(NetError, match=r"cannot read infogain_loss_param source '.*nope.binaryproto'") as e:
        mk("InfogainLoss", f'infogain_loss_param {{ source: "{missing}" }}', [(2, 3), (2,)])
    assert "\n" not in str(e.value)
    junk = tmp_path / "junk.binaryproto"
    junk.write_bytes(b"\x0f\xff\xff")
    with pytest.raises(NetError, match=r"junk.binaryproto' is not a BlobProto \(.binaryproto\)"):
        mk("InfogainLoss", f'infogain_loss_param {{ source: "{junk}" }}', [(2, 3), (2,)])
    short = tmp_path / "short.binaryproto"
    write_blobproto(short, [1.0, 2.0], shape=(3, 3))
    with pytest.raises(NetError, match=r"blob shape \(3, 3\) does not match its 2 values"):
        mk("InfogainLoss", f'infogain_loss_param {{ source: "{short}" }}', [(2, 3), (2,)])
    layer = mk("InfogainLoss", shapes=[(2, 3), (2,), (3, 3)], bottoms=("x", "label", "H"))
    with pytest.raises(NetError, match=r"label 3 is out of range"):
        layer(torch.randn(2, 3), torch.tensor([0.0, 3.0]), torch.eye(3))


# ================================================================ all four in a net

def test_every_new_loss_defaults_to_loss_weight_one_in_a_net():
    n = net("""
        input: "p" input_shape { dim: 3 dim: 4 }
        input: "a" input_shape { dim: 3 dim: 4 dim: 1 dim: 1 }
        input: "label" input_shape { dim: 3 }
        layer { name: "mll" type: "MultinomialLogisticLoss" bottom: "p" bottom: "label" top: "mll" }
        layer { name: "hinge" type: "HingeLoss" bottom: "p" bottom: "label" top: "hinge" }
        layer { name: "contrastive" type: "ContrastiveLoss" bottom: "p" bottom: "a" bottom: "label" top: "c"
                loss_weight: 0.5 }
    """)
    assert [st.loss_weights for st in n.plan[3:]] == [[1.0], [1.0], [0.5]]
    assert all(n.blob_shapes[b] == () for b in ("mll", "hinge", "c"))
    p = torch.rand(3, 4) + 0.1
    out = n.forward(p=p, a=torch.randn(3, 4, 1, 1), label=torch.tensor([0.0, 3.0, 1.0]))
    assert n.loss.item() == pytest.approx(out["mll"].item() + out["hinge"].item() + 0.5 * out["c"].item(), rel=1e-6)
