"""Output files get the mode the process umask gives (0644 under 022, 0640 under 027), as the chip
JPEGs written by Rust do, while still being written atomically (temporary file + rename).

The umask is process-wide, so every test that sets one does it in a child process (first thing, before
any thread exists); the test process's own umask is never touched.
"""

from __future__ import annotations

import importlib.util
import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from imagesim import fsutil

UMASKS = [0o022, 0o027]


def _child(code: str, umask: int, *args: object) -> list[str]:
    """The command line of a child Python that sets its umask before anything else runs, then runs ``code``."""
    prelude = f"import os, sys\nos.umask({umask:#o})\n"
    return [sys.executable, "-c", prelude + textwrap.dedent(code), *(str(a) for a in args)]


def _check(res: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert res.returncode == 0, f"stdout:\n{res.stdout}\nstderr:\n{res.stderr}"
    return res


def run_python(code: str, umask: int, *args: object, timeout: float = 600) -> subprocess.CompletedProcess:
    """``code`` in a child Python whose umask is ``umask`` (see :func:`_child`)."""
    return _check(subprocess.run(_child(code, umask, *args), capture_output=True, text=True, timeout=timeout))


def modes_under(root: Path) -> dict[str, tuple[bool, int]]:
    """Every file and folder below ``root`` (not ``root`` itself): relative path → (is a folder, mode bits)."""
    found: dict[str, tuple[bool, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            st = path.lstat()
            found[path.relative_to(root).as_posix()] = (stat.S_ISDIR(st.st_mode), stat.S_IMODE(st.st_mode))
    return found


def wrong_modes(root: Path, umask: int) -> list[str]:
    return [
        f"{rel}: {mode:#o}, want {(0o777 if is_dir else 0o666) & ~umask:#o}"
        for rel, (is_dir, mode) in sorted(modes_under(root).items())
        if mode != (0o777 if is_dir else 0o666) & ~umask
    ]


# --- the helper itself ---


def test_file_mode_follows_this_process_umask(tmp_path: Path) -> None:
    """In this process (whatever its umask): what fsutil writes has the mode a plain open() gives."""
    plain = tmp_path / "plain"
    plain.write_text("x")
    assert fsutil.file_mode() == stat.S_IMODE(plain.stat().st_mode) == 0o666 & ~fsutil.umask()
    fsutil.write_json(tmp_path / "a.json", {"a": 1})
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == fsutil.file_mode()


@pytest.mark.parametrize("umask", UMASKS, ids=lambda m: f"umask{m:03o}")
def test_umask_is_read_without_changing_it(umask: int) -> None:
    """From /proc/self/status, and from the os.umask fallback where there is none; either way the
    process umask is the same afterwards."""
    res = run_python(
        """
        from imagesim import fsutil
        first = fsutil.umask()
        fsutil._PROC_STATUS = "/nonexistent/status"  # the fallback of systems without /proc
        fallback = fsutil.umask()
        now = os.umask(0o077)
        print(first, fallback, now, fsutil.file_mode())
        """,
        umask,
    )
    first, fallback, now, mode = map(int, res.stdout.split())
    assert (first, fallback, now, mode) == (umask, umask, umask, 0o666 & ~umask)


@pytest.mark.parametrize("umask", UMASKS, ids=lambda m: f"umask{m:03o}")
def test_every_fsutil_writer_and_the_sample_writers_follow_the_umask(tmp_path: Path, umask: int) -> None:
    """write_json, write_with, atomic_path (new files and replaced ones, a writer that recreates its
    file) and the sample delivery's own JSON writer: 0o666 & ~umask, and no temporary file left."""
    run_python(
        """
        from pathlib import Path
        import polars as pl
        from imagesim import fsutil
        from imagesim.imagery.sample import writers
        out = Path(sys.argv[1])
        fsutil.write_json(out / "new" / "a.json", {"a": 1})
        fsutil.write_with(out / "b.parquet", lambda tmp: pl.DataFrame({"x": [1]}).write_parquet(tmp))
        (out / "old.txt").write_text("old")
        os.chmod(out / "old.txt", 0o600)
        with fsutil.atomic_path(out / "old.txt") as tmp:
            tmp.write_text("new")
        def recreate(tmp):  # a writer that puts a file of its own where the temporary file was
            tmp.unlink()
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o600)
            os.write(fd, b"x")
            os.close(fd)
        fsutil.write_with(out / "c.bin", recreate)
        writers.write_json(out / "sample.json", {"b": 2})
        """,
        umask,
        tmp_path,
    )
    assert (tmp_path / "old.txt").read_text() == "new"
    assert sorted(modes_under(tmp_path)) == ["b.parquet", "c.bin", "new", "new/a.json", "old.txt", "sample.json"]
    assert wrong_modes(tmp_path, umask) == []


def test_a_failed_write_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), fsutil.atomic_path(tmp_path / "x.json") as tmp:
        tmp.write_text("half")
        raise RuntimeError("writer failed")
    assert list(tmp_path.iterdir()) == []


# --- every stage's outputs, from the small sample to a similarity search ---

PIPELINE = """
import json
from pathlib import Path

work = Path(sys.argv[1])
learn = sys.argv[2] == "1"
steps = []

from imagesim.imagery.sample import write_sample
sample = write_sample(work / "sample", seed=7, small=True)
steps.append("sample")

from imagesim.imagery.chip import ChipSettings, run_chip
chips = work / "chips"
assert run_chip(sample.root, chips, ChipSettings(zoom=17, proc=2)).written
steps.append("chip")

from imagesim.imagery.nodata import NodataSettings, run_nodata_index
run_nodata_index(chips, NodataSettings(proc=2, source="pixels"))
steps.append("nodata-index")

from imagesim.labels.cells import find_cells, tag_inventory, write_tag_parquet
from imagesim.labels.osm_import import import_osm
import_osm(sample.osm_pbf, sample.root, find_cells(sample.root))
write_tag_parquet(tag_inventory(sample.root), sample.root / "osm_tags.parquet")
steps.append("osm")

from imagesim.labels.build import LabelSettings, build_labels
from imagesim.labels.report import write_report
from imagesim.labels.split import split_labels
build_labels(chips, sample.root, LabelSettings(include=("partial",)))
split_labels(chips / "labels.parquet", val=0.3, group_level=15)
write_report(chips / "labels.parquet", samples=2)
steps.append("labels")

if learn:
    import torch
    torch.set_num_threads(2)
    from imagesim.learn.train import TrainConfig, run_train
    from imagesim.learn.export import export_onnx
    from imagesim.learn.encode import EncodeSettings, run_encode
    from imagesim.search.index import build_index, load_index
    from imagesim.search.similar import similar, write_geojson
    run = work / "run"
    cfg = TrainConfig(chips=str(chips), labels=str(chips / "labels.parquet"), out=str(run), backbone="resnet18",
                      chip_size=64, epochs=1, batch_size=16, workers=0, device="cpu", seed=3)
    run_train(cfg)
    export_onnx(run / "model.pt", work / "model.onnx")
    run_encode(work / "model.onnx", chips, EncodeSettings(provider="cpu", proc=2, batch_size=16))
    build_index(chips / "embeddings.parquet", work / "index")
    index = load_index(work / "index")
    first = index.ids["chip"][0]
    write_geojson(work / "similar.geojson", similar(index, [first], k=3))
    steps.append("learn")
    from imagesim.search.change import detect_changes
    detect_changes(chips, [chips / "embeddings.parquet"], geojson=work / "changes.geojson")
    steps.append("change")

print(json.dumps(steps))
"""


def _learn_available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("torch", "torchvision", "onnx", "onnxruntime", "faiss"))


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory: pytest.TempPathFactory) -> dict[int, tuple[Path, list[str]]]:
    """Every stage run once per umask, each in its own child process, side by side: umask → (its work
    folder, the steps it ran)."""
    learn = int(_learn_available())
    works = {umask: tmp_path_factory.mktemp(f"pipeline-{umask:03o}") for umask in UMASKS}
    children = {
        umask: subprocess.Popen(_child(PIPELINE, umask, work, learn), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for umask, work in works.items()
    }
    results: dict[int, tuple[Path, list[str]]] = {}
    try:
        for umask, child in children.items():
            stdout, stderr = child.communicate(timeout=900)
            res = _check(subprocess.CompletedProcess(child.args, child.returncode, stdout, stderr))
            results[umask] = (works[umask], json.loads(res.stdout.strip().splitlines()[-1]))
    finally:
        for child in children.values():
            if child.poll() is None:
                child.kill()
                child.wait()
    return results


@pytest.mark.parametrize("umask", UMASKS, ids=lambda m: f"umask{m:03o}")
def test_every_output_of_every_stage_follows_the_umask(pipelines: dict[int, tuple[Path, list[str]]], umask: int) -> None:
    work, steps = pipelines[umask]
    produced = modes_under(work)
    expected = [
        "sample/.imagesim-sample",
        "sample/sample.osm.pbf",
        "sample/changes-truth.geojson",
        "sample/ard/10/120020223032/osm_data.json",
        "sample/ard/osm_tags.parquet",
        "chips/chips.parquet",
        "chips/chip-errors.json",
        "chips/nodata-index.json",
        "chips/nodata.parquet",
        "chips/nodata-index-summary.json",
        "chips/labels.parquet",
        "chips/labels.csv",
        "chips/labels.json",
        "chips/labels-train.csv",
        "chips/labels-val.csv",
        "chips/labels-report/report.md",
        "chips/labels-report/class_counts.png",
    ]
    if "learn" in steps:
        expected += [
            "run/model.pt",
            "run/last.pt",
            "run/metrics.json",
            "run/training_curves.png",
            "model.onnx",
            "chips/embeddings.parquet",
            "chips/embeddings.json",
            "index/index.faiss",
            "index/ids.parquet",
            "index/index.json",
            "similar.geojson",
            "chips/changes.parquet",
            "chips/changes.json",
            "changes.geojson",
        ]
    assert [p for p in expected if p not in produced] == []
    assert any(p.startswith("chips/10/") and p.endswith(".jpg") for p in produced)  # the Rust-written chips
    assert any(p.endswith("-visual.tif") for p in produced) and any(p.endswith(".gpkg") for p in produced)
    assert [p for p in produced if Path(p).name.startswith(".") and p != "sample/.imagesim-sample"] == []  # no temporary files
    assert wrong_modes(work, umask) == []
