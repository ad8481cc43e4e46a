"""The change layer of the viewer: the rows of an `imagesim change` file in view, and the acquisitions of a chip.

``changes.parquet`` (:func:`imagesim.artefacts.read_changes`) is read once at start. Each row's footprint
bbox comes from the file's GeoParquet ``bbox`` column (recomputed from zone/quadkey for a file without
one); the polygons of an answer are computed for the rows it returns only (at most ``top``). The
acquisitions of a chip come from the chips folder's manifest (``chips.parquet``; for a folder of the
original tool one derived from the chip names, in memory: the viewer writes nothing), so the page can
compare any two acquisitions of the cell, not only the pair the file scored.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from imagesim.artefacts import CHIPS_MANIFEST, derive_manifest, read_changes, read_chip_table
from imagesim.errors import GridError, ImagesimError, InvalidArgumentError
from imagesim.geoparquet import BBOX, footprint_polygons

log = logging.getLogger("imagesim.search.serve")

TOP_DEFAULT = 200
TOP_MAX = 5000
DECIMALS = 8  # about a millimetre in WGS84
# the columns of a change row the API returns as feature properties (besides the thumbnails)
PROPERTIES = (
    "rank",
    "score",
    "zone",
    "quadkey",
    "cell",
    "before_chip",
    "after_chip",
    "before_catalog_id",
    "after_catalog_id",
    "before_date",
    "after_date",
    "compared_fraction",
    "embedding_distance",
    "pixel_change",
    "changed_area",
)


def thumbnail_url(chip: str | None, size: int | None = None) -> str | None:
    if chip is None:
        return None
    return f"/api/chip/{chip}/thumbnail.jpg" + (f"?size={size}" if size else "")


def _json_value(v: Any) -> Any:
    """A cell as JSON: NaN and infinities are null (JSON has neither)."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def json_safe(doc: Any) -> Any:
    """``doc`` with every non-finite float replaced by None (a sidecar JSON may hold NaN)."""
    if isinstance(doc, dict):
        return {str(k): json_safe(v) for k, v in doc.items()}
    if isinstance(doc, (list, tuple)):
        return [json_safe(v) for v in doc]
    return _json_value(doc)


def _geojson(geom: Any) -> dict[str, Any]:
    """A shapely (Multi)Polygon as GeoJSON, coordinates rounded."""
    import shapely

    def ring(r: Any) -> list[list[float]]:
        return [[round(float(x), DECIMALS), round(float(y), DECIMALS)] for x, y in np.asarray(r.coords)[:, :2]]

    def poly(p: Any) -> list[list[list[float]]]:
        return [ring(p.exterior), *(ring(i) for i in p.interiors)]

    if isinstance(geom, shapely.MultiPolygon):
        return {"type": "MultiPolygon", "coordinates": [poly(p) for p in geom.geoms]}
    return {"type": "Polygon", "coordinates": poly(geom)}


class ChangeLayer:
    """The changes of one ``changes.parquet`` and the chip acquisitions of the chips folder."""

    def __init__(self, path: str | Path, chips_root: Path, dates: dict[str, str] | None = None) -> None:
        self.path = Path(path)
        table, meta = read_changes(self.path)
        self.table = table
        self.meta = json_safe(meta)
        self.rows = table.select(PROPERTIES).to_dicts()
        self.zone = table["zone"].to_numpy().astype(np.int64)
        self.quadkey = table["quadkey"].to_list()
        box = self._bboxes()
        self.xmin, self.ymin, self.xmax, self.ymax = (box[:, k] for k in range(4))
        # change rows of each chip square, best rank first (the table is sorted by rank)
        self.by_cell: dict[tuple[int, str], list[int]] = {}
        for i, key in enumerate(zip(self.zone.tolist(), self.quadkey)):
            self.by_cell.setdefault(key, []).append(i)
        self.chips = self._chip_acquisitions(chips_root, dates or {})

    # --- loading ---

    def _bboxes(self) -> np.ndarray:
        """(rows, 4) xmin, ymin, xmax, ymax of each row's footprint, in the order of ``self.table``."""
        n = self.table.height
        box = np.full((n, 4), np.nan)
        try:
            lazy = pl.scan_parquet(self.path)
            if BBOX in lazy.collect_schema().names():
                keys = ["before_chip", "after_chip"]
                found = lazy.select(*keys, pl.col(BBOX).struct.unnest()).collect()
                if {"xmin", "ymin", "xmax", "ymax"} <= set(found.columns) and not found.select(keys).is_duplicated().any():
                    joined = self.table.select(keys).join(found, on=keys, how="left", maintain_order="left")
                    box = joined.select(pl.col(c).cast(pl.Float64) for c in ("xmin", "ymin", "xmax", "ymax")).to_numpy()
        except pl.exceptions.PolarsError as exc:  # an odd bbox column: the footprints are recomputed below
            log.warning("%s: bbox column not used (%s)", self.path, exc)
        missing = np.flatnonzero(~np.isfinite(box).all(axis=1))
        if missing.size:
            import shapely

            try:
                polys = footprint_polygons(self.zone[missing], [self.quadkey[i] for i in missing])
            except GridError as exc:
                raise InvalidArgumentError(f"{self.path}: {exc}") from None
            box[missing] = shapely.bounds(polys)
        return box

    def _chip_acquisitions(self, root: Path, dates: dict[str, str]) -> dict[tuple[int, str], list[dict[str, Any]]]:
        """Every chip written in the chips folder, grouped by (zone, quadkey), oldest first."""
        if (root / CHIPS_MANIFEST).is_file():
            table = read_chip_table(root, log=log.info, extra=("acquisition_date", "written"))
        else:
            try:
                table = derive_manifest(root, save=False).table
            except ImagesimError as exc:  # no chips at all: the change rows still name their two chips
                log.warning("%s: no chip acquisitions (%s)", root, exc)
                table = pl.DataFrame(schema={"chip": pl.String, "zone": pl.UInt8, "quadkey": pl.String})
        if "written" in table.columns:  # a manifest row of a chip `imagesim chip` skipped (no file)
            table = table.filter(pl.col("written").fill_null(True))
        cols = ["chip", "zone", "quadkey", "catalog_id", "acquisition_date"]
        table = table.with_columns(pl.lit(None, pl.String).alias(c) for c in cols if c not in table.columns)
        out: dict[tuple[int, str], list[dict[str, Any]]] = {}
        for chip, zone, qk, cat, date in table.select(cols).iter_rows():
            out.setdefault((int(zone), qk), []).append(
                {"chip": chip, "catalog_id": cat, "acquisition_date": date or dates.get(cat), "thumbnail": thumbnail_url(chip)}
            )
        return out

    # --- queries ---

    def info(self) -> dict[str, Any]:
        return {"file": self.path.name, "n": self.table.height, "method": self.meta.get("method"), "meta": self.meta}

    def in_view(self, bbox: tuple[float, float, float, float], top: int) -> dict[str, Any]:
        """The ``top`` best-ranked changes whose footprint meets ``bbox`` (w, s, e, n), as GeoJSON."""
        w, s, e, n = bbox
        sel = np.flatnonzero((self.xmin <= e) & (self.xmax >= w) & (self.ymin <= n) & (self.ymax >= s))
        rows = sel[:top]
        polys: Any = footprint_polygons(self.zone[rows], [self.quadkey[i] for i in rows]) if rows.size else []
        features = []
        for i, geom in zip(rows.tolist(), polys):
            props = {k: _json_value(v) for k, v in self.rows[i].items()}
            props["before_thumbnail"] = thumbnail_url(props["before_chip"])
            props["after_thumbnail"] = thumbnail_url(props["after_chip"])
            features.append({"type": "Feature", "id": props["rank"], "geometry": _geojson(geom), "properties": props})
        return {
            "type": "FeatureCollection",
            "features": features,
            "count": len(features),
            "in_view": int(sel.size),
            "truncated": sel.size > top,
        }

    def acquisitions(self, zone: int, quadkey: str) -> dict[str, Any] | None:
        """The acquisitions of chip square (zone, quadkey), oldest first, and the change rows that compared
        two of them (best rank first; ``compared`` is the best); None when neither knows the square."""
        key = (zone, quadkey)
        rows = self.by_cell.get(key, [])
        chips = {c["chip"]: dict(c) for c in self.chips.get(key, [])}
        if not chips and not rows:
            return None
        pairs = []
        for i in rows:
            r = self.rows[i]
            for side in ("before", "after"):  # a chip the manifest lacks: still one the file compared
                name = r[f"{side}_chip"]
                if name is not None and name not in chips:
                    chips[name] = {
                        "chip": name,
                        "catalog_id": r[f"{side}_catalog_id"],
                        "acquisition_date": r[f"{side}_date"],
                        "thumbnail": thumbnail_url(name),
                    }
            pairs.append({k: _json_value(r[k]) for k in ("rank", "score", "before_chip", "after_chip")})
        listed = sorted(chips.values(), key=lambda c: (c["acquisition_date"] or "", c["catalog_id"] or "", c["chip"]))
        return {
            "zone": zone,
            "quadkey": quadkey,
            "acquisitions": listed,
            "compared": pairs[0] if pairs else None,
            "changes": pairs,
        }
