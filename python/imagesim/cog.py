"""GeoTIFF / COG reading, backed by the Rust core (``imagesim._imagesim.Cog``).

A :class:`Cog` parses the TIFF structure once; reads decode only the tiles or strips a window
touches, with the GIL released, so one object can be shared by many threads::

    from imagesim.cog import open_cog

    cog = open_cog("103001005D31F500-visual.tif")
    cog.levels[0]          # {'width': 17408, 'height': 17408, 'bands': 3, 'compression': 7, ...}
    cog.geotransform       # GDAL order: (x0, dx, rx, y0, ry, dy)
    chip = cog.read((512, 512, 512, 512))   # numpy (512, 512, 3) uint8, bands last

Levels are the full-resolution image (0) followed by the file's internal overviews; mask IFDs
and external ``.ovr`` / ``.msk`` sidecars are not levels. Failures raise subclasses of
:class:`imagesim.errors.CogError` (corrupt, unsupported, window outside the image...).
"""

from __future__ import annotations

import os

from imagesim._imagesim import Cog

__all__ = ["Cog", "open_cog"]


def open_cog(path: str | os.PathLike[str]) -> Cog:
    """Open a GeoTIFF / COG for reading (raises an :mod:`imagesim.errors` exception on failure)."""
    return Cog(path)
