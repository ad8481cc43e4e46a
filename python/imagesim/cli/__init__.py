"""The `imagesim` command line (Typer): the app and :func:`main`.

Each stage group has a module declaring its commands with :class:`~imagesim.cli._common.Commands`
(`imagery`, `osm`, `labels`, `learn`, `search`, `change`); :func:`build_app` registers them in pipeline order,
the order of `imagesim --help`. Errors print one line and exit with code 1; set ``IMAGESIM_DEBUG=1`` for the
full traceback. Heavy dependencies are imported inside the commands, so `imagesim --help` is fast.

Start-up: :func:`main` reads the line of a command of :data:`ONE_STAGE` (`chip`, `nodata-index`) without typer
(:mod:`imagesim.cli.fast`, a parser generated from the typer declarations); a line it does not read (``--help``,
a mistake) goes to an app of that command's stage module alone (the same :func:`build_app`, the same
declarations), so `imagesim chip` never imports the other stages' modules. ``imagesim.cli.app``, the whole
app, is built on first use. The console script, :func:`entry`, ends such a command without the interpreter's
teardown (see :func:`exit_now`). Nothing here imports typer until an app is built.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from imagesim.cli._output import reporting_errors
from imagesim.cli.stages import ONE_STAGE, STAGE_MODULES, stages

__all__ = ["ONE_STAGE", "STAGE_MODULES", "app_for", "build_app", "entry", "exit_now", "main", "stages"]

if TYPE_CHECKING:
    import typer

    from imagesim.cli._common import Commands

    app: typer.Typer


def build_app(commands: Sequence[Commands]) -> typer.Typer:
    """The `imagesim` app holding ``commands`` (stage modules' :class:`~imagesim.cli._common.Commands`),
    listed in their order (:func:`imagesim.cli.build.build_app`)."""
    from imagesim.cli import build

    return build.build_app(commands)


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
    """Entry point: run the command line, imagesim errors as one line and exit code 1
    (:func:`~imagesim.cli._output.reporting_errors`). A command of :data:`ONE_STAGE` whose line the fast
    path reads (:func:`imagesim.cli.fast.run_fast`: no typer) runs there; any other line (``--help``, a
    mistake typer words best) through the typer app."""
    args = sys.argv[1:]
    if args and args[0] in ONE_STAGE:
        from imagesim.cli.fast import run_fast

        if reporting_errors(lambda: run_fast(args)):
            return
    reporting_errors(lambda: app_for(args)(prog_name="imagesim"))


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
