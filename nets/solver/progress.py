"""What a training run shows: Caffe's log lines on stdout (rank 0 only) and, on a terminal, a tqdm bar on
stderr that the log lines print above.

Each line carries glog's header as Caffe's do, so tools written for Caffe logs (tools/extra/parse_log.py,
plot_training_log.py) read ours:

    I1130 04:12:03.517210 81234 solver.py] Iteration 200 (9.71 iter/s, 20.6s/200 iters), loss = 0.513

(severity I, month and day, wall time with microseconds, process id, source file) then Caffe's message.
`strip_header` gives the message back.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import sys
import time

__all__ = ["Progress", "fmt", "glog_header", "strip_header"]

_HEADER = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ [^\]\s]+\] ")


def glog_header(source: str = "solver.py", severity: str = "I") -> str:
    now = datetime.datetime.now()
    return f"{severity}{now:%m%d %H:%M:%S.%f} {os.getpid():5d} {source}] "


def strip_header(line: str) -> str:
    """A log line without its glog header."""
    return _HEADER.sub("", line, count=1)


def fmt(x: float) -> str:
    """A number as Caffe's LOG(INFO) << float prints it (6 significant digits)."""
    return f"{x:.6g}"


class Progress:
    def __init__(self, rank: int = 0):
        self.rank = rank
        self._bar = None
        self._since = (time.perf_counter(), 0)     # when and at which iteration the speed was last measured

    def start_timer(self, iteration: int) -> None:
        """Measure the speed from here (Caffe restarts its iteration timer at each Step())."""
        self._since = (time.perf_counter(), iteration)

    def speed(self, iteration: int, display: int) -> str:
        """Caffe's '(per_s iter/s, lapse s/display iters)' since the last call or start_timer()."""
        t0, i0 = self._since
        lapse = time.perf_counter() - t0
        self._since = (time.perf_counter(), iteration)
        return f"({fmt((iteration - i0) / (lapse or 1.0))} iter/s, {fmt(lapse)}s/{display} iters)"

    def log(self, line: str) -> None:
        if self.rank != 0:
            return
        line = glog_header() + line
        if self._bar is not None and not self._bar.disable:
            self._bar.write(line, file=sys.stdout)
            sys.stdout.flush()
        else:
            print(line, flush=True)

    @contextlib.contextmanager
    def bar(self, total: int, initial: int):
        """A progress bar from `initial` to `total` iterations while the block runs (shown on a terminal only)."""
        from tqdm import tqdm
        self._bar = tqdm(total=total, initial=initial, desc="train", file=sys.stderr,
                         disable=not sys.stderr.isatty(), leave=False)
        try:
            yield
        finally:
            self._bar.close()
            self._bar = None

    def advance(self) -> None:
        if self._bar is not None:
            self._bar.update(1)

    def output_lines(self, kind: str, names, values: dict, weights: dict) -> None:
        """Caffe's '    Train net output #i: name = v (* w = wv loss)' lines, one per element."""
        i = 0
        for name in names:
            for v in values[name]:
                w = weights.get(name, 0.0)
                extra = f" (* {fmt(w)} = {fmt(w * v)} loss)" if w else ""
                self.log(f"    {kind} net output #{i}: {name} = {fmt(v)}{extra}")
                i += 1
