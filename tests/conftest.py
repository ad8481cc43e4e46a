"""Shared fixtures: the small sample delivery (written once per session) and the real-data corpus."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from realdata import find_realdata


@pytest.fixture(scope="session")
def realdata() -> Path:
    """`$IMAGESIM_REALDATA` (default `../shared/realdata`); tests skip visibly when it is absent."""
    path = find_realdata()
    if not path.is_dir():
        pytest.skip(f"real-data corpus not found at {path} (set IMAGESIM_REALDATA)")
    return path


@pytest.fixture(scope="session")
def small_sample(tmp_path_factory: pytest.TempPathFactory):
    """The `--small` sample delivery, JPEG COGs as ARD ships them."""
    from imagesim.imagery.sample import write_sample

    return write_sample(tmp_path_factory.mktemp("sample-jpeg"), seed=7, small=True)


@pytest.fixture(scope="session")
def small_sample_deflate(tmp_path_factory: pytest.TempPathFactory):
    """The `--small` sample with lossless DEFLATE COGs, for exact pixel comparisons."""
    from imagesim.imagery.sample import write_sample

    return write_sample(tmp_path_factory.mktemp("sample-deflate"), seed=7, small=True, compression="deflate")


def run_imagesim(*args: object, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """The `imagesim` command in a child process, as a user runs it: exit code, stdout, stderr."""
    cmd = [sys.executable, "-m", "imagesim.cli", *(str(a) for a in args)]
    return subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=timeout)


@pytest.fixture(scope="session")
def cli() -> Callable[..., subprocess.CompletedProcess]:
    """``cli("chip", "--ard-path", root, …)`` runs `imagesim` in a subprocess (see :func:`run_imagesim`)."""
    return run_imagesim
