"""The source stage: the layers that read data (layers.base.SourceLayer) run ahead of the network. The Net that
owns the stage drives it (Net.forward draws each batch); the stage knows only its steps and their layers.

Index layers (stateful source layers, and source layers with no bottoms: GenRandIndex, ReadIndexFromFile...) run
in the main process, one batch at a time, in order. Reader layers (stateless, fed only by source layers) are pure
functions of the indices, so they run in DataLoader worker processes that decode `prefetch` batches per
worker ahead of the network. With workers = 0 everything runs inline.

Two-half layers (Caffe's data layers: layers.base.SourceLayer.draw_batch/read_batch): the layer's step is in both lists. Its
draw half runs with the index layers (its state is theirs: cursor, shuffle order, random transform decisions) and
leaves a ticket among the drawn blobs (under a key that is no blob name); its read half runs with the readers,
from the ticket, in the workers. A stage with no reader step at all (MemoryData alone) runs inline whatever
`workers` says: there is nothing to read ahead.

Compact transfer: a reader with its own `forward_compact` (layers/hand/readers.py) is run through it when no
other reader takes its tops, so batches carry its tops in their stored type (uint8 pixels: a quarter of float32's
bytes through the worker pipes); the Net casts every source blob to its dtype on its device, giving forward()'s
values exactly. The stage applies nets.perf.keep_freed_memory() in the main process and in every worker.

Exact resume: index layers run ahead of the network by the prefetched batches, so the stage remembers the index
layers' state after each batch it hands out (`state()`), not the state of the batch drawn last.

Errors: a NetError of a reader (a missing or corrupt file, a bad index...) reaches the caller of next_batch()
as the same one-line NetError with any number of workers. A worker does not raise it: it returns it as the
batch's data (_Failed), and the main process raises it when that batch is due (an index layer's NetError,
raised in the main process while drawing ahead, likewise waits for its batch's turn). Why not let torch carry it:
torch re-raises a worker's exception as a new one whose message is the worker's whole traceback text
("Caught NetError in DataLoader worker process 0. Original Traceback ..."), and undoing that would mean
parsing torch's text. As data, the error keeps its place in the batch order (batches drawn before it are
handed out first) and the workers keep running: a failed batch counts as consumed, in the index layers'
state too, so the next batch is the same with workers 0 and N. Any other exception in a worker is a bug,
and torch's traceback is what one wants for it.

Workers never outlive the main process: each asks the kernel to SIGKILL it when the main process dies
(nets.perf.die_with_parent), even by SIGKILL or the OOM killer, where torch's own check (every 5 s, between
batches) may never run in a worker blocked on a full pipe.

Signals: workers ignore SIGINT and SIGTERM, which reach them when a terminal, a scheduler or `timeout` signals
the whole process group; the main process owns the stop (nets.solver.interrupt) and the workers' end. A worker
that dies anyway (SIGKILL, the OOM killer) ends the run in one line, a NetError naming torch's reason, wherever
the main process learns of it (in next_batch, or in torch's SIGCHLD handler, which this stage wraps).
"""

from __future__ import annotations

import collections
import functools
import multiprocessing
import os
import signal
import threading
import weakref
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from layers.base import SourceLayer, as_tuple
from netdef.errors import NetError
from nets.perf import die_with_parent, keep_freed_memory

if TYPE_CHECKING:
    from nets.net import Step

__all__ = ["SourceStage", "default_workers"]


def default_workers() -> int:
    """Two decoding processes (one per core on a 2-core machine), fewer on a 1-core one."""
    return min(2, os.cpu_count() or 1)


def _ticket(step) -> tuple:
    """Where a two-half layer's ticket travels among the drawn blobs: a key no blob name (a str) can be."""
    return ("ticket", step.key)


def _run_steps(steps, modules, blobs: dict, compact=frozenset(), half: str = "read") -> dict:
    """Run the steps in order; steps whose key is in `compact` through their layer's forward_compact. Two-half
    layers run their `half`: "draw" (index side: leaves the ticket) or "read" (reader side: from the ticket;
    cast to the default dtype unless compact)."""
    for step in steps:
        layer = modules[step.key]
        if layer.is_split():
            if half == "draw":
                blobs[_ticket(step)] = layer.draw_batch(*[blobs[b] for b in step.bottoms])
                continue
            tops = as_tuple(layer.read_batch(blobs[_ticket(step)]))
            if step.key not in compact:
                tops = tuple(t.to(torch.get_default_dtype()) for t in tops)
        else:
            run = layer.forward_compact if step.key in compact else layer
            tops = as_tuple(run(*[blobs[b] for b in step.bottoms]))
        blobs.update(zip(step.tops, tops))
    return blobs


def _blobs_only(blobs: dict) -> dict:
    """The drawn or read blobs without the tickets."""
    return {k: v for k, v in blobs.items() if isinstance(k, str)}


def _worker_init(worker_id: int, parent_pid: int | None = None, kernel_signal: bool = True) -> None:
    die_with_parent(parent_pid, kernel_signal)
    keep_freed_memory()     # inherited through fork; spawned workers need the call
    # Ctrl-C and SIGTERM sent to the whole process group (a terminal, `kill -TERM -- -PGID`, a scheduler, timeout)
    # reach the workers too; the main process owns the stop (it finishes the iteration, which needs its batch,
    # snapshots and closes the stage). torch's worker set a C handler that dies by SIGTERM unless the main process
    # sent it, and the main process then raised "DataLoader worker ... is killed by signal: Terminated" with a
    # traceback. A Python handler (reset at exec, unlike SIG_IGN) ignores both; a worker that does not stop when
    # the stage closes ends when the main process does (die_with_parent).
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _ignore_signal)


def _ignore_signal(signum, frame) -> None:
    pass


def _worker_init_fn():
    """The workers' init, bound to this process: `parent_pid` when the workers are its direct children (fork
    and spawn; a forkserver is their parent otherwise, and it dies with this process). The kernel's parent-death
    signal follows the forking thread, so it is used when that thread lives as long as the process (the main
    thread; a forkserver forks from its own); workers started from another thread poll their parent instead."""
    method = multiprocessing.get_start_method(allow_none=True) or multiprocessing.get_all_start_methods()[0]
    direct = method in ("fork", "spawn")
    kernel_signal = not direct or threading.current_thread() is threading.main_thread()
    return functools.partial(_worker_init, parent_pid=os.getpid() if direct else None, kernel_signal=kernel_signal)


def _worker_death(error: BaseException) -> str | None:
    """torch's message for a worker process that died, or None when `error` is not torch's error for one. The
    most specific one in the chain: "DataLoader worker (pid 12) is killed by signal: Killed." (from the SIGCHLD
    handler) rather than the "DataLoader worker (pid(s) 12) exited unexpectedly" raised from it."""
    found = None
    while isinstance(error, (RuntimeError, NetError)):
        message = str(error).strip()
        if isinstance(error, RuntimeError) and message.startswith("DataLoader worker (pid"):
            found = message
        elif found is None:
            return None     # another error, whatever its chain holds
        error = error.__cause__
    return found


def _died(message: str) -> NetError:
    return NetError(f"a data worker process died: {message.rstrip('. ')}")


def _one_line_worker_deaths() -> None:
    """torch's SIGCHLD handler (set when a loader starts its workers) raises its RuntimeError about a worker that
    died wherever the main thread is (in a layer's forward, in backward...): wrap it to raise that as a one-line
    NetError instead (a worker killed alone, by the OOM killer or by hand)."""
    if not hasattr(signal, "SIGCHLD") or threading.current_thread() is not threading.main_thread():
        return
    torch_handler = signal.getsignal(signal.SIGCHLD)
    if not callable(torch_handler) or getattr(torch_handler, "one_line", False):
        return

    def one_line(signum, frame):
        try:
            torch_handler(signum, frame)
        except RuntimeError as e:
            died = _worker_death(e)
            if died is None:
                raise
            raise _died(died) from e

    one_line.one_line = True
    signal.signal(signal.SIGCHLD, one_line)


def _shutdown(loader_iter) -> None:
    shutdown = getattr(loader_iter, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()


class _Wire:
    """A worker's reader tops on their way to the main process, as numpy arrays: pickled by value through the
    worker's pipe. Tensors would travel as shared memory, one file descriptor per tensor, each fetched from the
    worker over a socket with a GIL hand-off there: that, not the bytes, held 1 or 2 workers to ~2400 samples/s
    on 2 cores. The DataLoader's pinning thread (CUDA nets) calls pin_memory()."""

    def __init__(self, tops: dict):
        self.tops = {k: v.numpy() if v.dtype in _NUMPY_DTYPES else v for k, v in tops.items()}

    def tensors(self) -> dict:
        return {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in self.tops.items()}

    def pin_memory(self) -> dict:
        return {k: v.pin_memory() for k, v in self.tensors().items()}


_NUMPY_DTYPES = {torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.float16, torch.float32,
                 torch.float64, torch.bool}


def _unchanged(x):
    return x     # the DataLoader's collate: keep the _Wire as it is


class _Failed:
    """A reader's NetError on its way from a worker to the main process, as data (see the module doc). It
    travels as its type and message (a NetError subclass that cannot be rebuilt from its message arrives as a
    NetError with the same message)."""

    def __init__(self, error: NetError):
        self.error = error

    def __reduce__(self):
        return _failed, (type(self.error), str(self.error))


def _failed(kind: type, message: str) -> _Failed:
    try:
        error = kind(message)
    except Exception:
        error = None
    if not isinstance(error, NetError) or str(error) != message:
        error = NetError(message)
    return _Failed(error)


class _Readers(Dataset):
    """Runs the reader layers for one batch of index blobs (inside a worker process when workers > 0)."""

    def __init__(self, steps, modules: dict, compact: frozenset):
        self.steps, self.modules, self.compact = steps, modules, compact

    def __getitem__(self, index_blobs: dict | _Failed) -> _Wire | _Failed:
        if isinstance(index_blobs, _Failed):     # the draw failed in the main process: pass it on
            return index_blobs
        try:
            with torch.no_grad():
                blobs = _run_steps(self.steps, self.modules, dict(index_blobs), self.compact)
        except NetError as e:
            return _Failed(e)
        # only the readers' tops go back: the main process kept the index blobs it drew
        return _Wire({t: blobs[t] for step in self.steps for t in step.tops})

    def __len__(self) -> int:   # never used for sampling; the sampler is endless
        return 2 ** 62


class _Draws(Sampler):
    """Endless stream of index blobs, drawn in the main process, in order. A draw that fails (an index layer's
    NetError) goes on as a _Failed in its place, raised when its batch is due, as with workers = 0."""

    def __init__(self, stage: "SourceStage"):
        self.stage = stage

    def __iter__(self):
        stage = self.stage
        while True:
            try:
                drawn = stage._draw()
            except NetError as e:
                stage._pending_states.append(stage._capture())
                drawn = _Failed(e)
            stage._pending_draws.append(drawn)
            yield drawn


class SourceStage:
    def __init__(self, steps: list["Step"], layers: dict[str, SourceLayer], workers: int | None = None,
                 prefetch: int = 4, pin_memory: bool = False):
        """`steps`: the source steps in the net's order; `layers`: step key -> its layer. `pin_memory`: batches
        from the workers land in pinned memory (CUDA nets)."""
        self.layers = layers
        # Stateful layers and layers without bottoms run in the main process: their order and state must be
        # exact. A stateful layer fed by index layers (CrossValidationRandomChooseIndex) is fine; one fed by a
        # reader would have to run in a worker, where its state would fork.
        # A two-half layer is both: its draw half an index step, its read half a reader step.
        produced_by_index: set[str] = set()
        self.index_steps, self.reader_steps = [], []
        for step in steps:
            split = layers[step.key].is_split()
            if layers[step.key].stateful or not step.bottoms:
                late = [b for b in step.bottoms if b not in produced_by_index]
                if late:
                    raise NetError(f"{step.definition.where}: a stateful data layer must be fed by index layers only, "
                                   f"but bottom '{late[0]}' is read in a worker process")
                self.index_steps.append(step)
                if not split:
                    produced_by_index.update(step.tops)
            if split or not (layers[step.key].stateful or not step.bottoms):
                self.reader_steps.append(step)
        self.index_blobs = sorted(produced_by_index)
        read_by_readers = {b for s in self.reader_steps for b in s.bottoms}
        self.compact = frozenset(s.key for s in self.reader_steps if layers[s.key].has_compact_form()
                                 and not read_by_readers & set(s.tops))
        keep_freed_memory()
        self.workers = default_workers() if workers is None else int(workers)
        self.prefetch = prefetch
        self.pin_memory = pin_memory
        self.rank, self.world = 0, 1     # see shard()
        self._iter = None
        self._loader = None
        self._pending_states: collections.deque = collections.deque()
        self._pending_draws: collections.deque = collections.deque()   # index blobs of batches in the workers
        self._consumed_state: list | None = None

    @property
    def tops(self) -> list[str]:
        return list(dict.fromkeys(t for s in self.index_steps + self.reader_steps for t in s.tops))

    # -- index layers (main process) --------------------------------------------------------------------------
    def _index_layers(self):
        return [self.layers[s.key] for s in self.index_steps]

    def shard(self, rank: int, world: int) -> None:
        """Data-parallel training: every rank runs the index layers `world` times per batch (so their states
        stay identical on all ranks) and reads only draw number `rank`. The global batch is thus what one
        process would read in `world` consecutive batches."""
        self.close()
        self.rank, self.world = int(rank), int(world)

    def _draw(self) -> dict:
        with torch.no_grad():
            for i in range(self.world):
                drawn = _run_steps(self.index_steps, self.layers, {}, half="draw")
                if i == self.rank:
                    blobs = drawn
        self._pending_states.append(self._capture())
        return {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in blobs.items()}

    def _capture(self) -> list:
        return [layer.get_state() for layer in self._index_layers()]

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
        """The next batch of every source blob, as CPU tensors; compact readers' tops in their stored type (see the
        module doc), which the Net casts."""
        if self.workers == 0 or not self.reader_steps:
            try:
                drawn = self._draw()
            except NetError:
                self._consumed_state = self._capture()     # as with workers: the failed draw is consumed
                raise
            # consumed before it is read: a failed batch counts as consumed (as with workers)
            self._consumed_state = self._pending_states.popleft()
            return _blobs_only(_run_steps(self.reader_steps, self.layers, drawn, self.compact))
        if self._iter is None:
            self._start()
        try:
            tops = next(self._iter)
        except RuntimeError as e:
            died = _worker_death(e)
            if died is None:
                raise
            raise _died(died) from e
        batch = self._pending_draws.popleft()
        self._consumed_state = self._pending_states.popleft()
        if isinstance(tops, _Failed):
            raise tops.error
        batch.update(tops.tensors() if isinstance(tops, _Wire) else tops)   # pinned: already tensors
        return _blobs_only(batch)

    def worker_pids(self) -> list[int]:
        """Process ids of the running worker processes (none before the first batch or after close())."""
        workers = getattr(self._iter, "_workers", None) or []   # torch's iterator's multiprocessing.Process list
        return [w.pid for w in workers if w.pid is not None]

    def _start(self) -> None:
        modules = {s.key: self.layers[s.key] for s in self.reader_steps}
        readers = _Readers(self.reader_steps, modules, self.compact)
        self._pending_states.clear()
        self._pending_draws.clear()
        self._loader = DataLoader(readers, batch_size=None, sampler=_Draws(self), num_workers=self.workers,
                                  collate_fn=_unchanged,
                                  prefetch_factor=self.prefetch, persistent_workers=False,
                                  pin_memory=self.pin_memory, worker_init_fn=_worker_init_fn(),
                                  # its own generator: starting workers must not draw from torch's global RNG
                                  # (that would shift Dropout masks and break exact resume)
                                  generator=torch.Generator().manual_seed(0))
        self._iter = iter(self._loader)
        _one_line_worker_deaths()
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
        self._pending_draws.clear()
