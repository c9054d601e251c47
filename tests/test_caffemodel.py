"""Binary Caffe files: the protobuf wire codec (netdef/protowire.py) on hand-built bytes, .caffemodel files
written here by a hand-written encoder in Caffe's V1, V0 and new forms (legacy blob dims, packed and unpacked
floats, double_data, unknown fields of every wire type) loaded into a Net, our writer's bytes and its
bit-identical round trip, shared blobs, HDF5 <-> caffemodel through tools/convert_weights.py, load_weights by
content, one-line errors with exit status 2 for corrupt, truncated and foreign files, .binaryproto files."""

import doctest
import importlib.util
import os
import struct
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest
import torch

import netdef.protowire as pw
from netdef.errors import NetError
from netdef.protowire import I32, I64, LEN, SGROUP, VARINT, WireError, encode, encode_varint, iter_fields, \
    read_varint, to_int32, to_int64, unpack_varints
from nets.caffemodel import read_blobproto, read_caffemodel, write_blobproto
from nets.cli import main as run_net_main
from nets.net import Net
from nets.weights import LoadReport, load_weights, read_weights_file, save_weights, weights_format

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "tools", "convert_weights.py")
_spec = importlib.util.spec_from_file_location("convert_weights_tool", TOOL)
convert_tool = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(convert_tool)


# ---- an encoder written by hand, independent of netdef.protowire ------------------------------------------

def vint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = b""
    while True:
        low, n = n & 0x7F, n >> 7
        out += bytes([low | (0x80 if n else 0)])
        if not n:
            return out


def key(num: int, wire: int) -> bytes:
    return vint(num << 3 | wire)


def ld(num: int, payload: bytes) -> bytes:
    return key(num, 2) + vint(len(payload)) + payload


def st(num: int, text: str) -> bytes:
    return ld(num, text.encode())


def vf(num: int, n: int) -> bytes:
    return key(num, 0) + vint(n)


def packed_f32(num: int, values) -> bytes:
    return ld(num, struct.pack(f"<{len(values)}f", *values))


def unpacked_f32(num: int, values) -> bytes:
    return b"".join(key(num, 5) + struct.pack("<f", v) for v in values)


def packed_f64(num: int, values) -> bytes:
    return ld(num, struct.pack(f"<{len(values)}d", *values))


def unknown_fields(base: int) -> bytes:
    """One field of every wire type, numbers nobody uses (a fork's additions)."""
    return (vf(base, 2**40) + key(base + 1, 1) + b"\x01" * 8 + ld(base + 2, b"\x08\x01junk") +
            key(base + 3, 3) + vf(1, 7) + ld(2, b"x") + key(base + 3, 4) + key(base + 4, 5) + b"\x02" * 4)


def legacy_blob(dims4, values, data=None) -> bytes:
    n, c, h, w = dims4
    return vf(1, n) + vf(2, c) + vf(3, h) + vf(4, w) + (data if data is not None else packed_f32(5, values))


def shaped_blob(shape, values, packed_dims=True, field=5) -> bytes:
    dims = ld(1, b"".join(vint(d) for d in shape)) if packed_dims else b"".join(vf(1, d) for d in shape)
    data = packed_f64(8, values) if field == 8 else packed_f32(5, values)
    return data + ld(7, dims)


NET = """
    name: "tiny"
    layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 1 dim: 4 dim: 4 } } }
    layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
            convolution_param { num_output: 2 kernel_size: 3 } }
    layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
    layer { name: "ip" type: "InnerProduct" bottom: "conv" top: "ip" inner_product_param { num_output: 3 } }
"""

SHARED = """
    name: "shared"
    layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 4 } } }
    layer { name: "a" type: "InnerProduct" bottom: "data" top: "a" param { name: "w" }
            inner_product_param { num_output: 4 } }
    layer { name: "b" type: "InnerProduct" bottom: "a" top: "b" param { name: "w" }
            inner_product_param { num_output: 4 } }
"""


def make_net(text=NET):
    return Net(textwrap.dedent(text), phase="TEST", device="cpu")


def values(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


@pytest.fixture
def expected():
    rng = np.random.default_rng(1)
    return {"conv": [values(rng, 2, 1, 3, 3), values(rng, 2)], "ip": [values(rng, 3, 8), values(rng, 3)]}


def assert_net_holds(net, expected):
    for name, blobs in expected.items():
        got = net.params[name]
        assert len(got) == len(blobs)
        for t, e in zip(got, blobs):
            assert tuple(t.shape) == e.shape
            np.testing.assert_array_equal(t.detach().numpy(), e)


# ---- the wire codec ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, value", [
    (b"\x00", 0), (b"\x01", 1), (b"\x7f", 127), (b"\x80\x01", 128), (b"\xac\x02", 300),
    (b"\xff\x7f", 16383), (b"\x80\x80\x01", 16384), (b"\x80\x00", 0),             # a padded (non-minimal) zero
    (b"\xff" * 9 + b"\x01", 2**64 - 1), (b"\x80" * 9 + b"\x01", 2**63),
])
def test_varints_decode(raw, value):
    assert read_varint(raw + b"\x55", 0) == (value, len(raw))


def test_varint_signed_views_and_round_trip():
    minus_one = b"\xff" * 9 + b"\x01"                  # int32 -1 as protobuf writes it: 10 bytes
    v, _ = read_varint(minus_one, 0)
    assert to_int32(v) == -1 and to_int64(v) == -1
    assert to_int32(read_varint(vint(-(2**31)), 0)[0]) == -(2**31)
    assert to_int64(read_varint(vint(-(2**63)), 0)[0]) == -(2**63)
    for n in (0, 1, 127, 128, 255, 300, 2**14 - 1, 2**14, 2**31 - 1, 2**32, 2**56, 2**63, 2**64 - 1):
        assert encode_varint(n) == vint(n)
        assert read_varint(encode_varint(n), 0) == (n, len(vint(n)))
    assert encode_varint(-1) == minus_one and len(encode_varint(-(2**31))) == 10
    assert pw.zigzag_decode(pw.zigzag_encode(-3)) == -3 and pw.zigzag_encode(-1) == 1 and pw.zigzag_encode(1) == 2


def test_varint_errors():
    with pytest.raises(WireError, match=r"^truncated varint at byte 2$"):
        read_varint(b"\x00\x00\x80\x80", 2)
    with pytest.raises(WireError, match=r"^varint longer than 10 bytes at byte 0$"):
        read_varint(b"\xff" * 10 + b"\x01", 0)


def test_fields_of_every_wire_type_from_hand_built_bytes():
    data = (vf(1, 150) + key(2, 1) + struct.pack("<d", -2.5) + st(3, "hé") + key(4, 5) + struct.pack("<f", 1.5) +
            key(5, 3) + vf(1, 9) + key(5, 4) + vf(6, 1))
    fields = list(iter_fields(data))
    assert [(f.number, f.wire_type) for f in fields] == [(1, VARINT), (2, I64), (3, LEN), (4, I32), (5, SGROUP),
                                                         (6, VARINT)]
    assert fields[0].value == 150 and fields[0].offset == 1
    assert pw.to_double(fields[1].value) == -2.5 and fields[1].offset == 4
    assert bytes(fields[2].value).decode() == "hé" and fields[2].offset == 14
    assert pw.to_float(fields[3].value) == 1.5
    assert bytes(fields[4].value) == vf(1, 9) and fields[4].offset == data.index(vf(1, 9))
    # the triples encode back to the same bytes
    assert encode((f.number, f.wire_type, bytes(f.value) if f.wire_type in (LEN, SGROUP) else f.value)
                  for f in fields) == data


def test_nested_messages_keep_absolute_offsets():
    inner = vf(1, 5) + st(2, "ab")
    data = st(1, "x") + ld(7, ld(3, inner))
    outer = list(iter_fields(data))[1]
    middle = list(iter_fields(data, outer.offset, outer.offset + len(outer.value)))[0]
    got = list(iter_fields(data, middle.offset, middle.offset + len(middle.value)))
    assert [(f.number, f.offset) for f in got] == [(1, data.index(inner) + 1), (2, data.index(inner) + 4)]
    bad_inner = vf(1, 5) + b"\x10\x80"                  # field 2's varint cut short
    bad = st(1, "x") + ld(7, ld(3, bad_inner))
    start = bad.index(bad_inner)
    with pytest.raises(WireError, match=rf"truncated varint at byte {start + 3}$"):   # offsets into the whole buffer
        list(iter_fields(bad, start, start + len(bad_inner)))


@pytest.mark.parametrize("data, message", [
    (b"\x0e", r"invalid wire type 6 \(field 1\) at byte 0"),
    (vf(1, 1) + b"\x0f", r"invalid wire type 7 \(field 1\) at byte 2"),
    (b"\x00\x01", r"field number 0 at byte 0"),
    (b"\x12\x05abc", r"field 2: length 5 runs past the end of the message \(3 bytes left\) at byte 1"),
    (b"\x0d\x00\x00", r"truncated 32-bit value of field 1 at byte 1"),
    (b"\x09" + b"\x00" * 7, r"truncated 64-bit value of field 1 at byte 1"),
    (b"\x0c", r"group end of field 1 without a group start at byte 0"),
    (b"\x0b\x08\x01", r"group of field 1 never closed at byte 0"),
    (b"\x0b\x14", r"group end of field 2 inside a group of field 1 at byte 1"),
])
def test_malformed_messages(data, message):
    with pytest.raises(WireError, match=message):
        list(iter_fields(data))


def test_packed_helpers_and_encoder():
    assert unpack_varints(vint(1) + vint(300) + vint(2**64 - 1)) == [1, 300, 2**64 - 1]
    assert pw.packed_floats_field(5, [1.0, -2.0]) == packed_f32(5, [1.0, -2.0])
    assert pw.packed_doubles_field(8, [0.1]) == packed_f64(8, [0.1])
    assert pw.packed_varints_field(1, [2, 300]) == ld(1, vint(2) + vint(300))
    assert pw.float_field(3, 0.5) == key(3, 5) + struct.pack("<f", 0.5)
    assert pw.encode_field(4, SGROUP, vf(1, 1)) == key(4, 3) + vf(1, 1) + key(4, 4)
    assert pw.unpack_fixed32(struct.pack("<2I", 1, 2**32 - 1)) == [1, 2**32 - 1]


def test_protowire_needs_neither_numpy_nor_torch_and_its_examples_run():
    code = "import sys, netdef.protowire; print(sorted(m for m in ('numpy', 'torch') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    result = doctest.testmod(pw)
    assert result.attempted >= 3 and result.failed == 0


# ---- reading caffemodels written by hand ------------------------------------------------------------------

def v1_model(expected, with_unknown=True) -> bytes:
    """V1 `layers` (type enum), legacy 4-D dims, unpacked and packed floats, double_data (unpacked, packed),
    unknown fields."""
    cw, cb = expected["conv"]
    iw, ib = expected["ip"]
    unk = unknown_fields if with_unknown else (lambda base: b"")
    conv = (st(4, "conv") + vf(5, 4) + st(2, "data") + st(3, "conv") + unk(900) +
            ld(6, legacy_blob((2, 1, 3, 3), None, unpacked_f32(5, cw.ravel())) + unk(910)) +
            ld(6, legacy_blob((1, 1, 1, 2), None, b"".join(key(8, 1) + struct.pack("<d", v) for v in cb))) +
            key(7, 5) + struct.pack("<f", 1.0))                                               # blobs_lr
    ip = (st(4, "ip") + vf(5, 14) + st(2, "conv") + st(3, "ip") +
          ld(6, legacy_blob((1, 1, 3, 8), None, packed_f32(5, iw.ravel()[:10]) + unpacked_f32(5, iw.ravel()[10:]))) +
          ld(6, legacy_blob((1, 1, 1, 3), None, packed_f64(8, ib.astype(np.float64)))))
    data = st(4, "data") + vf(5, 5) + st(3, "data") + st(3, "label")
    return st(1, "tiny") + unk(1000) + ld(2, data) + ld(2, conv) + unk(1010) + ld(2, ip) + ld(2, st(4, "extra"))


def test_v1_caffemodel_with_legacy_dims_and_double_data_loads_into_a_net(tmp_path, expected):
    path = tmp_path / "v1.caffemodel"
    path.write_bytes(v1_model(expected))
    model = read_caffemodel(path)
    assert model.form == "V1" and model.name == "tiny"
    assert [(r.name, r.type, r.bottoms, r.tops) for r in model.layers] == [
        ("data", "Data", [], ["data", "label"]), ("conv", "Convolution", ["data"], ["conv"]),
        ("ip", "InnerProduct", ["conv"], ["ip"]), ("extra", "", [], [])]
    assert model.layers[1].blobs[1].data.dtype == np.float64          # unpacked double_data
    ip_blobs = model.layers[2].blobs
    assert [(b.shape, b.legacy, b.data.dtype) for b in ip_blobs] == [((1, 1, 3, 8), True, np.float32),
                                                                    ((1, 1, 1, 3), True, np.float64)]
    net = make_net()
    report = load_weights(net, path)
    assert report == LoadReport(str(path), loaded=["conv", "ip"], ignored=["extra"])   # 'data' is the net's Input
    assert_net_holds(net, expected)


def test_new_form_with_blob_shapes_and_a_v0_model(tmp_path, expected):
    cw, cb = expected["conv"]
    iw, ib = expected["ip"]
    conv = (st(1, "conv") + st(2, "Convolution") + st(3, "data") + st(4, "conv") + unknown_fields(500) +
            ld(7, shaped_blob(cw.shape, cw.ravel(), packed_dims=False)) + ld(7, shaped_blob(cb.shape, cb)) +
            ld(106, vf(1, 2)))                                       # convolution_param, not read
    ip = (st(1, "ip") + st(2, "InnerProduct") + ld(7, shaped_blob(iw.shape, iw.ravel().astype(np.float64), field=8)) +
          ld(7, legacy_blob((1, 1, 1, 3), ib)))          # upgraded files keep legacy dims in the new form
    path = tmp_path / "new.caffemodel"
    path.write_bytes(unknown_fields(300) + ld(100, conv) + ld(100, ip) + st(1, "tiny"))
    net = make_net()
    assert load_weights(net, path) == LoadReport(str(path), loaded=["conv", "ip"])
    assert_net_holds(net, expected)
    assert read_caffemodel(path).form == "layer"

    # V0: layers { layer { name type blobs=50 } bottom top }, type strings as UpgradeV0LayerType
    def v0(name, typ, blobs, bottom, top):
        inner = st(1, name) + st(2, typ) + b"".join(ld(50, b) for b in blobs)
        return ld(2, ld(1, inner) + st(2, bottom) + st(3, top))
    path = tmp_path / "v0.caffemodel"
    path.write_bytes(v0("conv", "conv", [legacy_blob((2, 1, 3, 3), cw.ravel()), legacy_blob((1, 1, 1, 2), cb)],
                        "data", "conv") +
                     v0("ip", "innerproduct", [legacy_blob((1, 1, 3, 8), iw.ravel()), legacy_blob((1, 1, 1, 3), ib)],
                        "conv", "ip"))
    model = read_caffemodel(path)
    assert model.form == "V0" and [(r.name, r.type, r.bottoms) for r in model.layers] == [
        ("conv", "Convolution", ["data"]), ("ip", "InnerProduct", ["conv"])]
    net = make_net()
    load_weights(net, path)
    assert_net_holds(net, expected)


def test_shape_and_count_mismatches_leave_the_net_unchanged(tmp_path, expected):
    net = make_net()
    before = {n: [t.detach().clone() for t in b] for n, b in net.params.items()}
    cw, cb = expected["conv"]
    iw, ib = expected["ip"]
    good_conv = ld(100, st(1, "conv") + ld(7, shaped_blob(cw.shape, cw.ravel())) + ld(7, shaped_blob(cb.shape, cb)))
    cases = [
        # legacy dims compare as Blob::ShapeEquals: (1, 1, 8, 3) is not the net's (3, 8)
        (ld(100, st(1, "ip") + ld(7, legacy_blob((1, 1, 8, 3), iw.ravel())) + ld(7, legacy_blob((1, 1, 1, 3), ib))),
         r"layer 'ip' blob 0: file has shape \(1, 1, 8, 3\) \(legacy num, channels, height, width\), "
         r"net has \(3, 8\)$"),
        (ld(100, st(1, "ip") + ld(7, shaped_blob((8, 3), iw.ravel())) + ld(7, shaped_blob((3,), ib))),
         r"layer 'ip' blob 0: file has shape \(8, 3\), net has \(3, 8\)$"),
        (ld(100, st(1, "ip") + ld(7, shaped_blob((3, 8), iw.ravel()))),
         r"layer 'ip': file has 1 blob\(s\), net has 2$"),
    ]
    for layer, message in cases:
        path = tmp_path / "bad.caffemodel"
        path.write_bytes(good_conv + layer)
        with pytest.raises(NetError, match=rf"^{path}: " + message):
            load_weights(net, path)
        for name, blobs in net.params.items():
            assert all(torch.equal(t, b) for t, b in zip(blobs, before[name]))
    # too few values for the shape: found while reading, with the place
    short_blob = shaped_blob((3, 8), iw.ravel()[:23])
    path.write_bytes(good_conv + ld(100, st(1, "ip") + ld(7, short_blob)))
    offset = path.read_bytes().index(short_blob)
    with pytest.raises(NetError) as e:
        load_weights(net, path)
    assert str(e.value) == (f"cannot read weights '{path}': no HDF5 signature and not a valid binary Caffe model: "
                            f"blob of shape (3, 8) needs 24 value(s), the file has 23 at byte {offset} while "
                            f"reading layer[1] 'ip' blobs[0] data")


# ---- writing ----------------------------------------------------------------------------------------------

def test_writer_bytes_are_caffes_and_load_back_bit_identical(tmp_path):
    net = make_net("""
        name: "one"
        layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 } } }
        layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" param { lr_mult: 1 } param { lr_mult: 2 }
                inner_product_param { num_output: 2 } }
    """)
    w, b = (t.detach().numpy() for t in net.params["ip"])
    path = tmp_path / "one.caffemodel"
    save_weights(net, path)
    blob = lambda a: ld(7, packed_f32(5, a.ravel()) + ld(7, ld(1, b"".join(vint(d) for d in a.shape))))
    assert path.read_bytes() == (st(1, "one") + ld(100, st(1, "data") + st(2, "Input") + st(4, "data")) +
                                 ld(100, st(1, "ip") + st(2, "InnerProduct") + st(3, "data") + st(4, "ip") +
                                     ld(6, b"") + ld(6, key(3, 5) + struct.pack("<f", 2.0)) + blob(w) + blob(b)))
    assert weights_format(path) == "caffemodel"


def test_round_trip_through_our_writer_is_bit_identical(tmp_path):
    net = make_net()
    with torch.no_grad():
        for blobs in net.params.values():
            for t in blobs:
                t.copy_(torch.randn(t.shape) * 1e-3 + torch.tensor(np.float32(np.pi)))
    path = tmp_path / "w.caffemodel"
    save_weights(net, path)
    torch.manual_seed(5)
    other = make_net()
    assert not torch.equal(other.params["ip"][0], net.params["ip"][0])
    assert load_weights(other, path) == LoadReport(str(path), loaded=["conv", "ip"])
    for name, blobs in net.params.items():
        for a, b in zip(blobs, other.params[name]):
            assert a.detach().numpy().tobytes() == b.detach().numpy().tobytes()
    again = tmp_path / "again.caffemodel"
    save_weights(other, again)
    assert again.read_bytes() == path.read_bytes()
    model = read_caffemodel(path)
    assert [(r.name, r.type, r.bottoms, r.tops, [b.shape for b in r.blobs]) for r in model.layers] == [
        ("data", "Input", [], ["data"], []), ("conv", "Convolution", ["data"], ["conv"], [(2, 1, 3, 3), (2,)]),
        ("relu", "ReLU", ["conv"], ["conv"], []), ("ip", "InnerProduct", ["conv"], ["ip"], [(3, 8), (3,)])]
    assert sorted(os.listdir(tmp_path)) == ["again.caffemodel", "w.caffemodel"]    # no temporary file left


def test_shared_blobs_are_written_in_every_layer_as_caffe_does(tmp_path):
    net = make_net(SHARED)
    assert net.params["b"][0] is net.params["a"][0]
    path = tmp_path / "s.caffemodel"
    save_weights(net, path)
    model = read_caffemodel(path)
    a, b = model.layers[1], model.layers[2]
    assert len(a.blobs) == len(b.blobs) == 2 and a.params == b.params == [("w", 1.0, 1.0)]
    np.testing.assert_array_equal(a.blobs[0].array, b.blobs[0].array)
    fresh = make_net(SHARED)
    load_weights(fresh, path)
    assert fresh.params["b"][0] is fresh.params["a"][0]
    for name in ("a", "b"):
        for x, y in zip(net.params[name], fresh.params[name]):
            assert torch.equal(x, y)


# ---- HDF5 <-> caffemodel, by content --------------------------------------------------------------------

def test_load_weights_goes_by_content_not_name(tmp_path, expected):
    net = make_net()
    disguised = tmp_path / "really_binary.h5"
    disguised.write_bytes(v1_model(expected, with_unknown=False))
    load_weights(net, disguised)
    assert_net_holds(net, expected)
    other = tmp_path / "really_hdf5.caffemodel"
    save_weights(net, other, format="hdf5")
    assert other.read_bytes()[:8] == b"\x89HDF\r\n\x1a\n" and weights_format(other) == "hdf5"
    fresh = make_net()
    load_weights(fresh, other)
    assert_net_holds(fresh, expected)


def test_convert_tool_round_trip(tmp_path, expected):
    src = tmp_path / "v1.caffemodel"
    src.write_bytes(v1_model(expected))
    h5 = tmp_path / "w.h5"
    back = tmp_path / "back.caffemodel"
    run = lambda *a: subprocess.run([sys.executable, TOOL, *map(str, a)], capture_output=True, text=True, cwd=ROOT)
    proc = run(src, h5)
    assert proc.returncode == 0, proc.stderr
    assert "wrote" in proc.stdout and "legacy 4-D blob shapes" in proc.stderr
    with h5py.File(h5, "r") as f:
        np.testing.assert_array_equal(f["data/ip/0"][()], expected["ip"][0].reshape(1, 1, 3, 8))
        assert f["data/ip/1"].dtype == np.float64            # double_data kept
        assert len(f["data/data"]) == 0
    proc = run(h5, back)
    assert proc.returncode == 0, proc.stderr
    first, second = read_weights_file(src), read_weights_file(back)
    assert sorted(r.name for r in first.layers) == [r.name for r in second.layers]     # HDF5: alphabetical
    by_name = {r.name: r for r in second.layers}
    for rec in first.layers:
        for x, y in zip(rec.blobs, by_name[rec.name].blobs):
            assert x.array.shape == y.array.shape and x.array.tobytes() == y.array.tobytes()
    # through a net: the net's shapes, types and order
    net_file = tmp_path / "net.prototxt"
    net_file.write_text(textwrap.dedent(NET))
    h5_net = tmp_path / "net.h5"
    assert convert_tool.main([str(src), str(h5_net), "--net", str(net_file)]) == 0
    with h5py.File(h5_net, "r") as f:
        assert f["data/ip/0"].shape == (3, 8) and f["data/ip/1"].dtype == np.float32
    cm = tmp_path / "net.caffemodel"
    assert convert_tool.main([str(h5_net), str(cm), "--net", str(net_file)]) == 0
    net = make_net()
    load_weights(net, cm)
    assert_net_holds(net, expected)


def test_convert_tool_needs_the_net_for_shared_blobs_left_out_of_hdf5(tmp_path, capsys):
    net = make_net(SHARED)
    h5 = tmp_path / "s.h5"
    save_weights(net, h5)                               # 'b' has only its bias: blob 0 is 'a''s
    out = tmp_path / "s.caffemodel"
    assert convert_tool.main([str(h5), str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: layer 'b' lacks blob 0 (a blob an HDF5 file leaves out because an earlier layer "
                   f"shares it): give the net definition"]
    assert not out.exists()
    net_file = tmp_path / "shared.prototxt"
    net_file.write_text(textwrap.dedent(SHARED))
    assert convert_tool.main([str(h5), str(out), "--net", str(net_file)]) == 0
    model = read_caffemodel(out)
    np.testing.assert_array_equal(model.layers[2].blobs[0].array, net.params["a"][0].detach().numpy())


def test_corrupt_truncated_and_foreign_files_give_one_line_and_exit_2(tmp_path, capsys, expected):
    good = tmp_path / "good.caffemodel"
    save_weights(make_net(), good)
    raw = good.read_bytes()
    files = {
        "cut.caffemodel": (raw[:-7], r"no HDF5 signature and not a valid binary Caffe model: field 100: length \d+ "
                                     r"runs past the end of the message \(\d+ bytes left\) at byte \d+ while reading "
                                     r"layer\[3\] \(after 'relu'\)$"),
        "image.caffemodel": (b"\x89PNG\r\n\x1a\n" + bytes(range(64)), r"a PNG image, not a binary Caffe model$"),
        "net.prototxt": (b'name: "LeNet"\nlayer {\n  name: "data"\n}\n',
                         r"no HDF5 signature and not a valid binary Caffe model: invalid wire type 6 \(field 13\) "
                         r"at byte 0 while reading layer\[0\] \(the file looks like text: a prototxt\?\)$"),
        "random.caffemodel": (np.random.default_rng(3).bytes(4096), r"no HDF5 signature and not a "),
        "empty.caffemodel": (b"", r"empty file$"),
        "torch.pt": (b"PK\x03\x04" + b"\x00" * 30, r"a ZIP archive \(a PyTorch checkpoint or \.npz\?\)"),
        "mean.binaryproto": (vf(1, 1) + vf(2, 3) + vf(3, 2) + vf(4, 2) + packed_f32(5, [0.5] * 12),
                             r"no HDF5 signature and not a binary Caffe model: it has no 'layer' or 'layers' field "
                             r"\(it reads as one blob of shape \(1, 3, 2, 2\): a \.binaryproto, e\.g\. a mean "
                             r"file\?\)$"),
        "lenet_iter_10000.solverstate": (vf(1, 10000) + st(2, "lenet_iter_10000") + ld(3, shaped_blob((2,), [0, 0])),
                                         r"no HDF5 signature and not a valid binary Caffe model: group end of "
                                         r"field 13 without a group start at byte 5 while reading layers\[0\] "
                                         r"\(a solver state\? it starts with an integer, as SolverState's iter "
                                         r"does\)$"),
        "no_layers.caffemodel": (st(1, "x") + vf(5, 1), r"no HDF5 signature and not a binary Caffe model: it has "
                                                        r"no 'layer' or 'layers' field$"),
    }
    for name, (data, message) in files.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(NetError, match=rf"^cannot read weights '{path}': " + message):
            load_weights(make_net(), path)
        assert convert_tool.main([str(path), str(tmp_path / "out.h5")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"error: cannot read weights '{path}': ")
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.create_dataset("x", data=np.zeros(2))
    assert convert_tool.main([str(other), str(tmp_path / "out.caffemodel")]) == 2
    assert capsys.readouterr().err == (f"error: cannot read weights '{other}': no 'data' group (not a Caffe HDF5 "
                                       f"weights file)\n")
    assert not (tmp_path / "out.h5").exists() and not (tmp_path / "out.caffemodel").exists()
    # the tools, as programs: one line, status 2
    proc = subprocess.run([sys.executable, TOOL, str(tmp_path / "cut.caffemodel"), str(tmp_path / "o.h5")],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "at byte" in proc.stderr


def test_run_net_takes_a_caffemodel(tmp_path, capsys, expected):
    net_file = tmp_path / "net.prototxt"
    net_file.write_text(textwrap.dedent(NET))
    weights = tmp_path / "w.caffemodel"
    weights.write_bytes(v1_model(expected))
    assert run_net_main([str(net_file), "--weights", str(weights), "--device", "cpu", "--iterations", "1"]) == 0
    err = capsys.readouterr().err
    assert f"note: loaded weights for 2 layer(s) from '{weights}'; ignored 1 file layer(s) the net lacks: extra\n" \
        in err
    weights.write_bytes(v1_model(expected)[:-30])
    assert run_net_main([str(net_file), "--weights", str(weights), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: cannot read weights '{weights}': ")


# ---- .binaryproto ---------------------------------------------------------------------------------------

def test_binaryproto_mean_file(tmp_path):
    mean = np.arange(12, dtype=np.float32).reshape(1, 3, 2, 2) * 0.5 + 100
    path = tmp_path / "mean.binaryproto"
    # as old compute_image_mean wrote it: legacy dims, unpacked data, and a fork's extra field
    path.write_bytes(vf(1, 1) + vf(2, 3) + vf(3, 2) + vf(4, 2) + unpacked_f32(5, mean.ravel()) + unknown_fields(40))
    got = read_blobproto(path)
    assert got.shape == (1, 3, 2, 2) and got.dtype == np.float32
    np.testing.assert_array_equal(got, mean)
    out = tmp_path / "legacy.binaryproto"
    write_blobproto(out, mean, legacy=True)
    assert out.read_bytes() == vf(1, 1) + vf(2, 3) + vf(3, 2) + vf(4, 2) + packed_f32(5, mean.ravel())
    write_blobproto(out, mean[0])
    assert read_blobproto(out).shape == (3, 2, 2)
    np.testing.assert_array_equal(read_blobproto(out), mean[0])
    assert out.read_bytes() == packed_f32(5, mean.ravel()) + ld(7, ld(1, vint(3) + vint(2) + vint(2)))
    double = np.linspace(0, 1, 6).reshape(2, 3)
    write_blobproto(out, double)
    assert read_blobproto(out).dtype == np.float64 and read_blobproto(out).tobytes() == double.tobytes()
    write_blobproto(out, np.float32(7.0))
    assert read_blobproto(out).shape == () and read_blobproto(out) == 7.0
    path.write_bytes(vf(1, 1) + vf(2, 3) + vf(3, 2) + vf(4, 2) + packed_f32(5, mean.ravel()[:11]))
    with pytest.raises(NetError) as e:
        read_blobproto(path)
    assert str(e.value) == (f"cannot read blob file '{path}': not a valid binary Caffe blob (BlobProto): blob of "
                            f"shape (1, 3, 2, 2) needs 12 value(s), the file has 11 at byte 0 while reading data")
    with pytest.raises(NetError, match=r"cannot write blob file '.*': a legacy blob has at most 4 axes"):
        write_blobproto(out, np.zeros((1, 1, 1, 1, 2)), legacy=True)
