"""`imagesim serve` answers bad input and bad files with 4xx/5xx JSON and one log line, never a 500 traceback.

A COG block whose JPEG data is damaged is drawn as no-data (the tile answers 200) and logged once per
(file, block); a COG that cannot be opened answers 502 naming the acquisition, logged once; chip names
with non-ASCII digits ("Z１０-…", "Z١٠-…") are refused like any malformed name. The deliveries here are
one-COG copies of the small sample; the damaged one has the start of one level-0 tile zeroed (no SOI).
"""

from __future__ import annotations

import io
import logging
import shutil
import struct
from pathlib import Path
from typing import NamedTuple

import numpy as np
import polars as pl
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("faiss")
pytest.importorskip("mercantile")

import mercantile  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from imagesim import grid  # noqa: E402
from imagesim.cog import open_cog  # noqa: E402
from imagesim.search.serve.app import create_app  # noqa: E402
from imagesim.search.serve.tiles import EARTH_HALF, TILE, Transformers  # noqa: E402

LOGGER = "imagesim.search.serve"
BLOCK = 512
ACROSS = -(-grid.COG_PIXELS // BLOCK)  # blocks across level 0 of an ARD COG


def decode(resp) -> Image.Image:
    im = Image.open(io.BytesIO(resp.content))
    im.load()
    return im


def chip_centre_lonlat(zone: int, quadkey: str) -> tuple[float, float]:
    from pyproj import Transformer

    b = grid.bounds(quadkey)
    lon, lat = Transformer.from_crs(grid.epsg(quadkey, zone), 4326, always_xy=True).transform(
        (b.west + b.east) / 2, (b.south + b.north) / 2
    )
    return float(lon), float(lat)


def tile_at_cog_pixel(cog: Path, col: float, row: float, z: int) -> mercantile.Tile:
    """The Web Mercator tile over pixel (col, row) of level 0 of a COG."""
    from pyproj import Transformer

    c = open_cog(cog)
    gt = c.geotransform
    lon, lat = Transformer.from_crs(c.epsg, 4326, always_xy=True).transform(gt[0] + col * gt[1], gt[3] + row * gt[5])
    return mercantile.tile(lon, lat, z)


def level0_tiles(path: Path) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """TileOffsets and TileByteCounts of the first IFD (classic TIFF or BigTIFF)."""
    data = path.read_bytes()
    bo = "<" if data[:2] == b"II" else ">"
    big = struct.unpack(bo + "H", data[2:4])[0] == 43
    word, count_fmt, entry = ("Q", "Q", 20) if big else ("I", "H", 12)
    off = struct.unpack(bo + word, data[8:16] if big else data[4:8])[0]
    head = struct.calcsize(bo + count_fmt)
    n = struct.unpack(bo + count_fmt, data[off : off + head])[0]
    tags: dict[int, tuple[int, ...]] = {}
    for i in range(n):
        e = data[off + head + i * entry : off + head + (i + 1) * entry]
        inline = 8 if big else 4
        tag, typ, cnt = struct.unpack(bo + ("HHQ" if big else "HHI"), e[: entry - inline])
        size, fmt = {3: (2, "H"), 4: (4, "I"), 16: (8, "Q")}.get(typ, (0, ""))
        if tag in (324, 325) and size:
            raw = e[entry - inline :]
            if size * cnt > inline:
                at = struct.unpack(bo + word, raw)[0]
                raw = data[at : at + size * cnt]
            tags[tag] = struct.unpack(bo + fmt * cnt, raw[: size * cnt])
    return tags[324], tags[325]


class Damaged(NamedTuple):
    pristine: Path  # ARD root with the intact COG
    damaged: Path  # ARD root with the same COG, one level-0 block damaged
    cog: Path  # the damaged COG
    block: tuple[int, int]  # (col, row) of the damaged block
    chips: Path  # an (empty) chips folder


def one_cog_delivery(root: Path, cog: Path) -> Path:
    dst = root / "ard" / cog.relative_to(cog.parents[3])
    dst.parent.mkdir(parents=True)
    shutil.copyfile(cog, dst)
    return dst


@pytest.fixture(scope="module")
def damaged(tmp_path_factory, small_sample) -> Damaged:
    base = tmp_path_factory.mktemp("serve-errors")
    cog = next(p for p in small_sample.cogs if p.name.startswith(small_sample.catalog_ids[1]))
    one_cog_delivery(base / "pristine", cog)
    bad = one_cog_delivery(base / "damaged", cog)
    offsets, counts = level0_tiles(bad)
    across = ACROSS
    assert len(offsets) == across * across
    # a block with imagery whose left, upper and upper-left neighbours have imagery too
    index = next(
        i
        for i, c in enumerate(counts)
        if i > across and i % across and c and counts[i - 1] and counts[i - across] and counts[i - across - 1]
    )
    with open(bad, "r+b") as f:
        f.seek(offsets[index])
        f.write(b"\0" * 64)  # no SOI marker, no tables: the decoder refuses the block
    chips = base / "chips"
    chips.mkdir()
    return Damaged(base / "pristine" / "ard", base / "damaged" / "ard", bad, (index % across, index // across), chips)


def client_for(ard: Path, chips: Path, index: Path | None = None, **kw) -> TestClient:
    return TestClient(create_app(ard, chips, index, **kw), base_url="http://127.0.0.1", raise_server_exceptions=False)


def cog_pixel_of_tile_pixels(cog: Path, z: int, x: int, y: int) -> tuple[np.ndarray, np.ndarray]:
    """(col, row) at level 0 of the COG under each tile pixel centre (exact, pyproj)."""
    c = open_cog(cog)
    gt = c.geotransform
    size = 2 * EARTH_HALF / (1 << z)
    west, north = -EARTH_HALF + x * size, EARTH_HALF - y * size
    t = (np.arange(TILE) + 0.5) * size / TILE
    mx, my = np.meshgrid(west + t, north - t)
    ux, uy = Transformers().get(3857, c.epsg).transform(mx, my)
    return (np.asarray(ux) - gt[0]) / gt[1], (np.asarray(uy) - gt[3]) / gt[5]


def damaged_records(caplog, cog: Path) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER and str(cog) in r.getMessage()]


@pytest.mark.parametrize("block_cache_mb", [256, 0])
def test_damaged_block_is_no_data_and_logged_once(damaged, caplog, block_cache_mb):
    caplog.set_level(logging.INFO, logger=LOGGER)
    bc, br = damaged.block
    x0, x1, y0, y1 = bc * BLOCK, (bc + 1) * BLOCK, br * BLOCK, (br + 1) * BLOCK
    margin = 2  # COG pixels: bilinear sampling and the nearest-neighbour mask blur the block edge by one

    def split(t: mercantile.Tile) -> tuple[np.ndarray, np.ndarray]:
        """Tile pixels well inside the damaged block, and well outside it."""
        cols, rows = cog_pixel_of_tile_pixels(damaged.cog, 19, t.x, t.y)
        inside = (cols > x0 + margin) & (cols < x1 - margin) & (rows > y0 + margin) & (rows < y1 - margin)
        outside = (cols < x0 - margin) | (cols > x1 + margin) | (rows < y0 - margin) | (rows > y1 + margin)
        return inside, outside

    # a z19 tile (level 0 is read there) near the damaged block's top-left corner, with plenty of both
    corner = tile_at_cog_pixel(damaged.cog, x0, y0, 19)
    near = [mercantile.Tile(corner.x + dx, corner.y + dy, 19) for dx in (-1, 0, 1) for dy in (-1, 0, 1)]
    t = max(near, key=lambda c: min(int(a.sum()) for a in split(c)))
    inside, outside = split(t)
    assert inside.sum() > 8000 and outside.sum() > 8000
    url = f"/tiles/19/{t.x}/{t.y}"
    good = np.asarray(decode(client_for(damaged.pristine, damaged.chips).get(url + ".png")))
    assert good[..., 3].min() == 255  # all imagery without the damage

    client = client_for(damaged.damaged, damaged.chips, block_cache_mb=block_cache_mb)
    r = client.get(url + ".png")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png", r.text
    got = np.asarray(decode(r))
    assert (got[..., 3][inside] == 0).all()  # the damaged block: no-data, transparent
    assert (got[..., 3][outside] == 255).all()  # the other blocks: drawn, exactly as without the damage
    assert np.array_equal(got[outside], good[outside])
    # JPEG: the damaged block black (no-data), the rest imagery
    jpg = client.get(url + ".jpg")
    assert jpg.status_code == 200 and jpg.headers["content-type"] == "image/jpeg"
    rgb = np.asarray(decode(jpg)).astype(int)
    assert rgb[inside].max(axis=1).mean() < 8 < good[..., :3][inside].max(axis=1).mean()

    logged = damaged_records(caplog, damaged.cog)
    assert len(logged) == 1, [r.getMessage() for r in logged]
    message = logged[0].getMessage()
    assert f"block (col {bc}, row {br}) of level 0" in message and "no-data" in message
    assert logged[0].exc_info is None and logged[0].levelno == logging.WARNING
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    # more requests touching the block (the same tile, a neighbour): nothing new in the log
    caplog.clear()
    for u in (url + ".png", url + ".jpg", f"/tiles/19/{t.x - 1}/{t.y}.png", f"/tiles/19/{t.x}/{t.y - 1}.png"):
        assert client.get(u).status_code in (200, 204), u
    assert damaged_records(caplog, damaged.cog) == []
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


@pytest.mark.parametrize("how", ["garbage header", "deleted after start"])
def test_unreadable_cog_answers_502_logged_once(damaged, tmp_path, small_sample, caplog, how):
    caplog.set_level(logging.INFO, logger=LOGGER)
    cog = one_cog_delivery(tmp_path, small_sample.cogs[0])
    counts = level0_tiles(cog)[1]
    with_data = [i for i, c in enumerate(counts) if c]
    middle = with_data[len(with_data) // 2]
    t = tile_at_cog_pixel(cog, (middle % ACROSS + 0.5) * BLOCK, (middle // ACROSS + 0.5) * BLOCK, 17)
    assert client_for(tmp_path / "ard", damaged.chips).get(f"/tiles/17/{t.x}/{t.y}.jpg").status_code == 200  # intact: imagery
    client = client_for(tmp_path / "ard", damaged.chips)
    if how == "garbage header":
        cog.write_bytes(b"this is not a TIFF" * 10)
    else:
        cog.unlink()
    for fmt in ("jpg", "png", "jpg"):
        r = client.get(f"/tiles/17/{t.x}/{t.y}.{fmt}")
        assert r.status_code == 502 and r.headers["content-type"] == "application/json", r.text
        detail = r.json()["detail"]
        assert small_sample.catalog_ids[0] in detail and "cannot be read" in detail
        assert str(tmp_path) not in r.text and "Traceback" not in r.text
    logged = [r for r in caplog.records if r.name == LOGGER]
    assert len(logged) == 1, [r.getMessage() for r in logged]
    assert str(cog) in logged[0].getMessage() and logged[0].exc_info is None


# --- names, quadkeys and other bad input ---


class Indexed(NamedTuple):
    client: TestClient
    chip: str  # a chip in the index


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, small_sample, damaged) -> Indexed:
    """The small sample with an index of 16 stand-in chips (no chipping: the names are enough)."""
    from imagesim.search.index import build_index

    from embedding_table import embeddings_table

    base = tmp_path_factory.mktemp("serve-errors-index")
    cell, cat = small_sample.cells[0], small_sample.catalog_ids[1]
    qks = grid.children(cell, 17)[:16]
    manifest = pl.DataFrame(
        {
            "chip": [grid.chip_name(small_sample.zone, q, cat) for q in qks],
            "zone": [small_sample.zone] * len(qks),
            "quadkey": qks,
            "cell": [cell] * len(qks),
            "catalog_id": [cat] * len(qks),
        }
    )
    vectors = np.random.default_rng(1).normal(size=(len(qks), 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    embeddings_table(manifest, vectors, "m", [["building"]] * len(qks)).write_parquet(base / "embeddings.parquet")
    build_index(base / "embeddings.parquet", base / "index")
    return Indexed(client_for(small_sample.root, damaged.chips, base / "index"), manifest["chip"][0])


QK = "12002022303200000"
NON_ASCII_NAMES = [
    f"Z１０-{QK}_AB.jpg",  # full-width digits
    f"Z١٠-{QK}_AB.jpg",  # Arabic-Indic
    f"Z१०-{QK}_AB.jpg",  # Devanagari
    f"Z1²-{QK}_AB.jpg",  # superscript
    f"Z1０-{QK}_AB.jpg",  # mixed ASCII and full-width
    f"Z10-{QK[:-1]}３_AB.jpg",  # full-width quadkey digit
    f"Z10-{'١٢٠٠٢٠٢٢٣٠٣٢'}_AB.jpg",  # Arabic-Indic quadkey
    f"Z10-{QK}_AB１.jpg",  # full-width digit in the catalog id
    f"Z１０-{QK}_AB",  # without .jpg
]


def no_errors_logged(caplog) -> None:
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not bad, [r.getMessage() for r in bad]


@pytest.mark.parametrize("name", NON_ASCII_NAMES)
def test_non_ascii_chip_names_are_400(indexed, caplog, name):
    caplog.set_level(logging.INFO)
    for url in (f"/api/similar?chip={name}", f"/api/chip/{name}/thumbnail.jpg"):
        r = indexed.client.get(url)
        assert r.status_code == 400, (url, r.status_code, r.text)
        assert r.headers["content-type"] == "application/json" and r.json()["detail"]
    no_errors_logged(caplog)


@pytest.mark.parametrize("quadkey", ["１２００２０２２３０３２", "١٢٠٠٢٠٢٢٣٠٣٢", "12002022303²", "120020223034", "1200202230320000４"])
def test_bad_quadkeys_are_400(indexed, caplog, quadkey):
    caplog.set_level(logging.INFO)
    r = indexed.client.get(f"/api/similar?chip={quadkey}")
    assert r.status_code == 400 and r.json()["detail"], r.text
    no_errors_logged(caplog)


@pytest.mark.parametrize(
    "url,status",
    [
        ("/api/similar?chip=Z61-12002022303200000_AB.jpg", 400),  # zone outside 1..60
        ("/api/similar?chip=Z00-12002022303200000_AB.jpg", 400),
        ("/api/chip/Z0-12002022303200000_AB.jpg/thumbnail.jpg", 400),
        ("/api/similar?chip=Z60-12002022303200000_AB.jpg", 404),  # a zone the delivery does not have
        ("/api/chip/Z60-12002022303200000_AB.jpg/thumbnail.jpg", 404),
        ("/api/similar?chip=Z10-12002022303400000_AB.jpg", 400),  # quadkey digit 4
        ("/tiles/25/0/0.jpg", 422),  # zoom out of range
        ("/tiles/3/8/0.png", 400),  # x outside the zoom's grid
        ("/tiles/3/0/99999999999999999999.jpg", 400),
        ("/tiles/3/0/0.jpg?acquisition=%EF%BC%91%EF%BC%90", 400),  # full-width "１０"
        ("/tiles/3/0/0.jpg?acquisition=AB%0A", 400),  # `$` passes a trailing newline; `\Z` does not
        ("/tilejson.json?acquisition=AB%0A", 400),
    ],
)
def test_other_bad_input_is_4xx(indexed, caplog, url, status):
    caplog.set_level(logging.INFO)
    r = indexed.client.get(url)
    assert r.status_code == status, (url, r.status_code, r.text)
    assert r.headers["content-type"] == "application/json" and r.json()["detail"]
    no_errors_logged(caplog)


def test_deepest_zoom_over_imagery_renders(indexed, damaged):
    bc, br = damaged.block
    for z in (20, 24):
        t = tile_at_cog_pixel(damaged.cog, (bc + 0.5) * BLOCK, (br + 0.5) * BLOCK, z)  # intact in the sample
        r = indexed.client.get(f"/tiles/{z}/{t.x}/{t.y}.png")
        assert r.status_code == 200 and decode(r).size == (TILE, TILE), (z, r.text)


def test_without_an_index_the_api_says_so(damaged, small_sample, caplog):
    caplog.set_level(logging.INFO)
    client = client_for(small_sample.root, damaged.chips, None)
    for url in ("/api/similar?chip=12002022303200000", "/api/chips?bbox=0,0,1,1"):
        r = client.get(url)
        assert r.status_code == 404 and r.json() == {"detail": "no index loaded"}, url
    assert client.get("/api/info").json()["index"] is None
    no_errors_logged(caplog)


def test_grid_errors_answer_400_not_500(indexed, monkeypatch, caplog):
    """A grid error escaping a handler is about the request's name or quadkey: 400 with its message."""
    from imagesim.errors import GridError

    caplog.set_level(logging.INFO)

    def refuse(*a, **k):
        raise GridError("quadkey \"4\" has digit '4'; only 0-3 are allowed")

    monkeypatch.setattr(indexed.client.app.state.renderer, "render", refuse)
    name = grid.parse_chip_name(indexed.chip)
    t = mercantile.tile(*chip_centre_lonlat(name.zone, name.quadkey), 17)
    r = indexed.client.get(f"/tiles/17/{t.x}/{t.y}.jpg")
    assert r.status_code == 400 and "only 0-3" in r.json()["detail"]
    no_errors_logged(caplog)
