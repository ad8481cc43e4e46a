"""GeoParquet 1.1 chip tables (imagesim.geoparquet): footprints, antimeridian/polar, and the four
tables read back by GeoPandas (and OGR when its Parquet driver is there)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import shapely

from imagesim import geoparquet, grid
from imagesim.errors import GridError

from onnx_models import tiny_onnx

NORTH = "03131313131313131"  # zone 33, a z17 chip at 15°E, 30.85°N
SOUTH = "21313131313131313"  # zone 33, its mirror south of the equator (false northing)
SIZE = 32  # input of the stand-in ONNX model


def _independent(zone: int, quadkey: str) -> np.ndarray:
    """The chip's corners (W,S),(E,S),(E,N),(W,N) from the tile maths alone, transformed by pyproj."""
    from pyproj import Transformer

    x, y, z = grid.quadkey_to_tile(quadkey)
    size = 20_480_000 / 2**z
    west, north = -9_740_000 + x * size, 10_240_000 - y * size
    south_shift = 10_000_000 if quadkey[0] in "23" else 0
    code = (32700 if south_shift else 32600) + zone
    xs = [west, west + size, west + size, west]
    ys = [north - size + south_shift, north - size + south_shift, north + south_shift, north + south_shift]
    lon, lat = Transformer.from_crs(code, 4326, always_xy=True).transform(xs, ys)
    return np.column_stack([lon, lat])


@pytest.mark.parametrize("quadkey", [NORTH, SOUTH])
def test_footprint_is_the_chip_square_in_wgs84(quadkey: str) -> None:
    (poly,) = geoparquet.footprint_polygons([33], [quadkey])
    ring = shapely.get_coordinates(poly)
    assert poly.geom_type == "Polygon" and poly.is_valid and len(ring) == 5
    np.testing.assert_allclose(ring[:4], _independent(33, quadkey), atol=1e-9)
    assert shapely.is_ccw(poly.exterior)


def test_footprint_reference_corner() -> None:
    (poly,) = geoparquet.footprint_polygons([33], [NORTH])
    west, south = shapely.get_coordinates(poly)[0]
    assert west == pytest.approx(14.998365798684524, abs=1e-7)
    assert south == pytest.approx(30.85273310271691, abs=1e-7)


def test_big_chips_are_densified_small_ones_are_not() -> None:
    cell = NORTH[: grid.CELL_ZOOM]
    big, small = geoparquet.footprint_polygons([33, 33], [cell, NORTH])
    assert len(shapely.get_coordinates(small)) == 5
    assert len(shapely.get_coordinates(big)) == 4 * 32 + 1  # 5 km cell: 32 segments of 156 m per edge


def test_footprints_of_a_cell_are_columns() -> None:
    qks = grid.children(NORTH[:12], 17)  # 1,024 chips
    geometry, bbox = geoparquet.footprints([33] * len(qks), qks)
    assert geometry.dtype == pl.Binary and geometry.null_count() == 0 and bbox.len() == len(qks)
    polys = shapely.from_wkb(geometry.to_numpy())
    np.testing.assert_array_equal(shapely.bounds(polys), bbox.struct.unnest().to_numpy())
    assert shapely.get_type_id(polys).tolist() == [shapely.GeometryType.POLYGON] * len(qks)


def test_footprints_agree_with_pyproj_across_the_grid() -> None:
    """The Rust UTM inverse against PROJ: z17 chips anywhere an ARD cell can be (eastings 160–840 km, both
    hemispheres, up to 84° latitude) in every zone, and bigger chips, corner by corner."""
    from pyproj import Transformer

    transformers: dict[tuple[int, int], Transformer] = {}

    def transformer(source: int, target: int) -> Transformer:
        if (source, target) not in transformers:
            transformers[source, target] = Transformer.from_crs(source, target, always_xy=True)
        return transformers[source, target]

    rng = np.random.default_rng(7)
    size = 20_480_000 / 2**17
    zones, qks = [], []
    for _ in range(300):
        zone = int(rng.integers(1, 61))
        lat = float(rng.uniform(-79.0, 83.0))
        north = lat >= 0
        tr = transformer(4326, (32600 if north else 32700) + zone)
        easting = float(rng.uniform(160_000, 840_000))
        _, northing = tr.transform(zone * 6 - 183, lat)
        y = northing - (0 if north else 10_000_000)
        zoom = int(rng.choice([12, 14, 17, 17, 17]))
        tile = (int((easting + 9_740_000) // size), int((10_240_000 - y) // size), 17)
        qks.append(grid.tile_to_quadkey(tile)[:zoom])
        zones.append(zone)
    polys = geoparquet.footprint_polygons(zones, qks)
    for zone, qk, poly in zip(zones, qks, polys):
        west, south, east, north_ = grid.bounds(qk)
        ring = shapely.get_coordinates(poly)
        segments = 2 ** max(0, 17 - len(qk))
        assert len(ring) == 4 * segments + 1
        corners = ring[[0, segments, 2 * segments, 3 * segments]]
        lon, lat = transformer(grid.epsg(qk, zone), 4326).transform([west, east, east, west], [south, south, north_, north_])
        np.testing.assert_allclose(corners, np.column_stack([lon, lat]), rtol=0, atol=1e-9, err_msg=f"Z{zone}-{qk}")


def test_the_shipped_crs_is_pyprojs_epsg_4326() -> None:
    from pyproj import CRS

    doc = geoparquet.crs_projjson()
    assert CRS.from_json_dict(doc) == CRS.from_epsg(4326)
    assert doc["id"] == {"authority": "EPSG", "code": 4326}


def _tile_at(zone: int, lon: float, lat: float) -> str:
    from pyproj import Transformer

    x, y = Transformer.from_crs(4326, 32600 + zone, always_xy=True).transform(lon, lat)
    size = 20_480_000 / 2**17
    return grid.tile_to_quadkey((int((x + 9_740_000) // size), int((10_240_000 - y) // size), 17))


@pytest.mark.parametrize(("zone", "lon", "lat"), [(1, -180.0, 10.0), (60, 180.0, -10.0), (1, -180.0, -60.0)])
def test_a_chip_across_the_antimeridian_is_split(zone: int, lon: float, lat: float) -> None:
    qk = _tile_at(zone, lon, lat)
    (geom,) = geoparquet.footprint_polygons([zone], [qk])
    assert geom.geom_type == "MultiPolygon" and geom.is_valid and len(geom.geoms) == 2
    lons = shapely.get_coordinates(geom)[:, 0]
    assert lons.min() >= -180 and lons.max() <= 180 and (lons == 180).any() and (lons == -180).any()
    assert all(shapely.is_ccw(part.exterior) for part in geom.geoms)
    assert geom.area == pytest.approx(shapely.Polygon(_shifted(_independent(zone, qk))).area, rel=1e-9)
    inside = _tile_at(zone, lon + (3.0 if zone == 1 else -3.0), lat)
    frame = geoparquet.with_footprints(pl.DataFrame({"zone": [zone, zone], "quadkey": [qk, inside]}))
    meta = json.loads(geoparquet.geo_metadata(frame)["geo"])
    assert meta["columns"]["geometry"]["geometry_types"] == ["MultiPolygon", "Polygon"]
    assert meta["columns"]["geometry"]["bbox"][0] == -180.0 and meta["columns"]["geometry"]["bbox"][2] == 180.0


def _shifted(corners: np.ndarray) -> np.ndarray:
    out = corners.copy()
    out[out[:, 0] < 0, 0] += 360
    return out


def test_a_polar_chip_is_refused_by_name() -> None:
    qk = _tile_at(1, -179.0, 85.0)
    with pytest.raises(GridError, match=rf"Z1-{qk}.*84° latitude"):
        geoparquet.footprint_polygons([1], [qk])
    with pytest.raises(GridError, match=r"polar-chip\.jpg.*84°"):
        geoparquet.with_footprints(pl.DataFrame({"chip": ["polar-chip.jpg"], "zone": [1], "quadkey": [qk]}))


def test_a_row_without_zone_or_quadkey_is_refused_unless_allowed() -> None:
    frame = pl.DataFrame({"chip": ["holiday.jpg", f"Z33-{NORTH}_1040010012345678.jpg"]})
    with pytest.raises(GridError, match="holiday.jpg"):
        geoparquet.with_footprints(frame)
    out = geoparquet.with_footprints(frame, allow_missing=True)
    assert out["geometry"].is_null().to_list() == [True, False]
    assert out["bbox"].is_null().to_list() == [True, False]


@pytest.fixture(scope="module")
def tables(tmp_path_factory, small_sample) -> dict[str, Path]:
    """The small sample chipped, no-data indexed, labelled and encoded: the four GeoParquet tables."""
    from imagesim.imagery.chip import ChipSettings, run_chip
    from imagesim.imagery.nodata import run_nodata_index
    from imagesim.labels.build import LabelSettings, build_labels
    from imagesim.labels.cells import find_cells
    from imagesim.labels.osm_import import import_osm
    from imagesim.learn.encode import EncodeSettings, run_encode

    base = tmp_path_factory.mktemp("geoparquet")
    chips = base / "chips"
    run_chip(small_sample.root, chips, ChipSettings(zoom=17))
    run_nodata_index(chips)
    osm_root = base / "ard"
    cells = find_cells(small_sample.root)
    for cell in cells:
        cell.folder(osm_root).mkdir(parents=True)
    import_osm(small_sample.osm_pbf, osm_root, cells)
    build_labels(chips, osm_root, LabelSettings(include=("partial",)))
    run_encode(tiny_onnx(base / "model.onnx", SIZE), chips, EncodeSettings(provider="cpu", include_nodata=True))
    return {name: chips / f"{name}.parquet" for name in ("chips", "nodata", "labels", "embeddings")}


@pytest.mark.parametrize("name", ["chips", "nodata", "labels", "embeddings"])
def test_tables_read_back_with_geopandas(tables: dict[str, Path], name: str) -> None:
    import geopandas

    gdf = geopandas.read_parquet(tables[name])
    assert len(gdf) > 0
    assert gdf.crs is not None and gdf.crs.to_epsg() == 4326
    assert gdf.geometry.name == "geometry" and gdf.geometry.is_valid.all() and (gdf.geom_type == "Polygon").all()
    bounds = gdf.geometry.bounds
    bbox = pl.read_parquet(tables[name], columns=["bbox"]).unnest("bbox")  # GeoPandas hides the covering column
    for key, col in (("xmin", "minx"), ("ymin", "miny"), ("xmax", "maxx"), ("ymax", "maxy")):
        np.testing.assert_array_equal(bbox[key].to_numpy(), bounds[col].to_numpy())
    meta = json.loads(pl.read_parquet_metadata(tables[name])["geo"])
    column = meta["columns"]["geometry"]
    assert meta["version"] == "1.1.0" and column["covering"]["bbox"]["xmin"] == ["bbox", "xmin"]
    np.testing.assert_allclose(column["bbox"], gdf.total_bounds)
    # Every chip's footprint is its grid square (zone/quadkey from the chip name).
    parsed = [grid.parse_chip_name(c) for c in gdf["chip"]]
    want = geoparquet.footprint_polygons([p.zone for p in parsed], [p.quadkey for p in parsed])
    assert shapely.equals_exact(np.asarray(gdf.geometry.values, dtype=object), want, tolerance=1e-12).all()


def test_manifest_reader_keeps_its_columns_and_rewrites_keep_geometry(tables: dict[str, Path], small_sample) -> None:
    from imagesim.artefacts import MANIFEST_SCHEMA, read_manifest
    from imagesim.imagery.chip import ChipSettings, run_chip

    raw = pl.read_parquet(tables["chips"])
    assert set(raw.columns) == set(MANIFEST_SCHEMA) | {"geometry", "bbox"}
    chips = tables["chips"].parent
    read = read_manifest(chips)
    assert read.columns == list(MANIFEST_SCHEMA)
    assert read.equals(raw.select(list(MANIFEST_SCHEMA)))
    # The manifest merge of a re-run still works, and the file it re-writes is GeoParquet again.
    before = tables["chips"].stat().st_mtime_ns
    run_chip(small_sample.root, chips, ChipSettings(zoom=17, overwrite=True))
    assert tables["chips"].stat().st_mtime_ns != before
    again = pl.read_parquet(tables["chips"])
    assert again.drop("geometry", "bbox").sort("chip").equals(raw.drop("geometry", "bbox").sort("chip"))
    assert again["geometry"].null_count() == 0 and "geo" in pl.read_parquet_metadata(tables["chips"])


def test_tables_read_back_with_ogr(tables: dict[str, Path]) -> None:
    ogr = pytest.importorskip("osgeo.ogr")
    if ogr.GetDriverByName("Parquet") is None:
        pytest.skip("the installed GDAL has no Parquet driver (OGR reading left untested here)")
    for path in tables.values():
        ds = ogr.Open(str(path))
        layer = ds.GetLayer(0)
        assert layer.GetSpatialRef().GetAuthorityCode(None) == "4326"
        assert layer.GetFeatureCount() == pl.read_parquet(path).height


def test_wkb_type_ids_read_each_header() -> None:
    """The `geo` metadata's geometry_types come from the WKB headers: either byte order, ISO Z codes, and
    nulls or values too short to hold a header left out."""
    square = shapely.box(0, 0, 1, 1)
    multi = shapely.MultiPolygon([square, shapely.box(2, 2, 3, 3)])
    big_endian = shapely.to_wkb(square, byte_order=0)
    z_point = shapely.to_wkb(shapely.Point(1, 2, 3), flavor="iso", include_srid=False)
    assert geoparquet.wkb_type_ids([square.wkb, None, big_endian, b"", b"\x01\x03"]) == {3}
    assert geoparquet.wkb_type_ids([multi.wkb, square.wkb] * 3) == {3, 6}
    assert geoparquet.wkb_type_ids([z_point]) == {1}
    assert geoparquet.wkb_type_ids([]) == set()
