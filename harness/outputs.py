"""Output files that never replace what the user made.

Commands that write named files into a directory the user chose (`analysis plot|compare|capacity|report --out`,
`injection demo --out`) keep a ledger in that directory, `.written-by-harness.json`: the name and SHA-256 of
every file they wrote there. Before anything is written, every name about to be written is checked: a file
that exists and is not in the ledger, or whose bytes changed since it was written, belongs to the user, and the
command refuses (one line, exit 2) with nothing written. A file the ledger knows is replaced, as a rerun should.

    out = OwnedDir(path)
    out.claim(["report.html"])            # refuses before any work is written
    out.write("report.html", data)        # atomic, then recorded
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO

from harness.atomic import ensure_dir, write_atomic, write_bytes_atomic
from harness.errors import UserError

LEDGER = ".written-by-harness.json"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class OwnedDir:
    """A directory the tool writes named files into, replacing only files it wrote itself and nobody changed."""

    def __init__(self, path: str | Path, option: str = "--out") -> None:
        self.path = Path(path)
        self.option = option
        """How the user named the directory, for error messages."""

    def _ledger(self) -> dict[str, str]:
        try:
            data = json.loads((self.path / LEDGER).read_text())
        except (FileNotFoundError, NotADirectoryError):
            return {}
        except (OSError, ValueError):
            return {}  # unreadable: nothing is known to be ours, so nothing existing is replaced
        files = data.get("files") if isinstance(data, dict) else None
        return {k: v for k, v in files.items() if isinstance(v, str)} if isinstance(files, dict) else {}

    def owns(self, name: str) -> bool:
        """True when `name` does not exist or is exactly the file this tool last wrote under that name."""
        target = self.path / name
        if not target.exists() and not target.is_symlink():
            return True
        if target.is_symlink() or not target.is_file():
            return False
        return self._ledger().get(name) == file_sha256(target)

    def claim(self, names: Iterable[str]) -> None:
        """Refuse (UserError) when any of `names` would replace a file the user made or changed."""
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"{self.option} {self.path}: exists and is not a directory")
        for name in names:
            if not self.owns(name):
                raise UserError(
                    f"{self.option} {self.path}: {name} exists and was not written by this tool (or was changed "
                    "since); refusing to replace it: choose another directory or move the file away"
                )

    def write_with(self, name: str, write: Callable[[IO[bytes]], None]) -> Path:
        """Write `name` atomically through `write(handle)` and record it in the ledger."""
        self.claim([name])
        ensure_dir(self.path)
        path = write_atomic(self.path / name, write)
        self._record({name: file_sha256(path)})
        return path

    def write(self, name: str, data: bytes | str) -> Path:
        payload = data.encode("utf-8") if isinstance(data, str) else data
        return self.write_with(name, lambda handle: handle.write(payload))

    def _record(self, entries: dict[str, str]) -> None:
        files = {**self._ledger(), **entries}
        document = {"about": "files written here by knowledge-injection; others are never replaced", "files": files}
        write_bytes_atomic(self.path / LEDGER, (json.dumps(document, indent=1, sort_keys=True) + "\n").encode())


def check_new_file(path: str | Path, overwrite: bool, option: str = "--out") -> Path:
    """The file a user named for a command to create (`--out FILE`): refused when it exists, unless `overwrite`
    says the user means to replace it (a file of one's own directory holds no ledger to tell ours from theirs)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a directory, expected a file name")
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise UserError(f"{option} {path} already exists; pass --overwrite to replace it, or choose another name")
    return path
