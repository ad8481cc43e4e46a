"""The compressed `ivfpq` index: streamed build, exact re-ranking from the float16 sidecar, queries.

One module-scoped build of 8,192 clustered 512-d vectors (8 level-12 cells of z17 chips) keeps it to
seconds; the streamed reader runs in batches of 1,000 rows so the build really goes batch by batch.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

faiss = pytest.importorskip("faiss", reason="imagesim index needs faiss (pip install faiss-cpu)")

from imagesim import grid  # noqa: E402
from imagesim.artefacts import INDEX_VECTORS, inspect_embeddings, iter_embedding_batches  # noqa: E402
from imagesim.errors import ImagesimFileNotFoundError, InvalidArgumentError  # noqa: E402
from imagesim.search.index import StoredVectors, build_index, choose_kind, load_index  # noqa: E402
from imagesim.search.ivfpq import TopK  # noqa: E402
from imagesim.search.similar import similar  # noqa: E402

DIM = 512
CELLS = [c for c in grid.children("1200202230", 12)][:8]  # zone 10, San Francisco area


def clustered(rng: np.random.Generator, n: int, clusters: int = 64) -> np.ndarray:
    """Low-intrinsic-dimension clusters (a 32-d subspace, each cluster 4-d), small noise, unit length."""
    basis = np.linalg.qr(rng.standard_normal((DIM, 32)))[0].T
    centres = rng.standard_normal((clusters, 32))
    local = rng.standard_normal((clusters, 4, 32))
    lab = rng.integers(clusters, size=n)
    z = centres[lab] + np.einsum("bi,bij->bj", rng.standard_normal((n, 4)), local[lab]) * 0.3
    x = (z @ basis + rng.standard_normal((n, DIM)) * 0.02).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def emb(tmp_path_factory) -> tuple[Path, np.ndarray, list[str]]:
    folder = tmp_path_factory.mktemp("emb")
    chips = [grid.chip_name(10, qk, "1030010000000001") for cell in CELLS for qk in grid.children(cell, 17)]
    raw = clustered(np.random.default_rng(0), len(chips))
    table = pl.DataFrame({"chip": chips, "model_id": "m1"}).with_columns(pl.Series("embedding", raw, dtype=pl.Array(pl.Float32, DIM)))
    path = folder / "embeddings.parquet"
    table.write_parquet(path, row_group_size=2048)
    (folder / "embeddings.json").write_text(json.dumps({"model_id": "m1", "classes": [], "dim": DIM}))
    return path, raw, chips


@pytest.fixture(scope="module")
def built(emb, tmp_path_factory):
    out = tmp_path_factory.mktemp("idx") / "index"
    seen: list[int] = []

    class Bar:
        def update(self, done: int) -> None:
            seen.append(done)

        def close(self) -> None:
            pass

    summary = build_index(emb[0], out, kind="auto", flat_max=1000, ivfpq_min=4000, rerank=50, batch=1000, progress=lambda total: Bar())
    return out, summary, seen


def test_streaming_reader_yields_bounded_batches(emb):
    path, raw, chips = emb
    info = inspect_embeddings(path)
    assert (info.n, info.dim, info.meta["model_id"]) == (len(chips), DIM, "m1")
    starts, total = [], 0
    for start, rows, vectors in iter_embedding_batches(path, batch=3000, info=info):
        assert len(vectors) <= 3000 and rows.height == len(vectors) and start == total
        np.testing.assert_allclose(vectors, raw[start : start + len(vectors)], atol=1e-6)
        assert rows["chip"].to_list() == chips[start : start + len(vectors)]
        assert {"zone", "quadkey", "cell", "catalog_id", "path"} <= set(rows.columns)  # filled from the chip name
        starts.append(start)
        total += len(vectors)
    assert starts == [0, 3000, 6000] and total == len(chips)


def test_inspect_refuses_duplicates_and_several_models(emb, tmp_path):
    path, raw, chips = emb
    table = pl.read_parquet(path)
    table.with_columns(pl.Series("chip", chips[:-1] + chips[:1])).write_parquet(tmp_path / "dup.parquet")
    with pytest.raises(InvalidArgumentError, match=chips[0]):
        inspect_embeddings(tmp_path / "dup.parquet")
    table.with_columns(pl.Series("model_id", ["a", "b"] * (len(chips) // 2))).write_parquet(tmp_path / "models.parquet")
    with pytest.raises(InvalidArgumentError, match="several models"):
        inspect_embeddings(tmp_path / "models.parquet")
    with pytest.raises(ImagesimFileNotFoundError):
        inspect_embeddings(tmp_path / "none.parquet")


def test_auto_picks_ivfpq_above_threshold(emb, built):
    out, summary, seen = built
    assert choose_kind("auto", 2_000_001) == "ivfpq" and choose_kind("auto", 2_000_000) == "ivf"
    assert summary.kind == "ivfpq" and summary.requested == "auto"
    meta = json.loads((out / "index.json").read_text())
    p = meta["params"]
    assert meta["kind"] == "ivfpq" and p["m"] == 64 and p["bytes_per_vector"] <= 64 and p["rerank"] == 50 and p["ivfpq_min"] == 4000
    assert p["tuned_recall_at_10"] >= 0.95 and "nprobe" in p
    assert "ivfpq" in summary.line() and "re-ranking 50" in summary.line()
    # the bar went batch by batch through both passes
    assert len(seen) >= 2 * 8 and seen[-1] == 2 * len(emb[2])
    side = np.load(out / INDEX_VECTORS, mmap_mode="r")
    assert side.dtype == np.float16 and side.shape == (len(emb[2]), DIM)
    assert not (out / ".ids-parts").exists()


def test_reranked_results_are_exact(emb, built):
    path, raw, chips = emb
    loaded = load_index(built[0])
    assert loaded.kind == "ivfpq" and isinstance(loaded.sidecar, StoredVectors) and loaded.rerank == 50
    rng = np.random.default_rng(1)
    rows = rng.choice(len(chips), 100, replace=False)
    truth = TopK(raw[rows], 10, exclude=rows)
    truth.add(0, raw)
    scores, found = loaded.search(raw[rows], 11)
    hits = []
    for r, f, s, t in zip(rows, found, scores, truth.rows):
        keep = f != r
        f, s = f[keep][:10], s[keep][:10]
        hits.append(len(set(f.tolist()) & set(t.tolist())))
        # scores are true cosines (float16 storage: within 1e-3) and sorted
        np.testing.assert_allclose(s, raw[f] @ raw[r], atol=1e-3)
        assert np.all(np.diff(s) <= 1e-7)
    assert np.mean(hits) / 10 >= 0.9
    # without re-ranking: PQ scores, approximate
    pq_only = load_index(built[0], rerank=0)
    s0, f0 = pq_only.search(raw[rows[:5]], 10)
    assert np.abs(s0 - np.einsum("qkd,qd->qk", raw[f0], raw[rows[:5]])).max() > 1e-3


def test_similar_and_vectors_on_ivfpq(emb, built):
    path, raw, chips = emb
    loaded = load_index(built[0])
    np.testing.assert_allclose(loaded.vectors([0, 17]), raw[[0, 17]], atol=1e-3)
    res = similar(loaded, [chips[5]], k=10)
    assert len(res.hits) == 10 and all(h.chip != chips[5] for h in res.hits)
    scores = raw @ raw[5]
    scores[5] = -np.inf
    expected = {chips[i] for i in np.argsort(-scores)[:10]}
    assert len(expected & {h.chip for h in res.hits}) >= 8
    np.testing.assert_allclose([h.score for h in res.hits], [float(raw[chips.index(h.chip)] @ raw[5]) for h in res.hits], atol=1e-3)
    assert len(similar(loaded, [chips[5]], k=500).hits) == 500


def test_no_rerank_and_missing_sidecar(emb, tmp_path):
    path, raw, chips = emb
    out = tmp_path / "plain"
    summary = build_index(path, out, kind="ivfpq", rerank=0, batch=4096, target_recall=0.5)
    assert summary.params["rerank"] == 0 and not (out / INDEX_VECTORS).exists()
    loaded = load_index(out)
    assert loaded.sidecar is None
    assert loaded.vectors([3]).shape == (1, DIM)  # reconstructed from PQ (direct map)
    with pytest.raises(ImagesimFileNotFoundError, match=INDEX_VECTORS):
        load_index(out, rerank=20)
    with pytest.raises(InvalidArgumentError, match="rerank"):
        build_index(path, tmp_path / "x", kind="ivfpq", rerank=-1)
    small = tmp_path / "small.parquet"
    pl.read_parquet(path).head(300).write_parquet(small)
    with pytest.raises(InvalidArgumentError, match="too few"):
        build_index(small, tmp_path / "y", kind="ivfpq")


def test_cli_rerank_flag(emb, tmp_path):
    import typer
    from typer.testing import CliRunner

    from imagesim.cli.search import register

    app = typer.Typer()
    register(app)
    res = CliRunner().invoke(app, ["index", "--embeddings", str(emb[0]), "--out", str(tmp_path / "i"), "--kind", "ivfpq", "--rerank", "-5"])
    assert isinstance(res.exception, InvalidArgumentError) and "rerank" in str(res.exception)
    res = CliRunner().invoke(app, ["index", "--help"])
    assert "--rerank" in res.output and "--ivfpq-min" in res.output and "ivfpq" in res.output


def test_stored_vectors_read_rows_like_the_array(tmp_path):
    from imagesim.errors import InvalidArgumentError

    want = np.random.default_rng(2).standard_normal((50, 8)).astype(np.float16)
    np.save(tmp_path / "v.npy", want)
    stored = StoredVectors(tmp_path / "v.npy")
    rows = np.array([49, 0, 7, 7])
    assert stored.shape == (50, 8) and len(stored) == 50
    assert np.array_equal(stored[rows], want[rows]) and stored[[]].shape == (0, 8)
    with pytest.raises(IndexError):
        stored[[50]]
    (tmp_path / "cut.npy").write_bytes((tmp_path / "v.npy").read_bytes()[:-10])
    with pytest.raises(InvalidArgumentError, match="truncated"):
        StoredVectors(tmp_path / "cut.npy")
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    with pytest.raises(InvalidArgumentError, match="not a readable"):
        StoredVectors(tmp_path / "junk.npy")
