"""The streamed writes behind `imagesim encode` (and labels build, change): GeoParquet written row group by
row group equals the table written whole, and the sorted merge of part files into the final file (a later
file wins a chip; unsorted, overlapping and older files) equals concatenating, de-duplicating and sorting."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

from imagesim import geoparquet
from imagesim.fsutil import atomic_path
from imagesim.geoparquet import GeoParquetStream, geo_metadata, write_geoparquet
from imagesim.learn import encode

CELLS = ("120020223032", "120020223033")


def chip_frame(n: int, seed: int, *, dim: int = 4, cells: tuple[str, ...] = CELLS) -> pl.DataFrame:
    """``n`` distinct z17 chips of zone 10 (random quadkeys and catalog ids) with embeddings and a model id."""
    rng = np.random.default_rng(seed)
    names: dict[str, tuple[str, str]] = {}
    while len(names) < n:
        qk = str(rng.choice(cells)) + "".join(rng.choice(list("0123"), 5))
        cat = f"1040010{int(rng.integers(0, 4)):09X}"
        names[f"Z10-{qk}_{cat}.jpg"] = (qk, cat)
    chips = list(names)
    return pl.DataFrame(
        {
            "chip": chips,
            "zone": pl.Series([10] * n, dtype=pl.UInt8),
            "quadkey": [names[c][0] for c in chips],
            "catalog_id": [names[c][1] for c in chips],
            "model_id": ["m"] * n,
            "embedding": pl.Series(rng.normal(size=(n, dim)).astype(np.float32), dtype=pl.Array(pl.Float32, dim)),
            "predicted": pl.Series([["a"] if i % 3 else [] for i in range(n)], dtype=pl.List(pl.String)),
        }
    )


def test_stream_equals_the_table_written_whole(tmp_path) -> None:
    table = chip_frame(23, 0).sort("chip")
    write_geoparquet(table, tmp_path / "whole.parquet")
    with atomic_path(tmp_path / "stream.parquet") as tmp, GeoParquetStream(tmp, row_group=4) as writer:
        for s in range(0, table.height, 5):
            writer.write(table.slice(s, 5))
    assert writer.rows == table.height
    assert pq.ParquetFile(tmp_path / "stream.parquet").num_row_groups > 1
    assert pl.read_parquet(tmp_path / "stream.parquet").equals(pl.read_parquet(tmp_path / "whole.parquet"))
    got = json.loads(pq.read_metadata(tmp_path / "stream.parquet").metadata[b"geo"])
    want = json.loads(geo_metadata(pl.read_parquet(tmp_path / "whole.parquet"))["geo"])
    assert got == want and got["columns"]["geometry"]["bbox"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stream.parquet", "whole.parquet"]  # nothing temporary left


def test_stream_of_no_row_keeps_the_schema_and_a_failed_one_leaves_nothing(tmp_path) -> None:
    empty = chip_frame(3, 1).head(0)
    with atomic_path(tmp_path / "empty.parquet") as tmp, GeoParquetStream(tmp) as writer:
        writer.write(empty)
    back = pl.read_parquet(tmp_path / "empty.parquet")
    assert back.height == 0 and back.columns == [*empty.columns, "geometry", "bbox"]
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "failed.parquet") as tmp, GeoParquetStream(tmp, row_group=2) as writer:
        writer.write(chip_frame(5, 2))
        raise RuntimeError("stopped")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.parquet"]


def test_merge_of_sorted_unsorted_and_older_parts_equals_concat_unique_sort(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(encode, "MERGE_BATCH", 3)  # many slices per run
    monkeypatch.setattr(geoparquet, "STREAM_ROW_GROUP", 4)
    pool = chip_frame(60, 3)
    out = pool.slice(0, 30).sort("chip")  # a previous final file, GeoParquet
    write_geoparquet(out, tmp_path / "out.parquet")
    sources = [tmp_path / "out.parquet"]
    # parts: overlapping the final file (newer vectors win), disjoint, unsorted, and one of an older
    # version without the `predicted` column
    newer = pool.slice(20, 20).with_columns(pl.lit("new").alias("note"))
    frames = [
        newer.sort("chip"),
        pool.slice(40, 10).sort("chip"),
        pool.slice(50, 6).reverse(),
        pool.slice(56, 4).drop("predicted").sort("chip"),
    ]
    for i, frame in enumerate(frames):
        frame.write_parquet(tmp_path / f"part-{i:05d}.parquet")
        sources.append(tmp_path / f"part-{i:05d}.parquet")
    with atomic_path(tmp_path / "merged.parquet") as tmp, GeoParquetStream(tmp) as writer:
        encode.merge_sorted(sources, writer)
    got = pl.read_parquet(tmp_path / "merged.parquet").drop("geometry", "bbox")
    want = pl.concat([out, *frames], how="diagonal_relaxed").unique(subset=["chip"], keep="last").sort("chip")
    assert got.columns == want.columns  # the final file's columns first, newer ones after
    assert got.equals(want)
    assert got.filter(pl.col("chip").is_in(newer["chip"].implode()))["note"].to_list() == ["new"] * newer.height
    assert got.filter(pl.col("chip").is_in(frames[3]["chip"].implode()))["predicted"].null_count() == 4
