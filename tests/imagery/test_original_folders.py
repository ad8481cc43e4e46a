"""Chip folders of the original tool: JPEGs named ``Z<zone>-<quadkey>_<catalog-id>.jpg`` (in
``DEST/<zone>/`` or flat in one zone folder), an original-format ``nodata-index.json``, no
``chips.parquet``. Every stage derives the manifest from the chip names and gives the same chips,
labels, embeddings and neighbours as with the manifest `imagesim chip` writes."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from imagesim import artefacts
from imagesim.artefacts import (
    CHIP_IDENTITY,
    DerivedManifestWarning,
    derive_manifest,
    read_chip_table,
    read_labels,
    read_manifest,
)
from imagesim.errors import ImagesimFileNotFoundError

from onnx_models import tiny_onnx

LAYOUTS = ("zones", "flat")  # DEST/<zone>/<chip>, or the chips right in the folder (one zone's folder)
SIZE = 32  # input of the stand-in ONNX model


class Real:
    """The small sample chipped by `imagesim chip` (with its manifest) and its OSM imported."""

    def __init__(self, sample, chips: Path, ard: Path) -> None:
        self.sample = sample
        self.chips = chips
        self.ard = ard
        self.manifest = pl.read_parquet(chips / "chips.parquet")

    def original(self, dest: Path, layout: str = "zones", nodata_index: bool = True) -> Path:
        """An original-tool folder of the same chips (hard links: cheap), with its nodata-index.json."""
        for zone, chip in self.manifest.select("zone", "chip").iter_rows():
            folder = dest / str(zone) if layout == "zones" else dest
            folder.mkdir(parents=True, exist_ok=True)
            os.link(self.chips / str(zone) / chip, folder / chip)
        if nodata_index:
            doc = {
                c: self.manifest.filter(pl.col("nodata_class") == c)["chip"].sort().to_list()
                for c in ("all_data", "partial_data", "no_data")
            }
            (dest / "nodata-index.json").write_text(json.dumps(doc))
        return dest


def rel_path(layout: str) -> pl.Expr:
    """Where each chip's file is, relative to the folder."""
    return (pl.format("{}/{}", "zone", "chip") if layout == "zones" else pl.col("chip")).alias("path")


@pytest.fixture(scope="module")
def real(tmp_path_factory, small_sample) -> Real:
    from imagesim.imagery.chip import ChipSettings, run_chip
    from imagesim.labels.cells import find_cells
    from imagesim.labels.osm_import import import_osm

    base = tmp_path_factory.mktemp("original")
    run_chip(small_sample.root, base / "chips", ChipSettings(zoom=17))
    ard = base / "ard"
    cells = find_cells(small_sample.root)
    for cell in cells:
        cell.folder(ard).mkdir(parents=True)
    import_osm(small_sample.osm_pbf, ard, cells)
    return Real(small_sample, base / "chips", ard)


# --------------------------------------------------------------------------------------------
# The derived manifest
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
def test_chip_table_is_derived_from_names_once_and_matches_the_manifest(real, tmp_path, layout):
    orig = real.original(tmp_path / "orig", layout)
    (orig / "README.txt").write_text("chips of the original tool")
    told: list[str] = []
    got = read_chip_table(orig, log=told.append)
    want = read_chip_table(real.chips)
    assert got.select(CHIP_IDENTITY).equals(want.select(CHIP_IDENTITY))
    assert got["path"].to_list() == got.select(rel_path(layout))["path"].to_list()
    assert all((orig / p).is_file() for p in got["path"])
    assert len(told) == 1 and told[0].startswith(
        f"derived chips.parquet from 3,072 chip names in {orig} (no manifest from `imagesim chip`)"
    )
    assert "1 other file(s) skipped, e.g. README.txt" in told[0] and "no-data classes from nodata-index.json" in told[0]

    # Saved, marked derived, readable as a manifest (the whole schema, unknowns null); not derived again.
    saved = pl.read_parquet(orig / "chips.parquet")
    assert saved["derived"].all() and saved["path"].to_list() == got["path"].to_list()
    manifest = read_manifest(orig)
    assert manifest.columns == list(artefacts.MANIFEST_SCHEMA) and manifest.height == 3072
    assert manifest["acquisition_date"].null_count() == manifest["source_cog"].null_count() == 3072
    assert read_chip_table(orig, log=told.append).equals(got) and len(told) == 1
    # A later nodata-index.json (the original tool run again) is what counts, not the copy taken at derivation.
    (orig / "nodata-index.json").write_text(json.dumps({"no_data": got["chip"].to_list()}))
    assert read_chip_table(orig)["nodata_class"].unique().to_list() == ["no_data"]


def test_odd_files_duplicates_and_no_index(real, tmp_path):
    orig = real.original(tmp_path / "orig", nodata_index=False)
    first = real.manifest["chip"][0]
    (orig / "10" / "copies").mkdir()
    os.link(orig / "10" / first, orig / "10" / "copies" / first)  # a stray copy: DEST/<zone>/<chip> wins
    for odd in ("10/thumbs.jpg", "10/Z61-120020223032000_1.jpg", "10/notes.txt", "10/.DS_Store", ".hidden/Z10-x.jpg"):
        (orig / odd).parent.mkdir(parents=True, exist_ok=True)
        (orig / odd).write_bytes(b"not a chip")
    with pytest.warns(DerivedManifestWarning, match="no no-data classes yet") as caught:
        table = read_chip_table(orig)
    message = str(caught[0].message)
    assert "3 other file(s) skipped, e.g. 10/Z61-120020223032000_1.jpg" in message and "1 chip name(s) found twice" in message
    assert table.height == 3072 and table["nodata_class"].null_count() == 3072
    assert table.filter(pl.col("chip") == first)["path"].item() == f"10/{first}"
    found = derive_manifest(orig, save=False)
    assert found.skipped == ["10/Z61-120020223032000_1.jpg", "10/notes.txt", "10/thumbs.jpg"] and found.duplicates == 1


def test_folders_without_chips_are_refused_clearly(tmp_path):
    with pytest.raises(ImagesimFileNotFoundError, match="chips.parquet: no chip manifest and no chip JPEGs"):
        read_chip_table(tmp_path)
    (tmp_path / "photo.jpg").write_bytes(b"x")
    with pytest.raises(ImagesimFileNotFoundError, match=r"1 other file\(s\), e.g. photo.jpg; run `imagesim chip"):
        read_chip_table(tmp_path)
    with pytest.raises(ImagesimFileNotFoundError, match="chips folder not found"):
        read_chip_table(tmp_path / "nowhere")


def test_a_folder_that_cannot_be_written_keeps_the_derived_manifest_in_memory(real, tmp_path, monkeypatch):
    orig = real.original(tmp_path / "orig")

    def refuse(path, writer):
        raise PermissionError(f"{path}: read-only file system")

    monkeypatch.setattr(artefacts, "write_with", refuse)
    told: list[str] = []
    table = read_chip_table(orig, log=told.append)
    assert table.height == 3072 and not (orig / "chips.parquet").exists()
    assert "not saved (cannot write" in told[0] and "derived again on each run" in told[0]


def test_imagesim_chip_into_a_derived_folder_replaces_the_derived_rows(real, tmp_path):
    from imagesim.imagery.chip import ChipSettings, run_chip

    orig = real.original(tmp_path / "orig")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DerivedManifestWarning)
        read_chip_table(orig)
    summary = run_chip(real.sample.root, orig, ChipSettings(zoom=17))
    assert summary.measured == 3072 and summary.written == 0 and not summary.failed_cogs  # on disk: measured, not rewritten
    manifest = pl.read_parquet(orig / "chips.parquet")
    assert "derived" not in manifest.columns and manifest["source_cog"].null_count() == 0
    assert manifest.sort("chip").select(CHIP_IDENTITY).equals(real.manifest.sort("chip").select(CHIP_IDENTITY))


# --------------------------------------------------------------------------------------------
# The stages on original folders
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_labels(real, tmp_path_factory):
    from imagesim.labels.build import LabelSettings, build_labels

    out = tmp_path_factory.mktemp("real-labels")
    # an original folder has no cloud fractions (its derived manifest names chips only): compare like with like
    build_labels(real.chips, real.ard, LabelSettings(include=("partial",), out_dir=out, max_cloud=None))
    return read_labels(out).table


@pytest.mark.parametrize("layout", LAYOUTS)
def test_labels_build_on_an_original_folder(real, real_labels, tmp_path, layout):
    from typer.testing import CliRunner

    from imagesim.cli.labels import labels_app

    orig = real.original(tmp_path / "orig", layout)
    res = CliRunner().invoke(labels_app, ["build", "--ard-path", str(real.ard), "--chips", str(orig), "--include", "partial"])
    assert res.exit_code == 0, res.output
    assert res.output.count("derived chips.parquet from 3,072 chip names") == 1
    table = read_labels(orig).table
    cols = ["chip", "zone", "quadkey", "cell", "catalog_id", "nodata_class", "label_ids", "bitset"]
    # the same labels; rows in manifest order, and a derived manifest knows no dates to order acquisitions by
    assert table.select(cols).sort("chip").equals(real_labels.select(cols).sort("chip")) and table.height == 74
    assert table["path"].to_list() == table.select(rel_path(layout))["path"].to_list()
    assert all((orig / p).is_file() for p in table["path"])
    assert pl.read_csv(orig / "labels.csv")["Feature"].to_list() == table["path"].to_list()


@pytest.fixture(scope="module")
def encoded(real, tmp_path_factory):
    """The stand-in model, and the embeddings and index of the real chips folder."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    pytest.importorskip("faiss")
    from imagesim.learn.encode import EncodeSettings, run_encode
    from imagesim.search.index import build_index

    base = tmp_path_factory.mktemp("real-encode")
    onnx = tiny_onnx(base / "model.onnx", SIZE)
    run_encode(onnx, real.chips, EncodeSettings(out=base / "embeddings.parquet", provider="cpu"))
    build_index(base / "embeddings.parquet", base / "index")
    return onnx, pl.read_parquet(base / "embeddings.parquet"), base / "index"


@pytest.mark.parametrize("layout", LAYOUTS)
def test_encode_index_similar_and_serve_on_an_original_folder(real, encoded, tmp_path, layout):
    from imagesim.learn.encode import EncodeSettings, run_encode
    from imagesim.search.index import build_index, load_index
    from imagesim.search.similar import similar

    onnx, want, real_index = encoded
    orig = real.original(tmp_path / "orig", layout)
    told: list[str] = []
    summary = run_encode(onnx, orig, EncodeSettings(provider="cpu"), log=told.append)
    assert summary.encoded == 74 and summary.excluded == 2998 and not summary.failed
    assert sum("derived chips.parquet from 3,072 chip names" in line for line in told) == 1
    got = pl.read_parquet(orig / "embeddings.parquet")
    # the same embeddings; an original folder knows no cloud fractions (its derived manifest names chips only)
    assert got.drop("path", "cloud_fraction").equals(want.drop("path", "cloud_fraction"))
    assert got["cloud_fraction"].null_count() == got.height
    assert got["path"].to_list() == got.select(rel_path(layout))["path"].to_list()

    build_index(orig / "embeddings.parquet", tmp_path / "index")
    index, theirs = load_index(tmp_path / "index"), load_index(real_index)
    query = got["chip"][0]
    hits = similar(index, [query], k=5).hits
    assert [(h.chip, round(h.score, 5)) for h in hits] == [(h.chip, round(h.score, 5)) for h in similar(theirs, [query], k=5).hits]
    assert all((orig / h.path).is_file() for h in hits)

    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from imagesim.search.serve.app import create_app

    client = TestClient(create_app(real.sample.root, orig, tmp_path / "index"), base_url="http://127.0.0.1")
    body = client.get("/api/similar", params={"chip": query, "k": 3}).json()
    assert [r["chip"] for r in body["results"]] == [h.chip for h in hits[:3]]
    for chip in [query, *(r["chip"] for r in body["results"])]:
        thumb = client.get(f"/api/chip/{chip}/thumbnail.jpg")
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    left_out = real.manifest.filter(pl.col("nodata_class") == "no_data")["chip"][0]  # not in the index: found by its name
    assert client.get(f"/api/chip/{left_out}/thumbnail.jpg").status_code == 200
    assert np.isfinite(body["results"][0]["score"])


def test_an_original_folder_in_a_bucket_gets_its_manifest_there(real, monkeypatch):
    moto_server = pytest.importorskip("moto.server", reason="needs moto[server]")
    boto3 = pytest.importorskip("boto3")
    from imagesim.storage import StorePath, read_parquet

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}
        for key, value in {**env, "AWS_ENDPOINT": f"http://{host}:{port}", "AWS_ALLOW_HTTP": "true"}.items():
            monkeypatch.setenv(key, value)
        bucket = f"original-{os.getpid()}"
        client = boto3.client(
            "s3",
            endpoint_url=f"http://{host}:{port}",
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        client.create_bucket(Bucket=bucket)
        rows = real.manifest.sort("chip").head(40)  # data and no-data chips alike
        for zone, chip in rows.select("zone", "chip").iter_rows():
            client.upload_file(str(real.chips / str(zone) / chip), bucket, f"orig/{zone}/{chip}")
        client.put_object(Bucket=bucket, Key="orig/nodata-index.json", Body=json.dumps({"all_data": rows["chip"].to_list()[:5]}))
        client.put_object(Bucket=bucket, Key="orig/10/notes.txt", Body=b"x")
        folder = StorePath(f"s3://{bucket}/orig")

        told: list[str] = []
        table = read_chip_table(folder, log=told.append)
        assert table["chip"].to_list() == rows["chip"].to_list() and table["path"].to_list() == [f"10/{c}" for c in rows["chip"]]
        assert table["nodata_class"].to_list() == ["all_data"] * 5 + [None] * 35
        assert (
            len(told) == 1 and f"derived chips.parquet from 40 chip names in {folder}" in told[0] and "1 other file(s) skipped" in told[0]
        )
        assert read_parquet(folder / "chips.parquet")["derived"].all()
        assert read_chip_table(folder, log=told.append).equals(table) and len(told) == 1
    finally:
        server.stop()


def test_nodata_index_measures_pixels_when_the_manifest_is_derived(real, tmp_path):
    """A derived chips.parquet holds no counts: nodata-index's default source is then the pixels, not it."""
    from imagesim.artefacts import manifest_is_derived
    from imagesim.imagery.nodata import NodataSettings, run_nodata_index

    orig = real.original(tmp_path / "orig", nodata_index=False)
    read_chip_table(orig, log=lambda _m: None)
    assert manifest_is_derived(orig) and not manifest_is_derived(real.chips)
    summary = run_nodata_index(orig, NodataSettings(filename="measured.json"))
    assert summary.source == "pixels" and sum(summary.counts.values()) == 3072
