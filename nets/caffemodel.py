"""Binary Caffe files without protoc or Caffe: `.caffemodel` (a NetParameter) and `.binaryproto` (a BlobProto,
e.g. a mean file), read and written with netdef.protowire. Field numbers are caffe.proto's (BVLC master):

    NetParameter      name=1 (string), layers=2 (V1LayerParameter), layer=100 (LayerParameter)
    LayerParameter    name=1, type=2 (string), bottom=3, top=4, param=6 (ParamSpec), blobs=7 (BlobProto)
    ParamSpec         name=1, lr_mult=3, decay_mult=4
    V1LayerParameter  layer=1 (V0LayerParameter), bottom=2, top=3, name=4, type=5 (enum), blobs=6
    V0LayerParameter  name=1, type=2 (string, e.g. "conv"), blobs=50
    BlobProto         num=1, channels=2, height=3, width=4 (legacy int32 dims), data=5 (float), diff=6,
                      shape=7 (BlobShape), double_data=8, double_diff=9
    BlobShape         dim=1 (int64, packed or not)

Reading takes every form Caffe's upgrade code takes: new `layer` fields, V1 `layers` (the type enum mapped to
type names as UpgradeV1LayerType does) and V0 `layers { layer { } }` (type strings as UpgradeV0LayerType);
repeated numbers packed or not; fields it does not know, of any wire type, are skipped, so files of forked
caffe.protos read. A blob's shape is its BlobShape or, when any of num/channels/height/width is present, the
legacy 4-D (num, channels, height, width), flagged `legacy` (matched as Blob::ShapeEquals does); its values
are double_data when present, else data, as Blob::FromProto takes them. Diffs are read past and dropped.

Writing follows Net::ToProto / Blob<float>::ToProto: one `layer` per layer of the net, in order, with its
name, type, bottoms, tops, `param` entries and every blob (a blob shared through `param { name }` is written
in each layer that uses it, as Caffe does), shape as BlobShape and values as packed float32. Layer-specific
`*_param` blocks are not written (Caffe reads only names and blobs from a weights file). Files are written to
a temporary file and renamed into place.

Errors: a file that is not one (an image, a text prototxt, an archive, random bytes), truncated or corrupt
raises NetError naming the path, and for corruption the byte offset and what was being read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from netdef.errors import NetError
from netdef.protowire import I32, I64, LEN, VARINT, WireError, encode_key, encode_varint, iter_fields, \
    len_field, float_field, string_field, to_float, to_int32, to_int64, unpack_varints, varint_field
from netdef.spec import V1_TYPES

__all__ = ["BlobRecord", "LayerRecord", "ModelRecord", "atomic_write", "V1_ENUM", "V0_TYPES", "read_caffemodel",
           "parse_caffemodel", "write_caffemodel", "net_records", "read_blobproto", "write_blobproto",
           "foreign_kind"]

# V1LayerParameter.LayerType, number -> name (caffe.proto)
V1_ENUM = {
    0: "NONE", 35: "ABSVAL", 1: "ACCURACY", 30: "ARGMAX", 2: "BNLL", 3: "CONCAT", 37: "CONTRASTIVE_LOSS",
    4: "CONVOLUTION", 5: "DATA", 39: "DECONVOLUTION", 6: "DROPOUT", 32: "DUMMY_DATA", 7: "EUCLIDEAN_LOSS",
    25: "ELTWISE", 38: "EXP", 8: "FLATTEN", 9: "HDF5_DATA", 10: "HDF5_OUTPUT", 28: "HINGE_LOSS", 11: "IM2COL",
    12: "IMAGE_DATA", 13: "INFOGAIN_LOSS", 14: "INNER_PRODUCT", 15: "LRN", 29: "MEMORY_DATA",
    16: "MULTINOMIAL_LOGISTIC_LOSS", 34: "MVN", 17: "POOLING", 26: "POWER", 18: "RELU", 19: "SIGMOID",
    27: "SIGMOID_CROSS_ENTROPY_LOSS", 36: "SILENCE", 20: "SOFTMAX", 21: "SOFTMAX_LOSS", 22: "SPLIT",
    33: "SLICE", 23: "TANH", 24: "WINDOW_DATA", 31: "THRESHOLD",
}

# UpgradeV0LayerType: V0 type string -> V1 enum name
V0_TYPES = {
    "accuracy": "ACCURACY", "bnll": "BNLL", "concat": "CONCAT", "conv": "CONVOLUTION", "data": "DATA",
    "dropout": "DROPOUT", "euclidean_loss": "EUCLIDEAN_LOSS", "flatten": "FLATTEN", "hdf5_data": "HDF5_DATA",
    "hdf5_output": "HDF5_OUTPUT", "im2col": "IM2COL", "images": "IMAGE_DATA", "infogain_loss": "INFOGAIN_LOSS",
    "innerproduct": "INNER_PRODUCT", "lrn": "LRN", "multinomial_logistic_loss": "MULTINOMIAL_LOGISTIC_LOSS",
    "pool": "POOLING", "relu": "RELU", "sigmoid": "SIGMOID", "softmax": "SOFTMAX",
    "softmax_loss": "SOFTMAX_LOSS", "split": "SPLIT", "tanh": "TANH", "window_data": "WINDOW_DATA",
}

# first bytes of files people pass by mistake
_MAGICS = [
    (b"\x89HDF\r\n\x1a\n", "an HDF5 file"), (b"\x89PNG\r\n\x1a\n", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"), (b"BM", None), (b"PK\x03\x04", "a ZIP archive (a PyTorch checkpoint or .npz?)"),
    (b"\x1f\x8b", "a gzip file"), (b"\x93NUMPY", "a NumPy .npy file"), (b"BZh", None),
    (b"\x7fELF", "an executable"),
]


@dataclass
class BlobRecord:
    """One BlobProto: its shape, its values (flat float32 or float64), whether the shape came from the legacy
    num/channels/height/width fields, and where it starts in the file (-1 when not read from one)."""
    shape: tuple[int, ...]
    data: np.ndarray
    legacy: bool = False
    offset: int = -1

    @property
    def array(self) -> np.ndarray:
        return self.data.reshape(self.shape)


@dataclass
class LayerRecord:
    """One layer of a weights file: name, type (a type name; V1/V0 enums upgraded), bottoms, tops, param
    entries (name, lr_mult, decay_mult) and blobs. `blobs` may hold None for a blob the file lacks (an HDF5
    file leaves out blobs shared with an earlier layer)."""
    name: str
    type: str = ""
    bottoms: list[str] = field(default_factory=list)
    tops: list[str] = field(default_factory=list)
    blobs: list[BlobRecord | None] = field(default_factory=list)
    params: list[tuple[str, float, float]] = field(default_factory=list)
    offset: int = -1


@dataclass
class ModelRecord:
    """A NetParameter as weights: the net's name, its layers, and the form read ("layer", "V1" or "V0")."""
    name: str = ""
    layers: list[LayerRecord] = field(default_factory=list)
    form: str = "layer"


def foreign_kind(head: bytes) -> str | None:
    """What a file that is not a protobuf message looks like from its first bytes, if recognisable."""
    for magic, kind in _MAGICS:
        if kind and head.startswith(magic):
            return kind
    if head[:2] in (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05"):
        return "a Python pickle"
    return None


def _looks_like_text(head: bytes) -> bool:
    sample = head[:512]
    return bool(sample) and all(32 <= b < 127 or b in (9, 10, 13) for b in sample)


def _hint(data: bytes, expect: str) -> str:
    """What a file that failed to read as a NetParameter probably is."""
    if _looks_like_text(data):
        return " (the file looks like text: a prototxt?)"
    if expect == "model":
        try:
            blob = _Reader(data).blob(0, len(data))
        except NetError:
            blob = None
        if blob is not None and blob.data.size:
            return f" (it reads as one blob of shape {blob.shape}: a .binaryproto, e.g. a mean file?)"
        if data[:1] == b"\x08":
            return " (a solver state? it starts with an integer, as SolverState's iter does)"
    return ""


# ---- reading -----------------------------------------------------------------------------------------------

class _Reader:
    """Decodes a NetParameter or BlobProto from `buf`; `where` is the context stack for error messages."""

    def __init__(self, buf: bytes):
        self.buf = memoryview(buf)
        self.where: list[str] = []
        self.next = ""      # what the top level reads next (a field that fails before it is known)

    def fields(self, start: int, end: int):
        return iter_fields(self.buf, start, end)

    def string(self, f) -> str:
        if f.wire_type != LEN:
            return ""
        return bytes(f.value).decode("utf-8", errors="replace")

    def net(self, start: int, end: int) -> ModelRecord:
        model = ModelRecord()
        new, old, v0 = [], [], False
        self.next = "layer[0]"
        for f in self.fields(start, end):
            if f.number == 1 and f.wire_type == LEN:
                model.name = self.string(f)
            elif f.number == 100 and f.wire_type == LEN:
                self.where.append(f"layer[{len(new)}]")
                new.append(self.layer(f.offset, f.offset + len(f.value)))
                self.where.pop()
                self.next = f"layer[{len(new)}] (after '{new[-1].name}')"
            elif f.number == 2 and f.wire_type == LEN:
                self.where.append(f"layers[{len(old)}]")
                rec, was_v0 = self.v1_layer(f.offset, f.offset + len(f.value))
                old.append(rec)
                v0 = v0 or was_v0
                self.where.pop()
                self.next = f"layers[{len(old)}] (after '{old[-1].name}')"
        if new and old:
            raise NetError("the file has both 'layer' and V1 'layers' fields (Caffe refuses such a NetParameter)")
        if old:
            model.layers = old
            model.form = "V0" if v0 else "V1"
        else:
            model.layers = new
        return model

    def layer(self, start: int, end: int) -> LayerRecord:
        rec = LayerRecord("", offset=start)
        for f in self.fields(start, end):
            if f.wire_type != LEN:
                continue
            if f.number == 1:
                rec.name = self.string(f)
                self.where[-1] = self.where[-1].split(" ")[0] + f" '{rec.name}'"
            elif f.number == 2:
                rec.type = self.string(f)
            elif f.number == 3:
                rec.bottoms.append(self.string(f))
            elif f.number == 4:
                rec.tops.append(self.string(f))
            elif f.number == 6:
                rec.params.append(self.param_spec(f.offset, f.offset + len(f.value)))
            elif f.number == 7:
                rec.blobs.append(self.blob_in_layer(f, len(rec.blobs)))
        return rec

    def v1_layer(self, start: int, end: int) -> tuple[LayerRecord, bool]:
        """A V1 layer, and whether it is a V0 one (its name, type and blobs in an inner `layer`)."""
        rec = LayerRecord("", offset=start)
        v0 = None
        for f in self.fields(start, end):
            if f.number == 1 and f.wire_type == LEN:
                v0 = self.v0_layer(f.offset, f.offset + len(f.value))
            elif f.number == 2 and f.wire_type == LEN:
                rec.bottoms.append(self.string(f))
            elif f.number == 3 and f.wire_type == LEN:
                rec.tops.append(self.string(f))
            elif f.number == 4 and f.wire_type == LEN:
                rec.name = self.string(f)
                self.where[-1] = self.where[-1].split(" ")[0] + f" '{rec.name}'"
            elif f.number == 5 and f.wire_type == VARINT:
                v1 = V1_ENUM.get(to_int32(f.value))
                rec.type = "" if v1 in (None, "NONE") else V1_TYPES.get(v1, v1)
            elif f.number == 6 and f.wire_type == LEN:
                rec.blobs.append(self.blob_in_layer(f, len(rec.blobs)))
            elif f.number == 1001 and f.wire_type == LEN:      # V1's param names
                rec.params.append((self.string(f), 1.0, 1.0))
        if v0 is not None:      # UpgradeV0LayerParameter: name, type and blobs come from the inner layer
            rec.name, rec.type, rec.blobs = v0.name, v0.type, v0.blobs
        return rec, v0 is not None

    def v0_layer(self, start: int, end: int) -> LayerRecord:
        rec = LayerRecord("", offset=start)
        for f in self.fields(start, end):
            if f.wire_type != LEN:
                continue
            if f.number == 1:
                rec.name = self.string(f)
                self.where[-1] = self.where[-1].split(" ")[0] + f" '{rec.name}'"
            elif f.number == 2:
                raw = self.string(f)
                v1 = V0_TYPES.get(raw)
                rec.type = V1_TYPES.get(v1, raw) if v1 else raw
            elif f.number == 50:
                rec.blobs.append(self.blob_in_layer(f, len(rec.blobs)))
        return rec

    def param_spec(self, start: int, end: int) -> tuple[str, float, float]:
        name, lr, decay = "", 1.0, 1.0
        for f in self.fields(start, end):
            if f.number == 1 and f.wire_type == LEN:
                name = self.string(f)
            elif f.number == 3 and f.wire_type == I32:
                lr = to_float(f.value)
            elif f.number == 4 and f.wire_type == I32:
                decay = to_float(f.value)
        return name, lr, decay

    def blob_in_layer(self, f, index: int) -> BlobRecord:
        self.where.append(f"blobs[{index}]")
        rec = self.blob(f.offset, f.offset + len(f.value))
        self.where.pop()
        return rec

    def blob(self, start: int, end: int) -> BlobRecord:
        legacy: dict[int, int] = {}
        dims: list[int] | None = None
        floats = _Values("<f4", 4, I32)
        doubles = _Values("<f8", 8, I64)
        for f in self.fields(start, end):
            n = f.number
            if n in (1, 2, 3, 4) and f.wire_type == VARINT:
                legacy[n] = to_int32(f.value)
            elif n == 5:
                self.where.append("data")
                floats.add(f)
                self.where.pop()
            elif n == 8:
                self.where.append("double_data")
                doubles.add(f)
                self.where.pop()
            elif n == 7 and f.wire_type == LEN:
                self.where.append("shape")
                dims = self.blob_shape(f.offset, f.offset + len(f.value))
                self.where.pop()
        if legacy:
            shape = tuple(legacy.get(k, 0) for k in (1, 2, 3, 4))
            if any(d < 0 for d in shape):
                raise WireError(f"negative legacy blob dimension in {shape}", start)
        else:
            shape = tuple(dims or ())
        self.where.append("double_data" if doubles.count else "data")
        values = doubles.array() if doubles.count else floats.array()
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if values.size != count:
            raise WireError(f"blob of shape {shape} needs {count} value(s), the file has {values.size}", start)
        self.where.pop()
        return BlobRecord(shape, values, legacy=bool(legacy), offset=start)

    def blob_shape(self, start: int, end: int) -> list[int]:
        dims: list[int] = []
        for f in self.fields(start, end):
            if f.number != 1:
                continue
            if f.wire_type == VARINT:
                dims.append(to_int64(f.value))
            elif f.wire_type == LEN:
                try:
                    dims.extend(to_int64(v) for v in unpack_varints(f.value))
                except WireError as e:
                    raise WireError(e.detail + " in packed dims", f.offset + e.offset) from None
        if any(d < 0 for d in dims):
            raise WireError(f"negative blob dimension in {tuple(dims)}", start)
        return dims


class _Values:
    """A repeated float or double field, packed chunks and single values in file order."""

    def __init__(self, dtype: str, size: int, wire: int):
        self.dtype, self.size, self.wire = dtype, size, wire
        self.native = np.dtype(dtype).newbyteorder("=")
        self.pieces: list[np.ndarray] = []
        self.single: list[int] = []
        self.count = 0

    def _flush(self) -> None:
        if self.single:
            bits = np.array(self.single, dtype=np.uint32 if self.size == 4 else np.uint64)
            self.pieces.append(bits.view(self.native))
            self.single = []

    def add(self, f) -> None:
        if f.wire_type == LEN:
            if len(f.value) % self.size:
                raise WireError(f"packed payload of {len(f.value)} bytes is not a multiple of {self.size}",
                                f.offset)
            self._flush()
            self.pieces.append(np.frombuffer(f.value, dtype=self.dtype))
            self.count += len(f.value) // self.size
        elif f.wire_type == self.wire:
            self.single.append(f.value)
            self.count += 1

    def array(self) -> np.ndarray:
        self._flush()
        if not self.pieces:
            return np.zeros(0, dtype=self.native)
        pieces = [p.astype(self.native, copy=False) for p in self.pieces]
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)


def _read_file(path: str, what: str) -> bytes:
    if not os.path.isfile(path):
        raise NetError(f"cannot read {what} '{path}': no such file")
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as e:
        raise NetError(f"cannot read {what} '{path}': {e.strerror or e}") from None


def _parse(data: bytes, path: str, what: str, expect: str, top, lead: str = ""):
    """Run `top(reader)` over the whole buffer, turning wire errors into one NetError line; `lead` starts the
    reason (load_weights: "no HDF5 signature and ")."""
    kind = foreign_kind(data[:16])
    if kind:
        raise NetError(f"cannot read {what} '{path}': {kind}, not a binary Caffe {expect}")
    if not data:
        raise NetError(f"cannot read {what} '{path}': empty file")
    reader = _Reader(data)
    try:
        return top(reader)
    except WireError as e:
        context = " ".join(reader.where) or reader.next
        hint = _hint(data, expect)
        raise NetError(f"cannot read {what} '{path}': {lead}not a valid binary Caffe {expect}: {e.detail} at byte "
                       f"{e.offset}" + (f" while reading {context}" if context else "") + hint) from None
    except NetError as e:
        raise NetError(f"cannot read {what} '{path}': {e}") from None


def parse_caffemodel(data: bytes, path: str = "<bytes>", what: str = "weights", lead: str = "") -> ModelRecord:
    """A NetParameter's weights from its bytes (see the module docstring); errors say `cannot read <what>
    '<path>': <lead>...`."""
    model = _parse(data, path, what, "model", lambda r: r.net(0, len(data)), lead)
    if not model.layers:
        hint = _hint(data, "model")
        raise NetError(f"cannot read {what} '{path}': {lead}not a binary Caffe model: it has no 'layer' or "
                       f"'layers' field{hint}")
    return model


def read_caffemodel(path, what: str = "weights", lead: str = "") -> ModelRecord:
    """Read a `.caffemodel` (a binary NetParameter, any of Caffe's forms)."""
    path = os.fspath(path)
    return parse_caffemodel(_read_file(path, what), path, what, lead)


def read_blobproto(path) -> np.ndarray:
    """A `.binaryproto` file (one BlobProto, e.g. Caffe's mean file) as an array of its shape: (num, channels,
    height, width) for a legacy blob, else its BlobShape; float32, or float64 from double_data."""
    path = os.fspath(path)
    data = _read_file(path, "blob file")
    rec = _parse(data, path, "blob file", "blob (BlobProto)", lambda r: r.blob(0, len(data)))
    return rec.array.copy()


# ---- writing -----------------------------------------------------------------------------------------------

def _blob_pieces(rec: BlobRecord) -> list[bytes]:
    """A BlobProto's body, fields in number order as protobuf serialises them."""
    values = np.asarray(rec.data).reshape(-1)
    shape = tuple(int(d) for d in rec.shape)
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if values.size != count:
        raise NetError(f"blob of shape {shape} has {values.size} value(s)")
    out = []
    if rec.legacy:
        if len(shape) > 4:
            raise NetError(f"a legacy blob has at most 4 axes, not shape {shape}")
        for number, d in zip((1, 2, 3, 4), (1,) * (4 - len(shape)) + shape):
            out.append(varint_field(number, d))
    double = values.dtype == np.float64
    raw = memoryview(np.ascontiguousarray(values, dtype="<f8" if double else "<f4")).cast("B")   # no copy
    if raw and not double:
        out += [encode_key(5, LEN), encode_varint(len(raw)), raw]
    if not rec.legacy:
        dims = b"".join(encode_varint(d) for d in shape)
        shape_msg = len_field(1, dims) if dims else b""
        out.append(len_field(7, shape_msg))
    if raw and double:
        out += [encode_key(8, LEN), encode_varint(len(raw)), raw]
    return out


def _layer_pieces(rec: LayerRecord) -> list[bytes]:
    out = [string_field(1, rec.name)]
    if rec.type:
        out.append(string_field(2, rec.type))
    out += [string_field(3, b) for b in rec.bottoms]
    out += [string_field(4, t) for t in rec.tops]
    for name, lr, decay in rec.params:
        spec = (string_field(1, name) if name else b"") + (float_field(3, lr) if lr != 1.0 else b"") + \
               (float_field(4, decay) if decay != 1.0 else b"")
        out.append(len_field(6, spec))
    for i, blob in enumerate(rec.blobs):
        if blob is None:
            raise NetError(f"layer '{rec.name}' lacks blob {i} (a blob an HDF5 file leaves out because an earlier "
                           f"layer shares it): give the net definition")
        try:
            body = _blob_pieces(blob)
        except NetError as e:
            raise NetError(f"layer '{rec.name}' blob {i}: {e}") from None
        out += [encode_key(7, LEN), encode_varint(sum(len(p) for p in body))] + body
    return out


def atomic_write(path: str, write_temp, what: str) -> None:
    """Write `path` through `write_temp(temp_path)` into `<path>.<pid>.tmp` in the same folder, then rename it into
    place (atomic). A kill never leaves a half file at `path`; it may leave the temporary file, which
    nets.weights.remove_stale_temp_files() clears. OSError -> one-line NetError naming `what` and the path."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        write_temp(tmp)
        os.replace(tmp, path)
    except OSError as e:
        raise NetError(f"cannot write {what} '{path}': {e.strerror or e}") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _atomic_write(path: str, pieces_of, what: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise NetError(f"cannot write {what} '{path}': no such directory '{directory}'")

    def write_temp(tmp):
        with open(tmp, "wb") as fh:
            for piece in pieces_of():
                fh.write(piece)

    atomic_write(path, write_temp, what)


def write_caffemodel(path, layers: list[LayerRecord], name: str = "") -> None:
    """Write a NetParameter with one `layer` per record (atomic: a temporary file, then rename)."""
    path = os.fspath(path)
    bodies = [_layer_pieces(rec) for rec in layers]     # errors before anything is written

    def pieces():
        if name:
            yield string_field(1, name)
        for body in bodies:
            yield encode_key(100, LEN) + encode_varint(sum(len(p) for p in body))
            yield from body

    _atomic_write(path, pieces, "weights")


def write_blobproto(path, array, legacy: bool = False) -> None:
    """Write one BlobProto: shape as BlobShape, values packed float32 (float64 arrays as double_data);
    `legacy` writes num/channels/height/width instead (at most 4 axes, padded in front with ones), as old
    Caffe's compute_image_mean did."""
    path = os.fspath(path)
    arr = np.asarray(array)
    if arr.dtype.kind not in "fiub":
        raise NetError(f"cannot write blob file '{path}': not numeric data ({arr.dtype})")
    arr = arr.astype(np.float64 if arr.dtype == np.float64 else np.float32)
    try:
        body = _blob_pieces(BlobRecord(arr.shape, arr.reshape(-1), legacy=legacy))
    except NetError as e:
        raise NetError(f"cannot write blob file '{path}': {e}") from None
    _atomic_write(path, lambda: iter(body), "blob file")


def net_records(net) -> list[LayerRecord]:
    """Every layer of a Net as Net::ToProto writes it: name, type, bottoms, tops, param entries and all its
    blobs (shared ones in each layer that uses them) as float32."""
    out = []
    for step in net.plan:
        blobs = []
        for t in net.layers[step.key].caffe_blobs():
            value = t.detach().to("cpu").float().numpy()
            blobs.append(BlobRecord(tuple(t.shape), np.ascontiguousarray(value).reshape(-1)))
        params = [(ps.name, ps.lr_mult, ps.decay_mult) for ps in step.definition.param_specs]
        out.append(LayerRecord(step.name, step.definition.type, list(step.bottoms), list(step.tops), blobs,
                               params))
    return out
