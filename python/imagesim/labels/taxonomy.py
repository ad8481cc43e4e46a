"""Label taxonomy: which OSM tags make which multilabel class, and how each geometry type counts.

The taxonomy is a TOML file (the shipped default is ``imagesim/labels/data/taxonomy.toml``, documented
inline). Class ids are the order of the ``[[class]]`` tables.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from imagesim.errors import ImagesimFileNotFoundError, TaxonomyError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

DEFAULT_TAXONOMY = "default"
_RULES = ("polygons", "line_buffer_m", "point_buffer_m", "min_share")
_CLASS_KEYS = {"name", "match", "exclude", "source", *_RULES}
OSM_SOURCE = "osm"
# `source = "ard:<mask file>"`: the class's truth is an ARD mask (imagery.ard.MASK_FILES) instead of OSM tags.
ARD_SOURCE_PREFIX = "ard:"

# A tag filter: key -> None (any value) or the set of accepted values.
TagFilter = dict[str, "frozenset[str] | None"]


@dataclass(frozen=True)
class LabelClass:
    id: int
    name: str
    match: TagFilter
    exclude: TagFilter
    polygons: bool
    line_buffer_m: float
    point_buffer_m: float
    min_share: float
    source: str = OSM_SOURCE  # "osm" or "ard:<mask file>"

    @property
    def mask(self) -> str | None:
        """The ARD mask (a MASK_FILES key, e.g. "water") this class takes its truth from; None for OSM."""
        if not self.source.startswith(ARD_SOURCE_PREFIX):
            return None
        from imagesim.imagery.ard import MASK_FILES

        file = self.source[len(ARD_SOURCE_PREFIX) :]
        return next(name for name, f in MASK_FILES.items() if f == file)

    def accepts(self, tags: dict[str, str]) -> bool:
        return self.mask is None and _matches(self.match, tags) and not _matches(self.exclude, tags)


def _matches(flt: TagFilter, tags: dict[str, str]) -> bool:
    for key, values in flt.items():
        value = tags.get(key)
        if value is not None and (values is None or value in values):
            return True
    return False


@dataclass(frozen=True)
class Taxonomy:
    classes: tuple[LabelClass, ...]
    source: str  # file path, or "default"
    digest: str  # sha256 of the TOML text: labels built with another taxonomy are not mixed
    text: str = ""  # the TOML itself, kept with the labels so the same rules can be rebuilt

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.classes]

    def classes_for(self, tags: dict[str, str]) -> list[LabelClass]:
        """Every class whose filter selects an element with these tags."""
        return [c for c in self.classes if c.accepts(tags)]

    @property
    def mask_classes(self) -> list[LabelClass]:
        """The classes whose truth is an ARD mask (``source = "ard:…"``), not OSM."""
        return [c for c in self.classes if c.mask is not None]

    def describe(self) -> dict[str, Any]:
        """A JSON-friendly summary (stored beside the labels)."""
        return {
            "source": self.source,
            "sha256": self.digest,
            "toml": self.text,
            "classes": [
                {
                    "id": c.id,
                    "name": c.name,
                    "match": {k: sorted(v) if v is not None else "*" for k, v in c.match.items()},
                    "exclude": {k: sorted(v) if v is not None else "*" for k, v in c.exclude.items()},
                    "polygons": c.polygons,
                    "line_buffer_m": c.line_buffer_m,
                    "point_buffer_m": c.point_buffer_m,
                    "min_share": c.min_share,
                    "source": c.source,
                }
                for c in self.classes
            ],
        }


def load_taxonomy(path: str | Path | None = None) -> Taxonomy:
    """Read and validate a taxonomy TOML file (``None`` or ``"default"``: the shipped one)."""
    if path is None or str(path) == DEFAULT_TAXONOMY:
        text = resources.files("imagesim.labels").joinpath("data/taxonomy.toml").read_text(encoding="utf-8")
        return parse_taxonomy(text, DEFAULT_TAXONOMY)
    path = Path(path)
    if not path.is_file():
        raise ImagesimFileNotFoundError(f"{path}: taxonomy file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TaxonomyError(f"{path}: cannot read taxonomy ({exc})") from None
    return parse_taxonomy(text, str(path))


def parse_taxonomy(text: str, source: str = "<string>") -> Taxonomy:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TaxonomyError(f"{source}: not valid TOML ({exc})") from None
    defaults = doc.get("defaults", {})
    if not isinstance(defaults, dict) or set(defaults) - set(_RULES):
        raise TaxonomyError(f"{source}: [defaults] may only set {', '.join(_RULES)}")
    base = {"polygons": True, "line_buffer_m": 0.0, "point_buffer_m": 0.0, "min_share": 0.0} | defaults
    tables = doc.get("class")
    if not isinstance(tables, list) or not tables:
        raise TaxonomyError(f"{source}: no [[class]] tables")
    classes = []
    seen: set[str] = set()
    for i, table in enumerate(tables):
        where = f"{source}: class #{i + 1}"
        if not isinstance(table, dict):
            raise TaxonomyError(f"{where}: not a table")
        unknown = set(table) - _CLASS_KEYS
        if unknown:
            raise TaxonomyError(f"{where}: unknown key(s) {', '.join(sorted(unknown))} (allowed: {', '.join(sorted(_CLASS_KEYS))})")
        name = table.get("name")
        if not isinstance(name, str) or not name or "," in name or name != name.strip():
            raise TaxonomyError(f"{where}: 'name' must be a non-empty string without commas")
        where = f"{source}: class {name!r}"
        if name in seen:
            raise TaxonomyError(f"{where}: defined twice")
        seen.add(name)
        rules = base | {k: table[k] for k in _RULES if k in table}
        if not isinstance(rules["polygons"], bool):
            raise TaxonomyError(f"{where}: 'polygons' must be true or false")
        for key in ("line_buffer_m", "point_buffer_m", "min_share"):
            value = rules[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise TaxonomyError(f"{where}: {key!r} must be a number >= 0")
        if rules["min_share"] > 1:
            raise TaxonomyError(f"{where}: 'min_share' is a share of the chip area, 0..1")
        truth = _source(table.get("source", OSM_SOURCE), where)
        if truth != OSM_SOURCE:
            # truth from an ARD mask: min_share is the share of the chip's valid area under the mask
            if "match" in table or "exclude" in table:
                raise TaxonomyError(f"{where}: takes its truth from {truth!r}; 'match'/'exclude' (OSM tags) do not apply, remove them")
            match: TagFilter = {}
        else:
            match = _filter(table.get("match"), f"{where}: 'match'")
            if not match:
                raise TaxonomyError(f"{where}: 'match' must name at least one tag")
            if not (rules["polygons"] or rules["line_buffer_m"] > 0 or rules["point_buffer_m"] > 0):
                raise TaxonomyError(f"{where}: no geometry counts (polygons = false and both buffers 0)")
        classes.append(
            LabelClass(
                id=i,
                name=name,
                match=match,
                exclude=_filter(table.get("exclude", {}), f"{where}: 'exclude'"),
                polygons=rules["polygons"],
                line_buffer_m=float(rules["line_buffer_m"]),
                point_buffer_m=float(rules["point_buffer_m"]),
                min_share=float(rules["min_share"]),
                source=truth,
            )
        )
    if len(classes) > 65535:
        raise TaxonomyError(f"{source}: {len(classes)} classes; at most 65535")
    return Taxonomy(tuple(classes), source, hashlib.sha256(text.encode()).hexdigest(), text)


def _source(value: Any, where: str) -> str:
    """A class's 'source': "osm", or "ard:<mask file>" naming one of the ARD masks imagesim reads."""
    from imagesim.imagery.ard import MASK_FILES

    files = [f"{ARD_SOURCE_PREFIX}{f}" for f in MASK_FILES.values()]
    if value == OSM_SOURCE or value in files:
        return str(value)
    raise TaxonomyError(f"{where}: 'source' must be {OSM_SOURCE!r} or one of {', '.join(repr(f) for f in files)}, not {value!r}")


def _filter(value: Any, where: str) -> TagFilter:
    if not isinstance(value, dict):
        raise TaxonomyError(f'{where} must be a table of key = "*" or key = [values]')
    out: TagFilter = {}
    for key, values in value.items():
        if values == "*":
            out[key] = None
        elif isinstance(values, str):
            out[key] = frozenset([values])
        elif isinstance(values, list) and values and all(isinstance(v, str) for v in values):
            out[key] = frozenset(values)
        else:
            raise TaxonomyError(f'{where}: {key!r} must be "*", a value, or a list of values')
    return out
