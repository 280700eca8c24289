"""`analysis fit|plot|compare|capacity|report`: thin wrappers over analysis.fit, analysis.capacity, analysis.plots
and analysis.report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from harness.errors import HarnessTyper

app = HarnessTyper(help="Analyse run directories: effectivity, retainability, decay fits, knowledge "
                        "capacity, plots, reports.")

RunDir = Annotated[Path, typer.Argument(help="Run directory: probes.parquet, injections.parquet, manifest.json.")]
RunDirs = Annotated[list[Path], typer.Argument(help="One or more run directories.")]
Window = Annotated[int, typer.Option(help="Steps after an encounter searched for the local acquisition maximum.")]
IqrFactor = Annotated[float, typer.Option(help="Interquartile-rule factor for outlier removal.")]
Metric = Annotated[str, typer.Option(help="Probe-log column used as ℓ: logprob, logprob_sum or first_logprob.")]
TMin = Annotated[int, typer.Option(help="First t of the decay fit.")]
TMax = Annotated[Optional[int], typer.Option(
    help="Last t of the decay fit [default: last logged step − (t_N + window), the largest t every probe has].")]
Out = Annotated[Path, typer.Option("--out", help="Output directory (created if needed).")]


def _options(window: int, iqr_factor: float, metric: str, t_min: int, t_max: Optional[int]):
    from analysis.fit import FitOptions

    options = FitOptions(window=window, iqr_factor=iqr_factor, metric=metric, t_min=t_min, t_max=t_max)
    options.validate()
    return options


def _analyse(paths: list[Path], options):
    from rich.progress import Progress

    from analysis.fit import analyse_run
    from analysis.load import load_run

    analyses = []
    with Progress(transient=True, console=Console(stderr=True)) as progress:
        task = progress.add_task("analysing", total=len(paths))
        for path in paths:
            analyses.append(analyse_run(load_run(path), options))
            progress.advance(task)
    return analyses


def _console() -> Console:
    # Piped output would otherwise be folded to 80 columns, which breaks the numbers over lines.
    console = Console()
    return console if console.is_terminal else Console(width=170)


def _print_notes(console: Console, fits) -> None:
    from analysis.report import fit_notes

    for note in fit_notes(fits):
        console.print(f"[yellow]note:[/yellow] {note}", highlight=False)


@app.command()
def fit(run_dir: RunDir, json_output: Annotated[bool, typer.Option("--json", help="Print a JSON list instead of a table.")] = False,
        window: Window = 50, iqr_factor: IqrFactor = 1.5, metric: Metric = "logprob", t_min: TMin = 1,
        t_max: TMax = None) -> None:
    """Effectivity, decay constant a (± se, R²) and x-intercept t* for every (scenario, kind)."""
    from analysis.report import rich_encounter_table, rich_table

    [analysis] = _analyse([run_dir], _options(window, iqr_factor, metric, t_min, t_max))
    if json_output:
        print(json.dumps([g.record() for g in analysis.fits], indent=2, allow_nan=False))
        return
    console = _console()
    console.print(rich_table(f"{analysis.run.label} ({run_dir})", analysis.fits))
    console.print(rich_encounter_table(analysis.fits))
    _print_notes(console, analysis.fits)


@app.command()
def plot(run_dir: RunDir, out: Out, window: Window = 50, iqr_factor: IqrFactor = 1.5, metric: Metric = "logprob",
         t_min: TMin = 1, t_max: TMax = None) -> None:
    """PNG and PDF figures: Δℓ trajectories, mean R(t) with fits, effectivity by encounter, exact match."""
    from analysis.plots import plot_run

    [analysis] = _analyse([run_dir], _options(window, iqr_factor, metric, t_min, t_max))
    for path in plot_run(analysis, out):
        print(path)


@app.command()
def compare(run_dirs: RunDirs, out: Annotated[Optional[Path], typer.Option("--out", help="Write compare.json and the figure here.")] = None,
            json_output: Annotated[bool, typer.Option("--json", help="Print a JSON list instead of a table.")] = False,
            window: Window = 50, iqr_factor: IqrFactor = 1.5, metric: Metric = "logprob", t_min: TMin = 1,
            t_max: TMax = None) -> None:
    """Decay constants and effectivity across runs (stages, model sizes, batch sizes) as a table and a figure."""
    from harness.atomic import ensure_dir, write_text_atomic
    from analysis.plots import compare_figure, save_figure
    from analysis.report import compare_records, compare_table, unique_labels

    analyses = _analyse(run_dirs, _options(window, iqr_factor, metric, t_min, t_max))
    records = compare_records(analyses)
    if json_output:
        print(json.dumps(records, indent=2, allow_nan=False))
    else:
        console = _console()
        console.print(compare_table(analyses))
        for label, analysis in zip(unique_labels(analyses), analyses):
            for g in analysis.fits:
                for note in g.notes:
                    console.print(f"[yellow]note:[/yellow] {label} {g.scenario}/{g.kind}: {note}", highlight=False)
    if out is not None:
        out = ensure_dir(out)
        write_text_atomic(out / "compare.json", json.dumps(records, indent=2, allow_nan=False) + "\n")
        for path in save_figure(compare_figure(unique_labels(analyses), analyses), out, "compare"):
            print(path, file=__import__("sys").stderr)


@app.command()
def capacity(run_dirs: RunDirs,
             json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")] = False,
             out: Annotated[Optional[Path], typer.Option("--out", help="Write capacity.json and the figures here.")] = None,
             kind: Annotated[str, typer.Option(help="Probes to measure: mem (the biography's sentences) or sem "
                                                    "(a held-out wording).")] = "mem",
             at_exposures: Annotated[Optional[float], typer.Option(
                 help="Compare runs at the logged step nearest this many exposures [default: each run's last step].")] = None,
             iqr_factor: IqrFactor = 1.5) -> None:
    """Stored knowledge in bits, bits per parameter, exact-match memorization and overwriting of capacity runs."""
    from harness.atomic import ensure_dir, write_text_atomic
    from analysis.capacity import CapacityOptions, analyse_capacity
    from analysis.load import load_run
    from analysis.report import capacity_notes, capacity_tables, fit_line

    options = CapacityOptions(kind=kind, at_exposures=at_exposures, iqr_factor=iqr_factor)
    options.validate()
    analysis = analyse_capacity([load_run(p) for p in run_dirs], options)
    record = analysis.record()
    if json_output:
        print(json.dumps(record, indent=2, allow_nan=False))
    else:
        console = _console()
        for table in capacity_tables(analysis):
            console.print(table)
        line = fit_line(analysis)
        if line:
            console.print(line, highlight=False)
        for note in capacity_notes(analysis):
            console.print(f"[yellow]note:[/yellow] {note}", highlight=False)
    if out is not None:
        from analysis.plots import plot_capacity

        out = ensure_dir(out)
        write_text_atomic(out / "capacity.json", json.dumps(record, indent=2, allow_nan=False) + "\n")
        for path in plot_capacity(analysis, out):
            print(path, file=__import__("sys").stderr)


@app.command()
def report(run_dirs: RunDirs, out: Out, window: Window = 50, iqr_factor: IqrFactor = 1.5, metric: Metric = "logprob",
           t_min: TMin = 1, t_max: TMax = None) -> None:
    """One self-contained HTML report (tables, notes, embedded figures) for one or more runs."""
    from harness.atomic import ensure_dir, write_text_atomic
    from analysis.report import build_report

    analyses = _analyse(run_dirs, _options(window, iqr_factor, metric, t_min, t_max))
    path = write_text_atomic(ensure_dir(out) / "report.html", build_report(analyses))
    print(path)


if __name__ == "__main__":
    app()
