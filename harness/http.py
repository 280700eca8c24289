"""The one HTTP client of the harness: checkpoint downloads (`injection pull`), corpus descriptions (`data prepare`),
windows (`data extract`) and the byte ranges a run reads for hours or days.

What a data host does over hours, and what a transfer does about it:

    answer                                            what happens
    429, or 503 with Retry-After                      waits at least as long as the host asks (within the budget)
    408, 425, other 5xx                               retried with exponential backoff and jitter
    refused, reset or dropped connection              retried; a body cut short resumes by Range from the bytes received
    a read that stalls (no byte for `timeout` s) or   retried the same way
      trickles (under `min_rate` bytes/s)
    404 / 410, 401 / 403, other 4xx                   named at once (`NotFound`, `HttpError`), never retried
    a 206 whose Content-Range is not the range asked, named at once: the host is broken, waiting will not help
      an invalid Content-Length, a redirect loop

A transfer gives up when it has received nothing for `budget` seconds (or after `retries` failed attempts in a
row, where set) and raises `HostUnavailable` naming the URL and the last failure. Every resumed body is
Range-checked: the host must answer with exactly the bytes asked for.

One `requests.Session` serves every thread of the process, so urllib3 keeps one connection pool per host.
The default policy comes from the environment (`INJECTION_HTTP_BUDGET`, `INJECTION_HTTP_TIMEOUT`,
`INJECTION_HTTP_BACKOFF`, in seconds); a run's `http` settings replace it for that run.
"""

from __future__ import annotations

import email.utils
import io
import math
import os
import random
import re
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields, replace
from pathlib import Path

import requests
import urllib3

from harness.errors import UserError

#: Answers worth another try: the host is busy or briefly broken.
RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504}) | frozenset(range(520, 530))
ENV = {"budget": "INJECTION_HTTP_BUDGET", "timeout": "INJECTION_HTTP_TIMEOUT", "backoff": "INJECTION_HTTP_BACKOFF"}
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
_UNSATISFIED_RANGE = re.compile(r"^bytes \*/(\d+)$")


@dataclass(frozen=True)
class HttpPolicy:
    """How hard a transfer tries before it gives up."""

    budget: float = 900.0
    """Seconds a transfer keeps retrying while nothing arrives (waits and failed attempts together)."""
    retries: int | None = None
    """At most this many failed attempts in a row (None: the budget alone decides)."""
    backoff: float = 1.0
    """The first wait between attempts; it doubles with every failure in a row, up to `max_backoff`, each wait
    drawn between half and all of it (jitter: many readers of one host do not retry in step)."""
    max_backoff: float = 60.0
    timeout: float = 60.0
    """Seconds to connect, and the longest a read waits for the next bytes before the attempt counts as stalled."""
    min_rate: float = 1024.0
    """Bytes per second a body must average over every `timeout` seconds; a slower trickle counts as stalled."""
    stream_bytes: int = 1 << 16
    """Bytes per socket read: a body that stops short keeps everything before the read in progress."""
    not_found_retries: int = 0
    """404 answers retried this many times (a host that answers 404 for a file it has, now and then)."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise UserError(f"HTTP setting {f.name!r}: must be a finite number >= 0, got {value!r}")
        if self.timeout <= 0 or self.stream_bytes < 1:
            raise UserError(f"HTTP settings: timeout and stream_bytes must be positive, got {self}")

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> HttpPolicy:
        """The defaults, with `INJECTION_HTTP_BUDGET`, `_TIMEOUT` and `_BACKOFF` (seconds) where set."""
        environ = os.environ if environ is None else environ
        values = {}
        for name, variable in ENV.items():
            raw = environ.get(variable)
            if raw is None or raw == "":
                continue
            try:
                values[name] = float(raw)
            except ValueError:
                raise UserError(f"environment variable {variable}={raw!r}: expected a number of seconds") from None
        return cls(**values)


_configured: dict[str, float | None] = {}


def default_policy() -> HttpPolicy:
    """The policy transfers use unless given one: the environment's, with what `configure` set."""
    return replace(HttpPolicy.from_env(), **_configured)


def configure(**settings: float | None) -> HttpPolicy:
    """Set the process's default policy: these fields (None: the environment's or the default), replacing what an
    earlier call set; returns the new default."""
    _configured.clear()
    _configured.update({k: v for k, v in settings.items() if v is not None})
    return default_policy()


# ---- errors ------------------------------------------------------------------------------------------------


class HttpError(UserError):
    """A transfer that cannot succeed as things stand, named with its URL."""

    def __init__(self, url: str, reason: str) -> None:
        self.url, self.reason = url, reason
        super().__init__(f"{url}: {reason}")


class NotFound(HttpError):
    """404 or 410: the host does not have the file."""


class HostUnavailable(HttpError):
    """The host kept failing (busy, unreachable, stalling) for longer than the retry budget."""


class _Retry(Exception):
    """One failed attempt that another may fix; `kind` is what the transfer statistics count."""

    def __init__(self, kind: str, detail: str = "", retry_after: float | None = None) -> None:
        self.kind, self.detail, self.retry_after = kind, detail or kind, retry_after
        super().__init__(self.detail)


# ---- what the transfers met ------------------------------------------------------------------------------

_stats: Counter[str] = Counter()
_stats_lock = threading.Lock()


def _count(kind: str, n: int = 1) -> None:
    with _stats_lock:
        _stats[kind] += n


def transfer_stats() -> dict[str, int]:
    """Counts since the process started (or `reset_stats`): requests, failed attempts by kind, bodies resumed."""
    with _stats_lock:
        return dict(sorted(_stats.items()))


def reset_stats() -> None:
    with _stats_lock:
        _stats.clear()


# ---- the session -------------------------------------------------------------------------------------------

_session: requests.Session | None = None
_session_lock = threading.Lock()


def session() -> requests.Session:
    """The process's one session: a connection pool per host, shared by every thread."""
    global _session
    with _session_lock:
        if _session is None:
            s = requests.Session()
            adapter = requests.adapters.HTTPAdapter(pool_connections=16, pool_maxsize=64, max_retries=0)
            s.mount("http://", adapter)
            s.mount("https://", adapter)
            _session = s
        return _session


# ---- one transfer's retries --------------------------------------------------------------------------------


class _Attempts:
    """The budget of one transfer: time and failures since it last received a byte."""

    def __init__(self, url: str, policy: HttpPolicy) -> None:
        self.url, self.policy = url, policy
        self.failures = 0
        self.not_found = 0
        self.since = time.monotonic()
        self.noted = 0.0
        self._before = (self.since, 0)

    def begin(self) -> None:
        self._before = (self.since, self.failures)

    def progressed(self) -> None:
        self.failures = 0
        self.since = time.monotonic()

    def failed(self, err: _Retry) -> None:
        """Count the failure, then wait before the next attempt, or raise HostUnavailable once the budget is spent."""
        _count(err.kind)
        if err.kind == "trickled":
            # A trickle is not progress: otherwise a host sending a few bytes a second would never run out of budget.
            self.since, self.failures = self._before
        self.failures += 1
        policy = self.policy
        waited = time.monotonic() - self.since
        delay = min(policy.max_backoff, policy.backoff * 2 ** (self.failures - 1)) * random.uniform(0.5, 1.0)
        if err.retry_after is not None:
            delay = max(delay, err.retry_after)  # at least what the host asked (a "0" does not make us spin)
        over_retries = policy.retries is not None and self.failures > policy.retries
        if over_retries or waited + delay > policy.budget:
            if err.kind in ("HTTP 404", "HTTP 410"):
                raise NotFound(self.url, f"not found ({err.kind}, {self.failures} attempt(s))")
            asked = f"; it asked to wait {err.retry_after:g} s more" if err.retry_after is not None else ""
            _count("gave up")
            raise HostUnavailable(
                self.url,
                f"no complete answer after {self.failures} attempt(s) in a row over {waited:.1f} s "
                f"(last: {err.detail}{asked}; retry budget {policy.budget:g} s)",
            )
        if waited >= 10 and time.monotonic() - self.noted >= 60:
            self.noted = time.monotonic()
            print(
                f"note: {self.url}: {err.detail}; retrying for up to {policy.budget - waited:.0f} s more",
                file=sys.stderr,
                flush=True,
            )
        time.sleep(delay)

    def not_found_again(self) -> bool:
        """Whether a 404 may be retried (some hosts answer 404 now and then for a file they have)."""
        self.not_found += 1
        return self.not_found <= self.policy.not_found_retries


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (a number of seconds or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None or when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def _describe(err: BaseException) -> str:
    """One line for a network failure (requests' messages nest several exceptions)."""
    text = str(err).splitlines()[0] if str(err) else ""
    for marker, said in (
        ("Connection refused", "connection refused"),
        ("Connection reset", "connection reset"),
        ("RemoteDisconnected", "connection closed without an answer"),
        ("Read timed out", "read timed out"),
        ("IncompleteRead", "connection closed before the announced size arrived"),
    ):
        if marker in text:
            return said
    return f"{type(err).__name__}: {text[:200]}" if text else type(err).__name__


#: Failures below HTTP: the connection, the socket, the body's framing.
_NETWORK_ERRORS = (requests.ConnectionError, requests.Timeout, urllib3.exceptions.HTTPError, OSError)


def _content_length(url: str, response: requests.Response) -> int | None:
    raw = response.headers.get("Content-Length")
    if raw is None:
        return None
    if not raw.strip().isdigit():
        raise HttpError(url, f"the host answered an invalid Content-Length {raw!r}")
    return int(raw)


def _content_range(url: str, response: requests.Response) -> tuple[int, int, int | None]:
    raw = response.headers.get("Content-Range", "")
    match = _CONTENT_RANGE.match(raw.strip())
    if match is None:
        raise HttpError(url, f"the host answered HTTP 206 with an invalid Content-Range {raw!r}")
    first, last = int(match[1]), int(match[2])
    total = None if match[3] == "*" else int(match[3])
    if last < first or (total is not None and last >= total):
        raise HttpError(url, f"the host answered an impossible Content-Range {raw!r}")
    return first, last, total


class HttpClient:
    """HEAD sizes, byte ranges, small texts and whole files, each retried and resumed under one policy."""

    def __init__(self, policy: HttpPolicy | None = None) -> None:
        self.policy = policy if policy is not None else default_policy()

    # -- one attempt ------------------------------------------------------------------------------------------

    def _open(
        self, method: str, url: str, attempts: _Attempts, headers: dict[str, str] | None = None, accept=(200, 206)
    ) -> requests.Response:
        """The response of one attempt when its status is in `accept`; raises _Retry or HttpError otherwise."""
        _count("requests")
        attempts.begin()
        try:
            response = session().request(
                method,
                url,
                headers={"Accept-Encoding": "identity", **(headers or {})},
                stream=True,
                timeout=(self.policy.timeout, self.policy.timeout),
                allow_redirects=True,
            )
        except requests.TooManyRedirects:
            raise HttpError(url, "redirect loop (more than 30 redirects)") from None
        except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema, requests.exceptions.InvalidSchema):
            raise HttpError(url, "not a valid http(s) URL") from None
        except requests.exceptions.InvalidHeader as err:
            raise HttpError(url, f"the host answered an invalid header ({err})") from None
        except _NETWORK_ERRORS as err:
            raise _Retry("connection failed", _describe(err)) from None
        status = response.status_code
        if status in accept:
            return response
        response.close()
        if status in (404, 410):
            if attempts.not_found_again():
                raise _Retry(f"HTTP {status}")
            raise NotFound(url, f"not found (HTTP {status})")
        if status in RETRY_STATUS:
            raise _Retry(f"HTTP {status}", retry_after=_retry_after(response.headers.get("Retry-After")))
        if status in (401, 403):
            raise HttpError(url, f"access denied (HTTP {status} {response.reason})")
        raise HttpError(url, f"HTTP {status} {response.reason}")

    def _body(self, response: requests.Response) -> Iterator[bytes]:
        """The body as it arrives; a connection that breaks, stalls or trickles raises _Retry."""
        policy = self.policy
        window_start, window_bytes = time.monotonic(), 0
        while True:
            try:
                chunk = response.raw.read1(policy.stream_bytes)
            except urllib3.exceptions.ReadTimeoutError:
                raise _Retry("stalled", f"no byte for {policy.timeout:g} s") from None
            except _NETWORK_ERRORS as err:
                raise _Retry("body cut short", f"body cut short: {_describe(err)}") from None
            if not chunk:
                return
            yield chunk
            window_bytes += len(chunk)
            elapsed = time.monotonic() - window_start
            if elapsed >= policy.timeout:
                if window_bytes < policy.min_rate * elapsed:
                    raise _Retry("trickled", f"{window_bytes / elapsed:.0f} bytes/s, under {policy.min_rate:g}")
                window_start, window_bytes = time.monotonic(), 0

    # -- what callers ask for -----------------------------------------------------------------------------------

    def size(self, url: str) -> int:
        """The file's size in bytes (HEAD; a host that refuses HEAD is asked for its first byte)."""
        attempts = _Attempts(url, self.policy)
        while True:
            try:
                with self._open("HEAD", url, attempts, accept=(200, 405, 501)) as response:
                    if response.status_code == 200:
                        length = _content_length(url, response)
                        if length is None:
                            raise HttpError(url, "the host does not say the file's size (no Content-Length)")
                        return length
                with self._open("GET", url, attempts, {"Range": "bytes=0-0"}, accept=(206,)) as response:
                    _, _, total = _content_range(url, response)
                    if total is None:
                        raise HttpError(url, "the host does not say the file's size (Content-Range ends in '*')")
                    return total
            except _Retry as err:
                attempts.failed(err)

    def read(self, url: str, offset: int, length: int) -> bytes:
        """Bytes [offset, offset + length): Range requests, a short body resumed from where it stopped."""
        attempts = _Attempts(url, self.policy)
        buf = bytearray()
        end = offset + length - 1
        while len(buf) < length:
            start = offset + len(buf)
            before = len(buf)
            try:
                with self._open("GET", url, attempts, {"Range": f"bytes={start}-{end}"}) as response:
                    if response.status_code == 200:
                        raise HttpError(
                            url,
                            "the host ignores HTTP Range requests (it answered 200 to a range); the files must be "
                            "served by byte ranges",
                        )
                    first, last, _ = _content_range(url, response)
                    if first != start or last > end:
                        raise HttpError(
                            url,
                            f"asked for bytes {start}-{end}, the host answered bytes {first}-{last} (Content-Range "
                            "does not match the request)",
                        )
                    promised = last - first + 1
                    for chunk in self._body(response):
                        buf += chunk[: before + promised - len(buf)]
                        attempts.progressed()
                        if len(buf) >= before + promised:
                            break
                if len(buf) < before + promised:
                    raise _Retry("body cut short", f"the body ended after {len(buf) - before} of {promised} bytes")
            except _Retry as err:
                if len(buf) > before:
                    _count("resumed by Range")
                attempts.failed(err)
        return bytes(buf)

    def fetch(
        self,
        url: str,
        sink: Sink,
        *,
        limit: int | None = None,
        on_total: Callable[[int | None, int], None] | None = None,
        on_bytes: Callable[[int], None] | None = None,
    ) -> int:
        """The whole file into `sink`, continuing what it already holds (Range); returns the size.

        `on_total(total, have)` is told the size once the host announces it, `on_bytes(n)` every arrival."""
        attempts = _Attempts(url, self.policy)
        while True:
            have = sink.size()
            try:
                headers = {"Range": f"bytes={have}-"} if have else {}
                with self._open("GET", url, attempts, headers, accept=(200, 206, 416)) as response:
                    total = self._start_body(url, response, sink, have, limit)
                    if total is not None and total == sink.size():
                        return total  # already whole (a 416 for a complete part)
                    if on_total is not None:
                        on_total(total, sink.size())
                    for chunk in self._body(response):
                        sink.write(chunk)
                        attempts.progressed()
                        if on_bytes is not None:
                            on_bytes(len(chunk))
                        if limit is not None and sink.size() > limit:
                            raise HttpError(url, f"larger than the {limit:,} bytes expected of this file")
                size = sink.size()
                if total is None or size == total:
                    return size
                if size > total:
                    sink.reset()
                    raise _Retry("body too long", f"got {size:,} bytes, more than the {total:,} announced")
                raise _Retry("body cut short", f"the body ended at {size:,} of the {total:,} bytes announced")
            except _Retry as err:
                if sink.size() > have:
                    _count("resumed by Range")
                attempts.failed(err)

    def _start_body(self, url: str, response: requests.Response, sink: Sink, have: int, limit: int | None):
        """Check the answer to a (ranged) GET against what the sink holds; returns the file's total size if known."""
        if response.status_code == 416:
            match = _UNSATISFIED_RANGE.match(response.headers.get("Content-Range", "").strip())
            if match is not None and int(match[1]) == have:
                return have
            sink.reset()  # what we hold is not a prefix of this file any more
            raise _Retry("range not satisfiable", f"the host cannot serve bytes {have}- (range not satisfiable)")
        if response.status_code == 200:
            if have:
                sink.reset()  # the host ignored the Range: start over
            total = _content_length(url, response)
        else:
            first, _, total = _content_range(url, response)
            if first != have:
                raise HttpError(
                    url, f"asked for bytes {have}-, the host answered from byte {first} (Content-Range does not match)"
                )
            _content_length(url, response)
        if limit is not None and total is not None and total > limit:
            raise HttpError(url, f"{total:,} bytes, larger than the {limit:,} expected of this file")
        return total

    def text(self, url: str, limit: int = 64 << 20) -> str:
        """A small UTF-8 file (a corpus.json), whole."""
        sink = MemorySink()
        self.fetch(url, sink, limit=limit)
        try:
            return sink.getvalue().decode("utf-8")
        except UnicodeDecodeError as err:
            raise HttpError(url, f"not UTF-8 text (byte {err.start}: {err.reason})") from None


# ---- where a fetched body goes ----------------------------------------------------------------------------


class Sink:
    def size(self) -> int: ...
    def write(self, data: bytes) -> None: ...
    def reset(self) -> None: ...


class MemorySink(Sink):
    def __init__(self) -> None:
        self._buf = io.BytesIO()

    def size(self) -> int:
        return self._buf.tell()

    def write(self, data: bytes) -> None:
        self._buf.write(data)

    def reset(self) -> None:
        self._buf = io.BytesIO()

    def getvalue(self) -> bytes:
        return self._buf.getvalue()


class FileSink(Sink):
    """A `.part` file: appended to, kept between attempts and between runs of the command."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._handle = open(self.path, "ab")  # noqa: SIM115 - closed by close()
        self._handle.seek(0, os.SEEK_END)  # append mode reports position 0 until the first write

    def size(self) -> int:
        return self._handle.tell()

    def write(self, data: bytes) -> None:
        self._handle.write(data)

    def reset(self) -> None:
        self._handle.seek(0)
        self._handle.truncate()

    def close(self) -> None:
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()

    def __enter__(self) -> FileSink:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
