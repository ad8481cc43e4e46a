"""`imagesim chip`'s manifest update into a large ``chips.parquet``, without polars, against polars.

A run that adds chips to a chips folder whose manifest holds many rows already (one COG more into a large
delivery) reads what it needs of the old rows (which chips each acquisition recorded, its COG's stamp) and
merges its own rows in, in manifest order, an acquisition at a time (memory flat in the manifest's rows).
imagesim does this on plain columns read and written by the Rust core (`imagery.chip._Manifest`: no polars
import, ~0.3 s of start-up; issue 20). The baseline, in the same run: the same streamed update as imagesim did
it with polars before (`imagery/chip.py` at ``--baseline-rev``, read from git). Also shown, for reference:
polars doing it all in memory (read the whole manifest, drop the rows recorded again, add, sort, write), which
holds every row at once. The three outputs are checked equal.

The old manifest is synthetic: ``--rows`` rows (acquisitions of 1,024 z17 chips in one cell); the run adds one
new acquisition (sorting in the middle) and records 100 chips of an old one again.

    python benches/bench_manifest.py [--rows 500000] [--repeat 3] [--work /tmp/imagesim-bench-manifest] [--baseline-rev REV]
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl
from polars.testing import assert_frame_equal

from imagesim.artefacts import CHIPS_MANIFEST, MANIFEST_ORDER, MANIFEST_SCHEMA, read_manifest
from imagesim.geoparquet import write_geoparquet
from imagesim.imagery import chip

REPO = Path(__file__).resolve().parent.parent
BASELINE_REV = "6198171"  # chip.py with its manifest in polars (before issue 20's last start-up step)
CELL = "120020223032"
ZOOM = 17
CHIPS = 4 ** (ZOOM - 12)


def acquisition(catalog_id: str, date: str, digits: list[str], stamp: int) -> pl.DataFrame:
    """Manifest rows of one acquisition's chips ``CELL + d`` (d in ``digits``)."""
    quadkeys = [CELL + d for d in digits]
    n = len(quadkeys)
    return pl.DataFrame(
        {
            "chip": [f"Z10-{q}_{catalog_id}.jpg" for q in quadkeys],
            "zone": [10] * n,
            "quadkey": quadkeys,
            "zoom": [ZOOM] * n,
            "cell": [CELL] * n,
            "catalog_id": [catalog_id] * n,
            "acquisition_date": [date] * n,
            "source_cog": [f"/ard/10/{CELL}/{date}/{catalog_id}-visual.tif"] * n,
            "source_size": [stamp] * n,
            "source_mtime_ns": [stamp * 1000] * n,
            "col_off": [(i % 32) * 512 for i in range(n)],
            "row_off": [(i // 32) * 512 for i in range(n)],
            "width": [512] * n,
            "height": [512] * n,
            "nodata_pixels": [(i * 37) % 5000 for i in range(n)],
            "nodata_threshold": [4] * n,
            "valid_fraction": [1.0 - ((i * 37) % 5000) / 262144 for i in range(n)],
            "nodata_class": ["all_data" if i % 7 else "partial_data" for i in range(n)],
            "written": [True] * n,
            "encoding": ["jpeg"] * n,
            "bytes": [40_000 + i for i in range(n)],
            "cloud_fraction": [None if i % 5 == 0 else (i % 100) / 100 for i in range(n)],
            "cloud_shadow_fraction": [0.0] * n,
            "terrain_shadow_fraction": [0.0] * n,
            "water_fraction": [(i % 10) / 10 for i in range(n)],
            "vegetation_fraction": [0.5] * n,
        },
        schema=MANIFEST_SCHEMA,
    )


def imagesim_update(dest: Path, new: list[pl.DataFrame]) -> None:
    """What `imagesim chip` does: the old manifest read for what the run needs, its rows merged in."""
    manifest = chip._Manifest(dest, ZOOM)
    for frame in new:
        manifest.add(frame.to_dict(as_series=False))
    manifest.flush()
    manifest.discard()


def baseline_chip(rev: str, work: Path):  # noqa: ANN201 - a module loaded from git
    """``imagery/chip.py`` at ``rev`` as a module of its own (the rest of imagesim this checkout's)."""
    text = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{rev}:python/imagesim/imagery/chip.py"], capture_output=True, text=True, check=True
    ).stdout
    path = work / "chip_baseline.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("chip_baseline", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def streamed_polars_update(old_chip, dest: Path, new: list[pl.DataFrame]) -> None:  # noqa: ANN001
    """The baseline: the same update as imagesim did it with polars (frames, streamed)."""
    manifest = old_chip._Manifest(dest, ZOOM)
    for frame in new:
        manifest.add(frame)
    manifest.flush()
    manifest.discard()


def polars_update(dest: Path, new: list[pl.DataFrame]) -> None:
    """For reference: polars in memory (read every row, drop the chips recorded again, add, sort, write)."""
    fresh = pl.concat(new)
    old = read_manifest(dest).join(fresh.select("chip"), on="chip", how="anti")
    write_geoparquet(pl.concat([old, fresh]).sort(MANIFEST_ORDER, maintain_order=True), dest / CHIPS_MANIFEST)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=500_000, help="rows of the old manifest (rounded to whole acquisitions of 1,024)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each; medians are reported")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "imagesim-bench-manifest")
    ap.add_argument("--baseline-rev", default=BASELINE_REV, help="git revision of imagery/chip.py for the baseline")
    a = ap.parse_args()

    digits = chip._suffixes(ZOOM)
    count = max(1, a.rows // CHIPS)
    old = pl.concat([acquisition(f"1040010{k:09d}", f"2023-{1 + k % 12:02d}-{1 + k % 28:02d}", digits, k) for k in range(count)])
    old = old.sort(MANIFEST_ORDER, maintain_order=True)
    source = a.work / "old"
    shutil.rmtree(a.work, ignore_errors=True)
    source.mkdir(parents=True)
    old_chip = baseline_chip(a.baseline_rev, a.work)
    write_geoparquet(old, source / CHIPS_MANIFEST)
    middle = old["catalog_id"][old.height // 2]
    middle_date = old.filter(pl.col("catalog_id") == middle)["acquisition_date"][0]
    new = [
        acquisition("10400100NEW000001", "2023-06-15", digits, 99_999),  # one COG more
        acquisition(middle, middle_date, digits[::10][:100], 77_777),  # 100 chips of an old one recorded again
    ]
    print(f"old manifest: {old.height:,} rows ({count} acquisitions); the run adds {sum(f.height for f in new):,} rows", flush=True)

    updates = {
        "imagesim": imagesim_update,
        "baseline": lambda dest, new: streamed_polars_update(old_chip, dest, new),
        "in-memory": polars_update,
    }
    times: dict[str, list[float]] = {name: [] for name in updates}
    outputs: dict[str, Path] = {}
    for i in range(a.repeat):
        for name, update in updates.items():  # interleaved: load on the machine hits all alike
            dest = a.work / f"{name}-{i}"
            shutil.copytree(source, dest)
            t0 = time.perf_counter()
            update(dest, new)
            times[name].append(time.perf_counter() - t0)
            outputs[name] = dest
    expected = read_manifest(outputs["imagesim"])
    for name in ("baseline", "in-memory"):
        assert_frame_equal(read_manifest(outputs[name]), expected)
    ours, base, memory = (statistics.median(times[name]) for name in updates)
    print(f"medians of {a.repeat} runs, seconds ({old.height:,} old rows; the three outputs equal)")
    print(f"  imagesim: plain columns, Rust Parquet, streamed       {ours:6.2f}")
    print(f"  baseline: imagesim at {a.baseline_rev[:10]} (polars, streamed)  {base:6.2f}   ratio {base / ours:.2f}x")
    print(f"  for reference: polars, every row in memory           {memory:6.2f}   ratio {memory / ours:.2f}x")
    shutil.rmtree(a.work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
