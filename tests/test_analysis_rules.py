"""The two rule sets against independent, loop-by-loop implementations, and by hand on a tiny log.

`study_code_reference` follows the study's public analysis scripts step by step (values are losses, lower is
better; a probe whose window minimum after its last encounter equals its value at the first logged step is
skipped entirely; outliers by np.percentile with factor 2; one t range 1 .. T − (last encounter + window);
a curve whose first mean is negative is negated before np.polyfit on log10 t). `paper_reference` follows the
paper's text as the README states it. Neither shares code with `analysis`.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import pyarrow.parquet as pq
import pytest

from analysis import FitOptions, analyse_run, fit_records, load_run
from analysis.metrics import NO_GAIN, ZERO_GAIN
from tests.helpers.planted import PlantedScenario, write_planted_run, write_trajectories

WINDOW = 20


# ---- independent implementations ---------------------------------------------------------------------------


def read_log(run_dir):
    """{(scenario, kind): {(paragraph, probe): [ℓ at step 0, 1, ...]}}, {paragraph: [encounter steps]}."""
    table = pq.read_table(run_dir / "probes.parquet").to_pylist()
    series = defaultdict(lambda: defaultdict(dict))
    for row in table:
        series[(row["scenario"], row["kind"])][(row["paragraph"], row["probe"])][row["step"]] = row["logprob"]
    groups = {g: {p: [s[k] for k in sorted(s)] for p, s in probes.items()} for g, probes in series.items()}
    encounters = defaultdict(set)
    for row in pq.read_table(run_dir / "injections.parquet").to_pylist():
        encounters[row["paragraph"]].add(row["step"])
    return groups, {p: sorted(s) for p, s in encounters.items()}


def remove_outliers(data, multiplier):
    q1, q3 = np.percentile(data, 25), np.percentile(data, 75)
    spread = q3 - q1
    return [x for x in data if q1 - multiplier * spread <= x <= q3 + multiplier * spread]


def mean(values):
    return sum(values) / len(values)


def line(ts, ys):
    x = np.log10(np.array(ts, dtype=float))
    slope, intercept = np.polyfit(x, ys, 1)
    predicted = np.polyval([slope, intercept], x)
    r2 = 1 - np.sum((np.array(ys) - predicted) ** 2) / np.sum((np.array(ys) - np.mean(ys)) ** 2)
    return -slope, intercept, r2


def first_min(values):
    best = 0
    for i, v in enumerate(values):
        if v < values[best]:
            best = i
    return best


def study_code_reference(run_dir, window, perplexity=False):
    groups, encounters = read_log(run_dir)
    n_steps = len(next(iter(next(iter(groups.values())).values())))
    latest = max(e[-1] for e in encounters.values())
    t_range = range(1, n_steps - 1 - (latest + window) + 1)
    out = {}
    for (scenario, kind), probes in groups.items():
        if not any(p in encounters for p, _ in probes):
            continue
        pooled, per_encounter, forgetting = [], [], defaultdict(list)
        for (paragraph, _), logprobs in probes.items():
            loss = [-x for x in logprobs]
            v = [math.exp(x) for x in loss] if perplexity else loss
            steps = encounters[paragraph]
            last = steps[-1]
            sp = first_min(v[last + 1 : last + window + 1]) + last + 1
            init, lowest = v[0], v[sp]
            if init == lowest:
                continue
            for t in t_range:
                forgetting[t].append((v[sp + t] - init) / (lowest - init) * 100)
            gains = []
            for e in steps:
                sp_e = first_min(v[e + 1 : e + window + 1]) + e + 1
                gains.append(v[e] - v[sp_e])
            pooled += gains
            per_encounter.append(gains)
        curve = [mean(remove_outliers(forgetting[t], 2.0)) for t in t_range]
        if curve[0] < 0:
            curve = [-y for y in curve]
        curve = [y / 100 for y in curve]
        a, b, r2 = line(list(t_range), curve)
        out[(scenario, kind)] = {
            "effectivity": mean(remove_outliers(pooled, 2.0)),
            "by_encounter": [mean(remove_outliers(list(col), 2.0)) for col in zip(*per_encounter)],
            "curve": curve,
            "a": a,
            "b": b,
            "r2": r2,
            "t_max": t_range[-1],
            "dropped": len(probes) - len(per_encounter),
        }
    return out


def paper_reference(run_dir, window):
    groups, encounters = read_log(run_dir)
    out = {}
    for (scenario, kind), probes in groups.items():
        if not any(p in encounters for p, _ in probes):
            continue
        pooled, per_encounter, kept = [], [], []
        for (paragraph, _), lp in probes.items():
            steps = encounters[paragraph]
            gains = []
            for e in steps:
                best = e + 1
                for k in range(e + 1, e + window + 1):
                    if lp[k] > lp[best]:
                        best = k
                gains.append(lp[best] - lp[e])
                lam = best
            pooled += gains
            per_encounter.append(gains)
            denominator = lp[lam] - lp[steps[0]]
            if denominator > 0:
                kept.append((lp, lam, steps[0], steps[-1]))
        n_steps = len(next(iter(probes.values())))
        t_max = n_steps - 1 - max(last + window for _, _, _, last in kept)
        curve = []
        for t in range(1, t_max + 1):
            values = [(lp[lam + t] - lp[first]) / (lp[lam] - lp[first]) for lp, lam, first, _ in kept]
            curve.append(mean(remove_outliers(values, 1.5)))
        a, b, r2 = line(list(range(1, t_max + 1)), curve)
        out[(scenario, kind)] = {
            "effectivity": mean(remove_outliers(pooled, 1.5)),
            "by_encounter": [mean(remove_outliers(list(col), 1.5)) for col in zip(*per_encounter)],
            "curve": curve,
            "a": a,
            "b": b,
            "r2": r2,
            "t_max": t_max,
            "excluded": len(probes) - len(kept),
        }
    return out


# ---- the planted log ---------------------------------------------------------------------------------------

SCENARIOS = [
    PlantedScenario("paraphrase", [0, 1, 2, 3], [0, 30, 60], [1.0, 0.5, 0.5], 0.25),
    PlantedScenario("duplicate", [4, 5, 6, 7], [1, 31, 61], [1.0, 0.4, 0.4], 0.3),
    PlantedScenario("once", [8, 9, 10, 11], [2], [1.0], 0.35),
    PlantedScenario("none", [12, 13], [], [], 0.0),  # control paragraphs: logged, never injected
]
#: comp probes gain almost nothing, so noise gives some of them negative gains.
KIND_SCALE = {"mem": 1.0, "sem": 0.5, "comp": 0.02}
#: Probes whose ℓ is constant: exactly zero gain.
FLAT = [(2, "mem", 1), (9, "sem", 0), (10, "comp", 3)]


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    path = tmp_path_factory.mktemp("rules") / "run"
    write_planted_run(
        path,
        SCENARIOS,
        n_steps=200,
        noise=0.05,
        kind_scale=KIND_SCALE,
        seed=3,
        manifest={"analysis_defaults": {"window": WINDOW, "encounter_spacing": 30}},
    )
    table = pq.read_table(path / "probes.parquet")
    logprob = table.column("logprob").to_numpy().copy()
    rows = table.select(["paragraph", "kind", "probe"]).to_pylist()
    for i, row in enumerate(rows):
        if (row["paragraph"], row["kind"], row["probe"]) in FLAT:
            logprob[i] = -6.5
    pq.write_table(
        table.set_column(table.schema.get_field_index("logprob"), "logprob", [logprob]), path / "probes.parquet"
    )
    return path


def _check(ours, reference, curves):
    for key, ref in reference.items():
        rec = ours[key]
        assert rec["effectivity"] == pytest.approx(ref["effectivity"], abs=1e-6), key
        assert rec["effectivity_by_encounter"] == pytest.approx(ref["by_encounter"], abs=1e-6), key
        assert rec["t_max"] == ref["t_max"], key
        assert curves[key] == pytest.approx(ref["curve"], abs=1e-6), key
        assert rec["a"] == pytest.approx(ref["a"], abs=1e-6), key
        assert rec["b"] == pytest.approx(ref["b"], abs=1e-6), key
        assert rec["r2"] == pytest.approx(ref["r2"], abs=1e-6), key


def _ours(path, options):
    analysis = analyse_run(load_run(path), options)
    records = {(g.scenario, g.kind): g.record() for g in analysis.fits}
    curves = {(g.scenario, g.kind): list(g.retention_mean) for g in analysis.fits}
    return records, curves


def test_the_planted_log_exercises_every_rule(planted):
    ref = study_code_reference(planted, WINDOW)
    paper = paper_reference(planted, WINDOW)
    assert sum(r["dropped"] for r in ref.values()) == len(FLAT)  # exactly-zero gains
    assert sum(r["excluded"] for r in paper.values()) > len(FLAT)  # negative gains too
    assert ref[("once", "mem")]["t_max"] < paper[("once", "mem")]["t_max"]  # one t range vs one per group


@pytest.mark.parametrize("perplexity", [False, True], ids=["loss", "perplexity"])
def test_study_code_rules_equal_the_study_scripts(planted, perplexity):
    reference = study_code_reference(planted, WINDOW, perplexity=perplexity)
    ours, curves = _ours(planted, FitOptions(rules="study-code", scale="perplexity" if perplexity else "logprob"))
    assert len(reference) == 9
    _check(ours, reference, curves)
    for key, ref in reference.items():
        assert ours[key]["exclusions"] == ({ZERO_GAIN: ref["dropped"]} if ref["dropped"] else {})


def test_paper_rules_equal_the_papers_definitions(planted):
    reference = paper_reference(planted, WINDOW)
    ours, curves = _ours(planted, FitOptions())  # window 20 comes from the manifest
    _check(ours, reference, curves)
    for key, ref in reference.items():
        assert ours[key]["n_excluded"] == ref["excluded"]
        assert set(ours[key]["exclusions"]) <= {NO_GAIN}


# ---- by hand -----------------------------------------------------------------------------------------------

#: Window 2. Paragraph 0 ("dup") meets its text at steps 2 and 5; paragraph 1 ("once") at step 1;
#: paragraph 2 ("fall") at step 1; paragraph 3 is a control ("none"). Values are binary fractions, exact in
#: the log's float32.
DUP = [-6.0, -6.0, -5.0, -4.0, -4.5, -4.5, -3.5, -3.75, -4.0, -4.25, -4.5, -4.75, -5.0]
ONCE_TIE = [-5.0, -5.0, -4.0, -4.0, -4.25, -4.5, -4.5, -4.625, -4.75, -4.875, -5.0, -5.125, -5.25]
ONCE_LOSS = [-5.0, -5.0, -5.25, -5.5, -5.75, -6.0, -6.25, -6.5, -6.75, -7.0, -7.25, -7.5, -7.75]
ONCE_FLAT = [-7.0] * 13
FALL = [-5.0, -5.0, -4.0, -5.5, -5.625, -5.75, -5.875, -6.0, -6.125, -6.25, -6.375, -6.5, -6.625]
CONTROL = [-8.0 + 0.125 * k for k in range(13)]


@pytest.fixture
def tiny(tmp_path):
    return write_trajectories(
        tmp_path / "tiny",
        {
            (0, "dup", "mem", 0): DUP,
            (1, "once", "mem", 0): ONCE_TIE,
            (1, "once", "mem", 1): ONCE_LOSS,
            (1, "once", "mem", 2): ONCE_FLAT,
            (2, "fall", "mem", 0): FALL,
            (3, "none", "mem", 0): CONTROL,
        },
        [(2, 0, "dup"), (5, 0, "dup"), (1, 1, "once"), (1, 2, "fall")],
    )


def by_group(records):
    return {(r["scenario"], r["kind"]): r for r in records}


def fitted(record, ts, rs):
    a, b, r2 = line(ts, rs)
    return (
        record["a"] == pytest.approx(a, abs=1e-9)
        and record["b"] == pytest.approx(b, abs=1e-9)
        and record["r2"] == pytest.approx(r2, abs=1e-9)
    )


def test_paper_rules_by_hand(tiny):
    rec = by_group(fit_records(load_run(tiny), FitOptions(window=2)))
    # dup: E1 = ℓ(3) − ℓ(2) = 1.0, E2 = ℓ(6) − ℓ(5) = 1.0; reference ℓ(t_1 = 2) = −5, denominator 1.5;
    # t = 1 .. 12 − (5 + 2) = 5: R = (ℓ(6 + t) + 5) / 1.5.
    dup = rec[("dup", "mem")]
    assert dup["effectivity_by_encounter"] == [1.0, 1.0] and dup["effectivity"] == 1.0 and dup["t_max"] == 5
    assert fitted(dup, range(1, 6), [1.25 / 1.5, 1.0 / 1.5, 0.75 / 1.5, 0.5 / 1.5, 0.25 / 1.5])
    # once: the window (1, 3] ties at −4.0 and the earliest step (2) is the maximum, so R(1) = ℓ(3) + 5 = 1.0
    # (the later step would give 0.75). The losing and the flat probe are excluded; all three give
    # effectivity: pooled [1.0, −0.25, 0.0] -> quartiles −0.125, 0.5 -> nothing removed -> 0.75 / 3.
    once = rec[("once", "mem")]
    assert once["exclusions"] == {NO_GAIN: 2} and once["n_excluded"] == 2 and once["t_max"] == 9
    assert once["effectivity"] == pytest.approx(0.25, abs=1e-12)
    assert fitted(once, range(1, 10), [1.0, 0.75, 0.5, 0.5, 0.375, 0.25, 0.125, 0.0, -0.125])
    # fall: R(t) = ℓ(2 + t) + 5 = −0.5, −0.625, ... over t = 1 .. 9: kept as it is (it falls: a > 0).
    fall = rec[("fall", "mem")]
    assert fall["negated"] is False and fall["a"] > 0
    assert fitted(fall, range(1, 10), [-0.5 - 0.125 * i for i in range(9)])


def test_study_code_rules_by_hand(tiny):
    rec = by_group(fit_records(load_run(tiny), FitOptions(window=2, rules="study-code")))
    # dup: the reference is the first logged step, ℓ(0) = −6: denominator 2.5, R = (ℓ(6 + t) + 6) / 2.5.
    dup = rec[("dup", "mem")]
    assert dup["t_max"] == 5 and dup["effectivity"] == 1.0
    assert fitted(dup, range(1, 6), [0.9, 0.8, 0.7, 0.6, 0.5])
    # once: the losing probe is kept (denominator −0.25: R = 1 + t), the flat one dropped, also from
    # effectivity: pooled [1.0, −0.25] -> 0.375. One t range for all groups: 1 .. 12 − (5 + 2) = 5.
    once = rec[("once", "mem")]
    assert once["exclusions"] == {ZERO_GAIN: 1} and once["t_max"] == 5
    assert once["effectivity"] == pytest.approx(0.375, abs=1e-12)
    assert fitted(once, range(1, 6), [(1.0 + 2) / 2, (0.75 + 3) / 2, (0.5 + 4) / 2, (0.5 + 5) / 2, (0.375 + 6) / 2])
    # fall: mean R(1) = −0.5 < 0, so the curve is negated: 0.5, 0.625, ... and rises (a < 0).
    fall = rec[("fall", "mem")]
    assert fall["negated"] is True and fall["a"] < 0 and "no_decay" in fall["flags"]
    assert fitted(fall, range(1, 6), [0.5 + 0.125 * i for i in range(5)])


def test_control_adjustment_by_hand(tiny):
    # The control drifts by +0.125 per step, so ℓ'(k) = ℓ(k) − 0.125 k. dup, encounter 1: the window (2, 4]
    # of ℓ' holds −4.375, −5 and ℓ'(2) = −5.25 -> E1 = 0.875; encounter 2: −4.25, −4.625 and ℓ'(5) = −5.125
    # -> E2 = 0.875.
    analysis = analyse_run(load_run(tiny), FitOptions(window=2, control_adjust=True))
    dup = next(g for g in analysis.fits if g.scenario == "dup")
    assert dup.effectivity_by_encounter == [0.875, 0.875]
    raw = next(g for g in analysis.raw.fits if g.scenario == "dup")
    assert raw.effectivity_by_encounter == [1.0, 1.0]
    assert list(analysis.control_drift["mem"]) == [0.125 * k for k in range(13)]
    control = next(g for g in analysis.fits if g.scenario == "none")
    assert control.control and control.drift_last == 1.5 and control.a != control.a  # a control has no fit
