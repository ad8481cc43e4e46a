"""ARD vector masks: the share of each chip's valid area under the cloud, shadow, water and vegetation masks.

Beside each ``<catid>-visual.tif`` an ARD delivery has GeoPackages of polygons (``-data-mask.gpkg``,
``-cloud-mask.gpkg``, …; :data:`imagesim.imagery.ard.MASK_FILES`). For every chip this module computes,
per mask, ``area(mask ∩ data ∩ chip) / area(data ∩ chip)`` in the cell's UTM CRS: exact from the
vectors, not a raster count. The chips of a cell are an aligned grid, so each mask is intersected with
the data mask once per cell and then spread over the whole grid in one exact pass
(:func:`imagesim.imagery.coverage.chip_areas`, Rust) instead of one geometry query per chip.

GeoPackages are read with the standard library's sqlite3 and shapely (no GDAL needed): the geometry
blobs are a small GeoPackage header before standard WKB. A mask in another CRS is reprojected to the
cell's; invalid polygons are repaired (``make_valid``) and counted; a mask that cannot be read, or that
does not overlap its COG, gives a :class:`MaskNote` and null (unreadable) or zero fractions — never a
failed run. An acquisition without mask files gets null fractions, as before masks were read.

``imagesim chip`` fills the columns as it chips; ``imagesim masks`` (:func:`run_masks`) fills them for
chip folders that exist already.
"""

from __future__ import annotations

import sqlite3
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imagesim import grid, options
from imagesim.artefacts import CHIPS_MANIFEST, MASK_FRACTION_COLUMNS, derive_manifest, read_manifest
from imagesim.errors import ImagesimError, ImagesimFileNotFoundError, MaskError
from imagesim.geoparquet import write_geoparquet
from imagesim.imagery.ard import DATA_MASK, MASK_FILES, Acquisition, find_acquisitions
from imagesim.progress import ProgressFactory, open_progress
from imagesim.runner import Outcome, TaskRunner, cores
from imagesim.storage import AnyPath, StorePath, location
from imagesim.tables import LazyModule

if TYPE_CHECKING:
    import polars as pl
else:  # polars on first use: `imagesim chip` fills its manifest's mask columns from plain lists
    pl = LazyModule("polars")

__all__ = [
    "MaskGeometry",
    "MaskNote",
    "MaskFractions",
    "read_mask",
    "acquisition_fractions",
    "MasksSummary",
    "run_masks",
]

# A chip whose valid area is below this share of the chip has no fraction (null): 0/0 is not 0.
_MIN_VALID_SHARE = 1e-9
# GeoPackage geometry header: envelope size in bytes by the envelope indicator (flags bits 1-3).
_ENVELOPE_BYTES = {0: 0, 1: 32, 2: 48, 3: 48, 4: 64}


@dataclass
class MaskGeometry:
    """One mask GeoPackage read into the cell's CRS: the union of its polygons, and what was done to them."""

    geometry: Any  # shapely (Multi)Polygon, possibly empty
    features: int = 0
    repaired: int = 0  # invalid polygons made valid
    ignored: int = 0  # features that are not polygons (points, lines) or empty
    reprojected_from: str | None = None  # the file's CRS when it was not the cell's


@dataclass(frozen=True)
class MaskNote:
    """Something the user should know about one mask file (unreadable, reprojected, repaired …)."""

    path: str
    problem: str
    failed: bool = False  # the mask could not be used: its fractions are null

    def line(self) -> str:
        return f"{self.path}: {self.problem}"

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "problem": self.problem, "failed": self.failed}


@dataclass
class MaskFractions:
    """The mask fractions of every chip of one cell at one zoom: ``columns`` holds ``quadkey`` and one list
    per mask (MASK_FRACTION_COLUMNS; None where null), all in :func:`imagesim.grid.children` order."""

    columns: dict[str, list[Any]]
    masks_found: int = 0  # mask files present (of MASK_FILES)
    notes: list[MaskNote] = field(default_factory=list)

    @property
    def frame(self) -> pl.DataFrame:
        """``columns`` as a polars frame (Float64 fractions)."""
        return pl.DataFrame(self.columns, schema={"quadkey": pl.String, **{c: pl.Float64 for c in MASK_FRACTION_COLUMNS.values()}})


def null_fractions(quadkeys: list[str]) -> dict[str, list[Any]]:
    """``MaskFractions.columns`` with every fraction null."""
    return {"quadkey": quadkeys, **{column: [None] * len(quadkeys) for column in MASK_FRACTION_COLUMNS.values()}}


# --------------------------------------------------------------------------------------------
# Reading a GeoPackage
# --------------------------------------------------------------------------------------------


def _connect(path: AnyPath) -> sqlite3.Connection:
    """A read-only connection to a GeoPackage: the file itself, or its bytes from a store (in memory)."""
    if isinstance(path, StorePath):
        con = sqlite3.connect(":memory:")
        con.deserialize(path.read_bytes())
        return con
    # immutable: no lock or journal files are made beside the user's masks
    return sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro&immutable=1", uri=True)


def _wkb(blob: bytes) -> bytes | None:
    """The WKB of a GeoPackage geometry blob (None for an empty geometry)."""
    if len(blob) < 8 or blob[:2] != b"GP":
        raise ValueError("a geometry is not a GeoPackage geometry blob")
    flags = blob[3]
    if flags & 0x20:
        raise ValueError("extended GeoPackage geometry types are not supported")
    envelope = _ENVELOPE_BYTES.get((flags >> 1) & 0x07)
    if envelope is None:
        raise ValueError("a geometry has an invalid envelope indicator")
    if flags & 0x10:
        return None
    return blob[8 + envelope :]


def _srs_row(con: sqlite3.Connection, srs_id: int) -> tuple[Any, Any, Any] | None:
    """(organization, organization_coordsys_id, definition) of a GeoPackage srs_id (None: undefined)."""
    row = con.execute(
        "SELECT organization, organization_coordsys_id, definition FROM gpkg_spatial_ref_sys WHERE srs_id = ?", (srs_id,)
    ).fetchone()
    return None if row is None or srs_id in (0, -1) else row


def _is_epsg(row: tuple[Any, Any, Any], epsg: int) -> bool:
    """The srs row names EPSG ``epsg`` itself (the usual case): no CRS library is needed to know it."""
    org, code, _ = row
    return isinstance(org, str) and org.upper() == "EPSG" and str(code) == str(epsg)


def _crs_of(row: tuple[Any, Any, Any]) -> Any | None:
    """The pyproj CRS of a GeoPackage srs row (None: undefined)."""
    from pyproj import CRS

    org, code, definition = row
    if isinstance(org, str) and org.upper() == "EPSG" and code:
        return CRS.from_epsg(int(code))
    if definition and str(definition).strip().lower() != "undefined":
        return CRS.from_wkt(str(definition))
    return None


def read_mask(path: AnyPath, epsg: int) -> MaskGeometry:
    """Every polygon of the GeoPackage ``path`` (all its feature tables), unioned, in EPSG ``epsg``.

    Raises MaskError naming the file when it is not a readable GeoPackage."""
    import numpy as np
    import shapely

    try:
        con = _connect(path)
    except (sqlite3.Error, OSError) as exc:
        raise MaskError(f"{path}: cannot open the mask GeoPackage ({exc})") from None
    parts: list[Any] = []
    result = MaskGeometry(geometry=None)
    try:
        try:
            tables = con.execute(
                "SELECT g.table_name, g.column_name, g.srs_id FROM gpkg_geometry_columns g "
                "JOIN gpkg_contents c ON c.table_name = g.table_name WHERE c.data_type = 'features'"
            ).fetchall()
        except sqlite3.Error as exc:
            raise MaskError(f"{path}: not a GeoPackage ({exc})") from None
        for table, column, srs_id in tables:
            quoted_table, quoted_column = '"' + str(table).replace('"', '""') + '"', '"' + str(column).replace('"', '""') + '"'
            try:
                blobs = [row[0] for row in con.execute(f"SELECT {quoted_column} FROM {quoted_table}")]  # noqa: S608 - quoted identifiers
            except sqlite3.Error as exc:
                raise MaskError(f"{path}: cannot read layer {table!r} ({exc})") from None
            try:
                wkbs = [_wkb(bytes(b)) if b is not None else None for b in blobs]
                geoms = shapely.from_wkb(np.array([w for w in wkbs if w is not None], dtype=object), on_invalid="raise")
            except (ValueError, TypeError, shapely.errors.GEOSException) as exc:
                raise MaskError(f"{path}: layer {table!r} holds an unreadable geometry ({exc})") from None
            result.features += len(blobs)
            result.ignored += sum(w is None for w in wkbs)
            row = _srs_row(con, int(srs_id)) if srs_id is not None else None
            # pyproj only for a mask in another CRS than the cell's (ARD's masks are in it: no import)
            crs = _crs_of(row) if row is not None and not _is_epsg(row, epsg) and len(geoms) else None
            if crs is not None:
                from pyproj import CRS, Transformer

                target = CRS.from_epsg(epsg)
                if not crs.equals(target):
                    tr = Transformer.from_crs(crs, target, always_xy=True)
                    geoms = shapely.transform(geoms, lambda xy, tr=tr: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))
                    result.reprojected_from = crs.to_string()
            parts.extend(geoms.tolist())
    except sqlite3.DatabaseError as exc:  # a damaged file fails on first real read
        raise MaskError(f"{path}: not a readable GeoPackage ({exc})") from None
    finally:
        con.close()
    result.geometry = _polygons(parts, result)
    return result


def _polygons(geoms: list[Any], result: MaskGeometry) -> Any:
    """The union of the polygon parts of ``geoms``; invalid ones repaired (counted), others ignored (counted)."""
    import numpy as np
    import shapely

    if not geoms:
        return shapely.Polygon()
    arr = shapely.get_parts(np.array(geoms, dtype=object))
    arr = shapely.get_parts(arr)  # collections inside multi-geometries
    polygonal = shapely.get_type_id(arr) == 3  # Polygon
    result.ignored += int((~polygonal).sum())
    arr = arr[polygonal & ~shapely.is_empty(arr)]
    invalid = ~shapely.is_valid(arr)
    if invalid.any():
        result.repaired += int(invalid.sum())
        fixed = shapely.get_parts(shapely.make_valid(arr[invalid]))
        fixed = shapely.get_parts(fixed)
        arr = np.concatenate([arr[~invalid], fixed[shapely.get_type_id(fixed) == 3]])
    return shapely.union_all(arr) if len(arr) else shapely.Polygon()


# --------------------------------------------------------------------------------------------
# Fractions per chip
# --------------------------------------------------------------------------------------------


def preload_geometry() -> threading.Thread | None:
    """Import the mask fractions' geometry modules (numpy, shapely: ~0.15 s) in a background thread, so that
    `imagesim chip` loads them while its first COG is being chipped (the Rust core releases the GIL) rather
    than after it. None when they are loaded already. A failed import is left to the fractions to report."""
    if "shapely" in sys.modules:
        return None

    def load() -> None:
        try:
            import imagesim.imagery.coverage  # noqa: F401 - numpy, shapely and the Rust kernel's wrapper
        except Exception:  # noqa: BLE001, S110 - acquisition_fractions imports it again and notes the failure
            pass

    thread = threading.Thread(target=load, name="imagesim-preload-geometry", daemon=True)
    thread.start()
    return thread


def mask_paths(acq: Acquisition) -> dict[str, AnyPath]:
    """The mask files of ``acq`` that exist, by mask name (MASK_FILES order)."""
    return {name: path for name, file in MASK_FILES.items() if (path := acq.mask_path(file)).is_file()}


def acquisition_fractions(acq: Acquisition, zoom: int, *, present: dict[str, AnyPath] | None = None) -> MaskFractions:
    """Per chip of ``acq``'s cell at ``zoom``: the share of its valid area under each mask.

    ``columns`` has ``quadkey`` (``grid.children(cell, zoom)`` order) and one list of fractions per mask
    (MASK_FRACTION_COLUMNS), null where the delivery lacks that mask (or it is unreadable) and for
    chips without valid area. Without a data mask the valid area is the whole chip (noted)."""
    import numpy as np
    import shapely

    from imagesim.imagery.coverage import chip_areas

    quadkeys = grid.children(acq.cell, zoom)
    found = mask_paths(acq) if present is None else present
    out = MaskFractions(null_fractions(quadkeys), masks_found=len(found))
    if not found:
        return out

    epsg = grid.epsg(acq.cell, acq.zone)
    cell_box = grid.bounds(acq.cell)
    gt = grid.cell_geotransform(acq.cell)
    cog_box = shapely.box(gt[0], gt[3] + grid.COG_PIXELS * gt[5], gt[0] + grid.COG_PIXELS * gt[1], gt[3])

    def load(path: AnyPath) -> Any | None:
        try:
            mask = read_mask(path, epsg)
        except (MaskError, ImagesimError, OSError) as exc:
            out.notes.append(MaskNote(str(path), _reason(exc, path), failed=True))
            return None
        notes = []
        if mask.reprojected_from:
            notes.append(f"reprojected from {mask.reprojected_from} to EPSG:{epsg}")
        if mask.repaired:
            notes.append(f"{mask.repaired} invalid polygon{'s' if mask.repaired != 1 else ''} repaired")
        if not mask.geometry.is_empty and not mask.geometry.intersects(cog_box):
            b = ", ".join(f"{v:.0f}" for v in mask.geometry.bounds)
            notes.append(f"does not overlap its COG (mask bounds {b} in EPSG:{epsg}): a mask of another cell or CRS?")
        if notes:
            out.notes.append(MaskNote(str(path), "; ".join(notes)))
        return shapely.clip_by_rect(mask.geometry, *cell_box)

    data_path = acq.mask_path(DATA_MASK)
    has_data_mask = data_path.is_file()
    data = load(data_path) if has_data_mask else None
    if data is None:
        if not has_data_mask:
            out.notes.append(MaskNote(str(data_path), "no data mask: fractions are shares of the whole chip"))
        data = shapely.box(*cell_box)
    valid = chip_areas(data, acq.cell, zoom)
    chip_area = (grid.CELL_SIZE / (1 << (zoom - grid.CELL_ZOOM))) ** 2
    has_valid = valid > _MIN_VALID_SHARE * chip_area
    for name, column in MASK_FRACTION_COLUMNS.items():
        path = found.get(name)
        geom = load(path) if path is not None else None
        if geom is None:
            continue  # null
        under = chip_areas(shapely.intersection(geom, data), acq.cell, zoom)
        frac = np.clip(np.divide(under, valid, out=np.zeros_like(under), where=has_valid), 0.0, 1.0)
        out.columns[column] = [f if ok else None for f, ok in zip(frac.tolist(), has_valid.tolist())]
    return out


def _reason(exc: BaseException, path: AnyPath) -> str:
    text = str(exc)
    prefix = f"{path}: "
    return text[len(prefix) :] if text.startswith(prefix) else text


def safe_fractions(acq: Acquisition, zoom: int, present: dict[str, AnyPath] | None = None) -> MaskFractions:
    """:func:`acquisition_fractions`, with a failure of the geometry work turned into null fractions and a note:
    a chipping run never fails because of its masks."""
    try:
        return acquisition_fractions(acq, zoom, present=present)
    except Exception as exc:  # noqa: BLE001 - fractions are extra columns: any failure is a note, never a failed COG
        return MaskFractions(
            null_fractions(grid.children(acq.cell, zoom)),
            masks_found=0,
            notes=[MaskNote(str(acq.visual), f"mask fractions failed ({type(exc).__name__}: {exc})", failed=True)],
        )


def fractions_task(acq: Acquisition, zooms: Sequence[int]) -> list[tuple[int, MaskFractions]]:
    """The task of one acquisition (in process or on a Dask worker): its fractions at each zoom."""
    present = mask_paths(acq)
    return [(zoom, safe_fractions(acq, zoom, present)) for zoom in zooms]


# --------------------------------------------------------------------------------------------
# `imagesim masks`: fill the columns of an existing chips folder
# --------------------------------------------------------------------------------------------


@dataclass
class MasksSummary:
    dest: AnyPath
    chips: int = 0  # chips in the manifest
    updated: int = 0  # chips of acquisitions with at least one mask file
    acquisitions: int = 0  # acquisitions of the manifest found under ARD
    without_masks: list[str] = field(default_factory=list)  # acquisitions without any mask file
    missing: list[str] = field(default_factory=list)  # manifest acquisitions not found under ARD
    failed: list[tuple[str, str]] = field(default_factory=list)  # (acquisition, error)
    notes: list[MaskNote] = field(default_factory=list)
    cloudy: int = 0  # chips with cloud_fraction above the MAX_CLOUD default
    seconds: float = 0.0

    def line(self) -> str:
        return (
            f"mask fractions for {self.updated:,} of {self.chips:,} chips ({self.acquisitions} acquisitions; "
            f"{len(self.without_masks)} without mask files, {len(self.missing)} not found under the ARD path, "
            f"{len(self.failed)} failed; {len(self.notes)} mask note(s)) in {self.seconds:.1f} s"
        )

    def why_nothing(self) -> str:
        if self.chips == 0:
            return f"{self.dest / CHIPS_MANIFEST} lists no chip: run `imagesim chip` first"
        if self.acquisitions == 0:
            return f"none of the {len(self.missing)} acquisitions of the chip manifest is under the ARD path (e.g. {self.missing[0]})"
        if self.failed and not self.without_masks:
            return f"every acquisition failed (e.g. {self.failed[0][0]}: {self.failed[0][1]})"
        return f"no acquisition has mask files (<catalog-id>-{MASK_FILES['cloud']}.gpkg …) beside its -visual.tif"


def run_masks(
    chips_dir: str | AnyPath,
    ard_path: str | AnyPath,
    *,
    progress: ProgressFactory | None = None,
    scheduler: Any = None,
) -> MasksSummary:
    """Fill the mask-fraction columns of ``chips_dir``'s manifest from the masks under ``ard_path``.

    One task per acquisition (in process or on Dask, like ``imagesim chip``). The manifest is rewritten
    atomically once, with the other columns unchanged; acquisitions not found keep their values. A
    folder of the original tool (no ``chips.parquet``) gets a derived manifest first."""
    t0 = time.perf_counter()
    dest = location(chips_dir)
    if not dest.is_dir():
        raise ImagesimFileNotFoundError(f"{dest}: chips folder does not exist")
    if not (dest / CHIPS_MANIFEST).is_file():
        derive_manifest(dest)
    manifest = read_manifest(dest)
    summary = MasksSummary(dest=dest, chips=manifest.height)
    if manifest.height == 0:
        return summary
    found, _ = find_acquisitions(ard_path)
    by_key = {(a.zone, a.cell, a.catalog_id): a for a in found}
    groups = manifest.group_by("zone", "cell", "catalog_id").agg(pl.col("zoom").unique().sort()).sort("zone", "cell", "catalog_id")
    items: list[tuple[Acquisition, list[int]]] = []
    for zone, cell, catalog_id, zooms in groups.iter_rows():
        acq = by_key.get((zone, cell, catalog_id))
        if acq is None:
            summary.missing.append(f"{zone}/{cell}/{catalog_id}")
        else:
            items.append((acq, [int(z) for z in zooms]))
    summary.acquisitions = len(items)
    tasks = TaskRunner(scheduler)
    sink = open_progress(progress, len(items))
    frames: list[pl.DataFrame] = []

    def merge(outcome: Outcome[tuple[Acquisition, list[int]]]) -> None:
        acq = outcome.item[0]
        where = f"{acq.zone}/{acq.cell}/{acq.catalog_id}"
        if outcome.error is not None:
            summary.failed.append((where, outcome.error))
            return
        for zoom, fractions in outcome.result:
            summary.notes.extend(fractions.notes)
            if fractions.masks_found == 0:
                if where not in summary.without_masks:
                    summary.without_masks.append(where)
                continue
            frames.append(fractions.frame.with_columns(pl.lit(acq.catalog_id).alias("catalog_id"), pl.lit(zoom, pl.UInt8).alias("zoom")))

    try:
        with tasks.run(
            fractions_task,
            items,
            lambda item: (replace(item[0], visual=tasks.task_path(item[0].visual)), item[1]),
            name="imagesim-masks",
            workers=cores(),
            on_progress=sink.update,
        ) as outcomes:
            for outcome in outcomes:
                merge(outcome)
    finally:
        sink.close()
    if frames:
        updated = _apply(manifest, pl.concat(frames))
        summary.updated = int(updated["_updated"].sum())
        write_geoparquet(updated.drop("_updated"), dest / CHIPS_MANIFEST)
        cloud = updated[MASK_FRACTION_COLUMNS["cloud"]]
        summary.cloudy = int((cloud > options.MAX_CLOUD).sum())
    summary.seconds = time.perf_counter() - t0
    return summary


def _apply(manifest: pl.DataFrame, fractions: pl.DataFrame) -> pl.DataFrame:
    """``manifest`` with its mask columns taken from ``fractions`` (by catalog id, zoom, quadkey) where given."""
    cols = list(MASK_FRACTION_COLUMNS.values())
    fresh = fractions.rename({c: f"{c}__new" for c in cols}).with_columns(pl.lit(True).alias("_updated"))
    joined = manifest.join(fresh, on=["catalog_id", "zoom", "quadkey"], how="left")
    hit = pl.col("_updated").fill_null(False)
    return joined.with_columns(
        *(pl.when(hit).then(pl.col(f"{c}__new")).otherwise(pl.col(c)).alias(c) for c in cols),
        hit.alias("_updated"),
    ).drop([f"{c}__new" for c in cols])
