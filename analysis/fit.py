"""Per (scenario, kind): effectivity, mean retainability R(t), the decay constant and the learnability threshold.

Outlier removal (interquartile rule; the factor is the rule set's unless given) within each (scenario, kind):
- overall effectivity: over all (probe, encounter) values of the group pooled, once;
- effectivity of encounter i: over the group's E(q,i) values;
- mean R(t): separately at every t over the group's probes, so that a probe that is an outlier only late in
  training still counts early.
The rule sets (`analysis.rules`) decide the rest: which gains exclude a probe, where retainability's
reference is read, which t range is fitted.

Uncertainty: the decay line is fitted by ordinary least squares, which gives standard errors of a and b.
The interval of t* = 10^(b/a) comes from the delta method on b/a (default), or from a percentile bootstrap
over the group's probes (`bootstrap` > 0 resamples). The points of mean R(t) share their probes, so they
are not independent and the least-squares errors understate the spread; the bootstrap does not assume
independence across t and is the one to quote.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from statistics import NormalDist

import numpy as np

from analysis.load import METRIC_COLUMNS, PRIME_KIND, TWIN_START_TOLERANCE, Run, Twin, load_twin, twin_path
from analysis.metrics import (
    CONTROL_SCENARIO,
    REASONS,
    ZERO_GAIN,
    Acquisition,
    Encounters,
    LineFit,
    Retention,
    acquisition,
    control_adjusted,
    control_drift,
    fit_decay,
    iqr_mean,
    iqr_stats,
    level_crossing_fit,
    on_scale,
    pow10,
    probe_encounters,
    retention,
    t_star_interval_delta,
    twin_adjusted,
    x_intercept,
)
from analysis.rules import SCALES, Rules, rule_set
from harness.errors import UserError

#: Window when neither the option nor the run's manifest gives one (the study's 50 steps).
DEFAULT_WINDOW = 50
#: A fit is flagged as implausible when it explains less than this share of the variance of mean R(t) ...
WEAK_FIT_R2 = 0.3
#: ... or when t* lies more than this factor beyond the last fitted t (two decades of extrapolation).
FAR_EXTRAPOLATION = 100.0
FLAG_TEXT = {
    "weak_fit": f"R² below {WEAK_FIT_R2:g}: the line explains little of mean R(t)",
    "far_extrapolation": f"t* lies more than {FAR_EXTRAPOLATION:g}× beyond the last fitted t",
    "no_decay": "mean R(t) does not fall with log t (a ≤ 0): no t*",
}


#: The largest step count an option can name (a probe log's steps are int32).
MAX_T = 2**31 - 1


@dataclass(frozen=True)
class FitOptions:
    rules: str = "paper"
    """Rule set: `paper` (the study's text) or `study-code` (the study's public analysis code); docs/concepts.md
    lists where they differ."""
    window: int | None = None
    """w: steps after an encounter searched for the local acquisition maximum (default: the window the run
    recorded in manifest.json, else 50)."""
    iqr_factor: float | None = None
    """Interquartile-rule factor for outlier removal (default: the rule set's, paper 1.5, study-code 2.0)."""
    metric: str = "logprob"
    """Probe-log column used as ℓ: logprob, logprob_sum or first_logprob."""
    scale: str = "logprob"
    """`logprob`: work on ℓ. `perplexity`: work on −exp(−ℓ), the negated perplexity, so that higher is still
    better (the study's scripts' default)."""
    control_adjust: bool = False
    """Subtract the mean drift of the control probes of the same kind before computing anything (where the run is
    measured against a twin, the control-adjusted results are shown beside the twin-adjusted ones instead)."""
    twin_adjust: bool = True
    """Measure every probe against its own twin where the run has one (manifest.json `twin`, or `baseline`):
    effectivity, retainability and the fits on Δℓ = ℓ − ℓ^twin, with the raw (and control-adjusted) results beside
    them. false: ignore the twin."""
    baseline: str | None = None
    """The twin run directory to measure against (default: the twin the run's manifest names, if any)."""
    t_min: int = 1
    """First t of the decay fit (t = 0 has no logarithm)."""
    t_max: int | None = None
    """Last t of the decay fit (default: paper rules: the largest t every probe of the group has; study-code
    rules: one range for every group; `default_t_max`)."""
    retention_levels: tuple[float, ...] = (0.8, 0.5, 0.3)
    """Fractions of the gain: report the t at which mean R falls to each."""
    at: tuple[int, ...] = (100, 1000)
    """Report mean R (and the fitted line) at these t (steps)."""
    ci_level: float = 0.95
    """Confidence level of the interval of t*."""
    bootstrap: int = 0
    """Interval of t* from this many resamples of each group's probes (0: delta method)."""
    seed: int = 0
    """Seed of the bootstrap resampling."""

    @property
    def rule_set(self) -> Rules:
        return rule_set(self.rules)

    @property
    def factor(self) -> float:
        return self.iqr_factor if self.iqr_factor is not None else self.rule_set.iqr_factor

    def validate(self) -> None:
        rule_set(self.rules)
        if self.window is not None and self.window < 1:
            raise UserError(f"option window: must be >= 1, got {self.window}")
        if self.iqr_factor is not None and not self.iqr_factor >= 0:
            raise UserError(f"option iqr_factor: must be >= 0, got {self.iqr_factor}")
        if self.metric not in METRIC_COLUMNS:
            raise UserError(f"option metric: must be one of {', '.join(METRIC_COLUMNS)}, got {self.metric!r}")
        if self.scale not in SCALES:
            raise UserError(f"option scale: must be one of {', '.join(SCALES)}, got {self.scale!r}")
        if self.t_min < 1:
            raise UserError(f"option t_min: must be >= 1 (log10 t), got {self.t_min}")
        if self.t_max is not None and self.t_max < self.t_min:
            raise UserError(f"option t_max: must be >= t_min = {self.t_min}, got {self.t_max}")
        for level in self.retention_levels:
            if not 0 < level < 1:
                raise UserError(f"option retention_levels: {level:g} is not a fraction between 0 and 1")
        for t in self.at:
            if math.isfinite(t) and t < 1:
                raise UserError(f"option at: every t must be at least 1, got {t:g}")
            if isinstance(t, bool) or not math.isfinite(t) or t != int(t) or t > MAX_T:
                raise UserError(f"option at: every t must be a whole number of steps up to {MAX_T:,}, got {t:g}")
        for name in ("t_min", "t_max", "window"):
            value = getattr(self, name)
            if value is not None and value > MAX_T:
                raise UserError(f"option {name}: must be at most {MAX_T:,} steps, got {value:,}")
        if self.iqr_factor is not None and not math.isfinite(self.iqr_factor):
            raise UserError(f"option iqr_factor: must be a finite number, got {self.iqr_factor}")
        if not 0 < self.ci_level < 1:
            raise UserError(f"option ci_level: must be between 0 and 1, got {self.ci_level}")
        if self.bootstrap < 0 or self.bootstrap == 1:
            raise UserError(f"option bootstrap: must be 0 (delta method) or >= 2 resamples, got {self.bootstrap}")
        if self.baseline is not None and not self.twin_adjust:
            raise UserError(
                f"option baseline: {self.baseline} is a twin to measure against, but twin adjustment is off "
                "(twin_adjust false, --no-twin-adjust)"
            )

    def record(self) -> dict:
        """The options as JSON (what `fit --json` and `compare --json` record)."""
        return {
            "rules": self.rules,
            "scale": self.scale,
            "metric": self.metric,
            "control_adjust": self.control_adjust,
            "twin_adjust": self.twin_adjust,
            "baseline": self.baseline,
            "window": self.window,
            "iqr_factor": self.iqr_factor,
            "t_min": self.t_min,
            "t_max": self.t_max,
            "retention_levels": list(self.retention_levels),
            "at": list(self.at),
            "ci": {
                "method": "bootstrap" if self.bootstrap else "delta",
                "level": self.ci_level,
                "resamples": self.bootstrap,
                "seed": self.seed,
            },
        }


@dataclass
class Curve:
    """Mean R(t) of a group for t = 1 .. the largest t any of its probes reaches (before any negation)."""

    t: np.ndarray
    mean: np.ndarray
    se: np.ndarray
    kept: np.ndarray
    """Probes whose R(t) entered the mean."""
    removed: np.ndarray
    """Probes with an R(t) that the interquartile rule removed at that t."""


@dataclass
class GroupFit:
    scenario: str
    kind: str
    n_probes: int
    n_excluded: int
    exclusions: dict[str, int]
    """Reason key (analysis.metrics.REASONS) -> probes without retainability for that reason."""
    effectivity: float
    effectivity_by_encounter: list[float]
    encounter_steps: list[int]
    """Distinct encounter steps of the group's paragraphs (for labelling; groups may mix schedules)."""
    t_min: int
    t_max: int | None
    t_max_default: int | None
    control: bool = False
    """A control group: scenario `none`, never injected; it has a drift instead of a fit."""
    drift_last: float = math.nan
    """Control groups: mean ℓ change of its probes from the first to the last logged step (raw ℓ)."""
    a: float = math.nan
    b: float = math.nan
    a_se: float = math.nan
    b_se: float = math.nan
    r2: float = math.nan
    n_points: int = 0
    negated: bool = False
    """study-code rules: mean R at the first fitted t was negative, so the curve was negated before the fit."""
    t_star_steps: float = math.nan
    t_star_tokens: float = math.nan
    t_star_ci_steps: tuple[float, float] = (math.nan, math.nan)
    tokens_per_step: int | None = None
    retention_levels: list[dict] = field(default_factory=list)
    """[{"level", "t_fit", "t_observed"}]: where the fitted line / the observed mean first reach each level."""
    r_at: list[dict] = field(default_factory=list)
    """[{"t", "r", "se", "n", "r_fit"}]: observed mean R, its standard error and probes, and the line, at t."""
    flags: list[str] = field(default_factory=list)
    """Why the fit is implausible (keys of FLAG_TEXT); empty when it is not."""
    exact_match_first: float = math.nan
    """Fraction of the group's probes recalled exactly at the first logged step (before any encounter)."""
    exact_match_last: float = math.nan
    """Fraction of the group's probes recalled exactly at the last logged step."""
    exact_match_peak: float = math.nan
    """Highest exact-match rate over the logged steps."""
    partial: bool = False
    notes: list[str] = field(default_factory=list)
    curve: Curve | None = field(default=None, repr=False)
    retention_t: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), repr=False)
    """The fitted t (t_min .. t_max) ..."""
    retention_mean: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    """... and mean R at those t, as fitted (negated where `negated`)."""

    @property
    def t_star_ci_tokens(self) -> tuple[float, float]:
        if self.tokens_per_step is None:
            return (math.nan, math.nan)
        return (self.t_star_ci_steps[0] * self.tokens_per_step, self.t_star_ci_steps[1] * self.tokens_per_step)

    def record(self) -> dict:
        """The JSON object of one group in `analysis fit --json` (NaN becomes null; an unbounded end "inf")."""
        return {
            "scenario": self.scenario,
            "kind": self.kind,
            "control": self.control,
            "a": _num(self.a),
            "a_se": _num(self.a_se),
            "b": _num(self.b),
            "b_se": _num(self.b_se),
            "r2": _num(self.r2),
            "t_star_steps": _num(self.t_star_steps),
            "t_star_tokens": _num(self.t_star_tokens),
            "t_star_ci_steps": [_bound(v) for v in self.t_star_ci_steps],
            "t_star_ci_tokens": [_bound(v) for v in self.t_star_ci_tokens],
            "flags": list(self.flags),
            "effectivity": _num(self.effectivity),
            "effectivity_by_encounter": [_num(v) for v in self.effectivity_by_encounter],
            "retention_levels": [
                {k: _num(v) if k != "level" else v for k, v in d.items()} for d in self.retention_levels
            ],
            "r_at": [{k: (_num(v) if isinstance(v, float) else v) for k, v in d.items()} for d in self.r_at],
            "drift_last": _num(self.drift_last),
            "n_probes": self.n_probes,
            "n_excluded": self.n_excluded,
            "exclusions": dict(self.exclusions),
            "t_min": self.t_min,
            "t_max": self.t_max,
            "n_points": self.n_points,
            "negated": self.negated,
            "exact_match_first": _num(self.exact_match_first),
            "exact_match_last": _num(self.exact_match_last),
            "exact_match_peak": _num(self.exact_match_peak),
            "partial": self.partial,
            "notes": list(self.notes),
        }


def _num(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _bound(value: float) -> float | str | None:
    """Interval ends: a number, "inf" for an unbounded end, None when there is no interval."""
    value = float(value)
    if math.isinf(value):
        return "inf"
    return value if math.isfinite(value) else None


@dataclass
class RunAnalysis:
    """One run analysed under one set of options, with the intermediate arrays kept for plots and exports."""

    run: Run
    options: FitOptions
    """The options as applied to this run: window and iqr_factor resolved to numbers."""
    values: np.ndarray
    """The probe matrix the metrics ran on: ℓ, control-adjusted if asked, on the chosen scale."""
    encounters: Encounters
    acquisition: Acquisition
    retention: Retention
    fits: list[GroupFit]
    window_source: str = "option"
    """Where the window came from: `option`, `manifest` (the run's analysis_defaults) or `default`."""
    encounter_spacing: int | None = None
    warnings: list[str] = field(default_factory=list)
    control_drift: dict[str, np.ndarray] = field(default_factory=dict)
    """Per kind: mean change of the control probes' raw ℓ since the first logged step, at every logged step."""
    raw: RunAnalysis | None = None
    """With control or twin adjustment: the same analysis on the unadjusted ℓ, for side-by-side reports."""
    adjustment: str = "none"
    """What the values are measured against: `none` (raw ℓ), `control` (the control probes' drift) or `twin`."""
    control: RunAnalysis | None = None
    """With twin adjustment, where the run has control probes of every injected kind: the control-adjusted
    analysis, for side-by-side reports."""
    twin_path: Path | None = None
    """The twin the values are measured against (twin adjustment)."""

    def run_record(self) -> dict:
        return {
            "label": self.run.label,
            "path": str(self.run.path),
            "window": self.options.window,
            "window_source": self.window_source,
            "iqr_factor": self.options.factor,
            "encounter_spacing": self.encounter_spacing,
            "tokens_per_step": self.run.tokens_per_step,
            "start_step": self.run.manifest.get("start_step"),
            "start_tokens": self.run.start_tokens,
            "adjustment": self.adjustment,
            "twin": str(self.twin_path) if self.twin_path is not None else None,
            "knowledge_entropy": _entropy_record(self.run),
            "warnings": list(self.warnings),
        }


def _entropy_record(run: Run) -> dict | None:
    """Knowledge entropy at the first and the last measured step, where the run measured it."""
    h = run.knowledge_entropy
    if h is None:
        return None
    total = h.total
    return {
        "first_step": int(h.steps[0]),
        "first": float(total[0]),
        "last_step": int(h.steps[-1]),
        "last": float(total[-1]),
        "layers": int(h.layers.shape[1]),
    }


def resolve_window(run: Run, requested: int | None) -> tuple[int, str]:
    """(window, where it came from): the option, else the run's recorded design, else 50."""
    if requested is not None:
        return requested, "option"
    recorded = run.analysis_defaults.get("window")
    if recorded is not None:
        return int(recorded), "manifest"
    return DEFAULT_WINDOW, "default"


def analyse_run(run: Run, options: FitOptions | None = None) -> RunAnalysis:
    """Every (scenario, kind) of the run under `options`. Measured against the run's twin where it has one (and
    `twin_adjust`), else against the control probes' drift with `control_adjust`; an adjusted analysis keeps the
    raw one (and, beside a twin-adjusted one, the control-adjusted one where the run has the controls)."""
    options = options or FitOptions()
    options.validate()
    window, source = resolve_window(run, options.window)
    resolved = replace(options, window=window, iqr_factor=options.factor)
    raw_values = run.metric(options.metric)
    enc = probe_encounters(run)
    spacing = run.encounter_spacing()
    warnings = []
    if spacing is not None and window > spacing:
        warnings.append(
            f"window {window} spans the next encounter: a paragraph's encounters are as close as "
            f"{spacing} steps apart, so a local maximum can include the next encounter's gain "
            f"(use --window {spacing} or less)"
        )
    drift = control_drift(run, raw_values, enc)
    extras = dict(window_source=source, encounter_spacing=spacing, warnings=warnings, control_drift=drift)
    path, why_not = twin_path(run, options.baseline) if options.twin_adjust else (None, None)
    warnings += [why_not] if why_not else []
    if path is not None:
        return _twin_analysis(run, resolved, load_twin(run, path), enc, raw_values, **extras)
    if not options.control_adjust:
        return _analyse(run, resolved, on_scale(raw_values, options.scale), enc, raw_values, **extras)
    adjusted = control_adjusted(run, raw_values, enc)
    analysis = _analyse(run, resolved, on_scale(adjusted, options.scale), enc, raw_values, **extras)
    analysis.raw = _analyse(
        run, replace(resolved, control_adjust=False), on_scale(raw_values, options.scale), enc, raw_values, **extras
    )
    analysis.adjustment = "control"
    return analysis


def _twin_analysis(
    run: Run, options: FitOptions, twin: Twin, enc: Encounters, raw_values: np.ndarray, **extras
) -> RunAnalysis:
    """Every probe measured against its twin, with the raw and (where possible) control-adjusted analyses beside."""
    twin_values = twin.metric(options.metric)
    start_gap = float(np.abs(raw_values[:, 0] - twin_values[:, 0]).max())
    if start_gap > TWIN_START_TOLERANCE:
        extras["warnings"].append(
            f"the twin {twin.path} does not start where the run does: ℓ at the first logged step differs by up to "
            f"{start_gap:.3g} nats (is it this run's twin, from the same checkpoint?)"
        )
    plain = replace(options, control_adjust=False)
    scale = options.scale
    analysis = _analyse(run, plain, on_scale(twin_adjusted(raw_values, twin_values), scale), enc, raw_values, **extras)
    analysis.adjustment, analysis.twin_path = "twin", twin.path
    analysis.raw = _analyse(run, plain, on_scale(raw_values, scale), enc, raw_values, **extras)
    if _has_controls(run, enc, extras["control_drift"]):
        control = control_adjusted(run, raw_values, enc)
        analysis.control = _analyse(
            run, replace(options, control_adjust=True), on_scale(control, scale), enc, raw_values, **extras
        )
        analysis.control.adjustment = "control"
    return analysis


def _has_controls(run: Run, enc: Encounters, drift: dict[str, np.ndarray]) -> bool:
    """Whether the run has control probes of every injected kind (what control adjustment needs)."""
    return bool(drift) and {str(k) for k in run.kind[(enc.count > 0) & (run.kind != PRIME_KIND)]} <= set(drift)


def fit_run(run: Run, options: FitOptions | None = None) -> list[GroupFit]:
    """The study's measures for every (scenario, kind) of the run."""
    return analyse_run(run, options).fits


def fit_records(run: Run, options: FitOptions | None = None) -> list[dict]:
    """The group objects of `analysis fit --json` (its "groups" list)."""
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


@dataclass
class _Context:
    run: Run
    options: FitOptions
    rules: Rules
    raw_values: np.ndarray
    enc: Encounters
    acq: Acquisition
    ret: Retention
    shared_t_max: int | None
    z: float
    rng: np.random.Generator


def _analyse(
    run: Run, options: FitOptions, values: np.ndarray, enc: Encounters, raw_values: np.ndarray, **extras
) -> RunAnalysis:
    rules = options.rule_set
    acq = acquisition(run, values, enc, options.window)
    ret = retention(run, values, enc, acq, rules)
    injected = enc.count > 0
    shared = (
        default_t_max(int(run.steps[-1]), ret.last_encounter[injected], options.window)
        if rules.shared_t_range and injected.any()
        else None
    )
    ctx = _Context(
        run,
        options,
        rules,
        raw_values,
        enc,
        acq,
        ret,
        shared,
        z=NormalDist().inv_cdf(0.5 + options.ci_level / 2),
        rng=np.random.default_rng(options.seed),
    )
    fits = [_fit_group(ctx, scenario, kind) for scenario, kind in run.groups()]
    return RunAnalysis(run, options, values, enc, acq, ret, fits, **extras)


def _fit_group(ctx: _Context, scenario: str, kind: str) -> GroupFit:
    run, options, enc, acq, ret = ctx.run, ctx.options, ctx.enc, ctx.acq, ctx.ret
    members = np.flatnonzero((run.scenario == scenario) & (run.kind == kind))
    reasons, counts = np.unique(ret.reason[members], return_counts=True)
    exclusions = {str(r): int(c) for r, c in zip(reasons, counts) if r}
    kept = members[ret.reason[members] == ""]
    injected = members[enc.count[members] > 0]
    last = int(run.steps[-1])
    notes: list[str] = []
    partial = False

    # Effectivity: pooled over (probe, encounter), and per encounter index.
    contributing = injected if ctx.rules.dropped_probe_has_effectivity else injected[ret.reason[injected] != ZERO_GAIN]
    n_enc = int(enc.count[injected].max(initial=0))
    eff = acq.effectivity[contributing][:, :n_enc] if n_enc else np.zeros((0, 0))
    by_encounter = iqr_mean(eff, options.factor, axis=0)[0] if n_enc else np.zeros(0)
    pooled = eff[np.isfinite(eff)]
    effectivity = float(iqr_mean(pooled, options.factor)[0]) if len(pooled) else math.nan
    if n_enc and acq.window_open[injected][:, :n_enc].any():
        partial = True
        notes.append(
            f"the run ends at step {last}, before the {options.window}-step window of an encounter closes; "
            "that encounter's maximum is taken over the logged part of its window"
        )
    if enc.dropped_after_end:
        partial = True
        notes.append(f"{enc.dropped_after_end} injection(s) at or after the last logged step {last} are ignored")
    control = scenario == CONTROL_SCENARIO and len(injected) == 0
    if len(injected) == 0 and not control:
        notes.append("no probe of this group belongs to an injected paragraph")

    encounter_steps = sorted({int(s) for s in enc.steps[injected].ravel() if s >= 0})
    fit = GroupFit(
        scenario=scenario,
        kind=kind,
        n_probes=len(members),
        n_excluded=len(members) - len(kept),
        exclusions=exclusions,
        effectivity=effectivity,
        effectivity_by_encounter=[float(v) for v in np.atleast_1d(by_encounter)],
        encounter_steps=encounter_steps,
        t_min=options.t_min,
        t_max=None,
        t_max_default=None,
        control=control,
        tokens_per_step=run.tokens_per_step,
        partial=partial,
        notes=notes,
    )
    if control:
        fit.drift_last = float((ctx.raw_values[members, -1] - ctx.raw_values[members, 0]).mean())
    if run.exact_match is not None:
        rate = exact_match_rate(run, members)
        fit.exact_match_first, fit.exact_match_last, fit.exact_match_peak = (
            float(rate[0]),
            float(rate[-1]),
            float(rate.max()),
        )
    if run.tokens_per_step is None and not control:
        notes.append("manifest.json has no tokens_per_step: t* in tokens unknown")
    if len(kept) == 0:
        if len(injected):
            notes.append("no probe has retainability (every gain excluded it); decay not fitted")
        return fit

    block = ret.values[kept][:, 1:]  # t = 1 .. the largest t any probe reaches
    stats = iqr_stats(block, options.factor, axis=0)
    curve = Curve(t=ret.t[1:], mean=stats.mean, se=stats.se, kept=stats.kept, removed=stats.removed)
    fit.curve = curve

    if ctx.shared_t_max is not None:
        t_default = ctx.shared_t_max
    else:
        t_default = default_t_max(last, ret.last_encounter[kept], options.window)
    fit.t_max_default = t_default
    t_max = options.t_max if options.t_max is not None else t_default
    fit.t_max = t_max if t_max >= options.t_min else None
    if t_max < options.t_min:
        fit.partial = True
        notes.append(
            f"the run ends at step {last}, before the window of the last encounter closes plus t_min = "
            f"{options.t_min} step(s) (needs step {last + options.t_min - t_default}); decay not fitted"
        )
        return fit
    if t_max > t_default:
        fit.partial = True
        notes.append(
            f"t_max = {t_max} exceeds {t_default}, the largest t every probe has; late means cover fewer probes"
        )

    in_fit = (curve.t >= options.t_min) & (curve.t <= t_max)
    t, mean_r = curve.t[in_fit], curve.mean[in_fit]
    if ctx.rules.negate_falling_curve and len(mean_r) and mean_r[0] < 0:
        fit.negated = True
        curve.mean = -curve.mean
        mean_r = -mean_r
        notes.append(f"mean R at t = {int(t[0])} is negative; the study-code rules negate such a curve before the fit")
    fit.retention_t, fit.retention_mean = t, mean_r
    _observed(fit, curve, options)
    line = fit_decay(t, mean_r)
    if line is None:
        notes.append(f"fewer than 2 logged t in [{options.t_min}, {t_max}]; decay not fitted")
        return fit
    fit.a, fit.b, fit.a_se, fit.b_se, fit.r2, fit.n_points = (
        line.a,
        line.b,
        line.a_se,
        line.b_se,
        line.r2,
        line.n_points,
    )
    fit.t_star_steps = x_intercept(line)
    if run.tokens_per_step is not None:
        fit.t_star_tokens = fit.t_star_steps * run.tokens_per_step
    if options.bootstrap:
        fit.t_star_ci_steps = _bootstrap_interval(ctx, block[:, in_fit], t)
    else:
        fit.t_star_ci_steps = t_star_interval_delta(line, ctx.z)
    _fitted(fit, line, options, t_max)
    if line.a > 0 and not math.isfinite(fit.t_star_steps):
        notes.append("the x-intercept 10^(b/a) overflows")
    return fit


def _observed(fit: GroupFit, curve: Curve, options: FitOptions) -> None:
    """Retention levels and R at the requested t, read off the observed mean curve."""
    from_t_min = curve.t >= options.t_min
    for level in options.retention_levels:
        below = from_t_min & (curve.mean <= level)
        fit.retention_levels.append(
            {
                "level": level,
                "t_fit": math.nan,
                "t_observed": float(curve.t[np.argmax(below)]) if below.any() else math.nan,
            }
        )
    for t in options.at:
        i = t - 1  # the curve starts at t = 1
        inside = 0 <= i < len(curve.t)
        fit.r_at.append(
            {
                "t": t,
                "r": float(curve.mean[i]) if inside else math.nan,
                "se": float(curve.se[i]) if inside else math.nan,
                "n": int(curve.kept[i]) if inside else 0,
                "r_fit": math.nan,
            }
        )


def _fitted(fit: GroupFit, line: LineFit, options: FitOptions, t_max: int) -> None:
    for entry in fit.retention_levels:
        entry["t_fit"] = level_crossing_fit(line, entry["level"])
    for entry in fit.r_at:
        entry["r_fit"] = line.b - line.a * math.log10(entry["t"])
    if not line.a > 0:
        fit.flags.append("no_decay")
        return
    if not line.r2 >= WEAK_FIT_R2:
        fit.flags.append("weak_fit")
    if fit.t_star_steps > FAR_EXTRAPOLATION * t_max:
        fit.flags.append("far_extrapolation")


def _bootstrap_interval(ctx: _Context, block: np.ndarray, t: np.ndarray) -> tuple[float, float]:
    """Percentile interval of t* over resamples of the group's probes (rows of `block`, R at the fitted t).

    Each resample repeats the whole measurement: outlier removal at every t, the rule set's negation, the
    line. A resample whose line does not fall gives an unbounded t*.
    """
    n = block.shape[0]
    log_t_star = np.empty(ctx.options.bootstrap)
    for r in range(ctx.options.bootstrap):  # resamples, not steps: each one is vectorised over t
        mean_r = iqr_mean(block[ctx.rng.integers(0, n, n)], ctx.options.factor, axis=0)[0]
        if ctx.rules.negate_falling_curve and len(mean_r) and mean_r[0] < 0:
            mean_r = -mean_r
        line = fit_decay(t, mean_r)
        log_t_star[r] = line.b / line.a if line is not None and line.a > 0 else np.inf
    ordered = np.sort(log_t_star)
    alpha = 1 - ctx.options.ci_level
    lo = ordered[int(math.floor(alpha / 2 * (len(ordered) - 1)))]
    hi = ordered[int(math.ceil((1 - alpha / 2) * (len(ordered) - 1)))]
    return pow10(lo), pow10(hi)


def reason_text(key: str) -> str:
    return REASONS.get(key, key)
