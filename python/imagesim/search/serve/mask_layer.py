"""Mask outlines for the viewer: the ARD vector masks of the acquisitions in view, as WGS84 GeoJSON.

For a bbox and a mask kind (:data:`imagesim.imagery.ard.MASK_FILES`: cloud, cloud_shadow, …) the layer
takes, per cell in view, the acquisition the tiles show (the newest, or the one the request picked),
reads its mask GeoPackage (:func:`imagesim.imagery.masks.read_mask`, in the cell's UTM CRS), clips it to
the cell interior (neighbouring COGs overlap in the apron; the tiles draw only the interior), simplifies
it to about a screen pixel of the view, clips it to the bbox and reprojects it to WGS84.

Each mask file is read once and kept (LRU over files, keyed by path, size and mtime, so an edited file is
read again); its simplifications are kept per tolerance (powers of two metres). When the view would need
more than ``vertex_budget`` vertices the tolerance is doubled until it fits. A missing mask file gives a
note, an unreadable one a problem (logged once with its path; the API names only the acquisition):
neither fails the request.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from imagesim.errors import ImagesimError
from imagesim.imagery.ard import MASK_FILES
from imagesim.search.serve.tiles import Catalog, Source, Transformers
from imagesim.storage import AnyPath

log = logging.getLogger("imagesim.search.serve")

MASK_KINDS = tuple(MASK_FILES)
VERTEX_BUDGET = 20_000  # vertices in one answer: a few hundred kB of JSON, quick for Leaflet's SVG
MASK_CACHE = 64  # mask files kept in memory (their geometry in the cell interior)
MAX_MASK_CELLS = 64  # cells in view beyond which no outlines are drawn (zoom in)
VIEW_PIXELS = 1024  # the tolerance is about one pixel of a view this many pixels across the bbox
MIN_TOLERANCE_M = 0.25  # below the ARD pixel (0.305 m): no visible simplification
MAX_LEVEL = 16  # tolerance MIN_TOLERANCE_M * 2**16 ≈ 16 km: a cell is a handful of vertices
M_PER_DEGREE = 111_320.0
DECIMALS = 7  # about 1 cm in WGS84


@dataclass
class _Mask:
    """One mask file read: its geometry clipped to the cell interior (UTM), or why it cannot be used."""

    geometry: Any = None
    error: str | None = None
    simplified: dict[int, Any] = field(default_factory=dict)


def _label(kind: str) -> str:
    return kind.replace("_", " ")


def _file_key(path: AnyPath) -> tuple[str, int, int] | None:
    """(path, size, mtime) of a mask file, None when there is none (other OSErrors propagate: a problem)."""
    try:
        st = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return (str(path), st.st_size, st.st_mtime_ns)


class MaskLayer:
    """Outlines of the ARD masks of a :class:`Catalog`; safe to call from many threads."""

    def __init__(
        self, catalog: Catalog, *, capacity: int = MASK_CACHE, vertex_budget: int = VERTEX_BUDGET, max_cells: int = MAX_MASK_CELLS
    ) -> None:
        self.catalog = catalog
        self.transformers: Transformers = catalog.transformers
        self.capacity = max(1, capacity)
        self.vertex_budget = vertex_budget
        self.max_cells = max_cells
        self._masks: OrderedDict[tuple[str, int, int], _Mask] = OrderedDict()
        self._lock = threading.Lock()
        self._logged: set[tuple[str, int, int]] = set()
        self.reads = 0  # mask files read (not from the cache)

    # --- files ---

    def _mask(self, src: Source, kind: str, key: tuple[str, int, int], path: AnyPath) -> _Mask:
        with self._lock:
            hit = self._masks.get(key)
            if hit is not None:
                self._masks.move_to_end(key)
                return hit
        hit = self._read(src, kind, path)
        with self._lock:
            self.reads += 1
            self._masks[key] = hit
            while len(self._masks) > self.capacity:
                self._masks.popitem(last=False)
            first = hit.error is not None and key not in self._logged
            if first and len(self._logged) < 100_000:
                self._logged.add(key)
        if first:
            log.warning("%s: mask cannot be read, its outlines are not drawn: %s", path, hit.error)
        return hit

    def _read(self, src: Source, kind: str, path: AnyPath) -> _Mask:
        import shapely
        import shapely.errors

        from imagesim.imagery.masks import read_mask

        try:
            mask = read_mask(path, src.epsg)
            b = src.interior
            geometry = shapely.clip_by_rect(mask.geometry, b.west, b.south, b.east, b.north)
        except (ImagesimError, OSError, ValueError, shapely.errors.ShapelyError) as exc:
            text = str(exc)
            for prefix in (f"{path}: ", str(path)):
                text = text.replace(prefix, "")
            return _Mask(error=text or type(exc).__name__)
        return _Mask(geometry=geometry)

    def _simplified(self, mask: _Mask, level: int) -> Any:
        import shapely

        with self._lock:
            geom = mask.simplified.get(level)
        if geom is None:
            geom = shapely.simplify(mask.geometry, MIN_TOLERANCE_M * 2**level, preserve_topology=True)
            with self._lock:
                mask.simplified[level] = geom
        return geom

    # --- a view ---

    def sources(self, bbox: tuple[float, float, float, float], acquisition: str | None) -> list[Source]:
        """Per cell whose interior intersects ``bbox`` (WGS84), the acquisition the tiles show first."""
        w, s, e, n = bbox
        out = []
        for cell in self.catalog.by_cell.values():
            cw, cs, ce, cn = cell[0].lonlat
            if ce <= w or cw >= e or cn <= s or cs >= n:
                continue
            picked = [c for c in cell if acquisition is None or c.acquisition.catalog_id == acquisition]
            if picked:
                out.append(picked[0])
        return out

    def _utm_envelope(self, src: Source, bbox: tuple[float, float, float, float], pad: float) -> tuple[float, float, float, float]:
        """The bbox's envelope in the cell's UTM CRS (edges densified: they bend there), padded by ``pad`` metres."""
        w, s, e, n = bbox
        t = np.linspace(0.0, 1.0, 17)
        lon = np.concatenate([w + (e - w) * t, np.full_like(t, e), e - (e - w) * t, np.full_like(t, w)])
        lat = np.concatenate([np.full_like(t, s), s + (n - s) * t, np.full_like(t, n), n - (n - s) * t])
        x, y = (np.asarray(a) for a in self.transformers.get(4326, src.epsg).transform(lon, lat))
        return (float(x.min()) - pad, float(y.min()) - pad, float(x.max()) + pad, float(y.max()) + pad)

    def _outline(self, src: Source, mask: _Mask, level: int, bbox: tuple[float, float, float, float]) -> Any:
        """The mask at ``level`` in ``bbox``, in WGS84 (rounded), polygons only; empty when nothing is in view."""
        import shapely

        tolerance = MIN_TOLERANCE_M * 2**level
        geom = shapely.clip_by_rect(self._simplified(mask, level), *self._utm_envelope(src, bbox, tolerance))
        if geom.is_empty:
            return geom
        tr = self.transformers.get(src.epsg, 4326)
        geom = shapely.transform(geom, lambda xy: np.round(np.column_stack(tr.transform(xy[:, 0], xy[:, 1])), DECIMALS))
        geom = shapely.clip_by_rect(geom, *bbox)
        parts = shapely.get_parts(shapely.get_parts(geom))
        parts = parts[(shapely.get_type_id(parts) == 3) & ~shapely.is_empty(parts)]
        return shapely.multipolygons(parts) if len(parts) else shapely.Polygon()

    def outlines(self, bbox: tuple[float, float, float, float], kind: str, acquisition: str | None) -> dict[str, Any]:
        """A GeoJSON FeatureCollection (WGS84) of the ``kind`` mask of each cell in ``bbox``, with ``notes``
        (missing files, too many cells), ``problems`` (unreadable files), the tolerance used and the vertex count."""
        import shapely

        if kind not in MASK_FILES:
            raise ValueError(f"unknown mask kind {kind!r}")
        w, s, e, n = bbox
        notes: list[str] = []
        problems: list[str] = []
        body: dict[str, Any] = {"type": "FeatureCollection", "features": [], "kind": kind, "notes": notes, "problems": problems}
        srcs = self.sources(bbox, acquisition)
        if len(srcs) > self.max_cells:
            notes.append(f"{len(srcs)} cells in view: zoom in to see {_label(kind)} outlines (drawn for up to {self.max_cells} cells)")
            return body | {"tolerance_m": None, "vertices": 0, "truncated": True}
        masks: list[tuple[Source, _Mask]] = []
        for src in srcs:
            a = src.acquisition
            path = a.mask_path(MASK_FILES[kind])
            where = f"{a.catalog_id} (cell {a.zone}/{a.cell})"
            try:
                key = _file_key(path)
            except OSError as exc:
                problems.append(f"{where}: the {_label(kind)} mask cannot be read: {exc.strerror or type(exc).__name__}")
                continue
            if key is None:
                notes.append(f"{where} has no {_label(kind)} mask ({a.catalog_id}-{MASK_FILES[kind]}.gpkg)")
                continue
            mask = self._mask(src, kind, key, path)
            if mask.error is not None:
                problems.append(f"{where}: the {_label(kind)} mask cannot be read: {mask.error}")
                continue
            if not mask.geometry.is_empty:
                masks.append((src, mask))
        # about one view pixel, from the bbox's size in metres at its middle latitude
        lat = math.radians(max(-85.0, min(85.0, (s + n) / 2)))
        pixel = max((e - w) * M_PER_DEGREE * math.cos(lat), (n - s) * M_PER_DEGREE) / VIEW_PIXELS
        level = max(0, min(MAX_LEVEL, math.ceil(math.log2(max(pixel, MIN_TOLERANCE_M) / MIN_TOLERANCE_M))))
        while True:
            geoms = [self._outline(src, mask, level, bbox) for src, mask in masks]
            vertices = int(sum(shapely.get_num_coordinates(g) for g in geoms))
            if vertices <= self.vertex_budget or level >= MAX_LEVEL:
                break
            level += 1
        for (src, _), geom in zip(masks, geoms):
            if geom.is_empty:
                continue
            a = src.acquisition
            body["features"].append(
                {
                    "type": "Feature",
                    "id": f"{a.catalog_id}/{kind}",
                    "geometry": shapely.geometry.mapping(geom),
                    "properties": {"kind": kind, "catalog_id": a.catalog_id, "date": a.date, "zone": a.zone, "cell": a.cell},
                }
            )
        return body | {"tolerance_m": MIN_TOLERANCE_M * 2**level, "vertices": vertices, "truncated": vertices > self.vertex_budget}
