"""`injection`: the harness's command line. Each command is a thin wrapper over one library function (or a
recipe, `injection/recipes/`), imported only when it runs (harness/commands.py)."""

from __future__ import annotations

from harness.commands import CommandRef, lazy_app
from injection.recipes import recipe_commands

COMMANDS = (
    CommandRef("knowledge", "fictional_knowledge.cli:app", "Validate and generate fictional knowledge sets."),
    CommandRef(
        "checkpoints",
        "injection.checkpoints.cli:checkpoints_app",
        "List and show the catalog of OLMo intermediate checkpoints.",
    ),
    CommandRef(
        "pull",
        "injection.checkpoints.cli:pull",
        "Fetch a checkpoint (FAMILY@STEP|STAGE) and convert it into a resumable HF directory.",
    ),
    CommandRef(
        "data",
        "injection.data.cli:data_app",
        "Rebuild the original data order, extract step windows, build local corpora.",
    ),
    CommandRef("plan", "injection.data.cli:plan", "Print the injection plan of a schedule over a knowledge set."),
    CommandRef(
        "run",
        "injection.engine.cli:run",
        "Continue pretraining with injections and write the run directory (probe log, injections, manifest).",
    ),
    CommandRef(
        "launch",
        "injection.engine.cli:launch",
        "Start `injection run` on many GPUs or nodes through DeepSpeed's launcher.",
    ),
)

app = lazy_app(
    "injection",
    "Continue OLMo pretraining from an intermediate checkpoint with fictional knowledge spliced into the original "
    "batches, logging every probe's log-probability after every update.",
    lambda: [*COMMANDS, *recipe_commands()],
)

if __name__ == "__main__":
    app()
