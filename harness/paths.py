"""Where things live on disk: the cache directory shared by pulls, built corpora and the demo."""

from __future__ import annotations

import os
from pathlib import Path

from harness.errors import UserError


def cache_dir() -> Path:
    """`INJECTION_CACHE`, default ~/.cache/injection: pulled checkpoints, built corpora, the demo's models."""
    override = os.environ.get("INJECTION_CACHE")
    return Path(override).expanduser() if override else Path.home() / ".cache" / "injection"


def check_output_dir(out: Path, *, marker: str, what: str, overwrite: bool, inputs: tuple[Path, ...] = ()) -> None:
    """Refuse an output directory that would destroy something the tool did not make.

    `out` may be replaced only when `overwrite` is given and it holds `marker` (the file this tool writes last
    into every `what` it makes); never when it is, contains or lies inside one of the `inputs`."""
    out = Path(out)
    target = out.resolve()
    for source in inputs:
        src = Path(source).resolve()
        if src == target or target in src.parents or src in target.parents:
            raise UserError(f"--out {out} would overwrite the input {source}; choose another output directory")
    if not out.exists() and not out.is_symlink():
        return
    if not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a directory")
    if not overwrite:
        raise UserError(f"--out {out} already exists (pass --overwrite to replace a {what} made by this tool)")
    if not (out / marker).is_file():
        raise UserError(
            f"--out {out} exists and is not a {what} made by this tool (no {marker}); refusing to "
            "replace it: choose another output directory or remove it yourself"
        )


def check_resumable_dir(out: Path, *, marker: str, what: str, option: str = "--out") -> None:
    """Refuse an output directory that a command continuing its own earlier work would write into, when it holds
    something else: `out` may be absent, empty, or a `what` this tool made (it holds `marker`)."""

    out = Path(out)
    if not out.exists() and not out.is_symlink():
        return
    if not out.is_dir():
        raise UserError(f"{option} {out}: exists and is not a directory")
    if (out / marker).is_file() or not any(out.iterdir()):
        return
    raise UserError(
        f"{option} {out} holds files and is not a {what} made by this tool (no {marker}); refusing to write into "
        "it: choose another (new or empty) directory"
    )
