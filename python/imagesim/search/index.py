"""`imagesim index`: a FAISS nearest-neighbour index over chip embeddings.

Vectors are L2-normalised and searched by inner product, so scores are cosine similarities.
Small sets get an exact ``IndexFlatIP``; above ``FLAT_MAX`` vectors ``auto`` picks IVF-Flat
(spherical k-means, ``nlist ≈ 4·sqrt(N)``) with ``nprobe`` tuned at build time until recall@10
against the exact answer reaches ``TARGET_RECALL`` (see docs/index.md for why IVF and not HNSW).

An index folder holds ``index.faiss``, ``ids.parquet`` (row id → chip, location, predicted labels,
cloud and valid fractions) and ``index.json`` (kind, parameters, size, model, source), written last
and checked on load.
faiss is imported inside the functions that need it.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from imagesim import grid, options
from imagesim.artefacts import CLOUD_FRACTION, INDEX_FAISS, INDEX_IDS, INDEX_JSON, VALID_FRACTION, read_embeddings
from imagesim.errors import ImagesimFileNotFoundError, InvalidArgumentError, OutputExistsError, require
from imagesim.fsutil import atomic_path, write_json, write_with

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


def choose_kind(kind: str, n: int, flat_max: int = FLAT_MAX) -> str:
    options.check_choice("kind", kind, KINDS)
    if kind == "auto":
        return "flat" if n <= flat_max else "ivf"
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
        tuned = ""
        for name in ("nprobe", "efSearch"):
            if name in self.params:
                tuned = f", {name} {self.params[name]} (recall@10 {self.params['tuned_recall_at_10']:.3f} on {self.params['tune_queries']} sample queries)"
        extra = f", nlist {self.params['nlist']}" if "nlist" in self.params else ""
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
    target_recall: float = TARGET_RECALL,
    progress: Callable[[int], Any] | None = None,
    seed: int = 0,
) -> BuildSummary:
    """Index ``embeddings`` into the folder ``out``.

    ``progress(total)`` makes a bar with ``update(done)`` and ``close()`` (``imagesim.cli._progress_bar``),
    shown while vectors are added to sets of at least ``ADD_BATCH``.
    """
    t0 = time.perf_counter()
    embeddings, out = Path(embeddings), Path(out)
    options.check_choice("kind", kind, KINDS)
    options.check_range("flat_max", flat_max, *options.FLAT_MAX_RANGE)
    existing = [out / name for name in (INDEX_JSON, INDEX_FAISS, INDEX_IDS) if (out / name).exists()]
    if existing and not overwrite:
        raise OutputExistsError(f"{existing[0]} exists; pass `overwrite` to replace the index in {out}")
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out} exists and is not a folder")
    rows, vectors, emb_meta = read_embeddings(embeddings)
    n, dim = vectors.shape
    chosen = choose_kind(kind, n, flat_max)

    bar = progress(n) if progress is not None and n >= ADD_BATCH else None
    try:
        index, params = make_index(vectors, chosen, progress=bar.update if bar else None, target_recall=target_recall, seed=seed)
    finally:
        if bar is not None:
            bar.close()
    if kind == "auto":
        params["flat_max"] = flat_max

    lon, lat = chip_centres(rows["zone"].to_numpy(), rows["quadkey"].to_list())
    ids = rows.select(
        pl.int_range(0, n, dtype=pl.UInt32).alias("row"),
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

    faiss = import_faiss()
    out.mkdir(parents=True, exist_ok=True)
    (out / INDEX_JSON).unlink(missing_ok=True)  # the folder is not a valid index until index.json is back
    with atomic_path(out / INDEX_FAISS) as tmp:
        faiss.write_index(index, str(tmp))
    write_with(out / INDEX_IDS, lambda p: ids.write_parquet(p))
    stat = embeddings.stat()
    seconds = time.perf_counter() - t0
    meta = {
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
    write_json(out / INDEX_JSON, meta)
    return BuildSummary(out, chosen, kind, n, dim, params, seconds)


# --- loading ---


@dataclass
class LoadedIndex:
    folder: Path
    index: Any
    ids: pl.DataFrame
    meta: dict[str, Any]
    _by_chip: dict[str, int] = field(default_factory=dict, repr=False)

    @property
    def kind(self) -> str:
        return str(self.meta["kind"])

    @property
    def n(self) -> int:
        return int(self.index.ntotal)

    def row_of_chip(self, chip: str) -> int | None:
        if not self._by_chip:
            self._by_chip = {c: i for i, c in enumerate(self.ids["chip"].to_list())}
        return self._by_chip.get(chip)

    def vectors(self, rows: np.ndarray | list[int]) -> np.ndarray:
        return self.index.reconstruct_batch(np.asarray(rows, dtype=np.int64))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, rows) of the ``k`` nearest rows; rows are -1 where fewer were found."""
        faiss = import_faiss()
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.index.d)
        k = max(1, min(k, self.n))
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


def load_index(folder: str | Path) -> LoadedIndex:
    """Open an index folder written by :func:`build_index` and check its parts agree."""
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
    if kind not in ("flat", "ivf", "hnsw"):
        raise InvalidArgumentError(f"{folder / INDEX_JSON}: unknown index kind {kind!r}")
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
    return LoadedIndex(folder, index, ids, meta)
