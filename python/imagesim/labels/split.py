"""`imagesim labels split`: a train/validation split that keeps neighbouring chips together.

Neighbouring chips overlap in content (a field, a road, a town continue across chip edges), so a
random chip split leaks near-duplicates into validation and flatters the model. Whole groups of
chips go to one side: the chips of one quadkey at ``group_level`` (12: the ARD cell, 5 km; 13:
2.5 km; 14: 1.25 km …) in one UTM zone. Groups are shuffled with the seed and taken for validation
until the requested share of chips is reached.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from imagesim import options
from imagesim.artefacts import LABELS_JSON, LABELS_TRAIN_CSV, LABELS_VAL_CSV, read_labels
from imagesim.errors import LabelInputError
from imagesim.fsutil import write_json, write_with
from imagesim.geoparquet import write_geoparquet


@dataclass
class SplitSummary:
    path: Path
    group_level: int
    groups: int
    train_groups: int
    val_groups: int
    train: int
    val: int
    class_counts: dict[str, dict[str, int]] = field(default_factory=dict)  # class -> {"train": n, "val": n}

    @property
    def val_share(self) -> float:
        return self.val / max(self.train + self.val, 1)

    def missing_in_val(self) -> list[str]:
        """Classes present in training but absent from validation (their metrics will be empty)."""
        return [k for k, c in self.class_counts.items() if c["train"] > 0 and c["val"] == 0]

    def line(self) -> str:
        return (
            f"labels split: {self.train} train / {self.val} val chips ({self.val_share:.1%} val) from "
            f"{self.groups} groups at quadkey level {self.group_level} "
            f"({self.train_groups} train, {self.val_groups} val)"
        )


def split_labels(
    path: str | Path, val: float = options.SPLIT_VAL, seed: int = 0, group_level: int = options.SPLIT_GROUP_LEVEL
) -> SplitSummary:
    """Fill the ``split`` column of labels.parquet and write ``labels-train.csv`` / ``labels-val.csv``."""
    options.check_range("val", val, 0, 1, exclusive=True, what="the validation share")
    labels = read_labels(path)
    table = labels.table
    if table.height == 0:
        raise LabelInputError(f"{labels.path}: no labelled chips to split")
    if not (table["label_ids"].list.len() > 0).any():
        raise LabelInputError(
            f"{labels.path}: none of its {table.height} chips has a label; nothing to split (see `imagesim labels build`'s summary)"
        )
    zoom = int(table["quadkey"].str.len_chars().to_numpy().max())
    options.check_range("group_level", group_level, 1, zoom, what="the quadkey level of the groups (12: one ARD cell)")
    group = pl.concat_str(pl.col("zone").cast(pl.String), pl.lit("/"), pl.col("quadkey").str.slice(0, group_level))
    sizes = table.group_by(group.alias("group")).len().sort("group")
    if sizes.height < 2:
        raise LabelInputError(
            f"{labels.path}: all {table.height} chips are in one quadkey at level {group_level}; "
            f"give a finer `group_level` (e.g. {min(group_level + 2, zoom)})"
        )
    rng = np.random.default_rng(seed)
    order = rng.permutation(sizes.height)
    counts = sizes["len"].to_numpy()[order]
    target = val * table.height
    # Take shuffled groups until the share is reached, the last one only if it gets closer.
    before = np.cumsum(counts) - counts
    take = before < target
    last = int(np.flatnonzero(take)[-1])
    if last > 0 and abs(before[last] - target) < abs(before[last] + counts[last] - target):
        take[last] = False
    take[-1] = False if take.all() else take[-1]  # leave at least one group for training
    val_groups = set(sizes["group"].to_numpy()[order][take].tolist())
    table = table.with_columns(pl.when(group.is_in(list(val_groups))).then(pl.lit("val")).otherwise(pl.lit("train")).alias("split"))
    dense = labels.dense()
    is_val = (table["split"] == "val").to_numpy()
    summary = SplitSummary(
        path=labels.path,
        group_level=group_level,
        groups=sizes.height,
        train_groups=sizes.height - len(val_groups),
        val_groups=len(val_groups),
        train=int((~is_val).sum()),
        val=int(is_val.sum()),
        class_counts={
            name: {"train": int(dense[~is_val, j].sum()), "val": int(dense[is_val, j].sum())} for j, name in enumerate(labels.classes)
        },
    )
    write_geoparquet(table, labels.path)  # keeps labels.parquet GeoParquet
    base = labels.path.parent
    for side, mask in (("train", ~is_val), ("val", is_val)):
        csv = pl.DataFrame({"Feature": table["path"].filter(pl.Series(mask))}).hstack(
            [pl.Series(name, dense[mask, j], dtype=pl.UInt8) for j, name in enumerate(labels.classes)]
        )
        write_with(base / {"train": LABELS_TRAIN_CSV, "val": LABELS_VAL_CSV}[side], csv.write_csv)
    meta: dict[str, Any] = dict(labels.meta)
    meta["split"] = {
        "val": val,
        "seed": seed,
        "group_level": group_level,
        "groups": summary.groups,
        "train_groups": summary.train_groups,
        "val_groups": summary.val_groups,
        "train_chips": summary.train,
        "val_chips": summary.val,
        "class_counts": summary.class_counts,
    }
    write_json(base / LABELS_JSON, meta)
    return summary
