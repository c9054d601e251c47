"""Layer registry: `@register_layer("Type", aliases=(...))`, lookup by type name, and importing user layer modules
(`run_net.py --import MODULE_OR_FILE`, and the module of `type: "Python"` python_param { module layer }, whose
class layers.pycaffe.python_layer_class then takes: one of ours, or a caffe.Layer it wraps).

Where user modules are found: while a user module is imported, the folder of an imported .py file, the folders
passed as `search` (a net built from a prototxt file passes that file's folder) and the current folder come
first on sys.path, as a script's own folder does for `python script.py`; they are taken off again afterwards
(so helper modules a layer file imports at its top are found, imports inside forward are not).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import sys
from typing import Iterable

from netdef.errors import NetError
from netdef.params import did_you_mean

__all__ = ["register_layer", "get_layer_class", "registered_types", "import_user_module"]

_REGISTRY: dict[str, type] = {}

_USER_LAYER_HINT = (" (is it a layer of your own? load its file with --import FILE.py (from Python: "
                   "layers.import_user_module), or use type: \"Python\" with python_param { module: ... layer: ... })")


def register_layer(type_name: str, aliases: tuple[str, ...] = (), override: bool = False):
    """Class decorator: make a Layer subclass available under `type_name` (and each alias) in prototxt.

    A name another class already owns is refused (ValueError naming both classes) unless `override=True`;
    registering the same class again (its module reloaded or imported again) is allowed."""
    def deco(cls):
        for name in (type_name, *aliases):
            old = _REGISTRY.get(name)
            if old is not None and not override and not _same_class(old, cls):
                raise ValueError(f"layer type '{name}' is already registered by {_describe(old)}; "
                                 f"{_describe(cls)} may not replace it: choose another type name, or pass "
                                 f"register_layer({name!r}, override=True) to replace it on purpose")
        for name in (type_name, *aliases):
            _REGISTRY[name] = cls
        cls.type_name = type_name
        return cls
    return deco


def _module_file(cls) -> str | None:
    f = getattr(sys.modules.get(cls.__module__), "__file__", None)
    return os.path.realpath(f) if f else None


def _same_class(old: type, new: type) -> bool:
    """The same class defined again: its module reloaded (same module name), or the same file imported under
    another module name (`--import my_layers.py` and python_param { module: "my_layers" })."""
    if old is new:
        return True
    if old.__qualname__ != new.__qualname__:
        return False
    if old.__module__ == new.__module__:
        return True
    file = _module_file(old)
    return file is not None and file == _module_file(new)


def _describe(cls: type) -> str:
    """module:qualname (file), for messages."""
    file = _module_file(cls)
    if file is None:
        return f"{cls.__module__}:{cls.__qualname__}"
    rel = os.path.relpath(file)
    return f"{cls.__module__}:{cls.__qualname__} ({file if rel.startswith('..') else rel})"


def registered_types() -> dict[str, type]:
    _load_builtin()
    return dict(_REGISTRY)


def get_layer_class(type_name: str, where: str = ""):
    _load_builtin()
    cls = _REGISTRY.get(type_name)
    if cls is None:
        prefix = f"{where}: " if where else ""
        hint = did_you_mean(type_name, _REGISTRY) or _USER_LAYER_HINT
        raise NetError(f"{prefix}unknown layer type '{type_name}'{hint}")
    return cls


def _load_builtin() -> None:
    import layers  # noqa: F401  (importing the package registers every built-in layer)


@contextlib.contextmanager
def _user_import_path(folders: Iterable[str] = ()):
    """`folders` and then the current folder first on sys.path for the duration (those not there already);
    taken off again afterwards."""
    wanted = []
    for d in [*folders, os.getcwd()]:
        d = os.path.abspath(d)
        if d not in wanted:
            wanted.append(d)
    added = [d for d in wanted if d not in sys.path]
    sys.path[:0] = added
    importlib.invalidate_caches()   # a file written just now must be found
    try:
        yield
    finally:
        for d in added:
            if d in sys.path:
                sys.path.remove(d)


def _is_path(module_or_file: str) -> bool:
    return (module_or_file.endswith(".py") or os.sep in module_or_file or "/" in module_or_file
            or os.path.isfile(module_or_file))


def import_user_module(module_or_file: str, where: str = "", search: Iterable[str] = ()):
    """Import a module by dotted name, or a .py file by path; its @register_layer classes register.

    `search`: folders to look in besides the current one (a relative .py path is tried in the current folder
    first, then in each); see the module docstring for sys.path while importing."""
    prefix = f"{where}: " if where else ""
    search = [os.path.abspath(d) for d in search]
    if _is_path(module_or_file):
        path = os.path.abspath(module_or_file)
        if not os.path.isfile(path) and not os.path.isabs(module_or_file):
            path = next((os.path.join(d, module_or_file) for d in search
                         if os.path.isfile(os.path.join(d, module_or_file))), path)
        if not os.path.isfile(path):
            looked = f" (looked in {', '.join([os.getcwd(), *search])})" if search else ""
            raise NetError(f"{prefix}cannot import layer file '{module_or_file}': no such file{looked}")
        name = "user_layers_" + os.path.splitext(os.path.basename(path))[0]
        if name in sys.modules and getattr(sys.modules[name], "__file__", None) == path:
            return sys.modules[name]
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            with _user_import_path([os.path.dirname(path), *search]):
                spec.loader.exec_module(module)
        except NetError:
            sys.modules.pop(name, None)
            raise
        except Exception as e:
            sys.modules.pop(name, None)
            raise NetError(f"{prefix}error importing layer file '{module_or_file}': {type(e).__name__}: {e}") from e
        return module
    try:
        with _user_import_path(search):
            return importlib.import_module(module_or_file)
    except NetError:
        raise
    except ModuleNotFoundError as e:
        looked = ", ".join(dict.fromkeys([*search, os.getcwd()]))
        raise NetError(f"{prefix}cannot import layer module '{module_or_file}': {e} (looked in {looked} "
                       f"and on sys.path)") from e
    except Exception as e:
        raise NetError(f"{prefix}error importing layer module '{module_or_file}': {type(e).__name__}: {e}") from e
