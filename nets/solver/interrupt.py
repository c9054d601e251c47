"""Ctrl-C while training: the first SIGINT asks the solver to stop after the current iteration (it then writes
a snapshot); a second one raises KeyboardInterrupt at once. Data worker processes forked meanwhile inherit the
handler and ignore SIGINT (the main process stops them)."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from typing import Callable

__all__ = ["StopRequest"]


class StopRequest:
    """Whether training should stop. `requested`: this process got Ctrl-C; `agreed`: the ranks of a data-parallel
    run agreed to stop (set by the solver's per-iteration collective)."""

    def __init__(self, rank: int = 0, world: int = 1):
        self.rank, self.world = rank, world
        self.requested = False
        self.agreed = False
        self._presses = 0
        self._guarded = False

    def stopping(self) -> bool:
        """Whether to stop now: the Ctrl-C flag itself in one process, the last agreed one across ranks."""
        return self.agreed if self.world > 1 else self.requested

    @contextlib.contextmanager
    def guard(self, iteration: Callable[[], int]):
        """Catch SIGINT while the block runs (main thread only; nested guards are one). `iteration()` is the
        iteration the message names."""
        if self._guarded or threading.current_thread() is not threading.main_thread():
            yield
            return
        pid = os.getpid()
        first = [0.0]
        # torchrun passes the terminal's Ctrl-C on to its workers, which got it already: one press
        echoes = "TORCHELASTIC_RUN_ID" in os.environ

        def handler(signum, frame):
            if os.getpid() != pid:
                return
            if echoes and self._presses and time.monotonic() - first[0] < 1.0:
                return
            first[0] = first[0] or time.monotonic()
            self._presses += 1
            if self._presses > 1:
                signal.signal(signal.SIGINT, signal.default_int_handler)
                raise KeyboardInterrupt
            self.requested = True
            if self.world > 1:    # the ranks agree on the iteration at their next collective
                if self.rank == 0:
                    os.write(2, b"\nCtrl-C: all ranks stop after the next iteration they agree on, then rank 0 "
                                b"writes a snapshot (Ctrl-C again aborts at once)\n")
            else:
                os.write(2, f"\nCtrl-C: stopping after iteration {iteration()}, then writing a snapshot "
                            f"(Ctrl-C again aborts at once)\n".encode())

        previous = signal.signal(signal.SIGINT, handler)
        self._guarded, self.requested, self.agreed = True, False, False
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)
            self._guarded, self._presses = False, 0
