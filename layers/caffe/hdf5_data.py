"""Caffe's HDF5Data layer: rows of datasets in HDF5 files named in a list (src/caffe/layers/hdf5_data_layer.cpp).

A two-half source layer (layers.base.SourceLayer): the main process walks the rows (Caffe's current_file_,
current_row_, file and row permutations) and knows each file's row count (its metadata, read once); the workers
read the rows the ticket names, holding the last file's datasets in memory as Caffe does.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from layers.base import REQUIRED, Param, Params, SourceLayer
from layers.caffe.transform import TRANSFORM, layer_rngs, rng_state, set_rng_state
from layers.registry import register_layer
from netdef.errors import NetError

__all__ = ["HDF5Data"]

_SHIPPED = (np.float32, np.float64, np.uint8, np.int8, np.int16, np.int32, np.int64, np.float16)
_LAST_FILE: dict = {}      # process id -> (path, {dataset: array}): the file a worker holds


@register_layer("HDF5Data")
class HDF5Data(SourceLayer):
    """Rows of HDF5 datasets, one top per dataset (the top's name is the dataset's), batch_size rows a pass.

    Bottoms: none.  Tops: one per dataset, (batch_size, ...) with the dataset's row shape (its shape but the
    first axis); every listed file holds every dataset with one row count per file and the same row shapes.
    Params (hdf5_data_param): source (required: a text file naming the .h5 files, separated by white space,
    paths as they are: relative to the current folder), batch_size (required, > 0), shuffle = false.
    Order, as Caffe: the files in list order, each file's rows in order, wrapping around to the first file;
    with shuffle, the file order is a random permutation (a new one at each wrap) and the rows of a file are
    permuted when the file is entered (Caffe permutes them once more right after: so does this layer, to
    draw as many permutations) — rows of different files are never interleaved.
    Differs from Caffe: permutations come from the layer's own seeded generator (torch's initial seed, i.e.
    the solver's random_seed, and the layer name; Caffe uses std::random_shuffle), and the position,
    permutations and generator are the layer's state (get_state/set_state): resume is exact. Values keep their
    stored type up to the net, which casts them to its dtype (Caffe reads them as float).
    transform_param is refused (HDF5Data does not transform data), as in Caffe.
    """
    params = Params("hdf5_data_param", source=Param(str, REQUIRED), batch_size=Param(int, 0),
                    shuffle=Param(bool, False)) + TRANSFORM
    num_bottoms = 0
    num_tops = (1, None)
    stateful = True

    def __init__(self, spec, bottom_shapes=(), phase="TRAIN", param_str=""):
        # the top names are the dataset names, needed by setup (which sees shapes only)
        object.__setattr__(self, "tops", list(spec.tops))
        super().__init__(spec, bottom_shapes, phase, param_str)

    def setup(self, bottom_shapes):
        q = self.p_blocks["hdf5_data_param"]
        if self.p_blocks["transform_param"].given:
            raise self.error("HDF5Data does not transform data: remove transform_param (as Caffe refuses it)")
        if q.batch_size < 1:
            raise self.error(f"hdf5_data_param batch_size must be positive, got {q.batch_size}")
        self.source, self.batch_size, self.shuffle = q.source, q.batch_size, q.shuffle
        try:
            with open(q.source, encoding="utf-8", errors="surrogateescape") as fh:
                self.files = fh.read().split()
        except OSError as e:
            raise self.error(f"cannot read hdf5_data_param source '{q.source}': {e.strerror or e}") from None
        if not self.files:
            raise self.error(f"hdf5_data_param source '{q.source}' lists no HDF5 file")
        self.row_shapes: dict[str, tuple] = {}
        self.rows: dict[str, int] = {}
        self.rng, = layer_rngs(self, 1)
        self.file_perm = self.rng.permutation(len(self.files)) if self.shuffle else np.arange(len(self.files))
        self.current_file = 0
        self._load()
        self.current_row = 0

    def infer_top_shapes(self, bottom_shapes):
        return [(self.batch_size,) + self.row_shapes[t] for t in self.tops]

    # -- main process ------------------------------------------------------------------------------------
    def _file_rows(self, path: str) -> int:
        """A file's row count, its datasets checked against the tops (metadata only, read once)."""
        if path in self.rows:
            return self.rows[path]
        import h5py
        where = f"HDF5 file '{path}' (listed in '{self.source}')"
        try:
            with h5py.File(path, "r") as f:
                counts = {}
                for name in self.tops:
                    ds = f.get(name)
                    if not isinstance(ds, h5py.Dataset):
                        have = ", ".join(k for k in f if isinstance(f[k], h5py.Dataset)) or "none"
                        raise self.error(f"{where} has no dataset '{name}' (a top's name is its dataset's; "
                                         f"datasets there: {have})")
                    if ds.ndim < 1:
                        raise self.error(f"{where}: dataset '{name}' is a scalar, not rows")
                    shape = tuple(int(d) for d in ds.shape[1:])
                    if self.row_shapes.setdefault(name, shape) != shape:
                        raise self.error(f"{where}: dataset '{name}' has rows of shape {shape}, the first file's "
                                         f"{self.row_shapes[name]}")
                    counts[name] = int(ds.shape[0])
        except (OSError, KeyError) as e:
            raise self.error(f"cannot read {where}: {e}") from None
        if len(set(counts.values())) > 1:
            raise self.error(f"{where}: datasets have different row counts: "
                             f"{', '.join(f'{k} {v}' for k, v in counts.items())}")
        n = next(iter(counts.values()))
        if n == 0:
            raise self.error(f"{where} has no rows")
        self.rows[path] = n
        return n

    def _load(self) -> None:
        """Caffe's LoadHDF5FileData: enter file_perm[current_file], its rows permuted with shuffle."""
        n = self._file_rows(self.files[self.file_perm[self.current_file]])
        self.data_perm = self.rng.permutation(n) if self.shuffle else np.arange(n)

    def _next(self) -> None:
        """Caffe's Next()."""
        self.current_row += 1
        n = len(self.data_perm)
        if self.current_row == n:
            if len(self.files) > 1:
                self.current_file += 1
                if self.current_file == len(self.files):
                    self.current_file = 0
                    if self.shuffle:
                        self.file_perm = self.rng.permutation(len(self.files))
                self._load()
            self.current_row = 0
            if self.shuffle:
                self.data_perm = self.rng.permutation(len(self.data_perm))

    def draw_batch(self):
        picks = []
        for _ in range(self.batch_size):
            picks.append((self.files[self.file_perm[self.current_file]], int(self.data_perm[self.current_row])))
            self._next()
        return picks

    def get_state(self):
        return {"file_perm": self.file_perm.tolist(), "file": self.current_file, "row": self.current_row,
                "data_perm": self.data_perm.tolist() if self.shuffle else None, "rng": rng_state(self.rng)}

    def set_state(self, state):
        try:
            file_perm = np.asarray(state["file_perm"], np.int64)
            current_file, current_row = int(state["file"]), int(state["row"])
        except (KeyError, TypeError, ValueError) as e:
            raise self.error(f"cannot restore the position from {state!r}: {e}") from None
        if sorted(file_perm.tolist()) != list(range(len(self.files))) or not 0 <= current_file < len(self.files):
            raise self.error(f"cannot restore the position: it is for another list of files than '{self.source}'")
        self.file_perm, self.current_file = file_perm, current_file
        n = self._file_rows(self.files[file_perm[current_file]])
        perm = np.asarray(state["data_perm"], np.int64) if state.get("data_perm") is not None else np.arange(n)
        if len(perm) != n or not 0 <= current_row < n:
            raise self.error(f"cannot restore the position: the rows of '{self.files[file_perm[current_file]]}' "
                             f"changed")
        self.data_perm, self.current_row = perm, current_row
        set_rng_state(self, self.rng, state["rng"])

    # -- worker processes ----------------------------------------------------------------------------------
    def read_batch(self, ticket):
        out = {name: [] for name in self.tops}
        for path, row in ticket:
            arrays = self._arrays(path)
            for name in self.tops:
                out[name].append(arrays[name][row])
        return tuple(torch.from_numpy(np.stack(out[name])) for name in self.tops)

    def _arrays(self, path: str) -> dict:
        """The file's datasets, in memory: the last file read in this process is kept (Caffe holds one too)."""
        pid = os.getpid()
        held = _LAST_FILE.get(pid)
        if held is not None and held[0] == path:
            return held[1]
        _LAST_FILE.clear()
        import h5py
        try:
            with h5py.File(path, "r") as f:
                arrays = {}
                for name in self.tops:
                    a = np.asarray(f[name][()])
                    arrays[name] = a if a.dtype.type in _SHIPPED else a.astype(np.float32)
        except (OSError, KeyError) as e:
            raise NetError(f"{self.where}: cannot read HDF5 file '{path}' (listed in '{self.source}'): {e}") from None
        _LAST_FILE[pid] = (path, arrays)
        return arrays
