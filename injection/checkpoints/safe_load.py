"""Reading torch checkpoint files without arbitrary unpickling.

`torch.load(weights_only=True)` accepts tensors, numbers, strings and containers. OLMo's trainer state
(`train.pt`) also holds numpy arrays and random-state tuples and `pathlib` paths (lists of checkpoint folders):
those types are plain data and allowed here by name. Anything else needs full unpickling, which can run code,
and is refused unless the caller trusts the file.
"""

from __future__ import annotations

import pathlib
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.errors import UserError


def _allowed_globals() -> list[Any]:
    allowed: list[Any] = [
        np.ndarray,
        np.dtype,
        np.core.multiarray._reconstruct,
        pathlib.PosixPath,
        pathlib.PurePosixPath,
        pathlib.Path,
    ]
    scalar = getattr(np.core.multiarray, "scalar", None)
    if scalar is not None:
        allowed.append(scalar)
    allowed += [type(np.dtype(t)) for t in ("uint32", "int64", "float64", "uint64", "int32", "float32", "bool")]
    return allowed


def safe_torch_load(path: Path, *, trust_pickle: bool = False) -> Any:
    """The file's content, loaded with only plain data types allowed (see the module docstring)."""
    try:
        with torch.serialization.safe_globals(_allowed_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch names the offending class ("Unsupported global: GLOBAL pkg.Class"); any other
        # unpickling failure means the bytes themselves are bad.
        needs = [line.strip() for line in str(err).splitlines() if "Unsupported global" in line]
        if not needs:
            raise UserError(f"{path} is not a readable torch file (corrupted or truncated?)") from None
        if not trust_pickle:
            raise UserError(
                f"{path} needs full unpickling, which can run arbitrary code ({needs[0]}); "
                "pass --trust-pickle only if you trust where it came from"
            ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise UserError(f"{path} is not a readable torch file (corrupted or truncated?): {err}") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - any failure here means the file is unusable
        raise UserError(f"{path} is not a readable torch file (corrupted or truncated?): {err}") from None
