"""`imagesim chip`: every ARD `-visual.tif` into JPEG chips on the quadkey grid.

Each COG is one call into Rust (GIL released, rayon fan-out); Python finds the COGs, keeps the
manifest ``chips.parquet`` and the error report ``chip-errors.json``, and draws the progress bar.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import operator
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

from imagesim import _imagesim as _rs
from imagesim import grid, options
from imagesim.artefacts import (
    CHIP_ERRORS,
    CHIPS_MANIFEST,
    MANIFEST_ORDER,
    MANIFEST_TYPES,
    MASK_FRACTION_COLUMNS,
    chip_folder,
    iter_manifest_columns,
    nodata_class,
    valid_fraction,
    zone_folder,
)
from imagesim.errors import ImagesimError
from imagesim.fsutil import abandoned, atomic_path, work_folder, write_json
from imagesim.geoparquet import GeoColumnsStream
from imagesim.imagery.ard import Acquisition, Misplaced, find_acquisitions
from imagesim.imagery.masks import MaskFractions, MaskNote, preload_geometry, safe_fractions
from imagesim.progress import ProgressFactory, open_progress
from imagesim.runner import Outcome, TaskRunner, cores, worker_threads
from imagesim.storage import AnyPath, StorePath, location
from imagesim.tables import iter_columns_or_nulls

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


# A chip's statuses that make a manifest row (measured this run); "skipped" and "failed" do not.
_MEASURED = ("written", "measured", "empty")


def _records(acq: Acquisition, cols: dict, settings: ChipSettings, masks: MaskFractions | None = None) -> Columns:
    """Manifest rows (MANIFEST_TYPES) for the chips of one COG that were measured this run, with their mask fractions."""
    keep = [i for i, status in enumerate(cols["status"]) if status in _MEASURED]
    n = len(keep)

    def pick(name: str) -> list[Any]:
        values = cols[name]
        return [values[i] for i in keep]

    quadkeys, widths, heights, nodata = pick("quadkey"), pick("width"), pick("height"), pick("nodata_pixels")
    totals = [w * h for w, h in zip(widths, heights)]
    size, mtime = source_stamp(acq)
    rows: Columns = {
        "chip": pick("chip"),
        "zone": [acq.zone] * n,
        "quadkey": quadkeys,
        "zoom": [settings.zoom] * n,
        "cell": [acq.cell] * n,
        "catalog_id": [acq.catalog_id] * n,
        "acquisition_date": [acq.date] * n,
        "source_cog": [str(acq.visual)] * n,
        "source_size": [size] * n,
        "source_mtime_ns": [mtime] * n,
        "col_off": pick("col_off"),
        "row_off": pick("row_off"),
        "width": widths,
        "height": heights,
        "nodata_pixels": nodata,
        "nodata_threshold": [settings.nodata_threshold] * n,
        "valid_fraction": [valid_fraction(px, total) for px, total in zip(nodata, totals)],
        "nodata_class": [nodata_class(px, total, settings.min_nodata_pixels) for px, total in zip(nodata, totals)],
        "written": [status != "empty" for status in pick("status")],
        "encoding": pick("encoding"),
        "bytes": pick("bytes"),
    }
    at = {qk: j for j, qk in enumerate(masks.columns["quadkey"])} if masks is not None else {}
    where = [at.get(qk) for qk in quadkeys]
    for column in MASK_FRACTION_COLUMNS.values():
        fractions = masks.columns[column] if masks is not None else None
        rows[column] = [None if fractions is None or j is None else fractions[j] for j in where]
    return rows


def source_stamp(acq: Acquisition) -> tuple[int, int]:
    """(size, mtime) of a COG: chips recorded against another stamp are stale."""
    st = acq.visual.stat()
    return st.st_size, st.st_mtime_ns


# Rows per row group of chips.parquet.
MANIFEST_ROW_GROUP = 16_384
PARTS_PREFIX = f".{CHIPS_MANIFEST}.parts-"
_SEP = "\x01"  # below every character of a zone, cell, date or catalog id: joined keys sort as the tuples do
# Rows as columns: {column: list}, all of one length (the manifest is kept without polars: `imagesim chip`
# starts in a fraction of polars' import time; see imagesim.tables).
Columns = dict[str, list[Any]]


def _acquisition_key(zone: int | None, cell: str | None, date: str | None, catalog_id: str | None) -> str:
    """A string that sorts as (zone, cell, acquisition_date, catalog_id) do, nulls first."""
    return _SEP.join(("" if zone is None else f"{zone:02d}", cell or "", date or "", catalog_id or ""))


def _runs(cols: Columns) -> tuple[list[int], list[str]]:
    """The acquisitions of a slice of manifest rows, as runs of consecutive rows of one (zone, cell, date,
    catalog id): where each starts (then the slice's length) and its :func:`_acquisition_key`. The work per
    row is done at C speed; a manifest's rows come an acquisition (~1,024 chips) at a time."""
    columns = [cols[name] for name in ("zone", "cell", "acquisition_date", "catalog_id")]
    n = len(columns[0])
    if not n:
        return [0], []
    changes: set[int] = set()  # rows whose acquisition differs from the row before (no tuple a row: no GC work)
    for values in columns:
        changes.update(itertools.compress(range(1, n), map(operator.ne, values[1:], values[:-1])))
    starts = [0, *sorted(changes), n]
    return starts, [_acquisition_key(*(values[start] for values in columns)) for start in starts[:-1]]


_NOT_QUAD_DIGITS = str.maketrans("", "", "0123")
_BELOW_CELL = operator.itemgetter(slice(grid.CELL_ZOOM, None))  # a quadkey's digits below its cell


def _cell_indexes(quadkeys: Sequence[str | None], zoom: int) -> list[int]:
    """The positions in their cell of the chips of ``quadkeys`` at ``zoom`` (their digits below the cell,
    base 4); a quadkey of another zoom, or not one at all, is left out."""
    keys = cast("Sequence[str]", quadkeys)  # when None is not in them
    if None not in quadkeys and set(map(len, keys)) == {zoom}:  # the usual case, at C speed
        digits = list(map(_BELOW_CELL, keys))
    else:
        digits = [q[grid.CELL_ZOOM :] for q in quadkeys if q is not None and len(q) == zoom]
    if "".join(digits).translate(_NOT_QUAD_DIGITS):  # rare: some not base-4 digits, left out
        digits = [d for d in digits if not d.translate(_NOT_QUAD_DIGITS)]
    return list(map(int, digits, itertools.repeat(4))) if zoom > grid.CELL_ZOOM else [0] * len(digits)


def _rows(cols: Columns) -> int:
    return len(next(iter(cols.values()), []))


def _take(cols: Columns, order: Sequence[int]) -> Columns:
    """The rows ``order`` of ``cols``, in that order."""
    return {name: [values[i] for i in order] for name, values in cols.items()}


def _concat(parts: Sequence[Columns]) -> Columns:
    """The rows of ``parts`` one after the other (every part has the same columns)."""
    out: Columns = {name: [] for name in parts[0]} if parts else {}
    for part in parts:
        for name, values in out.items():
            values.extend(part[name])
    return out


def _sorted_by(cols: Columns, keys: Sequence[str]) -> Columns:
    """``cols`` sorted by the columns ``keys`` (stable, nulls first, as polars sorts)."""
    values = [cols[k] for k in keys]
    if len(keys) == 1:
        only = values[0]
        order = sorted(range(_rows(cols)), key=lambda i: (only[i] is not None, only[i] or ""))
    else:
        order = sorted(range(_rows(cols)), key=lambda i: tuple((v[i] is not None, v[i]) for v in values))
    return _take(cols, order)


def _set_bits(into: dict[tuple[int, str, str], bytearray], key: tuple[int, str, str], cells: int, positions: list[int]) -> None:
    bits = into.get(key)
    if bits is None:
        bits = into[key] = bytearray((cells + 7) // 8)
    for i in positions:
        bits[i >> 3] |= 1 << (i & 7)


def _bit_positions(bits: bytearray) -> Iterator[int]:
    for at, byte in enumerate(bits):
        if byte:
            yield from (at * 8 + j for j in range(8) if byte >> j & 1)


def _write_part(path: Path, cols: Columns) -> None:
    """One COG's rows (MANIFEST_TYPES) as the Parquet file ``path``, written whole or not at all."""
    writing = path.with_suffix(".writing")
    writer = _rs.ParquetWriter(writing, list(MANIFEST_TYPES.items()), MANIFEST_ROW_GROUP)
    try:
        writer.write([cols[name] for name in MANIFEST_TYPES])
    finally:
        writer.close()
    os.replace(writing, path)


def _read_part(path: Path) -> Columns:
    """A part file's rows as MANIFEST_TYPES columns (Nones for a column an older imagesim did not write)."""
    out: Columns = {name: [] for name in MANIFEST_TYPES}
    for got in iter_columns_or_nulls(path, list(MANIFEST_TYPES)):
        for name, values in out.items():
            values.extend(got[name])
    return out


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
    (derived from chip names, or from an older imagesim) is merged in memory instead, once. Rows are plain
    columns (:data:`Columns`) read and written by the Rust core.
    """

    def __init__(self, dest: AnyPath, zoom: int) -> None:
        self.dest = dest
        self.zoom = zoom
        self.cells = 4 ** (zoom - grid.CELL_ZOOM)  # chips per cell at this zoom
        self.known: dict[tuple[int, str, str], bytearray] = {}  # (zone, cell, catalog id) → one bit per chip
        self.stamps: dict[tuple[str, str], tuple[int | None, int | None]] = {}
        self.old_rows = 0
        self.old_sorted = True
        last = ""  # the (acquisition, quadkey) key of the last row read
        for batch in iter_manifest_columns(dest, ["zone", "cell", "acquisition_date", "catalog_id", "quadkey", "source_cog", *STAMP]):
            starts, keys = _runs(batch)
            self.old_rows += starts[-1]
            quadkeys = batch["quadkey"]
            for r, key in enumerate(keys if self.old_sorted else ()):
                run = quadkeys[starts[r] : starts[r + 1]]
                if None in run:
                    run = [q or "" for q in run]
                if key + _SEP + run[0] < last or not all(map(operator.le, run[:-1], run[1:])):
                    self.old_sorted = False
                    break
                last = key + _SEP + run[-1]
            self._record(batch, starts)
        self.new: dict[tuple[int, str, str], bytearray] = {}  # this run's chips, as self.known
        self.blocks: list[_Block] = []
        self.folder: Path | None = None

    def _record(self, rows: Columns, starts: list[int]) -> None:
        """Add the rows `imagesim chip` measured (a row derived from a chip name has no ``source_cog``) to the
        known chips and stamps (the first stamp of an acquisition wins); ``starts``: their :func:`_runs`."""
        cogs = rows["source_cog"]
        for start, end in itertools.pairwise(starts):
            picked = range(start, end) if None not in cogs[start:end] else [i for i in range(start, end) if cogs[i] is not None]
            if not picked:
                continue
            first = picked[0]
            self.stamps.setdefault((rows["cell"][first], rows["catalog_id"][first]), (rows[STAMP[0]][first], rows[STAMP[1]][first]))
            quadkeys = rows["quadkey"][start:end] if isinstance(picked, range) else [rows["quadkey"][i] for i in picked]
            self._mark(self.known, rows, first, quadkeys)

    def _mark(self, into: dict[tuple[int, str, str], bytearray], rows: Columns, first: int, quadkeys: Sequence[str | None]) -> None:
        """Set in ``into`` the bits of ``quadkeys`` (those of the run's zoom), chips of the acquisition of row ``first``."""
        key = (rows["zone"][first], rows["cell"][first], rows["catalog_id"][first])
        if None not in key:
            _set_bits(into, key, self.cells, _cell_indexes(quadkeys, self.zoom))

    def known_names(self, acq: Acquisition) -> set[str]:
        """Chips of one acquisition the manifest already records (at the run's zoom: the only chips it makes)."""
        bits = self.known.get((acq.zone, acq.cell, acq.catalog_id))
        if bits is None:
            return set()
        suffixes = _suffixes(self.zoom)
        prefix = f"Z{acq.zone}-{acq.cell}"
        return {f"{prefix}{suffixes[i]}_{acq.catalog_id}.jpg" for i in _bit_positions(bits)}

    def is_stale(self, acq: Acquisition) -> bool:
        """The COG changed (size or mtime) since its chips were recorded: they must be redone."""
        recorded = self.stamps.get((acq.cell, acq.catalog_id))
        if recorded is None or None in recorded:  # never recorded, or by an older imagesim
            return False
        return recorded != source_stamp(acq)

    def add(self, rows: Columns) -> None:
        """One COG's rows (MANIFEST_TYPES): written to a part file of their own, sorted by quadkey."""
        if _rows(rows) == 0:
            return
        rows = _sorted_by(rows, ["quadkey"])
        if self.folder is None:
            # Beside chips.parquet (hidden: no stage takes it for chips); a store's parts stay local.
            local = self.dest if isinstance(self.dest, Path) else None
            self.folder = work_folder(local, PARTS_PREFIX)
        part = self.folder / f"part-{len(self.blocks):05d}.parquet"
        _write_part(part, rows)  # written under another name, then renamed: a part file is whole or absent
        starts, keys = _runs(rows)
        self.blocks.append(_Block(keys[0], part))
        for start, end in itertools.pairwise(starts):  # one acquisition (recover_parts, add: one COG's rows)
            self._mark(self.new, rows, start, rows["quadkey"][start:end])

    def discard(self) -> None:
        """Remove the part files (after :meth:`flush`, or when the run ends without writing)."""
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None

    def flush(self) -> None:
        """Merge this run's rows into ``chips.parquet`` (atomically); nothing to do when there are none."""
        if not self.blocks:
            return
        merged = self._merged() if self.old_sorted else self._merged_in_memory()
        with atomic_path(self.dest / CHIPS_MANIFEST) as tmp, GeoColumnsStream(tmp, MANIFEST_TYPES, row_group=MANIFEST_ROW_GROUP) as out:
            for rows in merged:
                if _rows(rows):
                    out.write(rows)

    def _block_rows(self, blocks: list[_Block]) -> list[Columns]:
        return [_read_part(b.part) for b in blocks]

    def _old_rows(self) -> Iterator[tuple[list[int], list[str], Columns]]:
        """The old manifest's rows, a slice at a time with its :func:`_runs`, less the chips this run
        recorded again (its rows replace them)."""
        for batch in iter_manifest_columns(self.dest, list(MANIFEST_TYPES)):
            starts, keys = _runs(batch)
            drop: set[int] = set()
            for start, end in itertools.pairwise(starts):
                bits = self.new.get((batch["zone"][start], batch["cell"][start], batch["catalog_id"][start]))
                if bits is not None:
                    drop.update(i for i in range(start, end) if self._replaced(bits, batch["quadkey"][i]))
            if drop:
                batch = _take(batch, [i for i in range(starts[-1]) if i not in drop])
                starts, keys = _runs(batch)
            yield starts, keys, batch

    def _replaced(self, bits: bytearray, quadkey: str | None) -> bool:
        """This run recorded the chip again (``bits``: its acquisition's new chips): its new row replaces the old."""
        at = _cell_indexes([quadkey], self.zoom)
        return bool(at) and bool(bits[at[0] >> 3] >> (at[0] & 7) & 1)

    def _merged(self) -> Iterator[Columns]:
        """Old rows and this run's blocks in manifest order, a slice or an acquisition at a time."""
        old = _Cursor(self._old_rows())
        blocks = sorted(self.blocks, key=lambda b: b.key)  # stable: an acquisition's blocks in run order
        for key, same in itertools.groupby(blocks, key=lambda b: b.key):
            yield from old.below(key)
            yield _sorted_by(_concat([*old.upto(key), *self._block_rows(list(same))]), ["quadkey"])
        yield from old.below(None)

    def _merged_in_memory(self) -> Iterator[Columns]:
        """A manifest not in order (derived, or older): old and new rows sorted in memory, once."""
        rows = _concat([cols for _, _, cols in self._old_rows()] + self._block_rows(self.blocks))
        yield _sorted_by(rows, MANIFEST_ORDER)


class _Cursor:
    """Rows of sorted slices (each with its :func:`_runs`), handed out up to an acquisition key."""

    def __init__(self, slices: Iterator[tuple[list[int], list[str], Columns]]) -> None:
        self.slices = slices
        self.starts: list[int] = [0]
        self.keys: list[str] = []
        self.cols: Columns = {}
        self.at = 0  # rows of the current slice handed out

    def _take(self, key: str | None, find: Callable[..., int]) -> Iterator[Columns]:
        while True:
            if self.at == self.starts[-1]:
                got = next(self.slices, None)
                if got is None:
                    return
                self.starts, self.keys, self.cols = got
                self.at = 0
                continue
            end = self.starts[-1] if key is None else max(self.at, self.starts[find(self.keys, key)])
            if end > self.at:
                yield {name: values[self.at : end] for name, values in self.cols.items()}
            self.at = end
            if self.at < self.starts[-1]:
                return

    def below(self, key: str | None) -> Iterator[Columns]:
        """Rows whose acquisition key sorts before ``key`` (None: every row left)."""
        return self._take(key, bisect.bisect_left)

    def upto(self, key: str) -> Iterator[Columns]:
        """Rows whose acquisition key is ``key`` (after :meth:`below` of it)."""
        return self._take(key, bisect.bisect_right)


@functools.cache
def _suffixes(zoom: int) -> list[str]:
    """The quadkey digits below the cell of every chip of a cell at ``zoom``, by position (base 4)."""
    suffixes = [""]
    for _ in range(zoom - grid.CELL_ZOOM):
        suffixes = [s + digit for s in suffixes for digit in "0123"]
    return suffixes


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
                    rows = _read_part(part)
                except Exception:  # noqa: BLE001 - no footer, or not Parquet at all: its chips are cut again
                    continue
                # one COG's rows a file (an older imagesim: one a row group, several a file)
                acquisitions: dict[tuple[Any, ...], list[int]] = {}
                for i, key in enumerate(zip(rows["zone"], rows["cell"], rows["acquisition_date"], rows["catalog_id"])):
                    acquisitions.setdefault(key, []).append(i)
                for picked in acquisitions.values():
                    quadkey = rows["quadkey"][picked[0]]
                    zoom = len(quadkey) if quadkey is not None else -1
                    if manifest is None:
                        manifest = _Manifest(dest, zoom)
                    if zoom == manifest.zoom:
                        manifest.add(_take(rows, picked))
                        recovered += len(picked)
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
    if tasks.local:
        preload_geometry()  # the mask fractions' imports, while the first COG is chipped
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
        manifest.add(_records(acq, outcome.result, settings, masks))

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
