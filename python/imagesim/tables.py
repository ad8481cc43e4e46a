"""Parquet tables as plain columns (dicts of lists), read and written by the Rust core.

`imagesim nodata-index` passes chip rows through without ever needing a dataframe; polars' import alone
takes ~0.3 s, most of that command's start-up (issue 20). So its tables go through these instead, and
the modules it imports load polars only when a function of theirs needs it (:class:`LazyModule`).

A table's schema is declared once as ``{column: dtype name}`` (:data:`DTYPES`: polars' names, lower
case): the Rust writer (:class:`imagesim._imagesim.ParquetWriter`, also behind
:class:`imagesim.geoparquet.GeoColumnsStream`) takes the names, :func:`polars_schema` turns them into
polars dtypes for the modules that work with frames. Files written either way read back with the same
dtypes (tests/test_tables.py).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from imagesim import _imagesim as _rs

if TYPE_CHECKING:
    import polars as pl

#: dtype name → the polars dtype's name
DTYPES = {
    "str": "String",
    "i32": "Int32",
    "i64": "Int64",
    "u8": "UInt8",
    "u16": "UInt16",
    "u32": "UInt32",
    "u64": "UInt64",
    "f32": "Float32",
    "f64": "Float64",
    "bool": "Boolean",
    "binary": "Binary",
}
#: Rows per batch read by :func:`iter_columns`.
BATCH_ROWS = 16_384


class LazyModule:
    """A module imported on its first attribute access: ``pl = LazyModule("polars")`` in a module that a
    quick command imports for other reasons (its constants, a helper) but whose polars work it never
    calls. ``"polars" in sys.modules`` stays false until then."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._module: ModuleType | None = None

    def __getattr__(self, attr: str) -> Any:
        if self._module is None:
            self._module = importlib.import_module(self._name)
        return getattr(self._module, attr)

    def __repr__(self) -> str:
        return f"<lazy module {self._name!r}{'' if self._module is None else ' (imported)'}>"


def polars_schema(types: Mapping[str, str]) -> dict[str, pl.DataType]:
    """``{column: dtype name}`` as ``{column: polars dtype}``."""
    import polars as pl

    return {column: getattr(pl, DTYPES[name])() for column, name in types.items()}


def columns_of(path: str | Path) -> list[str]:
    """The top-level column names of the Parquet file ``path`` (:class:`~imagesim.errors.TableError` when it
    is not one)."""
    return _rs.parquet_columns(Path(path))


def iter_columns(path: str | Path, columns: list[str], *, batch: int = BATCH_ROWS) -> Iterator[dict[str, list[Any]]]:
    """``columns`` of the Parquet file ``path`` in batches of at most ``batch`` rows, in file order, each a
    dict of lists (every integer width as int, floats as float, bbox structs as 4-tuples). Every column
    must be in the file (:class:`~imagesim.errors.InvalidArgumentError` naming the first that is not)."""
    if not columns:
        return iter(())
    return iter(_rs.ParquetBatches(Path(path), list(columns), batch))


def iter_columns_or_nulls(
    path: str | Path, columns: list[str], *, have: list[str] | None = None, batch: int = BATCH_ROWS
) -> Iterator[dict[str, list[Any]]]:
    """:func:`iter_columns`, with a list of Nones for each of ``columns`` the file lacks (a column added after
    the file was written). ``have``: the file's columns, when the caller read them already."""
    have = columns_of(path) if have is None else have
    present = [c for c in columns if c in have] or have[:1]  # one column at least: the row counts
    for got in iter_columns(path, present, batch=batch):
        rows = len(got[present[0]])
        yield {c: got[c] if c in got else [None] * rows for c in columns}
