"""The `imagesim` command line (Typer): the app and :func:`main`.

Each stage group has a module declaring its commands with :class:`~imagesim.cli._common.Commands`
(`imagery`, `osm`, `labels`, `learn`, `search`, `change`); they are registered here in pipeline order, the order
of `imagesim --help`. Errors print one line and exit with code 1; set ``IMAGESIM_DEBUG=1`` for the
full traceback. Heavy dependencies are imported inside the commands, so `imagesim --help` is fast.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer
from rich.markup import escape

from imagesim.cli import change, imagery, labels, learn, osm, search
from imagesim.cli._common import InOrder, err, out
from imagesim.errors import ImagesimError

#: The command modules, in pipeline order.
STAGES = (imagery.commands, osm.commands, labels.commands, learn.commands, search.commands, change.commands)


class Pipeline(InOrder):
    order = tuple(name for stage in STAGES for name in stage.names)


app = typer.Typer(
    name="imagesim",
    help="Maxar ARD deliveries to chips, OSM labels, embeddings and similar-place search.",
    cls=Pipeline,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
for stage in STAGES:
    stage.register(app)


def _print_version(value: bool) -> None:
    if value:
        from imagesim import __version__

        out.print(f"imagesim {__version__}", highlight=False, markup=False)
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool, typer.Option("--version", help="Show the version and exit.", is_eager=True, callback=_print_version, expose_value=False)
    ] = False,
) -> None:
    """Options of `imagesim` itself (before any command)."""


def main() -> None:
    """Entry point: run the app, turning imagesim errors into one line and exit code 1."""
    debug = os.environ.get("IMAGESIM_DEBUG", "") not in ("", "0")
    try:
        app(prog_name="imagesim")
    except ImagesimError as exc:
        if debug:
            raise
        err.print(f"[red]error:[/] {escape(str(exc))}", highlight=False)
        sys.exit(1)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    except Exception as exc:  # a bug: still one line unless debugging
        if debug:
            raise
        err.print(f"[red]error:[/] {type(exc).__name__}: {escape(str(exc))} (set IMAGESIM_DEBUG=1 for the traceback)", highlight=False)
        sys.exit(1)


if __name__ == "__main__":
    main()
