"""`imagesim sample-data`, `imagesim chip`, `imagesim nodata-index` and `imagesim masks`: deliveries to chips.

The imagery stage is imported inside each command, so `imagesim --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from imagesim import options
from imagesim.cli import imagery_run
from imagesim.cli._common import (
    ArdPath,
    Chips,
    Commands,
    MinNodataPixels,
    NodataThreshold,
    Overwrite,
    Proc,
    Quality,
    Scheduler,
    Zones,
    err,
    escape,
    out,
    progress_bar,
)

commands = Commands()
register = commands.register


@commands.command("sample-data")
def sample_data(
    dest: Annotated[Path, typer.Argument(help="Folder to write the sample delivery into.")],
    seed: Annotated[int, typer.Option(help="Random seed; the same seed writes the same files.")] = 0,
    small: Annotated[bool, typer.Option("--small", help="Imagery over a small part of each cell only (fast, for tests).")] = False,
    compression: Annotated[str, typer.Option(help="COG compression: jpeg (like ARD) or deflate (lossless).")] = "jpeg",
    overwrite: Overwrite = False,
) -> None:
    """Write a realistic ARD delivery (COGs, metadata, data masks), its OpenStreetMap data and the ground truth of the changes planted in the later acquisition."""
    from imagesim.imagery.sample import write_sample

    summary = write_sample(
        dest, seed=seed, small=small, compression=compression, overwrite=overwrite, progress=lambda m: err.print(m, markup=False)
    )
    out.print(f"ARD delivery: {summary.root}  ({len(summary.cogs)} COGs, cells {', '.join(summary.cells)}, zone {summary.zone})")
    out.print(f"OpenStreetMap: {summary.osm_pbf}")
    out.print(f"Change truth: {summary.changes_truth}  ({summary.planted} planted changes)", markup=False)


@commands.command("chip")
def chip(
    ard_path: ArdPath,
    dest: Annotated[
        str,
        typer.Option(
            "--dest",
            help="Output folder or object-store prefix (s3://bucket/chips): DEST/<zone>/Z<zone>-<quadkey>_<catalog-id>.jpg plus chips.parquet.",
        ),
    ],
    zoom: Annotated[int, typer.Option(help="Chip zoom {}..{} (17 = 512 px, 156.25 m chips).".format(*options.ZOOM_RANGE))] = options.ZOOM,
    proc: Proc = options.PROC_ALL,
    quality: Quality = options.JPEG_QUALITY,
    passthrough: Annotated[
        bool, typer.Option("--passthrough", help="Copy JPEG tiles out without re-encoding when a chip is exactly one internal tile.")
    ] = False,
    nodata_threshold: NodataThreshold = options.NODATA_THRESHOLD,
    min_nodata_pixels: MinNodataPixels = options.MIN_NODATA_PIXELS,
    zones: Zones = None,
    quadkeys: Annotated[
        Optional[list[str]], typer.Option("--quadkey", help="Only cells with this quadkey prefix, up to 12 digits (repeatable).")
    ] = None,
    catalog_ids: Annotated[Optional[list[str]], typer.Option("--catalog-id", help="Only this acquisition (repeatable).")] = None,
    overwrite: Overwrite = False,
    skip_empty: Annotated[
        bool, typer.Option("--skip-empty", help="Do not write chips that are entirely no-data (still listed in chips.parquet).")
    ] = False,
    measure: Annotated[
        bool,
        typer.Option(
            "--measure/--no-measure",
            help="Count no-data pixels of every chip. --no-measure with --passthrough skips the decode that measuring costs (no-data columns left empty for copied chips; run nodata-index later).",
        ),
    ] = True,
    scheduler: Scheduler = None,
) -> None:
    """Cut every ARD `-visual.tif` into JPEG chips on the quadkey grid and record chips.parquet.

    Chips already written are skipped unless --overwrite.
    """
    imagery_run.chip(**locals())  # every parameter, by name


@commands.command(
    "nodata-index",
    # the original tool's names, still accepted
    aliases={"--chip-dir": "--chips", "--threshold": "--nodata-threshold", "--min-pixels": "--min-nodata-pixels"},
)
def nodata_index(
    chip_dir: Annotated[
        str,
        typer.Option(
            "--chips",
            help="Folder or object-store prefix of chips (searched recursively): the DEST of `imagesim chip`, or one zone's folder.",
        ),
    ],
    filename: Annotated[str, typer.Option(help="Index file name, written in CHIPS (or an absolute path).")] = "nodata-index.json",
    overwrite: Annotated[
        bool, typer.Option("--overwrite/--no-overwrite", help="Replace an existing index (default: overwrite, as the original tool did).")
    ] = True,
    proc: Proc = options.PROC_ALL,
    nodata_threshold: NodataThreshold = options.NODATA_THRESHOLD,
    min_nodata_pixels: MinNodataPixels = options.MIN_NODATA_PIXELS,
    source: Annotated[
        Optional[str],
        typer.Option(
            help="pixels (decode every chip), manifest (chips.parquet counts from the COG) or mask (ARD data-mask.gpkg). Default: manifest when CHIPS has one, else pixels."
        ),
    ] = None,
    ard_path: Annotated[
        Optional[str],
        typer.Option(
            "--ard-path", help="ARD root (folder or object-store URL), to find data masks for --source mask when chips.parquet is absent."
        ),
    ] = None,
    scheduler: Scheduler = None,
) -> None:
    """Classify every chip as all_data, partial_data or no_data (JSON index + nodata.parquet)."""
    imagery_run.nodata_index(**locals())  # every parameter, by name


@commands.command("masks")
def masks(
    chip_dir: Chips,
    ard_path: ArdPath,
    scheduler: Scheduler = None,
) -> None:
    """Fill chips.parquet's cloud, shadow, water and vegetation fractions from the ARD masks.

    For chip folders cut before masks were read (`imagesim chip` fills them as it chips): per chip, the
    share of its valid (data-mask) area under each `<catalog-id>-*-mask.gpkg`, exact from the polygons.
    """
    from imagesim.imagery.masks import run_masks

    summary = run_masks(chip_dir, ard_path, progress=progress_bar("masks"), scheduler=scheduler)
    for where in summary.missing[:10]:
        err.print(f"[yellow]not under the ARD path[/] {where} (its chips keep their values)")
    for where, msg in summary.failed[:10]:
        err.print(f"[red]failed[/] {where}: {escape(msg)}")
    imagery_run.print_mask_notes(summary.notes, "the lines above")
    out.print(summary.line(), soft_wrap=True)
    if summary.updated == 0:
        err.print(f"[red]nothing updated:[/] {escape(summary.why_nothing())}", soft_wrap=True)
        raise typer.Exit(code=1)
    out.print(f"{summary.cloudy:,} chips with cloud_fraction > {options.MAX_CLOUD} (`labels build --max-cloud` leaves them out)")
    out.print(f"manifest: {summary.dest / 'chips.parquet'}")
    if summary.failed:
        raise typer.Exit(code=1)
