"""What `imagesim chip` and `imagesim nodata-index` do once their options are read: without typer, so
that the fast path (:mod:`imagesim.cli.fast`) runs them as the typer commands of
:mod:`imagesim.cli.imagery` do (those declare the options, help and defaults, and call these).

A run that fails for some of its inputs exits with code 1 (:class:`SystemExit`) after its summary.
"""

from __future__ import annotations

from imagesim.cli._output import err, escape, progress_bar, say


def chip(
    ard_path: str,
    dest: str,
    zoom: int,
    proc: int,
    quality: int,
    passthrough: bool,
    nodata_threshold: int,
    min_nodata_pixels: int,
    zones: list[int] | None,
    quadkeys: list[str] | None,
    catalog_ids: list[str] | None,
    overwrite: bool,
    skip_empty: bool,
    measure: bool,
    scheduler: str | None,
) -> None:
    """`imagesim chip` (:func:`imagesim.cli.imagery.chip` declares its options)."""
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
    print_mask_notes(summary.mask_notes, summary.dest / "chip-errors.json")
    if summary.skipped and not (summary.processed or summary.failed_chips or summary.failed_cogs):
        say(
            f"nothing to do: all {summary.skipped} chips of the {summary.cogs} COG(s) were already written (--overwrite redoes them)",
            stderr=True,
        )
    # the usual lines written plainly: rich would cost start-up (and read markup in paths)
    say(summary.line())
    say(f"chips: {summary.dest}  manifest: {summary.dest / 'chips.parquet'}  errors: {summary.dest / 'chip-errors.json'}")
    if summary.failed_cogs or summary.failed_chips:
        raise SystemExit(1)


def nodata_index(
    chip_dir: str,
    filename: str,
    overwrite: bool,
    proc: int,
    nodata_threshold: int,
    min_nodata_pixels: int,
    source: str | None,
    ard_path: str | None,
    scheduler: str | None,
) -> None:
    """`imagesim nodata-index` (:func:`imagesim.cli.imagery.nodata_index` declares its options)."""
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
        raise SystemExit(1)


def print_mask_notes(notes: list, report: object) -> None:
    """The first mask notes (unreadable, reprojected, repaired, not overlapping), the rest counted."""
    for note in notes[:10]:
        colour = "red" if note.failed else "yellow"
        err.print(f"[{colour}]mask[/] {escape(note.line())}", soft_wrap=True)
    if len(notes) > 10:
        err.print(f"[yellow]… {len(notes) - 10} more mask notes (see {report})[/]")
