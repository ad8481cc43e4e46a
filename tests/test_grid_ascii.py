"""Zones, quadkeys, chip names and catalog ids take ASCII digits only, in Python as in Rust.

Python's ``\\d`` and ``str.isdigit()`` (and ``int()``) accept full-width "１０", Arabic-Indic "١٠" or
Devanagari "१०" (and ``isdigit()`` superscript "²"); such names must be refused like any malformed one,
with a GridError (or skipped as not-a-zone folder), never taken for zone 10 or crash with another error.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from imagesim import grid
from imagesim.errors import GridError

QK = "12002022303213012"
MALFORMED = [
    f"Z１０-{QK}_AB.jpg",  # full-width zone
    f"Z١٠-{QK}_AB.jpg",  # Arabic-Indic zone
    f"Z१०-{QK}_AB.jpg",  # Devanagari zone
    f"Z1²-{QK}_AB.jpg",  # superscript
    f"Z²-{QK}_AB.jpg",
    f"Z1０-{QK}_AB.jpg",  # mixed ASCII and full-width
    f"Z10-{QK[:-1]}３_AB.jpg",  # full-width quadkey digit
    f"Z10-{'١٢٠٠٢٠٢٢٣٠٣٢١٣٠١٢'}_AB.jpg",  # Arabic-Indic quadkey
    f"Z10-{QK}_AB１.jpg",  # full-width digit in the catalog id
    f"Z10-{QK}_ABé.jpg",
    f"Z10-{QK}_AB\udc80.jpg",  # an undecodable file name (surrogate escape)
    f"Z10-{QK}_AB.jpg\n",
]


def test_ascii_chip_name_parses():
    assert grid.parse_chip_name(f"Z10-{QK}_AB-1.jpg") == grid.ChipName(10, QK, "AB-1")


@pytest.mark.parametrize("name", MALFORMED)
def test_malformed_chip_names_raise_grid_error(name):
    with pytest.raises(GridError):
        grid.parse_chip_name(name)


@pytest.mark.parametrize("quadkey", ["１２００２０２２３０３２", "١٢٠٠٢٠٢٢٣٠٣٢", "12002022303²", "1200202230\udc80"])
def test_malformed_quadkeys_raise_grid_error(quadkey):
    for call in (grid.quadkey_to_tile, grid.bounds, lambda q: grid.epsg(q, 10)):
        with pytest.raises(GridError):
            call(quadkey)


@pytest.mark.parametrize("zone", [0, 61, 300, -1])
def test_zones_outside_1_60_raise_grid_error(zone):
    with pytest.raises(GridError, match="outside 1..60"):
        grid.epsg("120020223032", zone)
    with pytest.raises(GridError):
        grid.chip_name(zone, "120020223032", "AB")


def test_chip_name_with_undecodable_catalog_id_raises_grid_error():
    with pytest.raises(GridError, match="not valid text"):
        grid.chip_name(10, "120020223032", "AB\udc80")


def visual(root: Path, zone: str, cell: str = "120020223032", date: str = "2024-01-02", cat: str = "AB") -> Path:
    path = root / zone / cell / date / f"{cat}-visual.tif"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


@pytest.mark.parametrize(
    "zone,date",
    [("１０", "2024-01-02"), ("١٠", "2024-01-02"), ("10", "２０２４-01-02"), ("10", "2024-٠1-02")],
)
def test_ard_layout_takes_ascii_folder_names_only(tmp_path, zone, date):
    from imagesim.imagery.ard import find_acquisitions

    visual(tmp_path, "10", date="2023-05-06", cat="GOOD")
    bad = visual(tmp_path, zone, date=date)
    found, misplaced = find_acquisitions(tmp_path)
    assert [a.catalog_id for a in found] == ["GOOD"]
    assert [m.path for m in misplaced] == [bad]


def test_cell_folders_take_ascii_zone_folders_only(tmp_path):
    from imagesim.labels.cells import Cell, find_cells

    (tmp_path / "10" / "120020223032").mkdir(parents=True)
    (tmp_path / "１１" / "120020223033").mkdir(parents=True)
    (tmp_path / "١٢" / "120020223031").mkdir(parents=True)
    assert find_cells(tmp_path) == [Cell(10, "120020223032")]


@pytest.mark.parametrize("name", ["１０", "١٠", "²"])
def test_chips_folder_named_with_non_ascii_digits_is_no_zone_folder(tmp_path, name):
    from imagesim.artefacts import zone_folder

    folder = tmp_path / name
    folder.mkdir()
    assert zone_folder(folder) is None
