"""Knowledge-injection harness: continue OLMo pretraining with fictional knowledge spliced in."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

try:
    __version__ = version("knowledge-injection")
except PackageNotFoundError:  # run from a checkout without installing
    __version__ = "0.0.0+checkout"

#: Data shipped inside the package: the checkpoint catalog and the DeepSpeed configs. In a checkout these are
#: links to checkpoints.yaml and ds_configs/ at the repository root; a wheel carries copies.
SHIPPED_DIR = Path(__file__).resolve().parent / "shipped"


def shipped_path(*parts: str) -> Path:
    """A file shipped with the harness: `shipped_path("checkpoints.yaml")`,
    `shipped_path("ds_configs", "zero3.json")`."""
    return SHIPPED_DIR.joinpath(*parts)
