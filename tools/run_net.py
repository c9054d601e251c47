#!/usr/bin/env python
"""Run a net like `caffe test`, or time it like `caffe time` (--time). See nets/cli.py or --help."""

import os
import sys

# Runs from a checkout without installing: the repository root holds the layers and nets packages.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from nets.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
