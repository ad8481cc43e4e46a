"""`grid.cog_path_from_chip` takes what a user has at hand: a chip path, a chip name with or without
`.jpg`, and the delivery root or one zone folder of it (`ard/33`, as the original tool took it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from imagesim import grid
from imagesim.errors import GridError, ImagesimFileNotFoundError

NAME = "Z33-12002022303213012_ABC"


@pytest.fixture
def ard(tmp_path: Path) -> Path:
    date = tmp_path / "ard" / "33" / "120020223032" / "2021-03-04"
    date.mkdir(parents=True)
    (date / "ABC-visual.tif").write_bytes(b"")
    return tmp_path / "ard"


@pytest.mark.parametrize(
    "chip",
    [f"{NAME}.jpg", NAME, f"/x/chips/33/{NAME}.jpg", f"chips/{NAME}.jpg", Path(f"/x/chips/33/{NAME}.jpg")],
    ids=["name", "name-without-jpg", "absolute-path", "relative-path", "Path"],
)
@pytest.mark.parametrize("root", ["root", "zone-folder"])
def test_chip_forms_and_roots(ard: Path, chip: str | Path, root: str) -> None:
    want = ard / "33" / "120020223032" / "2021-03-04" / "ABC-visual.tif"
    assert grid.cog_path_from_chip(chip, ard if root == "root" else ard / "33") == want
    assert grid.cog_path_from_chip(chip, str(ard / "33")) == want


def test_zone_folder_with_a_leading_zero(tmp_path: Path) -> None:
    date = tmp_path / "ard" / "08" / "120020223032" / "2021-03-04"
    date.mkdir(parents=True)
    (date / "ABC-visual.tif").write_bytes(b"")
    assert grid.cog_path_from_chip("Z8-12002022303213012_ABC", tmp_path / "ard" / "08") == date / "ABC-visual.tif"


def test_a_zone_folder_of_another_zone_is_not_searched(ard: Path) -> None:
    # Quadkeys repeat in every zone: a Z34 chip must not find zone 33's COG of the same cell.
    (ard / "34").mkdir()
    with pytest.raises(ImagesimFileNotFoundError, match="no COG found"):
        grid.cog_path_from_chip("Z34-12002022303213012_ABC", ard / "33")
    with pytest.raises(ImagesimFileNotFoundError, match="no COG found"):
        grid.cog_path_from_chip("Z34-12002022303213012_ABC.jpg", ard)


def test_not_a_chip_name(ard: Path) -> None:
    with pytest.raises(GridError, match="does not end in .jpg"):
        grid.cog_path_from_chip(f"{NAME}.png", ard)
    with pytest.raises(GridError):
        grid.cog_path_from_chip("/x/chips/33/", ard)
