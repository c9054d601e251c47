"""Caffe's Datum codec (layers/caffe/datum.py): hand-built bytes in Caffe's layout (CVMatToDatum's channel-major
data, unpacked and packed float_data, encoded images, negative labels, a forked proto's extra fields), the
writer's exact bytes, round trips, PNG/JPEG decoding in native/color/gray modes against cv2 directly, and
one-line errors naming the record for buffers that are not a Datum."""

import struct

import cv2
import numpy as np
import pytest

from layers.caffe.datum import decode_datum, encode_datum, read_datum_fields
from netdef.errors import NetError


# ---- a hand encoder, independent of netdef.protowire -------------------------------------------------------

def vint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = b""
    while True:
        low, n = n & 0x7F, n >> 7
        out += bytes([low | (0x80 if n else 0)])
        if not n:
            return out


def vf(num, n):
    return vint(num << 3) + vint(n)


def ld(num, payload):
    return vint(num << 3 | 2) + vint(len(payload)) + payload


def f32(num, x):
    return vint(num << 3 | 5) + struct.pack("<f", x)


def cv_mat_to_datum_bytes(img_hwc):
    """CVMatToDatum's loop, literally: buffer[(c * H + h) * W + w] = ptr[h][w * C + c]."""
    h_, w_, c_ = img_hwc.shape
    buf = bytearray(c_ * h_ * w_)
    for h in range(h_):
        for w in range(w_):
            for c in range(c_):
                buf[(c * h_ + h) * w_ + w] = int(img_hwc[h, w, c])
    return bytes(buf)


def test_hand_built_uint8_datum():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(4, 5, 3), dtype=np.uint8)        # an OpenCV H x W x C BGR image
    buf = vf(1, 3) + vf(2, 4) + vf(3, 5) + ld(4, cv_mat_to_datum_bytes(img)) + vf(5, 9) + vf(7, 0)
    array, label = decode_datum(buf, "db: key 0")
    assert array.dtype == np.uint8 and array.shape == (3, 4, 5) and label == 9
    for c in range(3):
        np.testing.assert_array_equal(array[c], img[:, :, c])
    assert array.flags.writeable


def test_writer_bytes_match_caffe_field_order():
    arr = np.arange(2 * 2 * 3, dtype=np.uint8).reshape(2, 2, 3)
    expected = vf(1, 2) + vf(2, 2) + vf(3, 3) + ld(4, bytes(range(12))) + vf(5, 4) + vf(7, 0)
    assert encode_datum(arr, 4) == expected
    # a 2-D array is one channel
    assert encode_datum(arr[0], 1) == vf(1, 1) + vf(2, 2) + vf(3, 3) + ld(4, bytes(range(6))) + vf(5, 1) + vf(7, 0)


def test_negative_label_and_unknown_fields():
    buf = vf(1, 1) + vf(2, 1) + vf(3, 2) + ld(4, b"\x07\x08") + vf(5, -3)
    buf += ld(99, b"fork extra") + f32(100, 2.5) + vf(101, 5)             # a forked proto's fields pass
    array, label = decode_datum(buf, "k")
    assert label == -3 and array.tolist() == [[[7, 8]]]
    assert encode_datum(array, -3)[:-2].endswith(vf(5, -3))


def test_float_data_unpacked_and_packed():
    values = [0.5, -1.25, 3.0, 1e-3, 7.0, -2.0]
    unpacked = vf(1, 1) + vf(2, 2) + vf(3, 3) + vf(5, 2) + b"".join(f32(6, v) for v in values)
    packed = vf(1, 1) + vf(2, 2) + vf(3, 3) + vf(5, 2) + ld(6, struct.pack("<6f", *values))
    for buf in (unpacked, packed):
        array, label = decode_datum(buf, "k")
        assert array.dtype == np.float32 and array.shape == (1, 2, 3) and label == 2
        np.testing.assert_array_equal(array.reshape(-1), np.array(values, np.float32))
    # the writer writes proto2's unpacked form, byte for byte
    assert encode_datum(np.array(values, np.float64).reshape(1, 2, 3), 2) == unpacked


def test_data_wins_over_float_data_as_caffe_transformer():
    buf = vf(1, 1) + vf(2, 1) + vf(3, 2) + ld(4, b"\x01\x02") + f32(6, 9.0) + f32(6, 9.0)
    array, _ = decode_datum(buf, "k")
    assert array.dtype == np.uint8 and array.tolist() == [[[1, 2]]]


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 7, 5), (4, 1, 1)])
def test_round_trip_uint8(shape):
    rng = np.random.default_rng(1)
    arr = rng.integers(0, 256, size=shape, dtype=np.uint8)
    back, label = decode_datum(encode_datum(arr, 123456), "k")
    np.testing.assert_array_equal(back, arr)
    assert label == 123456


def test_round_trip_float():
    arr = np.random.default_rng(2).standard_normal((2, 3, 4)).astype(np.float32)
    back, label = decode_datum(encode_datum(arr, 0), "k")
    np.testing.assert_array_equal(back, arr)
    assert back.dtype == np.float32 and label == 0


def _image():
    rng = np.random.default_rng(3)
    img = np.zeros((12, 10, 3), np.uint8)
    img[..., 0] = np.arange(10, dtype=np.uint8)[None] * 20
    img[..., 1] = np.arange(12, dtype=np.uint8)[:, None] * 15
    img[..., 2] = rng.integers(0, 256, size=(12, 10), dtype=np.uint8)
    return img


def test_encoded_png_native_color_gray():
    img = _image()
    png = cv2.imencode(".png", img)[1].tobytes()
    buf = encode_datum(png, 5, encoded=True)
    assert buf == ld(4, png) + vf(5, 5) + vf(7, 1)                  # ReadFileToDatum's fields
    fields = read_datum_fields(buf, "k")
    assert fields["encoded"] and bytes(fields["data"]) == png and fields["channels"] == 0
    native, label = decode_datum(buf, "k")
    assert label == 5 and native.shape == (3, 12, 10)
    np.testing.assert_array_equal(native, img.transpose(2, 0, 1))   # PNG is lossless
    color, _ = decode_datum(buf, "k", is_color=True)
    np.testing.assert_array_equal(color, native)
    gray, _ = decode_datum(buf, "k", is_color=False)
    assert gray.shape == (1, 12, 10)
    np.testing.assert_array_equal(gray[0], cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_GRAYSCALE))
    # a gray PNG decodes natively to one channel and as color to three equal ones
    gpng = cv2.imencode(".png", gray[0])[1].tobytes()
    g1, _ = decode_datum(encode_datum(gpng, 0, encoded=True), "k")
    g3, _ = decode_datum(encode_datum(gpng, 0, encoded=True), "k", is_color=True)
    assert g1.shape == (1, 12, 10) and g3.shape == (3, 12, 10)
    np.testing.assert_array_equal(g3, np.repeat(g1, 3, axis=0))


def test_encoded_jpeg_matches_cv2_imdecode():
    img = cv2.resize(_image(), (40, 48), interpolation=cv2.INTER_LINEAR)
    img[..., 2] = 100                                                # smooth, so JPEG keeps it close
    jpg = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
    array, label = decode_datum(encode_datum(jpg, 3, encoded=True), "k")
    ref = cv2.imdecode(np.frombuffer(jpg, np.uint8), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(array, ref.transpose(2, 0, 1))
    assert label == 3
    assert np.abs(array.astype(int) - img.transpose(2, 0, 1)).mean() < 10   # lossy, but the same picture


def test_16_bit_png_is_refused_natively():
    png16 = cv2.imencode(".png", np.full((2, 2), 40000, np.uint16))[1].tobytes()
    with pytest.raises(NetError, match=r"^db: key 7: encoded image is uint16"):
        decode_datum(encode_datum(png16, 0, encoded=True), "db: key 7")


@pytest.mark.parametrize("buf, why", [
    (b"\x08", "truncated varint"),
    (b"\x22\x05ab", "runs past the end"),
    (b"\x0f", "invalid wire type"),
    (b"\x0a\x01x", "channels"),                                         # channels as length-delimited
    (vf(1, 1) + vf(2, 2) + vf(3, 2) + ld(4, b"abc"), "3 byte"),         # data size != C*H*W
    (vf(1, 1) + vf(2, 1) + vf(3, 2) + f32(6, 1.0), "1 value"),           # float count != C*H*W
    (b"", "empty Datum"),
    (ld(4, b"not an image") + vf(7, 1), "could not decode"),
    (ld(6, b"abcde"), "multiple of 4"),
    (b"<html>hello</html>", "not a Caffe Datum"),
])
def test_not_a_datum_is_one_line_error_naming_where(buf, why):
    with pytest.raises(NetError) as info:
        decode_datum(buf, "train_lmdb: key 00000001_a.png")
    msg = str(info.value)
    assert msg.startswith("train_lmdb: key 00000001_a.png: ") and why in msg and "\n" not in msg


def test_encode_refuses_bad_arrays():
    with pytest.raises(NetError, match="channels, height, width"):
        encode_datum(np.zeros((2, 2, 2, 2), np.uint8), 0)
    with pytest.raises(NetError, match="uint8 or float"):
        encode_datum(np.array([[["a"]]]), 0)
