"""The `imagesim serve` web app: XYZ tiles, TileJSON, the map page and the JSON API.

``create_app(ard_path, chips_dir, index_dir)`` returns a FastAPI app. Routes:

- ``GET /`` the map page (``static/index.html``), ``/static/...`` its script, style and Leaflet;
- ``GET /tiles/{z}/{x}/{y}.jpg|png[?acquisition=ID]`` Web Mercator tiles (204 where there is no imagery);
- ``GET /tilejson.json[?acquisition=ID]`` TileJSON 3.0.0;
- ``GET /api/acquisitions``, ``/api/chips?bbox=w,s,e,n``, ``/api/chips/at?lon=…&lat=…``,
  ``/api/similar?positive=…&negative=…&k=10`` (or the older ``chip=…``), ``/api/similar/export?format=geojson|csv|parquet``
  with the same query, ``/api/chip/{chip}/thumbnail.jpg``, ``/api/info`` (with the basemap, if any);
- ``GET /api/masks?bbox=w,s,e,n&kind=cloud[&acquisition=ID]`` outlines of the ARD masks in view (GeoJSON);
- with a changes file (``changes=``, from `imagesim change`): ``GET /api/changes?bbox=w,s,e,n&top=N`` the best-ranked
  changes in view (GeoJSON), ``/api/changes/acquisitions?quadkey=Q&zone=Z`` (or ``chip=…``) every acquisition of a
  chip square with the pair the file compared.

Every path a request names is checked against a strict pattern and resolved inside the configured
roots; parameters are bounded; errors answer JSON ``{"detail": …}`` without tracebacks.
"""

from __future__ import annotations

import inspect
import io
import logging
import math
import os
import re
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import polars as pl
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware

from imagesim import grid, options
from imagesim.artefacts import CLOUD_FRACTION
from imagesim.errors import GridError, ImagesimError, InvalidArgumentError
from imagesim.search.serve.change_layer import TOP_DEFAULT, TOP_MAX, ChangeLayer
from imagesim.search.serve.mask_layer import MASK_KINDS, MaskLayer
from imagesim.search.serve.tiles import (
    MAX_ZOOM,
    Catalog,
    ImageryUnavailableError,
    TileRenderer,
    Transformers,
    check_render_settings,
    check_tile,
)

log = logging.getLogger("imagesim.search.serve")

STATIC = Path(__file__).parent / "static"
K_MAX_UI = 1000
MAX_EXAMPLES = 100  # positives, and negatives, one query may name
EXPORT_FORMATS = {
    "geojson": ("application/geo+json", "geojson"),
    "csv": ("text/csv; charset=utf-8", "csv"),
    "parquet": ("application/vnd.apache.parquet", "parquet"),
}
CHIPS_LIMIT_DEFAULT = 2000
CHIPS_LIMIT_MAX = 5000
THUMB_DEFAULT = 160
THUMB_CACHE = 1024
# ASCII only (``[0-9]``, never ``\d``, which also takes "１０" or "١٠"); ``\Z``, not ``$``, which passes a trailing newline
CHIP_RE = re.compile(r"^Z([0-9]{1,2})-([0-3]{12,24})_([A-Za-z0-9-]{1,64})(\.jpg)?\Z", re.ASCII)
QUADKEY_RE = re.compile(r"^[0-3]{12,24}\Z", re.ASCII)
CATALOG_RE = re.compile(r"^[A-Za-z0-9-]{1,64}\Z", re.ASCII)
LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Resource-Policy": "same-origin",
}
PAGE_CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
# an XYZ template: http(s), an optional {s}. subdomain label, a host (name, IPv4 or [IPv6]), a port, a path with
# {z} {x} {y} (or {-y}) and optionally {s} {r}; no quotes, spaces, angle brackets or backslashes
BASEMAP_RE = re.compile(
    r"^(https?)://(\{s\}\.)?([A-Za-z0-9](?:[A-Za-z0-9.-]{0,252}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]{2,45}\])(?::([0-9]{1,5}))?"
    r"(/[A-Za-z0-9._~!$&()*+,;=:@%/{}?-]*)\Z",
    re.ASCII | re.IGNORECASE,
)
BASEMAP_PLACEHOLDERS = {"{z}", "{x}", "{y}", "{-y}", "{s}", "{r}"}
ATTRIBUTION_MAX = 300


class Basemap(NamedTuple):
    """An XYZ basemap drawn under the imagery: its URL template, attribution and CSP img-src origin."""

    url: str
    attribution: str
    origin: str  # scheme://host[:port], ``*.`` in front of the host when the template has a {s} subdomain


def parse_basemap(url: str | None, attribution: str | None = None) -> Basemap | None:
    """The basemap of ``--basemap URL_TEMPLATE`` (``https://tile.openstreetmap.org/{z}/{x}/{y}.png``), or None.

    The template is an http(s) URL with ``{z}``, ``{x}`` and ``{y}`` (or ``{-y}``), optionally ``{s}`` (a
    subdomain: only as the first label of the host) and ``{r}``; the attribution is plain text (the page
    shows it as text, never as HTML), by default the tile host."""
    if url is None or not url.strip():
        if attribution:
            raise InvalidArgumentError("`basemap_attribution` is given without `basemap`", param="basemap_attribution")
        return None
    url = url.strip()
    m = BASEMAP_RE.match(url)
    port = int(m.group(4)) if m and m.group(4) else None
    if m is None or (port is not None and not 1 <= port <= 65535):
        raise InvalidArgumentError(
            f"`basemap` {url!r}: an XYZ URL template is http(s)://host[:port]/path with {{z}}, {{x}} and {{y}}, "
            "e.g. https://tile.openstreetmap.org/{z}/{x}/{y}.png",
            param="basemap",
        )
    path = m.group(5)
    found = set(re.findall(r"\{[^{}]*\}", path))
    unknown = found - BASEMAP_PLACEHOLDERS
    if unknown or "{z}" not in found or "{x}" not in found or not ({"{y}", "{-y}"} & found) or path.count("{") != path.count("}"):
        raise InvalidArgumentError(
            f"`basemap` {url!r}: the path needs {{z}}, {{x}} and {{y}} (or {{-y}}); "
            f"the placeholders known are {', '.join(sorted(BASEMAP_PLACEHOLDERS))}"
            + (f", not {', '.join(sorted(unknown))}" if unknown else ""),
            param="basemap",
        )
    scheme, host = m.group(1).lower(), m.group(3).lower()
    origin = f"{scheme}://{'*.' if m.group(2) else ''}{host}" + (f":{port}" if port is not None else "")
    text = (attribution or "").strip() or f"Basemap: {('{s}.' if m.group(2) else '') + host}"
    if len(text) > ATTRIBUTION_MAX or any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise InvalidArgumentError(
            f"`basemap_attribution`: one line of at most {ATTRIBUTION_MAX} characters, without control characters",
            param="basemap_attribution",
        )
    url = f"{scheme}://{m.group(2) or ''}{m.group(3)}" + (f":{port}" if port is not None else "") + path
    return Basemap(url, text, origin)


def page_csp(basemap: Basemap | None) -> str:
    """The page's Content-Security-Policy: the server's own scripts, styles, images and API only, plus the
    basemap's tile origin for images when there is one."""
    if basemap is None:
        return PAGE_CSP
    return PAGE_CSP.replace("img-src 'self' data: blob:;", f"img-src 'self' data: blob: {basemap.origin};")


# an origin as a browser sends it: scheme, host (name, IPv4 or [IPv6]) and an optional port, no path
ORIGIN_RE = re.compile(
    r"^(https?)://([A-Za-z0-9](?:[A-Za-z0-9.-]{0,252}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]{2,45}\])(?::([0-9]{1,5}))?/?\Z", re.ASCII | re.IGNORECASE
)
DEFAULT_PORTS = {"http": 80, "https": 443}


def parse_cors_origins(value: str | list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    """The origins allowed to read the viewer from other pages: ``()`` (none, the default), ``("*",)`` (any)
    or each origin as browsers send it (``http://localhost:8888``; lower case, no default port, no slash).

    ``value`` is a comma-separated string or a list; an origin is ``http(s)://host[:port]`` without a path."""
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else list(value)
    origins: list[str] = []
    for raw in items:
        item = raw.strip()
        if not item:
            continue
        if item == "*":
            origins.append("*")
            continue
        m = ORIGIN_RE.match(item)
        port = int(m.group(3)) if m and m.group(3) else None
        if m is None or (port is not None and not 1 <= port <= 65535):
            raise InvalidArgumentError(
                f"`cors_origins` {item!r}: an origin is http:// or https:// and a host[:port], without a path "
                "(e.g. http://localhost:8888), or * for any",
                param="cors_origins",
            )
        scheme, host = m.group(1).lower(), m.group(2).lower()
        origins.append(f"{scheme}://{host}" + (f":{port}" if port is not None and port != DEFAULT_PORTS[scheme] else ""))
    if "*" in origins:
        return ("*",)
    return tuple(dict.fromkeys(origins))


def _referer_origin(referer: str) -> str | None:
    m = re.match(r"^(https?://[^/?#]+)", referer, re.ASCII)
    if m is None:
        return None
    try:
        return parse_cors_origins(m.group(1))[0]
    except (InvalidArgumentError, IndexError):
        return None


class SecurityHeaders:
    """Pure ASGI middleware adding :data:`SECURITY_HEADERS` to every response (cheaper than ``@app.middleware``).

    With ``cors_origins`` (:func:`parse_cors_origins`) ``Cross-Origin-Resource-Policy`` is ``cross-origin``
    for requests from an allowed origin (its ``Origin`` header or, for a plain ``<img>`` that sends none,
    its ``Referer``), and everywhere for ``*``; ``same-origin`` otherwise."""

    def __init__(self, app: Any, cors_origins: tuple[str, ...] = ()) -> None:
        self.app = app
        self.extra = [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
        self.cors_all = cors_origins == ("*",)
        self.cors_origins = frozenset(cors_origins)
        if self.cors_all:
            self.extra = [(k, b"cross-origin" if k == b"cross-origin-resource-policy" else v) for k, v in self.extra]
        self.cross = [(k, b"cross-origin" if k == b"cross-origin-resource-policy" else v) for k, v in self.extra]

    def _allowed(self, scope: Any) -> bool:
        origin = referer = None
        for k, v in scope.get("headers", ()):
            if k == b"origin":
                origin = v.decode("latin-1")
            elif k == b"referer":
                referer = v.decode("latin-1")
        if origin is None and referer is not None:
            origin = _referer_origin(referer)
        return origin is not None and origin in self.cors_origins

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = self.extra
        vary = bool(self.cors_origins) and not self.cors_all
        if vary and self._allowed(scope):
            extra = self.cross

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {k.lower() for k, _ in headers}
                headers += [(k, v) for k, v in extra if k not in present]
                if vary and not any(k.lower() == b"vary" and b"origin" in v.lower() for k, v in headers):
                    headers.append((b"vary", b"Origin"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


class ChipTable:
    """The index's chips with their footprints (WGS84), for the grid, the map and the thumbnails."""

    def __init__(self, ids: pl.DataFrame, catalog: Catalog, transformers: Transformers) -> None:
        self.ids = ids
        n = ids.height
        self.chip = ids["chip"].to_list()
        self.quadkey = ids["quadkey"].to_list()
        self.zone = ids["zone"].to_numpy().astype(np.int64)
        self.catalog_id = ids["catalog_id"].to_list()
        self.path = ids["path"].to_list() if "path" in ids.columns else [f"{z}/{c}" for z, c in zip(self.zone.tolist(), self.chip)]
        self.predicted = ids["predicted"].to_list() if "predicted" in ids.columns else [[] for _ in range(n)]
        cloud = ids[CLOUD_FRACTION].to_list() if CLOUD_FRACTION in ids.columns else [None] * n
        self.cloud_fraction = [None if c is None or c != c else round(float(c), 4) for c in cloud]  # NaN: unknown too
        self.lon = ids["lon"].to_numpy().astype(np.float64)
        self.lat = ids["lat"].to_numpy().astype(np.float64)
        self.by_chip = {c: i for i, c in enumerate(self.chip)}
        self.by_quadkey: dict[str, list[int]] = {}
        for i, q in enumerate(self.quadkey):
            self.by_quadkey.setdefault(q, []).append(i)
        self.catalog_arr = np.array(self.catalog_id, dtype=object)
        # corners (lon, lat) of each chip square, one pyproj call per CRS
        xs = np.empty((n, 4))
        ys = np.empty((n, 4))
        codes = np.empty(n, dtype=np.int64)
        for i, (zone, qk) in enumerate(zip(self.zone.tolist(), self.quadkey)):
            b = grid.bounds(qk)
            xs[i] = (b.west, b.east, b.east, b.west)
            ys[i] = (b.south, b.south, b.north, b.north)
            codes[i] = grid.epsg(qk, zone)
        self.corner_lon = np.empty((n, 4))
        self.corner_lat = np.empty((n, 4))
        for code in np.unique(codes):
            sel = codes == code
            lo, la = transformers.get(int(code), 4326).transform(xs[sel], ys[sel])
            self.corner_lon[sel], self.corner_lat[sel] = lo, la
        # the chip the grid shows for each quadkey: the newest acquisition's (dates from the delivery)
        dates = [catalog.dates.get(c, "") for c in self.catalog_id]
        order = sorted(range(n), key=lambda i: (self.quadkey[i], dates[i], self.catalog_id[i]), reverse=True)
        newest: dict[str, int] = {}
        for i in order:
            newest.setdefault(self.quadkey[i], i)
        self.newest = np.zeros(n, dtype=bool)
        self.newest[list(newest.values())] = True

    def ring(self, i: int) -> list[list[float]]:
        pts = [[round(float(self.corner_lon[i, j]), 8), round(float(self.corner_lat[i, j]), 8)] for j in range(4)]
        return pts + [pts[0]]

    def feature(self, i: int, **extra: Any) -> dict[str, Any]:
        return {
            "type": "Feature",
            "id": self.chip[i],
            "geometry": {"type": "Polygon", "coordinates": [self.ring(i)]},
            "properties": {
                "chip": self.chip[i],
                "quadkey": self.quadkey[i],
                "zone": int(self.zone[i]),
                "catalog_id": self.catalog_id[i],
                "labels": list(self.predicted[i] or []),
                "cloud_fraction": self.cloud_fraction[i],
                **extra,
            },
        }

    def in_bbox(self, w: float, s: float, e: float, n: float, acquisition: str | None) -> np.ndarray:
        sel = (self.lon >= w) & (self.lon <= e) & (self.lat >= s) & (self.lat <= n)
        if acquisition is None:
            sel &= self.newest
        else:
            sel &= self.catalog_arr == acquisition
        return np.flatnonzero(sel)


class Thumbnails:
    """Down-scaled chip JPEGs, LRU-cached by (path, mtime, size)."""

    def __init__(self, capacity: int = THUMB_CACHE) -> None:
        self.capacity = capacity
        self._data: OrderedDict[tuple[str, int, int], bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: Path, size: int) -> bytes:
        from PIL import Image

        key = (str(path), path.stat().st_mtime_ns, size)
        with self._lock:
            data = self._data.get(key)
            if data is not None:
                self._data.move_to_end(key)
                return data
        with Image.open(path) as src:
            src.draft("RGB", (size, size))  # JPEG DCT scaling: decode at 1/2, 1/4 or 1/8 directly
            im = src.convert("RGB")
            im.thumbnail((size, size))
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=85)
        data = buf.getvalue()
        with self._lock:
            self._data[key] = data
            while len(self._data) > self.capacity:
                self._data.popitem(last=False)
        return data


def _bad(message: str, status: int = 400) -> HTTPException:
    return HTTPException(status_code=status, detail=message)


def _parse_bbox(bbox: str) -> tuple[float, float, float, float]:
    """``w,s,e,n`` in degrees, or a 400 saying what a bbox is."""
    try:
        bw, bs, be, bn = (float(v) for v in bbox.split(","))
    except ValueError:
        raise _bad("bbox must be four numbers west,south,east,north") from None
    if not all(math.isfinite(v) for v in (bw, bs, be, bn)) or not (-180 <= bw < be <= 180 and -90 <= bs < bn <= 90):
        raise _bad("bbox must be west,south,east,north in degrees with west < east and south < north")
    return bw, bs, be, bn


def _inside(root: Path, rel: str) -> Path | None:
    """``root/rel`` resolved (symlinks followed), or None if it leaves ``root`` or is not a file."""
    if not rel or rel.startswith(("/", "\\")) or "\x00" in rel:
        return None
    try:
        path = (root / rel).resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if not path.is_relative_to(root) or not path.is_file():
        return None
    return path


class Search(NamedTuple):
    """A similar-chip query of the API: validated examples (and their index rows) and the filters."""

    positives: list[str]
    negatives: list[str]
    positive_rows: list[int]
    negative_rows: list[int]
    k: int
    exclude_same_cell: bool
    max_cloud: float | None
    min_valid: float | None


EXPORT_COLUMNS: dict[str, pl.DataType | type[pl.DataType]] = {
    "rank": pl.Int32,
    "score": pl.Float64,
    "chip": pl.String,
    "zone": pl.Int32,
    "quadkey": pl.String,
    "catalog_id": pl.String,
    "lon": pl.Float64,
    "lat": pl.Float64,
    "labels": pl.List(pl.String),
    "cloud_fraction": pl.Float64,
    "valid_fraction": pl.Float64,
}


def export_table(hits: list[dict[str, Any]], format: str) -> bytes:
    """The results as CSV (labels joined by ``;``) or GeoParquet 1.1 (footprints from :mod:`imagesim.geoparquet`).

    ``valid_fraction`` is a column only when the hits carry it (indexes with valid fractions)."""
    from imagesim.geoparquet import geo_metadata, with_footprints

    cols: dict[str, pl.DataType | type[pl.DataType]] = {
        k: v for k, v in EXPORT_COLUMNS.items() if k != "valid_fraction" or (hits and "valid_fraction" in hits[0])
    }
    frame = pl.DataFrame({k: [h.get(k) for h in hits] for k in cols}, schema=cols)
    buf = io.BytesIO()
    if format == "csv":
        frame.with_columns(pl.col("labels").list.join(";")).write_csv(buf)
    else:
        table = with_footprints(frame)
        table.write_parquet(buf, metadata=geo_metadata(table))
    return buf.getvalue()


def _in_quad(xs: np.ndarray, ys: np.ndarray, x: float, y: float) -> bool:
    """Whether (x, y) lies in the convex quadrilateral of corners (xs, ys), edges included."""
    signs = []
    for j in range(4):
        x0, y0, x1, y1 = xs[j], ys[j], xs[(j + 1) % 4], ys[(j + 1) % 4]
        signs.append((x1 - x0) * (y - y0) - (y1 - y0) * (x - x0))
    return all(v >= 0 for v in signs) or all(v <= 0 for v in signs)


def allowed_hosts_for(host: str) -> list[str]:
    """Host headers accepted: loopback names when bound to loopback (blocks DNS rebinding), else any."""
    if host in LOOPBACK or host.startswith("127."):
        return ["127.0.0.1", "localhost", "::1", "[::1]", host]
    return ["*"]


def create_app(
    ard_path: str | Path,
    chips_dir: str | Path,
    index_dir: str | Path | None,
    *,
    block_cache_mb: int = options.BLOCK_CACHE_MB,
    cog_cache: int = options.COG_CACHE,
    quality: int = options.TILE_QUALITY,
    allowed_hosts: list[str] | None = None,
    cors_origins: str | list[str] | tuple[str, ...] | None = None,
    basemap: str | None = None,
    basemap_attribution: str | None = None,
    changes: str | Path | None = None,
) -> FastAPI:
    """The viewer app over an ARD delivery, its chips folder and an index folder (from `imagesim index`).

    ``cors_origins``: origins whose pages may read tiles, TileJSON and the API (comma-separated or a
    list, ``*`` for any; :func:`parse_cors_origins`); by default none (no CORS headers, CORP same-origin).
    ``basemap``: an XYZ URL template drawn under the imagery, with ``basemap_attribution`` (:func:`parse_basemap`);
    by default none, and the page loads nothing from other hosts.
    ``changes``: a ``changes.parquet`` of `imagesim change`, read once now (a missing or bad file fails here,
    naming it), for the change layer and the before/after view."""
    from imagesim.errors import ImagesimFileNotFoundError

    cors = parse_cors_origins(cors_origins)
    base_map = parse_basemap(basemap, basemap_attribution)
    csp = page_csp(base_map)
    check_render_settings(block_cache_mb, cog_cache, quality)
    chips_root = Path(chips_dir).resolve()
    if not chips_root.is_dir():
        raise ImagesimFileNotFoundError(f"{chips_dir}: chips folder not found")
    transformers = Transformers()
    catalog = Catalog(ard_path, transformers)
    renderer = TileRenderer(catalog, block_cache_mb=block_cache_mb, cog_cache=cog_cache, quality=quality)
    index = None
    chips: ChipTable | None = None
    min_valid_supported = False
    min_valid_default: float | None = None
    if index_dir is not None:
        from imagesim.search.index import load_index
        from imagesim.search.similar import similar as similar_fn

        index = load_index(index_dir)
        chips = ChipTable(index.ids, catalog, transformers)
        # `min_valid` reaches `similar` only where the library takes it (valid fractions came with no-data-aware encoding)
        takes = inspect.signature(similar_fn).parameters
        min_valid_supported = "min_valid" in takes
        if min_valid_supported and isinstance(takes["min_valid"].default, (int, float)):
            min_valid_default = float(takes["min_valid"].default)
    thumbs = Thumbnails()
    masks = MaskLayer(catalog)
    change_layer = None if changes is None or str(changes) == "" else ChangeLayer(changes, chips_root, catalog.dates)
    w, s, e, n = catalog.bounds
    page = (STATIC / "index.html").read_bytes()

    app = FastAPI(title="imagesim", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.catalog = catalog
    app.state.renderer = renderer
    app.state.index = index
    app.state.chips = chips
    app.state.chips_root = chips_root
    app.state.masks = masks
    app.state.changes = change_layer
    app.state.basemap = base_map
    if cors:
        # innermost: its preflight answers and simple-request headers get the security headers too
        app.add_middleware(CORSMiddleware, allow_origins=list(cors), allow_methods=["GET", "HEAD"], allow_credentials=False, max_age=3600)
    app.add_middleware(SecurityHeaders, cors_origins=cors)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts or ["127.0.0.1", "localhost", "::1", "[::1]"])

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"detail": exc.detail if isinstance(exc.detail, str) else "error"}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [f"{'.'.join(str(p) for p in e.get('loc', ())[1:]) or 'request'}: {e.get('msg', 'invalid')}" for e in exc.errors()]
        return JSONResponse({"detail": "; ".join(problems)}, status_code=422)

    @app.exception_handler(GridError)
    async def grid_error(request: Request, exc: GridError) -> JSONResponse:
        # a chip name, quadkey or zone of the request that the grid refuses (the message quotes the input only)
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("error serving %s", request.url.path)
        return JSONResponse({"detail": "internal server error"}, status_code=500)

    def check_acquisition(acquisition: str | None) -> str | None:
        if acquisition is None or acquisition == "":
            return None
        if not CATALOG_RE.match(acquisition):
            raise _bad("acquisition must be a catalog id (letters, digits and '-')")
        if acquisition not in catalog.catalog_ids:
            raise _bad(f"no acquisition {acquisition} in this delivery", 404)
        return acquisition

    # --- page ---

    @app.get("/", include_in_schema=False)
    def index_page() -> Response:
        return Response(page, media_type="text/html; charset=utf-8", headers={"Content-Security-Policy": csp, "Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC, follow_symlink=False), name="static")

    # --- tiles ---

    def tile(z: int, x: int, y: int, fmt: str, acquisition: str | None) -> Response:
        try:
            check_tile(z, x, y)
        except ImagesimError as exc:
            raise _bad(str(exc)) from None
        acq = check_acquisition(acquisition)
        headers = {"Cache-Control": "public, max-age=3600"}
        if z < renderer.minzoom:
            return Response(status_code=204, headers=headers)
        try:
            data = renderer.render(z, x, y, fmt, acq)
        except ImageryUnavailableError as exc:  # logged once by the renderer, with the file and the cause
            a = exc.acquisition
            raise _bad(
                f"the imagery of acquisition {a.catalog_id} (cell {a.zone}/{a.cell}) cannot be read; see the server log", 502
            ) from None
        if data is None:
            return Response(status_code=204, headers=headers)
        return Response(data, media_type="image/png" if fmt == "png" else "image/jpeg", headers=headers)

    @app.get("/tiles/{z}/{x}/{y}.jpg")
    def tile_jpg(
        z: int = PathParam(ge=0, le=MAX_ZOOM),
        x: int = PathParam(ge=0),
        y: int = PathParam(ge=0),
        acquisition: str | None = Query(None, max_length=64),
    ) -> Response:
        return tile(z, x, y, "jpg", acquisition)

    @app.get("/tiles/{z}/{x}/{y}.png")
    def tile_png(
        z: int = PathParam(ge=0, le=MAX_ZOOM),
        x: int = PathParam(ge=0),
        y: int = PathParam(ge=0),
        acquisition: str | None = Query(None, max_length=64),
    ) -> Response:
        return tile(z, x, y, "png", acquisition)

    @app.get("/tilejson.json")
    def tilejson(
        request: Request, acquisition: str | None = Query(None, max_length=64), format: str = Query("jpg", pattern="^(jpg|png)$")
    ) -> dict[str, Any]:
        acq = check_acquisition(acquisition)
        base = str(request.base_url).rstrip("/")
        query = f"?acquisition={acq}" if acq else ""
        zoom = min(renderer.maxzoom, max(renderer.minzoom, renderer.native_zoom - 4))
        srcs = [s for s in catalog.sources if acq is None or s.acquisition.catalog_id == acq]
        bw, bs = min(s.lonlat[0] for s in srcs), min(s.lonlat[1] for s in srcs)
        be, bn = max(s.lonlat[2] for s in srcs), max(s.lonlat[3] for s in srcs)
        return {
            "tilejson": "3.0.0",
            "name": "imagesim" + (f" {acq}" if acq else " (newest acquisition per cell)"),
            "description": "Maxar ARD visual COGs rendered on the fly (Web Mercator)",
            "version": "1.0.0",
            "scheme": "xyz",
            "tiles": [f"{base}/tiles/{{z}}/{{x}}/{{y}}.{format}{query}"],
            "minzoom": renderer.minzoom,
            "maxzoom": renderer.native_zoom,
            "bounds": [round(v, 7) for v in (bw, bs, be, bn)],
            "center": [round((bw + be) / 2, 7), round((bs + bn) / 2, 7), zoom],
            "attribution": "Imagery: Maxar ARD",
        }

    # --- API ---

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        return {
            "bounds": [round(v, 7) for v in (w, s, e, n)],
            "minzoom": renderer.minzoom,
            "maxzoom": renderer.native_zoom,
            "chips": 0 if chips is None else len(chips.chip),
            "index": None if index is None else {"kind": index.kind, "n": index.n, "model_id": index.meta.get("model_id")},
            "k_max": K_MAX_UI,
            "max_examples": MAX_EXAMPLES,
            "min_valid": min_valid_supported,
            "min_valid_default": min_valid_default,
            "basemap": None if base_map is None else {"url": base_map.url, "attribution": base_map.attribution},
            "changes": None if change_layer is None else change_layer.info(),
        }

    @app.get("/api/acquisitions")
    def acquisitions() -> dict[str, Any]:
        rows = catalog.describe()
        per_id: dict[str, dict[str, Any]] = {}
        for r in rows:
            d = per_id.setdefault(r["catalog_id"], {"catalog_id": r["catalog_id"], "date": r["date"], "cells": [], "newest_in": 0})
            d["cells"].append(f"{r['zone']}/{r['cell']}")
            d["newest_in"] += int(r["newest"])
        ids = sorted(per_id.values(), key=lambda d: (d["date"], d["catalog_id"]), reverse=True)
        return {"catalog_ids": ids, "acquisitions": rows}

    @app.get("/api/chips")
    def chips_in_bbox(
        bbox: str = Query(..., max_length=200),
        acquisition: str | None = Query(None, max_length=64),
        limit: int = Query(CHIPS_LIMIT_DEFAULT, ge=1, le=CHIPS_LIMIT_MAX),
    ) -> dict[str, Any]:
        if chips is None:
            raise _bad("no index loaded", 404)
        bw, bs, be, bn = _parse_bbox(bbox)
        acq = check_acquisition(acquisition)
        rows = chips.in_bbox(bw, bs, be, bn, acq)
        truncated = len(rows) > limit
        if truncated:  # keep the ones nearest the centre of the view
            cx, cy = (bw + be) / 2, (bs + bn) / 2
            d = (chips.lon[rows] - cx) ** 2 + (chips.lat[rows] - cy) ** 2
            rows = rows[np.argsort(d, kind="stable")[:limit]]
        return {"type": "FeatureCollection", "features": [chips.feature(int(i)) for i in rows], "count": len(rows), "truncated": truncated}

    @app.get("/api/chips/at")
    def chip_at(
        lon: float = Query(..., ge=-180.0, le=180.0, allow_inf_nan=False),
        lat: float = Query(..., ge=-90.0, le=90.0, allow_inf_nan=False),
        acquisition: str | None = Query(None, max_length=64),
    ) -> dict[str, Any]:
        """The indexed chip whose footprint holds the point (the newest acquisition's, or the picked one's)."""
        if chips is None:
            raise _bad("no index loaded", 404)
        acq = check_acquisition(acquisition)
        pad = 0.01  # degrees: more than a z12 chip's half diagonal is not needed, a z17 chip is 156 m
        rows = chips.in_bbox(max(-180.0, lon - pad), max(-90.0, lat - pad), min(180.0, lon + pad), min(90.0, lat + pad), acq)
        for i in rows[np.argsort((chips.lon[rows] - lon) ** 2 + (chips.lat[rows] - lat) ** 2, kind="stable")].tolist():
            if _in_quad(chips.corner_lon[i], chips.corner_lat[i], lon, lat):
                return chips.feature(int(i), thumbnail=f"/api/chip/{chips.chip[i]}/thumbnail.jpg")
        raise _bad("no indexed chip at this point", 404)

    @app.get("/api/masks")
    def mask_outlines(
        bbox: str = Query(..., max_length=200),
        kind: str = Query("cloud", max_length=32),
        acquisition: str | None = Query(None, max_length=64),
    ) -> Response:
        box = _parse_bbox(bbox)
        if kind not in MASK_KINDS:
            raise _bad(f"kind must be one of {', '.join(MASK_KINDS)}")
        acq = check_acquisition(acquisition)
        body = masks.outlines(box, kind, acq)
        # an unreadable mask may be replaced: do not let the browser keep the answer without it
        cache = "no-cache" if body["problems"] else "public, max-age=3600"
        return JSONResponse(body, headers={"Cache-Control": cache})

    def need_changes() -> ChangeLayer:
        if change_layer is None:
            raise _bad("no changes loaded: start the viewer with --changes FILE (from `imagesim change`)", 404)
        return change_layer

    @app.get("/api/changes")
    def changes_in_view(bbox: str = Query(..., max_length=200), top: int = Query(TOP_DEFAULT, ge=1, le=TOP_MAX)) -> dict[str, Any]:
        layer = need_changes()
        return layer.in_view(_parse_bbox(bbox), top)

    @app.get("/api/changes/acquisitions")
    def change_acquisitions(
        quadkey: str | None = Query(None, max_length=30),
        zone: int | None = Query(None, ge=1, le=60),
        chip: str | None = Query(None, max_length=120),
    ) -> dict[str, Any]:
        layer = need_changes()
        if chip is not None:
            ref = chip_ref(chip)
            if QUADKEY_RE.match(ref):
                raise _bad("chip must be a chip name Z<zone>-<quadkey>_<catalog-id>.jpg (or give quadkey= and zone=)")
            parsed = grid.parse_chip_name(ref)
            zone, quadkey = parsed.zone, parsed.quadkey
        elif quadkey is None or zone is None:
            raise _bad("name a chip square: quadkey= and zone=, or chip=")
        elif not QUADKEY_RE.match(quadkey):
            raise _bad("quadkey must be 12-24 digits 0-3")
        body = layer.acquisitions(zone, quadkey)
        if body is None:
            raise _bad(f"no chip of quadkey {quadkey} in zone {zone} in the chips folder or the changes", 404)
        return body

    def chip_ref(chip: str) -> str:
        """A validated chip name (with .jpg) or chip quadkey."""
        chip = chip.strip()
        if QUADKEY_RE.match(chip):
            return chip
        m = CHIP_RE.match(chip)
        if not m or not 1 <= int(m.group(1)) <= 60:
            raise _bad("chip must be a chip name Z<zone>-<quadkey>_<catalog-id>.jpg or a chip quadkey (12-24 digits 0-3)")
        name = chip if chip.endswith(".jpg") else chip + ".jpg"
        try:
            grid.parse_chip_name(name)  # the grid's own rules, so every later grid call accepts it
        except GridError as exc:
            raise _bad(str(exc)) from None
        return name

    def examples(refs: list[str], what: str) -> tuple[list[str], list[int]]:
        """Validated chip references and the index rows they name (every acquisition of a quadkey)."""
        assert chips is not None
        if len(refs) > MAX_EXAMPLES:
            raise _bad(f"at most {MAX_EXAMPLES} {what} examples")
        names: list[str] = []
        rows: list[int] = []
        for raw in refs:
            if len(raw) > 120:
                raise _bad(f"a {what} example is a chip name or quadkey (at most 120 characters)")
            ref = chip_ref(raw)
            if ref in names:
                continue  # the same example twice counts once
            if QUADKEY_RE.match(ref):
                if ref not in chips.by_quadkey:
                    raise _bad(f"no chip with quadkey {ref} in the index", 404)
                rows += chips.by_quadkey[ref]
            else:
                row = chips.by_chip.get(ref)
                if row is None:
                    raise _bad(f"chip {ref} is not in the index", 404)
                rows.append(row)
            names.append(ref)
        return names, rows

    def search_params(
        chip: str | None = Query(None, max_length=120),
        positive: list[str] = Query([]),
        negative: list[str] = Query([]),
        k: int = Query(options.K, ge=1, le=K_MAX_UI),
        exclude_same_cell: bool = Query(False),
        max_cloud: float | None = Query(None, ge=0.0, le=1.0, allow_inf_nan=False),
        min_valid: float | None = Query(None, ge=0.0, le=1.0, allow_inf_nan=False),
    ) -> Search:
        if index is None or chips is None:
            raise _bad("no index loaded", 404)
        refs = ([chip] if chip is not None else []) + list(positive)
        if not refs:
            raise HTTPException(422, "positive: name at least one example chip (positive=… or chip=…)")
        pos, pos_rows = examples(refs, "positive")
        neg, neg_rows = examples(list(negative), "negative")
        if set(pos) & set(neg):
            raise _bad(f"{sorted(set(pos) & set(neg))[0]} is both a positive and a negative example")
        if min_valid is not None and not min_valid_supported:
            raise _bad("min_valid: this index's search has no valid fractions (imagesim's `similar` does not take `min_valid`)")
        return Search(pos, neg, pos_rows, neg_rows, k, exclude_same_cell, max_cloud, min_valid)

    def run_search(q: Search) -> Any:
        from imagesim.search.similar import similar

        assert index is not None
        extra: dict[str, Any] = {}
        if q.min_valid is not None:
            extra["min_valid"] = q.min_valid
        try:
            return similar(index, q.positives, q.negatives, k=q.k, exclude_same_cell=q.exclude_same_cell, max_cloud=q.max_cloud, **extra)
        except ImagesimError as exc:
            raise _bad(str(exc).replace(str(index.folder), "the index")) from None

    def hit_feature(hit: dict[str, Any]) -> dict[str, Any]:
        """A result as GeoJSON: the footprint from the chip table (corners projected once at start-up)."""
        assert chips is not None
        props = {k: hit[k] for k in ("rank", "score", "chip", "zone", "quadkey", "catalog_id")}
        props["labels"] = ", ".join(hit["labels"])
        props["cloud_fraction"] = hit["cloud_fraction"]
        if "valid_fraction" in hit:
            props["valid_fraction"] = hit["valid_fraction"]
        row = chips.by_chip.get(hit["chip"])
        if row is None:  # not in the table the index was loaded with: project it now
            from imagesim.search.index import chip_footprint

            ring = chip_footprint(hit["zone"], hit["quadkey"])
        else:
            ring = chips.ring(row)
        return {"type": "Feature", "id": hit["rank"], "geometry": {"type": "Polygon", "coordinates": [ring]}, "properties": props}

    @app.get("/api/similar")
    def similar_chips(q: Search = Depends(search_params)) -> dict[str, Any]:
        assert chips is not None
        result = run_search(q)
        body = result.to_json()
        body["cloudy"] = result.cloudy  # chips left out by max_cloud
        if q.min_valid is not None or min_valid_supported:
            body["query"]["min_valid"] = getattr(result, "min_valid", q.min_valid)
        for hit in body["results"]:
            hit["thumbnail"] = f"/api/chip/{hit['chip']}/thumbnail.jpg"
        thumb = lambda i: f"/api/chip/{chips.chip[i]}/thumbnail.jpg"  # noqa: E731
        body["query"]["chips"] = [chips.feature(i, thumbnail=thumb(i)) for i in q.positive_rows]
        body["query"]["negative_chips"] = [chips.feature(i, thumbnail=thumb(i)) for i in q.negative_rows]
        body["geojson"] = {"type": "FeatureCollection", "features": [hit_feature(h) for h in body["results"]]}
        return body

    @app.get("/api/similar/export")
    def export_similar(q: Search = Depends(search_params), format: str = Query("geojson", max_length=16)) -> Response:
        if format not in EXPORT_FORMATS:
            raise _bad(f"format must be one of {', '.join(EXPORT_FORMATS)}")
        result = run_search(q)
        hits = result.to_json()["results"]
        media, ext = EXPORT_FORMATS[format]
        if format == "geojson":
            import json

            doc = {"type": "FeatureCollection", "features": [hit_feature(h) for h in hits], "imagesim_query": result.to_json()["query"]}
            data = json.dumps(doc, separators=(",", ":")).encode()
        else:
            data = export_table(hits, format)
        headers = {"Content-Disposition": f'attachment; filename="imagesim-similar.{ext}"', "Cache-Control": "no-store"}
        return Response(data, media_type=media, headers=headers)

    @app.get("/api/chip/{chip}/thumbnail.jpg")
    def thumbnail(chip: str = PathParam(max_length=120), size: int = Query(THUMB_DEFAULT, ge=16, le=512)) -> Response:
        ref = chip_ref(chip)
        if QUADKEY_RE.match(ref):
            raise _bad("name a chip file (Z<zone>-<quadkey>_<catalog-id>.jpg), not a quadkey")
        # The index's path to the chip, else DEST/<zone>/<chip> or (a flat zone folder of the original tool) DEST/<chip>
        rels = [f"{grid.parse_chip_name(ref).zone}/{ref}", ref]
        if chips is not None and ref in chips.by_chip:
            rels.insert(0, chips.path[chips.by_chip[ref]])
        path = next((p for p in (_inside(chips_root, rel) for rel in rels) if p is not None), None)
        if path is None:
            raise _bad(f"no chip file for {ref}", 404)
        try:
            data = thumbs.get(path, size)
        except (OSError, ValueError):
            raise _bad(f"chip {ref} could not be read", 404) from None
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "public, max-age=3600"})

    return app


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory`` (several workers): settings from ``IMAGESIM_SERVE_*``."""
    env = os.environ
    return create_app(
        env["IMAGESIM_SERVE_ARD"],
        env["IMAGESIM_SERVE_CHIPS"],
        env.get("IMAGESIM_SERVE_INDEX") or None,
        block_cache_mb=int(env.get("IMAGESIM_SERVE_BLOCK_CACHE_MB", options.BLOCK_CACHE_MB)),
        cog_cache=int(env.get("IMAGESIM_SERVE_COG_CACHE", options.COG_CACHE)),
        quality=int(env.get("IMAGESIM_SERVE_QUALITY", options.TILE_QUALITY)),
        allowed_hosts=allowed_hosts_for(env.get("IMAGESIM_SERVE_HOST", options.SERVE_HOST)),
        cors_origins=env.get("IMAGESIM_SERVE_CORS") or None,
        basemap=env.get("IMAGESIM_SERVE_BASEMAP") or None,
        basemap_attribution=env.get("IMAGESIM_SERVE_BASEMAP_ATTRIBUTION") or None,
        changes=env.get("IMAGESIM_SERVE_CHANGES") or None,
    )
