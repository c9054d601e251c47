"""Caffe's data layers (Data, ImageData, HDF5Data, MemoryData) and transform_param: against literal ports of
Caffe's DataTransformer loops and its layers' order rules, on hand-built LMDBs, list files and HDF5 files;
workers 0 and 2 alike; exact resume through the solver; one-line errors (also from run_net.py)."""

import os
import subprocess
import sys

import cv2
import h5py
import lmdb
import numpy as np
import pytest
import torch

from layers.base import Param, Params, SourceLayer
from layers.build import make_layer
from layers.caffe.datum import encode_datum
from layers.caffe.transform import Transformer, read_mean_file
from layers.registry import register_layer
from netdef import protowire as pw
from netdef.errors import NetError
from nets.net import Net

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---- literal ports of Caffe's C++ ------------------------------------------------------------------------------

def caffe_transform_datum(datum, draws, phase, crop_size=0, mirror=False, scale=1.0, mean=None, mean_values=()):
    """DataTransformer::Transform(const Datum&, Dtype*) loop for loop; `datum` (C, H, W) uint8 or float32, `draws`
    the raw 32-bit numbers behind its Rand calls (Rand(n) = rng() % n), float arithmetic as a float net."""
    draws = iter(int(d) for d in draws)

    def rand(n):
        return next(draws) % n
    datum_channels, datum_height, datum_width = datum.shape
    data = datum.reshape(-1)
    scale = np.float32(scale)
    do_mirror = mirror and rand(2)
    mean_values = [np.float32(m) for m in mean_values]
    if datum_channels > 1 and len(mean_values) == 1:
        mean_values = mean_values * datum_channels
    height, width = datum_height, datum_width
    h_off = w_off = 0
    if crop_size:
        height = width = crop_size
        if phase == "TRAIN":
            h_off = rand(datum_height - crop_size + 1)
            w_off = rand(datum_width - crop_size + 1)
        else:
            h_off = (datum_height - crop_size) // 2
            w_off = (datum_width - crop_size) // 2
    out = np.zeros(datum_channels * height * width, np.float32)
    mean_flat = None if mean is None else mean.reshape(-1)
    for c in range(datum_channels):
        for h in range(height):
            for w in range(width):
                data_index = (c * datum_height + h_off + h) * datum_width + w_off + w
                if do_mirror:
                    top_index = (c * height + h) * width + (width - 1 - w)
                else:
                    top_index = (c * height + h) * width + w
                datum_element = np.float32(data[data_index])
                if mean_flat is not None:
                    out[top_index] = (datum_element - mean_flat[data_index]) * scale
                elif mean_values:
                    out[top_index] = (datum_element - mean_values[c]) * scale
                else:
                    out[top_index] = datum_element * scale
    return out.reshape(datum_channels, height, width)


def caffe_transform_mat(img_hwc, draws, phase, crop_size=0, mirror=False, scale=1.0, mean=None, mean_values=()):
    """DataTransformer::Transform(const cv::Mat&, Blob*) loop for loop (interleaved H x W x C pixels)."""
    draws = iter(int(d) for d in draws)

    def rand(n):
        return next(draws) % n
    if img_hwc.ndim == 2:
        img_hwc = img_hwc[:, :, None]
    img_height, img_width, img_channels = img_hwc.shape
    scale = np.float32(scale)
    do_mirror = mirror and rand(2)
    mean_values = [np.float32(m) for m in mean_values]
    if img_channels > 1 and len(mean_values) == 1:
        mean_values = mean_values * img_channels
    height, width = img_height, img_width
    h_off = w_off = 0
    if crop_size:
        height = width = crop_size
        if phase == "TRAIN":
            h_off = rand(img_height - crop_size + 1)
            w_off = rand(img_width - crop_size + 1)
        else:
            h_off = (img_height - crop_size) // 2
            w_off = (img_width - crop_size) // 2
    cropped = img_hwc[h_off:h_off + height, w_off:w_off + width]
    out = np.zeros(img_channels * height * width, np.float32)
    mean_flat = None if mean is None else mean.reshape(-1)
    for h in range(height):
        ptr = cropped[h].reshape(-1)
        img_index = 0
        for w in range(width):
            for c in range(img_channels):
                top_index = (c * height + h) * width + ((width - 1 - w) if do_mirror else w)
                pixel = np.float32(ptr[img_index])
                img_index += 1
                if mean_flat is not None:
                    mean_index = (c * img_height + h_off + h) * img_width + w_off + w
                    out[top_index] = (pixel - mean_flat[mean_index]) * scale
                elif mean_values:
                    out[top_index] = (pixel - mean_values[c]) * scale
                else:
                    out[top_index] = pixel * scale
    return out.reshape(img_channels, height, width)


# ---- fixtures: hand-built files ----------------------------------------------------------------------------------

def write_lmdb(path, records):
    env = lmdb.open(str(path), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for key, value in records:
            txn.put(key, value)
    env.close()
    return str(path)


def blobproto(array, legacy=True):
    """A BlobProto's bytes, by hand: legacy num/channels/height/width + packed data, or shape { dim } form."""
    a = np.asarray(array, np.float32)
    if legacy:
        dims = (1,) * (4 - a.ndim) + a.shape
        head = b"".join(pw.varint_field(n, d) for n, d in zip((1, 2, 3, 4), dims))
        return head + pw.packed_floats_field(5, a.reshape(-1).tolist())
    shape = pw.len_field(7, pw.packed_varints_field(1, a.shape))
    return pw.packed_floats_field(5, a.reshape(-1).tolist()) + shape


def images_chw(n, c=3, h=6, w=7, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, c, h, w), dtype=np.uint8)


@pytest.fixture
def db(tmp_path):
    """10 uint8 Datum records 3 x 6 x 7, keys 00000000..00000009, label = 3 * i + 1."""
    imgs = images_chw(10)
    path = write_lmdb(tmp_path / "train_lmdb", [(b"%08d" % i, encode_datum(imgs[i], 3 * i + 1)) for i in range(10)])
    return path, imgs


def data_net(source, batch=4, transform="", extra="", tops='top: "data" top: "label"', phase="TRAIN", workers=0):
    return Net(f'layer {{ name: "d" type: "Data" {tops} data_param {{ source: "{source}" batch_size: {batch} '
               f'backend: LMDB {extra} }} transform_param {{ {transform} }} }}', phase=phase, device="cpu",
               workers=workers)


def batches(net, n, tops=("data", "label")):
    out = []
    for _ in range(n):
        got = net.forward()
        out.append(tuple(net.blobs[t].clone() for t in tops))
    return out


# ---- transform_param -------------------------------------------------------------------------------------------

TRANSFORM_CASES = [
    dict(phase="TRAIN", crop_size=4, mirror=True, scale=0.5, mean_values=(10.0,)),
    dict(phase="TRAIN", crop_size=3, mirror=False, scale=0.0078125, mean_values=(104.0, 117.0, 123.0)),
    dict(phase="TEST", crop_size=4, mirror=True, scale=2.0),
    dict(phase="TEST", crop_size=0, mirror=False, scale=1.0, mean="file"),
    dict(phase="TRAIN", crop_size=5, mirror=True, scale=0.25, mean="file"),
]


@pytest.mark.parametrize("case", TRANSFORM_CASES)
def test_transform_is_caffes_loop(tmp_path, case):
    case = dict(case)
    x = images_chw(1, 3, 6, 7, seed=1)[0]
    block = (f'crop_size: {case["crop_size"]} mirror: {str(case["mirror"]).lower()} scale: {case["scale"]} ' +
             " ".join(f"mean_value: {m}" for m in case.get("mean_values", ())))
    if case.get("mean") == "file":
        mean = np.random.default_rng(2).uniform(0, 255, (3, 6, 7)).astype(np.float32)
        (tmp_path / "mean.binaryproto").write_bytes(blobproto(mean))
        block += f' mean_file: "{tmp_path / "mean.binaryproto"}"'
        case["mean"] = mean
    layer = make_layer(f'name: "m" type: "MemoryData" top: "d" top: "l" memory_data_param {{ batch_size: 1 '
                       f'channels: 3 height: 6 width: 7 }} transform_param {{ {block} }}', phase=case["phase"])
    t = Transformer(layer)
    rng = np.random.default_rng(5)
    for _ in range(6):
        draws = t.draw(rng, 1)[0]
        assert draws.dtype == np.uint32 and len(draws) == int(case["mirror"]) + 2 * (case["crop_size"] > 0 and
                                                                                      case["phase"] == "TRAIN")
        got = t.apply(x, draws, "image")
        expected = caffe_transform_datum(x, draws, **case)
        assert got.dtype == np.float32 and np.array_equal(got, expected)
        assert np.array_equal(caffe_transform_mat(x.transpose(1, 2, 0), draws, **case), expected)  # cv::Mat path
        floats = x.astype(np.float32) / 3                       # a Datum's float_data
        assert np.array_equal(t.apply(floats, draws, "image"), caffe_transform_datum(floats, draws, **case))


def test_transform_mirror_and_crop_draws_cover_every_choice():
    layer = make_layer('name: "m" type: "MemoryData" top: "d" top: "l" memory_data_param { batch_size: 1 channels: 1 '
                       'height: 3 width: 4 } transform_param { crop_size: 2 mirror: true }')
    t = Transformer(layer)
    x = np.arange(12, dtype=np.uint8).reshape(1, 3, 4)
    seen = {t.apply(x, d, "x", compact=True).tobytes() for d in t.draw(np.random.default_rng(0), 200)}
    assert len(seen) == 2 * 2 * 3          # mirror x h_off in {0, 1} x w_off in {0, 1, 2}
    # an identity transform keeps uint8 when asked (compact), float32 otherwise
    assert t.apply(x, np.array([1, 1, 2], np.uint32), "x", compact=True).tolist() == [[[7, 6], [11, 10]]]
    assert t.apply(x, np.array([1, 1, 2], np.uint32), "x").dtype == np.float32


def test_mean_file_forms_and_errors(tmp_path):
    mean = np.arange(24, dtype=np.float32).reshape(2, 3, 4) / 7
    for legacy in (True, False):
        path = tmp_path / f"m{legacy}.binaryproto"
        path.write_bytes(blobproto(mean[None] if not legacy else mean, legacy=legacy))
        got = read_mean_file(str(path), "here")
        assert got.shape == (1, 2, 3, 4) and np.array_equal(got[0], mean)
    (tmp_path / "bad.binaryproto").write_bytes(b"\x0a\xff")
    with pytest.raises(NetError, match=r"^here: mean_file '.*bad.binaryproto' is not a BlobProto"):
        read_mean_file(str(tmp_path / "bad.binaryproto"), "here")
    with pytest.raises(NetError, match=r"^here: cannot read mean_file '.*nope.binaryproto': No such file"):
        read_mean_file(str(tmp_path / "nope.binaryproto"), "here")


def test_mean_file_of_the_wrong_shape_names_the_path_and_both_shapes(tmp_path, db):
    source, _ = db
    (tmp_path / "mean.binaryproto").write_bytes(blobproto(np.zeros((3, 5, 7))))
    with pytest.raises(NetError) as e:
        data_net(source, transform=f'mean_file: "{tmp_path / "mean.binaryproto"}"')
    msg = str(e.value)
    assert "\n" not in msg and "mean.binaryproto' has shape (3, 5, 7)" in msg and "has (3, 6, 7)" in msg
    assert "layer 'd' (Data)" in msg and "record '00000000'" in msg


def test_transform_param_errors():
    base = 'name: "m" type: "MemoryData" top: "d" top: "l" memory_data_param { batch_size: 1 channels: 1 height: 1 ' \
           'width: 1 } transform_param { %s }'
    with pytest.raises(NetError, match="cannot set both force_color and force_gray"):
        make_layer(base % "force_color: true force_gray: true")
    with pytest.raises(NetError, match="cannot give mean_file and mean_value at the same time"):
        make_layer(base % 'mean_file: "m.binaryproto" mean_value: 1')
    t = Transformer(make_layer(base % "mean_value: 1 mean_value: 2"))
    with pytest.raises(NetError, match=r"gives 2 mean_value\(s\) for x with 3 channel\(s\)"):
        t.apply(np.zeros((3, 2, 2), np.uint8), np.zeros(0, np.uint32), "x")
    t = Transformer(make_layer(base % "crop_size: 3"))
    with pytest.raises(NetError, match="x is 2x4, smaller than crop_size 3"):
        t.apply(np.zeros((1, 2, 4), np.uint8), np.zeros(2, np.uint32), "x")


# ---- Data (LMDB) -------------------------------------------------------------------------------------------------

def test_data_reads_records_in_key_order_wrapping_around(db):
    source, imgs = db
    net = data_net(source, batch=4)
    assert net.blob_shapes["data"] == (4, 3, 6, 7) and net.blob_shapes["label"] == (4,)
    got = batches(net, 3)
    order = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    for b, (data, label) in enumerate(got):
        rows = order[4 * b:4 * b + 4]
        assert data.dtype == torch.float32 and np.array_equal(data.numpy(), imgs[rows].astype(np.float32))
        assert label.tolist() == [3.0 * i + 1 for i in rows]
    assert net.source.state()[0]["next_key"] == b"00000002".hex()


def test_data_with_transform_matches_caffes_loop_and_one_top(db, tmp_path):
    source, imgs = db
    mean = np.random.default_rng(4).uniform(0, 255, (3, 6, 7)).astype(np.float32)
    (tmp_path / "mean.binaryproto").write_bytes(blobproto(mean))
    transform = f'crop_size: 5 mirror: true scale: 0.5 mean_file: "{tmp_path / "mean.binaryproto"}"'
    net = data_net(source, batch=3, transform=transform, tops='top: "data"')
    layer = net.layer("d")
    rng = np.random.Generator(np.random.PCG64())
    rng.bit_generator.state = layer.get_state()["rng"]       # the layer's draws, predicted
    got = batches(net, 4, tops=("data",))
    assert list(net.blobs) == ["data"]
    for b, (data,) in enumerate(got):
        draws = layer.transformer.draw(rng, 3)
        for i in range(3):
            x = imgs[(3 * b + i) % 10]
            expected = caffe_transform_datum(x, draws[i], "TRAIN", crop_size=5, mirror=True, scale=0.5, mean=mean)
            assert np.array_equal(data[i].numpy(), expected)


def test_data_test_phase_centre_crop_and_deprecated_data_param_fields(db):
    source, imgs = db
    # scale/crop_size/mirror in data_param count when transform_param does not set them (Caffe's upgrade)
    net = data_net(source, batch=2, extra="crop_size: 3 scale: 0.5 mirror: false", transform="scale: 2",
                   phase="TEST")
    data = net.forward()["data"]
    assert data.shape == (2, 3, 3, 3)
    for i in range(2):           # TEST: the centre crop, (6 - 3) / 2 = 1 and (7 - 3) / 2 = 2; no random numbers
        expected = caffe_transform_datum(imgs[i], [], "TEST", crop_size=3, scale=2.0)
        assert np.array_equal(data[i].numpy(), expected)
        assert np.array_equal(expected, imgs[i, :, 1:4, 2:5] * 2.0)


def test_data_float_and_encoded_records(tmp_path):
    rng = np.random.default_rng(7)
    floats = rng.normal(size=(2, 4, 5)).astype(np.float32)
    color = rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)
    png = cv2.imencode(".png", color)[1].tobytes()
    gray_expected = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_GRAYSCALE)    # libpng's own conversion
    fdb = write_lmdb(tmp_path / "f", [(b"a", encode_datum(floats, 3))])
    net = data_net(fdb, batch=2, transform="scale: 2")
    out = net.forward()
    assert np.array_equal(out["data"].numpy(), np.stack([floats * 2] * 2)) and out["label"].tolist() == [3.0, 3.0]
    edb = write_lmdb(tmp_path / "e", [(b"k1", encode_datum(png, 5, encoded=True))])
    out = data_net(edb, batch=1).forward()
    assert np.array_equal(out["data"][0].numpy(), color.transpose(2, 0, 1).astype(np.float32))
    out = data_net(edb, batch=1, transform="force_gray: true").forward()
    assert out["data"].shape == (1, 1, 4, 5) and np.array_equal(out["data"][0, 0].numpy(), gray_expected)
    ok, gpng = cv2.imencode(".png", gray_expected)
    gdb = write_lmdb(tmp_path / "g", [(b"k", encode_datum(gpng.tobytes(), 0, encoded=True))])
    assert data_net(gdb, batch=1).forward()["data"].shape == (1, 1, 4, 5)          # the file's own channels
    assert data_net(gdb, batch=1, transform="force_color: true").forward()["data"].shape == (1, 3, 4, 5)


def test_data_rand_skip_starts_at_a_random_record_and_goes_on_in_order(db):
    source, imgs = db
    starts = set()
    for seed in range(6):
        torch.manual_seed(seed)
        net = data_net(source, batch=3, extra="rand_skip: 7")
        labels = net.forward()["label"].tolist()
        first = (int(labels[0]) - 1) // 3
        assert labels == [3.0 * ((first + i) % 10) + 1 for i in range(3)] and 0 <= first < 7
        starts.add(first)
    assert len(starts) > 1


@pytest.mark.parametrize("make", ["data", "image", "hdf5"])
def test_workers_0_and_2_give_identical_batches(make, db, image_list, h5_list):
    nets = [NETS[make](db, image_list, h5_list, workers) for workers in (0, 2)]
    try:
        tops = [t for t in nets[0].source.tops]
        got = [[tuple(net.forward()[t].clone() for t in tops) for _ in range(5)] for net in nets]
        assert all(torch.equal(a, b) for ba, bb in zip(*got) for a, b in zip(ba, bb))
        assert nets[0].source.state() == nets[1].source.state()
        assert len({b[0].sum().item() for b in got[0]}) > 1
    finally:
        for net in nets:
            net.close()


# ---- ImageData ---------------------------------------------------------------------------------------------------

@pytest.fixture
def image_list(tmp_path):
    """7 PNG images 6 x 7 (one name with spaces) and their list; labels after the last space."""
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(11)
    images, lines = [], []
    for i in range(7):
        img = rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)
        name = f"img {i} a.png" if i == 2 else f"img{i}.png"
        cv2.imwrite(str(folder / name), img)
        images.append(img)
        lines.append(f"{name} {10 + i}")
    (tmp_path / "list.txt").write_text("\n".join(lines[:4]) + "\n\n" + "\r\n".join(lines[4:]) + "\n")
    return str(tmp_path / "list.txt"), str(folder) + "/", images


def image_net(listfile, root, params="", transform="", phase="TRAIN", workers=0):
    return Net(f'layer {{ name: "img" type: "ImageData" top: "data" top: "label" image_data_param {{ '
               f'source: "{listfile}" root_folder: "{root}" {params} }} transform_param {{ {transform} }} }}',
               phase=phase, device="cpu", workers=workers)


def test_image_data_reads_the_list_in_order(image_list):
    listfile, root, images = image_list
    net = image_net(listfile, root, "batch_size: 3")
    got = batches(net, 3)
    rows = [0, 1, 2, 3, 4, 5, 6, 0, 1]
    for b, (data, label) in enumerate(got):
        idx = rows[3 * b:3 * b + 3]
        assert label.tolist() == [10.0 + i for i in idx]
        assert np.array_equal(data.numpy(), np.stack([images[i].transpose(2, 0, 1) for i in idx]).astype(np.float32))


def test_image_data_resize_gray_and_the_cv_mat_transform(image_list):
    listfile, root, images = image_list
    net = image_net(listfile, root, "batch_size: 2 new_height: 5 new_width: 9 is_color: false",
                    "crop_size: 4 mirror: true scale: 0.5 mean_value: 3", phase="TRAIN")
    layer = net.layer("img")
    rng = np.random.Generator(np.random.PCG64())
    rng.bit_generator.state = layer.get_state()["rng"]
    for b in range(2):
        data = net.forward()["data"]
        draws = layer.transformer.draw(rng, 2)
        for i in range(2):
            name = "img 2 a.png" if 2 * b + i == 2 else f"img{2 * b + i}.png"
            gray = cv2.resize(cv2.imread(root + name, cv2.IMREAD_GRAYSCALE), (9, 5))   # ReadImageToCVMat
            expected = caffe_transform_mat(gray, draws[i], "TRAIN", crop_size=4, mirror=True, scale=0.5,
                                           mean_values=(3,))
            assert data.shape == (2, 1, 4, 4)
            assert np.array_equal(data[i].numpy(), expected)
    # the resize is ReadImageToCVMat's: cv::imread then cv::resize (bilinear) of the file, color
    color = image_net(listfile, root, "batch_size: 1 new_height: 4 new_width: 11").forward()["data"][0]
    assert np.array_equal(color.numpy(), cv2.resize(images[0], (11, 4)).transpose(2, 0, 1).astype(np.float32))


def test_image_data_shuffles_each_epoch_and_rand_skip(image_list):
    listfile, root, _ = image_list
    net = image_net(listfile, root, "batch_size: 7 shuffle: true")
    epochs = [tuple(int(v) for v in net.forward()["label"].tolist()) for _ in range(4)]
    assert all(sorted(e) == list(range(10, 17)) for e in epochs)       # each epoch: every image once
    assert len(set(epochs)) > 1                                          # reshuffled at each epoch's end
    torch.manual_seed(1)
    again = image_net(listfile, root, "batch_size: 7 shuffle: true")
    torch.manual_seed(0)
    same = image_net(listfile, root, "batch_size: 7 shuffle: true")
    assert [tuple(int(v) for v in same.forward()["label"].tolist()) for _ in range(4)] == epochs
    assert tuple(int(v) for v in again.forward()["label"].tolist()) != epochs[0]
    starts = set()
    for seed in range(8):
        torch.manual_seed(seed)
        first = int(image_net(listfile, root, "batch_size: 1 rand_skip: 5").forward()["label"].item())
        assert 10 <= first < 15
        starts.add(first)
    assert len(starts) > 1


def test_image_data_list_errors(tmp_path, image_list):
    listfile, root, _ = image_list
    bad = tmp_path / "bad.txt"
    bad.write_text("img0.png 1\nimg1.png\n")
    with pytest.raises(NetError, match=r"^<string>:1:1: layer 'img' \(ImageData\): .*bad.txt:2: no label"):
        image_net(str(bad), root)
    bad.write_text("img0.png 1\nimg1.png one\n")
    with pytest.raises(NetError, match=r"bad.txt:2: label 'one' is not an integer"):
        image_net(str(bad), root)
    with pytest.raises(NetError, match=r"cannot read image_data_param source '.*nolist.txt': No such file"):
        image_net(str(tmp_path / "nolist.txt"), root)
    with pytest.raises(NetError, match="new_height and new_width are set together"):
        image_net(listfile, root, "new_height: 4")


@pytest.mark.parametrize("workers", [0, 2])
def test_image_data_missing_image_in_a_later_batch_is_one_line(tmp_path, image_list, workers):
    listfile, root, _ = image_list
    os.remove(root + "img5.png")
    (tmp_path / "images" / "img6.png").write_bytes(b"not a png")
    net = image_net(listfile, root, "batch_size: 2", workers=workers)
    try:
        assert net.forward()["label"].tolist() == [10.0, 11.0]
        net.forward()
        with pytest.raises(NetError) as e:
            net.forward()
        assert str(e.value) == (f"<string>:1:1: layer 'img' (ImageData): cannot read image '{root}img5.png' "
                                f"({listfile}:7): No such file or directory")
        with pytest.raises(NetError, match=r"cannot decode image '.*img6.png' \(.*list.txt:8\): not an image"):
            net.forward()
    finally:
        net.close()


# ---- HDF5Data ----------------------------------------------------------------------------------------------------

@pytest.fixture
def h5_list(tmp_path):
    """Three files of 3, 4 and 2 rows: x (n, 2, 3) float32 = 100 * file + row, y (n,) int = 10 * file + row."""
    names = []
    for k, n in enumerate((3, 4, 2)):
        path = tmp_path / f"part{k}.h5"
        with h5py.File(path, "w") as f:
            f["x"] = (100 * k + np.arange(n, dtype=np.float32))[:, None, None] * np.ones((1, 2, 3), np.float32)
            f["y"] = 10 * k + np.arange(n)
        names.append(str(path))
    (tmp_path / "h5list.txt").write_text(" ".join(names[:2]) + "\n" + names[2] + "\n")
    return str(tmp_path / "h5list.txt")


def h5_net(source, params="batch_size: 4", tops='top: "x" top: "y"', workers=0):
    return Net(f'layer {{ name: "h" type: "HDF5Data" {tops} hdf5_data_param {{ source: "{source}" {params} }} }}',
               device="cpu", workers=workers)


def test_hdf5_data_rows_across_files_in_order(h5_list):
    net = h5_net(h5_list)
    assert net.blob_shapes == {"x": (4, 2, 3), "y": (4,)}
    ys = [net.forward()["y"].tolist() for _ in range(4)]
    order = [0, 1, 2, 10, 11, 12, 13, 20, 21] * 2
    assert ys == [[float(v) for v in order[4 * b:4 * b + 4]] for b in range(4)]
    assert np.array_equal(net.blobs["x"][:, 1, 2].numpy(), [100.0, 101, 102, 103])


def caffe_hdf5_order(rows, batches, batch_size, shuffle_file, shuffle_rows):
    """HDF5DataLayer's LayerSetUp + Next() loop for loop, the permutations given by callables."""
    num_files = len(rows)
    file_permutation = shuffle_file(list(range(num_files)))
    current_file = 0
    data_permutation = shuffle_rows(list(range(rows[file_permutation[current_file]])))
    current_row = 0
    out = []
    for _ in range(batches * batch_size):
        out.append((file_permutation[current_file], data_permutation[current_row]))
        current_row += 1
        if current_row == rows[file_permutation[current_file]]:
            if num_files > 1:
                current_file += 1
                if current_file == num_files:
                    current_file = 0
                    file_permutation = shuffle_file(file_permutation)
                data_permutation = shuffle_rows(list(range(rows[file_permutation[current_file]])))
            current_row = 0
            data_permutation = shuffle_rows(data_permutation)
    return out


def test_hdf5_data_shuffle_follows_caffes_next(h5_list):
    net = h5_net(h5_list, "batch_size: 3 shuffle: true")
    layer = net.layer("h")
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(
        [torch.initial_seed(), __import__("zlib").crc32(b"h")]).spawn(1)[0]))
    expected = caffe_hdf5_order([3, 4, 2], 12, 3, lambda p: rng.permutation(len(p)).tolist(),
                                lambda p: rng.permutation(len(p)).tolist())
    ys = [int(v) for _ in range(12) for v in net.forward()["y"].tolist()]
    assert ys == [10 * f + r for f, r in expected]
    # files are never interleaved: each run of one file's rows holds every row of it once
    runs, i = [], 0
    while i < len(ys) - 4:
        f, j = ys[i] // 10, i
        while j < len(ys) and ys[j] // 10 == f:
            j += 1
        runs.append((f, sorted(ys[i:j])))
        i = j
    assert any(r == (1, [10, 11, 12, 13]) for r in runs) and len(set(ys)) == 9
    assert layer.get_state()["data_perm"] is not None


def test_hdf5_data_errors(tmp_path, h5_list):
    with pytest.raises(NetError, match=r"has no dataset 'z' \(a top's name is its dataset's; datasets there: x, y\)"):
        h5_net(h5_list, tops='top: "x" top: "z"')
    with pytest.raises(NetError, match="HDF5Data does not transform data"):
        Net(f'layer {{ name: "h" type: "HDF5Data" top: "x" hdf5_data_param {{ source: "{h5_list}" batch_size: 1 }} '
            f'transform_param {{ scale: 2 }} }}', device="cpu")
    (tmp_path / "one.txt").write_text(str(tmp_path / "missing.h5"))
    with pytest.raises(NetError, match=r"cannot read HDF5 file '.*missing.h5' \(listed in '.*one.txt'\)"):
        h5_net(str(tmp_path / "one.txt"))
    with h5py.File(tmp_path / "odd.h5", "w") as f:
        f["x"] = np.zeros((2, 5, 3), np.float32)
        f["y"] = np.zeros(2)
    (tmp_path / "two.txt").write_text(f"{tmp_path / 'part0.h5'} {tmp_path / 'odd.h5'}")
    net = h5_net(str(tmp_path / "two.txt"), "batch_size: 2")
    net.forward()
    with pytest.raises(NetError, match=r"odd.h5' \(listed in .*\): dataset 'x' has rows of shape \(5, 3\), the first "
                                       r"file's \(2, 3\)"):
        net.forward()


# ---- MemoryData --------------------------------------------------------------------------------------------------

MEMORY_NET = """
layer { name: "m" type: "MemoryData" top: "data" top: "label" memory_data_param { batch_size: 2 channels: 1 height: 2 width: 3 } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 1 } }
"""


def test_memory_data_via_pycaffe_set_input_arrays(tmp_path):
    import caffe
    path = tmp_path / "mem.prototxt"
    path.write_text(MEMORY_NET)
    net = caffe.Net(str(path), caffe.TEST)
    data = np.arange(24, dtype=np.float32).reshape(4, 1, 2, 3)
    net.set_input_arrays(data, np.array([1, 2, 3, 4], np.float32))
    got = []
    for _ in range(3):
        net.forward()
        got.append((net.blobs["data"].data.copy(), net.blobs["label"].data.tolist()))
    assert [g[1] for g in got] == [[1.0, 2.0], [3.0, 4.0], [1.0, 2.0]]
    assert np.array_equal(got[1][0], data[2:4])
    data[2, 0, 0, 0] = 99                    # float32 arrays are used in place, as Caffe keeps the pointer
    net.forward()
    assert net.blobs["data"].data[0, 0, 0, 0] == 99
    net.set_input_arrays(data * 2, np.zeros(4, np.float32))     # starts over at row 0
    net.forward()
    assert net.blobs["data"].data[0, 0, 0, 1] == 2
    with pytest.raises(NetError, match=r"data array must be \(N, 1, 2, 3\)"):
        net.set_input_arrays(np.zeros((2, 1, 3, 2), np.float32), np.zeros(2))
    with pytest.raises(NetError, match="first dimensions of input arrays must be a multiple of batch size 2"):
        net.set_input_arrays(np.zeros((3, 1, 2, 3), np.float32), np.zeros(3))
    with pytest.raises(NetError, match="data and labels must have the same first dimension"):
        net.set_input_arrays(np.zeros((2, 1, 2, 3), np.float32), np.zeros(4))
    other = tmp_path / "other.prototxt"
    other.write_text('input: "x" input_shape { dim: 1 } layer { name: "p" type: "Power" bottom: "x" top: "y" }')
    with pytest.raises(NetError, match="only be called if the first layer is a MemoryDataLayer"):
        caffe.Net(str(other), caffe.TEST).set_input_arrays(data, np.zeros(4))


def test_memory_data_state_and_errors():
    net = Net(MEMORY_NET, device="cpu", workers=2)
    layer = net.layer("m")
    with pytest.raises(NetError, match=r"layer 'm' \(MemoryData\): has no data: give it arrays first"):
        net.forward()
    layer.reset(np.arange(36, dtype=np.float32).reshape(6, 1, 2, 3), np.arange(6))
    net.forward()
    assert net.source.state() == [{"pos": 2}] and net.source._iter is None    # nothing to read ahead: inline
    state = net.source.state()
    after = [net.forward()["ip"].clone() for _ in range(3)]
    net.source.set_state(state)
    assert all(torch.equal(a, net.forward()["ip"]) for a in after)
    with pytest.raises(NetError, match="must be specified and positive in memory_data_param"):
        Net('layer { name: "m" type: "MemoryData" top: "a" top: "b" memory_data_param { batch_size: 2 } }')


# ---- exact resume through the solver ---------------------------------------------------------------------------

RESUME_NET = """
name: "data_layers"
layer { name: "d" type: "Data" top: "d" top: "dl" include { phase: TRAIN }
        data_param { source: "%(db)s" batch_size: 3 backend: LMDB } transform_param { crop_size: 4 mirror: true scale: 0.01 } }
layer { name: "i" type: "ImageData" top: "i" top: "il" include { phase: TRAIN }
        image_data_param { source: "%(list)s" root_folder: "%(root)s" batch_size: 3 shuffle: true }
        transform_param { crop_size: 5 mirror: true mean_value: 128 scale: 0.01 } }
layer { name: "h" type: "HDF5Data" top: "x" top: "y" include { phase: TRAIN }
        hdf5_data_param { source: "%(h5)s" batch_size: 3 shuffle: true } }
layer { name: "ipd" type: "InnerProduct" bottom: "d" top: "a" inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "ipi" type: "InnerProduct" bottom: "i" top: "b" inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "ipx" type: "InnerProduct" bottom: "x" top: "c" inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "sum" type: "Eltwise" bottom: "a" bottom: "b" bottom: "c" top: "s" }
layer { name: "labels" type: "Concat" bottom: "dl" bottom: "il" top: "t" concat_param { axis: 0 } }
layer { name: "tt" type: "Reshape" bottom: "t" top: "tt" reshape_param { shape { dim: 3 dim: 2 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "s" bottom: "tt" top: "loss" }
"""


def test_snapshot_and_resume_read_exactly_the_batches_of_a_straight_run(tmp_path, db, image_list, h5_list):
    from nets.solver import Solver
    listfile, root, _ = image_list
    (tmp_path / "net.prototxt").write_text(RESUME_NET % dict(db=db[0], list=listfile, root=root, h5=h5_list))
    (tmp_path / "solver.prototxt").write_text(
        f'net: "{tmp_path / "net.prototxt"}"\nsnapshot_prefix: "{tmp_path / "r"}"\nbase_lr: 0.001\nlr_policy: "fixed"\n'
        'momentum: 0.9\nmax_iter: 8\nsnapshot: 4\nsnapshot_after_train: false\nrandom_seed: 3\ndisplay: 0\n')

    def run(resume=None):
        with Solver(str(tmp_path / "solver.prototxt"), device="cpu", workers=2) as solver:
            losses = solver.solve(resume=resume)
            return losses, [pi.tensor.detach().numpy().tobytes() for pi in solver.params]

    straight, weights = run()
    assert len(set(straight)) == 8
    resumed, weights_r = run(resume=str(tmp_path / "r_iter_4.solverstate.h5"))
    assert resumed == straight[4:] and weights_r == weights


# ---- the two-half contract -------------------------------------------------------------------------------------

def test_a_two_half_layer_draws_in_the_main_process_and_reads_in_the_workers():
    @register_layer("TwoHalvesForTest")
    class TwoHalves(SourceLayer):
        params = Params("two_param", batch_size=Param(int, 2))
        num_bottoms = 0
        num_tops = 2
        stateful = True

        def setup(self, bottom_shapes):
            self.cursor = 0

        def infer_top_shapes(self, bottom_shapes):
            return [(self.p.batch_size,), (1,)]

        def draw_batch(self):
            self.cursor += self.p.batch_size
            return list(range(self.cursor - self.p.batch_size, self.cursor)), os.getpid()

        def read_batch(self, ticket):
            rows, drawn_in = ticket
            return (torch.tensor(rows, dtype=torch.uint8),
                    torch.tensor([float(drawn_in != os.getpid())]))

        def get_state(self):
            return {"cursor": self.cursor}

        def set_state(self, state):
            self.cursor = state["cursor"]

    for workers, elsewhere in ((0, 0.0), (2, 1.0)):
        net = Net('layer { name: "t" type: "TwoHalvesForTest" top: "v" top: "where" }', device="cpu", workers=workers)
        try:
            batch = net.source.next_batch()
            assert set(batch) == {"v", "where"} and batch["v"].dtype == torch.uint8    # no ticket, compact
            assert batch["where"].item() == elsewhere
            out = net.forward()
            assert out["v"].dtype == torch.float32 and out["v"].tolist() == [2.0, 3.0]
            assert net.source.state() == [{"cursor": 4}]
            assert net.layer("t")().__class__ is tuple                    # forward() = read(draw()), inline
        finally:
            net.close()
    with pytest.raises(TypeError, match="defines both draw_batch and read_batch"):
        type("Half", (SourceLayer,), {"draw_batch": lambda self: 0, "stateful": True,
                                      "get_state": lambda self: 0, "set_state": lambda self, s: None})
    with pytest.raises(TypeError, match="is stateful and defines infer_top_shapes"):
        type("NoShapes", (SourceLayer,), {"draw_batch": lambda self: 0, "read_batch": lambda self, t: t,
                                          "stateful": True, "get_state": lambda self: 0,
                                          "set_state": lambda self, s: None})


# ---- bad input: one line -------------------------------------------------------------------------------------------

def test_lmdb_errors_are_one_line(tmp_path, db):
    source, _ = db
    with pytest.raises(NetError, match=r"^<string>:1:1: layer 'd' \(Data\): data_param source '.*nodb': no such LMDB"):
        data_net(str(tmp_path / "nodb"))
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "data.mdb").write_bytes(b"\0garbage" * 600)
    with pytest.raises(NetError, match=r"data_param source '.*junk' is not a readable LMDB: .*") as e:
        data_net(str(tmp_path / "junk"))
    assert "\n" not in str(e.value)
    with pytest.raises(NetError, match=r"backend LEVELDB is not read here: convert it to LMDB \(.*"
                                       r"tools/convert_imageset.py.*plyvel.*\) and set backend: LMDB$"):
        Net(f'layer {{ name: "d" type: "Data" top: "x" data_param {{ source: "{source}" batch_size: 1 '
            f'backend: LEVELDB }} }}', device="cpu")
    # backend not given (Caffe's default LEVELDB) but the source is an LMDB: read
    assert Net(f'layer {{ name: "d" type: "Data" top: "x" data_param {{ source: "{source}" batch_size: 1 }} }}',
               device="cpu").forward()["x"].shape == (1, 3, 6, 7)
    empty = write_lmdb(tmp_path / "empty", [])
    with pytest.raises(NetError, match="the LMDB holds no records"):
        data_net(empty)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_record_that_is_not_a_datum_names_the_lmdb_and_key(tmp_path, workers):
    imgs = images_chw(4)
    records = [(b"%08d" % i, encode_datum(imgs[i], i)) for i in range(4)]
    records[2] = (b"00000002", b"\xff\xff\xff")
    source = write_lmdb(tmp_path / "db", records)
    net = data_net(source, batch=2, workers=workers)
    try:
        net.forward()
        with pytest.raises(NetError) as e:
            net.forward()
        msg = str(e.value)
        assert msg.startswith(f"<string>:1:1: layer 'd' (Data): record '00000002' of LMDB '{source}': not a Caffe "
                              f"Datum (") and "\n" not in msg
        assert net.forward()["label"].tolist() == [0.0, 1.0]              # reading goes on after the failed batch
    finally:
        net.close()


def run_net(tmp_path, text):
    path = tmp_path / "net.prototxt"
    path.write_text(text)
    return subprocess.run([sys.executable, os.path.join(ROOT, "tools", "run_net.py"), str(path), "--device", "cpu",
                           "--workers", "2", "--iterations", "3"], capture_output=True, text=True, cwd=tmp_path,
                          timeout=120)


def test_run_net_reports_a_worker_s_bad_image_in_one_line_exit_2(tmp_path, image_list):
    listfile, root, _ = image_list
    os.remove(root + "img4.png")          # the third batch of 2 (in a worker process)
    proc = run_net(tmp_path, f'layer {{ name: "img" type: "ImageData" top: "x" top: "l" image_data_param {{ '
                             f'source: "{listfile}" root_folder: "{root}" batch_size: 2 }} }}')
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.endswith(f"(ImageData): cannot read image '{root}img4.png' ({listfile}:6): "
                                f"No such file or directory\n")


@pytest.mark.slow
def test_run_net_reports_a_missing_lmdb_in_one_line_exit_2(tmp_path):
    proc = run_net(tmp_path, 'layer { name: "d" type: "Data" top: "x" data_param { source: "nodb" batch_size: 1 '
                             'backend: LMDB } }')
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "layer 'd' (Data): data_param source 'nodb': no such LMDB" in proc.stderr


NETS = {
    "data": lambda db, il, h5, w: data_net(db[0], batch=3, transform="crop_size: 4 mirror: true mean_value: 9",
                                           workers=w),
    "image": lambda db, il, h5, w: image_net(il[0], il[1], "batch_size: 3 shuffle: true", "crop_size: 5 mirror: true",
                                             workers=w),
    "hdf5": lambda db, il, h5, w: h5_net(h5, "batch_size: 3 shuffle: true", workers=w),
}
