"""`imagesim encode`: every chip to an embedding with an exported ONNX model, GPU-fast, CPU fallback.

The input pipeline is the hot path: the Rust core decodes a whole batch of JPEGs (libjpeg-turbo with
DCT scaling, parallel, GIL released) straight into a reused uint8 buffer while onnxruntime runs the
previous batch (two buffers, one decode thread ahead). On CUDA the input buffer is pinned and the
session uses IO binding. Results are checkpointed as part files (at most ``PART_ROWS`` rows each,
sorted by chip) while the run goes, so an interrupted run resumes where it stopped; chips already encoded
with the same model are skipped. At the end the final file and the parts are merged in chip order a slice
at a time (:func:`merge_sorted`) into row groups: memory holds a part's rows, never the run's.

No-data: the decoder fills each chip's no-data pixels (every band <= ``nodata_threshold``, the rule
of nodata-index) with the mean of its valid pixels, so a partial chip's embedding describes its data
rather than its black border, and each row records the chip's ``valid_fraction``.

A model without class outputs (a pretrained backbone exported without a head: no ``logits`` output,
no classes in its metadata) encodes embeddings only: ``predicted`` is empty for every chip and no
``probabilities`` column is written.
"""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from imagesim import _imagesim, options
from imagesim.artefacts import CLOUD_FRACTION, EMBEDDINGS, VALID_FRACTION, read_chip_table, sidecar
from imagesim.errors import EncodeError, ImagesimFileNotFoundError
from imagesim.fsutil import atomic_path, write_json, write_with
from imagesim.geoparquet import GEO_COLUMNS, GeoParquetStream
from imagesim.learn.export import decode_metadata, model_id
from imagesim.progress import ProgressFactory, open_progress
from imagesim.runner import Outcome, TaskRunner, worker_threads
from imagesim.storage import AnyPath, StorePath, location, read_parquet

CHECKPOINT_SECONDS = 60.0  # write a part file at least this often
# ... and at this many rows: memory holds one part's rows (about 20 MB of 512-float embeddings), never the run's
PART_ROWS = 8_192
MERGE_BATCH = 4_096  # rows read at a time from each sorted run of files while merging them into the final file
# The share of a chip's decoded pixels that are not no-data (null: encoded without the no-data rule).
# A column of embeddings.parquet and of the index's ids.parquet (imagesim.search reads it by this name).


@dataclass
class EncodeSettings:
    out: str | AnyPath | None = None  # default: CHIPS/embeddings.parquet (a local path or a store URL)
    batch_size: int = options.ENCODE_BATCH
    provider: str = options.PROVIDER
    proc: int = options.PROC_ALL  # decode threads (0 = all cores)
    nodata_index: str | AnyPath | None = None
    include_nodata: bool = False
    overwrite: bool = False
    max_cloud: float | None = None  # leave out chips with a larger ARD cloud_fraction (None: encode all)
    # no-data pixels (every band <= this) are filled with the chip's valid mean; None: decoded as they are
    nodata_threshold: int | None = options.ENCODE_NODATA_THRESHOLD

    def check(self) -> None:
        options.check_choice("provider", self.provider, options.ENCODE_PROVIDERS)
        if self.nodata_threshold is not None:
            options.check_range("nodata_threshold", self.nodata_threshold, *options.NODATA_THRESHOLD_RANGE)
        if self.max_cloud is not None:
            options.check_range("max_cloud", self.max_cloud, *options.FRACTION_RANGE, what="a share of the chip's valid area")
        options.check_range("batch_size", self.batch_size, *options.ENCODE_BATCH_RANGE)
        options.check_range("proc", self.proc, *options.PROC_RANGE, what="decode threads (0: all cores)")


@dataclass
class EncodeSummary:
    out: AnyPath
    model_id: str
    provider: str
    encoded: int = 0
    skipped: int = 0  # already encoded with this model
    excluded: int = 0  # no_data chips left out
    cloudy: int = 0  # chips left out by `max_cloud`
    failed: list[tuple[str, str]] = field(default_factory=list)
    not_files: list[tuple[str, str]] = field(default_factory=list)  # a directory where the chip file should be: skipped
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.encoded / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        dirs = f", {len(self.not_files)} skipped (a directory, not a chip file)" if self.not_files else ""
        return (
            f"encode: {self.encoded} chips encoded, {self.skipped} already done, {self.excluded} no_data left out, "
            + (f"{self.cloudy} cloudy left out, " if self.cloudy else "")
            + f"{len(self.failed)} failed{dirs}; {self.rate:,.0f} chips/s on {self.provider} ({self.seconds:.1f} s)"
        )


# --------------------------------------------------------------------------------------------
# Providers
# --------------------------------------------------------------------------------------------


def cuda_device_count() -> int:
    """GPUs the CUDA driver sees (0 without a driver): :func:`imagesim.learn.devices.cuda_device_count`."""
    from imagesim.learn import devices

    return devices.cuda_device_count()


def open_session(onnx_path: Path, provider: str) -> tuple[Any, str]:
    """An onnxruntime session on the requested provider and the name of the one that really runs.

    The choice (``auto``: CUDA when a GPU is present, else CPU) is :mod:`imagesim.learn.devices`'s.
    """
    from imagesim.learn import devices

    return devices.onnx_session(onnx_path, provider)


# --------------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------------


class _Inference:
    """Runs batches on a session; IO binding with a pinned input buffer on CUDA."""

    def __init__(self, session: Any, provider: str, batch: int, size: int) -> None:
        self.session = session
        self.cuda = provider != "CPUExecutionProvider"
        self.outputs = ["embedding", "logits"] if has_logits(session) else ["embedding"]
        shape = (batch, size, size, 3)
        self.buffers = [self._host_buffer(shape), self._host_buffer(shape)]

    def _host_buffer(self, shape: tuple[int, ...]) -> np.ndarray:
        if self.cuda:
            try:
                import torch

                return torch.empty(shape, dtype=torch.uint8).pin_memory().numpy()
            except Exception:  # noqa: BLE001 - torch absent: pageable memory works, a little slower
                pass
        return np.empty(shape, np.uint8)

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Embeddings and logits (None for a model without class outputs) of ``images``."""
        if not self.cuda:
            got = self.session.run(self.outputs, {"image": images})
        else:
            binding = self.session.io_binding()
            binding.bind_cpu_input("image", images)
            for name in self.outputs:
                binding.bind_output(name, "cuda")
            self.session.run_with_iobinding(binding)
            got = binding.copy_outputs_to_cpu()
        return got[0], (got[1] if len(self.outputs) > 1 else None)

    def decoded(self, images: np.ndarray, errors: list[str | None]) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Embeddings and logits of the chips of a decoded batch that decoded (None when none did; logits
        None for a model without class outputs)."""
        ok = np.array([e is None for e in errors], dtype=bool)
        if not ok.any():
            return None, None
        return self.run(images if ok.all() else np.ascontiguousarray(images[ok]))


def has_logits(session: Any) -> bool:
    """Whether the model has class outputs (``logits``); a backbone exported without a head has not."""
    return "logits" in {o.name for o in session.get_outputs()}


def check_outputs(session: Any, meta: dict[str, Any], onnx_path: Path) -> None:
    """Refuse a model whose outputs do not match its metadata (class names without ``logits``, or no ``embedding``)."""
    names = {o.name for o in session.get_outputs()}
    if "embedding" not in names:
        raise EncodeError(f"{onnx_path}: no `embedding` output (outputs: {', '.join(sorted(names))}); export it with `imagesim export`")
    if meta["classes"] and "logits" not in names:
        raise EncodeError(f"{onnx_path}: its metadata names {len(meta['classes'])} classes but the graph has no `logits` output")


def _parts_dir(out: AnyPath) -> AnyPath:
    return out.parent / f".{out.name}.parts"


def nodata_rule(threshold: int | None) -> dict[str, Any]:
    """How the no-data pixels were treated, as embeddings.json records it."""
    if threshold is None:
        return {"fill": None, "threshold": None}
    return {"fill": "valid_mean", "threshold": threshold, "rule": "a pixel is no-data when every band is <= threshold"}


def _rule_of(out: AnyPath) -> dict[str, Any]:
    """The no-data rule an existing embeddings file was encoded with (files before the rule: none)."""
    try:
        meta = json.loads(sidecar(out).read_text()) if sidecar(out).is_file() else {}
    except (OSError, ValueError):
        meta = {}
    rule = meta.get("nodata") if isinstance(meta, dict) else None
    return rule if isinstance(rule, dict) else nodata_rule(None)


def _schema(path: AnyPath) -> dict[str, pl.DataType]:
    """The columns of a Parquet file (its footer only), without the GeoParquet ones (recomputed on writing)."""
    found = pl.read_parquet_schema(io.BytesIO(path.read_bytes()) if isinstance(path, StorePath) else path)
    return {c: t for c, t in found.items() if c not in GEO_COLUMNS}


def _slices(path: AnyPath, columns: list[str], size: int = MERGE_BATCH) -> Iterator[pl.DataFrame]:
    """``columns`` of a Parquet file, ``size`` rows at a time (a local file is read a slice at a time; an
    object is fetched whole)."""
    if isinstance(path, StorePath):
        frame = read_parquet(path, columns=columns)
        for s in range(0, frame.height, size):
            yield frame.slice(s, size)
        return
    lazy = pl.scan_parquet(path).select(columns)
    rows = int(pl.scan_parquet(path).select(pl.len()).collect().item())  # from the footer
    for s in range(0, rows, size):
        yield lazy.slice(s, size).collect()


def _existing(out: AnyPath, mid: str, overwrite: bool, threshold: int | None = None) -> list[AnyPath]:
    """The files already holding embeddings for this model and no-data rule, in the order a later one wins:
    the final file, then the parts of an interrupted run. Only their ``chip``, ``model_id`` and
    ``valid_fraction`` columns are read, one file at a time."""
    if out.is_file() and not overwrite and _rule_of(out).get("threshold") != threshold:
        was = _rule_of(out).get("threshold")
        raise EncodeError(
            f"{out}: was encoded with "
            + ("no-data pixels as decoded" if was is None else f"no-data filled at `nodata_threshold` {was}")
            + ", not "
            + ("as decoded" if threshold is None else f"at `nodata_threshold` {threshold}")
            + "; pass `overwrite` or another `out` (embeddings of two rules do not compare)"
        )
    if overwrite:
        return []
    sources: list[AnyPath] = []
    parts: list[AnyPath] = list(_parts_dir(out).glob("part-*.parquet")) if _parts_dir(out).is_dir() else []
    for path in ([out] if out.is_file() else []) + sorted(parts, key=str):
        try:
            have = _schema(path)
            wanted = [c for c in ("chip", "model_id", VALID_FRACTION) if c in have]
            frame = read_parquet(path, columns=wanted)
            if frame.height == 0:
                continue
        except Exception as exc:  # noqa: BLE001 - polars raises several types
            if path == out:
                raise EncodeError(f"{out}: exists but is not readable Parquet ({exc}); move it away or pass `overwrite`") from None
            continue  # a part cut off mid-write cannot exist (atomic), but be safe
        ids = set(frame["model_id"].unique().to_list()) if "model_id" in frame.columns else {None}
        if ids != {mid}:
            raise EncodeError(
                f"{path}: holds embeddings of model {', '.join(sorted(map(str, ids)))}, not {mid}; pass `overwrite` or another `out`"
            )
        if path != out and threshold is not None and (VALID_FRACTION not in frame.columns or frame[VALID_FRACTION].null_count()):
            raise EncodeError(f"{path}: part of a run encoded without the no-data rule; pass `overwrite` to encode again")
        sources.append(path)
    return sources


def _done_chips(sources: list[AnyPath]) -> pl.Series:
    """The chip names of ``sources``, one polars column (no Python object per chip)."""
    names = [read_parquet(p, columns=["chip"])["chip"].cast(pl.String) for p in sources]
    return pl.concat(names) if names else pl.Series("chip", [], dtype=pl.String)


def _chip_span(path: AnyPath) -> tuple[str, str] | None:
    """A file's first and last chip when its chips are strictly ascending, else None (one column read, in slices)."""
    first: str | None = None
    last: str | None = None
    for frame in _slices(path, ["chip"], 65_536):
        chip = frame["chip"]
        if chip.len() == 0:
            continue
        if chip.null_count() or (last is not None and chip[0] <= last) or not (chip.slice(1) > chip.slice(0, chip.len() - 1)).all():
            return None
        first = chip[0] if first is None else first
        last = chip[-1]
    return None if first is None or last is None else (str(first), str(last))


def _runs(sources: list[AnyPath], schema: dict[str, pl.DataType]) -> list[Iterator[pl.DataFrame]]:
    """``sources`` as few sorted runs as their chip ranges allow: files whose ranges do not overlap are read
    one after another. Every frame carries ``_prio`` (the source's place: a later one wins a chip)."""
    spans: list[tuple[str, str, int, Any]] = []  # (first chip, last chip, priority, path or sorted frame)
    for prio, path in enumerate(sources):
        found = _chip_span(path)
        if found is not None:
            spans.append((found[0], found[1], prio, path))
        else:  # not written by this version (unsorted or repeated chips): sorted in memory, one file's rows
            frame = _conform(read_parquet(path), schema).unique(subset=["chip"], keep="last").sort("chip")
            if frame.height == 0:
                continue
            spans.append((str(frame["chip"][0]), str(frame["chip"][-1]), prio, frame))
    chains: list[list[tuple[str, str, int, Any]]] = []
    for span in sorted(spans, key=lambda x: (x[0], x[2])):
        for chain in chains:
            if chain[-1][1] < span[0]:
                chain.append(span)
                break
        else:
            chains.append([span])

    def read(chain: list[tuple[str, str, int, Any]]) -> Iterator[pl.DataFrame]:
        for _, _, prio, src in chain:
            if isinstance(src, pl.DataFrame):
                for s in range(0, src.height, MERGE_BATCH):
                    yield _conform(src.slice(s, MERGE_BATCH), schema).with_columns(pl.lit(prio, pl.UInt32).alias("_prio"))
                continue
            for frame in _slices(src, [c for c in _schema(src) if c in schema]):
                yield _conform(frame, schema).with_columns(pl.lit(prio, pl.UInt32).alias("_prio"))

    return [read(chain) for chain in chains]


def _conform(frame: pl.DataFrame, schema: dict[str, pl.DataType]) -> pl.DataFrame:
    """``frame`` with the columns of ``schema`` in its order (nulls where it lacks one: an older version's file)."""
    frame = frame.drop(GEO_COLUMNS, strict=False)
    missing = [pl.lit(None, t).alias(c) for c, t in schema.items() if c not in frame.columns]
    return frame.with_columns(missing).select(list(schema)).cast(schema)  # type: ignore[arg-type]


def merge_sorted(sources: list[AnyPath], writer: GeoParquetStream) -> None:
    """Every chip of ``sources`` (a later source wins a chip) into ``writer``, in chip order, a slice at a time.

    Each source is sorted by chip (as this module writes them); the sources are read as sorted runs and
    merged: memory holds a slice of each run, not the table."""
    schemas = [_schema(path) for path in sources]
    schema = dict(pl.concat([pl.DataFrame(schema=s) for s in schemas], how="diagonal_relaxed").schema)
    runs = _runs(sources, schema)
    held: list[pl.DataFrame | None] = [None] * len(runs)
    while True:
        for i, run in enumerate(runs):
            while held[i] is None or held[i].height == 0:  # type: ignore[union-attr]
                held[i] = next(run, None)
                if held[i] is None:
                    break
        live = [i for i, h in enumerate(held) if h is not None and h.height]
        if not live:
            break
        # every chip up to the smallest of the runs' last held chips is held now: merge those
        cutoff = min(str(held[i]["chip"][-1]) for i in live)  # type: ignore[index]
        taken = []
        for i in live:
            frame = held[i]
            assert frame is not None
            n = int(frame["chip"].search_sorted(cutoff, side="right"))
            taken.append(frame.head(n))
            held[i] = frame.slice(n)
        step = pl.concat(taken) if len(taken) > 1 else taken[0]
        if len(taken) > 1:
            step = step.sort("chip", "_prio").unique(subset=["chip"], keep="last", maintain_order=True)
        writer.write(step.drop("_prio"))
    if writer.rows == 0:  # sources of no row: the schema alone
        writer.write(pl.DataFrame(schema=schema))


def _rows(
    meta: dict[str, Any], mid: str, chips: pl.DataFrame, emb: np.ndarray, logits: np.ndarray | None, valid: np.ndarray | None = None
) -> pl.DataFrame:
    """The embeddings rows of ``chips``; ``logits`` None (a model without class outputs): ``predicted`` empty, no ``probabilities``."""
    classes = meta["classes"]
    if logits is not None:
        thresholds = np.asarray(meta.get("thresholds") or [0.35] * len(classes), np.float32)
        prob = 1.0 / (1.0 + np.exp(-logits.astype(np.float32)))
        predicted = [[classes[j] for j in np.flatnonzero(row >= thresholds)] for row in prob]
        class_columns = [
            pl.Series("predicted", predicted, dtype=pl.List(pl.String)),
            pl.Series("probabilities", prob, dtype=pl.Array(pl.Float32, len(classes))),
        ]
    else:
        class_columns = [pl.Series("predicted", [[] for _ in range(chips.height)], dtype=pl.List(pl.String))]
    # cloud_fraction rides along so that similar/serve can show and filter it without the chip manifest
    cloud = pl.col(CLOUD_FRACTION) if CLOUD_FRACTION in chips.columns else pl.lit(None, pl.Float64).alias(CLOUD_FRACTION)
    # valid_fraction: measured by the decoder on the pixels the model saw (null: encoded as decoded)
    valid_col = (
        pl.Series(VALID_FRACTION, np.asarray(valid, np.float32), dtype=pl.Float32)
        if valid is not None
        else pl.Series(VALID_FRACTION, [None] * chips.height, dtype=pl.Float32)
    )
    return chips.select("chip", "path", "zone", "quadkey", "cell", "catalog_id", cloud).with_columns(
        valid_col,
        pl.lit(mid).alias("model_id"),
        pl.Series("embedding", emb.astype(np.float32), dtype=pl.Array(pl.Float32, emb.shape[1])),
        *class_columns,
    )


# --------------------------------------------------------------------------------------------
# Tasks: in process a task decodes one batch (inference runs in the calling thread meanwhile); on
# Dask a task decodes and encodes TASK_BATCHES batches on the worker's own session.
# --------------------------------------------------------------------------------------------

# Sessions a Dask worker process opened, by (model, provider): opened by its first task, reused.
_WORKER_SESSIONS: dict[tuple[str, str], tuple[Any, str, int]] = {}
TASK_BATCHES = 32  # inference batches per Dask task with a `scheduler`


def decode_into(
    paths: list[str | os.PathLike[str]], images: np.ndarray, valid: np.ndarray, threads: int, nodata_threshold: int | None
) -> list[str | None]:
    """Decode ``paths`` into ``images``; with a threshold, no-data pixels filled and ``valid`` (float32, one
    per path) set to each chip's valid share (NaN without one, or where the chip failed)."""
    if nodata_threshold is None:
        valid[:] = np.nan
        return _imagesim.decode_batch(paths, images, threads=threads)
    return _imagesim.decode_batch(paths, images, threads=threads, nodata_threshold=nodata_threshold, valid=valid)


def decode_task(
    paths: list[str | os.PathLike[str]], images: np.ndarray, proc: int, valid: np.ndarray | None = None, nodata_threshold: int | None = None
) -> tuple[np.ndarray, list[str | None], np.ndarray]:
    """In process: one batch of chips decoded into ``images`` (a reused buffer) by the Rust core with
    the task's share of the cores; the buffer, the per-chip errors (None when decoded) and valid shares."""
    valid = np.empty(len(paths), np.float32) if valid is None else valid
    return images, decode_into(paths, images, valid, worker_threads(proc), nodata_threshold), valid


def encode_chips_task(
    onnx_path: str, provider: str, paths: list[str | os.PathLike[str]], batch_size: int, proc: int, nodata_threshold: int | None = None
) -> dict[str, Any]:
    """On a Dask worker: decode and encode ``paths`` in batches of ``batch_size`` (as in process).

    Returns the provider that ran, the per-chip decode errors (None when decoded), the valid share of
    every chip (``valid``, NaN where unmeasured) and the ``embedding``/``logits`` rows of the decoded
    chips, in order (``logits`` None for a model without class outputs).
    """
    key = (onnx_path, provider)
    if key not in _WORKER_SESSIONS:
        session, running = open_session(Path(onnx_path), provider)
        meta = decode_metadata(session.get_modelmeta().custom_metadata_map, Path(onnx_path))
        _WORKER_SESSIONS[key] = (session, running, meta["chip_size"])
    session, running, size = _WORKER_SESSIONS[key]
    inference = _Inference(session, running, batch_size, size)
    threads = worker_threads(proc)
    errors: list[str | None] = []
    embs, logits = [], []
    valid = np.full(len(paths), np.nan, np.float32)
    for s in range(0, len(paths), batch_size):
        n = min(batch_size, len(paths) - s)
        buf = inference.buffers[0][:n]
        errs = decode_into(paths[s : s + n], buf, valid[s : s + n], threads, nodata_threshold)
        emb, lg = inference.decoded(buf, errs)
        if emb is not None:
            embs.append(np.array(emb))
            if lg is not None:
                logits.append(np.array(lg))
        errors.extend(errs)
    return {
        "provider": running,
        "errors": errors,
        "valid": valid,
        "embedding": np.concatenate(embs) if embs else None,
        "logits": np.concatenate(logits) if logits else None,
    }


def run_encode(
    onnx_path: str | Path,
    chips_dir: str | AnyPath,
    settings: EncodeSettings | None = None,
    progress: ProgressFactory | None = None,
    log=lambda _msg: None,
    scheduler: Any = None,
) -> EncodeSummary:
    """Encode every chip of ``chips_dir`` (no_data left out unless ``include_nodata``) with ``onnx_path``.

    In process the Rust core decodes batch k+1 into the second buffer while onnxruntime runs batch k.
    ``scheduler`` (a Dask address, ``"local"`` or a ``distributed.Client``): the chips are decoded and
    encoded on its workers (``provider`` there), one task per ``TASK_BATCHES`` batches; this process
    only reads the model's metadata. Both write the same embeddings files."""
    settings = settings or EncodeSettings()
    settings.check()
    tasks = TaskRunner(scheduler)
    onnx_path, chips_dir = Path(onnx_path), location(chips_dir)
    if not onnx_path.is_file():
        raise ImagesimFileNotFoundError(f"ONNX model not found: {onnx_path} (run `imagesim export`)")
    out = location(settings.out) if settings.out else chips_dir / EMBEDDINGS
    # With a scheduler the model runs on the workers; here only its metadata is read (on the CPU).
    session, running = open_session(onnx_path, settings.provider if tasks.local else "cpu")
    meta = decode_metadata(session.get_modelmeta().custom_metadata_map, onnx_path)
    check_outputs(session, meta, onnx_path)
    with_classes = has_logits(session)
    mid = model_id(onnx_path)
    size = meta["chip_size"]
    what = f"{meta.get('backbone', '?')}, {size} px, id {mid}" + ("" if with_classes else ", no class outputs: embeddings only")
    summary = EncodeSummary(out=out, model_id=mid, provider=running)
    if not tasks.local:
        summary.provider = f"Dask workers (provider {settings.provider})"
        log(f"encoding on the Dask cluster (provider {settings.provider} on the workers), model {onnx_path.name} ({what})")
    else:
        log(
            f"encoding with {running}{' (no CUDA GPU found)' if running == 'CPUExecutionProvider' and settings.provider == 'auto' else ''}, "
            f"model {onnx_path.name} ({what})"
        )

    # `path`: each chip file, relative to chips_dir
    chips = read_chip_table(chips_dir, settings.nodata_index, log=log, extra=(CLOUD_FRACTION,))
    if not settings.include_nodata:
        summary.excluded = int((chips["nodata_class"] == "no_data").sum())
        chips = chips.filter((pl.col("nodata_class") != "no_data").fill_null(True))
    if settings.max_cloud is not None:
        cloudy = (pl.col(CLOUD_FRACTION) > settings.max_cloud).fill_null(False)
        summary.cloudy = chips.filter(cloudy).height
        chips = chips.filter(~cloudy)
    # the files already written (read back at the end, a slice at a time) and the chips they hold
    sources = _existing(out, mid, settings.overwrite, settings.nodata_threshold)
    todo = chips.filter(~pl.col("chip").is_in(_done_chips(sources).implode()))
    summary.skipped = chips.height - todo.height

    parts = _parts_dir(out)
    part_no = len(list(parts.glob("part-*.parquet"))) if parts.is_dir() else 0
    pending: list[pl.DataFrame] = []
    pending_rows = 0
    last_flush = time.perf_counter()

    def flush() -> None:
        """The rows encoded since the last part, sorted by chip, as the next part file."""
        nonlocal part_no, pending, pending_rows, last_flush
        if not pending:
            return
        parts.mkdir(parents=True, exist_ok=True)
        frame = pl.concat(pending, how="diagonal_relaxed").sort("chip")
        pending, pending_rows = [], 0
        part_no += 1
        path = parts / f"part-{part_no:05d}.parquet"
        write_with(path, lambda tmp: frame.write_parquet(tmp))
        sources.append(path)
        last_flush = time.perf_counter()

    batch = settings.batch_size

    def chunk_paths(s: int, n: int) -> list[str]:
        return [str(chips_dir / p) for p in todo["path"].slice(s, n).to_list()]

    if tasks.local:
        # One item per batch, decoded one ahead into the other of two buffers (window=1): batch k+2
        # reuses batch k's buffer only once batch k has run.
        inference = _Inference(session, running, batch, size)
        valid_buffers = [np.empty(batch, np.float32), np.empty(batch, np.float32)]
        step = batch
        task: Any = decode_task

        def task_args(item: tuple[int, int]) -> tuple:
            s, n = item
            slot = (s // batch) % 2
            return chunk_paths(s, n), inference.buffers[slot][:n], settings.proc, valid_buffers[slot][:n], settings.nodata_threshold
    else:
        step = batch * TASK_BATCHES  # a whole number of batches: the same batches as in process
        task = encode_chips_task
        onnx_abs = str(tasks.task_path(onnx_path))

        def task_args(item: tuple[int, int]) -> tuple:
            return (
                onnx_abs,
                settings.provider,
                [os.fspath(tasks.task_path(location(p))) for p in chunk_paths(*item)],
                batch,
                settings.proc,
                settings.nodata_threshold,
            )

    def encoded(result: Any) -> dict[str, Any]:
        """A task's result as embeddings: in process the decoded batch runs here, now."""
        if not tasks.local:
            return result
        images, errors, valid = result
        emb, logits = inference.decoded(images, errors)
        return {"provider": running, "errors": errors, "valid": valid, "embedding": emb, "logits": logits}

    def merge(outcome: Outcome[tuple[int, int]]) -> None:
        """One finished item (``n`` chips from ``s`` of ``todo``) into the summary and the rows."""
        nonlocal pending_rows
        s, n = outcome.item
        if outcome.error is not None:
            errors: list[str | None] = [outcome.error] * n
            emb = logits = valid = None
        else:
            res = encoded(outcome.result)
            if not tasks.local:
                summary.provider = f"{res['provider']} on Dask workers"
            errors, emb, logits, valid = res["errors"], res["embedding"], res["logits"], res.get("valid")
        ok = np.array([e is None for e in errors], dtype=bool)
        for i in np.flatnonzero(~ok):
            chip, path = todo["chip"][s + int(i)], str(chips_dir / todo["path"][s + int(i)])
            # A chip that does not decode is reported in the core's words (empty file, truncated JPEG,
            # not a JPEG, unsupported colour space, corrupt JPEG data, greyscale, wrong chip size); a
            # directory where the chip file should be is skipped, not failed (looked at only on failure).
            if outcome.error is None and location(path).is_dir():
                summary.not_files.append((chip, f"{path}: a directory named like a chip, not a chip file: skipped"))
            else:
                summary.failed.append((chip, str(errors[i])))
        if ok.any():
            rows = todo.slice(s, len(errors)).filter(pl.Series(ok))
            shares = None if settings.nodata_threshold is None or valid is None else np.asarray(valid, np.float32)[ok]
            pending.append(_rows(meta, mid, rows, emb, logits, shares))  # type: ignore[arg-type]
            pending_rows += int(ok.sum())
            summary.encoded += int(ok.sum())
        if pending_rows >= PART_ROWS or time.perf_counter() - last_flush > CHECKPOINT_SECONDS:
            flush()

    items = [(s, min(step, todo.height - s)) for s in range(0, todo.height, step)]
    sink = open_progress(progress, todo.height)
    t_run = time.perf_counter()
    try:
        with tasks.run(
            task, items, task_args, name="imagesim-encode", window=1, units=lambda item: item[1], on_progress=sink.update
        ) as outcomes:
            for outcome in outcomes:
                merge(outcome)
        flush()
    finally:
        sink.close()
    summary.seconds = time.perf_counter() - t_run

    # An embeddings file with no row is written only to carry the report of chips that failed: a run with
    # nothing to encode leaves no file behind (the next stage would only say it is empty).
    if sources or (not out.exists() and (summary.failed or summary.not_files)):
        # the final file and the parts merged in chip order, a slice at a time (an earlier imagesim's parts
        # may lack newer columns: null there)
        with atomic_path(out) as tmp, GeoParquetStream(tmp) as writer:
            if sources:
                merge_sorted(sources, writer)
            else:
                empty = _rows(
                    meta,
                    mid,
                    todo.head(0),
                    np.zeros((0, meta["embedding_dim"]), np.float32),
                    np.zeros((0, len(meta["classes"])), np.float32) if with_classes else None,
                )
                writer.write(empty)
        leftover: list[AnyPath] = list(parts.glob("part-*.parquet")) if parts.is_dir() else []
        for part in leftover:
            part.unlink()
        if parts.is_dir():
            parts.rmdir()
        write_json(
            sidecar(out),
            {
                "model_id": mid,
                "onnx": str(onnx_path.resolve()),
                "classes": meta["classes"],
                "thresholds": meta.get("thresholds"),
                "dim": meta["embedding_dim"],
                "chip_size": size,
                "embedding_normalized": meta.get("embedding_normalized", True),
                "nodata": nodata_rule(settings.nodata_threshold),
                "chips_dir": str(chips_dir.resolve()),
                "chips": writer.rows,
                "provider": summary.provider,
                "last_run": {
                    "encoded": summary.encoded,
                    "skipped": summary.skipped,
                    "failed": len(summary.failed),
                    "chips_per_s": summary.rate,
                },
                "failed": [{"chip": c, "error": e} for c, e in summary.failed],
                "skipped_directories": [{"chip": c, "reason": r} for c, r in summary.not_files],
            },
        )
    return summary
