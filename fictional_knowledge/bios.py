"""Biography knowledge bases built as Allen-Zhu & Li build bioS ("Physics of Language Models: Part 3.3", 2024):
N invented people, each with a name and six attributes whose information is known exactly.

A person has a full name `first middle last` drawn from three pools of invented words (400, 400 and 1,000 by
default: N0 = 160,000,000 names), a gender, and six attributes: a birth date (every `Month D, YYYY` with
D = 1..28), a birth city, a university, a major, an employer, and the city the employer is based in (so the work
city follows the employer and carries no information of its own). The other five, the gender and the name are
drawn uniformly and independently; no two people share a name.

A biography states each attribute in one sentence ending with the value: the first sentence names the person in
full, the later ones use pronouns ("Brakon Kel Telvis was born on March 3, 1990. His birthplace is Kelmora. ...").
Each attribute has 50 templates (`bios_templates`). Two styles, as in the paper:

- `multi` (bioS(N), multi + permute): every draw (one per exposure, up to the corpus's passes) picks the templates
  and the order of the six sentences afresh;
- `simple` (bioS^simple): each person has one biography (templates and sentence order drawn once) that every
  exposure repeats.

Every value-set member and every name word is an invented syllable word (`generate.NameGenerator`), all distinct,
and each value set and each name pool is prefix-free, so the model's probabilities of a set's values (and of the
N0 names) after the same text sum to at most 1.

Everything is random access: person i and draw d of their biography come from streams of their own, so sets of
any size are generated, written and read one person at a time, and the first n people of a larger set are the
people of the set with n. Names are a keyed permutation of the N0 name indices (a Feistel network), so they are
distinct without remembering which were used.

Knowledge files (`write_bios`): variant 0 is draw 0 (for `simple`, the one biography), paraphrase j is draw j
(`multi` only). `mem` probe i of every person is attribute i's sentence of variant 0, cut before the value, with the
full name as subject (an isolated sentence); `sem` probe i asks for it with a held-out template. `ctx`/`name`
scores (the value in the biography's own prefix, the name at its start) are built from `Biography`'s spans.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import IO, Any, Literal

from fictional_knowledge import bios_templates as T
from fictional_knowledge.checks import ATTRIBUTES_FIELD, ITEMS_KEY, PARAPHRASES_FIELD, TEXT_FIELD, VALUE_SPACE_KEY
from fictional_knowledge.generate import NameGenerator
from fictional_knowledge.load import knowledge_from_document, value_space_to_json
from fictional_knowledge.model import REFERENCE_PROBE_FIELDS, Attribute, DateRange, KnowledgeSet, ValueSet, ValueSpace
from harness.atomic import write_atomic
from harness.errors import UserError
from harness.outputs import check_new_file


@dataclass(frozen=True)
class AttributeText:
    """How an attribute is written: training templates (sentence beginnings up to the value) and the held-out
    template of its `sem` probe."""

    name: str
    value_set: str
    templates: tuple[str, ...]
    held_out: str
    derived_from: str | None = None
    """The attribute that determines this one (the work city follows the employer): it adds no information."""


#: The six attributes in their fixed order: `mem` / `sem` probe i of every person asks for ATTRIBUTES[i].
ATTRIBUTES: tuple[AttributeText, ...] = (
    AttributeText("birth_date", "dates", T.BIRTH_DATE, T.HELD_OUT["birth_date"]),
    AttributeText("birth_city", "cities", T.BIRTH_CITY, T.HELD_OUT["birth_city"]),
    AttributeText("university", "universities", T.UNIVERSITY, T.HELD_OUT["university"]),
    AttributeText("major", "majors", T.MAJOR, T.HELD_OUT["major"]),
    AttributeText("employer", "employers", T.EMPLOYER, T.HELD_OUT["employer"]),
    AttributeText("employer_city", "cities", T.EMPLOYER_CITY, T.HELD_OUT["employer_city"], derived_from="employer"),
)
#: The gender is stated by the first pronoun; it is scored in context like a value with two choices.
GENDER = "gender"
STYLES = ("multi", "simple")

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
#: Invented words the name generator can make comfortably (it has tens of thousands).
MAX_WORDS = 40_000


@dataclass(frozen=True)
class BiosSpec:
    """Everything that determines a generated biography set (same spec, same bytes)."""

    people: int = 100
    """N: invented people (paragraphs of the knowledge set)."""
    style: Literal["multi", "simple"] = "multi"
    """multi: bioS(N) multi + permute (templates and sentence order drawn afresh for every exposure); simple:
    bioS^simple (one biography per person, repeated)."""
    first_names: int = 400
    """Size of the first-name pool (N0 = first × middle × last names)."""
    middle_names: int = 400
    last_names: int = 1000
    cities: int = 200
    """Size of the city set (birth cities, and the cities employers are based in)."""
    universities: int = 300
    majors: int = 100
    employers: int = 263
    first_year: int = 1900
    """Birth dates are every `Month D, YYYY` with D = 1..28 of the years first_year..last_year
    (1900–2099: 200 × 12 × 28 = 67,200 dates)."""
    last_year: int = 2099
    paraphrases: int = 0
    """Further draws written to a knowledge file per person (multi only), one per further exposure."""
    seed: int = 0

    def check(self, where: str = "bios") -> None:
        def at_least(name: str, minimum: int) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise UserError(f"{where}: {name} must be an integer >= {minimum}, got {value!r}")

        at_least("people", 1)
        for name in ("cities", "universities", "majors", "employers", "first_names", "middle_names", "last_names"):
            at_least(name, 2)
        at_least("paraphrases", 0)
        at_least("seed", 0)
        if self.style not in STYLES:
            raise UserError(f"{where}: style must be one of {', '.join(STYLES)}, got {self.style!r}")
        if self.style == "simple" and self.paraphrases:
            raise UserError(f"{where}: paraphrases must be 0 with style simple (one biography per person)")
        if not 1000 <= self.first_year <= self.last_year <= 9999:
            raise UserError(
                f"{where}: years must satisfy 1000 <= first_year <= last_year <= 9999, "
                f"got {self.first_year}..{self.last_year}"
            )
        words = self.first_names + self.middle_names + self.last_names
        words += self.cities + self.universities + self.majors + self.employers
        if words > MAX_WORDS:
            raise UserError(
                f"{where}: the name pools and value sets need {words:,} invented words; at most {MAX_WORDS:,} "
                "(people are combinations of the pools: any number up to first × middle × last names)"
            )
        if self.people >= 1 << 40:
            raise UserError(f"{where}: people must be below 2**40, got {self.people:,}")
        if self.people > self.name_space:
            raise UserError(
                f"{where}: {self.people:,} people need distinct names, but the pools make only "
                f"{self.first_names} × {self.middle_names} × {self.last_names} = {self.name_space:,}"
            )

    @property
    def name_space(self) -> int:
        """N0: the number of full names the pools can make."""
        return self.first_names * self.middle_names * self.last_names

    def value_set_sizes(self) -> dict[str, int]:
        return {
            "dates": DateRange(self.first_year, self.last_year).size,
            "cities": self.cities,
            "universities": self.universities,
            "majors": self.majors,
            "employers": self.employers,
        }


@dataclass(frozen=True)
class Person:
    index: int
    first: str
    middle: str
    last: str
    female: bool
    values: tuple[str, ...]
    """Values of ATTRIBUTES, in their order."""

    @property
    def name(self) -> str:
        return f"{self.first} {self.middle} {self.last}"

    @property
    def attributes(self) -> dict[str, str]:
        return {a.name: v for a, v in zip(ATTRIBUTES, self.values)}


@dataclass(frozen=True)
class Biography:
    """One biography of a person and where its parts are (character offsets, end exclusive)."""

    text: str
    name_span: tuple[int, int]
    """The full name that opens the biography."""
    value_spans: tuple[tuple[int, int], ...]
    """Each attribute's value (ATTRIBUTES order)."""
    gender_span: tuple[int, int]
    """The first word that states the gender (a pronoun)."""
    order: tuple[int, ...]
    """Attribute indices in the order of the sentences."""


# ---- randomness ---------------------------------------------------------------------------------------------

_M64 = (1 << 64) - 1
_VALUES, _DRAW, _SIMPLE = 0, 1, 2  # streams: a person's values, draw d of their biography, their one biography


def _stream(seed: int, kind: int, draw: int, person: int) -> random.Random:
    """A random stream of its own for (seed, kind, draw, person): random access to any person and draw."""
    return random.Random((((seed << 2 | kind) << 30 | draw) << 40) | person)


def _mix(x: int, key: int) -> int:
    z = (x * 0x9E3779B97F4A7C15 + key) & _M64
    z = ((z ^ (z >> 31)) * 0xBF58476D1CE4E5B9) & _M64
    return z ^ (z >> 29)


class NamePermutation:
    """A keyed permutation of 0 … n−1 (a four-round Feistel network on the smallest even power of two that holds n,
    walked until it lands below n): person i gets name index perm(i), so names never repeat."""

    def __init__(self, n: int, seed: int):
        self.n = n
        self.half = max(1, (max(n - 1, 1).bit_length() + 1) // 2)
        self.mask = (1 << self.half) - 1
        rng = random.Random(f"bios-names-{seed}")
        self.keys = [rng.getrandbits(64) for _ in range(4)]

    def _round_trip(self, x: int) -> int:
        left, right = x >> self.half, x & self.mask
        for key in self.keys:
            left, right = right, left ^ (_mix(right, key) & self.mask)
        return (left << self.half) | right

    def __call__(self, i: int) -> int:
        if not 0 <= i < self.n:
            raise IndexError(f"name index {i} outside 0..{self.n - 1}")
        x = self._round_trip(i)
        while x >= self.n:
            x = self._round_trip(x)
        return x


# ---- the generator ------------------------------------------------------------------------------------------

_PLACEHOLDER = re.compile(r"\{(S|SP|P|O)\}")


def _parts(template: str) -> list[str]:
    """A template split into text and placeholder names: ['', 'S', ' was born on']."""
    return _PLACEHOLDER.split(template)


def _prefix_free_set(n: int, make: Callable[[], str]) -> tuple[str, ...]:
    """n fresh values of which none is a prefix of another."""
    values: list[str] = []
    taken: set[str] = set()
    while len(values) < n:
        candidate = make()
        if any(candidate[:k] in taken for k in range(1, len(candidate))) or any(
            v.startswith(candidate) for v in values
        ):
            continue
        values.append(candidate)
        taken.add(candidate)
    return tuple(values)


class Bios:
    """The generator of one `BiosSpec`: its value space, name pools and employers' cities, and random access to
    every person and every draw of their biography."""

    def __init__(self, spec: BiosSpec):
        spec.check()
        self.spec = spec
        names = NameGenerator(random.Random(f"bios-{spec.seed}"))
        rng = names.rng
        self.value_space = _value_space(spec, names)
        self.first_names = _prefix_free_set(spec.first_names, lambda: names.coined((2, 2, 3), ("",)))
        self.middle_names = _prefix_free_set(spec.middle_names, lambda: names.coined((2,), ("",)))
        self.last_names = _prefix_free_set(spec.last_names, lambda: names.coined((2, 3), ("",)))
        cities = self.value_space.value_sets["cities"].size
        #: employer index -> the index of the city it is based in
        self.headquarters = tuple(rng.randrange(cities) for _ in range(spec.employers))
        self._names = NamePermutation(spec.name_space, spec.seed)
        self._parts = [[_parts(t) for t in a.templates] for a in ATTRIBUTES]
        self._sets = [self.value_space.value_sets[a.value_set] for a in ATTRIBUTES]

    @property
    def name_space(self) -> int:
        return self.spec.name_space

    @property
    def value_bits(self) -> float:
        """log2 S0: the bits of one person's values (the gender's included; the work city, which follows the
        employer, adds none)."""
        return 1.0 + sum(0.0 if a.derived_from else math.log2(s.size) for a, s in zip(ATTRIBUTES, self._sets))

    def person(self, i: int) -> Person:
        if not 0 <= i < self.spec.people:
            raise IndexError(f"person {i} outside 0..{self.spec.people - 1}")
        rng = _stream(self.spec.seed, _VALUES, 0, i)
        female = rng.random() < 0.5
        drawn = [rng.randrange(s.size) for s in self._sets[:5]]
        cities = self._sets[1]
        values = [
            self._sets[0].dates.date(drawn[0]),
            cities.values[drawn[1]],
            self._sets[2].values[drawn[2]],
            self._sets[3].values[drawn[3]],
            self._sets[4].values[drawn[4]],
            cities.values[self.headquarters[drawn[4]]],
        ]
        rest, last = divmod(self._names(i), self.spec.last_names)
        first, middle = divmod(rest, self.spec.middle_names)
        return Person(
            i, self.first_names[first], self.middle_names[middle], self.last_names[last], female, tuple(values)
        )

    def people(self, start: int = 0, stop: int | None = None) -> Iterator[Person]:
        for i in range(start, self.spec.people if stop is None else stop):
            yield self.person(i)

    def biography(self, person: Person, draw: int = 0) -> Biography:
        """Draw `draw` of the person's biography (style `simple`: their one biography, whatever the draw)."""
        rng = (
            _stream(self.spec.seed, _SIMPLE, 0, person.index)
            if self.spec.style == "simple"
            else _stream(self.spec.seed, _DRAW, draw, person.index)
        )
        templates = [rng.randrange(len(a.templates)) for a in ATTRIBUTES]
        order = list(range(len(ATTRIBUTES)))
        rng.shuffle(order)
        words = _pronouns(person.female)
        text: list[str] = []
        at = 0
        spans: list[tuple[int, int]] = [(0, 0)] * len(ATTRIBUTES)
        gender: tuple[int, int] | None = None
        for n, a in enumerate(order):
            if n:
                text.append(" ")
                at += 1
            for k, part in enumerate(self._parts[a][templates[a]]):
                if k % 2 == 0:
                    piece = part
                elif n == 0 and part in ("S", "SP"):
                    piece = person.name if part == "S" else f"{person.name}'s"
                else:
                    piece = words[part]
                    gender = gender or (at, at + len(piece))
                text.append(piece)
                at += len(piece)
            value = person.values[a]
            spans[a] = (at + 1, at + 1 + len(value))
            text.append(f" {value}.")
            at += len(value) + 2
        if gender is None:  # cannot happen: six sentences, five after the first start with a pronoun
            raise AssertionError("no pronoun in a biography")
        return Biography("".join(text), (0, len(person.name)), tuple(spans), gender, tuple(order))

    def mem_input(self, person: Person, attribute: int) -> str:
        """Attribute i's sentence of draw 0 cut before the value, with the full name as subject (isolated)."""
        rng = (
            _stream(self.spec.seed, _SIMPLE, 0, person.index)
            if self.spec.style == "simple"
            else _stream(self.spec.seed, _DRAW, 0, person.index)
        )
        templates = [rng.randrange(len(a.templates)) for a in ATTRIBUTES]
        words = _pronouns(person.female)
        out = []
        for k, part in enumerate(self._parts[attribute][templates[attribute]]):
            if k % 2 == 0:
                out.append(part)
            elif part in ("S", "SP"):
                out.append(person.name if part == "S" else f"{person.name}'s")
            else:
                out.append(words[part])
        return "".join(out)

    def item(self, person: Person) -> dict[str, Any]:
        """The person as an item of a knowledge file (module docstring)."""
        variants = [self.biography(person, d).text for d in range(1 + self.spec.paraphrases)]
        targets = list(person.values)
        fields = {
            "mem": ([self.mem_input(person, i) for i in range(len(ATTRIBUTES))], targets),
            "sem": ([a.held_out.format(name=person.name) for a in ATTRIBUTES], targets),
            "comp": ([], []),
        }
        item: dict[str, Any] = {TEXT_FIELD: variants[0]}
        for kind, (inputs, outputs) in fields.items():
            in_name, tgt_name = REFERENCE_PROBE_FIELDS[kind]
            item[in_name], item[tgt_name] = list(inputs), list(outputs)
        item[PARAPHRASES_FIELD] = variants[1:]
        item[ATTRIBUTES_FIELD] = person.attributes
        return item

    def items(self, start: int = 0, stop: int | None = None) -> Iterator[dict[str, Any]]:
        for person in self.people(start, stop):
            yield self.item(person)

    @cached_property
    def value_space_json(self) -> dict[str, Any]:
        return value_space_to_json(self.value_space)


def _pronouns(female: bool) -> dict[str, str]:
    if female:
        return {"S": "She", "SP": "Her", "P": "her", "O": "her"}
    return {"S": "He", "SP": "His", "P": "his", "O": "him"}


def _value_space(spec: BiosSpec, names: NameGenerator) -> ValueSpace:
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


# ---- knowledge files ----------------------------------------------------------------------------------------


def generate_bios_document(spec: BiosSpec) -> dict[str, Any]:
    """The knowledge file's content as one object (small sets; `write_bios` streams any size)."""
    bios = Bios(spec)
    return {VALUE_SPACE_KEY: bios.value_space_json, ITEMS_KEY: list(bios.items())}


def generate_bios(spec: BiosSpec) -> KnowledgeSet:
    """The generated set, checked like any knowledge file."""
    knowledge, _ = knowledge_from_document(generate_bios_document(spec), f"bios (seed {spec.seed})")
    return knowledge


def write_bios(out: str | Path, spec: BiosSpec, overwrite: bool = False) -> Bios:
    """Write a biography set to `out` (an existing file only with `overwrite`) atomically, one person at a time
    (memory does not grow with the number of people); the same bytes as
    `dumps_knowledge(generate_bios_document(spec))`. Returns the generator."""
    out = check_new_file(out, overwrite)
    bios = Bios(spec)
    write_people(out, bios, range(spec.people))
    return bios


def write_people(out: str | Path, bios: Bios, people: Iterable[int]) -> Path:
    """A knowledge file of the given people of a set (item i is person people[i]), written atomically one person
    at a time in the layout of `generate.dumps_knowledge`."""

    def write(handle: IO[bytes]) -> None:
        head = json.dumps({VALUE_SPACE_KEY: bios.value_space_json}, ensure_ascii=False, indent=1)
        handle.write(f'{head[:-2]},\n "{ITEMS_KEY}": ['.encode())
        for i, person in enumerate(people):
            text = json.dumps(bios.item(bios.person(person)), ensure_ascii=False, indent=1).replace("\n", "\n  ")
            handle.write(f"{',' if i else ''}\n  {text}".encode())
        handle.write(b"\n ]\n}\n")

    return write_atomic(out, write)
