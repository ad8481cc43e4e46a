"""SYNTHETIC labels for the train tests, written in the labels contract of `imagesim labels`.

These are not OSM labels: each class is a simple rule on the chip's own pixels, so a small CNN can
learn them in a few CPU seconds and tests do not depend on the labels stage:

- ``synthetic:mostly_nodata`` — under half of the pixels hold data;
- ``synthetic:green``         — over 1 % of the pixels are clearly green (fields, parks);
- ``synthetic:red``           — over 0.3 % of the pixels are clearly red (red roofs).

Files follow the contract exactly: ``labels.parquet`` (chip, path, zone, quadkey, cell, catalog_id,
nodata_class, label_ids, bitset, split) + ``labels.json`` sidecar, and the dense ``labels.csv``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image

from imagesim import _imagesim

CLASSES = ["synthetic:mostly_nodata", "synthetic:green", "synthetic:red"]


def synthetic_label_ids(path: Path) -> list[int]:
    with Image.open(path) as im:
        im.draft("RGB", (64, 64))
        a = np.asarray(im.convert("RGB")).astype(np.int16)
    r, g, b = a[..., 0], a[..., 1], a[..., 2]
    ids = []
    if (a.max(-1) > 20).mean() < 0.5:
        ids.append(0)
    if ((g > r + 15) & (g > b + 15)).mean() > 0.01:
        ids.append(1)
    if ((r > g + 40) & (r > b + 40)).mean() > 0.003:
        ids.append(2)
    return ids


def write_synthetic_labels(chips: Path, *, split: dict[str, str] | None = None, name: str = "labels") -> Path:
    """Write ``<chips>/<name>.parquet`` + ``.json`` (+ ``.csv``) for every chip in ``chips.parquet``.

    ``split`` maps chip file names to "train"/"val"; without it the split column is null.
    """
    manifest = pl.read_parquet(chips / "chips.parquet").sort("chip")
    n_classes = len(CLASSES)
    words = _imagesim.label_words(n_classes)
    paths = [f"{z}/{c}" for z, c in zip(manifest["zone"].to_list(), manifest["chip"].to_list())]
    label_ids = [[] if k == "no_data" else synthetic_label_ids(chips / p) for p, k in zip(paths, manifest["nodata_class"].to_list())]
    offsets = np.cumsum([0] + [len(x) for x in label_ids]).astype(np.int64)
    flat = np.array([i for x in label_ids for i in x], dtype=np.uint32)
    bits = np.asarray(_imagesim.pack_labels(flat, offsets, n_classes)).reshape(len(paths), words)
    frame = pl.DataFrame(
        {
            "chip": manifest["chip"],
            "path": paths,
            "zone": manifest["zone"].cast(pl.UInt8),
            "quadkey": manifest["quadkey"],
            "cell": manifest["cell"],
            "catalog_id": manifest["catalog_id"],
            "nodata_class": manifest["nodata_class"],
            "label_ids": pl.Series(label_ids, dtype=pl.List(pl.UInt16)),
            "bitset": pl.Series(bits, dtype=pl.Array(pl.UInt64, words)),
            "split": pl.Series([None if split is None else split.get(c) for c in manifest["chip"].to_list()], dtype=pl.String),
        }
    )
    frame.write_parquet(chips / f"{name}.parquet")
    (chips / f"{name}.json").write_text(json.dumps({"classes": CLASSES, "n_classes": n_classes, "words": words, "synthetic": True}))
    dense = frame.filter(pl.col("nodata_class") != "no_data")
    csv = pl.DataFrame(
        {"Feature": dense["path"], **{c: [int(k in ids) for ids in dense["label_ids"].to_list()] for k, c in enumerate(CLASSES)}}
    )
    csv.write_csv(chips / f"{name}.csv")
    return chips / f"{name}.parquet"
