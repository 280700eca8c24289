"""The per-rank entry point that DeepSpeed's launcher starts: `python -m injection.engine.worker CONFIG ...`.

It accepts `injection run`'s options plus the `--local_rank` the launcher appends.
"""

from harness.errors import HarnessTyper
from injection.engine.cli import run

app = HarnessTyper(add_completion=False, no_args_is_help=True)
app.command()(run)

if __name__ == "__main__":
    app()
