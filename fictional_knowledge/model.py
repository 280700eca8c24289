"""The typed model of a knowledge set (docs/concepts.md): paragraphs with paraphrases, probes by kind, and
(optionally) the closed value space that the probes' answers come from."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal

ProbeKind = Literal["mem", "sem", "comp", "prime"]

#: Probe kinds in the order they are logged. `mem`: a sentence of the paragraph cut before a fact;
#: `sem`: the same fact in other words; `comp`: needs two facts combined.
PROBE_KINDS: tuple[ProbeKind, ...] = ("mem", "sem", "comp")
#: Priming probes (optional, logged where a run asks for them): a context unrelated to the paragraph that ends where
#: one of its facts' targets, the keyword, could follow; their target is that keyword (Sun et al. 2025).
PRIME_KIND: ProbeKind = "prime"

#: Field names of the reference JSON format for each probe kind (input field, target field).
REFERENCE_PROBE_FIELDS: dict[ProbeKind, tuple[str, str]] = {
    "mem": ("mem_input", "mem_target"),
    "sem": ("gen_input", "gen_target"),
    "comp": ("hard_gen_input", "hard_gen_target"),
    "prime": ("prime_input", "prime_target"),
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
    attributes: dict[str, str] = field(default_factory=dict)
    """Attribute name -> value, for sets with a value space (empty otherwise)."""

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


MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
_DATE = re.compile(r"^(?P<month>[A-Z][a-z]+) (?P<day>[1-9][0-9]?), (?P<year>[0-9]{4})$")


@dataclass(frozen=True)
class DateRange:
    """Every date `Month D, YYYY` with D in 1..days_per_month of every month of the years first..last
    (days_per_month = 28 keeps every month the same size, so a uniform draw is a uniform date)."""

    first_year: int
    last_year: int
    days_per_month: int = 28

    @property
    def size(self) -> int:
        return (self.last_year - self.first_year + 1) * len(MONTHS) * self.days_per_month

    def date(self, index: int) -> str:
        """The index-th date in calendar order (0 <= index < size)."""
        year, rest = divmod(index, len(MONTHS) * self.days_per_month)
        month, day = divmod(rest, self.days_per_month)
        return f"{MONTHS[month]} {day + 1}, {self.first_year + year}"

    def __contains__(self, value: object) -> bool:
        m = _DATE.match(value) if isinstance(value, str) else None
        return (
            m is not None
            and m["month"] in MONTHS
            and 1 <= int(m["day"]) <= self.days_per_month
            and self.first_year <= int(m["year"]) <= self.last_year
        )


@dataclass(frozen=True)
class ValueSet:
    """The values an attribute can take: an explicit list of distinct strings, or a date range."""

    name: str
    values: tuple[str, ...] = ()
    dates: DateRange | None = None

    @property
    def size(self) -> int:
        return self.dates.size if self.dates is not None else len(self.values)

    def __contains__(self, value: object) -> bool:
        return value in self.dates if self.dates is not None else value in self._members

    @cached_property
    def _members(self) -> frozenset[str]:
        return frozenset(self.values)


@dataclass(frozen=True)
class Attribute:
    """One attribute of every paragraph's subject, answered by probe `index` of the `mem` (and `sem`) kind."""

    name: str
    value_set: str
    size: int
    """|V_a|: how many values the attribute can take (the size of its value set)."""

    @property
    def bits(self) -> float:
        """log2 |V_a|: the information in one uniformly drawn value."""
        return math.log2(self.size)


@dataclass(frozen=True)
class ValueSpace:
    """The closed answer sets of a knowledge set whose probes ask for attribute values.

    Probe i of kind `mem` (and of kind `sem`, when a paragraph has sem probes) of every paragraph asks for
    attribute i, and its target is that paragraph's value of the attribute. Values are drawn uniformly from
    their value set, and no value of a set is a prefix of another, so the model's probabilities of a set's
    values (each after the same prompt) sum to at most 1: log2 |V_a| minus the model's cross-entropy of a value
    is what the model knows about it beyond a uniform guess.
    """

    attributes: tuple[Attribute, ...]
    value_sets: dict[str, ValueSet]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.attributes)

    def attribute(self, name: str) -> Attribute:
        return next(a for a in self.attributes if a.name == name)


@dataclass(frozen=True)
class KnowledgeSet:
    paragraphs: tuple[Paragraph, ...]
    source: str = ""
    value_space: ValueSpace | None = None

    def __len__(self) -> int:
        return len(self.paragraphs)

    def __getitem__(self, i: int) -> Paragraph:
        return self.paragraphs[i]

    def iter_probes(
        self, paragraphs: list[int] | None = None, kinds: tuple[ProbeKind, ...] = PROBE_KINDS
    ) -> Iterator[ProbeRef]:
        """Every probe of `kinds`, in a fixed order: paragraph, then kind (mem, sem, comp, prime), then index."""
        chosen = self.paragraphs if paragraphs is None else [self.paragraphs[i] for i in paragraphs]
        for p in chosen:
            for kind in kinds:
                for i, probe in enumerate(p.probes.get(kind, ())):
                    yield ProbeRef(p.id, kind, i, probe)

    @property
    def has_priming(self) -> bool:
        """Whether any paragraph carries priming probes."""
        return any(p.probes.get(PRIME_KIND) for p in self.paragraphs)

    def subset(self, n: int) -> KnowledgeSet:
        """The first n paragraphs (the reference experiment uses the first 120 of 130)."""
        return KnowledgeSet(self.paragraphs[:n], self.source, self.value_space)
