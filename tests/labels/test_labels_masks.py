"""Labels and the ARD masks: cloudy chips left out (`max_cloud`) and classes whose truth is a mask fraction."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import pytest
from test_labels import chip_and_import

from imagesim.artefacts import CLOUD_FRACTION, MASK_FRACTION_COLUMNS, read_labels
from imagesim.errors import InvalidArgumentError, TaxonomyError
from imagesim.labels.build import CLOUDY, LabelSettings, build_labels
from imagesim.labels.taxonomy import load_taxonomy, parse_taxonomy


@pytest.fixture(scope="module")
def chipped(tmp_path_factory, small_sample):
    """Chips of the small sample and its OSM imported into a separate tree (no labels yet)."""
    return chip_and_import(small_sample, tmp_path_factory.mktemp("labels-masks"))


def planted(chips: Path, tmp_path: Path, **columns: list[float | None] | float | None) -> tuple[Path, pl.DataFrame]:
    """A copy of the chips folder whose manifest has the given mask-fraction columns (a value per chip, or one for all)."""
    dest = tmp_path / "chips"
    shutil.copytree(chips, dest)
    manifest = pl.read_parquet(dest / "chips.parquet")
    for name, values in columns.items():
        series = pl.Series(name, values if isinstance(values, list) else [values] * manifest.height, dtype=pl.Float64)
        manifest = manifest.with_columns(series)
    manifest.write_parquet(dest / "chips.parquet")
    return dest, manifest


def test_cloudy_chips_are_left_out_and_counted(chipped, tmp_path):
    chips, osm_root = chipped
    n = pl.read_parquet(chips / "chips.parquet").height
    clouds = [0.5 if i % 4 == 0 else (None if i % 4 == 1 else 0.05) for i in range(n)]
    dest, manifest = planted(chips, tmp_path, **{CLOUD_FRACTION: clouds})
    summary = build_labels(dest, osm_root, LabelSettings(include=("partial",)))
    table = read_labels(dest).table
    by_chip = dict(zip(manifest["chip"], manifest[CLOUD_FRACTION]))
    labelled = manifest.filter(pl.col("nodata_class") != "no_data")
    cloudy = labelled.filter(pl.col(CLOUD_FRACTION) > 0.1)
    assert summary.excluded[CLOUDY] == cloudy.height > 0
    assert not any((by_chip[c] or 0) > 0.1 for c in table["chip"])
    assert table.height == labelled.height - cloudy.height
    assert summary.cloud_unknown == sum(by_chip[c] is None for c in table["chip"]) > 0
    meta = json.loads((dest / "labels.json").read_text())
    assert meta["excluded"][CLOUDY] == cloudy.height
    assert meta["max_cloud"] == 0.1 and meta["cloud_fraction_unknown"] == summary.cloud_unknown


def test_max_cloud_none_keeps_every_chip_and_a_bad_value_is_refused(chipped, tmp_path):
    chips, osm_root = chipped
    dest, manifest = planted(chips, tmp_path, **{CLOUD_FRACTION: 0.9})
    build_labels(dest, osm_root, LabelSettings(include=("partial",), max_cloud=None))
    assert read_labels(dest).table.height == manifest.filter(pl.col("nodata_class") != "no_data").height
    with pytest.raises(InvalidArgumentError, match="`max_cloud`"):
        LabelSettings(max_cloud=1.5)


def test_every_chip_cloudy_says_so(chipped, tmp_path):
    chips, osm_root = chipped
    dest, _ = planted(chips, tmp_path, **{CLOUD_FRACTION: 0.9})
    summary = build_labels(dest, osm_root, LabelSettings(include=("partial",)))
    assert summary.nothing_labelled
    assert "max_cloud" in summary.why_nothing_labelled() and "cloudy" in summary.why_nothing_labelled()
    assert not (dest / "labels.parquet").exists()


def test_a_class_can_take_its_truth_from_an_ard_mask(chipped, tmp_path):
    chips, osm_root = chipped
    n = pl.read_parquet(chips / "chips.parquet").height
    water = [0.2 if i % 3 == 0 else (0.01 if i % 3 == 1 else None) for i in range(n)]
    dest, manifest = planted(chips, tmp_path, **{MASK_FRACTION_COLUMNS["water"]: water, MASK_FRACTION_COLUMNS["vegetation"]: None})
    text = (
        load_taxonomy().text
        + '\n[[class]]\nname = "ard_water"\nsource = "ard:water-mask"\nmin_share = 0.05\n'
        + '\n[[class]]\nname = "ard_any_vegetation"\nsource = "ard:healthy-vegetation-mask"\n'
    )
    tax = tmp_path / "taxonomy.toml"
    tax.write_text(text)
    summary = build_labels(dest, osm_root, LabelSettings(include=("partial",), taxonomy=tax))
    labels = read_labels(dest)
    ard_water = labels.classes.index("ard_water")
    by_chip = dict(zip(manifest["chip"], manifest[MASK_FRACTION_COLUMNS["water"]]))
    for chip, ids in zip(labels.table["chip"], labels.table["label_ids"]):
        assert (ard_water in ids) == ((by_chip[chip] or 0) >= 0.05)
    assert summary.class_counts["ard_water"] > 0
    assert summary.class_counts["ard_any_vegetation"] == 0  # no vegetation fraction anywhere: never labelled
    assert summary.mask_classes_unknown["ard_any_vegetation"] == labels.table.height
    # OSM classes are as before
    assert summary.class_counts["building"] > 0


@pytest.mark.parametrize(
    "extra, message",
    [
        ('source = "ard:nonsense-mask"', "'source' must be"),
        ('source = "ard:water-mask"\nmatch = { natural = "water" }', "do not apply"),
        ("source = 3", "'source' must be"),
    ],
)
def test_bad_mask_sources_are_refused(extra, message):
    with pytest.raises(TaxonomyError, match=message):
        parse_taxonomy(f'[[class]]\nname = "w"\n{extra}\n')


def test_an_osm_class_without_match_is_still_refused():
    with pytest.raises(TaxonomyError, match="'match'"):
        parse_taxonomy('[[class]]\nname = "w"\nsource = "osm"\n')


def test_cli_max_cloud_flag(chipped, tmp_path, cli):
    chips, osm_root = chipped
    dest, _ = planted(chips, tmp_path, **{CLOUD_FRACTION: 0.9})
    res = cli("labels", "build", "--ard-path", osm_root, "--chips", dest, "--include", "partial")
    assert res.returncode != 0 and "--max-cloud" in res.stderr
    res = cli("labels", "build", "--ard-path", osm_root, "--chips", dest, "--include", "partial", "--max-cloud", "1")
    assert res.returncode == 0, res.stderr
    res = cli("labels", "build", "--ard-path", osm_root, "--chips", dest, "--max-cloud", "2", "--overwrite")
    assert res.returncode == 2 and "--max-cloud" in res.stderr
