"""Labels, split and dataset for `imagesim train`.

Reads the labels written by `imagesim labels` — ``labels.parquet`` (class names from the
``labels.json`` beside it) or the dense ``labels.csv`` (``Feature,<class>…``, 0/1 columns) — checks
them against the chips folder, makes or reads the train/validation split, and serves chips a batch
at a time: decoded by the Rust core (the decode `encode` uses), mirrored and turned in the DataLoader
workers, colour-jittered and normalised where the model runs (:func:`model_input`).

Only numpy and polars are needed at import time; torch is imported where tensors are made.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from imagesim import options
from imagesim.artefacts import CHIPS_MANIFEST, manifest_chip_names
from imagesim.errors import ImagesimFileNotFoundError, InvalidArgumentError, JpegError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SPLITS = ("train", "val")
# When the labels have fewer level-12 cells than this, the split groups chips by a finer quadkey prefix.
MIN_SPLIT_GROUPS = 10


@dataclass
class LabelTable:
    """Chips (paths relative to the chips folder) with their dense 0/1 targets."""

    paths: list[str]
    targets: np.ndarray  # (n, n_classes) uint8
    classes: list[str]
    quadkeys: list[str | None]
    split: list[str | None] | None = None
    nodata_class: list[str | None] | None = None
    source: Path | None = None
    dropped_nodata: int = 0

    def __len__(self) -> int:
        return len(self.paths)

    def digest(self) -> str:
        """A fingerprint of chips, classes and targets (a resumed run checks its labels did not change)."""
        h = hashlib.blake2b(digest_size=16)
        h.update("\n".join(self.classes).encode())
        h.update("\n".join(self.paths).encode())
        h.update(np.ascontiguousarray(self.targets).tobytes())
        return h.hexdigest()


@dataclass
class Split:
    train: np.ndarray  # row indices into the LabelTable
    val: np.ndarray
    how: str  # one line: where the split came from
    groups: int = 0  # places (quadkey prefixes) the fallback split grouped chips by
    prefix: int = 0  # quadkey digits of those places (12 = level-12 cell); 0 for a stored split


def _chip_quadkey(name: str) -> str | None:
    """The quadkey of a chip file name ``Z<zone>-<quadkey>_<catalog>.jpg``; None when it is not one."""
    stem = Path(name).name
    if not stem.startswith("Z") or "-" not in stem or "_" not in stem:
        return None
    qk = stem.split("-", 1)[1].split("_", 1)[0]
    return qk if qk.isdigit() and set(qk) <= set("0123") else None


def load_labels(labels: str | Path, *, keep_nodata: bool = False) -> LabelTable:
    """Read ``labels.parquet`` (+ ``labels.json``) or a dense ``labels.csv``.

    Chips whose ``nodata_class`` is ``no_data`` (pure no-data, nothing to learn) are dropped unless
    ``keep_nodata``; the count is kept in ``dropped_nodata``.
    """
    labels = Path(labels)
    if not labels.is_file():
        raise ImagesimFileNotFoundError(f"labels file not found: {labels}")
    suffix = labels.suffix.lower()
    if suffix == ".parquet":
        table = _load_parquet(labels)
    elif suffix == ".csv":
        table = _load_csv(labels)
    else:
        raise InvalidArgumentError(f"{labels}: labels must be a labels.parquet or a dense labels.csv")
    if len(table) == 0:
        raise InvalidArgumentError(f"{labels}: no labelled chips")
    if not table.classes:
        raise InvalidArgumentError(f"{labels}: no classes")
    table.source = labels
    return table if keep_nodata else _drop_nodata(table, labels)


def _drop_nodata(table: LabelTable, labels: Path) -> LabelTable:
    nodata = table.nodata_class
    if nodata is None:
        return table
    keep = np.array([c != "no_data" for c in nodata], dtype=bool)
    if keep.all():
        return table
    idx = np.flatnonzero(keep)
    if idx.size == 0:
        raise InvalidArgumentError(f"{labels}: every labelled chip is no_data; nothing to train on")
    return LabelTable(
        paths=[table.paths[i] for i in idx],
        targets=table.targets[idx],
        classes=table.classes,
        quadkeys=[table.quadkeys[i] for i in idx],
        split=None if table.split is None else [table.split[i] for i in idx],
        nodata_class=[nodata[i] for i in idx],
        source=table.source,
        dropped_nodata=int((~keep).sum()),
    )


def _load_parquet(path: Path) -> LabelTable:
    sidecar = path.with_suffix(".json")
    if not sidecar.is_file():
        raise ImagesimFileNotFoundError(f"{path}: class names come from {sidecar.name} beside it, which is missing")
    try:
        meta = json.loads(sidecar.read_text())
        classes = [str(c) for c in meta["classes"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidArgumentError(f"{sidecar}: not a labels sidecar with a 'classes' list ({exc})") from exc
    try:
        df = pl.read_parquet(path)
    except Exception as exc:  # polars raises several kinds for a damaged file
        raise InvalidArgumentError(f"{path}: cannot read as Parquet ({exc})") from exc
    if "path" in df.columns:
        paths = df["path"].to_list()
    elif "chip" in df.columns and "zone" in df.columns:
        paths = [f"{z}/{c}" for z, c in zip(df["zone"].to_list(), df["chip"].to_list())]
    else:
        raise InvalidArgumentError(f"{path}: needs a 'path' column (or 'chip' and 'zone')")
    n_classes = len(classes)
    targets = np.zeros((df.height, n_classes), dtype=np.uint8)
    if "label_ids" in df.columns:
        ids = df["label_ids"].explode()
        lengths = df["label_ids"].list.len().fill_null(0).to_numpy()
        rows = np.repeat(np.arange(df.height), lengths)
        flat = ids.drop_nulls().to_numpy().astype(np.int64)
        if flat.size and (flat.min() < 0 or flat.max() >= n_classes):
            raise InvalidArgumentError(f"{path}: label id {int(flat.max())} is outside the {n_classes} classes of {sidecar.name}")
        targets[rows, flat] = 1
    elif "bitset" in df.columns:
        from imagesim import _imagesim

        words = _imagesim.label_words(n_classes)
        bits = np.ascontiguousarray(df["bitset"].to_numpy().reshape(df.height, words), dtype=np.uint64)
        targets = np.asarray(_imagesim.dense_labels(bits, n_classes), dtype=np.uint8)
    else:
        raise InvalidArgumentError(f"{path}: needs a 'label_ids' or 'bitset' column")
    quadkeys = df["quadkey"].to_list() if "quadkey" in df.columns else [_chip_quadkey(p) for p in paths]
    split = df["split"].to_list() if "split" in df.columns else None
    nodata = df["nodata_class"].to_list() if "nodata_class" in df.columns else None
    return LabelTable(paths=[str(p) for p in paths], targets=targets, classes=classes, quadkeys=quadkeys, split=split, nodata_class=nodata)


def _load_csv(path: Path) -> LabelTable:
    try:
        df = pl.read_csv(path, infer_schema_length=0)  # all strings; checked below
    except Exception as exc:
        raise InvalidArgumentError(f"{path}: cannot read as CSV ({exc})") from exc
    if not df.columns or df.columns[0] != "Feature":
        raise InvalidArgumentError(f"{path}: a dense labels CSV starts with a 'Feature' column (found {df.columns[:1]})")
    classes = df.columns[1:]
    values = df.select(classes).to_numpy() if classes else np.zeros((df.height, 0), dtype=object)
    bad = ~np.isin(values, ["0", "1"])
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise InvalidArgumentError(f"{path}: class columns must hold 0 or 1; row {r + 2}, column '{classes[c]}' holds {values[r, c]!r}")
    targets = (values == "1").astype(np.uint8)
    paths = [str(p) for p in df["Feature"].to_list()]
    return LabelTable(paths=paths, targets=targets, classes=list(classes), quadkeys=[_chip_quadkey(p) for p in paths])


def check_chips(table: LabelTable, chips: str | Path) -> None:
    """Every labelled chip must be in the chips folder (and its manifest, when there is one)."""
    chips = Path(chips)
    if not chips.is_dir():
        raise ImagesimFileNotFoundError(f"chips folder not found: {chips}")
    outside = [p for p in table.paths if Path(p).is_absolute() or ".." in Path(p).parts]
    if outside:
        raise InvalidArgumentError(f"{table.source}: {len(outside)} chip path(s) are not relative to the chips folder, e.g. {outside[0]}")
    known = manifest_chip_names(chips)
    if known is not None:
        manifest = chips / CHIPS_MANIFEST
        unknown = [p for p in table.paths if Path(p).name not in known]
        if unknown:
            raise InvalidArgumentError(
                f"{table.source}: {len(unknown)} labelled chip(s) are not in {manifest} "
                f"(e.g. {', '.join(unknown[:3])}); were the labels made for another chips folder?"
            )
    missing = [p for p in table.paths if not (chips / p).is_file()]
    if missing:
        raise ImagesimFileNotFoundError(
            f"{len(missing)} of {len(table)} labelled chip file(s) missing under {chips}: {', '.join(missing[:5])}"
            + (" …" if len(missing) > 5 else "")
        )


def _stable_key(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def make_split(table: LabelTable, val_fraction: float = options.VAL_FRACTION) -> Split:
    """The split stored in the labels, or a deterministic one grouped by place.

    Without a stored split, chips are grouped by their level-12 cell so neighbouring chips (and the
    same place seen by several acquisitions) never straddle train and validation. When the labels
    have fewer than ``MIN_SPLIT_GROUPS`` cells, the shortest finer quadkey prefix giving that many
    groups is used instead. Groups go to validation in a fixed hash order until ``val_fraction`` of the
    chips are there, so the split does not depend on the training ``seed``.
    """
    n = len(table)
    src = table.source
    if table.split is not None and any(s is not None for s in table.split):
        nulls = sum(s is None for s in table.split)
        if nulls:
            raise InvalidArgumentError(f"{src}: {nulls} of {n} chips have no split value; re-run `imagesim labels split`")
        unknown = sorted({str(s) for s in table.split} - {"train", "val", "test"})
        if unknown:
            raise InvalidArgumentError(f"{src}: unknown split value(s) {unknown}; expected train, val (or test)")
        split = np.array(table.split, dtype=object)
        result = Split(
            np.flatnonzero(split == "train"), np.flatnonzero(split == "val"), how=f"split column of {src.name if src else 'labels'}"
        )
        _check_nonempty(result, src)
        return result
    options.check_range("val_fraction", val_fraction, 0, 1, exclusive=True)
    qks = [q if q else p for q, p in zip(table.quadkeys, table.paths)]
    prefix = 12
    max_len = max(len(q) for q in qks)
    while len({q[:prefix] for q in qks}) < MIN_SPLIT_GROUPS and prefix < max_len:
        prefix += 1
    keys = [q[:prefix] for q in qks]
    groups: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        groups.setdefault(k, []).append(i)
    order = sorted(groups, key=lambda k: (_stable_key(k), k))
    target = val_fraction * n
    val: list[int] = []
    for k in order:
        if len(val) >= target or len(val) + len(groups[k]) >= n:
            break
        val.extend(groups[k])
    val_idx = np.array(sorted(val), dtype=np.int64)
    train_idx = np.setdiff1d(np.arange(n), val_idx)
    if prefix == 12:
        how = f"by level-12 cell ({len(groups)} cells)"
    else:
        how = f"by level-{prefix} quadkey prefix ({len(groups)} groups; the labels cover only {len({q[:12] for q in qks})} level-12 cells)"
    result = Split(train_idx, val_idx, how=f"no split in the labels; made one {how}", groups=len(groups), prefix=prefix)
    _check_nonempty(result, src)
    return result


def _check_nonempty(split: Split, src: Path | None) -> None:
    for name, idx in (("train", split.train), ("validation", split.val)):
        if idx.size == 0:
            raise InvalidArgumentError(
                f"{src}: the {name} split is empty ({split.how}); label more chips or re-run `imagesim labels split`"
            )
    if split.train.size < 2:
        raise InvalidArgumentError(f"{src}: the train split has {split.train.size} chip; at least 2 are needed")


# --- images ---


# Training augmentation for overhead imagery: flips, 90° rotations (no "up" in a nadir view) and mild
# colour jitter (brightness, contrast, saturation factors in [1 - JITTER, 1 + JITTER]).
JITTER = 0.1
GRAY_WEIGHTS = (0.299, 0.587, 0.114)


def draw_augmentation(rng: np.random.Generator, jitter: float = JITTER) -> tuple[bool, int, np.ndarray]:
    """One sample's augmentation: mirror it?, quarter turns, (brightness, contrast, saturation) factors."""
    flip = bool(rng.random() < 0.5)
    turns = int(rng.integers(4))
    return flip, turns, rng.uniform(1 - jitter, 1 + jitter, size=3).astype(np.float32)


def decode_chips(chips: Path, paths: list[str], size: int, threads: int = 0) -> tuple[np.ndarray, list[str | None]]:
    """``paths`` (relative to ``chips``) decoded by the Rust core into uint8 ``(n, size, size, 3)`` (the
    decode and resize of `encode`, so a model trains on the pixels it will embed) and each chip's problem
    (None when decoded; a failed chip's slot is zeroed)."""
    from imagesim import _imagesim

    out = np.empty((len(paths), size, size, 3), np.uint8)
    errors = _imagesim.decode_batch([str(chips / p) for p in paths], out, threads=threads)
    return out, errors


_CONSTANTS: dict[str, tuple[Any, Any, Any]] = {}


def _constants(device: Any) -> tuple[Any, Any, Any]:
    """The grey weights and ImageNet mean/std on ``device``, made once: a tensor made from Python values on
    a GPU is a copy from pageable memory, which waits for the GPU's queue to drain each batch."""
    key = str(device)
    if key not in _CONSTANTS:
        import torch

        _CONSTANTS[key] = (
            torch.tensor(GRAY_WEIGHTS, device=device),
            torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1),
            torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1),
        )
    return _CONSTANTS[key]


def model_input(pixels: Any, factors: Any, device: Any, *, channels_last: bool = False) -> Any:
    """A batch as the model takes it: uint8 NHWC chips → normalised float NCHW on ``device``, colour-jittered
    by ``factors`` when given: (n, 3) brightness, contrast, saturation, or (n, 6) with a colour cast per
    band after them (`pretrain`'s views).

    Runs where the model runs, on whole batches: on a GPU the DataLoader workers only decode (and send a
    quarter of the bytes a float batch would be). ``channels_last``: keep the NHWC layout (what a CUDA
    model in channels-last wants; the permuted view already has its strides).
    """
    import torch

    x = pixels.to(device, non_blocking=True).permute(0, 3, 1, 2).float()  # 0…255
    grey_weights, mean_rgb, std_rgb = _constants(x.device)
    dev = x.device
    if factors is None:
        x = x.div_(255.0)
    else:
        # Brightness b, contrast c (about the chip's mean), saturation s (about each pixel's grey) and the
        # cast, in that order, are one affine map per pixel (the grey weights sum to 1), applied in one
        # pass: s·c·b·x + (1 − s)·c·b·grey(x) + (1 − c)·b·mean(x) + cast, then clipped to [0, 1].
        f = factors.to(dev, non_blocking=True).view(len(x), -1, 1, 1)
        b, c, s = f[:, 0:1] / 255.0, f[:, 1:2], f[:, 2:3]  # b also takes x from 0…255 to 0…1
        grey = torch.einsum("nchw,c->nhw", x, grey_weights).unsqueeze(1)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        shift = (1 - c) * b * mean + (f[:, 3:6] if f.shape[1] == 6 else 0.0)
        x = torch.addcmul(grey * ((1 - s) * c * b) + shift, x, s * c * b).clamp_(0.0, 1.0)
    x = x.sub_(mean_rgb).div_(std_rgb)
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def keep_batch(batch: Any) -> Any:
    """The DataLoader's ``collate_fn``: :meth:`ChipDataset.__getitems__` already makes whole batches."""
    return batch


class Unreadable:
    """The chips a run left out because they cannot be read, each problem once and in the order met.

    The first :attr:`NAMED` are noted by name as they come (``what``: "a chip that cannot be read"); past
    them, :meth:`epoch_end` notes how many there are so far, so thousands of bad files do not flood the
    log. :attr:`problems` lists them all (the run's ``metrics.json`` keeps them).
    """

    NAMED = 5

    def __init__(self, note: Callable[[str], None], what: str) -> None:
        self.note, self.what = note, what
        self._seen: dict[str, None] = {}
        self._counted = 0

    @property
    def problems(self) -> list[str]:
        return list(self._seen)

    def add(self, problems: list[str]) -> None:
        for problem in problems:
            if problem not in self._seen:
                self._seen[problem] = None
                if len(self._seen) <= self.NAMED:
                    self.note(f"left out {self.what}: {problem}")

    def epoch_end(self) -> None:
        if len(self._seen) > self.NAMED and len(self._seen) != self._counted:
            self._counted = len(self._seen)
            self.note(f"{self._counted} unreadable chips left out so far (the first {self.NAMED} named above; all in metrics.json)")

    def summary(self) -> str:
        """What an error says when nothing could be read."""
        return f" ({len(self._seen)} unreadable; the first: {next(iter(self._seen))})" if self._seen else ""


class ChipDataset:
    """Chips with their float targets, fetched a batch at a time (:meth:`__getitems__`).

    A batch is ``(pixels, factors, targets, problems)``: uint8 NHWC chips decoded by the Rust core,
    already mirrored and turned for training; the colour-jitter factors ((n, 3), None when not training)
    that :func:`model_input` applies where the model runs; float targets; and the problems of chips that
    could not be read (left out of the batch, each named by its file).

    Items are indexed by ``(epoch, i)`` (see :class:`EpochSampler`): a training sample's augmentation
    is drawn from ``(seed, epoch, i)``, so it is the same whatever the worker count, and a resumed run
    sees exactly what an uninterrupted one would have. A plain module-level class (picklable), so
    DataLoader workers can start with spawn/forkserver. ``threads``: decode threads per batch (0: all
    cores, for fetching in the main process; 1 in each DataLoader worker).
    """

    def __init__(self, chips: Path, paths: list[str], targets: np.ndarray, size: int, *, train: bool, seed: int, threads: int = 0) -> None:
        self.chips, self.paths, self.targets = Path(chips), list(paths), np.asarray(targets, dtype=np.float32)
        self.size, self.train, self.seed, self.threads = size, train, seed, threads

    def __len__(self) -> int:
        return len(self.paths)

    def __getitems__(self, keys: list) -> tuple[Any, Any, Any, list[str]]:
        import torch

        pairs = [key if isinstance(key, tuple) else (0, key) for key in keys]
        pixels, errors = decode_chips(self.chips, [self.paths[i] for _, i in pairs], self.size, self.threads)
        factors = np.ones((len(pairs), 3), np.float32)
        if self.train:
            for j, (epoch, i) in enumerate(pairs):
                flip, turns, factors[j] = draw_augmentation(np.random.default_rng([self.seed, epoch, i]))
                if flip or turns:
                    pixels[j] = np.ascontiguousarray(np.rot90(pixels[j][:, ::-1] if flip else pixels[j], turns))
        keep = [j for j, e in enumerate(errors) if e is None]
        if len(keep) < len(pairs):
            pixels, factors = pixels[keep], factors[keep]
        targets = self.targets[[pairs[j][1] for j in keep]]
        return (
            torch.from_numpy(pixels),
            torch.from_numpy(factors) if self.train else None,
            torch.from_numpy(targets),
            [e for e in errors if e is not None],
        )

    def __getitem__(self, key: Any) -> tuple[Any, Any]:
        """One chip as a normalised float ``(3, size, size)`` tensor (on the CPU) and its targets."""
        pixels, factors, targets, problems = self.__getitems__([key])
        if problems:
            raise JpegError(problems[0])
        return model_input(pixels, factors, "cpu")[0], targets[0]


class EpochSampler:
    """Yields ``(epoch, index)``: a permutation drawn from ``(seed, epoch)`` when shuffling.

    Set :attr:`epoch` before iterating; the sampler lives in the main process, so this works with
    persistent DataLoader workers.
    """

    def __init__(self, n: int, *, shuffle: bool, seed: int) -> None:
        self.n, self.shuffle, self.seed, self.epoch = n, shuffle, seed, 0

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        order = np.random.default_rng([self.seed, self.epoch, 7]).permutation(self.n) if self.shuffle else np.arange(self.n)
        return iter([(self.epoch, int(i)) for i in order])
