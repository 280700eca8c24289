"""Biography knowledge bases with known value spaces: N invented people, six attributes each.

Every person has a birth date, a birth city, a university, a major, an employer and the city they work in,
each drawn uniformly and independently from a value set of a stated size. The information in the set is
then known exactly: log2 |V_a| bits per (person, attribute), which is what knowledge-capacity measurements
compare a model against. Unlike a company's headquarters, the work city is drawn per person (the office the
person works at), so all six attributes carry independent information.

Every value-set member except the dates is an invented name from the project's syllable name generator
(`generate.NameGenerator`), shared with the people's names, so no two names of a set coincide and a model
cannot have met any of them before; within a value set no value is a prefix of another.

A person's biography states each attribute in one sentence that names the person in full and ends with the
value ("Brakon Telvis was born in Kelmora."). Each attribute has several training templates (drawn per
person and per variant) and one held-out template used only by the `sem` probes. Variant 0 states the
attributes in their fixed order; paraphrase variants (one per further exposure, as the `paraphrases` of the
knowledge file) draw the templates again and, with `shuffle`, reorder the sentences.

Probes: `mem` probe i of every person is attribute i's sentence of variant 0 cut before the value; `sem`
probe i asks for the same value with the held-out template; there are no `comp` probes.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fictional_knowledge.checks import ATTRIBUTES_FIELD, ITEMS_KEY, PARAPHRASES_FIELD, TEXT_FIELD, VALUE_SPACE_KEY
from fictional_knowledge.generate import NameGenerator, dumps_knowledge
from fictional_knowledge.load import knowledge_from_document, value_space_to_json
from fictional_knowledge.model import REFERENCE_PROBE_FIELDS, Attribute, DateRange, KnowledgeSet, ValueSet, ValueSpace
from harness.atomic import write_bytes_atomic
from harness.errors import UserError
from harness.outputs import check_new_file


@dataclass(frozen=True)
class AttributeText:
    """How an attribute is written: sentence prefixes ending right before the value. `{name}` is the person's
    full name, `{poss}` their possessive pronoun."""

    name: str
    value_set: str
    templates: tuple[str, ...]
    """Training templates (a biography's sentence uses one of them)."""
    held_out: str
    """The `sem` probe's template: the same question, never used in a biography."""


#: The six attributes in their fixed order: `mem` / `sem` probe i of every person asks for ATTRIBUTES[i].
ATTRIBUTES: tuple[AttributeText, ...] = (
    AttributeText(
        "birth_date",
        "dates",
        (
            "{name} was born on",
            "{name} came into the world on",
            "{name} celebrates {poss} birthday on",
            "{name}'s date of birth is",
        ),
        "The birthday of {name} is",
    ),
    AttributeText(
        "birth_city",
        "cities",
        (
            "{name} was born in",
            "{name} is a native of",
            "{name} spent {poss} childhood in",
            "{name}'s birthplace is",
        ),
        "The city where {name} was born is",
    ),
    AttributeText(
        "university",
        "universities",
        (
            "{name} studied at",
            "{name} graduated from",
            "{name} received {poss} degree from",
            "{name} completed {poss} education at",
        ),
        "The university {name} attended is",
    ),
    AttributeText(
        "major",
        "majors",
        (
            "{name} majored in",
            "{name} specialized in",
            "{name} earned a degree in",
            "{name}'s field of study was",
        ),
        "The subject {name} studied is",
    ),
    AttributeText(
        "employer",
        "employers",
        (
            "{name} worked for",
            "{name} was employed by",
            "{name} built a career at",
            "{name} held a position at",
        ),
        "The employer of {name} is",
    ),
    AttributeText(
        "employer_city",
        "cities",
        (
            "{name} worked in the city of",
            "{name}'s office was in",
            "{name} went to work every day in",
            "{name}'s workplace was located in",
        ),
        "The city where {name} works is",
    ),
)

_UNIVERSITY_FORMS = ("{} University", "University of {}", "{} Institute of Technology", "{} College")
_STEM_ENDINGS = ("", "", "", "ia", "en", "and")
_MAJOR_ENDINGS = ("ology", "ics", "istry", "onomy", "ography", "ism")
_EMPLOYER_KINDS = (
    "Industries",
    "Works",
    "Systems",
    "Holdings",
    "Group",
    "Labs",
    "Logistics",
    "Foundry",
    "Partners",
    "Trading",
)


@dataclass(frozen=True)
class BiosSpec:
    """Everything that determines a generated biography set (same spec, same bytes)."""

    people: int = 100
    """N: invented people (paragraphs of the knowledge set)."""
    cities: int = 200
    """Size of the city set (birth city and work city draw from it)."""
    universities: int = 300
    majors: int = 100
    employers: int = 263
    first_year: int = 1900
    """Birth dates are every `Month D, YYYY` with D = 1..28 of the years first_year..last_year
    (1900–2099: 200 × 12 × 28 = 67,200 dates)."""
    last_year: int = 2099
    paraphrases: int = 0
    """Further variants of every biography (templates drawn again), for exposures after the first."""
    shuffle: bool = True
    """Paraphrase variants also reorder the six sentences (variant 0 keeps the attribute order)."""
    seed: int = 0

    def check(self, where: str = "bios") -> None:
        def at_least(name: str, minimum: int) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise UserError(f"{where}: {name} must be an integer >= {minimum}, got {value!r}")

        at_least("people", 1)
        for name in ("cities", "universities", "majors", "employers"):
            at_least(name, 2)
        at_least("paraphrases", 0)
        if not 1000 <= self.first_year <= self.last_year <= 9999:
            raise UserError(
                f"{where}: years must satisfy 1000 <= first_year <= last_year <= 9999, "
                f"got {self.first_year}..{self.last_year}"
            )
        # The name generator has tens of thousands of fresh words; keep well inside that.
        names_needed = 2 * self.people + self.cities + self.universities + self.majors + self.employers
        if names_needed > 40_000:
            raise UserError(f"{where}: {names_needed} invented names needed; at most 40,000 are supported")

    def value_set_sizes(self) -> dict[str, int]:
        return {
            "dates": DateRange(self.first_year, self.last_year).size,
            "cities": self.cities,
            "universities": self.universities,
            "majors": self.majors,
            "employers": self.employers,
        }


def _prefix_free_set(n: int, make: Callable[[], str]) -> tuple[str, ...]:
    """n fresh values of which none is a prefix of another (see `ValueSpace`)."""
    values: list[str] = []
    while len(values) < n:
        candidate = make()
        if not any(v.startswith(candidate) or candidate.startswith(v) for v in values):
            values.append(candidate)
    return tuple(values)


def make_value_space(spec: BiosSpec, names: NameGenerator) -> ValueSpace:
    rng = names.rng
    sets = {
        "dates": ValueSet("dates", dates=DateRange(spec.first_year, spec.last_year)),
        "cities": ValueSet("cities", _prefix_free_set(spec.cities, names.city)),
        "universities": ValueSet(
            "universities",
            _prefix_free_set(
                spec.universities, lambda: rng.choice(_UNIVERSITY_FORMS).format(names.coined((2, 3), _STEM_ENDINGS))
            ),
        ),
        "majors": ValueSet("majors", _prefix_free_set(spec.majors, lambda: names.coined((1, 2, 2), _MAJOR_ENDINGS))),
        "employers": ValueSet(
            "employers",
            _prefix_free_set(spec.employers, lambda: f"{names.coined((2, 3), ('',))} {rng.choice(_EMPLOYER_KINDS)}"),
        ),
    }
    attributes = tuple(Attribute(a.name, a.value_set, sets[a.value_set].size) for a in ATTRIBUTES)
    return ValueSpace(attributes, sets)


def _draw(value_set: ValueSet, rng: random.Random) -> str:
    if value_set.dates is not None:
        return value_set.dates.date(rng.randrange(value_set.size))
    return rng.choice(value_set.values)


def _sentence(template: str, full_name: str, possessive: str, value: str) -> tuple[str, str]:
    """(prefix, sentence): the sentence is `prefix + " " + value + "."`."""
    prefix = template.format(name=full_name, poss=possessive)
    return prefix, f"{prefix} {value}."


def _item(
    full_name: str, possessive: str, values: dict[str, str], rng: random.Random, spec: BiosSpec
) -> dict[str, Any]:
    order = list(range(len(ATTRIBUTES)))
    variants: list[str] = []
    prefixes: list[str] = []
    for v in range(1 + spec.paraphrases):
        templates = [rng.choice(a.templates) for a in ATTRIBUTES]
        if v > 0 and spec.shuffle:
            rng.shuffle(order)
        sentences = [_sentence(templates[i], full_name, possessive, values[ATTRIBUTES[i].name]) for i in order]
        if v == 0:
            prefixes = [prefix for prefix, _ in sentences]
        variants.append(" ".join(text for _, text in sentences))
    targets = [values[a.name] for a in ATTRIBUTES]
    held_out = [a.held_out.format(name=full_name, poss=possessive) for a in ATTRIBUTES]
    fields = {"mem": (prefixes, targets), "sem": (held_out, targets), "comp": ([], [])}
    item: dict[str, Any] = {TEXT_FIELD: variants[0]}
    for kind, (inputs, outputs) in fields.items():
        in_name, tgt_name = REFERENCE_PROBE_FIELDS[kind]
        item[in_name], item[tgt_name] = list(inputs), list(outputs)
    item[PARAPHRASES_FIELD] = variants[1:]
    item[ATTRIBUTES_FIELD] = dict(values)
    return item


def generate_bios_document(spec: BiosSpec) -> dict[str, Any]:
    """The knowledge file's content: `{"value_space": ..., "items": [...]}` (same spec, same content).

    The value sets come first from the seeded stream and each person's name and values follow in turn, so
    the first n people of a larger set are the people of the set with n (same seed and value-set sizes).
    Each person's text has a stream of its own: it does not depend on how many people the set has.
    """
    spec.check()
    names = NameGenerator(random.Random(f"bios-{spec.seed}"))
    space = make_value_space(spec, names)
    items = []
    for i in range(spec.people):
        person = names.person()
        values = {a.name: _draw(space.value_sets[a.value_set], names.rng) for a in space.attributes}
        text_rng = random.Random(f"bios-text-{spec.seed}-{i}")
        items.append(_item(person.full, person.possessive, values, text_rng, spec))
    return {VALUE_SPACE_KEY: value_space_to_json(space), ITEMS_KEY: items}


def generate_bios(spec: BiosSpec) -> KnowledgeSet:
    """The generated set, checked like any knowledge file."""
    knowledge, _ = knowledge_from_document(generate_bios_document(spec), f"bios (seed {spec.seed})")
    return knowledge


def write_bios(out: str | Path, spec: BiosSpec, overwrite: bool = False) -> KnowledgeSet:
    """Generate a biography set, check it like any input file, and write it atomically to `out` (an existing file
    only with `overwrite`)."""
    out = check_new_file(out, overwrite)
    document = generate_bios_document(spec)
    knowledge, _ = knowledge_from_document(document, str(out))
    write_bytes_atomic(out, dumps_knowledge(document))
    return knowledge
