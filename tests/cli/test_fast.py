"""The fast path of `chip` and `nodata-index` (imagesim.cli.fast): its spec is the typer declarations', it
gives the commands the values typer gives them, hands typer every line it does not read, and words errors
with the same flags."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from imagesim.cli import ONE_STAGE, fast, stages


def test_the_spec_is_written_from_the_current_declarations() -> None:
    assert fast.SPECS == fast.current_specs(), "run `python -m imagesim.cli.fast` (then `ruff format`) to write it again"


def _typer_values(command: str, args: list[str], env: dict[str, str] | None = None) -> dict[str, Any] | None:
    """The values typer gives ``command``'s function for ``args`` (None when it refuses the line)."""
    (commands,) = stages([ONE_STAGE[command]])
    got: list[dict[str, Any]] = []
    app = typer.Typer()
    app.callback()(lambda: None)  # a group: the command is named on the line
    for name, fn, kwargs in commands._entries:
        if name != command:
            continue

        def capture(**values: Any) -> None:
            got.append(values)

        capture.__signature__ = inspect.signature(fn, eval_str=True)  # type: ignore[attr-defined]
        app.command(name, **kwargs)(capture)
    result = CliRunner().invoke(app, [command, *args], env=env)
    return got[0] if result.exit_code == 0 and got else None


LINES = {
    "chip": [
        ["--ard-path", "/ard", "--dest", "/chips"],
        ["--ard-path=/ard", "--dest=s3://b/c", "--zoom", "16", "--proc=3", "--quality", "85"],
        ["--ard-path", "/ard", "--dest", "/c", "--zone", "33", "--zone=19", "--quadkey", "0313", "--catalog-id", "A", "--catalog-id", "B"],
        ["--ard-path", "/ard", "--dest", "/c", "--passthrough", "--no-measure", "--skip-empty", "--overwrite"],
        ["--ard-path", "/ard", "--dest", "/c", "--measure", "--zoom", "15", "--zoom", "14"],  # the last wins
        ["--ard-path", "/ard", "--dest", "/c", "--scheduler", "tcp://h:8786", "--nodata-threshold", "8", "--min-nodata-pixels", "1"],
        ["--dest", "/c", "--ard-path", "/a=b"],  # '=' inside a value
    ],
    "nodata-index": [
        ["--chips", "/c"],
        ["--chip-dir", "/c", "--threshold", "4", "--min-pixels=2"],  # the original tool's names
        ["--chips", "/c", "--no-overwrite", "--source", "pixels", "--filename", "x.json", "--ard-path", "/ard", "--proc", "0"],
        ["--chips", "/c", "--overwrite", "--source=mask"],
    ],
}


@pytest.mark.parametrize(("command", "args"), [(c, a) for c, lines in LINES.items() for a in lines])
def test_the_fast_parser_gives_what_typer_gives(command: str, args: list[str]) -> None:
    values = fast.parse(fast.SPECS[command], args)
    assert values is not None
    assert values == _typer_values(command, args)


def test_the_environment_variable_is_read_as_typer_reads_it(monkeypatch) -> None:
    args = ["--chips", "/c"]
    monkeypatch.setenv("IMAGESIM_SCHEDULER", "tcp://env:1")
    values = fast.parse(fast.SPECS["nodata-index"], args)
    assert values is not None and values["scheduler"] == "tcp://env:1"
    assert values == _typer_values("nodata-index", args, env={"IMAGESIM_SCHEDULER": "tcp://env:1"})
    values = fast.parse(fast.SPECS["nodata-index"], [*args, "--scheduler", "local"])
    assert values is not None and values["scheduler"] == "local"


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["--chips", "/c", "--help"],
        ["--chips"],  # no value
        ["--chips", "/c", "--proc", "many"],  # not an int
        ["--proc", "2"],  # --chips missing
        ["--chips", "/c", "--frobnicate"],
        ["--chips", "/c", "extra"],
        ["--chips", "/c", "--", "x"],
        ["-h"],
        ["--chips", "/c", "--overwrite=yes"],
        ["--chips", "/c", "--proc", "-1"],  # a value like an option: click's reading of it is click's
    ],
)
def test_lines_it_does_not_read_go_to_typer(args: list[str]) -> None:
    assert fast.parse(fast.SPECS["nodata-index"], args) is None
    assert fast.run_fast(["nodata-index", *args]) is False  # nothing run


def _imagesim(*args: str) -> subprocess.CompletedProcess:
    code = "import sys; from imagesim.cli import main; sys.argv = ['imagesim', *sys.argv[1:]]; main()"
    env = {k: v for k, v in os.environ.items() if k != "IMAGESIM_SCHEDULER"}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120, env=env)


def test_errors_name_the_flags_as_the_typer_command_does(tmp_path) -> None:
    (tmp_path / "c").mkdir()
    # the fast path: a library error in the command's words
    done = _imagesim("nodata-index", "--chips", str(tmp_path / "c"), "--nodata-threshold", "300")
    assert done.returncode == 1
    assert "--nodata-threshold" in done.stderr and "`nodata_threshold`" not in done.stderr
    # through typer (`--threshold=300` is an alias, read by both): the same line
    assert fast.parse(fast.SPECS["nodata-index"], ["--chips", "x", "--threshold=300"]) is not None
    runner = CliRunner()
    from imagesim.cli import app

    typer_done = runner.invoke(app, ["nodata-index", "--chips", str(tmp_path / "c"), "--nodata-threshold", "300"])
    assert typer_done.exit_code == 1 and "--nodata-threshold" in str(typer_done.exception)
    # a line typer reads: its own usage error, exit code 2
    done = _imagesim("nodata-index", "--chips", str(tmp_path / "c"), "--proc", "many")
    assert done.returncode == 2 and "many" in done.stderr and "--proc" in done.stderr
    done = _imagesim("chip", "--help")
    assert done.returncode == 0 and "--ard-path" in done.stdout
