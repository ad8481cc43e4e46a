"""`imagesim serve` and the ARD masks: cloud fractions in the API and the page, the mask-outline layer.

The module fixture links the small sample's COGs into a fresh delivery without any of its masks and
writes its own with OGR: a many-vertex cloud disc on a chip of the newest acquisition of the first cell, a
square on the older acquisition of that cell, and a garbage cloud mask for the second cell; no water
mask anywhere. The index is built from the chips with cloud fractions planted in the embeddings.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import NamedTuple

import numpy as np
import polars as pl
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("faiss")
pytest.importorskip("uvicorn")
pytest.importorskip("mercantile")
shapely = pytest.importorskip("shapely")

from fastapi.testclient import TestClient  # noqa: E402
from test_serve import chip_centre_lonlat, headless_chrome, serving  # noqa: E402

from imagesim import grid  # noqa: E402
from imagesim.artefacts import CLOUD_FRACTION  # noqa: E402
from imagesim.search.index import build_index, load_index  # noqa: E402
from imagesim.search.serve.app import ChipTable, create_app  # noqa: E402
from imagesim.search.serve.mask_layer import MaskLayer  # noqa: E402

from embedding_table import embeddings_table  # noqa: E402

LOGGER = "imagesim.search.serve"
DISC_RADIUS = 150.0  # m
DISC_VERTICES = 2000


class Masked(NamedTuple):
    ard: Path
    chips: Path
    index: Path
    manifest: pl.DataFrame  # the indexed chips, with the planted cloud_fraction
    epsg: int
    cell: str  # the cell with two acquisitions and the cloud masks
    newer: str
    older: str
    other: str  # the acquisition of the other cell (corrupt cloud mask)
    disc: object  # shapely Polygon (UTM) of the newer acquisition's cloud mask
    square: object  # of the older one
    disc_chip: str  # a chip of the newer acquisition under the disc


def write_gpkg(path: Path, geoms: list, epsg: int, layer: str) -> None:
    """A GeoPackage of (multi)polygons in EPSG ``epsg``, written by OGR as ARD ships them."""
    ogr = pytest.importorskip("osgeo.ogr")
    osr = pytest.importorskip("osgeo.osr")
    ogr.UseExceptions()
    osr.UseExceptions()
    if path.exists():
        path.unlink()
    ds = ogr.GetDriverByName("GPKG").CreateDataSource(str(path))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(epsg)
    lyr = ds.CreateLayer(layer, srs, ogr.wkbMultiPolygon)
    for g in geoms:
        feature = ogr.Feature(lyr.GetLayerDefn())
        feature.SetGeometry(ogr.ForceToMultiPolygon(ogr.CreateGeometryFromWkb(shapely.to_wkb(g))))
        lyr.CreateFeature(feature)
    ds = None  # closes and flushes the file


def planted(i: int) -> float | None:
    """The cloud fraction planted on manifest row ``i``: 0, 0.1 … 0.5, and unknown on every seventh."""
    return None if i % 7 == 6 else round((i % 6) * 0.1, 4)


@pytest.fixture(scope="module")
def masked(tmp_path_factory, small_sample) -> Masked:
    from imagesim.imagery.chip import ChipSettings, run_chip

    base = tmp_path_factory.mktemp("serve-masks")
    ard = base / "ard"
    for cog in small_sample.cogs:  # the COGs only: this module writes the masks it tests
        dst = ard / cog.relative_to(small_sample.root)
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.symlink_to(cog)
    chips = base / "chips"
    run_chip(ard, chips, ChipSettings(zoom=17, skip_empty=True))
    manifest = pl.read_parquet(chips / "chips.parquet").filter(pl.col("written")).sort("chip")
    manifest = manifest.with_columns(pl.Series(CLOUD_FRACTION, [planted(i) for i in range(manifest.height)], dtype=pl.Float64))
    rng = np.random.default_rng(5)
    vectors = rng.normal(size=(manifest.height, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    table = embeddings_table(manifest, vectors, "test-model", [["building"]] * manifest.height)
    table.with_columns(manifest[CLOUD_FRACTION]).write_parquet(base / "embeddings.parquet")
    build_index(base / "embeddings.parquet", base / "index")

    cell = small_sample.cells[0]
    by_cell = {c: [p for p in small_sample.cogs if p.parts[-3] == c] for c in small_sample.cells}
    (older_cog, newer_cog) = sorted(by_cell[cell], key=lambda p: p.parts[-2])
    older, newer = older_cog.name[: -len("-visual.tif")], newer_cog.name[: -len("-visual.tif")]
    other = next(p for p in small_sample.cogs if p.parts[-3] != cell).name[: -len("-visual.tif")]
    epsg = grid.epsg(cell, small_sample.zone)
    # the disc: on a full chip of the newer acquisition, inside the cell interior
    disc_chip = manifest.filter((pl.col("catalog_id") == newer) & (pl.col("nodata_class") == "all_data"))["chip"][0]
    b = grid.bounds(grid.parse_chip_name(disc_chip).quadkey)
    cx, cy = (b.west + b.east) / 2, (b.south + b.north) / 2
    t = np.linspace(0, 2 * np.pi, DISC_VERTICES, endpoint=False)
    disc = shapely.Polygon(np.column_stack([cx + DISC_RADIUS * np.cos(t), cy + DISC_RADIUS * np.sin(t)]))
    square = shapely.box(cx - 100, cy - 100, cx + 100, cy + 100)
    folder = lambda cog: ard / cog.relative_to(small_sample.root).parent  # noqa: E731
    write_gpkg(folder(newer_cog) / f"{newer}-cloud-mask.gpkg", [disc], epsg, "cloud-mask")
    write_gpkg(folder(older_cog) / f"{older}-cloud-mask.gpkg", [square], epsg, "cloud-mask")
    other_cog = next(p for p in small_sample.cogs if p.name.startswith(other))
    (folder(other_cog) / f"{other}-cloud-mask.gpkg").write_bytes(b"not a geopackage at all\x00" * 40)
    return Masked(ard, chips, base / "index", manifest, epsg, cell, newer, older, other, disc, square, disc_chip)


def client_for(m: Masked, **kw) -> TestClient:
    return TestClient(create_app(m.ard, m.chips, m.index, **kw), base_url="http://127.0.0.1", raise_server_exceptions=False)


@pytest.fixture(scope="module")
def client(masked) -> TestClient:
    return client_for(masked)


def to_wgs84(geom, epsg: int):
    from pyproj import Transformer

    tr = Transformer.from_crs(epsg, 4326, always_xy=True)
    return shapely.transform(geom, lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))


def to_utm(geom, epsg: int):
    from pyproj import Transformer

    tr = Transformer.from_crs(4326, epsg, always_xy=True)
    return shapely.transform(geom, lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))


def bbox_around(geom, epsg: int, pad_m: float) -> str:
    w, s, e, n = to_wgs84(geom.buffer(pad_m), epsg).bounds
    return f"{w:.7f},{s:.7f},{e:.7f},{n:.7f}"


def collection_geometry(fc: dict):
    return shapely.union_all([shapely.geometry.shape(f["geometry"]) for f in fc["features"]])


def vertices(fc: dict) -> int:
    return int(sum(shapely.get_num_coordinates(shapely.geometry.shape(f["geometry"])) for f in fc["features"]))


# --- cloud fractions: /api/similar and /api/chips ---


def test_similar_max_cloud_leaves_out_cloudy_chips(client, masked):
    from imagesim.search.similar import similar

    index = load_index(masked.index)
    cloud = dict(zip(masked.manifest["chip"], masked.manifest[CLOUD_FRACTION]))
    chip = masked.manifest["chip"][0]
    k = 20
    everything = client.get(f"/api/similar?chip={chip}&k={k}").json()
    assert everything["query"]["max_cloud"] is None and everything["cloudy"] == 0
    assert len(everything["results"]) == k
    assert any((h["cloud_fraction"] or 0) > 0.25 for h in everything["results"])  # the unfiltered list has cloudy chips
    assert all(h["cloud_fraction"] == cloud[h["chip"]] for h in everything["results"])  # the planted values, null kept
    assert any(h["cloud_fraction"] is None for h in everything["results"])
    assert everything["query"]["chips"][0]["properties"]["cloud_fraction"] == cloud[chip]

    body = client.get(f"/api/similar?chip={chip}&k={k}&max_cloud=0.25").json()
    assert body["query"]["max_cloud"] == 0.25
    hits = body["results"]
    assert len(hits) == k and all(h["cloud_fraction"] is None or h["cloud_fraction"] <= 0.25 for h in hits)
    want = similar(index, [chip], k=k, max_cloud=0.25)
    assert [h["chip"] for h in hits] == [h.chip for h in want.hits]
    qk = grid.parse_chip_name(chip).quadkey
    others = masked.manifest.filter(pl.col("quadkey") != qk)
    assert body["cloudy"] == want.cloudy == int((others[CLOUD_FRACTION] > 0.25).sum()) > 0
    # what is left is the unfiltered ranking without the cloudy chips
    ranked = [h["chip"] for h in client.get(f"/api/similar?chip={chip}&k=100").json()["results"]]
    assert [h["chip"] for h in hits] == [c for c in ranked if cloud[c] is None or cloud[c] <= 0.25][:k]
    # 0: only cloud-free and unknown chips; 1: nothing left out
    zero = client.get(f"/api/similar?chip={chip}&k={k}&max_cloud=0").json()["results"]
    assert zero and all(h["cloud_fraction"] in (None, 0.0) for h in zero)
    assert client.get(f"/api/similar?chip={chip}&k={k}&max_cloud=1").json()["results"] == everything["results"]


@pytest.mark.parametrize("value", ["-0.1", "1.5", "nan", "inf", "lots", ""])
def test_similar_rejects_bad_max_cloud(client, masked, value):
    r = client.get(f"/api/similar?chip={masked.disc_chip}&max_cloud={value}")
    assert r.status_code == 422, r.text
    assert "max_cloud" in r.json()["detail"] and "Traceback" not in r.text


def test_chips_carry_cloud_fraction(client, masked):
    w, s, e, n = client.get("/tilejson.json").json()["bounds"]
    cloud = dict(zip(masked.manifest["chip"], masked.manifest[CLOUD_FRACTION]))
    features = []
    for acq in (masked.newer, masked.older, masked.other):
        features += client.get(f"/api/chips?bbox={w},{s},{e},{n}&acquisition={acq}").json()["features"]
    assert len(features) == masked.manifest.height
    assert all(f["properties"]["cloud_fraction"] == cloud[f["properties"]["chip"]] for f in features)
    assert {f["properties"]["cloud_fraction"] is None for f in features} == {True, False}


def test_chip_table_without_the_column(client, masked):
    """An ids table without cloud_fraction (load_index adds it; ChipTable must not need it)."""
    ids = load_index(masked.index).ids.drop(CLOUD_FRACTION)
    table = ChipTable(ids, client.app.state.catalog, client.app.state.catalog.transformers)
    assert table.feature(0)["properties"]["cloud_fraction"] is None


# --- /api/masks ---


def test_masks_newest_per_cell_or_the_chosen_acquisition(client, masked):
    bbox = bbox_around(masked.disc, masked.epsg, 300)
    r = client.get(f"/api/masks?bbox={bbox}&kind=cloud")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.headers["cache-control"] == "public, max-age=3600"
    fc = r.json()
    assert fc["type"] == "FeatureCollection" and fc["kind"] == "cloud" and fc["problems"] == [] and fc["notes"] == []
    assert [f["properties"]["catalog_id"] for f in fc["features"]] == [masked.newer]
    p = fc["features"][0]["properties"]
    assert p["kind"] == "cloud" and p["cell"] == masked.cell and p["zone"] == grid.parse_chip_name(masked.disc_chip).zone
    got = collection_geometry(fc)
    want = to_wgs84(masked.disc, masked.epsg)
    assert got.symmetric_difference(want).area / want.area < 0.01
    # WGS84 lon/lat in the bbox
    w, s, e, n = (float(v) for v in bbox.split(","))
    gw, gs, ge, gn = got.bounds
    assert w <= gw and s <= gs and ge <= e and gn <= n
    # the older acquisition when asked for
    older = client.get(f"/api/masks?bbox={bbox}&kind=cloud&acquisition={masked.older}").json()
    assert [f["properties"]["catalog_id"] for f in older["features"]] == [masked.older]
    square = to_wgs84(masked.square, masked.epsg)
    assert collection_geometry(older).symmetric_difference(square).area / square.area < 0.01
    # an acquisition of the other cell has nothing here
    assert client.get(f"/api/masks?bbox={bbox}&kind=cloud&acquisition={masked.other}").json()["features"] == []


def test_masks_are_clipped_to_the_bbox_and_simplified_for_the_view(client, masked):
    c = masked.disc.centroid
    # the east half of the disc only
    half = shapely.box(c.x, c.y - 400, c.x + 400, c.y + 400)
    w, s, e, n = to_wgs84(half, masked.epsg).bounds
    fc = client.get(f"/api/masks?bbox={w},{s},{e},{n}&kind=cloud").json()
    got = collection_geometry(fc)
    gw, gs, ge, gn = got.bounds
    assert w - 1e-7 <= gw and s - 1e-7 <= gs and ge <= e + 1e-7 and gn <= n + 1e-7
    area = to_utm(got, masked.epsg).area
    assert area == pytest.approx(math.pi * DISC_RADIUS**2 / 2, rel=0.03)
    # zoomed in: sub-metre tolerance (still far fewer vertices than the file's smooth disc);
    # the whole delivery: coarser, fewer vertices, the same shape within the tolerance
    near = client.get(f"/api/masks?bbox={bbox_around(masked.disc, masked.epsg, 20)}&kind=cloud").json()
    W, S, E, N = client.get("/tilejson.json").json()["bounds"]
    far = client.get(f"/api/masks?bbox={W},{S},{E},{N}&kind=cloud").json()
    assert near["tolerance_m"] < 1 < far["tolerance_m"] < DISC_RADIUS / 4
    assert 8 <= vertices(far) < vertices(near) < DISC_VERTICES / 4
    assert far["vertices"] == vertices(far) and near["vertices"] == vertices(near)
    for fc in (near, far):
        assert to_utm(collection_geometry(fc), masked.epsg).hausdorff_distance(masked.disc) <= 2 * fc["tolerance_m"] + 0.05


def test_masks_keep_to_the_vertex_budget(masked):
    c = client_for(masked)
    bbox = bbox_around(masked.disc, masked.epsg, 20)
    free = c.get(f"/api/masks?bbox={bbox}&kind=cloud").json()
    c.app.state.masks.vertex_budget = 60
    tight = c.get(f"/api/masks?bbox={bbox}&kind=cloud").json()
    assert tight["vertices"] == vertices(tight) <= 60 < vertices(free)
    assert tight["tolerance_m"] > free["tolerance_m"] and not tight["truncated"]
    assert to_utm(collection_geometry(tight), masked.epsg).hausdorff_distance(masked.disc) <= 2 * tight["tolerance_m"] + 0.05


def test_masks_missing_file_gives_an_empty_collection_with_a_note(client, masked):
    r = client.get(f"/api/masks?bbox={bbox_around(masked.disc, masked.epsg, 300)}&kind=water")
    assert r.status_code == 200
    fc = r.json()
    assert fc["features"] == [] and fc["problems"] == []
    assert len(fc["notes"]) == 1 and masked.newer in fc["notes"][0] and "water" in fc["notes"][0]
    assert str(masked.ard) not in r.text


def test_masks_corrupt_file_is_a_problem_not_an_error(masked, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    c = client_for(masked)
    W, S, E, N = c.get("/tilejson.json").json()["bounds"]
    for _ in range(3):
        r = c.get(f"/api/masks?bbox={W},{S},{E},{N}&kind=cloud")
        assert r.status_code == 200 and r.headers["cache-control"] == "no-cache"
        fc = r.json()
        # the readable cell is drawn, the corrupt one reported by acquisition, without file-system paths
        assert [f["properties"]["catalog_id"] for f in fc["features"]] == [masked.newer]
        assert len(fc["problems"]) == 1 and masked.other in fc["problems"][0] and "cannot be read" in fc["problems"][0]
        assert str(masked.ard) not in r.text and "/tmp" not in r.text and "Traceback" not in r.text
    logged = [rec for rec in caplog.records if rec.name == LOGGER and f"{masked.other}-cloud-mask.gpkg" in rec.getMessage()]
    assert len(logged) == 1 and logged[0].levelno == logging.WARNING
    assert c.app.state.masks.reads == 2  # each file read once, the failure cached too
    only = c.get(f"/api/masks?bbox={W},{S},{E},{N}&kind=cloud&acquisition={masked.other}").json()
    assert only["features"] == [] and len(only["problems"]) == 1


def test_masks_are_cached_per_file(masked):
    c = client_for(masked)
    folder = next(masked.ard.glob(f"*/{masked.cell}/*/{masked.newer}-visual.tif")).parent
    path = folder / f"{masked.newer}-cloud-shadow-mask.gpkg"
    write_gpkg(path, [masked.square], masked.epsg, "cloud-shadow-mask")
    try:
        bbox = bbox_around(masked.disc, masked.epsg, 300)
        layer: MaskLayer = c.app.state.masks
        first = c.get(f"/api/masks?bbox={bbox}&kind=cloud_shadow").json()
        c.get(f"/api/masks?bbox={bbox_around(masked.disc, masked.epsg, 100)}&kind=cloud_shadow")
        assert layer.reads == 1
        square = to_wgs84(masked.square, masked.epsg)
        assert collection_geometry(first).symmetric_difference(square).area / square.area < 0.01
        # a new file (new size and mtime) is read again
        write_gpkg(path, [masked.square.buffer(-50, join_style="mitre")], masked.epsg, "cloud-shadow-mask")
        second = c.get(f"/api/masks?bbox={bbox}&kind=cloud_shadow").json()
        assert layer.reads == 2
        assert to_utm(collection_geometry(second), masked.epsg).area == pytest.approx(100 * 100, rel=0.01)
    finally:
        path.unlink()


def test_masks_with_too_many_cells_ask_to_zoom_in(masked):
    c = client_for(masked)
    c.app.state.masks.max_cells = 1
    W, S, E, N = c.get("/tilejson.json").json()["bounds"]
    fc = c.get(f"/api/masks?bbox={W},{S},{E},{N}&kind=cloud").json()
    assert fc["features"] == [] and fc["truncated"] and "zoom in" in fc["notes"][0]


@pytest.mark.parametrize(
    "query,status",
    [
        ("bbox=1,2,3&kind=cloud", 400),
        ("bbox=a,b,c,d&kind=cloud", 400),
        ("bbox=10,0,5,1&kind=cloud", 400),
        ("bbox=nan,0,1,1&kind=cloud", 400),
        ("bbox=-200,0,0,1&kind=cloud", 400),
        ("bbox=0,0,1,1&kind=snow", 400),
        ("bbox=0,0,1,1&kind=..%2F..%2Fetc%2Fpasswd", 400),
        ("bbox=0,0,1,1&kind=data", 400),
        ("bbox=0,0,1,1&kind=cloud&acquisition=..%2Fx", 400),
        ("bbox=0,0,1,1&kind=cloud&acquisition=FFFFFFFFFFFFFFFF", 404),
        ("kind=cloud", 422),
        ("bbox=" + "1" * 300 + "&kind=cloud", 422),
    ],
)
def test_masks_reject_bad_parameters(client, query, status):
    r = client.get(f"/api/masks?{query}")
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    assert "Traceback" not in r.text and "/tmp" not in r.text and "passwd" not in r.text


def test_page_has_the_cloud_and_mask_controls(client):
    page = client.get("/").text
    assert 'id="hide-cloudy"' in page and 'id="max-cloud"' in page and 'value="0.1"' in page
    for kind in ("cloud", "cloud_shadow", "water", "vegetation"):
        assert f'data-mask="{kind}"' in page
    js = client.get("/static/app.js").text
    assert "/api/masks?bbox=" in js and '"max_cloud"' in js and ".innerHTML" not in js


# --- the page in a real browser ---


@pytest.fixture(scope="module")
def live_server(masked):
    with serving(create_app(masked.ard, masked.chips, masked.index)) as base:
        yield base


def test_browser_cloud_layer_and_cloud_figures(live_server, masked):
    driver = headless_chrome()
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        zone, qk = grid.parse_chip_name(masked.disc_chip).zone, grid.parse_chip_name(masked.disc_chip).quadkey
        lon, lat = chip_centre_lonlat(zone, qk)
        chip = masked.disc_chip[:-4]
        driver.get(f"{live_server}/?chip={chip}#17/{lat:.6f}/{lon:.6f}")
        wait = WebDriverWait(driver, 20)
        wait.until(lambda d: d.execute_script("return document.body.dataset.ready === '1'"))
        assert not driver.find_elements(By.CSS_SELECTOR, "path.mask-outline")  # off by default
        # the result list shows each chip's cloud figure
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#similar-list li.chip-card")) == 10)
        cloud = dict(zip(masked.manifest["chip"], masked.manifest[CLOUD_FRACTION]))
        for li in driver.find_elements(By.CSS_SELECTOR, "#similar-list li.chip-card"):
            value = cloud[li.get_attribute("data-chip")]
            text = li.find_element(By.CSS_SELECTOR, ".cloud").text
            assert text == ("cloud –" if value is None else f"cloud {round(value * 100)} %"), (text, value)
        # hide cloudy (threshold 0.1 by default): the query runs again without the cloudier chips
        driver.find_element(By.ID, "hide-cloudy").click()
        wait.until(lambda d: "cloudy left out" in d.find_element(By.ID, "status").text)
        kept = [li.get_attribute("data-chip") for li in driver.find_elements(By.CSS_SELECTOR, "#similar-list li.chip-card")]
        assert kept and all(cloud[c] is None or cloud[c] <= 0.1 for c in kept)
        # the cloud outline layer: the disc's outline drawn in the map's SVG
        driver.find_element(By.CSS_SELECTOR, "#mask-layers input[data-mask='cloud']").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#map svg path.mask-cloud"))
        path = driver.find_element(By.CSS_SELECTOR, "#map svg path.mask-cloud")
        assert len(path.get_attribute("d")) > 100 and path.get_attribute("stroke") == "#ffffff"
        assert path.rect["width"] > 100  # a 300 m disc is ~300 px across at zoom 17
        # off again: the outline goes
        driver.find_element(By.CSS_SELECTOR, "#mask-layers input[data-mask='cloud']").click()
        wait.until(lambda d: not d.find_elements(By.CSS_SELECTOR, "path.mask-cloud"))
        severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not severe, severe
    finally:
        driver.quit()
