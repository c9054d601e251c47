#!/usr/bin/env python
"""Compute the mean image of an LMDB of Caffe Datum records, like Caffe's tools/compute_image_mean.cpp.

    python tools/compute_image_mean.py [--backend lmdb] INPUT_DB [OUTPUT_FILE]

Every record is decoded (an encoded image natively, as DecodeDatumNative: its own channels) and summed
element by element in float32 in key order, then divided by the count, as Caffe does (so the result is
Caffe's bit for bit: float32 sums, float32 division). OUTPUT_FILE, when given, gets the mean as a
.binaryproto BlobProto with Caffe's legacy num=1, channels, height, width and packed float data (what
transform_param { mean_file } reads). Then the per-channel means are printed as Caffe logs them:

    Number of channels: 1
    mean_value channel [0]: 33.3184

Errors (a missing or empty database, a record that is not a Datum, records of different sizes, --backend
leveldb) print one line and exit with status 2; Ctrl-C exits 130.
"""

import argparse
import os
import sys

# Runs from a checkout without installing: the repository root holds the layers and nets packages.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from netdef.errors import NetError, add_debug_flag, run_tool  # noqa: E402


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="compute_image_mean.py",
                                 description="Compute the mean image of an LMDB of Caffe Datum records.")
    ap.add_argument("input", metavar="INPUT_DB", help="LMDB folder of Datum records")
    ap.add_argument("output", metavar="OUTPUT_FILE", nargs="?", help=".binaryproto file to write the mean to")
    ap.add_argument("--backend", default="lmdb", help="the backend containing the images (lmdb only)")
    add_debug_flag(ap)
    return ap


def image_mean(path: str):
    """(mean (C, H, W) float32, record count) of the LMDB at `path`, summed as Caffe's compute_image_mean."""
    import lmdb
    import numpy as np
    from layers.caffe.datum import decode_datum
    if not os.path.isdir(path):
        raise NetError(f"cannot open database '{path}': " +
                       ("not a folder (an LMDB is a folder)" if os.path.exists(path) else "no such folder"))
    try:
        env = lmdb.open(path, readonly=True, lock=False, readahead=False, subdir=True)
    except lmdb.Error as e:
        raise NetError(f"cannot open database '{path}': {e}") from None
    total, count, shape = None, 0, None
    try:
        with env.begin(buffers=True) as txn:
            for key, value in txn.cursor():
                where = f"{path}: key {bytes(key).decode('utf-8', 'replace')}"
                array, _ = decode_datum(value, where)
                if shape is None:
                    shape = array.shape
                    total = np.zeros(shape, np.float32)
                elif array.shape != shape:
                    raise NetError(f"{where}: record of shape {array.shape} (CxHxW), the first is {shape}")
                total += array.astype(np.float32)     # float32 sum, element by element, as Caffe's
                count += 1
                if count % 10000 == 0:
                    print(f"Processed {count} files.")
    finally:
        env.close()
    if count == 0:
        raise NetError(f"database '{path}' holds no records")
    if count % 10000:
        print(f"Processed {count} files.")
    return total / np.float32(count), count


def channel_means(mean):
    """Caffe's printed per-channel means: a float32 running sum over the channel, divided by H*W."""
    import numpy as np
    c = mean.shape[0]
    dim = mean.shape[1] * mean.shape[2]
    flat = mean.reshape(c, dim)
    return [float(np.cumsum(flat[i], dtype=np.float32)[-1] / np.float32(dim)) for i in range(c)]


def compute(args) -> int:
    if args.backend != "lmdb":
        raise NetError(f"backend '{args.backend}' is not supported: this tool reads LMDB only (--backend lmdb)")
    from nets.caffemodel import write_blobproto
    mean, count = image_mean(args.input)
    if args.output:
        print(f"Write to {args.output}")
        write_blobproto(args.output, mean[None], legacy=True)
    print(f"Number of channels: {mean.shape[0]}")
    for c, value in enumerate(channel_means(mean)):
        print(f"mean_value channel [{c}]: {value:.6g}")
    return 0


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    return run_tool(lambda: compute(args), args.debug)


if __name__ == "__main__":
    sys.exit(main())
