"""Caffe's Datum message (caffe.proto), the record of Caffe's LMDB/LevelDB image databases, read and written by
hand with the wire codec (netdef/protowire.py); no layer is registered here.

    message Datum {
      optional int32 channels = 1;  optional int32 height = 2;  optional int32 width = 3;
      optional bytes data = 4;      // C*H*W uint8, channel-major (CVMatToDatum), or an encoded image file
      optional int32 label = 5;
      repeated float float_data = 6;  // used when `data` is empty
      optional bool encoded = 7 [default = false];
    }

`decode_datum(buf, where)` -> (array, label): a (C, H, W) uint8 array from `data`, float32 from `float_data`
(as Caffe's DataTransformer: `data` wins when it is not empty), or, for an `encoded` Datum, the image file in
`data` decoded by cv2.imdecode as Caffe's DecodeDatumToCVMatNative (`is_color=None`: the file's own channels,
flag -1) or DecodeDatumToCVMat (`is_color=True`: 3-channel BGR, `False`: 1-channel gray), then laid out
(C, H, W) as CVMatToDatum does. The label is an int (0 when absent).

`encode_datum(array_or_encoded_bytes, label, encoded=False)` -> bytes, as Caffe's convert_imageset serialises:
a uint8 (C, H, W) (or (H, W)) array -> channels, height, width, data, label, encoded: false (CVMatToDatum sets
`encoded` explicitly, so Caffe's bytes carry it); a float array -> channels, height, width, label, float_data
(one 32-bit field per value, proto2's unpacked repeated float); `encoded=True` with the bytes of an image file
-> data, label, encoded: true (ReadFileToDatum).

    >>> import numpy as np
    >>> buf = encode_datum(np.arange(6, dtype=np.uint8).reshape(1, 2, 3), label=7)
    >>> buf.hex()
    '080110021803220600010203040528073800'
    >>> array, label = decode_datum(buf, "db:key")
    >>> array.shape, array.dtype.name, array[0, 1].tolist(), label
    ((1, 2, 3), 'uint8', [3, 4, 5], 7)
"""

from __future__ import annotations

import numpy as np

from netdef.errors import NetError
from netdef.protowire import I32, LEN, VARINT, WIRE_NAMES, iter_fields, len_field, to_int32, varint_field

__all__ = ["decode_datum", "encode_datum", "read_datum_fields"]

_INT_FIELDS = {1: "channels", 2: "height", 3: "width", 5: "label", 7: "encoded"}


def read_datum_fields(buf, where: str) -> dict:
    """The fields of a serialised Datum as a dict: channels, height, width, label (ints, 0 when absent),
    encoded (bool), data (bytes-like, b"" when absent), float_data (float32 array). Raises NetError naming
    `where` for bytes that are not a Datum."""
    out = {"channels": 0, "height": 0, "width": 0, "label": 0, "encoded": False, "data": b"",
           "float_data": None}
    floats: list = []
    try:
        for f in iter_fields(buf):
            n, wt = f.number, f.wire_type
            if n in _INT_FIELDS:
                if wt != VARINT:
                    raise NetError(f"field {n} ({_INT_FIELDS[n]}) has wire type {WIRE_NAMES[wt]}, "
                                   f"not varint")
                out[_INT_FIELDS[n]] = bool(f.value) if n == 7 else to_int32(f.value)
            elif n == 4:
                if wt != LEN:
                    raise NetError(f"field 4 (data) has wire type {WIRE_NAMES[wt]}, not length-delimited")
                out["data"] = f.value
            elif n == 6:
                if wt == I32:                          # unpacked, as proto2 writes it
                    floats.append(f.value)
                elif wt == LEN:                        # packed, as some writers do; parsers accept both
                    if len(f.value) % 4:
                        raise NetError(f"packed float_data of {len(f.value)} bytes (not a multiple of 4)")
                    floats.append(np.frombuffer(f.value, dtype="<f4"))
                else:
                    raise NetError(f"field 6 (float_data) has wire type {WIRE_NAMES[wt]}, not 32-bit")
            # other field numbers: a forked .proto's extras, skipped as protobuf does
    except NetError as e:
        raise NetError(f"{where}: not a Caffe Datum ({e})") from None
    if floats:
        if all(isinstance(v, int) for v in floats):
            out["float_data"] = np.array(floats, dtype="<u4").view("<f4").astype(np.float32)
        else:
            parts = [np.array([v], dtype="<u4").view("<f4") if isinstance(v, int) else v for v in floats]
            out["float_data"] = np.concatenate(parts).astype(np.float32)
    else:
        out["float_data"] = np.zeros(0, np.float32)
    return out


def decode_datum(buf, where: str, is_color: bool | None = None) -> tuple[np.ndarray, int]:
    """(array, label) of a serialised Datum (module docstring). `where` names the record in errors (say,
    "train_lmdb: key 00000012_a.png"); `is_color` only matters for an encoded Datum (None: native channels,
    True: BGR, False: gray)."""
    d = read_datum_fields(buf, where)
    if d["encoded"]:
        return _decode_image(d["data"], where, is_color), d["label"]
    c, h, w = d["channels"], d["height"], d["width"]
    if min(c, h, w) < 0:
        raise NetError(f"{where}: Datum has a negative size (channels {c}, height {h}, width {w})")
    count = c * h * w
    if len(d["data"]):
        if len(d["data"]) != count:
            raise NetError(f"{where}: Datum data holds {len(d['data'])} byte(s), channels*height*width = "
                           f"{c}*{h}*{w} = {count}")
        return np.frombuffer(d["data"], dtype=np.uint8).reshape(c, h, w).copy(), d["label"]
    floats = d["float_data"]
    if floats.size != count:
        raise NetError(f"{where}: Datum float_data holds {floats.size} value(s), channels*height*width = "
                       f"{c}*{h}*{w} = {count}")
    if count == 0:
        raise NetError(f"{where}: empty Datum (no data, no float_data, no size)")
    return floats.reshape(c, h, w), d["label"]


def _decode_image(data, where: str, is_color: bool | None) -> np.ndarray:
    import cv2
    flag = -1 if is_color is None else (cv2.IMREAD_COLOR if is_color else cv2.IMREAD_GRAYSCALE)
    raw = np.frombuffer(data, dtype=np.uint8)
    img = cv2.imdecode(raw, flag) if raw.size else None
    if img is None:
        raise NetError(f"{where}: could not decode the encoded image in the Datum ({raw.size} bytes)")
    if img.dtype != np.uint8:
        raise NetError(f"{where}: encoded image is {img.dtype}, Caffe's CVMatToDatum takes 8-bit images only")
    if img.ndim == 2:
        return img[None].copy()
    return np.ascontiguousarray(img.transpose(2, 0, 1))


def encode_datum(array_or_encoded_bytes, label: int, encoded: bool = False) -> bytes:
    """A serialised Datum, field for field as Caffe's convert_imageset writes it (module docstring)."""
    label = int(label)
    if encoded:
        data = bytes(array_or_encoded_bytes)
        return len_field(4, data) + varint_field(5, label) + varint_field(7, 1)
    arr = np.asarray(array_or_encoded_bytes)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise NetError(f"a Datum holds a (channels, height, width) array, got shape {arr.shape}")
    c, h, w = (int(s) for s in arr.shape)
    head = varint_field(1, c) + varint_field(2, h) + varint_field(3, w)
    if arr.dtype == np.uint8:
        return head + len_field(4, np.ascontiguousarray(arr).tobytes()) + varint_field(5, label) + \
            varint_field(7, 0)
    if arr.dtype.kind not in "fiu":
        raise NetError(f"a Datum holds uint8 or float data, not {arr.dtype}")
    values = np.ascontiguousarray(arr, dtype="<f4").reshape(-1)
    rec = np.empty(values.size, dtype=[("key", "u1"), ("value", "<f4")])    # 0x35 = field 6, 32-bit
    rec["key"] = 6 << 3 | I32
    rec["value"] = values
    return head + varint_field(5, label) + rec.tobytes()

