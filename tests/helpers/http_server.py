"""A loopback HTTP file server for download tests: Range requests, and misbehaviour on demand.

    with FileServer(root) as server:
        server.drop_after["model.pt"] = [1000, 5000]   # first two GETs of model.pt die after N bytes
        server.truncate["optim.pt"] = 10               # announce the full size, send 10 bytes fewer
        server.missing.add("train.pt")                 # 404
        server.flaky_missing["part-1.npy"] = 2         # the first two requests (HEAD or GET) answer 404
        url = server.url("ckpt/")

GET requests are logged in `requests` as (path, Range header), HEAD requests in `heads` (paths). A Range
`bytes=a-b` is answered with exactly those bytes, `bytes=a-` with the rest of the file. Directory URLs
answer 404, as the public OLMo hosts do.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse


class FileServer:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.drop_after: dict[str, list[int]] = {}
        self.truncate: dict[str, int] = {}
        self.missing: set[str] = set()
        self.flaky_missing: dict[str, int] = {}
        self.ignore_range = False
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.heads: list[str] = []
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

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # keep test output quiet
                pass

            def _not_found(self) -> None:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
                rel = unquote(urlparse(self.path).path).lstrip("/")
                server.heads.append(rel)
                path = lookup(rel)
                if path is None:
                    self._not_found()
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(path.stat().st_size))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                rel = unquote(urlparse(self.path).path).lstrip("/")
                server.requests.append((rel, self.headers.get("Range")))
                name = rel.rsplit("/", 1)[-1]
                path = lookup(rel)
                if path is None:
                    self._not_found()
                    return
                data = path.read_bytes()
                start, end = 0, len(data) - 1
                rng = self.headers.get("Range")
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
                    self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start : end + 1]
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
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

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def url(self, rel: str = "") -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/{rel}"

    def __enter__(self) -> FileServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
