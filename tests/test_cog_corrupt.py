"""Every corrupt or adversarial TIFF of the corpus must read cleanly or raise an imagesim error.

Each file is opened and fully read (every level, whole window) in a subprocess with a time
limit, so a crash (segfault, abort), a Rust panic (``pyo3_runtime.PanicException``, which is
not an ``ImagesimError``), a hang or a runaway allocation fails the test instead of the run.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from realdata import find_realdata

REPO = Path(__file__).resolve().parents[1]
REALDATA = find_realdata()
CORRUPT_DIR = REALDATA / "tiff-corrupt"
FILES = sorted(CORRUPT_DIR.iterdir()) if CORRUPT_DIR.is_dir() else []
TIME_LIMIT_S = 20

CHILD = r"""
import sys
import imagesim.errors as errors
from imagesim.cog import open_cog

try:
    cog = open_cog(sys.argv[1])
    shapes = [cog.read(level=i).shape for i in range(len(cog.levels))]
    print("READ", shapes)
except errors.ImagesimError as e:
    print("ERROR", type(e).__name__, e)
"""


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_corrupt_tiff_fails_cleanly(path: Path) -> None:
    try:
        proc = subprocess.run(
            [sys.executable, "-c", CHILD, str(path)],
            capture_output=True,
            text=True,
            timeout=TIME_LIMIT_S,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{path.name}: no result within {TIME_LIMIT_S} s (hang or huge allocation?)")
    print(path.name, proc.stdout.strip())
    assert proc.returncode == 0, f"{path.name}: exit {proc.returncode}\n{proc.stderr[-2000:]}"
    assert proc.stdout.startswith(("READ", "ERROR")), proc.stdout + proc.stderr[-2000:]


def test_corpus_present() -> None:
    if not CORRUPT_DIR.is_dir():
        pytest.skip(f"corrupt-TIFF corpus not found at {CORRUPT_DIR} (set IMAGESIM_REALDATA)")
    assert len(FILES) >= 20
