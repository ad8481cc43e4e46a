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
    marker = {p: float(i + 1) for i, p in enumerate(sorted({p for acqs in paths for p in acqs}))}
    monkeypatch.setattr(P, "load_chip", lambda path, size: np.full((size, size, 3), marker[f"{path.parent.name}/{path.name}"], np.float32))
    monkeypatch.setattr(P, "_view", lambda img, rng, size: img[:size, :size].transpose(2, 0, 1).copy())
    temporal = P.PairDataset(sample_chips, paths, None, 16, temporal=True, seed=0)
    plain = P.PairDataset(sample_chips, paths, None, 16, temporal=False, seed=0)
    for i, acqs in enumerate(paths):
        a, b = (float(t.flatten()[0]) for t in temporal[(0, i)])
        if len(acqs) > 1:
            assert a != b and {a, b} <= {marker[p] for p in acqs}
        else:
            assert a == b
        a, b = (float(t.flatten()[0]) for t in plain[(0, i)])
        assert a == b
    assert all(float(x.flatten()[0]) == float(y.flatten()[0]) for x, y in [temporal[(3, 0)]] * 2)  # seeded


def test_view_shape_and_normalisation() -> None:
    img = np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8)
    v = P._view(img, np.random.default_rng(1), 64)
    assert v.shape == (3, 64, 64) and v.dtype == np.float32 and v.flags.c_contiguous
    assert -3 < v.min() and v.max() < 3


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
