"""Every artefact imagesim writes: its file name, its columns and its reader, in one place.

Stages write these files and later stages read them; both sides use the names and readers here, so a
file name or a column is declared once. A stage that needs another stage's output reads it through
this module, never through that stage's code (``docs/architecture.md``).

| artefact | written by | where |
|---|---|---|
| ``chips.parquet``, ``chip-errors.json`` | ``imagesim chip`` | the chips folder (DEST) |
| ``chips.parquet`` marked ``derived`` | the first stage reading a chips folder of the original tool | DEST |
| ``nodata-index.json``, ``nodata.parquet``, ``<index>-summary.json`` | ``imagesim nodata-index`` | DEST |
| ``osm_data.json`` per cell, ``osm_tags.parquet`` | ``imagesim osm`` | the ARD delivery |
| ``labels.parquet``, ``labels.csv``, ``labels.json``, ``labels-train/val.csv``, ``labels-report/`` | ``imagesim labels`` | DEST |
| ``model.pt``, ``last.pt``, ``metrics.json``, ``training_curves.png``, ``split.json`` | ``imagesim train`` | the run folder |
| ``model.onnx`` | ``imagesim export`` | anywhere |
| ``embeddings.parquet``, ``embeddings.json`` | ``imagesim encode`` | DEST |
| ``index.faiss``, ``ids.parquet``, ``index.json`` | ``imagesim index`` | the index folder |

``chips.parquet``, ``nodata.parquet``, ``labels.parquet`` and ``embeddings.parquet`` are GeoParquet 1.1
(:mod:`imagesim.geoparquet`): beside their own columns each has ``geometry`` (the chip's footprint, WKB,
WGS84 lon/lat) and ``bbox`` (its covering struct) and the ``geo`` file metadata. The writers compute both
afresh from ``zone``/``quadkey`` (or the chip name) on every write; readers here leave them out where they
select columns (:func:`read_manifest`, :func:`read_chip_table`).

A chips folder of the original tool holds the JPEGs (``DEST/<zone>/Z<zone>-<quadkey>_<catalog-id>.jpg``,
or flat in one zone folder) and perhaps a ``nodata-index.json``, but no ``chips.parquet``. The first
stage that needs the chip table (:func:`read_chip_table`) derives one from the chip names
(:func:`derive_manifest`) and saves it as ``chips.parquet``: every ``MANIFEST_SCHEMA`` column (what a
name cannot tell, such as ``acquisition_date`` or the source COG, is null; ``nodata_class`` comes from
``nodata.parquet`` or ``nodata-index.json`` when the folder has one, else null = unmeasured) plus two
more columns: ``path``, the chip file relative to the folder (``<zone>/<chip>`` or, flat, ``<chip>``),
and ``derived``, true on every row — the marker of a derived manifest. `imagesim chip` run into such a
folder later measures those chips again (a derived row has no ``source_cog``) and its rows replace them.
"""

from __future__ import annotations

import functools
import json
import math
import os
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imagesim import _imagesim, grid
from imagesim.errors import ImagesimError, ImagesimFileNotFoundError, InvalidArgumentError, LabelInputError, TableError
from imagesim.fsutil import write_with
from imagesim.geoparquet import GEO_COLUMNS as _GEO_COLUMNS
from imagesim.geoparquet import write_geoparquet_file
from imagesim.storage import AnyPath, StorePath, local_copy, location, read_parquet
from imagesim.tables import DTYPES, LazyModule, columns_of, iter_columns_or_nulls, polars_schema

if TYPE_CHECKING:  # numpy is imported where it is used: a command that needs none loads none
    import numpy as np
    import polars as pl

    MANIFEST_SCHEMA: dict[str, pl.DataType]
    CHANGE_SCHEMA: dict[str, pl.DataType]
else:  # polars on first use: nodata-index reads and writes its tables without it (imagesim.tables)
    pl = LazyModule("polars")

# --- chips (imagesim chip) ---
CHIPS_MANIFEST = "chips.parquet"
CHIP_ERRORS = "chip-errors.json"

# The ARD masks imagesim reads (imagery.ard.MASK_FILES names their files) and their manifest columns.
MASK_NAMES = ("cloud", "cloud_shadow", "terrain_shadow", "water", "vegetation")
MASK_FRACTION_COLUMNS: dict[str, str] = {name: f"{name}_fraction" for name in MASK_NAMES}
CLOUD_FRACTION = MASK_FRACTION_COLUMNS["cloud"]
# The share of a chip's pixels with data as `imagesim encode` measured it (embeddings and index ids column).
VALID_FRACTION = "valid_fraction"

MANIFEST_TYPES: dict[str, str] = {
    "chip": "str",
    "zone": "u8",
    "quadkey": "str",
    "zoom": "u8",
    "cell": "str",
    "catalog_id": "str",
    "acquisition_date": "str",
    "source_cog": "str",
    "source_size": "u64",
    "source_mtime_ns": "i64",
    "col_off": "u32",
    "row_off": "u32",
    "width": "u32",
    "height": "u32",
    "nodata_pixels": "u64",
    "nodata_threshold": "u8",
    "valid_fraction": "f64",
    "nodata_class": "str",
    "written": "bool",
    "encoding": "str",
    "bytes": "u64",
    # ARD masks (imagery.masks): the share of the chip's valid (data-mask) area under each mask; null
    # where the delivery has no such mask or the chip no valid area.
    **{column: "f64" for column in MASK_FRACTION_COLUMNS.values()},
}
# The GeoParquet columns of the chip tables (imagesim.geoparquet writes them; not in MANIFEST_SCHEMA:
# read_manifest drops them and the manifest's writer recomputes them).
GEO_COLUMNS: tuple[str, ...] = _GEO_COLUMNS
# Columns added after the first manifests were written; older manifests get them as nulls.
MANIFEST_LATER_COLUMNS = {"source_size", "source_mtime_ns", "nodata_threshold", *MASK_FRACTION_COLUMNS.values()}
# What every later stage needs of a chip: its identity and no-data class.
CHIP_IDENTITY = ["chip", "zone", "quadkey", "zoom", "cell", "catalog_id", "nodata_class"]
# Columns of a manifest derived from chip names (beside MANIFEST_SCHEMA): the chip file relative to the
# chips folder, and the marker (true on every row) that says the manifest was derived.
CHIP_PATH = "path"
DERIVED = "derived"

# --- no-data (imagesim nodata-index) ---
NODATA_INDEX = "nodata-index.json"
NODATA_PARQUET = "nodata.parquet"
NODATA_CLASSES = ("all_data", "partial_data", "no_data")

# --- OSM (imagesim osm) ---
OSM_DATA = "osm_data.json"
OSM_TAGS = "osm_tags.parquet"

# --- labels (imagesim labels) ---
LABELS_PARQUET = "labels.parquet"
LABELS_CSV = "labels.csv"
LABELS_JSON = "labels.json"
LABELS_TRAIN_CSV = "labels-train.csv"
LABELS_VAL_CSV = "labels-val.csv"
LABELS_REPORT = "labels-report"

# --- training run (imagesim train) and export ---
MODEL_PT = "model.pt"
LAST_PT = "last.pt"
METRICS_JSON = "metrics.json"
TRAINING_CURVES = "training_curves.png"
SPLIT_JSON = "split.json"
RUN_FILES = (LAST_PT, MODEL_PT, METRICS_JSON, TRAINING_CURVES, SPLIT_JSON)
MODEL_ONNX = "model.onnx"

# --- embeddings (imagesim encode) ---
EMBEDDINGS = "embeddings.parquet"

# --- index (imagesim index) ---
INDEX_FAISS = "index.faiss"
INDEX_IDS = "ids.parquet"
INDEX_JSON = "index.json"
INDEX_VECTORS = "vectors.f16.npy"  # ivfpq: the float16 vectors its candidates are re-ranked from

# --- change detection (imagesim change) ---
CHANGES = "changes.parquet"
CHANGE_METHODS = ("embedding", "pixel", "both")
# One row per scored pair of acquisitions of a chip (GeoParquet: + geometry, bbox of the chip's footprint).
CHANGE_TYPES: dict[str, str] = {
    "zone": "u8",
    "quadkey": "str",
    "zoom": "u8",
    "cell": "str",
    "before_chip": "str",
    "after_chip": "str",
    "before_catalog_id": "str",
    "after_catalog_id": "str",
    "before_date": "str",  # acquisition date, YYYY-MM-DD
    "after_date": "str",
    # the share of the chip compared: valid in both, clear of cloud and shadow (ARD masks)
    "compared_fraction": "f64",
    "embedding_distance": "f64",  # 1 - cosine similarity; null when not computed
    "pixel_change": "f64",  # the radiometrically normalised pixel statistic; null when not computed
    "changed_area": "f64",  # share of the compared pixels flagged as changed; null when not computed
    "score": "f64",  # the ranking score of the method(s) asked for, in [0, 1]
    "rank": "u32",  # 1 = most changed
}


@functools.cache
def manifest_schema() -> dict[str, pl.DataType]:
    """``MANIFEST_SCHEMA``: the polars dtypes of :data:`MANIFEST_TYPES`."""
    return polars_schema(MANIFEST_TYPES)


@functools.cache
def change_schema() -> dict[str, pl.DataType]:
    """``CHANGE_SCHEMA``: the polars dtypes of :data:`CHANGE_TYPES`."""
    return polars_schema(CHANGE_TYPES)


def __getattr__(name: str) -> Any:
    # the polars schemas are made on first use (a copy each time: a caller may change its own)
    if name == "MANIFEST_SCHEMA":
        return dict(manifest_schema())
    if name == "CHANGE_SCHEMA":
        return dict(change_schema())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# Files imagesim keeps in a chips folder beside the chips: never chips themselves.
CHIP_FOLDER_FILES = {CHIPS_MANIFEST, CHIP_ERRORS, NODATA_PARQUET}


def sidecar(path: AnyPath) -> AnyPath:
    """The JSON written beside a Parquet artefact (``embeddings.parquet`` → ``embeddings.json``)."""
    return path.with_suffix(".json")


def nodata_summary_name(index_name: str) -> str:
    """``nodata-index.json`` → ``nodata-index-summary.json``."""
    return f"{Path(index_name).stem}-summary.json"


# --------------------------------------------------------------------------------------------
# The chip manifest
# --------------------------------------------------------------------------------------------


def nodata_class_expr(nodata: pl.Expr, total: pl.Expr, min_pixels: int) -> pl.Expr:
    """``no_data`` when every pixel is no-data, ``partial_data`` from ``min_pixels`` on, else
    ``all_data``; null when the chip was not measured."""
    return (
        pl.when(nodata.is_null())
        .then(pl.lit(None, pl.String))
        .when(nodata >= total)
        .then(pl.lit("no_data"))
        .when(nodata >= min_pixels)
        .then(pl.lit("partial_data"))
        .otherwise(pl.lit("all_data"))
    )


def nodata_class(nodata: int | None, total: int | None, min_pixels: int) -> str | None:
    """:func:`nodata_class_expr` for one chip (null arithmetic as polars': an unknown total is no test)."""
    if nodata is None:
        return None
    if total is not None and nodata >= total:
        return "no_data"
    return "partial_data" if nodata >= min_pixels else "all_data"


def valid_fraction(nodata: int | None, total: int | None) -> float | None:
    """A chip's ``valid_fraction``, 1 - nodata / total as float64 arithmetic gives it (polars' too: NaN for
    0/0, -inf for n/0); null when either is."""
    if nodata is None or total is None:
        return None
    if total == 0:
        return math.nan if nodata == 0 else -math.inf
    return 1.0 - nodata / total


def _manifest_missing(path: AnyPath, columns: Iterable[str]) -> set[str]:
    """The manifest columns ``path`` lacks: only ones added later (they read as nulls), else an ImagesimError."""
    missing = set(MANIFEST_TYPES) - set(columns)
    if missing - MANIFEST_LATER_COLUMNS:
        raise ImagesimError(f"{path}: not an imagesim chip manifest (missing columns {sorted(missing - MANIFEST_LATER_COLUMNS)})")
    return missing


def read_manifest(dest: AnyPath) -> pl.DataFrame:
    """Every column of ``DEST/chips.parquet`` (empty when there is none yet), older manifests filled
    with nulls for columns they predate."""
    path = dest / CHIPS_MANIFEST
    if not path.is_file():
        return pl.DataFrame(schema=manifest_schema())
    try:
        df = read_parquet(path)
    except Exception as exc:  # polars raises several types for damaged files
        raise ImagesimError(f"{path}: cannot read the chip manifest ({exc}); move it away to start afresh") from exc
    missing = _manifest_missing(path, df.columns)
    df = df.with_columns(pl.lit(None, manifest_schema()[c]).alias(c) for c in missing)
    return df.select(list(manifest_schema())).cast(manifest_schema())  # type: ignore[arg-type]


# The order of chips.parquet's rows: by acquisition (zone, cell, date, catalog id), then quadkey.
MANIFEST_ORDER = ["zone", "cell", "acquisition_date", "catalog_id", "quadkey"]
# Rows of a manifest read at a time by iter_manifest.
MANIFEST_BATCH = 16_384


def iter_manifest(dest: AnyPath, columns: list[str] | None = None, *, batch: int = MANIFEST_BATCH) -> Iterator[pl.DataFrame]:
    """``DEST/chips.parquet`` in slices of at most ``batch`` rows, in file order: the ``columns`` asked
    (default every MANIFEST_SCHEMA column) cast as :func:`read_manifest` casts them, nulls for columns an
    older manifest predates. Nothing when there is no manifest. Read one slice at a time (memory bounded by
    ``batch``); an object in a store is first downloaded, streamed, to a temporary local file."""
    path = dest / CHIPS_MANIFEST
    wanted = list(manifest_schema()) if columns is None else list(columns)
    if not path.is_file():
        return
    with local_copy(path) as local:
        try:
            # polars, not pyarrow: slices of the file are read alone (pyarrow's reader keeps what it read)
            lazy = pl.scan_parquet(local)
            have = set(lazy.collect_schema().names())
            _manifest_missing(path, have)
            read = lazy.select([c for c in wanted if c in have])
            rows = int(lazy.select(pl.len()).collect().item())
            for start in range(0, rows, max(1, batch)):
                df = read.slice(start, batch).collect()
                df = df.with_columns(pl.lit(None, manifest_schema()[c]).alias(c) for c in wanted if c not in have)
                yield df.select(wanted).cast({c: manifest_schema()[c] for c in wanted})
        except ImagesimError:
            raise
        except Exception as exc:  # polars raises several types for damaged files
            raise ImagesimError(f"{path}: cannot read the chip manifest ({exc}); move it away to start afresh") from exc


def iter_manifest_columns(dest: AnyPath, columns: list[str], *, batch: int = MANIFEST_BATCH) -> Iterator[dict[str, list[Any]]]:
    """:func:`iter_manifest` as plain lists, read by the Rust core (no polars): ``columns`` of
    ``DEST/chips.parquet`` in slices of at most ``batch`` rows, Nones for a column an older manifest
    predates. Nothing when there is no manifest."""
    path = dest / CHIPS_MANIFEST
    if not path.is_file():
        return
    with local_copy(path) as local:
        try:
            have = columns_of(local)
            _manifest_missing(path, have)
            for got in iter_columns_or_nulls(local, columns, have=have, batch=batch):
                _check_manifest_values(path, got)
                yield got
        except TableError as exc:  # damaged
            raise ImagesimError(f"{path}: cannot read the chip manifest ({exc}); move it away to start afresh") from exc


# The Python type of a manifest column's values, by dtype name (MANIFEST_TYPES), as the Rust reader gives them.
_VALUE_TYPES: dict[str, type | tuple[type, ...]] = {"str": str, "bool": bool, "f64": (float, int), "binary": bytes}


def _check_manifest_values(path: AnyPath, columns: dict[str, list[Any]]) -> None:
    """An ImagesimError naming ``path`` and the column when a manifest column holds values of another type
    than MANIFEST_TYPES declares (a table rewritten by another tool: zone as text, counts as floats)."""
    for name, values in columns.items():
        kind = MANIFEST_TYPES.get(name)
        if kind is None:
            continue
        value = next((v for v in values if v is not None), None)
        want = _VALUE_TYPES.get(kind, int)  # every other dtype an integer
        if value is not None and (not isinstance(value, want) or (want is int and isinstance(value, bool))):
            raise ImagesimError(
                f"{path}: column {name!r} holds {type(value).__name__} values ({value!r}), not the {DTYPES[kind]} of a chip "
                "manifest; write it with that type, or move it away to start afresh"
            )


def zone_folder(chips_dir: AnyPath) -> int | None:
    """The zone whose chips lie straight in ``chips_dir``, or None (the usual ``<zone>/<chip>`` layout).

    The original notebook chipped into the zone folder itself (``imagesim chip --dest chips/33``:
    ``chips/33/Z33-….jpg`` beside ``chips/33/chips.parquet``). A chips folder whose own name is a zone
    number (1..60, ``33`` or ``08``) and that has no ``<zone>/`` folder of that number (one chipped
    before this layout was kept keeps its ``chips/33/33/``) holds that zone's chips itself; other zones
    chipped there still go in ``<zone>/``."""
    name = chips_dir.name if isinstance(chips_dir, StorePath) else os.path.basename(os.path.abspath(chips_dir))
    if not (1 <= len(name) <= 2 and name.isascii() and name.isdigit() and 1 <= int(name) <= 60):
        return None
    zone = int(name)
    return None if (chips_dir / str(zone)).is_dir() else zone


def chip_folder(chips_dir: AnyPath, zone: int, flat_zone: int | None) -> AnyPath:
    """The folder of zone ``zone``'s chips in ``chips_dir``: ``chips_dir/<zone>``, or ``chips_dir``
    itself for ``flat_zone`` (:func:`zone_folder` of ``chips_dir``, looked up once by the caller)."""
    return chips_dir if zone == flat_zone else chips_dir / str(zone)


def chip_path_expr(chips_dir: AnyPath | None = None) -> pl.Expr:
    """Where a manifest row's chip file is, relative to the chips folder: ``<zone>/<chip>``, or
    ``<chip>`` for the zone whose chips lie in ``chips_dir`` itself (:func:`zone_folder`)."""
    nested = pl.concat_str(pl.col("zone").cast(pl.String), pl.lit("/"), pl.col("chip"))
    flat = None if chips_dir is None else zone_folder(chips_dir)
    if flat is None:
        return nested
    return pl.when(pl.col("zone") == flat).then(pl.col("chip")).otherwise(nested)


def _chip_table_source(chips_dir: AnyPath, log: Callable[[str], None] | None) -> tuple[pl.LazyFrame, list[str]]:
    """The manifest of ``chips_dir`` as a lazy frame and its columns; derived (and saved) from the chip
    names for a folder of the original tool."""
    manifest = chips_dir / CHIPS_MANIFEST
    if manifest.is_file():
        try:
            lazy = pl.scan_parquet(manifest) if isinstance(manifest, Path) else read_parquet(manifest).lazy()
            have = lazy.collect_schema().names()
        except Exception as exc:  # polars raises several types for unreadable files
            raise LabelInputError(f"{manifest}: cannot read the chip manifest ({exc})") from None
    else:
        found = derive_manifest(chips_dir)
        if log is not None:
            log(found.message)
        else:
            warnings.warn(found.message, DerivedManifestWarning, stacklevel=3)
        lazy, have = found.table.lazy(), found.table.columns
    missing = [c for c in CHIP_IDENTITY if c not in have]
    if missing:
        raise LabelInputError(f"{manifest}: not a chip manifest, missing column(s) {', '.join(missing)}")
    return lazy, have


def _chip_table_columns(chips_dir: AnyPath, have: list[str], extra: tuple[str, ...]) -> list[pl.Expr]:
    """read_chip_table's columns: identity, ``path``, then ``extra`` (null where the manifest predates them)."""
    path = pl.coalesce(pl.col(CHIP_PATH), chip_path_expr(chips_dir)) if CHIP_PATH in have else chip_path_expr(chips_dir)
    more = [pl.col(c) if c in have else pl.lit(None, manifest_schema()[c]).alias(c) for c in extra]
    return [*(pl.col(c) for c in CHIP_IDENTITY), path.alias(CHIP_PATH), *more]


def _chip_classes(chips_dir: AnyPath, nodata_index: str | AnyPath | None, have: list[str]) -> pl.DataFrame | None:
    """``chip → nodata_class`` of ``nodata_index`` (or ``DEST/nodata.parquet``; a derived manifest also
    ``DEST/nodata-index.json``), or None when there is none."""
    source = nodata_index
    for default in (NODATA_PARQUET, *((NODATA_INDEX,) if DERIVED in have else ())):
        if source is None and (chips_dir / default).is_file():
            source = chips_dir / default
    return None if source is None else read_nodata_classes(location(source))


def _with_classes(chips: pl.DataFrame, classes: pl.DataFrame | None) -> pl.DataFrame:
    """The no-data index's class of each chip overrides the manifest's."""
    if classes is None:
        return chips
    return (
        chips.join(classes.rename({"nodata_class": "nodata_class_index"}), on="chip", how="left", maintain_order="left")
        .with_columns(pl.coalesce("nodata_class_index", "nodata_class").alias("nodata_class"))
        .drop("nodata_class_index")
    )


def read_chip_table(
    chips_dir: AnyPath,
    nodata_index: str | AnyPath | None = None,
    log: Callable[[str], None] | None = None,
    *,
    extra: tuple[str, ...] = (),
) -> pl.DataFrame:
    """Identity, no-data class and ``path`` (relative to ``chips_dir``) of every chip in the manifest, one
    row per chip (latest wins), in chip order; the class from ``nodata_index`` (or ``DEST/nodata.parquet``
    when present) overrides the manifest's. ``extra``: more MANIFEST_SCHEMA columns (null where the
    manifest predates them). The whole table in memory: a stage that can take it an acquisition at a time
    uses :func:`iter_chip_table`.

    A folder of the original tool (chip JPEGs, no ``chips.parquet``) gets a manifest derived from the chip
    names (:func:`derive_manifest`), saved for later runs; ``log`` (default: a ``DerivedManifestWarning``)
    says so once. A derived manifest also takes its classes from ``DEST/nodata-index.json``."""
    lazy, have = _chip_table_source(chips_dir, log)
    chips = lazy.select(_chip_table_columns(chips_dir, have, extra)).unique(subset=["chip"], keep="last").sort("chip").collect()
    return _with_classes(chips, _chip_classes(chips_dir, nodata_index, have))


# The columns naming an acquisition of a cell; chips.parquet holds each one's rows together (MANIFEST_ORDER).
ACQUISITION_KEY = ["zone", "cell", "catalog_id"]


def _acquisition_runs(path: Path) -> list[tuple[int, int]] | None:
    """``(first row, rows)`` of each acquisition of the manifest ``path``, in file order, read a slice of
    its key columns at a time; None when an acquisition's rows are not all together (a manifest of an
    older imagesim, or one derived from chip names)."""
    key = pl.concat_str([pl.col(c).cast(pl.String).fill_null("") for c in ACQUISITION_KEY], separator="\x1f")
    runs: list[tuple[int, int]] = []
    seen: set[str] = set()
    last: str | None = None
    at = 0
    lazy = pl.scan_parquet(path)
    if not set(ACQUISITION_KEY) <= set(lazy.collect_schema().names()):
        return None
    total = int(lazy.select(pl.len()).collect().item())
    for start in range(0, total, MANIFEST_BATCH):
        batch = lazy.slice(start, MANIFEST_BATCH).select(key.alias("k")).collect()
        for length, value in batch.to_series().rle().struct.unnest().iter_rows():
            if value == last:
                runs[-1] = (runs[-1][0], runs[-1][1] + length)
            elif value in seen:
                return None
            else:
                seen.add(value)
                runs.append((at, length))
                last = value
            at += length
    return runs


def iter_chip_table(
    chips_dir: AnyPath,
    nodata_index: str | AnyPath | None = None,
    log: Callable[[str], None] | None = None,
    *,
    extra: tuple[str, ...] = (),
) -> Iterator[pl.DataFrame]:
    """:func:`read_chip_table` one acquisition of a cell at a time: the same rows and columns, each
    acquisition's chips in chip order, the acquisitions in manifest order (MANIFEST_ORDER: zone, cell,
    date, catalog id). Memory holds one acquisition's rows (and the no-data index's classes, when there
    is one), not the table.

    A manifest whose acquisitions are not each in one run of rows (derived from chip names, or written by
    an older imagesim), or one in an object store, is read whole instead, as :func:`read_chip_table` does."""
    manifest = chips_dir / CHIPS_MANIFEST
    runs = None
    if isinstance(manifest, Path) and manifest.is_file():
        try:
            runs = _acquisition_runs(manifest)
        except Exception as exc:  # polars raises several types for damaged files
            raise LabelInputError(f"{manifest}: cannot read the chip manifest ({exc})") from None
    if runs is None:
        dated = extra if "acquisition_date" in extra else (*extra, "acquisition_date")
        table = read_chip_table(chips_dir, nodata_index, log, extra=dated)
        if table.height:  # acquisitions in manifest order, each in chip order
            grouped = table.with_row_index("_i").sort([*MANIFEST_ORDER[:4], "_i"], nulls_last=True).drop("_i")
            for part in grouped.partition_by(ACQUISITION_KEY, maintain_order=True):
                yield part if dated == extra else part.drop("acquisition_date")
        return
    lazy, have = _chip_table_source(chips_dir, log)
    columns = _chip_table_columns(chips_dir, have, extra)
    classes = _chip_classes(chips_dir, nodata_index, have)
    for start, rows in runs:
        try:
            part = lazy.slice(start, rows).select(columns).collect()
        except Exception as exc:  # polars raises several types for damaged files
            raise LabelInputError(f"{manifest}: cannot read the chip manifest ({exc})") from None
        yield _with_classes(part.unique(subset=["chip"], keep="last").sort("chip"), classes)


def manifest_rows(chips_dir: AnyPath) -> int:
    """Rows of ``DEST/chips.parquet`` from its footer (0 when there is none): a total for progress bars."""
    path = chips_dir / CHIPS_MANIFEST
    if not isinstance(path, Path) or not path.is_file():
        return 0
    try:
        import pyarrow.parquet as pq

        return int(pq.ParquetFile(path).metadata.num_rows)
    except Exception:  # an unreadable manifest is reported by the reader that needs it
        return 0


def with_data(chips: pl.DataFrame) -> pl.DataFrame:
    """The rows of a chip table (:func:`read_chip_table` with ``extra=("written",)``) whose chip has data and a
    file: not classed no_data, not left unwritten (unmeasured chips and manifests without the column count as having both)."""
    return chips.filter((pl.col("nodata_class").fill_null("") != "no_data") & pl.col("written").fill_null(True))


def manifest_is_derived(chips_dir: AnyPath) -> bool:
    """``DEST/chips.parquet`` exists and was derived from chip names (it holds no measured counts)."""
    path = chips_dir / CHIPS_MANIFEST
    if not path.is_file():
        return False
    try:
        return DERIVED in read_parquet(path).columns if not isinstance(path, Path) else DERIVED in columns_of(path)
    except Exception:  # an unreadable manifest is reported by the reader that needs it
        return False


class DerivedManifestWarning(UserWarning):
    """A chips folder without ``chips.parquet`` got one derived from its chip names."""


@dataclass
class DerivedManifest:
    """A chip manifest derived from the chip names of a folder (:func:`derive_manifest`)."""

    table: pl.DataFrame
    folder: AnyPath
    skipped: list[str] = field(default_factory=list)  # files that are not chips, relative to the folder
    duplicates: int = 0  # chip names found more than once (the first path kept)
    classes_from: str | None = None  # the no-data index the classes came from
    saved: bool = False
    not_saved: str = ""  # why it could not be saved

    @property
    def message(self) -> str:
        n = self.table.height
        text = f"derived {CHIPS_MANIFEST} from {n:,} chip name{'s' if n != 1 else ''} in {self.folder} (no manifest from `imagesim chip`)"
        notes = []
        if self.skipped:
            notes.append(f"{len(self.skipped):,} other file(s) skipped, e.g. {self.skipped[0]}")
        if self.duplicates:
            notes.append(f"{self.duplicates:,} chip name(s) found twice, the first kept")
        notes.append(
            f"no-data classes from {self.classes_from}"
            if self.classes_from
            else "no no-data classes yet (chips unmeasured; `imagesim nodata-index` measures them)"
        )
        if not self.saved:
            notes.append(f"not saved ({self.not_saved})")
        return f"{text}; {'; '.join(notes)}"


# Files imagesim itself writes at the top of a chips folder: not chips, not worth a mention.
_OWN_FILES = CHIP_FOLDER_FILES | {
    NODATA_INDEX,
    nodata_summary_name(NODATA_INDEX),
    LABELS_PARQUET,
    LABELS_CSV,
    LABELS_JSON,
    LABELS_TRAIN_CSV,
    LABELS_VAL_CSV,
    EMBEDDINGS,
    "embeddings.json",
    CHANGES,
    "changes.json",
}


def _folder_files(folder: AnyPath) -> list[str]:
    """Every file under ``folder`` (recursively, hidden files and folders left out), relative, sorted."""
    if isinstance(folder, StorePath):
        rels = (path.relative_to(folder) for path, _, _ in folder.files())
        return sorted(r for r in rels if not any(part.startswith(".") for part in r.split("/")))
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel = Path(dirpath).relative_to(folder)
        found.extend((rel / name).as_posix() for name in filenames if not name.startswith("."))
    return sorted(found)


def derive_manifest(chips_dir: str | AnyPath, *, save: bool = True) -> DerivedManifest:
    """A chip manifest from the chip JPEGs under ``chips_dir`` (a folder or a store prefix), for folders
    of the original tool, which wrote no ``chips.parquet``.

    Chips are found recursively (``DEST/<zone>/*.jpg`` and a flat zone folder alike); a file whose name
    is not a chip name is skipped and counted, never an error. Identity columns come from the names,
    ``nodata_class`` from ``nodata.parquet`` or ``nodata-index.json`` when present; the rest of
    ``MANIFEST_SCHEMA`` is null, ``path`` is each chip's file and ``derived`` is true. With ``save``
    (and no ``chips.parquet`` there yet) the manifest is written atomically as ``DEST/chips.parquet``;
    a folder that cannot be written keeps it in memory (``not_saved`` says why)."""
    folder = location(chips_dir)
    manifest = folder / CHIPS_MANIFEST
    if not folder.is_dir():
        raise ImagesimFileNotFoundError(f"{folder}: chips folder not found (no {CHIPS_MANIFEST}, no chip JPEGs)")
    result = DerivedManifest(table=pl.DataFrame(), folder=folder)
    found: list[tuple[tuple[bool, int, str], str, grid.ChipName]] = []
    for rel in _folder_files(folder):
        if rel in _OWN_FILES or rel.startswith(f"{LABELS_REPORT}/"):
            continue
        name = rel.rsplit("/", 1)[-1]
        try:
            chip = grid.parse_chip_name(name)
        except (ImagesimError, ValueError):
            result.skipped.append(rel)
            continue
        # Of a name found twice, DEST/<zone>/<chip> (or the shallowest copy) is kept.
        found.append(((rel != f"{chip.zone}/{name}", rel.count("/"), rel), rel, chip))
    names: list[str] = []
    paths: list[str] = []
    parsed: list[grid.ChipName] = []
    seen: set[str] = set()
    for _, rel, chip in sorted(found, key=lambda f: f[0]):
        name = rel.rsplit("/", 1)[-1]
        if name in seen:
            result.duplicates += 1
            continue
        seen.add(name)
        names.append(name)
        paths.append(rel)
        parsed.append(chip)
    result.skipped.sort()
    if not names:
        odd = f"; {len(result.skipped):,} other file(s), e.g. {result.skipped[0]}" if result.skipped else ""
        raise ImagesimFileNotFoundError(
            f"{manifest}: no chip manifest and no chip JPEGs (Z<zone>-<quadkey>_<catalog-id>.jpg) under {folder}{odd}; "
            f"run `imagesim chip --dest {folder}` first"
        )
    table = pl.DataFrame(
        {
            "chip": names,
            "zone": pl.Series([c.zone for c in parsed], dtype=pl.UInt8),
            "quadkey": [c.quadkey for c in parsed],
            "zoom": pl.Series([len(c.quadkey) for c in parsed], dtype=pl.UInt8),
            "cell": [c.cell for c in parsed],
            "catalog_id": [c.catalog_id for c in parsed],
        },
        schema_overrides={"chip": pl.String, "quadkey": pl.String, "cell": pl.String, "catalog_id": pl.String},
    )
    for default in (NODATA_PARQUET, NODATA_INDEX):
        if (folder / default).is_file():
            try:
                classes = read_nodata_classes(folder / default)
            except ImagesimError:
                continue  # an unreadable index: unmeasured here; a stage reading it reports why
            table = table.join(classes, on="chip", how="left")
            result.classes_from = default
            break
    table = table.with_columns(
        pl.lit(None, manifest_schema()[c]).alias(c) for c in manifest_schema() if c not in table.columns and c != "written"
    ).with_columns(pl.lit(True).alias("written"))
    result.table = (
        table.select(list(manifest_schema()))
        .cast(manifest_schema())  # type: ignore[arg-type]
        .with_columns(pl.Series(CHIP_PATH, paths, dtype=pl.String), pl.lit(True).alias(DERIVED))
        .sort("chip")
    )
    if not save:
        result.not_saved = "`save` is off"
        return result
    if manifest.is_file():  # another run derived it meanwhile, or `imagesim chip` wrote one: keep that
        result.not_saved = f"{manifest} appeared meanwhile, kept"
        return result
    try:
        write_with(manifest, lambda tmp: write_geoparquet_file(result.table, tmp))
        result.saved = True
    except (OSError, ImagesimError) as exc:
        result.not_saved = f"cannot write {manifest}: {exc}; derived again on each run"
    return result


def recorded_by_chip(manifest: pl.DataFrame) -> pl.DataFrame:
    """The rows of a manifest that `imagesim chip` measured (a row derived from a chip name has no
    ``source_cog``): chips it may skip as already done."""
    return manifest.filter(pl.col("source_cog").is_not_null())


def manifest_chip_names(chips_dir: AnyPath) -> set[str] | None:
    """The chip names ``DEST/chips.parquet`` records, or None when the folder has no manifest."""
    path = chips_dir / CHIPS_MANIFEST
    if not path.is_file():
        return None
    try:
        return set(read_parquet(path, columns=["chip"])["chip"].to_list())
    except Exception as exc:  # polars raises several types for unreadable files
        raise LabelInputError(f"{path}: cannot read the chip manifest ({exc})") from None


# --------------------------------------------------------------------------------------------
# The no-data index
# --------------------------------------------------------------------------------------------


def read_nodata_classes(path: AnyPath) -> pl.DataFrame:
    """``chip → nodata_class`` from a ``nodata.parquet`` or an original-format ``nodata-index.json``."""
    if not path.is_file():
        raise ImagesimFileNotFoundError(f"{path}: no-data index not found")
    try:
        if path.suffix == ".json":
            doc = json.loads(path.read_text())
            if not isinstance(doc, dict):
                raise ValueError("not a JSON object")
            rows = [(Path(name).name, cls) for cls, names in doc.items() if isinstance(names, list) for name in names]
            return pl.DataFrame(rows, schema={"chip": pl.String, "nodata_class": pl.String}, orient="row")
        frame = read_parquet(path, columns=["chip", "nodata_class"])
    except (OSError, ValueError, pl.exceptions.PolarsError) as exc:
        raise LabelInputError(f"{path}: cannot read the no-data index ({exc})") from None
    return frame.unique(subset=["chip"], keep="last")


# --------------------------------------------------------------------------------------------
# Labels
# --------------------------------------------------------------------------------------------


def bitset_matrix(table: pl.DataFrame, n_classes: int) -> np.ndarray:
    """The ``bitset`` column of a labels table as a (chips, words) uint64 matrix."""
    import numpy as np

    words = _imagesim.label_words(n_classes)
    if table.height == 0:
        return np.zeros((0, words), np.uint64)
    return np.ascontiguousarray(table["bitset"].to_numpy().reshape(table.height, words), dtype=np.uint64)


@dataclass
class Labels:
    """``labels.parquet`` and its ``labels.json``: one row per chip, the class names, the build's summary."""

    table: pl.DataFrame
    classes: list[str]
    meta: dict[str, Any]
    path: Path

    @property
    def bits(self) -> np.ndarray:
        return bitset_matrix(self.table, len(self.classes))

    def dense(self) -> np.ndarray:
        return _imagesim.dense_labels(self.bits, len(self.classes))


def read_labels(path: str | Path, columns: list[str] | None = None) -> Labels:
    """``labels.parquet`` with its ``labels.json`` sidecar (or a folder holding both); ``columns``: only
    those of the table (default: all, footprints too)."""
    path = Path(path)
    if path.is_dir():
        path = path / LABELS_PARQUET
    meta_path = path.with_name(LABELS_JSON)
    for p in (path, meta_path):
        if not p.is_file():
            raise ImagesimFileNotFoundError(f"{p}: not found; run `imagesim labels build` first")
    try:
        meta = json.loads(meta_path.read_text())
        have = pl.read_parquet_schema(path)
        table = pl.read_parquet(path, columns=[c for c in columns if c in have] if columns is not None else None)
        classes = list(meta["classes"])
    except (OSError, ValueError, KeyError, TypeError, pl.exceptions.PolarsError) as exc:
        raise LabelInputError(f"{path}: cannot read labels ({exc})") from None
    for col in ("chip", "cell", "label_ids", "bitset"):
        if col not in have:
            raise LabelInputError(f"{path}: not a labels file, missing column {col!r}")
    return Labels(table, classes, meta, path)


# --------------------------------------------------------------------------------------------
# Embeddings
# --------------------------------------------------------------------------------------------


def _unit_vectors(vectors: np.ndarray, names: pl.Series, source: Path) -> np.ndarray:
    import numpy as np

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1)
    bad = ~np.isfinite(norms) | (norms < 1e-12)
    if bad.any():
        first = names[int(np.flatnonzero(bad)[0])]
        raise InvalidArgumentError(f"{source}: {int(bad.sum())} embeddings are zero or not finite (first: {first})")
    if not vectors.flags.writeable:
        vectors = vectors.copy()
    vectors /= norms[:, None]
    return vectors


def _chip_columns(table: pl.DataFrame) -> pl.DataFrame:
    """Fill zone/quadkey/cell/catalog_id/path/predicted from the chip name where they are missing."""
    parsed = [grid.parse_chip_name(c) for c in table["chip"]] if not {"zone", "quadkey", "catalog_id"} <= set(table.columns) else None
    if parsed is not None:
        table = table.with_columns(
            pl.Series("zone", [p.zone for p in parsed], dtype=pl.UInt8),
            pl.Series("quadkey", [p.quadkey for p in parsed], dtype=pl.String),
            pl.Series("catalog_id", [p.catalog_id for p in parsed], dtype=pl.String),
        )
    if "cell" not in table.columns:
        table = table.with_columns(pl.col("quadkey").str.slice(0, grid.CELL_ZOOM).alias("cell"))
    if "path" not in table.columns:
        table = table.with_columns(pl.format("{}/{}", pl.col("zone"), pl.col("chip")).alias("path"))
    if "predicted" not in table.columns:
        table = table.with_columns(pl.lit([], dtype=pl.List(pl.String)).alias("predicted"))
    return table


def _read_sidecar(meta_path: AnyPath) -> dict[str, Any]:
    """The JSON beside an embeddings file (``embeddings.json``); empty when there is none."""
    if not meta_path.is_file():
        return {}
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as exc:
        raise InvalidArgumentError(f"{meta_path}: cannot read ({exc})") from None
    if not isinstance(meta, dict):
        raise InvalidArgumentError(f"{meta_path}: not a JSON object")
    return meta


def _check_unique_chips(table: pl.DataFrame, path: Path) -> None:
    dupes = table["chip"].is_duplicated()
    if dupes.any():
        raise InvalidArgumentError(f"{path}: chip {table['chip'].filter(dupes)[0]} appears more than once")


def read_embeddings(path: str | Path) -> tuple[pl.DataFrame, np.ndarray, dict[str, Any]]:
    """``embeddings.parquet`` (+ ``embeddings.json`` beside it if present) → (rows, unit vectors, meta)."""
    path = Path(path)
    if not path.is_file():
        raise ImagesimFileNotFoundError(f"{path}: embeddings not found; run `imagesim encode` first")
    try:
        table = pl.read_parquet(path)
    except (OSError, pl.exceptions.PolarsError) as exc:
        raise InvalidArgumentError(f"{path}: cannot read embeddings ({exc})") from None
    for col in ("chip", "embedding"):
        if col not in table.columns:
            raise InvalidArgumentError(f"{path}: not an embeddings file, missing column {col!r}")
    if table.height == 0:
        raise InvalidArgumentError(f"{path}: holds no embedding, nothing to index: run `imagesim encode` on chips that have data first")
    _check_unique_chips(table, path)
    emb = table["embedding"]
    if isinstance(emb.dtype, pl.List):
        lengths = emb.list.len().unique()
        if lengths.len() != 1:
            raise InvalidArgumentError(f"{path}: embeddings of different lengths {sorted(lengths.to_list())}")
        emb = emb.list.to_array(int(lengths[0]))
    if not isinstance(emb.dtype, pl.Array) or emb.null_count():
        raise InvalidArgumentError(f"{path}: column 'embedding' must hold fixed-length float vectors, got {emb.dtype}")
    vectors = _unit_vectors(emb.to_numpy(), table["chip"], path)

    meta_path = sidecar(path)
    meta = _read_sidecar(meta_path)
    if "model_id" not in meta and "model_id" in table.columns:
        models = table["model_id"].unique().to_list()
        if len(models) > 1:
            raise InvalidArgumentError(f"{path}: embeddings of several models {models}; index one model at a time")
        meta["model_id"] = models[0]
    try:
        rows = _chip_columns(table.drop("embedding"))
    except Exception as exc:  # a chip name the grid rejects
        raise InvalidArgumentError(f"{path}: {exc}") from None
    return rows, vectors, meta


def _read_without(path: Path, leave_out: tuple[str, ...], what: str) -> tuple[pl.DataFrame, list[str]]:
    """Every column of the Parquet file ``path`` but ``leave_out`` (never read), and all its column names."""
    try:
        lazy = pl.scan_parquet(path)
        have = lazy.collect_schema().names()
        return lazy.select([c for c in have if c not in leave_out]).collect(), have
    except (OSError, pl.exceptions.PolarsError) as exc:
        raise InvalidArgumentError(f"{path}: cannot read {what} ({exc})") from None


def _scan_embeddings(path: Path) -> tuple[pl.LazyFrame, pl.Schema, int]:
    """``embeddings.parquet`` opened lazily, its schema and vector length (0 for a file of no rows), after
    the checks every reader makes: the file exists, has ``chip`` and ``embedding``, and its vectors have one
    fixed length."""
    if not path.is_file():
        raise ImagesimFileNotFoundError(f"{path}: embeddings not found; run `imagesim encode` first")
    try:
        lazy = pl.scan_parquet(path)
        have = lazy.collect_schema()
        missing = [c for c in ("chip", "embedding") if c not in have]
        if missing:
            raise InvalidArgumentError(f"{path}: not an embeddings file, missing column(s) {missing}")
        dtype = have["embedding"]
        if isinstance(dtype, pl.Array):
            return lazy, have, int(dtype.size)
        if not isinstance(dtype, pl.List):
            raise InvalidArgumentError(f"{path}: column 'embedding' must hold fixed-length float vectors, got {dtype}")
        lengths = lazy.select(pl.col("embedding").list.len().unique()).collect(engine="streaming").to_series().drop_nulls()
    except (OSError, pl.exceptions.PolarsError) as exc:  # InvalidArgumentError is neither: it passes
        raise InvalidArgumentError(f"{path}: cannot read embeddings ({exc})") from None
    if lengths.len() > 1:
        raise InvalidArgumentError(f"{path}: embeddings of different lengths {sorted(lengths.to_list())}")
    return lazy, have, int(lengths[0]) if lengths.len() else 0


def read_embedding_vectors(path: str | Path, *, batch: int = 131_072) -> tuple[pl.Series, np.ndarray]:
    """Only the chip names and unit embeddings of ``embeddings.parquet`` (no other column, no chip-name
    parsing), read in slices into one float32 array: what a pass over millions of embeddings needs
    (peak memory about the vectors themselves, not twice them)."""
    import numpy as np

    path = Path(path)
    lazy, _, dim = _scan_embeddings(path)
    try:
        chips = lazy.select("chip").collect()["chip"]
        if chips.len() == 0:
            raise InvalidArgumentError(f"{path}: holds no embedding: run `imagesim encode` on chips that have data first")
        _check_unique_chips(chips.to_frame(), path)
        vectors = np.empty((chips.len(), dim), np.float32)
        for start in range(0, chips.len(), batch):
            emb = lazy.select("embedding").slice(start, batch).collect()["embedding"]
            if isinstance(emb.dtype, pl.List):
                emb = emb.list.to_array(dim)
            if emb.null_count():
                raise InvalidArgumentError(
                    f"{path}: column 'embedding' has missing vectors (row {start + int(emb.is_null().arg_max() or 0)})"
                )
            vectors[start : start + emb.len()] = emb.to_numpy()
    except (OSError, pl.exceptions.PolarsError) as exc:
        raise InvalidArgumentError(f"{path}: cannot read embeddings ({exc})") from None
    return chips, _unit_vectors(vectors, chips, path)


# Rows per slice of iter_embedding_batches: 65,536 × 512 float32 = 128 MiB of vectors (+ the id columns).
EMBEDDING_BATCH = 65_536
# Columns of embeddings.parquet an index never needs per row (the footprint, the class probabilities).
_NOT_ID_COLUMNS = ("geometry", "bbox", "probabilities")


@dataclass(frozen=True)
class EmbeddingsInfo:
    """What :func:`inspect_embeddings` learns of an embeddings file without reading its vectors."""

    path: Path
    n: int
    dim: int
    columns: list[str]
    meta: dict[str, Any]  # embeddings.json beside it, with the rows' model_id when the JSON has none


def inspect_embeddings(path: str | Path) -> EmbeddingsInfo:
    """Size, vector length and meta of ``embeddings.parquet`` without holding its vectors or chip names.

    Refuses what :func:`read_embeddings` refuses that can be told without the vectors: a missing
    file or column, no rows, vectors of several lengths, several models, a chip listed twice (found
    by 64-bit hashes of the names, streamed, so ten million names are never held as strings).
    """
    path = Path(path)
    lazy, have, dim = _scan_embeddings(path)
    try:
        n = int(lazy.select(pl.len()).collect().item())
        if n == 0:
            raise InvalidArgumentError(f"{path}: holds no embedding, nothing to index: run `imagesim encode` on chips that have data first")
        hashes = lazy.select(pl.col("chip").hash(0)).collect(engine="streaming").to_series()
        twice = hashes.filter(hashes.is_duplicated()).unique()
        if twice.len():  # the same hash: look at those names (a 64-bit collision is not a duplicate)
            named = lazy.filter(pl.col("chip").hash(0).is_in(twice.implode())).select("chip").collect()
            _check_unique_chips(named, path)
        meta = _read_sidecar(sidecar(path))
        if "model_id" not in meta and "model_id" in have:
            models = lazy.select(pl.col("model_id").unique()).collect(engine="streaming").to_series().to_list()
            if len(models) > 1:
                raise InvalidArgumentError(f"{path}: embeddings of several models {models}; index one model at a time")
            meta["model_id"] = models[0]
    except (OSError, pl.exceptions.PolarsError) as exc:
        raise InvalidArgumentError(f"{path}: cannot read embeddings ({exc})") from None
    return EmbeddingsInfo(path, n, dim, list(have.names()), meta)


def iter_embedding_batches(
    path: str | Path, *, batch: int = EMBEDDING_BATCH, ids: bool = True, info: EmbeddingsInfo | None = None
) -> Iterator[tuple[int, pl.DataFrame, np.ndarray]]:
    """``embeddings.parquet`` in slices of at most ``batch`` rows, in file order: (first row, rows,
    unit vectors float32).

    Only one slice is held at a time (Parquet row groups outside it are skipped), so memory is
    bounded by ``batch`` whatever the file's size. ``rows`` holds the id columns as in
    :func:`read_embeddings` (zone, quadkey, cell, catalog_id, path and predicted filled from the chip
    name where missing; no geometry or probabilities), or only ``chip`` when ``ids`` is false. Checks
    per slice what :func:`read_embeddings` checks of the whole (missing, zero or non-finite vectors);
    ``info`` (from :func:`inspect_embeddings`) saves inspecting the file again.
    """
    path = Path(path)
    info = info or inspect_embeddings(path)
    if batch < 1:
        raise InvalidArgumentError(f"`batch` {batch}: must be at least 1")
    keep = [c for c in info.columns if c != "embedding" and c not in _NOT_ID_COLUMNS] if ids else ["chip"]
    lazy = pl.scan_parquet(path)
    for start in range(0, info.n, batch):
        try:
            table = lazy.select([*keep, "embedding"]).slice(start, batch).collect()
        except (OSError, pl.exceptions.PolarsError) as exc:
            raise InvalidArgumentError(f"{path}: cannot read embeddings at row {start} ({exc})") from None
        emb = table["embedding"]
        if isinstance(emb.dtype, pl.List):
            if emb.list.len().n_unique() > 1 or emb.list.len().max() != info.dim:
                raise InvalidArgumentError(f"{path}: embeddings of different lengths near row {start}")
            emb = emb.list.to_array(info.dim)
        if emb.null_count():
            raise InvalidArgumentError(f"{path}: column 'embedding' has missing vectors (row {start + int(emb.is_null().arg_max() or 0)})")
        vectors = _unit_vectors(emb.to_numpy(), table["chip"], path)
        rows = table.drop("embedding")
        if ids:
            try:
                rows = _chip_columns(rows)
            except Exception as exc:  # a chip name the grid rejects
                raise InvalidArgumentError(f"{path}: {exc}") from None
        yield start, rows, vectors


def read_changes(path: str | Path) -> tuple[pl.DataFrame, dict[str, Any]]:
    """``changes.parquet`` (without its geometry columns), sorted by rank, and ``changes.json`` beside it."""
    path = Path(path)
    if not path.is_file():
        raise ImagesimFileNotFoundError(f"{path}: changes not found; run `imagesim change` first")
    table, _ = _read_without(path, GEO_COLUMNS, "changes")
    missing = [c for c in change_schema() if c not in table.columns]
    if missing:
        raise InvalidArgumentError(f"{path}: not a changes file of `imagesim change`, missing column(s) {missing}")
    try:
        table = table.cast(change_schema()).sort("rank")  # type: ignore[arg-type]
    except pl.exceptions.PolarsError as exc:
        raise InvalidArgumentError(f"{path}: columns of the wrong type ({exc})") from None
    return table, _read_sidecar(sidecar(path))


def read_class_probabilities(path: str | Path) -> tuple[pl.DataFrame, list[str], dict[str, Any]]:
    """``embeddings.parquet``'s chips with their class ``probabilities`` (a fixed-size float32 array) and
    ``predicted`` classes, without the embeddings, and the class names of ``embeddings.json`` beside it
    → (rows, classes, meta)."""
    path = Path(path)
    if not path.is_file():
        raise ImagesimFileNotFoundError(f"{path}: embeddings not found; run `imagesim encode` first")
    table, have = _read_without(path, ("embedding",), "embeddings")
    if "chip" not in have:
        raise InvalidArgumentError(f"{path}: not an embeddings file, missing column 'chip'")
    if "probabilities" not in have:
        raise InvalidArgumentError(
            f"{path}: holds no class probabilities (no column 'probabilities'); encode with a model that has class outputs"
        )
    meta_path = sidecar(path)
    meta = _read_sidecar(meta_path)
    classes = meta.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise InvalidArgumentError(f"{meta_path}: no class names (key 'classes') for the probabilities of {path}")
    if table.height == 0:
        raise InvalidArgumentError(f"{path}: holds no chip: run `imagesim encode` on chips that have data first")
    _check_unique_chips(table, path)
    prob = table["probabilities"]
    if isinstance(prob.dtype, pl.List):
        lengths = prob.list.len().unique()
        prob = prob.list.to_array(int(lengths[0])) if lengths.len() == 1 else prob
    if not isinstance(prob.dtype, pl.Array) or prob.dtype.size != len(classes) or prob.null_count():
        raise InvalidArgumentError(
            f"{path}: column 'probabilities' must hold {len(classes)} floats per chip (one per class of {meta_path.name}), got {prob.dtype}"
        )
    table = table.with_columns(prob.cast(pl.Array(pl.Float32, len(classes))))
    try:
        rows = _chip_columns(table)
    except Exception as exc:  # a chip name the grid rejects
        raise InvalidArgumentError(f"{path}: {exc}") from None
    return rows, list(classes), meta


# --------------------------------------------------------------------------------------------
# Embeddings read a window at a time (change)
# --------------------------------------------------------------------------------------------


class EmbeddingRows:
    """The chips of an ``embeddings.parquet`` and their unit vectors read by row, a window of rows at a time:
    for a pass that needs some vectors at a time (`imagesim change`), memory holds those and one window, not
    the file (:func:`read_embedding_vectors` reads them all).

    Opening reads the chip names only and checks what :func:`read_embedding_vectors` checks of the file
    (columns, fixed-length vectors, one row per chip, not empty); :meth:`take` checks the vectors it reads
    (present, finite, not zero)."""

    WINDOW = 4_096  # rows read at a time

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        lazy, _, self.dim = _scan_embeddings(self.path)
        self._lazy = lazy
        try:
            self.chips: pl.Series = lazy.select(pl.col("chip").cast(pl.String)).collect()["chip"]
        except (OSError, pl.exceptions.PolarsError) as exc:
            raise InvalidArgumentError(f"{self.path}: cannot read embeddings ({exc})") from None
        if self.chips.len() == 0:
            raise InvalidArgumentError(f"{self.path}: holds no embedding: run `imagesim encode` on chips that have data first")
        _check_unique_chips(self.chips.to_frame(), self.path)
        self._held: tuple[int, np.ndarray] | None = None  # the last window read: (index, vectors)

    def __len__(self) -> int:
        return self.chips.len()

    def _window(self, w: int) -> np.ndarray:
        import numpy as np

        if self._held is None or self._held[0] != w:
            self._held = None  # let the last window go before reading the next
            try:
                emb = self._lazy.select("embedding").slice(w * self.WINDOW, self.WINDOW).collect()["embedding"]
            except (OSError, pl.exceptions.PolarsError) as exc:
                raise InvalidArgumentError(f"{self.path}: cannot read embeddings ({exc})") from None
            if isinstance(emb.dtype, pl.List):
                emb = emb.list.to_array(self.dim)
            if emb.null_count():
                raise InvalidArgumentError(
                    f"{self.path}: column 'embedding' has missing vectors (row {w * self.WINDOW + int(emb.is_null().arg_max() or 0)})"
                )
            self._held = (w, np.asarray(emb.to_numpy(), np.float32).reshape(emb.len(), self.dim))
        return self._held[1]

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Unit vectors of ``rows`` (row numbers of the file), float32 ``(len(rows), dim)``: read a window of
        ``WINDOW`` rows at a time (the last one kept), so rows close together cost one read."""
        import numpy as np

        rows = np.asarray(rows, np.int64)
        out = np.empty((len(rows), self.dim), np.float32)
        windows = rows // self.WINDOW
        for w in np.unique(windows):
            sel = np.flatnonzero(windows == w)
            out[sel] = self._window(int(w))[rows[sel] - w * self.WINDOW]
        return _unit_vectors(out, self.chips.gather(rows), self.path)
