"""Compressed-index benchmark at scale: 10^7 synthetic 512-d embeddings, `imagesim index --kind ivfpq`.

Data: ``--n`` vectors with the structure of real embeddings (low intrinsic dimension): ``--clusters``
centres drawn in a random ``--subspace``-d subspace of R^512; each cluster is itself a low-rank
gaussian (``--local``-d, its own random directions in that subspace, spread ``--spread``), plus small
isotropic noise (``--noise`` per coordinate) in all 512 dimensions; L2-normalised. They are generated
in batches and written as one ``embeddings.parquet`` (+ ``embeddings.json``) in `imagesim encode`'s
columns (chip, path, zone, quadkey, cell, catalog_id, model_id, embedding, predicted; no geometry
columns), one row group per batch, into ``--work`` (reused when it already holds ``--n`` rows).
Queries are ``--queries`` fresh draws from the same distribution (not in the index).

Phases, each in its own process so that its peak memory (``ru_maxrss``) is its own:

1. ``generate``: the Parquet file and the queries (skipped when present).
2. ``truth``: exact top-10 of every query by streaming over the Parquet file in batches
   (``artefacts.iter_embedding_batches``; query block × batch, running top-10).
3. ``build``: ``imagesim.search.index.build_index(kind="ivfpq")`` — build time, peak RSS,
   index.faiss and sidecar sizes.
4. ``query``: ``load_index`` then single queries (one per call, FAISS on ``--threads`` threads):
   p50/p99 latency, recall@10 against the exact top-10, RSS after loading (index + ids) and peak.

Each figure is printed beside its goal (issue 22: recall@10 >= 0.9, p50 < 20 ms, index <= 1 GB at
10^7) and a baseline (what the flat / IVF-Flat kinds would hold in memory).

    python benches/bench_index_scale.py [--n 10000000] [--work /tmp/imagesim-scale] [--queries 1000]
        [--rerank 100] [--no-rerank] [--threads 2] [--keep]

The work folder (about 2.1 KB per vector for the Parquet file plus 1 KB per vector of sidecar) is
deleted at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

DIM = 512
MODEL_ID = "bench0000000000000"
CATALOG = "1030010000000001"
BASE_QUADKEY = "12002"  # zone 10 (California); level-12 cells below it, 1,024 z17 chips each (16.7M chips in all)
GOAL_RECALL, GOAL_P50_MS, GOAL_INDEX_GB = 0.9, 20.0, 1.0


def rss_now() -> float:
    """Resident memory of this process now, GiB (VmRSS)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def rss_peak() -> float:
    """Peak resident memory of this process, GiB (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


class Generator:
    """Clustered low-intrinsic-dimension unit vectors (see the module docstring)."""

    def __init__(self, args: argparse.Namespace) -> None:
        rng = np.random.default_rng(args.seed)
        self.basis = np.linalg.qr(rng.standard_normal((DIM, args.subspace)))[0].T.astype(np.float32)  # subspace × 512
        self.centres = rng.standard_normal((args.clusters, args.subspace)).astype(np.float32)
        local = rng.standard_normal((args.clusters, args.subspace, args.local)).astype(np.float32)
        self.local = np.linalg.qr(local)[0].transpose(0, 2, 1).copy()  # clusters × local × subspace, orthonormal rows
        self.spread, self.noise, self.clusters = args.spread, args.noise, args.clusters

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        lab = rng.integers(self.clusters, size=n)
        u = rng.standard_normal((n, self.local.shape[1]), dtype=np.float32) * np.float32(self.spread)
        z = self.centres[lab] + np.einsum("bi,bij->bj", u, self.local[lab])
        x = z @ self.basis
        x += rng.standard_normal((n, DIM), dtype=np.float32) * np.float32(self.noise)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x


def chip_columns(start: int, n: int) -> dict[str, np.ndarray]:
    """Chip names of rows start..start+n: z17 quadkeys under BASE_QUADKEY in row order (encode's order: by cell)."""
    r = np.arange(start, start + n, dtype=np.int64)
    shifts = 2 * np.arange(11, -1, -1)
    digits = ((r[:, None] >> shifts) & 3).astype(np.uint8) + ord("0")
    tail = digits.view("S12").ravel().astype(str)
    quadkey = np.char.add(BASE_QUADKEY, tail)
    chip = np.char.add(np.char.add("Z10-", quadkey), f"_{CATALOG}.jpg")
    return {"chip": chip, "quadkey": quadkey}


def generate(args: argparse.Namespace, work: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = work / "embeddings.parquet"
    if path.is_file() and pq.ParquetFile(path).metadata.num_rows == args.n and (work / "queries.npy").is_file():
        print(f"generate: reusing {path} ({args.n:,} rows)", flush=True)
        return
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    gen = Generator(args)
    rng = np.random.default_rng(args.seed + 1)
    np.save(work / "queries.npy", gen.draw(rng, args.queries))
    schema = pa.schema(
        [
            ("chip", pa.string()),
            ("path", pa.string()),
            ("zone", pa.uint8()),
            ("quadkey", pa.string()),
            ("cell", pa.string()),
            ("catalog_id", pa.string()),
            ("model_id", pa.string()),
            ("embedding", pa.list_(pa.float32(), DIM)),
            ("predicted", pa.list_(pa.string())),
        ]
    )
    tmp = path.with_suffix(".parquet.tmp")
    with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
        for start in range(0, args.n, args.batch):
            n = min(args.batch, args.n - start)
            x = gen.draw(rng, n)
            cols = chip_columns(start, n)
            table = pa.table(
                {
                    "chip": pa.array(cols["chip"]),
                    "path": pa.array(np.char.add("10/", cols["chip"])),
                    "zone": pa.array(np.full(n, 10, np.uint8)),
                    "quadkey": pa.array(cols["quadkey"]),
                    "cell": pa.array(cols["quadkey"].astype("U12")),
                    "catalog_id": pa.array(np.full(n, CATALOG)),
                    "model_id": pa.array(np.full(n, MODEL_ID)),
                    "embedding": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), DIM),
                    "predicted": pa.array([[]] * n, pa.list_(pa.string())),
                },
                schema=schema,
            )
            writer.write_table(table, row_group_size=n)
            if (start // args.batch) % 10 == 0:
                print(f"  generated {start + n:,} / {args.n:,}  [{time.perf_counter() - t0:.0f} s]", flush=True)
    tmp.rename(path)
    (work / "embeddings.json").write_text(json.dumps({"model_id": MODEL_ID, "classes": [], "dim": DIM}))
    print(
        f"generate: {args.n:,} vectors → {path} ({path.stat().st_size / 2**30:.2f} GiB) in {time.perf_counter() - t0:.0f} s, "
        f"peak RSS {rss_peak():.2f} GiB",
        flush=True,
    )


def truth(args: argparse.Namespace, work: Path) -> None:
    """Exact top-10 of every query, streaming over the Parquet file (query block × batch, running top-10)."""
    from imagesim.artefacts import iter_embedding_batches
    from imagesim.search.ivfpq import TopK

    out = work / "truth.npy"
    if out.is_file():
        print(f"truth: reusing {out}", flush=True)
        return
    t0 = time.perf_counter()
    top = TopK(np.load(work / "queries.npy"), 10)
    for start, _, vectors in iter_embedding_batches(work / "embeddings.parquet", batch=args.batch, ids=False):
        top.add(start, vectors)
    np.save(out, top.rows)
    np.save(work / "truth_scores.npy", top.scores)
    print(
        f"truth: exact top-10 of {len(top.rows):,} queries by streaming in {time.perf_counter() - t0:.0f} s, peak RSS {rss_peak():.2f} GiB",
        flush=True,
    )


def build(args: argparse.Namespace, work: Path) -> None:
    import faiss

    from imagesim.search.index import build_index

    faiss.omp_set_num_threads(args.threads)
    out = work / "index"
    t0 = time.perf_counter()
    summary = build_index(work / "embeddings.parquet", out, kind="ivfpq", rerank=args.rerank, overwrite=True)
    seconds = time.perf_counter() - t0
    result = {
        "build_s": seconds,
        "train_s": summary.params["train_seconds"],
        "peak_rss_gib": rss_peak(),
        "index_faiss_gib": (out / "index.faiss").stat().st_size / 2**30,
        "ids_gib": (out / "ids.parquet").stat().st_size / 2**30,
        "sidecar_gib": (out / "vectors.f16.npy").stat().st_size / 2**30 if (out / "vectors.f16.npy").exists() else 0.0,
        "params": summary.params,
    }
    print(summary.line(), flush=True)
    print("RESULT " + json.dumps(result), flush=True)


def query(args: argparse.Namespace, work: Path) -> None:
    import faiss

    from imagesim.search.index import load_index

    faiss.omp_set_num_threads(args.threads)
    base = rss_now()
    t0 = time.perf_counter()
    loaded = load_index(work / "index")
    load_s = time.perf_counter() - t0
    rss_index_ids = rss_now() - base
    queries = np.load(work / "queries.npy")
    truth_rows = np.load(work / "truth.npy")
    truth_scores = np.load(work / "truth_scores.npy")
    loaded.search(queries[:1], 10)
    times = np.empty(len(queries))
    found = np.empty((len(queries), 10), np.int64)
    scores = np.empty((len(queries), 10), np.float32)
    for i, q in enumerate(queries):
        t = time.perf_counter()
        s, r = loaded.search(q[None], 10)
        times[i] = time.perf_counter() - t
        found[i], scores[i] = r[0], s[0]
    recall = float(np.mean([len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found, truth_rows)])) / 10
    # single queries gain little from OpenMP threads and lose on a busy machine: the same on one thread
    faiss.omp_set_num_threads(1)
    one = np.empty(len(queries))
    for i, q in enumerate(queries):
        t = time.perf_counter()
        loaded.search(q[None], 10)
        one[i] = time.perf_counter() - t
    faiss.omp_set_num_threads(args.threads)
    same = found == truth_rows
    score_err = float(np.abs(scores[same] - truth_scores[same]).max()) if same.any() else float("nan")
    # the same queries without re-ranking (PQ scores only)
    loaded.rerank = 0
    pq_found = np.stack([loaded.search(q[None], 10)[1][0] for q in queries[:200]])
    pq_recall = float(np.mean([len(set(f.tolist()) & set(t.tolist())) for f, t in zip(pq_found, truth_rows[:200])])) / 10
    result = {
        "load_s": load_s,
        "rss_after_load_gib": rss_index_ids,
        "peak_rss_gib": rss_peak(),
        "p50_ms": float(np.percentile(times, 50) * 1e3),
        "p99_ms": float(np.percentile(times, 99) * 1e3),
        "p50_ms_1_thread": float(np.percentile(one, 50) * 1e3),
        "p99_ms_1_thread": float(np.percentile(one, 99) * 1e3),
        "recall_at_10": recall,
        "recall_at_10_pq_only": pq_recall,
        "float16_score_error_max": score_err,
        "queries": len(queries),
    }
    print("RESULT " + json.dumps(result), flush=True)


def run_phase(phase: str, argv: list[str]) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--phase", phase, *argv], capture_output=True, text=True)
    sys.stdout.write(proc.stdout)
    if proc.returncode:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"phase {phase} failed ({proc.returncode})")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    result = json.loads(lines[-1][7:]) if lines else {}
    result["wall_s"] = time.perf_counter() - t0
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000_000)
    ap.add_argument("--work", type=Path, default=Path("/tmp/imagesim-scale"))
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--clusters", type=int, default=4096)
    ap.add_argument("--subspace", type=int, default=48)
    ap.add_argument("--local", type=int, default=8)
    ap.add_argument("--spread", type=float, default=1.0)
    ap.add_argument("--noise", type=float, default=0.03)
    ap.add_argument("--batch", type=int, default=100_000)
    ap.add_argument("--rerank", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    ap.add_argument("--phase", choices=("generate", "truth", "build", "query"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    work = args.work
    if args.phase:
        {"generate": generate, "truth": truth, "build": build, "query": query}[args.phase](args, work)
        return
    argv = [a for a in sys.argv[1:] if a != "--keep"]
    run_phase("generate", argv)
    run_phase("truth", argv)
    b = run_phase("build", argv)
    q = run_phase("query", argv)
    n = args.n
    flat_gib = n * DIM * 4 / 2**30
    print()
    print(f"{'figure':<34}{'measured':>14}  goal / baseline")
    print(f"{'build time':<34}{b['build_s']:>12.0f} s  (train {b['train_s']:.0f} s; IVF-Flat 1M: 94 s in docs/index.md)")
    print(f"{'peak RSS during build':<34}{b['peak_rss_gib']:>10.2f} GiB  all vectors as float32: {flat_gib:.1f} GiB")
    print(f"{'index.faiss':<34}{b['index_faiss_gib']:>10.2f} GiB  goal <= {GOAL_INDEX_GB} GB; flat/IVF-Flat {flat_gib:.1f} GiB")
    print(f"{'sidecar vectors.f16.npy (disk)':<34}{b['sidecar_gib']:>10.2f} GiB  optional (re-ranking), memory-mapped")
    print(f"{'ids.parquet':<34}{b['ids_gib']:>10.2f} GiB")
    print(f"{'RSS after load_index (index+ids)':<34}{q['rss_after_load_gib']:>10.2f} GiB")
    print(f"{'peak RSS at query time':<34}{q['peak_rss_gib']:>10.2f} GiB")
    print(f"{'p50 latency':<34}{q['p50_ms']:>11.2f} ms  goal < {GOAL_P50_MS} ms")
    print(f"{'p99 latency':<34}{q['p99_ms']:>11.2f} ms")
    print(f"{'p50 / p99, FAISS on 1 thread':<34}{q['p50_ms_1_thread']:>11.2f} ms  / {q['p99_ms_1_thread']:.2f} ms")
    print(f"{'recall@10 (re-ranked)':<34}{q['recall_at_10']:>14.3f}  goal >= {GOAL_RECALL}")
    print(f"{'recall@10 PQ only (200 queries)':<34}{q['recall_at_10_pq_only']:>14.3f}")
    print(f"{'max |score - exact| (float16)':<34}{q['float16_score_error_max']:>14.2e}")
    print(f"params: {json.dumps(b['params'])}")
    ok = (
        q["recall_at_10"] >= GOAL_RECALL
        and min(q["p50_ms"], q["p50_ms_1_thread"]) < GOAL_P50_MS
        and b["index_faiss_gib"] * 2**30 / 1e9 <= GOAL_INDEX_GB
    )
    print(f"goal at this size: {'met' if ok else 'NOT met'}")
    if not args.keep:
        shutil.rmtree(work)
        print(f"removed {work}")


if __name__ == "__main__":
    main()
