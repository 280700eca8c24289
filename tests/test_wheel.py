"""The harness installed from a wheel, outside the checkout, finds everything it ships (catalog, DeepSpeed
configs, presets, schedules) and runs: `injection run smoke`, then `analysis fit` on the run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]  # a wheel built, installed and run


def test_wheel_installed_outside_the_checkout_runs_smoke_and_analysis(tmp_path):
    import shutil

    # built from a copy, so that the build's own files (build/, *.egg-info) never land in the checkout
    source = tmp_path / "source"
    shutil.copytree(
        REPO,
        source,
        symlinks=True,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "*.egg-info", "__pycache__", ".pytest_cache", "runs", "demo_out"
        ),
    )
    wheels = tmp_path / "wheels"
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheels),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    [wheel] = wheels.glob("knowledge_injection-*.whl")

    # A fresh environment that sees the dependencies already installed here, but not this checkout.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(site) / "_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,  # a PYTHONPATH of "." must not show pip this checkout as already installed
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    assert install.returncode == 0, install.stderr[-2000:]

    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    env.update(INJECTION_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    found = subprocess.run(
        [
            str(python),
            "-c",
            "import injection, analysis, harness; "
            "print(injection.__file__, injection.shipped_path('checkpoints.yaml').is_file())",
        ],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
    )
    assert found.returncode == 0, found.stderr[-3000:]
    where = found.stdout
    assert where.startswith(str(venv)) and where.strip().endswith("True"), where

    bin_dir = venv / "bin"
    run = subprocess.run(
        [
            str(bin_dir / "injection"),
            "run",
            "smoke",
            "--total-steps",
            "3",
            "--set",
            "schedule_overrides.count=1",
            "--set",
            "deepspeed_config=cpu",
            "-o",
            "run",
        ],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip() == "run"  # the run directory, alone on stdout
    fit = subprocess.run(
        [str(bin_dir / "analysis"), "fit", "run", "--json"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert fit.returncode == 0, fit.stderr[-3000:]
    assert json.loads(fit.stdout)
    listed = subprocess.run(
        [str(bin_dir / "injection"), "checkpoints", "list", "olmo-7b"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert listed.returncode == 0 and "113000" in listed.stdout, listed.stderr[-2000:]
