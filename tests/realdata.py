"""Where the shared real-data corpus is: ``$IMAGESIM_REALDATA``, else the first ``shared/realdata``
found beside the repository or one of its parent folders (tests skip visibly when absent)."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def find_realdata() -> Path:
    env = os.environ.get("IMAGESIM_REALDATA")
    if env:
        return Path(env)
    for folder in REPO.parents:
        candidate = folder / "shared" / "realdata"
        if candidate.is_dir():
            return candidate
    return REPO.parent / "shared" / "realdata"
