import pytest
from typer.testing import CliRunner

from harness.errors import HarnessTyper, UserError
from injection.cli import app


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


def test_version_and_short_help():
    from analysis.cli import app as analysis_app

    for program, application in (("injection", app), ("analysis", analysis_app)):
        result = CliRunner().invoke(application, ["--version"])
        assert result.exit_code == 0 and result.stdout.startswith(f"{program} ")
        assert CliRunner().invoke(application, ["-h"]).exit_code == 0
    assert "Usage" in CliRunner().invoke(app, ["run", "-h"]).output


@pytest.mark.slow
def test_results_alone_on_stdout_in_a_real_process(tmp_path):
    """`DIR=$(injection pull tiny@0 -o X)` captures the directory and nothing else: DeepSpeed's and the
    harness's own messages go to stderr."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "INJECTION_CACHE": str(tmp_path / "cache")}
    done = subprocess.run(
        [sys.executable, "-m", "injection", "pull", "tiny@0", "-o", str(tmp_path / "t0")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines() == [str(tmp_path / "t0")]


def test_os_errors_about_the_users_files_are_one_line():
    import errno

    demo_app = HarnessTyper()

    @demo_app.command()
    def full() -> None:
        raise OSError(errno.ENOSPC, "No space left on device", "/data/run/part.parquet")

    @demo_app.command()
    def other() -> None:
        pass

    result = CliRunner().invoke(demo_app, ["full"])
    assert (
        result.exit_code == 2 and result.stderr.strip() == "error: /data/run/part.parquet: no space left on the device"
    )
