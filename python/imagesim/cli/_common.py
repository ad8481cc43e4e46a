"""What every command module of the CLI shares: the option types and :class:`Commands`, the one way a
command is declared and registered; and, re-exported from :mod:`imagesim.cli._output` (no typer there),
the consoles, plain lines and the progress bar.

Nothing here imports a heavy dependency (polars, numpy, torch …): `imagesim --help` imports this module.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Optional, TypeVar

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from imagesim import options
from imagesim.cli._output import (  # noqa: F401  (re-exported: the command modules import them from here)
    LazyConsole,
    RichProgress,
    err,
    escape,
    out,
    progress_bar,
    progress_shown,
    rename_flags,
    say,
    with_flags,
)
from imagesim.errors import ImagesimError

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
    """Rewrite ``exc``'s message in place with the click ``command``'s flags (:func:`rename_flags`)."""
    rename_flags(exc, command_flags(command))


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
