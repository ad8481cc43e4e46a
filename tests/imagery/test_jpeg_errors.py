"""One vocabulary for bad JPEGs and COG tiles: the same bad file gets the same words from
`nodata-index`, `encode`'s decoder and `chip` (the Rust core's ``jpeg::Problem``), with the file (and
for COG tiles the COG and the tile) in every message; a problem of a whole COG is one failed COG."""

from __future__ import annotations

import io
import json
import shutil
import struct
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image

from imagesim import _imagesim
from imagesim.errors import CorruptTiffError
from imagesim.imagery.chip import ChipSettings, run_chip
from imagesim.imagery.nodata import NodataSettings, run_nodata_index

# The categories, as every command writes them.
EMPTY = "empty file (0 bytes)"
TRUNCATED = "truncated JPEG: "
NOT_JPEG = "not a JPEG: "
COLOUR = "unsupported colour space: "
CORRUPT = "corrupt JPEG data: "
GREY = "greyscale JPEG (1 component)"
SIZE = "wrong chip size: "
CATEGORIES = (EMPTY, TRUNCATED, NOT_JPEG, COLOUR, CORRUPT, GREY, SIZE)

ZONE = 10


def chip_name(i: int) -> str:
    """A z17 chip name (512 px) of cell 120020223032."""
    digits = "".join(str((i >> (2 * k)) & 3) for k in reversed(range(5)))
    return f"Z{ZONE}-120020223032{digits}_104001008A3C21F0.jpg"


def jpeg_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def category(message: str) -> str:
    found = [c for c in CATEGORIES if c in message]
    assert len(found) == 1, message
    return found[0]


@pytest.fixture(scope="module")
def bad_chips(tmp_path_factory) -> tuple[Path, dict[str, str], Path]:
    """A chips folder (``DEST/<zone>/``) of z17 chip names holding one good chip and every kind of bad
    one; returns the folder, {kind: chip name} and the directory named like a chip."""
    dest = tmp_path_factory.mktemp("bad-chips")
    folder = dest / str(ZONE)
    folder.mkdir()
    rng = np.random.default_rng(3)
    good = jpeg_bytes(Image.fromarray(rng.integers(0, 255, (512, 512, 3), dtype=np.uint8)))
    small = np.full((256, 256, 3), 120, np.uint8)
    small[:, :100] = 0  # no-data on the left: counted on the chip's own 256 x 256 pixels
    # A complete stream whose scan header names a component the frame does not have.
    sos = good.index(b"\xff\xda")
    corrupt = bytearray(good)
    corrupt[sos + 5] = 9
    files = {
        "good": good,
        "empty": b"",
        "ten": good[:10],
        "half": good[: len(good) // 2],
        "random": rng.bytes(5000),
        "corrupt": bytes(corrupt),
        "cmyk": jpeg_bytes(Image.new("CMYK", (512, 512), (10, 20, 30, 40))),
        "grey": jpeg_bytes(Image.new("L", (512, 512), 50)),
        "small": jpeg_bytes(Image.fromarray(small)),
        "odd": jpeg_bytes(Image.new("RGB", (500, 512), (50, 60, 70))),
    }
    names = {}
    for i, (kind, data) in enumerate(files.items()):
        names[kind] = chip_name(i)
        (folder / names[kind]).write_bytes(data)
    directory = folder / chip_name(len(files))
    directory.mkdir()
    (directory / "inside.jpg").write_bytes(good)  # not searched: the directory is skipped
    return dest, names, directory


EXPECTED = {
    "empty": EMPTY,
    "ten": TRUNCATED,
    "half": TRUNCATED,
    "random": NOT_JPEG,
    "corrupt": CORRUPT,
    "cmyk": COLOUR,
}


def test_nodata_index_names_each_problem(bad_chips, tmp_path) -> None:
    dest, names, directory = bad_chips
    summary = run_nodata_index(dest, NodataSettings(source="pixels", filename=str(tmp_path / "index.json")))
    failed = {Path(f).name: msg for f, msg in summary.failed}
    assert set(failed) == {names[k] for k in EXPECTED}
    for kind, want in EXPECTED.items():
        msg = failed[names[kind]]
        assert category(msg) == want, msg
        assert msg.startswith(str(dest / str(ZONE) / names[kind]) + ": "), msg
    assert failed[names["ten"]] == f"{dest / str(ZONE) / names['ten']}: truncated JPEG: ends after 10 bytes, inside its APP0 segment"
    assert "no end-of-image marker" in failed[names["half"]]
    assert "CMYK" in failed[names["cmyk"]] and "4 components" in failed[names["cmyk"]]
    assert "TurboJPEG" not in " ".join(failed.values()) and "tj3" not in " ".join(failed.values())

    # Measured, with a note: greyscale, and chips that are not their zoom's size.
    notes = {Path(f).name: n for f, n in summary.notes}
    assert notes == {
        names["grey"]: GREY,
        names["small"]: "wrong chip size: expected 512×512 for a z17 chip, got 256×256",
        names["odd"]: "wrong chip size: expected 512×512 for a z17 chip, got 500×512",
    }
    table = pl.read_parquet(summary.parquet)
    row = table.filter(pl.col("chip") == names["small"]).row(0, named=True)
    assert row["total_pixels"] == 256 * 256 and row["error"] is None and row["note"] == notes[names["small"]]
    pillow = np.asarray(Image.open(dest / str(ZONE) / names["small"]).convert("RGB"))
    assert row["nodata_pixels"] == int((pillow <= 0).all(axis=2).sum()) > 0
    grey = table.filter(pl.col("chip") == names["grey"]).row(0, named=True)
    assert (grey["nodata_pixels"], grey["total_pixels"]) == (0, 512 * 512)
    assert table.filter(pl.col("chip") == names["good"])["note"].to_list() == [None]

    # The directory named like a chip is skipped with a word, not failed, not searched.
    assert summary.skipped_dirs == [str(directory)]
    assert "1 directories named like a JPEG skipped" in summary.line()
    assert "inside.jpg" not in " ".join(str(p) for p in [*failed, *table["path"]])
    report = json.loads(summary.summary.read_text())
    assert report["skipped_directories"][0]["path"] == str(directory)
    assert {n["note"] for n in report["notes"]} == set(notes.values())


def test_encode_decoder_uses_the_same_words(bad_chips, tmp_path) -> None:
    dest, names, directory = bad_chips
    kinds = list(names)
    paths = [str(dest / str(ZONE) / names[k]) for k in kinds] + [str(directory)]
    out = np.full((len(paths), 32, 32, 3), 7, np.uint8)
    errors = dict(zip([*kinds, "directory"], _imagesim.decode_batch(paths, out)))
    scan = run_nodata_index(dest, NodataSettings(source="pixels", filename=str(tmp_path / "index.json")))
    by_nodata = {Path(f).name: msg for f, msg in scan.failed} | {Path(f).name: n for f, n in scan.notes}

    assert errors.pop("good") is None
    assert errors.pop("directory") == f"{directory}: not a JPEG: a directory, not a file"
    for kind, msg in errors.items():
        assert msg is not None and msg.startswith(paths[kinds.index(kind)] + ": "), (kind, msg)
        # The same category for the same file as nodata-index (a note there, a refusal here).
        assert category(msg) == category(by_nodata[names[kind]]), (kind, msg, by_nodata[names[kind]])
    assert errors["grey"].endswith("greyscale JPEG (1 component): the model takes RGB chips")
    assert errors["small"].endswith("wrong chip size: expected 512×512 for a z17 chip, got 256×256")
    # Refused chips are not fed to the model: their slots are zeroed.
    for kind in ("grey", "small", "odd", "cmyk"):
        assert not out[kinds.index(kind)].any()
    assert out[kinds.index("good")].any()


def tiny_onnx(path: Path, size: int, classes: list[str]) -> Path:
    """An ONNX model with imagesim's inputs, outputs and metadata: embedding = mean RGB per image."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    weights = helper.make_tensor("w", TensorProto.FLOAT, [3, len(classes)], [0.01] * (3 * len(classes)))
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["image"], ["f"], to=TensorProto.FLOAT),
            helper.make_node("ReduceMean", ["f"], ["embedding"], axes=[1, 2], keepdims=0),
            helper.make_node("MatMul", ["embedding", "w"], ["logits"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["n", size, size, 3])],
        [
            helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["n", 3]),
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", len(classes)]),
        ],
        initializer=[weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    for key, value in {"classes": json.dumps(classes), "chip_size": str(size), "embedding_dim": "3"}.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = f"imagesim.{key}", value
    onnx.save(model, path)
    return path


def test_run_encode_reports_bad_chips_and_skips_a_directory(bad_chips, tmp_path) -> None:
    from imagesim.learn.encode import EncodeSettings, run_encode

    src, names, directory = bad_chips
    dest = tmp_path / "chips"
    shutil.copytree(src, dest)
    rows = [*names.values(), directory.name]
    pl.DataFrame(
        {
            "chip": rows,
            "zone": [ZONE] * len(rows),
            "quadkey": [_imagesim.parse_chip_name(r)[1] for r in rows],
            "zoom": [17] * len(rows),
            "cell": ["120020223032"] * len(rows),
            "catalog_id": ["104001008A3C21F0"] * len(rows),
            "nodata_class": ["all_data"] * len(rows),
        },
        schema_overrides={"zone": pl.UInt8, "zoom": pl.UInt8},
    ).write_parquet(dest / "chips.parquet")
    model = tiny_onnx(tmp_path / "tiny.onnx", 32, ["a", "b"])
    summary = run_encode(model, dest, EncodeSettings(provider="cpu", batch_size=4, proc=1))
    assert summary.encoded == 1
    failed = dict(summary.failed)
    assert set(failed) == set(names.values()) - {names["good"]}
    for kind, want in {**EXPECTED, "grey": GREY, "small": SIZE, "odd": SIZE}.items():
        assert category(failed[names[kind]]) == want and names[kind] in failed[names[kind]]
    assert [c for c, _ in summary.not_files] == [directory.name]
    assert "1 skipped (a directory, not a chip file)" in summary.line()
    report = json.loads((dest / "embeddings.json").read_text())
    assert report["skipped_directories"][0]["chip"] == directory.name


# --------------------------------------------------------------------------------------------
# COG tiles: the chip path
# --------------------------------------------------------------------------------------------


def ifd0(data: bytes | bytearray) -> tuple[dict[int, tuple[int, int, int, int]], bool]:
    """{tag: (entry offset, type, count, value-field offset)} of the first IFD (little-endian TIFF/BigTIFF)."""
    assert data[:2] == b"II"
    big = struct.unpack_from("<H", data, 2)[0] == 43
    off = struct.unpack_from("<Q" if big else "<I", data, 8 if big else 4)[0]
    n = struct.unpack_from("<Q" if big else "<H", data, off)[0]
    base, size = off + (8 if big else 2), (20 if big else 12)
    entries = {}
    for i in range(n):
        e = base + i * size
        tag, typ = struct.unpack_from("<HH", data, e)
        count = struct.unpack_from("<Q" if big else "<I", data, e + 4)[0]
        entries[tag] = (e, typ, count, e + (12 if big else 8))
    return entries, big


def zero_tables(data: bytearray) -> None:
    entries, big = ifd0(data)
    _, _, count, field = entries[347]
    start = struct.unpack_from("<Q" if big else "<I", data, field)[0]
    data[start : start + count] = bytes(count)


def bogus_compression(data: bytearray) -> None:
    struct.pack_into("<H", data, ifd0(data)[0][259][3], 9999)


def drop_tables(data: bytearray) -> None:
    struct.pack_into("<H", data, ifd0(data)[0][347][0], 349)  # JPEGTables becomes an unknown tag


def halve_first_tile(data: bytearray) -> int:
    """Halve the byte count of level 0's first stored tile; returns its index."""
    entries, big = ifd0(data)
    _, typ, count, field = entries[325]
    fmt = {3: "<H", 4: "<I", 16: "<Q"}[typ]
    start = struct.unpack_from("<Q" if big else "<I", data, field)[0]
    step = struct.calcsize(fmt)
    for i in range(count):
        n = struct.unpack_from(fmt, data, start + i * step)[0]
        if n > 100:
            struct.pack_into(fmt, data, start + i * step, n // 2)
            return i
    raise AssertionError("no stored tile")


def patched_delivery(small_sample, tmp_path: Path, patch) -> tuple[Path, Path, object]:
    """One COG of the sample delivery, copied into its own ARD tree and patched in place."""
    cog = sorted(small_sample.root.rglob("*-visual.tif"))[0]
    copy = tmp_path / "ard" / cog.relative_to(small_sample.root)
    copy.parent.mkdir(parents=True)
    data = bytearray(cog.read_bytes())
    result = patch(data)
    copy.write_bytes(bytes(data))
    return tmp_path / "ard", copy, result


@pytest.mark.parametrize(
    ("patch", "words", "error"),
    [
        (zero_tables, "JPEGTables (tag 347) holds", "CorruptTiffError"),
        (bogus_compression, "compression 9999 is not supported", "UnsupportedTiffError"),
        (drop_tables, "JPEG tiles need tables the file does not have", "CorruptTiffError"),
    ],
    ids=["zeroed-tables", "bogus-compression", "missing-tables"],
)
def test_whole_cog_problem_is_one_failed_cog(small_sample, tmp_path, patch, words, error) -> None:
    root, cog, _ = patched_delivery(small_sample, tmp_path, patch)
    dest = tmp_path / "chips"
    summary = run_chip(root, dest, ChipSettings(zoom=17))
    assert [c for c, _ in summary.failed_cogs] == [str(cog)]
    msg = summary.failed_cogs[0][1]
    assert msg.startswith(f"{cog}: ") and words in msg and "<tile>" not in msg, msg
    assert summary.failed_chips == 0 and summary.written == 0
    report = json.loads((dest / "chip-errors.json").read_text())
    assert report["chips"] == [] and len(report["cogs"]) == 1
    # Reading the COG directly says the same, as the matching exception class.
    entries = _imagesim.Cog(cog)
    with pytest.raises(Exception) as raised:
        for row in range(0, 17408, 512 * 4):
            for col in range(0, 17408, 512 * 4):
                entries.read((col, row, 512, 512))
    assert type(raised.value).__name__ == error and words in str(raised.value)


def test_corrupt_tile_names_the_cog_and_the_tile(small_sample, tmp_path) -> None:
    root, cog, index = patched_delivery(small_sample, tmp_path, halve_first_tile)
    across = 17408 // 512
    where = f"level 0 tile {index} (col {index % across}, row {index // across})"
    with pytest.raises(CorruptTiffError) as raised:
        _imagesim.Cog(cog).read(((index % across) * 512, (index // across) * 512, 512, 512))
    assert str(raised.value).startswith(f"{cog}: corrupt TIFF: {where}: {TRUNCATED}"), raised.value
    summary = run_chip(root, tmp_path / "chips", ChipSettings(zoom=17))
    assert not summary.failed_cogs and summary.failed_chips == 1
    chip_error = json.loads((tmp_path / "chips" / "chip-errors.json").read_text())["chips"][0]["error"]
    assert chip_error == str(raised.value)


def test_realdata_tile_errors_name_the_file_and_the_tile(realdata) -> None:
    # The corrupt twin of rasterio's cogeo.tif (a tile cut off by the end of the file): the failure
    # names the file and the tile, never a placeholder.
    path = realdata / "tiff-corrupt" / "rasterio__corrupt.tif"
    cog = _imagesim.Cog(path)
    messages = []
    for level in range(len(cog.levels)):
        try:
            cog.read(level=level)
        except CorruptTiffError as exc:
            messages.append(str(exc))
    assert messages
    for msg in messages:
        assert msg.startswith(f"{path}: corrupt TIFF: level 0 tile 3 (col 1, row 1): "), msg
        assert "runs past the end of the file" in msg and "<tile>" not in msg, msg
