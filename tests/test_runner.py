"""The task runner: one loop, the same outcomes in process and on Dask. Then chip, nodata-index and
encode with a `scheduler` (a Dask LocalCluster) give the in-process outputs exactly, survive a worker
killed mid-run, report failed tasks, and refuse bad scheduler addresses clearly."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

import polars as pl
import pytest

distributed = pytest.importorskip("distributed")

from imagesim import runner  # noqa: E402
from imagesim.artefacts import CHIP_ERRORS, CHIPS_MANIFEST, NODATA_PARQUET  # noqa: E402
from imagesim.errors import GridError, InvalidArgumentError  # noqa: E402
from imagesim.imagery import nodata  # noqa: E402
from imagesim.imagery.chip import ChipSettings, run_chip  # noqa: E402
from imagesim.imagery.nodata import NodataSettings, run_nodata_index  # noqa: E402
from imagesim.runner import Outcome, TaskRunner, worker_threads  # noqa: E402

MANIFEST, ERRORS, PARQUET = CHIPS_MANIFEST, CHIP_ERRORS, NODATA_PARQUET


def chip_bytes(dest: Path) -> dict[str, bytes]:
    return {str(p.relative_to(dest)): p.read_bytes() for p in sorted(dest.rglob("*.jpg"))}


def manifest(dest: Path) -> pl.DataFrame:
    return pl.read_parquet(dest / MANIFEST).sort("chip")


# --- the runner itself: tasks are top-level functions, so Dask workers can run them too ---


def sleepy(item: int, delay: float) -> int:
    time.sleep(delay)
    return item * 10


def picky(item: int) -> int:
    if item % 2:
        raise GridError(f"item {item} is odd")
    return item


def buggy(item: int) -> int:
    raise KeyError(item)


class Count:
    """A stand-in for ``_imagesim.Progress`` that tasks advance."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.n = 0

    def add(self, n: int) -> None:
        with self.lock:
            self.n += n

    @property
    def value(self) -> int:
        return self.n


def counting(item: int, *, progress: Count | None = None) -> int:
    if item < 0:
        raise GridError("negative")
    for _ in range(item):
        time.sleep(0.05)
        if progress is not None:
            progress.add(1)
    return item


def share(_item: int, proc: int) -> int:
    return worker_threads(proc)


def outcomes(tasks: TaskRunner, fn, items, args_of, **kw) -> list[Outcome]:
    with tasks.run(fn, items, args_of, name="imagesim-test", **kw) as run:
        return list(run)


def test_outcomes_come_in_completion_order() -> None:
    got = outcomes(TaskRunner(), sleepy, [3, 0, 1], lambda i: (i, i * 0.15), workers=3)
    assert [(o.item, o.result, o.error) for o in got] == [(0, 0, None), (1, 10, None), (3, 30, None)]
    inline = outcomes(TaskRunner(), sleepy, [3, 0, 1], lambda i: (i, 0.0), workers=0)
    assert [o.item for o in inline] == [3, 0, 1]


def test_an_imagesim_error_is_the_items_error_and_a_bug_propagates() -> None:
    got = outcomes(TaskRunner(), picky, [0, 1, 2], lambda i: (i,), workers=2)
    assert sorted((o.item, o.result, o.error) for o in got) == [(0, 0, None), (1, None, "item 1 is odd"), (2, 2, None)]
    with pytest.raises(KeyError):
        outcomes(TaskRunner(), buggy, [0, 1], lambda i: (i,))


def test_same_outcomes_on_dask(client) -> None:
    """The same tasks on a cluster: the same results and item errors (after the retries)."""
    local = outcomes(TaskRunner(), picky, list(range(5)), lambda i: (i,), workers=2)
    remote = outcomes(TaskRunner(client), picky, list(range(5)), lambda i: (i,))
    key = lambda o: o.item  # noqa: E731
    assert [(o.item, o.result, o.error) for o in sorted(remote, key=key)] == [(o.item, o.result, o.error) for o in sorted(local, key=key)]
    # A bug is not raised on Dask (the client cannot tell it from a lost worker): it is the item's error.
    (bug,) = outcomes(TaskRunner(client), buggy, [7], lambda i: (i,), retries=0)
    assert bug.error == "KeyError: 7"


def test_window_one_runs_one_item_ahead() -> None:
    events: list[tuple[str, int]] = []
    started = {i: threading.Event() for i in range(6)}

    def task(i: int) -> int:
        events.append(("start", i))
        started[i].set()
        return i

    with TaskRunner().run(task, list(range(6)), lambda i: (i,), name="imagesim-test", window=1) as run:
        for outcome in run:
            # The caller's work on this item (inference): the next item runs meanwhile, no other.
            if outcome.item < 5:
                assert started[outcome.item + 1].wait(10)
            time.sleep(0.02)
            events.append(("merged", outcome.item))
    assert [i for what, i in events if what == "merged"] == list(range(6))
    for i in range(4):  # item i+2 (which reuses item i's buffer) starts only once item i is merged
        assert events.index(("start", i + 2)) > events.index(("merged", i))


def test_counter_moves_progress_while_tasks_run() -> None:
    seen: list[int] = []
    counter = Count()
    got = outcomes(
        TaskRunner(), counting, [8, -1, 4], lambda i: (i,), workers=2, counter=counter, units=lambda i: abs(i), on_progress=seen.append
    )
    assert sorted(o.item for o in got if o.error is None) == [4, 8] and counter.value == 12
    assert seen == sorted(seen) and seen[-1] == 13  # the failed item counts its unit at once
    assert len(set(seen)) > 3  # moved chip by chip, not only when an item finished
    # Without a counter (as on Dask, where none reaches the tasks) progress moves by whole items.
    seen.clear()
    outcomes(TaskRunner(), counting, [2, 3], lambda i: (i,), workers=0, units=lambda i: i, on_progress=seen.append)
    assert seen == [2, 5]


def test_leaving_early_cancels_the_rest() -> None:
    started: list[int] = []

    def task(i: int) -> int:
        started.append(i)
        time.sleep(0.1)
        return i

    with TaskRunner().run(task, list(range(20)), lambda i: (i,), name="imagesim-test", workers=2) as run:
        for _ in run:
            break
    time.sleep(0.3)
    assert len(started) <= 4


def test_worker_threads_share_the_cores() -> None:
    cores = runner.cores()
    [one] = outcomes(TaskRunner(), share, [0], lambda i: (i, 0), workers=1)
    assert one.result == cores
    two = outcomes(TaskRunner(), share, [0, 1], lambda i: (i, 8), workers=2)
    assert [o.result for o in two] == [4, 4]
    assert outcomes(TaskRunner(), share, [0], lambda i: (i, 3), workers=4)[0].result == 1
    assert worker_threads(6) == 6  # outside any task: this process alone


def test_an_address_is_checked_when_the_runner_is_made() -> None:
    assert TaskRunner("LOCAL ").scheduler == "local" and TaskRunner("tcp://h:8786").scheduler == "tcp://h:8786"
    with pytest.raises(InvalidArgumentError, match="`scheduler` 'h:1': not a Dask scheduler address") as err:
        TaskRunner("h:1")
    assert err.value.param == "scheduler"
    assert TaskRunner().local and not TaskRunner("local").local


# --- the stages on a cluster ---


@pytest.fixture(scope="module")
def client():
    """Two worker processes of one thread each, shared by the tests of this module."""
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, worker_dashboard_address=None
        ) as lc,
        distributed.Client(lc, set_as_default=False) as c,
    ):
        yield c


@pytest.fixture(scope="module")
def in_process(small_sample, tmp_path_factory) -> Path:
    """The reference: the sample chipped in-process (Rust threads)."""
    dest = tmp_path_factory.mktemp("chips-in-process")
    summary = run_chip(small_sample.root, dest, ChipSettings(zoom=17, proc=2))
    assert summary.written == 1024 * len(small_sample.cogs) and not summary.failed_cogs
    return dest


def test_cli_chip_scheduler_local_matches_in_process(cli, small_sample, in_process, tmp_path) -> None:
    dest = tmp_path / "chips"
    res = cli("chip", "--ard-path", str(small_sample.root), "--dest", str(dest), "--scheduler", "local")
    assert res.returncode == 0, res.stderr
    assert f"{1024 * len(small_sample.cogs)} chips written" in res.stdout
    assert chip_bytes(dest) == chip_bytes(in_process)
    assert manifest(dest).equals(manifest(in_process))
    assert pl.read_parquet(dest / MANIFEST)["chip"].is_unique().all()
    assert json.loads((dest / ERRORS).read_text()) == json.loads((in_process / ERRORS).read_text())


def test_rerun_on_cluster_skips_like_in_process(small_sample, in_process, client, tmp_path) -> None:
    dest = tmp_path / "chips"
    shutil.copytree(in_process, dest)
    before = manifest(dest)
    summary = run_chip(small_sample.root, dest, ChipSettings(zoom=17), scheduler=client)
    assert summary.skipped == 1024 * len(small_sample.cogs) and summary.written == 0
    assert manifest(dest).equals(before)


def test_masks_on_cluster_match_chip_in_process(small_sample, in_process, client, tmp_path) -> None:
    """`imagesim masks` on Dask refills the mask fractions `imagesim chip` computed in process, exactly."""
    from imagesim.artefacts import MASK_FRACTION_COLUMNS
    from imagesim.imagery.masks import run_masks

    dest = tmp_path / "chips"
    shutil.copytree(in_process, dest)
    columns = list(MASK_FRACTION_COLUMNS.values())
    full = pl.read_parquet(dest / MANIFEST)
    full.with_columns(pl.lit(None, pl.Float64).alias(c) for c in columns).write_parquet(dest / MANIFEST)
    summary = run_masks(dest, small_sample.root, scheduler=client)
    assert summary.updated == full.height and not summary.failed
    assert pl.read_parquet(dest / MANIFEST).select(columns).equals(full.select(columns))


class KillOnce(distributed.WorkerPlugin):
    """Kills its worker process (``os._exit``) shortly after a task whose key starts with ``prefix``
    begins executing — once per test, remembered in a marker file across worker restarts."""

    name = "imagesim-test-kill-once"

    def __init__(self, prefix: str, marker: str, delay: float) -> None:
        self.prefix, self.marker, self.delay = prefix, marker, delay

    def transition(self, key, start, finish, **kwargs) -> None:
        if finish == "executing" and str(key).startswith(self.prefix):
            try:
                fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                return
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)
            threading.Timer(self.delay, os._exit, args=(1,)).start()


def test_worker_killed_mid_run_is_survived(small_sample, in_process, client, tmp_path) -> None:
    marker = tmp_path / "killed"
    client.register_plugin(KillOnce("imagesim-chip-1-", str(marker), delay=0.05))
    try:
        dest = tmp_path / "chips"
        pids = set(client.run(os.getpid).values())
        summary = run_chip(small_sample.root, dest, ChipSettings(zoom=17), scheduler=client)
    finally:
        client.unregister_worker_plugin(KillOnce.name)
    assert marker.exists(), "the worker was not killed"
    assert int(marker.read_text()) in pids
    n = 1024 * len(small_sample.cogs)
    assert not summary.failed_cogs and summary.failed_chips == 0
    # Chips the killed try wrote are found on disk by the retry and measured, not written twice.
    assert summary.written + summary.measured == n
    assert chip_bytes(dest) == chip_bytes(in_process)
    got, want = manifest(dest), manifest(in_process)
    assert got.height == n and got["chip"].is_unique().all()
    same = [c for c in got.columns if c not in ("encoding", "bytes")]
    assert got.select(same).equals(want.select(same))
    # The nanny restarted the worker: the cluster is whole again for the next tests.
    client.wait_for_workers(2, timeout=30)


def test_failed_cog_is_retried_then_reported(small_sample, client, tmp_path) -> None:
    root = tmp_path / "ard"
    shutil.copytree(small_sample.root, root)
    bad = sorted(root.rglob("*-visual.tif"))[1]
    bad.write_bytes(b"II*\x00garbage" * 10)
    dest = tmp_path / "chips"
    summary = run_chip(root, dest, ChipSettings(zoom=17), scheduler=client)
    assert [c for c, _ in summary.failed_cogs] == [str(bad)]
    assert summary.written == 1024 * (len(small_sample.cogs) - 1)
    report = json.loads((dest / ERRORS).read_text())
    assert len(report["cogs"]) == 1 and report["cogs"][0]["cog"] == str(bad) and "-visual.tif" in report["cogs"][0]["error"]
    assert manifest(dest)["source_cog"].unique().to_list().count(str(bad)) == 0


def test_nodata_index_on_cluster_matches_in_process(in_process, client, tmp_path, monkeypatch) -> None:
    local = run_nodata_index(in_process, NodataSettings(source="pixels", filename=str(tmp_path / "a" / "index.json")))
    monkeypatch.setattr(nodata, "BATCH", 500)  # several batches, gathered back in order
    remote = run_nodata_index(in_process, NodataSettings(source="pixels", filename=str(tmp_path / "b" / "index.json")), scheduler=client)
    assert remote.counts == local.counts and not remote.failed and remote.chips == 3072
    assert (tmp_path / "a" / "index.json").read_bytes() == (tmp_path / "b" / "index.json").read_bytes()
    assert pl.read_parquet(tmp_path / "b" / PARQUET).equals(pl.read_parquet(tmp_path / "a" / PARQUET))


def test_nodata_index_chunks_share_one_connection(in_process, client, tmp_path, monkeypatch) -> None:
    """Chips measured a chunk at a time on a cluster named by its address: one connection for every chunk."""
    local = run_nodata_index(in_process, NodataSettings(source="pixels", filename=str(tmp_path / "a" / "index.json")))
    monkeypatch.setattr(nodata, "BATCH", 500)
    monkeypatch.setattr(nodata, "CHUNK", 1000)
    monkeypatch.setattr(nodata, "DASK_TASKS", 2)  # chunks of 1000 chips: four of them
    real = runner.connect
    made = []

    def counting_connect(address, **kw):
        if isinstance(address, str):  # a connection made (a Client given is used as it is)
            made.append(address)
        return real(address, **kw)

    monkeypatch.setattr(runner, "connect", counting_connect)
    remote = run_nodata_index(
        in_process, NodataSettings(source="pixels", filename=str(tmp_path / "b" / "index.json")), scheduler=client.scheduler.address
    )
    assert made == [client.scheduler.address]
    assert remote.counts == local.counts and remote.chips == 3072
    assert (tmp_path / "a" / "index.json").read_bytes() == (tmp_path / "b" / "index.json").read_bytes()
    assert pl.read_parquet(tmp_path / "b" / PARQUET).equals(pl.read_parquet(tmp_path / "a" / PARQUET))


def test_session_in_process_is_the_runner_itself() -> None:
    tasks = TaskRunner()
    with tasks.session() as same:
        assert same is tasks
        assert [o.result for o in outcomes(same, sleepy, [1, 2], lambda i: (i, 0.0))] == [10, 20]


def test_cli_nodata_index_through_env_scheduler(cli, in_process, client, tmp_path) -> None:
    """IMAGESIM_SCHEDULER=tcp://… reaches an existing scheduler (here the fixture's)."""
    run_nodata_index(in_process, NodataSettings(source="pixels", filename=str(tmp_path / "a" / "index.json")))
    address = client.scheduler.address
    assert address.startswith("tcp://")
    res = cli(
        "nodata-index",
        "--chips",
        str(in_process),
        "--source",
        "pixels",
        "--filename",
        str(tmp_path / "b" / "index.json"),
        env={"IMAGESIM_SCHEDULER": address},
    )
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "a" / "index.json").read_bytes() == (tmp_path / "b" / "index.json").read_bytes()
    assert pl.read_parquet(tmp_path / "b" / PARQUET).equals(pl.read_parquet(tmp_path / "a" / PARQUET))


@pytest.mark.parametrize("address", ["localhost:8786", "tcp://localhost", "http://localhost:8786", "tcp://host:port"])
def test_malformed_scheduler_address_is_refused(small_sample, tmp_path, address) -> None:
    with pytest.raises(InvalidArgumentError, match="not a Dask scheduler address"):
        run_chip(small_sample.root, tmp_path / "chips", scheduler=address)
    assert not (tmp_path / "chips" / MANIFEST).exists()


def test_unreachable_scheduler_is_a_clear_error(small_sample, tmp_path, monkeypatch) -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(runner, "CONNECT_TIMEOUT_S", 2.0)
    start = time.monotonic()
    with pytest.raises(InvalidArgumentError, match=rf"tcp://127\.0\.0\.1:{port}: cannot reach the Dask scheduler"):
        run_chip(small_sample.root, tmp_path / "chips", scheduler=f"tcp://127.0.0.1:{port}")
    assert time.monotonic() - start < 15


def test_cli_bad_scheduler_is_one_line(cli, tmp_path) -> None:
    res = cli("chip", "--ard-path", str(tmp_path), "--dest", str(tmp_path / "out"), "--scheduler", "nowhere")
    assert res.returncode == 1
    assert "--scheduler 'nowhere'" in res.stderr and "tcp://HOST:PORT" in res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory) -> Path:
    """An untrained resnet18 exported to ONNX (as in test_encode.py); skipped without torch/onnxruntime."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from dataclasses import asdict

    from imagesim.learn.export import export_onnx
    from imagesim.learn.model import MultilabelNet
    from imagesim.learn.train import MODEL_FORMAT, TrainConfig

    torch.manual_seed(0)
    classes = ["building", "road", "water", "forest"]
    net = MultilabelNet("resnet18", len(classes)).eval()
    run = tmp_path_factory.mktemp("encode-run")
    config = TrainConfig(chips=str(run), labels=str(run / "labels.parquet"), out=str(run), backbone="resnet18", chip_size=64)
    torch.save(
        {
            "format": MODEL_FORMAT,
            "config": asdict(config),
            "classes": classes,
            "chip_size": 64,
            "epoch": 1,
            "model": net.state_dict(),
            "thresholds": [0.5, 0.4, 0.3, 0.2],
            "metrics": {},
        },
        run / "model.pt",
    )
    export_onnx(run / "model.pt", run / "model.onnx")
    return run / "model.onnx"


def test_encode_on_cluster_matches_in_process(onnx_model, in_process, client, tmp_path, monkeypatch) -> None:
    from imagesim.learn import encode
    from imagesim.learn.encode import EncodeSettings, run_encode

    local = run_encode(onnx_model, in_process, EncodeSettings(out=tmp_path / "a.parquet", batch_size=8, provider="cpu"))
    monkeypatch.setattr(encode, "TASK_BATCHES", 2)  # 16 chips per task: several tasks, any completion order
    remote = run_encode(onnx_model, in_process, EncodeSettings(out=tmp_path / "b.parquet", batch_size=8, provider="cpu"), scheduler=client)
    assert remote.encoded == local.encoded > 16 and not remote.failed and remote.excluded == local.excluded
    assert remote.provider == "CPUExecutionProvider on Dask workers"
    a, b = pl.read_parquet(tmp_path / "a.parquet"), pl.read_parquet(tmp_path / "b.parquet")
    assert a.equals(b)


def test_change_on_cluster_matches_in_process(in_process, client, tmp_path) -> None:
    """`imagesim change --method pixel` on Dask (one task per acquisition pair and cell) = in process, exactly."""
    from imagesim.search.change import ChangeSettings, detect_changes

    local = detect_changes(in_process, settings=ChangeSettings(method="pixel"), out=tmp_path / "a.parquet")
    remote = detect_changes(in_process, settings=ChangeSettings(method="pixel"), out=tmp_path / "b.parquet", scheduler=client)
    assert local.scored == remote.scored > 0 and local.left_out == remote.left_out
    assert pl.read_parquet(tmp_path / "a.parquet").equals(pl.read_parquet(tmp_path / "b.parquet"))
