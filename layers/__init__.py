"""Layers: the standard Caffe layers (layers/caffe/), types from public Caffe forks (layers/forks/) and the
hand-pose pipeline's layers (layers/hand/).

Importing this package registers every built-in layer type."""

from layers.base import BLOB_SHAPE, FILLER, REQUIRED, Layer, Param, Params, SourceLayer
from layers.registry import get_layer_class, import_user_module, register_layer, registered_types

from layers import caffe  # noqa: F401,E402  (registers the standard layers)
from layers import forks  # noqa: F401,E402  (registers the fork types)
from layers import hand  # noqa: F401,E402  (registers the hand-pose layers)

__all__ = ["Layer", "SourceLayer", "Param", "Params", "REQUIRED", "FILLER", "BLOB_SHAPE", "register_layer",
           "get_layer_class", "registered_types", "import_user_module"]
