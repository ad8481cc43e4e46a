"""`imagesim labels report`: pictures and a short Markdown summary of a label set.

Writes into the report folder:

- ``class_counts.png``: chips per class (and share of chips), the label distribution;
- ``cardinality.png``: how many labels chips carry;
- ``cooccurrence.png``: co-occurrence counts and the correlation (phi) between classes;
- ``samples.png``: a grid of chips with their labels written on them and the OSM features of each
  labelled class outlined in the class colour (from the cell's ``osm_data.json``);
- ``report.md``: the numbers behind the figures, the split if one was made.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imagesim import _imagesim, grid, options
from imagesim.artefacts import LABELS_JSON, LABELS_REPORT, OSM_DATA, Labels, read_labels
from imagesim.errors import LabelInputError
from imagesim.fsutil import write_with
from imagesim.labels.build import wgs84_to
from imagesim.labels.geometry import AREA, features_from_osm
from imagesim.labels.taxonomy import parse_taxonomy

FIGURES = ("class_counts.png", "cardinality.png", "cooccurrence.png", "samples.png")


@dataclass
class ReportSummary:
    out_dir: Path
    files: list[Path]
    chips: int
    classes: int

    def line(self) -> str:
        return f"labels report: {self.chips} chips, {self.classes} classes; {len(self.files)} files in {self.out_dir}"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> None:
    write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))


def write_report(
    labels_path: str | Path,
    out_dir: str | Path | None = None,
    samples: int = options.REPORT_SAMPLES,
    seed: int = 0,
    chips_dir: str | Path | None = None,
) -> ReportSummary:
    labels = read_labels(labels_path)
    if labels.table.height == 0:
        raise LabelInputError(f"{labels.path}: no chips to report on")
    if not (labels.table["label_ids"].list.len() > 0).any():
        raise LabelInputError(
            f"{labels.path}: none of its {labels.table.height} chips has a label; nothing to report (see `imagesim labels build`'s summary)"
        )
    out = Path(out_dir) if out_dir else labels.path.parent / LABELS_REPORT
    out.mkdir(parents=True, exist_ok=True)
    chips_root = Path(chips_dir) if chips_dir else Path(labels.meta.get("chips_dir") or labels.path.parent)
    plt = _pyplot()
    dense = labels.dense()
    co = _imagesim.label_cooccurrence(labels.bits, len(labels.classes)).astype(np.float64)
    n = dense.shape[0]
    counts = dense.sum(axis=0)
    colours = _colours(len(labels.classes))

    # Label distribution.
    order = np.argsort(-counts, kind="stable")
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(labels.classes) + 1.2))
    ax.barh([labels.classes[i] for i in order][::-1], counts[order][::-1], color=[colours[i] for i in order][::-1])
    for y, i in enumerate(order[::-1]):
        ax.text(counts[i], y, f" {counts[i]:,} ({counts[i] / n:.1%})", va="center", fontsize=8)
    ax.set_xlabel("chips")
    ax.set_title(f"Chips per class ({n:,} chips)")
    ax.set_xlim(0, max(counts.max(), 1) * 1.3)
    _save(fig, out / FIGURES[0])
    plt.close(fig)

    # Cardinality.
    card = dense.sum(axis=1)
    fig, ax = plt.subplots(figsize=(6, 3.2))
    values, freq = np.unique(card, return_counts=True)
    ax.bar(values, freq, color="#4c72b0")
    ax.set_xlabel("labels per chip")
    ax.set_ylabel("chips")
    ax.set_title(f"Label cardinality (mean {card.mean():.2f})")
    ax.set_xticks(range(0, int(values.max()) + 1))
    _save(fig, out / FIGURES[1])
    plt.close(fig)

    # Co-occurrence and correlation.
    phi = _phi(co, n)
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.6))
    for ax, data, title, cmap, vmin, vmax in (
        (axes[0], co, "co-occurrence (chips)", "viridis", 0, None),
        (axes[1], phi, "correlation (phi)", "RdBu_r", -1, 1),
    ):
        im = ax.imshow(data, cmap=cmap, vmin=vmin, vmax=vmax)
        ax.set_xticks(range(len(labels.classes)), labels.classes, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(len(labels.classes)), labels.classes, fontsize=8)
        ax.set_title(title)
        fig.colorbar(im, ax=ax, fraction=0.046)
    _save(fig, out / FIGURES[2])
    plt.close(fig)

    # Sample chips with their labels drawn on.
    picks = pick_samples(dense, samples, seed)
    _samples_figure(plt, labels, picks, chips_root, colours, out / FIGURES[3])

    md = _markdown(labels, counts, card, co, phi, n)
    write_with(out / "report.md", lambda tmp: tmp.write_text(md))
    return ReportSummary(out, [out / f for f in FIGURES] + [out / "report.md"], n, len(labels.classes))


def pick_samples(dense: np.ndarray, k: int, seed: int) -> list[int]:
    """Up to ``k`` chips: one per class first (rarest first, so rare classes are shown), then random."""
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for j in np.argsort(dense.sum(axis=0), kind="stable"):
        rows = np.flatnonzero(dense[:, j])
        rows = rows[~np.isin(rows, chosen)]
        if len(rows) and len(chosen) < k:
            chosen.append(int(rng.choice(rows)))
    rest = np.setdiff1d(np.arange(dense.shape[0]), chosen)
    if len(chosen) < k and len(rest):
        chosen += rng.choice(rest, size=min(k - len(chosen), len(rest)), replace=False).tolist()
    return chosen


def _phi(co: np.ndarray, n: int) -> np.ndarray:
    """Pearson correlation of binary labels from the co-occurrence counts."""
    p = np.diag(co) / max(n, 1)
    joint = co / max(n, 1)
    denom = np.sqrt(np.outer(p * (1 - p), p * (1 - p)))
    with np.errstate(invalid="ignore", divide="ignore"):
        phi = (joint - np.outer(p, p)) / denom
    return np.nan_to_num(phi, nan=0.0)


def _colours(n: int) -> list[Any]:
    import matplotlib

    cmap = matplotlib.colormaps["tab20"]
    return [cmap(i % 20) for i in range(n)]


def _samples_figure(plt: Any, labels: Labels, picks: list[int], chips_root: Path, colours: list[Any], path: Path) -> None:
    from PIL import Image

    cols = 4
    rows = max(1, -(-len(picks) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 4.3 * rows), squeeze=False)
    taxonomy_doc = labels.meta.get("taxonomy", {})
    ard = Path(labels.meta.get("ard_path", ""))
    outlines = _OutlineSource(ard, taxonomy_doc)
    table = labels.table
    for ax in axes.flat:
        ax.axis("off")
    for ax, r in zip(axes.flat, picks):
        row = table.row(r, named=True)
        ids = list(row["label_ids"])
        img_path = chips_root / row["path"]
        try:
            with Image.open(img_path) as im:
                img = np.asarray(im.convert("RGB"))
        except OSError:
            ax.text(0.5, 0.5, f"missing chip\n{row['chip']}", ha="center", va="center", fontsize=8, transform=ax.transAxes)
            continue
        h, w = img.shape[:2]
        ax.imshow(img, extent=(0, w, h, 0))
        for cls_id, geom in outlines.clipped(row, ids):
            _draw(ax, geom, row["quadkey"], w, h, colours[cls_id])
        ax.set_xlim(0, w)
        ax.set_ylim(h, 0)
        names = [labels.classes[i] for i in ids] or ["(no label)"]
        ax.set_title(row["chip"], fontsize=7)
        for k, name in enumerate(names):
            colour = colours[ids[k]] if ids else "white"
            ax.text(
                0.02,
                0.98 - 0.085 * k,
                name,
                fontsize=8,
                color="black",
                va="top",
                transform=ax.transAxes,
                bbox=dict(facecolor=colour, alpha=0.85, pad=1.5, edgecolor="none"),
            )
    _save(fig, path)
    plt.close(fig)


class _OutlineSource:
    """The OSM features of a chip's labelled classes, clipped to the chip, in chip metres."""

    def __init__(self, ard: Path, taxonomy_doc: dict[str, Any]) -> None:
        self.ard = ard
        self.cache: dict[tuple[int, str], Any] = {}
        self.taxonomy = _taxonomy_from_meta(taxonomy_doc)

    def clipped(self, row: dict[str, Any], ids: list[int]) -> list[tuple[int, Any]]:
        import shapely

        if self.taxonomy is None or not ids:
            return []
        key = (int(row["zone"]), row["cell"])
        if key not in self.cache:
            path = self.ard / str(key[0]) / key[1] / OSM_DATA
            try:
                data = json.loads(path.read_text())
                self.cache[key] = features_from_osm(data, self.taxonomy, wgs84_to(grid.epsg(key[1], key[0])))[0]
            except (OSError, ValueError):
                self.cache[key] = None
        feats = self.cache[key]
        if feats is None:
            return []
        box = shapely.box(*grid.bounds(row["quadkey"]))
        out = []
        for f, c in zip(feats.pair_feature, feats.pair_class):
            if int(c) not in ids:
                continue
            g = feats.geoms[f]
            cls = self.taxonomy.classes[int(c)]
            if feats.kinds[f] != AREA:
                g = g.buffer(cls.line_buffer_m or cls.point_buffer_m or 1.0)
            if g.intersects(box):
                out.append((int(c), g.intersection(box)))
        return out


def _taxonomy_from_meta(doc: dict[str, Any]):
    """The taxonomy recorded in labels.json (so outlines follow the rules that made the labels)."""
    if not doc.get("toml"):
        return None
    try:
        return parse_taxonomy(doc["toml"], LABELS_JSON)
    except ValueError:
        return None


def _draw(ax: Any, geom: Any, quadkey: str, w: int, h: int, colour: Any) -> None:
    import shapely

    west, south, east, north = grid.bounds(quadkey)
    sx, sy = w / (east - west), h / (north - south)
    for poly in shapely.get_parts(geom):
        if not isinstance(poly, shapely.Polygon):
            continue
        for ring in [poly.exterior, *poly.interiors]:
            xy = np.asarray(ring.coords)
            ax.plot((xy[:, 0] - west) * sx, (north - xy[:, 1]) * sy, color=colour, linewidth=1.2)


def _markdown(labels: Labels, counts: np.ndarray, card: np.ndarray, co: np.ndarray, phi: np.ndarray, n: int) -> str:
    meta = labels.meta
    lines = [
        "# Label report",
        "",
        f"- labels: `{labels.path}` ({n:,} chips, {len(labels.classes)} classes, taxonomy `{meta.get('taxonomy', {}).get('source', '?')}`)",
        f"- chips with at least one label: {int((card > 0).sum()):,} ({(card > 0).mean():.1%})",
        f"- label cardinality: mean {card.mean():.2f}, max {int(card.max())}",
    ]
    excluded = meta.get("excluded") or {}
    if excluded:
        lines.append("- left out: " + ", ".join(f"{v:,} {k}" for k, v in excluded.items()))
    if meta.get("missing_osm_cells"):
        lines.append(f"- cells without OSM data: {', '.join(meta['missing_osm_cells'])}")
    lines += [
        "",
        "| class | chips | share |" + (" train | val |" if meta.get("split") else ""),
        "|---|---:|---:|" + ("---:|---:|" if meta.get("split") else ""),
    ]
    split_counts = (meta.get("split") or {}).get("class_counts", {})
    for j, name in enumerate(labels.classes):
        row = f"| {name} | {int(counts[j]):,} | {counts[j] / n:.1%} |"
        if split_counts:
            row += f" {split_counts.get(name, {}).get('train', 0):,} | {split_counts.get(name, {}).get('val', 0):,} |"
        lines.append(row)
    pairs = [
        (phi[i, j], labels.classes[i], labels.classes[j], int(co[i, j]))
        for i in range(len(labels.classes))
        for j in range(i + 1, len(labels.classes))
        if co[i, j] > 0
    ]
    pairs.sort(reverse=True)
    if pairs:
        lines += ["", "Most correlated classes (phi, chips together):", ""]
        lines += [f"- {a} + {b}: {p:+.2f} ({c:,})" for p, a, b, c in pairs[:8]]
    if meta.get("split"):
        s = meta["split"]
        lines += [
            "",
            f"Split: {s['train_chips']:,} train / {s['val_chips']:,} val chips, groups at quadkey level "
            f"{s['group_level']} ({s['train_groups']} train, {s['val_groups']} val), seed {s['seed']}.",
        ]
    absent = [name for j, name in enumerate(labels.classes) if counts[j] == 0]
    if absent:
        lines += ["", f"Classes with no chip: {', '.join(absent)}."]
    lines += [
        "",
        "![class counts](class_counts.png)",
        "",
        "![cardinality](cardinality.png)",
        "",
        "![co-occurrence](cooccurrence.png)",
        "",
        "![samples](samples.png)",
        "",
    ]
    return "\n".join(lines)
