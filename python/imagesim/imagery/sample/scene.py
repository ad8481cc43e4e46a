"""The synthetic scene of the sample: a vector model of land cover, water, roads, railway, buildings,
parking and pitches, built from a seed in the zone's UTM metres.

A rotated 500 m district grid decides the land use (a town in cell A's small window, a village in
cell B, farmland/forest/meadow elsewhere); streets, houses, sheds, parks, a lake with an island, a
river, a motorway and a railway are laid over it. Each :class:`Feature` carries its OSM tags (for
the OSM file) and its render class, colour, stripe texture and height (for the pixels), so labels
derived from the OSM data line up with the imagery.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from imagesim import grid
from imagesim.imagery.sample.acquisitions import ACQUISITIONS, CELLS

__all__ = ["Feature", "Scene", "build_scene", "road_feature"]

_P = grid.COG_PIXELS
_ROAD_WIDTH = {"motorway": 26.0, "primary": 13.0, "residential": 8.0, "service": 4.5}
_ROAD_RGB = {"motorway": (108, 108, 110), "primary": (122, 120, 117), "residential": (134, 131, 126), "service": (148, 143, 136)}


@dataclass
class Feature:
    geom: Any  # shapely geometry in UTM metres: Polygon/MultiPolygon (areas) or LineString (lines)
    tags: dict[str, str]
    cls: str  # render class (a name in render.py's class table); "" = OSM only (not rendered)
    rgb: tuple[float, float, float] = (0.0, 0.0, 0.0)
    render_geom: Any = None  # what is rasterized, when it differs from geom (buffered lines); None: geom
    stripe: tuple[float, float, float, int] = (0.0, 0.0, 0.0, 0)  # angle rad, period m, amplitude, kind
    height: float = 0.0  # buildings: metres, for shadows
    osm_relation: bool = False  # write as a multipolygon relation


@dataclass
class Scene:
    features: list[Feature]  # in drawing order (later on top)


def _extent() -> tuple[float, float, float, float]:
    ws, ss, es, ns = [], [], [], []
    for cell in CELLS:
        gt = grid.cell_geotransform(cell)
        ws.append(gt[0])
        ns.append(gt[3])
        es.append(gt[0] + _P * gt[1])
        ss.append(gt[3] + _P * gt[5])
    return min(ws), min(ss), max(es), max(ns)


def _pixel_to_world(cell: str, col: float, row: float) -> tuple[float, float]:
    gt = grid.cell_geotransform(cell)
    return gt[0] + col * gt[1], gt[3] + row * gt[5]


def _blob(rng: np.random.Generator, cx: float, cy: float, r: float, rough: float = 0.25, n: int = 48):
    from shapely.geometry import Polygon

    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    rr = np.ones(n)
    for k in (2, 3, 5):
        rr += rough / k * np.sin(k * t + rng.uniform(0, 2 * np.pi))
    return Polygon(np.c_[cx + r * rr * np.cos(t), cy + r * rr * np.sin(t)])


def _wavy_line(rng: np.random.Generator, p0, p1, amp: float, n: int = 60):
    from shapely.geometry import LineString

    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    t = np.linspace(0, 1, n)
    d = p1 - p0
    nrm = np.array([-d[1], d[0]]) / np.hypot(*d)
    off = np.zeros(n)
    for k, a in ((1, 1.0), (2, 0.45), (5, 0.12)):
        off += amp * a * np.sin(np.pi * k * t + rng.uniform(0, 2 * np.pi)) * np.sin(np.pi * t) ** 0.3
    pts = p0[None] + t[:, None] * d[None] + off[:, None] * nrm[None]
    return LineString(pts)


@functools.lru_cache(maxsize=2)
def build_scene(seed: int) -> Scene:
    """The vector scene of ``seed`` (cached: it is never modified after construction)."""
    import shapely
    from shapely import affinity
    from shapely.geometry import LineString, box
    from shapely.ops import unary_union

    rng = np.random.default_rng([seed, 0x5CE4E])
    W, S, E, N = _extent()
    region = box(W - 150, S - 150, E + 150, N + 150)
    cx, cy = (W + E) / 2, (S + N) / 2
    theta = float(rng.uniform(9.0, 21.0))
    D = 500.0

    # Town centred on cell A's small window, a village near cell B's; the lake near cell B's window.
    a_box, b_box = ACQUISITIONS[0].small_box, ACQUISITIONS[2].small_box
    town = np.array(_pixel_to_world(CELLS[0], a_box[0] + a_box[2] * 0.45, a_box[1] + a_box[2] * 0.55))
    village = np.array(_pixel_to_world(CELLS[1], 13000, 4200))
    lake_c = np.array(_pixel_to_world(CELLS[1], b_box[0] + b_box[2] * 0.45, b_box[1] + b_box[2] * 0.4))

    def rot(g):
        return affinity.rotate(g, theta, origin=(cx, cy))

    def rot_pt(x, y):
        a = math.radians(theta)
        return (cx + (x - cx) * math.cos(a) - (y - cy) * math.sin(a), cy + (x - cx) * math.sin(a) + (y - cy) * math.cos(a))

    def unrot_pt(p):
        a = -math.radians(theta)
        x, y = p
        return (cx + (x - cx) * math.cos(a) - (y - cy) * math.sin(a), cy + (x - cx) * math.sin(a) + (y - cy) * math.cos(a))

    half = int(math.ceil(math.hypot(E - W, N - S) / 2 / D)) + 1
    districts: dict[str, list] = {k: [] for k in ("residential", "industrial", "park", "farmland", "forest", "meadow", "grass")}
    streets: list = []
    primary_lines: list = []
    # District grid in the rotated frame.
    for i in range(-half, half):
        for j in range(-half, half):
            sq = rot(box(cx + i * D, cy + j * D, cx + (i + 1) * D, cy + (j + 1) * D))
            if not sq.intersects(region):
                continue
            c = np.array(sq.centroid.coords[0])
            dt = np.hypot(*(c - town)) + rng.normal(0, 150)
            dv = np.hypot(*(c - village)) + rng.normal(0, 120)
            u = rng.uniform()
            if dt < 1150 or dv < 600:
                kind = "residential" if u < 0.78 else ("park" if u < 0.88 else "industrial")
            elif dt < 2000 or dv < 1000:
                kind = "industrial" if u < 0.25 else ("farmland" if u < 0.6 else ("grass" if u < 0.75 else "residential"))
            else:
                kind = "farmland" if u < 0.5 else ("forest" if u < 0.85 else "meadow")
            districts[kind].append((sq, i, j))

    feats_land: list[Feature] = []
    feats_water: list[Feature] = []
    feats_top: list[Feature] = []  # pitches, parking
    buildings: list[Feature] = []
    roads: list[Feature] = []

    # Primary roads on every third grid line (both directions), in the rotated frame.
    L = half * D
    for k in range(-half, half + 1):
        if k % 3 == 0:
            for ln in (
                LineString([rot_pt(cx + k * D, cy - L), rot_pt(cx + k * D, cy + L)]),
                LineString([rot_pt(cx - L, cy + k * D), rot_pt(cx + L, cy + k * D)]),
            ):
                ln = ln.intersection(region)
                if not ln.is_empty:
                    primary_lines.append(ln)

    # Land-cover districts.
    forest_union = unary_union([d[0] for d in districts["forest"]]).intersection(region) if districts["forest"] else None
    crops = [(112, 140, 72), (186, 168, 118), (142, 118, 88), (152, 166, 96), (96, 126, 64), (170, 150, 100)]
    for sq, i, j in districts["farmland"]:
        sq = sq.intersection(region)
        if sq.is_empty:
            continue
        nx, ny = int(rng.integers(2, 4)), int(rng.integers(2, 4))
        x0, y0 = cx + i * D, cy + j * D
        cuts_x = np.sort(rng.uniform(0.2, 0.8, nx - 1)) * D if nx > 1 else np.array([])
        cuts_y = np.sort(rng.uniform(0.2, 0.8, ny - 1)) * D if ny > 1 else np.array([])
        xs = np.r_[0, cuts_x, D]
        ys = np.r_[0, cuts_y, D]
        for a in range(len(xs) - 1):
            for b in range(len(ys) - 1):
                f = rot(box(x0 + xs[a] + 4, y0 + ys[b] + 4, x0 + xs[a + 1] - 4, y0 + ys[b + 1] - 4)).intersection(region)
                if f.is_empty or f.area < 500:
                    continue
                ang = math.radians(theta + (0 if rng.uniform() < 0.5 else 90) + rng.normal(0, 2))
                feats_land.append(
                    Feature(
                        f,
                        {"landuse": "farmland"},
                        "farmland",
                        crops[int(rng.integers(len(crops)))],
                        stripe=(ang, float(rng.uniform(2.5, 7.0)), float(rng.uniform(0.06, 0.14)), 1),
                    )
                )
        # a farm reservoir now and then
        if rng.uniform() < 0.25:
            p = sq.representative_point()
            pond = _blob(rng, p.x, p.y, float(rng.uniform(25, 45)), 0.15).intersection(sq)
            if not pond.is_empty:
                feats_water.append(Feature(pond, {"landuse": "reservoir", "natural": "water", "water": "reservoir"}, "water", (52, 74, 78)))
    for kind, tags, rgb in (("meadow", {"landuse": "meadow"}, (146, 148, 94)), ("grass", {"landuse": "grass"}, (108, 132, 72))):
        for sq, _i, _j in districts[kind]:
            g = sq.intersection(region).buffer(-3)
            if not g.is_empty:
                feats_land.append(Feature(g, dict(tags), kind, rgb))

    # Forest: merged districts; the largest piece gets a clearing (multipolygon with a hole).
    clearing = None
    if forest_union is not None and not forest_union.is_empty:
        parts = sorted(getattr(forest_union, "geoms", [forest_union]), key=lambda g: -g.area)
        for n_part, part in enumerate(parts):
            part = part.buffer(-3)
            if part.is_empty:
                continue
            if n_part == 0:
                p = part.buffer(-200).representative_point() if not part.buffer(-200).is_empty else part.representative_point()
                clearing = _blob(rng, p.x, p.y, 90.0, 0.3)
                if part.contains(clearing):
                    part = part.difference(clearing)
                    feats_land.append(Feature(part, {"landuse": "forest"}, "forest", (52, 76, 46), osm_relation=True))
                    feats_land.append(Feature(clearing, {"landuse": "meadow"}, "meadow", (150, 150, 98)))
                    continue
            for g in getattr(part, "geoms", [part]):
                feats_land.append(Feature(g, {"landuse": "forest"} if n_part % 2 == 0 else {"natural": "wood"}, "forest", (52, 76, 46)))

    # Lake with an island (multipolygon) near cell B's small window; wood on the island.
    lake = _blob(rng, lake_c[0], lake_c[1], 190.0, 0.3, 64)
    island = _blob(rng, lake_c[0] + 30, lake_c[1] - 20, 45.0, 0.2)
    lake_mp = lake.difference(island)
    feats_water.append(
        Feature(lake_mp, {"natural": "water", "water": "lake", "name": "Sample Lake"}, "water", (38, 62, 78), osm_relation=True)
    )
    feats_water.append(Feature(island, {"natural": "wood"}, "forest", (56, 80, 48)))
    lake_zone = lake.buffer(25)

    # River: north-south through cell B, west of the lake.
    rx = lake_c[0] - 450
    river_line = _wavy_line(rng, (rx, N + 200), (rx + 600, S - 200), 260.0, 120)
    river_poly = river_line.buffer(22.0, cap_style="flat").intersection(region)
    feats_water.append(Feature(river_poly, {"waterway": "riverbank", "natural": "water", "water": "river"}, "water", (48, 72, 76)))
    feats_water.append(Feature(river_line.intersection(region), {"waterway": "river", "name": "Sample River"}, ""))

    # Motorway: west-east, south of the town.
    my = town[1] - 1100
    motorway = _wavy_line(rng, (W - 200, my + 300), (E + 200, my - 200), 250.0, 120).intersection(region)
    # Railway: a long straight-ish line north of the town.
    railway = _wavy_line(rng, (W - 200, town[1] + 900), (E + 200, town[1] + 1300), 120.0, 80).intersection(region)

    # Residential districts: street grid and houses on lots.
    roofs = [(168, 92, 72), (122, 122, 128), (84, 84, 90), (134, 104, 82), (198, 196, 190), (150, 80, 64), (104, 96, 92)]
    house_polys: list = []
    for sq, i, j in districts["residential"]:
        g = sq.intersection(region)
        if g.is_empty:
            continue
        feats_land.append(Feature(g.buffer(-2), {"landuse": "residential"}, "residential", (124, 128, 104)))
        x0, y0 = cx + i * D, cy + j * D
        sp = 100.0
        for k in range(1, 5):
            for ln in (
                LineString([rot_pt(x0 + k * sp, y0), rot_pt(x0 + k * sp, y0 + D)]),
                LineString([rot_pt(x0, y0 + k * sp), rot_pt(x0 + D, y0 + k * sp)]),
            ):
                ln = ln.intersection(region)
                if not ln.is_empty:
                    streets.append(ln)
        # houses along the west-east streets (rotated frame), both sides
        for k in range(0, 6):
            for side in (-1, 1):
                yy = y0 + k * sp + side * 18.0
                if yy < y0 + 12 or yy > y0 + D - 12:
                    continue
                xx = x0 + 14
                while xx < x0 + D - 20:
                    w, h = rng.uniform(9, 16), rng.uniform(8, 12)
                    if rng.uniform() < 0.88:
                        ccx, ccy = xx + w / 2 + rng.uniform(-1.5, 1.5), yy + side * (h / 2) + rng.uniform(-1, 1)
                        hb = box(ccx - w / 2, ccy - h / 2, ccx + w / 2, ccy + h / 2)
                        hb = affinity.rotate(hb, rng.normal(0, 2.5), origin="centroid")
                        house_polys.append((rot(hb), roofs[int(rng.integers(len(roofs)))], "house", float(rng.uniform(5, 8))))
                    xx += w + rng.uniform(7, 14)

    # Industrial districts: large sheds, parking lots, service roads.
    for sq, i, j in districts["industrial"]:
        g = sq.intersection(region)
        if g.is_empty:
            continue
        feats_land.append(Feature(g.buffer(-2), {"landuse": "industrial"}, "industrial", (150, 147, 138)))
        x0, y0 = cx + i * D, cy + j * D
        for a in range(2):
            for b in range(2):
                bx, by = x0 + 30 + a * 240, y0 + 30 + b * 240
                w, h = rng.uniform(70, 170), rng.uniform(50, 120)
                shed = rot(box(bx, by, bx + w, by + h))
                house_polys.append(
                    (
                        shed,
                        [(196, 196, 194), (162, 166, 172), (120, 132, 140)][int(rng.integers(3))],
                        "industrial",
                        float(rng.uniform(9, 14)),
                    )
                )
                lot = rot(box(bx, by + h + 8, bx + min(w, 120), by + h + 8 + rng.uniform(30, 60)))
                feats_top.append(
                    Feature(
                        lot,
                        {"amenity": "parking", "parking": "surface"},
                        "parking",
                        (92, 92, 94),
                        stripe=(math.radians(theta), 2.6, 0.9, 2),
                    )
                )
                streets.append(("service", LineString([rot_pt(bx - 12, by - 10), rot_pt(bx - 12, by + h + 80)])))

    # Parks with soccer pitches; also one pitch next to the town centre.
    for sq, i, j in districts["park"]:
        g = sq.intersection(region)
        if g.is_empty:
            continue
        feats_land.append(Feature(g.buffer(-2), {"leisure": "park"}, "park", (98, 134, 66)))
        x0, y0 = cx + i * D, cy + j * D
        for k in range(int(rng.integers(1, 3))):
            px, py = x0 + 60 + k * 200, y0 + 150
            pitch = rot(box(px, py, px + 105, py + 68))
            feats_top.append(
                Feature(pitch, {"leisure": "pitch", "sport": "soccer"}, "pitch", (78, 142, 60), stripe=(math.radians(theta), 10.0, 0.06, 3))
            )
        lot = rot(box(x0 + 60, y0 + 250, x0 + 160, y0 + 290))
        feats_top.append(Feature(lot, {"amenity": "parking"}, "parking", (96, 96, 98), stripe=(math.radians(theta), 2.6, 0.9, 2)))
    # The town park (always present): a soccer pitch and a car park; streets and houses give way.
    tp = unrot_pt(town)
    town_park = rot(box(tp[0] - 90, tp[1] - 60, tp[0] + 90, tp[1] + 95))
    town_feats = [
        Feature(town_park, {"leisure": "park", "name": "Town Park"}, "park", (98, 134, 66)),
        Feature(
            rot(box(tp[0] - 52, tp[1] - 34, tp[0] + 53, tp[1] + 34)),
            {"leisure": "pitch", "sport": "soccer"},
            "pitch",
            (78, 142, 60),
            stripe=(math.radians(theta), 10.0, 0.06, 3),
        ),
        Feature(
            rot(box(tp[0] - 52, tp[1] + 45, tp[0] + 40, tp[1] + 80)),
            {"amenity": "parking", "parking": "surface"},
            "parking",
            (94, 94, 96),
            stripe=(math.radians(theta), 2.6, 0.9, 2),
        ),
    ]
    streets = [
        (kind, ln.difference(town_park)) for kind, ln in (item if isinstance(item, tuple) else ("residential", item) for item in streets)
    ]

    # Roads (render as buffered polygons, OSM as centre lines).
    for ln in primary_lines:
        for part in getattr(ln, "geoms", [ln]):
            roads.append(road_feature(part, "primary"))
    for item in streets:
        kind, ln = item if isinstance(item, tuple) else ("residential", item)
        ln = ln.intersection(region)
        for part in getattr(ln, "geoms", [ln]):
            if isinstance(part, LineString) and part.length > 20:
                roads.append(road_feature(part, kind))
    for part in getattr(motorway, "geoms", [motorway]):
        roads.append(road_feature(part, "motorway", {"ref": "I-580"}))
    rail = []
    for part in getattr(railway, "geoms", [railway]):
        rail.append(
            Feature(part, {"railway": "rail", "gauge": "1435"}, "rail", (118, 108, 98), render_geom=part.buffer(4.0, cap_style="flat"))
        )

    # Everything linear or watery blocks buildings and pitches.
    blockers = unary_union([r.render_geom.buffer(3) for r in roads + rail] + [lake_zone, river_poly.buffer(10), town_park])
    if clearing is not None:
        blockers = unary_union([blockers, clearing])
    shapely.prepare(blockers)
    keep_geoms = [hp[0] for hp in house_polys]
    hit = shapely.intersects(blockers, np.array(keep_geoms, dtype=object)) if keep_geoms else np.array([], bool)
    for (geom, rgb, kind, height), bad in zip(house_polys, hit):
        if not bad and region.contains(geom):
            tag = kind if kind == "industrial" or rng.uniform() < 0.7 else "yes"
            buildings.append(Feature(geom, {"building": tag}, "building", rgb, height=height))
    feats_top = [f for f in feats_top if not shapely.intersects(blockers, f.geom)]
    feats_land += town_feats[:1]
    feats_top += town_feats[1:]

    # Drawing order: land, water, pitches/parking, rail, roads (minor to major), buildings.
    order = {"service": 0, "residential": 1, "primary": 2, "motorway": 3}
    roads.sort(key=lambda f: order[f.tags["highway"]])
    features = feats_land + feats_water + feats_top + rail + roads + buildings
    return Scene([f for f in features if not f.geom.is_empty])


def road_feature(line, kind: str, extra: dict[str, str] | None = None) -> Feature:
    tags = {"highway": kind}
    if kind == "motorway":
        tags.update({"oneway": "no", "lanes": "6"})
    if extra:
        tags.update(extra)
    return Feature(line, tags, "road", _ROAD_RGB[kind], render_geom=line.buffer(_ROAD_WIDTH[kind] / 2, cap_style="flat"))
