"""`injection knowledge validate`: summaries for good sets, exit 2 with item/field/problem for bad ones."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from typer.testing import CliRunner

from fictional_knowledge.encode import encode_paragraphs
from injection.cli import app
from tests.helpers.knowledge import REFERENCE_FILE, valid_items, write_json


def _validate(*args: str):
    return CliRunner().invoke(app, ["knowledge", "validate", *map(str, args)])


def _edit(fn: Callable[[list[dict[str, Any]]], Any]) -> bytes:
    items = valid_items(3)
    fn(items)
    return json.dumps(items, ensure_ascii=False).encode("utf-8")


def _rename(item: dict, old: str, new: str) -> None:
    item[new] = item.pop(old)


BAD_FILES: list[tuple[str, bytes, str]] = [
    ("empty file", b"", "the file is empty"),
    ("whitespace only", b"  \n", "the file is empty"),
    (
        "not json",
        b'[{"train_context": "x",',
        "not valid JSON: Expecting property name enclosed in double quotes at line 1",
    ),
    ("empty list", b"[]", "the list of items is empty"),
    (
        "top-level object",
        b'{"data": []}',
        "wrong top-level type: expected a JSON list of items, got an object (keys 'data')",
    ),
    ("top-level string", b'"paragraphs"', "wrong top-level type: expected a JSON list of items, got a string"),
    ("invalid utf-8", b'[{"train_context": "caf\xe9"}]', "not valid UTF-8 at byte offset 23 (byte 0xe9"),
    ("item not an object", _edit(lambda it: it.append(7)), "item 3: expected an object with fields train_context"),
    ("missing field", _edit(lambda it: it[1].pop("gen_target")), "item 1, field 'gen_target': missing"),
    (
        "misspelled field",
        _edit(lambda it: _rename(it[2], "mem_target", "mem_targte")),
        "item 2: unknown field 'mem_targte' (did you mean 'mem_target'?)",
    ),
    (
        "misspelled optional field",
        _edit(lambda it: _rename(it[0], "paraphrases", "paraphrase")),
        "item 0: unknown field 'paraphrase' (did you mean 'paraphrases'?)",
    ),
    (
        "unequal lengths",
        _edit(lambda it: it[1]["hard_gen_target"].pop()),
        "item 1, fields 'hard_gen_input'/'hard_gen_target': unequal lengths (5 inputs, 4 targets)",
    ),
    (
        "empty input",
        _edit(lambda it: it[0]["gen_input"].__setitem__(2, "")),
        "item 0, field 'gen_input'[2]: empty string",
    ),
    (
        "non-string target",
        _edit(lambda it: it[2]["mem_target"].__setitem__(0, 1850)),
        "item 2, field 'mem_target'[0]: expected a string, got a number",
    ),
    (
        "inputs not a list",
        _edit(lambda it: it[0].__setitem__("mem_input", "Zorvath was born in")),
        "item 0, field 'mem_input': expected a list of strings, got a string",
    ),
    (
        "empty paragraph",
        _edit(lambda it: it[1].__setitem__("train_context", "  ")),
        "item 1, field 'train_context': empty string",
    ),
    (
        "paragraph not a string",
        _edit(lambda it: it[0].__setitem__("train_context", ["a"])),
        "item 0, field 'train_context': expected a string, got a list",
    ),
    (
        "paraphrases not a list",
        _edit(lambda it: it[2].__setitem__("paraphrases", "one text")),
        "item 2, field 'paraphrases': expected a list of strings, got a string",
    ),
    (
        "paraphrase not a string",
        _edit(lambda it: it[1].__setitem__("paraphrases", ["ok text", None])),
        "item 1, field 'paraphrases'[1]: expected a string, got null",
    ),
    (
        "target with surrounding space",
        _edit(lambda it: it[0]["mem_target"].__setitem__(4, " Quenn")),
        "item 0, field 'mem_target'[4]: leading or trailing whitespace",
    ),
]


@pytest.mark.parametrize("content, expected", [c[1:] for c in BAD_FILES], ids=[c[0] for c in BAD_FILES])
def test_bad_file_exits_2_with_message(tmp_path, content, expected):
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    result = _validate(path)
    assert result.exit_code == 2, result.output
    assert f"error: {path}: " in result.output
    assert expected in result.output
    assert "Traceback" not in result.output


def test_several_problems_are_listed_together(tmp_path):
    def break_two(items):
        items[0].pop("mem_input")
        items[2]["gen_target"][0] = ""

    path = tmp_path / "bad.json"
    path.write_bytes(_edit(break_two))
    result = _validate(path)
    assert result.exit_code == 2
    assert "2 problems" in result.output
    assert "item 0, field 'mem_input': missing" in result.output
    assert "item 2, field 'gen_target'[0]: empty string" in result.output


def test_unrelated_extra_fields_are_ignored_and_reported(tmp_path):
    items = valid_items(2)
    items[0]["source_url"] = "x"
    result = _validate(write_json(tmp_path / "k.json", items))
    assert result.exit_code == 0, result.output
    assert "ignored fields: source_url" in result.output


def test_reference_summary(reference_dir):
    result = _validate(reference_dir / REFERENCE_FILE)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "130 paragraphs" in out
    assert "probes: mem 650, sem 650, comp 650 (total 1950)" in out
    assert "paraphrases per paragraph: 0 paraphrases: 90, 9 paraphrases: 40" in out
    assert "mem probes not verbatim in their paragraph: 12 (informational)" in out


def test_token_statistics_and_too_long_paragraphs(tmp_path, olmo_tokenizer):
    items = valid_items(4, paraphrases=1, seed=3)
    path = write_json(tmp_path / "k.json", items)
    lengths = [len(ids) for ids in encode_paragraphs(olmo_tokenizer, [it["train_context"] for it in items])]

    result = _validate(path, "--tokenizer", "olmo")
    assert result.exit_code == 0, result.output
    assert f"paragraphs incl. EOS: min {min(lengths)}, mean {sum(lengths) / 4:.1f}," in result.output
    assert f"max {max(lengths)} (n=4)" in result.output
    assert "all variants incl. EOS:" in result.output and "(n=8)" in result.output
    assert "mem probes (input + target)" in result.output and "every variant fits seq_len 2048" in result.output

    limit = sorted(lengths)[1]  # at least two originals are longer than this
    result = _validate(path, "--tokenizer", "olmo", "--seq-len", str(limit))
    assert result.exit_code == 2
    flagged = sorted(i for i, n in enumerate(lengths) if n > limit)
    assert (
        f"paragraphs longer than --seq-len {limit} tokens with EOS: {flagged[0]} "
        f"(variant 0: {lengths[flagged[0]]} tokens)" in result.output
    )
    assert "Traceback" not in result.output


def test_unknown_tokenizer_is_a_user_error(tmp_path):
    result = _validate(write_json(tmp_path / "k.json", valid_items(1)), "--tokenizer", "no-such-tokenizer")
    assert result.exit_code == 2 and "unknown tokenizer" in result.output
