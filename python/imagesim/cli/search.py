"""`imagesim index`, `imagesim similar` and `imagesim serve`: embeddings to a nearest-neighbour index,
queries against it, and the map viewer.

faiss, pyproj, FastAPI and uvicorn are imported inside the commands, so `imagesim --help` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from imagesim import options
from imagesim.cli._common import ArdPath, ChipFolder, Command, Commands, MaxCloud, Overwrite, Quality, err, out, progress_bar

commands = Commands()
register = commands.register


@commands.command("index")
def index(
    embeddings: Annotated[Path, typer.Option("--embeddings", help="embeddings.parquet written by `imagesim encode`.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Index folder: index.faiss, ids.parquet, index.json.")],
    kind: Annotated[
        str,
        typer.Option(
            help="auto (exact flat up to --flat-max vectors, IVF above, compressed ivfpq above --ivfpq-min), flat, ivf, hnsw or ivfpq."
        ),
    ] = options.INDEX_KIND,
    flat_max: Annotated[int, typer.Option("--flat-max", help="auto: the largest set indexed exactly.")] = options.FLAT_MAX,
    ivfpq_min: Annotated[
        int, typer.Option("--ivfpq-min", help="auto: above this many vectors, the compressed ivfpq index (built by streaming).")
    ] = options.IVFPQ_MIN,
    rerank: Annotated[
        int,
        typer.Option(
            "--rerank",
            help="ivfpq: PQ candidates re-scored exactly per query from a float16 copy of the vectors "
            "(vectors.f16.npy, 1 KB per 512-d vector); 0: no copy, PQ scores.",
        ),
    ] = options.IVFPQ_RERANK,
    overwrite: Overwrite = False,
) -> None:
    """Build a nearest-neighbour index (FAISS, cosine) over chip embeddings."""
    from imagesim.search.index import build_index

    summary = build_index(
        embeddings,
        out_dir,
        kind=kind,
        overwrite=overwrite,
        flat_max=flat_max,
        ivfpq_min=ivfpq_min,
        rerank=rerank,
        progress=progress_bar("index"),
    )
    out.print(summary.line(), highlight=False)


def _print_table(result, index_dir: Path) -> None:
    from rich.table import Table

    table = Table(
        title=f"chips most similar to {' + '.join(result.positives)}" + (f" − {' − '.join(result.negatives)}" if result.negatives else ""),
        title_justify="left",
    )
    # the chip name carries the zone and the quadkey; --json has them as fields
    table.add_column("rank", justify="right", min_width=4)
    table.add_column("score", justify="right", min_width=6)
    table.add_column("chip", overflow="fold")
    table.add_column("lon", justify="right", min_width=10)
    table.add_column("lat", justify="right", min_width=8)
    table.add_column("labels", overflow="fold", min_width=12)
    clouds = any(h.cloud_fraction is not None for h in result.hits)
    if clouds:
        table.add_column("cloud", justify="right", min_width=5)
    valid = any(h.valid_fraction is not None for h in result.hits)
    if valid:
        table.add_column("valid", justify="right", min_width=5)
    for h in result.hits:
        cells = [str(h.rank), f"{h.score:.4f}", h.chip, f"{h.lon:.5f}", f"{h.lat:.5f}", ", ".join(h.labels)]
        if clouds:
            cells.append("–" if h.cloud_fraction is None else f"{h.cloud_fraction:.0%}")
        if valid:
            cells.append("–" if h.valid_fraction is None else f"{h.valid_fraction:.0%}")
        table.add_row(*cells)
    out.print(table)
    if result.cloudy:
        err.print(f"{result.cloudy:,} chips with cloud_fraction > {result.max_cloud} left out", highlight=False)
    if result.low_valid:
        err.print(f"{result.low_valid:,} chips with valid_fraction < {result.min_valid} left out (--min-valid)", highlight=False)


@commands.command("similar")
def similar(
    positives: Annotated[
        Optional[list[str]],
        typer.Argument(
            help="Chip file names (Z10-<quadkey>_<catalog-id>.jpg) or chip quadkeys (all acquisitions averaged): the positive examples.",
            metavar="CHIP_OR_QUADKEY...",
            show_default=False,
        ),
    ] = None,
    negatives: Annotated[
        Optional[list[str]], typer.Option("--negative", help="A negative example (repeatable): query = mean(positives) − mean(negatives).")
    ] = None,
    k: Annotated[int, typer.Option("--k", help="Number of results, {:,}..{:,}.".format(*options.K_RANGE))] = options.K,
    index_dir: Annotated[Path, typer.Option("--index", help="Index folder written by `imagesim index`.")] = Path("index"),
    exclude_same_cell: Annotated[
        bool, typer.Option("--exclude-same-cell", help="Leave out chips in the level-12 cells of the positives.")
    ] = False,
    max_cloud: MaxCloud = None,
    min_valid: Annotated[
        float,
        typer.Option(
            "--min-valid",
            min=0.0,
            max=1.0,
            help="Leave out chips with less than this share of valid (not no-data) pixels, as measured by `imagesim encode` "
            "(chips without one are kept; 0 keeps all).",
        ),
    ] = options.MIN_VALID,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    geojson: Annotated[
        Optional[Path], typer.Option("--geojson", help="Also write the results' chip footprints as a GeoJSON FeatureCollection (WGS84).")
    ] = None,
    evaluate: Annotated[
        bool, typer.Option("--evaluate", help="Instead of a query: precision@k of the index against --labels, and the random baseline.")
    ] = False,
    labels: Annotated[Optional[Path], typer.Option("--labels", help="With --evaluate: labels.parquet (labels.json beside it).")] = None,
    sample: Annotated[
        int, typer.Option("--sample", help="With --evaluate: chips evaluated (random sample; 0 = all).")
    ] = options.EVAL_SAMPLE,
    seed: Annotated[int, typer.Option(help="With --evaluate: seed of the sample.")] = 0,
) -> None:
    """Find the chips most similar to example chips or quadkeys (or, with --evaluate, measure precision@k)."""
    from imagesim.errors import InvalidArgumentError
    from imagesim.search.similar import check_k

    check_k(k)
    if evaluate:
        if labels is None:
            raise InvalidArgumentError("--evaluate needs --labels DEST/labels.parquet")
        if positives or negatives or geojson:
            raise InvalidArgumentError("--evaluate takes no chips, --negative or --geojson")
        from imagesim.search.similar import precision_at_k

        res = precision_at_k(index_dir, labels, k, sample=sample, seed=seed)
        if as_json:
            typer.echo(json.dumps(res.to_json(), indent=2))
        else:
            out.print(res.line(), highlight=False)
        return
    if not positives:
        raise InvalidArgumentError("name at least one chip or quadkey (or use --evaluate --labels FILE)")

    from imagesim.search.index import load_index
    from imagesim.search.similar import similar as run_similar
    from imagesim.search.similar import write_geojson

    loaded = load_index(index_dir)
    result = run_similar(
        loaded, list(positives), list(negatives or []), k=k, exclude_same_cell=exclude_same_cell, max_cloud=max_cloud, min_valid=min_valid
    )
    if result.nothing_found:
        from imagesim.errors import ImagesimError

        left_out = "quadkeys and level-12 cells (--exclude-same-cell)" if exclude_same_cell else "quadkeys"
        if result.cloudy:
            left_out += f", or cloudier than --max-cloud {max_cloud} ({result.cloudy:,})"
        if result.low_valid:
            left_out += f", or less valid than --min-valid {min_valid} ({result.low_valid:,})"
        fix = (
            "index more chips"
            + (", or leave out --exclude-same-cell" if exclude_same_cell else "")
            + (", or raise --max-cloud" if result.cloudy else "")
            + (", or lower --min-valid" if result.low_valid else "")
        )
        raise ImagesimError(f"no results: all {result.indexed} chips of the index {index_dir} are in the examples' {left_out}: {fix}")
    if geojson is not None:
        write_geojson(geojson, result)
    if as_json:
        typer.echo(json.dumps(result.to_json(), indent=2))
    else:
        _print_table(result, index_dir)
    if geojson is not None:
        err.print(f"{len(result.hits)} footprints → {geojson}", highlight=False)


class _BareDissolve(Command):
    """`--dissolve` alone (at the end, or before another flag) means every class: ``--dissolve=*``."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        args = list(args)
        for i, arg in enumerate(args):
            if arg == "--":
                break
            if arg == "--dissolve" and (i + 1 == len(args) or args[i + 1].startswith("-")):
                args[i] = "--dissolve=*"
        return super().parse_args(ctx, args)


@commands.command("classmap", cls=_BareDissolve)
def classmap(
    embeddings: Annotated[
        Path, typer.Option("--embeddings", help="embeddings.parquet written by `imagesim encode` (embeddings.json beside it).")
    ],
    out_file: Annotated[
        Path, typer.Option("--out", help="The layer: .parquet (GeoParquet), .gpkg (GeoPackage) or .geojson/.json (GeoJSON), WGS84.")
    ],
    dissolve: Annotated[
        Optional[str],
        typer.Option(
            "--dissolve",
            metavar="[CLASS,...]",
            help="Merge neighbouring chips predicted as the same class into regions (these classes; alone: every class).",
        ),
    ] = None,
    min_probability: Annotated[
        Optional[float], typer.Option("--min-probability", help="Count a class as predicted only with at least this probability (0..1).")
    ] = None,
    acquisitions: Annotated[
        str, typer.Option(help="Several acquisitions of one quadkey: latest, mean (of the probabilities) or all.")
    ] = options.CLASSMAP_ACQUISITIONS[0],
    overwrite: Overwrite = False,
) -> None:
    """Write a map of the predicted classes: chip polygons with their class probabilities (for QGIS)."""
    from imagesim.search.classmap import classmap as run_classmap

    summary = run_classmap(
        embeddings, out_file, dissolve=dissolve, min_probability=min_probability, acquisitions=acquisitions, overwrite=overwrite
    )
    out.print(summary.line(), highlight=False)


@commands.command("serve")
def serve(
    ard_path: ArdPath,
    chips: ChipFolder,
    index: Annotated[Optional[Path], typer.Option("--index", help="Index folder from `imagesim index` (similar-chip queries).")] = None,
    host: Annotated[str, typer.Option(help="Address to bind; the default serves this machine only.")] = options.SERVE_HOST,
    port: Annotated[int, typer.Option(help="TCP port.")] = options.SERVE_PORT,
    workers: Annotated[int, typer.Option(help="Server processes (each loads the index and its own tile cache).")] = options.SERVE_WORKERS,
    block_cache_mb: Annotated[
        int, typer.Option("--block-cache-mb", help="Decoded COG blocks kept in memory per process (MiB; 0: none).")
    ] = options.BLOCK_CACHE_MB,
    cog_cache: Annotated[int, typer.Option("--cog-cache", help="Open COG headers kept per process.")] = options.COG_CACHE,
    quality: Quality = options.TILE_QUALITY,
    cors_origins: Annotated[
        Optional[str],
        typer.Option(
            "--cors",
            metavar="ORIGIN[,ORIGIN…]",
            help="Let pages on these origins (http://localhost:8888, comma-separated; * for any) read tiles, TileJSON and the API (CORS), e.g. notebook maps.",
        ),
    ] = None,
    basemap: Annotated[
        Optional[str],
        typer.Option(
            "--basemap",
            metavar="URL_TEMPLATE",
            help="An XYZ tile URL drawn under the imagery, e.g. https://tile.openstreetmap.org/{z}/{x}/{y}.png (none by default: the page loads nothing from other hosts).",
        ),
    ] = None,
    basemap_attribution: Annotated[
        Optional[str],
        typer.Option("--basemap-attribution", metavar="TEXT", help="The basemap's attribution, shown on the map (plain text)."),
    ] = None,
    changes: Annotated[
        Optional[Path],
        typer.Option(
            "--changes",
            metavar="FILE",
            help="changes.parquet written by `imagesim change`: a change layer on the map and a before/after view of its chips.",
        ),
    ] = None,
) -> None:
    """Serve a map of the imagery with the chip grid and similar-chip search (web page, XYZ tiles, JSON API).

    Tiles are read from the COGs under --ard-path, thumbnails from --chips; --changes adds the change layer.
    """
    import os

    from imagesim.errors import require
    from imagesim.search.serve.tiles import check_render_settings

    options.check_range("port", port, *options.SERVE_PORT_RANGE)
    options.check_range("workers", workers, *options.SERVE_WORKERS_RANGE)
    check_render_settings(block_cache_mb, cog_cache, quality)
    uvicorn = require("uvicorn", "serve", purpose="`imagesim serve`")

    import sys

    from imagesim.search.serve.app import allowed_hosts_for, create_app, parse_basemap, parse_cors_origins
    from imagesim.storage import location

    cors = parse_cors_origins(cors_origins)
    base_map = parse_basemap(basemap, basemap_attribution)

    # build the app here first: a bad path or index fails now with one line, not in a worker
    app = create_app(
        ard_path,
        chips,
        index,
        block_cache_mb=block_cache_mb if workers == 1 else 0,
        cog_cache=cog_cache,
        quality=quality,
        allowed_hosts=allowed_hosts_for(host),
        cors_origins=cors,
        basemap=basemap,
        basemap_attribution=basemap_attribution,
        changes=changes,
    )
    if host not in ("127.0.0.1", "localhost", "::1") and not host.startswith("127."):
        err.print(f"[yellow]warning:[/] binding {host}: the viewer is reachable from other machines (no authentication)", highlight=False)
    url_host = f"[{host}]" if ":" in host else host
    err.print(f"imagesim viewer on http://{url_host}:{port}/  (Ctrl-C stops it)", highlight=False)
    if cors:
        err.print(f"CORS: pages on {', '.join(cors)} may read tiles, TileJSON and the API", highlight=False, markup=False)
    if base_map is not None:
        err.print(f"basemap: {base_map.url} ({base_map.attribution})", highlight=False, markup=False)
    if app.state.changes is not None:
        err.print(f"changes: {app.state.changes.table.height:,} from {changes}", highlight=False, markup=False)
    log_level = "info" if os.environ.get("IMAGESIM_DEBUG") else "warning"
    if workers == 1:
        uvicorn.run(app, host=host, port=port, log_level=log_level, server_header=False)
        return
    # several processes: uvicorn's own command line runs them (each builds the app from the environment)
    env = dict(
        os.environ,
        IMAGESIM_SERVE_ARD=str(location(ard_path).resolve()),
        IMAGESIM_SERVE_CHIPS=str(chips.resolve()),
        IMAGESIM_SERVE_INDEX=str(index.resolve()) if index else "",
        IMAGESIM_SERVE_BLOCK_CACHE_MB=str(block_cache_mb),
        IMAGESIM_SERVE_COG_CACHE=str(cog_cache),
        IMAGESIM_SERVE_QUALITY=str(quality),
        IMAGESIM_SERVE_HOST=host,
        IMAGESIM_SERVE_CORS=",".join(cors),
        IMAGESIM_SERVE_BASEMAP=basemap or "",
        IMAGESIM_SERVE_BASEMAP_ATTRIBUTION=basemap_attribution or "",
        IMAGESIM_SERVE_CHANGES=str(changes.resolve()) if changes else "",
    )
    del app
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(
        sys.executable,
        [
            sys.executable,
            "-m",
            "uvicorn",
            "imagesim.search.serve.app:app_from_env",
            "--factory",
            "--host",
            host,
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--log-level",
            log_level,
            "--no-server-header",
        ],
        env,
    )


@commands.command("stac")
def stac(
    chips: ChipFolder,
    out_dir: Annotated[Path, typer.Option("--out", help="Catalog folder (catalog.json, one folder per collection and item).")],
    ard_path: Annotated[
        Optional[str], typer.Option("--ard-path", help="ARD delivery root: finds the source COG of chips whose manifest lacks it.")
    ] = None,
    granularity: Annotated[
        str, typer.Option(help="acquisition: one Item per cell and acquisition, one asset per chip; chip: one Item per chip.")
    ] = options.STAC_GRANULARITY,
    labels: Annotated[Optional[Path], typer.Option("--labels", help="labels.parquet (default: CHIPS/labels.parquet if present).")] = None,
    embeddings: Annotated[
        Optional[Path], typer.Option("--embeddings", help="embeddings.parquet (default: CHIPS/embeddings.parquet if present).")
    ] = None,
    overwrite: Overwrite = False,
) -> None:
    """Write a static STAC catalog of the chips: a collection per delivery zone, items linking chips to their COGs."""
    from imagesim.search.stac import write_stac

    summary = write_stac(
        chips, out_dir, ard_path=ard_path, granularity=granularity, labels=labels, embeddings=embeddings, overwrite=overwrite
    )
    out.print(summary.line(), highlight=False)
