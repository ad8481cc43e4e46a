"""What every command module of the CLI shares: the consoles, the progress bar, the option types and
:class:`Commands`, the one way a command is declared and registered.

Nothing here imports a heavy dependency (polars, numpy, torch …): `imagesim --help` imports this module.
Nor rich, until a line needs it (:class:`LazyConsole`): a command's usual output is plain lines (:func:`say`),
and the progress bar off a terminal is none (:func:`progress_bar`).
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import os
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Optional, TypeVar

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from imagesim import options
from imagesim.errors import ImagesimError
from imagesim.progress import ProgressFactory, ProgressSink

if TYPE_CHECKING:
    from rich.console import Console


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


# --- option types: one declaration (flag and help) per idea; a command's signature gives the
# default, from imagesim.options (`proc: Proc = options.PROC_ALL`): Typer takes no default inside Annotated ---

ArdPath = Annotated[
    str,
    typer.Option(
        "--ard-path",
        help="Root of the ARD delivery (<zone>/<quadkey>/<date>/<catalog-id>-visual.tif), or one zone folder: a folder or an object-store URL (s3://, gs://, az://, https://) read with range requests.",
    ),
]
MaxCloud = Annotated[
    Optional[float],
    typer.Option(
        "--max-cloud",
        min=0.0,
        max=1.0,
        help="Leave out chips with more than this share of their valid area under the ARD cloud mask (chips.parquet's cloud_fraction; chips without one are kept).",
    ),
]
Chips = Annotated[
    str, typer.Option("--chips", help="Chips folder or object-store prefix (the DEST of `imagesim chip`, holding chips.parquet).")
]
ChipFolder = Annotated[Path, typer.Option("--chips", help="Chips folder (the DEST of `imagesim chip`, holding chips.parquet).")]
Zones = Annotated[Optional[list[int]], typer.Option("--zone", help="Only this UTM zone (repeatable).")]
NodataIndex = Annotated[
    Optional[str],
    typer.Option(
        "--nodata-index",
        help="nodata.parquet or nodata-index.json giving each chip's no-data class (default: CHIPS/nodata.parquet if present, else chips.parquet).",
    ),
]
NodataThreshold = Annotated[
    int,
    typer.Option("--nodata-threshold", help="A pixel is no-data when every band is <= this (2-8 tolerates JPEG noise at no-data edges)."),
]
MinNodataPixels = Annotated[
    int, typer.Option("--min-nodata-pixels", help="No-data pixels from which a chip is partial_data (fewer: all_data).")
]
Proc = Annotated[int, typer.Option("--proc", help="Worker threads (0 = all cores).")]
Quality = Annotated[int, typer.Option("--quality", help="JPEG quality, {}..{}.".format(*options.QUALITY_RANGE))]
BatchSize = Annotated[int, typer.Option("--batch-size", help="Chips per batch.")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace outputs that already exist (default: keep them).")]
# --- training runs (train, pretrain) ---
TorchDevice = Annotated[str, typer.Option("--device", help=f"{', '.join(options.DEVICES)}: auto is CUDA when a GPU is present, else CPU.")]
LoaderWorkers = Annotated[int, typer.Option("--workers", help="DataLoader worker processes (forkserver; 0 = load in the main process).")]
Seed = Annotated[int, typer.Option("--seed", help="Random seed: initialisation, order, augmentation.")]
Resume = Annotated[bool, typer.Option("--resume", help="Continue the run in --out from last.pt.")]
Scheduler = Annotated[
    Optional[str],
    typer.Option(
        "--scheduler",
        envvar="IMAGESIM_SCHEDULER",
        help="Dask scheduler address tcp://HOST:PORT, or 'local' for a LocalCluster on this machine; default: run in this process.",
    ),
]

# --- library parameter names shown as flags ---

#: Library parameter names that are neither a command's python parameter name nor its flag's name.
#: Keep it short: name a command's parameters like the library's (``zones`` for the repeatable ``--zone``).
LIBRARY_NAMES: Mapping[str, str] = {
    "chips_dir": "chips",  # build_labels, run_encode, write_report, create_app: the folder every command calls --chips
    "index_dir": "index",  # create_app: --index
}

_BACKTICKED = re.compile(r"`([A-Za-z_][A-Za-z0-9_]*)`")


def command_flags(command: Any) -> dict[str, str]:
    """Parameter name → how the command line spells it, for every visible parameter of ``command``.

    An option is found by its python name and by its flag's name (``out`` for ``--out``) and shown as
    its first long flag (``--zoom``); an argument is shown as its metavar (``DEST``).
    """
    flags: dict[str, str] = {}
    for param in command.params:
        if getattr(param, "hidden", False) or not param.name:
            continue
        if isinstance(param, TyperOption):
            longs = [o for o in param.opts if o.startswith("--")] or list(param.opts)
            shown = longs[0]
            names = [param.name, *(o.lstrip("-").replace("-", "_") for o in longs)]
        elif isinstance(param, TyperArgument):
            shown = param.metavar or param.name.upper()
            names = [param.name]
        else:
            continue
        for name in names:
            flags.setdefault(name, shown)
    for library, cli in LIBRARY_NAMES.items():
        if cli in flags:
            flags.setdefault(library, flags[cli])
    return flags


def with_flags(message: str, flags: Mapping[str, str]) -> str:
    """``message`` with each backticked parameter name in ``flags`` written as its flag:
    "`zoom` 25: must be 12..20" → "--zoom 25: must be 12..20". Other backticked text is left as it is."""
    return _BACKTICKED.sub(lambda m: flags.get(m.group(1), m.group(0)), message)


# The click command running now (set by the registration wrapper), for log lines that name parameters.
_RUNNING: contextvars.ContextVar[Any] = contextvars.ContextVar("imagesim_running_command", default=None)


def running_flags(message: str) -> str:
    """``message`` with its backticked parameter names shown as the running command's flags (as it is
    outside a command)."""
    command = _RUNNING.get()
    return with_flags(message, command_flags(command)) if command is not None else message


def log(message: str) -> None:
    """A library log line on stderr, its backticked parameter names shown as the running command's flags."""
    err.print(running_flags(message), highlight=False, markup=False)


def show_flags(exc: ImagesimError, command: Any) -> None:
    """Rewrite ``exc``'s message in place (same exception, type and ``param``) with the command's flags.

    Any imagesim error, not only ``InvalidArgumentError``: "pass `overwrite` to replace it" comes
    from ``OutputExistsError``."""
    if len(exc.args) == 1 and isinstance(exc.args[0], str):
        message = with_flags(exc.args[0], command_flags(command))
        if message != exc.args[0]:
            exc.args = (message,)


# --- registration ---

F = TypeVar("F", bound=Callable[..., Any])
_CTX = "_imagesim_ctx"


class FlagsTakeNoValue:
    """For click commands and groups: an option that takes no value (a flag, a ``--x/--no-x`` pair,
    ``--help``) shows none in ``--help``.

    Typer's rich help prints every option's type, flags included: ``--small <bool>`` suggested
    ``--small true``, which fails. An empty metavar leaves the type column blank; flags never use it.
    """

    def get_params(self, ctx: Any) -> list[Any]:
        params: list[Any] = super().get_params(ctx)  # type: ignore[misc]
        for param in params:
            if (getattr(param, "is_flag", False) or getattr(param, "count", False)) and param.metavar is None:
                param.metavar = ""
        return params


class Command(FlagsTakeNoValue, TyperCommand):
    """A command whose ``aliases`` (old flag → flag) are accepted but not listed in ``--help``.

    An alias is another spelling of its flag: ``--threshold 8`` and ``--threshold=8`` are rewritten to
    the flag before click parses the line (up to a ``--``), so errors and ``--help`` name the flag.
    """

    aliases: ClassVar[Mapping[str, str]] = {}

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if self.aliases:
            args = list(args)
            for i, arg in enumerate(args):
                if arg == "--":
                    break
                flag, eq, value = arg.partition("=")
                if flag in self.aliases:
                    args[i] = self.aliases[flag] + eq + value
        return super().parse_args(ctx, args)


class Group(FlagsTakeNoValue, TyperGroup):
    """A group of commands (``imagesim osm``)."""


class InOrder(Group):
    """A group listing its commands in ``order`` (Typer lists sub-groups after every command)."""

    order: ClassVar[tuple[str, ...]] = ()

    def list_commands(self, ctx: Any) -> list[str]:
        rank = {name: i for i, name in enumerate(self.order)}
        return sorted(super().list_commands(ctx), key=lambda name: rank.get(name, len(rank)))


def _flag_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` for Typer: imagesim errors it raises name the command's flags instead of library parameters.

    The wrapper takes the click context as one more (keyword-only) parameter, which Typer fills in.
    """
    signature = inspect.signature(fn, eval_str=True)

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        ctx = kwargs.pop(_CTX)
        token = _RUNNING.set(ctx.command)
        try:
            return fn(*args, **kwargs)
        except ImagesimError as exc:
            show_flags(exc, ctx.command)
            raise
        finally:
            _RUNNING.reset(token)

    ctx_param = inspect.Parameter(_CTX, inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)
    run.__signature__ = signature.replace(parameters=[*signature.parameters.values(), ctx_param])  # type: ignore[attr-defined]
    return run


class Commands:
    """The commands of one CLI module, in order: the one way a command is declared.

    ::

        commands = Commands()                  # top-level commands: `imagesim chip`
        # or: commands = Commands("osm", help="…") for a group of its own: `imagesim osm fetch`

        @commands.command("nodata-index", aliases={"--threshold": "--nodata-threshold"})
        def nodata_index(...) -> None: ...

    ``commands.register(app)`` adds them to a Typer app (the `imagesim` app, or a test's); a group is
    added as one sub-command, ``commands.app``. Every command registered this way shows library
    errors with its flags (:func:`show_flags`) and accepts its ``aliases`` (old flag → flag) hidden.
    """

    def __init__(self, group: str | None = None, *, help: str | None = None) -> None:
        self.group = group
        self.app: typer.Typer | None = typer.Typer(help=help, no_args_is_help=True, cls=Group) if group else None
        self._entries: list[tuple[str, Callable[..., Any], dict[str, Any]]] = []

    @property
    def names(self) -> tuple[str, ...]:
        """What this module adds to an app: the group's name, or its commands' names, in order."""
        return (self.group,) if self.group else tuple(name for name, _, _ in self._entries)

    def command(self, name: str, *, aliases: Mapping[str, str] | None = None, **kwargs: Any) -> Callable[[F], F]:
        """Declare ``name`` (``kwargs`` go to ``typer.Typer.command``); the function itself is returned unchanged."""

        def declare(fn: F) -> F:
            cls = type(f"{fn.__name__}_command", (Command,), {"aliases": dict(aliases)}) if aliases else Command
            entry = (name, fn, {"cls": cls, **kwargs})
            self._entries.append(entry)
            if self.app is not None:
                self._add(self.app, entry)
            return fn

        return declare

    def register(self, app: typer.Typer) -> None:
        """Add this module's commands (or its group) to ``app``."""
        if self.app is not None:
            app.add_typer(self.app, name=self.group)
            return
        for entry in self._entries:
            self._add(app, entry)

    @staticmethod
    def _add(app: typer.Typer, entry: tuple[str, Callable[..., Any], dict[str, Any]]) -> None:
        name, fn, kwargs = entry
        app.command(name, **kwargs)(_flag_errors(fn))
