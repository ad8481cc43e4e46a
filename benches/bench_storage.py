"""Object-storage benchmark: chipping a full-size COG from a local S3-compatible server (moto on
127.0.0.1) vs from local disk, same run, same settings. Target: >= 70 % of local-disk speed.

The remote reads go through the Rust reader: one HEAD + one 64 kB header read per COG, then chunk
reads merged into aligned 4 MiB range requests.

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--proc", type=int, default=2)
    ap.add_argument("--passthrough", action="store_true")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", type=Path, default=REPO / "bench-out")
    args = ap.parse_args()
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    from imagesim.chip import ChipSettings, run_chip

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    cog = ensure_cog(args.out)
    root = cog.parents[3]
    rel = cog.relative_to(root).as_posix()
    catalog_id = cog.name[: -len("-visual.tif")]

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_REGION="us-east-1",
                      AWS_ENDPOINT=endpoint, AWS_ALLOW_HTTP="true")
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket="bench")
    s3.upload_file(str(cog), "bench", f"ard/{rel}")
    url = "s3://bench/ard"
    settings = ChipSettings(zoom=17, proc=args.proc, passthrough=args.passthrough)
    cog.read_bytes()  # warm page cache for the local side

    def best(source) -> tuple[float, int]:
        times, written = [], 0
        for _ in range(args.repeat):
            dest = args.out / "storage-chips"
            shutil.rmtree(dest, ignore_errors=True)
            start = time.perf_counter()
            summary = run_chip(source, dest, settings, catalog_ids=[catalog_id])
            times.append(time.perf_counter() - start)
            written = summary.written
            assert not summary.failed_cogs and not summary.failed_chips, summary.line()
        return min(times), written

    local_s, n = best(root)
    remote_s, m = best(url)
    server.stop()
    assert n == m
    mode = "passthrough" if args.passthrough else "re-encode"
    print(f"{n} z17 chips of {cog.name} ({cog.stat().st_size / 1e6:.0f} MB), {mode}, {args.proc} worker(s)")
    print(f"local disk:           {n / local_s:8.0f} chips/s")
    print(f"S3 (moto, loopback):  {n / remote_s:8.0f} chips/s")
    print(f"remote / local: {local_s / remote_s:.0%}  (target >= 70%)")


if __name__ == "__main__":
    main()
