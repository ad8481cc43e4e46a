"""The `imagesim` command line (Typer).

Errors print one line and exit with code 1; set ``IMAGESIM_DEBUG=1`` for the full traceback.
Heavy dependencies are imported inside the command that needs them so `imagesim --help` is fast.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from imagesim.errors import ImagesimError

app = typer.Typer(
    name="imagesim",
    help="Maxar ARD deliveries to chips, OSM labels, embeddings and similar-place search.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
err = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)


def _progress_bar(description: str):
    """A rich progress bar factory for `run_chip` and friends."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    class Bar:
        def __init__(self, total: int) -> None:
            self.progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=err,
                transient=False,
                disable=not err.is_terminal and os.environ.get("IMAGESIM_PROGRESS") != "1",
            )
            self.task = self.progress.add_task(description, total=total)
            self.progress.start()

        def update(self, done: int) -> None:
            self.progress.update(self.task, completed=done)

        def close(self) -> None:
            self.progress.stop()

    return Bar


@app.command("sample-data")
def sample_data(
    dest: Annotated[Path, typer.Argument(help="Folder to write the sample delivery into.")],
    seed: Annotated[int, typer.Option(help="Random seed; the same seed writes the same files.")] = 0,
    small: Annotated[bool, typer.Option("--small", help="Imagery over a small part of each cell only (fast, for tests).")] = False,
    compression: Annotated[str, typer.Option(help="COG compression: jpeg (like ARD) or deflate (lossless).")] = "jpeg",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing sample in DEST.")] = False,
) -> None:
    """Write a realistic ARD delivery (COGs, metadata, data masks) and its OpenStreetMap data."""
    from imagesim.imagery.sample import write_sample

    summary = write_sample(dest, seed=seed, small=small, compression=compression, overwrite=overwrite, progress=lambda m: err.print(m))
    out.print(f"ARD delivery: {summary.root}  ({len(summary.cogs)} COGs, cells {', '.join(summary.cells)}, zone {summary.zone})")
    out.print(f"OpenStreetMap: {summary.osm_pbf}")


@app.command("chip")
def chip(
    ard_path: Annotated[str, typer.Option("--ard-path", help="Root of the ARD delivery (<zone>/<quadkey>/<date>/<catid>-visual.tif): a folder, or an object-store URL (s3://, gs://, az://, https://) read with range requests.")],
    dest: Annotated[str, typer.Option("--dest", help="Output folder or object-store prefix (s3://bucket/chips): DEST/<zone>/Z<zone>-<quadkey>_<catid>.jpg plus chips.parquet.")],
    zoom: Annotated[int, typer.Option(help="Chip zoom 12..20 (17 = 512 px, 156.25 m chips).")] = 17,
    proc: Annotated[int, typer.Option(help="Worker threads (0 = all cores).")] = 0,
    quality: Annotated[int, typer.Option(help="JPEG quality of re-encoded chips.")] = 90,
    passthrough: Annotated[bool, typer.Option("--passthrough", help="Copy JPEG tiles out without re-encoding when a chip is exactly one internal tile.")] = False,
    nodata_threshold: Annotated[int, typer.Option(help="A pixel is no-data when every band is <= this (raise to 2-8 to tolerate JPEG noise).")] = 0,
    min_nodata_pixels: Annotated[int, typer.Option(help="No-data pixels from which a chip counts as partial_data.")] = 16,
    zone: Annotated[Optional[list[int]], typer.Option(help="Only this UTM zone (repeatable).")] = None,
    quadkey: Annotated[Optional[list[str]], typer.Option(help="Only cells with this quadkey prefix, up to 12 digits (repeatable).")] = None,
    catalog_id: Annotated[Optional[list[str]], typer.Option("--catalog-id", help="Only this acquisition (repeatable).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Rewrite chips that already exist (default: skip them).")] = False,
    skip_empty: Annotated[bool, typer.Option("--skip-empty", help="Do not write chips that are entirely no-data (still listed in chips.parquet).")] = False,
    measure: Annotated[bool, typer.Option("--measure/--no-measure", help="Count no-data pixels of every chip. --no-measure with --passthrough skips the decode that measuring costs (no-data columns left empty for copied chips; run nodata-index later).")] = True,
    scheduler: Annotated[Optional[str], typer.Option(envvar="IMAGESIM_SCHEDULER", help="Dask scheduler address tcp://HOST:PORT, or 'local' for a LocalCluster on this machine; default: in-process Rust threads.")] = None,
) -> None:
    """Cut every ARD `-visual.tif` into JPEG chips on the quadkey grid and record chips.parquet."""
    from imagesim.imagery.chip import ChipSettings, run_chip

    settings = ChipSettings(
        zoom=zoom,
        quality=quality,
        passthrough=passthrough,
        nodata_threshold=nodata_threshold,
        min_nodata_pixels=min_nodata_pixels,
        overwrite=overwrite,
        skip_empty=skip_empty,
        measure=measure,
        proc=proc,
    )
    summary = run_chip(ard_path, dest, settings, zones=zone, quadkeys=quadkey, catalog_ids=catalog_id, progress=_progress_bar("chip"), scheduler=scheduler)
    for m in summary.misplaced:
        err.print(f"[yellow]ignored[/] {m.path}: {m.reason}")
    for cog in summary.stale_cogs:
        err.print(f"[yellow]changed since its chips were cut, chips rewritten:[/] {cog}")
    for cog, msg in summary.failed_cogs:
        err.print(f"[red]failed[/] {msg}")
    if summary.cogs == 0:
        err.print(f"[yellow]no -visual.tif found under {ard_path} matching the filters[/]")
    out.print(summary.line(), soft_wrap=True)
    out.print(f"chips: {summary.dest}  manifest: {summary.dest / 'chips.parquet'}  errors: {summary.dest / 'chip-errors.json'}", soft_wrap=True)
    if summary.failed_cogs or summary.failed_chips:
        raise typer.Exit(code=1)


@app.command("nodata-index")
def nodata_index(
    chip_dir: Annotated[str, typer.Option("--chip-dir", help="Folder or object-store prefix of chips (searched recursively), e.g. the DEST of `imagesim chip`.")],
    filename: Annotated[str, typer.Option(help="Index file name, written in CHIP_DIR (or an absolute path).")] = "nodata-index.json",
    overwrite: Annotated[bool, typer.Option("--overwrite/--no-overwrite", help="Replace an existing index (default: overwrite, as the original tool did).")] = True,
    proc: Annotated[int, typer.Option(help="Worker threads for --source pixels (0 = all cores).")] = 0,
    threshold: Annotated[int, typer.Option(help="A pixel is no-data when all bands are <= T (2-8 tolerates JPEG noise at no-data edges).")] = 0,
    min_pixels: Annotated[int, typer.Option(help="No-data pixels from which a chip is partial_data (fewer: all_data).")] = 16,
    source: Annotated[Optional[str], typer.Option(help="pixels (decode every chip), manifest (chips.parquet counts from the COG) or mask (ARD data-mask.gpkg). Default: manifest when CHIP_DIR has one, else pixels.")] = None,
    ard_path: Annotated[Optional[str], typer.Option("--ard-path", help="ARD root (folder or object-store URL), to find data masks for --source mask when chips.parquet is absent.")] = None,
    scheduler: Annotated[Optional[str], typer.Option(envvar="IMAGESIM_SCHEDULER", help="Dask scheduler address tcp://HOST:PORT, or 'local' for a LocalCluster on this machine; default: in-process Rust threads.")] = None,
) -> None:
    """Classify every chip as all_data, partial_data or no_data (JSON index + nodata.parquet)."""
    from imagesim.imagery.nodata import NodataSettings, run_nodata_index

    settings = NodataSettings(
        filename=filename, overwrite=overwrite, proc=proc, threshold=threshold, min_pixels=min_pixels, source=source, ard_path=ard_path
    )
    summary = run_nodata_index(chip_dir, settings, progress=_progress_bar("nodata"), scheduler=scheduler)
    for path in summary.skipped[:10]:
        err.print(f"[yellow]skipped (not a JPEG)[/] {path}")
    if len(summary.skipped) > 10:
        err.print(f"[yellow]… {len(summary.skipped) - 10} more non-JPEG files skipped[/]")
    for path, msg in summary.failed[:10]:
        err.print(f"[red]failed[/] {msg}")
    out.print(summary.line())
    out.print(f"index: {summary.index}  per-chip: {summary.parquet}  summary: {summary.summary}")
    if summary.failed:
        raise typer.Exit(code=1)


def _register_subcommands() -> None:
    from imagesim.cli.labels import labels_app
    from imagesim.cli.osm import osm_app

    app.add_typer(osm_app, name="osm")
    app.add_typer(labels_app, name="labels")

    from imagesim.cli.train import register as register_train

    register_train(app)

    from imagesim.cli.encode import register as register_encode

    register_encode(app)

    from imagesim.cli.index import register as register_index

    register_index(app)

    from imagesim.cli.serve import register as register_serve

    register_serve(app)


_register_subcommands()


def main() -> None:
    """Entry point: run the app, turning imagesim errors into one line and exit code 1."""
    debug = os.environ.get("IMAGESIM_DEBUG", "") not in ("", "0")
    try:
        app()
    except ImagesimError as exc:
        if debug:
            raise
        err.print(f"[red]error:[/] {exc}", highlight=False)
        sys.exit(1)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    except Exception as exc:  # a bug: still one line unless debugging
        if debug:
            raise
        err.print(f"[red]error:[/] {type(exc).__name__}: {exc} (set IMAGESIM_DEBUG=1 for the traceback)", highlight=False)
        sys.exit(1)


if __name__ == "__main__":
    main()
