"""The CLI's shared machinery, in process: registration, library parameter names shown as flags,
hidden aliases, and `main`'s exit codes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import pytest
import typer
from typer.testing import CliRunner

import imagesim.cli
from imagesim.cli._common import Commands, Overwrite, Zones, progress_bar, with_flags
from imagesim.errors import ImagesimError, InvalidArgumentError, MissingDependencyError, OutputExistsError
from imagesim.progress import ProgressSink, open_progress


def toy_app(error: Exception) -> typer.Typer:
    commands = Commands()

    @commands.command("cut", aliases={"--old-zoom": "--zoom"})
    def cut(
        dest: Annotated[Path, typer.Argument()],
        chips_dir: Annotated[str, typer.Option("--chips")] = ".",
        zoom: Annotated[int, typer.Option()] = 17,
        out_path: Annotated[Optional[str], typer.Option("--out")] = None,
        zones: Zones = None,
        overwrite: Overwrite = False,
    ) -> None:
        """A toy command that raises ``error``."""
        if zoom != 17:
            raise InvalidArgumentError(f"`zoom` {zoom}: must be 12..20", param="zoom")
        raise error

    @commands.command("other")
    def other() -> None:
        """A second command, so the app is a group."""

    app = typer.Typer()
    commands.register(app)
    return app


@pytest.mark.parametrize(
    ("message", "shown"),
    [
        ("`zoom` 25: must be 12..20", "--zoom 25: must be 12..20"),  # python name
        ("pass `overwrite` to replace it", "pass --overwrite to replace it"),
        ("`out` exists", "--out exists"),  # the flag's own name (python name out_path)
        ("`chips_dir` holds no chips.parquet", "--chips holds no chips.parquet"),  # both
        ("`zones` [99]: UTM zones are 1..60", "--zone [99]: UTM zones are 1..60"),
        ("`dest` exists and is not a folder", "DEST exists and is not a folder"),  # an argument: its metavar
        ("`quality` 0 and `imagesim chip`, `<zone>/<quadkey>`", "`quality` 0 and `imagesim chip`, `<zone>/<quadkey>`"),  # not parameters
        ("--zoom 25 (already a flag)", "--zoom 25 (already a flag)"),
    ],
)
def test_library_names_are_shown_as_the_commands_flags(message: str, shown: str) -> None:
    res = CliRunner().invoke(toy_app(InvalidArgumentError(message)), ["cut", "d"])
    assert isinstance(res.exception, InvalidArgumentError)
    assert str(res.exception) == shown


def test_the_error_keeps_its_type_and_param() -> None:
    res = CliRunner().invoke(toy_app(OutputExistsError("`out` exists; pass `overwrite`")), ["cut", "d"])
    assert type(res.exception) is OutputExistsError and str(res.exception) == "--out exists; pass --overwrite"
    res = CliRunner().invoke(toy_app(ValueError("`zoom`")), ["cut", "d"])
    assert type(res.exception) is ValueError and str(res.exception) == "`zoom`"  # a bug is not reworded
    res = CliRunner().invoke(toy_app(ValueError()), ["cut", "d", "--zoom", "25"])
    assert res.exception.param == "zoom" and str(res.exception) == "--zoom 25: must be 12..20"


def test_aliases_are_accepted_and_hidden() -> None:
    app = toy_app(ValueError())
    for args in (["--old-zoom", "25"], ["--old-zoom=25"], ["--zoom", "25"]):
        res = CliRunner().invoke(app, ["cut", "d", *args])
        assert str(res.exception) == "--zoom 25: must be 12..20", args
    res = CliRunner().invoke(app, ["cut", "--help"])
    assert "--zoom" in res.output and "--old-zoom" not in res.output
    res = CliRunner().invoke(app, ["cut", "--", "--old-zoom"])  # after `--`: an argument, untouched
    assert isinstance(res.exception, ValueError)


def test_the_function_stays_callable() -> None:
    from imagesim.cli.learn import require_torch
    from imagesim.cli.search import similar

    assert callable(similar) and callable(require_torch)
    with pytest.raises(InvalidArgumentError):
        similar(positives=["x"], k=0)


def test_with_flags_leaves_unknown_names() -> None:
    assert with_flags("`a` and `b`", {"a": "--a"}) == "--a and `b`"


def test_progress_bar_is_a_progress_factory() -> None:
    sink = open_progress(progress_bar("test"), 3)
    assert isinstance(sink, ProgressSink)
    sink.update(3)
    sink.close()


@pytest.mark.parametrize(
    ("error", "code", "line"),
    [
        (InvalidArgumentError("`zoom` 25: must be 12..20"), 1, "error: `zoom` 25: must be 12..20"),
        (
            MissingDependencyError("needs torch; install it with `pip install 'imagesim[train]'`"),
            1,
            "error: needs torch; install it with `pip install 'imagesim[train]'`",
        ),
        (RuntimeError("boom [x]"), 1, "error: RuntimeError: boom [x] (set IMAGESIM_DEBUG=1 for the traceback)"),
        (KeyboardInterrupt(), 130, "interrupted"),
    ],
)
def test_main_exit_codes(monkeypatch, capsys, error: BaseException, code: int, line: str) -> None:
    def app(**_: object) -> None:
        raise error

    monkeypatch.setattr(imagesim.cli, "app", app)
    monkeypatch.delenv("IMAGESIM_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_:
        imagesim.cli.main()
    assert exit_.value.code == code
    assert capsys.readouterr().err.strip() == line


def test_main_debug_raises(monkeypatch) -> None:
    def app(**_: object) -> None:
        raise InvalidArgumentError("bad")

    monkeypatch.setattr(imagesim.cli, "app", app)
    monkeypatch.setenv("IMAGESIM_DEBUG", "1")
    with pytest.raises(ImagesimError, match="bad"):
        imagesim.cli.main()
