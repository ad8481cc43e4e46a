"""Mask coverage benchmark: per-chip cloud and data areas of one level-12 cell, one core.

A cloud-like mask of ~10,000 vertices (unions of wavy-boundary blobs minus smaller blobs, so multipart
with holes, some of it beyond the cell) and a data mask covering most of the cell (a scene edge
cutting a corner off). What the real pass computes per cell: ``cloud ∩ data`` once, then the area of
it and of ``data`` in every chip. imagesim does the per-chip part with ``imagery.coverage.chip_areas``
(the Rust grid kernel, one pass per mask); the baseline with shapely per chip
(``box.intersection(mask).area``, vectorised over the chip boxes, masks prepared). Both single-threaded,
same run. Goal: >= 20,000 chips/s per core.

    python benches/bench_masks.py [--zoom 17] [--vertices 10000] [--repeat 5] [--baseline-chips 1024]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import shapely
from shapely.geometry import Polygon

from imagesim import grid
from imagesim.imagery.coverage import chip_areas

CELL = "120210233221"
GOAL = 20_000  # chips/s per core


def blob(rng: np.random.Generator, cx: float, cy: float, radius: float, n: int) -> Polygon:
    """A wavy star-shaped polygon of ``n`` vertices (simple, so valid)."""
    t = np.sort(rng.uniform(0, 2 * np.pi, n))
    waves = sum(rng.uniform(0.05, 0.25) * np.sin(k * t + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 5, 9, 17))
    r = radius * (1 + waves + 0.04 * rng.uniform(-1, 1, n))
    return Polygon(np.column_stack([cx + r * np.cos(t), cy + r * np.sin(t)]))


def cloud_mask(seed: int, west: float, north: float, size: float, vertices: int):  # type: ignore[no-untyped-def]
    """Blobs minus smaller blobs with about ``vertices`` vertices: built once at a first guess of the
    blob resolution, then again with the same seed at the resolution that hits the target."""

    def build(per: int):  # type: ignore[no-untyped-def]
        # Positions and sizes drawn before any outline, so they do not depend on the resolution.
        rng = np.random.default_rng(seed)
        at = rng.uniform([-0.1, -0.1, 0.04], [1.1, 1.1, 0.16], (24, 3)) * size
        hole_at = rng.uniform([0, 0, 0.01], [1, 1, 0.04], (40, 3)) * size
        blobs = [blob(rng, west + x, north - y, r, per) for x, y, r in at]
        holes = [blob(rng, west + x, north - y, r, per // 2) for x, y, r in hole_at]
        return shapely.make_valid(shapely.difference(shapely.union_all(blobs), shapely.union_all(holes)))

    guess = max(16, vertices // 32)
    got = shapely.get_num_coordinates(build(guess))
    return build(max(16, round(guess * vertices / got)))


def data_mask(rng: np.random.Generator, west: float, south: float, size: float):  # type: ignore[no-untyped-def]
    """The cell minus a corner beyond a ragged scene edge (~85 % of the cell)."""
    t = np.linspace(0, 1, 400)
    edge_x = west + size * (0.45 + 0.55 * t) + 15 * rng.normal(size=t.size)
    edge_y = south + size * (0.45 - 0.45 * t) + 15 * rng.normal(size=t.size)
    pts = [(west - 10, south - 10), (west - 10, south + size + 10), (west + size + 10, south + size + 10)]
    pts += [(west + size + 10, edge_y[-1])] + list(zip(edge_x[::-1], edge_y[::-1])) + [(edge_x[0], south - 10)]
    return shapely.make_valid(Polygon(pts))


def baseline_chips(inside, data, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # type: ignore[no-untyped-def]
    """The per-chip part of the baseline: one intersection per chip box and mask (masks prepared)."""
    return shapely.area(shapely.intersection(boxes, inside)), shapely.area(shapely.intersection(boxes, data))


def best_of(repeat: int, fn):  # type: ignore[no-untyped-def]
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoom", type=int, default=17, help="chip zoom (17: 1,024 chips; 18: 4,096; 19: 16,384)")
    ap.add_argument("--vertices", type=int, default=10_000, help="about this many vertices in the cloud mask")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--baseline-chips", type=int, default=1024, help="chips the baseline is measured on (evenly spread), scaled")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    west, south, _, north = grid.bounds(CELL)
    cloud = cloud_mask(args.seed, west, north, grid.CELL_SIZE, args.vertices)
    data = data_mask(rng, west, south, grid.CELL_SIZE)
    chips = grid.children(CELL, args.zoom)
    n = len(chips)
    print(
        f"cell {CELL} at zoom {args.zoom}: {n:,} chips; cloud mask {shapely.get_num_coordinates(cloud):,} vertices in "
        f"{shapely.get_num_geometries(cloud)} parts with {int(shapely.get_num_interior_rings(shapely.get_parts(cloud)).sum())} holes, "
        f"{cloud.area / grid.CELL_SIZE**2:.0%} of the cell; data mask {data.area / grid.CELL_SIZE**2:.0%} of the cell"
    )

    # imagesim, as the real pass runs it: cloud ∩ data once, then both masks' chip areas.
    t_ours, (cloud_a, data_a) = best_of(
        args.repeat, lambda: (chip_areas(shapely.intersection(cloud, data), CELL, args.zoom), chip_areas(data, CELL, args.zoom))
    )
    # Its parts, each timed on its own (best of the repeats, so they need not add up exactly).
    t_inter, inside = best_of(args.repeat, lambda: shapely.intersection(cloud, data))
    t_areas, _ = best_of(args.repeat, lambda: (chip_areas(inside, CELL, args.zoom), chip_areas(data, CELL, args.zoom)))
    # The baseline: the same intersection once, then shapely per chip on prepared masks; measured on
    # up to --baseline-chips chips spread over the cell and scaled to all of them.
    pick = np.unique(np.linspace(0, n - 1, min(n, args.baseline_chips)).round().astype(int))
    boxes = np.array([shapely.box(*grid.bounds(chips[i])) for i in pick])
    inside_p, data_p = shapely.intersection(cloud, data), shapely.intersection(data, data)
    shapely.prepare(inside_p)
    shapely.prepare(data_p)
    t_chips, (cloud_b, data_b) = best_of(max(1, args.repeat // 2), lambda: baseline_chips(inside_p, data_p, boxes))
    t_base = t_inter + t_chips * n / len(pick)
    rate, rate_base = n / t_ours, n / t_base
    diff = max(np.abs(cloud_a[pick] - cloud_b).max(), np.abs(data_a[pick] - data_b).max())

    print(f"\n{'approach (1 core; cloud ∩ data once, then 2 areas per chip)':60} {'s/cell':>8} {'chips/s':>10} {'ratio':>7}")
    print(f"{'imagesim chip_areas (Rust grid kernel)':60} {t_ours:8.4f} {rate:10,.0f} {rate / rate_base:6.1f}x")
    print(f"{'shapely box.intersection(mask).area per chip, prepared':60} {t_base:8.4f} {rate_base:10,.0f} {1:6.1f}x")
    if len(pick) < n:
        print(f"  (baseline per-chip part measured on {len(pick):,} of the {n:,} chips and scaled)")
    print(
        f"\nparts: cloud ∩ data (shapely, once per cell) {t_inter:.4f} s; imagesim's two chip_areas calls {t_areas:.4f} s "
        f"({n / t_areas:,.0f} chips/s alone); the baseline's per-chip part {t_chips * n / len(pick):.4f} s"
    )
    print(f"largest per-chip difference from shapely: {diff:.2e} m² (chip area {(grid.CELL_SIZE / 2 ** (args.zoom - 12)) ** 2:,.0f} m²)")
    print(f"goal: >= {GOAL:,} chips/s per core [{'met' if rate >= GOAL else 'MISSED'}]")


if __name__ == "__main__":
    main()
