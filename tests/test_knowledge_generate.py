"""The project's own generator: deterministic bytes, valid output, unique invented names, real probes."""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from fictional_knowledge import generate as gen
from fictional_knowledge.generate import generate_knowledge, generate_worlds
from fictional_knowledge.load import load_knowledge
from injection.cli import app


def _generate(out, *, paragraphs=12, paraphrases=3, seed=7):
    args = [
        "knowledge",
        "generate",
        "--paragraphs",
        paragraphs,
        "--paraphrases",
        paraphrases,
        "--seed",
        seed,
        "--out",
        out,
    ]
    return CliRunner().invoke(app, [str(a) for a in args])


def test_same_seed_same_bytes_and_output_validates(tmp_path):
    a, b, c = tmp_path / "a.json", tmp_path / "sub" / "b.json", tmp_path / "c.json"
    assert _generate(a).exit_code == 0
    assert _generate(b).exit_code == 0
    assert _generate(c, seed=8).exit_code == 0
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    assert json.loads(a.read_bytes()) == generate_knowledge(12, 3, 7)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "c.json", "sub"]  # no temporary files left

    result = CliRunner().invoke(app, ["knowledge", "validate", str(a)])
    assert result.exit_code == 0, result.output
    assert "12 paragraphs" in result.output and "mem 60, sem 60, comp 60" in result.output
    assert "3 paraphrases: 12" in result.output and "not verbatim in their paragraph: 0" in result.output


def test_invented_names_are_never_shared_between_paragraphs():
    worlds = generate_worlds(80, seed=11)
    items = generate_knowledge(80, 2, seed=11)
    all_names = [n.lower() for w in worlds for n in w.names()]
    assert len(all_names) == len(set(all_names)) == 80 * 12
    words_of = [set(re.findall(r"[A-Z][a-z]+", " ".join([it["train_context"], *it["paraphrases"]]))) for it in items]
    for i, world in enumerate(worlds):
        names = set(world.names())
        assert names <= words_of[i]  # every name is used in its own paragraph
        for j, words in enumerate(words_of):
            if j != i:
                assert not names & words, (i, j, names & words)
    assert not {n for n in all_names if n in gen._REAL_WORDS}


def test_paragraphs_state_linked_facts_and_probes_use_them():
    worlds = generate_worlds(25, seed=3)
    for world, item in zip(worlds, generate_knowledge(25, 4, seed=3)):
        text = item["train_context"]
        sentences = re.split(r"(?<=\.) ", text)
        assert len(sentences) == len(gen.FACTS) >= 8
        values = [f.value(world) for f in gen.FACTS]
        for value in values:
            assert f" {value}." in text

        mem = list(zip(item["mem_input"], item["mem_target"]))
        sem = list(zip(item["gen_input"], item["gen_target"]))
        comp = list(zip(item["hard_gen_input"], item["hard_gen_target"]))
        assert len(mem) == len(sem) == len(comp) == 5
        for x, y in mem:
            assert f"{x} {y}." in sentences  # a whole sentence of the paragraph, cut before its final value
        assert [y for _, y in sem] == [y for _, y in mem]
        assert all(xs != xm for (xs, _), (xm, _) in zip(sem, mem))
        for x, y in comp:
            assert y in values and x not in text and y not in x
        assert all(len(y.split()) <= 5 for _, y in mem + sem + comp)

        paraphrases = item["paraphrases"]
        assert len(paraphrases) == 4 and len({text, *paraphrases}) == 5
        for p in paraphrases:
            assert sorted(re.split(r"(?<=\.) ", p)) != sorted(sentences)  # other templates, not just reordering
            for value in values:
                assert f" {value}." in p


def test_comp_probes_are_two_hop():
    world = generate_worlds(1, seed=0)[0]
    inputs = {
        t.format(hero=world.hero.full, org=world.org, invention=world.invention, art="a"): v(world)
        for t, v in gen.COMP_PROBES
    }
    assert inputs[f"The city where {world.hero.full} was born was founded by"] == world.founder.full
    assert inputs[f"The inventor of the {world.invention} was born in the city of"] == world.city
    assert inputs[f"The greatest rival of the founder of the {world.org} was"] == world.rival.full


def test_loads_as_knowledge_set(tmp_path):
    out = tmp_path / "k.json"
    assert _generate(out, paragraphs=3, paraphrases=9).exit_code == 0
    ks = load_knowledge(out)
    assert len(ks) == 3 and ks[2].n_variants == 10 and len(list(ks.iter_probes())) == 45


@pytest.mark.parametrize(
    "args, message",
    [
        (["--paragraphs", "0"], "--paragraphs must be at least 1"),
        (["--paraphrases", "-1"], "--paraphrases must be at least 0"),
    ],
)
def test_bad_arguments_exit_2(tmp_path, args, message):
    result = CliRunner().invoke(app, ["knowledge", "generate", "--out", str(tmp_path / "k.json"), *args])
    assert result.exit_code == 2 and message in result.output
    assert not (tmp_path / "k.json").exists()


def test_failed_write_leaves_old_file_and_no_temporary(tmp_path, monkeypatch):
    out = tmp_path / "k.json"
    out.write_text("old")

    def fail(*_):
        raise OSError("disk full")

    import harness.atomic

    monkeypatch.setattr(harness.atomic.os, "replace", fail)
    with pytest.raises(OSError):
        gen.write_knowledge(out, 2, 1, 0, overwrite=True)  # replacing a file only when told to
    assert out.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["k.json"]
