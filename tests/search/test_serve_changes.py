# ruff: noqa: F811  (test_serve's module fixtures, imported by name, are the arguments of the tests)
"""`imagesim serve --changes`: the change layer API, the acquisitions of a chip, and the before/after view in a browser.

Reuses test_serve's module fixture (the chipped small sample, whose cell 120020223032 has two acquisitions,
and an index). The changes file is written here in the shape `imagesim change` writes (CHANGE_SCHEMA plus
GeoParquet footprints): one row per chip square with both acquisitions, older → newer, written in reverse
rank order; the first row has a null embedding distance and a NaN pixel change.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("faiss")
pytest.importorskip("uvicorn")
pytest.importorskip("mercantile")
pytest.importorskip("shapely")

from fastapi.testclient import TestClient  # noqa: E402
from test_serve import chip_centre_lonlat, client, headless_chrome, serving, viewer  # noqa: E402, F401

from imagesim.artefacts import CHANGE_SCHEMA  # noqa: E402
from imagesim.errors import ImagesimFileNotFoundError, InvalidArgumentError  # noqa: E402
from imagesim.geoparquet import write_geoparquet  # noqa: E402
from imagesim.search.serve.app import create_app  # noqa: E402

CELL = "120020223032"


def change_rows(manifest: pl.DataFrame) -> pl.DataFrame:
    """A change row per chip square of CELL with two acquisitions: older before, newer after, ranked by quadkey."""
    pairs = (
        manifest.filter(pl.col("cell") == CELL)
        .sort("acquisition_date")
        .group_by("zone", "quadkey", "zoom", "cell", maintain_order=True)
        .agg("chip", "catalog_id", "acquisition_date")
        .filter(pl.col("chip").list.len() == 2)
        .sort("quadkey")
    )
    n = pairs.height
    side = {"before": 0, "after": 1}
    return pl.DataFrame(
        {
            "zone": pairs["zone"],
            "quadkey": pairs["quadkey"],
            "zoom": pairs["zoom"],
            "cell": pairs["cell"],
            **{f"{s}_chip": pairs["chip"].list.get(j) for s, j in side.items()},
            **{f"{s}_catalog_id": pairs["catalog_id"].list.get(j) for s, j in side.items()},
            **{f"{s}_date": pairs["acquisition_date"].list.get(j) for s, j in side.items()},
            "compared_fraction": [0.5 + 0.01 * i for i in range(n)],
            "embedding_distance": [None] + [0.05 * i for i in range(1, n)],
            "pixel_change": [float("nan")] + [0.2] * (n - 1),
            "changed_area": [0.3] * n,
            "score": [round(1 - i / n, 6) for i in range(n)],
            "rank": list(range(1, n + 1)),
        }
    ).cast(CHANGE_SCHEMA)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def changes(viewer, tmp_path_factory) -> tuple[Path, pl.DataFrame]:
    rows = change_rows(viewer.manifest)
    assert rows.height >= 10  # the small sample: most chips of the cell have both acquisitions
    path = tmp_path_factory.mktemp("changes") / "changes.parquet"
    write_geoparquet(rows.reverse(), path)  # not in rank order: the viewer sorts
    path.with_suffix(".json").write_text(json.dumps({"method": "both", "threshold": float("nan")}))
    return path, rows


@pytest.fixture(scope="module")
def cclient(viewer, changes) -> TestClient:
    app = create_app(viewer.sample.root, viewer.chips, viewer.index, changes=changes[0])
    return TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False)


def near(lon: float, lat: float, pad: float = 1e-4) -> str:
    return f"{lon - pad},{lat - pad},{lon + pad},{lat + pad}"


def test_info_says_whether_changes_are_loaded(cclient, client):
    info = cclient.get("/api/info").json()["changes"]
    assert info["n"] > 0 and info["method"] == "both" and info["file"] == "changes.parquet"
    assert info["meta"] == {"method": "both", "threshold": None}  # NaN of the sidecar: null
    assert client.get("/api/info").json()["changes"] is None


def test_changes_in_view_ranked_with_footprints(cclient, changes):
    _, rows = changes
    r = cclient.get("/api/changes?bbox=-180,-90,180,90")
    assert r.status_code == 200 and "NaN" not in r.text
    fc = r.json()
    assert fc["type"] == "FeatureCollection" and fc["count"] == rows.height == fc["in_view"] and not fc["truncated"]
    assert [f["properties"]["rank"] for f in fc["features"]] == list(range(1, rows.height + 1))
    first = fc["features"][0]["properties"]
    want = rows.row(0, named=True)
    for key in ("quadkey", "zone", "before_chip", "after_chip", "before_catalog_id", "after_catalog_id", "before_date", "after_date"):
        assert first[key] == want[key], key
    assert first["embedding_distance"] is None and first["pixel_change"] is None  # null and NaN
    assert first["changed_area"] == 0.3 and first["score"] == 1.0 and first["compared_fraction"] == 0.5
    assert first["before_thumbnail"] == f"/api/chip/{want['before_chip']}/thumbnail.jpg"
    assert fc["features"][1]["properties"]["embedding_distance"] == pytest.approx(0.05)
    # the footprint holds the chip's centre and matches the file's bbox column
    shapely = pytest.importorskip("shapely")
    file_box = pl.read_parquet(changes[0]).filter(pl.col("rank") == 1)["bbox"][0]
    for f, row in zip(fc["features"], rows.iter_rows(named=True)):
        poly = shapely.geometry.shape(f["geometry"])
        assert poly.contains(shapely.Point(*chip_centre_lonlat(row["zone"], row["quadkey"])))
    bounds = shapely.geometry.shape(fc["features"][0]["geometry"]).bounds
    assert bounds == pytest.approx((file_box["xmin"], file_box["ymin"], file_box["xmax"], file_box["ymax"]), abs=1e-7)


def test_changes_top_and_bbox_filter(cclient, changes):
    _, rows = changes
    fc = cclient.get("/api/changes?bbox=-180,-90,180,90&top=3").json()
    assert [f["properties"]["rank"] for f in fc["features"]] == [1, 2, 3]
    assert fc["truncated"] and fc["in_view"] == rows.height
    # a small box on one chip's centre: that chip (its neighbours' footprints do not reach it)
    pick = rows.row(4, named=True)
    lon, lat = chip_centre_lonlat(pick["zone"], pick["quadkey"])
    fc = cclient.get(f"/api/changes?bbox={near(lon, lat)}").json()
    assert [f["properties"]["quadkey"] for f in fc["features"]] == [pick["quadkey"]]
    # a box over several chips: ranks ascending, every one of them meets the box
    big = cclient.get(f"/api/changes?bbox={near(lon, lat, 0.002)}").json()
    ranks = [f["properties"]["rank"] for f in big["features"]]
    assert 1 < len(ranks) < rows.height and ranks == sorted(ranks)
    assert cclient.get("/api/changes?bbox=10,10,11,11").json()["features"] == []


@pytest.mark.parametrize(
    "query,status",
    [
        ("bbox=1,2,3", 400),
        ("bbox=a,b,c,d", 400),
        ("bbox=10,0,5,1", 400),  # west > east
        ("bbox=0,0,1,nan", 400),
        ("bbox=0,0,1,1&top=0", 422),
        ("bbox=0,0,1,1&top=5001", 422),
        ("top=5", 422),
    ],
)
def test_changes_reject_bad_parameters(cclient, query, status):
    r = cclient.get(f"/api/changes?{query}")
    assert r.status_code == status and "detail" in r.json()


def test_changes_404_without_a_changes_file(client):
    for url in ("/api/changes?bbox=0,0,1,1", f"/api/changes/acquisitions?quadkey={CELL}00000&zone=10"):
        r = client.get(url)
        assert r.status_code == 404 and "--changes" in r.json()["detail"], url


def test_acquisitions_of_a_two_acquisition_chip(cclient, changes, viewer):
    _, rows = changes
    row = rows.row(2, named=True)
    body = cclient.get(f"/api/changes/acquisitions?quadkey={row['quadkey']}&zone={row['zone']}").json()
    acqs = body["acquisitions"]
    assert [a["chip"] for a in acqs] == [row["before_chip"], row["after_chip"]]  # sorted by date
    assert [a["acquisition_date"] for a in acqs] == [row["before_date"], row["after_date"]]
    assert {a["catalog_id"] for a in acqs} == set(viewer.sample.catalog_ids[:2])
    assert body["compared"] == {
        "rank": row["rank"],
        "score": row["score"],
        "before_chip": row["before_chip"],
        "after_chip": row["after_chip"],
    }
    for a in acqs:
        r = cclient.get(a["thumbnail"] + "?size=512")
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert cclient.get(f"/api/changes/acquisitions?chip={row['after_chip']}").json() == body
    # a chip of the other cell (one acquisition, no change row): listed, nothing compared
    other = viewer.manifest.filter(pl.col("cell") != CELL).row(0, named=True)
    body = cclient.get(f"/api/changes/acquisitions?chip={other['chip']}").json()
    assert [a["chip"] for a in body["acquisitions"]] == [other["chip"]] and body["compared"] is None


@pytest.mark.parametrize(
    "query,status",
    [
        ("quadkey=12002022303200000&zone=10", 404),  # well-formed, no such chip
        ("quadkey=1200202230320000&zone=11", 404),
        ("quadkey=12002022303x&zone=10", 400),
        ("quadkey=12002022303200000", 400),
        ("chip=Z10-12002022303200000_..jpg", 400),
        ("chip=12002022303200000", 400),
        ("quadkey=12002022303200000&zone=61", 422),
    ],
)
def test_acquisitions_reject_bad_parameters(cclient, query, status):
    r = cclient.get(f"/api/changes/acquisitions?{query}")
    assert r.status_code == status and "detail" in r.json(), r.text


def test_a_missing_or_bad_changes_file_fails_at_start(viewer, changes, tmp_path, monkeypatch):
    missing = tmp_path / "nope.parquet"
    with pytest.raises(ImagesimFileNotFoundError, match="nope.parquet"):
        create_app(viewer.sample.root, viewer.chips, None, changes=missing)
    bad = tmp_path / "bad.parquet"
    pl.DataFrame({"quadkey": ["1"], "score": [0.5]}).write_parquet(bad)
    with pytest.raises(InvalidArgumentError, match="bad.parquet.*missing column"):
        create_app(viewer.sample.root, viewer.chips, None, changes=bad)
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"not parquet")
    with pytest.raises(InvalidArgumentError, match="garbage.parquet"):
        create_app(viewer.sample.root, viewer.chips, None, changes=garbage)
    # the factory of several workers takes the file from the environment
    from imagesim.search.serve.app import app_from_env

    monkeypatch.setenv("IMAGESIM_SERVE_ARD", str(viewer.sample.root))
    monkeypatch.setenv("IMAGESIM_SERVE_CHIPS", str(viewer.chips))
    monkeypatch.setenv("IMAGESIM_SERVE_CHANGES", str(missing))
    with pytest.raises(ImagesimFileNotFoundError, match="nope.parquet"):
        app_from_env()
    monkeypatch.setenv("IMAGESIM_SERVE_CHANGES", str(changes[0]))
    assert app_from_env().state.changes.table.height == changes[1].height


def test_cli_serve_has_the_changes_option():
    import typer
    from typer.testing import CliRunner

    from imagesim.cli.search import register

    app = typer.Typer()

    @app.callback()
    def main() -> None:
        pass

    register(app)
    result = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"})
    assert result.exit_code == 0 and "--changes" in result.output


def test_page_has_the_change_controls(cclient):
    page = cclient.get("/").text
    for element in ('id="show-changes"', 'id="change-view"', 'id="change-before"', 'id="change-after"', 'id="change-slider"'):
        assert element in page, element


@pytest.fixture(scope="module")
def live_changes(viewer, changes):
    with serving(create_app(viewer.sample.root, viewer.chips, viewer.index, changes=changes[0])) as base:
        yield base


def test_browser_change_layer_and_before_after(live_changes, changes):
    driver = headless_chrome()
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    _, rows = changes
    try:
        row = rows.row(0, named=True)
        lon, lat = chip_centre_lonlat(row["zone"], row["quadkey"])
        driver.get(f"{live_changes}/#17/{lat:.6f}/{lon:.6f}")
        wait = WebDriverWait(driver, 20)
        wait.until(lambda d: d.execute_script("return document.body.dataset.ready === '1'"))
        assert driver.find_element(By.ID, "change-layer").is_displayed()
        assert not driver.find_elements(By.CSS_SELECTOR, "path.change-outline")
        driver.find_element(By.ID, "show-changes").click()
        wait.until(lambda d: int(d.execute_script("return document.body.dataset.changes || '0'")) > 0)
        outlines = driver.find_elements(By.CSS_SELECTOR, ".leaflet-changes-pane path.change-outline")
        assert len(outlines) == int(driver.execute_script("return document.body.dataset.changes"))
        colours = {o.get_attribute("stroke") for o in outlines}
        assert len(colours) > 1  # coloured by score
        # the outline under the map centre: the rank-1 chip the URL pointed at
        size = driver.find_element(By.ID, "map").size
        target = next(
            o
            for o in outlines
            if o.rect["x"] < size["width"] / 2 < o.rect["x"] + o.rect["width"]
            and o.rect["y"] < size["height"] / 2 < o.rect["y"] + o.rect["height"]
        )
        target.click()
        wait.until(lambda d: d.execute_script("return document.body.dataset.changeAcquisitions === '2'"))
        assert driver.find_element(By.ID, "change-view").is_displayed()
        assert driver.execute_script("return document.body.dataset.changeOpen") == "1"
        assert driver.find_element(By.ID, "change-before").get_attribute("value") == row["before_chip"]
        assert driver.find_element(By.ID, "change-after").get_attribute("value") == row["after_chip"]
        assert len(driver.find_elements(By.CSS_SELECTOR, "#change-before option")) == 2
        wait.until(
            lambda d: d.execute_script(
                "return ['change-before-img', 'change-after-img'].every(id => { const i = document.getElementById(id); return i.complete && i.naturalWidth > 0; })"
            )
        )
        srcs = [driver.find_element(By.ID, f"change-{s}-img").get_attribute("src") for s in ("before", "after")]
        assert srcs[0].endswith(f"{row['before_chip']}/thumbnail.jpg?size=512") and srcs[1].endswith(
            f"{row['after_chip']}/thumbnail.jpg?size=512"
        )
        assert "rank #1" in driver.find_element(By.ID, "change-figures").text
        # the click opened the view and added no search example
        assert driver.find_element(By.ID, "examples").get_attribute("hidden") is not None
        assert "positive" not in driver.execute_script("return location.search")
        # swipe: the after image over the before one, clipped at the slider
        clip = "return document.getElementById('change-after-img').style.clipPath"
        assert driver.execute_script(clip) in ("", "none")
        driver.find_element(By.ID, "change-swipe").click()
        assert driver.find_element(By.ID, "change-slider").is_displayed()
        assert driver.execute_script(clip) == "inset(0px 0px 0px 50%)"
        driver.execute_script("const s = document.getElementById('change-slider'); s.value = 20; s.dispatchEvent(new Event('input'));")
        assert driver.execute_script(clip) == "inset(0px 0px 0px 20%)"
        boxes = [driver.find_element(By.ID, f"change-{s}-img").rect for s in ("before", "after")]
        assert boxes[0]["x"] == boxes[1]["x"] and boxes[0]["y"] == boxes[1]["y"] and boxes[0]["width"] > 0  # stacked
        # toggling the layer off removes the outlines
        driver.find_element(By.ID, "change-close").click()
        assert not driver.find_element(By.ID, "change-view").is_displayed()
        driver.find_element(By.ID, "show-changes").click()
        assert not driver.find_elements(By.CSS_SELECTOR, "path.change-outline")
        severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not severe, severe
    finally:
        driver.quit()
