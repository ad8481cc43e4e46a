"""`imagesim stac`: write time and catalog size, one Item per chip vs one per cell+acquisition.

A synthetic chips folder (chips.parquet only, no imagery: one acquisition per level-12 cell, its 1,024
z17 chips) is cataloged at both granularities; each is timed at N and N/2 chips to fit the growth
(pystac's save scans a collection's links per item, so per-chip Items grow faster than linearly),
then extrapolated to 10⁶ chips.

    .venv/bin/python benches/bench_stac.py --chips 100000 --chip-items 8000
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import polars as pl

from imagesim import artefacts, grid
from imagesim.search.stac import write_stac

ZONE = 33
PARENT = "12020301"  # a level-8 quadkey in the north: 256 level-12 cells below it


def synthetic(dest: Path, n: int) -> None:
    rows = []
    for c, cell in enumerate(grid.children(PARENT, grid.CELL_ZOOM)):
        cat = f"10400100{c:08X}"
        date = f"2023-{1 + c % 12:02d}-{1 + c % 28:02d}"
        cog = f"/data/ard/{ZONE}/{cell}/{date}/{cat}-visual.tif"
        for q in grid.children(cell, 17):
            rows.append((grid.chip_name(ZONE, q, cat), q, cell, cat, date, cog))
            if len(rows) == n:
                break
        if len(rows) == n:
            break
    t = pl.DataFrame(rows, schema=["chip", "quadkey", "cell", "catalog_id", "acquisition_date", "source_cog"], orient="row")
    t = t.with_columns(
        pl.lit(ZONE).alias("zone"),
        pl.lit(17).alias("zoom"),
        pl.lit(0.99).alias("valid_fraction"),
        pl.lit("partial_data").alias("nodata_class"),
    )
    t = t.with_columns(pl.lit(None).alias(c) for c in artefacts.MANIFEST_SCHEMA if c not in t.columns)
    dest.mkdir(parents=True)
    t.select(list(artefacts.MANIFEST_SCHEMA)).cast(artefacts.MANIFEST_SCHEMA).write_parquet(dest / artefacts.CHIPS_MANIFEST)  # type: ignore[arg-type]


def size_of(folder: Path) -> tuple[int, int]:
    files = [p for p in folder.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def measure(tmp: Path, n: int, granularity: str) -> tuple[float, int, int]:
    chips = tmp / f"chips-{n}"
    if not chips.exists():
        synthetic(chips, n)
    t0 = time.perf_counter()
    write_stac(chips, tmp / f"stac-{granularity}-{n}", granularity=granularity)
    seconds = time.perf_counter() - t0
    return (seconds, *size_of(tmp / f"stac-{granularity}-{n}"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chips", type=int, default=100_000, help="chips cataloged one Item per cell+acquisition")
    ap.add_argument("--chip-items", type=int, default=8_000, help="chips cataloged one Item per chip (slower)")
    args = ap.parse_args()
    target = 1_000_000
    print(f"{'granularity':<12} {'chips':>8} {'seconds':>9} {'files':>8} {'MB':>9}   {'10^6 chips: s':>14} {'GB':>7}")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for granularity, n in (("acquisition", args.chips), ("chip", args.chip_items)):
            half = measure(Path(tmp), n // 2, granularity)
            full = measure(Path(tmp), n, granularity)
            exponent = max(1.0, math.log(full[0] / half[0]) / math.log(2)) if half[0] > 0 else 1.0
            seconds = full[0] * (target / n) ** exponent
            gb = full[2] * target / n / 1e9
            results[granularity] = (seconds, gb)
            for m, (s, files, size) in ((n // 2, half), (n, full)):
                print(f"{granularity:<12} {m:>8} {s:>9.2f} {files:>8} {size / 1e6:>9.1f}")
            print(f"{'':<12} {'':>8} {'':>9} {'':>8} {'':>9}   {seconds:>14.0f} {gb:>7.2f}   (time grows as n^{exponent:.2f})")
    (sa, ga), (sc, gc) = results["acquisition"], results["chip"]
    print(f"per-chip / per-acquisition at 10^6 chips: time x{sc / sa:.1f}, size x{gc / ga:.1f}")


if __name__ == "__main__":
    main()
