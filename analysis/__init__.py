"""From probe logs to the study's numbers and figures: effectivity, retainability, decay fits, plots.

Library entry points (the CLI `analysis ...` wraps these):
    run = load_run("runs/demo")                   # SPEC §7 run directory -> probe matrices
    fits = fit_run(run, FitOptions(window=50))    # list[GroupFit], one per (scenario, kind)
    records = fit_records(run)                    # exactly the objects of `analysis fit --json`
"""

from analysis.fit import FitOptions, GroupFit, RunAnalysis, analyse_run, fit_records, fit_run
from analysis.load import Run, load_run

__all__ = ["FitOptions", "GroupFit", "Run", "RunAnalysis", "analyse_run", "fit_records", "fit_run", "load_run"]
