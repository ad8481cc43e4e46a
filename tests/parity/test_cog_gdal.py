"""Parity of the Rust COG reader with GDAL on every real TIFF of the corpus.

For each main file of ``$IMAGESIM_REALDATA/tiff/`` (sidecars ``.msk`` / ``.ovr`` are not inputs):
size, band count, geotransform and nodata must match GDAL; pixels of level 0 must match (the
whole image for small files, plus odd windows that cross chunk boundaries) exactly for lossless
codecs and within JPEG rounding for JPEG; every internal overview imagesim lists must match
GDAL's overview of the same size.

imagesim only reads overviews stored *inside* the file. GDAL also lists external ``.ovr``
sidecars (rasterio__green, riotiler__hro_CL_1, riocogeo__image_external) and SubIFD overviews
(libtiff__tiff_with_subifd_chain); those have no imagesim level, so they are not compared.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from realdata import find_realdata

gdal = pytest.importorskip("osgeo.gdal")
from imagesim.cog import open_cog  # noqa: E402

gdal.UseExceptions()

REPO = Path(__file__).resolve().parents[2]
REALDATA = find_realdata()
TIFF_DIR = REALDATA / "tiff"
FILES = sorted(p for p in TIFF_DIR.iterdir() if p.suffix.lower() in (".tif", ".tiff")) if TIFF_DIR.is_dir() else []

# Files imagesim legitimately cannot read, with the reason. Empty: all of the corpus reads.
EXPECTED_FAILURES: dict[str, str] = {}

JPEG = 7
# Whole-image comparisons up to this many pixels; bigger images are compared by windows only.
FULL_READ_PIXELS = 4096 * 4096


def gdal_read(ds, window=None, overview=None) -> np.ndarray:
    """GDAL pixels as (height, width, bands), from the dataset or one of its overviews."""
    bands = [ds.GetRasterBand(i + 1) for i in range(ds.RasterCount)]
    if overview is not None:
        bands = [b.GetOverview(overview) for b in bands]
    if window is None:
        window = (0, 0, bands[0].XSize, bands[0].YSize)
    x, y, w, h = window
    return np.stack([b.ReadAsArray(x, y, w, h) for b in bands], axis=-1)


def assert_pixels(ours: np.ndarray, ref: np.ndarray, compression: int, what: str) -> None:
    assert ours.shape == ref.shape, f"{what}: shape {ours.shape} != GDAL {ref.shape}"
    assert ours.dtype == ref.dtype, f"{what}: dtype {ours.dtype} != GDAL {ref.dtype}"
    if compression == JPEG:
        diff = np.abs(ours.astype(np.int32) - ref.astype(np.int32))
        assert diff.max() <= 2 or diff.mean() <= 0.5, f"{what}: JPEG max diff {diff.max()}, mean {diff.mean()}"
    else:
        np.testing.assert_array_equal(ours, ref, err_msg=what)


def odd_windows(width: int, height: int, cw: int, ch: int) -> list[tuple[int, int, int, int]]:
    """A few windows that start mid-chunk and cross chunk boundaries, clipped to the image."""
    wins = []
    for fx, fy, sw, sh in ((0.5, 0.5, 1.3, 1.7), (1.25, 0.75, 2.1, 1.1), (0.0, 0.0, 1.0, 1.0)):
        x, y = min(int(cw * fx), width - 1), min(int(ch * fy), height - 1)
        w, h = max(1, min(int(cw * sw) + 1, width - x)), max(1, min(int(ch * sh) + 3, height - y))
        wins.append((x, y, w, h))
    wins.append((width - 1, height - 1, 1, 1))  # the last pixel, in a partial edge chunk
    return wins


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_cog_matches_gdal(path: Path) -> None:
    if path.name in EXPECTED_FAILURES:
        pytest.xfail(EXPECTED_FAILURES[path.name])
    cog = open_cog(path)
    ds = gdal.Open(str(path))
    lvl0 = cog.levels[0]
    assert (lvl0["width"], lvl0["height"], lvl0["bands"]) == (ds.RasterXSize, ds.RasterYSize, ds.RasterCount)

    gt = ds.GetGeoTransform(can_return_null=True)
    if gt is not None:
        assert cog.geotransform is not None
        np.testing.assert_allclose(cog.geotransform, gt, rtol=1e-12, atol=1e-9)
    nodata = ds.GetRasterBand(1).GetNoDataValue()
    if nodata is not None:
        assert cog.nodata == nodata

    comp = lvl0["compression"]
    if lvl0["width"] * lvl0["height"] <= FULL_READ_PIXELS:
        assert_pixels(cog.read(), gdal_read(ds), comp, "level 0")
    for win in odd_windows(lvl0["width"], lvl0["height"], lvl0["chunk_width"], lvl0["chunk_height"]):
        assert_pixels(cog.read(win), gdal_read(ds, win), comp, f"window {win}")

    band = ds.GetRasterBand(1)
    gdal_ovr = {(band.GetOverview(i).XSize, band.GetOverview(i).YSize): i for i in range(band.GetOverviewCount())}
    for k, lvl in enumerate(cog.levels[1:], start=1):
        size = (lvl["width"], lvl["height"])
        assert size in gdal_ovr, f"level {k} {size} is not a GDAL overview {sorted(gdal_ovr)}"
        if lvl["width"] * lvl["height"] <= FULL_READ_PIXELS:
            ref = gdal_read(ds, overview=gdal_ovr[size])
            assert_pixels(cog.read(level=k), ref, lvl["compression"], f"level {k}")


def test_corpus_present() -> None:
    if not TIFF_DIR.is_dir():
        pytest.skip(f"real-data corpus not found at {TIFF_DIR} (set IMAGESIM_REALDATA)")
    assert len(FILES) >= 50
