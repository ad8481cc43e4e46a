"""Learn and search runs that do nothing useful exit 1 and say why; re-runs with everything already
done exit 0 and say so. Through the `imagesim` command (the ``cli`` fixture): train, encode, index,
similar."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from imagesim import _imagesim

from embedding_table import embeddings_table


@pytest.fixture(scope="module")
def chips(small_sample, tmp_path_factory) -> Path:
    """The small sample cut at zoom 17: 3072 chips, 74 of them with data."""
    from imagesim.imagery.chip import ChipSettings, run_chip

    dest = tmp_path_factory.mktemp("nothing-done-learn-chips")
    run_chip(small_sample.root, dest, ChipSettings(zoom=17))
    return dest


def one_line(stderr: str) -> str:
    assert "Traceback" not in stderr
    line = stderr.strip().splitlines()[-1]
    assert line.startswith("error: "), stderr
    return line


def labels_file(chips: Path, dest: Path, labelled: dict[str, list[int]] | None = None, split: dict[str, str] | None = None) -> Path:
    """labels.parquet (+ labels.json) of the chips with data: ``labelled`` chips get those class ids,
    the rest none; ``split`` gives every chip's side (default: no split)."""
    classes = ["building", "road"]
    table = pl.read_parquet(chips / "chips.parquet").filter(pl.col("nodata_class") != "no_data").sort("chip")
    names = table["chip"].to_list()
    ids = [sorted((labelled or {}).get(c, [])) for c in names]
    offsets = np.cumsum([0] + [len(i) for i in ids]).astype(np.int64)
    flat = np.array([c for i in ids for c in i], dtype=np.uint32)
    words = _imagesim.label_words(len(classes))
    bits = np.asarray(_imagesim.pack_labels(flat, offsets, len(classes))).reshape(len(names), words)
    frame = table.select(
        "chip",
        pl.format("{}/{}", "zone", "chip").alias("path"),
        pl.col("zone").cast(pl.UInt8),
        "quadkey",
        "cell",
        "catalog_id",
        "nodata_class",
        pl.Series("label_ids", ids, dtype=pl.List(pl.UInt16)),
        pl.Series("bitset", bits, dtype=pl.Array(pl.UInt64, words)),
        pl.Series("split", [None if split is None else split[c] for c in names], dtype=pl.String),
    )
    dest.mkdir(parents=True, exist_ok=True)
    frame.write_parquet(dest / "labels.parquet")
    (dest / "labels.json").write_text(json.dumps({"classes": classes, "n_classes": len(classes), "words": words}))
    return dest / "labels.parquet"


def nodata_index(chips: Path, path: Path, with_data: int) -> Path:
    """A nodata-index.json giving the first ``with_data`` chips all_data and the rest no_data."""
    names = sorted(pl.read_parquet(chips / "chips.parquet")["chip"].to_list())
    path.write_text(json.dumps({"all_data": names[:with_data], "partial_data": [], "no_data": names[with_data:]}))
    return path


# --------------------------------------------------------------------------------------------
# train
# --------------------------------------------------------------------------------------------


def test_train_on_labels_without_a_positive(cli, chips, tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    labels = labels_file(chips, tmp_path / "labels")
    fast = "--epochs 1 --device cpu --workers 0 --chip-size 32 --backbone resnet18".split()
    res = cli("train", "--chips", chips, "--labels", labels, *fast, "--out", tmp_path / "run")
    assert res.returncode == 1, res.stdout + res.stderr
    line = one_line(res.stderr)
    assert "none of the 74 chips has a label; nothing to learn" in line
    assert not (tmp_path / "run" / "model.pt").exists()
    # labelled chips, but every one of them on the validation side: still nothing to learn from
    names = sorted(pl.read_parquet(labels)["chip"].to_list())
    split = {c: "val" if i < 10 else "train" for i, c in enumerate(names)}
    labels = labels_file(chips, tmp_path / "val-only", {c: [0] for c in names[:3]}, split)
    res = cli("train", "--chips", chips, "--labels", labels, *fast, "--out", tmp_path / "run2")
    assert res.returncode == 1
    assert "none of the 64 training chips (3 labelled ones are all in validation) has a label" in one_line(res.stderr)


# --------------------------------------------------------------------------------------------
# encode
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory, chips) -> Path:
    """An untrained resnet18 exported at 32 px (no training needed to encode)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from imagesim.learn.export import export_onnx
    from imagesim.learn.model import MultilabelNet
    from imagesim.learn.train import MODEL_FORMAT, TrainConfig

    torch.manual_seed(0)
    net = MultilabelNet("resnet18", 2).eval()
    run = tmp_path_factory.mktemp("nothing-done-run")
    config = TrainConfig(chips=str(chips), labels=str(chips / "labels.parquet"), out=str(run), backbone="resnet18", chip_size=32)
    checkpoint = {
        "format": MODEL_FORMAT,
        "config": asdict(config),
        "classes": ["building", "road"],
        "chip_size": 32,
        "epoch": 1,
        "model": net.state_dict(),
        "thresholds": [0.5, 0.5],
        "metrics": {},
    }
    torch.save(checkpoint, run / "model.pt")
    export_onnx(run / "model.pt", run / "model.onnx")
    return run / "model.onnx"


def test_encode_with_no_chip_to_encode(cli, chips, onnx_model, tmp_path):
    index = nodata_index(chips, tmp_path / "nodata-index.json", 0)
    res = cli(
        "encode", "--onnx", onnx_model, "--chips", chips, "--nodata-index", index, "--out", tmp_path / "e.parquet", "--provider", "cpu"
    )
    assert res.returncode == 1, res.stdout + res.stderr
    assert f"no chip to encode in --chips {chips}: all 3072 chips are no_data (--include-nodata encodes them)" in one_line(res.stderr)
    assert not (tmp_path / "e.parquet").exists() and not (tmp_path / "e.json").exists()  # nothing encoded, nothing written


def test_encode_rerun_with_everything_done_exits_0_and_says_so(cli, chips, onnx_model, tmp_path):
    index = nodata_index(chips, tmp_path / "nodata-index.json", 4)
    args = ("encode", "--onnx", onnx_model, "--chips", chips, "--nodata-index", index, "--out", tmp_path / "e.parquet", "--provider", "cpu")
    first = cli(*args)
    assert first.returncode == 0, first.stderr
    assert "4 chips encoded" in first.stdout and "nothing to do" not in first.stderr
    again = cli(*args)
    assert again.returncode == 0, again.stderr
    assert "0 chips encoded, 4 already done" in again.stdout
    assert "nothing to do: all 4 chips were already encoded with this model (--overwrite encodes them again)" in again.stderr


# --------------------------------------------------------------------------------------------
# index and similar
# --------------------------------------------------------------------------------------------


def test_index_of_an_empty_embeddings_file(cli, chips, tmp_path):
    manifest = pl.read_parquet(chips / "chips.parquet").head(0)
    path = tmp_path / "embeddings.parquet"
    embeddings_table(manifest, np.zeros((0, 8), np.float32), "m0", []).write_parquet(path)
    res = cli("index", "--embeddings", path, "--out", tmp_path / "index")
    assert res.returncode == 1
    assert f"{path}: holds no embedding, nothing to index: run `imagesim encode` on chips that have data first" in one_line(res.stderr)
    assert not (tmp_path / "index").exists()


def test_similar_with_every_chip_excluded(cli, chips, tmp_path):
    pytest.importorskip("faiss")
    from imagesim.search.index import build_index

    manifest = pl.read_parquet(chips / "chips.parquet")
    quadkey = manifest.group_by("quadkey").len().filter(pl.col("len") == 2)["quadkey"].sort()[0]
    rows = manifest.filter(pl.col("quadkey") == quadkey)  # one place, two acquisitions
    vectors = np.eye(2, 8, dtype=np.float32)
    embeddings_table(rows, vectors, "m0", [[], []]).write_parquet(tmp_path / "embeddings.parquet")
    build_index(tmp_path / "embeddings.parquet", tmp_path / "index")
    geojson = tmp_path / "hits.geojson"
    res = cli("similar", quadkey, "--index", tmp_path / "index", "--geojson", geojson)
    assert res.returncode == 1, res.stdout + res.stderr
    line = one_line(res.stderr)
    assert "no results: all 2 chips of the index" in line and "are in the examples' quadkeys: index more chips" in line
    assert not geojson.exists()
