#!/usr/bin/env python
"""Convert a set of images to an LMDB of Caffe Datum records, like Caffe's tools/convert_imageset.cpp.

    python tools/convert_imageset.py [FLAGS] ROOTFOLDER/ LISTFILE DB_NAME

LISTFILE has one image a line, `subfolder1/file1.JPEG 7`: the path (relative to ROOTFOLDER, joined by plain
concatenation as Caffe does, so ROOTFOLDER ends with '/') and an integer label after the LAST space (paths may
hold spaces). Blank lines are skipped.

Flags (Caffe's names and defaults; `-flag` and `--flag` both work, booleans also as `--flag=true|false` and
`--noflag` as gflags takes them):
  --gray              read images as 1-channel grayscale (default: 3-channel BGR, as cv::imread)
  --resize_height N, --resize_width N
                      resize every image to N (cv::resize, bilinear) when both are > 0
  --shuffle           shuffle the list before writing; seeded by --seed (default 0) with Python's
                      random.Random(seed).shuffle, so a run is reproducible (Caffe's order differs: its
                      shuffle draws from its own RNG)
  --encoded           store the image file itself (Datum.encoded): the file's own bytes when its extension
                      matches the encoding, the color mode matches and there is no resize, else cv::imencode
  --encode_type EXT   the encoding ('png', 'jpg', ...); implies --encoded; without it the file's extension
  --check_size        check that every image has the size of the first
  --backend lmdb      LMDB only (leveldb: an error)

Records are keyed `%08d_<path>` by line number (Caffe's format_int(line_id, 8) + "_" + path), written in list
order and committed every 1000 records. The database is written to a temporary folder next to DB_NAME and
renamed to DB_NAME at the end, so an error or Ctrl-C never leaves a half-written database behind.

Differs from Caffe: an image that cannot be read, a list line without an integer label, an existing DB_NAME
or a size mismatch with --check_size stop the run with one line and exit status 2 (Caffe logs and skips an
unreadable image, aborts on the others); Ctrl-C exits 130.
"""

import argparse
import os
import random
import shutil
import sys
import tempfile
import time

# Runs from a checkout without installing: the repository root holds the layers and nets packages.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from netdef.errors import NetError, add_debug_flag, run_tool  # noqa: E402

COMMIT_EVERY = 1000
LMDB_MAP_SIZE = 1 << 40          # Caffe's LMDB_MAP_SIZE (1 TB); the file grows as written


def _bool(text: str) -> bool:
    t = text.lower()
    if t in ("1", "true", "yes", "t", "y"):
        return True
    if t in ("0", "false", "no", "f", "n"):
        return False
    raise argparse.ArgumentTypeError(f"not a boolean: '{text}'")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="convert_imageset.py",
                                 description="Convert a set of images to an LMDB of Caffe Datum records.",
                                 usage="%(prog)s [FLAGS] ROOTFOLDER/ LISTFILE DB_NAME")
    ap.add_argument("root", metavar="ROOTFOLDER/", help="folder the list's paths are relative to (ends with /)")
    ap.add_argument("listfile", metavar="LISTFILE", help="lines `relative/path.png LABEL`")
    ap.add_argument("db", metavar="DB_NAME", help="LMDB folder to create (must not exist)")
    for flag, text in (("gray", "treat images as grayscale ones"),
                       ("shuffle", "randomly shuffle the order of images and their labels (seeded by --seed)"),
                       ("check_size", "check that all the datum have the same size"),
                       ("encoded", "store the encoded image in the datum")):
        ap.add_argument(f"--{flag}", action="store_true", help=text)
    ap.add_argument("--seed", type=int, default=0, help="--shuffle's seed (default 0)")
    ap.add_argument("--backend", default="lmdb", help="the backend for storing the result (lmdb only)")
    ap.add_argument("--resize_width", type=int, default=0, help="width images are resized to")
    ap.add_argument("--resize_height", type=int, default=0, help="height images are resized to")
    ap.add_argument("--encode_type", default="", help="what type to encode the image as ('png', 'jpg', ...)")
    add_debug_flag(ap)
    return ap


BOOL_FLAGS = ("gray", "shuffle", "check_size", "encoded")


def _gflags_style(argv):
    """Caffe's gflags spellings to argparse's: `-flag` -> `--flag`; booleans also as `--flag=true|false` and
    `--noflag`."""
    out = []
    for a in argv:
        if a.startswith("-") and not a.startswith("--") and len(a) > 2 and a[1:2].isalpha():
            a = "-" + a
        name, eq, value = a[2:].partition("=")
        if a.startswith("--") and name in BOOL_FLAGS and eq:
            try:
                if not _bool(value):
                    continue
            except argparse.ArgumentTypeError as e:
                raise SystemExit(f"convert_imageset.py: error: --{name}: {e}") from None
            a = "--" + name
        elif a.startswith("--no") and a[4:] in BOOL_FLAGS:
            continue
        out.append(a)
    return out


def read_list(path: str) -> list:
    """(relative path, label) per line, split at the last space as Caffe does."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise NetError(f"cannot read list file '{path}': {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise NetError(f"list file '{path}' is not UTF-8 text") from None
    lines = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        pos = line.rfind(" ")
        name, label = line[:pos], line[pos + 1:]
        if pos < 0 or not name:
            raise NetError(f"{path}:{n}: expected `path LABEL`, found '{line}' (no label)")
        try:
            value = int(label)
        except ValueError:
            raise NetError(f"{path}:{n}: label '{label}' is not an integer") from None
        if not -2**31 <= value < 2**31:
            raise NetError(f"{path}:{n}: label {value} does not fit Datum's int32")
        lines.append((name, value))
    return lines


def _match_ext(filename: str, encoding: str) -> bool:
    """Caffe's matchExt: the extension (or the whole name when it has no dot), case-blind; jpg matches jpeg."""
    p = filename.rfind(".")
    ext = (filename[p + 1:] if p >= 0 else filename).lower()
    en = encoding.lower()
    return ext == en or (en == "jpg" and ext == "jpeg")


def read_image_to_datum(path: str, label: int, height: int, width: int, is_color: bool, encoding: str):
    """Caffe's ReadImageToDatum: (serialised Datum, (C, H, W) of the image as read)."""
    import cv2
    import numpy as np
    from layers.caffe.datum import encode_datum
    img = cv2.imread(path, cv2.IMREAD_COLOR if is_color else cv2.IMREAD_GRAYSCALE)
    if img is None:
        why = "no such file" if not os.path.exists(path) else "not an image OpenCV can read"
        raise NetError(f"cannot read image '{path}': {why}")
    if height > 0 and width > 0:
        img = cv2.resize(img, (width, height))
    channels = img.shape[2] if img.ndim == 3 else 1
    shape = (channels,) + img.shape[:2]
    if encoding:
        if (channels == 3) == is_color and not height and not width and _match_ext(path, encoding):
            with open(path, "rb") as f:                   # ReadFileToDatum: the file's own bytes
                return encode_datum(f.read(), label, encoded=True), shape
        ok, buf = cv2.imencode("." + encoding, img)
        if not ok:
            raise NetError(f"cannot encode '{path}' as '{encoding}'")
        return encode_datum(buf.tobytes(), label, encoded=True), shape
    chw = img[None] if img.ndim == 2 else img.transpose(2, 0, 1)
    return encode_datum(np.ascontiguousarray(chw), label), shape


def convert(args, log=print) -> int:
    if args.backend != "lmdb":
        raise NetError(f"backend '{args.backend}' is not supported: this tool writes LMDB only (--backend lmdb)")
    import lmdb
    is_color = not args.gray
    encoded = args.encoded or bool(args.encode_type)
    lines = read_list(args.listfile)
    if args.shuffle:
        log(f"Shuffling data (seed {args.seed})")
        random.Random(args.seed).shuffle(lines)
    log(f"A total of {len(lines)} images.")
    if args.encode_type and not args.encoded:
        log("encode_type specified, assuming encoded=true.")
    height, width = max(0, args.resize_height), max(0, args.resize_width)
    db = os.path.abspath(args.db)
    if os.path.lexists(db):
        raise NetError(f"'{args.db}' exists already; give a new DB_NAME (Caffe's convert_imageset also refuses)")
    parent = os.path.dirname(db)
    if not os.path.isdir(parent):
        raise NetError(f"cannot create '{args.db}': folder '{parent}' does not exist")
    tmp = tempfile.mkdtemp(prefix=os.path.basename(db) + ".", suffix=".tmp", dir=parent)
    env = None
    try:
        env = lmdb.open(tmp, map_size=LMDB_MAP_SIZE, subdir=True, lock=True)
        txn = env.begin(write=True)
        first_shape = None
        count = 0
        start = time.monotonic()
        for line_id, (name, label) in enumerate(lines):
            enc = args.encode_type
            if encoded and not enc:                        # guess the encoding from the file name
                p = name.rfind(".")
                enc = name[p + 1:].lower() if p >= 0 else ""
                if not enc:
                    raise NetError(f"cannot guess the encoding of '{name}' (no extension); give --encode_type")
            value, shape = read_image_to_datum(args.root + name, label, height, width, is_color, enc)
            if args.check_size:
                if first_shape is None:
                    first_shape = shape
                elif shape != first_shape:
                    raise NetError(f"'{args.root + name}' is {shape[0]}x{shape[1]}x{shape[2]} (CxHxW), the first "
                                   f"image {first_shape[0]}x{first_shape[1]}x{first_shape[2]} (--check_size)")
            txn.put(f"{line_id:08d}_{name}".encode("utf-8"), value)
            count += 1
            if count % COMMIT_EVERY == 0:
                txn.commit()
                txn = env.begin(write=True)
                log(f"Processed {count} files.")
        txn.commit()
        if count % COMMIT_EVERY:
            log(f"Processed {count} files.")
        env.close()
        env = None
        if os.path.lexists(db):
            raise NetError(f"'{args.db}' appeared while converting; the new database is left out")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)                     # mkdtemp's 0700 would stick after the rename
        os.rename(tmp, db)
        tmp = None
        log(f"wrote '{args.db}': {count} Datum record(s) in {time.monotonic() - start:.1f} s")
        return 0
    finally:
        if env is not None:
            env.close()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser().parse_args(_gflags_style(argv))
    return run_tool(lambda: convert(args), args.debug)


if __name__ == "__main__":
    sys.exit(main())
