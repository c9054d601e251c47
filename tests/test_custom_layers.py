"""Custom layers without guesswork (issue 11): the hint for an unknown type, where user modules are found,
param_str read as the layer's param block, NumPy layers and meta tensors, type names owned by one class, and
the README's examples for them."""

import importlib
import os
import re
import sys
import textwrap

import pytest
import torch

from layers import Layer, Param, Params, get_layer_class, import_user_module, register_layer
from netdef.errors import NetError
from nets.cli import main
from nets.net import Net

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()


@pytest.fixture
def clean_modules():
    """Forget the user modules a test imported (their names are reused when the test runs again)."""
    before = set(sys.modules)
    path = list(sys.path)
    yield
    assert sys.path == path, "a user import left sys.path changed"
    for name in set(sys.modules) - before:
        if name.startswith(("cl_", "user_layers_cl_")):
            del sys.modules[name]


def write(folder, name, text):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(textwrap.dedent(text))
    return folder / name


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return code, cap.out.splitlines(), cap.err.splitlines()


# ---- unknown layer type -------------------------------------------------------------------------------------------

def test_unknown_type_says_how_to_load_user_layers_and_typos_keep_did_you_mean():
    with pytest.raises(NetError) as e:
        Net('input: "x" input_shape { dim: 2 } layer { name: "a" type: "SiLU" bottom: "x" top: "y" }', device="cpu")
    msg = str(e.value)
    assert msg.startswith("<string>:1:35: layer 'a' (SiLU): unknown layer type 'SiLU' (is it a layer of your own?")
    assert "--import FILE.py" in msg and 'type: "Python" with python_param' in msg and "\n" not in msg
    with pytest.raises(NetError) as e:
        Net('input: "x" input_shape { dim: 2 } layer { name: "a" type: "ReLu" bottom: "x" top: "y" }', device="cpu")
    assert str(e.value).endswith("unknown layer type 'ReLu' (did you mean ReLU?)")


# ---- where user modules are found ---------------------------------------------------------------------------------

HELPER = '''
def double(x):
    return 2 * x
'''

USES_HELPER = '''
from layers import Layer
from {helper} import double


class Twice(Layer):
    def forward(self, x):
        return double(x)
'''

PYTHON_NET = '''
input: "x" input_shape {{ dim: 2 }}
layer {{ name: "t" type: "Python" bottom: "x" top: "y" python_param {{ module: "{module}" layer: "Twice" }} }}
'''


def test_python_layer_module_and_its_helper_are_found_beside_the_prototxt(tmp_path, monkeypatch, clean_modules):
    netdir = tmp_path / "net"
    write(netdir, "cl_beside_helper.py", HELPER)
    write(netdir, "cl_beside_layers.py", USES_HELPER.format(helper="cl_beside_helper"))
    path = write(netdir, "net.prototxt", PYTHON_NET.format(module="cl_beside_layers"))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    n = Net(str(path), device="cpu")
    assert n.forward(x=torch.tensor([1.0, 2.0]))["y"].tolist() == [2.0, 4.0]


def test_python_layer_module_is_found_in_the_current_folder(tmp_path, monkeypatch, clean_modules):
    write(tmp_path, "cl_cwd_helper.py", HELPER)
    write(tmp_path, "cl_cwd_layers.py", USES_HELPER.format(helper="cl_cwd_helper"))
    monkeypatch.chdir(tmp_path)
    n = Net(PYTHON_NET.format(module="cl_cwd_layers"), device="cpu")
    assert n.forward(x=torch.tensor([3.0, 1.0]))["y"].tolist() == [6.0, 2.0]


def test_relative_py_path_in_python_param_is_found_beside_the_prototxt(tmp_path, monkeypatch, clean_modules):
    netdir = tmp_path / "net"
    write(netdir, "cl_rel_helper.py", HELPER)
    write(netdir, "cl_rel_layers.py", USES_HELPER.format(helper="cl_rel_helper"))
    path = write(netdir, "net.prototxt", PYTHON_NET.format(module="cl_rel_layers.py"))
    monkeypatch.chdir(tmp_path)
    n = Net(str(path), device="cpu")
    assert n.forward(x=torch.tensor([1.0, 0.5]))["y"].tolist() == [2.0, 1.0]


def test_imported_layer_file_finds_the_helper_beside_it(tmp_path, monkeypatch, capsys, clean_modules):
    libdir = tmp_path / "lib"
    write(libdir, "cl_import_helper.py", HELPER)
    write(libdir, "cl_import_layers.py", '''
        from layers import Layer, register_layer
        from cl_import_helper import double

        @register_layer("ClImportTwice")
        class Twice(Layer):
            def forward(self, x):
                return double(x)
    ''')
    net = write(tmp_path, "net.prototxt", '''
        layer { name: "data" type: "DummyData" top: "data"
                dummy_data_param { shape { dim: 3 } data_filler { type: "constant" value: 1.5 } } }
        layer { name: "twice" type: "ClImportTwice" bottom: "data" top: "y" }
    ''')
    monkeypatch.chdir(tmp_path)
    code, out, err = cli(capsys, "net.prototxt", "--import", "lib/cl_import_layers.py", "--iterations", 1,
                         "--device", "cpu")
    assert (code, out, err) == (0, ["y = 3"], [])
    assert net.exists()


def test_module_not_found_says_where_it_looked(tmp_path, monkeypatch, clean_modules):
    path = write(tmp_path / "net", "net.prototxt", PYTHON_NET.format(module="cl_absent_module"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(NetError, match=r"cannot import layer module 'cl_absent_module': No module named "
                                       rf"'cl_absent_module' \(looked in {re.escape(str(tmp_path / 'net'))}, "
                                       rf"{re.escape(str(tmp_path))} and on sys.path\)"):
        Net(str(path), device="cpu")


# ---- param_str ----------------------------------------------------------------------------------------------------

PARAM_LAYERS = '''
import torch
from layers import Layer, Param, Params


class Swish(Layer):
    params = Params("swish_param", beta=Param(float, 1.0))

    def forward(self, x):
        return x * torch.sigmoid(self.p.beta * x)


class AffineTwoBlocks(Layer):
    params = Params("scale_part", k=Param(float, 1.0)) + Params("shift_part", b=Param(float, 0.0))

    def forward(self, x):
        return self.p.k * x + self.p.b
'''


def python_layer(path, layer, param_str, extra=""):
    return (f'input: "x" input_shape {{ dim: 2 }}\n'
            f'layer {{ name: "act" type: "Python" bottom: "x" top: "y" {extra}\n'
            f'  python_param {{ module: "{path}" layer: "{layer}" param_str: "{param_str}" }} }}')


def test_param_str_is_parsed_as_the_declared_block(tmp_path, clean_modules):
    path = write(tmp_path, "cl_param_layers.py", PARAM_LAYERS)
    n = Net(python_layer(path, "Swish", "beta: 2"), device="cpu")
    layer = n.layers["act"]
    assert layer.p.beta == 2.0 and layer.param_str == "beta: 2"
    x = torch.tensor([1.0, -1.0])
    assert torch.allclose(n.forward(x=x)["y"], x * torch.sigmoid(2 * x))
    two = Net(python_layer(path, "AffineTwoBlocks", "scale_part { k: 3 } shift_part { b: 1 }"), device="cpu")
    assert two.forward(x=torch.tensor([1.0, 2.0]))["y"].tolist() == [4.0, 7.0]


@pytest.mark.parametrize("layer,param_str,extra,message", [
    ("Swish", "bta: 2", "", "in param_str \"bta: 2\": unknown param 'bta' in swish_param (did you mean beta?)"),
    ("Swish", "beta: fast", "", "in param_str \"beta: fast\": 'beta' expects a number, found fast"),
    ("Swish", "beta 2", "", "in param_str \"beta 2\": "),
    ("Swish", "beta: 2", "swish_param { beta: 3 }", "swish_param is given both in param_str and as a block"),
    ("AffineTwoBlocks", "scale_prt { k: 1 }", "",
     "in param_str \"scale_prt { k: 1 }\": unknown param block 'scale_prt' (this layer takes scale_part, "
     "shift_part) (did you mean scale_part?)"),
])
def test_param_str_errors_name_the_layer(tmp_path, clean_modules, layer, param_str, extra, message):
    path = write(tmp_path, "cl_param_layers2.py", PARAM_LAYERS)
    with pytest.raises(NetError) as e:
        Net(python_layer(path, layer, param_str, extra), device="cpu")
    assert str(e.value).startswith("<string>:2:1: layer 'act' (Python): " + message)
    assert "\n" not in str(e.value)


# ---- NumPy layers and meta tensors --------------------------------------------------------------------------------

NUMPY_LAYERS = '''
import numpy as np
import torch
from layers import Layer


class NpSquare(Layer):
    def forward(self, x):
        return torch.from_numpy(np.square(x.numpy()))


class ItemScale(Layer):
    def forward(self, x):
        return x / x.abs().max().item()


class ToList(Layer):
    def forward(self, x):
        return torch.tensor(x.tolist()) * 2
'''


@pytest.mark.parametrize("layer", ["NpSquare", "ItemScale", "ToList"])
def test_forward_reading_values_asks_for_infer_top_shapes(tmp_path, clean_modules, layer):
    path = write(tmp_path, "cl_numpy_layers.py", NUMPY_LAYERS)
    with pytest.raises(NetError) as e:
        Net(f'input: "x" input_shape {{ dim: 2 }}\nlayer {{ name: "n" type: "Python" bottom: "x" top: "y" '
            f'python_param {{ module: "{path}" layer: "{layer}" }} }}', device="cpu")
    msg = str(e.value)
    assert msg.startswith("<string>:2:1: layer 'n' (Python): forward cannot run on meta tensors")
    assert "declare infer_top_shapes(self, bottom_shapes)" in msg and "(torch: " in msg and "\n" not in msg


def readme_tested(name):
    blocks = dict(re.findall(r"<!-- README-TESTED: (\S+) -->\s*```[a-z]*\n(.*?)```", README, flags=re.S))
    return blocks[name]


def test_readme_numpy_layer_with_infer_top_shapes_runs(tmp_path, monkeypatch, capsys, clean_modules):
    write(tmp_path, "np_layers.py", readme_tested("np_layers.py"))
    write(tmp_path, "clip.prototxt", '''
        layer { name: "data" type: "DummyData" top: "data"
                dummy_data_param { shape { dim: 2 dim: 3 } data_filler { type: "constant" value: 1.5 } } }
        layer { name: "clip" type: "NpClip" bottom: "data" top: "clip" }
    ''')
    monkeypatch.chdir(tmp_path)
    code, out, err = cli(capsys, "clip.prototxt", "--import", "np_layers.py", "--iterations", 1, "--device", "cpu")
    assert (code, out) == (0, ["clip = 1"])
    sys.modules.pop("user_layers_np_layers", None)


# ---- one class per type name --------------------------------------------------------------------------------------

def test_a_builtin_type_name_is_refused_unless_overridden(tmp_path, clean_modules):
    builtin = get_layer_class("ReLU")

    class ReLU(Layer):
        def forward(self, x):
            return x

    with pytest.raises(ValueError) as e:
        register_layer("ReLU")(ReLU)
    msg = str(e.value)
    assert msg.startswith("layer type 'ReLU' is already registered by layers.caffe.activation:ReLU (")
    assert f"{__name__}:{ReLU.__qualname__} (" in msg and "override=True" in msg
    assert get_layer_class("ReLU") is builtin

    class First(Layer):
        pass

    class Second(Layer):
        pass

    register_layer("ClOverrideTest", override=True)(First)
    with pytest.raises(ValueError, match="already registered by .*First"):
        register_layer("ClOverrideTest")(Second)
    assert register_layer("ClOverrideTest", override=True)(Second) is Second
    assert get_layer_class("ClOverrideTest") is Second

    # the same class again is fine: its module reloaded, or its file imported under another module name
    path = write(tmp_path, "cl_reload_layers.py", '''
        from layers import Layer, register_layer

        @register_layer("ClReloadTest")
        class Reloaded(Layer):
            pass
    ''')
    assert import_user_module(str(path)).Reloaded is get_layer_class("ClReloadTest")
    sys.path.insert(0, str(tmp_path))
    try:
        module = importlib.import_module("cl_reload_layers")
        assert get_layer_class("ClReloadTest") is module.Reloaded
        module = importlib.reload(module)
        assert get_layer_class("ClReloadTest") is module.Reloaded
    finally:
        sys.path.remove(str(tmp_path))


def test_import_replacing_a_builtin_is_one_line_naming_both(tmp_path, monkeypatch, capsys, clean_modules):
    builtin = get_layer_class("ReLU")
    write(tmp_path, "cl_relu_layers.py", '''
        from layers import Layer, register_layer

        @register_layer("ReLU")
        class ReLU(Layer):
            def forward(self, x):
                return x
    ''')
    write(tmp_path, "net.prototxt", 'input: "x" input_shape { dim: 2 }\n'
                                    'layer { name: "r" type: "ReLU" bottom: "x" top: "y" }\n')
    monkeypatch.chdir(tmp_path)
    code, out, err = cli(capsys, "net.prototxt", "--import", "cl_relu_layers.py", "--device", "cpu")
    assert code == 2 and len(err) == 1
    assert err[0].startswith("error: error importing layer file 'cl_relu_layers.py': ValueError: layer type 'ReLU' "
                             "is already registered by layers.caffe.activation:ReLU (")
    assert "user_layers_cl_relu_layers:ReLU (cl_relu_layers.py) may not replace it" in err[0]
    assert get_layer_class("ReLU") is builtin


# ---- README -------------------------------------------------------------------------------------------------------

def test_readme_netspec_snippet_shows_its_import_and_runs(tmp_path, monkeypatch):
    code = readme_tested("netspec_example.py")
    assert code.startswith("from nets.netspec import NetSpec, layers as L, params as P\n")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "netspec_example.py", "exec"), {})
    assert Net("tiny.prototxt", phase="TEST", device="cpu").blob_shapes["pool1"] == (8, 20, 12, 12)


def test_readme_documents_param_str_import_path_and_override():
    section = README[README.index("### Your own layer"):README.index("## Layout")]
    assert 'param_str: "beta: 2"` gives `self.p.beta == 2`' in section
    assert "folder of the prototxt file" in section and "current folder" in section
    assert "def infer_top_shapes(self, bottom_shapes):" in section
    assert '@register_layer("ReLU", override=True)' in section
