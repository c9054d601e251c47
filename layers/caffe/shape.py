"""Layers that only move data around: Concat, Slice, Split, Flatten, Reshape, Silence, Crop, Tile, BatchReindex,
Filter; and Parameter (a learnable blob as a top)."""

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


@register_layer("Crop")
class Crop(Layer):
    """Crops the first bottom to the shape of the second (the reference) from `axis` on, at given offsets:
    y = x[..., o_a : o_a + r_a, ..., o_{n-1} : o_{n-1} + r_{n-1}] with r the reference's dims; the axes before
    `axis` are kept whole.

    Bottoms: x (any shape), reference (at least as many axes as x; only its dims from `axis` on are used).
    Tops: y (x's dims before `axis`, the reference's from `axis` on).
    Params (crop_param): axis = 2 (negative counts from the end), offset (repeated, >= 0): none = all 0, one =
    the same for every cropped axis, else one per axis from `axis` on. Each crop must fit: o_i + r_i <= x_i.
    Gradient: to x only (zero outside the crop); none to the reference.

    Examples::

        >>> import torch
        >>> from layers.build import make_layer
        >>> crop = make_layer('type: "Crop" bottom: "x" bottom: "ref" top: "y" crop_param { offset: 1 }',
        ...                   bottom_shapes=[(1, 1, 4, 4), (1, 1, 2, 2)])
        >>> crop(torch.arange(16.0).view(1, 1, 4, 4), torch.zeros(1, 1, 2, 2)).tolist()   # rows and columns 1..2
        [[[[5.0, 6.0], [9.0, 10.0]]]]
    """
    params = Params("crop_param", axis=Param(int, 2), offset=Param(int, repeated=True))
    num_bottoms = 2

    def setup(self, bottom_shapes):
        data = bottom_shapes[0]
        self.axis = channel_axis(self.p.axis, len(data), self.where, "crop_param axis")
        offsets = list(self.p.offset)
        if any(o < 0 for o in offsets):
            raise self.error(f"offset values must be >= 0 (uint32), got {offsets}")
        if len(offsets) > 1 and self.axis + len(offsets) != len(data):
            raise self.error(f"{len(offsets)} offset values for axis {self.axis} of a {len(data)}-D bottom: give "
                             f"one, or one per axis from {self.axis} on ({len(data) - self.axis})")
        self.windows(*bottom_shapes)

    def windows(self, data: Shape, ref: Shape) -> list[slice]:
        """Caffe's CropLayer::Reshape: per axis the (offset, size) window, as slices."""
        if len(ref) < len(data):
            raise self.error(f"the reference bottom {ref} has fewer axes than the bottom to crop {data}")
        offsets = list(self.p.offset)
        out = []
        for i, size in enumerate(data):
            if i < self.axis:
                out.append(slice(None))
                continue
            off = offsets[0] if len(offsets) == 1 else (offsets[i - self.axis] if offsets else 0)
            if size - off < ref[i]:
                raise self.error(f"the crop of axis {i} is out of bounds: offset {off} + size {ref[i]} (the "
                                 f"reference {ref}) > {size} (the bottom {data})")
            out.append(slice(off, off + ref[i]))
        return out

    def forward(self, x, ref):
        return x[tuple(self.windows(tuple(x.shape), tuple(ref.shape)))]


@register_layer("Tile")
class Tile(Layer):
    """Repeats the bottom `tiles` times along `axis`, the whole block of axes from `axis` on each time:
    for x (2, 3) with axis 1, tiles 2: y[n] = [x[n, 0], x[n, 1], x[n, 2], x[n, 0], x[n, 1], x[n, 2]].

    Bottoms: x.  Tops: y (x's shape with dim `axis` times tiles).
    Params (tile_param): axis = 1 (negative counts from the end), tiles (required, > 0).
    Gradient: the sum over the copies.
    """
    params = Params("tile_param", axis=Param(int, 1), tiles=Param(int))

    def setup(self, bottom_shapes):
        shape = bottom_shapes[0]
        self.axis = channel_axis(self.p.axis, len(shape), self.where, "tile_param axis")
        if not self.p.has("tiles"):
            raise self.error("missing tile_param { tiles: ... } (the number of copies)")
        if self.p.tiles <= 0:
            raise self.error(f"tiles must be > 0, got {self.p.tiles}")

    def forward(self, x):
        reps = [1] * x.dim()
        reps[self.axis] = self.p.tiles
        return x.repeat(reps)


@register_layer("BatchReindex")
class BatchReindex(Layer):
    """Picks items of the batch by index: y[i] = x[int(index[i])] (repeats and any order allowed).

    Bottoms: x (N, ...), index (M,) (1-D; item numbers as floats, each >= 0 and < N, truncated).
    Tops: y (M, ...).  Params: none.
    Gradient: to x, each item the sum of the gradients of the rows that picked it; none to the index.
    An index out of range is an error (Caffe checks on the CPU before every forward, also for GPU nets).
    """
    num_bottoms = 2

    def setup(self, bottom_shapes):
        data, index = bottom_shapes
        if len(index) != 1:
            raise self.error(f"the index bottom must be 1-D (one item number per output row), got {index}")
        if not data:
            raise self.error("the data bottom needs at least one axis (the batch)")

    def infer_top_shapes(self, bottom_shapes):
        data, index = bottom_shapes
        return [(index[0], *data[1:])]

    def forward(self, x, index):
        index = index.detach()
        bad = (index < 0) | (index >= x.shape[0]) | index.isnan()
        if bool(bad.any()):
            raise self.error(f"index {index[bad][0].item():g} is out of range for a batch of {x.shape[0]} "
                             f"(item numbers must be in 0..{x.shape[0] - 1})")
        return x.index_select(0, index.long())


@register_layer("Filter")
class Filter(Layer):
    """Keeps the items (rows along axis 0) whose selector is nonzero, in every bottom but the last:
    y_t = x_t[selector != 0] for t = 0 .. K-1.

    Bottoms: x_0 .. x_{K-1} (each (N, ...)), selector (N,) or (N, 1, ...) (every axis after the first 1).
    Tops: y_0 .. y_{K-1}, one per bottom but the selector: (M, ...) with M the number of nonzero selectors
    (0 to N, known only from the data).
    Build-time top shapes (infer_top_shapes) are the bottoms' own, N rows, as Caffe's first Reshape gives;
    layers after a Filter must therefore accept another batch size at run time.
    Params: none.  Gradient: to the kept rows (zero for the others); none to the selector.
    """
    num_bottoms = (2, None)
    num_tops = (1, None)

    def setup(self, bottom_shapes):
        *data, selector = bottom_shapes
        if self.num_top_blobs != len(data):
            raise self.error(f"needs one top per bottom except the selector (the last bottom): "
                             f"{len(data)} top(s), got {self.num_top_blobs}")
        if not selector or any(d != 1 for d in selector[1:]):
            raise self.error(f"the selector (last bottom) must be (N,) or (N, 1, ...), got {selector}")
        for i, s in enumerate(data):
            if not s or s[0] != selector[0]:
                raise self.error(f"bottom {i} {s} must have the selector's first dim {selector[0]}")

    def infer_top_shapes(self, bottom_shapes):
        return [tuple(s) for s in bottom_shapes[:-1]]

    def forward(self, *bottoms):
        *data, selector = bottoms
        keep = (selector.detach().reshape(-1) != 0).nonzero().squeeze(1)
        tops = tuple(x.index_select(0, keep) for x in data)
        return tops[0] if len(tops) == 1 else tops


@register_layer("Parameter")
class Parameter(Layer):
    """A learnable blob as the layer's top (Caffe's ParameterLayer): y = the blob itself (its gradient is
    the blob's).

    Bottoms: none.  Tops: y, shaped parameter_param.shape.
    Params (parameter_param): shape (BlobShape; no dims = a 0-axis blob of one value, as Caffe).
    Blobs: parameter (that shape), filled with 0 as Caffe's new Blob (set it from weights, or learn it).
    """
    params = Params("parameter_param", shape=Param(BLOB_SHAPE))
    num_bottoms = 0

    def setup(self, bottom_shapes):
        shape = tuple(self.p.shape.dim)
        if any(d < 0 for d in shape):
            raise self.error(f"shape dims must be >= 0, got {list(shape)}")
        self.add_blob("parameter", shape)

    def infer_top_shapes(self, bottom_shapes):
        return [tuple(self.parameter.shape)]

    def forward(self):
        return self.parameter
