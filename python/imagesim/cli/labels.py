"""`imagesim labels …`: build multilabel targets from OSM, report on them, split them.

A group of its own (``commands.app``, also ``labels_app``). Heavy imports stay inside the commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from imagesim import options
from imagesim.cli._common import ArdPath, Chips, Commands, MaxCloud, NodataIndex, Overwrite, err, escape, log, out, progress_bar

commands = Commands("labels", help="Multilabel training data from OSM: build (parquet/bitset/CSV), report (figures), split (by area).")
register = commands.register
labels_app = commands.app

LabelsChips = Annotated[
    Optional[Path], typer.Option("--chips", help="Chips folder holding labels.parquet (and the chip JPEGs, for the report).")
]
LabelsFile = Annotated[Optional[Path], typer.Option("--labels", help="labels.parquet to use (default: CHIPS/labels.parquet).")]


@commands.command("build")
def build(
    ard_path: ArdPath,
    chips: Chips,
    taxonomy: Annotated[
        Optional[Path],
        typer.Option(help="Taxonomy TOML (classes → OSM tag filters and geometry rules); default: the shipped 13-class one."),
    ] = None,
    include: Annotated[
        Optional[list[str]],
        typer.Option(
            help="Also label 'partial' (partial_data) chips, or 'unmeasured' ones (no no-data class). Repeatable. no_data chips are never labelled."
        ),
    ] = None,
    out_dir: Annotated[
        Optional[str],
        typer.Option("--out", help="Folder (or store prefix) for labels.parquet, labels.csv and labels.json (default: CHIPS)."),
    ] = None,
    nodata_index: NodataIndex = None,
    max_cloud: MaxCloud = options.MAX_CLOUD,
    overwrite: Overwrite = False,
) -> None:
    """Label every chip from the OSM features that cover it: labels.parquet (ids + bitset), labels.csv, labels.json.

    The OSM data is read from each cell's osm_data.json under --ard-path. Existing labels are kept
    unless --overwrite (which resets their split).
    """
    from imagesim.labels.build import LabelSettings, build_labels

    settings = LabelSettings(
        taxonomy=taxonomy,
        include=tuple(include or ()),
        out_dir=out_dir,
        nodata_index=nodata_index,
        overwrite=overwrite,
        max_cloud=max_cloud,
    )
    summary = build_labels(chips, ard_path, settings, progress=progress_bar("labels"), log=log)
    for cell in summary.missing_cells:
        err.print(
            f"[yellow]no osm_data.json[/] for cell {cell}: its chips were left out (run `imagesim osm fetch` or `imagesim osm import`)",
            highlight=False,
        )
    for cell, msg in summary.failed_cells:
        err.print(f"[red]failed[/] cell {cell}: {escape(msg)}", highlight=False)
    geo = summary.geometry
    if geo.dropped or geo.repaired:
        dropped = ", ".join(f"{n} {reason} (e.g. {geo.examples[reason]})" for reason, n in geo.dropped.items())
        err.print(f"[yellow]geometry:[/] {geo.repaired} invalid polygons repaired; {dropped or 'none dropped'}", highlight=False)
    if summary.nothing_labelled:
        from imagesim.errors import LabelError

        out.print(summary.line(), highlight=False)
        raise LabelError(summary.why_nothing_labelled())
    if summary.cloud_unknown and summary.max_cloud is not None:
        err.print(
            f"[yellow]no cloud fraction[/] for {summary.cloud_unknown:,} chips (no ARD cloud mask read: `imagesim masks` fills it): "
            "kept whatever their clouds",
            highlight=False,
        )
    for name, n in summary.mask_classes_unknown.items():
        if n:
            err.print(f"[yellow]class {name}[/]: {n:,} chips without its ARD mask fraction (never labelled {name})", highlight=False)
    counts = ", ".join(f"{k} {v}" for k, v in summary.class_counts.items())
    out.print(f"classes (chips): {counts}", highlight=False)
    out.print(summary.line(), highlight=False)
    base = summary.out_dir
    out.print(f"labels: {base / 'labels.parquet'}  dense: {base / 'labels.csv'}  summary: {base / 'labels.json'}", highlight=False)
    if summary.failed:
        raise typer.Exit(code=1)


def _labels_path(chips: Path | None, labels: Path | None) -> Path:
    from imagesim.errors import InvalidArgumentError

    if labels is not None:
        return labels
    if chips is None:
        raise InvalidArgumentError("give --chips DEST (labels in DEST/labels.parquet) or --labels FILE")
    return chips / "labels.parquet"


@commands.command("report")
def report(
    chips: LabelsChips = None,
    labels: LabelsFile = None,
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Report folder (default: next to the labels, labels-report/).")] = None,
    samples: Annotated[int, typer.Option(help="Chips in the sample grid (rare classes first).")] = options.REPORT_SAMPLES,
    seed: Annotated[int, typer.Option(help="Seed for picking sample chips.")] = 0,
) -> None:
    """Per-class counts, cardinality, co-occurrence/correlation heatmaps, sample chips with labels drawn: PNGs + report.md."""
    from imagesim.labels.report import write_report

    summary = write_report(_labels_path(chips, labels), out_dir, samples=samples, seed=seed, chips_dir=chips)
    for f in summary.files:
        out.print(f"  {f}", highlight=False)
    out.print(summary.line(), highlight=False)


@commands.command("split", aliases={"--val": "--val-fraction"})  # --val-fraction, as `imagesim train` calls it
def split(
    chips: LabelsChips = None,
    labels: LabelsFile = None,
    val: Annotated[float, typer.Option("--val-fraction", help="Share of chips for validation.")] = options.SPLIT_VAL,
    seed: Annotated[int, typer.Option(help="Seed for shuffling the groups.")] = 0,
    group_level: Annotated[
        int,
        typer.Option(
            "--group-level", help="Quadkey level of the groups kept on one side: 12 = the 5 km ARD cell, 13 = 2.5 km, 14 = 1.25 km …"
        ),
    ] = options.SPLIT_GROUP_LEVEL,
) -> None:
    """Train/validation split by area (whole quadkey groups), so neighbouring chips do not leak into validation."""
    from imagesim.labels.split import split_labels

    summary = split_labels(_labels_path(chips, labels), val=val, seed=seed, group_level=group_level)
    if abs(summary.val_share - val) > max(0.1, val / 2):
        err.print(
            f"[yellow]validation share {summary.val_share:.1%} is far from {val:.0%}: only {summary.groups} groups at level "
            f"{group_level}; a finer --group-level gives a closer split[/]",
            highlight=False,
        )
    missing = summary.missing_in_val()
    if missing:
        err.print(f"[yellow]no validation chip for: {', '.join(missing)}[/]", highlight=False)
    out.print(summary.line(), highlight=False)
    out.print(f"split column in {summary.path}; {summary.path.parent / 'labels-train.csv'} and labels-val.csv written", highlight=False)
