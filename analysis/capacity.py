"""Knowledge capacity and fact memorization of capacity runs, measured as Allen-Zhu & Li and Lu et al. measure them.

A capacity run trains a model on biographies whose names and attribute values are drawn uniformly from sets of
known size (`fictional_knowledge.bios`); `manifest.json["capacity"]` (`harness.rundir.CapacityManifest`) records
the sizes, N0 (the names the generator could draw), the people of each knowledge base, the model's parameter counts
and the exposures per fact at every run step. Per person the probe log scores (summed log-probabilities, exact
matches): `name` probe 0, the full name at the start of the biography (after the end-of-text token that precedes
every training document); `ctx` probe j, value j of `context` inside the biography's own text (the training
document's prefix); `mem` / `sem` probe i, attribute i after an isolated sentence (or a held-out wording).

R(F), the headline (Allen-Zhu & Li, "Physics of Language Models: Part 3.3, Knowledge Capacity Scaling Laws", 2024,
Def. 4.1/4.3 for bioS). For N people, with p1 the mean over people of the name's summed cross-entropy and p2 the
mean of the summed cross-entropy of the values scored in context (nats; Remark 3.1: scoring each value after the
name and the values before it in the same biography chains to the joint probability of all of them):

    name term   N · log2(N0 / e^p1)
    value term  N · log2(S0 / e^p2)      S0 = ∏ sizes of the independent values (a derived one adds nothing)
    bits        name term + value term   (R(F) = bits / parameters)

Neither term is floored: a model that knows nothing scores at most 0 in expectation (its probabilities over a
prefix-free set sum to at most 1), so positive bits are information its weights hold. The most a knowledge base
offers is N·log2(N0/N) + N·log2 S0 (the name term at p1 = ln N). Where the probe log holds a uniform sample of a
knowledge base's people, the totals are N times the sample means, with the sample's standard error.

Diagnostics, not the measure: with CE_f the cross-entropy (bits) of fact f = (person, independent attribute) after
its isolated probe, `isolated_bits` = Σ_f (log2 |V_a| − CE_f) and `floored_bits` = Σ_f max(0, log2 |V_a| − CE_f).
The floor credits a model for every fact it happens to guess above uniform: coding which facts those are costs up
to F·H2(q) bits (F facts, q the share with a positive gain, H2 the binary entropy), shown as `floor_slack`; only
`floored_bits − floor_slack` is a lower bound.

Memorization (Lu et al., "Scaling Laws for Fact Memorization of Large Language Models", 2024): a fact is recalled
when greedy decoding gives its whole value (in context where the run has `ctx` probes). A model's exact-match fact
capacity is the number of facts recalled at its rung with the most people; across models it is fitted linearly
against non-embedding parameters. Capacity against epochs uses separate runs of one model and one set of people
whose schedules end at different numbers of exposures E, fitted as C(E) = c + a·(1 − e^(−E/τ)). Within one run the
exact-match rate against exposures is fitted as M(E) = M∞·(1 − e^(−E/τ)) (intermediate points of one schedule: a
description of that run, not a capacity). Every fit that ends at a bound says so in the notes.

Across the rungs of one model (runs that differ in N), its capacity is its most bits; it is limited by the model
when some rung offered more than twice that and the rung reaching it had converged (its bits grew by less than
`plateau` over the last tenth of its exposures), by training when it had not, and otherwise possibly by the data.
A line through the origin of capacity against parameters gives bits per parameter (a model whose bits are ≤ 0
at every rung enters it as 0: what a model stores is never below 0, and its bound shows nothing more).
Overwriting: for a knowledge base whose exposures stop while another one is trained, the share of its bits and
exact matches kept, and its mean retainability after the switch with the same decay fit as injected paragraphs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from analysis.load import Run
from analysis.metrics import Acquisition, Encounters, fit_decay, iqr_mean, retention
from analysis.rules import PAPER
from harness import rundir
from harness.errors import UserError

LN2 = math.log(2.0)
#: Probe kinds whose probe i asks for attribute i after an isolated prompt.
ATTRIBUTE_KINDS = ("mem", "sem")
#: `ctx` probe j scores context value j inside the biography; `name` probe 0 scores the name that opens it.
CONTEXT_KIND = "ctx"
NAME_KIND = "name"
#: The share of a run's exposures whose growth decides whether it converged (the last tenth).
PLATEAU_WINDOW = 0.1


@dataclass(frozen=True)
class CapacityOptions:
    kind: str = "mem"
    """Probe kind of the isolated diagnostics: mem (the biography's sentence on its own) or sem (a held-out
    wording)."""
    at_exposures: float | None = None
    """Compare runs at the logged step whose exposures are nearest this (default: each run's last logged step)."""
    iqr_factor: float = 1.5
    """Interquartile-rule factor of the mean retainability after an overwrite."""
    metric: str = "logprob"
    """Probe-log column used as ℓ for retainability after an overwrite."""
    plateau: float = 0.05
    """A rung has converged when its bits grew by less than this share over the last tenth of its exposures; a
    model whose best rung had not is limited by training."""

    def validate(self) -> None:
        if self.kind not in ATTRIBUTE_KINDS:
            raise UserError(f"option kind: must be one of {', '.join(ATTRIBUTE_KINDS)}, got {self.kind!r}")
        if self.at_exposures is not None and not self.at_exposures >= 0:
            raise UserError(f"option at_exposures: must be >= 0, got {self.at_exposures}")
        if not self.iqr_factor >= 0:
            raise UserError(f"option iqr_factor: must be >= 0, got {self.iqr_factor}")
        if not self.plateau >= 0:
            raise UserError(f"option plateau: must be >= 0, got {self.plateau}")


# ---- information ---------------------------------------------------------------------------------------------


def binary_entropy(q: float | np.ndarray) -> float | np.ndarray:
    """H2(q) in bits (0 at q = 0 and 1)."""
    q = np.clip(np.asarray(q, dtype=np.float64), 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -(q * np.log2(q) + (1 - q) * np.log2(1 - q))
    h = np.where((q <= 0) | (q >= 1), 0.0, h)
    return float(h) if h.ndim == 0 else h


def most_bits(people: int, name_space: int | None, value_bits_per_person: float) -> float:
    """What a knowledge base offers: N·log2(N0/N) (names; 0 without N0) + N·log2 S0 (values)."""
    names = people * math.log2(name_space / people) if name_space else 0.0
    return names + people * value_bits_per_person


@dataclass(frozen=True)
class Total:
    """A total over the people of a knowledge base at every logged step, from all of them or a uniform sample."""

    value: np.ndarray
    se: np.ndarray
    """Standard error of the estimate (0 when every person is probed; finite-population corrected)."""


def total_over_people(per_person: np.ndarray, people: int) -> Total:
    """N × the mean over the probed people ([probed x steps]), with its standard error."""
    per_person = np.asarray(per_person, dtype=np.float64)
    probed = per_person.shape[0]
    value = people * per_person.mean(axis=0)
    if probed >= people or probed < 2:
        return Total(value, np.zeros_like(value))
    sd = per_person.std(axis=0, ddof=1)
    return Total(value, people * sd / math.sqrt(probed) * math.sqrt(1 - probed / people))


# ---- fits ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SaturationFit:
    """M(E) = m_inf·(1 − e^(−E/tau)) by least squares."""

    m_inf: float
    tau: float
    r2: float
    n_points: int
    at_bound: bool
    """τ ended at the edge of the search range (the rate has not started to saturate, or is flat at once)."""
    max_exposures: float = math.inf
    """The most exposures among the fitted points."""

    def __call__(self, exposures: np.ndarray) -> np.ndarray:
        return self.m_inf * -np.expm1(-np.asarray(exposures, dtype=np.float64) / self.tau)

    @property
    def problems(self) -> list[str]:
        """Why the fitted numbers are not a saturation level and a time constant."""
        out = []
        if self.at_bound:
            out.append(f"τ is at the edge of its search range ({self.tau:.3g} exposures)")
        if self.m_inf >= 1.0 - 1e-12:
            out.append("M∞ is clipped at 1")
        if self.tau > self.max_exposures:
            out.append(f"τ ({self.tau:.3g}) is beyond the {self.max_exposures:.3g} exposures trained")
        return out

    def record(self) -> dict:
        return {
            "m_inf": _num(self.m_inf),
            "tau": _num(self.tau),
            "r2": _num(self.r2),
            "n_points": self.n_points,
            "at_bound": self.at_bound,
            "problems": self.problems,
        }


def _search_log_tau(sse: Callable[[float], float], lo: float, hi: float) -> tuple[float, bool]:
    """The log τ in [lo, hi] with the least `sse`: a 241-point grid, then golden section between the best grid
    point's neighbours; also whether the grid's best point was an end of the range."""
    grid = np.linspace(lo, hi, 241)
    values = np.array([sse(g) for g in grid])
    i = int(np.argmin(values))
    a, b = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    ratio = (math.sqrt(5) - 1) / 2
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    for _ in range(100):  # golden section to ~1e-20 of the bracket
        if sse(c) <= sse(d):
            b, d = d, c
            c = b - ratio * (b - a)
        else:
            a, c = c, d
            d = a + ratio * (b - a)
    return (a + b) / 2, i in (0, len(grid) - 1)


def fit_saturation(exposures: np.ndarray, rate: np.ndarray) -> SaturationFit | None:
    """Least squares of rate ≈ M∞·(1 − e^(−E/τ)) with 0 <= M∞ <= 1 (a rate). For a given τ the best M∞ is a
    one-variable linear fit (closed form, clipped to [0, 1], which is exact for a one-variable quadratic), so
    only τ is searched, from a hundredth of the smallest positive E to a hundred times the largest.
    None with fewer than 2 points at E > 0, or when the rate is 0 throughout (nothing to fit)."""
    x = np.asarray(exposures, dtype=np.float64)
    y = np.asarray(rate, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    positive = x[x > 0]
    if len(np.unique(positive)) < 2 or not (y > 0).any():
        return None

    def best_m(log_tau: float) -> tuple[float, float]:
        f = -np.expm1(-x / math.exp(log_tau))
        denom = float(f @ f)
        m = min(max(float(f @ y) / denom, 0.0), 1.0) if denom > 0 else 0.0
        return m, float(((y - m * f) ** 2).sum())

    log_tau, at_bound = _search_log_tau(
        lambda g: best_m(g)[1], math.log(positive.min() / 100), math.log(positive.max() * 100)
    )
    m, residual = best_m(log_tau)
    total = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - residual / total if total > 0 else math.nan
    return SaturationFit(m, math.exp(log_tau), r2, int(len(x)), at_bound, float(positive.max()))


@dataclass(frozen=True)
class OffsetExponentialFit:
    """C(E) = offset + amplitude·(1 − e^(−E/tau)) by least squares (capacity against the exposures a schedule
    ends at)."""

    offset: float
    amplitude: float
    tau: float
    r2: float
    n_points: int
    at_bound: bool
    """τ ended at the edge of its search range (no curvature to fit: a line or a step)."""

    @property
    def limit(self) -> float:
        """C(∞) = offset + amplitude."""
        return self.offset + self.amplitude

    def __call__(self, exposures: np.ndarray) -> np.ndarray:
        return self.offset + self.amplitude * -np.expm1(-np.asarray(exposures, dtype=np.float64) / self.tau)

    def record(self) -> dict:
        return {
            "offset": _num(self.offset),
            "amplitude": _num(self.amplitude),
            "limit": _num(self.limit),
            "tau": _num(self.tau),
            "r2": _num(self.r2),
            "n_points": self.n_points,
            "at_bound": self.at_bound,
        }


def fit_offset_exponential(exposures: np.ndarray, values: np.ndarray) -> OffsetExponentialFit | None:
    """Least squares of C ≈ c + a·(1 − e^(−E/τ)): for a given τ, (c, a) is a linear fit (closed form), so only τ
    is searched, from a hundredth of the smallest positive E to a hundred times the largest. None with fewer than
    3 distinct E (three parameters)."""
    x = np.asarray(exposures, dtype=np.float64)
    y = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    positive = x[x > 0]
    if len(np.unique(x)) < 3 or len(positive) == 0:
        return None

    def solve(log_tau: float) -> tuple[float, float, float]:
        design = np.stack([np.ones_like(x), -np.expm1(-x / math.exp(log_tau))], axis=1)
        coef, *_ = np.linalg.lstsq(design, y, rcond=None)
        return float(coef[0]), float(coef[1]), float(((y - design @ coef) ** 2).sum())

    log_tau, at_bound = _search_log_tau(
        lambda g: solve(g)[2], math.log(positive.min() / 100), math.log(positive.max() * 100)
    )
    c, a, residual = solve(log_tau)
    total = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - residual / total if total > 0 else math.nan
    return OffsetExponentialFit(c, a, math.exp(log_tau), r2, int(len(x)), at_bound)


@dataclass(frozen=True)
class ProportionalFit:
    """y ≈ slope·x through the origin (bits against parameters: slope = bits per parameter)."""

    slope: float
    slope_se: float
    r2: float
    """1 − SSE / Σ(y − ȳ)² (the centred form; it can be negative for a line forced through the origin)."""
    n_points: int

    def record(self) -> dict:
        return {
            "slope": _num(self.slope),
            "slope_se": _num(self.slope_se),
            "r2": _num(self.r2),
            "n_points": self.n_points,
        }


def fit_proportional(x: np.ndarray, y: np.ndarray) -> ProportionalFit | None:
    """slope = Σxy / Σx², its standard error sqrt(SSE / (n − 1) / Σx²); None without points."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if len(x) == 0 or not (x > 0).any():
        return None
    sxx = float(x @ x)
    slope = float(x @ y) / sxx
    sse = float(((y - slope * x) ** 2).sum())
    se = math.sqrt(sse / (len(x) - 1) / sxx) if len(x) > 1 else math.nan
    sst = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - sse / sst if len(x) > 1 and sst > 0 else math.nan
    return ProportionalFit(slope, se, r2, int(len(x)))


@dataclass(frozen=True)
class LinearFit:
    """y ≈ intercept + slope·x by ordinary least squares (facts recalled against non-embedding parameters)."""

    slope: float
    intercept: float
    slope_se: float
    r2: float
    n_points: int

    def record(self) -> dict:
        return {
            "slope": _num(self.slope),
            "intercept": _num(self.intercept),
            "slope_se": _num(self.slope_se),
            "r2": _num(self.r2),
            "n_points": self.n_points,
        }


def fit_linear(x: np.ndarray, y: np.ndarray) -> LinearFit | None:
    """The least-squares line; slope_se = sqrt(SSE / (n − 2) / Σ(x − x̄)²). None with fewer than 2 distinct x."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if len(np.unique(x)) < 2:
        return None
    sxx = float(((x - x.mean()) ** 2).sum())
    slope = float(((x - x.mean()) * (y - y.mean())).sum()) / sxx
    intercept = float(y.mean() - slope * x.mean())
    sse = float(((y - intercept - slope * x) ** 2).sum())
    sst = float(((y - y.mean()) ** 2).sum())
    se = math.sqrt(sse / (len(x) - 2) / sxx) if len(x) > 2 else math.nan
    r2 = 1.0 - sse / sst if sst > 0 else math.nan
    return LinearFit(slope, intercept, se, r2, int(len(x)))


# ---- one run -------------------------------------------------------------------------------------------------


@dataclass
class ValueScores:
    """One attribute (or context value such as the gender) of a knowledge base at every logged step."""

    name: str
    size: int
    derived_from: str | None
    context_ce: np.ndarray
    """Mean cross-entropy (bits) of the value in context (NaN without ctx probes)."""
    context_em: np.ndarray
    isolated_ce: np.ndarray
    """Mean cross-entropy (bits) after the isolated probe (NaN for context-only values such as the gender)."""
    isolated_em: np.ndarray

    @property
    def bits(self) -> float:
        """log2 |V|; a derived value adds 0 to the information of a person."""
        return 0.0 if self.derived_from else math.log2(self.size)


@dataclass
class Overwrite:
    """What a knowledge base keeps after its training stopped while another one was trained."""

    switch_step: int
    """The first logged step at which it had all its exposures."""
    bits_at_switch: float
    bits_last: float
    exact_match_at_switch: float
    exact_match_last: float
    n_probes: int
    n_excluded: int
    """Probes whose ℓ had not risen by the switch (no retainability)."""
    retention_t: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, np.int64))
    retention_mean: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    a: float = math.nan
    a_se: float = math.nan
    b: float = math.nan
    r2: float = math.nan

    @property
    def bits_kept(self) -> float:
        return self.bits_last / self.bits_at_switch if self.bits_at_switch > 0 else math.nan

    @property
    def exact_match_kept(self) -> float:
        return self.exact_match_last / self.exact_match_at_switch if self.exact_match_at_switch > 0 else math.nan

    def record(self) -> dict:
        return {
            "switch_step": self.switch_step,
            "bits_at_switch": _num(self.bits_at_switch),
            "bits_last": _num(self.bits_last),
            "bits_kept": _num(self.bits_kept),
            "exact_match_at_switch": _num(self.exact_match_at_switch),
            "exact_match_last": _num(self.exact_match_last),
            "exact_match_kept": _num(self.exact_match_kept),
            "n_probes": self.n_probes,
            "n_excluded": self.n_excluded,
            "a": _num(self.a),
            "a_se": _num(self.a_se),
            "b": _num(self.b),
            "r2": _num(self.r2),
        }


@dataclass
class KnowledgeBase:
    """One scenario of a capacity run: the facts of one generated biography set."""

    scenario: str
    people: int
    """N: people of the knowledge base."""
    probed: int
    """People the probe log scores (all of them, or a uniform sample)."""
    exposures: np.ndarray
    """Exposures per fact at every logged step."""
    name_bits: Total
    """N · log2(N0 / e^p1) (NaN without name probes or N0)."""
    value_bits: Total
    """N · log2(S0 / e^p2), values scored in context (NaN without ctx probes)."""
    bits: Total
    """name term + value term: what R(F) counts."""
    most_bits: float
    """N·log2(N0/N) + N·log2 S0: what the knowledge base offers."""
    isolated_bits: np.ndarray
    """Diagnostic: Σ_f (log2|V_a| − CE_f) after isolated probes (independent attributes)."""
    floored_bits: np.ndarray
    """Diagnostic: Σ_f max(0, log2|V_a| − CE_f) after isolated probes."""
    floor_slack: np.ndarray
    """F·H2(q): the most the floor can credit a model beyond what it holds."""
    facts: int
    """F: facts of independent attributes (people × attributes)."""
    exact_match: np.ndarray
    """Share of the facts recalled exactly (in context when the run scores it, else after the isolated probe)."""
    exact_match_in_context: bool
    values: list[ValueScores]
    done: int
    """Column of the first logged step at which its exposures have reached their final value (its training is
    over; after it, another knowledge base may be trained)."""
    memorization: SaturationFit | None = None
    overwrite: Overwrite | None = None

    @property
    def facts_recalled(self) -> np.ndarray:
        """Facts recalled exactly (Lu et al.'s count), estimated over all N people."""
        return self.exact_match * self.facts

    def converged(self, plateau: float) -> bool | None:
        """Its bits grew by less than `plateau` (a share of their final value) over the last tenth of its
        exposures, from the last logged step at or before 90 % of them; None when that step lies before half of
        them (or the bits are unknown): nothing to tell it by."""
        final = self.exposures[self.done]
        before = self.exposures[: self.done]
        earlier = np.flatnonzero((before <= (1 - PLATEAU_WINDOW) * final + 1e-9) & (before >= 0.5 * final))
        if final <= 0 or len(earlier) == 0:
            return None
        last, start = self.bits.value[self.done], self.bits.value[earlier[-1]]
        if not (np.isfinite(last) and np.isfinite(start)):
            return None
        return bool(last - start <= plateau * max(abs(last), 1e-9))


@dataclass
class RunCapacity:
    run: Run
    info: rundir.CapacityManifest
    kind: str
    knowledge_bases: list[KnowledgeBase]
    column: int
    """Column of the logged step the run is compared at (see CapacityOptions.at_exposures)."""
    plateau: float = CapacityOptions.plateau
    notes: list[str] = field(default_factory=list)
    name: str = ""
    """How tables and figures name the run (its label, made unique among the runs analysed together)."""

    @property
    def label(self) -> str:
        return self.name or self.run.label

    @property
    def steps(self) -> np.ndarray:
        return self.run.steps

    @property
    def bits(self) -> np.ndarray:
        return np.sum([kb.bits.value for kb in self.knowledge_bases], axis=0)

    @property
    def bits_se(self) -> np.ndarray:
        return np.sqrt(np.sum([kb.bits.se**2 for kb in self.knowledge_bases], axis=0))

    @property
    def most_bits(self) -> float:
        return sum(kb.most_bits for kb in self.knowledge_bases)

    @property
    def people(self) -> int:
        return sum(kb.people for kb in self.knowledge_bases)

    @property
    def facts_recalled(self) -> np.ndarray:
        return np.sum([kb.facts_recalled for kb in self.knowledge_bases], axis=0)

    @property
    def final_exposures(self) -> float:
        return float(self.knowledge_bases[0].exposures[-1])

    @property
    def scheduled_exposures(self) -> float:
        """The exposures its schedule ends at (the manifest's last point of its first knowledge base). Its last
        update may stop short of them by part of a row, by a different share for each N: rungs of one schedule are
        grouped by this, not by the exposures reached."""
        return float(self.info.exposures[self.knowledge_bases[0].scenario][1][-1])

    @property
    def converged(self) -> bool | None:
        states = [kb.converged(self.plateau) for kb in self.knowledge_bases]
        return None if None in states else all(states)

    def _sum(self, attr: str) -> float:
        return float(sum(getattr(kb, attr)[self.column] for kb in self.knowledge_bases))

    def record(self) -> dict:
        col = self.column
        bits = float(self.bits[col])
        out = {
            "run": self.label,
            "path": str(self.run.path),
            "model": self.info.model,
            "kind": self.kind,
            "parameters": self.info.parameters,
            "non_embedding_parameters": self.info.non_embedding_parameters,
            "people": self.people,
            "probed_people": sum(kb.probed for kb in self.knowledge_bases),
            "step": int(self.steps[col]),
            "exposures": _num(self.knowledge_bases[0].exposures[col]),
            "bits": _num(bits),
            "bits_se": _num(self.bits_se[col]),
            "name_bits": _num(sum(kb.name_bits.value[col] for kb in self.knowledge_bases)),
            "value_bits": _num(sum(kb.value_bits.value[col] for kb in self.knowledge_bases)),
            "most_bits": _num(self.most_bits),
            "bits_per_parameter": _num(bits / self.info.parameters),
            "bits_per_non_embedding_parameter": _num(bits / self.info.non_embedding_parameters),
            "facts_recalled": _num(self.facts_recalled[col]),
            "converged": self.converged,
            "diagnostics": {
                "isolated_bits": _num(self._sum("isolated_bits")),
                "floored_bits": _num(self._sum("floored_bits")),
                "floor_slack": _num(self._sum("floor_slack")),
            },
            "knowledge_bases": [],
            "notes": list(self.notes),
        }
        for kb in self.knowledge_bases:
            out["knowledge_bases"].append(
                {
                    "scenario": kb.scenario,
                    "people": kb.people,
                    "probed_people": kb.probed,
                    "most_bits": _num(kb.most_bits),
                    "bits": _num(kb.bits.value[col]),
                    "bits_se": _num(kb.bits.se[col]),
                    "name_bits": _num(kb.name_bits.value[col]),
                    "value_bits": _num(kb.value_bits.value[col]),
                    "isolated_bits": _num(kb.isolated_bits[col]),
                    "floored_bits": _num(kb.floored_bits[col]),
                    "floor_slack": _num(kb.floor_slack[col]),
                    "facts": kb.facts,
                    "facts_recalled": _num(kb.facts_recalled[col]),
                    "exact_match": _num(kb.exact_match[col]),
                    "exact_match_in_context": kb.exact_match_in_context,
                    "exposures": _num(kb.exposures[col]),
                    "trained_until_step": int(self.steps[kb.done]),
                    "converged": kb.converged(self.plateau),
                    "memorization_fit": kb.memorization.record() if kb.memorization else None,
                    "values": [
                        {
                            "name": v.name,
                            "size": v.size,
                            "derived_from": v.derived_from,
                            "log2_size": _num(math.log2(v.size)),
                            "context_cross_entropy_bits": _num(v.context_ce[col]),
                            "context_exact_match": _num(v.context_em[col]),
                            "isolated_cross_entropy_bits": _num(v.isolated_ce[col]),
                            "isolated_exact_match": _num(v.isolated_em[col]),
                        }
                        for v in kb.values
                    ],
                    "overwrite": kb.overwrite.record() if kb.overwrite else None,
                    "trajectory": {
                        "step": self.steps.tolist(),
                        "exposures": [_num(v) for v in kb.exposures],
                        "bits": [_num(v) for v in kb.bits.value],
                        "name_bits": [_num(v) for v in kb.name_bits.value],
                        "value_bits": [_num(v) for v in kb.value_bits.value],
                        "floored_bits": [_num(v) for v in kb.floored_bits],
                        "exact_match": [_num(v) for v in kb.exact_match],
                    },
                }
            )
        return out


def _scores(run: Run, rows: np.ndarray, persons: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(cross-entropy in bits, exact match) of one probe per person ([persons x steps]) from the rows `rows`
    (a mask over probes); every person must have exactly one row."""
    index = np.flatnonzero(rows)
    by_person = dict(zip(run.paragraph[index].tolist(), index.tolist()))
    missing = [p for p in persons.tolist() if p not in by_person]
    if missing:
        raise UserError(f"{run.path / rundir.PROBES}: paragraph {missing[0]} has no {what}")
    order = np.array([by_person[p] for p in persons.tolist()], dtype=np.int64)
    ce = -run.metrics["logprob_sum"][order].astype(np.float64) / LN2
    return ce, run.exact_match[order].astype(np.float64)


def _nan(n_steps: int, *shape: int) -> np.ndarray:
    return np.full((*shape, n_steps), np.nan)


def _knowledge_base(
    run: Run, info: rundir.CapacityManifest, scenario: str, kind: str, notes: list[str]
) -> KnowledgeBase:
    n_steps = len(run.steps)
    members = run.scenario == scenario
    persons = np.unique(run.paragraph[members & np.isin(run.kind, [kind, CONTEXT_KIND, NAME_KIND])])
    probed = len(persons)
    people = info.people.get(scenario, probed)
    if people < probed:
        raise UserError(
            f"{run.path / rundir.MANIFEST}: field 'capacity.people.{scenario}' is {people}, but the probe log "
            f"scores {probed} people of that knowledge base"
        )

    def one(kind_: str, index: int, what: str) -> tuple[np.ndarray, np.ndarray]:
        rows = members & (run.kind == kind_) & (run.probe_index == index)
        if not rows.any():
            return _nan(n_steps, probed), _nan(n_steps, probed)
        return _scores(run, rows, persons, what)

    has_context = bool((members & (run.kind == CONTEXT_KIND)).any()) and bool(info.context)
    has_names = bool((members & (run.kind == NAME_KIND)).any()) and info.name_space is not None
    values: list[ValueScores] = []
    context_ce = np.zeros((probed, n_steps))
    context_em: dict[str, np.ndarray] = {}
    for j, (name, size) in enumerate(info.context if has_context else ()):
        ce, em = one(CONTEXT_KIND, j, f"ctx probe {j} ({name})")
        context_ce += ce
        context_em[name] = em
        values.append(
            ValueScores(name, size, info.derived.get(name), ce.mean(0), em.mean(0), _nan(n_steps), _nan(n_steps))
        )
    by_name = {v.name: v for v in values}
    isolated_gain = np.zeros((probed, n_steps))
    isolated_floor = np.zeros((probed, n_steps))
    positive = np.zeros((probed, n_steps))
    em_sum = np.zeros((probed, n_steps))
    iso_em_sum = np.zeros((probed, n_steps))
    independent = 0
    for i, (name, size) in enumerate(info.attributes):
        ce, em = one(kind, i, f"{kind} probe {i} ({name})")
        derived = info.derived.get(name)
        if name in by_name:
            v = by_name[name]
            v.isolated_ce, v.isolated_em = ce.mean(0), em.mean(0)
        else:
            v = ValueScores(name, size, derived, _nan(n_steps), _nan(n_steps), ce.mean(0), em.mean(0))
            values.append(v)
        if derived:
            continue
        independent += 1
        gain = math.log2(size) - ce
        isolated_gain += gain
        isolated_floor += np.maximum(gain, 0.0)
        positive += gain > 0
        iso_em_sum += em
        if name in context_em:
            em_sum += context_em[name]
    value_space_bits = sum(0.0 if info.derived.get(n) else math.log2(s) for n, s in info.context or info.attributes)
    if has_context:
        value_bits = total_over_people(value_space_bits - context_ce, people)
    else:
        value_bits = Total(np.full(n_steps, np.nan), np.full(n_steps, np.nan))
        notes.append(f"{scenario}: no ctx probes in the run: R(F) needs values scored in context")
    if has_names:
        name_ce, _ = one(NAME_KIND, 0, "name probe 0")
        name_part = math.log2(info.name_space) - name_ce
        name_bits = total_over_people(name_part, people)
        combined = total_over_people(name_part + value_space_bits - context_ce, people) if has_context else value_bits
    else:
        name_part = None
        name_bits = Total(np.zeros(n_steps), np.zeros(n_steps))
        combined = value_bits
        notes.append(f"{scenario}: no name probes (or no name_space): the name term is left out of R(F)")
    facts = people * independent
    with np.errstate(invalid="ignore"):
        share = positive.mean(0) / max(independent, 1)
    exposures = info.exposures_at(scenario, run.steps)
    done = int(np.argmax(exposures >= exposures[-1] - 1e-9))
    return KnowledgeBase(
        scenario=scenario,
        people=people,
        probed=probed,
        exposures=exposures,
        name_bits=name_bits,
        value_bits=value_bits,
        bits=combined,
        most_bits=most_bits(people, info.name_space if name_part is not None else None, value_space_bits),
        isolated_bits=people * isolated_gain.mean(0),
        floored_bits=people * isolated_floor.mean(0),
        floor_slack=facts * binary_entropy(share),
        facts=facts,
        exact_match=(em_sum if has_context else iso_em_sum).mean(0) / max(independent, 1),
        exact_match_in_context=has_context,
        values=values,
        done=done,
    )


def capacity_of_run(run: Run, options: CapacityOptions | None = None) -> RunCapacity:
    """R(F) and its diagnostics, exact-match rates, memorization fits and overwriting for every knowledge base."""
    options = options or CapacityOptions()
    options.validate()
    file = run.path / rundir.MANIFEST
    info = rundir.CapacityManifest.from_manifest(run.manifest, file)
    if "logprob_sum" not in run.metrics:
        raise UserError(
            f"{run.path / rundir.PROBES}: column 'logprob_sum' is missing (stored bits need the summed "
            "log-probability of each value)"
        )
    if run.exact_match is None:
        raise UserError(f"{run.path / rundir.PROBES}: column 'exact_match' is missing")
    members = run.kind == options.kind
    if not members.any():
        raise UserError(f"{run.path / rundir.PROBES}: no probes of kind {options.kind!r}")
    for kind, limit, field_name in (
        (options.kind, len(info.attributes), "attributes"),
        (CONTEXT_KIND, len(info.context), "context"),
        (NAME_KIND, 1, "name"),
    ):
        beyond = (run.kind == kind) & (run.probe_index >= limit)
        if beyond.any():
            r = int(np.flatnonzero(beyond)[0])
            raise UserError(
                f"{run.path / rundir.PROBES}: paragraph {run.paragraph[r]}, {kind} probe {run.probe_index[r]}: "
                + (
                    f"the manifest's 'capacity.{field_name}' has only {limit} entries ({kind} probe i asks for entry i)"
                    if kind != NAME_KIND
                    else "a person has one name probe (index 0)"
                )
            )
    scenarios = list(dict.fromkeys(run.scenario[members].tolist()))
    unknown = [s for s in scenarios if s not in info.exposures]
    if unknown:
        raise UserError(
            f"{file}: field 'capacity.exposures' has no entry for scenario {unknown[0]!r} of the probe log "
            f"(entries: {', '.join(info.exposures)})"
        )
    notes: list[str] = []
    bases = []
    for scenario in scenarios:
        kb = _knowledge_base(run, info, scenario, options.kind, notes)
        growing = np.arange(len(run.steps)) <= kb.done
        kb.memorization = fit_saturation(kb.exposures[growing], kb.exact_match[growing])
        if kb.memorization is None:
            why = (
                "no exact match at any logged step"
                if (kb.exact_match[growing] == 0).all()
                else "fewer than 2 logged steps with exposures > 0"
            )
            notes.append(f"{scenario}: {why}; memorization not fitted")
        elif kb.memorization.problems:
            notes.append(
                f"{scenario}: the memorization fit M(E) = M∞(1 − e^(−E/τ)) describes no saturation: "
                + "; ".join(kb.memorization.problems)
            )
        if kb.done < len(run.steps) - 1 and _others_grow_after(info, scenario, run.steps[kb.done], run.steps[-1]):
            kb.overwrite = overwrite(run, run.scenario == scenario, kb, options)
        bases.append(kb)
    column = _comparison_column(run, bases[0], options.at_exposures)
    if run.steps[0] != 0:
        notes.append(f"the probe log starts at step {run.steps[0]}, not 0")
    return RunCapacity(run, info, options.kind, bases, column, options.plateau, notes)


def _others_grow_after(info: rundir.CapacityManifest, scenario: str, step: int, last: int) -> bool:
    """Another knowledge base is trained between `step` and `last`."""
    return any(float(np.diff(info.exposures_at(s, [step, last]))[0]) > 0 for s in info.exposures if s != scenario)


def _comparison_column(run: Run, kb: KnowledgeBase, at_exposures: float | None) -> int:
    if at_exposures is None:
        return len(run.steps) - 1
    candidates = np.arange(kb.done + 1)
    return int(candidates[np.argmin(np.abs(kb.exposures[candidates] - at_exposures))])


def overwrite(run: Run, scenario_rows: np.ndarray, kb: KnowledgeBase, options: CapacityOptions) -> Overwrite:
    """Retainability of a knowledge base after its training stopped (the switch: the first logged step with all
    its exposures), with the machinery of injected paragraphs: t_pre = step 0 (before any exposure) and the
    state at the switch in place of the acquisition maximum, so R(q,t) = [ℓ(switch + t) − ℓ(0)] /
    [ℓ(switch) − ℓ(0)]; mean R(t) with outliers removed at every t, and the line R ≈ b − a·log10 t. The probes
    are the values in context where the run scores them, else those of `options.kind`."""
    in_context = scenario_rows & (run.kind == CONTEXT_KIND)
    members = in_context if in_context.any() else scenario_rows & (run.kind == options.kind)
    values = run.metric(options.metric)
    col = kb.done
    switch = int(run.steps[col])
    enc = Encounters(steps=np.where(members, 0, -1)[:, None], count=members.astype(np.int64), dropped_after_end=0)
    acq = Acquisition(
        lam_step=np.where(members, switch, -1)[:, None],
        lam_value=np.where(members, values[:, col], np.nan)[:, None],
        effectivity=np.full((len(members), 1), np.nan),
        window_open=np.zeros((len(members), 1), bool),
    )
    ret = retention(run, values, enc, acq, PAPER)  # t_pre = step 0 here; gains <= 0 excluded and counted
    kept = members & (ret.reason == "")
    out = Overwrite(
        switch_step=switch,
        bits_at_switch=float(kb.bits.value[col]),
        bits_last=float(kb.bits.value[-1]),
        exact_match_at_switch=float(kb.exact_match[col]),
        exact_match_last=float(kb.exact_match[-1]),
        n_probes=int(members.sum()),
        n_excluded=int(members.sum() - kept.sum()),
    )
    if kept.any() and len(ret.t) > 1:
        mean_r, _ = iqr_mean(ret.values[kept][:, 1:], options.iqr_factor, axis=0)
        out.retention_t, out.retention_mean = ret.t[1:], mean_r
        line = fit_decay(ret.t[1:], mean_r)
        if line is not None:
            out.a, out.a_se, out.b, out.r2 = line.a, line.a_se, line.b, line.r2
    return out


# ---- across runs ---------------------------------------------------------------------------------------------


@dataclass
class ModelCapacity:
    """One model's rungs (runs that differ in the number of people) and its capacity: the most bits stored."""

    model: str
    parameters: int
    non_embedding_parameters: int
    runs: list[RunCapacity]

    def bits(self) -> np.ndarray:
        return np.array([r.bits[r.column] for r in self.runs])

    @property
    def best(self) -> RunCapacity | None:
        bits = self.bits()
        return None if not np.isfinite(bits).any() else self.runs[int(np.nanargmax(bits))]

    @property
    def capacity(self) -> float:
        best = self.best
        return math.nan if best is None else float(best.bits[best.column])

    @property
    def largest(self) -> RunCapacity:
        """The rung with the most people (Lu et al.'s fact capacity is read there)."""
        return max(self.runs, key=lambda r: (r.people, r.final_exposures))

    @property
    def fact_capacity(self) -> float:
        r = self.largest
        return float(r.facts_recalled[r.column])

    @property
    def limited_by(self) -> str:
        """`training` when the rung with the most bits had not converged (or cannot be told), `model` when some
        rung offered more than twice the capacity, else `data`."""
        best = self.best
        if best is None or best.converged is not True:
            return "training"
        return "model" if any(r.most_bits > 2 * self.capacity for r in self.runs) else "data"

    def record(self) -> dict:
        return {
            "model": self.model,
            "parameters": self.parameters,
            "non_embedding_parameters": self.non_embedding_parameters,
            "capacity_bits": _num(self.capacity),
            "bits_per_parameter": _num(self.capacity / self.parameters),
            "bits_per_non_embedding_parameter": _num(self.capacity / self.non_embedding_parameters),
            "limited_by": self.limited_by,
            "fact_capacity": _num(self.fact_capacity),
            "fact_capacity_run": self.largest.label,
            "rungs": [
                {
                    "run": r.label,
                    "people": r.people,
                    "exposures": _num(r.final_exposures),
                    "most_bits": _num(r.most_bits),
                    "bits": _num(r.bits[r.column]),
                    "bits_se": _num(r.bits_se[r.column]),
                    "facts_recalled": _num(r.facts_recalled[r.column]),
                    "converged": r.converged,
                }
                for r in sorted(self.runs, key=lambda r: (r.people, r.final_exposures))
            ],
        }


@dataclass
class EpochCurve:
    """Lu et al.: one model and one set of people trained by separate runs whose schedules end at different
    exposures E; the facts recalled exactly at the end of each, fitted as C(E) = c + a·(1 − e^(−E/τ))."""

    model: str
    people: int
    exposures: np.ndarray
    facts_recalled: np.ndarray
    runs: list[str]
    fit: OffsetExponentialFit | None

    def record(self) -> dict:
        return {
            "model": self.model,
            "people": self.people,
            "exposures": [_num(v) for v in self.exposures],
            "facts_recalled": [_num(v) for v in self.facts_recalled],
            "runs": list(self.runs),
            "fit": self.fit.record() if self.fit else None,
        }


@dataclass
class CapacityAnalysis:
    runs: list[RunCapacity]
    models: list[ModelCapacity]
    fit_total: ProportionalFit | None
    fit_non_embedding: ProportionalFit | None
    fact_fit: LinearFit | None = None
    """Lu et al.: facts recalled exactly (at each model's largest N) against non-embedding parameters."""
    epochs: list[EpochCurve] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def record(self) -> dict:
        """The JSON object printed by `analysis capacity --json`."""
        return {
            "runs": [r.record() for r in self.runs],
            "models": [m.record() for m in self.models],
            "fit": {
                "total": self.fit_total.record() if self.fit_total else None,
                "non_embedding": self.fit_non_embedding.record() if self.fit_non_embedding else None,
            },
            "fact_fit": self.fact_fit.record() if self.fact_fit else None,
            "epochs": [e.record() for e in self.epochs],
            "notes": list(self.notes),
        }


def _limit_note(model: ModelCapacity) -> str | None:
    """Why a model's most bits may not be its capacity (None when a converged rung had room to spare)."""
    limit, best = model.limited_by, model.best
    if limit == "training":
        if best is None:
            why = "no rung has R(F)"
        elif best.converged is False:
            why = f"its rung with the most bits ({best.label}) was still gaining over its last tenth of exposures"
        else:
            why = f"its rung with the most bits ({best.label}) logged no step late enough to tell if it converged"
        return f"model {model.model}: {why}, so its capacity is limited by training, not the model"
    if limit == "data":
        return (
            f"model {model.model}: no rung offered more than twice the {model.capacity:,.0f} bits it stores, so its "
            "capacity may be limited by the data; add a rung with more people"
        )
    return None


def _epoch_curves(results: list[RunCapacity], notes: list[str]) -> list[EpochCurve]:
    groups: dict[tuple[str, int], list[RunCapacity]] = {}
    for r in results:
        if len(r.knowledge_bases) == 1:
            groups.setdefault((r.info.model, r.people), []).append(r)
    curves = []
    for (model, people), rs in groups.items():
        ends = {r.scheduled_exposures for r in rs}
        if len(ends) < 2:
            continue
        rs = sorted(rs, key=lambda r: r.final_exposures)
        e = np.array([r.final_exposures for r in rs])
        facts = np.array([r.facts_recalled[-1] for r in rs])
        fit = fit_offset_exponential(e, facts)
        curve = EpochCurve(model, people, e, facts, [r.label for r in rs], fit)
        where = f"model {model}, {people} people: facts recalled against the exposures a schedule ends at"
        if fit is None:
            notes.append(f"{where}: {len(ends)} distinct E, the offset exponential needs 3; not fitted")
        elif fit.at_bound:
            notes.append(f"{where}: the fit's τ is at the edge of its search range ({fit.tau:.3g}): no curvature")
        curves.append(curve)
    return curves


def analyse_capacity(runs: list[Run], options: CapacityOptions | None = None) -> CapacityAnalysis:
    """Every run, the models they belong to (by the manifest's `capacity.model`), and the fits across models."""
    options = options or CapacityOptions()
    results = [capacity_of_run(run, options) for run in runs]
    labels = [r.run.label for r in results]
    for r, label in zip(results, labels):
        r.name = label if labels.count(label) == 1 else f"{label} [{r.run.path.parent.name}/{r.run.path.name}]"
    by_model: dict[str, list[RunCapacity]] = {}
    for r in results:
        by_model.setdefault(r.info.model, []).append(r)
    models = []
    notes = []
    for name, rs in by_model.items():
        counts = {(r.info.parameters, r.info.non_embedding_parameters) for r in rs}
        if len(counts) > 1:
            raise UserError(
                f"runs of model {name!r} disagree on its parameter counts: "
                + "; ".join(f"{r.run.path}: {r.info.parameters}" for r in rs)
            )
        # Rungs of a model's capacity differ in N at the longest schedule; shorter schedules are epoch runs.
        longest = max(r.scheduled_exposures for r in rs)
        rungs = [r for r in rs if r.scheduled_exposures == longest]
        model = ModelCapacity(name, rs[0].info.parameters, rs[0].info.non_embedding_parameters, rungs)
        note = _limit_note(model)
        if note:
            notes.append(note)
        models.append(model)
    models.sort(key=lambda m: m.parameters)
    # What a model stores is never below 0 bits: a rung whose lower bound is negative shows only that.
    capacity = np.array([max(m.capacity, 0.0) if np.isfinite(m.capacity) else np.nan for m in models])
    for m in models:
        if m.capacity <= 0:
            notes.append(f"model {m.model}: R(F) ≤ 0 at every rung ({m.capacity:,.0f} at best): 0 bits in the fits")
    fit_total = fit_proportional(np.array([m.parameters for m in models]), capacity)
    fit_non_embedding = fit_proportional(np.array([m.non_embedding_parameters for m in models]), capacity)
    fact_fit = fit_linear(
        np.array([m.non_embedding_parameters for m in models]), np.array([m.fact_capacity for m in models])
    )
    epochs = _epoch_curves(results, notes)
    return CapacityAnalysis(results, models, fit_total, fit_non_embedding, fact_fit, epochs, notes)


def is_capacity_run(run: Run) -> bool:
    return rundir.CAPACITY in run.manifest


def _num(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None
