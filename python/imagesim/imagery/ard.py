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
# The ARD vector masks beside each `-visual.tif` (`<catalog-id>-<file>.gpkg`), by the name imagesim
# gives each: the manifest column is `<name>_fraction` (imagery.masks), a taxonomy source `ard:<file>`.
DATA_MASK = "data-mask"
MASK_FILES: dict[str, str] = {
    "cloud": "cloud-mask",
    "cloud_shadow": "cloud-shadow-mask",
    "terrain_shadow": "terrain-shadow-mask",
    "water": "water-mask",
    "vegetation": "healthy-vegetation-mask",
}
# ASCII classes (`\d` takes "１０" and "١٠" too) and `\Z` (`$` lets a trailing newline through)
_ZONE = re.compile(r"^[0-9]{1,2}\Z")
_CELL = re.compile(r"^[0-3]{12}\Z")
_DATE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}\Z")
_CATALOG_ID = re.compile(r"^[A-Za-z0-9-]{1,64}\Z")


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
        return self.mask_path(DATA_MASK)

    def mask_path(self, file: str) -> Path | StorePath:
        """The GeoPackage ``<catalog-id>-<file>.gpkg`` beside the COG (``file``: a MASK_FILES value or DATA_MASK)."""
        return self.visual.with_name(f"{self.catalog_id}-{file}.gpkg")


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


# --------------------------------------------------------------------------------------------
# Why nothing was found: a hint naming the path to give instead
# --------------------------------------------------------------------------------------------

LAYOUT = "<zone>/<12-digit quadkey>/<YYYY-MM-DD>/<catalog-id>-visual.tif"


def _text(path: Path | StorePath) -> str:
    """A path as text for comparisons: absolute for local paths, the URL in a store."""
    return str(path) if isinstance(path, StorePath) else os.path.abspath(path)


def _up(root: Path | StorePath, levels: int) -> Path | StorePath:
    """``root``'s ancestor ``levels`` up, spelled like ``root`` where it can be (relative stays relative)."""
    if isinstance(root, StorePath):
        for _ in range(levels):
            root = root.parent
        return root
    norm = Path(os.path.normpath(root))
    if len(norm.parts) > levels and ".." not in norm.parts:
        return norm.parents[levels - 1]
    return Path(os.path.abspath(root)).parents[levels - 1]


def _delivery_root(path: Path | StorePath) -> Path | StorePath | None:
    """The delivery root of a `-visual.tif` whose last four path parts follow the layout, else None."""
    date = path.parent
    cell = date.parent
    zone = cell.parent
    acq = _parse_parts((zone.name, cell.name, date.name, path.name), path)
    return zone.parent if isinstance(acq, Acquisition) else None


def _inside(root: Path | StorePath, base: Path | StorePath) -> str:
    """``root`` as a folder inside the delivery ``base``: "a cell folder" …"""
    depth = _text(root)[len(_text(base)) + 1 :].count("/") + 1
    return {1: "a zone folder", 2: "a cell folder", 3: "an acquisition (date) folder"}.get(depth, "a folder inside a delivery")


def _give_root(root: Path | StorePath, base: Path | StorePath) -> str:
    zone = _text(root)[len(_text(base)) + 1 :].split("/")[0]
    return f"{root} is {_inside(root, base)} of a delivery: give `ard_path` the delivery root {base} (or the zone folder {base / zone})"


def folder_hint(root: str | Path | StorePath) -> str | None:
    """What a local folder holding no ARD layout is instead, as a hint naming `ard_path`; None when unknown.

    A cell (``<zone>/<qk12>``) or acquisition (``<zone>/<qk12>/<date>``) folder of a delivery, or a
    folder holding a delivery (a ``<zone>/<qk12>`` tree) one or two levels down.
    """
    if is_url(root):
        return None
    root = Path(root)
    names = Path(os.path.abspath(root)).parts
    for depth in (2, 3):  # root is <zone>/<qk12> or <zone>/<qk12>/<date>
        if len(names) > depth + 1:
            zone, cell = names[-depth], names[-depth + 1]
            if _ZONE.match(zone) and 1 <= int(zone) <= 60 and _CELL.match(cell) and (depth == 2 or _DATE.match(names[-1])):
                return _give_root(root, _up(root, depth))
    if not root.is_dir():
        return None
    level = [root]
    try:
        for down in ("one level", "two levels"):
            level = sorted(d for parent in level for d in parent.iterdir() if d.is_dir() and not d.name.startswith("."))
            for d in level:
                if any(z.is_dir() and _is_zone_folder(z) for z in d.iterdir()):
                    return f"an ARD delivery is {down} down: did you mean `ard_path` {d}?"
    except OSError:  # an unreadable folder: no hint rather than a second error
        pass
    return None


def explain_nothing_found(
    root: str | Path | StorePath,
    misplaced: Sequence[Misplaced] = (),
    *,
    zones: list[int] | None = None,
    quadkeys: list[str] | None = None,
    catalog_ids: list[str] | None = None,
) -> str:
    """Why :func:`find_acquisitions` found no acquisition under ``root``, and what to give instead.

    One line naming the parameters (`ard_path`, `zones` …): the delivery is a level or more down, or
    ``root`` is a cell folder inside one; the `-visual.tif` files are outside the layout; the filters
    match nothing; or there is no imagery at all.
    """
    root = StorePath(str(root)) if is_url(root) else Path(root)
    filters = {"zones": zones, "quadkeys": quadkeys, "catalog_ids": catalog_ids}
    if any(filters.values()):
        unfiltered, _ = find_acquisitions(root)
        if unfiltered:
            asked = ", ".join(f"`{name}` {' '.join(map(str, value))}" for name, value in filters.items() if value)
            cells = sorted({a.cell for a in unfiltered})
            listed = ", ".join(cells[:5]) + (f" … ({len(cells)} cells)" if len(cells) > 5 else "")
            return (
                f"none of the {len(unfiltered)} acquisitions under {root} matches {asked}: the delivery has "
                f"zone {', '.join(str(z) for z in sorted({a.zone for a in unfiltered}))}, cells {listed}"
            )
    # Where the misplaced files would be in place: the delivery root their last four parts give.
    roots: dict[str, tuple[Path | StorePath, int]] = {}
    for m in misplaced:
        base = _delivery_root(m.path)
        if base is not None:
            roots[_text(base)] = (base, roots.get(_text(base), (base, 0))[1] + 1)
    here = _text(root)
    if roots:
        key, (base, n) = max(roots.items(), key=lambda kv: kv[1][1])
        if key.startswith(here + "/"):
            down = key[len(here) + 1 :].count("/") + 1
            return (
                f"{n} -visual.tif {'file' if n == 1 else 'files'} found {'one level' if down == 1 else f'{down} levels'} down, "
                f"in the ARD layout under {base}: did you mean `ard_path` {base}?"
            )
        if here.startswith(key + "/"):
            depth = here[len(key) + 1 :].count("/") + 1
            return _give_root(root, _up(root, depth))
    if misplaced:
        n, first = len(misplaced), misplaced[0]
        return (
            f"{n} -visual.tif {'file' if n == 1 else 'files'} under {root} {'is' if n == 1 else 'are'} not in the ARD layout "
            f"{LAYOUT} (e.g. {first.path}: {first.reason})"
        )
    hint = folder_hint(root)
    if hint:
        return hint
    tifs = _count_tifs(root)
    if tifs:
        return (
            f"{tifs} .tif {'file' if tifs == 1 else 'files'} under {root} {'is' if tifs == 1 else 'are'} not in the ARD layout "
            f"{LAYOUT}: only <catalog-id>-visual.tif files filed that way are chipped"
        )
    return f"no -visual.tif under {root}: give `ard_path` the root of an ARD delivery ({LAYOUT})"


def _count_tifs(root: Path | StorePath) -> int:
    if isinstance(root, StorePath):
        return sum(1 for obj, _, _ in root.files() if obj.name.lower().endswith((".tif", ".tiff")))
    return sum(1 for _, _, names in os.walk(root) for name in names if name.lower().endswith((".tif", ".tiff")))
