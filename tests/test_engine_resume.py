"""Kill a run at an arbitrary moment and resume it; run it on 2 ranks through DeepSpeed's launcher.
Both must give the probe log of an uninterrupted single-process run."""

import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from harness.rundir import read_table
from injection.engine.config import config_from_dict
from injection.engine.loop import run_training
from tests.helpers.engine import synthetic_inputs, synthetic_settings, write_tiny_checkpoint

REPO = Path(__file__).resolve().parents[1]
HELPER = REPO / "tests" / "helpers" / "engine.py"
KEY = ["step", "paragraph", "kind", "probe"]

pytestmark = pytest.mark.slow


def _config(tmp: Path, name: str) -> Path:
    cfg = synthetic_settings(
        tmp / "ck", total_steps=40, micro_batch=1, output_dir=tmp / name, checkpoint_interval=3, log_flush_steps=2
    )
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _clean_env() -> dict[str, str]:
    """No distributed variables from this test process (it may itself be rank 0 of a 1-process group)."""
    drop = {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])))
    return env


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("engine")
    write_tiny_checkpoint(tmp / "ck", with_optimizer=True)
    torch.set_num_threads(1)
    cfg = config_from_dict(yaml.safe_load(_config(tmp, "reference").read_text()))
    run_dir = run_training(cfg, synthetic_inputs(tmp / "ck"), progress=False)
    return (
        tmp,
        read_table(run_dir / "probes.parquet").sort_values(KEY, ignore_index=True),
        read_table(run_dir / "train_metrics.parquet"),
    )


def test_killed_then_resumed_run_equals_uninterrupted(reference):
    tmp, ref_probes, ref_metrics = reference
    cfg = _config(tmp, "killed")
    run_dir = tmp / "killed"
    proc = subprocess.Popen(
        [sys.executable, str(HELPER), str(cfg)],
        env=_clean_env(),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    # kill at an arbitrary moment: once a randomly chosen number of probe-log parts exist (the first
    # checkpoint is at step 3, parts come every 2 steps), plus a random few milliseconds
    rng = random.Random()
    target_parts = rng.randint(3, 16)
    deadline = time.time() + 120

    def parts() -> int:
        return len(list((run_dir / "probes.parquet").glob("part-*")))

    while parts() < target_parts:
        assert proc.poll() is None, "training process ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.002)
    time.sleep(rng.uniform(0.0, 0.05))
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    manifest = yaml.safe_load((run_dir / "manifest.json").read_text())
    killed_mid_run = manifest["status"] == "running"
    print(f"killed after {parts()} probe-log parts (target {target_parts})")

    done = subprocess.run(
        [sys.executable, str(HELPER), str(cfg), "--resume"],
        env=_clean_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    probes = read_table(run_dir / "probes.parquet").sort_values(KEY, ignore_index=True)
    pd.testing.assert_frame_equal(probes, ref_probes)  # exact: nothing lost, duplicated or changed
    metrics = read_table(run_dir / "train_metrics.parquet")
    timings = ["tokens_per_s", "eval_s", "max_mem_gib"]  # wall-clock and memory figures differ run to run
    pd.testing.assert_frame_equal(metrics.drop(columns=timings), ref_metrics.drop(columns=timings))
    assert not any(p.name.endswith(".tmp") for p in (run_dir / "probes.parquet").iterdir())
    assert killed_mid_run, "the run finished before it was killed: nothing was resumed"


def test_two_ranks_through_the_deepspeed_launcher_equal_one(reference):
    tmp, ref_probes, ref_metrics = reference
    cfg = _config(tmp, "two_ranks")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    deepspeed = Path(sys.executable).parent / "deepspeed"
    done = subprocess.run(
        [str(deepspeed), "--num_gpus", "2", "--master_port", str(port), str(HELPER), str(cfg)],
        env=_clean_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    probes = read_table(tmp / "two_ranks" / "probes.parquet").sort_values(KEY, ignore_index=True)
    pd.testing.assert_frame_equal(probes[KEY + ["scenario"]], ref_probes[KEY + ["scenario"]])
    np.testing.assert_allclose(probes.logprob, ref_probes.logprob, atol=1e-4)
    np.testing.assert_allclose(probes.logprob_sum, ref_probes.logprob_sum, atol=3e-4)
    assert (probes.exact_match == ref_probes.exact_match).mean() > 0.99
    manifest = yaml.safe_load((tmp / "two_ranks" / "manifest.json").read_text())
    assert manifest["world_size"] == 2
    metrics = read_table(tmp / "two_ranks" / "train_metrics.parquet")
    np.testing.assert_allclose(metrics.loss, ref_metrics.loss, atol=1e-4)
