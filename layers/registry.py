"""Layer registry: `@register_layer("Type", aliases=(...))`, lookup by type name, and loading of user layers
(`type: "Python"` with python_param { module layer }, or `run_net.py --import MODULE_OR_FILE`)."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys

from netdef.errors import NetError
from netdef.params import did_you_mean

__all__ = ["register_layer", "get_layer_class", "registered_types", "import_user_module", "load_python_layer"]

_REGISTRY: dict[str, type] = {}


def register_layer(type_name: str, aliases: tuple[str, ...] = ()):
    """Class decorator: make a Layer subclass available under `type_name` (and each alias) in prototxt."""
    def deco(cls):
        for name in (type_name, *aliases):
            old = _REGISTRY.get(name)
            if old is not None and old.__qualname__ != cls.__qualname__:
                raise ValueError(f"layer type '{name}' is already registered by {old.__module__}.{old.__qualname__}")
            _REGISTRY[name] = cls
        cls.type_name = type_name
        return cls
    return deco


def registered_types() -> dict[str, type]:
    _load_builtin()
    return dict(_REGISTRY)


def get_layer_class(type_name: str, where: str = ""):
    _load_builtin()
    cls = _REGISTRY.get(type_name)
    if cls is None:
        prefix = f"{where}: " if where else ""
        raise NetError(f"{prefix}unknown layer type '{type_name}'{did_you_mean(type_name, _REGISTRY)}")
    return cls


def _load_builtin() -> None:
    import layers  # noqa: F401  (importing the package registers every built-in layer)


def import_user_module(module_or_file: str, where: str = ""):
    """Import a module by dotted name, or a .py file by path; its @register_layer classes register."""
    prefix = f"{where}: " if where else ""
    if module_or_file.endswith(".py") or os.sep in module_or_file or os.path.exists(module_or_file):
        path = os.path.abspath(module_or_file)
        if not os.path.isfile(path):
            raise NetError(f"{prefix}cannot import layer file '{module_or_file}': no such file")
        name = "user_layers_" + os.path.splitext(os.path.basename(path))[0]
        if name in sys.modules and getattr(sys.modules[name], "__file__", None) == path:
            return sys.modules[name]
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except NetError:
            raise
        except Exception as e:
            del sys.modules[name]
            raise NetError(f"{prefix}error importing layer file '{module_or_file}': {type(e).__name__}: {e}") from e
        return module
    try:
        return importlib.import_module(module_or_file)
    except ModuleNotFoundError as e:
        raise NetError(f"{prefix}cannot import layer module '{module_or_file}': {e}") from e


def load_python_layer(module: str, layer: str, where: str):
    """Caffe's Python layer: the class `layer` from `module` (dotted name or .py path)."""
    from layers.base import Layer
    mod = import_user_module(module, where)
    cls = getattr(mod, layer, None)
    if cls is None:
        names = [n for n, v in vars(mod).items() if isinstance(v, type) and issubclass(v, Layer)]
        raise NetError(f"{where}: module '{module}' has no layer class '{layer}'{did_you_mean(layer, names)}")
    if not (isinstance(cls, type) and issubclass(cls, Layer)):
        raise NetError(f"{where}: '{module}.{layer}' is not a subclass of layers.base.Layer")
    return cls
