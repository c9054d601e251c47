"""Weights files: Caffe's HDF5 layout (Net::ToHDF5 / Net::CopyTrainedLayersFromHDF5) and the binary
`.caffemodel` (Net::ToProto / Net::CopyTrainedLayersFrom; nets/caffemodel.py), told apart by content as
Caffe does (an HDF5 signature, else a protobuf NetParameter).

    /data/<layer name>/0, /data/<layer name>/1, ...   the layer's blobs in Caffe order, float32

In HDF5 every layer gets a group (an empty one when it has no blobs), as Caffe writes it. A blob shared with an
earlier layer (`param { name: ... }`) is written only by its owner, and a file may leave it out. Layer names
containing '/' (GoogLeNet's 'inception_3a/1x1') become nested groups; save and load use the same paths.
A `.caffemodel` holds every layer with all its blobs (shared ones in each layer that uses them, as Caffe
writes it). save_weights picks the format from the name: `.caffemodel` binary, anything else (`.h5`,
`.caffemodel.h5`) HDF5.

Loading follows Caffe: file layers the net lacks are ignored, net layers absent from the file keep their
values, and the returned LoadReport lists both. Everything is checked before anything is copied, so a
mismatch leaves the net unchanged. A blob's shape must equal the net's, up to leading ones (an HDF5 blob
written as (1, 1, out, in) for an InnerProduct weight); a legacy caffemodel blob (num/channels/height/width)
matches as Caffe's Blob::ShapeEquals does: the net's shape, at most 4 axes, padded in front with ones.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from netdef.errors import NetError, NetWarning
from nets.caffemodel import BlobRecord, LayerRecord, ModelRecord, atomic_write, net_records, read_caffemodel, \
    write_caffemodel

__all__ = ["save_weights", "load_weights", "LoadReport", "atomic_h5", "remove_stale_temp_files",
           "HDF5_SIGNATURE", "weights_format", "format_for_path", "read_weights_file", "write_weights_file"]

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


@dataclass
class LoadReport:
    """What load_weights did: layers copied, file layers the net lacks, net layers absent from the file, and
    loaded layers whose values are not all finite (NaN or Inf: a diverged run's weights)."""
    path: str
    loaded: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    nonfinite: list[str] = field(default_factory=list)


    def __str__(self) -> str:
        text = f"loaded weights for {len(self.loaded)} layer(s) from '{self.path}'"
        if self.ignored:
            text += f"; ignored {len(self.ignored)} file layer(s) the net lacks: {', '.join(self.ignored)}"
        if self.missing:
            text += f"; {len(self.missing)} net layer(s) not in the file kept their values: " \
                    f"{', '.join(self.missing)}"
        return text


def weights_format(path) -> str:
    """"hdf5" when the file carries HDF5's signature (at byte 0, or 512, 1024, ... after a user block, as
    H5Fis_hdf5 looks for it), else "caffemodel"."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            offset = 0
            while offset + len(HDF5_SIGNATURE) <= size:
                fh.seek(offset)
                if fh.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE:
                    return "hdf5"
                offset = 512 if offset == 0 else offset * 2
    except OSError as e:
        raise NetError(f"cannot read weights '{path}': {e.strerror or e}") from None
    return "caffemodel"


def format_for_path(path) -> str:
    """The format save_weights writes for a name: "caffemodel" for `.caffemodel`, else "hdf5"."""
    return "caffemodel" if os.fspath(path).lower().endswith(".caffemodel") else "hdf5"


def _layer_blobs(net) -> list[tuple[str, list[torch.Tensor], list[bool]]]:
    """(layer name, blobs, owned flags) for every layer in order; a blob seen in an earlier layer is shared."""
    seen: set[int] = set()
    out = []
    for step in net.plan:
        blobs = net.layers[step.key].caffe_blobs()
        owned = [id(b) not in seen for b in blobs]
        seen.update(id(b) for b in blobs)
        out.append((step.name, blobs, owned))
    return out


def _check_names(layers, path: str) -> None:
    names = {name for name, _, _ in layers}
    for name, blobs, _ in layers:
        # HDF5 would read '/x' as absolute, '' and '.' as the parent group itself.
        if any(part in ("", ".") for part in name.split("/")):
            raise NetError(f"cannot write weights '{path}': layer name '{name}' cannot be an HDF5 group path")
        for i in range(len(blobs)):
            if f"{name}/{i}" in names:
                raise NetError(f"cannot write weights '{path}': layer '{name}/{i}' clashes with blob {i} "
                               f"of layer '{name}'")


def save_weights(net, path, format: str | None = None) -> None:
    """Write the net's blobs to `path`: HDF5 in Caffe's layout, or a binary `.caffemodel` (`format`
    "hdf5" / "caffemodel"; default from the name, see format_for_path). Atomic: a temporary file, then rename."""
    path = os.fspath(path)
    fmt = format or format_for_path(path)
    if fmt == "caffemodel":
        write_caffemodel(path, net_records(net), net.name)
        return
    if fmt != "hdf5":
        raise NetError(f"cannot write weights '{path}': unknown format '{fmt}' (hdf5 or caffemodel)")
    layers = [(name, [b.detach().float().cpu().numpy() if own else None for b, own in zip(blobs, owned)])
              for name, blobs, owned in _layer_blobs(net)]
    _write_h5(path, layers)


def _write_h5(path: str, layers: list[tuple[str, list]]) -> None:
    """Write (layer name, [array or None per blob]) in Caffe's HDF5 layout; None blobs are left out."""
    _check_names([(name, blobs, None) for name, blobs in layers], path)
    seen: set[str] = set()
    for name, blobs in layers:
        if name in seen and any(b is not None for b in blobs):
            raise NetError(f"cannot write weights '{path}': two layers named '{name}' with blobs")
        seen.add(name)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise NetError(f"cannot write weights '{path}': no such directory '{directory}'")

    def write(f) -> None:
        data = f.create_group("data")
        for name, blobs in layers:
            group = data.require_group(name)   # an earlier layer may have created it as a parent
            for i, blob in enumerate(blobs):
                if blob is not None:
                    group.create_dataset(str(i), data=blob)

    atomic_h5(path, write, "weights")


def atomic_h5(path: str, write, what: str) -> None:
    """Write an HDF5 file through `write(h5file)` into a temporary file in the same folder, then rename it into
    place (an atomic rename; created by h5py, so the umask applies). A kill never leaves a half file at `path`;
    it may leave the temporary file `<path>.<pid>.tmp`, which remove_stale_temp_files() clears."""
    import h5py

    def write_temp(tmp):
        with h5py.File(tmp, "w") as f:
            write(f)

    atomic_write(path, write_temp, what)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True      # someone else's process
    return True


def remove_stale_temp_files(prefix: str) -> list[str]:
    """Remove the temporary files atomic_h5 left for paths starting with `prefix` (e.g. a snapshot prefix) when
    the process that wrote them is gone (killed mid-write). Returns the paths removed."""
    folder = os.path.dirname(prefix) or "."
    stem = os.path.basename(prefix)
    pattern = re.compile(re.escape(stem) + r".*\.h5\.(\d+)\.tmp$")
    removed = []
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return removed
    for name in names:
        m = pattern.match(name)
        if m and not _process_alive(int(m.group(1))):
            path = os.path.join(folder, name)
            try:
                os.remove(path)
            except OSError:
                continue
            removed.append(path)
    return removed


def _file_layers(data) -> dict[str, dict[str, object]]:
    """Layer path -> {dataset name: dataset}. A layer is a group holding datasets, or an empty group
    (a layer without blobs); a group holding only groups is a parent of names with '/'."""
    import h5py
    layers = {}

    def visit(name, obj):
        if isinstance(obj, h5py.Group):
            sets = {k: v for k, v in obj.items() if isinstance(v, h5py.Dataset)}
            if sets or len(obj) == 0:
                layers[name] = sets
    data.visititems(visit)
    return layers


def _strip_ones(shape: tuple[int, ...]) -> tuple[int, ...]:
    i = 0
    while i < len(shape) and shape[i] == 1:
        i += 1
    return shape[i:]


@dataclass
class _Stored:
    """A blob in a file: its shape, whether that is a legacy 4-D caffemodel shape, its dtype, its reader."""
    shape: tuple[int, ...]
    legacy: bool
    dtype: np.dtype
    read: Callable[[], np.ndarray]


def _shape_matches(net_shape: tuple[int, ...], blob: _Stored) -> bool:
    if blob.legacy:      # Blob::ShapeEquals for a BlobProto with num/channels/height/width
        return len(net_shape) <= 4 and (1,) * (4 - len(net_shape)) + net_shape == blob.shape
    return blob.shape == net_shape or _strip_ones(blob.shape) == _strip_ones(net_shape)


def _plan(path: str, net, in_file: dict[str, dict[str, _Stored]]) -> tuple[LoadReport, list]:
    """Check a file's layers ({layer name: {blob index as text: blob}}, in file order) against the net; the
    report and the (tensor, array) copies to make."""
    report = LoadReport(path)
    copies = []
    net_layers = _layer_blobs(net)
    net_names = {name for name, _, _ in net_layers}
    report.ignored = [name for name in in_file if name not in net_names]
    for name, blobs, owned in net_layers:
        if not blobs:
            continue
        sets = in_file.get(name)
        if sets is None:
            report.missing.append(name)
            continue
        bad = [k for k in sets if not (k.isdigit() and str(int(k)) == k)]
        if bad:
            raise NetError(f"{path}: layer '{name}': unexpected dataset '{bad[0]}' "
                           f"(blobs are named 0, 1, ...)")
        absent = [i for i in range(len(blobs)) if str(i) not in sets and owned[i]]
        if len(sets) > len(blobs) or any(int(k) >= len(blobs) for k in sets) or absent:
            raise NetError(f"{path}: layer '{name}': file has {len(sets)} blob(s), net has {len(blobs)}")
        for i, blob in enumerate(blobs):
            stored = sets.get(str(i))
            if stored is None:
                continue    # shared with an earlier layer, which owns (and loads) it
            net_shape = tuple(blob.shape)
            if not _shape_matches(net_shape, stored):
                legacy = " (legacy num, channels, height, width)" if stored.legacy else ""
                raise NetError(f"{path}: layer '{name}' blob {i}: file has shape {stored.shape}{legacy}, "
                               f"net has {net_shape}")
            if stored.dtype.kind not in "fiu":
                raise NetError(f"{path}: layer '{name}' blob {i}: not numeric data ({stored.dtype})")
            value = stored.read()
            if value.dtype.kind == "f" and not np.isfinite(value).all() and name not in report.nonfinite:
                report.nonfinite.append(name)
            copies.append((blob, value))
        report.loaded.append(name)
    return report, copies


def _read_h5(path: str, net) -> tuple[LoadReport, list]:
    import h5py
    with h5py.File(path, "r") as f:
        data = f.get("data")
        if not isinstance(data, h5py.Group):
            raise NetError(f"cannot read weights '{path}': no 'data' group (not a Caffe HDF5 weights file)")
        in_file = {name: {k: _Stored(tuple(ds.shape), False, ds.dtype, lambda ds=ds: ds[()])
                          for k, ds in sets.items()}
                   for name, sets in _file_layers(data).items()}
        return _plan(path, net, in_file)


def _model_layers(model: ModelRecord) -> dict[str, dict[str, _Stored]]:
    """A caffemodel's layers by name; of two layers of one name the later one counts (Caffe copies both, in
    order, so the later values stay)."""
    out: dict[str, dict[str, _Stored]] = {}
    for rec in model.layers:
        out.pop(rec.name, None)
        out[rec.name] = {str(i): _Stored(b.shape, b.legacy, b.data.dtype, lambda b=b: b.array)
                         for i, b in enumerate(rec.blobs) if b is not None}
    return out


def load_weights(net, path, strict: bool = False) -> LoadReport:
    """Copy blobs from a weights file (HDF5 or binary caffemodel, told by content) into the net's existing
    tensors (identity and sharing kept).

    `strict`: refuse, before copying anything, a file that lacks some of the net's layers with blobs."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise NetError(f"cannot read weights '{path}': no such file")
    if weights_format(path) == "hdf5":
        try:
            report, copies = _read_h5(path, net)
        except (OSError, KeyError, RuntimeError) as e:   # h5py's errors for unreadable or corrupt files
            detail = e.args[0] if isinstance(e, KeyError) and e.args else e
            raise NetError(f"cannot read weights '{path}': {detail}") from None
    else:
        model = read_caffemodel(path, lead="no HDF5 signature and ")
        report, copies = _plan(path, net, _model_layers(model))
    if strict and report.missing:
        raise NetError(f"{path}: no weights for layer(s) {', '.join(report.missing)} of the net")
    if report.nonfinite:
        warnings.warn(f"'{path}' holds NaN or Inf values in layer(s) {', '.join(report.nonfinite)} (the run that "
                      f"wrote it had diverged?)", NetWarning, stacklevel=2)
    with torch.no_grad():
        for blob, array in copies:
            native = np.float64 if array.dtype.itemsize == 8 else np.float32   # native byte order for torch
            writable = np.require(array, dtype=native, requirements=["C", "W"])   # a caffemodel's are read-only
            blob.copy_(torch.from_numpy(writable).reshape(blob.shape))
    return report


# ---- whole files, without a net (tools/convert_weights.py) --------------------------------------------------

def read_weights_file(path) -> ModelRecord:
    """Every layer of a weights file, either format (by content), without a net. From HDF5: layers in the
    file's (alphabetical) order, no types, None for the blobs a layer leaves out (shared with another)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise NetError(f"cannot read weights '{path}': no such file")
    if weights_format(path) == "caffemodel":
        return read_caffemodel(path, lead="no HDF5 signature and ")
    import h5py
    try:
        with h5py.File(path, "r") as f:
            data = f.get("data")
            if not isinstance(data, h5py.Group):
                raise NetError(f"cannot read weights '{path}': no 'data' group (not a Caffe HDF5 weights file)")
            model = ModelRecord(form="hdf5")
            for name, sets in _file_layers(data).items():
                bad = [k for k in sets if not (k.isdigit() and str(int(k)) == k)]
                if bad:
                    raise NetError(f"{path}: layer '{name}': unexpected dataset '{bad[0]}' "
                                   f"(blobs are named 0, 1, ...)")
                blobs: list[BlobRecord | None] = [None] * (max((int(k) for k in sets), default=-1) + 1)
                for k, ds in sets.items():
                    if ds.dtype.kind not in "fiu":
                        raise NetError(f"{path}: layer '{name}' blob {k}: not numeric data ({ds.dtype})")
                    value = ds[()]
                    value = value.astype(np.float64 if value.dtype == np.float64 else np.float32)
                    blobs[int(k)] = BlobRecord(tuple(value.shape), value.reshape(-1))
                model.layers.append(LayerRecord(name, blobs=blobs))
            return model
    except (OSError, KeyError, RuntimeError) as e:
        detail = e.args[0] if isinstance(e, KeyError) and e.args else e
        raise NetError(f"cannot read weights '{path}': {detail}") from None


def write_weights_file(path, model: ModelRecord, format: str | None = None) -> None:
    """Write layers read by read_weights_file, in `format` (default from the name). A legacy caffemodel blob
    keeps its 4-D shape in HDF5 (load_weights takes it; Caffe's own HDF5 loader wants the net's shapes)."""
    path = os.fspath(path)
    fmt = format or format_for_path(path)
    if fmt == "caffemodel":
        write_caffemodel(path, model.layers, model.name)
    elif fmt == "hdf5":
        _write_h5(path, [(rec.name, [None if b is None else b.array for b in rec.blobs]) for rec in model.layers])
    else:
        raise NetError(f"cannot write weights '{path}': unknown format '{fmt}' (hdf5 or caffemodel)")
