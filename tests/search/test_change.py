"""`imagesim change`, its parts: pairing acquisitions, the embedding and pixel methods, ranking, evaluation."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from PIL import Image

from imagesim import geoparquet
from imagesim.errors import ChangeError, InvalidArgumentError
from imagesim.search.change.evaluate import evaluate_ranking
from imagesim.search.change.pairs import chip_pairs, parse_choice
from imagesim.search.change.pixels import PixelSettings, box_mean, compare_pixels, spectral_angle, window_filter
from imagesim.search.change.run import embedding_distances, rank_pairs

CELL = "120020223032"


def chips_table(rows: list[tuple[str, str, str | None, int, int]]) -> pl.DataFrame:
    """(quadkey suffix, catalog id, date, zone, zoom) → the chip table `chip_pairs` takes."""
    out = []
    for suffix, catid, date, zone, zoom in rows:
        qk = CELL + suffix
        out.append(
            {
                "chip": f"Z{zone}-{qk}_{catid}.jpg",
                "zone": zone,
                "quadkey": qk,
                "zoom": zoom,
                "cell": CELL,
                "catalog_id": catid,
                "date": date,
                "path": f"{zone}/Z{zone}-{qk}_{catid}.jpg",
                "source_cog": None,
                "valid": 1.0,
                "cloud": 0.0,
            }
        )
    schema = {"chip": pl.String, "zone": pl.UInt8, "quadkey": pl.String, "zoom": pl.UInt8, "cell": pl.String, "catalog_id": pl.String}
    schema |= {"date": pl.String, "path": pl.String, "source_cog": pl.String, "valid": pl.Float64, "cloud": pl.Float64}
    return pl.DataFrame(out, schema=schema)


THREE = [
    ("00000", "AAAA1111", "2021-05-01", 10, 17),
    ("00000", "BBBB2222", "2022-05-01", 10, 17),
    ("00000", "CCCC3333", "2023-05-01", 10, 17),
    ("00001", "AAAA1111", "2021-05-01", 10, 17),
    ("00001", "CCCC3333", "2023-05-01", 10, 17),
    ("00002", "BBBB2222", "2022-05-01", 10, 17),  # one acquisition only: never paired
]


def pairs_of(frame: pl.DataFrame) -> set[tuple[str, str, str]]:
    return {(q[-5:], b, a) for q, b, a in frame.select("quadkey", "before_catalog_id", "after_catalog_id").iter_rows()}


def test_consecutive_pairs_in_date_order() -> None:
    pairs = chip_pairs(chips_table(THREE[::-1]), "x")
    assert pairs_of(pairs) == {("00000", "AAAA1111", "BBBB2222"), ("00000", "BBBB2222", "CCCC3333"), ("00001", "AAAA1111", "CCCC3333")}
    row = pairs.filter(pl.col("quadkey").str.ends_with("00001")).row(0, named=True)
    assert (row["before_date"], row["after_date"]) == ("2021-05-01", "2023-05-01")
    assert row["before_path"].endswith("_AAAA1111.jpg") and row["after_chip"].endswith("_CCCC3333.jpg")


def test_chosen_acquisitions() -> None:
    chips = chips_table(THREE)
    both = chip_pairs(chips, "x", parse_choice("AAAA1111", "--before"), parse_choice("2023-05-01", "--after"))
    assert pairs_of(both) == {("00000", "AAAA1111", "CCCC3333"), ("00001", "AAAA1111", "CCCC3333")}
    only_before = chip_pairs(chips, "x", parse_choice("bbbb2222", "--before"), None)
    assert pairs_of(only_before) == {("00000", "BBBB2222", "CCCC3333")}
    only_after = chip_pairs(chips, "x", None, parse_choice("2023-05-01T10:00:00Z", "--after"))
    assert pairs_of(only_after) == {("00000", "BBBB2222", "CCCC3333"), ("00001", "AAAA1111", "CCCC3333")}


@pytest.mark.parametrize(
    ("rows", "before", "after", "message"),
    [
        ([THREE[0], THREE[3]], None, None, "one acquisition only"),
        ([THREE[0], ("00000", "DDDD4444", "2022-01-01", 11, 17)], None, None, "different grids"),
        ([THREE[0], ("01000", "DDDD4444", "2022-01-01", 10, 17)], None, None, "do not overlap"),
        (THREE, "EEEE5555", None, "no chip of x is of that acquisition"),
        (THREE, "CCCC3333", "AAAA1111", "swap them"),
        (THREE, "AAAA1111", "2021-05-01", "same acquisition"),
        ([THREE[0], ("00000", "DDDD4444", None, 10, 17)], None, None, "no acquisition date"),
        ([], None, None, "no chip with data"),
    ],
)
def test_pairing_refusals_say_why(rows, before, after, message) -> None:
    with pytest.raises(ChangeError, match=message):
        chip_pairs(chips_table(rows), "x", parse_choice(before, "--before"), parse_choice(after, "--after"))


@pytest.mark.parametrize("value", ["", "2023/05/01", "not an id!"])
def test_bad_choice(value: str) -> None:
    with pytest.raises(ChangeError, match="--before"):
        parse_choice(value, "--before")


def test_embedding_distances_per_pair_and_missing() -> None:
    names = pl.DataFrame({"chip": ["a", "b", "c"]}).with_row_index("row")
    vectors = np.array([[1.0, 0.0], [0.0, 1.0], [np.sqrt(0.5), np.sqrt(0.5)]], np.float32)
    pairs = pl.DataFrame({"before_chip": ["a", "a", "c", "x"], "after_chip": ["b", "c", "c", "a"]})
    d = embedding_distances(pairs, names, vectors).to_list()
    assert d[0] == pytest.approx(1.0) and d[1] == pytest.approx(1 - np.sqrt(0.5)) and d[2] == pytest.approx(0.0, abs=1e-6)
    assert d[3] is None


def test_rank_pairs_both_lets_pixels_lead_and_embeddings_move() -> None:
    scored = pl.DataFrame(
        {
            "quadkey": ["a", "b", "c", "d", "e"],
            "embedding_distance": [0.9, 0.8, 0.1, 0.2, 0.15],  # b: the embedding alone finds it unusual
            "pixel_change": [9.0, 1.0, 8.0, 2.0, 1.5],  # c: the pixels alone
        }
    )
    ranked = rank_pairs(scored, "both")
    assert ranked["quadkey"].to_list() == ["a", "c", "b", "d", "e"] and ranked["rank"].to_list() == [1, 2, 3, 4, 5]
    assert ranked["score"].to_list() == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2])
    assert rank_pairs(scored, "both", embedding_weight=2.0)["quadkey"].to_list()[:3] == ["a", "b", "c"]
    assert rank_pairs(scored, "embedding")["quadkey"].to_list() == ["a", "b", "d", "e", "c"]
    assert rank_pairs(scored, "pixel")["quadkey"].to_list() == ["a", "c", "d", "e", "b"]


def test_window_filters_and_box_mean_match_brute_force() -> None:
    rng = np.random.default_rng(1)
    a = rng.normal(size=(9, 11)).astype(np.float32)
    w = (rng.random((9, 11)) > 0.3).astype(np.float32)
    lo, hi, mean = window_filter(a, 3, np.min), window_filter(a, 3, np.max), box_mean(a, w, 3)
    for r in range(9):
        for c in range(11):
            win = a[max(r - 1, 0) : r + 2, max(c - 1, 0) : c + 2]
            ww = w[max(r - 1, 0) : r + 2, max(c - 1, 0) : c + 2]
            assert lo[r, c] == win.min() and hi[r, c] == win.max()
            expect = (win * ww).sum() / ww.sum() if ww.sum() else 0.0
            assert mean[r, c] == pytest.approx(expect, abs=1e-5)


def test_spectral_angle_ignores_brightness() -> None:
    colour = np.array([[120.0, 140.0, 90.0]], np.float32)
    assert spectral_angle(colour, colour * 0.45)[0] == pytest.approx(0.0, abs=1e-3)
    assert spectral_angle(colour, np.array([[140.0, 110.0, 80.0]], np.float32))[0] > 0.1


def test_evaluate_ranking_known_values() -> None:
    changed = np.array([True, False, True, False, False])
    s = evaluate_ranking(np.array([5.0, 4.0, 3.0, 2.0, np.nan]), changed, list("abcde"), "x")
    assert s.k == 2 and s.precision_at_k == 0.5 and s.recall_at_k == 0.5
    assert s.average_precision == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert s.false_alarms_in_top_k == ["b"]


# --- the pixel method on hand-made chips ---


def _texture(rng: np.random.Generator, size: int = 512) -> np.ndarray:
    """A green field with a red-roofed row of houses and coarse texture (surface colour, no haze)."""
    base = np.empty((size, size, 3), np.float32)
    base[...] = (110, 140, 70)
    noise = rng.normal(0, 1, (size // 16, size // 16)).repeat(16, 0).repeat(16, 1)
    base *= (1 + 0.08 * noise)[..., None]
    return base


def _acquire(surface: np.ndarray, gain, haze, shadow=None, factor=0.5) -> np.ndarray:
    img = surface * np.asarray(gain, np.float32)
    if shadow is not None:
        img[shadow] *= factor
    return np.clip(img + np.asarray(haze, np.float32), 1, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def hand_made(tmp_path_factory) -> tuple[str, list[str], list[str]]:
    """Four chip pairs: unchanged, unchanged but shadows moved, a cleared patch (new material), half no-data."""
    root = tmp_path_factory.mktemp("pairs")
    rng = np.random.default_rng(7)
    before, after = [], []
    for i in range(4):
        surface = _texture(rng)
        changed = surface.copy()
        shadow_b = shadow_a = None
        if i == 1:  # thin shadow strips that move between the dates (sun angle)
            shadow_b = np.zeros((512, 512), bool)
            shadow_a = shadow_b.copy()
            for r0 in range(40, 480, 60):
                shadow_b[r0 : r0 + 4, 60:460] = True
                shadow_a[r0 + 4 : r0 + 12, 60:460] = True
        if i == 2:  # bare soil where there was grass, 60 × 60 m
            changed[150:350, 150:350] = (150, 110, 80)
        b = _acquire(surface, (1.0, 1.0, 1.0), (6, 8, 12), shadow_b)
        a = _acquire(changed, (0.9, 0.96, 1.08), (14, 16, 22), shadow_a, 0.45)
        if i == 3:
            b[:, 300:] = 0
        Image.fromarray(b).save(root / f"b{i}.jpg", quality=90)
        Image.fromarray(a).save(root / f"a{i}.jpg", quality=85)
        before.append(f"b{i}.jpg")
        after.append(f"a{i}.jpg")
    return str(root), before, after


def test_pixel_method_finds_new_material_not_radiometry_or_shadows(hand_made) -> None:
    root, before, after = hand_made
    quadkeys = [CELL + "00000", CELL + "00001", CELL + "00002", CELL + "00003"]
    res = compare_pixels(root, quadkeys, before, after, settings=PixelSettings())
    assert res.errors == [None] * 4
    assert int(np.nanargmax(res.pixel_change)) == 2
    assert res.changed_area[2] == pytest.approx(0.15, abs=0.06)  # the patch is ~15 % of the chip
    assert res.changed_area[0] < 0.01 and res.changed_area[1] < 0.01
    assert res.pixel_change[2] > 3 * max(res.pixel_change[0], res.pixel_change[1])
    assert res.compared_fraction[3] == pytest.approx(300 / 512, abs=0.02)  # no-data not compared
    assert res.compared_fraction[0] == 1.0


def test_pixel_method_masks_given_geometry_and_reports_unreadable(hand_made, tmp_path) -> None:
    from shapely.geometry import box

    from imagesim import grid

    root, before, after = hand_made
    qk = CELL + "00002"
    w, s, e, n = grid.bounds(qk)
    cloud = box(w, s, e, (s + n) / 2)  # the southern half under cloud in the after acquisition
    res = compare_pixels(root, [qk, qk], [before[2], "missing.jpg"], [after[2], after[2]], None, cloud, PixelSettings(mask_buffer_m=0))
    assert res.compared_fraction[0] == pytest.approx(0.5, abs=0.01)
    assert res.errors[0] is None and res.errors[1] and "missing.jpg" in res.errors[1]
    assert np.isnan(res.pixel_change[1])


# --- end to end on the small sample (its later acquisition of cell A carries planted changes) ---


@pytest.fixture(scope="module")
def sample_chips(small_sample, tmp_path_factory):
    from imagesim.imagery.chip import ChipSettings, run_chip

    dest = tmp_path_factory.mktemp("change-chips")
    assert run_chip(small_sample.root, dest, ChipSettings(zoom=17, proc=2)).written
    return dest


def fake_embeddings(chips, path, model_id: str, *, only: str | None = None, dim: int = 8) -> None:
    """Random unit embeddings for the sample's chips with data (one model id), as `imagesim encode` lays them out."""
    manifest = pl.read_parquet(chips / "chips.parquet").filter(pl.col("nodata_class") != "no_data")
    if only is not None:
        manifest = manifest.filter(pl.col("catalog_id") == only)
    rng = np.random.default_rng(len(model_id))
    vec = rng.normal(size=(manifest.height, dim)).astype(np.float32)
    pl.DataFrame(
        {"chip": manifest["chip"], "embedding": pl.Series(vec, dtype=pl.Array(pl.Float32, dim)), "model_id": [model_id] * manifest.height}
    ).write_parquet(path)


def test_pixel_method_ranks_the_planted_changes_first(small_sample, sample_chips, tmp_path) -> None:
    from imagesim.search.change import ChangeSettings, detect_changes
    from imagesim.search.change.evaluate import evaluate_changes, read_truth

    # the small sample's overlap is a thin strip: chips seen at 30 % count here
    summary = detect_changes(sample_chips, settings=ChangeSettings(method="pixel", min_compared=0.3), out=tmp_path / "c.parquet")
    table = pl.read_parquet(tmp_path / "c.parquet")
    assert summary.scored == table.height > 0 and summary.pairs == summary.scored + sum(summary.left_out.values())
    assert table["rank"].to_list() == list(range(1, table.height + 1))
    assert set(table["before_date"]) == {"2023-06-14"} and set(table["after_date"]) == {"2024-02-20"}
    assert {"geometry", "bbox"} <= set(table.columns) and "geo" in pl.read_parquet_metadata(tmp_path / "c.parquet")
    report = evaluate_changes(table.drop("geometry", "bbox"), read_truth(small_sample.root.parent / "changes-truth.geojson"))
    assert report["changed"] >= 2
    pixel = next(m for m in report["methods"] if m.method == "pixel")
    assert pixel.average_precision >= 0.8, pixel  # the planted sites, not the town's moved shadows


def test_cli_change_both_methods_writes_everything_once(cli, small_sample, sample_chips, tmp_path) -> None:
    emb = tmp_path / "embeddings.parquet"
    fake_embeddings(sample_chips, emb, "model-a")
    out, geo = tmp_path / "changes.parquet", tmp_path / "top.geojson"
    args = [
        "change",
        "--chips",
        str(sample_chips),
        "--embeddings",
        str(emb),
        "--out",
        str(out),
        "--geojson",
        str(geo),
        "--top",
        "3",
        "--min-compared",
        "0.3",
    ]
    res = cli(*args, "--truth", str(small_sample.root.parent / "changes-truth.geojson"))
    assert res.returncode == 0, res.stderr
    assert "chip pairs scored (both)" in res.stdout and "AP" in res.stdout and "2023-06-14" in res.stdout
    doc = __import__("json").loads(geo.read_text())
    assert len(doc["features"]) == 3 and doc["features"][0]["properties"]["rank"] == 1
    meta = __import__("json").loads(out.with_suffix(".json").read_text())
    assert meta["method"] == "both" and meta["model_id"] == "model-a" and set(meta["left_out"]) >= {"cloudy", "no_data"}
    table = pl.read_parquet(out)
    assert table["embedding_distance"].null_count() == 0 and table["pixel_change"].null_count() == 0
    again = cli(*args)
    assert again.returncode == 1 and "exists" in again.stderr  # nothing the user has is overwritten


def test_refusals_write_nothing(cli, sample_chips, tmp_path) -> None:
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    fake_embeddings(sample_chips, a, "model-a", only="104001008A3C21F0")
    fake_embeddings(sample_chips, b, "model-b", only="103001010B7D4E52")
    out = tmp_path / "out.parquet"
    res = cli("change", "--chips", str(sample_chips), "--embeddings", str(a), "--embeddings", str(b), "--out", str(out))
    assert res.returncode == 1 and "2 different models" in res.stderr and "model-a" in res.stderr
    res = cli("change", "--chips", str(sample_chips), "--method", "pixel", "--before", "2030-01-01", "--out", str(out))
    assert res.returncode == 1 and "no chip of" in res.stderr
    res = cli("change", "--chips", str(sample_chips), "--method", "embedding", "--out", str(out))
    assert res.returncode == 1 and "--embeddings" in res.stderr
    assert list(tmp_path.glob("out*")) == [] and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_one_acquisition_only_and_unreadable_chips(small_sample, sample_chips, tmp_path) -> None:
    import shutil

    from imagesim.search.change import ChangeSettings, detect_changes

    chips = tmp_path / "chips"
    shutil.copytree(sample_chips, chips)
    manifest = pl.read_parquet(chips / "chips.parquet")
    # a chip of a compared pair goes missing: that pair is counted and named, the run goes on
    paired = manifest.filter((pl.col("catalog_id") == "103001010B7D4E52") & (pl.col("nodata_class") == "all_data"))["chip"][0]
    (chips / "10" / paired).unlink()
    summary = detect_changes(chips, settings=ChangeSettings(method="pixel", max_cloud=None, min_compared=0.0), out=tmp_path / "c.parquet")
    assert summary.left_out["unreadable"] == 1 and paired in summary.unreadable[0] and summary.scored > 0
    # one acquisition only
    manifest.filter(pl.col("cell") == "120020223033").write_parquet(chips / "chips.parquet")
    with pytest.raises(ChangeError, match="one acquisition only"):
        detect_changes(chips, settings=ChangeSettings(method="pixel"), out=tmp_path / "d.parquet")
    assert not (tmp_path / "d.parquet").exists()


def test_distances_read_from_files_in_slices_equal_the_in_memory_ones(tmp_path, monkeypatch) -> None:
    """The embedding method reads the vectors of PAIR_BATCH pairs at a time, a row group at a time, from one or
    several files: the same distances as with every vector in memory; a zero vector is still refused."""
    import imagesim.search.change.run as change_run
    from imagesim.fsutil import atomic_path

    rng = np.random.default_rng(7)
    chips = [f"Z10-1200202230320{i // 4:04b}_{'AB'[i % 2]}{i % 4}.jpg" for i in range(40)]
    vec = rng.normal(size=(40, 6)).astype(np.float32)
    paths = []
    for k, rows in enumerate((slice(0, 25), slice(25, 40))):  # two files, several row groups each
        frame = pl.DataFrame({"chip": chips[rows], "embedding": pl.Series(vec[rows], dtype=pl.Array(pl.Float32, 6))})
        path = tmp_path / f"e{k}.parquet"
        with atomic_path(path) as tmp, geoparquet.GeoParquetStream(tmp, row_group=4, allow_missing=True) as w:
            w.write(frame)
        paths.append(path)
    order = rng.permutation(40)
    pairs = pl.DataFrame(
        {"before_chip": [chips[i] for i in order[:30]] + ["nope"], "after_chip": [chips[i] for i in order[10:40]] + [chips[0]]}
    )
    names = pl.DataFrame({"chip": chips}).with_row_index("row")
    unit = vec / np.linalg.norm(vec, axis=1, keepdims=True)
    want = embedding_distances(pairs, names, unit)
    monkeypatch.setattr(change_run, "PAIR_BATCH", 3)
    got_names, readers = change_run._embeddings(paths)
    got = change_run.file_distances(pairs, got_names, readers)
    assert got.null_count() == 1 and got[-1] is None
    np.testing.assert_allclose(got.drop_nulls().to_numpy(), want.drop_nulls().to_numpy(), atol=1e-6)
    # a zero vector is refused once it is read
    bad = vec.copy()
    bad[3] = 0
    pl.DataFrame({"chip": chips, "embedding": pl.Series(bad, dtype=pl.Array(pl.Float32, 6))}).write_parquet(tmp_path / "bad.parquet")
    names, readers = change_run._embeddings([tmp_path / "bad.parquet"])
    with pytest.raises(InvalidArgumentError, match="zero or not finite"):
        change_run.file_distances(pl.DataFrame({"before_chip": [chips[3]], "after_chip": [chips[4]]}), names, readers)


def test_changes_written_in_row_groups_equal_one_write(sample_chips, tmp_path, monkeypatch) -> None:
    import pyarrow.parquet as pq

    import imagesim.search.change.run as change_run
    from imagesim.search.change import ChangeSettings, detect_changes

    emb = tmp_path / "embeddings.parquet"
    fake_embeddings(sample_chips, emb, "model-a")
    settings = ChangeSettings(method="embedding", min_compared=0.3)
    detect_changes(sample_chips, [emb], settings=settings, out=tmp_path / "one.parquet", geojson=tmp_path / "one.geojson")
    monkeypatch.setattr(change_run, "STREAM_ROW_GROUP", 3)
    monkeypatch.setattr(geoparquet, "STREAM_ROW_GROUP", 3)
    monkeypatch.setattr(change_run, "PAIR_BATCH", 2)
    detect_changes(sample_chips, [emb], settings=settings, out=tmp_path / "many.parquet", geojson=tmp_path / "many.geojson")
    one, many = pl.read_parquet(tmp_path / "one.parquet"), pl.read_parquet(tmp_path / "many.parquet")
    assert pq.ParquetFile(tmp_path / "many.parquet").num_row_groups > 1 and many.height > 3
    assert many.equals(one) and many["rank"].to_list() == list(range(1, many.height + 1))
    assert pq.read_metadata(tmp_path / "many.parquet").metadata[b"geo"] == pq.read_metadata(tmp_path / "one.parquet").metadata[b"geo"]
    assert (tmp_path / "many.geojson").read_text() == (tmp_path / "one.geojson").read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
