"""Twin runs: the same continuation with nothing spliced, and every probe measured against its own twin."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from analysis import FitOptions, analyse_run, load_run
from analysis.export import curves_table, fit_document
from analysis.report import adjusted_header, adjusted_rows, build_report
from harness.errors import UserError
from harness.rundir import read_table
from injection.engine.loop import run_training
from injection.engine.twin import run_twin, twin_config
from tests.helpers.engine import synthetic_config, synthetic_inputs, write_tiny_checkpoint
from tests.helpers.planted import KIND_SCALE, PlantedScenario, write_planted_run
from tests.helpers.processes import child_env

SCENARIOS = [
    PlantedScenario("paraphrase", [0, 1, 2], [0, 100, 200], [1.0, 0.6, 0.6], 0.2),
    PlantedScenario("once", [3, 4, 5], [0], [1.0], 0.35),
    PlantedScenario("none", [6, 7, 8], [], [], 0.0),
]


# ---- the analysis: a planted effect under a drift of every probe's own --------------------------------------


@pytest.fixture(scope="module")
def drifting(tmp_path_factory):
    """A planted run whose probes also drift (each its own random walk, 0.05 nats a step), with its twin."""
    path = tmp_path_factory.mktemp("twin") / "run"
    return write_planted_run(path, SCENARIOS, n_steps=401, drift=0.05, twin=True, tokens_per_step=100)


def test_the_twin_recovers_a_planted_effect_the_control_drift_cannot(drifting):
    analysis = analyse_run(load_run(drifting.path), FitOptions(window=50))
    assert analysis.adjustment == "twin" and analysis.twin_path == drifting.path / "twin"
    for g in analysis.fits:
        if g.control:
            continue
        sc = next(s for s in SCENARIOS if s.name == g.scenario)
        scale = KIND_SCALE[g.kind]
        # as exact as without any drift (the planted log itself sits on a 2^-16 grid)
        assert g.a == pytest.approx(sc.decay, abs=1e-4)
        assert g.r2 > 0.99999
        assert g.effectivity_by_encounter == pytest.approx([scale * x for x in sc.gains], abs=1e-4)
    # the control probes' mean drift is not any probe's own: control adjustment leaves most of it in
    control = analysis.control
    assert control is not None and control.adjustment == "control"
    decay = {s.name: s.decay for s in SCENARIOS}
    errors = [abs(g.a - decay[g.scenario]) for g in control.fits if not g.control]
    assert max(errors) > 0.01
    assert min(g.r2 for g in control.fits if not g.control) < 0.99


def test_twin_adjusted_trajectories_are_the_planted_ones(drifting):
    run = load_run(drifting.path)
    analysis = analyse_run(run, FitOptions(window=50))
    twin = load_run(drifting.path / "twin")
    # Δℓ(k) = ℓ(k) − ℓ_twin(k), probe by probe, is what the analysis measures from
    delta = analysis.values - analysis.values[:, :1]
    np.testing.assert_array_equal(delta, run.metric("logprob") - twin.metric("logprob"))
    none = run.scenario == "none"
    assert (delta[none] == 0).all()  # never injected, nothing planted: exactly its twin


@pytest.mark.slow
def test_reports_show_raw_control_and_twin_side_by_side(drifting):
    analysis = analyse_run(load_run(drifting.path), FitOptions(window=50))
    header = adjusted_header(analysis)
    assert header[:5] == ["scenario", "kind", "eff. raw", "eff. ctrl", "eff. twin"]
    assert len(adjusted_rows(analysis)) == 6 and all(len(r) == len(header) for r in adjusted_rows(analysis))
    document = fit_document(analysis)
    assert document["run"]["adjustment"] == "twin" and document["run"]["twin"].endswith("twin")
    assert {"groups", "raw_groups", "control_groups"} <= set(document)
    assert document["options"]["twin_adjust"] is True
    frame = curves_table("r", analysis).to_pandas()
    assert set(zip(frame.twin_adjusted, frame.control_adjusted)) == {(True, False), (False, True), (False, False)}
    assert "Raw, control-adjusted and twin-adjusted" in build_report([analysis])


def test_without_the_twin_or_against_another_baseline(drifting, tmp_path):
    plain = analyse_run(load_run(drifting.path), FitOptions(window=50, twin_adjust=False))
    assert plain.adjustment == "none" and plain.raw is None
    other = write_planted_run(tmp_path / "other", SCENARIOS, n_steps=401, drift=0.05, seed=3)
    analysis = analyse_run(load_run(other.path), FitOptions(window=50, baseline=str(drifting.path / "twin")))
    assert analysis.adjustment == "twin"
    assert any("does not start where the run does" in w for w in analysis.warnings)  # another run's probes
    with pytest.raises(UserError, match="twin adjustment is off"):
        FitOptions(baseline="x", twin_adjust=False).validate()


def test_an_unfinished_twin_is_refused_and_a_missing_one_is_a_warning(drifting, tmp_path):
    short = write_planted_run(tmp_path / "short", SCENARIOS, n_steps=101, drift=0.05)
    with pytest.raises(UserError, match=r"has not logged step\(s\) 101, 102.*injection run --resume"):
        analyse_run(load_run(drifting.path), FitOptions(window=50, baseline=str(short.path)))
    manifest = json.loads((short.path / "manifest.json").read_text())
    (short.path / "manifest.json").write_text(json.dumps({**manifest, "twin": "twin"}))
    analysis = analyse_run(load_run(short.path), FitOptions(window=50))
    assert analysis.adjustment == "none" and any("holds no run yet" in w for w in analysis.warnings)


# ---- the engine: the twin is a real run ---------------------------------------------------------------------


def _config(tmp_path, ck, **kw):
    base = dict(total_steps=3, micro_batch=2, output_dir=tmp_path / "run", checkpoint_interval=2, twin=True)
    return synthetic_config(ck, **{**base, **kw})


def test_the_twin_of_a_run_without_injections_is_the_run_itself(tmp_path):
    torch.set_num_threads(1)
    ck = write_tiny_checkpoint(tmp_path / "ck", with_optimizer=True)
    cfg = _config(tmp_path, ck)
    inputs = synthetic_inputs(ck)
    inputs.injections, inputs.records = {}, {}
    run_dir = run_training(cfg, inputs, progress=False)
    twin_dir = run_twin(cfg, inputs, progress=False)
    assert twin_dir == run_dir / "twin"
    run, twin = read_table(run_dir / "probes.parquet"), read_table(twin_dir / "probes.parquet")
    assert len(run) == len(twin) and (run.step.to_numpy() == twin.step.to_numpy()).all()
    for column in ("logprob", "logprob_sum", "first_logprob", "exact_match", "first_rank"):
        np.testing.assert_array_equal(run[column].to_numpy(), twin[column].to_numpy())  # Δ exactly 0
    analysis = analyse_run(load_run(run_dir), FitOptions(window=2))
    assert analysis.adjustment == "twin"
    assert (analysis.values == analysis.values[:, :1]).all()


def test_a_run_with_its_twin(tmp_path):
    torch.set_num_threads(1)
    ck = write_tiny_checkpoint(tmp_path / "ck", with_optimizer=True)
    cfg = _config(tmp_path, ck)
    inputs = synthetic_inputs(ck)
    run_dir = run_training(cfg, inputs, progress=False)
    twin_dir = run_twin(cfg, inputs, progress=False)

    manifest = json.loads((run_dir / "manifest.json").read_text())
    twin_manifest = json.loads((twin_dir / "manifest.json").read_text())
    assert manifest["twin"] == "twin" and twin_manifest["twin_of"] == ".."
    assert twin_manifest["status"] == "complete" and twin_manifest["n_injected_copies"] == 0
    assert twin_manifest["config"]["splice"] is False and twin_manifest["label"].endswith(" twin")
    assert manifest["config_hash"] != twin_manifest["config_hash"]
    assert len(read_table(twin_dir / "injections.parquet")) == 0
    run, twin = read_table(run_dir / "probes.parquet"), read_table(twin_dir / "probes.parquet")
    assert (run.scenario.to_numpy() == twin.scenario.to_numpy()).all()  # grouped alike
    np.testing.assert_array_equal(run[run.step == 0].logprob.to_numpy(), twin[twin.step == 0].logprob.to_numpy())
    assert not np.array_equal(run[run.step == 3].logprob.to_numpy(), twin[twin.step == 3].logprob.to_numpy())

    # the twin is an ordinary run: a second call finds it complete, and it resumes from its own directory
    assert run_twin(cfg, inputs, progress=False) == twin_dir
    assert twin_config(cfg).config_hash() == twin_manifest["config_hash"]


@pytest.mark.slow
def test_every_measure_through_the_command_line(tmp_path):
    """`injection run smoke` with priming probes, the token columns and knowledge entropy; then
    `injection run --resume RUN --twin` adds the twin to the finished run; `analysis fit RUN` measures against it
    and `analysis priming RUN` reads the priming probes; the twin is a run of its own (`--resume RUN/twin`)."""
    import subprocess
    import sys

    from typer.testing import CliRunner

    from analysis.cli import app as analysis_app

    repo = Path(__file__).resolve().parents[1]
    env = child_env(OMP_NUM_THREADS="1")
    run_dir = tmp_path / "smoke"

    def injection(*args: str) -> subprocess.CompletedProcess:
        done = subprocess.run(
            [sys.executable, "-m", "injection", "run", *args], cwd=repo, env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return done

    short = ["--total-steps", "3", "--set", "schedule_overrides.count=1", "--set", "checkpoint_interval=2"]
    measures = ["priming_probes=knowledge", "probe_token_stats=true", "knowledge_entropy.interval=2"]
    injection("smoke", *short, *[a for m in measures for a in ("--set", m)], "-o", str(run_dir))
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert "twin" not in manifest and len(manifest["priming"]) == 6 * 5
    probes = read_table(run_dir / "probes.parquet")
    assert len(probes) == 4 * 6 * 20 and (probes.kind == "prime").sum() == 4 * 6 * 5
    assert "rank_max" in probes.columns
    assert sorted(set(read_table(run_dir / "knowledge_entropy.parquet").step)) == [0, 2, 3]

    done = injection("--resume", str(run_dir), "--twin")
    assert "already complete" in done.stderr and done.stdout.strip() == str(run_dir)
    twin = json.loads((run_dir / "twin" / "manifest.json").read_text())
    assert twin["status"] == "complete" and twin["config"]["splice"] is False
    assert json.loads((run_dir / "manifest.json").read_text())["twin"] == "twin"
    assert "already complete" in injection("--resume", str(run_dir / "twin")).stderr

    runner = CliRunner()
    result = runner.invoke(analysis_app, ["fit", str(run_dir), "--json", "--window", "1"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["run"]["adjustment"] == "twin" and "raw_groups" in document
    assert document["run"]["knowledge_entropy"]["last_step"] == 3
    result = runner.invoke(analysis_app, ["fit", str(run_dir), "--json", "--window", "1", "--no-twin-adjust"])
    assert json.loads(result.stdout)["run"]["adjustment"] == "none"
    result = runner.invoke(analysis_app, ["priming", str(run_dir), "--json", "--window", "1"])
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)["paragraphs"]) == 6


def test_the_adjustments_figure_draws_every_variant(drifting):
    from analysis.plots import adjustments_figure

    analysis = analyse_run(load_run(drifting.path), FitOptions(window=50))
    fig = adjustments_figure(analysis)
    labels = {t.get_text().split(":")[0] for ax in fig.axes for t in ax.get_legend().get_texts()}
    assert labels == {"raw", "control-adjusted", "twin-adjusted"} and len(fig.axes) == 2 * 3
    assert adjustments_figure(analyse_run(load_run(drifting.path), FitOptions(window=50, twin_adjust=False))) is None
