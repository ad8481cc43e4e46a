"""`imagesim osm …`: fetch, import and inventory OSM data per level-12 cell.

A group of its own (``commands.app``, also ``osm_app``). Heavy imports stay inside the commands so
`imagesim --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from imagesim import options
from imagesim.cli._common import ArdPath, Commands, Overwrite, Zones, err, out, progress_bar

commands = Commands("osm", help="OpenStreetMap data per level-12 cell: fetch from Overpass, import a .osm.pbf, list tags.")
register = commands.register
osm_app = commands.app

Bbox = Annotated[
    Optional[str],
    typer.Option(
        "--bbox", help="WEST,SOUTH,EAST,NORTH (degrees): every cell of --zone (exactly one) covering it, instead of the cell folders."
    ),
]


def _cells(ard_path: str, zones: list[int] | None, bbox: str | None):
    from imagesim.errors import InvalidArgumentError
    from imagesim.labels.cells import ard_base, cells_covering, find_cells, parse_bbox
    from imagesim.storage import location

    if bbox is None:
        return ard_base(ard_path), find_cells(ard_path, zones)
    if not zones or len(zones) != 1:
        raise InvalidArgumentError("--bbox needs exactly one --zone: the UTM zone whose level-12 cells cover the box")
    location(ard_path).mkdir(parents=True, exist_ok=True)
    return ard_base(ard_path), cells_covering(parse_bbox(bbox), zones[0])


@commands.command("fetch")
def fetch(
    ard_path: ArdPath,
    zones: Zones = None,
    bbox: Bbox = None,
    endpoint: Annotated[str, typer.Option(help="Overpass interpreter URL (private instances welcome).")] = options.OVERPASS_ENDPOINT,
    timeout: Annotated[
        int, typer.Option(help="Server-side query timeout in seconds ([timeout:]); the HTTP wait is this plus 60 s.")
    ] = options.OVERPASS_TIMEOUT,
    max_retries: Annotated[
        int,
        typer.Option("--max-retries", help="Retries per cell after the first attempt (429/503/504, timeouts, cut-off or failed answers)."),
    ] = options.OVERPASS_MAX_RETRIES,
    no_status: Annotated[bool, typer.Option("--no-status", help="Do not read /api/status to wait for a free slot.")] = False,
    overwrite: Overwrite = False,
) -> None:
    """Query Overpass for each cell's tagged nodes, ways and relations and write <cell>/osm_data.json.

    Cells that already have a valid osm_data.json are skipped unless --overwrite.
    """
    from imagesim.labels.overpass import OverpassClient, OverpassSettings, fetch_cells

    settings = OverpassSettings(endpoint=endpoint, timeout=timeout, max_retries=max_retries, use_status=not no_status)
    root, cells = _cells(ard_path, zones, bbox)
    if not cells:
        err.print(f"[yellow]no level-12 cell folders under {ard_path}[/] (give --bbox and --zone to fetch by area)")
        return
    client = OverpassClient(settings, log=lambda msg: err.print(f"[dim]{escape(msg)}[/]", highlight=False))
    bar = progress_bar("osm fetch")(len(cells))
    try:
        summary = fetch_cells(cells, root, client, overwrite=overwrite, progress=bar.update)
    finally:
        bar.close()
    for cell, msg in summary.failed:
        err.print(f"[red]failed[/] {cell.zone}/{cell.quadkey}: {escape(msg)}", highlight=False)
    out.print(summary.line(), highlight=False)
    if summary.failed:
        raise typer.Exit(code=1)


@commands.command("import")
def import_(
    osm_file: Annotated[Path, typer.Argument(help="OSM extract: .osm.pbf (Geofabrik), .osm, .osm.bz2 or .osm.gz.")],
    ard_path: ArdPath,
    zones: Zones = None,
    bbox: Bbox = None,
    overwrite: Overwrite = False,
    node_index: Annotated[
        str, typer.Option("--node-index", help="libosmium node location index: auto, flex_mem, sparse_file_array, dense_file_array …")
    ] = options.OSM_NODE_INDEX,
    fmt: Annotated[
        Optional[str], typer.Option("--format", help="Force the file format (pbf, osm, osm.bz2, osm.gz) when the name does not tell it.")
    ] = None,
) -> None:
    """Write each cell's osm_data.json from an OSM extract, offline, in the Overpass `out geom` shape.

    Cells that already have a valid osm_data.json are skipped unless --overwrite.
    """
    from imagesim.labels.osm_import import import_osm

    root, cells = _cells(ard_path, zones, bbox)
    if not cells:
        err.print(f"[yellow]no level-12 cell folders under {ard_path}[/] (give --bbox and --zone to import by area)")
        return
    with err.status(f"reading {osm_file.name}") as status:
        summary = import_osm(
            osm_file,
            root,
            cells,
            overwrite=overwrite,
            node_index=node_index,
            fmt=fmt,
            progress=lambda n: status.update(f"reading {osm_file.name}: {n:,} objects"),
        )
    if summary.unlocated:
        err.print(f"[yellow]{summary.unlocated} tagged elements have no location in the extract (members outside it) and were left out[/]")
    empty = [c for c, n in summary.written.items() if not (n.nodes or n.ways or n.relations)]
    if empty and len(empty) == len(summary.written):
        err.print(f"[yellow]{osm_file} has no data inside any of the {len(empty)} cells: wrong extract or zone?[/]")
    out.print(summary.line(), highlight=False)


@commands.command("tags")
def tags(
    ard_path: ArdPath,
    element: Annotated[Optional[str], typer.Option(help=f"Count only {', '.join(options.OSM_ELEMENTS)} elements.")] = None,
    zones: Zones = None,
    out_path: Annotated[
        Optional[str],
        typer.Option(
            "--out", help="Parquet file of (key, value, count, nodes, ways, relations), local or in a store; default ARD/osm_tags.parquet."
        ),
    ] = None,
    top: Annotated[int, typer.Option(help="Keys shown on screen (the Parquet has every key and value).")] = 30,
) -> None:
    """Tag inventory (key → value counts) over every osm_data.json, to help choose label classes."""
    from rich.table import Table

    from imagesim.labels.cells import ard_base, tag_inventory, write_tag_parquet

    inv = tag_inventory(ard_path, element=element, zones=zones)
    for _path, msg in inv.bad_files:
        err.print(f"[yellow]skipped[/] {escape(msg)}", highlight=False)
    dest = out_path or ard_base(ard_path) / "osm_tags.parquet"
    write_tag_parquet(inv, dest)
    per_key: dict[str, list[tuple[str, int]]] = {}
    for row in inv.rows():
        per_key.setdefault(row["key"], []).append((row["value"], row["count"]))
    table = Table(title=f"OSM tags: {inv.elements} elements in {inv.files} files")
    table.add_column("key")
    table.add_column("elements", justify="right")
    table.add_column("values", justify="right")
    table.add_column("most common values")
    for key, n, nvalues in inv.key_totals()[:top]:
        common = ", ".join(f"{v} ({c})" for v, c in per_key[key][:5])
        table.add_row(key, str(n), str(nvalues), common)
    out.print(table)
    out.print(
        f"osm tags: {inv.files} files, {inv.elements} elements, {len(inv.key_totals())} keys; "
        f"{len(inv.bad_files)} files skipped; Parquet: {dest}",
        highlight=False,
    )
    if inv.bad_files:
        raise typer.Exit(code=1)
