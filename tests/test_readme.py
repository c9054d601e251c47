"""The README's custom-layer example works as printed: its files are extracted and run through the CLI."""

import os
import re

import pytest

from nets.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme_examples():
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    blocks = re.findall(r"<!-- README-EXAMPLE: (\S+) -->\s*```[a-z]*\n(.*?)```", text, flags=re.S)
    return dict(blocks)


def test_readme_starts_with_the_two_fresh_machine_commands():
    lines = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read().splitlines()
    assert lines[0] == "```bash"
    assert "tools/demo.py" in lines[1] and "pytest" in lines[2] and lines[3] == "```"


def test_custom_layer_example_runs_from_the_command_line(tmp_path, capsys, monkeypatch):
    examples = readme_examples()
    assert set(examples) == {"my_layers.py", "swish.prototxt"}
    for name, body in examples.items():
        (tmp_path / name).write_text(body)
    monkeypatch.chdir(tmp_path)
    code = main(["swish.prototxt", "--import", "my_layers.py", "--iterations", "2", "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 0
    value = float(re.search(r"^act = (\S+)$", out, flags=re.M).group(1))
    # Swish of standard normal inputs has a positive mean (about 0.2-0.3 for beta 1.5 over 32 samples)
    assert -0.5 < value < 1.0 and value != 0.0


def test_custom_layer_param_typo_is_reported(tmp_path, capsys, monkeypatch):
    examples = readme_examples()
    (tmp_path / "my_layers.py").write_text(examples["my_layers.py"])
    (tmp_path / "bad.prototxt").write_text(examples["swish.prototxt"].replace("beta", "bta"))
    monkeypatch.chdir(tmp_path)
    code = main(["bad.prototxt", "--import", "my_layers.py", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().startswith("error: bad.prototxt:2:")
    assert "unknown param 'bta' in swish_param (did you mean beta?)" in err
