"""Tables (rich and HTML), cross-run comparison and the self-contained HTML report."""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

import matplotlib.pyplot as plt
from rich.table import Table

from analysis.fit import FitOptions, GroupFit, RunAnalysis, analyse_run
from analysis.load import load_run
from harness.atomic import ensure_dir, write_text_atomic
from analysis.plots import compare_figure, png_bytes, run_figures

COLUMNS = ["scenario", "kind", "a", "± se", "R²", "t* steps", "t* tokens", "effectivity", "probes", "excluded",
           "t range", "EM last"]


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None or not math.isfinite(value):
        return "—"
    if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
        return f"{value:.{digits}g}" if abs(value) < 1e-3 else f"{value:.{digits - 1}e}"
    return f"{value:.{digits}f}" if abs(value) < 100 else f"{value:,.0f}"


def table_row(g: GroupFit) -> list[str]:
    t_range = f"{g.t_min}–{g.t_max}" if g.t_max is not None else "—"
    excluded = f"{g.n_excluded}" + (" (" + "; ".join(f"{n} {r}" for r, n in g.exclusions.items()) + ")"
                                     if g.exclusions else "")
    return [g.scenario, g.kind + (" *" if g.partial else ""), _fmt(g.a), _fmt(g.a_se), _fmt(g.r2),
            _fmt(g.t_star_steps), _fmt(g.t_star_tokens), _fmt(g.effectivity), str(g.n_probes),
            excluded, t_range, _fmt(g.exact_match_last, 2)]


def encounter_header(fits: list[GroupFit]) -> list[str]:
    n = max((len(g.effectivity_by_encounter) for g in fits), default=0)
    return ["scenario", "kind"] + [f"E{i}" for i in range(1, n + 1)]


def encounter_row(g: GroupFit, n: int) -> list[str]:
    values = [_fmt(v, 2) for v in g.effectivity_by_encounter]
    return [g.scenario, g.kind] + values + [""] * (n - len(values))


def rich_table(title: str, fits: list[GroupFit]) -> Table:
    table = Table(title=title, title_justify="left")
    for name in COLUMNS:
        table.add_column(name, justify="left" if name in ("scenario", "kind", "excluded") else "right",
                         overflow="fold")
    for g in fits:
        table.add_row(*table_row(g))
    return table


def rich_encounter_table(fits: list[GroupFit]) -> Table:
    header = encounter_header(fits)
    table = Table(title="effectivity by encounter (IQR-filtered mean of E(q,i))", title_justify="left")
    for name in header:
        table.add_column(name, justify="left" if name in ("scenario", "kind") else "right")
    for g in fits:
        table.add_row(*encounter_row(g, len(header) - 2))
    return table


def fit_notes(fits: list[GroupFit]) -> list[str]:
    return [f"{g.scenario}/{g.kind}: {note}" for g in fits for note in g.notes]


def unique_labels(analyses: list[RunAnalysis]) -> list[str]:
    """Run labels from the manifests; the directory name is appended where two runs would share one."""
    labels = [a.run.label for a in analyses]
    return [f"{label} [{a.run.path.name}]" if labels.count(label) > 1 and label != a.run.path.name else label
            for label, a in zip(labels, analyses)]


def compare_records(analyses: list[RunAnalysis]) -> list[dict]:
    records = []
    for label, analysis in zip(unique_labels(analyses), analyses):
        for g in analysis.fits:
            records.append({"run": label, "path": str(analysis.run.path), **g.record()})
    return records


def compare_table(analyses: list[RunAnalysis]) -> Table:
    table = Table(title="decay constant a and effectivity across runs", title_justify="left")
    for name in ["run", "scenario", "kind", "a", "± se", "R²", "t* steps", "t* tokens", "effectivity"]:
        table.add_column(name, justify="left" if name in ("run", "scenario", "kind") else "right")
    for label, analysis in zip(unique_labels(analyses), analyses):
        for g in analysis.fits:
            row = table_row(g)
            table.add_row(label, *row[:2], *row[2:8])
    return table


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(png: bytes, alt: str) -> str:
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}"></figure>'


_CSS = """body{font-family:system-ui,sans-serif;max-width:1400px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:0.9em}th,td{border:1px solid #ccc;padding:3px 8px}
th{background:#f2f2f2}td{text-align:right}td:nth-child(-n+2){text-align:left}img{max-width:100%}
.note{color:#8a4b00}code{background:#f5f5f5;padding:0 3px}"""

_DEFINITIONS = """<p>Definitions (SPEC §3): effectivity E(q,i) = ℓ at the local acquisition maximum within the window after
encounter i minus ℓ just before it; retainability R(q,t) = [ℓ(t_LAM,N + t) − ℓ(t_pre)] / [ℓ(t_LAM,N) − ℓ(t_pre)];
decay constant a from the least-squares line R ≈ b − a·log10 t of the outlier-filtered mean R(t);
t* = 10^(b/a) is where that line reaches zero (in steps, and × tokens per step in tokens).
Probes whose denominator is ≤ 0 are excluded and counted. Groups marked * are partial (see notes).</p>"""


def build_report(analyses: list[RunAnalysis]) -> str:
    labels = unique_labels(analyses)
    options = analyses[0].options
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>Knowledge-injection report</title>"
             f"<style>{_CSS}</style></head><body><h1>Knowledge-injection report</h1>",
             f"<p>Metric <code>{html.escape(options.metric)}</code>, window {options.window}, IQR factor "
             f"{options.iqr_factor:g}, t from {options.t_min} to "
             f"{options.t_max if options.t_max is not None else 'the largest t every probe has'}.</p>", _DEFINITIONS]
    if len(analyses) > 1:
        parts.append("<h2>Comparison</h2>")
        rows = [[label, *table_row(g)[:8]] for label, a in zip(labels, analyses) for g in a.fits]
        parts.append(_html_table(["run"] + COLUMNS[:8], rows))
        fig = compare_figure(labels, analyses)
        parts.append(_img(png_bytes(fig), "comparison of decay constants and effectivity"))
        plt.close(fig)
    for label, analysis in zip(labels, analyses):
        run = analysis.run
        parts.append(f"<h2>{html.escape(label)}</h2><p><code>{html.escape(str(run.path))}</code>: "
                     f"{run.n_probes} probes, logged steps {run.steps[0]}–{run.steps[-1]} ({len(run.steps)} steps), "
                     f"tokens per step {run.tokens_per_step if run.tokens_per_step else 'unknown'}.</p>")
        parts.append(_html_table(COLUMNS, [table_row(g) for g in analysis.fits]))
        header = encounter_header(analysis.fits)
        parts.append("<h3>Effectivity by encounter</h3>")
        parts.append(_html_table(header, [encounter_row(g, len(header) - 2) for g in analysis.fits]))
        for note in fit_notes(analysis.fits):
            parts.append(f"<p class='note'>{html.escape(note)}</p>")
        for stem, fig in run_figures(analysis).items():
            parts.append(_img(png_bytes(fig), f"{label}: {stem}"))
            plt.close(fig)
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(paths: list[str | Path], out_dir: str | Path, options: FitOptions | None = None) -> Path:
    """Analyse the runs and write OUT/report.html (figures embedded, no other file needed)."""
    analyses = [analyse_run(load_run(p), options) for p in paths]
    out = ensure_dir(out_dir)
    return write_text_atomic(out / "report.html", build_report(analyses))
