"""`imagesim sample-data`: layout, COG structure, sparse no-data, masks, determinism, OSM output."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal, ogr, osr

from imagesim import grid
from imagesim.errors import InvalidArgumentError, OutputExistsError
from imagesim.imagery.sample import ACQUISITIONS, CELLS, ZONE, write_sample

gdal.UseExceptions()
ogr.UseExceptions()

P = grid.COG_PIXELS


def _band_pixels(cog: Path, small_box: tuple[int, int, int] | None = None) -> np.ndarray:
    """(3, h, w) pixels: the 512-aligned window around the small imagery box, or the whole COG."""
    ds = gdal.Open(str(cog))
    if small_box is None:
        return ds.ReadAsArray()
    c0, r0, s = small_box
    bc0, br0 = (c0 // 512) * 512 - 512, (r0 // 512) * 512 - 512
    size = ((c0 + s) // 512 + 2) * 512 - bc0
    return ds.ReadAsArray(bc0, br0, size, size)


def _under_masks(cogs: list[Path], small_box: tuple[int, int, int], names: tuple[str, ...]) -> np.ndarray:
    """Pixels of :func:`_band_pixels`' window under any of the named ARD masks of any of ``cogs`` (GDAL burns them)."""
    ds = gdal.Open(str(cogs[0]))
    gt = ds.GetGeoTransform()
    c0, r0, s = small_box
    bc0, br0 = (c0 // 512) * 512 - 512, (r0 // 512) * 512 - 512
    size = ((c0 + s) // 512 + 2) * 512 - bc0
    mem = gdal.GetDriverByName("MEM").Create("", size, size, 1, gdal.GDT_Byte)
    mem.SetGeoTransform((gt[0] + bc0 * gt[1], gt[1], 0, gt[3] + br0 * gt[5], 0, gt[5]))
    mem.SetProjection(ds.GetProjection())
    for cog in cogs:
        catalog_id = cog.name[: -len("-visual.tif")]
        for name in names:
            src = ogr.Open(str(cog.parent / f"{catalog_id}-{name}.gpkg"))
            gdal.RasterizeLayer(mem, [1], src.GetLayer(0), burn_values=[1])
    return mem.ReadAsArray() > 0


def _checksum(cog: Path, acq) -> str:
    return hashlib.sha256(_band_pixels(cog, acq.small_box).tobytes()).hexdigest()


@pytest.fixture(scope="module")
def other_seed(tmp_path_factory):
    return write_sample(tmp_path_factory.mktemp("sample-seed8"), seed=8, small=True, compression="deflate")


def test_layout_and_summary(small_sample) -> None:
    s = small_sample
    assert s.zone == ZONE == 10
    assert s.cells == list(CELLS)
    assert s.root == s.osm_pbf.parent / "ard"
    assert len(s.cogs) == 3 and len(set(s.catalog_ids)) == 3
    # the two cells are west-east neighbours
    a, b = (grid.bounds(c) for c in CELLS)
    assert a.east == b.west and a.north == b.north and a.south == b.south
    per_cell: dict[str, set[str]] = {}
    for cog, catid in zip(s.cogs, s.catalog_ids):
        assert len(catid) == 16 and int(catid, 16) >= 0
        rel = cog.relative_to(s.root)
        zone, cell, date, name = rel.parts
        assert zone == "10" and cell in CELLS and name == f"{catid}-visual.tif"
        assert len(date) == 10 and date[4] == "-" and date[7] == "-"
        per_cell.setdefault(cell, set()).add(date)
        for sibling in (f"{catid}.json", f"{catid}-data-mask.gpkg"):
            assert (cog.parent / sibling).is_file()
        assert not list(cog.parent.glob(".*"))  # no temporary files left
    assert len(per_cell[CELLS[0]]) == 2 and len(per_cell[CELLS[1]]) == 1
    assert s.osm_pbf.is_file() and s.osm_pbf.name == "sample.osm.pbf"
    assert sorted(s.root.rglob("*-visual.tif")) == sorted(s.cogs)


@pytest.mark.parametrize("fixture, compression", [("small_sample", "JPEG"), ("small_sample_deflate", "DEFLATE")])
def test_cog_structure(request, fixture: str, compression: str) -> None:
    s = request.getfixturevalue(fixture)
    for cog, acq in zip(s.cogs, ACQUISITIONS):
        ds = gdal.Open(str(cog))
        assert (ds.RasterXSize, ds.RasterYSize, ds.RasterCount) == (P, P, 3)
        assert ds.GetGeoTransform() == pytest.approx(grid.cell_geotransform(acq.cell), abs=1e-9)
        srs = osr.SpatialReference(wkt=ds.GetProjection())
        srs.AutoIdentifyEPSG()
        assert int(srs.GetAuthorityCode(None)) == grid.epsg(acq.cell, ZONE) == 32610
        assert ds.GetMetadataItem("COMPRESSION", "IMAGE_STRUCTURE") in (
            (compression, "YCbCr JPEG") if compression == "JPEG" else (compression,)
        )
        assert ds.GetMetadataItem("LAYOUT", "IMAGE_STRUCTURE") == "COG"
        if compression == "JPEG":
            assert ds.GetMetadataItem("SOURCE_COLOR_SPACE", "IMAGE_STRUCTURE") == "YCbCr"
        for b in range(1, 4):
            band = ds.GetRasterBand(b)
            assert band.DataType == gdal.GDT_Byte
            assert band.GetBlockSize() == [512, 512]
            assert band.GetNoDataValue() == 0
            assert band.GetOverviewCount() >= 5
            assert band.GetOverview(0).XSize == P // 2


def _block_offset(band, bx: int, by: int) -> int:
    value = band.GetMetadataItem(f"BLOCK_OFFSET_{bx}_{by}", "TIFF")
    return int(value) if value else 0


def test_sparse_blocks_and_imagery_blocks(small_sample) -> None:
    for cog, acq in zip(small_sample.cogs, ACQUISITIONS):
        ds = gdal.Open(str(cog))
        band = ds.GetRasterBand(1)
        c0, r0, s = acq.small_box
        centre = ((c0 + s // 2) // 512, (r0 + s // 2) // 512)
        corner_blocks = [(0, 0), (33, 33), (0, 33), (33, 0)]
        assert all(_block_offset(band, bx, by) == 0 for bx, by in corner_blocks)
        # imagery near the middle of the window on the data side: at least one written block
        written = [
            _block_offset(band, bx, by) for bx in range(c0 // 512, (c0 + s) // 512 + 1) for by in range(r0 // 512, (r0 + s) // 512 + 1)
        ]
        assert sum(o > 0 for o in written) >= 6, centre
        assert sum(o == 0 for o in written) < len(written)
        # an empty block reads as no-data
        assert not ds.ReadAsArray(0, 0, 512, 512).any()


def _mask_geometry(gpkg: Path):
    ds = ogr.Open(str(gpkg))
    layer = ds.GetLayer(0)
    srs = layer.GetSpatialRef()
    srs.AutoIdentifyEPSG()
    geoms = [f.GetGeometryRef().Clone() for f in layer]
    union = geoms[0]
    for g in geoms[1:]:
        union = union.Union(g)
    return union, int(srs.GetAuthorityCode(None))


def test_valid_pixels_never_zero_and_mask_matches(small_sample_deflate) -> None:
    s = small_sample_deflate
    classes = set()
    for cog, acq in zip(s.cogs, ACQUISITIONS):
        px = _band_pixels(cog, acq.small_box)
        nodata = np.all(px == 0, axis=0)
        anyzero = np.any(px == 0, axis=0)
        # a pixel is either entirely no-data or has every band >= 1
        assert np.array_equal(nodata, anyzero)
        assert 0.2 < nodata.mean() < 0.9
        # the data mask polygon: area consistent with the valid pixels
        geom, epsg = _mask_geometry(cog.parent / f"{acq.catalog_id}-data-mask.gpkg")
        assert epsg == 32610
        n_valid = int((~nodata).sum())
        assert geom.GetArea() == pytest.approx(n_valid * grid.PIXEL_SIZE**2, rel=0.01)
        # chips: some all-data, some partial, some empty
        ds = gdal.Open(str(cog))
        c0, r0, size = acq.small_box
        for qk in grid.children(acq.cell, 17):
            col, row, w, h = grid.chip_window(qk)
            if col + w < c0 - 512 or col > c0 + size + 512 or row + h < r0 - 512 or row > r0 + size + 512:
                continue
            chip = ds.ReadAsArray(col, row, w, h)
            empty = np.all(chip == 0, axis=0)
            classes.add("no_data" if empty.all() else "all_data" if not empty.any() else "partial_data")
    assert classes == {"no_data", "all_data", "partial_data"}


def test_mask_polygon_matches_pixels_locally(small_sample_deflate) -> None:
    """Pixels whose centre is well inside the polygon are valid; well outside, no-data."""
    cog, acq = small_sample_deflate.cogs[0], ACQUISITIONS[0]
    geom, _ = _mask_geometry(cog.parent / f"{acq.catalog_id}-data-mask.gpkg")
    gt = grid.cell_geotransform(acq.cell)
    ds = gdal.Open(str(cog))
    rng = np.random.default_rng(0)
    c0, r0, s = acq.small_box
    inside = outside = 0
    for col, row in rng.integers([c0 - 200, r0 - 200], [c0 + s + 200, r0 + s + 200], size=(300, 2)):
        x, y = gt[0] + (col + 0.5) * gt[1], gt[3] + (row + 0.5) * gt[5]
        pt = ogr.CreateGeometryFromWkt(f"POINT ({x} {y})")
        if pt.Buffer(1.0).Within(geom):
            inside += 1
            assert ds.GetRasterBand(1).ReadAsArray(int(col), int(row), 1, 1)[0, 0] > 0
        elif not pt.Buffer(1.0).Intersects(geom):
            outside += 1
            assert ds.ReadAsArray(int(col), int(row), 1, 1).max() == 0
    assert inside > 20 and outside > 20


def test_deterministic_and_seed_dependent(small_sample_deflate, other_seed, tmp_path) -> None:
    again = write_sample(tmp_path / "again", seed=7, small=True, compression="deflate")
    for a, b, c, acq in zip(small_sample_deflate.cogs, again.cogs, other_seed.cogs, ACQUISITIONS):
        assert _checksum(a, acq) == _checksum(b, acq)
        assert _checksum(a, acq) != _checksum(c, acq)
    assert small_sample_deflate.osm_pbf.read_bytes() == again.osm_pbf.read_bytes()
    # the two acquisitions of the first cell show the same scene with different edges and lighting
    p0 = _band_pixels(small_sample_deflate.cogs[0], ACQUISITIONS[0].small_box).astype(int)
    p1 = _band_pixels(small_sample_deflate.cogs[1], ACQUISITIONS[1].small_box).astype(int)
    both = (p0[0] > 0) & (p1[0] > 0)
    assert both.sum() > 100_000
    assert not np.array_equal(p0[0] > 0, p1[0] > 0)
    # compared where neither acquisition has clouds or their shadows (each has its own)
    clouded = _under_masks(small_sample_deflate.cogs[:2], ACQUISITIONS[0].small_box, ("cloud-mask", "cloud-shadow-mask"))
    both &= ~clouded
    assert both.sum() > 50_000
    corr = np.corrcoef(p0[1][both], p1[1][both])[0, 1]
    assert corr > 0.6  # same scene
    assert np.abs(p0[:, both] - p1[:, both]).mean() > 2  # different lighting


def test_jpeg_pixels_close_to_lossless(small_sample, small_sample_deflate) -> None:
    acq = ACQUISITIONS[0]
    j = _band_pixels(small_sample.cogs[0], acq.small_box).astype(int)
    d = _band_pixels(small_sample_deflate.cogs[0], acq.small_box).astype(int)
    inner = d[0] > 0
    # imagery is in a plausible range and JPEG stays close
    assert 20 < d[:, inner].mean() < 200
    assert np.abs(j[:, inner] - d[:, inner]).mean() < 4


def test_metadata(small_sample) -> None:
    for cog, acq in zip(small_sample.cogs, ACQUISITIONS):
        meta = json.loads((cog.parent / f"{acq.catalog_id}.json").read_text())
        assert meta["catalog_id"] == acq.catalog_id
        assert meta["quadkey"] == acq.cell and meta["zone"] == 10 and meta["epsg"] == 32610
        assert meta["data_mask"] == f"{acq.catalog_id}-data-mask.gpkg"
        assert meta["sensor"] in ("WV02", "WV03")
        props = meta["properties"]
        assert props["datetime"].startswith(cog.parent.name)
        assert 0 <= props["view:off_nadir"] < 45 and 10 < props["view:sun_elevation"] < 90
        assert 0 <= props["eo:cloud_cover"] <= 100
        assert meta["geometry"]["type"] in ("Polygon", "MultiPolygon")


def test_osm_pbf(small_sample) -> None:
    import osmium
    from pyproj import Transformer

    tags: set[tuple[str, str]] = set()
    counts = {"n": 0, "w": 0, "r": 0}
    multipolygons_with_inner = 0
    lons: list[float] = []
    lats: list[float] = []
    ids: dict[str, set[int]] = {"n": set(), "w": set(), "r": set()}
    for obj in osmium.FileProcessor(str(small_sample.osm_pbf)):
        kind = obj.type_str()
        counts[kind] += 1
        assert obj.id > 0 and obj.id not in ids[kind] and obj.version >= 1
        ids[kind].add(obj.id)
        tags.update((t.k, t.v) for t in obj.tags)
        if kind == "n":
            lons.append(obj.location.lon)
            lats.append(obj.location.lat)
        if kind == "r" and obj.tags.get("type") == "multipolygon":
            roles = {m.role for m in obj.members}
            multipolygons_with_inner += roles >= {"outer", "inner"}
    expected = {
        ("building", "yes"),
        ("building", "house"),
        ("building", "industrial"),
        ("highway", "motorway"),
        ("highway", "primary"),
        ("highway", "residential"),
        ("highway", "service"),
        ("natural", "water"),
        ("waterway", "river"),
        ("waterway", "riverbank"),
        ("landuse", "forest"),
        ("landuse", "grass"),
        ("landuse", "meadow"),
        ("landuse", "farmland"),
        ("landuse", "residential"),
        ("landuse", "industrial"),
        ("landuse", "reservoir"),
        ("natural", "wood"),
        ("leisure", "park"),
        ("leisure", "pitch"),
        ("sport", "soccer"),
        ("amenity", "parking"),
        ("railway", "rail"),
    }
    assert expected <= tags, expected - tags
    assert multipolygons_with_inner >= 2
    assert counts["n"] > 1000 and counts["w"] > 100
    # nodes cover both cells
    tr = Transformer.from_crs(32610, 4326, always_xy=True)
    lons_a, lats_a = np.array(lons), np.array(lats)
    for cell in CELLS:
        b = grid.bounds(cell)
        (w, e), (s, n) = tr.transform([b.west, b.east], [b.south, b.north])
        inside = (lons_a > min(w, e)) & (lons_a < max(w, e)) & (lats_a > min(s, n)) & (lats_a < max(s, n))
        assert inside.sum() > 1000, cell


def test_osm_ways_are_complete(small_sample) -> None:
    import osmium

    fp = osmium.FileProcessor(str(small_sample.osm_pbf)).with_locations()
    for obj in fp:
        if obj.type_str() == "w":
            assert len(obj.nodes) >= 2
            assert all(n.location.valid() for n in obj.nodes)


def test_refuses_to_overwrite(small_sample, tmp_path) -> None:
    dest = small_sample.osm_pbf.parent
    before = {p: p.stat().st_mtime_ns for p in dest.rglob("*")}
    with pytest.raises(OutputExistsError):
        write_sample(dest, seed=1, small=True)
    assert {p: p.stat().st_mtime_ns for p in dest.rglob("*")} == before
    copy = tmp_path / "copy"
    shutil.copytree(dest, copy)
    (copy / "ard" / "10" / CELLS[0] / "stray.txt").write_text("left from an older sample")
    again = write_sample(copy, seed=2, small=True, compression="deflate", overwrite=True)
    assert sorted(copy.rglob("*-visual.tif")) == sorted(again.cogs)
    assert not (copy / "ard" / "10" / CELLS[0] / "stray.txt").exists()
    assert gdal.Open(str(again.cogs[0])).GetMetadataItem("COMPRESSION", "IMAGE_STRUCTURE") == "DEFLATE"


def test_rejects_bad_options(tmp_path) -> None:
    with pytest.raises(InvalidArgumentError):
        write_sample(tmp_path / "x", compression="lzw")
    with pytest.raises(InvalidArgumentError):
        write_sample(tmp_path / "x", seed=-1)
    assert not (tmp_path / "x").exists()
