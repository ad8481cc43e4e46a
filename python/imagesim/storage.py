"""Local folders and object-store prefixes behind one small path type.

Chips, manifests and indexes may live in a bucket (``s3://``, ``gs://``, ``az://``, ``https://``).
:func:`location` turns a command-line value into a :class:`pathlib.Path` or a :class:`StorePath`,
which offers the part of the ``Path`` interface the pipeline uses (joining, names, ``exists``,
``read_bytes``/``write_bytes``, listing). ``os.fspath`` of a ``StorePath`` is its URL, so the Rust
readers and writers, which accept both, get it unchanged. Credentials come from the standard
environment (``AWS_*``, ``GOOGLE_*``, ``AZURE_*``), as for COG reads.
"""

from __future__ import annotations

import io
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from imagesim import _imagesim
from imagesim.tables import LazyModule

if TYPE_CHECKING:
    import polars as pl
else:  # polars on first use (read_parquet): the quick commands import this module without it
    pl = LazyModule("polars")

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_url(path: object) -> bool:
    """Whether a path names an object store location rather than a local file."""
    return isinstance(path, StorePath) or (isinstance(path, str) and _URL.match(path) is not None)


@dataclass(frozen=True, order=True)
class StorePath:
    """An object (or prefix) in a store, addressed by URL: ``s3://bucket/chips/10/Z10-….jpg``.
    ``size``/``mtime_ns``, when a listing gave them, answer :meth:`stat` without a request."""

    url: str
    size: int | None = field(default=None, compare=False)
    mtime_ns: int | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not _URL.match(self.url):
            raise ValueError(f"{self.url!r} is not a store URL")
        scheme, rest = self.url.split("://", 1)
        object.__setattr__(self, "url", f"{scheme}://{rest.rstrip('/')}")

    def __str__(self) -> str:
        return self.url

    def __fspath__(self) -> str:
        return self.url

    def __truediv__(self, name: str | os.PathLike[str]) -> StorePath:
        return StorePath(f"{self.url}/{os.fspath(name).strip('/')}")

    @property
    def _key(self) -> str:
        return self.url.split("://", 1)[1].partition("/")[2]

    @property
    def name(self) -> str:
        return self._key.rsplit("/", 1)[-1]

    @property
    def parent(self) -> StorePath:
        return StorePath(self.url.rsplit("/", 1)[0]) if self._key else self

    @property
    def suffix(self) -> str:
        return Path(self.name).suffix

    @property
    def stem(self) -> str:
        return Path(self.name).stem

    def with_name(self, name: str) -> StorePath:
        return self.parent / name

    def with_suffix(self, suffix: str) -> StorePath:
        return self.parent / (self.stem + suffix)

    def is_absolute(self) -> bool:
        return True

    def absolute(self) -> StorePath:
        return self

    def resolve(self) -> StorePath:
        return self

    def relative_to(self, other: StorePath) -> str:
        prefix = other.url + "/"
        if not self.url.startswith(prefix):
            raise ValueError(f"{self} is not under {other}")
        return self.url[len(prefix) :]

    # --- queries (one request each) ---
    def head(self) -> tuple[int, int] | None:
        """``(size, modified ns)`` of the object, None when there is none."""
        return _imagesim.store_head(self.url)

    def is_file(self) -> bool:
        return self.head() is not None

    def is_dir(self) -> bool:
        """Whether any object lies under this prefix (stores have no folders of their own)."""
        return bool(_imagesim.list_objects(self.url + "/", limit=1))

    def exists(self) -> bool:
        return self.is_file() or self.is_dir()

    def stat(self) -> os.stat_result:
        found = (self.size, self.mtime_ns) if self.size is not None and self.mtime_ns is not None else self.head()
        if found is None:
            raise FileNotFoundError(f"{self}: no such object")
        size, mtime_ns = found
        return os.stat_result((0, 0, 0, 0, 0, 0, size, 0, mtime_ns // 10**9, 0, 0, 0, 0, mtime_ns))

    def files(self, limit: int | None = None) -> Iterator[tuple[StorePath, int, int]]:
        """Every object under this prefix (the first ``limit`` listed), recursively:
        ``(path, size, modified ns)``, sorted."""
        for url, size, mtime in sorted(_imagesim.list_objects(self.url + "/", limit=limit)):
            yield StorePath(url, size, mtime), size, mtime

    # --- reading and writing ---
    def read_bytes(self) -> bytes:
        return _imagesim.store_get(self.url)

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    def write_bytes(self, data: bytes) -> int:
        """One PUT: readers see the old object or the new one, never part of it."""
        _imagesim.store_put(self.url, data)
        return len(data)

    def download(self, local: str | os.PathLike[str]) -> int:
        """Copy this object into the local file ``local``, streamed (never whole in memory); the bytes written."""
        return _imagesim.store_get_file(self.url, local)

    def upload(self, local: str | os.PathLike[str]) -> None:
        """Upload a local file as this object (one PUT, or streamed in parts above 64 MiB)."""
        _imagesim.store_put_file(self.url, local)

    def write_text(self, text: str, encoding: str = "utf-8") -> int:
        return self.write_bytes(text.encode(encoding))

    def unlink(self, missing_ok: bool = False) -> None:
        if not missing_ok and self.head() is None:
            raise FileNotFoundError(f"{self}: no such object")
        _imagesim.store_delete(self.url)

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        """Nothing to do: a prefix exists as soon as an object is written under it."""

    def rmdir(self) -> None:
        """Nothing to do (see :meth:`mkdir`)."""

    def glob(self, pattern: str) -> list[StorePath]:
        """Objects directly under this prefix whose name matches ``pattern`` (``fnmatch`` rules)."""
        import fnmatch

        return [p for p, _, _ in self.files() if "/" not in p.relative_to(self) and fnmatch.fnmatch(p.name, pattern)]


AnyPath = Path | StorePath


def location(path: str | os.PathLike[str]) -> AnyPath:
    """A command-line path or URL as a ``Path`` or a ``StorePath``."""
    if isinstance(path, StorePath):
        return path
    text = os.fspath(path)
    return StorePath(text) if is_url(text) else Path(text)


@contextmanager
def local_copy(path: AnyPath) -> Iterator[Path]:
    """A local file with the content of ``path``: the file itself, or an object downloaded (streamed) into a
    temporary folder, removed afterwards. For readers that read a large file a slice at a time."""
    if isinstance(path, Path):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix=".imagesim-") as folder:
        local = Path(folder) / path.name
        path.download(local)
        yield local


def read_parquet(path: AnyPath, **kwargs) -> pl.DataFrame:
    """``polars.read_parquet`` for local files and objects (an object is fetched whole)."""
    if isinstance(path, StorePath):
        return pl.read_parquet(io.BytesIO(path.read_bytes()), **kwargs)
    return pl.read_parquet(path, **kwargs)
