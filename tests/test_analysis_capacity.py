"""`analysis capacity` on planted capacity runs: stored bits, exact-match rates, the memorization fit, bits per
parameter across models and overwriting equal hand-computed values."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from analysis.capacity import CapacityOptions, analyse_capacity, capacity_of_run, fit_proportional, fit_saturation
from analysis.cli import app
from analysis.load import load_run
from harness.outputs import LEDGER
from tests.helpers.planted import capacity_manifest, write_scored_run

runner = CliRunner()
LN2 = math.log(2)

# Cross-entropies in bits of (person, attribute) at steps 0, 10, 20; attribute a has 16 values (4 bits), b 1024 (10).
CE = {
    (0, 0): [6, 1, 0.5],
    (0, 1): [14, 12, 2],
    (1, 0): [5, 3, 0],
    (1, 1): [11, 9, 9.5],
    (2, 0): [4, 4, 2],
    (2, 1): [20, 10, 4],
}
MATCH = {  # exact match at steps 0, 10, 20
    (0, 0): [0, 1, 1],
    (0, 1): [0, 0, 1],
    (1, 0): [0, 0, 1],
    (1, 1): [0, 0, 0],
    (2, 0): [0, 0, 1],
    (2, 1): [0, 0, 0],
}


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    scores = {}
    for (person, attr), ce in CE.items():
        scores[(person, "bios", "mem", attr)] = ([-c * LN2 for c in ce], MATCH[(person, attr)])
        scores[(person, "bios", "sem", attr)] = ([0.0, 0.0, 0.0], [1, 1, 1])  # held-out wording: known perfectly
    manifest = capacity_manifest(
        [("a", 16), ("b", 1024)], {"bios": ([0, 20], [0, 10])}, parameters=1000, non_embedding=600
    )
    return write_scored_run(tmp_path_factory.mktemp("cap") / "run", scores, [0, 10, 20], manifest=manifest)


def test_bits_and_exact_match_equal_hand_computed(small_run):
    cap = capacity_of_run(load_run(small_run))
    [kb] = cap.knowledge_bases
    # per fact max(0, log2|V| − CE): step 10: 3 + 1 + 1 = 5; step 20: 3.5 + 8 + 4 + 0.5 + 2 + 6 = 24
    assert kb.bits == pytest.approx([0, 5, 24], abs=1e-4)
    # per attribute: step 10: a 3 + 1 + 0 = 4, b −2 + 1 + 0 < 0 -> 0; step 20: a 9.5, b 14.5
    assert kb.bits_strict == pytest.approx([0, 4, 24], abs=1e-4)
    a, b = kb.attributes
    assert (a.bits[-1], b.bits[-1]) == pytest.approx((9.5, 14.5), abs=1e-4)
    assert (a.available_bits, b.available_bits, kb.available_bits) == (12, 30, 42)
    assert a.cross_entropy[-1] == pytest.approx(2.5 / 3, abs=1e-5) and b.cross_entropy[-1] == pytest.approx(15.5 / 3)
    assert kb.exact_match == pytest.approx([0, 1 / 6, 4 / 6])
    assert (a.exact_match[-1], b.exact_match[-1]) == pytest.approx((1.0, 1 / 3))
    assert kb.exposures == pytest.approx([0, 5, 10]) and kb.people == 3
    rec = cap.record()
    assert rec["bits"] == pytest.approx(24, abs=1e-4)
    assert rec["bits_per_parameter"] == pytest.approx(0.024, abs=1e-7)
    assert rec["bits_per_non_embedding_parameter"] == pytest.approx(0.04, abs=1e-7)
    assert rec["step"] == 20 and rec["exposures"] == 10 and rec["available_bits"] == 42

    sem = capacity_of_run(load_run(small_run), CapacityOptions(kind="sem"))
    assert sem.knowledge_bases[0].bits == pytest.approx([42, 42, 42])
    assert capacity_of_run(load_run(small_run), CapacityOptions(at_exposures=4.0)).column == 1


def test_saturation_fit_recovers_exact_curve():
    e = np.linspace(0, 300, 31)
    fit = fit_saturation(e, 0.8 * (1 - np.exp(-e / 30)))
    assert fit.m_inf == pytest.approx(0.8, rel=1e-6) and fit.tau == pytest.approx(30, rel=1e-6)
    assert fit.r2 == pytest.approx(1.0, abs=1e-12) and fit.n_points == 31 and not fit.at_bound
    assert fit_saturation(np.array([0.0, 5.0]), np.array([0.0, 0.5])) is None  # one point with E > 0
    assert fit_saturation(e, np.zeros_like(e)) is None  # nothing recalled: nothing to fit
    # a rate that is still accelerating: M∞ stays a rate (at most 1), the time constant takes the rest
    y = (e / 300) ** 2
    convex = fit_saturation(e, y)
    sse = lambda tau: float(((y + np.expm1(-e / tau)) ** 2).sum())  # noqa: E731  (M∞ = 1)
    assert convex.m_inf == 1.0 and sse(convex.tau) <= min(sse(convex.tau * 1.01), sse(convex.tau / 1.01))


def test_memorization_fit_on_a_planted_run(tmp_path):
    n, steps = 200, list(range(0, 301, 30))
    exposures = np.array(steps) / 3  # 100 exposures by step 300
    recalled = np.round(n * 0.8 * (1 - np.exp(-exposures / 30))).astype(int)
    scores = {(p, "bios", "mem", 0): ([-0.5] * len(steps), [p < k for k in recalled]) for p in range(n)}
    run = write_scored_run(
        tmp_path / "run", scores, steps, manifest=capacity_manifest([("a", 2)], {"bios": ([0, 300], [0, 100])})
    )
    [kb] = capacity_of_run(load_run(run)).knowledge_bases
    assert kb.exact_match == pytest.approx(recalled / n)
    expected = fit_saturation(exposures, recalled / n)
    assert kb.memorization == expected
    assert expected.m_inf == pytest.approx(0.8, abs=0.01) and expected.tau == pytest.approx(30, rel=0.05)


def _rung(path, people: int, known: int, model: str, parameters: int, non_embedding: int):
    """One attribute of 1024 values (10 bits): the first `known` people have CE 0, the rest 30 bits (0 stored)."""
    scores = {
        (p, "bios", "mem", 0): ([-30 * LN2, 0.0 if p < known else -30 * LN2], [False, p < known]) for p in range(people)
    }
    manifest = capacity_manifest(
        [("a", 1024)], {"bios": ([0, 10], [0, 100])}, model=model, parameters=parameters, non_embedding=non_embedding
    )
    return write_scored_run(path, scores, [0, 10], manifest=manifest)


@pytest.fixture(scope="module")
def ladder(tmp_path_factory):
    root = tmp_path_factory.mktemp("ladder")
    return [
        _rung(root / "s2", 2, 2, "small", 1000, 400),
        _rung(root / "s100", 100, 25, "small", 1000, 400),
        _rung(root / "b100", 100, 70, "big", 3000, 1800),
        _rung(root / "b300", 300, 80, "big", 3000, 1800),
    ]


def test_capacity_per_model_and_bits_per_parameter(ladder):
    analysis = analyse_capacity([load_run(p) for p in ladder])
    small, big = analysis.models
    assert (small.model, small.capacity, big.model, big.capacity) == ("small", 250, "big", 800)
    assert small.limited_by_model and big.limited_by_model  # 1000 > 2·250 and 3000 > 2·800 bits offered
    # through the origin: slope = Σ P·bits / Σ P² = (1000·250 + 3000·800) / (1000² + 3000²) = 0.265;
    # SSE = (250 − 265)² + (800 − 795)² = 250, se = sqrt(250 / 1 / 1e7) = 0.005, R² = 1 − 250 / 151250
    fit = analysis.fit_total
    assert fit.slope == pytest.approx(0.265) and fit.slope_se == pytest.approx(0.005)
    assert fit.r2 == pytest.approx(1 - 250 / 151250) and fit.n_points == 2
    assert analysis.fit_non_embedding.slope == pytest.approx(1_540_000 / 3_400_000)
    assert fit_proportional(np.array([10.0]), np.array([20.0])).slope == 2.0

    data_limited = analyse_capacity([load_run(ladder[0])])
    assert not data_limited.models[0].limited_by_model and "limited by the data" in data_limited.notes[0]


def test_overwrite_keeps_a_share_and_decays_as_planted(tmp_path):
    steps = list(range(41))
    pre, gain, a = -20.0, 18.0, 0.2

    def first(k: int) -> float:  # rises to the switch at step 20, then R(t) = 1 − a·log10 t
        return pre + gain * k / 20 if k <= 20 else pre + gain * (1 - a * math.log10(k - 20))

    scores = {}
    for p in range(10):
        scores[(p, "first", "mem", 0)] = ([first(k) for k in steps], [15 <= k <= 25 for k in steps])
        scores[(10 + p, "second", "mem", 0)] = (
            [pre + gain * max(k - 20, 0) / 20 for k in steps],
            [k > 30 for k in steps],
        )
    manifest = capacity_manifest(
        [("a", 1024)], {"first": ([0, 20, 40], [0, 10, 10]), "second": ([0, 20, 40], [0, 0, 10])}
    )
    run = write_scored_run(tmp_path / "run", scores, steps, manifest=manifest)
    cap = capacity_of_run(load_run(run))
    kb1, kb2 = cap.knowledge_bases
    assert kb2.overwrite is None and kb1.done == 20 and kb2.done == 40
    o = kb1.overwrite
    bits = lambda lp: max(0.0, 10 + lp / LN2)  # noqa: E731  (log2 1024 − CE)
    assert o.switch_step == 20 and o.bits_at_switch == pytest.approx(10 * bits(first(20)), abs=1e-3)
    assert o.bits_kept == pytest.approx(bits(first(40)) / bits(first(20)), abs=1e-4)
    assert (o.exact_match_at_switch, o.exact_match_last, o.exact_match_kept) == (1.0, 0.0, 0.0)
    assert o.a == pytest.approx(a, abs=1e-4) and o.b == pytest.approx(1.0, abs=1e-4) and o.r2 > 0.99999
    assert o.n_probes == 10 and o.n_excluded == 0
    assert kb1.memorization.n_points == 21  # fitted while its exposures grow only


def test_cli_json_tables_figures_and_report(small_run, ladder, tmp_path):
    paths = [str(small_run), *map(str, ladder)]
    result = runner.invoke(app, ["capacity", *paths, "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record == json.loads(json.dumps(analyse_capacity([load_run(p) for p in paths]).record()))
    assert [m["model"] for m in record["models"]] == ["m", "small", "big"]
    assert record["runs"][0]["knowledge_bases"][0]["attributes"][1]["bits"] == pytest.approx(14.5, abs=1e-4)

    out = tmp_path / "figs"
    result = runner.invoke(app, ["capacity", *paths, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "bits/param" in result.stdout and "bits per total parameter" in result.stdout
    assert json.loads((out / "capacity.json").read_text()) == record
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"capacity_{s}.{e}" for s in ("bits", "memorization", "attributes", "trajectories") for e in ("png", "pdf")]
        + ["capacity.json", LEDGER]
    )

    result = runner.invoke(app, ["report", *paths[:2], "--out", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output
    html = (tmp_path / "report" / "report.html").read_text()
    assert "<h2>Knowledge capacity</h2>" in html and "Effectivity by encounter" not in html


def test_bad_capacity_runs_exit_2(small_run, tmp_path):
    plain = write_scored_run(tmp_path / "plain", {(0, "bios", "mem", 0): ([-1.0], [False])}, [0])
    result = runner.invoke(app, ["capacity", str(plain)])
    assert result.exit_code == 2 and "field 'capacity' is missing" in result.output

    beyond = write_scored_run(
        tmp_path / "beyond",
        {(0, "bios", "mem", 2): ([-1.0], [False])},
        [0],
        manifest=capacity_manifest([("a", 4), ("b", 4)], {"bios": ([0], [0])}),
    )
    result = runner.invoke(app, ["capacity", str(beyond)])
    assert result.exit_code == 2 and "mem probe 2: the manifest's 'capacity.attributes' has only 2" in result.output

    other = write_scored_run(
        tmp_path / "other",
        {(0, "kb", "mem", 0): ([-1.0], [False])},
        [0],
        manifest=capacity_manifest([("a", 4)], {"bios": ([0], [0])}),
    )
    result = runner.invoke(app, ["capacity", str(other)])
    assert result.exit_code == 2 and "no entry for scenario 'kb'" in result.output

    bad = write_scored_run(
        tmp_path / "bad",
        {(0, "bios", "mem", 0): ([-1.0], [False])},
        [0],
        manifest=capacity_manifest([("a", 4)], {"bios": ([0, 5], [3, 1])}),
    )
    result = runner.invoke(app, ["capacity", str(bad)])
    assert result.exit_code == 2 and "'exposures.bios', exposures: expected non-decreasing" in result.output
    assert runner.invoke(app, ["capacity", str(small_run), "--kind", "comp"]).exit_code == 2
