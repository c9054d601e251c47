"""The one exception users see: every user-caused error is a NetError.

Its message is a single line that names the place (FILE:LINE:COL, layer name, path).
Every command-line tool runs its work through `run_tool`: a NetError prints that line alone and exits 2,
Ctrl-C prints one line and exits 130; `--debug` adds the traceback.
"""

import sys
import traceback
import warnings

__all__ = ["NetError", "NetWarning", "NetNote", "ParseError", "report", "run_tool", "add_debug_flag"]

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


def run_tool(body, debug: bool = False, interrupted: str = "interrupted by Ctrl-C") -> int:
    """Run a tool's work, `body()` -> exit status: a NetError ends in one line and 2, Ctrl-C (KeyboardInterrupt)
    in `error: <interrupted>` and 130; with `debug` the traceback comes first."""
    warnings.formatwarning = _one_line
    try:
        return body()
    except NetError as e:
        if debug:
            traceback.print_exc()
        return report(e, hint=not debug)
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        print(f"error: {interrupted}", file=sys.stderr)
        return 130
