"""`imagesim stac`: a static STAC catalog of a chips folder (pystac).

One Collection per delivery zone: the chips cut from one ARD root's one UTM zone folder
(``<root>/<zone>/…``). A zone is the unit an ARD order is delivered and projected in (one EPSG), so its
spatial extent is a compact box; the temporal extent spans its acquisition dates.

Items, by ``granularity``:

- ``acquisition`` (the default): one Item per level-12 cell and acquisition (catalog id), one asset
  per chip, carrying that chip's ``valid_fraction``, ``nodata_class``, ``labels`` and embedding row.
- ``chip``: one Item per chip, those fields as Item properties.

Either way an Item links the source COG (asset role ``source``; not a ``derived_from`` link: pystac
checks every non-hierarchical link against the whole catalog on save, quadratic in the items), the ARD
metadata JSON beside it (``<catalog-id>.json``, role ``metadata``) when present, and
``embeddings.parquet`` (role ``embeddings``, the chip's row and model id) when the chips folder has one.
Chip footprints come from :func:`imagesim.geoparquet.footprint_polygons` (the grid square in WGS84). The catalog is
self-contained (relative links between catalog, collections and items); assets outside the catalog
(chips, COGs, metadata, embeddings) keep absolute hrefs so the folder can be moved or served.

The catalog is built in a temporary folder beside ``out`` and renamed into place at the end. The chips are
read an acquisition of a cell at a time (:func:`imagesim.artefacts.iter_chip_table`; a first pass finds the
collections); Items are written as they are made and dropped (a collection keeps a link to each), so memory
holds one acquisition and one Item, not the catalog; the files are the ones pystac writes when it saves the
whole catalog. Items are listed in manifest order (zone, cell, date, catalog id).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from imagesim import artefacts, grid, options
from imagesim.errors import ImagesimError, ImagesimFileNotFoundError, OutputExistsError, require

JPEG = "image/jpeg"
COG = "image/tiff; application=geotiff; profile=cloud-optimized"
JSON = "application/json"
PARQUET = "application/vnd.apache.parquet"
FOOTPRINT_BATCH = 4_096  # chips whose footprints are computed at a time
ITEM_LINK_ORDER = {"root": 0, "collection": 1, "parent": 2}


@dataclass
class StacSummary:
    out: Path
    collections: int
    items: int
    chips: int
    skipped: int  # chips without an acquisition date or source COG
    seconds: float

    def line(self) -> str:
        skipped = f", {self.skipped} chips skipped (no acquisition date)" if self.skipped else ""
        return f"{self.chips} chips in {self.items} items, {self.collections} collections → {self.out} ({self.seconds:.1f} s){skipped}"


def footprints(table: pl.DataFrame, geometry: bool = True) -> tuple[np.ndarray, list[dict[str, Any]] | None]:
    """WGS84 bounds ``(n, 4)`` (west, south, east, north) and GeoJSON polygons of each row's ``quadkey``
    in its ``zone``: :func:`imagesim.geoparquet.footprint_polygons` (vectorised per zone CRS); no
    polygons unless ``geometry``."""
    import shapely

    from imagesim.geoparquet import footprint_polygons

    if table.height == 0:
        return np.zeros((0, 4), np.float64), [] if geometry else None
    geoms = footprint_polygons(table["zone"], table["quadkey"], table["chip"].to_list())
    return np.asarray(shapely.bounds(geoms), np.float64), [shapely.geometry.mapping(g) for g in geoms] if geometry else None


def _polygon(w: float, s: float, e: float, n: float) -> dict[str, Any]:
    return {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]}


def _date_of(cog: str | None) -> str | None:
    """The acquisition folder (``…/<YYYY-MM-DD>/<catalog-id>-visual.tif``) of a COG path."""
    if not cog:
        return None
    name = Path(cog).parent.name
    try:
        dt.date.fromisoformat(name)
    except ValueError:
        return None
    return name


ROW_COLUMNS = ("acquisition_date", "source_cog", "valid_fraction", "written")  # the manifest columns a catalog reads


def acquisition_tables(chips_dir: Path) -> Iterator[pl.DataFrame]:
    """The manifest an acquisition of a cell at a time (:func:`imagesim.artefacts.iter_chip_table`, latest row
    of each chip), only the columns used."""
    return artefacts.iter_chip_table(chips_dir, extra=ROW_COLUMNS)


def with_sources(table: pl.DataFrame, ard_path: str | Path | None = None) -> pl.DataFrame:
    """``table`` (one acquisition of :func:`acquisition_tables`) with ``acquisition_date`` filled from the COG
    folder where the manifest has none, ``written`` filled (true) and ``root`` (the ARD delivery root).

    Rows whose manifest lacks the source COG (a manifest derived from chip names) find it under
    ``ard_path`` (one COG per acquisition of a cell: found from its first chip)."""
    if ard_path is not None and table["source_cog"].null_count():
        cogs: dict[tuple[Any, ...], str | None] = {}
        found: list[str | None] = []
        for chip, zone, cell, catalog_id, cog in table.select("chip", "zone", "cell", "catalog_id", "source_cog").iter_rows():
            if cog is None:
                key = (zone, cell, catalog_id)
                if key not in cogs:
                    try:
                        cogs[key] = str(grid.cog_path_from_chip(chip, ard_path))
                    except ImagesimError:  # not found, or a name that is no chip
                        cogs[key] = None
                cog = cogs[key]
            found.append(cog)
        table = table.with_columns(pl.Series("source_cog", found, dtype=pl.String))
    # date and delivery root per COG (one or a few), joined to the chips: no Python object per chip
    cogs_seen = table["source_cog"].drop_nulls().unique().to_list()
    per_cog = pl.DataFrame(
        {
            "source_cog": cogs_seen,
            "_date": [_date_of(c) for c in cogs_seen],
            # <root>/<zone>/<cell>/<date>/<catalog-id>-visual.tif → <root>
            "root": [str(Path(c).parents[3]) if c else None for c in cogs_seen],
        },
        schema={"source_cog": pl.String, "_date": pl.String, "root": pl.String},
    )
    return (
        table.join(per_cog, on="source_cog", how="left", maintain_order="left")
        .with_columns(
            pl.when(pl.col("acquisition_date").is_null() | (pl.col("acquisition_date") == ""))
            .then(pl.col("_date"))
            .otherwise(pl.col("acquisition_date"))
            .alias("acquisition_date"),
            pl.col("written").fill_null(True),
        )
        .drop("_date")
    )


def usable_rows(table: pl.DataFrame) -> pl.DataFrame:
    """The rows a catalog can hold: those with an acquisition date and a source COG."""
    return table.filter(pl.col("acquisition_date").is_not_null() & pl.col("source_cog").is_not_null())


def chip_rows(table: pl.DataFrame, *, geometry: bool = True) -> pl.DataFrame:
    """``table`` (rows of :func:`with_sources`) with each chip's WGS84 ``west/south/east/north`` and its
    footprint ``geometry`` (GeoJSON text; only when ``geometry``)."""
    box = np.zeros((table.height, 4), np.float64)
    shapes: list[str] = []
    for s in range(0, table.height, FOOTPRINT_BATCH):  # shapely objects for a slice at a time
        b, g = footprints(table.slice(s, FOOTPRINT_BATCH), geometry)
        box[s : s + len(b)] = b
        if g is not None:
            shapes.extend(json.dumps(x) for x in g)
    table = table.with_columns(
        pl.Series("west", box[:, 0]),
        pl.Series("south", box[:, 1]),
        pl.Series("east", box[:, 2]),
        pl.Series("north", box[:, 3]),
    )
    if geometry:
        table = table.with_columns(pl.Series("geometry", shapes, dtype=pl.String))
    return table


def lookup(table: pl.DataFrame, chips: pl.Series) -> pl.DataFrame:
    """The rows of ``table`` (sorted by ``chip``, one row each) of ``chips``, in their order, nulls where
    ``table`` has none: a binary search per chip, so a catalog of many acquisitions does not hash the
    whole table once per acquisition."""
    if table.height == 0 or chips.len() == 0:
        return table.clear(chips.len()).drop("chip")
    at = table["chip"].search_sorted(chips, side="left").clip(0, table.height - 1)
    found = table.select(pl.all().gather(at))
    hit = found["chip"] == chips
    return found.drop("chip").select(pl.when(hit).then(pl.all()))


def _labels(chips_dir: Path, labels: str | Path | None) -> tuple[pl.DataFrame, list[str]] | None:
    """Each labelled chip's class ids (``_label_ids``), sorted by chip, and the class names; None without labels."""
    path = Path(labels) if labels is not None else chips_dir / artefacts.LABELS_PARQUET
    if labels is None and not path.is_file():
        return None
    found = artefacts.read_labels(path, columns=["chip", "label_ids"])
    if found.table.height == 0:
        return None
    return _by_chip(found.table.select("chip", pl.col("label_ids").alias("_label_ids"))), found.classes


def _by_chip(table: pl.DataFrame) -> pl.DataFrame:
    """``table`` sorted by chip, one row per chip (the last in file order): a sort, no hash table."""
    table = table.sort("chip", maintain_order=True)
    return table.filter(pl.col("chip").ne_missing(pl.col("chip").shift(-1)))


def _label_names(table: pl.DataFrame, classes: list[str]) -> pl.DataFrame:
    """``_label_ids`` of one acquisition's rows as class names (``_labels``)."""
    names = pl.Series(classes, dtype=pl.String)
    ids = list(range(len(classes)))
    return table.with_columns(
        pl.col("_label_ids").list.eval(pl.element().replace_strict(ids, names, return_dtype=pl.String)).alias("_labels")
    ).drop("_label_ids")


def _embeddings(chips_dir: Path, embeddings: str | Path | None) -> tuple[Path | None, pl.DataFrame | None]:
    """``embeddings.parquet`` and each chip's row (``_emb_row``) and model id (``_emb_model``); only those
    two columns are read."""
    path = Path(embeddings) if embeddings is not None else chips_dir / artefacts.EMBEDDINGS
    if embeddings is None and not path.is_file():
        return None, None
    if not path.is_file():
        raise ImagesimFileNotFoundError(f"{path}: embeddings not found; run `imagesim encode` first")
    try:
        table = pl.read_parquet(path, columns=["chip", "model_id"])
    except Exception as exc:  # polars raises several types for unreadable files
        raise ImagesimError(f"{path}: cannot read embeddings ({exc})") from None
    rows = _by_chip(
        table.with_row_index("_emb_row").select("chip", pl.col("_emb_row").cast(pl.Int64), pl.col("model_id").alias("_emb_model"))
    )
    return path.resolve(), rows


def _collection_ids(keys: Sequence[tuple[str, int]]) -> dict[tuple[str, int], str]:
    ids: dict[tuple[str, int], str] = {}
    for root, zone in keys:
        base = f"{Path(root).name or 'ard'}-Z{zone:02d}"
        cid, n = base, 1
        while cid in ids.values():
            n += 1
            cid = f"{base}-{n}"
        ids[(root, zone)] = cid
    return ids


@dataclass
class _Extent:
    """A collection's extent, grown an acquisition at a time."""

    box: list[float] = field(default_factory=lambda: [np.inf, np.inf, -np.inf, -np.inf])
    dates: list[str] = field(default_factory=list)  # earliest, latest

    def grow(self, rows: pl.DataFrame) -> None:
        self.box = [
            min(self.box[0], float(rows["west"].min())),  # type: ignore[arg-type]
            min(self.box[1], float(rows["south"].min())),  # type: ignore[arg-type]
            max(self.box[2], float(rows["east"].max())),  # type: ignore[arg-type]
            max(self.box[3], float(rows["north"].max())),  # type: ignore[arg-type]
        ]
        first, last = str(rows["acquisition_date"].min()), str(rows["acquisition_date"].max())
        self.dates = [min(self.dates[0], first), max(self.dates[1], last)] if self.dates else [first, last]


def write_catalog(
    tables: Iterable[pl.DataFrame],
    keys: Sequence[tuple[str, int]],
    chips_dir: Path,
    dest: Path,
    *,
    granularity: str = options.STAC_GRANULARITY,
    labels: tuple[pl.DataFrame, list[str]] | None = None,
    embeddings: tuple[Path | None, pl.DataFrame | None] = (None, None),
    title: str | None = None,
) -> tuple[int, int]:
    """Write a self-contained STAC catalog to the folder ``dest``; (collections, items) written.

    ``tables``: the chips an acquisition of a cell at a time (:func:`chip_rows`, rows with a date and a COG);
    ``keys``: every ``(root, zone)`` among them, in the order their collections are listed. ``labels``
    (class ids per chip and the class names, :func:`_labels`) and the embeddings' rows: sorted by chip,
    looked up per acquisition.

    Items are written as they are made and dropped (the collection keeps a link to each): memory holds one
    acquisition's chips and Item, not the catalog."""
    pystac = require("pystac", "stac", purpose="`imagesim stac`")
    options.check_choice("granularity", granularity, options.STAC_GRANULARITIES)
    emb_path, emb_rows = embeddings
    chips_dir = chips_dir.resolve()
    catalog = pystac.Catalog(
        id="imagesim-chips", description=title or f"Chips of {chips_dir} (imagesim)", title=title or f"imagesim chips {chips_dir.name}"
    )
    catalog.catalog_type = pystac.CatalogType.SELF_CONTAINED  # relative links in the items saved one by one
    catalog.set_self_href(str(dest.resolve() / "catalog.json"))
    meta_cache: dict[str, str | None] = {}

    def metadata_json(cog: str) -> str | None:
        if cog not in meta_cache:
            p = Path(cog)
            m = p.with_name(p.name.removesuffix("-visual.tif") + ".json")
            meta_cache[cog] = str(m) if m.is_file() else None
        return meta_cache[cog]

    def chip_fields(r: dict[str, Any]) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "imagesim:chip": r["chip"],
            "imagesim:quadkey": r["quadkey"],
            "valid_fraction": r["valid_fraction"],
            "nodata_class": r["nodata_class"],
        }
        if labels is not None:
            fields["labels"] = r["_labels"] or []
        if emb_rows is not None and r["_emb_row"] is not None:
            fields["imagesim:embedding_row"] = r["_emb_row"]
            fields["imagesim:model_id"] = r["_emb_model"]
        return fields

    def source_assets(item: Any, cog: str, catalog_id: str) -> None:
        item.add_asset("source", pystac.Asset(href=cog, media_type=COG, roles=["source"], title=f"ARD COG {catalog_id}"))
        meta = metadata_json(cog)
        if meta is not None:
            item.add_asset("metadata", pystac.Asset(href=meta, media_type=JSON, roles=["metadata"], title="ARD metadata"))
        if emb_path is not None:
            item.add_asset("embeddings", pystac.Asset(href=str(emb_path), media_type=PARQUET, roles=["embeddings"]))

    folder = f"{chips_dir}{os.sep}"

    def chip_asset(r: dict[str, Any], with_fields: bool) -> Any:
        return pystac.Asset(
            href=folder + r["path"],  # (a string join: a Path per chip is a second per 100,000)
            media_type=JPEG,
            roles=["data"],
            extra_fields=chip_fields(r) if with_fields else None,
        )

    items = 0

    def save(collection: Any, item: Any) -> None:
        """Save ``item`` where the catalog's layout puts it; ``collection`` keeps only a link to it."""
        nonlocal items
        href = str(Path(collection.get_self_href()).parent / item.id / f"{item.id}.json")
        # Assets set aside while the href is set: their hrefs are absolute (nothing to rewrite), and pystac
        # would parse each one per call (1,024 of them per acquisition Item).
        assets, item.assets = item.assets, {}
        # a self href before the root caches the Item (keyed by it), so set_root(None) below removes it again
        item.set_self_href(href)
        collection.add_item(item)  # its layout gives the same href
        if item.get_self_href() != href:
            item.set_self_href(href)
        item.assets = assets
        item.links.sort(key=lambda link: ITEM_LINK_ORDER.get(str(link.rel), len(ITEM_LINK_ORDER)))  # as a whole save orders them
        item.save_object(include_self_link=False)
        item.set_root(None)  # out of the root's cache of resolved objects, which would keep every Item
        link = collection.links[-1]
        collection.links[-1] = pystac.Link(pystac.RelType.ITEM, href, media_type=link.media_type, title=link.title).set_owner(collection)
        items += 1

    ids = _collection_ids(sorted(keys))
    collections: dict[tuple[str, int], Any] = {}
    extents: dict[tuple[str, int], _Extent] = {}
    for root, zone in keys:
        cid = ids[(root, zone)]
        collection = pystac.Collection(
            id=cid,
            description=f"imagesim chips of ARD delivery {root}, UTM zone {zone}",
            extent=pystac.Extent(pystac.SpatialExtent([[0.0, 0.0, 0.0, 0.0]]), pystac.TemporalExtent([[None, None]])),  # set at the end
            license="other",
        )
        catalog.add_child(collection)
        collection.set_self_href(str(Path(catalog.get_self_href()).parent / cid / "collection.json"))
        collections[(root, zone)], extents[(root, zone)] = collection, _Extent()

    for table in tables:
        if labels is not None:
            table = _label_names(table.hstack(lookup(labels[0], table["chip"])), labels[1])
        if emb_rows is not None:
            table = table.hstack(lookup(emb_rows, table["chip"]))
        for (root, zone), part in table.group_by("root", "zone", maintain_order=True):
            key = (str(root), int(zone))
            collection = collections[key]
            extents[key].grow(part)
            if granularity == "chip":
                for r in part.iter_rows(named=True):
                    when = dt.datetime.fromisoformat(r["acquisition_date"]).replace(tzinfo=dt.timezone.utc)
                    props = {
                        "imagesim:catalog_id": r["catalog_id"],
                        "imagesim:cell": r["cell"],
                        "imagesim:zone": r["zone"],
                        **chip_fields(r),
                    }
                    item = pystac.Item(
                        id=r["chip"].removesuffix(".jpg"),
                        geometry=json.loads(r["geometry"]) if "geometry" in r else _polygon(r["west"], r["south"], r["east"], r["north"]),
                        bbox=[r["west"], r["south"], r["east"], r["north"]],
                        datetime=when,
                        properties=props,
                    )
                    if r["written"]:
                        item.add_asset("chip", chip_asset(r, with_fields=False))
                    source_assets(item, r["source_cog"], r["catalog_id"])
                    save(collection, item)
                continue
            # one Item per (cell, catalog id), its chips in chip order
            for group in part.partition_by("cell", "catalog_id", maintain_order=True):
                members = group.to_dicts()
                w, s, e, n = (
                    float(group["west"].min()),  # type: ignore[arg-type]
                    float(group["south"].min()),  # type: ignore[arg-type]
                    float(group["east"].max()),  # type: ignore[arg-type]
                    float(group["north"].max()),  # type: ignore[arg-type]
                )
                head = members[0]
                cell, catalog_id = head["cell"], head["catalog_id"]
                when = dt.datetime.fromisoformat(head["acquisition_date"]).replace(tzinfo=dt.timezone.utc)
                item = pystac.Item(
                    id=f"Z{head['zone']:02d}-{cell}_{catalog_id}",
                    geometry=_polygon(w, s, e, n),
                    bbox=[w, s, e, n],
                    datetime=when,
                    properties={
                        "imagesim:catalog_id": catalog_id,
                        "imagesim:cell": cell,
                        "imagesim:zone": head["zone"],
                        "imagesim:chips": len(members),
                    },
                )
                for m in members:
                    asset = chip_asset(m, with_fields=True)
                    if not m["written"]:  # measured, no JPEG: keep its fields, point at where it would be
                        asset.roles = ["data", "not-written"]
                    item.add_asset(m["chip"].removesuffix(".jpg"), asset)
                source_assets(item, head["source_cog"], catalog_id)
                save(collection, item)

    for key, collection in collections.items():
        ext = extents[key]
        start, end = (dt.datetime.fromisoformat(d).replace(tzinfo=dt.timezone.utc) for d in ext.dates)
        collection.extent = pystac.Extent(pystac.SpatialExtent([ext.box]), pystac.TemporalExtent([[start, end]]))
        # the order a whole save gives: root, the items, parent
        collection.links = [link for link in collection.links if link.rel != "parent"] + collection.get_links("parent")
    catalog.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)  # the catalog and its collections: the items are saved
    return len(collections), items


def _is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


def write_stac(
    chips: str | Path,
    out: str | Path,
    *,
    ard_path: str | Path | None = None,
    granularity: str = options.STAC_GRANULARITY,
    labels: str | Path | None = None,
    embeddings: str | Path | None = None,
    overwrite: bool = False,
) -> StacSummary:
    """Write a self-contained STAC catalog of the chips folder ``chips`` to ``out`` (see the module)."""
    require("pystac", "stac", purpose="`imagesim stac`")
    options.check_choice("granularity", granularity, options.STAC_GRANULARITIES)
    t0 = time.perf_counter()
    chips_dir, out = Path(chips), Path(out)
    if not chips_dir.is_dir():
        raise ImagesimFileNotFoundError(f"{chips_dir}: no chips folder")
    if out.exists() and not (overwrite or _is_empty_dir(out)):
        raise OutputExistsError(f"{out}: exists and is not empty; pass `overwrite` to replace it")
    # pass 1: which collections (and whether anything can be catalogued); pass 2 writes the items
    listed = usable = 0
    keys: dict[tuple[str, int], None] = {}
    for table in acquisition_tables(chips_dir):
        rows = usable_rows(with_sources(table, ard_path))
        listed += table.height
        usable += rows.height
        keys.update(dict.fromkeys((str(r), int(z)) for r, z in rows.select("root", "zone").unique(maintain_order=True).iter_rows()))
    skipped = listed - usable
    if usable == 0:
        why = f"{listed} chips have no acquisition date or source COG (pass `ard_path`)" if listed else "no chips in the manifest"
        raise ImagesimError(f"{chips_dir}: nothing to catalog: {why}")
    geometry = granularity == "chip"
    tables = (
        chip_rows(rows, geometry=geometry) for t in acquisition_tables(chips_dir) if (rows := usable_rows(with_sources(t, ard_path))).height
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        collections, items = write_catalog(
            tables,
            list(keys),
            chips_dir,
            tmp,  # a folder name with a dot is no file
            granularity=granularity,
            labels=_labels(chips_dir, labels),
            embeddings=_embeddings(chips_dir, embeddings),
        )
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return StacSummary(out, collections, items, usable, skipped, time.perf_counter() - t0)
