"""`imagesim change`: what changed between the acquisitions of each place, ranked (after search in the pipeline).

polars, numpy and shapely are imported inside the command, so `imagesim --help` stays fast.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Optional

import typer

from imagesim.cli._common import ChipFolder, Commands, Overwrite, Scheduler, err, escape, log, out, progress_bar

commands = Commands()
register = commands.register

MAX_CLOUD = 0.5  # the pixel method masks clouds exactly; this only leaves out chips mostly under cloud
MIN_COMPARED = 0.5
TOP = 20


def _fmt(value: float | None, spec: str) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


@commands.command("change")
def change(
    chips: ChipFolder,
    embeddings: Annotated[
        Optional[list[Path]],
        typer.Option(
            "--embeddings",
            help="embeddings.parquet of `imagesim encode` (repeatable: one file per acquisition is fine; every file of one model).",
        ),
    ] = None,
    before: Annotated[
        Optional[str], typer.Option("--before", help="The earlier acquisition: a date YYYY-MM-DD or a catalog id (default: each in turn).")
    ] = None,
    after: Annotated[
        Optional[str],
        typer.Option("--after", help="The later acquisition: a date or a catalog id (default: the next acquisition of each place)."),
    ] = None,
    method: Annotated[
        str,
        typer.Option(
            "--method",
            help="embedding (embedding distance, tables only), pixel (radiometrically normalised pixel difference) or both "
            "(a pair ranks high only when both agree).",
        ),
    ] = "both",
    out_path: Annotated[
        Optional[Path], typer.Option("--out", help="GeoParquet of the scored pairs (default: CHIPS/changes.parquet).")
    ] = None,
    geojson: Annotated[Optional[Path], typer.Option("--geojson", help="Also write the --top changes as GeoJSON.")] = None,
    top: Annotated[int, typer.Option("--top", min=1, help="Changes printed and written to --geojson.")] = TOP,
    max_cloud: Annotated[
        Optional[float],
        typer.Option(
            "--max-cloud",
            min=0.0,
            max=1.0,
            help="Leave out pairs where either chip has more than this share under cloud or cloud shadow (ARD masks); the pixel "
            "method also masks clouds and their shadows pixel by pixel.",
        ),
    ] = MAX_CLOUD,
    min_compared: Annotated[
        float,
        typer.Option(
            "--min-compared", min=0.0, max=1.0, help="Leave out pairs with less than this share of the chip valid in both and clear."
        ),
    ] = MIN_COMPARED,
    embedding_weight: Annotated[
        float,
        typer.Option(
            "--embedding-weight",
            min=0.0,
            help="--method both: the embedding method's weight beside the pixel method's (robust z-scores added).",
        ),
    ] = 0.5,
    truth: Annotated[
        Optional[Path],
        typer.Option("--truth", help="Known changes (GeoJSON, e.g. the sample's changes-truth.geojson): print precision, recall and AP."),
    ] = None,
    overwrite: Overwrite = False,
    scheduler: Scheduler = None,
) -> None:
    """Score the change between acquisitions of every place covered twice or more; rank; write GeoParquet.

    Pairs consecutive acquisitions of each chip (or the two named by --before/--after). Clouds, cloud shadows and
    no-data are never compared.
    """
    from imagesim.search.change import ChangeSettings, detect_changes, parse_choice

    settings = ChangeSettings(
        method=method,
        before=parse_choice(before, "--before"),
        after=parse_choice(after, "--after"),
        max_cloud=max_cloud,
        min_compared=min_compared,
        embedding_weight=embedding_weight,
    )
    summary = detect_changes(
        chips,
        embeddings or [],
        settings=settings,
        out=out_path,
        geojson=geojson,
        top=top,
        overwrite=overwrite,
        scheduler=scheduler,
        progress=progress_bar("change"),
        log=lambda m: log(f"pairs: {m}"),
    )
    for line in summary.unreadable[:10]:
        err.print(f"[red]unreadable[/] {escape(line)}", highlight=False)
    for note in summary.notes[:10]:
        err.print(f"[yellow]note[/] {escape(note)}", highlight=False)
    if summary.top is not None:
        from rich.table import Table

        table = Table(title=f"top {summary.top.height} changes", title_justify="left", box=None, padding=(0, 1))
        # catalog ids, zones and chip names are in the output file; the table fits a terminal
        for name in ("rank", "score", "quadkey", "before", "after", "emb", "pixel", "area"):
            table.add_column(name, justify="left" if name in ("quadkey", "before", "after") else "right", no_wrap=True)
        for r in summary.top.iter_rows(named=True):
            table.add_row(
                str(r["rank"]),
                _fmt(r["score"], ".2f"),
                r["quadkey"],
                r["before_date"] or r["before_catalog_id"],
                r["after_date"] or r["after_catalog_id"],
                _fmt(r["embedding_distance"], ".2f"),
                _fmt(r["pixel_change"], ".1f"),
                _fmt(r["changed_area"], ".1%"),
            )
        out.print(table)
    out.print(summary.line(), highlight=False)
    if truth is not None:
        import polars as pl

        from imagesim.search.change.evaluate import evaluate_changes, read_truth

        table_all = pl.read_parquet(summary.out).drop("geometry", "bbox", strict=False)
        report = evaluate_changes(table_all, read_truth(truth))
        out.print(
            f"known changes: {report['known_changes']} areas; {report['changed']} changed chip pairs among {report['pairs']} scored "
            f"({report['ambiguous']} touched by less than {report['min_share']:.0%} left out)",
            highlight=False,
        )
        for m in report["methods"]:
            out.print(
                f"  {m.method:<9} precision@{m.k} {_fmt(m.precision_at_k, '.3f')}  recall@{m.k} {_fmt(m.recall_at_k, '.3f')}  "
                f"AP {_fmt(m.average_precision, '.3f')}  unchanged in top {m.k}: {len(m.false_alarms_in_top_k)}",
                highlight=False,
            )
