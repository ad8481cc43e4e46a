"""`imagesim pretrain`: places and temporal positives, the loss, the kNN metric, a run, resume, its backbone file."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")

from imagesim.errors import InvalidArgumentError, OutputExistsError  # noqa: E402
from imagesim.learn import pretrain as P  # noqa: E402


@pytest.fixture(scope="module")
def sample_chips(small_sample, tmp_path_factory):
    from imagesim.imagery.chip import ChipSettings, run_chip

    dest = tmp_path_factory.mktemp("pretrain-chips")
    assert run_chip(small_sample.root, dest, ChipSettings(zoom=17, proc=2)).written
    return dest


def test_places_group_the_acquisitions_of_a_quadkey(sample_chips) -> None:
    paths, keys = P.places(sample_chips)
    assert len(paths) == len(keys) == len(set(keys)) > 8
    two = [p for p in paths if len(p) > 1]
    assert two, "cell A's two acquisitions share places"
    for acqs in two:
        quadkeys = {a.split("-")[1].split("_")[0] for a in acqs}
        catalog_ids = {a.rsplit("_", 1)[1] for a in acqs}
        assert len(quadkeys) == 1 and len(catalog_ids) == len(acqs)


def test_second_view_is_the_place_on_another_date(sample_chips, monkeypatch) -> None:
    paths, _ = P.places(sample_chips)
    files = sorted({p for acqs in paths for p in acqs})
    marker = {p: i + 1 for i, p in enumerate(files)}

    def marked(chips, names, size, threads=0):  # each chip's pixels hold its number (two bytes)
        out = np.zeros((len(names), size, size, 3), np.uint8)
        for k, name in enumerate(names):
            out[k, ..., 0], out[k, ..., 1] = marker[name] % 256, marker[name] // 256
        return out, [None] * len(names)

    monkeypatch.setattr(P, "decode_chips", marked)
    temporal = P.PairDataset(sample_chips, paths, None, 16, temporal=True, seed=0)
    plain = P.PairDataset(sample_chips, paths, None, 16, temporal=False, seed=0)

    def numbers(dataset, key):
        first, second, *_ = dataset.__getitems__([key])
        return [int(v[0, 0, 0, 0]) + 256 * int(v[0, 0, 0, 1]) for v in (first, second)]

    for i, acqs in enumerate(paths):
        a, b = numbers(temporal, (0, i))
        if len(acqs) > 1:
            assert a != b and {a, b} <= {marker[p] for p in acqs}
        else:
            assert a == b == marker[acqs[0]]
        a, b = numbers(plain, (0, i))
        assert a == b
    assert numbers(temporal, (3, 0)) == numbers(temporal, (3, 0))  # seeded


def test_views_batch_like_the_per_view_pipeline(sample_chips) -> None:
    """A batch's views (uint8 crop, mirror, turns in the worker; colour where the model runs) are what the
    per-view numpy pipeline made of the same draws: crop 50-100 %, flips, turns, jitter, grey, cast."""
    paths, _ = P.places(sample_chips)
    ds = P.PairDataset(sample_chips, paths, None, 32, temporal=True, seed=4, threads=1)
    keys = [(1, i) for i in range(min(6, len(paths)))]
    first, second, first_colour, second_colour, problems = ds.__getitems__(keys)
    assert problems == [] and first.dtype == torch.uint8 and tuple(first.shape) == (len(keys), 32, 32, 3)
    x = P.model_input(torch.cat([first, second]), torch.cat([first_colour, second_colour]), "cpu")
    assert tuple(x.shape) == (2 * len(keys), 3, 32, 32)
    for j, (epoch, i) in enumerate(keys):
        a, b, rng = ds._pair(epoch, i)
        decoded, _ = P.decode_chips(sample_chips, [a, b], 64)
        for k, img in enumerate(decoded):
            want = reference_view(img, rng, 32)
            np.testing.assert_allclose(x[j + k * len(keys)].numpy(), want, atol=3e-5)
    single = ds[keys[0]]
    np.testing.assert_allclose(single[0].numpy(), x[0].numpy(), atol=1e-6)
    np.testing.assert_allclose(single[1].numpy(), x[len(keys)].numpy(), atol=1e-6)


def reference_view(img: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    """One view as `pretrain` made it per view in numpy before batches (float32 CHW, normalised)."""
    h = img.shape[0]
    side = int(round(h * np.sqrt(rng.uniform(0.5, 1.0))))
    r0, c0 = (int(v) for v in rng.integers(0, h - side + 1, 2))
    idx = (np.arange(size) * side / size).astype(np.int64)
    x = img[r0 : r0 + side, c0 : c0 + side][idx][:, idx].astype(np.float32) / 255.0
    if rng.random() < 0.5:
        x = x[:, ::-1]
    x = np.rot90(x, int(rng.integers(4)))
    b, c, s = (float(v) for v in rng.uniform(0.6, 1.4, 3).astype(np.float32))
    x = x * b
    mean = x.mean()
    x = (x - mean) * c + mean
    gray = x @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    x = (x - gray[..., None]) * (0.0 if rng.random() < 0.2 else s) + gray[..., None]
    x = x + rng.normal(0, 0.03, 3).astype(np.float32)
    x = np.clip(x, 0.0, 1.0)
    x = (x - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def test_unreadable_chips_leave_their_places_out(sample_chips, tmp_path) -> None:
    import shutil

    copy = tmp_path / "chips"
    shutil.copytree(sample_chips, copy)
    paths, _ = P.places(copy)
    bad = copy / paths[0][0]
    bad.write_bytes(b"not a jpeg")
    ds = P.PairDataset(copy, paths, None, 16, temporal=False, seed=0)
    first, second, fc, sc, problems = ds.__getitems__([(0, 0), (0, 1), (0, 2)])
    assert len(first) == len(second) == len(fc) == len(sc) == 2 and len(problems) == 1 and str(bad) in problems[0]
    first, *_, problems = ds.__getitems__([(0, 0)])
    assert len(first) == 0 and problems
    logs: list[str] = []
    cfg = P.PretrainConfig(chips=str(copy), out=str(tmp_path / "run"), backbone="resnet18", chip_size=32, epochs=1, batch_size=8, workers=0)
    result = P.run_pretrain(cfg, log=logs.append)
    left_out = [m for m in logs if "left out a place whose chip cannot be read" in m]
    assert len(left_out) == 1 and str(bad) in left_out[0] and left_out[0] in result.notes


def test_nt_xent_rewards_matching_views() -> None:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(16, 8, generator=g)
    aligned = P.nt_xent(z, z + 0.01 * torch.randn(16, 8, generator=g), 0.2)
    shuffled = P.nt_xent(z, z[torch.randperm(16, generator=g)], 0.2)
    assert float(aligned) < 0.5 < float(shuffled)
    # 2 views, 1 pair: each must find its partner among 2N - 1 = 1 candidates: loss 0
    assert float(P.nt_xent(z[:1], z[:1] * 2, 0.2)) == pytest.approx(0.0, abs=1e-6)


def test_knn_precision_against_hand_made_clusters() -> None:
    rng = np.random.default_rng(0)
    centres = np.eye(4) * 10
    labels = np.repeat(np.arange(4), 12)
    feats = centres[labels] + rng.normal(0, 0.1, (48, 4))
    targets = np.eye(4, dtype=np.uint8)[labels]
    groups = [f"q{i}" for i in range(48)]
    p, r = P.knn_precision(feats, targets, groups, k=5)
    assert p == 1.0 and r == pytest.approx(11 / 47)
    p_rand, _ = P.knn_precision(rng.normal(size=(48, 4)), targets, groups, k=5)
    assert p_rand < 0.6
    # neighbours from the query's own place do not count
    same_place = [f"q{i // 12}" for i in range(48)]
    assert np.isnan(P.knn_precision(feats[:10], targets[:10], same_place[:10], k=10)[0])


def test_run_writes_a_backbone_train_can_load_and_resumes(sample_chips, tmp_path) -> None:
    from imagesim.learn.model import MultilabelNet, load_backbone_weights

    out = tmp_path / "run"
    cfg = P.PretrainConfig(chips=str(sample_chips), out=str(out), backbone="resnet18", chip_size=32, epochs=2, batch_size=8, workers=0)
    first = P.run_pretrain(cfg, stop_after=1)
    assert first.epochs_run == 1 and first.temporal_places > 0 and np.isfinite(first.history[0]["loss"])
    saved = torch.load(out / "backbone.pt", map_location="cpu", weights_only=False)
    assert saved["kind"] == "imagesim-backbone" and saved["backbone"] == "resnet18" and saved["chip_size"] == 32 and saved["epoch"] == 1
    assert not any(k.startswith("fc.") for k in saved["state_dict"]) and "layer4.1.bn2.running_mean" in saved["state_dict"]
    with pytest.raises(OutputExistsError):
        P.run_pretrain(cfg)
    second = P.run_pretrain(cfg, resume=True)
    assert second.epochs_run == 1 and [h["epoch"] for h in second.history] == [1, 2]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == "simclr" and len(metrics["history"]) == 2
    model = MultilabelNet("resnet18", 3)
    report = load_backbone_weights(model, out / "backbone.pt")
    assert report.loaded == len(model.backbone.state_dict()) and report.head == 0
    final = torch.load(out / "backbone.pt", map_location="cpu", weights_only=False)["state_dict"]
    assert torch.equal(model.backbone.state_dict()["conv1.weight"], final["conv1.weight"])


def test_too_few_places_is_a_clear_error(sample_chips, tmp_path) -> None:
    cfg = P.PretrainConfig(chips=str(sample_chips), out=str(tmp_path / "r"), backbone="resnet18", chip_size=32, batch_size=4096, workers=0)
    with pytest.raises(InvalidArgumentError, match="fewer than one batch"):
        P.run_pretrain(cfg)
    assert not (tmp_path / "r" / "backbone.pt").exists()
