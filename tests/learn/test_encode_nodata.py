"""No-data-aware similarity: the Rust decoder fills each chip's no-data pixels with its valid mean and
measures its valid fraction; encode records it; index/similar keep, filter and show it; old files
without the column keep working; precision@k per no-data class of the query chip."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import typer
from typer.testing import CliRunner

pytest.importorskip("onnxruntime", reason="encode needs onnxruntime (pip install 'imagesim[encode]')")
pytest.importorskip("onnx")
pytest.importorskip("faiss", reason="imagesim index needs faiss (pip install faiss-cpu)")
from PIL import Image  # noqa: E402

from imagesim import _imagesim, grid, options  # noqa: E402
from imagesim.errors import EncodeError, InvalidArgumentError  # noqa: E402
from imagesim.learn import encode  # noqa: E402
from imagesim.learn.encode import EncodeSettings, run_encode  # noqa: E402
from imagesim.search.index import build_index, load_index  # noqa: E402
from imagesim.search.similar import geojson, precision_at_k, similar  # noqa: E402

from onnx_models import tiny_onnx  # noqa: E402

CELL = "120020223032"
CATALOG = "1030010000000001"
COLOUR = (150, 110, 70)


def chip_jpeg(border: int, colour: tuple[int, int, int] = COLOUR, *, noise: int = 0, seed: int = 0) -> bytes:
    """A 512 px chip whose left ``border`` columns are no-data (black) and the rest ``colour`` (± noise)."""
    rgb = np.zeros((512, 512, 3), np.int16)
    rgb[:, border:] = colour
    if noise:
        rgb[:, border:] += np.random.default_rng(seed).integers(-noise, noise + 1, (512, 512 - border, 3), dtype=np.int16)
    buf = io.BytesIO()
    Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def test_decode_fills_the_border_with_the_valid_mean(tmp_path):
    path = tmp_path / "a.jpg"
    path.write_bytes(chip_jpeg(128, noise=20))
    black = tmp_path / "b.jpg"
    black.write_bytes(chip_jpeg(512))
    out = np.zeros((2, 64, 64, 3), np.uint8)
    valid = np.zeros(2, np.float32)
    assert _imagesim.decode_batch([path, black], out, nodata_threshold=4, valid=valid) == [None, None]
    assert valid[0] == pytest.approx(0.75, abs=0.02)  # JPEG blocks along the edge may go either way
    assert valid[1] == 0.0 and out[1].max() <= 4  # no valid pixel: left as decoded, all black
    # The border (left quarter) now holds the valid pixels' mean: close to the data colour, no black.
    border = out[0, :, :14].reshape(-1, 3).astype(int)
    data = out[0, :, 20:].reshape(-1, 3).astype(int)
    assert (border.min(axis=0) > 40).all()
    np.testing.assert_allclose(border.mean(axis=0), data.mean(axis=0), atol=6)
    np.testing.assert_allclose(border.mean(axis=0), COLOUR, atol=8)

    plain = np.zeros((2, 64, 64, 3), np.uint8)
    assert _imagesim.decode_batch([path, black], plain) == [None, None]
    assert plain[0, :, :14].max() <= 4  # without a threshold the border stays black
    np.testing.assert_array_equal(plain[0, :, 20:], out[0, :, 20:])  # and the data is untouched
    with pytest.raises(ValueError, match="nodata_threshold"):
        _imagesim.decode_batch([path], plain[:1], valid=valid[:1])
    with pytest.raises(ValueError, match="one per path"):
        _imagesim.decode_batch([path], plain[:1], nodata_threshold=4, valid=valid)
    missing = np.zeros(1, np.float32)
    assert _imagesim.decode_batch([tmp_path / "missing.jpg"], plain[:1], nodata_threshold=4, valid=missing)[0]
    assert np.isnan(missing[0])


@pytest.fixture(scope="module")
def chips(tmp_path_factory) -> Path:
    """Four z17 chips named as `imagesim chip` names them: whole, half no-data, three-quarter no-data
    (all the same colour), and all no-data."""
    dest = tmp_path_factory.mktemp("nodata-chips")
    (dest / "10").mkdir()
    quadkeys = grid.children(CELL, 17)[:4]
    for qk, border in zip(quadkeys, (0, 256, 384, 512)):
        (dest / "10" / grid.chip_name(10, qk, CATALOG)).write_bytes(chip_jpeg(border))
    return dest


@pytest.fixture(scope="module")
def onnx(tmp_path_factory) -> Path:
    return tiny_onnx(tmp_path_factory.mktemp("onnx") / "model.onnx")


def _by_border(table: pl.DataFrame) -> pl.DataFrame:
    order = {qk: i for i, qk in enumerate(grid.children(CELL, 17)[:4])}
    return table.with_columns(pl.col("quadkey").replace_strict(order, return_dtype=pl.Int64).alias("i")).sort("i")


def test_encode_writes_valid_fraction_and_the_rule(onnx, chips, tmp_path):
    out = tmp_path / "emb.parquet"
    summary = run_encode(onnx, chips, EncodeSettings(out=out))
    assert summary.encoded == 4 and not summary.failed
    table = _by_border(pl.read_parquet(out))
    assert table["valid_fraction"].dtype == pl.Float32
    np.testing.assert_allclose(table["valid_fraction"].to_numpy(), [1.0, 0.5, 0.25, 0.0], atol=0.02)
    # The stand-in model embeds the mean colour: filled chips embed like the whole chip, whatever their border.
    emb = np.stack(table["embedding"].to_numpy())
    assert np.abs(emb[1:3] - emb[0]).max() < 0.01
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["nodata"] == {"fill": "valid_mean", "threshold": options.ENCODE_NODATA_THRESHOLD, "rule": side["nodata"]["rule"]}

    plain = tmp_path / "plain.parquet"
    run_encode(onnx, chips, EncodeSettings(out=plain, nodata_threshold=None))
    table = _by_border(pl.read_parquet(plain))
    assert table["valid_fraction"].null_count() == 4
    emb_plain = np.stack(table["embedding"].to_numpy())
    assert np.abs(emb_plain[2] - emb_plain[0]).max() > 0.05  # the border darkens the partial chip's embedding
    assert json.loads(plain.with_suffix(".json").read_text())["nodata"]["fill"] is None
    # Embeddings of two rules do not mix: resuming with the other rule is refused unless overwritten.
    with pytest.raises(EncodeError, match="nodata_threshold"):
        run_encode(onnx, chips, EncodeSettings(out=plain))
    assert run_encode(onnx, chips, EncodeSettings(out=plain, overwrite=True)).encoded == 4
    assert pl.read_parquet(plain)["valid_fraction"].null_count() == 0
    with pytest.raises(InvalidArgumentError, match="nodata_threshold"):
        run_encode(onnx, chips, EncodeSettings(out=plain, nodata_threshold=300))


def test_dask_task_measures_valid_fraction(onnx, chips):
    paths = sorted(str(p) for p in (chips / "10").glob("*.jpg"))
    res = encode.encode_chips_task(str(onnx), "cpu", paths, 3, 1, 4)
    assert res["errors"] == [None] * 4 and res["embedding"].shape == (4, 3)
    np.testing.assert_allclose(sorted(res["valid"]), [0.0, 0.25, 0.5, 1.0], atol=0.02)
    plain = encode.encode_chips_task(str(onnx), "cpu", paths, 3, 1, None)
    assert np.isnan(plain["valid"]).all()


def _embeddings(folder: Path, valid: list[float | None] | None) -> Path:
    """Eight chips, two clusters of four; ``valid``: their valid fractions (None: no column, an old file)."""
    rng = np.random.default_rng(0)
    quadkeys = grid.children(CELL, 17)[:8]
    vectors = np.stack([np.eye(4)[i // 4] + rng.normal(0, 0.05, 4) for i in range(8)]).astype(np.float32)
    table = pl.DataFrame(
        {
            "chip": [grid.chip_name(10, qk, CATALOG) for qk in quadkeys],
            "zone": [10] * 8,
            "quadkey": quadkeys,
            "model_id": ["m"] * 8,
            "predicted": [["a"]] * 8,
        }
    ).with_columns(pl.col("zone").cast(pl.UInt8), pl.Series("embedding", vectors, dtype=pl.Array(pl.Float32, 4)))
    if valid is not None:
        table = table.with_columns(pl.Series("valid_fraction", valid, dtype=pl.Float32))
    path = folder / "embeddings.parquet"
    table.write_parquet(path)
    return path


def test_old_embeddings_and_indexes_without_the_column(tmp_path):
    emb = _embeddings(tmp_path, None)
    build_index(emb, tmp_path / "index")
    loaded = load_index(tmp_path / "index")
    assert loaded.ids["valid_fraction"].null_count() == 8
    res = similar(loaded, [loaded.ids["chip"][0]], k=7)  # default min_valid: unmeasured chips are kept
    assert len(res.hits) == 7 and res.low_valid == 0 and all(h.valid_fraction is None for h in res.hits)
    # an index written before the column existed
    ids = tmp_path / "index" / "ids.parquet"
    pl.read_parquet(ids).drop("valid_fraction").write_parquet(ids)
    loaded = load_index(tmp_path / "index")
    assert loaded.ids["valid_fraction"].dtype == pl.Float64 and loaded.ids["valid_fraction"].null_count() == 8
    assert len(similar(loaded, [loaded.ids["chip"][0]], k=7).hits) == 7


@pytest.fixture()
def mixed_index(tmp_path) -> Path:
    emb = _embeddings(tmp_path, [1.0, 0.2, 0.9, None, 1.0, 0.1, 0.6, 0.4])
    build_index(emb, tmp_path / "index")
    return tmp_path / "index"


def test_similar_min_valid_filters_and_counts(mixed_index):
    loaded = load_index(mixed_index)
    chips = loaded.ids["chip"].to_list()
    res = similar(loaded, [chips[0]], k=7)
    assert res.min_valid == options.MIN_VALID == 0.5
    assert {h.chip for h in res.hits} == {chips[i] for i in (2, 3, 4, 6)}  # 1, 5, 7 below 0.5; 3 unmeasured: kept
    assert res.low_valid == 3 and res.excluded == 1
    assert {h.chip: h.valid_fraction for h in res.hits}[chips[3]] is None
    assert {h.chip: h.valid_fraction for h in res.hits}[chips[6]] == pytest.approx(0.6)
    props = geojson(res)["features"][0]["properties"]
    assert props["valid_fraction"] == pytest.approx(0.9)
    assert res.to_json()["query"]["min_valid"] == 0.5
    every = similar(loaded, [chips[0]], k=7, min_valid=None)
    assert len(every.hits) == 7 and every.low_valid == 0
    # a chip left out by the examples is not counted again as low-valid
    res = similar(loaded, [chips[1]], k=7, min_valid=0.95)
    assert res.low_valid == 4 and res.excluded == 1
    with pytest.raises(InvalidArgumentError, match="min_valid"):
        similar(loaded, [chips[0]], min_valid=1.5)


def _cli(*args: object):
    from imagesim.cli.search import register

    app = typer.Typer()
    register(app)
    return CliRunner().invoke(app, [str(a) for a in args])


def test_cli_min_valid(mixed_index):
    chip = pl.read_parquet(mixed_index / "ids.parquet")["chip"][0]
    res = _cli("similar", chip, "--index", mixed_index, "--json", "--k", "7")
    assert res.exit_code == 0, res.output
    assert len(json.loads(res.output)["results"]) == 4
    res = _cli("similar", chip, "--index", mixed_index, "--json", "--k", "7", "--min-valid", "0")
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert len(data["results"]) == 7 and data["query"]["min_valid"] == 0
    res = _cli("similar", chip, "--index", mixed_index, "--k", "7")
    assert res.exit_code == 0 and "valid" in res.output and "90%" in res.output
    res = _cli("similar", chip, "--index", mixed_index, "--min-valid", "2")
    assert res.exit_code != 0


def test_precision_per_nodata_class(mixed_index):
    loaded = load_index(mixed_index)
    chips = loaded.ids["chip"].to_list()
    labels = pl.DataFrame(
        {
            "chip": chips,
            "label_ids": [[0]] * 4 + [[1]] * 4,
            "nodata_class": ["all_data", "partial_data"] * 4,
        }
    )
    res = precision_at_k(loaded, labels, 3, sample=0)
    assert set(res.by_nodata_class) == {"all_data", "partial_data"}
    assert res.by_nodata_class["all_data"]["queries"] == 4 and res.by_nodata_class["partial_data"]["queries"] == 4
    assert res.by_nodata_class["all_data"]["precision"] == pytest.approx(1.0)
    assert "partial_data 1.000 (4 chips)" in res.line()
    assert precision_at_k(loaded, labels.drop("nodata_class"), 3, sample=0).by_nodata_class == {}
