"""`analysis capacity` on planted capacity runs: R(F) (name and value terms, values scored in context), its
diagnostics (isolated probes, the floor and its slack), sampled knowledge bases, exact-match fact capacity, the
fits (bits per parameter, Lu et al.'s line and epoch curve, memorization), convergence labels and overwriting equal
hand-computed values."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from analysis.capacity import (
    analyse_capacity,
    binary_entropy,
    capacity_of_run,
    fit_linear,
    fit_offset_exponential,
    fit_proportional,
    fit_saturation,
    total_over_people,
)
from analysis.cli import app
from analysis.load import load_run
from harness.outputs import LEDGER
from tests.helpers.planted import capacity_manifest, write_scored_run

runner = CliRunner()
LN2 = math.log(2)

# Attributes a (16 values: 4 bits) and b (1,024: 10 bits); c (8 values) follows b; the gender is scored in context.
ATTRIBUTES = [("a", 16), ("b", 1024), ("c", 8)]
CONTEXT = [*ATTRIBUTES, ("gender", 2)]
DERIVED = {"c": "b"}
N0 = 2**20  # names the generator could draw: 20 bits each
UNIFORM = {"name": 20.0, "a": 4.0, "b": 10.0, "c": 3.0, "gender": 1.0}  # cross-entropies (bits) of a blank model


def _planted(path, final: list[dict[str, float]], *, people: int | None = None, isolated=None, **manifest):
    """A run logged at steps 0 (every person uniform) and 10 (`final`: per person the cross-entropy in bits of
    the name and of each context value; missing ones stay uniform). Values scored 0 bits are exact matches.
    `isolated` gives the mem probes' cross-entropies (default: the context ones)."""
    scores = {}
    for p, ce in enumerate(final):
        ce = {**UNIFORM, **ce}
        iso = {**UNIFORM, **(isolated[p] if isolated else ce)}

        def score(bits0: float, bits1: float) -> tuple[list[float], list[bool]]:
            return [-bits0 * LN2, -bits1 * LN2], [bits0 == 0, bits1 == 0]

        scores[(p, "bios", "name", 0)] = score(UNIFORM["name"], ce["name"])
        for j, (name, _) in enumerate(CONTEXT):
            scores[(p, "bios", "ctx", j)] = score(UNIFORM[name], ce[name])
        for i, (name, _) in enumerate(ATTRIBUTES):
            scores[(p, "bios", "mem", i)] = score(UNIFORM[name], iso[name])
    meta = capacity_manifest(
        ATTRIBUTES,
        {"bios": ([0, 10], [0, 100])},
        people={"bios": people or len(final)},
        name_space=N0,
        context=CONTEXT,
        derived=DERIVED,
        **manifest,
    )
    return write_scored_run(path, scores, [0, 10], manifest=meta)


KNOWS = {"name": 2.0, "a": 0.0, "b": 0.0, "c": 0.0, "gender": 0.0}  # 4 people: log2 N = 2 bits per name at best
BLANK: dict[str, float] = {}
# (case, final cross-entropies of 4 people, name term, value term, isolated bits, floored bits, floor slack). The
# slack is F·H2(q): 8 independent facts (a and b of 4 people), q the share that gains (all, or half of them).
CASES = [
    # every value known, names as well as the data allows: the most the knowledge base offers
    ("knows all", [KNOWS] * 4, 4 * 18, 4 * 15, 4 * 14, 4 * 14, 0.0),
    # b (and so c) known, a and the gender not: 10 bits a person
    ("half the bits", [{**KNOWS, "a": 4.0, "gender": 1.0}] * 4, 72, 4 * 10, 40, 40, 8.0),
    # half the people known, half blank (a blank person costs c's 3 bits: it cannot follow b unknown)
    ("half the people", [KNOWS, KNOWS, BLANK, BLANK], 2 * 18, 2 * 15 - 2 * 3, 2 * 14, 2 * 14, 8.0),
    # confidently wrong about a: 30 bits where a uniform guess costs 4
    ("confidently wrong", [{**KNOWS, "a": 30.0}] * 4, 72, 4 * (15 - 30), 4 * (4 - 30 + 10), 40, 8.0),
]


@pytest.mark.parametrize(
    "case, final, name_bits, value_bits, isolated, floored, slack", CASES, ids=[c[0] for c in CASES]
)
def test_r_f_equals_hand_computed(tmp_path, case, final, name_bits, value_bits, isolated, floored, slack):
    [kb] = capacity_of_run(load_run(_planted(tmp_path / "run", final))).knowledge_bases
    # N·log2(N0/e^p1) and N·log2(S0/e^p2) with S0 = 16 · 1024 · 2 (c follows b)
    assert kb.name_bits.value == pytest.approx([0, name_bits], abs=1e-4)
    assert kb.value_bits.value == pytest.approx([4 * (15 - 18), value_bits], abs=1e-4)
    assert kb.bits.value == pytest.approx([-12, name_bits + value_bits], abs=1e-4)
    assert kb.most_bits == pytest.approx(4 * math.log2(N0 / 4) + 4 * 15)
    assert kb.isolated_bits[-1] == pytest.approx(isolated, abs=1e-4)
    assert kb.floored_bits[-1] == pytest.approx(floored, abs=1e-4)
    assert kb.floor_slack[-1] == pytest.approx(slack, abs=1e-9) and kb.facts == 8
    assert kb.bits.se == pytest.approx([0, 0])  # every person probed


def test_peaky_model_without_knowledge_is_credited_by_the_floor_only(tmp_path):
    """Mass 1/(q|V|) on a person-independent share q = 1/4 of each value set, almost none elsewhere (40 bits):
    person 0's a, person 1's b and person 2's c happen to lie in the share."""
    final = [
        {"name": 20.0, "a": 2.0, "b": 40.0, "c": 40.0},
        {"name": 20.0, "a": 40.0, "b": 8.0, "c": 40.0},
        {"name": 20.0, "a": 40.0, "b": 40.0, "c": 1.0},
        {"name": 20.0, "a": 40.0, "b": 40.0, "c": 40.0},
    ]
    [kb] = capacity_of_run(load_run(_planted(tmp_path / "run", final))).knowledge_bases
    # value term: Σ_p (15 − Σ CE): (15 − 83) + (15 − 89) + (15 − 82) + (15 − 121) = −315
    assert kb.value_bits.value[-1] == pytest.approx(-315, abs=1e-3)
    assert kb.name_bits.value[-1] == pytest.approx(0, abs=1e-4) and kb.bits.value[-1] < 0
    # the floor credits 2 + 2 bits; 2 of the 8 independent facts gain, and coding which costs 8·H2(1/4)
    assert kb.floored_bits[-1] == pytest.approx(4, abs=1e-4)
    assert kb.floor_slack[-1] == pytest.approx(8 * binary_entropy(0.25)) == pytest.approx(6.4902, abs=1e-4)
    assert kb.floored_bits[-1] - kb.floor_slack[-1] < 0


def test_no_knowledge_is_never_credited(tmp_path):
    """A census: every value of each set held by one person, and a model with one person-independent distribution
    per value set (drawn at random): the value term is −|V|·KL(uniform ‖ q) ≤ 0 exactly; the floored figure is
    positive, and only its slack-corrected form is ≤ 0."""
    rng = np.random.default_rng(7)
    size = 16
    q = {name: rng.dirichlet(np.full(n, 0.3)) for name, n in (("a", 16), ("b", 1024), ("c", 8), ("gender", 2))}
    final = []
    for p in range(size):
        values = {"a": p, "b": p * 64 + 5, "c": p % 8, "gender": p % 2}
        final.append({"name": 20.0, **{k: float(-np.log2(q[k][v])) for k, v in values.items()}})
    [kb] = capacity_of_run(load_run(_planted(tmp_path / "run", final))).knowledge_bases
    expected_a = float(np.sum(np.log2(16 * q["a"])))  # Σ over every value of log2(|V| q(v)) = −16·KL(U‖q)
    assert expected_a < 0 and kb.bits.value[-1] < 0
    assert kb.isolated_bits[-1] < 0 < kb.floored_bits[-1]
    assert kb.floored_bits[-1] - kb.floor_slack[-1] <= 0


def test_a_sample_of_people_estimates_the_totals_with_a_standard_error(tmp_path):
    final = [KNOWS, KNOWS, KNOWS, BLANK]
    [kb] = capacity_of_run(load_run(_planted(tmp_path / "run", final, people=10))).knowledge_bases
    per_person = np.array([18 + 15] * 3 + [0 - 3.0])  # name part + value part of each probed person
    assert (kb.people, kb.probed) == (10, 4)
    assert kb.bits.value[-1] == pytest.approx(10 * per_person.mean(), abs=1e-3)
    se = 10 * per_person.std(ddof=1) / 2 * math.sqrt(1 - 4 / 10)
    assert kb.bits.se[-1] == pytest.approx(se, rel=1e-5)
    assert kb.facts == 20 and kb.facts_recalled[-1] == pytest.approx(10 * 3 / 4 * 2)  # a and b of 3 in 4 people
    assert total_over_people(np.ones((3, 2)), 3).se.tolist() == [0.0, 0.0]


def test_saturation_fit_recovers_exact_curve_and_says_when_it_is_no_saturation():
    e = np.linspace(0, 300, 31)
    fit = fit_saturation(e, 0.8 * (1 - np.exp(-e / 30)))
    assert fit.m_inf == pytest.approx(0.8, rel=1e-6) and fit.tau == pytest.approx(30, rel=1e-6)
    assert fit.r2 == pytest.approx(1.0, abs=1e-12) and fit.n_points == 31 and not fit.at_bound
    assert fit.problems == []
    assert fit_saturation(np.array([0.0, 5.0]), np.array([0.0, 0.5])) is None  # one point with E > 0
    assert fit_saturation(e, np.zeros_like(e)) is None  # nothing recalled: nothing to fit
    # a rate that is still accelerating: M∞ stays a rate (at most 1), the time constant takes the rest
    y = (e / 300) ** 2
    convex = fit_saturation(e, y)
    sse = lambda tau: float(((y + np.expm1(-e / tau)) ** 2).sum())  # noqa: E731  (M∞ = 1)
    assert convex.m_inf == 1.0 and sse(convex.tau) <= min(sse(convex.tau * 1.01), sse(convex.tau / 1.01))
    assert convex.problems == ["M∞ is clipped at 1"]
    slow = fit_saturation(e, 0.3 * (1 - np.exp(-e / 3000)))  # saturates far beyond the exposures seen
    assert any("beyond the 300 exposures trained" in p for p in slow.problems)


def test_memorization_fit_on_a_planted_run_and_its_notes(tmp_path):
    n, steps = 200, list(range(0, 301, 30))
    exposures = np.array(steps) / 3  # 100 exposures by step 300

    def run(path, recalled):
        scores = {(p, "bios", "mem", 0): ([-0.5] * len(steps), [p < k for k in recalled]) for p in range(n)}
        meta = capacity_manifest([("a", 2)], {"bios": ([0, 300], [0, 100])})
        return load_run(write_scored_run(path, scores, steps, manifest=meta))

    recalled = np.round(n * 0.8 * (1 - np.exp(-exposures / 30))).astype(int)
    cap = capacity_of_run(run(tmp_path / "sat", recalled))
    [kb] = cap.knowledge_bases
    assert kb.exact_match == pytest.approx(recalled / n) and not kb.exact_match_in_context
    expected = fit_saturation(exposures, recalled / n)
    assert kb.memorization == expected
    assert expected.m_inf == pytest.approx(0.8, abs=0.01) and expected.tau == pytest.approx(30, rel=0.05)
    assert not any("memorization" in note for note in cap.notes)

    accelerating = np.round(n * (exposures / 100) ** 3).astype(int)
    notes = capacity_of_run(run(tmp_path / "acc", accelerating)).notes
    assert any("describes no saturation" in note and "M∞ is clipped at 1" in note for note in notes)


def test_offset_exponential_and_linear_fits_recover_exact_curves():
    e = np.array([10.0, 30, 100, 300, 1000])
    fit = fit_offset_exponential(e, 5 + 20 * (1 - np.exp(-e / 50)))
    assert (fit.offset, fit.amplitude, fit.tau) == pytest.approx((5, 20, 50), rel=1e-6)
    assert fit.limit == pytest.approx(25) and fit.r2 == pytest.approx(1) and not fit.at_bound
    assert fit_offset_exponential(e[:2], e[:2]) is None  # three parameters need three points
    assert fit_offset_exponential(e, 2 * e).at_bound  # a straight line has no time constant
    line = fit_linear(np.array([1.0, 2, 3]), np.array([3.0, 5, 7.5]))
    # slope = Σ(x − x̄)(y − ȳ) / Σ(x − x̄)² = 4.5 / 2; intercept = ȳ − slope·x̄; SSE = 3 × (1/12)² × 2
    assert (line.slope, line.intercept) == pytest.approx((2.25, 0.6666667))
    assert line.slope_se == pytest.approx(math.sqrt((1 / 6) ** 2 * 1.5 / 1 / 2))
    assert fit_linear(np.array([1.0, 1.0]), np.array([2.0, 3.0])) is None


def _rung(
    path, people: int, known: int, model: str, parameters: int, non_embedding: int, rising=False, end=100, last=10.0
):
    """One value `a` of 1,024 (10 bits), no names: the first `known` people are known at the end (CE 0), the rest
    cost 20 bits; logged at steps 0, 9 and 10, the schedule reaching `end` exposures at step `last` (after step 10
    when the last update stops short of a whole epoch). `rising`: at step 9 nobody is known yet."""
    scores = {}
    for p in range(people):
        at90 = 20.0 if rising or p >= known else 0.0
        at100 = 0.0 if p < known else 20.0
        sums = [-20 * LN2, -at90 * LN2, -at100 * LN2]
        scores[(p, "bios", "ctx", 0)] = (sums, [False, at90 == 0, at100 == 0])
        scores[(p, "bios", "mem", 0)] = (sums, [False, at90 == 0, at100 == 0])
    manifest = capacity_manifest(
        [("a", 1024)],
        {"bios": ([0, last], [0, end])},
        model=model,
        parameters=parameters,
        non_embedding=non_embedding,
        context=[("a", 1024)],
    )
    return write_scored_run(path, scores, [0, 9, 10], manifest=manifest)


@pytest.fixture(scope="module")
def ladder(tmp_path_factory):
    root = tmp_path_factory.mktemp("ladder")
    return [
        _rung(root / "s2", 2, 2, "small", 1000, 400),
        _rung(root / "s100", 100, 35, "small", 1000, 400),
        _rung(root / "b100", 100, 80, "big", 3000, 1800),
        _rung(root / "b300", 300, 90, "big", 3000, 1800),
    ]


def test_capacity_per_model_bits_per_parameter_and_fact_capacity(ladder):
    analysis = analyse_capacity([load_run(p) for p in ladder])
    small, big = analysis.models
    # value term only (no name probes): known people gain 10 bits, the others lose 10 (20 bits against 10)
    # small: N2: 2·10 = 20; N100: 35·10 − 65·10 = −300 -> capacity 20; big: N100: 800 − 200 = 600; N300: 900 − 2100
    assert (small.capacity, big.capacity) == pytest.approx((20, 600))
    assert small.limited_by == "model" and big.limited_by == "model"  # 1,000 > 2·20 and 3,000 > 2·600 offered
    # through the origin: slope = (1000·20 + 3000·600) / (1000² + 3000²)
    assert analysis.fit_total.slope == pytest.approx(1_820_000 / 10_000_000)
    assert fit_proportional(np.array([10.0]), np.array([20.0])).slope == 2.0
    # Lu et al.: facts recalled at each model's rung with the most people: 35 and 90, against 400 and 1,800
    assert (small.fact_capacity, big.fact_capacity) == (35, 90)
    assert analysis.fact_fit.slope == pytest.approx(55 / 1400) and analysis.fact_fit.n_points == 2
    assert any("no name probes" in n for r in analysis.runs for n in r.notes)

    data_limited = analyse_capacity([load_run(ladder[0])])
    assert data_limited.models[0].limited_by == "data" and "limited by the data" in data_limited.notes[0]


def test_a_model_with_no_positive_rung_counts_as_zero_in_the_fits(ladder, tmp_path):
    blank = _rung(tmp_path / "t", 50, 0, "tiny", 500, 100)  # nobody known: 50 × (10 − 20) bits
    analysis = analyse_capacity([load_run(p) for p in [blank, *ladder]])
    assert analysis.models[0].capacity == pytest.approx(-500)
    assert analysis.fit_total.slope == pytest.approx(1_820_000 / (10_000_000 + 500**2))
    assert any("R(F) ≤ 0 at every rung (-500 at best): 0 bits in the fits" in n for n in analysis.notes)


def test_a_model_still_learning_is_limited_by_training(tmp_path):
    rising = _rung(tmp_path / "r", 100, 60, "m", 1000, 400, rising=True)
    steady = _rung(tmp_path / "s", 100, 60, "m", 1000, 400)
    [model] = analyse_capacity([load_run(rising)]).models
    assert model.runs[0].converged is False and model.limited_by == "training"
    assert model.record()["limited_by"] == "training"
    assert analyse_capacity([load_run(steady)]).models[0].limited_by == "model"


def test_rungs_of_one_schedule_stopping_short_by_different_shares_are_one_model(tmp_path):
    """Each N's last update stops short of the schedule's last epoch by a different share of a row (49.95 and
    49.98 of 50 exposures, as a real ladder ends): they are rungs of one schedule, and the best of them is the
    model's capacity."""
    few = _rung(tmp_path / "n50", 50, 40, "m", 1000, 400, end=50, last=10.01)
    many = _rung(tmp_path / "n200", 200, 120, "m", 1000, 400, end=50, last=10.004)
    [model] = analyse_capacity([load_run(few), load_run(many)]).models
    assert sorted(r.people for r in model.runs) == [50, 200]
    # N50: 40·10 − 10·10 = 300; N200: 120·10 − 80·10 = 400
    assert model.capacity == pytest.approx(400) and model.best.people == 200
    assert model.record()["capacity_bits"] == pytest.approx(400)


def test_capacity_against_epochs_from_separate_runs(tmp_path):
    ends, known = [10, 30, 100, 300], [20, 45, 70, 78]
    runs = [_rung(tmp_path / f"e{e}", 100, k, "m", 1000, 400, end=e) for e, k in zip(ends, known)]
    analysis = analyse_capacity([load_run(p) for p in runs])
    [curve] = analysis.epochs
    assert curve.exposures.tolist() == ends and curve.facts_recalled.tolist() == known
    assert curve.fit == fit_offset_exponential(np.array(ends, float), np.array(known, float))
    # the model's capacity rungs are the runs of its longest schedule
    assert [r.final_exposures for r in analysis.models[0].runs] == [300]


def test_overwrite_keeps_a_share_and_decays_as_planted(tmp_path):
    steps = list(range(41))
    pre, gain, a = -20.0, 18.0, 0.2

    def first(k: int) -> float:  # rises to the switch at step 20, then R(t) = 1 − a·log10 t
        return pre + gain * k / 20 if k <= 20 else pre + gain * (1 - a * math.log10(k - 20))

    scores = {}
    for p in range(10):
        for kind in ("ctx", "mem"):
            scores[(p, "first", kind, 0)] = ([first(k) for k in steps], [15 <= k <= 25 for k in steps])
            scores[(10 + p, "second", kind, 0)] = (
                [pre + gain * max(k - 20, 0) / 20 for k in steps],
                [k > 30 for k in steps],
            )
    manifest = capacity_manifest(
        [("a", 1024)], {"first": ([0, 20, 40], [0, 10, 10]), "second": ([0, 20, 40], [0, 0, 10])}, context=[("a", 1024)]
    )
    run = write_scored_run(tmp_path / "run", scores, steps, manifest=manifest)
    cap = capacity_of_run(load_run(run))
    kb1, kb2 = cap.knowledge_bases
    assert kb2.overwrite is None and kb1.done == 20 and kb2.done == 40
    o = kb1.overwrite
    bits = lambda lp: 10 + lp / LN2  # noqa: E731  (log2 1024 − CE, unfloored)
    assert o.switch_step == 20 and o.bits_at_switch == pytest.approx(10 * bits(first(20)), abs=1e-3)
    assert o.bits_kept == pytest.approx(bits(first(40)) / bits(first(20)), abs=1e-4)
    assert (o.exact_match_at_switch, o.exact_match_last, o.exact_match_kept) == (1.0, 0.0, 0.0)
    assert o.a == pytest.approx(a, abs=1e-4) and o.b == pytest.approx(1.0, abs=1e-4) and o.r2 > 0.99999
    assert o.n_probes == 10 and o.n_excluded == 0
    assert kb1.memorization.n_points == 21  # fitted while its exposures grow only


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    return _planted(tmp_path_factory.mktemp("cap") / "run", [KNOWS, KNOWS, BLANK, {**KNOWS, "a": 30.0}])


@pytest.mark.slow
def test_cli_json_tables_figures_and_report(small_run, ladder, tmp_path):
    paths = [str(small_run), *map(str, ladder)]
    result = runner.invoke(app, ["capacity", *paths, "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record == json.loads(json.dumps(analyse_capacity([load_run(p) for p in paths]).record()))
    assert [m["model"] for m in record["models"]] == ["m", "small", "big"]
    run = record["runs"][0]
    assert run["name_bits"] == pytest.approx(3 * 18 + 0, abs=1e-3)
    assert run["value_bits"] == pytest.approx(2 * 15 - 3 + (15 - 30), abs=1e-3)
    assert run["diagnostics"]["floored_bits"] == pytest.approx(14 + 14 + 0 + 10, abs=1e-3)
    assert [v["name"] for v in run["knowledge_bases"][0]["values"]] == ["a", "b", "c", "gender"]
    assert run["knowledge_bases"][0]["values"][2]["derived_from"] == "b"

    out = tmp_path / "figs"
    result = runner.invoke(app, ["capacity", *paths, "--out", str(out), "--plateau", "0.1"])
    assert result.exit_code == 0, result.output
    assert "R(F)" in result.stdout and "bits per total parameter" in result.stdout
    assert "floor slack" in result.stdout and "facts per parameter" in result.stdout
    assert json.loads((out / "capacity.json").read_text()) == record
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [
            f"capacity_{s}.{e}"
            for s in ("bits", "memorization", "attributes", "trajectories", "facts")
            for e in ("png", "pdf")
        ]
        + ["capacity.json", LEDGER]
    )

    result = runner.invoke(app, ["report", *paths[:2], "--out", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output
    html = (tmp_path / "report" / "report.html").read_text()
    assert "<h2>Knowledge capacity</h2>" in html and "Effectivity by encounter" not in html
    assert "Diagnostics (isolated probes; not the measure)" in html


def test_bad_capacity_runs_exit_2(small_run, tmp_path):
    plain = write_scored_run(tmp_path / "plain", {(0, "bios", "mem", 0): ([-1.0], [False])}, [0])
    result = runner.invoke(app, ["capacity", str(plain)])
    assert result.exit_code == 2 and "field 'capacity' is missing" in result.output

    def bad(name, scores, **manifest):
        path = write_scored_run(tmp_path / name, scores, [0], manifest=capacity_manifest(**manifest))
        return runner.invoke(app, ["capacity", str(path)])

    mem = {(0, "bios", "mem", 0): ([-1.0], [False])}
    result = bad(
        "beyond",
        {(0, "bios", "mem", 2): ([-1.0], [False])},
        attributes=[("a", 4), ("b", 4)],
        exposures={"bios": ([0], [0])},
    )
    assert result.exit_code == 2 and "mem probe 2: the manifest's 'capacity.attributes' has only 2" in result.output
    result = bad(
        "ctx",
        {**mem, (0, "bios", "ctx", 1): ([-1.0], [False])},
        attributes=[("a", 4)],
        exposures={"bios": ([0], [0])},
        context=[("a", 4)],
    )
    assert result.exit_code == 2 and "ctx probe 1: the manifest's 'capacity.context' has only 1" in result.output
    result = bad(
        "other", {(0, "kb", "mem", 0): ([-1.0], [False])}, attributes=[("a", 4)], exposures={"bios": ([0], [0])}
    )
    assert result.exit_code == 2 and "no entry for scenario 'kb'" in result.output
    result = bad("dec", mem, attributes=[("a", 4)], exposures={"bios": ([0, 5], [3, 1])})
    assert result.exit_code == 2 and "'exposures.bios', exposures: expected non-decreasing" in result.output
    result = bad("derived", mem, attributes=[("a", 4)], exposures={"bios": ([0], [0])}, derived={"a": "x"})
    assert result.exit_code == 2 and "'a' is derived_from 'x', which is not another attribute" in result.output
    result = bad("people", mem, attributes=[("a", 4)], exposures={"bios": ([0], [0])}, people={"bios": 0})
    assert result.exit_code == 2 and "'people.bios': expected an integer >= 1" in result.output
    two = {**mem, (1, "bios", "mem", 0): ([-1.0], [False])}
    result = bad("fewer", two, attributes=[("a", 4)], exposures={"bios": ([0], [0])}, people={"bios": 1})
    assert result.exit_code == 2 and "'capacity.people.bios' is 1, but the probe log scores 2 people" in result.output
    assert runner.invoke(app, ["capacity", str(small_run), "--kind", "comp"]).exit_code == 2
    assert runner.invoke(app, ["capacity", str(small_run), "--plateau", "-1"]).exit_code == 2
