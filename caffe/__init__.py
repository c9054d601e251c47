"""pycaffe's API on this project, so Caffe's Python layers and pycaffe scripts run unchanged:
`import caffe` gives caffe.Layer (layers.pycaffe: the base of a user's Python layer), caffe.TRAIN/TEST,
caffe.Net, the solvers (SGDSolver ... AdamSolver, get_solver), set_mode_cpu/set_mode_gpu/set_device and
caffe.io (load_image, resize_image, Transformer), and net_spec's NetSpec, layers, params, to_proto
(nets.netspec). See caffe/net.py and layers/pycaffe.py."""

from layers.pycaffe import TEST, TRAIN, Blob, BlobVec
from layers.pycaffe import CaffeLayer as Layer
from caffe import io
from caffe.net import (AdaDeltaSolver, AdaGradSolver, AdamSolver, Net, NesterovSolver, RMSPropSolver, SGDSolver,
                       get_solver, layer_type_list, set_device, set_mode_cpu, set_mode_gpu, set_random_seed)
from nets.netspec import NetSpec, layers, params, to_proto

__version__ = "1.0.0"

__all__ = ["Layer", "Blob", "BlobVec", "TRAIN", "TEST", "Net", "SGDSolver", "NesterovSolver", "AdaGradSolver",
           "RMSPropSolver", "AdaDeltaSolver", "AdamSolver", "get_solver", "set_mode_cpu", "set_mode_gpu",
           "set_device", "set_random_seed", "layer_type_list", "io", "NetSpec", "layers", "params", "to_proto"]
