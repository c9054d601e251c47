"""Weights files in Caffe's HDF5 layout (Net::ToHDF5 / Net::CopyTrainedLayersFromHDF5).

    /data/<layer name>/0, /data/<layer name>/1, ...   the layer's blobs in Caffe order, float32

Every layer gets a group (an empty one when it has no blobs), as Caffe writes it. A blob shared with an
earlier layer (`param { name: ... }`) is written only by its owner, and a file may leave it out. Layer names
containing '/' (GoogLeNet's 'inception_3a/1x1') become nested groups; save and load use the same paths.

Loading follows Caffe: file layers the net lacks are ignored, net layers absent from the file keep their
values, and the returned LoadReport lists both. Everything is checked before anything is copied, so a
mismatch leaves the net unchanged.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from netdef.errors import NetError, NetWarning

__all__ = ["save_weights", "load_weights", "LoadReport", "atomic_h5", "remove_stale_temp_files"]


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


def save_weights(net, path) -> None:
    """Write the net's blobs to `path` (HDF5, Caffe's layout). Atomic: a temporary file, then rename."""
    path = os.fspath(path)
    layers = _layer_blobs(net)
    _check_names(layers, path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise NetError(f"cannot write weights '{path}': no such directory '{directory}'")

    def write(f) -> None:
        data = f.create_group("data")
        for name, blobs, owned in layers:
            group = data.require_group(name)   # an earlier layer may have created it as a parent
            for i, (blob, own) in enumerate(zip(blobs, owned)):
                if own:
                    group.create_dataset(str(i), data=blob.detach().float().cpu().numpy())

    atomic_h5(path, write, "weights")


def atomic_h5(path: str, write, what: str) -> None:
    """Write an HDF5 file through `write(h5file)` into a temporary file in the same folder, then rename it into
    place (an atomic rename; created by h5py, so the umask applies). A kill never leaves a half file at `path`;
    it may leave the temporary file `<path>.<pid>.tmp`, which remove_stale_temp_files() clears."""
    import h5py
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with h5py.File(tmp, "w") as f:
            write(f)
        os.replace(tmp, path)
    except OSError as e:
        raise NetError(f"cannot write {what} '{path}': {e.strerror or e}") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


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


def _read(path: str, net) -> tuple[LoadReport, list[tuple[torch.Tensor, np.ndarray]]]:
    import h5py
    report = LoadReport(path)
    copies = []
    with h5py.File(path, "r") as f:
        data = f.get("data")
        if not isinstance(data, h5py.Group):
            raise NetError(f"cannot read weights '{path}': no 'data' group (not a Caffe HDF5 weights file)")
        in_file = _file_layers(data)
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
                ds = sets.get(str(i))
                if ds is None:
                    continue    # shared with an earlier layer, which owns (and loads) it
                file_shape, net_shape = tuple(ds.shape), tuple(blob.shape)
                if file_shape != net_shape and _strip_ones(file_shape) != _strip_ones(net_shape):
                    raise NetError(f"{path}: layer '{name}' blob {i}: file has shape {file_shape}, "
                                   f"net has {net_shape}")
                if ds.dtype.kind not in "fiu":
                    raise NetError(f"{path}: layer '{name}' blob {i}: not numeric data ({ds.dtype})")
                value = ds[()]
                if value.dtype.kind == "f" and not np.isfinite(value).all() and name not in report.nonfinite:
                    report.nonfinite.append(name)
                copies.append((blob, value))
            report.loaded.append(name)
    return report, copies


def load_weights(net, path, strict: bool = False) -> LoadReport:
    """Copy blobs from an HDF5 weights file into the net's existing tensors (identity and sharing kept).

    `strict`: refuse, before copying anything, a file that lacks some of the net's layers with blobs."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise NetError(f"cannot read weights '{path}': no such file")
    try:
        report, copies = _read(path, net)
    except (OSError, KeyError, RuntimeError) as e:   # h5py's errors for unreadable or corrupt files
        detail = e.args[0] if isinstance(e, KeyError) and e.args else e
        raise NetError(f"cannot read weights '{path}': {detail}") from None
    if strict and report.missing:
        raise NetError(f"{path}: no weights for layer(s) {', '.join(report.missing)} of the net")
    if report.nonfinite:
        warnings.warn(f"'{path}' holds NaN or Inf values in layer(s) {', '.join(report.nonfinite)} (the run that "
                      f"wrote it had diverged?)", NetWarning, stacklevel=2)
    with torch.no_grad():
        for blob, array in copies:
            native = np.float64 if array.dtype.itemsize == 8 else np.float32   # native byte order for torch
            blob.copy_(torch.from_numpy(np.ascontiguousarray(array, dtype=native)).reshape(blob.shape))
    return report
