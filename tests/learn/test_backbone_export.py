"""A label-free backbone end to end: `imagesim pretrain`'s ``backbone.pt`` → `export` (one ``embedding`` output,
no classes) → `encode` (embeddings only) → `index` → `similar` / `serve` / `stac`; `classmap` refuses it; and
`train --weights` fine-tunes from it. The backbone file is written here in the contract's layout."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest

torch = pytest.importorskip("torch", reason="export needs torch (pip install 'imagesim[train]')")
torchvision = pytest.importorskip("torchvision")
ort = pytest.importorskip("onnxruntime", reason="encode needs onnxruntime (pip install 'imagesim[encode]')")
pytest.importorskip("onnx")

from imagesim import _imagesim  # noqa: E402
from imagesim.errors import InvalidArgumentError  # noqa: E402
from imagesim.imagery.chip import ChipSettings, run_chip  # noqa: E402
from imagesim.learn import encode  # noqa: E402
from imagesim.learn.encode import EncodeSettings, encode_chips_task, run_encode  # noqa: E402
from imagesim.learn.export import export_onnx, model_id, read_metadata  # noqa: E402
from imagesim.learn.model import MultilabelNet, load_backbone_weights  # noqa: E402

from train_fixtures import write_synthetic_labels  # noqa: E402

torch.set_num_threads(2)
SIZE = 64


@pytest.fixture(scope="module")
def chips(small_sample, tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("backbone-chips")
    run_chip(small_sample.root, dest, ChipSettings(zoom=17, proc=2))
    write_synthetic_labels(dest)
    return dest


@pytest.fixture(scope="module")
def resnet() -> torch.nn.Module:
    """A random resnet18 with non-trivial BatchNorm statistics (so a parity check has something to get wrong)."""
    torch.manual_seed(5)
    net = torchvision.models.resnet18(weights=None)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    net.fc = torch.nn.Identity()
    return net.eval()


def _backbone_file(path: Path, state: dict, **over) -> Path:
    content = {
        "kind": "imagesim-backbone",
        "format": 1,
        "backbone": "resnet18",
        "chip_size": SIZE,
        "embedding_dim": 512,
        "state_dict": state,
        "config": {"chips": str(over.pop("chips", "")), "method": "test"},
        "epoch": 3,
    }
    torch.save({**content, **over}, path)
    return path


@pytest.fixture(scope="module")
def backbone_pt(resnet, chips, tmp_path_factory) -> Path:
    state = {k: v.clone() for k, v in resnet.state_dict().items()}
    assert not any(k.startswith("fc.") for k in state)
    return _backbone_file(tmp_path_factory.mktemp("pretrain") / "backbone.pt", state, chips=chips)


@pytest.fixture(scope="module")
def exported(backbone_pt, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "backbone.onnx"
    return export_onnx(backbone_pt, out)


def _reference(resnet, images: np.ndarray) -> np.ndarray:
    """The training pipeline's input (ImageNet mean/std on NCHW floats) through the backbone, L2-normalised."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    x = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        return torch.nn.functional.normalize(resnet(x), dim=1).numpy()


def test_export_has_one_embedding_output_and_no_classes(exported, backbone_pt, resnet, chips) -> None:
    out = exported.out
    assert exported.classes == [] and list(exported.max_abs_diff) == ["embedding"] and exported.max_abs_diff["embedding"] < 1e-3
    assert exported.parity_source.startswith("chips from") and "no head: embedding only" in exported.line()
    meta = read_metadata(out)
    assert meta["classes"] == [] and meta["thresholds"] == [] and meta["chip_size"] == SIZE
    assert meta["embedding_dim"] == 512 and meta["backbone"] == "resnet18" and meta["embedding_normalized"] is True
    assert meta["head"].startswith("none: imagesim pretrained resnet18 backbone (epoch 3, 64 px chips)")
    assert meta["source_model"] == str(backbone_pt.resolve()) and meta["epoch"] == "3"
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["embedding"]
    paths = sorted(chips.rglob("*.jpg"))[:4]
    images = np.zeros((4, SIZE, SIZE, 3), np.uint8)
    assert _imagesim.decode_batch([str(p) for p in paths], images) == [None] * 4
    for n in (1, 4):  # dynamic batch
        (emb,) = session.run(None, {"image": images[:n]})
        assert emb.shape == (n, 512)
    np.testing.assert_allclose(emb, _reference(resnet, images), atol=1e-4)


def test_encode_index_similar_serve_stac_without_classes(exported, chips, resnet, small_sample, tmp_path) -> None:
    from imagesim.search.index import build_index, load_index
    from imagesim.search.similar import similar

    out = tmp_path / "emb.parquet"
    logs: list[str] = []
    summary = run_encode(exported.out, chips, EncodeSettings(out=out, batch_size=8), log=logs.append)
    assert summary.encoded > 0 and not summary.failed
    assert any("no class outputs: embeddings only" in line for line in logs)
    table = pl.read_parquet(out)
    assert "probabilities" not in table.columns and table.schema["predicted"] == pl.List(pl.String)
    assert table["predicted"].list.len().max() == 0
    assert table.schema["embedding"] == pl.Array(pl.Float32, 512)
    first = table.row(0, named=True)
    img = np.zeros((1, SIZE, SIZE, 3), np.uint8)
    _imagesim.decode_batch([str(chips / first["path"])], img, nodata_threshold=EncodeSettings().nodata_threshold)
    np.testing.assert_allclose(np.array(first["embedding"]), _reference(resnet, img)[0], atol=1e-4)
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["classes"] == [] and side["thresholds"] == [] and side["dim"] == 512 and side["model_id"] == model_id(exported.out)
    # Encoding again resumes on the same file (nothing to do).
    assert run_encode(exported.out, chips, EncodeSettings(out=out)).skipped == table.height

    build_index(out, tmp_path / "index")
    index = load_index(tmp_path / "index")
    result = similar(index, [first["chip"]], k=3)
    assert len(result.hits) == 3 and all(hit.labels == [] for hit in result.hits)
    assert json.loads((tmp_path / "index" / "index.json").read_text())["classes"] == []

    from imagesim.search.classmap import classmap

    with pytest.raises(InvalidArgumentError, match="holds no class probabilities"):
        classmap(out, tmp_path / "map.geojson")

    if _has("fastapi", "httpx", "mercantile"):
        from fastapi.testclient import TestClient

        from imagesim.search.serve.app import create_app

        client = TestClient(create_app(small_sample.root, chips, tmp_path / "index"), base_url="http://127.0.0.1")
        body = client.get(f"/api/similar?chip={first['chip']}&k=3").json()
        assert len(body["results"]) == 3 and all(hit["labels"] == [] for hit in body["results"])
    if _has("pystac"):
        from imagesim.search.stac import write_stac

        assert write_stac(chips, tmp_path / "stac", embeddings=out).items > 0


def _has(*modules: str) -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in modules)


def test_dask_task_encodes_embeddings_only(exported, chips) -> None:
    manifest = pl.read_parquet(chips / "chips.parquet").filter(pl.col("nodata_class") != "no_data").head(5)
    paths = [str(chips / f"{z}" / c) for z, c in zip(manifest["zone"].to_list(), manifest["chip"].to_list())]
    res = encode_chips_task(str(exported.out), "cpu", paths, 2, 1)
    assert res["errors"] == [None] * 5 and res["embedding"].shape == (5, 512) and res["logits"] is None


class _FakeBinding:
    def __init__(self, outputs: dict[str, np.ndarray]) -> None:
        self.outputs, self.bound = outputs, []

    def bind_cpu_input(self, name, array) -> None:
        assert name == "image"

    def bind_output(self, name, device) -> None:
        self.bound.append((name, device))

    def copy_outputs_to_cpu(self) -> list[np.ndarray]:
        return [self.outputs[name] for name, _ in self.bound]


class _FakeCudaSession:
    """Stands in for an onnxruntime CUDA session (no GPU here): records which outputs IO binding binds."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.binding = _FakeBinding({"embedding": np.ones((2, 4), np.float32), "logits": np.zeros((2, 3), np.float32)})

    def get_outputs(self):
        return [SimpleNamespace(name=n) for n in self.names]

    def io_binding(self):
        return self.binding

    def run_with_iobinding(self, binding) -> None:
        assert binding is self.binding


@pytest.mark.parametrize("names", [["embedding"], ["embedding", "logits"]])
def test_cuda_io_binding_binds_only_the_models_outputs(names) -> None:
    session = _FakeCudaSession(names)
    inference = encode._Inference(session, "CUDAExecutionProvider", 2, 8)
    emb, logits = inference.run(np.zeros((2, 8, 8, 3), np.uint8))
    assert session.binding.bound == [(n, "cuda") for n in names]
    assert emb.shape == (2, 4) and (logits is None) == (names == ["embedding"])


def test_train_weights_loads_the_backbone(backbone_pt, resnet, chips, tmp_path) -> None:
    from imagesim.learn.train import TrainConfig, run_train

    model = MultilabelNet("resnet18", 3)
    report = load_backbone_weights(model, backbone_pt)
    want = resnet.state_dict()
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, want[k]), k
    assert report.summary() == (
        f"loaded 120 tensors of the backbone from {backbone_pt}, imagesim pretrained resnet18 backbone (epoch 3, 64 px chips)"
    )
    with pytest.raises(InvalidArgumentError, match=r"an imagesim pretrained resnet18 backbone, not a resnet50: choose `backbone` resnet18"):
        load_backbone_weights(MultilabelNet("resnet50", 3), backbone_pt)
    logs: list[str] = []
    cfg = TrainConfig(
        chips=str(chips), labels=str(chips / "labels.parquet"), out=str(tmp_path / "run"), backbone="resnet18", weights=str(backbone_pt),
        chip_size=SIZE, epochs=1, batch_size=16, workers=0,
    )  # fmt: skip
    result = run_train(cfg, log=logs.append)
    assert f"backbone weights: {report.summary()}" in logs and result.history[0]["backbone_frozen"]


def test_files_that_are_neither_model_nor_backbone(resnet, tmp_path) -> None:
    state = resnet.state_dict()
    cases = {
        "other-kind.pt": (
            {"kind": "imagesim-something", "format": 1},
            r"neither a trained model nor a pretrained backbone \(a file of kind",
        ),
        "state.pt": (
            dict(state),
            r"neither a trained model nor a pretrained backbone \(a state dict of 120 tensors without imagesim's tags",
        ),
        "list.pt": ([1, 2], r"neither a trained model nor a pretrained backbone \(a PyTorch file holding a list\)"),
    }
    for name, (content, message) in cases.items():
        torch.save(content, tmp_path / name)
        with pytest.raises(InvalidArgumentError, match=message) as exc:
            export_onnx(tmp_path / name, tmp_path / "x.onnx")
        assert "expected a trained model (RUN/model.pt of `imagesim train`) or a pretrained backbone (RUN/backbone.pt" in str(exc.value)
    newer = _backbone_file(tmp_path / "newer.pt", dict(state), format=2)
    with pytest.raises(InvalidArgumentError, match=r"newer\.pt: imagesim backbone of format 2; this imagesim reads format 1"):
        export_onnx(newer, tmp_path / "x.onnx")
    partial = _backbone_file(tmp_path / "partial.pt", {k: v for k, v in state.items() if not k.startswith("layer4.")})
    with pytest.raises(InvalidArgumentError, match=r"partial\.pt: damaged imagesim backbone: \d+ tensors missing \(e\.g\. layer4\."):
        export_onnx(partial, tmp_path / "x.onnx")
    with pytest.raises(InvalidArgumentError, match=r"partial\.pt: .*backbone tensors missing"):
        load_backbone_weights(MultilabelNet("resnet18", 2), partial)
    nameless = _backbone_file(tmp_path / "nameless.pt", dict(state), backbone="vgg16")
    with pytest.raises(InvalidArgumentError, match=r"damaged imagesim backbone: its `backbone` \('vgg16'\)"):
        export_onnx(nameless, tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()
