"""Caffe's MemoryData layer: batches from arrays held in memory (src/caffe/layers/memory_data_layer.cpp), fed
from Python as pycaffe does: `net.set_input_arrays(data, labels)` (caffe/net.py) or the layer's reset().
"""

from __future__ import annotations

import numpy as np
import torch

from layers.base import Param, Params, SourceLayer
from layers.caffe.transform import TRANSFORM, Transformer
from layers.registry import register_layer

__all__ = ["MemoryData"]


@register_layer("MemoryData")
class MemoryData(SourceLayer):
    """The next batch_size rows of the arrays given to reset(), cyclically.

    Bottoms: none.  Tops: data (batch_size, channels, height, width), label (batch_size,).
    Params (memory_data_param): batch_size, channels, height, width (all required > 0, Caffe's defaults 0).
    Feeding: reset(data, labels) (pycaffe: net.set_input_arrays(data, labels)): data (N, channels, height,
    width), labels (N,) or (N, 1, 1, 1), N a multiple of batch_size; float32 arrays are used in place (changes
    to them show in later batches, as Caffe keeps the pointer), others are copied as float32. Each forward gives
    rows pos .. pos + batch_size - 1 and moves pos on by batch_size, back to 0 after the last; reset() starts
    at row 0.
    transform_param is not applied to the arrays (as Caffe's Reset, which pycaffe's set_input_arrays calls).
    The position is the layer's state (get_state/set_state); the arrays are not (snapshots do not hold data).
    Differs from Caffe: the label top is (batch_size,) always (Caffe's Forward reshapes it to
    (batch_size, 1, 1, 1)); batch_size is fixed (no set_batch_size).

    Examples::

        >>> import numpy as np
        >>> from layers.build import make_layer
        >>> mem = make_layer('name: "m" type: "MemoryData" top: "data" top: "label" '
        ...                  'memory_data_param { batch_size: 2 channels: 1 height: 1 width: 2 }')
        >>> mem.reset(np.arange(8, dtype=np.float32).reshape(4, 1, 1, 2), np.array([5, 6, 7, 8]))
        >>> [mem()[1].tolist() for _ in range(3)]
        [[5.0, 6.0], [7.0, 8.0], [5.0, 6.0]]
    """
    params = Params("memory_data_param", batch_size=Param(int, 0), channels=Param(int, 0), height=Param(int, 0),
                    width=Param(int, 0)) + TRANSFORM
    num_bottoms = 0
    num_tops = 2
    stateful = True

    def setup(self, bottom_shapes):
        q = self.p_blocks["memory_data_param"]
        self.batch_size, self.shape = q.batch_size, (q.channels, q.height, q.width)
        if min(self.batch_size, *self.shape) <= 0:
            raise self.error("batch_size, channels, height, and width must be specified and positive in "
                             "memory_data_param")
        self.transformer = Transformer(self)      # checked (and its mean file read) as Caffe's BaseDataLayer does
        self.data = self.labels = None
        self.pos = 0

    def infer_top_shapes(self, bottom_shapes):
        return [(self.batch_size,) + self.shape, (self.batch_size,)]

    def reset(self, data, labels) -> None:
        """Feed the layer (Caffe's Reset): data (N, C, H, W), labels (N,) or (N, 1, 1, 1), N a multiple of
        batch_size. Reading starts again at row 0."""
        data, labels = np.asarray(data), np.asarray(labels)
        if data.ndim != 4 or data.shape[1:] != self.shape:
            raise self.error(f"data array must be (N, {', '.join(map(str, self.shape))}) (N, channels, height, "
                             f"width), got {data.shape}")
        if labels.shape not in ((len(labels),), (len(labels), 1, 1, 1)):
            raise self.error(f"labels array must be (N,) or (N, 1, 1, 1), got {labels.shape}")
        if len(data) != len(labels):
            raise self.error(f"data and labels must have the same first dimension, got {len(data)} and "
                             f"{len(labels)}")
        if len(data) == 0 or len(data) % self.batch_size:
            raise self.error(f"first dimensions of input arrays must be a multiple of batch size {self.batch_size}, "
                             f"got {len(data)}")
        self.data = np.ascontiguousarray(data, np.float32)
        self.labels = np.ascontiguousarray(labels.reshape(-1), np.float32)
        self.pos = 0

    def forward(self):
        if self.data is None:
            raise self.error("has no data: give it arrays first (pycaffe: net.set_input_arrays(data, labels); "
                             "Python: the layer's reset(data, labels))")
        n = len(self.data)
        self.pos %= n                      # a restored position past a shorter array
        rows = slice(self.pos, self.pos + self.batch_size)
        self.pos = (self.pos + self.batch_size) % n
        dtype = torch.get_default_dtype()
        return (torch.from_numpy(self.data[rows].copy()).to(self.device, dtype),
                torch.from_numpy(self.labels[rows].copy()).to(self.device, dtype))

    def get_state(self):
        return {"pos": self.pos}

    def set_state(self, state):
        try:
            self.pos = int(state["pos"])
        except (KeyError, TypeError, ValueError) as e:
            raise self.error(f"cannot restore the position from {state!r}: {e}") from None
