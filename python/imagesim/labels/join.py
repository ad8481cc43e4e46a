"""The spatial join of labelled features against the chip grid of one level-12 cell.

Chips are the aligned squares of the cell at the chip zoom, so candidate chips come from each
feature's bounding box by arithmetic (no tree, no image reads). A feature whose box falls in one
chip labels it outright; only features spanning several chips are tested exactly, with vectorised
GEOS predicates on prepared geometries. A chip gets a class when the class covers part of its
interior: areas must overlap it (touching an edge is not enough), lines and points count within
their buffer distance. Classes with a ``min_share`` also need that share of the chip covered,
measured on the union of their features (overlapping features are not counted twice).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import shapely

from imagesim import grid
from imagesim.labels.geometry import AREA, LINE, POINT, Features
from imagesim.labels.taxonomy import Taxonomy

# Metres: features closer than this to a chip edge without crossing it count as touching only.
EDGE_EPS = 1e-4


@dataclass(frozen=True)
class CellGrid:
    """The chips of one cell: ``n × n`` squares of ``size`` metres from the cell's north-west corner."""

    west: float
    north: float
    n: int

    @property
    def size(self) -> float:
        return grid.CELL_SIZE / self.n

    @staticmethod
    def of(bounds: tuple[float, float, float, float], n: int) -> CellGrid:
        west, _south, _east, north = bounds
        return CellGrid(west, north, n)

    def boxes(self, cols: np.ndarray, rows: np.ndarray, inset: float = 0.0) -> np.ndarray:
        x0 = self.west + cols * self.size
        y1 = self.north - rows * self.size
        return shapely.box(x0 + inset, y1 - self.size + inset, x0 + self.size - inset, y1 - inset)


def pair_rules(features: Features, taxonomy: Taxonomy) -> tuple[np.ndarray, np.ndarray]:
    """Per (feature, class) pair: the buffer distance (0 for areas) and the class's ``min_share``."""
    line_buf = np.array([c.line_buffer_m for c in taxonomy.classes], dtype=np.float64)
    point_buf = np.array([c.point_buffer_m for c in taxonomy.classes], dtype=np.float64)
    share = np.array([c.min_share for c in taxonomy.classes], dtype=np.float64)
    kind = features.kinds[features.pair_feature]
    dist = np.where(kind == LINE, line_buf[features.pair_class], np.where(kind == POINT, point_buf[features.pair_class], 0.0))
    return dist, share[features.pair_class]


def join_cell(features: Features, taxonomy: Taxonomy, grid: CellGrid) -> tuple[np.ndarray, np.ndarray]:
    """Labels of one cell: ``(chip, class)`` pairs, unique, where ``chip = row * n + col``."""
    if len(features.pair_feature) == 0:
        return np.empty(0, np.int64), np.empty(0, np.int32)
    dist, min_share = pair_rules(features, taxonomy)
    return join_pairs(features.geoms, features.kinds, features.pair_feature, features.pair_class, dist, min_share, grid)


def join_pairs(
    geoms: np.ndarray,
    kinds: np.ndarray,
    pair_feature: np.ndarray,
    pair_class: np.ndarray,
    dist: np.ndarray,
    min_share: np.ndarray,
    grid: CellGrid,
) -> tuple[np.ndarray, np.ndarray]:
    """The join proper, on arrays (see :func:`join_cell`)."""
    n, size = grid.n, grid.size
    bounds = shapely.bounds(geoms)[pair_feature]
    # Chips whose open square meets the feature's box grown by its buffer: strict on both
    # sides, so a box that only reaches a chip's edge does not make it a candidate.
    c0 = np.floor((bounds[:, 0] - dist - grid.west) / size)
    c1 = np.ceil((bounds[:, 2] + dist - grid.west) / size) - 1
    r0 = np.floor((grid.north - bounds[:, 3] - dist) / size)
    r1 = np.ceil((grid.north - bounds[:, 1] + dist) / size) - 1
    single = (c0 == c1) & (r0 == r1)  # before clipping to the cell: the box is in one chip
    c0, r0 = np.maximum(c0, 0).astype(np.int64), np.maximum(r0, 0).astype(np.int64)
    c1, r1 = np.minimum(c1, n - 1).astype(np.int64), np.minimum(r1, n - 1).astype(np.int64)
    width = np.maximum(c1 - c0 + 1, 0)
    count = width * np.maximum(r1 - r0 + 1, 0)

    # Expand every pair to its candidate chips.
    pair = np.repeat(np.arange(len(pair_feature)), count)
    start = np.repeat(np.cumsum(count) - count, count)
    k = np.arange(len(pair)) - start
    cols = c0[pair] + k % width[pair]
    rows = r0[pair] + k // width[pair]

    hit = single[pair]  # the whole grown box in one chip: it covers part of that chip's interior
    test = np.flatnonzero(~hit)
    if len(test):
        shapely.prepare(geoms)
        g = geoms[pair_feature[pair[test]]]
        d = dist[pair[test]]
        boxes = grid.boxes(cols[test], rows[test])
        area = kinds[pair_feature[pair[test]]] == AREA
        ok = np.empty(len(test), bool)
        if area.any():
            # A valid polygon meets the open square iff it meets the square shrunk by a hair:
            # one prepared `intersects` instead of `intersects and not touches`.
            inner = grid.boxes(cols[test][area], rows[test][area], inset=EDGE_EPS)
            ok[area] = shapely.intersects(g[area], inner)
        if (~area).any():
            ok[~area] = shapely.dwithin(g[~area], boxes[~area], d[~area])
        hit[test] = ok

    pair, cols, rows = pair[hit], cols[hit], rows[hit]
    chip = rows * n + cols
    cls = pair_class[pair]

    need_share = min_share[pair] > 0
    if need_share.any():
        keep = _share_filter(
            geoms, kinds, pair_feature, dist, min_share, grid, pair[need_share], chip[need_share], cls[need_share], single[pair[need_share]]
        )
        mask = np.ones(len(pair), bool)
        mask[np.flatnonzero(need_share)[~keep]] = False
        chip, cls = chip[mask], cls[mask]

    key = np.unique(chip * 65536 + cls)
    return (key // 65536).astype(np.int64), (key % 65536).astype(np.int32)


def _share_filter(geoms, kinds, pair_feature, dist, min_share, grid: CellGrid, pair, chip, cls, single) -> np.ndarray:
    """Which (pair, chip) hits pass their class's ``min_share`` of the chip area (union per class)."""
    n = grid.n
    boxes = grid.boxes(chip % n, chip // n)
    g = geoms[pair_feature[pair]]
    d = dist[pair]
    buffered = d > 0
    if buffered.any():
        g = g.copy()
        g[buffered] = shapely.buffer(g[buffered], d[buffered], quad_segs=4)
    # The piece of its chip each feature covers, in chip-local coordinates (the chip's north-west
    # corner at the origin, so that GEOS's fast rectangle clipping can take one rectangle): the
    # feature itself when it lies in one chip, the whole chip when it covers it, else clipped.
    c, r = chip % n, chip // n
    coords, index = shapely.get_coordinates(g, return_index=True)
    coords -= np.column_stack([grid.west + c * grid.size, grid.north - r * grid.size])[index]
    pieces = shapely.set_coordinates(shapely.transform(g, lambda xy: xy), coords)  # a moved copy
    rest = np.flatnonzero(~single)
    if len(rest):
        shapely.prepare(g[rest])
        full = shapely.covers(g[rest], boxes[rest])
        pieces[rest[full]] = shapely.box(0.0, -grid.size, grid.size, 0.0)
        cut = rest[~full]
        pieces[cut] = shapely.clip_by_rect(pieces[cut], 0.0, -grid.size, grid.size, 0.0)
    areas = shapely.area(pieces)
    threshold = min_share[pair] * grid.size * grid.size
    group = chip * 65536 + cls
    order = np.argsort(group, kind="stable")
    _, first, sizes = np.unique(group[order], return_index=True, return_counts=True)
    total = np.add.reduceat(areas[order], first)
    largest = np.maximum.reduceat(areas[order], first)
    need = threshold[order][first]
    passed_groups = largest >= need  # one feature alone is enough
    # Overlapping features must not count twice: union only where the sum alone would pass.
    for j in np.flatnonzero(~passed_groups & (total >= need) & (sizes > 1)):
        members = order[first[j] : first[j] + sizes[j]]
        passed_groups[j] = shapely.area(shapely.union_all(shapely.make_valid(pieces[members]))) >= need[j]
    passed = np.zeros(len(pair), bool)
    passed[order] = np.repeat(passed_groups, sizes)
    return passed


def local_index(quadkeys: list[str], level: int = 12) -> np.ndarray:
    """``row * n + col`` of each chip quadkey inside its level-``level`` cell (all the same zoom)."""
    if not quadkeys:
        return np.empty(0, np.int64)
    depth = len(quadkeys[0]) - level
    digits = np.frombuffer("".join(q[level:] for q in quadkeys).encode("ascii"), dtype=np.uint8).reshape(len(quadkeys), depth) - 48
    col = np.zeros(len(quadkeys), np.int64)
    row = np.zeros(len(quadkeys), np.int64)
    for i in range(depth):
        col = (col << 1) | (digits[:, i] & 1)
        row = (row << 1) | (digits[:, i] >> 1)
    return row * (1 << depth) + col


__all__ = ["AREA", "LINE", "POINT", "CellGrid", "join_cell", "join_pairs", "local_index", "pair_rules"]
