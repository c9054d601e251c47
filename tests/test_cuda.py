"""GPU path: whole nets on CUDA agree with CPU (forward, loss, gradients, BN statistics). Skipped without CUDA."""

import os

import pytest
import torch

from nets.cli import main
from nets.net import Net

ZOO = os.path.join(os.path.dirname(__file__), "data", "zoo")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture(autouse=True)
def _exact_fp32():
    # TF32 would make CPU/GPU differ by ~1e-3; compare true fp32
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def test_default_device_is_cuda():
    assert Net('input: "x" input_shape { dim: 1 }').device.type == "cuda"


@pytest.mark.parametrize("name, shape", [("lenet", (4, 1, 28, 28)), ("alexnet", (2, 3, 227, 227)),
                                         ("googlenet", (2, 3, 224, 224)), ("resnet50", (2, 3, 224, 224))])
def test_zoo_nets_match_cpu(name, shape):
    path = os.path.join(ZOO, f"{name}.prototxt")
    cpu = Net(path, phase="TEST", device="cpu")
    gpu = Net(path, phase="TEST", device="cuda")
    with torch.no_grad():
        for a, b in zip(cpu.params.values(), gpu.params.values()):
            for x, y in zip(a, b):
                x.normal_(0, 0.05) if x.dim() > 1 else x.uniform_(0.5, 1.5)
                y.copy_(x)
    data = torch.randn(shape)
    (inp,) = cpu.inputs
    with torch.no_grad():
        out_cpu = cpu.forward(**{inp: data})
        out_gpu = gpu.forward(**{inp: data.cuda()})
    for k in out_cpu:
        assert out_gpu[k].device.type == "cuda"
        torch.testing.assert_close(out_gpu[k].cpu(), out_cpu[k], rtol=1e-3, atol=1e-4)


def test_training_step_gradients_and_bn_stats_match_cpu():
    text = """
    input: "data" input_shape { dim: 8 dim: 3 dim: 16 dim: 16 }
    input: "label" input_shape { dim: 8 }
    layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
            convolution_param { num_output: 6 kernel_size: 3 pad: 1 weight_filler { type: "msra" } } }
    layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }
    layer { name: "sc" type: "Scale" bottom: "conv" top: "conv" scale_param { bias_term: true } }
    layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
    layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool" pooling_param { pool: AVE global_pooling: true } }
    layer { name: "ip" type: "InnerProduct" bottom: "pool" top: "ip" inner_product_param { num_output: 4
            weight_filler { type: "xavier" } } }
    layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
    """
    cpu, gpu = Net(text, device="cpu"), Net(text, device="cuda")
    gpu.load_state_dict(cpu.state_dict())
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 4, (8,)).float()
    cpu.forward(data=x, label=y)
    gpu.forward(data=x.cuda(), label=y.cuda())
    cpu.loss.backward()
    gpu.loss.backward()
    torch.testing.assert_close(gpu.loss.cpu(), cpu.loss, rtol=1e-4, atol=1e-5)
    for (name, a), b in zip(cpu.named_parameters(), gpu.parameters()):
        torch.testing.assert_close(b.grad.cpu(), a.grad, rtol=1e-3, atol=1e-5, msg=name)
    for a, b in zip(cpu.params["bn"], gpu.params["bn"]):
        assert b.device.type == "cuda"
        torch.testing.assert_close(b.cpu(), a, rtol=1e-4, atol=1e-6)


def test_run_net_time_on_cuda(capsys):
    code = main([os.path.join(ZOO, "lenet.prototxt"), "--device", "cuda", "--time", "--iterations", "3"])
    out = capsys.readouterr().out
    assert code == 0
    assert "conv1\tforward:" in out and "Average Forward-Backward:" in out


def test_mixed_precision_and_channels_last_training_on_cuda():
    from test_accel import solver_text
    from nets.solver import Solver
    ref = Solver(solver_text(), device="cuda", workers=0).step(5)
    for amp in ("bfloat16", "float16"):
        for layout in (False, True):
            solver = Solver(solver_text(), device="cuda", workers=0, amp=amp, channels_last=layout)
            assert (solver.scaler is not None) == (amp == "float16")
            got = solver.step(5)
            assert all(abs(a - b) <= 5e-2 * abs(b) + 1e-3 for a, b in zip(got, ref)), (amp, layout, got, ref)


def test_run_net_amp_on_cuda(capsys):
    assert main([os.path.join(ZOO, "lenet.prototxt"), "--iterations", "2", "--amp", "--channels-last"]) == 0
    assert " = " in capsys.readouterr().out
