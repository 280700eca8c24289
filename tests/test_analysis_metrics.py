"""Metrics on tiny hand-made logs whose numbers are worked out by hand below."""

from __future__ import annotations

import math

import numpy as np
import pytest

from analysis import FitOptions, fit_records, fit_run, load_run
from analysis.metrics import NO_GAIN, NOT_INJECTED, iqr_mean, nan_quantile
from harness.errors import UserError
from tests.helpers.planted import write_trajectories


def by_group(records):
    return {(r["scenario"], r["kind"]): r for r in records}


def test_decay_fit_on_gapped_steps(tmp_path):
    # Logged steps with gaps; one encounter at step 0; window 3. Window (0, 3] = steps 1, 2, 3 with
    # ℓ = -4, -3, -3.2 -> t_LAM = 2, E = -3 - (-5) = 2, denominator 2.
    # R(t) = 0.9 - 0.3 log10 t is planted at t = 1, 10, 100, 200 (steps 3, 12, 102, 202).
    steps = [0, 1, 2, 3, 12, 102, 202]
    r = lambda t: 0.9 - 0.3 * math.log10(t)  # noqa: E731
    values = [-5.0, -4.0, -3.0] + [-5.0 + 2.0 * r(t) for t in (1, 10, 100, 200)]
    run = write_trajectories(
        tmp_path / "run", {(0, "once", "mem", 0): values}, [(0, 0, "once")], steps=steps, tokens_per_step=100
    )
    [rec] = fit_records(load_run(run), FitOptions(window=3))
    # Default t_max = last logged step - (t_N + w) = 202 - 3 = 199: t = 1, 10, 100 are fitted (200 is not).
    assert rec["t_max"] == 199 and rec["n_points"] == 3
    assert rec["a"] == pytest.approx(0.3, abs=1e-5)
    assert rec["b"] == pytest.approx(0.9, abs=1e-5)
    assert rec["r2"] == pytest.approx(1.0, abs=1e-9)
    assert rec["t_star_steps"] == pytest.approx(1000.0, rel=1e-4)  # 10^(0.9/0.3)
    assert rec["t_star_tokens"] == pytest.approx(100_000.0, rel=1e-4)
    assert rec["effectivity"] == pytest.approx(2.0, abs=1e-6)
    assert rec["partial"] is False
    # An explicit t_max past the default reaches t = 200 and is labelled partial.
    [rec] = fit_records(load_run(run), FitOptions(window=3, t_max=200))
    assert rec["n_points"] == 4 and rec["partial"] is True and rec["a"] == pytest.approx(0.3, abs=1e-5)


def test_two_encounters_exclusion_and_never_injected(tmp_path):
    # Paragraph 0 (scenario "dup") meets its text at steps 0 and 5; window 3.
    # mem probe: E1 = max(-5, -4.5, -4.8) - (-6) = 1.5 (t_LAM = 2); E2 = max(-4, -4.2, -4.3) - ℓ(5) = -4 + 5 = 1.0
    #   (t_LAM = 6); denominator ℓ(6) - ℓ(0) = 2; R(t) = (ℓ(6 + t) + 6) / 2 = 0.9, 0.85, 0.8, 0.75 for t = 1..4.
    # sem probe never moves: E = 0, denominator 0 -> excluded with its reason.
    # Paragraph 1 ("control") is never injected.
    mem = [-6.0, -5.0, -4.5, -4.8, -4.9, -5.0, -4.0, -4.2, -4.3, -4.4, -4.5, -4.6, -4.7]
    flat = [-7.0] * 13
    run_dir = write_trajectories(
        tmp_path / "run",
        {(0, "dup", "mem", 0): mem, (0, "dup", "sem", 0): flat, (1, "control", "mem", 0): flat},
        [(0, 0, "dup"), (5, 0, "dup")],
    )
    records = by_group(fit_records(load_run(run_dir), FitOptions(window=3)))
    m = records[("dup", "mem")]
    assert m["effectivity_by_encounter"] == pytest.approx([1.5, 1.0], abs=1e-6)
    assert m["effectivity"] == pytest.approx(1.25, abs=1e-6)
    assert m["t_max"] == 4  # 12 - (5 + 3)
    t = np.arange(1, 5)
    slope, intercept = np.polyfit(np.log10(t), [0.9, 0.85, 0.8, 0.75], 1)
    assert m["a"] == pytest.approx(-slope, abs=1e-5) and m["b"] == pytest.approx(intercept, abs=1e-5)
    assert m["n_excluded"] == 0
    s = records[("dup", "sem")]
    assert s["n_excluded"] == 1 and s["exclusions"] == {NO_GAIN: 1}
    assert s["a"] is None and s["t_star_steps"] is None
    assert s["effectivity_by_encounter"] == [0.0, 0.0]
    c = records[("control", "mem")]
    assert c["exclusions"] == {NOT_INJECTED: 1} and c["effectivity"] is None


def test_first_maximum_wins_ties_and_window_bounds(tmp_path):
    # Window (0, 2]: steps 1, 2 tie at -4; step 3 (-1) lies outside the window. t_LAM = 1, E = 1.
    values = [-5.0, -4.0, -4.0, -1.0, -4.5, -4.6, -4.7, -4.8]
    run = write_trajectories(tmp_path / "run", {(0, "once", "mem", 0): values}, [(0, 0, "once")])
    fits = fit_run(load_run(run), FitOptions(window=2))
    assert fits[0].effectivity == pytest.approx(1.0)
    # R(t) counts from t_LAM = 1: R(1) = (ℓ(2) + 5) / 1 = 1.0, R(2) = 4.0 (ℓ(3) = -1).
    assert fits[0].retention_mean[:2] == pytest.approx([1.0, 4.0])


def test_run_stopped_before_last_window_closes(tmp_path):
    values = [-5.0, -4.0, -3.0, -3.1, -3.2]
    run = write_trajectories(tmp_path / "run", {(0, "once", "mem", 0): values}, [(0, 0, "once"), (20, 0, "once")])
    [rec] = fit_records(load_run(run), FitOptions(window=10))
    assert rec["partial"] is True and rec["a"] is None and rec["t_max"] is None
    assert rec["effectivity_by_encounter"] == pytest.approx([2.0], abs=1e-6)  # over the logged part of the window
    notes = " ".join(rec["notes"])
    assert "before the 10-step window" in notes and "injection(s) at or after the last logged step" in notes


def test_metric_column_option(tmp_path):
    values = [-5.0, -4.0, -3.0, -3.5, -3.6, -3.7, -3.8]
    run = write_trajectories(tmp_path / "run", {(0, "once", "mem", 0): values}, [(0, 0, "once")])
    [plain] = fit_records(load_run(run), FitOptions(window=2))
    [summed] = fit_records(load_run(run), FitOptions(window=2, metric="logprob_sum"))  # written as 2 × logprob
    assert summed["effectivity"] == pytest.approx(2 * plain["effectivity"])
    assert summed["a"] == pytest.approx(plain["a"])  # R is a ratio: scale-free
    with pytest.raises(UserError, match="metric"):
        fit_records(load_run(run), FitOptions(metric="accuracy"))


def test_iqr_rule_and_quantiles():
    mean, kept = iqr_mean(np.array([1.0, 2.0, 3.0, 4.0, 100.0]), 1.5)  # Q1 2, Q3 4 -> bounds [-1, 7]
    assert mean == pytest.approx(2.5) and kept == 4
    mean, kept = iqr_mean(np.array([1.0, 2.0, 3.0, 4.0, 100.0]), 100.0)
    assert mean == pytest.approx(22.0) and kept == 5
    x = np.random.default_rng(0).normal(size=(37, 11))
    x[np.random.default_rng(1).random(x.shape) < 0.2] = np.nan
    for q in (0.25, 0.5, 0.75):
        assert nan_quantile(x, q, axis=0) == pytest.approx(np.nanquantile(x, q, axis=0))
    columns, _ = iqr_mean(np.array([[1.0, 1.0], [2.0, 1.0], [3.0, np.nan], [50.0, 1.0]]), 1.5, axis=0)
    assert columns == pytest.approx([2.0, 1.0])  # per column (per t): 50 is an outlier of column 0 only


def test_number_format():
    from analysis.format import fmt, fmt_interval, fmt_pct

    cases = {
        0.2031: "0.203",
        9.847: "9.85",
        98.489: "98.5",
        1811.3: "1,811",
        4.2e6: "4.2e6",
        0.00042: "4.2e-4",
        -0.0161: "-0.016",
        0.0: "0",
        float("inf"): "∞",
        float("nan"): "—",
        None: "—",
    }
    assert {k: fmt(k) for k in cases} == cases
    assert fmt_pct(0.025) == "2.5 %" and fmt_interval(70.7, float("inf")) == "70.7–∞"
    assert fmt_interval(float("nan"), 3.0) == "—"


def test_implausible_fits_are_flagged(tmp_path):
    from tests.helpers.planted import PlantedScenario, write_planted_run

    # a barely falling curve under noise: weak fit, t* far beyond the data
    run = write_planted_run(
        tmp_path / "run",
        [PlantedScenario("once", [0, 1, 2], [0], [1.0], 0.02)],
        n_steps=300,
        noise=0.3,
        kinds=("mem",),
        seed=4,
    )
    [rec] = fit_records(load_run(run.path))
    assert rec["r2"] < 0.3 and "weak_fit" in rec["flags"]
    assert rec["t_star_steps"] > 100 * rec["t_max"] and "far_extrapolation" in rec["flags"]
    # the clean planted curve is not flagged
    clean = write_planted_run(
        tmp_path / "clean", [PlantedScenario("once", [0], [0], [1.0], 0.3)], n_steps=300, kinds=("mem",)
    )
    [rec] = fit_records(load_run(clean.path))
    assert rec["flags"] == []


def test_perplexity_scale_overflow_is_a_user_error(tmp_path):
    run = write_trajectories(tmp_path / "run", {(0, "once", "mem", 0): [-800.0, -5.0, -4.0, -4.5]}, [(0, 0, "once")])
    with pytest.raises(UserError, match="overflows"):
        fit_records(load_run(run), FitOptions(window=2, scale="perplexity"))
