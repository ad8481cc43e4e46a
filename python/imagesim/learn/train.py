"""`imagesim train`: a multilabel ResNet on chips and their OSM labels.

:func:`run_train` does the whole run: read and check the labels, split, build the model
(:mod:`imagesim.learn.model`), train with a frozen backbone for the first epochs, evaluate every epoch
(:mod:`imagesim.learn.metrics`), and write into the run folder:

- ``last.pt`` — everything to continue (weights, optimizer, scheduler, AMP scaler, epoch, history);
- ``model.pt`` — the best epoch's model: weights, config, class names, tuned thresholds, metrics;
- ``metrics.json`` — per-epoch metrics, the label-frequency baseline, the split;
- ``training_curves.png`` — loss and F1/mAP per epoch.

Determinism: the model is initialised from ``seed``; each epoch reseeds torch from ``(seed, epoch)``;
the shuffle order and every sample's augmentation are drawn from ``(seed, epoch, index)``. A run
resumed from ``last.pt`` therefore continues exactly as the uninterrupted run would have (on the same
device and thread count).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from imagesim import options
from imagesim.artefacts import LAST_PT, METRICS_JSON, MODEL_PT, RUN_FILES, SPLIT_JSON, TRAINING_CURVES
from imagesim.errors import ImagesimFileNotFoundError, InvalidArgumentError, JpegError, LabelInputError, OutputExistsError
from imagesim.fsutil import write_json, write_with

RUN_MARKERS = RUN_FILES[:3]  # a folder with any of these holds a run (split.json alone: a run that never finished an epoch)
CHECKPOINT_FORMAT = "imagesim-train-checkpoint/1"
MODEL_FORMAT = "imagesim-model/1"
MONITOR = "f1_micro_tuned"


@dataclass
class TrainConfig:
    chips: str
    labels: str
    out: str
    backbone: str = options.BACKBONE
    weights: str | None = None
    chip_size: int = options.CHIP_SIZE
    epochs: int | None = None  # None: options.EPOCHS for a new run, the run's own count on `resume`
    batch_size: int = options.BATCH_SIZE
    lr: float = options.LR
    backbone_lr_factor: float = options.BACKBONE_LR_FACTOR
    freeze_epochs: int | None = None  # None: 1 with `weights`, 0 when training from scratch
    pos_weight: bool = False
    threshold: float = options.THRESHOLD
    val_fraction: float = options.VAL_FRACTION
    device: str = options.DEVICE
    amp: bool = False
    workers: int = options.TRAIN_WORKERS
    seed: int = 0
    deterministic: bool = False  # CUDA only: deterministic kernels (CPU runs are deterministic anyway)

    def check(self) -> None:
        options.check_training_run(self.backbone, self.device, self.chip_size, self.epochs, self.workers, self.lr)
        options.check_range("batch_size", self.batch_size, *options.BATCH_SIZE_RANGE)
        if self.freeze_epochs is not None:
            options.check_range("freeze_epochs", self.freeze_epochs, *options.FREEZE_EPOCHS_RANGE)
        options.check_range("backbone_lr_factor", self.backbone_lr_factor, 0, exclusive=True)
        options.check_range("threshold", self.threshold, 0, 1, exclusive=True)
        options.check_range("val_fraction", self.val_fraction, 0, 1, exclusive=True)

    @property
    def frozen_epochs(self) -> int:
        if self.freeze_epochs is not None:
            return self.freeze_epochs
        return 1 if self.weights else 0


@dataclass
class TrainResult:
    out: Path
    epochs_run: int
    epochs_total: int
    best_epoch: int
    best: dict
    baseline: dict
    history: list[dict]
    seconds: float
    images_per_s: float
    n_train: int
    n_val: int
    split: str
    device: str
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        b = self.best
        return (
            f"trained {self.epochs_run} epoch(s) ({self.epochs_total} in all) on {self.device} in {self.seconds:.1f} s "
            f"({self.images_per_s:.1f} img/s); best epoch {self.best_epoch}: val F1 micro {b[MONITOR]:.3f} "
            f"(label-frequency baseline {self.baseline['f1_micro']:.3f}), F1 samples {b['f1_samples_tuned']:.3f}, "
            f"mAP {b['map']:.3f} → {self.out / 'model.pt'}"
        )


class _NullBar:
    def update(self, done: int) -> None: ...

    def close(self) -> None: ...


ProgressFactory = Callable[[str, int], Any]


def _epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def _prepare_out(out: Path, *, resume: bool, overwrite: bool) -> None:
    if resume:
        if not (out / LAST_PT).is_file():
            raise ImagesimFileNotFoundError(f"`resume`: no checkpoint {out / LAST_PT} to continue from")
        return
    existing = [n for n in RUN_MARKERS if (out / n).exists()]
    if existing and not overwrite:
        raise OutputExistsError(
            f"{out} already holds a training run ({', '.join(existing)}); pass `resume` to continue it or `overwrite` to start again"
        )
    for n in RUN_FILES:
        (out / n).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def _save_torch(path: Path, obj: Any) -> None:
    import torch

    write_with(path, lambda tmp: torch.save(obj, tmp))


def _cpu_state(module) -> dict:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


#: What `load_checkpoint` expects, for error messages.
IMAGESIM_CHECKPOINT = "an imagesim model: model.pt (or last.pt) written by `imagesim train`"


def load_checkpoint(path: str | Path) -> dict:
    """Read ``last.pt`` or ``model.pt`` (CPU tensors); anything else is one clear error naming the file."""
    from imagesim.learn.model import read_torch_file

    path = Path(path)
    ckpt = read_torch_file(path, "checkpoint", IMAGESIM_CHECKPOINT)
    if not isinstance(ckpt, dict) or ckpt.get("format") not in (CHECKPOINT_FORMAT, MODEL_FORMAT):
        if isinstance(ckpt, dict) and ckpt and all(_is_tensor(v) for v in ckpt.values()):
            what = f"a state dict of {len(ckpt)} tensors; backbone weights go to `imagesim train --weights`"
        else:
            what = f"a PyTorch file holding a {type(ckpt).__name__}" + (" without imagesim's format tag" if isinstance(ckpt, dict) else "")
        raise InvalidArgumentError(f"{path}: not an imagesim checkpoint ({what}); expected {IMAGESIM_CHECKPOINT}")
    config, classes, state = ckpt.get("config"), ckpt.get("classes"), ckpt.get("model")
    if not (isinstance(config, dict) and "backbone" in config and isinstance(classes, list) and classes and isinstance(state, dict)):
        raise InvalidArgumentError(f"{path}: damaged imagesim checkpoint (its config, classes or model weights are missing)")
    return ckpt


def _is_tensor(value: Any) -> bool:
    import torch

    return bool(torch.is_tensor(value))


def load_model(path: str | Path, device: str = "cpu"):
    """``(model, checkpoint)`` from a ``model.pt``: the network in eval mode on ``device``; the
    checkpoint dict gives ``classes``, ``thresholds``, ``config``, ``chip_size``, ``mean``/``std``."""
    from imagesim.learn.model import MultilabelNet

    path = Path(path)
    ckpt = load_checkpoint(path)
    try:
        model = MultilabelNet(ckpt["config"]["backbone"], len(ckpt["classes"]))
        model.load_state_dict(ckpt["model"])
    except (InvalidArgumentError, RuntimeError, KeyError, TypeError) as exc:  # unknown backbone, tensors of another shape
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InvalidArgumentError(f"{path}: damaged imagesim checkpoint: its weights do not fit its own config ({first})") from exc
    return model.to(device).eval(), ckpt


def _cosine(total_steps: int, floor: float = 0.01) -> Callable[[int], float]:
    def factor(step: int) -> float:
        t = min(step, total_steps) / max(total_steps, 1)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))

    return factor


def _pos_weight(y: np.ndarray, cap: float = 50.0) -> np.ndarray:
    pos = y.sum(0).astype(np.float64)
    neg = len(y) - pos
    return np.where(pos > 0, np.clip(neg / np.maximum(pos, 1), 1.0, cap), 1.0).astype(np.float32)


def plot_curves(history: list[dict], baseline: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    a.plot(ep, [h["train_loss"] for h in history], "o-", label="train")
    a.plot(ep, [h["val_loss"] for h in history], "o-", label="validation")
    a.set(xlabel="epoch", ylabel="BCE loss", title="loss")
    a.legend()
    for key, label in (
        ("f1_micro_tuned", "F1 micro (tuned)"),
        ("f1_samples_tuned", "F1 samples (tuned)"),
        ("f1_macro_tuned", "F1 macro (tuned)"),
        ("f1_micro", "F1 micro @ threshold"),
        ("map", "mAP"),
    ):
        b.plot(ep, [h[key] for h in history], "o-", label=label)
    b.axhline(baseline["f1_micro"], color="grey", ls="--", label="F1 micro, label-frequency baseline")
    b.set(xlabel="epoch", ylim=(0, 1), title="validation")
    b.legend(fontsize=8)
    from matplotlib.ticker import MaxNLocator

    for ax in (a, b):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


def run_train(
    config: TrainConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    log: Callable[[str], None] = lambda m: None,
    progress: ProgressFactory | None = None,
    stop_after: int | None = None,
) -> TrainResult:
    """Train (or continue) a run in ``config.out``.

    ``resume`` continues ``last.pt`` with the run's saved settings; only ``epochs`` (to extend a
    finished run; the cosine schedule then stretches), ``workers`` and ``device`` come from
    ``config``. ``stop_after`` ends this call after that many epochs (time-boxed jobs, tests).
    """
    import torch
    from torch import nn

    from imagesim.learn.dataset import (
        ChipDataset,
        EpochSampler,
        Unreadable,
        check_chips,
        keep_batch,
        load_labels,
        make_split,
        model_input,
    )
    from imagesim.learn.devices import cuda_kernels, torch_device
    from imagesim.learn.metrics import evaluate, frequency_baseline
    from imagesim.learn.model import MultilabelNet, load_backbone_weights

    started = time.perf_counter()
    out = Path(config.out)
    notes: list[str] = []

    def note(msg: str) -> None:
        notes.append(msg)
        log(msg)

    ckpt = None
    _prepare_out(out, resume=resume, overwrite=overwrite)
    if resume:
        ckpt = load_checkpoint(out / LAST_PT)
        saved = ckpt["config"]
        keep = {
            "epochs": config.epochs or saved["epochs"],
            "workers": config.workers,
            "device": config.device,
            "deterministic": config.deterministic,
        }
        config = TrainConfig(**{**{f.name: saved[f.name] for f in fields(TrainConfig) if f.name in saved}, **keep})
        if config.epochs != saved["epochs"]:
            note(f"resume: epochs {saved['epochs']} → {config.epochs}; the cosine schedule is stretched to the new length")
    elif config.epochs is None:
        config = replace(config, epochs=options.EPOCHS)
    config.check()
    epochs = int(config.epochs or options.EPOCHS)
    chips = Path(config.chips)

    table = load_labels(config.labels)
    if table.dropped_nodata:
        note(f"left out {table.dropped_nodata} no_data chip(s) (nothing to learn in them)")
    check_chips(table, chips)
    split = make_split(table, config.val_fraction)
    if ckpt is not None and ckpt["labels_digest"] != table.digest():
        raise InvalidArgumentError(
            f"{config.labels}: the labels changed since the run in {out} started; start a new run (pass `overwrite`)"
        )
    log(f"{len(table)} chips, {len(table.classes)} classes; {split.train.size} train / {split.val.size} validation ({split.how})")
    y = table.targets
    y_train, y_val = y[split.train], y[split.val]
    if not y_train.any():  # all-zero targets: the run would "train" to F1 0 and look like it worked
        where = "chips" if not y.any() else f"training chips ({int(y_val.any(axis=1).sum())} labelled ones are all in validation)"
        raise LabelInputError(
            f"{config.labels}: none of the {len(split.train) if y.any() else len(table)} {where} has a label; nothing to learn "
            "(see `imagesim labels build`'s summary: OSM data of the cells, the taxonomy, no-data chips)"
        )
    baseline = frequency_baseline(y_train, y_val)

    device = torch_device(config.device)
    cuda = device.type == "cuda"
    amp = config.amp and cuda
    if config.amp and not cuda:
        note("`amp` needs CUDA; training in float32 on the CPU")
    torch.manual_seed(config.seed)
    if cuda:
        cuda_kernels(torch, deterministic=config.deterministic)

    model = MultilabelNet(config.backbone, len(table.classes))
    if ckpt is None:
        model.init_prior(y_train.mean(0))
        if config.weights:
            report = load_backbone_weights(model, config.weights)
            log(f"backbone weights: {report.summary()}")
        else:
            note(f"no `weights`: training the {config.backbone} backbone from scratch (random initialisation)")
    model.to(device)
    if cuda:
        model.to(memory_format=torch.channels_last)

    optimizer = torch.optim.Adam(
        [
            {"params": list(model.backbone.parameters()), "lr": config.lr * config.backbone_lr_factor, "name": "backbone"},
            {"params": model.head_parameters(), "lr": config.lr, "name": "head"},
        ],
        # On CUDA one kernel for every parameter, and the AMP scaler's overflow check stays on the GPU
        # (with the plain Adam, `scaler.step` waits for the GPU every step to read it).
        fused=True if cuda else None,
    )
    # Decode threads per batch: every core when batches are fetched in this process, one per worker.
    threads = 0 if config.workers == 0 else 1
    train_set = ChipDataset(
        chips, [table.paths[i] for i in split.train], y_train, config.chip_size, train=True, seed=config.seed, threads=threads
    )
    val_set = ChipDataset(
        chips, [table.paths[i] for i in split.val], y_val, config.chip_size, train=False, seed=config.seed, threads=threads
    )
    train_sampler = EpochSampler(len(train_set), shuffle=True, seed=config.seed)
    val_sampler = EpochSampler(len(val_set), shuffle=False, seed=config.seed)
    loader_args: dict[str, Any] = {
        "batch_size": config.batch_size,
        "num_workers": config.workers,
        "pin_memory": cuda,
        "collate_fn": keep_batch,
    }
    if config.workers > 0:
        # Fresh interpreters for workers: forking a process that runs Rust (rayon) or CUDA threads can deadlock.
        import multiprocessing as mp

        loader_args |= {"multiprocessing_context": mp.get_context("forkserver"), "persistent_workers": True}
    # BatchNorm1d cannot train on a batch of one: drop a trailing single-chip batch.
    drop_last = len(train_set) % config.batch_size == 1
    train_loader: Any = torch.utils.data.DataLoader(train_set, sampler=train_sampler, drop_last=drop_last, **loader_args)  # type: ignore[arg-type]
    val_loader: Any = torch.utils.data.DataLoader(val_set, sampler=val_sampler, **loader_args)  # type: ignore[arg-type]
    steps_per_epoch = len(train_loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _cosine(epochs * steps_per_epoch))
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    pos_weight = torch.from_numpy(_pos_weight(y_train)).to(device) if config.pos_weight else None
    criterion = nn.BCEWithLogitsLoss(pos_weight=pos_weight)

    history: list[dict] = []
    best: dict | None = None
    best_epoch = 0
    start_epoch = 0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        history, best, best_epoch, start_epoch = ckpt["history"], ckpt["best"], ckpt["best_epoch"], ckpt["epoch"]
        log(f"resuming {out} after epoch {start_epoch} of {epochs}")
        if start_epoch >= epochs:
            note(f"the run already has {start_epoch} epoch(s); nothing to do (pass a larger `epochs` to extend it)")

    split_info = {"how": split.how, "train": [table.paths[i] for i in split.train], "val": [table.paths[i] for i in split.val]}
    if ckpt is None:
        write_json(out / SPLIT_JSON, split_info)
    bar_factory = progress or (lambda desc, total: _NullBar())

    unreadable = Unreadable(note, "a chip that cannot be read")

    def run_epoch(epoch: int, train: bool) -> tuple[float, np.ndarray, np.ndarray, float]:
        """Loss, probabilities and targets of the chips read, images/s. Nothing here waits for the GPU
        but the end of the epoch (the loss is summed on the device)."""
        loader, sampler = (train_loader, train_sampler) if train else (val_loader, val_sampler)
        sampler.epoch = epoch
        model.train(train)
        bar = bar_factory(f"epoch {epoch + 1}/{epochs} {'train' if train else 'val'}", len(loader))
        total, count, probs, targets = torch.zeros((), device=device), 0, [], []
        t0 = time.perf_counter()
        try:
            for step, (pixels, factors, t, problems) in enumerate(loader, 1):
                unreadable.add(problems)
                if len(t) < (2 if train else 1):  # BatchNorm cannot train on one chip
                    bar.update(step)
                    continue
                x = model_input(pixels, factors, device, channels_last=cuda)
                t = t.to(device, non_blocking=True)
                with torch.set_grad_enabled(train), torch.autocast("cuda", dtype=torch.float16, enabled=amp):
                    logits = model(x)
                    loss = criterion(logits.float(), t)
                if train:
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                    scheduler.step()
                else:
                    probs.append(torch.sigmoid(logits.float()))
                    targets.append(t)
                total += loss.detach() * len(t)
                count += len(t)
                bar.update(step)
        finally:
            bar.close()
        if count == 0:
            raise JpegError(
                f"{chips}: no {'training' if train else 'validation'} chip of epoch {epoch + 1} could be read" + unreadable.summary()
            )
        mean_loss = float(total) / count  # waits for the GPU once an epoch
        seconds = time.perf_counter() - t0
        if not train:
            return mean_loss, torch.cat(probs).cpu().numpy(), torch.cat(targets).cpu().numpy().astype(np.uint8), count / max(seconds, 1e-9)
        return mean_loss, np.zeros((0, len(table.classes))), np.zeros((0, len(table.classes))), count / max(seconds, 1e-9)

    ran = 0
    rates: list[float] = []
    for epoch in range(start_epoch, epochs):
        if stop_after is not None and ran >= stop_after:
            break
        torch.manual_seed(_epoch_seed(config.seed, epoch))
        frozen = epoch < config.frozen_epochs
        model.set_backbone_frozen(frozen)
        t0 = time.perf_counter()
        train_loss, _, _, rate = run_epoch(epoch, True)
        val_loss, probs, val_targets, _ = run_epoch(epoch, False)
        rates.append(rate)
        m = evaluate(val_targets, probs, table.classes, config.threshold)
        record = {
            "epoch": epoch + 1,
            "train_loss": train_loss,
            "val_loss": val_loss,
            **m,
            "backbone_frozen": frozen,
            "lr": optimizer.param_groups[1]["lr"],
            "backbone_lr": optimizer.param_groups[0]["lr"],
            "train_images_per_s": rate,
            "seconds": time.perf_counter() - t0,
        }
        history.append(record)
        is_best = best is None or record[MONITOR] > best[MONITOR]
        if is_best:
            best, best_epoch = record, epoch + 1
        state = _cpu_state(model)
        common = {
            "config": asdict(config),
            "classes": table.classes,
            "labels_digest": table.digest(),
            "chip_size": config.chip_size,
            "epoch": epoch + 1,
        }
        if is_best:
            from imagesim.learn.dataset import IMAGENET_MEAN, IMAGENET_STD
            from imagesim.learn.model import EMBEDDING_DIM

            _save_torch(
                out / MODEL_PT,
                {
                    "format": MODEL_FORMAT,
                    **common,
                    "model": state,
                    "thresholds": record["thresholds"],
                    "threshold": config.threshold,
                    "metrics": record,
                    "baseline": baseline,
                    "embedding_dim": EMBEDDING_DIM,
                    "mean": list(IMAGENET_MEAN),
                    "std": list(IMAGENET_STD),
                },
            )
        _save_torch(
            out / LAST_PT,
            {
                "format": CHECKPOINT_FORMAT,
                **common,
                "model": state,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "history": history,
                "best": best,
                "best_epoch": best_epoch,
            },
        )
        unreadable.epoch_end()
        _write_metrics(out, config, table, split_info, baseline, history, best, best_epoch, unreadable.problems)
        plot_curves(history, baseline, out / TRAINING_CURVES)
        log(
            f"epoch {epoch + 1}/{epochs}{' (backbone frozen)' if frozen else ''}: loss {train_loss:.4f} / val {val_loss:.4f}; "
            f"val F1 micro {record['f1_micro']:.3f} @{config.threshold} {record['f1_micro_tuned']:.3f} tuned "
            f"(baseline {baseline['f1_micro']:.3f}), samples {record['f1_samples_tuned']:.3f}, macro {record['f1_macro_tuned']:.3f}, "
            f"mAP {record['map']:.3f}; {rate:.1f} img/s{'  ← best' if is_best else ''}"
        )
        ran += 1

    if best is None:  # nothing ran and nothing saved: cannot happen after a check()ed config
        raise InvalidArgumentError(f"{out}: no epoch was trained")
    return TrainResult(
        out=out,
        epochs_run=ran,
        epochs_total=len(history),
        best_epoch=best_epoch,
        best=best,
        baseline=baseline,
        history=history,
        seconds=time.perf_counter() - started,
        images_per_s=float(np.mean(rates)) if rates else 0.0,
        n_train=int(split.train.size),
        n_val=int(split.val.size),
        split=split.how,
        device=str(device),
        notes=notes,
    )


def _write_metrics(
    out: Path,
    config: TrainConfig,
    table,
    split_info: dict,
    baseline: dict,
    history: list[dict],
    best: dict | None,
    best_epoch: int,
    unreadable: list[str],
) -> None:
    write_json(
        out / METRICS_JSON,
        {
            "classes": table.classes,
            "config": asdict(config),
            "n_train": len(split_info["train"]),
            "n_val": len(split_info["val"]),
            "split": split_info["how"],
            "monitor": MONITOR,
            "baseline": baseline,
            "best_epoch": best_epoch,
            "best": best,
            "epochs": history,
            "unreadable_chips": unreadable,  # left out of this call's epochs (see the log)
        },
    )


__all__ = ["TrainConfig", "TrainResult", "run_train", "load_model", "load_checkpoint"]
