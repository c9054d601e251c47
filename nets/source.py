"""The source stage: the layers that read data (`is_source`) run ahead of the network.

Index layers (source layers with no bottoms: GenRandIndex, ReadIndexFromFile...) keep state, so they run in the
main process, one batch at a time, in order. Reader layers (source layers fed only by source layers) are pure
functions of the indices, so they run in DataLoader worker processes that decode `prefetch` batches per
worker ahead of the network. With workers = 0 everything runs inline.

Exact resume: index layers run ahead of the network by the prefetched batches, so the stage remembers the index
layers' state after each batch it hands out (`state()`), not the state of the batch drawn last.
"""

from __future__ import annotations

import collections
import os
import weakref
from typing import TYPE_CHECKING

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from layers.base import as_tuple
from nets.errors import NetError

if TYPE_CHECKING:
    from nets.net import Net, Step

__all__ = ["SourceStage", "default_workers"]


def default_workers() -> int:
    """Two decoding processes (one per core on a 2-core machine), fewer on a 1-core one."""
    return min(2, os.cpu_count() or 1)


def _run_steps(steps, modules, blobs: dict) -> dict:
    for step in steps:
        tops = as_tuple(modules[step.key](*[blobs[b] for b in step.bottoms]))
        blobs.update(zip(step.tops, tops))
    return blobs


def _shutdown(loader_iter) -> None:
    shutdown = getattr(loader_iter, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()


class _Readers(Dataset):
    """Runs the reader layers for one batch of index blobs (inside a worker process when workers > 0)."""

    def __init__(self, steps, modules: dict):
        self.steps, self.modules = steps, modules

    def __getitem__(self, index_blobs: dict) -> dict:
        with torch.no_grad():
            return _run_steps(self.steps, self.modules, dict(index_blobs))

    def __len__(self) -> int:   # never used for sampling; the sampler is endless
        return 2 ** 62


class _Draws(Sampler):
    """Endless stream of index blobs, drawn in the main process, in order."""

    def __init__(self, stage: "SourceStage"):
        self.stage = stage

    def __iter__(self):
        while True:
            yield self.stage._draw()


class SourceStage:
    def __init__(self, net: "Net", steps: list["Step"], workers: int | None = None, prefetch: int = 4):
        self.net = net
        # Stateful layers (get_state) and layers without bottoms run in the main process: their order and
        # state must be exact. A stateful layer fed by index layers (CrossValidationRandomChooseIndex) is fine;
        # one fed by a reader would have to run in a worker, where its state would fork.
        produced_by_index: set[str] = set()
        self.index_steps, self.reader_steps = [], []
        for step in steps:
            stateful = hasattr(net.layers[step.key], "get_state")
            if stateful or not step.bottoms:
                late = [b for b in step.bottoms if b not in produced_by_index]
                if late:
                    raise NetError(f"{step.spec.where}: a stateful data layer must be fed by index layers only, "
                                   f"but bottom '{late[0]}' is read in a worker process")
                self.index_steps.append(step)
                produced_by_index.update(step.tops)
            else:
                self.reader_steps.append(step)
        self.index_blobs = sorted(produced_by_index)
        self.workers = default_workers() if workers is None else int(workers)
        self.prefetch = prefetch
        self._iter = None
        self._loader = None
        self._pending_states: collections.deque = collections.deque()
        self._consumed_state: list | None = None

    @property
    def tops(self) -> list[str]:
        return [t for s in self.index_steps + self.reader_steps for t in s.tops]

    # -- index layers (main process) --------------------------------------------------------------------------
    def _index_layers(self):
        return [self.net.layers[s.key] for s in self.index_steps]

    def _draw(self) -> dict:
        with torch.no_grad():
            blobs = _run_steps(self.index_steps, self.net.layers, {})
        self._pending_states.append(self._capture())
        return {k: v.cpu() for k, v in blobs.items()}

    def _capture(self) -> list:
        return [layer.get_state() if hasattr(layer, "get_state") else None for layer in self._index_layers()]

    def state(self) -> list:
        """Index layers' state after the last batch handed to the network (what a snapshot must save)."""
        return self._consumed_state if self._consumed_state is not None else self._capture()

    def set_state(self, state: list) -> None:
        """Restore index layers' state; batches prefetched under the old state are dropped."""
        self.close()
        for layer, s in zip(self._index_layers(), state):
            if s is not None:
                layer.set_state(s)
        self._consumed_state = None

    # -- batches --------------------------------------------------------------------------------------------------
    def next_batch(self) -> dict[str, torch.Tensor]:
        """The next batch of every source blob, as CPU tensors."""
        if self.workers == 0:
            batch = _run_steps(self.reader_steps, self.net.layers, self._draw())
        else:
            if self._iter is None:
                self._start()
            batch = next(self._iter)
        self._consumed_state = self._pending_states.popleft()
        return batch

    def _start(self) -> None:
        readers = _Readers(self.reader_steps, {s.key: self.net.layers[s.key] for s in self.reader_steps})
        self._pending_states.clear()
        self._loader = DataLoader(readers, batch_size=None, sampler=_Draws(self), num_workers=self.workers,
                                  prefetch_factor=self.prefetch, persistent_workers=False,
                                  pin_memory=self.net.device.type == "cuda",
                                  # its own generator: starting workers must not draw from torch's global RNG
                                  # (that would shift Dropout masks and break exact resume)
                                  generator=torch.Generator().manual_seed(0))
        self._iter = iter(self._loader)
        # stop the workers when the stage goes away or at interpreter exit (else exit waits on them)
        self._finalizer = weakref.finalize(self, _shutdown, self._iter)

    def close(self) -> None:
        """Stop the worker processes (they restart on the next batch). Index layers step back to the state
        after the last consumed batch, so the prefetched batches that are dropped are drawn again."""
        if self._pending_states and self._consumed_state is not None:
            for layer, s in zip(self._index_layers(), self._consumed_state):
                if s is not None:
                    layer.set_state(s)
        if self._iter is not None:
            self._finalizer()
        self._iter = self._loader = None
        self._pending_states.clear()
