"""`imagesim chip --dest chips/<zone>`, the original notebook's layout: a DEST named after the zone being
chipped holds that zone's chips itself (not DEST/<zone>/), its chips.parquet and chip-errors.json stay in
DEST, and every later stage finds the chips from the manifest (the chip `path` is `<chip>`)."""

from __future__ import annotations

import shutil
from pathlib import Path

import polars as pl
import pytest

from imagesim.artefacts import CHIP_ERRORS, CHIPS_MANIFEST, read_chip_table, zone_folder
from imagesim.imagery.chip import ChipSettings, run_chip


@pytest.fixture(scope="module")
def osm_ard(small_sample, tmp_path_factory) -> Path:
    """The sample's ARD tree with each cell's osm_data.json (imported from the sample's PBF), no COGs."""
    from imagesim.labels.cells import find_cells
    from imagesim.labels.osm_import import import_osm

    ard = tmp_path_factory.mktemp("layout-osm") / "ard"
    shutil.copytree(small_sample.root, ard, ignore=shutil.ignore_patterns("*.tif", "*.gpkg"))
    import_osm(small_sample.osm_pbf, ard, find_cells(ard))
    return ard


def test_dest_named_after_the_zone_holds_the_chips_itself(cli, small_sample, osm_ard, tmp_path) -> None:
    from imagesim.imagery.nodata import NodataSettings, run_nodata_index
    from imagesim.labels.build import LabelSettings, build_labels

    zone = small_sample.zone
    dest = tmp_path / "chips" / str(zone)
    res = cli("chip", "--ard-path", small_sample.root, "--dest", dest, "--zoom", "17", "--proc", "2")
    assert res.returncode == 0, res.stderr
    assert not (dest / str(zone)).exists()  # was chips/10/10/…
    jpegs = sorted(p.name for p in dest.glob("*.jpg"))
    assert len(jpegs) == 1024 * len(small_sample.cogs)
    assert [p for p in dest.rglob("*.jpg") if p.parent != dest] == []
    assert (dest / CHIPS_MANIFEST).is_file() and (dest / CHIP_ERRORS).is_file()
    assert not (tmp_path / "chips" / CHIPS_MANIFEST).exists()

    # The chip table every later stage reads (labels build, encode) points at the files.
    table = read_chip_table(dest)
    assert table["path"].to_list() == table["chip"].to_list() == jpegs

    # nodata-index on the folder, as the notebook ran it: the manifest's counts, every chip classified.
    summary = run_nodata_index(dest, NodataSettings(proc=2))
    assert summary.chips == len(jpegs) and not summary.failed

    build_labels(dest, osm_ard, LabelSettings(include=("partial",)))
    labels = pl.read_parquet(dest / "labels.parquet")
    assert labels.height > 0 and labels["path"].to_list() == labels["chip"].to_list()
    assert all((dest / p).is_file() for p in labels["path"])
    features = pl.read_csv(dest / "labels.csv")["Feature"].to_list()
    assert features and all((dest / f).is_file() for f in features)  # relative to DEST, as documented

    # A re-run finds everything in place: nothing written, nothing moved.
    again = run_chip(small_sample.root, dest, ChipSettings(zoom=17, proc=2))
    assert again.written == 0 and again.skipped == len(jpegs)
    assert not (dest / str(zone)).exists()


def test_a_zone_folder_chipped_the_nested_way_stays_nested(small_sample, tmp_path) -> None:
    """chips/10/10/… from an earlier imagesim keeps its layout (chips are not cut a second time)."""
    zone = small_sample.zone
    dest = tmp_path / str(zone)
    (dest / str(zone)).mkdir(parents=True)
    one = [small_sample.catalog_ids[0]]
    summary = run_chip(small_sample.root, dest, ChipSettings(zoom=13), catalog_ids=one)
    assert summary.written == 4 and len(list((dest / str(zone)).glob("*.jpg"))) == 4 and not list(dest.glob("*.jpg"))
    table = read_chip_table(dest)
    assert table["path"].to_list() == [f"{zone}/{c}" for c in table["chip"]]
    assert all((dest / p).is_file() for p in table["path"])


def test_dest_named_after_another_zone_is_an_ordinary_chips_folder(small_sample, tmp_path) -> None:
    other = 33 if small_sample.zone != 33 else 34
    dest = tmp_path / str(other)
    summary = run_chip(small_sample.root, dest, ChipSettings(zoom=13), catalog_ids=[small_sample.catalog_ids[0]])
    assert summary.written == 4 and len(list((dest / str(small_sample.zone)).glob("*.jpg"))) == 4
    table = read_chip_table(dest)
    assert all(p == f"{small_sample.zone}/{c}" and (dest / p).is_file() for p, c in zip(table["path"], table["chip"]))


@pytest.mark.parametrize(
    ("name", "zone"),
    [("33", 33), ("08", 8), ("1", 1), ("60", 60), ("61", None), ("0", None), ("033", None), ("chips", None), ("z33", None)],
)
def test_zone_folder_names(tmp_path: Path, name: str, zone: int | None) -> None:
    assert zone_folder(tmp_path / name) == zone


def test_zone_folder_of_a_relative_or_dotted_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "chips" / "33").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "chips" / "33")
    assert zone_folder(Path(".")) == 33
    assert zone_folder(Path("../33/")) == 33
    (tmp_path / "chips" / "33" / "33").mkdir()
    assert zone_folder(Path(".")) is None
