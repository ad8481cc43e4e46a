"""ARD masks end to end on the sample delivery: `imagesim chip` fills the fractions, an independent raster count
agrees, `imagesim masks` fills an existing folder, and a delivery without masks works as before."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from imagesim import grid
from imagesim.artefacts import MASK_FRACTION_COLUMNS
from imagesim.imagery.ard import DATA_MASK, MASK_FILES, find_acquisitions
from imagesim.imagery.chip import ChipSettings, run_chip

gdal = pytest.importorskip("osgeo.gdal")
gdal.UseExceptions()

FRACTIONS = list(MASK_FRACTION_COLUMNS.values())


@pytest.fixture(scope="module")
def chipped(tmp_path_factory, small_sample):
    dest = tmp_path_factory.mktemp("masks-chips") / "chips"
    summary = run_chip(small_sample.root, dest, ChipSettings(zoom=17))
    return dest, summary


def raster_share(mask: Path, data: Path, bounds: tuple[float, float, float, float], res: float = 0.3) -> float | None:
    """The share of the data mask's pixels under ``mask`` in ``bounds``: both rasterised by GDAL at ``res``."""

    def burn(path: Path) -> np.ndarray:
        ds = gdal.Rasterize("", str(path), format="MEM", outputBounds=bounds, xRes=res, yRes=res, burnValues=[1], outputType=gdal.GDT_Byte)
        return ds.GetRasterBand(1).ReadAsArray().astype(bool)

    valid = burn(data)
    if not valid.any():
        return None
    return float((burn(mask) & valid).sum() / valid.sum())


def test_the_sample_has_masks_and_chip_fills_every_fraction(chipped, small_sample):
    dest, summary = chipped
    manifest = pl.read_parquet(dest / "chips.parquet")
    assert set(FRACTIONS) <= set(manifest.columns)
    with_data = manifest.filter(pl.col("valid_fraction") > 0.001)
    for column in FRACTIONS:
        assert with_data[column].null_count() == 0, column
        assert with_data[column].min() >= 0.0 and with_data[column].max() <= 1.0
    assert (with_data[MASK_FRACTION_COLUMNS["cloud"]] > 0.05).sum() > 0  # the sample has clouds
    assert (with_data[MASK_FRACTION_COLUMNS["water"]] > 0.05).sum() > 0
    assert (with_data[MASK_FRACTION_COLUMNS["vegetation"]] > 0.05).sum() > 0
    assert with_data[MASK_FRACTION_COLUMNS["terrain_shadow"]].max() == 0.0  # a flat scene
    assert not [n for n in summary.mask_notes if n.failed]
    report = json.loads((dest / "chip-errors.json").read_text())
    assert report["masks"] == [n.as_dict() for n in summary.mask_notes]


def test_fractions_agree_with_an_independent_raster_count(chipped, small_sample):
    """GDAL rasterises each mask and the data mask at 0.3 m over the chip and counts: within 0.5 % absolute."""
    dest, _ = chipped
    manifest = pl.read_parquet(dest / "chips.parquet")
    acqs = {a.catalog_id: a for a in find_acquisitions(small_sample.root)[0]}
    cloud = MASK_FRACTION_COLUMNS["cloud"]
    # the chips where the answer is hardest: partly clouded, most of all partly clouded and partly no-data
    edge = manifest.filter((pl.col(cloud) > 0.02) & (pl.col(cloud) < 0.98)).sort(pl.col("valid_fraction")).head(12)
    assert edge.height >= 6
    for row in edge.iter_rows(named=True):
        acq = acqs[row["catalog_id"]]
        bounds = tuple(grid.bounds(row["quadkey"]))
        for name in ("cloud", "cloud_shadow", "water"):
            want = raster_share(acq.mask_path(MASK_FILES[name]), acq.mask_path(DATA_MASK), bounds)
            got = row[MASK_FRACTION_COLUMNS[name]]
            assert want is not None and got == pytest.approx(want, abs=0.005), (row["chip"], name)


def test_imagesim_masks_fills_a_folder_chipped_without_them(chipped, tmp_path, cli):
    dest, _ = chipped
    copy = tmp_path / "chips"
    shutil.copytree(dest, copy)
    full = pl.read_parquet(copy / "chips.parquet")
    full.with_columns(pl.lit(None, pl.Float64).alias(c) for c in FRACTIONS).write_parquet(copy / "chips.parquet")
    ard = Path(pl.read_parquet(copy / "chips.parquet")["source_cog"][0]).parents[3]
    res = cli("masks", "--chips", copy, "--ard-path", ard)
    assert res.returncode == 0, res.stderr
    assert "mask fractions for" in res.stdout
    again = pl.read_parquet(copy / "chips.parquet")
    assert again.columns == full.columns
    assert again.drop(FRACTIONS).equals(full.drop(FRACTIONS))
    for column in FRACTIONS:
        a, b = again[column].to_numpy(), full[column].to_numpy()
        assert np.allclose(a, b, equal_nan=True), column


def test_a_delivery_without_masks_chips_as_before_and_masks_says_why(small_sample, tmp_path, cli):
    ard = tmp_path / "ard"
    shutil.copytree(small_sample.root, ard, ignore=shutil.ignore_patterns("*-mask.gpkg"))
    dest = tmp_path / "chips"
    summary = run_chip(ard, dest, ChipSettings(zoom=17))
    assert summary.written > 0 and summary.without_masks == summary.cogs and not summary.mask_notes
    manifest = pl.read_parquet(dest / "chips.parquet")
    assert all(manifest[c].null_count() == manifest.height for c in FRACTIONS)
    res = cli("masks", "--chips", dest, "--ard-path", ard)
    assert res.returncode == 1
    assert "no acquisition has mask files" in res.stderr


def test_masks_goes_on_past_a_corrupt_mask(small_sample, tmp_path, cli):
    ard = tmp_path / "ard"
    shutil.copytree(small_sample.root, ard)
    acq = find_acquisitions(ard)[0][0]
    acq.mask_path(MASK_FILES["cloud"]).write_bytes(b"not a geopackage")
    dest = tmp_path / "chips"
    summary = run_chip(ard, dest, ChipSettings(zoom=17))
    assert not summary.failed_cogs
    failed = [n for n in summary.mask_notes if n.failed]
    assert len(failed) == 1 and "-cloud-mask.gpkg" in failed[0].path
    manifest = pl.read_parquet(dest / "chips.parquet")
    mine = manifest.filter(pl.col("catalog_id") == acq.catalog_id)
    others = manifest.filter((pl.col("catalog_id") != acq.catalog_id) & (pl.col("valid_fraction") > 0))
    assert mine[MASK_FRACTION_COLUMNS["cloud"]].null_count() == mine.height
    assert mine.filter(pl.col("valid_fraction") > 0)[MASK_FRACTION_COLUMNS["water"]].null_count() == 0
    assert others[MASK_FRACTION_COLUMNS["cloud"]].null_count() == 0
    res = cli("masks", "--chips", dest, "--ard-path", ard)
    assert res.returncode == 0, res.stderr
    assert "cloud-mask.gpkg" in res.stderr and "not a" in res.stderr
