"""ARD vector masks: reading GeoPackages (CRS, repairs, damage) and exact per-chip fractions on hand-made cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import shapely
from shapely.geometry import box

from imagesim import grid
from imagesim.artefacts import MASK_FRACTION_COLUMNS
from imagesim.errors import MaskError
from imagesim.imagery.ard import DATA_MASK, MASK_FILES, Acquisition
from imagesim.imagery.masks import acquisition_fractions, read_mask, safe_fractions

ogr = pytest.importorskip("osgeo.ogr")
osr = pytest.importorskip("osgeo.osr")

ZONE = 10
CELL = "120020223032"
EPSG = grid.epsg(CELL, ZONE)
ZOOM = 17


def write_gpkg(path: Path, geoms: list, epsg: int = EPSG, layer: str = "mask") -> Path:
    """A GeoPackage of polygons written by GDAL (the oracle's writer, not ours)."""
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(epsg)
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds = ogr.GetDriverByName("GPKG").CreateDataSource(str(path))
    lyr = ds.CreateLayer(layer, srs, ogr.wkbMultiPolygon)
    for g in geoms:
        feat = ogr.Feature(lyr.GetLayerDefn())
        feat.SetGeometry(ogr.CreateGeometryFromWkb(shapely.to_wkb(g)))
        lyr.CreateFeature(feat)
    ds = None
    return path


def acquisition(root: Path, catalog_id: str = "10400100ABCDEF01") -> Acquisition:
    folder = root / str(ZONE) / CELL / "2024-05-01"
    folder.mkdir(parents=True, exist_ok=True)
    return Acquisition(ZONE, CELL, "2024-05-01", catalog_id, folder / f"{catalog_id}-visual.tif")


def chip_box(row: int, col: int):
    """The footprint of the z17 chip at (row, col) of the cell grid (north row 0, west col 0)."""
    n = 1 << (ZOOM - 12)
    return box(*grid.bounds(grid.children(CELL, ZOOM)[row * n + col]))


def fractions(acq: Acquisition, name: str = "cloud") -> np.ndarray:
    res = acquisition_fractions(acq, ZOOM)
    n = 1 << (ZOOM - 12)
    return res.frame[MASK_FRACTION_COLUMNS[name]].to_numpy().reshape(n, n).copy()


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def test_read_mask_unions_the_polygons_of_every_feature(tmp_path: Path):
    a, b = chip_box(3, 3), chip_box(3, 4).buffer(-10)
    mask = read_mask(write_gpkg(tmp_path / "m.gpkg", [a, b, a.buffer(-20)]), EPSG)
    assert mask.features == 3
    assert mask.reprojected_from is None and mask.repaired == 0
    assert mask.geometry.area == pytest.approx(a.area + b.area, rel=1e-9)  # the overlap counts once


def test_a_mask_in_another_crs_is_reprojected(tmp_path: Path):
    from pyproj import Transformer

    square = chip_box(10, 10)
    tr = Transformer.from_crs(EPSG, 4326, always_xy=True)
    dense = shapely.segmentize(square, 5.0)
    lonlat = shapely.transform(dense, lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))
    mask = read_mask(write_gpkg(tmp_path / "ll.gpkg", [lonlat], epsg=4326), EPSG)
    assert mask.reprojected_from == "EPSG:4326"
    assert mask.geometry.symmetric_difference(square).area < 1e-4 * square.area


def test_invalid_polygons_are_repaired_and_counted(tmp_path: Path):
    x0, y0, x1, y1 = chip_box(5, 5).bounds
    bowtie = shapely.Polygon([(x0, y0), (x1, y1), (x1, y0), (x0, y1)])  # self-intersecting
    assert not bowtie.is_valid
    mask = read_mask(write_gpkg(tmp_path / "bad.gpkg", [bowtie, chip_box(9, 9)]), EPSG)
    assert mask.repaired == 1
    assert mask.geometry.is_valid
    assert mask.geometry.area == pytest.approx((x1 - x0) * (y1 - y0) / 2 + chip_box(9, 9).area, rel=1e-9)


@pytest.mark.parametrize(
    "content",
    [b"", b"this is not a geopackage at all" * 10, b"SQLite format 3\x00" + b"\x00" * 200],
    ids=["empty", "text", "truncated-sqlite"],
)
def test_a_corrupt_geopackage_is_a_mask_error_naming_the_file(tmp_path: Path, content: bytes):
    path = tmp_path / "corrupt-cloud-mask.gpkg"
    path.write_bytes(content)
    with pytest.raises(MaskError, match="corrupt-cloud-mask.gpkg"):
        read_mask(path, EPSG)


def test_a_damaged_real_geopackage_is_a_mask_error(tmp_path: Path):
    good = write_gpkg(tmp_path / "good.gpkg", [chip_box(1, 1)])
    data = bytearray(good.read_bytes())
    data[1024:4096] = b"\xff" * 3072  # wipe page 2 and more
    bad = tmp_path / "damaged.gpkg"
    bad.write_bytes(bytes(data))
    with pytest.raises(MaskError, match="damaged.gpkg"):
        read_mask(bad, EPSG)


def test_reading_leaves_no_files_beside_the_mask(tmp_path: Path):
    folder = tmp_path / "masks"
    write_gpkg(folder / "m.gpkg", [chip_box(1, 1)])
    before = sorted(p.name for p in folder.iterdir())
    read_mask(folder / "m.gpkg", EPSG)
    assert sorted(p.name for p in folder.iterdir()) == before


# --------------------------------------------------------------------------------------------
# Fractions: hand-made edge cases, exact
# --------------------------------------------------------------------------------------------


def test_a_mask_exactly_on_chip_edges_touches_no_neighbour(tmp_path: Path):
    acq = acquisition(tmp_path)
    write_gpkg(acq.mask_path(MASK_FILES["cloud"]), [chip_box(4, 4).union(chip_box(4, 5))])
    f = fractions(acq)
    assert f[4, 4] == pytest.approx(1.0) and f[4, 5] == pytest.approx(1.0)
    f[4, 4] = f[4, 5] = 0.0
    assert np.all(f == 0.0)


def test_a_hole_covering_a_chip(tmp_path: Path):
    acq = acquisition(tmp_path)
    outer = box(*chip_box(2, 2).bounds[:2], *chip_box(0, 4).bounds[2:])  # chips rows 0-2, cols 2-4
    donut = outer.difference(chip_box(1, 3))
    write_gpkg(acq.mask_path(MASK_FILES["cloud"]), [donut])
    f = fractions(acq)
    assert f[1, 3] == pytest.approx(0.0, abs=1e-12)
    for r in range(3):
        for c in range(2, 5):
            if (r, c) != (1, 3):
                assert f[r, c] == pytest.approx(1.0)


def test_fractions_are_shares_of_the_valid_area(tmp_path: Path):
    acq = acquisition(tmp_path)
    chip = chip_box(6, 6)
    x0, y0, x1, y1 = chip.bounds
    # data only in the chip's west half; the cloud covers the chip's west quarter
    write_gpkg(acq.mask_path(DATA_MASK), [box(x0 - 5000, y0 - 5000, (x0 + x1) / 2, y1 + 5000)])
    write_gpkg(acq.mask_path(MASK_FILES["cloud"]), [box(x0, y0, x0 + (x1 - x0) / 4, y1)])
    f = fractions(acq)
    assert f[6, 6] == pytest.approx(0.5)
    assert np.isnan(f[6, 7])  # no valid area: no fraction (null), not 0


def test_a_mask_over_no_data_only_counts_nothing(tmp_path: Path):
    acq = acquisition(tmp_path)
    x0, y0, x1, y1 = grid.bounds(CELL)
    write_gpkg(acq.mask_path(DATA_MASK), [box(x0, y0, (x0 + x1) / 2, y1)])  # west half has data
    write_gpkg(acq.mask_path(MASK_FILES["water"]), [box((x0 + x1) / 2 + 1000, y0 + 1000, x1 - 1000, y1 - 1000)])
    f = fractions(acq, "water")
    west = f[:, : f.shape[1] // 2]
    assert np.all(west == 0.0)
    assert np.all(np.isnan(f[:, f.shape[1] // 2 :]))


def test_missing_masks_are_null_and_present_ones_filled(tmp_path: Path):
    acq = acquisition(tmp_path)
    write_gpkg(acq.mask_path(MASK_FILES["water"]), [chip_box(0, 0)])
    res = acquisition_fractions(acq, ZOOM)
    assert res.masks_found == 1
    assert res.frame[MASK_FRACTION_COLUMNS["water"]].null_count() == 0
    assert res.frame[MASK_FRACTION_COLUMNS["cloud"]].null_count() == res.frame.height
    assert any("no data mask" in n.problem for n in res.notes)


def test_no_mask_files_at_all_gives_nulls_and_no_notes(tmp_path: Path):
    acq = acquisition(tmp_path)
    res = acquisition_fractions(acq, ZOOM)
    assert res.masks_found == 0 and res.notes == []
    assert res.frame.height == 4 ** (ZOOM - 12)
    assert all(res.frame[c].null_count() == res.frame.height for c in MASK_FRACTION_COLUMNS.values())


def test_a_corrupt_mask_is_a_note_and_null_column_the_others_still_count(tmp_path: Path):
    acq = acquisition(tmp_path)
    acq.mask_path(MASK_FILES["cloud"]).write_bytes(b"garbage")
    write_gpkg(acq.mask_path(MASK_FILES["water"]), [chip_box(0, 0)])
    res = safe_fractions(acq, ZOOM)
    failed = [n for n in res.notes if n.failed]
    assert len(failed) == 1 and failed[0].path.endswith("-cloud-mask.gpkg")
    assert res.frame[MASK_FRACTION_COLUMNS["cloud"]].null_count() == res.frame.height
    assert res.frame[MASK_FRACTION_COLUMNS["water"]].max() == pytest.approx(1.0)


def test_a_mask_that_misses_its_cog_is_noted(tmp_path: Path):
    acq = acquisition(tmp_path)
    far = box(*grid.bounds("120020223010"))  # another cell, kilometres away
    write_gpkg(acq.mask_path(MASK_FILES["cloud"]), [far])
    res = acquisition_fractions(acq, ZOOM)
    assert any("does not overlap its COG" in n.problem for n in res.notes)
    assert res.frame[MASK_FRACTION_COLUMNS["cloud"]].max() == 0.0


def test_fractions_match_shapely_per_chip_on_an_irregular_mask(tmp_path: Path):
    acq = acquisition(tmp_path)
    rng = np.random.default_rng(7)
    x0, y0, x1, y1 = grid.bounds(CELL)
    blobs = [shapely.Point(rng.uniform(x0, x1), rng.uniform(y0, y1)).buffer(rng.uniform(100, 600), quad_segs=12) for _ in range(25)]
    holes = [shapely.Point(rng.uniform(x0, x1), rng.uniform(y0, y1)).buffer(rng.uniform(50, 150)) for _ in range(15)]
    cloud = shapely.union_all(blobs).difference(shapely.union_all(holes))
    data = shapely.Polygon([(x0 - 600, y0 - 600), (x1 + 600, y0 - 600), (x1 + 600, y1 - 1700), (x0 - 600, y1 - 300)])
    write_gpkg(acq.mask_path(DATA_MASK), [data])
    write_gpkg(acq.mask_path(MASK_FILES["cloud"]), [cloud])
    got = acquisition_fractions(acq, ZOOM).frame
    for qk, value in zip(got["quadkey"].to_list(), got[MASK_FRACTION_COLUMNS["cloud"]].to_list()):
        chip = box(*grid.bounds(qk))
        valid = chip.intersection(data).area
        if valid < 1e-6:
            assert value is None
        else:
            assert value == pytest.approx(chip.intersection(data).intersection(cloud).area / valid, abs=1e-9)
