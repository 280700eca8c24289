"""Byte-range reads of local files and HTTP(S) URLs: one instance read = one range request."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

from harness.errors import UserError
from harness.http import HttpClient


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
    """Range requests through the harness's HTTP client (one connection pool per host, shared by the prefetch
    threads): busy hosts, dropped connections and short bodies are retried and resumed there."""

    def __init__(self, url: str, size: int | None = None):
        self.url = url
        self.size = size if size is not None else HttpClient().size(url)

    def read(self, offset: int, length: int) -> bytes:
        return HttpClient().read(self.url, offset, length)


def open_reader(location: str | Path, size: int | None = None) -> ByteReader:
    return HttpReader(str(location), size) if is_url(location) else LocalReader(location)


def read_text(location: str | Path) -> str:
    """A whole small file (corpus.json) from a path or URL."""
    if is_url(location):
        return HttpClient().text(str(location))
    try:
        return Path(location).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{location}: file not found") from None
    except UnicodeDecodeError as err:
        raise UserError(f"{location}: not UTF-8 text (byte {err.start}: {err.reason})") from None
