"""A loopback HTTP file server for download tests: Range requests, and misbehaviour on demand.

    with FileServer(root) as server:
        server.drop_after["model.pt"] = [1000, 5000]   # first two GETs of model.pt die after N bytes
        server.truncate["optim.pt"] = 10               # announce the full size, send 10 bytes fewer
        server.missing.add("train.pt")                 # 404
        server.flaky_missing["part-1.npy"] = 2         # the first two requests (HEAD or GET) answer 404
        server.script["model.pt"] = ["503", "half"]    # the next GETs of model.pt answer with these faults
        server.chaos = Chaos(every=3)                  # every third GET of any file answers with the next fault
        server.down = True                             # every request: the connection is closed unanswered
        url = server.url("ckpt/")

Faults (`FAULTS`): `503`; `429` (with `Retry-After: server.retry_after`); `half` (the full length announced, half
the body sent, the connection closed); `drop` (closed before any answer); `reset` (closed with a TCP reset);
`stall` (headers and half the body, then silence for `server.stall_seconds`); `trickle` (the body a few bytes
at a time, `server.trickle_seconds` apart); `bad-length` (`Content-Length: abc`); `bad-range` (a 206 whose
Content-Range starts one byte later than asked); `redirect-loop` (302 to itself). Every fault served is logged in
`injected` as (path, Range header, fault).

GET requests are logged in `requests` as (path, Range header), HEAD requests in `heads` (paths). A Range
`bytes=a-b` is answered with exactly those bytes, `bytes=a-` with the rest of the file. Directory URLs
answer 404, as the public OLMo hosts do.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

FAULTS = ("503", "429", "half", "drop", "reset", "stall", "trickle", "bad-length", "bad-range", "redirect-loop")


@dataclass
class Chaos:
    """Every `every`-th GET (of a file matching `only`, when given) answers with the next of `faults`, in turn,
    until `limit` faults have been served."""

    faults: tuple[str, ...] = ("503", "429", "half", "drop", "reset", "stall", "trickle")
    every: int = 2
    only: str | None = None
    limit: int | None = None
    _seen: int = 0
    _served: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def next(self, path: str) -> str | None:
        if self.only is not None and self.only not in path:
            return None
        with self._lock:
            self._seen += 1
            if self._seen % self.every or (self.limit is not None and self._served >= self.limit):
                return None
            fault = self.faults[self._served % len(self.faults)]
            self._served += 1
            return fault


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        """A client that hangs up mid-answer is what the faults are for: no traceback on stderr."""


class FileServer:
    def __init__(self, root: Path, port: int = 0) -> None:
        self.root = Path(root)
        self.drop_after: dict[str, list[int]] = {}
        self.truncate: dict[str, int] = {}
        self.missing: set[str] = set()
        self.flaky_missing: dict[str, int] = {}
        self.script: dict[str, list[str]] = {}
        self.chaos: Chaos | None = None
        self.down = False
        self.down_when = None
        """A function (path, Range header) -> bool: the host goes away for good once it says True."""
        self.retry_after = "1"
        self.stall_seconds = 3.0
        self.trickle_seconds = 0.2
        self.ignore_range = False
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.heads: list[str] = []
        self.injected: list[tuple[str, str | None, str]] = []
        self.unanswered = 0
        """Requests that arrived while the host was down."""
        self.peers: set[int] = set()
        """Client ports of the connections GET requests arrived on (one per connection)."""
        lock = threading.Lock()
        server = self

        def lookup(rel: str) -> Path | None:
            """The file behind a request path, or None for a 404."""
            name = rel.rsplit("/", 1)[-1]
            with lock:
                if server.flaky_missing.get(name, 0) > 0:
                    server.flaky_missing[name] -= 1
                    return None
            path = server.root / rel
            if name in server.missing or not path.is_file() or ".." in rel.split("/"):
                return None
            return path

        def fault_for(rel: str, rng: str | None) -> str | None:
            name = rel.rsplit("/", 1)[-1]
            with lock:
                queued = server.script.get(name)
                if queued:
                    return queued.pop(0)
            return server.chaos.next(rel) if server.chaos is not None else None

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # keep test output quiet
                pass

            def _is_down(self, rel: str) -> bool:
                with lock:
                    if (
                        not server.down
                        and server.down_when is not None
                        and server.down_when(rel, self.headers.get("Range"))
                    ):
                        server.down = True
                    if server.down:
                        server.unanswered += 1
                if server.down:
                    self.close_connection = True
                return server.down

            def _not_found(self) -> None:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
                rel = unquote(urlparse(self.path).path).lstrip("/")
                if self._is_down(rel):
                    return
                server.heads.append(rel)
                path = lookup(rel)
                if path is None:
                    self._not_found()
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(path.stat().st_size))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()

            def _status(self, code: int, **headers: str) -> None:
                self.send_response(code)
                for key, value in {"Content-Length": "0", **headers}.items():
                    self.send_header(key, value)
                self.end_headers()

            def _reset(self) -> None:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                rel = unquote(urlparse(self.path).path).lstrip("/")
                if self._is_down(rel):
                    return
                rng_header = self.headers.get("Range")
                server.requests.append((rel, rng_header))
                server.peers.add(self.client_address[1])
                name = rel.rsplit("/", 1)[-1]
                path = lookup(rel)
                if path is None:
                    self._not_found()
                    return
                fault = fault_for(rel, rng_header)
                if fault is not None:
                    server.injected.append((rel, rng_header, fault))
                if fault == "503":
                    return self._status(503)
                if fault == "429":
                    return self._status(429, **{"Retry-After": server.retry_after})
                if fault == "redirect-loop":
                    return self._status(302, Location=self.path)
                if fault == "drop":
                    self.close_connection = True
                    return
                if fault == "reset":
                    return self._reset()
                data = path.read_bytes()
                start, end = 0, len(data) - 1
                rng = rng_header
                if rng and not server.ignore_range and rng.startswith("bytes="):
                    first, _, last = rng[6:].partition("-")
                    start = int(first)
                    end = min(int(last), len(data) - 1) if last else len(data) - 1
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    shift = 1 if fault == "bad-range" else 0
                    self.send_header("Content-Range", f"bytes {start + shift}-{end}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start : end + 1]
                length = "abc" if fault == "bad-length" else str(len(body))
                self.send_header("Content-Length", length)
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                if fault in ("half", "stall"):
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    if fault == "stall":
                        time.sleep(server.stall_seconds)
                    self.close_connection = True
                    return
                if fault == "trickle":
                    for i in range(0, len(body), 4):
                        self.wfile.write(body[i : i + 4])
                        self.wfile.flush()
                        time.sleep(server.trickle_seconds)
                    return
                drops = server.drop_after.get(name)
                if drops:
                    # Send part of the body, then cut the connection: the client sees a short read.
                    self.wfile.write(body[: drops.pop(0)])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                cut = server.truncate.get(name, 0)
                self.wfile.write(body[: len(body) - cut] if cut else body)
                if cut:
                    self.close_connection = True

        self._handler = Handler
        self._port = port
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._bind()

    def _bind(self) -> None:
        self._httpd = _QuietServer(("127.0.0.1", self._port), self._handler)
        self._httpd.daemon_threads = True
        self._port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def url(self, rel: str = "") -> str:
        return f"http://127.0.0.1:{self._port}/{rel}"

    def faults_served(self) -> dict[str, int]:
        """How many times each fault was served."""
        counts: dict[str, int] = {}
        for _, _, fault in self.injected:
            counts[fault] = counts.get(fault, 0) + 1
        return counts

    def __enter__(self) -> FileServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
