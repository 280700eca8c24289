"""Writing outputs so that nothing half-written is ever left under the final name.

Files go to a unique temporary name in the same directory and are renamed into place; directories are built
as a hidden sibling (`.NAME.tmp-HOST-PID-xxxx`) and swapped in. Temporary files and directories get the
permissions a plain `open()` / `mkdir()` would give under the user's umask (tempfile makes them private),
so shared caches stay readable by a group.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from harness.errors import UserError


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def make_parents(path: Path) -> None:
    """Create `path`'s parent directories; UserError naming the component that is a file, not a directory."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        for p in [path.parent, *path.parent.parents]:
            if p.is_symlink() and not p.exists():
                raise UserError(f"{path}: {p} is a symbolic link that leads nowhere (a symlink loop?)") from None
        blocker = next((p for p in [path.parent, *path.parent.parents] if p.exists() and not p.is_dir()), path.parent)
        raise UserError(f"{path}: {blocker} is a file, not a directory") from None


def write_atomic(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Call `write` on a temporary file beside `path`, then rename it to `path` (only if `write` succeeded)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a directory, expected a file name")
    make_parents(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    return write_atomic(path, lambda handle: handle.write(data))


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, data: Any) -> Path:
    """JSON (indented; paths and other objects as strings), written atomically."""
    return write_bytes_atomic(path, (json.dumps(data, indent=2, default=str) + "\n").encode())


# ---- directories -------------------------------------------------------------------------------------------


def _host() -> str:
    return socket.gethostname().replace("-", "_")


def staging_dir(dest: Path) -> Path:
    """A hidden temporary directory beside `dest` (same file system, so the final rename is atomic).

    Its name carries the host and process id (`.NAME.tmp-HOST-PID-xxxx`), so that staging directories left by
    a process that was killed on this host are recognised and removed here; those of live processes and of
    other hosts (a shared file system) are left alone."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    host = _host()
    remove_stale_staging(dest, host)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-{host}-{os.getpid()}-", dir=dest.parent))
    tmp.chmod(0o777 & ~current_umask())
    return tmp


def remove_stale_staging(dest: Path, host: str | None = None) -> list[Path]:
    """Remove `dest`'s staging directories whose process (on this host) no longer exists; returns them."""
    host = host or _host()
    prefix = f".{dest.name}.tmp-{host}-"
    removed = []
    for candidate in dest.parent.glob(f"{prefix}*"):
        pid = candidate.name[len(prefix) :].split("-", 1)[0]
        if not pid.isdigit() or process_alive(int(pid)):
            continue
        shutil.rmtree(candidate, ignore_errors=True)
        removed.append(candidate)
    return removed


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    return True


def replace_dir(tmp: Path, dest: Path) -> None:
    """Move a finished temporary directory to `dest`; an existing `dest` is swapped out first, then removed.

    Callers decide whether `dest` may be replaced at all (see `harness.paths.check_owned_output`)."""
    old = None
    if dest.exists() or dest.is_symlink():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        os.replace(dest, old)
    os.replace(tmp, dest)
    if old is not None:
        if old.is_symlink():
            old.unlink()
        else:
            shutil.rmtree(old, ignore_errors=True)


def ensure_dir(path: str | Path) -> Path:
    """`path` as an existing directory (created if needed); UserError when it exists and is not one."""
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise UserError(f"{path}: a symbolic link that leads nowhere (a symlink loop, or its target is missing)")
    if path.exists() and not path.is_dir():
        raise UserError(f"{path}: output path exists and is not a directory")
    path.mkdir(parents=True, exist_ok=True)
    return path
