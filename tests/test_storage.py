"""Object storage: the sample delivery in a real S3-compatible server (moto) on 127.0.0.1, read by the
Rust reader with range requests; chips from the bucket are byte-identical to chips from disk."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np
import polars as pl
import pytest

moto_server = pytest.importorskip("moto.server", reason="the S3 tests need moto[server]")
boto3 = pytest.importorskip("boto3")

from imagesim import _imagesim  # noqa: E402
from imagesim.cog import open_cog  # noqa: E402
from imagesim.errors import ImagesimError, ImagesimFileNotFoundError  # noqa: E402
from imagesim.imagery.chip import ChipSettings, run_chip  # noqa: E402
from imagesim.imagery.nodata import NodataSettings, run_nodata_index  # noqa: E402
from imagesim.storage import StorePath, read_parquet  # noqa: E402

# Unique per run: CI's server (IMAGESIM_TEST_S3_ENDPOINT) may outlive one test session.
BUCKET = f"ard-orders-{os.getpid()}"


@pytest.fixture(scope="module")
def s3(small_sample):
    """A moto S3 server on 127.0.0.1 with the small sample uploaded; AWS_* set for it. CI's `.ci/run`
    starts the server and passes IMAGESIM_TEST_S3_ENDPOINT; otherwise the fixture starts its own."""
    endpoint = os.environ.get("IMAGESIM_TEST_S3_ENDPOINT")
    server = None
    if not endpoint:
        server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT": endpoint,
        "AWS_ALLOW_HTTP": "true",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    client = boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing"
    )
    client.create_bucket(Bucket=BUCKET)
    root = Path(small_sample.root)
    for path in sorted(root.rglob("*")):
        if path.is_file():
            client.upload_file(str(path), BUCKET, f"delivery/{path.relative_to(root).as_posix()}")
    yield f"s3://{BUCKET}/delivery", root
    if server is not None:
        server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def test_listing_and_remote_cog_reads_equal_local(s3):
    url, root = s3
    objects = _imagesim.list_objects(url + "/")
    local = sorted(p for p in root.rglob("*") if p.is_file())
    assert sorted(u[len(url) + 1 :] for u, _, _ in objects) == sorted(p.relative_to(root).as_posix() for p in local)
    sizes = {u[len(url) + 1 :]: s for u, s, _ in objects}
    visual = next(p for p in local if p.name.endswith("-visual.tif"))
    rel = visual.relative_to(root).as_posix()
    assert sizes[rel] == visual.stat().st_size
    remote, disk = open_cog(f"{url}/{rel}"), open_cog(visual)
    assert remote.geotransform == disk.geotransform and len(remote.levels) == len(disk.levels)
    for level in range(len(disk.levels)):
        window = (0, 0, min(700, disk.levels[level]["width"]), min(600, disk.levels[level]["height"]))
        assert np.array_equal(remote.read(window=window, level=level), disk.read(window=window, level=level))


def test_chips_from_the_bucket_equal_chips_from_disk(s3, tmp_path):
    url, root = s3
    local = run_chip(root, tmp_path / "local", ChipSettings(zoom=17))
    remote = run_chip(url, tmp_path / "remote", ChipSettings(zoom=17))
    assert remote.written == local.written > 0 and not remote.failed_cogs and not remote.failed_chips
    files = sorted(p.relative_to(tmp_path / "local") for p in (tmp_path / "local").rglob("*.jpg"))
    assert files == sorted(p.relative_to(tmp_path / "remote") for p in (tmp_path / "remote").rglob("*.jpg"))
    for rel in files:
        assert (tmp_path / "local" / rel).read_bytes() == (tmp_path / "remote" / rel).read_bytes()
    a = pl.read_parquet(tmp_path / "local" / "chips.parquet").sort("chip")
    b = pl.read_parquet(tmp_path / "remote" / "chips.parquet").sort("chip")
    assert b["source_cog"].str.starts_with(url).all()
    same = [c for c in a.columns if c not in ("source_cog", "source_mtime_ns")]
    assert a.select(same).equals(b.select(same))
    # A re-run against the bucket skips what is done.
    again = run_chip(url, tmp_path / "remote", ChipSettings(zoom=17))
    assert again.written == 0


def test_missing_keys_and_buckets_are_clear(s3):
    url, _ = s3
    with pytest.raises(ImagesimFileNotFoundError, match="nope-visual.tif"):
        open_cog(f"{url}/10/120020223032/2020-01-01/nope-visual.tif")
    with pytest.raises(ImagesimFileNotFoundError, match="no objects"):
        run_chip(f"s3://{BUCKET}/not-a-delivery", "/tmp/never-written", ChipSettings())
    with pytest.raises(ImagesimError, match="no-such-bucket"):
        _imagesim.list_objects("s3://no-such-bucket/delivery/")
    # Empty and truncated objects: typed errors naming the object, as for local files.
    _imagesim.store_put(f"s3://{BUCKET}/broken/empty-visual.tif", b"")
    with pytest.raises(ImagesimError, match="empty-visual.tif"):
        open_cog(f"s3://{BUCKET}/broken/empty-visual.tif")
    head = _imagesim.store_get(next(u for u, _, _ in _imagesim.list_objects(url + "/") if u.endswith("-visual.tif")))[:5000]
    _imagesim.store_put(f"s3://{BUCKET}/broken/cut-visual.tif", head)
    with pytest.raises(ImagesimError, match="cut-visual.tif"):
        open_cog(f"s3://{BUCKET}/broken/cut-visual.tif").read(window=(0, 0, 512, 512))
    for name in ("empty", "cut"):
        _imagesim.store_delete(f"s3://{BUCKET}/broken/{name}-visual.tif")


class _LoopbackServer:
    """An HTTP server of the test's own on a free loopback port, answering from a thread."""

    def _serve(self, handler) -> None:
        import threading
        from http.server import ThreadingHTTPServer

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _FaultyProxy(_LoopbackServer):
    """An HTTP proxy in front of the S3 server that fails some range reads: 503s, a connection
    dropped mid-body and a slow answer, in sequence, then passes everything through."""

    def __init__(self, upstream: str, faults: list[str]) -> None:
        import http.client
        import threading
        import time
        from http.server import BaseHTTPRequestHandler
        from urllib.parse import urlsplit

        up = urlsplit(upstream)
        self.faults = list(faults)
        self.injected: list[str] = []
        lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _forward(self) -> None:
                fault = None
                if (self.command == "GET" and "Range" in self.headers) or self.command == "PUT":
                    with lock:
                        fault = proxy.faults.pop(0) if proxy.faults else None
                        if fault:
                            proxy.injected.append(fault)
                if fault in ("500", "503"):
                    body = b"<Error><Code>InternalError</Code></Error>" if fault == "500" else b"<Error><Code>SlowDown</Code></Error>"
                    self.send_response(int(fault))
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                length = int(self.headers.get("Content-Length") or 0)
                data = self.rfile.read(length) if length else None
                conn = http.client.HTTPConnection(up.hostname, up.port, timeout=30)
                conn.request(self.command, self.path, body=data, headers=dict(self.headers))
                resp = conn.getresponse()
                payload = resp.read()
                if fault == "slow":
                    time.sleep(0.5)
                if fault == "drop" and self.command == "PUT":  # stored, but the answer never comes
                    self.connection.shutdown(2)
                    self.close_connection = True
                    return
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection"):
                        self.send_header(k, v)
                self.end_headers()
                if fault == "drop":
                    self.wfile.write(payload[: len(payload) // 3])
                    self.wfile.flush()
                    self.connection.shutdown(2)
                    self.close_connection = True
                    return
                if self.command != "HEAD":
                    self.wfile.write(payload)

            do_GET = do_HEAD = do_PUT = do_POST = _forward

        self._serve(Handler)


def test_faults_are_retried_and_give_the_same_chips(s3, small_sample, tmp_path, monkeypatch):
    """500s, 503s, dropped connections and slow answers on range reads, then on chip uploads: all
    retried, and the chips are the same as from disk."""
    url, root = s3
    reads = ["503", "500", "drop", "slow", "503", "drop"]
    uploads = ["500", "drop", "503", "slow", "500", "drop"]
    dest = f"s3://{BUCKET}/chips-through-faults"
    proxy = _FaultyProxy(os.environ["AWS_ENDPOINT"], reads)
    try:
        # Another endpoint in the environment gives another store (stores are keyed by their settings).
        monkeypatch.setenv("AWS_ENDPOINT", proxy.url)
        local = run_chip(root, tmp_path / "local", ChipSettings(zoom=17))
        remote = run_chip(url, tmp_path / "remote", ChipSettings(zoom=17))
        assert sorted(proxy.injected) == sorted(reads)
        proxy.faults.extend(uploads)
        # One acquisition (1,024 uploads): every request crosses this Python proxy, which is slow.
        to_bucket = run_chip(url, dest, ChipSettings(zoom=17), catalog_ids=[small_sample.catalog_ids[0]])
    finally:
        proxy.close()
    assert sorted(proxy.injected) == sorted(reads + uploads)
    assert remote.written == local.written and not remote.failed_cogs and not remote.failed_chips
    assert to_bucket.written == 1024 and not to_bucket.failed_cogs and not to_bucket.failed_chips
    objects = _objects(dest)
    for p in (tmp_path / "local").rglob("*.jpg"):
        rel = p.relative_to(tmp_path / "local")
        assert (tmp_path / "remote" / rel).read_bytes() == p.read_bytes()
        if p.name.endswith(f"_{small_sample.catalog_ids[0]}.jpg"):
            assert objects.pop(rel.as_posix()) == p.read_bytes()
    assert not [k for k in objects if k.endswith(".jpg")]  # nothing else, nothing twice


def _objects(prefix: str) -> dict[str, bytes]:
    """Every object under a prefix, by key relative to it."""
    return {url[len(prefix) + 1 :]: _imagesim.store_get(url) for url, _, _ in _imagesim.list_objects(prefix + "/")}


@pytest.fixture(scope="module")
def chipped(s3, tmp_path_factory):
    """The sample chipped twice: bucket → bucket and disk → disk."""
    url, root = s3
    local = tmp_path_factory.mktemp("chips-local")
    dest = f"s3://{BUCKET}/chips"
    a = run_chip(root, local, ChipSettings(zoom=17))
    b = run_chip(url, dest, ChipSettings(zoom=17))
    assert b.written == a.written > 0 and not b.failed_cogs and not b.failed_chips
    return url, local, dest


def test_chips_written_to_a_bucket_equal_chips_on_disk(chipped):
    url, local, dest = chipped
    objects = _objects(dest)
    files = {p.relative_to(local).as_posix(): p for p in local.rglob("*.jpg")}
    assert sorted(k for k in objects if k.endswith(".jpg")) == sorted(files)
    assert all(objects[k] == p.read_bytes() for k, p in files.items())
    assert {"chips.parquet", "chip-errors.json"} <= set(objects)
    a = pl.read_parquet(local / "chips.parquet")
    b = read_parquet(StorePath(dest) / "chips.parquet")
    same = [c for c in a.columns if c not in ("source_cog", "source_mtime_ns")]
    assert a.select(same).equals(b.select(same))
    assert b["source_cog"].str.starts_with(url).all()


def test_a_rerun_into_the_bucket_redoes_only_what_is_missing(s3, chipped):
    url, _, dest = chipped
    again = run_chip(url, dest, ChipSettings(zoom=17))
    assert again.written == 0 and again.skipped > 0
    chip = sorted(k for k in _objects(dest) if k.endswith(".jpg"))[5]
    _imagesim.store_delete(f"{dest}/{chip}")
    assert StorePath(f"{dest}/{chip}").head() is None
    third = run_chip(url, dest, ChipSettings(zoom=17))
    assert third.written == 1 and third.skipped == again.skipped - 1
    assert StorePath(f"{dest}/{chip}").is_file()


def test_nodata_index_of_chips_in_a_bucket_equals_local(chipped):
    _, local, dest = chipped
    for source in ("pixels", "manifest"):
        settings = NodataSettings(source=source, overwrite=True)
        a = run_nodata_index(local, settings)
        b = run_nodata_index(dest, settings)
        assert b.counts == a.counts and not b.failed and sum(b.counts.values()) > 0
        assert isinstance(b.index, StorePath)
        assert json.loads((StorePath(dest) / "nodata-index.json").read_text()) == json.loads((local / "nodata-index.json").read_text())
        ta, tb = pl.read_parquet(local / "nodata.parquet"), read_parquet(StorePath(dest) / "nodata.parquet")
        assert ta.drop("path").equals(tb.drop("path")) and tb["path"].str.starts_with(dest).all()


def test_nodata_index_cli_on_a_bucket(chipped):
    from typer.testing import CliRunner

    from imagesim.cli import app

    _, _, dest = chipped
    result = CliRunner().invoke(app, ["nodata-index", "--chip-dir", dest, "--source", "pixels", "--filename", "cli-index.json"])
    assert result.exit_code == 0, result.output
    assert StorePath(f"{dest}/cli-index.json").is_file() and StorePath(f"{dest}/cli-index-summary.json").is_file()


def test_encode_reads_chips_from_a_bucket(chipped, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("torch")
    from imagesim.learn.encode import EncodeSettings, run_encode

    _, local, dest = chipped
    onnx = _tiny_model(tmp_path, local)
    a = run_encode(onnx, local, EncodeSettings(out=tmp_path / "a.parquet", batch_size=16))
    b = run_encode(onnx, dest, EncodeSettings(out=f"{dest}/emb/b.parquet", batch_size=16))
    assert b.encoded == a.encoded > 0 and not b.failed
    ea = pl.read_parquet(tmp_path / "a.parquet").sort("chip")
    eb = read_parquet(StorePath(f"{dest}/emb/b.parquet")).sort("chip")
    assert ea["chip"].equals(eb["chip"])
    np.testing.assert_allclose(np.stack(ea["embedding"].to_numpy()), np.stack(eb["embedding"].to_numpy()), atol=1e-6)
    assert StorePath(f"{dest}/emb/b.json").is_file() and not StorePath(f"{dest}/emb/.b.parquet.parts").is_dir()
    # Run again: everything is already encoded with this model.
    c = run_encode(onnx, dest, EncodeSettings(out=f"{dest}/emb/b.parquet", batch_size=16))
    assert c.encoded == 0 and c.skipped == b.encoded


def _tiny_model(tmp_path: Path, chips: Path) -> Path:
    """An untrained resnet18 at 32 px, saved as `imagesim train` does and exported to ONNX."""
    import torch

    from imagesim.learn.export import export_onnx
    from imagesim.learn.model import MultilabelNet
    from imagesim.learn.train import MODEL_FORMAT, TrainConfig

    torch.manual_seed(0)
    classes = ["building", "road"]
    net = MultilabelNet("resnet18", len(classes)).eval()
    config = TrainConfig(chips=str(chips), labels=str(chips / "labels.parquet"), out=str(tmp_path), backbone="resnet18", chip_size=32)
    torch.save(
        {
            "format": MODEL_FORMAT,
            "config": asdict(config),
            "classes": classes,
            "chip_size": 32,
            "epoch": 1,
            "model": net.state_dict(),
            "thresholds": [0.5, 0.5],
            "metrics": {},
        },
        tmp_path / "model.pt",
    )
    export_onnx(tmp_path / "model.pt", tmp_path / "model.onnx")
    return tmp_path / "model.onnx"


def test_bad_credentials_are_a_clear_permission_error(s3, monkeypatch, tmp_path):
    """moto checks signatures once its IAM auth is switched on: a known key works, a wrong secret
    or an unknown key is refused, and imagesim says so, naming the object."""
    import urllib.request

    def moto_auth(after: str) -> None:
        """Switch moto's IAM authentication on ("0": from the next request) or off ("inf")."""
        req = urllib.request.Request(
            f"{os.environ['AWS_ENDPOINT']}/moto-api/reset-auth", data=after.encode(), headers={"Content-Type": "text/plain"}, method="POST"
        )
        urllib.request.urlopen(req, timeout=10).read()

    url, _ = s3
    iam = boto3.client(
        "iam",
        endpoint_url=os.environ["AWS_ENDPOINT"],
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    iam.create_user(UserName=f"reader-{BUCKET}")
    iam.put_user_policy(
        UserName=f"reader-{BUCKET}",
        PolicyName="s3",
        PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}),
    )
    key = iam.create_access_key(UserName=f"reader-{BUCKET}")["AccessKey"]
    moto_auth("0")
    try:
        _check_credentials(url, key, monkeypatch, tmp_path)
    finally:
        moto_auth("inf")


def _check_credentials(url: str, key: dict, monkeypatch, tmp_path) -> None:
    from imagesim.errors import ImagesimPermissionError

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
    assert _imagesim.list_objects(url + "/")  # the right key and secret

    visual = next(u for u, _, _ in _imagesim.list_objects(url + "/") if u.endswith("-visual.tif"))
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(ImagesimPermissionError, match="access denied") as denied:
        open_cog(visual)
    assert visual in str(denied.value)
    with pytest.raises(ImagesimPermissionError, match="access denied"):
        run_chip(url, tmp_path / "chips", ChipSettings())
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIANOBODYKNOWS00000")
    with pytest.raises(PermissionError, match=f"{BUCKET}.*access denied"):
        StorePath(f"{url}/10").is_dir()

    # No keys in the environment: the AWS_PROFILE profile of the shared credentials file is used.
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    creds = tmp_path / "aws-credentials"
    creds.write_text(
        f"[default]\naws_access_key_id = AKIANOBODYKNOWS00000\naws_secret_access_key = x\n\n"
        f"[imagesim-test]\naws_access_key_id = {key['AccessKeyId']}\n"
        f"aws_secret_access_key = {key['SecretAccessKey']}\n"
    )
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_PROFILE", "imagesim-test")
    assert _imagesim.list_objects(url + "/")
    monkeypatch.setenv("AWS_PROFILE", "default")
    with pytest.raises(ImagesimPermissionError, match="access denied"):
        _imagesim.list_objects(url + "/")


def test_a_dask_cluster_reads_and_writes_the_bucket(chipped):
    """Workers read the COGs and upload the chips themselves (no shared filesystem): same objects."""
    distributed = pytest.importorskip("distributed")
    url, _, dest = chipped
    other = f"s3://{BUCKET}/chips-cluster"
    # Started after the fixture set AWS_*: the worker processes inherit the credentials and endpoint.
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, worker_dashboard_address=None
        ) as lc,
        distributed.Client(lc, set_as_default=False) as client,
    ):
        summary = run_chip(url, other, ChipSettings(zoom=17), scheduler=client)
        assert not summary.failed_cogs and not summary.failed_chips and summary.written > 0
        scanned = run_nodata_index(other, NodataSettings(source="pixels"), scheduler=client)
    reference = _objects(dest)
    produced = _objects(other)
    jpgs = sorted(k for k in reference if k.endswith(".jpg"))
    assert sorted(k for k in produced if k.endswith(".jpg")) == jpgs
    assert all(produced[k] == reference[k] for k in jpgs)
    assert scanned.counts == run_nodata_index(dest, NodataSettings(source="pixels", filename="again.json")).counts


def test_osm_and_labels_with_the_delivery_in_a_bucket(s3, small_sample, chipped, tmp_path):
    """`osm import` writes each cell's osm_data.json into the bucket, `osm tags` and `labels build`
    read them there (chips in the bucket too): the same files and labels as on disk."""
    from imagesim.labels.build import LabelSettings, build_labels
    from imagesim.labels.cells import find_cells, tag_inventory
    from imagesim.labels.osm_import import import_osm

    url, root, dest = chipped[0], s3[1], chipped[2]
    local_chips = chipped[1]
    cells = find_cells(root)
    assert find_cells(url) == cells and find_cells(f"{url}/{cells[0].zone}") == [c for c in cells if c.zone == cells[0].zone]
    osm_local = tmp_path / "ard"
    for cell in cells:
        cell.folder(osm_local).mkdir(parents=True)
    import_osm(small_sample.osm_pbf, osm_local, cells)
    import_osm(small_sample.osm_pbf, url, cells)
    for cell in cells:
        assert cell.osm_path(url).read_bytes() == cell.osm_path(osm_local).read_bytes()
    assert tag_inventory(url).rows() == tag_inventory(osm_local).rows()

    a = build_labels(local_chips, osm_local, LabelSettings(include=("partial",), out_dir=tmp_path / "labels"))
    b = build_labels(dest, url, LabelSettings(include=("partial",)))
    assert b.class_counts == a.class_counts and b.chips == a.chips > 0 and not b.failed_cells
    la = pl.read_parquet(tmp_path / "labels" / "labels.parquet")
    lb = read_parquet(StorePath(dest) / "labels.parquet")
    assert la.equals(lb)
    assert (StorePath(dest) / "labels.csv").read_bytes() == (tmp_path / "labels" / "labels.csv").read_bytes()


def test_viewer_tiles_from_the_bucket_equal_tiles_from_disk(chipped):
    pytest.importorskip("fastapi")
    mercantile = pytest.importorskip("mercantile")
    from fastapi.testclient import TestClient

    from imagesim.search.serve.app import create_app

    url, local_chips, _ = chipped
    root = Path(pl.read_parquet(local_chips / "chips.parquet")["source_cog"][0]).parents[3]
    clients = [TestClient(create_app(r, local_chips, None), base_url="http://127.0.0.1") for r in (root, url)]
    row = pl.read_parquet(local_chips / "chips.parquet").filter(pl.col("nodata_class") == "all_data").row(0, named=True)
    lon, lat = _centre(row)
    for z in (14, 17, 19):
        t = mercantile.tile(lon, lat, z)
        disk, bucket = (c.get(f"/tiles/{z}/{t.x}/{t.y}.png") for c in clients)
        assert disk.status_code == bucket.status_code == 200, z
        assert disk.content == bucket.content, z


def _centre(row: dict) -> tuple[float, float]:
    from pyproj import Transformer

    from imagesim import grid

    b = grid.bounds(row["quadkey"])
    tr = Transformer.from_crs(grid.epsg(row["quadkey"], row["zone"]), 4326, always_xy=True)
    lon, lat = tr.transform((b.west + b.east) / 2, (b.south + b.north) / 2)
    return float(lon), float(lat)


class _RangeServer(_LoopbackServer):
    """A plain web server (no S3 API) serving a folder with HEAD and single byte-range GETs, the
    way a CDN or a static bucket website serves COGs."""

    def __init__(self, root: Path) -> None:
        from email.utils import formatdate
        from http.server import BaseHTTPRequestHandler

        served = self.served = []

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _file(self) -> Path | None:
                path = (root / self.path.lstrip("/").split("?")[0]).resolve()
                return path if path.is_file() and root.resolve() in path.parents else None

            def _head(self, status: int, length: int, path: Path, extra: dict) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(length))
                self.send_header("Last-Modified", formatdate(path.stat().st_mtime, usegmt=True))
                self.send_header("Accept-Ranges", "bytes")
                for k, v in extra.items():
                    self.send_header(k, v)
                self.end_headers()

            def do_HEAD(self) -> None:
                path = self._file()
                if path is None:
                    self.send_error(404)
                    return
                self._head(200, path.stat().st_size, path, {})

            def do_GET(self) -> None:
                path = self._file()
                if path is None:
                    self.send_error(404)
                    return
                data = path.read_bytes()
                rng = self.headers.get("Range")
                if rng:
                    start_s, end_s = rng.removeprefix("bytes=").split("-")
                    start, end = int(start_s), min(int(end_s) if end_s else len(data) - 1, len(data) - 1)
                    served.append(("range", start, end))
                    self._head(206, end - start + 1, path, {"Content-Range": f"bytes {start}-{end}/{len(data)}"})
                    self.wfile.write(data[start : end + 1])
                else:
                    served.append(("whole", 0, len(data) - 1))
                    self._head(200, len(data), path, {})
                    self.wfile.write(data)

        self._serve(Handler)


def test_cogs_over_plain_https_style_urls_read_with_ranges(small_sample):
    """http(s):// URLs go through object_store's HTTP store: range reads equal the file; a plain web
    server cannot be listed, which is said clearly."""
    from imagesim.imagery.ard import find_acquisitions

    root = Path(small_sample.root)
    visual = sorted(root.rglob("*-visual.tif"))[0]
    web = _RangeServer(root)
    try:
        url = f"{web.url}/{visual.relative_to(root).as_posix()}"
        remote, disk = open_cog(url), open_cog(visual)
        full = (0, 0, disk.levels[0]["width"], disk.levels[0]["height"])
        assert np.array_equal(remote.read(window=full), disk.read(window=full))
        # The 64 kB header first, then merged 8 MiB blocks (this small COG fits in one): range requests only.
        assert web.served[0] == ("range", 0, 65535) and all(kind == "range" for kind, _, _ in web.served)
        with pytest.raises(ImagesimFileNotFoundError):
            open_cog(f"{web.url}/10/nope-visual.tif")
        with pytest.raises(ImagesimError, match="WebDAV"):
            find_acquisitions(web.url)
    finally:
        web.close()


def test_chip_cli_bucket_to_bucket(chipped):
    from typer.testing import CliRunner

    from imagesim.cli import app

    url, _, dest = chipped
    result = CliRunner().invoke(app, ["chip", "--ard-path", url, "--dest", dest, "--zoom", "17"])
    assert result.exit_code == 0, result.output
    assert "0 chips written" in result.output and f"{dest}/chips.parquet" in result.output.replace("\n", "")


def test_large_outputs_go_up_in_parts(s3, tmp_path):
    """Above 64 MiB an output is streamed as a multipart upload (S3 takes at most 5 GB in one PUT);
    the object equals the file, and written through the atomic writer too."""
    from imagesim.fsutil import write_with

    data = np.random.default_rng(0).integers(0, 256, 70 * 1024 * 1024, dtype=np.uint8).tobytes()
    big = tmp_path / "big.bin"
    big.write_bytes(data)
    target = StorePath(f"s3://{BUCKET}/outputs/big.bin")
    target.upload(big)
    assert target.head()[0] == len(data) and target.read_bytes() == data
    write_with(target.with_name("big2.bin"), lambda tmp: tmp.write_bytes(data[::-1]))
    assert target.with_name("big2.bin").read_bytes() == data[::-1]
    for name in ("big.bin", "big2.bin"):
        target.with_name(name).unlink()


def test_downloads_are_streamed_to_a_file_and_the_manifest_read_in_slices(s3, chipped, tmp_path):
    """StorePath.download streams an object into a local file (the same bytes); a manifest in a bucket is read
    a slice at a time from such a copy (the same rows as the whole object), and the copy is gone afterwards."""
    from imagesim.artefacts import iter_manifest

    data = np.random.default_rng(1).integers(0, 256, 3 * 1024 * 1024 + 17, dtype=np.uint8).tobytes()
    target = StorePath(f"s3://{BUCKET}/outputs/some.bin")
    target.write_bytes(data)
    assert target.download(tmp_path / "some.bin") == len(data) and (tmp_path / "some.bin").read_bytes() == data
    target.unlink()
    with pytest.raises(FileNotFoundError):
        StorePath(f"s3://{BUCKET}/outputs/none.bin").download(tmp_path / "none.bin")

    _, _, dest = chipped
    whole = read_parquet(StorePath(dest) / "chips.parquet")
    slices = list(iter_manifest(StorePath(dest), ["chip", "quadkey"], batch=100))
    assert len(slices) == -(-whole.height // 100) and all(s.height <= 100 for s in slices)
    assert pl.concat(slices).equals(whole.select("chip", "quadkey"))
