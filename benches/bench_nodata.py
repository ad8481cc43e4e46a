"""No-data benchmark: `imagesim nodata-index --source pixels` against a plain RGB decode of the same chips.

In one invocation, on the same chips, best of ``--repeat`` interleaved rounds:

(a) imagesim's no-data scan: the whole ``nodata-index --source pixels`` command in process (listing,
    the Rust scan, the index, parquet and summary) and the Rust scan alone;
(b) the bound: a plain libjpeg-turbo RGB decode of every chip (simplejpeg; the file read and decode in
    ``--proc`` warm worker processes, each decoding its share), what any exact full-pixel rule would
    seem to need;
(c) the original corner rule (rasterio), as before.

Goal: (a) >= 1.10 x (b). Two chip sets: the 1,024 z17 chips of the full-size sample COG with the most
imagery (mostly textured chips, the common case), and the partial chips along the strip edges of all
the sample's COGs (every chip has no-data pixels: the slow path, luma then YUV planes).

    python benches/bench_nodata.py [--proc 2] [--out bench-out] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from multiprocessing import Pool
from multiprocessing.pool import Pool as PoolType
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_chip import REPO, ensure_cog  # noqa: E402

GOAL = 1.10


def _decode_share(paths: list[str]) -> int:
    """One worker's share of the plain decode: read and decode each file to RGB."""
    import simplejpeg

    pixels = 0
    for p in paths:
        with open(p, "rb") as f:
            pixels += simplejpeg.decode_jpeg(f.read(), colorspace="RGB").shape[0]
    return pixels


def _plain_decode(pool: PoolType, paths: list[str], proc: int) -> float:
    shares = [paths[i::proc] for i in range(proc)]
    start = time.perf_counter()
    pool.map(_decode_share, shares, chunksize=1)
    return time.perf_counter() - start


def _chip_all(cogs: list[Path], out: Path, proc: int) -> Path:
    from imagesim.imagery.chip import ChipSettings, run_chip

    chip_dir = out / "nodata-chips-all"
    if not any(chip_dir.rglob("*.jpg")):
        root = cogs[0].parents[3]
        run_chip(root, chip_dir, ChipSettings(zoom=17, proc=proc), catalog_ids=[c.name[: -len("-visual.tif")] for c in cogs])
    return chip_dir


def _edge_set(all_dir: Path, out: Path) -> Path:
    """A folder of hard links to every partial chip (by the chip manifest) of all the sample's COGs."""
    import polars as pl

    from imagesim.artefacts import CHIPS_MANIFEST

    edge = out / "nodata-chips-edges"
    if not any(edge.glob("*.jpg")):
        edge.mkdir(parents=True, exist_ok=True)
        manifest = pl.read_parquet(all_dir / CHIPS_MANIFEST)
        names = set(manifest.filter(pl.col("nodata_class") == "partial_data")["chip"].to_list())
        for p in all_dir.rglob("*.jpg"):
            if p.name in names:
                os.link(p, edge / p.name)
    return edge


def measure(chip_dir: Path, label: str, proc: int, repeat: int, out: Path, pool: PoolType) -> dict:
    from imagesim import _imagesim as rs
    from imagesim.imagery.nodata import NodataSettings, run_nodata_index

    jpegs = sorted(str(p) for p in chip_dir.rglob("*.jpg"))
    for p in jpegs:
        Path(p).read_bytes()  # same warm page cache for everyone
    settings = NodataSettings(source="pixels", proc=proc, filename=str(out / f"nodata-bench-{label}.json"))
    best = {"command": float("inf"), "scan": float("inf"), "plain": float("inf")}
    summary = None
    # Interleaved rounds: a busy neighbour on a shared machine slows every contender alike.
    for _ in range(repeat):
        start = time.perf_counter()
        summary = run_nodata_index(chip_dir, settings)
        best["command"] = min(best["command"], time.perf_counter() - start)
        start = time.perf_counter()
        rs.scan_jpeg_files(jpegs, threshold=settings.nodata_threshold, threads=proc)
        best["scan"] = min(best["scan"], time.perf_counter() - start)
        best["plain"] = min(best["plain"], _plain_decode(pool, jpegs, proc))
    rates = {k: len(jpegs) / v for k, v in best.items()}
    assert summary is not None
    return {"label": label, "chips": len(jpegs), "rates": rates, "classes": summary.counts}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--proc", type=int, default=2)
    ap.add_argument("--out", type=Path, default=REPO / "bench-out")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--no-original", action="store_true", help="skip the (slow) original corner rule")
    args = ap.parse_args()
    from imagesim.imagery.chip import ChipSettings, run_chip

    try:
        import simplejpeg  # noqa: F401
    except ImportError:
        sys.exit("the plain-decode bound needs simplejpeg: pip install -e '.[bench]'")

    cog = ensure_cog(args.out)
    catalog_id = cog.name[: -len("-visual.tif")]
    chip_dir = args.out / "nodata-chips"
    run_chip(cog.parents[3], chip_dir, ChipSettings(zoom=17, proc=args.proc), catalog_ids=[catalog_id])
    cogs = sorted(cog.parents[3].glob("*/*/*/*-visual.tif"))
    edge_dir = _edge_set(_chip_all(cogs, args.out, args.proc), args.out)

    with Pool(args.proc) as pool:
        pool.map(_decode_share, [[] for _ in range(args.proc)])  # workers up, simplejpeg imported
        results = [
            measure(chip_dir, "textured", args.proc, args.repeat, args.out, pool),
            measure(edge_dir, "edges", args.proc, max(args.repeat, 5), args.out, pool),
        ]
    base = None
    if not args.no_original:
        cmd = [sys.executable, str(REPO / "benches" / "baseline_corner_rule.py"), str(chip_dir), "--proc", str(args.proc)]
        res = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
        base = res["chips"] / res["seconds"]

    print(f"\n{args.proc} worker(s) each; chips/s, best of {args.repeat} interleaved rounds")
    print(f"{'chip set':44} {'chips':>6} {'(a) command':>12} {'(a) scan':>10} {'(b) plain RGB':>14} {'(a)/(b)':>8}  goal")
    for r in results:
        rt = r["rates"]
        ratio = rt["command"] / rt["plain"]
        name = f"{r['label']} {r['classes']}"
        print(
            f"{name:44.44} {r['chips']:6d} {rt['command']:12.0f} {rt['scan']:10.0f} {rt['plain']:14.0f} {ratio:8.2f}  "
            f">= {GOAL:.2f} [{'met' if ratio >= GOAL else 'MISSED'}]"
        )
    if base is not None:
        print(f"(c) original corner rule (rasterio, {args.proc} proc) on the textured set: {base:.0f} chips/s")
    (args.out / "bench_nodata.json").write_text(
        json.dumps({"proc": args.proc, "goal": GOAL, "sets": results, "original_corner_rule": base}, indent=2)
    )


if __name__ == "__main__":
    main()
