"""Changes planted in the later acquisition of the cell that has two, for change detection.

:func:`planted_changes` picks sites from the seed where both acquisitions of the cell hold clear data
(inside both valid-data polygons, at least :data:`CLOUD_CLEARANCE` m from both acquisitions' clouds
and cloud shadows) on land cover that makes the change visible, and returns for each the changed
area (the ground truth) and the render features drawn on top of the scene for the later acquisition:

- ``new_buildings``: 3-8 houses (with heights, so they cast shadows) and a short driveway on
  farmland, meadow or grass; the changed area is their footprints and driveway, buffered 2 m;
- ``cleared_forest``: forest turned into bare brown soil with stumps and skid tracks;
- ``new_road``: a 250-700 m residential road, with the scene's road look, through farmland or meadow;
  the changed area is its surface;
- ``flooded_field``: farmland or meadow under muddy brown-green water (buildings and roads stay dry).

New buildings and roads follow the scene's street grid (give or take a few degrees). Full mode plants
:data:`FULL_PER_KIND` sites of each kind, at least :data:`FULL_SPACING` m apart. The small-mode
window is a town (and little of it is clear in both acquisitions), so there the town's open ground
(residential and industrial yards, parks, grass) also counts as suitable for buildings, roads and
floods, houses stand in one row, sites are smaller (shrunk further, down to half, when the clear
room is scarce), roads 80-200 m, and at least :data:`SMALL_MIN_SITES` sites of as many kinds are
planted (a few seeds leave too little clear room: SampleDataError). New roads are freshly paved:
darker than the scene's weathered ones. The sites come from their own random stream: choosing them
draws nothing from the renderer's or the clouds' streams.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from imagesim import grid
from imagesim.errors import SampleDataError
from imagesim.imagery.sample.acquisitions import Acquisition
from imagesim.imagery.sample.scene import Feature, Scene, road_feature

__all__ = [
    "KINDS",
    "CLOUD_CLEARANCE",
    "FULL_PER_KIND",
    "FULL_SPACING",
    "SMALL_MIN_SITES",
    "PlantedChange",
    "clear_region",
    "planted_changes",
    "truth_geojson",
]

KINDS = ("new_buildings", "cleared_forest", "new_road", "flooded_field")
#: Minimum distance (m) from a changed area to either acquisition's clouds and cloud shadows.
CLOUD_CLEARANCE = 40.0
FULL_PER_KIND = 6
#: Minimum distance (m) between two full-mode sites' changed areas.
FULL_SPACING = 200.0
SMALL_MIN_SITES = 3
_SMALL_SPACING = 20.0
_SMALL_SCALES = (1.0, 0.7, 0.5)  # site sizes tried in turn in small mode
_TRIES = 6000  # candidates per kind before giving up (full mode)
_SMALL_TRIES = 1500  # per kind and size (small mode)

_FIELDS = frozenset({"farmland", "meadow"})
_TOWN_OPEN = frozenset({"residential", "industrial", "park", "grass"})  # yards and lawns
# Render classes a new structure must not touch (existing buildings, roads, water, ...).
_SOLID = frozenset({"building", "road", "rail", "water", "parking", "pitch"})
_FRESH_ASPHALT = (92.0, 92.0, 96.0)  # new roads: darker than the scene's weathered ones
_ROOFS = [(172, 96, 74), (126, 124, 130), (88, 86, 92), (196, 194, 188), (148, 82, 66)]


@dataclass(frozen=True)
class PlantedChange:
    kind: str  # one of KINDS
    area: Any  # shapely Polygon/MultiPolygon, cell UTM metres: the changed area (the ground truth)
    features: tuple[Feature, ...]  # drawn on top of the scene, in this order, for the later acquisition


@dataclass(frozen=True)
class _Rules:
    suitable: frozenset[str]
    share: float  # minimum share of the site that shows suitable land cover
    size: tuple[float, float]  # blob radius / house spacing / road length (m)


def _rules(small: bool, scale: float = 1.0) -> dict[str, _Rules]:
    if small:
        return {
            "new_buildings": _Rules(_FIELDS | _TOWN_OPEN, 0.6, (14.0, 19.0)),
            "cleared_forest": _Rules(frozenset({"forest", "park"}), 0.85, (22.0 * scale, 32.0 * scale)),
            "new_road": _Rules(_FIELDS | _TOWN_OPEN, 0.6, (80.0 * scale, 200.0 * scale)),
            "flooded_field": _Rules(_FIELDS | _TOWN_OPEN, 0.6, (22.0 * scale, 32.0 * scale)),
        }
    return {
        "new_buildings": _Rules(_FIELDS | {"grass"}, 0.9, (18.0, 25.0)),
        "cleared_forest": _Rules(frozenset({"forest"}), 0.95, (35.0, 60.0)),
        "new_road": _Rules(_FIELDS, 0.85, (250.0, 700.0)),
        "flooded_field": _Rules(_FIELDS, 0.9, (35.0, 60.0)),
    }


class _Ground:
    """What the scene shows where (painter's order), for suitability and collision tests."""

    def __init__(self, scene: Scene, region, clear) -> None:
        import shapely

        self.clear = clear  # prepared: where changed areas may lie

        feats = [(i, f) for i, f in enumerate(scene.features) if f.cls]
        geoms = [f.render_geom if f.render_geom is not None else f.geom for _i, f in feats]
        keep = [k for k, g in enumerate(geoms) if g.geom_type in ("Polygon", "MultiPolygon") and g.intersects(region)]
        self.geoms = [geoms[k] for k in keep]
        self.cls = [feats[k][1].cls for k in keep]
        self.tree = shapely.STRtree(self.geoms)

    def share(self, area, classes: frozenset[str]) -> float:
        """The share of ``area`` where the topmost scene feature is of one of ``classes``."""
        import shapely

        hits = sorted(int(j) for j in self.tree.query(area, predicate="intersects"))
        covered = shapely.Polygon()
        good = 0.0
        for j in reversed(hits):  # topmost first
            part = self.geoms[j].intersection(area)
            if part.is_empty:
                continue
            if self.cls[j] in classes:
                good += part.difference(covered).area
            covered = covered.union(part)
        return good / area.area if area.area > 0 else 0.0

    def solid(self, area, exclude: frozenset[str] = frozenset()):
        """The union of the solid scene features (buildings, roads, water, ...) that touch ``area``."""
        import shapely

        classes = _SOLID - exclude
        hits = [self.geoms[int(j)] for j in self.tree.query(area, predicate="intersects") if self.cls[int(j)] in classes]
        return shapely.union_all(hits) if hits else shapely.Polygon()


def _blob(rng: np.random.Generator, cx: float, cy: float, r: float):
    from shapely.geometry import Polygon

    t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
    rr = 1.0 + 0.14 * np.sin(2 * t + rng.uniform(0, 2 * np.pi)) + 0.08 * np.sin(3 * t + rng.uniform(0, 2 * np.pi))
    return Polygon(np.c_[cx + r * rr * np.cos(t), cy + r * rr * np.sin(t)])


def _cleared_forest(rng, cx, cy, size, ground, rules, small, theta):
    from shapely.geometry import Polygon

    area = _blob(rng, cx, cy, float(rng.uniform(*size)))
    if not ground.clear.contains(area) or ground.share(area, rules.suitable) < rules.share:
        return None
    soil = (float(rng.uniform(122, 140)), float(rng.uniform(100, 112)), float(rng.uniform(74, 86)))
    # "background" is the renderer's bare-ground class (coarse clumps: stumps and debris); faint skid tracks
    ang = float(rng.uniform(0, np.pi))
    feat = Feature(Polygon(area.exterior), {"landuse": "brownfield"}, "background", soil, stripe=(ang, 9.0, 0.10, 1))
    return area, (feat,)


def _flooded_field(rng, cx, cy, size, ground, rules, small, theta):
    blob = _blob(rng, cx, cy, float(rng.uniform(*size)))
    if not ground.clear.contains(blob) or ground.share(blob, rules.suitable) < rules.share:
        return None
    area = blob.difference(ground.solid(blob))  # houses and roads stay above the water
    area = _largest(area)
    if area is None or area.area < 0.7 * blob.area:
        return None
    water = (float(rng.uniform(70, 80)), float(rng.uniform(78, 88)), float(rng.uniform(56, 64)))
    feat = Feature(area, {"natural": "water", "water": "flood"}, "water", water)
    return area, (feat,)


def _new_buildings(rng, cx, cy, size, ground, rules, small, theta):
    import shapely
    from shapely import affinity
    from shapely.geometry import LineString, box

    # Houses along a driveway (both sides in full mode; one side in small mode, where the gaps between
    # the town's rows of houses are narrow), laid out in the cluster's frame and turned to the street grid.
    rows = 1 if small else 2
    n = int(rng.integers(3, 6 if small else 9))
    per_row = -(-n // rows)
    step = float(rng.uniform(*size))  # house spacing along the driveway
    half = step * per_row / 2
    side0 = 1 if rng.uniform() < 0.5 else -1
    houses = []
    for k in range(n):
        side = side0 if rows == 1 or k % 2 == 0 else -side0
        slot = k // rows
        w = float(rng.uniform(9, min(14 if small else 16, step - 3)))
        h = float(rng.uniform(8, 11 if small else 13))
        x = cx - half + step * (slot + 0.5) + float(rng.uniform(-1, 1))
        y = cy + side * (5.0 + h / 2 + float(rng.uniform(0, 1.5)))
        houses.append(box(x - w / 2, y - h / 2, x + w / 2, y + h / 2))
    drive = LineString([(cx - half - 10.0, cy), (cx + half, cy)])
    ang = theta + (0.0 if rng.uniform() < 0.5 or small else 90.0) + float(rng.normal(0, 3))
    houses = [affinity.rotate(g, ang, origin=(cx, cy)) for g in houses]
    road = road_feature(affinity.rotate(drive, ang, origin=(cx, cy)), "service")
    built = shapely.union_all([*houses, road.render_geom])
    hull = built.convex_hull
    if (
        not ground.clear.contains(built.buffer(2.0))
        or ground.share(hull, rules.suitable) < rules.share
        or built.buffer(3.0).intersects(ground.solid(hull.buffer(3.0)))
    ):
        return None
    feats = [road]
    for g in houses:
        roof = _ROOFS[int(rng.integers(len(_ROOFS)))]
        feats.append(Feature(g, {"building": "house"}, "building", roof, height=float(rng.uniform(5.5, 8.5))))
    return built.buffer(2.0), tuple(feats)


def _new_road(rng, cx, cy, size, ground, rules, small, theta):
    from shapely.geometry import LineString

    length = float(rng.uniform(*size))
    # Along the street grid, give or take: in the town, new streets fill the gaps between rows of houses.
    ang = math.radians(theta + (0.0 if small or rng.uniform() < 0.5 else 90.0) + float(rng.normal(0, 2 if small else 12)))
    d = np.array([math.cos(ang), math.sin(ang)])
    nrm = np.array([-d[1], d[0]])
    t = np.linspace(-0.5, 0.5, 24)
    bend = float(rng.uniform(-0.02, 0.02) if small else rng.uniform(-0.12, 0.12)) * length
    pts = np.array([cx, cy])[None] + (t * length)[:, None] * d[None] + (bend * (1 - 4 * t * t))[:, None] * nrm[None]
    feat = road_feature(LineString(pts), "residential")
    feat.rgb = _FRESH_ASPHALT
    area = feat.render_geom
    if not ground.clear.contains(area) or ground.share(area, rules.suitable) < rules.share:
        return None
    # crossing an existing road is fine; running into a house, water or a railway is not
    solid = ground.solid(area.buffer(2.0), exclude=frozenset({"road"}))
    if not solid.is_empty and area.buffer(2.0).intersects(solid):
        return None
    return area, (feat,)


_MAKERS = {"new_buildings": _new_buildings, "cleared_forest": _cleared_forest, "new_road": _new_road, "flooded_field": _flooded_field}


def _place(rng, ground: _Ground, rules: dict[str, _Rules], per_kind: int, spacing: float, small: bool, theta: float, tries: int):
    """Sites, round-robin over the kinds (one per turn, so that every kind gets a share of the room)."""
    from shapely.geometry import Point

    x0, y0, x1, y1 = ground.clear.bounds
    placed: list[PlantedChange] = []
    tried = dict.fromkeys(KINDS, 0)
    count = dict.fromkeys(KINDS, 0)
    while any(count[k] < per_kind and tried[k] < tries for k in KINDS):
        for kind in KINDS:
            if count[kind] >= per_kind:
                continue
            while tried[kind] < tries:
                tried[kind] += 1
                cx, cy = float(rng.uniform(x0, x1)), float(rng.uniform(y0, y1))
                if not ground.clear.contains(Point(cx, cy)):
                    continue
                made = _MAKERS[kind](rng, cx, cy, rules[kind].size, ground, rules[kind], small, theta)
                if made is None:
                    continue
                area, feats = made
                if any(area.distance(p.area) < spacing for p in placed):
                    continue
                placed.append(PlantedChange(kind, area, feats))
                count[kind] += 1
                break
    return placed, count


def _grid_angle(scene: Scene) -> float:
    """The street grid's angle (degrees, 0-90) from the scene's primary roads (straight grid lines)."""
    for f in scene.features:
        if f.tags.get("highway") == "primary" and f.geom.geom_type == "LineString":
            (xa, ya), (xb, yb) = f.geom.coords[0], f.geom.coords[-1]
            return math.degrees(math.atan2(yb - ya, xb - xa)) % 90.0
    return 0.0


def _largest(geom):
    parts = [p for p in getattr(geom, "geoms", [geom]) if p.geom_type == "Polygon" and not p.is_empty]
    return max(parts, key=lambda p: p.area) if parts else None


def clear_region(acq: Acquisition, small: bool, valid_before, valid_after, masks_before, masks_after):
    """Where a changed area may lie: both valid-data polygons, inside the cell (and the small window in
    small mode), at least :data:`CLOUD_CLEARANCE` m from both acquisitions' clouds and cloud shadows."""
    import shapely
    from shapely.geometry import box

    region = box(*grid.bounds(acq.cell))
    if small:
        gt = grid.cell_geotransform(acq.cell)
        c0, r0, s = acq.small_box
        region = region.intersection(box(gt[0] + c0 * gt[1], gt[3] + (r0 + s) * gt[5], gt[0] + (c0 + s) * gt[1], gt[3] + r0 * gt[5]))
    overlap = valid_before.intersection(valid_after).intersection(region).buffer(-3.0)
    dirty = shapely.union_all([m[k] for m in (masks_before, masks_after) for k in ("cloud", "cloud_shadow") if not m[k].is_empty])
    if dirty.is_empty:
        return overlap
    # 1 m beyond the clearance, against buffer round-off
    return overlap.difference(dirty.simplify(1.0).buffer(CLOUD_CLEARANCE + 1.0, quad_segs=4))


def planted_changes(
    scene: Scene, acq: Acquisition, seed: int, small: bool, valid_before, valid_after, masks_before, masks_after
) -> list[PlantedChange]:
    """The changes to plant in the later acquisition of ``acq.cell`` (``acq`` is either of its two).

    ``valid_*`` are the acquisitions' valid-data polygons and ``masks_*`` their
    :func:`~imagesim.imagery.sample.clouds.acquisition_masks` (``"cloud"``, ``"cloud_shadow"``), all
    in the cell's UTM metres. Deterministic from ``seed``; ``scene`` is not modified. Raises
    SampleDataError when the required number of sites cannot be placed.
    """
    import shapely

    clear = clear_region(acq, small, valid_before, valid_after, masks_before, masks_after)
    if clear.is_empty:
        raise SampleDataError(f"no cloud-free overlap of both acquisitions of cell {acq.cell} to plant changes in")
    shapely.prepare(clear)
    ground = _Ground(scene, shapely.box(*clear.bounds).buffer(50.0), clear)
    theta = _grid_angle(scene)
    rng = np.random.default_rng([seed, 0xC4A46E5, int(small)])
    if small:
        # The window is a town under a few clouds: when the clear room is scarce, smaller sites.
        for scale in _SMALL_SCALES:
            placed, count = _place(rng, ground, _rules(small, scale), 1, _SMALL_SPACING, small, theta, _SMALL_TRIES)
            if len(placed) >= SMALL_MIN_SITES and sum(1 for k in KINDS if count[k]) >= SMALL_MIN_SITES:
                break
    else:
        placed, count = _place(rng, ground, _rules(small), FULL_PER_KIND, FULL_SPACING, small, theta, _TRIES)
    kinds_placed = sum(1 for k in KINDS if count[k])
    if small:
        if len(placed) < SMALL_MIN_SITES or kinds_placed < SMALL_MIN_SITES:
            raise SampleDataError(
                f"could place only {len(placed)} planted changes of {kinds_placed} kinds in cell {acq.cell}'s small window "
                f"(seed {seed}); {SMALL_MIN_SITES} of {SMALL_MIN_SITES} kinds are needed"
            )
    else:
        short = [k for k in KINDS if count[k] < FULL_PER_KIND]
        if short:
            raise SampleDataError(
                f"could place only {', '.join(f'{count[k]} {k}' for k in short)} in cell {acq.cell} (seed {seed}); {FULL_PER_KIND} of each are needed"
            )
    return placed


def truth_geojson(
    planted: list[PlantedChange], before: Acquisition, after: Acquisition, zone: int, extra: dict[str, Any]
) -> dict[str, Any]:
    """The planted changes as an RFC 7946 FeatureCollection (WGS84 lon/lat, right-hand rings), one
    Feature per change; ``extra`` becomes the foreign member ``imagesim``."""
    import shapely
    from pyproj import Transformer
    from shapely.geometry import mapping

    tr = Transformer.from_crs(grid.epsg(after.cell, zone), 4326, always_xy=True)

    def to_ll(xy: np.ndarray) -> np.ndarray:
        lon, lat = tr.transform(xy[:, 0], xy[:, 1])
        return np.round(np.column_stack([lon, lat]), 8)

    feats = []
    for p in planted:
        geom = shapely.transform(shapely.orient_polygons(p.area), to_ll)
        feats.append(
            {
                "type": "Feature",
                "geometry": mapping(geom),
                "properties": {
                    "kind": p.kind,
                    "zone": zone,
                    "cell": after.cell,
                    "before_catalog_id": before.catalog_id,
                    "before_date": before.date,
                    "after_catalog_id": after.catalog_id,
                    "after_date": after.date,
                },
            }
        )
    return {"type": "FeatureCollection", "features": feats, "imagesim": dict(extra)}
