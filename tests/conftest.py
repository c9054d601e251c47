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
