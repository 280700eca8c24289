"""Expensive things built once per test run and shared by every xdist worker.

With `pytest -n 2` each worker is its own process with its own session fixtures, so a world built in a
session fixture would be built once per worker. Instead it is built in a directory of the whole test run
(beside the workers' own temporary directories) by whichever worker asks first, under a file lock; the others
wait for it and reuse it. A build that failed leaves no `.complete` marker, so the next worker to ask builds it
again (and fails the same way, where it is a real failure).
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

MARKER = ".complete"


def run_directory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory every worker of this test run sees (the run's own base temp without xdist)."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    path = root / "shared"
    path.mkdir(exist_ok=True)
    return path


def build_once(directory: Path, build: Callable[[Path], object]) -> Path:
    """`directory`, made by `build(directory)` unless a worker already made it; the first caller builds while
    the others wait on the lock."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    with open(directory.with_name(directory.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not (directory / MARKER).exists():
            shutil.rmtree(directory, ignore_errors=True)
            directory.mkdir()
            build(directory)
            (directory / MARKER).touch()
    return directory
