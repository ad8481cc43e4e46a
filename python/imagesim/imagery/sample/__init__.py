"""`imagesim sample-data`: a synthetic but realistic Maxar ARD delivery plus its OpenStreetMap data.

What it writes (DESIGN.md §2)::

    <dest>/ard/<zone>/<qk12>/<YYYY-MM-DD>/<catid>-visual.tif      COG, 17,408² px, 3 × uint8, 512 px tiles
                                         <catid>.json              acquisition metadata (STAC-like)
                                         <catid>-data-mask.gpkg    valid-data polygon(s), cell UTM CRS
    <dest>/sample.osm.pbf                                          the same scene as OSM data (WGS84)

The scene (land cover, water, roads, railway, buildings, parking, pitches) is a vector model built
from ``seed`` in the zone's UTM metres. It is rasterized window by window with GDAL into a feature-code
raster, coloured through look-up tables with procedural texture, shaded per acquisition (lighting,
haze, building shadows) and masked by an irregular strip edge: pixels outside the acquisition's
valid-data polygon are exactly (0, 0, 0) and whole 512 px blocks of them are left sparse in the COG;
valid pixels are clamped to >= 1 in every band. The same polygons are written to the OSM file, so
labels derived from it line up with the pixels.
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from imagesim import grid
from imagesim.errors import InvalidArgumentError, OutputExistsError, SampleDataError
from imagesim.fsutil import atomic_path

__all__ = ["SampleSummary", "write_sample", "ZONE", "CELLS", "ACQUISITIONS"]

ZONE = 10
#: Two west-east adjacent level-12 cells in UTM zone 10 north (x 550–560 km, y 4,180–4,185 km).
CELLS = ("120020223032", "120020223033")
OSM_FILE = "sample.osm.pbf"
MARKER = ".imagesim-sample"

# Render windows: rows of this many pixels (a multiple of the 512 px block); ~0.35 GB working set each.
_CHUNK_ROWS = 512
_P = grid.COG_PIXELS
# 17,408 / 2^6 = 272 <= 512: the overview count GDAL's COG driver picks for an ARD COG.
_OVERVIEW_LEVELS = 6


@dataclass(frozen=True)
class Acquisition:
    cell: str
    catalog_id: str
    datetime: str  # ISO 8601 UTC
    platform: str
    off_nadir: float
    sun_elevation: float
    sun_azimuth: float
    cloud_cover: float
    # Colour/lighting: per-band gain, haze offset, shadow darkening.
    gain: tuple[float, float, float]
    haze: tuple[float, float, float]
    shadow: float
    # Strip edge (pixel coordinates of the COG): a point on the edge in full mode, the edge's
    # direction in degrees (0 = east, 90 = south in pixel space) and the side that holds data.
    edge_point: tuple[float, float]
    edge_angle: float
    edge_side: int  # +1: data on the left of the direction (pixel space), -1: on the right
    # Small mode: the window that holds imagery (col, row, size) and where the edge crosses it.
    small_box: tuple[int, int, int]
    small_edge_frac: float

    @property
    def date(self) -> str:
        return self.datetime[:10]


ACQUISITIONS: tuple[Acquisition, ...] = (
    Acquisition(
        cell=CELLS[0], catalog_id="104001008A3C21F0", datetime="2023-06-14T19:05:31.412Z", platform="WV03",
        off_nadir=14.2, sun_elevation=71.3, sun_azimuth=128.4, cloud_cover=0.0,
        gain=(1.00, 1.00, 0.98), haze=(6.0, 8.0, 12.0), shadow=0.55,
        edge_point=(3400.0, 0.0), edge_angle=83.0, edge_side=+1,
        small_box=(6300, 5400, 2560), small_edge_frac=0.35,
    ),
    Acquisition(
        cell=CELLS[0], catalog_id="103001010B7D4E52", datetime="2024-02-20T18:52:10.087Z", platform="WV02",
        off_nadir=22.7, sun_elevation=39.8, sun_azimuth=158.9, cloud_cover=0.02,
        gain=(0.93, 0.95, 1.04), haze=(14.0, 16.0, 22.0), shadow=0.45,
        edge_point=(0.0, 14200.0), edge_angle=-14.0, edge_side=+1,
        small_box=(6300, 5400, 2560), small_edge_frac=0.6,
    ),
    Acquisition(
        cell=CELLS[1], catalog_id="104001008F12A9C7", datetime="2023-09-03T19:12:44.930Z", platform="WV03",
        off_nadir=9.6, sun_elevation=58.1, sun_azimuth=146.2, cloud_cover=0.0,
        gain=(1.04, 1.01, 0.95), haze=(8.0, 8.0, 10.0), shadow=0.5,
        edge_point=(14300.0, 0.0), edge_angle=97.0, edge_side=-1,
        small_box=(8000, 9000, 2560), small_edge_frac=0.3,
    ),
)


@dataclass
class SampleSummary:
    root: Path  # the ARD root (<dest>/ard)
    cogs: list[Path]  # every <catid>-visual.tif, in ACQUISITIONS order
    osm_pbf: Path
    zone: int
    cells: list[str]  # level-12 quadkeys
    catalog_ids: list[str]  # same order as cogs
    seconds: float = 0.0
    valid_fractions: dict[str, float] = field(default_factory=dict)  # catalog id -> valid-pixel fraction


def write_sample(
    dest: str | Path,
    *,
    seed: int = 0,
    small: bool = False,
    compression: str = "jpeg",
    overwrite: bool = False,
    progress: Callable[[str], None] | None = None,
) -> SampleSummary:
    """Write the sample ARD delivery and its OSM data under ``dest``; return what was written.

    ``small`` keeps the true ARD geometry (17,408 px COGs, same transform, 512 px tiles) but puts
    imagery only in a ~2,560 px window of each cell (the rest is sparse no-data), so it writes in
    seconds. ``compression`` is ``"jpeg"`` (YCbCr, quality 90, like ARD) or ``"deflate"`` (lossless).
    Raises OutputExistsError when ``dest`` already holds a sample and ``overwrite`` is false.
    """
    compression = str(compression).lower()
    if compression not in ("jpeg", "deflate"):
        raise InvalidArgumentError(f"compression must be 'jpeg' or 'deflate', not {compression!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InvalidArgumentError(f"seed must be a non-negative integer, not {seed!r}")
    seed = int(seed)
    say = progress or (lambda _msg: None)
    dest = Path(dest)
    root = dest / "ard"
    pbf = dest / OSM_FILE
    if dest.exists() and not dest.is_dir():
        raise InvalidArgumentError(f"{dest} exists and is not a directory")
    if (root.exists() and any(root.iterdir())) or pbf.exists() or (dest / MARKER).exists():
        if not overwrite:
            raise OutputExistsError(f"{dest} already holds a sample delivery (use overwrite to replace it)")
        shutil.rmtree(root, ignore_errors=True)
        pbf.unlink(missing_ok=True)
        (dest / MARKER).unlink(missing_ok=True)

    from osgeo import gdal

    gdal.UseExceptions()
    t0 = time.perf_counter()
    # The temporary source GeoTIFF is written once, sequentially: a small block cache is enough and
    # keeps the whole run near 2.5 GB (GDAL's default is 5 % of RAM). Restored afterwards.
    cache_max = gdal.GetCacheMax()
    gdal.SetCacheMax(min(cache_max, 640 * 1024 * 1024))
    try:
        dest.mkdir(parents=True, exist_ok=True)
        say(f"building the synthetic scene (seed {seed})")
        scene = _build_scene(seed)
        say(f"scene: {len(scene.features)} features")
        cogs: list[Path] = []
        fractions: dict[str, float] = {}
        for acq in ACQUISITIONS:
            folder = root / str(ZONE) / acq.cell / acq.date
            folder.mkdir(parents=True, exist_ok=True)
            t1 = time.perf_counter()
            cog = folder / f"{acq.catalog_id}-visual.tif"
            valid_geom = _valid_polygon(acq, small)
            frac = _write_cog(cog, scene, acq, valid_geom, seed, small, compression)
            fractions[acq.catalog_id] = frac
            _write_mask(folder / f"{acq.catalog_id}-data-mask.gpkg", valid_geom, acq.cell)
            _write_json(folder / f"{acq.catalog_id}.json", _metadata(acq, valid_geom, frac))
            cogs.append(cog)
            say(f"{cog.relative_to(dest)}: {frac:.1%} valid, {time.perf_counter() - t1:.1f} s")
        t1 = time.perf_counter()
        n = _write_osm(pbf, scene)
        say(f"{OSM_FILE}: {n} elements, {time.perf_counter() - t1:.1f} s")
        _write_json(dest / MARKER, {"seed": seed, "small": small, "compression": compression, "zone": ZONE,
                                   "cells": list(CELLS), "catalog_ids": [a.catalog_id for a in ACQUISITIONS]})
    except (OutputExistsError, InvalidArgumentError):
        raise
    except (RuntimeError, OSError, ValueError) as exc:
        raise SampleDataError(f"could not write the sample delivery to {dest}: {exc}") from exc
    finally:
        gdal.SetCacheMax(cache_max)
    return SampleSummary(
        root=root, cogs=cogs, osm_pbf=pbf, zone=ZONE, cells=list(CELLS),
        catalog_ids=[a.catalog_id for a in ACQUISITIONS], seconds=time.perf_counter() - t0,
        valid_fractions=fractions,
    )


# --------------------------------------------------------------------------------------------
# Scene model
# --------------------------------------------------------------------------------------------

# Render classes: (name, texture amplitude of the 8 px field, of the low-frequency field, fine noise DN)
_CLASSES = [
    ("background", 0.10, 0.16, 5.0),
    ("grass", 0.08, 0.08, 4.0),
    ("meadow", 0.10, 0.11, 5.0),
    ("forest", 0.38, 0.10, 5.0),
    ("farmland", 0.04, 0.08, 4.0),
    ("water", 0.015, 0.05, 1.5),
    ("residential", 0.12, 0.07, 4.0),
    ("industrial", 0.05, 0.06, 4.0),
    ("park", 0.20, 0.06, 4.0),
    ("parking", 0.02, 0.03, 3.0),
    ("pitch", 0.02, 0.02, 2.5),
    ("rail", 0.12, 0.03, 6.0),
    ("road", 0.02, 0.04, 3.0),
    ("building", 0.01, 0.01, 2.5),
]
_CLS = {name: i for i, (name, *_rest) in enumerate(_CLASSES)}
_ROAD_WIDTH = {"motorway": 26.0, "primary": 13.0, "residential": 8.0, "service": 4.5}
_ROAD_RGB = {"motorway": (108, 108, 110), "primary": (122, 120, 117), "residential": (134, 131, 126),
             "service": (148, 143, 136)}


@dataclass
class Feature:
    geom: object  # shapely geometry in UTM metres: Polygon/MultiPolygon (areas) or LineString (lines)
    tags: dict[str, str]
    cls: str  # render class; "" = OSM only (not rendered)
    rgb: tuple[float, float, float] = (0.0, 0.0, 0.0)
    render_geom: object | None = None  # what is rasterized, when it differs (buffered lines)
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
def _build_scene(seed: int) -> Scene:
    """The vector scene of ``seed`` (cached: it is never modified after construction)."""
    import shapely
    from shapely import affinity
    from shapely.geometry import LineString, Polygon, box
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
            for ln in (LineString([rot_pt(cx + k * D, cy - L), rot_pt(cx + k * D, cy + L)]),
                       LineString([rot_pt(cx - L, cy + k * D), rot_pt(cx + L, cy + k * D)])):
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
                feats_land.append(Feature(f, {"landuse": "farmland"}, "farmland", crops[int(rng.integers(len(crops)))],
                                          stripe=(ang, float(rng.uniform(2.5, 7.0)), float(rng.uniform(0.06, 0.14)), 1)))
        # a farm reservoir now and then
        if rng.uniform() < 0.25:
            p = sq.representative_point()
            pond = _blob(rng, p.x, p.y, float(rng.uniform(25, 45)), 0.15).intersection(sq)
            if not pond.is_empty:
                feats_water.append(Feature(pond, {"landuse": "reservoir", "natural": "water", "water": "reservoir"},
                                           "water", (52, 74, 78)))
    for kind, tags, rgb in (("meadow", {"landuse": "meadow"}, (146, 148, 94)),
                            ("grass", {"landuse": "grass"}, (108, 132, 72))):
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
    feats_water.append(Feature(lake_mp, {"natural": "water", "water": "lake", "name": "Sample Lake"}, "water", (38, 62, 78),
                               osm_relation=True))
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
            for ln in (LineString([rot_pt(x0 + k * sp, y0), rot_pt(x0 + k * sp, y0 + D)]),
                       LineString([rot_pt(x0, y0 + k * sp), rot_pt(x0 + D, y0 + k * sp)])):
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
                house_polys.append((shed, [(196, 196, 194), (162, 166, 172), (120, 132, 140)][int(rng.integers(3))], "industrial",
                                    float(rng.uniform(9, 14))))
                lot = rot(box(bx, by + h + 8, bx + min(w, 120), by + h + 8 + rng.uniform(30, 60)))
                feats_top.append(Feature(lot, {"amenity": "parking", "parking": "surface"}, "parking", (92, 92, 94),
                                         stripe=(math.radians(theta), 2.6, 0.9, 2)))
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
            feats_top.append(Feature(pitch, {"leisure": "pitch", "sport": "soccer"}, "pitch", (78, 142, 60),
                                     stripe=(math.radians(theta), 10.0, 0.06, 3)))
        lot = rot(box(x0 + 60, y0 + 250, x0 + 160, y0 + 290))
        feats_top.append(Feature(lot, {"amenity": "parking"}, "parking", (96, 96, 98), stripe=(math.radians(theta), 2.6, 0.9, 2)))
    # The town park (always present): a soccer pitch and a car park; streets and houses give way.
    tp = unrot_pt(town)
    town_park = rot(box(tp[0] - 90, tp[1] - 60, tp[0] + 90, tp[1] + 95))
    town_feats = [
        Feature(town_park, {"leisure": "park", "name": "Town Park"}, "park", (98, 134, 66)),
        Feature(rot(box(tp[0] - 52, tp[1] - 34, tp[0] + 53, tp[1] + 34)), {"leisure": "pitch", "sport": "soccer"}, "pitch",
                (78, 142, 60), stripe=(math.radians(theta), 10.0, 0.06, 3)),
        Feature(rot(box(tp[0] - 52, tp[1] + 45, tp[0] + 40, tp[1] + 80)), {"amenity": "parking", "parking": "surface"},
                "parking", (94, 94, 96), stripe=(math.radians(theta), 2.6, 0.9, 2)),
    ]
    streets = [(kind, ln.difference(town_park)) for kind, ln in
               (item if isinstance(item, tuple) else ("residential", item) for item in streets)]

    # Roads (render as buffered polygons, OSM as centre lines).
    for ln in primary_lines:
        for part in getattr(ln, "geoms", [ln]):
            roads.append(_road(part, "primary"))
    for item in streets:
        kind, ln = item if isinstance(item, tuple) else ("residential", item)
        ln = ln.intersection(region)
        for part in getattr(ln, "geoms", [ln]):
            if isinstance(part, LineString) and part.length > 20:
                roads.append(_road(part, kind))
    for part in getattr(motorway, "geoms", [motorway]):
        roads.append(_road(part, "motorway", {"ref": "I-580"}))
    rail = []
    for part in getattr(railway, "geoms", [railway]):
        rail.append(Feature(part, {"railway": "rail", "gauge": "1435"}, "rail", (118, 108, 98), render_geom=part.buffer(4.0, cap_style="flat")))

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


def _road(line, kind: str, extra: dict[str, str] | None = None) -> Feature:
    tags = {"highway": kind}
    if kind == "motorway":
        tags.update({"oneway": "no", "lanes": "6"})
    if extra:
        tags.update(extra)
    return Feature(line, tags, "road", _ROAD_RGB[kind], render_geom=line.buffer(_ROAD_WIDTH[kind] / 2, cap_style="flat"))


# --------------------------------------------------------------------------------------------
# Valid-data polygons (strip edges)
# --------------------------------------------------------------------------------------------


def _valid_polygon(acq: Acquisition, small: bool):
    """The acquisition's valid-data polygon in the cell's UTM metres (inside the COG's extent)."""
    from shapely import affinity
    from shapely.geometry import Polygon, box

    rng = np.random.default_rng(int(acq.catalog_id, 16) % (2**63))
    ang = math.radians(acq.edge_angle)
    d = np.array([math.cos(ang), math.sin(ang)])
    n = np.array([d[1], -d[0]]) * acq.edge_side  # data side (pixel space, y down)
    if small:
        c0, r0, s = acq.small_box
        extent = box(c0, r0, c0 + s, r0 + s)
        # put the edge through the window so that about small_edge_frac of it is cut off
        centre = np.array([c0 + s / 2, r0 + s / 2])
        p = centre - n * (0.5 - acq.small_edge_frac) * s * 0.9
        amp, wave = 45.0, 900.0
    else:
        extent = box(0, 0, _P, _P)
        p = np.array(acq.edge_point, float)
        amp, wave = 160.0, 5200.0
    t = np.arange(-30000.0, 30000.0 + 1, 40.0)
    ph1, ph2 = rng.uniform(0, 2 * np.pi, 2)
    off = amp * np.sin(2 * np.pi * t / wave + ph1) + 0.35 * amp * np.sin(2 * np.pi * t / (wave / 3.7) + ph2)
    edge = p[None] + t[:, None] * d[None] + off[:, None] * n[None]
    far = [edge[-1] + 60000 * n, edge[0] + 60000 * n]
    half_plane = Polygon(np.vstack([edge, far]))
    if not half_plane.is_valid:
        half_plane = half_plane.buffer(0)
    valid = half_plane.intersection(extent)
    # A small ragged no-data hole inside the imagery (a dropped scan segment), centred in one z17
    # chip so that chip's four corners stay valid: the case the original corner rule misses.
    inside = p + n * (s * 0.3 if small else 1500.0)
    cx, cy = (np.floor((inside - grid.APRON) / 512.0) * 512.0 + grid.APRON + 256.0).tolist()
    k = np.arange(24)
    radius = 70.0 + 25.0 * rng.uniform(-1, 1, k.size)
    hole = Polygon(np.column_stack([cx + radius * np.cos(2 * np.pi * k / k.size), cy + radius * np.sin(2 * np.pi * k / k.size)]))
    if valid.contains(hole.buffer(200.0)):
        valid = valid.difference(hole)
    gt = grid.cell_geotransform(acq.cell)
    # pixel (col, row) -> UTM (x, y)
    return affinity.affine_transform(valid, [gt[1], 0.0, 0.0, gt[5], gt[0], gt[3]])


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


class _Layers:
    """OGR in-memory layers of the scene (feature codes), the shadows and the valid-data polygon."""

    def __init__(self, scene: Scene, acq: Acquisition, valid_geom, epsg: int) -> None:
        from osgeo import ogr, osr
        from shapely import affinity

        self.srs = osr.SpatialReference()
        self.srs.ImportFromEPSG(epsg)
        self.srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
        drv = ogr.GetDriverByName("Memory")
        self.ds = drv.CreateDataSource("scene")
        import shapely

        # Only what can reach the valid-data polygon (shadows reach up to ~40 m).
        feats = [f for f in scene.features if f.cls]
        geoms = np.array([f.render_geom if f.render_geom is not None else f.geom for f in feats], dtype=object)
        reach = shapely.box(*valid_geom.bounds).buffer(50.0)
        keep = shapely.intersects(reach, geoms)
        codes = [i + 1 for i, f in enumerate(scene.features) if f.cls]
        self.scene = self._layer("scene", [(g, c) for g, c, k in zip(geoms, codes, keep) if k])
        # Building shadows: the building swept away from the sun.
        az = math.radians(acq.sun_azimuth)
        cot = 1.0 / math.tan(math.radians(acq.sun_elevation))
        bld = [f for f, k in zip(feats, keep) if k and f.cls == "building" and f.height > 0]
        shadows = []
        if bld:
            base = np.array([f.geom for f in bld], dtype=object)
            h = np.array([f.height for f in bld]) * cot
            dx, dy = -math.sin(az) * h, -math.cos(az) * h
            moved = np.array([affinity.translate(g, x, y) for g, x, y in zip(base, dx, dy)], dtype=object)
            hulls = shapely.convex_hull(shapely.union(base, moved))
            shadows = [(g, 1) for g in hulls]
        self.shadow = self._layer("shadow", shadows)
        self.valid = self._layer("valid", [(valid_geom, 1)])
        self._lock = threading.Lock()  # OGR layers (spatial filter + reading) are not thread-safe

    def _layer(self, name: str, items):
        from osgeo import ogr

        lyr = self.ds.CreateLayer(name, self.srs, ogr.wkbUnknown)
        lyr.CreateField(ogr.FieldDefn("code", ogr.OFTInteger))
        defn = lyr.GetLayerDefn()
        for geom, code in items:
            feat = ogr.Feature(defn)
            feat.SetField("code", int(code))
            feat.SetGeometry(ogr.CreateGeometryFromWkb(geom.wkb))
            lyr.CreateFeature(feat)
        return lyr

    def rasterize(self, layer, gt, out: np.ndarray, mem) -> np.ndarray:
        """Burn ``layer`` (attribute ``code`` for Int32 ``out``, else 1) into ``out`` through ``mem``."""
        from osgeo import gdal

        height, width = out.shape
        attribute = out.dtype == np.int32
        mem.SetGeoTransform(gt)
        band = mem.GetRasterBand(1)
        band.Fill(0)
        x0, y1 = gt[0], gt[3]
        x1, y0 = gt[0] + width * gt[1], gt[3] + height * gt[5]
        opts = ["ATTRIBUTE=code"] if attribute else []
        with self._lock:
            layer.SetSpatialFilterRect(x0, y0, x1, y1)
            try:
                gdal.RasterizeLayer(mem, [1], layer, burn_values=[] if attribute else [1], options=opts)
            finally:
                layer.SetSpatialFilter(None)
        band.ReadAsArray(buf_obj=out)
        return out


class _Work:
    """Reusable buffers of one render thread for one window shape (avoids page-fault churn)."""

    def __init__(self, h: int, w: int, wkt: str) -> None:
        from osgeo import gdal

        mem = gdal.GetDriverByName("MEM")
        self.mem_i = mem.Create("", w, h, 1, gdal.GDT_Int32)
        self.mem_b = mem.Create("", w, h, 1, gdal.GDT_Byte)
        for ds in (self.mem_i, self.mem_b):
            ds.SetProjection(wkt)
        self.valid = np.zeros((h, w), np.uint8)
        self.shadow = np.zeros((h, w), np.uint8)
        self.code = np.zeros((h, w), np.int32)
        self.idx = np.zeros((h, w), np.intp)
        self.cls = np.zeros((h, w), np.uint8)
        self.shade = np.zeros((h, w), np.float32)
        self.t1 = np.zeros((h, w), np.float32)
        self.t2 = np.zeros((h, w), np.float32)


def _luts(scene: Scene):
    n = len(scene.features) + 1
    cls = np.zeros(n, np.uint8)
    rgb = np.zeros((3, n), np.float32)
    rgb[:, 0] = (150, 140, 112)  # bare ground / scrub where nothing is mapped
    stripe = np.zeros((4, n), np.float32)
    for i, f in enumerate(scene.features, start=1):
        if f.cls:
            cls[i] = _CLS[f.cls]
            rgb[:, i] = f.rgb
            stripe[:, i] = f.stripe
    amp = np.array([c[1:] for c in _CLASSES], np.float32).T.copy()  # (3, classes)
    amp[2] /= 127.5  # fine noise is drawn as 0..255 around 127.5
    not_roof = (cls != _CLS["building"]).astype(np.uint8)
    # everything indexed by feature code (0 = nothing mapped)
    return rgb, stripe, np.ascontiguousarray(amp[:, cls]), not_roof


def _upsample(coarse: np.ndarray, factor: int, r0: int, c0: int, out: np.ndarray, tmp: np.ndarray) -> np.ndarray:
    """Bilinear upsampling of a coarse noise field into ``out`` (float32, COG rows r0.., cols c0..).

    ``coarse[i, j]`` sits at pixel ((i - 1/2) * factor, (j - 1/2) * factor): one coarse sample of
    margin on every side, so every window interpolates without edge cases. ``tmp`` is scratch.
    """
    h, w = out.shape
    rr = (np.arange(r0, r0 + h, dtype=np.float32) + 0.5) / factor + 0.5
    cc = (np.arange(c0, c0 + w, dtype=np.float32) + 0.5) / factor + 0.5
    ri = rr.astype(np.int64)
    ci = cc.astype(np.int64)
    fr = (rr - ri.astype(np.float32))[:, None]
    fc = (cc - ci.astype(np.float32))[None, :]
    lo, hi = int(ri.min()), int(ri.max()) + 2
    sub = coarse[lo:hi]
    rows = sub[:, ci] * (1 - fc) + sub[:, ci + 1] * fc  # (coarse rows, w), small
    ri -= lo
    np.take(rows, ri + 1, axis=0, out=out)
    np.take(rows, ri, axis=0, out=tmp)
    out -= tmp
    out *= fr
    out += tmp
    return out


def _render_window(layers: _Layers, luts, noise, fine_table: np.ndarray, acq: Acquisition, gt, c0: int, r0: int,
                   work: _Work, rng: np.random.Generator) -> np.ndarray:
    """Pixels (3, h, w) uint8 of the COG window at (c0, r0); exactly 0 outside the valid polygon."""
    rgb_lut, stripe_lut, amp, roof = luts
    h, w = work.code.shape
    wgt = (gt[0] + c0 * gt[1], gt[1], 0.0, gt[3] + r0 * gt[5], 0.0, gt[5])
    valid = layers.rasterize(layers.valid, wgt, work.valid, work.mem_b)
    out = np.zeros((3, h, w), np.uint8)
    if not valid.any():
        return out
    code = layers.rasterize(layers.scene, wgt, work.code, work.mem_i)
    shadow = layers.rasterize(layers.shadow, wgt, work.shadow, work.mem_b)
    idx = work.idx  # np.take converts other index types to intp on every call: do it once
    idx[...] = code
    n8, nlo = noise
    shade, t1, t2 = work.shade, work.t1, work.t2
    _upsample(n8, 8, r0, c0, shade, t1)
    shade *= np.take(amp[0], idx, out=t1)
    _upsample(nlo, 64, r0, c0, t1, t2)
    t1 *= np.take(amp[1], idx, out=t2)
    shade += t1
    shade += np.float32(1.0)
    # Oriented textures: crop rows (1), parking stall lines (2), mowing stripes (3).
    sel = np.flatnonzero(np.take(stripe_lut[3], idx, out=t1))
    if sel.size:
        rows, cols = np.divmod(sel, w)
        cf = code.reshape(-1)[sel]
        ang = stripe_lut[0][cf]
        u = (cols + c0).astype(np.float32) * np.cos(ang) - (rows + r0).astype(np.float32) * np.sin(ang)
        u *= np.float32(grid.PIXEL_SIZE) / stripe_lut[1][cf]
        phase = u - np.floor(u)
        k = stripe_lut[3][cf]
        samp = stripe_lut[2][cf]
        tex = np.where(k == 1, np.sin(np.float32(2 * np.pi) * phase),
                       np.where(k == 2, (phase < 0.12).astype(np.float32), np.where(phase < 0.5, 1.0, -1.0).astype(np.float32)))
        shade.reshape(-1)[sel] += samp * tex
    # Building shadows darken whatever they fall on, except the roofs themselves.
    sh = shadow
    sh &= np.take(roof, idx, out=work.cls)
    sh = sh.view(bool)
    np.putmask(shade, sh, shade * np.float32(acq.shadow))
    # Fine (sensor/clutter) noise: a slice of a pre-drawn table, scaled per class.
    start = int(rng.integers(0, fine_table.shape[0] - h + 1))
    fine = np.take(amp[2], idx, out=t2)
    fine *= fine_table[start:start + h, :w]
    for b in range(3):
        band = np.take(rgb_lut[b], idx, out=t1)  # gain already folded into the table
        band *= shade
        band += fine
        band += np.float32(acq.haze[b] + 0.5)
        np.clip(band, 1.0, 255.0, out=band)
        ob = out[b]
        ob[...] = band
        ob *= valid
    return out


def _noise_fields(seed: int, cell: str):
    """Texture noise of a cell: crowns/clumps (8 px) and low-frequency variation (64 px + 512 px)."""
    rng = np.random.default_rng([seed, int(cell, 4)])
    n8 = rng.standard_normal((_P // 8 + 3, _P // 8 + 3)).astype(np.float32)
    n64 = rng.standard_normal((_P // 64 + 3, _P // 64 + 3)).astype(np.float32)
    n512 = rng.standard_normal((_P // 512 + 3, _P // 512 + 3)).astype(np.float32)
    # fold the 512 px field into the 64 px grid
    big = _upsample(n512, 8, 0, 0, np.empty_like(n64), np.empty_like(n64))
    return n8, (0.7 * n64 + 0.9 * big).astype(np.float32)


def _windows(acq: Acquisition, small: bool) -> Iterator[tuple[int, int, int, int]]:
    if small:
        c0, r0, s = acq.small_box
        bc0, br0 = (c0 // 512) * 512, (r0 // 512) * 512
        bc1, br1 = -(-(c0 + s) // 512) * 512, -(-(r0 + s) // 512) * 512
        for r in range(br0, br1, _CHUNK_ROWS):
            yield bc0, r, bc1 - bc0, min(_CHUNK_ROWS, br1 - r)
    else:
        for r in range(0, _P, _CHUNK_ROWS):
            yield 0, r, _P, min(_CHUNK_ROWS, _P - r)


def _overviews(px: np.ndarray, valid: np.ndarray) -> Iterator[np.ndarray]:
    """2x, 4x, ... averages of the valid pixels of a window (0 where a cell has none)."""
    s = px.astype(np.uint32)
    c = valid.astype(np.uint32)
    for _k in range(_OVERVIEW_LEVELS):
        s = s[:, 0::2, 0::2] + s[:, 1::2, 0::2] + s[:, 0::2, 1::2] + s[:, 1::2, 1::2]
        c = c[0::2, 0::2] + c[1::2, 0::2] + c[0::2, 1::2] + c[1::2, 1::2]
        level = (s + c // 2) // np.maximum(c, 1)
        yield level.astype(np.uint8)


def _write_cog(path: Path, scene: Scene, acq: Acquisition, valid_geom, seed: int, small: bool, compression: str) -> float:
    from osgeo import gdal

    epsg = grid.epsg(acq.cell, ZONE)
    gt = grid.cell_geotransform(acq.cell)
    layers = _Layers(scene, acq, valid_geom, epsg)
    rgb_lut, stripe_lut, amp, not_roof = _luts(scene)
    luts = (rgb_lut * np.asarray(acq.gain, np.float32)[:, None], stripe_lut, amp, not_roof)
    noise = _noise_fields(seed, acq.cell)
    acq_key = int(acq.catalog_id, 16) % (2**63)
    windows = list(_windows(acq, small))
    max_w = max(w for _c, _r, w, _h in windows)
    fine_table = np.random.default_rng([seed, acq_key]).integers(0, 256, size=(2 * _CHUNK_ROWS, max_w), dtype=np.uint8)
    fine_table = fine_table.astype(np.float32) - np.float32(127.5)
    n_valid = 0
    fd, src_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".src.tif", dir=path.parent)
    os.close(fd)

    local = threading.local()
    wkt = layers.srs.ExportToWkt()

    def render(win: tuple[int, int, int, int]) -> tuple[tuple[int, int, int, int], np.ndarray]:
        c0, r0, w, h = win
        works = local.__dict__.setdefault("works", {})
        work = works.get((h, w))
        if work is None:
            work = works[(h, w)] = _Work(h, w, wkt)
        rng = np.random.default_rng([seed, acq_key, r0, c0])
        return win, _render_window(layers, luts, noise, fine_table, acq, gt, c0, r0, work, rng)

    try:
        src = gdal.GetDriverByName("GTiff").Create(
            src_name, _P, _P, 3, gdal.GDT_Byte,
            ["TILED=YES", "BLOCKXSIZE=512", "BLOCKYSIZE=512", "COMPRESS=NONE", "SPARSE_OK=TRUE", "INTERLEAVE=PIXEL"])
        src.SetGeoTransform(gt)
        src.SetProjection(layers.srs.ExportToWkt())
        for b in range(3):
            src.GetRasterBand(b + 1).SetNoDataValue(0)
            src.GetRasterBand(b + 1).SetColorInterpretation([gdal.GCI_RedBand, gdal.GCI_GreenBand, gdal.GCI_BlueBand][b])
        # Overview levels as the COG driver would choose them (down to <= one 512 px block); we fill
        # them ourselves from each rendered window (no-data-aware average), which is much faster than
        # letting GDAL average 17,408² mostly-empty pixels, and keeps empty overview blocks sparse.
        src.BuildOverviews("NONE", [2**k for k in range(1, _OVERVIEW_LEVELS + 1)])
        with ThreadPoolExecutor(max_workers=min(2, os.cpu_count() or 1)) as pool:
            for i in range(0, len(windows), 4):  # bounded: at most 4 rendered windows in memory
                for (c0, r0, w, h), px in pool.map(render, windows[i:i + 4]):
                    valid = px[0] > 0
                    count = int(np.count_nonzero(valid))
                    if not count:
                        continue
                    n_valid += count
                    src.WriteRaster(c0, r0, w, h, px, band_list=[1, 2, 3])
                    for k, level in enumerate(_overviews(px, valid), start=1):
                        for b in range(3):
                            src.GetRasterBand(b + 1).GetOverview(k - 1).WriteArray(level[b], c0 >> k, r0 >> k)
        src.FlushCache()
        opts = ["BLOCKSIZE=512", "OVERVIEWS=AUTO", "SPARSE_OK=TRUE", "NUM_THREADS=ALL_CPUS", "BIGTIFF=IF_SAFER"]
        if compression == "jpeg":
            opts += ["COMPRESS=JPEG", "QUALITY=90", "OVERVIEW_COMPRESS=JPEG", "OVERVIEW_QUALITY=90"]
        else:
            opts += ["COMPRESS=DEFLATE", "PREDICTOR=2", "LEVEL=6", "OVERVIEW_COMPRESS=DEFLATE", "OVERVIEW_PREDICTOR=2"]
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.tif")
        try:
            out = gdal.GetDriverByName("COG").CreateCopy(str(tmp), src, options=opts)
            if out is None:
                raise SampleDataError(f"GDAL could not write {path}")
            out = None
            _publish(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        src = None
    finally:
        for p in (src_name, src_name + ".ovr", src_name + ".aux.xml"):
            Path(p).unlink(missing_ok=True)
    return n_valid / (_P * _P)


# --------------------------------------------------------------------------------------------
# Data mask, metadata, OSM
# --------------------------------------------------------------------------------------------


def _write_mask(path: Path, valid_geom, cell: str) -> None:
    from osgeo import ogr, osr

    srs = osr.SpatialReference()
    srs.ImportFromEPSG(grid.epsg(cell, ZONE))
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)

    # GDAL's GPKG driver wants the .gpkg extension: a temporary name that keeps it, then a rename.
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.{threading.get_ident()}.tmp.gpkg")
    try:
        tmp.unlink(missing_ok=True)
        ds = ogr.GetDriverByName("GPKG").CreateDataSource(str(tmp))
        lyr = ds.CreateLayer("data-mask", srs, ogr.wkbMultiPolygon)
        lyr.CreateField(ogr.FieldDefn("value", ogr.OFTInteger))
        geom = ogr.ForceToMultiPolygon(ogr.CreateGeometryFromWkb(valid_geom.wkb))
        feat = ogr.Feature(lyr.GetLayerDefn())
        feat.SetField("value", 1)
        feat.SetGeometry(geom)
        lyr.CreateFeature(feat)
        ds = None
        _publish(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_json(path: Path, data: object) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        os.chmod(tmp, 0o666 & ~_umask())


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _publish(tmp: Path, path: Path) -> None:
    """Give a finished temporary file ordinary permissions (mkstemp makes it 0600) and move it in place."""
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)


def _to_wgs84(epsg: int):
    from pyproj import Transformer

    return Transformer.from_crs(epsg, 4326, always_xy=True)


def _metadata(acq: Acquisition, valid_geom, frac: float) -> dict:
    import shapely
    from shapely.geometry import box, mapping

    epsg = grid.epsg(acq.cell, ZONE)
    tr = _to_wgs84(epsg)
    b = grid.bounds(acq.cell)
    def to_ll(g):
        return shapely.transform(g, lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))

    footprint = to_ll(valid_geom.intersection(box(*b)).simplify(1.0))
    cell_ll = to_ll(box(*b))
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": f"{ZONE}/{acq.cell}/{acq.date}/{acq.catalog_id}",
        "bbox": [round(v, 7) for v in cell_ll.bounds],
        "geometry": mapping(footprint),
        "catalog_id": acq.catalog_id,
        "quadkey": acq.cell,
        "zone": ZONE,
        "epsg": epsg,
        "acquisition_datetime": acq.datetime,
        "sensor": acq.platform,
        "data_mask": f"{acq.catalog_id}-data-mask.gpkg",
        "properties": {
            "datetime": acq.datetime,
            "catalog_id": acq.catalog_id,
            "platform": acq.platform,
            "instruments": ["VNIR", "panchromatic"],
            "gsd": 0.31 if acq.platform == "WV03" else 0.46,
            "view:off_nadir": acq.off_nadir,
            "view:sun_elevation": acq.sun_elevation,
            "view:sun_azimuth": acq.sun_azimuth,
            "eo:cloud_cover": round(acq.cloud_cover * 100, 2),
            "grid:code": f"MXRA-Z{ZONE}-{acq.cell}",
            "tile:quadkey": acq.cell,
            "utm_zone": ZONE,
            "proj:epsg": epsg,
            "proj:shape": [_P, _P],
            "proj:transform": list(grid.cell_geotransform(acq.cell)),
            "tile:data_area": round(valid_geom.intersection(box(*b)).area / 1e6, 4),
            "tile:clouds_area": round(acq.cloud_cover * valid_geom.area / 1e6, 4),
            "tile:valid_fraction": round(frac, 6),
            "product": "ARD",
            "synthetic": True,
        },
        "assets": {
            "visual": {"href": f"./{acq.catalog_id}-visual.tif", "type": "image/tiff; application=geotiff; profile=cloud-optimized"},
            "data-mask": {"href": f"./{acq.catalog_id}-data-mask.gpkg", "type": "application/geopackage+sqlite3"},
        },
    }


def _write_osm(path: Path, scene: Scene) -> int:
    """Write the scene as OSM nodes/ways/multipolygon relations (WGS84) to ``path`` (pbf)."""
    import osmium
    from osmium.osm.mutable import Node, Relation, Way

    tr = _to_wgs84(grid.epsg(CELLS[0], ZONE))
    nodes: list[tuple[int, float, float]] = []
    ways: list[tuple[int, list[int], dict[str, str]]] = []
    rels: list[tuple[int, list[tuple[str, int, str]], dict[str, str]]] = []
    ids = {"n": 0, "w": 0, "r": 0}

    def new(kind: str) -> int:
        ids[kind] += 1
        return ids[kind]

    def coords_way(coords, tags: dict[str, str], closed: bool) -> int:
        xy = np.asarray(coords, float)[:, :2]
        if closed:
            xy = xy[:-1]  # shapely repeats the first vertex
        lon, lat = tr.transform(xy[:, 0], xy[:, 1])
        refs = []
        for x, y in zip(np.atleast_1d(lon), np.atleast_1d(lat)):
            nid = new("n")
            nodes.append((nid, float(x), float(y)))
            refs.append(nid)
        if closed:
            refs.append(refs[0])
        wid = new("w")
        ways.append((wid, refs, tags))
        return wid

    for f in scene.features:
        g = f.geom
        if g.geom_type in ("LineString", "MultiLineString"):
            for part in getattr(g, "geoms", [g]):
                if len(part.coords) >= 2:
                    coords_way(part.coords, dict(f.tags), closed=False)
            continue
        polys = [p for p in getattr(g, "geoms", [g]) if p.geom_type == "Polygon" and not p.is_empty]
        if not polys:
            continue
        if f.osm_relation or len(polys) > 1 or any(p.interiors for p in polys):
            members = []
            for p in polys:
                members.append(("w", coords_way(p.exterior.coords, {}, True), "outer"))
                for ring in p.interiors:
                    members.append(("w", coords_way(ring.coords, {}, True), "inner"))
            rels.append((new("r"), members, {"type": "multipolygon", **f.tags}))
        else:
            coords_way(polys[0].exterior.coords, dict(f.tags), closed=True)

    attrs = {"version": 1, "timestamp": "2024-03-01T00:00:00Z", "changeset": 1, "uid": 1, "user": "imagesim"}
    with atomic_path(path) as tmp:
        final = tmp.with_name(tmp.name + ".osm.pbf")  # osmium picks the format from the suffix
        try:
            writer = osmium.SimpleWriter(str(final))
            try:
                for nid, lon, lat in nodes:
                    writer.add_node(Node(id=nid, location=(lon, lat), tags={}, **attrs))
                for wid, refs, tags in ways:
                    writer.add_way(Way(id=wid, nodes=refs, tags=tags, **attrs))
                for rid, members, tags in rels:
                    writer.add_relation(Relation(id=rid, members=members, tags=tags, **attrs))
            finally:
                writer.close()
            _publish(final, tmp)
        finally:
            final.unlink(missing_ok=True)
    return len(nodes) + len(ways) + len(rels)
