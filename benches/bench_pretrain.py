"""Embedding quality benchmark: does label-free pretraining on the user's own chips make better embeddings?

The full-size sample goes through the demo pipeline once (`benches/bench_partial.prepare`: sample-data, chip,
nodata-index, osm import, labels build, labels split by area — level-14 quadkeys —, train resnet18 64 px from
scratch). Then, each embedding encoded and indexed (exact) and scored on the *validation areas only* (queries and
neighbours are the validation split's labelled chips, places the supervised models never trained on):

- (a) from scratch, supervised (`imagesim train`, the pipeline's run);
- (b) `imagesim pretrain` (SimCLR, temporal positives) then `imagesim train --weights RUN/backbone.pt`, the same
  epochs as (a);
- (c) `imagesim pretrain` only (`imagesim export --model RUN/backbone.pt`: the backbone's features, no head);
- (d) ImageNet weights + supervised, when torchvision's resnet18 file is in the torch cache (no download here).

Printed: precision@10 (neighbours sharing the query's rarest label, other places only, as `similar --evaluate`)
against random, and the validation label mAP of the supervised runs. One supervised run's precision moves by a few
hundredths from seed to seed, so (a), (b) and (d) are the mean of
``--seeds`` runs (seeds 0..N-1; each run's figure is printed, and the spread). Goals (issue 18): (b) >= 1.10 × (a) in
precision@10, (c) >= 2 × random.

    python benches/bench_pretrain.py [--work bench-out/change] [--epochs 4] [--pretrain-epochs 8] [--seeds 3]
                                     [--pretrain-args "--batch-size 256 --device cuda"]
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_partial import imagesim, prepare  # noqa: E402


def evaluate(chips: Path, onnx: Path, name: str, work: Path, val_labels: pl.DataFrame) -> tuple[float, float]:
    from imagesim.search.index import build_index
    from imagesim.search.similar import precision_at_k

    emb = work / f"embeddings-{name}.parquet"
    if not emb.exists():
        imagesim("encode", "--onnx", str(onnx), "--chips", str(chips), "--out", str(emb), "--overwrite")
    build_index(emb, work / f"index-{name}", kind="flat", overwrite=True)
    result = precision_at_k(work / f"index-{name}", val_labels, 10, sample=0)
    return result.precision, result.baseline


def best_map(run: Path) -> float:
    return float(json.loads((run / "metrics.json").read_text())["best"]["map"])  # the best epoch's validation mAP


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("bench-out/change"))
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--pretrain-epochs", type=int, default=8)
    ap.add_argument("--seeds", type=int, default=3, help="supervised runs of (a) and (b) per figure (seeds 0..N-1): one run is noisy")
    ap.add_argument(
        "--pretrain-args",
        default="",
        help="more `imagesim pretrain` options, e.g. '--batch-size 256 --device cuda' (they override the bench's); "
        "runs in WORK are reused: delete WORK/pretrain and WORK/run-b* after changing them",
    )
    args = ap.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    chips, onnx_a, labels = prepare(work, small=False, epochs=args.epochs)
    table = pl.read_parquet(labels)
    val_labels = table.filter(pl.col("split") == "val") if "split" in table.columns else table
    print(f"validation areas: {val_labels.height} labelled chips (of {table.height})")

    pre = work / "pretrain"
    if not (pre / "backbone.pt").exists():
        imagesim(
            "pretrain", "--chips", str(chips), "--out", str(pre), "--backbone", "resnet18", "--chip-size", "64",
            "--epochs", str(args.pretrain_epochs), "--batch-size", "64", "--overwrite", *shlex.split(args.pretrain_args),
        )  # fmt: skip

    def supervised(name: str, seed: int, weights: list[str]) -> tuple[float, float, float]:
        """Train (seed 0 of (a): the pipeline's run, from ``prepare``), export and score one supervised run."""
        if (name, seed) == ("a", 0):
            run = onnx_a.parent
        else:
            run = work / (f"run-{name}" if seed == 0 else f"run-{name}-s{seed}")
        if not (run / "model.onnx").exists():
            imagesim(
                "train", "--chips", str(chips), "--out", str(run), "--backbone", "resnet18", "--chip-size", "64",
                "--epochs", str(args.epochs), "--batch-size", "32", "--lr", "2e-3", "--seed", str(seed), *weights, "--overwrite",
            )  # fmt: skip
            imagesim("export", "--model", str(run / "model.pt"), "--out", str(run / "model.onnx"), "--overwrite")
        p, base = evaluate(chips, run / "model.onnx", run.name, work, val_labels)
        m = best_map(run)
        print(f"  {run.name}: precision@10 {p:.3f} (random {base:.3f}), label mAP {m:.3f}")
        return p, base, m

    def over_seeds(name: str, weights: list[str]) -> tuple[float, float, float, float]:
        """Mean precision@10, random and mAP over ``--seeds`` runs, and the spread (sd) of the precision."""
        runs = [supervised(name, seed, weights) for seed in range(args.seeds)]
        p, base, m = (statistics.fmean(r[i] for r in runs) for i in range(3))
        return p, base, m, statistics.stdev(r[0] for r in runs) if len(runs) > 1 else 0.0

    rows: list[tuple[str, float, float, float | None, float | None]] = []
    t0 = time.perf_counter()
    rows.append(("(a) from scratch, supervised", *over_seeds("a", [])))
    rows.append(("(b) pretrain + supervised fine-tune", *over_seeds("b", ["--weights", str(pre / "backbone.pt")])))

    onnx_c = pre / "backbone.onnx"
    if not onnx_c.exists():
        imagesim("export", "--model", str(pre / "backbone.pt"), "--out", str(onnx_c), "--overwrite")
    rows.append(("(c) pretrain only (no labels)", *evaluate(chips, onnx_c, "c", work, val_labels), None, None))

    try:
        from imagesim.learn.model import imagenet_state_dict

        imagenet_state_dict("resnet18", progress=False)
        have_imagenet = True
    except Exception as exc:  # noqa: BLE001 - offline: the benchmark says why (d) is left out
        have_imagenet = False
        why = str(exc).splitlines()[0]
    if have_imagenet:
        rows.append(("(d) ImageNet + supervised", *over_seeds("d", ["--weights", "imagenet"])))
    else:
        print(f"(d) left out: {why}")

    print(
        f"\n| embedding | precision@10 (validation areas) | sd over seeds | random | lift | label mAP (val) |  ({time.perf_counter() - t0:.0f} s)"
    )
    print("|---|---|---|---|---|---|")
    for name, p, base, m, sd in rows:
        print(
            f"| {name} | {p:.3f} | {'' if sd is None else f'{sd:.3f}'} | {base:.3f} | {p / base:.2f}× | {'' if m is None else f'{m:.3f}'} |"
        )
    a, b, c = rows[0][1], rows[1][1], rows[2]
    print(f"\n(b) vs (a): {b / a:.3f}× precision@10 (goal >= 1.10: {'met' if b >= 1.10 * a else 'MISSED'})")
    print(f"(c) vs random: {c[1] / c[2]:.2f}× (goal >= 2: {'met' if c[1] >= 2 * c[2] else 'MISSED'})")


if __name__ == "__main__":
    main()
