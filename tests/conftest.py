import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long-running test (deselected by default: run with -m slow)")


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def rhd_converted(tmp_path_factory):
    """A tiny synthetic release converted to the memo layout once per session: (converted root, release root)."""
    from layers.hand.rhd.convert import convert
    from layers.hand.rhd.synthetic import make_tiny_release
    base = tmp_path_factory.mktemp("rhd")
    release_root = make_tiny_release(str(base / "synth"), num_train=8, num_eval=6, seed=3)
    out = str(base / "rhd")
    convert(release_root, out, workers=1)
    return out, release_root


def prototxt_for(path: str, root: str, **replace) -> str:
    """A committed net's text with its data root (data/rhd) pointed at `root` and other text replaced."""
    text = open(path).read().replace('"data/rhd', f'"{root}')
    for old, new in replace.items():
        text = text.replace(old, new)
    return text
