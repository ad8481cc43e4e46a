"""The original chipping approach, reimplemented as the baseline to beat.

For every chip: open the COG with rasterio, read the chip window, write it with GDAL's JPEG
driver through rasterio — the file is reopened per chip, as in the original `chip.py`.
Run as a script: prints one JSON line with chips and seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from multiprocessing import Pool
from pathlib import Path

import rasterio
from rasterio.windows import Window

CELL_PIXELS = 16_384
APRON = 512


def chip_windows(zoom: int, limit: int | None) -> list[tuple[int, int, int]]:
    size = CELL_PIXELS >> (zoom - 12)
    n = 1 << (zoom - 12)
    out = [(APRON + col * size, APRON + row * size, size) for row in range(n) for col in range(n)]
    return out[:limit] if limit else out


def chip_one(args: tuple[str, str, int, int, int, int]) -> None:
    cog, dest, col, row, size, quality = args
    with rasterio.open(cog) as src:
        data = src.read(window=Window(col, row, size, size))
    profile = {"driver": "JPEG", "width": size, "height": size, "count": 3, "dtype": "uint8", "quality": quality}
    with rasterio.open(Path(dest) / f"chip_{col}_{row}.jpg", "w", **profile) as dst:
        dst.write(data[:3])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("cog")
    ap.add_argument("dest")
    ap.add_argument("--zoom", type=int, default=17)
    ap.add_argument("--proc", type=int, default=1)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--quality", type=int, default=90)
    args = ap.parse_args()
    os.makedirs(args.dest, exist_ok=True)
    jobs = [(args.cog, args.dest, c, r, s, args.quality) for c, r, s in chip_windows(args.zoom, args.limit)]
    start = time.perf_counter()
    if args.proc > 1:
        with Pool(args.proc) as pool:
            pool.map(chip_one, jobs, chunksize=8)
    else:
        for job in jobs:
            chip_one(job)
    seconds = time.perf_counter() - start
    print(json.dumps({"chips": len(jobs), "seconds": seconds}))


if __name__ == "__main__":
    main()
