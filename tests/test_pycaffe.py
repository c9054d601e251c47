"""Caffe's own Python layers and pycaffe scripts run unchanged: caffe.Layer subclasses as `type: "Python"` layers
(forward/backward against our built-in EuclideanLoss, propagate_down, learnable blobs, training through the
Solver, errors), pycaffe's Net API (blobs, params, forward/backward, reshape, save/copy_from, solvers) and
caffe.io (Transformer, resize_image, load_image) against literal computations."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

import caffe
from layers.pycaffe import PythonLayer
from netdef.errors import NetError
from nets.cli import main as run_net
from nets.net import Net as CoreNet
from nets.solver import Solver
from nets.weights import save_weights

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "tests", "data", "pycaffe")


@pytest.fixture(autouse=True)
def _cpu_mode():
    caffe.set_mode_cpu()
    yield


@pytest.fixture
def clean_modules():
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.startswith(("pc_", "user_layers_pc_", "pylayers", "user_layers_pylayers")):
            del sys.modules[name]


def write(folder, name, text):
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


PYLAYERS = os.path.join(DATA, "pylayers.py")


def loss_net(impl: str, weight: float = 2.0, propagate: str = "") -> str:
    layer = ('type: "Python" python_param { module: "%s" layer: "EuclideanLossLayer" }' % PYLAYERS
             if impl == "python" else 'type: "EuclideanLoss"')
    return f'''
        input: "a" input_shape {{ dim: 3 dim: 2 dim: 2 }}
        input: "b" input_shape {{ dim: 3 dim: 2 dim: 2 }}
        layer {{ name: "loss" {layer} bottom: "a" bottom: "b" top: "loss" loss_weight: {weight} {propagate} }}
    '''


# ---- caffe.Layer subclasses as Python layers ----------------------------------------------------------------------

def test_pyloss_equals_the_builtin_euclidean_loss_in_value_and_gradients(clean_modules):
    a0 = torch.randn(3, 2, 2)
    b0 = torch.randn(3, 2, 2)
    results = []
    for impl in ("python", "builtin"):
        net = CoreNet(loss_net(impl), device="cpu")
        a, b = a0.clone().requires_grad_(), b0.clone().requires_grad_()
        net.forward(a=a, b=b)
        ga, gb = torch.autograd.grad(net.loss, [a, b])
        results.append((net.loss.detach(), ga, gb))
    (lp, gap, gbp), (lb, gab, gbb) = results
    # literal: loss_weight * sum((a - b)^2) / N / 2; d/da = w * (a - b) / N
    diff = a0 - b0
    assert torch.allclose(lp, 2.0 * (diff ** 2).sum() / 3 / 2)
    assert torch.allclose(lp, lb)
    assert torch.allclose(gap, 2.0 * diff / 3) and torch.allclose(gap, gab)
    assert torch.allclose(gbp, -2.0 * diff / 3) and torch.allclose(gbp, gbb)
    assert isinstance(CoreNet(loss_net("python"), device="cpu").layers["loss"], PythonLayer)


RECORDING = '''
import numpy as np
import caffe

CALLS = []


class Recorder(caffe.Layer):
    def setup(self, bottom, top):
        CALLS.append(("setup", self.phase, self.param_str, [b.shape for b in bottom],
                      [float(b.data.sum()) for b in bottom]))

    def reshape(self, bottom, top):
        CALLS.append(("reshape", [b.shape for b in bottom]))
        top[0].reshape(bottom[0].num, bottom[0].channels * bottom[0].height * bottom[0].width)

    def forward(self, bottom, top):
        CALLS.append(("forward", bottom[0].count, bottom[0].num, bottom[0].channels, bottom[0].height,
                      bottom[0].width))
        top[0].data[...] = bottom[0].data.reshape(top[0].data.shape) + bottom[1].data.sum()

    def backward(self, top, propagate_down, bottom):
        CALLS.append(("backward", list(propagate_down)))
        bottom[0].diff[...] = 3 * top[0].diff.reshape(bottom[0].data.shape)
        bottom[1].diff[...] = top[0].diff.sum()
'''


def recorder_net(path, extra="", phase_param='param_str: "{\'k\': 1}"'):
    return f'''
        input: "x" input_shape {{ dim: 2 dim: 3 dim: 1 dim: 2 }}
        input: "y" input_shape {{ dim: 1 }}
        layer {{ name: "rec" type: "Python" bottom: "x" bottom: "y" top: "z" {extra}
                python_param {{ module: "{path}" layer: "Recorder" {phase_param} }} }}
    '''


def test_setup_once_reshape_before_every_forward_phase_param_str_and_propagate_down(tmp_path, clean_modules):
    path = write(tmp_path, "pc_recorder.py", RECORDING)
    net = CoreNet(recorder_net(path), phase="TEST", device="cpu")
    calls = sys.modules["user_layers_pc_recorder"].CALLS
    # build: setup once with the bottoms' shapes (zero data), the raw param_str and caffe.TEST, then reshape
    assert calls == [("setup", 1, "{'k': 1}", [(2, 3, 1, 2), (1,)], [0.0, 0.0]),
                     ("reshape", [(2, 3, 1, 2), (1,)])]
    assert net.blob_shapes["z"] == (2, 6)
    calls.clear()
    x = torch.randn(2, 3, 1, 2, requires_grad=True)
    y = torch.tensor([0.5])
    for _ in range(2):
        z = net.forward(x=x, y=y)["z"]
    assert torch.allclose(z, x.detach().reshape(2, 6) + 0.5)
    assert calls == [("reshape", [(2, 3, 1, 2), (1,)]), ("forward", 12, 2, 3, 1, 2)] * 2
    calls.clear()
    (g,) = torch.autograd.grad(z.sum() * 2, [x])
    assert calls == [("backward", [True, False])]   # y is a net input: no gradient wanted (Caffe's Input)
    assert torch.allclose(g, torch.full_like(x, 6.0))
    # propagate_down: false in the prototxt, and caffe.TRAIN
    calls.clear()
    train = CoreNet(recorder_net(path, "propagate_down: false propagate_down: true"), device="cpu")
    assert calls[0][1] == caffe.TRAIN == 0 and caffe.TEST == 1
    y = torch.tensor([1.0], requires_grad=True)
    z = train.forward(x=x, y=y)["z"]
    (gy,) = torch.autograd.grad(z.sum(), [y])
    assert calls[-1] == ("backward", [False, True]) and gy.item() == 12.0


def test_learnable_blobs_are_parameters_saved_and_trained(tmp_path, clean_modules):
    net = CoreNet(f'''
        input: "x" input_shape {{ dim: 4 dim: 2 }}
        layer {{ name: "affine" type: "Python" bottom: "x" top: "y"
                python_param {{ module: "{PYLAYERS}" layer: "ScaleShiftLayer" }} }}
    ''', device="cpu")
    layer = net.layers["affine"]
    assert [tuple(p.shape) for p in net.params["affine"]] == [(1,), (1,)]
    assert net.params["affine"][0].item() == 1.0 and net.params["affine"][1].item() == 0.0
    with torch.no_grad():
        net.params["affine"][0].fill_(2.0)
        net.params["affine"][1].fill_(-1.0)
    x = torch.randn(4, 2)
    y = net.forward(x=x)["y"]
    assert torch.allclose(y, 2 * x - 1)
    (y * 3).sum().backward()
    assert torch.allclose(layer.blob0.grad, (3 * x).sum().reshape(1))
    assert torch.allclose(layer.blob1.grad, torch.tensor([24.0]))
    save_weights(net, tmp_path / "w.h5")
    import h5py
    with h5py.File(tmp_path / "w.h5") as f:
        assert f["data/affine/0"][()].tolist() == [2.0] and f["data/affine/1"][()].tolist() == [-1.0]


def test_python_layers_train_through_the_solver_with_falling_loss(clean_modules):
    solver = Solver(os.path.join(DATA, "solver.prototxt"), device="cpu")
    losses = solver.step(40)
    assert np.mean(losses[-8:]) < 0.3 * np.mean(losses[:8]), losses
    # the Python layer's learnable blobs moved with the rest
    assert solver.train_net.params["affine"][1].item() != 0.0


def test_python_layer_runs_in_float64_nets(clean_modules):
    net = CoreNet(loss_net("python"), device="cpu").double()
    out = net.forward(a=torch.ones(3, 2, 2, dtype=torch.float64), b=torch.zeros(3, 2, 2, dtype=torch.float64))
    assert out["loss"].dtype == torch.float64 and out["loss"].item() == pytest.approx(12 / 3 / 2)   # the top: without the weight


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_python_layers_on_a_cuda_net_move_tensors_to_the_cpu_and_back(clean_modules):
    text = loss_net("python").replace('bottom: "a"', 'bottom: "s"').replace(
        "layer {", f'layer {{ name: "s" type: "Python" bottom: "a" top: "s" python_param {{ module: "{PYLAYERS}" '
                   f'layer: "ScaleShiftLayer" }} }}\n        layer {{', 1)
    a0, b0 = torch.randn(3, 2, 2), torch.randn(3, 2, 2)
    results = []
    for device in ("cpu", "cuda"):
        net = CoreNet(text, device=device)
        a = a0.to(device).requires_grad_()
        net.forward(a=a, b=b0.to(device))
        assert net.loss.device.type == device
        net.loss.backward()
        results.append((net.loss.item(), a.grad.cpu(), net.params["s"][0].grad.cpu()))
    (lc, gc, pc), (lg, gg, pg) = results
    assert lc == pytest.approx(lg) and torch.allclose(gc, gg) and torch.allclose(pc, pg)


FAILING = '''
import caffe


class FailsInForward(caffe.Layer):
    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        raise KeyError("no such key")


class FailsInBackward(caffe.Layer):
    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data

    def backward(self, top, propagate_down, bottom):
        raise ValueError("backward is broken")


class NotALayer:
    pass
'''


def failing_net(path, layer, bottoms=1):
    extra = 'bottom: "x" ' * bottoms
    return f'''
        input: "x" input_shape {{ dim: 2 dim: 4 }}
        layer {{ name: "ip" type: "InnerProduct" bottom: "x" top: "ip" inner_product_param {{ num_output: 4 }} }}
        layer {{ name: "bad" type: "Python" bottom: "ip" {extra} top: "y" loss_weight: 1
                python_param {{ module: "{path}" layer: "{layer}" }} }}
    '''


def test_user_layer_errors_are_one_line_naming_the_layer(tmp_path, capsys, clean_modules):
    path = write(tmp_path, "pc_failing.py", FAILING)
    net = CoreNet(failing_net(path, "FailsInForward", 0), device="cpu")
    with pytest.raises(NetError) as e:
        net.forward(x=torch.randn(2, 4))
    assert str(e.value) == "<string>:4:9: layer 'bad' (Python): FailsInForward.forward: KeyError: 'no such key'"
    net = CoreNet(failing_net(path, "FailsInBackward", 0), device="cpu")
    net.forward(x=torch.randn(2, 4))
    with pytest.raises(NetError, match=r"^<string>:4:9: layer 'bad' \(Python\): FailsInBackward.backward: "
                                       r"ValueError: backward is broken$"):
        net.loss.backward()
    # setup's own check (pyloss wants two bottoms), a missing class, a class of neither kind
    three = loss_net("python").replace('bottom: "b"', 'bottom: "b" bottom: "b"')
    with pytest.raises(NetError, match=r"layer 'loss' \(Python\): EuclideanLossLayer.setup: Exception: Need two "
                                       r"inputs to compute distance.$"):
        CoreNet(three, device="cpu")
    with pytest.raises(NetError, match=r"has no layer class 'FailsInForwad' \(did you mean FailsInForward\?\)"):
        CoreNet(failing_net(path, "FailsInForwad"), device="cpu")
    with pytest.raises(NetError, match=r"'.*pc_failing.py.NotALayer' is neither a caffe.Layer subclass nor"):
        CoreNet(failing_net(path, "NotALayer"), device="cpu")
    # the command line: one line, with the --debug hint
    prototxt = write(tmp_path, "net.prototxt", failing_net(path, "FailsInForward", 0))
    assert run_net([str(prototxt), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (f"error: {prototxt}:4:1: layer 'bad' (Python): FailsInForward.forward: KeyError: "
                       f"'no such key' (run with --debug for the traceback)")


def test_our_own_layer_classes_still_load_as_python_layers(tmp_path, clean_modules):
    path = write(tmp_path, "pc_own.py", '''
        from layers import Layer

        class Twice(Layer):
            def forward(self, x):
                return 2 * x
    ''')
    net = CoreNet(f'input: "x" input_shape {{ dim: 2 }}\nlayer {{ name: "t" type: "Python" bottom: "x" top: "y" '
                  f'python_param {{ module: "{path}" layer: "Twice" }} }}', device="cpu")
    assert not isinstance(net.layers["t"], PythonLayer)
    assert net.forward(x=torch.tensor([1.0, 3.0]))["y"].tolist() == [2.0, 6.0]


# ---- pycaffe's Net -----------------------------------------------------------------------------------------------

@pytest.fixture
def deploy(tmp_path):
    """The deploy net, its weights (from our own Net's fillers) and an 8 x 8 RGB image."""
    proto = os.path.join(DATA, "deploy.prototxt")
    torch.manual_seed(5)
    core = CoreNet(proto, phase="TEST", device="cpu")
    with torch.no_grad():
        for p in core.parameters():
            p.normal_(0, 0.05)
    weights = tmp_path / "tiny.caffemodel.h5"
    save_weights(core, weights)
    rng = np.random.RandomState(0)
    image = tmp_path / "image.png"
    Image.fromarray(rng.randint(0, 256, (8, 8, 3)).astype(np.uint8)).save(image)
    return proto, str(weights), str(image), core


def preprocessed(image_path):
    """What the classification script's Transformer does, written out: [0, 1] RGB -> CHW, BGR, x255, - mean."""
    img = np.asarray(Image.open(image_path), dtype=np.float64) / 255.0
    chw = img.transpose(2, 0, 1)[::-1] * 255.0
    return (chw - np.array([104.0, 117.0, 123.0])[:, None, None]).astype(np.float32)


def test_pycaffe_script_runs_and_matches_our_net(deploy):
    proto, weights, image, core = deploy
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    run = subprocess.run([sys.executable, "classify.py", proto, weights, image], cwd=DATA, env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    expected = core.forward(data=torch.from_numpy(preprocessed(image))[None])["prob"][0].detach()
    assert np.allclose(result["prob"], expected.numpy(), atol=1e-6)
    assert result["argmax"] == int(expected.argmax())
    assert result["inputs"] == ["data"] and result["outputs"] == ["prob"]
    assert result["layers"] == ["Input", "Convolution", "ReLU", "Pooling", "InnerProduct", "Softmax"]


def softmax(v):
    e = np.exp(v - v.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_net_blobs_params_and_partial_forward(deploy):
    proto, weights, image, core = deploy
    for net in (caffe.Net(proto, weights, caffe.TEST), caffe.Net(proto, caffe.TEST, weights=weights)):
        assert list(net.blobs) == ["data", "conv1", "pool1", "fc", "prob"]
        assert list(net.params) == ["conv1", "fc"] and net.params["fc"][0].data.shape == (5, 36)
        x = preprocessed(image)
        net.blobs["data"].data[...] = x
        out = net.forward()
        assert set(out) == {"prob"} and out["prob"] is net.blobs["prob"].data
        assert np.allclose(out["prob"], core.forward(data=torch.from_numpy(x)[None])["prob"].detach().numpy(), atol=1e-6)
        assert np.array_equal(net.blobs["pool1"].data, core.blobs["pool1"].detach().numpy())
        # editing the weights in place changes the next forward
        net.params["fc"][0].data[...] = 0
        net.params["fc"][1].data[...] = np.arange(5)
        assert np.allclose(net.forward()["prob"][0], softmax(np.arange(5.0)), atol=1e-6)
        assert net.layers[4].type == "InnerProduct" and net.layers[4].blobs[1].data.tolist() == [0, 1, 2, 3, 4]
    # forward(end=) stops there; a blob written and forward(start=) continues from it
    net = caffe.Net(proto, caffe.TEST, weights=weights)
    out = net.forward(end="pool1", data=x[None])
    assert set(out) == {"pool1"}
    pool = out["pool1"].copy()
    net.blobs["pool1"].data[...] = 2 * pool
    prob = net.forward(start="fc")["prob"]
    w, b = (p.detach().numpy() for p in core.params["fc"])
    assert np.allclose(prob, softmax(2 * pool.reshape(1, -1) @ w.T + b), atol=1e-5)
    # a wrong input
    with pytest.raises(NetError, match="Input blob arguments do not match net inputs"):
        net.forward(image=x[None])


def test_net_reshape_save_and_copy_from(deploy, tmp_path):
    proto, weights, image, core = deploy
    net = caffe.Net(proto, caffe.TEST)
    net.copy_from(weights)
    net.blobs["data"].reshape(2, 3, 8, 8)
    net.reshape()
    assert net.blobs["conv1"].shape == (2, 4, 6, 6) and net.blobs["prob"].data.shape == (2, 5)
    x = np.stack([preprocessed(image), np.zeros((3, 8, 8), np.float32)])
    net.blobs["data"].data[...] = x
    out = net.forward()["prob"]
    assert out.shape == (2, 5)
    assert np.allclose(out, core.forward(data=torch.from_numpy(x))["prob"].detach().numpy(), atol=1e-6)
    net.params["conv1"][1].data[...] = 7
    net.save(str(tmp_path / "edited.h5"))
    other = caffe.Net(proto, str(tmp_path / "edited.h5"), caffe.TEST)
    assert other.params["conv1"][1].data.tolist() == [7.0] * 4
    assert np.array_equal(other.params["fc"][0].data, core.params["fc"][0].detach().numpy())
    # a .caffemodel name writes Caffe's binary model, which loads back to the same numbers
    net.save(str(tmp_path / "edited.caffemodel"))
    assert open(tmp_path / "edited.caffemodel", "rb").read(8) != b"\x89HDF\r\n\x1a\n"
    binary = caffe.Net(proto, str(tmp_path / "edited.caffemodel"), caffe.TEST)
    for name in ("conv1", "fc"):
        for a, b in zip(binary.params[name], other.params[name]):
            assert np.array_equal(a.data, b.data)


def test_net_backward_gives_input_and_param_diffs(tmp_path):
    proto = write(tmp_path, "loss.prototxt", '''
        force_backward: true
        input: "data" input_shape { dim: 2 dim: 3 }
        input: "label" input_shape { dim: 2 dim: 2 }
        layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
                inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.5 } } }
        layer { name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "label" top: "loss" loss_weight: 3 }
    ''')
    net = caffe.Net(str(proto), caffe.TRAIN)
    x, y = np.random.RandomState(1).randn(2, 3), np.random.RandomState(2).randn(2, 2)
    net.forward(data=x, label=y)
    diffs = net.backward()
    w = net.params["ip"][0].data.copy()
    r = x @ w.T - y           # EuclideanLoss: sum(r^2) / N / 2, weighted by 3 in the loss
    assert np.isclose(net.blobs["loss"].data, (r ** 2).sum() / 4, rtol=1e-5)
    assert set(diffs) == {"data", "label"}
    assert np.allclose(diffs["data"], 3 * r / 2 @ w, atol=1e-5)
    assert np.allclose(net.params["ip"][0].diff, 3 * (r / 2).T @ x, atol=1e-5)
    assert np.allclose(net.blobs["ip"].diff, 3 * r / 2, atol=1e-5)


def test_net_backward_from_an_output_diff_through_in_place_layers(deploy, tmp_path):
    proto, weights, image, core = deploy
    forced = tmp_path / "forced.prototxt"
    forced.write_text("force_backward: true\n" + open(proto).read())
    net = caffe.Net(str(forced), weights, caffe.TEST)
    x = preprocessed(image)[None]
    seed = np.random.RandomState(3).randn(1, 5).astype(np.float32)
    net.forward(data=x)
    diffs = net.backward(prob=seed, diffs=["pool1"])
    xt = torch.from_numpy(x).requires_grad_()
    out = core.forward(data=xt)
    gx, gpool = torch.autograd.grad(out["prob"], [xt, core.blobs["pool1"]], torch.from_numpy(seed))
    assert set(diffs) == {"data", "pool1"}
    assert np.allclose(diffs["data"], gx.numpy(), atol=1e-6) and np.abs(diffs["data"]).sum() > 0
    assert np.allclose(diffs["pool1"], gpool.numpy(), atol=1e-6)
    assert np.array_equal(net.blobs["prob"].diff, seed)
    # DeepDream's step: forward to a layer, its data as its diff, backward from there to the image
    net.forward(end="pool1")
    dst = net.blobs["pool1"]
    dst.diff[:] = dst.data
    net.backward(start="pool1")
    out = core.forward(data=xt)
    (gx,) = torch.autograd.grad(core.blobs["pool1"], [xt], core.blobs["pool1"].detach(), retain_graph=True)
    assert np.allclose(net.blobs["data"].diff, gx.numpy(), atol=1e-6) and np.abs(gx.numpy()).sum() > 0
    # backward(end=) stops at that layer and returns its bottoms' diffs
    diffs = net.backward(start="pool1", end="pool1")
    (gconv,) = torch.autograd.grad(core.blobs["pool1"], [core.blobs["conv1"]], core.blobs["pool1"].detach())
    assert set(diffs) == {"conv1"} and np.allclose(diffs["conv1"], gconv.numpy(), atol=1e-6)


def test_pycaffe_solver_trains_python_layers(clean_modules):
    solver = caffe.SGDSolver(os.path.join(DATA, "solver.prototxt"))
    first = []
    for _ in range(5):
        solver.step(1)
        first.append(float(solver.net.blobs["loss"].data[0]))
    solver.step(30)
    last = []
    for _ in range(5):
        solver.step(1)
        last.append(float(solver.net.blobs["loss"].data[0]))
    assert solver.iter == 40 and np.mean(last) < 0.3 * np.mean(first)
    assert isinstance(solver.net.layers[0], caffe.Layer) and solver.net.layers[0].batch_size == 16
    # weights written through net.params are the ones the solver trains from
    solver.net.params["affine"][0].data[...] = 0.0
    solver.net.params["affine"][1].data[...] = 0.0
    solver.step(1)      # its forward predicted 0 everywhere
    label = solver.net.blobs["label"].data
    assert np.isclose(solver.net.blobs["loss"].data[0], (label ** 2).sum() / 16 / 2, rtol=1e-5)
    assert np.array_equal(solver.net.blobs["pred"].data, np.zeros((16, 2), np.float32))
    assert caffe.get_solver(os.path.join(DATA, "solver.prototxt")).iter == 0


def test_net_spec_from_caffe_writes_a_net_caffe_net_runs(tmp_path, clean_modules):
    from caffe import layers as L, params as P
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[2, 3, 6, 6]))
    n.pool = L.Pooling(n.data, pool=P.Pooling.MAX, kernel_size=2, stride=2)
    n.out = L.Python(n.pool, module=PYLAYERS, layer="ScaleShiftLayer")
    path = tmp_path / "spec.prototxt"
    path.write_text(str(n.to_proto()))
    net = caffe.Net(str(path), caffe.TEST)
    x = np.random.RandomState(0).randn(2, 3, 6, 6).astype(np.float32)
    net.params["out"][0].data[...] = 3
    out = net.forward(data=x, blobs=["pool"])
    pooled = x.reshape(2, 3, 3, 2, 3, 2).max(axis=(3, 5))
    assert set(out) == {"out", "pool"} and np.allclose(out["pool"], pooled) and np.allclose(out["out"], 3 * pooled)


# ---- caffe.io ----------------------------------------------------------------------------------------------------

def test_transformer_preprocess_and_deprocess_step_by_step():
    t = caffe.io.Transformer({"data": (1, 3, 4, 5)})
    t.set_transpose("data", (2, 0, 1))
    t.set_channel_swap("data", (2, 1, 0))
    t.set_raw_scale("data", 255.0)
    t.set_mean("data", np.array([10.0, 20.0, 30.0]))
    t.set_input_scale("data", 0.5)
    img = np.random.RandomState(0).rand(4, 5, 3).astype(np.float32)
    out = t.preprocess("data", img)
    expected = (img.transpose(2, 0, 1)[[2, 1, 0]] * 255.0 - np.array([10.0, 20.0, 30.0])[:, None, None]) * 0.5
    assert out.dtype == np.float32 and np.allclose(out, expected, atol=1e-4)
    assert np.allclose(t.deprocess("data", out), img, atol=1e-6)
    # an elementwise mean of another size is resized; a wrong channel count is refused
    mean = np.random.RandomState(1).rand(3, 8, 10) * 100
    t.set_mean("data", mean)
    assert np.allclose(t.mean["data"], mean.reshape(3, 4, 2, 5, 2).mean(axis=(2, 4)), rtol=1e-5)
    with pytest.raises(ValueError, match="Mean channels incompatible with input."):
        t.set_mean("data", np.zeros(4))
    with pytest.raises(Exception, match="Transpose order needs to have the same number of dimensions"):
        t.set_transpose("data", (1, 0))
    with pytest.raises(Exception, match="Channel swap needs to have the same number of dimensions"):
        t.set_channel_swap("data", (1, 0))
    with pytest.raises(Exception, match="label is not one of the net inputs"):
        t.preprocess("label", img)


def test_resize_image_closed_forms():
    rng = np.random.RandomState(0)
    # halving with pixel centres aligned: each output pixel is the mean of a 2 x 2 block
    im = rng.rand(6, 8, 3).astype(np.float32)
    half = caffe.io.resize_image(im, (3, 4))
    blocks = im.reshape(3, 2, 4, 2, 3).mean(axis=(1, 3))
    assert half.dtype == np.float32 and np.allclose(half, blocks, atol=1e-6)
    # doubling: skimage's constant mode reads 0 beyond the edge (in [0, 1] after the min-max scaling)
    row = np.array([[0.0, 1.0]], np.float32)[:, :, None] * np.ones((1, 1, 3), np.float32)
    up = caffe.io.resize_image(np.concatenate([row, row]), (2, 4))[0, :, 0]
    assert np.allclose(up, [0.0, 0.25, 0.75, 0.75], atol=1e-6)
    # a constant image stays constant (no division by zero)
    assert np.array_equal(caffe.io.resize_image(np.full((3, 3, 1), 4.0), (5, 2)), np.full((5, 2, 1), 4.0))
    # other channel counts go through ndimage.zoom: corners aligned, a linear ramp stays exact
    ramp = np.broadcast_to(np.arange(5.0)[None, :, None], (4, 5, 2)).copy()
    zoomed = caffe.io.resize_image(ramp, (4, 9))
    assert zoomed.shape == (4, 9, 2) and np.allclose(zoomed[0, :, 0], np.linspace(0, 4, 9))


def test_load_image_colour_gray_and_alpha(tmp_path):
    rgb = np.random.RandomState(0).randint(0, 256, (4, 5, 3)).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(np.dstack([rgb, np.full((4, 5), 9, np.uint8)])).save(tmp_path / "rgba.png")
    Image.fromarray(rgb[:, :, 0]).save(tmp_path / "gray.png")
    img = caffe.io.load_image(str(tmp_path / "rgb.png"))
    assert img.dtype == np.float32 and img.shape == (4, 5, 3) and np.allclose(img, rgb / 255.0)
    assert np.allclose(caffe.io.load_image(str(tmp_path / "rgba.png")), rgb / 255.0)
    gray = caffe.io.load_image(str(tmp_path / "gray.png"))
    assert gray.shape == (4, 5, 3) and np.allclose(gray[:, :, 2], rgb[:, :, 0] / 255.0)
    one = caffe.io.load_image(str(tmp_path / "gray.png"), color=False)
    assert one.shape == (4, 5, 1)
    lum = caffe.io.load_image(str(tmp_path / "rgb.png"), color=False)
    assert np.allclose(lum[:, :, 0], (rgb / 255.0) @ [0.2125, 0.7154, 0.0721], atol=1e-6)
