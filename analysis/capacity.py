"""Stored knowledge in bits, bits per parameter, exact-match memorization and overwriting, from capacity runs.

A capacity run trains a model on biographies whose attribute values are drawn uniformly from value sets of
known size (`fictional_knowledge.bios`); probe i of kind `mem` (or `sem`) of every person asks for attribute
i, and `manifest.json["capacity"]` (`harness.rundir.CapacityManifest`) records the value-set sizes, the
model's parameter counts and the exposures per fact at every run step.

Stored knowledge (the idea is Allen-Zhu & Li, "Physics of Language Models: Part 3.3, Knowledge Capacity
Scaling Laws", 2024: a model that predicts a uniformly drawn value with cross-entropy below log2 |V| must
hold information about it in its weights). For fact f = (person, attribute a) at step k:

    CE_f(k)   = −logprob_sum_f(k) / ln 2        bits: the value's tokens given the probe prompt
    bits(k)   = Σ_f max(0, log2 |V_a| − CE_f(k))          (reported as `bits`)
    strict(k) = Σ_a max(0, Σ_{f of a} [log2 |V_a| − CE_f(k)])   (reported as `bits_strict`)

Why these forms. The values of a set are prefix-free (checked by `knowledge validate`), so the model's
probabilities of a set's values after the same prompt sum to at most 1 and CE_f is at least the
cross-entropy of the model's distribution restricted to the set. A code for all the values then costs at
most Σ_f CE_f bits given the model, while the values hold Σ_f log2 |V_a| bits; what the model saves is what
its weights must store. `bits_strict` applies that argument per attribute: it is a lower bound up to one bit
per attribute (the flag that picks the model's code or a uniform one), and facts the model gets worse than a
uniform guess (CE above log2 |V|, common before it has learned which values exist) cancel facts it knows.
`bits` floors every fact at 0, i.e. counts only facts known better than a uniform guess; a per-fact flag makes
it a lower bound up to one bit per fact, so it can overstate by at most that much. Allen-Zhu & Li's bound
has further terms for learning the names and the value sets themselves; both are left out here (the names
are in the prompt, and leaving out stored information only lowers the estimate).

Bits per parameter: bits / parameters (total and non-embedding). Memorization: the exact-match rate (greedy
decoding of the whole value, the probe log's `exact_match`), fitted against exposures E as
M(E) = M∞·(1 − e^(−E/τ)). Across runs, each model's capacity is its largest stored bits over the rungs that
differ in the number of people N (so it is read where bits stop growing with N, provided some rung offers
more than the model stores), and a line through the origin of capacity against parameters gives bits per
parameter with its standard error. Overwriting: for a knowledge base whose exposures stop while another one
is trained, the share of its bits and exact matches kept, and its mean retainability after the switch with
the same decay fit as injected paragraphs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from analysis.load import Run
from analysis.metrics import Acquisition, Encounters, fit_decay, iqr_mean, retention
from analysis.rules import PAPER
from harness import rundir
from harness.errors import UserError

LN2 = math.log(2.0)
#: Probe kinds whose probe i asks for attribute i.
ATTRIBUTE_KINDS = ("mem", "sem")


@dataclass(frozen=True)
class CapacityOptions:
    kind: str = "mem"
    """Probe kind to measure: mem (the biography's own sentence) or sem (a held-out wording)."""
    at_exposures: float | None = None
    """Compare runs at the logged step whose exposures are nearest this (default: each run's last logged step)."""
    iqr_factor: float = 1.5
    """Interquartile-rule factor of the mean retainability after an overwrite."""
    metric: str = "logprob"
    """Probe-log column used as ℓ for retainability after an overwrite."""

    def validate(self) -> None:
        if self.kind not in ATTRIBUTE_KINDS:
            raise UserError(f"option kind: must be one of {', '.join(ATTRIBUTE_KINDS)}, got {self.kind!r}")
        if self.at_exposures is not None and not self.at_exposures >= 0:
            raise UserError(f"option at_exposures: must be >= 0, got {self.at_exposures}")
        if not self.iqr_factor >= 0:
            raise UserError(f"option iqr_factor: must be >= 0, got {self.iqr_factor}")


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

    def __call__(self, exposures: np.ndarray) -> np.ndarray:
        return self.m_inf * -np.expm1(-np.asarray(exposures, dtype=np.float64) / self.tau)

    def record(self) -> dict:
        return {
            "m_inf": _num(self.m_inf),
            "tau": _num(self.tau),
            "r2": _num(self.r2),
            "n_points": self.n_points,
            "at_bound": self.at_bound,
        }


def fit_saturation(exposures: np.ndarray, rate: np.ndarray) -> SaturationFit | None:
    """Least squares of rate ≈ M∞·(1 − e^(−E/τ)) with 0 <= M∞ <= 1 (a rate). For a given τ the best M∞ is a
    one-variable linear fit (closed form, clipped to [0, 1], which is exact for a one-variable quadratic), so
    only τ is searched: on a log grid from a hundredth of the smallest positive E to a hundred times the
    largest, then by golden section between the best grid point's neighbours.
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

    lo, hi = math.log(positive.min() / 100), math.log(positive.max() * 100)
    grid = np.linspace(lo, hi, 241)
    sse = np.array([best_m(g)[1] for g in grid])
    i = int(np.argmin(sse))
    a, b = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    ratio = (math.sqrt(5) - 1) / 2
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    for _ in range(100):  # golden section to ~1e-20 of the bracket
        if best_m(c)[1] <= best_m(d)[1]:
            b, d = d, c
            c = b - ratio * (b - a)
        else:
            a, c = c, d
            d = a + ratio * (b - a)
    log_tau = (a + b) / 2
    m, residual = best_m(log_tau)
    total = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - residual / total if total > 0 else math.nan
    at_bound = i in (0, len(grid) - 1)
    return SaturationFit(m, math.exp(log_tau), r2, int(len(x)), at_bound)


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
    if len(x) == 0 or not (x > 0).any():
        return None
    sxx = float(x @ x)
    slope = float(x @ y) / sxx
    sse = float(((y - slope * x) ** 2).sum())
    se = math.sqrt(sse / (len(x) - 1) / sxx) if len(x) > 1 else math.nan
    sst = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - sse / sst if len(x) > 1 and sst > 0 else math.nan
    return ProportionalFit(slope, se, r2, int(len(x)))


# ---- one run -------------------------------------------------------------------------------------------------


@dataclass
class AttributeCapacity:
    name: str
    size: int
    facts: int
    bits: np.ndarray
    """Stored bits of this attribute's facts at every logged step (per-fact floor)."""
    cross_entropy: np.ndarray
    """Mean cross-entropy of the value in bits at every logged step."""
    exact_match: np.ndarray

    @property
    def available_bits(self) -> float:
        return self.facts * math.log2(self.size)


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
    exposures: np.ndarray
    """Exposures per fact at every logged step."""
    bits: np.ndarray
    bits_strict: np.ndarray
    exact_match: np.ndarray
    attributes: list[AttributeCapacity]
    done: int
    """Column of the first logged step at which its exposures have reached their final value (its training is
    over; after it, another knowledge base may be trained)."""
    memorization: SaturationFit | None = None
    overwrite: Overwrite | None = None

    @property
    def available_bits(self) -> float:
        return sum(a.available_bits for a in self.attributes)


@dataclass
class RunCapacity:
    run: Run
    info: rundir.CapacityManifest
    kind: str
    knowledge_bases: list[KnowledgeBase]
    column: int
    """Column of the logged step the run is compared at (see CapacityOptions.at_exposures)."""
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
        return np.sum([kb.bits for kb in self.knowledge_bases], axis=0)

    @property
    def available_bits(self) -> float:
        return sum(kb.available_bits for kb in self.knowledge_bases)

    @property
    def people(self) -> int:
        return sum(kb.people for kb in self.knowledge_bases)

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
            "step": int(self.steps[col]),
            "exposures": _num(self.knowledge_bases[0].exposures[col]),
            "bits": _num(bits),
            "bits_strict": _num(sum(kb.bits_strict[col] for kb in self.knowledge_bases)),
            "available_bits": _num(self.available_bits),
            "bits_per_parameter": _num(bits / self.info.parameters),
            "bits_per_non_embedding_parameter": _num(bits / self.info.non_embedding_parameters),
            "knowledge_bases": [],
            "notes": list(self.notes),
        }
        for kb in self.knowledge_bases:
            out["knowledge_bases"].append(
                {
                    "scenario": kb.scenario,
                    "people": kb.people,
                    "available_bits": _num(kb.available_bits),
                    "bits": _num(kb.bits[col]),
                    "bits_strict": _num(kb.bits_strict[col]),
                    "exact_match": _num(kb.exact_match[col]),
                    "exposures": _num(kb.exposures[col]),
                    "trained_until_step": int(self.steps[kb.done]),
                    "memorization_fit": kb.memorization.record() if kb.memorization else None,
                    "attributes": [
                        {
                            "name": a.name,
                            "size": a.size,
                            "log2_size": _num(math.log2(a.size)),
                            "facts": a.facts,
                            "available_bits": _num(a.available_bits),
                            "bits": _num(a.bits[col]),
                            "mean_cross_entropy_bits": _num(a.cross_entropy[col]),
                            "exact_match": _num(a.exact_match[col]),
                        }
                        for a in kb.attributes
                    ],
                    "overwrite": kb.overwrite.record() if kb.overwrite else None,
                    "trajectory": {
                        "step": self.steps.tolist(),
                        "exposures": [_num(v) for v in kb.exposures],
                        "bits": [_num(v) for v in kb.bits],
                        "exact_match": [_num(v) for v in kb.exact_match],
                    },
                }
            )
        return out


def capacity_of_run(run: Run, options: CapacityOptions | None = None) -> RunCapacity:
    """Stored bits, exact-match rates, memorization fits and overwriting for every knowledge base of a run."""
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
    beyond = members & (run.probe_index >= len(info.attributes))
    if beyond.any():
        r = int(np.flatnonzero(beyond)[0])
        raise UserError(
            f"{run.path / rundir.PROBES}: paragraph {run.paragraph[r]}, {options.kind} probe "
            f"{run.probe_index[r]}: the manifest's 'capacity.attributes' has only {len(info.attributes)} "
            "attributes (probe i asks for attribute i)"
        )
    scenarios = [s for s in dict.fromkeys(run.scenario[members].tolist())]
    unknown = [s for s in scenarios if s not in info.exposures]
    if unknown:
        raise UserError(
            f"{file}: field 'capacity.exposures' has no entry for scenario {unknown[0]!r} of the probe log "
            f"(entries: {', '.join(info.exposures)})"
        )

    ce = -run.metrics["logprob_sum"] / LN2  # [probes x steps], bits
    log2_size = np.array([math.log2(size) for _, size in info.attributes])
    notes: list[str] = []
    bases = []
    for scenario in scenarios:
        kb_members = members & (run.scenario == scenario)
        attrs = []
        strict = np.zeros(len(run.steps))
        for i, (name, size) in enumerate(info.attributes):
            rows = kb_members & (run.probe_index == i)
            gain = log2_size[i] - ce[rows]  # [facts x steps]
            strict += np.maximum(gain.sum(axis=0), 0.0)
            attrs.append(
                AttributeCapacity(
                    name=name,
                    size=size,
                    facts=int(rows.sum()),
                    bits=np.maximum(gain, 0.0).sum(axis=0),
                    cross_entropy=ce[rows].mean(axis=0) if rows.any() else np.full(len(run.steps), np.nan),
                    exact_match=run.exact_match[rows].mean(axis=0) if rows.any() else np.full(len(run.steps), np.nan),
                )
            )
        exposures = info.exposures_at(scenario, run.steps)
        done = int(np.argmax(exposures >= exposures[-1] - 1e-9))
        kb = KnowledgeBase(
            scenario=scenario,
            people=len(np.unique(run.paragraph[kb_members])),
            exposures=exposures,
            bits=np.sum([a.bits for a in attrs], axis=0),
            bits_strict=strict,
            exact_match=run.exact_match[kb_members].mean(axis=0),
            attributes=attrs,
            done=done,
        )
        growing = np.arange(len(run.steps)) <= done
        kb.memorization = fit_saturation(exposures[growing], kb.exact_match[growing])
        if kb.memorization is None:
            why = (
                "no exact match at any logged step"
                if (kb.exact_match[growing] == 0).all()
                else "fewer than 2 logged steps with exposures > 0"
            )
            notes.append(f"{scenario}: {why}; memorization not fitted")
        elif kb.memorization.at_bound:
            notes.append(
                f"{scenario}: the memorization fit's τ is at the edge of its search range "
                f"({kb.memorization.tau:.3g} exposures): the rate shows no saturation to fit"
            )
        if done < len(run.steps) - 1 and _others_grow_after(info, scenario, run.steps[done], run.steps[-1]):
            kb.overwrite = overwrite(run, kb_members, kb, options)
        bases.append(kb)
    column = _comparison_column(run, bases[0], options.at_exposures)
    if run.steps[0] != 0:
        notes.append(f"the probe log starts at step {run.steps[0]}, not 0")
    return RunCapacity(run, info, options.kind, bases, column, notes)


def _others_grow_after(info: rundir.CapacityManifest, scenario: str, step: int, last: int) -> bool:
    """Another knowledge base is trained between `step` and `last`."""
    return any(float(np.diff(info.exposures_at(s, [step, last]))[0]) > 0 for s in info.exposures if s != scenario)


def _comparison_column(run: Run, kb: KnowledgeBase, at_exposures: float | None) -> int:
    if at_exposures is None:
        return len(run.steps) - 1
    candidates = np.arange(kb.done + 1)
    return int(candidates[np.argmin(np.abs(kb.exposures[candidates] - at_exposures))])


def overwrite(run: Run, members: np.ndarray, kb: KnowledgeBase, options: CapacityOptions) -> Overwrite:
    """Retainability of a knowledge base after its training stopped (the switch: the first logged step with all
    its exposures), with the machinery of injected paragraphs: t_pre = step 0 (before any exposure) and the
    state at the switch in place of the acquisition maximum, so R(q,t) = [ℓ(switch + t) − ℓ(0)] /
    [ℓ(switch) − ℓ(0)]; mean R(t) with outliers removed at every t, and the line R ≈ b − a·log10 t."""
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
        bits_at_switch=float(kb.bits[col]),
        bits_last=float(kb.bits[-1]),
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
    def capacity(self) -> float:
        return float(self.bits().max())

    @property
    def limited_by_model(self) -> bool:
        """Some rung offered more than twice what the model stores: the capacity is the model's, not the data's."""
        return any(r.available_bits > 2 * self.capacity for r in self.runs)

    def record(self) -> dict:
        return {
            "model": self.model,
            "parameters": self.parameters,
            "non_embedding_parameters": self.non_embedding_parameters,
            "capacity_bits": _num(self.capacity),
            "bits_per_parameter": _num(self.capacity / self.parameters),
            "bits_per_non_embedding_parameter": _num(self.capacity / self.non_embedding_parameters),
            "limited_by": "model" if self.limited_by_model else "data",
            "rungs": [
                {
                    "run": r.label,
                    "people": r.people,
                    "available_bits": _num(r.available_bits),
                    "bits": _num(r.bits[r.column]),
                }
                for r in sorted(self.runs, key=lambda r: r.people)
            ],
        }


@dataclass
class CapacityAnalysis:
    runs: list[RunCapacity]
    models: list[ModelCapacity]
    fit_total: ProportionalFit | None
    fit_non_embedding: ProportionalFit | None
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
            "notes": list(self.notes),
        }


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
        model = ModelCapacity(name, rs[0].info.parameters, rs[0].info.non_embedding_parameters, rs)
        if not model.limited_by_model:
            notes.append(
                f"model {name}: every rung stores more than half of the bits it offers, so its capacity "
                "may be limited by the data; add a rung with more people"
            )
        models.append(model)
    models.sort(key=lambda m: m.parameters)
    capacity = np.array([m.capacity for m in models])
    fit_total = fit_proportional(np.array([m.parameters for m in models]), capacity)
    fit_non_embedding = fit_proportional(np.array([m.non_embedding_parameters for m in models]), capacity)
    return CapacityAnalysis(results, models, fit_total, fit_non_embedding, notes)


def is_capacity_run(run: Run) -> bool:
    return rundir.CAPACITY in run.manifest


def _num(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None
