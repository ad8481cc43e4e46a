"""XYZ (Web Mercator) tiles rendered on the fly from the ARD `-visual.tif` COGs.

For a tile ``z/x/y`` the renderer

1. finds the acquisitions whose cell interior (the level-12 cell without its 512 px apron; neighbouring
   COGs overlap in the apron) intersects the tile, newest acquisition first per cell, or only the
   acquisition the request picked;
2. transforms a 5 × 5 grid of points of the tile (its pixel edges every 64 px) from EPSG:3857 to the
   cell's UTM CRS with pyproj, exactly; inside each 64 × 64 px cell of that mesh the mapping is
   interpolated bilinearly (the UTM/Mercator distortion over 64 px is far below a pixel: see
   :func:`mesh_error`);
3. picks the COG level (full resolution or an internal overview) whose pixel is the coarsest one not
   coarser than the tile's pixel, reads only the window the tile needs through the Rust reader
   (decoded 512 px blocks are kept in a bounded LRU cache shared by all requests), and resamples it
   bilinearly with Pillow's mesh transform (C, GIL released);
4. composes the cells, filling no-data pixels of the newest acquisition from older ones, and encodes
   JPEG (no-data black) or PNG (no-data transparent: alpha 0). A pixel is imagery where at least half of
   the source pixels under it (bilinear weights) are valid; along the edge its colour is resampled from
   the valid pixels only (premultiplied alpha), so no dark fringe of no-data shows over a basemap.

A tile with no imagery renders as ``None`` (the app answers 204 No Content). A COG block that cannot
be decoded (damaged JPEG data, a tile past the end of a truncated file) is drawn as no-data and logged
once per (file, level, block); a COG that cannot be opened or read at all raises
:class:`ImageryUnavailableError` (the app answers 502), logged once per file.
"""

from __future__ import annotations

import io
import logging
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imagesim import grid, options
from imagesim.errors import (
    CogError,
    CorruptTiffError,
    GeoreferenceError,
    ImagesimError,
    ImagesimFileNotFoundError,
    ImagesimIOError,
    InvalidArgumentError,
    JpegError,
    WindowError,
)
from imagesim.imagery.ard import Acquisition, find_acquisitions
from imagesim.storage import AnyPath, location

TILE = 256
MESH = 4  # mesh cells per tile side (64 px each)
EARTH_HALF = 20037508.342789244  # half the Web Mercator extent (m)
MAX_ZOOM = 24
NODATA_MAX = 0  # a pixel is no-data when all its bands are <= this (the ARD no-data value is 0)
DEFAULT_BLOCK_CACHE_MB = options.BLOCK_CACHE_MB
DEFAULT_COG_CACHE = options.COG_CACHE
MAX_CELLS_PER_TILE = 64
# A block read failing with one of these is a damaged block: drawn as no-data, the rest of the COG is used.
BLOCK_DAMAGE: tuple[type[Exception], ...] = (CorruptTiffError, JpegError)
# Failing with one of these (opening the COG, or reading it), the whole file is unusable.
FILE_FAILURE: tuple[type[Exception], ...] = (CogError, ImagesimIOError, ImagesimFileNotFoundError)
MAX_REPORTED = 100_000  # damaged blocks and unreadable files remembered (each logged once); later ones are not logged

log = logging.getLogger("imagesim.search.serve")


class ImageryUnavailableError(CogError):
    """A COG a tile needs cannot be opened or read (the whole file, not one damaged block)."""

    def __init__(self, acquisition: Acquisition, reason: str) -> None:
        super().__init__(f"{acquisition.visual}: cannot be read: {reason}")
        self.acquisition = acquisition
        self.reason = reason


def band_max(arr: np.ndarray) -> np.ndarray:
    """Per-pixel maximum over the bands of a (rows, cols, bands) array.

    Element-wise maxima of the band planes: much faster than ``arr.max(axis=2)`` (a reduction
    along a short inner axis).
    """
    out = arr[:, :, 0].copy()
    for b in range(1, arr.shape[2]):
        np.maximum(out, arr[:, :, b], out=out)
    return out


def has_nodata(arr: np.ndarray) -> bool:
    """Whether any pixel has every band <= NODATA_MAX (a quick min() rules most blocks out)."""
    if arr.size == 0 or int(arr.min()) > NODATA_MAX:
        return False
    return bool((band_max(arr) <= NODATA_MAX).any())


@dataclass(frozen=True)
class Source:
    """One acquisition of one cell, ready to sample."""

    acquisition: Acquisition
    epsg: int
    interior: grid.Bounds  # cell interior in the zone's UTM metres
    lonlat: tuple[float, float, float, float]  # WGS84 bbox of the interior (w, s, e, n)
    merc: tuple[float, float, float, float]  # EPSG:3857 bbox of the interior

    @property
    def key(self) -> tuple[int, str]:
        return (self.acquisition.zone, self.acquisition.cell)


def _densified_ring(b: grid.Bounds, n: int = 16) -> tuple[np.ndarray, np.ndarray]:
    t = np.linspace(0.0, 1.0, n + 1)
    xs = np.concatenate([b.west + (b.east - b.west) * t, np.full(n + 1, b.east), b.east - (b.east - b.west) * t, np.full(n + 1, b.west)])
    ys = np.concatenate(
        [np.full(n + 1, b.south), b.south + (b.north - b.south) * t, np.full(n + 1, b.north), b.north - (b.north - b.south) * t]
    )
    return xs, ys


class Transformers:
    """pyproj transformers per (source, target) EPSG and thread (a Transformer is not shared across threads)."""

    def __init__(self) -> None:
        self._local = threading.local()

    def get(self, src: int, dst: int) -> Any:
        cache = getattr(self._local, "cache", None)
        if cache is None:
            cache = self._local.cache = {}
        t = cache.get((src, dst))
        if t is None:
            from pyproj import Transformer

            t = cache[(src, dst)] = Transformer.from_crs(src, dst, always_xy=True)
        return t


class Catalog:
    """The acquisitions of a delivery, indexed for tile look-ups."""

    def __init__(self, ard_path: str | Path, transformers: Transformers | None = None) -> None:
        self.root = location(ard_path)
        self.transformers = transformers or Transformers()
        acquisitions, self.misplaced = find_acquisitions(self.root)
        if not acquisitions:
            raise InvalidArgumentError(f"{self.root}: no `<zone>/<quadkey>/<date>/<catalog-id>-visual.tif` found; is it an ARD delivery?")
        self.sources: list[Source] = []
        for acq in acquisitions:
            epsg = grid.epsg(acq.cell, acq.zone)
            interior = grid.bounds(acq.cell)
            xs, ys = _densified_ring(interior)
            lon, lat = self.transformers.get(epsg, 4326).transform(xs, ys)
            mx, my = self.transformers.get(epsg, 3857).transform(xs, ys)
            self.sources.append(
                Source(
                    acq,
                    epsg,
                    interior,
                    (float(lon.min()), float(lat.min()), float(lon.max()), float(lat.max())),
                    (float(mx.min()), float(my.min()), float(mx.max()), float(my.max())),
                )
            )
        # per cell: its acquisitions newest first
        self.by_cell: dict[tuple[int, str], list[Source]] = {}
        for s in sorted(self.sources, key=lambda s: (s.acquisition.date, s.acquisition.catalog_id), reverse=True):
            self.by_cell.setdefault(s.key, []).append(s)
        self.catalog_ids = {s.acquisition.catalog_id for s in self.sources}
        self.dates = {s.acquisition.catalog_id: s.acquisition.date for s in self.sources}

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """WGS84 bbox of all cell interiors."""
        w = min(s.lonlat[0] for s in self.sources)
        s_ = min(s.lonlat[1] for s in self.sources)
        e = max(s.lonlat[2] for s in self.sources)
        n = max(s.lonlat[3] for s in self.sources)
        return (w, s_, e, n)

    def native_zoom(self) -> int:
        """The Web Mercator zoom whose pixel is closest to the full-resolution ARD pixel (0.305 m)."""
        lat = (self.bounds[1] + self.bounds[3]) / 2
        ground = 2 * EARTH_HALF / TILE * math.cos(math.radians(lat))  # m per pixel at z0
        return max(0, min(MAX_ZOOM, round(math.log2(ground / grid.PIXEL_SIZE))))

    def cells_for(self, merc_bbox: tuple[float, float, float, float], acquisition: str | None) -> list[list[Source]]:
        """Per intersecting cell, the sources to draw (newest first, or only ``acquisition``)."""
        w, s, e, n = merc_bbox
        out = []
        for cell in self.by_cell.values():
            mw, ms, me, mn = cell[0].merc
            if me <= w or mw >= e or mn <= s or ms >= n:
                continue
            if acquisition is not None:
                cell = [c for c in cell if c.acquisition.catalog_id == acquisition]
                if not cell:
                    continue
            out.append(cell)
        return out

    def describe(self) -> list[dict[str, Any]]:
        """The acquisitions for the API (no file-system paths)."""
        rows = []
        for cell in self.by_cell.values():
            for rank, s in enumerate(cell):
                a = s.acquisition
                rows.append(
                    {
                        "catalog_id": a.catalog_id,
                        "date": a.date,
                        "zone": a.zone,
                        "cell": a.cell,
                        "newest": rank == 0,
                        "bounds": [round(v, 7) for v in s.lonlat],
                    }
                )
        rows.sort(key=lambda r: (r["zone"], r["cell"], r["date"]), reverse=False)
        return rows


class BlockCache:
    """A thread-safe LRU of decoded COG blocks (with their has-no-data flag), bounded in bytes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._data: OrderedDict[tuple[Any, ...], tuple[np.ndarray, bool]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple[Any, ...]) -> tuple[np.ndarray, bool] | None:
        with self._lock:
            arr = self._data.get(key)
            if arr is not None:
                self._data.move_to_end(key)
                self.hits += 1
            else:
                self.misses += 1
            return arr

    def put(self, key: tuple[Any, ...], value: tuple[np.ndarray, bool]) -> None:
        if value[0].nbytes > self.max_bytes:
            return
        with self._lock:
            if key in self._data:
                return
            self._data[key] = value
            self._bytes += value[0].nbytes
            while self._bytes > self.max_bytes:
                _, old = self._data.popitem(last=False)
                self._bytes -= old[0].nbytes


@dataclass
class OpenCog:
    cog: Any
    x0: float
    y0: float
    dx: float
    dy: float
    levels: list[dict[str, Any]]
    lock: threading.Lock = field(default_factory=threading.Lock)


def check_render_settings(block_cache_mb: int, cog_cache: int, quality: int) -> None:
    """The renderer's settings in their ranges (``options``), or an InvalidArgumentError naming the one at fault."""
    options.check_range("block_cache_mb", block_cache_mb, *options.BLOCK_CACHE_MB_RANGE)
    options.check_range("cog_cache", cog_cache, *options.COG_CACHE_RANGE)
    options.check_range("quality", quality, *options.QUALITY_RANGE, what="the JPEG quality of the tiles")


class TileRenderer:
    """Renders XYZ tiles from a :class:`Catalog`; safe to call from many threads."""

    def __init__(
        self,
        catalog: Catalog,
        *,
        block_cache_mb: int = DEFAULT_BLOCK_CACHE_MB,
        cog_cache: int = DEFAULT_COG_CACHE,
        quality: int = options.TILE_QUALITY,
    ) -> None:
        check_render_settings(block_cache_mb, cog_cache, quality)
        self.catalog = catalog
        self.transformers = catalog.transformers
        self.blocks = BlockCache(block_cache_mb * 1024 * 1024) if block_cache_mb > 0 else None
        self.cog_cache = max(1, cog_cache)
        self._cogs: OrderedDict[AnyPath, OpenCog] = OrderedDict()
        self._cogs_lock = threading.Lock()
        self.quality = quality
        self.native_zoom = catalog.native_zoom()
        self.minzoom = max(0, self.native_zoom - 9)
        self.maxzoom = min(MAX_ZOOM, self.native_zoom + 3)
        self._reported: set[tuple[Any, ...]] = set()  # damaged blocks and unreadable files already logged
        self._reported_lock = threading.Lock()

    # --- failures, each logged once ---

    def _first_report(self, key: tuple[Any, ...]) -> bool:
        """Whether ``key`` is reported for the first time (then remembered; the log stays bounded by MAX_REPORTED)."""
        with self._reported_lock:
            if key in self._reported:
                return False
            if len(self._reported) >= MAX_REPORTED:
                if len(self._reported) == MAX_REPORTED:
                    self._reported.add(("full",))
                    log.warning("%d damaged COG blocks or unreadable COGs logged; no more are", MAX_REPORTED)
                return False
            self._reported.add(key)
            return True

    def _damaged_block(self, oc: OpenCog, level: int, bc: int, br: int, exc: Exception) -> None:
        if self._first_report(("block", oc.cog.path, level, bc, br)):
            reason = _without_path(str(exc), oc.cog.path)
            log.warning(
                "%s: block (col %d, row %d) of level %d cannot be decoded, drawn as no-data: %s", oc.cog.path, bc, br, level, reason
            )

    def _unavailable(self, src: Source, exc: Exception) -> ImageryUnavailableError:
        path = src.acquisition.visual
        reason = _without_path(str(exc), path)
        if self._first_report(("file", path)):
            log.error("%s: cannot be read, tiles that need it answer 502: %s", path, reason)
        return ImageryUnavailableError(src.acquisition, reason)

    # --- COG headers ---

    def open(self, path: AnyPath) -> OpenCog:
        with self._cogs_lock:
            oc = self._cogs.get(path)
            if oc is not None:
                self._cogs.move_to_end(path)
                return oc
        from imagesim.cog import open_cog

        cog = open_cog(path)
        gt = cog.geotransform
        if gt is None:
            raise GeoreferenceError(f"{path}: no georeferencing")
        oc = OpenCog(cog, x0=gt[0], y0=gt[3], dx=gt[1], dy=gt[5], levels=list(cog.levels))
        with self._cogs_lock:
            self._cogs[path] = oc
            while len(self._cogs) > self.cog_cache:
                self._cogs.popitem(last=False)
        return oc

    # --- pixels ---

    def _block(self, oc: OpenCog, level: int, bc: int, br: int, bw: int, bh: int) -> tuple[np.ndarray, bool]:
        """A decoded block and whether it holds any no-data pixel (cached); a damaged block is all no-data."""
        key = (oc.cog.path, level, bc, br)
        hit = self.blocks.get(key) if self.blocks is not None else None
        if hit is None:
            lv = oc.levels[level]
            bx, by = bc * bw, br * bh
            width, height = min(bw, int(lv["width"]) - bx), min(bh, int(lv["height"]) - by)
            try:
                arr = oc.cog.read((bx, by, width, height), level=level)
            except BLOCK_DAMAGE as exc:
                self._damaged_block(oc, level, bc, br, exc)
                arr = np.zeros((height, width, int(lv.get("bands") or 1)), dtype=np.uint8)  # NODATA_MAX: no-data
            if arr.ndim == 2:
                arr = arr[:, :, None]
            hit = (arr, has_nodata(arr))
            if self.blocks is not None:
                self.blocks.put(key, hit)
        return hit

    def read_window(self, oc: OpenCog, level: int, col: int, row: int, width: int, height: int) -> tuple[np.ndarray, bool]:
        """(pixels, has_nodata) of a window of one level, through the block cache."""
        if self.blocks is None:
            try:
                arr = oc.cog.read((col, row, width, height), level=level)
            except BLOCK_DAMAGE:
                pass  # read it block by block below, the damaged blocks as no-data
            else:
                if arr.ndim == 2:
                    arr = arr[:, :, None]
                return arr, has_nodata(arr)
        lv = oc.levels[level]
        bw = int(lv.get("chunk_width") or 512) if lv.get("tiled", True) else int(lv["width"])
        bh = int(lv.get("chunk_height") or 512)
        out: np.ndarray | None = None
        nodata = False
        b_r0, b_r1 = row // bh, (row + height - 1) // bh
        b_c0, b_c1 = col // bw, (col + width - 1) // bw
        for br in range(b_r0, b_r1 + 1):
            for bc in range(b_c0, b_c1 + 1):
                block, block_nodata = self._block(oc, level, bc, br, bw, bh)
                nodata |= block_nodata
                bx, by = bc * bw, br * bh
                if b_r0 == b_r1 and b_c0 == b_c1:  # one block: a view, no copy
                    return block[row - by : row - by + height, col - bx : col - bx + width], nodata
                if out is None:
                    out = np.empty((height, width, block.shape[2]), dtype=np.uint8)
                c0, r0 = max(col, bx), max(row, by)
                c1, r1 = min(col + width, bx + block.shape[1]), min(row + height, by + block.shape[0])
                out[r0 - row : r1 - row, c0 - col : c1 - col] = block[r0 - by : r1 - by, c0 - bx : c1 - bx]
        assert out is not None
        return out, nodata

    def _level(self, oc: OpenCog, tile_pixel_m: float) -> int:
        """The coarsest level whose pixel is not coarser than the tile's pixel."""
        w0 = oc.levels[0]["width"]
        best = 0
        for i, lv in enumerate(oc.levels):
            if abs(oc.dx) * w0 / lv["width"] <= tile_pixel_m * 1.01:
                best = i
        return best

    def _sample(self, src: Source, ux: np.ndarray, uy: np.ndarray, inside: bool) -> tuple[np.ndarray, np.ndarray | None] | None:
        """(RGB 256×256, mask of pixels with imagery or None when all have) of one source.

        ``ux``/``uy``: the mesh points in the source's UTM CRS; ``inside``: the tile lies inside the
        cell interior (no mask needed unless the window holds no-data).
        """
        try:
            return self._sample_source(src, ux, uy, inside)
        except WindowError:
            raise  # a bug in the window maths, not a bad file
        except FILE_FAILURE as exc:
            raise self._unavailable(src, exc) from None

    def _sample_source(self, src: Source, ux: np.ndarray, uy: np.ndarray, inside: bool) -> tuple[np.ndarray, np.ndarray | None] | None:
        from PIL import Image

        oc = self.open(src.acquisition.visual)
        step = TILE // MESH
        px = math.hypot(float(ux[0, 1] - ux[0, 0]), float(uy[0, 1] - uy[0, 0])) / step  # tile pixel in metres
        level = self._level(oc, px)
        lv = oc.levels[level]
        W, H = int(lv["width"]), int(lv["height"])
        sx = oc.dx * oc.levels[0]["width"] / W
        sy = oc.dy * oc.levels[0]["height"] / H
        cols = (ux - oc.x0) / sx  # continuous pixel coordinates of the level (pixel centres at +0.5)
        rows = (uy - oc.y0) / sy
        c0 = max(0, int(math.floor(cols.min())) - 1)
        r0 = max(0, int(math.floor(rows.min())) - 1)
        c1 = min(W, int(math.ceil(cols.max())) + 1)
        r1 = min(H, int(math.ceil(rows.max())) + 1)
        if c1 <= c0 or r1 <= r0:
            return None
        window, nodata = self.read_window(oc, level, c0, r0, c1 - c0, r1 - r0)
        if window.shape[2] >= 3:
            pixels = np.ascontiguousarray(window[:, :, :3])
        else:
            pixels = np.repeat(window[:, :, :1], 3, axis=2)
        image = Image.fromarray(pixels, "RGB")
        cc, rr = cols - c0, rows - r0
        mesh = []
        for j in range(MESH):
            for i in range(MESH):
                box = (i * step, j * step, (i + 1) * step, (j + 1) * step)
                quad = (cc[j, i], rr[j, i], cc[j + 1, i], rr[j + 1, i], cc[j + 1, i + 1], rr[j + 1, i + 1], cc[j, i + 1], rr[j, i + 1])
                mesh.append((box, tuple(float(v) for v in quad)))
        rgb = np.asarray(image.transform((TILE, TILE), Image.Transform.MESH, mesh, Image.Resampling.BILINEAR))
        if inside and not nodata and c0 > 0 and r0 > 0 and c1 < W and r1 < H:
            return rgb, None
        # mask: window pixels inside the cell interior with data, mapped like the pixels (nearest)
        b = src.interior
        ic0, ic1 = round((b.west - oc.x0) / sx) - c0, round((b.east - oc.x0) / sx) - c0
        ir0, ir1 = round((b.north - oc.y0) / sy) - r0, round((b.south - oc.y0) / sy) - r0
        valid = np.zeros(window.shape[:2], dtype=np.uint8)
        sl = (slice(max(0, ir0), max(0, ir1)), slice(max(0, ic0), max(0, ic1)))
        valid[sl] = (band_max(window[sl]) > NODATA_MAX).view(np.uint8) * np.uint8(255)
        # the share of valid source pixels under each tile pixel, resampled like the colours
        weight = np.asarray(Image.fromarray(valid, "L").transform((TILE, TILE), Image.Transform.MESH, mesh, Image.Resampling.BILINEAR))
        covered = weight >= 128
        edge = covered & (weight < 255)
        if edge.any():
            # Along the edge of the imagery bilinear resampling mixes the no-data black into the colours (a dark
            # fringe over a basemap): resample with everything outside the valid pixels black and divide by the
            # valid share (premultiplied alpha), so edge pixels take the colour of their valid neighbours only.
            masked = Image.fromarray(pixels * (valid[:, :, None] > 0), "RGB")
            cells = [(box, quad) for box, quad in mesh if edge[box[1] : box[3], box[0] : box[2]].any()]  # only where needed
            premul = np.asarray(masked.transform((TILE, TILE), Image.Transform.MESH, cells, Image.Resampling.BILINEAR))
            rgb = rgb.copy()
            w = weight[edge].astype(np.float32)[:, None]
            rgb[edge] = np.clip(premul[edge].astype(np.float32) * 255.0 / w + 0.5, 0, 255).astype(np.uint8)
        return rgb, covered

    def render_array(self, z: int, x: int, y: int, acquisition: str | None = None) -> tuple[np.ndarray, np.ndarray | None] | None:
        """(RGB, mask of pixels with imagery or None when all have) of a tile, or None without imagery."""
        size = 2 * EARTH_HALF / (1 << z)
        west, north = -EARTH_HALF + x * size, EARTH_HALF - y * size
        cells = self.catalog.cells_for((west, north - size, west + size, north), acquisition)
        if not cells or len(cells) > MAX_CELLS_PER_TILE:
            return None
        t = np.arange(MESH + 1) * (size / MESH)
        mx, my = np.meshgrid(west + t, north - t)  # mesh points at pixel edges, row-major (north first)
        rgb: np.ndarray | None = None
        filled: np.ndarray | None = None  # None: nothing yet; all True is kept as an array
        for cell in cells:
            first = cell[0]
            ux, uy = (np.asarray(a) for a in self.transformers.get(3857, first.epsg).transform(mx, my))
            b = first.interior
            if ux.max() <= b.west or ux.min() >= b.east or uy.max() <= b.south or uy.min() >= b.north:
                continue
            inside = bool(ux.min() >= b.west and ux.max() <= b.east and uy.min() >= b.south and uy.max() <= b.north)
            for src in cell:
                got = self._sample(src, ux, uy, inside)
                if got is None:
                    continue
                pixels, mask = got
                if filled is None and mask is None:
                    rgb, filled = pixels, np.ones((TILE, TILE), dtype=bool)
                    return rgb, None  # the first source covers the whole tile
                if rgb is None or filled is None:
                    rgb, filled = np.zeros((TILE, TILE, 3), dtype=np.uint8), np.zeros((TILE, TILE), dtype=bool)
                take = ~filled if mask is None else mask & ~filled
                if take.any():
                    np.copyto(rgb, pixels, where=take[:, :, None])
                    filled |= take
                if filled.all():
                    return rgb, None
                if mask is None:
                    break  # this source covered all it could of the cell
        if filled is None or rgb is None or not filled.any():
            return None
        return rgb, filled

    def render(self, z: int, x: int, y: int, fmt: str = "jpg", acquisition: str | None = None) -> bytes | None:
        """Encoded tile bytes (JPEG or PNG), or None when the tile has no imagery."""
        from PIL import Image

        check_tile(z, x, y)
        arrays = self.render_array(z, x, y, acquisition)
        if arrays is None:
            return None
        rgb, filled = arrays
        buf = io.BytesIO()
        if fmt == "png":
            alpha = np.full((TILE, TILE), 255, np.uint8) if filled is None else np.where(filled, 255, 0).astype(np.uint8)
            rgba = np.dstack([rgb, alpha])
            Image.fromarray(rgba, "RGBA").save(buf, "PNG", compress_level=1)
        else:
            Image.fromarray(rgb, "RGB").save(buf, "JPEG", quality=self.quality)
        return buf.getvalue()


def _without_path(message: str, path: Any) -> str:
    """An error message without the leading ``<path>: `` the core puts in front of it."""
    prefix = f"{path}: "
    return message[len(prefix) :] if message.startswith(prefix) else message


def check_tile(z: int, x: int, y: int) -> None:
    if not 0 <= z <= MAX_ZOOM:
        raise InvalidArgumentError(f"zoom {z} outside 0..{MAX_ZOOM}")
    n = 1 << z
    if not (0 <= x < n and 0 <= y < n):
        raise InvalidArgumentError(f"tile {z}/{x}/{y} does not exist (x and y must be in 0..{n - 1} at zoom {z})")


def mesh_error(z: int, x: int, y: int, epsg: int, transformers: Transformers | None = None) -> float:
    """Largest distance (in tile pixels) between the mesh-interpolated and the exact UTM position of a pixel centre."""
    tr = (transformers or Transformers()).get(3857, epsg)
    size = 2 * EARTH_HALF / (1 << z)
    west, north = -EARTH_HALF + x * size, EARTH_HALF - y * size
    t = np.arange(MESH + 1) * (size / MESH)
    mx, my = np.meshgrid(west + t, north - t)
    ux, uy = (np.asarray(a) for a in tr.transform(mx, my))
    pos = (np.arange(TILE) + 0.5) / (TILE / MESH)
    i0 = np.minimum(np.floor(pos).astype(int), MESH - 1)
    f = pos - i0
    w = np.zeros((TILE, MESH + 1))
    w[np.arange(TILE), i0] = 1 - f
    w[np.arange(TILE), i0 + 1] = f
    fx, fy = w @ ux @ w.T, w @ uy @ w.T
    c = west + (np.arange(TILE) + 0.5) * size / TILE
    px, py = np.meshgrid(c, north - (np.arange(TILE) + 0.5) * size / TILE)
    ex, ey = (np.asarray(a) for a in tr.transform(px, py))
    pixel_m = math.hypot(float(ux[0, 1] - ux[0, 0]), float(uy[0, 1] - uy[0, 0])) / (TILE / MESH)
    return float(np.hypot(fx - ex, fy - ey).max() / pixel_m)


__all__ = [
    "Catalog",
    "ImageryUnavailableError",
    "TileRenderer",
    "Transformers",
    "check_render_settings",
    "check_tile",
    "mesh_error",
    "ImagesimError",
]
