"""The study's figures from a fitted run, as PNG and PDF.

    trajectories     mean Δℓ per kind over steps, one panel per scenario side by side
    study_fig2       the study's Figure 2 layout: one wide row per injected scenario, injections dotted
    retainability    mean R(t) on log t with the fitted lines over the fitted range
    study_decay      the study's retainability panels: mean R(t) as points, the fitted line drawn on to t*
    effectivity      mean effectivity per encounter, one panel per kind
    exact_match      exact-match rate over steps (axis scaled to the data)
    control_drift    the control probes' own mean Δℓ over steps (runs that log controls)
    adjustments      mean R(t) and its fit raw, control-adjusted and against the twin, side by side (adjusted runs)
    token_dynamics   surprisal, entropy and rank of the target tokens per group over steps (runs that log them)
    knowledge_entropy  knowledge entropy over steps beside mean R(t) (runs that measure it)
    priming          priming scores over steps, and after learning against the keyword's probability before

Legends sit outside the axes so that they never cover data; groups without data get no panel.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from analysis.fit import FitOptions, GroupFit, RunAnalysis  # noqa: E402
from analysis.format import fmt  # noqa: E402
from analysis.metrics import CONTROL_SCENARIO  # noqa: E402
from analysis.priming import has_priming, priming_analysis
from harness.outputs import OwnedDir  # noqa: E402

KIND_COLORS = {"mem": "#1f77b4", "sem": "#d62728", "comp": "#2ca02c"}
KIND_NAMES = {"mem": "memorization", "sem": "semantic", "comp": "composition"}
SCENARIO_COLORS = {"paraphrase": "#9467bd", "duplicate": "#ff7f0e", "once": "#17becf"}
_FALLBACK = plt.get_cmap("tab10").colors

plt.rcParams.update(
    {"font.size": 10, "axes.titlesize": 11, "legend.fontsize": 8.5, "axes.grid": True, "grid.alpha": 0.3}
)

STEP_LABEL = "run step k (updates since the checkpoint)"
T_LABEL = "t: steps after the last acquisition maximum"


def _color(table: dict[str, str], name: str, index: int) -> str:
    return table.get(name, _FALLBACK[index % len(_FALLBACK)])


def _scenarios(analysis: RunAnalysis) -> list[str]:
    return list(dict.fromkeys(g.scenario for g in analysis.fits))


def _injected_scenarios(analysis: RunAnalysis) -> list[str]:
    return list(dict.fromkeys(g.scenario for g in analysis.fits if not g.control and g.encounter_steps))


def _kinds(analysis: RunAnalysis) -> list[str]:
    return list(dict.fromkeys(g.kind for g in analysis.fits))


def unit(options: FitOptions) -> str:
    """What one unit of the measured quantity is, for axis labels."""
    if options.scale == "perplexity":
        return "perplexity exp(−ℓ)"
    return {
        "logprob": "nats, mean over target tokens",
        "logprob_sum": "nats, summed over target tokens",
        "first_logprob": "nats, first target token",
    }.get(options.metric, "nats")


def delta_label(options: FitOptions) -> str:
    """Short axis label of the change of the measured quantity since the first logged step."""
    return "mean fall of perplexity" if options.scale == "perplexity" else "mean Δℓ (nats)"


ADJUSTED = {"control": ", control-adjusted", "twin": ", measured against the twin"}


def delta_title(options: FitOptions, adjustment: str | None = None) -> str:
    """What the Δ axis measures, in full, for titles (`adjustment`: the analysis's, else the options')."""
    adjustment = adjustment or ("control" if options.control_adjust else "none")
    adjusted = ADJUSTED.get(adjustment, "")
    if options.scale == "perplexity":
        return f"change of perplexity exp(−{options.metric}) since the first logged step{adjusted}"
    return f"change of {options.metric} since the first logged step ({unit(options)}{adjusted})"


def _panels(n: int, width: float = 4.6, height: float = 3.4, sharey: bool = True):
    fig, axes = plt.subplots(1, max(n, 1), figsize=(width * max(n, 1), height), sharey=sharey, squeeze=False)
    return fig, list(axes[0])


def _legend_below(ax: Axes, ncol: int = 3) -> None:
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        # Anchored at the axes' bottom edge and pushed down by a fixed distance (in font sizes), so that it
        # clears the tick labels and the x label whatever the height of the axes.
        ax.legend(
            handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), borderaxespad=3.9, ncol=ncol, frameon=False
        )


def _mark_injections(ax: Axes, steps, label: bool = True) -> None:
    for j, step in enumerate(steps):
        ax.axvline(step, color="0.35", ls=":", lw=1.0, label="injection" if label and j == 0 else None)


def _empty(message: str) -> Figure:
    fig, ax = plt.subplots(figsize=(6, 1.2))
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center")
    return fig


def trajectories_figure(analysis: RunAnalysis) -> Figure:
    """Mean Δ per scenario, one line per probe kind, dotted lines at injection steps. The control panel is
    left out when the values are control-adjusted (it is zero by construction; see control_drift); measured
    against a twin, it shows what the injections did to paragraphs never injected."""
    run, values = analysis.run, analysis.values
    delta = values - values[:, :1]
    scenarios = [s for s in _scenarios(analysis) if not (analysis.adjustment == "control" and s == CONTROL_SCENARIO)]
    fig, axes = _panels(len(scenarios))
    for ax, scenario in zip(axes, scenarios):
        for i, kind in enumerate(_kinds(analysis)):
            members = (run.scenario == scenario) & (run.kind == kind)
            if members.any():
                ax.plot(
                    run.steps,
                    delta[members].mean(axis=0),
                    lw=1.2,
                    color=_color(KIND_COLORS, kind, i),
                    label=f"{kind} ({int(members.sum())} probes)",
                )
        _mark_injections(ax, run.injection_steps_by_scenario.get(scenario, []))
        ax.set_title(f"{scenario} (control, never injected)" if scenario == CONTROL_SCENARIO else scenario)
        ax.set_xlabel(STEP_LABEL)
        _legend_below(ax, ncol=2)
    axes[0].set_ylabel(delta_label(analysis.options))
    fig.suptitle(f"{run.label}: {delta_title(analysis.options, analysis.adjustment)}", fontsize=12)
    fig.tight_layout()
    return fig


def study_fig2_figure(analysis: RunAnalysis) -> Figure:
    """The study's Figure 2 layout: one wide row per injected scenario, mean Δ per kind, injections dotted."""
    run, values = analysis.run, analysis.values
    delta = values - values[:, :1]
    scenarios = _injected_scenarios(analysis)
    if not scenarios:
        return _empty("no injected scenario")
    fig, axes = plt.subplots(len(scenarios), 1, figsize=(11, 2.4 * len(scenarios) + 0.8), sharex=True, squeeze=False)
    for ax, scenario in zip(axes[:, 0], scenarios):
        for i, kind in enumerate(_kinds(analysis)):
            members = (run.scenario == scenario) & (run.kind == kind)
            if members.any():
                ax.plot(
                    run.steps,
                    delta[members].mean(axis=0),
                    lw=1.3,
                    color=_color(KIND_COLORS, kind, i),
                    label=KIND_NAMES.get(kind, kind),
                )
        _mark_injections(ax, run.injection_steps_by_scenario.get(scenario, []))
        ax.set_title(scenario, loc="left")
        ax.set_ylabel(delta_label(analysis.options))
    axes[-1, 0].set_xlabel(STEP_LABEL)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), frameon=False, bbox_to_anchor=(0.5, 0.0))
    fig.suptitle(f"{run.label}: {delta_title(analysis.options, analysis.adjustment)}", fontsize=11)
    fig.tight_layout(rect=(0, 0.045, 1, 1))
    return fig


def _fit_label(g: GroupFit) -> str:
    if np.isfinite(g.a):
        se = f" ± {fmt(g.a_se)}" if np.isfinite(g.a_se) else ""
        flag = "?" if g.flags else ""
        return f"{g.kind}: a = {fmt(g.a)}{se}, R² {fmt(g.r2)}{flag}"
    return f"{g.kind}: not fitted"


def _fitted_groups(analysis: RunAnalysis) -> dict[str, list[GroupFit]]:
    out: dict[str, list[GroupFit]] = {}
    for g in analysis.fits:
        if g.curve is not None and len(g.retention_t):
            out.setdefault(g.scenario, []).append(g)
    return out


def retention_figure(analysis: RunAnalysis) -> Figure:
    """Mean R(t) on a log t axis with the fitted lines R = b − a·log10 t over the fitted range."""
    groups = _fitted_groups(analysis)
    if not groups:
        return _empty("no group has retainability")
    fig, axes = _panels(len(groups))
    y_low, y_high = _robust_limits([g.retention_mean for fits in groups.values() for g in fits])
    for ax, (scenario, fits) in zip(axes, groups.items()):
        ax.set_ylim(y_low, y_high)
        for i, g in enumerate(fits):
            color = _color(KIND_COLORS, g.kind, i)
            ax.plot(g.retention_t, g.retention_mean, color=color, lw=0.9, alpha=0.55)
            if np.isfinite(g.a):
                t = np.array([g.retention_t[0], g.retention_t[-1]], dtype=float)
                ax.plot(t, g.b - g.a * np.log10(t), color=color, ls="--", lw=1.8, label=_fit_label(g))
            else:
                ax.plot([], [], color=color, label=_fit_label(g))
        ax.set_xscale("log")
        ax.axhline(0, color="0.5", lw=0.6)
        ax.set_title(scenario)
        ax.set_xlabel(T_LABEL)
        _legend_below(ax, ncol=1)
    axes[0].set_ylabel("mean R(t) (fraction of the gain)")
    o = analysis.options
    fig.suptitle(f"{analysis.run.label}: retainability ({o.rules} rules, IQR ×{o.factor:g} at every t)", fontsize=12)
    fig.tight_layout()
    return fig


def _robust_limits(curves: list[np.ndarray], low: float = 0.0, high: float = 1.0) -> tuple[float, float]:
    """A y range that holds [low, high] and the central 90 % of the points, so that a few wild means (small
    gains divide into large ratios) do not flatten everything else."""
    values = np.concatenate([c[np.isfinite(c)] for c in curves]) if curves else np.zeros(0)
    if len(values):
        low, high = min(low, float(np.quantile(values, 0.05))), max(high, float(np.quantile(values, 0.95)))
    pad = 0.08 * (high - low)
    return low - pad, high + pad


def study_decay_figure(analysis: RunAnalysis) -> Figure:
    """The study's retainability panels: mean R(t) as points on log t, the fitted line drawn on to its
    x-intercept t* (marked), one panel per scenario."""
    groups = _fitted_groups(analysis)
    if not groups:
        return _empty("no group has retainability")
    fig, axes = _panels(len(groups), width=4.4, height=3.9)
    y_low, y_high = _robust_limits([g.retention_mean for fits in groups.values() for g in fits])
    for ax, (scenario, fits) in zip(axes, groups.items()):
        right = max(float(g.retention_t[-1]) for g in fits)
        reach = [g.t_star_steps for g in fits if np.isfinite(g.t_star_steps) and g.t_star_steps > 0]
        x_end = min(max(reach + [right]) * 1.5, right * 1e3)  # at most three decades past the data
        outside = 0
        for i, g in enumerate(fits):
            color = _color(KIND_COLORS, g.kind, i)
            ax.plot(g.retention_t, g.retention_mean, "o", ms=2.2, alpha=0.35, color=color, mec="none")
            outside += int(((g.retention_mean < y_low) | (g.retention_mean > y_high)).sum())
            label = f"{KIND_NAMES.get(g.kind, g.kind)}: a = {fmt(g.a)}"
            if np.isfinite(g.a) and g.a > 0:
                t_star = g.t_star_steps
                stop = t_star if np.isfinite(t_star) and t_star <= x_end else x_end
                t = np.geomspace(1.0, max(stop, 2.0), 50)
                ax.plot(t, g.b - g.a * np.log10(t), ls=":", lw=2.0, color=color)
                if np.isfinite(t_star) and t_star <= x_end:
                    ax.plot([t_star], [0.0], marker="v", ms=7, color=color, clip_on=False)
                    label += f", t* = {fmt(t_star)}" + ("?" if g.flags else "")
                elif np.isfinite(t_star):
                    label += f", t* = {fmt(t_star)} (off the axis)"
            else:
                label += " (does not fall)" if np.isfinite(g.a) else " (not fitted)"
            ax.plot([], [], "o", color=color, label=label)
        ax.set_xscale("log")
        ax.set_xlim(0.8, x_end)
        ax.set_ylim(y_low, y_high)
        if outside:
            ax.text(
                0.98,
                0.02,
                f"{outside} mean(s) outside the axis",
                transform=ax.transAxes,
                ha="right",
                va="bottom",
                fontsize=7.5,
                color="0.35",
            )
        ax.axhline(0, color="0.4", lw=0.7)
        ax.set_title(scenario)
        ax.set_xlabel("t (steps after the last acquisition maximum)")
        _legend_below(ax, ncol=1)
    axes[0].set_ylabel("mean R(q, t) (fraction of the gain)")
    fig.suptitle(
        f"{analysis.run.label}: decay of retainability; dotted: fitted line to t* (▼); ? implausible fit", fontsize=11
    )
    fig.tight_layout()
    return fig


def effectivity_figure(analysis: RunAnalysis) -> Figure:
    """Mean effectivity per encounter index, one panel per kind, one line per injected scenario."""
    kinds = _kinds(analysis)
    fig, axes = _panels(len(kinds), sharey=False)
    for ax, kind in zip(axes, kinds):
        for i, g in enumerate(f for f in analysis.fits if f.kind == kind and not f.control):
            e = np.array(g.effectivity_by_encounter, dtype=float)
            if len(e) and np.isfinite(e).any():
                ax.plot(
                    np.arange(1, len(e) + 1),
                    e,
                    marker="o",
                    ms=4,
                    color=_color(SCENARIO_COLORS, g.scenario, i),
                    label=f"{g.scenario} (pooled {fmt(g.effectivity)})",
                )
        ax.axhline(0, color="0.5", lw=0.6)
        ax.set_title(kind)
        ax.set_xlabel("encounter i")
        ax.xaxis.get_major_locator().set_params(integer=True)
        _legend_below(ax, ncol=1)
    axes[0].set_ylabel("E(q,i): fall of perplexity" if analysis.options.scale == "perplexity" else "E(q,i) (nats)")
    fig.suptitle(
        f"{analysis.run.label}: effectivity by encounter, window {analysis.options.window} steps "
        f"({unit(analysis.options)})",
        fontsize=12,
    )
    fig.tight_layout()
    return fig


def exact_match_figure(analysis: RunAnalysis) -> Figure | None:
    """Fraction of probes recalled exactly (greedy decoding = target) at each step; None without the column."""
    run = analysis.run
    if run.exact_match is None:
        return None
    scenarios = _scenarios(analysis)
    fig, axes = _panels(len(scenarios))
    top = 0.0
    for ax, scenario in zip(axes, scenarios):
        for i, kind in enumerate(_kinds(analysis)):
            members = (run.scenario == scenario) & (run.kind == kind)
            if members.any():
                rate = 100 * run.exact_match[members].mean(axis=0)
                top = max(top, float(rate.max()))
                ax.plot(run.steps, rate, lw=1.2, color=_color(KIND_COLORS, kind, i), label=kind)
        _mark_injections(ax, run.injection_steps_by_scenario.get(scenario, []))
        ax.set_title(f"{scenario} (control)" if scenario == CONTROL_SCENARIO else scenario)
        ax.set_xlabel(STEP_LABEL)
        _legend_below(ax, ncol=4)
    # Scaled to the data (a 0–100 % axis flattens the few percent a small model reaches), at least 0–5 %.
    axes[0].set_ylim(0, max(5.0, math.ceil(top * 1.1)))
    axes[0].set_ylabel("exact-match rate (% of probes)")
    fig.suptitle(f"{run.label}: exact-match recall", fontsize=12)
    fig.tight_layout()
    return fig


def control_drift_figure(analysis: RunAnalysis) -> Figure | None:
    """The control probes' mean ℓ change since the first logged step, per kind; None without controls."""
    if not analysis.control_drift:
        return None
    run = analysis.run
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    for i, (kind, drift) in enumerate(analysis.control_drift.items()):
        ax.plot(run.steps, drift, lw=1.3, color=_color(KIND_COLORS, kind, i), label=kind)
    steps = sorted({int(s) for v in run.injection_steps_by_scenario.values() for s in v})
    _mark_injections(ax, steps, label=True)
    ax.axhline(0, color="0.5", lw=0.6)
    ax.set_xlabel(STEP_LABEL)
    ax.set_ylabel(f"mean Δ{analysis.options.metric} of control probes (nats)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    adjusted = "; subtracted from every probe of its kind" if analysis.adjustment == "control" else ""
    ax.set_title(f"{run.label}: drift of never-injected probes{adjusted}", fontsize=11)
    fig.tight_layout()
    return fig


def priming_figure(priming) -> Figure:
    """Priming (analysis.priming): each paragraph's priming score over the run steps (thin; thick: the geometric
    mean of each scenario), and after learning against its keyword's probability in its own context before."""
    run = priming.run
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
    scenarios = list(dict.fromkeys(i.scenario for i in priming.items))
    for n, scenario in enumerate(scenarios):
        color = "0.55" if scenario == CONTROL_SCENARIO else _color(SCENARIO_COLORS, scenario, n)
        members = [i for i in priming.items if i.scenario == scenario]
        for item in members:
            left.plot(run.steps, item.scores, color=color, lw=0.6, alpha=0.3)
        mean = np.exp(np.log(np.stack([i.scores for i in members])).mean(axis=0))
        left.plot(run.steps, mean, color=color, lw=1.8, label=f"{scenario} ({len(members)} paragraphs)")
        xs = np.array([i.p_before for i in members])
        ys = np.array([i.after for i in members])
        marker = "x" if scenario == CONTROL_SCENARIO else "o"
        right.scatter(xs, ys, s=18, marker=marker, color=color, label=scenario)
    _mark_injections(left, sorted({int(s) for v in run.injection_steps_by_scenario.values() for s in v}), label=False)
    for ax in (left, right):
        ax.axhline(1.0, color="0.4", lw=0.7)
        ax.set_yscale("log")
    left.set_xlabel(STEP_LABEL)
    left.set_ylabel("priming score S = mean of P(keyword | context) / P before")
    left.set_title("priming over the run (dotted: injections)")
    left.legend(loc="upper left", fontsize=7.5, frameon=False)
    line = priming.relation
    if line is not None:
        x = np.array([i.p_before for i in priming.items if i.injected and i.p_before > 0])
        grid = np.geomspace(x.min(), x.max(), 20)
        right.plot(
            grid,
            10 ** (line.intercept + line.slope * np.log10(grid)),
            color="0.15",
            lw=1.3,
            label=f"fit: slope {fmt(line.slope)}, r {fmt(line.pearson_r)}, ρ {fmt(line.spearman_rho)}, n {line.n}",
        )
    right.set_xscale("log")
    right.set_xlabel("P(keyword | its own context) before learning")
    right.set_ylabel(f"priming score after learning (t_N + {priming.window})")
    right.set_title("what the keyword's probability before learning predicts")
    right.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7.5, frameon=False)
    fig.suptitle(f"{run.label}: priming of each paragraph's keyword in unrelated contexts", fontsize=12)
    fig.tight_layout()
    return fig


def _priming(analysis: RunAnalysis) -> Figure | None:

    if not has_priming(analysis.run) or "logprob_sum" not in analysis.run.metrics:
        return None
    return priming_figure(priming_analysis(analysis.run, analysis.options.window))


#: How each variant of an adjusted analysis is drawn: (label, colour).
VARIANT_STYLE = {
    "none": ("raw", "0.55"),
    "control": ("control-adjusted", "#ff7f0e"),
    "twin": ("twin-adjusted", "#1f77b4"),
}


def adjustments_figure(analysis: RunAnalysis) -> Figure | None:
    """Mean R(t) of every injected group and its fitted line, raw, control-adjusted and measured against the
    twin side by side (one panel per scenario and kind); None for an analysis measured against neither."""
    if analysis.raw is None:
        return None
    variants = [v for v in (analysis.raw, analysis.control, analysis) if v is not None]
    groups = [(g.scenario, g.kind) for g in analysis.fits if not g.control and g.encounter_steps]
    scenarios = list(dict.fromkeys(s for s, _ in groups))
    kinds = list(dict.fromkeys(k for _, k in groups))
    if not groups:
        return _empty("no injected group")
    fig, axes = plt.subplots(
        len(scenarios), len(kinds), figsize=(4.2 * len(kinds), 2.9 * len(scenarios) + 0.6), squeeze=False
    )
    for row, scenario in enumerate(scenarios):
        for col, kind in enumerate(kinds):
            ax = axes[row, col]
            for v in variants:
                g = next((f for f in v.fits if (f.scenario, f.kind) == (scenario, kind)), None)
                if g is None or g.curve is None or not len(g.retention_t):
                    continue
                label, color = VARIANT_STYLE[v.adjustment]
                ax.plot(g.retention_t, g.retention_mean, "o", ms=2, alpha=0.45, color=color, mec="none")
                fitted = f", R² {fmt(g.r2)}" if np.isfinite(g.a) else ", not fitted"
                ax.plot([], [], "o", color=color, label=f"{label}: a = {fmt(g.a)}{fitted}")
                if np.isfinite(g.a):
                    t = np.array([g.retention_t[0], g.retention_t[-1]], dtype=float)
                    ax.plot(t, g.b - g.a * np.log10(t), color=color, lw=1.4)
            ax.set_xscale("log")
            ax.axhline(0, color="0.5", lw=0.6)
            ax.set_title(f"{scenario} / {kind}", fontsize=10)
            ax.legend(loc="lower left", fontsize=7, frameon=False)
            if col == 0:
                ax.set_ylabel("mean R(t)")
            if row == len(scenarios) - 1:
                ax.set_xlabel(T_LABEL)
    fig.suptitle(f"{analysis.run.label}: retainability and its fit, by what ℓ is measured against", fontsize=11)
    fig.tight_layout()
    return fig


def knowledge_entropy_figure(analysis: RunAnalysis) -> Figure | None:
    """Knowledge entropy over the run's steps, beside the mean retainability R(t) of every group (None for a
    run that did not measure it)."""
    h = analysis.run.knowledge_entropy
    if h is None:
        return None
    run = analysis.run
    fig, (left, right) = plt.subplots(1, 2, figsize=(11.5, 3.9), gridspec_kw={"width_ratios": [1, 1.15]})
    left.plot(h.steps, h.total, marker="o", ms=3, lw=1.3, color="0.15")
    _mark_injections(left, sorted({int(s) for v in run.injection_steps_by_scenario.values() for s in v}))
    left.set_xlabel(STEP_LABEL)
    left.set_ylabel(f"knowledge entropy (nats, sum over {h.layers.shape[1]} layers)")
    left.set_title("knowledge entropy")
    _legend_below(left, ncol=1)
    groups = _fitted_groups(analysis)
    styles = ("-", "--", ":", "-.")
    for i, (scenario, fits) in enumerate(groups.items()):
        for j, g in enumerate(fits):
            right.plot(
                g.retention_t,
                g.retention_mean,
                ls=styles[j % len(styles)],
                lw=1.1,
                color=_color(SCENARIO_COLORS, scenario, i),
                label=f"{scenario} / {g.kind}",
            )
    right.set_xscale("log")
    right.axhline(0, color="0.5", lw=0.6)
    right.set_xlabel(T_LABEL)
    right.set_ylabel("mean R(t)")
    right.set_title("retainability" if groups else "retainability: no group has one")
    if groups:
        right.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.suptitle(f"{run.label}: knowledge entropy beside retainability", fontsize=12)
    fig.tight_layout()
    return fig


#: Rows of the token-dynamics figure: (title, column drawn solid, column drawn dashed or None, log axis).
TOKEN_PANELS = (
    ("surprisal −log p (nats): mean; dashed: largest", "surprisal_mean", "surprisal_max", False),
    ("entropy of the prediction at target positions (nats)", "entropy_mean", None, False),
    ("rank + 1 of the target tokens: mean; dashed: worst", "rank_mean", "rank_max", True),
)


def token_figure(analysis: RunAnalysis) -> Figure | None:
    """Per group, the mean over its probes of the token columns at every logged step: one column of panels per
    scenario, one row per quantity, one colour per kind; None for a log without the token columns."""
    run = analysis.run
    if not run.token_stats:
        return None
    rows = [p for p in TOKEN_PANELS if p[1] in run.token_stats]
    scenarios = _scenarios(analysis)
    fig, axes = plt.subplots(
        len(rows), len(scenarios), figsize=(4.4 * len(scenarios), 2.6 * len(rows) + 0.9), sharex=True, squeeze=False
    )
    for col, scenario in enumerate(scenarios):
        for row, (title, solid, dashed, log) in enumerate(rows):
            ax = axes[row, col]
            for i, kind in enumerate(_kinds(analysis)):
                members = (run.scenario == scenario) & (run.kind == kind)
                if not members.any():
                    continue
                color = _color(KIND_COLORS, kind, i)
                for name, style in ((solid, "-"), (dashed, "--")):
                    if name is not None and name in run.token_stats:
                        mean = run.token_stats[name][members].mean(axis=0) + (1.0 if log else 0.0)
                        ax.plot(run.steps, mean, ls=style, lw=1.1, color=color, label=kind if style == "-" else None)
            if log:
                ax.set_yscale("log")
            _mark_injections(ax, run.injection_steps_by_scenario.get(scenario, []), label=False)
            if col == 0:
                ax.set_ylabel(title, fontsize=8.5)
            if row == 0:
                ax.set_title(f"{scenario} (control)" if scenario == CONTROL_SCENARIO else scenario)
        axes[-1, col].set_xlabel(STEP_LABEL)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=max(len(labels), 1), frameon=False)
    fig.suptitle(f"{run.label}: target tokens, mean over each group's probes (dotted: injections)", fontsize=11)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return fig


#: The figures of one run (`exact_match`, `control_drift`, `adjustments`, `token_dynamics`, `knowledge_entropy` and
#: `priming` only where the run has what they show).
RUN_FIGURES = (
    "trajectories",
    "study_fig2",
    "retainability",
    "study_decay",
    "effectivity",
    "exact_match",
    "control_drift",
    "adjustments",
    "token_dynamics",
    "knowledge_entropy",
    "priming",
)
CAPACITY_FIGURES = (
    "capacity_bits",
    "capacity_memorization",
    "capacity_attributes",
    "capacity_trajectories",
    "capacity_facts",
)


def figure_files(stems) -> list[str]:
    """The file names `save_figure` writes for these stems."""
    return [f"{stem}.{ext}" for stem in stems for ext in ("png", "pdf")]


def run_figures(analysis: RunAnalysis) -> dict[str, Figure]:
    figures = {
        "trajectories": trajectories_figure(analysis),
        "study_fig2": study_fig2_figure(analysis),
        "retainability": retention_figure(analysis),
        "study_decay": study_decay_figure(analysis),
        "effectivity": effectivity_figure(analysis),
    }
    for stem, make in (
        ("exact_match", exact_match_figure),
        ("control_drift", control_drift_figure),
        ("adjustments", adjustments_figure),
        ("token_dynamics", token_figure),
        ("knowledge_entropy", knowledge_entropy_figure),
        ("priming", _priming),
    ):
        fig = make(analysis)
        if fig is not None:
            figures[stem] = fig
    return figures


def compare_in_tokens(analyses: list[RunAnalysis]) -> bool:
    """Whether t* is compared in tokens: runs that train on different numbers of tokens per step (other batch
    sizes, or models whose rows count differently) are comparable only there. Needs every run's tokens per step."""
    per_step = [a.run.tokens_per_step for a in analyses]
    return None not in per_step and len(set(per_step)) > 1


def compare_figure(labels: list[str], analyses: list[RunAnalysis]) -> Figure:
    """Across runs, per group: decay constant a (± standard error), pooled effectivity, and t* with its
    interval on a log axis (in tokens when the runs' tokens per step differ, else in steps). Groups no run has a
    number for (control groups) get no slot."""
    groups = [
        key
        for key in dict.fromkeys((g.scenario, g.kind) for a in analyses for g in a.fits)
        if any(
            np.isfinite(g.a) or np.isfinite(g.effectivity)
            for a in analyses
            for g in a.fits
            if (g.scenario, g.kind) == key and not g.control
        )
    ]
    width_in = max(12.0, 0.75 * len(groups) * max(len(labels), 2) + 4)
    fig, axes = plt.subplots(1, 3, figsize=(width_in, 4.4), squeeze=False)
    width = 0.8 / max(len(labels), 1)
    x = np.arange(len(groups))
    tokens = compare_in_tokens(analyses)
    bottom = 0.5 * min(a.run.tokens_per_step for a in analyses) if tokens else 0.5

    def t_star(g) -> tuple[float, float, float]:
        return (g.t_star_tokens, *g.t_star_ci_tokens) if tokens else (g.t_star_steps, *g.t_star_ci_steps)

    finite_t_star = [t_star(g)[0] for a in analyses for g in a.fits if np.isfinite(t_star(g)[0])]
    top = max(finite_t_star) * 30 if finite_t_star else 20 * bottom
    for r, (label, analysis) in enumerate(zip(labels, analyses)):
        by_group = {(g.scenario, g.kind): g for g in analysis.fits}
        pick = [by_group.get(k) for k in groups]
        a = [g.a if g else np.nan for g in pick]
        se = [g.a_se if g else np.nan for g in pick]
        eff = [g.effectivity if g else np.nan for g in pick]
        offset = (r - (len(labels) - 1) / 2) * width
        color = _FALLBACK[r % len(_FALLBACK)]
        axes[0][0].bar(x + offset, a, width, yerr=np.nan_to_num(se), color=color, label=label, capsize=2)
        axes[0][1].bar(x + offset, eff, width, color=color, label=label)
        for i, g in enumerate(pick):
            if g is None or not np.isfinite(t_star(g)[0]):
                continue
            value, low, high = t_star(g)
            marker = "o" if not g.flags else "x"
            axes[0][2].plot([x[i] + offset], [value], marker, color=color, ms=5)
            if np.isfinite(low):
                axes[0][2].plot([x[i] + offset] * 2, [max(low, bottom), min(high, top)], color=color, lw=1.2)
                if not np.isfinite(high) or high > top:
                    axes[0][2].plot([x[i] + offset], [top], "^", color=color, ms=5)
    axes[0][2].set_yscale("log")
    axes[0][2].set_ylim(bottom, top * 1.5)  # t* below one step means nothing; lower ends are cut there
    titles = [
        "decay constant a (per decade of t)",
        f"pooled effectivity ({unit(analyses[0].options)})",
        f"t* ({'tokens' if tokens else 'steps'}) with its interval; x: implausible fit, ▲: no upper end",
    ]
    for ax, title in zip(axes[0], titles):
        ax.set_xticks(x, [f"{s} / {k}" for s, k in groups], fontsize=8, rotation=30, ha="right")
        ax.set_title(title, fontsize=10)
    for ax in axes[0][:2]:
        ax.axhline(0, color="0.5", lw=0.6)
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="upper center", ncol=min(len(names), 4), frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    return fig


def save_figure(fig: Figure, out_dir: Path, stem: str) -> list[Path]:
    """PNG (150 dpi) and PDF of `fig`, each written atomically; files the user made are never replaced."""
    out = OwnedDir(out_dir)
    out.claim(figure_files([stem]))
    paths = [
        out.write_with(f"{stem}.png", lambda h: fig.savefig(h, format="png", dpi=150)),
        out.write_with(f"{stem}.pdf", lambda h: fig.savefig(h, format="pdf")),
    ]
    plt.close(fig)
    return paths


def png_bytes(fig: Figure, dpi: int = 110) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def plot_run(analysis: RunAnalysis, out_dir: str | Path) -> list[Path]:
    OwnedDir(out_dir).claim(figure_files(RUN_FIGURES))
    written: list[Path] = []
    for stem, fig in run_figures(analysis).items():
        written += save_figure(fig, Path(out_dir), stem)
    return written


# ---- capacity runs ----------------------------------------------------------------------------------------

#: Allen-Zhu & Li's published R(F) (bits per parameter) after 1,000 and 100 exposures per fact.
PUBLISHED_RATIOS = ((2.0, "1,000"), (1.0, "100"))


def capacity_bits_figure(analysis) -> Figure:
    """R(F)·P (stored bits, Allen-Zhu & Li's measure) against parameters (total, non-embedding) on log axes, with
    the fitted bits per parameter and the published 2 and 1 bits-per-parameter lines of the same measure; one
    point per run (colour: people), a star per model's capacity. Runs with R(F) ≤ 0 (or none) cannot sit on a log
    axis: they are drawn as ▼ on its lower edge and counted in the legend."""
    fig, axes = _panels(2, width=5.4, height=4.4, sharey=True)
    people = np.array([r.people for r in analysis.runs], dtype=float)
    cmap = plt.get_cmap("viridis")
    norm = matplotlib.colors.LogNorm(vmin=max(people.min(), 1), vmax=max(people.max(), 2))
    bits = np.array([r.bits[r.column] for r in analysis.runs], dtype=float)
    positive = np.isfinite(bits) & (bits > 0)
    capacities = np.array([m.capacity for m in analysis.models], dtype=float)
    shown = np.concatenate([bits[positive], capacities[np.isfinite(capacities) & (capacities > 0)]])
    floor = shown.min() / 10 if len(shown) else 1.0
    for ax, which, fit in (
        (axes[0], "total", analysis.fit_total),
        (axes[1], "non-embedding", analysis.fit_non_embedding),
    ):

        def params(info_or_model, which=which):
            return info_or_model.parameters if which == "total" else info_or_model.non_embedding_parameters

        x = np.array([params(r.info) for r in analysis.runs], dtype=float)
        ax.scatter(x[positive], bits[positive], c=people[positive], cmap=cmap, norm=norm, s=28, zorder=3, label="runs")
        if (~positive).any():
            ax.scatter(
                x[~positive],
                np.full((~positive).sum(), floor),
                c=people[~positive],
                cmap=cmap,
                norm=norm,
                marker="v",
                s=40,
                zorder=3,
                label=f"R(F) ≤ 0 or none: {(~positive).sum()} run(s), drawn at the floor",
            )
        keep = np.isfinite(capacities) & (capacities > 0)
        mx = np.array([params(m) for m in analysis.models], dtype=float)
        ax.scatter(
            mx[keep],
            capacities[keep],
            marker="*",
            s=150,
            facecolors="none",
            edgecolors="black",
            zorder=4,
            label="capacity (max over N)",
        )
        span = np.array([x.min() / 1.5, x.max() * 1.5])
        for (ratio, exposures), style in zip(PUBLISHED_RATIOS, ("-", "--")):
            ax.plot(
                span,
                ratio * span,
                color="0.35",
                lw=1.1,
                ls=style,
                label=f"R(F) = {ratio:g} (published, {exposures} exp.)",
            )
        if fit is not None and fit.slope > 0:
            se = f" ± {fit.slope_se:.2g}" if np.isfinite(fit.slope_se) else ""
            ax.plot(span, fit.slope * span, color="#d62728", lw=1.6, label=f"fit: {fit.slope:.3g}{se} bits / parameter")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_ylim(bottom=floor / 2)
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel(f"{which} parameters")
        ax.legend(loc="upper left", fontsize=7)
    axes[0].set_ylabel("R(F)·P: N·log2(N0/e^p1) + N·log2(S0/e^p2) bits")
    fig.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap), ax=axes, label="people N", shrink=0.8)
    fig.suptitle("knowledge stored against model size", fontsize=12)
    return fig


def memorization_figure(analysis) -> Figure:
    """Exact-match rate against exposures while each knowledge base is trained, with M(E) = M∞(1 − e^(−E/τ))
    (dotted where the fit describes no saturation)."""
    fig, axes = _panels(1, width=6.4, height=4.2)
    ax = axes[0]
    index = 0
    for r in analysis.runs:
        for kb in r.knowledge_bases:
            grow = np.arange(len(r.steps)) <= kb.done
            color = _FALLBACK[index % len(_FALLBACK)]
            index += 1
            name = r.label if len(r.knowledge_bases) == 1 else f"{r.label} / {kb.scenario}"
            fit = kb.memorization
            if fit is not None:
                label = f"{name}: M∞ {fit.m_inf:.2f}, τ {fit.tau:.3g}, R² {fit.r2:.2f}"
                label += " (no saturation)" if fit.problems else ""
                e = np.linspace(0, kb.exposures[grow].max(), 200)
                ax.plot(e, fit(e), color=color, lw=1.2, ls=":" if fit.problems else "--")
            else:
                label = f"{name}: not fitted"
            ax.plot(kb.exposures[grow], kb.exact_match[grow], "o", ms=3.5, color=color, label=label)
    in_context = any(kb.exact_match_in_context for r in analysis.runs for kb in r.knowledge_bases)
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("exposures per fact E")
    ax.set_ylabel(f"exact-match rate ({'in context' if in_context else 'isolated probes'})")
    ax.legend(loc="best", fontsize=7)
    ax.set_title("exact match within each run (one schedule)")
    fig.tight_layout()
    return fig


def attribute_figure(analysis) -> Figure:
    """Per value: log2|V| minus its cross-entropy in context as a share of log2|V| (what a person's value costs
    less than a uniform guess), and its exact-match rate in context; one bar per run."""
    fig, axes = _panels(2, width=5.8, height=4.0, sharey=False)
    names = [v.name for v in analysis.runs[0].knowledge_bases[0].values]
    width = 0.8 / max(len(analysis.runs), 1)
    x = np.arange(len(names))
    for i, r in enumerate(analysis.runs):
        col = r.column
        known = np.zeros(len(names))
        em = np.zeros(len(names))
        weight = 0
        for kb in r.knowledge_bases:
            by_name = {v.name: v for v in kb.values}
            for j, name in enumerate(names):
                v = by_name.get(name)
                if v is not None:
                    ce = v.context_ce[col] if np.isfinite(v.context_ce[col]) else v.isolated_ce[col]
                    hit = v.context_em[col] if np.isfinite(v.context_em[col]) else v.isolated_em[col]
                    known[j] += kb.people * (1 - ce / math.log2(v.size))
                    em[j] += kb.people * hit
            weight += kb.people
        offset = (i - (len(analysis.runs) - 1) / 2) * width
        color = _FALLBACK[i % len(_FALLBACK)]
        axes[0].bar(x + offset, known / weight, width, color=color, label=r.label)
        axes[1].bar(x + offset, em / weight, width, color=color, label=r.label)
    axes[0].axhline(0, color="0.5", lw=0.6)
    axes[0].set_title("1 − CE / log2|V| (in context)")
    axes[1].set_title("exact-match rate (in context)")
    axes[1].set_ylim(0, 1.02)
    for ax in axes:
        ax.set_xticks(x, names, rotation=25, ha="right", fontsize=8)
    axes[0].legend(loc="best", fontsize=7)
    fig.suptitle("per value (at each run's compared step)", fontsize=12)
    fig.tight_layout()
    return fig


def bits_trajectory_figure(analysis) -> Figure:
    """R(F)·P of every knowledge base (symmetric log axis: negative values are drawn) and its share of what the
    knowledge base offers, against the epochs trained so far (summed over the run's knowledge bases, so a second
    knowledge base continues the axis; dashed: it starts)."""
    fig, axes = _panels(2, width=5.6, height=4.2, sharey=False)
    index = 0
    scale = []
    for r in analysis.runs:
        trained = np.sum([kb.exposures for kb in r.knowledge_bases], axis=0)
        for kb in r.knowledge_bases:
            color = _FALLBACK[index % len(_FALLBACK)]
            index += 1
            name = r.label if len(r.knowledge_bases) == 1 else f"{r.label} / {kb.scenario}"
            axes[0].plot(trained, kb.bits.value, color=color, lw=1.3, label=name)
            axes[1].plot(trained, kb.bits.value / kb.most_bits, color=color, lw=1.3)
            scale += [abs(v) for v in kb.bits.value if np.isfinite(v) and v != 0]
            if kb.overwrite is not None:
                switch = trained[np.searchsorted(r.steps, kb.overwrite.switch_step)]
                for ax in axes:
                    ax.axvline(switch, color=color, ls="--", lw=0.8)
    axes[0].set_yscale("symlog", linthresh=max(0.01 * max(scale, default=100.0), 1.0))
    for ax in axes:
        ax.axhline(0, color="0.5", lw=0.6)
        ax.set_xlabel("epochs trained (exposures, summed over knowledge bases)")
    axes[0].set_ylabel("R(F)·P bits (symmetric log scale)")
    axes[1].set_ylabel("share of N·log2(N0/N) + N·log2 S0")
    axes[0].legend(loc="best", fontsize=7)
    fig.suptitle("stored knowledge during training", fontsize=12)
    fig.tight_layout()
    return fig


def facts_figure(analysis) -> Figure:
    """Lu et al.'s two views: facts recalled exactly at each model's rung with the most people against
    non-embedding parameters (with the least-squares line), and facts recalled against the exposures a schedule
    ends at (separate runs of one model and one set of people) with C(E) = c + a(1 − e^(−E/τ))."""
    fig, axes = _panels(2, width=5.6, height=4.2, sharey=False)
    ax = axes[0]
    x = np.array([m.non_embedding_parameters for m in analysis.models], dtype=float)
    y = np.array([m.fact_capacity for m in analysis.models], dtype=float)
    ax.plot(x, y, "o", color="black", ms=5, label="models (rung with the most people)")
    fit = analysis.fact_fit
    if fit is not None:
        span = np.linspace(0, x.max() * 1.1, 50)
        ax.plot(
            span, fit.intercept + fit.slope * span, color="#d62728", lw=1.4, label=f"line: {fit.slope:.3g} per param"
        )
    ax.set_xlabel("non-embedding parameters")
    ax.set_ylabel("facts recalled exactly")
    ax.set_title("exact-match fact capacity")
    ax.legend(loc="best", fontsize=7)
    ax = axes[1]
    for i, curve in enumerate(analysis.epochs):
        color = _FALLBACK[i % len(_FALLBACK)]
        ax.plot(curve.exposures, curve.facts_recalled, "o", color=color, label=f"{curve.model}, N {curve.people:,}")
        if curve.fit is not None:
            e = np.linspace(0, curve.exposures.max() * 1.05, 200)
            ax.plot(e, curve.fit(e), color=color, lw=1.2, ls=":" if curve.fit.at_bound else "--")
    if not analysis.epochs:
        ax.text(
            0.5, 0.5, "no runs that differ only in their exposures", ha="center", va="center", transform=ax.transAxes
        )
    ax.set_xlabel("exposures E the schedule ends at (separate runs)")
    ax.set_ylabel("facts recalled exactly at the end")
    ax.set_title("capacity against epochs")
    if analysis.epochs:
        ax.legend(loc="best", fontsize=7)
    fig.tight_layout()
    return fig


def capacity_figures(analysis) -> dict[str, Figure]:
    """One figure per name of CAPACITY_FIGURES."""
    return {
        "capacity_bits": capacity_bits_figure(analysis),
        "capacity_memorization": memorization_figure(analysis),
        "capacity_attributes": attribute_figure(analysis),
        "capacity_trajectories": bits_trajectory_figure(analysis),
        "capacity_facts": facts_figure(analysis),
    }


def plot_capacity(analysis, out_dir: str | Path) -> list[Path]:
    OwnedDir(out_dir).claim(figure_files(CAPACITY_FIGURES))
    written: list[Path] = []
    for stem, fig in capacity_figures(analysis).items():
        written += save_figure(fig, Path(out_dir), stem)
    return written
