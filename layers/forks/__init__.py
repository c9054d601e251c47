"""Layer types from public Caffe forks (not in BVLC Caffe's master), one module per family; importing this package
registers them all. Each class docstring names the fork it follows."""

import importlib
import pkgutil

for _mod in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_mod}")
