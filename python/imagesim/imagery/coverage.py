"""Exact area of a vector mask inside every chip of a cell, in one pass.

ARD masks (cloud, water, data, …) are polygons, and what the pipeline needs of them is the area under
the mask in each chip. The chips of a level-12 cell are an aligned grid, so instead of one polygon
intersection per chip (1,024 at zoom 17, each re-reading the whole mask) the Rust kernel
``grid_coverage`` clips every edge of the mask against the grid once and sums the exact signed area
per square: O(edges + squares) per mask per cell, exact up to floating-point rounding (it matches
shapely's ``box(chip).intersection(mask).area`` to ~1e-7 m², shapely's own rounding on UTM coordinates).

Polygons are oriented here (exterior counter-clockwise, holes clockwise) so the kernel's signed areas
add up to the plain area; non-polygon parts of a geometry have no area and are ignored.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import shapely
from shapely.geometry.base import BaseGeometry

from imagesim import _imagesim as _rs
from imagesim import grid, options
from imagesim.errors import GridError, InvalidArgumentError

_POLYGON = 3  # shapely.GeometryType.POLYGON
_COLLECTIONS = (6, 7)  # MULTIPOLYGON, GEOMETRYCOLLECTION: parts may be polygons


def _polygons(geom: BaseGeometry) -> npt.NDArray[np.object_]:
    """The non-empty polygons of ``geom``, collections flattened (nested ones too)."""
    if not isinstance(geom, BaseGeometry):
        raise InvalidArgumentError(f"`geom` {type(geom).__name__}: must be a shapely geometry", param="geom")
    found = []
    parts = np.array([geom], dtype=object)
    while parts.size:
        kind = shapely.get_type_id(parts)
        found.append(parts[kind == _POLYGON])
        parts = shapely.get_parts(parts[np.isin(kind, _COLLECTIONS)])
    polys = np.concatenate(found)
    return polys[~shapely.is_empty(polys)]


def _oriented(polys: npt.NDArray[np.object_]) -> npt.NDArray[np.object_]:
    """Exterior rings counter-clockwise, holes clockwise."""
    if hasattr(shapely, "orient_polygons"):  # shapely >= 2.1
        return np.asarray(shapely.orient_polygons(polys, exterior_cw=False), dtype=object)
    from shapely.geometry.polygon import orient

    return np.array([orient(p, sign=1.0) for p in polys], dtype=object)


def grid_areas(geom: BaseGeometry, x0: float, y_top: float, cell: float, nx: int, ny: int) -> npt.NDArray[np.float64]:
    """Area of ``geom`` inside each square of an ``nx`` × ``ny`` grid of side ``cell`` whose north-west
    corner is ``(x0, y_top)``: float64 ``(ny, nx)``, north row first, west to east.

    ``geom``: a shapely Polygon, MultiPolygon or GeometryCollection (non-polygon parts ignored; empty
    gives zeros) in the grid's coordinates, expected valid (overlapping parts would count twice).
    Raises InvalidArgumentError for a bad grid (``cell`` <= 0, ``nx`` or ``ny`` < 1, more than 2**26
    squares) or non-finite coordinates."""
    options.check_range("nx", nx, 1)
    options.check_range("ny", ny, 1)
    polys = _polygons(geom)
    if polys.size:
        _, coords, (ring_offsets, _) = shapely.to_ragged_array(_oriented(polys), include_z=False)
        xy = np.ascontiguousarray(coords, dtype=np.float64)
        offsets = np.ascontiguousarray(ring_offsets, dtype=np.int64)
    else:
        xy = np.empty((0, 2), np.float64)
        offsets = np.zeros(1, np.int64)
    area = _rs.grid_coverage(xy, offsets, float(x0), float(y_top), float(cell), int(nx), int(ny))
    # Only rounding can leave a square outside [0, cell²] for a valid polygon.
    return np.clip(area, 0.0, cell * cell, out=area)


def chip_areas(geom: BaseGeometry, cell_quadkey: str, zoom: int) -> npt.NDArray[np.float64]:
    """Area of ``geom`` inside each chip at ``zoom`` of the level-12 cell ``cell_quadkey``, flat, in
    :func:`imagesim.grid.children` order (north to south, west to east). ``geom`` is in the cell's
    zone metres (southern shift applied, as :func:`imagesim.grid.bounds`)."""
    if len(cell_quadkey) != grid.CELL_ZOOM:
        raise GridError(f"`cell_quadkey` {cell_quadkey!r}: not a level-{grid.CELL_ZOOM} cell quadkey ({grid.CELL_ZOOM} digits)")
    # grid.children, whose order this follows, goes at most 12 levels down.
    options.check_range("zoom", zoom, grid.CELL_ZOOM, grid.CELL_ZOOM + 12)
    west, _, _, north = grid.bounds(cell_quadkey)
    n = 1 << (zoom - grid.CELL_ZOOM)
    return grid_areas(geom, west, north, grid.CELL_SIZE / n, n, n).reshape(-1)
