"""ShuffleNet's channel shuffle (farmingyard/ShuffleNet's shuffle_channel_layer, after camel007/Caffe-ShuffleNet)."""

from __future__ import annotations

from layers.base import Layer, Param, Params
from layers.registry import register_layer


@register_layer("ShuffleChannel")
class ShuffleChannel(Layer):
    """Channel shuffle: the C channels, read as a (group, C / group) grid row by row, are written column by column:
        y[n, j * group + i] = x[n, i * (C / group) + j]      (i < group, j < C / group)
    i.e. x viewed as (N, group, C / group, *spatial), axes 1 and 2 swapped, viewed back as (N, C, *spatial).
    With group 3 and C = 6: y's channels are x's 0, 2, 4, 1, 3, 5.

    Bottoms: x (N, C, *spatial), at least 2 axes.  Tops: y, same shape.
    Params (shuffle_channel_param): group = 1 (> 0, divides C).
    Backward: the inverse permutation (the fork's Backward_cpu swaps the grid's roles), from autograd.
    Fork: farmingyard/ShuffleNet (shuffle_channel_layer.cpp), used by ShuffleNet nets such as
    strawberryfg/RHDHand's.

    Examples::

        >>> import torch
        >>> from layers.build import make_layer
        >>> shuffle = make_layer('type: "ShuffleChannel" bottom: "x" top: "y" shuffle_channel_param { group: 3 }',
        ...                      bottom_shapes=[(1, 6, 1, 1)])
        >>> shuffle(torch.arange(6.0).view(1, 6, 1, 1)).flatten().tolist()
        [0.0, 2.0, 4.0, 1.0, 3.0, 5.0]
    """
    params = Params("shuffle_channel_param", group=Param(int, 1))

    def setup(self, bottom_shapes):
        (shape,) = bottom_shapes
        if self.p.group <= 0:
            raise self.error(f"group must be > 0, got {self.p.group}")
        if len(shape) < 2:
            raise self.error(f"bottom must have at least 2 axes (N, C, ...), got shape {shape}")
        self._check_channels(shape[1])

    def _check_channels(self, channels: int) -> None:
        if channels % self.p.group:
            raise self.error(f"the bottom's {channels} channels are not divisible by group {self.p.group}")

    def forward(self, x):
        self._check_channels(x.shape[1])
        g = self.p.group
        n, c = x.shape[:2]
        y = x.reshape(n, g, c // g, -1).transpose(1, 2)
        return y.reshape(x.shape)
