"""`injection`: the harness's command line. Each command is a thin wrapper over one library function."""

from __future__ import annotations

from fictional_knowledge.cli import app as knowledge_app
from harness.errors import HarnessTyper, add_version_option
from injection.capacity import capacity
from injection.checkpoints.cli import checkpoints_app, pull
from injection.data.cli import data_app, plan
from injection.demo import demo
from injection.engine.cli import launch, run

app = HarnessTyper(
    help="Continue OLMo pretraining from an intermediate checkpoint with fictional knowledge spliced into "
    "the original batches, logging every probe's log-probability after every update."
)
add_version_option(app, "injection")
app.add_typer(knowledge_app, name="knowledge", help="Validate and generate fictional knowledge sets.")
app.add_typer(checkpoints_app, name="checkpoints", help="List and show the catalog of OLMo intermediate checkpoints.")
app.command("pull", help="Fetch a checkpoint (FAMILY@STEP|STAGE) and convert it into a resumable HF directory.")(pull)
app.add_typer(data_app, name="data", help="Rebuild the original data order, extract step windows, build local corpora.")
app.command("plan", help="Print the injection plan of a schedule over a knowledge set.")(plan)
app.command(
    "run", help="Continue pretraining with injections and write the run directory (probe log, injections, manifest)."
)(run)
app.command("launch", help="Start `injection run` on many GPUs or nodes through DeepSpeed's launcher.")(launch)
app.command("demo", help="The whole experiment offline on one CPU: corpus, tiny model, injections, analysis.")(demo)
app.command(
    "capacity",
    help="Knowledge capacity: models of several sizes trained from scratch on generated "
    "biographies; stored bits against parameters, memorization, overwriting.",
)(capacity)

if __name__ == "__main__":
    app()
