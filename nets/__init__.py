"""Nets: Net (build, run), the source stage, the solver, weights, the CLI, the Python NetSpec, drawing.

The net definition (parser, spec, params schema, NetError) lives below, in `netdef`.
"""

from netdef.errors import NetError, ParseError

__all__ = ["NetError", "ParseError", "Net"]


def __getattr__(name):
    # Lazy, so that `import nets.draw` (no torch needed) does not pull in torch.
    if name == "Net":
        from nets.net import Net
        return Net
    raise AttributeError(name)
