"""`imagesim chip` and `imagesim nodata-index` write their tables a part at a time (issue 22): the files are
the ones an in-memory build writes, whatever the part sizes and the order chips come in, and a run that fails
leaves no partial file and no part folder behind."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest
from polars.testing import assert_frame_equal

from imagesim.artefacts import CHIPS_MANIFEST, MANIFEST_ORDER, NODATA_PARQUET, read_manifest
from imagesim.fsutil import OWNER_FILE
from imagesim.geoparquet import GEO_KEY, geo_metadata, with_footprints, write_geoparquet
from imagesim.imagery import chip, nodata
from imagesim.imagery.chip import ChipSettings, run_chip
from imagesim.imagery.nodata import NodataSettings, run_nodata_index

ZOOM = 15  # 64 chips per COG: quick
# What a chip measured on disk (written by a run that did not record it) has of its own: no encoding, no bytes.
UNMEASURED = ("written", "bytes", "encoding")


def hidden(folder: Path) -> list[str]:
    """What a run may leave behind: hidden part folders and temporary files."""
    return sorted(p.name for p in folder.rglob(".*"))


def in_memory(dest: Path) -> pl.DataFrame:
    """chips.parquet as the in-memory writer made it: every row sorted in manifest order, footprints afresh."""
    return with_footprints(read_manifest(dest).sort(MANIFEST_ORDER, maintain_order=True))


@pytest.fixture(scope="module")
def chipped_once(small_sample, tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("chips-once")
    run_chip(small_sample.root, dest, ChipSettings(zoom=ZOOM))
    return dest


def test_one_run_writes_the_in_memory_manifest(chipped_once: Path) -> None:
    written = pl.read_parquet(chipped_once / CHIPS_MANIFEST)
    assert written.height == 3 * 4 ** (ZOOM - 12)
    assert_frame_equal(written, in_memory(chipped_once))
    meta = pq.read_metadata(chipped_once / CHIPS_MANIFEST).metadata
    assert json.loads(meta[GEO_KEY.encode()]) == json.loads(geo_metadata(written)[GEO_KEY])
    assert hidden(chipped_once) == []


def test_small_row_groups_and_cog_by_cog_give_the_same_manifest(small_sample, chipped_once: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(chip, "MANIFEST_ROW_GROUP", 7)
    dest = tmp_path / "chips"
    # last COG first: each run merges its rows into the old ones at another place
    for catalog_id in reversed(small_sample.catalog_ids):
        run_chip(small_sample.root, dest, ChipSettings(zoom=ZOOM), catalog_ids=[catalog_id])
    assert_frame_equal(pl.read_parquet(dest / CHIPS_MANIFEST), pl.read_parquet(chipped_once / CHIPS_MANIFEST))
    assert pq.ParquetFile(dest / CHIPS_MANIFEST).metadata.num_row_groups > 1
    assert hidden(dest) == []


def test_old_manifest_out_of_order_is_merged(small_sample, chipped_once: Path, tmp_path: Path) -> None:
    dest = tmp_path / "chips"
    run_chip(small_sample.root, dest, ChipSettings(zoom=ZOOM), catalog_ids=small_sample.catalog_ids[:2])
    write_geoparquet(read_manifest(dest).reverse(), dest / CHIPS_MANIFEST)  # as an older writer might leave it
    summary = run_chip(small_sample.root, dest, ChipSettings(zoom=ZOOM))
    assert summary.skipped == 2 * 4 ** (ZOOM - 12)
    assert_frame_equal(pl.read_parquet(dest / CHIPS_MANIFEST), pl.read_parquet(chipped_once / CHIPS_MANIFEST))


def test_rechipped_rows_replace_the_old_ones(small_sample, chipped_once: Path, tmp_path: Path) -> None:
    dest = tmp_path / "chips"
    shutil.copytree(chipped_once, dest)
    summary = run_chip(small_sample.root, dest, ChipSettings(zoom=ZOOM, overwrite=True), catalog_ids=[small_sample.catalog_ids[1]])
    assert summary.written == 4 ** (ZOOM - 12)
    table = pl.read_parquet(dest / CHIPS_MANIFEST)
    assert table["chip"].is_unique().all()
    assert_frame_equal(table.drop("source_mtime_ns"), pl.read_parquet(chipped_once / CHIPS_MANIFEST).drop("source_mtime_ns"))


def test_failed_run_records_what_it_did_and_a_rerun_completes(small_sample, chipped_once: Path, tmp_path: Path, monkeypatch) -> None:
    dest = tmp_path / "chips"
    real = chip.chip_cog_task
    calls = []

    def second_fails(acq, *args, **kwargs):
        calls.append(acq)
        if len(calls) == 2:
            raise RuntimeError("killed")
        return real(acq, *args, **kwargs)

    monkeypatch.setattr(chip, "chip_cog_task", second_fails)
    with pytest.raises(RuntimeError, match="killed"):
        run_chip(small_sample.root, dest, ChipSettings(zoom=ZOOM))
    first = pl.read_parquet(dest / CHIPS_MANIFEST)
    assert first["catalog_id"].unique().to_list() == [calls[0].catalog_id]
    assert hidden(dest) == []
    monkeypatch.setattr(chip, "chip_cog_task", real)
    summary = run_chip(small_sample.root, dest, ChipSettings(zoom=ZOOM))
    assert summary.skipped == 4 ** (ZOOM - 12)  # the first COG's chips; the rest chipped or measured (already on disk)
    assert summary.processed == 2 * 4 ** (ZOOM - 12)
    assert_frame_equal(
        pl.read_parquet(dest / CHIPS_MANIFEST).drop(UNMEASURED), pl.read_parquet(chipped_once / CHIPS_MANIFEST).drop(UNMEASURED)
    )


def test_interrupted_manifest_write_leaves_no_partial_file(small_sample, chipped_once: Path, tmp_path: Path, monkeypatch) -> None:
    dest = tmp_path / "chips"

    class Interrupted(chip.GeoColumnsStream):
        def write(self, columns: dict[str, list]) -> None:
            super().write(columns)
            if self.rows:  # rows handed to the writer (a row group on disk)
                raise KeyboardInterrupt

    monkeypatch.setattr(chip, "MANIFEST_ROW_GROUP", 10)
    monkeypatch.setattr(chip, "GeoColumnsStream", Interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_chip(small_sample.root, dest, ChipSettings(zoom=ZOOM))
    assert not (dest / CHIPS_MANIFEST).exists()
    assert hidden(dest) == []
    monkeypatch.undo()
    summary = run_chip(small_sample.root, dest, ChipSettings(zoom=ZOOM))
    assert summary.measured == 3 * 4 ** (ZOOM - 12)  # on disk, not recorded: measured again, not rewritten
    assert_frame_equal(
        pl.read_parquet(dest / CHIPS_MANIFEST).drop(UNMEASURED),
        pl.read_parquet(chipped_once / CHIPS_MANIFEST).drop(UNMEASURED),
    )


@pytest.fixture(scope="module")
def unordered_chips(chipped_once: Path, tmp_path_factory) -> Path:
    """The chips plus one in the folder itself whose name sorts after every chip of 10/: found first,
    so chips come out of order and the no-data tables are sorted in memory."""
    folder = tmp_path_factory.mktemp("unordered") / "chips"
    shutil.copytree(chipped_once, folder)
    some = sorted((folder / "10").iterdir())[0]
    shutil.copy(some, folder / some.name.replace("Z10-", "Z9-"))
    return folder


@pytest.mark.parametrize("source", ["pixels", "manifest"])
@pytest.mark.parametrize("layout", ["ordered", "unordered"])
def test_nodata_outputs_do_not_depend_on_the_chunk(
    chipped_once: Path, unordered_chips: Path, tmp_path: Path, monkeypatch, source: str, layout: str
) -> None:
    chips = chipped_once if layout == "ordered" else unordered_chips

    def index(name: str, chunk: int) -> tuple[str, pl.DataFrame, dict]:
        monkeypatch.setattr(nodata, "CHUNK", chunk)
        out = tmp_path / name
        summary = run_nodata_index(chips, NodataSettings(filename=str(out / "nodata-index.json"), source=source, proc=2))
        assert summary.chips == len(list(chips.rglob("*.jpg")))
        assert hidden(out) == [] and [p for p in chips.iterdir() if p.name.startswith(".nodata")] == []
        meta = json.loads((out / "nodata-index-summary.json").read_text())
        meta.pop("seconds")
        return (out / "nodata-index.json").read_text(), pl.read_parquet(out / NODATA_PARQUET), meta

    whole = index("whole", 1 << 20)
    parts = index("parts", 5)
    assert parts[0] == whole[0]
    assert whole[0] == json.dumps(json.loads(whole[0]), indent=2) + "\n"  # the index as json.dumps writes it
    assert_frame_equal(parts[1], whole[1])
    assert parts[1]["chip"].is_sorted()
    assert parts[2] == whole[2]
    names = json.loads(whole[0])
    assert sorted(n for v in names.values() for n in v) == whole[1]["chip"].to_list()


# --- the chip table read an acquisition at a time (labels build, stac, change) ---


def _acquisitions(dest: Path, **kw) -> list[pl.DataFrame]:
    from imagesim.artefacts import iter_chip_table

    return list(iter_chip_table(dest, extra=("acquisition_date", "written"), **kw))


def test_chip_table_by_acquisition_is_the_whole_table(chipped_once: Path) -> None:
    from imagesim.artefacts import manifest_rows, read_chip_table

    parts = _acquisitions(chipped_once)
    whole = read_chip_table(chipped_once, extra=("acquisition_date", "written"))
    assert len(parts) == 3 and manifest_rows(chipped_once) == whole.height
    assert_frame_equal(pl.concat(parts).sort("chip"), whole)
    for part in parts:  # one acquisition each, its chips in chip order, in manifest order
        assert part.select("zone", "cell", "catalog_id").n_unique() == 1 and part["chip"].is_sorted()
    firsts = [p.row(0, named=True) for p in parts]
    keys = [(r["zone"], r["cell"], r["acquisition_date"], r["catalog_id"]) for r in firsts]
    assert keys == sorted(keys)


def test_chip_table_of_a_manifest_out_of_order(chipped_once: Path, tmp_path: Path) -> None:
    """A manifest whose acquisitions' rows are interleaved (an older imagesim's) is read whole: same groups,
    latest row of a chip kept."""
    dest = tmp_path / "shuffled"
    shutil.copytree(chipped_once, dest)
    rows = read_manifest(dest)
    stale = rows.head(1).with_columns(pl.lit("no_data").alias("nodata_class"))
    rows = pl.concat([stale, rows.sample(fraction=1.0, shuffle=True, seed=3)])  # a chip twice, its stale row first
    write_geoparquet(rows, dest / CHIPS_MANIFEST)
    got = _acquisitions(dest)
    want = _acquisitions(chipped_once)
    assert [p.height for p in got] == [p.height for p in want]
    for a, b in zip(got, want):
        assert_frame_equal(a, b)


def test_chip_table_nodata_index_overrides(chipped_once: Path, tmp_path: Path) -> None:
    from imagesim.artefacts import read_chip_table

    dest = tmp_path / "classed"
    shutil.copytree(chipped_once, dest)
    run_nodata_index(dest, NodataSettings())
    parts = _acquisitions(dest)
    assert_frame_equal(pl.concat(parts).sort("chip"), read_chip_table(dest, extra=("acquisition_date", "written")))
    assert pl.concat(parts)["nodata_class"].null_count() == 0


# --- a chip run killed outright: its closed part files are merged by the next run ---

_KILLED_RUN = """
import os, signal, sys
from imagesim.imagery import chip
added = 0
add = chip._Manifest.add
def add_then_die(self, frame):
    global added
    added += 1
    if added == 2:  # killed while the second COG's rows are being set down: they are lost
        os.kill(os.getpid(), signal.SIGKILL)
    add(self, frame)
chip._Manifest.add = add_then_die
chip.run_chip(sys.argv[1], sys.argv[2], chip.ChipSettings(zoom=int(sys.argv[3]), proc=1))
"""


def test_a_killed_run_is_recovered_by_the_next(small_sample, chipped_once: Path, tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys

    dest = tmp_path / "chips"
    proc = subprocess.run([sys.executable, "-c", _KILLED_RUN, str(small_sample.root), str(dest), str(ZOOM)], capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    left = [p for p in dest.iterdir() if p.name.startswith(chip.PARTS_PREFIX)]
    assert len(left) == 1 and not (dest / CHIPS_MANIFEST).exists()  # killed: nothing merged, the parts left

    summary = run_chip(small_sample.root, dest, ChipSettings(zoom=ZOOM))
    per_cog = 4 ** (ZOOM - 12)
    assert summary.recovered == per_cog  # the first COG's part file; the second's rows were never set down
    # the second COG's JPEGs were on disk, unrecorded: measured again, not cut (and any of the third COG's the runner
    # had started before the kill); the rest cut
    assert summary.skipped == per_cog and summary.measured >= per_cog
    assert summary.measured + summary.written + summary.empty == 2 * per_cog
    assert f"{per_cog} records of an interrupted run recovered" in summary.line()
    got, want = (pl.read_parquet(d / CHIPS_MANIFEST).drop(UNMEASURED) for d in (dest, chipped_once))
    assert_frame_equal(got, want)
    assert hidden(dest) == []


def test_parts_of_an_older_imagesim_are_recovered(small_sample, chipped_once: Path, tmp_path: Path) -> None:
    """An older imagesim kept several COGs' rows in one part file, a row group each: still merged."""
    import os

    dest = tmp_path / "chips"
    shutil.copytree(chipped_once, dest)
    rows = pl.read_parquet(dest / CHIPS_MANIFEST)
    (dest / CHIPS_MANIFEST).unlink()
    dead = dest / f"{chip.PARTS_PREFIX}dead"
    dead.mkdir()
    (dead / OWNER_FILE).write_text(json.dumps({"pid": 2**22 + 1, "host": __import__("socket").gethostname()}))
    first_two = rows.filter(pl.col("catalog_id").is_in(small_sample.catalog_ids[:2])).drop("geometry", "bbox")
    with pq.ParquetWriter(dead / "part-00000.parquet", first_two.to_arrow().schema) as writer:
        for _, group in first_two.group_by("catalog_id", maintain_order=True):
            writer.write_table(group.to_arrow(), row_group_size=group.height)
    assert pq.ParquetFile(dead / "part-00000.parquet").metadata.num_row_groups == 2
    (dead / "part-00001.parquet").write_bytes(b"PAR1 cut short")
    summary = run_chip(small_sample.root, dest, ChipSettings(zoom=ZOOM))
    per_cog = 4 ** (ZOOM - 12)
    assert summary.recovered == 2 * per_cog and summary.skipped == 2 * per_cog and summary.measured == per_cog
    assert_frame_equal(pl.read_parquet(dest / CHIPS_MANIFEST).drop(UNMEASURED), rows.drop(UNMEASURED))
    assert hidden(dest) == [] and not os.path.exists(dead)


def test_a_part_folder_of_a_running_chip_is_left_alone(small_sample, chipped_once: Path, tmp_path: Path) -> None:
    import os

    dest = tmp_path / "chips"
    shutil.copytree(chipped_once, dest)
    busy = dest / f"{chip.PARTS_PREFIX}busy"
    busy.mkdir()
    (busy / OWNER_FILE).write_text(json.dumps({"pid": os.getppid(), "host": __import__("socket").gethostname()}))
    (busy / "part-00000.parquet").write_bytes(b"PAR1 being written")
    summary = run_chip(small_sample.root, dest, ChipSettings(zoom=ZOOM))
    assert summary.recovered == 0 and busy.is_dir() and any("another imagesim chip run" in n for n in summary.notes)
    assert summary.skipped == 3 * 4 ** (ZOOM - 12)
    shutil.rmtree(busy)
    # an owner that is gone: its folder (here with only a part that has no footer) is removed, nothing merged
    busy.mkdir()
    (busy / OWNER_FILE).write_text(json.dumps({"pid": 2**22 + 1, "host": __import__("socket").gethostname()}))
    (busy / "part-00000.parquet").write_bytes(b"PAR1 cut short")
    summary = run_chip(small_sample.root, dest, ChipSettings(zoom=ZOOM))
    assert summary.recovered == 0 and not busy.exists() and summary.notes == []
    assert_frame_equal(pl.read_parquet(dest / CHIPS_MANIFEST), pl.read_parquet(chipped_once / CHIPS_MANIFEST))


def test_nodata_index_removes_the_parts_a_killed_run_left(chipped_once: Path, tmp_path: Path) -> None:
    import os
    import socket

    from imagesim.imagery.nodata import NODATA_PARTS_PREFIX

    dest = tmp_path / "chips"
    shutil.copytree(chipped_once, dest)
    run_nodata_index(dest, NodataSettings())
    want = pl.read_parquet(dest / NODATA_PARQUET)
    dead, busy = dest / f"{NODATA_PARTS_PREFIX}dead", dest / f"{NODATA_PARTS_PREFIX}busy"
    for folder, pid in ((dead, 2**22 + 1), (busy, os.getppid())):
        folder.mkdir()
        (folder / OWNER_FILE).write_text(json.dumps({"pid": pid, "host": socket.gethostname()}))
        (folder / "part-00000.parquet").write_bytes(b"PAR1 cut short")
    run_nodata_index(dest, NodataSettings(overwrite=True))
    assert not dead.exists() and busy.is_dir()  # a folder of a run still going is left to it
    assert_frame_equal(pl.read_parquet(dest / NODATA_PARQUET), want)
