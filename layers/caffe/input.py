"""Layers that create blobs: Input (fed by Net.forward) and DummyData (filled by fillers)."""

from __future__ import annotations

import torch

from layers.base import BLOB_SHAPE, FILLER, Layer, Param, Params
from layers.fillers import fill
from layers.registry import register_layer


def _check_dims(layer: Layer, shapes) -> None:
    # Caffe tolerates 0-sized blobs; nothing downstream can use them, so say so here.
    if any(d <= 0 for s in shapes for d in s):
        raise layer.error(f"shape dims must be positive, got {', '.join(str(s) for s in shapes)}")


@register_layer("Input")
class Input(Layer):
    """A net input: its tops are the tensors given to Net.forward(name=tensor).

    Bottoms: none.  Tops: one or more blobs of the declared shapes (any batch size is accepted at run time).
    Params (input_param): shape (repeated BlobShape; one for all tops or one per top).
    """
    params = Params("input_param", shape=Param(BLOB_SHAPE, repeated=True))
    num_bottoms = 0
    num_tops = (1, None)
    is_input = True

    def setup(self, bottom_shapes):
        shapes = [tuple(s.dim) for s in self.p.shape]
        if len(shapes) not in (1, self.num_top_blobs):
            raise self.error(f"input_param has {len(shapes)} shape(s) for {self.num_top_blobs} top(s)")
        _check_dims(self, shapes)
        self.shapes = shapes * self.num_top_blobs if len(shapes) == 1 else shapes

    def infer_top_shapes(self, bottom_shapes):
        return list(self.shapes)

    def forward(self, x):
        return x


@register_layer("DummyData")
class DummyData(Layer):
    """Blobs filled by fillers at every forward (Caffe refills unless all fillers are constant).

    Bottoms: none.  Tops: one or more blobs.
    Params (dummy_data_param): data_filler (repeated FillerParameter; 0, 1 or one per top; default constant 0),
    shape (repeated BlobShape), or the legacy num/channels/height/width (repeated, 4-D).
    """
    params = Params("dummy_data_param", data_filler=Param(FILLER, repeated=True),
                    shape=Param(BLOB_SHAPE, repeated=True), num=Param(int, repeated=True),
                    channels=Param(int, repeated=True), height=Param(int, repeated=True),
                    width=Param(int, repeated=True))
    num_bottoms = 0
    num_tops = (1, None)

    def setup(self, bottom_shapes):
        n = self.num_top_blobs
        p = self.p
        legacy = [p.num, p.channels, p.height, p.width]
        if p.shape and any(legacy):
            raise self.error("give either shape or num/channels/height/width, not both")
        if p.shape:
            shapes = [tuple(s.dim) for s in p.shape]
        else:
            if len({len(x) for x in legacy}) != 1:
                raise self.error("num, channels, height and width must be given the same number of times")
            shapes = [tuple(dims) for dims in zip(*legacy)]
        if len(shapes) not in (1, n):
            raise self.error(f"{len(shapes)} shape(s) for {n} top(s)")
        _check_dims(self, shapes)
        self.shapes = shapes * n if len(shapes) == 1 else shapes
        fillers = list(p.data_filler) or [FILLER.parse(None, self.label)]
        if len(fillers) not in (1, n):
            raise self.error(f"{len(fillers)} data_filler(s) for {n} top(s)")
        self.fillers = fillers * n if len(fillers) == 1 else fillers

    def infer_top_shapes(self, bottom_shapes):
        return list(self.shapes)

    def forward(self):
        tops = []
        for shape, filler in zip(self.shapes, self.fillers):
            t = torch.empty(shape, device=self.device)
            tops.append(fill(t, filler, self.where))
        return tuple(tops)
