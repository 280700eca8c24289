"""Probe and paragraph encoding: exact target spans under OLMo's tokenizer and a locally trained BPE."""

from __future__ import annotations

import pytest

from fictional_knowledge.encode import encode_paragraph, encode_paragraphs, encode_probe, encode_probes, target_span
from fictional_knowledge.generate import generate_knowledge
from fictional_knowledge.load import items_to_knowledge, load_knowledge
from fictional_knowledge.model import Probe
from tests.helpers.knowledge import REFERENCE_FILE, byte_level_bpe


@pytest.fixture(scope="module")
def reference(reference_dir):
    return load_knowledge(reference_dir / REFERENCE_FILE)


def _decode(tokenizer, ids: list[int]) -> str:
    # The backend decoder is exact for byte-level BPE (no "clean up" of spaces before punctuation).
    return tokenizer.backend_tokenizer.decode(ids, skip_special_tokens=False)


def _assert_spans_exact(tokenizer, knowledge) -> int:
    refs = list(knowledge.iter_probes())
    encoded = encode_probes(tokenizer, refs)
    for ref, enc in zip(refs, encoded):
        probe = ref.probe
        where = f"paragraph {ref.paragraph} {ref.kind}[{ref.index}]"
        assert 0 < enc.target_start < enc.target_end == len(enc.input_ids), where
        assert _decode(tokenizer, enc.input_ids) == probe.text, where
        # The span is the target, up to the separating space merged into its first token.
        assert _decode(tokenizer, enc.target_ids).removeprefix(" ") == probe.target, where
        assert _decode(tokenizer, enc.input_ids[: enc.target_start]).rstrip(" ") == probe.input, where
    return len(encoded)


def test_olmo_spans_exact_for_every_reference_probe(reference, olmo_tokenizer):
    assert _assert_spans_exact(olmo_tokenizer, reference) == 130 * 15


@pytest.mark.parametrize("trim_offsets", [True, False])
def test_byte_level_bpe_spans_exact_for_every_reference_probe(reference, trim_offsets):
    texts = [item["train_context"] for item in generate_knowledge(40, 0, seed=5)]
    tokenizer = byte_level_bpe(texts, vocab_size=400, trim_offsets=trim_offsets)
    assert _assert_spans_exact(tokenizer, reference) == 1950


def test_generated_probe_spans_exact(olmo_tokenizer):
    knowledge = items_to_knowledge(generate_knowledge(10, 0, seed=2), "generated")
    assert _assert_spans_exact(olmo_tokenizer, knowledge) == 150


def test_space_merges_into_first_target_token_under_olmo(olmo_tokenizer):
    enc = encode_probe(olmo_tokenizer, Probe("The capital of France is", "Paris"))
    assert _decode(olmo_tokenizer, enc.target_ids) == " Paris"
    assert enc.n_target == 1 and enc.target_end == len(enc.input_ids)
    # Tokenizing the target alone would give another id than the model sees in context.
    assert olmo_tokenizer("Paris", add_special_tokens=False)["input_ids"] != enc.target_ids


def test_single_and_batched_encoding_agree(olmo_tokenizer):
    probes = [Probe("Zorvath Quellin was born in", "1734"), Probe("The river is the", "Drouvik–Ma")]
    assert encode_probes(olmo_tokenizer, probes) == [encode_probe(olmo_tokenizer, p) for p in probes]
    assert encode_probes(olmo_tokenizer, []) == []


def test_token_straddling_the_boundary_belongs_to_the_target():
    # "abcde fghi": input "abcde" (5 chars), target starts at character 6. Token (3, 7) = "de f" straddles.
    assert target_span([(0, 3), (3, 7), (7, 10)], 6, 10) == (1, 3)
    # Trimmed offsets: the lone space token (5, 5) is empty and never part of the target.
    assert target_span([(0, 5), (5, 5), (6, 10)], 6, 10) == (2, 3)
    # Untrimmed: " fghi" as (5, 10) overlaps the target and is its first token.
    assert target_span([(0, 5), (5, 10)], 6, 10) == (1, 2)


def test_encode_paragraph_appends_eos_and_no_bos(olmo_tokenizer):
    ids = encode_paragraph(olmo_tokenizer, "Velmora lies on the river Quenn.")
    assert ids[-1] == olmo_tokenizer.eos_token_id == 50279
    assert olmo_tokenizer.eos_token_id not in ids[:-1]
    assert ids[:-1] == olmo_tokenizer("Velmora lies on the river Quenn.", add_special_tokens=False)["input_ids"]
    assert encode_paragraphs(olmo_tokenizer, ["a b", "Velmora lies on the river Quenn."])[1] == ids
