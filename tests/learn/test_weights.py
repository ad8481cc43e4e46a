"""`train --weights`: torchvision's ImageNet weights from the torch cache (never the network in tests) and the
common layouts of ResNet checkpoints (torchvision, timm/TorchGeo, MoCo, Lightning), mapped onto torchvision's keys."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="backbone weights need torch (pip install 'imagesim[train]')")
torchvision = pytest.importorskip("torchvision")

from imagesim import options  # noqa: E402
from imagesim.errors import ImagesimFileNotFoundError, InvalidArgumentError  # noqa: E402
from imagesim.imagery.chip import ChipSettings, run_chip  # noqa: E402
from imagesim.learn.model import MultilabelNet, load_backbone_weights  # noqa: E402
from imagesim.learn.train import TrainConfig, load_model, run_train  # noqa: E402

from train_fixtures import write_synthetic_labels  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def source() -> dict[str, torch.Tensor]:
    """A randomly initialised torchvision resnet18's state dict: the tensors every layout must bring back."""
    torch.manual_seed(11)
    net = torchvision.models.resnet18(weights=None)
    with torch.no_grad():  # BatchNorm statistics that differ from a fresh model's, so they must really be loaded
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
    return {k: v.clone() for k, v in net.state_dict().items()}


def _backbone_equals(model: MultilabelNet, source: dict[str, torch.Tensor]) -> None:
    loaded = model.backbone.state_dict()
    for k, v in source.items():
        if not k.startswith("fc."):
            assert torch.equal(loaded[k], v), k


def _prefixed(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in state.items()}


def _moco_v2(state):  # the query encoder, its momentum copy (same keys) and the queue
    q = {k: v for k, v in state.items() if not k.startswith("fc.")}
    head = {"fc.0.weight": torch.zeros(512, 512), "fc.0.bias": torch.zeros(512), "fc.2.weight": torch.zeros(128, 512)}
    keys = _prefixed({**q, **head}, "module.encoder_k.")
    keys = {k: torch.zeros_like(v) for k, v in keys.items()}  # a different encoder: must not be the one loaded
    return {
        "epoch": 200,
        "arch": "resnet18",
        "state_dict": {**keys, **_prefixed({**q, **head}, "module.encoder_q."), "module.queue": torch.zeros(128, 16)},
    }


def _moco_v3(state):
    momentum = {k: torch.zeros_like(v) for k, v in _prefixed(state, "module.momentum_encoder.").items()}
    return {"state_dict": {**momentum, **_prefixed(state, "module.base_encoder."), "module.predictor.0.weight": torch.zeros(4, 4)}}


def _lightning(state):
    return {
        "epoch": 99,
        "global_step": 1000,
        "pytorch-lightning_version": "2.1.0",
        "state_dict": {**_prefixed(state, "model.backbone."), "model.head.weight": torch.zeros(10, 512)},
        "optimizer_states": [],
    }


#: layout → (how to build the file from a torchvision state dict, prefix stripped, fc tensors skipped, unknown keys)
LAYOUTS = {
    "torchvision": (lambda s: dict(s), "", 2, 0),
    # timm's ResNet (and TorchGeo's ResNet weights, which are timm models) uses torchvision's names
    "timm-torchgeo": (lambda s: {"state_dict": dict(s)}, "", 2, 0),
    "model-wrapper": (lambda s: {"model": _prefixed(s, "module.")}, "module.", 2, 0),
    "backbone-prefix": (lambda s: _prefixed(s, "backbone."), "backbone.", 2, 0),
    "encoder-prefix": (lambda s: {k: v for k, v in _prefixed(s, "encoder.").items() if "fc." not in k}, "encoder.", 0, 0),
    "moco-v2": (_moco_v2, "module.encoder_q.", 3, 124),
    "moco-v3": (_moco_v3, "module.base_encoder.", 2, 123),
    "lightning": (_lightning, "model.backbone.", 2, 1),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_checkpoint_layouts_load_the_backbone(layout, source, tmp_path) -> None:
    build, prefix, head, unknown = LAYOUTS[layout]
    path = tmp_path / f"{layout}.pth"
    torch.save(build(source), path)
    model = MultilabelNet("resnet18", 3)
    report = load_backbone_weights(model, path)
    _backbone_equals(model, source)
    assert report.loaded == sum(1 for k in source if not k.startswith("fc."))
    assert (report.prefix, report.head, len(report.unknown)) == (prefix, head, unknown)
    assert report.summary().startswith(f"loaded {report.loaded} tensors of the backbone")


def test_report_says_what_was_skipped(source, tmp_path) -> None:
    path = tmp_path / "moco.pth"
    torch.save(_moco_v2(source), path)
    summary = load_backbone_weights(MultilabelNet("resnet18", 3), path).summary()
    assert summary.startswith(
        "loaded 120 tensors of the backbone (prefix `module.encoder_q.` stripped); skipped fc.* (head, 3 tensors), 124 unknown keys (module.encoder_k."
    )
    assert summary.endswith(f", …) from {path}")
    torch.save(source, path)
    assert load_backbone_weights(MultilabelNet("resnet18", 3), path).summary() == (
        f"loaded 120 tensors of the backbone; skipped fc.* (head, 2 tensors) from {path}"
    )


def test_old_checkpoints_without_batchnorm_counters_load(source, tmp_path) -> None:
    path = tmp_path / "old.pth"
    torch.save({k: v for k, v in source.items() if not k.endswith("num_batches_tracked")}, path)
    model = MultilabelNet("resnet18", 3)
    assert load_backbone_weights(model, path).loaded == 100
    assert torch.equal(model.backbone.conv1.weight, source["conv1.weight"])


def test_13_band_conv1_is_refused(source, tmp_path) -> None:
    path = tmp_path / "ssl4eo-s2-all-bands.pth"
    torch.save(_prefixed({**source, "conv1.weight": torch.zeros(64, 13, 7, 7)}, "backbone."), path)
    model = MultilabelNet("resnet18", 3)
    before = model.backbone.conv1.weight.clone()
    with pytest.raises(InvalidArgumentError) as exc:
        load_backbone_weights(model, path)
    assert str(exc.value) == (
        f"{path}: weights do not fit this backbone: `conv1.weight` is [64, 13, 7, 7] in the file, [64, 3, 7, 7] expected "
        "(a 13-band model; imagesim's chips are RGB: use RGB weights)"
    )
    assert torch.equal(model.backbone.conv1.weight, before), "nothing is loaded from a refused file"


def test_other_depth_is_refused_with_the_backbone_to_choose(tmp_path) -> None:
    path = tmp_path / "r50.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), path)
    with pytest.raises(
        InvalidArgumentError, match=r"r50\.pth: weights do not fit this backbone: `layer1\.0\.conv1\.weight` is \[64, 64, 1, 1\] .*resnet50"
    ):
        load_backbone_weights(MultilabelNet("resnet18", 3), path)


def test_deeper_resnet_with_fitting_shapes_is_refused(tmp_path) -> None:
    path = tmp_path / "r34.pth"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), path)
    with pytest.raises(
        InvalidArgumentError,
        match=r"r34\.pth: weights do not fit this backbone: the file has \d+ tensors in blocks a resnet18 lacks \(e\.g\. layer1\.2\.conv1\.weight\); a deeper ResNet\?",
    ):
        load_backbone_weights(MultilabelNet("resnet18", 3), path)
    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    with pytest.raises(
        InvalidArgumentError, match=r"expected \(the file is a basic-block ResNet such as resnet18: choose that `backbone`\)"
    ):
        load_backbone_weights(MultilabelNet("resnet50", 3), path)


def test_files_without_backbone_tensors_are_refused(source, tmp_path) -> None:
    path = tmp_path / "vit.pth"
    torch.save({"blocks.0.attn.qkv.weight": torch.zeros(3, 3), "cls_token": torch.zeros(1, 1, 8)}, path)
    with pytest.raises(
        InvalidArgumentError,
        match=r"vit\.pth: none of its 2 keys is a ResNet backbone tensor \(e\.g\. blocks\.0\.attn\.qkv\.weight, cls_token\)",
    ):
        load_backbone_weights(MultilabelNet("resnet18", 3), path)
    torch.save({k: v for k, v in source.items() if k.startswith("layer1.")}, path)
    with pytest.raises(InvalidArgumentError, match=r"vit\.pth: 80 backbone tensors missing \(e\.g\. conv1\.weight, bn1\.weight"):
        load_backbone_weights(MultilabelNet("resnet18", 3), path)


# --------------------------------------------------------------------------------------------
# --weights imagenet: the torch hub cache, never the network
# --------------------------------------------------------------------------------------------


def _no_network(monkeypatch) -> list[str]:
    calls: list[str] = []

    def offline(url, **kw):
        calls.append(url)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    return calls


def test_imagenet_from_the_torch_cache(source, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    calls = _no_network(monkeypatch)
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    name = Path(torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url).name
    assert name == "resnet18-f37072fd.pth"
    torch.save(source, checkpoints / name)
    model = MultilabelNet("resnet18", 3)
    report = load_backbone_weights(model, "imagenet")
    _backbone_equals(model, source)
    assert not calls, "a cached file is not downloaded again"
    assert (
        report.summary()
        == f"loaded 120 tensors of the backbone; skipped fc.* (head, 2 tensors) from torchvision ImageNet weights ({checkpoints / name})"
    )


def test_imagenet_offline_is_one_clear_line(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    calls = _no_network(monkeypatch)
    folder = tmp_path / "empty" / "hub" / "checkpoints"
    with pytest.raises(ImagesimFileNotFoundError) as exc:
        load_backbone_weights(MultilabelNet("resnet50", 3), "imagenet")
    assert calls == ["https://download.pytorch.org/models/resnet50-0676ba61.pth"]
    assert str(exc.value) == (
        f"`weights` imagenet: resnet50-0676ba61.pth is not in {folder} and cannot be downloaded "
        "([Errno -3] Temporary failure in name resolution); on a machine with internet fetch "
        f"https://download.pytorch.org/models/resnet50-0676ba61.pth and place it in {folder} (the folder follows TORCH_HOME)"
    )


def test_imagenet_download_times_out_instead_of_hanging(tmp_path, monkeypatch) -> None:
    import socket

    from imagesim.learn import model as model_module

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    seen: list[float | None] = []

    def slow(url, **kw):
        seen.append(socket.getdefaulttimeout())
        raise TimeoutError("timed out")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", slow)
    with pytest.raises(ImagesimFileNotFoundError, match=r"cannot be downloaded \(timed out\)"):
        load_backbone_weights(MultilabelNet("resnet18", 3), "imagenet")
    assert seen == [model_module.DOWNLOAD_TIMEOUT_S]
    assert socket.getdefaulttimeout() is None, "the process-wide timeout is restored"


# --------------------------------------------------------------------------------------------
# Through `train`
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chips(small_sample, tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("weights-train-chips")
    run_chip(small_sample.root, dest, ChipSettings(zoom=17, proc=2))
    write_synthetic_labels(dest)
    return dest


def test_cli_train_with_imagenet_weights_from_the_cache(cli, chips, source, tmp_path) -> None:
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(source, checkpoints / "resnet18-f37072fd.pth")
    res = cli(
        "train", "--chips", chips, "--out", tmp_path / "run", "--backbone", "resnet18", "--chip-size", "64",
        "--epochs", "1", "--workers", "0", "--batch-size", "16", "--weights", "imagenet",
        env={"TORCH_HOME": str(tmp_path / "torch")},
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert (
        "backbone weights: loaded 120 tensors of the backbone; skipped fc.* (head, 2 tensors) from torchvision ImageNet"
        in res.stdout + res.stderr
    )
    model, _ = load_model(tmp_path / "run" / "model.pt")
    _backbone_equals(model, source)  # --freeze-epochs defaults to 1 with weights: the one epoch left the backbone as loaded


def test_train_freezes_pretrained_backbones_by_default() -> None:
    base = dict(chips="c", labels="l", out="o")
    assert TrainConfig(**base, weights="imagenet").frozen_epochs == 1
    assert TrainConfig(**base, weights="w.pth").frozen_epochs == 1
    assert TrainConfig(**base).frozen_epochs == 0
    assert TrainConfig(**base, weights="w.pth", freeze_epochs=0).frozen_epochs == 0


def test_train_logs_the_report(chips, source, tmp_path) -> None:
    path = tmp_path / "lightning.ckpt"
    torch.save(_lightning(source), path)
    logs: list[str] = []
    cfg = TrainConfig(
        chips=str(chips), labels=str(chips / "labels.parquet"), out=str(tmp_path / "run"), backbone="resnet18", weights=str(path),
        chip_size=64, epochs=1, batch_size=16, workers=0,
    )  # fmt: skip
    result = run_train(cfg, log=logs.append)
    assert (
        f"backbone weights: loaded 120 tensors of the backbone (prefix `model.backbone.` stripped); skipped fc.* (head, 2 tensors), 1 unknown keys (model.head.weight) from {path}"
        in logs
    )
    assert result.history[0]["backbone_frozen"]
    assert result.history[0]["backbone_lr"] == pytest.approx(result.history[0]["lr"] * options.BACKBONE_LR_FACTOR)
