"""Checking knowledge items one by one, before anything is built from them.

Every problem is reported with the file, the item index and the field, so a bad file can be fixed
without a debugger. Checks run on plain Python objects (a parsed JSON list, or the rows of a
`datasets` table).

A knowledge file is a JSON list of items, or an object `{"items": [...], "value_space": {...}}` for sets
whose probes ask for attribute values drawn from closed value sets (`fictional_knowledge.bios`):

    "value_space": {
      "attributes": [{"name": "birth_city", "value_set": "cities", "size": 200}, ...],   # mem probe i = attribute i
      "value_sets": {"cities": ["Kelmora", ...],                                          # distinct, prefix-free
                     "dates": {"dates": {"first_year": 1900, "last_year": 2099, "days_per_month": 28}}}
    }

and every item then carries `"attributes": {"birth_city": "Kelmora", ...}`.
"""

from __future__ import annotations

import difflib
import json
from collections import Counter
from collections.abc import Sequence
from typing import Any

from fictional_knowledge.model import (
    PRIME_KIND,
    PROBE_KINDS,
    REFERENCE_PROBE_FIELDS,
    Attribute,
    DateRange,
    ProbeKind,
    ValueSet,
    ValueSpace,
)
from harness.errors import UserError

TEXT_FIELD = "train_context"
PARAPHRASES_FIELD = "paraphrases"
ATTRIBUTES_FIELD = "attributes"
PROBE_FIELDS: tuple[str, ...] = tuple(f for kind in PROBE_KINDS for f in REFERENCE_PROBE_FIELDS[kind])
REQUIRED_FIELDS: tuple[str, ...] = (TEXT_FIELD, *PROBE_FIELDS)
PRIME_FIELDS: tuple[str, str] = REFERENCE_PROBE_FIELDS[PRIME_KIND]
KNOWN_FIELDS: tuple[str, ...] = (*REQUIRED_FIELDS, PARAPHRASES_FIELD, ATTRIBUTES_FIELD, *PRIME_FIELDS)
#: Top-level fields of a knowledge file written as an object.
ITEMS_KEY = "items"
VALUE_SPACE_KEY = "value_space"
#: Probe kinds whose probe i asks for attribute i in a set with a value space.
ATTRIBUTE_PROBE_KINDS: tuple[ProbeKind, ...] = ("mem", "sem")

#: At most this many problems are listed in one error message; the rest are counted.
MAX_LISTED_PROBLEMS = 20


def _closest(name: str, candidates: Sequence[str], cutoff: float = 0.7) -> str | None:
    found = difflib.get_close_matches(name, candidates, n=1, cutoff=cutoff)
    return found[0] if found else None


def _type_name(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return {**names, type(None): "null"}.get(type(value), f"a {type(value).__name__}")


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
    except RecursionError:
        raise UserError(f"{source}: not a knowledge file: its JSON is nested too deeply to read") from None


def _check_string(value: Any, where: str, problems: list[str]) -> None:
    if not isinstance(value, str):
        problems.append(f"{where}: expected a string, got {_type_name(value)}")
    elif not value.strip():
        problems.append(f"{where}: empty string")
    else:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as err:
            # JSON can spell half of a surrogate pair ("\ud800"); no text encoding, so no tokenizer, can hold it
            problems.append(
                f"{where}: character {err.start} is a lone surrogate (U+{ord(value[err.start]):04X}), which is not "
                "text any tokenizer can encode"
            )


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
                f"item {i}, fields {in_name!r}/{tgt_name!r}: unequal lengths "
                f"({len(inputs)} inputs, {len(targets)} targets)"
            )
        # The scored text is input + " " + target: surrounding whitespace would change it silently.
        for name, values in ((in_name, inputs), (tgt_name, targets)):
            if isinstance(values, list):
                for j, s in enumerate(values):
                    if isinstance(s, str) and s.strip() and s != s.strip():
                        problems.append(f"item {i}, field {name!r}[{j}]: leading or trailing whitespace")

    if item.get(PARAPHRASES_FIELD) is not None:
        _check_string_list(item[PARAPHRASES_FIELD], f"item {i}, field {PARAPHRASES_FIELD!r}", problems)
    if any(name in item for name in PRIME_FIELDS):
        check_priming(item, f"item {i}", problems)
    return problems, ignored


def check_priming(item: dict[str, Any], where: str, problems: list[str], keywords: Any = None) -> None:
    """Priming probes: `prime_input` and `prime_target` together, lists of equal length, every target one of the
    item's `mem_target` values (`keywords`: those values, where they come from elsewhere)."""
    in_name, tgt_name = PRIME_FIELDS
    missing = [name for name in PRIME_FIELDS if name not in item]
    if missing:
        problems.append(f"{where}, field {missing[0]!r}: missing (priming probes need {in_name} and {tgt_name})")
        return
    inputs, targets = item[in_name], item[tgt_name]
    ok_in = _check_string_list(inputs, f"{where}, field {in_name!r}", problems)
    ok_tgt = _check_string_list(targets, f"{where}, field {tgt_name!r}", problems)
    if not (ok_in and ok_tgt):
        return
    if len(inputs) != len(targets):
        problems.append(
            f"{where}, fields {in_name!r}/{tgt_name!r}: unequal lengths ({len(inputs)} inputs, {len(targets)} targets)"
        )
    for name, values in ((in_name, inputs), (tgt_name, targets)):
        for j, v in enumerate(values):
            if isinstance(v, str) and v.strip() and v != v.strip():
                problems.append(f"{where}, field {name!r}[{j}]: leading or trailing whitespace")
    keywords = item.get(REFERENCE_PROBE_FIELDS["mem"][1]) if keywords is None else keywords
    known = set(keywords) if isinstance(keywords, list) else set()
    for j, target in enumerate(targets):
        if isinstance(target, str) and target not in known:
            problems.append(
                f"{where}, field {tgt_name!r}[{j}]: {target!r} is not one of the item's mem_target values (a "
                "priming probe asks for the keyword of one of the paragraph's facts)"
            )


def split_document(data: Any, source: str) -> tuple[Any, Any]:
    """(items, raw value space or None) of a parsed knowledge file: a list of items, or an object with
    `items` and `value_space`."""
    if not isinstance(data, dict):
        return data, None
    if ITEMS_KEY not in data:
        keys = ", ".join(repr(k) for k in list(data)[:5])
        raise UserError(
            f"{source}: wrong top-level type: expected a JSON list of items, got an object (keys {keys}); "
            f"a knowledge file written as an object holds {ITEMS_KEY!r} and {VALUE_SPACE_KEY!r}"
        )
    unknown = [k for k in data if k not in (ITEMS_KEY, VALUE_SPACE_KEY)]
    if unknown:
        guess = _closest(str(unknown[0]), (ITEMS_KEY, VALUE_SPACE_KEY))
        hint = f" (did you mean {guess!r}?)" if guess else f" (known: {ITEMS_KEY!r}, {VALUE_SPACE_KEY!r})"
        raise UserError(f"{source}: unknown top-level field {unknown[0]!r}{hint}")
    return data[ITEMS_KEY], data.get(VALUE_SPACE_KEY)


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


# ------------------------------------------------------------------------------------------ value space


def _value_set(name: str, spec: Any, problems: list[str]) -> ValueSet | None:
    where = f"field {VALUE_SPACE_KEY!r}, value set {name!r}"
    if isinstance(spec, list):
        before = len(problems)
        for j, v in enumerate(spec):
            _check_string(v, f"{where}[{j}]", problems)
            if isinstance(v, str) and v.strip() and v != v.strip():
                problems.append(f"{where}[{j}]: leading or trailing whitespace")
        if not spec:
            problems.append(f"{where}: empty")
        if len(problems) > before:
            return None
        repeated = [v for v, n in Counter(spec).items() if n > 1]
        if repeated:
            problems.append(f"{where}: value {repeated[0]!r} occurs more than once")
            return None
        # Sorted, a value that is a prefix of another is directly followed by one that starts with it.
        ordered = sorted(spec)
        for a, b in zip(ordered, ordered[1:]):
            if b.startswith(a):
                problems.append(
                    f"{where}: {a!r} is a prefix of {b!r} (values must be prefix-free, so that the "
                    "model's probabilities of a set's values sum to at most 1)"
                )
                return None
        return ValueSet(name, values=tuple(spec))
    if isinstance(spec, dict) and set(spec) == {"dates"} and isinstance(spec["dates"], dict):
        rule = spec["dates"]
        fields = ("first_year", "last_year", "days_per_month")
        if set(rule) - set(fields) or not {"first_year", "last_year"} <= set(rule):
            problems.append(
                f"{where}: 'dates' needs first_year and last_year (and optionally days_per_month), got {sorted(rule)}"
            )
            return None
        values = {k: rule.get(k, 28) for k in fields}
        bad = [k for k, v in values.items() if isinstance(v, bool) or not isinstance(v, int)]
        if bad:
            problems.append(f"{where}: 'dates' field {bad[0]!r} must be an integer, got {values[bad[0]]!r}")
            return None
        if (
            not values["first_year"] <= values["last_year"]
            or not 1000 <= values["first_year"] <= 9999
            or values["last_year"] > 9999
            or not 1 <= values["days_per_month"] <= 28
        ):
            problems.append(
                f"{where}: 'dates' needs 1000 <= first_year <= last_year <= 9999 and "
                f"1 <= days_per_month <= 28, got {values}"
            )
            return None
        return ValueSet(name, dates=DateRange(**values))
    problems.append(
        f'{where}: expected a list of strings or {{"dates": {{"first_year": ..., "last_year": ...}}}}, '
        f"got {_type_name(spec)}"
    )
    return None


def _attributes(raw: Any, value_sets: dict[str, ValueSet | None], problems: list[str]) -> list[Attribute]:
    where = f"field {VALUE_SPACE_KEY!r}, 'attributes'"
    if not isinstance(raw, list) or not raw:
        problems.append(
            f"{where}: expected a non-empty list of {{name, value_set, size}} objects, got {_type_name(raw)}"
        )
        return []
    out: list[Attribute] = []
    seen: set[str] = set()
    for i, entry in enumerate(raw):
        here = f"{where}[{i}]"
        if not isinstance(entry, dict) or set(entry) != {"name", "value_set", "size"}:
            keys = sorted(entry) if isinstance(entry, dict) else _type_name(entry)
            problems.append(f"{here}: expected an object with exactly name, value_set and size, got {keys}")
            continue
        name, set_name, size = entry["name"], entry["value_set"], entry["size"]
        if not isinstance(name, str) or not name.strip():
            problems.append(f"{here}, 'name': expected a non-empty string, got {name!r}")
            continue
        if name in seen:
            problems.append(f"{here}, 'name': attribute {name!r} appears twice")
            continue
        seen.add(name)
        if set_name not in value_sets:
            problems.append(
                f"{here} ({name}), 'value_set': no value set named {set_name!r} "
                f"(value sets: {', '.join(map(repr, value_sets)) or 'none'})"
            )
            continue
        values = value_sets[set_name]
        if values is None:
            continue  # its own problem is already listed
        if isinstance(size, bool) or not isinstance(size, int) or size != values.size:
            problems.append(
                f"{here} ({name}), 'size': {size!r} does not match value set {set_name!r}, "
                f"which has {values.size} values"
            )
            continue
        if size < 2:
            problems.append(f"{here} ({name}), 'size': an attribute needs at least 2 possible values, got {size}")
            continue
        out.append(Attribute(name, set_name, size))
    return out


def _check_item_values(i: int, item: dict[str, Any], space: ValueSpace, problems: list[str]) -> None:
    values = item.get(ATTRIBUTES_FIELD)
    where = f"item {i}, field {ATTRIBUTES_FIELD!r}"
    if not isinstance(values, dict):
        problems.append(
            f"{where}: {'missing' if values is None else 'expected an object, got ' + _type_name(values)} "
            f"(the file has a value space: every item maps {', '.join(space.names)} to its values)"
        )
        return
    missing = [a for a in space.names if a not in values]
    extra = [a for a in values if a not in space.names]
    if missing or extra:
        problems.append(
            f"{where}: "
            + "; ".join(
                ([f"missing attribute(s) {', '.join(missing)}"] if missing else [])
                + ([f"unknown attribute(s) {', '.join(map(str, extra))}"] if extra else [])
            )
        )
        return
    for attr in space.attributes:
        value = values[attr.name]
        if value not in space.value_sets[attr.value_set]:
            problems.append(f"{where}, attribute {attr.name!r}: {value!r} is not in value set {attr.value_set!r}")
    for kind in ATTRIBUTE_PROBE_KINDS:
        tgt_name = REFERENCE_PROBE_FIELDS[kind][1]
        targets = item.get(tgt_name)
        if not targets and kind != "mem":
            continue  # sem probes are optional
        if len(targets) != len(space.attributes):
            problems.append(
                f"item {i}, field {tgt_name!r}: {len(targets)} probes, but the value space has "
                f"{len(space.attributes)} attributes ({kind} probe j asks for attribute j)"
            )
            continue
        for j, (attr, target) in enumerate(zip(space.attributes, targets)):
            if target != values[attr.name]:
                problems.append(
                    f"item {i}, field {tgt_name!r}[{j}]: target {target!r} is not the item's value of "
                    f"attribute {attr.name!r} ({values[attr.name]!r})"
                )


def check_value_space(raw: Any, items: list[dict[str, Any]], source: str) -> ValueSpace:
    """The value space of a file whose items passed `check_items`; a UserError lists every problem: the value
    sets (distinct, prefix-free), the attributes (sizes match their sets) and every item (its attribute values
    are in their sets and its `mem` (and `sem`) probe j targets attribute j's value)."""
    if not isinstance(raw, dict):
        raise UserError(
            f"{source}: field {VALUE_SPACE_KEY!r}: expected an object with 'attributes' and 'value_sets', "
            f"got {_type_name(raw)}"
        )
    unknown = [k for k in raw if k not in ("attributes", "value_sets")]
    if unknown or "attributes" not in raw or "value_sets" not in raw:
        raise UserError(
            f"{source}: field {VALUE_SPACE_KEY!r}: expected exactly 'attributes' and 'value_sets', "
            f"got {', '.join(map(repr, raw)) or 'nothing'}"
        )
    problems: list[str] = []
    sets_raw = raw["value_sets"]
    if not isinstance(sets_raw, dict) or not sets_raw:
        raise UserError(
            f"{source}: field {VALUE_SPACE_KEY!r}, 'value_sets': expected a non-empty object of named "
            f"value sets, got {_type_name(sets_raw)}"
        )
    value_sets = {str(name): _value_set(str(name), spec, problems) for name, spec in sets_raw.items()}
    attributes = _attributes(raw["attributes"], value_sets, problems)
    raise_problems(source, problems)
    space = ValueSpace(tuple(attributes), {k: v for k, v in value_sets.items() if v is not None})
    for i, item in enumerate(items):
        _check_item_values(i, item, space, problems)
    raise_problems(source, problems)
    return space
