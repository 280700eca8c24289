"""Summarising and validating a knowledge set: counts, token lengths, paragraphs too long for a context, and
the value space of sets whose probes ask for attribute values.

`validate_knowledge` is what `injection knowledge validate` runs: load (every item checked, see
fictional_knowledge.checks), then count, and with a tokenizer measure.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from fictional_knowledge.encode import encode_paragraphs, encode_probes
from fictional_knowledge.load import load_knowledge_checked
from fictional_knowledge.model import PRIME_KIND, PROBE_KINDS, KnowledgeSet, ProbeKind, ValueSpace
from harness.tokenizers import load_tokenizer

# --------------------------------------------------------------------------------------------- summary


@dataclass(frozen=True)
class LengthStats:
    count: int
    min: int
    mean: float
    max: int
    p95: float

    @classmethod
    def of(cls, values: Sequence[int]) -> LengthStats:
        arr = np.asarray(values, dtype=np.int64)
        return cls(int(arr.size), int(arr.min()), float(arr.mean()), int(arr.max()), float(np.percentile(arr, 95)))

    def __str__(self) -> str:
        return f"min {self.min}, mean {self.mean:.1f}, p95 {self.p95:.1f}, max {self.max} (n={self.count})"


@dataclass(frozen=True)
class TokenReport:
    """Token lengths under one tokenizer. Paragraph lengths include the EOS that splicing appends."""

    tokenizer: str
    seq_len: int
    paragraphs: LengthStats  # original texts
    variants: LengthStats  # originals and paraphrases: every text that can be injected
    probes: dict[ProbeKind, LengthStats]  # input + " " + target
    targets: dict[ProbeKind, LengthStats]  # target-span tokens
    too_long: tuple[tuple[int, int, int], ...]  # (paragraph, variant, tokens) longer than seq_len


@dataclass(frozen=True)
class KnowledgeSummary:
    source: str
    n_paragraphs: int
    probes: dict[ProbeKind, int]
    paraphrases: dict[int, int]  # paraphrase count -> number of paragraphs with it
    mem_not_verbatim: int  # mem probes whose input + " " + target is not a substring of the paragraph
    ignored_fields: tuple[str, ...] = ()
    tokens: TokenReport | None = field(default=None)
    value_space: ValueSpace | None = None
    priming: int = 0
    """Priming probes (kind `prime`)."""

    def lines(self) -> list[str]:
        dist = ", ".join(f"{n} paraphrases: {c}" for n, c in sorted(self.paraphrases.items()))
        out = [
            f"{self.source}: {self.n_paragraphs} paragraphs",
            "probes: "
            + ", ".join(f"{k} {self.probes[k]}" for k in PROBE_KINDS)
            + f" (total {sum(self.probes.values())})",
            f"paraphrases per paragraph: {dist}",
            f"mem probes not verbatim in their paragraph: {self.mem_not_verbatim} (informational)",
        ]
        if self.priming:
            out.insert(2, f"priming probes: {self.priming} (logged by runs with priming_probes)")
        if self.ignored_fields:
            out.append("ignored fields: " + ", ".join(self.ignored_fields))
        space = self.value_space
        if space is not None:
            per_person = sum(a.bits for a in space.attributes)
            out.append(
                f"value space: {len(space.attributes)} attributes, {self.n_paragraphs * len(space.attributes)} "
                f"facts, {self.n_paragraphs * per_person:,.0f} bits in all ({per_person:.2f} per paragraph)"
            )
            out += [
                f"  attribute {a.name}: value set {a.value_set}, {a.size:,} values ({a.bits:.2f} bits)"
                for a in space.attributes
            ]
        t = self.tokens
        if t is not None:
            out += [
                f"tokens ({t.tokenizer}), paragraphs incl. EOS: {t.paragraphs}",
                f"tokens, all variants incl. EOS: {t.variants}",
            ]
            out += [f"tokens, {k} probes (input + target): {t.probes[k]}; targets: {t.targets[k]}" for k in t.probes]
            if t.too_long:
                where = ", ".join(f"paragraph {p} variant {v} ({n} tokens)" for p, v, n in t.too_long)
                out.append(f"too long for seq_len {t.seq_len}: {where}")
            else:
                out.append(f"every variant fits seq_len {t.seq_len}")
        return out


def token_report(knowledge: KnowledgeSet, tokenizer, tokenizer_name: str, seq_len: int) -> TokenReport:
    originals = [len(ids) for ids in encode_paragraphs(tokenizer, [p.text for p in knowledge.paragraphs])]
    addresses = [(p.id, j) for p in knowledge.paragraphs for j in range(p.n_variants)]
    lengths = [len(ids) for ids in encode_paragraphs(tokenizer, [knowledge[p].variant(j) for p, j in addresses])]
    too_long = tuple((p, j, n) for (p, j), n in zip(addresses, lengths) if n > seq_len)
    probes: dict[ProbeKind, LengthStats] = {}
    targets: dict[ProbeKind, LengthStats] = {}
    for kind in PROBE_KINDS:
        encoded = encode_probes(tokenizer, [r for r in knowledge.iter_probes() if r.kind == kind])
        if encoded:
            probes[kind] = LengthStats.of([len(e.input_ids) for e in encoded])
            targets[kind] = LengthStats.of([e.n_target for e in encoded])
    return TokenReport(
        tokenizer_name, seq_len, LengthStats.of(originals), LengthStats.of(lengths), probes, targets, too_long
    )


def summarize(
    knowledge: KnowledgeSet,
    tokenizer=None,
    tokenizer_name: str = "",
    seq_len: int = 2048,
    ignored_fields: Sequence[str] = (),
) -> KnowledgeSummary:
    counts = {k: sum(len(p.probes.get(k, ())) for p in knowledge.paragraphs) for k in PROBE_KINDS}
    paraphrases = Counter(len(p.paraphrases) for p in knowledge.paragraphs)
    not_verbatim = sum(1 for p in knowledge.paragraphs for probe in p.probes.get("mem", ()) if probe.text not in p.text)
    tokens = token_report(knowledge, tokenizer, tokenizer_name, seq_len) if tokenizer is not None else None
    return KnowledgeSummary(
        knowledge.source,
        len(knowledge),
        counts,
        dict(sorted(paraphrases.items())),
        not_verbatim,
        tuple(ignored_fields),
        tokens,
        knowledge.value_space,
        sum(len(p.probes.get(PRIME_KIND, ())) for p in knowledge.paragraphs),
    )


def validate_knowledge(path_or_name: str, tokenizer: str | None = None, seq_len: int = 2048) -> KnowledgeSummary:
    """Load and check a knowledge set; with a tokenizer also measure token lengths.

    Raises UserError for malformed items and for variants longer than `seq_len` tokens (with EOS).
    """
    knowledge, ignored = load_knowledge_checked(path_or_name)
    tok = None
    if tokenizer is not None:
        tok = load_tokenizer(tokenizer)
    summary = summarize(knowledge, tok, tokenizer or "", seq_len, ignored)
    return summary
