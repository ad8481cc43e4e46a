"""`imagesim train` on the small sample: CPU, resnet18 at 64 px, synthetic labels (see train_fixtures)."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl
import pytest

torch = pytest.importorskip("torch", reason="imagesim train needs torch (pip install 'imagesim[train]')")
pytest.importorskip("torchvision")

from imagesim.errors import ImagesimFileNotFoundError, InvalidArgumentError, JpegError, OutputExistsError  # noqa: E402
from imagesim.imagery.chip import ChipSettings, run_chip  # noqa: E402
from imagesim.learn.dataset import (  # noqa: E402
    IMAGENET_MEAN,
    IMAGENET_STD,
    ChipDataset,
    LabelTable,
    decode_chips,
    draw_augmentation,
    load_labels,
    make_split,
    model_input,
)
from imagesim.learn.metrics import average_precision, evaluate, f1_scores, frequency_baseline, tune_thresholds  # noqa: E402
from imagesim.learn.model import MultilabelNet  # noqa: E402
from imagesim.learn.train import TrainConfig, load_checkpoint, load_model, run_train  # noqa: E402

from train_fixtures import CLASSES, write_synthetic_labels  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def chips(small_sample, tmp_path_factory) -> Path:
    """Chips of the small sample with synthetic labels (labels.parquet/.json/.csv)."""
    dest = tmp_path_factory.mktemp("train-chips")
    run_chip(small_sample.root, dest, ChipSettings(zoom=17, proc=2))
    write_synthetic_labels(dest)
    return dest


def config(chips: Path, out: Path, **kw) -> TrainConfig:
    base = dict(
        chips=str(chips),
        labels=str(chips / "labels.parquet"),
        out=str(out),
        backbone="resnet18",
        chip_size=64,
        epochs=1,
        batch_size=16,
        lr=3e-3,
        workers=0,
        seed=3,
    )
    return TrainConfig(**{**base, **kw})


def data_copy(chips: Path, dest: Path) -> Path:
    """The chips that hold data, their manifest and labels, in a folder a test may damage."""
    manifest = pl.read_parquet(chips / "chips.parquet").filter(pl.col("nodata_class") != "no_data")
    for z, c in zip(manifest["zone"].to_list(), manifest["chip"].to_list()):
        (dest / str(z)).mkdir(parents=True, exist_ok=True)
        shutil.copy(chips / str(z) / c, dest / str(z) / c)
    manifest.write_parquet(dest / "chips.parquet")
    for name in ("labels.parquet", "labels.json", "labels.csv"):
        shutil.copy(chips / name, dest / name)
    return dest


def timeless(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k not in ("seconds", "train_images_per_s")} for h in history]


# --- metrics ---


def test_f1_matches_hand_computed_values() -> None:
    y = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 0]])
    p = np.array([[1, 0, 0], [0, 1, 1], [1, 1, 0], [0, 0, 1]])
    s = f1_scores(y, p)
    # samples: 2/3, 2/3, 1, 0 (empty truth, one wrong prediction)
    assert s["f1_samples"] == pytest.approx((2 / 3 + 2 / 3 + 1 + 0) / 4)
    # micro: tp 4, fp 2, fn 1
    assert s["f1_micro"] == pytest.approx(8 / 11)
    # per class: c0 1.0, c1 1.0, c2 tp0 fp2 fn1 → 0
    assert s["f1"].tolist() == pytest.approx([1.0, 1.0, 0.0])
    assert s["f1_macro"] == pytest.approx(2 / 3)


def test_average_precision_with_ties() -> None:
    y = np.array([[1], [0], [1], [0]])
    scores = np.array([[0.9], [0.8], [0.8], [0.1]])
    # thresholds 0.9 (P 1, R .5), 0.8 (P 2/3, R 1) → .5*1 + .5*2/3
    assert average_precision(y, scores)[0] == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert np.isnan(average_precision(np.zeros((3, 1)), np.ones((3, 1))))[0]


def test_tuned_thresholds_and_baseline() -> None:
    y = np.array([[1, 0], [1, 0], [0, 0], [0, 0]])
    scores = np.array([[0.3, 0.1], [0.25, 0.2], [0.1, 0.3], [0.05, 0.1]])
    t = tune_thresholds(y, scores, 0.35)
    assert 0.1 < t[0] <= 0.25 and t[1] == 0.35  # class 1 has no positives: default kept
    m = evaluate(y, scores, ["a", "b"], 0.35)
    assert m["f1_micro"] == 0.0 and m["f1_micro_tuned"] == 1.0 and m["classes_evaluated"] == 1
    base = frequency_baseline(np.array([[1, 0], [1, 1], [1, 0]]), np.array([[1, 0], [1, 0]]))
    assert base["classes_predicted"] == 1 and base["f1_micro"] == 1.0
    base = frequency_baseline(np.array([[1, 0], [1, 1], [1, 0]]), np.array([[1, 0], [0, 1]]))
    assert base["classes_predicted"] == 2 and base["f1_micro"] == pytest.approx(2 / 3)


# --- labels and split ---


def test_labels_parquet_and_csv_agree(chips) -> None:
    pq = load_labels(chips / "labels.parquet")
    csv = load_labels(chips / "labels.csv")
    assert pq.classes == csv.classes == CLASSES
    assert pq.dropped_nodata > 0 and csv.dropped_nodata == 0
    assert pq.paths == csv.paths and np.array_equal(pq.targets, csv.targets)
    assert pq.targets.any(0).all(), "every synthetic class occurs"


def test_fallback_split_groups_places_and_is_deterministic(chips) -> None:
    table = load_labels(chips / "labels.parquet")
    split = make_split(table)
    assert "level-1" in split.how and "only 2 level-12 cells" in split.how
    assert 0.15 <= split.val.size / len(table) <= 0.45
    prefix = split.prefix
    assert 12 < prefix <= 17 and split.groups >= 10
    train_keys = {table.quadkeys[i][:prefix] for i in split.train}
    assert not train_keys & {table.quadkeys[i][:prefix] for i in split.val}, "a place straddles train and val"
    again = make_split(load_labels(chips / "labels.parquet"))
    assert np.array_equal(split.val, again.val)


def test_stored_split_is_used(chips) -> None:
    table = load_labels(chips / "labels.parquet")
    split = ["val" if i % 4 == 0 else "train" for i in range(len(table))]
    s = make_split(replace(table, split=split))
    assert s.how.startswith("split column") and s.val.size == (len(table) + 3) // 4


# --- model ---


def test_embedding_and_logits_shapes() -> None:
    model = MultilabelNet("resnet18", 5).eval()
    x = torch.zeros(2, 3, 64, 64)
    e, logits = model.embed_and_logits(x)
    assert e.shape == (2, 512) and logits.shape == (2, 5)
    assert torch.equal(model(x), logits) and torch.equal(model.embed(x), e)
    head = [m for m in model.neck if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in head] == [(512, 1024), (1024, 512)]
    assert [(m.in_features, m.out_features) for m in head] != [] and MultilabelNet("resnet50", 2).neck[0].in_features == 2048


def test_loss_goes_down_on_a_fixed_batch(chips) -> None:
    table = load_labels(chips / "labels.parquet")
    ds = ChipDataset(chips, table.paths[:12], table.targets[:12], 64, train=False, seed=0)
    x = torch.stack([ds[i][0] for i in range(12)])
    y = torch.stack([ds[i][1] for i in range(12)])
    torch.manual_seed(0)
    model = MultilabelNet("resnet18", len(table.classes)).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    losses = []
    for _ in range(15):
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0], losses


def reference_input(img_u8: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The training input as the per-sample numpy pipeline made it (before batches): mirror, turns,
    brightness, contrast, saturation, clip, normalise; float32 CHW."""
    img = img_u8.astype(np.float32) / 255.0
    if rng.random() < 0.5:
        img = img[:, ::-1]
    img = np.rot90(img, int(rng.integers(4)))
    b, c, s = (float(v) for v in rng.uniform(0.9, 1.1, size=3).astype(np.float32))
    img = img * b
    mean = img.mean()
    img = (img - mean) * c + mean
    gray = img @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    img = np.clip((img - gray[..., None]) * s + gray[..., None], 0.0, 1.0)
    img = (img - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)
    return np.ascontiguousarray(img.transpose(2, 0, 1))


def test_training_batches_match_the_per_sample_pipeline(chips) -> None:
    """A batch (Rust decode, mirror/turns in the worker, jitter and normalisation batched where the model
    runs) is each chip's augmentation drawn from (seed, epoch, i), as the per-sample pipeline made it."""
    table = load_labels(chips / "labels.parquet")
    paths, targets = table.paths[:10], table.targets[:10]
    ds = ChipDataset(chips, paths, targets, 64, train=True, seed=5, threads=1)
    keys = [(2, i) for i in (7, 0, 3, 9, 1)]
    pixels, factors, t, problems = ds.__getitems__(keys)
    assert problems == [] and pixels.dtype == torch.uint8 and tuple(pixels.shape) == (5, 64, 64, 3)
    assert torch.equal(t, torch.from_numpy(targets[[7, 0, 3, 9, 1]].astype(np.float32)))
    decoded, errors = decode_chips(chips, paths, 64)
    assert errors == [None] * 10
    x = model_input(pixels, factors, "cpu")
    turned = 0
    for j, (epoch, i) in enumerate(keys):
        flip, turns, f = draw_augmentation(np.random.default_rng([5, epoch, i]))
        turned += flip or turns > 0
        expected_pixels = np.rot90(decoded[i][:, ::-1] if flip else decoded[i], turns)
        assert np.array_equal(pixels[j].numpy(), expected_pixels), (i, flip, turns)
        assert np.array_equal(factors[j].numpy(), f)
        want = reference_input(decoded[i], np.random.default_rng([5, epoch, i]))
        np.testing.assert_allclose(x[j].numpy(), want, atol=2e-5)
    assert turned >= 2  # the draws moved some chips, so the comparison saw the augmentation
    # Validation: no augmentation; one item is the batch of one.
    val = ChipDataset(chips, paths, targets, 64, train=False, seed=5)
    vp, vf, _, _ = val.__getitems__([(0, 4)])
    assert vf is None and np.array_equal(vp[0].numpy(), decoded[4])
    single, target = val[4]
    np.testing.assert_allclose(single.numpy(), model_input(vp, None, "cpu")[0].numpy())
    assert torch.equal(target, torch.from_numpy(targets[4].astype(np.float32)))
    # The layout a CUDA model in channels-last takes, without a copy in between.
    assert model_input(pixels, factors, "cpu", channels_last=True).is_contiguous(memory_format=torch.channels_last)
    assert model_input(pixels, factors, "cpu").is_contiguous()


def test_unreadable_chips_are_left_out_and_named(chips, tmp_path) -> None:
    """A chip that cannot be decoded is left out of its batch, named once; the run goes on. A run where
    no chip can be read stops with the reason."""
    copy = data_copy(chips, tmp_path / "chips")
    table = load_labels(copy / "labels.parquet")
    bad = copy / table.paths[1]
    bad.write_bytes(b"\xff\xd8 not a jpeg")
    ds = ChipDataset(copy, table.paths[:4], table.targets[:4], 64, train=True, seed=0)
    pixels, factors, t, problems = ds.__getitems__([(0, 0), (0, 1), (0, 2)])
    assert len(pixels) == len(factors) == len(t) == 2 and len(problems) == 1 and str(bad) in problems[0]
    assert torch.equal(t, torch.from_numpy(table.targets[[0, 2]].astype(np.float32)))
    with pytest.raises(JpegError, match="corrupt"):
        _ = ds[1]

    logs: list[str] = []
    result = run_train(config(copy, tmp_path / "run", epochs=2), log=logs.append)
    left_out = [m for m in logs if "left out a chip that cannot be read" in m]
    assert len(left_out) == 1 and str(bad) in left_out[0] and left_out[0] in result.notes
    assert result.n_train + result.n_val == len(table)
    unreadable = json.loads((tmp_path / "run" / "metrics.json").read_text())["unreadable_chips"]
    assert len(unreadable) == 1 and str(bad) in unreadable[0]

    # Many bad chips: the first five are named, then counted at the epoch's end; metrics.json has them all.
    for p in table.paths[2:12]:
        (copy / p).write_bytes(b"\xff\xd8 not a jpeg either")
    logs.clear()
    run_train(config(copy, tmp_path / "many"), log=logs.append)
    named = [m for m in logs if "left out a chip that cannot be read" in m]
    assert len(named) == 5 and any("11 unreadable chips left out so far" in m for m in logs), logs
    assert len(json.loads((tmp_path / "many" / "metrics.json").read_text())["unreadable_chips"]) == 11

    for p in table.paths:
        (copy / p).write_bytes(b"")
    with pytest.raises(JpegError, match="no training chip of epoch 1 could be read"):
        run_train(config(copy, tmp_path / "run2"))


# --- training runs ---


def test_train_writes_run_and_checkpoint_round_trips(chips, tmp_path) -> None:
    out = tmp_path / "run"
    logs: list[str] = []
    result = run_train(config(chips, out), log=logs.append)
    assert {p.name for p in out.iterdir()} >= {"last.pt", "model.pt", "metrics.json", "training_curves.png", "split.json"}
    assert any("from scratch" in m for m in logs) and "baseline" in result.line()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["classes"] == CLASSES and len(metrics["epochs"]) == 1 and metrics["n_val"] == result.n_val
    ep = metrics["epochs"][0]
    for key in ("train_loss", "val_loss", "f1_samples", "f1_micro", "f1_macro", "f1_micro_tuned", "map", "per_class", "thresholds"):
        assert key in ep
    assert set(ep["per_class"]) == set(CLASSES) and "f1_micro" in metrics["baseline"]

    model, ckpt = load_model(out / "model.pt")
    assert ckpt["classes"] == CLASSES and len(ckpt["thresholds"]) == len(CLASSES) and ckpt["chip_size"] == 64
    assert ckpt["metrics"]["epoch"] == 1 and ckpt["config"]["backbone"] == "resnet18"
    last = load_checkpoint(out / "last.pt")
    for k, v in last["model"].items():
        assert torch.equal(v, model.state_dict()[k]), k
    table = load_labels(chips / "labels.parquet")
    x = torch.stack([ChipDataset(chips, table.paths[:4], table.targets[:4], 64, train=False, seed=0)[i][0] for i in range(4)])
    again, _ = load_model(out / "model.pt")
    with torch.no_grad():
        assert torch.equal(model(x), again(x)) and model.embed(x).shape == (4, 512)


def test_resume_continues_exactly(chips, tmp_path) -> None:
    cfg = config(chips, tmp_path / "whole", epochs=2, freeze_epochs=1)
    whole = run_train(cfg)
    part = replace(cfg, out=str(tmp_path / "part"))
    first = run_train(part, stop_after=1)
    assert first.epochs_total == 1
    resumed = run_train(part, resume=True)
    assert resumed.epochs_run == 1 and resumed.epochs_total == 2
    assert timeless(resumed.history) == timeless(whole.history)
    a, b = load_checkpoint(tmp_path / "whole" / "last.pt"), load_checkpoint(tmp_path / "part" / "last.pt")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert whole.history[0]["backbone_frozen"] and not whole.history[1]["backbone_frozen"]


def test_learns_synthetic_labels_beyond_the_frequency_baseline(chips, tmp_path) -> None:
    result = run_train(config(chips, tmp_path / "run", epochs=3))
    assert result.best["f1_micro_tuned"] > result.baseline["f1_micro"] + 0.1, (result.best["f1_micro_tuned"], result.baseline)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]


def test_csv_labels_and_workers_give_the_same_run(chips, tmp_path) -> None:
    # Workers start through forkserver even though this process has run the Rust thread pool.
    a = run_train(config(chips, tmp_path / "a", labels=str(chips / "labels.csv")))
    b = run_train(config(chips, tmp_path / "b", workers=1))
    assert timeless(a.history) == timeless(b.history)


def test_trains_on_real_osm_labels(small_sample, chips, tmp_path) -> None:
    """The labels stage's own output (OSM labels of the sample scene, split by `labels split`) loads and trains."""
    labels_mod = pytest.importorskip("imagesim.labels.build")
    from imagesim.labels.cells import find_cells
    from imagesim.labels.osm_import import import_osm
    from imagesim.labels.split import split_labels

    ard = tmp_path / "ard"
    shutil.copytree(small_sample.root, ard, ignore=shutil.ignore_patterns("*.tif", "*.gpkg"))
    import_osm(small_sample.osm_pbf, ard, find_cells(ard))
    summary = labels_mod.build_labels(chips, ard, labels_mod.LabelSettings(include=("partial",), out_dir=tmp_path / "labels"))
    table = load_labels(tmp_path / "labels" / "labels.parquet")
    assert table.classes == summary.classes and len(table) == summary.chips and table.targets.sum() > 0
    assert np.array_equal(table.targets, load_labels(tmp_path / "labels" / "labels.csv").targets)
    split_labels(tmp_path / "labels" / "labels.parquet", val=0.3, group_level=15)
    result = run_train(config(chips, tmp_path / "run", labels=str(tmp_path / "labels" / "labels.parquet")))
    assert result.split.startswith("split column") and result.n_val > 0
    assert set(result.best["per_class"]) == set(summary.classes)


# --- bad inputs ---


def test_run_folder_is_protected(chips, tmp_path) -> None:
    cfg = config(chips, tmp_path / "run")
    run_train(cfg)
    with pytest.raises(OutputExistsError, match="already holds a training run.*`resume`.*`overwrite`"):
        run_train(cfg)
    assert run_train(cfg, overwrite=True).epochs_run == 1
    with pytest.raises(ImagesimFileNotFoundError, match="no checkpoint"):
        run_train(config(chips, tmp_path / "other"), resume=True)


# --- devices: one CPU/CUDA choice for train, export and encode ---


def test_devices_choose_cuda_only_when_a_gpu_is_present(monkeypatch) -> None:
    from imagesim.errors import EncodeError
    from imagesim.learn import devices

    cpu, cuda, trt = devices.CPU_PROVIDER, devices.CUDA_PROVIDER, devices.TENSORRT_PROVIDER
    monkeypatch.setattr(devices, "cuda_device_count", lambda: 0)
    assert devices.onnx_providers("auto", [trt, cuda, cpu]) == [cpu]
    assert devices.onnx_providers("cpu", [cuda, cpu]) == [cpu]
    for wanted in ("cuda", "tensorrt"):
        with pytest.raises(EncodeError, match=f"`provider` {wanted}: no CUDA GPU"):
            devices.onnx_providers(wanted, [trt, cuda, cpu])
    with pytest.raises(InvalidArgumentError, match="`provider` 'gpu'") as bad:
        devices.onnx_providers("gpu", [cpu])
    assert bad.value.param == "provider"
    monkeypatch.setattr(devices, "cuda_device_count", lambda: 1)
    assert devices.onnx_providers("auto", [cuda, cpu]) == [cuda, cpu]
    assert devices.onnx_providers("auto", [cpu]) == [cpu]  # a CPU-only onnxruntime on a GPU machine
    assert devices.onnx_providers("tensorrt", [trt, cuda, cpu]) == [trt, cuda, cpu]
    with pytest.raises(EncodeError, match="no TensorrtExecutionProvider"):
        devices.onnx_providers("tensorrt", [cuda, cpu])

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert devices.torch_device("auto").type == "cpu" and devices.torch_device("cpu").type == "cpu"
    with pytest.raises(InvalidArgumentError, match="`device` cuda asked for") as bad:
        devices.torch_device("cuda")
    assert bad.value.param == "device"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert devices.torch_device("auto").type == "cuda"


def test_cuda_kernels_fast_by_default_or_deterministic(monkeypatch) -> None:
    from imagesim.learn.devices import cuda_kernels

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    saved = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic, torch.are_deterministic_algorithms_enabled())
    try:
        cuda_kernels(torch, deterministic=False)
        assert torch.backends.cudnn.benchmark and not torch.backends.cudnn.deterministic
        assert not torch.are_deterministic_algorithms_enabled() and "CUBLAS_WORKSPACE_CONFIG" not in __import__("os").environ
        cuda_kernels(torch, deterministic=True)
        assert not torch.backends.cudnn.benchmark and torch.backends.cudnn.deterministic
        assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
        assert __import__("os").environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[:2]
        torch.use_deterministic_algorithms(saved[2])


def test_bad_options_fail_clearly(chips, tmp_path) -> None:
    with pytest.raises(InvalidArgumentError, match="`backbone` 'vgg16': choose one of resnet50, resnet18"):
        run_train(config(chips, tmp_path / "r", backbone="vgg16"))
    with pytest.raises(InvalidArgumentError, match="`batch_size` 1: must be at least 2") as bad:
        run_train(config(chips, tmp_path / "r", batch_size=1))
    assert bad.value.param == "batch_size"
    with pytest.raises(InvalidArgumentError, match="`lr` 0.0: must be more than 0"):
        run_train(config(chips, tmp_path / "r", lr=0.0))
    with pytest.raises(InvalidArgumentError, match="`device`"):
        run_train(config(chips, tmp_path / "r", device="tpu"))
    with pytest.raises(ImagesimFileNotFoundError, match="backbone weights not found"):
        run_train(config(chips, tmp_path / "r2", weights=str(tmp_path / "nope.pth")))
    with pytest.raises(ImagesimFileNotFoundError, match="labels file not found"):
        run_train(config(chips, tmp_path / "r3", labels=str(tmp_path / "labels.parquet")))


def test_local_backbone_weights(chips, tmp_path) -> None:
    import torchvision

    torch.manual_seed(1)
    net = torchvision.models.resnet18(weights=None)
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, tmp_path / "r18.pth")
    logs: list[str] = []
    result = run_train(config(chips, tmp_path / "run", weights=str(tmp_path / "r18.pth")), log=logs.append)
    assert any("backbone weights: " in m and "r18.pth" in m for m in logs)
    assert result.history[0]["backbone_frozen"], "--weights freezes the backbone for the first epoch by default"
    model, _ = load_model(tmp_path / "run" / "model.pt")
    # frozen for the only epoch: the backbone is still exactly the file's weights (BatchNorm statistics too)
    for k, v in net.state_dict().items():
        if not k.startswith("fc."):
            assert torch.equal(model.backbone.state_dict()[k], v), k
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), tmp_path / "r50.pth")
    with pytest.raises(InvalidArgumentError, match="r50.pth: weights do not fit this backbone"):
        run_train(config(chips, tmp_path / "run2", weights=str(tmp_path / "r50.pth")))


def test_missing_torch_is_one_clear_error(monkeypatch) -> None:
    from imagesim.cli.learn import require_torch as _require_torch
    from imagesim.errors import MissingDependencyError

    monkeypatch.setitem(__import__("sys").modules, "torchvision", None)
    with pytest.raises(MissingDependencyError, match="torch and torchvision.*needs torchvision.*imagesim\\[train\\]"):
        _require_torch()


def test_missing_chip_files_are_named_and_counted(chips, tmp_path) -> None:
    copy = data_copy(chips, tmp_path / "chips")
    gone = sorted((copy / "10").iterdir())[:2]
    for p in gone:
        p.unlink()
    with pytest.raises(ImagesimFileNotFoundError, match=r"2 of \d+ labelled chip file\(s\) missing") as exc:
        run_train(config(copy, tmp_path / "run"))
    assert gone[0].name in str(exc.value)


def test_labels_for_unknown_chips(chips, tmp_path) -> None:
    copy = data_copy(chips, tmp_path / "chips")
    csv = (copy / "labels.csv").read_text() + "10/Z10-12002022303200000_FFFFFFFFFFFFFFFF.jpg,1,0,0\n"
    (copy / "labels.csv").write_text(csv)
    with pytest.raises(InvalidArgumentError, match="1 labelled chip\\(s\\) are not in .*chips.parquet.*FFFFFFFFFFFFFFFF"):
        run_train(config(copy, tmp_path / "run", labels=str(copy / "labels.csv")))


def test_empty_split_and_bad_label_files(chips, tmp_path) -> None:
    copy = data_copy(chips, tmp_path / "chips")
    manifest = pl.read_parquet(copy / "chips.parquet")
    write_synthetic_labels(copy, split={c: "train" for c in manifest["chip"].to_list()}, name="alltrain")
    with pytest.raises(InvalidArgumentError, match="validation split is empty"):
        run_train(config(copy, tmp_path / "run", labels=str(copy / "alltrain.parquet")))
    (copy / "alltrain.json").unlink()
    with pytest.raises(ImagesimFileNotFoundError, match="alltrain.json beside it, which is missing"):
        load_labels(copy / "alltrain.parquet")
    (copy / "bad.csv").write_text("Feature,a\n10/x.jpg,2\n")
    with pytest.raises(InvalidArgumentError, match="row 2, column 'a' holds '2'"):
        load_labels(copy / "bad.csv")
    one = LabelTable(paths=["10/a.jpg", "10/b.jpg"], targets=np.zeros((2, 1), np.uint8), classes=["x"], quadkeys=["1200", "1201"])
    with pytest.raises(InvalidArgumentError, match="split is empty|at least 2"):
        make_split(one)


# --- command line ---


def test_cli_smoke(chips, tmp_path) -> None:
    import typer
    from typer.testing import CliRunner

    from imagesim.cli.learn import register

    app = typer.Typer()

    @app.callback()
    def _root() -> None: ...

    register(app)
    runner = CliRunner()
    out = tmp_path / "run"
    args = [
        "train",
        "--chips",
        str(chips),
        "--out",
        str(out),
        "--backbone",
        "resnet18",
        "--chip-size",
        "64",
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--workers",
        "0",
        "--device",
        "cpu",
    ]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "trained 1 epoch" in res.output and "baseline" in res.output and (out / "model.pt").is_file()
    res = runner.invoke(app, args)
    assert isinstance(res.exception, OutputExistsError)
    res = runner.invoke(app, [*args[:-6], "--resume"])
    assert res.exit_code == 0 and "nothing to do" in res.output, res.output
    res = runner.invoke(app, [*args[:-6], "--epochs", "2", "--resume", "--deterministic"])
    assert res.exit_code == 0, res.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["epochs"]) == 2 and metrics["config"]["deterministic"] is True
    assert "--backbone" in runner.invoke(app, ["train", "--help"]).output
