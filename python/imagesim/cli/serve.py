"""`imagesim serve`: registered on the main app by ``register(app)``.

FastAPI, uvicorn, faiss and pyproj are imported inside the command, so `imagesim --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

err = Console(stderr=True, soft_wrap=True)


def serve(
    ard_path: Annotated[str, typer.Option("--ard-path", help="ARD delivery root (<zone>/<quadkey>/<date>/<catalog-id>-visual.tif): a folder or an object-store URL (tiles then come from range requests).")],
    chips: Annotated[Path, typer.Option("--chips", help="Chips folder (the DEST of `imagesim chip`), for thumbnails.")],
    index: Annotated[Optional[Path], typer.Option("--index", help="Index folder from `imagesim index` (similar-chip queries).")] = None,
    host: Annotated[str, typer.Option(help="Address to bind; the default serves this machine only.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    workers: Annotated[int, typer.Option(help="Server processes (each loads the index and its own tile cache).")] = 1,
    block_cache_mb: Annotated[int, typer.Option("--block-cache-mb", help="Decoded COG blocks kept in memory per process (MiB; 0: none).")] = 256,
    cog_cache: Annotated[int, typer.Option("--cog-cache", help="Open COG headers kept per process.")] = 256,
    quality: Annotated[int, typer.Option(help="JPEG quality of the tiles.")] = 85,
) -> None:
    """Serve a map of the imagery with the chip grid and similar-chip search (web page, XYZ tiles, JSON API)."""
    import os

    from imagesim.errors import InvalidArgumentError, MissingDependencyError

    try:
        import uvicorn
    except ImportError as exc:
        raise MissingDependencyError("`imagesim serve` needs fastapi and uvicorn; install them with `pip install fastapi uvicorn`") from exc
    if not 1 <= port <= 65535:
        raise InvalidArgumentError(f"--port must be 1..65535, got {port}")
    if not 1 <= workers <= 64:
        raise InvalidArgumentError(f"--workers must be 1..64, got {workers}")
    if not 1 <= quality <= 100:
        raise InvalidArgumentError(f"--quality must be 1..100, got {quality}")
    if block_cache_mb < 0 or cog_cache < 1:
        raise InvalidArgumentError("--block-cache-mb must be >= 0 and --cog-cache >= 1")

    import sys

    from imagesim.search.serve.app import allowed_hosts_for, create_app
    from imagesim.storage import location

    # build the app here first: a bad path or index fails now with one line, not in a worker
    app = create_app(ard_path, chips, index, block_cache_mb=block_cache_mb if workers == 1 else 0,
                     cog_cache=cog_cache, quality=quality, allowed_hosts=allowed_hosts_for(host))
    if host not in ("127.0.0.1", "localhost", "::1") and not host.startswith("127."):
        err.print(f"[yellow]warning:[/] binding {host}: the viewer is reachable from other machines (no authentication)", highlight=False)
    url_host = f"[{host}]" if ":" in host else host
    err.print(f"imagesim viewer on http://{url_host}:{port}/  (Ctrl-C stops it)", highlight=False)
    log_level = "info" if os.environ.get("IMAGESIM_DEBUG") else "warning"
    if workers == 1:
        uvicorn.run(app, host=host, port=port, log_level=log_level, server_header=False)
        return
    # several processes: uvicorn's own command line runs them (each builds the app from the environment)
    env = dict(os.environ,
               IMAGESIM_SERVE_ARD=str(location(ard_path).resolve()),
               IMAGESIM_SERVE_CHIPS=str(chips.resolve()),
               IMAGESIM_SERVE_INDEX=str(index.resolve()) if index else "",
               IMAGESIM_SERVE_BLOCK_CACHE_MB=str(block_cache_mb),
               IMAGESIM_SERVE_COG_CACHE=str(cog_cache),
               IMAGESIM_SERVE_QUALITY=str(quality),
               IMAGESIM_SERVE_HOST=host)
    del app
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "uvicorn", "imagesim.search.serve.app:app_from_env", "--factory",
                               "--host", host, "--port", str(port), "--workers", str(workers), "--log-level", log_level,
                               "--no-server-header"], env)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
