"""Runs the `Examples::` block of every registered layer's docstring (layers/caffe, layers/forks,
layers/hand) as a doctest.

Each example builds its layer with layers.build.make_layer on a small closed-form input and prints a value a
reader can check by hand; a layer whose docstring has no `>>>` lines is not collected. REQUIRED lists the
layers that must keep an example, so the examples cannot silently disappear.
"""

import doctest
import importlib
import pkgutil

import pytest
import torch

import layers
import layers.caffe
import layers.forks
import layers.hand
from layers.registry import registered_types

OPTIONFLAGS = doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS

REQUIRED = ("Convolution", "Deconvolution", "InnerProduct", "Pooling", "ReLU", "Power", "Softmax", "Dropout",
            "Eltwise", "Concat", "Slice", "Flatten", "Reshape", "BatchNorm", "Scale", "EuclideanLoss",
            "SoftmaxWithLoss", "Accuracy", "HandScale", "NormalizedRootDepth", "GenHeatmap", "SoftArgmax",
            "LatentDepth", "CropToImage", "RootDepth", "ScaleRecovery", "Reconstruct3D", "L1Loss", "EPE2D", "EPE3D",
            "PCK3D", "ConvolutionDepthwise", "ShuffleChannel")


def _import_layer_modules() -> None:
    """Every module directly under layers/caffe, layers/forks and layers/hand (not the layers/hand/rhd package)."""
    for pkg in (layers.caffe, layers.forks, layers.hand):
        for info in pkgutil.iter_modules(pkg.__path__):
            if not info.ispkg:
                importlib.import_module(f"{pkg.__name__}.{info.name}")


def _layer_classes() -> dict[str, type]:
    """Registered layer classes defined in layers/caffe, layers/forks or layers/hand, by class name (aliases collapse)."""
    _import_layer_modules()
    found = {}
    for cls in registered_types().values():
        mod = cls.__module__
        if mod.startswith(("layers.caffe.", "layers.forks.", "layers.hand.")) and not mod.startswith("layers.hand.rhd"):
            found[cls.__name__] = cls
    return dict(sorted(found.items()))


def _examples() -> dict[str, doctest.DocTest]:
    """The doctest of each layer class's own docstring (recurse=False: its methods' docstrings are not examples)."""
    finder = doctest.DocTestFinder(recurse=False)
    tests = {}
    for name, cls in _layer_classes().items():
        module = importlib.import_module(cls.__module__)
        for test in finder.find(cls, f"{cls.__module__}.{name}", module=module, globs={}):
            if test.examples:
                tests[name] = test
    return tests


EXAMPLES = _examples()


@pytest.fixture
def print_options():
    """The examples print tensors with torch's default precision, never in scientific notation; the defaults
    come back after."""
    torch.set_printoptions(precision=4, sci_mode=False)
    yield
    torch.set_printoptions(profile="default")


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_layer_example(name, print_options):
    test = EXAMPLES[name]
    test.globs = {"__name__": test.name}
    report = []
    result = doctest.DocTestRunner(optionflags=OPTIONFLAGS).run(test, out=report.append, clear_globs=True)
    assert result.failed == 0, (f"{name}: {result.failed} of {result.attempted} example(s) failed\n"
                                + "".join(report))


def test_required_layers_have_examples():
    types = registered_types()
    missing = [t for t in REQUIRED if t in types and types[t].__name__ not in EXAMPLES]
    assert not missing, f"these layers lost the `Examples::` block of their docstring: {missing}"


def test_examples_are_marked():
    """Each example sits in an `Examples::` section (at the end of the docstring, as in torch.nn)."""
    unmarked = [name for name, test in EXAMPLES.items()
                if not 0 <= test.docstring.find("Examples::") < test.docstring.find(">>>")]
    assert not unmarked, f"docstrings with >>> lines but no `Examples::` heading: {unmarked}"
