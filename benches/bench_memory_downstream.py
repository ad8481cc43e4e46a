"""Peak memory of the stages after chipping, against the number of chips (issue 22, "memory flat in the
number of chips"): `imagesim labels build`, `encode`, `stac` and `change` (embedding and pixel methods).

For each size N it builds a delivery of N hard-linked copies of one full-size sample COG (and its masks and
metadata) in one level-12 cell, each a distinct acquisition (date, catalog id), so no disk is used for the
imagery; chips it with `imagesim chip --passthrough --no-measure` (1,024 z17 chips per COG), then runs each
stage as an `imagesim` subprocess and records its peak RSS (``ru_maxrss`` of the child, from ``os.wait4``).
The goal: the largest size within +50 MB of the smallest, per stage.

The model is a resnet18 at 64 px trained for one epoch on the sample's own chips and labels (made once, kept
in WORK/model).

    python benches/bench_memory_downstream.py --work /tmp/bench-mem --sizes 10 100
    python benches/bench_memory_downstream.py --work /tmp/bench-mem --sizes 10 50 --stages encode change-embedding

Needs the `train`, `encode` and `stac` extras. WORK keeps the sample delivery and the model between runs;
each size's delivery and chips folder is removed after its stages ran (``--keep`` keeps them).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

GOAL_MB = 50.0
STAGES = ("labels", "encode", "stac", "change-embedding", "change-pixel")
CELL = "120020223032"
BASE_DATE = "2023-06-14"
BASE_ID = "104001008A3C21F0"


def run(args: list[str | Path], *, check: bool = True) -> tuple[int, float, float]:
    """Run a command, return (exit code, its peak RSS in MB, seconds); its output is shown only on failure."""
    cmd = [str(a) for a in args]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)  # the child's own rusage: ru_maxrss is its peak RSS
    code = os.waitstatus_to_exitcode(status)
    proc.returncode = code
    seconds = time.perf_counter() - t0
    if check and code != 0:
        sys.stderr.write(err.decode(errors="replace")[-4000:])
        raise SystemExit(f"failed ({code}): {' '.join(cmd)}")
    return code, usage.ru_maxrss / 1024.0, seconds  # ru_maxrss: KiB on Linux


def imagesim(*args: str | Path) -> list[str | Path]:
    exe = Path(sys.executable).with_name("imagesim")
    return [exe if exe.is_file() else "imagesim", *args]


def prepare_sample(work: Path) -> Path:
    """The full-size sample delivery with the OSM data of its cells imported (made once)."""
    sample = work / "sample"
    osm = sample / "ard" / "10" / CELL / "osm_data.json"
    if not (sample / "sample.osm.pbf").is_file():
        run(imagesim("sample-data", sample, "--overwrite"))
    if not osm.is_file():
        run(imagesim("osm", "import", sample / "sample.osm.pbf", "--ard-path", sample / "ard"))
    return sample


def prepare_model(work: Path, sample: Path) -> Path:
    """A resnet18 at 64 px, one epoch on the sample's chips, exported to ONNX (made once)."""
    onnx = work / "model" / "model.onnx"
    if onnx.is_file():
        return onnx
    chips = work / "model" / "chips"
    run(imagesim("chip", "--ard-path", sample / "ard", "--dest", chips))
    run(imagesim("labels", "build", "--ard-path", sample / "ard", "--chips", chips, "--overwrite"))
    run_dir = work / "model" / "run"
    run(
        imagesim("train", "--chips", chips, "--out", run_dir, "--backbone", "resnet18", "--chip-size", "64", "--epochs", "1", "--overwrite")
    )
    run(imagesim("export", "--model", run_dir / "model.pt", "--out", onnx, "--overwrite"))
    shutil.rmtree(chips)
    return onnx


def make_delivery(sample: Path, root: Path, n: int) -> None:
    """``n`` acquisitions of one cell, every file a hard link of the sample's BASE_ID acquisition."""
    src = sample / "ard" / "10" / CELL / BASE_DATE
    cell = root / "10" / CELL
    cell.mkdir(parents=True, exist_ok=True)
    os.link(sample / "ard" / "10" / CELL / "osm_data.json", cell / "osm_data.json")
    start = dt.date.fromisoformat(BASE_DATE)
    for i in range(n):
        folder = cell / (start + dt.timedelta(days=7 * i)).isoformat()
        folder.mkdir()
        catalog_id = f"10400100{i:08X}"
        for f in src.iterdir():
            os.link(f, folder / f.name.replace(BASE_ID, catalog_id))


def stage_commands(root: Path, chips: Path, onnx: Path) -> dict[str, list[str | Path]]:
    emb = chips / "embeddings.parquet"
    return {
        "labels": imagesim("labels", "build", "--ard-path", root, "--chips", chips, "--include", "unmeasured", "--overwrite"),
        "encode": imagesim("encode", "--onnx", onnx, "--chips", chips, "--overwrite"),
        "stac": imagesim("stac", "--chips", chips, "--out", chips.parent / "stac", "--overwrite"),
        "change-embedding": imagesim(
            "change", "--chips", chips, "--method", "embedding", "--embeddings", emb, "--out", chips / "changes-emb.parquet", "--overwrite"
        ),
        "change-pixel": imagesim("change", "--chips", chips, "--method", "pixel", "--out", chips / "changes-pix.parquet", "--overwrite"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/imagesim-bench-memory-downstream"))
    ap.add_argument("--sizes", type=int, nargs="+", default=[10, 100], help="COGs per delivery (1,024 chips each)")
    ap.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    ap.add_argument("--keep", action="store_true", help="keep each size's delivery and chips")
    a = ap.parse_args()
    work = a.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    sample = prepare_sample(work)
    onnx = prepare_model(work, sample) if {"encode", "change-embedding"} & set(a.stages) else Path()
    peaks: dict[str, dict[int, float]] = {s: {} for s in a.stages}
    for n in a.sizes:
        base = work / f"n{n}"
        shutil.rmtree(base, ignore_errors=True)
        root, chips = base / "ard", base / "chips"
        make_delivery(sample, root, n)
        _, rss, secs = run(imagesim("chip", "--ard-path", root, "--dest", chips, "--passthrough", "--no-measure"))
        print(f"{n:>4} COGs  chip (setup)        {rss:8.1f} MB  {secs:7.1f} s", flush=True)
        cmds = stage_commands(root, chips, onnx)
        # change-embedding reads encode's output
        for stage in a.stages:
            if stage == "change-embedding" and not (chips / "embeddings.parquet").is_file():
                run(cmds["encode"])
            _, rss, secs = run(cmds[stage])
            peaks[stage][n] = rss
            print(f"{n:>4} COGs  {stage:<19} {rss:8.1f} MB  {secs:7.1f} s", flush=True)
        if not a.keep:
            shutil.rmtree(base, ignore_errors=True)
    lo, hi = min(a.sizes), max(a.sizes)
    print(f"\npeak RSS, MB ({lo} → {hi} COGs; goal: within +{GOAL_MB:.0f} MB)")
    for stage, by_n in peaks.items():
        if lo in by_n and hi in by_n:
            diff = by_n[hi] - by_n[lo]
            verdict = "ok" if diff <= GOAL_MB else "OVER"
            print(f"  {stage:<19} {by_n[lo]:8.1f} → {by_n[hi]:8.1f}  {diff:+8.1f}  {verdict}")


if __name__ == "__main__":
    main()
