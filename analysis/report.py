"""Tables (rich and HTML), cross-run comparison and the self-contained HTML report.

Terminal tables fit the console: numbers never wrap, and when the columns do not fit, the least important
ones are left out (the caption says which; `--json` and the HTML report always have all of them).
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from analysis.capacity import CapacityOptions, analyse_capacity, is_capacity_run
from analysis.fit import FLAG_TEXT, FitOptions, GroupFit, RunAnalysis, analyse_run
from analysis.format import fmt, fmt_interval, fmt_pct, fmt_signed
from analysis.load import load_run
from analysis.metrics import REASONS
from analysis.plots import capacity_figures, compare_figure, compare_in_tokens, png_bytes, run_figures, unit
from analysis.priming import has_priming, priming_analysis
from harness.outputs import OwnedDir


@dataclass(frozen=True)
class Column:
    name: str
    cell: Callable[[Any], str]
    priority: int = 0
    """0: always shown; among the others the highest number is left out first when space runs short."""
    left: bool = False
    wrap: bool = False
    """Free text (run labels) may wrap over lines; numbers and names never do."""


def _t_star(g: GroupFit) -> str:
    return fmt(g.t_star_steps) + ("?" if g.flags and np.isfinite(g.t_star_steps) else "")


def _excluded(g: GroupFit, detailed: bool) -> str:
    if not detailed or not g.exclusions:
        return str(g.n_excluded)
    return f"{g.n_excluded} (" + "; ".join(f"{n} {REASONS.get(r, r)}" for r, n in g.exclusions.items()) + ")"


def fit_columns(detailed: bool = False) -> list[Column]:
    return [
        Column("scenario", lambda g: g.scenario, 0, left=True),
        Column("kind", lambda g: g.kind + (" *" if g.partial else ""), 0, left=True),
        Column("effectivity", lambda g: fmt(g.effectivity), 1),
        Column("a", lambda g: fmt(g.a), 1),
        Column("± se", lambda g: fmt(g.a_se), 3),
        Column("R²", lambda g: fmt(g.r2), 2),
        Column("t* steps", _t_star, 1),
        Column("t* CI", lambda g: fmt_interval(*g.t_star_ci_steps), 3),
        Column("t* tokens", lambda g: fmt(g.t_star_tokens), 6),
        Column("probes", lambda g: str(g.n_probes), 5),
        Column("excluded", lambda g: _excluded(g, detailed), 4, left=detailed),
        Column("t range", lambda g: f"{g.t_min}–{g.t_max}" if g.t_max is not None else "—", 5),
        Column("EM last", lambda g: fmt_pct(g.exact_match_last), 6),
    ]


def retention_columns(options: FitOptions) -> list[Column]:
    columns = [Column("scenario", lambda g: g.scenario, 0, left=True), Column("kind", lambda g: g.kind, 0, left=True)]
    for i, level in enumerate(options.retention_levels):
        columns.append(Column(f"t(R={level:g})", lambda g, i=i: _level(g, i), 1 + i))
    for i, t in enumerate(options.at):
        columns.append(Column(f"R({t:,})", lambda g, i=i: _r_at(g, i), 1 + i))
        columns.append(Column(f"se R({t:,})", lambda g, i=i: fmt(g.r_at[i]["se"]) if g.r_at else "—", 4 + i))
    return columns


def _level(g: GroupFit, i: int) -> str:
    if not g.retention_levels:
        return "—"
    entry = g.retention_levels[i]
    return fmt(entry["t_fit"]) + ("?" if g.flags and np.isfinite(entry["t_fit"]) else "")


def _r_at(g: GroupFit, i: int) -> str:
    return fmt(g.r_at[i]["r"]) if g.r_at else "—"


def encounter_columns(fits: list[GroupFit]) -> list[Column]:
    n = max((len(g.effectivity_by_encounter) for g in fits), default=0)
    columns = [Column("scenario", lambda g: g.scenario, 0, left=True), Column("kind", lambda g: g.kind, 0, left=True)]
    for i in range(n):
        # Later encounters are left out first when the terminal is narrow.
        columns.append(
            Column(
                f"E{i + 1}",
                lambda g, i=i: fmt(g.effectivity_by_encounter[i]) if i < len(g.effectivity_by_encounter) else "",
                1 + i,
            )
        )
    return columns


def _rich(title: str, columns: list[Column], rows: list[Any], console: Console | None, caption: str = "") -> Table:
    """A table of `rows` that fits `console`: low-priority columns are left out until it does."""
    shown = list(columns)
    cells = {id(c): [c.cell(row) for row in rows] for c in columns}

    def build(with_title: bool) -> Table:
        table = Table(
            title=title if with_title else None,
            title_justify="left",
            box=box.SIMPLE_HEAD,
            padding=(0, 1),
            pad_edge=False,
            show_edge=False,
            caption_justify="left",
        )
        for c in shown:
            widest = max((len(v) for v in cells[id(c)]), default=0)
            table.add_column(
                c.name,
                justify="left" if c.left else "right",
                no_wrap=not c.wrap,
                overflow="fold",
                min_width=min(widest, 16) if c.wrap else max(widest, len(c.name)),
            )
        for i in range(len(rows)):
            table.add_row(*(cells[id(c)][i] for c in shown))
        return table

    while console is not None:
        droppable = [c for c in shown if c.priority > 0]
        if not droppable or _natural_width(build(with_title=False)) <= console.width:
            break
        shown.remove(max(droppable, key=lambda c: (c.priority, shown.index(c))))
    table = build(with_title=True)
    left_out = [c.name for c in columns if c not in shown]
    notes = [caption] if caption else []
    if left_out:
        notes.append(f"left out for width: {', '.join(left_out)} (see --json or the HTML report)")
    table.caption = "\n".join(notes) or None
    return table


def _natural_width(table: Table) -> int:
    """Width of the table laid out without a limit, wrapping columns at their minimum width."""
    wide = Console(width=10_000, file=io.StringIO(), color_system=None)
    with wide.capture() as capture:
        wide.print(table)
    return max((len(line.rstrip()) for line in capture.get().splitlines()), default=0)


def injected(fits: list[GroupFit]) -> list[GroupFit]:
    return [g for g in fits if not g.control]


def rich_table(title: str, fits: list[GroupFit], console: Console | None = None) -> Table:
    return _rich(
        title,
        fit_columns(),
        injected(fits),
        console,
        caption="* partial (see notes); ? implausible fit (see notes)"
        if any(g.partial or g.flags for g in fits)
        else "",
    )


def rich_retention_table(analysis: RunAnalysis, console: Console | None = None) -> Table:
    fits = [g for g in injected(analysis.fits) if g.curve is not None]
    return _rich(
        "retention: t where the fitted line reaches R, and observed mean R at t",
        retention_columns(analysis.options),
        fits,
        console,
    )


def rich_encounter_table(fits: list[GroupFit], console: Console | None = None) -> Table:
    return _rich("effectivity by encounter: IQR mean of E(q,i)", encounter_columns(fits), injected(fits), console)


def control_rows(analysis: RunAnalysis) -> list[list[str]]:
    run, rows = analysis.run, []
    for kind, drift in analysis.control_drift.items():
        n = int(((run.scenario == "none") & (run.kind == kind)).sum())
        k = int(np.abs(drift).argmax())
        rows.append(
            [kind, str(n), fmt_signed(float(drift[-1])), f"{fmt_signed(float(drift[k]))} at step {run.steps[k]}"]
        )
    return rows


CONTROL_HEADER = ["kind", "probes", "Δℓ at the last step", "largest |Δℓ|"]


def rich_control_table(analysis: RunAnalysis, console: Console | None = None) -> Table | None:
    rows = control_rows(analysis)
    if not rows:
        return None
    columns = [Column(h, lambda r, i=i: r[i], 0, left=i == 0) for i, h in enumerate(CONTROL_HEADER)]
    return _rich(f"control probes (never injected): drift of {analysis.options.metric} (nats)", columns, rows, console)


def adjusted_variants(analysis: RunAnalysis) -> list[tuple[str, RunAnalysis]]:
    """(column suffix, analysis) of every variant shown side by side: raw and control-adjusted (`adj.`), or raw,
    control-adjusted where the run has controls (`ctrl`) and measured against the twin (`twin`); [] unadjusted."""
    if analysis.raw is None:
        return []
    if analysis.adjustment == "control":
        return [("raw", analysis.raw), ("adj.", analysis)]
    return [("raw", analysis.raw), *([("ctrl", analysis.control)] if analysis.control else []), ("twin", analysis)]


#: The measures compared across the variants: (column name, its priority in a narrow terminal, cell).
_ADJUSTED_MEASURES = (
    ("eff.", 1, lambda g: fmt(g.effectivity)),
    ("a", 1, lambda g: fmt(g.a)),
    ("R²", 2, lambda g: fmt(g.r2)),
    ("t*", 3, _t_star),
)


def adjusted_header(analysis: RunAnalysis) -> list[str]:
    suffixes = [suffix for suffix, _ in adjusted_variants(analysis)]
    return ["scenario", "kind"] + [f"{name} {suffix}" for name, _, _ in _ADJUSTED_MEASURES for suffix in suffixes]


def adjusted_title(analysis: RunAnalysis) -> str:
    if analysis.adjustment == "control":
        return "Raw and control-adjusted"
    return "Raw, control-adjusted and twin-adjusted" if analysis.control else "Raw and twin-adjusted"


def adjusted_rows(analysis: RunAnalysis) -> list[list[str]]:
    """The numbers of every injected group under each variant (`adjusted_variants`), side by side."""
    variants = adjusted_variants(analysis)
    if not variants:
        return []
    by_group = [{(g.scenario, g.kind): g for g in a.fits} for _, a in variants]
    rows = []
    for g in injected(analysis.fits):
        fits = [groups[(g.scenario, g.kind)] for groups in by_group]
        rows.append([g.scenario, g.kind] + [cell(f) for _, _, cell in _ADJUSTED_MEASURES for f in fits])
    return rows


def rich_adjusted_table(analysis: RunAnalysis, console: Console | None = None) -> Table | None:
    rows = adjusted_rows(analysis)
    if not rows:
        return None
    n = len(adjusted_variants(analysis))
    priorities = [0, 0] + [p for _, p, _ in _ADJUSTED_MEASURES for _ in range(n)]
    columns = [
        Column(h, lambda r, i=i: r[i], p, left=i < 2)
        for i, (h, p) in enumerate(zip(adjusted_header(analysis), priorities))
    ]
    return _rich(f"{adjusted_title(analysis).lower()}, side by side", columns, rows, console)


def fit_notes(fits: list[GroupFit]) -> list[str]:
    notes = [f"{g.scenario}/{g.kind}: {note}" for g in fits for note in g.notes]
    for g in fits:
        if "no_decay" in g.flags:
            notes.append(f"{g.scenario}/{g.kind}: {FLAG_TEXT['no_decay']} (a = {fmt(g.a)}, R² {fmt(g.r2)})")
        elif g.flags:
            reasons = "; ".join(FLAG_TEXT[f] for f in g.flags)
            notes.append(
                f"{g.scenario}/{g.kind}: implausible fit, t* = {fmt(g.t_star_steps)} steps at R² {fmt(g.r2)}: {reasons}"
            )
    return notes


def unique_labels(analyses: list[RunAnalysis]) -> list[str]:
    """Run labels from the manifests; the directory name is appended where two runs would share one."""
    labels = [a.run.label for a in analyses]
    return [
        f"{label} [{a.run.path.name}]" if labels.count(label) > 1 and label != a.run.path.name else label
        for label, a in zip(labels, analyses)
    ]


def compare_columns(options: FitOptions, in_tokens: bool = False) -> list[Column]:
    """Columns over (run label, group) rows: the run, the group's fit columns, then its retention columns. With
    `in_tokens` (runs of different tokens per step) t* in tokens is kept as long as t* in steps."""
    own = {c.name: c for c in fit_columns()}
    names = ["scenario", "kind", "effectivity", "a", "± se", "R²", "t* steps", "t* CI", "t* tokens"]
    priority = {**{n: own[n].priority for n in names}, **({"t* tokens": own["t* steps"].priority} if in_tokens else {})}
    columns = [Column("run", lambda row: row[0], 0, left=True, wrap=True)]
    columns += [Column(n, lambda row, c=own[n]: c.cell(row[1]), priority[n], own[n].left) for n in names]
    columns += [
        Column(c.name, lambda row, c=c: c.cell(row[1]), c.priority + 6, c.left) for c in retention_columns(options)[2:]
    ]
    return columns


def compare_rows(labels: list[str], analyses: list[RunAnalysis]) -> list[tuple[str, GroupFit]]:
    return [(label, g) for label, a in zip(labels, analyses) for g in injected(a.fits)]


def compare_table(analyses: list[RunAnalysis], console: Console | None = None) -> Table:
    labels = unique_labels(analyses)
    return _rich(
        "decay constant a, t* and effectivity across runs",
        compare_columns(analyses[0].options, compare_in_tokens(analyses)),
        compare_rows(labels, analyses),
        console,
    )


def _html_table(header: list[str], rows: list[list[str]], left: int = 2) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(f"<td{' class=l' if i < left else ''}>{html.escape(c)}</td>" for i, c in enumerate(row))
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html_columns(columns: list[Column], rows: list[Any]) -> str:
    return _html_table(
        [c.name for c in columns], [[c.cell(r) for c in columns] for r in rows], left=sum(1 for c in columns if c.left)
    )


def _img(png: bytes, alt: str) -> str:
    return (
        f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}"></figure>'
    )


_CSS = """body{font-family:system-ui,sans-serif;max-width:1400px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:0.9em;font-variant-numeric:tabular-nums}
th,td{border:1px solid #ccc;padding:3px 8px}th{background:#f2f2f2}td{text-align:right}td.l{text-align:left}
img{max-width:100%}.note{color:#8a4b00}.warn{color:#a00}code{background:#f5f5f5;padding:0 3px}"""

_DEFINITIONS = """<p>Effectivity E(q,i): ℓ at the local acquisition maximum within the window after encounter i
minus ℓ just before it; the group's effectivity pools every (probe, encounter) value and removes outliers once.
Retainability R(q,t) = [ℓ(t_LAM,N + t) − ℓ(ref)] / [ℓ(t_LAM,N) − ℓ(ref)]; mean R(t) removes outliers at every t.
Decay constant a from the least-squares line R ≈ b − a·log10 t of mean R(t); t* = 10^(b/a) is where that line
reaches zero (in steps, and × tokens per step in tokens). t(R=x) is where the line reaches R = x.
Measured against a twin, every ℓ is first replaced by ℓ − (ℓ of the twin − its first value): the probe's change
is taken against what the same continuation without any injection did to that probe. Groups marked * are partial
and t* marked ? rests on an implausible fit (see the notes).</p>"""


def options_html(options: FitOptions, analyses: list[RunAnalysis]) -> str:
    windows = ", ".join(f"{html.escape(a.run.label)}: {a.options.window} ({a.window_source})" for a in analyses)
    ci = (
        f"percentile bootstrap over probes, {options.bootstrap} resamples"
        if options.bootstrap
        else "delta method on b/a (least-squares errors; they treat the points of mean R(t) as independent)"
    )
    t_max = options.t_max if options.t_max is not None else "the rule set's default"
    return (
        f"<p>Rules <code>{html.escape(options.rules)}</code>, scale <code>{options.scale}</code>, metric "
        f"<code>{html.escape(options.metric)}</code>, control adjustment "
        f"<code>{'on' if options.control_adjust else 'off'}</code>, twin adjustment "
        f"<code>{_twins(options, analyses)}</code>, IQR factor {options.factor:g}, "
        f"t from {options.t_min} to {t_max}; window: {windows}. Interval of t*: "
        f"{int(round(options.ci_level * 100))} %, {ci}.</p>"
    )


def _twins(options: FitOptions, analyses: list[RunAnalysis]) -> str:
    """Which runs were measured against a twin, for the options line."""
    if not options.twin_adjust:
        return "off"
    twins = [a for a in analyses if a.adjustment == "twin"]
    if not twins:
        return "on, no run has a twin"
    return "on: " + ", ".join(f"{a.run.label} against {a.twin_path}" for a in twins)


def _is_capacity_only(analysis: RunAnalysis) -> bool:
    """A capacity run with nothing injected: its section is the capacity one, not effectivity and decay."""
    return is_capacity_run(analysis.run) and not analysis.run.encounters


def build_report(analyses: list[RunAnalysis]) -> str:
    labels = unique_labels(analyses)
    options = analyses[0].options
    shown = [(label, a) for label, a in zip(labels, analyses) if not _is_capacity_only(a)]
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>Knowledge-injection report</title>"
        f"<style>{_CSS}</style></head><body><h1>Knowledge-injection report</h1>"
    ]
    if shown:
        parts += [options_html(options, [a for _, a in shown]), _DEFINITIONS]
    if len(shown) > 1:
        parts.append("<h2>Comparison</h2>")
        shown_labels, shown_analyses = [label for label, _ in shown], [a for _, a in shown]
        parts.append(
            _html_columns(
                compare_columns(options, compare_in_tokens(shown_analyses)), compare_rows(shown_labels, shown_analyses)
            )
        )
        fig = compare_figure(shown_labels, shown_analyses)
        parts.append(_img(png_bytes(fig), "comparison of decay constants and effectivity"))
        plt.close(fig)
    for label, analysis in shown:
        run = analysis.run
        tps = f"{run.tokens_per_step:,}" if run.tokens_per_step else "unknown"
        start = (
            f", starting after {run.start_tokens:,} tokens of the original run" if run.start_tokens is not None else ""
        )
        parts.append(
            f"<h2>{html.escape(label)}</h2><p><code>{html.escape(str(run.path))}</code>: "
            f"{run.n_probes:,} probes, logged steps {run.steps[0]}–{run.steps[-1]} ({len(run.steps):,} "
            f"steps), tokens per step {tps}{start}, quantities in {html.escape(unit(analysis.options))}.</p>"
        )
        for warning in analysis.warnings:
            parts.append(f"<p class='warn'>warning: {html.escape(warning)}</p>")
        parts.append(_html_columns(fit_columns(detailed=True), injected(analysis.fits)))
        if analysis.raw is not None:
            parts.append(f"<h3>{adjusted_title(analysis)}</h3>")
            parts.append(_html_table(adjusted_header(analysis), adjusted_rows(analysis)))
        if analysis.control_drift:
            parts.append("<h3>Control probes (never injected)</h3>")
            parts.append(_html_table(CONTROL_HEADER, control_rows(analysis), left=1))
        fitted = [g for g in injected(analysis.fits) if g.curve is not None]
        if fitted:
            parts.append("<h3>Retention</h3>")
            parts.append(_html_columns(retention_columns(analysis.options), fitted))
        parts.append(priming_html(analysis))
        parts.append("<h3>Effectivity by encounter</h3>")
        parts.append(_html_columns(encounter_columns(analysis.fits), injected(analysis.fits)))
        for note in fit_notes(analysis.fits):
            parts.append(f"<p class='note'>{html.escape(note)}</p>")
        for stem, fig in run_figures(analysis).items():
            parts.append(_img(png_bytes(fig), f"{label}: {stem}"))
            plt.close(fig)
    capacity_runs = [a.run for a in analyses if is_capacity_run(a.run)]
    if capacity_runs:
        parts.append(capacity_html(analyse_capacity(capacity_runs, CapacityOptions(iqr_factor=options.factor))))
    parts.append("</body></html>")
    return "\n".join(parts)


REPORT = "report.html"


def write_report(paths: list[str | Path], out_dir: str | Path, options: FitOptions | None = None) -> Path:
    """Analyse the runs and write OUT/report.html (figures embedded, no other file needed)."""
    out = OwnedDir(out_dir)
    out.claim([REPORT])
    analyses = [analyse_run(load_run(p), options) for p in paths]
    return out.write(REPORT, build_report(analyses))


# ---- capacity runs ----------------------------------------------------------------------------------------

CAPACITY_COLUMNS = [
    "run",
    "model",
    "params",
    "non-emb params",
    "people",
    "probed",
    "step",
    "exposures",
    "R(F)·P bits",
    "± se",
    "name term",
    "value term",
    "of most",
    "bits/param",
    "bits/non-emb",
    "facts recalled",
    "converged",
]
DIAGNOSTIC_COLUMNS = [
    "run",
    "knowledge base",
    "isolated bits (unfloored)",
    "floored bits",
    "floor slack F·H2(q)",
    "floored − slack",
    "R(F)·P bits",
]
VALUE_COLUMNS = [
    "run",
    "knowledge base",
    "value",
    "|V|",
    "log2|V|",
    "CE in context",
    "CE isolated",
    "EM in context",
    "EM isolated",
]
MODEL_COLUMNS = [
    "model",
    "params",
    "non-emb params",
    "capacity bits",
    "bits/param",
    "bits/non-emb",
    "limited by",
    "fact capacity (EM)",
    "rungs (people: bits)",
]
MEMORIZATION_COLUMNS = ["run", "knowledge base", "EM", "M∞", "τ", "R²", "problems"]
EPOCH_COLUMNS = ["model", "people", "exposures E", "facts recalled", "C(∞)", "c", "a", "τ", "R²"]
OVERWRITE_COLUMNS = [
    "run",
    "knowledge base",
    "switch step",
    "bits at switch",
    "bits last",
    "kept",
    "EM at switch",
    "EM last",
    "kept (EM)",
    "a",
    "± se",
    "R²",
    "excluded",
]


def _int(value: int) -> str:
    return f"{value:,}"


def _yes_no(value: bool | None) -> str:
    return "—" if value is None else "yes" if value else "no"


def capacity_rows(analysis) -> list[list[str]]:
    rows = []
    for r in analysis.runs:
        rec = r.record()
        share = rec["bits"] / rec["most_bits"] if rec["bits"] is not None and rec["most_bits"] else None
        rows.append(
            [
                rec["run"],
                rec["model"],
                _int(rec["parameters"]),
                _int(rec["non_embedding_parameters"]),
                _int(rec["people"]),
                _int(rec["probed_people"]),
                str(rec["step"]),
                fmt(rec["exposures"]),
                fmt(rec["bits"]),
                fmt(rec["bits_se"]),
                fmt(rec["name_bits"]),
                fmt(rec["value_bits"]),
                fmt(share),
                fmt(rec["bits_per_parameter"]),
                fmt(rec["bits_per_non_embedding_parameter"]),
                fmt(rec["facts_recalled"]),
                _yes_no(rec["converged"]),
            ]
        )
    return rows


def diagnostic_rows(analysis) -> list[list[str]]:
    rows = []
    for r in analysis.runs:
        col = r.column
        for kb in r.knowledge_bases:
            rows.append(
                [
                    r.label,
                    kb.scenario,
                    fmt(kb.isolated_bits[col]),
                    fmt(kb.floored_bits[col]),
                    fmt(kb.floor_slack[col]),
                    fmt(kb.floored_bits[col] - kb.floor_slack[col]),
                    fmt(kb.bits.value[col]),
                ]
            )
    return rows


def value_rows(analysis) -> list[list[str]]:
    rows = []
    for r in analysis.runs:
        col = r.column
        for kb in r.knowledge_bases:
            for v in kb.values:
                rows.append(
                    [
                        r.label,
                        kb.scenario,
                        v.name + (f" (follows {v.derived_from})" if v.derived_from else ""),
                        _int(v.size),
                        fmt(math.log2(v.size)),
                        fmt(v.context_ce[col]),
                        fmt(v.isolated_ce[col]),
                        fmt(v.context_em[col]),
                        fmt(v.isolated_em[col]),
                    ]
                )
    return rows


def model_rows(analysis) -> list[list[str]]:
    return [
        [
            m.model,
            _int(m.parameters),
            _int(m.non_embedding_parameters),
            fmt(m.capacity),
            fmt(m.capacity / m.parameters),
            fmt(m.capacity / m.non_embedding_parameters),
            m.limited_by,
            fmt(m.fact_capacity),
            ", ".join(f"{r.people}: {fmt(r.bits[r.column])}" for r in sorted(m.runs, key=lambda r: r.people)),
        ]
        for m in analysis.models
    ]


def memorization_rows(analysis) -> list[list[str]]:
    rows = []
    for r in analysis.runs:
        for kb in r.knowledge_bases:
            fit = kb.memorization
            rows.append(
                [
                    r.label,
                    kb.scenario,
                    fmt(kb.exact_match[r.column]),
                    fmt(fit.m_inf if fit else None),
                    fmt(fit.tau if fit else None),
                    fmt(fit.r2 if fit else None),
                    "; ".join(fit.problems) if fit else "not fitted",
                ]
            )
    return rows


def epoch_rows(analysis) -> list[list[str]]:
    rows = []
    for e in analysis.epochs:
        fit = e.fit
        rows.append(
            [
                e.model,
                _int(e.people),
                ", ".join(fmt(v) for v in e.exposures),
                ", ".join(fmt(v) for v in e.facts_recalled),
                fmt(fit.limit if fit else None),
                fmt(fit.offset if fit else None),
                fmt(fit.amplitude if fit else None),
                fmt(fit.tau if fit else None) + (" (bound)" if fit and fit.at_bound else ""),
                fmt(fit.r2 if fit else None),
            ]
        )
    return rows


def overwrite_rows(analysis) -> list[list[str]]:
    rows = []
    for r in analysis.runs:
        for kb in r.knowledge_bases:
            o = kb.overwrite
            if o is not None:
                rows.append(
                    [
                        r.label,
                        kb.scenario,
                        str(o.switch_step),
                        fmt(o.bits_at_switch),
                        fmt(o.bits_last),
                        fmt(o.bits_kept),
                        fmt(o.exact_match_at_switch),
                        fmt(o.exact_match_last),
                        fmt(o.exact_match_kept),
                        fmt(o.a),
                        fmt(o.a_se),
                        fmt(o.r2),
                        str(o.n_excluded),
                    ]
                )
    return rows


def fit_line(analysis) -> str:
    parts = []
    for name, fit in (("total", analysis.fit_total), ("non-embedding", analysis.fit_non_embedding)):
        if fit is not None:
            se = f" ± {fmt(fit.slope_se)}" if math.isfinite(fit.slope_se) else ""
            parts.append(
                f"{fmt(fit.slope)}{se} bits per {name} parameter (R² {fmt(fit.r2)}, "
                f"{fit.n_points} model{'s' if fit.n_points != 1 else ''})"
            )
    return "R(F): capacity against parameters, line through the origin: " + "; ".join(parts) if parts else ""


def fact_fit_line(analysis) -> str:
    fit = analysis.fact_fit
    if fit is None:
        return ""
    se = f" ± {fmt(fit.slope_se)}" if math.isfinite(fit.slope_se) else ""
    return (
        f"facts recalled exactly (each model's rung with the most people) against non-embedding parameters: "
        f"{fmt(fit.slope)}{se} facts per parameter, intercept {fmt(fit.intercept)} (R² {fmt(fit.r2)}, "
        f"{fit.n_points} models)"
    )


def capacity_notes(analysis) -> list[str]:
    return list(analysis.notes) + [f"{r.label}: {n}" for r in analysis.runs for n in r.notes]


def print_capacity(analysis, console) -> None:
    """The capacity tables, the fitted lines and the notes, on a rich console."""
    for table in capacity_tables(analysis):
        console.print(table)
    for line in (fit_line(analysis), fact_fit_line(analysis)):
        if line:
            console.print(line, highlight=False)
    for note in capacity_notes(analysis):
        console.print(f"[yellow]note:[/yellow] {note}", highlight=False)


def _plain_table(title: str, header: list[str], rows: list[list[str]], left: int = 2) -> Table:
    table = Table(title=title, title_justify="left")
    for i, name in enumerate(header):
        table.add_column(name, justify="left" if i < left else "right", overflow="fold")
    for row in rows:
        table.add_row(*(escape(cell) for cell in row))  # run names may hold "[...]", which rich reads as markup
    return table


def capacity_tables(analysis) -> list[Table]:
    kind = analysis.runs[0].kind
    tables = [
        _plain_table(
            "stored knowledge R(F)·P = N·log2(N0/e^p1) + N·log2(S0/e^p2) (name and values scored in context)",
            CAPACITY_COLUMNS,
            capacity_rows(analysis),
        ),
        _plain_table("capacity per model (most bits over the rungs)", MODEL_COLUMNS, model_rows(analysis), left=1),
        _plain_table(
            f"diagnostics, not the measure: values after isolated {kind} probes",
            DIAGNOSTIC_COLUMNS,
            diagnostic_rows(analysis),
        ),
        _plain_table("per value (cross-entropy in bits)", VALUE_COLUMNS, value_rows(analysis), left=3),
        _plain_table(
            "exact-match rate against exposures within each run: M(E) = M∞(1 − e^(−E/τ))",
            MEMORIZATION_COLUMNS,
            memorization_rows(analysis),
        ),
    ]
    rows = epoch_rows(analysis)
    if rows:
        tables.append(
            _plain_table(
                "facts recalled against the exposures a schedule ends at: C(E) = c + a(1 − e^(−E/τ))",
                EPOCH_COLUMNS,
                rows,
                left=1,
            )
        )
    rows = overwrite_rows(analysis)
    if rows:
        tables.append(
            _plain_table("overwriting: a knowledge base after training moved on to another", OVERWRITE_COLUMNS, rows)
        )
    return tables


_CAPACITY_DEFINITIONS = """<p>Stored knowledge as Allen-Zhu &amp; Li define it ("Physics of Language Models: Part 3.3",
Def. 4.1/4.3): R(F)·P = N·log2(N0/e<sup>p1</sup>) + N·log2(S0/e<sup>p2</sup>) bits, with N people, N0 the names the
generator could draw, S0 the product of the independent value-set sizes (the work city follows the employer), p1 the
mean cross-entropy (nats) of a person's name at the start of a biography and p2 the mean summed cross-entropy of
the person's values scored in context (inside the biography, after the name and the values before them). Nothing is
floored: a model that knows nothing scores at most 0 in expectation. "Of most" divides by N·log2(N0/N) +
N·log2 S0, what the data offers. Diagnostics: the same values after isolated sentences, unfloored and floored at 0
per fact; the floor can credit up to F·H2(q) bits (F facts, q the share guessed above uniform) that the weights do
not hold. Exact match (EM): greedy decoding yields the whole value; facts recalled = EM × facts (Lu et al.). A
model's capacity is its most bits over rungs with different numbers of people; bits per parameter is the slope of
a line through the origin of capacity against parameters.</p>"""


def capacity_html(analysis) -> str:
    parts = [
        "<h2>Knowledge capacity</h2>",
        _CAPACITY_DEFINITIONS,
        _html_table(CAPACITY_COLUMNS, capacity_rows(analysis)),
    ]
    for line in (fit_line(analysis), fact_fit_line(analysis)):
        if line:
            parts.append(f"<p>{html.escape(line)}</p>")
    parts += [
        "<h3>Capacity per model</h3>",
        _html_table(MODEL_COLUMNS, model_rows(analysis), left=1),
        "<h3>Diagnostics (isolated probes; not the measure)</h3>",
        _html_table(DIAGNOSTIC_COLUMNS, diagnostic_rows(analysis)),
        "<h3>Per value</h3>",
        _html_table(VALUE_COLUMNS, value_rows(analysis), left=3),
        "<h3>Exact match within each run</h3>",
        _html_table(MEMORIZATION_COLUMNS, memorization_rows(analysis)),
    ]
    rows = epoch_rows(analysis)
    if rows:
        parts += ["<h3>Facts recalled against the exposures a schedule ends at</h3>", _html_table(EPOCH_COLUMNS, rows)]
    rows = overwrite_rows(analysis)
    if rows:
        parts += [
            "<h3>Overwriting</h3>",
            "<p>A knowledge base after its training stopped while another one was "
            "trained: bits and exact matches kept, and R(t) = [ℓ(switch + t) − ℓ(0)] / [ℓ(switch) − ℓ(0)] "
            "fitted as R ≈ b − a·log10 t.</p>",
            _html_table(OVERWRITE_COLUMNS, rows),
        ]
    for note in capacity_notes(analysis):
        parts.append(f"<p class='note'>{html.escape(note)}</p>")
    for stem, fig in capacity_figures(analysis).items():
        parts.append(_img(png_bytes(fig), stem))
        plt.close(fig)
    return "\n".join(parts)


# ---- priming ------------------------------------------------------------------------------------------------

PRIMING_COLUMNS = ["paragraph", "scenario", "keyword", "P before", "S after", "S peak", "before", "after"]


def priming_rows(priming) -> list[list[str]]:
    return [
        [
            str(i.paragraph),
            i.scenario,
            i.keyword if i.keyword is not None else "?",
            fmt(i.p_before),
            fmt(i.after),
            fmt(float(i.scores.max())),
            str(i.before_step),
            str(i.after_step),
        ]
        for i in priming.items
    ]


def relation_line(priming) -> str:
    line = priming.relation
    if line is None:
        return "no relation fitted"
    return (
        f"log10 S after ≈ {fmt(line.intercept)} + {fmt(line.slope)} · log10 P before over {line.n} injected "
        f"paragraphs: Pearson r {fmt(line.pearson_r)}, Spearman ρ {fmt(line.spearman_rho)}"
    )


def print_priming(priming, console) -> None:
    """The priming table, the relation and the notes, on a rich console."""
    title = (
        f"{priming.run.label}: priming score S (mean P(keyword | unrelated context) / P before), after = the "
        f"end of the last encounter's {priming.window}-step window; P before: the keyword in its own context"
    )
    console.print(_plain_table(title, PRIMING_COLUMNS, priming_rows(priming), left=3))
    console.print(relation_line(priming), highlight=False)
    for note in priming.notes:
        console.print(f"[yellow]note:[/yellow] {note}", highlight=False)


def priming_html(analysis: RunAnalysis) -> str:
    """The priming section of a run in the report (empty for a run without priming probes)."""

    if not has_priming(analysis.run) or "logprob_sum" not in analysis.run.metrics:
        return ""
    priming = priming_analysis(analysis.run, analysis.options.window)
    return (
        "<h3>Priming</h3><p>Priming score S: the mean over a paragraph's priming probes of P(keyword | unrelated "
        "context) now / before its first encounter; after = the end of its last encounter's window. "
        f"{html.escape(relation_line(priming))}.</p>" + _html_table(PRIMING_COLUMNS, priming_rows(priming), left=3)
    )
