"""Encode benchmark: `imagesim encode` vs a straightforward PyTorch pipeline, same chips, same model.

Chips: z17 chips of the full-size sample COG (the ones with data). Model: a resnet50 (or
`--backbone resnet18`) with the imagesim head, exported to ONNX by `imagesim export`.

- imagesim: Rust batch decode (DCT-scaled libjpeg-turbo + SIMD resize, GIL released) overlapped
  with onnxruntime (CUDA + IO binding when a GPU is present, CPU otherwise);
- baseline: PIL decode + torchvision transforms (Resize, ToTensor, Normalize) + DataLoader workers
  + the eager PyTorch model (no_grad, eval; fp16 autocast on CUDA).

Targets: CPU >= 2x the baseline; H100 >= 5,000 chips/s end to end at 224 px with --fp16.

    python benches/bench_encode.py [--count 256] [--size 224] [--batch-size 32] [--fp16] [--workers 2] [--chips DIR]
                                   [--agree N]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_chip import REPO, ensure_cog  # noqa: E402

CLASSES = [f"class{i}" for i in range(13)]


def make_model(path: Path, backbone: str, size: int, chips: Path) -> None:
    import torch

    from imagesim.learn.model import MultilabelNet
    from imagesim.learn.train import MODEL_FORMAT, TrainConfig

    torch.manual_seed(0)
    net = MultilabelNet(backbone, len(CLASSES)).eval()
    config = TrainConfig(chips=str(chips), labels="", out=str(path.parent), backbone=backbone, chip_size=size)
    torch.save(
        {
            "format": MODEL_FORMAT,
            "config": asdict(config),
            "classes": CLASSES,
            "chip_size": size,
            "epoch": 0,
            "model": net.state_dict(),
            "thresholds": [0.35] * len(CLASSES),
        },
        path,
    )


class PilChips:
    """The baseline's dataset: PIL decode + torchvision Resize/ToTensor/Normalize (picklable for workers)."""

    def __init__(self, paths: list[Path], size: int) -> None:
        from torchvision import transforms

        self.paths = paths
        self.tf = transforms.Compose(
            [
                transforms.Resize(size),
                transforms.ToTensor(),
                transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
            ]
        )

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from PIL import Image

        with Image.open(self.paths[i]) as im:
            return self.tf(im.convert("RGB"))


def run_baseline(model_pt: Path, paths: list[Path], size: int, batch: int, workers: int, device: str, fp16: bool) -> float:
    import torch
    from torch.utils.data import DataLoader

    from imagesim.learn.train import load_model

    model, _ = load_model(model_pt, device)
    loader = DataLoader(
        PilChips(paths, size),
        batch_size=batch,
        num_workers=workers,
        pin_memory=device == "cuda",
        multiprocessing_context="forkserver" if workers else None,
        persistent_workers=workers > 0,
    )

    def one_pass() -> int:
        n = 0
        with torch.no_grad(), torch.autocast(device, dtype=torch.float16, enabled=fp16 and device == "cuda"):
            for x in loader:
                emb, logits = model.embed_and_logits(x.to(device, non_blocking=True))
                emb.float().cpu(), logits.float().cpu()
                n += len(x)
        return n

    one_pass()  # warm-up: workers started, caches warm (not timed, as for imagesim)
    start = time.perf_counter()
    n = one_pass()
    return n / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=256, help="chips encoded by each side")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--backbone", default="resnet50")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers of the baseline")
    ap.add_argument("--fp16", action="store_true")
    ap.add_argument(
        "--chips",
        type=Path,
        help="encode this chips folder (every chip with data, both sides) instead of --count chips of the sample COG: "
        "e.g. a set of >= 10,000 grown with ../shared/tools/gpu-offline/replicate.py on a GPU machine",
    )
    ap.add_argument(
        "--agree",
        type=int,
        default=0,
        help="also encode this many of the chips on the CPU with the float32 model and print the cosine between "
        "those embeddings and the timed run's (goal on a GPU: >= 0.999 fp32, >= 0.99 fp16)",
    )
    ap.add_argument("--out", type=Path, default=REPO / "bench-out")
    args = ap.parse_args()
    import polars as pl
    import torch

    from imagesim.imagery.chip import ChipSettings, run_chip
    from imagesim.learn.encode import EncodeSettings, cuda_device_count, run_encode
    from imagesim.learn.export import ExportSettings, export_onnx

    if args.chips is not None:
        # The folder as it is: `encode` takes every chip with data (no_data left out), so the baseline does too.
        subset, source = args.chips, str(args.chips)
        rows = pl.read_parquet(subset / "chips.parquet")
        if "nodata_class" in rows.columns:
            rows = rows.filter(pl.col("nodata_class").is_null() | (pl.col("nodata_class") != "no_data"))
    else:
        cog = ensure_cog(args.out)
        source = cog.name
        chips = args.out / "encode-chips"
        if not (chips / "chips.parquet").exists():
            run_chip(cog.parents[3], chips, ChipSettings(zoom=17), catalog_ids=[cog.name[: -len("-visual.tif")]])
        manifest = pl.read_parquet(chips / "chips.parquet").filter(pl.col("nodata_class") == "all_data").sort("chip")
        subset = args.out / "encode-subset"
        shutil.rmtree(subset, ignore_errors=True)
        (subset / str(manifest["zone"][0])).mkdir(parents=True)
        rows = manifest.head(args.count)
        for zone, chip in rows.select("zone", "chip").iter_rows():
            shutil.copy(chips / str(zone) / chip, subset / str(zone) / chip)
        rows.write_parquet(subset / "chips.parquet")
    paths = [subset / str(z) / c for z, c in rows.select("zone", "chip").iter_rows()]
    for p in paths:
        p.read_bytes()  # same warm page cache for both sides

    gpu = cuda_device_count() > 0
    device = "cuda" if gpu else "cpu"
    model_pt = args.out / "encode-model.pt"
    onnx_path = args.out / f"encode-{args.backbone}-{args.size}{'-fp16' if args.fp16 else ''}.onnx"
    make_model(model_pt, args.backbone, args.size, subset)
    export_onnx(model_pt, onnx_path, ExportSettings(fp16=args.fp16, overwrite=True, parity_chips=subset))
    torch.set_num_threads(torch.get_num_threads())
    print(
        f"{len(paths)} chips ({source}), {args.backbone} at {args.size} px, batch {args.batch_size}, "
        f"{'fp16' if args.fp16 else 'fp32'}, device {device}",
        flush=True,
    )

    # Warm-up (session creation, CUDA context) is not timed: encode a few chips first.
    run_encode(onnx_path, subset, EncodeSettings(out=args.out / "encode-warm.parquet", batch_size=args.batch_size, overwrite=True))
    summary = run_encode(
        onnx_path, subset, EncodeSettings(out=args.out / "encode-bench.parquet", batch_size=args.batch_size, overwrite=True)
    )
    ours = summary.rate
    base = run_baseline(model_pt, paths, args.size, args.batch_size, args.workers, device, args.fp16)
    if summary.encoded != len(paths):
        print(f"note: imagesim encoded {summary.encoded} chips, the baseline {len(paths)}")
    print(f"imagesim encode ({summary.provider}): {ours:8.1f} chips/s")
    print(f"PyTorch baseline (PIL + torchvision + DataLoader x{args.workers} + eager): {base:8.1f} chips/s")
    target = "5,000 chips/s on an H100 at 224 px fp16" if gpu else "2x the baseline on CPU"
    print(f"ratio: {ours / base:.2f}x  (target: {target})")
    if args.agree:
        agreement(args, model_pt, rows, subset, summary.provider)


def agreement(args: argparse.Namespace, model_pt: Path, rows: Any, subset: Path, provider: str) -> None:
    """Cosine between the timed run's embeddings and a CPU encode (float32 model) of the first ``--agree`` chips."""
    import numpy as np
    import polars as pl

    from imagesim.learn.encode import EncodeSettings, run_encode
    from imagesim.learn.export import ExportSettings, export_onnx

    some = args.out / "encode-agree"
    shutil.rmtree(some, ignore_errors=True)
    head = rows.head(args.agree)
    for zone, chip in head.select("zone", "chip").iter_rows():
        (some / str(zone)).mkdir(parents=True, exist_ok=True)
        shutil.copy(subset / str(zone) / chip, some / str(zone) / chip)
    head.write_parquet(some / "chips.parquet")
    fp32 = args.out / f"encode-{args.backbone}-{args.size}.onnx"
    if args.fp16:
        export_onnx(model_pt, fp32, ExportSettings(overwrite=True, parity_chips=some))
    run_encode(fp32, some, EncodeSettings(out=args.out / "encode-agree.parquet", provider="cpu", overwrite=True))
    cpu = pl.read_parquet(args.out / "encode-agree.parquet").select("chip", "embedding")
    ours = pl.read_parquet(args.out / "encode-bench.parquet").select("chip", "embedding")
    both = cpu.join(ours, on="chip", suffix="_run")
    a, b = np.stack(both["embedding"].to_list()), np.stack(both["embedding_run"].to_list())
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    goal = 0.99 if args.fp16 else 0.999
    print(
        f"agreement on {len(both)} chips, {provider} {'fp16' if args.fp16 else 'fp32'} vs CPU fp32: cosine min {cos.min():.5f} "
        f"(1 - cos up to {1 - cos.min():.1e}), mean {cos.mean():.5f}; largest difference {np.abs(a - b).max():.1e} "
        f"(goal >= {goal}) [{'met' if cos.min() >= goal else 'MISSED'}]"
    )


if __name__ == "__main__":
    main()
