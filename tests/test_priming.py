"""Priming probes (Sun et al. 2025): written by the generator or added from a priming file, logged as kind `prime`,
and the priming score and its relation to the keyword's probability before learning recovered from a run."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from typer.testing import CliRunner

from analysis import fit_records, load_run
from analysis.cli import app as analysis_app
from analysis.plots import priming_figure
from analysis.priming import priming_analysis
from fictional_knowledge.generate import _PRIME_CONTEXTS, generate_knowledge, generate_worlds
from fictional_knowledge.load import knowledge_from_document, knowledge_to_items, load_knowledge, with_priming
from fictional_knowledge.model import PRIME_KIND, PROBE_KINDS
from harness.errors import UserError
from tests.helpers.planted import write_priming_run

# (log10 P_before, log10 S_after) of five injected paragraphs on the line y = 0.5 − 0.4·x
KEYWORDS = [(x, 0.5 - 0.4 * x) for x in (-1.0, -2.0, -3.5, -5.0, -6.0)]


def test_the_generator_writes_priming_probes_for_one_fact_of_each_paragraph():
    items = generate_knowledge(12, 1, 3)
    worlds = generate_worlds(12, 3)
    contexts = {c for group in _PRIME_CONTEXTS.values() for c in group}
    for item, world in zip(items, worlds):
        assert len(item["prime_input"]) == len(item["prime_target"]) == 5
        assert len(set(item["prime_target"])) == 1 and item["prime_target"][0] in item["mem_target"]
        names = world.names()
        for text in item["prime_input"]:
            assert not any(name in text for name in names)  # unrelated to the paragraph's world
            assert re.sub(r"\ban?$", "{art}", text) in contexts
    knowledge, _ = knowledge_from_document(items, "generated")
    assert knowledge.has_priming and len(list(knowledge.iter_probes())) == 12 * 15  # logged only where asked
    assert len(list(knowledge.iter_probes(kinds=(*PROBE_KINDS, PRIME_KIND)))) == 12 * 20
    assert knowledge_to_items(knowledge) == items  # and written back unchanged


def test_a_priming_file_adds_priming_probes_to_a_set_without_them(tmp_path):
    items = _without_priming(3)
    knowledge, _ = knowledge_from_document(items, "plain")
    assert not knowledge.has_priming
    keyword = items[1]["mem_target"][2]
    file = tmp_path / "priming.json"
    file.write_text(
        json.dumps([{"paragraph": 1, "prime_input": ["The letter was signed by"], "prime_target": [keyword]}])
    )
    primed = with_priming(knowledge, file)
    assert [(q.input, q.target) for q in primed[1].probes[PRIME_KIND]] == [("The letter was signed by", keyword)]
    assert PRIME_KIND not in primed[0].probes and primed[1].probes["mem"] == knowledge[1].probes["mem"]


def _without_priming(n: int) -> list[dict]:
    return [{k: v for k, v in item.items() if not k.startswith("prime")} for item in generate_knowledge(n, 0, 0)]


@pytest.mark.parametrize(
    "entries, message",
    [
        ({"paragraph": 1}, "expected a non-empty JSON list"),
        (
            [{"paragraph": 7, "prime_input": ["x"], "prime_target": ["y"]}],
            r"entry 0, field 'paragraph': expected a paragraph id 0…2",
        ),
        (
            [{"paragraph": 0, "prime_input": ["A context"], "prime_target": ["nothing of item 0"]}],
            r"prime_target'\[0\]: 'nothing of item 0' is not one of the item's mem_target",
        ),
        ([{"paragraph": 0, "prime_input": ["a", "b"], "prime_target": ["x"]}], "unequal lengths"),
        ([{"paragraph": 0, "prime_input": ["a"]}], "field 'prime_target': missing"),
        ([{"paragraph": 0, "prime_inputs": ["a"], "prime_target": ["x"]}], "unknown field 'prime_inputs'"),
    ],
)
def test_priming_file_mistakes_name_the_entry_and_field(tmp_path, entries, message):
    plain, _ = knowledge_from_document(_without_priming(3), "plain")
    file = tmp_path / "priming.json"
    file.write_text(json.dumps(entries))
    with pytest.raises(UserError, match=message):
        with_priming(plain, file)


def test_a_priming_file_does_not_replace_priming_probes(tmp_path):
    knowledge, _ = knowledge_from_document(generate_knowledge(3, 0, 0), "generated")
    keyword = knowledge[0].probes["mem"][0].target
    file = tmp_path / "priming.json"
    file.write_text(json.dumps([{"paragraph": 0, "prime_input": ["a"], "prime_target": [keyword]}]))
    with pytest.raises(UserError, match="entry 0, field 'paragraph': paragraph 0 already has priming probes"):
        with_priming(knowledge, file)


def test_knowledge_items_with_a_priming_target_outside_their_facts_are_refused(tmp_path):
    items = generate_knowledge(2, 0, 0)
    items[1]["prime_target"][3] = "Nowhere"
    file = tmp_path / "k.json"
    file.write_text(json.dumps(items))
    with pytest.raises(
        UserError, match=r"item 1, field 'prime_target'\[3\]: 'Nowhere' is not one of the item's mem_target"
    ):
        load_knowledge(file)


# ---- the analysis ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def primed(tmp_path_factory):
    return write_priming_run(tmp_path_factory.mktemp("priming") / "run", KEYWORDS)


def test_priming_scores_and_the_relation_are_recovered_exactly(primed):
    analysis = priming_analysis(load_run(primed), window=10)
    injected = [i for i in analysis.items if i.injected]
    controls = [i for i in analysis.items if not i.injected]
    assert len(injected) == 5 and len(controls) == 2
    for item, (x, y) in zip(injected, KEYWORDS):
        assert item.keyword == f"keyword {item.paragraph}" and item.before_step == 5 and item.after_step == 15
        assert item.p_before == pytest.approx(10**x, rel=1e-12)
        assert item.scores[:6] == pytest.approx(np.ones(6), rel=1e-12)  # nothing primed before learning
        assert item.after == pytest.approx(10**y, rel=1e-12)
    for item in controls:
        assert item.scores == pytest.approx(np.ones(40), rel=1e-12) and item.after_step == 39
    line = analysis.relation
    assert line.n == 5 and line.slope == pytest.approx(-0.4, abs=1e-9) and line.intercept == pytest.approx(0.5)
    assert line.pearson_r == pytest.approx(-1.0) and line.spearman_rho == pytest.approx(-1.0)
    assert priming_figure(analysis) is not None


def test_priming_probes_form_no_group_of_the_fits(primed):
    assert "prime" not in {r["kind"] for r in fit_records(load_run(primed))}


def test_analysis_priming_command(primed, tmp_path):
    result = CliRunner().invoke(analysis_app, ["priming", str(primed), "--json", "--window", "10"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert len(document["paragraphs"]) == 7 and document["relation"]["slope"] == pytest.approx(-0.4)
    out = tmp_path / "out"
    result = CliRunner().invoke(analysis_app, ["priming", str(primed), "--window", "10", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "Spearman ρ -1" in result.stdout
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "priming.json",
        "priming.pdf",
        "priming.png",
        "priming_scores.parquet",
    ]
    import pandas as pd

    scores = pd.read_parquet(out / "priming_scores.parquet")
    assert len(scores) == 7 * 40 and scores[scores.step == 39].priming_score.max() == pytest.approx(10**2.9)


# ---- the engine: logged where a run asks for them ------------------------------------------------------------


def test_a_run_logs_priming_probes_where_asked(olmo_tokenizer, tmp_path):
    from injection.engine.config import config_from_dict
    from injection.engine.inputs import priming_keywords, probe_items, with_priming_probes

    knowledge = load_knowledge("generate:3:0:1")
    plain = probe_items(knowledge, olmo_tokenizer, {0: "once"})
    primed = probe_items(knowledge, olmo_tokenizer, {0: "once"}, priming=True)
    assert [it for it in primed if it.kind != PRIME_KIND] == plain and len(plain) == 45
    prime = [it for it in primed if it.kind == PRIME_KIND]
    assert len(prime) == 15 and {it.scenario for it in prime if it.paragraph == 0} == {"once"}
    for entry in priming_keywords(knowledge):
        paragraph = knowledge[entry["paragraph"]]
        assert paragraph.probes["mem"][entry["mem_probe"]].target == entry["keyword"]
        assert paragraph.probes[PRIME_KIND][entry["probe"]].target == entry["keyword"]

    settings = dict(checkpoint="ck", schedule="smoke", data="d", total_steps=3)
    asked = config_from_dict({**settings, "knowledge": "generate:3:0:1", "priming_probes": "knowledge"})
    assert with_priming_probes(asked, knowledge) is knowledge
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps(_without_priming(3)))
    cfg = config_from_dict({**settings, "knowledge": str(bare), "priming_probes": "knowledge"})
    with pytest.raises(UserError, match="field 'priming_probes': the knowledge set .* carries no priming probes"):
        with_priming_probes(cfg, load_knowledge(bare))
    cfg = config_from_dict({**settings, "knowledge": str(bare), "priming_probes": str(tmp_path / "absent.json")})
    with pytest.raises(UserError, match="field 'priming_probes': .*absent.json: no such file"):
        with_priming_probes(cfg, load_knowledge(bare))


def test_the_reference_set_gets_priming_probes_from_a_file(reference_dir, tmp_path):
    from tests.helpers.knowledge import REFERENCE_FILE

    knowledge = load_knowledge(reference_dir / REFERENCE_FILE)
    file = tmp_path / "priming.json"
    entries = [
        {"paragraph": 1, "prime_input": ["The new trade agreement was first tested in"], "prime_target": ["Sweden"]},
        {
            "paragraph": 80,
            "prime_input": ["The conference speakers were mostly"],
            "prime_target": ["Australian engineers"],
        },
    ]
    file.write_text(json.dumps(entries))
    primed = with_priming(knowledge, file)
    assert [q.target for q in primed[1].probes[PRIME_KIND]] == ["Sweden"]
    assert sum(1 for p in primed.paragraphs if PRIME_KIND in p.probes) == 2
    assert len(list(primed.iter_probes(kinds=(*PROBE_KINDS, PRIME_KIND)))) == 1950 + 2
