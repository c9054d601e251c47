"""Caffe's Data layer: batches of Datum records from an LMDB (src/caffe/layers/data_layer.cpp), with
transform_param (layers/caffe/transform.py).

A two-half source layer (layers.base.SourceLayer): the main process walks the keys (Caffe's cursor: key order,
back to the first after the last) and draws the transform's random numbers; the worker processes read, decode
and transform the records the ticket names, each with its own read-only LMDB environment (lock=False, opened
on first use in each process: an environment never crosses a fork).
"""

from __future__ import annotations

import os

import numpy as np
import torch

from layers.base import REQUIRED, Param, Params, SourceLayer
from layers.caffe.datum import decode_datum
from layers.caffe.transform import (DEPRECATED, TRANSFORM, Transformer, layer_rngs, per_process, rng_state,
                                    set_rng_state, stack)
from layers.registry import register_layer
from netdef.errors import NetError

__all__ = ["Data", "open_lmdb", "show_key"]

LEVELDB_HINT = ("convert it to LMDB (from the images: python tools/convert_imageset.py ROOT/ LIST OUT_LMDB; from the "
                "LevelDB itself, in Python: import lmdb, plyvel; env = lmdb.open('OUT_LMDB', map_size=1 << 40); "
                "txn = env.begin(write=True); [txn.put(k, v) for k, v in plyvel.DB('SOURCE').iterator()]; "
                "txn.commit()) and set backend: LMDB")


def show_key(key: bytes) -> str:
    """A record key for messages: its text when it is printable UTF-8, else hex."""
    try:
        text = key.decode("utf-8")
        if text.isprintable():
            return repr(text)
    except UnicodeDecodeError:
        pass
    return f"0x{key.hex()}"


def open_lmdb(path: str, where: str):
    """The LMDB at `path`, read-only, without lock file (many readers, no writer), opened once per process."""
    import lmdb

    def opener():
        if not os.path.exists(path):
            raise NetError(f"{where}: data_param source '{path}': no such LMDB (folder holding data.mdb)")
        try:
            return lmdb.open(path, readonly=True, lock=False, create=False, readahead=False,
                             subdir=os.path.isdir(path))
        except lmdb.Error as e:
            raise NetError(f"{where}: data_param source '{path}' is not a readable LMDB: {e}") from None
    return per_process(("lmdb", os.path.abspath(path)), opener)


@register_layer("Data")
class Data(SourceLayer):
    """Batches of Caffe Datum records from an LMDB, in key order, wrapping around; transform_param applied.

    Bottoms: none.  Tops: data (batch_size, C, H, W) (crop_size x crop_size with crop_size), label (batch_size,)
    (optional: one top gives the data only).
    Params (data_param): source (the LMDB folder, required), batch_size (required, > 0), backend = LEVELDB
      (LEVELDB | LMDB; only LMDB is read: a LevelDB is refused with how to convert it; when backend is not given
      and source is an LMDB, it is read), rand_skip = 0 (skip rand() % rand_skip records at the start, as Caffe
      before 1.0; Caffe 1.0 ignores it), prefetch = 4 (accepted; the net's source stage reads ahead),
      force_encoded_color = false (as transform_param force_color), and the deprecated scale, mean_file,
      crop_size, mirror (used when transform_param does not set them, as Caffe's upgrade moves them).
    Params (transform_param): scale = 1, mirror = false, crop_size = 0, mean_file, mean_value (repeated),
      force_color = false, force_gray = false (layers/caffe/transform.py).
    Records: Datum with uint8 data, float_data, or an encoded image (decoded as Caffe: the file's own channels,
    or 3-channel BGR with force_color, 1-channel with force_gray). The top shape comes from the first record
    (read at build, as Caffe's DataLayerSetUp); every record of a batch must give that shape.
    Random decisions (mirror, TRAIN crop offsets) come from the layer's own generator, seeded from torch's
    initial seed (the solver's random_seed) and the layer name; the cursor (the next key) and the generator are
    the layer's state (get_state/set_state), so a resumed run reads exactly the batches of an uninterrupted one.
    """
    params = Params("data_param", source=Param(str, REQUIRED), batch_size=Param(int, 0), rand_skip=Param(int, 0),
                    backend=Param(("LEVELDB", "LMDB"), "LEVELDB"), force_encoded_color=Param(bool, False),
                    prefetch=Param(int, 4), **DEPRECATED) + TRANSFORM
    num_bottoms = 0
    num_tops = (1, 2)
    stateful = True

    def setup(self, bottom_shapes):
        d = self.p_blocks["data_param"]
        self.source, self.batch_size = d.source, d.batch_size
        if self.batch_size < 1:
            raise self.error(f"data_param batch_size must be positive, got {self.batch_size}")
        is_lmdb = os.path.isfile(os.path.join(self.source, "data.mdb")) or os.path.isfile(self.source)
        if d.backend == "LEVELDB" and (d.has("backend") or not is_lmdb):
            raise self.error(f"data_param source '{self.source}': backend LEVELDB is not read here: {LEVELDB_HINT}")
        self.transformer = Transformer(self, deprecated=d)
        if d.force_encoded_color and not self.transformer.force_gray:
            self.transformer.force_color = True
        self.order_rng, self.rng = layer_rngs(self, 2)
        env = open_lmdb(self.source, self.where)
        with self._txn(env) as txn:
            cur = txn.cursor()
            if not cur.first():
                raise self.error(f"data_param source '{self.source}': the LMDB holds no records")
            first_key, first = cur.key(), cur.value()
            skip = int(self.order_rng.integers(0, 2 ** 32)) % d.rand_skip if d.rand_skip > 0 else 0
            for _ in range(skip):
                if not cur.next():
                    cur.first()
            self.next_key = cur.key()
        image, _ = self._decode(first, first_key)
        c, h, w = image.shape
        self.transformer.check(c, h, w, self._what(first_key))
        self.top_shape = (self.batch_size,) + self.transformer.shape(c, h, w)

    def infer_top_shapes(self, bottom_shapes):
        return [self.top_shape, (self.batch_size,)][:self.num_top_blobs]

    # -- main process ------------------------------------------------------------------------------------
    def draw_batch(self):
        keys = []
        with self._txn(open_lmdb(self.source, self.where)) as txn:
            cur = txn.cursor()
            if not cur.set_range(self.next_key) and not cur.first():
                raise self.error(f"data_param source '{self.source}': the LMDB holds no records")
            for _ in range(self.batch_size):
                keys.append(cur.key())
                if not cur.next():
                    cur.first()
            self.next_key = cur.key()
        return keys, self.transformer.draw(self.rng, self.batch_size)

    def get_state(self):
        return {"next_key": self.next_key.hex(), "rng": rng_state(self.rng)}

    def set_state(self, state):
        try:
            self.next_key = bytes.fromhex(state["next_key"])
        except (KeyError, TypeError, ValueError) as e:
            raise self.error(f"cannot restore the cursor from {state!r}: {e}") from None
        set_rng_state(self, self.rng, state["rng"])

    # -- worker processes ----------------------------------------------------------------------------------
    def read_batch(self, ticket):
        keys, draws = ticket
        images, labels, whats = [], [], []
        with self._txn(open_lmdb(self.source, self.where)) as txn:
            for key, drawn in zip(keys, draws):
                what = self._what(key)
                buf = self._lmdb_call(lambda: txn.get(key), key)
                if buf is None:
                    raise self.error(f"{what}: no such record (the LMDB changed while it was read)")
                image, label = self._decode(buf, key)
                images.append(self.transformer.apply(image, drawn, what, compact=True))
                labels.append(label)
                whats.append(what)
        data = stack(self, images, whats)
        return (data, torch.tensor(labels, dtype=torch.int64))[:self.num_top_blobs]

    # -- helpers -----------------------------------------------------------------------------------------
    def _what(self, key: bytes) -> str:
        return f"record {show_key(key)} of LMDB '{self.source}'"

    def _txn(self, env):
        return self._lmdb_call(lambda: env.begin(buffers=False), b"")

    def _lmdb_call(self, fn, key: bytes):
        import lmdb
        try:
            return fn()
        except lmdb.Error as e:
            at = f" at key {show_key(key)}" if key else ""
            raise self.error(f"data_param source '{self.source}': LMDB error{at}: {e}") from None

    def _decode(self, buf, key: bytes) -> tuple[np.ndarray, int]:
        try:
            return decode_datum(buf, self._what(key), self.transformer.decode_color())
        except NetError as e:
            raise self.error(str(e)) from None
