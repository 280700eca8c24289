"""`injection demo --quick` from an empty cache, end to end, and its re-use of cached work."""

import dataclasses
import json
from collections import Counter
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from injection.cli import app
from injection.recipes.demo import RESERVED_PARAGRAPHS, load_demo_profile, summary_table
from tests.helpers.knowledge import placeholder_set as knowledge

FULL, QUICK = load_demo_profile("full"), load_demo_profile("quick")


@pytest.mark.slow
@pytest.mark.timeout(1200)  # a whole recipe: 1.5-3 minutes on an idle 2-core machine
def test_quick_demo_from_nothing_then_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("INJECTION_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["demo", "--quick", "--out", str(out)])
    assert result.exit_code == 0, result.output

    summary = json.loads((out / "summary.json").read_text())
    assert [r["checkpoint"] for r in summary["runs"]] == ["tiny@early", "tiny@late"]
    for run in summary["runs"]:
        # the fit objects are exactly the groups `analysis fit --json` prints for that run directory: measured
        # against the run's twin under "fit", control-adjusted under "fit_control", unadjusted under "fit_raw"
        assert json.loads((Path(run["run_dir"]) / "twin" / "manifest.json").read_text())["status"] == "complete"
        for key, flags in (
            ("fit", []),
            ("fit_control", ["--control-adjust", "--no-twin-adjust"]),
            ("fit_raw", ["--no-twin-adjust"]),
        ):
            printed = CliRunner().invoke(
                app_analysis(), ["fit", run["run_dir"], "--json", "--window", str(QUICK.window), *flags]
            )
            assert printed.exit_code == 0, printed.output
            assert run[key] == json.loads(printed.stdout)["groups"]
        assert [f["control"] for f in run["fit"]] == [f["scenario"] == "none" for f in run["fit"]]
        groups = {(f["scenario"], f["kind"]) for f in run["fit"]}
        assert {(s, k) for s in ("paraphrase", "duplicate", "once", "none") for k in ("mem", "sem", "comp")} == groups
        injected = [f for f in run["fit"] if f["scenario"] != "none"]
        assert all(
            f["n_probes"] == 5 * (QUICK.n_once if f["scenario"] == "once" else QUICK.paragraphs_per_group)
            for f in injected
        )
        assert all(f["effectivity"] is not None for f in injected)
        assert set(run["recall"]) == {"injected_step0", "injected_after", "control_step0", "control_after"}
    assert (out / "report" / "report.html").stat().st_size > 10_000
    for stage in ("early", "late"):
        assert (out / "figures" / stage / "retainability.png").is_file()
    # the exported stages are checkpoint directories like pulled ones (weights, tokenizer, moments)
    stage_dirs = sorted((tmp_path / "cache" / "demo").glob("quick-*/L*/checkpoints/tiny/step*"))
    assert [d.name for d in stage_dirs] == ["step0", "step120", "step60"]
    meta = json.loads((stage_dirs[2] / "checkpoint.json").read_text())
    assert meta["step"] == 60 and meta["has_optimizer_state"] and meta["family"] == "tiny"

    # a second invocation reuses the corpus, the checkpoints and the finished runs and twins
    finished = [out / "runs" / "early" / "manifest.json", out / "runs" / "early" / "twin" / "manifest.json"]
    before = {p: p.stat().st_mtime_ns for p in stage_dirs + finished}
    again = CliRunner().invoke(app, ["demo", "--quick", "--out", str(out)])
    assert again.exit_code == 0, again.output
    assert "pretraining" not in again.output and "injection run" not in again.output
    assert {p: p.stat().st_mtime_ns for p in before} == before


def app_analysis():
    from analysis.cli import app as analysis_app

    return analysis_app


CHUNKED = dataclasses.replace(
    FULL, name="chunked", paragraphs_per_group=12, once_paragraphs=10, paragraphs_per_step=5, interval=8
)


@pytest.mark.parametrize("profile", [FULL, QUICK, CHUNKED], ids=lambda p: p.name)
def test_profiles_schedule_fits_the_batch(profile):
    """Every injected paragraph is in one group; no step carries more than `paragraphs_per_step` of them (one
    chunk), so groups larger than that are spread over consecutive steps."""
    from injection.schedule import schedule_from_dict

    sched = profile.schedule()
    starts = [g["first_step"] for g in sched["groups"]]
    assert starts == list(range(len(starts)))
    k = knowledge(profile.n_injected, paraphrases=profile.paraphrases)
    plan = schedule_from_dict(sched, "demo").plan(k)
    by_step = Counter(x.step for x in plan)
    chunk = profile.paragraphs_per_step or profile.paragraphs_per_group
    assert max(by_step.values()) <= chunk <= profile.global_batch
    scenarios = {}
    for x in plan:
        scenarios.setdefault(x.paragraph, set()).add(x.scenario)
    assert sorted(scenarios) == list(range(profile.n_injected))
    assert all(len(v) == 1 for v in scenarios.values())
    count = Counter(next(iter(scenarios[x.paragraph])) for x in plan)
    g = profile.paragraphs_per_group
    assert count == {"paraphrase": g * profile.encounters, "duplicate": g * profile.encounters, "once": profile.n_once}
    assert profile.n_probed <= RESERVED_PARAGRAPHS
    assert dict(profile.stages).keys() >= set(profile.run_stages)
    assert max(step for _, step in profile.stages) == profile.pretrain_steps


def test_chunks_that_collide_with_the_next_encounter_are_refused():
    with pytest.raises(ValueError, match="would share step 6"):
        dataclasses.replace(FULL, paragraphs_per_group=12, paragraphs_per_step=3).schedule()


def test_catalog_tiny_stages_are_the_full_demos():
    from injection.checkpoints.catalog import load_catalog

    assert load_catalog().family("tiny").stages == dict(FULL.stages)


def test_full_demo_stages_are_linked_as_the_tiny_family(tmp_path, monkeypatch):
    from injection.checkpoints.pull import default_dest
    from injection.recipes.demo import register_tiny_family

    monkeypatch.setenv("INJECTION_CACHE", str(tmp_path / "cache"))
    stages = {}
    for name, step in FULL.stages:
        stages[name] = tmp_path / "demo" / f"step{step}"
        stages[name].mkdir(parents=True)
    gone = tmp_path / "removed"
    default_dest("tiny", FULL.stages[0][1]).parent.mkdir(parents=True)
    default_dest("tiny", FULL.stages[0][1]).symlink_to(gone)  # a link left by a demo cache since deleted
    register_tiny_family(FULL, stages)
    for name, step in FULL.stages:
        assert default_dest("tiny", step).resolve() == stages[name].resolve()


def test_bad_knowledge_exits_2(tmp_path, monkeypatch):
    monkeypatch.setenv("INJECTION_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "k.json"
    bad.write_text("[]")
    result = CliRunner().invoke(app, ["demo", "--quick", "--out", str(tmp_path / "o"), "--knowledge", str(bad)])
    assert result.exit_code == 2 and "Traceback" not in result.output


def test_recall_check_counts_only_a_rise_beyond_the_controls():
    from types import SimpleNamespace

    import numpy as np

    from injection.recipes.demo import mem_recall, phenomenon_checks

    scenario = np.array(["duplicate"] * 4 + ["none"] * 4, dtype=object)
    kind = np.array(["mem", "mem", "sem", "mem"] * 2, dtype=object)
    em = np.zeros((8, 4), dtype=bool)
    em[0, 2:] = True  # an injected mem probe recalled from step 2 on
    em[4, 1] = True  # a control mem probe right once, by chance
    em[2, :] = True  # a sem probe: not counted
    rec = mem_recall(SimpleNamespace(scenario=scenario, kind=kind, exact_match=em))
    assert rec == pytest.approx(
        {"injected_step0": 0.0, "injected_after": 2 / 9, "control_step0": 0.0, "control_after": 1 / 9}
    )

    def checks(recall):
        fit = [{"scenario": "duplicate", "kind": "mem", "effectivity": 0.5, "a": 0.3, "control": False}]
        return dict(phenomenon_checks({"runs": [{"checkpoint": "tiny@late", "fit": fit, "recall": recall}]}))

    key = "tiny@late: mem exact match rises after injections, more than the control's"
    assert checks(rec)[key]
    assert not checks({**rec, "control_after": rec["injected_after"]})[key]  # no better than chance
    assert checks({k: None for k in rec})[key] is False  # nothing measured: a failed check
    assert checks({k: 0.0 for k in rec})[key] is None  # never an exact match anywhere: not measurable
    assert checks(rec)["tiny@late: decay constant a > 0 in every group"]


def test_cache_key_follows_what_shapes_the_corpus_and_checkpoints():
    # the corpus is sized for pretraining + runs, and its length changes the data order
    assert dataclasses.replace(FULL, run_steps=FULL.run_steps + 20).key() != FULL.key()
    assert dataclasses.replace(FULL, peak_lr=FULL.peak_lr / 2).key() != FULL.key()
    # schedule and evaluation numbers reuse the pretraining
    same = dataclasses.replace(
        FULL,
        name="x",
        encounters=3,
        interval=7,
        eval_interval=2,
        run_stages=("late",),
        paragraphs_per_group=12,
        paragraphs_per_step=6,
        control_paragraphs=12,
    )
    assert same.key() == FULL.key()


def test_an_output_directory_of_another_profile_is_refused(tmp_path):
    """A run directory left by another demo configuration is never replaced or mixed with this one's."""
    from harness.errors import UserError
    from injection.recipes.demo import check_earlier_run, run_config

    run_dir = tmp_path / "out" / "runs" / "mid"
    run_dir.mkdir(parents=True)
    manifest = {"config_hash": "0123abcd", "status": "complete", "config": {"label": "tiny@mid"}}
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    before = (run_dir / "manifest.json").read_bytes()
    cfg = run_config(FULL, "mid", tmp_path / "ck", tmp_path / "c", tmp_path / "out")
    with pytest.raises(UserError, match="holds a run of a different demo configuration"):
        check_earlier_run(cfg, tmp_path / "out", same_inputs=True)
    assert (run_dir / "manifest.json").read_bytes() == before


def test_sweep_variants_share_the_pretraining_they_do_not_change():
    """benchmarks/demo_sweep.py: a variant that changes only the schedule finds the base profile's cache
    (same name and key); one that changes the model gets its own; an unknown field is refused."""
    from benchmarks.demo_sweep import parse_variant

    name, more = parse_variant("more:paragraphs_per_group=12,paragraphs_per_step=6")
    assert name == "more" and more.name == FULL.name and more.key() == FULL.key()
    assert more.schedule()["groups"][1] == {
        "scenario": "paraphrase",
        "paragraphs": "6-11",
        "variant": "cycle",
        "first_step": 1,
    }
    _, wide = parse_variant("wide:quick/d_model=96,stages=early@50+late@120")
    assert wide.name == QUICK.name and wide.key() != QUICK.key() and wide.stages == (("early", 50), ("late", 120))
    with pytest.raises(SystemExit, match="no field 'width'"):
        parse_variant("bad:width=3")


def test_a_file_the_user_made_in_out_is_never_replaced(tmp_path, monkeypatch):
    """`injection demo -o DIR` with the user's own knowledge.json there refuses before writing anything; so
    does `--knowledge DIR/knowledge.json -o DIR` (the demo would cut the user's set down to its size)."""
    monkeypatch.setenv("INJECTION_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "d4"
    out.mkdir()
    users = out / "knowledge.json"
    users.write_text('[{"train_context": "the user\'s 120 paragraphs"}]')
    result = CliRunner().invoke(app, ["demo", "--quick", "-o", str(out)])
    assert result.exit_code == 2 and "knowledge.json exists and was not written by this tool" in result.stderr
    result = CliRunner().invoke(app, ["demo", "--quick", "-o", str(out), "--knowledge", str(users)])
    assert result.exit_code == 2, result.output
    assert users.read_text() == '[{"train_context": "the user\'s 120 paragraphs"}]'
    assert [p.name for p in out.iterdir()] == ["knowledge.json"] and not (tmp_path / "cache").exists()


def test_a_run_of_another_knowledge_set_is_refused_before_anything_is_written(tmp_path):
    """An earlier demo's complete run is reused only when the knowledge and schedule it was made with are the
    ones the demo would write now; otherwise the demo stops before replacing either file."""
    from harness.errors import UserError
    from injection.recipes.demo import check_earlier_run, run_config

    out = tmp_path / "out"
    cfg = run_config(QUICK, "late", tmp_path / "ck", tmp_path / "c", out)
    assert check_earlier_run(cfg, out, same_inputs=False) is None  # nothing there yet
    run_dir = out / "runs" / "late"
    run_dir.mkdir(parents=True)
    (run_dir / "manifest.json").write_text(json.dumps({"config_hash": cfg.config_hash(), "status": "complete"}))
    assert check_earlier_run(cfg, out, same_inputs=True) == "complete"
    with pytest.raises(UserError, match="holds a run of another knowledge set or schedule"):
        check_earlier_run(cfg, out, same_inputs=False)


def _fit(scenario, kind, r2, control=False, drift=None):
    return dict(
        scenario=scenario,
        kind=kind,
        control=control,
        effectivity=None if control else 0.25,
        a=0.4,
        r2=r2,
        t_star_steps=120.0,
        drift_last=drift,
    )


def test_summary_table_shows_the_control_adjusted_r2_beside_the_twins():
    run = {
        "checkpoint": "tiny@late",
        "fit": [_fit("once", "mem", 0.5), _fit("none", "mem", 0.9, control=True, drift=0.125)],
        "fit_control": [_fit("once", "mem", 0.11), _fit("none", "mem", 0.9, control=True, drift=0.125)],
    }
    summary = {"wall_seconds": 12.0, "runs": [run]}

    def rendered(twins):
        console = Console(width=200, record=True)
        console.print(summary_table(summary, twins=twins))
        return console.export_text()

    with_twins, without = rendered(True), rendered(False)
    assert "measured against each run's twin" in with_twins and "control-adjusted" in without
    once_row = next(line for line in with_twins.splitlines() if "once" in line)
    assert "0.50" in once_row and "0.11" in once_row  # against the twin, then the control-adjusted R²
    assert "R² ctrl" in with_twins and "R² ctrl" not in without
    assert "0.11" not in without
    control_row = next(line for line in without.splitlines() if "none (control)" in line)
    assert "drift +0.125" in control_row
