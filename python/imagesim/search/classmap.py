"""A map of the predicted classes: ``embeddings.parquet``'s chips as polygons with their class
probabilities, for QGIS (`imagesim classmap`).

Each chip becomes its footprint (WGS84, :func:`imagesim.geoparquet.footprint_polygons`) with one
``p_<class>`` column (float32) per class of ``embeddings.json``, ``predicted`` (the predicted classes
joined with ``;``, in the classes' order), ``top_class`` / ``top_probability`` (the most probable of the
predicted classes; null when none is) and ``acquisitions`` (how many acquisitions of its quadkey the
embeddings hold). The format follows the output's extension: ``.parquet`` GeoParquet 1.1, ``.gpkg``
GeoPackage (GDAL's OGR), ``.geojson`` / ``.json`` RFC 7946 GeoJSON (lon/lat, no ``crs`` member).

Several acquisitions of one quadkey (``acquisitions``): ``latest`` keeps the latest, ``mean`` averages the
probabilities (predicted again with the model's thresholds of ``embeddings.json``, else
``options.THRESHOLD``; ``catalog_id`` lists them all, ``chip`` is the latest), ``all`` keeps every one
(overlapping polygons). "Latest" is by the chips manifest's ``acquisition_date`` (``chips.parquet`` in
``embeddings.json``'s ``chips_dir``, else beside the embeddings), ties and chips without a date by catalog
id; without a manifest, by catalog id alone (the greatest is taken as the latest).

``min_probability``: a class counts as predicted only where its probability is at least this too; chips
left with no predicted class are left out. ``dissolve``: instead of chips, one polygon per connected region
of chips predicted as the same class (per class, per zone and hemisphere), with the class, its chip count,
mean probability and area (m², in UTM). Chips of one zone tile its grid exactly, so the union is taken in
the zone's UTM CRS (shared edges dissolve exactly) and transformed to WGS84 afterwards, with a vertex at
least every chip width along each edge. A region is not split at the antimeridian.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from imagesim import grid, options
from imagesim.artefacts import CHIPS_MANIFEST, read_class_probabilities, read_manifest
from imagesim.errors import ImagesimError, InvalidArgumentError, MissingDependencyError, OutputExistsError
from imagesim.fsutil import publish, write_with
from imagesim.geoparquet import BBOX, BBOX_DTYPE, GEOMETRY, footprint_polygons, geo_metadata

ALL_CLASSES = "*"  # `dissolve`: every predicted class


@dataclass(frozen=True)
class ClassMapSummary:
    out: Path
    format: str
    features: int
    chips: int
    dissolved: tuple[str, ...]
    acquisitions: str
    order: str  # how "latest" was decided: "acquisition_date" or "catalog_id"

    def line(self) -> str:
        if self.dissolved:
            what = f"{self.features:,} region(s) of {', '.join(self.dissolved)} from {self.chips:,} chip(s)"
        else:
            what = f"{self.features:,} chip(s)"
        return f"wrote {self.features:,} features ({what}) → {self.out}"


def output_format(out: Path) -> str:
    """``parquet``, ``gpkg`` or ``geojson``, from ``out``'s extension."""
    fmt = options.CLASSMAP_FORMATS.get(out.suffix.lower())
    if fmt is None:
        raise InvalidArgumentError(
            f"`out` {out}: unknown extension {out.suffix!r}; use one of {', '.join(options.CLASSMAP_FORMATS)}", param="out"
        )
    return fmt


def parse_dissolve(value: str | Sequence[str] | None, classes: Sequence[str]) -> tuple[str, ...]:
    """The classes to dissolve: none (None), all (``*``), or a comma-separated list checked against ``classes``."""
    if value is None:
        return ()
    names = [n.strip() for v in ([value] if isinstance(value, str) else value) for n in v.split(",") if n.strip()]
    if not names or ALL_CLASSES in names:
        return tuple(classes)
    unknown = [n for n in names if n not in classes]
    if unknown:
        raise InvalidArgumentError(f"`dissolve` {', '.join(unknown)}: not a class of the model ({', '.join(classes)})", param="dissolve")
    return tuple(c for c in classes if c in names)


def _acquisition_dates(path: Path, meta: dict[str, Any]) -> pl.DataFrame | None:
    """chip → acquisition_date from the chips manifest, or None where there is none."""
    folders = [Path(meta["chips_dir"])] if isinstance(meta.get("chips_dir"), str) else []
    folders.append(path.parent)
    for folder in folders:
        if (folder / CHIPS_MANIFEST).is_file():
            dates = read_manifest(folder).select("chip", "acquisition_date").unique("chip", keep="last")
            if dates["acquisition_date"].null_count() < dates.height:
                return dates
    return None


def _thresholds(meta: dict[str, Any], n: int) -> np.ndarray:
    given = meta.get("thresholds")
    if isinstance(given, list) and len(given) == n:
        return np.asarray(given, np.float32)
    return np.full(n, options.THRESHOLD, np.float32)


def load(path: str | Path, acquisitions: str = options.CLASSMAP_ACQUISITIONS[0]) -> tuple[pl.DataFrame, list[str], np.ndarray, str]:
    """The chips of the map, one row per quadkey (or per acquisition with ``all``): identity columns,
    ``acquisitions``, ``p_<class>`` and the boolean predicted matrix; plus the classes and the order used."""
    options.check_choice("acquisitions", acquisitions, options.CLASSMAP_ACQUISITIONS)
    path = Path(path)
    rows, classes, meta = read_class_probabilities(path)
    prob_cols = [f"p_{c}" for c in classes]
    probs = rows["probabilities"].to_numpy().astype(np.float32).reshape(rows.height, len(classes))
    bad = ~np.isfinite(probs).all(axis=1)
    if bad.any():
        raise InvalidArgumentError(
            f"{path}: {int(bad.sum())} chip(s) with probabilities that are not finite (first: {rows['chip'][int(np.flatnonzero(bad)[0])]})"
        )
    table = rows.select("chip", "zone", "quadkey", "cell", "catalog_id", "predicted").with_columns(
        pl.Series(name, probs[:, j], dtype=pl.Float32) for j, name in enumerate(prob_cols)
    )
    dates = _acquisition_dates(path, meta)
    order = "acquisition_date" if dates is not None else "catalog_id"
    if dates is not None:
        table = table.join(dates, on="chip", how="left")
    else:
        table = table.with_columns(pl.lit(None, pl.String).alias("acquisition_date"))
    key = ["zone", "quadkey"]
    table = table.sort(["acquisition_date", "catalog_id"], nulls_last=False).with_columns(
        pl.len().over(key).cast(pl.UInt32).alias("acquisitions")
    )
    if acquisitions == "latest":
        table = table.unique(key, keep="last", maintain_order=True)
    elif acquisitions == "mean":
        table = table.group_by(key, maintain_order=True).agg(
            pl.col("chip").last(),
            pl.col("cell").first(),
            pl.col("catalog_id").str.join(";"),
            pl.col("acquisition_date").max(),
            pl.col("acquisitions").first(),
            *(pl.col(c).mean().cast(pl.Float32) for c in prob_cols),
        )
    table = table.sort(["zone", "quadkey", "acquisition_date", "catalog_id"], nulls_last=False)
    probs = table.select(prob_cols).to_numpy().astype(np.float32).reshape(table.height, len(classes))
    if acquisitions == "mean":
        predicted = probs >= _thresholds(meta, len(classes))[None, :]
    else:
        predicted = np.column_stack([table["predicted"].list.contains(c).fill_null(False).to_numpy() for c in classes])
    table = table.select("chip", "zone", "quadkey", "cell", "catalog_id", "acquisition_date", "acquisitions", *prob_cols)
    return table, classes, predicted.reshape(table.height, len(classes)), order


def chip_layer(table: pl.DataFrame, classes: Sequence[str], predicted: np.ndarray) -> tuple[pl.DataFrame, np.ndarray]:
    """One feature per chip: the table with ``predicted``, ``top_class``, ``top_probability``; WGS84 geometries."""
    probs = table.select(f"p_{c}" for c in classes).to_numpy().astype(np.float32).reshape(table.height, len(classes))
    masked = np.where(predicted, probs, -np.inf)
    top = masked.argmax(axis=1) if len(classes) else np.zeros(table.height, int)
    has = predicted.any(axis=1)
    names = np.asarray(classes, dtype=object)
    joined = [";".join(names[row]) for row in predicted]
    frame = table.with_columns(
        pl.Series("predicted", joined, dtype=pl.String),
        pl.Series("top_class", np.where(has, names[top], None), dtype=pl.String),
        pl.Series("top_probability", np.where(has, probs[np.arange(table.height), top], np.nan), dtype=pl.Float32).fill_nan(None),
    )
    first = [
        "chip",
        "zone",
        "quadkey",
        "cell",
        "catalog_id",
        "acquisition_date",
        "acquisitions",
        "predicted",
        "top_class",
        "top_probability",
    ]
    frame = frame.select(*first, *(f"p_{c}" for c in classes))
    geoms = footprint_polygons(frame["zone"].to_list(), frame["quadkey"].to_list(), frame["chip"].to_list())
    return frame, geoms


@lru_cache(maxsize=64)
def _to_wgs84(epsg: int) -> Any:
    from pyproj import Transformer

    return Transformer.from_crs(epsg, 4326, always_xy=True)


def dissolve_layer(
    table: pl.DataFrame, classes: Sequence[str], predicted: np.ndarray, which: Sequence[str]
) -> tuple[pl.DataFrame, np.ndarray]:
    """One feature per connected region of chips predicted as one class of ``which``, per zone/CRS."""
    import shapely

    zones = table["zone"].to_numpy()
    quadkeys = table["quadkey"].to_list()
    epsgs = np.asarray([grid.epsg(q, int(z)) for z, q in zip(zones, quadkeys)], dtype=np.int64)
    bounds = np.asarray([tuple(grid.bounds(q)) for q in quadkeys], dtype=np.float64).reshape(len(quadkeys), 4)
    boxes = shapely.box(bounds[:, 0], bounds[:, 1], bounds[:, 2], bounds[:, 3])
    centres = shapely.points((bounds[:, 0] + bounds[:, 2]) / 2, (bounds[:, 1] + bounds[:, 3]) / 2)
    widths = bounds[:, 2] - bounds[:, 0]
    qk_arr = np.asarray(quadkeys, dtype=object)
    out: dict[str, list[Any]] = {"class": [], "zone": [], "chips": [], "mean_probability": [], "area_m2": []}
    geoms: list[Any] = []
    for c in which:
        j = list(classes).index(c)
        p = table[f"p_{c}"].to_numpy().astype(np.float64)
        for zone, code in sorted({(int(zones[i]), int(epsgs[i])) for i in np.flatnonzero(predicted[:, j])}):
            rows = np.flatnonzero(predicted[:, j] & (zones == zone) & (epsgs == code))
            _, first = np.unique(qk_arr[rows].astype(str), return_index=True)  # one box per quadkey (`all` repeats them)
            unique_rows = rows[first]
            same_size = len({len(quadkeys[i]) for i in unique_rows}) == 1
            merged = shapely.coverage_union_all(boxes[unique_rows]) if same_size else shapely.union_all(boxes[unique_rows])
            parts = shapely.get_parts(merged)
            tree = shapely.STRtree(parts)
            chip_idx, part_idx = tree.query(centres[rows], predicate="within")
            count = np.bincount(part_idx, minlength=len(parts))
            total = np.bincount(part_idx, weights=p[rows][chip_idx], minlength=len(parts))
            spacing = float(widths[unique_rows].min())
            transformer = _to_wgs84(code)

            def project(xy: np.ndarray, transformer: Any = transformer) -> np.ndarray:
                lon, lat = transformer.transform(xy[:, 0], xy[:, 1])
                return np.column_stack([lon, lat])

            wgs = shapely.transform(shapely.segmentize(parts, spacing), project)
            for k in range(len(parts)):
                out["class"].append(c)
                out["zone"].append(zone)
                out["chips"].append(int(count[k]))
                out["mean_probability"].append(float(total[k] / count[k]) if count[k] else None)
                out["area_m2"].append(float(shapely.area(parts[k])))
                geoms.append(wgs[k])
    frame = pl.DataFrame(
        out, schema={"class": pl.String, "zone": pl.UInt8, "chips": pl.UInt32, "mean_probability": pl.Float32, "area_m2": pl.Float64}
    )
    return frame, np.asarray(geoms, dtype=object).reshape(len(geoms))


# --- writers -----------------------------------------------------------------------------------


def _write_parquet(frame: pl.DataFrame, geoms: np.ndarray, out: Path) -> None:
    import shapely

    box = shapely.bounds(geoms).reshape(len(geoms), 4)
    bbox = pl.DataFrame({k: box[:, i] for i, k in enumerate(("xmin", "ymin", "xmax", "ymax"))}, schema=dict(BBOX_DTYPE.to_schema()))
    table = frame.with_columns(
        pl.Series(GEOMETRY, list(shapely.to_wkb(geoms)), dtype=pl.Binary),
        bbox.select(pl.struct(pl.all()).alias(BBOX)).to_series().cast(BBOX_DTYPE),
    )
    meta = geo_metadata(table)
    write_with(out, lambda tmp: table.write_parquet(tmp, metadata=meta))


def _write_geojson(frame: pl.DataFrame, geoms: np.ndarray, out: Path) -> None:
    import shapely

    # RFC 7946: exterior rings counter-clockwise (shapely < 2.1 has no vectorised orient_polygons)
    orient = getattr(shapely, "orient_polygons", None)
    if orient is not None:
        oriented = orient(geoms, exterior_cw=False)
    else:
        from shapely.geometry.polygon import orient as orient_one

        def one(g: Any) -> Any:
            return orient_one(g) if g.geom_type == "Polygon" else shapely.MultiPolygon([orient_one(p) for p in g.geoms])

        oriented = np.asarray([one(g) for g in geoms], dtype=object)
    features = [
        {"type": "Feature", "geometry": json.loads(g), "properties": props}
        for g, props in zip(shapely.to_geojson(oriented).tolist() if len(geoms) else [], frame.to_dicts())
    ]
    doc = {"type": "FeatureCollection", "features": features}

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(doc, fh, allow_nan=False, separators=(",", ":"))

    write_with(out, write)


_OGR_TYPES = {pl.String: "OFTString", pl.Float32: "OFTReal", pl.Float64: "OFTReal", pl.UInt8: "OFTInteger", pl.UInt32: "OFTInteger"}


def _write_gpkg(frame: pl.DataFrame, geoms: np.ndarray, out: Path) -> None:
    import shapely

    try:
        from osgeo import ogr, osr
    except ImportError as exc:
        raise MissingDependencyError(
            f"writing a GeoPackage needs GDAL's Python bindings ({exc}): `pip install gdal==$(gdal-config --version)`, "
            "or write .parquet or .geojson"
        ) from exc
    ogr.UseExceptions()
    osr.UseExceptions()
    multi = bool(len(geoms)) and bool((shapely.get_type_id(geoms) == int(shapely.GeometryType.MULTIPOLYGON)).any())
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(4326)
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    fd, name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".gpkg", dir=out.parent)
    os.close(fd)
    os.unlink(name)  # the driver creates the file itself
    try:
        ds = ogr.GetDriverByName("GPKG").CreateDataSource(name)
        layer = ds.CreateLayer(out.stem, srs, ogr.wkbMultiPolygon if multi else ogr.wkbPolygon, options=["FID=fid"])
        for col, dtype in frame.schema.items():
            field = ogr.FieldDefn(col, getattr(ogr, _OGR_TYPES.get(type(dtype), "OFTString")))
            if dtype == pl.Float32:
                field.SetSubType(ogr.OFSTFloat32)
            layer.CreateField(field)
        defn = layer.GetLayerDefn()
        layer.StartTransaction()
        for props, wkb in zip(frame.iter_rows(), shapely.to_wkb(geoms).tolist() if len(geoms) else []):
            feature = ogr.Feature(defn)
            for k, value in enumerate(props):
                if value is not None:
                    feature.SetField(k, value)
            geom = ogr.CreateGeometryFromWkb(wkb)
            feature.SetGeometry(ogr.ForceToMultiPolygon(geom) if multi else geom)
            layer.CreateFeature(feature)
        layer.CommitTransaction()
        ds = None  # close: flush and release the file
        publish(name, out)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise


def classmap(
    embeddings: str | Path,
    out: str | Path,
    *,
    dissolve: str | Sequence[str] | None = None,
    min_probability: float | None = None,
    acquisitions: str = options.CLASSMAP_ACQUISITIONS[0],
    overwrite: bool = False,
) -> ClassMapSummary:
    """Write the class map of ``embeddings`` to ``out`` (see the module's doc); ``dissolve``: None,
    ``"*"`` for every class, or class names (a list or comma-separated)."""
    out = Path(out)
    fmt = output_format(out)
    if min_probability is not None:
        options.check_range("min_probability", min_probability, 0.0, 1.0)
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out} exists; pass `overwrite` to replace it")
    table, classes, predicted, order = load(embeddings, acquisitions)
    which = parse_dissolve(dissolve, classes)
    if min_probability is not None:
        probs = table.select(f"p_{c}" for c in classes).to_numpy().reshape(table.height, len(classes))
        predicted = predicted & (probs >= min_probability)
        keep = predicted.any(axis=1)
        table, predicted = table.filter(pl.Series(keep)), predicted[keep]
    if table.height == 0:
        raise ImagesimError(
            f"{embeddings}: no chip has a class with probability ≥ {min_probability}: nothing to map; lower `min_probability`"
        )
    if which:
        frame, geoms = dissolve_layer(table, classes, predicted, which)
        if frame.height == 0:
            raise ImagesimError(f"{embeddings}: no chip is predicted as {', '.join(which)}: nothing to dissolve")
        chips = int(predicted[:, [classes.index(c) for c in which]].any(axis=1).sum())
    else:
        frame, geoms = chip_layer(table, classes, predicted)
        chips = frame.height
    out.parent.mkdir(parents=True, exist_ok=True)
    {"parquet": _write_parquet, "geojson": _write_geojson, "gpkg": _write_gpkg}[fmt](frame, geoms, out)
    return ClassMapSummary(out, fmt, frame.height, chips, which, acquisitions, order)
