"""`imagesim osm …`: fetch, import and inventory OSM data per level-12 cell.

A group of its own (``commands.app``, also ``osm_app``). Heavy imports stay inside the commands so
`imagesim --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from imagesim import options
from imagesim.cli._common import ArdPath, Commands, Overwrite, Zones, err, escape, out, progress_bar, running_flags

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


def _no_cells(ard_path: str, zones: list[int] | None, bbox: str | None, verb: str | None) -> Exception:
    """The one-line error when there is no cell to work on: what was found, and what to give instead
    (raised in a command, its `ard_path` shows as --ard-path)."""
    from imagesim.errors import ArdLayoutError
    from imagesim.imagery.ard import folder_hint
    from imagesim.labels.cells import find_cells

    if bbox is not None:
        return ArdLayoutError(f"no level-12 cell of --zone {zones[0] if zones else '?'} covers --bbox {bbox}: is it in that UTM zone?")
    if zones:
        every = find_cells(ard_path)
        if every:
            there = ", ".join(str(z) for z in sorted({c.zone for c in every}))
            return ArdLayoutError(
                f"none of the {len(every)} cell folders under {ard_path} is in --zone {' '.join(map(str, zones))} (zone {there} there)"
            )
    hint = folder_hint(ard_path)
    return ArdLayoutError(
        hint
        or f"no <zone>/<12-digit quadkey> cell folders under {ard_path}: give --ard-path the ARD delivery root"
        + (f", or --bbox and --zone to {verb} by area" if verb else "")
    )


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
    max_wait: Annotated[
        float,
        typer.Option(
            "--max-wait",
            help="Seconds per cell in all (attempts, retries and waits for a slot); then the cell fails and the run goes on.",
        ),
    ] = options.OVERPASS_MAX_WAIT,
    no_status: Annotated[bool, typer.Option("--no-status", help="Do not read /api/status to wait for a free slot.")] = False,
    overwrite: Overwrite = False,
) -> None:
    """Query Overpass for each cell's tagged nodes, ways and relations and write <cell>/osm_data.json.

    Cells that already have a valid osm_data.json are skipped unless --overwrite.
    """
    from imagesim.labels.overpass import OverpassClient, OverpassSettings, fetch_cells

    settings = OverpassSettings(endpoint=endpoint, timeout=timeout, max_retries=max_retries, max_wait=max_wait, use_status=not no_status)
    root, cells = _cells(ard_path, zones, bbox)
    if not cells:
        raise _no_cells(ard_path, zones, bbox, "fetch")
    client = OverpassClient(settings, log=lambda msg: err.print(f"[dim]{escape(msg)}[/]", highlight=False))
    bar = progress_bar("osm fetch")(len(cells))
    try:
        summary = fetch_cells(cells, root, client, overwrite=overwrite, progress=bar.update)
    finally:
        bar.close()
    for cell, msg in summary.failed:
        err.print(f"[red]failed[/] {cell.zone}/{cell.quadkey}: {escape(running_flags(msg))}", highlight=False)
    if summary.stopped:
        err.print(f"[yellow]{escape(summary.stopped)}[/]", highlight=False)
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
        raise _no_cells(ard_path, zones, bbox, "import")
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
    if summary.nothing_done:
        from imagesim.errors import OsmImportError

        n = len(summary.uncovered) + len(summary.kept)
        names = ", ".join(f"{c.zone}/{c.quadkey}" for c in [*summary.uncovered, *summary.kept][:3]) + (" …" if n > 3 else "")
        raise OsmImportError(
            f"{osm_file} has no data inside any of the {n} cells ({names}); nothing written: "
            "is it the extract of this area, and --zone the delivery's UTM zone?"
        )
    for cell in summary.uncovered[:10]:
        err.print(f"[yellow]not covered by the extract, not written:[/] {cell.zone}/{cell.quadkey}", highlight=False)
    for cell in summary.kept[:10]:
        err.print(f"[yellow]no data in the extract, kept the file there:[/] {cell.zone}/{cell.quadkey}", highlight=False)
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
    if inv.nothing_found and not (element and inv.files):
        from imagesim.errors import ImagesimFileNotFoundError, OsmDataError

        if inv.cells == 0:
            raise _no_cells(ard_path, zones, None, None)
        fix = "run `imagesim osm fetch` or `imagesim osm import` first"
        if inv.files == 0 and not inv.bad_files:
            raise ImagesimFileNotFoundError(
                f"no osm_data.json in any of the {inv.cells} cell folders under {ard_path} (<zone>/<12-digit quadkey>/osm_data.json): {fix}"
            )
        if inv.files == 0:
            raise OsmDataError(
                f"all {len(inv.bad_files)} osm_data.json files under {ard_path} are unusable (see above): {fix} with --overwrite"
            )
        raise OsmDataError(
            f"the {inv.files} osm_data.json files under {ard_path} hold no tagged element: {fix} with --overwrite, "
            "from an extract (or --endpoint) that covers these cells"
        )
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
    if inv.nothing_found:
        err.print(f"no {element} elements in the {inv.files} osm_data.json files (the other kinds hold the tags)", highlight=False)
    out.print(
        f"osm tags: {inv.files} files, {inv.elements} elements, {len(inv.key_totals())} keys; "
        f"{len(inv.bad_files)} files skipped; Parquet: {dest}",
        highlight=False,
    )
    if inv.bad_files:
        raise typer.Exit(code=1)
