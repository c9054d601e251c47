"""Caffe's DataTransformer (src/caffe/data_transformer.cpp) for the data layers (Data, ImageData, MemoryData), split
as the source stage runs them: the random decisions are drawn in the main process, the pixels transformed in the
workers.

    transform_param { scale: 1  mirror: false  crop_size: 0  mean_file: ""  mean_value: ...
                      force_color: false  force_gray: false }

For one (C, H, W) image (uint8 from `data` or an image file, float32 from a Datum's float_data), as Caffe's
Transform(const Datum&) and Transform(const cv::Mat&), which give the same numbers:

    h_off, w_off = 0, 0 without crop_size; with crop_size, in TRAIN Rand(H - crop + 1), Rand(W - crop + 1),
                   in TEST (H - crop) / 2, (W - crop) / 2 (integer division)
    do_mirror    = mirror && Rand(2)                       (in both phases, as Caffe)
    top[c, h, w'] = (x[c, h_off + h, w_off + w] - mean[c, h_off + h, w_off + w]) * scale   with mean_file
                  = (x[c, h_off + h, w_off + w] - mean_value[c]) * scale                     with mean_value
                  =  x[c, h_off + h, w_off + w] * scale                                       otherwise
    w' = crop_w - 1 - w when do_mirror, else w; arithmetic in float32 as Caffe's float nets.

The mean is subtracted before scaling; the crop window is taken from the mean file too, so a mean file is the
full image size (its (1, C, H, W) or (C, H, W) BlobProto, .binaryproto as compute_image_mean writes it); one
mean_value is used for every channel, else one per channel. Caffe's Rand(n) is `rng() % n` of a 32-bit random
number, drawn per image in the order mirror, h_off, w_off (only those the params use: mirror when mirror is
set, the offsets when crop_size is set in TRAIN). Here the main process draws those raw 32-bit numbers
(`draws`) and the worker takes them modulo the size of the image it decodes, so the decision is Caffe's
whatever the image size and is fixed before any file is opened: that is what makes resume exact.

Images are BGR (channels as OpenCV decodes them), as in Caffe.
"""

from __future__ import annotations

import os
import zlib

import numpy as np
import torch

from layers.base import Layer, Param, Params
from layers.caffe.blobproto import decode_blobproto
from netdef import protowire as pw
from netdef.errors import NetError

__all__ = ["TRANSFORM", "Transformer", "read_mean_file", "layer_rngs", "rng_state", "set_rng_state", "per_process"]

TRANSFORM = Params("transform_param", scale=Param(float, 1.0), mirror=Param(bool, False), crop_size=Param(int, 0),
                   mean_file=Param(str, ""), mean_value=Param(float, repeated=True), force_color=Param(bool, False),
                   force_gray=Param(bool, False))

# The deprecated copies of transform_param's fields in data_param / image_data_param (Caffe's
# UpgradeNetDataTransformation moves them into transform_param).
DEPRECATED = dict(scale=Param(float, 1.0), mean_file=Param(str, ""), crop_size=Param(int, 0), mirror=Param(bool, False))


def layer_rngs(layer: Layer, count: int) -> list[np.random.Generator]:
    """`count` independent PCG64 generators of a layer, seeded as the index layers seed theirs: from torch's
    initial seed (the solver's random_seed, or torch.manual_seed before the net is built) and the layer's name."""
    seq = np.random.SeedSequence([torch.initial_seed(), zlib.crc32(layer.name.encode("utf-8"))])
    return [np.random.Generator(np.random.PCG64(s)) for s in seq.spawn(count)]


def rng_state(rng: np.random.Generator) -> dict:
    return rng.bit_generator.state


def set_rng_state(layer: Layer, rng: np.random.Generator, state) -> None:
    try:
        rng.bit_generator.state = state
    except (KeyError, TypeError, ValueError) as e:
        raise layer.error(f"cannot restore the random state from {state!r}: {e}") from None


_PROCESS_CACHE: dict = {}


def per_process(key, opener):
    """A resource (an LMDB environment) opened once per process: opener() runs on the first use in each
    process, so nothing opened in the main process is used in a worker forked from it (the key includes the
    process id). The parent's objects are dropped in the child: py-lmdb refuses a second environment on one
    database in a process, and closing a lock-free read-only environment only unmaps the child's own copy."""
    full = (os.getpid(), key)
    if full not in _PROCESS_CACHE:
        for old in [k for k in _PROCESS_CACHE if k[0] != full[0]]:
            del _PROCESS_CACHE[old]
        _PROCESS_CACHE[full] = opener()
    return _PROCESS_CACHE[full]


def read_mean_file(path: str, where: str) -> np.ndarray:
    """A BlobProto (.binaryproto) as a float32 array of its shape, as Blob::FromProto: the legacy
    num/channels/height/width when any is set, else shape { dim }; double_data when present, else data."""
    try:
        with open(path, "rb") as fh:
            buf = fh.read()
    except OSError as e:
        raise NetError(f"{where}: cannot read mean_file '{path}': {e.strerror or e}") from None
    try:
        shape, values = decode_blobproto(buf)
    except pw.WireError as e:
        raise NetError(f"{where}: mean_file '{path}' is not a BlobProto (.binaryproto): {e}") from None
    if any(d < 0 for d in shape) or int(np.prod(shape)) != values.size or not values.size:
        raise NetError(f"{where}: mean_file '{path}': blob shape {shape} does not match its {values.size} values")
    return values.astype(np.float32).reshape(shape)


class Transformer:
    """transform_param of one layer: built in the main process at setup (reads the mean file), used by the
    workers (pure: the random decisions come in `draws`)."""

    def __init__(self, layer: Layer, block=None, deprecated=None):
        """`block`: the layer's parsed transform_param (layer.p_blocks['transform_param']); `deprecated`: its data
        block, whose scale/mean_file/crop_size/mirror count when transform_param does not set them."""
        t = block if block is not None else layer.p_blocks["transform_param"]
        self.where = layer.where
        get = {}
        for name in ("scale", "mirror", "crop_size", "mean_file"):
            if deprecated is not None and deprecated.has(name) and not t.has(name):
                get[name] = getattr(deprecated, name)
            else:
                get[name] = getattr(t, name)
        self.scale = np.float32(get["scale"])
        self.mirror, self.crop = bool(get["mirror"]), int(get["crop_size"])
        self.mean_values = np.asarray(t.mean_value, np.float32)
        self.force_color, self.force_gray = t.force_color, t.force_gray
        self.train = layer.phase == "TRAIN"
        if self.crop < 0:
            raise layer.error(f"transform_param crop_size must be >= 0, got {self.crop}")
        if self.force_color and self.force_gray:
            raise layer.error("transform_param: cannot set both force_color and force_gray")
        self.mean_path = get["mean_file"]
        if self.mean_path and self.mean_values.size:
            raise layer.error("transform_param: cannot give mean_file and mean_value at the same time")
        self.mean = None
        if self.mean_path:
            mean = read_mean_file(self.mean_path, layer.where)
            if mean.ndim == 4 and mean.shape[0] == 1:
                mean = mean[0]
            if mean.ndim != 3:
                raise layer.error(f"mean_file '{self.mean_path}' holds a blob of shape {tuple(mean.shape)}, not "
                                  f"(1, channels, height, width)")
            self.mean = np.ascontiguousarray(mean)

    # -- what the main process draws -------------------------------------------------------------------------
    @property
    def draws_per_image(self) -> int:
        """Caffe's Rand calls per image: mirror, then h_off and w_off."""
        return int(self.mirror) + 2 * int(bool(self.crop) and self.train)

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """The raw 32-bit random numbers of n images, (n, draws_per_image) uint32."""
        k = self.draws_per_image
        if k == 0:
            return np.zeros((n, 0), np.uint32)
        return rng.integers(0, 2 ** 32, size=(n, k), dtype=np.uint64).astype(np.uint32)

    @property
    def is_identity(self) -> bool:
        """Whether transform leaves the pixels' values as they are (uint8 tops can travel as uint8)."""
        return self.scale == 1 and self.mean is None and not self.mean_values.size

    # -- the worker side -------------------------------------------------------------------------------------
    def shape(self, c: int, h: int, w: int) -> tuple[int, int, int]:
        """InferBlobShape: the top's (C, H, W) for an image of that size."""
        return (c, self.crop, self.crop) if self.crop else (c, h, w)

    def check(self, c: int, h: int, w: int, what: str) -> None:
        """Caffe's CHECKs for an image of that size; `what` names it."""
        if self.crop and (h < self.crop or w < self.crop):
            raise NetError(f"{self.where}: {what} is {h}x{w}, smaller than crop_size {self.crop}")
        if self.mean is not None and self.mean.shape != (c, h, w):
            raise NetError(f"{self.where}: mean_file '{self.mean_path}' has shape {self.mean.shape} (C, H, W), "
                           f"{what} has {(c, h, w)}")
        if self.mean_values.size not in (0, 1, c):
            raise NetError(f"{self.where}: transform_param gives {self.mean_values.size} mean_value(s) for {what} "
                           f"with {c} channel(s): give 1, or one per channel")

    def apply(self, x: np.ndarray, draws: np.ndarray, what: str, compact: bool = False) -> np.ndarray:
        """Transform one (C, H, W) image with its drawn numbers. uint8 in and `compact` with an identity
        transform: the uint8 pixels (cropped, mirrored); else float32."""
        c, h, w = x.shape
        self.check(c, h, w, what)
        k = 0
        mirror = False
        if self.mirror:
            mirror = bool(draws[0] % 2)
            k = 1
        h_off = w_off = 0
        ch, cw = h, w
        if self.crop:
            ch = cw = self.crop
            if self.train:
                h_off, w_off = int(draws[k] % (h - self.crop + 1)), int(draws[k + 1] % (w - self.crop + 1))
            else:
                h_off, w_off = (h - self.crop) // 2, (w - self.crop) // 2
        window = (slice(None), slice(h_off, h_off + ch), slice(w_off, w_off + cw))
        out = x[window]
        if not (compact and x.dtype == np.uint8 and self.is_identity):
            out = out.astype(np.float32)
            if self.mean is not None:
                out = (out - self.mean[window]) * self.scale
            elif self.mean_values.size:
                out = (out - self.mean_values.reshape(-1, 1, 1)) * self.scale
            else:
                out = out * self.scale
        if mirror:
            out = out[:, :, ::-1]
        return np.ascontiguousarray(out)

    def decode_color(self):
        """The is_color of an encoded image: True (force_color), False (force_gray), None (the file's own)."""
        return True if self.force_color else (False if self.force_gray else None)


def stack(layer: Layer, images: list[np.ndarray], whats: list[str]) -> torch.Tensor:
    """The batch of transformed images as one tensor; images of different shapes in one batch are a user error
    (Caffe shapes a batch from its first image)."""
    first = images[0].shape
    for img, what in zip(images, whats):
        if img.shape != first:
            raise layer.error(f"{what} gives a top of shape {img.shape}, the batch's first image {first}: the images "
                              f"of a batch must have one size (resize them, or use crop_size)")
    dtype = np.uint8 if all(i.dtype == np.uint8 for i in images) else np.float32
    return torch.from_numpy(np.stack([i.astype(dtype, copy=False) for i in images]))
