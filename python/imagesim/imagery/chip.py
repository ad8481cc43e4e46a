"""`imagesim chip`: every ARD `-visual.tif` into JPEG chips on the quadkey grid.

Each COG is one call into Rust (GIL released, rayon fan-out); Python finds the COGs, keeps the
manifest ``chips.parquet`` and the error report ``chip-errors.json``, and draws the progress bar.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import polars as pl

from imagesim import _imagesim as _rs
from imagesim import grid, options
from imagesim.artefacts import (
    CHIP_ERRORS,
    CHIPS_MANIFEST,
    MANIFEST_SCHEMA,
    MASK_FRACTION_COLUMNS,
    chip_folder,
    nodata_class_expr,
    read_manifest,
    recorded_by_chip,
    zone_folder,
)
from imagesim.errors import ImagesimError
from imagesim.fsutil import write_json
from imagesim.geoparquet import write_geoparquet
from imagesim.imagery.ard import Acquisition, Misplaced, find_acquisitions
from imagesim.imagery.masks import MaskFractions, MaskNote, safe_fractions
from imagesim.progress import ProgressFactory, open_progress
from imagesim.runner import Outcome, TaskRunner, cores, worker_threads
from imagesim.storage import AnyPath, StorePath, location

# The key of a chip task's result that carries the COG's mask fractions (beside the Rust columns).
MASKS_KEY = "masks"


@dataclass
class ChipSettings:
    zoom: int = options.ZOOM
    quality: int = options.JPEG_QUALITY
    passthrough: bool = False
    nodata_threshold: int = options.NODATA_THRESHOLD
    min_nodata_pixels: int = options.MIN_NODATA_PIXELS
    overwrite: bool = False
    skip_empty: bool = False
    measure: bool = True
    proc: int = options.PROC_ALL

    def check(self) -> None:
        options.check_range("zoom", self.zoom, *options.ZOOM_RANGE, what="the chip zoom")
        options.check_range("quality", self.quality, *options.QUALITY_RANGE, what="JPEG quality")
        options.check_range("nodata_threshold", self.nodata_threshold, *options.NODATA_THRESHOLD_RANGE)
        options.check_range("min_nodata_pixels", self.min_nodata_pixels, *options.MIN_NODATA_PIXELS_RANGE)
        options.check_range("proc", self.proc, *options.PROC_RANGE, what="worker threads (0: all cores)")


@dataclass
class ChipSummary:
    dest: AnyPath
    cogs: int = 0
    written: int = 0
    skipped: int = 0
    measured: int = 0
    empty: int = 0
    failed_chips: int = 0
    failed_cogs: list[tuple[str, str]] = field(default_factory=list)
    misplaced: list[Misplaced] = field(default_factory=list)
    stale_cogs: list[str] = field(default_factory=list)
    mask_notes: list[MaskNote] = field(default_factory=list)
    without_masks: int = 0  # COGs with no mask file beside them (mask fractions null)
    seconds: float = 0.0

    @property
    def processed(self) -> int:
        return self.written + self.measured + self.empty

    @property
    def rate(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        return (
            f"{self.written} chips written, {self.skipped} skipped, {self.measured} measured (already on disk), "
            f"{self.empty} empty not written, {self.failed_chips} failed, {len(self.failed_cogs)} COG(s) failed "
            f"in {self.seconds:.1f}s ({self.rate:.0f} chips/s)"
        )


def _records_frame(acq: Acquisition, cols: dict, settings: ChipSettings, masks: MaskFractions | None = None) -> pl.DataFrame:
    """Manifest rows for the chips of one COG that were measured this run, with their mask fractions."""
    df = pl.DataFrame({k: v for k, v in cols.items() if k != MASKS_KEY}).filter(pl.col("status").is_in(["written", "measured", "empty"]))
    if masks is not None:
        df = df.join(masks.frame, on="quadkey", how="left")
    else:
        df = df.with_columns(pl.lit(None, pl.Float64).alias(c) for c in MASK_FRACTION_COLUMNS.values())
    stamp = source_stamp(acq)
    total = pl.col("width").cast(pl.UInt64) * pl.col("height").cast(pl.UInt64)
    nodata = pl.col("nodata_pixels")
    return df.select(
        pl.col("chip"),
        pl.lit(acq.zone, pl.UInt8).alias("zone"),
        pl.col("quadkey"),
        pl.lit(settings.zoom, pl.UInt8).alias("zoom"),
        pl.lit(acq.cell).alias("cell"),
        pl.lit(acq.catalog_id).alias("catalog_id"),
        pl.lit(acq.date).alias("acquisition_date"),
        pl.lit(str(acq.visual)).alias("source_cog"),
        pl.lit(stamp[0], pl.UInt64).alias("source_size"),
        pl.lit(stamp[1], pl.Int64).alias("source_mtime_ns"),
        "col_off",
        "row_off",
        "width",
        "height",
        nodata.cast(pl.UInt64),
        pl.lit(settings.nodata_threshold, pl.UInt8).alias("nodata_threshold"),
        (1.0 - nodata.cast(pl.Float64) / total.cast(pl.Float64)).alias("valid_fraction"),
        nodata_class_expr(nodata, total, settings.min_nodata_pixels).alias("nodata_class"),
        (pl.col("status") != "empty").alias("written"),
        pl.col("encoding"),
        pl.col("bytes").cast(pl.UInt64),
        *MASK_FRACTION_COLUMNS.values(),
    ).cast(MANIFEST_SCHEMA)  # type: ignore[arg-type]


def source_stamp(acq: Acquisition) -> tuple[int, int]:
    """(size, mtime) of a COG: chips recorded against another stamp are stale."""
    st = acq.visual.stat()
    return st.st_size, st.st_mtime_ns


class _Manifest:
    """The manifest being built: old rows plus this run's, flushed atomically now and then."""

    def __init__(self, dest: AnyPath) -> None:
        self.dest = dest
        self.old = read_manifest(dest)
        self.new: list[pl.DataFrame] = []
        self.last_flush = time.monotonic()
        # Chips already recorded, per acquisition: built once, read by the worker threads. Rows derived
        # from chip names (a folder of the original tool) are not: those chips are measured again.
        groups = recorded_by_chip(self.old).group_by(["cell", "catalog_id"]).agg("chip", pl.col("source_size", "source_mtime_ns").first())
        self.known: dict[tuple[str, str], set[str]] = {}
        self.stamps: dict[tuple[str, str], tuple[int, int]] = {}
        for cell, catalog_id, names, size, mtime in groups.iter_rows():
            self.known[(cell, catalog_id)] = set(names)
            self.stamps[(cell, catalog_id)] = (size, mtime)

    def known_names(self, acq: Acquisition) -> set[str]:
        """Chips of one acquisition the manifest already records."""
        return self.known.get((acq.cell, acq.catalog_id), set())

    def is_stale(self, acq: Acquisition) -> bool:
        """The COG changed (size or mtime) since its chips were recorded: they must be redone."""
        recorded = self.stamps.get((acq.cell, acq.catalog_id))
        if recorded is None or None in recorded:  # never recorded, or by an older imagesim
            return False
        return recorded != source_stamp(acq)

    def add(self, frame: pl.DataFrame) -> None:
        self.new.append(frame)
        if time.monotonic() - self.last_flush > 30:
            self.flush()

    def flush(self) -> None:
        if not self.new:
            return
        fresh = pl.concat(self.new)
        merged = pl.concat([self.old.join(fresh.select("chip"), on="chip", how="anti"), fresh]).sort(
            ["zone", "cell", "acquisition_date", "catalog_id", "quadkey"]
        )
        write_geoparquet(merged, self.dest / CHIPS_MANIFEST)
        self.old, self.new = merged, []
        self.last_flush = time.monotonic()


def run_chip(
    ard_path: str | Path,
    dest: str | Path,
    settings: ChipSettings | None = None,
    *,
    zones: Sequence[int] | None = None,
    quadkeys: Sequence[str] | None = None,
    catalog_ids: Sequence[str] | None = None,
    progress: ProgressFactory | None = None,
    scheduler: Any = None,
) -> ChipSummary:
    """Chip every matching `-visual.tif` under ``ard_path`` into ``dest``, one task per COG.

    ``scheduler``: None chips in-process (Rust threads); a Dask scheduler address (``tcp://HOST:PORT``),
    ``"local"`` (a LocalCluster) or a ``distributed.Client`` runs the tasks there instead (see
    :mod:`imagesim.runner`) — same chips, same ``chips.parquet`` and ``chip-errors.json``.
    """
    settings = settings or ChipSettings()
    settings.check()
    tasks = TaskRunner(scheduler)
    out = location(dest)
    acquisitions, misplaced = find_acquisitions(
        ard_path,
        zones=list(zones) if zones else None,
        quadkeys=list(quadkeys) if quadkeys else None,
        catalog_ids=list(catalog_ids) if catalog_ids else None,
    )
    summary = ChipSummary(dest=out, cogs=len(acquisitions), misplaced=misplaced)
    if not acquisitions:  # nothing to chip: DEST (and an earlier run's chip-errors.json there) left as it was
        return summary
    out.mkdir(parents=True, exist_ok=True)
    manifest = _Manifest(out)
    # DEST named after a zone (`--dest chips/33`, the original notebook's layout): that zone's chips
    # go in DEST itself, not DEST/33/ (artefacts.zone_folder); the manifest stays in DEST.
    flat_zone = zone_folder(out)
    chips_per_cog = 4 ** (settings.zoom - 12)
    threads = settings.proc or cores()
    # In process, few chips per COG (low zooms): COGs side by side, one thread each; otherwise one
    # COG at a time with every thread on its chips (runner.worker_threads gives each task its share).
    side_by_side = chips_per_cog < 4 * threads
    sink = open_progress(progress, chips_per_cog * len(acquisitions))
    chip_errors: list[dict] = []
    start = time.perf_counter()

    stale = [acq for acq in acquisitions if not settings.overwrite and manifest.is_stale(acq)]
    summary.stale_cogs = [str(acq.visual) for acq in stale]
    # In a store, each zone's chips are listed once here rather than looked up one by one.
    in_store = (
        _chips_in_store(out, {acq.zone for acq in acquisitions}, flat_zone)
        if isinstance(out, StorePath) and not settings.overwrite
        else None
    )

    def task_args(acq: Acquisition) -> tuple:
        overwrite = settings.overwrite or acq in stale
        existing = None if in_store is None else in_store.get((acq.zone, acq.cell, acq.catalog_id), set())
        known = set() if overwrite else manifest.known_names(acq)
        folder = tasks.task_path(chip_folder(out, acq.zone, flat_zone))
        return replace(acq, visual=tasks.task_path(acq.visual)), folder, settings, known, overwrite, existing

    def merge(outcome: Outcome[Acquisition]) -> None:
        acq = outcome.item
        if outcome.error is not None:
            msg = outcome.error if str(acq.visual) in outcome.error else f"{acq.visual}: {outcome.error}"
            summary.failed_cogs.append((str(acq.visual), msg))
            return
        _tally(summary, outcome.result, chip_errors, acq)
        masks = outcome.result.get(MASKS_KEY)
        if masks is not None:
            summary.mask_notes.extend(masks.notes)
            summary.without_masks += masks.masks_found == 0
        manifest.add(_records_frame(acq, outcome.result, settings, masks))

    try:
        with tasks.run(
            chip_cog_task,
            acquisitions,
            task_args,
            name="imagesim-chip",
            workers=threads if side_by_side else 1,
            counter=_rs.Progress(),
            units=lambda _acq: chips_per_cog,
            on_progress=sink.update,
        ) as outcomes:
            for outcome in outcomes:
                merge(outcome)
    finally:
        manifest.flush()
        summary.seconds = time.perf_counter() - start
        write_json(
            out / CHIP_ERRORS,
            {
                "cogs": [{"cog": c, "error": e} for c, e in summary.failed_cogs],
                "chips": chip_errors,
                "misplaced": [{"path": str(m.path), "reason": m.reason} for m in misplaced],
                "masks": [note.as_dict() for note in summary.mask_notes],
            },
        )
        sink.close()
    return summary


def _chips_in_store(dest: StorePath, zones: set[int], flat_zone: int | None = None) -> dict[tuple[int, str, str], set[str]]:
    """Chips already in each zone prefix of a store destination, by (zone, cell, catalog id): one
    listing per zone for the whole run, each acquisition then gets its own chips at no cost."""
    found: dict[tuple[int, str, str], set[str]] = {}
    for zone in zones:
        prefix = dest if zone == flat_zone else dest / str(zone)  # chip_folder, for a store
        for path, _, _ in prefix.files():
            name = path.name
            if "/" in path.relative_to(prefix) or not name.endswith(".jpg"):
                continue
            try:
                z, quadkey, catalog_id = grid.parse_chip_name(name)
            except ImagesimError:
                continue  # not a chip of ours: left alone
            found.setdefault((z, quadkey[: grid.CELL_ZOOM], catalog_id), set()).add(name)
    return found


def chip_one_cog(
    acq: Acquisition,
    folder: AnyPath,
    settings: ChipSettings,
    known: set[str],
    overwrite: bool,
    existing: set[str] | None = None,
    *,
    threads: int,
    progress: _rs.Progress | None = None,
) -> dict:
    """Chip one COG into ``folder`` (the Rust core): ``DEST/<zone>/``, or DEST itself for a DEST named
    after the zone (:func:`imagesim.artefacts.chip_folder`); the per-chip columns it returns become
    manifest rows. ``known``: chips the manifest already records (skipped when on disk).
    ``existing``: chip files already at the destination, when it was listed (stores)."""
    return _rs.chip_cog(
        acq.visual,
        acq.zone,
        acq.cell,
        acq.catalog_id,
        folder,
        zoom=settings.zoom,
        quality=settings.quality,
        passthrough=settings.passthrough,
        nodata_threshold=settings.nodata_threshold,
        overwrite=overwrite,
        skip_empty=settings.skip_empty,
        measure=settings.measure,
        known=known,
        existing=existing,
        threads=threads,
        progress=progress,
    )


def chip_cog_task(
    acq: Acquisition,
    folder: AnyPath,
    settings: ChipSettings,
    known: set[str],
    overwrite: bool,
    existing: set[str] | None = None,
    *,
    progress: _rs.Progress | None = None,
) -> dict:
    """The task of one COG (in process or on a Dask worker): :func:`chip_one_cog` with the task's
    share of the cores, then the COG's ARD mask fractions (``MASKS_KEY``; skipped when no chip was
    measured); ``progress`` counts its chips as they are done (in process only)."""
    result = chip_one_cog(acq, folder, settings, known, overwrite, existing, threads=worker_threads(settings.proc), progress=progress)
    if any(status in ("written", "measured", "empty") for status in result["status"]):
        result[MASKS_KEY] = safe_fractions(acq, settings.zoom)
    return result


def _tally(summary: ChipSummary, cols: dict, chip_errors: list[dict], acq: Acquisition) -> None:
    for chip, status, error in zip(cols["chip"], cols["status"], cols["error"]):
        if status == "written":
            summary.written += 1
        elif status == "skipped":
            summary.skipped += 1
        elif status == "measured":
            summary.measured += 1
        elif status == "empty":
            summary.empty += 1
        else:
            summary.failed_chips += 1
            chip_errors.append({"chip": chip, "cog": str(acq.visual), "error": error})
