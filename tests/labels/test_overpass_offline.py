"""`imagesim osm fetch` without a reachable server: permanent failures (a name that does not resolve, a
refused port) fail the cell at once and stop the run; transient ones (503, a connection hung up) are
retried, within `--max-wait` seconds per cell. A local HTTP server plays Overpass (the approach of
test_osm.py); the clock is fake, so nothing really waits."""

from __future__ import annotations

import json
import random
import socket
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from imagesim.errors import OverpassError, OverpassUnreachableError
from imagesim.labels.cells import Cell, cell_bbox
from imagesim.labels.overpass import OverpassClient, OverpassSettings, fetch_cells

CELLS = [Cell(10, "120020223032"), Cell(10, "120020223033"), Cell(10, "120020223030")]


def _answer(cell: Cell) -> bytes:
    """A small, valid Overpass `out geom` answer: one tagged node in the middle of ``cell``."""
    b = cell_bbox(cell)
    node = {"type": "node", "id": 1, "lat": (b.south + b.north) / 2, "lon": (b.west + b.east) / 2, "tags": {"amenity": "cafe"}}
    return json.dumps({"version": 0.6, "elements": [node]}).encode()


class FakeClock:
    """``sleep`` records the wait and moves ``time`` on by it: `max_wait` is measured on this clock."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def time(self) -> float:
        return self.now


def _client(endpoint: str, clock: FakeClock, **kw) -> OverpassClient:
    settings = OverpassSettings(
        **{"endpoint": endpoint, "timeout": 25, "http_timeout": 5.0, "backoff_base": 2.0, "backoff_max": 60.0, **kw}
    )
    return OverpassClient(settings, sleep=clock.sleep, clock=clock.time, rng=random.Random(1))


# --------------------------------------------------------------------------------------------
# A local Overpass: interpreter answers in sequence (status, body, mode), /api/status always free
# --------------------------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.script: deque = deque()
        self.default: tuple[int, bytes, str] | None = None  # answer once the script is spent
        self.posts = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/api/interpreter"

    def handle_error(self, request, client_address) -> None:  # a client that gave up: expected
        pass


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        body = b"Rate limit: 2\n2 slots available now.\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        srv: _Server = self.server  # type: ignore[assignment]
        self.rfile.read(int(self.headers["Content-Length"]))
        srv.posts += 1
        code, body, mode = srv.script.popleft() if srv.script else srv.default
        if mode == "hangup":  # close the connection without an answer
            self.close_connection = True
            return
        self.send_response(code)
        if mode.startswith("retry-after="):
            self.send_header("Retry-After", mode.split("=", 1)[1])
        self.send_header("Content-Type", "application/json" if code == 200 else "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture()
def overpass():
    srv = _Server()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture()
def refused_endpoint() -> str:
    """An endpoint on a local port nothing listens on: bound, then closed."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}/api/interpreter"


@pytest.fixture()
def no_dns(monkeypatch) -> list[str]:
    """An injected resolver: names under .invalid (RFC 6761: they never resolve) fail at once, as a
    resolver answers them, so the test never waits on a real DNS server. Returns the names asked."""
    asked: list[str] = []
    real = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        if isinstance(host, str) and host.endswith(".invalid"):
            asked.append(host)
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return asked


# --------------------------------------------------------------------------------------------
# Permanent: fail the cell at once, stop the run
# --------------------------------------------------------------------------------------------


def test_unresolvable_host_fails_at_once_and_stops_the_run(tmp_path, no_dns):
    clock = FakeClock()
    client = _client("http://overpass.invalid/api/interpreter", clock)
    t0 = time.perf_counter()
    summary = fetch_cells(CELLS, tmp_path, client)
    assert time.perf_counter() - t0 < 5
    assert no_dns and set(no_dns) == {"overpass.invalid"}  # the injected resolver answered
    assert clock.sleeps == [] and summary.requests == 1  # no retry, no backoff
    [(cell, message)] = summary.failed
    assert cell == CELLS[0] and "overpass.invalid does not resolve" in message and "Name or service not known" in message
    assert summary.not_tried == CELLS[1:] and summary.done == []
    assert "cannot be reached" in summary.stopped and "imagesim osm import EXTRACT.osm.pbf" in summary.stopped
    assert "3 failed" not in summary.line() and "1 failed, 2 not tried" in summary.line()
    assert not any(c.folder(tmp_path).exists() for c in CELLS)


def test_unresolvable_host_is_an_unreachable_error(no_dns):
    client = _client("http://overpass.invalid/api/interpreter", FakeClock())
    with pytest.raises(OverpassUnreachableError, match=r"cannot reach the Overpass server: the name overpass\.invalid does not resolve"):
        client.query("[out:json];node(1);out;")


def test_refused_port_fails_at_once_and_stops_the_run(tmp_path, refused_endpoint):
    clock = FakeClock()
    summary = fetch_cells(CELLS[:2], tmp_path, _client(refused_endpoint, clock))
    assert clock.sleeps == [] and summary.requests == 1
    [(cell, message)] = summary.failed
    assert cell == CELLS[0] and "connection refused (127.0.0.1)" in message
    assert summary.not_tried == CELLS[1:2] and "imagesim osm import" in summary.stopped


def test_cells_already_fetched_are_still_skipped_after_a_stop(tmp_path, overpass, refused_endpoint):
    overpass.script.append((200, _answer(CELLS[2]), ""))
    fetch_cells(CELLS[2:], tmp_path, _client(overpass.endpoint, FakeClock()))
    summary = fetch_cells(CELLS, tmp_path, _client(refused_endpoint, FakeClock()))
    assert [c for c, _ in summary.failed] == CELLS[:1] and summary.not_tried == CELLS[1:2] and summary.skipped == CELLS[2:]


# --------------------------------------------------------------------------------------------
# Transient: retried, within max_wait
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", [(503, b"<p><strong>Error</strong>: busy</p>", ""), (200, b"", "hangup")], ids=["503", "hangup"])
def test_transient_failure_then_success_is_retried(tmp_path, overpass, fault):
    overpass.script.extend([fault, (200, _answer(CELLS[0]), "")])
    clock = FakeClock()
    summary = fetch_cells(CELLS[:1], tmp_path, _client(overpass.endpoint, clock))
    assert summary.done == CELLS[:1] and not summary.failed and not summary.stopped
    assert summary.requests == 2 and len(clock.sleeps) == 1 and 1.0 <= clock.sleeps[0] <= 2.0
    assert json.loads(CELLS[0].osm_path(tmp_path).read_text())["nodes"][0]["tags"] == {"amenity": "cafe"}


def test_max_wait_cuts_a_run_of_transient_failures_short(tmp_path, overpass):
    overpass.default = (503, b"busy", "")
    clock = FakeClock()
    summary = fetch_cells(CELLS[:2], tmp_path, _client(overpass.endpoint, clock, max_retries=50, max_wait=20))
    # Both cells fail, each after at most 20 s of (fake) waiting, long before 50 retries; the run goes on.
    assert [c for c, _ in summary.failed] == CELLS[:2] and not summary.stopped and not summary.not_tried
    assert summary.requests < 12 and sum(clock.sleeps) <= 40
    message = summary.failed[0][1]
    assert "gave up after" in message and "`max_wait` 20 s per cell" in message and "last: HTTP 503" in message


def test_a_retry_after_beyond_max_wait_gives_up_at_once(overpass):
    overpass.default = (429, b"rate limited", "retry-after=3600")
    clock = FakeClock()
    with pytest.raises(OverpassError, match=r"gave up after 1 attempts .*next retry was due in 600 s"):
        _client(overpass.endpoint, clock, max_wait=300, backoff_max=600).query("[out:json];node(1);out;")
    assert clock.sleeps == [] and overpass.posts == 1


def test_max_wait_is_checked():
    with pytest.raises(ValueError, match=r"`max_wait` 0: seconds per cell must be at least 1"):
        OverpassSettings(max_wait=0)


# --------------------------------------------------------------------------------------------
# The command line
# --------------------------------------------------------------------------------------------


def _cell_folders(root, cells) -> None:
    for cell in cells:
        cell.folder(root).mkdir(parents=True)


def test_cli_refused_endpoint_fails_fast_with_the_offline_hint(tmp_path, cli, refused_endpoint):
    _cell_folders(tmp_path, CELLS)
    t0 = time.perf_counter()
    res = cli("osm", "fetch", "--ard-path", tmp_path, "--endpoint", refused_endpoint)
    assert time.perf_counter() - t0 < 60
    assert res.returncode == 1, res.stderr
    assert "connection refused (127.0.0.1): is the server running, and --endpoint right?" in res.stderr
    assert "2 cells were not tried" in res.stderr and "imagesim osm import EXTRACT.osm.pbf" in res.stderr
    assert "1 failed, 2 not tried" in res.stdout
    assert "retry" not in res.stderr


def test_cli_max_wait(tmp_path, cli, overpass):
    overpass.default = (503, b"busy", "")
    _cell_folders(tmp_path, CELLS[:1])
    res = cli("osm", "fetch", "--ard-path", tmp_path, "--endpoint", overpass.endpoint, "--no-status", "--max-wait", "1")
    assert res.returncode == 1, res.stderr
    # The first retry (2.5-5 s away) would end past 1 s: the cell fails after one request.
    assert overpass.posts == 1
    assert "gave up after 1 attempts" in res.stderr and "--max-wait 1 s per cell" in res.stderr, res.stderr
    assert "0 cells written, 0 skipped (already fetched), 1 failed" in res.stdout
    res = cli("osm", "fetch", "--ard-path", tmp_path, "--endpoint", overpass.endpoint, "--max-wait", "0")
    assert res.returncode != 0 and "--max-wait 0.0: seconds per cell must be at least 1" in res.stderr
    assert overpass.posts == 1  # the server was not asked again
