"""Which chips `imagesim change` compares: the acquisitions of each quadkey, paired.

Every chip of the manifest that has data is a (quadkey, acquisition). For each quadkey covered by two or
more acquisitions the pairs are the consecutive ones in date order, or the two the user chose (``--before``
and/or ``--after``, each a date ``YYYY-MM-DD`` or a catalog id). A quadkey is one place only within one UTM
zone and zoom, so chips pair only within a grid; acquisitions that cover the same place on different grids
share no quadkey, and that is said plainly instead of producing nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import polars as pl

from imagesim.errors import ChangeError

__all__ = ["Choice", "parse_choice", "chip_pairs", "PAIR_COLUMNS"]

DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")

# What each side of a pair carries from the manifest (prefixed before_/after_).
SIDE_COLUMNS = ("chip", "catalog_id", "date", "path", "source_cog", "valid", "cloud")
PAIR_COLUMNS = ("zone", "quadkey", "zoom", "cell", *(f"{side}_{c}" for side in ("before", "after") for c in SIDE_COLUMNS))


@dataclass(frozen=True)
class Choice:
    """One acquisition the user named: by acquisition date or by catalog id."""

    text: str
    by_date: bool

    def matches(self) -> pl.Expr:
        return pl.col("date") == self.text if self.by_date else pl.col("catalog_id") == self.text

    def describe(self) -> str:
        return f"date {self.text}" if self.by_date else f"catalog id {self.text}"


def parse_choice(value: str | None, flag: str) -> Choice | None:
    """``--before``/``--after``: a date (``YYYY-MM-DD``, or a longer ISO timestamp: its date) or a catalog id."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        raise ChangeError(f"`{flag}` is empty: give an acquisition date (YYYY-MM-DD) or a catalog id")
    if DATE_RE.match(text[:10]) and (len(text) == 10 or text[10] in "T "):
        return Choice(text[:10], True)
    if not re.fullmatch(r"[0-9A-Za-z]{4,64}", text):
        raise ChangeError(f"`{flag}` {value!r}: not a date (YYYY-MM-DD) nor a catalog id (letters and digits)")
    return Choice(text.upper(), False)


def _acquisitions(chips: pl.DataFrame) -> pl.DataFrame:
    """One row per acquisition: catalog id, date, zones, zooms, cells, chips."""
    return (
        chips.group_by("catalog_id")
        .agg(
            pl.col("date").drop_nulls().first(),
            pl.col("zone").unique().sort(),
            pl.col("zoom").unique().sort(),
            pl.col("cell").unique().sort(),
            pl.len().alias("chips"),
        )
        .sort("date", "catalog_id", nulls_last=True)
    )


def _describe(acqs: pl.DataFrame) -> str:
    parts = []
    for row in acqs.iter_rows(named=True):
        zones = "/".join(str(z) for z in row["zone"])
        zooms = "/".join(str(z) for z in row["zoom"])
        cells = ", ".join(row["cell"][:3]) + (" …" if len(row["cell"]) > 3 else "")
        parts.append(f"{row['catalog_id']} ({row['date'] or 'date unknown'}, zone {zones}, z{zooms}, cells {cells})")
    return "; ".join(parts)


def _no_shared_place(source: str, acqs: pl.DataFrame) -> ChangeError:
    grids = {(tuple(r["zone"]), tuple(r["zoom"])) for r in acqs.iter_rows(named=True)}
    why = (
        "they lie on different grids (UTM zone or zoom differ), so no chip of one is a chip of the other: chip them at one zoom in one zone"
        if len(grids) > 1
        else "they do not overlap"
    )
    return ChangeError(f"{source}: no place is covered by two of these acquisitions — {why}: {_describe(acqs)}")


def _consecutive(chips: pl.DataFrame) -> pl.DataFrame:
    """Each chip paired with the next acquisition of its quadkey (date order)."""
    ordered = chips.sort("zone", "quadkey", "date", "catalog_id")
    # one shift over the sorted table (cheaper than a shift per group), then keep same-place neighbours
    nxt = ordered.select(pl.all().shift(-1).name.prefix("after_"))
    pairs = pl.concat([ordered.select(pl.all().name.prefix("before_")), nxt], how="horizontal")
    return pairs.filter((pl.col("after_quadkey") == pl.col("before_quadkey")) & (pl.col("after_zone") == pl.col("before_zone")))


def _chosen(chips: pl.DataFrame, before: Choice | None, after: Choice | None) -> pl.DataFrame:
    """Per quadkey, the chosen acquisition(s): the one named, paired with the next (``--before`` only),
    the previous (``--after`` only) or the other one named."""
    ordered = chips.sort("zone", "quadkey", "date", "catalog_id")
    cols = ordered.columns
    if before is not None and after is not None:
        b = ordered.filter(before.matches()).select(pl.all().name.prefix("before_"))
        a = ordered.filter(after.matches()).select(pl.all().name.prefix("after_"))
        return b.join(a, left_on=["before_zone", "before_quadkey"], right_on=["after_zone", "after_quadkey"], how="inner").with_columns(
            pl.col("before_zone").alias("after_zone"), pl.col("before_quadkey").alias("after_quadkey")
        )
    choice = before if before is not None else after
    assert choice is not None
    ordered = ordered.with_columns(choice.matches().alias("_chosen"))
    # the first chosen row of each quadkey and its neighbour in date order
    shift = -1 if before is not None else 1
    neighbour = ordered.select([pl.col(c).shift(shift).over("zone", "quadkey").alias(f"_n_{c}") for c in cols])
    both = pl.concat([ordered, neighbour], how="horizontal").filter(pl.col("_chosen") & pl.col("_n_chip").is_not_null())
    mine = both.select([pl.col(c).alias(c) for c in cols])
    other = both.select([pl.col(f"_n_{c}").alias(c) for c in cols])
    first, second = (mine, other) if before is not None else (other, mine)
    return pl.concat(
        [first.select(pl.all().name.prefix("before_")), second.select(pl.all().name.prefix("after_"))],
        how="horizontal",
    )


def chip_pairs(chips: pl.DataFrame, source: str, before: Choice | None = None, after: Choice | None = None) -> pl.DataFrame:
    """The pairs to compare (``PAIR_COLUMNS``) from ``chips``: one row per chip with data and columns
    ``chip, zone, quadkey, zoom, cell, catalog_id, date, path, source_cog, valid, cloud`` (``path`` and
    ``source_cog`` may be left out, and then are left out of the pairs: the embedding method reads no file).

    Raises ChangeError when there is nothing to compare, saying why (one acquisition only, acquisitions on
    different grids or not overlapping, a chosen acquisition not in the folder, dates unknown)."""
    acqs = _acquisitions(chips)
    if acqs.height == 0:
        raise ChangeError(f"{source}: holds no chip with data, so nothing to compare")
    if acqs.height == 1:
        raise ChangeError(f"{source}: one acquisition only ({_describe(acqs)}); change detection needs two acquisitions of a place")
    for choice, flag in ((before, "--before"), (after, "--after")):
        if choice is not None and acqs.filter(choice.matches()).height == 0:
            raise ChangeError(f"`{flag}` {choice.describe()}: no chip of {source} is of that acquisition; it has {_describe(acqs)}")
    if before is not None and after is not None:
        b_rows = acqs.filter(before.matches())
        a_rows = acqs.filter(after.matches())
        if set(b_rows["catalog_id"]) & set(a_rows["catalog_id"]):
            raise ChangeError(f"`--before` {before.describe()} and `--after` {after.describe()} name the same acquisition")
        b_dates, a_dates = b_rows["date"].drop_nulls(), a_rows["date"].drop_nulls()
        if b_dates.len() and a_dates.len() and b_dates.min() > a_dates.max():  # type: ignore[operator]
            raise ChangeError(f"`--before` {before.describe()} was acquired after `--after` {after.describe()}: swap them")
        scope = pl.concat([b_rows, a_rows])
    else:
        scope = acqs
    undated = chips.filter(pl.col("date").is_null())
    if undated.height and before is None and after is None:
        raise ChangeError(
            f"{source}: {undated.height:,} chip(s) have no acquisition date (e.g. {undated['chip'][0]}; a chips folder of the "
            "original tool?), so acquisitions cannot be put in order: name them with --before and --after (catalog ids)"
        )
    pairs = _chosen(chips, before, after) if (before is not None or after is not None) else _consecutive(chips)
    if pairs.height == 0:
        raise _no_shared_place(source, scope)
    return pairs.select(
        pl.col("before_zone").alias("zone"),
        pl.col("before_quadkey").alias("quadkey"),
        pl.col("before_zoom").alias("zoom"),
        pl.col("before_cell").alias("cell"),
        *(pl.col(f"{side}_{c}") for side in ("before", "after") for c in SIDE_COLUMNS if c in chips.columns),
    )
