"""The benches (benches/): the hand-written module matches the Net it is timed against, and the benches produce
well-formed rows. No timing is asserted."""

import math
import os
import sys

import pytest
import torch

BENCHES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benches")
if BENCHES not in sys.path:
    sys.path.insert(0, BENCHES)

import _common  # noqa: E402
import run_all  # noqa: E402

ROW_KEYS = {"bench", "case", "device", "unit", "baseline_name", "baseline", "value", "ratio", "goal", "met"}


def _check_rows(rows, benches):
    assert {r["bench"] for r in rows} == set(benches)
    for r in rows:
        assert set(r) >= ROW_KEYS
        for key in ("baseline", "value", "ratio"):
            assert math.isfinite(r[key]) and r[key] > 0, (r, key)
        assert r["ratio"] == pytest.approx(r["value"] / r["baseline"])
        assert r["met"] in (True, False, None)
        assert (r["met"] is None) == (r["goal"] == "")


def test_network_part_is_the_image_only_layers():
    net = _common.network_net(1)
    assert net.layer_names[:3] == ["image", "image_01", "conv1"]
    assert net.layer_names[-1] == "pred_zr" and len(net.layer_names) == 37
    assert net.outputs == ["pred_2d", "pred_zr"]
    assert net.blob_shapes["maps"] == (1, 42, 64, 64)


def test_hand_written_module_matches_the_net_outputs_and_gradients():
    net = _common.network_net(2)
    hand = _common.HandNet(net)
    image = torch.rand(2, 3, 128, 128) * 255
    _common.check_equal(net, hand, image)   # asserts forward outputs and every weight's gradient
    # and it is a real check: another beta changes the 2D pose
    with torch.no_grad():
        hand.beta.mul_(3.0)
    with pytest.raises(AssertionError):
        _common.check_equal(net, hand, image, backward=False)


def test_markdown_has_one_line_per_row_and_the_common_columns():
    rows = [_common.row("x", "case a", "cpu", "ms", "base", 2.0, 3.0, "ratio ≤ 1.5", True),
            _common.row("y", "case b", "cpu", "images/s", "loop", 4.0, 2.0)]
    lines = _common.markdown(rows).splitlines()
    assert lines[0] == "| bench | case | device | baseline | value | ratio | goal | met |"
    assert lines[2] == "| x | case a | cpu | base: 2 ms | 3 ms | 1.500 | ratio ≤ 1.5 | yes |"
    assert lines[3] == "| y | case b | cpu | loop: 4 images/s | 2 images/s | 0.500 | — | — |"


def test_run_all_quick_prints_one_table_and_the_machine(tmp_path, capsys):
    out = tmp_path / "table.md"
    assert run_all.main(["--quick", "--only", "gt", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed == out.read_text()
    table = [line for line in printed.splitlines() if line.startswith("|")]
    assert len(table) >= 3 and table[0].startswith("| bench | case | device | baseline |")
    assert all(line.startswith("| gt |") for line in table[2:])
    assert "Machine:" in printed and "torch " in printed


def test_run_all_rejects_an_unknown_bench(capsys):
    with pytest.raises(SystemExit):
        run_all.main(["--only", "overhead,speed"])
    assert "unknown bench 'speed'" in capsys.readouterr().err


def test_quick_rows_of_gt():
    _check_rows(run_all.run(["gt"], quick=True), ["gt"])


def test_quick_rows_of_caffe_data():
    _check_rows(run_all.run(["caffe_data"], quick=True), ["caffe_data"])


@pytest.mark.slow
def test_quick_rows_of_overhead_and_pipeline():
    _check_rows(run_all.run(["overhead", "pipeline"], quick=True), ["overhead", "pipeline"])


@pytest.mark.slow
def test_quick_rows_of_every_bench():
    _check_rows(run_all.run(run_all.BENCHES, quick=True), run_all.BENCHES)
