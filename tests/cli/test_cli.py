"""The `imagesim` command as a user runs it (the subprocess ``cli`` fixture): the command list, the
old flag names, errors naming flags, what `--help` imports."""

from __future__ import annotations

import json
import re
import subprocess
import sys

PIPELINE = [
    "sample-data",
    "chip",
    "nodata-index",
    "masks",
    "osm",
    "labels",
    "pretrain",
    "train",
    "export",
    "encode",
    "index",
    "similar",
    "classmap",
    "serve",
    "stac",
    "change",
]
HEAVY = {
    "polars",
    "numpy",
    "torch",
    "torchvision",
    "faiss",
    "fastapi",
    "uvicorn",
    "onnxruntime",
    "pyproj",
    "shapely",
    "pyarrow",
    "dask",
    "distributed",
}


def listed(help_text: str) -> list[str]:
    """The command names of a rich `--help` screen, in the order shown."""
    panel = help_text[help_text.index("Commands") :]
    return re.findall(r"^[│|] ([a-z][a-z-]*) ", panel, flags=re.MULTILINE)


def option_names(help_text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", help_text))


def test_cli_help_lists_stages(cli) -> None:
    res = cli("--help")
    assert res.returncode == 0
    for command in ("chip", "sample-data"):
        assert command in res.stdout


def test_help_lists_commands_in_pipeline_order(cli) -> None:
    res = cli("--help")
    assert res.returncode == 0, res.stderr
    assert listed(res.stdout) == PIPELINE


def test_no_arguments_prints_the_help(cli) -> None:
    res = cli()
    text = res.stdout + res.stderr
    assert "Usage" in text and listed(text) == PIPELINE
    assert "Traceback" not in text


def test_cli_errors_are_one_line(cli, tmp_path) -> None:
    res = cli("chip", "--ard-path", tmp_path / "missing", "--dest", tmp_path / "out")
    assert res.returncode == 1
    assert "ARD path does not exist" in res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    res = cli("chip", "--ard-path", tmp_path / "missing", "--dest", tmp_path / "out", env={"IMAGESIM_DEBUG": "1"})
    assert res.returncode == 1 and "Traceback" in res.stderr
    res = cli("chip", "--ard-path", tmp_path, "--dest", tmp_path / "out", "--zoom", "25")
    assert res.returncode == 1 and "--zoom 25" in res.stderr


def test_library_errors_name_the_flag(cli, tmp_path) -> None:
    res = cli("chip", "--ard-path", tmp_path, "--dest", tmp_path / "out", "--zoom", "25")
    assert res.returncode == 1
    line = res.stderr.strip()
    assert len(line.splitlines()) == 1 and line.startswith("error:") and "Traceback" not in line
    assert "--zoom 25" in line and "`zoom`" not in line
    res = cli("chip", "--ard-path", tmp_path, "--dest", tmp_path / "out", "--nodata-threshold", "300")
    assert res.returncode == 1 and "--nodata-threshold 300" in res.stderr and "`" not in res.stderr


def test_old_flag_names_still_work_and_are_hidden(cli, tmp_path) -> None:
    res = cli("nodata-index", "--help")
    assert res.returncode == 0
    shown = option_names(res.stdout)
    assert {"--chips", "--nodata-threshold", "--min-nodata-pixels"} <= shown
    assert not shown & {"--chip-dir", "--threshold", "--min-pixels"}
    # each old name reaches the new option: a value out of range comes back under the new name
    res = cli("nodata-index", "--chip-dir", tmp_path, "--threshold", "300")
    assert res.returncode == 1 and "--nodata-threshold 300" in res.stderr, res.stderr
    res = cli("nodata-index", "--chip-dir", tmp_path, "--min-pixels=0")
    assert res.returncode == 1 and "--min-nodata-pixels" in res.stderr, res.stderr
    res = cli("nodata-index", "--chip-dir", tmp_path, "--threshold", "many")
    assert res.returncode == 2 and "--nodata-threshold" in res.stderr
    # `labels split --val` is `--val-fraction`, as `train` names it
    res = cli("labels", "split", "--help")
    assert "--val-fraction" in option_names(res.stdout) and "--val" not in option_names(res.stdout)
    res = cli("labels", "split", "--labels", tmp_path / "labels.parquet", "--val", "1.5")
    assert res.returncode == 1 and "--val-fraction 1.5" in res.stderr, res.stderr


def test_old_and_new_names_index_the_same_chips(cli, small_sample, tmp_path) -> None:
    chips = tmp_path / "chips"
    res = cli("chip", "--ard-path", small_sample.root, "--dest", chips, "--zoom", "14", "--catalog-id", small_sample.catalog_ids[0])
    assert res.returncode == 0, res.stderr
    new = cli(
        "nodata-index",
        "--chips",
        chips,
        "--source",
        "pixels",
        "--nodata-threshold",
        "8",
        "--min-nodata-pixels",
        "4",
        "--filename",
        "new.json",
    )
    old = cli("nodata-index", "--chip-dir", chips, "--source", "pixels", "--threshold", "8", "--min-pixels", "4", "--filename", "old.json")
    assert new.returncode == 0 and old.returncode == 0, new.stderr + old.stderr
    assert json.loads((chips / "new.json").read_text()) == json.loads((chips / "old.json").read_text())


def test_help_imports_no_heavy_dependency() -> None:
    """`imagesim --help`, and every command's, works and imports no polars, numpy, torch, faiss or fastapi."""
    commands = [
        [],
        *([c] for c in PIPELINE),
        *(["osm", c] for c in ("fetch", "import", "tags")),
        *(["labels", c] for c in ("build", "split", "report")),
    ]
    code = f"""
import json, sys
from typer.testing import CliRunner
from imagesim.cli import app
for args in {commands!r}:
    res = CliRunner().invoke(app, [*args, "--help"])
    assert res.exit_code == 0 and "Usage" in res.output, (args, res.output)
print(json.dumps(sorted({{m.split(".")[0] for m in sys.modules}} & set({sorted(HEAVY)!r}))))
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout.strip().splitlines()[-1]) == []
