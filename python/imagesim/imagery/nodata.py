"""`imagesim nodata-index`: classify every chip as all_data, partial_data or no_data.

Three sources of truth:

- ``pixels``: decode every chip JPEG in Rust (libjpeg-turbo, parallel, GIL released) and apply the
  full-pixel rule — a pixel is no-data when all bands are <= ``nodata_threshold``; a chip is
  ``no_data`` when every pixel is, ``partial_data`` from ``min_nodata_pixels`` no-data pixels on,
  else ``all_data``. In process this is one call per ``CHUNK`` chips; on Dask (``scheduler``) one task
  per ``BATCH`` chips (see :mod:`imagesim.runner`).
- ``manifest``: the counts `imagesim chip` measured on the source COG pixels (instant; exact
  w.r.t. the COG rather than the chip JPEG). Chips the manifest does not measure fall back to pixels.
- ``mask``: intersect each chip's footprint with its delivery's ``-data-mask.gpkg`` (no decoding).

Writes the original JSON index (``{"all_data": [...], "partial_data": [...], "no_data": [...]}``,
chip file names), ``nodata.parquet`` with per-chip counts, and a summary JSON listing skipped
and failed files. Chips are never modified. Chips are measured ``CHUNK`` at a time into part files (a
hidden folder beside the index) and the outputs written from those, so memory stays flat in the number
of chips.

A chip that does not decode fails with one line in the words every command uses (the Rust core's
``jpeg::Problem``): empty file, truncated JPEG, not a JPEG, unsupported colour space (CMYK/YCCK),
corrupt JPEG data. A chip that decodes but is not what `imagesim chip` writes — greyscale, or not
its zoom's size (a z17 chip is 512×512) — is measured exactly and gets a ``note``. A directory
named like a JPEG is skipped (not searched) and said so.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import json
import os
import pickle
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imagesim import _imagesim as _rs
from imagesim import grid, options
from imagesim.artefacts import (
    CHIP_FOLDER_FILES,
    CHIPS_MANIFEST,
    NODATA_CLASSES,
    NODATA_INDEX,
    NODATA_PARQUET,
    iter_manifest_columns,
    manifest_is_derived,
    nodata_class,
    nodata_summary_name,
    valid_fraction,
)
from imagesim.errors import (
    GridError,
    ImagesimError,
    ImagesimFileNotFoundError,
    InvalidArgumentError,
    OutputExistsError,
)
from imagesim.fsutil import abandoned, atomic_path, work_folder, write_json
from imagesim.geoparquet import GeoColumnsStream
from imagesim.progress import ProgressFactory, ProgressSink, open_progress
from imagesim.runner import Outcome, TaskRunner, worker_threads
from imagesim.storage import AnyPath, StorePath, is_url, location

SOURCES = options.NODATA_SOURCES
JPEG_SUFFIXES = (".jpg", ".jpeg")
BATCH = 2000  # chips per Dask task with a `scheduler` (in process: one task per CHUNK)
# Chips measured at a time, then set down in a part file: what memory holds of them (in process; on Dask
# enough for DASK_TASKS tasks of BATCH chips in flight).
CHUNK = 8_192
DASK_TASKS = 32
PARQUET_ROW_GROUP = 16_384  # rows per row group of nodata.parquet
# The columns of nodata.parquet (beside its geometry and bbox), {column: dtype name} (imagesim.tables):
# written by the Rust core, so this command never imports polars (~0.3 s of its start-up).
TABLE_TYPES: dict[str, str] = {
    "chip": "str",
    "path": "str",
    "nodata_pixels": "u64",
    "total_pixels": "u64",
    "valid_fraction": "f64",
    "nodata_class": "str",
    "source": "str",
    "note": "str",
    "error": "str",
}
# Rows as columns: {column: list}, all of one length.
Rows = dict[str, list[Any]]


@dataclass
class NodataSettings:
    filename: str = NODATA_INDEX
    overwrite: bool = True
    proc: int = options.PROC_ALL
    nodata_threshold: int = options.NODATA_THRESHOLD
    min_nodata_pixels: int = options.MIN_NODATA_PIXELS
    source: str | None = None  # None: manifest when the chip folder has one, else pixels
    ard_path: str | Path | None = None  # where to find data masks for source=mask without a manifest

    def check(self) -> None:
        if self.source is not None:
            options.check_choice("source", self.source, options.NODATA_SOURCES)
        options.check_range("nodata_threshold", self.nodata_threshold, *options.NODATA_THRESHOLD_RANGE)
        options.check_range("min_nodata_pixels", self.min_nodata_pixels, *options.MIN_NODATA_PIXELS_RANGE)
        options.check_range("proc", self.proc, *options.PROC_RANGE, what="worker threads (0: all cores)")


@dataclass
class NodataSummary:
    index: AnyPath
    parquet: AnyPath
    summary: AnyPath
    source: str
    counts: dict[str, int] = field(default_factory=dict)
    failed: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    skipped_dirs: list[str] = field(default_factory=list)  # directories named like a JPEG: not searched
    notes: list[tuple[str, str]] = field(default_factory=list)  # measured, but greyscale or the wrong size
    by_source: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def chips(self) -> int:
        return sum(self.counts.values()) + len(self.failed)

    def line(self) -> str:
        rate = self.chips / self.seconds if self.seconds > 0 else 0.0
        parts = ", ".join(f"{self.counts.get(c, 0)} {c}" for c in NODATA_CLASSES)
        dirs = f", {len(self.skipped_dirs)} directories named like a JPEG skipped" if self.skipped_dirs else ""
        notes = f", {len(self.notes)} with a note (greyscale or wrong size; see the summary)" if self.notes else ""
        return (
            f"{self.chips} chips: {parts}, {len(self.failed)} failed{notes}, {len(self.skipped)} non-JPEG files skipped{dirs} "
            f"(source {self.source}) in {self.seconds:.1f}s ({rate:.0f} chips/s)"
        )


def list_chip_files(chip_dir: AnyPath, index_name: str, dirs: list[AnyPath] | None = None) -> tuple[list[AnyPath], list[AnyPath]]:
    """JPEG files under ``chip_dir`` (recursively) and the other files that are skipped. Directories
    named like a JPEG (``x.jpg/``) are not searched; they are appended to ``dirs`` when given."""
    others: list[AnyPath] = []
    jpegs = list(iter_chip_files(chip_dir, index_name, others, dirs))
    return jpegs, others


def iter_chip_files(chip_dir: AnyPath, index_name: str, others: list[AnyPath], dirs: list[AnyPath] | None = None) -> Iterator[AnyPath]:
    """The JPEG files under ``chip_dir`` (recursively, in :func:`list_chip_files`' order) one at a time;
    the other files are appended to ``others``, directories named like a JPEG to ``dirs`` when given."""
    if isinstance(chip_dir, StorePath):
        for path, _, _ in chip_dir.files():
            rel = path.relative_to(chip_dir)
            if any(part.startswith(".") for part in rel.split("/")) or rel in _own_files(index_name):
                continue
            if rel.lower().endswith(JPEG_SUFFIXES):
                yield path
            else:
                others.append(path)
        return
    for folder, name in _walk_jpegs(chip_dir, index_name, others, dirs):
        yield folder / name


def count_chip_files(chip_dir: AnyPath, index_name: str, others: list[AnyPath], dirs: list[AnyPath] | None = None) -> int:
    """How many files :func:`iter_chip_files` yields (a folder is walked without making a path per chip)."""
    if isinstance(chip_dir, StorePath):
        return sum(1 for _ in iter_chip_files(chip_dir, index_name, others, dirs))
    return sum(1 for _ in _walk_jpegs(chip_dir, index_name, others, dirs))


def _own_files(index_name: str) -> set[str]:
    return CHIP_FOLDER_FILES | {index_name, nodata_summary_name(index_name)}


def _walk_jpegs(chip_dir: Path, index_name: str, others: list[AnyPath], dirs: list[AnyPath] | None) -> Iterator[tuple[Path, str]]:
    """(folder, file name) of each JPEG under a local ``chip_dir``, folders and names sorted."""
    own = _own_files(index_name)
    for dirpath, dirnames, filenames in os.walk(chip_dir):
        here = Path(dirpath)
        top = here == chip_dir
        if dirs is not None:
            dirs.extend(here / d for d in sorted(dirnames) if d.lower().endswith(JPEG_SUFFIXES) and not d.startswith("."))
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and not d.lower().endswith(JPEG_SUFFIXES))
        for name in sorted(filenames):
            if name.startswith(".") or (top and name in own):
                continue
            if name.lower().endswith(JPEG_SUFFIXES):
                yield here, name
            else:
                others.append(here / name)


def _by_pixels(paths: list[AnyPath], settings: NodataSettings, tasks: TaskRunner, sink: ProgressSink, done_before: int) -> Rows:
    """Counts of ``paths`` from their decoded pixels: in process one Rust scan over every path (its
    own threads, progress per chip), on Dask one task per ``BATCH`` paths; rows in ``paths`` order.

    A batch that fails for good (an error of the scanner, retries spent, workers lost) gives its chips
    that error, so they are reported as failed chips like unreadable JPEGs are.
    """
    names = [str(tasks.task_path(p)) for p in paths]
    step = len(names) if tasks.local else BATCH
    batches = [(i, names[i : i + step]) for i in range(0, len(names), max(1, step))]
    parts: dict[int, dict[str, list]] = {}

    def merge(outcome: Outcome[tuple[int, list[str]]]) -> None:
        start, batch = outcome.item
        if outcome.error is None:
            parts[start] = outcome.result
            return
        n = len(batch)
        parts[start] = {
            "width": [None] * n,
            "height": [None] * n,
            "nodata_pixels": [None] * n,
            "note": [None] * n,
            "error": [f"{p}: {outcome.error}" for p in batch],
        }

    with tasks.run(
        scan_batch_task,
        batches,
        lambda b: (b[1], settings.nodata_threshold, settings.proc),
        name="imagesim-nodata",
        counter=_rs.Progress(),
        units=lambda b: len(b[1]),
        on_progress=lambda n: sink.update(done_before + n),
    ) as outcomes:
        for outcome in outcomes:
            merge(outcome)
    keys = ("width", "height", "nodata_pixels", "note", "error")
    cols = {key: [v for start in sorted(parts) for v in parts[start][key]] for key in keys}
    return {
        "path": [str(p) for p in paths],
        "nodata_pixels": cols["nodata_pixels"],
        "total_pixels": [_area(w, h) for w, h in zip(cols["width"], cols["height"])],
        "note": cols["note"],
        "error": cols["error"],
        "source": ["pixels"] * len(paths),
    }


def _area(width: int | None, height: int | None) -> int | None:
    return None if width is None or height is None else width * height


def scan_batch_task(
    paths: list[str | os.PathLike[str]], threshold: int, proc: int, *, progress: _rs.Progress | None = None
) -> dict[str, list]:
    """The task of a batch of chips (in process or on a Dask worker): the Rust scanner, decoding and
    counting with the task's share of the cores; ``progress`` counts its chips (in process only)."""
    return _rs.scan_jpeg_files(paths, threshold=threshold, threads=worker_threads(proc), progress=progress)


def _manifest_counts(chip_dir: AnyPath, threshold: int) -> dict[str, tuple[int | None, int | None]]:
    """The counts chips.parquet measured, ``{chip name: (nodata_pixels, total_pixels)}`` (the latest row
    wins; Nones where it measured none): only the columns a lookup needs, the manifest read a slice at a
    time by the Rust core. Memory: ~200 bytes a chip (0.6 GB for 3 million chips)."""
    used: set[int] = set()
    counts: dict[str, tuple[int | None, int | None]] = {}
    for batch in iter_manifest_columns(chip_dir, ["chip", "nodata_pixels", "width", "height", "nodata_threshold"]):
        for name, nodata, width, height, measured_with in zip(
            batch["chip"], batch["nodata_pixels"], batch["width"], batch["height"], batch["nodata_threshold"]
        ):
            counts[name] = (nodata, _area(width, height))
            if nodata is not None and measured_with is not None:
                used.add(measured_with)
    if used and used != {threshold}:
        other = min(used - {threshold})
        raise InvalidArgumentError(
            f"{chip_dir / CHIPS_MANIFEST} was measured with `nodata_threshold` {other}; pass `nodata_threshold` {other} or `source` pixels",
            param="nodata_threshold",
        )
    return counts


class _MaskLookup:
    """Data-mask polygons of each acquisition, read once, and chip footprint coverage."""

    def __init__(self, chip_dir: AnyPath, ard_path: str | Path | None) -> None:
        import shapely

        self.shapely = shapely
        self.ard_path = ard_path
        # the COG of each acquisition (zone, cell, catalog id) the manifest records, its latest row winning:
        # one entry per acquisition, not per chip, the manifest read a slice at a time
        self.cogs: dict[tuple[int, str, str], str] = {}
        if (chip_dir / CHIPS_MANIFEST).exists():
            for batch in iter_manifest_columns(chip_dir, ["zone", "cell", "catalog_id", "source_cog"]):
                for zone, cell, catalog_id, cog in zip(batch["zone"], batch["cell"], batch["catalog_id"], batch["source_cog"]):
                    if None not in (zone, cell, catalog_id, cog):
                        self.cogs[(int(zone), str(cell), str(catalog_id))] = str(cog)
        self.masks: dict[AnyPath, object] = {}
        self.store_cogs: dict[tuple[int, str, str], str] | None = None

    def _cog_in_store(self, chip: str) -> str:
        """The COG of a chip in an ARD delivery in a store (listed once)."""
        if self.store_cogs is None:
            from imagesim.imagery.ard import find_acquisitions

            found, _ = find_acquisitions(str(self.ard_path))
            self.store_cogs = {(a.zone, a.cell, a.catalog_id): str(a.visual) for a in found}
        zone, quadkey, catalog_id = grid.parse_chip_name(chip)
        cog = self.store_cogs.get((zone, quadkey[: grid.CELL_ZOOM], catalog_id))
        if cog is None:
            raise ImagesimFileNotFoundError(f"{chip}: no -visual.tif for it under {self.ard_path}")
        return cog

    def mask_path(self, chip: str) -> AnyPath:
        try:
            zone, quadkey, catalog_id = grid.parse_chip_name(chip)
            cog = self.cogs.get((zone, quadkey[: grid.CELL_ZOOM], catalog_id))
        except ValueError:  # not a chip name: looked up (and reported) below
            cog = None
        if cog is None:
            if self.ard_path is None:
                raise ImagesimFileNotFoundError(f"{chip}: not in {CHIPS_MANIFEST}; pass `ard_path` to find its data mask")
            if is_url(str(self.ard_path)):
                cog = self._cog_in_store(chip)
            else:
                cog = str(grid.cog_path_from_chip(chip, self.ard_path))
        visual = location(cog)
        catalog_id = visual.name[: -len("-visual.tif")]
        return visual.with_name(f"{catalog_id}-data-mask.gpkg")

    def polygon(self, path: AnyPath, epsg: int):
        """The data mask ``path`` in EPSG ``epsg`` (read once; :func:`imagesim.imagery.masks.read_mask`)."""
        from imagesim.imagery.masks import read_mask  # only `source` mask reads GeoPackages

        if path not in self.masks:
            if not path.is_file():
                raise ImagesimFileNotFoundError(f"{path}: data mask not found")
            self.masks[path] = read_mask(path, epsg).geometry
        return self.masks[path]

    def coverage(self, chip: str) -> tuple[int, int]:
        """(no-data pixels, total pixels) of a chip from its footprint's share outside the mask."""
        zone, quadkey, _ = grid.parse_chip_name(chip)
        size = grid.CELL_PIXELS >> (len(quadkey) - grid.CELL_ZOOM)
        footprint = self.shapely.box(*grid.bounds(quadkey))
        inside = self.polygon(self.mask_path(chip), grid.epsg(quadkey, zone)).intersection(footprint).area / footprint.area
        total = size * size
        return round((1.0 - min(inside, 1.0)) * total), total


def _by_mask(names: list[str], lookup: _MaskLookup) -> Rows:
    nodata: list[int | None] = []
    totals: list[int | None] = []
    errors: list[str | None] = []
    for name in names:
        count: tuple[int | None, int | None] = (None, None)
        error = None
        try:
            count = lookup.coverage(name)
        except (ImagesimError, GridError) as exc:
            error = str(exc)
        nodata.append(count[0])
        totals.append(count[1])
        errors.append(error)
    n = len(names)
    return {"nodata_pixels": nodata, "total_pixels": totals, "note": [None] * n, "error": errors, "source": ["mask"] * n}


def _class_table(measured: Rows, min_nodata_pixels: int) -> Rows:
    """The rows of ``nodata.parquet`` (:data:`TABLE_TYPES`) for measured chips (``name``, ``path``,
    ``nodata_pixels``, ``total_pixels``, ``source``, ``note``, ``error``), by chip name (a stable sort)."""
    order = sorted(range(len(measured["name"])), key=measured["name"].__getitem__)
    col = {key: [measured[key][i] for i in order] for key in ("name", "path", "nodata_pixels", "total_pixels", "source", "note", "error")}
    pairs = list(zip(col["nodata_pixels"], col["total_pixels"]))
    return {
        "chip": col["name"],
        "path": col["path"],
        "nodata_pixels": col["nodata_pixels"],
        "total_pixels": col["total_pixels"],
        "valid_fraction": [valid_fraction(n, t) for n, t in pairs],
        "nodata_class": [nodata_class(n, t, min_nodata_pixels) for n, t in pairs],
        "source": col["source"],
        "note": col["note"],
        "error": col["error"],
    }


NODATA_PARTS_PREFIX = ".nodata.parts-"


class _Parts:
    """Measured chunks of ``nodata.parquet`` in part files (a hidden folder; pickled columns: only this
    run reads them), read back in chip order: straight through when the chunks came in that order (chips
    found zone folder by zone folder), else merged (each part is sorted; ties keep part order)."""

    def __init__(self, beside: AnyPath) -> None:
        if isinstance(beside, Path):
            beside.mkdir(parents=True, exist_ok=True)
        local = beside if isinstance(beside, Path) else None
        if local is not None:  # a run killed outright left its parts: nothing in them is reused (every chip is measured)
            for folder in abandoned(local, NODATA_PARTS_PREFIX)[0]:
                shutil.rmtree(folder, ignore_errors=True)
        self.folder = work_folder(local, NODATA_PARTS_PREFIX)
        self.files: list[Path] = []
        self.in_order = True
        self.last: str | None = None

    def add(self, table: Rows) -> None:
        chips = table["chip"]
        if not chips:
            return
        first, last = chips[0], chips[-1]
        self.in_order = self.in_order and (self.last is None or self.last <= first)
        self.last = last if self.last is None else max(self.last, last)
        self.files.append(self.folder / f"part-{len(self.files):05d}.pickle")
        with open(self.files[-1], "wb") as f:
            pickle.dump(table, f, protocol=pickle.HIGHEST_PROTOCOL)

    def _load(self, file: Path) -> Rows:
        with open(file, "rb") as f:
            rows: Rows = pickle.load(f)
        return rows

    def sorted_slices(self) -> Iterator[Rows]:
        if self.in_order:
            for file in self.files:
                yield self._load(file)
            return
        parts = [self._load(file) for file in self.files]
        keys = list(TABLE_TYPES)
        chip = keys.index("chip")
        merged = heapq.merge(*(zip(*(part[k] for k in keys)) for part in parts), key=lambda row: row[chip])
        while rows := list(itertools.islice(merged, CHUNK)):
            yield {k: list(values) for k, values in zip(keys, zip(*rows))}

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _write_index(path: AnyPath, lists: dict[str, Path], counts: dict[str, int]) -> None:
    """The JSON index ``{"all_data": [...], ...}`` (as ``json.dumps(index, indent=2)`` writes it) from one
    file per class holding a JSON string per line: streamed, never held."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as out:
        out.write("{\n")
        for k, cls in enumerate(NODATA_CLASSES):
            out.write(f"  {json.dumps(cls)}: ")
            if counts.get(cls, 0) == 0:
                out.write("[]")
            else:
                out.write("[\n")
                with open(lists[cls], encoding="utf-8") as names:
                    for n, line in enumerate(names):
                        out.write(("    " if n == 0 else ",\n    ") + line.rstrip("\n"))
                out.write("\n  ]")
            out.write(",\n" if k < len(NODATA_CLASSES) - 1 else "\n")
        out.write("}\n")


def run_nodata_index(
    chip_dir: str | AnyPath,
    settings: NodataSettings | None = None,
    *,
    progress: ProgressFactory | None = None,
    scheduler: Any = None,
) -> NodataSummary:
    """Classify every chip under ``chip_dir`` and write the index, ``nodata.parquet`` and the summary.

    ``scheduler`` (a Dask address, ``"local"`` or a ``distributed.Client``): chips decoded for
    ``source`` pixels (and those the manifest lacks) are scanned there, one task per batch of chips.

    Chips are measured ``CHUNK`` at a time and written to part files; the outputs are then written from
    them a slice at a time, so memory does not grow with the number of chips (but for the manifest's
    counts, one compact row per chip, with ``source`` manifest)."""
    settings = settings or NodataSettings()
    settings.check()
    tasks = TaskRunner(scheduler)
    chip_dir = location(chip_dir)
    if not chip_dir.is_dir():
        raise ImagesimFileNotFoundError(f"{chip_dir}: chip folder does not exist")
    named = location(settings.filename)
    index_path = named if named.is_absolute() else chip_dir / settings.filename
    parquet_path = index_path.with_name(NODATA_PARQUET)
    summary_path = index_path.with_name(nodata_summary_name(index_path.name))
    if index_path.exists() and not settings.overwrite:
        raise OutputExistsError(f"{index_path}: index exists; pass `overwrite` to replace it")
    # A manifest from `imagesim chip` holds counts measured on the COG; one derived from chip names holds none.
    has_counts = (chip_dir / CHIPS_MANIFEST).exists() and not manifest_is_derived(chip_dir)
    source = settings.source or ("manifest" if has_counts else "pixels")

    start = time.perf_counter()
    jpeg_dirs: list[AnyPath] = []
    others: list[AnyPath] = []
    total = count_chip_files(chip_dir, index_path.name, others, jpeg_dirs)  # counted first: the progress bar's total
    summary = NodataSummary(
        index=index_path,
        parquet=parquet_path,
        summary=summary_path,
        source=source,
        counts={cls: 0 for cls in NODATA_CLASSES},
        skipped=[str(p) for p in others],
        skipped_dirs=[str(p) for p in jpeg_dirs],
    )
    if not total:  # no chip at all: nothing to index, and an index that is there stays as it is
        summary.seconds = time.perf_counter() - start
        return summary
    counts = _manifest_counts(chip_dir, settings.nodata_threshold) if source == "manifest" else None
    masks = _MaskLookup(chip_dir, settings.ard_path) if source == "mask" else None
    parts = _Parts(index_path.parent)
    sink = open_progress(progress, total)
    try:
        with tasks.session() as tasks:  # one cluster (or connection) for every chunk, made when one needs decoding
            found = iter_chip_files(chip_dir, index_path.name, [], None)
            done = 0
            size = CHUNK if tasks.local else max(CHUNK, BATCH * DASK_TASKS)
            while chunk := list(itertools.islice(found, size)):
                paths, names = [str(p) for p in chunk], [p.name for p in chunk]
                if counts is not None:
                    found_counts = [counts.get(name, (None, None)) for name in names]
                    known = [i for i, c in enumerate(found_counts) if c[0] is not None]
                    unknown = [i for i, c in enumerate(found_counts) if c[0] is None]
                    sink.update(done + len(known))
                    rest = _by_pixels([location(paths[i]) for i in unknown], settings, tasks, sink, done + len(known))
                    measured: Rows = {
                        "name": [names[i] for i in known] + [names[i] for i in unknown],
                        "path": [paths[i] for i in known] + rest["path"],
                        "nodata_pixels": [found_counts[i][0] for i in known] + rest["nodata_pixels"],
                        "total_pixels": [found_counts[i][1] for i in known] + rest["total_pixels"],
                        "note": [None] * len(known) + rest["note"],
                        "error": [None] * len(known) + rest["error"],
                        "source": ["manifest"] * len(known) + rest["source"],
                    }
                elif masks is not None:
                    measured = {"name": names, "path": paths, **_by_mask(names, masks)}
                    sink.update(done + len(chunk))
                else:
                    measured = {"name": names, **_by_pixels(chunk, settings, tasks, sink, done)}
                done += len(chunk)
                parts.add(_class_table(measured, settings.min_nodata_pixels))
        lists = {cls: parts.folder / f"{cls}.txt" for cls in NODATA_CLASSES}
        by_source: dict[str, int] = {}
        with contextlib.ExitStack() as files:
            out = {cls: files.enter_context(open(lists[cls], "w", encoding="utf-8")) for cls in NODATA_CLASSES}
            with (
                atomic_path(parquet_path) as tmp,
                GeoColumnsStream(tmp, TABLE_TYPES, row_group=PARQUET_ROW_GROUP, allow_missing=True) as table,
            ):
                for rows in parts.sorted_slices():
                    table.write(rows)  # a JPEG that is not a chip name: null geometry
                    for chip, path, cls, src, note, error in zip(
                        rows["chip"], rows["path"], rows["nodata_class"], rows["source"], rows["note"], rows["error"]
                    ):
                        if error is not None:
                            summary.failed.append((path, error))
                            continue
                        if note is not None:
                            summary.notes.append((path, note))
                        by_source[src] = by_source.get(src, 0) + 1
                        if cls in summary.counts:
                            summary.counts[cls] += 1
                            out[cls].write(json.dumps(chip) + "\n")
        summary.by_source = by_source
        summary.seconds = time.perf_counter() - start
        _write_index(index_path, lists, summary.counts)
    finally:
        sink.close()
        parts.remove()
    write_json(
        summary_path,
        {
            "chip_dir": str(chip_dir),
            "source": source,
            "nodata_threshold": settings.nodata_threshold,
            "min_nodata_pixels": settings.min_nodata_pixels,
            "counts": summary.counts,
            "measured_by": summary.by_source,
            "failed": [{"file": f, "error": e} for f, e in summary.failed],
            "notes": [{"file": f, "note": n} for f, n in summary.notes],
            "skipped_non_jpeg": summary.skipped,
            "skipped_directories": [{"path": d, "reason": "a directory named like a JPEG (not searched)"} for d in summary.skipped_dirs],
            "seconds": summary.seconds,
        },
    )
    return summary
