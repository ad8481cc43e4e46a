"""Chip footprints (the ``geometry`` and ``bbox`` columns of every GeoParquet chip table): the Rust core's
UTM inverse and WKB writer against the pyproj + shapely path it replaced, in the same run, on the same
chips.

The baseline is that path as it was (vectorised: one pyproj transform per CRS over numpy arrays of
corners, shapely's ``polygons``/``to_wkb``/``bounds``), copied here. Both produce the same columns; the
largest coordinate difference between them is printed (PROJ's own ``tmerc`` and Krüger's series agree
to well under 1e-9°). Whole-process import cost is in benches/bench_startup.py.

    python benches/bench_footprints.py [--cells 16] [--zoom 17] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import polars as pl

from imagesim import geoparquet, grid

BBOX_DTYPE = geoparquet.BBOX_DTYPE


def baseline_footprints(zones: list[int], quadkeys: list[str]) -> tuple[pl.Series, pl.Series]:
    """The pyproj + shapely footprints (chips that do not cross the antimeridian, as here)."""
    import shapely
    from pyproj import Transformer

    bounds = np.array([grid.bounds(q) for q in quadkeys])
    groups: dict[tuple[int, int], list[int]] = {}
    for i, (zone, qk) in enumerate(zip(zones, quadkeys)):
        groups.setdefault((grid.epsg(qk, zone), len(qk)), []).append(i)
    out = np.empty(len(quadkeys), dtype=object)
    for (code, zoom), rows in groups.items():
        idx = np.asarray(rows)
        n = 2 ** max(0, 17 - zoom)
        t = np.arange(n) / n
        fx = np.concatenate([t, np.ones(n), 1.0 - t, np.zeros(n), [0.0]])
        fy = np.concatenate([np.zeros(n), t, np.ones(n), 1.0 - t, [0.0]])
        west, south, east, north = (bounds[idx, k][:, None] for k in range(4))
        xs, ys = west + (east - west) * fx, south + (north - south) * fy
        lons, lats = Transformer.from_crs(code, 4326, always_xy=True).transform(xs.ravel(), ys.ravel())
        ring = np.stack([np.asarray(lons).reshape(xs.shape), np.asarray(lats).reshape(xs.shape)], axis=-1)
        out[idx] = shapely.polygons(ring)
    box = shapely.bounds(out)
    bbox = pl.DataFrame({k: box[:, i] for i, k in enumerate(("xmin", "ymin", "xmax", "ymax"))}, schema=dict(BBOX_DTYPE.to_schema()))
    return pl.Series("geometry", list(shapely.to_wkb(out)), dtype=pl.Binary), bbox.select(pl.struct(pl.all()).alias("bbox")).to_series()


Columns = tuple[pl.Series, pl.Series]


def timed(fn: Callable[[], Columns], repeat: int) -> tuple[float, Columns]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", type=int, default=16, help="level-12 cells, half in zone 33 north, half in zone 19 south")
    ap.add_argument("--zoom", type=int, default=17)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()

    # level-12 cells (5 km) east of the central meridian: ~31°N in zone 33, ~20°S in zone 19
    north = [grid.tile_to_quadkey((x, 1388, 12)) for x in range(2040, 2040 + a.cells // 2)]
    south = [grid.tile_to_quadkey((x, 2500, 12)) for x in range(2040, 2040 + a.cells - len(north))]
    zones: list[int] = []
    quadkeys: list[str] = []
    for zone, group in ((33, north), (19, south)):
        for cell in group:
            kids = grid.children(cell, a.zoom)
            quadkeys += kids
            zones += [zone] * len(kids)
    geoparquet.footprints(zones[:10], quadkeys[:10])  # warm (the shared library is loaded)
    baseline_footprints(zones[:10], quadkeys[:10])  # warm (pyproj and shapely imported)

    rust_s, (geometry, bbox) = timed(lambda: geoparquet.footprints(zones, quadkeys), a.repeat)
    base_s, (base_geometry, base_bbox) = timed(lambda: baseline_footprints(zones, quadkeys), a.repeat)

    import shapely

    ours = shapely.get_coordinates(shapely.from_wkb(geometry.to_numpy()))
    theirs = shapely.get_coordinates(shapely.from_wkb(base_geometry.to_numpy()))
    diff = float(np.abs(ours - theirs).max())
    box_diff = float(np.abs(bbox.struct.unnest().to_numpy() - base_bbox.struct.unnest().to_numpy()).max())
    n = len(quadkeys)
    print(f"{n:,} z{a.zoom} chips ({a.cells} cells, zones 33N and 19S), median of {a.repeat} runs")
    print(f"  imagesim (Rust)      {rust_s:7.3f} s  {n / rust_s:12,.0f} chips/s")
    print(f"  pyproj + shapely     {base_s:7.3f} s  {n / base_s:12,.0f} chips/s   (baseline)")
    print(f"  ratio                {base_s / rust_s:7.2f}x faster")
    print(f"  largest difference: {diff:.2e}° in a coordinate, {box_diff:.2e}° in a bbox")
    if diff > 1e-9 or box_diff > 1e-9:
        raise SystemExit("the footprints differ by more than 1e-9°")


if __name__ == "__main__":
    main()
