"""The typer app of `imagesim`: the stage modules' commands in pipeline order, and `--version`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import typer

from imagesim.cli._common import Commands, InOrder, out


def _print_version(value: bool) -> None:
    if value:
        from imagesim import __version__

        out.print(f"imagesim {__version__}", highlight=False, markup=False)
        raise typer.Exit()


def _options(
    version: Annotated[
        bool, typer.Option("--version", help="Show the version and exit.", is_eager=True, callback=_print_version, expose_value=False)
    ] = False,
) -> None:
    """Options of `imagesim` itself (before any command)."""


def build_app(commands: Sequence[Commands]) -> typer.Typer:
    """The `imagesim` app holding ``commands`` (stage modules' :class:`Commands`), listed in their order."""

    class Pipeline(InOrder):
        order = tuple(name for stage in commands for name in stage.names)

    built = typer.Typer(
        name="imagesim",
        help="Maxar ARD deliveries to chips, OSM labels, embeddings and similar-place search.",
        cls=Pipeline,
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=False,
    )
    for stage in commands:
        stage.register(built)
    built.callback()(_options)
    return built
