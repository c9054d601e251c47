"""Ctrl-C (SIGINT) or SIGTERM while training: the first asks the solver to stop after the current iteration (it
then writes a snapshot); a second one raises KeyboardInterrupt at once (Terminated, netdef.errors, for SIGTERM).
SIGTERM counts as Ctrl-C because batch schedulers and torchrun stop jobs with it. Outside training, run_tool
turns SIGTERM into Terminated; the guard takes it over while training runs and gives it back after. Data worker
processes ignore both signals (the main process stops them): processes forked meanwhile inherit the handler,
which does nothing outside this process, and the source stage's DataLoader workers, whose torch sets its own
SIGTERM handler, ignore them (nets.source)."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time

from netdef.errors import Terminated

__all__ = ["StopRequest", "SIGNALS"]

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """Whether training should stop. `requested`: this process got Ctrl-C; `agreed`: the ranks of a data-parallel
    run agreed to stop (set by the solver's per-iteration collective)."""

    def __init__(self, rank: int = 0, world: int = 1):
        self.rank, self.world = rank, world
        self.requested = False
        self.signal: int | None = None     # the signal that asked to stop (SIGINT or SIGTERM)
        self.agreed = False
        self._presses = 0
        self._guarded = False

    def stopping(self) -> bool:
        """Whether to stop now: the Ctrl-C flag itself in one process, the last agreed one across ranks."""
        return self.agreed if self.world > 1 else self.requested

    @contextlib.contextmanager
    def guard(self):
        """Catch SIGINT and SIGTERM while the block runs (main thread only; nested guards are one)."""
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
                for s in SIGNALS:
                    signal.signal(s, signal.default_int_handler if s == signal.SIGINT else signal.SIG_DFL)
                raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()
            self.requested, self.signal = True, signum
            name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
            if self.world > 1:    # the ranks agree on the iteration at their next collective
                if self.rank == 0:
                    os.write(2, f"\n{name}: all ranks stop after the next iteration they agree on, then rank 0 "
                                f"writes a snapshot ({name} again aborts at once)\n".encode())
            else:
                os.write(2, f"\n{name}: stopping after the current iteration, then writing a snapshot "
                            f"({name} again aborts at once)\n".encode())

        previous = {s: signal.signal(s, handler) for s in SIGNALS}
        self._guarded, self.requested, self.agreed, self.signal = True, False, False, None
        try:
            yield
        finally:
            for s, handler_before in previous.items():
                signal.signal(s, handler_before)
            self._guarded, self._presses = False, 0
