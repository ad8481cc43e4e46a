"""`imagesim train`: registered on the main app by ``register(app)``.

torch and torchvision are imported inside the command, so `imagesim --help` stays fast and the other
commands work without them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

err = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)


def _require_torch() -> None:
    from imagesim.errors import MissingDependencyError

    try:
        import torch  # noqa: F401
        import torchvision  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError(
            f"`imagesim train` needs torch and torchvision ({exc.name} is not installed); "
            "install them with `pip install 'imagesim[train]'` or `pip install torch torchvision`"
        ) from exc


def train(
    chips: Annotated[Path, typer.Option("--chips", help="Chips folder (DEST of `imagesim chip`).")],
    out_dir: Annotated[Path, typer.Option("--out", help="Run folder: model.pt, last.pt, metrics.json, training_curves.png.")],
    labels: Annotated[Optional[Path], typer.Option("--labels", help="labels.parquet (classes from labels.json beside it) or a dense labels.csv. Default: CHIPS/labels.parquet.")] = None,
    backbone: Annotated[str, typer.Option(help="resnet50 or resnet18.")] = "resnet50",
    weights: Annotated[Optional[Path], typer.Option(help="Local torchvision ResNet state dict for the backbone (nothing is downloaded). Without it: from scratch.")] = None,
    chip_size: Annotated[int, typer.Option("--chip-size", help="Chips are resized to this many pixels square.")] = 224,
    epochs: Annotated[Optional[int], typer.Option(help="Epochs in all (default 10; with --resume: the run's own, or extend it to this many).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Chips per batch.")] = 32,
    lr: Annotated[float, typer.Option(help="Adam learning rate of the head (cosine schedule per step).")] = 1e-3,
    backbone_lr_factor: Annotated[float, typer.Option("--backbone-lr-factor", help="Backbone learning rate = LR × this, once unfrozen.")] = 0.1,
    freeze_epochs: Annotated[Optional[int], typer.Option("--freeze-epochs", help="Epochs with the backbone frozen (default: 1 with --weights, 0 without).")] = None,
    pos_weight: Annotated[bool, typer.Option("--pos-weight", help="Weight positives by negatives/positives per class (capped at 50) for rare labels.")] = False,
    threshold: Annotated[float, typer.Option(help="Sigmoid threshold of the fixed-threshold metrics (tuned per class as well).")] = 0.35,
    val_fraction: Annotated[float, typer.Option("--val-fraction", help="Validation share when the labels carry no split.")] = 0.2,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    amp: Annotated[bool, typer.Option("--amp", help="Mixed precision (float16) on CUDA.")] = False,
    workers: Annotated[int, typer.Option(help="DataLoader worker processes (forkserver; 0 = load in the main process).")] = 2,
    seed: Annotated[int, typer.Option(help="Random seed: initialisation, order, augmentation.")] = 0,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out from last.pt.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a run already in --out.")] = False,
) -> None:
    """Train the multilabel ResNet (frozen backbone first, then fine-tuned) on chips and their labels."""
    from imagesim.errors import InvalidArgumentError

    if resume and overwrite:
        raise InvalidArgumentError("--resume and --overwrite exclude each other")
    _require_torch()
    from imagesim.cli import _progress_bar
    from imagesim.learn.train import TrainConfig, run_train

    config = TrainConfig(
        chips=str(chips),
        labels=str(labels if labels is not None else chips / "labels.parquet"),
        out=str(out_dir),
        backbone=backbone,
        weights=str(weights) if weights else None,
        chip_size=chip_size,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        backbone_lr_factor=backbone_lr_factor,
        freeze_epochs=freeze_epochs,
        pos_weight=pos_weight,
        threshold=threshold,
        val_fraction=val_fraction,
        device=device,
        amp=amp,
        workers=workers,
        seed=seed,
    )
    result = run_train(
        config,
        resume=resume,
        overwrite=overwrite,
        log=lambda m: err.print(m, highlight=False),
        progress=lambda desc, total: _progress_bar(desc)(total),
    )
    out.print(result.line(), highlight=False)


def register(app: typer.Typer) -> None:
    """Add the `train` command to ``app``."""
    app.command("train")(train)
