"""Parquet tables as plain columns (imagesim.tables, the Rust core's `table` module): what the Rust writer
writes reads back in polars with the dtypes it declares, what polars writes reads back here, a GeoParquet
table written from columns is the one written from frames, and bad input is refused by name."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from imagesim import _imagesim, geoparquet, tables
from imagesim.artefacts import MANIFEST_SCHEMA, iter_manifest, iter_manifest_columns, nodata_class, nodata_class_expr, valid_fraction
from imagesim.errors import GridError, InvalidArgumentError, TableError
from imagesim.imagery.nodata import TABLE_TYPES

NORTH = "03131313131313131"  # zone 33, a z17 chip
EDGE = "03331031113020132"  # zone 1 at 180°W, 10°N: crosses the antimeridian (a MultiPolygon)

TYPES = {
    "s": "str",
    "small": "u8",
    "mid": "u32",
    "big": "u64",
    "signed": "i32",
    "wide": "i64",
    "f": "f64",
    "b": "bool",
    "w": "binary",
}
VALUES = {
    "s": ["a", None, "ü"],
    "small": [255, 0, None],
    "mid": [None, 4_000_000_000, 1],
    "big": [2**64 - 1, None, 7],
    "signed": [-(2**31), None, 2**31 - 1],
    "wide": [None, -(2**63), 2**63 - 1],
    "f": [0.5, None, -1e300],
    "b": [None, True, False],
    "w": [b"\x01\x02", None, b""],
}


def _write(path: Path, types: dict[str, str], values: dict[str, list], row_group: int = 16_384) -> None:
    writer = _imagesim.ParquetWriter(path, list(types.items()), row_group)
    writer.write([values[c] for c in types])
    writer.close([("note", "kept")])


def _read_all(path: Path, columns: list[str], batch: int = 16_384) -> dict[str, list]:
    got: dict[str, list] = {c: [] for c in columns}
    for part in tables.iter_columns(path, columns, batch=batch):
        for c in columns:
            got[c].extend(part[c])
    return got


def test_rust_written_table_reads_back_in_polars_with_its_declared_dtypes(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    _write(path, TYPES, VALUES)
    frame = pl.read_parquet(path)
    assert dict(frame.schema) == tables.polars_schema(TYPES)
    assert frame.to_dict(as_series=False) == VALUES
    assert pl.read_parquet_metadata(path)["note"] == "kept"


def test_rust_reader_round_trip_in_batches(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    _write(path, TYPES, VALUES, row_group=2)
    assert tables.columns_of(path) == list(TYPES)
    batches = list(tables.iter_columns(path, ["w", "s"], batch=2))
    assert [len(b["s"]) for b in batches] == [2, 1]
    assert list(batches[0]) == ["w", "s"]  # in the order asked
    assert _read_all(path, list(TYPES)) == VALUES


def test_rust_reader_reads_what_polars_writes(tmp_path: Path) -> None:
    path = tmp_path / "p.parquet"
    frame = pl.DataFrame(VALUES, schema=tables.polars_schema(TYPES))
    frame = frame.with_columns(
        pl.col("f").cast(pl.Float32).alias("f32"),
        pl.col("small").cast(pl.Int16).alias("i16"),
        pl.col("s").cast(pl.Categorical).alias("category"),  # dictionary-encoded, as pandas' category is too
        pl.lit(None, pl.String).cast(pl.Categorical).alias("no_category"),
    )
    frame.write_parquet(path)
    got = _read_all(path, frame.columns)
    assert got == frame.to_dict(as_series=False)
    assert got["category"] == ["a", None, "ü"] and got["no_category"] == [None] * 3


def test_bad_tables_and_values_are_refused_by_name(tmp_path: Path) -> None:
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 not really")
    with pytest.raises(TableError, match=r"broken\.parquet: not a readable Parquet file"):
        tables.columns_of(broken)
    path = tmp_path / "t.parquet"
    _write(path, TYPES, VALUES)
    with pytest.raises(InvalidArgumentError, match=r't\.parquet: no column "nope"'):
        tables.iter_columns(path, ["s", "nope"])
    with pytest.raises(FileNotFoundError, match="missing.parquet"):
        tables.columns_of(tmp_path / "missing.parquet")
    writer = _imagesim.ParquetWriter(tmp_path / "w.parquet", [("n", "u8"), ("s", "str")])
    with pytest.raises(InvalidArgumentError, match=r'"n".*256 is out of range'):
        writer.write([[256], ["x"]])
    with pytest.raises(TypeError, match=r'column "s"'):
        writer.write([[1], [2]])
    with pytest.raises(InvalidArgumentError, match="has 2 values"):
        writer.write([[1], ["a", "b"]])
    writer.close()
    with pytest.raises(InvalidArgumentError, match="date"):
        _imagesim.ParquetWriter(tmp_path / "d.parquet", [("d", "date")])
    dated = tmp_path / "dated.parquet"
    pl.DataFrame({"d": ["2020-01-01"]}).select(pl.col("d").str.to_date()).write_parquet(dated)
    with pytest.raises(TableError, match=r'dated\.parquet: column "d" has type Date32'):
        _read_all(dated, ["d"])


def _nodata_rows(names: list[str]) -> dict[str, list]:
    n = len(names)
    return {
        "chip": names,
        "path": [f"/chips/{x}" for x in names],
        "nodata_pixels": [k * 1000 for k in range(n)],
        "total_pixels": [262_144] * n,
        "valid_fraction": [1.0 - k * 1000 / 262_144 for k in range(n)],
        "nodata_class": ["all_data"] * n,
        "source": ["pixels"] * n,
        "note": [None] * n,
        "error": [None] * (n - 1) + ["broken"],
    }


def test_geoparquet_from_columns_is_the_geoparquet_from_frames(tmp_path: Path) -> None:
    # chips of two zones, one split at the antimeridian, a JPEG that is not a chip (null geometry)
    names = [f"Z33-{NORTH}_1040010012345600.jpg", f"Z1-{EDGE}_1040010012345600.jpg", "holiday.jpg", f"Z33-{NORTH[:-1]}2_10400100AB.jpg"]
    rows = _nodata_rows(names)
    by_columns, by_frames = tmp_path / "columns.parquet", tmp_path / "frames.parquet"
    with geoparquet.GeoColumnsStream(by_columns, TABLE_TYPES, row_group=3, allow_missing=True) as stream:
        stream.write({k: v[:2] for k, v in rows.items()})
        stream.write({k: v[2:] for k, v in rows.items()})
    assert stream.rows == 4
    with geoparquet.GeoParquetStream(by_frames, row_group=3, allow_missing=True) as frames:
        frame = pl.DataFrame(rows, schema=tables.polars_schema(TABLE_TYPES))
        frames.write(frame[:2])
        frames.write(frame[2:])
    a, b = pl.read_parquet(by_columns), pl.read_parquet(by_frames)
    assert a.schema == b.schema
    assert a.equals(b, null_equal=True)
    assert a["geometry"][2] is None and a["bbox"][2] is None
    meta_a = json.loads(pl.read_parquet_metadata(by_columns)["geo"])
    meta_b = json.loads(pl.read_parquet_metadata(by_frames)["geo"])
    assert meta_a == meta_b
    assert meta_a["columns"]["geometry"]["geometry_types"] == ["MultiPolygon", "Polygon"]


def test_geoparquet_from_columns_refuses_a_name_that_is_not_a_chip(tmp_path: Path) -> None:
    with pytest.raises(GridError, match="holiday.jpg"):
        with geoparquet.GeoColumnsStream(tmp_path / "t.parquet", {"chip": "str"}) as stream:
            stream.write({"chip": ["holiday.jpg"]})


def test_nodata_class_agrees_with_its_expression() -> None:
    cases = [(n, t) for n in (None, 0, 1, 99, 100, 262_143, 262_144, 262_145) for t in (None, 0, 100, 262_144)]
    frame = pl.DataFrame({"n": [c[0] for c in cases], "t": [c[1] for c in cases]}, schema={"n": pl.UInt64, "t": pl.UInt64})
    expected = frame.select(nodata_class_expr(pl.col("n"), pl.col("t"), 100).alias("c"))["c"].to_list()
    assert [nodata_class(n, t, 100) for n, t in cases] == expected


def test_valid_fraction_is_polars_float_arithmetic() -> None:
    """The manifest's and nodata.parquet's valid_fraction: 1 - n / t as polars computes it, NaN and -inf included."""
    cases = [(n, t) for n in (None, 0, 3, 100) for t in (None, 0, 100, 65_536)]
    frame = pl.DataFrame({"n": [c[0] for c in cases], "t": [c[1] for c in cases]}, schema={"n": pl.UInt64, "t": pl.UInt64})
    expected = frame.select((1.0 - pl.col("n").cast(pl.Float64) / pl.col("t").cast(pl.Float64)).alias("v"))["v"].to_list()
    got = [valid_fraction(n, t) for n, t in cases]
    assert [None if v is None else repr(v) for v in got] == [None if v is None else repr(v) for v in expected]


def test_columns_or_nulls_fill_what_a_file_lacks(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    pl.DataFrame({"a": [1, 2, 3], "b": ["x", None, "z"]}).write_parquet(path)
    got = list(tables.iter_columns_or_nulls(path, ["b", "later", "a"], batch=2))
    assert got == [{"b": ["x", None], "later": [None, None], "a": [1, 2]}, {"b": ["z"], "later": [None], "a": [3]}]
    assert list(tables.iter_columns_or_nulls(path, ["later"])) == [{"later": [None, None, None]}]  # rows counted


def test_manifest_columns_agree_with_the_polars_reader(small_sample, tmp_path: Path) -> None:
    from imagesim.imagery.chip import ChipSettings, run_chip

    dest = tmp_path / "chips"
    run_chip(small_sample.root, dest, ChipSettings(proc=1), catalog_ids=[small_sample.catalog_ids[0]])
    wanted = ["chip", "zone", "nodata_pixels", "width", "nodata_threshold", "written", "cloud_fraction"]
    by_rust = {c: [v for b in iter_manifest_columns(dest, wanted, batch=100) for v in b[c]] for c in wanted}
    by_polars = pl.concat(list(iter_manifest(dest, wanted, batch=100))).to_dict(as_series=False)
    assert by_rust == by_polars and len(by_rust["chip"]) > 100
    # an older manifest without the later columns: Nones, as the polars reader gives nulls
    old = pl.read_parquet(dest / "chips.parquet").drop("nodata_threshold", "cloud_fraction")
    old.write_parquet(dest / "chips.parquet")
    by_rust = {c: [v for b in iter_manifest_columns(dest, wanted) for v in b[c]] for c in wanted}
    assert by_rust["nodata_threshold"] == [None] * len(old) and by_rust["chip"] == old["chip"].to_list()
    assert set(MANIFEST_SCHEMA) >= set(wanted)
    (dest / "chips.parquet").write_bytes(b"damaged")
    with pytest.raises(Exception, match="cannot read the chip manifest"):
        list(iter_manifest_columns(dest, wanted))


def test_lazy_module_imports_on_first_use() -> None:
    code = (
        "import sys; import imagesim.artefacts, imagesim.geoparquet, imagesim.storage; "
        "assert 'polars' not in sys.modules, 'imported early'; "
        "from imagesim.artefacts import MANIFEST_SCHEMA; "
        "assert 'polars' in sys.modules and str(MANIFEST_SCHEMA['zone']) == 'UInt8'; print('ok')"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
    lazy = tables.LazyModule("json")
    assert repr(lazy) == "<lazy module 'json'>"
    assert lazy.dumps([1]) == "[1]" and repr(lazy) == "<lazy module 'json' (imported)>"


def test_a_streamed_chip_table_of_many_row_groups_needs_no_pyarrow(tmp_path: Path) -> None:
    """GeoParquetStream: frames of plain dtypes in several row groups go to the Rust writer; the file reads back
    as the table with its footprints, the `geo` metadata is the whole table's, and pyarrow is never loaded."""
    code = """
import json, sys
import polars as pl
from imagesim import geoparquet
qks = ["03131313131313131", "03131313131313130", "03331031113020132", "03131313131313133", "03131313131313132"]
frame = pl.DataFrame(
    {"chip": [f"c{i}" for i in range(5)], "zone": [33, 33, 1, 33, 33], "quadkey": qks, "n": [1, None, 3, 4, 5], "ok": [True, False, None, True, True]},
    schema={"chip": pl.String, "zone": pl.UInt8, "quadkey": pl.String, "n": pl.UInt64, "ok": pl.Boolean},
)
with geoparquet.GeoParquetStream(sys.argv[1], row_group=2) as stream:
    for i in range(0, 5, 2):
        stream.write(frame[i : i + 2])
print(json.dumps({"pyarrow": "pyarrow" in sys.modules}))
"""
    path = tmp_path / "t.parquet"
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"pyarrow": False}
    written = pl.read_parquet(path)
    expected = geoparquet.with_footprints(written.drop("geometry", "bbox"))
    assert written.schema == expected.schema and written.equals(expected, null_equal=True)
    assert pl.read_parquet_metadata(path)["geo"] == geoparquet.geo_metadata(expected)["geo"]
    assert written["zone"].to_list() == [33, 33, 1, 33, 33]
