"""tools/demo.py, the README's main job, end to end on a tiny synthetic set and a few iterations."""

import json
import os
import sys

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "tools"))
import demo  # noqa: E402


def test_demo_leaves_log_snapshot_table_plot_and_images(tmp_path, capsys):
    out, data = tmp_path / "out", tmp_path / "data"
    code = demo.main(["--out", str(out), "--data", str(data), "--train", "8", "--eval", "4", "--max-iter", "4",
                      "--workers", "0", "--device", "cpu"])
    assert code == 0
    files = set(os.listdir(out))
    assert {"train.log", "metrics.md", "metrics.json", "pck.png", "rhd_synth_small_iter_4.caffemodel.h5",
            "rhd_synth_small_iter_4.solverstate.h5"} <= files
    assert any(f.startswith("skeleton_") for f in files) and any(f.startswith("heatmaps_") for f in files)
    log = (out / "train.log").read_text()
    assert "] Iteration 0 (0 iter/s, " in log and "rhd_synth_small_iter_4.caffemodel.h5" in log
    assert "Optimization Done." in log
    rows = json.loads((out / "metrics.json").read_text())
    trained, baseline = rows["rhd_synth_small (trained)"], rows["mean-pose baseline"]
    assert trained["samples"] == baseline["samples"] > 0
    assert baseline["epe_3d_abs_mm"] is None and baseline["epe_3d_rel_mm"] > 0
    table = (out / "metrics.md").read_text()
    assert "| metric | rhd_synth_small (trained) | mean-pose baseline |" in table
    # a second run reuses the data
    assert demo.main(["--out", str(out), "--data", str(data), "--train", "8", "--eval", "4", "--max-iter", "2",
                      "--workers", "0", "--device", "cpu"]) == 0
    assert "reusing the synthetic set" in capsys.readouterr().out
