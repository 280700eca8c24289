"""Schedules: YAML -> validated groups -> the plan; `injection plan` over the reference set."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from harness.errors import UserError
from injection.cli import app
from injection.schedule import builtin_schedules, load_schedule, plan_steps
from tests.helpers.knowledge import placeholder_set as knowledge


def write_yaml(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def test_every_builtin_schedule_loads():
    assert {"paper", "demo", "smoke", "none"} <= set(builtin_schedules())
    for name in builtin_schedules():
        assert load_schedule(name).groups or name == "none"
    assert load_schedule("none").plan(knowledge(3), total_steps=50) == []


def test_paper_plan():
    plan = load_schedule("paper").plan(knowledge(130, paraphrased=range(40)))
    by_step = plan_steps(plan)
    assert list(by_step) == list(range(0, 1000, 100))
    assert len(by_step[0]) == 120 and all(len(by_step[s]) == 80 for s in range(100, 1000, 100))
    for x in plan:
        if x.paragraph < 40:
            assert (x.scenario, x.variant) == ("paraphrase", x.step // 100)
        elif x.paragraph < 80:
            assert (x.scenario, x.variant) == ("duplicate", 0)
        else:
            assert (x.scenario, x.step, x.variant) == ("once", 0, 0)
    assert Counter(x.paragraph for x in plan)[5] == 10 and Counter(x.paragraph for x in plan)[100] == 1


def test_demo_schedule_parameters_override():
    sched = load_schedule("demo", overrides={"interval": 10, "count": 3, "total_steps": 40})
    plan = sched.plan(knowledge(36, paraphrases=1))
    assert sorted({x.step for x in plan}) == [0, 1, 2, 10, 11, 20, 21]
    # cycle wraps: original, paraphrase 1, original
    assert [x.variant for x in plan if x.paragraph == 0] == [0, 1, 0]


def test_shipped_demo_schedule_is_the_full_demos():
    from injection.recipes.demo import load_demo_profile
    from injection.schedule import schedule_from_dict

    FULL = load_demo_profile("full")
    k = knowledge(FULL.n_injected, paraphrases=3)
    shipped = [(x.step, x.paragraph, x.variant, x.scenario) for x in load_schedule("demo").plan(k)]
    full = [(x.step, x.paragraph, x.variant, x.scenario) for x in schedule_from_dict(FULL.schedule(), "demo").plan(k)]
    assert shipped == full and load_schedule("demo").total_steps == FULL.run_steps


def test_user_yaml_several_groups_and_policies(tmp_path):
    path = write_yaml(
        tmp_path / "sweep.yaml",
        {
            "total_steps": 1000,
            "groups": [
                {
                    "scenario": "every50",
                    "paragraphs": "0-1",
                    "first_step": 10,
                    "interval": 50,
                    "count": 3,
                    "variant": "paraphrase",
                },
                {"scenario": "every200", "paragraphs": [2, "3-4"], "steps": [0, 200, 400]},
                {"scenario": "rand", "paragraphs": 5, "count": 6, "interval": 100, "variant": "random", "seed": 3},
            ],
        },
    )
    sched = load_schedule(path)
    plan = sched.plan(knowledge(6, paraphrases=3))
    assert [(x.step, x.variant) for x in plan if x.paragraph == 1] == [(10, 0), (60, 1), (110, 2)]
    assert [x.step for x in plan if x.paragraph == 4] == [0, 200, 400]
    rand = [x.variant for x in plan if x.scenario == "rand"]
    assert len(rand) == 6 and set(rand) <= {0, 1, 2, 3} and len(set(rand)) > 1
    assert rand == [x.variant for x in sched.plan(knowledge(6, paraphrases=3)) if x.scenario == "rand"]
    assert plan == sorted(plan, key=lambda x: (x.step, x.paragraph))


@pytest.mark.parametrize(
    "groups, total, n, match",
    [
        ([{"scenario": "a", "paragraphs": "0-9"}], 10, 5, "too few"),
        (
            [{"scenario": "a", "paragraphs": "0-1", "count": 4, "interval": 5, "variant": "paraphrase"}],
            100,
            4,
            "missing paraphrase",
        ),
        ([{"scenario": "a", "paragraphs": "0-1", "count": 4, "interval": 50}], 100, 4, "beyond the run"),
        ([{"scenario": "a", "paragraphs": "0-3"}, {"scenario": "b", "paragraphs": "3-5"}], 100, 8, "overlapping"),
        ([{"scenario": "a", "paragraphs": "0-3", "variant": "sometimes"}], 100, 8, "field 'variant'"),
        ([{"scenario": "a", "paragraphs": "x"}], 100, 8, "field 'paragraphs'"),
    ],
)
def test_invalid_schedules(tmp_path, groups, total, n, match):
    path = write_yaml(tmp_path / "bad.yaml", {"total_steps": total, "groups": groups})
    with pytest.raises(UserError, match=match):
        load_schedule(path).plan(knowledge(n, paraphrases=2))


def test_total_steps_override_beyond_run():
    with pytest.raises(UserError, match="beyond the run"):
        load_schedule("paper").plan(knowledge(120), total_steps=500)


def reference_json(reference_dir: Path) -> str:
    return str(reference_dir / "fictional-knowledge" / "fictional_knowledge_paraphrased.json")


def test_plan_cli_paper_over_reference(reference_dir, olmo_tokenizer):
    from fictional_knowledge.encode import encode_paragraph
    from fictional_knowledge.load import load_knowledge

    result = CliRunner().invoke(
        app, ["plan", "--schedule", "paper", "--knowledge", reference_json(reference_dir), "--json"]
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    steps = Counter(r["step"] for r in rows)
    assert steps[0] == 120 and all(steps[s] == 80 for s in range(100, 1000, 100)) and len(steps) == 10
    for r in rows:
        expected = r["step"] // 100 if r["paragraph"] < 40 else 0
        assert r["variant"] == expected and 100 < r["tokens"] < 2048
    assert {r["scenario"] for r in rows if r["paragraph"] >= 80} == {"once"}
    ks = load_knowledge(reference_json(reference_dir))
    for r in rows[::97]:
        assert r["tokens"] == len(encode_paragraph(olmo_tokenizer, ks[r["paragraph"]].variant(r["variant"])))
    table = CliRunner().invoke(app, ["plan", "--knowledge", reference_json(reference_dir)])
    assert table.exit_code == 0 and "paraphrase" in table.stdout and "900" in table.stdout


def test_plan_cli_invalid_exits_2(reference_dir, tmp_path):
    path = write_yaml(tmp_path / "s.yaml", {"total_steps": 100, "groups": [{"scenario": "a", "paragraphs": "0-200"}]})
    result = CliRunner().invoke(app, ["plan", "--schedule", str(path), "--knowledge", reference_json(reference_dir)])
    assert result.exit_code == 2 and "too few" in result.output
    result = CliRunner().invoke(app, ["plan", "--knowledge", reference_json(reference_dir), "--total-steps", "900"])
    assert result.exit_code == 2 and "beyond the run" in result.output
