"""Every command, whatever it is doing: Ctrl-C (SIGINT) and SIGTERM end it with one line and the signal's exit code,
never a traceback, and leave nothing half-written; a run stopped inside the demo names the command that continues it.
Output degrades on a terminal that cannot show every character (an ASCII locale) instead of crashing."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.processes import child_env

REPO = Path(__file__).resolve().parents[1]


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = child_env()
    env.update(INJECTION_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)
    return env


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_ends_a_command_with_one_line(tmp_path, sig):
    """`knowledge generate` of a large set (a minute of work) stopped a moment after it started."""
    out = tmp_path / "k.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "injection", "knowledge", "generate", "--out", str(out), "--paragraphs", "50000"],
        cwd=REPO,
        env=_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(4)  # past the imports, into the generator
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, stderr
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: interrupted ({signal.Signals(sig).name}) before the command finished; outputs are written whole or "
        "not at all, so nothing half-written is left: run the command again"
    ], stderr
    assert not out.exists()
    assert not list(tmp_path.glob(".*.tmp"))


def test_output_degrades_on_an_ascii_terminal(tmp_path):
    from tests.helpers.planted import PlantedScenario, write_planted_run

    write_planted_run(tmp_path / "run", [PlantedScenario("paraphrase", [0, 1], [0, 20], [1.0, 0.5], 0.3)], n_steps=80)
    done = subprocess.run(
        [sys.executable, "-m", "analysis", "fit", str(tmp_path / "run")],
        cwd=REPO,
        env=_env(tmp_path, PYTHONIOENCODING="ascii"),
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr.decode("ascii", "replace")[-2000:]
    text = done.stdout.decode("ascii")  # every byte is ASCII
    assert "+/- se" in text and "R^2" in text  # "±" and "²" as an ASCII terminal can show them


@pytest.mark.slow
def test_sigterm_during_the_demo_names_the_command_that_continues(tmp_path):
    out = tmp_path / "demo"
    command = [sys.executable, "-m", "injection", "demo", "--quick", "-o", str(out)]
    proc = subprocess.Popen(
        command, cwd=REPO, env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if line.startswith("step "):  # the pretraining run is under way
            proc.send_signal(signal.SIGTERM)
            break
    _, rest = proc.communicate(timeout=300)
    stderr = "".join(lines) + rest
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "interrupted (SIGTERM)" in errors[0], stderr[-3000:]
    assert f"or run `injection demo --quick -o {out}` again, which continues from there" in errors[0]


@pytest.mark.slow
def test_a_demo_output_whose_run_manifest_was_cut_short_says_what_to_do(tmp_path):
    """A demo directory left by a disk that filled: the next `injection demo` names the damaged file and the way on."""
    out = tmp_path / "demo"
    manifest = out / "runs" / "early" / "manifest.json"
    manifest.parent.mkdir(parents=True)
    manifest.write_text('{"format": "injection-run/1", "status": "runn')
    done = subprocess.run(
        [sys.executable, "-m", "injection", "demo", "--quick", "-o", str(out)],
        cwd=REPO,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {manifest}: malformed JSON"), done.stderr[-3000:]
    assert f"move {manifest.parent} away and run the command again" in errors[0]
