"""Net building and running: phases/stages, in-place layers, inputs, outputs, loss weights, shared params,
propagate_down, Python layers, and every build error with its message."""

import textwrap

import pytest
import torch

from layers.base import FILLER, Layer, Param, Params
from layers.registry import register_layer
from netdef.errors import NetError
from nets.net import Net


@register_layer("TestAffine")
class AffineForTest(Layer):
    """y = w * x + b with learnable scalars (test-only layer)."""
    params = Params("test_affine_param", w=Param(float, 2.0), b=Param(float, 0.5))

    def setup(self, bottom_shapes):
        self.add_blob("w", (1,), value=self.p.w)
        self.add_blob("b", (1,), value=self.p.b)

    def forward(self, x):
        return self.w * x + self.b


@register_layer("TestSumLoss")
class SumLossForTest(Layer):
    """loss = sum(x) (test-only)."""
    is_loss = True

    def forward(self, x):
        return x.sum()


def net(text, **kw):
    return Net(textwrap.dedent(text), device="cpu", **kw)


def test_input_shape_and_input_dim_make_input_layers():
    n = net("""
        input: "a" input_shape { dim: 2 dim: 3 }
        input: "b" input_shape { dim: 4 }
        layer { name: "f" type: "TestAffine" bottom: "a" top: "y" }
    """)
    assert n.inputs == {"a": (2, 3), "b": (4,)}
    n1 = net("""
        input: "data"
        input_dim: 10 input_dim: 3 input_dim: 8 input_dim: 8
        layer { name: "f" type: "TestAffine" bottom: "data" top: "y" }
    """)
    assert n1.inputs == {"data": (10, 3, 8, 8)}
    out = n1.forward(data=torch.ones(10, 3, 8, 8))
    assert set(out) == {"y"}
    assert torch.allclose(out["y"], torch.full((10, 3, 8, 8), 2.5))


def test_phase_include_exclude_and_stages():
    text = """
        input: "x" input_shape { dim: 1 }
        layer { name: "train_only" type: "TestAffine" bottom: "x" top: "t" include { phase: TRAIN } }
        layer { name: "test_only" type: "TestAffine" bottom: "x" top: "t" include { phase: TEST } }
        layer { name: "not_test" type: "TestAffine" bottom: "x" top: "u" exclude { phase: TEST } }
        layer { name: "staged" type: "TestAffine" bottom: "x" top: "s" include { stage: "deploy" } }
        layer { name: "unstaged" type: "TestAffine" bottom: "x" top: "v" include { not_stage: "deploy" } }
        layer { name: "leveled" type: "TestAffine" bottom: "x" top: "w" include { min_level: 1 } }
    """
    assert net(text, phase="TRAIN").layer_names == ["x", "train_only", "not_test", "unstaged"]
    assert net(text, phase="TEST").layer_names == ["x", "test_only", "unstaged"]
    assert net(text, phase="TEST", stages=("deploy",)).layer_names == ["x", "test_only", "staged"]
    assert "leveled" in net(text, level=2).layer_names


def test_in_place_layers_and_outputs_follow_caffe_rule():
    n = net("""
        input: "x" input_shape { dim: 3 }
        layer { name: "f1" type: "TestAffine" bottom: "x" top: "y" }
        layer { name: "f2" type: "TestAffine" bottom: "y" top: "y" test_affine_param { w: 3 b: 0 } }
        layer { name: "g1" type: "TestAffine" bottom: "y" top: "a" }
        layer { name: "g2" type: "TestAffine" bottom: "y" top: "b" }
    """)
    assert n.outputs == ["a", "b"]
    x = torch.tensor([1.0, 2.0, 3.0])
    out = n.forward(x=x)
    y = 3 * (2 * x + 0.5)
    assert torch.allclose(n.blobs["y"], y)
    assert torch.allclose(out["a"], 2 * y + 0.5) and torch.allclose(out["b"], 2 * y + 0.5)
    assert n.blobs["x"] is not None


def test_layers_without_weights_may_share_a_name_as_in_caffe():
    from netdef.errors import NetWarning
    with pytest.warns(NetWarning, match=r"<string>:4:\d+: layer 'loss' \(TestSumLoss\): duplicate layer name 'loss' "
                                        r"\(also at <string>:3:\d+\); Caffe allows it"):
        n = net("""
            input: "x" input_shape { dim: 3 }
            layer { name: "loss" type: "TestSumLoss" bottom: "x" top: "l1" }
            layer { name: "loss" type: "TestSumLoss" bottom: "x" top: "l2" loss_weight: 2 }
        """)
    n.forward(x=torch.tensor([1.0, 2.0, 3.0]))
    assert n.loss.item() == pytest.approx(18.0)
    assert len(n.layers) == 3 and n.outputs == ["l1", "l2"]


def test_layer_names_that_are_module_methods_work():
    n = net("""
        input: "x" input_shape { dim: 1 }
        layer { name: "double" type: "TestAffine" bottom: "x" top: "y" }
        layer { name: "train" type: "TestAffine" bottom: "y" top: "z" }
    """)
    assert n.forward(x=torch.ones(1))["z"].item() == pytest.approx(2 * 2.5 + 0.5)
    assert n.layer("double").w.item() == 2.0 and n.layer_names == ["x", "double", "train"]


def test_outputs_are_sorted_like_caffes_set():
    n = net("""
        input: "x" input_shape { dim: 1 }
        layer { name: "a" type: "TestAffine" bottom: "x" top: "zeta" }
        layer { name: "b" type: "TestAffine" bottom: "x" top: "alpha" }
    """)
    assert n.outputs == ["alpha", "zeta"]


def test_loss_weights_default_and_explicit():
    n = net("""
        input: "x" input_shape { dim: 3 }
        layer { name: "f" type: "TestAffine" bottom: "x" top: "y" loss_weight: 0.5 }
        layer { name: "l1" type: "TestSumLoss" bottom: "y" top: "l1" }
        layer { name: "l2" type: "TestSumLoss" bottom: "x" top: "l2" loss_weight: 3 }
    """)
    x = torch.tensor([1.0, 2.0, 3.0])
    n.forward(x=x)
    y = 2 * x + 0.5
    expected = 0.5 * y.sum() + 1.0 * y.sum() + 3.0 * x.sum()
    assert n.loss.item() == pytest.approx(expected.item())
    assert [s.loss_weights for s in n.plan[1:]] == [[0.5], [1.0], [3.0]]


def test_no_loss_layer_means_loss_is_none():
    n = net('input: "x" input_shape { dim: 1 } layer { name: "f" type: "TestAffine" bottom: "x" top: "y" }')
    n.forward(x=torch.ones(1))
    assert n.loss is None


def test_shared_params_by_name_and_lr_mult_zero_freezes():
    n = net("""
        input: "x" input_shape { dim: 2 }
        layer { name: "f1" type: "TestAffine" bottom: "x" top: "y1" param { name: "sw" } param { lr_mult: 0 } }
        layer { name: "f2" type: "TestAffine" bottom: "x" top: "y2" param { name: "sw" lr_mult: 2 decay_mult: 0 } }
    """)
    assert n.layer("f1").w is n.layer("f2").w
    assert n.layer("f1").b is not n.layer("f2").b
    assert not n.layer("f1").b.requires_grad
    info = {(p.layer, p.index): (p.lr_mult, p.decay_mult) for p in n.param_info}
    # the shared weight appears once, with its owner's multipliers; the frozen bias still listed with lr 0
    assert info == {("f1", 0): (1.0, 1.0), ("f1", 1): (0.0, 1.0), ("f2", 1): (1.0, 1.0)}
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    out = n.forward(x=x)
    (out["y1"].sum() + out["y2"].sum()).backward()
    assert n.layer("f1").w.grad.item() == pytest.approx(2 * 3.0)   # both uses accumulate
    assert n.layer("f1").b.grad is None
    assert torch.allclose(x.grad, torch.full((2,), 4.0))           # frozen params still pass gradients down


def test_propagate_down_false_stops_gradient_to_that_bottom():
    n = net("""
        input: "x" input_shape { dim: 2 }
        layer { name: "f" type: "TestAffine" bottom: "x" top: "y" }
        layer { name: "l" type: "TestSumLoss" bottom: "y" top: "l" propagate_down: false }
    """)
    n.forward(x=torch.ones(2))
    assert not n.blobs["l"].requires_grad
    n2 = net("""
        input: "x" input_shape { dim: 2 }
        layer { name: "f" type: "TestAffine" bottom: "x" top: "y" }
        layer { name: "l" type: "TestSumLoss" bottom: "y" top: "l" propagate_down: true }
    """)
    n2.forward(x=torch.ones(2))
    n2.loss.backward()
    assert n2.layer("f").w.grad.item() == pytest.approx(2.0)


def test_v1_layers_format_is_upgraded():
    n = net("""
        name: "old"
        input: "data" input_dim: 1 input_dim: 1 input_dim: 1 input_dim: 4
        layers { name: "f" type: TEST_AFFINE_DOES_NOT_EXIST bottom: "data" top: "y" }
    """.replace("TEST_AFFINE_DOES_NOT_EXIST", "SPLIT"))
    assert n.layer_names == ["data", "f"]
    assert n.layer("f").type == "Split"


def test_v1_blobs_lr_become_param_multipliers():
    from netdef.spec import load_net_def
    spec = load_net_def('layers { name: "c" type: CONVOLUTION bottom: "a" top: "b" blobs_lr: 1 blobs_lr: 2 '
                         'weight_decay: 1 weight_decay: 0 }')
    assert spec.layers[0].type == "Convolution"
    assert [(p.lr_mult, p.decay_mult) for p in spec.layers[0].param_specs] == [(1.0, 1.0), (2.0, 0.0)]


def test_forward_checks_inputs():
    n = net('input: "x" input_shape { dim: 2 } layer { name: "f" type: "TestAffine" bottom: "x" top: "y" }')
    with pytest.raises(NetError, match="no input blob 'xx' \\(did you mean x\\?\\)"):
        n.forward(xx=torch.ones(2))
    with pytest.raises(NetError, match="input blob 'x' was not given"):
        n.forward()


def test_state_dict_round_trip_keeps_values():
    text = 'input: "x" input_shape { dim: 2 } layer { name: "f.1" type: "TestAffine" bottom: "x" top: "y" }'
    a, b = net(text), net(text)
    with torch.no_grad():
        a.layer("f.1").w.fill_(7.0)
    b.load_state_dict(a.state_dict())
    assert b.layer("f.1").w.item() == 7.0


# ---- build errors: one NetError naming the place --------------------------------------------------------------

ERRORS = {
    "unknown bottom": ("""input: "x" input_shape { dim: 1 }
layer { name: "f" type: "TestAffine" bottom: "X" top: "y" }""",
                       r"^<string>:2:1: layer 'f' \(TestAffine\): unknown bottom blob 'X' \(did you mean x\?\)$"),
    "two producers": ("""input: "x" input_shape { dim: 1 }
layer { name: "f" type: "TestAffine" bottom: "x" top: "y" }
layer { name: "g" type: "TestAffine" bottom: "x" top: "y" }""",
                      r"^<string>:3:1: layer 'g' \(TestAffine\): top blob 'y' is already produced by layer 'f' "
                      r"at <string>:2:1$"),
    "cycle": ("""input: "x" input_shape { dim: 1 }
layer { name: "f" type: "TestAffine" bottom: "b" top: "a" }
layer { name: "g" type: "TestAffine" bottom: "a" top: "b" }""",
              r"^<string>:2:1: layer 'f' \(TestAffine\): bottom 'b' is produced only by a later layer 'g'"),
    "unknown type": ("""layer { name: "f" type: "TestAfine" top: "y" }""",
                     r"^<string>:1:1: layer 'f' \(TestAfine\): unknown layer type 'TestAfine' "
                     r"\(did you mean TestAffine\?\)$"),
    "unknown param": ("""input: "x" input_shape { dim: 1 }
layer { name: "f" type: "TestAffine" bottom: "x" top: "y"
  test_affine_param { ww: 1 } }""",
                      r"^<string>:3:23: layer 'f' \(TestAffine\): unknown param 'ww' in test_affine_param "
                      r"\(did you mean w\?\)$"),
    "wrong param type": ("""input: "x" input_shape { dim: 1 }
layer { name: "f" type: "TestAffine" bottom: "x" top: "y" test_affine_param { w: "two" } }""",
                         r"^<string>:2:79: layer 'f' \(TestAffine\): 'w' expects a number, found \"two\"$"),
    "unknown param block": ("""input: "x" input_shape { dim: 1 }
layer { name: "f" type: "TestAffine" bottom: "x" top: "y" poling_param { pool: MAX } }""",
                            r"^<string>:2:72: layer 'f' \(TestAffine\): unknown param block 'poling_param' \(this "
                            r"layer takes test_affine_param\) \(did you mean pooling_param\?\)$"),
    "unknown layer field": ("""layer { name: "f" type: "TestAffine" botom: "x" top: "y" }""",
                            r"^<string>:1:38: unknown layer field 'botom' \(did you mean bottom\?\)$"),
    "wrong bottom count": ("""input: "x" input_shape { dim: 1 }
layer { name: "f" type: "TestAffine" bottom: "x" bottom: "x" top: "y" }""",
                           r"^<string>:2:1: layer 'f' \(TestAffine\): takes 1 bottom\(s\), got 2$"),
    "duplicate name": ("""input: "x" input_shape { dim: 1 }
layer { name: "f" type: "TestAffine" bottom: "x" top: "y" }
layer { name: "f" type: "TestAffine" bottom: "x" top: "z" }""",
                       r"^<string>:3:1: layer 'f' \(TestAffine\): duplicate layer name 'f' \(also at "
                       r"<string>:2:1\); layers with weights need unique names$"),
    "loss_weight count": ("""input: "x" input_shape { dim: 1 }
layer { name: "f" type: "TestAffine" bottom: "x" top: "y" loss_weight: 1 loss_weight: 2 }""",
                          r"2 loss_weight value\(s\) for 1 top\(s\)"),
    "too many param specs": ("""input: "x" input_shape { dim: 1 }
layer { name: "f" type: "TestAffine" bottom: "x" top: "y" param {} param {} param {} }""",
                             r"3 param \{ \} entries but the layer has 2 parameter blob\(s\)"),
    "bad phase rule": ("""layer { name: "f" type: "TestAffine" top: "y" include { phase: TRIAN } }""",
                       r"^<string>:1:57: 'phase' expects one of TRAIN, TEST, found TRIAN "
                       r"\(did you mean TRAIN\?\)$"),
}


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_build_errors_name_the_place(case):
    text, pattern = ERRORS[case]
    with pytest.raises(NetError, match=pattern):
        Net(text, device="cpu")


def test_shape_mismatch_names_layer_and_shapes():
    @register_layer("TestMatMul")
    class MatMulForTest(Layer):
        num_bottoms = 2

        def forward(self, a, b):
            return a @ b

    text = """input: "a" input_shape { dim: 2 dim: 3 }
input: "b" input_shape { dim: 4 dim: 5 }
layer { name: "mm" type: "TestMatMul" bottom: "a" bottom: "b" top: "c" }"""
    with pytest.raises(NetError, match=r"^<string>:3:1: layer 'mm' \(TestMatMul\): cannot run on bottoms "
                                       r"a \(2, 3\), b \(4, 5\): "):
        Net(text, device="cpu")


def test_missing_net_file_is_a_net_error(tmp_path):
    with pytest.raises(NetError, match="nope.prototxt"):
        Net(str(tmp_path / "nope.prototxt"), device="cpu")


def test_file_locations_name_the_file(tmp_path):
    path = tmp_path / "bad.prototxt"
    path.write_text('input: "x" input_shape { dim: 1 }\n\tlayer {\tname: "f" type: "TestAffine" bottom : "q" top: "y" }\n')
    with pytest.raises(NetError, match=rf"^{path}:2:2: layer 'f' \(TestAffine\): unknown bottom blob 'q'"):
        Net(str(path), device="cpu")


def test_cuda_device_without_cuda_is_a_net_error():
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(NetError, match="CUDA is not available"):
        Net('input: "x" input_shape { dim: 1 }', device="cuda")


# ---- Python layers ----------------------------------------------------------------------------------------------

USER_LAYER = '''
import torch
from layers import Layer


class Clamp(Layer):
    """Clamps to [lo, hi] given as param_str "lo,hi"."""

    def setup(self, bottom_shapes):
        self.lo, self.hi = (float(v) for v in self.param_str.split(","))

    def forward(self, x):
        return x.clamp(self.lo, self.hi)
'''


def test_python_layer_from_file_with_param_str(tmp_path):
    path = tmp_path / "my_layers.py"
    path.write_text(USER_LAYER)
    n = net(f"""
        input: "x" input_shape {{ dim: 4 }}
        layer {{ name: "c" type: "Python" bottom: "x" top: "y"
                python_param {{ module: "{path}" layer: "Clamp" param_str: "-1,0.5" }} }}
    """)
    out = n.forward(x=torch.tensor([-3.0, -0.5, 0.2, 2.0]))
    assert out["y"].tolist() == [-1.0, -0.5, pytest.approx(0.2), 0.5]


def test_python_layer_errors(tmp_path):
    path = tmp_path / "my_layers2.py"
    path.write_text(USER_LAYER)
    with pytest.raises(NetError, match=r"has no layer class 'Clamps' \(did you mean Clamp\?\)"):
        net(f'input: "x" input_shape {{ dim: 1 }} layer {{ name: "c" type: "Python" bottom: "x" top: "y" '
            f'python_param {{ module: "{path}" layer: "Clamps" }} }}')
    with pytest.raises(NetError, match="cannot import layer module 'no_such_module_xyz'"):
        net('input: "x" input_shape { dim: 1 } layer { name: "c" type: "Python" bottom: "x" top: "y" '
            'python_param { module: "no_such_module_xyz" layer: "A" } }')
    with pytest.raises(NetError, match="needs python_param"):
        net('input: "x" input_shape { dim: 1 } layer { name: "c" type: "Python" bottom: "x" top: "y" }')


def test_registered_user_layer_from_import(tmp_path):
    from layers.registry import import_user_module
    path = tmp_path / "reg_layers.py"
    path.write_text(textwrap.dedent('''
        from layers import Layer, Params, Param, register_layer

        @register_layer("TestTimesK")
        class TimesK(Layer):
            params = Params("times_k_param", k=Param(float, 2.0))

            def forward(self, x):
                return x * self.p.k
    '''))
    import_user_module(str(path))
    n = net('input: "x" input_shape { dim: 2 } '
            'layer { name: "t" type: "TestTimesK" bottom: "x" top: "y" times_k_param { k: 4 } }')
    assert n.forward(x=torch.ones(2))["y"].tolist() == [4.0, 4.0]


def test_double_net_casts_inputs_and_computes_in_float64():
    n = net('input: "x" input_shape { dim: 2 } layer { name: "f" type: "TestAffine" bottom: "x" top: "y" }')
    assert n.dtype == torch.float32
    n.double()
    assert n.dtype == torch.float64
    out = n.forward(x=torch.tensor([1, 2]))            # integer input: cast to the net's dtype
    assert out["y"].dtype == torch.float64
    assert n.float().forward(x=torch.ones(2, dtype=torch.float64))["y"].dtype == torch.float32


BN_SCALE_NET = """
    name: "bn_scale"
    input: "data" input_shape { dim: 4 dim: 3 dim: 5 dim: 5 }
    layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
            convolution_param { num_output: 6 kernel_size: 3 weight_filler { type: "gaussian" std: 0.5 } } }
    layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }
    layer { name: "scale" type: "Scale" bottom: "conv" top: "conv"
            scale_param { bias_term: BIAS filler { type: "uniform" min: 0.5 max: 2 }
                          bias_filler { type: "uniform" min: -1 max: 1 } } }
    layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
    layer { name: "bn2" type: "BatchNorm" bottom: "conv" top: "norm2" }
    layer { name: "scale2" type: "Scale" bottom: "norm2" top: "scaled2" }
"""


def _run_bn_scale(n, x, layerwise: bool):
    """Forward (fused steps, or layer by layer as per-layer timing runs it) and backward of a fixed weighting;
    returns the output, the parameter gradients and the BatchNorm statistics."""
    for p in n.parameters():
        p.grad = None
    bn = n.layer("bn")
    if n.phase == "TEST":   # stored sums: mean (0, 0.5, ...), variance (0.5, 1, ...)
        bn.mean[:], bn.variance[:], bn.scale_factor[:] = torch.arange(6.0), torch.arange(6.0) + 1, 2.0
    else:
        bn.mean.zero_(), bn.variance.zero_(), bn.scale_factor.zero_()
    out = n.forward(_timings={} if layerwise else None, data=x)
    y = out["conv"] if "conv" in out else n.blobs["conv"]
    weighting = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)
    ((y * weighting).sum() + out["scaled2"].square().sum()).backward()
    grads = {name: p.grad.clone() for name, p in n.named_parameters() if p.grad is not None}
    return y.detach().clone(), grads, bn.mean.clone(), bn.variance.clone()


@pytest.mark.parametrize("phase", ["TRAIN", "TEST"])
@pytest.mark.parametrize("bias", ["true", "false"])
def test_batchnorm_then_in_place_scale_runs_fused_with_the_same_numbers(phase, bias):
    n = net(BN_SCALE_NET.replace("BIAS", bias), phase=phase).double()
    # only the in-place Scale joins its BatchNorm; scale2 writes a new blob (norm2 stays visible)
    assert n.fused_scales == [("bn", "scale")]
    x = torch.randn(4, 3, 5, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    fused, layerwise = _run_bn_scale(n, x, False), _run_bn_scale(n, x, True)
    torch.testing.assert_close(fused[0], layerwise[0], rtol=0, atol=1e-12)
    assert fused[1].keys() == layerwise[1].keys() and len(fused[1]) == 4 + (bias == "true")
    for name in fused[1]:
        torch.testing.assert_close(fused[1][name], layerwise[1][name], rtol=0, atol=1e-12)
    torch.testing.assert_close(fused[2], layerwise[2], rtol=0, atol=0)
    torch.testing.assert_close(fused[3], layerwise[3], rtol=0, atol=0)
    # and against the formula: TEST normalises with the stored sums / scale_factor
    if phase == "TEST":
        conv = torch.nn.functional.conv2d(x, n.params["conv"][0], n.params["conv"][1])
        gamma = n.params["scale"][0].view(1, -1, 1, 1)
        beta = n.params["scale"][1].view(1, -1, 1, 1) if bias == "true" else 0.0
        mean, var = (torch.arange(6.0, dtype=torch.float64) / 2).view(1, -1, 1, 1), \
            ((torch.arange(6.0, dtype=torch.float64) + 1) / 2).view(1, -1, 1, 1)
        expected = torch.relu((conv - mean) / torch.sqrt(var + 1e-5) * gamma + beta)
        torch.testing.assert_close(fused[0], expected, rtol=0, atol=1e-12)


def test_scale_is_not_fused_where_the_plan_says_otherwise():
    text = BN_SCALE_NET.replace("BIAS", "true")
    no_grad = text.replace('top: "conv"\n            scale_param', 'top: "conv" propagate_down: false\n            scale_param')
    assert net(no_grad).fused_scales == []
    other_axis = text.replace("scale_param { bias_term: true", "scale_param { axis: 0 num_axes: 0 bias_term: true")
    assert net(other_axis).fused_scales == []
    weighted = text.replace('layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }',
                            'layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" loss_weight: 1 }')
    assert net(weighted).fused_scales == []
