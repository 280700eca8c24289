"""The study's figures from a fitted run: Δℓ trajectories, mean R(t) with fits, effectivity, exact match."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from analysis.fit import GroupFit, RunAnalysis  # noqa: E402
from harness.atomic import ensure_dir, write_atomic  # noqa: E402

KIND_COLORS = {"mem": "#1f77b4", "sem": "#d62728", "comp": "#2ca02c"}
SCENARIO_COLORS = {"paraphrase": "#9467bd", "duplicate": "#ff7f0e", "once": "#17becf"}
_FALLBACK = plt.get_cmap("tab10").colors

plt.rcParams.update({"font.size": 10, "axes.titlesize": 11, "legend.fontsize": 8.5, "axes.grid": True,
                     "grid.alpha": 0.3})


def _color(table: dict[str, str], name: str, index: int) -> str:
    return table.get(name, _FALLBACK[index % len(_FALLBACK)])


def _scenarios(analysis: RunAnalysis) -> list[str]:
    return list(dict.fromkeys(g.scenario for g in analysis.fits))


def _kinds(analysis: RunAnalysis) -> list[str]:
    return list(dict.fromkeys(g.kind for g in analysis.fits))


def _panels(n: int, width: float = 4.6, height: float = 3.6, sharey: bool = True):
    fig, axes = plt.subplots(1, n, figsize=(width * n, height), sharey=sharey, squeeze=False)
    return fig, list(axes[0])


def trajectories_figure(analysis: RunAnalysis) -> Figure:
    """Mean ℓ(θ_k) − ℓ(θ_0) per scenario, one line per probe kind, dotted lines at injection steps (Fig. 2)."""
    run, values = analysis.run, analysis.values
    delta = values - values[:, :1]
    scenarios = _scenarios(analysis)
    fig, axes = _panels(len(scenarios))
    for ax, scenario in zip(axes, scenarios):
        for i, kind in enumerate(_kinds(analysis)):
            members = (run.scenario == scenario) & (run.kind == kind)
            if members.any():
                ax.plot(run.steps, delta[members].mean(axis=0), lw=1.2, color=_color(KIND_COLORS, kind, i),
                        label=f"{kind} ({int(members.sum())})")
        for j, step in enumerate(run.injection_steps_by_scenario.get(scenario, [])):
            ax.axvline(step, color="0.4", ls=":", lw=0.9, label="injection" if j == 0 else None)
        ax.set_title(scenario)
        ax.set_xlabel("run step k")
        ax.legend(loc="best")
    axes[0].set_ylabel(f"mean Δ{analysis.options.metric}  (ℓ(θ_k) − ℓ(θ_0))")
    fig.suptitle(f"{run.label}: probe log-probability change", fontsize=12)
    fig.tight_layout()
    return fig


def _fit_label(g: GroupFit) -> str:
    if np.isfinite(g.a):
        return f"{g.kind}: a = {g.a:.3f} ± {g.a_se:.1g}" if np.isfinite(g.a_se) else f"{g.kind}: a = {g.a:.3f}"
    return f"{g.kind}: not fitted"


def retention_figure(analysis: RunAnalysis) -> Figure:
    """Mean R(t) on a log t axis with the fitted lines R = b − a·log10 t (Fig. 4/5)."""
    scenarios = _scenarios(analysis)
    fig, axes = _panels(len(scenarios))
    for ax, scenario in zip(axes, scenarios):
        for i, g in enumerate(f for f in analysis.fits if f.scenario == scenario):
            color = _color(KIND_COLORS, g.kind, i)
            if len(g.retention_t):
                ax.plot(g.retention_t, g.retention_mean, color=color, lw=0.9, alpha=0.55)
            if np.isfinite(g.a) and len(g.retention_t):
                t = np.array([g.retention_t[0], g.retention_t[-1]], dtype=float)
                ax.plot(t, g.b - g.a * np.log10(t), color=color, ls="--", lw=1.8, label=_fit_label(g))
            else:
                ax.plot([], [], color=color, label=_fit_label(g))
        ax.set_xscale("log")
        ax.axhline(0, color="0.5", lw=0.6)
        ax.set_title(scenario)
        ax.set_xlabel("t: steps after the last acquisition maximum")
        ax.legend(loc="best")
    axes[0].set_ylabel("mean retainability R(t)")
    fig.suptitle(f"{analysis.run.label}: retainability (IQR ×{analysis.options.iqr_factor:g} per t)", fontsize=12)
    fig.tight_layout()
    return fig


def effectivity_figure(analysis: RunAnalysis) -> Figure:
    """Mean effectivity per encounter index, one panel per kind, one line per scenario."""
    kinds = _kinds(analysis)
    fig, axes = _panels(len(kinds), sharey=False)
    for ax, kind in zip(axes, kinds):
        for i, g in enumerate(f for f in analysis.fits if f.kind == kind):
            e = np.array(g.effectivity_by_encounter, dtype=float)
            if len(e):
                ax.plot(np.arange(1, len(e) + 1), e, marker="o", ms=4, color=_color(SCENARIO_COLORS, g.scenario, i),
                        label=f"{g.scenario} (mean {g.effectivity:.3g})")
        ax.set_title(kind)
        ax.set_xlabel("encounter i")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(loc="best")
    axes[0].set_ylabel(f"effectivity E(q,i) ({analysis.options.metric})")
    fig.suptitle(f"{analysis.run.label}: effectivity by encounter (window {analysis.options.window})", fontsize=12)
    fig.tight_layout()
    return fig


def exact_match_figure(analysis: RunAnalysis) -> Figure | None:
    """Fraction of probes recalled exactly (greedy decoding = target) at each step; None without the column."""
    run = analysis.run
    if run.exact_match is None:
        return None
    scenarios = _scenarios(analysis)
    fig, axes = _panels(len(scenarios))
    for ax, scenario in zip(axes, scenarios):
        for i, kind in enumerate(_kinds(analysis)):
            members = (run.scenario == scenario) & (run.kind == kind)
            if members.any():
                ax.plot(run.steps, run.exact_match[members].mean(axis=0), lw=1.2,
                        color=_color(KIND_COLORS, kind, i), label=kind)
        for step in run.injection_steps_by_scenario.get(scenario, []):
            ax.axvline(step, color="0.4", ls=":", lw=0.9)
        ax.set_ylim(-0.03, 1.03)
        ax.set_title(scenario)
        ax.set_xlabel("run step k")
        ax.legend(loc="best")
    axes[0].set_ylabel("exact-match rate")
    fig.suptitle(f"{run.label}: exact-match recall", fontsize=12)
    fig.tight_layout()
    return fig


def run_figures(analysis: RunAnalysis) -> dict[str, Figure]:
    figures = {
        "trajectories": trajectories_figure(analysis),
        "retainability": retention_figure(analysis),
        "effectivity": effectivity_figure(analysis),
    }
    em = exact_match_figure(analysis)
    if em is not None:
        figures["exact_match"] = em
    return figures


def compare_figure(labels: list[str], analyses: list[RunAnalysis]) -> Figure:
    """Grouped bars across runs: decay constant a (± standard error) and mean effectivity per group."""
    groups = list(dict.fromkeys((g.scenario, g.kind) for a in analyses for g in a.fits))
    fig, axes = plt.subplots(1, 2, figsize=(max(8.0, 0.9 * len(groups) * max(len(labels), 2) * 0.6 + 4), 4.2),
                             squeeze=False)
    width = 0.8 / max(len(labels), 1)
    x = np.arange(len(groups))
    for r, (label, analysis) in enumerate(zip(labels, analyses)):
        by_group = {(g.scenario, g.kind): g for g in analysis.fits}
        a = [by_group[k].a if k in by_group else np.nan for k in groups]
        se = [by_group[k].a_se if k in by_group else np.nan for k in groups]
        eff = [by_group[k].effectivity if k in by_group else np.nan for k in groups]
        offset = (r - (len(labels) - 1) / 2) * width
        color = _FALLBACK[r % len(_FALLBACK)]
        axes[0][0].bar(x + offset, a, width, yerr=np.nan_to_num(se), color=color, label=label, capsize=2)
        axes[0][1].bar(x + offset, eff, width, color=color, label=label)
    for ax, title in zip(axes[0], ["decay constant a", "mean effectivity"]):
        ax.set_xticks(x, [f"{s} / {k}" for s, k in groups], fontsize=8, rotation=30, ha="right")
        ax.set_title(title)
        ax.axhline(0, color="0.5", lw=0.6)
    axes[0][0].legend(loc="best")
    fig.tight_layout()
    return fig


def save_figure(fig: Figure, out_dir: Path, stem: str) -> list[Path]:
    """PNG (150 dpi) and PDF of `fig`, each written atomically."""
    out_dir = ensure_dir(out_dir)
    paths = [write_atomic(out_dir / f"{stem}.png", lambda h: fig.savefig(h, format="png", dpi=150)),
             write_atomic(out_dir / f"{stem}.pdf", lambda h: fig.savefig(h, format="pdf"))]
    plt.close(fig)
    return paths


def png_bytes(fig: Figure, dpi: int = 110) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def plot_run(analysis: RunAnalysis, out_dir: str | Path) -> list[Path]:
    written: list[Path] = []
    for stem, fig in run_figures(analysis).items():
        written += save_figure(fig, Path(out_dir), stem)
    return written


# ---- capacity runs ----------------------------------------------------------------------------------------


def capacity_bits_figure(analysis) -> Figure:
    """Stored bits against parameters (total, non-embedding) on log axes, with the fitted bits per parameter and
    the 2 and 1 bits-per-parameter lines; one point per run (colour: people), a star per model's capacity."""
    fig, axes = _panels(2, width=5.4, height=4.4, sharey=True)
    people = np.array([r.people for r in analysis.runs], dtype=float)
    cmap = plt.get_cmap("viridis")
    norm = matplotlib.colors.LogNorm(vmin=max(people.min(), 1), vmax=max(people.max(), 2))
    for ax, which, fit in ((axes[0], "total", analysis.fit_total),
                           (axes[1], "non-embedding", analysis.fit_non_embedding)):
        def params(info_or_model):
            return info_or_model.parameters if which == "total" else info_or_model.non_embedding_parameters

        x = np.array([params(r.info) for r in analysis.runs], dtype=float)
        y = np.array([max(r.bits[r.column], 1e-3) for r in analysis.runs])
        ax.scatter(x, y, c=people, cmap=cmap, norm=norm, s=28, zorder=3, label="runs (colour: people)")
        mx = np.array([params(m) for m in analysis.models], dtype=float)
        my = np.array([max(m.capacity, 1e-3) for m in analysis.models])
        ax.scatter(mx, my, marker="*", s=150, facecolors="none", edgecolors="black", zorder=4,
                   label="capacity (max over N)")
        span = np.array([x.min() / 1.5, x.max() * 1.5])
        ax.plot(span, 2 * span, color="0.35", lw=1.2, label="2 bits / parameter")
        ax.plot(span, span, color="0.35", lw=1.0, ls="--", label="1 bit / parameter")
        if fit is not None and fit.slope > 0:
            se = f" ± {fit.slope_se:.2g}" if np.isfinite(fit.slope_se) else ""
            ax.plot(span, fit.slope * span, color="#d62728", lw=1.6, label=f"fit: {fit.slope:.3g}{se} bits / parameter")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel(f"{which} parameters")
        ax.legend(loc="upper left", fontsize=7.5)
    axes[0].set_ylabel("stored bits (Σ max(0, log2|V| − CE))")
    fig.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap), ax=axes, label="people N", shrink=0.8)
    fig.suptitle("knowledge stored against model size", fontsize=12)
    return fig


def memorization_figure(analysis) -> Figure:
    """Exact-match rate against exposures while each knowledge base is trained, with M(E) = M∞(1 − e^(−E/τ))."""
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
                e = np.linspace(0, kb.exposures[grow].max(), 200)
                ax.plot(e, fit(e), color=color, lw=1.2, ls="--")
            else:
                label = f"{name}: not fitted"
            ax.plot(kb.exposures[grow], kb.exact_match[grow], "o", ms=3.5, color=color, label=label)
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("exposures per fact E")
    ax.set_ylabel("exact-match rate (greedy decoding of the value)")
    ax.legend(loc="best", fontsize=7.5)
    ax.set_title("memorization against exposures")
    fig.tight_layout()
    return fig


def attribute_figure(analysis) -> Figure:
    """Per attribute: the share of its bits stored and its exact-match rate, one bar per run."""
    fig, axes = _panels(2, width=5.8, height=4.0, sharey=False)
    names = [name for name, _ in analysis.runs[0].info.attributes]
    width = 0.8 / max(len(analysis.runs), 1)
    x = np.arange(len(names))
    for i, r in enumerate(analysis.runs):
        col = r.column
        stored = np.zeros(len(names))
        available = np.zeros(len(names))
        em = np.zeros(len(names))
        facts = np.zeros(len(names))
        for kb in r.knowledge_bases:
            for j, a in enumerate(kb.attributes[: len(names)]):
                stored[j] += a.bits[col]
                available[j] += a.available_bits
                em[j] += a.exact_match[col] * a.facts if a.facts else 0.0
                facts[j] += a.facts
        offset = (i - (len(analysis.runs) - 1) / 2) * width
        color = _FALLBACK[i % len(_FALLBACK)]
        with np.errstate(invalid="ignore", divide="ignore"):
            axes[0].bar(x + offset, stored / available, width, color=color, label=r.label)
            axes[1].bar(x + offset, em / facts, width, color=color, label=r.label)
    for ax, title in zip(axes, ("share of the attribute's bits stored", "exact-match rate")):
        ax.set_xticks(x, names, rotation=25, ha="right", fontsize=8)
        ax.set_ylim(0, 1.02)
        ax.set_title(title)
    axes[0].legend(loc="best", fontsize=7.5)
    fig.suptitle("per attribute (at each run's compared step)", fontsize=12)
    fig.tight_layout()
    return fig


def bits_trajectory_figure(analysis) -> Figure:
    """Stored bits of every knowledge base (and their share of what it holds) against the epochs trained so far
    (summed over the run's knowledge bases, so a second knowledge base continues the axis; dashed: it starts)."""
    fig, axes = _panels(2, width=5.6, height=4.2, sharey=False)
    index = 0
    for r in analysis.runs:
        trained = np.sum([kb.exposures for kb in r.knowledge_bases], axis=0)
        for kb in r.knowledge_bases:
            color = _FALLBACK[index % len(_FALLBACK)]
            index += 1
            name = r.label if len(r.knowledge_bases) == 1 else f"{r.label} / {kb.scenario}"
            axes[0].plot(trained, np.where(kb.bits > 0, kb.bits, np.nan), color=color, lw=1.3, label=name)
            axes[1].plot(trained, kb.bits / kb.available_bits, color=color, lw=1.3)
            if kb.overwrite is not None:
                switch = trained[np.searchsorted(r.steps, kb.overwrite.switch_step)]
                for ax in axes:
                    ax.axvline(switch, color=color, ls="--", lw=0.8)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("stored bits (log scale; zero not drawn)")
    axes[1].set_ylabel("share of the knowledge base's bits stored")
    axes[1].set_ylim(-0.02, 1.02)
    for ax in axes:
        ax.set_xlabel("epochs trained (exposures, summed over knowledge bases)")
    axes[0].legend(loc="best", fontsize=7.5)
    fig.suptitle("stored knowledge during training", fontsize=12)
    fig.tight_layout()
    return fig


def capacity_figures(analysis) -> dict[str, Figure]:
    return {"capacity_bits": capacity_bits_figure(analysis), "capacity_memorization": memorization_figure(analysis),
            "capacity_attributes": attribute_figure(analysis), "capacity_trajectories": bits_trajectory_figure(analysis)}


def plot_capacity(analysis, out_dir: str | Path) -> list[Path]:
    written: list[Path] = []
    for stem, fig in capacity_figures(analysis).items():
        written += save_figure(fig, Path(out_dir), stem)
    return written
