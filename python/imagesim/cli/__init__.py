"""The `imagesim` command line (Typer): the app and :func:`main`.

Each stage group has a module declaring its commands with :class:`~imagesim.cli._common.Commands`
(`imagery`, `osm`, `labels`, `learn`, `search`, `change`); :func:`build_app` registers them in pipeline order,
the order of `imagesim --help`. Errors print one line and exit with code 1; set ``IMAGESIM_DEBUG=1`` for the
full traceback. Heavy dependencies are imported inside the commands, so `imagesim --help` is fast.

Start-up: :func:`main` runs a command of :data:`ONE_STAGE` with an app of its stage module alone (the same
:func:`build_app`, the same declarations), so `imagesim chip` does not import the other stages' modules.
``imagesim.cli.app``, the whole app, is built on first use. The console script, :func:`entry`, ends such a
command without the interpreter's teardown (see :func:`exit_now`).
"""

from __future__ import annotations

import atexit
import importlib
import os
import sys
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from imagesim.cli._common import Commands, InOrder, err, escape, out
from imagesim.errors import ImagesimError

#: The command modules (imagesim.cli.<name>), in pipeline order.
STAGE_MODULES = ("imagery", "osm", "labels", "learn", "search", "change")
#: Commands :func:`main` runs with their own stage module only: command → module (tests/cli/test_startup.py
#: checks each is that module's, with the same options and help as in the whole app).
ONE_STAGE = {"chip": "imagery", "nodata-index": "imagery"}

if TYPE_CHECKING:
    app: typer.Typer


def stages(modules: Sequence[str] = STAGE_MODULES) -> tuple[Commands, ...]:
    """The :class:`Commands` of ``modules`` (names in :data:`STAGE_MODULES`), imported now."""
    return tuple(importlib.import_module(f"imagesim.cli.{name}").commands for name in modules)


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


def __getattr__(name: str) -> Any:
    # `imagesim.cli.app`: every stage's commands, built (and kept) on first use
    if name == "app":
        whole = globals()["app"] = build_app(stages())
        return whole
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def app_for(args: Sequence[str]) -> typer.Typer:
    """The app :func:`main` runs ``args`` (the command line after `imagesim`) with: for a command of
    :data:`ONE_STAGE`, an app of its stage module's commands only; else the whole app."""
    module = ONE_STAGE.get(args[0]) if args else None
    if module is None:
        return sys.modules[__name__].app  # through __getattr__: built once
    return build_app(stages([module]))


def main() -> None:
    """Entry point: run the app, turning imagesim errors into one line and exit code 1."""
    debug = os.environ.get("IMAGESIM_DEBUG", "") not in ("", "0")
    try:
        app_for(sys.argv[1:])(prog_name="imagesim")
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


def entry() -> None:
    """The `imagesim` console script: :func:`main`, then, after a command of :data:`ONE_STAGE`, :func:`exit_now`."""
    one_stage = len(sys.argv) > 1 and sys.argv[1] in ONE_STAGE
    try:
        main()
    except SystemExit as exc:
        if not one_stage:
            raise
        exit_now(exc.code)
    if one_stage:
        exit_now(0)


def exit_now(code: object) -> NoReturn:
    """End the process with ``code`` (as :class:`SystemExit` reads it) without the interpreter's teardown.

    Freeing every module a command loaded (polars, pyarrow, numpy: ~0.15 s on a 2-core machine) is work no
    one waits for once the outputs are written. Everything a normal exit does that matters still happens:
    the atexit handlers run (logging, temporary folders, Dask clients) and stdout/stderr are flushed. While
    another non-daemon thread is alive the process exits normally instead (that exit waits for it)."""
    others = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon and t.is_alive()]
    if others:
        raise SystemExit(code)
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:  # SystemExit("message"): printed, status 1
        print(code, file=sys.stderr)
        status = 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be said
            pass
    os._exit(status & 0xFF)


if __name__ == "__main__":
    entry()
