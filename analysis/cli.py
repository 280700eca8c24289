"""`analysis`: the analysis command line. Each command is a thin wrapper in analysis/commands.py, imported only
when it runs (harness/commands.py)."""

from __future__ import annotations

from harness.commands import CommandRef, lazy_app

COMMANDS = (
    CommandRef(
        "fit", "analysis.commands:fit", "Effectivity, decay constant a, t* with its interval, retention, per group."
    ),
    CommandRef("plot", "analysis.commands:plot", "PNG and PDF figures of one run."),
    CommandRef("compare", "analysis.commands:compare", "Decay constants, t* and effectivity across runs."),
    CommandRef(
        "capacity",
        "analysis.commands:capacity",
        "Stored knowledge in bits, bits per parameter, memorization and overwriting of capacity runs.",
    ),
    CommandRef("report", "analysis.commands:report", "One self-contained HTML report for one or more runs."),
    CommandRef(
        "priming",
        "analysis.commands:priming",
        "Priming of each paragraph's keyword in unrelated contexts, and what predicts it.",
    ),
)

app = lazy_app(
    "analysis",
    "Analyse run directories: effectivity, retainability, decay fits, knowledge capacity, plots, reports.",
    lambda: COMMANDS,
)

if __name__ == "__main__":
    app()
