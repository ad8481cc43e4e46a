"""`imagesim sample-data`'s planted changes: the later acquisition of the first cell shows them, the ground truth names them."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import shapely
from osgeo import gdal, ogr, osr
from pyproj import Transformer
from shapely.geometry import MultiPolygon, shape

from imagesim import grid
from imagesim.errors import OutputExistsError, SampleDataError
from imagesim.imagery.coverage import chip_areas
from imagesim.imagery.sample import ACQUISITIONS, CHANGES_TRUTH, MARKER, ZONE, write_sample
from imagesim.imagery.sample.acquisitions import valid_polygon
from imagesim.imagery.sample.changes import (
    CLOUD_CLEARANCE,
    FULL_PER_KIND,
    FULL_SPACING,
    KINDS,
    clear_region,
    planted_changes,
)
from imagesim.imagery.sample.clouds import acquisition_masks
from imagesim.imagery.sample.render import WindowRenderer
from imagesim.imagery.sample.scene import Scene, build_scene

gdal.UseExceptions()
BEFORE, AFTER = ACQUISITIONS[0], ACQUISITIONS[1]
PROPS = {"kind", "zone", "cell", "before_catalog_id", "before_date", "after_catalog_id", "after_date"}
EPSG = grid.epsg(AFTER.cell, ZONE)


def _truth(sample) -> dict:
    return json.loads(sample.changes_truth.read_text())


def _utm_areas(sample) -> list[tuple[str, object]]:
    """(kind, changed area in the cell's UTM metres) of each truth feature."""
    tr = Transformer.from_crs(4326, EPSG, always_xy=True)
    out = []
    for feat in _truth(sample)["features"]:
        geom = shapely.transform(shape(feat["geometry"]), lambda ll: np.column_stack(tr.transform(ll[:, 0], ll[:, 1])))
        out.append((feat["properties"]["kind"], geom))
    return out


def _mask(cog: Path, name: str):
    catalog_id = cog.name[: -len("-visual.tif")]
    ds = ogr.Open(str(cog.parent / f"{catalog_id}-{name}.gpkg"))  # the layer needs its dataset alive
    geoms = [shapely.from_wkb(bytes(f.GetGeometryRef().ExportToWkb())) for f in ds.GetLayer(0)]
    return shapely.union_all(geoms) if geoms else MultiPolygon()


def _window(acq) -> tuple[int, int, int]:
    """The 512-aligned (col, row, size) window around the small imagery box."""
    c0, r0, s = acq.small_box
    bc0, br0 = (c0 // 512) * 512, (r0 // 512) * 512
    return bc0, br0, -(-(c0 + s) // 512) * 512 - bc0


def _burn(geoms, acq) -> np.ndarray:
    """``geoms`` (UTM) rasterized on :func:`_window`'s pixels."""
    c0, r0, size = _window(acq)
    gt = grid.cell_geotransform(acq.cell)
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(EPSG)
    mem = gdal.GetDriverByName("MEM").Create("", size, size, 1, gdal.GDT_Byte)
    mem.SetGeoTransform((gt[0] + c0 * gt[1], gt[1], 0, gt[3] + r0 * gt[5], 0, gt[5]))
    mem.SetProjection(srs.ExportToWkt())
    ds = ogr.GetDriverByName("Memory").CreateDataSource("g")
    lyr = ds.CreateLayer("g", srs, ogr.wkbUnknown)
    for g in geoms:
        if not g.is_empty:
            feat = ogr.Feature(lyr.GetLayerDefn())
            feat.SetGeometry(ogr.CreateGeometryFromWkb(g.wkb))
            lyr.CreateFeature(feat)
    gdal.RasterizeLayer(mem, [1], lyr, burn_values=[1])
    return mem.ReadAsArray() > 0


def _pixels(cog: Path, acq) -> np.ndarray:
    c0, r0, size = _window(acq)
    return gdal.Open(str(cog)).ReadAsArray(c0, r0, size, size).astype(np.float64)


def test_truth_is_geojson_with_the_planted_changes(small_sample) -> None:
    truth = _truth(small_sample)
    assert truth["type"] == "FeatureCollection"
    assert truth["imagesim"] == {"seed": 7, "small": True}
    feats = truth["features"]
    assert len(feats) >= 3 and small_sample.planted == len(feats)
    assert small_sample.changes_truth == small_sample.root.parent / CHANGES_TRUTH
    assert json.loads((small_sample.root.parent / MARKER).read_text())["changes_truth"] == CHANGES_TRUTH
    kinds = Counter(f["properties"]["kind"] for f in feats)
    assert set(kinds) <= set(KINDS) and len(kinds) >= 3
    for feat in feats:
        assert feat["type"] == "Feature" and set(feat["properties"]) == PROPS
        p = feat["properties"]
        assert (p["zone"], p["cell"]) == (ZONE, AFTER.cell)
        assert (p["before_catalog_id"], p["before_date"]) == (BEFORE.catalog_id, "2023-06-14")
        assert (p["after_catalog_id"], p["after_date"]) == (AFTER.catalog_id, "2024-02-20")
        geom = shape(feat["geometry"])
        assert geom.geom_type in ("Polygon", "MultiPolygon") and geom.is_valid
        lon, lat = geom.centroid.coords[0]
        assert -123 < lon < -122 and 37 < lat < 38  # WGS84 lon/lat order, zone 10 north
        # RFC 7946: exterior rings counterclockwise
        for poly in getattr(geom, "geoms", [geom]):
            assert poly.exterior.is_ccw


def test_changes_lie_in_clear_data_of_both_acquisitions(small_sample) -> None:
    cogs = small_sample.cogs[:2]
    valid = [_mask(c, "data-mask") for c in cogs]
    dirty = shapely.union_all([_mask(c, n) for c in cogs for n in ("cloud-mask", "cloud-shadow-mask")])
    for kind, area in _utm_areas(small_sample):
        assert area.area > 300, kind
        for v in valid:
            assert v.buffer(0.01).contains(area), kind
        assert area.distance(dirty) >= CLOUD_CLEARANCE - 0.01, kind


def test_same_seed_same_truth(small_sample, small_sample_deflate) -> None:
    assert small_sample.changes_truth.read_bytes() == small_sample_deflate.changes_truth.read_bytes()


def test_after_acquisition_changed_where_planted(small_sample_deflate) -> None:
    """After a per-band linear fit of after -> before outside the planted areas, the residual inside them is far larger."""
    sample = small_sample_deflate
    before, after = _pixels(sample.cogs[0], BEFORE), _pixels(sample.cogs[1], AFTER)
    areas = [a for _k, a in _utm_areas(sample)]
    dirty = [_mask(c, n).buffer(20.0) for c in sample.cogs[:2] for n in ("cloud-mask", "cloud-shadow-mask")]
    usable = (before[0] > 0) & (after[0] > 0) & ~_burn(dirty, AFTER)
    inside = usable & _burn(areas, AFTER)
    # new houses cast shadows beyond their footprints: leave a margin out of the "outside"
    outside = usable & ~_burn([a.buffer(25.0) for a in areas], AFTER)
    assert inside.sum() > 2000 and outside.sum() > 50_000
    # Per band: least squares, then again without the outliers (shadows of the town's houses move with
    # the sun between the acquisitions), so that the fit follows the radiometric difference.
    resid = np.zeros(before.shape[1:])
    for b in range(3):
        x, y = after[b][outside], before[b][outside]
        slope, icpt = np.polyfit(x, y, 1)
        r = np.abs(y - slope * x - icpt)
        keep = r < 2.5 * np.median(r)
        slope, icpt = np.polyfit(x[keep], y[keep], 1)
        assert 0.7 < slope < 1.3
        resid += np.abs(before[b] - (slope * after[b] + icpt)) / 3
    r_in, r_out = resid[inside].mean(), resid[outside].mean()
    assert r_in >= 3 * r_out, (r_in, r_out)
    # every site on its own stands out
    for area in areas:
        site = usable & _burn([area], AFTER)
        assert resid[site].mean() >= 2 * r_out, (area.bounds, resid[site].mean(), r_out)
    # unplanted places (64 px blocks wholly outside) stay near the overall residual
    n = resid.shape[0] // 64
    blocks = outside[: n * 64, : n * 64].reshape(n, 64, n, 64).all(axis=(1, 3))
    means = resid[: n * 64, : n * 64].reshape(n, 64, n, 64).mean(axis=(1, 3))[blocks]
    assert means.size > 20 and np.percentile(means, 90) < r_in / 2


def test_only_planted_places_change(small_sample_deflate) -> None:
    """The later acquisition rendered with and without the planted features: identical away from them;
    the earlier acquisition's COG is the base scene's rendering."""
    sample = small_sample_deflate
    seed = 7
    scene = build_scene(seed)
    valid = {a.catalog_id: valid_polygon(a, True) for a in (BEFORE, AFTER)}
    masks = {a.catalog_id: acquisition_masks(a, valid[a.catalog_id], seed, True) for a in (BEFORE, AFTER)}
    b_id, a_id = BEFORE.catalog_id, AFTER.catalog_id
    planted = planted_changes(scene, AFTER, seed, True, valid[b_id], valid[a_id], masks[b_id], masks[a_id])
    after_scene = Scene([*scene.features, *(f for p in planted for f in p.features)])
    assert len(scene.features) == len(build_scene(seed).features)  # the cached scene is untouched
    plain = WindowRenderer(scene, AFTER, valid[a_id], seed, True, masks[a_id]["cloud"], masks[a_id]["cloud_shadow"])
    changed = WindowRenderer(after_scene, AFTER, valid[a_id], seed, True, masks[a_id]["cloud"], masks[a_id]["cloud_shadow"])
    gt = grid.cell_geotransform(AFTER.cell)
    seen_inside = 0
    for p in planted:
        # the render row-window holding the site's centre
        x, y = p.area.centroid.coords[0]
        row = int((y - gt[3]) / gt[5])
        win = next(w for w in plain.windows if w[1] <= row < w[1] + w[3])
        (_w, px0), (_w, px1) = plain.render(win), changed.render(win)
        c0, r0, w, h = win
        mem_gt = (gt[0] + c0 * gt[1], gt[1], 0.0, gt[3] + r0 * gt[5], 0.0, gt[5])
        near = _burn_on(mem_gt, w, h, [p.area.buffer(25.0) for p in planted])
        inside = _burn_on(mem_gt, w, h, [p.area.buffer(-1.0)]) & (px0[0] > 0)
        assert np.array_equal(px0[:, ~near], px1[:, ~near])
        if inside.sum() > 200:
            seen_inside += 1
            assert np.abs(px0[:, inside].astype(int) - px1[:, inside].astype(int)).mean() > 15, p.kind
        # the earlier acquisition's COG shows the base scene
        before = WindowRenderer(scene, BEFORE, valid[b_id], seed, True, masks[b_id]["cloud"], masks[b_id]["cloud_shadow"])
        bwin = next(w for w in before.windows if w[1] <= row < w[1] + w[3])
        _w, bpx = before.render(bwin)
        assert np.array_equal(gdal.Open(str(sample.cogs[0])).ReadAsArray(*bwin), bpx)
    assert seen_inside >= 1


def _burn_on(gt, w: int, h: int, geoms) -> np.ndarray:
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(EPSG)
    mem = gdal.GetDriverByName("MEM").Create("", w, h, 1, gdal.GDT_Byte)
    mem.SetGeoTransform(gt)
    mem.SetProjection(srs.ExportToWkt())
    ds = ogr.GetDriverByName("Memory").CreateDataSource("g")
    lyr = ds.CreateLayer("g", srs, ogr.wkbUnknown)
    for g in geoms:
        feat = ogr.Feature(lyr.GetLayerDefn())
        feat.SetGeometry(ogr.CreateGeometryFromWkb(g.wkb))
        lyr.CreateFeature(feat)
    gdal.RasterizeLayer(mem, [1], lyr, burn_values=[1])
    return mem.ReadAsArray() > 0


def test_full_mode_planting() -> None:
    seed = 0
    scene = build_scene(seed)
    valid = {a.catalog_id: valid_polygon(a, False) for a in (BEFORE, AFTER)}
    masks = {a.catalog_id: acquisition_masks(a, valid[a.catalog_id], seed, False) for a in (BEFORE, AFTER)}
    args = (valid[BEFORE.catalog_id], valid[AFTER.catalog_id], masks[BEFORE.catalog_id], masks[AFTER.catalog_id])
    planted = planted_changes(scene, AFTER, seed, False, *args)
    assert Counter(p.kind for p in planted) == dict.fromkeys(KINDS, FULL_PER_KIND)
    clear = clear_region(AFTER, False, *args)
    for i, p in enumerate(planted):
        assert clear.contains(p.area)
        assert all(p.area.distance(q.area) >= FULL_SPACING for q in planted[i + 1 :])
        # a good share of at least one z17 chip (156 m square)
        assert chip_areas(p.area, AFTER.cell, 17).max() >= 0.02 * (grid.CELL_SIZE / 32) ** 2, p.kind
        if p.kind == "new_road":
            length = p.area.area / 8.0  # residential road surface: 8 m wide
            assert 240 <= length <= 710
        if p.kind == "new_buildings":
            houses = [f for f in p.features if f.cls == "building"]
            assert 3 <= len(houses) <= 8 and all(f.height > 0 for f in houses)
    assert planted_changes(scene, AFTER, seed, False, *args)[5].area.equals(planted[5].area)


def test_no_room_raises() -> None:
    seed = 7
    scene = build_scene(seed)
    valid = {a.catalog_id: valid_polygon(a, True) for a in (BEFORE, AFTER)}
    masks = {a.catalog_id: acquisition_masks(a, valid[a.catalog_id], seed, True) for a in (BEFORE, AFTER)}
    overcast = {**masks[AFTER.catalog_id], "cloud": valid[AFTER.catalog_id].buffer(-60.0)}
    with pytest.raises(SampleDataError, match="planted changes|plant changes"):
        planted_changes(scene, AFTER, seed, True, valid[BEFORE.catalog_id], valid[AFTER.catalog_id], masks[BEFORE.catalog_id], overcast)


def test_an_old_truth_file_counts_as_a_sample(tmp_path) -> None:
    (tmp_path / CHANGES_TRUTH).write_text("{}")
    with pytest.raises(OutputExistsError):
        write_sample(tmp_path, seed=7, small=True)
