"""Reading torch checkpoint files without arbitrary unpickling.

`torch.load(weights_only=True)` accepts tensors, numbers, strings and containers. OLMo's trainer state
(`train.pt`) also holds numpy arrays and random-state tuples and `pathlib` paths (lists of checkpoint folders):
those types are plain data and allowed here by name. Anything else needs full unpickling, which can run code,
and is refused unless the caller trusts the file.

ai2-olmo's safetensors files (`model.safetensors`, `optim.safetensors` of OLMo 2 7B and 13B) flatten a nested
state dict: each key is a base64 pickle of (path of keys, whether the value is pickled), and values that are
not tensors (an optimizer's param_groups) are pickles stored as byte tensors. Those pickles are read with an
unpickler that builds only plain containers, strings and numbers, and refuses any class.
"""

from __future__ import annotations

import base64
import binascii
import io
import pathlib
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

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


class _PlainUnpickler(pickle.Unpickler):
    """Tuples, lists, dicts, strings, numbers, booleans and None: pickles of those name no class."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"Unsupported global: GLOBAL {module}.{name}")


def _plain_loads(data: bytes, where: str, trust_pickle: bool) -> Any:
    try:
        return _PlainUnpickler(io.BytesIO(data)).load()
    except pickle.UnpicklingError as err:
        if not trust_pickle:
            raise UserError(
                f"{where} holds a pickled value that needs a class ({err}); pass --trust-pickle only if you trust "
                "where it came from"
            ) from None
    return pickle.loads(data)  # noqa: S301 - the caller trusts the file


def _key_path(key: str, where: str, trust_pickle: bool) -> tuple[tuple, bool]:
    """(path of nested keys, value pickled) of one key; a key that is not ai2-olmo's encoding is a plain name."""
    try:
        raw = base64.urlsafe_b64decode(key.encode("ascii"))
    except (binascii.Error, ValueError, UnicodeEncodeError):
        return (key,), False
    if not raw.startswith(b"\x80"):  # every pickle since protocol 2 starts with PROTO
        return (key,), False
    decoded = _plain_loads(raw, f"{where}: key {key!r}", trust_pickle)
    if not (isinstance(decoded, tuple) and len(decoded) == 2 and isinstance(decoded[0], tuple)):
        return (key,), False
    return decoded[0], bool(decoded[1])


def load_olmo_safetensors(path: Path, *, trust_pickle: bool = False) -> dict[str, Any]:
    """A state dict saved by ai2-olmo's `state_dict_to_safetensors_file` (nested dicts rebuilt, pickled values
    read as plain data); a safetensors file with ordinary names reads as a flat dict."""

    try:
        flat = load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as err:
        raise UserError(f"{path} is not a readable safetensors file (corrupted or truncated?): {err}") from None
    out: dict[Any, Any] = {}
    for key, value in flat.items():
        keys, pickled = _key_path(key, str(path), trust_pickle)
        if pickled:
            value = _plain_loads(value.numpy().tobytes(), f"{path}: {'.'.join(map(str, keys))}", trust_pickle)
        node = out
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    return out
