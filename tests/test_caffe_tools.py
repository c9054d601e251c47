"""Caffe's data tools: tools/convert_imageset.py (LMDB of Datum records keyed as Caffe writes them, gray/color,
resize, --encoded with the file's own bytes or cv2.imencode, seeded --shuffle, --check_size, commits, a DB
that appears whole or not at all) and tools/compute_image_mean.py (Caffe's float32 sums, the legacy
.binaryproto, the printed per-channel means); the digit renderer tools/make_digits.py; one-line errors with
status 2 and Ctrl-C with 130."""

import importlib.util
import os
import random
import subprocess
import sys

import cv2
import lmdb
import numpy as np
import pytest

from layers.caffe.datum import decode_datum, read_datum_fields
from nets.caffemodel import read_blobproto

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tool(name):
    spec = importlib.util.spec_from_file_location(f"{name}_tool", os.path.join(ROOT, "tools", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


convert_tool = _tool("convert_imageset")
mean_tool = _tool("compute_image_mean")
digits_tool = _tool("make_digits")


def records(db):
    env = lmdb.open(str(db), readonly=True, lock=False)
    try:
        with env.begin() as txn:
            return [(k.decode(), bytes(v)) for k, v in txn.cursor()]
    finally:
        env.close()


@pytest.fixture
def image_set(tmp_path):
    """Six 9x7 color images (PNG, and one JPEG), in a subfolder, and their list (labels 10, 11, ...)."""
    root = tmp_path / "imgs"
    (root / "sub dir").mkdir(parents=True)
    rng = np.random.default_rng(0)
    names, images = [], []
    for i in range(6):
        img = rng.integers(0, 256, size=(9, 7, 3), dtype=np.uint8)
        name = f"sub dir/im{i}.png" if i != 4 else "sub dir/im4.JPEG"
        cv2.imwrite(str(root / name), img)
        names.append(name)
        images.append(cv2.imread(str(root / name), cv2.IMREAD_COLOR))      # the JPEG as it decodes
    listfile = tmp_path / "list.txt"
    listfile.write_text("".join(f"{n} {10 + i}\n" for i, n in enumerate(names)))
    return str(root) + "/", str(listfile), names, images


def test_convert_color_keys_values_labels(image_set, tmp_path, capsys):
    root, listfile, names, images = image_set
    db = tmp_path / "db"
    assert convert_tool.main([root, listfile, str(db)]) == 0
    out = capsys.readouterr().out
    assert "A total of 6 images." in out and "Processed 6 files." in out
    recs = records(db)
    assert [k for k, _ in recs] == [f"{i:08d}_{n}" for i, n in enumerate(names)]
    for i, (_, value) in enumerate(recs):
        array, label = decode_datum(value, "k")
        assert label == 10 + i and array.shape == (3, 9, 7)
        np.testing.assert_array_equal(array, images[i].transpose(2, 0, 1))
        assert value.endswith(b"\x38\x00")                         # CVMatToDatum's explicit encoded: false
    assert sorted(os.listdir(tmp_path)) == ["db", "imgs", "list.txt"]   # no temporary folder left


def test_convert_gray_and_resize_as_cv2(image_set, tmp_path):
    root, listfile, names, _ = image_set
    db = tmp_path / "db"
    assert convert_tool.main(["-gray", "--resize_height=5", "--resize_width", "4", root, listfile, str(db)]) == 0
    for (_, value), name in zip(records(db), names):
        array, _ = decode_datum(value, "k")
        want = cv2.resize(cv2.imread(root + name, cv2.IMREAD_GRAYSCALE), (4, 5))
        assert array.shape == (1, 5, 4)
        np.testing.assert_array_equal(array[0], want)
    # only one of height/width > 0: no resize (Caffe resizes when both are)
    db2 = tmp_path / "db2"
    assert convert_tool.main(["--gray", "--resize_height", "5", root, listfile, str(db2)]) == 0
    assert decode_datum(records(db2)[0][1], "k")[0].shape == (1, 9, 7)


def test_convert_encoded_file_bytes_or_imencode(image_set, tmp_path):
    root, listfile, names, images = image_set
    db = tmp_path / "db"
    assert convert_tool.main(["--encoded", root, listfile, str(db)]) == 0
    for (_, value), name in zip(records(db), names):
        fields = read_datum_fields(value, "k")
        assert fields["encoded"] and fields["channels"] == 0
        assert bytes(fields["data"]) == open(root + name, "rb").read()    # extension matches: the file itself
    # encode_type png: the PNGs are stored as they are, the JPEG re-encoded as PNG (lossless: its pixels)
    db2 = tmp_path / "db2"
    assert convert_tool.main(["--encode_type", "png", root, listfile, str(db2)]) == 0
    for (_, value), name, img in zip(records(db2), names, images):
        data = bytes(read_datum_fields(value, "k")["data"])
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        assert (data == open(root + name, "rb").read()) == name.endswith(".png")
        np.testing.assert_array_equal(decode_datum(value, "k")[0], img.transpose(2, 0, 1))
    # --gray with --encoded: the image read gray has 1 channel, so Caffe's test (channels == 3) == is_color
    # holds and the (color) file itself is stored; a gray read at decode time (force_gray) gives the gray image
    db3 = tmp_path / "db3"
    assert convert_tool.main(["--gray", "--encoded", root, listfile, str(db3)]) == 0
    value = records(db3)[0][1]
    assert bytes(read_datum_fields(value, "k")["data"]) == open(root + names[0], "rb").read()
    first = decode_datum(value, "k", is_color=False)[0]
    np.testing.assert_array_equal(first[0], cv2.imread(root + names[0], cv2.IMREAD_GRAYSCALE))
    # with a resize, the resized gray image is encoded
    db4 = tmp_path / "db4"
    assert convert_tool.main(["--gray", "--encoded", "--resize_width=3", "--resize_height=2", root, listfile,
                              str(db4)]) == 0
    value = records(db4)[0][1]
    want = cv2.resize(cv2.imread(root + names[0], cv2.IMREAD_GRAYSCALE), (3, 2))
    np.testing.assert_array_equal(decode_datum(value, "k")[0][0], want)


def test_shuffle_is_seeded(image_set, tmp_path):
    root, listfile, names, _ = image_set
    orders = []
    for i, seed in enumerate((5, 5, 6)):
        db = tmp_path / f"db{i}"
        assert convert_tool.main(["--shuffle", "--seed", str(seed), root, listfile, str(db)]) == 0
        orders.append([k for k, _ in records(db)])
    want = list(zip(names, range(10, 16)))
    random.Random(5).shuffle(want)
    # keys number the shuffled lines (Caffe's line_id after the shuffle); LMDB sorts by key, i.e. list order
    assert orders[0] == [f"{i:08d}_{n}" for i, (n, _) in enumerate(want)]
    assert orders[0] == orders[1] and orders[0] != orders[2]
    labels = [decode_datum(v, "k")[1] for _, v in records(tmp_path / "db0")]
    assert labels == [lab for _, lab in want]


def test_commits_every_1000_records(image_set, tmp_path, monkeypatch, capsys):
    root, listfile, _, _ = image_set
    assert convert_tool.COMMIT_EVERY == 1000
    commits = []
    real_open = lmdb.open

    class Env:
        def __init__(self, env):
            self.env = env

        def begin(self, write=False):
            txn = self.env.begin(write=write)
            outer = self

            class Txn:
                def put(self, k, v):
                    return txn.put(k, v)

                def commit(self):
                    commits.append(outer.env.stat()["entries"])
                    txn.commit()
            return Txn()

        def close(self):
            self.env.close()

    monkeypatch.setattr(convert_tool, "COMMIT_EVERY", 4)
    monkeypatch.setattr(lmdb, "open", lambda *a, **k: Env(real_open(*a, **k)))
    assert convert_tool.main([root, listfile, str(tmp_path / "db")]) == 0
    assert commits == [0, 4]              # entries committed before each commit: after 4 records, then the rest
    assert capsys.readouterr().out.count("Processed") == 2


def test_check_size(tmp_path):
    root = tmp_path / "imgs"
    root.mkdir()
    cv2.imwrite(str(root / "a.png"), np.zeros((4, 4, 3), np.uint8))
    cv2.imwrite(str(root / "b.png"), np.zeros((5, 4, 3), np.uint8))
    listfile = tmp_path / "l.txt"
    listfile.write_text("a.png 0\nb.png 1\n")
    assert convert_tool.main([str(root) + "/", str(listfile), str(tmp_path / "ok")]) == 0
    assert len(records(tmp_path / "ok")) == 2
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "convert_imageset.py"), "--check_size",
                        str(root) + "/", str(listfile), str(tmp_path / "db")], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"error: '{root}/b.png' is 3x5x4 (CxHxW), the first image 3x4x4 "
                                             f"(--check_size)"]
    assert sorted(os.listdir(tmp_path)) == ["imgs", "l.txt", "ok"]


@pytest.mark.parametrize("lines, expect", [
    ("a.png 0\nmissing.png 1\n", "cannot read image '{root}missing.png': no such file"),
    ("a.png 0\nnolabel\n", "{list}:2: expected `path LABEL`, found 'nolabel' (no label)"),
    ("a.png seven\n", "{list}:1: label 'seven' is not an integer"),
    ("a.png 0\nnotimg.png 1\n", "cannot read image '{root}notimg.png': not an image OpenCV can read"),
])
def test_convert_errors_one_line_no_db(tmp_path, capsys, lines, expect):
    root = tmp_path / "imgs"
    root.mkdir()
    cv2.imwrite(str(root / "a.png"), np.zeros((4, 4), np.uint8))
    (root / "notimg.png").write_text("hello")
    listfile = tmp_path / "l.txt"
    listfile.write_text(lines)
    assert convert_tool.main([str(root) + "/", str(listfile), str(tmp_path / "db")]) == 2
    err = capsys.readouterr().err
    assert err == "error: " + expect.format(root=str(root) + "/", list=listfile) + "\n"
    assert sorted(os.listdir(tmp_path)) == ["imgs", "l.txt"]


def test_convert_refuses_existing_db_and_leveldb(image_set, tmp_path, capsys):
    root, listfile, _, _ = image_set
    (tmp_path / "db").mkdir()
    assert convert_tool.main([root, listfile, str(tmp_path / "db")]) == 2
    assert capsys.readouterr().err.startswith(f"error: '{tmp_path / 'db'}' exists already")
    assert os.listdir(tmp_path / "db") == []
    assert convert_tool.main(["--backend", "leveldb", root, listfile, str(tmp_path / "db2")]) == 2
    assert capsys.readouterr().err == ("error: backend 'leveldb' is not supported: this tool writes LMDB only "
                                       "(--backend lmdb)\n")
    assert convert_tool.main([root, str(tmp_path / "nolist.txt"), str(tmp_path / "db2")]) == 2
    assert "cannot read list file" in capsys.readouterr().err


def test_convert_ctrl_c_leaves_nothing(image_set, tmp_path, monkeypatch, capsys):
    root, listfile, _, _ = image_set
    real = convert_tool.read_image_to_datum
    calls = []

    def interrupted(*a):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a)

    monkeypatch.setattr(convert_tool, "read_image_to_datum", interrupted)
    assert convert_tool.main([root, listfile, str(tmp_path / "db")]) == 130
    assert capsys.readouterr().err == "error: interrupted by Ctrl-C\n"
    assert not any(n.startswith("db") for n in os.listdir(tmp_path))


# ---- compute_image_mean -----------------------------------------------------------------------------------

def caffe_mean(arrays):
    """compute_image_mean.cpp's loops: float sum_blob += (float) value, element by element, then / count."""
    total = np.zeros(arrays[0].size, np.float32)
    for a in arrays:
        flat = a.reshape(-1)
        for i in range(flat.size):
            total[i] = np.float32(total[i] + np.float32(flat[i]))
    return total / np.float32(len(arrays))


def test_compute_image_mean_matches_caffe(image_set, tmp_path, capsys):
    root, listfile, _, images = image_set
    db = tmp_path / "db"
    assert convert_tool.main([root, listfile, str(db)]) == 0
    out_file = tmp_path / "mean.binaryproto"
    capsys.readouterr()
    assert mean_tool.main([str(db), str(out_file)]) == 0
    text = capsys.readouterr().out.splitlines()
    want = caffe_mean([img.transpose(2, 0, 1) for img in images]).reshape(1, 3, 9, 7)
    got = read_blobproto(out_file)
    assert got.shape == (1, 3, 9, 7) and got.dtype == np.float32
    np.testing.assert_array_equal(got, want)
    raw = out_file.read_bytes()
    assert raw[:8] == bytes([0x08, 1, 0x10, 3, 0x18, 9, 0x20, 7])    # legacy num/channels/height/width
    means = [float(np.cumsum(want[0, c].reshape(-1), dtype=np.float32)[-1] / np.float32(63)) for c in range(3)]
    assert text[-4:] == ["Number of channels: 3"] + [f"mean_value channel [{c}]: {m:.6g}" for c, m in
                                                     enumerate(means)]
    np.testing.assert_allclose(means, want[0].reshape(3, -1).mean(axis=1), rtol=1e-6)
    # the same set stored encoded (PNG, lossless for the PNGs; the JPEG decoded the same way) gives the same mean
    db2 = tmp_path / "db2"
    assert convert_tool.main(["--encoded", root, listfile, str(db2)]) == 0
    assert mean_tool.main([str(db2)]) == 0
    assert capsys.readouterr().out.splitlines()[-3:] == text[-3:]


def test_compute_image_mean_errors(tmp_path, capsys):
    assert mean_tool.main([str(tmp_path / "none")]) == 2
    assert capsys.readouterr().err == f"error: cannot open database '{tmp_path / 'none'}': no such folder\n"
    env = lmdb.open(str(tmp_path / "empty"))
    env.close()
    assert mean_tool.main([str(tmp_path / "empty")]) == 2
    assert capsys.readouterr().err == f"error: database '{tmp_path / 'empty'}' holds no records\n"
    env = lmdb.open(str(tmp_path / "bad"))
    with env.begin(write=True) as txn:
        txn.put(b"00000000_a.png", b"\x08\x01\x10\x01\x18\x01\x22\x01\x05")
        txn.put(b"00000001_b.png", b"garbage!")
    env.close()
    assert mean_tool.main([str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'bad'}: key 00000001_b.png: not a Caffe Datum (")
    assert err.count("\n") == 1
    assert mean_tool.main(["--backend", "leveldb", str(tmp_path / "bad")]) == 2
    assert "LMDB only" in capsys.readouterr().err


# ---- make_digits -------------------------------------------------------------------------------------------

def test_make_digits_sets(tmp_path):
    train, test = digits_tool.make(str(tmp_path), 30, 20, seed=3)
    tr = [line.split() for line in open(train)]
    te = [line.split() for line in open(test)]
    assert len(tr) == 30 and len(te) == 20
    assert [int(lab) for _, lab in tr] == [i % 10 for i in range(30)]
    imgs = [cv2.imread(str(tmp_path / p), cv2.IMREAD_UNCHANGED) for p, _ in tr + te]
    assert all(im.shape == (28, 28) and im.dtype == np.uint8 for im in imgs)
    for im in imgs:
        # white on black: dark border, bright strokes, mass near the middle as MNIST
        assert im[0].max() < 60 and im[:, 0].max() < 60 and im.max() > 200
        ys, xs = np.nonzero(im)
        w = im[ys, xs].astype(float)
        assert abs((ys * w).sum() / w.sum() - 13.5) < 3 and abs((xs * w).sum() / w.sum() - 13.5) < 3
    # train and test come from different random streams; the same seed renders the same images
    assert not any(np.array_equal(a, b) for a in imgs[:30] for b in imgs[30:])
    again = digits_tool.make(str(tmp_path / "again"), 30, 0, seed=3)[0]
    assert open(again).read() == open(train).read()
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "again" / tr[7][0]), 0), imgs[7])
