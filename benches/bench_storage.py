"""Object-storage benchmark: chipping a full-size COG from a local S3-compatible server on
127.0.0.1 vs from local disk, same run, same settings. Target: >= 70 % of local-disk speed.

The remote reads go through the Rust reader: one HEAD + one 64 kB header read per COG, then chunk
reads merged into aligned 4 MiB range requests read ahead. Also measured: chips written *to* the
bucket (background uploads, 32 in flight).

Servers: ``s3s`` (s3s-fs, a Rust S3 server over a folder: ``make bench-storage`` installs it into
``.bench-tools/``) or ``moto`` (pure Python, single process: it, not imagesim, is the bound there).

    python benches/bench_storage.py [--server s3s|moto] [--proc 2] [--passthrough]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_chip import REPO, ensure_cog  # noqa: E402


def s3s_binary() -> str | None:
    """The s3s-fs server: $IMAGESIM_S3S_FS, .bench-tools/bin, or PATH."""
    for cand in (os.environ.get("IMAGESIM_S3S_FS"), str(REPO / ".bench-tools" / "bin" / "s3s-fs"), shutil.which("s3s-fs")):
        if cand and Path(cand).is_file():
            return cand
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(kind: str):
    """(endpoint, stop) of an S3-compatible server on loopback."""
    if kind == "moto":
        import logging

        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        return f"http://{host}:{port}", server.stop
    binary = s3s_binary()
    if binary is None:
        raise SystemExit("s3s-fs not found: run `make bench-storage` (installs it) or pass --server moto")
    folder = tempfile.mkdtemp(prefix="imagesim-s3s-")
    port = free_port()
    proc = subprocess.Popen([binary, "--host", "127.0.0.1", "--port", str(port), "--access-key", "bench",
                             "--secret-key", "bench", folder], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            break
        except OSError:
            time.sleep(0.1)

    def stop() -> None:
        proc.terminate()
        proc.wait()
        shutil.rmtree(folder, ignore_errors=True)

    return f"http://127.0.0.1:{port}", stop


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server", choices=["s3s", "moto"], default="s3s" if s3s_binary() else "moto")
    ap.add_argument("--proc", type=int, default=2)
    ap.add_argument("--passthrough", action="store_true")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", type=Path, default=REPO / "bench-out")
    args = ap.parse_args()

    import boto3

    from imagesim import _imagesim
    from imagesim.chip import ChipSettings, run_chip

    cog = ensure_cog(args.out)
    root = cog.parents[3]
    rel = cog.relative_to(root).as_posix()
    catalog_id = cog.name[: -len("-visual.tif")]

    endpoint, stop = start_server(args.server)
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_REGION="us-east-1",
                      AWS_ENDPOINT=endpoint, AWS_ALLOW_HTTP="true")
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket="bench")
    s3.upload_file(str(cog), "bench", f"ard/{rel}")
    url = "s3://bench/ard"
    settings = ChipSettings(zoom=17, proc=args.proc, passthrough=args.passthrough)
    cog.read_bytes()  # warm page cache for the local side

    def clear(dest) -> None:
        if isinstance(dest, str):
            for obj, _, _ in _imagesim.list_objects(dest + "/"):
                _imagesim.store_delete(obj)
        else:
            shutil.rmtree(dest, ignore_errors=True)

    def best(source, dest) -> tuple[float, int]:
        times, written = [], 0
        for _ in range(args.repeat):
            clear(dest)
            start = time.perf_counter()
            summary = run_chip(source, dest, settings, catalog_ids=[catalog_id])
            times.append(time.perf_counter() - start)
            written = summary.written
            assert not summary.failed_cogs and not summary.failed_chips, summary.line()
        return min(times), written

    local_dest = args.out / "storage-chips"
    try:
        local_s, n = best(root, local_dest)
        remote_s, m = best(url, local_dest)
        both_s, k = best(url, "s3://bench/chips")
    finally:
        stop()
    assert n == m == k
    mode = "passthrough" if args.passthrough else "re-encode"
    name = {"s3s": "s3s-fs", "moto": "moto"}[args.server]
    print(f"{n} z17 chips of {cog.name} ({cog.stat().st_size / 1e6:.0f} MB), {mode}, {args.proc} worker(s), S3 server: {name} on loopback")
    print(f"local disk -> local disk:   {n / local_s:8.0f} chips/s")
    print(f"S3 -> local disk:           {n / remote_s:8.0f} chips/s   {local_s / remote_s:5.0%} of local (target >= 70%)")
    print(f"S3 -> S3 (chips uploaded):  {n / both_s:8.0f} chips/s   {local_s / both_s:5.0%} of local")


if __name__ == "__main__":
    main()
