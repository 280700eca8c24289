"""Tables (rich and HTML), cross-run comparison and the self-contained HTML report."""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

import matplotlib.pyplot as plt
from rich.markup import escape
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

_DEFINITIONS = """<p>Definitions: effectivity E(q,i) = ℓ at the local acquisition maximum within the window after
encounter i minus ℓ just before it; retainability R(q,t) = [ℓ(t_LAM,N + t) − ℓ(t_pre)] / [ℓ(t_LAM,N) − ℓ(t_pre)];
decay constant a from the least-squares line R ≈ b − a·log10 t of the outlier-filtered mean R(t);
t* = 10^(b/a) is where that line reaches zero (in steps, and × tokens per step in tokens).
Probes whose denominator is ≤ 0 are excluded and counted. Groups marked * are partial (see notes).</p>"""


def _is_capacity_only(analysis: RunAnalysis) -> bool:
    """A capacity run with nothing injected: its section is the capacity one, not effectivity and decay."""
    from analysis.capacity import is_capacity_run

    return is_capacity_run(analysis.run) and not analysis.run.encounters


def build_report(analyses: list[RunAnalysis]) -> str:
    from analysis.capacity import CapacityOptions, analyse_capacity, is_capacity_run

    labels = unique_labels(analyses)
    options = analyses[0].options
    injected = [(label, a) for label, a in zip(labels, analyses) if not _is_capacity_only(a)]
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>Knowledge-injection report</title>"
             f"<style>{_CSS}</style></head><body><h1>Knowledge-injection report</h1>"]
    if injected:
        parts += [f"<p>Metric <code>{html.escape(options.metric)}</code>, window {options.window}, IQR factor "
                  f"{options.iqr_factor:g}, t from {options.t_min} to "
                  f"{options.t_max if options.t_max is not None else 'the largest t every probe has'}.</p>",
                  _DEFINITIONS]
    if len(injected) > 1:
        parts.append("<h2>Comparison</h2>")
        rows = [[label, *table_row(g)[:8]] for label, a in injected for g in a.fits]
        parts.append(_html_table(["run"] + COLUMNS[:8], rows))
        fig = compare_figure([label for label, _ in injected], [a for _, a in injected])
        parts.append(_img(png_bytes(fig), "comparison of decay constants and effectivity"))
        plt.close(fig)
    for label, analysis in injected:
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
    capacity_runs = [a.run for a in analyses if is_capacity_run(a.run)]
    if capacity_runs:
        parts.append(capacity_html(analyse_capacity(capacity_runs, CapacityOptions(iqr_factor=options.iqr_factor))))
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(paths: list[str | Path], out_dir: str | Path, options: FitOptions | None = None) -> Path:
    """Analyse the runs and write OUT/report.html (figures embedded, no other file needed)."""
    analyses = [analyse_run(load_run(p), options) for p in paths]
    out = ensure_dir(out_dir)
    return write_text_atomic(out / "report.html", build_report(analyses))


# ---- capacity runs ----------------------------------------------------------------------------------------

CAPACITY_COLUMNS = ["run", "model", "params", "non-emb params", "people", "step", "exposures", "bits", "strict",
                    "of available", "bits/param", "bits/non-emb", "EM", "M∞", "τ", "R²"]
ATTRIBUTE_COLUMNS = ["run", "knowledge base", "attribute", "|V|", "log2|V|", "bits", "of available", "CE bits", "EM"]
MODEL_COLUMNS = ["model", "params", "non-emb params", "capacity bits", "bits/param", "bits/non-emb", "limited by",
                 "rungs (people: bits)"]
OVERWRITE_COLUMNS = ["run", "knowledge base", "switch step", "bits at switch", "bits last", "kept", "EM at switch",
                     "EM last", "kept (EM)", "a", "± se", "R²", "excluded"]


def _int(value: int) -> str:
    return f"{value:,}"


def capacity_rows(analysis) -> list[list[str]]:
    rows = []
    for r in analysis.runs:
        rec = r.record()
        fit = r.knowledge_bases[0].memorization
        share = rec["bits"] / rec["available_bits"] if rec["available_bits"] else math.nan
        em = sum(kb.exact_match[r.column] * kb.people for kb in r.knowledge_bases) / max(r.people, 1)
        rows.append([rec["run"], rec["model"], _int(rec["parameters"]), _int(rec["non_embedding_parameters"]),
                     _int(rec["people"]), str(rec["step"]), _fmt(rec["exposures"], 1), _fmt(rec["bits"], 1),
                     _fmt(rec["bits_strict"], 1), _fmt(share, 2), _fmt(rec["bits_per_parameter"]),
                     _fmt(rec["bits_per_non_embedding_parameter"]), _fmt(em, 2),
                     _fmt(fit.m_inf if fit else None, 2), _fmt(fit.tau if fit else None, 3),
                     _fmt(fit.r2 if fit else None, 2)])
    return rows


def attribute_rows(analysis) -> list[list[str]]:
    rows = []
    for r in analysis.runs:
        col = r.column
        for kb in r.knowledge_bases:
            for a in kb.attributes:
                share = a.bits[col] / a.available_bits if a.available_bits else math.nan
                rows.append([r.label, kb.scenario, a.name, _int(a.size), _fmt(math.log2(a.size), 2),
                             _fmt(a.bits[col], 1), _fmt(share, 2), _fmt(a.cross_entropy[col], 2),
                             _fmt(a.exact_match[col], 2)])
    return rows


def model_rows(analysis) -> list[list[str]]:
    return [[m.model, _int(m.parameters), _int(m.non_embedding_parameters), _fmt(m.capacity, 1),
             _fmt(m.capacity / m.parameters), _fmt(m.capacity / m.non_embedding_parameters),
             "model" if m.limited_by_model else "data",
             ", ".join(f"{r.people}: {r.bits[r.column]:,.0f}" for r in sorted(m.runs, key=lambda r: r.people))]
            for m in analysis.models]


def overwrite_rows(analysis) -> list[list[str]]:
    rows = []
    for r in analysis.runs:
        for kb in r.knowledge_bases:
            o = kb.overwrite
            if o is not None:
                rows.append([r.label, kb.scenario, str(o.switch_step), _fmt(o.bits_at_switch, 1), _fmt(o.bits_last, 1),
                             _fmt(o.bits_kept, 2), _fmt(o.exact_match_at_switch, 2), _fmt(o.exact_match_last, 2),
                             _fmt(o.exact_match_kept, 2), _fmt(o.a), _fmt(o.a_se), _fmt(o.r2), str(o.n_excluded)])
    return rows


def fit_line(analysis) -> str:
    parts = []
    for name, fit in (("total", analysis.fit_total), ("non-embedding", analysis.fit_non_embedding)):
        if fit is not None:
            se = f" ± {_fmt(fit.slope_se)}" if math.isfinite(fit.slope_se) else ""
            parts.append(f"{_fmt(fit.slope)}{se} bits per {name} parameter (R² {_fmt(fit.r2, 2)}, "
                         f"{fit.n_points} model{'s' if fit.n_points != 1 else ''})")
    return "capacity against parameters, line through the origin: " + "; ".join(parts) if parts else ""


def capacity_notes(analysis) -> list[str]:
    return list(analysis.notes) + [f"{r.label}: {n}" for r in analysis.runs for n in r.notes]


def _rich(title: str, header: list[str], rows: list[list[str]], left: int = 2) -> Table:
    table = Table(title=title, title_justify="left")
    for i, name in enumerate(header):
        table.add_column(name, justify="left" if i < left else "right", overflow="fold")
    for row in rows:
        table.add_row(*(escape(cell) for cell in row))  # run names may hold "[...]", which rich reads as markup
    return table


def capacity_tables(analysis) -> list[Table]:
    kind = analysis.runs[0].kind
    tables = [_rich(f"stored knowledge ({kind} probes; bits = Σ max(0, log2|V| − CE))", CAPACITY_COLUMNS,
                    capacity_rows(analysis)),
              _rich("per attribute", ATTRIBUTE_COLUMNS, attribute_rows(analysis), left=3),
              _rich("capacity per model (most bits over the rungs)", MODEL_COLUMNS, model_rows(analysis), left=1)]
    rows = overwrite_rows(analysis)
    if rows:
        tables.append(_rich("overwriting: a knowledge base after training moved on to another", OVERWRITE_COLUMNS, rows))
    return tables


_CAPACITY_DEFINITIONS = """<p>Stored knowledge (after Allen-Zhu &amp; Li, "Physics of Language Models: Part 3.3"):
for every (person, attribute a), log2 |V_a| minus the model's cross-entropy of the value in bits (its summed
token log-probability after the probe prompt, divided by −ln 2), floored at 0 and summed (<code>bits</code>);
<code>strict</code> floors each attribute's sum instead, so facts predicted worse than a uniform guess cancel
facts that are known. Exact match (EM): greedy decoding yields the whole value. M(E) = M∞·(1 − e^(−E/τ)) is
fitted to EM against exposures E. A model's capacity is its most bits over rungs with different numbers of
people; bits per parameter is the slope of a line through the origin of capacity against parameters.</p>"""


def capacity_html(analysis) -> str:
    from analysis.plots import capacity_figures

    parts = ["<h2>Knowledge capacity</h2>", _CAPACITY_DEFINITIONS,
             _html_table(CAPACITY_COLUMNS, capacity_rows(analysis))]
    line = fit_line(analysis)
    if line:
        parts.append(f"<p>{html.escape(line)}</p>")
    parts += ["<h3>Capacity per model</h3>", _html_table(MODEL_COLUMNS, model_rows(analysis)),
              "<h3>Per attribute</h3>", _html_table(ATTRIBUTE_COLUMNS, attribute_rows(analysis))]
    rows = overwrite_rows(analysis)
    if rows:
        parts += ["<h3>Overwriting</h3>", "<p>A knowledge base after its training stopped while another one was "
                  "trained: bits and exact matches kept, and R(t) = [ℓ(switch + t) − ℓ(0)] / [ℓ(switch) − ℓ(0)] "
                  "fitted as R ≈ b − a·log10 t.</p>", _html_table(OVERWRITE_COLUMNS, rows)]
    for note in capacity_notes(analysis):
        parts.append(f"<p class='note'>{html.escape(note)}</p>")
    for stem, fig in capacity_figures(analysis).items():
        parts.append(_img(png_bytes(fig), stem))
        plt.close(fig)
    return "\n".join(parts)
