"""`imagesim classmap`: embeddings' class probabilities as a layer of chip polygons (GeoParquet, GPKG,
GeoJSON), dissolved regions, the probability filter and several acquisitions of one quadkey."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from imagesim import grid
from imagesim.artefacts import MANIFEST_SCHEMA
from imagesim.errors import InvalidArgumentError, OutputExistsError
from imagesim.search.classmap import classmap

CLASSES = ["water", "building", "road"]
X0, Y0 = grid.quadkey_to_tile("12020000000000000")[:2]  # a z17 chip of zone 33 (north)
CHIP_M = 156.25


def qk(dx: int, dy: int) -> str:
    return grid.tile_to_quadkey((X0 + dx, Y0 + dy, 17))


def chips_spec() -> list[tuple[int, str, str, list[float]]]:
    """(zone, quadkey, catalog id, probabilities) of the synthetic embeddings."""
    rows = [(33, qk(dx, dy), "1030010000000A00", [0.9 + 0.01 * (3 * dy + dx), 0.1, 0.2]) for dy in range(3) for dx in range(3)]
    rows.append((33, qk(5, 0), "1030010000000A00", [0.6, 0.1, 0.5]))  # a second, separate water blob (also a road)
    rows.append((34, qk(0, 0), "1030010000000C00", [0.1, 0.8, 0.2]))  # same quadkey, another zone: building
    rows.append((33, qk(8, 8), "1030010000000A01", [0.1, 0.2, 0.7]))  # two acquisitions of one quadkey:
    rows.append((33, qk(8, 8), "1030010000000B02", [0.1, 0.95, 0.2]))  # by catalog id, B02 is the latest
    return rows


def write_embeddings(folder: Path, *, probabilities: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    spec = chips_spec()
    prob = np.asarray([p for *_, p in spec], np.float32)
    table = pl.DataFrame(
        {
            "chip": [grid.chip_name(z, q, c) for z, q, c, _ in spec],
            "path": [f"{z}/{grid.chip_name(z, q, c)}" for z, q, c, _ in spec],
            "zone": pl.Series([z for z, *_ in spec], dtype=pl.UInt8),
            "quadkey": [q for _, q, _, _ in spec],
            "cell": [q[:12] for _, q, _, _ in spec],
            "catalog_id": [c for _, _, c, _ in spec],
            "model_id": ["m1"] * len(spec),
            "embedding": pl.Series(np.random.default_rng(0).normal(size=(len(spec), 4)).astype(np.float32), dtype=pl.Array(pl.Float32, 4)),
            "predicted": pl.Series([[c for c, v in zip(CLASSES, p) if v >= 0.35] for *_, p in spec], dtype=pl.List(pl.String)),
        }
    )
    if probabilities:
        table = table.with_columns(pl.Series("probabilities", prob, dtype=pl.Array(pl.Float32, len(CLASSES))))
    path = folder / "embeddings.parquet"
    table.write_parquet(path)
    (folder / "embeddings.json").write_text(json.dumps({"model_id": "m1", "classes": CLASSES, "thresholds": [0.35] * 3}))
    return path


@pytest.fixture
def emb(tmp_path: Path) -> Path:
    return write_embeddings(tmp_path / "enc")


def test_chip_layer_geoparquet_keeps_probabilities_and_predictions(emb: Path, tmp_path: Path) -> None:
    gpd = pytest.importorskip("geopandas")
    out = tmp_path / "map.parquet"
    summary = classmap(emb, out)
    assert (summary.features, summary.format, summary.order) == (12, "parquet", "catalog_id")  # 13 chips, one quadkey twice
    gdf = gpd.read_parquet(out)
    assert gdf.crs.to_epsg() == 4326
    assert len(gdf) == 12 and (gdf.geom_type == "Polygon").all()
    by_chip = gdf.set_index("chip")
    for zone, quadkey, cat, p in chips_spec():
        name = grid.chip_name(zone, quadkey, cat)
        if cat == "1030010000000A01":
            assert name not in by_chip.index  # the older acquisition
            continue
        row = by_chip.loc[name]
        assert [row[f"p_{c}"] for c in CLASSES] == pytest.approx(np.float32(p).tolist(), abs=0)
        assert row["top_class"] == CLASSES[int(np.argmax(p))]
    assert by_chip.loc[grid.chip_name(33, qk(5, 0), "1030010000000A00"), "predicted"] == "water;road"
    assert str(gdf["p_water"].dtype) == "float32"
    # the footprint is the chip: its centre lies in the UTM square
    from pyproj import Transformer

    centre = by_chip.loc[grid.chip_name(33, qk(0, 0), "1030010000000A00"), "geometry"].centroid
    x, y = Transformer.from_crs(4326, 32633, always_xy=True).transform(centre.x, centre.y)
    b = grid.bounds(qk(0, 0))
    assert b.west < x < b.east and b.south < y < b.north


@pytest.mark.parametrize("ext", [".gpkg", ".geojson"])
def test_gpkg_and_geojson_read_back_with_ogr(emb: Path, tmp_path: Path, ext: str) -> None:
    ogr = pytest.importorskip("osgeo.ogr")
    out = tmp_path / f"map{ext}"
    classmap(emb, out)
    ds = ogr.Open(str(out))
    layer = ds.GetLayer(0)
    assert layer.GetFeatureCount() == 12
    defn = layer.GetLayerDefn()
    fields = {defn.GetFieldDefn(i).GetName() for i in range(defn.GetFieldCount())}
    assert {"chip", "zone", "quadkey", "predicted", "top_class", "p_water", "p_building", "p_road"} <= fields
    assert layer.GetSpatialRef().GetAuthorityCode(None) == "4326"
    feature = next(f for f in layer if f.GetField("quadkey") == qk(5, 0))
    assert feature.GetField("predicted") == "water;road"
    assert feature.GetField("p_water") == pytest.approx(0.6, abs=1e-6)
    if ext == ".geojson":
        doc = json.loads(out.read_text())
        assert "crs" not in doc  # RFC 7946
        lon, lat = doc["features"][0]["geometry"]["coordinates"][0][0]
        assert 12 < lon < 18 and 30 < lat < 40  # lon/lat order (zone 33 north)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_dissolve_merges_the_block_into_one_polygon(emb: Path, tmp_path: Path) -> None:
    gpd = pytest.importorskip("geopandas")
    out = tmp_path / "water.parquet"
    summary = classmap(emb, out, dissolve="water")
    gdf = gpd.read_parquet(out)
    assert summary.dissolved == ("water",) and len(gdf) == 2  # the 3×3 block and the lone chip: two blobs
    block = gdf[gdf["chips"] == 9].iloc[0]
    assert block["class"] == "water" and block.geometry.geom_type == "Polygon"
    assert block["area_m2"] == 9 * CHIP_M**2
    assert block["mean_probability"] == pytest.approx(np.mean(np.float32([0.9 + 0.01 * i for i in range(9)])), abs=1e-6)
    assert gpd.GeoSeries([block.geometry], crs=4326).to_crs(32633).area.iloc[0] == pytest.approx(9 * CHIP_M**2, rel=1e-6)
    assert sorted(gdf["chips"]) == [1, 9]


def test_dissolve_alone_takes_every_class(emb: Path, tmp_path: Path) -> None:
    gpd = pytest.importorskip("geopandas")
    out = tmp_path / "all.gpkg"
    classmap(emb, out, dissolve="*")
    gdf = gpd.read_file(out)
    # water: block + lone chip; road: the lone chip; building: zone 34 and the latest acquisition (zone 33)
    assert sorted(zip(gdf["class"], gdf["zone"], gdf["chips"])) == [
        ("building", 33, 1),
        ("building", 34, 1),
        ("road", 33, 1),
        ("water", 33, 1),
        ("water", 33, 9),
    ]
    with pytest.raises(InvalidArgumentError, match="`dissolve` forest"):
        classmap(emb, tmp_path / "x.gpkg", dissolve="water,forest")


def test_min_probability_drops_weak_classes_and_chips(emb: Path, tmp_path: Path) -> None:
    gpd = pytest.importorskip("geopandas")
    out = tmp_path / "strong.parquet"
    classmap(emb, out, min_probability=0.75)
    gdf = gpd.read_parquet(out)
    # the lone water/road chip (0.6, 0.5) goes; the others' strongest class stays
    assert qk(5, 0) not in set(gdf["quadkey"]) and len(gdf) == 11
    assert set(gdf["predicted"]) == {"water", "building"}
    with pytest.raises(InvalidArgumentError, match="`min_probability`"):
        classmap(emb, tmp_path / "bad.parquet", min_probability=1.5)


def test_acquisitions_latest_mean_all(emb: Path, tmp_path: Path) -> None:
    gpd = pytest.importorskip("geopandas")

    def twice(mode: str) -> object:
        out = tmp_path / f"{mode}.parquet"
        classmap(emb, out, acquisitions=mode)
        gdf = gpd.read_parquet(out)
        return gdf[gdf["quadkey"] == qk(8, 8)]

    latest = twice("latest")
    assert list(latest["catalog_id"]) == ["1030010000000B02"] and list(latest["top_class"]) == ["building"]
    assert list(latest["acquisitions"]) == [2]
    mean = twice("mean")
    assert list(mean["catalog_id"]) == ["1030010000000A01;1030010000000B02"]
    assert mean["p_building"].iloc[0] == pytest.approx((0.2 + 0.95) / 2, abs=1e-6)
    assert mean["predicted"].iloc[0] == "building;road"  # 0.575 and 0.45, both ≥ 0.35
    assert sorted(twice("all")["catalog_id"]) == ["1030010000000A01", "1030010000000B02"]


def test_acquisitions_latest_by_manifest_date(emb: Path, tmp_path: Path) -> None:
    """With chips.parquet beside the embeddings, its acquisition_date decides, not the catalog id."""
    gpd = pytest.importorskip("geopandas")
    names = [grid.chip_name(33, qk(8, 8), c) for c in ("1030010000000A01", "1030010000000B02")]
    manifest = pl.DataFrame({"chip": names, "acquisition_date": ["2024-06-01", "2019-01-01"]}).with_columns(
        pl.lit(None, dtype).alias(c) for c, dtype in MANIFEST_SCHEMA.items() if c not in ("chip", "acquisition_date")
    )
    manifest.select(list(MANIFEST_SCHEMA)).write_parquet(emb.parent / "chips.parquet")
    out = tmp_path / "dated.parquet"
    assert classmap(emb, out).order == "acquisition_date"
    gdf = gpd.read_parquet(out)
    assert list(gdf[gdf["quadkey"] == qk(8, 8)]["catalog_id"]) == ["1030010000000A01"]


def test_existing_output_is_refused_without_overwrite(emb: Path, tmp_path: Path) -> None:
    out = tmp_path / "map.geojson"
    out.write_text("mine")
    with pytest.raises(OutputExistsError, match="`overwrite`"):
        classmap(emb, out)
    assert out.read_text() == "mine"
    classmap(emb, out, overwrite=True)
    assert len(json.loads(out.read_text())["features"]) == 12
    with pytest.raises(InvalidArgumentError, match="unknown extension"):
        classmap(emb, tmp_path / "map.shp")


def test_cli_classmap(cli, emb: Path, tmp_path: Path) -> None:
    out = tmp_path / "map.gpkg"
    res = cli("classmap", "--embeddings", emb, "--out", out, "--dissolve", "--acquisitions", "latest")
    assert res.returncode == 0, res.stderr
    assert str(out) in res.stdout.replace("\n", "") and "wrote 5 features" in res.stdout
    res = cli("classmap", "--embeddings", emb, "--out", out)
    assert res.returncode == 1 and "--overwrite" in res.stderr


def test_cli_classmap_without_probabilities(cli, tmp_path: Path) -> None:
    emb = write_embeddings(tmp_path / "plain", probabilities=False)
    res = cli("classmap", "--embeddings", emb, "--out", tmp_path / "map.parquet")
    assert res.returncode == 1
    assert "no class probabilities" in res.stderr and str(emb) in res.stderr.replace("\n", "")
    assert not (tmp_path / "map.parquet").exists()
