"""Read access to the packed HDF5 form of the memo's layout (memo.PACKED_FORMAT), for the reader layers, the
converter's tests and the benchmark.

    f = packed_file(memo.packed_path(root, "training"))   # per-process cached, reopened after fork or rewrite
    gt = f.rows("gt_3d", np.array([17, 4, 17]))           # (3, 21, 3) float32, in the order asked
    crops = f.crops(idx)                                  # list of H x W x 3 uint8 BGR crops
    k = f.camera_k(idx)                                   # (B, 3, 3) by image id idx // 2

Fixed-size datasets (everything but the crops: ~50 MB for RHD's 82k training samples) are read whole on first
use and kept per process: a fancy-indexed HDF5 read costs ~0.2 ms, numpy indexing microseconds. The crops are
read per batch, one fancy-indexed HDF5 read of the sorted unique rows, then reordered. Every row asked for is
checked first: an index outside 0..N-1 or a row with usable = 0 raises NetError naming the sample and the file.
The h5py handle is never pickled and never shared across processes: it is opened on first use in each process
(os.getpid() is checked) and reopened when the file was replaced (inode, size or mtime changed).
Files of older format_versions are still read: f.version says which. Version 2 lacks mask_pixels (only
mask_pixels() needs it); version 1 also has the crops as PNG bytes in crop_image (crops() needs version 2 or later).
"""

from __future__ import annotations

import os

import h5py
import numpy as np

from netdef.errors import NetError

FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
MASK_PIXELS_VERSION = 3     # the first format with mask_pixels


class PackedRHD:
    """One split's packed.h5, opened lazily. Attributes after the first access: n (rows), usable (bool (n,))."""

    def __init__(self, path: str):
        self.path = path
        self._file: h5py.File | None = None
        self._pid: int | None = None
        self._stamp: tuple | None = None
        self.n = 0
        self.usable = np.zeros(0, bool)
        self._version = FORMAT_VERSION
        self._arrays: dict[str, np.ndarray | h5py.Dataset] = {}

    def __getstate__(self):
        return {"path": self.path}

    def __setstate__(self, state):
        self.__init__(state["path"])

    def file(self) -> h5py.File:
        """The open h5py.File for this process (opened or reopened as needed)."""
        try:
            st = os.stat(self.path)
        except OSError:
            raise NetError(f"missing packed file '{self.path}'") from None
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        if self._file is not None and self._pid == os.getpid() and self._stamp == stamp:
            return self._file
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = None   # after fork the parent's handle is dropped, not used
        try:
            f = h5py.File(self.path, "r")
        except OSError as e:
            raise NetError(f"cannot open packed file '{self.path}': {e}") from None
        version = f.attrs.get("format_version")
        if version not in READABLE_VERSIONS:
            f.close()
            raise NetError(f"'{self.path}' has format_version {version!r}, expected {FORMAT_VERSION} "
                           f"(not a packed RHD file, or written by another version: tools/prepare_rhd.py "
                           f"rebuilds it)")
        try:
            usable = f["usable"][()].astype(bool)
        except KeyError:
            f.close()
            raise NetError(f"'{self.path}' has no dataset 'usable' (not a packed RHD file?)") from None
        self._file, self._pid, self._stamp, self._arrays = f, os.getpid(), stamp, {}
        self.usable, self.n, self._version = usable, len(usable), int(version)
        return f

    @property
    def version(self) -> int:
        """The file's format_version (opens it)."""
        self.file()
        return self._version

    def close(self) -> None:
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = None

    def _dataset(self, name: str, f: h5py.File) -> h5py.Dataset | np.ndarray:
        """A vlen dataset (crops) as the h5py dataset, any other one as an array read whole; once per opened file."""
        array = self._arrays.get(name)
        if array is not None:
            return array
        try:
            ds = f[name]
        except KeyError:
            raise NetError(f"'{self.path}' has no dataset '{name}' (not a packed RHD file?)") from None
        array = self._arrays[name] = ds if h5py.check_vlen_dtype(ds.dtype) is not None else ds[()]
        return array

    def check(self, idx: np.ndarray) -> h5py.File:
        """Every sample index in range and usable, else NetError naming the first bad one. Returns the file."""
        f = self.file()
        idx = np.asarray(idx, np.int64)
        out = (idx < 0) | (idx >= self.n)
        if out.any():
            raise NetError(f"sample index {idx[out][0]} is out of range for '{self.path}' "
                           f"(valid 0..{self.n - 1})")
        bad = ~self.usable[idx]
        if bad.any():
            raise NetError(f"sample {idx[bad][0]} is not usable in '{self.path}'")
        return f

    def rows(self, name: str, idx: np.ndarray) -> np.ndarray:
        """Rows of a per-sample dataset for the given sample indices (checked), in the order given."""
        idx = np.asarray(idx, np.int64)
        return _fancy_read(self._dataset(name, self.check(idx)), idx)

    def crops(self, idx: np.ndarray) -> list[np.ndarray]:
        """The H x W x 3 uint8 BGR crops of the given sample indices (checked), in the order given."""
        idx = np.asarray(idx, np.int64)
        f = self.check(idx)
        if self._version < 2:
            raise NetError(f"'{self.path}' has format_version {self.version}: its crops are PNG bytes "
                           f"(crop_image), not pixels")
        pixels = _fancy_read(self._dataset("crop_pixels", f), idx)
        shapes = _fancy_read(self._dataset("crop_shape", f), idx)
        crops = []
        for i, p, (h, w) in zip(idx, pixels, shapes):
            if p.size != 3 * h * w or p.size == 0:
                raise NetError(f"crop of sample {i} in '{self.path}' has {p.size} bytes for {h} x {w} x 3 pixels")
            crops.append(p.reshape(h, w, 3))
        return crops

    def camera_k(self, idx: np.ndarray) -> np.ndarray:
        """(B, 3, 3) K of each sample's image (image id = idx // 2); the samples are checked."""
        idx = np.asarray(idx, np.int64)
        return _fancy_read(self._dataset("camera_k", self.check(idx)), idx // 2)

    def mask_pixels(self) -> np.ndarray:
        """(num_images, 2) int64: each image's left and right hand mask pixel counts (-1 where its mask could not
        be read). NetError for a file of an older format, which lacks them: tools/prepare_rhd.py rebuilds it."""
        f = self.file()
        if self._version < MASK_PIXELS_VERSION:
            raise NetError(f"'{self.path}' has format_version {self._version}, which has no mask pixel counts: "
                           f"run tools/prepare_rhd.py again to rebuild it")
        return self._dataset("mask_pixels", f).astype(np.int64)

    def avg_bone(self) -> np.ndarray:
        return self._dataset("avg_bone", self.file()).copy()

    def index_list(self) -> np.ndarray:
        return self._dataset("index_list", self.file()).astype(np.int64)


def _fancy_read(ds: h5py.Dataset | np.ndarray, idx: np.ndarray) -> np.ndarray:
    if isinstance(ds, np.ndarray):
        return ds[idx]
    # h5py wants strictly increasing indices: read each distinct row once, then expand to the order asked.
    uniq, inverse = np.unique(idx, return_inverse=True)
    return ds[uniq][inverse]


_OPEN: dict[str, PackedRHD] = {}


def packed_file(path: str) -> PackedRHD:
    """The process-wide PackedRHD for `path` (one h5py handle per file and process, shared by all layers)."""
    key = os.path.abspath(path)
    f = _OPEN.get(key)
    if f is None:
        f = _OPEN[key] = PackedRHD(key)
    return f
