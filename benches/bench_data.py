"""Data pipeline throughput: samples/s of the memo's steps 1-11 (prototxt/rhd_data_check.prototxt: 128x128 crops
and every ground truth), per-sample text layout vs packed HDF5, with 0, 1 and 2 worker processes, in one run.

    python benches/bench_data.py [--root CONVERTED_DIR] [--batches 15] [--batch-size 32] [--cold]

Without --root it generates a synthetic set (300 images) and converts it in a temporary folder first.
Goals (issues 3, 6): packed with 2 workers >= 400 samples/s on 2 cores, and >= 10x the text layout read serially.
The text layout's speed depends on the page cache: right after conversion its files are cached, which is the
text layout's best case. --cold (root only, Linux) drops the page cache after the warm-up of each measurement,
as for a training set too large to stay cached (the real one: 82k samples, ~500k small files).
The source stage keeps freed memory for reuse (nets.perf.keep_freed_memory).

Measured on a 2-core AMD EPYC VM (idle; benches/run_all.py), files cached, samples/s:
                      text 0w  text 1w  text 2w  packed 0w  packed 1w  packed 2w
  before (PNG packs)     275      338      347       331        378        373
  now (pixel packs)     1238      783      807      3448       1223       1377
Packed with 2 workers meets the >= 400 goal; packed vs text read serially is 2.8x, not the 10x issue 3 asked
for: kept freed memory, uint8 transfer and cv2.split sped the text layout up 4.5x as well. Packed, a batch of
32 costs ~4.5 ms to read (cv2.resize INTER_AREA of crops over 128 px ~0.25 ms each, HDF5 read ~1 ms) plus
~1.5 ms of ground truth. Workers lose to 0 workers in this data-only bench on 2 cores: the per-batch hand-off
(pipe, wake-ups) costs more than the reading they take over when the net does nothing else; in training the
net's work overlaps them (bench_pipeline).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CHECK_NET = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "prototxt",
                         "rhd_data_check.prototxt")


def _net(root: str, packed: bool, workers: int, batch_size: int):
    from nets.net import Net
    text = open(CHECK_NET).read().replace('"data/rhd', f'"{root}')
    text = text.replace("packed: false", f"packed: {'true' if packed else 'false'}")
    text = text.replace("batch_size: 16", f"batch_size: {batch_size}")
    return Net(text, phase="TEST", device="cpu", workers=workers)


def drop_page_cache() -> bool:
    """Empty Linux's page cache (needs root); False when not allowed."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def _samples_per_second(root: str, packed: bool, workers: int, batches: int, batch_size: int,
                        cold: bool = False) -> float:
    import torch
    net = _net(root, packed, workers, batch_size)
    try:
        with torch.no_grad():
            for _ in range(3):          # start the workers, fill the prefetch queue
                net.forward()
            if cold and not drop_page_cache():
                raise SystemExit("--cold needs root (writes /proc/sys/vm/drop_caches)")
            t0 = time.perf_counter()
            for _ in range(batches):
                net.forward()
            return batches * batch_size / (time.perf_counter() - t0)
    finally:
        net.close()


def _make_data(folder: str) -> str:
    from layers.hand.rhd.convert import convert
    from layers.hand.rhd.synthetic import make_dataset
    release = make_dataset(os.path.join(folder, "synth"), 300, 10, seed=0)
    out = os.path.join(folder, "rhd")
    convert(release, out)
    return out


def run(root: str | None = None, batches: int = 15, batch_size: int = 32, cold: bool = False) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        root = root or _make_data(tmp)
        rows = []
        for packed in (False, True):
            for workers in (0, 1, 2):
                rate = _samples_per_second(root, packed, workers, batches, batch_size, cold)
                rows.append({"layout": "packed HDF5" if packed else "text files", "workers": workers,
                             "samples/s": rate})
    base = rows[0]["samples/s"]
    for row in rows:
        row["vs text, serial"] = row["samples/s"] / base
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", help="a converted RHD folder (prepare_rhd.py --out); default: make one")
    ap.add_argument("--batches", type=int, default=15)
    ap.add_argument("--cold", action="store_true", help="drop the page cache before timing (root only)")
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args(argv)
    rows = run(args.root, args.batches, args.batch_size, args.cold)
    print("| layout | workers | samples/s | vs text, serial |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['layout']} | {r['workers']} | {r['samples/s']:.0f} | {r['vs text, serial']:.2f}x |")
    cache = "page cache dropped before timing" if args.cold else "files in the page cache"
    print(f"\n{os.cpu_count()} CPU cores; batch {args.batch_size}, 128x128 crops, all ground truth (steps 1-11); "
          f"{cache}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
