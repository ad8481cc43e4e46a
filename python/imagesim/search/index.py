"""`imagesim index`: a FAISS nearest-neighbour index over chip embeddings.

Vectors are L2-normalised and searched by inner product, so scores are cosine similarities.
Small sets get an exact ``IndexFlatIP``; above ``FLAT_MAX`` vectors ``auto`` picks IVF-Flat
(spherical k-means, ``nlist ≈ 4·sqrt(N)``) with ``nprobe`` tuned at build time until recall@10
against the exact answer reaches ``TARGET_RECALL`` (see docs/index.md for why IVF and not HNSW).
Above ``IVFPQ_MIN`` vectors ``auto`` picks the compressed ``ivfpq`` (:mod:`imagesim.search.ivfpq`),
built by streaming the embeddings in batches (never all vectors in memory) and re-ranked exactly
from a float16 sidecar of the vectors.

An index folder holds ``index.faiss``, ``ids.parquet`` (row id → chip, location, predicted labels,
cloud and valid fractions) and ``index.json`` (kind, parameters, size, model, source), written last
and checked on load.
faiss is imported inside the functions that need it.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from imagesim import grid, options
from imagesim.artefacts import (
    CLOUD_FRACTION,
    EMBEDDING_BATCH,
    INDEX_FAISS,
    INDEX_IDS,
    INDEX_JSON,
    INDEX_VECTORS,
    VALID_FRACTION,
    EmbeddingsInfo,
    inspect_embeddings,
    iter_embedding_batches,
    read_embeddings,
)
from imagesim.errors import ImagesimFileNotFoundError, InvalidArgumentError, OutputExistsError, require
from imagesim.fsutil import atomic_path, publish, write_json, write_with
from imagesim.search.ivfpq import TopK, ivfpq_nlist, make_ivfpq, search_ivfpq

FORMAT_VERSION = 1
# embeddings.parquet's column (written by encode): the share of a chip's pixels that are not no-data;
# null for chips encoded before it was measured (or with no-data kept as decoded).

KINDS = options.INDEX_KINDS
FLAT_MAX = options.FLAT_MAX  # auto: exact search up to this many vectors
TARGET_RECALL = 0.95  # approximate kinds are tuned to reach this recall@10 (plus TUNE_MARGIN)
TUNE_MARGIN = 0.01
TUNE_QUERIES = 500
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 64
ADD_BATCH = 50_000

Progress = Callable[[int], Any]  # called with the number of vectors added so far


def import_faiss() -> Any:
    """The faiss module, or a MissingDependencyError naming the ``index`` extra."""
    return require("faiss", "index", purpose="`imagesim index` and `imagesim similar`")


# --- reading embeddings ---

# --- locations ---


def chip_centres(zones: np.ndarray, quadkeys: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Longitude and latitude (WGS84) of the centres of chips."""
    from pyproj import Transformer

    lon = np.empty(len(quadkeys))
    lat = np.empty(len(quadkeys))
    x = np.empty(len(quadkeys))
    y = np.empty(len(quadkeys))
    codes = np.empty(len(quadkeys), dtype=np.int64)
    for i, (zone, qk) in enumerate(zip(zones.tolist(), quadkeys)):
        b = grid.bounds(qk)
        x[i] = (b.west + b.east) / 2
        y[i] = (b.south + b.north) / 2
        codes[i] = grid.epsg(qk, int(zone))
    for code in np.unique(codes):
        sel = codes == code
        t = Transformer.from_crs(int(code), 4326, always_xy=True)
        lon[sel], lat[sel] = t.transform(x[sel], y[sel])
    return lon, lat


def chip_footprint(zone: int, quadkey: str) -> list[list[float]]:
    """A chip's square as a closed WGS84 ring [[lon, lat], …], counter-clockwise (RFC 7946)."""
    from pyproj import Transformer

    b = grid.bounds(quadkey)
    t = Transformer.from_crs(grid.epsg(quadkey, zone), 4326, always_xy=True)
    xs = [b.west, b.east, b.east, b.west, b.west]
    ys = [b.south, b.south, b.north, b.north, b.south]
    lons, lats = t.transform(xs, ys)
    return [[round(float(lo), 8), round(float(la), 8)] for lo, la in zip(lons, lats)]


# --- building ---


def choose_kind(kind: str, n: int, flat_max: int = FLAT_MAX, ivfpq_min: int = options.IVFPQ_MIN) -> str:
    options.check_choice("kind", kind, KINDS)
    if kind == "auto":
        return "flat" if n <= flat_max else "ivfpq" if n > ivfpq_min else "ivf"
    return kind


def ivf_nlist(n: int) -> int:
    """≈ 4·sqrt(N) lists, with at least 39 training vectors per list (FAISS's own minimum)."""
    return max(1, min(int(4 * math.sqrt(n)), n // 39))


def _add(index: Any, vectors: np.ndarray, progress: Progress | None) -> None:
    for start in range(0, len(vectors), ADD_BATCH):
        index.add(vectors[start : start + ADD_BATCH])
        if progress is not None:
            progress(min(len(vectors), start + ADD_BATCH))


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each row's true neighbours that were found (row-wise sets, -1 ignored)."""
    k = truth.shape[1]
    hits = [len(set(f[f >= 0].tolist()) & set(t.tolist())) for f, t in zip(found, truth)]
    return float(np.mean(hits)) / k


def _tune(index: Any, kind: str, vectors: np.ndarray, faiss: Any, target: float, seed: int) -> dict[str, Any]:
    """Smallest nprobe / efSearch whose recall@10 on sample rows reaches ``target`` (+ margin).

    Queries are rows of the index, as in a query by chip; the row itself is left out of both the
    true and the found neighbours (it is always an easy hit and would flatter the recall).
    """
    rng = np.random.default_rng(seed)
    nq = min(len(vectors), TUNE_QUERIES)
    picked = rng.choice(len(vectors), nq, replace=False)
    queries = vectors[picked]
    k = min(10, len(vectors) - 1)
    _, truth = faiss.knn(queries, vectors, k + 1, metric=faiss.METRIC_INNER_PRODUCT)
    truth = _drop_self(truth, picked, k)
    if kind == "ivf":
        ivf = faiss.extract_index_ivf(index)
        name, values = "nprobe", [v for v in (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256) if v < ivf.nlist] + [ivf.nlist]
    else:
        name, values = "efSearch", [16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024]
    recall = 0.0
    for value in values:
        _set_search_param(index, kind, value, faiss)
        _, found = index.search(queries, k + 1)
        recall = recall_at_k(_drop_self(found, picked, k), truth)
        if recall >= target + TUNE_MARGIN:
            break
    return {name: value, "tuned_recall_at_10": round(recall, 4), "tune_queries": nq, "target_recall_at_10": target}


def _drop_self(rows: np.ndarray, query_rows: np.ndarray, k: int) -> np.ndarray:
    """Each row's first ``k`` neighbours other than the query row itself (-1 padded)."""
    out = np.full((len(rows), k), -1, dtype=np.int64)
    for i, (found, q) in enumerate(zip(rows, query_rows)):
        keep = found[found != q][:k]
        out[i, : len(keep)] = keep
    return out


def _set_search_param(index: Any, kind: str, value: int, faiss: Any) -> None:
    if kind == "ivf":
        faiss.extract_index_ivf(index).nprobe = value
    elif kind == "hnsw":
        index.hnsw.efSearch = value


def make_index(
    vectors: np.ndarray,
    kind: str,
    *,
    progress: Progress | None = None,
    target_recall: float = TARGET_RECALL,
    seed: int = 0,
) -> tuple[Any, dict[str, Any]]:
    """Build a FAISS index of ``kind`` (flat, ivf, hnsw) over unit vectors; returns (index, parameters)."""
    faiss = import_faiss()
    n, dim = vectors.shape
    params: dict[str, Any] = {"metric": "inner_product"}
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
        _add(index, vectors, progress)
        return index, params
    if kind == "ivf":
        nlist = ivf_nlist(n)
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.spherical = True  # centroids on the unit sphere: k-means for cosine
        index.cp.niter = 10
        index.cp.seed = seed
        n_train = min(n, max(40 * nlist, 50_000))  # FAISS wants >= 39 per list; k-means time grows with it
        train = vectors if n_train == n else vectors[np.sort(np.random.default_rng(seed).choice(n, n_train, replace=False))]
        index.train(train)
        _add(index, vectors, progress)
        index.make_direct_map()  # reconstruct(row) for queries by chip
        params.update(nlist=nlist, train_vectors=n_train)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        _add(index, vectors, progress)
        params.update(M=HNSW_M, efConstruction=HNSW_EF_CONSTRUCTION)
    else:
        raise InvalidArgumentError(f"unknown index kind {kind!r}")
    params.update(_tune(index, kind, vectors, faiss, target_recall, seed))
    return index, params


@dataclass
class BuildSummary:
    out: Path
    kind: str
    requested: str
    n: int
    dim: int
    params: dict[str, Any]
    seconds: float

    def line(self) -> str:
        why = (
            f" (auto: {'≤' if self.kind == 'flat' else '>'} {self.params.get('flat_max', FLAT_MAX):,} vectors)"
            if self.requested == "auto"
            else ""
        )
        if self.requested == "auto" and self.kind == "ivfpq":
            why = f" (auto: > {self.params.get('ivfpq_min', options.IVFPQ_MIN):,} vectors)"
        tuned = ""
        for name in ("nprobe", "efSearch"):
            if name in self.params:
                tuned = f", {name} {self.params[name]} (recall@10 {self.params['tuned_recall_at_10']:.3f} on {self.params['tune_queries']} sample queries)"
        extra = f", nlist {self.params['nlist']}" if "nlist" in self.params else ""
        if self.kind == "ivfpq":
            rerank = self.params["rerank"]
            extra += f", PQ{self.params['m']} on PCA-{self.params['reduced_dim']} ({self.params['bytes_per_vector']} bytes/vector), " + (
                f"re-ranking {rerank} candidates exactly from {INDEX_VECTORS}" if rerank else "PQ scores (no re-ranking)"
            )
        short = ""
        if "tuned_recall_at_10" in self.params and self.params["tuned_recall_at_10"] < self.params["target_recall_at_10"]:
            short = f"; below the {self.params['target_recall_at_10']} recall target even at the largest setting: rebuild it with `imagesim index --kind ivf` (or flat)"
        return f"indexed {self.n:,} chips ({self.dim}-d) as {self.kind}{why}{extra}{tuned} in {self.seconds:.1f} s → {self.out}{short}"


def build_index(
    embeddings: str | Path,
    out: str | Path,
    *,
    kind: str = options.INDEX_KIND,
    overwrite: bool = False,
    flat_max: int = FLAT_MAX,
    ivfpq_min: int = options.IVFPQ_MIN,
    rerank: int = options.IVFPQ_RERANK,
    target_recall: float = TARGET_RECALL,
    progress: Callable[[int], Any] | None = None,
    seed: int = 0,
    batch: int = EMBEDDING_BATCH,
) -> BuildSummary:
    """Index ``embeddings`` into the folder ``out``.

    ``progress(total)`` makes a bar with ``update(done)`` and ``close()`` (``imagesim.cli._progress_bar``),
    shown while vectors are added to sets of at least ``ADD_BATCH``. ``rerank`` (ivfpq only): PQ
    candidates scored again exactly from a float16 copy of the vectors written beside the index
    (``vectors.f16.npy``, 2 bytes per dimension); 0 writes no copy and returns PQ scores.
    ``batch``: rows read at a time by the streamed (ivfpq) build.
    """
    t0 = time.perf_counter()
    embeddings, out = Path(embeddings), Path(out)
    options.check_choice("kind", kind, KINDS)
    options.check_range("flat_max", flat_max, *options.FLAT_MAX_RANGE)
    options.check_range("ivfpq_min", ivfpq_min, *options.IVFPQ_MIN_RANGE)
    options.check_range("rerank", rerank, *options.IVFPQ_RERANK_RANGE, what="candidates re-ranked exactly")
    existing = [out / name for name in (INDEX_JSON, INDEX_FAISS, INDEX_IDS) if (out / name).exists()]
    if existing and not overwrite:
        raise OutputExistsError(f"{existing[0]} exists; pass `overwrite` to replace the index in {out}")
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out} exists and is not a folder")
    info = inspect_embeddings(embeddings)  # the size, without reading the vectors
    if choose_kind(kind, info.n, flat_max, ivfpq_min) == "ivfpq":
        return _build_ivfpq(
            info,
            out,
            requested=kind,
            rerank=rerank,
            target_recall=target_recall,
            progress=progress,
            seed=seed,
            batch=batch,
            t0=t0,
            flat_max=flat_max,
            ivfpq_min=ivfpq_min,
        )
    rows, vectors, emb_meta = read_embeddings(embeddings)
    n, dim = vectors.shape
    chosen = choose_kind(kind, n, flat_max, ivfpq_min)

    bar = progress(n) if progress is not None and n >= ADD_BATCH else None
    try:
        index, params = make_index(vectors, chosen, progress=bar.update if bar else None, target_recall=target_recall, seed=seed)
    finally:
        if bar is not None:
            bar.close()
    if kind == "auto":
        params["flat_max"] = flat_max

    ids = _ids_frame(rows, 0)

    faiss = import_faiss()
    out.mkdir(parents=True, exist_ok=True)
    (out / INDEX_JSON).unlink(missing_ok=True)  # the folder is not a valid index until index.json is back
    (out / INDEX_VECTORS).unlink(missing_ok=True)  # an ivfpq sidecar of an earlier build
    with atomic_path(out / INDEX_FAISS) as tmp:
        faiss.write_index(index, str(tmp))
    write_with(out / INDEX_IDS, lambda p: ids.write_parquet(p))
    seconds = time.perf_counter() - t0
    write_json(out / INDEX_JSON, _meta(embeddings, chosen, kind, params, n, dim, emb_meta, faiss, seconds))
    return BuildSummary(out, chosen, kind, n, dim, params, seconds)


def _ids_frame(rows: pl.DataFrame, start: int) -> pl.DataFrame:
    """ids.parquet's rows for embeddings rows ``start ..``: FAISS row id, chip, location, labels, fractions."""
    lon, lat = chip_centres(rows["zone"].to_numpy(), rows["quadkey"].to_list())
    return rows.select(
        pl.int_range(start, start + rows.height, dtype=pl.UInt32).alias("row"),
        pl.col("chip").cast(pl.String),
        pl.col("path").cast(pl.String),
        pl.col("zone").cast(pl.UInt8),
        pl.col("quadkey").cast(pl.String),
        pl.col("cell").cast(pl.String),
        pl.col("catalog_id").cast(pl.String),
        pl.col("predicted").cast(pl.List(pl.String)),
        (pl.col(CLOUD_FRACTION) if CLOUD_FRACTION in rows.columns else pl.lit(None)).cast(pl.Float64).alias(CLOUD_FRACTION),
        (pl.col(VALID_FRACTION) if VALID_FRACTION in rows.columns else pl.lit(None)).cast(pl.Float64).alias(VALID_FRACTION),
    ).with_columns(pl.Series("lon", lon), pl.Series("lat", lat))


def _meta(
    embeddings: Path, chosen: str, kind: str, params: dict[str, Any], n: int, dim: int, emb_meta: dict[str, Any], faiss: Any, seconds: float
) -> dict[str, Any]:
    stat = embeddings.stat()
    return {
        "format": FORMAT_VERSION,
        "kind": chosen,
        "requested_kind": kind,
        "params": params,
        "n": n,
        "dim": dim,
        "metric": "cosine (inner product of L2-normalised vectors)",
        "model_id": emb_meta.get("model_id"),
        "classes": list(emb_meta.get("classes", [])),
        "embeddings": {"path": str(embeddings.resolve()), "mtime_ns": stat.st_mtime_ns, "size": stat.st_size},
        "faiss_version": faiss.__version__,
        "built": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "build_seconds": round(seconds, 3),
    }


def _read_rows(file: Any, offset: int, start: int, count: int, dim: int) -> np.ndarray:
    """Rows ``start .. start + count`` of the float16 sidecar being built, as float32."""
    file.seek(offset + start * dim * 2)
    return np.frombuffer(file.read(count * dim * 2), dtype=np.float16).reshape(count, dim).astype(np.float32)


IVFPQ_NPROBES = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)  # tried in turn; more lists cost latency


def _build_ivfpq(
    info: EmbeddingsInfo,
    out: Path,
    *,
    requested: str,
    rerank: int,
    target_recall: float,
    progress: Callable[[int], Any] | None,
    seed: int,
    batch: int,
    t0: float,
    flat_max: int,
    ivfpq_min: int,
) -> BuildSummary:
    """The ivfpq kind by streaming: pass 1 reads the embeddings in batches (ids.parquet in parts, the
    float16 sidecar, the training sample), then the index is trained on the sample, pass 2 adds the
    vectors in batches (from the sidecar when there is one, else from the Parquet file again) while
    the exact top-10 of the tuning queries is kept, and nprobe is tuned against it."""
    faiss = import_faiss()
    n, dim = info.n, info.dim
    m, reduced = options.IVFPQ_M, min(options.IVFPQ_DIM, dim)
    if reduced % m:
        raise InvalidArgumentError(f"{info.path}: {dim}-d embeddings: `ivfpq` needs at least {m} dimensions (PQ{m}); use `kind` ivf")
    if n < 39 * 16:
        raise InvalidArgumentError(
            f"{info.path}: {n:,} vectors are too few to train `ivfpq` (at least {39 * 16:,}); use `kind` flat or ivf"
        )
    nlist = ivfpq_nlist(n)
    rng = np.random.default_rng(seed)
    n_train = min(n, max(options.IVFPQ_TRAIN, 40 * nlist))
    train_rows = np.sort(rng.choice(n, n_train, replace=False))
    tune_rows = np.sort(rng.choice(n, min(n, TUNE_QUERIES), replace=False))
    k = min(10, n - 1)

    out.mkdir(parents=True, exist_ok=True)
    for name in (INDEX_JSON, INDEX_VECTORS):  # not a valid index until index.json is back; no stale sidecar
        (out / name).unlink(missing_ok=True)
    parts = out / ".ids-parts"
    if parts.exists():
        for old in parts.iterdir():
            old.unlink()
    parts.mkdir(exist_ok=True)
    side_tmp = out / f".{INDEX_VECTORS}.tmp"
    side, side_file, offset, row_bytes = None, None, 0, dim * 2
    if rerank:
        # the .npy header and size from numpy, then plain writes/reads (a writable memory map would count
        # every written page in the build's resident memory: 10 GB at 10^7)
        np.lib.format.open_memmap(side_tmp, mode="w+", dtype=np.float16, shape=(n, dim)).flush()
        offset = side_tmp.stat().st_size - n * row_bytes
        side_file = side_tmp.open("r+b")
    train = np.empty((n_train, dim), np.float32)
    tune = np.empty((len(tune_rows), dim), np.float32)
    bar = progress(2 * n) if progress is not None else None
    try:
        # pass 1: ids, sidecar, samples
        for start, rows, vectors in iter_embedding_batches(info.path, batch=batch, info=info):
            stop = start + len(vectors)
            lo, hi = np.searchsorted(train_rows, [start, stop])
            train[lo:hi] = vectors[train_rows[lo:hi] - start]
            lo, hi = np.searchsorted(tune_rows, [start, stop])
            tune[lo:hi] = vectors[tune_rows[lo:hi] - start]
            if side_file is not None:
                side_file.seek(offset + start * row_bytes)
                side_file.write(vectors.astype(np.float16).tobytes())
            _ids_frame(rows, start).write_parquet(parts / f"{start:012d}.parquet")
            if bar is not None:
                bar.update(stop)
        t_train = time.perf_counter()
        index = make_ivfpq(dim, nlist, m, reduced, seed, faiss)
        index.train(train)
        train_seconds = time.perf_counter() - t_train
        del train
        # pass 2: add, with the exact answer for the tuning queries
        truth = TopK(tune, k, exclude=tune_rows)
        if side_file is not None:
            side_file.flush()
            chunks: Any = ((s, _read_rows(side_file, offset, s, min(batch, n - s), dim)) for s in range(0, n, batch))
        else:
            chunks = ((s, v) for s, _, v in iter_embedding_batches(info.path, batch=batch, ids=False, info=info))
        for start, vectors in chunks:
            index.add(vectors)
            truth.add(start, vectors)
            if bar is not None:
                bar.update(n + start + len(vectors))
        if side_file is not None:
            side_file.close()
            side = np.load(side_tmp, mmap_mode="r")  # read-only map for tuning: a query reads its candidates
    finally:
        if bar is not None:
            bar.close()
        if side_file is not None:
            side_file.close()
    if index.ntotal != n:
        raise InvalidArgumentError(f"{info.path}: read {index.ntotal:,} vectors, expected {n:,} (was the file changed during the build?)")
    if side is None:
        faiss.extract_index_ivf(index).make_direct_map()  # vectors by row for queries by chip (no sidecar)

    # tune nprobe as the other kinds are tuned: queries are rows, the row itself left out
    recall, nprobe = 0.0, 1
    for nprobe in [v for v in IVFPQ_NPROBES if v < nlist] + [min(nlist, IVFPQ_NPROBES[-1])]:
        _, found = search_ivfpq(index, tune, k + 1, nprobe=nprobe, faiss=faiss, vectors=side, rerank=rerank)
        recall = recall_at_k(_drop_self(found, tune_rows, k), truth.rows)
        if recall >= target_recall + TUNE_MARGIN:
            break
    params: dict[str, Any] = {
        "metric": "inner_product",
        "nlist": nlist,
        "m": m,
        "nbits": 8,
        "reduced_dim": reduced,
        "rotation": "pca+random",
        "bytes_per_vector": m,
        "train_vectors": n_train,
        "train_seconds": round(train_seconds, 1),
        "rerank": rerank,
        "vectors": INDEX_VECTORS if rerank else None,
        "vectors_dtype": "float16" if rerank else None,
        "batch": batch,
        "nprobe": nprobe,
        "tuned_recall_at_10": round(recall, 4),
        "tune_queries": len(tune_rows),
        "target_recall_at_10": target_recall,
    }
    if requested == "auto":
        params.update(flat_max=flat_max, ivfpq_min=ivfpq_min)

    with atomic_path(out / INDEX_FAISS) as tmp:
        faiss.write_index(index, str(tmp))
    del index
    # ids.parquet from its parts, streamed (never all rows at once)
    write_with(out / INDEX_IDS, lambda p: pl.scan_parquet(sorted(parts.glob("*.parquet"))).sink_parquet(p))
    for part in parts.iterdir():
        part.unlink()
    parts.rmdir()
    if side is not None:
        del side
        publish(side_tmp, out / INDEX_VECTORS)
    seconds = time.perf_counter() - t0
    write_json(out / INDEX_JSON, _meta(info.path, "ivfpq", requested, params, n, dim, info.meta, faiss, seconds))
    return BuildSummary(out, "ivfpq", requested, n, dim, params, seconds)


# --- loading ---


@dataclass
class LoadedIndex:
    folder: Path
    index: Any
    ids: pl.DataFrame
    meta: dict[str, Any]
    _chips_sorted: bool | None = field(default=None, repr=False)
    # ivfpq: the float16 vectors (read a row at a time, never whole) and how many PQ candidates to re-rank
    sidecar: StoredVectors | None = field(default=None, repr=False)
    rerank: int = 0

    @property
    def kind(self) -> str:
        return str(self.meta["kind"])

    @property
    def n(self) -> int:
        return int(self.index.ntotal)

    def row_of_chip(self, chip: str) -> int | None:
        """The row of a chip name (the last, should it be there twice): a binary search when the ids are in
        chip order (as `imagesim encode` writes them), else one vectorised scan — no dict of every chip
        (about 2 GB of Python objects at 10^7)."""
        chips = self.ids["chip"]
        if self._chips_sorted is None:
            self._chips_sorted = bool(chips.is_sorted())
        if self._chips_sorted:
            i = int(chips.search_sorted(chip, side="right")) - 1
            return i if i >= 0 and chips[i] == chip else None
        hits = (chips == chip).arg_true()
        return int(hits[-1]) if hits.len() else None

    def vectors(self, rows: np.ndarray | list[int]) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        if self.sidecar is not None:  # exact to float16, not the PQ approximation
            return np.asarray(self.sidecar[rows], dtype=np.float32)
        return self.index.reconstruct_batch(rows)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, rows) of the ``k`` nearest rows; rows are -1 where fewer were found."""
        faiss = import_faiss()
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.index.d)
        k = max(1, min(k, self.n))
        if self.kind == "ivfpq":
            nprobe = int(self.meta["params"]["nprobe"])
            return search_ivfpq(self.index, queries, k, nprobe=nprobe, faiss=faiss, vectors=self.sidecar, rerank=self.rerank)
        if self.kind == "ivf":
            ivf = faiss.extract_index_ivf(self.index)
            # many results: visit enough lists to hold about 2k candidates
            nprobe = max(int(self.meta["params"]["nprobe"]), math.ceil(2 * k * ivf.nlist / max(1, self.n)))
            params = faiss.SearchParametersIVF(nprobe=min(nprobe, ivf.nlist))
            return self.index.search(queries, k, params=params)
        if self.kind == "hnsw":
            params = faiss.SearchParametersHNSW(efSearch=max(int(self.meta["params"]["efSearch"]), k))
            return self.index.search(queries, k, params=params)
        return self.index.search(queries, k)


class StoredVectors:
    """The float16 re-rank sidecar (``vectors.f16.npy``), read a row at a time with ``pread``.

    Not a memory map: a query re-ranks ~100 rows, and page faults on a map pull in read-ahead windows (and
    map the file's cached neighbours), so a 10^7 index's query process showed gigabytes of the file as its
    own RSS. Read this way the process holds only the rows it asked for; the file stays in the kernel's page
    cache, reclaimable."""

    def __init__(self, path: Path) -> None:
        try:
            with open(path, "rb") as f:
                version = np.lib.format.read_magic(f)
                read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}.get(version)
                if read_header is None:
                    raise ValueError(f"npy format version {version}")
                shape, fortran, dtype = read_header(f)
                self.offset = f.tell()
            size = path.stat().st_size
        except (OSError, ValueError) as exc:
            raise InvalidArgumentError(f"{path}: not a readable .npy file ({exc}); rebuild the index") from None
        if fortran or len(shape) != 2 or self.offset + int(np.prod(shape)) * dtype.itemsize > size:
            raise InvalidArgumentError(f"{path}: truncated or not a C-order matrix; rebuild the index")
        self.path, self.shape, self.dtype = path, (int(shape[0]), int(shape[1])), np.dtype(dtype)
        self.row_bytes = self.shape[1] * self.dtype.itemsize
        self.fd = os.open(path, os.O_RDONLY)
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_RANDOM)  # no read-ahead: rows are read here and there

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: np.ndarray | list[int]) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if rows.size and (rows.min() < 0 or rows.max() >= self.shape[0]):
            raise IndexError(f"{self.path}: rows outside 0..{self.shape[0] - 1}")
        out = np.empty((rows.size, self.shape[1]), self.dtype)
        if out.size == 0:
            return out
        view = out.data.cast("B")
        for i, row in enumerate(rows.tolist()):
            at = i * self.row_bytes
            if os.preadv(self.fd, [view[at : at + self.row_bytes]], self.offset + row * self.row_bytes) != self.row_bytes:
                raise InvalidArgumentError(f"{self.path}: row {row} cut short; rebuild the index")
        return out

    def close(self) -> None:
        if getattr(self, "fd", -1) >= 0:  # (a constructor that raised opened nothing)
            os.close(self.fd)
            self.fd = -1

    def __del__(self) -> None:
        self.close()


def load_index(folder: str | Path, *, rerank: int | None = None) -> LoadedIndex:
    """Open an index folder written by :func:`build_index` and check its parts agree.

    ``rerank`` (ivfpq): PQ candidates re-ranked exactly per query, instead of the build's choice
    (0: PQ scores only; needs the build's float16 sidecar otherwise)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ImagesimFileNotFoundError(f"{folder}: index folder not found; build one with `imagesim index`")
    for name in (INDEX_JSON, INDEX_FAISS, INDEX_IDS):
        if not (folder / name).is_file():
            raise ImagesimFileNotFoundError(
                f"{folder / name}: not found; {folder} is not a complete index (rebuild it with `imagesim index --overwrite`)"
            )
    try:
        meta = json.loads((folder / INDEX_JSON).read_text())
        kind, n = meta["kind"], int(meta["n"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InvalidArgumentError(f"{folder / INDEX_JSON}: not an imagesim index description ({exc})") from None
    if kind not in KINDS or kind == "auto":
        raise InvalidArgumentError(f"{folder / INDEX_JSON}: unknown index kind {kind!r}")
    sidecar, built_rerank = None, int(meta.get("params", {}).get("rerank") or 0)
    if rerank is not None:
        options.check_range("rerank", rerank, *options.IVFPQ_RERANK_RANGE, what="candidates re-ranked exactly")
    use = built_rerank if rerank is None else rerank
    if kind == "ivfpq" and (built_rerank or use):
        side_path = folder / INDEX_VECTORS
        if not side_path.is_file():
            raise ImagesimFileNotFoundError(
                f"{side_path}: not found; re-ranking {use} candidates needs it: rebuild with `imagesim index --rerank N` or use rerank 0"
            )
        sidecar = StoredVectors(side_path)  # a query reads only its candidates' rows
        if sidecar.shape != (n, int(meta["dim"])):
            raise InvalidArgumentError(
                f"{side_path}: holds {sidecar.shape} vectors, {INDEX_JSON} says {n} × {meta['dim']}; rebuild the index"
            )
    faiss = import_faiss()
    try:
        index = faiss.read_index(str(folder / INDEX_FAISS))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unreadable"
        raise InvalidArgumentError(f"{folder / INDEX_FAISS}: not a readable FAISS index ({first})") from None
    try:
        ids = pl.read_parquet(folder / INDEX_IDS)
    except (OSError, pl.exceptions.PolarsError) as exc:
        raise InvalidArgumentError(f"{folder / INDEX_IDS}: cannot read ({exc})") from None
    if index.ntotal != n or ids.height != n:
        raise InvalidArgumentError(
            f"{folder}: index parts disagree ({INDEX_FAISS}: {index.ntotal} vectors, {INDEX_IDS}: {ids.height} rows, "
            f"{INDEX_JSON}: {n}); rebuild it with `imagesim index --overwrite`"
        )
    if CLOUD_FRACTION not in ids.columns:  # an index built before ARD masks were read
        ids = ids.with_columns(pl.lit(None, pl.Float64).alias(CLOUD_FRACTION))
    if VALID_FRACTION not in ids.columns:  # an index of embeddings encoded before valid fractions were measured
        ids = ids.with_columns(pl.lit(None, pl.Float64).alias(VALID_FRACTION))
    return LoadedIndex(folder, index, ids, meta, sidecar=sidecar, rerank=use if kind == "ivfpq" else 0)
