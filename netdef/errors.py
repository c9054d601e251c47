"""The one exception users see: every user-caused error is a NetError.

Its message is a single line that names the place (FILE:LINE:COL, layer name, path).
Every command-line tool runs its work through `run_tool`: a NetError prints that line alone and exits 2,
Ctrl-C prints one line and exits 130, SIGTERM (a scheduler, `timeout`, `kill`, a closing terminal) one line and
143; `--debug` adds the traceback.
"""

import os
import signal
import sys
import threading
import traceback
import warnings

__all__ = ["NetError", "NetWarning", "NetNote", "ParseError", "Terminated", "interruption", "report", "run_tool",
           "add_debug_flag"]

DEBUG_HINT = " (run with --debug for the traceback)"


class NetError(Exception):
    """A user-caused error: bad prototxt, unknown layer or param, missing blob or file, shape mismatch."""


class ParseError(NetError):
    """Text that is not valid protobuf text format. Message: FILE:LINE:COL: expected ..., found ..."""


class NetWarning(UserWarning):
    """Something a user should look at that does not stop the run (a duplicate layer name, NaN weights).
    Tools print it as one line, `warning: <message>`."""


class NetNote(UserWarning):
    """Something the run does on purpose that a user may not expect (a param block the layer does not read,
    ignored as Caffe ignores it). Tools print it as one line, `note: <message>`."""


class Terminated(KeyboardInterrupt):
    """SIGTERM while a tool runs, raised in the main thread as Ctrl-C raises KeyboardInterrupt (it is one), so
    that the same cleanup runs (temporary files removed, data workers stopped); run_tool ends it in
    `error: terminated by SIGTERM` and exit status 143 (128 + 15, what the default action gives a shell)."""


def interruption(error: KeyboardInterrupt) -> tuple:
    """What ended a run: ("SIGTERM", 143) for Terminated, ("Ctrl-C", 130) for any other KeyboardInterrupt."""
    if isinstance(error, Terminated):
        return "SIGTERM", 128 + signal.SIGTERM
    return "Ctrl-C", 128 + signal.SIGINT


def _one_line(message, category, filename, lineno, line=None) -> str:
    if issubclass(category, NetWarning):
        return "warning: " + " ".join(str(message).splitlines()) + "\n"
    if issubclass(category, NetNote):
        return "note: " + " ".join(str(message).splitlines()) + "\n"
    return _python_format(message, category, filename, lineno, line)


_python_format = warnings.formatwarning


def report(error: NetError, hint: bool = True) -> int:
    """How every command-line tool ends on a user error: `error: <message>` as one line on stderr; returns 2.
    When the error wraps an unexpected exception (say, in a user's own layer), the line says how to see its
    traceback (`hint`)."""
    cause = error.__cause__
    extra = DEBUG_HINT if hint and cause is not None and not isinstance(cause, NetError) else ""
    print("error: " + " ".join(str(error).splitlines()) + extra, file=sys.stderr)
    return 2


def add_debug_flag(parser) -> None:
    """The --debug flag every tool takes (argparse)."""
    parser.add_argument("--debug", action="store_true", help="on an error, also print the full traceback")


_CTRL_C = "interrupted by Ctrl-C"


def run_tool(body, debug: bool = False, interrupted: str = _CTRL_C, terminated: str | None = None) -> int:
    """Run a tool's work, `body()` -> exit status: a NetError ends in one line and 2, Ctrl-C (KeyboardInterrupt)
    in `error: <interrupted>` and 130, SIGTERM (raised as Terminated while the body runs in the main thread) in
    `error: <terminated>` and 143; with `debug` the traceback comes first. `terminated` defaults to `interrupted`
    with its "interrupted by Ctrl-C" replaced by "terminated by SIGTERM". A handler set inside the body (the
    solver's, which snapshots first) takes SIGTERM over while it is set; processes forked meanwhile get the
    default action back."""
    warnings.formatwarning = _one_line
    if terminated is None:
        terminated = ("terminated by SIGTERM" + interrupted[len(_CTRL_C):] if interrupted.startswith(_CTRL_C)
                      else interrupted)
    try:
        with _sigterm_raises():
            return body()
    except NetError as e:
        if debug:
            traceback.print_exc()
        return report(e, hint=not debug)
    except KeyboardInterrupt as e:
        if debug:
            traceback.print_exc()
        status = interruption(e)[1]
        print(f"error: {terminated if status != 128 + signal.SIGINT else interrupted}", file=sys.stderr)
        return status


class _sigterm_raises:
    """While the block runs, SIGTERM raises Terminated in this process's main thread (outside the main thread,
    where Python cannot set handlers, it changes nothing)."""

    def __enter__(self):
        self.previous = None
        if threading.current_thread() is not threading.main_thread():
            return self
        pid = os.getpid()

        def handler(signum, frame):
            if os.getpid() != pid:     # a child forked without the at-fork reset: die as the default does
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                os.kill(os.getpid(), signal.SIGTERM)
                return
            raise Terminated()

        handler.raises_terminated = True
        _reset_in_forked_children()
        self.previous = signal.signal(signal.SIGTERM, handler)
        return self

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)
        return False


_at_fork_registered = []


def _reset_in_forked_children() -> None:
    """Processes forked while SIGTERM raises Terminated (multiprocessing pools' workers) die of SIGTERM as before:
    Pool.terminate() stops them with it, and a traceback from each worker is not one line."""
    if _at_fork_registered or not hasattr(os, "register_at_fork"):
        return

    def reset():
        try:
            if getattr(signal.getsignal(signal.SIGTERM), "raises_terminated", False):
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
        except ValueError:      # not the main thread
            pass

    os.register_at_fork(after_in_child=reset)
    _at_fork_registered.append(reset)
