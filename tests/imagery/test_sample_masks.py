"""`imagesim sample-data`'s ARD vector masks (cloud, cloud shadow, terrain shadow, water, vegetation) and the clouds in the pixels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import shapely
from osgeo import gdal, ogr, osr

from imagesim import grid
from imagesim.imagery.ard import DATA_MASK, MASK_FILES
from imagesim.imagery.sample import ACQUISITIONS, CELLS, ZONE, write_sample
from imagesim.imagery.sample.acquisitions import valid_polygon
from imagesim.imagery.sample.clouds import acquisition_masks, cog_extent

gdal.UseExceptions()
ogr.UseExceptions()

SEED = 3


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    return write_sample(tmp_path_factory.mktemp("sample-masks"), seed=SEED, small=True, compression="deflate")


def _mask(cog: Path, catalog_id: str, name: str) -> Path:
    return cog.parent / f"{catalog_id}-{name}.gpkg"


def _read(gpkg: Path):
    """(layer name, layer geometry type, EPSG, shapely parts) of a mask GeoPackage."""
    ds = ogr.Open(str(gpkg))
    assert ds.GetLayerCount() == 1
    layer = ds.GetLayer(0)
    srs = layer.GetSpatialRef()
    srs.AutoIdentifyEPSG()
    parts = []
    for feat in layer:
        geom = feat.GetGeometryRef()
        assert geom.GetGeometryType() == ogr.wkbMultiPolygon
        parts.append(shapely.from_wkb(bytes(geom.ExportToWkb())))
    return layer.GetName(), layer.GetGeomType(), int(srs.GetAuthorityCode(None)), parts


def _geom(gpkg: Path):
    return shapely.union_all(_read(gpkg)[3])


def _window(acq):
    """The 512-aligned pixel window (col, row, size) around the acquisition's small imagery box."""
    c0, r0, s = acq.small_box
    bc0, br0 = (c0 // 512) * 512, (r0 // 512) * 512
    return bc0, br0, -(-(c0 + s) // 512) * 512 - bc0


def _pixels(cog: Path, acq) -> np.ndarray:
    col, row, size = _window(acq)
    return gdal.Open(str(cog)).ReadAsArray(col, row, size, size).astype(np.int32)


def _burn(geom, acq) -> np.ndarray:
    """Which pixels of :func:`_window` have their centre in ``geom`` (GDAL rasterization)."""
    col, row, size = _window(acq)
    gt = grid.cell_geotransform(acq.cell)
    mem = gdal.GetDriverByName("MEM").Create("", size, size, 1, gdal.GDT_Byte)
    mem.SetGeoTransform((gt[0] + col * gt[1], gt[1], 0.0, gt[3] + row * gt[5], 0.0, gt[5]))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(grid.epsg(acq.cell, ZONE))
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    mem.SetSpatialRef(srs)
    if not geom.is_empty:
        src = ogr.GetDriverByName("Memory").CreateDataSource("g")
        lyr = src.CreateLayer("g", srs, ogr.wkbUnknown)
        feat = ogr.Feature(lyr.GetLayerDefn())
        feat.SetGeometry(ogr.CreateGeometryFromWkb(shapely.to_wkb(geom)))
        lyr.CreateFeature(feat)
        gdal.RasterizeLayer(mem, [1], lyr, burn_values=[1])
    return mem.GetRasterBand(1).ReadAsArray().astype(bool)


def test_every_mask_file_is_a_polygon_layer_in_the_cell_crs(sample) -> None:
    for cog, acq in zip(sample.cogs, ACQUISITIONS):
        extent = cog_extent(acq.cell).buffer(0.01)
        meta = json.loads((cog.parent / f"{acq.catalog_id}.json").read_text())
        for name in (DATA_MASK, *MASK_FILES.values()):
            path = _mask(cog, acq.catalog_id, name)
            assert path.is_file(), path
            layer, geom_type, epsg, parts = _read(path)
            assert layer == name and geom_type == ogr.wkbMultiPolygon
            assert epsg == grid.epsg(acq.cell, ZONE) == 32610
            assert all(p.is_valid and extent.contains(p) for p in parts), name
            if name == MASK_FILES["terrain_shadow"]:
                assert parts == []  # flat scene: a valid, empty layer
            else:
                assert parts, name
            assert meta["assets"][name]["href"] == f"./{path.name}"
        # eo:cloud_cover is the clouded share of the data area inside the cell, a few to ~15 %
        data = _geom(_mask(cog, acq.catalog_id, DATA_MASK)).intersection(shapely.box(*grid.bounds(acq.cell)))
        clouded = data.intersection(_geom(_mask(cog, acq.catalog_id, MASK_FILES["cloud"]))).area
        props = meta["properties"]
        assert props["eo:cloud_cover"] == pytest.approx(100 * clouded / data.area, abs=0.01)
        assert 2.0 < props["eo:cloud_cover"] < 16.0
        assert props["tile:clouds_area"] == pytest.approx(clouded / 1e6, abs=1e-4)
        assert sample.cloud_cover[acq.catalog_id] == props["eo:cloud_cover"]


def test_clouds_are_multipart_with_holes_and_cross_the_strip_edge(sample) -> None:
    for cog, acq in zip(sample.cogs, ACQUISITIONS):
        clouds = _read(_mask(cog, acq.catalog_id, MASK_FILES["cloud"]))[3]
        data = _geom(_mask(cog, acq.catalog_id, DATA_MASK))
        assert len(clouds) >= 3
        assert any(len(p.geoms[0].interiors) for p in clouds)
        assert any(p.intersects(data) and not data.contains(p) for p in clouds)  # partly over no-data
        # realistic outlines: hundreds of vertices, not a handful and not 100,000s
        counts = [shapely.get_num_coordinates(p) for p in clouds if p.area > 2000]
        assert counts and max(counts) > 150 and max(counts) < 20_000
        # shadows: separate polygons, never under their own clouds
        shadows = _geom(_mask(cog, acq.catalog_id, MASK_FILES["cloud_shadow"]))
        assert shadows.area > 0.2 * shapely.union_all(clouds).area
        assert shadows.intersection(shapely.union_all(clouds)).area < 1.0


def test_the_two_acquisitions_of_a_cell_have_different_clouds(sample) -> None:
    a, b = (_geom(_mask(sample.cogs[i], ACQUISITIONS[i].catalog_id, MASK_FILES["cloud"])) for i in (0, 1))
    assert ACQUISITIONS[0].cell == ACQUISITIONS[1].cell == CELLS[0]
    assert a.intersection(b).area < 0.5 * min(a.area, b.area)


def test_water_and_vegetation_masks_follow_the_scene(sample) -> None:
    cog, acq = sample.cogs[2], ACQUISITIONS[2]  # cell B's window holds the lake
    px = _pixels(cog, acq)
    clouds = _geom(_mask(cog, acq.catalog_id, MASK_FILES["cloud"])).buffer(30)
    shadows = _geom(_mask(cog, acq.catalog_id, MASK_FILES["cloud_shadow"])).buffer(30)
    clear = _burn(_geom(_mask(cog, acq.catalog_id, DATA_MASK)).buffer(-2), acq) & ~_burn(clouds.union(shadows), acq)
    water = _burn(_geom(_mask(cog, acq.catalog_id, MASK_FILES["water"])).buffer(-3), acq) & clear
    veg = _burn(_geom(_mask(cog, acq.catalog_id, MASK_FILES["vegetation"])).buffer(-3), acq) & clear
    assert water.sum() > 10_000 and veg.sum() > 10_000
    # water is dark, vegetation greener than it is blue
    assert px[:, water].mean() < 0.75 * px[:, clear & ~water].mean()
    assert (px[1, veg] - px[2, veg]).mean() > 10
    # clouds hide both
    cloud = _geom(_mask(cog, acq.catalog_id, MASK_FILES["cloud"]))
    for name in (MASK_FILES["water"], MASK_FILES["vegetation"]):
        assert _geom(_mask(cog, acq.catalog_id, name)).intersection(cloud).area < 1.0


def _means(cog, acq, other_cog, other_acq, deep, clear_other):
    """Mean DN of ``deep`` pixels in ``cog`` and of the same pixels in ``other_cog`` where they are clear there."""
    a, b = _pixels(cog, acq), _pixels(other_cog, other_acq)
    sel = deep & clear_other & (a.min(axis=0) > 0) & (b.min(axis=0) > 0)
    return int(sel.sum()), a[:, sel].mean() if sel.any() else 0.0, b[:, sel].mean() if sel.any() else 0.0


def test_clouds_are_bright_and_shadows_dark_in_the_pixels(sample) -> None:
    geoms = {}
    for i in (0, 1):
        cog, acq = sample.cogs[i], ACQUISITIONS[i]
        geoms[i] = (_geom(_mask(cog, acq.catalog_id, MASK_FILES["cloud"])), _geom(_mask(cog, acq.catalog_id, MASK_FILES["cloud_shadow"])))
    shadow_px = 0
    for i, j in ((0, 1), (1, 0)):
        acq, other = ACQUISITIONS[i], ACQUISITIONS[j]
        cloud, shadow = geoms[i]
        clear_other = ~_burn(geoms[j][0].union(geoms[j][1]).buffer(25), other)
        # well inside a cloud: bright white-grey, much brighter than the same ground in the other acquisition
        n, here, there = _means(sample.cogs[i], acq, sample.cogs[j], other, _burn(cloud.buffer(-15), acq), clear_other)
        assert n > 2000
        assert here > 200 and here > there + 60
        # well inside a shadow (and off the clouds): darker than the same ground in the other acquisition
        deep = _burn(shadow.buffer(-15).difference(cloud.buffer(25)), acq)
        n, here, there = _means(sample.cogs[i], acq, sample.cogs[j], other, deep, clear_other)
        if n:
            assert here < 0.8 * there
        shadow_px += n
    assert shadow_px > 2000


def test_cloud_edges_are_soft_and_centred_on_the_polygon(sample) -> None:
    cog, acq = sample.cogs[0], ACQUISITIONS[0]
    px = _pixels(cog, acq).mean(axis=0)
    cloud = _geom(_mask(cog, acq.catalog_id, MASK_FILES["cloud"]))
    shadow = _geom(_mask(cog, acq.catalog_id, MASK_FILES["cloud_shadow"]))
    valid = _burn(_geom(_mask(cog, acq.catalog_id, DATA_MASK)).buffer(-60), acq) & ~_burn(shadow.buffer(40), acq)

    def ring(lo: float, hi: float) -> float:
        sel = _burn(cloud.buffer(hi).difference(cloud.buffer(lo)), acq) & valid
        assert sel.sum() > 500
        return float(px[sel].mean())

    inner, outer = ring(-30, -20), ring(25, 35)
    just_in, just_out = ring(-6, -4), ring(4, 6)
    contrast = inner - outer
    assert contrast > 80
    # a soft ramp: 5 m inside is not yet full cloud, 5 m outside not yet bare ground ...
    assert just_in < inner - 0.1 * contrast and just_out > outer + 0.1 * contrast
    # ... centred on the polygon's edge (the 0.5 alpha level)
    assert abs((just_in + just_out) / 2 - (inner + outer) / 2) < 0.15 * contrast


def test_no_valid_pixel_is_zero_and_no_data_stays_zero(sample) -> None:
    for cog, acq in zip(sample.cogs, ACQUISITIONS):
        px = _pixels(cog, acq)
        data = _geom(_mask(cog, acq.catalog_id, DATA_MASK))
        inside, outside = _burn(data.buffer(-1), acq), ~_burn(data.buffer(1), acq)
        assert inside.sum() > 100_000 and outside.sum() > 100_000
        assert px[:, inside].min() >= 1
        assert not px[:, outside].any()
        # shadowed data stays well above the no-data threshold (4 DN)
        shadowed = inside & _burn(_geom(_mask(cog, acq.catalog_id, MASK_FILES["cloud_shadow"])), acq)
        if shadowed.any():
            assert np.percentile(px[:, shadowed].max(axis=0), 1) >= 8


def test_masks_are_deterministic_and_seed_dependent(sample) -> None:
    for cog, acq in zip(sample.cogs, ACQUISITIONS):
        again = acquisition_masks(acq, valid_polygon(acq, True), SEED, True)
        twice = acquisition_masks(acq, valid_polygon(acq, True), SEED, True)
        other = acquisition_masks(acq, valid_polygon(acq, True), SEED + 1, True)
        for key in ("cloud", "cloud_shadow", "water", "vegetation"):
            assert shapely.equals_exact(again[key], twice[key], 0.0)
            written = _geom(_mask(cog, acq.catalog_id, MASK_FILES[key]))
            assert written.symmetric_difference(again[key]).area < 1e-3
        assert again["cloud"].symmetric_difference(other["cloud"]).area > 0.5 * again["cloud"].area
