"""Biography knowledge bases as bioS: deterministic, valid, invented prefix-free value sets and name pools
(400 × 400 × 1,000 names, distinct for any number of people), 50 templates per attribute, multi + permute and
simple biographies with pronouns after the first sentence and the work city following the employer, random access,
probes in attribute order, and `knowledge validate` checking the value space item by item."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from typing import Any

import pytest
from typer.testing import CliRunner

from fictional_knowledge import generate as gen
from fictional_knowledge.bios import ATTRIBUTES, Bios, BiosSpec, NamePermutation, generate_bios, generate_bios_document
from fictional_knowledge.load import knowledge_to_document, load_knowledge
from fictional_knowledge.model import MONTHS
from harness.errors import UserError
from injection.cli import app
from tests.helpers.knowledge import valid_items, write_json

runner = CliRunner()


def _generate(out, *extra: Any):
    return runner.invoke(app, ["knowledge", "generate", "--style", "bios", "--out", str(out), *map(str, extra)])


def _validate(path):
    return runner.invoke(app, ["knowledge", "validate", str(path)])


def test_same_seed_same_bytes_and_output_validates(tmp_path):
    a, b, c = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    args = (
        "--paragraphs",
        30,
        "--paraphrases",
        2,
        "--cities",
        40,
        "--universities",
        30,
        "--majors",
        20,
        "--employers",
        25,
        "--first-year",
        1950,
        "--last-year",
        1959,
    )
    assert _generate(a, *args).exit_code == 0
    assert _generate(b, *args).exit_code == 0
    assert _generate(c, *args, "--seed", 1).exit_code == 0
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.json", "c.json"]
    # written one person at a time, with the bytes of the one-object writer
    assert a.read_bytes() == gen.dumps_knowledge(
        generate_bios_document(
            BiosSpec(
                30, cities=40, universities=30, majors=20, employers=25, first_year=1950, last_year=1959, paraphrases=2
            )
        )
    )

    result = _validate(a)
    assert result.exit_code == 0, result.output
    assert "30 paragraphs" in result.output and "mem 180, sem 180, comp 0" in result.output
    # 10 years x 12 months x 28 days of dates; the other sets as asked
    assert "value space: 6 attributes, 180 facts" in result.output
    for name, size in (
        ("birth_date", 3360),
        ("birth_city", 40),
        ("university", 30),
        ("major", 20),
        ("employer", 25),
        ("employer_city", 40),
    ):
        assert re.search(rf"attribute {name}: value set \w+, {size:,} values", result.output), name
    simple = tmp_path / "s.json"
    assert _generate(simple, *args, "--bios-style", "simple").exit_code == 2  # one biography: no paraphrases
    assert _generate(simple, "--paragraphs", 3, "--paraphrases", 0, "--bios-style", "simple").exit_code == 0


def test_value_sets_and_name_pools_are_invented_distinct_and_prefix_free():
    bios = Bios(BiosSpec(people=400))
    space = bios.value_space
    assert [a.name for a in space.attributes] == [a.name for a in ATTRIBUTES]
    assert {a.name: a.size for a in space.attributes} == {
        "birth_date": 200 * 12 * 28,
        "birth_city": 200,
        "university": 300,
        "major": 100,
        "employer": 263,
        "employer_city": 200,
    }
    pools = {"first": bios.first_names, "middle": bios.middle_names, "last": bios.last_names}
    assert {k: len(v) for k, v in pools.items()} == {"first": 400, "middle": 400, "last": 1000}
    assert bios.name_space == 400 * 400 * 1000
    listed = {name: vs.values for name, vs in space.value_sets.items() if vs.dates is None} | pools
    for name, values in listed.items():
        assert len(set(values)) == len(values)
        for v in values:  # brute force, independent of the validator's sorted-neighbour check
            assert not any(w != v and w.startswith(v) for w in values), (name, v)
    # invented words: those of the value sets and of the name pools are all distinct and none is a real word
    words = [
        w.lower()
        for values in listed.values()
        for v in values
        for w in v.split()
        if w not in ("University", "of", "Institute", "Technology", "College", *gen_kinds())
    ]
    assert len(set(words)) == len(words)
    assert not set(words) & gen._REAL_WORDS
    used = {a.name: set() for a in space.attributes}
    for person in bios.people():
        for a, value in zip(space.attributes, person.values):
            assert value in space.value_sets[a.value_set]
            used[a.name].add(value)
        # the work city follows the employer
        employer = space.value_sets["employers"].values.index(person.attributes["employer"])
        assert person.attributes["employer_city"] == space.value_sets["cities"].values[bios.headquarters[employer]]
    # uniform draws over 400 people reach most of each 100-300 value set
    assert len(used["major"]) > 90 and len(used["birth_city"]) > 150
    dates = [re.match(r"(\w+) (\d+), (\d{4})$", p.attributes["birth_date"]) for p in bios.people()]
    assert all(m and m[1] in MONTHS and 1 <= int(m[2]) <= 28 and 1900 <= int(m[3]) <= 2099 for m in dates)


def gen_kinds() -> tuple[str, ...]:
    from fictional_knowledge import bios

    return bios._EMPLOYER_KINDS


def test_names_are_a_permutation_of_the_name_space():
    for n in (1, 2, 7, 1000, 4099):
        perm = NamePermutation(n, seed=3)
        assert sorted(perm(i) for i in range(n)) == list(range(n)), n
    bios = Bios(BiosSpec(people=30_000, first_names=40, middle_names=40, last_names=20))  # 32,000 names
    names = [p.name for p in bios.people()]
    assert len(set(names)) == 30_000
    with pytest.raises(UserError, match="32,001 people need distinct names, but the pools make only 40 × 40 × 20"):
        BiosSpec(people=32_001, first_names=40, middle_names=40, last_names=20).check()


def test_biographies_as_bios_multi_permute_and_simple():
    bios = Bios(BiosSpec(people=300, seed=5))
    pronouns = {True: ("She", "Her", "her"), False: ("He", "His", "his", "him")}
    orders, templates_seen = set(), {a.name: set() for a in ATTRIBUTES}
    for person in bios.people():
        texts = set()
        for draw in range(4):
            bio = bios.biography(person, draw)
            text = bio.text
            texts.add(text)
            orders.add(bio.order)
            sentences = re.split(r"(?<=\.) ", text)
            assert len(sentences) == 6 and sentences[0].startswith(person.name)
            # pronouns after the first sentence, matching the gender; the full name only once
            assert all(s.split()[0] in pronouns[person.female][:2] for s in sentences[1:])
            assert text.count(person.first) == 1
            assert text[slice(*bio.name_span)] == person.name
            assert [text[slice(*span)] for span in bio.value_spans] == list(person.values)
            gender = text[slice(*bio.gender_span)]
            assert gender in pronouns[person.female]
            first_gendered = re.search(r"\b(He|She|His|Her|his|her|him)\b", text[len(person.name) :])
            assert first_gendered.start() + len(person.name) == bio.gender_span[0]
            for s, a in zip(sentences, bio.order):
                assert s.endswith(f" {person.values[a]}.")
                templates_seen[a] = templates_seen.get(a, set())
        assert len(texts) == 4  # every draw: templates and order afresh
        assert bios.biography(person, 2) == bios.biography(person, 2)
    assert len(orders) > 300  # of the 720 sentence orders
    simple = Bios(BiosSpec(people=50, style="simple", seed=5))
    for person in simple.people():
        first = simple.biography(person, 0)
        assert all(simple.biography(person, d) == first for d in (1, 7, 99))
    assert sum(simple.biography(p, 0).order != tuple(range(6)) for p in simple.people()) > 40  # order drawn once


def test_fifty_templates_per_attribute_all_used():
    assert all(len(a.templates) == len(set(a.templates)) == 50 for a in ATTRIBUTES)
    bios = Bios(BiosSpec(people=200))
    used = {a.name: set() for a in ATTRIBUTES}
    for person in bios.people():
        for draw in range(10):
            text = bios.biography(person, draw).text
            for a in ATTRIBUTES:
                for t in a.templates:
                    words = t.split(" ", 1)[1].split(" {")[0]  # the text after the subject, before a placeholder
                    if f" {words}" in text:
                        used[a.name].add(t)
    assert all(len(v) >= 45 for v in used.values()), {k: len(v) for k, v in used.items()}


def test_probes_follow_the_attribute_order():
    knowledge = generate_bios(BiosSpec(people=40, paraphrases=3, seed=5))
    for p in knowledge.paragraphs:
        mem, sem = p.probes["mem"], p.probes["sem"]
        assert [q.target for q in mem] == [q.target for q in sem] == [p.attributes[a.name] for a in ATTRIBUTES]
        assert p.probes["comp"] == ()
        name = " ".join(mem[0].input.split()[:3]).removesuffix("'s")
        assert all(q.input.startswith(name) for q in mem)  # isolated: each names the person in full
        assert len(re.findall(r"\.(?: |$)", p.text)) == 6 and len(p.paraphrases) == 3
        for text in (p.text, *p.paraphrases):
            assert all(f" {q.target}." in text for q in mem)
            assert not any(q.input in text for q in sem)  # sem templates are held out of every biography


def test_fewer_people_are_the_first_people_of_a_larger_set():
    small = generate_bios_document(BiosSpec(people=7, paraphrases=2, seed=3))
    large = generate_bios_document(BiosSpec(people=50, paraphrases=2, seed=3))
    assert small["value_space"] == large["value_space"]
    assert small["items"] == large["items"][:7]
    assert Bios(BiosSpec(people=25_000, seed=3)).person(6) == Bios(BiosSpec(people=7, seed=3)).person(6)


def test_document_round_trips_through_the_loader(tmp_path):
    path = tmp_path / "bios.json"
    assert _generate(path, "--paragraphs", 5, "--paraphrases", 1).exit_code == 0
    knowledge = load_knowledge(path)
    assert knowledge_to_document(knowledge) == json.loads(path.read_text())
    assert knowledge.subset(3).value_space == knowledge.value_space


def _doc() -> dict[str, Any]:
    return copy.deepcopy(
        generate_bios_document(
            BiosSpec(people=4, cities=12, universities=10, majors=8, employers=9, first_year=1990, last_year=1991)
        )
    )


def _edit(fn: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
    doc = _doc()
    fn(doc)
    return doc


def _set_value(doc, attribute: str, value: str, item: int = 2) -> None:
    doc["items"][item]["attributes"][attribute] = value


BAD: list[tuple[str, Callable[[dict], Any], str]] = [
    (
        "value not in its set",
        lambda d: _set_value(d, "birth_city", "Paris"),
        "item 2, field 'attributes', attribute 'birth_city': 'Paris' is not in value set 'cities'",
    ),
    (
        "date outside the range",
        lambda d: _set_value(d, "birth_date", "March 3, 1989"),
        "attribute 'birth_date': 'March 3, 1989' is not in value set 'dates'",
    ),
    (
        "day beyond days_per_month",
        lambda d: _set_value(d, "birth_date", "March 30, 1990"),
        "'March 30, 1990' is not in value set 'dates'",
    ),
    (
        "size does not match",
        lambda d: d["value_space"]["attributes"][3].update(size=9),
        "'attributes'[3] (major), 'size': 9 does not match value set 'majors', which has 8 values",
    ),
    (
        "unknown value set",
        lambda d: d["value_space"]["attributes"][4].update(value_set="firms"),
        "'attributes'[4] (employer), 'value_set': no value set named 'firms'",
    ),
    (
        "prefix values",
        lambda d: d["value_space"]["value_sets"]["cities"].append(d["value_space"]["value_sets"]["cities"][0] + "ia"),
        "is a prefix of",
    ),
    (
        "repeated value",
        lambda d: d["value_space"]["value_sets"]["majors"].append(d["value_space"]["value_sets"]["majors"][0]),
        "value set 'majors': value ",
    ),
    ("attributes field missing", lambda d: d["items"][1].pop("attributes"), "item 1, field 'attributes': missing"),
    (
        "an attribute missing",
        lambda d: d["items"][0]["attributes"].pop("major"),
        "item 0, field 'attributes': missing attribute(s) major",
    ),
    (
        "mem target is not the value",
        lambda d: d["items"][3]["mem_target"].__setitem__(
            2,
            d["value_space"]["value_sets"]["universities"][0]
            if d["items"][3]["mem_target"][2] != d["value_space"]["value_sets"]["universities"][0]
            else d["value_space"]["value_sets"]["universities"][1],
        ),
        "item 3, field 'mem_target'[2]: target",
    ),
    (
        "too few mem probes",
        lambda d: [d["items"][0][f].pop() for f in ("mem_input", "mem_target")],
        "item 0, field 'mem_target': 5 probes, but the value space has 6 attributes",
    ),
    ("unknown top-level field", lambda d: d.update(value_spaces={}), "unknown top-level field 'value_spaces'"),
    (
        "bad dates rule",
        lambda d: d["value_space"]["value_sets"].update(dates={"dates": {"first_year": 1990}}),
        "'dates' needs first_year and last_year",
    ),
]


@pytest.mark.parametrize("name, edit, message", BAD, ids=[b[0] for b in BAD])
def test_validate_names_the_problem(tmp_path, name, edit, message):
    path = write_json(tmp_path / "bad.json", _edit(edit))
    result = _validate(path)
    assert result.exit_code == 2, result.output
    assert message in result.output, result.output


def test_object_without_items_and_list_with_attributes(tmp_path):
    result = _validate(write_json(tmp_path / "x.json", {"value_space": {}}))
    assert result.exit_code == 2 and "wrong top-level type: expected a JSON list of items" in result.output
    items = valid_items(2)
    items[0]["attributes"] = {"x": "y"}  # values without a value space are ignored, and said so
    result = _validate(write_json(tmp_path / "y.json", items))
    assert result.exit_code == 0 and "ignored fields: attributes" in result.output
