"""`imagesim chip`: chips against GDAL reads of the same windows, manifest, re-runs, bad input."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from osgeo import gdal
from PIL import Image

from imagesim import grid
from imagesim.artefacts import CHIPS_MANIFEST as MANIFEST
from imagesim.artefacts import MANIFEST_SCHEMA
from imagesim.errors import InvalidArgumentError
from imagesim.imagery.chip import ChipSettings, run_chip
from imagesim.progress import ProgressSink

gdal.UseExceptions()


def gdal_window(cog: str, col: int, row: int, size: int) -> np.ndarray:
    ds = gdal.Open(cog)
    return np.dstack([ds.GetRasterBand(b + 1).ReadAsArray(col, row, size, size) for b in range(3)])


def jpeg_pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture(scope="module")
def chipped_deflate(small_sample_deflate, tmp_path_factory):
    dest = tmp_path_factory.mktemp("chips-deflate")
    summary = run_chip(small_sample_deflate.root, dest, ChipSettings(zoom=17, proc=2, quality=95))
    return small_sample_deflate, dest, summary


@pytest.fixture(scope="module")
def chipped_jpeg(small_sample, tmp_path_factory):
    dest = tmp_path_factory.mktemp("chips-jpeg")
    summary = run_chip(small_sample.root, dest, ChipSettings(zoom=17, proc=2))
    return small_sample, dest, summary


def test_every_chip_written_and_recorded(chipped_jpeg) -> None:
    sample, dest, summary = chipped_jpeg
    n = 1024 * len(sample.cogs)
    assert summary.written == n and summary.failed_chips == 0 and not summary.failed_cogs
    manifest = pl.read_parquet(dest / MANIFEST)
    assert manifest.height == n
    assert list(manifest.columns) == [*MANIFEST_SCHEMA, "geometry", "bbox"]  # + GeoParquet footprints
    assert manifest["chip"].n_unique() == n
    for row in manifest.sample(20, seed=1).iter_rows(named=True):
        path = dest / str(row["zone"]) / row["chip"]
        assert path.is_file()
        assert row["chip"] == grid.chip_name(row["zone"], row["quadkey"], row["catalog_id"])
        assert row["quadkey"].startswith(row["cell"])
        assert (row["col_off"], row["row_off"], row["width"], row["height"]) == grid.chip_window(row["quadkey"])
        assert grid.cog_path_from_chip(row["chip"], sample.root) == Path(row["source_cog"])
    # The sample has whole, partial and empty chips.
    assert set(manifest["nodata_class"]) == {"all_data", "partial_data", "no_data"}
    errors = json.loads((dest / "chip-errors.json").read_text())
    assert errors == {"cogs": [], "chips": [], "misplaced": [], "masks": []}


def test_chip_pixels_match_gdal(chipped_deflate) -> None:
    sample, dest, _ = chipped_deflate
    manifest = pl.read_parquet(dest / MANIFEST).filter(pl.col("nodata_class") != "no_data")
    assert manifest.height > 0
    for row in manifest.sample(min(12, manifest.height), seed=3).iter_rows(named=True):
        ref = gdal_window(row["source_cog"], row["col_off"], row["row_off"], row["width"])
        got = jpeg_pixels(dest / str(row["zone"]) / row["chip"])
        assert got.shape == ref.shape
        diff = np.abs(got.astype(int) - ref.astype(int))
        assert diff.mean() < 3.0, row["chip"]


def test_nodata_counts_exact_against_gdal(chipped_deflate) -> None:
    # Lossless COG: the count must equal numpy's count on GDAL's pixels, chip by chip.
    sample, dest, _ = chipped_deflate
    manifest = pl.read_parquet(dest / MANIFEST)
    interesting = manifest.filter(pl.col("nodata_class") != "all_data")
    rows = list(interesting.sample(min(20, interesting.height), seed=5).iter_rows(named=True))
    rows += list(manifest.filter(pl.col("nodata_class") == "all_data").head(5).iter_rows(named=True))
    for row in rows:
        ref = gdal_window(row["source_cog"], row["col_off"], row["row_off"], row["width"])
        expected = int(np.all(ref <= 0, axis=2).sum())
        assert row["nodata_pixels"] == expected, row["chip"]
        assert row["valid_fraction"] == pytest.approx(1 - expected / row["width"] ** 2)


def test_jpeg_cog_counts_match_gdal_decode(chipped_jpeg) -> None:
    sample, dest, _ = chipped_jpeg
    manifest = pl.read_parquet(dest / MANIFEST).filter(pl.col("nodata_class") == "partial_data")
    assert manifest.height > 0
    for row in manifest.head(6).iter_rows(named=True):
        ref = gdal_window(row["source_cog"], row["col_off"], row["row_off"], row["width"])
        expected = int(np.all(ref <= 0, axis=2).sum())
        # Same libjpeg family on both sides; allow a sliver for IDCT differences.
        assert abs(row["nodata_pixels"] - expected) <= max(4, expected // 500), row["chip"]


def test_rerun_skips_and_keeps_files(chipped_jpeg, tmp_path) -> None:
    sample, dest, _ = chipped_jpeg
    some = sorted((dest / str(sample.zone)).glob("*.jpg"))[:5]
    stamps = [p.stat().st_mtime_ns for p in some]
    before = pl.read_parquet(dest / MANIFEST)
    again = run_chip(sample.root, dest, ChipSettings(zoom=17, proc=2))
    assert again.written == 0 and again.skipped == 1024 * len(sample.cogs)
    assert [p.stat().st_mtime_ns for p in some] == stamps
    assert pl.read_parquet(dest / MANIFEST).equals(before)


def test_lost_manifest_is_rebuilt_without_rewriting(small_sample, tmp_path) -> None:
    dest = tmp_path / "chips"
    run_chip(small_sample.root, dest, ChipSettings(zoom=17), catalog_ids=[small_sample.catalog_ids[0]])
    first = pl.read_parquet(dest / MANIFEST)
    (dest / MANIFEST).unlink()
    chip = dest / str(small_sample.zone) / first["chip"][0]
    stamp = chip.stat().st_mtime_ns
    summary = run_chip(small_sample.root, dest, ChipSettings(zoom=17), catalog_ids=[small_sample.catalog_ids[0]])
    assert summary.measured == 1024 and summary.written == 0
    assert chip.stat().st_mtime_ns == stamp
    rebuilt = pl.read_parquet(dest / MANIFEST)
    assert rebuilt.drop("written", "encoding", "bytes").sort("chip").equals(first.drop("written", "encoding", "bytes").sort("chip"))


def test_overwrite_rewrites(small_sample, tmp_path) -> None:
    dest = tmp_path / "chips"
    one = [small_sample.catalog_ids[-1]]
    run_chip(small_sample.root, dest, ChipSettings(zoom=17, quality=50), catalog_ids=one)
    sizes = {p.name: p.stat().st_size for p in (dest / str(small_sample.zone)).glob("*.jpg")}
    summary = run_chip(small_sample.root, dest, ChipSettings(zoom=17, quality=98, overwrite=True), catalog_ids=one)
    assert summary.written == 1024
    bigger = sum((dest / str(small_sample.zone) / n).stat().st_size > s for n, s in sizes.items())
    assert bigger > 0
    assert not list((dest / str(small_sample.zone)).glob(".*.tmp"))


def test_passthrough_copies_tile_bytes(small_sample, tmp_path) -> None:
    dest = tmp_path / "chips"
    summary = run_chip(small_sample.root, dest, ChipSettings(zoom=17, passthrough=True), catalog_ids=[small_sample.catalog_ids[0]])
    assert summary.written == 1024
    manifest = pl.read_parquet(dest / MANIFEST)
    data = manifest.filter(pl.col("nodata_class") != "no_data")
    assert set(data["encoding"]) == {"passthrough"}
    for row in data.head(4).iter_rows(named=True):
        path = dest / str(row["zone"]) / row["chip"]
        raw = path.read_bytes()
        assert raw[:2] == b"\xff\xd8" and raw[-2:] == b"\xff\xd9"
        got = jpeg_pixels(path)
        ref = gdal_window(row["source_cog"], row["col_off"], row["row_off"], row["width"])
        # The very same compressed tile, decoded by Pillow and by GDAL.
        assert np.abs(got.astype(int) - ref.astype(int)).max() <= 2


@pytest.mark.parametrize("zoom", [16, 18])
def test_other_zooms_match_gdal(small_sample_deflate, tmp_path, zoom: int) -> None:
    dest = tmp_path / "chips"
    one = [small_sample_deflate.catalog_ids[0]]
    summary = run_chip(small_sample_deflate.root, dest, ChipSettings(zoom=zoom, proc=2, quality=95), catalog_ids=one)
    assert summary.written == 4 ** (zoom - 12)
    manifest = pl.read_parquet(dest / MANIFEST).filter(pl.col("nodata_class") == "partial_data")
    size = 16384 >> (zoom - 12)
    for row in manifest.head(3).iter_rows(named=True):
        assert row["width"] == size
        ref = gdal_window(row["source_cog"], row["col_off"], row["row_off"], size)
        assert row["nodata_pixels"] == int(np.all(ref <= 0, axis=2).sum())
        got = jpeg_pixels(dest / str(row["zone"]) / row["chip"])
        assert np.abs(got.astype(int) - ref.astype(int)).mean() < 3.0


def test_skip_empty(small_sample, tmp_path) -> None:
    dest = tmp_path / "chips"
    summary = run_chip(small_sample.root, dest, ChipSettings(zoom=17, skip_empty=True), catalog_ids=[small_sample.catalog_ids[0]])
    manifest = pl.read_parquet(dest / MANIFEST)
    empty = manifest.filter(pl.col("nodata_class") == "no_data")
    assert summary.empty == empty.height > 0
    assert not any((dest / str(r["zone"]) / r["chip"]).exists() for r in empty.iter_rows(named=True))
    assert not empty["written"].any()


def _copy_tree_with(sample, tmp_path: Path, bad_bytes: bytes | None, shift: bool = False) -> Path:
    root = tmp_path / "ard"
    shutil.copytree(sample.root, root)
    cog = sorted(root.rglob("*-visual.tif"))[0]
    if bad_bytes is not None:
        cog.write_bytes(bad_bytes)
    if shift:
        ds = gdal.Open(str(cog), gdal.GA_Update)
        gt = list(ds.GetGeoTransform())
        gt[0] += 100.0
        ds.SetGeoTransform(gt)
        ds = None
    return root


def test_corrupt_cog_is_reported_and_run_goes_on(small_sample, tmp_path) -> None:
    root = _copy_tree_with(small_sample, tmp_path, b"II*\x00garbage" * 10)
    dest = tmp_path / "chips"
    summary = run_chip(root, dest, ChipSettings(zoom=17))
    assert len(summary.failed_cogs) == 1
    assert summary.written == 1024 * (len(small_sample.cogs) - 1)
    report = json.loads((dest / "chip-errors.json").read_text())
    assert len(report["cogs"]) == 1 and "-visual.tif" in report["cogs"][0]["error"]


def test_truncated_cog_fails_per_chip(small_sample, tmp_path) -> None:
    root = tmp_path / "ard"
    shutil.copytree(small_sample.root, root)
    cog = sorted(root.rglob("*-visual.tif"))[0]
    data = cog.read_bytes()
    cog.write_bytes(data[: int(len(data) * 0.8)])
    summary = run_chip(root, tmp_path / "chips", ChipSettings(zoom=17), catalog_ids=[cog.name.split("-")[0]])
    # Either the header is gone (COG fails) or tiles past the cut fail one by one; never a crash.
    assert summary.failed_cogs or summary.failed_chips > 0


def test_misregistered_cog_is_refused(small_sample, tmp_path) -> None:
    root = _copy_tree_with(small_sample, tmp_path, None, shift=True)
    summary = run_chip(root, tmp_path / "chips", ChipSettings(zoom=17))
    assert len(summary.failed_cogs) == 1
    assert "georeference mismatch" in summary.failed_cogs[0][1]


def test_zone_folder_as_ard_path_and_filters(small_sample, tmp_path) -> None:
    zone_dir = Path(small_sample.root) / str(small_sample.zone)
    summary = run_chip(zone_dir, tmp_path / "c1", ChipSettings(zoom=12))
    assert summary.written == len(small_sample.cogs)
    summary = run_chip(small_sample.root, tmp_path / "c2", ChipSettings(zoom=12), quadkeys=[small_sample.cells[1]])
    assert summary.cogs == sum(1 for c in small_sample.cogs if small_sample.cells[1] in str(c))


def test_cli_chip_end_to_end(cli, small_sample, tmp_path) -> None:
    res = cli("chip", "--ard-path", str(small_sample.root), "--dest", str(tmp_path / "out"), "--zoom", "17", "--proc", "2", "--passthrough")
    assert res.returncode == 0, res.stderr
    assert "chips written" in res.stdout and "chips/s" in res.stdout
    assert (tmp_path / "out" / MANIFEST).is_file()


def test_passthrough_without_measuring(small_sample, tmp_path) -> None:
    dest = tmp_path / "chips"
    one = [small_sample.catalog_ids[0]]
    summary = run_chip(small_sample.root, dest, ChipSettings(zoom=17, passthrough=True, measure=False), catalog_ids=one)
    assert summary.written == 1024
    manifest = pl.read_parquet(dest / MANIFEST)
    copied = manifest.filter(pl.col("encoding") == "passthrough")
    assert copied.height > 0
    assert copied["nodata_pixels"].null_count() == copied.height
    assert copied["nodata_class"].null_count() == copied.height
    # Sparse tiles need no decode: they are still known to be empty.
    assert set(manifest.filter(pl.col("encoding") == "reencode")["nodata_class"]) == {"no_data"}


def test_changed_cog_is_chipped_again(small_sample, tmp_path) -> None:
    root = tmp_path / "ard"
    shutil.copytree(small_sample.root, root)
    dest = tmp_path / "chips"
    one = [small_sample.catalog_ids[-1]]
    run_chip(root, dest, ChipSettings(zoom=17), catalog_ids=one)
    cog = next(root.rglob(f"{one[0]}-visual.tif"))
    os.utime(cog, ns=(cog.stat().st_atime_ns, cog.stat().st_mtime_ns + 10**9))  # re-delivered
    summary = run_chip(root, dest, ChipSettings(zoom=17), catalog_ids=one)
    assert summary.stale_cogs == [str(cog)] and summary.written == 1024
    again = run_chip(root, dest, ChipSettings(zoom=17), catalog_ids=one)
    assert again.skipped == 1024 and not again.stale_cogs


class Recorder(ProgressSink):
    def __init__(self, total: int) -> None:
        self.total, self.seen, self.closed = total, [], False

    def update(self, done: int) -> None:
        self.seen.append(done)

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize("zoom", [12, 17])  # COGs side by side (one thread each), one COG at a time
def test_progress_counts_every_chip(small_sample, tmp_path, zoom: int) -> None:
    bars: list[Recorder] = []

    def factory(total: int) -> Recorder:
        bars.append(Recorder(total))
        return bars[-1]

    summary = run_chip(small_sample.root, tmp_path / "chips", ChipSettings(zoom=zoom, proc=2), progress=factory)
    (bar,) = bars
    assert bar.total == 4 ** (zoom - 12) * len(small_sample.cogs) == summary.written
    assert bar.seen == sorted(bar.seen) and bar.seen[-1] == bar.total and bar.closed


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (ChipSettings(zoom=25), "`zoom` 25: .*12..20"),
        (ChipSettings(quality=0), "`quality` 0: .*1..100"),
        (ChipSettings(nodata_threshold=300), "`nodata_threshold` 300: .*0..254"),
        (ChipSettings(min_nodata_pixels=0), "`min_nodata_pixels` 0: .*at least 1"),
        (ChipSettings(proc=-1), "`proc` -1: .*at least 0"),
    ],
)
def test_bad_settings_name_the_parameter(small_sample, tmp_path, settings: ChipSettings, message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        run_chip(small_sample.root, tmp_path / "chips", settings)
    assert not (tmp_path / "chips").exists()
