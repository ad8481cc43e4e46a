"""`imagesim sample-data`, `imagesim chip`, `imagesim nodata-index` and `imagesim masks`: deliveries to chips.

The imagery stage is imported inside each command, so `imagesim --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from imagesim import options
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
    say,
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
    summary = run_chip(
        ard_path,
        dest,
        settings,
        zones=zones,
        quadkeys=quadkeys,
        catalog_ids=catalog_ids,
        progress=progress_bar("chip"),
        scheduler=scheduler,
    )
    for m in summary.misplaced[:10]:
        err.print(f"[yellow]ignored[/] {escape(str(m.path))}: {escape(m.reason)}")
    if len(summary.misplaced) > 10:
        err.print(f"[yellow]… {len(summary.misplaced) - 10} more -visual.tif ignored (see {summary.dest / 'chip-errors.json'})[/]")
    if summary.cogs == 0:
        # nothing to chip: say why and what to give instead, and name no chips.parquet (none was written)
        from imagesim.errors import ArdLayoutError
        from imagesim.imagery.ard import explain_nothing_found

        raise ArdLayoutError(explain_nothing_found(ard_path, summary.misplaced, zones=zones, quadkeys=quadkeys, catalog_ids=catalog_ids))
    for cog in summary.stale_cogs:
        err.print(f"[yellow]changed since its chips were cut, chips rewritten:[/] {cog}")
    for _cog, msg in summary.failed_cogs:
        err.print(f"[red]failed[/] {escape(msg)}")
    _print_mask_notes(summary.mask_notes, summary.dest / "chip-errors.json")
    if summary.skipped and not (summary.processed or summary.failed_chips or summary.failed_cogs):
        say(
            f"nothing to do: all {summary.skipped} chips of the {summary.cogs} COG(s) were already written (--overwrite redoes them)",
            stderr=True,
        )
    # the usual lines written plainly: rich would cost start-up (and read markup in paths)
    say(summary.line())
    say(f"chips: {summary.dest}  manifest: {summary.dest / 'chips.parquet'}  errors: {summary.dest / 'chip-errors.json'}")
    if summary.failed_cogs or summary.failed_chips:
        raise typer.Exit(code=1)


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
    from imagesim.imagery.nodata import NodataSettings, run_nodata_index

    settings = NodataSettings(
        filename=filename,
        overwrite=overwrite,
        proc=proc,
        nodata_threshold=nodata_threshold,
        min_nodata_pixels=min_nodata_pixels,
        source=source,
        ard_path=ard_path,
    )
    summary = run_nodata_index(chip_dir, settings, progress=progress_bar("nodata"), scheduler=scheduler)
    for path in summary.skipped[:10]:
        err.print(f"[yellow]skipped (not a JPEG)[/] {path}")
    if len(summary.skipped) > 10:
        err.print(f"[yellow]… {len(summary.skipped) - 10} more non-JPEG files skipped[/]")
    for _path, msg in summary.failed[:10]:
        err.print(f"[red]failed[/] {escape(msg)}")
    say(summary.line())
    if summary.chips == 0:
        from imagesim.errors import ImagesimFileNotFoundError

        others = f" ({len(summary.skipped)} other files)" if summary.skipped else ""
        raise ImagesimFileNotFoundError(
            f"no JPEG chip (.jpg) under {chip_dir}{others}: give --chips the DEST of `imagesim chip` (or one zone's folder of it)"
        )
    say(f"index: {summary.index}  per-chip: {summary.parquet}  summary: {summary.summary}")
    if summary.failed:
        raise typer.Exit(code=1)


def _print_mask_notes(notes: list, report: object) -> None:
    """The first mask notes (unreadable, reprojected, repaired, not overlapping), the rest counted."""
    for note in notes[:10]:
        colour = "red" if note.failed else "yellow"
        err.print(f"[{colour}]mask[/] {escape(note.line())}", soft_wrap=True)
    if len(notes) > 10:
        err.print(f"[yellow]… {len(notes) - 10} more mask notes (see {report})[/]")


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
    _print_mask_notes(summary.notes, "the lines above")
    out.print(summary.line(), soft_wrap=True)
    if summary.updated == 0:
        err.print(f"[red]nothing updated:[/] {escape(summary.why_nothing())}", soft_wrap=True)
        raise typer.Exit(code=1)
    out.print(f"{summary.cloudy:,} chips with cloud_fraction > {options.MAX_CLOUD} (`labels build --max-cloud` leaves them out)")
    out.print(f"manifest: {summary.dest / 'chips.parquet'}")
    if summary.failed:
        raise typer.Exit(code=1)
