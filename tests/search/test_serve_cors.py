"""`imagesim serve --cors`: tiles, TileJSON and the API readable from pages on other origins.

The app is built over the small sample delivery without an index (tiles, TileJSON and ``/api/info``
need none). The browser test serves the viewer on one loopback port and a page on another (a second
origin) that ``fetch()``es a tile and draws it on a canvas.
"""

from __future__ import annotations

import http.server
import shutil
import socket
import threading
import time

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("mercantile")

import mercantile  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from imagesim.errors import InvalidArgumentError  # noqa: E402
from imagesim.search.serve.app import app_from_env, create_app, parse_cors_origins  # noqa: E402

NOTEBOOK = "http://localhost:8888"
OTHER = "http://evil.example"


@pytest.fixture(scope="module")
def chips_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cors-chips")


def make_client(small_sample, chips_dir, cors=None) -> TestClient:
    app = create_app(small_sample.root, chips_dir, None, cors_origins=cors)
    return TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False)


@pytest.fixture(scope="module")
def tile_url(small_sample, chips_dir) -> str:
    """A tile with imagery (the small sample covers part of each cell: the first z15 tile that has some)."""
    client = make_client(small_sample, chips_dir)
    w, s, e, n = client.app.state.catalog.sources[0].lonlat
    for t in mercantile.tiles(w, s, e, n, 15):
        url = f"/tiles/{t.z}/{t.x}/{t.y}.png"
        if client.get(url).status_code == 200:
            return url
    raise AssertionError("no tile with imagery")


def paths(tile_url: str) -> list[str]:
    return [tile_url, "/tilejson.json", "/api/info"]


def test_default_is_strict(small_sample, chips_dir, tile_url):
    client = make_client(small_sample, chips_dir)
    for path in paths(tile_url):
        r = client.get(path, headers={"Origin": NOTEBOOK})
        assert r.status_code == 200, path
        assert "access-control-allow-origin" not in r.headers
        assert r.headers["cross-origin-resource-policy"] == "same-origin"
    pre = client.options(tile_url, headers={"Origin": NOTEBOOK, "Access-Control-Request-Method": "GET"})
    assert "access-control-allow-origin" not in pre.headers


def test_allowed_origin_gets_cors_and_corp(small_sample, chips_dir, tile_url):
    client = make_client(small_sample, chips_dir, f"{NOTEBOOK}, http://127.0.0.1:9999")
    for path in paths(tile_url):
        r = client.get(path, headers={"Origin": NOTEBOOK})
        assert r.status_code == 200, path
        assert r.headers["access-control-allow-origin"] == NOTEBOOK
        assert "origin" in r.headers["vary"].lower()
        assert r.headers["cross-origin-resource-policy"] == "cross-origin"
        assert r.headers["x-content-type-options"] == "nosniff"  # the other security headers stay
    # a plain <img> sends no Origin: its Referer names the page
    r = client.get(tile_url, headers={"Referer": f"{NOTEBOOK}/notebooks/map.ipynb"})
    assert r.headers["cross-origin-resource-policy"] == "cross-origin"
    assert "access-control-allow-origin" not in r.headers


def test_other_origin_gets_nothing(small_sample, chips_dir, tile_url):
    client = make_client(small_sample, chips_dir, NOTEBOOK)
    for headers in ({"Origin": OTHER}, {"Referer": f"{OTHER}/page"}, {}):
        r = client.get(tile_url, headers=headers)
        assert r.status_code == 200
        assert "access-control-allow-origin" not in r.headers
        assert r.headers["cross-origin-resource-policy"] == "same-origin"
        assert "origin" in r.headers["vary"].lower()  # a shared cache keeps the answers apart
    pre = client.options(tile_url, headers={"Origin": OTHER, "Access-Control-Request-Method": "GET"})
    assert pre.status_code == 400
    assert "access-control-allow-origin" not in pre.headers


def test_preflight(small_sample, chips_dir, tile_url):
    client = make_client(small_sample, chips_dir, NOTEBOOK)
    for path in paths(tile_url):
        r = client.options(
            path, headers={"Origin": NOTEBOOK, "Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "accept"}
        )
        assert r.status_code == 200, path
        assert r.headers["access-control-allow-origin"] == NOTEBOOK
        assert "GET" in r.headers["access-control-allow-methods"]
        assert "accept" in r.headers["access-control-allow-headers"].lower()
        assert r.headers["cross-origin-resource-policy"] == "cross-origin"
    r = client.options(tile_url, headers={"Origin": NOTEBOOK, "Access-Control-Request-Method": "DELETE"})
    assert r.status_code == 400


def test_any_origin(small_sample, chips_dir, tile_url):
    client = make_client(small_sample, chips_dir, "*")
    for path in paths(tile_url):
        r = client.get(path, headers={"Origin": OTHER})
        assert r.headers["access-control-allow-origin"] == "*"
        assert r.headers["cross-origin-resource-policy"] == "cross-origin"
    assert client.get(tile_url).headers["cross-origin-resource-policy"] == "cross-origin"  # no Origin either
    r = client.options(tile_url, headers={"Origin": OTHER, "Access-Control-Request-Method": "GET"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "*"


def test_hosts_still_checked(small_sample, chips_dir, tile_url):
    client = make_client(small_sample, chips_dir, "*")
    r = client.get(tile_url, headers={"Host": "attacker.example", "Origin": OTHER})
    assert r.status_code == 400


def test_env_factory_passes_cors(small_sample, chips_dir, tile_url, monkeypatch):
    monkeypatch.setenv("IMAGESIM_SERVE_ARD", str(small_sample.root))
    monkeypatch.setenv("IMAGESIM_SERVE_CHIPS", str(chips_dir))
    monkeypatch.setenv("IMAGESIM_SERVE_INDEX", "")
    monkeypatch.setenv("IMAGESIM_SERVE_CORS", NOTEBOOK)
    client = TestClient(app_from_env(), base_url="http://127.0.0.1")
    r = client.get(tile_url, headers={"Origin": NOTEBOOK})
    assert r.headers["access-control-allow-origin"] == NOTEBOOK


def test_parse_cors_origins():
    assert parse_cors_origins(None) == ()
    assert parse_cors_origins("") == ()
    assert parse_cors_origins("HTTP://LocalHost:8888/, https://a.example:443,http://[::1]:80") == (
        "http://localhost:8888",
        "https://a.example",
        "http://[::1]",
    )
    assert parse_cors_origins(["http://a.example", "*"]) == ("*",)


@pytest.mark.parametrize(
    "bad",
    ["localhost:8888", "ftp://a.example", "http://a.example/path", "http://a.example:99999", "http://", "http://a b", "http://u@a.example"],
)
def test_invalid_origin_is_named(bad):
    with pytest.raises(InvalidArgumentError, match="`cors_origins`") as exc:
        parse_cors_origins(f"http://ok.example,{bad}")
    assert repr(bad.strip()) in str(exc.value)


def test_cli_rejects_a_bad_origin(cli, small_sample, chips_dir):
    res = cli("serve", "--ard-path", small_sample.root, "--chips", chips_dir, "--cors", "http://localhost:8888,localhost:9999/x")
    assert res.returncode == 1
    assert "--cors" in res.stderr and "'localhost:9999/x'" in res.stderr
    assert "Traceback" not in res.stderr


# --- a real browser: a page on a second origin fetches a tile ---

PAGE = """<!doctype html><html><body><canvas id="c"></canvas><img id="plain">
<script>
window.result = null; window.plain = null;
const tile = new URLSearchParams(location.search).get('tile');
fetch(tile, {mode: 'cors'})
  .then(r => { if (!r.ok) throw new Error('status ' + r.status); return r.blob(); })
  .then(b => createImageBitmap(b))
  .then(bmp => {
    const c = document.getElementById('c'); c.width = bmp.width; c.height = bmp.height;
    const ctx = c.getContext('2d'); ctx.drawImage(bmp, 0, 0);
    const px = ctx.getImageData(0, 0, c.width, c.height).data;
    let alpha = 0; for (let i = 3; i < px.length; i += 4) alpha += px[i];
    window.result = {ok: true, width: bmp.width, height: bmp.height, alpha: alpha};
  })
  .catch(e => { window.result = {ok: false, error: String(e)}; });
const img = document.getElementById('plain');
img.onload = () => { window.plain = {ok: true, width: img.naturalWidth}; };
img.onerror = () => { window.plain = {ok: false}; };
img.src = tile + '&img=1';
</script></body></html>"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_browser() -> tuple[str, str] | None:
    """As tests/search/test_serve.py finds it."""
    for browser in ("chromium", "chromium-browser", "google-chrome"):
        exe = shutil.which(browser)
        driver = shutil.which("chromedriver")
        if exe and driver:
            return exe, driver
    return None


def _start(server_run, started) -> threading.Thread:
    thread = threading.Thread(target=server_run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not started():
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError("server did not start")
        time.sleep(0.05)
    return thread


@pytest.fixture(scope="module")
def page_origin():
    """A second origin: 127.0.0.1 on another port, serving PAGE at /."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = PAGE.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def viewers(small_sample, chips_dir, page_origin):
    """Two viewers on loopback: one allowing the page's origin, one with the default (strict) policy."""
    import uvicorn

    bases, servers = {}, []
    for name, cors in (("allowed", page_origin), ("strict", None)):
        app = create_app(small_sample.root, chips_dir, None, cors_origins=cors)
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        servers.append((server, _start(server.run, lambda s=server: s.started)))
        bases[name] = f"http://127.0.0.1:{port}"
    yield bases
    for server, thread in servers:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser():
    found = find_browser()
    if found is None:
        pytest.skip("chromium and chromedriver are not installed (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver")
    exe, driver_path = found
    opts = webdriver.ChromeOptions()
    opts.binary_location = exe
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--no-first-run", "--disable-extensions"):
        opts.add_argument(arg)
    opts.add_argument("--proxy-server=direct://")
    opts.add_argument("--proxy-bypass-list=*")
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=driver_path), options=opts)
    yield driver
    driver.quit()


def _load(browser, page_origin, tile: str) -> tuple[dict, dict]:
    from urllib.parse import quote

    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(f"{page_origin}/?tile={quote(tile, safe='')}")
    wait = WebDriverWait(browser, 20)
    wait.until(lambda d: d.execute_script("return window.result !== null && window.plain !== null"))
    return browser.execute_script("return window.result"), browser.execute_script("return window.plain")


def test_browser_other_origin_reads_tiles_when_allowed(browser, viewers, page_origin, tile_url):
    result, plain = _load(browser, page_origin, f"{viewers['allowed']}{tile_url}?t=allowed")
    assert result["ok"], result
    assert (result["width"], result["height"]) == (256, 256)
    assert result["alpha"] > 0  # canvas pixels readable (not tainted) and the tile has imagery
    assert plain == {"ok": True, "width": 256}  # a plain <img> (no CORS) passes CORP too


def test_browser_other_origin_blocked_by_default(browser, viewers, page_origin, tile_url):
    result, plain = _load(browser, page_origin, f"{viewers['strict']}{tile_url}?t=strict")
    assert not result["ok"], result  # fetch rejects: no Access-Control-Allow-Origin
    assert plain == {"ok": False}  # CORP same-origin blocks the <img>
