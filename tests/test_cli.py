"""run_net.py / nets.cli.main: test mode output, loss lines, inputs, stages, --weights, --import, --time's
format, and user errors (exit status 2 with one `error:` line)."""

import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch

from layers.base import Layer
from layers.registry import register_layer, registered_types
from nets.cli import main
from nets.net import Net
from nets.weights import save_weights

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@register_layer("TestCliScale")
class ScaleForCli(Layer):
    """y = x * w[c] over axis 1, w (C,) learnable, initially 1 (test-only)."""

    def setup(self, bottom_shapes):
        self.add_blob("w", (bottom_shapes[0][1],), value=1.0)

    def forward(self, x):
        return x * self.w.view((1, -1) + (1,) * (x.dim() - 2))


@register_layer("TestCliSquareLoss")
class SquareLossForCli(Layer):
    """loss = mean(x^2), a scalar (test-only)."""
    is_loss = True

    def forward(self, x):
        return (x * x).mean()


# data = 2 everywhere; s = 2 * w_scale; loss = mean(s^2) with weight 0.5; m = 2 * w_mean.
NET = """
    name: "cli"
    layer { name: "data" type: "DummyData" top: "data"
            dummy_data_param { shape { dim: 2 dim: 3 dim: 4 dim: 4 } data_filler { type: "constant" value: 2 } } }
    layer { name: "scale" type: "TestCliScale" bottom: "data" top: "s" }
    layer { name: "loss" type: "TestCliSquareLoss" bottom: "s" top: "loss" loss_weight: 0.5 }
    layer { name: "mean" type: "TestCliScale" bottom: "data" top: "m" }
"""

INPUT_NET = """
    name: "inputs"
    input: "data" input_shape { dim: 2 dim: 3 dim: 4 dim: 4 }
    layer { name: "scale" type: "TestCliScale" bottom: "data" top: "s" }
    layer { name: "deploy_only" type: "TestCliScale" bottom: "data" top: "d" include { stage: "deploy" } }
"""


def write(tmp_path, text, name="net.prototxt"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out.splitlines(), err.splitlines()


def test_outputs_and_loss_lines(tmp_path, capsys):
    rc, out, err = run(capsys, write(tmp_path, NET), "--iterations", 3, "--device", "cpu")
    assert rc == 0
    assert out == ["loss = 4 (* 0.5 = 2 loss)", "m = 2", "Loss: 2"]
    assert err == []


def test_weights_are_loaded_and_reported(tmp_path, capsys):
    path = write(tmp_path, NET)
    net = Net(path, phase="TEST", device="cpu")
    with torch.no_grad():
        net.params["scale"][0].fill_(3.0)
        net.params["mean"][0].copy_(torch.tensor([0.5, 1.0, 1.5]))
    save_weights(net, tmp_path / "w.h5")
    rc, out, err = run(capsys, path, "--iterations", 2, "--device", "cpu", "--weights", tmp_path / "w.h5")
    assert rc == 0
    assert out == ["loss = 36 (* 0.5 = 18 loss)", "m = 2", "Loss: 18"]     # m = mean(2 * [0.5, 1, 1.5])
    assert err == [f"note: loaded weights for 2 layer(s) from '{tmp_path / 'w.h5'}'"]


def test_inputs_are_filled_with_seeded_normal_data_and_stages_select_layers(tmp_path, capsys):
    path = write(tmp_path, INPUT_NET)
    rc, out, err = run(capsys, path, "--iterations", 2, "--device", "cpu", "--seed", 7)
    assert rc == 0
    assert err == ["note: input 'data' (2, 3, 4, 4) filled with random normal data"]
    torch.manual_seed(7)
    expected = torch.randn(2, 3, 4, 4).double().mean().item()
    assert out == [f"s = {expected:.6g}"]
    rc, out2, _ = run(capsys, path, "--iterations", 2, "--device", "cpu", "--seed", 7, "--stage", "deploy")
    assert out2 == [f"d = {expected:.6g}"] + out                # outputs in sorted order, as Caffe's std::set
    _, out3, _ = run(capsys, path, "--iterations", 2, "--device", "cpu", "--seed", 8)
    assert out3 != out


def test_iterations_average_random_outputs(tmp_path, capsys):
    path = write(tmp_path, """
        layer { name: "u" type: "DummyData" top: "u"
                dummy_data_param { shape { dim: 1 } data_filler { type: "uniform" min: 0 max: 1 } } }
    """)
    values = [float(run(capsys, path, "--iterations", 1, "--device", "cpu", "--seed", seed)[1][0].split(" = ")[1])
              for seed in (0, 0, 1)]
    assert values[0] == values[1] != values[2]
    _, many, _ = run(capsys, path, "--iterations", 400, "--device", "cpu")
    assert abs(float(many[0].split(" = ")[1]) - 0.5) < 0.05       # 400 draws: std of the mean ~0.014


def test_import_a_layer_file(tmp_path, capsys):
    layer_file = tmp_path / "cli_double_layer.py"
    layer_file.write_text(textwrap.dedent('''
        from layers.base import Layer
        from layers.registry import register_layer, registered_types

        @register_layer("TestCliImportedDouble")
        class Double(Layer):
            def forward(self, x):
                return 2 * x
    '''))
    path = write(tmp_path, """
        layer { name: "data" type: "DummyData" top: "data"
                dummy_data_param { shape { dim: 3 } data_filler { type: "constant" value: 1.5 } } }
        layer { name: "twice" type: "TestCliImportedDouble" bottom: "data" top: "y" }
    """)
    if "TestCliImportedDouble" not in registered_types():
        rc, out, err = run(capsys, path, "--device", "cpu")
        assert rc == 2 and len(err) == 1
        assert "unknown layer type 'TestCliImportedDouble'" in err[0]
    rc, out, err = run(capsys, path, "--device", "cpu", "--iterations", 2, "--import", layer_file)
    assert rc == 0
    assert out == ["y = 3"]
    rc, _, err = run(capsys, path, "--device", "cpu", "--import", tmp_path / "absent.py")
    assert rc == 2
    assert err == [f"error: cannot import layer file '{tmp_path / 'absent.py'}': no such file"]


LINE = r"\d+\.\d{3} ms\."


def time_lines(capsys, path, *extra):
    rc, out, err = run(capsys, path, "--time", "--iterations", 3, "--device", "cpu", *extra)
    assert rc == 0
    return out, err


def test_time_output_format(tmp_path, capsys):
    out, err = time_lines(capsys, write(tmp_path, NET))
    layers = ["data", "scale", "loss", "mean"]
    assert len(out) == 1 + 2 * len(layers) + 4
    assert out[0] == "Average time per layer:"
    for i, name in enumerate(layers):
        assert re.fullmatch(rf"{name}\tforward: {LINE}", out[1 + 2 * i]), out[1 + 2 * i]
        assert re.fullmatch(rf"{name}\tbackward: {LINE}", out[2 + 2 * i]), out[2 + 2 * i]
    for line, label in zip(out[-4:], ["Average Forward pass", "Average Backward pass", "Average Forward-Backward",
                                      "Total Time"]):
        assert re.fullmatch(rf"{label}: {LINE}", line), line
    ms = {line.split(":")[0]: float(line.split(": ")[1].split()[0]) for line in out[1:]}
    assert ms["data\tbackward"] == 0.0                                # DummyData: nothing to differentiate
    assert ms["scale\tbackward"] > 0 and ms["loss\tbackward"] > 0
    assert ms["mean\tbackward"] > 0      # outside the loss's reach, but timed with its weight's gradient, as Caffe
    total = ms["Average Forward-Backward"]
    assert total >= ms["Average Forward pass"] and total >= ms["Average Backward pass"]
    assert ms["Total Time"] == pytest.approx(3 * total, abs=0.01)
    assert err == []


def test_time_without_loss_and_without_anything_to_differentiate(tmp_path, capsys):
    out, _ = time_lines(capsys, write(tmp_path, INPUT_NET))    # no loss: backward of the output means
    assert out[0] == "Average time per layer:"
    assert re.fullmatch(rf"data\tbackward: 0\.000 ms\.", out[2])
    assert re.fullmatch(rf"Average Backward pass: {LINE}", out[-3])
    constant = write(tmp_path, """
        layer { name: "c" type: "DummyData" top: "c" dummy_data_param { shape { dim: 2 } } }
    """, "constant.prototxt")
    out, err = time_lines(capsys, constant)
    assert out[1:3] == ["c\tforward: " + out[1].split(": ")[1], "c\tbackward: 0.000 ms."]
    assert out[-3] == "Average Backward pass: 0.000 ms."
    assert err == ["note: no output of the net needs a gradient; the backward pass is empty"]


def test_time_defaults_to_the_train_phase_like_caffe_time(tmp_path, capsys):
    path = write(tmp_path, """
        input: "data" input_shape { dim: 1 dim: 2 }
        layer { name: "train_only" type: "TestCliScale" bottom: "data" top: "y" include { phase: TRAIN } }
    """)
    out, _ = time_lines(capsys, path)
    assert out[3].startswith("train_only\tforward: ")
    rc, out, _ = run(capsys, path, "--time", "--phase", "TEST", "--device", "cpu", "--iterations", 1)
    assert rc == 0 and len(out) == 1 + 2 + 4                   # only the Input layer


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_on_a_cpu_machine_is_a_user_error(tmp_path, capsys):
    rc, out, err = run(capsys, write(tmp_path, NET), "--device", "cuda")
    assert rc == 2 and out == []
    assert err == ["error: device 'cuda' was asked for but CUDA is not available"]


def test_bad_arguments_exit_2(tmp_path, capsys):
    for argv in (["--device", "tpu"], ["--iterations", "0"], ["--phase", "VAL"], []):
        with pytest.raises(SystemExit) as e:
            main(([write(tmp_path, NET)] if argv else []) + argv)
        assert e.value.code == 2
    err = capsys.readouterr().err
    assert "unknown device 'tpu'" in err and "expected a positive integer, got '0'" in err


def test_missing_net_file_and_bad_weights_exit_2(tmp_path, capsys):
    missing = tmp_path / "nope.prototxt"
    rc, out, err = run(capsys, missing)
    assert rc == 2 and out == []
    assert err == [f"error: cannot read net file '{missing}': No such file or directory"]
    rc, out, err = run(capsys, write(tmp_path, NET), "--device", "cpu", "--weights", tmp_path / "w.h5")
    assert rc == 2
    assert err == [f"error: cannot read weights '{tmp_path / 'w.h5'}': no such file"]


def test_script_reports_a_bad_prototxt_in_one_line_with_status_2(tmp_path):
    path = write(tmp_path, """
        name: "bad"
        layer { name: "data" type: "DummyData" top: "data" dummy_data_param { shape { dim: 1 } } }
        layer { name: "conv" type: "Convolutoin" bottom: "data" top: "y" }
    """)
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "run_net.py"), path, "--device", "cpu"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    assert f"{path}:4:1: layer 'conv' (Convolutoin): unknown layer type 'Convolutoin'" in lines[0]
    assert "did you mean Convolution?" in lines[0]


def test_real_caffe_blocks_a_layer_does_not_read_are_ignored_with_one_note_line(tmp_path):
    """Caffe parses every LayerParameter block and each layer reads its own: a VGG deploy file with an
    image_data_param inside its Input layer and a Faster R-CNN test file with loss_param on a Softmax run."""
    path = write(tmp_path, """
        name: "wild"
        layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 } }
                image_data_param { source: "list.txt" batch_size: 1 } }
        layer { name: "prob" type: "Softmax" bottom: "data" top: "prob" loss_param { ignore_label: -1 } }
    """)
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "run_net.py"), path, "--device", "cpu"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == [
        f"note: {path}:4:26: layer 'data' (Input): ignores image_data_param (this layer takes input_param; "
        f"Caffe ignores it too)",
        f"note: {path}:5:76: layer 'prob' (Softmax): ignores loss_param (this layer takes softmax_param; "
        f"Caffe ignores it too)",
        "note: input 'data' (1, 3) filled with random normal data"]
    assert proc.stdout.splitlines()[0].startswith("prob = ")
    typo = write(tmp_path, """
        name: "typo"
        layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 } } }
        layer { name: "prob" type: "Softmax" bottom: "data" top: "prob" sofmax_param { axis: 1 } }
    """, "typo.prototxt")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "run_net.py"), typo, "--device", "cpu"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"error: {typo}:4:78: layer 'prob' (Softmax): unknown param block 'sofmax_param' (this layer takes "
        f"softmax_param) (did you mean softmax_param?)"]
