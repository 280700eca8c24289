"""`injection run smoke` end to end with the real pieces: tiny checkpoint, corpus and knowledge built into
the cache on first use, the smoke schedule, the run directory read back."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from injection.cli import app
from harness.rundir import read_table

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def _env(cache: Path) -> dict[str, str]:
    drop = {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(INJECTION_CACHE=str(cache), OMP_NUM_THREADS="1")
    return env


#: 4 updates with one encounter per group (steps 0, 1, 2) keep the tests short; the preset runs 30
SHORT = ["--total-steps", "4", "--set", "schedule_overrides.count=1", "--set", "checkpoint_interval=2"]


@pytest.fixture(scope="module")
def smoke_run(cache, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "smoke"
    done = subprocess.run([sys.executable, "-m", "injection", "run", "smoke", *SHORT, "-o", str(run_dir)],
                          cwd=REPO, env=_env(cache), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "FRESH AdamW moments" in done.stderr  # tiny@0 has no optimizer state
    return run_dir


def test_smoke_preset_runs_end_to_end(smoke_run):
    run_dir = smoke_run
    probes = read_table(run_dir / "probes.parquet")
    assert sorted(probes.step.unique()) == [0, 1, 2, 3, 4]
    assert len(probes) == 5 * 6 * 15  # 6 generated paragraphs × 15 probes
    assert set(probes.scenario) == {"paraphrase", "duplicate", "once"}
    inj = read_table(run_dir / "injections.parquet")
    assert sorted(zip(inj.step, inj.paragraph)) == [(0, 0), (0, 1), (1, 2), (1, 3), (2, 4), (2, 5)]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["tokens_per_step"] == 4 * 256 and manifest["status"] == "complete"
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("step*")) == ["step2", "step4"]
    # the same probes are learnt: the injected paragraphs' probes gain log-probability
    first = probes[probes.step == 0].logprob.mean()
    assert probes[probes.step == 4].logprob.mean() > first


def test_schedule_that_does_not_fit_the_run(cache, tmp_path, monkeypatch):
    monkeypatch.setenv("INJECTION_CACHE", str(cache))
    result = CliRunner().invoke(app, ["run", "smoke", "--total-steps", "5", "-o", str(tmp_path / "r")])
    assert result.exit_code == 2, result.output
    assert "beyond the run" in result.output
    assert not (tmp_path / "r" / "probes.parquet").exists()


def test_launch_on_two_cpu_ranks_matches_one_process(cache, smoke_run, tmp_path):
    """`injection launch` → DeepSpeed's launcher → `python -m injection.engine.worker` on 2 ranks (gloo)."""
    import socket

    import numpy as np

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run_dir = tmp_path / "two"
    cmd = [sys.executable, "-m", "injection", "launch", "smoke", "--num-gpus", "2", "--master-port", str(port),
           *SHORT[2:], "--set", "total_steps=4", "--set", f"output_dir={run_dir}"]
    done = subprocess.run(cmd, cwd=REPO, env=_env(cache), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "--module injection.engine.worker smoke" in done.stdout
    key = ["step", "paragraph", "kind", "probe"]
    one = read_table(smoke_run / "probes.parquet").sort_values(key, ignore_index=True)
    two = read_table(run_dir / "probes.parquet").sort_values(key, ignore_index=True)
    assert json.loads((run_dir / "manifest.json").read_text())["world_size"] == 2
    assert (one[key] == two[key]).all().all()
    np.testing.assert_allclose(two.logprob, one.logprob, atol=1e-4)


#: sha256 of the smoke run's probe log (the run above). The engine's reorganisation into plan / batches / zero /
#: run_state / hooks / loop left it bit-identical (245dde1f…157375 before and after); it then changed once, on
#: purpose, when the loss took OLMo's normalisation (summed over rows × L instead of the mean over L − 1
#: positions per row). Any other change to it means the engine's numbers changed.
PINNED_SMOKE_LOG = "3772bc7989681c2681ccfc84429c9c48473495e52157e44d52ebe5b6c3c04e8f"


def probe_log_hash(run_dir) -> str:
    import hashlib

    import pandas as pd

    df = read_table(run_dir / "probes.parquet").sort_values(["step", "paragraph", "kind", "probe"]).reset_index(drop=True)
    cols = ["step", "paragraph", "scenario", "kind", "probe", "logprob", "logprob_sum", "first_logprob",
            "exact_match", "first_rank"]
    return hashlib.sha256(pd.util.hash_pandas_object(df[cols], index=False).values.tobytes()).hexdigest()


def test_smoke_probe_log_is_bit_identical_to_the_pinned_one(smoke_run):
    assert probe_log_hash(smoke_run) == PINNED_SMOKE_LOG
