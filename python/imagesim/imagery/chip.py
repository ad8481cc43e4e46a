"""`imagesim chip`: every ARD `-visual.tif` into JPEG chips on the quadkey grid.

Each COG is one call into Rust (GIL released, rayon fan-out); Python finds the COGs, keeps the
manifest ``chips.parquet`` and the error report ``chip-errors.json``, and draws the progress bar.
"""

from __future__ import annotations

import functools
import itertools
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl

from imagesim import _imagesim as _rs
from imagesim import grid, options
from imagesim.artefacts import (
    CHIP_ERRORS,
    CHIPS_MANIFEST,
    MANIFEST_ORDER,
    MANIFEST_SCHEMA,
    MASK_FRACTION_COLUMNS,
    chip_folder,
    iter_manifest,
    nodata_class_expr,
    recorded_by_chip,
    zone_folder,
)
from imagesim.errors import ImagesimError
from imagesim.fsutil import abandoned, atomic_path, work_folder, write_json
from imagesim.geoparquet import GeoParquetStream
from imagesim.imagery.ard import Acquisition, Misplaced, find_acquisitions
from imagesim.imagery.masks import MaskFractions, MaskNote, safe_fractions
from imagesim.progress import ProgressFactory, open_progress
from imagesim.runner import Outcome, TaskRunner, cores, worker_threads
from imagesim.storage import AnyPath, StorePath, location

# The key of a chip task's result that carries the COG's mask fractions (beside the Rust columns).
MASKS_KEY = "masks"
# The COG stamp columns of a manifest row: chips recorded against another (size, mtime) are stale.
STAMP = ["source_size", "source_mtime_ns"]


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
    recovered: int = 0  # records of chips a run killed outright had cut, merged into the manifest (recover_parts)
    notes: list[str] = field(default_factory=list)
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
            + (f"; {self.recovered} records of an interrupted run recovered" if self.recovered else "")
            + "".join(f"; {note}" for note in self.notes)
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


# Rows per row group of chips.parquet.
MANIFEST_ROW_GROUP = 16_384
PARTS_PREFIX = f".{CHIPS_MANIFEST}.parts-"
_SEP = "\x01"  # below every character of a zone, cell, date or catalog id: joined keys sort as the tuples do


def _acquisition_key() -> pl.Expr:
    """One string per row that sorts as (zone, cell, acquisition_date, catalog_id) do, nulls first."""
    parts = [pl.col("zone").cast(pl.String).str.zfill(2), pl.col("cell"), pl.col("acquisition_date"), pl.col("catalog_id")]
    return pl.concat_str([p.fill_null("") for p in parts], separator=_SEP)


def _cell_index(zoom: int) -> pl.Expr:
    """The position of a chip in its cell at ``zoom`` (its quadkey's digits below the cell, base 4)."""
    if zoom == grid.CELL_ZOOM:
        return pl.lit(0, pl.Int64)
    return pl.col("quadkey").str.slice(grid.CELL_ZOOM).str.to_integer(base=4, strict=False)


@dataclass
class _Block:
    """One COG's rows of this run: part file ``part``."""

    key: str  # _acquisition_key
    part: Path


class _Manifest:
    """The manifest being built, in memory flat in the number of chips.

    The manifest already there is read once, a slice at a time, into what the run needs of it: which chips
    each acquisition has recorded (at the run's zoom, one bit per chip) and its COG's stamp. This run's rows
    go to Parquet part files in a hidden folder (each COG's rows a file, complete once :meth:`add` returns, so
    a run killed outright loses no COG it finished: :func:`recover_parts`); :meth:`flush` merges them
    with the old rows into ``chips.parquet`` (written atomically, one row group at a time) in its order
    (MANIFEST_ORDER): both are sorted by acquisition, so the merge streams. A manifest not in that order
    (derived from chip names, or from an older imagesim) is merged in memory instead, once.
    """

    def __init__(self, dest: AnyPath, zoom: int) -> None:
        self.dest = dest
        self.zoom = zoom
        self.cells = 4 ** (zoom - grid.CELL_ZOOM)  # chips per cell at this zoom
        self.known: dict[tuple[int, str, str], np.ndarray] = {}  # (zone, cell, catalog id) → packed bits
        self.stamps: dict[tuple[str, str], tuple[int | None, int | None]] = {}
        self.old_rows = 0
        self.old_sorted = True
        last: str | None = None
        for batch in iter_manifest(dest, ["zone", "cell", "acquisition_date", "catalog_id", "quadkey", "source_cog", *STAMP]):
            self.old_rows += batch.height
            keys = batch.select(pl.concat_str(_acquisition_key(), pl.col("quadkey").fill_null(""), separator=_SEP)).to_series()
            if self.old_sorted and keys.len():
                self.old_sorted = keys.is_sorted() and (last is None or last <= keys[0])
                last = keys[-1]
            self._record(recorded_by_chip(batch))
        self.new: dict[tuple[int, str, str], np.ndarray] = {}  # this run's chips, as self.known
        self.blocks: list[_Block] = []
        self.folder: Path | None = None

    def _record(self, rows: pl.DataFrame) -> None:
        """Add a manifest's recorded rows to the known chips and stamps (the first stamp of an acquisition wins)."""
        for cell, catalog_id, size, mtime in (
            rows.group_by(["cell", "catalog_id"], maintain_order=True).agg(pl.col(STAMP).first()).iter_rows()
        ):
            self.stamps.setdefault((cell, catalog_id), (size, mtime))
        self._mark(self.known, rows)

    def _mark(self, into: dict[tuple[int, str, str], np.ndarray], rows: pl.DataFrame) -> None:
        """Set the bits of ``rows``' chips (those of the run's zoom) in ``into``."""
        at_zoom = rows.filter(pl.col("quadkey").str.len_bytes() == self.zoom).select(
            "zone", "cell", "catalog_id", _cell_index(self.zoom).alias("i")
        )
        for zone, cell, catalog_id, idx in at_zoom.drop_nulls().group_by(["zone", "cell", "catalog_id"]).agg("i").iter_rows():
            key = (zone, cell, catalog_id)
            bits = np.unpackbits(into[key], count=self.cells) if key in into else np.zeros(self.cells, np.uint8)
            bits[np.asarray(idx, np.int64)] = 1
            into[key] = np.packbits(bits)

    def known_names(self, acq: Acquisition) -> set[str]:
        """Chips of one acquisition the manifest already records (at the run's zoom: the only chips it makes)."""
        packed = self.known.get((acq.zone, acq.cell, acq.catalog_id))
        if packed is None:
            return set()
        suffixes = _suffixes(self.zoom)
        prefix = f"Z{acq.zone}-{acq.cell}"
        return {f"{prefix}{suffixes[i]}_{acq.catalog_id}.jpg" for i in np.flatnonzero(np.unpackbits(packed, count=self.cells))}

    def is_stale(self, acq: Acquisition) -> bool:
        """The COG changed (size or mtime) since its chips were recorded: they must be redone."""
        recorded = self.stamps.get((acq.cell, acq.catalog_id))
        if recorded is None or None in recorded:  # never recorded, or by an older imagesim
            return False
        return recorded != source_stamp(acq)

    def add(self, frame: pl.DataFrame) -> None:
        """One COG's rows: written to a part file of their own, sorted by quadkey."""
        if frame.height == 0:
            return
        frame = frame.sort("quadkey", maintain_order=True)
        if self.folder is None:
            # Beside chips.parquet (hidden: no stage takes it for chips); a store's parts stay local.
            local = self.dest if isinstance(self.dest, Path) else None
            self.folder = work_folder(local, PARTS_PREFIX)
        part = self.folder / f"part-{len(self.blocks):05d}.parquet"
        # written under another name, then renamed: a part file is whole or absent (polars: no pyarrow import)
        frame.write_parquet(part.with_suffix(".writing"), compression="zstd")
        os.replace(part.with_suffix(".writing"), part)
        self.blocks.append(_Block(frame.select(_acquisition_key()).item(0, 0), part))
        self._mark(self.new, frame)

    def discard(self) -> None:
        """Remove the part files (after :meth:`flush`, or when the run ends without writing)."""
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None

    def flush(self) -> None:
        """Merge this run's rows into ``chips.parquet`` (atomically); nothing to do when there are none."""
        if not self.blocks:
            return
        rows = self._merged() if self.old_sorted else self._merged_in_memory()
        with atomic_path(self.dest / CHIPS_MANIFEST) as tmp, GeoParquetStream(tmp, row_group=MANIFEST_ROW_GROUP) as out:
            for frame in rows:
                out.write(frame.select(list(MANIFEST_SCHEMA)))

    def _block_rows(self, blocks: list[_Block]) -> list[pl.DataFrame]:
        return [pl.read_parquet(b.part).cast(MANIFEST_SCHEMA) for b in blocks]  # type: ignore[arg-type]

    def _old_rows(self) -> Iterator[pl.DataFrame]:
        """The old manifest's rows, a slice at a time, less the chips this run recorded again (its rows replace them)."""
        for batch in iter_manifest(self.dest):
            keyed = batch.with_columns(_acquisition_key().alias("_key"))
            candidates = (
                keyed.select("zone", "cell", "catalog_id", _cell_index(self.zoom).alias("i"))
                .with_row_index("row")
                .filter((batch["quadkey"].str.len_bytes() == self.zoom) & pl.col("i").is_not_null())
            )
            drop = np.zeros(batch.height, bool)
            for (zone, cell, catalog_id), group in candidates.group_by(["zone", "cell", "catalog_id"]):
                packed = self.new.get((zone, cell, catalog_id))
                if packed is not None:
                    bits = np.unpackbits(packed, count=self.cells).astype(bool)
                    drop[group["row"].to_numpy()] = bits[group["i"].to_numpy()]
            yield keyed.filter(pl.Series(~drop)) if drop.any() else keyed

    def _merged(self) -> Iterator[pl.DataFrame]:
        """Old rows and this run's blocks in manifest order, a slice or an acquisition at a time."""
        old = _Cursor(self._old_rows())
        blocks = sorted(self.blocks, key=lambda b: b.key)  # stable: an acquisition's blocks in run order
        for key, same in itertools.groupby(blocks, key=lambda b: b.key):
            yield from old.below(key)
            frames = [*old.upto(key), *self._block_rows(list(same))]
            yield pl.concat(frames, how="vertical_relaxed").sort("quadkey", maintain_order=True)
        yield from old.below(None)

    def _merged_in_memory(self) -> Iterator[pl.DataFrame]:
        """A manifest not in order (derived, or older): old and new rows sorted in memory, once."""
        frames = [f.drop("_key") for f in self._old_rows()] + self._block_rows(self.blocks)
        yield pl.concat(frames, how="vertical_relaxed").sort(MANIFEST_ORDER, maintain_order=True)


class _Cursor:
    """Rows of sorted slices (a ``_key`` column), handed out up to a key."""

    def __init__(self, slices: Iterator[pl.DataFrame]) -> None:
        self.slices = slices
        self.buf: pl.DataFrame | None = None

    def _take(self, key: str | None, side: Literal["left", "right"]) -> Iterator[pl.DataFrame]:
        while True:
            if self.buf is None or self.buf.height == 0:
                self.buf = next(self.slices, None)
                if self.buf is None:
                    return
                continue
            n = self.buf.height if key is None else int(self.buf["_key"].search_sorted(key, side=side))
            if n:
                yield self.buf[:n].drop("_key")
            self.buf = self.buf[n:]
            if self.buf.height:
                return

    def below(self, key: str | None) -> Iterator[pl.DataFrame]:
        """Rows whose key sorts before ``key`` (None: every row left)."""
        return self._take(key, "left")

    def upto(self, key: str) -> Iterator[pl.DataFrame]:
        """Rows whose key is ``key`` (after :meth:`below` of it)."""
        return self._take(key, "right")


@functools.cache
def _suffixes(zoom: int) -> list[str]:
    """The quadkey digits below the cell of every chip of a cell at ``zoom``, by position (base 4)."""
    depth = zoom - grid.CELL_ZOOM
    return [np.base_repr(i, 4).zfill(depth) if depth else "" for i in range(4**depth)]


def recover_parts(dest: AnyPath) -> tuple[int, list[str]]:
    """Merge into ``chips.parquet`` the rows a run killed outright (SIGKILL, out of memory, power) left in its
    part folder ``DEST/.chips.parquet.parts-*``, then remove the folder: those chips are on disk and need not
    be cut again. A part file cut short (no footer: written by an older imagesim when the run died) is left
    out (its chips are cut again). Returns (rows recovered, notes about folders left alone: another run is
    writing them)."""
    if not isinstance(dest, Path):
        return 0, []
    gone, busy = abandoned(dest, PARTS_PREFIX)
    recovered = 0
    notes = [f"{folder}: another imagesim chip run is writing to {dest}; its records are left to it" for folder in busy]
    for folder in gone:
        manifest: _Manifest | None = None  # one run, one zoom: rows of another are no part of it
        try:
            for part in sorted(folder.glob("part-*.parquet")):
                try:
                    rows = pl.read_parquet(part)
                except Exception:  # noqa: BLE001 - no footer, or not Parquet at all: its chips are cut again
                    continue
                # one COG's rows a file (an older imagesim: one a row group, several a file)
                for frame in rows.partition_by(["zone", "cell", "acquisition_date", "catalog_id"], maintain_order=True):
                    if frame.height == 0:
                        continue
                    zoom = len(frame["quadkey"][0])
                    if manifest is None:
                        manifest = _Manifest(dest, zoom)
                    if zoom == manifest.zoom:
                        manifest.add(frame.cast(MANIFEST_SCHEMA))  # type: ignore[arg-type]
                        recovered += frame.height
            if manifest is not None:
                manifest.flush()
        finally:
            if manifest is not None:
                manifest.discard()
        shutil.rmtree(folder, ignore_errors=True)
    return recovered, notes


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
    summary.recovered, summary.notes = recover_parts(out)
    manifest = _Manifest(out, settings.zoom)
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
        try:
            manifest.flush()
        finally:
            manifest.discard()
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
