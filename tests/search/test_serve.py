"""`imagesim serve`: tiles, TileJSON, the JSON API, security, and the page in a real headless browser.

The module fixture chips the small sample delivery, writes an ``embeddings.parquet`` in the shape
`imagesim encode` writes (random unit vectors: the viewer only needs *an* index) and builds the
index. API tests use FastAPI's TestClient; the raw-request security test and the browser test run a
real uvicorn server on a free loopback port.
"""

from __future__ import annotations

import io
import math
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import polars as pl
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("faiss")
pytest.importorskip("mercantile")

import mercantile  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from imagesim import grid  # noqa: E402
from imagesim.search.index import build_index, load_index  # noqa: E402
from imagesim.search.serve.app import create_app  # noqa: E402
from imagesim.search.serve.tiles import EARTH_HALF, TILE, Transformers, mesh_error  # noqa: E402

from embedding_table import embeddings_table  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
LABELS = ["building", "water", "forest", "farmland"]


class Viewer:
    def __init__(self, sample, chips: Path, index: Path, manifest: pl.DataFrame) -> None:
        self.sample = sample
        self.chips = chips
        self.index = index
        self.manifest = manifest  # chips.parquet rows that were written

    def chip_rows(self, nodata_class: str = "all_data") -> pl.DataFrame:
        return self.manifest.filter(pl.col("nodata_class") == nodata_class)


@pytest.fixture(scope="module")
def viewer(tmp_path_factory, small_sample) -> Viewer:
    from imagesim.imagery.chip import ChipSettings, run_chip

    base = tmp_path_factory.mktemp("serve")
    chips = base / "chips"
    run_chip(small_sample.root, chips, ChipSettings(zoom=17, skip_empty=True))
    manifest = pl.read_parquet(chips / "chips.parquet").filter(pl.col("written"))
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(manifest.height, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    table = embeddings_table(manifest, vectors, "test-model", [[LABELS[i % len(LABELS)]] for i in range(manifest.height)])
    table.write_parquet(base / "embeddings.parquet")
    build_index(base / "embeddings.parquet", base / "index")
    return Viewer(small_sample, chips, base / "index", manifest)


@pytest.fixture(scope="module")
def client(viewer) -> TestClient:
    app = create_app(viewer.sample.root, viewer.chips, viewer.index)
    return TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False)


def chip_centre_lonlat(zone: int, quadkey: str) -> tuple[float, float]:
    from pyproj import Transformer

    b = grid.bounds(quadkey)
    t = Transformer.from_crs(grid.epsg(quadkey, zone), 4326, always_xy=True)
    lon, lat = t.transform((b.west + b.east) / 2, (b.south + b.north) / 2)
    return float(lon), float(lat)


def decode(resp) -> Image.Image:
    im = Image.open(io.BytesIO(resp.content))
    im.load()
    return im


# --- page, TileJSON, tiles ---


def test_page_and_bundled_assets(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert r.headers["x-content-type-options"] == "nosniff"
    page = r.text
    assert "/static/leaflet/leaflet.js" in page and "/static/app.js" in page
    assert "http://" not in page and "https://" not in page  # no CDN
    for asset in (
        "/static/app.js",
        "/static/style.css",
        "/static/leaflet/leaflet.js",
        "/static/leaflet/leaflet.css",
        "/static/leaflet/LICENSE",
        "/static/leaflet/images/layers.png",
    ):
        assert client.get(asset).status_code == 200, asset
    assert "BSD" in client.get("/static/leaflet/LICENSE").text


def test_tilejson(client, viewer):
    tj = client.get("/tilejson.json").json()
    assert tj["tilejson"] == "3.0.0"
    assert tj["tiles"] == ["http://127.0.0.1/tiles/{z}/{x}/{y}.jpg"]
    assert 0 <= tj["minzoom"] < tj["maxzoom"] <= 24
    assert tj["maxzoom"] in (18, 19, 20)  # 0.305 m ARD pixels at latitude ~38°
    w, s, e, n = tj["bounds"]
    assert -180 <= w < e <= 180 and -90 <= s < n <= 90
    lon, lat, zoom = tj["center"]
    assert w < lon < e and s < lat < n and tj["minzoom"] <= zoom <= tj["maxzoom"]
    # every chip centre lies inside the bounds
    for zone, qk in viewer.manifest.select("zone", "quadkey").iter_rows():
        clon, clat = chip_centre_lonlat(zone, qk)
        assert w <= clon <= e and s <= clat <= n
    acq = viewer.sample.catalog_ids[0]
    tj2 = client.get(f"/tilejson.json?acquisition={acq}&format=png").json()
    assert tj2["tiles"][0].endswith(f".png?acquisition={acq}")
    assert client.get("/tilejson.json?acquisition=NOPE").status_code == 404
    assert client.get("/tilejson.json?acquisition=../x").status_code == 400


def tile_at(lon: float, lat: float, z: int) -> mercantile.Tile:
    return mercantile.tile(lon, lat, z)


def test_tiles_imagery_inside_empty_outside(client, viewer):
    row = viewer.chip_rows("all_data").row(0, named=True)
    lon, lat = chip_centre_lonlat(row["zone"], row["quadkey"])
    for z in (13, 15, 17, 19):
        t = tile_at(lon, lat, z)
        r = client.get(f"/tiles/{z}/{t.x}/{t.y}.jpg")
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg", z
        im = decode(r)
        assert im.format == "JPEG" and im.size == (TILE, TILE) and im.mode == "RGB"
        pixels = np.asarray(im)
        # the small sample has imagery over a small part of each cell: coarse tiles are mostly black
        assert (pixels.max(axis=2) > 20).mean() > (0.9 if z >= 17 else 0.001), z
    # PNG: RGBA, opaque over imagery
    t = tile_at(lon, lat, 18)
    im = decode(client.get(f"/tiles/18/{t.x}/{t.y}.png"))
    assert im.format == "PNG" and im.mode == "RGBA" and im.size == (TILE, TILE)
    assert np.asarray(im)[..., 3].min() == 255
    # outside the delivery: no content
    for z, x, y in ((17, 1000, 1000), (15, 0, 0), (19, 2**19 - 1, 2**19 - 1)):
        r = client.get(f"/tiles/{z}/{x}/{y}.jpg")
        assert r.status_code == 204 and r.content == b""
    # too coarse to render on the fly
    tj = client.get("/tilejson.json").json()
    t = tile_at(lon, lat, tj["minzoom"] - 1)
    assert client.get(f"/tiles/{t.z}/{t.x}/{t.y}.jpg").status_code == 204


def test_tile_edge_of_imagery_is_transparent_in_png(client, viewer):
    """The small sample has imagery over part of each cell: a partial chip's tile has both."""
    row = viewer.chip_rows("partial_data").row(0, named=True)
    lon, lat = chip_centre_lonlat(row["zone"], row["quadkey"])
    t = tile_at(lon, lat, 17)
    alpha = np.asarray(decode(client.get(f"/tiles/17/{t.x}/{t.y}.png")))[..., 3]
    assert alpha.max() == 255 and alpha.min() == 0


def _exact_tile(cog_path: Path, z: int, x: int, y: int, level: int) -> np.ndarray:
    """A reference rendering: every pixel centre projected exactly (pyproj), bilinear in numpy."""
    from imagesim.cog import open_cog

    cog = open_cog(cog_path)
    gt = cog.geotransform
    lv = cog.levels[level]
    scale = cog.levels[0]["width"] / lv["width"]
    size = 2 * EARTH_HALF / (1 << z)
    west, north = -EARTH_HALF + x * size, EARTH_HALF - y * size
    c = (np.arange(TILE) + 0.5) * size / TILE
    mx, my = np.meshgrid(west + c, north - c)
    ux, uy = Transformers().get(3857, cog.epsg).transform(mx, my)
    u = (np.asarray(ux) - gt[0]) / (gt[1] * scale) - 0.5
    v = (np.asarray(uy) - gt[3]) / (gt[5] * scale) - 0.5
    c0, r0 = int(np.floor(u.min())) - 1, int(np.floor(v.min())) - 1
    c1, r1 = int(np.ceil(u.max())) + 2, int(np.ceil(v.max())) + 2
    win = cog.read((c0, r0, c1 - c0, r1 - r0), level=level).astype(np.float64)
    u, v = u - c0, v - r0
    iu, iv = np.floor(u).astype(int), np.floor(v).astype(int)
    fu, fv = (u - iu)[..., None], (v - iv)[..., None]
    out = (
        win[iv, iu] * (1 - fu) * (1 - fv)
        + win[iv, iu + 1] * fu * (1 - fv)
        + win[iv + 1, iu] * (1 - fu) * fv
        + win[iv + 1, iu + 1] * fu * fv
    )
    return out


@pytest.mark.parametrize("z", [19, 16])
def test_tile_pixels_match_the_cog(client, viewer, z):
    """A tile (PNG, lossless) equals an exact per-pixel reprojection of the COG, within rounding."""
    rows = viewer.chip_rows("all_data")
    cat = viewer.sample.catalog_ids[1]  # the newest acquisition of the cell with two
    row = rows.filter(pl.col("catalog_id") == cat).row(0, named=True)
    lon, lat = chip_centre_lonlat(row["zone"], row["quadkey"])
    t = tile_at(lon, lat, z)
    got = np.asarray(decode(client.get(f"/tiles/{z}/{t.x}/{t.y}.png?acquisition={cat}")))
    # compare where the tile has imagery, 2 px away from no-data edges (bilinear mixes in no-data there)
    keep = got[..., 3] == 255
    for axis in (0, 1):
        for shift in (-2, -1, 1, 2):
            keep &= np.roll(got[..., 3] == 255, shift, axis=axis)
    keep[:2], keep[-2:], keep[:, :2], keep[:, -2:] = False, False, False, False
    assert keep.sum() > 10_000
    cog = next(p for p in viewer.sample.cogs if p.name.startswith(cat))
    renderer = client.app.state.renderer
    level = renderer._level(renderer.open(cog), (2 * EARTH_HALF / (1 << z) / TILE) * math.cos(math.radians(lat)))
    assert (level == 0) == (z == 19)
    want = _exact_tile(cog, z, t.x, t.y, level)
    diff = np.abs(got[..., :3].astype(np.float64) - want)[keep]
    assert diff.mean() < 1.0 and np.percentile(diff, 99.9) <= 3, (diff.mean(), diff.max())
    # the check can tell a one-pixel shift apart
    shifted = np.abs(got[:, 1:, :3].astype(np.float64) - want[:, :-1])[keep[:, 1:]]
    assert shifted.mean() > 2 * diff.mean() + 0.5
    assert mesh_error(z, t.x, t.y, grid.epsg(row["quadkey"], row["zone"])) < 0.01


def test_tile_pixel_at_known_lonlat(client, viewer):
    """The tile pixel over a lon/lat shows the COG pixel at that lon/lat."""
    from pyproj import Transformer

    from imagesim.cog import open_cog

    cat = viewer.sample.catalog_ids[1]
    row = viewer.chip_rows("all_data").filter(pl.col("catalog_id") == cat).row(0, named=True)
    cog = open_cog(next(p for p in viewer.sample.cogs if p.name.startswith(cat)))
    gt = cog.geotransform
    b = grid.bounds(row["quadkey"])
    to_ll = Transformer.from_crs(cog.epsg, 4326, always_xy=True)
    z = 20
    for fx, fy in ((0.25, 0.25), (0.5, 0.5), (0.8, 0.3)):
        ex, ey = b.west + fx * (b.east - b.west), b.south + fy * (b.north - b.south)
        lon, lat = to_ll.transform(ex, ey)
        t = tile_at(lon, lat, z)
        tile = np.asarray(decode(client.get(f"/tiles/{z}/{t.x}/{t.y}.png?acquisition={cat}")))
        mx, my = mercantile.xy(lon, lat)
        tb = mercantile.xy_bounds(t)
        px = int((mx - tb.left) / (tb.right - tb.left) * TILE)
        py = int((tb.top - my) / (tb.top - tb.bottom) * TILE)
        col, rowp = int((ex - gt[0]) / gt[1]), int((ey - gt[3]) / gt[5])
        around = cog.read((col - 1, rowp - 1, 3, 3)).reshape(-1, 3).astype(int)
        value = tile[py, px, :3].astype(int)
        assert np.all(value >= around.min(axis=0) - 2) and np.all(value <= around.max(axis=0) + 2), (value, around)


def test_acquisition_picker(client, viewer):
    body = client.get("/api/acquisitions").json()
    ids = {a["catalog_id"]: a for a in body["catalog_ids"]}
    assert set(ids) == set(viewer.sample.catalog_ids)
    assert all("visual" not in str(a) and "/" not in a["date"] for a in body["acquisitions"])  # no file paths
    cell = viewer.sample.cells[0]
    older, newer = sorted((a for a in body["acquisitions"] if a["cell"] == cell), key=lambda a: a["date"])
    assert newer["newest"] and not older["newest"]
    # a chip with data in both acquisitions: default tile == newest acquisition's tile != older one
    m = viewer.chip_rows("all_data")
    both = set(m.filter(pl.col("catalog_id") == newer["catalog_id"])["quadkey"]) & set(
        m.filter(pl.col("catalog_id") == older["catalog_id"])["quadkey"]
    )
    assert both
    qk = sorted(both)[0]
    lon, lat = chip_centre_lonlat(viewer.sample.zone, qk)
    t = tile_at(lon, lat, 18)
    url = f"/tiles/18/{t.x}/{t.y}.png"
    default = client.get(url).content
    assert default == client.get(f"{url}?acquisition={newer['catalog_id']}").content
    assert default != client.get(f"{url}?acquisition={older['catalog_id']}").content
    # an acquisition of another cell has nothing here
    other = next(c for c in viewer.sample.catalog_ids if c not in (newer["catalog_id"], older["catalog_id"]))
    assert client.get(f"{url}?acquisition={other}").status_code == 204
    assert client.get(f"{url}?acquisition=FFFFFFFFFFFFFFFF").status_code == 404


# --- JSON API ---


def test_similar_matches_the_library(client, viewer):
    from imagesim.search.similar import similar

    index = load_index(viewer.index)
    chip = viewer.chip_rows("all_data")["chip"][0]
    for k, excl in ((5, False), (10, True)):
        body = client.get(f"/api/similar?chip={chip}&k={k}&exclude_same_cell={'true' if excl else 'false'}").json()
        want = similar(index, [chip], k=k, exclude_same_cell=excl)
        assert [h["chip"] for h in body["results"]] == [h.chip for h in want.hits]
        assert [h["score"] for h in body["results"]] == pytest.approx([h.score for h in want.hits])
        assert body["query"]["k"] == k and body["query"]["exclude_same_cell"] is excl
        assert len(body["geojson"]["features"]) == len(want.hits)
        assert [f["properties"]["chip"] for f in body["geojson"]["features"]] == [h.chip for h in want.hits]
        for h in body["results"]:
            assert h["thumbnail"] == f"/api/chip/{h['chip']}/thumbnail.jpg"
            assert h["labels"] and h["labels"][0] in LABELS
        assert body["query"]["chips"][0]["properties"]["chip"] == chip
    # without .jpg, and by quadkey (all acquisitions of it)
    assert client.get(f"/api/similar?chip={chip[:-4]}&k=3").status_code == 200
    qk = grid.parse_chip_name(chip).quadkey
    body = client.get(f"/api/similar?chip={qk}&k=3").json()
    assert body["query"]["chips"] and all(f["properties"]["quadkey"] == qk for f in body["query"]["chips"])
    assert all(h["quadkey"] != qk for h in body["results"])


@pytest.mark.parametrize(
    "query,status",
    [
        ("chip=Z10-12002022303200000_FFFFFFFFFFFFFFFF.jpg", 404),  # well-formed, not indexed
        ("chip=33333333333333333", 404),
        ("chip=../../etc/passwd", 400),
        ("chip=%2Fetc%2Fpasswd", 400),
        ("chip=Z99-12002022303200000_AB.jpg", 400),
        ("chip=Z10-1200_AB.jpg", 400),
        ("chip=<script>alert(1)</script>", 400),
        ("chip=1234", 400),
        ("chip=", 400),
        ("k=5", 422),
        ("chip=12002022303200000&k=0", 422),
        ("chip=12002022303200000&k=1001", 422),
        ("chip=12002022303200000&k=ten", 422),
        ("chip=12002022303200000&exclude_same_cell=maybe", 422),
    ],
)
def test_similar_rejects_bad_parameters(client, query, status):
    r = client.get(f"/api/similar?{query}")
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    assert "Traceback" not in r.text and "/tmp" not in r.text and "<script>" not in r.text


def test_chips_in_bbox(client, viewer):
    w, s, e, n = client.get("/tilejson.json").json()["bounds"]
    fc = client.get(f"/api/chips?bbox={w},{s},{e},{n}").json()
    assert fc["type"] == "FeatureCollection" and not fc["truncated"]
    quadkeys = [f["properties"]["quadkey"] for f in fc["features"]]
    assert len(quadkeys) == len(set(quadkeys)) == viewer.manifest["quadkey"].n_unique()  # one per place: the newest
    dates = {c: a["date"] for c, a in ((a["catalog_id"], a) for a in client.get("/api/acquisitions").json()["catalog_ids"])}
    for f in fc["features"]:
        p = f["properties"]
        others = viewer.manifest.filter(pl.col("quadkey") == p["quadkey"])["catalog_id"].to_list()
        assert dates[p["catalog_id"]] == max(dates[c] for c in others)
        ring = f["geometry"]["coordinates"][0]
        assert len(ring) == 5 and ring[0] == ring[-1]
        lon, lat = chip_centre_lonlat(p["zone"], p["quadkey"])
        assert min(x for x, _ in ring) < lon < max(x for x, _ in ring)
    acq = viewer.sample.catalog_ids[0]
    picked = client.get(f"/api/chips?bbox={w},{s},{e},{n}&acquisition={acq}").json()
    assert picked["features"] and all(f["properties"]["catalog_id"] == acq for f in picked["features"])
    few = client.get(f"/api/chips?bbox={w},{s},{e},{n}&limit=3").json()
    assert few["count"] == 3 and few["truncated"]
    assert client.get("/api/chips?bbox=0,0,0.001,0.001").json()["count"] == 0
    for bad in ("1,2,3", "a,b,c,d", "10,0,5,1", "0,10,1,5", "-200,0,0,1", "nan,0,1,1", "inf,0,1,1"):
        assert client.get(f"/api/chips?bbox={bad}").status_code == 400, bad
    assert client.get("/api/chips").status_code == 422
    assert client.get(f"/api/chips?bbox={w},{s},{e},{n}&limit=100000").status_code == 422


def test_thumbnails(client, viewer):
    chip = viewer.chip_rows("all_data")["chip"][0]
    r = client.get(f"/api/chip/{chip}/thumbnail.jpg")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    im = decode(r)
    assert im.format == "JPEG" and max(im.size) <= 160
    assert max(decode(client.get(f"/api/chip/{chip}/thumbnail.jpg?size=64")).size) <= 64
    assert client.get(f"/api/chip/{chip}/thumbnail.jpg?size=4096").status_code == 422
    # a chip file that is not indexed is still served from the chips folder
    assert client.get(f"/api/chip/{chip[:-4]}/thumbnail.jpg").status_code == 200
    assert client.get("/api/chip/Z10-12002022303200000_FFFFFFFFFFFFFFFF.jpg/thumbnail.jpg").status_code == 404
    assert client.get("/api/chip/12002022303200000/thumbnail.jpg").status_code == 400


TRAVERSALS = [
    "/api/chip/..%2F..%2F..%2Fetc%2Fpasswd/thumbnail.jpg",
    "/api/chip/%2e%2e%2f%2e%2e%2fetc%2fpasswd/thumbnail.jpg",
    "/api/chip/..%252F..%252Fetc%252Fpasswd/thumbnail.jpg",
    "/api/chip/%2Fetc%2Fpasswd/thumbnail.jpg",
    "/api/chip/Z10-..%2F..%2F..%2Fetc%2Fpasswd/thumbnail.jpg",
    "/api/chip/..%5C..%5Cwindows%5Cwin.ini/thumbnail.jpg",
    "/static/..%2F..%2F..%2Fetc%2Fpasswd",
    "/static/%2e%2e/%2e%2e/app.py",
    "/static/..%2Fapp.py",
    "/static/%2e%2e%2fserve_cli.py",
    "/tiles/..%2F..%2Fetc/passwd/1.jpg",
    "/static/leaflet/..%2F..%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd",
]


@pytest.mark.parametrize("url", TRAVERSALS)
def test_path_traversal_is_rejected(client, url):
    r = client.get(url)
    assert r.status_code in (400, 404, 422), (url, r.status_code)
    assert "root:" not in r.text and "def create_app" not in r.text and "Traceback" not in r.text


def test_symlink_out_of_the_chips_folder_is_rejected(client, viewer, tmp_path):
    outside = tmp_path / "secret.jpg"
    Image.new("RGB", (8, 8), (255, 0, 0)).save(outside)
    zone = viewer.sample.zone
    link = viewer.chips / str(zone) / f"Z{zone}-12002022303200000_0EVIL0.jpg"
    link.symlink_to(outside)
    try:
        assert client.get(f"/api/chip/{link.name}/thumbnail.jpg").status_code == 404
        etc = viewer.chips / str(zone) / f"Z{zone}-12002022303200001_0EVIL1.jpg"
        etc.symlink_to("/etc/passwd")
        assert client.get(f"/api/chip/{etc.name}/thumbnail.jpg").status_code == 404
        etc.unlink()
    finally:
        link.unlink()


def test_tile_parameters_are_validated(client):
    for url, status in (
        ("/tiles/25/0/0.jpg", 422),
        ("/tiles/-1/0/0.jpg", 422),
        ("/tiles/3/8/0.jpg", 400),
        ("/tiles/3/0/8.jpg", 400),
        ("/tiles/3/-1/0.jpg", 422),
        ("/tiles/x/0/0.jpg", 422),
        ("/tiles/3/0/0.gif", 404),
        ("/tiles/3/0/0.jpg?acquisition=a%2Fb", 400),
        ("/tiles/99999999999999999999/0/0.jpg", 422),
    ):
        r = client.get(url)
        assert r.status_code == status, (url, r.status_code, r.text)
        assert "Traceback" not in r.text


def test_errors_are_generic_and_hosts_checked(viewer, monkeypatch):
    app = create_app(viewer.sample.root, viewer.chips, viewer.index)
    c = TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False)

    def boom(*a, **k):
        raise RuntimeError("secret detail /srv/private/path")

    monkeypatch.setattr(app.state.renderer, "render", boom)
    row = viewer.chip_rows("all_data").row(0, named=True)
    t = tile_at(*chip_centre_lonlat(row["zone"], row["quadkey"]), 17)
    r = c.get(f"/tiles/17/{t.x}/{t.y}.jpg")
    assert r.status_code == 500 and r.json() == {"detail": "internal server error"}
    assert "secret" not in r.text and "Traceback" not in r.text
    # DNS rebinding: a foreign Host header is refused when bound to loopback
    assert c.get("/api/info", headers={"host": "evil.example"}).status_code == 400
    assert c.get("/api/info", headers={"host": "localhost:8000"}).status_code == 200
    # docs and OpenAPI schema are off
    assert c.get("/docs").status_code == 404 and c.get("/openapi.json").status_code == 404


def test_cli_registers_serve():
    import typer
    from typer.testing import CliRunner

    from imagesim.cli.search import register

    app = typer.Typer()

    @app.callback()
    def main() -> None:
        pass

    register(app)
    r = CliRunner().invoke(app, ["serve", "--help"])
    assert r.exit_code == 0 and "--ard-path" in r.output and "127.0.0.1" in r.output


# --- a real server: raw requests and the browser ---


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving(app) -> Iterator[str]:
    """``app`` served by uvicorn on a free loopback port in a thread: yields its base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started:
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def headless_chrome(*, prefs: dict | None = None):
    """A headless Chromium (selenium) with the browser console log kept; skips the test without one."""
    found = find_browser()
    if found is None:
        pytest.skip("chromium and chromedriver are not installed (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver")
    exe, driver_path = found
    opts = webdriver.ChromeOptions()
    opts.binary_location = exe
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,800",
        "--no-first-run",
        "--disable-extensions",
        "--proxy-server=direct://",
        "--proxy-bypass-list=*",
    ):
        opts.add_argument(arg)
    if prefs:
        opts.add_experimental_option("prefs", prefs)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=webdriver.ChromeService(executable_path=driver_path), options=opts)


@pytest.fixture(scope="module")
def live_server(viewer):
    with serving(create_app(viewer.sample.root, viewer.chips, viewer.index)) as base:
        yield base


def raw_get(base: str, target: str) -> tuple[int, bytes]:
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1]), data


@pytest.mark.parametrize(
    "target",
    [
        "/static/../../../../../../etc/passwd",
        "/static/../app.py",
        "/static//etc/passwd",
        "/static/leaflet/../../serve/app.py",
        "/api/chip/../../../../etc/passwd/thumbnail.jpg",
        "/../../../etc/passwd",
    ],
)
def test_raw_traversal_against_the_server(live_server, target):
    """Un-normalised request targets, as a hostile client sends them (no client-side clean-up)."""
    status, data = raw_get(live_server, target)
    assert status in (400, 404), (target, status)
    assert b"root:" not in data and b"def create_app" not in data


def find_browser() -> tuple[str, str] | None:
    for browser in ("chromium", "chromium-browser", "google-chrome"):
        exe = shutil.which(browser)
        driver = shutil.which("chromedriver")
        if exe and driver:
            return exe, driver
    return None


def test_browser_click_chip_shows_similar(live_server, viewer, tmp_path):
    driver = headless_chrome()
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        row = viewer.chip_rows("all_data").row(0, named=True)
        lon, lat = chip_centre_lonlat(row["zone"], row["quadkey"])
        driver.get(f"{live_server}/#17/{lat:.6f}/{lon:.6f}")
        wait = WebDriverWait(driver, 20)
        wait.until(lambda d: d.execute_script("return document.body.dataset.ready === '1' && +(document.body.dataset.grid || 0) > 0"))
        wait.until(
            lambda d: d.execute_script(
                "return Array.from(document.querySelectorAll('img.leaflet-tile-loaded')).some(i => i.naturalWidth === 256 && !i.src.startsWith('data:'))"
            )
        )
        cells = driver.find_elements(By.CSS_SELECTOR, "path.chip-cell")
        assert cells
        # click the chip under the map centre (the one the URL pointed at)
        size = driver.find_element(By.ID, "map").size
        target = None
        for cell in cells:
            r = cell.rect
            if r["x"] < size["width"] / 2 < r["x"] + r["width"] and r["y"] < size["height"] / 2 < r["y"] + r["height"]:
                target = cell
        (target or cells[0]).click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#similar-list li.chip-card")) >= 1)
        items = driver.find_elements(By.CSS_SELECTOR, "#similar-list li.chip-card")
        assert len(items) == 10
        wait.until(
            lambda d: d.execute_script(
                "return Array.from(document.querySelectorAll('#similar-list img')).every(i => i.complete && i.naturalWidth > 0)"
            )
        )
        assert driver.find_elements(By.CSS_SELECTOR, "path.similar-cell")  # outlined on the map
        assert "chips similar to" in driver.find_element(By.ID, "status").text
        query = driver.execute_script("return new URLSearchParams(location.search).get('positive')")
        if target is not None:  # the grid shows the newest acquisition's chip of that place
            assert grid.parse_chip_name(query).quadkey == row["quadkey"]
        # what the page shows is what the API answers
        import json
        import urllib.request

        with urllib.request.urlopen(f"{live_server}/api/similar?chip={query}&k=10") as resp:
            api = json.load(resp)
        shown = [li.get_attribute("data-chip") for li in items]
        assert shown == [h["chip"] for h in api["results"]]
        shot = tmp_path / "serve.png"
        driver.save_screenshot(str(shot))
        artifacts = REPO / "test-artifacts"
        artifacts.mkdir(exist_ok=True)
        shutil.copy(shot, artifacts / "serve.png")
        print(f"screenshot: {shot} (copied to {artifacts / 'serve.png'})")
        severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not severe, severe
    finally:
        driver.quit()
