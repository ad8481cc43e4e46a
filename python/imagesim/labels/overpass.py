"""`imagesim osm fetch`: an Overpass client that survives the public servers.

Public Overpass instances rate-limit hard: HTTP 429, 503/504 (the "Dispatcher_Client" timeouts),
HTTP 200 answers whose ``remark`` says ``runtime error: Query timed out``, and connections cut
mid-answer. The client is polite and stubborn: one request at a time, it reads ``/api/status`` and
waits for a free slot before each request, retries with exponential backoff and jitter, and never
writes an answer it could not fully parse and check. The clock (``sleep`` and ``clock``) and the RNG
are injected so tests run against a real local HTTP server without really waiting.

Only what can pass is retried. A server that cannot be reached at all (its name does not resolve,
the connection is refused before any answer, no route to it, its certificate is refused) fails the
cell at once with :class:`~imagesim.errors.OverpassUnreachableError`, and :func:`fetch_cells` stops
the run there: every other cell needs the same server. Each cell's retries and waits together stop
after ``max_wait`` seconds.
"""

from __future__ import annotations

import errno
import http.client
import json
import random
import re
import socket
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from imagesim import options
from imagesim.errors import InvalidArgumentError, OsmDataError, OverpassError, OverpassResponseError, OverpassUnreachableError
from imagesim.fsutil import write_json
from imagesim.labels.cells import BBox, Cell, cell_bbox, check_osm_data, is_valid_file, split_elements
from imagesim.storage import AnyPath, location

DEFAULT_ENDPOINT = options.OVERPASS_ENDPOINT
RETRY_STATUS = {429, 500, 502, 503, 504}
#: Socket errors (inside ``URLError``) that say the server is out of reach from here: no retry helps.
UNREACHABLE_ERRNOS = {errno.ECONNREFUSED, errno.ENETUNREACH, errno.EHOSTUNREACH}
OFFLINE_HINT = (
    "working offline? `imagesim osm import EXTRACT.osm.pbf --ard-path ARD` writes the same osm_data.json files "
    "from an OSM extract (e.g. from download.geofabrik.de)"
)
USER_AGENT = "imagesim-osm-fetch (+https://github.com/imagesim)"


def overpass_query(bbox: BBox, timeout: int) -> str:
    """Overpass QL: nodes, ways and relations with at least one tag in ``bbox``, with geometry."""
    b = bbox.overpass()
    return (
        f"[out:json][timeout:{int(timeout)}];\n"
        "(\n"
        f"  node({b})(if:count_tags() > 0);\n"
        f"  way({b})(if:count_tags() > 0);\n"
        f"  relation({b})(if:count_tags() > 0);\n"
        ");\n"
        "out geom;\n"
    )


class SlotStatus(NamedTuple):
    """What ``/api/status`` says: ``available`` free slots now, ``waits`` seconds until the others free up."""

    rate_limit: int | None
    available: int
    waits: list[int]


_RATE = re.compile(r"^Rate limit:\s*(\d+)", re.M)
_AVAILABLE = re.compile(r"^(\d+) slots? available now", re.M)
_AFTER = re.compile(r"^Slot available after: \S+, in (-?\d+) seconds?\.", re.M)


def parse_status(text: str) -> SlotStatus:
    """Parse an ``/api/status`` body (with or without the ``Announced endpoint`` line)."""
    rate = _RATE.search(text)
    avail = _AVAILABLE.search(text)
    waits = [max(0, int(s)) for s in _AFTER.findall(text)]
    rate_limit = int(rate.group(1)) if rate else None
    if avail:
        available = int(avail.group(1))
    elif rate_limit == 0 or (rate_limit is None and not waits):
        available = 1  # no limit, or a body we do not understand: do not block on it
    else:
        available = 0
    return SlotStatus(rate_limit, available, waits)


@dataclass
class OverpassSettings:
    endpoint: str = DEFAULT_ENDPOINT
    timeout: int = options.OVERPASS_TIMEOUT  # the server's [timeout:] in seconds
    http_timeout: float | None = None  # socket timeout; default: timeout + 60 s
    max_retries: int = options.OVERPASS_MAX_RETRIES  # retries after the first attempt, per cell
    max_wait: float = options.OVERPASS_MAX_WAIT  # seconds per cell in all: attempts, backoff and slot waits
    backoff_base: float = options.OVERPASS_BACKOFF_BASE  # first backoff; doubles each retry
    backoff_max: float = options.OVERPASS_BACKOFF_MAX
    status_wait_max: float = options.OVERPASS_STATUS_WAIT_MAX  # longest total wait for a slot before one request
    use_status: bool = True

    def __post_init__(self) -> None:
        scheme = urllib.parse.urlsplit(self.endpoint).scheme
        if scheme not in ("http", "https"):
            raise InvalidArgumentError(f"`endpoint` {self.endpoint!r}: give an http(s) URL such as {DEFAULT_ENDPOINT}", param="endpoint")
        options.check_range("timeout", self.timeout, *options.OVERPASS_TIMEOUT_RANGE, what="the Overpass timeout in seconds")
        options.check_range("max_retries", self.max_retries, *options.OVERPASS_MAX_RETRIES_RANGE)
        options.check_range("max_wait", self.max_wait, *options.OVERPASS_MAX_WAIT_RANGE, what="seconds per cell")
        for name in ("backoff_base", "backoff_max", "status_wait_max"):
            options.check_range(name, getattr(self, name), 0, None, what="seconds")

    @property
    def status_url(self) -> str:
        base, _, last = self.endpoint.rstrip("/").rpartition("/")
        return f"{base}/status" if last == "interpreter" else f"{self.endpoint.rstrip('/')}/status"


class _Retry(Exception):
    """A failure worth another try; ``after`` is a server-given wait (Retry-After), if any."""

    def __init__(self, message: str, after: float | None = None) -> None:
        super().__init__(message)
        self.after = after


@dataclass
class OverpassClient:
    settings: OverpassSettings = field(default_factory=OverpassSettings)
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic  # seconds, for `max_wait`; a test's fake clock advances with its sleep
    rng: random.Random = field(default_factory=random.Random)
    log: Callable[[str], None] = lambda _msg: None
    requests: int = 0  # interpreter requests made (for reports and tests)

    def backoff(self, attempt: int, after: float | None = None) -> float:
        """Seconds to wait before retry ``attempt`` (0-based): base·2^attempt capped, jittered to [½, 1]×."""
        s = self.settings
        delay = min(s.backoff_max, s.backoff_base * (2**attempt))
        delay *= 0.5 + 0.5 * self.rng.random()
        if after is not None:
            delay = max(delay, min(after, s.backoff_max))
        return delay

    def wait_for_slot(self, budget: float | None = None) -> None:
        """Block (via ``sleep``) until ``/api/status`` reports a free slot; give up waiting after
        ``status_wait_max`` seconds, or ``budget`` seconds when that is shorter."""
        if not self.settings.use_status:
            return
        limit = self.settings.status_wait_max if budget is None else min(budget, self.settings.status_wait_max)
        waited = 0.0
        while waited < limit:
            try:
                text = self._get(self.settings.status_url, min(30.0, self._http_timeout(), limit - waited))
            except (OSError, http.client.HTTPException, ValueError):
                return  # private instances often have no /api/status: just go ahead
            st = parse_status(text)
            if st.available > 0:
                return
            # Wake just after the earliest slot frees (1 s slack: the server's clock rounds).
            delay = (min(st.waits) if st.waits else self.settings.backoff_base) + 1.0
            delay = min(delay, limit - waited)
            self.log(f"no free Overpass slot, waiting {delay:.0f} s")
            self.sleep(delay)
            waited += delay

    def query(self, ql: str, what: str = "query") -> dict[str, Any]:
        """POST ``ql`` and return the parsed answer, retrying what a retry can fix for at most
        ``max_retries`` retries and ``max_wait`` seconds in all; an unreachable server fails at once."""
        s = self.settings
        start = self.clock()
        last = ""
        last_exc: _Retry | None = None

        def left() -> float:
            return s.max_wait - (self.clock() - start)

        def give_up(attempts: int, why: str) -> OverpassError:
            spent = self.clock() - start
            return OverpassError(
                f"{s.endpoint}: {what} failed: gave up after {attempts} attempts in {spent:.0f} s ({why}; "
                f"`max_wait` {s.max_wait:g} s per cell), last: {last or 'no free slot'}"
            )

        for attempt in range(s.max_retries + 1):
            if attempt:
                delay = self.backoff(attempt - 1, last_exc.after if last_exc else None)
                if delay >= left():
                    raise give_up(attempt, f"the next retry was due in {delay:.0f} s")
                self.log(f"{what}: {last}; retry {attempt}/{s.max_retries} in {delay:.1f} s")
                self.sleep(delay)
            self.wait_for_slot(left())
            budget = left()
            if budget <= 0:
                raise give_up(attempt, "no time left for another attempt")
            try:
                return self._post(ql, min(self._http_timeout(), budget))
            except _Retry as exc:
                last_exc = exc
                last = str(exc)
        raise OverpassError(f"{s.endpoint}: {what} failed after {s.max_retries + 1} attempts, last: {last}")

    # -- one attempt ---------------------------------------------------------------------

    def _post(self, ql: str, http_timeout: float) -> dict[str, Any]:
        s = self.settings
        self.requests += 1
        body = urllib.parse.urlencode({"data": ql}).encode()
        req = urllib.request.Request(
            s.endpoint,
            data=body,
            headers={"User-Agent": USER_AGENT, "Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=http_timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            detail = _error_text(exc)
            if exc.code in RETRY_STATUS:
                raise _Retry(f"HTTP {exc.code}{detail}", _retry_after(exc.headers.get("Retry-After"))) from None
            raise OverpassError(f"{s.endpoint}: HTTP {exc.code}{detail}") from None
        except TimeoutError as exc:
            raise _Retry(f"no answer within {http_timeout:.0f} s ({exc})") from None
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, (TimeoutError, socket.timeout)):
                raise _Retry(f"no answer within {http_timeout:.0f} s") from None
            unreachable = _unreachable(exc.reason, urllib.parse.urlsplit(s.endpoint).hostname or s.endpoint)
            if unreachable:
                raise OverpassUnreachableError(f"{s.endpoint}: cannot reach the Overpass server: {unreachable}") from None
            raise _Retry(f"connection failed: {exc.reason}") from None
        except (http.client.HTTPException, OSError) as exc:  # IncompleteRead, RemoteDisconnected, reset mid-answer
            raise _Retry(f"answer cut off: {type(exc).__name__}: {exc}") from None
        try:
            return parse_answer(raw)
        except OverpassResponseError as exc:
            raise _Retry(str(exc)) from None

    def _get(self, url: str, http_timeout: float) -> str:
        req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
        with urllib.request.urlopen(req, timeout=max(http_timeout, 0.1)) as resp:
            return resp.read().decode("utf-8", "replace")

    def _http_timeout(self) -> float:
        s = self.settings
        return s.http_timeout if s.http_timeout is not None else s.timeout + 60.0


def parse_answer(raw: bytes) -> dict[str, Any]:
    """Parse an Overpass JSON answer; raise OverpassResponseError when it is partial or failed."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        start = raw[:80].decode("utf-8", "replace").strip().replace("\n", " ")
        raise OverpassResponseError(f"answer is not complete JSON ({exc}; {len(raw)} bytes starting {start!r})") from None
    if not isinstance(data, dict) or not isinstance(data.get("elements"), list):
        raise OverpassResponseError("answer has no 'elements' list")
    remark = data.get("remark")
    # "runtime remark: ..." is informational; "runtime error: ..." means the answer is incomplete.
    if isinstance(remark, str) and "error" in remark.split(":", 1)[0].lower():
        raise OverpassResponseError(f"server remark: {remark.strip()}")
    return data


def _error_text(exc: urllib.error.HTTPError) -> str:
    try:
        text = exc.read(4096).decode("utf-8", "replace")
    except (OSError, http.client.HTTPException):
        return ""
    # Overpass error pages are HTML; the useful line is in a <p><strong>Error</strong>: ...</p>.
    text = re.sub(r"<[^>]+>", " ", text)
    lines = [ln.strip() for ln in text.splitlines() if "error" in ln.lower() and ln.strip()]
    return f" ({' '.join(lines[0].split())[:200]})" if lines else ""


def _unreachable(reason: object, host: str) -> str:
    """Why the server cannot be reached at all (a permanent failure), or "" for a failure worth a retry.

    A name that does not resolve (every ``gaierror``, "temporary" ones too: that is what a machine
    without a network or DNS server gets), a connection refused before any answer, no route to the
    host or network, a certificate refused: the next attempt fails the same way, and so does every
    other cell. A connection reset or timed out is transient and left to the retries.
    """
    if isinstance(reason, socket.gaierror):
        return f"the name {host} does not resolve ({reason.strerror or reason}): no network, or a wrong `endpoint`?"
    if isinstance(reason, ssl.SSLCertVerificationError):
        return f"its TLS certificate was refused ({reason.verify_message or reason})"
    if isinstance(reason, OSError) and reason.errno in UNREACHABLE_ERRNOS:
        what = "connection refused" if reason.errno == errno.ECONNREFUSED else (reason.strerror or str(reason)).lower()
        return f"{what} ({host}): is the server running, and `endpoint` right?"
    return ""


def _retry_after(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


# --------------------------------------------------------------------------------------------
# Many cells
# --------------------------------------------------------------------------------------------


@dataclass
class FetchSummary:
    done: list[Cell] = field(default_factory=list)
    skipped: list[Cell] = field(default_factory=list)
    failed: list[tuple[Cell, str]] = field(default_factory=list)
    not_tried: list[Cell] = field(default_factory=list)  # left when the run stopped (server unreachable)
    stopped: str = ""  # why the run stopped before the last cell, with what to do instead
    requests: int = 0
    seconds: float = 0.0

    def line(self) -> str:
        not_tried = f", {len(self.not_tried)} not tried" if self.not_tried else ""
        return (
            f"osm fetch: {len(self.done)} cells written, {len(self.skipped)} skipped (already fetched), "
            f"{len(self.failed)} failed{not_tried}; {self.requests} requests in {self.seconds:.0f} s"
        )


def fetch_cell(cell: Cell, root: str | AnyPath, client: OverpassClient) -> AnyPath:
    """Query one cell and write its ``osm_data.json`` (only after the answer passed every check)."""
    ql = overpass_query(cell_bbox(cell), client.settings.timeout)
    data = client.query(ql, what=f"cell {cell.zone}/{cell.quadkey}")
    doc = split_elements(cell.quadkey, data["elements"])
    path = cell.osm_path(root)
    try:
        check_osm_data(doc, cell.quadkey, str(path))
    except OsmDataError as exc:
        raise OverpassResponseError(f"{client.settings.endpoint}: cell {cell.quadkey}: {exc}") from None
    write_json(path, doc)
    return path


def fetch_cells(
    cells: Iterable[Cell],
    root: str | AnyPath,
    client: OverpassClient,
    *,
    overwrite: bool = False,
    progress: Callable[[int], Any] | None = None,
) -> FetchSummary:
    """Fetch every cell in turn (one request at a time); valid existing files are skipped unless ``overwrite``.

    A cell that fails is reported and the run goes on, except when the server cannot be reached at all
    (:class:`~imagesim.errors.OverpassUnreachableError`): then every later cell would fail the same way,
    so the run stops, the rest are ``not_tried`` and ``stopped`` says why and what to do offline. A
    re-run skips the cells already written.
    """
    base = location(root)
    summary = FetchSummary()
    t0 = time.perf_counter()
    r0 = client.requests
    cells = list(cells)
    unreachable = False
    for i, cell in enumerate(cells):
        if not overwrite and is_valid_file(cell.osm_path(base), cell.quadkey):
            summary.skipped.append(cell)
        elif unreachable:
            summary.not_tried.append(cell)
        else:
            try:
                fetch_cell(cell, base, client)
                summary.done.append(cell)
            except OverpassUnreachableError as exc:
                summary.failed.append((cell, str(exc)))
                unreachable = True
            except OverpassError as exc:
                summary.failed.append((cell, str(exc)))
        if progress:
            progress(i + 1)
    if unreachable:
        rest = f", so the other {len(summary.not_tried)} cells were not tried" if summary.not_tried else ""
        summary.stopped = f"stopped: the Overpass server cannot be reached{rest}; {OFFLINE_HINT}"
    summary.requests = client.requests - r0
    summary.seconds = time.perf_counter() - t0
    return summary
