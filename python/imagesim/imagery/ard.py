"""Finding the `-visual.tif` COGs of an ARD delivery tree.

Layout (the ARD delivery layout; see ``docs/architecture.md``):
``<root>/<utm-zone>/<level-12 quadkey>/<YYYY-MM-DD>/<catalog-id>-visual.tif``.
Other files are ignored; a ``-visual.tif`` in the wrong place is reported, never silently dropped.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from imagesim import options
from imagesim.errors import ArdLayoutError, ImagesimFileNotFoundError, InvalidArgumentError
from imagesim.storage import StorePath, is_url

VISUAL_SUFFIX = "-visual.tif"
_ZONE = re.compile(r"^\d{1,2}$")
_CELL = re.compile(r"^[0-3]{12}$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_CATALOG_ID = re.compile(r"^[A-Za-z0-9-]{1,64}$")


@dataclass(frozen=True)
class Acquisition:
    """One `-visual.tif` of the delivery, with where it sits in the grid."""

    zone: int
    cell: str
    date: str
    catalog_id: str
    visual: Path | StorePath

    @property
    def metadata(self) -> Path | StorePath:
        return self.visual.with_name(f"{self.catalog_id}.json")

    @property
    def data_mask(self) -> Path | StorePath:
        return self.visual.with_name(f"{self.catalog_id}-data-mask.gpkg")


@dataclass(frozen=True)
class Misplaced:
    """A `-visual.tif` found outside the expected layout."""

    path: Path | StorePath
    reason: str


def find_acquisitions(
    root: str | Path | StorePath,
    *,
    zones: list[int] | None = None,
    quadkeys: list[str] | None = None,
    catalog_ids: list[str] | None = None,
) -> tuple[list[Acquisition], list[Misplaced]]:
    """All acquisitions under ``root`` matching the filters, sorted by zone, cell, date.

    ``quadkeys`` are cell quadkeys or coarser prefixes (at most 12 digits). ``root`` may be an
    object-store URL (``s3://bucket/delivery``): the delivery is then listed in the store.
    """
    lo, hi = options.QUADKEY_PREFIX_DIGITS
    for qk in quadkeys or []:
        if not re.fullmatch(rf"[0-3]{{{lo},{hi}}}", qk):
            raise InvalidArgumentError(
                f"`quadkeys` {qk!r}: give a cell quadkey or a prefix of one ({lo}-{hi} digits 0-3)", param="quadkeys"
            )
    for z in zones or []:
        options.check_range("zones", z, *options.UTM_ZONE_RANGE, what="a UTM zone")
    if is_url(root):
        return _find_in_store(str(root), zones, quadkeys, catalog_ids)
    root = Path(root)
    if not root.exists():
        raise ImagesimFileNotFoundError(f"{root}: ARD path does not exist")
    if not root.is_dir():
        raise ArdLayoutError(f"{root}: ARD path is not a directory")

    # The original tool took the zone folder itself (`--ard-path ard/33`); accept both.
    base = root.parent if _is_zone_folder(root) else root
    visuals = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            if name.endswith(VISUAL_SUFFIX):
                path = Path(dirpath) / name
                visuals.append((path.relative_to(base).parts, path))
    return _sort_out(visuals, zones, quadkeys, catalog_ids)


def _sort_out(
    visuals: Sequence[tuple[tuple[str, ...], Path | StorePath]],
    zones: list[int] | None,
    quadkeys: list[str] | None,
    catalog_ids: list[str] | None,
) -> tuple[list[Acquisition], list[Misplaced]]:
    """Acquisitions matching the filters (sorted) and misplaced files, from (parts below the root, file)."""
    found: list[Acquisition] = []
    misplaced: list[Misplaced] = []
    for parts, visual in visuals:
        acq = _parse_parts(parts, visual)
        if isinstance(acq, Misplaced):
            misplaced.append(acq)
        elif _wanted(acq, zones, quadkeys, catalog_ids):
            found.append(acq)
    found.sort(key=lambda a: (a.zone, a.cell, a.date, a.catalog_id))
    return found, misplaced


def _find_in_store(
    root: str, zones: list[int] | None, quadkeys: list[str] | None, catalog_ids: list[str] | None
) -> tuple[list[Acquisition], list[Misplaced]]:
    prefix = root.rstrip("/") + "/"
    objects = list(StorePath(root).files())
    if not objects:
        raise ImagesimFileNotFoundError(f"{root}: no objects under this ARD prefix")
    parts_of = [(obj.url[len(prefix) :].split("/"), obj) for obj, _, _ in objects if obj.url.startswith(prefix)]
    # Like a local zone folder, accept a prefix that is one zone of the delivery.
    last = root.rstrip("/").rsplit("/", 1)[-1]
    visual_parts = [p for p, _ in parts_of if p[-1].endswith(VISUAL_SUFFIX)]
    zone_prefix = _ZONE.match(last) is not None and all(len(p) == 3 for p in visual_parts)
    visuals = [(tuple([last, *parts] if zone_prefix else parts), obj) for parts, obj in parts_of if parts[-1].endswith(VISUAL_SUFFIX)]
    return _sort_out(visuals, zones, quadkeys, catalog_ids)


def _is_zone_folder(path: Path) -> bool:
    if not _ZONE.match(path.name):
        return False
    return any(child.is_dir() and _CELL.match(child.name) for child in path.iterdir())


def _parse_parts(parts: tuple[str, ...], path: Path | StorePath) -> Acquisition | Misplaced:
    expected = "<zone>/<12-digit quadkey>/<YYYY-MM-DD>/<catalog-id>-visual.tif"
    if len(parts) != 4:
        return Misplaced(path, f"not at {expected} below the ARD root")
    zone, cell, date, name = parts
    catalog_id = name[: -len(VISUAL_SUFFIX)]
    if not _ZONE.match(zone) or not 1 <= int(zone) <= 60:
        return Misplaced(path, f"zone folder {zone!r} is not a UTM zone 1..60")
    if not _CELL.match(cell):
        return Misplaced(path, f"cell folder {cell!r} is not a 12-digit quadkey")
    if not _DATE.match(date):
        return Misplaced(path, f"date folder {date!r} is not YYYY-MM-DD")
    if not _CATALOG_ID.match(catalog_id):
        return Misplaced(path, f"catalog id {catalog_id!r} has characters other than letters, digits and '-'")
    return Acquisition(int(zone), cell, date, catalog_id, path)


def _wanted(acq: Acquisition, zones: list[int] | None, quadkeys: list[str] | None, catalog_ids: list[str] | None) -> bool:
    if zones and acq.zone not in zones:
        return False
    if quadkeys and not any(acq.cell.startswith(q) for q in quadkeys):
        return False
    return not catalog_ids or acq.catalog_id in catalog_ids
