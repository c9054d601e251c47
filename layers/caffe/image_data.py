"""Caffe's ImageData layer: batches of image files named in a list file (src/caffe/layers/image_data_layer.cpp),
with transform_param (layers/caffe/transform.py).

A two-half source layer (layers.base.SourceLayer): the main process walks the list (shuffled at the start and
at each epoch's end with `shuffle`) and draws the transform's random numbers; the workers read, decode, resize
and transform the images the ticket names.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from layers.base import REQUIRED, Param, Params, SourceLayer
from layers.caffe.transform import (DEPRECATED, TRANSFORM, Transformer, layer_rngs, rng_state, set_rng_state,
                                    stack)
from layers.registry import register_layer
from netdef.errors import NetError

__all__ = ["ImageData", "read_image_list", "read_image"]

_CV_LOG = getattr(getattr(cv2, "utils", None), "logging", None)


def read_image_list(path: str, where: str) -> list[tuple[str, int, int]]:
    """Caffe's list file: one image a line, `PATH LABEL`, the integer label after the LAST space (so paths may
    hold spaces). (path, label, line number) for each line; blank lines are skipped. NetError naming the list
    and line for a line without an integer label."""
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as fh:
            text = fh.read()
    except OSError as e:
        raise NetError(f"{where}: cannot read image_data_param source '{path}': {e.strerror or e}") from None
    entries = []
    for number, line in enumerate(text.split("\n"), 1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        pos = line.rfind(" ")
        label = line[pos + 1:].strip() if pos >= 0 else ""
        try:
            value = int(label)
        except ValueError:
            what = "no label" if pos < 0 else f"label {label!r} is not an integer"
            raise NetError(f"{where}: {path}:{number}: {what} (a line is 'PATH LABEL', the label after the last "
                           f"space)") from None
        entries.append((line[:pos], value, number))
    if not entries:
        raise NetError(f"{where}: image_data_param source '{path}' lists no images")
    return entries


def read_image(path: str, height: int, width: int, is_color: bool, what: str) -> np.ndarray:
    """Caffe's ReadImageToCVMat as a (C, H, W) uint8 array: the file decoded in color (3-channel BGR) or
    grayscale, resized with cv2.resize (bilinear) to height x width when both are > 0. NetError naming `what`
    (the file, the list and its line) when it cannot be read or decoded; OpenCV prints nothing."""
    try:
        with open(path, "rb") as fh:
            data = np.frombuffer(fh.read(), np.uint8)
    except OSError as e:
        raise NetError(f"cannot read {what}: {e.strerror or e}") from None
    flag = cv2.IMREAD_COLOR if is_color else cv2.IMREAD_GRAYSCALE
    img = None
    if data.size:
        level = _CV_LOG.getLogLevel() if _CV_LOG is not None else None
        if _CV_LOG is not None:
            _CV_LOG.setLogLevel(_CV_LOG.LOG_LEVEL_SILENT)
        try:
            img = cv2.imdecode(data, flag)
        except cv2.error:
            img = None
        finally:
            if _CV_LOG is not None:
                _CV_LOG.setLogLevel(level)
    if img is None:
        raise NetError(f"cannot decode {what}: not an image file OpenCV reads ({data.size} bytes)")
    if height > 0 and width > 0:
        img = cv2.resize(img, (width, height))
    return img[None] if img.ndim == 2 else np.ascontiguousarray(img.transpose(2, 0, 1))


@register_layer("ImageData")
class ImageData(SourceLayer):
    """Batches of images named in a list file, with their labels; transform_param applied.

    Bottoms: none.  Tops: data (batch_size, C, H, W) (C = 3 BGR, or 1 with is_color: false; H x W the image's,
    new_height x new_width, or crop_size x crop_size), label (batch_size,).
    Params (image_data_param): source (the list file, required: `PATH LABEL` a line, the label after the last
      space), root_folder = "" (prefixed to each path by plain concatenation, as Caffe: end it with '/'),
      batch_size = 1, shuffle = false (shuffle the list at the start and again at each epoch's end),
      rand_skip = 0 (start at line rand() % rand_skip), new_height = 0, new_width = 0 (resize both when both
      > 0), is_color = true, and the deprecated scale, mean_file, crop_size, mirror (used when transform_param
      does not set them).
    Params (transform_param): as the Data layer (layers/caffe/transform.py).
    The top shape comes from the first image (read at build, as Caffe); every image of a batch must give it.
    Shuffles, rand_skip and the transform's random decisions come from the layer's own generators, seeded
    from torch's initial seed (the solver's random_seed) and the layer name; each epoch's order is a fresh
    random permutation of the list (Caffe shuffles the previous order: the same distribution). The position,
    the order's generator and the transform's are the layer's state: resume is exact.
    Errors (one line): a list line without an integer label (the list and line number), an image that cannot
    be read or decoded (its path, the list and line number).
    """
    params = Params("image_data_param", source=Param(str, REQUIRED), batch_size=Param(int, 1),
                    rand_skip=Param(int, 0), shuffle=Param(bool, False), new_height=Param(int, 0),
                    new_width=Param(int, 0), is_color=Param(bool, True), root_folder=Param(str, ""),
                    **DEPRECATED) + TRANSFORM
    num_bottoms = 0
    num_tops = 2
    stateful = True

    def setup(self, bottom_shapes):
        q = self.p_blocks["image_data_param"]
        self.q = q
        if q.batch_size < 1:
            raise self.error(f"image_data_param batch_size must be positive, got {q.batch_size}")
        if (q.new_height == 0) != (q.new_width == 0) or q.new_height < 0 or q.new_width < 0:
            raise self.error(f"image_data_param new_height and new_width are set together (both > 0) or not at all, "
                             f"got {q.new_height} and {q.new_width}")
        self.transformer = Transformer(self, deprecated=q)
        self.lines = read_image_list(q.source, self.where)
        self.order_rng, self.skip_rng, self.rng = layer_rngs(self, 3)
        self._new_epoch()
        if q.rand_skip > 0:
            skip = int(self.skip_rng.integers(0, 2 ** 32)) % q.rand_skip
            if skip >= len(self.lines):
                raise self.error(f"rand_skip {q.rand_skip} drew {skip}, not less than the {len(self.lines)} images "
                                 f"of '{q.source}' (Caffe: not enough points to skip)")
            self.pos = skip
        path, _, number = self.lines[self.order[self.pos]]
        image = self._read(path, number)
        what = self._what(path, number)
        self.transformer.check(*image.shape, what)
        self.top_shape = (q.batch_size,) + self.transformer.shape(*image.shape)

    def infer_top_shapes(self, bottom_shapes):
        return [self.top_shape, (self.q.batch_size,)]

    # -- main process ------------------------------------------------------------------------------------
    def _new_epoch(self) -> None:
        """Position 0 of a new order: the list's, or a fresh permutation with `shuffle`."""
        self.epoch_rng = rng_state(self.order_rng)
        n = len(self.lines)
        self.order = self.order_rng.permutation(n) if self.q.shuffle else np.arange(n)
        self.pos = 0

    def draw_batch(self):
        items = []
        for _ in range(self.q.batch_size):
            items.append(self.lines[self.order[self.pos]])
            self.pos += 1
            if self.pos >= len(self.lines):
                self._new_epoch()
        return items, self.transformer.draw(self.rng, self.q.batch_size)

    def get_state(self):
        return {"pos": self.pos, "epoch_rng": self.epoch_rng, "rng": rng_state(self.rng)}

    def set_state(self, state):
        try:
            pos, epoch = int(state["pos"]), state["epoch_rng"]
        except (KeyError, TypeError, ValueError) as e:
            raise self.error(f"cannot restore the position from {state!r}: {e}") from None
        set_rng_state(self, self.order_rng, epoch)
        self._new_epoch()
        if not 0 <= pos < len(self.lines):
            raise self.error(f"cannot restore position {pos}: '{self.q.source}' lists {len(self.lines)} images")
        self.pos = pos
        set_rng_state(self, self.rng, state["rng"])

    # -- worker processes ----------------------------------------------------------------------------------
    def read_batch(self, ticket):
        items, draws = ticket
        images, whats = [], []
        for (path, _, number), drawn in zip(items, draws):
            what = self._what(path, number)
            images.append(self.transformer.apply(self._read(path, number), drawn, what, compact=True))
            whats.append(what)
        labels = torch.tensor([label for _, label, _ in items], dtype=torch.int64)
        return stack(self, images, whats), labels

    def _what(self, path: str, number: int) -> str:
        return f"image '{self.q.root_folder + path}' ({self.q.source}:{number})"

    def _read(self, path: str, number: int) -> np.ndarray:
        q = self.q
        try:
            return read_image(q.root_folder + path, q.new_height, q.new_width, q.is_color, self._what(path, number))
        except NetError as e:
            raise self.error(str(e)) from None
