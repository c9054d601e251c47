"""Weights files in Caffe's HDF5 layout: round trip, files written by hand in Caffe's layout, shared and
nested ('/') layer names, legacy shapes, mismatch / missing / corrupt file messages, atomic writes."""

import os
import textwrap

import h5py
import numpy as np
import pytest
import torch

from layers.base import Layer
from layers.registry import register_layer
from netdef.errors import NetError
from nets.net import Net
from nets.weights import LoadReport, load_weights, save_weights


@register_layer("TestWeightsAffine")
class AffineForWeights(Layer):
    """y = x * w[c] + b[c] over axis 1; blobs w (C,), b (C,) learnable and a non-learnable `seen` (1,),
    like BatchNorm's statistics (test-only)."""

    def setup(self, bottom_shapes):
        c = bottom_shapes[0][1]
        self.add_blob("w", (c,), value=1.0)
        self.add_blob("b", (c,), value=0.0)
        self.add_blob("seen", (1,), learnable=False, value=0.0)

    def forward(self, x):
        view = (1, -1) + (1,) * (x.dim() - 2)
        return x * self.w.view(view) + self.b.view(view)


NET = """
    name: "w"
    input: "data" input_shape { dim: 2 dim: 3 dim: 4 dim: 4 }
    layer { name: "a1" type: "TestWeightsAffine" bottom: "data" top: "a1" }
    layer { name: "inception_3a/1x1" type: "TestWeightsAffine" bottom: "a1" top: "b" param { name: "sw" } }
    layer { name: "shared" type: "TestWeightsAffine" bottom: "b" top: "c" param { name: "sw" } }
"""


def make_net(text=NET):
    return Net(textwrap.dedent(text), phase="TEST", device="cpu")


def randomize(net):
    with torch.no_grad():
        for blobs in net.params.values():
            for t in blobs:
                t.copy_(torch.randn(t.shape))


def snapshot(net):
    return {name: [t.detach().clone() for t in blobs] for name, blobs in net.params.items()}


def write_caffe_file(path, layers):
    """A weights file as Caffe's Net::ToHDF5 writes it: /data/<layer>/<i>."""
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        for name, blobs in layers.items():
            g = data.create_group(name)
            for i, b in enumerate(blobs):
                g.create_dataset(str(i), data=np.asarray(b, dtype=np.float32))


def test_round_trip_restores_values_in_the_same_tensors(tmp_path):
    net = make_net()
    randomize(net)
    saved = snapshot(net)
    ids = {name: [id(t) for t in blobs] for name, blobs in net.params.items()}
    x = torch.randn(2, 3, 4, 4)
    before = net.forward(data=x)["c"].clone()
    path = tmp_path / "w.h5"
    save_weights(net, path)
    randomize(net)
    assert not torch.equal(net.params["a1"][0], saved["a1"][0])
    report = load_weights(net, path)
    assert report == LoadReport(str(path), loaded=["a1", "inception_3a/1x1", "shared"])
    for name, blobs in net.params.items():
        assert [id(t) for t in blobs] == ids[name]
        for t, s in zip(blobs, saved[name]):
            assert torch.equal(t, s)
    assert net.params["shared"][0] is net.params["inception_3a/1x1"][0]   # sharing kept
    assert isinstance(net.params["a1"][0], torch.nn.Parameter) and net.params["a1"][0].requires_grad
    assert torch.equal(net.forward(data=x)["c"], before)


def test_file_layout_is_caffes(tmp_path):
    net = make_net()
    randomize(net)
    path = tmp_path / "w.h5"
    save_weights(net, path)
    with h5py.File(path, "r") as f:
        assert list(f) == ["data"]
        data = f["data"]
        assert len(data["data"]) == 0                   # the Input layer: an empty group, as Caffe writes
        assert sorted(data["a1"]) == ["0", "1", "2"]
        assert data["a1/0"].dtype == np.float32
        np.testing.assert_array_equal(data["a1/2"][()], net.params["a1"][2].numpy())   # the BN-like buffer
        # '/' in a layer name is a nested group; the shared blob 0 is written only by its owner
        assert sorted(data["inception_3a"]["1x1"]) == ["0", "1", "2"]
        assert sorted(data["shared"]) == ["1", "2"]
    assert os.listdir(tmp_path) == ["w.h5"]             # no temporary file left behind


def test_float64_net_is_stored_as_float32_and_loads_back_as_float64(tmp_path):
    net = make_net().double()
    with torch.no_grad():
        net.params["a1"][0].copy_(torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64))
    save_weights(net, tmp_path / "w.h5")
    with h5py.File(tmp_path / "w.h5", "r") as f:
        assert f["data/a1/0"].dtype == np.float32
    net.params["a1"][0].data.zero_()
    load_weights(net, tmp_path / "w.h5")
    assert net.params["a1"][0].dtype == torch.float64
    expected = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float32).double()
    assert torch.equal(net.params["a1"][0].detach(), expected)


def test_file_written_in_caffe_layout_loads_ignores_extra_and_keeps_missing(tmp_path):
    net = make_net()
    kept = snapshot(net)["shared"]
    path = tmp_path / "caffe.h5"
    write_caffe_file(path, {
        "data": [],
        "a1": [[1, 2, 3], [4, 5, 6], [7]],
        "old_fc": [np.ones((10, 3))],                # not in the net: ignored
    })
    with h5py.File(path, "a") as f:                  # nested name, written the way h5py reads it back
        g = f["data"].create_group("inception_3a/1x1")
        for i, b in enumerate([[-1, -2, -3], [0, 0, 1], [9]]):
            g.create_dataset(str(i), data=np.asarray(b, dtype=np.float32))
    report = load_weights(net, path)
    assert report.loaded == ["a1", "inception_3a/1x1"]
    assert report.ignored == ["old_fc"]
    assert report.missing == ["shared"]
    assert "ignored 1 file layer(s) the net lacks: old_fc" in str(report)
    assert net.params["a1"][0].tolist() == [1, 2, 3]
    assert net.params["a1"][1].tolist() == [4, 5, 6]
    assert net.params["a1"][2].tolist() == [7]
    assert net.params["inception_3a/1x1"][1].tolist() == [0, 0, 1]
    # 'shared' is absent: its own blobs keep their values; its blob 0 is the owner's, just loaded
    assert torch.equal(net.params["shared"][1], kept[1])
    assert net.params["shared"][0].tolist() == [-1, -2, -3]
    y = net.forward(data=torch.ones(2, 3, 4, 4))["c"]
    assert y[0, :, 0, 0].tolist() == [5, 28, 78]      # ((x * w1 + b1) * w2 + b2) * w2 + b_kept, b_kept = 0


def test_legacy_shapes_with_leading_ones_load(tmp_path):
    net = make_net()
    path = tmp_path / "legacy.h5"
    write_caffe_file(path, {"a1": [np.arange(3).reshape(1, 1, 1, 3), np.ones((1, 3)), np.full((1, 1, 1, 1), 5)]})
    load_weights(net, path)
    assert net.params["a1"][0].tolist() == [0, 1, 2]
    assert net.params["a1"][2].tolist() == [5]


def test_legacy_4d_inner_product_weights_and_conv_round_trip(tmp_path):
    text = """
        input: "data" input_shape { dim: 2 dim: 1 dim: 6 dim: 6 }
        layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
                convolution_param { num_output: 2 kernel_size: 3 weight_filler { type: "xavier" } } }
        layer { name: "ip1" type: "InnerProduct" bottom: "conv1" top: "ip1"
                inner_product_param { num_output: 4 weight_filler { type: "gaussian" } } }
    """
    net = make_net(text)
    assert [tuple(t.shape) for t in net.params["ip1"]] == [(4, 32), (4,)]
    w = np.arange(4 * 32, dtype=np.float32).reshape(1, 1, 4, 32)          # old Caffe's 4-D blob
    write_caffe_file(tmp_path / "old.h5", {"ip1": [w, np.ones((1, 1, 1, 4))]})
    load_weights(net, tmp_path / "old.h5")
    assert torch.equal(net.params["ip1"][0], torch.from_numpy(w.reshape(4, 32)))
    x = torch.randn(2, 1, 6, 6)
    before = net.forward(data=x)["ip1"].clone()
    save_weights(net, tmp_path / "new.h5")
    other = make_net(text)
    assert load_weights(other, tmp_path / "new.h5").loaded == ["conv1", "ip1"]
    assert torch.equal(other.forward(data=x)["ip1"], before)


def test_shape_mismatch_names_file_layer_blob_and_both_shapes_and_changes_nothing(tmp_path):
    net = make_net()
    before = snapshot(net)
    path = str(tmp_path / "w.h5")
    write_caffe_file(path, {"a1": [[9, 9, 9], [9, 9, 9], [9]],            # valid, but must not be copied
                            "inception_3a/1x1": [np.ones((4,)), np.ones(3), np.ones(1)]})
    with pytest.raises(NetError) as e:
        load_weights(net, path)
    assert str(e.value) == f"{path}: layer 'inception_3a/1x1' blob 0: file has shape (4,), net has (3,)"
    for name, blobs in net.params.items():
        assert all(torch.equal(t, s) for t, s in zip(blobs, before[name]))


def test_blob_count_mismatch(tmp_path):
    net = make_net()
    path = str(tmp_path / "w.h5")
    write_caffe_file(path, {"a1": [[1, 2, 3], [1, 2, 3], [1], [0]]})
    with pytest.raises(NetError, match=r"^.*w\.h5: layer 'a1': file has 4 blob\(s\), net has 3$"):
        load_weights(net, path)
    write_caffe_file(path, {"a1": [[1, 2, 3]]})        # blob 1 missing and not shared
    with pytest.raises(NetError, match=r"layer 'a1': file has 1 blob\(s\), net has 3$"):
        load_weights(net, path)
    with h5py.File(path, "a") as f:
        f["data/a1"].create_dataset("weight", data=np.zeros(3))
    with pytest.raises(NetError, match=r"layer 'a1': unexpected dataset 'weight' \(blobs are named 0, 1, "):
        load_weights(net, path)


def test_missing_file(tmp_path):
    path = str(tmp_path / "nope.h5")
    with pytest.raises(NetError) as e:
        load_weights(make_net(), path)
    assert str(e.value) == f"cannot read weights '{path}': no such file"


def test_truncated_corrupt_and_foreign_files(tmp_path):
    net = make_net()
    good = tmp_path / "good.h5"
    save_weights(net, good)
    raw = good.read_bytes()
    cut = tmp_path / "cut.h5"
    cut.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(NetError, match=rf"^cannot read weights '{cut}': .*truncated"):
        load_weights(net, cut)
    with h5py.File(good, "r") as f:
        header = h5py.h5o.get_info(f["data/a1"].id).addr
    broken = bytearray(raw)
    broken[header:header + 8] = b"\xff" * 8           # a layer group's object header
    bad = tmp_path / "bad.h5"
    bad.write_bytes(bytes(broken))
    with pytest.raises(NetError, match=rf"^cannot read weights '{bad}': .*bad object header"):
        load_weights(net, bad)
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not an hdf5 file at all")
    with pytest.raises(NetError, match=rf"^cannot read weights '{junk}': .*signature"):
        load_weights(net, junk)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.create_dataset("x", data=np.zeros(2))
    with pytest.raises(NetError, match=r"no 'data' group \(not a Caffe HDF5 weights file\)"):
        load_weights(net, other)


def test_save_is_atomic(tmp_path, monkeypatch):
    net = make_net()
    path = tmp_path / "w.h5"
    save_weights(net, path)
    original = path.read_bytes()
    randomize(net)

    def fail(src, dst):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(NetError, match=r"^cannot write weights '.*w\.h5': No space left on device$"):
        save_weights(net, path)
    assert path.read_bytes() == original
    assert os.listdir(tmp_path) == ["w.h5"]


def test_save_errors(tmp_path):
    missing = tmp_path / "missing_dir"
    with pytest.raises(NetError) as e:
        save_weights(make_net(), missing / "w.h5")
    assert str(e.value) == f"cannot write weights '{missing / 'w.h5'}': no such directory '{missing}'"
    bad = make_net("""
        input: "data" input_shape { dim: 1 dim: 2 }
        layer { name: "/abs" type: "TestWeightsAffine" bottom: "data" top: "y" }
    """)
    with pytest.raises(NetError, match=r"layer name '/abs' cannot be an HDF5 group path"):
        save_weights(bad, tmp_path / "w.h5")
    assert os.listdir(tmp_path) == []


@pytest.mark.filterwarnings("ignore:.*duplicate layer name")
def test_weightless_layers_may_share_a_name(tmp_path):
    net = make_net("""
        layer { name: "dup" type: "DummyData" top: "x" dummy_data_param { shape { dim: 1 dim: 3 } } }
        layer { name: "dup" type: "DummyData" top: "y" dummy_data_param { shape { dim: 1 dim: 3 } } }
        layer { name: "a1" type: "TestWeightsAffine" bottom: "x" top: "z" }
    """)
    randomize(net)
    saved = snapshot(net)
    save_weights(net, tmp_path / "w.h5")
    with h5py.File(tmp_path / "w.h5", "r") as f:
        assert sorted(f["data"]) == ["a1", "dup"] and len(f["data/dup"]) == 0
    randomize(net)
    assert load_weights(net, tmp_path / "w.h5").loaded == ["a1"]
    assert all(torch.equal(t, s) for t, s in zip(net.params["a1"], saved["a1"]))
