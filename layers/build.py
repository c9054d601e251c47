"""Build one layer on its own, outside a Net (tests, notebooks, plain PyTorch code):

    conv = make_layer('name: "c" type: "Convolution" bottom: "x" top: "y" '
                      'convolution_param { num_output: 8 kernel_size: 3 }', bottom_shapes=[(1, 3, 32, 32)])
    y = conv(torch.randn(1, 3, 32, 32))
"""

from __future__ import annotations

from typing import Sequence

from layers.base import Layer, Shape
from layers.registry import get_layer_class
from netdef.spec import layer_def
from netdef.text_format import Message, parse

__all__ = ["make_layer"]


def make_layer(definition: str | Message, bottom_shapes: Sequence[Shape] = (), phase: str = "TRAIN") -> Layer:
    """`definition`: the body of a `layer { }` block (or the whole block) as text or Message."""
    msg = parse(definition, "<layer>") if isinstance(definition, str) else definition
    if list(msg.names()) == ["layer"]:
        msg = msg.get("layer")
    spec = layer_def(msg, v1=False)
    cls = get_layer_class(spec.type, spec.where)
    return cls(spec, bottom_shapes, phase)
