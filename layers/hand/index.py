"""Memo step 1: which samples go into the batch. Index generators (sources without bottoms) and the author's
CrossValidationRandomChooseIndex.

All of them are stateful source layers (layers.base.SourceLayer): they run in the main process and expose
get_state() -> dict of plain python values and set_state(dict), so a training snapshot restores the exact
continuation of the index stream. Their top is a (B, 1) blob of sample indices in the default float dtype, on
the CPU (Caffe passes indices as floats).

Random layers own a numpy Generator (PCG64). Without an explicit `seed` it is seeded from torch's initial seed
(so the solver's random_seed, or torch.manual_seed before the net is built, governs it) mixed with the layer
name (so two layers of one net draw different streams). Building the net does not draw or move a cursor.
"""

from __future__ import annotations

import os
import zlib

import numpy as np
import torch

from layers.base import REQUIRED, Layer, Param, Params, SourceLayer
from layers.hand.rhd import memo
from layers.registry import register_layer
from netdef.errors import NetError


def _rng(layer: Layer, seed: int) -> np.random.Generator:
    if seed >= 0:
        return np.random.Generator(np.random.PCG64(seed))
    entropy = [torch.initial_seed(), zlib.crc32(layer.name.encode("utf-8"))]
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy)))


def _index_top(values: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(values, np.float64).reshape(-1, 1)).to(torch.get_default_dtype())


class _RandomState:
    """get_state/set_state for a layer whose only state is self.rng."""

    def get_state(self) -> dict:
        return {"rng": self.rng.bit_generator.state}

    def set_state(self, state: dict) -> None:
        try:
            self.rng.bit_generator.state = state["rng"]
        except (KeyError, TypeError, ValueError) as e:
            raise self.error(f"cannot restore the random state from {state!r}: {e}") from None


@register_layer("GenRandIndex", aliases=("DeepHandModelGenRandIndex",))
class GenRandIndex(_RandomState, SourceLayer):
    """Random sample indices, uniform over the allowed set (memo step 1, training).

    Allowed set: the integers in [index_lower_bound, index_upper_bound], or, with index_file, the (distinct)
    entries of that usable-index list (restricted to [lb, ub] when either bound is given); minus the indices of
    missing_index_file. Excluded draws are redrawn (the original's rule), so the result is uniform over what is
    allowed. Draws are with replacement, independent across the batch.

    Bottoms: none.  Tops: index (batch_size, 1).
    Params (gen_rand_index_param): index_lower_bound = 1, index_upper_bound = 10000, batch_size = 16,
      missing_index_file = "" (none; the memo's missing_*_new.txt: a count, then the indices),
      rand_generator_option = 0 (accepted for the original's prototxts; the generator is always PCG64),
      index_file = "" (new: a list of usable indices, one a line, e.g. all_train_index.txt),
      seed = -1 (new: < 0 derives it from torch's initial seed and the layer name).
    Differs from the original: seedable and restorable (the original reseeded rand() with time(0) every batch).
    """
    params = Params("gen_rand_index_param", index_lower_bound=Param(int, 1), index_upper_bound=Param(int, 10000),
                    batch_size=Param(int, 16), missing_index_file=Param(str, ""), rand_generator_option=Param(int, 0),
                    index_file=Param(str, ""), seed=Param(int, -1))
    num_bottoms = 0
    stateful = True

    def setup(self, bottom_shapes):
        p = self.p
        lb, ub = p.index_lower_bound, p.index_upper_bound
        if p.batch_size < 1:
            raise self.error(f"batch_size must be positive, got {p.batch_size}")
        if lb < 0 or ub < lb:
            raise self.error(f"need 0 <= index_lower_bound <= index_upper_bound, got [{lb}, {ub}]")
        try:
            self.missing = np.unique(memo.read_missing_list(p.missing_index_file)) if p.missing_index_file \
                else np.zeros(0, np.int64)
            listed = np.unique(memo.read_index_list(p.index_file)) if p.index_file else None
        except NetError as e:
            raise self.error(str(e)) from None
        self.candidates = None
        if listed is not None:
            if p.has("index_lower_bound") or p.has("index_upper_bound"):
                listed = listed[(listed >= lb) & (listed <= ub)]
            self.candidates = np.setdiff1d(listed, self.missing)
            if len(self.candidates) == 0:
                raise self.error(f"no usable index left: '{p.index_file}' has none in range that is not excluded")
        elif np.count_nonzero((self.missing >= lb) & (self.missing <= ub)) == ub - lb + 1:
            raise self.error(f"every index in [{lb}, {ub}] is excluded by '{p.missing_index_file}'")
        self.rng = _rng(self, p.seed)

    def infer_top_shapes(self, bottom_shapes):
        return [(self.p.batch_size, 1)]

    def forward(self):
        n = self.p.batch_size
        if self.candidates is not None:
            return _index_top(self.candidates[self.rng.integers(0, len(self.candidates), n)])
        lb, ub = self.p.index_lower_bound, self.p.index_upper_bound
        out = self.rng.integers(lb, ub + 1, n)
        bad = np.isin(out, self.missing)
        while bad.any():
            out[bad] = self.rng.integers(lb, ub + 1, int(bad.sum()))
            bad = np.isin(out, self.missing)
        return _index_top(out)


class _CursorIndex(SourceLayer):
    """Steps through num positions cyclically; the cursor (the last position given out, -1 before the first)
    is kept in memory, in get_state, and, when current_index_file_path is set, in that text file ("%d\\n",
    rewritten atomically after each batch and read at construction, so a restarted run continues)."""
    num_bottoms = 0
    stateful = True

    def _start_cursor(self, num: int) -> None:
        if self.p.batch_size < 1:
            raise self.error(f"batch_size must be positive, got {self.p.batch_size}")
        if num < 1:
            raise self.error(f"num_of_samples must be positive, got {num}")
        self.num = num
        self.cursor = -1
        path = self.p.current_index_file_path
        if path and os.path.exists(path):
            try:
                self.cursor = int(memo.read_numbers(path, 1, "cursor file", integer=True)[0])
            except NetError as e:
                raise self.error(str(e)) from None

    def _next_positions(self) -> np.ndarray:
        pos = (self.cursor + 1 + np.arange(self.p.batch_size)) % self.num
        self.cursor = int(pos[-1])
        self._save()
        return pos

    def _save(self) -> None:
        path = self.p.current_index_file_path
        if path:
            try:
                memo.atomic_write_bytes(path, memo.format_int(self.cursor).encode("ascii"))
            except OSError as e:
                raise self.error(f"cannot write cursor file '{path}': {e}") from None

    def infer_top_shapes(self, bottom_shapes):
        return [(self.p.batch_size, 1)]

    def get_state(self) -> dict:
        return {"cursor": self.cursor}

    def set_state(self, state: dict) -> None:
        try:
            self.cursor = int(state["cursor"])
        except (KeyError, TypeError, ValueError) as e:
            raise self.error(f"cannot restore the cursor from {state!r}: {e}") from None
        self._save()


@register_layer("GenSequentialIndex")
class GenSequentialIndex(_CursorIndex):
    """The next batch_size indices of start_index .. start_index + num_of_samples - 1, cyclically (memo step 1,
    testing). The cursor file holds the last position given out (-1 or absent: start at start_index), the
    original's format, so its files carry over.

    Bottoms: none.  Tops: index (batch_size, 1).
    Params (gen_sequential_index_param): batch_size = 16, current_index_file_path = "" (none: the cursor lives
      in memory and get_state only), num_of_samples = 1000, start_index = 0.
    Differs from the original: the cursor file is optional and need not exist beforehand; it is written once
    per batch, atomically.
    """
    params = Params("gen_sequential_index_param", batch_size=Param(int, 16), current_index_file_path=Param(str, ""),
                    num_of_samples=Param(int, 1000), start_index=Param(int, 0))

    def setup(self, bottom_shapes):
        if self.p.start_index < 0:
            raise self.error(f"start_index must be >= 0, got {self.p.start_index}")
        self._start_cursor(self.p.num_of_samples)

    def forward(self):
        return _index_top(self.p.start_index + self._next_positions())


@register_layer("ReadIndexFromFile")
class ReadIndexFromFile(_CursorIndex):
    """The next batch_size entries of an index list (one integer a line), cyclically over its first
    num_of_samples entries (memo step 1, e.g. all_evaluation_index.txt). Cursor as for GenSequentialIndex.

    Bottoms: none.  Tops: index (batch_size, 1).
    Params (read_index_from_file_param): index_file_path (required), current_index_file_path = "" (none),
      batch_size = 16, num_of_samples = 0 (0: the list's length).
    Differs from the original: num_of_samples defaults to the list's length (the original: 100) and may not
    exceed it; the list wraps around instead of reading past its end.
    """
    params = Params("read_index_from_file_param", index_file_path=Param(str, REQUIRED),
                    current_index_file_path=Param(str, ""), batch_size=Param(int, 16), num_of_samples=Param(int, 0))

    def setup(self, bottom_shapes):
        try:
            self.index_list = memo.read_index_list(self.p.index_file_path)
        except NetError as e:
            raise self.error(str(e)) from None
        n = len(self.index_list)
        if n == 0:
            raise self.error(f"index list '{self.p.index_file_path}' is empty")
        num = self.p.num_of_samples or n
        if num > n:
            raise self.error(f"num_of_samples {num} exceeds the {n} entries of '{self.p.index_file_path}'")
        self._start_cursor(num)

    def forward(self):
        return _index_top(self.index_list[self._next_positions()])


@register_layer("CrossValidationRandomChooseIndex")
class CrossValidationRandomChooseIndex(_RandomState, SourceLayer):
    """One entry per row, picked uniformly at random: top[b] = bottom[b, c_b], c_b ~ U{0..K-1} independently.
    The author's nets concatenate several GenRandIndex blobs (one per index range) along axis 1 and pick one
    range per sample with this layer.

    Bottoms: indices (B, K) (trailing dims are flattened: K = count / B).  Tops: index (B, 1), same dtype.
    Params (cross_validation_random_choose_index_param, new; the original has none): seed = -1 (< 0: from
      torch's initial seed and the layer name).
    Keeps state like the index layers (get_state/set_state): it must run in the main process, not in a
    reader worker.
    Differs from the original: seeded once instead of srand(time(0)) at every batch (which repeated the same
    choices within one second).
    """
    params = Params("cross_validation_random_choose_index_param", seed=Param(int, -1))
    stateful = True

    def setup(self, bottom_shapes):
        shape = bottom_shapes[0]
        if len(shape) < 2 or int(np.prod(shape[1:])) < 1:
            raise self.error(f"bottom must be (B, K) with K >= 1, got {tuple(shape)}")
        self.rng = _rng(self, self.p.seed)

    def infer_top_shapes(self, bottom_shapes):
        return [(bottom_shapes[0][0], 1)]

    def forward(self, indices):
        rows = indices.reshape(indices.shape[0], -1)
        cols = torch.from_numpy(self.rng.integers(0, rows.shape[1], rows.shape[0])).to(rows.device)
        return rows.gather(1, cols[:, None])
