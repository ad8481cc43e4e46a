"""Command-line manners: `--version`, flags that take no value show none in `--help` (every command),
and error messages keep their square brackets (rich markup is escaped)."""

from __future__ import annotations

import re

import pytest
import typer
from typer.testing import CliRunner

import imagesim
from imagesim.cli import app


def _commands() -> list[tuple[tuple[str, ...], object]]:
    """Every command and group of `imagesim`, with its path: ``(("osm", "fetch"), command)``."""
    found: list[tuple[tuple[str, ...], object]] = []

    def walk(path: tuple[str, ...], command) -> None:
        found.append((path, command))
        for name, sub in sorted(getattr(command, "commands", {}).items()):
            walk((*path, name), sub)

    walk((), typer.main.get_command(app))
    return found


COMMANDS = _commands()


def _shown_value(help_text: str, flag: str) -> str | None:
    """The value placeholder `--help` shows after ``flag`` (and its ``--no-`` twin), or None."""
    for line in help_text.splitlines():
        m = re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])(?:\s+--[\w-]+)*\s+(<[^>]*>|[A-Z][A-Z_]+\b)", line)
        if m:
            return m.group(1)
    return None


def test_version(cli) -> None:
    res = cli("--version")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"imagesim {imagesim.__version__}"


def test_every_command_is_covered() -> None:
    paths = {" ".join(path) for path, _ in COMMANDS}
    assert {"", "sample-data", "osm", "osm fetch", "export", "train", "serve"} <= paths and len(paths) > 15


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[" ".join(p) or "imagesim" for p, _ in COMMANDS])
def test_flags_show_no_value_in_help(path, command) -> None:
    res = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "250", "TERMINAL_WIDTH": "250"})
    assert res.exit_code == 0, res.output
    assert "<bool>" not in res.output
    ctx = typer.main._click.Context(command, info_name=path[-1] if path else "imagesim")  # type: ignore[attr-defined]
    flags = [p for p in command.get_params(ctx) if getattr(p, "is_flag", False) and not p.hidden]
    assert any("--help" in p.opts for p in flags)
    for param in flags:
        for flag in [*param.opts, *param.secondary_opts]:
            assert flag in res.output, f"{flag} not in the help of {path}"
            assert _shown_value(res.output, flag) is None, f"{' '.join(path)} --help shows a value for {flag}"
    # ...while an option that takes a value still shows one (the check above can see it).
    valued = [p for p in command.params if not getattr(p, "is_flag", True) and not p.hidden and p.opts[0].startswith("--")]
    for param in valued[:1]:
        assert _shown_value(res.output, param.opts[0]) is not None, f"{param.opts[0]} shows no value in {path}"


def test_sample_data_help_as_a_user_sees_it(cli) -> None:
    res = cli("sample-data", "--help", env={"COLUMNS": "200"})
    assert res.returncode == 0
    assert _shown_value(res.stdout, "--small") is None and _shown_value(res.stdout, "--overwrite") is None
    assert _shown_value(res.stdout, "--seed") == "<int>"


def test_export_help_shows_no_value_for_a_flag_pair(cli) -> None:
    res = cli("export", "--help", env={"COLUMNS": "200"})
    assert "--normalize" in res.stdout and "--no-normalize" in res.stdout
    assert _shown_value(res.stdout, "--normalize") is None and _shown_value(res.stdout, "--no-normalize") is None


def test_error_messages_keep_square_brackets(cli, tmp_path) -> None:
    taxonomy = tmp_path / "taxonomy.toml"
    taxonomy.write_text('[[class]]\nname = "roads"\nmatch = 5\n')
    (tmp_path / "ard").mkdir()
    (tmp_path / "chips").mkdir()
    res = cli("labels", "build", "--ard-path", tmp_path / "ard", "--chips", tmp_path / "chips", "--taxonomy", taxonomy)
    assert res.returncode == 1
    assert res.stderr.strip().splitlines() == [
        f"error: {taxonomy}: class 'roads': 'match' must be a table of key = \"*\" or key = [values]"
    ], res.stderr
