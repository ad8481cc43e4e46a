"""`imagesim similar`: query an index by example chips, GeoJSON of the results, precision@k.

A query names chips (``Z10-<quadkey>_<catalog-id>.jpg``) or chip quadkeys; a quadkey stands for
the mean of all its acquisitions. The query vector is mean(positives) − mean(negatives), each
example first averaged over its acquisitions and normalised, the result normalised again.
Results never include the examples' quadkeys (positives and negatives, every acquisition), nor, by
default, chips less than ``options.MIN_VALID`` valid (mostly no-data border; chips without a
measured valid fraction are kept).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from imagesim import options
from imagesim.artefacts import CLOUD_FRACTION, VALID_FRACTION
from imagesim.errors import InvalidArgumentError, LabelInputError
from imagesim.fsutil import write_json
from imagesim.search.index import LoadedIndex, chip_footprint

K_MAX = options.K_RANGE[1]
_QUADKEY_DIGITS = set("0123")


@dataclass
class Hit:
    rank: int
    score: float
    chip: str
    path: str
    zone: int
    quadkey: str
    catalog_id: str
    lon: float
    lat: float
    labels: list[str]
    cloud_fraction: float | None = None  # share of the chip's valid area under the ARD cloud mask (None: unknown)
    valid_fraction: float | None = None  # share of the chip's pixels that are not no-data, measured by encode (None: unknown)


@dataclass
class SimilarResult:
    positives: list[str]
    negatives: list[str]
    k: int
    exclude_same_cell: bool
    hits: list[Hit]
    excluded: int = 0  # indexed chips left out: the examples' quadkeys (and cells, with exclude_same_cell)
    indexed: int = 0  # chips in the index
    max_cloud: float | None = None
    cloudy: int = 0  # indexed chips left out by `max_cloud`
    min_valid: float | None = None
    low_valid: int = 0  # indexed chips left out by `min_valid` (and not already by the examples or `max_cloud`)

    @property
    def nothing_found(self) -> bool:
        """No result: every chip of the index is one of the examples' quadkeys (or cells)."""
        return not self.hits

    def to_json(self) -> dict[str, Any]:
        return {
            "query": {
                "positives": self.positives,
                "negatives": self.negatives,
                "k": self.k,
                "exclude_same_cell": self.exclude_same_cell,
                "max_cloud": self.max_cloud,
                "min_valid": self.min_valid,
            },
            "results": [asdict(h) for h in self.hits],
        }


def check_k(k: int) -> int:
    """``k`` when it is 1..10,000 (``options.K_RANGE``), else an InvalidArgumentError naming `k`."""
    options.check_range("k", k, *options.K_RANGE, what="the number of results")
    return k


def resolve(index: LoadedIndex, ref: str) -> np.ndarray:
    """Rows of the index a reference names: a chip file name (a path to it is fine) or a chip quadkey."""
    name = Path(ref.strip()).name
    if name and set(name) <= _QUADKEY_DIGITS:
        rows = index.ids.filter(pl.col("quadkey") == name)["row"].to_numpy()
        if rows.size == 0:
            zooms = sorted(set(index.ids["quadkey"].str.len_chars().unique().to_list()))
            raise InvalidArgumentError(
                f"no chip with quadkey {name} in the index {index.folder} (its chip quadkeys have {'/'.join(map(str, zooms))} digits)"
            )
        return rows.astype(np.int64)
    chip = name if name.lower().endswith(".jpg") else f"{name}.jpg"
    row = index.row_of_chip(chip)
    if row is None:
        raise InvalidArgumentError(
            f"chip {ref} is not in the index {index.folder} (expected a chip file name like Z10-<quadkey>_<catalog-id>.jpg or a chip quadkey)"
        )
    return np.array([row], dtype=np.int64)


def _unit(v: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(v))
    return v / n if n > 1e-12 else v


def example_vector(index: LoadedIndex, rows: np.ndarray) -> np.ndarray:
    """One example: the normalised mean of its rows (acquisitions)."""
    return _unit(index.vectors(rows).mean(axis=0))


def query_vector(index: LoadedIndex, positives: list[np.ndarray], negatives: list[np.ndarray]) -> np.ndarray:
    """mean(positives) − mean(negatives), normalised (examples normalised first)."""
    q = np.mean([example_vector(index, r) for r in positives], axis=0)
    if negatives:
        q = q - np.mean([example_vector(index, r) for r in negatives], axis=0)
    norm = float(np.linalg.norm(q))
    if norm < 1e-6:
        raise InvalidArgumentError("the negatives cancel the positives (query vector is zero); use different examples")
    return (q / norm).astype(np.float32)


def similar(
    index: LoadedIndex,
    positives: list[str],
    negatives: list[str] | None = None,
    *,
    k: int = options.K,
    exclude_same_cell: bool = False,
    max_cloud: float | None = None,
    min_valid: float | None = options.MIN_VALID,
) -> SimilarResult:
    """The ``k`` chips most similar to the examples, best first; ``max_cloud`` leaves out chips with a larger
    ARD cloud fraction, ``min_valid`` chips with a smaller valid (not no-data) fraction (chips without
    one are kept by both; None: no filter)."""
    check_k(k)
    if max_cloud is not None:
        options.check_range("max_cloud", max_cloud, *options.FRACTION_RANGE, what="a share of the chip's valid area")
    if min_valid is not None:
        options.check_range("min_valid", min_valid, *options.FRACTION_RANGE, what="a share of the chip's pixels")
    negatives = list(negatives or [])
    if not positives:
        raise InvalidArgumentError("name at least one chip or quadkey to search from")
    pos_rows = [resolve(index, r) for r in positives]
    neg_rows = [resolve(index, r) for r in negatives]
    q = query_vector(index, pos_rows, neg_rows)

    ids = index.ids
    all_rows = np.concatenate(pos_rows + neg_rows)
    quadkeys = set(ids["quadkey"].gather(all_rows).to_list())
    excluded = ids["quadkey"].is_in(list(quadkeys))
    if exclude_same_cell:
        cells = set(ids["cell"].gather(np.concatenate(pos_rows)).to_list())
        excluded = excluded | ids["cell"].is_in(list(cells))
    cloudy = 0
    if max_cloud is not None:
        too_cloudy = (ids[CLOUD_FRACTION] > max_cloud).fill_null(False)
        cloudy = int((too_cloudy & ~excluded).sum())
        excluded = excluded | too_cloudy
    low_valid = 0
    if min_valid is not None and VALID_FRACTION in ids.columns:  # (load_index always adds the column)
        too_empty = (ids[VALID_FRACTION] < min_valid).fill_null(False)
        low_valid = int((too_empty & ~excluded).sum())
        excluded = excluded | too_empty
    excluded_np = excluded.to_numpy()
    n_excluded = int(excluded_np.sum())
    # Ask for a few more than k and widen (×4) while excluded rows crowd the answer: asking for k + every
    # excluded row at once (millions when a filter leaves out a share of 10^7 chips) costs a huge search.
    # k + n_excluded rows always hold k kept ones, so the widening ends there at the latest.
    fetch = min(index.n, k + n_excluded, max(2 * k, k + 64))
    while True:
        scores, rows = index.search(q[None], fetch)
        keep = [(float(s), int(r)) for s, r in zip(scores[0], rows[0]) if r >= 0 and not excluded_np[r]][:k]
        if len(keep) >= k or fetch >= min(index.n, k + n_excluded):
            break
        fetch = min(index.n, k + n_excluded, fetch * 4)

    hits = []
    if keep:
        sub = ids[[r for _, r in keep]]
        for rank, ((score, _), rec) in enumerate(zip(keep, sub.iter_rows(named=True)), start=1):
            hits.append(
                Hit(
                    rank,
                    round(score, 6),
                    rec["chip"],
                    rec["path"],
                    int(rec["zone"]),
                    rec["quadkey"],
                    rec["catalog_id"],
                    round(float(rec["lon"]), 7),
                    round(float(rec["lat"]), 7),
                    list(rec["predicted"] or []),
                    None if rec[CLOUD_FRACTION] is None else round(float(rec[CLOUD_FRACTION]), 4),
                    None if rec.get(VALID_FRACTION) is None else round(float(rec[VALID_FRACTION]), 4),
                )
            )
    return SimilarResult(
        list(positives),
        negatives,
        k,
        exclude_same_cell,
        hits,
        n_excluded - cloudy - low_valid,
        index.n,
        max_cloud,
        cloudy,
        min_valid,
        low_valid,
    )


def geojson(result: SimilarResult) -> dict[str, Any]:
    """A FeatureCollection of the result chips' footprints (WGS84 polygons) for QGIS and friends."""
    features = [
        {
            "type": "Feature",
            "id": h.rank,
            "geometry": {"type": "Polygon", "coordinates": [chip_footprint(h.zone, h.quadkey)]},
            "properties": {
                "rank": h.rank,
                "score": h.score,
                "chip": h.chip,
                "zone": h.zone,
                "quadkey": h.quadkey,
                "catalog_id": h.catalog_id,
                "labels": ", ".join(h.labels),
                "cloud_fraction": h.cloud_fraction,
                "valid_fraction": h.valid_fraction,
            },
        }
        for h in result.hits
    ]
    return {"type": "FeatureCollection", "features": features}


def write_geojson(path: str | Path, result: SimilarResult) -> None:
    write_json(path, geojson(result))


# --- quality: precision@k ---


@dataclass
class PrecisionResult:
    k: int
    precision: float  # mean share of a chip's k neighbours that carry its dominant label
    baseline: float  # the same share for k chips drawn at random (frequency of the dominant label)
    queries: int  # chips evaluated
    labelled: int  # indexed chips with a row in the labels
    per_class: dict[str, dict[str, float]]
    # by the query chip's no-data class (the labels' nodata_class: all_data, partial_data): queries,
    # precision and baseline; empty when the labels carry no class
    by_nodata_class: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def lift(self) -> float:
        return self.precision / self.baseline if self.baseline > 0 else float("inf")

    def line(self) -> str:
        by_class = ""
        if "partial_data" in self.by_nodata_class:
            by_class = "; " + ", ".join(
                f"{name} {v['precision']:.3f} ({int(v['queries']):,} chips)" for name, v in sorted(self.by_nodata_class.items())
            )
        return (
            f"precision@{self.k} {self.precision:.3f} vs random {self.baseline:.3f} ({self.lift:.1f}×) "
            f"over {self.queries:,} chips (dominant label: the chip's rarest label){by_class}"
        )

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "lift": self.lift}


def _labels_frame(labels: Any) -> tuple[pl.DataFrame, list[str]]:
    """(chip, label_ids, nodata_class) and the class names from a labels path, a ``Labels`` or a DataFrame
    (nodata_class null where the labels do not carry it)."""
    if isinstance(labels, (str, Path)):
        from imagesim.artefacts import read_labels

        labels = read_labels(labels)
    if isinstance(labels, pl.DataFrame):
        table, classes = labels, None
    else:
        table, classes = labels.table, list(labels.classes)
    for col in ("chip", "label_ids"):
        if col not in table.columns:
            raise LabelInputError(f"labels have no column {col!r}")
    nodata_class = (
        pl.col("nodata_class").cast(pl.String) if "nodata_class" in table.columns else pl.lit(None, pl.String).alias("nodata_class")
    )
    table = table.select("chip", pl.col("label_ids").cast(pl.List(pl.Int64)), nodata_class)
    if classes is None:
        top = table["label_ids"].explode().drop_nulls().to_numpy()
        classes = [str(i) for i in range(int(top.max()) + 1 if top.size else 0)]
    return table, classes


def precision_at_k(
    index: LoadedIndex | str | Path, labels: Any, k: int = options.K, *, sample: int = options.EVAL_SAMPLE, seed: int = 0
) -> PrecisionResult:
    """precision@k of the index against labels, and the random baseline.

    For each evaluated chip (all labelled chips of the index, or a random ``sample`` of them) its
    dominant label is its rarest label (fewest chips among the labelled indexed chips), the most
    specific thing it shows. Its k nearest neighbours are taken among the labelled chips, leaving
    out itself and other acquisitions of its quadkey; precision is the share of them that carry the
    dominant label. The baseline is what k random chips would score: the dominant label's
    frequency among the other labelled chips. Both are averaged over the evaluated chips; chips
    without any label are not evaluated (they still count as neighbours that do not match). Where the
    labels carry each chip's ``nodata_class``, both are also reported per class of the query chip
    (``by_nodata_class``: do partial chips find their kind as well as whole ones?).
    """
    from imagesim.search.index import load_index

    if not isinstance(index, LoadedIndex):
        index = load_index(index)
    check_k(k)
    options.check_range("sample", sample, *options.EVAL_SAMPLE_RANGE)
    table, classes = _labels_frame(labels)
    ids = index.ids.select("row", "chip", "quadkey")
    joined = ids.join(table, on="chip", how="inner").sort("row")
    if joined.height == 0:
        raise LabelInputError(f"none of the {index.n:,} chips of {index.folder} has labels; are they of the same chips?")
    n_classes = len(classes)
    labelled = np.zeros(index.n, dtype=bool)
    rows = joined["row"].to_numpy().astype(np.int64)
    labelled[rows] = True
    # sets of label ids per index row (only labelled rows)
    label_sets: dict[int, set[int]] = {int(r): set(ls) for r, ls in zip(rows.tolist(), joined["label_ids"].to_list())}
    nodata_of: dict[int, str | None] = dict(zip(rows.tolist(), joined["nodata_class"].to_list()))
    counts = np.zeros(max(n_classes, 1), dtype=np.int64)
    for ls in label_sets.values():
        for c in ls:
            if c >= len(counts):
                counts = np.pad(counts, (0, c + 1 - len(counts)))
            counts[c] += 1
    n_lab = len(label_sets)

    candidates = np.array([r for r in rows.tolist() if label_sets[r]], dtype=np.int64)
    if candidates.size == 0:
        raise LabelInputError("no indexed chip carries a label; nothing to evaluate")
    rng = np.random.default_rng(seed)
    queries = (
        np.sort(rng.choice(candidates, min(sample, candidates.size), replace=False)) if sample and candidates.size > sample else candidates
    )

    quadkey = index.ids["quadkey"].to_numpy()
    dup = int(index.ids["quadkey"].value_counts()["count"].to_numpy().max())
    fetch = min(index.n, 3 * k + dup + 10)
    _, found = index.search(index.vectors(queries), fetch)

    precisions, baselines = [], []
    per_class: dict[int, list[tuple[float, float]]] = {}
    per_nodata: dict[str, list[tuple[float, float]]] = {}
    for q, neighbours in zip(queries.tolist(), found):
        dom = min(label_sets[q], key=lambda c: (counts[c], c))
        same_qk = quadkey[q]
        picked = [r for r in neighbours.tolist() if r >= 0 and labelled[r] and quadkey[r] != same_qk][:k]
        if not picked:
            continue
        p = sum(dom in label_sets[r] for r in picked) / len(picked)
        # other labelled chips carrying the label (the chip itself excluded)
        b = (counts[dom] - 1) / max(1, n_lab - 1)
        precisions.append(p)
        baselines.append(b)
        per_class.setdefault(dom, []).append((p, b))
        if nodata_of[q] is not None:
            per_nodata.setdefault(str(nodata_of[q]), []).append((p, b))
    if not precisions:
        raise LabelInputError("no evaluated chip has labelled neighbours")
    name = lambda c: classes[c] if c < len(classes) else str(c)  # noqa: E731
    return PrecisionResult(
        k=k,
        precision=float(np.mean(precisions)),
        baseline=float(np.mean(baselines)),
        queries=len(precisions),
        labelled=n_lab,
        per_class={
            name(c): {"queries": len(v), "precision": float(np.mean([p for p, _ in v])), "baseline": float(np.mean([b for _, b in v]))}
            for c, v in sorted(per_class.items())
        },
        by_nodata_class={
            name: {"queries": len(v), "precision": float(np.mean([p for p, _ in v])), "baseline": float(np.mean([b for _, b in v]))}
            for name, v in sorted(per_nodata.items())
        },
    )
