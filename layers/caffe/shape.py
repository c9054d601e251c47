"""Layers that only move data around: Concat, Slice, Split, Flatten, Reshape, Silence."""

from __future__ import annotations

import math

import torch

from layers.base import BLOB_SHAPE, Layer, Param, Params, Shape, channel_axis
from layers.registry import register_layer


def _legacy_axis(layer: Layer, ndim: int, axis_name: str, legacy_name: str) -> int:
    """Caffe's axis / deprecated uint32 alias (concat_dim, slice_dim): not both; the alias is never negative."""
    p = layer.p
    if p.has(axis_name) and p.has(legacy_name):
        raise layer.error(f"give either {axis_name} or {legacy_name}, not both")
    if p.has(legacy_name):
        legacy = getattr(p, legacy_name)
        if not 0 <= legacy < ndim:
            raise layer.error(f"{legacy_name} {legacy} is out of range for a {ndim}-D blob "
                              f"(it must be in 0..{ndim - 1})")
        return legacy
    return channel_axis(getattr(p, axis_name), ndim, layer.where)


@register_layer("Concat")
class Concat(Layer):
    """Joins bottoms along one axis: y = cat(x_0, x_1, ..., axis).

    Bottoms: 1 or more blobs with the same number of axes and equal dims except along `axis`.
    Tops: y, whose `axis` dim is the sum of the bottoms' (other dims unchanged).
    Params (concat_param): axis = 1 (negative counts from the end), concat_dim = 1 (deprecated alias of
    axis, not negative; giving both is an error).

    Examples::

        >>> import torch
        >>> from layers.build import make_layer
        >>> concat = make_layer('type: "Concat" bottom: "a" bottom: "b" top: "y"', bottom_shapes=[(2, 1), (2, 2)])
        >>> concat(torch.zeros(2, 1), torch.ones(2, 2)).tolist()   # along axis 1: 1 + 2 columns
        [[0.0, 1.0, 1.0], [0.0, 1.0, 1.0]]
    """
    params = Params("concat_param", axis=Param(int, 1), concat_dim=Param(int, 1))
    num_bottoms = (1, None)

    def setup(self, bottom_shapes):
        first = bottom_shapes[0]
        self.axis = _legacy_axis(self, len(first), "axis", "concat_dim")
        for i, s in enumerate(bottom_shapes[1:], 1):
            if len(s) != len(first) or any(a != b for j, (a, b) in enumerate(zip(s, first)) if j != self.axis):
                raise self.error(f"all bottoms must have the same shape except along axis {self.axis}: "
                                 f"bottom 0 is {first}, bottom {i} is {s}")

    def forward(self, *xs):
        return torch.cat(xs, dim=self.axis) if len(xs) > 1 else xs[0]


@register_layer("Slice")
class Slice(Layer):
    """Cuts one bottom along an axis into consecutive pieces, one per top.

    With slice points p_1 < ... < p_k, top i covers [p_i, p_{i+1}) (p_0 = 0, p_{k+1} = the axis dim) and
    there must be k + 1 tops; with no slice points the axis is split into equal parts, one per top.
    Bottoms: x.  Tops: 1 or more pieces (x's shape, the slice axis shortened).
    Params (slice_param): axis = 1 (negative counts from the end), slice_point (repeated, increasing,
    strictly inside the axis), slice_dim = 1 (deprecated alias of axis, not negative; not both).
    Differs from Caffe: a slice point equal to the axis dim (an empty last top) is an error.

    Examples::

        >>> import torch
        >>> from layers.build import make_layer
        >>> slice_ = make_layer('type: "Slice" bottom: "x" top: "a" top: "b" slice_param { slice_point: 1 }',
        ...                     bottom_shapes=[(1, 3)])
        >>> a, b = slice_(torch.tensor([[1.0, 2.0, 3.0]]))   # along axis 1: [0, 1) and [1, 3)
        >>> a.tolist(), b.tolist()
        ([[1.0]], [[2.0, 3.0]])
    """
    params = Params("slice_param", axis=Param(int, 1), slice_point=Param(int, repeated=True), slice_dim=Param(int, 1))
    num_tops = (1, None)

    def setup(self, bottom_shapes):
        shape = bottom_shapes[0]
        self.axis = _legacy_axis(self, len(shape), "axis", "slice_dim")
        dim, n = shape[self.axis], self.num_top_blobs
        points = list(self.p.slice_point)
        if points:
            if len(points) != n - 1:
                raise self.error(f"{len(points)} slice_point(s) make {len(points) + 1} pieces, but the layer "
                                 f"has {n} top(s)")
            bounds = [0, *points, dim]
            if any(a >= b for a, b in zip(bounds, bounds[1:])):
                raise self.error(f"slice_point values {points} must be increasing and strictly between 0 and "
                                 f"{dim} (the size of axis {self.axis} of bottom shape {shape})")
            self.sizes = [b - a for a, b in zip(bounds, bounds[1:])]
        else:
            if dim % n:
                raise self.error(f"axis {self.axis} of bottom shape {shape} has size {dim}, which {n} tops "
                                 f"cannot split equally (give slice_point values)")
            self.sizes = [dim // n] * n

    def forward(self, x):
        return tuple(torch.split(x, self.sizes, dim=self.axis))


@register_layer("Split")
class Split(Layer):
    """Copies one bottom to every top (the gradients of the tops add up in the bottom).

    Bottoms: x.  Tops: 1 or more blobs, each equal to x (same shape).  Params: none.
    """
    num_tops = (1, None)

    def forward(self, x):
        return (x,) * self.num_top_blobs


@register_layer("Flatten")
class Flatten(Layer):
    """Merges the axes axis..end_axis into one: (d_0, ..., d_a, ..., d_e, ...) -> (d_0, ..., d_a*...*d_e, ...).

    Bottoms: x.  Tops: y (same data, fewer axes).
    Params (flatten_param): axis = 1, end_axis = -1 (both inclusive; negative counts from the end).

    Examples::

        >>> import torch
        >>> from layers.build import make_layer
        >>> flatten = make_layer('type: "Flatten" bottom: "x" top: "y"', bottom_shapes=[(2, 3, 4, 5)])
        >>> flatten(torch.zeros(2, 3, 4, 5)).shape   # axes 1..-1 merged: 3 * 4 * 5
        torch.Size([2, 60])
    """
    params = Params("flatten_param", axis=Param(int, 1), end_axis=Param(int, -1))

    def setup(self, bottom_shapes):
        ndim = len(bottom_shapes[0])
        self.start = channel_axis(self.p.axis, ndim, self.where)
        self.end = channel_axis(self.p.end_axis, ndim, self.where, "end_axis")
        if self.end < self.start:
            raise self.error(f"end_axis {self.p.end_axis} comes before axis {self.p.axis} for a {ndim}-D blob")

    def forward(self, x):
        return x.flatten(self.start, self.end)


@register_layer("Reshape")
class Reshape(Layer):
    """Changes the shape, keeping the data: the bottom dims axis..axis+num_axes-1 are replaced by `shape`.

    In `shape`, 0 copies the bottom dim at the same position (counted from `axis`) and one -1 is inferred
    so that the element count is unchanged.  E.g. for a 2 x 8 bottom: shape {0 2 -1} -> 2 x 2 x 4;
    shape {2 4} axis 1 -> 2 x 2 x 4; shape {1} num_axes 0 -> 1 x 2 x 8; shape {1} axis 1 num_axes 0 -> 2 x 1 x 8.
    Bottoms: x.  Tops: y (same data and count).
    Params (reshape_param): shape (BlobShape), axis = 0 (negative: -1 starts after the last axis, -2 before
    it, ...), num_axes = -1 (all axes from `axis` on).  The shape is recomputed for each input, so a new
    batch size passes through a 0 or -1 dim.

    Examples::

        >>> import torch
        >>> from layers.build import make_layer
        >>> reshape = make_layer('type: "Reshape" bottom: "x" top: "y" '
        ...                      'reshape_param { shape { dim: 0 dim: 2 dim: -1 } }', bottom_shapes=[(2, 8)])
        >>> reshape(torch.zeros(2, 8)).shape   # 0 copies the 2, -1 is inferred: 16 / (2 * 2)
        torch.Size([2, 2, 4])
        >>> reshape(torch.zeros(5, 8)).shape   # a new batch size passes through the 0
        torch.Size([5, 2, 4])
    """
    params = Params("reshape_param", shape=Param(BLOB_SHAPE), axis=Param(int, 0), num_axes=Param(int, -1))

    def setup(self, bottom_shapes):
        dims = list(self.p.shape.dim)
        if sum(d == -1 for d in dims) > 1:
            raise self.error(f"shape {dims} has more than one -1 (at most one dim can be inferred)")
        if any(d < -1 for d in dims):
            raise self.error(f"shape {dims} has a dim below -1 (dims are >= 0, 0 to copy, or -1 to infer)")
        if self.p.num_axes < -1:
            raise self.error(f"num_axes must be >= 0, or -1 for all axes, got {self.p.num_axes}")
        self.top_shape(bottom_shapes[0])

    def top_shape(self, bottom: Shape) -> Shape:
        """Caffe's ReshapeLayer::Reshape rule."""
        ndim, axis, num_axes = len(bottom), self.p.axis, self.p.num_axes
        start = axis if axis >= 0 else ndim + axis + 1
        if not 0 <= start <= ndim:
            raise self.error(f"axis {axis} is out of range for a {ndim}-D bottom")
        end = ndim if num_axes == -1 else start + num_axes
        if end > ndim:
            raise self.error(f"axis + num_axes = {start} + {num_axes} is beyond the {ndim} axes of the bottom")
        new = list(self.p.shape.dim)
        for i, d in enumerate(new):
            if d == 0:
                if start + i >= ndim:
                    raise self.error(f"shape dim {i} is 0 but the bottom {bottom} has no axis {start + i} to copy")
                new[i] = bottom[start + i]
        top = [*bottom[:start], *new, *bottom[end:]]
        count = math.prod(bottom)
        if -1 in new:
            known = math.prod(d for d in top if d != -1)
            if known == 0 or count % known:
                raise self.error(f"cannot infer the -1 dim of shape {list(self.p.shape.dim)}: bottom count "
                                 f"{count} (shape {bottom}) is not divisible by {known}")
            top[top.index(-1)] = count // known
        if math.prod(top) != count:
            raise self.error(f"shape {list(self.p.shape.dim)} gives top shape {tuple(top)} with "
                             f"{math.prod(top)} elements, but the bottom {bottom} has {count}")
        return tuple(top)

    def forward(self, x):
        return x.reshape(self.top_shape(tuple(x.shape)))


@register_layer("Silence")
class Silence(Layer):
    """Consumes blobs so they are not net outputs; computes nothing (no gradient reaches the bottoms).

    Bottoms: 1 or more blobs of any shape.  Tops: none.  Params: none.
    """
    num_bottoms = (1, None)
    num_tops = 0

    def infer_top_shapes(self, bottom_shapes):
        return []

    def forward(self, *xs):
        return ()
