"""The one exception users see: every user-caused error is a NetError.

Its message is a single line that names the place (FILE:LINE:COL, layer name, path).
The CLI prints it without a traceback and exits 2.
"""


class NetError(Exception):
    """A user-caused error: bad prototxt, unknown layer or param, missing blob or file, shape mismatch."""


class ParseError(NetError):
    """Text that is not valid protobuf text format. Message: FILE:LINE:COL: expected ..., found ..."""


def report(error: NetError) -> int:
    """How every command-line tool ends on a user error: `error: <message>` as one line on stderr; returns 2."""
    import sys
    print("error: " + " ".join(str(error).splitlines()), file=sys.stderr)
    return 2
