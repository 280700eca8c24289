"""A loopback HTTP file server for download tests: Range requests, and misbehaviour on demand.

    with FileServer(root) as server:
        server.drop_after["model.pt"] = [1000, 5000]   # first two GETs of model.pt die after N bytes
        server.truncate["optim.pt"] = 10               # announce the full size, send 10 bytes fewer
        server.missing.add("train.pt")                 # 404
        url = server.url("ckpt/")
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
        self.ignore_range = False
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # keep test output quiet
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                rel = unquote(urlparse(self.path).path).lstrip("/")
                server.requests.append((rel, self.headers.get("Range")))
                name = rel.rsplit("/", 1)[-1]
                path = server.root / rel
                if name in server.missing or not path.is_file() or ".." in rel.split("/"):
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = path.read_bytes()
                start = 0
                rng = self.headers.get("Range")
                if rng and not server.ignore_range and rng.startswith("bytes="):
                    start = int(rng[6:].split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
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

    def __enter__(self) -> "FileServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
