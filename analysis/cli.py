"""`analysis fit|plot|compare|capacity|report|priming`: thin wrappers over analysis.fit, analysis.capacity,
analysis.plots, analysis.report and analysis.export. Results go to stdout; warnings, notes on files written and
progress to stderr."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from harness.errors import HarnessTyper, UserError, add_version_option
from harness.outputs import OwnedDir

app = HarnessTyper(
    help="Analyse run directories: effectivity, retainability, decay fits, knowledge capacity, plots, reports."
)
add_version_option(app, "analysis")

RunDir = Annotated[Path, typer.Argument(help="Run directory: probes.parquet, injections.parquet, manifest.json.")]
RunDirs = Annotated[list[Path], typer.Argument(help="One or more run directories.")]
Rules = Annotated[
    str,
    typer.Option(
        help="Rule set: 'paper' (the study's text) or 'study-code' (the study's public analysis code); "
        "the README lists where they differ."
    ),
]
Scale = Annotated[
    str,
    typer.Option(
        help="'logprob': work on ℓ; 'perplexity': work on −exp(−ℓ) (perplexity negated, so higher is still "
        "better), as the study's scripts do by default."
    ),
]
ControlAdjust = Annotated[
    bool,
    typer.Option(
        "--control-adjust/--no-control-adjust",
        help="Subtract the mean drift of the never-injected control probes (scenario 'none') of the same kind, "
        "at every step, before effectivity and retainability; reports show raw and adjusted.",
    ),
]
TwinAdjust = Annotated[
    bool,
    typer.Option(
        "--twin-adjust/--no-twin-adjust",
        help="Measure every probe against its own twin where the run has one (manifest.json 'twin', or "
        "--baseline): Δℓ = ℓ − ℓ of the twin; reports show raw, control-adjusted and twin-adjusted.",
    ),
]
Baseline = Annotated[
    str | None,
    typer.Option(help="The twin run directory to measure against (default: the twin the run's manifest names)."),
]
Window = Annotated[
    int | None,
    typer.Option(
        help="Steps after an encounter searched for the local acquisition maximum "
        "(default: the window the run recorded in manifest.json, else 50)."
    ),
]
IqrFactor = Annotated[
    float | None,
    typer.Option(
        help="Interquartile-rule factor for outlier removal (default: the rule set's, paper 1.5, study-code 2.0)."
    ),
]
Metric = Annotated[str, typer.Option(help="Probe-log column used as ℓ: logprob, logprob_sum or first_logprob.")]
TMin = Annotated[int, typer.Option(help="First t of the decay fit.")]
TMax = Annotated[
    int | None,
    typer.Option(
        help="Last t of the decay fit (default: paper rules: the largest t every probe of the group has; "
        "study-code rules: one range for every group)."
    ),
]
Levels = Annotated[
    str, typer.Option(help="Fractions of the gain: report the t at which mean R falls to each (comma-separated).")
]
At = Annotated[str, typer.Option(help="Report mean R at these t (comma-separated steps).")]
Bootstrap = Annotated[
    int, typer.Option(help="Interval of t* from this many resamples of each group's probes (0: delta method).")
]
CiLevel = Annotated[float, typer.Option(help="Confidence level of the interval of t*.")]
Curves = Annotated[
    Path | None,
    typer.Option(
        help="Also write mean R(t), its standard error and probe counts per (run, scenario, kind, t) to this "
        ".parquet file."
    ),
]
Out = Annotated[Path, typer.Option("--out", "-o", help="Output directory (created if needed).")]
JsonOutput = Annotated[bool, typer.Option("--json", help='Print JSON ({"options", ..., "groups"}) instead of tables.')]


def _floats(text: str, option: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UserError(f"{option} {text!r}: expected comma-separated numbers, e.g. 0.8,0.5,0.3") from None
    if not values:
        raise UserError(f"{option} {text!r}: expected at least one number")
    return values


def _ints(text: str, option: str) -> tuple[int, ...]:
    values = _floats(text, option)
    if any(v != int(v) for v in values):
        raise UserError(f"{option} {text!r}: expected whole numbers of steps, e.g. 100,1000")
    return tuple(int(v) for v in values)


def _options(
    rules: str,
    scale: str,
    control_adjust: bool,
    window: int | None,
    iqr_factor: float | None,
    metric: str,
    t_min: int,
    t_max: int | None,
    retention_levels: str,
    at: str,
    bootstrap: int,
    ci_level: float,
    twin_adjust: bool = True,
    baseline: str | None = None,
):
    from analysis.fit import FitOptions

    levels = _floats(retention_levels, "--retention-levels")
    bad = [v for v in levels if not 0 < v < 1]
    if bad:
        raise UserError(f"--retention-levels {retention_levels!r}: {bad[0]:g} is not a fraction between 0 and 1")
    steps = _ints(at, "--at")
    if any(t < 1 for t in steps):
        raise UserError(f"--at {at!r}: every t must be at least 1")
    option_names = {
        "rules": "--rules",
        "scale": "--scale",
        "window": "--window",
        "iqr_factor": "--iqr-factor",
        "metric": "--metric",
        "t_min": "--t-min",
        "t_max": "--t-max",
        "bootstrap": "--bootstrap",
        "ci_level": "--ci-level",
        "baseline": "--baseline",
    }
    options = FitOptions(
        rules=rules,
        scale=scale,
        control_adjust=control_adjust,
        window=window,
        iqr_factor=iqr_factor,
        metric=metric,
        t_min=t_min,
        t_max=t_max,
        retention_levels=levels,
        at=steps,
        bootstrap=bootstrap,
        ci_level=ci_level,
        twin_adjust=twin_adjust,
        baseline=baseline,
    )
    try:
        options.validate()
    except UserError as err:
        # Name the command-line option rather than the library field.
        text = str(err)
        for field_name, flag in option_names.items():
            text = text.replace(f"option {field_name}:", f"{flag}:")
        raise UserError(text) from None
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
    from analysis.report import fit_notes

    for note in fit_notes(fits):
        console.print(f"[yellow]note:[/yellow] {prefix}{note}", highlight=False, soft_wrap=True)


def _write_curves(curves: Path, labels: list[str], analyses) -> None:
    from analysis.export import curves_table, write_curves

    path = write_curves(curves, [curves_table(label, a) for label, a in zip(labels, analyses)])
    print(f"curves: {path}", file=sys.stderr)


@app.command()
def fit(
    run_dir: RunDir,
    json_output: JsonOutput = False,
    rules: Rules = "paper",
    scale: Scale = "logprob",
    control_adjust: ControlAdjust = False,
    twin_adjust: TwinAdjust = True,
    window: Window = None,
    iqr_factor: IqrFactor = None,
    metric: Metric = "logprob",
    t_min: TMin = 1,
    t_max: TMax = None,
    retention_levels: Levels = "0.8,0.5,0.3",
    at: At = "100,1000",
    bootstrap: Bootstrap = 0,
    ci_level: CiLevel = 0.95,
    curves: Curves = None,
    baseline: Baseline = None,
) -> None:
    """Effectivity, decay constant a (± se, R²), t* with its interval, retention levels, for every group."""
    from analysis.export import check_curves_path, fit_document
    from analysis.report import (
        rich_adjusted_table,
        rich_control_table,
        rich_encounter_table,
        rich_retention_table,
        rich_table,
    )

    options = _options(
        rules,
        scale,
        control_adjust,
        window,
        iqr_factor,
        metric,
        t_min,
        t_max,
        retention_levels,
        at,
        bootstrap,
        ci_level,
        twin_adjust,
        baseline,
    )
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


@app.command()
def plot(
    run_dir: RunDir,
    out: Out,
    rules: Rules = "paper",
    scale: Scale = "logprob",
    control_adjust: ControlAdjust = False,
    twin_adjust: TwinAdjust = True,
    window: Window = None,
    iqr_factor: IqrFactor = None,
    metric: Metric = "logprob",
    t_min: TMin = 1,
    t_max: TMax = None,
    retention_levels: Levels = "0.8,0.5,0.3",
    at: At = "100,1000",
    bootstrap: Bootstrap = 0,
    ci_level: CiLevel = 0.95,
    baseline: Baseline = None,
) -> None:
    """PNG and PDF figures: Δℓ trajectories (also in the study's Figure 2 layout), mean R(t) with the fits and
    t*, effectivity by encounter, exact match, the control probes' drift."""
    from analysis.plots import RUN_FIGURES, figure_files, plot_run

    OwnedDir(out).claim(figure_files(RUN_FIGURES))  # before any work: nothing the user made is replaced
    options = _options(
        rules,
        scale,
        control_adjust,
        window,
        iqr_factor,
        metric,
        t_min,
        t_max,
        retention_levels,
        at,
        bootstrap,
        ci_level,
        twin_adjust,
        baseline,
    )
    [analysis] = _analyse([run_dir], options)
    for path in plot_run(analysis, out):
        print(path)


@app.command()
def compare(
    run_dirs: RunDirs,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write compare.json and the figure here.")] = None,
    json_output: JsonOutput = False,
    rules: Rules = "paper",
    scale: Scale = "logprob",
    control_adjust: ControlAdjust = False,
    twin_adjust: TwinAdjust = True,
    window: Window = None,
    iqr_factor: IqrFactor = None,
    metric: Metric = "logprob",
    t_min: TMin = 1,
    t_max: TMax = None,
    retention_levels: Levels = "0.8,0.5,0.3",
    at: At = "100,1000",
    bootstrap: Bootstrap = 0,
    ci_level: CiLevel = 0.95,
    curves: Curves = None,
) -> None:
    """Decay constants, t* with intervals and effectivity across runs (stages, model sizes, batch sizes)."""
    from analysis.export import check_curves_path, compare_document
    from analysis.plots import compare_figure, figure_files, save_figure
    from analysis.report import compare_table, unique_labels

    if out is not None:
        OwnedDir(out).claim(["compare.json", *figure_files(["compare"])])

    options = _options(
        rules,
        scale,
        control_adjust,
        window,
        iqr_factor,
        metric,
        t_min,
        t_max,
        retention_levels,
        at,
        bootstrap,
        ci_level,
        twin_adjust,
    )
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


@app.command()
def capacity(
    run_dirs: RunDirs,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")] = False,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write capacity.json and the figures here.")] = None,
    kind: Annotated[
        str, typer.Option(help="Probes to measure: mem (the biography's sentences) or sem (a held-out wording).")
    ] = "mem",
    at_exposures: Annotated[
        float | None,
        typer.Option(
            help="Compare runs at the logged step nearest this many exposures [default: each run's last step]."
        ),
    ] = None,
    iqr_factor: IqrFactor = 1.5,
) -> None:
    """Stored knowledge in bits, bits per parameter, exact-match memorization and overwriting of capacity runs."""
    from analysis.capacity import CapacityOptions, analyse_capacity
    from analysis.load import load_run
    from analysis.plots import CAPACITY_FIGURES, figure_files
    from analysis.report import print_capacity

    if out is not None:
        OwnedDir(out).claim(["capacity.json", *figure_files(CAPACITY_FIGURES)])
    options = CapacityOptions(kind=kind, at_exposures=at_exposures, iqr_factor=iqr_factor)
    options.validate()
    analysis = analyse_capacity([load_run(p) for p in run_dirs], options)
    record = analysis.record()
    if json_output:
        print(json.dumps(record, indent=2, allow_nan=False))
    else:
        print_capacity(analysis, _console())
    if out is not None:
        from analysis.plots import plot_capacity

        OwnedDir(out).write("capacity.json", json.dumps(record, indent=2, allow_nan=False) + "\n")
        for path in plot_capacity(analysis, out):
            print(path, file=sys.stderr)


@app.command()
def report(
    run_dirs: RunDirs,
    out: Out,
    rules: Rules = "paper",
    scale: Scale = "logprob",
    control_adjust: ControlAdjust = False,
    twin_adjust: TwinAdjust = True,
    window: Window = None,
    iqr_factor: IqrFactor = None,
    metric: Metric = "logprob",
    t_min: TMin = 1,
    t_max: TMax = None,
    retention_levels: Levels = "0.8,0.5,0.3",
    at: At = "100,1000",
    bootstrap: Bootstrap = 0,
    ci_level: CiLevel = 0.95,
    baseline: Baseline = None,
) -> None:
    """One self-contained HTML report (tables, notes, embedded figures) for one or more runs."""
    from analysis.report import REPORT, build_report

    OwnedDir(out).claim([REPORT])
    options = _options(
        rules,
        scale,
        control_adjust,
        window,
        iqr_factor,
        metric,
        t_min,
        t_max,
        retention_levels,
        at,
        bootstrap,
        ci_level,
        twin_adjust,
        baseline,
    )
    analyses = _analyse(run_dirs, options)
    path = OwnedDir(out).write(REPORT, build_report(analyses))
    print(path)


@app.command()
def priming(
    run_dir: RunDir,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")] = False,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Write priming.json, priming_scores.parquet and the priming figure here."),
    ] = None,
    window: Window = None,
) -> None:
    """Priming of each paragraph's keyword in unrelated contexts (probes of kind `prime`) over the run, and how its
    probability in its own context before learning predicts it (Sun et al. 2025)."""
    import pyarrow.parquet as pq

    from analysis.load import load_run
    from analysis.plots import figure_files, priming_figure, save_figure
    from analysis.priming import PRIMING_JSON, SCORES_FILE, priming_analysis, scores_table
    from analysis.report import print_priming

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


if __name__ == "__main__":
    app()
