"""`imagesim index` / `imagesim similar`: synthetic clustered embeddings on real grid quadkeys.

The fixture writes an ``embeddings.parquet`` in the shape `imagesim encode` writes: chips of two
level-12 cells of zone 10, some quadkeys with two acquisitions, 512-d vectors drawn around one
centre per label so that precision@10 is measurable.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import typer
from typer.testing import CliRunner

faiss = pytest.importorskip("faiss", reason="imagesim index needs faiss (pip install faiss-cpu)")

from imagesim import grid  # noqa: E402
from imagesim.artefacts import CLOUD_FRACTION, read_embeddings  # noqa: E402
from imagesim.cli.search import register  # noqa: E402
from imagesim.errors import (  # noqa: E402
    ImagesimFileNotFoundError,
    InvalidArgumentError,
    OutputExistsError,
)
from imagesim.search.index import build_index, choose_kind, load_index  # noqa: E402
from imagesim.search.similar import precision_at_k, query_vector, resolve, similar  # noqa: E402

from embedding_table import embeddings_table  # noqa: E402

CELLS = ("120020223032", "120020223033")  # zone 10, San Francisco; x 550-555 km / 555-560 km
DIM = 512
N_LABELS = 12
CLASSES = [f"class{i}" for i in range(N_LABELS)]
MODEL_ID = "0123456789abcdef"


def make_embeddings(folder: Path, *, seed: int = 0, per_cell: int = 1024, repeat_every: int = 4) -> tuple[Path, np.ndarray, pl.DataFrame]:
    """embeddings.parquet + embeddings.json; returns (path, raw vectors, rows with 'label')."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((N_LABELS, DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    records: list[dict] = []
    vectors: list[np.ndarray] = []
    for cell in CELLS:
        for i, qk in enumerate(grid.children(cell, 17)[:per_cell]):
            label = int(rng.integers(N_LABELS))
            base = centres[label] + rng.standard_normal(DIM).astype(np.float32) * 1.2 / np.sqrt(DIM)
            cats = ["1030010000000001"] + (["1040010000000002"] if i % repeat_every == 0 else [])
            for cat in cats:
                v = base + rng.standard_normal(DIM).astype(np.float32) * 0.2 / np.sqrt(DIM)
                chip = grid.chip_name(10, qk, cat)
                records.append(
                    dict(
                        chip=chip,
                        path=f"10/{chip}",
                        zone=10,
                        quadkey=qk,
                        cell=qk[:12],
                        catalog_id=cat,
                        model_id=MODEL_ID,
                        predicted=[CLASSES[label]],
                        label=label,
                    )
                )
                vectors.append((v / np.linalg.norm(v)).astype(np.float32))
    raw = np.stack(vectors)
    rows = pl.DataFrame(records).with_columns(pl.col("zone").cast(pl.UInt8))
    probs = np.full((len(rows), N_LABELS), 0.1, dtype=np.float32)
    table = rows.drop("label").with_columns(
        pl.Series("embedding", raw, dtype=pl.Array(pl.Float32, DIM)),
        pl.Series("probabilities", probs, dtype=pl.Array(pl.Float32, N_LABELS)),
    )
    path = folder / "embeddings.parquet"
    table.write_parquet(path)
    (folder / "embeddings.json").write_text(json.dumps({"model_id": MODEL_ID, "classes": CLASSES, "dim": DIM}))
    return path, raw, rows


@pytest.fixture(scope="module")
def emb(tmp_path_factory):
    return make_embeddings(tmp_path_factory.mktemp("emb"))


@pytest.fixture(scope="module")
def flat_dir(emb, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("idx") / "index"
    build_index(emb[0], out)
    return out


def brute_force(raw: np.ndarray, q: np.ndarray, excluded: np.ndarray, k: int) -> list[int]:
    scores = raw @ q
    scores[excluded] = -np.inf
    return np.argsort(-scores, kind="stable")[:k].tolist()


def app() -> typer.Typer:
    a = typer.Typer()
    register(a)
    return a


def cli(*args: str):
    return CliRunner().invoke(app(), [str(a) for a in args])


# --- build and load ---


def test_build_load_round_trip(emb, flat_dir):
    path, raw, rows = emb
    for name in ("index.faiss", "ids.parquet", "index.json"):
        assert (flat_dir / name).is_file()
    loaded = load_index(flat_dir)
    meta = loaded.meta
    assert meta["kind"] == "flat" and meta["requested_kind"] == "auto"
    assert (meta["n"], meta["dim"], meta["model_id"], meta["classes"]) == (len(rows), DIM, MODEL_ID, CLASSES)
    assert meta["embeddings"]["path"] == str(path.resolve()) and meta["embeddings"]["mtime_ns"] == path.stat().st_mtime_ns
    ids = loaded.ids
    assert ids.columns == [
        "row",
        "chip",
        "path",
        "zone",
        "quadkey",
        "cell",
        "catalog_id",
        "predicted",
        "cloud_fraction",
        "valid_fraction",
        "lon",
        "lat",
    ]
    assert ids["chip"].to_list() == rows["chip"].to_list()
    assert ids["predicted"].to_list() == rows["predicted"].to_list()
    np.testing.assert_allclose(loaded.vectors([0, 5, len(rows) - 1]), raw[[0, 5, -1]], atol=1e-6)
    # chip centres: pyproj on the grid's own bounds, and near San Francisco
    from pyproj import Transformer

    t = Transformer.from_crs(32610, 4326, always_xy=True)
    for r in (0, 777, len(rows) - 1):
        b = grid.bounds(ids["quadkey"][r])
        lon, lat = t.transform((b.west + b.east) / 2, (b.south + b.north) / 2)
        assert abs(ids["lon"][r] - lon) < 1e-9 and abs(ids["lat"][r] - lat) < 1e-9
    assert ids["lon"].is_between(-122.5, -122.3).all() and ids["lat"].is_between(37.7, 37.85).all()


def test_embeddings_are_normalised_again(tmp_path):
    path, raw, rows = make_embeddings(tmp_path, per_cell=40)
    table = pl.read_parquet(path)
    table = table.with_columns(pl.Series("embedding", raw * 3.0, dtype=pl.Array(pl.Float32, DIM)))
    table.write_parquet(path)
    _, vectors, meta = read_embeddings(path)
    np.testing.assert_allclose(vectors, raw, atol=1e-6)
    assert meta["model_id"] == MODEL_ID


def test_exact_index_returns_true_neighbours(emb, flat_dir):
    path, raw, rows = emb
    loaded = load_index(flat_dir)
    qk = rows["quadkey"].to_numpy()
    for r in (3, 500, 1500):
        res = similar(loaded, [rows["chip"][r]], k=10)
        excluded = qk == qk[r]
        truth = brute_force(raw, raw[r], excluded, 10)
        assert [h.chip for h in res.hits] == rows["chip"].gather(truth).to_list()
        np.testing.assert_allclose([h.score for h in res.hits], (raw @ raw[r])[truth], atol=1e-5)


def test_auto_kind_and_approximate_indexes(emb, tmp_path):
    path, raw, rows = emb
    assert choose_kind("auto", 100_000) == "flat" and choose_kind("auto", 100_001) == "ivf"
    summary = build_index(path, tmp_path / "ivf", flat_max=500)
    assert summary.kind == "ivf" and "nprobe" in summary.params and summary.params["tuned_recall_at_10"] >= 0.95
    assert "ivf" in summary.line() and "auto" in summary.line()
    hnsw = build_index(path, tmp_path / "hnsw", kind="hnsw")
    assert hnsw.kind == "hnsw" and hnsw.params["M"] == 32
    qk = rows["quadkey"].to_numpy()
    for folder in (tmp_path / "ivf", tmp_path / "hnsw"):
        loaded = load_index(folder)
        recalls = []
        for r in range(0, len(rows), 97):
            truth = set(rows["chip"].gather(brute_force(raw, raw[r], qk == qk[r], 10)).to_list())
            got = {h.chip for h in similar(loaded, [rows["chip"][r]], k=10).hits}
            recalls.append(len(truth & got) / 10)
        assert np.mean(recalls) >= 0.9, (folder, np.mean(recalls))
        # many results: the approximate index still returns k of them
        assert len(similar(loaded, [rows["chip"][0]], k=1000).hits) == 1000


# --- queries ---


def test_positives_and_negatives(emb, flat_dir):
    path, raw, rows = emb
    loaded = load_index(flat_dir)
    chips = rows["chip"]
    pos, neg = [chips[10], chips[20]], [chips[30]]
    q = query_vector(loaded, [resolve(loaded, c) for c in pos], [resolve(loaded, c) for c in neg])
    expected = (raw[10] + raw[20]) / 2 - raw[30]
    np.testing.assert_allclose(q, expected / np.linalg.norm(expected), atol=1e-5)
    res = similar(loaded, pos, neg, k=15)
    qk = rows["quadkey"].to_numpy()
    excluded = np.isin(qk, qk[[10, 20, 30]])
    assert [h.chip for h in res.hits] == chips.gather(brute_force(raw, q, excluded, 15)).to_list()
    # the negative's neighbourhood is pushed away
    assert all(h.score < 1 for h in res.hits)


def test_exclusions(emb, flat_dir):
    path, raw, rows = emb
    loaded = load_index(flat_dir)
    r = 0  # quadkey with two acquisitions
    chip, quadkey, cell = rows["chip"][r], rows["quadkey"][r], rows["cell"][r]
    assert (rows["quadkey"] == quadkey).sum() == 2
    res = similar(loaded, [chip], k=200)
    assert all(h.quadkey != quadkey for h in res.hits)
    assert any(h.quadkey[:12] == cell for h in res.hits)
    res = similar(loaded, [chip], k=200, exclude_same_cell=True)
    assert len(res.hits) == 200 and all(h.quadkey[:12] != cell for h in res.hits)


def test_filters_excluding_most_chips_widen_the_search(emb, flat_dir):
    """A filter that leaves out most of the index: the search asks for a few more than k and widens until k
    are kept, never for k + every excluded chip at once; the answer is the exact top k of the kept chips."""
    path, raw, rows = emb
    loaded = load_index(flat_dir)
    rng = np.random.default_rng(5)
    cloudy = rng.random(loaded.n) < 0.9
    loaded.ids = loaded.ids.with_columns(pl.Series(CLOUD_FRACTION, np.where(cloudy, 0.8, 0.0)))
    asked: list[int] = []
    search = loaded.search

    def recording(queries, k):
        asked.append(k)
        return search(queries, k)

    loaded.search = recording  # type: ignore[method-assign]
    chip, quadkey = rows["chip"][0], rows["quadkey"][0]
    res = similar(loaded, [chip], k=5, max_cloud=0.5, min_valid=None)
    excluded = cloudy | (rows["quadkey"] == quadkey).to_numpy()
    want = brute_force(raw, raw[0] / np.linalg.norm(raw[0]), excluded, 5)  # a chip example: its own vector
    assert [rows["chip"][r] for r in want] == [h.chip for h in res.hits]
    assert asked[0] < 5 + int(excluded.sum()) and asked == sorted(asked)
    assert res.cloudy == int((cloudy & ~(rows["quadkey"] == quadkey).to_numpy()).sum())


def test_quadkey_with_several_acquisitions(emb, flat_dir):
    path, raw, rows = emb
    loaded = load_index(flat_dir)
    quadkey = rows["quadkey"][5]
    both = np.flatnonzero(rows["quadkey"].to_numpy() == quadkey)
    assert len(both) == 2
    np.testing.assert_array_equal(np.sort(resolve(loaded, quadkey)), both)
    mean = raw[both].mean(axis=0)
    q = mean / np.linalg.norm(mean)
    res = similar(loaded, [quadkey], k=10)
    excluded = rows["quadkey"].to_numpy() == quadkey
    assert [h.chip for h in res.hits] == rows["chip"].gather(brute_force(raw, q, excluded, 10)).to_list()
    # a path to a chip works as well as its name; the extension may be left out
    assert resolve(loaded, f"/data/chips/10/{rows['chip'][5]}").tolist() == [5]
    assert resolve(loaded, rows["chip"][5].removesuffix(".jpg")).tolist() == [5]


# --- the command line ---


def test_cli_table_json_and_geojson(emb, flat_dir, tmp_path):
    path, raw, rows = emb
    chip = rows["chip"][7]
    res = cli("similar", chip, "--index", flat_dir)
    assert res.exit_code == 0, res.output
    assert "rank" in res.output and "class" in res.output
    res = cli("similar", chip, "--index", flat_dir, "--json", "--k", "5")
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["query"]["positives"] == [chip] and len(data["results"]) == 5
    hit = data["results"][0]
    assert set(hit) >= {"rank", "score", "chip", "zone", "quadkey", "lon", "lat", "labels"}
    assert hit["rank"] == 1 and hit["labels"] == rows.filter(pl.col("chip") == hit["chip"])["predicted"][0].to_list()

    gj = tmp_path / "many.geojson"
    res = cli("similar", chip, "--index", flat_dir, "--k", "1000", "--geojson", gj, "--json")
    assert res.exit_code == 0, res.output
    fc = json.loads(gj.read_text())
    assert fc["type"] == "FeatureCollection" and len(fc["features"]) == 1000
    from pyproj import Transformer
    from shapely.geometry import shape

    t = Transformer.from_crs(32610, 4326, always_xy=True)
    for f in fc["features"][:50]:
        p = f["properties"]
        assert set(p) >= {"rank", "score", "chip", "labels"}
        poly = shape(f["geometry"])
        assert poly.is_valid and poly.exterior.is_ccw
        ring = f["geometry"]["coordinates"][0]
        assert len(ring) == 5 and ring[0] == ring[-1]
        b = grid.bounds(p["quadkey"])
        lon, lat = t.transform(b.west, b.south)
        assert abs(ring[0][0] - lon) < 1e-6 and abs(ring[0][1] - lat) < 1e-6
        # a 156.25 m chip: about 0.0018 degrees of longitude at 37.8° N
        assert 0.0015 < poly.bounds[2] - poly.bounds[0] < 0.0021
    # GDAL (what QGIS reads GeoJSON with) opens it
    ogr = pytest.importorskip("osgeo.ogr")
    ds = ogr.Open(str(gj))
    assert ds is not None and ds.GetLayer(0).GetFeatureCount() == 1000


def test_cli_index_overwrite_and_errors(emb, tmp_path):
    path, raw, rows = emb
    out = tmp_path / "index"
    res = cli("index", "--embeddings", path, "--out", out)
    assert res.exit_code == 0, res.output
    assert "flat" in res.output and f"{len(rows):,}" in res.output
    res = cli("index", "--embeddings", path, "--out", out)
    assert isinstance(res.exception, OutputExistsError) and "--overwrite" in str(res.exception)
    res = cli("index", "--embeddings", path, "--out", out, "--overwrite", "--kind", "ivf")
    assert res.exit_code == 0, res.output
    assert load_index(out).kind == "ivf"
    res = cli("index", "--embeddings", path, "--out", tmp_path / "other", "--kind", "lsh")
    assert isinstance(res.exception, InvalidArgumentError) and "lsh" in str(res.exception)
    res = cli("index", "--embeddings", tmp_path / "nope.parquet", "--out", tmp_path / "x")
    assert isinstance(res.exception, ImagesimFileNotFoundError) and "nope.parquet" in str(res.exception)
    pl.DataFrame({"chip": ["a"]}).write_parquet(tmp_path / "bad.parquet")
    res = cli("index", "--embeddings", tmp_path / "bad.parquet", "--out", tmp_path / "x")
    assert isinstance(res.exception, InvalidArgumentError) and "embedding" in str(res.exception)


def test_similar_errors(emb, flat_dir, tmp_path):
    path, raw, rows = emb
    chip = rows["chip"][0]
    for args, exc, words in [
        (["Z10-120020223032000000_1030010000000009.jpg"], InvalidArgumentError, "Z10-120020223032000000_1030010000000009"),
        (["12002022303000000"], InvalidArgumentError, "12002022303000000"),
        ([chip, "--k", "0"], InvalidArgumentError, "--k"),
        ([chip, "--k", "10001"], InvalidArgumentError, "10,000"),
        ([chip, "--negative", "nothing.jpg"], InvalidArgumentError, "nothing.jpg"),
        ([], InvalidArgumentError, "chip"),
    ]:
        res = cli("similar", *args, "--index", flat_dir)
        assert isinstance(res.exception, exc) and words in str(res.exception), (args, res.exception)
    res = cli("similar", chip, "--index", tmp_path / "missing")
    assert isinstance(res.exception, ImagesimFileNotFoundError) and "missing" in str(res.exception)
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("index.json", "ids.parquet"):
        (broken / name).write_bytes((flat_dir / name).read_bytes())
    res = cli("similar", chip, "--index", broken)
    assert isinstance(res.exception, ImagesimFileNotFoundError) and "index.faiss" in str(res.exception)
    (broken / "index.faiss").write_bytes(b"not a faiss index")
    res = cli("similar", chip, "--index", broken)
    assert isinstance(res.exception, InvalidArgumentError) and "index.faiss" in str(res.exception)


# --- quality ---


def labels_frame(rows: pl.DataFrame) -> pl.DataFrame:
    """One true label per chip plus a common second label on half of them."""
    common = N_LABELS  # a label most chips carry: never the dominant (rarest) one
    ids = [[lab, common] if i % 2 else [lab] for i, lab in enumerate(rows["label"].to_list())]
    return pl.DataFrame({"chip": rows["chip"], "label_ids": ids}, schema={"chip": pl.String, "label_ids": pl.List(pl.UInt16)})


def test_precision_at_10_well_above_random(emb, flat_dir, tmp_path):
    path, raw, rows = emb
    res = precision_at_k(flat_dir, labels_frame(rows), k=10, sample=500)
    assert res.queries == 500 and res.labelled == len(rows)
    assert 0.05 < res.baseline < 0.15  # ≈ 1/12
    assert res.precision > 0.9 and res.lift > 5
    assert set(res.per_class) == {str(i) for i in range(N_LABELS)}

    # shuffled labels: precision falls to the baseline
    shuffled = labels_frame(rows).with_columns(pl.col("label_ids").shuffle(seed=1))
    res_random = precision_at_k(flat_dir, shuffled, k=10, sample=500)
    assert abs(res_random.precision - res_random.baseline) < 0.05

    # the CLI hook, on a labels.parquet with its labels.json
    lab = labels_frame(rows).with_columns(cell=pl.col("chip").str.slice(4, 12), bitset=pl.lit([0], dtype=pl.List(pl.UInt64)))
    lab.write_parquet(tmp_path / "labels.parquet")
    (tmp_path / "labels.json").write_text(json.dumps({"classes": CLASSES + ["common"]}))
    out = cli("similar", "--evaluate", "--labels", tmp_path / "labels.parquet", "--index", flat_dir, "--sample", "300", "--json")
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert data["precision"] > 0.9 and data["queries"] == 300 and "class3" in data["per_class"]
    out = cli("similar", "--evaluate", "--labels", tmp_path / "labels.parquet", "--index", flat_dir, "--sample", "300")
    assert out.exit_code == 0 and "precision@10" in out.output and "random" in out.output
    out = cli("similar", "--evaluate", "--index", flat_dir)
    assert isinstance(out.exception, InvalidArgumentError) and "--labels" in str(out.exception)


# --- the real sample pipeline: chips and OSM labels of the small sample ---


@pytest.fixture(scope="module")
def sample_index(tmp_path_factory, small_sample):
    """Chips and labels of the small sample; embeddings from colour features until `imagesim encode` is used.

    The stand-in embedding (a 4×4×4 RGB histogram and an 8×8 thumbnail of each chip) is written
    with exactly the columns `imagesim encode` writes, so the index sees real chip names, paths,
    several acquisitions of one quadkey, and labels built from the sample's OSM data.
    """
    from PIL import Image

    from imagesim.imagery.chip import ChipSettings, run_chip
    from imagesim.labels.build import LabelSettings, build_labels
    from imagesim.labels.cells import find_cells
    from imagesim.labels.osm_import import import_osm

    base = tmp_path_factory.mktemp("sample-index")
    chips = base / "chips"
    run_chip(small_sample.root, chips, ChipSettings(zoom=17, skip_empty=True))
    osm_root = base / "ard"
    cells = find_cells(small_sample.root)
    for cell in cells:
        cell.folder(osm_root).mkdir(parents=True)
    import_osm(small_sample.osm_pbf, osm_root, cells)
    build_labels(chips, osm_root, LabelSettings(include=("partial",)))

    manifest = pl.read_parquet(chips / "chips.parquet").filter(pl.col("nodata_class") != "no_data")
    vectors = []
    for zone, chip in zip(manifest["zone"].to_list(), manifest["chip"].to_list()):
        img = np.asarray(Image.open(chips / str(zone) / chip).convert("RGB").reduce(8))
        hist = np.histogramdd(img.reshape(-1, 3), bins=(4, 4, 4), range=[(0, 256)] * 3)[0].ravel()
        thumb = np.asarray(Image.fromarray(img).convert("L").resize((8, 8))).ravel() / 255.0
        v = np.concatenate([hist / hist.sum() * 4, thumb - thumb.mean()]).astype(np.float32)
        vectors.append(v / np.linalg.norm(v))
    table = embeddings_table(manifest, np.stack(vectors), MODEL_ID, [[] for _ in vectors])
    table.write_parquet(base / "embeddings.parquet")
    build_index(base / "embeddings.parquet", base / "index")
    return chips, base / "index", table


def test_sample_pipeline_index(sample_index):
    chips, index_dir, table = sample_index
    loaded = load_index(index_dir)
    assert loaded.n == table.height > 50
    multi = table.group_by("quadkey").len().filter(pl.col("len") > 1)["quadkey"]
    assert multi.len() > 0, "the sample has a cell with two acquisitions"
    res = similar(loaded, [multi[0]], k=5)
    assert len(res.hits) == 5 and all(h.quadkey != multi[0] for h in res.hits)
    for h in res.hits:
        assert (chips / h.path).is_file()
        assert -126 < h.lon < -120 and 30 < h.lat < 45  # zone 10 north
    # labels built from the sample's OSM data: neighbours in colour share the rarest label more often than chance
    res = precision_at_k(index_dir, chips / "labels.parquet", k=10)
    print(res.line())
    assert res.queries > 20 and res.precision > res.baseline, res
