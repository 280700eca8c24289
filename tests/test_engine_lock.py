"""One writer per run directory: a second `injection run` / `--resume` / `launch` on a directory in use is refused
with one line naming the other process; the lock of a process that was killed never blocks a resume."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from harness.locks import LOCK_FILE, check_directory_free, hold_directory, release_directory
from injection.cli import app
from tests.helpers.engine import write_tiny_checkpoint

REPO = Path(__file__).resolve().parents[1]
HOLD = (
    "import sys, time; from harness.locks import hold_directory; hold_directory(sys.argv[1], 'x'); "
    "print('held', flush=True); time.sleep(60)"
)


@pytest.fixture
def interrupted_run(tmp_path, monkeypatch):
    """A run directory left `interrupted` (config.yaml and manifest), resumable."""
    from injection.engine.config import load_config

    monkeypatch.setenv("INJECTION_CACHE", str(tmp_path / "cache"))
    write_tiny_checkpoint(tmp_path / "ck")
    settings = {
        "checkpoint": str(tmp_path / "ck"),
        "knowledge": "generate:4:1:0",
        "schedule": "smoke",
        "data": str(tmp_path / "c"),
        "total_steps": 30,
        "output_dir": str(tmp_path / "run"),
        "tokenizer": "olmo",
    }
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(settings))
    cfg = load_config(str(tmp_path / "exp.yaml"))
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(cfg.dump_yaml())
    manifest = {"config_hash": cfg.config_hash(), "status": "interrupted", "last_step": 7, "total_steps": 30}
    (run / "manifest.json").write_text(json.dumps(manifest))
    return run


@pytest.fixture
def holder(interrupted_run):
    """Another process that holds the run directory (as a running `injection run` would)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(interrupted_run)], stdout=subprocess.PIPE, env=env, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    yield proc
    proc.kill()
    proc.wait()


@pytest.mark.parametrize(
    "args",
    [["run", "--resume", "RUN"], ["run", "EXP"], ["launch", "--resume", "RUN", "--num-gpus", "1"]],
    ids=["run --resume", "run CONFIG", "launch --resume"],
)
def test_a_second_writer_is_refused_naming_the_first(interrupted_run, holder, args):
    exp = interrupted_run.parent / "exp.yaml"
    args = [str(interrupted_run) if a == "RUN" else str(exp) if a == "EXP" else a for a in args]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert f"is in use by process {holder.pid} on {socket.gethostname()}" in errors[0]
    assert "wait for that process to finish, or stop it" in errors[0]


def test_the_lock_of_a_killed_process_never_blocks(interrupted_run, holder):
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (interrupted_run / LOCK_FILE).is_file()  # what it left behind...
    check_directory_free(interrupted_run, "x")  # ...blocks no one
    hold_directory(interrupted_run, "x")
    try:
        assert json.loads((interrupted_run / LOCK_FILE).read_text())["pid"] == os.getpid()
    finally:
        release_directory(interrupted_run)
