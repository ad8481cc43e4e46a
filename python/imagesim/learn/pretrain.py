"""`imagesim pretrain`: self-supervised pretraining of the backbone on the user's own chips, no labels.

**Method: SimCLR** (a contrastive loss, NT-Xent, over the batch). Chosen over MoCo v2 and BYOL because it
needs no second (momentum) network — half the forward passes, which decides whether pretraining fits a
CPU in minutes — and no queue or target network to keep in step on resume: a run is the backbone, the
projector and the optimizer. Its weakness (it wants large batches of negatives) matters least here: the
positives carry the signal.

**Positives** (what remote-sensing SSL found best: SeCo, GASSL): one item per *place* (a z17 quadkey with
data) and epoch. Its two views are the place at two different acquisition dates when it has two or more
(temporal positives: the network must see through sun angle, haze, colour balance and JPEG differences,
which `sample-data` puts between the acquisitions of a cell), else two views of one chip; both views are
augmented (random crop 50–100 %, flips, 90° rotations, colour jitter, sometimes grey). ``neighbours`` also
draws, with probability 1/4, the second view from an adjacent place (spatial positives, as Tile2Vec). One
item per place keeps two dates of a place from being each other's negatives.

Outputs in the run folder: ``backbone.pt`` (``kind: imagesim-backbone``: a torchvision ResNet state dict
without ``fc``, plus backbone name and chip size — ``imagesim train --weights RUN/backbone.pt`` loads it,
``imagesim export --model RUN/backbone.pt`` exports it for ``encode`` without a head), ``last.pt`` (resume),
``metrics.json`` (loss per epoch; kNN precision@10 of the backbone's features on labelled chips when the
chips folder has ``labels.parquet``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from imagesim import grid, options
from imagesim.artefacts import LABELS_PARQUET, METRICS_JSON, read_chip_table, with_data
from imagesim.errors import ImagesimFileNotFoundError, InvalidArgumentError, JpegError, OutputExistsError
from imagesim.fsutil import write_json, write_with
from imagesim.learn.dataset import Unreadable, decode_chips, model_input
from imagesim.learn.model import BACKBONE_FORMAT, BACKBONE_KIND

__all__ = ["PretrainConfig", "PretrainResult", "run_pretrain", "places", "nt_xent", "knn_precision", "BACKBONE_KIND"]

BACKBONE_PT = "backbone.pt"
LAST_PT = "last.pt"
PRETRAIN_FORMAT = "imagesim-pretrain-1"
PROJECTION_DIM = 128
KNN_K = 10
KNN_MAX_CHIPS = 3000  # labelled chips the kNN metric embeds each epoch (a sample beyond)
FEATURES = {"resnet18": 512, "resnet50": 2048}


@dataclass(frozen=True)
class PretrainConfig:
    chips: str
    out: str
    backbone: str = options.BACKBONE
    chip_size: int = options.CHIP_SIZE
    epochs: int = options.PRETRAIN_EPOCHS
    batch_size: int = options.PRETRAIN_BATCH_SIZE
    lr: float = options.PRETRAIN_LR
    temperature: float = options.PRETRAIN_TEMPERATURE
    temporal: bool = True  # the second view from another acquisition of the place, when there is one
    neighbours: bool = False  # sometimes the second view from an adjacent place
    weights: str | None = None  # start from these backbone weights (imagenet or a file), as train --weights
    labels: str | None = None  # labelled chips for the kNN metric (default: CHIPS/labels.parquet when present)
    device: str = options.DEVICE
    amp: bool = True  # on CUDA only
    workers: int = options.TRAIN_WORKERS
    seed: int = 0

    def check(self) -> None:
        options.check_training_run(self.backbone, self.device, self.chip_size, self.epochs, self.workers, self.lr)
        options.check_range("batch_size", self.batch_size, *options.PRETRAIN_BATCH_SIZE_RANGE)
        options.check_range("temperature", self.temperature, 0, 10, exclusive=True)


@dataclass
class PretrainResult:
    out: Path
    epochs_run: int
    epochs_total: int
    places: int
    temporal_places: int
    history: list[dict]
    seconds: float
    images_per_s: float
    device: str
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        last = self.history[-1] if self.history else {}
        knn = (
            f", kNN precision@{KNN_K} {last['knn_precision']:.3f} (random {last['knn_random']:.3f})"
            if last.get("knn_precision") is not None
            else ""
        )
        return (
            f"pretrained {self.epochs_run} epoch(s) ({self.epochs_total} in all) on {self.device} in {self.seconds:.1f} s "
            f"({self.images_per_s:.1f} img/s); {self.places:,} places, {self.temporal_places:,} with two or more dates; "
            f"loss {last.get('loss', float('nan')):.4f}{knn} → {self.out / BACKBONE_PT}"
        )


# --------------------------------------------------------------------------------------------
# Places and views
# --------------------------------------------------------------------------------------------


def places(chips_dir: Path) -> tuple[list[list[str]], list[tuple[int, str]]]:
    """Every place with data: the chip paths of its acquisitions (relative to the folder) and its (zone, quadkey)."""
    table = read_chip_table(chips_dir, extra=("written",))
    table = with_data(table)
    grouped = table.group_by("zone", "quadkey", maintain_order=True).agg(pl.col("path").sort()).sort("zone", "quadkey")
    return grouped["path"].to_list(), list(zip(grouped["zone"].to_list(), grouped["quadkey"].to_list()))


def _neighbour_index(keys: list[tuple[int, str]]) -> list[list[int]]:
    """For each place, the places that touch it (8-neighbourhood, same zone and zoom)."""
    where = {k: i for i, k in enumerate(keys)}
    out: list[list[int]] = []
    for zone, qk in keys:
        x, y, z = grid.quadkey_to_tile(qk)
        near = []
        for dx in (-1, 0, 1):
            for dy in (-1, 0, 1):
                if (dx or dy) and 0 <= x + dx < 2**z and 0 <= y + dy < 2**z:
                    j = where.get((zone, grid.tile_to_quadkey((x + dx, y + dy, z))))
                    if j is not None:
                        near.append(j)
        out.append(near)
    return out


def _view(img: np.ndarray, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One augmented view of a uint8 HWC chip decoded at ``2 * size`` or more: its pixels (uint8, ``size``
    square: random crop, mirror, quarter turns) and its colour (float32: brightness, contrast, saturation —
    0 for a grey view —, and a colour cast per band), which :func:`~imagesim.learn.dataset.model_input`
    applies to the batch where the model runs."""
    h = img.shape[0]
    side = int(round(h * math.sqrt(rng.uniform(0.5, 1.0))))
    r0, c0 = (int(v) for v in rng.integers(0, h - side + 1, 2))
    # nearest-neighbour index resize (cheap, exact on uint8); the crop is at least size px
    idx = (np.arange(size) * side / size).astype(np.int64)
    x = img[r0 : r0 + side, c0 : c0 + side][idx][:, idx]
    if rng.random() < 0.5:
        x = x[:, ::-1]
    x = np.rot90(x, int(rng.integers(4)))
    b, c, s = rng.uniform(0.6, 1.4, 3)
    saturation = 0.0 if rng.random() < 0.2 else s
    cast = rng.normal(0, 0.03, 3)
    return np.ascontiguousarray(x), np.array([b, c, saturation, *cast], np.float32)


class PairDataset:
    """Item ``(epoch, i)``: two augmented views of place ``i`` (see the module docstring), seeded by
    ``(seed, epoch, i)``: the same whatever the worker count, and a resumed run sees what it would have.

    Fetched a batch at a time (:meth:`__getitems__`): ``(first, second, first_colour, second_colour,
    problems)`` — the views' uint8 NHWC pixels (each chip decoded once by the Rust core), their colour
    parameters (see :func:`_view`) and the problems of chips that could not be read (their places are
    left out of the batch, each problem naming its file). ``threads``: decode threads per batch (0: all
    cores, for fetching in the main process; 1 in each DataLoader worker).
    """

    def __init__(
        self,
        chips: Path,
        paths: list[list[str]],
        near: list[list[int]] | None,
        size: int,
        *,
        temporal: bool,
        seed: int,
        threads: int = 0,
    ) -> None:
        self.chips, self.paths, self.near, self.size, self.temporal, self.seed = Path(chips), paths, near, size, temporal, seed
        self.threads = threads

    def __len__(self) -> int:
        return len(self.paths)

    def _pair(self, epoch: int, i: int) -> tuple[str, str, np.random.Generator]:
        """The two chips of place ``i``'s item in ``epoch``, and the generator its views draw from next."""
        rng = np.random.default_rng([self.seed, epoch, i, 11])
        acqs = self.paths[i]
        first = int(rng.integers(len(acqs)))
        if self.near is not None and self.near[i] and rng.random() < 0.25:
            j = self.near[i][int(rng.integers(len(self.near[i])))]
            second = self.paths[j][int(rng.integers(len(self.paths[j])))]
        elif self.temporal and len(acqs) > 1:
            second = acqs[(first + 1 + int(rng.integers(len(acqs) - 1))) % len(acqs)]
        else:
            second = acqs[first]
        return acqs[first], second, rng

    def __getitems__(self, keys: list[tuple[int, int]]) -> tuple[Any, Any, Any, Any, list[str]]:
        import torch

        pairs = [self._pair(epoch, i) for epoch, i in keys]
        files = list(dict.fromkeys(p for a, b, _ in pairs for p in (a, b)))
        decode = min(2 * self.size, 512)  # room for the random crop
        pixels, errors = decode_chips(self.chips, files, decode, self.threads)
        at = {p: k for k, p in enumerate(files)}
        views: tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray], list[np.ndarray]] = ([], [], [], [])
        for a, b, rng in pairs:
            if errors[at[a]] is None and errors[at[b]] is None:
                (va, ca), (vb, cb) = _view(pixels[at[a]], rng, self.size), _view(pixels[at[b]], rng, self.size)
                for out, v in zip(views, (va, vb, ca, cb)):
                    out.append(v)
        if not views[0]:
            empty = torch.zeros((0, self.size, self.size, 3), dtype=torch.uint8)
            return empty, empty, torch.zeros((0, 6)), torch.zeros((0, 6)), [e for e in errors if e is not None]
        first, second, first_colour, second_colour = (torch.from_numpy(np.stack(v)) for v in views)
        return first, second, first_colour, second_colour, [e for e in errors if e is not None]

    def __getitem__(self, key: tuple[int, int]) -> tuple[Any, Any]:
        """Item ``key`` as two normalised float ``(3, size, size)`` views (on the CPU)."""
        first, second, first_colour, second_colour, problems = self.__getitems__([key])
        if problems:
            raise JpegError(problems[0])
        return model_input(first, first_colour, "cpu")[0], model_input(second, second_colour, "cpu")[0]


# --------------------------------------------------------------------------------------------
# Model, loss, metric
# --------------------------------------------------------------------------------------------


def _networks(backbone: str) -> tuple[Any, Any]:
    import torchvision
    from torch import nn

    net = getattr(torchvision.models, backbone)(weights=None)
    net.fc = nn.Identity()
    dim = FEATURES[backbone]
    projector = nn.Sequential(nn.Linear(dim, 512), nn.BatchNorm1d(512), nn.ReLU(inplace=True), nn.Linear(512, PROJECTION_DIM))
    return net, projector


def nt_xent(z1: Any, z2: Any, temperature: float) -> Any:
    """SimCLR's NT-Xent loss: each view must pick its partner out of the other 2N − 2 views of the batch."""
    import torch
    from torch.nn import functional as F

    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    n = z1.shape[0]
    logits = z @ z.T / temperature
    logits.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, target)


def knn_precision(features: np.ndarray, targets: np.ndarray, groups: list[str], k: int = KNN_K) -> tuple[float, float]:
    """Precision@k of cosine nearest neighbours (other places only) sharing each chip's rarest label, and
    what random neighbours would give (that label's share among the other chips)."""
    f = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    y = targets.astype(bool)
    has = y.any(axis=1)
    f, y = f[has], y[has]
    g = np.asarray(groups, dtype=object)[has]
    if len(f) < k + 2:
        return float("nan"), float("nan")
    freq = y.sum(axis=0)
    rarest = np.where(y, freq[None, :], np.iinfo(np.int64).max).argmin(axis=1)
    sims = f @ f.T
    same = g[:, None] == g[None, :]
    sims[same] = -np.inf
    top = np.argpartition(-sims, k, axis=1)[:, :k]
    hits = y[top, rarest[:, None]].mean(axis=1)
    random = (freq[rarest] - 1) / max(len(f) - 1, 1)
    return float(hits.mean()), float(np.mean(random))


def _labelled(chips: Path, labels: str | None) -> tuple[list[str], np.ndarray, list[str]] | None:
    from imagesim.learn.dataset import load_labels

    path = Path(labels) if labels else chips / LABELS_PARQUET
    if not path.is_file():
        if labels:
            raise ImagesimFileNotFoundError(f"`labels` {path}: not found")
        return None
    table = load_labels(path)
    keep = np.flatnonzero(table.targets.any(axis=1))
    if keep.size > KNN_MAX_CHIPS:
        keep = np.sort(np.random.default_rng(0).choice(keep, KNN_MAX_CHIPS, replace=False))
    return [table.paths[i] for i in keep], table.targets[keep], [str(table.quadkeys[i]) for i in keep]


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


def _backbone_file(config: PretrainConfig, net: Any, epoch: int) -> dict[str, Any]:
    return {
        "kind": BACKBONE_KIND,
        "format": BACKBONE_FORMAT,
        "backbone": config.backbone,
        "chip_size": config.chip_size,
        "embedding_dim": FEATURES[config.backbone],
        "state_dict": {k: v.detach().cpu().clone() for k, v in net.state_dict().items()},
        "config": asdict(config),
        "epoch": epoch,
    }


def run_pretrain(
    config: PretrainConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    log: Callable[[str], None] = lambda m: None,
    progress: Callable[[str, int], Any] | None = None,
    stop_after: int | None = None,
) -> PretrainResult:
    """Pretrain (or continue) the run in ``config.out``; ``stop_after`` ends this call after that many epochs."""
    import torch

    from imagesim.learn.devices import cuda_kernels, torch_device
    from imagesim.learn.model import MultilabelNet, load_backbone_weights, read_torch_file

    started = time.perf_counter()
    out = Path(config.out)
    notes: list[str] = []

    def note(msg: str) -> None:
        notes.append(msg)
        log(msg)

    ckpt: dict[str, Any] | None = None
    if resume:
        if not (out / LAST_PT).is_file():
            raise ImagesimFileNotFoundError(f"`resume`: no checkpoint {out / LAST_PT} to continue from")
        ckpt = read_torch_file(out / LAST_PT, "pretraining checkpoint", "last.pt of `imagesim pretrain`")
        if not isinstance(ckpt, dict) or ckpt.get("format") != PRETRAIN_FORMAT:
            raise InvalidArgumentError(f"{out / LAST_PT}: not a checkpoint of `imagesim pretrain`")
        saved = ckpt["config"]
        keep = {"epochs": config.epochs, "workers": config.workers, "device": config.device}
        config = PretrainConfig(**{**{f.name: saved[f.name] for f in fields(PretrainConfig) if f.name in saved}, **keep})
    else:
        existing = [n for n in (BACKBONE_PT, LAST_PT, METRICS_JSON) if (out / n).exists()]
        if existing and not overwrite:
            raise OutputExistsError(f"{out} already holds a pretraining run ({', '.join(existing)}); pass `resume` or `overwrite`")
        for n in existing:
            (out / n).unlink()
        out.mkdir(parents=True, exist_ok=True)
    config.check()
    chips = Path(config.chips)
    if not chips.is_dir():
        raise ImagesimFileNotFoundError(f"{chips}: chips folder not found")
    paths, keys = places(chips)
    if len(paths) < config.batch_size:
        raise InvalidArgumentError(
            f"{chips}: {len(paths)} place(s) with data, fewer than one batch ({config.batch_size}); chip more imagery or lower `batch_size`"
        )
    temporal = sum(len(p) > 1 for p in paths)
    log(f"{len(paths):,} places with data, {temporal:,} seen on two or more dates (temporal positives{'' if config.temporal else ': off'})")
    if config.temporal and temporal == 0:
        note("no place has two acquisitions: positives are two augmented views of one chip")
    knn_set = _labelled(chips, config.labels)

    device = torch_device(config.device)
    cuda = device.type == "cuda"
    amp = config.amp and cuda
    torch.manual_seed(config.seed)
    net, projector = _networks(config.backbone)
    if ckpt is None and config.weights:
        holder = MultilabelNet(config.backbone, 1)  # the loader's model; its backbone is what is kept
        report = load_backbone_weights(holder, config.weights)
        net.load_state_dict(holder.backbone.state_dict())
        log(f"starting from backbone weights: {report.summary()}")
    model = torch.nn.ModuleDict({"backbone": net, "projector": projector}).to(device)
    if cuda:
        cuda_kernels(torch, deterministic=False)
        model.to(memory_format=torch.channels_last)
    # fused on CUDA: one kernel, and the AMP scaler's overflow check stays on the GPU (see `train`)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=1e-4, fused=True if cuda else None)
    dataset = PairDataset(
        chips,
        paths,
        _neighbour_index(keys) if config.neighbours else None,
        config.chip_size,
        temporal=config.temporal,
        seed=config.seed,
        threads=0 if config.workers == 0 else 1,  # every core in this process, one per DataLoader worker
    )

    from imagesim.learn.dataset import EpochSampler, keep_batch

    sampler = EpochSampler(len(dataset), shuffle=True, seed=config.seed)
    loader_args: dict[str, Any] = {
        "batch_size": config.batch_size,
        "num_workers": config.workers,
        "pin_memory": cuda,
        "drop_last": True,
        "collate_fn": keep_batch,
    }
    if config.workers > 0:
        import multiprocessing as mp

        loader_args |= {"multiprocessing_context": mp.get_context("forkserver"), "persistent_workers": True}
    loader: Any = torch.utils.data.DataLoader(dataset, sampler=sampler, **loader_args)  # type: ignore[arg-type]
    steps = len(loader)
    total_steps = config.epochs * steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(s, total_steps) / max(total_steps, 1)))
    )
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    history: list[dict] = []
    start = 0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        history, start = ckpt["history"], int(ckpt["epoch"])
        log(f"resuming {out} after epoch {start} of {config.epochs}")
        if start >= config.epochs:
            note(f"the run already has {start} epoch(s); nothing to do (pass a larger `epochs` to extend it)")

    # the kNN chips, decoded once (uint8) for every epoch's measurement, as `encode` decodes them
    knn_pixels = None
    if knn_set is not None:
        knn_pixels, errors = decode_chips(chips, knn_set[0], config.chip_size)
        readable = [k for k, e in enumerate(errors) if e is None]
        if len(readable) < len(errors):
            note(
                f"kNN metric: left out {len(errors) - len(readable)} chip(s) that cannot be read (the first: {next(e for e in errors if e)})"
            )
            knn_pixels = knn_pixels[readable]
            knn_set = ([knn_set[0][k] for k in readable], knn_set[1][readable], [knn_set[2][k] for k in readable])

    def features(pixels: np.ndarray) -> np.ndarray:
        net.eval()
        outs = []
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16, enabled=amp):
            for s in range(0, len(pixels), 128):
                x = model_input(torch.from_numpy(pixels[s : s + 128]), None, device, channels_last=cuda)
                outs.append(net(x).float().cpu().numpy())
        return np.concatenate(outs) if outs else np.zeros((0, FEATURES[config.backbone]), np.float32)

    bar_factory = progress or (lambda desc, total: None)
    unreadable = Unreadable(note, "a place whose chip cannot be read")
    rates: list[float] = []
    ran = 0
    for epoch in range(start, config.epochs):
        if stop_after is not None and ran >= stop_after:
            break
        sampler.epoch = epoch
        model.train()
        bar = bar_factory(f"epoch {epoch + 1}/{config.epochs}", steps)
        t0 = time.perf_counter()
        total, count = torch.zeros((), device=device), 0  # summed on the device: no wait for the GPU each step
        try:
            for step, (first, second, first_colour, second_colour, problems) in enumerate(loader, 1):
                unreadable.add(problems)
                pairs = len(first)
                if pairs < 2:  # the projector's BatchNorm needs two places
                    if bar is not None:
                        bar.update(step)
                    continue
                x = model_input(torch.cat([first, second]), torch.cat([first_colour, second_colour]), device, channels_last=cuda)
                with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
                    z = projector(net(x))
                    loss = nt_xent(z[:pairs], z[pairs:], config.temperature)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                total += loss.detach() * pairs
                count += pairs
                if bar is not None:
                    bar.update(step)
        finally:
            if bar is not None:
                bar.close()
        if count == 0:
            raise JpegError(f"{chips}: no batch of epoch {epoch + 1} had two places whose chips could be read" + unreadable.summary())
        mean_loss = float(total) / max(count, 1)  # waits for the GPU once an epoch
        seconds = time.perf_counter() - t0
        rates.append(2 * count / max(seconds, 1e-9))
        record: dict[str, Any] = {"epoch": epoch + 1, "loss": mean_loss, "images_per_s": rates[-1], "seconds": seconds}
        if knn_set is not None and knn_pixels is not None:
            prec, rand = knn_precision(features(knn_pixels), knn_set[1], knn_set[2])
            record |= {"knn_precision": prec, "knn_random": rand, "knn_chips": len(knn_set[0])}
        history.append(record)
        unreadable.epoch_end()
        ran += 1
        knn = f", kNN precision@{KNN_K} {record['knn_precision']:.3f} (random {record['knn_random']:.3f})" if knn_set is not None else ""
        log(f"epoch {epoch + 1}/{config.epochs}: loss {record['loss']:.4f}{knn}; {record['images_per_s']:.1f} img/s")
        state = {
            "format": PRETRAIN_FORMAT,
            "config": asdict(config),
            "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "history": history,
            "epoch": epoch + 1,
        }
        _save(out / LAST_PT, state)
        _save(out / BACKBONE_PT, _backbone_file(config, net, epoch + 1))
        write_json(
            out / METRICS_JSON,
            {
                "method": "simclr",
                "places": len(paths),
                "temporal_places": temporal,
                "config": asdict(config),
                "history": history,
                "unreadable_chips": unreadable.problems,
                "notes": notes,
            },
        )
    return PretrainResult(
        out=out,
        epochs_run=ran,
        epochs_total=config.epochs,
        places=len(paths),
        temporal_places=temporal,
        history=history,
        seconds=time.perf_counter() - started,
        images_per_s=float(np.mean(rates)) if rates else 0.0,
        device=str(device),
        notes=notes,
    )


def _save(path: Path, obj: Any) -> None:
    import torch

    write_with(path, lambda tmp: torch.save(obj, tmp))
