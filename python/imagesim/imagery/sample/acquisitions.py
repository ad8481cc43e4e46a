"""The sample delivery's acquisitions: where they are (zone, cells), how they look, and which pixels hold data.

Three acquisitions over two west-east adjacent level-12 cells; each carries its lighting/colour
parameters, how cloudy it is and the strip edge that bounds its valid data. :func:`valid_polygon` turns that edge
into the valid-data polygon that the renderer masks with and the data mask and metadata describe.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from imagesim import grid

__all__ = ["ZONE", "CELLS", "Acquisition", "ACQUISITIONS", "valid_polygon"]

ZONE = 10
#: Two west-east adjacent level-12 cells in UTM zone 10 north (x 550–560 km, y 4,180–4,185 km).
CELLS = ("120020223032", "120020223033")

_P = grid.COG_PIXELS


@dataclass(frozen=True)
class Acquisition:
    cell: str
    catalog_id: str
    datetime: str  # ISO 8601 UTC
    platform: str
    off_nadir: float
    sun_elevation: float
    sun_azimuth: float
    cloud_cover: float  # the fraction of the imaged data area to cloud (clouds.py); metadata reports the measured one
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
        cell=CELLS[0],
        catalog_id="104001008A3C21F0",
        datetime="2023-06-14T19:05:31.412Z",
        platform="WV03",
        off_nadir=14.2,
        sun_elevation=71.3,
        sun_azimuth=128.4,
        cloud_cover=0.06,
        gain=(1.00, 1.00, 0.98),
        haze=(6.0, 8.0, 12.0),
        shadow=0.55,
        edge_point=(3400.0, 0.0),
        edge_angle=83.0,
        edge_side=+1,
        small_box=(6300, 5400, 2560),
        small_edge_frac=0.35,
    ),
    Acquisition(
        cell=CELLS[0],
        catalog_id="103001010B7D4E52",
        datetime="2024-02-20T18:52:10.087Z",
        platform="WV02",
        off_nadir=22.7,
        sun_elevation=39.8,
        sun_azimuth=158.9,
        cloud_cover=0.11,
        gain=(0.90, 0.96, 1.08),
        haze=(14.0, 16.0, 22.0),
        shadow=0.45,
        edge_point=(0.0, 14200.0),
        edge_angle=-14.0,
        edge_side=+1,
        small_box=(6300, 5400, 2560),
        small_edge_frac=0.6,
    ),
    Acquisition(
        cell=CELLS[1],
        catalog_id="104001008F12A9C7",
        datetime="2023-09-03T19:12:44.930Z",
        platform="WV03",
        off_nadir=9.6,
        sun_elevation=58.1,
        sun_azimuth=146.2,
        cloud_cover=0.05,
        gain=(1.04, 1.01, 0.95),
        haze=(8.0, 8.0, 10.0),
        shadow=0.5,
        edge_point=(14300.0, 0.0),
        edge_angle=97.0,
        edge_side=-1,
        small_box=(8000, 9000, 2560),
        small_edge_frac=0.3,
    ),
)


# --------------------------------------------------------------------------------------------
# Valid-data polygons (strip edges)
# --------------------------------------------------------------------------------------------


def valid_polygon(acq: Acquisition, small: bool):
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
