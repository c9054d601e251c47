"""What a training run shows: Caffe's log lines on stdout (rank 0 only) and, on a terminal, a tqdm bar on
stderr that the log lines print above."""

from __future__ import annotations

import contextlib
import sys

__all__ = ["Progress", "fmt"]


def fmt(x: float) -> str:
    """A number as Caffe's LOG(INFO) << float prints it (6 significant digits)."""
    return f"{x:.6g}"


class Progress:
    def __init__(self, rank: int = 0):
        self.rank = rank
        self._bar = None

    def log(self, line: str) -> None:
        if self.rank != 0:
            return
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
