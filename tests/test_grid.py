"""ARD grid: DESIGN.md check values, round trips, mercantile's digit order, chip names."""

from __future__ import annotations

from pathlib import Path

import mercantile
import pytest

from imagesim import grid
from imagesim.errors import GridError, ImagesimFileNotFoundError


def test_design_check_values() -> None:
    assert grid.bounds("120020223032") == (550_000.0, 4_180_000.0, 555_000.0, 4_185_000.0)
    assert grid.bounds("300000000000") == (500_000.0, 9_995_000.0, 505_000.0, 10_000_000.0)
    assert grid.epsg("120020223032", 10) == 32610
    assert grid.epsg("300000000000", 33) == 32733


@pytest.mark.parametrize("z", [12, 17, 18])
def test_tile_side(z: int) -> None:
    qk = "120020223032" + "0" * (z - 12)
    b = grid.bounds(qk)
    assert b.east - b.west == 20_480_000 / 2**z
    assert b.north - b.south == 20_480_000 / 2**z


def test_digit_order_matches_mercantile() -> None:
    # Same Bing-style digit order as mercantile (the quadtree is the same, only the CRS differs).
    for x, y, z in [(0, 0, 1), (1, 0, 1), (0, 1, 1), (1, 1, 1), (1234, 3071, 12), (70000, 12345, 17)]:
        qk = mercantile.quadkey(x, y, z)
        assert grid.tile_to_quadkey((x, y, z)) == qk
        assert grid.quadkey_to_tile(qk) == (x, y, z)


def test_round_trip_and_children() -> None:
    kids = grid.children("120020223032", 17)
    assert len(kids) == 1024
    assert len(set(kids)) == 1024
    assert all(k.startswith("120020223032") and len(k) == 17 for k in kids)
    for k in kids[::97]:
        assert grid.tile_to_quadkey(grid.quadkey_to_tile(k)) == k
    # Children tile the parent exactly.
    parent = grid.bounds("120020223032")
    boxes = [grid.bounds(k) for k in kids]
    assert min(b.west for b in boxes) == parent.west
    assert max(b.north for b in boxes) == parent.north
    assert sum((b.east - b.west) * (b.north - b.south) for b in boxes) == pytest.approx(5000.0**2)


def test_chip_windows_and_geotransform() -> None:
    assert grid.chip_window("12002022303200000") == (512, 512, 512, 512)
    assert grid.chip_window("12002022303233333") == (512 + 31 * 512, 512 + 31 * 512, 512, 512)
    assert grid.chip_window("120020223032000001") == (768, 512, 256, 256)
    gt = grid.cell_geotransform("120020223032")
    # The window's pixel origin lands on the chip's own bounds.
    qk = "12002022303212301"
    col, row, w, _ = grid.chip_window(qk)
    b = grid.bounds(qk)
    assert gt[0] + col * gt[1] == pytest.approx(b.west)
    assert gt[3] + row * gt[5] == pytest.approx(b.north)
    assert w * gt[1] == pytest.approx(b.east - b.west)


def test_southern_windows_use_shifted_bounds() -> None:
    gt = grid.cell_geotransform("300000000000")
    assert gt[3] == pytest.approx(10_000_000 + 512 * grid.PIXEL_SIZE)


def test_chip_names() -> None:
    name = grid.chip_name(33, "12002022303213012", "103001005D31F500")
    assert name == "Z33-12002022303213012_103001005D31F500.jpg"
    parsed = grid.parse_chip_name(name)
    assert parsed == (33, "12002022303213012", "103001005D31F500")
    assert parsed.cell == "120020223032"
    assert grid.parse_chip_name("Z7-120020223032130_ABC.jpg").zone == 7


@pytest.mark.parametrize(
    "bad",
    ["Z61-12002022303213012_A.jpg", "Z33-1200_A.jpg", "Z33-12002022303213012_A.png", "Z33-1200202230321301x_A.jpg", ""],
)
def test_bad_chip_names(bad: str) -> None:
    with pytest.raises(GridError):
        grid.parse_chip_name(bad)
    with pytest.raises(ValueError):  # GridError is a ValueError too
        grid.parse_chip_name(bad)


@pytest.mark.parametrize("bad", ["1204", "12x", "1" * 31])
def test_bad_quadkeys(bad: str) -> None:
    with pytest.raises(GridError, match="quadkey"):
        grid.quadkey_to_tile(bad)


def test_cog_path_from_chip(tmp_path: Path) -> None:
    for zone, zone_dir in [(7, "7"), (33, "33"), (8, "08")]:
        d = tmp_path / zone_dir / "120020223032" / "2021-03-04"
        d.mkdir(parents=True)
        (d / "ABC-visual.tif").write_bytes(b"")
        found = grid.cog_path_from_chip(f"Z{zone}-12002022303213012_ABC.jpg", tmp_path)
        assert found == d / "ABC-visual.tif"
    # Any chip zoom >= 12 maps back to its cell.
    assert grid.cog_path_from_chip("Z7-120020223032_ABC.jpg", tmp_path).name == "ABC-visual.tif"
    assert grid.cog_path_from_chip("Z7-12002022303213012301_ABC.jpg", tmp_path).name == "ABC-visual.tif"
    with pytest.raises(ImagesimFileNotFoundError, match="no COG found"):
        grid.cog_path_from_chip("Z7-12002022303213012_XYZ.jpg", tmp_path)
    with pytest.raises(FileNotFoundError):
        grid.cog_path_from_chip("Z9-12002022303213012_ABC.jpg", tmp_path)
