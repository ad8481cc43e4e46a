"""`imagesim labels build`: multilabel training targets for every chip from per-cell OSM data.

Reads the chip manifest (``chips.parquet``, no image reads), the no-data classes, and each cell's
``osm_data.json``; builds the taxonomy's geometries per cell, joins them against the cell's chip
grid (:mod:`imagesim.labels.join`) and writes three encodings of the same labels:

- ``labels.parquet``: one row per chip, ``label_ids`` (sparse, ascending class ids) and ``bitset``
  (fixed-width u64 words, packed in Rust), plus chip identity columns and ``split``;
- ``labels.csv``: the dense ``Feature,<class1>,…`` 0/1 table the original training notebook read;
- ``labels.json``: class names, the taxonomy used, counts, and what was left out and why.

Cells are processed one at a time, so memory holds one cell's features, never a zone's; a cell's chips
are labelled an acquisition (and at most ``LABEL_SLICE`` chips) at a time and their rows streamed to ``labels.parquet``
(row groups) and ``labels.csv`` (appended), both published atomically at the end: memory does not grow
with the number of chips: the chip table is read an acquisition at a time (:func:`~imagesim.artefacts.iter_chip_table`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import polars as pl
import shapely
import shapely.errors

from imagesim import _imagesim, grid, options
from imagesim.artefacts import (
    CLOUD_FRACTION,
    LABELS_CSV,
    LABELS_JSON,
    LABELS_PARQUET,
    MASK_FRACTION_COLUMNS,
    OSM_DATA,
    bitset_matrix,
    iter_chip_table,
    manifest_rows,
)
from imagesim.errors import ImagesimFileNotFoundError, LabelInputError, OutputExistsError
from imagesim.fsutil import atomic_path, write_json
from imagesim.geoparquet import GeoParquetStream
from imagesim.labels.cells import ard_base, check_osm_data
from imagesim.labels.geometry import GeometryReport, features_from_osm
from imagesim.labels.join import CellGrid, join_cell, local_index
from imagesim.labels.taxonomy import Taxonomy, load_taxonomy
from imagesim.progress import ProgressFactory, ProgressSink
from imagesim.storage import AnyPath, location

INCLUDE_CHOICES = ("all_data", *options.LABEL_INCLUDE)  # all_data: always labelled, accepted as a no-op
CLOUDY = "cloudy"  # the key of chips left out by `max_cloud` in LabelSummary.excluded / labels.json
LABEL_SLICE = 8_192  # chips labelled and written at a time (a cell with many acquisitions has many)


@dataclass
class LabelSettings:
    taxonomy: str | Path | None = None  # None: the shipped default
    include: tuple[str, ...] = ()  # "partial": partial_data chips too; "unmeasured": chips with no nodata class
    out_dir: str | AnyPath | None = None  # default: the chips folder
    nodata_index: str | AnyPath | None = None  # nodata.parquet or nodata-index.json; default: CHIPS/nodata.parquet if present
    overwrite: bool = False
    # Chips whose valid area is more than this share under the ARD cloud mask are left out (None: keep
    # all); chips without a cloud fraction (no cloud mask in the delivery) are kept and counted.
    max_cloud: float | None = options.MAX_CLOUD

    def __post_init__(self) -> None:
        for value in self.include:
            if value not in INCLUDE_CHOICES:
                options.check_choice("include", value, options.LABEL_INCLUDE)
        if self.max_cloud is not None:
            options.check_range("max_cloud", self.max_cloud, *options.FRACTION_RANGE, what="a share of the chip's valid area")


@dataclass
class LabelSummary:
    out_dir: AnyPath
    classes: list[str]
    chips: int = 0  # rows written
    labelled: int = 0  # rows with at least one class
    listed: int = 0  # chips in the manifest, before any was left out
    cells: int = 0
    excluded: dict[str, int] = field(default_factory=dict)  # nodata class (or "cloudy") -> chips left out
    cloud_unknown: int = 0  # chips kept without a cloud fraction (no cloud mask read for them)
    mask_classes_unknown: dict[str, int] = field(default_factory=dict)  # mask class -> chips without that mask's fraction
    max_cloud: float | None = None
    missing_cells: list[str] = field(default_factory=list)  # "zone/cell" without osm_data.json
    failed_cells: list[tuple[str, str]] = field(default_factory=list)  # ("zone/cell", error)
    class_counts: dict[str, int] = field(default_factory=dict)
    geometry: GeometryReport = field(default_factory=GeometryReport)
    seconds: float = 0.0

    @property
    def failed(self) -> bool:
        return bool(self.missing_cells or self.failed_cells)

    @property
    def nothing_labelled(self) -> bool:
        """No chip got a label: no labels file was written (a model would train on all-zero targets)."""
        return self.labelled == 0

    def why_nothing_labelled(self) -> str:
        """One line: no chip got a label, and the likely cause, naming what to change."""
        head = f"no chip got a label (of {self.listed} chips in the manifest, {self.chips} in {self.cells} cells with OSM data); nothing written: "
        candidates = self.listed - sum(n for k, n in self.excluded.items() if k != "no OSM data for the cell")
        if self.listed == 0:
            return head + "the chip manifest lists no chip (run `imagesim chip` first)"
        if candidates == 0:
            left = ", ".join(f"{n} {k}" for k, n in sorted(self.excluded.items()) if n)
            if self.excluded.get(CLOUDY):
                return head + f"every chip is left out ({left}); `max_cloud` above {self.max_cloud} keeps cloudier chips"
            return head + f"every chip is left out by its no-data class ({left}); `include` partial or unmeasured labels those"
        if self.cells == 0:
            return head + (
                f"no cell has usable OSM data ({len(self.missing_cells)} without osm_data.json, {len(self.failed_cells)} unreadable): "
                "run `imagesim osm fetch` or `imagesim osm import` for the cells of `ard_path`"
            )
        geo = self.geometry
        if geo.elements == 0:
            return head + (
                f"the osm_data.json of the {self.cells} cells hold no tagged element (fetched or imported for another area?): "
                "fetch or import them again with `imagesim osm fetch --overwrite` / `imagesim osm import --overwrite`"
            )
        if geo.used == 0:
            return head + (
                f"none of the {geo.elements} tagged OSM elements matches a class of the taxonomy: "
                "compare `taxonomy` with the tags `imagesim osm tags` lists"
            )
        return head + f"{geo.used} OSM features match a class, but none covers enough of any chip (each class's min_share)"

    def line(self) -> str:
        excluded = ", ".join(f"{n} {k}" for k, n in sorted(self.excluded.items()) if n) or "none"
        return (
            f"labels: {self.chips} chips in {self.cells} cells, {self.labelled} with at least one of "
            f"{len(self.classes)} classes; excluded: {excluded}; "
            f"{len(self.missing_cells)} cells without OSM data, {len(self.failed_cells)} failed; "
            f"{self.seconds:.1f} s"
        )


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


def _load_cell_osm(root: AnyPath, zone: int, cell: str) -> dict[str, Any] | None:
    path = root / str(zone) / cell / OSM_DATA
    if not path.is_file():
        return None
    try:
        data = orjson.loads(path.read_bytes())  # 3-4x the stdlib's speed on large OSM files
    except (OSError, ValueError) as exc:
        raise LabelInputError(f"{path}: not readable JSON ({exc})") from None
    check_osm_data(data, cell, str(path))
    return data


def wgs84_to(epsg: int) -> Callable[[np.ndarray], np.ndarray]:
    """A vectorised lon/lat → ``epsg`` transform of ``(n, 2)`` arrays (OSM geometry into a cell's UTM)."""
    from pyproj import Transformer

    tr = Transformer.from_crs(4326, epsg, always_xy=True)

    def apply(xy: np.ndarray) -> np.ndarray:
        x, y = tr.transform(xy[:, 0], xy[:, 1])
        return np.column_stack([x, y])

    return apply


# --------------------------------------------------------------------------------------------
# Build
# --------------------------------------------------------------------------------------------


def label_cell(data: dict[str, Any], taxonomy: Taxonomy, zone: int, cell: str, zoom: int) -> tuple[np.ndarray, np.ndarray, GeometryReport]:
    """``(local chip index, class id)`` pairs of one cell at a chip zoom, and the geometry report."""
    options.check_range("zoom", zoom, *options.LABEL_ZOOM_RANGE, what="the zoom of labelled chips")
    features, report = features_from_osm(data, taxonomy, wgs84_to(grid.epsg(cell, zone)))
    chip, cls = join_cell(features, taxonomy, CellGrid.of(grid.bounds(cell), 1 << (zoom - 12)))
    return chip, cls, report


def build_labels(
    chips_dir: str | AnyPath,
    ard_path: str | AnyPath,
    settings: LabelSettings | None = None,
    progress: ProgressFactory | None = None,
    log: Callable[[str], None] | None = None,
) -> LabelSummary:
    """Label every chip of ``chips_dir`` from the ``osm_data.json`` files of ``ard_path``.

    ``log`` hears what the user should know (a chip manifest derived from chip names)."""
    settings = settings or LabelSettings()
    t0 = time.perf_counter()
    chips_dir, ard_root = location(chips_dir), ard_base(ard_path)
    if not location(ard_path).is_dir():
        raise ImagesimFileNotFoundError(f"{ard_path}: ARD path does not exist")
    out_dir = location(settings.out_dir) if settings.out_dir else chips_dir
    outputs = [out_dir / LABELS_PARQUET, out_dir / LABELS_CSV, out_dir / LABELS_JSON]
    if not settings.overwrite:
        for path in outputs:
            if path.exists():
                raise OutputExistsError(f"{path}: labels already exist; pass `overwrite` to rebuild them (any split is reset)")
    taxonomy = load_taxonomy(settings.taxonomy)
    summary = LabelSummary(out_dir=out_dir, classes=taxonomy.names)

    # `path`: each chip file, relative to chips_dir; the cloud fraction and those of the masks classes take truth from
    extra = tuple(dict.fromkeys([CLOUD_FRACTION, *(MASK_FRACTION_COLUMNS[c.mask] for c in taxonomy.mask_classes if c.mask)]))
    keep = pl.col("nodata_class") == "all_data"
    if "partial" in settings.include:
        keep = keep | (pl.col("nodata_class") == "partial_data")
    if "unmeasured" in settings.include:
        keep = keep | pl.col("nodata_class").is_null()
    keep = keep.fill_null(False)
    summary.max_cloud = settings.max_cloud
    excluded: dict[str, int] = {}
    cloudy_total = 0

    def usable(chips: pl.DataFrame) -> pl.DataFrame:
        """An acquisition's chips less those left out (counted in the summary)."""
        nonlocal cloudy_total
        summary.listed += chips.height
        for k, n in chips.filter(~keep).group_by("nodata_class").len().iter_rows():
            excluded[k or "unmeasured"] = excluded.get(k or "unmeasured", 0) + n
        chips = chips.filter(keep)
        if settings.max_cloud is not None:
            cloudy = (pl.col(CLOUD_FRACTION) > settings.max_cloud).fill_null(False)
            cloudy_total += chips.filter(cloudy).height
            chips = chips.filter(~cloudy)
        summary.cloud_unknown += chips[CLOUD_FRACTION].null_count()
        return chips

    # One acquisition of a cell at a time, in manifest order (zone, cell, date, catalog id: a cell's
    # acquisitions are neighbours): one cell's OSM features and labels in memory, each acquisition's rows
    # streamed to labels.parquet and labels.csv in chip order, published only once all is written and
    # something got a label. OSM labels belong to the place: computed once per cell and zoom.
    acquisitions = iter_chip_table(chips_dir, settings.nodata_index, log=log, extra=extra)
    sink: ProgressSink = ProgressSink()
    n_classes = len(taxonomy.classes)
    reports: dict[tuple[int, str, int], GeometryReport] = {}  # per (zone, cell, zoom): merged in that order at the end
    missing: set[tuple[int, str]] = set()
    failed: dict[tuple[int, str, int], str] = {}
    counts = np.zeros(n_classes, np.int64)
    unknown = {c.name: 0 for c in taxonomy.mask_classes if c.mask}
    left_out = rows = label_total = 0
    cell_key: tuple[int, str] | None = None
    cell_data: dict[str, Any] | None = None
    cell_error: str | None = None
    cell_labels: dict[int, pl.DataFrame] = {}  # the current cell's (local chip, class) rows per zoom
    seen = 0
    out_made = not out_dir.exists()
    try:
        with ExitStack() as files:
            writer = files.enter_context(GeoParquetStream(files.enter_context(atomic_path(outputs[0]))))
            csv = files.enter_context(open(files.enter_context(atomic_path(outputs[1])), "wb"))
            for listed in acquisitions:
                if seen == 0:  # the manifest exists now (a derived one is saved by the first read)
                    sink = progress(max(manifest_rows(chips_dir), listed.height)) if progress else ProgressSink()
                seen += listed.height
                block = usable(listed)
                if block.height == 0:
                    sink.update(seen)
                    continue
                zone, cell = int(block["zone"][0]), str(block["cell"][0])
                if cell_key != (zone, cell):
                    cell_key, cell_labels, cell_error = (zone, cell), {}, None
                    try:
                        cell_data = _load_cell_osm(ard_root, zone, cell)
                    except (LabelInputError, ValueError) as exc:  # a bad osm_data.json: reported per zoom, go on
                        cell_data, cell_error = None, str(exc)
                    if cell_data is None and cell_error is None:
                        missing.add((zone, cell))
                if cell_error is not None:
                    failed.update({(zone, cell, z): cell_error for z in block["zoom"].unique().to_list()})
                parts: list[pl.DataFrame] = []
                bad = cell_data is None
                for zoom in sorted(block["zoom"].unique().to_list()):
                    key = (zone, cell, zoom)
                    if bad or key in failed:
                        bad = True
                        continue
                    if zoom not in cell_labels:
                        try:
                            assert cell_data is not None
                            chip_idx, cls, report = label_cell(cell_data, taxonomy, zone, cell, zoom)
                            reports[key] = report
                            cell_labels[zoom] = _long(zone, cell, zoom, chip_idx, cls)
                        except (LabelInputError, ValueError, shapely.errors.ShapelyError) as exc:  # a bad cell: report it, go on
                            failed[key] = str(exc)
                            bad = True
                            continue
                    parts.append(cell_labels[zoom])
                if bad:
                    left_out += block.height
                    sink.update(seen)
                    continue
                for at in range(0, block.height, LABEL_SLICE):
                    some = block.slice(at, LABEL_SLICE)
                    table = _assemble(some, parts, taxonomy)
                    dense = _imagesim.dense_labels(bitset_matrix(table, n_classes), n_classes)
                    sizes = table["label_ids"].list.len()
                    counts += dense.sum(axis=0, dtype=np.int64)
                    summary.labelled += int((sizes > 0).sum())
                    label_total += int(sizes.sum())
                    rows += table.height
                    for c in taxonomy.mask_classes:
                        if c.mask:
                            unknown[c.name] += some[MASK_FRACTION_COLUMNS[c.mask]].null_count()
                    writer.write(table)
                    pl.DataFrame({"Feature": table["path"]}).hstack(
                        [pl.Series(name, dense[:, j], dtype=pl.UInt8) for j, name in enumerate(taxonomy.names)]
                    ).write_csv(csv, include_header=rows == table.height)
                sink.update(seen)
            summary.excluded = excluded
            if settings.max_cloud is not None:
                summary.excluded[CLOUDY] = cloudy_total
            summary.cells = len(reports)
            for key in sorted(reports):
                summary.geometry.merge(reports[key])
            summary.missing_cells = [f"{z}/{c}" for z, c in sorted(missing)]
            summary.failed_cells = [(f"{k[0]}/{k[1]}", e) for k, e in sorted(failed.items(), key=lambda f: f[0])]
            if missing or failed:
                summary.excluded["no OSM data for the cell"] = left_out
            summary.mask_classes_unknown = unknown if rows else {}
            summary.chips = rows
            summary.class_counts = dict(zip(taxonomy.names, (int(x) for x in counts)))
            if summary.nothing_labelled:  # nothing to learn from: labels the user has stay as they are
                raise _NothingLabelled
    except _NothingLabelled:
        if out_made and _is_empty_dir(out_dir):
            out_dir.rmdir()
        summary.seconds = time.perf_counter() - t0
        return summary
    finally:
        sink.close()
    summary.seconds = time.perf_counter() - t0
    write_json(outputs[2], _sidecar(summary, taxonomy, chips_dir, ard_root, label_total / rows if rows else 0.0))
    return summary


class _NothingLabelled(Exception):
    """No chip got a label: the streamed outputs are dropped (raised inside their atomic writes)."""


def _is_empty_dir(path: AnyPath) -> bool:
    return isinstance(path, Path) and path.is_dir() and not any(path.iterdir())


def _long(zone: int, cell: str, zoom: int, chip_idx: np.ndarray, cls: np.ndarray) -> pl.DataFrame:
    """A cell's ``(local chip, class id)`` pairs as rows keyed by zone, cell and zoom."""
    return pl.DataFrame(
        {
            "zone": pl.Series(np.full(len(chip_idx), zone), dtype=pl.UInt8),
            "cell": pl.Series([cell] * len(chip_idx), dtype=pl.String),
            "zoom": pl.Series(np.full(len(chip_idx), zoom), dtype=pl.UInt8),
            "local": pl.Series(chip_idx, dtype=pl.Int64),
            "class_id": pl.Series(cls, dtype=pl.UInt16),
        }
    )


def _assemble(chips: pl.DataFrame, parts: list[pl.DataFrame], taxonomy: Taxonomy) -> pl.DataFrame:
    """One row per chip: identity columns, sorted class ids, the packed bitset, an empty split."""
    n_classes = len(taxonomy.classes)
    words = _imagesim.label_words(n_classes)
    long = (
        pl.concat(parts)
        if parts
        else pl.DataFrame(schema={"zone": pl.UInt8, "cell": pl.String, "zoom": pl.UInt8, "local": pl.Int64, "class_id": pl.UInt16})
    )
    local = np.empty(chips.height, np.int64)
    zooms = chips["zoom"].to_numpy()
    quadkeys = chips["quadkey"].to_list()
    for z in np.unique(zooms):
        rows = np.flatnonzero(zooms == z)
        local[rows] = local_index([quadkeys[r] for r in rows])
    per_chip = long.group_by("zone", "cell", "zoom", "local").agg(pl.col("class_id").unique().sort().alias("label_ids"))
    table = chips.with_columns(pl.Series("local", local, dtype=pl.Int64)).join(per_chip, on=["zone", "cell", "zoom", "local"], how="left")
    # OSM labels belong to a place (every acquisition of a quadkey); a mask's to one acquisition's chip: the
    # chips whose mask fraction reaches the class's min_share (any share, for 0).
    mask_ids = [
        pl.when((pl.col(MASK_FRACTION_COLUMNS[c.mask]) >= c.min_share) & (pl.col(MASK_FRACTION_COLUMNS[c.mask]) > 0))
        .then(pl.lit([c.id], dtype=pl.List(pl.UInt16)))
        .otherwise(pl.lit([], dtype=pl.List(pl.UInt16)))
        for c in taxonomy.mask_classes
        if c.mask
    ]
    table = table.with_columns(
        pl.concat_list(pl.col("label_ids").fill_null(pl.lit([], dtype=pl.List(pl.UInt16))), *mask_ids)
        .list.unique()
        .list.sort()
        .alias("label_ids")
    ).sort("chip")
    ids = table["label_ids"].explode().drop_nulls().to_numpy().astype(np.uint32)
    offsets = np.concatenate([[0], np.cumsum(table["label_ids"].list.len().to_numpy())]).astype(np.int64)
    bits = _imagesim.pack_labels(ids, offsets, n_classes)
    return table.select(
        "chip",
        "path",
        "zone",
        "quadkey",
        "cell",
        "catalog_id",
        "nodata_class",
        "label_ids",
        pl.Series("bitset", bits, dtype=pl.Array(pl.UInt64, words)),
        pl.lit(None, dtype=pl.String).alias("split"),
    )


def _sidecar(summary: LabelSummary, taxonomy: Taxonomy, chips_dir: AnyPath, ard_root: AnyPath, cardinality: float) -> dict[str, Any]:
    n = max(summary.chips, 1)
    return {
        "classes": taxonomy.names,
        "n_classes": len(taxonomy.names),
        "words": _imagesim.label_words(len(taxonomy.names)),
        "chips_dir": str(chips_dir.resolve()),
        "ard_path": str(ard_root.resolve()),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "chips": summary.chips,
        "labelled": summary.labelled,
        "class_counts": summary.class_counts,
        "class_frequency": {k: v / n for k, v in summary.class_counts.items()},
        "label_cardinality": cardinality,
        "excluded": summary.excluded,
        "max_cloud": summary.max_cloud,
        "cloud_fraction_unknown": summary.cloud_unknown,
        "mask_fraction_unknown": summary.mask_classes_unknown,
        "missing_osm_cells": summary.missing_cells,
        "failed_cells": [{"cell": c, "error": e} for c, e in summary.failed_cells],
        "geometry": summary.geometry.as_dict(),
        "taxonomy": taxonomy.describe(),
        "split": None,
    }


# --------------------------------------------------------------------------------------------
# Reading labels back (train, report, split)
# --------------------------------------------------------------------------------------------
