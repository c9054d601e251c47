"""Acceptance: classic Caffe model definitions build with Caffe's blob shapes and run.

The nets under tests/data/zoo/ are written in the style of the public deploy files (LeNet, AlexNet, GoogLeNet,
VGG-16 in the legacy V1 format, ResNet-50 with BatchNorm + Scale). Expected shapes are the ones Caffe prints
when it builds those nets (e.g. AlexNet pool5 256x6x6 from a 227x227 input, GoogLeNet pool1/3x3_s2 56x56 from
ceil-mode pooling of 112x112); parameter counts are the published ones for each architecture.
"""

import os

import pytest
import torch
import torch.nn.functional as F

from nets.net import Net

ZOO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "zoo")


def build(name, phase="TEST"):
    return Net(os.path.join(ZOO, name), phase=phase, device="cpu")


def n_learnable(net):
    return sum(p.tensor.numel() for p in net.param_info)


def assert_shapes(net, expected):
    wrong = {b: (net.blob_shapes.get(b), s) for b, s in expected.items() if net.blob_shapes.get(b) != s}
    assert not wrong, f"blob: (ours, Caffe's) {wrong}"


@torch.no_grad()
def randomize(net, gain=2.0):
    """He-scaled random weights, small random biases, BatchNorm stats mean 0 / var 1 (so activations keep scale)."""
    for info in net.param_info:
        t = info.tensor
        if t.dim() > 1:
            t.normal_(0.0, (gain / (t.numel() / t.shape[0])) ** 0.5)
        else:
            t.uniform_(-0.1, 0.1)
    for name in net.layer_names:
        layer = net.layer(name)
        if layer.type == "BatchNorm":
            mean, var, factor = layer.caffe_blobs()
            mean.zero_()
            var.fill_(1.0)
            factor.fill_(1.0)
        elif layer.type == "Scale":
            layer.caffe_blobs()[0].uniform_(0.5, 1.0)


# ---- LeNet --------------------------------------------------------------------------------------------------

LENET_SHAPES = {"data": (64, 1, 28, 28), "conv1": (64, 20, 24, 24), "pool1": (64, 20, 12, 12),
                "conv2": (64, 50, 8, 8), "pool2": (64, 50, 4, 4), "ip1": (64, 500), "ip2": (64, 10),
                "prob": (64, 10)}


def test_lenet_shapes_and_params():
    net = build("lenet.prototxt")
    assert_shapes(net, LENET_SHAPES)
    assert net.inputs == {"data": (64, 1, 28, 28)}
    assert net.outputs == ["prob"]
    assert n_learnable(net) == 431080   # 520 + 25050 + 400500 + 5010
    assert [tuple(t.shape) for t in net.params["conv2"]] == [(50, 20, 5, 5), (50,)]
    assert [tuple(t.shape) for t in net.params["ip1"]] == [(500, 800), (500,)]
    assert [i.lr_mult for i in net.param_info if i.layer == "ip1"] == [1.0, 2.0]


@torch.no_grad()
def test_lenet_forward_matches_functional_reference():
    net = build("lenet.prototxt")
    x = torch.rand(64, 1, 28, 28)
    out = net.forward(data=x)
    p = net.params
    r = F.max_pool2d(F.conv2d(x, *p["conv1"]), 2, 2)
    r = F.max_pool2d(F.conv2d(r, *p["conv2"]), 2, 2)
    torch.testing.assert_close(net.blobs["pool2"], r)
    r = F.linear(F.relu(F.linear(r.reshape(64, -1), *p["ip1"])), *p["ip2"])
    torch.testing.assert_close(net.blobs["ip2"], r, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["prob"], torch.softmax(r, 1), rtol=1e-5, atol=1e-6)
    assert tuple(out["prob"].shape) == (64, 10)


def test_lenet_train_test_phases():
    train = build("lenet_train_test.prototxt", "TRAIN")
    assert train.layer_names == ["mnist", "conv1", "pool1", "conv2", "pool2", "ip1", "relu1", "ip2", "loss"]
    assert train.layer("mnist").type == "DummyData"
    assert train.inputs == {}
    assert train.outputs == ["loss"]
    assert train.blob_shapes["label"] == (64,) and train.blob_shapes["loss"] == ()
    train.forward()
    assert train.loss.dim() == 0 and torch.isfinite(train.loss)
    # the loss is the mean cross entropy against the DummyData label (constant 7)
    ref = F.cross_entropy(train.blobs["ip2"], torch.full((64,), 7))
    torch.testing.assert_close(train.loss, ref, rtol=1e-5, atol=1e-6)

    test = build("lenet_train_test.prototxt", "TEST")
    assert test.layer_names == ["mnist", "conv1", "pool1", "conv2", "pool2", "ip1", "relu1", "ip2",
                                "accuracy", "loss"]
    assert test.layer("mnist").type == "Input"
    assert test.inputs == {"data": (100, 1, 28, 28), "label": (100,)}
    assert test.outputs == ["accuracy", "loss"]
    x, label = torch.rand(100, 1, 28, 28), torch.randint(0, 10, (100,)).float()
    out = test.forward(data=x, label=label)
    logits = test.blobs["ip2"]
    acc = (logits.argmax(1) == label.long()).float().mean()
    torch.testing.assert_close(out["accuracy"].reshape(()), acc)
    torch.testing.assert_close(out["loss"].reshape(()), F.cross_entropy(logits, label.long()),
                               rtol=1e-5, atol=1e-6)
    # the TRAIN data layer and the TEST accuracy layer are filtered out of the other phase entirely
    assert "accuracy" not in train.blob_shapes


# ---- AlexNet ------------------------------------------------------------------------------------------------

ALEXNET_SHAPES = {"data": (10, 3, 227, 227), "conv1": (10, 96, 55, 55), "norm1": (10, 96, 55, 55),
                  "pool1": (10, 96, 27, 27), "conv2": (10, 256, 27, 27), "norm2": (10, 256, 27, 27),
                  "pool2": (10, 256, 13, 13), "conv3": (10, 384, 13, 13), "conv4": (10, 384, 13, 13),
                  "conv5": (10, 256, 13, 13), "pool5": (10, 256, 6, 6), "fc6": (10, 4096), "fc7": (10, 4096),
                  "fc8": (10, 1000), "prob": (10, 1000)}


@pytest.fixture(scope="module")
def alexnet():
    return build("alexnet.prototxt")


def test_alexnet_shapes_and_params(alexnet):
    assert_shapes(alexnet, ALEXNET_SHAPES)
    assert alexnet.outputs == ["prob"]
    # group: 2 halves each filter's input channels
    assert tuple(alexnet.params["conv2"][0].shape) == (256, 48, 5, 5)
    assert tuple(alexnet.params["conv4"][0].shape) == (384, 192, 3, 3)
    assert tuple(alexnet.params["conv5"][0].shape) == (256, 192, 3, 3)
    assert tuple(alexnet.params["fc6"][0].shape) == (4096, 9216)
    assert n_learnable(alexnet) == 60965224
    assert [(i.lr_mult, i.decay_mult) for i in alexnet.param_info if i.layer == "fc8"] == [(1.0, 1.0), (2.0, 0.0)]


@torch.no_grad()
def test_alexnet_forward_batch1_matches_functional_reference(alexnet):
    randomize(alexnet)
    x = 100 * torch.randn(1, 3, 227, 227)   # large enough that LRN's normaliser is far from 1
    out = alexnet.forward(data=x)
    p = alexnet.params

    def lrn(t):
        return F.local_response_norm(t, 5, alpha=1e-4, beta=0.75, k=1.0)

    r = F.max_pool2d(lrn(F.relu(F.conv2d(x, *p["conv1"], stride=4))), 3, 2)
    r = F.max_pool2d(lrn(F.relu(F.conv2d(r, *p["conv2"], padding=2, groups=2))), 3, 2)
    r = F.relu(F.conv2d(r, *p["conv3"], padding=1))
    r = F.relu(F.conv2d(r, *p["conv4"], padding=1, groups=2))
    r = F.max_pool2d(F.relu(F.conv2d(r, *p["conv5"], padding=1, groups=2)), 3, 2)
    torch.testing.assert_close(alexnet.blobs["pool5"], r, rtol=1e-4, atol=1e-4 * r.abs().max().item())
    r = F.relu(F.linear(r.flatten(1), *p["fc6"]))      # Dropout is the identity in TEST
    r = F.relu(F.linear(r, *p["fc7"]))
    r = F.linear(r, *p["fc8"])
    torch.testing.assert_close(alexnet.blobs["fc8"], r, rtol=1e-4, atol=1e-4 * r.abs().max().item())
    assert tuple(out["prob"].shape) == (1, 1000)
    torch.testing.assert_close(out["prob"].sum(1), torch.ones(1))


# ---- GoogLeNet ----------------------------------------------------------------------------------------------

GOOGLENET_SHAPES = {
    "conv1/7x7_s2": (10, 64, 112, 112), "pool1/3x3_s2": (10, 64, 56, 56), "pool1/norm1": (10, 64, 56, 56),
    "conv2/3x3_reduce": (10, 64, 56, 56), "conv2/3x3": (10, 192, 56, 56), "conv2/norm2": (10, 192, 56, 56),
    "pool2/3x3_s2": (10, 192, 28, 28),
    "inception_3a/1x1": (10, 64, 28, 28), "inception_3a/3x3": (10, 128, 28, 28),
    "inception_3a/5x5": (10, 32, 28, 28), "inception_3a/pool": (10, 192, 28, 28),
    "inception_3a/pool_proj": (10, 32, 28, 28), "inception_3a/output": (10, 256, 28, 28),
    "inception_3b/output": (10, 480, 28, 28), "pool3/3x3_s2": (10, 480, 14, 14),
    "inception_4a/output": (10, 512, 14, 14), "inception_4b/output": (10, 512, 14, 14),
    "inception_4c/output": (10, 512, 14, 14), "inception_4d/output": (10, 528, 14, 14),
    "inception_4e/output": (10, 832, 14, 14), "pool4/3x3_s2": (10, 832, 7, 7),
    "inception_5a/output": (10, 832, 7, 7), "inception_5b/output": (10, 1024, 7, 7),
    "pool5/7x7_s1": (10, 1024, 1, 1), "loss3/classifier": (10, 1000), "prob": (10, 1000)}


@pytest.fixture(scope="module")
def googlenet():
    return build("googlenet.prototxt")


def test_googlenet_shapes(googlenet):
    assert_shapes(googlenet, GOOGLENET_SHAPES)
    assert googlenet.outputs == ["prob"]
    assert googlenet.inputs == {"data": (10, 3, 224, 224)}
    assert tuple(googlenet.params["inception_5b/5x5"][0].shape) == (128, 48, 5, 5)
    assert tuple(googlenet.params["loss3/classifier"][0].shape) == (1000, 1024)


@torch.no_grad()
def test_googlenet_forward_batch1(googlenet):
    out = googlenet.forward(data=torch.randn(1, 3, 224, 224))
    b = googlenet.blobs
    assert tuple(out["prob"].shape) == (1, 1000)
    torch.testing.assert_close(out["prob"].sum(1), torch.ones(1))
    # Concat joins the branches in bottom order; the branch blobs hold their in-place ReLU'd values
    branches = [b[f"inception_4c/{n}"] for n in ("1x1", "3x3", "5x5", "pool_proj")]
    assert torch.equal(b["inception_4c/output"], torch.cat(branches, 1))
    assert b["inception_4c/3x3"].min() >= 0
    # pool5/7x7_s1 averages the whole 7x7 map
    torch.testing.assert_close(b["pool5/7x7_s1"], b["inception_5b/output"].mean((2, 3), keepdim=True))


# ---- VGG-16, legacy V1 format --------------------------------------------------------------------------------

VGG_SHAPES = {"data": (10, 3, 224, 224), "conv1_1": (10, 64, 224, 224), "conv1_2": (10, 64, 224, 224),
              "pool1": (10, 64, 112, 112), "conv2_2": (10, 128, 112, 112), "pool2": (10, 128, 56, 56),
              "conv3_3": (10, 256, 56, 56), "pool3": (10, 256, 28, 28), "conv4_3": (10, 512, 28, 28),
              "pool4": (10, 512, 14, 14), "conv5_3": (10, 512, 14, 14), "pool5": (10, 512, 7, 7),
              "fc6": (10, 4096), "fc7": (10, 4096), "fc8": (10, 1000), "prob": (10, 1000)}


@pytest.fixture(scope="module")
def vgg16():
    return build("vgg16_v1.prototxt")


def test_vgg16_v1_shapes_and_params(vgg16):
    assert_shapes(vgg16, VGG_SHAPES)
    assert vgg16.outputs == ["prob"]
    assert vgg16.inputs == {"data": (10, 3, 224, 224)}   # from net-level input / input_dim
    types = {vgg16.layer(n).type for n in vgg16.layer_names}
    assert types == {"Input", "Convolution", "ReLU", "Pooling", "InnerProduct", "Dropout", "Softmax"}
    assert n_learnable(vgg16) == 138357544
    # V1 blobs_lr / weight_decay become per-blob lr_mult / decay_mult
    assert [(i.lr_mult, i.decay_mult) for i in vgg16.param_info if i.layer == "conv3_2"] == [(1.0, 1.0), (2.0, 0.0)]


@pytest.mark.slow
@torch.no_grad()
def test_vgg16_v1_forward_batch1(vgg16):
    randomize(vgg16)
    out = vgg16.forward(data=torch.randn(1, 3, 224, 224))
    assert tuple(out["prob"].shape) == (1, 1000)
    assert torch.isfinite(vgg16.blobs["fc8"]).all()
    torch.testing.assert_close(out["prob"].sum(1), torch.ones(1))
    torch.testing.assert_close(vgg16.blobs["pool5"], F.max_pool2d(vgg16.blobs["conv5_3"], 2, 2))


# ---- ResNet-50 ----------------------------------------------------------------------------------------------

def resnet50_shapes():
    shapes = {"data": (1, 3, 224, 224), "conv1": (1, 64, 112, 112), "pool1": (1, 64, 56, 56),
              "pool5": (1, 2048, 1, 1), "fc1000": (1, 1000), "prob": (1, 1000)}
    for stage, blocks, c, hw in [(2, "abc", 256, 56), (3, "abcd", 512, 28), (4, "abcdef", 1024, 14),
                                 (5, "abc", 2048, 7)]:
        shapes[f"res{stage}a_branch1"] = (1, c, hw, hw)
        for blk in blocks:
            shapes[f"res{stage}{blk}_branch2a"] = (1, c // 4, hw, hw)
            shapes[f"res{stage}{blk}_branch2b"] = (1, c // 4, hw, hw)
            shapes[f"res{stage}{blk}"] = (1, c, hw, hw)
    return shapes


@pytest.fixture(scope="module")
def resnet50():
    return build("resnet50.prototxt")


def test_resnet50_shapes_and_params(resnet50):
    shapes = resnet50_shapes()
    assert shapes["res2c"] == (1, 256, 56, 56) and shapes["res3d"] == (1, 512, 28, 28)
    assert shapes["res4f"] == (1, 1024, 14, 14) and shapes["res5c"] == (1, 2048, 7, 7)
    assert_shapes(resnet50, shapes)
    assert resnet50.outputs == ["prob"]
    assert sum(resnet50.layer(n).type == "BatchNorm" for n in resnet50.layer_names) == 53
    assert n_learnable(resnet50) == 25557032
    # BatchNorm keeps Caffe's three statistics blobs (mean, variance, moving-average factor), none learnable
    assert [tuple(t.shape) for t in resnet50.params["bn_conv1"]] == [(64,), (64,), (1,)]
    assert [tuple(t.shape) for t in resnet50.params["scale_conv1"]] == [(64,), (64,)]
    assert not any(i.layer.startswith("bn") for i in resnet50.param_info)
    assert len(resnet50.params["res2a_branch2a"]) == 1   # bias_term: false


@pytest.mark.slow
@torch.no_grad()
def test_resnet50_forward_batch1(resnet50):
    randomize(resnet50)
    out = resnet50.forward(data=torch.randn(1, 3, 224, 224))
    b = resnet50.blobs
    assert tuple(out["prob"].shape) == (1, 1000)
    assert torch.isfinite(b["fc1000"]).all()
    torch.testing.assert_close(out["prob"].sum(1), torch.ones(1))
    # Eltwise SUM of the (ReLU'd) shortcut and branch2c, then the in-place ReLU
    torch.testing.assert_close(b["res2b"], torch.relu(b["res2a"] + b["res2b_branch2c"]))
    torch.testing.assert_close(b["pool5"], b["res5c"].mean((2, 3), keepdim=True))
