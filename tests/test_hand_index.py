"""Memo step 1: index generators (GenRandIndex, GenSequentialIndex, ReadIndexFromFile) and
CrossValidationRandomChooseIndex: ranges, exclusions, seeds, state round trips, cursor files."""

import json
import os

import numpy as np
import pytest
import torch

from layers.build import make_layer
from netdef.errors import NetError
from nets.net import Net


def rand_index(body, name="idx"):
    return make_layer(f'name: "{name}" type: "GenRandIndex" top: "i" gen_rand_index_param {{ {body} }}')


def draws(layer, batches=1):
    return np.concatenate([layer().numpy().ravel() for _ in range(batches)]).astype(np.int64)


def write(path, text):
    with open(path, "w") as f:
        f.write(text)
    return str(path)


# ---- GenRandIndex ---------------------------------------------------------------------------------------------

def test_rand_index_is_uniform_over_the_inclusive_range():
    layer = rand_index("index_lower_bound: 3 index_upper_bound: 12 batch_size: 10000 seed: 1")
    top = layer()
    assert top.shape == (10000, 1) and top.dtype == torch.float32
    values, counts = np.unique(draws(layer), return_counts=True)
    assert values.tolist() == list(range(3, 13))          # both bounds drawn, nothing outside
    assert np.all(np.abs(counts - 1000) < 5 * np.sqrt(1000 * 0.9))   # 5 sigma of a binomial(10000, 0.1)


def test_missing_indices_are_never_drawn_and_the_rest_stay_uniform(tmp_path):
    missing = write(tmp_path / "missing_all_new.txt", "3\n4\n7\n12\n")    # the memo's format: count, then indices
    layer = rand_index(f'index_lower_bound: 3 index_upper_bound: 12 batch_size: 10000 seed: 2 '
                       f'missing_index_file: "{missing}"')
    d = draws(layer)
    assert not np.isin(d, [4, 7, 12]).any()
    values, counts = np.unique(d, return_counts=True)
    assert values.tolist() == [3, 5, 6, 8, 9, 10, 11]
    expected = 10000 / 7
    assert np.all(np.abs(counts - expected) < 5 * np.sqrt(expected))


def test_index_file_restricts_draws_to_the_listed_indices(tmp_path):
    lst = write(tmp_path / "all_train_index.txt", "10\n20\n30\n20\n")
    d = draws(rand_index(f'index_file: "{lst}" batch_size: 3000 seed: 3'))
    values, counts = np.unique(d, return_counts=True)
    assert values.tolist() == [10, 20, 30] and counts.min() > 850      # distinct entries, equally likely
    d = draws(rand_index(f'index_file: "{lst}" index_lower_bound: 15 batch_size: 500 seed: 3'))
    assert set(d.tolist()) == {20, 30}
    missing = write(tmp_path / "missing.txt", "1\n30\n")
    d = draws(rand_index(f'index_file: "{lst}" missing_index_file: "{missing}" batch_size: 500 seed: 3'))
    assert set(d.tolist()) == {10, 20}


def test_seed_gives_the_same_stream_and_default_seed_follows_torch_and_the_layer_name():
    body = "index_lower_bound: 0 index_upper_bound: 82515 batch_size: 32"
    a, b, c = (rand_index(f"{body} seed: {s}") for s in (7, 7, 8))
    da, db, dc = draws(a, 3), draws(b, 3), draws(c, 3)
    assert np.array_equal(da, db) and not np.array_equal(da, dc)

    def default(seed, name):
        torch.manual_seed(seed)
        return draws(rand_index(body, name), 2)
    assert np.array_equal(default(5, "x"), default(5, "x"))
    assert not np.array_equal(default(5, "x"), default(6, "x"))
    assert not np.array_equal(default(5, "x"), default(5, "y"))


def test_rand_index_state_round_trip_continues_the_exact_sequence():
    body = "index_lower_bound: 0 index_upper_bound: 1000 batch_size: 16"
    a = rand_index(body + " seed: 11")
    draws(a, 2)
    state = json.loads(json.dumps(a.get_state()))     # plain python values: survives JSON
    after = draws(a, 3)
    b = rand_index(body + " seed: 99")
    b.set_state(state)
    assert np.array_equal(draws(b, 3), after)
    with pytest.raises(NetError, match=r"layer 'idx' \(GenRandIndex\): cannot restore the random state"):
        b.set_state({"cursor": 3})


def test_rand_index_alias_and_the_authors_fields():
    layer = make_layer('name: "idx" type: "DeepHandModelGenRandIndex" top: "i" gen_rand_index_param { '
                       'index_lower_bound: 80001 index_upper_bound: 82515 batch_size: 32 rand_generator_option: 1 }')
    assert type(layer).__name__ == "GenRandIndex"
    d = draws(layer, 4)
    assert d.min() >= 80001 and d.max() <= 82515 and len(set(d.tolist())) > 100
    defaults = make_layer('name: "idx" type: "GenRandIndex" top: "i"')     # caffe.proto defaults: [1, 10000], 16
    assert defaults.infer_top_shapes([]) == [(16, 1)]
    d = draws(defaults, 20)
    assert d.min() >= 1 and d.max() <= 10000


def test_rand_index_errors(tmp_path):
    with pytest.raises(NetError, match=r"need 0 <= index_lower_bound <= index_upper_bound, got \[5, 4\]"):
        rand_index("index_lower_bound: 5 index_upper_bound: 4")
    with pytest.raises(NetError, match=r"batch_size must be positive, got 0"):
        rand_index("batch_size: 0")
    missing = write(tmp_path / "m.txt", "3\n1\n2\n3\n")
    with pytest.raises(NetError, match=rf"every index in \[1, 3\] is excluded by '{missing}'"):
        rand_index(f'index_lower_bound: 1 index_upper_bound: 3 missing_index_file: "{missing}"')
    bad = write(tmp_path / "bad.txt", "5\n1\n2\n")
    with pytest.raises(NetError, match=rf"layer 'idx' \(GenRandIndex\): malformed missing list '{bad}'"):
        rand_index(f'missing_index_file: "{bad}"')
    with pytest.raises(NetError, match=r"cannot read index list '.*nope\.txt'"):
        rand_index(f'index_file: "{tmp_path}/nope.txt"')
    with pytest.raises(NetError, match=r"unknown param 'index_upper_bond' in gen_rand_index_param "
                                       r"\(did you mean index_upper_bound\?\)"):
        rand_index("index_upper_bond: 4")


# ---- GenSequentialIndex / ReadIndexFromFile -------------------------------------------------------------------

def sequential(body):
    return make_layer(f'name: "seq" type: "GenSequentialIndex" top: "i" gen_sequential_index_param {{ {body} }}')


def test_sequential_index_wraps_cyclically_and_keeps_its_cursor_in_a_file(tmp_path):
    cursor = tmp_path / "cur.txt"
    body = f'batch_size: 3 num_of_samples: 5 start_index: 10 current_index_file_path: "{cursor}"'
    layer = sequential(body)
    assert not cursor.exists()                              # building draws nothing
    assert draws(layer).tolist() == [10, 11, 12]
    assert cursor.read_text() == "2\n"                      # the last position given out
    assert draws(layer).tolist() == [13, 14, 10]
    assert cursor.read_text() == "0\n"
    restarted = sequential(body)                            # a new run continues where the old one stopped
    assert draws(restarted).tolist() == [11, 12, 13]
    assert [f for f in os.listdir(tmp_path) if f != "cur.txt"] == []    # no temp files left behind


def test_sequential_index_reads_the_originals_cursor_files(tmp_path):
    cursor = write(tmp_path / "cur.txt", "-1\n")
    assert draws(sequential(f'batch_size: 2 num_of_samples: 4 current_index_file_path: "{cursor}"')).tolist() == [0, 1]
    write(tmp_path / "cur.txt", "2\n")
    assert draws(sequential(f'batch_size: 2 num_of_samples: 4 current_index_file_path: "{cursor}"')).tolist() == [3, 0]
    write(tmp_path / "cur.txt", "oops\n")
    with pytest.raises(NetError, match=r"layer 'seq' \(GenSequentialIndex\): malformed file '.*cur\.txt' "
                                       r"\(cursor file\)"):
        sequential(f'current_index_file_path: "{cursor}"')


def test_sequential_index_state_round_trip_and_no_file(tmp_path):
    a = sequential("batch_size: 4 num_of_samples: 6")
    draws(a)
    state = json.loads(json.dumps(a.get_state()))
    assert state == {"cursor": 3}
    after = draws(a, 2)
    assert after.tolist() == [4, 5, 0, 1, 2, 3, 4, 5]
    cursor = tmp_path / "c.txt"
    b = sequential(f'batch_size: 4 num_of_samples: 6 current_index_file_path: "{cursor}"')
    b.set_state(state)
    assert cursor.read_text() == "3\n"                      # restoring also rewrites the cursor file
    assert np.array_equal(draws(b, 2), after)


def test_read_index_from_file_steps_through_the_list(tmp_path):
    lst = write(tmp_path / "all_evaluation_index.txt", "7\n3\n9\n4\n")
    cursor = tmp_path / "cur.txt"

    def build(extra=""):
        return make_layer(f'name: "rif" type: "ReadIndexFromFile" top: "i" read_index_from_file_param {{ '
                          f'index_file_path: "{lst}" current_index_file_path: "{cursor}" batch_size: 3 {extra} }}')
    layer = build()
    assert draws(layer).tolist() == [7, 3, 9]
    assert draws(layer).tolist() == [4, 7, 3]               # wraps at the list's end
    assert draws(build()).tolist() == [9, 4, 7]             # restarted from the cursor file
    cursor.unlink()
    assert draws(build("num_of_samples: 2"), 2).tolist() == [7, 3, 7, 3, 7, 3]
    a = build()
    state = a.get_state()
    after = draws(a, 2)
    a.set_state(state)
    assert np.array_equal(draws(a, 2), after)


def test_read_index_from_file_errors(tmp_path):
    lst = write(tmp_path / "l.txt", "7\n3\n")
    empty = write(tmp_path / "e.txt", "\n")

    def build(body):
        return make_layer(f'name: "rif" type: "ReadIndexFromFile" top: "i" read_index_from_file_param {{ {body} }}')
    with pytest.raises(NetError, match=r"num_of_samples 3 exceeds the 2 entries of '.*l\.txt'"):
        build(f'index_file_path: "{lst}" num_of_samples: 3')
    with pytest.raises(NetError, match=r"index list '.*e\.txt' is empty"):
        build(f'index_file_path: "{empty}"')
    with pytest.raises(NetError, match=r"missing required param 'index_file_path'"):
        build("batch_size: 2")
    with pytest.raises(NetError, match=r"cannot read index list '.*none\.txt'"):
        build(f'index_file_path: "{tmp_path}/none.txt"')


# ---- CrossValidationRandomChooseIndex -------------------------------------------------------------------------

def chooser(seed=-1, shape=(1000, 4)):
    block = f"cross_validation_random_choose_index_param {{ seed: {seed} }}" if seed >= 0 else ""
    return make_layer(f'name: "cv" type: "CrossValidationRandomChooseIndex" bottom: "c" top: "i" {block}',
                      bottom_shapes=[shape])


def test_choose_index_picks_one_entry_of_each_row_uniformly():
    layer = chooser(seed=4)
    rows = (100 * torch.arange(1000.0)[:, None] + torch.arange(4.0)).double()
    out = layer(rows)
    assert out.shape == (1000, 1) and out.dtype == torch.float64
    col = out[:, 0] - 100 * torch.arange(1000.0).double()         # which column each row got
    assert set(col.tolist()) == {0.0, 1.0, 2.0, 3.0}
    counts = torch.bincount(col.long(), minlength=4)
    assert (counts - 250).abs().max() < 5 * np.sqrt(250 * 0.75)
    assert layer.infer_top_shapes([(1000, 4)]) == [(1000, 1)]


def test_choose_index_seed_and_state():
    rows = torch.arange(64.0).reshape(16, 4)
    a, b = chooser(5, (16, 4)), chooser(5, (16, 4))
    assert torch.equal(a(rows), b(rows))
    state = json.loads(json.dumps(a.get_state()))
    after = [a(rows) for _ in range(3)]
    c = chooser(6, (16, 4))
    c.set_state(state)
    assert all(torch.equal(c(rows), x) for x in after)
    with pytest.raises(NetError, match=r"bottom must be \(B, K\) with K >= 1, got \(16,\)"):
        chooser(1, (16,))


def test_authors_net_pattern_concat_of_ranges_then_choose(tmp_path):
    ranges = [(0, 9), (100, 109), (200, 209)]
    layers = "".join(f'layer {{ name: "i{k}" type: "DeepHandModelGenRandIndex" top: "i{k}" gen_rand_index_param {{ '
                     f'index_lower_bound: {lb} index_upper_bound: {ub} batch_size: 64 }} }}\n'
                     for k, (lb, ub) in enumerate(ranges))
    text = layers + ('layer { name: "cat" type: "Concat" bottom: "i0" bottom: "i1" bottom: "i2" top: "cat" }\n'
                     'layer { name: "image_index" type: "CrossValidationRandomChooseIndex" bottom: "cat" '
                     'top: "image_index" }\n')
    torch.manual_seed(0)
    net = Net(text, phase="TRAIN", workers=0, device="cpu")
    assert net.blob_shapes["cat"] == (64, 3) and net.blob_shapes["image_index"] == (64, 1)
    d = net.forward()["image_index"].ravel().long()
    assert all(any(lb <= v <= ub for lb, ub in ranges) for v in d.tolist())
    assert {v // 100 for v in d.tolist()} == {0, 1, 2}                  # every range gets picked
    # different layer names draw different streams although they share the torch seed
    first = net.blobs["cat"]
    assert not torch.equal(first[:, 0] % 100, first[:, 1] % 100)
