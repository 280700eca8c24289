"""`analysis fit|plot|compare|capacity|report|priming`: thin wrappers over analysis.fit, analysis.capacity,
analysis.plots, analysis.report and analysis.export. Results go to stdout; warnings, notes on files written and
progress to stderr.

The options of the analysis are the fields of `FitOptions` (and of `CapacityOptions` for `capacity`), made into
command-line options by `harness.options.options_from`: each is declared once, with its help, in analysis/fit.py.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import pyarrow.parquet as pq
import typer
from rich.console import Console
from rich.progress import Progress

from analysis.capacity import CapacityOptions, analyse_capacity
from analysis.export import check_curves_path, compare_document, curves_table, fit_document, write_curves
from analysis.fit import FitOptions, RunAnalysis, analyse_run
from analysis.load import load_run
from analysis.plots import (
    CAPACITY_FIGURES,
    RUN_FIGURES,
    compare_figure,
    figure_files,
    plot_capacity,
    plot_run,
    priming_figure,
    save_figure,
)
from analysis.priming import PRIMING_JSON, SCORES_FILE, priming_analysis, scores_table
from analysis.report import (
    REPORT,
    build_report,
    compare_table,
    fit_notes,
    print_capacity,
    print_priming,
    rich_adjusted_table,
    rich_control_table,
    rich_encounter_table,
    rich_retention_table,
    rich_table,
    unique_labels,
)
from harness.errors import UserError
from harness.options import options_from
from harness.outputs import OwnedDir

RunDir = Annotated[Path, typer.Argument(help="Run directory: probes.parquet, injections.parquet, manifest.json.")]
RunDirs = Annotated[list[Path], typer.Argument(help="One or more run directories.")]
Curves = Annotated[
    Path | None,
    typer.Option(
        help="Also write mean R(t), its standard error and probe counts per (run, scenario, kind, t) to this "
        ".parquet file."
    ),
]
Out = Annotated[Path, typer.Option("--out", "-o", help="Output directory (created if needed).")]
JsonOutput = Annotated[bool, typer.Option("--json", help='Print JSON ({"options", ..., "groups"}) instead of tables.')]


def _analyse(paths: list[Path], options: FitOptions) -> list[RunAnalysis]:
    analyses = []
    with Progress(transient=True, console=Console(stderr=True)) as progress:
        task = progress.add_task("analysing", total=len(paths))
        for path in paths:
            analyses.append(analyse_run(load_run(path), options))
            progress.advance(task)
    err = Console(stderr=True)
    for analysis in analyses:
        for warning in analysis.warnings:
            err.print(f"[yellow]warning:[/yellow] {analysis.run.path}: {warning}", highlight=False, soft_wrap=True)
    return analyses


def _console() -> Console:
    # Piped output would otherwise be folded to 80 columns; tables still leave out columns beyond this width.
    console = Console()
    return console if console.is_terminal else Console(width=170)


def _print_notes(console: Console, fits, prefix: str = "") -> None:
    for note in fit_notes(fits):
        console.print(f"[yellow]note:[/yellow] {prefix}{note}", highlight=False, soft_wrap=True)


def _write_curves(curves: Path, labels: list[str], analyses: list[RunAnalysis]) -> None:
    path = write_curves(curves, [curves_table(label, a) for label, a in zip(labels, analyses)])
    print(f"curves: {path}", file=sys.stderr)


@options_from(FitOptions)
def fit(run_dir: RunDir, options: FitOptions, json_output: JsonOutput = False, curves: Curves = None) -> None:
    """Effectivity, decay constant a (± se, R²), t* with its interval, retention levels, for every group."""
    if curves is not None:
        check_curves_path(curves, [run_dir])
    [analysis] = _analyse([run_dir], options)
    if curves is not None:
        _write_curves(curves, [analysis.run.label], [analysis])
    if json_output:
        print(json.dumps(fit_document(analysis), indent=2, allow_nan=False))
        return
    console = _console()
    console.print(
        rich_table(
            f"{analysis.run.label} ({run_dir}): {options.rules} rules, {options.scale} scale"
            + {"control": ", control-adjusted", "twin": f", measured against the twin {analysis.twin_path}"}.get(
                analysis.adjustment, ""
            ),
            analysis.fits,
            console,
        )
    )
    for table in (
        rich_adjusted_table(analysis, console),
        rich_retention_table(analysis, console),
        rich_encounter_table(analysis.fits, console),
        rich_control_table(analysis, console),
    ):
        if table is not None:
            console.print(table)
    _print_notes(console, analysis.fits)


@options_from(FitOptions)
def plot(run_dir: RunDir, out: Out, options: FitOptions) -> None:
    """PNG and PDF figures: Δℓ trajectories (also in the study's Figure 2 layout), mean R(t) with the fits and
    t*, effectivity by encounter, exact match, the control probes' drift."""
    OwnedDir(out).claim(figure_files(RUN_FIGURES))  # before any work: nothing the user made is replaced
    [analysis] = _analyse([run_dir], options)
    for path in plot_run(analysis, out):
        print(path)


@options_from(FitOptions)
def compare(
    run_dirs: RunDirs,
    options: FitOptions,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write compare.json and the figure here.")] = None,
    json_output: JsonOutput = False,
    curves: Curves = None,
) -> None:
    """Decay constants, t* with intervals and effectivity across runs (stages, model sizes, batch sizes)."""
    if options.baseline is not None and len(run_dirs) > 1:
        raise UserError(
            "--baseline names one twin, and compare was given several runs: each run is measured against the twin "
            "its own manifest names"
        )
    if out is not None:
        OwnedDir(out).claim(["compare.json", *figure_files(["compare"])])
    if curves is not None:
        check_curves_path(curves, run_dirs)
    analyses = _analyse(run_dirs, options)
    labels = unique_labels(analyses)
    document = compare_document(labels, analyses, options)
    if curves is not None:
        _write_curves(curves, labels, analyses)
    if json_output:
        print(json.dumps(document, indent=2, allow_nan=False))
    else:
        console = _console()
        console.print(compare_table(analyses, console))
        for label, analysis in zip(labels, analyses):
            _print_notes(console, analysis.fits, prefix=f"{label} ")
    if out is not None:
        OwnedDir(out).write("compare.json", json.dumps(document, indent=2, allow_nan=False) + "\n")
        for path in save_figure(compare_figure(labels, analyses), out, "compare"):
            print(path, file=sys.stderr)


@options_from(CapacityOptions)
def capacity(
    run_dirs: RunDirs,
    options: CapacityOptions,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")] = False,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write capacity.json and the figures here.")] = None,
) -> None:
    """Knowledge capacity of capacity runs: R(F) as Allen-Zhu & Li define it (name and values scored in context),
    bits per parameter, exact-match fact capacity and memorization (Lu et al.), and overwriting."""
    if out is not None:
        OwnedDir(out).claim(["capacity.json", *figure_files(CAPACITY_FIGURES)])
    analysis = analyse_capacity([load_run(p) for p in run_dirs], options)
    record = analysis.record()
    if json_output:
        print(json.dumps(record, indent=2, allow_nan=False))
    else:
        print_capacity(analysis, _console())
    if out is not None:
        OwnedDir(out).write("capacity.json", json.dumps(record, indent=2, allow_nan=False) + "\n")
        for path in plot_capacity(analysis, out):
            print(path, file=sys.stderr)


@options_from(FitOptions)
def report(run_dirs: RunDirs, out: Out, options: FitOptions) -> None:
    """One self-contained HTML report (tables, notes, embedded figures) for one or more runs."""
    OwnedDir(out).claim([REPORT])
    analyses = _analyse(run_dirs, options)
    path = OwnedDir(out).write(REPORT, build_report(analyses))
    print(path)


def priming(
    run_dir: RunDir,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")] = False,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Write priming.json, priming_scores.parquet and the priming figure here."),
    ] = None,
    window: Annotated[
        int | None,
        typer.Option(help="Steps after an encounter searched for the keyword's peak (default: the run's window)."),
    ] = None,
) -> None:
    """Priming of each paragraph's keyword in unrelated contexts (probes of kind `prime`) over the run, and how its
    probability in its own context before learning predicts it (Sun et al. 2025)."""
    if out is not None:
        OwnedDir(out).claim([PRIMING_JSON, SCORES_FILE, *figure_files(["priming"])])
    if window is not None and window < 1:
        raise UserError(f"--window: must be >= 1, got {window}")
    analysis = priming_analysis(load_run(run_dir), window)
    if analysis is None:
        raise UserError(
            f"{run_dir / 'probes.parquet'}: no priming probes (kind 'prime'); log them with priming_probes in the "
            "run's configuration"
        )
    if json_output:
        print(json.dumps(analysis.record(), indent=2, allow_nan=False))
    else:
        print_priming(analysis, _console())
    if out is not None:
        table = scores_table(analysis)
        owned = OwnedDir(out)
        print(
            owned.write(PRIMING_JSON, json.dumps(analysis.record(), indent=2, allow_nan=False) + "\n"), file=sys.stderr
        )
        print(owned.write_with(SCORES_FILE, lambda handle: pq.write_table(table, handle)), file=sys.stderr)
        for path in save_figure(priming_figure(analysis), out, "priming"):
            print(path, file=sys.stderr)
