# ruff: noqa: F811  (test_serve's module fixtures, imported by name, are the arguments of the tests)
"""`imagesim serve` as a search tool: several positive and negative examples, k up to 1,000, exports
(GeoJSON, CSV, GeoParquet), the search kept in the URL, transparent no-data tiles and a basemap.

Reuses test_serve's module fixture (the chipped small sample and an index of random unit vectors) and
builds a second index over the same chips with valid fractions planted, for ``min_valid``. The browser
test runs a real server with a basemap served by a second local HTTP server (another origin: the CSP
must let its tiles in), clicks chips, downloads the GeoJSON export and opens it with OGR.
"""

from __future__ import annotations

import csv
import http.server
import inspect
import io
import json
import threading
import time
import urllib.parse
import urllib.request

import numpy as np
import polars as pl
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("faiss")
pytest.importorskip("mercantile")

from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402
from test_serve import LABELS, REPO, chip_centre_lonlat, client, decode, free_port, headless_chrome, serving, tile_at, viewer  # noqa: E402, F401

from imagesim import grid  # noqa: E402
from imagesim.search.index import build_index, load_index  # noqa: E402
from imagesim.search.serve.app import PAGE_CSP, app_from_env, create_app, parse_basemap  # noqa: E402
from imagesim.search.serve.tiles import TILE, Transformers  # noqa: E402
from imagesim.search.similar import similar  # noqa: E402

from embedding_table import embeddings_table  # noqa: E402

OSM = "https://tile.openstreetmap.org/{z}/{x}/{y}.png"
TAKES_MIN_VALID = "min_valid" in inspect.signature(similar).parameters


def qs(**params) -> str:
    """A query string with repeated keys for list values."""
    return urllib.parse.urlencode([(k, v) for k, vs in params.items() for v in (vs if isinstance(vs, list) else [vs])])


def examples(viewer, n: int) -> list[str]:
    """``n`` chips of distinct quadkeys (so none is left out as another example's quadkey)."""
    rows = viewer.chip_rows("all_data").unique("quadkey", keep="first", maintain_order=True)
    return rows["chip"].to_list()[:n]


# --- the API: several examples ---


def test_positives_and_negatives_match_the_library(client, viewer):
    index = load_index(viewer.index)
    a, b, c = examples(viewer, 3)
    both = client.get(f"/api/similar?{qs(positive=[a, b], k=20)}").json()
    steered = client.get(f"/api/similar?{qs(positive=[a, b], negative=c, k=20)}").json()
    want = similar(index, [a, b], [c], k=20)
    assert [h["chip"] for h in steered["results"]] == [h.chip for h in want.hits]
    assert [h["score"] for h in steered["results"]] == pytest.approx([h.score for h in want.hits])
    assert [h["chip"] for h in both["results"]] == [h.chip for h in similar(index, [a, b], k=20).hits]
    assert [h["chip"] for h in steered["results"]] != [h["chip"] for h in both["results"]]  # the negative steers
    assert steered["query"]["positives"] == [a, b] and steered["query"]["negatives"] == [c]
    assert [f["properties"]["chip"] for f in steered["query"]["chips"]] == [a, b]
    assert [f["properties"]["chip"] for f in steered["query"]["negative_chips"]] == [c]
    examples_qk = {grid.parse_chip_name(x).quadkey for x in (a, b, c)}
    assert not examples_qk & {h["quadkey"] for h in steered["results"]}
    # the older single chip= still works, and adds to positive=
    assert client.get(f"/api/similar?chip={a}&k=20").json()["results"] == client.get(f"/api/similar?positive={a}&k=20").json()["results"]
    mixed = client.get(f"/api/similar?{qs(chip=a, positive=b, negative=c, k=20)}").json()
    assert mixed["results"] == steered["results"]
    # the same example twice counts once
    assert client.get(f"/api/similar?{qs(positive=[a, a, b], negative=c, k=20)}").json()["results"] == steered["results"]
    # the footprints on the map are the library's
    from imagesim.search.similar import geojson

    lib = geojson(want)["features"]
    for got, ref in zip(steered["geojson"]["features"], lib):
        assert got["properties"]["chip"] == ref["properties"]["chip"]
        assert np.allclose(got["geometry"]["coordinates"][0], ref["geometry"]["coordinates"][0], atol=1e-7)


@pytest.mark.parametrize(
    "query,status,text",
    [
        ("negative={a}", 422, "positive"),
        ("positive={a}&negative={a}", 400, "both a positive and a negative"),
        ("positive={a}&negative=../../etc/passwd", 400, "chip must be"),
        ("positive={a}&negative=Z10-12002022303200000_FFFFFFFFFFFFFFFF.jpg", 404, "not in the index"),
        ("positive={a}&k=1001", 422, "k"),
        ("positive={a}&min_valid=1.5", 422, "min_valid"),
        ("positive={a}&" + "&".join(f"positive=1200202230320000{i % 4}{i // 4 % 4}" for i in range(101)), 400, "at most 100"),
    ],
)
def test_examples_are_validated(client, viewer, query, status, text):
    a = examples(viewer, 1)[0]
    r = client.get("/api/similar?" + query.format(a=a))
    assert r.status_code == status, r.text
    assert text in r.json()["detail"] and "Traceback" not in r.text and "/tmp" not in r.text


def test_k_up_to_1000(client, viewer):
    a = examples(viewer, 1)[0]
    t0 = time.perf_counter()
    body = client.get(f"/api/similar?positive={a}&k=1000").json()
    took = time.perf_counter() - t0
    qk = grid.parse_chip_name(a).quadkey
    others = viewer.manifest.filter(pl.col("quadkey") != qk).height
    assert len(body["results"]) == min(1000, others) and len(body["geojson"]["features"]) == len(body["results"])
    assert [h["rank"] for h in body["results"]] == list(range(1, len(body["results"]) + 1))
    assert took < 5, took
    assert client.get("/api/info").json()["k_max"] == 1000


def test_min_valid_reaches_similar_only_where_it_is_taken(client, viewer, tmp_path):
    info = client.get("/api/info").json()
    assert info["min_valid"] is TAKES_MIN_VALID
    if TAKES_MIN_VALID:
        assert info["min_valid_default"] == inspect.signature(similar).parameters["min_valid"].default
    a = examples(viewer, 1)[0]
    if not TAKES_MIN_VALID:
        assert client.get(f"/api/similar?positive={a}&min_valid=0.5").status_code == 400
        return
    # an index whose chips carry valid fractions: every third one mostly no-data
    manifest = viewer.manifest
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(manifest.height, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    table = embeddings_table(manifest, vectors, "test-model", [[LABELS[i % len(LABELS)]] for i in range(manifest.height)])
    valid = [0.2 if i % 3 == 0 else 1.0 for i in range(manifest.height)]
    table.with_columns(pl.Series("valid_fraction", valid, dtype=pl.Float32)).write_parquet(tmp_path / "embeddings.parquet")
    build_index(tmp_path / "embeddings.parquet", tmp_path / "index")
    c = TestClient(create_app(viewer.sample.root, viewer.chips, tmp_path / "index"), base_url="http://127.0.0.1")
    index = load_index(tmp_path / "index")
    by_default = c.get(f"/api/similar?positive={a}&k=50").json()
    assert [h["chip"] for h in by_default["results"]] == [h.chip for h in similar(index, [a], k=50).hits]
    kept = c.get(f"/api/similar?positive={a}&k=50&min_valid=0.5").json()["results"]
    everything = c.get(f"/api/similar?positive={a}&k=50&min_valid=0").json()["results"]
    assert [h["chip"] for h in kept] == [h.chip for h in similar(index, [a], k=50, min_valid=0.5).hits]
    assert kept and all(h["valid_fraction"] >= 0.5 for h in kept)
    assert any(h["valid_fraction"] < 0.5 for h in everything)
    # the export carries the valid fraction too
    text = c.get(f"/api/similar/export?positive={a}&k=50&min_valid=0&format=csv").text
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [float(r["valid_fraction"]) for r in rows] == pytest.approx([h["valid_fraction"] for h in everything])


def test_a_similar_without_min_valid(viewer, monkeypatch):
    """A `similar` that does not take `min_valid` (before valid fractions): never passed it, the API says so."""
    import imagesim.search.similar as sim

    real = sim.similar
    calls: list[dict] = []

    def older(index, positives, negatives=None, *, k=10, exclude_same_cell=False, max_cloud=None):
        calls.append({"k": k})
        return real(index, positives, negatives, k=k, exclude_same_cell=exclude_same_cell, max_cloud=max_cloud)

    monkeypatch.setattr(sim, "similar", older)
    c = TestClient(create_app(viewer.sample.root, viewer.chips, viewer.index), base_url="http://127.0.0.1")
    assert c.get("/api/info").json()["min_valid"] is False
    a, b = examples(viewer, 2)
    assert len(c.get(f"/api/similar?{qs(positive=a, negative=b, k=7)}").json()["results"]) == 7 and calls == [{"k": 7}]
    r = c.get(f"/api/similar?positive={a}&min_valid=0.5")
    assert r.status_code == 400 and "min_valid" in r.json()["detail"]


def test_chip_at_a_point(client, viewer):
    w, s, e, n = client.get("/tilejson.json").json()["bounds"]
    shown = {f["properties"]["quadkey"]: f["properties"]["chip"] for f in client.get(f"/api/chips?bbox={w},{s},{e},{n}").json()["features"]}
    for chip in examples(viewer, 3):
        qk = grid.parse_chip_name(chip).quadkey
        lon, lat = chip_centre_lonlat(grid.parse_chip_name(chip).zone, qk)
        f = client.get(f"/api/chips/at?lon={lon}&lat={lat}").json()
        assert f["properties"]["quadkey"] == qk and f["properties"]["chip"] == shown[qk]  # the chip the grid draws there
    assert client.get("/api/chips/at?lon=0&lat=0").status_code == 404
    assert client.get("/api/chips/at?lon=200&lat=0").status_code == 422
    assert client.get("/api/chips/at?lon=nan&lat=0").status_code == 422


# --- exports ---


def export(client, fmt: str, **params):
    r = client.get(f"/api/similar/export?{qs(**params)}&format={fmt}")
    assert r.status_code == 200, r.text
    assert r.headers["content-disposition"] == f'attachment; filename="imagesim-similar.{fmt}"'
    return r


def test_exports_hold_the_results(client, viewer, tmp_path):
    gpd = pytest.importorskip("geopandas")
    from osgeo import ogr

    a, b, c = examples(viewer, 3)
    params = dict(positive=[a, b], negative=c, k=25, exclude_same_cell="true")
    want = client.get(f"/api/similar?{qs(**params)}").json()
    chips = [h["chip"] for h in want["results"]]
    assert len(chips) > 5

    r = export(client, "geojson", **params)
    assert r.headers["content-type"] == "application/geo+json"
    path = tmp_path / "similar.geojson"
    path.write_bytes(r.content)
    ds = ogr.Open(str(path))
    assert ds is not None
    layer = ds.GetLayer(0)
    assert layer.GetFeatureCount() == len(chips)
    got = [(f.GetField("rank"), f.GetField("chip"), f.GetGeometryRef().GetGeometryName()) for f in layer]
    assert got == [(i + 1, ch, "POLYGON") for i, ch in enumerate(chips)]
    assert layer.GetSpatialRef() is None or layer.GetSpatialRef().GetAuthorityCode(None) == "4326"
    frame = gpd.read_file(path)
    assert frame["chip"].tolist() == chips and frame.crs.to_epsg() == 4326
    assert json.loads(r.content)["imagesim_query"]["negatives"] == [c]

    r = export(client, "csv", **params)
    assert r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    for col in ("rank", "score", "chip", "zone", "quadkey", "catalog_id", "lon", "lat", "labels", "cloud_fraction"):
        assert col in rows[0], col
    assert [row["chip"] for row in rows] == chips
    assert [float(row["score"]) for row in rows] == pytest.approx([h["score"] for h in want["results"]])
    assert [row["labels"] for row in rows] == [";".join(h["labels"]) for h in want["results"]]

    r = export(client, "parquet", **params)
    path = tmp_path / "similar.parquet"
    path.write_bytes(r.content)
    table = gpd.read_parquet(path)
    assert table["chip"].tolist() == chips and table.crs.to_epsg() == 4326
    for geom, feature in zip(table.geometry, want["geojson"]["features"]):
        ring = np.asarray(feature["geometry"]["coordinates"][0])
        assert geom.geom_type == "Polygon" and np.allclose(geom.bounds, (*ring.min(axis=0), *ring.max(axis=0)), atol=1e-6)
    assert table["labels"].map(list).tolist() == [h["labels"] for h in want["results"]]

    bad = client.get(f"/api/similar/export?positive={a}&format=shp")
    assert bad.status_code == 400 and "geojson" in bad.json()["detail"]
    assert client.get("/api/similar/export?format=csv").status_code == 422


# --- tiles: no-data transparent ---


def test_nodata_pixels_are_transparent_and_valid_ones_opaque(client, viewer):
    """Alpha against the COG: every tile pixel whose source pixel (nearest, exact projection) is no-data
    is transparent, every one with data opaque; only the 1 px band along the edge may differ (resampling)."""
    from imagesim.cog import open_cog

    row = viewer.chip_rows("partial_data").row(0, named=True)
    cat = row["catalog_id"]
    cog = open_cog(next(p for p in viewer.sample.cogs if p.name.startswith(cat)))
    gt = cog.geotransform
    lon, lat = chip_centre_lonlat(row["zone"], row["quadkey"])
    z = 19  # full resolution: one COG pixel per tile pixel or so
    found = False
    for dx in range(-3, 4):
        for dy in range(-3, 4):
            t = tile_at(lon, lat, z)
            x, y = t.x + dx, t.y + dy
            r = client.get(f"/tiles/{z}/{x}/{y}.png?acquisition={cat}")
            if r.status_code != 200:
                continue
            im = decode(r)
            assert im.mode == "RGBA"
            rgba = np.asarray(im)
            alpha = rgba[..., 3]
            if alpha.min() == 255:
                continue
            found = True
            assert set(np.unique(alpha).tolist()) <= {0, 255}
            # the COG pixel under each tile pixel centre
            from imagesim.search.serve.tiles import EARTH_HALF

            size = 2 * EARTH_HALF / (1 << z)
            west, north = -EARTH_HALF + x * size, EARTH_HALF - y * size
            cc = (np.arange(TILE) + 0.5) * size / TILE
            mx, my = np.meshgrid(west + cc, north - cc)
            ux, uy = (np.asarray(v) for v in Transformers().get(3857, cog.epsg).transform(mx, my))
            col = np.floor((ux - gt[0]) / gt[1]).astype(int)
            rw = np.floor((uy - gt[3]) / gt[5]).astype(int)
            c0, r0 = col.min(), rw.min()
            win = cog.read((int(c0), int(r0), int(col.max() - c0 + 1), int(rw.max() - r0 + 1)))
            has_data = win.max(axis=2)[rw - r0, col - c0] > 0
            b = grid.bounds(row["quadkey"][:12])
            has_data &= (ux > b.west) & (ux < b.east) & (uy > b.south) & (uy < b.north)  # the cell interior only
            edge = np.zeros_like(has_data)
            for axis in (0, 1):
                for shift in (-1, 1):
                    edge |= np.roll(has_data, shift, axis=axis) != has_data
            inner = ~edge
            inner[0], inner[-1], inner[:, 0], inner[:, -1] = False, False, False, False
            assert (alpha[inner & has_data] == 255).all() and (alpha[inner & ~has_data] == 0).all()
            assert (inner & has_data).sum() > 1000 and (inner & ~has_data).sum() > 1000
            # the JPEG of the same tile draws no-data black
            jpg = np.asarray(decode(client.get(f"/tiles/{z}/{x}/{y}.jpg?acquisition={cat}"))).astype(int)
            assert jpg[inner & ~has_data].max() <= 16
            break
        if found:
            break
    assert found, "no tile with both imagery and no-data near the partial chip"


def test_no_dark_fringe_along_nodata(viewer, monkeypatch):
    """Stripes of one colour between stripes of no-data: every opaque pixel of the tile has that colour, also
    along the stripes' edges (resampling takes the valid pixels only, not the no-data black)."""
    from imagesim.search.serve.tiles import Catalog, TileRenderer

    colour = np.array([200, 120, 40])
    renderer = TileRenderer(Catalog(viewer.sample.root), block_cache_mb=0)

    def striped(oc, level, col, row, width, height):
        arr = np.zeros((height, width, 3), np.uint8)
        arr[:, (col + np.arange(width)) % 48 < 30] = colour
        return arr, True

    monkeypatch.setattr(renderer, "read_window", striped)
    row = viewer.chip_rows("all_data").row(0, named=True)
    lon, lat = chip_centre_lonlat(row["zone"], row["quadkey"])
    for z in (18, 19, 20):
        t = tile_at(lon, lat, z)
        got = renderer.render_array(z, t.x, t.y, row["catalog_id"])
        assert got is not None
        rgb, filled = got
        assert filled is not None and 0.3 < filled.mean() < 0.9, z
        assert np.abs(rgb[filled].astype(int) - colour).max() <= 3, z  # darkened by up to 100 without the premultiplied edge
        png = decode_png(renderer.render(z, t.x, t.y, "png", row["catalog_id"]))
        assert (png[..., 3] == np.where(filled, 255, 0)).all()


def decode_png(data: bytes | None) -> np.ndarray:
    assert data is not None
    im = Image.open(io.BytesIO(data))
    assert im.mode == "RGBA"
    return np.asarray(im)


# --- the basemap ---


def test_basemap_template_is_checked():
    b = parse_basemap(OSM, "© OpenStreetMap contributors")
    assert b is not None and b.url == OSM and b.origin == "https://tile.openstreetmap.org"
    assert b.attribution == "© OpenStreetMap contributors"
    assert parse_basemap(None) is None and parse_basemap("  ") is None
    s = parse_basemap("https://{s}.tile.example.org:8443/tiles/{z}/{x}/{-y}.png?key=abc")
    assert s is not None and s.origin == "https://*.tile.example.org:8443" and s.attribution == "Basemap: {s}.tile.example.org"
    assert parse_basemap("http://127.0.0.1:9999/{z}/{x}/{y}@{r}.png").origin == "http://127.0.0.1:9999"  # type: ignore[union-attr]
    from imagesim.errors import InvalidArgumentError

    for bad in (
        "ftp://tiles.example.org/{z}/{x}/{y}.png",
        "https://tiles.example.org/{z}/{x}.png",  # no {y}
        "https://tiles.example.org/{z}/{x}/{y}/{q}.png",  # unknown placeholder
        "https://tiles.example.org/{z}/{x}/{y}.png'; script-src *",
        'https://tiles.example.org/{z}/{x}/{y}.png" onerror="x',
        "https://tiles example.org/{z}/{x}/{y}.png",
        "https://a.{s}.example.org/{z}/{x}/{y}.png",
        "https://tiles.example.org:99999/{z}/{x}/{y}.png",
        "//tiles.example.org/{z}/{x}/{y}.png",
    ):
        with pytest.raises(InvalidArgumentError) as exc:
            parse_basemap(bad)
        assert exc.value.param == "basemap", bad
    with pytest.raises(InvalidArgumentError):
        parse_basemap(OSM, "line one\nline two")
    with pytest.raises(InvalidArgumentError):
        parse_basemap(OSM, "x" * 301)
    with pytest.raises(InvalidArgumentError):
        parse_basemap(None, "attribution without a basemap")


def test_basemap_in_the_api_and_the_csp(viewer, client, monkeypatch):
    # none by default: the page's CSP loads images from the server only
    assert client.get("/api/info").json()["basemap"] is None
    assert client.get("/").headers["content-security-policy"] == PAGE_CSP
    app = create_app(viewer.sample.root, viewer.chips, viewer.index, basemap=OSM, basemap_attribution="<b>© OSM</b>")
    c = TestClient(app, base_url="http://127.0.0.1")
    assert c.get("/api/info").json()["basemap"] == {"url": OSM, "attribution": "<b>© OSM</b>"}  # the page writes it as text
    csp = c.get("/").headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["img-src"] == "'self' data: blob: https://tile.openstreetmap.org"
    for name in ("default-src", "script-src", "connect-src", "style-src", "object-src", "base-uri", "frame-ancestors"):
        assert directives[name] == dict(d.strip().split(" ", 1) for d in PAGE_CSP.split(";"))[name], name
    # the --workers factory reads it from the environment
    monkeypatch.setenv("IMAGESIM_SERVE_ARD", str(viewer.sample.root))
    monkeypatch.setenv("IMAGESIM_SERVE_CHIPS", str(viewer.chips))
    monkeypatch.setenv("IMAGESIM_SERVE_INDEX", "")
    monkeypatch.setenv("IMAGESIM_SERVE_BASEMAP", OSM)
    monkeypatch.setenv("IMAGESIM_SERVE_BASEMAP_ATTRIBUTION", "© OpenStreetMap contributors")
    env_app = app_from_env()
    assert env_app.state.basemap.url == OSM and env_app.state.basemap.attribution == "© OpenStreetMap contributors"
    monkeypatch.delenv("IMAGESIM_SERVE_BASEMAP")
    monkeypatch.delenv("IMAGESIM_SERVE_BASEMAP_ATTRIBUTION")
    assert app_from_env().state.basemap is None


def test_cli_serve_has_the_basemap_options():
    import typer
    from typer.testing import CliRunner

    from imagesim.cli.search import register

    app = typer.Typer()

    @app.callback()
    def main() -> None:
        pass

    register(app)
    r = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "200"})
    assert r.exit_code == 0 and "--basemap" in r.output and "--basemap-attribution" in r.output


def test_cli_serve_refuses_a_bad_basemap(cli, viewer):
    r = cli("serve", "--ard-path", viewer.sample.root, "--chips", viewer.chips, "--basemap", "https://tiles.example.org/{z}/{x}.png")
    assert r.returncode != 0 and "--basemap 'https://tiles.example.org/{z}/{x}.png'" in r.stderr and "{y}" in r.stderr
    assert "Traceback" not in r.stderr


# --- the page in a real browser ---


class TileServer:
    """A basemap on another origin: answers every tile with a grey PNG and remembers each Referer."""

    def __init__(self) -> None:
        buf = io.BytesIO()
        Image.new("RGB", (256, 256), (200, 200, 200)).save(buf, "PNG")
        png = buf.getvalue()
        self.referers: list[str | None] = []
        referers = self.referers

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                referers.append(self.headers.get("Referer"))
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(png)))
                self.end_headers()
                self.wfile.write(png)

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def basemap_server():
    s = TileServer()
    yield s
    s.close()


@pytest.fixture(scope="module")
def steer_server(viewer, basemap_server):
    app = create_app(
        viewer.sample.root,
        viewer.chips,
        viewer.index,
        basemap=f"http://127.0.0.1:{basemap_server.port}/{{z}}/{{x}}/{{y}}.png",
        basemap_attribution="Test basemap <contributors>",
    )
    with serving(app) as base:
        yield base


def api(base: str, query: str) -> dict:
    with urllib.request.urlopen(f"{base}/api/similar?{query}") as resp:
        return json.load(resp)


def test_browser_steer_export_and_share(steer_server, basemap_server, viewer, tmp_path):
    ogr = pytest.importorskip("osgeo.ogr")
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    driver = headless_chrome(
        prefs={"download.default_directory": str(downloads), "download.prompt_for_download": False, "safebrowsing.enabled": False}
    )
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
        row = viewer.chip_rows("all_data").row(0, named=True)
        lon, lat = chip_centre_lonlat(row["zone"], row["quadkey"])
        driver.get(f"{steer_server}/#17/{lat:.6f}/{lon:.6f}")
        wait = WebDriverWait(driver, 20)
        wait.until(lambda d: d.execute_script("return document.body.dataset.ready === '1' && +(document.body.dataset.grid || 0) > 2"))
        # the basemap under the imagery: its tiles loaded (the CSP let them in), sending only the origin as Referer
        wait.until(
            lambda d: d.execute_script(
                "return Array.from(document.querySelectorAll('.basemap img')).some(i => i.complete && i.naturalWidth === 256)"
            )
        )
        assert basemap_server.referers and all(r == f"{steer_server}/" for r in basemap_server.referers), basemap_server.referers[:3]
        assert "Test basemap <contributors>" in driver.find_element(By.CSS_SELECTOR, ".leaflet-control-attribution").text
        imagery = driver.execute_script("return Array.from(document.querySelectorAll('.imagery img')).map(i => i.src)")
        imagery = [s for s in imagery if not s.startswith("data:")]  # 204 (no imagery) tiles show an empty image
        assert imagery and all("/tiles/" in s and s.endswith(".png") for s in imagery)  # transparent tiles

        # three chips near the centre of the map, clicked where the grid draws them
        map_el = driver.find_element(By.ID, "map")
        size = map_el.size
        cells = []
        for cell in driver.find_elements(By.CSS_SELECTOR, "path.chip-cell"):
            r = cell.rect
            cx, cy = r["x"] + r["width"] / 2, r["y"] + r["height"] / 2
            if 40 < cx < size["width"] - 40 and 40 < cy < size["height"] - 40 and r["width"] > 30:
                cells.append((abs(cx - size["width"] / 2) + abs(cy - size["height"] / 2), cx, cy))
        cells.sort()
        assert len(cells) >= 3

        def click(cx: float, cy: float, shift: bool = False) -> None:
            before = int(driver.execute_script("return +(document.body.dataset.searches || 0)"))
            chain = ActionChains(driver)
            if shift:
                chain = chain.key_down(Keys.SHIFT)
            chain = chain.move_to_element_with_offset(map_el, int(cx - size["width"] / 2), int(cy - size["height"] / 2)).click()
            if shift:
                chain = chain.key_up(Keys.SHIFT)
            chain.perform()
            wait.until(lambda d: int(d.execute_script("return +(document.body.dataset.searches || 0)")) > before)

        def listed() -> list[str]:
            return [li.get_attribute("data-chip") for li in driver.find_elements(By.CSS_SELECTOR, "#similar-list li.chip-card")]

        def example_list(which: str) -> list[str]:
            return [li.get_attribute("data-chip") for li in driver.find_elements(By.CSS_SELECTOR, f"#{which} li.example")]

        click(*cells[0][1:])
        first = listed()
        assert len(first) == 10 and len(example_list("positives")) == 1
        click(*cells[1][1:])
        two = listed()
        assert len(example_list("positives")) == 2 and two != first
        click(*cells[2][1:], shift=True)
        steered = listed()
        positives, negatives = example_list("positives"), example_list("negatives")
        assert len(positives) == 2 and len(negatives) == 1 and steered != two
        assert driver.find_elements(By.CSS_SELECTOR, "path.positive-cell") and driver.find_elements(By.CSS_SELECTOR, "path.negative-cell")
        # the page shows what the API answers for those examples, and the URL holds the search
        query = driver.execute_script("return location.search.slice(1)")
        params = urllib.parse.parse_qs(query)
        assert params["positive"] == positives and params["negative"] == negatives and params["k"] == ["10"]
        assert steered == [h["chip"] for h in api(steer_server, query)["results"]]
        assert len(driver.find_elements(By.CSS_SELECTOR, "#positives img")) == 2  # thumbnails of the examples

        # export the results as GeoJSON: a download that OGR opens
        driver.find_element(By.ID, "export-geojson").click()
        target = downloads / "imagesim-similar.geojson"
        deadline = time.time() + 20
        while not target.exists() and time.time() < deadline:
            time.sleep(0.1)
        assert target.exists(), list(downloads.iterdir())
        ds = ogr.Open(str(target))
        assert ds is not None
        assert [f.GetField("chip") for f in ds.GetLayer(0)] == steered

        # edit: remove the negative; the list goes back to the two positives' results
        before = int(driver.execute_script("return +(document.body.dataset.searches || 0)"))
        driver.find_element(By.CSS_SELECTOR, "#negatives li.example button").click()
        wait.until(lambda d: int(d.execute_script("return +(document.body.dataset.searches || 0)")) > before)
        assert listed() == two and example_list("negatives") == []
        assert "negative" not in urllib.parse.parse_qs(driver.execute_script("return location.search.slice(1)"))

        # k = 100 pages the list by 50; zoomed out, the results are drawn as clusters
        shared = f"{steer_server}/?{qs(positive=positives, negative=negatives, k=100, max_cloud=0.3)}#13/{lat:.6f}/{lon:.6f}"
        driver.get(shared)
        wait.until(lambda d: d.execute_script("return +(document.body.dataset.searches || 0)") >= 1)
        # the URL restored the search: examples, k and the filter, and ran it
        assert example_list("positives") == positives and example_list("negatives") == negatives
        assert driver.find_element(By.ID, "k").get_attribute("value") == "100"
        assert (
            driver.find_element(By.ID, "hide-cloudy").is_selected()
            and driver.find_element(By.ID, "max-cloud").get_attribute("value") == "0.3"
        )
        want = api(steer_server, qs(positive=positives, negative=negatives, k=100, max_cloud=0.3))["results"]
        n = len(want)
        assert 50 < n <= 100  # the cloud filter leaves some out
        assert listed() == [h["chip"] for h in want[:50]]
        assert driver.find_element(By.ID, "page-info").text == f"1–50 of {n}"
        driver.find_element(By.ID, "page-next").click()
        assert listed() == [h["chip"] for h in want[50:]]
        assert driver.find_element(By.ID, "page-next").get_attribute("disabled") is not None
        clusters = driver.find_elements(By.CSS_SELECTOR, ".result-cluster")
        assert clusters and sum(int(c.text) for c in clusters) + len(driver.find_elements(By.CSS_SELECTOR, "path.similar-dot")) == n
        assert len(clusters) < 50
        shot = REPO / "test-artifacts"
        shot.mkdir(exist_ok=True)
        driver.save_screenshot(str(shot / "serve-steer.png"))
        # clear: no examples, no results, no search in the URL
        driver.find_element(By.ID, "clear-examples").click()
        wait.until(lambda d: d.execute_script("return document.body.dataset.results") == "0")
        assert driver.execute_script("return location.search") == ""
        severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not severe, severe
    finally:
        driver.quit()
