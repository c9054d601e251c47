"""Memo steps 2-7: read a batch of samples of the memo's layout, given their indices.

The layout is either the per-sample text/PNG files (SPEC section 3) or the packed HDF5 file holding the same
values (memo.PACKED_FORMAT); both give identical tops. Every reader of the layout takes

    rhd_data_param { root: "ROOT"  split: "training"  packed: false }

root: the converter's --out folder (the one holding training/ and evaluation/); split: training or evaluation;
packed: false reads ROOT/<split>/all_hand/<field>/<idx>.txt|png (and matlab_gt_camera_k/, avg_bone.txt),
true reads ROOT/<split>/all_hand/packed.h5 (memo.packed_path). Nothing is opened at build: files are read at
forward, so a net builds without its data.

Readers are stateless source layers (layers.base.SourceLayer): pure functions of the index blob, fit to run in
DataLoader worker processes (the HDF5 handle is opened per process, never pickled). Bottom: index (B, 1),
non-negative integer values.
Tops are (B, ...) in the index blob's float dtype (the default dtype for an integer blob), on its device;
numbers go through float32 (as the packed file and Caffe's float blobs hold them), so both layouts agree
bit for bit. A batch may repeat an index: each distinct sample is read once and the rows come back in the
batch's order. Errors are NetError naming the layer, the path and the sample index.
Decoding prints nothing: a PNG's structure (chunk lengths and CRCs, IHDR, IEND) is checked here before OpenCV
sees it, so a truncated or garbled file is refused with a NetError instead of OpenCV's and libpng's stderr
lines, and OpenCV's logging is held at ERROR while it decodes.
forward_compact(index) gives the same top in its stored type on the CPU (uint8 pixels for ReadImage, float32
numbers for the others); the source stage (nets/source.py) sends that form from its workers.

Also here: the author's generic readers ReadBlobFromFileIndexing and ReadBlobFromFile, and MulRGB.
"""

from __future__ import annotations

import os
import struct
import zlib

import cv2
import numpy as np
import torch

from layers.base import REQUIRED, Layer, Param, Params, SourceLayer
from layers.hand.rhd import memo
from layers.hand.rhd.packed import packed_file
from layers.hand.skeleton import NUM_BONES, NUM_JOINTS
from layers.registry import register_layer
from netdef.errors import NetError

MAX_CROP_SIDE = 4096     # a crop above this is refused before decoding (an 8000 x 8000 PNG decodes to 192 MB)

RHD_DATA = Params("rhd_data_param", root=Param(str, ""), split=Param(str, "training"), packed=Param(bool, False))


def sample_indices(layer: Layer, index: torch.Tensor) -> np.ndarray:
    """The (B, 1) index blob as int64 sample indices; anything but a non-negative integer is a user error."""
    v = index.detach().reshape(index.shape[0], -1)[:, 0].to("cpu", torch.float64).numpy()
    i = np.rint(v)
    bad = ~np.isfinite(v) | (v != i) | (v < 0)
    if bad.any():
        raise layer.error(f"invalid sample index {v[bad][0]:g} in the index blob (need non-negative integers)")
    return i.astype(np.int64)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CV_LOG = getattr(getattr(cv2, "utils", None), "logging", None)   # OpenCV's logging (absent in old builds)


def png_size(data, where: str) -> tuple[int, int] | None:
    """(H, W) of PNG file bytes after checking the file's structure: the signature, IHDR first, every chunk
    whole with a correct CRC, up to IEND. None when `data` is not a PNG (another format: OpenCV decides).
    NetError naming `where` for an empty, truncated or garbled PNG (so libpng never prints about it)."""
    mv = memoryview(data).cast("B")
    n = len(mv)
    if n == 0:
        raise NetError(f"unreadable or corrupt image {where}: empty file")
    if bytes(mv[:8]) != _PNG_SIGNATURE:
        return None
    pos, size = 8, None
    while True:
        if pos + 8 > n:
            raise NetError(f"unreadable or corrupt image {where}: truncated PNG ({n} bytes, no IEND chunk)")
        length, kind = struct.unpack(">I4s", mv[pos:pos + 8])
        end = pos + 8 + length + 4
        if end > n:
            raise NetError(f"unreadable or corrupt image {where}: truncated PNG ({n} bytes, its "
                           f"{kind.decode('latin-1')!r} chunk at byte {pos} ends at {end})")
        if zlib.crc32(mv[pos + 4:end - 4]) != struct.unpack(">I", mv[end - 4:end])[0]:
            raise NetError(f"unreadable or corrupt image {where}: CRC error in the PNG's "
                           f"{kind.decode('latin-1')!r} chunk at byte {pos}")
        if size is None:
            if kind != b"IHDR" or length != 13:
                raise NetError(f"unreadable or corrupt image {where}: the PNG does not start with an IHDR chunk")
            w, h = struct.unpack(">II", mv[pos + 8:pos + 16])
            size = (h, w)
        if kind == b"IEND":
            return size
        pos = end


def _imdecode(buf: np.ndarray, flags: int):
    """cv2.imdecode with OpenCV's warnings held back (it logs e.g. 'PNG input buffer is incomplete')."""
    if _CV_LOG is None:
        return cv2.imdecode(buf, flags)
    level = _CV_LOG.getLogLevel()
    _CV_LOG.setLogLevel(_CV_LOG.LOG_LEVEL_ERROR)
    try:
        return cv2.imdecode(buf, flags)
    finally:
        _CV_LOG.setLogLevel(level)


def decode_image(data, where: str) -> np.ndarray:
    """PNG (or any OpenCV format) file bytes -> H x W x 3 uint8 BGR; `where` names the file and sample.
    A PNG's structure is checked first (png_size); nothing is printed on a bad file, it raises NetError."""
    png_size(data, where)
    return _decode(data, where)


def _decode(data, where: str) -> np.ndarray:
    """decode_image after png_size."""
    buf = np.frombuffer(data, np.uint8)
    img = _imdecode(buf, cv2.IMREAD_UNCHANGED) if buf.size else None
    if img is not None and (img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8):
        # grey, alpha, 16-bit or palette files: OpenCV's own conversion (the 8-bit BGR path is 25% faster)
        img = _imdecode(buf, cv2.IMREAD_COLOR)
    if img is None:
        raise NetError(f"unreadable or corrupt image {where}")
    return img


def resize_square(img: np.ndarray, size: int) -> np.ndarray:
    """To size x size: area averaging when shrinking both sides (no aliasing), bilinear otherwise."""
    h, w = img.shape[:2]
    if (h, w) == (size, size):
        return img
    interp = cv2.INTER_AREA if h >= size and w >= size else cv2.INTER_LINEAR
    return cv2.resize(img, (size, size), interpolation=interp)


def _read_bytes(path: str, idx: int) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise NetError(f"missing file '{path}' (sample {idx})") from None
    except OSError as e:
        raise NetError(f"cannot read '{path}' (sample {idx}): {e.strerror or e}") from None


def _read_int(path: str, idx: int) -> int:
    """The one integer of a text file, as memo.read_numbers(path, 1, f"sample {idx}", integer=True) reads it (and
    its errors), in a quarter of the time: ReadImage reads 4 per crop (its box)."""
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            data = os.read(fd, 64)
        finally:
            os.close(fd)
        if len(data) < 64:
            return int(data)
    except (OSError, ValueError):
        pass
    return int(memo.read_numbers(path, 1, f"sample {idx}", integer=True)[0])   # its message, or a long file


def _out_dtype(index: torch.Tensor) -> torch.dtype:
    return index.dtype if index.is_floating_point() else torch.get_default_dtype()


class _Reader(SourceLayer):
    """Base: index (B, 1) -> (B, *sample_shape). Subclasses set sample_shape and define read(uniq), which
    returns one row per distinct sorted index."""
    sample_shape: tuple[int, ...] = ()

    def setup(self, bottom_shapes):
        shape = tuple(bottom_shapes[0])
        if len(shape) < 1 or int(np.prod(shape[1:])) != 1:
            raise self.error(f"bottom must be the (B, 1) index blob, got {shape}")

    def infer_top_shapes(self, bottom_shapes):
        return [(bottom_shapes[0][0], *self.sample_shape)]

    def forward(self, index):
        return self.forward_compact(index).to(device=index.device, dtype=_out_dtype(index))

    def forward_compact(self, index) -> torch.Tensor:
        """The top in its stored type, on the CPU: uint8 for pixels, float32 for numbers. forward() is exactly
        this cast to the index blob's float dtype and device. The source stage ships this form from its worker
        processes (a quarter of the bytes for images) and the Net casts it to its dtype."""
        uniq, inverse = np.unique(sample_indices(self, index), return_inverse=True)
        try:
            rows = self.read(uniq)
        except NetError as e:
            raise self.error(str(e)) from None
        if len(uniq) != len(inverse) or np.any(np.diff(inverse) != 1):   # a repeated or unsorted batch
            rows = rows[inverse]
        dtype = np.uint8 if rows.dtype == np.uint8 else np.float32
        return torch.from_numpy(np.ascontiguousarray(rows, dtype=dtype))

    def read(self, uniq: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class _RhdReader(_Reader):
    """A reader of the memo layout (rhd_data_param); subclasses define read_text(uniq) and read_packed(f, uniq)."""
    params = RHD_DATA

    def setup(self, bottom_shapes):
        super().setup(bottom_shapes)
        self.setup_rhd()

    def setup_rhd(self) -> None:
        p = self.p
        if not p.root:
            raise self.error("needs rhd_data_param { root: ... } (the converter's output folder)")
        if p.split not in memo.SPLITS:
            raise self.error(f"rhd_data_param split must be training or evaluation, got '{p.split}'")
        self.root, self.split = p.root, p.split
        self.packed_path = memo.packed_path(p.root, p.split) if p.packed else None

    def read(self, uniq):
        if self.packed_path:
            return self.read_packed(packed_file(self.packed_path), uniq)
        return self.read_text(uniq)

    def text_rows(self, uniq, field: str, count: int, integer: bool = False) -> np.ndarray:
        return np.stack([memo.read_numbers(memo.sample_path(self.root, self.split, field, i), count,
                                           f"sample {i}", integer) for i in uniq])


@register_layer("ReadImage")
class ReadImage(_RhdReader):
    """Memo step 2: the hand crops, resized to S x S: top[b, c, r, q] = pixel (r, q) of channel c (B, G, R
    order, 0..255) of the crop of sample index[b], resized with area averaging when shrinking and bilinear
    (cv2.INTER_LINEAR, pixel centres at +0.5) when enlarging; no resize when already S x S.

    Two forms:
      rhd_data_param { root split packed } + read_image_param { resize_size }: crop_image/<idx>.png of the
        memo layout, or the crop's pixels in packed.h5 (the PNG decoded at conversion: identical pixels);
      read_image_param { read_path zero_pad image_suffix resize_size } (the author's form): reads the file
        read_path + idx (zero-padded to zero_pad digits) + image_suffix, plain string concatenation.
    Bottoms: index (B, 1).  Tops: image (B, 3, S, S).
    Params (read_image_param): read_path = "", resize_size = 224, zero_pad = 0, image_suffix = ".png";
      (rhd_data_param): root = "", split = "training", packed = false.
    Crop size: a crop of the memo layout is the pixels of its box, so its H x W must be (y2 - y1 + 1) x
    (x2 - x1 + 1) of the sample's box (its bbx_* files, or bbox in packed.h5): that is what the converter
    writes (square S x S crops at their native size, S >= 40) and what the 2D ground truth's crop units
    (ReadJoint2D) refer to. In both forms no side may exceed MAX_CROP_SIDE = 4096 (the author's form has no
    box, so only this bound applies). A crop breaking either rule is refused, naming the file, its size and
    the expected size; a PNG's size is read from its header, before decoding.
    Differs from the original: it resized with bilinear always (aliasing when shrinking) and resized a crop
    of any size; grey or 4-channel files are converted to BGR; a missing or corrupt file is an error naming
    it, not a crash.
    """
    params = Params("read_image_param", read_path=Param(str, ""), resize_size=Param(int, 224), zero_pad=Param(int, 0),
                    image_suffix=Param(str, ".png")) + RHD_DATA

    def setup(self, bottom_shapes):
        _Reader.setup(self, bottom_shapes)
        p = self.p
        if p.resize_size < 1:
            raise self.error(f"resize_size must be positive, got {p.resize_size}")
        if p.zero_pad < 0:
            raise self.error(f"zero_pad must be >= 0, got {p.zero_pad}")
        if p.read_path and (p.root or p.has("packed") or p.has("split")):
            raise self.error("give either read_image_param { read_path } or rhd_data_param { root }, not both")
        if not p.read_path:
            self.setup_rhd()
        self.sample_shape = (3, p.resize_size, p.resize_size)

    def read(self, uniq):
        if self.p.read_path:
            p = self.p
            paths = [(i, f"{p.read_path}{i:0{p.zero_pad}d}{p.image_suffix}") for i in uniq]
            return self._images((_read_bytes(path, i), f"'{path}' (sample {i})", None) for i, path in paths)
        return super().read(uniq)

    def read_text(self, uniq):
        paths = [(i, memo.sample_path(self.root, self.split, "crop_image", i)) for i in uniq]
        files = [(_read_bytes(path, i), f"'{path}' (sample {i})") for i, path in paths]   # a missing crop first
        boxes = [[_read_int(memo.sample_path(self.root, self.split, field, i), i) for field in memo.BBOX_FIELDS]
                 for i in uniq]
        return self._images((data, where, box) for (data, where), box in zip(files, boxes))

    def read_packed(self, f, uniq):
        boxes = f.rows("bbox", uniq)
        if f.version == 1:    # packs of format 1 hold the PNG bytes (prepare_rhd.py rewrites them as pixels)
            pngs = f.rows("crop_image", uniq)
            return self._images((data, f"of sample {i} in '{f.path}'", box)
                                for i, data, box in zip(uniq, pngs, boxes))
        for i, hw, box in zip(uniq, f.rows("crop_shape", uniq), boxes):   # before the pixels are read
            _check_crop_size(tuple(int(v) for v in hw), f"of sample {i} in '{f.path}'", box)
        return self._resized(f.crops(uniq))

    def _images(self, items) -> np.ndarray:
        """(file bytes, where, box or None) -> decoded, size-checked crops, resized."""
        def decoded():
            for data, where, box in items:
                size = png_size(data, where)
                if size is not None:
                    _check_crop_size(size, where, box)      # from the header: an oversized PNG is not decoded
                img = _decode(data, where)
                if size is None:
                    _check_crop_size(img.shape[:2], where, box)
                yield img
        return self._resized(decoded())

    def _resized(self, imgs) -> np.ndarray:
        """H x W x 3 uint8 images -> (n, 3, S, S) uint8."""
        s = self.p.resize_size
        imgs = list(imgs)
        out = np.empty((len(imgs), 3, s, s), np.uint8)
        for img, planes in zip(imgs, out):
            cv2.split(resize_square(img, s), list(planes))   # into out's planes (4x faster than a transpose copy)
        return out


def _check_crop_size(hw, where: str, box) -> None:
    """ReadImage's crop size rule (see its doc): H x W equal to the box's (when there is a box), sides at most
    MAX_CROP_SIDE."""
    h, w = (int(v) for v in hw)
    if box is not None:
        x1, y1, x2, y2 = (int(v) for v in box)
        want = (y2 - y1 + 1, x2 - x1 + 1)
        if (h, w) != want:
            raise NetError(f"crop {where} is {h} x {w} pixels (H x W), expected {want[0]} x {want[1]}, the size "
                           f"of its box (x1, y1, x2, y2) = ({x1}, {y1}, {x2}, {y2})")
    if max(h, w) > MAX_CROP_SIDE:
        raise NetError(f"crop {where} is {h} x {w} pixels (H x W), expected at most {MAX_CROP_SIDE} x "
                       f"{MAX_CROP_SIDE}")


@register_layer("ReadBoneLength")
class ReadBoneLength(_RhdReader):
    """Memo step 3: the training set's mean bone lengths (Iqbal et al. Sec 3.3), the same row for every sample:
    top[b] = avg_bone (20 numbers, bone order of skeleton.BONES).

    Reads ROOT/training/all_hand/avg_bone.txt, or the avg_bone dataset of the split's packed.h5.
    Bottoms: index (B, 1), used only for B.  Tops: avg_bone (B, 20).
    Params (rhd_data_param): root (required), split = "training", packed = false.
    """
    sample_shape = (NUM_BONES,)

    def forward_compact(self, index):
        try:
            if self.packed_path:
                bones = np.asarray(packed_file(self.packed_path).avg_bone(), np.float64)
                if bones.shape != (NUM_BONES,):
                    raise NetError(f"avg_bone in '{self.packed_path}' has shape {bones.shape}, "
                                   f"expected ({NUM_BONES},)")
            else:
                bones = memo.read_numbers(memo.avg_bone_path(self.root), NUM_BONES, "average bone lengths")
        except NetError as e:
            raise self.error(str(e)) from None
        return torch.from_numpy(bones.astype(np.float32)).expand(index.shape[0], NUM_BONES).contiguous()


@register_layer("ReadBBox")
class ReadBBox(_RhdReader):
    """Memo step 4: the crop's box in the original image, top[b] = (x1, y1, x2, y2) pixels (integers).

    Reads bbx_x1/<idx>.txt, bbx_y1, bbx_x2, bbx_y2, or packed bbox.
    Bottoms: index (B, 1).  Tops: bbox (B, 4).
    Params (rhd_data_param): root (required), split = "training", packed = false.
    """
    sample_shape = (4,)

    def read_text(self, uniq):
        return np.concatenate([self.text_rows(uniq, field, 1, integer=True) for field in memo.BBOX_FIELDS],
                              axis=1)

    def read_packed(self, f, uniq):
        return f.rows("bbox", uniq)


@register_layer("ReadCameraIntrinsics")
class ReadCameraIntrinsics(_RhdReader):
    """Memo step 5: the camera of each sample's image, top[b] = (fx, fy, u0, v0) pixels, from
    K = [[fx, 0, u0], [0, fy, v0], [0, 0, 1]] of image idx // 2 (SPEC: idx = 2 * image_id + hand).

    Reads <split>/matlab_gt_camera_k/<idx // 2>.txt (9 numbers, row-major), or packed camera_k.
    Bottoms: index (B, 1).  Tops: intrinsics (B, 4).
    Params (rhd_data_param): root (required), split = "training", packed = false.
    """
    sample_shape = (4,)
    _PICK = [0, 4, 2, 5]   # fx, fy, u0, v0 in row-major K

    def read_text(self, uniq):
        k = np.stack([memo.read_numbers(memo.camera_k_path(self.root, self.split, i // 2), 9, f"sample {i}")
                      for i in uniq])
        return k[:, self._PICK]

    def read_packed(self, f, uniq):
        return f.camera_k(uniq).reshape(len(uniq), 9)[:, self._PICK]


@register_layer("ReadJoint2D")
class ReadJoint2D(_RhdReader):
    """Memo step 6: 2D ground truth in crop units, top[b] = (u'0, v'0, u'1, v'1, ..., u'20, v'20) with
    u' = (u - x1) / (x2 - x1 + 1), v' likewise (in [0, 1] inside the crop).

    Reads crop_gt_2d/<idx>.txt (21 lines u' v'), or packed crop_gt_2d.
    Bottoms: index (B, 1).  Tops: joint_2d (B, 42).
    Params (rhd_data_param): root (required), split = "training", packed = false.
    """
    sample_shape = (2 * NUM_JOINTS,)

    def read_text(self, uniq):
        return self.text_rows(uniq, "crop_gt_2d", 2 * NUM_JOINTS)

    def read_packed(self, f, uniq):
        return f.rows("crop_gt_2d", uniq).reshape(len(uniq), 2 * NUM_JOINTS)


@register_layer("ReadJoint3D")
class ReadJoint3D(_RhdReader):
    """Memo step 7: 3D ground truth in the camera frame, top[b] = (X0, Y0, Z0, ..., X20, Y20, Z20) mm.

    Reads gt_3d/<idx>.txt (21 lines X Y Z), or packed gt_3d.
    Bottoms: index (B, 1).  Tops: joint_3d (B, 63).
    Params (rhd_data_param): root (required), split = "training", packed = false.
    """
    sample_shape = (3 * NUM_JOINTS,)

    def read_text(self, uniq):
        return self.text_rows(uniq, "gt_3d", 3 * NUM_JOINTS)

    def read_packed(self, f, uniq):
        return f.rows("gt_3d", uniq).reshape(len(uniq), 3 * NUM_JOINTS)


@register_layer("ReadVisibility")
class ReadVisibility(_RhdReader):
    """Visibility of the 2D ground truth (the converter's gt_vis): top[b, k] = 1 when keypoint k is visible
    (inside the image and not occluded), else 0. The metrics average over visible keypoints with it.

    Reads gt_vis/<idx>.txt (21 lines 0/1), or packed gt_vis.
    Bottoms: index (B, 1).  Tops: visibility (B, 21).
    Params (rhd_data_param): root (required), split = "training", packed = false.
    """
    sample_shape = (NUM_JOINTS,)

    def read_text(self, uniq):
        return self.text_rows(uniq, "gt_vis", NUM_JOINTS, integer=True)

    def read_packed(self, f, uniq):
        return f.rows("gt_vis", uniq).reshape(len(uniq), NUM_JOINTS)


@register_layer("ReadHandSide")
class ReadHandSide(_RhdReader):
    """The side of each sample's hand, top[b] = 1 for a left hand, 0 for a right hand (HandMirror's flag).

    Reads is_left_hand_or_not/<idx>.txt, or packed is_left.
    Bottoms: index (B, 1).  Tops: is_left (B, 1).
    Params (rhd_data_param): root (required), split = "training", packed = false.
    """
    sample_shape = (1,)

    def read_text(self, uniq):
        return self.text_rows(uniq, "is_left_hand_or_not", 1, integer=True)

    def read_packed(self, f, uniq):
        return f.rows("is_left", uniq).reshape(len(uniq), 1)


@register_layer("ReadBlobFromFileIndexing")
class ReadBlobFromFileIndexing(_Reader):
    """The author's per-sample text reader: top[b] = the num_to_read numbers of file_prefix + idx + ".txt"
    (plain concatenation, idx in decimal), for idx = index[b].

    Bottoms: index (B, 1).  Tops: (B, num_to_read).
    Params (read_blob_from_file_indexing_param): file_prefix (required; the original's default was a
      placeholder path), num_to_read = 21.
    Differs from the original: the file must hold exactly num_to_read numbers (the original read the first
    num_to_read and ignored the rest, or read garbage when there were fewer).
    """
    params = Params("read_blob_from_file_indexing_param", file_prefix=Param(str, REQUIRED), num_to_read=Param(int, 21))

    def setup(self, bottom_shapes):
        super().setup(bottom_shapes)
        if self.p.num_to_read < 1:
            raise self.error(f"num_to_read must be positive, got {self.p.num_to_read}")
        self.sample_shape = (self.p.num_to_read,)

    def read(self, uniq):
        p = self.p
        return np.stack([memo.read_numbers(f"{p.file_prefix}{i}.txt", p.num_to_read, f"sample {i}") for i in uniq])


@register_layer("ReadBlobFromFile")
class ReadBlobFromFile(SourceLayer):
    """The author's constant reader: the num_to_read numbers of one file, the same row batch_size times
    (e.g. avg_bone.txt, 20 numbers). Values go through float32, as in the readers above.

    Bottoms: none.  Tops: (batch_size, num_to_read), default dtype, CPU.
    Params (read_blob_from_file_param): file_path (required), num_to_read = 21, batch_size = 16.
    A stateless source: get_state() is {} (it has no cursor to restore).
    """
    params = Params("read_blob_from_file_param", file_path=Param(str, REQUIRED), num_to_read=Param(int, 21),
                    batch_size=Param(int, 16))
    num_bottoms = 0

    def setup(self, bottom_shapes):
        for name in ("num_to_read", "batch_size"):
            if getattr(self.p, name) < 1:
                raise self.error(f"{name} must be positive, got {getattr(self.p, name)}")

    def infer_top_shapes(self, bottom_shapes):
        return [(self.p.batch_size, self.p.num_to_read)]

    def forward(self):
        try:
            row = memo.read_numbers(self.p.file_path, self.p.num_to_read)
        except NetError as e:
            raise self.error(str(e)) from None
        row = torch.from_numpy(row.astype(np.float32)).to(torch.get_default_dtype())
        return row.expand(self.p.batch_size, self.p.num_to_read).contiguous()

    def get_state(self) -> dict:
        return {}

    def set_state(self, state: dict) -> None:
        """Nothing to restore."""


@register_layer("MulRGB")
class MulRGB(Layer):
    """y = mul_factor * x, elementwise (the author's nets scale 0..255 pixels by 1/255 with it).

    Bottoms: x (any shape; the original assumed (B, 3, H, H)).  Tops: y (same shape).
    Params (mul_rgb_param): mul_factor = 255.
    Differs from the original: gradients flow to x (the original had no backward).
    """
    params = Params("mul_rgb_param", mul_factor=Param(float, 255.0))

    def forward(self, x):
        return x * self.p.mul_factor
