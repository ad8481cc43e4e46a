"""`imagesim change`: pair the acquisitions of every place, score each pair, rank, write.

Methods (``--method``): ``embedding`` (1 − cosine similarity of the two chips' embeddings: the table only,
no image read), ``pixel`` (:mod:`.pixels`: a radiometrically normalised pixel difference) and ``both``.
``both`` ranks by the pixel method's robust z-score plus half the embedding method's (:func:`rank_pairs`);
``score`` is the share of the scored pairs that rank at or below a pair.

Pairs are left out, counted by reason and never silently: ``cloudy`` (either chip's cloud + cloud-shadow
share above ``max_cloud``), ``no_data`` (less than ``min_compared`` of the chip compared), ``no_embedding``
(a chip without embedding, e.g. left out by ``encode --max-cloud``) and ``unreadable`` (a chip file
missing or corrupt: named in ``changes.json``). Outputs are written once, at the end, atomically, the
changes in row groups. The embedding method reads the vectors of ``PAIR_BATCH`` pairs at a time from the
embeddings files (:class:`~imagesim.artefacts.EmbeddingRows`), not every vector.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from imagesim import grid, options
from imagesim.artefacts import (
    CHANGE_METHODS,
    CHANGE_SCHEMA,
    CHANGES,
    MASK_FRACTION_COLUMNS,
    EmbeddingRows,
    iter_chip_table,
    read_chip_table,
    sidecar,
    with_data,
)
from imagesim.errors import ChangeError, ImagesimError, ImagesimFileNotFoundError, InvalidArgumentError, OutputExistsError
from imagesim.fsutil import atomic_path
from imagesim.geoparquet import STREAM_ROW_GROUP, GeoParquetStream, with_footprints
from imagesim.progress import ProgressFactory, open_progress
from imagesim.runner import Outcome, TaskRunner, cores
from imagesim.search.change.pairs import Choice, chip_pairs
from imagesim.search.change.pixels import PixelResult, PixelSettings, compare_pixels

__all__ = ["ChangeSettings", "ChangeSummary", "detect_changes", "embedding_distances", "LEFT_OUT_REASONS"]

LEFT_OUT_REASONS = ("cloudy", "no_data", "no_embedding", "unreadable")
EMBED_BATCH = 262_144
# The embedding method reads the vectors of this many pairs at a time from the embeddings files (at most
# twice as many vectors: 16 MB of 512 floats), in the order of the before chip's row: in files sorted by
# chip (as encode writes them) the two chips of a pair are near each other, so each window of rows
# (EmbeddingRows.WINDOW) is read about once.
PAIR_BATCH = 4_096
# --method both: the embedding method's weight beside the pixel method's (robust z-scores; see rank_pairs)
EMBEDDING_WEIGHT = 0.5


@dataclass(frozen=True)
class ChangeSettings:
    method: str = "both"
    before: Choice | None = None
    after: Choice | None = None
    max_cloud: float | None = (
        0.5  # cloud + cloud-shadow share of either chip above which the pair is left out (the pixel method masks the rest)
    )
    min_compared: float = 0.5  # the least share of the chip compared (valid in both, clear of clouds)
    embedding_weight: float = EMBEDDING_WEIGHT  # --method both: see rank_pairs
    pixel: PixelSettings = field(default_factory=PixelSettings)

    def check(self) -> None:
        options.check_choice("method", self.method, CHANGE_METHODS)
        if self.max_cloud is not None:
            options.check_range("max_cloud", self.max_cloud, *options.FRACTION_RANGE)
        options.check_range("min_compared", self.min_compared, *options.FRACTION_RANGE)
        options.check_range("embedding_weight", self.embedding_weight, 0.0)


@dataclass
class ChangeSummary:
    out: Path
    method: str
    pairs: int = 0  # pairs found
    scored: int = 0
    acquisition_pairs: list[str] = field(default_factory=list)  # "<before> → <after>" in the folder
    left_out: dict[str, int] = field(default_factory=dict)
    unreadable: list[str] = field(default_factory=list)  # "<chip>: <problem>" (first ones)
    notes: list[str] = field(default_factory=list)
    geojson: Path | None = None
    top: pl.DataFrame | None = None  # the top rows (rank order)
    seconds: float = 0.0

    def line(self) -> str:
        gone = ", ".join(f"{n:,} {why.replace('_', ' ')}" for why, n in self.left_out.items() if n)
        text = f"{self.scored:,} of {self.pairs:,} chip pairs scored ({self.method}) → {self.out}"
        if gone:
            text += f"; left out: {gone}"
        if self.geojson is not None:
            text += f"; top changes: {self.geojson}"
        return text + f" ({self.seconds:.1f} s)"


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


def _chips(chips_dir: Path, files: bool = True) -> pl.DataFrame:
    """Every chip with data, with what pairing and scoring need; ``files``: its ``path`` and ``source_cog``
    too (the pixel method reads them; left out, each pair is some hundred bytes less)."""
    cloud, shadow = MASK_FRACTION_COLUMNS["cloud"], MASK_FRACTION_COLUMNS["cloud_shadow"]
    files_of = ("source_cog",) if files else ()
    # an acquisition at a time: only chips with data are kept, and the whole manifest is never in memory
    extra = ("acquisition_date", *files_of, "valid_fraction", "written", cloud, shadow)
    frames = [with_data(part) for part in iter_chip_table(chips_dir, extra=extra)]
    table = pl.concat(frames) if frames else read_chip_table(chips_dir, extra=extra)
    return table.select(
        "chip",
        "zone",
        "quadkey",
        "zoom",
        "cell",
        "catalog_id",
        pl.col("acquisition_date").str.slice(0, 10).alias("date"),
        *(("path", "source_cog") if files else ()),
        pl.col("valid_fraction").alias("valid"),
        pl.when(pl.col(cloud).is_null() & pl.col(shadow).is_null())
        .then(None)
        .otherwise(pl.col(cloud).fill_null(0) + pl.col(shadow).fill_null(0))
        .alias("cloud"),
    )


def _model_ids(paths: Sequence[Path]) -> str | None:
    """The one model of the embeddings files; ChangeError when they hold embeddings of several."""
    seen: dict[str, str] = {}
    for path in paths:
        if not path.is_file():
            raise ImagesimFileNotFoundError(f"{path}: embeddings not found; run `imagesim encode` first")
        meta_path = sidecar(path)
        ids: list[str] = []
        try:
            if "model_id" in pl.read_parquet_schema(path):
                ids = [m for m in pl.scan_parquet(path).select("model_id").unique().collect()["model_id"].to_list() if m]
        except (OSError, pl.exceptions.PolarsError) as exc:
            raise InvalidArgumentError(f"{path}: cannot read embeddings ({exc})") from None
        if not ids and meta_path.is_file():
            try:
                meta = json.loads(meta_path.read_text())
            except (OSError, ValueError):
                meta = {}
            if isinstance(meta, dict) and meta.get("model_id"):
                ids = [str(meta["model_id"])]
        for model in ids:
            seen.setdefault(model, str(path))
    if len(seen) > 1:
        listed = "; ".join(f"{m} ({p})" for m, p in seen.items())
        raise ChangeError(
            f"embeddings of {len(seen)} different models: {listed}. Distances between two models' embeddings mean nothing: "
            "encode every acquisition with one model"
        )
    return next(iter(seen), None)


def _embeddings(paths: Sequence[Path]) -> tuple[pl.DataFrame, list[EmbeddingRows]]:
    """Chip names of one or more embeddings files, ``row`` numbering them across the files in order, and
    the files' readers (a chip in two files: ChangeError). No vector is read here."""
    readers = [EmbeddingRows(path) for path in paths]
    table = pl.concat([r.chips for r in readers]).to_frame("chip").with_row_index("row")
    dup = table["chip"].is_duplicated()
    if dup.any():
        raise ChangeError(f"chip {table['chip'].filter(dup)[0]} has an embedding in more than one of {', '.join(map(str, paths))}")
    if len({r.dim for r in readers}) > 1:
        raise ChangeError(f"embeddings of different lengths in {', '.join(map(str, paths))}: not one model")
    return table, readers


def _pair_rows(pairs: pl.DataFrame, names: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """The ``row`` of each pair's before and after chip in ``names`` (-1 where a chip has none)."""
    rows = names.select(pl.col("chip"), pl.col("row").cast(pl.Int64))
    idx = (
        pairs.select("before_chip", "after_chip")
        .with_row_index("pair")
        .join(rows.rename({"chip": "before_chip", "row": "b"}), on="before_chip", how="left")
        .join(rows.rename({"chip": "after_chip", "row": "a"}), on="after_chip", how="left")
        .sort("pair")
    )
    return idx["b"].fill_null(-1).to_numpy(), idx["a"].fill_null(-1).to_numpy()


def embedding_distances(pairs: pl.DataFrame, names: pl.DataFrame, vectors: np.ndarray) -> pl.Series:
    """1 − cosine similarity of each pair's two unit embeddings (null where a chip has none), in batches."""
    b, a = _pair_rows(pairs, names)
    out = np.full(len(b), np.nan)
    have = np.flatnonzero((b >= 0) & (a >= 0))
    for s in range(0, have.size, EMBED_BATCH):
        sel = have[s : s + EMBED_BATCH]
        out[sel] = 1.0 - np.einsum("ij,ij->i", vectors[b[sel]], vectors[a[sel]], dtype=np.float64)
    return pl.Series("embedding_distance", out).fill_nan(None)


def file_distances(pairs: pl.DataFrame, names: pl.DataFrame, readers: Sequence[EmbeddingRows]) -> pl.Series:
    """:func:`embedding_distances` with the vectors read from the files (:func:`_embeddings`), ``PAIR_BATCH``
    pairs at a time: memory holds those pairs' vectors, not every vector."""
    b, a = _pair_rows(pairs, names)
    starts = np.cumsum([0] + [len(r) for r in readers])
    out = np.full(len(b), np.nan)
    have = np.flatnonzero((b >= 0) & (a >= 0))
    have = have[np.argsort(b[have], kind="stable")]  # sorted files: neighbouring pairs share windows of rows
    for s in range(0, have.size, PAIR_BATCH):
        sel = have[s : s + PAIR_BATCH]
        need = np.unique(np.concatenate([b[sel], a[sel]]))
        vectors = np.empty((len(need), readers[0].dim), np.float32)
        which = np.searchsorted(starts, need, side="right") - 1
        for f in np.unique(which):
            at = np.flatnonzero(which == f)
            vectors[at] = readers[int(f)].take(need[at] - starts[f])
        vb, va = vectors[np.searchsorted(need, b[sel])], vectors[np.searchsorted(need, a[sel])]
        out[sel] = 1.0 - np.einsum("ij,ij->i", vb, va, dtype=np.float64)
    return pl.Series("embedding_distance", out).fill_nan(None)


# --------------------------------------------------------------------------------------------
# The pixel method, one task per acquisition pair and cell
# --------------------------------------------------------------------------------------------


def _mask_files(source_cog: str | None, catalog_id: str) -> list[str]:
    """The cloud and cloud-shadow GeoPackages beside an acquisition's COG (those that exist)."""
    from imagesim.imagery.ard import MASK_FILES

    if not source_cog:
        return []
    cog = Path(source_cog)
    return [str(p) for key in ("cloud", "cloud_shadow") if (p := cog.with_name(f"{catalog_id}-{MASK_FILES[key]}.gpkg")).is_file()]


def pixel_task(
    root: str,
    zone: int,
    cell: str,
    quadkeys: list[str],
    before: list[str],
    after: list[str],
    masks: tuple[list[str], list[str]],
    settings: PixelSettings,
) -> PixelResult:
    """Read both acquisitions' masks (a bad one: a note, compared without it) and compare the chips."""
    from shapely.ops import unary_union

    from imagesim.imagery.masks import read_mask

    notes: list[str] = []
    geoms: list[Any] = []
    epsg = grid.epsg(cell, zone)
    for files in masks:
        parts = []
        for f in files:
            try:
                parts.append(read_mask(Path(f), epsg).geometry)
            except ImagesimError as exc:
                notes.append(f"{exc}; compared without it")
        geoms.append(unary_union([p for p in parts if p is not None]) if parts else None)
    result = compare_pixels(root, quadkeys, before, after, geoms[0], geoms[1], settings)
    result.notes = notes + result.notes
    return result


@dataclass(frozen=True)
class _Item:
    zone: int
    cell: str
    before: str
    after: str
    rows: np.ndarray  # pair rows of this task


def _pixel_scores(
    pairs: pl.DataFrame,
    chips_dir: Path,
    settings: PixelSettings,
    runner: TaskRunner,
    progress: ProgressFactory | None,
    summary: ChangeSummary,
) -> pl.DataFrame:
    n = pairs.height
    cols = {k: np.full(n, np.nan) for k in ("pixel_change", "changed_area", "compared_fraction")}
    errors: list[str | None] = [None] * n
    keyed = pairs.with_row_index("_row").group_by("zone", "cell", "before_catalog_id", "after_catalog_id", maintain_order=True)
    items = []
    for (zone, cell, b, a), frame in keyed:
        items.append(_Item(int(zone), str(cell), str(b), str(a), frame["_row"].to_numpy()))
    root = str(runner.task_path(chips_dir))

    def args(item: _Item) -> tuple[Any, ...]:
        rows = pairs[item.rows]
        masks = (
            _mask_files(rows["before_source_cog"][0], item.before),
            _mask_files(rows["after_source_cog"][0], item.after),
        )
        return (
            root,
            item.zone,
            item.cell,
            rows["quadkey"].to_list(),
            rows["before_path"].to_list(),
            rows["after_path"].to_list(),
            masks,
            settings,
        )

    sink = open_progress(progress, n)

    def merge(outcome: Outcome[_Item]) -> None:
        item = outcome.item
        if outcome.error is not None:
            for r in item.rows:
                errors[int(r)] = outcome.error
            return
        res: PixelResult = outcome.result
        cols["pixel_change"][item.rows] = res.pixel_change
        cols["changed_area"][item.rows] = res.changed_area
        cols["compared_fraction"][item.rows] = res.compared_fraction
        for r, e in zip(item.rows, res.errors):
            errors[int(r)] = e
        summary.notes.extend(f"{item.before} → {item.after} (cell {item.cell}): {note}" for note in res.notes)

    try:
        with runner.run(
            pixel_task,
            items,
            args,
            name="imagesim-change",
            workers=max(1, cores() // 2),
            units=lambda it: len(it.rows),
            on_progress=sink.update,
        ) as outcomes:
            for outcome in outcomes:
                merge(outcome)
    finally:
        sink.close()
    return pl.DataFrame({**{k: pl.Series(k, v).fill_nan(None) for k, v in cols.items()}, "_error": pl.Series(errors, dtype=pl.String)})


# --------------------------------------------------------------------------------------------
# Scores, ranks, outputs
# --------------------------------------------------------------------------------------------


def _percentile(values: pl.Expr) -> pl.Expr:
    """Each value's share of the values at or below it (in (0, 1]); ties share the higher."""
    return values.rank("max") / values.count()


def robust_z(values: pl.Expr) -> pl.Expr:
    """(value − median) / (1.4826 × MAD): how unusual a pair is among the pairs scored, in the units of
    their spread, whatever the method's scale (a spread of 0 counts as 1)."""
    centre = values.median()
    spread = 1.4826 * (values - centre).abs().median()
    return (values - centre) / pl.when(spread > 0).then(spread).otherwise(1.0)


def rank_pairs(scored: pl.DataFrame, method: str, embedding_weight: float = EMBEDDING_WEIGHT) -> pl.DataFrame:
    """``score`` (in (0, 1]: the share of pairs ranked at or below) and ``rank`` (1 = most changed).

    ``both`` ranks by the pixel method's robust z-score plus ``embedding_weight`` times the embedding
    method's: each counts by how far a pair stands out among the pairs of the run, not by its raw scale,
    and the direct measurement (pixels) leads while the embedding moves pairs that both find unusual."""
    if method == "embedding":
        fused = pl.col("embedding_distance")
    elif method == "pixel":
        fused = pl.col("pixel_change")
    else:
        fused = robust_z(pl.col("pixel_change")) + embedding_weight * robust_z(pl.col("embedding_distance"))
    ranked = scored.with_columns(fused.alias("_fused")).with_columns(_percentile(pl.col("_fused")).cast(pl.Float64).alias("score"))
    ranked = ranked.sort(["_fused", "quadkey"], descending=[True, False], nulls_last=True).drop("_fused")
    return ranked.with_columns(pl.int_range(1, ranked.height + 1, dtype=pl.UInt32).alias("rank"))


def _features(table: pl.DataFrame) -> dict[str, Any]:
    import shapely

    geoms = shapely.from_wkb(table["geometry"].to_numpy())
    feats = []
    props = [c for c in CHANGE_SCHEMA if c in table.columns]
    for geom, row in zip(geoms, table.select(props).iter_rows(named=True)):
        feats.append({"type": "Feature", "geometry": shapely.geometry.mapping(geom), "properties": row})
    return {"type": "FeatureCollection", "features": feats}


def detect_changes(
    chips_dir: str | Path,
    embeddings: Sequence[str | Path] = (),
    *,
    settings: ChangeSettings | None = None,
    out: str | Path | None = None,
    geojson: str | Path | None = None,
    top: int = 20,
    overwrite: bool = False,
    scheduler: Any = None,
    progress: ProgressFactory | None = None,
    log: Callable[[str], None] | None = None,
) -> ChangeSummary:
    """Score the change between acquisitions of every place of ``chips_dir``; write ``out`` (default
    ``DEST/changes.parquet``, GeoParquet) and ``changes.json`` beside it, and ``geojson`` (the ``top``
    pairs) when asked. Raises ChangeError when nothing can be compared, saying why."""
    t0 = time.perf_counter()
    st = settings or ChangeSettings()
    st.check()
    options.check_range("top", top, 1)
    chips_dir = Path(chips_dir)
    if not chips_dir.is_dir():
        raise ImagesimFileNotFoundError(f"{chips_dir}: chips folder not found")
    out_path = Path(out) if out is not None else chips_dir / CHANGES
    geo_path = Path(geojson) if geojson is not None else None
    if out_path.suffix.lower() != ".parquet":
        raise InvalidArgumentError(f"`out` {out_path}: the changes are written as GeoParquet, name it *.parquet", param="out")
    for target in (out_path, sidecar(out_path), geo_path):
        if target is not None and target.exists() and not overwrite:
            raise OutputExistsError(f"{target} exists (use --overwrite to replace it)")
    paths = [Path(p) for p in embeddings]
    use_emb = st.method in ("embedding", "both")
    use_pix = st.method in ("pixel", "both")
    if use_emb and not paths:
        raise InvalidArgumentError(f"--method {st.method} needs --embeddings (embeddings.parquet of `imagesim encode`)", param="embeddings")
    model_id = _model_ids(paths) if paths else None
    say = log or (lambda _m: None)

    pairs = chip_pairs(_chips(chips_dir, files=use_pix), str(chips_dir), st.before, st.after)
    summary = ChangeSummary(out=out_path, method=st.method, pairs=pairs.height)
    summary.left_out = dict.fromkeys(LEFT_OUT_REASONS, 0)
    acq_pairs = pairs.group_by("before_catalog_id", "before_date", "after_catalog_id", "after_date").len().sort("before_date", "after_date")
    summary.acquisition_pairs = [f"{r[0]} ({r[1]}) → {r[2]} ({r[3]}): {r[4]:,} chips" for r in acq_pairs.iter_rows()]
    for line in summary.acquisition_pairs:
        say(line)

    cloudy = (
        (pl.col("before_cloud").fill_null(0) > st.max_cloud) | (pl.col("after_cloud").fill_null(0) > st.max_cloud)
        if st.max_cloud is not None
        else pl.lit(False)
    )
    pairs = pairs.with_columns(cloudy.alias("_cloudy"))
    summary.left_out["cloudy"] = int(pairs["_cloudy"].sum())
    pairs = pairs.filter(~pl.col("_cloudy")).drop("_cloudy")
    # the manifest's shares bound what can be compared: skip the pairs that cannot reach min_compared
    bound = pl.min_horizontal(pl.col("before_valid"), pl.col("after_valid")) * (
        1 - pl.max_horizontal(pl.col("before_cloud").fill_null(0), pl.col("after_cloud").fill_null(0))
    )
    pairs = pairs.with_columns(bound.alias("_bound"))
    low = pairs["_bound"].fill_null(1.0) < st.min_compared
    summary.left_out["no_data"] += int(low.sum())
    pairs = pairs.filter(~low)

    if use_emb:
        names, readers = _embeddings(paths)
        pairs = pairs.with_columns(file_distances(pairs, names, readers))
        del names, readers
        missing = pairs["embedding_distance"].is_null()
        summary.left_out["no_embedding"] = int(missing.sum())
        pairs = pairs.filter(~missing)
    else:
        pairs = pairs.with_columns(pl.lit(None, pl.Float64).alias("embedding_distance"))

    if use_pix and pairs.height:
        scores = _pixel_scores(pairs, chips_dir, st.pixel, TaskRunner(scheduler), progress, summary)
        pairs = pl.concat([pairs, scores], how="horizontal")
        bad = pairs.filter(pl.col("_error").is_not_null())
        summary.left_out["unreadable"] = bad.height
        summary.unreadable = [f"{b}/{a}: {e}" for b, a, e in bad.select("before_chip", "after_chip", "_error").head(50).iter_rows()]
        pairs = pairs.filter(pl.col("_error").is_null()).drop("_error")
    else:
        pairs = pairs.with_columns(
            pl.lit(None, pl.Float64).alias("pixel_change"),
            pl.lit(None, pl.Float64).alias("changed_area"),
            pl.col("_bound").alias("compared_fraction"),
        )
    low = pairs["compared_fraction"].fill_null(1.0) < st.min_compared
    summary.left_out["no_data"] += int(low.sum())
    pairs = pairs.filter(~low)
    summary.scored = pairs.height
    if pairs.height == 0:
        gone = ", ".join(f"{n:,} {why.replace('_', ' ')}" for why, n in summary.left_out.items() if n)
        raise ChangeError(f"{chips_dir}: none of the {summary.pairs:,} chip pairs could be scored ({gone}); nothing written")

    # only the columns written (and what ranking reads) go through the rank's sort
    ranked = rank_pairs(pairs.select(c for c in CHANGE_SCHEMA if c not in ("score", "rank")), st.method, st.embedding_weight)
    ranked = ranked.select(list(CHANGE_SCHEMA)).cast(CHANGE_SCHEMA)  # type: ignore[arg-type]
    del pairs
    summary.top = ranked.head(top)
    meta = {
        "method": st.method,
        "before": st.before.text if st.before else None,
        "after": st.after.text if st.after else None,
        "max_cloud": st.max_cloud,
        "min_compared": st.min_compared,
        "embedding_weight": st.embedding_weight if st.method == "both" else None,
        "pixel": asdict(st.pixel) if use_pix else None,
        "model_id": model_id,
        "embeddings": [str(p) for p in paths],
        "chips": str(chips_dir),
        "pairs": summary.pairs,
        "scored": summary.scored,
        "acquisition_pairs": summary.acquisition_pairs,
        "left_out": summary.left_out,
        "unreadable": summary.unreadable,
        "notes": summary.notes,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    # every output prepared, then published together: nothing written half-way
    with ExitStack() as files:
        # footprints computed a row group at a time as the rows are written (GeoParquet, as before)
        stream = files.enter_context(GeoParquetStream(files.enter_context(atomic_path(out_path))))
        for s in range(0, ranked.height, STREAM_ROW_GROUP):
            stream.write(ranked.slice(s, STREAM_ROW_GROUP))
        files.enter_context(atomic_path(sidecar(out_path))).write_text(json.dumps(meta, indent=2) + "\n")
        if geo_path is not None:
            files.enter_context(atomic_path(geo_path)).write_text(json.dumps(_features(with_footprints(ranked.head(top)))) + "\n")
            summary.geojson = geo_path
    summary.seconds = time.perf_counter() - t0
    return summary
