"""No-data-aware similarity benchmark: do partial chips find their kind as well as whole ones?

The full-size sample (three acquisitions with strip edges, so hundreds of partial_data chips) goes
through the demo pipeline once: `sample-data`, `chip` at z17, `nodata-index` (pixels, threshold 4),
`osm import`, `labels build --include partial`, `labels split`, `train` (resnet18, 64 px, a few
epochs, as `make demo`) and `export`. The model is then encoded twice:

- plain: chips as decoded (the old behaviour: a partial chip's black border goes into the model);
- no-data aware: each chip's no-data pixels filled with the mean of its valid pixels (the default
  of `imagesim encode`), and its valid_fraction recorded.

Each is indexed (exact) and measured against the labels (`similar --evaluate`, every labelled chip):
precision@10 of partial_data query chips vs all_data query chips and the gap between them (goal:
within 10 % of all_data), and the share of a chip's 10 nearest neighbours (other quadkeys) whose
valid fraction (nodata-index's, the same for both runs) differs from the chip's by more than 0.5,
and the share of partial chips among a partial chip's neighbours (against their share of the index):
does the border decide who the neighbours are? The expensive artefacts stay in --work and are reused when present, so a rerun only encodes.

    python benches/bench_partial.py [--work bench-out/partial] [--small] [--epochs 4] [--threshold 4] [--reencode]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

REPO = Path(__file__).resolve().parents[1]
K = 10
BAND = 0.5  # a neighbour "of another kind": valid fractions more than this apart
GOAL = 0.10  # partial_data precision within 10 % of all_data's


def imagesim(*args: str) -> None:
    """One pipeline step through the command line, as a user runs it; its time printed."""
    exe = Path(sys.executable).with_name("imagesim")
    cmd = [str(exe) if exe.exists() else "imagesim", *args]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env={**os.environ, "NO_COLOR": "1"})
    print(f"  imagesim {args[0]}{' ' + args[1] if not args[1].startswith('-') else ''}: {time.perf_counter() - t0:.1f} s", flush=True)


def prepare(work: Path, small: bool, epochs: int) -> tuple[Path, Path, Path]:
    """The sample, chips, no-data classes, labels and model in ``work`` (each step skipped when done)."""
    sample, chips, run = work / "sample", work / "chips", work / "run"
    ard = sample / "ard"
    if not (sample / ".imagesim-sample").exists():
        imagesim("sample-data", str(sample), "--seed", "0", *(["--small"] if small else []), "--overwrite")
    if not (chips / "chips.parquet").exists():
        imagesim("chip", "--ard-path", str(ard), "--dest", str(chips), "--zoom", "17")
    if not (chips / "nodata-index.json").exists():
        imagesim("nodata-index", "--chips", str(chips), "--source", "pixels", "--nodata-threshold", "4")
    if not any(ard.glob("*/*/osm_data.json")):
        imagesim("osm", "import", str(sample / "sample.osm.pbf"), "--ard-path", str(ard), "--overwrite")
    if not (chips / "labels-train.csv").exists():
        imagesim("labels", "build", "--ard-path", str(ard), "--chips", str(chips), "--include", "partial", "--overwrite")
        imagesim("labels", "split", "--chips", str(chips), "--val-fraction", "0.2", "--seed", "0", "--group-level", "14")
    if not (run / "model.pt").exists():
        imagesim(
            "train", "--chips", str(chips), "--out", str(run), "--backbone", "resnet18", "--chip-size", "64",
            "--epochs", str(epochs), "--batch-size", "32", "--lr", "2e-3", "--overwrite",
        )  # fmt: skip
    if not (run / "model.onnx").exists():
        imagesim("export", "--model", str(run / "model.pt"), "--out", str(run / "model.onnx"), "--overwrite")
    return chips, run / "model.onnx", chips / "labels.parquet"


def neighbour_gap(loaded, valid: dict[str, float], partial: set[str]) -> tuple[float, float, float, float]:
    """Share of neighbours (10 nearest, other quadkeys) whose valid fraction is more than BAND from the
    query's: over every indexed chip, and over the partial_data ones; and the share of
    partial chips among the partial queries' neighbours, with the share of partial chips in the index
    (what random neighbours would give)."""
    ids = loaded.ids
    vf = np.array([valid.get(c, np.nan) for c in ids["chip"].to_list()])
    is_partial = np.array([c in partial for c in ids["chip"].to_list()])
    quadkey = ids["quadkey"].to_numpy()
    rows = np.arange(loaded.n)
    dup = int(ids["quadkey"].value_counts()["count"].max())
    _, found = loaded.search(loaded.vectors(rows), min(loaded.n, K + dup + 1))
    far_all, far_partial, n_all, n_partial, partial_nb = 0, 0, 0, 0, 0
    for q, nb in zip(rows.tolist(), found):
        if np.isnan(vf[q]):
            continue
        picked = [r for r in nb.tolist() if r >= 0 and quadkey[r] != quadkey[q]][:K]
        far = sum(abs(vf[r] - vf[q]) > BAND for r in picked if not np.isnan(vf[r]))
        far_all, n_all = far_all + far, n_all + len(picked)
        if is_partial[q]:
            far_partial, n_partial = far_partial + far, n_partial + len(picked)
            partial_nb += int(is_partial[picked].sum())
    return far_all / max(1, n_all), far_partial / max(1, n_partial), partial_nb / max(1, n_partial), float(is_partial.mean())


def measure(
    name: str, onnx: Path, chips: Path, labels: Path, work: Path, threshold: int | None, valid: dict[str, float], partial: set[str]
) -> dict:
    from imagesim.learn.encode import EncodeSettings, run_encode
    from imagesim.search.index import build_index, load_index
    from imagesim.search.similar import precision_at_k

    emb = work / f"embeddings-{name}.parquet"
    if not emb.exists():
        summary = run_encode(onnx, chips, EncodeSettings(out=emb, nodata_threshold=threshold))
        print(f"  {name}: {summary.line()}", flush=True)
    index_dir = work / f"index-{name}"
    build_index(emb, index_dir, kind="flat", overwrite=True)
    loaded = load_index(index_dir)
    res = precision_at_k(loaded, labels, K, sample=0)
    far_all, far_partial, partial_partial, partial_rate = neighbour_gap(loaded, valid, partial)
    by = res.by_nodata_class
    return {
        "all": res.precision,
        "baseline": res.baseline,
        "all_data": by.get("all_data", {}).get("precision", float("nan")),
        "partial_data": by.get("partial_data", {}).get("precision", float("nan")),
        "n_all_data": int(by.get("all_data", {}).get("queries", 0)),
        "n_partial_data": int(by.get("partial_data", {}).get("queries", 0)),
        "far_all": far_all,
        "far_partial": far_partial,
        "partial_partial": partial_partial,
        "partial_rate": partial_rate,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=REPO / "bench-out" / "partial", help="artefacts, reused when present")
    ap.add_argument("--small", action="store_true", help="the small sample (seconds; few chips: indicative only)")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--threshold", type=int, default=4, help="no-data threshold of the no-data-aware encode")
    ap.add_argument("--reencode", action="store_true", help="encode both again (the model and chips are kept)")
    args = ap.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    if args.reencode:
        for name in ("plain", "nodata"):
            (work / f"embeddings-{name}.parquet").unlink(missing_ok=True)
            (work / f"embeddings-{name}.json").unlink(missing_ok=True)
    print(f"{'small' if args.small else 'full-size'} sample in {work}", flush=True)
    t0 = time.perf_counter()
    chips, onnx, labels = prepare(work, args.small, args.epochs)
    print(f"pipeline ready in {time.perf_counter() - t0:.1f} s", flush=True)

    nodata = pl.read_parquet(chips / "nodata.parquet", columns=["chip", "valid_fraction", "nodata_class"])
    valid = dict(nodata.drop_nulls("valid_fraction").select("chip", "valid_fraction").iter_rows())
    counts = dict(nodata.group_by("nodata_class").len().iter_rows())
    partial = set(nodata.filter(pl.col("nodata_class") == "partial_data")["chip"].to_list())
    print(
        f"chips: {counts.get('all_data', 0):,} all_data, {counts.get('partial_data', 0):,} partial_data, {counts.get('no_data', 0):,} no_data"
    )

    results = {
        "plain (as decoded)": measure("plain", onnx, chips, labels, work, None, valid, partial),
        f"no-data aware (filled, threshold {args.threshold})": measure("nodata", onnx, chips, labels, work, args.threshold, valid, partial),
    }
    print()
    print(
        f"{'encode':<36} {'P@10 all':>9} {'all_data':>9} {'partial':>9} {'gap':>8} {'|Δvalid|>0.5':>13} {'(partial q)':>12} "
        f"{'partial→partial':>16}"
    )
    for name, r in results.items():
        gap = (r["all_data"] - r["partial_data"]) / r["all_data"] if r["all_data"] > 0 else float("nan")
        r["gap"] = gap
        print(
            f"{name:<36} {r['all']:9.3f} {r['all_data']:9.3f} {r['partial_data']:9.3f} {gap:8.1%} {r['far_all']:13.1%} {r['far_partial']:12.1%} "
            f"{r['partial_partial']:16.1%}"
        )
    first = next(iter(results.values()))
    print(
        f"queries: {first['n_all_data']:,} all_data, {first['n_partial_data']:,} partial_data labelled chips; "
        f"random baseline {first['baseline']:.3f}; gap = (all_data − partial) / all_data, goal ≤ {GOAL:.0%}"
    )
    print(
        "|Δvalid|>0.5: share of the 10 nearest chips (other quadkeys) whose valid fraction is more than 0.5 from the query's "
        "(all queries; partial_data queries); partial→partial: share of partial_data chips among a partial_data chip's neighbours "
        f"({first['partial_rate']:.1%} of the indexed chips are partial_data)"
    )


if __name__ == "__main__":
    main()
