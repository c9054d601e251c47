"""End to end, memo steps 1-11: synthetic release -> converter -> prototxt/rhd_data_check.prototxt.

The values a net reads are checked against the generator's pickle (an independent source): 2D crop coordinates
back to pixels, 3D in mm, K, the hand scale, the heatmap peaks; and the packed HDF5 file gives the same blobs
as the per-sample files."""

import os

import numpy as np
import pytest
import torch

from conftest import prototxt_for
from layers.hand.rhd import release
from layers.hand.skeleton import REF_BONE
from netdef.errors import NetError
from nets.net import Net

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECK_NET = os.path.join(ROOT, "prototxt", "rhd_data_check.prototxt")


@pytest.fixture(scope="module")
def rhd(rhd_converted):
    out, release_root = rhd_converted
    anno = release.read_annotations(release.annotation_path(release_root, "training"))
    return out, anno


def check_net(out, packed=False, batch=16):
    text = prototxt_for(CHECK_NET, out, **{"packed: false": f"packed: {'true' if packed else 'false'}",
                                          "batch_size: 16": f"batch_size: {batch}"})
    return Net(text, phase="TEST", device="cpu", workers=0)


def read_all(out, packed):
    usable = np.loadtxt(os.path.join(out, "training", "all_hand", "all_train_index.txt"), dtype=int)
    net = check_net(out, packed, batch=len(usable))
    net.forward()
    return usable, {k: v.clone() for k, v in net.blobs.items()}


def test_values_match_the_generators_pickle(rhd):
    out, anno = rhd
    usable, b = read_all(out, packed=False)
    assert torch.equal(b["index"].view(-1), torch.tensor(usable, dtype=torch.float32))
    for row, idx in enumerate(usable):
        image_id, hand = divmod(int(idx), 2)
        a = anno[image_id]
        sl = slice(21 * hand, 21 * hand + 21)
        x1, y1, x2, y2 = b["bbox"][row].tolist()
        uv = b["joint_2d"][row].view(21, 2).double().numpy()
        pixels = np.stack([uv[:, 0] * (x2 - x1 + 1) + x1, uv[:, 1] * (y2 - y1 + 1) + y1], 1)
        # crop coordinates are stored with 6 decimals: at most 0.5e-6 * (crop width ~ 200 px) apart
        np.testing.assert_allclose(pixels, a["uv_vis"][sl, :2], atol=2e-4)
        np.testing.assert_allclose(b["joint_3d"][row].view(21, 3).numpy(), a["xyz"][sl] * 1000.0, atol=1e-3)
        k = a["K"]
        np.testing.assert_allclose(b["intrinsics"][row].numpy(), [k[0, 0], k[1, 1], k[0, 2], k[1, 2]], rtol=1e-6)
        n, m = REF_BONE
        s = np.linalg.norm(a["xyz"][sl][n] - a["xyz"][sl][m]) * 1000.0
        assert b["scale"][row].item() == pytest.approx(s, rel=1e-5)
        zr = (a["xyz"][sl][:, 2] - a["xyz"][sl][0, 2]) * 1000.0 / s
        np.testing.assert_allclose(b["depth_zr"][row].numpy(), zr, atol=1e-5)


def test_heatmap_peaks_sit_on_the_2d_points(rhd):
    out, _ = rhd
    _, b = read_all(out, packed=False)
    hm = b["heatmap"]
    size = hm.shape[-1]
    flat = hm.flatten(2).argmax(-1)
    peak_r, peak_c = flat // size, flat % size
    uv = b["joint_2d"].view(-1, 21, 2)
    inside = (uv >= 0).all(-1) & (uv * size <= size - 1).all(-1)
    assert inside.float().mean() > 0.9
    assert torch.equal(peak_c[inside], (uv[..., 0] * size).round().long()[inside])
    assert torch.equal(peak_r[inside], (uv[..., 1] * size).round().long()[inside])
    # depth maps carry the normalised depth at the peak
    z01 = b["depth_01"]
    at_peak = b["depth_map"].flatten(2).gather(-1, flat[..., None])[..., 0]
    torch.testing.assert_close(at_peak[inside], (z01 * hm.flatten(2).max(-1).values)[inside])


def test_packed_file_gives_identical_blobs(rhd):
    out, _ = rhd
    _, text = read_all(out, packed=False)
    _, packed = read_all(out, packed=True)
    assert text.keys() == packed.keys()
    for name in text:
        assert torch.equal(text[name], packed[name]), name


def test_workers_give_the_same_batches_as_inline_reading(rhd):
    out, _ = rhd
    inline = check_net(out, packed=True, batch=4)
    text = prototxt_for(CHECK_NET, out, **{"packed: false": "packed: true", "batch_size: 16": "batch_size: 4"})
    pooled = Net(text, phase="TEST", device="cpu", workers=2)
    try:
        for _ in range(4):
            a, b = inline.forward(), pooled.forward()
            for name in ("image_01", "depth_map", "bbox", "intrinsics"):
                assert torch.equal(a[name], b[name]), name
    finally:
        pooled.close()


def test_missing_data_names_the_path_and_sample(rhd, tmp_path):
    out, _ = rhd
    usable = np.loadtxt(os.path.join(out, "training", "all_hand", "all_train_index.txt"), dtype=int)
    net = check_net(out, batch=2)
    victim = os.path.join(out, "training", "all_hand", "gt_3d", f"{usable[0]}.txt")
    saved = open(victim).read()
    os.remove(victim)
    try:
        with pytest.raises(NetError, match=rf"missing file '{victim}' \(sample {usable[0]}\)"):
            net.forward()
    finally:
        open(victim, "w").write(saved)
