"""`imagesim train`, `imagesim export` and `imagesim encode`: chips and labels to a model, a model to embeddings.

torch, torchvision and onnxruntime are imported inside the commands, so `imagesim --help` stays fast
and the other commands work without them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from imagesim import options
from imagesim.cli._common import (
    BatchSize,
    ChipFolder,
    Chips,
    Commands,
    LoaderWorkers,
    MaxCloud,
    NodataIndex,
    Overwrite,
    Proc,
    Resume,
    Scheduler,
    Seed,
    TorchDevice,
    err,
    escape,
    log,
    out,
    progress_bar,
)

commands = Commands()
register = commands.register


def require_torch() -> None:
    """torch and torchvision importable, or one clear error naming the extra that installs them."""
    from imagesim.errors import require

    for module in ("torch", "torchvision"):
        require(module, "train", purpose="`imagesim train` (torch and torchvision)")


@commands.command("pretrain")
def pretrain(
    chips: ChipFolder,
    out_dir: Annotated[Path, typer.Option("--out", help="Run folder: backbone.pt, last.pt, metrics.json.")],
    backbone: Annotated[str, typer.Option(help=" or ".join(options.BACKBONES) + ".")] = options.BACKBONE,
    chip_size: Annotated[int, typer.Option("--chip-size", help="Views are this many pixels square.")] = options.CHIP_SIZE,
    epochs: Annotated[int, typer.Option(help="Epochs in all (with --resume: extend the run to this many).")] = options.PRETRAIN_EPOCHS,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Places per batch (each gives two views).")] = options.PRETRAIN_BATCH_SIZE,
    lr: Annotated[float, typer.Option(help="AdamW learning rate (cosine schedule per step).")] = options.PRETRAIN_LR,
    temperature: Annotated[float, typer.Option(help="NT-Xent temperature.")] = options.PRETRAIN_TEMPERATURE,
    temporal: Annotated[
        bool,
        typer.Option("--temporal/--no-temporal", help="Second view from another acquisition date of the place, when it has one."),
    ] = True,
    neighbours: Annotated[bool, typer.Option("--neighbours", help="Sometimes take the second view from an adjacent place.")] = False,
    weights: Annotated[
        Optional[str], typer.Option(help="Start from these backbone weights: 'imagenet' or a file (as `train --weights`).")
    ] = None,
    labels: Annotated[
        Optional[Path],
        typer.Option(
            "--labels", help="Labelled chips for the kNN precision printed each epoch (default: CHIPS/labels.parquet if present)."
        ),
    ] = None,
    device: TorchDevice = options.DEVICE,
    amp: Annotated[bool, typer.Option("--amp/--no-amp", help="Mixed precision (float16) and channels-last on CUDA.")] = True,
    workers: LoaderWorkers = options.TRAIN_WORKERS,
    seed: Seed = 0,
    resume: Resume = False,
    overwrite: Overwrite = False,
) -> None:
    """Pretrain the backbone on the chips without labels (SimCLR; positives: the place on another date).

    RUN/backbone.pt then starts `imagesim train --weights RUN/backbone.pt`, or is exported as it is
    (`imagesim export --model RUN/backbone.pt`) for `imagesim encode` without a head.
    """
    from imagesim.errors import InvalidArgumentError

    if resume and overwrite:
        raise InvalidArgumentError("--resume and --overwrite exclude each other")
    require_torch()
    from imagesim.learn.pretrain import PretrainConfig, run_pretrain

    config = PretrainConfig(
        chips=str(chips),
        out=str(out_dir),
        backbone=backbone,
        chip_size=chip_size,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        temperature=temperature,
        temporal=temporal,
        neighbours=neighbours,
        weights=weights or None,
        labels=str(labels) if labels is not None else None,
        device=device,
        amp=amp,
        workers=workers,
        seed=seed,
    )
    result = run_pretrain(config, resume=resume, overwrite=overwrite, log=log, progress=lambda desc, total: progress_bar(desc)(total))
    out.print(result.line(), highlight=False)


@commands.command("train")
def train(
    chips: ChipFolder,
    out_dir: Annotated[Path, typer.Option("--out", help="Run folder: model.pt, last.pt, metrics.json, training_curves.png.")],
    labels: Annotated[
        Optional[Path],
        typer.Option(
            "--labels", help="labels.parquet (classes from labels.json beside it) or a dense labels.csv. Default: CHIPS/labels.parquet."
        ),
    ] = None,
    backbone: Annotated[str, typer.Option(help=" or ".join(options.BACKBONES) + ".")] = options.BACKBONE,
    weights: Annotated[
        Optional[str],
        typer.Option(
            help="Pretrained backbone: 'imagenet' (torchvision's, from the torch cache, downloaded once) or a ResNet checkpoint "
            "file (torchvision, timm, TorchGeo, MoCo, Lightning layouts; its fc head is skipped). Without it: from scratch."
        ),
    ] = None,
    chip_size: Annotated[int, typer.Option("--chip-size", help="Chips are resized to this many pixels square.")] = options.CHIP_SIZE,
    epochs: Annotated[
        Optional[int],
        typer.Option(help=f"Epochs in all (default {options.EPOCHS}; with --resume: the run's own, or extend it to this many)."),
    ] = None,
    batch_size: BatchSize = options.BATCH_SIZE,
    lr: Annotated[float, typer.Option(help="Adam learning rate of the head (cosine schedule per step).")] = options.LR,
    backbone_lr_factor: Annotated[
        float, typer.Option("--backbone-lr-factor", help="Backbone learning rate = LR × this, once unfrozen.")
    ] = options.BACKBONE_LR_FACTOR,
    freeze_epochs: Annotated[
        Optional[int], typer.Option("--freeze-epochs", help="Epochs with the backbone frozen (default: 1 with --weights, 0 without).")
    ] = None,
    pos_weight: Annotated[
        bool, typer.Option("--pos-weight", help="Weight positives by negatives/positives per class (capped at 50) for rare labels.")
    ] = False,
    threshold: Annotated[
        float, typer.Option(help="Sigmoid threshold of the fixed-threshold metrics (tuned per class as well).")
    ] = options.THRESHOLD,
    val_fraction: Annotated[
        float, typer.Option("--val-fraction", help="Validation share when the labels carry no split.")
    ] = options.VAL_FRACTION,
    device: TorchDevice = options.DEVICE,
    amp: Annotated[bool, typer.Option("--amp", help="Mixed precision (float16) on CUDA.")] = False,
    workers: LoaderWorkers = options.TRAIN_WORKERS,
    seed: Seed = 0,
    deterministic: Annotated[
        bool,
        typer.Option(
            "--deterministic",
            help="On CUDA, deterministic kernels only (slower; adaptive pooling's backward has none and warns). "
            "Default: cuDNN's fastest algorithms. CPU runs are deterministic either way.",
        ),
    ] = False,
    resume: Resume = False,
    overwrite: Overwrite = False,
) -> None:
    """Train the multilabel ResNet (frozen backbone first, then fine-tuned) on chips and their labels.

    A run already in --out is kept unless --overwrite (or continued with --resume).
    """
    from imagesim.errors import InvalidArgumentError

    if resume and overwrite:
        raise InvalidArgumentError("--resume and --overwrite exclude each other")
    require_torch()
    from imagesim.learn.train import TrainConfig, run_train

    config = TrainConfig(
        chips=str(chips),
        labels=str(labels if labels is not None else chips / "labels.parquet"),
        out=str(out_dir),
        backbone=backbone,
        weights=weights or None,
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
        deterministic=deterministic,
    )
    result = run_train(
        config,
        resume=resume,
        overwrite=overwrite,
        log=log,
        progress=lambda desc, total: progress_bar(desc)(total),
    )
    out.print(result.line(), highlight=False)


@commands.command("export")
def export(
    model: Annotated[
        Path,
        typer.Option(
            "--model",
            help="Trained model: RUN/model.pt from `imagesim train`; or a pretrained backbone, RUN/backbone.pt from `imagesim pretrain` "
            "(exported without a head: `embedding` output only, no classes).",
        ),
    ],
    out_path: Annotated[Path, typer.Option("--out", help="ONNX file to write (e.g. model.onnx).")],
    opset: Annotated[int, typer.Option(help="ONNX opset.")] = options.OPSET,
    fp16: Annotated[bool, typer.Option("--fp16", help="Half-precision weights and compute (for GPUs; parity tolerance 5e-2).")] = False,
    chip_size: Annotated[
        Optional[int], typer.Option("--chip-size", help="Input size in pixels (default: the size the model was trained at).")
    ] = None,
    normalize: Annotated[
        bool, typer.Option("--normalize/--no-normalize", help="L2-normalise the embedding output (cosine similarity = inner product).")
    ] = True,
    parity_chips: Annotated[
        Optional[Path], typer.Option("--chips", help="Chips for the parity check (default: the model's training chips).")
    ] = None,
    overwrite: Overwrite = False,
) -> None:
    """Export a trained model to ONNX (uint8 NHWC input, `embedding` + `logits` outputs; a pretrained backbone: `embedding` only), checked against PyTorch."""
    from imagesim.learn.export import ExportSettings, export_onnx

    settings = ExportSettings(
        opset=opset, fp16=fp16, chip_size=chip_size, normalize=normalize, overwrite=overwrite, parity_chips=parity_chips
    )
    with err.status(f"exporting {model}"):
        summary = export_onnx(model, out_path, settings)
    out.print(summary.line(), highlight=False)


@commands.command("encode")
def encode(
    onnx: Annotated[Path, typer.Option("--onnx", help="Model from `imagesim export`.")],
    chips: Chips,
    nodata_index: NodataIndex = None,
    out_path: Annotated[
        Optional[str],
        typer.Option(
            "--out",
            help="Embeddings Parquet, local or in a store (default: CHIPS/embeddings.parquet; a .json summary is written beside it).",
        ),
    ] = None,
    batch_size: BatchSize = options.ENCODE_BATCH,
    provider: Annotated[
        str, typer.Option(help=f"{', '.join(options.ENCODE_PROVIDERS)}: auto is CUDA when a GPU is present, else CPU.")
    ] = options.PROVIDER,
    proc: Proc = options.PROC_ALL,
    include_nodata: Annotated[
        bool, typer.Option("--include-nodata", help="Also encode chips classed no_data (skipped by default).")
    ] = False,
    max_cloud: MaxCloud = None,
    nodata_threshold: Annotated[
        int,
        typer.Option(
            "--nodata-threshold",
            help="A pixel is no-data when every band is <= this: each chip's no-data pixels are filled with the mean of its valid "
            "pixels before encoding (so partial chips are matched by their data, not their border), and its valid_fraction is recorded.",
        ),
    ] = options.ENCODE_NODATA_THRESHOLD,
    keep_nodata: Annotated[
        bool,
        typer.Option("--keep-nodata", help="Encode chips as decoded: no-data pixels not filled, no valid_fraction (the old behaviour)."),
    ] = False,
    overwrite: Overwrite = False,
    scheduler: Scheduler = None,
) -> None:
    """Encode every chip into an embedding (+ predicted labels) with an exported ONNX model; resumable.

    Chips already encoded with this model are skipped unless --overwrite.
    """
    from imagesim.learn.encode import EncodeSettings, run_encode

    settings = EncodeSettings(
        out=out_path,
        batch_size=batch_size,
        provider=provider,
        proc=proc,
        nodata_index=nodata_index,
        include_nodata=include_nodata,
        overwrite=overwrite,
        max_cloud=max_cloud,
        nodata_threshold=None if keep_nodata else nodata_threshold,
    )
    summary = run_encode(onnx, chips, settings, progress=progress_bar("encode"), log=log, scheduler=scheduler)
    for _chip, msg in summary.failed[:10]:
        err.print(f"[red]failed[/] {escape(msg)}", highlight=False)
    if len(summary.failed) > 10:
        err.print(f"[red]… {len(summary.failed) - 10} more failed chips (see {summary.out.with_suffix('.json')})[/]")
    out.print(summary.line(), highlight=False)
    if not (summary.encoded or summary.skipped or summary.failed):
        from imagesim.errors import EncodeError

        if summary.excluded and summary.cloudy:
            why = (
                f"{summary.excluded} chips are no_data (--include-nodata encodes them) "
                f"and {summary.cloudy} cloudier than --max-cloud {max_cloud}"
            )
        elif summary.excluded:
            why = f"all {summary.excluded} chips are no_data (--include-nodata encodes them)"
        elif summary.cloudy:
            why = f"all {summary.cloudy} chips are cloudier than --max-cloud {max_cloud}"
        else:
            why = "its chip manifest lists no chip (run `imagesim chip` first)"
        raise EncodeError(f"no chip to encode in --chips {chips}: {why}")
    if summary.skipped and not (summary.encoded or summary.failed):
        err.print(f"nothing to do: all {summary.skipped} chips were already encoded with this model (--overwrite encodes them again)")
    out.print(f"embeddings: {summary.out}  summary: {summary.out.with_suffix('.json')}", highlight=False)
    if summary.failed:
        raise typer.Exit(code=1)
