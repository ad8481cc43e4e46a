"""Every artefact imagesim writes: its file name, its columns and its reader, in one place.

Stages write these files and later stages read them; both sides use the names and readers here, so a
file name or a column is declared once. A stage that needs another stage's output reads it through
this module, never through that stage's code (``docs/architecture.md``).

| artefact | written by | where |
|---|---|---|
| ``chips.parquet``, ``chip-errors.json`` | ``imagesim chip`` | the chips folder (DEST) |
| ``nodata-index.json``, ``nodata.parquet``, ``<index>-summary.json`` | ``imagesim nodata-index`` | DEST |
| ``osm_data.json`` per cell, ``osm_tags.parquet`` | ``imagesim osm`` | the ARD delivery |
| ``labels.parquet``, ``labels.csv``, ``labels.json``, ``labels-train/val.csv``, ``labels-report/`` | ``imagesim labels`` | DEST |
| ``model.pt``, ``last.pt``, ``metrics.json``, ``training_curves.png``, ``split.json`` | ``imagesim train`` | the run folder |
| ``model.onnx`` | ``imagesim export`` | anywhere |
| ``embeddings.parquet``, ``embeddings.json`` | ``imagesim encode`` | DEST |
| ``index.faiss``, ``ids.parquet``, ``index.json`` | ``imagesim index`` | the index folder |
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from imagesim import _imagesim, grid
from imagesim.errors import ImagesimError, ImagesimFileNotFoundError, InvalidArgumentError, LabelInputError
from imagesim.storage import AnyPath, location, read_parquet

# --- chips (imagesim chip) ---
CHIPS_MANIFEST = "chips.parquet"
CHIP_ERRORS = "chip-errors.json"

MANIFEST_SCHEMA: dict[str, pl.DataType] = {
    "chip": pl.String(),
    "zone": pl.UInt8(),
    "quadkey": pl.String(),
    "zoom": pl.UInt8(),
    "cell": pl.String(),
    "catalog_id": pl.String(),
    "acquisition_date": pl.String(),
    "source_cog": pl.String(),
    "source_size": pl.UInt64(),
    "source_mtime_ns": pl.Int64(),
    "col_off": pl.UInt32(),
    "row_off": pl.UInt32(),
    "width": pl.UInt32(),
    "height": pl.UInt32(),
    "nodata_pixels": pl.UInt64(),
    "nodata_threshold": pl.UInt8(),
    "valid_fraction": pl.Float64(),
    "nodata_class": pl.String(),
    "written": pl.Boolean(),
    "encoding": pl.String(),
    "bytes": pl.UInt64(),
}
# Columns added after the first manifests were written; older manifests get them as nulls.
MANIFEST_LATER_COLUMNS = {"source_size", "source_mtime_ns", "nodata_threshold"}
# What every later stage needs of a chip: its identity and no-data class.
CHIP_IDENTITY = ["chip", "zone", "quadkey", "zoom", "cell", "catalog_id", "nodata_class"]

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


def read_manifest(dest: AnyPath) -> pl.DataFrame:
    """Every column of ``DEST/chips.parquet`` (empty when there is none yet), older manifests filled
    with nulls for columns they predate."""
    path = dest / CHIPS_MANIFEST
    if not path.is_file():
        return pl.DataFrame(schema=MANIFEST_SCHEMA)
    try:
        df = read_parquet(path)
    except Exception as exc:  # polars raises several types for damaged files
        raise ImagesimError(f"{path}: cannot read the chip manifest ({exc}); move it away to start afresh") from exc
    missing = set(MANIFEST_SCHEMA) - set(df.columns)
    if missing - MANIFEST_LATER_COLUMNS:
        raise ImagesimError(f"{path}: not an imagesim chip manifest (missing columns {sorted(missing - MANIFEST_LATER_COLUMNS)})")
    df = df.with_columns(pl.lit(None, MANIFEST_SCHEMA[c]).alias(c) for c in missing)
    return df.select(list(MANIFEST_SCHEMA)).cast(MANIFEST_SCHEMA)  # type: ignore[arg-type]


def read_chip_table(chips_dir: AnyPath, nodata_index: str | AnyPath | None = None) -> pl.DataFrame:
    """Identity and no-data class of every chip in the manifest, one row per chip (latest wins); the
    class from ``nodata_index`` (or ``DEST/nodata.parquet`` when present) overrides the manifest's."""
    manifest = chips_dir / CHIPS_MANIFEST
    if not manifest.is_file():
        raise ImagesimFileNotFoundError(f"{manifest}: no chip manifest; run `imagesim chip --dest {chips_dir}` first")
    try:
        lazy = pl.scan_parquet(manifest) if isinstance(manifest, Path) else read_parquet(manifest).lazy()
        have = lazy.collect_schema().names()
    except Exception as exc:  # polars raises several types for unreadable files
        raise LabelInputError(f"{manifest}: cannot read the chip manifest ({exc})") from None
    missing = [c for c in CHIP_IDENTITY if c not in have]
    if missing:
        raise LabelInputError(f"{manifest}: not a chip manifest, missing column(s) {', '.join(missing)}")
    chips = lazy.select(CHIP_IDENTITY).unique(subset=["chip"], keep="last").sort("chip").collect()

    default = chips_dir / NODATA_PARQUET
    source = nodata_index or (default if default.is_file() else None)
    if source is not None:
        classes = read_nodata_classes(location(source))
        chips = (
            chips.join(classes.rename({"nodata_class": "nodata_class_index"}), on="chip", how="left")
            .with_columns(pl.coalesce("nodata_class_index", "nodata_class").alias("nodata_class"))
            .drop("nodata_class_index")
        )
    return chips


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


def read_labels(path: str | Path) -> Labels:
    """``labels.parquet`` with its ``labels.json`` sidecar (or a folder holding both)."""
    path = Path(path)
    if path.is_dir():
        path = path / LABELS_PARQUET
    meta_path = path.with_name(LABELS_JSON)
    for p in (path, meta_path):
        if not p.is_file():
            raise ImagesimFileNotFoundError(f"{p}: not found; run `imagesim labels build` first")
    try:
        meta = json.loads(meta_path.read_text())
        table = pl.read_parquet(path)
        classes = list(meta["classes"])
    except (OSError, ValueError, KeyError, TypeError, pl.exceptions.PolarsError) as exc:
        raise LabelInputError(f"{path}: cannot read labels ({exc})") from None
    for col in ("chip", "cell", "label_ids", "bitset"):
        if col not in table.columns:
            raise LabelInputError(f"{path}: not a labels file, missing column {col!r}")
    return Labels(table, classes, meta, path)


# --------------------------------------------------------------------------------------------
# Embeddings
# --------------------------------------------------------------------------------------------


def _unit_vectors(vectors: np.ndarray, names: pl.Series, source: Path) -> np.ndarray:
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
        raise InvalidArgumentError(f"{path}: no embeddings")
    dupes = table["chip"].is_duplicated()
    if dupes.any():
        raise InvalidArgumentError(f"{path}: chip {table['chip'].filter(dupes)[0]} appears more than once")
    emb = table["embedding"]
    if isinstance(emb.dtype, pl.List):
        lengths = emb.list.len().unique()
        if lengths.len() != 1:
            raise InvalidArgumentError(f"{path}: embeddings of different lengths {sorted(lengths.to_list())}")
        emb = emb.list.to_array(int(lengths[0]))
    if not isinstance(emb.dtype, pl.Array) or emb.null_count():
        raise InvalidArgumentError(f"{path}: column 'embedding' must hold fixed-length float vectors, got {emb.dtype}")
    vectors = _unit_vectors(emb.to_numpy(), table["chip"], path)

    meta: dict[str, Any] = {}
    meta_path = sidecar(path)
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as exc:
            raise InvalidArgumentError(f"{meta_path}: cannot read ({exc})") from None
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
