"""Rendering the sample's pixels: the vector scene rasterized window by window with GDAL.

Each window is burned into a feature-code raster, coloured through per-feature look-up tables,
textured with procedural noise (8 px clumps, low-frequency variation, oriented stripes, fine sensor
noise), shaded per acquisition (gain, building and cloud shadows, haze), overlaid with the
acquisition's clouds and masked by its valid-data polygon: pixels outside it are exactly (0, 0, 0),
valid pixels are clamped to >= 1 in every band. Clouds and cloud shadows have soft edges: their
polygons are rasterized once per acquisition on a coarse grid, blurred, and upsampled per window
(the 0.5 level of the alpha follows the polygon; it ramps from 0.1 to 0.9 across ~15 m).
:class:`WindowRenderer` does this for one acquisition; :func:`overviews` reduces a rendered window
to the COG's overview levels.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator

import numpy as np

from imagesim import grid
from imagesim.imagery.sample.acquisitions import ZONE, Acquisition
from imagesim.imagery.sample.scene import Scene

__all__ = ["OVERVIEW_LEVELS", "WindowRenderer", "overviews"]

# Render windows: rows of this many pixels (a multiple of the 512 px block); ~0.35 GB working set each.
_CHUNK_ROWS = 512
_P = grid.COG_PIXELS
# 17,408 / 2^6 = 272 <= 512: the overview count GDAL's COG driver picks for an ARD COG.
OVERVIEW_LEVELS = 6
# Soft cloud / cloud-shadow alpha: a coarse grid of _SOFT px (2.4 m), blurred with a Gaussian of
# _SOFT_SIGMA coarse px (5.9 m: the alpha goes from 0.1 to 0.9 over 2.56 sigma = 15 m).
_SOFT = 8
_SOFT_SIGMA = 2.4
_CLOUD_RGB = (234.0, 236.0, 240.0)

# Render classes: (name, texture amplitude of the 8 px field, of the low-frequency field, fine noise DN)
_CLASSES = [
    ("background", 0.10, 0.16, 5.0),
    ("grass", 0.08, 0.08, 4.0),
    ("meadow", 0.10, 0.11, 5.0),
    ("forest", 0.38, 0.10, 5.0),
    ("farmland", 0.04, 0.08, 4.0),
    ("water", 0.015, 0.05, 1.5),
    ("residential", 0.12, 0.07, 4.0),
    ("industrial", 0.05, 0.06, 4.0),
    ("park", 0.20, 0.06, 4.0),
    ("parking", 0.02, 0.03, 3.0),
    ("pitch", 0.02, 0.02, 2.5),
    ("rail", 0.12, 0.03, 6.0),
    ("road", 0.02, 0.04, 3.0),
    ("building", 0.01, 0.01, 2.5),
]
_CLS = {name: i for i, (name, *_rest) in enumerate(_CLASSES)}


class WindowRenderer:
    """The pixels of one acquisition's COG, window by window; ``render`` may run in several threads.

    ``windows`` lists the (col, row, width, height) windows that can hold imagery (the whole COG
    in full mode, the 512 px blocks around ``small_box`` in small mode), in writing order.
    """

    def __init__(self, scene: Scene, acq: Acquisition, valid_geom, seed: int, small: bool, clouds=None, cloud_shadows=None) -> None:
        self.acq = acq
        self.seed = seed
        self.gt = grid.cell_geotransform(acq.cell)
        self.layers = _Layers(scene, acq, valid_geom, grid.epsg(acq.cell, ZONE))
        self.srs = self.layers.srs
        self.acq_key = int(acq.catalog_id, 16) % (2**63)
        self.windows = list(_windows(acq, small))
        self.clouds = _CloudFields(
            clouds, cloud_shadows, self.gt, self.srs, self.windows, np.random.default_rng([seed, self.acq_key, 0xC1])
        )
        rgb_lut, stripe_lut, amp, not_roof = _luts(scene)
        self.luts = (rgb_lut * np.asarray(acq.gain, np.float32)[:, None], stripe_lut, amp, not_roof)
        self.noise = _noise_fields(seed, acq.cell)
        max_w = max(w for _c, _r, w, _h in self.windows)
        fine_table = np.random.default_rng([seed, self.acq_key]).integers(0, 256, size=(2 * _CHUNK_ROWS, max_w), dtype=np.uint8)
        self.fine_table = fine_table.astype(np.float32) - np.float32(127.5)
        self._local = threading.local()
        self._wkt = self.srs.ExportToWkt()

    def render(self, win: tuple[int, int, int, int]) -> tuple[tuple[int, int, int, int], np.ndarray]:
        """``(win, pixels)``: pixels (3, h, w) uint8 of window ``win``, exactly 0 outside the valid polygon."""
        c0, r0, w, h = win
        works = self._local.__dict__.setdefault("works", {})
        work = works.get((h, w))
        if work is None:
            work = works[(h, w)] = _Work(h, w, self._wkt)
        rng = np.random.default_rng([self.seed, self.acq_key, r0, c0])
        return win, _render_window(self.layers, self.clouds, self.luts, self.noise, self.fine_table, self.acq, self.gt, c0, r0, work, rng)


class _Layers:
    """OGR in-memory layers of the scene (feature codes), the shadows and the valid-data polygon."""

    def __init__(self, scene: Scene, acq: Acquisition, valid_geom, epsg: int) -> None:
        import shapely
        from osgeo import ogr, osr
        from shapely import affinity

        self.srs = osr.SpatialReference()
        self.srs.ImportFromEPSG(epsg)
        self.srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
        drv = ogr.GetDriverByName("Memory")
        self.ds = drv.CreateDataSource("scene")

        # Only what can reach the valid-data polygon (shadows reach up to ~40 m).
        feats = [f for f in scene.features if f.cls]
        geoms = np.array([f.render_geom if f.render_geom is not None else f.geom for f in feats], dtype=object)
        reach = shapely.box(*valid_geom.bounds).buffer(50.0)
        keep = shapely.intersects(reach, geoms)
        codes = [i + 1 for i, f in enumerate(scene.features) if f.cls]
        self.scene = self._layer("scene", [(g, c) for g, c, k in zip(geoms, codes, keep) if k])
        # Building shadows: the building swept away from the sun.
        az = math.radians(acq.sun_azimuth)
        cot = 1.0 / math.tan(math.radians(acq.sun_elevation))
        bld = [f for f, k in zip(feats, keep) if k and f.cls == "building" and f.height > 0]
        shadows = []
        if bld:
            base = np.array([f.geom for f in bld], dtype=object)
            h = np.array([f.height for f in bld]) * cot
            dx, dy = -math.sin(az) * h, -math.cos(az) * h
            moved = np.array([affinity.translate(g, x, y) for g, x, y in zip(base, dx, dy)], dtype=object)
            hulls = shapely.convex_hull(shapely.union(base, moved))
            shadows = [(g, 1) for g in hulls]
        self.shadow = self._layer("shadow", shadows)
        self.valid = self._layer("valid", [(valid_geom, 1)])
        self._lock = threading.Lock()  # OGR layers (spatial filter + reading) are not thread-safe

    def _layer(self, name: str, items):
        from osgeo import ogr

        lyr = self.ds.CreateLayer(name, self.srs, ogr.wkbUnknown)
        lyr.CreateField(ogr.FieldDefn("code", ogr.OFTInteger))
        defn = lyr.GetLayerDefn()
        for geom, code in items:
            feat = ogr.Feature(defn)
            feat.SetField("code", int(code))
            feat.SetGeometry(ogr.CreateGeometryFromWkb(geom.wkb))
            lyr.CreateFeature(feat)
        return lyr

    def rasterize(self, layer, gt, out: np.ndarray, mem) -> np.ndarray:
        """Burn ``layer`` (attribute ``code`` for Int32 ``out``, else 1) into ``out`` through ``mem``."""
        from osgeo import gdal

        height, width = out.shape
        attribute = out.dtype == np.int32
        mem.SetGeoTransform(gt)
        band = mem.GetRasterBand(1)
        band.Fill(0)
        x0, y1 = gt[0], gt[3]
        x1, y0 = gt[0] + width * gt[1], gt[3] + height * gt[5]
        opts = ["ATTRIBUTE=code"] if attribute else []
        with self._lock:
            layer.SetSpatialFilterRect(x0, y0, x1, y1)
            try:
                gdal.RasterizeLayer(mem, [1], layer, burn_values=[] if attribute else [1], options=opts)
            finally:
                layer.SetSpatialFilter(None)
        band.ReadAsArray(buf_obj=out)
        return out


class _Work:
    """Reusable buffers of one render thread for one window shape (avoids page-fault churn)."""

    def __init__(self, h: int, w: int, wkt: str) -> None:
        from osgeo import gdal

        mem = gdal.GetDriverByName("MEM")
        self.mem_i = mem.Create("", w, h, 1, gdal.GDT_Int32)
        self.mem_b = mem.Create("", w, h, 1, gdal.GDT_Byte)
        for ds in (self.mem_i, self.mem_b):
            ds.SetProjection(wkt)
        self.valid = np.zeros((h, w), np.uint8)
        self.shadow = np.zeros((h, w), np.uint8)
        self.code = np.zeros((h, w), np.int32)
        self.idx = np.zeros((h, w), np.intp)
        self.cls = np.zeros((h, w), np.uint8)
        self.shade = np.zeros((h, w), np.float32)
        self.t1 = np.zeros((h, w), np.float32)
        self.t2 = np.zeros((h, w), np.float32)
        self._flat: list[np.ndarray] = []  # cloud scratch, allocated on first use

    def scratch(self, h: int, w: int, offset: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Three contiguous (h, w) float32 buffers starting ``offset`` values in (offset + h * w <= the window size)."""
        if not self._flat:
            self._flat = [np.empty(self.t1.size, np.float32) for _ in range(3)]
        a, b, c = (f[offset : offset + h * w].reshape(h, w) for f in self._flat)
        return a, b, c


class _CloudFields:
    """The soft cloud alpha, cloud colour and cloud-shadow alpha of an acquisition on the coarse grid.

    ``coarse[i, j]`` sits at pixel ((i - 1/2) * _SOFT, (j - 1/2) * _SOFT), as :func:`_upsample` wants;
    a field is None when its geometry is empty.
    """

    def __init__(self, clouds, shadows, gt, srs, windows, rng: np.random.Generator) -> None:
        from shapely.geometry import box

        n = _P // _SOFT + 3
        cgt = (gt[0] - _SOFT * gt[1], _SOFT * gt[1], 0.0, gt[3] - _SOFT * gt[5], 0.0, _SOFT * gt[5])
        self.alpha: np.ndarray | None = None
        self.colour: np.ndarray | None = None
        self.shadow: np.ndarray | None = None
        # Only what the windows can see (the blur reaches ~18 m): small mode stays small.
        c0 = min(c for c, _r, _w, _h in windows)
        r0 = min(r for _c, r, _w, _h in windows)
        c1 = max(c + w for c, _r, w, _h in windows)
        r1 = max(r + h for _c, r, _w, h in windows)
        seen = box(gt[0] + c0 * gt[1], gt[3] + r1 * gt[5], gt[0] + c1 * gt[1], gt[3] + r0 * gt[5]).buffer(100.0, join_style="mitre")
        if clouds is not None and not clouds.is_empty:
            clouds = clouds.intersection(seen)
        if shadows is not None and not shadows.is_empty:
            shadows = shadows.intersection(seen)
        cloud_mask = _burn(clouds, cgt, srs, n)
        if cloud_mask is not None:
            self.alpha = _blur(cloud_mask, _SOFT_SIGMA)
            # Thin and greyer toward the edge (alpha² lags alpha), with a little texture at ~2-20 m:
            # noise on this grid and on a 4x coarser one, bilinearly interpolated; only where alpha > 0.
            rows, cols = np.flatnonzero(self.alpha.any(axis=1)), np.flatnonzero(self.alpha.any(axis=0))
            i0, i1, j0, j1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
            alpha = self.alpha[i0:i1, j0:j1]
            coarse4 = rng.standard_normal((n // 4 + 3, n // 4 + 3), dtype=np.float32)
            mid = _upsample(coarse4, 4, i0, j0, np.empty_like(alpha), np.empty_like(alpha))
            colour = np.float32(0.9) + np.float32(0.1) * alpha * alpha
            colour += np.float32(0.05) * mid
            colour += np.float32(0.02) * rng.standard_normal(alpha.shape, dtype=np.float32)
            colour *= alpha  # premultiplied by the alpha
            self.colour = np.zeros_like(self.alpha)
            self.colour[i0:i1, j0:j1] = colour
        shadow_mask = _burn(shadows, cgt, srs, n)
        if shadow_mask is not None:
            self.shadow = _blur(shadow_mask, _SOFT_SIGMA)

    @staticmethod
    def spans(field: np.ndarray | None, r0: int, c0: int, h: int, w: int) -> list[tuple[int, int]]:
        """The runs of window columns [start, end) where ``field`` may be non-zero (gaps < 256 px bridged)."""
        if field is None:
            return []
        lo = int((r0 + 0.5) / _SOFT + 0.5)
        hi = int((r0 + h - 0.5) / _SOFT + 0.5) + 2
        cols = np.flatnonzero(field[lo:hi].max(axis=0) > 0)
        if not cols.size:
            return []
        breaks = np.flatnonzero(np.diff(cols) > 256 // _SOFT)
        out = []
        for first, last in zip(np.r_[cols[0], cols[breaks + 1]], np.r_[cols[breaks], cols[-1]]):
            # pixel c blends coarse samples floor((c + 0.5) / _SOFT + 0.5) and the next one
            start = max((int(first) - 2) * _SOFT - c0, 0)
            end = min((int(last) + 1) * _SOFT - c0, w)
            if end > start:
                out.append((start, end))
        return out


def _burn(geom, gt, srs, n: int) -> np.ndarray | None:
    """``geom`` rasterized (1 inside) on the n x n grid ``gt``, as float32; None when it is empty or misses the grid."""
    from osgeo import gdal, ogr

    if geom is None or geom.is_empty:
        return None
    ds = ogr.GetDriverByName("Memory").CreateDataSource("soft")
    lyr = ds.CreateLayer("soft", srs, ogr.wkbUnknown)
    feat = ogr.Feature(lyr.GetLayerDefn())
    feat.SetGeometry(ogr.CreateGeometryFromWkb(geom.wkb))
    lyr.CreateFeature(feat)
    mem = gdal.GetDriverByName("MEM").Create("", n, n, 1, gdal.GDT_Byte)
    mem.SetGeoTransform(gt)
    mem.SetProjection(srs.ExportToWkt())
    gdal.RasterizeLayer(mem, [1], lyr, burn_values=[1])
    out = mem.GetRasterBand(1).ReadAsArray()
    return out.astype(np.float32) if out.any() else None


def _blur(a: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur (zero outside), computed only over the non-zero bounding box plus 3 sigma."""
    r = int(math.ceil(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2).astype(np.float32)
    k /= k.sum()
    rows, cols = np.flatnonzero(a.any(axis=1)), np.flatnonzero(a.any(axis=0))
    out = np.zeros(a.shape, np.float32)
    if not rows.size:
        return out
    r0, r1 = max(int(rows[0]) - r, 0), min(int(rows[-1]) + r + 1, a.shape[0])
    c0, c1 = max(int(cols[0]) - r, 0), min(int(cols[-1]) + r + 1, a.shape[1])
    sub = np.pad(a[r0:r1, c0:c1].astype(np.float32), r)
    h, w = r1 - r0, c1 - c0
    tmp = np.zeros((h, w + 2 * r), np.float32)
    buf = np.empty_like(tmp)  # no temporaries per tap: these arrays are up to 2,179² floats
    for j, kj in enumerate(k):
        np.multiply(sub[j : j + h, :], kj, out=buf)
        tmp += buf
    res = np.zeros((h, w), np.float32)
    buf = buf[:, :w]
    for j, kj in enumerate(k):
        np.multiply(tmp[:, j : j + w], kj, out=buf)
        res += buf
    out[r0:r1, c0:c1] = res
    return out


def _luts(scene: Scene):
    n = len(scene.features) + 1
    cls = np.zeros(n, np.uint8)
    rgb = np.zeros((3, n), np.float32)
    rgb[:, 0] = (150, 140, 112)  # bare ground / scrub where nothing is mapped
    stripe = np.zeros((4, n), np.float32)
    for i, f in enumerate(scene.features, start=1):
        if f.cls:
            cls[i] = _CLS[f.cls]
            rgb[:, i] = f.rgb
            stripe[:, i] = f.stripe
    amp = np.array([c[1:] for c in _CLASSES], np.float32).T.copy()  # (3, classes)
    amp[2] /= 127.5  # fine noise is drawn as 0..255 around 127.5
    not_roof = (cls != _CLS["building"]).astype(np.uint8)
    # everything indexed by feature code (0 = nothing mapped)
    return rgb, stripe, np.ascontiguousarray(amp[:, cls]), not_roof


def _upsample(coarse: np.ndarray, factor: int, r0: int, c0: int, out: np.ndarray, tmp: np.ndarray) -> np.ndarray:
    """Bilinear upsampling of a coarse noise field into ``out`` (float32, COG rows r0.., cols c0..).

    ``coarse[i, j]`` sits at pixel ((i - 1/2) * factor, (j - 1/2) * factor): one coarse sample of
    margin on every side, so every window interpolates without edge cases. ``tmp`` is scratch.
    """
    h, w = out.shape
    rr = (np.arange(r0, r0 + h, dtype=np.float32) + 0.5) / factor + 0.5
    cc = (np.arange(c0, c0 + w, dtype=np.float32) + 0.5) / factor + 0.5
    ri = rr.astype(np.int64)
    ci = cc.astype(np.int64)
    fr = (rr - ri.astype(np.float32))[:, None]
    fc = (cc - ci.astype(np.float32))[None, :]
    lo, hi = int(ri.min()), int(ri.max()) + 2
    sub = coarse[lo:hi]
    rows = sub[:, ci] * (1 - fc) + sub[:, ci + 1] * fc  # (coarse rows, w), small
    ri -= lo
    np.take(rows, ri + 1, axis=0, out=out)
    np.take(rows, ri, axis=0, out=tmp)
    out -= tmp
    out *= fr
    out += tmp
    return out


def _render_window(
    layers: _Layers,
    clouds: _CloudFields,
    luts,
    noise,
    fine_table: np.ndarray,
    acq: Acquisition,
    gt,
    c0: int,
    r0: int,
    work: _Work,
    rng: np.random.Generator,
) -> np.ndarray:
    """Pixels (3, h, w) uint8 of the COG window at (c0, r0); exactly 0 outside the valid polygon."""
    rgb_lut, stripe_lut, amp, roof = luts
    h, w = work.code.shape
    wgt = (gt[0] + c0 * gt[1], gt[1], 0.0, gt[3] + r0 * gt[5], 0.0, gt[5])
    valid = layers.rasterize(layers.valid, wgt, work.valid, work.mem_b)
    out = np.zeros((3, h, w), np.uint8)
    if not valid.any():
        return out
    code = layers.rasterize(layers.scene, wgt, work.code, work.mem_i)
    shadow = layers.rasterize(layers.shadow, wgt, work.shadow, work.mem_b)
    idx = work.idx  # np.take converts other index types to intp on every call: do it once
    idx[...] = code
    n8, nlo = noise
    shade, t1, t2 = work.shade, work.t1, work.t2
    _upsample(n8, 8, r0, c0, shade, t1)
    shade *= np.take(amp[0], idx, out=t1)
    _upsample(nlo, 64, r0, c0, t1, t2)
    t1 *= np.take(amp[1], idx, out=t2)
    shade += t1
    shade += np.float32(1.0)
    # Oriented textures: crop rows (1), parking stall lines (2), mowing stripes (3).
    sel = np.flatnonzero(np.take(stripe_lut[3], idx, out=t1))
    if sel.size:
        rows, cols = np.divmod(sel, w)
        cf = code.reshape(-1)[sel]
        ang = stripe_lut[0][cf]
        u = (cols + c0).astype(np.float32) * np.cos(ang) - (rows + r0).astype(np.float32) * np.sin(ang)
        u *= np.float32(grid.PIXEL_SIZE) / stripe_lut[1][cf]
        phase = u - np.floor(u)
        k = stripe_lut[3][cf]
        samp = stripe_lut[2][cf]
        tex = np.where(
            k == 1,
            np.sin(np.float32(2 * np.pi) * phase),
            np.where(k == 2, (phase < 0.12).astype(np.float32), np.where(phase < 0.5, 1.0, -1.0).astype(np.float32)),
        )
        shade.reshape(-1)[sel] += samp * tex
    # Building shadows darken whatever they fall on, except the roofs themselves.
    sh = shadow
    sh &= np.take(roof, idx, out=work.cls)
    sh = sh.view(bool)
    np.putmask(shade, sh, shade * np.float32(acq.shadow))
    # Cloud shadows (a little lighter than building shadows), before the haze offset is added, so
    # shadowed valid pixels keep the haze DN and stay well clear of the no-data threshold.
    # Only the column runs that clouds or their shadows reach are computed.
    for cs, ce in clouds.spans(clouds.shadow, r0, c0, h, w):
        assert clouds.shadow is not None
        a_s, tmp, _ = work.scratch(h, ce - cs)
        _upsample(clouds.shadow, _SOFT, r0, c0 + cs, a_s, tmp)
        a_s *= np.float32(-(1.0 - min(acq.shadow + 0.1, 1.0)))
        a_s += np.float32(1.0)
        shade[:, cs:ce] *= a_s
    cloud_runs = []
    offset = 0
    for cs, ce in clouds.spans(clouds.alpha, r0, c0, h, w):
        assert clouds.alpha is not None and clouds.colour is not None
        keep, tmp, cover = work.scratch(h, ce - cs, offset)
        offset += keep.size
        _upsample(clouds.colour, _SOFT, r0, c0 + cs, cover, tmp)  # alpha x cloud brightness
        _upsample(clouds.alpha, _SOFT, r0, c0 + cs, keep, tmp)
        np.subtract(np.float32(1.0), keep, out=keep)  # what shows of the ground
        cloud_runs.append((cs, ce, keep, cover, tmp))
    # Fine (sensor/clutter) noise: a slice of a pre-drawn table, scaled per class.
    start = int(rng.integers(0, fine_table.shape[0] - h + 1))
    fine = np.take(amp[2], idx, out=t2)
    fine *= fine_table[start : start + h, :w]
    for b in range(3):
        band = np.take(rgb_lut[b], idx, out=t1)  # gain already folded into the table
        band *= shade
        band += fine
        band += np.float32(acq.haze[b] + 0.5)
        for cs, ce, keep, cover, tmp in cloud_runs:
            sub = band[:, cs:ce]
            sub *= keep
            np.multiply(cover, np.float32(_CLOUD_RGB[b]), out=tmp)
            sub += tmp
        np.clip(band, 1.0, 255.0, out=band)
        ob = out[b]
        ob[...] = band
        ob *= valid
    return out


def _noise_fields(seed: int, cell: str):
    """Texture noise of a cell: crowns/clumps (8 px) and low-frequency variation (64 px + 512 px)."""
    rng = np.random.default_rng([seed, int(cell, 4)])
    n8 = rng.standard_normal((_P // 8 + 3, _P // 8 + 3)).astype(np.float32)
    n64 = rng.standard_normal((_P // 64 + 3, _P // 64 + 3)).astype(np.float32)
    n512 = rng.standard_normal((_P // 512 + 3, _P // 512 + 3)).astype(np.float32)
    # fold the 512 px field into the 64 px grid
    big = _upsample(n512, 8, 0, 0, np.empty_like(n64), np.empty_like(n64))
    return n8, (0.7 * n64 + 0.9 * big).astype(np.float32)


def _windows(acq: Acquisition, small: bool) -> Iterator[tuple[int, int, int, int]]:
    if small:
        c0, r0, s = acq.small_box
        bc0, br0 = (c0 // 512) * 512, (r0 // 512) * 512
        bc1, br1 = -(-(c0 + s) // 512) * 512, -(-(r0 + s) // 512) * 512
        for r in range(br0, br1, _CHUNK_ROWS):
            yield bc0, r, bc1 - bc0, min(_CHUNK_ROWS, br1 - r)
    else:
        for r in range(0, _P, _CHUNK_ROWS):
            yield 0, r, _P, min(_CHUNK_ROWS, _P - r)


def overviews(px: np.ndarray, valid: np.ndarray) -> Iterator[np.ndarray]:
    """2x, 4x, ... averages of the valid pixels of a window (0 where a cell has none)."""
    s = px.astype(np.uint32)
    c = valid.astype(np.uint32)
    for _k in range(OVERVIEW_LEVELS):
        s = s[:, 0::2, 0::2] + s[:, 1::2, 0::2] + s[:, 0::2, 1::2] + s[:, 1::2, 1::2]
        c = c[0::2, 0::2] + c[1::2, 0::2] + c[0::2, 1::2] + c[1::2, 1::2]
        level = (s + c // 2) // np.maximum(c, 1)
        yield level.astype(np.uint8)
