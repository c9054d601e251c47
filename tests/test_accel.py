"""Mixed precision and channels_last (nets/accel.py) in the solver and run-net, on the CPU."""

import math

import numpy as np
import pytest
import torch

from conftest import ROOT, prototxt_for
from nets.accel import LossScaler, amp_dtype, autocast
from nets.cli import main
from netdef.errors import NetError
from nets.solver import Solver

NET = '''name: "tiny"
layer { name: "data" type: "DummyData" top: "x" top: "y"
        dummy_data_param { shape { dim: 8 dim: 3 dim: 10 dim: 10 } shape { dim: 8 dim: 5 }
                           data_filler { type: "gaussian" std: 1 } data_filler { type: "gaussian" std: 1 } } }
layer { name: "conv" type: "Convolution" bottom: "x" top: "c"
        convolution_param { num_output: 6 kernel_size: 3 weight_filler { type: "xavier" } } }
layer { name: "relu" type: "ReLU" bottom: "c" top: "c" }
layer { name: "ip" type: "InnerProduct" bottom: "c" top: "p"
        inner_product_param { num_output: 5 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "p" bottom: "y" top: "loss" }
'''


def solver_text(**extra):
    fields = dict(base_lr=0.01, momentum=0.9, lr_policy='"fixed"', max_iter=5, display=0, random_seed=1,
                  snapshot_after_train="false")
    fields.update(extra)
    return "net_param {" + NET + "}\n" + "\n".join(f"{k}: {v}" for k, v in fields.items())


def test_amp_dtype_choice():
    cpu = torch.device("cpu")
    assert amp_dtype(cpu, None) is None
    assert amp_dtype(cpu, "auto") == torch.bfloat16
    assert amp_dtype(cpu, "float16") == torch.float16
    with pytest.raises(NetError, match="unknown mixed-precision type 'int8'"):
        amp_dtype(cpu, "int8")


def test_loss_scaler_skips_overflow_halves_and_grows():
    s = LossScaler(scale=8.0, interval=2)
    g = [torch.tensor([8.0, -16.0]), None]
    assert s.unscale(g) and g[0].tolist() == [1.0, -2.0]
    s.update(True)
    assert s.scale == 8.0
    s.update(True)
    assert s.scale == 16.0 and s.good_steps == 0
    assert not s.unscale([torch.tensor([1.0, math.inf])])
    s.update(False)
    assert s.scale == 8.0
    s.set_state({"scale": 4.0, "good_steps": 1})
    assert s.state() == {"scale": 4.0, "good_steps": 1}


def test_bfloat16_training_runs_convolutions_in_16_bits_and_tracks_float32():
    dtypes = []
    full = Solver(solver_text(), device="cpu", workers=0)
    ref = full.step(5)
    mixed = Solver(solver_text(), device="cpu", workers=0, amp="bfloat16")
    mixed.train_net.layer("conv").register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    got = mixed.step(5)
    assert dtypes and all(d == torch.bfloat16 for d in dtypes)
    assert mixed.train_net.layer("conv").weight.dtype == torch.float32      # master weights stay float32
    np.testing.assert_allclose(got, ref, rtol=3e-2)
    assert got[0] != got[-1]


def test_float16_overflow_skips_the_update_and_backs_off(capsys):
    solver = Solver(solver_text(display=1), device="cpu", workers=0, amp="float16")
    assert solver.scaler is not None
    solver.scaler.scale = 1e38        # loss * scale overflows float16 gradients
    before = solver.train_net.layer("ip").weight.detach().clone()
    solver.step(1)
    assert solver.iter == 1 and solver.scaler.scale == 5e37
    assert torch.equal(solver.train_net.layer("ip").weight, before)
    assert "gradients overflowed at iteration 0, update skipped" in capsys.readouterr().out
    solver.scaler.scale = 2.0 ** 10
    solver.step(2)
    assert not torch.equal(solver.train_net.layer("ip").weight, before)


def test_loss_scale_is_saved_and_restored(tmp_path):
    solver = Solver(solver_text(snapshot_prefix=f'"{tmp_path}/s"'), device="cpu", workers=0, amp="float16")
    solver.step(2)
    solver.scaler.scale, solver.scaler.good_steps = 512.0, 7
    path = solver.snapshot()
    other = Solver(solver_text(snapshot_prefix=f'"{tmp_path}/s"'), device="cpu", workers=0, amp="float16")
    other.restore(path)
    assert other.scaler.state() == {"scale": 512.0, "good_steps": 7}


def test_channels_last_trains_the_latent25d_net_like_the_default_layout(rhd_converted, tmp_path):
    root = rhd_converted[0]
    train = tmp_path / "train.prototxt"
    train.write_text(prototxt_for(f"{ROOT}/prototxt/rhd_latent25d_train.prototxt", root,
                                  **{"batch_size: 32": "batch_size: 2"}))
    text = f'train_net: "{train}"\ntype: "Adam" base_lr: 0.0001 lr_policy: "fixed" max_iter: 2 random_seed: 0\n' \
           f'snapshot_after_train: false'
    runs = {}
    for layout in (False, True):
        with Solver(text, device="cpu", workers=0, channels_last=layout) as solver:
            runs[layout] = solver.step(2)
            conv = next(m for m in solver.train_net.modules() if type(m).__name__ == "Convolution")
            assert conv.weight.is_contiguous(memory_format=torch.channels_last) == layout
    np.testing.assert_allclose(runs[True], runs[False], rtol=1e-4)


def test_run_net_amp_and_channels_last_flags(capsys):
    net = f"{ROOT}/prototxt/example_lenet.prototxt"
    assert main([net, "--iterations", "2", "--device", "cpu"]) == 0
    plain = capsys.readouterr().out
    assert main([net, "--iterations", "2", "--device", "cpu", "--amp", "--channels-last"]) == 0
    mixed = capsys.readouterr().out
    assert plain.splitlines()[0].split(" = ")[0] == mixed.splitlines()[0].split(" = ")[0]
    a, b = (float(t.splitlines()[0].split(" = ")[1].split()[0]) for t in (plain, mixed))
    assert a == pytest.approx(b, rel=5e-2, abs=5e-2)


def test_autocast_off_is_a_no_op():
    x = torch.randn(2, 3)
    with autocast(torch.device("cpu"), None):
        assert (x @ x.T).dtype == torch.float32


def test_compile_option_compiles_every_net_of_the_solver_and_run_net(monkeypatch, capsys):
    from nets.net import Net
    compiled = []
    monkeypatch.setattr(Net, "compile", lambda self, **kw: compiled.append(self.phase))
    text = solver_text(test_iter=1, test_interval=100) + "\ntest_net_param {" + NET + "}"
    Solver(text, device="cpu", workers=0, compile=True)
    assert compiled == ["TRAIN", "TEST"]
    assert main([f"{ROOT}/prototxt/example_lenet.prototxt", "--iterations", "1", "--device", "cpu", "--compile"]) == 0
    assert compiled == ["TRAIN", "TEST", "TEST"]
