"""The protobuf binary wire format, decoded and encoded by hand (no protoc, no generated classes, no numpy).

A message is a run of fields, each a key varint (field_number << 3 | wire_type) and a value:

    wire type 0 VARINT   base-128 varint, 1-10 bytes (int32/int64/uint/bool/enum; negatives take 10 bytes)
    wire type 1 I64      8 bytes little-endian (fixed64, sfixed64, double)
    wire type 2 LEN      a varint length, then that many bytes (string, bytes, nested message, packed repeated)
    wire type 3 SGROUP   a (deprecated) group, up to the matching wire type 4 EGROUP key of the same number
    wire type 5 I32      4 bytes little-endian (fixed32, sfixed32, float)

`iter_fields(buf)` yields one Field(number, wire_type, value, offset) per field: VARINT, I64 and I32 values
as unsigned ints (`to_int64`, `to_float`, `to_double` reinterpret them), LEN values and the inside of
groups as memoryview slices of `buf` (no copy), `offset` the absolute position in `buf` where the value (or
a group's content) starts, so a nested message decodes with `iter_fields(buf, f.offset, f.offset +
len(f.value))` and errors keep pointing into the whole file. A reader picks the fields it knows and lets the
others pass, so messages from a forked .proto (extra fields of any wire type) still read.

Malformed input (a truncated varint or value, a length past the end, wire type 6/7, field number 0, a group
never closed) raises WireError, a NetError carrying the byte offset.

    >>> data = encode([(1, VARINT, 150), (2, LEN, b"hi"), (3, I32, float_bits(1.5))])
    >>> data.hex()
    '089601120268691d0000c03f'
    >>> [(f.number, f.wire_type, bytes(f.value) if f.wire_type == LEN else f.value) for f in iter_fields(data)]
    [(1, 0, 150), (2, 2, b'hi'), (3, 5, 1069547520)]
    >>> to_float(1069547520), unpack_varints(encode_varint(300) + encode_varint(-1)) == [300, 2**64 - 1]
    (1.5, True)
"""

from __future__ import annotations

import struct
from typing import Iterable, Iterator, NamedTuple

from netdef.errors import NetError

__all__ = ["VARINT", "I64", "LEN", "SGROUP", "EGROUP", "I32", "WIRE_NAMES", "Field", "WireError",
           "read_varint", "iter_fields", "unpack_varints", "unpack_fixed32", "unpack_fixed64",
           "to_int32", "to_int64", "to_float", "to_double", "zigzag_decode", "zigzag_encode",
           "float_bits", "double_bits", "encode_varint", "encode_key", "encode_field", "encode",
           "varint_field", "len_field", "string_field", "float_field", "double_field",
           "packed_varints_field", "packed_floats_field", "packed_doubles_field"]

VARINT, I64, LEN, SGROUP, EGROUP, I32 = 0, 1, 2, 3, 4, 5
WIRE_NAMES = {VARINT: "varint", I64: "64-bit", LEN: "length-delimited", SGROUP: "group start",
              EGROUP: "group end", I32: "32-bit"}
MAX_FIELD = (1 << 29) - 1
_MASK64 = (1 << 64) - 1


class WireError(NetError):
    """Bytes that are not a valid protobuf message; `offset` is where in the buffer the problem was found."""

    def __init__(self, message: str, offset: int):
        super().__init__(f"{message} at byte {offset}")
        self.detail = message
        self.offset = offset


class Field(NamedTuple):
    number: int
    wire_type: int
    value: object          # int (VARINT, I64, I32) or memoryview (LEN, SGROUP content)
    offset: int            # absolute offset of the value (of a group's content) in the buffer


# ---- decoding ---------------------------------------------------------------------------------------------

def read_varint(buf, pos: int, end: int | None = None) -> tuple[int, int]:
    """(value, position after it) of the varint at `pos`; at most 10 bytes, the value taken modulo 2**64 as
    protobuf's parsers do."""
    end = len(buf) if end is None else end
    start = pos
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise WireError("truncated varint", start)
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result & _MASK64, pos
        shift += 7
        if shift >= 70:
            raise WireError("varint longer than 10 bytes", start)


def _skip_group(buf, number: int, pos: int, end: int, start: int) -> tuple[int, int]:
    """Skip a group's content from `pos`; (end of content, position after the EGROUP key)."""
    depth = [number]
    while True:
        if pos >= end:
            raise WireError(f"group of field {number} never closed", start)
        key_at = pos
        key, pos = read_varint(buf, pos, end)
        num, wt = key >> 3, key & 7
        if wt == EGROUP:
            if num != depth[-1]:
                raise WireError(f"group end of field {num} inside a group of field {depth[-1]}", key_at)
            depth.pop()
            if not depth:
                return key_at, pos
        elif wt == SGROUP:
            depth.append(num)
        else:
            pos = _skip_value(buf, wt, pos, end, key_at)


def _skip_value(buf, wt: int, pos: int, end: int, key_at: int) -> int:
    if wt == VARINT:
        return read_varint(buf, pos, end)[1]
    if wt in (I64, I32):
        size = 8 if wt == I64 else 4
        if pos + size > end:
            raise WireError(f"truncated {WIRE_NAMES[wt]} value", pos)
        return pos + size
    if wt == LEN:
        n, pos = read_varint(buf, pos, end)
        if pos + n > end:
            raise WireError(f"length {n} runs past the end of the message ({end - pos} bytes left)", pos)
        return pos + n
    raise WireError(f"invalid wire type {wt}", key_at)


def iter_fields(buf, start: int = 0, end: int | None = None) -> Iterator[Field]:
    """Every field of the message in buf[start:end], in order (see the module docstring)."""
    view = buf if isinstance(buf, memoryview) else memoryview(buf)
    end = len(view) if end is None else end
    if end > len(view):
        raise WireError(f"message end {end} past the buffer's {len(view)} bytes", start)
    pos = start
    while pos < end:
        key_at = pos
        key, pos = read_varint(view, pos, end)
        number, wt = key >> 3, key & 7
        if number == 0:
            raise WireError("field number 0", key_at)
        if number > MAX_FIELD:
            raise WireError(f"field number {number} out of range", key_at)
        if wt == VARINT:
            value_at = pos
            value, pos = read_varint(view, pos, end)
            yield Field(number, wt, value, value_at)
        elif wt == I32 or wt == I64:
            size = 4 if wt == I32 else 8
            if pos + size > end:
                raise WireError(f"truncated {WIRE_NAMES[wt]} value of field {number}", pos)
            value = int.from_bytes(view[pos:pos + size], "little")
            yield Field(number, wt, value, pos)
            pos += size
        elif wt == LEN:
            length_at = pos
            n, pos = read_varint(view, pos, end)
            if pos + n > end:
                raise WireError(f"field {number}: length {n} runs past the end of the message "
                                f"({end - pos} bytes left)", length_at)
            yield Field(number, wt, view[pos:pos + n], pos)
            pos += n
        elif wt == SGROUP:
            content_end, after = _skip_group(view, number, pos, end, key_at)
            yield Field(number, wt, view[pos:content_end], pos)
            pos = after
        elif wt == EGROUP:
            raise WireError(f"group end of field {number} without a group start", key_at)
        else:
            raise WireError(f"invalid wire type {wt} (field {number})", key_at)


def unpack_varints(data) -> list[int]:
    """The values of a packed repeated varint field's payload."""
    view = memoryview(data) if not isinstance(data, memoryview) else data
    out = []
    pos, end = 0, len(view)
    while pos < end:
        value, pos = read_varint(view, pos, end)
        out.append(value)
    return out


def unpack_fixed32(data) -> list[int]:
    if len(data) % 4:
        raise WireError(f"packed 32-bit payload of {len(data)} bytes (not a multiple of 4)", 0)
    return list(struct.unpack(f"<{len(data) // 4}I", data))


def unpack_fixed64(data) -> list[int]:
    if len(data) % 8:
        raise WireError(f"packed 64-bit payload of {len(data)} bytes (not a multiple of 8)", 0)
    return list(struct.unpack(f"<{len(data) // 8}Q", data))


def to_int64(value: int) -> int:
    """A varint or fixed64 read as a signed 64-bit int (int64, sfixed64; int32's negatives too)."""
    value &= _MASK64
    return value - (1 << 64) if value >> 63 else value


def to_int32(value: int) -> int:
    """A varint read as int32 (protobuf keeps the low 32 bits)."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >> 31 else value


def to_float(bits: int) -> float:
    return struct.unpack("<f", struct.pack("<I", bits & 0xFFFFFFFF))[0]


def to_double(bits: int) -> float:
    return struct.unpack("<d", struct.pack("<Q", bits & _MASK64))[0]


def zigzag_decode(value: int) -> int:
    """sint32/sint64."""
    return (value >> 1) ^ -(value & 1)


def zigzag_encode(value: int) -> int:
    return (value << 1) ^ (value >> 63) if value < 0 else value << 1


def float_bits(x: float) -> int:
    return struct.unpack("<I", struct.pack("<f", x))[0]


def double_bits(x: float) -> int:
    return struct.unpack("<Q", struct.pack("<d", x))[0]


# ---- encoding ---------------------------------------------------------------------------------------------

def encode_varint(value: int) -> bytes:
    """Base-128 varint; a negative value as its 64-bit two's complement (10 bytes), as protobuf writes int32
    and int64."""
    if value < 0:
        value += 1 << 64
    if not 0 <= value <= _MASK64:
        raise ValueError(f"varint out of range: {value}")
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_key(number: int, wire_type: int) -> bytes:
    if not 1 <= number <= MAX_FIELD:
        raise ValueError(f"field number out of range: {number}")
    return encode_varint(number << 3 | wire_type)


def encode_field(number: int, wire_type: int, value) -> bytes:
    """One field: `value` an int for VARINT/I64/I32 (I64/I32 as unsigned bits, or a negative int), bytes for
    LEN and for a group's content (SGROUP; the EGROUP key is added)."""
    key = encode_key(number, wire_type)
    if wire_type == VARINT:
        return key + encode_varint(value)
    if wire_type == I32:
        return key + (value & 0xFFFFFFFF).to_bytes(4, "little")
    if wire_type == I64:
        return key + (value & _MASK64).to_bytes(8, "little")
    if wire_type == LEN:
        return key + encode_varint(len(value)) + bytes(value)
    if wire_type == SGROUP:
        return key + bytes(value) + encode_key(number, EGROUP)
    raise ValueError(f"cannot encode wire type {wire_type}")


def encode(fields: Iterable[tuple[int, int, object]]) -> bytes:
    """A message from (number, wire_type, value) triples (iter_fields' output encodes back to its input)."""
    return b"".join(encode_field(f[0], f[1], f[2]) for f in fields)


def varint_field(number: int, value: int) -> bytes:
    return encode_field(number, VARINT, int(value))


def len_field(number: int, data) -> bytes:
    return encode_field(number, LEN, data)


def string_field(number: int, text: str) -> bytes:
    return encode_field(number, LEN, text.encode("utf-8"))


def float_field(number: int, x: float) -> bytes:
    return encode_field(number, I32, float_bits(x))


def double_field(number: int, x: float) -> bytes:
    return encode_field(number, I64, double_bits(x))


def packed_varints_field(number: int, values: Iterable[int]) -> bytes:
    return len_field(number, b"".join(encode_varint(int(v)) for v in values))


def packed_floats_field(number: int, values) -> bytes:
    values = list(values)
    return len_field(number, struct.pack(f"<{len(values)}f", *values))


def packed_doubles_field(number: int, values) -> bytes:
    values = list(values)
    return len_field(number, struct.pack(f"<{len(values)}d", *values))
