"""Where things live on disk: the cache directory shared by pulls, built corpora and the demo."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """`INJECTION_CACHE`, default ~/.cache/injection: pulled checkpoints, built corpora, the demo's models."""
    override = os.environ.get("INJECTION_CACHE")
    return Path(override).expanduser() if override else Path.home() / ".cache" / "injection"
