"""Mutated net definitions: building (and running) a net either works or raises NetError, nothing else.

The seed net touches most standard layers with small shapes; mutations change numbers, enum values and
names, drop or duplicate lines. A TypeError, ZeroDivisionError, KeyError... escaping is a bug: a user's typo
must end in a one-line message naming the place."""

import re

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netdef.errors import NetError
from nets.net import Net

SEED_NET = """name: "fuzz"
input: "data" input_shape { dim: 2 dim: 3 dim: 8 dim: 8 }
layer { name: "label" type: "DummyData" top: "label" dummy_data_param { shape { dim: 2 } data_filler { type: "constant" value: 1 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" param { lr_mult: 1 } param { lr_mult: 2 }
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 stride: 1 group: 1 dilation: 1 weight_filler { type: "xavier" } } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" param { lr_mult: 0 } batch_norm_param { eps: 0.001 } }
layer { name: "sc1" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true axis: 1 num_axes: 1 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" relu_param { negative_slope: 0.1 } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 pad: 0 } }
layer { name: "norm1" type: "LRN" bottom: "pool1" top: "norm1" lrn_param { local_size: 3 alpha: 0.0001 beta: 0.75 norm_region: ACROSS_CHANNELS } }
layer { name: "conv2" type: "Convolution" bottom: "norm1" top: "conv2" convolution_param { num_output: 4 kernel_h: 1 kernel_w: 3 pad_w: 1 } }
layer { name: "up" type: "Deconvolution" bottom: "conv2" top: "up" convolution_param { num_output: 2 kernel_size: 2 stride: 2 } }
layer { name: "cat" type: "Concat" bottom: "norm1" bottom: "conv2" top: "cat" concat_param { axis: 1 } }
layer { name: "slice" type: "Slice" bottom: "cat" top: "s1" top: "s2" slice_param { axis: 1 slice_point: 4 } }
layer { name: "sum" type: "Eltwise" bottom: "s1" bottom: "s2" top: "sum" eltwise_param { operation: SUM coeff: 1 coeff: -1 } }
layer { name: "pow" type: "Power" bottom: "sum" top: "pow" power_param { power: 2 scale: 0.5 shift: 1 } }
layer { name: "ave" type: "Pooling" bottom: "pow" top: "ave" pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "flat" type: "Flatten" bottom: "ave" top: "flat" flatten_param { axis: 1 end_axis: -1 } }
layer { name: "drop" type: "Dropout" bottom: "flat" top: "flat" dropout_param { dropout_ratio: 0.5 } }
layer { name: "ip" type: "InnerProduct" bottom: "flat" top: "ip" inner_product_param { num_output: 5 axis: 1 } }
layer { name: "resh" type: "Reshape" bottom: "ip" top: "resh" reshape_param { shape { dim: 0 dim: -1 dim: 1 } } }
layer { name: "prob" type: "Softmax" bottom: "ip" top: "prob" softmax_param { axis: 1 } }
layer { name: "acc" type: "Accuracy" bottom: "ip" bottom: "label" top: "acc" accuracy_param { top_k: 2 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" loss_weight: 1 }
layer { name: "l2" type: "EuclideanLoss" bottom: "prob" bottom: "prob" top: "l2" }
layer { name: "sig" type: "SigmoidCrossEntropyLoss" bottom: "resh" bottom: "resh" top: "sig" }
layer { name: "silence" type: "Silence" bottom: "up" }
"""

TOKENS = re.compile(r'-?\d+(?:\.\d+)?|"[^"]*"|[A-Z_]{2,}|\b[a-z_]+\b')
REPLACEMENTS = st.one_of(
    st.integers(-3, 12).map(str), st.sampled_from(["0", "0.0", "-1", "1.5", "1e9", "nan", "inf", "-inf"]),
    st.sampled_from(['"conv1"', '"data"', '"label"', '"missing"', '""', '"xavier"', '"bilinear"', '"msra"']),
    st.sampled_from(["MAX", "AVE", "SUM", "PROD", "STOCHASTIC", "WITHIN_CHANNEL", "TEST", "true", "false"]),
    st.sampled_from(["axis", "num_output", "kernel_size", "stride", "pad", "group", "top", "bottom"]),
)


def mutate(text, data):
    lines = text.splitlines()
    for _ in range(data.draw(st.integers(1, 3))):
        kind = data.draw(st.sampled_from(["token", "token", "token", "drop", "dup"]))
        i = data.draw(st.integers(0, len(lines) - 1))
        if kind == "drop" and len(lines) > 2:
            del lines[i]
        elif kind == "dup":
            lines.insert(i, lines[i])
        else:
            spans = [m.span() for m in TOKENS.finditer(lines[i])]
            if spans:
                a, b = spans[data.draw(st.integers(0, len(spans) - 1))]
                lines[i] = lines[i][:a] + data.draw(REPLACEMENTS) + lines[i][b:]
    return "\n".join(lines)


def test_seed_net_builds_and_runs_in_both_phases():
    for phase in ("TRAIN", "TEST"):
        net = Net(SEED_NET, phase=phase, device="cpu")
        out = net.forward(data=torch.randn(2, 3, 8, 8))
        assert set(out) == {"acc", "l2", "loss", "sig"}
        assert torch.isfinite(net.loss)


@pytest.mark.filterwarnings("ignore:.*duplicate layer name")   # a mutation may copy a layer: a NetWarning
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_nets_build_and_run_or_raise_net_error(data):
    text = mutate(SEED_NET, data)
    phase = data.draw(st.sampled_from(["TRAIN", "TEST"]))
    try:
        net = Net(text, phase=phase, device="cpu")
        shape = net.inputs.get("data")
        inputs = {"data": torch.randn(shape)} if shape is not None else {}
        net.forward(**inputs)
        if net.loss is not None and net.loss.requires_grad:
            net.loss.backward()
    except NetError as e:
        assert "\n" not in str(e)
