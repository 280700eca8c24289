"""One writer per directory: an advisory lock that names its holder and dies with it.

    hold_directory(run_dir, "injection run")     # UserError naming the other process when it is in use
    ...
    release_directory(run_dir)

The lock is `fcntl.flock` on `DIR/.writer.lock`: the kernel drops it when the holding process ends however it
ends (a kill -9, a lost node), so a lock left behind never blocks anyone. The file itself keeps the holder's pid,
host, command and start time, for the message a second writer gets. Within one process the lock is taken once
and shared (a command that checks early and writes later holds it throughout).
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import json
import os
import socket
import threading
from pathlib import Path

from harness.errors import UserError, command_line

LOCK_FILE = ".writer.lock"

_held: dict[Path, int] = {}
_lock = threading.Lock()


def _holder(path: Path) -> str:
    """Who holds the lock, as the file says."""
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        since = f", since {info['since']}" if info.get("since") else ""
        return f"process {info['pid']} on {info['host']} (`{info['command']}`{since})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def hold_directory(directory: str | Path, what: str) -> None:
    """Take `directory`'s writer lock for this process (creating the directory), or raise UserError naming the
    process that has it."""
    directory = Path(directory).resolve()
    with _lock:
        if directory in _held:
            return
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UserError(
                f"{directory} is in use by {_holder(path)}: a directory has one writer at a time; wait for that "
                f"process to finish, or stop it, then run {what} again"
            ) from None
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": command_line(),
            "since": _dt.datetime.now().isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        _held[directory] = fd


def check_directory_free(directory: str | Path, what: str) -> None:
    """Raise the UserError `hold_directory` would, without keeping the lock (a launcher checking before it starts
    the processes that will take it)."""
    directory = Path(directory).resolve()
    if directory in _held or not (directory / LOCK_FILE).is_file():
        return
    fd = os.open(directory / LOCK_FILE, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise UserError(
            f"{directory} is in use by {_holder(directory / LOCK_FILE)}: a directory has one writer at a time; "
            f"wait for that process to finish, or stop it, then run {what} again"
        ) from None
    finally:
        os.close(fd)


def release_directory(directory: str | Path) -> None:
    """Give the lock back (the file stays: an unlocked lock file means nothing)."""
    directory = Path(directory).resolve()
    with _lock:
        fd = _held.pop(directory, None)
    if fd is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
