"""Similarity-search benchmark: 1,000,000 clustered 512-d vectors, exact flat vs the approximate index.

Vectors are drawn around 1,000 random unit centres (gaussian spread, ``--spread`` relative to the
centre's norm) and L2-normalised, so neighbours have structure and recall means something. Queries
are fresh draws from the same clusters (not in the index). imagesim's own builder
(`imagesim.search.index.make_index`, the code `imagesim index` runs, nprobe/efSearch tuned at build time)
makes the approximate index; an exact `IndexFlatIP` is the baseline and the ground truth.

Prints build time, single-query latency p50/p99 (one query per call, FAISS on 2 threads), recall@10
of the approximate index against the exact answer, the ratios to exact, and the target:
p50 < 5 ms at recall@10 >= 0.95 on 2 cores.

    python benches/bench_index.py [--n 1000000] [--dim 512] [--clusters 1000] [--spread 2.0]
                                  [--kinds ivf[,hnsw]] [--queries 500] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from imagesim.search.index import make_index, recall_at_k

P50_TARGET_MS = 5.0
RECALL_TARGET = 0.95


def clustered(rng: np.random.Generator, centres: np.ndarray, n: int, spread: float, chunk: int = 100_000) -> np.ndarray:
    dim = centres.shape[1]
    out = np.empty((n, dim), np.float32)
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        out[s:e] = centres[rng.integers(len(centres), size=e - s)]
        out[s:e] += rng.standard_normal((e - s, dim), dtype=np.float32) * np.float32(spread / np.sqrt(dim))
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


def latencies(index, queries: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Per-query seconds (one query per search call) and the rows found."""
    times = np.empty(len(queries))
    found = np.empty((len(queries), k), np.int64)
    index.search(queries[:1], k)  # warm up
    for i, q in enumerate(queries):
        t = time.perf_counter()
        _, rows = index.search(q[None], k)
        times[i] = time.perf_counter() - t
        found[i] = rows[0]
    return times, found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--clusters", type=int, default=1000)
    ap.add_argument(
        "--spread", type=float, default=2.0, help="noise norm relative to the centre (2.0: a point's cosine to its centre ≈ 0.45)"
    )
    ap.add_argument(
        "--kinds",
        default="ivf",
        help="approximate kinds to measure, comma-separated: ivf, hnsw (HNSW takes ~10 min to build 1M on 2 cores)",
    )
    ap.add_argument("--queries", type=int, default=500, help="queries for recall and approximate latency")
    ap.add_argument("--flat-queries", type=int, default=30, help="single queries timed on the exact index")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import faiss

    faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    t = time.perf_counter()
    centres = rng.standard_normal((args.clusters, args.dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    xb = clustered(rng, centres, args.n, args.spread)
    xq = clustered(rng, centres, args.queries, args.spread)
    print(
        f"data: {args.n:,} × {args.dim} float32 ({xb.nbytes / 2**30:.1f} GiB), {args.clusters:,} clusters, spread {args.spread}, "
        f"{args.queries} held-out queries; FAISS {faiss.__version__} on {args.threads} threads  [{time.perf_counter() - t:.1f} s]",
        flush=True,
    )

    t = time.perf_counter()
    flat, _ = make_index(xb, "flat")
    flat_build = time.perf_counter() - t
    t = time.perf_counter()
    _, truth = flat.search(xq, 10)  # batched ground truth (BLAS)
    print(f"exact ground truth for {args.queries} queries (batched): {time.perf_counter() - t:.1f} s", flush=True)
    flat_lat, flat_found = latencies(flat, xq[: args.flat_queries])
    assert recall_at_k(flat_found, truth[: args.flat_queries]) > 0.99
    flat_p50, flat_p99 = (np.percentile(flat_lat, p) * 1e3 for p in (50, 99))
    rows = [("flat (exact)", flat_build, flat_p50, flat_p99, 1.0, "")]
    print(f"flat: build {flat_build:.1f} s, p50 {flat_p50:.2f} ms, p99 {flat_p99:.2f} ms ({args.flat_queries} single queries)", flush=True)
    del flat

    for kind in [k.strip() for k in args.kinds.split(",") if k.strip()]:
        t = time.perf_counter()
        index, params = make_index(xb, kind, seed=args.seed)
        build = time.perf_counter() - t
        lat, found = latencies(index, xq)
        recall = recall_at_k(found, truth)
        p50, p99 = (np.percentile(lat, p) * 1e3 for p in (50, 99))
        tuned = {k: v for k, v in params.items() if k in ("nlist", "nprobe", "M", "efConstruction", "efSearch", "tuned_recall_at_10")}
        rows.append((kind, build, p50, p99, recall, str(tuned)))
        print(f"{kind}: build {build:.1f} s {tuned}, p50 {p50:.3f} ms, p99 {p99:.3f} ms, recall@10 {recall:.3f}", flush=True)
        del index

    print()
    print(f"{'index':<14}{'build s':>9}{'p50 ms':>10}{'p99 ms':>10}{'recall@10':>11}{'p50 vs exact':>14}  parameters")
    for name, build, p50, p99, recall, extra in rows:
        print(f"{name:<14}{build:>9.1f}{p50:>10.3f}{p99:>10.3f}{recall:>11.3f}{flat_p50 / p50:>13.0f}×  {extra}")
    print(f"target: p50 < {P50_TARGET_MS} ms at recall@10 >= {RECALL_TARGET} on 2 cores")
    for name, _, p50, _, recall, _ in rows[1:]:
        ok = p50 < P50_TARGET_MS and recall >= RECALL_TARGET
        print(f"  {name}: {'met' if ok else 'NOT met'} (p50 {p50:.3f} ms, recall@10 {recall:.3f})")


if __name__ == "__main__":
    main()
