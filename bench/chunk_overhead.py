"""What resumability costs: the same tiny-model build with one chunk, and with a chunk (fsync'd parquet plus
a rewritten progress record) every few batches.

    python bench/chunk_overhead.py [--rows 512] [--repeats 2]

Each configuration runs `build.py --preset tiny` in its own process on the same embedded-image source
(no network), alternating configurations so machine noise hits them alike. Tiny models make the model
stages cheap, so the writing shows up far more than it would at real model size: an upper bound.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

REPO = Path(__file__).resolve().parent.parent


def write_source(path: Path, rows: int) -> None:
    rng = np.random.default_rng(0)
    images = []
    for _ in range(rows):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(buf, "JPEG")
        images.append(buf.getvalue())
    pq.write_table(pa.table({"url": [f"https://example.invalid/{i}.jpg" for i in range(rows)],
                             "caption": [f"alt text {i}" for i in range(rows)],
                             "image": pa.array(images, pa.binary())}), path)


def run_build(source: Path, output: Path, cache_dir: Path, rows_per_chunk: int, batch_size: int,
              num_candidates: int, *extra: str) -> float:
    command = [sys.executable, "build.py", "--preset", "tiny", "--cache_dir", str(cache_dir), "--source", str(source),
               "--output_dir", str(output), "--overwrite", "--batch_size", str(batch_size),
               "--rows_per_chunk", str(rows_per_chunk), "--num_candidates", str(num_candidates), *extra]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    if done.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--num_candidates", type=int, default=8, help="fewer than 40: cheaper models, larger share")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    chunk_sizes = [args.rows, 4 * args.batch_size, args.batch_size]  # the first is the baseline: one chunk

    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        source = work / "source.parquet"
        write_source(source, args.rows)
        run_build(source, work / "warm-up", work / "models", args.rows, args.batch_size, args.num_candidates,
                  "--max_samples", "1")  # builds the tiny models and warms the file cache
        seconds: dict[int, list[float]] = {size: [] for size in chunk_sizes}
        startup: list[float] = []  # a one-row run: process start, imports, model loading
        for _ in range(args.repeats):
            startup.append(run_build(source, work / "one-row", work / "models", 1, args.batch_size,
                                     args.num_candidates, "--max_samples", "1"))
            for size in chunk_sizes:
                seconds[size].append(run_build(source, work / f"out-{size}", work / "models", size,
                                               args.batch_size, args.num_candidates))

    start = statistics.median(startup)
    base = args.rows / (statistics.median(seconds[args.rows]) - start)
    print(f"\n{args.rows} rows, batch {args.batch_size}, {args.num_candidates} candidates, tiny models, 1 process; "
          f"medians of {args.repeats}; rows/s after the {start:.1f} s a one-row run takes (start-up, model load)\n")
    print("| rows per chunk | chunks + records | s | rows/s | vs one chunk |")
    print("|---|---|---|---|---|")
    for size in chunk_sizes:
        median = statistics.median(seconds[size])
        rate = args.rows / (median - start)
        print(f"| {size} | {-(-args.rows // size)} | {median:.1f} | {rate:.1f} | {rate / base:.3f}x |")


if __name__ == "__main__":
    main()
