"""Downloading checkpoint files over HTTP(S) through the harness's client (harness.http): resumable `.part` files
(Range requests), retries within a budget, files in parallel, sizes checked against what the host announced;
nothing appears under its final name before it is whole.
"""

from __future__ import annotations

import os
import posixpath
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

from rich.progress import BarColumn, DownloadColumn, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from harness.errors import UserError
from harness.http import FileSink, HostUnavailable, HttpClient, HttpPolicy, NotFound
from harness.progress import progress as make_progress


def safe_name(name: str) -> str:
    """A remote file name that stays inside the destination: no absolute paths, no `..`, no backslashes."""
    if not name or name.startswith(("/", "\\")) or "\\" in name or "\x00" in name:
        raise UserError(f"refusing remote file name {name!r}: it must be a relative path inside the checkpoint")
    norm = posixpath.normpath(name)
    if norm.startswith("..") or posixpath.isabs(norm) or any(p == ".." for p in name.split("/")):
        raise UserError(f"refusing remote file name {name!r}: it escapes the destination directory")
    return norm


def download_file(
    url: str, dest: Path, *, policy: HttpPolicy | None = None, progress=None, optional: bool = False
) -> bool:
    """Download `url` to `dest`, continuing `dest.part` where an earlier attempt (or pull) stopped.

    Returns False when the file does not exist (404) and `optional`; raises UserError when a required file is
    missing or the host keeps failing past the retry budget (the `.part` is kept for the next pull).
    """
    part = dest.with_name(dest.name + ".part")
    task = progress.add_task(dest.name, total=None) if progress else None

    def on_total(total: int | None, have: int) -> None:
        if progress:
            progress.update(task, total=total, completed=have)

    def on_bytes(n: int) -> None:
        if progress:
            progress.advance(task, n)

    try:
        with FileSink(part) as sink:
            HttpClient(policy).fetch(url, sink, on_total=on_total, on_bytes=on_bytes)
    except NotFound:
        part.unlink(missing_ok=True)
        if optional:
            if progress:
                progress.update(task, description=f"{dest.name} (absent)", total=0, completed=0)
            return False
        raise UserError(f"{url}: not found (404); {dest.name} is required") from None
    except HostUnavailable as err:
        kept = part.stat().st_size if part.exists() else 0
        raise UserError(
            f"{err}; the partial file {part} ({kept:,} bytes) is kept and a new pull continues from it"
        ) from None
    os.replace(part, dest)
    return True


def download_directory(
    base_url: str,
    files: list[str],
    dest: Path,
    *,
    policy: HttpPolicy | None = None,
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
    with make_progress(*columns, bytes_unit=True) as progress, ThreadPoolExecutor(max_workers=workers) as pool:

        def fetch(name: str) -> bool:
            target = dest / name
            if target.is_file():
                return True  # finished by an earlier, interrupted pull
            target.parent.mkdir(parents=True, exist_ok=True)
            return download_file(
                base + quote(name),
                target,
                policy=policy,
                progress=progress,
                optional=name not in required,
            )

        results = dict(zip(names, pool.map(fetch, names)))
    return [n for n, ok in results.items() if ok]
