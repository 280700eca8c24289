"""Checking knowledge items one by one, before anything is built from them.

Every problem is reported with the file, the item index and the field, so a bad file can be fixed
without a debugger. Checks run on plain Python objects (a parsed JSON list, or the rows of a
`datasets` table).
"""

from __future__ import annotations

import difflib
import json
from typing import Any, Sequence

from fictional_knowledge.model import PROBE_KINDS, REFERENCE_PROBE_FIELDS
from harness.errors import UserError

TEXT_FIELD = "train_context"
PARAPHRASES_FIELD = "paraphrases"
PROBE_FIELDS: tuple[str, ...] = tuple(f for kind in PROBE_KINDS for f in REFERENCE_PROBE_FIELDS[kind])
REQUIRED_FIELDS: tuple[str, ...] = (TEXT_FIELD, *PROBE_FIELDS)
KNOWN_FIELDS: tuple[str, ...] = (*REQUIRED_FIELDS, PARAPHRASES_FIELD)

#: At most this many problems are listed in one error message; the rest are counted.
MAX_LISTED_PROBLEMS = 20


def _closest(name: str, candidates: Sequence[str], cutoff: float = 0.7) -> str | None:
    found = difflib.get_close_matches(name, candidates, n=1, cutoff=cutoff)
    return found[0] if found else None


def _type_name(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return {**names, type(None): "null"}.get(
        type(value), f"a {type(value).__name__}"
    )


def raise_problems(source: str, problems: list[str]) -> None:
    if not problems:
        return
    if len(problems) == 1:
        raise UserError(f"{source}: {problems[0]}")
    listed = problems[:MAX_LISTED_PROBLEMS]
    more = f"\n  ... and {len(problems) - len(listed)} more" if len(problems) > len(listed) else ""
    raise UserError(f"{source}: {len(problems)} problems:\n  " + "\n  ".join(listed) + more)


def parse_json_bytes(data: bytes, source: str) -> Any:
    """Decode UTF-8 and parse JSON, turning each failure into a UserError that says where it is."""
    if not data.strip():
        raise UserError(f"{source}: the file is empty; expected a JSON list of knowledge items")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise UserError(
            f"{source}: not valid UTF-8 at byte offset {err.start} (byte 0x{data[err.start]:02x}: {err.reason})"
        ) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"{source}: not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}") from None


def _check_string(value: Any, where: str, problems: list[str]) -> None:
    if not isinstance(value, str):
        problems.append(f"{where}: expected a string, got {_type_name(value)}")
    elif not value.strip():
        problems.append(f"{where}: empty string")


def _check_string_list(value: Any, where: str, problems: list[str]) -> bool:
    """A list of non-empty strings; returns whether it is at least a list."""
    if not isinstance(value, list):
        problems.append(f"{where}: expected a list of strings, got {_type_name(value)}")
        return False
    for j, s in enumerate(value):
        _check_string(s, f"{where}[{j}]", problems)
    return True


def _check_item(i: int, item: Any) -> tuple[list[str], set[str]]:
    """Problems of one item, and the unknown fields that are simply ignored."""
    problems: list[str] = []
    if not isinstance(item, dict):
        return [f"item {i}: expected an object with fields {', '.join(REQUIRED_FIELDS)}, got {_type_name(item)}"], set()

    unknown = [k for k in item if k not in KNOWN_FIELDS]
    misspelled: dict[str, str] = {}  # known field -> the unknown key that looks like it
    ignored: set[str] = set()
    for key in unknown:
        guess = _closest(str(key), KNOWN_FIELDS)
        if guess is not None and guess not in item and guess not in misspelled:
            misspelled[guess] = key
        else:
            ignored.add(str(key))
    for name in KNOWN_FIELDS:
        if name in misspelled:
            problems.append(f"item {i}: unknown field {misspelled[name]!r} (did you mean {name!r}?)")
        elif name not in item and name in REQUIRED_FIELDS:
            problems.append(f"item {i}, field {name!r}: missing")

    if TEXT_FIELD in item:
        _check_string(item[TEXT_FIELD], f"item {i}, field {TEXT_FIELD!r}", problems)

    for kind in PROBE_KINDS:
        in_name, tgt_name = REFERENCE_PROBE_FIELDS[kind]
        if in_name not in item or tgt_name not in item:
            continue
        inputs, targets = item[in_name], item[tgt_name]
        ok_in = _check_string_list(inputs, f"item {i}, field {in_name!r}", problems)
        ok_tgt = _check_string_list(targets, f"item {i}, field {tgt_name!r}", problems)
        if ok_in and ok_tgt and len(inputs) != len(targets):
            problems.append(
                f"item {i}, fields {in_name!r}/{tgt_name!r}: unequal lengths ({len(inputs)} inputs, {len(targets)} targets)"
            )
        # The scored text is input + " " + target: surrounding whitespace would change it silently.
        for name, values in ((in_name, inputs), (tgt_name, targets)):
            if isinstance(values, list):
                for j, s in enumerate(values):
                    if isinstance(s, str) and s.strip() and s != s.strip():
                        problems.append(f"item {i}, field {name!r}[{j}]: leading or trailing whitespace")

    if item.get(PARAPHRASES_FIELD) is not None:
        _check_string_list(item[PARAPHRASES_FIELD], f"item {i}, field {PARAPHRASES_FIELD!r}", problems)
    return problems, ignored


def check_items(items: Any, source: str) -> list[str]:
    """Raise a UserError listing every problem of a parsed knowledge file; return the ignored field names."""
    if isinstance(items, dict):
        keys = ", ".join(repr(k) for k in list(items)[:5])
        raise UserError(f"{source}: wrong top-level type: expected a JSON list of items, got an object (keys {keys})")
    if not isinstance(items, list):
        raise UserError(f"{source}: wrong top-level type: expected a JSON list of items, got {_type_name(items)}")
    if not items:
        raise UserError(f"{source}: the list of items is empty")
    problems: list[str] = []
    ignored: set[str] = set()
    for i, item in enumerate(items):
        item_problems, item_ignored = _check_item(i, item)
        problems += item_problems
        ignored |= item_ignored
    raise_problems(source, problems)
    return sorted(ignored)
