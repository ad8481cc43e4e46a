"""Object-storage benchmark: chipping a full-size COG from a local S3-compatible server on
127.0.0.1 vs from local disk, same run, same settings. Target: >= 70 % of local-disk speed.

The remote reads go through the Rust reader: one 64 kB range read per COG for the header (the size
comes with it), then chunk reads merged into aligned 16 MiB range requests read ahead. Also
measured: chips written *to* the bucket (background uploads, 32 in flight).

The server is moto (from PyPI, pure Python), running in this process and sharing the machine's
cores with the chipping; each range request costs it ~40 ms however small (it reads the whole
object), which is why few, large requests matter here. s3s-fs (a Rust S3 server) was tried and
serves a whole 63 MB object at ~130 MB/s against moto's ~650 MB/s, so moto is the faster stand-in.

    python benches/bench_storage.py [--proc 2] [--passthrough]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_chip import REPO, ensure_cog  # noqa: E402


def start_server():
    """(endpoint, stop) of a moto S3 server on loopback."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return f"http://{host}:{port}", server.stop


def server_put_rate(chips: Path, count: int = 600) -> float:
    """Objects/s the server accepts (chip-sized PUTs, 32 in flight): the bound for chips written to it."""
    from concurrent.futures import ThreadPoolExecutor

    from imagesim import _imagesim

    sizes = [p.stat().st_size for p in chips.rglob("*.jpg")]
    data = os.urandom(int(sum(sizes) / max(len(sizes), 1)))
    with ThreadPoolExecutor(32) as pool:
        start = time.perf_counter()
        list(pool.map(lambda i: _imagesim.store_put(f"s3://bench/put-probe/{i}.jpg", data), range(count)))
        return count / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--proc", type=int, default=2)
    ap.add_argument("--passthrough", action="store_true")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", type=Path, default=REPO / "bench-out")
    args = ap.parse_args()

    import boto3

    from imagesim import _imagesim
    from imagesim.imagery.chip import ChipSettings, run_chip

    cog = ensure_cog(args.out)
    root = cog.parents[3]
    rel = cog.relative_to(root).as_posix()
    catalog_id = cog.name[: -len("-visual.tif")]

    endpoint, stop = start_server()
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_REGION="us-east-1", AWS_ENDPOINT=endpoint, AWS_ALLOW_HTTP="true"
    )
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

    def once(source, dest) -> tuple[float, int]:
        clear(dest)
        start = time.perf_counter()
        summary = run_chip(source, dest, settings, catalog_ids=[catalog_id])
        seconds = time.perf_counter() - start
        assert not summary.failed_cogs and not summary.failed_chips, summary.line()
        return seconds, summary.written

    local_dest = args.out / "storage-chips"
    runs = {"local": (root, local_dest), "remote": (url, local_dest), "both": (url, "s3://bench/chips")}
    times: dict[str, list[float]] = {k: [] for k in runs}
    written: dict[str, int] = {}
    try:
        # Interleaved, best of --repeat each: a noisy machine slows all three alike.
        for _ in range(args.repeat):
            for kind, (source, dest) in runs.items():
                seconds, written[kind] = once(source, dest)
                times[kind].append(seconds)
        put_rate = server_put_rate(local_dest)
    finally:
        stop()
    local_s, remote_s, both_s = (min(times[k]) for k in runs)
    n, m, k = (written[k] for k in runs)
    assert n == m == k
    mode = "passthrough" if args.passthrough else "re-encode"
    print(f"{n} z17 chips of {cog.name} ({cog.stat().st_size / 1e6:.0f} MB), {mode}, {args.proc} worker(s), S3 server: moto on loopback")
    print(f"local disk -> local disk:   {n / local_s:8.0f} chips/s")
    print(f"S3 -> local disk:           {n / remote_s:8.0f} chips/s   {local_s / remote_s:5.0%} of local (target >= 70%)")
    print(
        f"S3 -> S3 (chips uploaded):  {n / both_s:8.0f} chips/s   {local_s / both_s:5.0%} of local; "
        f"the server itself stores {put_rate:.0f} such objects/s with 32 PUTs in flight"
    )


if __name__ == "__main__":
    main()
