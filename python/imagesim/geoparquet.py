"""GeoParquet 1.1 for the chip tables: each chip's footprint as a WGS84 polygon, its bbox covering and
the ``geo`` file metadata, so ``chips.parquet``, ``nodata.parquet``, ``labels.parquet`` and
``embeddings.parquet`` open in QGIS, GeoPandas and DuckDB as they are.

A chip's footprint is its square in its zone's UTM CRS (:func:`imagesim.grid.bounds`, EPSG from
:func:`imagesim.grid.epsg`) transformed to EPSG:4326 (lon/lat: a delivery spans UTM zones, so one CRS
for all) by the Rust core (``imagesim-core``'s ``footprint``: Krüger's series, the algorithm of PROJ's
``tmerc``, agreeing with pyproj to 1e-9°; WKB and bbox made there). A z17 chip (156 m) needs only its 4
corners: a straight UTM edge maps to a curve in lon/lat that departs from the straight lon/lat chord by
far less than a millimetre over 156 m. Bigger chips (zoom < 17, up to a 5 km level-12 cell) get
``2**(17 - zoom)`` segments per edge, so every segment stays ≤ 156 m.

Antimeridian: the ARD grid of zones 1 and 60 reaches past ±180°; a chip crossing it is split at ±180°
into a MultiPolygon (the GeoJSON / GeoParquet convention), and its ``bbox`` row spans both parts
(``xmin`` -180-ish, ``xmax`` 180-ish). Polar: ARD's UTM grid does not cover UPS; a chip reaching beyond
±84° latitude is refused (:class:`~imagesim.errors.GridError` naming it).

A table too big to hold goes out through :class:`GeoParquetStream`: row groups written as they come, each
with its footprints, the ``geo`` metadata accumulated and written on close (chip, nodata-index, labels
build, encode and change write their tables this way).

Writing a table needs neither pyproj nor shapely (the CRS's PROJJSON ships with the package);
shapely is imported only by :func:`footprint_polygons`, for callers that want geometry objects.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imagesim import _imagesim as _rs
from imagesim import grid
from imagesim.errors import GridError
from imagesim.fsutil import write_with
from imagesim.storage import AnyPath
from imagesim.tables import DTYPES, LazyModule

if TYPE_CHECKING:  # numpy is imported where it is used: writing a table needs none
    import numpy as np
    import polars as pl

    BBOX_DTYPE: pl.Struct
else:  # polars on first use: GeoColumnsStream (nodata-index) writes without it
    pl = LazyModule("polars")

GEOMETRY = "geometry"
BBOX = "bbox"
GEO_COLUMNS = (GEOMETRY, BBOX)
GEO_KEY = "geo"
GEOPARQUET_VERSION = "1.1.0"
MAX_LATITUDE = 84.0  # UTM's northern limit (the Rust core refuses chips beyond it)
FULL_CORNERS_ZOOM = 17  # from this zoom on, 4 corners describe a chip exactly enough (the Rust core)
BBOX_FIELDS = ("xmin", "ymin", "xmax", "ymax")
# WKB geometry type codes (ISO; Z/M variants add 1000s) and their GeoParquet names
WKB_POLYGON, WKB_MULTIPOLYGON = 3, 6
_TYPE_NAMES = {WKB_POLYGON: "Polygon", WKB_MULTIPOLYGON: "MultiPolygon"}
# PROJJSON of EPSG:4326, as PROJ writes it (checked against pyproj by tests/test_geoparquet.py)
_WGS84_PROJJSON = Path(__file__).with_name("data") / "epsg4326.projjson"


@lru_cache(maxsize=1)
def bbox_dtype() -> pl.Struct:
    """The polars dtype of the ``bbox`` column (``BBOX_DTYPE``)."""
    return pl.Struct({k: pl.Float64 for k in BBOX_FIELDS})


def __getattr__(name: str) -> Any:
    if name == "BBOX_DTYPE":  # made on first use: it needs polars
        return bbox_dtype()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@lru_cache(maxsize=1)
def crs_projjson() -> dict[str, Any]:
    """PROJJSON of EPSG:4326 (the CRS of every footprint)."""
    doc: dict[str, Any] = json.loads(_WGS84_PROJJSON.read_text(encoding="utf-8"))
    return doc


def _rust_footprints(zones: Iterable[Any], quadkeys: Iterable[Any], names: Sequence[str] | None) -> dict[str, list[Any]]:
    """The Rust core's footprints: columns ``geometry`` (WKB), ``xmin`` … ``ymax`` and ``parts``."""
    zone_list, qk_list = list(zones), list(map(str, quadkeys))
    try:
        zone_ints = list(map(int, zone_list))
    except (TypeError, ValueError):
        raise GridError(f"zones must be integers, not {zone_list!r:.80}") from None
    return _rs.chip_footprints(zone_ints, qk_list, list(names) if names is not None else None)


def footprint_polygons(
    zones: Sequence[int] | np.ndarray | pl.Series, quadkeys: Sequence[str] | pl.Series, names: Sequence[str] | None = None
) -> np.ndarray:
    """Each chip's footprint in WGS84 lon/lat as a shapely geometry (a Polygon, or a MultiPolygon for a
    chip split at the antimeridian), one per ``(zone, quadkey)``; ``names`` (the chips) name a refused chip.

    GridError for a bad zone or quadkey and for a chip beyond ±84° latitude."""
    import numpy as np
    import shapely

    wkb = _rust_footprints(zones, quadkeys, names)["geometry"]
    return shapely.from_wkb(np.array(wkb, dtype=object)) if wkb else np.empty(0, dtype=object)


_WKB_HEADER = operator.itemgetter(slice(0, 5))  # byte order + geometry type


def wkb_type_ids(wkbs: Iterable[bytes | None]) -> set[int]:
    """The geometry type codes (3 Polygon, 6 MultiPolygon, …) of WKB values, read from their headers (the
    rows scanned at C speed, each distinct header decoded once)."""
    ids = set()
    for head in set(map(_WKB_HEADER, filter(None, wkbs))):
        if len(head) == 5:
            ids.add(int.from_bytes(head[1:5], "little" if head[0] == 1 else "big") % 1000)
    return ids


def _chip_keys(frame: pl.DataFrame, allow_missing: bool) -> tuple[list[int | None], list[str | None], list[str]]:
    """(zone, quadkey, name) per row, from the zone/quadkey columns or parsed from ``chip``."""
    names = frame["chip"].to_list() if "chip" in frame.columns else [str(i) for i in range(frame.height)]
    if {"zone", "quadkey"} <= set(frame.columns):
        return _checked_keys(frame["zone"].to_list(), frame["quadkey"].to_list(), names, allow_missing)
    if "chip" not in frame.columns:
        raise GridError("no footprint: the table has neither zone/quadkey nor chip columns")
    return _keys_of_names(names, allow_missing)


def _keys_of_names(names: list[str], allow_missing: bool) -> tuple[list[int | None], list[str | None], list[str]]:
    """(zone, quadkey, name) per chip name, None for a name that is not a chip's."""
    zones: list[int | None] = []
    qks: list[str | None] = []
    for name in names:
        try:
            parsed = grid.parse_chip_name(name)
            zones.append(parsed.zone)
            qks.append(parsed.quadkey)
        except (GridError, ValueError, TypeError):
            zones.append(None)
            qks.append(None)
    return _checked_keys(zones, qks, names, allow_missing)


def _checked_keys(
    zones: list[int | None], qks: list[str | None], names: list[str], allow_missing: bool
) -> tuple[list[int | None], list[str | None], list[str]]:
    if not allow_missing and (None in zones or None in qks):  # the membership tests at C speed
        for z, q, n in zip(zones, qks, names):
            if z is None or q is None:
                raise GridError(f"{n}: no zone/quadkey (not a chip name), so no footprint")
    return zones, qks, names


def footprints(
    zones: Sequence[int | None] | pl.Series, quadkeys: Sequence[str | None] | pl.Series, names: Sequence[str] | None = None
) -> tuple[pl.Series, pl.Series]:
    """``(geometry, bbox)`` columns for chips: WKB polygons in WGS84 and their GeoParquet 1.1 bbox
    covering ``{xmin, ymin, xmax, ymax}``. A row whose zone or quadkey is null gets nulls."""
    cols = footprint_columns(zones, quadkeys, names)
    box = pl.DataFrame({k: cols[k] for k in BBOX_FIELDS}, schema=dict(bbox_dtype().to_schema()))
    bbox = box.select(pl.when(pl.col("xmin").is_not_null()).then(pl.struct(pl.all())).alias(BBOX)).to_series().cast(bbox_dtype())
    return pl.Series(GEOMETRY, cols["geometry"], dtype=pl.Binary), bbox


def footprint_columns(
    zones: Sequence[int | None] | pl.Series, quadkeys: Sequence[str | None] | pl.Series, names: Sequence[str] | None = None
) -> dict[str, list[Any]]:
    """:func:`footprints` as plain lists: ``geometry`` (WKB bytes), ``xmin`` … ``ymax`` and ``parts``,
    None where the zone or quadkey is."""
    zl, ql = list(zones), list(quadkeys)
    if None not in zl and None not in ql:  # the usual case, tested at C speed
        return _rust_footprints(zl, ql, names)
    have = [i for i, (z, q) in enumerate(zip(zl, ql)) if z is not None and q is not None]
    found = _rust_footprints([zl[i] for i in have], [ql[i] for i in have], [names[i] for i in have] if names is not None else None)
    cols: dict[str, list[Any]] = {key: [None] * len(zl) for key in found}
    for key, values in found.items():
        for i, value in zip(have, values):
            cols[key][i] = value
    return cols


def with_footprints(frame: pl.DataFrame, *, allow_missing: bool = False) -> pl.DataFrame:
    """``frame`` with ``geometry`` and ``bbox`` (replaced when present) from its ``zone``/``quadkey``
    columns or, lacking those, parsed from ``chip``. A row that is not a chip is a GridError unless
    ``allow_missing`` (then its geometry is null: a no-data index of arbitrary JPEGs)."""
    frame = frame.drop(GEO_COLUMNS, strict=False)
    zones, qks, names = _chip_keys(frame, allow_missing)
    geometry, bbox = footprints(zones, qks, names)
    return frame.with_columns(geometry, bbox)


def _total_bounds(frame: pl.DataFrame) -> list[float] | None:
    """``[xmin, ymin, xmax, ymax]`` of a table's geometries (from its bbox column), None when it has none."""
    if frame.height == 0 or BBOX not in frame.columns:
        return None
    box = frame[BBOX].struct.unnest()
    if box["xmin"].null_count() == frame.height:
        return None
    return [float(box["xmin"].min()), float(box["ymin"].min()), float(box["xmax"].max()), float(box["ymax"].max())]  # type: ignore[arg-type]


def geo_metadata(frame: pl.DataFrame) -> dict[str, str]:
    """The ``geo`` key-value metadata (GeoParquet 1.1) of a frame with ``geometry`` and ``bbox`` columns (the
    geometry types read from the WKB headers, the total bounds from ``bbox``)."""
    return _geo_metadata_of(wkb_type_ids(frame[GEOMETRY].to_list()), _total_bounds(frame))


def write_geoparquet_file(frame: pl.DataFrame, file: str | Path, *, allow_missing: bool = False) -> pl.DataFrame:
    """Write ``frame`` to ``file`` as GeoParquet 1.1 (footprints computed afresh by :func:`with_footprints`),
    not atomically: the writer inside a :func:`~imagesim.fsutil.write_with`; returns the frame written."""
    table = with_footprints(frame, allow_missing=allow_missing)
    table.write_parquet(file, metadata=geo_metadata(table))
    return table


def write_geoparquet(frame: pl.DataFrame, path: AnyPath, *, allow_missing: bool = False) -> None:
    """Write ``frame`` atomically (:func:`~imagesim.fsutil.write_with`) as GeoParquet 1.1, footprints
    computed afresh by :func:`with_footprints`."""
    table = with_footprints(frame, allow_missing=allow_missing)  # a bad chip fails before any file is made
    write_with(path, lambda tmp: table.write_parquet(tmp, metadata=geo_metadata(table)))


# --- streamed: row groups written as they come (chip, nodata-index, labels build, encode, change) ---

# Rows per row group of a streamed table: what a writer holds at most before writing (with 512-float
# embeddings, about 8 MB).
STREAM_ROW_GROUP = 4_096


class GeoParquetStream:
    """A GeoParquet 1.1 file written row group by row group, so memory holds one row group, not the table.

    Each row group gets its footprints (:func:`with_footprints`) as it is written; the
    ``geo`` file metadata (geometry types, total bbox) is accumulated and added on :meth:`close`, the same
    document :func:`geo_metadata` gives for the whole table. The file is whatever path the
    caller names: wrap it in :func:`imagesim.fsutil.atomic_path` for an atomic write. Every frame must have
    the columns of the first (cast to its types); a stream closed with no frame written writes nothing.
    A table of one row group is written by polars; more, by the Rust core when every column is of a plain
    dtype (the chip tables), else by pyarrow."""

    def __init__(self, file: str | Path, *, row_group: int | None = None, allow_missing: bool = False) -> None:
        self.file = Path(file)
        self.row_group = max(1, row_group or STREAM_ROW_GROUP)
        self.allow_missing = allow_missing
        self.rows = 0  # rows given so far
        self._pending: list[pl.DataFrame] = []
        self._pending_rows = 0
        self._schema: dict[str, pl.DataType] | None = None  # of the frames given (no geometry)
        self._writer: _PlainFrames | _ArrowFrames | None = None
        self._types: set[int] = set()
        self._bounds: list[float] | None = None

    def __enter__(self) -> GeoParquetStream:
        return self

    def __exit__(self, kind: object, *_: object) -> None:
        if kind is None:
            self.close()
        elif self._writer is not None:  # failed: the caller's temporary file is discarded
            self._writer.close()
            self._writer = None

    def write(self, frame: pl.DataFrame) -> None:
        """Add rows (any number; a frame of no rows still fixes the schema)."""
        frame = frame.drop(GEO_COLUMNS, strict=False)
        if self._schema is None:
            self._schema = dict(frame.schema)
        elif frame.columns != list(self._schema) or dict(frame.schema) != self._schema:
            frame = frame.select(list(self._schema)).cast(self._schema)  # type: ignore[arg-type]
        self._pending.append(frame)
        self._pending_rows += frame.height
        self.rows += frame.height
        if self._pending_rows >= self.row_group:
            self._flush()

    def _take_pending(self) -> pl.DataFrame | None:
        """The pending rows with their footprints (types and bounds noted), None when there are none."""
        if not self._pending:
            return None
        frame = pl.concat(self._pending) if len(self._pending) > 1 else self._pending[0]
        self._pending, self._pending_rows = [], 0
        if frame.height == 0 and self._writer is not None:
            return None
        table = with_footprints(frame, allow_missing=self.allow_missing)
        self._types |= wkb_type_ids(table[GEOMETRY].to_list())
        self._bounds = _union(self._bounds, _total_bounds(table))
        return table

    def _flush(self) -> None:
        table = self._take_pending()
        if table is None:
            return
        if self._writer is None:
            kinds = _plain_kinds(table)
            self._writer = _ArrowFrames(self.file, table) if kinds is None else _PlainFrames(self.file, kinds, self.row_group)
        self._writer.write(table)

    def close(self) -> int:
        """Write what is pending and the ``geo`` metadata, close the file; the rows written."""
        if self._writer is None:
            # the whole table is one row group: polars writes it (pyarrow, ~0.1 s to import, is not needed)
            table = self._take_pending()
            if table is not None:
                table.write_parquet(self.file, compression="zstd", metadata=_geo_metadata_of(self._types, self._bounds))
            return self.rows
        self._flush()
        if self._writer is not None:
            self._writer.close(_geo_metadata_of(self._types, self._bounds))
            self._writer = None
        return self.rows


# Polars dtypes the Rust writer takes, by class name (the `bbox` struct apart).
_PLAIN = {polars_name: name for name, polars_name in DTYPES.items()}


def _plain_kinds(frame: pl.DataFrame) -> dict[str, str] | None:
    """``{column: dtype name}`` (:data:`imagesim.tables.DTYPES`, ``bbox``) of a frame with footprints when
    every column is of a plain dtype, else None."""
    kinds = {}
    for column, dtype in frame.schema.items():
        kind = "bbox" if column == BBOX and dtype == bbox_dtype() else _PLAIN.get(type(dtype).__name__)
        if kind is None:
            return None
        kinds[column] = kind
    return kinds


class _PlainFrames:
    """Frames of plain dtypes (the chip tables) to the Rust writer: no pyarrow (~45 MB and 0.1 s to load);
    row groups of ``row_group`` rows."""

    def __init__(self, file: Path, kinds: dict[str, str], row_group: int) -> None:
        self.kinds = kinds
        self.writer = _rs.ParquetWriter(file, list(kinds.items()), row_group)

    def write(self, frame: pl.DataFrame) -> None:
        columns: list[Any] = []
        for column, kind in self.kinds.items():
            if kind == "bbox":
                box = frame[column].struct.unnest()
                columns.append([box[k].to_list() for k in BBOX_FIELDS])
            else:
                columns.append(frame[column].to_list())
        self.writer.write(columns)

    def close(self, metadata: dict[str, str] | None = None) -> None:
        self.writer.close(list((metadata or {}).items()))


class _ArrowFrames:
    """Frames of any dtype (embeddings' arrays) to pyarrow's writer, a row group per frame."""

    def __init__(self, file: Path, first: pl.DataFrame) -> None:
        import pyarrow.parquet as pq

        self.writer = pq.ParquetWriter(file, first.to_arrow().schema, compression="zstd")

    def write(self, frame: pl.DataFrame) -> None:
        arrow = frame.to_arrow()
        self.writer.write_table(arrow, row_group_size=max(arrow.num_rows, 1))

    def close(self, metadata: dict[str, str] | None = None) -> None:
        if metadata:
            self.writer.add_key_value_metadata(metadata)
        self.writer.close()


class GeoColumnsStream:
    """:class:`GeoParquetStream` for plain columns (dicts of lists), written by the Rust core
    (:class:`imagesim._imagesim.ParquetWriter`) without polars: the tables of commands that never make a
    frame (nodata-index). ``fields`` (``{column: dtype name}``, :data:`imagesim.tables.DTYPES`) are the
    columns given to :meth:`write`; ``geometry`` and ``bbox`` are added from the ``zone`` and ``quadkey``
    fields when there are both, else from the ``chip`` names (a row without them gets nulls when
    ``allow_missing``, else a GridError). The same file, read back, as
    :class:`GeoParquetStream` writes from frames of those dtypes (tests/test_tables.py). Row groups of
    ``row_group`` rows; the file is created at once (wrap it in :func:`imagesim.fsutil.atomic_path`)."""

    def __init__(self, file: str | Path, fields: dict[str, str], *, row_group: int | None = None, allow_missing: bool = False) -> None:
        if "chip" not in fields:
            raise GridError("no footprint: the table has no chip column")
        self.fields = dict(fields)
        self.allow_missing = allow_missing
        self.rows = 0
        self._types: set[int] = set()
        self._bounds: list[float] | None = None
        schema = [*self.fields.items(), (GEOMETRY, "binary"), (BBOX, "bbox")]
        self._writer = _rs.ParquetWriter(Path(file), schema, max(1, row_group or STREAM_ROW_GROUP))

    def __enter__(self) -> GeoColumnsStream:
        return self

    def __exit__(self, kind: object, *_: object) -> None:
        if kind is None:
            self.close()
        else:  # failed: the caller's temporary file is discarded
            self._writer.close()

    def write(self, columns: dict[str, list[Any]]) -> None:
        """Add rows: a list per field (any extra key is ignored), all of one length."""
        names = columns["chip"]
        if "zone" in self.fields and "quadkey" in self.fields:  # as _chip_keys: the columns, else the names
            zones, qks, _ = _checked_keys(columns["zone"], columns["quadkey"], names, self.allow_missing)
        else:
            zones, qks, _ = _keys_of_names(names, self.allow_missing)
        geo = footprint_columns(zones, qks, names)
        self._types |= wkb_type_ids(geo[GEOMETRY])
        self._bounds = _union(self._bounds, _column_bounds(geo))
        self._writer.write([columns[name] for name in self.fields] + [geo[GEOMETRY], [geo[k] for k in BBOX_FIELDS]])
        self.rows += len(names)

    def close(self) -> int:
        """Write the ``geo`` metadata and close the file; the rows written."""
        self._writer.close(list(_geo_metadata_of(self._types, self._bounds).items()))
        return self.rows


def _column_bounds(cols: dict[str, list[Any]]) -> list[float] | None:
    """``[xmin, ymin, xmax, ymax]`` of :func:`footprint_columns`' bbox lists, None when all are null."""
    lows, highs = ([_present(cols[k]) for k in keys] for keys in (("xmin", "ymin"), ("xmax", "ymax")))
    if not lows[0]:
        return None
    return [min(lows[0]), min(lows[1]), max(highs[0]), max(highs[1])]


def _present(values: list[Any]) -> list[Any]:
    """``values`` less its Nones (the list itself when it has none)."""
    return values if None not in values else [v for v in values if v is not None]


def _union(a: list[float] | None, b: list[float] | None) -> list[float] | None:
    """The bounds covering both (either may be None)."""
    if a is None or b is None:
        return a or b
    return [min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])]


def _geo_metadata_of(types: set[int], bounds: Sequence[float] | None) -> dict[str, str]:
    """:func:`geo_metadata` from the WKB geometry type codes and total bounds of a table."""
    column: dict[str, Any] = {
        "encoding": "WKB",
        "geometry_types": sorted(_TYPE_NAMES.get(i, str(i)) for i in types) or ["Polygon"],
        "crs": crs_projjson(),
        "covering": {BBOX: {k: [BBOX, k] for k in ("xmin", "ymin", "xmax", "ymax")}},
    }
    if bounds is not None:
        column["bbox"] = [float(v) for v in bounds]
    doc = {"version": GEOPARQUET_VERSION, "primary_column": GEOMETRY, "columns": {GEOMETRY: column}}
    return {GEO_KEY: json.dumps(doc)}
