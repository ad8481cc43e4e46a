"""imagery.coverage: exact mask area per chip from the Rust grid kernel, against shapely per chip."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from shapely.geometry import GeometryCollection, LineString, MultiPolygon, Point, Polygon, box

from imagesim import _imagesim as _rs
from imagesim import grid
from imagesim.errors import GridError, InvalidArgumentError
from imagesim.imagery.coverage import chip_areas, grid_areas

CELL = "120210233221"  # a northern level-12 cell
SOUTH_CELL = "300112302133"  # a southern one (false northing applied by grid.bounds)


def chip_boxes(cell: str, zoom: int) -> list[Polygon]:
    return [box(*grid.bounds(q)) for q in grid.children(cell, zoom)]


def shapely_areas(geom, cell: str, zoom: int) -> np.ndarray:  # type: ignore[no-untyped-def]
    return np.array([b.intersection(geom).area for b in chip_boxes(cell, zoom)])


def assert_parity(geom, cell: str, zoom: int) -> None:  # type: ignore[no-untyped-def]
    ours = chip_areas(geom, cell, zoom)
    theirs = shapely_areas(geom, cell, zoom)
    # 1e-6 relative, and 1e-6 m² for slivers (shapely's own rounding on UTM-sized coordinates is ~1e-7 m²).
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6)
    assert theirs.sum() > 0  # the case is not vacuous


def blob(rng: np.random.Generator, cx: float, cy: float, radius: float, n: int = 48) -> Polygon:
    """A wavy star-shaped polygon (simple, so valid)."""
    t = np.sort(rng.uniform(0, 2 * np.pi, n))
    r = radius * (1 + 0.35 * np.sin(3 * t + rng.uniform(0, 6)) + 0.15 * rng.uniform(-1, 1, n))
    return Polygon(np.column_stack([cx + r * np.cos(t), cy + r * np.sin(t)]))


def cloud(rng: np.random.Generator, west: float, north: float, size: float, spread: float = 1.0):  # type: ignore[no-untyped-def]
    """A union of blobs minus smaller blobs: multipart, with holes, some of it outside the square."""
    centres = np.column_stack([west + rng.uniform(-0.1, spread, 8) * size, north - rng.uniform(-0.1, spread, 8) * size])
    radii = rng.uniform(0.05, 0.2, 8) * size
    blobs = [blob(rng, x, y, r) for (x, y), r in zip(centres, radii)]
    # Half the holes in the middle of a blob (so some are true holes), half anywhere.
    holes = [blob(rng, x + 0.1 * r, y - 0.1 * r, 0.3 * r) for (x, y), r in zip(centres[:4], radii[:4])]
    holes += [
        blob(rng, west + rng.uniform(0, spread) * size, north - rng.uniform(0, spread) * size, rng.uniform(0.01, 0.05) * size)
        for _ in range(6)
    ]
    return shapely.difference(shapely.union_all(blobs), shapely.union_all(holes))


def test_chip_order_matches_grid_children() -> None:
    for cell in (CELL, SOUTH_CELL):
        west, south, east, north = grid.bounds(cell)
        assert east - west == pytest.approx(grid.CELL_SIZE) and north - south == pytest.approx(grid.CELL_SIZE)
        zoom = 14
        kids = grid.children(cell, zoom)
        side = grid.CELL_SIZE / 4
        for i, q in enumerate(kids):
            # A square a bit inside chip i only: all of its area lands at index i.
            w, s, e, n = grid.bounds(q)
            assert e - w == pytest.approx(side)
            areas = chip_areas(box(w + 1, s + 2, e - 3, n - 4), cell, zoom)
            want = np.zeros(len(kids))
            want[i] = (side - 4) * (side - 6)
            np.testing.assert_allclose(areas, want, atol=1e-6)


@pytest.mark.parametrize("seed", range(4))
def test_random_clouds_match_shapely(seed: int) -> None:
    rng = np.random.default_rng(seed)
    cell = (CELL, SOUTH_CELL)[seed % 2]
    west, _, _, north = grid.bounds(cell)
    geom = cloud(rng, west, north, grid.CELL_SIZE)
    assert isinstance(geom, MultiPolygon) and any(p.interiors for p in geom.geoms)
    assert_parity(geom, cell, 15)


def test_clouds_partly_outside_the_cell_match_shapely() -> None:
    rng = np.random.default_rng(7)
    west, _, _, north = grid.bounds(CELL)
    # Blobs around the cell's north-west corner, half of them beyond it.
    geom = cloud(rng, west - grid.CELL_SIZE / 2, north + grid.CELL_SIZE / 2, grid.CELL_SIZE)
    outside = geom.difference(box(*grid.bounds(CELL))).area
    assert outside > 0.2 * geom.area and outside < 0.8 * geom.area
    assert_parity(geom, CELL, 14)
    # A polygon much larger than the cell: every chip fully covered.
    big = box(west - 1e4, north - 3e4, west + 2e4, north + 1e3)
    np.testing.assert_allclose(chip_areas(big, CELL, 16), (grid.CELL_SIZE / 16) ** 2, rtol=1e-12)


def test_mask_exactly_on_chip_edges() -> None:
    kids = grid.children(CELL, 14)
    # Chips (row 1, col 1) .. (row 2, col 2) of the 4 x 4 grid, the box on their outer edges.
    corner_nw, corner_se = grid.bounds(kids[1 * 4 + 1]), grid.bounds(kids[2 * 4 + 2])
    geom = box(corner_nw.west, corner_se.south, corner_se.east, corner_nw.north)
    areas = chip_areas(geom, CELL, 14).reshape(4, 4)
    side2 = (grid.CELL_SIZE / 4) ** 2
    want = np.zeros((4, 4))
    want[1:3, 1:3] = side2
    np.testing.assert_allclose(areas, want, rtol=0, atol=1e-9 * side2)


def test_hole_covering_a_whole_chip() -> None:
    west, south, east, north = grid.bounds(CELL)
    kids = grid.children(CELL, 14)
    chip = grid.bounds(kids[6])
    # The hole is the chip grown by 10 m: the chip is empty, its neighbours lose a 10 m band.
    hole = box(chip.west - 10, chip.south - 10, chip.east + 10, chip.north + 10)
    geom = Polygon(box(west - 50, south - 50, east + 50, north + 50).exterior.coords, [hole.exterior.coords])
    areas = chip_areas(geom, CELL, 14)
    assert areas[6] == pytest.approx(0, abs=1e-6)
    np.testing.assert_allclose(areas, shapely_areas(geom, CELL, 14), rtol=0, atol=1e-6)
    assert areas[0] == pytest.approx((grid.CELL_SIZE / 4) ** 2)


def test_clockwise_polygon_counts_positive() -> None:
    west, _, _, north = grid.bounds(CELL)
    ccw = blob(np.random.default_rng(3), west + 2500, north - 2500, 900)  # wholly inside the cell
    cw = Polygon(list(ccw.exterior.coords)[::-1])
    assert not cw.exterior.is_ccw
    np.testing.assert_allclose(chip_areas(cw, CELL, 15), chip_areas(ccw, CELL, 15), rtol=0, atol=1e-9)
    assert chip_areas(cw, CELL, 15).sum() == pytest.approx(ccw.area, rel=1e-12)
    # A hole given counter-clockwise is still a hole.
    donut = Polygon(box(west, north - 4500, west + 4500, north).exterior.coords, [list(ccw.exterior.coords)])
    assert chip_areas(donut, CELL, 15).sum() == pytest.approx(4500 * 4500 - ccw.area, rel=1e-12)


def test_empty_and_non_polygon_parts() -> None:
    west, _, _, north = grid.bounds(CELL)
    assert np.array_equal(chip_areas(Polygon(), CELL, 13), np.zeros(4))
    assert np.array_equal(chip_areas(GeometryCollection(), CELL, 13), np.zeros(4))
    square = box(west + 100, north - 300, west + 300, north - 100)
    mixed = GeometryCollection([Point(west + 1, north - 1), LineString([(west, north), (west + 4000, north - 4000)]), square])
    np.testing.assert_allclose(chip_areas(mixed, CELL, 13), [200 * 200, 0, 0, 0])
    nested = GeometryCollection([MultiPolygon([square, box(west + 3000, north - 4000, west + 3100, north - 3900)])])
    np.testing.assert_allclose(chip_areas(nested, CELL, 13), [200 * 200, 0, 0, 100 * 100])


def test_without_orient_polygons(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """shapely < 2.1 has no orient_polygons: the per-part fallback gives the same areas."""
    west, _, _, north = grid.bounds(CELL)
    geom = cloud(np.random.default_rng(11), west, north, grid.CELL_SIZE)
    want = chip_areas(geom, CELL, 14)
    monkeypatch.delattr(shapely, "orient_polygons")
    np.testing.assert_allclose(chip_areas(geom, CELL, 14), want, rtol=0, atol=1e-9)


def test_grid_areas_shape_and_order() -> None:
    # 3 columns x 2 rows of 10 m squares with the north-west corner at (100, 50).
    geom = box(100, 30, 110, 50).union(box(125, 40, 130, 45))
    areas = grid_areas(geom, 100, 50, 10, 3, 2)
    np.testing.assert_allclose(areas, [[100, 0, 25], [100, 0, 0]])
    # Z coordinates are ignored.
    np.testing.assert_allclose(grid_areas(Polygon([(100, 30, 5), (110, 30, 6), (110, 50, 7)]), 100, 50, 10, 3, 2), [[25, 0, 0], [75, 0, 0]])


def test_bad_input_raises() -> None:
    square = box(0, 0, 1, 1)
    with pytest.raises(InvalidArgumentError, match="cell"):
        grid_areas(square, 0, 1, 0.0, 1, 1)
    with pytest.raises(InvalidArgumentError, match="nx"):
        grid_areas(square, 0, 1, 1.0, 0, 1)
    with pytest.raises(InvalidArgumentError, match="squares"):
        grid_areas(square, 0, 1, 1.0, 1 << 14, 1 << 13)
    with pytest.raises(InvalidArgumentError, match="non-finite"), np.errstate(invalid="ignore"):
        grid_areas(Polygon([(0, 0), (1, 0), (1, float("nan"))]), 0, 1, 1.0, 1, 1)
    with pytest.raises(InvalidArgumentError, match="geom"):
        grid_areas("POLYGON ((0 0, 1 0, 1 1, 0 0))", 0, 1, 1.0, 1, 1)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="zoom"):
        chip_areas(square, CELL, 30)
    with pytest.raises(GridError):
        chip_areas(square, CELL[:11], 17)
    xy = np.array([[0, 0], [1, 0], [1, 1]], np.float64)
    for offsets in ([0, 4], [0, 2, 1], [-1, 3], []):
        with pytest.raises(InvalidArgumentError, match="offset"):
            _rs.grid_coverage(xy, np.array(offsets, np.int64), 0, 1, 1, 1, 1)
    with pytest.raises(InvalidArgumentError, match="shape"):
        _rs.grid_coverage(np.zeros((3, 3)), np.array([0, 3], np.int64), 0, 1, 1, 1, 1)
    with pytest.raises(InvalidArgumentError, match="contiguous"):
        _rs.grid_coverage(np.zeros((3, 4))[:, ::2], np.array([0, 3], np.int64), 0, 1, 1, 1, 1)
