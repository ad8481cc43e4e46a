"""Atomic file writes: a temporary file in the destination folder, then ``os.replace``; for an
object in a store, a local temporary file uploaded in one PUT (atomic by nature)."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from imagesim.storage import AnyPath, StorePath, location


@contextmanager
def atomic_path(path: str | AnyPath) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one step."""
    path = location(path)
    if isinstance(path, StorePath):
        with tempfile.TemporaryDirectory(prefix="imagesim-upload-") as folder:
            tmp = Path(folder) / path.name
            yield tmp
            path.upload(tmp)
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(name)
        os.replace(name, path)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise


def write_with(path: str | AnyPath, writer: Callable[[Path], Any]) -> None:
    """Atomically write ``path`` with ``writer(tmp_path)``."""
    with atomic_path(path) as tmp:
        writer(tmp)


def write_json(path: str | AnyPath, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")
