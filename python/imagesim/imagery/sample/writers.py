"""Writing the sample's files: the COG of each acquisition, its mask GeoPackages (data, cloud, cloud
shadow, terrain shadow, water, healthy vegetation) and STAC-like metadata JSON, and the scene as an
OpenStreetMap PBF.

Every file is written under a temporary name beside its destination and moved into place when
complete, with ordinary (umask) permissions.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from imagesim import grid
from imagesim.errors import SampleDataError
from imagesim.fsutil import atomic_path, publish
from imagesim.imagery.ard import DATA_MASK, MASK_FILES
from imagesim.imagery.sample.acquisitions import CELLS, ZONE, Acquisition
from imagesim.imagery.sample.render import OVERVIEW_LEVELS, WindowRenderer, overviews
from imagesim.imagery.sample.scene import Scene

__all__ = ["metadata", "write_cog", "write_json", "write_mask", "write_osm"]

_P = grid.COG_PIXELS


def write_cog(
    path: Path,
    scene: Scene,
    acq: Acquisition,
    valid_geom,
    seed: int,
    small: bool,
    compression: str,
    clouds=None,
    cloud_shadows=None,
    quality: int = 90,
) -> float:
    """Render ``acq`` (with ``clouds`` and ``cloud_shadows`` when given) as the COG ``path``; return the fraction of valid pixels.

    ``quality`` is the JPEG quality (full resolution and overviews) when ``compression`` is ``"jpeg"``.
    """
    from osgeo import gdal

    renderer = WindowRenderer(scene, acq, valid_geom, seed, small, clouds, cloud_shadows)
    windows = renderer.windows
    n_valid = 0
    fd, src_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".src.tif", dir=path.parent)
    os.close(fd)

    try:
        src = gdal.GetDriverByName("GTiff").Create(
            src_name,
            _P,
            _P,
            3,
            gdal.GDT_Byte,
            ["TILED=YES", "BLOCKXSIZE=512", "BLOCKYSIZE=512", "COMPRESS=NONE", "SPARSE_OK=TRUE", "INTERLEAVE=PIXEL"],
        )
        src.SetGeoTransform(renderer.gt)
        src.SetProjection(renderer.srs.ExportToWkt())
        for b in range(3):
            src.GetRasterBand(b + 1).SetNoDataValue(0)
            src.GetRasterBand(b + 1).SetColorInterpretation([gdal.GCI_RedBand, gdal.GCI_GreenBand, gdal.GCI_BlueBand][b])
        # Overview levels as the COG driver would choose them (down to <= one 512 px block); we fill
        # them ourselves from each rendered window (no-data-aware average), which is much faster than
        # letting GDAL average 17,408² mostly-empty pixels, and keeps empty overview blocks sparse.
        src.BuildOverviews("NONE", [2**k for k in range(1, OVERVIEW_LEVELS + 1)])
        with ThreadPoolExecutor(max_workers=min(2, os.cpu_count() or 1)) as pool:
            for i in range(0, len(windows), 4):  # bounded: at most 4 rendered windows in memory
                for (c0, r0, w, h), px in pool.map(renderer.render, windows[i : i + 4]):
                    valid = px[0] > 0
                    count = int(np.count_nonzero(valid))
                    if not count:
                        continue
                    n_valid += count
                    src.WriteRaster(c0, r0, w, h, px, band_list=[1, 2, 3])
                    for k, level in enumerate(overviews(px, valid), start=1):
                        for b in range(3):
                            src.GetRasterBand(b + 1).GetOverview(k - 1).WriteArray(level[b], c0 >> k, r0 >> k)
        src.FlushCache()
        opts = ["BLOCKSIZE=512", "OVERVIEWS=AUTO", "SPARSE_OK=TRUE", "NUM_THREADS=ALL_CPUS", "BIGTIFF=IF_SAFER"]
        if compression == "jpeg":
            opts += ["COMPRESS=JPEG", f"QUALITY={int(quality)}", "OVERVIEW_COMPRESS=JPEG", f"OVERVIEW_QUALITY={int(quality)}"]
        else:
            opts += ["COMPRESS=DEFLATE", "PREDICTOR=2", "LEVEL=6", "OVERVIEW_COMPRESS=DEFLATE", "OVERVIEW_PREDICTOR=2"]
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.tif")
        try:
            out = gdal.GetDriverByName("COG").CreateCopy(str(tmp), src, options=opts)
            if out is None:
                raise SampleDataError(f"GDAL could not write {path}")
            out = None
            publish(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        src = None
    finally:
        for p in (src_name, src_name + ".ovr", src_name + ".aux.xml"):
            Path(p).unlink(missing_ok=True)
    return n_valid / (_P * _P)


def write_mask(path: Path, geom, cell: str, layer: str = DATA_MASK) -> None:
    """Write ``geom`` as the mask GeoPackage ``path``: layer ``layer`` (the mask's file name, e.g. ``cloud-mask``),
    MultiPolygon, cell UTM CRS, one feature per polygon part; an empty ``geom`` gives a layer with no features.
    """
    from osgeo import ogr, osr

    srs = osr.SpatialReference()
    srs.ImportFromEPSG(grid.epsg(cell, ZONE))
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)

    # GDAL's GPKG driver wants the .gpkg extension: a temporary name that keeps it, then a rename.
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.{threading.get_ident()}.tmp.gpkg")
    try:
        tmp.unlink(missing_ok=True)
        ds = ogr.GetDriverByName("GPKG").CreateDataSource(str(tmp))
        lyr = ds.CreateLayer(layer, srs, ogr.wkbMultiPolygon)
        lyr.CreateField(ogr.FieldDefn("value", ogr.OFTInteger))
        parts = [] if geom is None or geom.is_empty else [p for p in getattr(geom, "geoms", [geom]) if not p.is_empty]
        lyr.StartTransaction()
        for part in parts:
            feat = ogr.Feature(lyr.GetLayerDefn())
            feat.SetField("value", 1)
            feat.SetGeometry(ogr.ForceToMultiPolygon(ogr.CreateGeometryFromWkb(part.wkb)))
            lyr.CreateFeature(feat)
        lyr.CommitTransaction()
        ds = None
        publish(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path, data: object) -> None:
    """Write ``data`` as indented JSON to ``path`` (atomically)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")


def _to_wgs84(epsg: int):
    from pyproj import Transformer

    return Transformer.from_crs(epsg, 4326, always_xy=True)


def metadata(acq: Acquisition, valid_geom, frac: float, clouds=None) -> dict:
    """The STAC-like acquisition metadata of ``acq`` (footprint and cell bounds in WGS84).

    ``eo:cloud_cover`` is the share (percent) of the data area inside the cell under ``clouds``.
    """
    import shapely
    from shapely.geometry import box, mapping

    epsg = grid.epsg(acq.cell, ZONE)
    tr = _to_wgs84(epsg)
    b = grid.bounds(acq.cell)

    def to_ll(g):
        return shapely.transform(g, lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))

    data = valid_geom.intersection(box(*b))
    clouded = data.intersection(clouds).area if clouds is not None and not clouds.is_empty else 0.0
    footprint = to_ll(data.simplify(1.0))
    cell_ll = to_ll(box(*b))
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": f"{ZONE}/{acq.cell}/{acq.date}/{acq.catalog_id}",
        "bbox": [round(v, 7) for v in cell_ll.bounds],
        "geometry": mapping(footprint),
        "catalog_id": acq.catalog_id,
        "quadkey": acq.cell,
        "zone": ZONE,
        "epsg": epsg,
        "acquisition_datetime": acq.datetime,
        "sensor": acq.platform,
        "data_mask": f"{acq.catalog_id}-data-mask.gpkg",
        "properties": {
            "datetime": acq.datetime,
            "catalog_id": acq.catalog_id,
            "platform": acq.platform,
            "instruments": ["VNIR", "panchromatic"],
            "gsd": 0.31 if acq.platform == "WV03" else 0.46,
            "view:off_nadir": acq.off_nadir,
            "view:sun_elevation": acq.sun_elevation,
            "view:sun_azimuth": acq.sun_azimuth,
            "eo:cloud_cover": round(100.0 * clouded / data.area, 2) if data.area > 0 else 0.0,
            "grid:code": f"MXRA-Z{ZONE}-{acq.cell}",
            "tile:quadkey": acq.cell,
            "utm_zone": ZONE,
            "proj:epsg": epsg,
            "proj:shape": [_P, _P],
            "proj:transform": list(grid.cell_geotransform(acq.cell)),
            "tile:data_area": round(data.area / 1e6, 4),
            "tile:clouds_area": round(clouded / 1e6, 4),
            "tile:valid_fraction": round(frac, 6),
            "product": "ARD",
            "synthetic": True,
        },
        "assets": {
            "visual": {"href": f"./{acq.catalog_id}-visual.tif", "type": "image/tiff; application=geotiff; profile=cloud-optimized"},
            **{
                name: {"href": f"./{acq.catalog_id}-{name}.gpkg", "type": "application/geopackage+sqlite3"}
                for name in (DATA_MASK, *MASK_FILES.values())
            },
        },
    }


def write_osm(path: Path, scene: Scene) -> int:
    """Write the scene as OSM nodes/ways/multipolygon relations (WGS84) to ``path`` (pbf)."""
    import osmium
    from osmium.osm.mutable import Node, Relation, Way

    tr = _to_wgs84(grid.epsg(CELLS[0], ZONE))
    nodes: list[tuple[int, float, float]] = []
    ways: list[tuple[int, list[int], dict[str, str]]] = []
    rels: list[tuple[int, list[tuple[str, int, str]], dict[str, str]]] = []
    ids = {"n": 0, "w": 0, "r": 0}

    def new(kind: str) -> int:
        ids[kind] += 1
        return ids[kind]

    def coords_way(coords, tags: dict[str, str], closed: bool) -> int:
        xy = np.asarray(coords, float)[:, :2]
        if closed:
            xy = xy[:-1]  # shapely repeats the first vertex
        lon, lat = tr.transform(xy[:, 0], xy[:, 1])
        refs = []
        for x, y in zip(np.atleast_1d(lon), np.atleast_1d(lat)):
            nid = new("n")
            nodes.append((nid, float(x), float(y)))
            refs.append(nid)
        if closed:
            refs.append(refs[0])
        wid = new("w")
        ways.append((wid, refs, tags))
        return wid

    for f in scene.features:
        g = f.geom
        if g.geom_type in ("LineString", "MultiLineString"):
            for part in getattr(g, "geoms", [g]):
                if len(part.coords) >= 2:
                    coords_way(part.coords, dict(f.tags), closed=False)
            continue
        polys = [p for p in getattr(g, "geoms", [g]) if p.geom_type == "Polygon" and not p.is_empty]
        if not polys:
            continue
        if f.osm_relation or len(polys) > 1 or any(p.interiors for p in polys):
            members = []
            for p in polys:
                members.append(("w", coords_way(p.exterior.coords, {}, True), "outer"))
                for ring in p.interiors:
                    members.append(("w", coords_way(ring.coords, {}, True), "inner"))
            rels.append((new("r"), members, {"type": "multipolygon", **f.tags}))
        else:
            coords_way(polys[0].exterior.coords, dict(f.tags), closed=True)

    attrs: dict[str, Any] = {"version": 1, "timestamp": "2024-03-01T00:00:00Z", "changeset": 1, "uid": 1, "user": "imagesim"}
    with atomic_path(path) as tmp:
        final = tmp.with_name(tmp.name + ".osm.pbf")  # osmium picks the format from the suffix
        try:
            writer = osmium.SimpleWriter(str(final))
            try:
                for nid, lon, lat in nodes:
                    writer.add_node(Node(id=nid, location=(lon, lat), tags={}, **attrs))
                for wid, refs, tags in ways:
                    writer.add_way(Way(id=wid, nodes=refs, tags=tags, **attrs))
                for rid, members, tags in rels:
                    writer.add_relation(Relation(id=rid, members=members, tags=tags, **attrs))
            finally:
                writer.close()
            publish(final, tmp)
        finally:
            final.unlink(missing_ok=True)
    return len(nodes) + len(ways) + len(rels)
