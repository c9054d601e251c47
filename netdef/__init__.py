"""The net definition: the bottom tier of the house (no torch, no layers).

    text_format   prototxt tokenizer, parser and writer (Message, Field, Ident, Loc)
    spec          Message tree -> NetDef / LayerDef (phase/level/stage rules, V1 upgrade, net-level inputs)
    params        the one param schema (Param, Params, converters, did-you-mean) for layers and the solver
    errors        NetError, the one exception a user's mistake raises

Imports run one way: netdef <- layers <- nets <- tools/benches.
"""

from netdef.errors import NetError, ParseError, report

__all__ = ["NetError", "ParseError", "report"]
