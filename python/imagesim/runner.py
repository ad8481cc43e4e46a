"""Running chip / nodata-index work on a Dask distributed cluster (`--scheduler`).

``--scheduler tcp://HOST:PORT`` (or ``IMAGESIM_SCHEDULER``) connects to an existing Dask scheduler;
``--scheduler local`` starts a LocalCluster of two worker processes on this machine (for tests and
trials). Without a scheduler every command stays in-process (Rust threads) and this module is not
imported, so `dask` stays an optional dependency (``pip install 'imagesim[cluster]'``).

The work is split coarsely: one task per COG (chip) or per batch of chips (nodata-index). Tasks
only write chip files (atomically, on the shared filesystem the workers and the client both see)
and return plain Python data; the client gathers the results and writes ``chips.parquet``, the
no-data index and the error reports itself, exactly as an in-process run does.

Failures: a task that raises is retried (``retries``, default 2) and a task whose worker dies is
rescheduled by Dask (``distributed.scheduler.allowed-failures``, 3 by default). A task that still
fails is reported per item (failed COG, failed chips) like an in-process failure — the run goes on.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit

from imagesim.errors import InvalidArgumentError, MissingDependencyError

ENV = "IMAGESIM_SCHEDULER"
LOCAL = "local"
RETRIES = 2
CONNECT_TIMEOUT_S = 10.0
# Schemes the distributed comm layer speaks; tls:// for clusters with TLS (dask-gateway, Coiled).
SCHEMES = ("tcp", "tls", "ws", "wss", "inproc")

T = TypeVar("T")


def check_address(address: str) -> str:
    """``address`` normalised (``local`` or ``SCHEME://HOST:PORT``); a clear error when it is neither."""
    address = address.strip()
    if address.lower() == LOCAL:
        return LOCAL
    parts = urlsplit(address)
    problem = None
    if parts.scheme not in SCHEMES:
        problem = f"the scheme must be one of {', '.join(s + '://' for s in SCHEMES)}"
    elif parts.scheme != "inproc":
        try:
            port = parts.port
        except ValueError:
            port = None
        if not parts.hostname or port is None:
            problem = "it needs a host and a port"
    if problem:
        raise InvalidArgumentError(
            f"--scheduler {address!r}: not a Dask scheduler address ({problem}); "
            f"use tcp://HOST:PORT (8786 is Dask's default port) or 'local'"
        )
    return address


def _import_distributed():
    try:
        import distributed
    except ImportError as exc:
        raise MissingDependencyError(
            f"--scheduler needs Dask distributed ({exc}); pip install 'imagesim[cluster]'"
        ) from exc
    return distributed


@contextmanager
def connect(address: Any, *, timeout: float | None = None, n_workers: int = 2) -> Iterator[Any]:
    """A ``distributed.Client`` for ``address`` (``local``: a LocalCluster started here), closed on exit.

    ``address`` may also be a ``distributed.Client`` the caller owns: it is used as is and left open.
    """
    if not isinstance(address, str):
        yield address
        return
    address = check_address(address)
    distributed = _import_distributed()
    timeout = CONNECT_TIMEOUT_S if timeout is None else timeout
    cluster = None
    if address == LOCAL:
        cluster = distributed.LocalCluster(
            n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None
        )
        target: Any = cluster
    else:
        target = address
    try:
        try:
            client = distributed.Client(target, timeout=timeout, set_as_default=False)
        except (OSError, TimeoutError) as exc:
            raise InvalidArgumentError(
                f"--scheduler {address}: cannot reach the Dask scheduler within {timeout:.0f}s ({exc}); "
                f"is it running and is the address right?"
            ) from exc
        try:
            yield client
        finally:
            client.close()
    finally:
        if cluster is not None:
            cluster.close()


@dataclass
class Outcome(Generic[T]):
    """One item's task, finished: its result, or the error that ended it after the retries."""

    item: T
    result: Any = None
    error: str | None = None


def describe_failure(exc: BaseException) -> str:
    """One line for a task that failed for good; worker deaths said plainly."""
    name = type(exc).__name__
    if name == "KilledWorker":
        return "its Dask worker died on every try (out of memory, killed, or crashed); see the worker logs"
    if name in ("CancelledError", "FutureCancelledError"):
        return "the task was cancelled (lost connection to the Dask scheduler?)"
    from imagesim.errors import ImagesimError

    if isinstance(exc, ImagesimError):
        return str(exc)
    return f"{name}: {exc}"


def run_tasks(
    client: Any,
    fn: Callable[..., Any],
    items: Sequence[T],
    args_of: Callable[[T], tuple],
    *,
    name: str,
    retries: int = RETRIES,
) -> Iterator[Outcome[T]]:
    """Submit ``fn(*args_of(item))`` once per item; yield an :class:`Outcome` as each finishes.

    Every task gets a unique key (``name-<n>-<nonce>``) so two runs never share results, ``pure=False``
    so Dask never deduplicates, and ``retries`` for exceptions. Failures are yielded, not raised.
    """
    distributed = _import_distributed()
    nonce = f"{os.getpid():x}{time.monotonic_ns():x}"
    futures = {}
    for n, item in enumerate(items):
        fut = client.submit(fn, *args_of(item), key=f"{name}-{n}-{nonce}", pure=False, retries=retries)
        futures[fut] = item
    try:
        for fut in distributed.as_completed(list(futures), loop=client.loop):
            item = futures[fut]
            if fut.status == "finished":
                try:
                    yield Outcome(item, result=fut.result())
                    continue
                except Exception as exc:  # lost between finishing and fetching: report, go on
                    yield Outcome(item, error=describe_failure(exc))
                    continue
            failure: BaseException | None
            try:
                failure = fut.exception()
            except BaseException as cancelled:  # cancelled futures raise instead of returning
                failure = cancelled
            yield Outcome(item, error=describe_failure(failure) if failure is not None else f"task ended as {fut.status}")
    finally:
        client.cancel(list(futures))


def worker_threads(requested: int) -> int:
    """Rust threads for one task on this worker: ``requested``, or the cores shared by its task slots."""
    if requested:
        return requested
    cores = os.cpu_count() or 1
    try:
        from distributed import get_worker

        slots = get_worker().state.nthreads
    except (ImportError, ValueError, AttributeError):
        slots = 1
    return max(1, cores // max(1, slots))
