"""Runs that do nothing useful exit 1 and say what they found and what to give instead; re-runs with
everything already done exit 0 and say so. Through the `imagesim` command (the ``cli`` fixture):
chip, nodata-index, osm fetch / import / tags, labels build / split / report."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from imagesim import _imagesim

ZONE = 10


@pytest.fixture(scope="module")
def chips(small_sample, tmp_path_factory) -> Path:
    """The small sample cut at zoom 17 (a second of work): 3072 chips, 20 all_data, 54 partial_data."""
    from imagesim.imagery.chip import ChipSettings, run_chip

    dest = tmp_path_factory.mktemp("nothing-done-chips")
    run_chip(small_sample.root, dest, ChipSettings(zoom=17))
    return dest


def cell_tree(small_sample, root: Path) -> Path:
    """The sample's ``<zone>/<qk12>`` cell folders under ``root`` (no imagery, no OSM data)."""
    for cell in small_sample.cells:
        (root / str(ZONE) / cell).mkdir(parents=True)
    return root


def osm_doc(quadkey: str, *, node: bool = False) -> str:
    nodes = [{"type": "node", "id": 1, "lat": 37.78, "lon": -122.4, "tags": {"amenity": "bench"}}] if node else []
    return json.dumps({"quadkey": quadkey, "nodes": nodes, "ways": [], "relations": []})


def one_line(stderr: str) -> str:
    """The error line (the last one), checked to be one line without a traceback."""
    assert "Traceback" not in stderr
    line = stderr.strip().splitlines()[-1]
    assert line.startswith("error: "), stderr
    return line


# --------------------------------------------------------------------------------------------
# chip
# --------------------------------------------------------------------------------------------


def test_chip_one_level_too_high_names_the_delivery(cli, small_sample, tmp_path):
    res = cli("chip", "--ard-path", small_sample.root.parent, "--dest", tmp_path / "out")
    assert res.returncode == 1, res.stdout + res.stderr
    line = one_line(res.stderr)
    assert f"3 -visual.tif files found one level down, in the ARD layout under {small_sample.root}" in line
    assert f"did you mean --ard-path {small_sample.root}?" in line and "`" not in line
    assert "chips.parquet" not in res.stdout and not (tmp_path / "out" / "chips.parquet").exists()


def test_chip_of_a_cell_folder_names_the_root_and_the_zone_folder(cli, small_sample, tmp_path):
    cell = small_sample.root / str(ZONE) / small_sample.cells[0]
    res = cli("chip", "--ard-path", cell, "--dest", tmp_path / "out")
    assert res.returncode == 1
    line = one_line(res.stderr)
    assert f"{cell} is a cell folder of a delivery" in line
    assert f"give --ard-path the delivery root {small_sample.root} (or the zone folder {small_sample.root / str(ZONE)})" in line
    assert "chips.parquet" not in res.stdout


def test_chip_of_a_flat_folder_of_tiffs_names_the_layout(cli, small_sample, tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for name in ("a.tif", "b.tif"):
        os.link(small_sample.cogs[0], flat / name)
    res = cli("chip", "--ard-path", flat, "--dest", tmp_path / "out")
    assert res.returncode == 1
    line = one_line(res.stderr)
    assert f"2 .tif files under {flat} are not in the ARD layout <zone>/<12-digit quadkey>/<YYYY-MM-DD>/<catalog-id>-visual.tif" in line


def test_chip_filters_matching_nothing_say_what_is_there(cli, small_sample, tmp_path):
    res = cli("chip", "--ard-path", small_sample.root, "--dest", tmp_path / "out", "--zone", "11", "--catalog-id", "NOPE")
    assert res.returncode == 1
    line = one_line(res.stderr)
    assert "none of the 3 acquisitions" in line and "--zone 11, --catalog-id NOPE" in line
    assert f"the delivery has zone {ZONE}, cells {', '.join(small_sample.cells)}" in line


def test_chip_of_an_empty_folder(cli, tmp_path):
    (tmp_path / "empty").mkdir()
    res = cli("chip", "--ard-path", tmp_path / "empty", "--dest", tmp_path / "out")
    assert res.returncode == 1
    assert "no -visual.tif under" in one_line(res.stderr) and "give --ard-path the root of an ARD delivery" in res.stderr
    assert not (tmp_path / "out").exists()  # nothing to chip: no DEST made, no chip-errors.json written


def test_chip_rerun_with_everything_done_exits_0_and_says_so(cli, small_sample, tmp_path):
    args = ("chip", "--ard-path", small_sample.root, "--dest", tmp_path / "out", "--catalog-id", small_sample.catalog_ids[0])
    first = cli(*args)
    assert first.returncode == 0 and "1024 chips written" in first.stdout and "nothing to do" not in first.stderr
    again = cli(*args)
    assert again.returncode == 0, again.stderr
    assert "0 chips written, 1024 skipped" in again.stdout
    assert "nothing to do: all 1024 chips of the 1 COG(s) were already written (--overwrite redoes them)" in again.stderr


# --------------------------------------------------------------------------------------------
# nodata-index
# --------------------------------------------------------------------------------------------


def test_nodata_index_of_a_folder_without_jpegs_writes_nothing(cli, small_sample, tmp_path):
    os.link(small_sample.cogs[0], tmp_path / "a.tif")
    res = cli("nodata-index", "--chips", tmp_path)
    assert res.returncode == 1
    line = one_line(res.stderr)
    assert f"no JPEG chip (.jpg) under {tmp_path} (1 other files)" in line and "give --chips the DEST of `imagesim chip`" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tif"]  # no empty index left behind


# --------------------------------------------------------------------------------------------
# osm fetch / import / tags
# --------------------------------------------------------------------------------------------


def test_osm_fetch_without_cells(cli, small_sample, tmp_path):
    (tmp_path / "empty").mkdir()
    res = cli("osm", "fetch", "--ard-path", tmp_path / "empty", "--endpoint", "http://127.0.0.1:9/api/interpreter")
    assert res.returncode == 1
    line = one_line(res.stderr)
    assert "no <zone>/<12-digit quadkey> cell folders under" in line and "--bbox and --zone to fetch by area" in line
    cell = small_sample.root / str(ZONE) / small_sample.cells[0]
    res = cli("osm", "fetch", "--ard-path", cell, "--endpoint", "http://127.0.0.1:9/api/interpreter")
    assert res.returncode == 1 and f"{cell} is a cell folder of a delivery: give --ard-path the delivery root" in one_line(res.stderr)
    res = cli("osm", "fetch", "--ard-path", small_sample.root.parent, "--endpoint", "http://127.0.0.1:9/api/interpreter")
    assert res.returncode == 1 and f"did you mean --ard-path {small_sample.root}?" in one_line(res.stderr)
    res = cli("osm", "fetch", "--ard-path", small_sample.root, "--zone", "11", "--endpoint", "http://127.0.0.1:9/api/interpreter")
    assert res.returncode == 1 and f"none of the 2 cell folders under {small_sample.root} is in --zone 11 (zone 10 there)" in res.stderr


def test_osm_import_covering_no_cell_writes_nothing(cli, small_sample, tmp_path):
    # a cell of zone 10 far from the sample (the extract has nothing there)
    res = cli("osm", "import", small_sample.osm_pbf, "--ard-path", tmp_path, "--zone", "10", "--bbox=-121.0,37.0,-120.99,37.01")
    assert res.returncode == 1, res.stdout + res.stderr
    line = one_line(res.stderr)
    assert f"{small_sample.osm_pbf} has no data inside any of the 1 cells" in line and "nothing written" in line and "--zone" in line
    assert list(tmp_path.rglob("osm_data.json")) == []  # no empty file that would later pass as valid


def test_osm_import_never_replaces_data_with_nothing(cli, small_sample, tmp_path):
    root = cell_tree(small_sample, tmp_path / "ard")
    far = root / str(ZONE) / "120022102211"  # a cell the sample's extract does not reach
    far.mkdir()
    good = osm_doc("120022102211", node=True)
    (far / "osm_data.json").write_text(good)
    # --overwrite: the sample's cells are written, the far cell keeps its data
    res = cli("osm", "import", small_sample.osm_pbf, "--ard-path", root, "--overwrite")
    assert res.returncode == 0, res.stderr
    assert "2 cells written" in res.stdout and "1 kept (the extract has no data for them)" in res.stdout
    assert f"kept the file there: {ZONE}/120022102211" in res.stderr
    assert (far / "osm_data.json").read_text() == good
    # a delivery of the far cell only: nothing covered, nothing written, exit 1
    alone = tmp_path / "far" / str(ZONE) / far.name
    shutil.copytree(far, alone)
    res = cli("osm", "import", small_sample.osm_pbf, "--ard-path", tmp_path / "far", "--overwrite")
    assert res.returncode == 1 and "has no data inside any of the 1 cells" in one_line(res.stderr)
    assert (alone / "osm_data.json").read_text() == good
    # a re-run with every cell done is no failure
    res = cli("osm", "import", small_sample.osm_pbf, "--ard-path", root)
    assert res.returncode == 0 and "0 cells written" in res.stdout and "3 skipped (already present)" in res.stdout


def test_osm_tags_without_osm_data(cli, small_sample, tmp_path):
    root = cell_tree(small_sample, tmp_path / "ard")
    res = cli("osm", "tags", "--ard-path", root)
    assert res.returncode == 1
    line = one_line(res.stderr)
    assert f"no osm_data.json in any of the 2 cell folders under {root}" in line
    assert "`imagesim osm fetch` or `imagesim osm import`" in line
    assert not (root / "osm_tags.parquet").exists()
    res = cli("osm", "tags", "--ard-path", root.parent)
    assert res.returncode == 1 and f"did you mean --ard-path {root}?" in one_line(res.stderr)


def test_osm_tags_of_empty_osm_files(cli, small_sample, tmp_path):
    root = cell_tree(small_sample, tmp_path / "ard")
    for cell in small_sample.cells:
        (root / str(ZONE) / cell / "osm_data.json").write_text(osm_doc(cell))
    res = cli("osm", "tags", "--ard-path", root)
    assert res.returncode == 1
    assert "the 2 osm_data.json files under" in one_line(res.stderr) and "hold no tagged element" in res.stderr
    assert not (root / "osm_tags.parquet").exists()
    # one element of another kind than asked for: a plain answer, not a failure
    (root / str(ZONE) / small_sample.cells[0] / "osm_data.json").write_text(osm_doc(small_sample.cells[0], node=True))
    res = cli("osm", "tags", "--ard-path", root, "--element", "way")
    assert res.returncode == 0 and "no way elements in the 2 osm_data.json files" in res.stderr


# --------------------------------------------------------------------------------------------
# labels build / split / report
# --------------------------------------------------------------------------------------------


def test_labels_build_with_empty_osm_data_exits_1_and_writes_nothing(cli, chips, small_sample, tmp_path):
    root = cell_tree(small_sample, tmp_path / "ard")
    for cell in small_sample.cells:
        (root / str(ZONE) / cell / "osm_data.json").write_text(osm_doc(cell))
    res = cli("labels", "build", "--ard-path", root, "--chips", chips, "--out", tmp_path / "labels", "--include", "partial")
    assert res.returncode == 1
    line = one_line(res.stderr)
    assert "no chip got a label" in line and "hold no tagged element" in line and "--overwrite" in line
    assert not (tmp_path / "labels").exists()


def test_labels_build_without_osm_data(cli, chips, small_sample, tmp_path):
    root = cell_tree(small_sample, tmp_path / "ard")
    res = cli("labels", "build", "--ard-path", root, "--chips", chips, "--out", tmp_path / "labels")
    assert res.returncode == 1
    line = one_line(res.stderr)
    assert "no chip got a label" in line and "no cell has usable OSM data (2 without osm_data.json" in line
    assert "for the cells of --ard-path" in line and not (tmp_path / "labels").exists()


@pytest.fixture(scope="module")
def osm_tree(small_sample, tmp_path_factory) -> Path:
    """The sample's cell folders with its OSM data imported."""
    from imagesim.labels.cells import find_cells
    from imagesim.labels.osm_import import import_osm

    root = cell_tree(small_sample, tmp_path_factory.mktemp("osm") / "ard")
    import_osm(small_sample.osm_pbf, root, find_cells(root))
    return root


def test_labels_build_with_a_taxonomy_matching_nothing(cli, chips, osm_tree, tmp_path):
    toml = tmp_path / "none.toml"
    toml.write_text('version = 1\n\n[[class]]\nname = "unicorn"\nmatch = { unicorn = "*" }\n')
    res = cli("labels", "build", "--ard-path", osm_tree, "--chips", chips, "--out", tmp_path / "labels", "--taxonomy", toml)
    assert res.returncode == 1, res.stdout + res.stderr
    line = one_line(res.stderr)
    assert "no chip got a label" in line and "tagged OSM elements matches a class of the taxonomy" in line
    assert "compare --taxonomy with the tags `imagesim osm tags` lists" in line
    assert not (tmp_path / "labels").exists()


def test_labels_build_with_every_chip_no_data(cli, chips, osm_tree, tmp_path):
    names = pl.read_parquet(chips / "chips.parquet")["chip"].to_list()
    index = tmp_path / "all-no-data.json"
    index.write_text(json.dumps({"all_data": [], "partial_data": [], "no_data": names}))
    res = cli("labels", "build", "--ard-path", osm_tree, "--chips", chips, "--out", tmp_path / "labels", "--nodata-index", index)
    assert res.returncode == 1, res.stdout + res.stderr
    line = one_line(res.stderr)
    assert "every chip is left out by its no-data class (3072 no_data); --include partial or unmeasured labels those" in line


def test_labels_build_keeps_labels_there_when_nothing_is_labelled(cli, chips, small_sample, osm_tree, tmp_path):
    """A good build, then an --overwrite build that labels nothing: the good labels stay."""
    out = tmp_path / "labels"
    res = cli("labels", "build", "--ard-path", osm_tree, "--chips", chips, "--out", out, "--include", "partial")
    assert res.returncode == 0, res.stderr
    before = (out / "labels.parquet").read_bytes()
    empty = cell_tree(small_sample, tmp_path / "empty-ard")
    for cell in small_sample.cells:
        (empty / str(ZONE) / cell / "osm_data.json").write_text(osm_doc(cell))
    res = cli("labels", "build", "--ard-path", empty, "--chips", chips, "--out", out, "--include", "partial", "--overwrite")
    assert res.returncode == 1 and "no chip got a label" in one_line(res.stderr)
    assert (out / "labels.parquet").read_bytes() == before


def unlabelled(chips: Path, dest: Path) -> Path:
    """A labels.parquet (+ labels.json) of the chips with data, none of them labelled."""
    classes = ["building", "road"]
    table = pl.read_parquet(chips / "chips.parquet").filter(pl.col("nodata_class") != "no_data").sort("chip")
    n, words = table.height, _imagesim.label_words(len(classes))
    bits = np.asarray(_imagesim.pack_labels(np.zeros(0, np.uint32), np.zeros(n + 1, np.int64), len(classes))).reshape(n, words)
    frame = table.select(
        "chip",
        pl.format("{}/{}", "zone", "chip").alias("path"),
        pl.col("zone").cast(pl.UInt8),
        "quadkey",
        "cell",
        "catalog_id",
        "nodata_class",
        pl.Series("label_ids", [[] for _ in range(n)], dtype=pl.List(pl.UInt16)),
        pl.Series("bitset", bits, dtype=pl.Array(pl.UInt64, words)),
        pl.lit(None, dtype=pl.String).alias("split"),
    )
    dest.mkdir(parents=True, exist_ok=True)
    frame.write_parquet(dest / "labels.parquet")
    (dest / "labels.json").write_text(json.dumps({"classes": classes, "n_classes": len(classes), "words": words}))
    return dest / "labels.parquet"


def test_labels_split_and_report_of_labels_without_a_label(cli, chips, tmp_path):
    labels = unlabelled(chips, tmp_path / "labels")
    before = labels.read_bytes()
    res = cli("labels", "split", "--labels", labels, "--group-level", "17")
    assert res.returncode == 1
    assert "none of its 74 chips has a label; nothing to split" in one_line(res.stderr)
    assert labels.read_bytes() == before and not (labels.parent / "labels-train.csv").exists()
    res = cli("labels", "report", "--labels", labels, "--out", tmp_path / "report")
    assert res.returncode == 1
    assert "none of its 74 chips has a label; nothing to report" in one_line(res.stderr)
    assert not (tmp_path / "report").exists()


def test_labels_commands_without_labels_file(cli, tmp_path):
    for command in ("split", "report"):
        res = cli("labels", command, "--chips", tmp_path)
        assert res.returncode == 1 and "run `imagesim labels build` first" in one_line(res.stderr)


def test_osm_import_leaves_cells_outside_the_extract_unwritten(cli, realdata, tmp_path):
    """A real extract's header box: a cell outside it gets no (empty, later "valid") file."""
    from imagesim.labels.cells import BBox, cells_covering

    inside = cells_covering(BBox(9.52, 47.14, 9.521, 47.141), 32)[0]  # Vaduz
    outside = cells_covering(BBox(8.0, 47.0, 8.001, 47.001), 32)[0]  # Aargau: beyond the extract
    for cell in (inside, outside):
        cell.folder(tmp_path).mkdir(parents=True)
    res = cli("osm", "import", realdata / "osm" / "pyosmium__liechtenstein.osm.pbf", "--ard-path", tmp_path)
    assert res.returncode == 0, res.stderr
    assert "1 cells written" in res.stdout and "1 not covered by the extract (not written)" in res.stdout
    assert f"not covered by the extract, not written: 32/{outside.quadkey}" in res.stderr
    assert inside.osm_path(tmp_path).is_file() and not outside.osm_path(tmp_path).exists()
