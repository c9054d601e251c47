#!/usr/bin/env python
"""Draw a net's graph like Caffe's draw_net.py: NET.prototxt OUT.png|svg|pdf|dot [--rankdir] [--phase].
See nets/draw.py or --help."""

import os
import sys

# Runs from a checkout without installing: the repository root holds the nets package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from nets.draw import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
