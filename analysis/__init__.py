"""From probe logs to the study's numbers and figures: effectivity, retainability, decay fits, plots.

Library entry points (the CLI `analysis ...` wraps these):
    run = load_run("runs/demo")                   # run directory -> probe matrices
    analysis = analyse_run(run, FitOptions(rules="study-code", control_adjust=True))
    fits = fit_run(run, FitOptions(window=50))    # list[GroupFit], one per (scenario, kind)
    records = fit_records(run)                    # the "groups" objects of `analysis fit --json`
"""

from analysis.fit import FitOptions, GroupFit, RunAnalysis, analyse_run, fit_records, fit_run
from analysis.load import Run, load_run
from analysis.rules import PAPER, RULE_SETS, STUDY_CODE, Rules

__all__ = [
    "FitOptions",
    "GroupFit",
    "PAPER",
    "RULE_SETS",
    "Rules",
    "Run",
    "RunAnalysis",
    "STUDY_CODE",
    "analyse_run",
    "fit_records",
    "fit_run",
    "load_run",
]
