"""Start-up (issue 20): `imagesim chip` and `imagesim nodata-index` run with their stage module alone
(:data:`imagesim.cli.ONE_STAGE`), and that app is the whole app's command: the same options, help,
errors and results. Behaviour only; the time is benches/bench_startup.py's."""

from __future__ import annotations

import inspect
import json
import re
import subprocess
import sys

import polars as pl
import pytest
import typer
from typer.testing import CliRunner

import imagesim.cli
from imagesim.cli import ONE_STAGE, STAGE_MODULES, app_for, stages
from imagesim.errors import ImagesimError

FAST = sorted(ONE_STAGE)


def _command(app: typer.Typer, name: str):
    return typer.main.get_command(app).commands[name]  # type: ignore[attr-defined]


# Caches a parameter fills in when it is used, not part of its declaration.
_CACHES = {"_runtime_param", "_custom_shell_complete"}


def _declared(value: object, depth: int = 0) -> object:
    """``value`` as comparable data: an object (a click parameter, its type, Typer's type descriptor) as its
    class name and attributes, so that two builds of one declaration compare equal."""
    if isinstance(value, (list, tuple)):
        return [_declared(v, depth) for v in value]
    if isinstance(value, dict):
        return {k: _declared(v, depth) for k, v in value.items()}
    if depth < 4 and hasattr(value, "__dict__") and not (inspect.isroutine(value) or isinstance(value, type)):
        attrs = {k: _declared(v, depth + 1) for k, v in vars(value).items() if k not in _CACHES}
        return (type(value).__qualname__, attrs)
    return value


def test_one_stage_commands_are_their_modules() -> None:
    assert FAST == ["chip", "nodata-index"]
    for command, module in ONE_STAGE.items():
        assert module in STAGE_MODULES
        assert command in stages([module])[0].names


def test_other_commands_run_in_the_whole_app() -> None:
    whole = imagesim.cli.app
    for args in ([], ["--help"], ["--version"], ["osm", "fetch"], ["sample-data"], ["labels", "build"]):
        assert app_for(args) is whole


@pytest.mark.parametrize("name", FAST)
def test_fast_path_declares_the_same_command(name: str) -> None:
    fast, whole = _command(app_for([name]), name), _command(imagesim.cli.app, name)
    assert type(fast).__name__ == type(whole).__name__
    assert getattr(fast, "aliases", {}) == getattr(whole, "aliases", {})
    assert len(fast.params) > 5
    assert [_declared(p) for p in fast.params] == [_declared(p) for p in whole.params]
    assert fast.help == whole.help


def _invoke(app: typer.Typer, args: list[str]):
    res = CliRunner().invoke(app, args, prog_name="imagesim")
    # a library error leaves the app (main() prints it): compare its type and message
    failure = (type(res.exception).__name__, str(res.exception)) if isinstance(res.exception, ImagesimError) else None
    return res.exit_code, res.output, failure


@pytest.mark.parametrize(
    "args",
    [
        ["chip", "--help"],
        ["nodata-index", "--help"],
        ["chip"],  # --ard-path and --dest missing
        ["chip", "--ard-path", "{tmp}", "--dest", "{tmp}/c", "--zoom", "many"],
        ["chip", "--ard-path", "{tmp}", "--dest", "{tmp}/c", "--zoom", "25"],  # the library's error, named by flag
        ["chip", "--ard-path", "{tmp}", "--dest", "{tmp}/c", "--no-such-option"],
        ["nodata-index", "--chip-dir", "{tmp}", "--threshold", "300"],  # old names (aliases)
        ["nodata-index", "--chips", "{tmp}", "--min-pixels=0"],
        ["nodata-index", "--chips", "{tmp}", "--source", "pixels"],  # no chips there
    ],
)
def test_fast_path_and_whole_app_answer_alike(args: list[str], tmp_path) -> None:
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    fast = _invoke(app_for(args), args)
    whole = _invoke(imagesim.cli.app, args)
    assert fast == whole
    assert fast[0] != 0 or "Usage: imagesim" in fast[1]


_RUN = """
import json, sys
from imagesim.cli import main
sys.argv = ["imagesim", *sys.argv[1:]]
code = 0  # main() returns after the fast path (the typer app always exits)
try:
    main()
except SystemExit as exc:
    code = exc.code
heavy = ("rich", "torch", "typer", "polars", "numpy", "pyarrow", "shapely", "pyproj", "concurrent", "socket")
loaded = sorted({m for m in sys.modules if m.split(".")[0] in heavy or m.startswith("imagesim.cli.")})
print(json.dumps({"code": code, "modules": loaded}))
"""

_WHOLE = """
import sys
from imagesim.cli import app
app(sys.argv[1:], prog_name="imagesim")
"""


def _main(*args: object) -> tuple[dict, list[str]]:
    """`imagesim ARGS` through :func:`imagesim.cli.main` in a child process: its exit code and the modules
    it imported, and its stdout lines before that report."""
    res = subprocess.run([sys.executable, "-c", _RUN, *map(str, args)], capture_output=True, text=True, timeout=300)
    lines = res.stdout.strip().splitlines()
    return json.loads(lines[-1]), lines[:-1]


def _whole(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _WHOLE, *map(str, args)], capture_output=True, text=True, timeout=300)


def test_fast_path_runs_like_the_whole_app(small_sample, tmp_path) -> None:
    """The same chips, manifest and index either way; the fast path imports no other stage's module and, on
    its usual path (no warning, no progress bar off a terminal), no rich."""
    chip = ["chip", "--ard-path", small_sample.root, "--zoom", "14", "--catalog-id", small_sample.catalog_ids[0], "--proc", "1"]
    report, lines = _main(*chip, "--dest", tmp_path / "fast")
    whole = _whole(*chip, "--dest", tmp_path / "whole")
    assert report["code"] == 0 and whole.returncode == 0, whole.stderr

    def shown(lines: list[str], dest: str) -> list[str]:  # the lines, less the folder and the time taken
        return [re.sub(r" in [0-9.]+s \([0-9,]+ chips/s\)", "", line.replace(dest, "DEST")) for line in lines]

    assert shown(lines, str(tmp_path / "fast")) == shown(whole.stdout.strip().splitlines(), str(tmp_path / "whole"))
    assert len(lines) == 2 and re.match(r"[0-9,]+ chips written", lines[0])
    modules = report["modules"]
    # read by the fast path (imagesim.cli.fast): no typer, no other stage's module; the manifest is kept by
    # the Rust core (no polars); numpy and shapely for the masks' geometry
    assert "typer" not in modules and "polars" not in modules and "shapely" in modules
    assert [m for m in modules if m.startswith("imagesim.cli.")] == [
        "imagesim.cli._output",
        "imagesim.cli.fast",
        "imagesim.cli.fast_spec",
        "imagesim.cli.imagery_run",
        "imagesim.cli.stages",
    ]
    assert not [m for m in modules if m.split(".")[0] in ("rich", "torch")]
    # the masks are in the cell's CRS and the manifest's parts the Rust core's: neither pyproj nor pyarrow
    assert not [m for m in modules if m.split(".")[0] in ("pyproj", "pyarrow")]

    def files(root):
        return sorted(str(p.relative_to(root)) for p in root.rglob("*.jpg"))

    assert files(tmp_path / "fast") == files(tmp_path / "whole") != []
    manifests = [pl.read_parquet(tmp_path / d / "chips.parquet").sort("chip") for d in ("fast", "whole")]
    assert manifests[0].equals(manifests[1])

    chips = tmp_path / "fast"
    index = ["nodata-index", "--chips", chips, "--source", "pixels", "--proc", "1"]
    report, _ = _main(*index, "--filename", "fast.json")
    whole = _whole(*index, "--filename", "whole.json")
    assert report["code"] == 0 and whole.returncode == 0, whole.stderr
    # the tables are read and written by the Rust core: no polars, numpy, pyarrow, shapely or pyproj; nor typer
    heavy = ("rich", "torch", "typer", "polars", "numpy", "pyarrow", "shapely", "pyproj")
    assert not [m for m in report["modules"] if m.split(".")[0] in heavy]
    assert json.loads((chips / "fast.json").read_text()) == json.loads((chips / "whole.json").read_text())
    # and with the manifest's counts (the default when chips.parquet is there)
    report, _ = _main("nodata-index", "--chips", chips, "--filename", "manifest.json")
    assert report["code"] == 0 and not [m for m in report["modules"] if m.split(".")[0] in ("polars", "numpy", "pyarrow")]
    # nothing to decode: no thread pool (concurrent.futures loads logging), and no socket for the parts' owner file
    assert not [m for m in report["modules"] if m.split(".")[0] in ("concurrent", "socket")]
    classes = [json.loads((chips / f"{name}.json").read_text()) for name in ("manifest", "whole")]
    assert [sorted(sum(c.values(), [])) for c in classes][0] == sorted(sum(classes[1].values(), []))


@pytest.mark.parametrize(
    ("env", "drawn"),
    [({}, False), ({"IMAGESIM_PROGRESS": "1"}, True), ({"FORCE_COLOR": "1"}, True), ({"TTY_COMPATIBLE": "0", "FORCE_COLOR": "1"}, False)],
)
def test_progress_bar_off_a_terminal_is_silent_without_rich(monkeypatch, capsys, env: dict[str, str], drawn: bool) -> None:
    """Drawn exactly where rich's console says it is a terminal (or IMAGESIM_PROGRESS=1); else the silent sink."""
    from rich.console import Console

    from imagesim.cli._common import RichProgress, progress_bar, progress_shown
    from imagesim.progress import ProgressSink

    for name in ("IMAGESIM_PROGRESS", "FORCE_COLOR", "TTY_COMPATIBLE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    # stderr is captured: no terminal
    assert progress_shown() is drawn
    if "IMAGESIM_PROGRESS" not in env:
        assert Console(stderr=True).is_terminal is drawn
    sink = progress_bar("test")(3)
    assert isinstance(sink, RichProgress) is drawn
    assert type(sink) is (RichProgress if drawn else ProgressSink)
    sink.update(3)
    sink.close()


# `entry` (the console script) with an atexit handler and, optionally, a non-daemon thread still working:
# prints what the run left behind, from the atexit handler (the last code that runs before the process ends).
_ENTRY = """
import atexit, pathlib, sys, threading, time
marker, late = pathlib.Path(sys.argv.pop(1)), sys.argv.pop(1) == "thread"
atexit.register(lambda: marker.write_text("atexit ran"))
if late:
    threading.Thread(target=lambda: (time.sleep(0.5), marker.with_suffix(".thread").write_text("joined"))).start()
from imagesim.cli import entry
sys.argv = ["imagesim", *sys.argv[1:]]
print("buffered output", end="")  # no newline: still in stdout's buffer at the end
entry()
"""


def _entry(marker, thread: bool, *args: object) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", _ENTRY, str(marker), "thread" if thread else "-", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def test_entry_ends_a_one_stage_command_with_its_code_after_atexit_and_flush(tmp_path) -> None:
    from PIL import Image

    chips = tmp_path / "chips"
    chips.mkdir()
    Image.new("RGB", (64, 64), (90, 120, 60)).save(chips / "a.jpg")
    marker = tmp_path / "marker"
    res = _entry(marker, False, "nodata-index", "--chips", chips, "--source", "pixels", "--proc", "1")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("buffered output") and "1 chips: 1 all_data" in res.stdout
    assert marker.read_text() == "atexit ran"
    assert json.loads((chips / "nodata-index.json").read_text())["all_data"] == ["a.jpg"]

    res = _entry(marker, False, "nodata-index", "--chips", tmp_path / "nowhere")  # an error: its line and code 1
    assert res.returncode == 1 and "chip folder does not exist" in res.stderr
    res = _entry(marker, False, "chip", "--zoom", "3")  # a usage error: click's code 2
    assert res.returncode == 2 and "Missing option" in res.stderr


def test_entry_waits_for_a_working_thread_and_leaves_other_commands_alone(tmp_path) -> None:
    marker = tmp_path / "marker"
    res = _entry(marker, True, "nodata-index", "--help")
    assert res.returncode == 0 and "--chips" in res.stdout
    assert marker.with_suffix(".thread").read_text() == "joined"  # the normal exit joined the thread
    assert marker.read_text() == "atexit ran"
    marker.unlink()
    res = _entry(marker, False, "--version")
    assert res.returncode == 0 and res.stdout.startswith("buffered outputimagesim ")
    assert marker.read_text() == "atexit ran"


def test_exit_now_reads_the_code_as_system_exit_does(tmp_path) -> None:
    script = "import sys; from imagesim.cli import exit_now; exit_now(eval(sys.argv[1]))"
    for code, status, stderr in (("None", 0, ""), ("3", 3, ""), ("'bad run'", 1, "bad run\n"), ("-1", 255, "")):
        res = subprocess.run([sys.executable, "-c", script, code], capture_output=True, text=True, timeout=60)
        assert (res.returncode, res.stderr) == (status, stderr)
