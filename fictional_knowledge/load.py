"""Loading a knowledge set from any of the ways a user can name one:

- a JSON file in the reference format (a list of items), or an object with `items` and a `value_space` (sets
  whose probes ask for attribute values drawn from closed value sets, fictional_knowledge.bios);
- a directory saved with `datasets`' `save_to_disk` (a Dataset, or a DatasetDict with a `train` split);
- a Hugging Face hub name (needs the network or the local cache);
- `generate:PARAGRAPHS:PARAPHRASES:SEED`: made on the spot by the project's generator (same spec, same set).

All carry the same fields per item (`train_context`, `mem_input`/`mem_target`, `gen_input`/`gen_target`,
`hard_gen_input`/`hard_gen_target`, optional `paraphrases`); every source goes through the same item checks
(fictional_knowledge.checks, including `check_value_space`) before a `KnowledgeSet` is built. Paragraph ids are
list positions.
"""

from __future__ import annotations

import os
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import datasets
from datasets import DatasetDict, load_from_disk

from fictional_knowledge.checks import (
    ATTRIBUTES_FIELD,
    ITEMS_KEY,
    PARAPHRASES_FIELD,
    PRIME_FIELDS,
    TEXT_FIELD,
    VALUE_SPACE_KEY,
    check_items,
    check_priming,
    check_value_space,
    parse_json_bytes,
    raise_problems,
    split_document,
)
from fictional_knowledge.generate import MAX_PARAGRAPHS, MAX_PARAPHRASES, generate_knowledge
from fictional_knowledge.model import (
    PRIME_KIND,
    PROBE_KINDS,
    REFERENCE_PROBE_FIELDS,
    KnowledgeSet,
    Paragraph,
    Probe,
    ValueSpace,
)
from harness.errors import UserError

#: `owner/name` or `name` on the Hugging Face hub (what is not an existing path and looks like this).
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def items_to_knowledge(items: list[dict[str, Any]], source: str, value_space: ValueSpace | None = None) -> KnowledgeSet:
    """Build a KnowledgeSet from items that passed `check_items` (and `check_value_space`, with a value space)."""
    paragraphs = []
    for i, item in enumerate(items):
        probes = {
            kind: tuple(
                Probe(x, y)
                for x, y in zip(item[REFERENCE_PROBE_FIELDS[kind][0]], item[REFERENCE_PROBE_FIELDS[kind][1]])
            )
            for kind in PROBE_KINDS
        }
        if PRIME_FIELDS[0] in item:
            probes[PRIME_KIND] = tuple(Probe(x, y) for x, y in zip(item[PRIME_FIELDS[0]], item[PRIME_FIELDS[1]]))
        paraphrases = tuple(item.get(PARAPHRASES_FIELD) or ())
        attributes = dict(item[ATTRIBUTES_FIELD]) if value_space is not None else {}
        paragraphs.append(Paragraph(i, item[TEXT_FIELD], paraphrases, probes, attributes))
    return KnowledgeSet(tuple(paragraphs), source, value_space)


def knowledge_from_document(data: Any, source: str) -> tuple[KnowledgeSet, list[str]]:
    """A parsed knowledge file (a list of items, or an object with items and a value space), fully checked;
    also the names of fields that were present but ignored."""
    items, raw_space = split_document(data, source)
    ignored = check_items(items, source)
    space = None
    if raw_space is not None:
        space = check_value_space(raw_space, items, source)
    elif any(ATTRIBUTES_FIELD in item for item in items):
        ignored = sorted({*ignored, ATTRIBUTES_FIELD})  # values without a value space mean nothing here
    return items_to_knowledge(items, source, space), ignored


def knowledge_to_items(knowledge: KnowledgeSet) -> list[dict[str, Any]]:
    """The reference JSON items of a KnowledgeSet (the inverse of `items_to_knowledge`)."""
    items = []
    for p in knowledge.paragraphs:
        item: dict[str, Any] = {TEXT_FIELD: p.text}
        for kind in PROBE_KINDS:
            in_name, tgt_name = REFERENCE_PROBE_FIELDS[kind]
            item[in_name] = [q.input for q in p.probes.get(kind, ())]
            item[tgt_name] = [q.target for q in p.probes.get(kind, ())]
        item[PARAPHRASES_FIELD] = list(p.paraphrases)
        if PRIME_KIND in p.probes:
            item[PRIME_FIELDS[0]] = [q.input for q in p.probes[PRIME_KIND]]
            item[PRIME_FIELDS[1]] = [q.target for q in p.probes[PRIME_KIND]]
        if knowledge.value_space is not None:
            item[ATTRIBUTES_FIELD] = dict(p.attributes)
        items.append(item)
    return items


def value_space_to_json(space: ValueSpace) -> dict[str, Any]:
    """The `value_space` object of a knowledge file (the inverse of `checks.check_value_space`)."""
    sets: dict[str, Any] = {}
    for name, vs in space.value_sets.items():
        if vs.dates is not None:
            d = vs.dates
            sets[name] = {
                "dates": {"first_year": d.first_year, "last_year": d.last_year, "days_per_month": d.days_per_month}
            }
        else:
            sets[name] = list(vs.values)
    return {
        "attributes": [{"name": a.name, "value_set": a.value_set, "size": a.size} for a in space.attributes],
        "value_sets": sets,
    }


def knowledge_to_document(knowledge: KnowledgeSet) -> list[dict[str, Any]] | dict[str, Any]:
    """What a knowledge file holds: the list of items, or `{"items", "value_space"}` for a set with a value space."""
    items = knowledge_to_items(knowledge)
    if knowledge.value_space is None:
        return items
    return {VALUE_SPACE_KEY: value_space_to_json(knowledge.value_space), ITEMS_KEY: items}


def _dataset_rows(ds: Any, source: str) -> list[dict[str, Any]]:
    """Rows of a Dataset, or of the `train` (or only) split of a DatasetDict."""
    if isinstance(ds, DatasetDict):
        if "train" in ds:
            ds = ds["train"]
        elif len(ds) == 1:
            ds = next(iter(ds.values()))
        else:
            raise UserError(f"{source}: a dataset with splits {sorted(ds)}; expected a 'train' split or a single split")
    return ds.to_list()


def _read_dataset_dir(path: Path) -> list[dict[str, Any]]:
    try:
        return _dataset_rows(load_from_disk(str(path)), str(path))
    except FileNotFoundError as err:
        raise UserError(f"{path}: not a dataset directory saved with save_to_disk ({err})") from None


def _read_hub(name: str) -> list[dict[str, Any]]:
    try:
        ds = datasets.load_dataset(name)
    except ConnectionError as err:
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0") or os.environ.get(
            "HF_DATASETS_OFFLINE", ""
        ) not in ("", "0")
        why = "offline mode is on (HF_HUB_OFFLINE)" if offline else "the hub cannot be reached"
        raise UserError(
            f"cannot load {name!r} from the Hugging Face hub: {why} and it is not in the local cache. "
            f"Where online, save it once with datasets.load_dataset({name!r}).save_to_disk(DIR) and pass DIR, "
            f"or pass the knowledge JSON file ({type(err).__name__}: {err})"
        ) from None
    except FileNotFoundError as err:  # includes datasets' DatasetNotFoundError
        raise UserError(f"no file, directory or hub dataset named {name!r} ({err})") from None
    return _dataset_rows(ds, name)


GENERATE_PREFIX = "generate:"


def parse_generate_spec(spec: str) -> tuple[int, int, int]:
    """`generate:PARAGRAPHS:PARAPHRASES:SEED` -> (paragraphs, paraphrases, seed)."""
    parts = spec[len(GENERATE_PREFIX) :].split(":")
    try:
        n, m, seed = (int(p) for p in parts)
    except ValueError:
        raise UserError(
            f"knowledge {spec!r}: expected generate:PARAGRAPHS:PARAPHRASES:SEED (three integers, e.g. generate:12:3:0)"
        ) from None
    if n <= 0 or m < 0 or seed < 0:
        raise UserError(f"knowledge {spec!r}: PARAGRAPHS must be > 0, PARAPHRASES and SEED >= 0")

    if n > MAX_PARAGRAPHS or m > MAX_PARAPHRASES:
        raise UserError(
            f"knowledge {spec!r}: at most {MAX_PARAGRAPHS:,} paragraphs and {MAX_PARAPHRASES:,} paraphrases are "
            "generated"
        )
    return n, m, seed


def read_items(path_or_name: str | Path) -> tuple[Any, str]:
    """The raw content (unchecked: a list of items, or for JSON files possibly an object with items and a value
    space) and a source label, from any knowledge spec (see the module docstring)."""
    if str(path_or_name).startswith(GENERATE_PREFIX):
        return generate_knowledge(*parse_generate_spec(str(path_or_name))), str(path_or_name)
    path = Path(path_or_name).expanduser()
    if path.is_file():
        try:
            data = path.read_bytes()
        except OSError as err:
            raise UserError(f"{path}: cannot read: {err.strerror}") from None
        return parse_json_bytes(data, str(path)), str(path)
    if path.is_dir():
        if (path / "dataset_dict.json").is_file() or (path / "dataset_info.json").is_file():
            return _read_dataset_dir(path), str(path)
        raise UserError(f"{path}: a directory, but not a dataset saved with save_to_disk (no dataset_info.json)")
    name = str(path_or_name)
    looks_local = name.endswith((".json", ".jsonl")) or name.startswith((".", "/", "~")) or os.sep + os.sep in name
    if looks_local or not _HUB_ID.match(name):
        raise UserError(f"{name}: no such file or directory")
    return _read_hub(name), name


def load_knowledge_checked(path_or_name: str | Path) -> tuple[KnowledgeSet, list[str]]:
    """The knowledge set and the names of fields that were present but ignored."""
    data, source = read_items(path_or_name)
    return knowledge_from_document(data, source)


def load_knowledge(path_or_name: str | Path, limit: int | None = None) -> KnowledgeSet:
    """A knowledge set from any spec (file, saved dataset, hub name, `generate:...`); `limit` keeps the first N.

    Raises UserError (naming the file, item and field) for anything malformed, and for hub names that
    cannot be fetched (offline, unknown).
    """
    knowledge = load_knowledge_checked(path_or_name)[0]
    if limit is not None:
        if limit > len(knowledge):
            raise UserError(f"knowledge_limit {limit} exceeds the {len(knowledge)} paragraphs of {path_or_name}")
        knowledge = knowledge.subset(limit)
    return knowledge


def with_priming(knowledge: KnowledgeSet, path: str | Path) -> KnowledgeSet:
    """The knowledge set with the priming probes of a priming file added (for sets that carry none, such as the
    reference set). The file is a JSON list of `{"paragraph": ID, "prime_input": [...], "prime_target": [...]}`,
    each target one of that paragraph's `mem` targets; a paragraph is listed at most once and must not carry
    priming probes already."""
    source = str(path)
    try:
        data = parse_json_bytes(Path(path).read_bytes(), source)
    except OSError as err:
        raise UserError(f"{source}: cannot read: {err.strerror}") from None
    if not isinstance(data, list) or not data:
        raise UserError(f'{source}: expected a non-empty JSON list of {{"paragraph", "prime_input", "prime_target"}}')
    problems: list[str] = []
    added: dict[int, tuple[Probe, ...]] = {}
    for i, entry in enumerate(data):
        where = f"entry {i}"
        if not isinstance(entry, dict):
            problems.append(f"{where}: expected an object with paragraph, prime_input, prime_target")
            continue
        unknown = sorted(set(entry) - {"paragraph", *PRIME_FIELDS})
        if unknown:
            problems.append(f"{where}: unknown field {unknown[0]!r} (known: paragraph, {', '.join(PRIME_FIELDS)})")
        p = entry.get("paragraph")
        if isinstance(p, bool) or not isinstance(p, int) or not 0 <= p < len(knowledge):
            problems.append(f"{where}, field 'paragraph': expected a paragraph id 0…{len(knowledge) - 1}, found {p!r}")
            continue
        if p in added or PRIME_KIND in knowledge[p].probes:
            problems.append(f"{where}, field 'paragraph': paragraph {p} already has priming probes")
            continue
        before = len(problems)
        check_priming(entry, f"{where} (paragraph {p})", problems, [q.target for q in knowledge[p].probes["mem"]])
        if len(problems) == before:
            added[p] = tuple(Probe(x, y) for x, y in zip(entry[PRIME_FIELDS[0]], entry[PRIME_FIELDS[1]]))
    raise_problems(source, problems)
    paragraphs = tuple(
        replace(p, probes={**p.probes, PRIME_KIND: added[p.id]}) if p.id in added else p for p in knowledge.paragraphs
    )
    return KnowledgeSet(paragraphs, knowledge.source, knowledge.value_space)
