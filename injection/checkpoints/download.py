"""Downloading files over HTTP(S): resumable `.part` files (Range requests), retries with exponential backoff,
files in parallel, sizes checked against what the server announced; nothing appears under its final name
before it is whole.
"""

from __future__ import annotations

import os
import posixpath
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import requests
from rich.progress import BarColumn, DownloadColumn, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from harness.errors import UserError
from harness.progress import progress as make_progress


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try: `retries` further attempts per file, sleeping `backoff * 2**attempt` seconds."""

    retries: int = 5
    backoff: float = 1.0
    timeout: float = 60.0
    chunk_size: int = 1 << 20
    """Bytes per read; a dropped connection loses at most the chunk being read."""


class _Retryable(Exception):
    """A transfer that may succeed if tried again (dropped connection, short body, 5xx)."""


def safe_name(name: str) -> str:
    """A remote file name that stays inside the destination: no absolute paths, no `..`, no backslashes."""
    if not name or name.startswith(("/", "\\")) or "\\" in name or "\x00" in name:
        raise UserError(f"refusing remote file name {name!r}: it must be a relative path inside the checkpoint")
    norm = posixpath.normpath(name)
    if norm.startswith("..") or posixpath.isabs(norm) or any(p == ".." for p in name.split("/")):
        raise UserError(f"refusing remote file name {name!r}: it escapes the destination directory")
    return norm


def _total_from(resp: requests.Response, have: int) -> int | None:
    content_range = resp.headers.get("Content-Range", "")
    if "/" in content_range and not content_range.endswith("/*"):
        return int(content_range.rsplit("/", 1)[1])
    length = resp.headers.get("Content-Length")
    if length is None:
        return None
    return int(length) + (have if resp.status_code == 206 else 0)


def download_file(
    url: str, dest: Path, *, session: requests.Session, policy: RetryPolicy, progress=None, optional: bool = False
) -> bool:
    """Download `url` to `dest`, continuing `dest.part` where an earlier attempt stopped.

    Returns False when the file does not exist (404) and `optional`; raises UserError when a required
    file is missing, the size never matches the server's, or retries run out.
    """
    part = dest.with_name(dest.name + ".part")
    task = progress.add_task(dest.name, total=None) if progress else None
    last_error = ""
    for attempt in range(policy.retries + 1):
        if attempt:
            time.sleep(policy.backoff * 2 ** (attempt - 1))
        have = part.stat().st_size if part.exists() else 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        try:
            with session.get(url, headers=headers, stream=True, timeout=policy.timeout) as resp:
                if resp.status_code == 404:
                    if optional:
                        if progress:
                            progress.update(task, description=f"{dest.name} (absent)", total=0, completed=0)
                        return False
                    raise UserError(f"{url}: not found (404); {dest.name} is required")
                if resp.status_code == 416 and have:
                    # The .part may already hold everything; a fresh request tells the true size.
                    part.unlink()
                    raise _Retryable("range not satisfiable; restarting the file")
                if resp.status_code >= 500:
                    raise _Retryable(f"HTTP {resp.status_code}")
                if resp.status_code not in (200, 206):
                    raise UserError(f"{url}: HTTP {resp.status_code} {resp.reason}")
                if resp.status_code == 200 and have:
                    have = 0  # the server ignored the Range header: start over
                total = _total_from(resp, have)
                if progress:
                    progress.update(task, total=total, completed=have)
                with part.open("ab" if have else "wb") as f:
                    for chunk in resp.iter_content(policy.chunk_size):
                        f.write(chunk)
                        if progress:
                            progress.advance(task, len(chunk))
            size = part.stat().st_size
            if total is not None and size != total:
                if size > total:
                    part.unlink()
                raise _Retryable(f"got {size} bytes, the server announced {total}")
            os.replace(part, dest)
            return True
        except (
            requests.ConnectionError,
            requests.Timeout,
            requests.exceptions.ChunkedEncodingError,
            _Retryable,
        ) as err:
            last_error = str(err).splitlines()[0] if str(err) else type(err).__name__
            if isinstance(err, requests.exceptions.ChunkedEncodingError):
                last_error = f"connection closed before the announced size arrived: {last_error}"
    raise UserError(
        f"{url}: download failed after {policy.retries + 1} attempts ({last_error}); "
        f"the partial file {part} is kept and a new pull continues from it"
    )


def download_directory(
    base_url: str,
    files: list[str],
    dest: Path,
    *,
    policy: RetryPolicy,
    workers: int = 4,
    required: tuple[str, ...] = (),
) -> list[str]:
    """Fetch `files` of a remote checkpoint directory into `dest` in parallel; returns those present."""
    names = [safe_name(f) for f in files]
    dest.mkdir(parents=True, exist_ok=True)
    base = base_url if base_url.endswith("/") else base_url + "/"

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    session = requests.Session()
    with make_progress(*columns, bytes_unit=True) as progress, ThreadPoolExecutor(max_workers=workers) as pool:

        def fetch(name: str) -> bool:
            target = dest / name
            if target.is_file():
                return True  # finished by an earlier, interrupted pull
            target.parent.mkdir(parents=True, exist_ok=True)
            return download_file(
                base + quote(name),
                target,
                session=session,
                policy=policy,
                progress=progress,
                optional=name not in required,
            )

        results = dict(zip(names, pool.map(fetch, names)))
    return [n for n, ok in results.items() if ok]
