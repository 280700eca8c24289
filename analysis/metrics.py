"""The study's metrics on a probe matrix: local acquisition maxima, effectivity, retainability, IQR means, fits.

Everything is vectorised over probes and steps; no Python loop runs over t or over steps.

Exact definitions on a log whose logged steps K may have gaps (evaluation interval > 1, missing steps):
- encounter steps t_1 < ... < t_N of a paragraph are its distinct steps in injections.parquet that are
  smaller than the last logged step (a later encounter left no trace in the log; the result is `partial`);
- ℓ(θ_s) for an encounter or t_pre = t_1 is read at the latest logged step <= s (the state the batch of
  step s was applied to);
- the window of encounter i holds the logged steps k with t_i < k <= t_i + w; t_LAM(q,i) is the first
  (earliest) step of the window where ℓ is largest; a window that extends past the last logged step is
  `open` and its maximum is taken over the logged part (reported as partial);
- R(q,t) is defined where step t_LAM(q,N) + t is logged, elsewhere it is missing and the mean at that t is
  taken over the probes that have it.

Where the two rule sets (`analysis.rules`) differ, the functions take the `Rules` and say which field they read.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from analysis.load import PRIME_KIND, Run
from analysis.rules import Rules
from harness.errors import UserError

#: Scenario name of control probes: paragraphs whose probes are logged but which are never injected.
CONTROL_SCENARIO = "none"


@dataclass
class Encounters:
    """Per probe, its encounter steps as a padded matrix (so all encounters are handled in one pass)."""

    steps: np.ndarray
    """int64 [probes x max_encounters], -1 where a probe has fewer encounters."""
    count: np.ndarray
    """int64 [probes]: number of encounters (0 for probes whose paragraph was never injected)."""
    dropped_after_end: int
    """Encounters in injections.parquet at or after the last logged step (ignored)."""


def probe_encounters(run: Run) -> Encounters:
    last = run.steps[-1]
    per_paragraph = {p: s[s < last] for p, s in run.encounters.items()}
    dropped = sum(int((s >= last).sum()) for s in run.encounters.values())
    width = max((len(s) for s in per_paragraph.values()), default=0)
    table = np.full((len(per_paragraph) + 1, max(width, 1)), -1, dtype=np.int64)
    row_of = {}
    for row, (p, s) in enumerate(per_paragraph.items(), start=1):
        table[row, : len(s)] = s
        row_of[p] = row
    # Row 0 stays all -1: probes of paragraphs that were never injected.
    rows = np.array([row_of.get(int(p), 0) for p in np.unique(run.paragraph)])
    paragraph_rows = rows[np.searchsorted(np.unique(run.paragraph), run.paragraph)]
    steps = table[paragraph_rows]
    return Encounters(steps=steps, count=(steps >= 0).sum(axis=1), dropped_after_end=dropped)


def column_at_or_before(run_steps: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """Column of the latest logged step <= each step (-1 where no logged step is that early)."""
    return np.searchsorted(run_steps, steps, side="right") - 1


@dataclass
class Acquisition:
    """Local acquisition maxima and effectivity for every (probe, encounter)."""

    lam_step: np.ndarray
    """int64 [probes x encounters]: t_LAM(q,i) in run steps, -1 where undefined."""
    lam_value: np.ndarray
    """float [probes x encounters]: ℓ at t_LAM (NaN where undefined)."""
    effectivity: np.ndarray
    """float [probes x encounters]: E(q,i) (NaN where undefined)."""
    window_open: np.ndarray
    """bool [probes x encounters]: the window extends past the last logged step."""


def acquisition(run: Run, values: np.ndarray, enc: Encounters, window: int) -> Acquisition:
    n_probes, n_enc = enc.steps.shape
    valid = enc.steps >= 0
    t_i = np.where(valid, enc.steps, 0)
    # Window columns [lo, hi): logged steps with t_i < k <= t_i + w.
    lo = np.searchsorted(run.steps, t_i, side="right")
    hi = np.searchsorted(run.steps, t_i + window, side="right")
    width = int((hi - lo).max(initial=0))
    offsets = np.arange(max(width, 1))
    cols = lo[..., None] + offsets  # [probes x encounters x width]
    in_window = (offsets < (hi - lo)[..., None]) & valid[..., None]
    safe_cols = np.minimum(cols, len(run.steps) - 1)
    windowed = np.where(in_window, values[np.arange(n_probes)[:, None, None], safe_cols], -np.inf)
    best = windowed.argmax(axis=-1)  # argmax returns the first maximum: the earliest step on ties
    has_window = in_window.any(axis=-1)
    lam_col = np.take_along_axis(safe_cols, best[..., None], axis=-1)[..., 0]
    lam_value = np.where(has_window, np.take_along_axis(windowed, best[..., None], axis=-1)[..., 0], np.nan)
    before = column_at_or_before(run.steps, t_i)
    before_value = np.where(before >= 0, values[np.arange(n_probes)[:, None], np.maximum(before, 0)], np.nan)
    ok = has_window & (before >= 0)
    return Acquisition(
        lam_step=np.where(ok, run.steps[lam_col], -1),
        lam_value=np.where(ok, lam_value, np.nan),
        effectivity=np.where(ok, lam_value - before_value, np.nan),
        window_open=valid & (t_i + window > run.steps[-1]),
    )


@dataclass
class Retention:
    """R(q,t) for t = 0 .. t_grid_max for every probe, plus why some probes have none."""

    t: np.ndarray
    """int64 [T]: 0, 1, ..., the largest t any probe reaches."""
    values: np.ndarray
    """float [probes x T], NaN where undefined (step not logged, or probe excluded)."""
    denominator: np.ndarray
    """float [probes]: ℓ(θ_{t_LAM(q,N)}) − ℓ(reference) (NaN where undefined)."""
    reason: np.ndarray
    """object [probes]: '' for probes with retainability, else the key (in REASONS) of why they have none."""
    last_encounter: np.ndarray
    """int64 [probes]: t_N (-1 where none)."""


#: Why a probe has no retainability: stable keys (in JSON) and the sentence shown in tables.
NOT_INJECTED = "not_injected"
NO_PRE = "no_pre"
NO_WINDOW = "no_window"
NO_GAIN = "no_gain"
ZERO_GAIN = "zero_gain"
REASONS = {
    NOT_INJECTED: "paragraph never injected",
    NO_PRE: "no logged step at or before the first encounter",
    NO_WINDOW: "no logged step in the window of the last encounter",
    NO_GAIN: "no gain: ℓ(t_LAM,N) − ℓ(t_pre) ≤ 0",
    ZERO_GAIN: "zero gain: ℓ(t_LAM,N) = ℓ at the first logged step",
}


def retention(run: Run, values: np.ndarray, enc: Encounters, acq: Acquisition, rules: Rules) -> Retention:
    """R(q,t) = [v(t_LAM,N + t) − v(ref)] / [v(t_LAM,N) − v(ref)].

    `rules.reference_at_first_step` places ref (t_pre, or the first logged step); `rules.drop_only_zero_gain`
    decides which denominators exclude a probe.
    """
    n_probes = values.shape[0]
    rows = np.arange(n_probes)
    has_enc = enc.count > 0
    last_idx = np.maximum(enc.count - 1, 0)
    t_n = np.where(has_enc, enc.steps[rows, last_idx], -1)
    lam_step = np.where(has_enc, acq.lam_step[rows, last_idx], -1)
    lam_value = acq.lam_value[rows, last_idx]
    if rules.reference_at_first_step:
        pre_col = np.zeros(n_probes, dtype=np.int64)
    else:
        pre_col = column_at_or_before(run.steps, np.where(has_enc, enc.steps[:, 0], 0))
    pre_value = np.where(pre_col >= 0, values[rows, np.maximum(pre_col, 0)], np.nan)
    denominator = np.where(has_enc, lam_value - pre_value, np.nan)

    reason = np.full(n_probes, "", dtype=object)
    reason[~has_enc] = NOT_INJECTED
    reason[has_enc & (pre_col < 0)] = NO_PRE
    reason[(reason == "") & (lam_step < 0)] = NO_WINDOW
    if rules.drop_only_zero_gain:
        reason[(reason == "") & (denominator == 0)] = ZERO_GAIN
    else:
        reason[(reason == "") & ~(denominator > 0)] = NO_GAIN
    ok = reason == ""

    last = int(run.steps[-1])
    t_top = int(max((last - lam_step[ok]).max(initial=0), 0))
    t = np.arange(t_top + 1)
    # step -> column lookup, -1 for steps that were not logged (gaps, evaluation interval > 1).
    column_of = np.full(last + 1, -1, dtype=np.int64)
    column_of[run.steps[run.steps >= 0]] = np.flatnonzero(run.steps >= 0)
    target = np.where(ok, lam_step, 0)[:, None] + t[None, :]
    cols = np.where(target <= last, column_of[np.minimum(target, last)], -1)
    have = (cols >= 0) & ok[:, None]
    gathered = values[rows[:, None], np.maximum(cols, 0)]
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (gathered - pre_value[:, None]) / denominator[:, None]
    return Retention(t=t, values=np.where(have, r, np.nan), denominator=denominator, reason=reason, last_encounter=t_n)


def nan_quantile(x: np.ndarray, q: float, axis: int = 0) -> np.ndarray:
    """Linear-interpolation quantile (numpy's default method) ignoring NaN, vectorised along `axis`.

    np.nanquantile loops in Python over the other axis for 2-D input; sorting once is far faster.
    """
    return nan_quantiles(x, (q,), axis)[0]


def nan_quantiles(x: np.ndarray, qs: tuple[float, ...], axis: int = 0) -> list[np.ndarray]:
    """Several quantiles of `x` along `axis` from one sort (see nan_quantile)."""
    x = np.moveaxis(x, axis, 0)
    ordered = np.sort(x, axis=0)  # NaN sort last
    n = (~np.isnan(x)).sum(axis=0)
    out = []
    for q in qs:
        pos = q * np.maximum(n - 1, 0)
        lower = np.floor(pos).astype(np.int64)
        upper = np.minimum(lower + 1, np.maximum(n - 1, 0))
        lo_v = np.take_along_axis(ordered, lower[None], axis=0)[0]
        hi_v = np.take_along_axis(ordered, upper[None], axis=0)[0]
        out.append(np.where(n > 0, lo_v + (hi_v - lo_v) * (pos - lower), np.nan))
    return out


def iqr_mask(x: np.ndarray, factor: float, axis: int = 0) -> np.ndarray:
    """True for finite values inside [Q1 − f·IQR, Q3 + f·IQR] computed along `axis` (the interquartile rule)."""
    q1, q3 = (np.expand_dims(q, axis) for q in nan_quantiles(x, (0.25, 0.75), axis))
    spread = q3 - q1
    with np.errstate(invalid="ignore"):
        return np.isfinite(x) & (x >= q1 - factor * spread) & (x <= q3 + factor * spread)


def iqr_mean(x: np.ndarray, factor: float, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Mean along `axis` after removing outliers by the interquartile rule; also the number of values kept."""
    stats = iqr_stats(x, factor, axis)
    return stats.mean, stats.kept


@dataclass
class IqrStats:
    mean: np.ndarray
    se: np.ndarray
    """Standard error of that mean: sample standard deviation of the kept values / sqrt(kept)."""
    kept: np.ndarray
    removed: np.ndarray
    """Finite values the interquartile rule removed."""


def iqr_stats(x: np.ndarray, factor: float, axis: int = 0) -> IqrStats:
    """Mean, its standard error and the counts along `axis` after the interquartile rule."""
    keep = iqr_mask(x, factor, axis)
    kept = keep.sum(axis=axis)
    removed = np.isfinite(x).sum(axis=axis) - kept
    values = np.where(keep, x, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(kept > 0, values.sum(axis=axis) / np.maximum(kept, 1), np.nan)
        spread = np.where(keep, x - np.expand_dims(mean, axis), 0.0)
        variance = (spread**2).sum(axis=axis) / np.maximum(kept - 1, 1)
        se = np.where(kept > 1, np.sqrt(variance / np.maximum(kept, 1)), np.nan)
    return IqrStats(mean=mean, se=se, kept=kept, removed=removed)


@dataclass
class LineFit:
    """R ≈ b − a·log10(t) by least squares, with the standard errors of the ordinary least-squares fit."""

    a: float
    b: float
    a_se: float
    b_se: float
    cov_ab: float
    """Covariance of the estimates of a and b."""
    r2: float
    n_points: int


def fit_decay(t: np.ndarray, mean_r: np.ndarray) -> LineFit | None:
    """Least-squares line of mean R(t) against log10(t) over the finite points; None with < 2 points."""
    ok = np.isfinite(mean_r) & (t > 0)
    x, y = np.log10(t[ok].astype(np.float64)), mean_r[ok]
    n = len(x)
    if n < 2 or np.ptp(x) == 0:
        return None
    x_mean, y_mean = x.mean(), y.mean()
    sxx = ((x - x_mean) ** 2).sum()
    slope = ((x - x_mean) * (y - y_mean)).sum() / sxx
    intercept = y_mean - slope * x_mean
    residual = y - (intercept + slope * x)
    ssr, sst = (residual**2).sum(), ((y - y_mean) ** 2).sum()
    s2 = ssr / (n - 2) if n > 2 else float("nan")
    a_se = float(np.sqrt(s2 / sxx))
    b_se = float(np.sqrt(s2 * (1.0 / n + x_mean**2 / sxx)))
    # cov(intercept, slope) = −x̄·s²/Sxx, and a = −slope.
    cov_ab = float(x_mean * s2 / sxx)
    r2 = float(1.0 - ssr / sst) if sst > 0 else float("nan")
    return LineFit(a=float(-slope), b=float(intercept), a_se=a_se, b_se=b_se, cov_ab=cov_ab, r2=r2, n_points=n)


def x_intercept(fit: LineFit) -> float:
    """t* = 10^(b/a): where the fitted line reaches R = 0. NaN when the line never falls (a <= 0)."""
    if not fit.a > 0:
        return float("nan")
    return pow10(fit.b / fit.a)


def pow10(exponent: float) -> float:
    """10^x, infinite where it would overflow (and for x = +inf)."""
    return float(10.0**exponent) if exponent < 308 else float("inf")


def t_star_interval_delta(fit: LineFit, z: float) -> tuple[float, float]:
    """Confidence interval of t* by the delta method on log10 t* = b/a, mapped back through 10^x.

    Var(b/a) ≈ Var(b)/a² + b²·Var(a)/a⁴ − 2b·Cov(a,b)/a³. When the interval of a itself reaches 0 the data
    do not exclude a line that never falls, and the upper end is infinite.
    """
    if not fit.a > 0 or not np.isfinite(fit.a_se):
        return float("nan"), float("nan")
    a, b = fit.a, fit.b
    var = fit.b_se**2 / a**2 + b**2 * fit.a_se**2 / a**4 - 2 * b * fit.cov_ab / a**3
    half = z * float(np.sqrt(max(var, 0.0)))
    g = b / a
    upper = float("inf") if a - z * fit.a_se <= 0 else pow10(g + half)
    return pow10(g - half), upper


def level_crossing_fit(fit: LineFit, level: float) -> float:
    """t where the fitted line b − a·log10 t equals `level` (NaN when a <= 0)."""
    if not fit.a > 0:
        return float("nan")
    return pow10((fit.b - level) / fit.a)


def on_scale(values: np.ndarray, scale: str) -> np.ndarray:
    """ℓ -> the quantity the metrics work on (see analysis.rules.SCALES); higher is better on both."""
    if scale == "logprob":
        return values
    with np.errstate(over="ignore"):
        out = -np.exp(-values)
    if not np.isfinite(out).all():
        raise UserError(
            "option scale: perplexity exp(−ℓ) overflows for some probes (ℓ below −709); use the logprob scale"
        )
    return out


def control_members(run: Run, enc: Encounters) -> np.ndarray:
    """bool [probes]: control probes, i.e. of scenario `none` and of a paragraph that was never injected (priming
    probes aside)."""
    return (run.scenario == CONTROL_SCENARIO) & (enc.count == 0) & (run.kind != PRIME_KIND)


def control_drift(run: Run, values: np.ndarray, enc: Encounters) -> dict[str, np.ndarray]:
    """Per probe kind: mean over the control probes c of ℓ(c; θ_k) − ℓ(c; θ_first logged), at every logged step."""
    controls = control_members(run, enc)
    drift = {}
    for kind in dict.fromkeys(run.kind[controls]):
        members = controls & (run.kind == kind)
        drift[str(kind)] = (values[members] - values[members, :1]).mean(axis=0)
    return drift


def control_adjusted(run: Run, values: np.ndarray, enc: Encounters) -> np.ndarray:
    """ℓ'(q; θ_k) = ℓ(q; θ_k) − [mean_c ℓ(c; θ_k) − ℓ(c; θ_0)], c the control probes of q's kind.

    A difference-in-differences estimate: what every probe of a kind gains or loses while the model trains
    on, measured on paragraphs it never saw, is taken out before effectivity and retainability.
    """
    drift = control_drift(run, values, enc)
    if not drift:
        raise UserError(
            f"{run.path}: control adjustment needs control probes (scenario "
            f"{CONTROL_SCENARIO!r}, paragraphs never injected); this run has none"
        )
    missing = sorted({str(k) for k in run.kind[(enc.count > 0) & (run.kind != PRIME_KIND)]} - set(drift))
    if missing:
        raise UserError(
            f"{run.path}: control adjustment needs control probes (scenario {CONTROL_SCENARIO!r}) of "
            f"every injected kind; none of kind {', '.join(map(repr, missing))}"
        )
    kinds = list(drift)
    table = np.stack([drift[k] for k in kinds])
    code = np.array([kinds.index(k) if k in drift else -1 for k in run.kind])
    shift = np.where((code >= 0)[:, None], table[np.maximum(code, 0)], 0.0)
    return values - shift


def twin_adjusted(values: np.ndarray, twin: np.ndarray) -> np.ndarray:
    """ℓ''(q; θ_k) = ℓ(q; θ_k) − [ℓ^twin(q; θ_k) − ℓ^twin(q; θ_first)]: each probe's own counterfactual drift taken
    out. The twin starts from the same checkpoint, so ℓ''(k) − ℓ''(first) = ℓ(k) − ℓ^twin(k) = Δℓ_q(k), the change
    the injections caused; unlike the difference itself, ℓ'' keeps the probe's level (the perplexity scale needs it).
    """
    return values - (twin - twin[:, :1])
