"""Layers: the standard Caffe layers (layers/caffe/) and the hand-pose pipeline's layers.

Importing this package registers every built-in layer type."""

from layers.base import Layer, P, Params, REQUIRED, FILLER, BLOB_SHAPE
from layers.registry import register_layer, get_layer_class, registered_types, import_user_module

from layers import caffe  # noqa: F401,E402  (registers the standard layers)
from layers import hand  # noqa

__all__ = ["Layer", "P", "Params", "REQUIRED", "FILLER", "BLOB_SHAPE", "register_layer", "get_layer_class",
           "registered_types", "import_user_module"]
