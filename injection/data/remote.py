"""Byte-range reads of local files and HTTP(S) URLs: one instance read = one range request."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Protocol

import requests

from harness.errors import UserError

_RETRIES = 4


def is_url(location: str | Path) -> bool:
    return str(location).startswith(("http://", "https://"))


def join_location(base: str | Path, name: str) -> str:
    """`name` relative to a directory that is a local path or a URL (absolute names pass through)."""
    if is_url(name) or os.path.isabs(name):
        return name
    if is_url(base):
        return str(base).rstrip("/") + "/" + name
    return str(Path(base) / name)


class ByteReader(Protocol):
    size: int

    def read(self, offset: int, length: int) -> bytes: ...


class LocalReader:
    def __init__(self, path: str | Path):
        self.path = str(path)
        try:
            self.size = os.stat(self.path).st_size
        except FileNotFoundError:
            raise UserError(f"{self.path}: file not found") from None
        self._fd = os.open(self.path, os.O_RDONLY)

    def read(self, offset: int, length: int) -> bytes:
        data = os.pread(self._fd, length, offset)
        if len(data) != length:
            raise UserError(f"{self.path}: expected {length} bytes at offset {offset}, the file has {len(data)}")
        return data

    def __del__(self) -> None:
        fd = getattr(self, "_fd", None)
        if fd is not None:
            os.close(fd)


class HttpReader:
    """Range requests with one pooled `requests.Session` per thread (readers are shared by prefetch threads)."""

    def __init__(self, url: str, size: int | None = None):
        self.url = url
        self._local = threading.local()
        self.size = size if size is not None else self._fetch_size()

    def _session(self):
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    def _request(self, method: str, headers: dict[str, str]):
        for attempt in range(_RETRIES):
            try:
                response = self._session().request(method, self.url, headers=headers, timeout=60, allow_redirects=True)
            except requests.RequestException as err:
                if attempt == _RETRIES - 1:
                    raise UserError(f"{self.url}: {err}") from None
            else:
                if response.status_code == 404:
                    raise UserError(f"{self.url}: not found (HTTP 404)")
                if response.status_code < 500:
                    return response
                if attempt == _RETRIES - 1:
                    raise UserError(f"{self.url}: HTTP {response.status_code}")
            time.sleep(0.5 * 2**attempt)
        raise AssertionError("unreachable")

    def _fetch_size(self) -> int:
        response = self._request("HEAD", {})
        if response.status_code >= 400 or "content-length" not in response.headers:
            raise UserError(f"{self.url}: cannot get the file size (HTTP {response.status_code})")
        return int(response.headers["content-length"])

    def read(self, offset: int, length: int) -> bytes:
        response = self._request("GET", {"Range": f"bytes={offset}-{offset + length - 1}"})
        # A server that ignores Range answers 200 with the whole file: taking a slice of that would hide a
        # server that cannot serve OLMo's multi-gigabyte files efficiently, so it is an error.
        if response.status_code != 206 or len(response.content) != length:
            raise UserError(
                f"{self.url}: range request for {length} bytes at {offset} answered HTTP {response.status_code} "
                f"with {len(response.content)} bytes (the server must support HTTP Range requests)"
            )
        return response.content


def open_reader(location: str | Path, size: int | None = None) -> ByteReader:
    return HttpReader(str(location), size) if is_url(location) else LocalReader(location)


def read_text(location: str | Path) -> str:
    """A whole small file (corpus.json) from a path or URL."""
    if is_url(location):
        try:
            response = requests.get(str(location), timeout=60)
        except requests.RequestException as err:
            raise UserError(f"{location}: {err}") from None
        if response.status_code != 200:
            raise UserError(f"{location}: HTTP {response.status_code}")
        return response.text
    try:
        return Path(location).read_text()
    except FileNotFoundError:
        raise UserError(f"{location}: file not found") from None
