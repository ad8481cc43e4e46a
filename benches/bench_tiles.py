"""Tile-server throughput: `imagesim serve` under wrk on loopback, against ≥ 200 tiles/s with p99 < 100 ms.

The server runs as ``uvicorn imagesim.search.serve.app:app_from_env --factory`` (what
``imagesim serve --workers N`` runs) on 127.0.0.1; wrk (Debian package ``wrk``) drives it for a
bounded time with a Lua script that rotates over tile URLs, each wrk thread starting at a different
offset. The URLs are every tile of one zoom (default 17, where ARD overview level 1 is read) that
is at least half imagery, found by rendering each once in-process beforehand.

Scenarios (each after a warm-up pass over every URL):

- ``headers``: COG headers cached, no decoded-block cache (``--block-cache-mb 0``): every tile
  decodes its JPEG blocks — the case the target names;
- ``blocks``: the default 256 MiB decoded-block cache as well, over a working set that fits it
  (the first ``--hot-tiles`` URLs, a few screens of one area: a user panning over recently seen
  imagery), which mostly measures resampling + JPEG encoding + HTTP.

Also prints the in-process render cost per tile, one thread, against a naive baseline: GDAL
``gdal.Warp`` to a MEM dataset per tile (file opened per tile, overviews picked by GDAL, bilinear),
then the same JPEG encoding.

    python benches/bench_tiles.py [--ard-path demo-out/sample/ard] [--zoom 17] [--duration 10]
                                  [--threads 2] [--connections 16] [--workers 1,2] [--no-baseline]
"""

from __future__ import annotations

import argparse
import io
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

TARGET_TPS = 200.0
TARGET_P99_MS = 100.0
REPO = Path(__file__).resolve().parents[1]

LUA = r"""
local paths = {}
for line in io.lines(os.getenv("IMAGESIM_TILES_FILE")) do paths[#paths + 1] = line end
local counter = 0
function setup(thread)
  thread:set("offset", counter)
  counter = counter + 1
end
local i = 0
function init(args)
  i = math.floor((offset or 0) * #paths / 7)
end
function request()
  i = i + 1
  return wrk.format("GET", paths[(i % #paths) + 1])
end
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tile_urls(ard: Path, zoom: int, limit: int) -> list[str]:
    import mercantile

    from imagesim.search.serve.tiles import Catalog, TileRenderer

    catalog = Catalog(ard)
    renderer = TileRenderer(catalog, block_cache_mb=0)
    w, s, e, n = catalog.bounds
    urls = []
    for t in mercantile.tiles(w, s, e, n, [zoom]):
        arrays = renderer.render_array(t.z, t.x, t.y)
        if arrays is None:
            continue
        rgb, filled = arrays
        if filled is None or filled.mean() >= 0.5:
            urls.append(f"/tiles/{t.z}/{t.x}/{t.y}.jpg")
        if len(urls) >= limit:
            break
    return urls


def start_server(ard: Path, workers: int, block_cache_mb: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    chips = Path(tempfile.mkdtemp(prefix="bench-tiles-chips-"))
    env = dict(
        os.environ,
        IMAGESIM_SERVE_ARD=str(ard),
        IMAGESIM_SERVE_CHIPS=str(chips),
        IMAGESIM_SERVE_INDEX="",
        IMAGESIM_SERVE_BLOCK_CACHE_MB=str(block_cache_mb),
        IMAGESIM_SERVE_HOST="127.0.0.1",
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "imagesim.search.serve.app:app_from_env",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--log-level",
            "warning",
            "--no-server-header",
            "--no-access-log",
        ],
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            with urllib.request.urlopen(base + "/tilejson.json", timeout=2):
                break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                raise SystemExit("the server did not start") from None
            time.sleep(0.2)
    return proc, base


def warm(base: str, urls: list[str], threads: int = 4) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def get(u: str) -> None:
        with urllib.request.urlopen(base + u, timeout=30) as r:
            r.read()

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(get, urls))


def parse_ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    if not m:
        return float("nan")
    v, unit = float(m.group(1)), m.group(2)
    return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v


def run_wrk(base: str, tiles_file: Path, lua: Path, threads: int, connections: int, duration: int) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency", "--timeout", "10s", "-s", str(lua), base],
        env=dict(os.environ, IMAGESIM_TILES_FILE=str(tiles_file)),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = dict(re.findall(r"^\s+(50|75|90|99)%\s+(\S+)", out, re.M))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: (.*)", out)
    return {
        "tps": rps,
        "p50": parse_ms(lat.get("50", "")),
        "p90": parse_ms(lat.get("90", "")),
        "p99": parse_ms(lat.get("99", "")),
        "non2xx": int(errors.group(1)) if errors else 0,
        "socket_errors": sock.group(1) if sock else "none",
    }


def render_cost(ard: Path, urls: list[str], n: int, baseline: bool) -> None:
    """In-process, one thread: ms per tile for imagesim's renderer and for gdal.Warp per tile."""
    import mercantile
    from PIL import Image

    from imagesim.search.serve.tiles import Catalog, TileRenderer

    picks = urls[:: max(1, len(urls) // n)][:n]
    tiles = [tuple(int(v) for v in u.removeprefix("/tiles/").removesuffix(".jpg").split("/")) for u in picks]
    catalog = Catalog(ard)
    renderer = TileRenderer(catalog, block_cache_mb=0)
    for z, x, y in tiles[:3]:
        renderer.render(z, x, y)
    t0 = time.perf_counter()
    for z, x, y in tiles:
        renderer.render(z, x, y)
    ours = (time.perf_counter() - t0) / len(tiles) * 1000
    print(f"\nin-process render, 1 thread, {len(tiles)} tiles at z{tiles[0][0]} (headers cached, no block cache): {ours:.2f} ms/tile")
    if not baseline:
        return
    try:
        from osgeo import gdal
    except ImportError:
        print("baseline skipped: GDAL Python bindings not installed")
        return
    gdal.UseExceptions()
    t0 = time.perf_counter()
    for z, x, y in tiles:
        b = mercantile.xy_bounds(x, y, z)
        lon, lat = mercantile.lnglat((b.left + b.right) / 2, (b.bottom + b.top) / 2)
        # the newest acquisition whose cell holds the tile centre (a naive server's choice)
        src = next(
            s
            for cell in catalog.cells_for((b.left, b.bottom, b.right, b.top), None)
            for s in cell
            if s.lonlat[0] <= lon <= s.lonlat[2] and s.lonlat[1] <= lat <= s.lonlat[3]
        )
        ds = gdal.Warp(
            "",
            str(src.acquisition.visual),
            format="MEM",
            dstSRS="EPSG:3857",
            outputBounds=(b.left, b.bottom, b.right, b.top),
            width=256,
            height=256,
            resampleAlg="bilinear",
        )
        arr = ds.ReadAsArray().transpose(1, 2, 0)
        buf = io.BytesIO()
        Image.fromarray(arr[:, :, :3], "RGB").save(buf, "JPEG", quality=85)
        ds = None
    warp = (time.perf_counter() - t0) / len(tiles) * 1000
    print(f"baseline gdal.Warp to MEM per tile (open per tile), same tiles: {warp:.2f} ms/tile → imagesim is {warp / ours:.1f}× faster")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--ard-path",
        type=Path,
        default=REPO / "demo-out" / "sample" / "ard",
        help="ARD delivery (default: the demo's; written to a temporary folder when absent)",
    )
    ap.add_argument("--zoom", type=int, default=17)
    ap.add_argument("--max-tiles", type=int, default=400, help="tile URLs to rotate over")
    ap.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--workers", default="1,2", help="server processes to measure, comma-separated")
    ap.add_argument("--scenarios", default="headers,blocks")
    ap.add_argument("--hot-tiles", type=int, default=96, help="URLs of the blocks scenario")
    ap.add_argument("--no-baseline", action="store_true")
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found: apt-get install wrk")

    ard = args.ard_path
    if not ard.is_dir():
        from imagesim.imagery.sample import write_sample

        dest = Path(tempfile.mkdtemp(prefix="bench-tiles-"))
        print(f"{ard} not found: writing the sample delivery to {dest} …", flush=True)
        ard = write_sample(dest, seed=0).root
    urls = tile_urls(ard, args.zoom, args.max_tiles)
    if not urls:
        raise SystemExit(f"no tile at zoom {args.zoom} has imagery")
    work = Path(tempfile.mkdtemp(prefix="bench-tiles-"))
    files = {"headers": work / "tiles.txt", "blocks": work / "hot-tiles.txt"}
    files["headers"].write_text("\n".join(urls) + "\n")
    files["blocks"].write_text("\n".join(urls[: args.hot_tiles]) + "\n")
    lua = work / "rotate.lua"
    lua.write_text(LUA)
    print(
        f"{len(urls)} tile URLs at z{args.zoom} over {ard} ({min(args.hot_tiles, len(urls))} for the blocks scenario); wrk -t{args.threads} -c{args.connections} -d{args.duration}s on loopback; "
        f"{os.cpu_count()} CPUs, load average before: {os.getloadavg()[0]:.2f}"
    )
    print(f"target: ≥ {TARGET_TPS:.0f} tiles/s with p99 < {TARGET_P99_MS:.0f} ms\n")
    print(f"{'scenario':<34} {'tiles/s':>9} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8}  {'non-2xx':>7}  target")
    for scenario in args.scenarios.split(","):
        cache_mb = 0 if scenario == "headers" else 256
        for workers in (int(w) for w in args.workers.split(",")):
            proc, base = start_server(ard, workers, cache_mb)
            try:
                warm(base, urls if scenario == "headers" else urls[: args.hot_tiles])
                r = run_wrk(base, files[scenario], lua, args.threads, args.connections, args.duration)
            finally:
                proc.terminate()
                proc.wait(timeout=30)
            ok = r["tps"] >= TARGET_TPS and r["p99"] < TARGET_P99_MS
            name = f"{scenario} cache, {workers} worker{'s' if workers > 1 else ''}"
            print(
                f"{name:<34} {r['tps']:>9.1f} {r['p50']:>8.1f} {r['p90']:>8.1f} {r['p99']:>8.1f}  {r['non2xx']:>7}  "
                f"{'met' if ok else 'MISSED'} ({r['tps'] / TARGET_TPS:.2f}× the rate)",
                flush=True,
            )
    render_cost(ard, urls, 60, not args.no_baseline)


if __name__ == "__main__":
    main()
