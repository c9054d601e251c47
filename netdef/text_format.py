"""Protobuf text format as Caffe's prototxt files use it, with no schema (and no torch).

Data model:
- ``Message``: an ordered list of ``Field``s (repeated keys allowed), with the location of its opening.
- ``Field``: ``name``, ``value`` (int, float, str, ``Ident`` or ``Message``) and ``loc``.
- ``Ident``: a bare identifier such as ``TRAIN``, ``MAX``, ``true`` (a ``str`` subclass).

``parse(text, filename)`` -> Message; ``write(message)`` -> text; parse(write(parse(t))) == parse(t).
Equality of messages ignores locations.

Over 400 lines as one cohesive thing: the tokenizer, the parser and the writer of one grammar.
"""

from __future__ import annotations

import bisect
import math
import numbers
import os
import re
from dataclasses import dataclass, field
from typing import Iterator, Union

from netdef.errors import NetError, ParseError

__all__ = ["Loc", "Ident", "Field", "Message", "Value", "parse", "parse_file", "write", "ParseError"]


@dataclass(frozen=True)
class Loc:
    """Where a token starts: 1-based line and column."""
    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


class Ident(str):
    """A bare identifier value (enum name, true/false), as opposed to a quoted string."""

    def __repr__(self) -> str:
        return f"Ident({str.__repr__(self)})"


Value = Union[int, float, str, Ident, "Message"]

_NOWHERE = Loc("<none>", 0, 0)


def _values_equal(a, b) -> bool:
    if isinstance(a, Message) or isinstance(b, Message):
        return isinstance(a, Message) and isinstance(b, Message) and a == b
    if type(a) is not type(b):
        return False
    if isinstance(a, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


@dataclass(eq=False)
class Field:
    name: str
    value: Value
    loc: Loc = _NOWHERE

    def __eq__(self, other) -> bool:
        return isinstance(other, Field) and self.name == other.name and _values_equal(self.value, other.value)

    def __repr__(self) -> str:
        return f"Field({self.name!r}, {self.value!r})"


@dataclass(eq=False)
class Message:
    fields: list[Field] = field(default_factory=list)
    loc: Loc = _NOWHERE

    def __eq__(self, other) -> bool:
        return isinstance(other, Message) and self.fields == other.fields

    def __iter__(self) -> Iterator[Field]:
        return iter(self.fields)

    def __len__(self) -> int:
        return len(self.fields)

    def __contains__(self, name: str) -> bool:
        return any(f.name == name for f in self.fields)

    def names(self) -> list[str]:
        """Distinct field names in order of first appearance."""
        return list(dict.fromkeys(f.name for f in self.fields))

    def all(self, name: str) -> list[Field]:
        return [f for f in self.fields if f.name == name]

    def values(self, name: str) -> list[Value]:
        return [f.value for f in self.fields if f.name == name]

    def first(self, name: str) -> Field | None:
        for f in self.fields:
            if f.name == name:
                return f
        return None

    def get(self, name: str, default=None):
        """Value of the last occurrence (protobuf's rule for a singular field), or default."""
        found = self.all(name)
        return found[-1].value if found else default

    def add(self, name: str, value: Value, loc: Loc = _NOWHERE) -> "Message":
        self.fields.append(Field(name, value, loc))
        return self

    def __repr__(self) -> str:
        return f"Message({self.fields!r})"


# ---------------------------------------------------------------- tokenizer

MAX_DEPTH = 100

_TOKEN = re.compile(r"""
    (?P<ws>(?:[ \t\r\n\f\v]|\#[^\n]*)+)
  | (?P<id>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<num>0[xX][0-9A-Fa-f]+
          | (?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?[fF]?
          | [0-9]+[eE][-+]?[0-9]+[fF]?
          | [0-9]+[fF]?)
  | (?P<str>"(?:[^"\\\n]|\\[^\n])*"|'(?:[^'\\\n]|\\[^\n])*')
  | (?P<p>[{}<>\[\]:;,+-])
""", re.VERBOSE | re.ASCII)
_NUM_TAIL = re.compile(r"[A-Za-z0-9_.]+", re.ASCII)
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*", re.ASCII)
_FLOAT_WORDS = {"inf": math.inf, "infinity": math.inf, "nan": math.nan}
_ESC = re.compile(r"\\(?:([0-7]{1,3})|x([0-9A-Fa-f]{1,2})|(.))", re.DOTALL)
_SIMPLE_ESC = {"\\": b"\\", '"': b'"', "'": b"'", "?": b"?", "a": b"\a", "b": b"\b",
               "f": b"\f", "n": b"\n", "r": b"\r", "t": b"\t", "v": b"\v"}

# A token is (kind, text, value, pos); kinds: id num str p eof err (text of err = message).


def _printable(s: str) -> str:
    """s with non-printable characters escaped, so an error message stays on one line."""
    return re.sub(r"[^ -~]", lambda m: m.group() if m.group().isprintable() else ascii(m.group())[1:-1], s)


def _number(text: str):
    """Value of a number token, or an error message (str inside a tuple)."""
    if text[:2] in ("0x", "0X"):
        return int(text, 16)
    if any(c in text for c in ".eEfF"):
        return float(text.rstrip("fF"))
    if len(text) > 1 and text[0] == "0":
        if not text.isdigit() or "8" in text or "9" in text:
            return (f"invalid octal number '{text}'",)
        return int(text, 8)
    try:
        return int(text)
    except ValueError:  # longer than sys.get_int_max_str_digits()
        return (f"integer too long ({len(text)} digits); write it in hex",)


def _unescape(body: str, base: int):
    """Bytes of a string body with C escapes, or (message, pos) on a bad escape."""
    out = []
    last = 0
    for m in _ESC.finditer(body):
        out.append(body[last:m.start()].encode("utf-8", "surrogatepass"))
        octal, hexa, char = m.groups()
        if octal is not None:
            v = int(octal, 8)
            if v > 255:
                return (f"octal escape '\\{octal}' out of range in string", base + m.start())
            out.append(bytes((v,)))
        elif hexa is not None:
            out.append(bytes((int(hexa, 16),)))
        else:
            b = _SIMPLE_ESC.get(char)
            if b is None:
                return (f"invalid escape sequence '\\{_printable(char)}' in string", base + m.start())
            out.append(b)
        last = m.end()
    out.append(body[last:].encode("utf-8", "surrogatepass"))
    return b"".join(out)


def _tokenize(text: str) -> list:
    toks = []
    append = toks.append
    match = _TOKEN.match
    pos, n = 0, len(text)
    while pos < n:
        m = match(text, pos)
        if m is None:
            c = text[pos]
            msg = "unterminated string" if c in "\"'" else f"unexpected character '{_printable(c)}'"
            append(("err", msg, None, pos))
            return toks
        kind = m.lastgroup
        end = m.end()
        if kind == "ws":
            pos = end
            continue
        tok_text = m.group()
        value = None
        if kind == "num":
            tail = _NUM_TAIL.match(text, end)
            if tail:
                append(("err", f"invalid number '{_printable(tok_text + tail.group()[:40])}'", None, pos))
                return toks
            value = _number(tok_text)
            if isinstance(value, tuple):
                append(("err", value[0], None, pos))
                return toks
        elif kind == "str":
            value = tok_text[1:-1]
            if "\\" in value:
                value = _unescape(value, pos + 1)
                if isinstance(value, tuple):
                    append(("err", value[0], None, value[1]))
                    return toks
        append((kind, tok_text, value, pos))
        pos = end
    append(("eof", "", None, n))
    return toks


def _describe(tok) -> str:
    kind, text = tok[0], tok[1]
    if kind == "eof":
        return "end of file"
    if kind == "p":
        return f"'{text}'"
    if kind == "num":
        return f"number {text}"
    if kind == "id":
        return f"identifier {text}"
    shown = _printable(text)
    if len(shown) > 40:
        shown = shown[:36] + "..." + text[0]
    return f"string {shown}"


# ---------------------------------------------------------------- parser

class _Parser:
    def __init__(self, text: str, filename: str):
        self.file = filename
        self.toks = _tokenize(text)
        self.i = 0
        self.line_starts = [0] + [m.end() for m in re.finditer("\n", text)]

    def loc(self, pos: int) -> Loc:
        line = bisect.bisect_right(self.line_starts, pos)
        return Loc(self.file, line, pos - self.line_starts[line - 1] + 1)

    def error(self, pos: int, msg: str):
        raise ParseError(f"{self.loc(pos)}: {msg}")

    def fail(self, tok, expected: str):
        self.error(tok[3], f"expected {expected}, found {_describe(tok)}")

    def peek(self):
        tok = self.toks[self.i]
        if tok[0] == "err":
            self.error(tok[3], tok[1])
        return tok

    def next(self):
        tok = self.peek()
        if tok[0] != "eof":
            self.i += 1
        return tok

    def body(self, msg: Message, close: str | None, name: str, open_pos: int, depth: int) -> None:
        while True:
            tok = self.next()
            kind = tok[0]
            if kind == "id":
                self.field(msg, tok, depth)
                sep = self.peek()
                if sep[0] == "p" and sep[1] in ";,":
                    self.i += 1
            elif kind == "p" and tok[1] == close:
                return
            elif kind == "eof" and close is None:
                return
            elif kind == "p" and tok[1] == "[":
                self.error(tok[3], "expected field name, found '[' (extension names '[...]' are not supported)")
            elif close is None:
                self.fail(tok, "field name or end of file")
            elif kind == "eof" or (kind == "p" and tok[1] in "}>"):
                at = self.loc(open_pos)
                self.fail(tok, f"'{close}' to close '{name}' opened at {at.line}:{at.col}")
            else:
                self.fail(tok, f"field name or '{close}'")

    def message(self, open_tok, name: str, depth: int) -> Message:
        if depth >= MAX_DEPTH:
            self.error(open_tok[3], f"nesting deeper than {MAX_DEPTH}")
        msg = Message([], self.loc(open_tok[3]))
        self.body(msg, "}" if open_tok[1] == "{" else ">", name, open_tok[3], depth + 1)
        return msg

    def field(self, msg: Message, name_tok, depth: int) -> None:
        name = name_tok[1]
        loc = self.loc(name_tok[3])
        tok = self.next()
        if tok[0] == "p" and tok[1] == ":":
            tok = self.next()
            if tok[0] == "p" and tok[1] == "[":
                self.list(msg, name, depth)
                return
        elif not (tok[0] == "p" and tok[1] in "{<"):
            self.fail(tok, f"':' or '{{' after '{name}'")
        if tok[0] == "p" and tok[1] in "{<":
            msg.fields.append(Field(name, self.message(tok, name, depth), loc))
        else:
            msg.fields.append(Field(name, self.scalar(tok, name), loc))

    def list(self, msg: Message, name: str, depth: int) -> None:
        tok = self.next()
        if tok[0] == "p" and tok[1] == "]":
            return
        while True:
            if tok[0] == "p" and tok[1] in "{<":
                value = self.message(tok, name, depth)
            else:
                value = self.scalar(tok, name)
            msg.fields.append(Field(name, value, self.loc(tok[3])))
            tok = self.next()
            if tok[0] == "p" and tok[1] == "]":
                return
            if not (tok[0] == "p" and tok[1] == ","):
                self.fail(tok, f"',' or ']' in list of '{name}'")
            tok = self.next()

    def scalar(self, tok, name: str):
        kind = tok[0]
        if kind == "num":
            return tok[2]
        if kind == "id":
            word = _FLOAT_WORDS.get(tok[1].lower())
            return Ident(tok[1]) if word is None else word
        if kind == "str":
            parts = [tok[2]]
            while self.peek()[0] == "str":
                parts.append(self.next()[2])
            if all(isinstance(p, str) for p in parts):
                return "".join(parts)
            data = b"".join(p if isinstance(p, bytes) else p.encode("utf-8", "surrogatepass") for p in parts)
            try:
                return data.decode("utf-8", "surrogatepass")
            except UnicodeDecodeError:
                self.error(tok[3], "invalid UTF-8 in string (from its escapes)")
        if kind == "p" and tok[1] in "-+":
            nxt = self.next()
            value = None
            if nxt[0] == "num":
                value = nxt[2]
            elif nxt[0] == "id":
                value = _FLOAT_WORDS.get(nxt[1].lower())
            if value is None:
                self.fail(nxt, f"number after '{tok[1]}'")
            return -value if tok[1] == "-" else value
        self.fail(tok, f"value for '{name}'")


def parse(text: str, filename: str = "<string>") -> Message:
    """Parse protobuf text format; raises ParseError ('FILE:LINE:COL: ...') on bad input."""
    parser = _Parser(text, filename)
    msg = Message([], Loc(filename, 1, 1))
    parser.body(msg, None, "", 0, 0)
    return msg


def parse_file(path) -> Message:
    """Parse a UTF-8 file; NetError if it cannot be read, ParseError if it is not valid text format."""
    name = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as e:
        raise NetError(f"cannot read net file '{name}': {e.strerror or e}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise ParseError(f"{name}:{line}:{col}: invalid UTF-8 (byte 0x{data[e.start]:02x})") from None
    return parse(text, name)


# ---------------------------------------------------------------- writer

_NEEDS_ESCAPE = re.compile(r'[\\"\x00-\x1f\x7f-\U0010ffff]')
_WRITE_ESC = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def _escape_char(m) -> str:
    c = m.group()
    e = _WRITE_ESC.get(c)
    if e is not None:
        return e
    if c >= "\x80" and c.isprintable():
        return c
    return "".join(f"\\{b:03o}" for b in c.encode("utf-8", "surrogatepass"))


def _quote(s: str) -> str:
    return '"' + _NEEDS_ESCAPE.sub(_escape_char, s) + '"'


def _format_scalar(v) -> str:
    if isinstance(v, Ident):
        if not _IDENT.fullmatch(v) or v.lower() in _FLOAT_WORDS:
            raise ValueError(f"cannot write {v!r}: not an identifier that reads back as one")
        return str.__str__(v)
    if isinstance(v, str):
        return _quote(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, numbers.Integral):
        i = int(v)
        try:
            return str(i)
        except ValueError:  # too many digits for str(); hex has no limit
            return hex(i)
    if isinstance(v, numbers.Real):
        return repr(float(v))  # 'inf', '-inf', 'nan', '1.0', '1e+16': all read back as float
    raise TypeError(f"cannot write value {v!r} of type {type(v).__name__}")


def _write_fields(msg: Message, out: list, pad: str, indent: str) -> None:
    for f in msg.fields:
        if not _IDENT.fullmatch(f.name):
            raise ValueError(f"cannot write field name {f.name!r}: not an identifier")
        if isinstance(f.value, Message):
            out.append(f"{pad}{f.name} {{\n")
            _write_fields(f.value, out, pad + indent, indent)
            out.append(f"{pad}}}\n")
        else:
            out.append(f"{pad}{f.name}: {_format_scalar(f.value)}\n")


def write(msg: Message, indent: str = "  ") -> str:
    """Text that parses back equal to msg."""
    out: list[str] = []
    _write_fields(msg, out, "", indent)
    return "".join(out)
