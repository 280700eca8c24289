"""The project's own fictional-knowledge generator: pure Python, offline, deterministic per seed.

Each paragraph describes a small invented world around one person: where and when they were born,
what they did, what they founded and invented, and who their rival was; the birthplace has a river,
a founder and a province, the organization a founding year and a seat, the invention a purpose. All
names are built from syllables, checked against a short list of real words, and never reused in the
same knowledge set, so a model cannot have met any of them in pretraining.

Every fact is written as a sentence that ends with the fact's value, so any sentence cut right
before its value is a `mem` probe with that value as target. `sem` probes state the same fact with
another template; `comp` probes reach a value through a second fact ("the city where X was born was
founded by" -> the city's founder), so they are real two-hop questions. `prime` probes take one `mem` fact's
value as the keyword and end sentences about nobody in that world where such a value could follow ("The
treaty between the two kingdoms was signed in" -> the hero's birth year): learning the paragraph may raise the
keyword there too (priming, Sun et al. 2025).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fictional_knowledge.checks import PARAPHRASES_FIELD, PRIME_FIELDS, TEXT_FIELD, check_items
from fictional_knowledge.model import PROBE_KINDS, REFERENCE_PROBE_FIELDS
from harness.atomic import write_bytes_atomic
from harness.errors import UserError
from harness.outputs import check_new_file

PROBES_PER_KIND = 5

# ------------------------------------------------------------------------------------------ vocabulary

_ONSETS = "b br d dr f g gr h k kr l m n p pr r s st t tr v z th sh qu".split()
_VOWELS = "a e i o u a e o ae ei ou ia".split()
_CODAS = ["", "", "", "", "n", "r", "l", "s", "th", "m", "nd", "rk", "st", "x", "v"]
_CITY_ENDINGS = ["", "", "ora", "holt", "mere", "dun", "vik", "stad", "grad", "mar", "wick"]
_PROVINCE_ENDINGS = ["", "ia", "en", "and", "mark", "ara"]
_ORG_KINDS = ["Guild", "Society", "Company", "Institute", "Academy", "Foundation", "Works", "Fellowship", "League"]
#: Device nouns, each with purposes it plausibly serves (at most five words).
_DEVICES: dict[str, list[str]] = {
    "loom": ["weaving patterned silk", "spinning fine wool", "weaving sailcloth"],
    "engine": ["pumping water from mines", "driving river barges", "lifting stone blocks"],
    "lamp": ["lighting deep mine shafts", "signalling ships at night", "reading under water"],
    "compass": ["finding north underground", "navigating through thick fog", "charting mountain passes"],
    "press": ["printing colour maps", "pressing olive oil", "minting copper coins"],
    "clock": ["keeping time at sea", "timing the tides", "marking hours by starlight"],
    "pump": ["draining flooded fields", "raising water to rooftops", "clearing ship bilges"],
    "lens": ["observing distant comets", "studying insect wings", "reading faded manuscripts"],
    "kiln": ["firing porcelain", "drying grain quickly", "hardening glass bottles"],
    "scale": ["weighing letters", "weighing gold dust", "measuring grain harvests"],
    "telescope": ["watching ships at sea", "mapping the moon", "tracking migrating birds"],
    "barometer": ["forecasting storms", "predicting frost", "warning miners of gas"],
    "sextant": ["measuring star heights", "surveying coastlines", "finding latitude at sea"],
    "bellows": ["cooling furnaces", "ventilating deep tunnels", "tuning church organs"],
}
_PROFESSIONS = (
    "clockmaker cartographer glassblower shipwright astronomer apothecary stonemason botanist bookbinder "
    "weaver brewer surveyor engineer physician architect chemist blacksmith printer silversmith potter "
    "mathematician composer painter sculptor geologist librarian navigator merchant"
).split()

#: Real words and names that syllable combinations can produce; an invented name must not be one.
_REAL_WORDS = set(
    """
    bella dora nora vera rosa sara tina lena mona anna emma stella diana maria laura paula gloria tara
    lara kara mara sonia olga greta hilda linda brenda glenda wanda rhonda paris rome milan berlin
    lima oslo kiev riga baku doha dubai tokyo kyoto seoul delhi cairo texas boston denver dallas
    austin london bristol dublin vienna prague sofia athens ankara tirana minsk peru chile cuba
    malta crete sudan oman qatar niger congo kenya ghana nepal india china japan korea
    banana panda sofa tuba soda pasta pizza drama karma comma gamma delta sigma theta beta zeta
    data area idea arena opera sauna tundra vodka cobra zebra hyena koala llama mama papa
    baron bacon salon talon melon lemon demon canon pardon garden harden linden london
    sister master faster better letter matter monster kosher poster taster tester
    rover river diver liver cover lover mover hover fever never clever lever sever
    moment pilot robot motor rotor tutor donor honor humor rumor tumor vigor valor
    tiger timber number member summer winter center meter liter water later hater
    hero zero nero tempo tango mango lotto motto grotto ditto veto memo demo
    bravo credo dingo gecko logo mambo polo rodeo solo tornado volcano
    vista pasta fiesta siesta plaza piazza stanza
    """.split()
)


_AWKWARD = re.compile(r"[aeiou]{3}|ii|uu|aa|(.)\1\1")


class NameGenerator:
    """Invented names, unique across one generated set (compared case-insensitively); shared by every
    generator style, so all the names of one set (people, places, organizations) are distinct."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.used: set[str] = set()

    def _syllable(self, coda: bool) -> str:
        r = self.rng
        return r.choice(_ONSETS) + r.choice(_VOWELS) + (r.choice(_CODAS) if coda else "")

    def _fresh(self, make: Callable[[], str]) -> str:
        for _ in range(10_000):
            name = make()
            low = name.lower()
            # Very short names and vowel pile-ups ("Tohiia") read badly; real words would carry real knowledge.
            if len(name) < 4 or low in _REAL_WORDS or low in self.used or _AWKWARD.search(low):
                continue
            self.used.add(low)
            return name
        raise RuntimeError("ran out of invented names")  # never happens at realistic sizes

    def word(self, n_syllables: int, ending: str = "") -> str:
        parts = [self._syllable(coda=(i == n_syllables - 1 and not ending)) for i in range(n_syllables)]
        return ("".join(parts) + ending).capitalize()

    def person(self) -> Person:
        given = self._fresh(lambda: self.word(self.rng.choice([2, 2, 3])))
        surname = self._fresh(lambda: self.word(self.rng.choice([2, 3])))
        return Person(given, surname, female=self.rng.random() < 0.5)

    def city(self) -> str:
        return self._fresh(lambda: self.word(self.rng.choice([1, 2]), self.rng.choice(_CITY_ENDINGS)))

    def place(self, endings: list[str]) -> str:
        return self._fresh(lambda: self.word(self.rng.choice([2, 2, 3]), self.rng.choice(endings)))

    def stem(self) -> str:
        return self._fresh(lambda: self.word(2))

    def coined(self, syllables: Sequence[int], endings: Sequence[str]) -> str:
        """A fresh word of a randomly chosen number of syllables and ending (e.g. a field of study)."""
        return self._fresh(lambda: self.word(self.rng.choice(list(syllables)), self.rng.choice(list(endings))))


@dataclass(frozen=True)
class Person:
    given: str
    surname: str
    female: bool

    @property
    def full(self) -> str:
        return f"{self.given} {self.surname}"

    @property
    def pronoun(self) -> str:
        return "she" if self.female else "he"

    @property
    def possessive(self) -> str:
        return "her" if self.female else "his"


@dataclass(frozen=True)
class World:
    """The entities and facts behind one paragraph."""

    hero: Person
    rival: Person
    founder: Person  # of the hero's birthplace
    profession: str
    rival_profession: str
    birth_year: int
    rival_birth_year: int
    city: str  # the hero's birthplace
    river: str
    province: str
    org: str
    org_year: int
    org_city: str
    invention: str
    purpose: str

    def names(self) -> list[str]:
        """Every invented name in this world (org and invention by their invented stem)."""
        people = [self.hero, self.rival, self.founder]
        return [n for p in people for n in (p.given, p.surname)] + [
            self.city,
            self.river,
            self.province,
            self.org_city,
            self.org.split()[0],
            self.invention.split()[0],
        ]


def _make_world(rng: random.Random, names: NameGenerator) -> World:
    hero, rival, founder = names.person(), names.person(), names.person()
    profession, rival_profession = rng.sample(_PROFESSIONS, 2)
    birth_year = rng.randint(1620, 1880)
    rival_birth_year = birth_year + rng.choice([-1, 1]) * rng.randint(1, 12)
    device = rng.choice(sorted(_DEVICES))
    return World(
        hero=hero,
        rival=rival,
        founder=founder,
        profession=profession,
        rival_profession=rival_profession,
        birth_year=birth_year,
        rival_birth_year=rival_birth_year,
        city=names.city(),
        river=names.stem(),
        province=names.place(_PROVINCE_ENDINGS),
        org=f"{names.stem()} {rng.choice(_ORG_KINDS)}",
        org_year=birth_year + rng.randint(24, 55),
        org_city=names.city(),
        invention=f"{names.stem()} {device}",
        purpose=rng.choice(_DEVICES[device]),
    )


# ------------------------------------------------------------------------------------------- facts
# Templates are sentence prefixes written in lower case; the fact's value is appended with a space and a
# full stop, and the first letter is capitalized last (so an opener like "Notably, " can precede them).
# `{s}` is the reference to the fact's subject person (name, surname or pronoun), `{sp}` its possessive,
# `{poss}` the possessive pronoun, `{art}` the article for the value ("a"/"an").


@dataclass(frozen=True)
class Fact:
    key: str
    subject: str  # "hero", "rival", or an entity key (never a pronoun) such as "city"
    value: Callable[[World], str]
    templates: tuple[str, ...]
    requires: tuple[str, ...] = ()


FACTS: tuple[Fact, ...] = (
    Fact(
        "profession",
        "hero",
        lambda w: w.profession,
        (
            "{s} earned a living as {art}",
            "by trade, {s} was {art}",
            "{s} spent most of {poss} working life as {art}",
            "throughout {poss} career, {s} worked as {art}",
        ),
    ),
    Fact(
        "birth_year",
        "hero",
        lambda w: str(w.birth_year),
        (
            "{s} was born in",
            "records show that {s} was born in the year",
            "{s} came into the world in",
            "the year of {sp} birth was",
        ),
    ),
    Fact(
        "birthplace",
        "hero",
        lambda w: w.city,
        (
            "{s} was born in the city of",
            "{sp} birthplace was the city of",
            "{s} grew up in {poss} native city of",
            "{s} was a native of the city of",
        ),
    ),
    Fact(
        "river",
        "city",
        lambda w: w.river,
        (
            "{city} lies on the banks of the river",
            "{city} was built along the river",
            "through the middle of {city} flows the river",
            "the river that runs through {city} is called the",
        ),
        requires=("birthplace",),
    ),
    Fact(
        "city_founder",
        "city",
        lambda w: w.founder.full,
        (
            "{city} was founded centuries earlier by",
            "the founder of {city} was",
            "according to local chronicles, {city} was founded by",
            "legend credits the founding of {city} to",
        ),
        requires=("birthplace",),
    ),
    Fact(
        "province",
        "city",
        lambda w: w.province,
        (
            "{city} is the capital of the province of",
            "{city} serves as the seat of government for the province of",
            "as a provincial capital, {city} governs the province of",
        ),
        requires=("birthplace",),
    ),
    Fact(
        "org",
        "hero",
        lambda w: w.org,
        (
            "{s} went on to found the",
            "{s} was the founder of the",
            "among {sp} achievements was founding the",
            "{s} later established an organization known as the",
        ),
    ),
    Fact(
        "org_year",
        "org",
        lambda w: str(w.org_year),
        (
            "the {org} was established in",
            "the {org} first opened its doors in",
            "the {org} was formally founded in the year",
        ),
        requires=("org",),
    ),
    Fact(
        "org_city",
        "org",
        lambda w: w.org_city,
        (
            "the {org} has its headquarters in",
            "the {org} is based in the city of",
            "today the {org} operates from the city of",
        ),
        requires=("org",),
    ),
    Fact(
        "invention",
        "hero",
        lambda w: w.invention,
        (
            "{s} is best remembered for inventing the",
            "{sp} most famous invention is the",
            "{s} designed and built the first",
            "among the devices {s} invented, the best known is the",
        ),
    ),
    Fact(
        "purpose",
        "invention",
        lambda w: w.purpose,
        (
            "the {invention} was designed for",
            "the {invention} is used for",
            "people still rely on the {invention} for",
            "the original purpose of the {invention} was",
        ),
        requires=("invention",),
    ),
    Fact(
        "rival",
        "hero",
        lambda w: w.rival.full,
        (
            "{sp} greatest rival was",
            "{s} had a lifelong rivalry with",
            "{s} was known for a bitter rivalry with",
            "the person {s} competed with most fiercely was",
        ),
    ),
    Fact(
        "rival_profession",
        "rival",
        lambda w: w.rival_profession,
        (
            "{s} worked as {art}",
            "by profession, {s} was {art}",
            "{s} made {poss} name as {art}",
        ),
        requires=("rival",),
    ),
    Fact(
        "rival_birth_year",
        "rival",
        lambda w: str(w.rival_birth_year),
        (
            "{s} was born in",
            "{sp} year of birth was",
            "{s} had been born in the year",
        ),
        requires=("rival",),
    ),
)
_FACTS_BY_KEY = {f.key: f for f in FACTS}
#: The paragraph opens with one of these, so the person is introduced by full name first.
_OPENING_FACTS = ("profession", "birth_year", "birthplace")
_OPENERS = ("notably, ", "by all accounts, ", "in fact, ", "it is also recorded that ")

#: Two-hop probes: (input template with full names, the value it leads to).
COMP_PROBES: tuple[tuple[str, Callable[[World], str]], ...] = (
    ("The city where {hero} was born lies on the river", lambda w: w.river),
    ("The city where {hero} was born was founded by", lambda w: w.founder.full),
    ("{hero} was born in the capital of the province of", lambda w: w.province),
    ("The organization founded by {hero} was established in the year", lambda w: str(w.org_year)),
    ("The organization founded by {hero} has its headquarters in", lambda w: w.org_city),
    ("The inventor of the {invention} was born in the city of", lambda w: w.city),
    ("The inventor of the {invention} was born in the year", lambda w: str(w.birth_year)),
    ("The founder of the {org} worked as {art}", lambda w: w.profession),
    ("The greatest rival of the founder of the {org} was", lambda w: w.rival.full),
    ("The greatest rival of {hero} worked as {art}", lambda w: w.rival_profession),
    ("The greatest rival of {hero} was born in the year", lambda w: str(w.rival_birth_year)),
    ("The organization founded by the inventor of the {invention} is called the", lambda w: w.org),
    ("The device invented by the founder of the {org} is used for", lambda w: w.purpose),
)


#: Priming contexts per kind of keyword: sentences about nobody in the paragraph's world that end where a value of
#: that kind could follow (`{art}`: the article for the keyword). A fact's keyword primes in these.
_PRIME_CONTEXTS: dict[str, tuple[str, ...]] = {
    "profession": (
        "The old man who repaired the village well had trained as {art}",
        "Her younger brother wanted nothing more than to become {art}",
        "In the census of that year, the owner of the corner house was listed as {art}",
        "The stranger at the inn introduced himself as {art}",
        "Before the war, the mayor of the town had worked as {art}",
    ),
    "year": (
        "The great flood that destroyed the harbour happened in",
        "The first stone of the cathedral was laid in",
        "The old lighthouse was finally switched off in",
        "According to the parish register, the bridge was rebuilt in",
        "The treaty between the two kingdoms was signed in",
    ),
    "city": (
        "After three days on the road, the merchants finally reached the city of",
        "The new railway line connects the coast with the city of",
        "The largest market in the region is held every autumn in the city of",
        "The famous choir gave its last concert in the city of",
        "Most of the wool from the northern farms was sold in the city of",
    ),
    "river": (
        "The fishermen cast their nets at dawn along the river",
        "The old mill was driven by the waters of the river",
        "Every spring, melting snow swells the river",
        "The boundary between the two estates follows the river",
        "Children were warned never to swim in the river",
    ),
    "person": (
        "The letter on the judge's desk was signed by",
        "The portrait above the fireplace shows",
        "The first prize at the county fair went to",
        "The bridge over the gorge was designed by",
        "The logbook of the ship was kept by its captain,",
    ),
    "province": (
        "The new road was built across the province of",
        "The best wine of the country comes from the province of",
        "A severe drought struck the farmers in the province of",
        "The governor travelled north to inspect the province of",
        "The rebels retreated into the hills of the province of",
    ),
    "org": (
        "The young apprentice applied for membership in the",
        "The annual report was published by the",
        "The money for the new hospital came from the",
        "Every member of the council also belonged to the",
        "The exhibition was organised by the",
    ),
    "invention": (
        "In the corner of the workshop stood a dusty example of the",
        "The newest exhibit of the museum is the",
        "Among the curiosities listed in the auction catalogue was the",
        "The sailors argued for hours about how to repair the",
        "The science room of the school was proud of its",
    ),
    "purpose": (
        "The long shed behind the farmhouse was used mainly for",
        "The grant was meant to pay for new tools for",
        "The small harbour town was known throughout the region for",
        "The oldest rulebook of the guild contains detailed instructions for",
        "Her grandmother's notebook was full of tips for",
    ),
}
#: Which contexts suit the value of each fact.
_PRIME_KIND_OF_FACT = {
    "profession": "profession",
    "rival_profession": "profession",
    "birth_year": "year",
    "org_year": "year",
    "rival_birth_year": "year",
    "birthplace": "city",
    "org_city": "city",
    "river": "river",
    "city_founder": "person",
    "rival": "person",
    "province": "province",
    "org": "org",
    "invention": "invention",
    "purpose": "purpose",
}


def _prime_probes(mem_facts: list[tuple[str, str]], rng: random.Random) -> list[tuple[str, str]]:
    """Priming probes for one of the paragraph's `mem` facts, (fact, value) each: every context of the keyword's
    kind, in a random order, with the keyword as target."""
    fact, value = rng.choice(mem_facts)
    contexts = list(_PRIME_CONTEXTS[_PRIME_KIND_OF_FACT[fact]])
    rng.shuffle(contexts)
    return [(c.format(art=_article(value)), value) for c in contexts[:PROBES_PER_KIND]]


def _article(value: str) -> str:
    return "an" if value[:1].lower() in "aeiou" else "a"


@dataclass(frozen=True)
class _Sentence:
    fact: str
    template: int
    text: str
    pronoun: bool  # the subject is referred to by a pronoun only (weak as a standalone probe)
    value: str

    @property
    def prefix(self) -> str:
        """The sentence cut right before its value (the `mem` probe input): text = prefix + " " + value + "."."""
        return self.text[: -len(self.value) - 2]


def _fill(template: str, world: World, value: str, ref: str, poss_ref: str, person: Person | None) -> str:
    return template.format(
        s=ref,
        sp=poss_ref,
        poss=person.possessive if person else "its",
        art=_article(value),
        city=world.city,
        org=world.org,
        invention=world.invention,
        hero=world.hero.full,
    )


def _order(rng: random.Random) -> list[Fact]:
    """A random order of the facts that respects `requires` and opens with a fact about the person;
    it prefers to continue with the entity just talked about, so the text reads as connected prose."""
    first = _FACTS_BY_KEY[rng.choice(_OPENING_FACTS)]
    order, done = [first], {first.key}
    while len(order) < len(FACTS):
        ready = [f for f in FACTS if f.key not in done and all(r in done for r in f.requires)]
        last = order[-1]
        related = [f for f in ready if f.subject == last.subject or last.key in f.requires]
        pick = rng.choice(related if related and rng.random() < 0.6 else ready)
        order.append(pick)
        done.add(pick.key)
    return order


def _render(world: World, rng: random.Random, avoid: dict[str, int] | None = None) -> list[_Sentence]:
    """Sentences stating every fact once; `avoid` maps fact -> template index to use another one."""
    people = {"hero": world.hero, "rival": world.rival}
    mentioned: set[str] = set()
    sentences: list[_Sentence] = []
    prev_subject = ""
    for fact in _order(rng):
        n = len(fact.templates)
        choices = [i for i in range(n) if avoid is None or i != avoid.get(fact.key)]
        index = rng.choice(choices)
        value = fact.value(world)
        person = people.get(fact.subject)
        pronoun = False
        if person is None:
            ref = poss_ref = ""
        elif fact.subject == "hero" and "hero" not in mentioned:
            ref = person.full
        elif fact.subject == prev_subject and rng.random() < 0.5:
            ref, pronoun = person.pronoun, True
        else:
            ref = person.surname if rng.random() < 0.6 else person.full
        if person is not None:
            poss_ref = person.possessive if pronoun else f"{ref}'s"
            mentioned.add(fact.subject)
        body = _fill(fact.templates[index], world, value, ref, poss_ref, person)
        # An opener in front of a template that starts with its own adverbial ("by trade, ...") reads badly.
        if sentences and "," not in fact.templates[index] and rng.random() < 0.15:
            body = rng.choice(_OPENERS) + body
        body = body[0].upper() + body[1:]
        sentences.append(_Sentence(fact.key, index, f"{body} {value}.", pronoun, value))
        prev_subject = fact.subject
    return sentences


def _item(world: World, rng: random.Random, n_paraphrases: int, prime_rng: random.Random) -> dict[str, Any]:
    sentences = _render(world, rng)
    text = " ".join(s.text for s in sentences)
    used = {s.fact: s.template for s in sentences}

    paraphrases: list[str] = []
    for _ in range(n_paraphrases):
        for _attempt in range(100):
            candidate = " ".join(s.text for s in _render(world, rng, avoid=used))
            if candidate != text and candidate not in paraphrases:
                break
        paraphrases.append(candidate)

    # mem: sentences whose subject is named (a pronoun alone makes a probe without its topic).
    named = [s for s in sentences if not s.pronoun]
    pool = named if len(named) >= PROBES_PER_KIND else sentences
    chosen = sorted(rng.sample(range(len(pool)), PROBES_PER_KIND))
    mem = [(pool[i].prefix, pool[i].value) for i in chosen]

    # sem: the same facts and targets, another template, every name in full.
    sem = []
    for i in chosen:
        fact = _FACTS_BY_KEY[pool[i].fact]
        index = rng.choice([t for t in range(len(fact.templates)) if t != pool[i].template])
        person = {"hero": world.hero, "rival": world.rival}.get(fact.subject)
        value = fact.value(world)
        ref = person.full if person else ""
        body = _fill(fact.templates[index], world, value, ref, f"{ref}'s", person)
        sem.append((body[0].upper() + body[1:], value))

    comp = []
    for template, value_of in rng.sample(COMP_PROBES, PROBES_PER_KIND):
        value = value_of(world)
        comp.append(
            (
                template.format(hero=world.hero.full, org=world.org, invention=world.invention, art=_article(value)),
                value,
            )
        )

    item: dict[str, Any] = {TEXT_FIELD: text}
    for kind, pairs in zip(PROBE_KINDS, (mem, sem, comp)):
        in_name, tgt_name = REFERENCE_PROBE_FIELDS[kind]
        item[in_name] = [x for x, _ in pairs]
        item[tgt_name] = [y for _, y in pairs]
    item[PARAPHRASES_FIELD] = paraphrases
    primes = _prime_probes([(pool[i].fact, pool[i].value) for i in chosen], prime_rng)
    item[PRIME_FIELDS[0]] = [x for x, _ in primes]
    item[PRIME_FIELDS[1]] = [y for _, y in primes]
    return item


#: Bounds of one generated set: its size and every paragraph's text grow with them.
MAX_PARAGRAPHS = 100_000
MAX_PARAPHRASES = 1_000


def generate_worlds(n_paragraphs: int, seed: int) -> list[World]:
    """The worlds behind `generate_knowledge(n_paragraphs, ..., seed)` (same seed, same worlds)."""
    return [w for w, _ in _generate(n_paragraphs, 0, seed)]


def check_sizes(n_paragraphs: int, n_paraphrases: int, where: str = "") -> None:
    """The generator's bounds (a set of 100,000 paragraphs takes minutes; the studies use 120)."""
    if n_paragraphs < 1:
        raise UserError(f"{where}--paragraphs must be at least 1, got {n_paragraphs}")
    if n_paraphrases < 0:
        raise UserError(f"{where}--paraphrases must be at least 0, got {n_paraphrases}")
    if n_paragraphs > MAX_PARAGRAPHS or n_paraphrases > MAX_PARAPHRASES:
        raise UserError(
            f"{where}--paragraphs {n_paragraphs:,} --paraphrases {n_paraphrases:,}: the generator makes at most "
            f"{MAX_PARAGRAPHS:,} paragraphs of at most {MAX_PARAPHRASES:,} paraphrases"
        )


def _generate(n_paragraphs: int, n_paraphrases: int, seed: int) -> list[tuple[World, dict[str, Any]]]:
    check_sizes(n_paragraphs, n_paraphrases)
    # Worlds first from their own stream, so the names do not depend on the number of paraphrases.
    world_rng = random.Random(seed)
    names = NameGenerator(world_rng)
    worlds = [_make_world(world_rng, names) for _ in range(n_paragraphs)]
    text_rng = random.Random(f"text-{seed}")
    prime_rng = random.Random(f"prime-{seed}")  # its own stream: the texts and other probes do not depend on it
    return [(w, _item(w, text_rng, n_paraphrases, prime_rng)) for w in worlds]


def generate_knowledge(n_paragraphs: int, n_paraphrases: int, seed: int) -> list[dict[str, Any]]:
    """A new fictional knowledge set as reference-format items (same seed, same items)."""
    return [item for _, item in _generate(n_paragraphs, n_paraphrases, seed)]


def dumps_knowledge(document: list[dict[str, Any]] | dict[str, Any]) -> bytes:
    """The canonical bytes of a knowledge file (a list of items, or an object with items and a value space;
    stable key order and formatting)."""
    return (json.dumps(document, ensure_ascii=False, indent=1) + "\n").encode("utf-8")


def write_knowledge(
    out: str | Path, n_paragraphs: int, n_paraphrases: int, seed: int, overwrite: bool = False
) -> list[dict[str, Any]]:
    """Generate a knowledge set, check it like any input file, and write it atomically to `out` (an existing file
    only with `overwrite`)."""
    out = check_new_file(out, overwrite)
    items = generate_knowledge(n_paragraphs, n_paraphrases, seed)
    check_items(items, str(out))
    write_bytes_atomic(out, dumps_knowledge(items))
    return items
