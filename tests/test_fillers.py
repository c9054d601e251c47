"""Caffe's fillers: distributions and fan rules from filler.hpp, bilinear kernel by its closed form."""

import math

import pytest
import torch

from layers.base import FILLER
from layers.fillers import fill
from netdef.errors import NetError
from netdef.text_format import parse


def filler(text):
    return FILLER.parse(parse(text), "test")


def test_constant_and_uniform():
    t = fill(torch.empty(3, 4), filler('type: "constant" value: 2.5'), "w")
    assert torch.equal(t, torch.full((3, 4), 2.5))
    u = fill(torch.empty(20000), filler('type: "uniform" min: -2 max: 3'), "w")
    assert u.min() >= -2 and u.max() <= 3
    assert u.mean().item() == pytest.approx(0.5, abs=0.05)


def test_default_filler_is_constant_zero():
    assert torch.equal(fill(torch.ones(5), filler(""), "w"), torch.zeros(5))


def test_gaussian_moments_and_sparse_fraction():
    g = fill(torch.empty(200, 100), filler('type: "gaussian" mean: 1 std: 3'), "w")
    assert g.mean().item() == pytest.approx(1.0, abs=0.05)
    assert g.std().item() == pytest.approx(3.0, rel=0.02)
    s = fill(torch.empty(50, 400), filler('type: "gaussian" std: 1 sparse: 10'), "w")
    # Caffe keeps each weight with probability sparse / num_outputs (shape[0])
    assert (s != 0).float().mean().item() == pytest.approx(10 / 50, abs=0.01)


@pytest.mark.parametrize("norm, n", [("FAN_IN", 3 * 5 * 5), ("FAN_OUT", 16 * 5 * 5), ("AVERAGE", (75 + 400) / 2)])
def test_xavier_and_msra_use_caffe_fans(norm, n):
    shape = (16, 3, 5, 5)   # fan_in = count / shape[0] = 75, fan_out = count / shape[1] = 400
    x = fill(torch.empty(shape), filler(f'type: "xavier" variance_norm: {norm}'), "w")
    bound = math.sqrt(3.0 / n)
    assert x.abs().max().item() <= bound
    assert x.abs().max().item() > 0.95 * bound
    m = fill(torch.empty(64, 3, 5, 5), filler(f'type: "msra" variance_norm: {norm}'), "w")
    n_m = {"FAN_IN": 75, "FAN_OUT": 64 * 25, "AVERAGE": (75 + 64 * 25) / 2}[norm]
    assert m.std().item() == pytest.approx(math.sqrt(2.0 / n_m), rel=0.05)


def test_bilinear_matches_closed_form_for_stride_2_upsampling():
    k = fill(torch.empty(2, 1, 4, 4), filler('type: "bilinear"'), "w")
    # f = 2, c = 0.75: ramp = 1 - |i/2 - 0.75| = [0.25, 0.75, 0.75, 0.25]
    ramp = torch.tensor([0.25, 0.75, 0.75, 0.25])
    assert torch.allclose(k[1, 0], ramp[:, None] * ramp[None, :])
    k3 = fill(torch.empty(1, 1, 3, 3), filler('type: "bilinear"'), "w")
    # odd kernel 3: f = 2, c = (3 - 1) / 4 = 0.5 -> ramp = [0.5, 1, 0.5], centred
    assert torch.allclose(k3[0, 0, 0], torch.tensor([0.25, 0.5, 0.25]))
    assert torch.allclose(k3[0, 0, 1], torch.tensor([0.5, 1.0, 0.5]))


def test_positive_unitball_rows_sum_to_one():
    t = fill(torch.empty(4, 3, 2), filler('type: "positive_unitball"'), "w")
    assert torch.allclose(t.view(4, -1).sum(1), torch.ones(4))
    assert (t >= 0).all()


def test_unknown_filler_type_suggests_the_closest():
    with pytest.raises(NetError, match="unknown filler type 'xavir' \\(did you mean xavier\\?\\)"):
        fill(torch.empty(2), filler('type: "xavir"'), "w")
