"""Which modules hold the CLI's commands (no typer here: :func:`imagesim.cli.main` reads this first)."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from imagesim.cli._common import Commands

#: The command modules (imagesim.cli.<name>), in pipeline order.
STAGE_MODULES = ("imagery", "osm", "labels", "learn", "search", "change")
#: Commands :func:`main` runs with their own stage module only: command → module (tests/cli/test_startup.py
#: checks each is that module's, with the same options and help as in the whole app).
ONE_STAGE = {"chip": "imagery", "nodata-index": "imagery"}


def stages(modules: Sequence[str] = STAGE_MODULES) -> tuple[Commands, ...]:
    """The :class:`Commands` of ``modules`` (names in :data:`STAGE_MODULES`), imported now."""
    return tuple(importlib.import_module(f"imagesim.cli.{name}").commands for name in modules)
