"""Geometry from ``osm_data.json`` elements (Overpass ``out geom`` shape) for labelling.

Nodes become points, ways lines or polygons (a closed way is an area when its tags say so, the
usual OSM convention), multipolygon relations polygons with holes (rings assembled from member
ways, even-odd rule, so islands in lakes stay land). Everything is projected to the cell's UTM CRS
in one vectorised call and invalid polygons are repaired; what cannot be built is counted by
reason, never raised.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import reduce
from typing import Any

import numpy as np
import shapely

from imagesim.labels.taxonomy import Taxonomy

POINT, LINE, AREA = 0, 1, 2

# Keys whose closed ways are areas (with the values below being lines all the same).
_AREA_KEYS = {
    "building",
    "building:part",
    "landuse",
    "leisure",
    "amenity",
    "natural",
    "water",
    "aeroway",
    "shop",
    "tourism",
    "man_made",
    "military",
    "place",
    "historic",
    "parking",
    "landcover",
    "golf",
    "area:highway",
    "waterway",
    "power",
    "office",
    "craft",
    "public_transport",
}
_LINEAR_VALUES = {
    "natural": {"coastline", "cliff", "ridge", "arete", "tree_row", "earth_bank", "valley"},
    "waterway": {"river", "stream", "canal", "drain", "ditch", "brook", "weir", "dam", "tidal_channel"},
    "man_made": {"embankment", "cutline", "pipeline", "breakwater", "groyne", "pier"},
    "power": {"line", "minor_line", "cable"},
    "leisure": {"track", "slipway"},
}


def is_area(tags: dict[str, str]) -> bool:
    """Whether a closed way with these tags is an area (rather than a closed line, e.g. a roundabout)."""
    area = tags.get("area")
    if area == "no":
        return False
    if area == "yes":
        return True
    for key, value in tags.items():
        if key in _AREA_KEYS and value != "no" and value not in _LINEAR_VALUES.get(key, ()):
            return True
    return False


@dataclass
class GeometryReport:
    """What happened to the tagged elements of one or more cells."""

    elements: int = 0  # tagged elements seen
    used: int = 0  # elements that matched a class and got a geometry
    repaired: int = 0  # invalid polygons made valid
    dropped: Counter = field(default_factory=Counter)  # reason -> count
    examples: dict[str, str] = field(default_factory=dict)  # reason -> one element id, for messages

    def drop(self, reason: str, ident: str) -> None:
        self.dropped[reason] += 1
        self.examples.setdefault(reason, ident)

    def merge(self, other: GeometryReport) -> None:
        self.elements += other.elements
        self.used += other.used
        self.repaired += other.repaired
        self.dropped.update(other.dropped)
        for k, v in other.examples.items():
            self.examples.setdefault(k, v)

    def as_dict(self) -> dict[str, Any]:
        return {
            "elements": self.elements,
            "used": self.used,
            "repaired": self.repaired,
            "dropped": dict(self.dropped),
            "examples": dict(self.examples),
        }


@dataclass
class Features:
    """Projected geometries of one cell and the (feature, class) pairs they carry."""

    geoms: np.ndarray  # shapely geometries in the cell's UTM CRS
    kinds: np.ndarray  # uint8: POINT, LINE, AREA
    ids: list[str]  # "n1", "w2", "r3"
    pair_feature: np.ndarray  # int64 index into geoms
    pair_class: np.ndarray  # int32 class id

    @staticmethod
    def empty() -> Features:
        return Features(np.empty(0, object), np.empty(0, np.uint8), [], np.empty(0, np.int64), np.empty(0, np.int32))

    def __len__(self) -> int:
        return len(self.geoms)


def _coords(points: Iterable[Any] | None) -> tuple[list[tuple[float, float]], int]:
    """(lon, lat) pairs of an Overpass geometry list, and how many were missing (null)."""
    out = []
    missing = 0
    for p in points or ():
        if isinstance(p, dict) and "lon" in p and "lat" in p:
            out.append((float(p["lon"]), float(p["lat"])))
        else:
            missing += 1
    return out, missing


def _polygonal(geom: Any) -> Any:
    """Only the polygonal part of a geometry (make_valid may return lines beside polygons)."""
    if isinstance(geom, (shapely.Polygon, shapely.MultiPolygon)):
        return geom
    parts = [p for p in shapely.get_parts(geom) if isinstance(p, (shapely.Polygon, shapely.MultiPolygon))]
    return shapely.union_all(parts) if parts else shapely.Polygon()


def _way_geometry(el: dict[str, Any], report: GeometryReport, ident: str) -> tuple[Any, int] | None:
    coords, missing = _coords(el.get("geometry"))
    if missing:
        report.drop("way with nodes missing from the data", ident)
        if len(coords) < 2:
            return None
    if len(coords) < 2:
        report.drop("way with fewer than 2 located nodes", ident)
        return None
    nodes = el.get("nodes") or []
    closed = (len(nodes) > 3 and nodes[0] == nodes[-1]) or (len(coords) > 3 and coords[0] == coords[-1])
    if closed and not missing and is_area(el.get("tags") or {}):
        if coords[0] != coords[-1]:
            coords.append(coords[0])
        return shapely.Polygon(coords), AREA
    return shapely.LineString(coords), LINE


def _relation_geometry(el: dict[str, Any], report: GeometryReport, ident: str) -> Any | None:
    """Multipolygon from member ways: rings joined end to end, then combined by the even-odd rule."""
    lines = []
    incomplete = False
    for m in el.get("members") or ():
        if m.get("type") != "way" or m.get("role") not in ("outer", "inner", ""):
            continue
        coords, missing = _coords(m.get("geometry"))
        if missing or len(coords) < 2:
            incomplete = True
            continue
        lines.append(shapely.LineString(coords))
    if not lines:
        report.drop("multipolygon without located member ways", ident)
        return None
    merged = shapely.line_merge(shapely.MultiLineString(lines))
    rings = []
    for part in shapely.get_parts(merged):
        cs = list(part.coords)
        if len(cs) >= 4 and cs[0] == cs[-1]:
            rings.append(shapely.make_valid(shapely.Polygon(cs)))
        else:
            incomplete = True
    if incomplete:
        # Overpass cuts member ways at the query box; what closes is still right, so keep it.
        report.drop("multipolygon ring not closed (kept the closed rings)", ident)
    if not rings:
        return None
    return reduce(shapely.symmetric_difference, rings)


def features_from_osm(data: dict[str, Any], taxonomy: Taxonomy, transform: Any) -> tuple[Features, GeometryReport]:
    """Build projected geometries for every element of a cell that some class selects.

    ``transform`` maps ``(N, 2)`` lon/lat arrays to ``(N, 2)`` projected arrays (pyproj).
    """
    report = GeometryReport()
    geoms: list[Any] = []
    kinds: list[int] = []
    ids: list[str] = []
    classes: list[list[int]] = []
    for key, prefix in (("nodes", "n"), ("ways", "w"), ("relations", "r")):
        for el in data.get(key) or ():
            tags = el.get("tags") or {}
            if not tags:
                continue
            report.elements += 1
            matched = taxonomy.classes_for(tags)
            if not matched:
                continue
            ident = f"{prefix}{el.get('id')}"
            if prefix == "n":
                if "lon" not in el or "lat" not in el:
                    report.drop("node without location", ident)
                    continue
                geom, kind = shapely.Point(float(el["lon"]), float(el["lat"])), POINT
            elif prefix == "w":
                built = _way_geometry(el, report, ident)
                if built is None:
                    continue
                geom, kind = built
            else:
                if tags.get("type") not in ("multipolygon", "boundary"):
                    continue  # routes, sites …: their member ways carry their own tags
                geom = _relation_geometry(el, report, ident)
                if geom is None:
                    continue
                kind = AREA
            wanted = [c.id for c in matched if _counts(c, kind)]
            if not wanted:
                continue
            geoms.append(geom)
            kinds.append(kind)
            ids.append(ident)
            classes.append(wanted)
    if not geoms:
        return Features.empty(), report
    arr = shapely.transform(np.array(geoms, dtype=object), transform)
    kind_arr = np.array(kinds, dtype=np.uint8)
    # Repair in the projected CRS (validity is not preserved exactly by projection).
    areas = np.flatnonzero(kind_arr == AREA)
    invalid = areas[~shapely.is_valid(arr[areas])]
    for i in invalid:
        arr[i] = _polygonal(shapely.make_valid(arr[i]))
    report.repaired += len(invalid)
    keep = np.ones(len(arr), bool)
    empty_area = areas[shapely.area(arr[areas]) <= 0]
    for i in empty_area:
        report.drop("area with no extent", ids[i])
    keep[empty_area] = False
    keep &= ~shapely.is_empty(arr)
    index = np.cumsum(keep) - 1
    pair_feature = np.array([index[i] for i, cs in enumerate(classes) if keep[i] for _ in cs], dtype=np.int64)
    pair_class = np.array([c for i, cs in enumerate(classes) if keep[i] for c in cs], dtype=np.int32)
    report.used = int(keep.sum())
    return Features(arr[keep], kind_arr[keep], [ids[i] for i in np.flatnonzero(keep)], pair_feature, pair_class), report


def _counts(cls: Any, kind: int) -> bool:
    """Whether features of this geometry kind count for the class."""
    if kind == AREA:
        return bool(cls.polygons)
    if kind == LINE:
        return cls.line_buffer_m > 0
    return cls.point_buffer_m > 0
