"""The sample's ARD vector masks: clouds and their shadows per acquisition, and the land-cover masks.

Clouds are unions of wavy-boundary puffs (a radius that is a sum of random harmonics, so each puff
is star-shaped and always a valid polygon) minus smaller inner puffs (holes), with a few detached
fragments: irregular multipart polygons with holes, a few hundred to a few thousand vertices each.
They are placed from the seed and the catalog id until about ``acq.cloud_cover`` of the imaged data
area is covered; the first one sits on the strip edge, so clouds also reach over no-data. Their
shadows are the clouds moved away from the sun by ``height * cot(sun elevation)`` (cloud layer at
1-2 km), minus the clouds themselves (a cloud hides its own shadow).

The water and healthy-vegetation masks are what the rendered scene shows of those classes: each
feature minus the features drawn over it, minus the clouds, clipped to the COG extent. The scene is
flat, so the terrain-shadow mask is empty (its GeoPackage holds a layer with no features).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

from imagesim import grid
from imagesim.imagery.sample.acquisitions import Acquisition
from imagesim.imagery.sample.scene import build_scene

__all__ = ["CLOUD_HEIGHT", "WATER_CLASSES", "VEGETATION_CLASSES", "cog_extent", "clouds_and_shadows", "acquisition_masks"]

_P = grid.COG_PIXELS
#: Cloud-base heights (m) of an acquisition's cloud layer; each cloud varies ±10 % around it.
CLOUD_HEIGHT = (1000.0, 2000.0)
#: Render classes (scene.Feature.cls) in the water and the healthy-vegetation masks.
WATER_CLASSES = frozenset({"water"})
VEGETATION_CLASSES = frozenset({"forest", "park", "grass", "meadow", "pitch"})


def cog_extent(cell: str):
    """The COG's extent (the cell plus its apron) as a shapely box in the cell's UTM metres."""
    from shapely.geometry import box

    gt = grid.cell_geotransform(cell)
    return box(gt[0], gt[3] + _P * gt[5], gt[0] + _P * gt[1], gt[3])


def _imaged_region(acq: Acquisition, small: bool):
    """Where the COG can hold imagery: the small window (small mode) or the whole COG extent."""
    from shapely.geometry import box

    if not small:
        return cog_extent(acq.cell)
    gt = grid.cell_geotransform(acq.cell)
    c0, r0, s = acq.small_box
    return box(gt[0] + c0 * gt[1], gt[3] + (r0 + s) * gt[5], gt[0] + (c0 + s) * gt[1], gt[3] + r0 * gt[5])


def _shadow_offset(acq: Acquisition, height: float) -> tuple[float, float]:
    """How far (dx, dy, metres) a cloud at ``height`` casts its shadow: away from the sun."""
    az = math.radians(acq.sun_azimuth)
    d = height / math.tan(math.radians(acq.sun_elevation))
    return -math.sin(az) * d, -math.cos(az) * d


def _puff(rng: np.random.Generator, cx: float, cy: float, r: float, spacing: float, rough: float = 0.45):
    """A star-shaped blob: radius ``r`` times 1 + a sum of harmonics (|sum| <= ``rough`` < 1)."""
    from shapely.geometry import Polygon

    n = int(np.clip(2 * math.pi * r / spacing, 48, 900))
    t = np.linspace(0.0, 2 * math.pi, n, endpoint=False)
    k = np.arange(2, max(3, min(n // 4, 60)))
    amp = rng.standard_normal(k.size) * k**-1.1
    amp *= rough / np.abs(amp).sum()
    phase = rng.uniform(0, 2 * math.pi, k.size)
    rr = 1.0 + amp @ np.sin(k[:, None] * t[None, :] + phase[:, None])
    return Polygon(np.column_stack([cx + r * rr * np.cos(t), cy + r * rr * np.sin(t)]))


def _cloud(rng: np.random.Generator, cx: float, cy: float, R: float, spacing: float, hole: bool):
    """One cloud of size ~``R``: a core puff, lobes, detached fragments; holes (always one if ``hole``)."""
    import shapely

    core = 0.6 * R
    puffs = [_puff(rng, cx, cy, core, spacing)]
    for _ in range(int(rng.integers(3, 8))):
        a, d = rng.uniform(0, 2 * math.pi), 0.55 * R * math.sqrt(rng.uniform())
        puffs.append(_puff(rng, cx + d * math.cos(a), cy + d * math.sin(a), R * rng.uniform(0.25, 0.5), spacing))
    for _ in range(int(rng.integers(0, 4))):
        a, d = rng.uniform(0, 2 * math.pi), R * rng.uniform(1.15, 1.6)
        puffs.append(_puff(rng, cx + d * math.cos(a), cy + d * math.sin(a), R * rng.uniform(0.08, 0.2), spacing))
    cloud = shapely.union_all(puffs)
    holes = []
    if hole:
        # inside the core puff whatever its shape: its radius is >= 0.55 * 0.6 R = 0.33 R > 0.05 R + 1.3 * 0.2 R
        a = rng.uniform(0, 2 * math.pi)
        holes.append(_puff(rng, cx + 0.05 * R * math.cos(a), cy + 0.05 * R * math.sin(a), 0.2 * R, spacing, rough=0.3))
    for _ in range(int(rng.integers(0, 3))):
        a, d = rng.uniform(0, 2 * math.pi), 0.45 * R * math.sqrt(rng.uniform())
        h = _puff(rng, cx + d * math.cos(a), cy + d * math.sin(a), R * rng.uniform(0.06, 0.14), spacing, rough=0.3)
        if cloud.contains(h.buffer(spacing)):
            holes.append(h)
    if holes:
        cloud = cloud.difference(shapely.union_all(holes))
    return cloud


def _strip_edge_point(valid_geom, region, rng: np.random.Generator):
    """A point on the strip edge: the valid polygon's outer boundary away from the imaged region's edge."""
    from shapely.geometry import Point

    polys = list(getattr(valid_geom, "geoms", [valid_geom]))
    outer = max(polys, key=lambda p: p.area).exterior
    edge = outer.difference(region.exterior.buffer(1.0))
    lines = list(getattr(edge, "geoms", [edge]))
    lines = [g for g in lines if g.geom_type == "LineString" and g.length > 0]
    if not lines:  # the valid polygon is the whole region: no strip edge
        return Point(region.centroid)
    line = max(lines, key=lambda g: g.length)
    return line.interpolate(float(rng.uniform(0.3, 0.7)), normalized=True)


def clouds_and_shadows(acq: Acquisition, valid_geom, seed: int, small: bool):
    """(clouds, cloud shadows) of ``acq`` as (Multi)Polygons in the cell's UTM metres, inside the COG extent.

    About ``acq.cloud_cover`` of the imaged data area is clouded; in small mode the clouds lie in and
    around the small window, some of them sunward of it so that their shadows fall into it.
    """
    import shapely
    from shapely import affinity

    rng = np.random.default_rng([seed, int(acq.catalog_id, 16) % (2**63), 0xC10D])
    extent = cog_extent(acq.cell)
    region = _imaged_region(acq, small)
    data = valid_geom.intersection(region)
    shapely.prepare(data)
    target = acq.cloud_cover * data.area
    # Cloud sizes (m) and boundary vertex spacing: a few per small window, a dozen or more per cell.
    r_min, r_max, spacing = (40.0, 95.0, 1.0) if small else (150.0, 480.0, 3.0)
    layer = float(rng.uniform(*CLOUD_HEIGHT))
    x0, y0, x1, y1 = region.bounds
    clouds: list[Any] = []
    shadows: list[Any] = []
    covered = 0.0
    union = shapely.Polygon()
    for i in range(80):
        height = layer * float(rng.uniform(0.9, 1.1))
        dx, dy = _shadow_offset(acq, height)
        if i == 0:
            p = _strip_edge_point(valid_geom, region, rng)
            cx, cy = p.x, p.y
        else:
            cx, cy = float(rng.uniform(x0, x1)), float(rng.uniform(y0, y1))
            if small and i % 3 == 2:  # sunward of the window: its shadow falls into it
                cx, cy = cx - dx, cy - dy
        # size it to what is still missing (area ~ 1.5 R²), never below r_min
        R = float(np.clip(math.sqrt(max(target - covered, 0.0) / 1.5), r_min, rng.uniform(r_min, r_max)))
        cloud = _cloud(rng, cx, cy, R, spacing, hole=i == 0)
        clouds.append(cloud)
        shadows.append(affinity.translate(cloud, dx, dy))
        covered += cloud.difference(union).intersection(data).area
        union = union.union(cloud)
        if covered >= target and i >= 1:
            break
    cloud_union = union.intersection(extent)
    shadow_union = shapely.union_all(shadows).difference(cloud_union).intersection(extent)
    return _polygonal(cloud_union), _polygonal(shadow_union)


def _polygonal(geom):
    """Only the polygon parts of ``geom`` (overlays can leave slivers of lines and points), as a MultiPolygon."""
    from shapely.geometry import MultiPolygon

    parts = [g for g in getattr(geom, "geoms", [geom]) if g.geom_type in ("Polygon", "MultiPolygon") and not g.is_empty]
    polys = [p for g in parts for p in getattr(g, "geoms", [g]) if p.area > 0.01]
    return MultiPolygon(polys)


@functools.lru_cache(maxsize=4)
def _landcover(seed: int, cell: str, classes: frozenset[str]):
    """What the rendered scene of ``seed`` shows of ``classes`` in ``cell``'s COG extent (painter's order)."""
    import shapely

    scene = build_scene(seed)
    extent = cog_extent(cell)
    geoms = [f.render_geom if f.render_geom is not None else f.geom for f in scene.features]
    drawn = [(i, g) for i, (f, g) in enumerate(zip(scene.features, geoms)) if f.cls and g.geom_type in ("Polygon", "MultiPolygon")]
    drawn = [(i, g) for i, g in drawn if g.intersects(extent)]
    ours = [(i, g) for i, g in drawn if scene.features[i].cls in classes]
    others = [(i, g) for i, g in drawn if scene.features[i].cls not in classes]
    if not ours:
        return _polygonal(shapely.Polygon())
    tree = shapely.STRtree([g for _i, g in others])
    order = np.array([i for i, _g in others], dtype=np.int64)
    visible = []
    for i, g in ours:
        hits = tree.query(g, predicate="intersects")
        above = [others[j][1] for j in hits if order[j] > i]  # drawn later: on top
        visible.append(g.difference(shapely.union_all(above)) if above else g)
    return _polygonal(shapely.union_all(visible).intersection(extent))


def acquisition_masks(acq: Acquisition, valid_geom, seed: int, small: bool) -> dict[str, Any]:
    """The mask geometries of ``acq`` by imagery.ard.MASK_FILES key (MultiPolygons, cell UTM metres)."""
    from shapely.geometry import MultiPolygon

    clouds, shadows = clouds_and_shadows(acq, valid_geom, seed, small)
    # Clouds hide the ground: what is under them is neither water nor vegetation in the image.
    return {
        "cloud": clouds,
        "cloud_shadow": shadows,
        "terrain_shadow": MultiPolygon(),  # flat scene: no terrain shadow
        "water": _polygonal(_landcover(seed, acq.cell, WATER_CLASSES).difference(clouds)),
        "vegetation": _polygonal(_landcover(seed, acq.cell, VEGETATION_CLASSES).difference(clouds)),
    }
