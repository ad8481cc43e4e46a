"""How well a change ranking finds known changes: precision and recall at k and average precision.

Known changes come as GeoJSON (RFC 7946, lon/lat): one feature per changed area, with ``zone`` and the
``after_date`` (or ``after_catalog_id``) of the acquisition that first shows it — what ``imagesim
sample-data`` writes as ``changes-truth.geojson``. A pair of acquisitions shows a change when the change
appeared after its before acquisition and no later than its after acquisition. A chip pair is *changed*
when known changes cover at least ``min_share`` of the chip; pairs touched by less are left out of the
scores (neither a hit nor a false alarm: a sliver of a change on a chip edge is not a miss either way).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from imagesim import grid
from imagesim.errors import ImagesimFileNotFoundError, InvalidArgumentError

__all__ = ["TruthChange", "read_truth", "truth_shares", "MethodScores", "evaluate_ranking", "evaluate_changes"]

MIN_SHARE = 0.02


@dataclass(frozen=True)
class TruthChange:
    geometry: Any  # shapely geometry in the zone's UTM metres
    zone: int
    kind: str
    after_date: str | None
    after_catalog_id: str | None


def read_truth(path: str | Path) -> list[TruthChange]:
    """The known changes of a GeoJSON file, reprojected to their zones' metres."""
    import shapely
    from pyproj import Transformer
    from shapely.geometry import shape

    path = Path(path)
    if not path.is_file():
        raise ImagesimFileNotFoundError(f"{path}: known changes (GeoJSON) not found")
    try:
        doc = json.loads(path.read_text())
        features = doc["features"] if isinstance(doc, dict) and doc.get("type") == "FeatureCollection" else None
    except (OSError, ValueError) as exc:
        raise InvalidArgumentError(f"{path}: not readable GeoJSON ({exc})") from None
    if not isinstance(features, list):
        raise InvalidArgumentError(f"{path}: not a GeoJSON FeatureCollection")
    out = []
    transformers: dict[int, Any] = {}
    for i, feat in enumerate(features):
        props = (feat or {}).get("properties") or {}
        try:
            zone = int(props["zone"])
            geom = shape(feat["geometry"])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InvalidArgumentError(f"{path}: feature {i} has no usable geometry or `zone` property ({exc})") from None
        # the cell's CRS (north or south of the equator: grid.epsg decides from the quadkey)
        epsg = grid.epsg(str(props["cell"]), zone) if props.get("cell") else 32600 + zone
        if epsg not in transformers:
            transformers[epsg] = Transformer.from_crs(4326, epsg, always_xy=True)
        tr = transformers[epsg]
        utm = shapely.transform(geom, lambda xy, tr=tr: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))
        if not utm.is_valid:
            utm = shapely.make_valid(utm)
        out.append(
            TruthChange(
                utm,
                zone,
                str(props.get("kind", "")),
                str(props["after_date"])[:10] if props.get("after_date") else None,
                str(props["after_catalog_id"]) if props.get("after_catalog_id") else None,
            )
        )
    return out


def truth_shares(pairs: pl.DataFrame, truth: list[TruthChange]) -> np.ndarray:
    """Per pair (``zone, quadkey, before_date, after_date, after_catalog_id``), the share of its chip that
    known changes which appeared between its two acquisitions cover."""
    import shapely

    shares = np.zeros(pairs.height)
    if not truth:
        return shares
    tree = shapely.STRtree([t.geometry for t in truth])
    for i, row in enumerate(pairs.select("zone", "quadkey", "before_date", "after_date", "after_catalog_id").iter_rows()):
        zone, qk, b_date, a_date, a_id = row
        w, s, e, n = grid.bounds(qk)
        chip = shapely.box(w, s, e, n)
        hits = [
            truth[j]
            for j in tree.query(chip, predicate="intersects").tolist()
            if truth[j].zone == zone
            and (
                (truth[j].after_catalog_id is not None and truth[j].after_catalog_id == a_id)
                or (
                    truth[j].after_date is not None
                    and (b_date is None or truth[j].after_date > b_date)
                    and truth[j].after_date <= (a_date or "")
                )
            )
        ]
        if hits:
            shares[i] = shapely.union_all([h.geometry for h in hits]).intersection(chip).area / chip.area
    return shares


@dataclass
class MethodScores:
    method: str
    k: int  # the number of changed pairs among those scored
    precision_at_k: float
    recall_at_k: float
    average_precision: float
    false_alarms_in_top_k: list[str] = field(default_factory=list)  # quadkeys of unchanged pairs ranked in the top k


def evaluate_ranking(values: np.ndarray, changed: np.ndarray, keys: list[str], method: str) -> MethodScores:
    """Scores of one ranking (``values``: higher = more changed; NaN ranks last) of labelled pairs."""
    order = np.argsort(-np.nan_to_num(values, nan=-np.inf), kind="stable")
    hits = changed[order]
    k = int(changed.sum())
    if k == 0:
        return MethodScores(method, 0, float("nan"), float("nan"), float("nan"))
    cum = np.cumsum(hits)
    precision = cum / np.arange(1, len(hits) + 1)
    ap = float((precision * hits).sum() / k)
    top = order[:k]
    return MethodScores(
        method,
        k,
        float(cum[k - 1] / k),
        float(cum[k - 1] / k),
        ap,
        [keys[int(i)] for i in top if not changed[int(i)]],
    )


def evaluate_changes(table: pl.DataFrame, truth: list[TruthChange], min_share: float = MIN_SHARE) -> dict[str, Any]:
    """Precision/recall at k and average precision of each ranking ``table`` (``imagesim change`` output) holds."""
    shares = truth_shares(table, truth)
    labelled = (shares >= min_share) | (shares == 0)
    changed = shares >= min_share
    keys = table["quadkey"].to_list()
    sub_keys = [k for k, keep in zip(keys, labelled) if keep]
    rankings = {"embedding": "embedding_distance", "pixel": "pixel_change", "combined": "score"}
    methods = []
    for name, column in rankings.items():
        col = table[column]
        if col.null_count() == table.height:
            continue
        values = col.cast(pl.Float64).fill_null(float("nan")).to_numpy()[labelled]
        methods.append(evaluate_ranking(values, changed[labelled], sub_keys, name))
    return {
        "pairs": table.height,
        "changed": int(changed.sum()),
        "ambiguous": int((~labelled).sum()),
        "min_share": min_share,
        "known_changes": len(truth),
        "methods": methods,
    }
