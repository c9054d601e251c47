"""nets.draw / tools/draw_net.py: the DOT text (Caffe's boxes, octagons, colours, labels, edges, in-place
loops), phase filtering, the sources it takes, and the command: missing `dot`, bad arguments, rendering."""

import os
import shutil
import struct
import subprocess
import sys

import pytest

from nets.draw import main, net_to_dot
from netdef.errors import NetError
from netdef.text_format import parse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LENET_TT = os.path.join(ROOT, "tests", "data", "zoo", "lenet_train_test.prototxt")

SMALL = """
name: "small"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 8 kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool"
        pooling_param { pool: AVE kernel_h: 2 kernel_w: 3 stride: 1 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool" top: "fc" inner_product_param { num_output: 10 } }
"""

SMALL_DOT = r'''digraph "small" {
  rankdir=LR;
  "layer:data" [label="data\n(Input)", shape="record", style="filled", fillcolor="#6495ED"];
  "blob:data" [label="data", shape="octagon", style="filled", fillcolor="#E0E0E0"];
  "layer:conv" [label="conv\n(Convolution)\nkernel size: 3\nstride: 2\npad: 1", shape="record", style="filled", fillcolor="#FF5050"];
  "blob:conv" [label="conv", shape="octagon", style="filled", fillcolor="#E0E0E0"];
  "layer:relu" [label="relu\n(ReLU)", shape="record", style="filled", fillcolor="#90EE90"];
  "layer:pool" [label="pool\n(Pooling AVE)\nkernel size: 2x3\nstride: 1\npad: 0", shape="record", style="filled", fillcolor="#FF9900"];
  "blob:pool" [label="pool", shape="octagon", style="filled", fillcolor="#E0E0E0"];
  "layer:fc" [label="fc\n(InnerProduct)", shape="record", style="filled", fillcolor="#CC33FF"];
  "blob:fc" [label="fc", shape="octagon", style="filled", fillcolor="#E0E0E0"];
  "layer:data" -> "blob:data";
  "blob:data" -> "layer:conv";
  "layer:conv" -> "blob:conv" [label="8"];
  "blob:conv" -> "layer:relu";
  "layer:relu" -> "blob:conv";
  "blob:conv" -> "layer:pool";
  "layer:pool" -> "blob:pool";
  "blob:pool" -> "layer:fc";
  "layer:fc" -> "blob:fc" [label="10"];
}
'''


def test_dot_text_of_a_small_net_is_exact():
    assert net_to_dot(SMALL) == SMALL_DOT


def test_vertical_layouts_put_label_parts_on_one_line():
    dot = net_to_dot(SMALL, rankdir="TB")
    assert "rankdir=TB;" in dot
    assert '"layer:conv" [label="conv (Convolution) kernel size: 3 stride: 2 pad: 1",' in dot
    assert '[label="conv\\n(Convolution)' in net_to_dot(SMALL, rankdir="RL")
    with pytest.raises(ValueError, match="rankdir must be one of LR, TB, BT, RL"):
        net_to_dot(SMALL, rankdir="XY")


def layer_nodes(dot: str) -> list[str]:
    return [line.split('"')[1] for line in dot.splitlines() if line.startswith('  "layer:') and "->" not in line]


def test_phase_selects_layers_and_all_keeps_same_named_layers_apart():
    assert layer_nodes(net_to_dot(LENET_TT, phase="TRAIN"))[:2] == ["layer:mnist", "layer:conv1"]
    test = net_to_dot(LENET_TT, phase="TEST")
    assert '"layer:mnist" [label="mnist\\n(Input)"' in test and "layer:accuracy" in layer_nodes(test)
    assert "layer:accuracy" not in layer_nodes(net_to_dot(LENET_TT, phase="TRAIN"))
    every = net_to_dot(LENET_TT)   # ALL: both data layers, each with its own box and edges
    assert layer_nodes(every)[:3] == ["layer:mnist", "layer:mnist#2", "layer:conv1"]
    assert '"layer:mnist#2" [label="mnist\\n(Input)"' in every
    assert every.count('-> "blob:data";') == 2
    assert len(layer_nodes(every)) == 11


def test_stages_and_data_batch_labels():
    text = """
    layer { name: "d" type: "Data" top: "x" data_param { source: "db" batch_size: 32 } }
    layer { name: "deploy" type: "Softmax" bottom: "x" top: "p" include { stage: "deploy" } }
    """
    assert '"layer:d" -> "blob:x" [label="Batch 32"];' in net_to_dot(text)
    assert "layer:deploy" not in net_to_dot(text, phase="TEST")
    assert "layer:deploy" in net_to_dot(text, phase="TEST", stages=["deploy"])


def test_sources_netspec_message_path_and_v1_nets():
    from nets.netspec import NetSpec, layers as L
    n = NetSpec(name="ns")
    n.x = L.Input(shape=dict(dim=[1, 2, 4, 4]))
    n.y = L.Convolution(n.x, num_output=3, kernel_size=[1, 3], pad_h=1, pad_w=0)
    dot = net_to_dot(n)
    assert dot.startswith('digraph "ns" {')
    assert '[label="y\\n(Convolution)\\nkernel size: 1x3\\nstride: 1\\npad: 1x0"' in dot
    assert net_to_dot(parse(SMALL)) == SMALL_DOT
    vgg = net_to_dot(os.path.join(ROOT, "tests", "data", "zoo", "vgg16_v1.prototxt"))
    assert "(Convolution)" in vgg and "(Pooling MAX)" in vgg and "CONVOLUTION" not in vgg


def test_names_are_escaped_for_dot_records():
    dot = net_to_dot('layer { name: "a|b{c}" type: "ReLU" bottom: "in\\"x" top: "out" }')
    assert '"layer:a|b{c}" [label="a\\|b\\{c\\}\\n(ReLU)"' in dot
    assert '"blob:in\\"x" [label="in\\"x"' in dot
    assert dot.startswith('digraph "Net" {')


def test_global_pooling_label():
    dot = net_to_dot('layer { name: "g" type: "Pooling" bottom: "x" top: "y" pooling_param { global_pooling: true } }')
    assert '[label="g\\n(Pooling MAX)\\nglobal pooling"' in dot


# ---- the command ------------------------------------------------------------------------------------------------

@pytest.fixture
def small_file(tmp_path):
    path = tmp_path / "small.prototxt"
    path.write_text(SMALL)
    return path


def test_missing_dot_writes_the_dot_text_and_exits_2(small_file, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", "")
    out = tmp_path / "net.png"
    assert main([str(small_file), str(out)]) == 2
    err = capsys.readouterr()
    dot_path = tmp_path / "net.dot"
    assert err.err == (f"error: the Graphviz program 'dot' is not installed (apt-get install graphviz); "
                       f"the DOT text was written to {dot_path}\n")
    assert err.out == ""
    assert dot_path.read_text() == SMALL_DOT
    assert not out.exists()


def test_dot_output_needs_no_graphviz(small_file, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", "")
    out = tmp_path / "net.dot"
    assert main([str(small_file), str(out), "--rankdir", "TB"]) == 0
    assert out.read_text() == net_to_dot(SMALL, rankdir="TB")
    assert capsys.readouterr().out == f"Drawing net to {out}\n"


@pytest.mark.parametrize("args, message", [
    (["{net}", "{tmp}/net.jpg"], "error: cannot tell the image format of '{tmp}/net.jpg' from its extension "
                                 "(use .png, .svg, .pdf, .dot)\n"),
    (["{tmp}/missing.prototxt", "{tmp}/net.dot"], "error: cannot read net file '{tmp}/missing.prototxt': "
                                                  "No such file or directory\n"),
    (["{bad}", "{tmp}/net.dot"], "error: {bad}:1:15: expected value for 'name', found ':'\n"),
    (["{net}", "{tmp}/no/such/dir/net.dot"], "error: cannot write '{tmp}/no/such/dir/net.dot': "
                                             "No such file or directory\n"),
])
def test_user_errors_print_one_line_and_exit_2(args, message, small_file, tmp_path, capsys):
    bad = tmp_path / "bad.prototxt"
    bad.write_text("layer { name: : }")
    fill = dict(net=small_file, tmp=tmp_path, bad=bad)
    assert main([a.format(**fill) for a in args]) == 2
    assert capsys.readouterr().err == message.format(**fill)


def test_bad_choices_are_rejected_by_argparse(small_file, tmp_path):
    with pytest.raises(SystemExit) as e:
        main([str(small_file), str(tmp_path / "x.png"), "--phase", "DEPLOY"])
    assert e.value.code == 2


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz 'dot' is not installed")
def test_renders_png_and_svg_with_dot(small_file, tmp_path):
    png = tmp_path / "net.png"
    assert main([str(small_file), str(png)]) == 0
    lr_w, lr_h = png_size(png.read_bytes())
    assert lr_w > 4 * lr_h > 0          # LR layout of a chain: wide and short
    assert main([str(small_file), str(png), "--rankdir", "TB"]) == 0
    tb_w, tb_h = png_size(png.read_bytes())
    assert tb_h > 3 * lr_h and tb_w < lr_w
    svg = tmp_path / "net.svg"
    assert main([str(small_file), str(svg)]) == 0
    text = svg.read_text()
    assert "<svg" in text and "conv (Convolution)" not in text and ">kernel size: 2x3<" in text


def test_tool_script_runs_from_a_checkout(small_file, tmp_path):
    out = tmp_path / "net.dot"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "draw_net.py"), str(small_file), str(out)],
                          cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ""})
    assert proc.returncode == 0, proc.stderr
    assert out.read_text() == SMALL_DOT
