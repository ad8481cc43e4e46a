"""`imagesim export` and `imagesim encode`: registered on the main app by :func:`register`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

err = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)


def export(
    model: Annotated[Path, typer.Option("--model", help="Trained model: RUN/model.pt from `imagesim train`.")],
    out_path: Annotated[Path, typer.Option("--out", help="ONNX file to write (e.g. model.onnx).")],
    opset: Annotated[int, typer.Option(help="ONNX opset.")] = 17,
    fp16: Annotated[bool, typer.Option("--fp16", help="Half-precision weights and compute (for GPUs; parity tolerance 5e-2).")] = False,
    chip_size: Annotated[Optional[int], typer.Option("--chip-size", help="Input size in pixels (default: the size the model was trained at).")] = None,
    normalize: Annotated[bool, typer.Option("--normalize/--no-normalize", help="L2-normalise the embedding output (cosine similarity = inner product).")] = True,
    chips: Annotated[Optional[Path], typer.Option("--chips", help="Chips for the parity check (default: the model's training chips).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing file at --out.")] = False,
) -> None:
    """Export a trained model to ONNX (uint8 NHWC input, `embedding` + `logits` outputs), checked against PyTorch."""
    from imagesim.learn.export import ExportSettings, export_onnx

    settings = ExportSettings(opset=opset, fp16=fp16, chip_size=chip_size, normalize=normalize, overwrite=overwrite, parity_chips=chips)
    with err.status(f"exporting {model}"):
        summary = export_onnx(model, out_path, settings)
    out.print(summary.line(), highlight=False)


def encode(
    onnx: Annotated[Path, typer.Option("--onnx", help="Model from `imagesim export`.")],
    chips: Annotated[str, typer.Option("--chips", help="Chips folder or object-store prefix (the DEST of `imagesim chip`, with chips.parquet).")],
    nodata_index: Annotated[Optional[str], typer.Option("--nodata-index", help="nodata.parquet or nodata-index.json (default: CHIPS/nodata.parquet if present, else chips.parquet).")] = None,
    out_path: Annotated[Optional[str], typer.Option("--out", help="Embeddings Parquet, local or in a store (default: CHIPS/embeddings.parquet; a .json summary is written beside it).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Chips per inference batch.")] = 64,
    provider: Annotated[str, typer.Option(help="auto (CUDA when a GPU is present, else CPU), cuda, tensorrt or cpu.")] = "auto",
    proc: Annotated[int, typer.Option(help="JPEG decode threads (0 = all cores).")] = 0,
    include_nodata: Annotated[bool, typer.Option("--include-nodata", help="Also encode chips classed no_data (skipped by default).")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Encode every chip again (default: skip chips already encoded with this model).")] = False,
    scheduler: Annotated[Optional[str], typer.Option(envvar="IMAGESIM_SCHEDULER", help="Dask scheduler address tcp://HOST:PORT, or 'local' for a LocalCluster on this machine; default: in-process (this machine's GPU or CPU).")] = None,
) -> None:
    """Encode every chip into an embedding (+ predicted labels) with an exported ONNX model; resumable."""
    from imagesim.cli import _progress_bar
    from imagesim.learn.encode import EncodeSettings, run_encode

    settings = EncodeSettings(out=out_path, batch_size=batch_size, provider=provider, proc=proc, nodata_index=nodata_index,
                              include_nodata=include_nodata, overwrite=overwrite)
    summary = run_encode(onnx, chips, settings, progress=_progress_bar("encode"), log=lambda m: err.print(m, highlight=False), scheduler=scheduler)
    for chip, msg in summary.failed[:10]:
        err.print(f"[red]failed[/] {msg}", highlight=False)
    if len(summary.failed) > 10:
        err.print(f"[red]… {len(summary.failed) - 10} more failed chips (see {summary.out.with_suffix('.json')})[/]")
    out.print(summary.line(), highlight=False)
    out.print(f"embeddings: {summary.out}  summary: {summary.out.with_suffix('.json')}", highlight=False)
    if summary.failed:
        raise typer.Exit(code=1)


def register(app: typer.Typer) -> None:
    app.command("export")(export)
    app.command("encode")(encode)
