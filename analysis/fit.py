"""Per (scenario, kind): effectivity, mean retainability R(t), the decay constant and the learnability threshold.

Outlier removal (interquartile rule, factor `iqr_factor`) is applied within each (scenario, kind) group:
- effectivity of encounter i: over the group's E(q,i) values;
- overall effectivity: the mean of those per-encounter means (pooling all encounters before the rule
  would flag a whole encounter whose gains differ from the others, e.g. the first, as outliers);
- mean R(t): separately at every t over the group's probes (as the reference study's code does), so that
  a probe that is an outlier only late in training still counts early.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from analysis.load import METRIC_COLUMNS, Run
from analysis.metrics import (
    Acquisition,
    Encounters,
    Retention,
    acquisition,
    fit_decay,
    iqr_mean,
    probe_encounters,
    retention,
    x_intercept,
)
from harness.errors import UserError


@dataclass(frozen=True)
class FitOptions:
    window: int = 50
    """w: steps after an encounter searched for the local acquisition maximum."""
    iqr_factor: float = 1.5
    """Interquartile-rule factor for outlier removal (the study's text: 1.5; its code: 2.0)."""
    metric: str = "logprob"
    """Probe-log column used as ℓ: logprob, logprob_sum or first_logprob."""
    t_min: int = 1
    """First t of the decay fit (t = 0 has no logarithm)."""
    t_max: int | None = None
    """Last t of the decay fit; None = the largest t every probe of the group has (see `default_t_max`)."""

    def validate(self) -> None:
        if self.window < 1:
            raise UserError(f"option window: must be >= 1, got {self.window}")
        if not self.iqr_factor >= 0:
            raise UserError(f"option iqr_factor: must be >= 0, got {self.iqr_factor}")
        if self.metric not in METRIC_COLUMNS:
            raise UserError(f"option metric: must be one of {', '.join(METRIC_COLUMNS)}, got {self.metric!r}")
        if self.t_min < 1:
            raise UserError(f"option t_min: must be >= 1 (log10 t), got {self.t_min}")
        if self.t_max is not None and self.t_max < self.t_min:
            raise UserError(f"option t_max: must be >= t_min = {self.t_min}, got {self.t_max}")


@dataclass
class GroupFit:
    scenario: str
    kind: str
    n_probes: int
    n_excluded: int
    exclusions: dict[str, int]
    effectivity: float
    effectivity_by_encounter: list[float]
    encounter_steps: list[int]
    """Distinct encounter steps of the group's paragraphs (for labelling; groups may mix schedules)."""
    t_min: int
    t_max: int | None
    t_max_default: int | None
    a: float = math.nan
    b: float = math.nan
    a_se: float = math.nan
    r2: float = math.nan
    n_points: int = 0
    t_star_steps: float = math.nan
    t_star_tokens: float = math.nan
    exact_match_first: float = math.nan
    """Fraction of the group's probes recalled exactly at the first logged step (before any encounter)."""
    exact_match_last: float = math.nan
    """Fraction of the group's probes recalled exactly at the last logged step."""
    exact_match_peak: float = math.nan
    """Highest exact-match rate over the logged steps."""
    partial: bool = False
    notes: list[str] = field(default_factory=list)
    retention_t: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), repr=False)
    retention_mean: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)

    def record(self) -> dict:
        """The JSON object printed by `analysis fit --json` (NaN and infinity become null)."""
        return {
            "scenario": self.scenario,
            "kind": self.kind,
            "a": _num(self.a),
            "a_se": _num(self.a_se),
            "b": _num(self.b),
            "r2": _num(self.r2),
            "t_star_steps": _num(self.t_star_steps),
            "t_star_tokens": _num(self.t_star_tokens),
            "effectivity": _num(self.effectivity),
            "effectivity_by_encounter": [_num(v) for v in self.effectivity_by_encounter],
            "n_probes": self.n_probes,
            "n_excluded": self.n_excluded,
            "exclusions": dict(self.exclusions),
            "t_min": self.t_min,
            "t_max": self.t_max,
            "n_points": self.n_points,
            "exact_match_first": _num(self.exact_match_first),
            "exact_match_last": _num(self.exact_match_last),
            "exact_match_peak": _num(self.exact_match_peak),
            "partial": self.partial,
            "notes": list(self.notes),
        }


def _num(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


@dataclass
class RunAnalysis:
    """The intermediate arrays of one fit, kept for plots."""

    run: Run
    options: FitOptions
    values: np.ndarray
    encounters: Encounters
    acquisition: Acquisition
    retention: Retention
    fits: list[GroupFit]


def analyse_run(run: Run, options: FitOptions | None = None) -> RunAnalysis:
    options = options or FitOptions()
    options.validate()
    values = run.metric(options.metric)
    enc = probe_encounters(run)
    acq = acquisition(run, values, enc, options.window)
    ret = retention(run, values, enc, acq)
    fits = [_fit_group(run, options, enc, acq, ret, scenario, kind) for scenario, kind in run.groups()]
    return RunAnalysis(run, options, values, enc, acq, ret, fits)


def fit_run(run: Run, options: FitOptions | None = None) -> list[GroupFit]:
    """SPEC §3 for every (scenario, kind) of the run."""
    return analyse_run(run, options).fits


def fit_records(run: Run, options: FitOptions | None = None) -> list[dict]:
    """Exactly the JSON objects that `analysis fit --json` prints."""
    return [g.record() for g in fit_run(run, options)]


def exact_match_rate(run: Run, members: np.ndarray) -> np.ndarray:
    """Fraction of the given probes whose greedy decoding yields the target, at every logged step."""
    if run.exact_match is None:
        raise UserError(f"{run.path / 'probes.parquet'}: no 'exact_match' column")
    return run.exact_match[members].mean(axis=0)


def default_t_max(last_step: int, last_encounter: np.ndarray, window: int) -> int:
    """min over probes of (last logged step − (t_N + w)).

    t counts from t_LAM(q,N), which depends on the data but never exceeds t_N + w, so every probe has
    t_LAM(q,N) + t <= last logged step for every t up to this bound, whatever its maximum was.
    """
    return int(last_step - (last_encounter + window).max())


def _fit_group(run: Run, options: FitOptions, enc: Encounters, acq: Acquisition, ret: Retention,
               scenario: str, kind: str) -> GroupFit:
    members = np.flatnonzero((run.scenario == scenario) & (run.kind == kind))
    reasons, counts = np.unique(ret.reason[members], return_counts=True)
    exclusions = {str(r): int(c) for r, c in zip(reasons, counts) if r}
    kept = members[ret.reason[members] == ""]
    injected = members[enc.count[members] > 0]
    last = int(run.steps[-1])
    notes: list[str] = []
    partial = False

    # Effectivity: pooled over (probe, encounter) and per encounter index.
    n_enc = int(enc.count[injected].max(initial=0))
    eff = acq.effectivity[injected][:, :n_enc] if n_enc else np.zeros((0, 0))
    by_encounter, _ = iqr_mean(eff, options.iqr_factor, axis=0) if n_enc else (np.zeros(0), None)
    finite = by_encounter[np.isfinite(by_encounter)]
    effectivity = finite.mean() if len(finite) else math.nan
    if n_enc and acq.window_open[injected][:, :n_enc].any():
        partial = True
        notes.append(f"the run ends at step {last}, before the {options.window}-step window of an encounter closes; "
                     "that encounter's maximum is taken over the logged part of its window")
    if enc.dropped_after_end:
        partial = True
        notes.append(f"{enc.dropped_after_end} injection(s) at or after the last logged step {last} are ignored")
    if len(injected) == 0:
        notes.append("no probe of this group belongs to an injected paragraph")

    encounter_steps = sorted({int(s) for s in enc.steps[injected].ravel() if s >= 0})
    fit = GroupFit(
        scenario=scenario, kind=kind, n_probes=len(members), n_excluded=len(members) - len(kept),
        exclusions=exclusions, effectivity=float(np.asarray(effectivity)),
        effectivity_by_encounter=[float(v) for v in np.atleast_1d(by_encounter)],
        encounter_steps=encounter_steps, t_min=options.t_min, t_max=None, t_max_default=None,
        partial=partial, notes=notes,
    )
    if run.exact_match is not None:
        rate = exact_match_rate(run, members)
        fit.exact_match_first, fit.exact_match_last, fit.exact_match_peak = float(rate[0]), float(rate[-1]), float(rate.max())
    if run.tokens_per_step is None:
        notes.append("manifest.json has no tokens_per_step: t* in tokens unknown")
    if len(kept) == 0:
        if len(injected):
            notes.append("no probe has retainability (every denominator <= 0); decay not fitted")
        return fit

    t_default = default_t_max(last, ret.last_encounter[kept], options.window)
    fit.t_max_default = t_default
    t_max = options.t_max if options.t_max is not None else t_default
    fit.t_max = t_max if t_max >= options.t_min else None
    if t_max < options.t_min:
        fit.partial = True
        notes.append(f"the run ends at step {last}, before the window of the last encounter closes plus t_min = "
                     f"{options.t_min} step(s) (needs step {last + options.t_min - t_default}); decay not fitted")
        return fit
    if t_max > t_default:
        fit.partial = True
        notes.append(f"t_max = {t_max} exceeds {t_default}, the largest t every probe has; "
                     "late means cover fewer probes")

    upper = min(t_max, len(ret.t) - 1)
    t = ret.t[options.t_min: upper + 1]
    block = ret.values[kept][:, options.t_min: upper + 1]
    mean_r, _ = iqr_mean(block, options.iqr_factor, axis=0)
    fit.retention_t, fit.retention_mean = t, mean_r
    line = fit_decay(t, mean_r)
    if line is None:
        notes.append(f"fewer than 2 logged t in [{options.t_min}, {t_max}]; decay not fitted")
        return fit
    fit.a, fit.b, fit.a_se, fit.r2, fit.n_points = line.a, line.b, line.a_se, line.r2, line.n_points
    fit.t_star_steps = x_intercept(line)
    if run.tokens_per_step is not None:
        fit.t_star_tokens = fit.t_star_steps * run.tokens_per_step
    if not line.a > 0:
        notes.append("mean retainability does not fall with log t (a <= 0): no x-intercept")
    elif not math.isfinite(fit.t_star_steps):
        notes.append("the x-intercept 10^(b/a) overflows")
    return fit
