"""The ARD UTM-zone quadkey grid (see ``docs/architecture.md``), backed by the Rust core.

Tiles are ``(x, y, z)`` in the quadtree over x ∈ [-9,740,000, 10,740,000] and
y ∈ [-10,240,000, 10,240,000] of a UTM zone; quadkey digits are Bing-style. Southern tiles
(quadkey starting with 2 or 3) are shifted by 10,000,000 m of false northing (EPSG:327zz).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

from imagesim import _imagesim as _rs
from imagesim.errors import GridError

CELL_ZOOM: int = _rs.CELL_ZOOM
CELL_PIXELS: int = _rs.CELL_PIXELS
APRON: int = _rs.APRON
COG_PIXELS: int = _rs.COG_PIXELS
PIXEL_SIZE: float = _rs.PIXEL_SIZE
# The quadtree square every zone shares (x and y above), in the zone's northern-CRS metres.
ORIGIN_X: float = _rs.ORIGIN_X
ORIGIN_Y: float = _rs.ORIGIN_Y
CELL_SIZE: float = CELL_PIXELS * PIXEL_SIZE  # metres on a side of a level-12 cell (5 km)


class Tile(NamedTuple):
    x: int
    y: int
    z: int


class Bounds(NamedTuple):
    west: float
    south: float
    east: float
    north: float


class Window(NamedTuple):
    col_off: int
    row_off: int
    width: int
    height: int


class ChipName(NamedTuple):
    zone: int
    quadkey: str
    catalog_id: str

    @property
    def cell(self) -> str:
        """The level-12 cell quadkey the chip lies in."""
        return self.quadkey[:CELL_ZOOM]

    @property
    def file_name(self) -> str:
        return chip_name(self.zone, self.quadkey, self.catalog_id)


def _not_text(what: str, value: str) -> GridError:
    """The GridError for a name the core cannot even take: not valid Unicode (an undecodable file name)."""
    return GridError(f"{what} {value!r} is not valid text (an undecodable file name?)")


def _bad_zone(zone: int) -> GridError:
    """The GridError for a zone that does not fit the core's u8 (the core checks 1..60 for the rest)."""
    return GridError(f"UTM zone {zone} is outside 1..60")


def quadkey_to_tile(quadkey: str) -> Tile:
    try:
        return Tile(*_rs.quadkey_to_tile(quadkey))
    except UnicodeEncodeError:
        raise _not_text("quadkey", quadkey) from None


def tile_to_quadkey(tile: Tile | tuple[int, int, int]) -> str:
    x, y, z = tile
    return _rs.tile_to_quadkey((x, y, z))


def bounds(quadkey: str) -> Bounds:
    """Bounds of a tile in its zone's metres (southern shift applied)."""
    try:
        return Bounds(*_rs.quadkey_bounds(quadkey))
    except UnicodeEncodeError:
        raise _not_text("quadkey", quadkey) from None


def epsg(quadkey: str, zone: int) -> int:
    """EPSG code of the UTM CRS of a tile: 326zz north, 327zz south."""
    try:
        return _rs.quadkey_epsg(quadkey, zone)
    except UnicodeEncodeError:
        raise _not_text("quadkey", quadkey) from None
    except OverflowError:
        raise _bad_zone(zone) from None


def children(quadkey: str, zoom: int) -> list[str]:
    """Quadkeys of all descendants at ``zoom``, row-major (north to south, west to east)."""
    return _rs.quadkey_children(quadkey, zoom)


def chip_window(quadkey: str) -> Window:
    """Pixel window of a chip (zoom >= 12) inside its level-12 cell COG."""
    return Window(*_rs.chip_window(quadkey))


def cell_geotransform(cell_quadkey: str) -> tuple[float, float, float, float, float, float]:
    """GDAL geotransform of a level-12 cell COG (17,408 px with the 512 px apron)."""
    return tuple(_rs.cell_geotransform(cell_quadkey))  # type: ignore[return-value]


def chip_name(zone: int, quadkey: str, catalog_id: str) -> str:
    """``Z<zone>-<quadkey>_<catalog-id>.jpg``."""
    try:
        return _rs.chip_name(zone, quadkey, catalog_id)
    except UnicodeEncodeError:
        raise _not_text("chip name part", quadkey if not quadkey.isascii() else catalog_id) from None
    except OverflowError:
        raise _bad_zone(zone) from None


def parse_chip_name(name: str) -> ChipName:
    """``Z<zone>-<quadkey>_<catalog-id>.jpg`` split up; GridError for anything else (ASCII digits only:
    "Z１０-…" or "Z١٠-…" are not chip names)."""
    try:
        return ChipName(*_rs.parse_chip_name(name))
    except UnicodeEncodeError:
        raise _not_text("chip name", name) from None


def cog_path_from_chip(chip: str | os.PathLike[str], ard_root: str | os.PathLike[str]) -> Path:
    """The ``-visual.tif`` a chip was cut from (raises ImagesimFileNotFoundError if absent).

    ``chip``: a chip name (``Z33-…_<catalog-id>.jpg``, the ``.jpg`` optional) or the path of a chip
    (only its file name counts); ``ard_root``: the delivery root or one zone folder of it (``ard/33``)."""
    return Path(_rs.cog_path_from_chip(chip, Path(ard_root)))
