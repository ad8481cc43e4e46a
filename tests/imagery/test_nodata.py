"""`imagesim nodata-index`: the three sources against the generator's ground truth, bad files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from osgeo import gdal

from imagesim.artefacts import CHIPS_MANIFEST as MANIFEST
from imagesim.artefacts import NODATA_PARQUET as PARQUET
from imagesim.errors import InvalidArgumentError, OutputExistsError
from imagesim.imagery.chip import ChipSettings, run_chip
from imagesim.imagery.nodata import NodataSettings, run_nodata_index

gdal.UseExceptions()


@pytest.fixture(scope="module")
def chips(small_sample_deflate, tmp_path_factory):
    """Chips of the lossless sample: the manifest counts are exact ground truth of the drawn shape."""
    dest = tmp_path_factory.mktemp("nodata-chips")
    run_chip(small_sample_deflate.root, dest, ChipSettings(zoom=17, quality=95, proc=2))
    return small_sample_deflate, dest


def classes(index_path: Path) -> dict[str, str]:
    index = json.loads(index_path.read_text())
    assert set(index) == {"all_data", "partial_data", "no_data"}
    return {name: cls for cls, names in index.items() for name in names}


def truth(dest: Path) -> dict[str, str]:
    manifest = pl.read_parquet(dest / MANIFEST)
    return dict(zip(manifest["chip"], manifest["nodata_class"]))


def test_manifest_source_is_the_ground_truth(chips) -> None:
    _, dest = chips
    summary = run_nodata_index(dest)  # the manifest is there: it is the default source
    assert summary.source == "manifest"
    assert classes(summary.index) == truth(dest)
    table = pl.read_parquet(dest / PARQUET)
    assert table.height == len(truth(dest))
    assert set(table["source"]) == {"manifest"}


def test_pixels_source_matches_ground_truth(chips, tmp_path) -> None:
    sample, dest = chips
    # JPEG chips of a lossless source: tolerate JPEG noise at the edges with a small threshold.
    summary = run_nodata_index(dest, NodataSettings(source="pixels", nodata_threshold=8, proc=2, filename=str(tmp_path / "px.json")))
    got, want = classes(summary.index), truth(dest)
    assert set(got) == set(want)
    assert {c for c, k in got.items() if k == "no_data"} == {c for c, k in want.items() if k == "no_data"}
    disagree = [c for c in got if got[c] != want[c]]
    assert len(disagree) <= max(2, len(got) // 100), disagree[:10]
    assert summary.by_source == {"pixels": len(got)}


def corners_valid(cog: str, col: int, row: int, size: int) -> bool:
    ds = gdal.Open(cog)
    for x, y in [(col, row), (col + size - 1, row), (col, row + size - 1), (col + size - 1, row + size - 1)]:
        px = [ds.GetRasterBand(b + 1).ReadAsArray(x, y, 1, 1)[0, 0] for b in range(3)]
        if all(v == 0 for v in px):
            return False
    return True


def test_irregular_edges_caught_where_the_corner_rule_fails(chips, tmp_path) -> None:
    _, dest = chips
    manifest = pl.read_parquet(dest / MANIFEST).filter(pl.col("nodata_class") == "partial_data")
    fooled = [r["chip"] for r in manifest.iter_rows(named=True) if corners_valid(r["source_cog"], r["col_off"], r["row_off"], r["width"])]
    assert fooled, "the sample should have partial chips whose four corners are valid"
    summary = run_nodata_index(dest, NodataSettings(source="pixels", nodata_threshold=8, filename=str(tmp_path / "i.json")))
    got = classes(summary.index)
    assert all(got[c] == "partial_data" for c in fooled)


def test_mask_source_matches_ground_truth(chips, tmp_path) -> None:
    sample, dest = chips
    summary = run_nodata_index(dest, NodataSettings(source="mask", filename=str(tmp_path / "m.json")))
    got, want = classes(summary.index), truth(dest)
    disagree = [c for c in got if got[c] != want[c]]
    # Area shares vs pixel centres may differ on chips the edge barely grazes.
    assert len(disagree) <= max(2, len(got) // 100), disagree[:10]
    # Without a manifest the masks are found through the ARD tree.
    bare = tmp_path / "bare"
    shutil.copytree(dest / str(sample.zone), bare / str(sample.zone))
    summary = run_nodata_index(bare, NodataSettings(source="mask", ard_path=sample.root))
    assert classes(summary.index) == got


def test_dark_valid_pixels_stay_all_data(tmp_path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    img = rng.integers(60, 200, size=(512, 512, 3), dtype=np.uint8)
    img[100:102, 200:203] = 0  # six near-black valid pixels (shadow, JPEG noise)
    img[300:450, 0:40] = 0  # a real no-data sliver in the second chip only
    Image.fromarray(img[:, 60:]).resize((512, 512)).save(tmp_path / "Z10-12002022303200000_A.jpg", quality=95)
    Image.fromarray(img).save(tmp_path / "Z10-12002022303200001_A.jpg", quality=95)
    Image.fromarray(np.zeros((512, 512, 3), np.uint8)).save(tmp_path / "Z10-12002022303200002_A.jpg", quality=95)
    got = classes(run_nodata_index(tmp_path, NodataSettings(nodata_threshold=4)).index)
    assert got == {
        "Z10-12002022303200000_A.jpg": "all_data",
        "Z10-12002022303200001_A.jpg": "partial_data",
        "Z10-12002022303200002_A.jpg": "no_data",
    }


def test_bad_files_are_reported_and_chips_untouched(chips, tmp_path) -> None:
    sample, dest = chips
    work = tmp_path / "chips"
    shutil.copytree(dest / str(sample.zone), work / str(sample.zone))
    jpgs = sorted((work / str(sample.zone)).glob("*.jpg"))
    data = jpgs[5].read_bytes()
    jpgs[5].write_bytes(data[: len(data) // 3])  # truncated
    jpgs[6].write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")  # garbage
    (work / "notes.txt").write_text("not a chip")
    stamps = {p: p.stat().st_mtime_ns for p in jpgs}
    summary = run_nodata_index(work, NodataSettings(source="pixels"))
    assert sorted(Path(f).name for f, _ in summary.failed) == sorted([jpgs[5].name, jpgs[6].name])
    assert summary.skipped == [str(work / "notes.txt")]
    assert sum(summary.counts.values()) == len(jpgs) - 2
    report = json.loads(summary.summary.read_text())
    assert len(report["failed"]) == 2 and all(f["error"] for f in report["failed"])
    assert {p: p.stat().st_mtime_ns for p in jpgs} == stamps
    index = json.loads(summary.index.read_text())
    assert jpgs[5].name not in sum(index.values(), [])


def test_corrupt_realdata_jpeg_is_a_failure(realdata, tmp_path) -> None:
    # A real file that is not a valid JPEG, named like a chip.
    src = realdata / "tiff-corrupt" / "rasterio__corrupt.tif"
    shutil.copy(src, tmp_path / "Z10-12002022303200000_A.jpg")
    summary = run_nodata_index(tmp_path)
    assert len(summary.failed) == 1 and sum(summary.counts.values()) == 0


def test_overwrite_rules(chips, tmp_path) -> None:
    _, dest = chips
    target = tmp_path / "keep.json"
    target.write_text("{}")
    with pytest.raises(OutputExistsError):
        run_nodata_index(dest, NodataSettings(filename=str(target), overwrite=False))
    assert target.read_text() == "{}"
    run_nodata_index(dest, NodataSettings(filename=str(target)))  # default: overwrite
    assert "all_data" in json.loads(target.read_text())


def test_cli_nodata_index(cli, chips, tmp_path) -> None:
    sample, dest = chips
    work = tmp_path / "zone"
    shutil.copytree(dest / str(sample.zone), work)  # the original layout: one zone's chips
    res = cli("nodata-index", "--chips", work, "--nodata-threshold", "8")
    assert res.returncode == 0, res.stderr
    assert "chips/s" in res.stdout and (work / "nodata-index.json").is_file()
    assert json.loads((work / "nodata-index-summary.json").read_text())["nodata_threshold"] == 8
    res = cli("nodata-index", "--chips", work, "--no-overwrite")
    assert res.returncode == 1 and "--overwrite" in res.stderr and "Traceback" not in res.stderr


def test_progress_moves_chip_by_chip_and_ends_at_every_chip(chips, tmp_path) -> None:
    _, dest = chips
    seen: list[int] = []

    class Sink:
        def update(self, done: int) -> None:
            seen.append(done)

        def close(self) -> None:
            pass

    summary = run_nodata_index(dest, NodataSettings(source="pixels", filename=str(tmp_path / "p.json")), progress=lambda _n: Sink())
    assert seen == sorted(seen) and seen[-1] == summary.chips


def test_manifest_measured_with_another_threshold_is_refused(chips, tmp_path) -> None:
    _, dest = chips
    with pytest.raises(InvalidArgumentError, match="measured with `nodata_threshold` 0; pass `nodata_threshold` 0 or `source` pixels"):
        run_nodata_index(dest, NodataSettings(source="manifest", nodata_threshold=5, filename=str(tmp_path / "x.json")))


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (NodataSettings(source="corners"), "`source` 'corners': choose one of pixels, manifest, mask"),
        (NodataSettings(nodata_threshold=255), "`nodata_threshold` 255: .*0..254"),
        (NodataSettings(min_nodata_pixels=0), "`min_nodata_pixels` 0: .*at least 1"),
        (NodataSettings(proc=-2), "`proc` -2: .*at least 0"),
    ],
)
def test_bad_settings_name_the_parameter(tmp_path, settings: NodataSettings, message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        run_nodata_index(tmp_path, settings)


@pytest.mark.parametrize("subsampling", [0, 1, 2])  # 4:4:4, 4:2:2, 4:2:0
def test_strip_edge_counts_equal_the_full_rgb_rule(tmp_path, subsampling: int) -> None:
    """Chips along a strip edge (a large black area, a dark coloured fringe, texture): the counts
    from the luma/YUV planes equal the rule applied to a full RGB decode, threshold by threshold."""
    from PIL import Image

    rng = np.random.default_rng(subsampling)
    yy, xx = np.mgrid[0:512, 0:512]
    img = rng.integers(40, 220, size=(512, 512, 3), dtype=np.uint8)
    edge = xx + yy // 2
    img[edge < 300] = 0
    fringe = (edge >= 300) & (edge < 310)
    img[fringe] = rng.integers(0, 9, size=(int(fringe.sum()), 3), dtype=np.uint8)
    path = tmp_path / "Z10-12002022303200000_A.jpg"
    Image.fromarray(img).save(path, quality=90, subsampling=subsampling)
    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB"))
    for threshold in (0, 4, 12):
        run_nodata_index(tmp_path, NodataSettings(source="pixels", nodata_threshold=threshold, proc=1))
        got = pl.read_parquet(tmp_path / PARQUET)["nodata_pixels"].to_list()
        assert got == [int((rgb.max(axis=2) <= threshold).sum())], f"threshold {threshold}"
    assert got[0] > 512 * 512 // 4  # the slow path: candidates in most rows
