"""OpenStreetMap data per level-12 ARD cell: the shared parts of `imagesim osm`.

Each cell gets ``<ard>/<zone>/<qk12>/osm_data.json`` = ``{"quadkey", "nodes", "ways", "relations"}``:
tagged elements only, in the element shape of an Overpass ``out geom`` answer. Two producers write
it, :mod:`imagesim.labels.overpass` (online) and :mod:`imagesim.labels.osm_import` (a ``.osm.pbf`` extract);
this module has what both need (cells, their WGS84 boxes, validation) and the tag inventory.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from imagesim import grid, options
from imagesim.artefacts import OSM_DATA
from imagesim.errors import ArdLayoutError, ImagesimFileNotFoundError, InvalidArgumentError, OsmDataError
from imagesim.storage import AnyPath, StorePath, location

ELEMENT_KEYS = {"node": "nodes", "way": "ways", "relation": "relations"}
# ASCII classes (`\d` takes "１０" and "١٠" too) and `\Z` (`$` lets a trailing newline through)
_ZONE = re.compile(r"^[0-9]{1,2}\Z")
_CELL = re.compile(r"^[0-3]{12}\Z")


class Cell(NamedTuple):
    zone: int
    quadkey: str

    def folder(self, root: str | AnyPath) -> AnyPath:
        return location(root) / str(self.zone) / self.quadkey

    def osm_path(self, root: str | AnyPath) -> AnyPath:
        return self.folder(root) / OSM_DATA


class BBox(NamedTuple):
    """A WGS84 box in degrees."""

    west: float
    south: float
    east: float
    north: float

    def overpass(self) -> str:
        """Overpass QL ``(south,west,north,east)``."""
        return f"{self.south:.7f},{self.west:.7f},{self.north:.7f},{self.east:.7f}"

    def intersects(self, w: float, s: float, e: float, n: float) -> bool:
        return w <= self.east and e >= self.west and s <= self.north and n >= self.south


# --------------------------------------------------------------------------------------------
# Cells
# --------------------------------------------------------------------------------------------


def find_cells(root: str | AnyPath, zones: Iterable[int] | None = None) -> list[Cell]:
    """The ``<root>/<zone>/<qk12>`` cell folders, sorted (a cell needs no COG to be listed)."""
    root = location(root)
    if isinstance(root, StorePath):
        return _cells_in_store(root, set(zones or []))
    if not root.exists():
        raise ImagesimFileNotFoundError(f"{root}: ARD path does not exist")
    if not root.is_dir():
        raise ArdLayoutError(f"{root}: ARD path is not a directory")
    zones = set(zones or [])
    for z in zones:
        _check_zone(z, "zones")
    # Like `imagesim chip`, accept the zone folder itself as the ARD path.
    zone_dirs = [root] if _is_zone_folder(root) else sorted(p for p in root.iterdir() if p.is_dir())
    cells = []
    for zdir in zone_dirs:
        if not _ZONE.match(zdir.name) or not 1 <= int(zdir.name) <= 60:
            continue
        zone = int(zdir.name)
        if zones and zone not in zones:
            continue
        cells += [Cell(zone, c.name) for c in sorted(zdir.iterdir()) if c.is_dir() and _CELL.match(c.name)]
    return sorted(cells)


def _cells_in_store(root: StorePath, zones: set[int]) -> list[Cell]:
    """Cells of a delivery in a store: the ``<zone>/<qk12>/`` prefixes that hold objects."""
    for z in zones:
        _check_zone(z, "zones")
    found: set[Cell] = set()
    zone_prefix = _is_zone_folder(root)
    for path, _, _ in root.files():
        parts = path.relative_to(root).split("/")
        if zone_prefix:
            parts = [root.name, *parts]
        if len(parts) < 3 or not _ZONE.match(parts[0]) or not 1 <= int(parts[0]) <= 60 or not _CELL.match(parts[1]):
            continue
        if not zones or int(parts[0]) in zones:
            found.add(Cell(int(parts[0]), parts[1]))
    return sorted(found)


def ard_base(root: str | AnyPath) -> AnyPath:
    """The folder holding the zone folders (``root``, or its parent when ``root`` is a zone folder)."""
    root = location(root)
    return root.parent if _is_zone_folder(root) else root


def _is_zone_folder(path: AnyPath) -> bool:
    if isinstance(path, StorePath):  # a zone prefix: its objects sit under 12-digit cell prefixes
        if not _ZONE.match(path.name):
            return False
        first = [p for p, _, _ in path.files(limit=1)]
        return bool(first) and _CELL.match(first[0].relative_to(path).split("/")[0]) is not None
    if not _ZONE.match(path.name) or not path.is_dir():
        return False
    return any(c.is_dir() and _CELL.match(c.name) for c in path.iterdir())


def _check_zone(zone: int, name: str = "zone") -> None:
    options.check_range(name, zone, *options.UTM_ZONE_RANGE, what="a UTM zone")


def cell_bbox(cell: Cell, densify: int = 8) -> BBox:
    """WGS84 box containing the whole UTM square of a cell.

    All four corners and points along the edges are transformed: UTM squares are not lat/lon
    rectangles, so the corners alone can miss a bulging edge by a few metres.
    """
    from pyproj import Transformer

    w, s, e, n = grid.bounds(cell.quadkey)
    tr = Transformer.from_crs(grid.epsg(cell.quadkey, cell.zone), 4326, always_xy=True)
    ts = [i / densify for i in range(densify + 1)]
    xs = [w + t * (e - w) for t in ts] * 2 + [w] * len(ts) + [e] * len(ts)
    ys = [s] * len(ts) + [n] * len(ts) + [s + t * (n - s) for t in ts] * 2
    lon, lat = tr.transform(xs, ys)
    return BBox(min(lon), min(lat), max(lon), max(lat))


def cells_covering(bbox: BBox, zone: int) -> list[Cell]:
    """Every level-12 cell of ``zone`` whose square intersects a WGS84 box."""
    from pyproj import Transformer

    _check_zone(zone)
    w, s, e, n = bbox
    if not (-180 <= w < e <= 180 and -90 <= s < n <= 90):
        raise InvalidArgumentError(
            f"`bbox` {w},{s},{e},{n}: give WEST,SOUTH,EAST,NORTH in degrees, west < east, south < north", param="bbox"
        )
    # The northern CRS gives negative northings south of the equator: exactly the quadtree's y,
    # so one transform serves both hemispheres (the southern shift is only a false northing).
    tr = Transformer.from_crs(4326, 32600 + zone, always_xy=True)
    k = 16
    lons = [w + (e - w) * i / k for i in range(k + 1)]
    lats = [s + (n - s) * i / k for i in range(k + 1)]
    pts = [(x, s) for x in lons] + [(x, n) for x in lons] + [(w, y) for y in lats] + [(e, y) for y in lats]
    xs, ys = tr.transform([p[0] for p in pts], [p[1] for p in pts])
    x0 = math.floor((min(xs) - grid.ORIGIN_X) / grid.CELL_SIZE)
    x1 = math.floor((max(xs) - grid.ORIGIN_X) / grid.CELL_SIZE)
    y0 = math.floor((grid.ORIGIN_Y - max(ys)) / grid.CELL_SIZE)
    y1 = math.floor((grid.ORIGIN_Y - min(ys)) / grid.CELL_SIZE)
    n_tiles = 1 << 12
    cells = []
    for y in range(max(y0, 0), min(y1, n_tiles - 1) + 1):
        for x in range(max(x0, 0), min(x1, n_tiles - 1) + 1):
            cells.append(Cell(zone, grid.tile_to_quadkey((x, y, 12))))
    return cells


def parse_bbox(bbox: str) -> BBox:
    """A ``WEST,SOUTH,EAST,NORTH`` text (degrees) as a :class:`BBox`."""
    try:
        parts = [float(p) for p in bbox.split(",")]
    except ValueError:
        parts = []
    if len(parts) != 4:
        raise InvalidArgumentError(f"`bbox` {bbox!r}: give WEST,SOUTH,EAST,NORTH in degrees", param="bbox")
    return BBox(*parts)


# --------------------------------------------------------------------------------------------
# osm_data.json
# --------------------------------------------------------------------------------------------


def split_elements(quadkey: str, elements: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """``{"quadkey", "nodes", "ways", "relations"}`` from Overpass elements, tagged ones only."""
    out: dict[str, Any] = {"quadkey": quadkey, "nodes": [], "ways": [], "relations": []}
    for el in elements:
        key = ELEMENT_KEYS.get(el.get("type"))  # type: ignore[arg-type]
        if key and el.get("tags"):
            out[key].append(el)
    return out


def check_osm_data(data: Any, quadkey: str, where: str = OSM_DATA) -> None:
    """Raise OsmDataError unless ``data`` is a per-cell OSM document for ``quadkey``."""
    if not isinstance(data, dict):
        raise OsmDataError(f"{where}: not a JSON object")
    if data.get("quadkey") != quadkey:
        raise OsmDataError(f"{where}: quadkey {data.get('quadkey')!r}, expected {quadkey!r}")
    for kind, key in ELEMENT_KEYS.items():
        items = data.get(key)
        if not isinstance(items, list):
            raise OsmDataError(f"{where}: {key!r} is missing or not a list")
        for el in items:
            if not isinstance(el, dict) or el.get("type") != kind or not isinstance(el.get("id"), int):
                raise OsmDataError(f"{where}: {key!r} holds something that is not a {kind} element")


def is_valid_file(path: AnyPath, quadkey: str) -> bool:
    """Whether ``path`` holds a complete, valid ``osm_data.json`` for ``quadkey`` (resume check)."""
    try:
        check_osm_data(json.loads(location(path).read_text()), quadkey, str(path))
    except (OSError, ValueError):
        return False
    return True


# --------------------------------------------------------------------------------------------
# Tag inventory (the original `build_tag_map`)
# --------------------------------------------------------------------------------------------


@dataclass
class TagInventory:
    cells: int = 0  # cell folders looked in
    files: int = 0  # osm_data.json files read
    elements: int = 0  # distinct (type, id) counted
    bad_files: list[tuple[AnyPath, str]] = field(default_factory=list)
    # (key, value) -> count per element type
    counts: dict[str, Counter] = field(default_factory=lambda: {k: Counter() for k in ELEMENT_KEYS})

    @property
    def nothing_found(self) -> bool:
        """No element counted: no cell folder, no readable ``osm_data.json``, or only empty ones."""
        return self.elements == 0

    def rows(self) -> list[dict[str, Any]]:
        """One row per (key, value), most frequent first."""
        keys = set().union(*self.counts.values())
        rows = []
        for k, v in keys:
            per = {kind: self.counts[kind][(k, v)] for kind in ELEMENT_KEYS}
            rows.append(
                {"key": k, "value": v, "count": sum(per.values()), "nodes": per["node"], "ways": per["way"], "relations": per["relation"]}
            )
        rows.sort(key=lambda r: (-r["count"], r["key"], r["value"]))
        return rows

    def key_totals(self) -> list[tuple[str, int, int]]:
        """``(key, element count, distinct values)``, most frequent key first."""
        total: Counter = Counter()
        values: Counter = Counter()
        for c in self.counts.values():
            for (k, _v), n in c.items():
                total[k] += n
        for k, _v in set().union(*self.counts.values()):
            values[k] += 1
        return sorted(((k, n, values[k]) for k, n in total.items()), key=lambda t: (-t[1], t[0]))


def tag_inventory(root: str | AnyPath, element: str | None = None, zones: Iterable[int] | None = None) -> TagInventory:
    """Key/value counts over every ``osm_data.json`` of the ARD tree.

    An element found in several cells (they overlap at the edges, and big areas span many) is
    counted once. ``element`` limits it to ``node``, ``way`` or ``relation``.
    """
    if element is not None:
        options.check_choice("element", element, options.OSM_ELEMENTS)
    base = ard_base(root)
    inv = TagInventory()
    seen: set[tuple[str, int]] = set()
    cells = find_cells(root, zones)
    inv.cells = len(cells)
    for cell in cells:
        path = cell.osm_path(base)
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text())
            check_osm_data(data, cell.quadkey, str(path))
        except (OSError, ValueError) as exc:
            inv.bad_files.append((path, str(exc)))
            continue
        inv.files += 1
        for kind, key in ELEMENT_KEYS.items():
            if element and kind != element:
                continue
            counter = inv.counts[kind]
            for el in data[key]:
                ident = (kind, el["id"])
                if ident in seen:
                    continue
                seen.add(ident)
                inv.elements += 1
                for k, v in (el.get("tags") or {}).items():
                    counter[(k, str(v))] += 1
    return inv


def write_tag_parquet(inv: TagInventory, path: str | AnyPath) -> None:
    import polars as pl

    from imagesim.fsutil import write_with

    schema = {"key": pl.Utf8, "value": pl.Utf8, "count": pl.Int64, "nodes": pl.Int64, "ways": pl.Int64, "relations": pl.Int64}
    df = pl.DataFrame(inv.rows(), schema=schema)
    write_with(path, lambda tmp: df.write_parquet(tmp))
