"""The chip manifest kept as plain columns (`imagery.chip._Manifest`, no polars): what it knows of an old
``chips.parquet`` and the file its merge writes, against polars doing the same in memory (the oracle): old
rows less the chips a run recorded again, plus the run's rows, sorted in manifest order."""

from __future__ import annotations

import random
from pathlib import Path
from types import SimpleNamespace

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from imagesim.artefacts import CHIPS_MANIFEST, MANIFEST_ORDER, MANIFEST_SCHEMA, read_manifest
from imagesim.errors import ImagesimError
from imagesim.geoparquet import write_geoparquet
from imagesim.imagery import chip

CELL = "120020223032"
ZOOM = 14  # 16 chips a cell


def rows(zone: int, date: str | None, catalog_id: str, digits: list[str], *, stamp: int = 7, recorded: bool = True) -> pl.DataFrame:
    """Manifest rows of the chips ``CELL + d`` (d in ``digits``) of one acquisition."""
    quadkeys = [CELL + d for d in digits]
    n = len(quadkeys)
    return pl.DataFrame(
        {
            "chip": [f"Z{zone}-{q}_{catalog_id}.jpg" for q in quadkeys],
            "zone": [zone] * n,
            "quadkey": quadkeys,
            "zoom": [len(q) for q in quadkeys],
            "cell": [CELL] * n,
            "catalog_id": [catalog_id] * n,
            "acquisition_date": [date] * n,
            "source_cog": [f"/ard/{catalog_id}-visual.tif" if recorded else None] * n,
            "source_size": [stamp if recorded else None] * n,
            "source_mtime_ns": [stamp * 10 if recorded else None] * n,
            "col_off": list(range(n)),
            "row_off": [0] * n,
            "width": [256] * n,
            "height": [256] * n,
            "nodata_pixels": [i * 3 for i in range(n)],
            "nodata_threshold": [4] * n,
            "valid_fraction": [1.0 - i * 3 / 65536 for i in range(n)],
            "nodata_class": ["all_data" if i == 0 else "partial_data" for i in range(n)],
            "written": [True] * n,
            "encoding": ["jpeg"] * n,
            "bytes": [1000 + stamp] * n,
            "cloud_fraction": [None if i % 3 else 0.25 for i in range(n)],
            "cloud_shadow_fraction": [0.0] * n,
            "terrain_shadow_fraction": [None] * n,
            "water_fraction": [0.5] * n,
            "vegetation_fraction": [0.1] * n,
        },
        schema=MANIFEST_SCHEMA,
    )


def all_digits(depth: int) -> list[str]:
    """The quadkey digits of every chip of a cell ``depth`` levels below it, in position order."""
    return chip._suffixes(12 + depth)


OLD = [
    rows(10, "2023-06-14", "A1", all_digits(2)),  # 16 chips at the run's zoom
    rows(10, "2023-06-14", "A1", ["000", "333"]),  # two of another zoom: kept, never known
    rows(10, "2024-02-20", "B2", all_digits(2)[:12], stamp=9),
    rows(10, None, "N0", ["01", "02"], recorded=False),  # derived from chip names: not known, kept
    rows(11, "2023-09-03", "C3", all_digits(2)[4:]),
]


def write_old(dest: Path, *, shuffled: bool) -> pl.DataFrame:
    old = pl.concat(OLD).sort(MANIFEST_ORDER, maintain_order=True)
    if shuffled:  # an older imagesim's order: merged in memory
        old = old.sample(fraction=1.0, shuffle=True, seed=3)
    dest.mkdir(parents=True, exist_ok=True)
    write_geoparquet(old, dest / CHIPS_MANIFEST)
    return old


def acq(zone: int, catalog_id: str) -> SimpleNamespace:
    return SimpleNamespace(zone=zone, cell=CELL, catalog_id=catalog_id)


@pytest.mark.parametrize("shuffled", [False, True], ids=["in-order", "shuffled"])
def test_the_manifest_knows_the_recorded_chips(tmp_path: Path, shuffled: bool) -> None:
    write_old(tmp_path, shuffled=shuffled)
    manifest = chip._Manifest(tmp_path, ZOOM)
    assert manifest.old_rows == sum(f.height for f in OLD)
    assert manifest.old_sorted is not shuffled
    assert manifest.known_names(acq(10, "A1")) == set(OLD[0]["chip"])  # not the z15 rows
    assert manifest.known_names(acq(10, "B2")) == set(OLD[2]["chip"])
    assert manifest.known_names(acq(11, "C3")) == set(OLD[4]["chip"])
    assert manifest.known_names(acq(10, "N0")) == set()  # derived rows are not chips chip measured
    assert manifest.stamps[(CELL, "B2")] == (9, 90) and manifest.stamps[(CELL, "A1")] == (7, 70)
    assert (CELL, "N0") not in manifest.stamps


@pytest.mark.parametrize("shuffled", [False, True], ids=["in-order", "shuffled"])
@pytest.mark.parametrize("batch", [5, 16_384], ids=["slices-of-5", "one-slice"])
def test_the_merge_writes_what_polars_would(tmp_path: Path, monkeypatch, shuffled: bool, batch: int) -> None:
    # slices of 5 rows: acquisitions split across slices, the merge's cursor stops inside them
    monkeypatch.setattr(chip, "iter_manifest_columns", _batched(chip.iter_manifest_columns, batch))
    old = write_old(tmp_path, shuffled=shuffled)
    rng = random.Random(5)
    again = rng.sample(all_digits(2)[:12], 5) + ["33"]  # five B2 chips recorded again, one new
    new = [
        rows(10, "2024-02-20", "B2", again, stamp=11),
        rows(10, "2023-07-01", "D4", rng.sample(all_digits(2), 6), stamp=12),  # sorts between A1 and B2
        rows(12, "2022-01-01", "E5", ["10", "00"], stamp=13),  # after every old row
        rows(10, "2024-02-20", "B2", ["32"], stamp=11),  # a second block of B2 (another COG of it)
    ]
    manifest = chip._Manifest(tmp_path, ZOOM)
    for frame in new:
        manifest.add(frame.to_dict(as_series=False))
    manifest.flush()
    manifest.discard()

    replaced = {(q, "B2") for q in [CELL + d for d in [*again, "32"]]}
    kept = old.filter(~pl.struct("quadkey", "catalog_id").map_elements(lambda r: (r["quadkey"], r["catalog_id"]) in replaced, pl.Boolean))
    expected = pl.concat([kept, *new]).sort(MANIFEST_ORDER, maintain_order=True)
    got = read_manifest(tmp_path)
    assert got.height == old.height - 5 + sum(f.height for f in new)
    assert_frame_equal(got, expected)
    assert not list(tmp_path.glob(".*"))  # no part folder left


def _batched(real, batch: int):
    """``iter_manifest_columns`` reading slices of ``batch`` rows."""
    return lambda dest, columns, **_: real(dest, columns, batch=batch)


def test_cell_indexes_leave_out_what_is_not_a_chip_of_the_zoom() -> None:
    assert chip._cell_indexes([CELL + "00", CELL + "33", CELL + "10"], ZOOM) == [0, 15, 4]
    assert chip._cell_indexes([CELL + "0", None, CELL + "3x", CELL + "+1", CELL + "21"], ZOOM) == [9]
    assert chip._cell_indexes([CELL, CELL + "1"], 12) == [0]
    assert chip._suffixes(14)[:5] == ["00", "01", "02", "03", "10"] and len(chip._suffixes(14)) == 16


def test_runs_split_a_slice_by_acquisition() -> None:
    cols = pl.concat([OLD[0], OLD[1], OLD[2]]).to_dict(as_series=False)
    starts, keys = chip._runs(cols)
    assert starts == [0, 18, 30]  # A1's two zooms are one run
    assert keys == sorted(keys) and keys[0] == chip._acquisition_key(10, CELL, "2023-06-14", "A1")
    assert chip._runs({c: [] for c in cols}) == ([0], [])


@pytest.mark.parametrize(
    ("column", "values"),
    [("zone", pl.col("zone").cast(pl.String)), ("nodata_pixels", pl.col("nodata_pixels").cast(pl.Float64))],
    ids=["zone-as-text", "counts-as-floats"],
)
def test_a_manifest_of_other_types_is_named(tmp_path: Path, column: str, values: pl.Expr) -> None:
    """A manifest another tool rewrote with other types: an error naming the file and the column, not a traceback."""
    old = write_old(tmp_path, shuffled=False)
    write_geoparquet(old.with_columns(values), tmp_path / CHIPS_MANIFEST)
    with pytest.raises(ImagesimError, match=rf"{CHIPS_MANIFEST}: column '{column}' holds (str|float) values"):
        list(chip._Manifest(tmp_path, ZOOM)._old_rows())  # zone: read as the run starts; counts: as old rows merge
