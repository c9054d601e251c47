"""Memo steps 2-7: the readers of the memo layout (text and packed), the author's generic readers, MulRGB."""

import multiprocessing
import os
import pickle
import re

import cv2
import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from layers.build import make_layer
from layers.hand.rhd import memo
from layers.hand.rhd.packed import packed_file
from netdef.errors import NetError
from nets.net import Net
from rhd_fixture import write_memo, write_packed

S = 32
# per sample: 32 = native size, 128 = 4x shrink, 20 = enlarge; 3 and 6 are unusable (no files)
CROP_SIZES = [32, 64, 20, 0, 128, 45, 0, 37]
BATCH = [5, 0, 5, 2, 0, 7]          # repeats, out of order


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("rhd"))
    return root, write_memo(root, num_images=4, unusable=(3, 6), crop_sizes=CROP_SIZES)


def index(values, dtype=torch.float32):
    return torch.tensor(values, dtype=dtype).reshape(-1, 1)


def reader(type_, root, packed=False, extra="", split="training", batch=len(BATCH)):
    return make_layer(f'name: "r" type: "{type_}" bottom: "index" top: "out" '
                      f'rhd_data_param {{ root: "{root}" split: "{split}" packed: {str(packed).lower()} }} {extra}',
                      bottom_shapes=[(batch, 1)])


def image_reader(root, packed=False, size=S):
    return reader("ReadImage", root, packed, f"read_image_param {{ resize_size: {size} }}")


def f32(a):
    return torch.from_numpy(np.asarray(a, np.float32))


# ---- values -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("packed", [False, True])
def test_ground_truth_readers_give_the_file_values_in_batch_order(data, packed):
    root, t = data
    idx = index(BATCH)
    out = {name: reader(name, root, packed)(idx) for name in
           ("ReadBBox", "ReadCameraIntrinsics", "ReadJoint2D", "ReadJoint3D", "ReadBoneLength", "ReadVisibility")}
    for b, i in enumerate(BATCH):
        assert torch.equal(out["ReadBBox"][b], f32(t["bbox"][i]))
        k = t["camera_k"][i // 2]
        assert torch.equal(out["ReadCameraIntrinsics"][b], f32([k[0], k[4], k[2], k[5]]))
        assert torch.equal(out["ReadJoint2D"][b], f32(t["crop_gt_2d"][i].reshape(-1)))   # u0 v0 u1 v1 ...
        assert torch.equal(out["ReadJoint3D"][b], f32(t["gt_3d"][i].reshape(-1)))       # X0 Y0 Z0 X1 ...
        assert torch.equal(out["ReadBoneLength"][b], f32(t["avg_bone"]))
        assert torch.equal(out["ReadVisibility"][b], f32(t["gt_vis"][i].reshape(-1)))
    assert out["ReadJoint3D"].shape == (6, 63) and out["ReadJoint2D"].shape == (6, 42)
    assert out["ReadBBox"].dtype == torch.float32


def test_bbox_and_intrinsics_spot_values(data):
    root, t = data
    bbox = reader("ReadBBox", root)(index([4]))[0]
    x1, y1, x2, y2 = bbox.tolist()
    assert x2 - x1 + 1 == 128 and y2 - y1 + 1 == 128          # the fixture's box matches the 128 px crop
    fx, fy, u0, v0 = reader("ReadCameraIntrinsics", root)(index([5]))[0].tolist()
    k = t["camera_k"][2]                                         # sample 5 = image 2, right hand
    assert (fx, fy, u0, v0) == pytest.approx((k[0], k[4], k[2], k[5]), abs=1e-4)
    assert 200 <= fx <= 400 and 140 <= u0 <= 180


@pytest.mark.parametrize("packed", [False, True])
def test_image_at_native_size_is_the_file_in_bgr_channel_order(data, packed):
    root, t = data
    out = image_reader(root, packed)(index([0, 7, 0]))
    assert out.shape == (3, 3, S, S) and out.dtype == torch.float32
    crop = t["crop"][0]                                          # written by cv2 from this BGR array
    for c in range(3):
        assert torch.equal(out[0, c], torch.from_numpy(crop[:, :, c]).float())
    assert torch.equal(out[2], out[0]) and not torch.equal(out[1], out[0])


def test_image_shrink_is_the_area_average(data):
    root, t = data
    out = image_reader(root)(index([4]))[0]                      # 128 -> 32: each pixel a 4 x 4 block mean
    blocks = t["crop"][4].astype(np.float64).reshape(32, 4, 32, 4, 3).mean(axis=(1, 3)).transpose(2, 0, 1)
    assert np.abs(out.numpy() - blocks).max() <= 0.5 + 1e-9


def test_image_enlarge_is_bilinear_with_half_pixel_centres(data):
    root, t = data
    out = image_reader(root)(index([2]))[0]                      # 20 -> 32
    src = torch.from_numpy(t["crop"][2]).permute(2, 0, 1)[None].double()
    ref = F.interpolate(src, size=(S, S), mode="bilinear", align_corners=False)[0]
    assert (out.double() - ref).abs().max() <= 1.0               # cv2 rounds to uint8 in fixed point
    assert (out.double() - ref).abs().mean() < 0.5


@pytest.mark.parametrize("type_", ["ReadImage", "ReadBBox", "ReadCameraIntrinsics", "ReadJoint2D",
                                   "ReadJoint3D", "ReadBoneLength", "ReadVisibility"])
def test_text_and_packed_layouts_give_identical_tops(data, type_):
    root, _ = data
    extra = f"read_image_param {{ resize_size: {S} }}" if type_ == "ReadImage" else ""
    idx = index([7, 1, 4, 2, 1, 5, 0])
    text = reader(type_, root, False, extra, batch=7)(idx)
    packed = reader(type_, root, True, extra, batch=7)(idx)
    assert text.shape == packed.shape and text.shape[0] == 7
    assert torch.equal(text, packed)


def test_packs_of_format_1_with_png_crops_are_still_read(data, tmp_path):
    root, t = data
    old = str(tmp_path)
    write_memo(old, num_images=4, unusable=(3, 6), crop_sizes=CROP_SIZES, packed=False)
    write_packed(memo.packed_path(old, "training"), t, "training", 4, version=1)
    assert packed_file(memo.packed_path(old, "training")).version == 1
    idx = index([7, 1, 4, 2, 1, 5, 0])
    for type_, extra in (("ReadImage", f"read_image_param {{ resize_size: {S} }}"), ("ReadJoint3D", "")):
        want = reader(type_, root, False, extra, batch=7)(idx)
        assert torch.equal(reader(type_, old, True, extra, batch=7)(idx), want)


@pytest.mark.parametrize("packed", [False, True])
def test_forward_compact_is_the_top_in_its_stored_type(data, packed):
    root, _ = data
    idx = index([7, 1, 4, 2, 1, 5, 0], torch.float64)
    for type_, extra, stored in (("ReadImage", f"read_image_param {{ resize_size: {S} }}", torch.uint8),
                                 ("ReadJoint2D", "", torch.float32), ("ReadBoneLength", "", torch.float32)):
        layer = reader(type_, root, packed, extra, batch=7)
        compact, top = layer.forward_compact(idx), layer(idx)
        assert compact.dtype == stored and top.dtype == torch.float64 and compact.is_contiguous()
        assert torch.equal(compact.double(), top)


def test_float64_index_gives_float64_tops_of_the_same_float32_values(data):
    root, t = data
    out = reader("ReadJoint3D", root, batch=2)(index([1, 2], torch.float64))
    assert out.dtype == torch.float64
    assert torch.equal(out[1], f32(t["gt_3d"][2].reshape(-1)).double())


def test_integer_index_blob_is_accepted(data):
    root, t = data
    out = reader("ReadBBox", root, batch=2)(torch.tensor([[4], [0]]))
    assert out.dtype == torch.get_default_dtype()
    assert torch.equal(out[0], f32(t["bbox"][4]))


# ---- the author's generic readers -------------------------------------------------------------------------

def test_read_blob_from_file_indexing_reads_prefix_idx_txt(data):
    root, t = data
    prefix = os.path.join(root, "training", "all_hand", "gt_3d") + os.sep
    layer = make_layer(f'name: "g" type: "ReadBlobFromFileIndexing" bottom: "i" top: "g" '
                       f'read_blob_from_file_indexing_param {{ file_prefix: "{prefix}" num_to_read: 63 }}',
                       bottom_shapes=[(6, 1)])
    out = layer(index(BATCH))
    assert out.shape == (6, 63)
    assert torch.equal(out, reader("ReadJoint3D", root)(index(BATCH)))
    assert torch.equal(out[3], f32(t["gt_3d"][2].reshape(-1)))


def test_read_blob_from_file_tiles_one_file_over_the_batch(data):
    root, t = data
    layer = make_layer(f'name: "b" type: "ReadBlobFromFile" top: "b" read_blob_from_file_param {{ '
                       f'file_path: "{memo.avg_bone_path(root)}" num_to_read: 20 batch_size: 3 }}')
    assert layer.infer_top_shapes([]) == [(3, 20)]
    out = layer()
    assert out.shape == (3, 20)
    for row in out:
        assert torch.equal(row, f32(t["avg_bone"]))
    assert layer.get_state() == {}


def test_read_image_authors_form_concatenates_path_padded_index_and_suffix(data, tmp_path):
    root, t = data
    src = memo.sample_path(root, "training", "crop_image", 0)
    with open(src, "rb") as f:
        png = f.read()
    (tmp_path / "hand_007.img").write_bytes(png)
    layer = make_layer(f'name: "im" type: "ReadImage" bottom: "i" top: "im" read_image_param {{ '
                       f'read_path: "{tmp_path}/hand_" zero_pad: 3 image_suffix: ".img" resize_size: {S} }}',
                       bottom_shapes=[(1, 1)])
    out = layer(index([7]))
    assert torch.equal(out, image_reader(root)(index([0])))
    with pytest.raises(NetError, match=r"missing file '.*/hand_012\.img' \(sample 12\)"):
        layer(index([12]))


def test_grey_and_alpha_pngs_become_bgr(tmp_path):
    rng = np.random.default_rng(3)
    grey = rng.integers(0, 256, (8, 8), dtype=np.uint8)
    bgra = rng.integers(0, 256, (8, 8, 4), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "0.png"), grey)
    cv2.imwrite(str(tmp_path / "1.png"), bgra)
    layer = make_layer(f'name: "im" type: "ReadImage" bottom: "i" top: "im" read_image_param {{ '
                       f'read_path: "{tmp_path}/" resize_size: 8 }}', bottom_shapes=[(2, 1)])
    out = layer(index([0, 1]))
    for c in range(3):
        assert torch.equal(out[0, c], torch.from_numpy(grey).float())          # grey repeated in B, G, R
        assert torch.equal(out[1, c], torch.from_numpy(bgra[:, :, c]).float())  # alpha dropped


def test_mul_rgb_scales_and_passes_gradients():
    layer = make_layer('name: "m" type: "MulRGB" bottom: "x" top: "y" mul_rgb_param { mul_factor: 0.5 }',
                       bottom_shapes=[(2, 3, 4, 4)])
    x = torch.arange(96.0).reshape(2, 3, 4, 4)
    assert torch.equal(layer(x), x / 2)
    default = make_layer('name: "m" type: "MulRGB" bottom: "x" top: "y"', bottom_shapes=[(1, 3, 2, 2)])
    assert torch.equal(default(torch.ones(1, 3, 2, 2)), torch.full((1, 3, 2, 2), 255.0))
    xd = torch.randn(1, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: layer.double()(v), (xd,))


# ---- errors -----------------------------------------------------------------------------------------------

def test_missing_sample_file_names_path_sample_and_layer(data):
    root, _ = data
    path = memo.sample_path(root, "training", "gt_3d", 3)
    with pytest.raises(NetError) as e:
        reader("ReadJoint3D", root, batch=2)(index([0, 3]))
    msg = str(e.value)
    assert f"missing file '{path}' (sample 3)" in msg and "layer 'r' (ReadJoint3D)" in msg
    assert "\n" not in msg
    with pytest.raises(NetError, match=r"missing file '.*/crop_image/6\.png' \(sample 6\)"):
        image_reader(root)(index([6]))


def test_corrupt_png_and_malformed_text_name_the_file_and_sample(tmp_path):
    root = str(tmp_path)
    t = write_memo(root, num_images=2, unusable=(), crop_sizes=[30, 30, 30, 30], packed=False)
    png = memo.sample_path(root, "training", "crop_image", 1)
    with open(png, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n but not really")
    with pytest.raises(NetError, match=rf"unreadable or corrupt image '{png}' \(sample 1\)"):
        image_reader(root)(index([0, 1]))
    t["png"][1] = b"garbage"
    write_packed(memo.packed_path(root, "training"), t, "training", 2, version=1)   # PNG bytes
    with pytest.raises(NetError, match=r"unreadable or corrupt image of sample 1 in '.*packed\.h5'"):
        image_reader(root, packed=True)(index([1]))
    write_packed(memo.packed_path(root, "training"), t, "training", 2)               # pixels
    with h5py.File(memo.packed_path(root, "training"), "r+") as f:
        f["crop_shape"][1] = (31, 30)
        x1, y1 = (int(v) for v in f["bbox"][1][:2])
        f["bbox"][1] = (x1, y1, x1 + 29, y1 + 30)     # a box of the recorded shape: the pixels are too few
    with pytest.raises(NetError, match=r"crop of sample 1 in '.*packed\.h5' has 2700 bytes for 31 x 30 x 3 pixels"):
        image_reader(root, packed=True)(index([1]))

    gt = memo.sample_path(root, "training", "gt_3d", 2)
    lines = open(gt).read().splitlines()
    with open(gt, "w") as f:
        f.write("\n".join(lines[:-1]) + "\n")
    with pytest.raises(NetError, match=rf"malformed file '{gt}' \(sample 2\): expected 63 numbers, found 60"):
        reader("ReadJoint3D", root)(index([2]))
    with open(gt, "w") as f:
        f.write("\n".join(lines[:-1] + ["1.0 abc 3.0"]) + "\n")
    with pytest.raises(NetError, match=rf"malformed file '{gt}' \(sample 2\)"):
        reader("ReadJoint3D", root)(index([2]))
    bbx = memo.sample_path(root, "training", "bbx_x2", 3)
    with open(bbx, "w") as f:
        f.write("12.5\n")
    with pytest.raises(NetError, match=rf"malformed file '{bbx}' \(sample 3\)"):
        reader("ReadBBox", root)(index([3]))


def test_packed_index_out_of_range_and_unusable_sample(data):
    root, _ = data
    path = memo.packed_path(root, "training")
    with pytest.raises(NetError, match=rf"sample index 8 is out of range for '{path}' \(valid 0\.\.7\)"):
        reader("ReadJoint2D", root, True, batch=2)(index([1, 8]))
    with pytest.raises(NetError, match=rf"sample 3 is not usable in '{path}'"):
        reader("ReadJoint3D", root, True, batch=3)(index([0, 3, 6]))
    with pytest.raises(NetError, match=rf"sample 6 is not usable in '{path}'"):
        reader("ReadCameraIntrinsics", root, True)(index([6]))   # its image's K exists; the sample does not


def test_invalid_index_values(data):
    root, _ = data
    for bad, shown in ((1.5, "1.5"), (-1.0, "-1"), (float("nan"), "nan")):
        with pytest.raises(NetError, match=rf"invalid sample index {shown} in the index blob"):
            reader("ReadBBox", root, batch=2)(index([0, bad]))


def test_missing_or_foreign_packed_file(data, tmp_path):
    root, _ = data
    with pytest.raises(NetError, match=r"missing packed file '.*evaluation/all_hand/packed\.h5'"):
        reader("ReadJoint3D", root, True, split="evaluation")(index([0]))
    other = tmp_path / "training" / "all_hand"
    other.mkdir(parents=True)
    with h5py.File(other / "packed.h5", "w") as f:
        f.create_dataset("gt_3d", data=np.zeros((2, 21, 3), np.float32))
    with pytest.raises(NetError, match=r"format_version None, expected 3 "
                                       r"\(not a packed RHD file, or written by another version: "
                                       r"tools/prepare_rhd.py rebuilds it\)"):
        reader("ReadJoint3D", str(tmp_path), True)(index([0]))
    (other / "packed.h5").write_bytes(b"not hdf5")
    with pytest.raises(NetError, match=r"cannot open packed file"):
        reader("ReadJoint3D", str(tmp_path), True)(index([0]))


def test_build_errors():
    def build(text, shapes=((2, 1),)):
        return make_layer('name: "r" bottom: "i" top: "o" ' + text, bottom_shapes=list(shapes))
    with pytest.raises(NetError, match=r"layer 'r' \(ReadJoint3D\): needs rhd_data_param \{ root: \.\.\. \}"):
        build('type: "ReadJoint3D"')
    with pytest.raises(NetError, match=r"split must be training or evaluation, got 'train'"):
        build('type: "ReadJoint3D" rhd_data_param { root: "/d" split: "train" }')
    with pytest.raises(NetError, match=r"unknown param 'resize_sise' in read_image_param "
                                       r"\(did you mean resize_size\?\)"):
        build('type: "ReadImage" read_image_param { resize_sise: 3 } rhd_data_param { root: "/d" }')
    with pytest.raises(NetError, match=r"either read_image_param \{ read_path \} or rhd_data_param"):
        build('type: "ReadImage" read_image_param { read_path: "/x/" } rhd_data_param { root: "/d" }')
    with pytest.raises(NetError, match=r"needs rhd_data_param"):
        build('type: "ReadImage" read_image_param { resize_size: 8 }')
    with pytest.raises(NetError, match=r"resize_size must be positive, got 0"):
        build('type: "ReadImage" read_image_param { resize_size: 0 read_path: "/x/" }')
    with pytest.raises(NetError, match=r"bottom must be the \(B, 1\) index blob, got \(2, 3\)"):
        build('type: "ReadBBox" rhd_data_param { root: "/d" }', [(2, 3)])
    with pytest.raises(NetError, match=r"missing required param 'file_prefix'"):
        build('type: "ReadBlobFromFileIndexing" read_blob_from_file_indexing_param { num_to_read: 3 }')


# ---- nets, processes, file changes ------------------------------------------------------------------------

NET = """
layer { name: "index" type: "ReadIndexFromFile" top: "index"
        read_index_from_file_param { index_file_path: "%(list)s" batch_size: 4 } }
layer { name: "image" type: "ReadImage" bottom: "index" top: "image" read_image_param { resize_size: 16 } %(rhd)s }
layer { name: "scale" type: "MulRGB" bottom: "image" top: "image_scale"
        mul_rgb_param { mul_factor: 0.00392156862745098 } }
layer { name: "bone" type: "ReadBoneLength" bottom: "index" top: "avg_bone" %(rhd)s }
layer { name: "bbox" type: "ReadBBox" bottom: "index" top: "bbox" %(rhd)s }
layer { name: "k" type: "ReadCameraIntrinsics" bottom: "index" top: "k" %(rhd)s }
layer { name: "j2" type: "ReadJoint2D" bottom: "index" top: "joint_2d" %(rhd)s }
layer { name: "j3" type: "ReadJoint3D" bottom : "index" top: "joint_3d" %(rhd)s }
"""


def net_text(index_list, root, packed):
    rhd = f'rhd_data_param {{ root: "{root}" packed: {packed} }}'
    return NET % {"list": index_list, "rhd": rhd}


def test_net_builds_without_data_and_runs_the_readers(data):
    root, t = data
    lst = memo.index_list_path(root, "training")
    shapes = Net(net_text(lst, "/nonexistent", "false"), phase="TEST", device="cpu").blob_shapes
    assert shapes == {"index": (4, 1), "image": (4, 3, 16, 16), "image_scale": (4, 3, 16, 16),
                      "avg_bone": (4, 20), "bbox": (4, 4), "k": (4, 4), "joint_2d": (4, 42), "joint_3d": (4, 63)}
    outs = []
    for packed, workers in (("false", 0), ("true", 2)):        # inline, and in DataLoader worker processes
        net = Net(net_text(lst, root, packed), phase="TEST", workers=workers, device="cpu")
        try:
            outs.append(net.forward())
        finally:
            net.close()
        assert net.blobs["index"].flatten().tolist() == [0, 1, 2, 4]     # the index list skips unusable 3
        assert torch.equal(net.blobs["joint_3d"][3], f32(t["gt_3d"][4].reshape(-1)))
        assert net.blobs["image_scale"].max() <= 1.0
        # the image crossed from the workers as uint8; the net's blob is the layer's float top
        assert net.source.next_batch()["image"].dtype == torch.uint8
        direct = image_reader(root, packed == "true", size=16)(index([0, 1, 2, 4]))
        assert net.blobs["image"].dtype == torch.float32 and torch.equal(net.blobs["image"], direct)
    for name in outs[0]:
        assert torch.equal(outs[0][name], outs[1][name]), name


def _read_in_child(layer, idx, queue):
    queue.put(layer(idx).numpy())


def test_reader_pickles_and_reads_in_a_forked_process(data):
    root, _ = data
    layer = reader("ReadJoint3D", root, True)
    idx = index(BATCH)
    expected = layer(idx)                                   # the parent has the file open now
    clone = pickle.loads(pickle.dumps(layer))
    assert torch.equal(clone(idx), expected)
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_read_in_child, args=(layer, idx, queue))
    child.start()
    got = queue.get(timeout=30)
    child.join(timeout=30)
    assert child.exitcode == 0
    assert np.array_equal(got, expected.numpy())
    assert torch.equal(layer(idx), expected)                # the parent's handle still works


def test_rewritten_packed_file_is_reopened(tmp_path):
    root = str(tmp_path)
    write_memo(root, num_images=1, unusable=(), crop_sizes=[24, 24], seed=1)
    layer = reader("ReadJoint3D", root, True, batch=1)
    first = layer(index([1]))
    t2 = write_memo(root, num_images=1, unusable=(), crop_sizes=[24, 24], seed=2)
    second = layer(index([1]))
    assert not torch.equal(first, second)
    assert torch.equal(second[0], f32(t2["gt_3d"][1].reshape(-1)))
    f = packed_file(memo.packed_path(root, "training"))
    assert f.n == 2 and f.index_list().tolist() == [0, 1]
    assert np.array_equal(f.avg_bone(), t2["avg_bone"].astype(np.float32))


# ---- bad files print nothing; crop sizes; the same one-line error with worker processes ----------------------

def png_with_header_only(h: int, w: int) -> bytes:
    """A PNG whose chunks are whole and CRC-correct, with an h x w IHDR but a 3-byte IDAT: its header claims
    the size, decoding it would fail (so a size error proves the reader did not decode it)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", b"\x78\x9c\x03") + chunk(b"IEND", b""))


def test_truncated_garbled_and_empty_pngs_are_refused_without_a_word_on_stderr(tmp_path, capfd):
    root = str(tmp_path)
    t = write_memo(root, num_images=2, unusable=(), crop_sizes=[30, 30, 30, 30], packed=False)
    paths = [memo.sample_path(root, "training", "crop_image", i) for i in range(4)]
    png = t["png"][0]
    garbled = bytearray(png)
    garbled[len(png) // 2] ^= 0xFF                                   # one flipped byte inside IDAT
    for path, data in zip(paths, (png[:len(png) // 2], bytes(garbled), b"", png[:20])):
        with open(path, "wb") as f:
            f.write(data)
    layer = image_reader(root)
    want = [r"truncated PNG \(\d+ bytes, its 'IDAT' chunk at byte 33 ends at \d+\)",
            r"CRC error in the PNG's 'IDAT' chunk at byte 33", "empty file",
            r"truncated PNG \(20 bytes, its 'IHDR' chunk at byte 8 ends at 33\)"]
    capfd.readouterr()
    for i, (path, detail) in enumerate(zip(paths, want)):
        with pytest.raises(NetError, match=rf"unreadable or corrupt image '{path}' \(sample {i}\): {detail}$"):
            layer(index([i]))
    assert capfd.readouterr() == ("", "")          # neither OpenCV's '[ WARN ...]' nor libpng's lines


@pytest.mark.parametrize("packed", ["text", "pixels", "png"])
def test_a_crop_of_another_size_than_its_box_is_refused(tmp_path, packed):
    root = str(tmp_path)
    t = write_memo(root, num_images=2, unusable=(), crop_sizes=[30, 30, 30, 30], packed=False)
    t["crop"][2] = np.zeros((40, 30, 3), np.uint8)                  # its box is 30 x 30
    t["png"][2] = cv2.imencode(".png", t["crop"][2])[1].tobytes()
    path = memo.sample_path(root, "training", "crop_image", 2)
    with open(path, "wb") as f:
        f.write(t["png"][2])
    x1, y1, x2, y2 = t["bbox"][2]
    if packed == "text":
        where = re.escape(f"'{path}' (sample 2)")
    else:
        write_packed(memo.packed_path(root, "training"), t, "training", 2, version=2 if packed == "pixels" else 1)
        where = re.escape(f"of sample 2 in '{memo.packed_path(root, 'training')}'")
    layer = image_reader(root, packed != "text")
    assert layer(index([0, 1, 3])).shape == (3, 3, S, S)          # the others are their box's size
    with pytest.raises(NetError, match=rf"layer 'r' \(ReadImage\): crop {where} is 40 x 30 pixels \(H x W\), "
                                       rf"expected 30 x 30, the size of its box \(x1, y1, x2, y2\) = "
                                       rf"\({x1}, {y1}, {x2}, {y2}\)$"):
        layer(index([1, 2]))


def test_an_oversized_crop_is_refused_before_it_is_decoded(tmp_path):
    root = str(tmp_path)
    write_memo(root, num_images=1, unusable=(), crop_sizes=[30, 30], packed=False)
    path = memo.sample_path(root, "training", "crop_image", 1)
    with open(path, "wb") as f:
        f.write(png_with_header_only(8000, 8000))
    for field, v in zip(memo.BBOX_FIELDS, (0, 0, 7999, 7999)):        # a box of that size too
        with open(memo.sample_path(root, "training", field, 1), "w") as f:
            f.write(f"{v}\n")
    with pytest.raises(NetError, match=rf"crop '{path}' \(sample 1\) is 8000 x 8000 pixels \(H x W\), "
                                       rf"expected at most 4096 x 4096$"):
        image_reader(root)(index([1]))
    # the author's form has no box: the bound alone, from a PNG's header or after decoding another format
    (tmp_path / "0.png").write_bytes(cv2.imencode(".png", np.zeros((1, 4097, 3), np.uint8))[1].tobytes())
    (tmp_path / "1.bmp").write_bytes(cv2.imencode(".bmp", np.zeros((4100, 2, 3), np.uint8))[1].tobytes())
    (tmp_path / "2.png").write_bytes(cv2.imencode(".png", np.zeros((50, 4096, 3), np.uint8))[1].tobytes())
    for i, suffix, size in ((0, ".png", "1 x 4097"), (1, ".bmp", "4100 x 2")):
        layer = make_layer(f'name: "im" type: "ReadImage" bottom: "i" top: "im" read_image_param {{ '
                           f'read_path: "{tmp_path}/" image_suffix: "{suffix}" resize_size: 8 }}',
                           bottom_shapes=[(1, 1)])
        with pytest.raises(NetError, match=rf"crop '{tmp_path}/{i}\{suffix}' \(sample {i}\) is {size} pixels"):
            layer(index([i]))
    layer = make_layer(f'name: "im" type: "ReadImage" bottom: "i" top: "im" read_image_param {{ '
                       f'read_path: "{tmp_path}/" resize_size: 8 }}', bottom_shapes=[(1, 1)])
    assert layer(index([2])).shape == (1, 3, 8, 8)                  # 4096 is allowed, and any shape


def _break_png(root):
    path = memo.sample_path(root, "training", "crop_image", 1)
    data = open(path, "rb").read()
    open(path, "wb").write(data[:len(data) // 2])


def _break_bbox(root):
    open(memo.sample_path(root, "training", "bbx_x2", 2), "w").write("12.5\n")


def _break_gt_3d(root):
    path = memo.sample_path(root, "training", "gt_3d", 4)
    lines = open(path).read().splitlines()
    open(path, "w").write("\n".join(lines[:-1]) + "\n")


def _break_index(root):
    open(memo.index_list_path(root, "training"), "w").write("0\n1\n99\n2\n")


def _break_packed(root):
    open(memo.packed_path(root, "training"), "wb").write(b"not hdf5 at all")


@pytest.mark.parametrize("packed, damage, says", [
    ("false", _break_png, r"unreadable or corrupt image '.*/crop_image/1\.png' \(sample 1\): truncated PNG"),
    ("false", _break_bbox, r"malformed file '.*/bbx_x2/2\.txt' \(sample 2\)"),
    ("false", _break_gt_3d, r"malformed file '.*/gt_3d/4\.txt' \(sample 4\): expected 63 numbers, found 60"),
    ("true", _break_index, r"sample index 99 is out of range for '.*packed\.h5' \(valid 0\.\.7\)"),
    ("true", _break_packed, r"cannot open packed file '.*packed\.h5'"),
], ids=["truncated-png", "garbled-bbox", "short-gt_3d", "bad-index", "bad-packed.h5"])
def test_data_errors_print_the_same_one_line_with_or_without_workers(tmp_path, capfd, packed, damage, says):
    from nets.cli import main
    root = str(tmp_path / "rhd")
    write_memo(root, num_images=4, unusable=(3, 6), crop_sizes=CROP_SIZES)
    damage(root)
    net = tmp_path / "net.prototxt"
    net.write_text(net_text(memo.index_list_path(root, "training"), root, packed))
    capfd.readouterr()
    printed = []
    for workers in ("0", "2"):
        assert main([str(net), "--phase", "TEST", "--iterations", "2", "--workers", workers, "--device", "cpu"]) == 2
        printed.append(capfd.readouterr())
    (out0, err0), (out2, err2) = printed
    assert out0 == out2 == ""
    assert err2 == err0 and len(err0.splitlines()) == 1        # no worker traceback, no OpenCV line
    assert re.match(rf"error: {re.escape(str(net))}:\d+:\d+: layer '\w+' \(Read\w+\): {says}", err0), err0
