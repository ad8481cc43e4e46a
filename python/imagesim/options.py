"""Every user-facing default and range, declared once, and the checks that go with them.

Library settings (``ChipSettings`` …) and the command line both read these, so a default or a limit
changes in one place. Checks name the library parameter in backticks; the CLI shows it as its flag
(see :class:`imagesim.errors.InvalidArgumentError`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from imagesim.errors import InvalidArgumentError

# --- chips and the grid ---
ZOOM = 17  # 512 px, 156.25 m chips on ARD
ZOOM_RANGE = (12, 20)
JPEG_QUALITY = 90
QUALITY_RANGE = (1, 100)

# --- no-data ---
NODATA_THRESHOLD = 0  # a pixel is no-data when every band is <= this
NODATA_THRESHOLD_RANGE = (0, 254)
MIN_NODATA_PIXELS = 16  # no-data pixels from which a chip is partial_data

# --- encoding ---
ENCODE_BATCH = 64
ENCODE_PROVIDERS = ("auto", "cuda", "tensorrt", "cpu")

# --- threads ---
PROC_ALL = 0  # worker threads: 0 = all cores


def check_range(name: str, value: float, lo: float | None = None, hi: float | None = None, *, what: str = "") -> None:
    """``lo <= value <= hi`` (either bound may be None), or an error naming ``name`` and the range."""
    if (lo is None or value >= lo) and (hi is None or value <= hi):
        return
    if lo is not None and hi is not None:
        want = f"{lo}..{hi}"
    elif lo is not None:
        want = f"at least {lo}"
    else:
        want = f"at most {hi}"
    raise InvalidArgumentError(f"`{name}` {value}: {what + ' ' if what else ''}must be {want}", param=name)


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> None:
    """``value`` is one of ``choices``, or an error listing them."""
    choices = tuple(choices)
    if value not in choices:
        raise InvalidArgumentError(f"`{name}` {value!r}: choose one of {', '.join(map(str, choices))}", param=name)
