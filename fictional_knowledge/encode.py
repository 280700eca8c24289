"""Tokenizing probes and paragraphs for any Hugging Face fast tokenizer (docs/concepts.md: probes and splicing).

A probe is scored as one text, `input + " " + target`. The target tokens are found from the character
offsets of that joint tokenization, never by tokenizing the target alone: BPE tokenizers of the GPT-2
family (OLMo's included) merge the separating space into the first target token (" Paris"), so the
target tokenized alone would give different ids than the model actually sees.

Span rule: a token belongs to the target when its character span overlaps `[len(input) + 1, len(text))`.
A token that straddles the boundary, e.g. the separating space merged into the first target token, or
(for tokenizers that merge across spaces) the end of the input merged with the start of the target, is
therefore counted as a target token. Tokens with an empty character span (special tokens) never do.
No special tokens are added: OLMo's tokenizer has no BOS, and the probe must look like running text.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from fictional_knowledge.model import Probe, ProbeRef
from harness.errors import UserError


@dataclass(frozen=True)
class EncodedProbe:
    """Token ids of `input + " " + target`; `input_ids[target_start:target_end]` are the target tokens."""

    input_ids: list[int]
    target_start: int
    target_end: int

    @property
    def target_ids(self) -> list[int]:
        return self.input_ids[self.target_start : self.target_end]

    @property
    def n_target(self) -> int:
        return self.target_end - self.target_start


def _require_fast(tokenizer) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise UserError(
            f"tokenizer {type(tokenizer).__name__} is not a fast tokenizer; probe spans need character offsets "
            "(return_offsets_mapping), which only fast tokenizers provide"
        )


def target_span(offsets: Sequence[tuple[int, int]], target_char_start: int, text_len: int) -> tuple[int, int]:
    """Token range `[start, end)` of the tokens whose character span overlaps `[target_char_start, text_len)`."""
    inside = [i for i, (s, e) in enumerate(offsets) if e > s and s < text_len and e > target_char_start]
    if not inside:
        raise ValueError(f"no token overlaps characters [{target_char_start}, {text_len})")
    return inside[0], inside[-1] + 1


def _as_probe(item: Probe | ProbeRef) -> Probe:
    return item.probe if isinstance(item, ProbeRef) else item


def _encoded(probe: Probe, ids: list[int], offsets: Sequence[tuple[int, int]]) -> EncodedProbe:
    text = probe.text
    start, end = target_span(offsets, len(probe.input) + 1, len(text))
    if start == 0:
        # Nothing to condition on: the first target token would have no prediction at all.
        raise UserError(f"probe {probe.input!r} -> {probe.target!r}: the target starts at the first token")
    return EncodedProbe(list(ids), start, end)


def encode_probe(tokenizer, probe: Probe | ProbeRef) -> EncodedProbe:
    """Ids of `probe.input + " " + probe.target` and the target's token span (see the module docstring)."""
    _require_fast(tokenizer)
    probe = _as_probe(probe)
    enc = tokenizer(probe.text, add_special_tokens=False, return_offsets_mapping=True)
    return _encoded(probe, enc["input_ids"], enc["offset_mapping"])


def encode_probes(tokenizer, probes: Iterable[Probe | ProbeRef]) -> list[EncodedProbe]:
    """`encode_probe` for many probes in one batched call of the fast tokenizer; same order as given."""
    _require_fast(tokenizer)
    plain = [_as_probe(p) for p in probes]
    if not plain:
        return []
    enc = tokenizer([p.text for p in plain], add_special_tokens=False, return_offsets_mapping=True)
    return [_encoded(p, ids, offs) for p, ids, offs in zip(plain, enc["input_ids"], enc["offset_mapping"])]


def _eos_id(tokenizer, eos_token_id: int | None) -> int:
    eos = eos_token_id if eos_token_id is not None else tokenizer.eos_token_id
    if eos is None:
        raise UserError(
            f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no EOS token; paragraphs need one appended"
        )
    return int(eos)


def encode_paragraph(tokenizer, text: str, eos_token_id: int | None = None) -> list[int]:
    """Ids of a paragraph with EOS appended (no BOS or other special tokens): what is spliced.

    `eos_token_id` is the run's end-of-text id (the model config's); it defaults to the tokenizer's. They differ
    for OLMo checkpoints whose config names the `...pii-special` tokenizer, where `<|endoftext|>` is id 0 while
    the model was trained with 50279 between documents."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) + [_eos_id(tokenizer, eos_token_id)]


def encode_paragraphs(tokenizer, texts: Sequence[str], eos_token_id: int | None = None) -> list[list[int]]:
    """`encode_paragraph` for many texts in one batched call."""
    if not texts:
        return []
    eos = _eos_id(tokenizer, eos_token_id)
    return [list(ids) + [eos] for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]
