"""Text -> spec -> Net. Submodules are imported on demand so that the parser never pulls in torch."""

from nets.errors import NetError, ParseError

__all__ = ["NetError", "ParseError", "Net", "parse", "parse_file"]


def __getattr__(name):
    # Lazy: `import nets.text_format` must not import torch through this package.
    if name == "Net":
        from nets.net import Net
        return Net
    if name in ("parse", "parse_file"):
        from nets import text_format
        return getattr(text_format, name)
    raise AttributeError(name)
