"""Caffe's HDF5Output layer (hdf5_output_layer.cpp): writes its two bottoms to an HDF5 file."""

from __future__ import annotations

import os
import tempfile

import torch

from layers.base import Layer, Param, Params
from layers.registry import register_layer

DATA_DATASET, LABEL_DATASET = "data", "label"   # Caffe's HDF5_DATA_DATASET_NAME, HDF5_DATA_LABEL_NAME


@register_layer("HDF5Output")
class HDF5Output(Layer):
    """Writes the batch to hdf5_output_param.file_name at every forward: datasets "data" (bottom 0) and "label"
    (bottom 1), each shaped (num, channels, height, width) as Caffe's legacy 4-D blobs (missing axes are 1),
    float64 in a float64 net, else float32. Each forward replaces the file with the new batch (atomically:
    written to a temporary file in the same folder, then renamed), so the last batch stays.

    Bottoms: data (N, ...), label (N, ...), each of 1 to 4 axes, with the same N.  Tops: none.
    Params (hdf5_output_param): file_name (required; relative to the current folder, as Caffe).
    No gradient (Caffe's backward does nothing).
    Differs from Caffe: Caffe creates (truncates) the file when the net is built and its second forward fails
    (the datasets exist already); here the file appears at the first forward and later forwards replace it.
    """
    params = Params("hdf5_output_param", file_name=Param(str))
    num_bottoms = 2
    num_tops = 0

    def setup(self, bottom_shapes):
        if not self.p.file_name:
            raise self.error("needs hdf5_output_param { file_name: \"out.h5\" }")
        for i, s in enumerate(bottom_shapes):
            if not 1 <= len(s) <= 4:
                raise self.error(f"bottom {i} must have 1 to 4 axes (Caffe writes it as num, channels, height, "
                                 f"width), got shape {s}")
        data, label = bottom_shapes
        if data[0] != label[0]:
            raise self.error(f"data and label must have the same batch size (first dim): {data} and {label}")
        folder = os.path.dirname(os.path.abspath(self.p.file_name))
        if not os.path.isdir(folder):
            raise self.error(f"cannot write '{self.p.file_name}': folder '{folder}' does not exist")
        if not os.access(folder, os.W_OK):
            raise self.error(f"cannot write '{self.p.file_name}': folder '{folder}' is not writable")

    def infer_top_shapes(self, bottom_shapes):
        return []

    def forward(self, data, label):
        if data.shape[0] != label.shape[0]:
            raise self.error(f"data and label must have the same batch size (first dim): {tuple(data.shape)} "
                             f"and {tuple(label.shape)}")
        arrays = {}
        for name, t in ((DATA_DATASET, data), (LABEL_DATASET, label)):
            if not 1 <= t.dim() <= 4:
                raise self.error(f"'{name}' must have 1 to 4 axes, got shape {tuple(t.shape)}")
            dtype = torch.float64 if t.dtype == torch.float64 else torch.float32
            arrays[name] = t.detach().to("cpu", dtype).reshape(tuple(t.shape) + (1,) * (4 - t.dim())).numpy()
        self.write(arrays)
        return ()

    def write(self, arrays: dict) -> None:
        import h5py
        path = os.path.abspath(self.p.file_name)
        fd, tmp = None, None
        try:
            fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=os.path.dirname(path))
            os.close(fd)
            with h5py.File(tmp, "w") as f:
                for name, array in arrays.items():
                    f.create_dataset(name, data=array)
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)           # mkstemp's 0600 would stick after the rename
            os.replace(tmp, path)
            tmp = None
        except OSError as e:
            raise self.error(f"cannot write '{self.p.file_name}': {e.strerror or e}") from None
        finally:
            if tmp is not None and os.path.exists(tmp):
                os.remove(tmp)
