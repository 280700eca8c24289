"""Atomic file output: write to a temporary file in the target directory, then rename into place."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, IO

from injection.errors import UserError


def prepare_dir(path: str | Path) -> Path:
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{path}: output path exists and is not a directory")
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_atomic(path: Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Call `write` on a temporary file beside `path`; rename it to `path` only if `write` succeeds."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the permissions open() would
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: Path, text: str) -> Path:
    return write_atomic(path, lambda handle: handle.write(text.encode("utf-8")))


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current
