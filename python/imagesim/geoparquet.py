"""GeoParquet 1.1 for the chip tables: each chip's footprint as a WGS84 polygon, its bbox covering and
the ``geo`` file metadata, so ``chips.parquet``, ``nodata.parquet``, ``labels.parquet`` and
``embeddings.parquet`` open in QGIS, GeoPandas and DuckDB as they are.

A chip's footprint is its square in its zone's UTM CRS (:func:`imagesim.grid.bounds`, EPSG from
:func:`imagesim.grid.epsg`) transformed to EPSG:4326 (lon/lat: a delivery spans UTM zones, so one CRS
for all). A z17 chip (156 m) needs only its 4 corners: a straight UTM edge maps to a curve in lon/lat
that departs from the straight lon/lat chord by far less than a millimetre over 156 m. Bigger chips
(zoom < 17, up to a 5 km level-12 cell) get ``2**(17 - zoom)`` segments per edge, so every segment stays
≤ 156 m. Corners are transformed per CRS in one pyproj call (numpy arrays), polygons built and written as
WKB by shapely's vectorised functions.

Antimeridian: the ARD grid of zones 1 and 60 reaches past ±180°; a chip crossing it is split at ±180°
into a MultiPolygon (the GeoJSON / GeoParquet convention), and its ``bbox`` row spans both parts
(``xmin`` -180-ish, ``xmax`` 180-ish). Polar: ARD's UTM grid does not cover UPS; a chip reaching beyond
±84° latitude is refused (:class:`~imagesim.errors.GridError` naming it).

A table too big to hold goes out through :class:`GeoParquetStream`: row groups written as they come, each
with its footprints, the ``geo`` metadata accumulated and written on close (chip, nodata-index, labels
build, encode and change write their tables this way).

pyproj and shapely are imported inside the functions: importing this module costs nothing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from imagesim import grid
from imagesim.errors import GridError
from imagesim.fsutil import write_with
from imagesim.storage import AnyPath

GEOMETRY = "geometry"
BBOX = "bbox"
GEO_COLUMNS = (GEOMETRY, BBOX)
GEO_KEY = "geo"
GEOPARQUET_VERSION = "1.1.0"
MAX_LATITUDE = 84.0  # UTM's northern limit; beyond it lies UPS, which ARD's grid does not cover
FULL_CORNERS_ZOOM = 17  # from this zoom on, 4 corners describe a chip exactly enough
BBOX_DTYPE = pl.Struct({"xmin": pl.Float64, "ymin": pl.Float64, "xmax": pl.Float64, "ymax": pl.Float64})


@lru_cache(maxsize=128)
def _transformer(epsg: int) -> Any:
    from pyproj import Transformer

    return Transformer.from_crs(epsg, 4326, always_xy=True)


@lru_cache(maxsize=1)
def crs_projjson() -> dict[str, Any]:
    """PROJJSON of EPSG:4326 (the CRS of every footprint)."""
    from pyproj import CRS

    return CRS.from_epsg(4326).to_json_dict()


def _unit_ring(segments: int) -> tuple[np.ndarray, np.ndarray]:
    """Fractions (fx, fy) of a closed counter-clockwise ring around the unit square, ``segments`` per edge."""
    t = np.arange(segments) / segments
    fx = np.concatenate([t, np.ones(segments), 1.0 - t, np.zeros(segments), [0.0]])
    fy = np.concatenate([np.zeros(segments), t, np.ones(segments), 1.0 - t, [0.0]])
    return fx, fy


def _split_antimeridian(ring: np.ndarray) -> Any:
    """A ring whose longitudes jump across ±180°, split there into a MultiPolygon of two parts."""
    import shapely

    shifted = ring.copy()
    shifted[:, 0] = np.where(shifted[:, 0] < 0, shifted[:, 0] + 360.0, shifted[:, 0])
    poly = shapely.Polygon(shifted)
    east = shapely.clip_by_rect(poly, -180.0, -90.0, 180.0, 90.0)
    west = shapely.affinity.translate(shapely.clip_by_rect(poly, 180.0, -90.0, 540.0, 90.0), xoff=-360.0)
    parts = [p for p in (west, east) if not p.is_empty]
    return shapely.MultiPolygon(parts) if len(parts) > 1 else parts[0]


def footprint_polygons(
    zones: Sequence[int] | np.ndarray | pl.Series, quadkeys: Sequence[str] | pl.Series, names: Sequence[str] | None = None
) -> np.ndarray:
    """Each chip's footprint in WGS84 lon/lat as a shapely geometry (a Polygon, or a MultiPolygon for a
    chip split at the antimeridian), one per ``(zone, quadkey)``; ``names`` (the chips) name a refused chip.

    GridError for a bad zone or quadkey and for a chip beyond ±84° latitude."""
    import shapely

    zone_list = [int(z) for z in zones]
    qk_list = [str(q) for q in quadkeys]
    if len(zone_list) != len(qk_list):
        raise GridError(f"{len(zone_list)} zones for {len(qk_list)} quadkeys")
    label = list(names) if names is not None else [f"Z{z}-{q}" for z, q in zip(zone_list, qk_list)]
    out = np.empty(len(qk_list), dtype=object)
    groups: dict[tuple[int, int], list[int]] = {}
    bounds = np.empty((len(qk_list), 4))
    for i, (zone, qk) in enumerate(zip(zone_list, qk_list)):
        try:
            bounds[i] = grid.bounds(qk)
            code = grid.epsg(qk, zone)
        except (GridError, ValueError) as exc:
            raise GridError(f"{label[i]}: no footprint ({exc})") from None
        groups.setdefault((code, len(qk)), []).append(i)
    for (code, zoom), rows in groups.items():
        idx = np.asarray(rows)
        fx, fy = _unit_ring(2 ** max(0, FULL_CORNERS_ZOOM - zoom))
        west, south, east, north = (bounds[idx, k][:, None] for k in range(4))
        xs = west + (east - west) * fx
        ys = south + (north - south) * fy
        lons, lats = _transformer(code).transform(xs.ravel(), ys.ravel())
        lons = np.asarray(lons).reshape(xs.shape)
        lats = np.asarray(lats).reshape(xs.shape)
        bad = ~(np.isfinite(lons).all(axis=1) & np.isfinite(lats).all(axis=1)) | (np.abs(lats).max(axis=1, initial=0.0) > MAX_LATITUDE)
        if bad.any():
            first = int(idx[np.flatnonzero(bad)[0]])
            raise GridError(
                f"{label[first]}: reaches beyond ±{MAX_LATITUDE:g}° latitude (polar, outside ARD's UTM grid); "
                f"{int(bad.sum())} chip(s) of EPSG:{code} refused"
            )
        ring = np.stack([lons, lats], axis=-1)
        crossing = (lons.max(axis=1) - lons.min(axis=1)) > 180.0
        out[idx[~crossing]] = shapely.polygons(ring[~crossing])
        for j in np.flatnonzero(crossing):
            out[idx[j]] = _split_antimeridian(ring[j])
    return out


def _chip_keys(frame: pl.DataFrame, allow_missing: bool) -> tuple[list[int | None], list[str | None], list[str]]:
    """(zone, quadkey, name) per row, from the zone/quadkey columns or parsed from ``chip``."""
    names = frame["chip"].to_list() if "chip" in frame.columns else [str(i) for i in range(frame.height)]
    if {"zone", "quadkey"} <= set(frame.columns):
        zones: list[int | None] = frame["zone"].to_list()
        qks: list[str | None] = frame["quadkey"].to_list()
    else:
        if "chip" not in frame.columns:
            raise GridError("no footprint: the table has neither zone/quadkey nor chip columns")
        zones, qks = [], []
        for name in names:
            try:
                parsed = grid.parse_chip_name(name)
                zones.append(parsed.zone)
                qks.append(parsed.quadkey)
            except (GridError, ValueError, TypeError):
                zones.append(None)
                qks.append(None)
    if not allow_missing:
        for z, q, n in zip(zones, qks, names):
            if z is None or q is None:
                raise GridError(f"{n}: no zone/quadkey (not a chip name), so no footprint")
    return zones, qks, names


def footprints(
    zones: Sequence[int | None] | pl.Series, quadkeys: Sequence[str | None] | pl.Series, names: Sequence[str] | None = None
) -> tuple[pl.Series, pl.Series]:
    """``(geometry, bbox)`` columns for chips: WKB polygons in WGS84 and their GeoParquet 1.1 bbox
    covering ``{xmin, ymin, xmax, ymax}``. A row whose zone or quadkey is null gets nulls."""
    import shapely

    zl, ql = list(zones), list(quadkeys)
    have = [i for i, (z, q) in enumerate(zip(zl, ql)) if z is not None and q is not None]
    geoms = np.full(len(zl), None, dtype=object)
    if have:
        geoms[have] = footprint_polygons(
            [zl[i] for i in have],
            [ql[i] for i in have],
            [names[i] for i in have] if names is not None else None,
        )
    wkb = shapely.to_wkb(geoms)
    box = shapely.bounds(geoms)  # NaN for None
    ok = np.asarray([g is not None for g in geoms], dtype=bool)
    bbox = pl.DataFrame({k: box[:, i] for i, k in enumerate(("xmin", "ymin", "xmax", "ymax"))}, schema=dict(BBOX_DTYPE.to_schema()))
    bbox_s = bbox.select(pl.when(pl.Series(ok)).then(pl.struct(pl.all())).alias(BBOX)).to_series().cast(BBOX_DTYPE)
    return pl.Series(GEOMETRY, list(wkb), dtype=pl.Binary), bbox_s


def with_footprints(frame: pl.DataFrame, *, allow_missing: bool = False) -> pl.DataFrame:
    """``frame`` with ``geometry`` and ``bbox`` (replaced when present) from its ``zone``/``quadkey``
    columns or, lacking those, parsed from ``chip``. A row that is not a chip is a GridError unless
    ``allow_missing`` (then its geometry is null: a no-data index of arbitrary JPEGs)."""
    frame = frame.drop(GEO_COLUMNS, strict=False)
    zones, qks, names = _chip_keys(frame, allow_missing)
    geometry, bbox = footprints(zones, qks, names)
    return frame.with_columns(geometry, bbox)


def geo_metadata(frame: pl.DataFrame) -> dict[str, str]:
    """The ``geo`` key-value metadata (GeoParquet 1.1) of a frame with ``geometry`` and ``bbox`` columns."""
    import shapely

    geoms = shapely.from_wkb(frame[GEOMETRY].to_numpy()) if frame.height else np.empty(0, dtype=object)
    present = geoms[~shapely.is_missing(geoms)] if len(geoms) else geoms
    ids = set(shapely.get_type_id(present).tolist()) if len(present) else set()
    names = {int(shapely.GeometryType.POLYGON): "Polygon", int(shapely.GeometryType.MULTIPOLYGON): "MultiPolygon"}
    type_names = sorted(names.get(i, str(i)) for i in ids) or ["Polygon"]
    column: dict[str, Any] = {
        "encoding": "WKB",
        "geometry_types": type_names,
        "crs": crs_projjson(),
        "covering": {BBOX: {k: [BBOX, k] for k in ("xmin", "ymin", "xmax", "ymax")}},
    }
    if len(present):
        total = shapely.total_bounds(present)
        column["bbox"] = [float(v) for v in total]
    doc = {"version": GEOPARQUET_VERSION, "primary_column": GEOMETRY, "columns": {GEOMETRY: column}}
    return {GEO_KEY: json.dumps(doc)}


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
    the columns of the first (cast to its types); a stream closed with no frame written writes nothing."""

    def __init__(self, file: str | Path, *, row_group: int | None = None, allow_missing: bool = False) -> None:
        self.file = Path(file)
        self.row_group = max(1, row_group or STREAM_ROW_GROUP)
        self.allow_missing = allow_missing
        self.rows = 0  # rows given so far
        self._pending: list[pl.DataFrame] = []
        self._pending_rows = 0
        self._schema: dict[str, pl.DataType] | None = None  # of the frames given (no geometry)
        self._writer: Any = None
        self._types: set[int] = set()
        self._bounds: np.ndarray | None = None

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

    def _flush(self) -> None:
        import pyarrow.parquet as pq
        import shapely

        if not self._pending:
            return
        frame = pl.concat(self._pending) if len(self._pending) > 1 else self._pending[0]
        self._pending, self._pending_rows = [], 0
        if frame.height == 0 and self._writer is not None:
            return
        table = with_footprints(frame, allow_missing=self.allow_missing)
        geoms = shapely.from_wkb(table[GEOMETRY].to_numpy()) if table.height else np.empty(0, dtype=object)
        present = geoms[~shapely.is_missing(geoms)] if len(geoms) else geoms
        if len(present):
            self._types |= set(shapely.get_type_id(present).tolist())
            box = shapely.total_bounds(present)
            self._bounds = (
                box
                if self._bounds is None
                else np.concatenate([np.minimum(self._bounds[:2], box[:2]), np.maximum(self._bounds[2:], box[2:])])
            )
        arrow = table.to_arrow()
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.file, arrow.schema, compression="zstd")
        self._writer.write_table(arrow, row_group_size=max(arrow.num_rows, 1))

    def close(self) -> int:
        """Write what is pending and the ``geo`` metadata, close the file; the rows written."""
        self._flush()
        if self._writer is not None:
            self._writer.add_key_value_metadata(_geo_metadata_of(self._types, self._bounds))
            self._writer.close()
            self._writer = None
        return self.rows


def _geo_metadata_of(types: set[int], bounds: np.ndarray | None) -> dict[str, str]:
    """:func:`geo_metadata` from the geometry type ids and total bounds of a table."""
    import shapely

    names = {int(shapely.GeometryType.POLYGON): "Polygon", int(shapely.GeometryType.MULTIPOLYGON): "MultiPolygon"}
    column: dict[str, Any] = {
        "encoding": "WKB",
        "geometry_types": sorted(names.get(i, str(i)) for i in types) or ["Polygon"],
        "crs": crs_projjson(),
        "covering": {BBOX: {k: [BBOX, k] for k in ("xmin", "ymin", "xmax", "ymax")}},
    }
    if bounds is not None:
        column["bbox"] = [float(v) for v in bounds]
    doc = {"version": GEOPARQUET_VERSION, "primary_column": GEOMETRY, "columns": {GEOMETRY: column}}
    return {GEO_KEY: json.dumps(doc)}
