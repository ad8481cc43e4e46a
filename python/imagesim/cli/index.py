"""`imagesim index` and `imagesim similar`: registered on the main app by ``register(app)``.

faiss and pyproj are imported inside the commands, so `imagesim --help` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

err = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)


def index(
    embeddings: Annotated[Path, typer.Option("--embeddings", help="embeddings.parquet written by `imagesim encode`.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Index folder: index.faiss, ids.parquet, index.json.")],
    kind: Annotated[str, typer.Option(help="auto (exact flat up to --flat-max vectors, IVF above), flat, ivf or hnsw.")] = "auto",
    flat_max: Annotated[int, typer.Option("--flat-max", help="auto: the largest set indexed exactly.")] = 100_000,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an index already in --out.")] = False,
) -> None:
    """Build a nearest-neighbour index (FAISS, cosine) over chip embeddings."""
    from imagesim.cli import _progress_bar
    from imagesim.search.index import build_index

    summary = build_index(embeddings, out_dir, kind=kind, overwrite=overwrite, flat_max=flat_max, progress=_progress_bar("index"))
    out.print(summary.line(), highlight=False)


def _print_table(result, index_dir: Path) -> None:  # type: ignore[no-untyped-def]
    from rich.table import Table

    table = Table(title=f"chips most similar to {' + '.join(result.positives)}" + (f" − {' − '.join(result.negatives)}" if result.negatives else ""), title_justify="left")
    # the chip name carries the zone and the quadkey; --json has them as fields
    table.add_column("rank", justify="right", min_width=4)
    table.add_column("score", justify="right", min_width=6)
    table.add_column("chip", overflow="fold")
    table.add_column("lon", justify="right", min_width=10)
    table.add_column("lat", justify="right", min_width=8)
    table.add_column("labels", overflow="fold", min_width=12)
    for h in result.hits:
        table.add_row(str(h.rank), f"{h.score:.4f}", h.chip, f"{h.lon:.5f}", f"{h.lat:.5f}", ", ".join(h.labels))
    out.print(table)
    if not result.hits:
        out.print(f"no results in {index_dir} after the exclusions")


def similar(
    chips: Annotated[Optional[list[str]], typer.Argument(help="Chip file names (Z10-<quadkey>_<catalog-id>.jpg) or chip quadkeys (all acquisitions averaged): the positive examples.", metavar="CHIP_OR_QUADKEY...", show_default=False)] = None,
    negative: Annotated[Optional[list[str]], typer.Option("--negative", help="A negative example (repeatable): query = mean(positives) − mean(negatives).")] = None,
    k: Annotated[int, typer.Option("--k", help="Number of results, 1..10,000.")] = 10,
    index_dir: Annotated[Path, typer.Option("--index", help="Index folder written by `imagesim index`.")] = Path("index"),
    exclude_same_cell: Annotated[bool, typer.Option("--exclude-same-cell", help="Leave out chips in the level-12 cells of the positives.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    geojson: Annotated[Optional[Path], typer.Option("--geojson", help="Also write the results' chip footprints as a GeoJSON FeatureCollection (WGS84).")] = None,
    evaluate: Annotated[bool, typer.Option("--evaluate", help="Instead of a query: precision@k of the index against --labels, and the random baseline.")] = False,
    labels: Annotated[Optional[Path], typer.Option("--labels", help="With --evaluate: labels.parquet (labels.json beside it).")] = None,
    sample: Annotated[int, typer.Option("--sample", help="With --evaluate: chips evaluated (random sample; 0 = all).")] = 2000,
    seed: Annotated[int, typer.Option(help="With --evaluate: seed of the sample.")] = 0,
) -> None:
    """Find the chips most similar to example chips or quadkeys (or, with --evaluate, measure precision@k)."""
    from imagesim.errors import InvalidArgumentError
    from imagesim.search.similar import check_k

    check_k(k)
    if evaluate:
        if labels is None:
            raise InvalidArgumentError("--evaluate needs --labels DEST/labels.parquet")
        if chips or negative or geojson:
            raise InvalidArgumentError("--evaluate takes no chips, --negative or --geojson")
        from imagesim.search.similar import precision_at_k

        res = precision_at_k(index_dir, labels, k, sample=sample, seed=seed)
        if as_json:
            typer.echo(json.dumps(res.to_json(), indent=2))
        else:
            out.print(res.line(), highlight=False)
        return
    if not chips:
        raise InvalidArgumentError("name at least one chip or quadkey (or use --evaluate --labels FILE)")

    from imagesim.search.index import load_index
    from imagesim.search.similar import similar as run_similar
    from imagesim.search.similar import write_geojson

    loaded = load_index(index_dir)
    result = run_similar(loaded, list(chips), list(negative or []), k=k, exclude_same_cell=exclude_same_cell)
    if geojson is not None:
        write_geojson(geojson, result)
    if as_json:
        typer.echo(json.dumps(result.to_json(), indent=2))
    else:
        _print_table(result, index_dir)
    if geojson is not None:
        err.print(f"{len(result.hits)} footprints → {geojson}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add the `index` and `similar` commands to ``app``."""
    app.command("index")(index)
    app.command("similar")(similar)
