"""The house's import rules (ARCHITECTURE.md), read from the source: imports run one way, netdef <- layers <-
nets <- tools/benches; no `_private` name crosses a package; no import cycle between packages; the net
definition tier imports neither torch nor layers."""

import ast
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLOORS = {"netdef": 0, "layers": 1, "nets": 2, "tools": 3, "benches": 3, "caffe": 3}
PACKAGES = ("netdef", "layers", "nets", "caffe")


def _files(top: str):
    for folder, _, names in os.walk(os.path.join(REPO, top)):
        for name in sorted(names):
            if name.endswith(".py"):
                yield os.path.relpath(os.path.join(folder, name), REPO)


def _imports(path: str):
    """(imported module, imported names) for every import of a project package, also inside functions."""
    tree = ast.parse(open(os.path.join(REPO, path), encoding="utf-8").read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] in PACKAGES:
                yield node.module, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] in PACKAGES:
                    yield a.name, []


def _package_of(module: str) -> str:
    """The package (folder) a dotted module name lives in."""
    as_path = os.path.join(REPO, *module.split("."))
    return module if os.path.isdir(as_path) else module.rpartition(".")[0]


ALL_FILES = [f for top in FLOORS for f in _files(top)]


@pytest.mark.parametrize("path", ALL_FILES)
def test_imports_run_down_the_floors(path):
    floor = FLOORS[path.split(os.sep)[0]]
    upward = [m for m, _ in _imports(path) if FLOORS[m.split(".")[0]] > floor]
    assert not upward, f"{path} imports {upward[0]} from a floor above its own"


@pytest.mark.parametrize("path", ALL_FILES + list(_files("tests")))
def test_no_private_name_crosses_a_package(path):
    own = os.path.dirname(path).replace(os.sep, ".")
    for module, names in _imports(path):
        target = _package_of(module)
        crossing = [n for n in names if n.startswith("_") and target != own
                    and not os.path.isdir(os.path.join(REPO, *module.split("."), n))]
        assert not crossing, f"{path} imports the private name {crossing[0]} from {module}"


def test_no_import_cycle_between_packages():
    graph = {p: set() for p in PACKAGES}
    for top in PACKAGES:
        for path in _files(top):
            graph[top].update(m.split(".")[0] for m, _ in _imports(path))
    for p in PACKAGES:
        graph[p].discard(p)

    def reaches(start, goal, seen=()):
        return any(n == goal or (n not in seen and reaches(n, goal, seen + (n,))) for n in graph[start])

    cyclic = [p for p in PACKAGES if reaches(p, p)]
    assert not cyclic, f"import cycle through {cyclic}: {graph}"


def test_the_net_definition_tier_needs_neither_torch_nor_layers():
    code = ("import sys, netdef, netdef.text_format, netdef.spec, netdef.params, netdef.errors; "
            "print(sorted(m for m in ('torch', 'numpy', 'layers', 'nets') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_rules_see_a_violation(tmp_path, monkeypatch):
    """The checks above would catch an upward import and a private import (they read what they claim)."""
    bad = tmp_path / "layers" / "bad.py"
    bad.parent.mkdir()
    bad.write_text("def f():\n    from nets.net import Net\n    from netdef.spec import _blob_name\n")
    monkeypatch.setattr(sys.modules[__name__], "REPO", str(tmp_path))
    path = os.path.join("layers", "bad.py")
    assert [m for m, _ in _imports(path)] == ["nets.net", "netdef.spec"]
    with pytest.raises(AssertionError, match="from a floor above"):
        test_imports_run_down_the_floors(path)
    with pytest.raises(AssertionError, match="private name _blob_name"):
        test_no_private_name_crosses_a_package(path)
