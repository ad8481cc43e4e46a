"""The compressed index kind ``ivfpq``: FAISS IVF with PQ codes, re-ranked exactly from a sidecar.

For sets too large to hold as float32 (``options.IVFPQ_MIN`` vectors and up; 10^7 × 512-d is 20 GB):
a PCA + random rotation to ``IVFPQ_DIM`` dimensions, an inverted file of ``nlist`` lists (spherical
k-means) and ``IVFPQ_M`` one-byte PQ codes per vector (64 bytes; 72 in the lists with the id).
The candidates PQ ranks first (``rerank`` of them) are scored again exactly from
``vectors.f16.npy`` beside the index: every vector as float16 (2 bytes per dimension), opened as
a memory map, so a query reads only its candidates' rows.

:mod:`imagesim.search.index` builds it by streaming (train on a sample, add in batches) and loads it;
this module holds the parts that do not know about index folders: the FAISS structure, the exact
running top-k (tuning truth, benchmark truth) and the re-ranking search. faiss is passed in by the
caller (imported inside the functions that need it).
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import numpy as np

from imagesim.errors import InvalidArgumentError


def ivfpq_nlist(n: int) -> int:
    """The power of two nearest sqrt(N), with at least 39 training vectors per list (FAISS's minimum)."""
    nlist = 2 ** round(math.log2(max(1.0, math.sqrt(n))))
    return max(1, min(nlist, n // 39))


def make_ivfpq(dim: int, nlist: int, m: int, reduced_dim: int, seed: int, faiss: Any) -> Any:
    """An untrained ``PCAR{reduced_dim},IVF{nlist},PQ{m}x8`` index over inner products.

    The rotation is PCA to ``reduced_dim`` followed by a random rotation (so each PQ sub-space gets
    a similar share of the variance), not OPQ: OPQ's training took 70 s for 16k vectors on this
    project's 2 cores (10 iterations), PCA 1.3 s, and re-ranking makes up the difference in codes.
    """
    if reduced_dim % m or reduced_dim > dim:
        raise InvalidArgumentError(f"`reduced_dim` {reduced_dim}: must be a multiple of `m` {m} and at most the dimension {dim}")
    pca = faiss.PCAMatrix(dim, reduced_dim, 0, True)
    quantizer = faiss.IndexFlatIP(reduced_dim)
    ivf = faiss.IndexIVFPQ(quantizer, reduced_dim, nlist, m, 8, faiss.METRIC_INNER_PRODUCT)
    ivf.cp.spherical = True  # centroids on the unit sphere: k-means for cosine
    ivf.cp.niter = 10
    ivf.cp.seed = seed
    # PQ k-means on 4-d sub-vectors is slow in FAISS (40 s for 16k vectors × 64 sub-spaces on one core):
    # 64 training points per centroid (16k) and 10 iterations are plenty to rank candidates for re-ranking
    ivf.pq.cp.max_points_per_centroid = 64
    ivf.pq.cp.niter = 10
    return faiss.IndexPreTransform(pca, ivf)  # faiss's wrappers keep pca, quantizer and ivf alive with it


class TopK:
    """Exact running top-k by inner product of a block of queries over vectors seen in batches.

    ``exclude[i]`` (optional) is a row left out of query i's answer (the query's own row).
    """

    def __init__(self, queries: np.ndarray, k: int, exclude: np.ndarray | None = None) -> None:
        self.queries = np.ascontiguousarray(queries, dtype=np.float32)
        self.k = k
        self.exclude = exclude
        self.scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        self.rows = np.full((len(queries), k), -1, dtype=np.int64)

    def add(self, start: int, vectors: np.ndarray) -> None:
        """Rows ``start .. start + len(vectors)``."""
        scores = self.queries @ np.asarray(vectors, dtype=np.float32).T
        if self.exclude is not None:
            hit = (self.exclude >= start) & (self.exclude < start + len(vectors))
            scores[np.flatnonzero(hit), self.exclude[hit] - start] = -np.inf
        kk = min(self.k, scores.shape[1])
        part = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
        cand_scores = np.concatenate([self.scores, np.take_along_axis(scores, part, axis=1)], axis=1)
        cand_rows = np.concatenate([self.rows, part + start], axis=1)
        best = np.argsort(-cand_scores, axis=1, kind="stable")[:, : self.k]
        self.scores = np.take_along_axis(cand_scores, best, axis=1)
        self.rows = np.take_along_axis(cand_rows, best, axis=1)


class VectorRows(Protocol):
    """Stored vectors indexed by an array of rows (an ndarray, or the index's sidecar reader)."""

    def __getitem__(self, rows: Any) -> Any: ...


def search_ivfpq(
    index: Any,
    queries: np.ndarray,
    k: int,
    *,
    nprobe: int,
    faiss: Any,
    vectors: VectorRows | None = None,
    rerank: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """(scores, rows) of the ``k`` best rows; rows are -1 where fewer were found.

    With ``vectors`` (the float16 sidecar: rows read on demand) and ``rerank`` > 0, the ``max(rerank, k)``
    best PQ candidates are scored exactly against their stored vectors and the best ``k`` returned
    (scores are then true cosines to float16 precision); otherwise the PQ scores are returned.
    A query for many results opens enough lists to hold about twice as many candidates.
    """
    n = int(index.ntotal)
    ivf = faiss.extract_index_ivf(index)
    exact = vectors is not None and rerank > 0
    fetch = min(n, max(k, rerank) if exact else k)
    probe = min(ivf.nlist, max(nprobe, math.ceil(2 * fetch * ivf.nlist / max(1, n))))
    params = faiss.SearchParametersPreTransform()
    params.index_params = faiss.SearchParametersIVF(nprobe=probe)
    scores, rows = index.search(queries, fetch, params=params)
    if not exact:
        return scores, rows
    assert vectors is not None
    out_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    out_rows = np.full((len(queries), k), -1, dtype=np.int64)
    found = rows >= 0
    wanted, inverse = np.unique(rows[found], return_inverse=True)  # sorted: the memory map is read in file order
    stored = np.asarray(vectors[wanted], dtype=np.float32)
    exact_scores = np.full(rows.shape, -np.inf, dtype=np.float32)
    query_of = np.broadcast_to(np.arange(len(queries))[:, None], rows.shape)[found]
    exact_scores[found] = np.einsum("ij,ij->i", stored[inverse], queries[query_of])
    order = np.argsort(-exact_scores, axis=1, kind="stable")[:, :k]
    top_scores = np.take_along_axis(exact_scores, order, axis=1)
    top_rows = np.take_along_axis(rows, order, axis=1)
    keep = np.isfinite(top_scores)
    out_scores[:, : top_scores.shape[1]] = np.where(keep, top_scores, -np.inf)
    out_rows[:, : top_rows.shape[1]] = np.where(keep, top_rows, -1)
    return out_scores, out_rows
