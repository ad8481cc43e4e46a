"""The fast path of `imagesim chip` and `imagesim nodata-index`: their command line read without typer.

Typer (with click, its own copy) is ~0.05 s of a start that the issue wants at 0.15 s in all; these two
commands are the ones run over and over on many deliveries. So :func:`run_fast` reads their line with a
small parser from :data:`SPECS` — each option's flags, type, default, environment variable and aliases,
*generated* from the typer declarations in :mod:`imagesim.cli.imagery` (``python -m imagesim.cli.fast``
writes ``fast_spec.py``; tests/cli/test_fast.py checks it is current and that both parsers give the
commands the same values) — and calls the same code the typer commands call
(:mod:`imagesim.cli.imagery_run`), errors worded with the same flags.

Only plain lines are read here: long options with a value (``--zoom 16``, ``--zoom=16``), flags
(``--overwrite``, ``--no-measure``), repeated options, aliases, the environment variable. Anything else
— ``--help``, an unknown option, a value that does not convert, a missing required option — returns
False without running anything, and :func:`imagesim.cli.main` hands the line to typer, which says what
is wrong in its own words.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from imagesim.cli import imagery_run
from imagesim.cli._output import rename_flags
from imagesim.cli.fast_spec import SPECS
from imagesim.errors import ImagesimError

#: What each command runs once its options are read (the typer commands call the same functions).
BODIES: dict[str, Callable[..., None]] = {"chip": imagery_run.chip, "nodata-index": imagery_run.nodata_index}
#: click parameter types the parser converts (any other: the command is left to typer).
_CONVERT: dict[str, Callable[[str], Any]] = {"str": str, "int": int, "float": float}


class _NotHere(Exception):
    """The line is for typer to read."""


def _value(param: dict[str, Any], text: str) -> Any:
    convert = _CONVERT.get(param["type"])
    if convert is None:
        raise _NotHere
    try:
        return convert(text)
    except ValueError:
        raise _NotHere from None


def parse(spec: dict[str, Any], args: Sequence[str]) -> dict[str, Any] | None:
    """The values the command's function gets for ``args`` (the line after the command's name), or None
    when the line is not one this parser reads (see the module's notes)."""
    try:
        return _parse(spec, args)
    except _NotHere:
        return None


def _parse(spec: dict[str, Any], args: Sequence[str]) -> dict[str, Any]:
    params = {p["name"]: p for p in spec["params"]}
    by_flag: dict[str, tuple[dict[str, Any], bool | None]] = {}
    for p in spec["params"]:
        for flag in p["opts"]:
            by_flag[flag] = (p, True if p["flag"] else None)
        for flag in p["secondary"]:
            by_flag[flag] = (p, False)
    given: dict[str, Any] = {}
    i = 0
    while i < len(args):
        flag, eq, text = args[i].partition("=")
        flag = spec["aliases"].get(flag, flag)
        if not flag.startswith("--") or flag not in by_flag:  # an argument, `--`, `--help`, a short or unknown option
            raise _NotHere
        param, flag_value = by_flag[flag]
        if param["flag"]:
            if eq:
                raise _NotHere
            value: Any = flag_value
        else:
            if not eq:
                i += 1
                if i == len(args) or args[i].startswith("-"):  # no value, or one click might read otherwise
                    raise _NotHere
                text = args[i]
            value = _value(param, text)
        if param["multiple"]:
            given.setdefault(param["name"], []).append(value)
        else:
            given[param["name"]] = value
        i += 1
    values: dict[str, Any] = {}
    for name, p in params.items():
        if name in given:
            values[name] = given[name]
        elif p["envvar"] and os.environ.get(p["envvar"]):
            values[name] = _value(p, os.environ[p["envvar"]])
        elif p["required"]:
            raise _NotHere
        else:
            values[name] = p["default"]
    return values


def run_fast(args: Sequence[str]) -> bool:
    """Run ``imagesim ARGS`` (``args[0]`` a command of :data:`SPECS`) if this parser reads the line: True
    once it ran, False (nothing run) when typer must read it. Errors as the typer command raises them (its
    flags in the message); a run with failures exits 1 (:class:`SystemExit`)."""
    if not args or args[0] not in SPECS:
        return False
    spec = SPECS[args[0]]
    values = parse(spec, args[1:])
    if values is None:
        return False
    try:
        BODIES[args[0]](**values)
    except ImagesimError as exc:
        rename_flags(exc, spec["flags"])
        raise
    return True


# --- the spec, generated from the typer declarations ---


def spec_of(command: Any) -> dict[str, Any]:
    """The parser's view of a click ``command`` (a registered imagesim command): its aliases, its flags
    by parameter name, and per parameter the flags, type, default, environment variable."""
    from imagesim.cli._common import command_flags

    params = []
    for param in command.params:
        if param.param_type_name != "option":
            raise ValueError(f"{command.name}: {param.name} is an argument; the fast path reads options only")
        params.append(
            {
                "name": param.name,
                "opts": list(param.opts),
                "secondary": list(param.secondary_opts),
                "flag": bool(param.is_flag),
                "multiple": bool(param.multiple),
                "type": param.type.name,
                "default": param.default,
                "required": bool(param.required),
                "envvar": param.envvar,
            }
        )
    return {"aliases": dict(getattr(command, "aliases", {})), "flags": command_flags(command), "params": params}


def current_specs() -> dict[str, dict[str, Any]]:
    """:func:`spec_of` each command of :data:`BODIES`, from the typer app of its stage."""
    import typer

    from imagesim.cli.build import build_app
    from imagesim.cli.stages import ONE_STAGE, stages

    specs = {}
    for name in BODIES:
        group = typer.main.get_command(build_app(stages([ONE_STAGE[name]])))
        specs[name] = spec_of(group.commands[name])  # type: ignore[attr-defined]
    return specs


def write_spec(path: str | None = None) -> str:
    """Write :func:`current_specs` as ``fast_spec.py`` (beside this module unless ``path``); its path."""
    from pathlib import Path
    from pprint import pformat

    target = Path(path) if path else Path(__file__).with_name("fast_spec.py")
    text = (
        '"""The command lines :mod:`imagesim.cli.fast` reads: written by ``python -m imagesim.cli.fast`` from the\n'
        'typer declarations (tests/cli/test_fast.py checks it is current). Do not edit."""\n\n'
        "from typing import Any\n\n"
        f"SPECS: dict[str, dict[str, Any]] = {pformat(current_specs(), width=120, sort_dicts=False)}\n"
    )
    target.write_text(text, encoding="utf-8")
    return str(target)


if __name__ == "__main__":
    print(write_spec(sys.argv[1] if len(sys.argv) > 1 else None))
