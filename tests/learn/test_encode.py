"""`imagesim export` and `imagesim encode` on CPU: ONNX parity with PyTorch, metadata, dynamic batch,
the Rust input pipeline, resumption after an interruption, provider choice and bad inputs."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import polars as pl
import pytest

torch = pytest.importorskip("torch", reason="export needs torch (pip install 'imagesim[train]')")
ort = pytest.importorskip("onnxruntime", reason="encode needs onnxruntime (pip install 'imagesim[encode]')")
pytest.importorskip("onnx")

from imagesim import _imagesim  # noqa: E402
from imagesim.errors import EncodeError, ExportError, ImagesimFileNotFoundError, InvalidArgumentError, OutputExistsError  # noqa: E402
from imagesim.imagery.chip import ChipSettings, run_chip  # noqa: E402
from imagesim.learn import encode  # noqa: E402
from imagesim.learn.devices import cuda_device_count  # noqa: E402
from imagesim.learn.encode import EncodeSettings, run_encode  # noqa: E402
from imagesim.learn.export import ExportSettings, export_onnx, model_id, read_metadata  # noqa: E402

CLASSES = ["building", "road", "water", "forest"]
SIZE = 64


@pytest.fixture(scope="module")
def chips(small_sample, tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("encode-chips")
    run_chip(small_sample.root, dest, ChipSettings(zoom=17))
    return dest


@pytest.fixture(scope="module")
def model_pt(tmp_path_factory, chips) -> Path:
    """An untrained resnet18 saved the way `imagesim train` saves model.pt (no training needed)."""
    from imagesim.learn.model import MultilabelNet
    from imagesim.learn.train import MODEL_FORMAT, TrainConfig

    torch.manual_seed(0)
    net = MultilabelNet("resnet18", len(CLASSES)).eval()
    # Non-trivial BatchNorm statistics, so the parity check has something to get wrong.
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm1d | torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("run") / "model.pt"
    config = TrainConfig(chips=str(chips), labels=str(chips / "labels.parquet"), out=str(path.parent), backbone="resnet18", chip_size=SIZE)
    torch.save(
        {
            "format": MODEL_FORMAT,
            "config": asdict(config),
            "classes": CLASSES,
            "chip_size": SIZE,
            "epoch": 1,
            "model": net.state_dict(),
            "thresholds": [0.5, 0.4, 0.3, 0.2],
            "metrics": {"f1_micro_tuned": 0.5},
        },
        path,
    )
    return path


@pytest.fixture(scope="module")
def onnx_path(model_pt, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    export_onnx(model_pt, out)
    return out


def test_export_metadata_dynamic_batch_and_parity(onnx_path, model_pt, chips):
    meta = read_metadata(onnx_path)
    assert meta["classes"] == CLASSES and meta["thresholds"] == [0.5, 0.4, 0.3, 0.2]
    assert meta["chip_size"] == SIZE and meta["embedding_dim"] == 512 and meta["backbone"] == "resnet18"
    assert meta["embedding_normalized"] is True and meta["mean"] == [0.485, 0.456, 0.406]
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert inp.name == "image" and inp.type == "tensor(uint8)" and inp.shape[1:] == [SIZE, SIZE, 3]
    assert [o.name for o in session.get_outputs()] == ["embedding", "logits"]

    from imagesim.learn.train import load_model

    model, _ = load_model(model_pt)
    paths = sorted(chips.rglob("*.jpg"))[:5]
    images = np.zeros((5, SIZE, SIZE, 3), np.uint8)
    assert _imagesim.decode_batch([str(p) for p in paths], images) == [None] * 5
    for n in (1, 5):  # dynamic batch
        emb, logits = session.run(None, {"image": images[:n]})
        assert emb.shape == (n, 512) and logits.shape == (n, len(CLASSES))
        np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    # The graph's own normalisation equals the training pipeline's (ImageNet mean/std on NCHW floats).
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    x = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        want_emb, want_logits = model.embed_and_logits(x)
    np.testing.assert_allclose(logits, want_logits.numpy(), atol=1e-3)
    np.testing.assert_allclose(emb, torch.nn.functional.normalize(want_emb, dim=1).numpy(), atol=1e-4)


@pytest.mark.parametrize(("opset", "exporter"), [(17, "torchscript"), (18, "dynamo")])
def test_export_opsets_use_the_matching_exporter(model_pt, tmp_path, opset, exporter):
    import onnx

    out = tmp_path / f"m{opset}.onnx"
    summary = export_onnx(model_pt, out, ExportSettings(opset=opset))
    assert read_metadata(out)["exporter"] == exporter
    assert {o.domain: o.version for o in onnx.load(str(out)).opset_import}[""] == opset
    assert max(summary.max_abs_diff.values()) < 1e-3 and summary.parity_source.startswith("chips")


def test_export_fp16_and_refusals(model_pt, tmp_path, monkeypatch):
    out = tmp_path / "half.onnx"
    summary = export_onnx(model_pt, out, ExportSettings(fp16=True, normalize=False))
    assert summary.precision == "fp16" and summary.max_abs_diff["logits"] <= 5e-2
    assert read_metadata(out)["embedding_normalized"] is False
    with pytest.raises(OutputExistsError):
        export_onnx(model_pt, out)
    with pytest.raises(ImagesimFileNotFoundError):
        export_onnx(tmp_path / "nope.pt", tmp_path / "x.onnx")
    with pytest.raises(InvalidArgumentError, match=".onnx"):
        export_onnx(model_pt, tmp_path / "x.bin")
    # A parity failure leaves nothing behind.
    import imagesim.learn.export as export_mod

    monkeypatch.setitem(export_mod.TOLERANCE, "fp32", 0.0)
    with pytest.raises(ExportError, match="differ"):
        export_onnx(model_pt, tmp_path / "bad.onnx")
    assert not (tmp_path / "bad.onnx").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["half.onnx"]


def test_encode_writes_embeddings_and_predictions(onnx_path, chips, tmp_path):
    out = tmp_path / "emb.parquet"
    summary = run_encode(onnx_path, chips, EncodeSettings(out=out, batch_size=7))
    manifest = pl.read_parquet(chips / "chips.parquet")
    usable = manifest.filter(pl.col("nodata_class") != "no_data")
    assert summary.encoded == usable.height and summary.excluded == manifest.height - usable.height
    assert summary.provider == "CPUExecutionProvider" and not summary.failed
    table = pl.read_parquet(out)
    assert table.columns == [
        *["chip", "path", "zone", "quadkey", "cell", "catalog_id", "cloud_fraction", "valid_fraction", "model_id", "embedding"],
        *["predicted", "probabilities", "geometry", "bbox"],  # GeoParquet footprints last
    ]
    assert table.schema["embedding"] == pl.Array(pl.Float32, 512)
    assert sorted(table["chip"].to_list()) == sorted(usable["chip"].to_list())
    assert set(table["model_id"].unique()) == {model_id(onnx_path)}
    emb = np.stack(table["embedding"].to_numpy())
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    # Same numbers as running the session directly on the same pixels (no-data filled, as encode does).
    first = table.row(0, named=True)
    img = np.zeros((1, SIZE, SIZE, 3), np.uint8)
    _imagesim.decode_batch([str(chips / first["path"])], img, nodata_threshold=EncodeSettings().nodata_threshold)
    direct_emb, direct_logits = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(None, {"image": img})
    np.testing.assert_allclose(np.array(first["embedding"]), direct_emb[0], atol=1e-5)
    prob = 1 / (1 + np.exp(-direct_logits[0]))
    np.testing.assert_allclose(np.array(first["probabilities"]), prob, atol=1e-5)
    assert first["predicted"] == [c for c, p, t in zip(CLASSES, prob, [0.5, 0.4, 0.3, 0.2]) if p >= t]
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["classes"] == CLASSES and side["model_id"] == model_id(onnx_path) and side["chips"] == table.height


def test_encode_resumes_after_an_interruption(onnx_path, chips, tmp_path, monkeypatch):
    out = tmp_path / "emb.parquet"
    monkeypatch.setattr(encode, "CHECKPOINT_SECONDS", 0.0)  # a part file after every batch
    calls = {"n": 0}
    real_run = encode._Inference.run

    def crash_on_third(self, images):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_run(self, images)

    monkeypatch.setattr(encode._Inference, "run", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        run_encode(onnx_path, chips, EncodeSettings(out=out, batch_size=5))
    parts = sorted((tmp_path / ".emb.parquet.parts").glob("part-*.parquet"))
    assert len(parts) == 2 and not out.exists()
    monkeypatch.setattr(encode._Inference, "run", real_run)
    summary = run_encode(onnx_path, chips, EncodeSettings(out=out, batch_size=5))
    assert summary.skipped == 10
    table = pl.read_parquet(out)
    assert table["chip"].n_unique() == table.height == summary.skipped + summary.encoded
    assert not (tmp_path / ".emb.parquet.parts").exists()
    again = run_encode(onnx_path, chips, EncodeSettings(out=out))
    assert again.encoded == 0 and again.skipped == table.height
    assert pl.read_parquet(out).equals(table)


def test_encode_refuses_another_models_file_and_bad_inputs(onnx_path, model_pt, chips, tmp_path):
    out = tmp_path / "emb.parquet"
    run_encode(onnx_path, chips, EncodeSettings(out=out))
    other = tmp_path / "other.onnx"
    export_onnx(model_pt, other, ExportSettings(normalize=False))
    with pytest.raises(EncodeError, match="holds embeddings of model"):
        run_encode(other, chips, EncodeSettings(out=out))
    assert run_encode(other, chips, EncodeSettings(out=out, overwrite=True)).encoded > 0
    with pytest.raises(InvalidArgumentError, match="`provider` 'gpu': choose one of auto, cuda, tensorrt, cpu"):
        run_encode(onnx_path, chips, EncodeSettings(provider="gpu"))
    with pytest.raises(InvalidArgumentError, match="`batch_size` 0: .*1..4,096"):
        run_encode(onnx_path, chips, EncodeSettings(batch_size=0))
    if cuda_device_count() == 0:
        with pytest.raises(EncodeError, match="no CUDA GPU"):
            run_encode(onnx_path, chips, EncodeSettings(provider="cuda"))
    with pytest.raises(ImagesimFileNotFoundError):
        run_encode(tmp_path / "missing.onnx", chips)
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(EncodeError, match="junk.onnx"):
        run_encode(tmp_path / "junk.onnx", chips)


def test_cli_reports_corrupt_chips_and_goes_on(cli, onnx_path, chips, tmp_path):
    import shutil

    copy = tmp_path / "chips"
    shutil.copytree(chips, copy)
    manifest = pl.read_parquet(copy / "chips.parquet").filter(pl.col("nodata_class") != "no_data")
    victim = copy / f"{manifest['zone'][0]}" / manifest["chip"][0]
    victim.write_bytes(victim.read_bytes()[:200])
    res = cli("encode", "--onnx", onnx_path, "--chips", copy, "--batch-size", "4")
    assert res.returncode == 1, res.stderr
    assert "1 failed" in res.stdout + res.stderr and manifest["chip"][0] in res.stdout + res.stderr
    table = pl.read_parquet(copy / "embeddings.parquet")
    assert table.height == manifest.height - 1
    res = cli("export", "--model", tmp_path / "none.pt", "--out", tmp_path / "m.onnx")
    assert res.returncode != 0


def test_encode_in_many_parts_and_resumed_between_chips_equals_one_run(onnx_path, chips, tmp_path, monkeypatch) -> None:
    """Rows go to part files of PART_ROWS and are merged a slice at a time: tiny parts, slices and row
    groups give the file one run gives; so does a run that finds every other chip already encoded."""
    import pyarrow.parquet as pq

    from imagesim import geoparquet

    whole = tmp_path / "whole.parquet"
    run_encode(onnx_path, chips, EncodeSettings(out=whole, batch_size=16))
    want = pl.read_parquet(whole)
    monkeypatch.setattr(encode, "PART_ROWS", 5)
    monkeypatch.setattr(encode, "MERGE_BATCH", 3)
    monkeypatch.setattr(geoparquet, "STREAM_ROW_GROUP", 4)
    small = tmp_path / "small.parquet"
    summary = run_encode(onnx_path, chips, EncodeSettings(out=small, batch_size=4))
    assert summary.encoded == want.height and pq.ParquetFile(small).num_row_groups > 1
    assert pl.read_parquet(small).equals(want)
    assert pq.read_metadata(small).metadata[b"geo"] == pq.read_metadata(whole).metadata[b"geo"]
    assert json.loads(sidecar_text(small))["chips"] == want.height
    # every other chip already in the final file: the new parts interleave with it
    half = tmp_path / "half.parquet"
    from imagesim.geoparquet import write_geoparquet

    write_geoparquet(want.drop("geometry", "bbox").gather_every(2), half)
    half.with_suffix(".json").write_text(sidecar_text(whole))
    again = run_encode(onnx_path, chips, EncodeSettings(out=half, batch_size=4))
    assert again.skipped == (want.height + 1) // 2 and again.encoded == want.height // 2
    assert pl.read_parquet(half).equals(want)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{n}.{e}" for n in ("half", "small", "whole") for e in ("json", "parquet"))


def sidecar_text(path: Path) -> str:
    return path.with_suffix(".json").read_text()
