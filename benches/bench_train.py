"""Training benchmark: `imagesim train`'s input batches against the per-sample pipeline they replaced,
and `train`'s images/s in float32 and with ``--amp``.

(a) Training inputs, on every machine. The same chips (z17 chips of the full-size sample COG, or
    ``--chips``), ``--size`` px, batches of ``--batch-size``, best of ``--repeat``:
    - one worker's share, in this process: chips/s of
      imagesim — ``ChipDataset`` batches (Rust decode and resize, mirror and quarter turns on uint8),
      then ``model_input`` (colour jitter, normalisation: batched, where the model runs — timed here on
      the CPU and shown apart, as on a GPU it runs on the device);
      baseline — what `train` did before: per chip a Pillow decode (draft + bilinear resize), numpy
      augmentation and normalisation to float32 CHW, then torch's default collate;
    - a DataLoader of ``--workers`` workers on each side, feeding the device (``model_input`` or
      ``.to(device)``): chips/s, the ceiling on training speed.
    The same for `pretrain`'s items (a place's two views: random crop, mirror, turns, colour, decoded at
    twice the size), against the per-view Pillow + numpy pipeline it used before.
(b) ``--train``: ``run_train`` in float32 and then with ``--amp`` (CUDA only) on ``--chips``/``--labels``
    (default: the sample's chips with random labels): images/s of the last epoch each, and the GPU's
    utilisation sampled with nvidia-smi while it trains. Goal on a GPU: AMP >= 2x float32.

    python benches/bench_train.py [--size 224] [--batch-size 64] [--workers 2] [--count 512]
    python benches/bench_train.py --train --backbone resnet50 --size 224 --chips DIR --labels CSV \\
        --epochs 2 --batch-size 256 --workers 14     # on a GPU machine
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_chip import REPO, ensure_cog  # noqa: E402

CLASSES = [f"class{i}" for i in range(13)]


# --- the baseline: the per-sample pipeline `train` used before batches ---


def pil_chip(path: Path, size: int) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as src:
        src.draft("RGB", (size, size))
        rgb = src.convert("RGB")
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8)


def numpy_input(img_u8: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    img = img_u8.astype(np.float32) / 255.0
    if rng.random() < 0.5:
        img = img[:, ::-1]
    img = np.rot90(img, int(rng.integers(4)))
    b, c, s = (float(v) for v in rng.uniform(0.9, 1.1, size=3))
    img = img * b
    mean = img.mean()
    img = (img - mean) * c + mean
    gray = img @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    img = np.clip((img - gray[..., None]) * s + gray[..., None], 0.0, 1.0)
    img = (img - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)
    return np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32)


class PerSampleChips:
    """The baseline's dataset (picklable for DataLoader workers)."""

    def __init__(self, chips: Path, paths: list[str], size: int) -> None:
        self.chips, self.paths, self.size = chips, paths, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        import torch

        epoch, i = key
        img = numpy_input(pil_chip(self.chips / self.paths[i], self.size), np.random.default_rng([0, epoch, i]))
        return torch.from_numpy(img), torch.zeros(len(CLASSES))


def numpy_view(img: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    """`pretrain`'s view as it was made per view before batches (float32 CHW)."""
    h = img.shape[0]
    side = int(round(h * np.sqrt(rng.uniform(0.5, 1.0))))
    r0, c0 = (int(v) for v in rng.integers(0, h - side + 1, 2))
    idx = (np.arange(size) * side / size).astype(np.int64)
    x = img[r0 : r0 + side, c0 : c0 + side][idx][:, idx].astype(np.float32) / 255.0
    if rng.random() < 0.5:
        x = x[:, ::-1]
    x = np.rot90(x, int(rng.integers(4)))
    b, c, s = (float(v) for v in rng.uniform(0.6, 1.4, 3))
    x = x * b
    mean = x.mean()
    x = (x - mean) * c + mean
    gray = x @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    x = (x - gray[..., None]) * (0.0 if rng.random() < 0.2 else s) + gray[..., None]
    x = np.clip(x + rng.normal(0, 0.03, 3).astype(np.float32), 0.0, 1.0)
    x = (x - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)


def pretrain_worker(chips: Path, size: int, batch: int, count: int) -> dict[str, float]:
    """Places/s (two views each) of one worker's work for `pretrain`, each side."""
    import torch
    from torch.utils.data import default_collate

    from imagesim.learn.dataset import model_input
    from imagesim.learn.pretrain import PairDataset, places

    paths, _ = places(chips)
    paths = paths[:count]
    ds = PairDataset(chips, paths, None, size, temporal=True, seed=0, threads=1)
    decode = min(2 * size, 512)
    keys = [(0, i) for i in range(len(paths))]
    t0 = time.perf_counter()
    for s in range(0, len(keys), batch):
        items = []
        for key in keys[s : s + batch]:
            a, b, rng = ds._pair(*key)
            img_a = pil_chip(chips / a, decode)
            img_b = img_a if b == a else pil_chip(chips / b, decode)
            items.append((torch.from_numpy(numpy_view(img_a, rng, size)), torch.from_numpy(numpy_view(img_b, rng, size))))
        default_collate(items)
    baseline = len(keys) / (time.perf_counter() - t0)
    batches, t0 = [], time.perf_counter()
    for s in range(0, len(keys), batch):
        batches.append(ds.__getitems__(keys[s : s + batch]))
    worker = len(keys) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    with torch.no_grad():
        for first, second, fc, sc, _ in batches:
            model_input(torch.cat([first, second]), torch.cat([fc, sc]), "cpu")
    return {"pretrain_baseline": baseline, "pretrain_worker": worker, "pretrain_cpu_colour": len(keys) / (time.perf_counter() - t0)}


# --- (a) ---


def one_worker(chips: Path, paths: list[str], size: int, batch: int) -> dict[str, float]:
    """chips/s of one worker's work (one decode thread), each side; imagesim's device part apart."""
    import torch
    from torch.utils.data import default_collate

    from imagesim.learn.dataset import ChipDataset, model_input

    n = len(paths)
    keys = [(0, i) for i in range(n)]
    base = PerSampleChips(chips, paths, size)
    t0 = time.perf_counter()
    for s in range(0, n, batch):
        default_collate([base[k] for k in keys[s : s + batch]])
    baseline = n / (time.perf_counter() - t0)

    ds = ChipDataset(chips, paths, np.zeros((n, len(CLASSES)), np.float32), size, train=True, seed=0, threads=1)
    batches, t0 = [], time.perf_counter()
    for s in range(0, n, batch):
        batches.append(ds.__getitems__(keys[s : s + batch]))
    worker = n / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    with torch.no_grad():
        for pixels, factors, _, _ in batches:
            model_input(pixels, factors, "cpu")
    device_part = n / (time.perf_counter() - t0)
    return {"baseline": baseline, "imagesim_worker": worker, "imagesim_cpu_jitter": device_part}


def loaders(chips: Path, paths: list[str], size: int, batch: int, workers: int, device: str) -> dict[str, float]:
    """chips/s of a whole DataLoader feeding ``device``, each side (second pass: workers warm)."""
    import multiprocessing as mp

    import torch
    from torch.utils.data import DataLoader

    from imagesim.learn.dataset import ChipDataset, EpochSampler, keep_batch, model_input

    common: dict[str, Any] = {"batch_size": batch, "num_workers": workers, "pin_memory": device == "cuda"}
    if workers:
        common |= {"multiprocessing_context": mp.get_context("forkserver"), "persistent_workers": True}
    n = len(paths)
    base = DataLoader(PerSampleChips(chips, paths, size), sampler=EpochSampler(n, shuffle=True, seed=0), **common)  # type: ignore[arg-type]
    ds = ChipDataset(chips, paths, np.zeros((n, len(CLASSES)), np.float32), size, train=True, seed=0, threads=0 if workers == 0 else 1)
    ours = DataLoader(ds, sampler=EpochSampler(n, shuffle=True, seed=0), collate_fn=keep_batch, **common)  # type: ignore[arg-type]

    def base_pass() -> None:
        for x, _ in base:
            x.to(device, non_blocking=True)
        if device == "cuda":
            torch.cuda.synchronize()

    def our_pass() -> None:
        for pixels, factors, _, _ in ours:
            model_input(pixels, factors, device, channels_last=device == "cuda")
        if device == "cuda":
            torch.cuda.synchronize()

    rates = {}
    for name, one_pass in (("baseline", base_pass), ("imagesim", our_pass)):
        one_pass()  # warm-up: workers started, files cached
        t0 = time.perf_counter()
        one_pass()
        rates[name] = n / (time.perf_counter() - t0)
    return rates


# --- (b) ---


class GpuUtilisation:
    """Mean GPU utilisation (%) sampled with nvidia-smi twice a second while the block runs."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            try:
                out = subprocess.run(
                    ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "--id=0"],
                    capture_output=True,
                    text=True,
                    timeout=5,
                ).stdout
                self.samples.append(float(out.strip().splitlines()[0]))
            except (OSError, ValueError, IndexError, subprocess.SubprocessError):
                return

    def __enter__(self) -> GpuUtilisation:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def mean(self) -> float | None:
        return statistics.fmean(self.samples) if self.samples else None


def random_labels(chips: Path, dest: Path) -> Path:
    """A dense labels CSV for every chip with data in ``chips`` (random classes: only the speed counts)."""
    import polars as pl

    manifest = pl.read_parquet(chips / "chips.parquet").filter(pl.col("nodata_class") != "no_data").sort("chip")
    paths = [f"{z}/{c}" for z, c in zip(manifest["zone"].to_list(), manifest["chip"].to_list())]
    y = np.random.default_rng(0).random((len(paths), len(CLASSES))) < 0.3
    pl.DataFrame({"Feature": paths, **{c: y[:, k].astype(np.int64) for k, c in enumerate(CLASSES)}}).write_csv(dest)
    return dest


def train_rates(args: argparse.Namespace, chips: Path, labels: Path, cuda: bool) -> None:
    from imagesim.learn.train import TrainConfig, run_train

    rows = []
    for amp in (False, True) if cuda else (False,):
        out = args.out / f"bench-train-{'amp' if amp else 'fp32'}"
        config = TrainConfig(
            chips=str(chips),
            labels=str(labels),
            out=str(out),
            backbone=args.backbone,
            chip_size=args.size,
            epochs=args.epochs,
            batch_size=args.batch_size,
            workers=args.workers,
            device="cuda" if cuda else "cpu",
            amp=amp,
        )
        with GpuUtilisation() as gpu:
            result = run_train(config, overwrite=True)
        last = result.history[-1]["train_images_per_s"]
        rows.append((amp, last, gpu.mean(), result.n_train))
    print(f"\n(b) run_train, {args.backbone} at {args.size} px, batch {args.batch_size}, {args.workers} worker(s), {args.epochs} epoch(s)")
    for amp, rate, util, n in rows:
        print(
            f"  {'--amp' if amp else 'fp32 '}  {n:,} training chips: {rate:8.1f} img/s (last epoch)   GPU utilisation {util if util is None else f'{util:.0f} %'}"
        )
    if len(rows) == 2:
        ratio = rows[1][1] / rows[0][1]
        print(f"  AMP / fp32: {ratio:.2f}x  (goal >= 2.00x) [{'met' if ratio >= 2 else 'MISSED'}]")
    else:
        print("  (no GPU: --amp needs CUDA; float32 on the CPU only)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers, each side")
    ap.add_argument("--count", type=int, default=512, help="chips in (a)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--chips", type=Path, help="a chips folder (default: the sample COG's z17 chips)")
    ap.add_argument("--labels", type=Path, help="labels for --train (default: random labels of --chips)")
    ap.add_argument("--train", action="store_true", help="also (b): run_train fp32 and --amp")
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--out", type=Path, default=REPO / "bench-out")
    args = ap.parse_args()
    import polars as pl
    import torch

    from imagesim.imagery.chip import ChipSettings, run_chip

    chips = args.chips
    if chips is None:
        cog = ensure_cog(args.out)
        chips = args.out / "encode-chips"
        if not (chips / "chips.parquet").exists():
            run_chip(cog.parents[3], chips, ChipSettings(zoom=17), catalog_ids=[cog.name[: -len("-visual.tif")]])
    manifest = pl.read_parquet(chips / "chips.parquet").filter(pl.col("nodata_class") != "no_data").sort("chip")
    paths = [f"{z}/{c}" for z, c in zip(manifest["zone"].to_list(), manifest["chip"].to_list())][: args.count]
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    gpu = torch.cuda.get_device_name(0) if cuda else "none"
    print(f"{len(paths)} chips at {args.size} px, batches of {args.batch_size}; torch {torch.__version__}; GPU: {gpu}")

    best: dict[str, float] = {}
    for _ in range(args.repeat):
        for k, v in one_worker(chips, paths, args.size, args.batch_size).items():
            best[k] = max(best.get(k, 0.0), v)
    ratio = best["imagesim_worker"] / best["baseline"]
    print("\n(a) one worker's share (one decode thread), chips/s, best of", args.repeat)
    print(f"  baseline: Pillow decode + numpy augmentation per chip     {best['baseline']:8.0f}")
    print(f"  imagesim: Rust batch decode + uint8 mirror/turns          {best['imagesim_worker']:8.0f}   {ratio:.2f}x the baseline")
    print(f"  imagesim: jitter + normalisation of the batch on the CPU  {best['imagesim_cpu_jitter']:8.0f}   (on a GPU: on the device)")
    pre: dict[str, float] = {}
    for _ in range(args.repeat):
        for k, v in pretrain_worker(chips, args.size, args.batch_size, args.count // 2).items():
            pre[k] = max(pre.get(k, 0.0), v)
    ratio = pre["pretrain_worker"] / pre["pretrain_baseline"]
    print(f"\n    `pretrain`, places/s (two views each, decoded at {min(2 * args.size, 512)} px), one worker's share:")
    print(f"  baseline: Pillow decode + numpy views per place            {pre['pretrain_baseline']:8.0f}")
    print(f"  imagesim: Rust batch decode + uint8 crop/mirror/turns      {pre['pretrain_worker']:8.0f}   {ratio:.2f}x the baseline")
    print(f"  imagesim: colour + normalisation of the batch on the CPU   {pre['pretrain_cpu_colour']:8.0f}   (on a GPU: on the device)")
    rates = loaders(chips, paths, args.size, args.batch_size, args.workers, device)
    print(
        f"\n    DataLoader, {args.workers} worker(s) each side, feeding {device}: baseline {rates['baseline']:.0f} chips/s, "
        f"imagesim {rates['imagesim']:.0f} chips/s: {rates['imagesim'] / rates['baseline']:.2f}x"
    )
    if args.train:
        labels = args.labels or random_labels(chips, args.out / "bench-train-labels.csv")
        train_rates(args, chips, labels, cuda)


if __name__ == "__main__":
    main()
