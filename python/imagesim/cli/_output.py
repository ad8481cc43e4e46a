"""The output side of the CLI, without typer: the consoles, plain lines, the progress bar, flags in
messages and the one-line error report. The fast path of `chip` and `nodata-index`
(:mod:`imagesim.cli.fast`) runs on these alone; :mod:`imagesim.cli._common` re-exports them.

Nor rich, until a line needs it (:class:`LazyConsole`): a command's usual output is plain lines (:func:`say`),
and the progress bar off a terminal is none (:func:`progress_bar`).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from imagesim.errors import ImagesimError
from imagesim.progress import ProgressFactory, ProgressSink

if TYPE_CHECKING:
    from rich.console import Console

T = TypeVar("T")


class LazyConsole:
    """A rich ``Console(**options)`` made on first use (importing rich costs about 0.1 s of a command's
    start-up); its attributes are the console's: ``err.print(...)``."""

    def __init__(self, **options: Any) -> None:
        self._options = options
        self._console: Console | None = None

    @property
    def console(self) -> Console:
        if self._console is None:
            from rich.console import Console

            self._console = Console(**self._options)
        return self._console

    def __getattr__(self, name: str) -> Any:
        return getattr(self.console, name)


out = LazyConsole(soft_wrap=True)
err = LazyConsole(stderr=True, soft_wrap=True)


def say(line: str, *, stderr: bool = False) -> None:
    """``line`` on stdout (or stderr) as it is: no markup, no highlighting, no rich (a summary line, paths)."""
    stream = sys.stderr if stderr else sys.stdout
    stream.write(line + "\n")
    stream.flush()


def escape(text: str) -> str:
    """``text`` with rich markup escaped (rich's ``escape``), for a line printed with markup."""
    from rich.markup import escape as rich_escape

    return rich_escape(text)


# --- the progress bar ---


class RichProgress(ProgressSink):
    """A rich progress bar on stderr (drawn on a terminal, or always with ``IMAGESIM_PROGRESS=1``)."""

    def __init__(self, description: str, total: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=err.console,
            transient=False,
            disable=not progress_shown(),
        )
        self.task = self.progress.add_task(description, total=total)
        self.progress.start()

    def update(self, done: int) -> None:
        self.progress.update(self.task, completed=done)

    def close(self) -> None:
        self.progress.stop()


def progress_shown() -> bool:
    """Whether :class:`RichProgress` draws: on a terminal (as rich's ``Console.is_terminal`` tells), or always with
    ``IMAGESIM_PROGRESS=1``. Plainly no terminal (no ``isatty``, no ``TTY_COMPATIBLE`` or ``FORCE_COLOR``, which rich
    obeys) is told without importing rich."""
    if os.environ.get("IMAGESIM_PROGRESS") == "1":
        return True
    if "TTY_COMPATIBLE" not in os.environ and "FORCE_COLOR" not in os.environ:
        try:
            if not sys.stderr.isatty():
                return False
        except (AttributeError, ValueError):  # no isatty, or a closed stream: rich says no terminal
            return False
    return bool(err.is_terminal)


def progress_bar(description: str) -> ProgressFactory:
    """The :data:`~imagesim.progress.ProgressFactory` a command passes to its stage: ``progress_bar("chip")``."""

    def factory(total: int) -> ProgressSink:
        # off a terminal: the silent sink, as a disabled rich bar, without importing rich
        return RichProgress(description, total) if progress_shown() else ProgressSink()

    return factory


_BACKTICKED = re.compile(r"`([A-Za-z_][A-Za-z0-9_]*)`")


def with_flags(message: str, flags: Mapping[str, str]) -> str:
    """``message`` with each backticked parameter name in ``flags`` written as its flag:
    "`zoom` 25: must be 12..20" → "--zoom 25: must be 12..20". Other backticked text is left as it is."""
    return _BACKTICKED.sub(lambda m: flags.get(m.group(1), m.group(0)), message)


def rename_flags(exc: ImagesimError, flags: Mapping[str, str]) -> None:
    """Rewrite ``exc``'s message in place (same exception, type and ``param``) with :func:`with_flags`.

    Any imagesim error, not only ``InvalidArgumentError``: "pass `overwrite` to replace it" comes
    from ``OutputExistsError``."""
    if len(exc.args) == 1 and isinstance(exc.args[0], str):
        message = with_flags(exc.args[0], flags)
        if message != exc.args[0]:
            exc.args = (message,)


def reporting_errors(run: Callable[[], T]) -> T:
    """``run()`` (its result), its imagesim errors printed as one line and exit code 1 (:class:`SystemExit`); an
    interrupt exits 130; any other exception (a bug) is one line too. ``IMAGESIM_DEBUG=1``: the full
    traceback instead. The error handling of :func:`imagesim.cli.main` and of the fast path."""
    debug = os.environ.get("IMAGESIM_DEBUG", "") not in ("", "0")
    try:
        return run()
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
