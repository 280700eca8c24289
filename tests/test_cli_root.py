from typer.testing import CliRunner

from injection.cli import app
from harness.errors import HarnessTyper, UserError


def test_help_lists_every_command():
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for name in ["knowledge", "checkpoints", "pull", "data", "plan", "run", "launch", "demo"]:
        assert name in result.output


def test_user_error_exits_2_with_one_line():
    demo_app = HarnessTyper()

    @demo_app.command()
    def fail() -> None:
        raise UserError("file x.json, item 3, field 'mem_target': empty")

    @demo_app.command()
    def ok() -> None:
        pass

    result = CliRunner().invoke(demo_app, ["fail"])
    assert result.exit_code == 2
    assert "item 3" in result.output and "Traceback" not in result.output
