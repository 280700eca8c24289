"""tests/helpers/shared.py: what two xdist workers ask for at the same time is built once, and a build that
failed is built again by the next one to ask."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import pytest

from tests.helpers.shared import MARKER, build_once


def _build(directory: Path) -> None:
    with open(directory.parent / "builds.log", "a") as log:
        log.write("built\n")
    time.sleep(0.5)  # the other process asks while this one builds
    (directory / "world.txt").write_text("ready")


def _ask(directory: str) -> None:
    assert (build_once(Path(directory), _build) / "world.txt").read_text() == "ready"


def test_two_processes_asking_at_once_build_once(tmp_path):
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_ask, args=(str(tmp_path / "world"),)) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    assert [w.exitcode for w in workers] == [0, 0]
    assert (tmp_path / "builds.log").read_text() == "built\n"
    assert (tmp_path / "world" / MARKER).exists()


def test_a_failed_build_is_built_again(tmp_path):
    def fail(directory: Path) -> None:
        (directory / "half").write_text("x")
        raise RuntimeError("the build broke")

    with pytest.raises(RuntimeError):
        build_once(tmp_path / "world", fail)
    assert not (tmp_path / "world" / MARKER).exists()
    build_once(tmp_path / "world", _build)
    assert sorted(p.name for p in (tmp_path / "world").iterdir()) == [MARKER, "world.txt"]
