"""`imagesim osm import`: per-cell ``osm_data.json`` from an OSM extract (Geofabrik ``.osm.pbf``).

The output has the element shape of an Overpass ``out geom`` answer, so labels cannot tell the
two sources apart. Memory stays bounded for country-size extracts:

* node locations live in a libosmium location index (``flex_mem`` for small files, an on-disk
  ``sparse_file_array`` for big ones);
* a relations-only pre-scan (libosmium skips node and way blocks; the same two-step read pyosmium
  uses for its own multipolygon assembly) marks the ways that are members of tagged relations;
  the one full pass then keeps only those ways' geometry, in a temporary SQLite file on disk;
* elements are spooled to one temporary file per cell as they stream by, and each
  ``osm_data.json`` is assembled from its spool at the end (atomically, like every output).

An element goes to every cell whose WGS84 box its bounds intersect (nodes: contain it).
"""

from __future__ import annotations

import json
import math
import shutil
import sqlite3
import tempfile
import time
from array import array
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from imagesim import options
from imagesim.errors import ImagesimFileNotFoundError, InvalidArgumentError, OsmImportError
from imagesim.fsutil import write_with
from imagesim.labels.cells import ELEMENT_KEYS, BBox, Cell, cell_bbox, check_osm_data, is_valid_file
from imagesim.storage import AnyPath, location

_FORMATS = (".osm.pbf", ".pbf", ".osm", ".osm.bz2", ".osm.gz", ".osm.xml", ".o5m", ".opl")
_BIG_FILE = 256 * 1024 * 1024  # above this, node locations go to an on-disk index
_MISSING = -(2**31)  # a way node without a location in the extract
_BIN = 0.1  # degrees per bin of the cell lookup (a 5 km cell spans 1-2 bins)


@dataclass
class CellCounts:
    nodes: int = 0
    ways: int = 0
    relations: int = 0


@dataclass
class ImportSummary:
    written: dict[Cell, CellCounts] = field(default_factory=dict)
    skipped: list[Cell] = field(default_factory=list)
    # Cells the extract has no data for, not written: it covers none of the cells asked for, or these
    # lie outside the box its header gives. An empty file would pass as valid and block a later import.
    uncovered: list[Cell] = field(default_factory=list)
    kept: list[Cell] = field(default_factory=list)  # `overwrite`: a file with data kept, the extract has none for it
    objects: int = 0  # OSM objects read in the full pass
    unlocated: int = 0  # tagged elements with no known location (members outside the extract)
    seconds: float = 0.0

    @property
    def nothing_done(self) -> bool:
        """Cells were to be written and none was: the extract has no data inside any of them."""
        return not self.written and bool(self.uncovered or self.kept)

    def line(self) -> str:
        n = sum(c.nodes for c in self.written.values())
        w = sum(c.ways for c in self.written.values())
        r = sum(c.relations for c in self.written.values())
        untouched = f"{len(self.uncovered)} not covered by the extract (not written), " if self.uncovered else ""
        kept = f"{len(self.kept)} kept (the extract has no data for them), " if self.kept else ""
        return (
            f"osm import: {len(self.written)} cells written ({n} nodes, {w} ways, {r} relations), "
            f"{len(self.skipped)} skipped (already present), {untouched}{kept}0 failed; "
            f"{self.objects} tagged or member objects read in {self.seconds:.1f} s"
        )


class CellLookup:
    """Which cells a point or a box touches, by binning the cells' WGS84 boxes on a 0.1° grid."""

    def __init__(self, boxes: list[BBox]) -> None:
        self.boxes = boxes
        self.bins: dict[tuple[int, int], list[int]] = {}
        for i, b in enumerate(boxes):
            for key in self._keys(b.west, b.south, b.east, b.north):
                self.bins.setdefault(key, []).append(i)

    @staticmethod
    def _keys(w: float, s: float, e: float, n: float) -> Iterable[tuple[int, int]]:
        for x in range(math.floor(w / _BIN), math.floor(e / _BIN) + 1):
            for y in range(math.floor(s / _BIN), math.floor(n / _BIN) + 1):
                yield x, y

    def point(self, lon: float, lat: float) -> list[int]:
        cand = self.bins.get((math.floor(lon / _BIN), math.floor(lat / _BIN)))
        if not cand:
            return []
        return [i for i in cand if self.boxes[i].intersects(lon, lat, lon, lat)]

    def box(self, w: float, s: float, e: float, n: float) -> list[int]:
        if (e - w) / _BIN * (n - s) / _BIN > 4 * len(self.bins):  # a huge element: test every cell
            return [i for i, b in enumerate(self.boxes) if b.intersects(w, s, e, n)]
        found: set[int] = set()
        for key in self._keys(w, s, e, n):
            for i in self.bins.get(key, ()):
                if i not in found and self.boxes[i].intersects(w, s, e, n):
                    found.add(i)
        return sorted(found)


class _Spools:
    """One append-only temporary file per cell, with a bounded number of open handles."""

    def __init__(self, folder: Path, n: int, max_open: int = 128) -> None:
        self.paths = [folder / f"cell{i}.jsonl" for i in range(n)]
        self.open: OrderedDict[int, IO[str]] = OrderedDict()
        self.max_open = max_open
        self.counts = [CellCounts() for _ in range(n)]

    def add(self, cells: list[int], kind: str, line: str) -> None:
        for i in cells:
            fh = self.open.pop(i, None)
            if fh is None:
                if len(self.open) >= self.max_open:
                    self.open.popitem(last=False)[1].close()
                fh = self.paths[i].open("a", encoding="utf-8")
            self.open[i] = fh
            fh.write(kind[0] + line + "\n")
            c = self.counts[i]
            setattr(c, kind, getattr(c, kind) + 1)

    def close(self) -> None:
        for fh in self.open.values():
            fh.close()
        self.open.clear()

    def write_cell(self, i: int, quadkey: str, dest: AnyPath) -> None:
        """Assemble ``osm_data.json`` from cell ``i``'s spool: one element per line, valid JSON."""
        spool = self.paths[i]

        def writer(tmp: Path) -> None:
            with tmp.open("w", encoding="utf-8") as out:
                out.write(f'{{"quadkey": {json.dumps(quadkey)}')
                for kind in ("nodes", "ways", "relations"):
                    out.write(f',\n"{kind}": [')
                    first = True
                    if spool.exists():
                        with spool.open(encoding="utf-8") as fh:
                            for line in fh:
                                if line[0] == kind[0]:
                                    out.write("\n" if first else ",\n")
                                    out.write(line[1:-1])
                                    first = False
                    out.write("]" if first else "\n]")
                out.write("\n}\n")

        write_with(dest, writer)


def _has_data(counts: CellCounts) -> bool:
    return bool(counts.nodes or counts.ways or counts.relations)


def _holds_elements(path: AnyPath, quadkey: str) -> bool:
    """A valid ``osm_data.json`` with at least one element."""
    try:
        data = json.loads(location(path).read_text())
        check_osm_data(data, quadkey, str(path))
    except (OSError, ValueError):
        return False
    return any(data[key] for key in ELEMENT_KEYS.values())


def _header_box(osmium, source) -> BBox | None:
    """The WGS84 box an extract's header declares (Geofabrik's do), or None."""
    try:
        reader = osmium.io.Reader(source, osmium.osm.osm_entity_bits.NOTHING)
        try:
            box = reader.header().box()
        finally:
            reader.close()
        if not box.valid():
            return None
        return BBox(box.bottom_left.lon, box.bottom_left.lat, box.top_right.lon, box.top_right.lat)
    except (RuntimeError, ValueError, osmium.InvalidLocationError):
        return None


def _round(v: float) -> float:
    return round(v, 7)  # OSM stores 1e-7 degree fixed point


def _bounds(lats: list[float], lons: list[float]) -> dict[str, float]:
    return {"minlat": min(lats), "minlon": min(lons), "maxlat": max(lats), "maxlon": max(lons)}


def _open_file(path: Path, fmt: str | None):
    import osmium

    if fmt:
        return osmium.io.File(str(path), fmt)
    name = path.name.lower()
    if not name.endswith(_FORMATS):
        raise OsmImportError(f"{path}: unknown OSM file format; name it .osm.pbf, .osm, .osm.bz2 or .osm.gz (or pass `fmt`)")
    return str(path)


def import_osm(
    path: str | Path,
    root: str | AnyPath,
    cells: list[Cell],
    *,
    overwrite: bool = False,
    node_index: str = options.OSM_NODE_INDEX,
    fmt: str | None = None,
    progress: Callable[[int], Any] | None = None,
) -> ImportSummary:
    """Write ``osm_data.json`` for ``cells`` (under the ARD base ``root``) from one OSM extract.

    Cells with a valid file are skipped unless ``overwrite``. ``node_index`` is a libosmium
    location index type (``flex_mem``, ``sparse_file_array`` …) or ``auto``; ``fmt`` forces the
    file format (``pbf``, ``osm``, ``osm.gz`` …) when the name does not tell it. ``progress`` gets
    the number of objects read so far (every 100,000).
    """
    import osmium

    path, base = Path(path), location(root)
    if not path.is_file():
        raise ImagesimFileNotFoundError(f"{path}: OSM file does not exist")
    source = _open_file(path, fmt)
    summary = ImportSummary()
    t0 = time.perf_counter()
    todo = []
    for cell in cells:
        if not overwrite and is_valid_file(cell.osm_path(base), cell.quadkey):
            summary.skipped.append(cell)
        else:
            todo.append(cell)
    if not todo:
        summary.seconds = time.perf_counter() - t0
        return summary
    lookup = CellLookup([cell_bbox(c) for c in todo])

    # Spools beside the delivery when it is a local folder (same disk), else in the temp folder.
    work = Path(tempfile.mkdtemp(prefix=".osm-import-", dir=base if isinstance(base, Path) and base.is_dir() else None))
    try:
        spools = _Spools(work, len(todo))
        try:
            _read(osmium, source, path, work, lookup, spools, summary, node_index, progress)
        finally:
            spools.close()
        bounds = _header_box(osmium, source)
        covered = any(_has_data(c) for c in spools.counts)
        for i, cell in enumerate(todo):
            counts, dest = spools.counts[i], cell.osm_path(base)
            if not _has_data(counts):
                # No data for the cell. Written empty only when that is an answer (the extract covers
                # other cells, and this one lies inside its bounds): never over a file with data.
                if not covered or (bounds is not None and not bounds.intersects(*lookup.boxes[i])):
                    summary.uncovered.append(cell)
                    continue
                if overwrite and _holds_elements(dest, cell.quadkey):
                    summary.kept.append(cell)
                    continue
            spools.write_cell(i, cell.quadkey, dest)
            summary.written[cell] = counts
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary.seconds = time.perf_counter() - t0
    return summary


def _read(
    osmium,
    source,
    path: Path,
    work: Path,
    lookup: CellLookup,
    spools: _Spools,
    summary: ImportSummary,
    node_index: str,
    progress: Callable[[int], Any] | None,
) -> None:
    # Pre-scan: ways that are members of tagged relations need their geometry kept.
    members = osmium.IdTracker()
    try:
        for rel in osmium.FileProcessor(source, osmium.osm.RELATION):
            if len(rel.tags):
                for m in rel.members:
                    if m.type == "w":
                        members.add_way(m.ref)
    except RuntimeError as exc:
        raise OsmImportError(f"{path}: cannot read OSM data: {exc}") from None
    member_ways = members.way_ids()

    if node_index == "auto":
        node_index = "sparse_file_array" if path.stat().st_size > _BIG_FILE else "flex_mem"
    if node_index.endswith("_file_array") and "," not in node_index:
        node_index = f"{node_index},{work / 'nodes.idx'}"
    try:
        locations = osmium.index.create_map(node_index)
    except (RuntimeError, ValueError) as exc:
        raise InvalidArgumentError(f"`node_index` {node_index!r}: {exc}", param="node_index") from None

    db = sqlite3.connect(work / "ways.sqlite")
    db.execute("PRAGMA journal_mode=OFF")
    db.execute("PRAGMA synchronous=OFF")
    db.execute("CREATE TABLE ways (id INTEGER PRIMARY KEY, coords BLOB)")
    pending: list[tuple[int, bytes]] = []

    def way_coords(way_id: int) -> list[dict[str, float] | None] | None:
        if pending:
            db.executemany("INSERT OR REPLACE INTO ways VALUES (?, ?)", pending)
            pending.clear()
        row = db.execute("SELECT coords FROM ways WHERE id = ?", (way_id,)).fetchone()
        if row is None:
            return None
        a = array("i")
        a.frombytes(row[0])
        return [None if a[j] == _MISSING else {"lat": a[j] / 1e7, "lon": a[j + 1] / 1e7} for j in range(0, len(a), 2)]

    empty_nodes = osmium.filter.EmptyTagFilter().enable_for(osmium.osm.NODE)
    fp = osmium.FileProcessor(source).with_locations(locations).with_filter(empty_nodes)
    dumps = json.dumps
    n = 0
    try:
        for obj in fp:
            n += 1
            if progress and n % 100_000 == 0:
                progress(n)
            t = obj.type_str()
            if t == "n":
                loc = obj.location
                if not loc.valid():
                    summary.unlocated += 1
                    continue
                lon, lat = loc.lon, loc.lat
                cells = lookup.point(lon, lat)
                if cells:
                    el = {"type": "node", "id": obj.id, "lat": _round(lat), "lon": _round(lon), "tags": dict(obj.tags)}
                    spools.add(cells, "nodes", dumps(el, ensure_ascii=False))
            elif t == "w":
                tagged = len(obj.tags) > 0
                member = obj.id in member_ways
                if not (tagged or member):
                    continue
                refs: list[int] = []
                geom: list[dict[str, float] | None] = []  # None: node missing from the extract (Overpass writes null)
                lats: list[float] = []
                lons: list[float] = []
                packed = array("i")
                for nd in obj.nodes:
                    refs.append(nd.ref)
                    loc = nd.location
                    if loc.valid():
                        lat, lon = _round(loc.lat), _round(loc.lon)
                        geom.append({"lat": lat, "lon": lon})
                        lats.append(lat)
                        lons.append(lon)
                        packed.extend((loc.y, loc.x))
                    else:
                        geom.append(None)
                        packed.extend((_MISSING, _MISSING))
                if member:
                    pending.append((obj.id, packed.tobytes()))
                    if len(pending) >= 10_000:
                        db.executemany("INSERT OR REPLACE INTO ways VALUES (?, ?)", pending)
                        pending.clear()
                if not tagged:
                    continue
                if not lats:
                    summary.unlocated += 1
                    continue
                b = _bounds(lats, lons)
                cells = lookup.box(b["minlon"], b["minlat"], b["maxlon"], b["maxlat"])
                if cells:
                    el = {"type": "way", "id": obj.id, "bounds": b, "nodes": refs, "geometry": geom, "tags": dict(obj.tags)}
                    spools.add(cells, "ways", dumps(el, ensure_ascii=False))
            elif t == "r":
                if not len(obj.tags):
                    continue
                out_members, lats, lons = [], [], []
                for m in obj.members:
                    item: dict[str, Any] = {"type": {"n": "node", "w": "way", "r": "relation"}[m.type], "ref": m.ref, "role": m.role}
                    if m.type == "w":
                        g = way_coords(m.ref)
                        if g is not None:
                            item["geometry"] = g
                            for p in g:
                                if p is not None:
                                    lats.append(p["lat"])
                                    lons.append(p["lon"])
                    elif m.type == "n":
                        try:
                            loc = locations.get(m.ref)
                        except (KeyError, ValueError, RuntimeError):
                            loc = None
                        if loc is not None and loc.valid():
                            item["lat"], item["lon"] = _round(loc.lat), _round(loc.lon)
                            lats.append(item["lat"])
                            lons.append(item["lon"])
                    out_members.append(item)
                if not lats:
                    summary.unlocated += 1  # e.g. a relation of relations, or members outside the extract
                    continue
                b = _bounds(lats, lons)
                cells = lookup.box(b["minlon"], b["minlat"], b["maxlon"], b["maxlat"])
                if cells:
                    el = {"type": "relation", "id": obj.id, "bounds": b, "members": out_members, "tags": dict(obj.tags)}
                    spools.add(cells, "relations", dumps(el, ensure_ascii=False))
    except RuntimeError as exc:
        raise OsmImportError(f"{path}: cannot read OSM data: {exc}") from None
    finally:
        db.close()
    summary.objects = n
    if n == 0:
        # Untagged nodes are filtered before they reach Python, so count objects once more cheaply.
        if not _has_objects(osmium, source):
            raise OsmImportError(f"{path}: the file holds no OSM objects (header only?)")
    if progress:
        progress(n)


def _has_objects(osmium, source) -> bool:
    for _obj in osmium.FileProcessor(source):
        return True
    return False
