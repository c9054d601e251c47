"""caffe.proto's BlobProto (a `.binaryproto` file: a mean file, an infogain matrix) decoded as Blob::FromProto
reads it, for the layers that take one (transform_param's mean_file, InfogainLoss's source). Registers no layer.
(nets/caffemodel.py reads BlobProtos inside weights files with byte offsets in its messages; layers may not
import nets.)"""

from __future__ import annotations

import numpy as np

from netdef import protowire as pw

__all__ = ["decode_blobproto"]


def decode_blobproto(buf: bytes) -> tuple[tuple[int, ...], np.ndarray]:
    """(shape, flat values): the legacy num/channels/height/width when any is set, else shape { dim } (packed or
    not); double_data (float64) when present, else data (float32), packed or not. Raises pw.WireError on bytes
    that are not a BlobProto; the caller checks that shape and values agree."""
    legacy: dict[int, int] = {}
    dims: list[int] = []
    floats, doubles = [], []
    for f in pw.iter_fields(buf):
        if f.number in (1, 2, 3, 4) and f.wire_type == pw.VARINT:
            legacy[f.number] = pw.to_int32(f.value)
        elif f.number == 5 and f.wire_type == pw.LEN:
            floats.append(np.array(pw.unpack_fixed32(f.value), "<u4").view("<f4"))
        elif f.number == 5 and f.wire_type == pw.I32:
            floats.append(np.array([f.value], "<u4").view("<f4"))
        elif f.number == 8 and f.wire_type == pw.LEN:
            doubles.append(np.array(pw.unpack_fixed64(f.value), "<u8").view("<f8"))
        elif f.number == 8 and f.wire_type == pw.I64:
            doubles.append(np.array([f.value], "<u8").view("<f8"))
        elif f.number == 7 and f.wire_type == pw.LEN:          # shape { repeated int64 dim (packed or not) }
            for g in pw.iter_fields(buf, f.offset, f.offset + len(f.value)):
                if g.number == 1 and g.wire_type == pw.VARINT:
                    dims.append(pw.to_int64(g.value))
                elif g.number == 1 and g.wire_type == pw.LEN:
                    dims += [pw.to_int64(v) for v in pw.unpack_varints(g.value)]
    shape = tuple(legacy.get(i, 0) for i in (1, 2, 3, 4)) if legacy else tuple(dims)
    if doubles:
        return shape, np.concatenate(doubles)
    return shape, np.concatenate(floats) if floats else np.zeros(0, np.float32)
