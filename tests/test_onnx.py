"""ONNX export (nets/onnx_export.py, tools/export_onnx.py): the exported graph, run by onnxruntime, gives our
forward's outputs to 1e-4 (float32) at two batch sizes (the batch axis is dynamic), with the blob names as graph
input and output names: zoo nets, the RHD test net's network part (source tops as inputs), a net of the fork
layers; layers a trace cannot stand for are refused in one line."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from conftest import ROOT, prototxt_for  # noqa: E402
from layers import Layer, register_layer  # noqa: E402
from netdef.errors import NetError  # noqa: E402
from nets.net import Net  # noqa: E402
from nets.onnx_export import NetworkPart, compare_onnx, export_onnx  # noqa: E402
from nets.weights import save_weights  # noqa: E402

ZOO = os.path.join(ROOT, "tests", "data", "zoo")
TOOL = os.path.join(ROOT, "tools", "export_onnx.py")
TOL = 1e-4


@torch.no_grad()
def randomize(net, gain=2.0):
    """He-scaled weights, small biases, BatchNorm statistics 0 / 1 and Scale 0.5..1 (activations keep scale, so
    softmax outputs are far from uniform and a wrong layer shows)."""
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
            mean.uniform_(-0.1, 0.1)
            var.uniform_(0.5, 1.5)
            factor.fill_(1.0)
        elif layer.type == "Scale":
            layer.caffe_blobs()[0].uniform_(0.5, 1.0)


def session(path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def graph_dims(value_info):
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def run_both(net, sess, inputs: dict):
    """Our Net.forward and onnxruntime on the same inputs: {output: (ours, theirs)}."""
    with torch.no_grad():
        ours = net.forward(**inputs)
    names = [o.name for o in sess.get_outputs()]
    feed = {i.name: inputs[i.name].numpy() for i in sess.get_inputs()}
    theirs = dict(zip(names, sess.run(names, feed)))
    return {name: (ours[name].numpy(), theirs[name]) for name in names}


def max_diff(pairs):
    return max(float(np.abs(a.astype(np.float64) - b).max()) for a, b in pairs.values())


# ---- zoo nets -----------------------------------------------------------------------------------------------------

ZOO_CASES = [
    ("lenet.prototxt", (2, 5)),
    ("googlenet.prototxt", (1, 2)),      # ceil-mode pooling, LRN, Concat, AVE pooling
    pytest.param("alexnet.prototxt", (1, 3), marks=pytest.mark.slow),
    pytest.param("vgg16_v1.prototxt", (1, 2), marks=pytest.mark.slow),
    pytest.param("resnet50.prototxt", (1, 2), marks=pytest.mark.slow),
]


@pytest.mark.parametrize("name,batches", ZOO_CASES)
def test_zoo_net_matches_onnxruntime_at_two_batch_sizes(tmp_path, name, batches):
    net = Net(os.path.join(ZOO, name), phase="TEST", device="cpu")
    randomize(net)
    path = tmp_path / "net.onnx"
    report = export_onnx(net, path)
    assert report.inputs == ["data"] and report.outputs == ["prob"] and report.input_kinds == {"data": "Input"}
    model = onnx.load(str(path))
    assert [i.name for i in model.graph.input] == ["data"] and [o.name for o in model.graph.output] == ["prob"]
    shape = net.blob_shapes["data"]
    assert graph_dims(model.graph.input[0]) == ["batch", *shape[1:]]
    assert graph_dims(model.graph.output[0]) == ["batch", 1000 if name != "lenet.prototxt" else 10]
    sess = session(path)
    for batch in batches:
        x = torch.rand((batch,) + shape[1:]) * (100 if name == "alexnet.prototxt" else 1)
        pairs = run_both(net, sess, {"data": x})
        ours, theirs = pairs["prob"]
        assert theirs.shape == (batch, ours.shape[1])
        assert ours.max() > 2.0 / ours.shape[1]        # not a uniform softmax: the weights matter
        assert max_diff(pairs) < TOL, (name, batch, max_diff(pairs))


def test_lenet_train_test_with_label_input_and_loss_outputs(tmp_path):
    """Two Input blobs (data, label) and scalar outputs (accuracy, loss): no batch axis on those."""
    net = Net(os.path.join(ZOO, "lenet_train_test.prototxt"), phase="TEST", device="cpu")
    randomize(net)
    path = tmp_path / "lenet.onnx"
    report = export_onnx(net, path)
    assert report.inputs == ["data", "label"] and report.outputs == ["accuracy", "loss"]
    assert report.dynamic == ["data", "label"]
    model = onnx.load(str(path))
    assert [graph_dims(i) for i in model.graph.input] == [["batch", 1, 28, 28], ["batch"]]
    sess = session(path)
    for batch in (3, 7):
        x, label = torch.rand(batch, 1, 28, 28), torch.randint(0, 10, (batch,)).float()
        pairs = run_both(net, sess, {"data": x, "label": label})
        assert max_diff(pairs) < TOL
        assert pairs["loss"][0].item() > 0


POOL_NET = """
input: "data" input_shape { dim: 2 dim: 2 dim: 7 dim: 8 }
layer { name: "ave" type: "Pooling" bottom: "data" top: "ave"
        pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "max" type: "Pooling" bottom: "data" top: "max" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
"""


def test_caffe_pooling_sizes_and_window_sums(tmp_path):
    """Caffe's ceil-mode sizes (7 -> 4, 8 -> 5 with pad 1; 7 -> 4 without) and AVE's per-window divisors: torch's
    TorchScript symbolics truncate floor_divide and drop avg_pool2d's divisor_override; ours are registered."""
    net = Net(POOL_NET, phase="TEST", device="cpu")
    path = tmp_path / "pool.onnx"
    export_onnx(net, path)
    sess = session(path)
    for batch in (1, 3):
        pairs = run_both(net, sess, {"data": torch.randn(batch, 2, 7, 8)})
        assert pairs["ave"][1].shape == (batch, 2, 4, 5) and pairs["max"][1].shape == (batch, 2, 4, 4)
        assert max_diff(pairs) < TOL


# ---- the RHD test net: its network part, source tops as inputs -------------------------------------------------------

@pytest.fixture(scope="module")
def rhd_test_net(rhd_converted):
    net = Net(prototxt_for(os.path.join(ROOT, "prototxt", "rhd_synth_small_test.prototxt"), rhd_converted[0]),
              phase="TEST", device="cpu", workers=0)
    randomize(net)
    yield net
    net.close()


def test_rhd_test_net_network_part(tmp_path, rhd_test_net):
    net = rhd_test_net
    path = tmp_path / "rhd.onnx"
    report = export_onnx(net, path)
    part = NetworkPart(net)
    # the data reading is not exported: what the network reads of the source layers' tops is the graph's input
    source_tops = {t for st in net.plan if st.is_source for t in st.tops}
    assert report.inputs and set(report.inputs) <= source_tops
    assert "image" in report.inputs and "index" not in report.inputs      # MulRGB runs in the network
    assert all(report.input_kinds[b] != "Input" for b in report.inputs)
    assert set(report.outputs) == set(net.outputs) - source_tops
    assert {"loss_2d", "epe_3d_rel_mm", "root_clamped"} <= set(report.outputs)
    model = onnx.load(str(path))
    assert [i.name for i in model.graph.input] == report.inputs
    assert [o.name for o in model.graph.output] == report.outputs
    assert graph_dims(model.graph.input[report.inputs.index("image")])[0] == "batch"
    sess = session(path)
    # real data: one batch from the net's own source stage, through Net.forward
    with torch.no_grad():
        want = net.forward()
    real = {b: net.blobs[b].clone() for b in report.inputs}
    theirs = dict(zip(report.outputs, sess.run(report.outputs, {k: v.numpy() for k, v in real.items()})))
    for name in report.outputs:
        np.testing.assert_allclose(theirs[name], want[name].numpy(), rtol=TOL, atol=TOL, err_msg=name)
    # the network part is our forward's layer loop: the same numbers at the net's batch, then at another batch
    with torch.no_grad():
        mine = part(*real.values())
    for name, t in zip(report.outputs, mine):
        assert torch.equal(t, want[name]), name
    first3 = [[t[:3] for t in real.values()]]
    for c in compare_onnx(path, part, inputs=first3):
        assert c.batch == 3 and c.max_abs_diff < TOL * max(1.0, c.max_abs_value), c


DEPLOY = os.path.join(ROOT, "prototxt", "rhd_synth_small_deploy.prototxt")


@pytest.mark.skipif(not os.path.exists(DEPLOY), reason="no RHD deploy net in prototxt/")
def test_rhd_deploy_net_on_real_samples(tmp_path, rhd_test_net):
    """The deploy net (Input blobs only) on real samples: the test net's source blobs, K rebuilt from (fx, fy,
    u0, v0); outputs in pixels and mm agree to 1e-4 of their scale at the net's batch 1 and at 5."""
    net = Net(DEPLOY, phase="TEST", device="cpu")
    randomize(net)
    path = tmp_path / "deploy.onnx"
    report = export_onnx(net, path)
    assert all(report.input_kinds[b] == "Input" for b in report.inputs)
    assert set(report.dynamic) == set(report.inputs) | set(report.outputs)
    with torch.no_grad():
        rhd_test_net.forward()
    b = rhd_test_net.blobs
    fx, fy, u0, v0 = b["intrinsics"].unbind(1)
    zero, one = torch.zeros_like(fx), torch.ones_like(fx)
    real = {"image": b["image"], "bbox": b["bbox"], "avg_bone": b["avg_bone"], "is_left": b["is_left"],
            "K": torch.stack([fx, zero, u0, zero, fy, v0, zero, zero, one], 1)}
    assert 0 < b["is_left"][:5].sum() < 5       # both sides in the first five: HandMirror's where and flip export
    assert set(real) == set(report.inputs)
    sess = session(path)
    for batch in (1, 5):
        pairs = run_both(net, sess, {k: v[:batch].clone() for k, v in real.items()})
        for name, (ours, theirs) in pairs.items():
            assert theirs.shape == ours.shape and ours.shape[0] == batch
            scale = max(1.0, float(np.abs(ours).max()))
            assert float(np.abs(ours - theirs).max()) <= TOL * scale, (name, batch)
        assert np.abs(pairs["joints_3d"][0]).max() > 10.0      # millimetres of real hands, not a degenerate case


# ---- the fork layers ------------------------------------------------------------------------------------------------

FORK_NET = """
name: "forks"
input: "data" input_shape { dim: 2 dim: 3 dim: 16 dim: 16 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 6 kernel_size: 3 stride: 2 pad: 1 weight_filler { type: "msra" } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "shuffle" type: "ShuffleChannel" bottom: "conv1" top: "shuffle" shuffle_channel_param { group: 3 } }
layer { name: "dw" type: "ConvolutionDepthwise" bottom: "shuffle" top: "dw"
        convolution_param { num_output: 6 kernel_size: 3 pad: 1 weight_filler { type: "msra" }
                            bias_filler { type: "uniform" min: -0.1 max: 0.1 } } }
layer { name: "interp" type: "Interp" bottom: "dw" top: "interp" interp_param { zoom_factor: 2 } }
layer { name: "shrink" type: "Interp" bottom: "interp" top: "shrink" interp_param { height: 5 width: 7 } }
layer { name: "norm" type: "Normalize" bottom: "dw" top: "norm"
        norm_param { across_spatial: false channel_shared: false scale_filler { type: "constant" value: 20 } } }
layer { name: "perm" type: "Permute" bottom: "norm" top: "perm" permute_param { order: 0 order: 2 order: 3 order: 1 } }
layer { name: "flat" type: "Flatten" bottom: "perm" top: "flat" flatten_param { axis: 1 } }
layer { name: "prior" type: "PriorBox" bottom: "norm" bottom: "data" top: "prior"
        prior_box_param { min_size: 4 max_size: 8 aspect_ratio: 2 flip: true clip: true
                          variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 } }
"""


def test_fork_layers_export(tmp_path):
    net = Net(FORK_NET, phase="TEST", device="cpu")
    path = tmp_path / "forks.onnx"
    report = export_onnx(net, path)
    assert report.inputs == ["data"]
    assert report.outputs == ["flat", "prior", "shrink"]
    # the priors depend on the map's and image's sizes only: no batch axis
    assert report.dynamic == ["data", "flat", "shrink"]
    model = onnx.load(str(path))
    assert graph_dims(model.graph.output[1]) == [1, 2, 8 * 8 * 4 * 4]
    assert graph_dims(model.graph.output[2]) == ["batch", 6, 5, 7]
    sess = session(path)
    for batch in (1, 4):
        pairs = run_both(net, sess, {"data": torch.randn(batch, 3, 16, 16)})
        assert pairs["flat"][1].shape == (batch, 8 * 8 * 6)
        assert max_diff(pairs) < TOL
        assert np.abs(pairs["flat"][0]).max() > 1.0        # Normalize's scale 20 is in there


# ---- the one-line errors -----------------------------------------------------------------------------------------

FILTER_NET = """
input: "a" input_shape { dim: 4 dim: 3 }
input: "sel" input_shape { dim: 4 }
layer { name: "keep" type: "Filter" bottom: "a" bottom: "sel" top: "kept" }
"""

PYTHON_NET = """
input: "a" input_shape { dim: 3 dim: 2 dim: 2 }
input: "b" input_shape { dim: 3 dim: 2 dim: 2 }
layer { name: "ip" type: "InnerProduct" bottom: "a" top: "ip" inner_product_param { num_output: 4 } }
layer { name: "pyloss" type: "Python" bottom: "a" bottom: "b" top: "loss"
        python_param { module: "%s" layer: "EuclideanLossLayer" } loss_weight: 1 }
""" % os.path.join(ROOT, "tests", "data", "pycaffe", "pylayers.py")


def test_unexportable_layers_are_named_in_one_line(tmp_path):
    with pytest.raises(NetError, match=r"^cannot export layer 'keep' \(Filter\): the number of items it keeps "
                                       r"depends on the selector's values") as e:
        export_onnx(Net(FILTER_NET, phase="TEST", device="cpu"), tmp_path / "f.onnx")
    assert "\n" not in str(e.value)
    with pytest.raises(NetError, match=r"^cannot export layer 'pyloss' \(Python\): a Python layer runs its own "
                                       r"Python/NumPy code"):
        export_onnx(Net(PYTHON_NET, phase="TEST", device="cpu"), tmp_path / "p.onnx")
    assert not (tmp_path / "f.onnx").exists() and not (tmp_path / "p.onnx").exists()


def test_detection_output_is_refused_and_the_head_without_it_exports(tmp_path):
    from test_layers_ssd import SSD_HEAD
    with pytest.raises(NetError, match=r"^cannot export layer 'detection_out' \(DetectionOutput\): the number of "
                                       r"detections depends on the scores"):
        export_onnx(Net(SSD_HEAD, phase="TEST", device="cpu"), tmp_path / "ssd.onnx")
    # the same head up to its detection layer (TRAIN leaves it out): loc, conf and priors as outputs
    net = Net(SSD_HEAD, phase="TRAIN", device="cpu")
    report = export_onnx(net, tmp_path / "head.onnx")
    assert report.outputs == ["mbox_conf_flatten", "mbox_loc", "mbox_priorbox"]
    pairs = run_both(net, session(tmp_path / "head.onnx"), {"data": torch.rand(3, 3, 16, 16)})
    assert max_diff(pairs) < TOL


@register_layer("OnnxTestTrunc")
class Trunc(Layer):
    """y = trunc(x): torch's TorchScript exporter has no ONNX form for aten::trunc (opset 17)."""

    def forward(self, x):
        return torch.trunc(x)


def test_a_layer_the_exporter_cannot_translate_is_named(tmp_path):
    """No table entry for it: the export fails, and exporting layer by layer finds which one."""
    net = Net("""input: "x" input_shape { dim: 2 dim: 3 }
                 layer { name: "relu" type: "ReLU" bottom: "x" top: "r" }
                 layer { name: "mine" type: "OnnxTestTrunc" bottom: "r" top: "y" }""", phase="TEST", device="cpu")
    with pytest.raises(NetError, match=r"^cannot export layer 'mine' \(OnnxTestTrunc\): ") as e:
        export_onnx(net, tmp_path / "m.onnx")
    assert "\n" not in str(e.value)


NUMPY_LAYER = """
import numpy as np
import torch
from layers import Layer, register_layer

@register_layer("OnnxTestNpTanh")
class NpTanh(Layer):
    def infer_top_shapes(self, bottom_shapes):
        return [bottom_shapes[0]]

    def forward(self, x):
        return torch.as_tensor(np.tanh(x.detach().numpy()))
"""


def test_tool_catches_a_numpy_layer_by_running_the_file(tmp_path):
    """A trace freezes a NumPy result as a constant: no exporter error, but onnxruntime's run shows it."""
    (tmp_path / "np_layers.py").write_text(NUMPY_LAYER)
    net = tmp_path / "np.prototxt"
    net.write_text('input: "x" input_shape { dim: 2 dim: 3 }\n'
                   'layer { name: "t" type: "OnnxTestNpTanh" bottom: "x" top: "y" }\n')
    r = run_tool(net, "--out", tmp_path / "np.onnx", "--import", tmp_path / "np_layers.py")
    assert r.returncode == 2
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "a layer may compute in Python/NumPy" in last


def run_tool(*args, cwd=None):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, TOOL, *map(str, args)], capture_output=True, text=True, env=env,
                          cwd=cwd)


def test_tool_exports_with_weights_and_reports_the_difference(tmp_path):
    proto = os.path.join(ZOO, "lenet.prototxt")
    net = Net(proto, phase="TEST", device="cpu")
    randomize(net)
    weights = tmp_path / "lenet.caffemodel"
    save_weights(net, str(weights))
    out = tmp_path / "lenet.onnx"
    r = run_tool(proto, "--weights", weights, "--out", out)
    assert r.returncode == 0, r.stderr
    assert "input  data (batch, 1, 28, 28)  <- Input" in r.stdout
    assert "output prob (batch, 10)" in r.stdout
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("max abs difference: ")]
    assert len(lines) == 1 and float(lines[0].split(": ")[1]) < TOL
    # the file holds the given weights: onnxruntime agrees with the net that loaded them
    x = torch.rand(3, 1, 28, 28)
    pairs = run_both(net, session(out), {"data": x})
    assert max_diff(pairs) < TOL


def test_tool_one_line_errors(tmp_path):
    net = tmp_path / "filter.prototxt"
    net.write_text(FILTER_NET)
    r = run_tool(net, "--out", tmp_path / "f.onnx")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("error: cannot export layer 'keep' (Filter): ")
    assert len([ln for ln in r.stderr.splitlines() if ln.startswith("error:")]) == 1
    assert not (tmp_path / "f.onnx").exists()
