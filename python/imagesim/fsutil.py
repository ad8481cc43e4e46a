"""Atomic file writes: a temporary file in the destination folder, then ``os.replace``; for an
object in a store, a local temporary file uploaded in one PUT (atomic by nature).

Files get the permissions an ordinary ``open(path, "w")`` would give them (``0o666`` less the process
umask: 0644 under umask 022, 0640 under 027), as the chip JPEGs written by the Rust core do, so another
account (a Dask worker, a web server) can read what this one writes. The temporary file is created
0600 (``tempfile.mkstemp``) and given that mode just before it is moved into place.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from imagesim.storage import AnyPath, StorePath, location

_PROC_STATUS = "/proc/self/status"
_fallback_lock = threading.Lock()
_fallback_umask: int | None = None


def umask() -> int:
    """The process umask, read without changing it: from ``/proc/self/status`` on Linux; elsewhere
    read once with ``os.umask`` (which can only read it by setting it, for every thread: under a lock,
    set to the strictest value meanwhile, so a file another thread creates then is never too open)
    and cached."""
    global _fallback_umask
    try:
        with open(_PROC_STATUS, encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _fallback_lock:
        if _fallback_umask is None:
            _fallback_umask = os.umask(0o077)
            os.umask(_fallback_umask)
        return _fallback_umask


def file_mode() -> int:
    """The permission bits a new file gets from ``open(path, "w")``: ``0o666`` less the umask."""
    return 0o666 & ~umask()


def publish(tmp: str | os.PathLike[str], path: str | os.PathLike[str]) -> None:
    """Give the finished temporary file ``tmp`` the mode of :func:`file_mode` and move it to ``path``."""
    os.chmod(tmp, file_mode())
    os.replace(tmp, path)


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
        publish(name, path)
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


# --- working folders of a run (part files), and the ones a run killed outright left ---

OWNER_FILE = "owner.json"  # in a working folder: the process writing it, {"pid", "host"}


def _host() -> str:
    """This machine's host name (``socket.gethostname()``; through ``os.uname`` where there is one: the same
    name, without importing socket at start-up)."""
    if hasattr(os, "uname"):
        return os.uname().nodename
    import socket

    return socket.gethostname()


def work_folder(parent: Path | None, prefix: str) -> Path:
    """A new hidden working folder in ``parent`` (a temporary folder when None), its owner file naming this
    process so that a later run can tell a folder in use from one a killed run left (:func:`abandoned`)."""
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    write_json(folder / OWNER_FILE, {"pid": os.getpid(), "host": _host()})
    return folder


def owner_alive(folder: Path) -> bool:
    """Whether the process that made ``folder`` (:func:`work_folder`) still runs. One on another host is taken
    to run (it cannot be asked); a folder without an owner file was made by an earlier imagesim: not running."""
    try:
        owner = json.loads((folder / OWNER_FILE).read_text())
        pid, host = int(owner["pid"]), str(owner["host"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if host != _host():
        return True
    if pid == os.getpid():  # a reused pid: this process made no folder before it started
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def abandoned(parent: Path, prefix: str) -> tuple[list[Path], list[Path]]:
    """The working folders ``parent/<prefix>*``: (those whose owner is gone, those in use)."""
    gone: list[Path] = []
    busy: list[Path] = []
    if parent.is_dir():
        for folder in sorted(parent.glob(f"{prefix}*")):
            if folder.is_dir():
                (busy if owner_alive(folder) else gone).append(folder)
    return gone, busy
