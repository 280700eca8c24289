"""The typed model of a knowledge set (docs/concepts.md): paragraphs with paraphrases, and probes by kind."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Literal

ProbeKind = Literal["mem", "sem", "comp"]

#: Probe kinds in the order they are logged. `mem`: a sentence of the paragraph cut before a fact;
#: `sem`: the same fact in other words; `comp`: needs two facts combined.
PROBE_KINDS: tuple[ProbeKind, ...] = ("mem", "sem", "comp")

#: Field names of the reference JSON format for each probe kind (input field, target field).
REFERENCE_PROBE_FIELDS: dict[ProbeKind, tuple[str, str]] = {
    "mem": ("mem_input", "mem_target"),
    "sem": ("gen_input", "gen_target"),
    "comp": ("hard_gen_input", "hard_gen_target"),
}


@dataclass(frozen=True)
class Probe:
    """One (input, target) pair. The scored text is `input + " " + target`."""

    input: str
    target: str

    @property
    def text(self) -> str:
        return f"{self.input} {self.target}"


@dataclass(frozen=True)
class Paragraph:
    """One unit of fictional knowledge. Variant 0 is `text`; variant j ≥ 1 is `paraphrases[j-1]`."""

    id: int
    text: str
    paraphrases: tuple[str, ...] = ()
    probes: dict[ProbeKind, tuple[Probe, ...]] = field(default_factory=dict)

    def variant(self, j: int) -> str:
        if j == 0:
            return self.text
        if not 1 <= j <= len(self.paraphrases):
            raise IndexError(f"paragraph {self.id} has {len(self.paraphrases)} paraphrases; variant {j} does not exist")
        return self.paraphrases[j - 1]

    @property
    def n_variants(self) -> int:
        return 1 + len(self.paraphrases)


@dataclass(frozen=True)
class ProbeRef:
    """A probe with its address in the knowledge set: the key of a probe-log row."""

    paragraph: int
    kind: ProbeKind
    index: int
    probe: Probe


@dataclass(frozen=True)
class KnowledgeSet:
    paragraphs: tuple[Paragraph, ...]
    source: str = ""

    def __len__(self) -> int:
        return len(self.paragraphs)

    def __getitem__(self, i: int) -> Paragraph:
        return self.paragraphs[i]

    def iter_probes(self, paragraphs: list[int] | None = None) -> Iterator[ProbeRef]:
        """Every probe, in a fixed order: paragraph, then kind (mem, sem, comp), then index."""
        chosen = self.paragraphs if paragraphs is None else [self.paragraphs[i] for i in paragraphs]
        for p in chosen:
            for kind in PROBE_KINDS:
                for i, probe in enumerate(p.probes.get(kind, ())):
                    yield ProbeRef(p.id, kind, i, probe)

    def subset(self, n: int) -> "KnowledgeSet":
        """The first n paragraphs (the reference experiment uses the first 120 of 130)."""
        return KnowledgeSet(self.paragraphs[:n], self.source)
