"""Running a stage's tasks in this process or on a Dask cluster, through one loop.

A stage (chip, nodata-index, encode) splits its work into *items* (COGs, batches of chips) and runs a
*task* per item: a picklable top-level function called with the item's arguments. :class:`TaskRunner`
runs the tasks and yields one :class:`Outcome` per item, in completion order, whatever runs them:

- in process (``scheduler`` None): a thread pool of ``workers`` threads (the Rust calls release the
  GIL), or inline (``workers=0``). An :class:`~imagesim.errors.ImagesimError` raised by a task becomes
  that item's error; any other exception is a bug and propagates;
- on Dask (``scheduler`` ``tcp://HOST:PORT``, ``local`` for a LocalCluster of two worker processes
  started here, or a ``distributed.Client``): one task per item with a unique key, ``pure=False`` and
  ``retries``; a task that still fails (its worker died on every try, say) is that item's error.

The stage merges each outcome the same way in both modes (manifest rows, counts, embeddings), and
writes its outputs itself. Tasks only write chip files (atomically, on a filesystem or store the
workers and the client both see) and return plain Python data.

`dask` stays optional (``pip install 'imagesim[cluster]'``): it is imported only when a scheduler is
given. ``IMAGESIM_SCHEDULER`` is read by the command line, not here.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar
from urllib.parse import urlsplit

from imagesim.errors import ImagesimError, InvalidArgumentError, require

if TYPE_CHECKING:
    from concurrent.futures import Future

ENV = "IMAGESIM_SCHEDULER"
LOCAL = "local"
RETRIES = 2
CONNECT_TIMEOUT_S = 10.0
TICK_S = 0.1  # in process: how often the live progress counter is read
# Schemes the distributed comm layer speaks; tls:// for clusters with TLS (dask-gateway, Coiled).
SCHEMES = ("tcp", "tls", "ws", "wss", "inproc")

T = TypeVar("T")


class Counter(Protocol):
    """A live count of finished units that in-process tasks advance (``_imagesim.Progress``)."""

    @property
    def value(self) -> int: ...


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
            f"`scheduler` {address!r}: not a Dask scheduler address ({problem}); "
            f"use tcp://HOST:PORT (8786 is Dask's default port) or 'local'",
            param="scheduler",
        )
    return address


def _distributed() -> Any:
    return require("distributed", "cluster", purpose="`scheduler`")


@contextmanager
def connect(address: Any, *, timeout: float | None = None, n_workers: int = 2) -> Iterator[Any]:
    """A ``distributed.Client`` for ``address`` (``local``: a LocalCluster started here), closed on exit.

    ``address`` may also be a ``distributed.Client`` the caller owns: it is used as is and left open.
    """
    if not isinstance(address, str):
        yield address
        return
    address = check_address(address)
    distributed = _distributed()
    timeout = CONNECT_TIMEOUT_S if timeout is None else timeout
    cluster = None
    if address == LOCAL:
        cluster = distributed.LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None)
        target: Any = cluster
    else:
        target = address
    try:
        try:
            client = distributed.Client(target, timeout=timeout, set_as_default=False)
        except (OSError, TimeoutError) as exc:
            raise InvalidArgumentError(
                f"`scheduler` {address}: cannot reach the Dask scheduler within {timeout:.0f}s ({exc}); "
                f"is it running and is the address right?",
                param="scheduler",
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
    """One item's task, finished: its result, or the error that ended it (after the retries on Dask)."""

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
    if isinstance(exc, ImagesimError):
        return str(exc)
    return f"{name}: {exc}"


class Outcomes(Generic[T]):
    """The outcomes of :meth:`TaskRunner.run`, in completion order; closing it stops the run."""

    def __init__(self, outcomes: Generator[Outcome[T], None, None]) -> None:
        self._outcomes = outcomes

    def __iter__(self) -> Outcomes[T]:
        return self

    def __next__(self) -> Outcome[T]:
        return next(self._outcomes)

    def close(self) -> None:
        self._outcomes.close()

    def __enter__(self) -> Outcomes[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class TaskRunner:
    """Where a stage's tasks run: in this process (``scheduler`` None) or on a Dask cluster.

    ``scheduler``: None, a Dask scheduler address (``tcp://HOST:PORT``), ``"local"`` (a LocalCluster
    started for each :meth:`run`) or a ``distributed.Client`` the caller owns. An address is checked
    here, when the stage starts, before it writes anything; the cluster is reached by :meth:`run`.
    """

    def __init__(self, scheduler: Any = None) -> None:
        self.scheduler = check_address(scheduler) if isinstance(scheduler, str) else scheduler

    @contextmanager
    def session(self) -> Iterator[TaskRunner]:
        """A runner whose :meth:`run` calls share one connection to the cluster (one LocalCluster for
        ``local``), made by the first run that has items and closed on exit: a stage that runs its tasks
        a chunk at a time. In process, or with a ``distributed.Client``, it is this runner."""
        if not isinstance(self.scheduler, str):
            yield self
            return
        with ExitStack() as stack:
            yield _Session(self.scheduler, stack)

    def _target(self) -> Any:
        """The scheduler (address or Client) a run on Dask uses."""
        return self.scheduler

    @property
    def local(self) -> bool:
        """Tasks run in this process."""
        return self.scheduler is None

    def task_path(self, path: Any) -> Any:
        """``path`` as a task needs it: absolute on Dask (a worker's working directory is not ours)."""
        return path if self.local else path.absolute()

    def run(
        self,
        fn: Callable[..., Any],
        items: Sequence[T],
        args_of: Callable[[T], tuple],
        *,
        name: str,
        workers: int = 1,
        window: int | None = None,
        counter: Counter | None = None,
        units: Callable[[T], int] | None = None,
        on_progress: Callable[[int], None] | None = None,
        retries: int = RETRIES,
    ) -> Outcomes[T]:
        """Run ``fn(*args_of(item))`` once per item; yield an :class:`Outcome` as each finishes.

        ``workers``: in process, the threads that run items side by side (0: inline, one after
        another in the calling thread); a task's :func:`worker_threads` is its share of the cores.
        ``window``: in process, the most items queued or running while the caller handles an outcome
        (None: all of them); ``window=1`` runs exactly one item ahead, so a task may reuse the
        buffer of the item before last. Both are ignored on Dask, which gets every item at once.

        ``on_progress(done)`` is called with the units finished (``units(item)``, 1 by default) after
        each outcome is handled. ``counter`` gives finer progress in process: it is passed to each task
        as its ``progress`` keyword, and read every ``TICK_S`` while tasks run; an in-process item
        that fails counts its units on top of it. Dask tasks get no counter.

        Use it in a ``with`` block (or close it): leaving the loop early (an exception, ``break``) then
        cancels the items not yet started at once and closes a cluster started for the run.
        """
        return Outcomes(
            self._run(
                fn,
                items,
                args_of,
                name=name,
                workers=workers,
                window=window,
                counter=counter,
                units=units,
                on_progress=on_progress,
                retries=retries,
            )
        )

    def _run(
        self,
        fn: Callable[..., Any],
        items: Sequence[T],
        args_of: Callable[[T], tuple],
        *,
        name: str,
        workers: int,
        window: int | None,
        counter: Counter | None,
        units: Callable[[T], int] | None,
        on_progress: Callable[[int], None] | None,
        retries: int,
    ) -> Generator[Outcome[T], None, None]:
        if not items:
            return
        size = units or (lambda _item: 1)
        finished = 0  # units of the items whose outcome is in
        failed = 0  # units of in-process items that failed (the counter never counted them)
        live = counter if self.local else None

        def report() -> None:
            if on_progress is not None:
                on_progress(live.value + failed if live is not None else finished)

        if self.local:
            extra = {"progress": counter} if counter is not None else {}
            outcomes = _in_process(
                fn, items, args_of, name=name, workers=workers, window=window, kwargs=extra, on_tick=report if live is not None else None
            )
        else:
            outcomes = _on_dask(self._target(), fn, items, args_of, name=name, retries=retries)
        for outcome in outcomes:
            finished += size(outcome.item)
            if outcome.error is not None and live is not None:
                failed += size(outcome.item)
            yield outcome
            report()


class _Session(TaskRunner):
    """:meth:`TaskRunner.session` on Dask: connected on the first run, left connected until the session ends."""

    def __init__(self, scheduler: str, stack: ExitStack) -> None:
        super().__init__(scheduler)
        self._stack = stack
        self._client: Any = None

    def _target(self) -> Any:
        if self._client is None:
            self._client = self._stack.enter_context(connect(self.scheduler))
        return self._client


_slots = threading.local()  # in-process pool threads: how many tasks run side by side


def _set_slots(n: int) -> None:
    _slots.n = n


def _in_process(
    fn: Callable[..., Any],
    items: Sequence[T],
    args_of: Callable[[T], tuple],
    *,
    name: str,
    workers: int,
    window: int | None,
    kwargs: dict[str, Any],
    on_tick: Callable[[], None] | None,
) -> Iterator[Outcome[T]]:
    """Items on a thread pool (or inline), outcomes in completion order, ``on_tick`` every ``TICK_S``."""
    if workers <= 0:
        for item in items:
            before = getattr(_slots, "n", None)
            _slots.n = 1
            try:
                result = fn(*args_of(item), **kwargs)
            except ImagesimError as exc:
                yield Outcome(item, error=str(exc))
                continue
            finally:
                _slots.n = before
            yield Outcome(item, result=result)
        return
    # imported here: concurrent.futures loads logging (~15 ms), start-up a run without a pool need not pay
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name, initializer=_set_slots, initargs=(workers,))
    limit = max(1, window) if window is not None else len(items)
    queue = iter(enumerate(items))
    running: dict[Future, tuple[int, T]] = {}

    def top_up() -> None:
        while len(running) < limit:
            nxt = next(queue, None)
            if nxt is None:
                return
            running[pool.submit(fn, *args_of(nxt[1]), **kwargs)] = nxt

    try:
        top_up()
        while running:
            done, _ = wait(running, timeout=TICK_S, return_when=FIRST_COMPLETED)
            for fut in sorted(done, key=lambda f: running[f][0]):
                _, item = running.pop(fut)
                top_up()  # the next item starts while the caller handles this one
                try:
                    result = fut.result()
                except ImagesimError as exc:
                    yield Outcome(item, error=str(exc))
                    continue
                yield Outcome(item, result=result)
            if on_tick is not None:
                on_tick()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _on_dask(
    scheduler: Any,
    fn: Callable[..., Any],
    items: Sequence[T],
    args_of: Callable[[T], tuple],
    *,
    name: str,
    retries: int,
) -> Iterator[Outcome[T]]:
    """One Dask task per item; failures yielded, not raised; unfinished tasks cancelled on exit.

    Every task gets a unique key (``name-<n>-<nonce>``) so two runs never share results, ``pure=False``
    so Dask never deduplicates, and ``retries`` for exceptions; a task whose worker dies is rescheduled
    by Dask (``distributed.scheduler.allowed-failures``, 3 by default).
    """
    distributed = _distributed()
    with connect(scheduler) as client:
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
                        result = fut.result()
                    except Exception as exc:  # lost between finishing and fetching: report, go on
                        yield Outcome(item, error=describe_failure(exc))
                        continue
                    yield Outcome(item, result=result)
                    continue
                failure: BaseException | None
                try:
                    failure = fut.exception()
                except BaseException as cancelled:  # cancelled futures raise instead of returning
                    failure = cancelled
                yield Outcome(item, error=describe_failure(failure) if failure is not None else f"task ended as {fut.status}")
        finally:
            client.cancel(list(futures))


def cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def worker_threads(requested: int) -> int:
    """Threads for the task calling this: ``requested`` (0 = all cores) shared by the tasks that run
    side by side with it — the ``workers`` of an in-process run, or the task slots of its Dask worker."""
    slots = getattr(_slots, "n", None)
    if slots is None:
        try:
            from distributed import get_worker

            slots = get_worker().state.nthreads
        except (ImportError, ValueError, AttributeError):
            slots = 1
    return max(1, (requested or cores()) // max(1, slots))
