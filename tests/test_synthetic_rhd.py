"""The synthetic RHD generator (layers/hand/rhd/synthetic.py, tools/make_synthetic_rhd.py): determinism, the
release's layout and pickle, exact projection, depth and mask at visible keypoints, the hand model's bone
lengths and mirror symmetry, wrist distances, the unusable hands, the CLI."""

import os
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

from layers.hand import skeleton
from layers.hand.rhd import release
from layers.hand.rhd import synthetic as S
from netdef.errors import NetError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_SAMPLES = 60
MCP = (4, 8, 12, 16, 20)


@pytest.fixture(scope="module")
def samples():
    """(image_id, color, mask, depth, anno) for training images 0..59 of seed 11."""
    return [(i,) + S.render_sample(11, i, "training") for i in range(NUM_SAMPLES)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return S.make_tiny_release(str(tmp_path_factory.mktemp("tiny")))


@pytest.fixture(scope="module")
def release_a(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("a"))
    return S.make_dataset(out, 5, 3, seed=2, workers=1)


def _files(root):
    out = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


def _expected_label(k):
    """Mask label of keypoint k of 42 (docstring of synthetic.py): palm for the wrist; tip and DIP on the
    distal phalanx, PIP on the middle one, MCP on the proximal one."""
    hand, j = divmod(k, 21)
    base = 2 if hand == 0 else 18
    if j == 0:
        return base + 15
    finger, part = divmod(j - 1, 4)          # part: 0 tip, 1 DIP, 2 PIP, 3 MCP
    return base + 3 * finger + (0, 0, 1, 2)[part]


def _hand_stats(anno, hand):
    """(keypoints outside the image, longer side of the 2D box, wrist distance) of one hand."""
    uv = anno["uv_vis"][21 * hand:21 * hand + 21, :2]
    outside = np.count_nonzero(~np.all((uv >= 0) & (uv <= 319), axis=1))
    return outside, np.ptp(uv, axis=0).max(), np.linalg.norm(anno["xyz"][21 * hand])


# ---- determinism ----------------------------------------------------------------------------------------------

def test_same_seed_gives_identical_bytes_whatever_the_worker_count(release_a, tmp_path):
    b = S.make_dataset(str(tmp_path / "b"), 5, 3, seed=2, workers=2)
    fa, fb = _files(release_a), _files(b)
    assert len(fa) == 3 * 8 + 2
    assert sorted(fa) == sorted(fb)
    assert all(fa[name] == fb[name] for name in fa)


def test_without_depth_the_other_files_are_the_same(release_a, tmp_path):
    d = _files(S.make_dataset(str(tmp_path / "d"), 5, 3, seed=2, workers=1, depth=False))
    fa = _files(release_a)
    assert sorted(d) == sorted(n for n in fa if os.sep + "depth" + os.sep not in n)
    assert all(d[n] == fa[n] for n in d)


def test_different_seeds_differ(release_a, tmp_path):
    c = _files(S.make_dataset(str(tmp_path / "c"), 5, 3, seed=3, workers=1))
    fa = _files(release_a)
    colors = [n for n in fa if os.sep + "color" + os.sep in n]
    assert len(colors) == 8 and all(fa[n] != c[n] for n in colors)
    assert fa["training/anno_training.pickle"] != c["training/anno_training.pickle"]


def test_render_sample_takes_a_seed_or_an_rng_and_splits_differ():
    by_seed = S.render_sample(5, 7, "evaluation")
    by_rng = S.render_sample(S.image_rng(5, "evaluation", 7), 7, "evaluation")
    for x, y in zip(by_seed[:3], by_rng[:3]):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(by_seed[3]["xyz"], by_rng[3]["xyz"])
    other = S.render_sample(5, 7, "training")
    assert not np.array_equal(by_seed[3]["xyz"], other[3]["xyz"])


# ---- the release's layout and pickle --------------------------------------------------------------------------

def test_layout_images_and_pickle_structure(tiny):
    assert os.path.basename(tiny) == "RHD_published_v2"
    for split, n in (("training", 6), ("evaluation", 4)):
        anno = release.read_annotations(release.annotation_path(tiny, split))
        assert list(anno) == list(range(n))
        for i, a in anno.items():
            assert set(a) == {"xyz", "uv_vis", "K"}
            for key, shape in (("xyz", (42, 3)), ("uv_vis", (42, 3)), ("K", (3, 3))):
                assert isinstance(a[key], np.ndarray) and a[key].shape == shape and a[key].dtype == np.float64
            assert set(np.unique(a["uv_vis"][:, 2])) <= {0.0, 1.0}
            K = a["K"]
            assert K[0, 0] == K[1, 1] and S.FOCAL_RANGE[0] <= K[0, 0] <= S.FOCAL_RANGE[1]
            assert np.all(np.abs(K[:2, 2] - 160.0) <= S.PRINCIPAL_JITTER)
            np.testing.assert_array_equal(K[[0, 1, 2, 2], [1, 0, 0, 1]], 0.0)
            assert K[2, 2] == 1.0
            color = cv2.imread(release.image_path(tiny, split, "color", i), cv2.IMREAD_UNCHANGED)
            mask = cv2.imread(release.image_path(tiny, split, "mask", i), cv2.IMREAD_UNCHANGED)
            depth = cv2.imread(release.image_path(tiny, split, "depth", i), cv2.IMREAD_UNCHANGED)
            assert color.shape == (320, 320, 3) and color.dtype == np.uint8
            assert mask.shape == (320, 320) and mask.dtype == np.uint8 and mask.max() <= 33
            assert depth.shape == (320, 320, 3) and depth.dtype == np.uint8
            # both hands' palms and at least one finger label of each hand are drawn (usable or not, a
            # hand mostly outside the image may be missing)
            assert (mask == 17).any() or (mask == 33).any()


def test_uv_is_the_pinhole_projection_of_xyz(samples, tiny):
    annos = [s[4] for s in samples] + list(release.read_annotations(release.annotation_path(tiny, "training")).values())
    for a in annos:
        p = (a["K"] @ a["xyz"].T).T
        np.testing.assert_allclose(a["uv_vis"][:, :2], p[:, :2] / p[:, 2:], rtol=0, atol=1e-6)


# ---- rendered depth and mask at the keypoints -----------------------------------------------------------------

def test_depth_png_holds_the_keypoint_depth_at_visible_keypoints(tiny):
    checked = 0
    for split, n in (("training", 6), ("evaluation", 4)):
        anno = release.read_annotations(release.annotation_path(tiny, split))
        for i in range(n):
            depth = release.decode_depth(release.read_image(release.image_path(tiny, split, "depth", i)))
            mask = cv2.imread(release.image_path(tiny, split, "mask", i), cv2.IMREAD_UNCHANGED)
            a = anno[i]
            vis = a["uv_vis"][:, 2] == 1
            u, v = np.rint(a["uv_vis"][vis, :2]).astype(int).T
            np.testing.assert_allclose(depth[v, u], a["xyz"][vis, 2], rtol=0, atol=1e-4)
            checked += vis.sum()
            back = depth[mask == 0]
            assert back.min() >= S.BACKGROUND_DEPTH_RANGE[0] - 1e-4 and back.max() <= 5.0
            hand = depth[mask >= 2]
            assert hand.min() > 0.05 and hand.max() < S.BACKGROUND_DEPTH_RANGE[0]
    assert checked > 200


def test_mask_at_visible_keypoints_is_the_keypoints_own_part(samples):
    expected = np.array([_expected_label(k) for k in range(42)])
    seen = 0
    for _, _, mask, depth, a in samples:
        vis = a["uv_vis"][:, 2] == 1
        u, v = np.rint(a["uv_vis"][vis, :2]).astype(int).T
        labels = mask[v, u]
        np.testing.assert_array_equal(labels, expected[vis])
        left = np.flatnonzero(vis) < 21
        assert np.all((labels[left] >= 2) & (labels[left] <= 17))
        assert np.all((labels[~left] >= 18) & (labels[~left] <= 33))
        np.testing.assert_array_equal(depth[v, u], a["xyz"][vis, 2])      # exact before PNG quantisation
        seen += vis.sum()
    assert seen > 0.6 * 42 * NUM_SAMPLES * 0.9


def test_occluded_keypoints_inside_the_image_are_invisible(samples):
    """A keypoint inside the image is invisible exactly when something else covers its pixel: the depth
    or the label there is not its own. Occlusion must actually happen (self-occlusion of curled fingers)."""
    hidden = inside_total = 0
    expected = np.array([_expected_label(k) for k in range(42)])
    for _, _, mask, depth, a in samples:
        uv = a["uv_vis"][:, :2]
        inside = np.all((uv >= 0) & (uv <= 319), axis=1)
        occluded = inside & (a["uv_vis"][:, 2] == 0)
        u, v = np.rint(uv[occluded]).astype(int).T
        own = (mask[v, u] == expected[occluded]) & (np.abs(depth[v, u] - a["xyz"][occluded, 2]) < 1e-9)
        assert not own.any()
        hidden += occluded.sum()
        inside_total += inside.sum()
    assert 0.05 < hidden / inside_total < 0.5


# ---- the hand model -------------------------------------------------------------------------------------------

def _bones(xyz21):
    a, b = np.array(skeleton.BONES).T
    return np.linalg.norm(xyz21[a] - xyz21[b], axis=1)


def test_bone_lengths_are_in_the_stated_ranges(samples):
    lo = S.TEMPLATE_BONES * S.HAND_SCALE_RANGE[0] * (1 - S.BONE_NOISE_MAX)
    hi = S.TEMPLATE_BONES * S.HAND_SCALE_RANGE[1] * (1 + S.BONE_NOISE_MAX)
    refs = []
    for *_, a in samples:
        for hand in range(2):
            bones = _bones(a["xyz"][21 * hand:21 * hand + 21])
            assert np.all((bones >= lo - 1e-12) & (bones <= hi + 1e-12))
            phalanges = bones.reshape(5, 4)[:, :3]
            assert phalanges.min() > 0.017 and phalanges.max() < 0.056
            refs.append(bones[7])                          # (8, 0): index MCP - wrist
    refs = np.array(refs)
    assert 0.085 * 0.85 * 0.94 <= refs.min() and refs.max() <= 0.095 * 1.15 * 1.06
    assert 0.085 <= np.median(refs) <= 0.095
    assert refs.max() / refs.min() > 1.2                   # hand sizes vary


def test_hand_model_geometry_matches_its_parameters():
    rng = np.random.default_rng(3)
    for _ in range(50):
        p = S.sample_hand_params(rng)
        pts = S.hand_model(p)
        np.testing.assert_allclose(_bones(pts), p.bone_lengths(), rtol=0, atol=1e-12)
        for f in range(1, 5):                              # fingers: PIP and DIP flexion from the geometry
            b = 1 + 4 * f
            seg = np.diff(pts[[b + 3, b + 2, b + 1, b]], axis=0)   # MCP->PIP, PIP->DIP, DIP->tip
            angles = np.degrees(np.arctan2(np.linalg.norm(np.cross(seg[:-1], seg[1:]), axis=1),
                                           np.sum(seg[:-1] * seg[1:], axis=1)))
            np.testing.assert_allclose(angles, np.abs(p.flex[f, 1:]), atol=1e-6)
            assert 0 <= p.flex[f, 1] <= 110 and 0 <= p.flex[f, 2] <= 80 and -20 <= p.flex[f, 0] <= 90


def test_left_hand_is_the_mirror_image_of_the_right_hand(samples):
    rng = np.random.default_rng(4)
    for _ in range(20):
        p = S.sample_hand_params(rng)
        right, left = S.hand_model(p), S.hand_model(p, left=True)
        np.testing.assert_array_equal(left, right * [-1.0, 1.0, 1.0])
        np.testing.assert_allclose(_bones(left), _bones(right), rtol=0, atol=1e-15)

    def chirality(h):   # sign of det(thumb base, index MCP, little MCP) about the wrist: rotation-invariant
        return np.sign(np.linalg.det(h[[4, 8, 20]] - h[0]))
    for *_, a in samples:
        assert chirality(a["xyz"][:21]) == -1 and chirality(a["xyz"][21:]) == 1



def test_palmar_normals_are_perpendicular_to_their_bones_and_point_the_way_fingers_flex():
    rng = np.random.default_rng(5)
    for _ in range(50):
        p = S.sample_hand_params(rng)
        for left in (False, True):
            pts, normals = S.hand_geometry(p, left)
            np.testing.assert_array_equal(pts, S.hand_model(p, left))
            np.testing.assert_allclose(np.linalg.norm(normals, axis=1), 1.0, atol=1e-12)
            bones = np.array([pts[a] - pts[b] for a, b in skeleton.BONES])
            phalanges = np.arange(20) % 4 != 3
            np.testing.assert_allclose(np.sum(bones * normals, axis=1)[phalanges], 0.0, atol=1e-12)
            np.testing.assert_array_equal(normals[~phalanges], [[0.0, 0.0, 1.0]] * 5)   # the palm faces +z
            for f in range(5):                           # the next phalanx turns toward the normal by its flexion
                b = 1 + 4 * f
                seg = np.diff(pts[[b + 3, b + 2, b + 1, b]], axis=0)     # MCP->PIP, PIP->DIP, DIP->tip
                seg /= np.linalg.norm(seg, axis=1, keepdims=True)
                for k, bone in ((0, 4 * f + 2), (1, 4 * f + 1)):
                    flex = p.flex[f, k + 1]
                    np.testing.assert_allclose(seg[k + 1] @ normals[bone], np.sin(np.radians(flex)), atol=1e-9)
        flat = S.HandParams(**{**p.__dict__, "flex": np.zeros((5, 3)), "cup": 0.0})   # a flat palm
        _, n = S.hand_geometry(flat)
        np.testing.assert_allclose(n[4:], np.tile([0.0, 0.0, 1.0], (16, 1)), atol=1e-12)   # fingers 1-4


def test_palms_render_pinker_than_backs_and_nails_only_on_backs(monkeypatch):
    """What tells a palm-on view from the mirror-image back-on view of the other hand (same silhouette, depths
    negated). Each image is rendered twice, with the cues and without (same random numbers, so the same noise):
    on a palm seen from its back every colour is BACK_DARKNESS times the plain one; on a palm seen from the
    front the plain skin is blended half-way to _PALM_BGR, so 2 * cued - plain is _PALM_BGR times the shading;
    nails (pixels that got brighter) appear on the fingertips of back-on hands only."""
    def render(image_id, colours=True, nails=True):
        with monkeypatch.context() as m:
            if not colours:
                m.setattr(S, "PALM_PALENESS", 0.0)
                m.setattr(S, "BACK_DARKNESS", 1.0)
            if not nails:
                m.setattr(S, "NAIL_SPAN", (2.0, 3.0))
            return S.render_sample(7, image_id, "training")
    seen = {True: 0, False: 0}
    nails = {True: 0, False: 0}
    for image_id in range(40):
        cued, mask, _, a = render(image_id)
        no_nails = render(image_id, nails=False)[0].astype(np.float64)
        plain, plain_mask = render(image_id, colours=False, nails=False)[:2]
        np.testing.assert_array_equal(mask, plain_mask)
        cued, plain = cued.astype(np.float64), plain.astype(np.float64)
        for h in range(2):
            xyz = a["xyz"][21 * h:21 * h + 21]
            cross = np.cross(xyz[8] - xyz[0], xyz[20] - xyz[0])
            palm_normal = cross / np.linalg.norm(cross) * (-1 if h == 0 else 1)      # left hands are mirrored
            facing = palm_normal @ (-xyz[0] / np.linalg.norm(xyz[0]))
            base = 2 if h == 0 else 18
            inner = cv2.erode((mask == base + 15).astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
            # nails: on straight fingers 1-4 (whose fingertips face as the palm does), on back-on hands only
            straight = [f for f in range(1, 5) if _unit(xyz[1 + 4 * f] - xyz[2 + 4 * f]) @
                        _unit(xyz[3 + 4 * f] - xyz[4 + 4 * f]) > np.cos(np.radians(20))]
            tips = np.isin(mask, [base + 3 * f for f in straight])
            if abs(facing) >= 0.5:
                nails[facing > 0] += np.count_nonzero(tips & (np.abs(cued - no_nails).sum(axis=2) > 40))
            if abs(facing) < 0.7 or inner.sum() < 40 or plain[inner].max() >= 255:
                continue
            seen[facing > 0] += 1
            if facing > 0:
                pink = (2 * cued[inner] - plain[inner]).mean(axis=0)
                np.testing.assert_allclose(pink / np.linalg.norm(pink), S._PALM_BGR / np.linalg.norm(S._PALM_BGR),
                                           atol=0.03)
            else:
                np.testing.assert_allclose(cued[inner].mean(axis=0) / plain[inner].mean(axis=0), S.BACK_DARKNESS,
                                           atol=0.03)
    assert seen[True] >= 5 and seen[False] >= 3
    assert nails[False] > 30 and nails[True] < nails[False] / 50      # (a pixel where a tip turns sideways)


def _unit(v):
    return v / np.linalg.norm(v)


# ---- placement: distances, unusable hands ---------------------------------------------------------------------

def test_wrist_distance_and_the_unusable_hands(samples):
    unusable = 0
    for image_id, _, mask, _, a in samples:
        kind = S.unusable_kind(image_id)
        stats = [_hand_stats(a, h) for h in range(2)]
        bad = [h for h, (outside, side, dist) in enumerate(stats)
               if outside >= 11 or side < S.MIN_USABLE_SIDE]
        assert len(bad) == (kind is not None), image_id
        for h, (outside, side, dist) in enumerate(stats):
            if h in bad and kind == "far":
                assert outside == 0 and side < S.FAR_MAX_SIDE
                assert S.FAR_DISTANCE_RANGE[0] <= dist <= S.FAR_DISTANCE_RANGE[1]
                assert release.hand_mask(mask, h).sum() < 250
            elif h in bad:
                assert kind == "outside" and outside > 10 and 0.3 <= dist <= 0.8
            else:   # usable: fully inside, big enough, 0.3-0.8 m away
                assert outside == 0 and side >= S.MIN_USABLE_SIDE and 0.3 <= dist <= 0.8
                assert release.hand_mask(mask, h).sum() >= 250
        unusable += len(bad)
    assert unusable == 2 * NUM_SAMPLES // 20                  # ids 3 and 5 of every 20: 5% of the hands


def test_tiny_release_is_fast_and_has_both_kinds_of_unusable_hand(tmp_path):
    start = time.perf_counter()
    root = S.make_tiny_release(str(tmp_path))
    assert time.perf_counter() - start < 3.0
    train = release.read_annotations(release.annotation_path(root, "training"))
    evaluation = release.read_annotations(release.annotation_path(root, "evaluation"))
    assert (len(train), len(evaluation)) == (6, 4)
    assert max(_hand_stats(train[3], h)[0] for h in range(2)) >= 11                 # mostly outside
    assert min(_hand_stats(train[5], h)[1] for h in range(2)) < S.FAR_MAX_SIDE                  # far and tiny
    assert max(_hand_stats(evaluation[3], h)[0] for h in range(2)) >= 11


# ---- user errors and the CLI ----------------------------------------------------------------------------------

def test_make_dataset_user_errors(tmp_path):
    with pytest.raises(NetError, match="num_train must be a non-negative integer, got -1"):
        S.make_dataset(str(tmp_path), -1, 1, 0)
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(NetError, match="exists and is not a folder"):
        S.make_dataset(str(afile), 1, 1, 0)


def test_cli_writes_a_release(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "make_synthetic_rhd.py"), "--out",
                           str(tmp_path), "--train", "2", "--eval", "1", "--seed", "4", "--workers", "1"],
                          capture_output=True, text=True, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    root = os.path.join(str(tmp_path), "RHD_published_v2")
    assert proc.stdout.startswith(f"wrote 2 training and 1 evaluation images to {root} in ")
    assert os.path.isfile(release.image_path(root, "evaluation", "depth", 0))
    assert list(release.read_annotations(release.annotation_path(root, "training"))) == [0, 1]


def test_cli_user_error_is_one_line_and_status_2(tmp_path, capsys):
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    try:
        import make_synthetic_rhd
    finally:
        sys.path.pop(0)
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert make_synthetic_rhd.main(["--out", str(afile), "--train", "1", "--eval", "1"]) == 2
    err = capsys.readouterr().err
    assert err == f"error: output path '{afile}' exists and is not a folder\n"
    with pytest.raises(SystemExit) as e:
        make_synthetic_rhd.main(["--out", str(tmp_path), "--train", "-3", "--eval", "1"])
    assert e.value.code == 2
    assert "expected a non-negative integer, got '-3'" in capsys.readouterr().err
