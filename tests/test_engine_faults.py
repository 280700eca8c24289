"""Faults during a run: a non-finite loss (stop or skip), a full disk while saving, SIGTERM. Each leaves a run
directory that says what happened and one command that continues it."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from harness.errors import UserError
from harness.rundir import read_table
from injection.engine.hooks import Hook
from injection.engine.loop import run_training
from injection.engine.run_state import complete_checkpoints
from tests.helpers.engine import synthetic_config, synthetic_inputs, write_tiny_checkpoint

REPO = Path(__file__).resolve().parents[1]


def _cfg(tmp_path, **kw):
    base = dict(total_steps=5, micro_batch=2, output_dir=tmp_path / "run", checkpoint_interval=2, log_flush_steps=1)
    return synthetic_config(tmp_path / "ck", **{**base, **kw})


class PoisonLoss(Hook):
    """Makes the loss of the first micro-batch of update `update` NaN (a forward hook on the model)."""

    def __init__(self, update: int) -> None:
        self.update, self.calls = update, 0

    def on_start(self, run, k0):
        micro_per_update = run.plan.accumulation

        def poison(module, args, kwargs, output):
            if "labels" in kwargs:  # training forwards (probe evaluation runs the base model)
                self.calls += 1
                if self.calls == self.update * micro_per_update + 1:
                    output.loss = output.loss * float("nan")
            return output

        run.engine.module.register_forward_hook(poison, with_kwargs=True)


def test_a_non_finite_loss_stops_the_run_naming_the_step(tmp_path):
    torch.set_num_threads(1)
    ck = write_tiny_checkpoint(tmp_path / "ck", with_optimizer=True)
    with pytest.raises(UserError, match=r"non-finite loss at update 2 \(run step 3\).*--set nonfinite=skip"):
        run_training(_cfg(tmp_path), synthetic_inputs(ck), progress=False, hooks=[PoisonLoss(update=2)])
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["status"] == "diverged" and manifest["stop"] == {"step": 3, "reason": "non-finite loss"}
    assert [k for k, _ in complete_checkpoints(tmp_path / "run")] == [2]  # intact, resumable


def test_a_skipped_update_leaves_the_weights_unchanged_and_is_counted(tmp_path):
    torch.set_num_threads(1)
    ck = write_tiny_checkpoint(tmp_path / "ck", with_optimizer=True)
    run_dir = run_training(
        _cfg(tmp_path, nonfinite="skip"), synthetic_inputs(ck), progress=False, hooks=[PoisonLoss(update=2)]
    )
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["skipped_updates"] == [3]
    metrics = read_table(run_dir / "train_metrics.parquet").set_index("step")
    assert bool(metrics.loc[3, "skipped"]) and metrics.loc[3, "lr"] == 0.0 and not metrics.loc[4, "skipped"]
    probes = read_table(run_dir / "probes.parquet")
    at = {s: probes[probes.step == s].sort_values(["paragraph", "kind", "probe"]).logprob.to_numpy() for s in (2, 3, 4)}
    np.testing.assert_array_equal(at[3], at[2])  # the skipped update did not move the model
    assert not np.array_equal(at[4], at[3])


def test_a_full_disk_while_saving_leaves_no_checkpoint_that_looks_complete(tmp_path, monkeypatch):
    import injection.engine.run_state as run_state
    from harness.errors import describe_os_error

    torch.set_num_threads(1)
    ck = write_tiny_checkpoint(tmp_path / "ck", with_optimizer=True)
    real_save = torch.save

    def save(obj, path, *args, **kwargs):
        if "step4" in str(path) and "rng" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(run_state.torch, "save", save)
    with pytest.raises(OSError) as err:
        run_training(_cfg(tmp_path), synthetic_inputs(ck), progress=False)
    assert describe_os_error(err.value).endswith("no space left on the device")
    run = tmp_path / "run"
    assert [k for k, _ in run_state.complete_checkpoints(run)] == [2] and not (run / "checkpoints" / "step4").exists()
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "No space left" in manifest["stop"]["reason"]
    monkeypatch.setattr(run_state.torch, "save", real_save)
    resumed = run_training(_cfg(tmp_path), synthetic_inputs(ck), resume=True, progress=False)
    assert json.loads((resumed / "manifest.json").read_text())["status"] == "complete"


def _short_knowledge(path: Path) -> Path:
    names = ["Quorvel", "Tasmira", "Belvanor", "Drisket", "Homvarin", "Pelquist"]
    path.write_text(
        json.dumps(
            [
                {
                    "train_context": f"{n} was born in Vantrel.",
                    "mem_input": [f"{n} was born in"],
                    "mem_target": ["Vantrel"],
                    "gen_input": [f"The birthplace of {n} is"],
                    "gen_target": ["Vantrel"],
                    "hard_gen_input": [f"{n} came from"],
                    "hard_gen_target": ["Vantrel"],
                    "paraphrases": [f"{n} is from Vantrel."],
                }
                for n in names
            ]
        )
    )
    return path


@pytest.mark.slow
def test_sigterm_stops_at_a_clean_point_and_resume_continues_exactly(tmp_path):
    """`injection run` under SIGTERM: the update in flight finishes, a checkpoint is saved, the manifest says
    `interrupted`, the last line names the resume command; resuming gives the uninterrupted run's probe log."""
    from tests.helpers.corpus import make_corpus

    corpus = make_corpus(tmp_path / "corpus", seq_len=64, file_tokens=(40_000,), vocab=50_000)
    cfg = {
        "checkpoint": "tiny@0+L64",
        "knowledge": str(_short_knowledge(tmp_path / "k.json")),
        "schedule": "smoke",
        "data": str(corpus),
        "total_steps": 30,
        "global_batch": 4,
        "micro_batch": 2,
        "checkpoint_interval": 100,
        "log_interval": 1,
        "log_flush_steps": 5,
    }
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(cfg))
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    env.update(INJECTION_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    command = [sys.executable, "-m", "injection", "run", str(tmp_path / "exp.yaml")]

    reference = subprocess.run(
        [*command, "-o", str(tmp_path / "reference")], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert reference.returncode == 0, reference.stderr[-3000:]

    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        [*command, "-o", str(run_dir)], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    lines = []
    deadline = time.time() + 300
    for line in proc.stderr:
        lines.append(line)
        if line.startswith("step 5/"):
            proc.send_signal(signal.SIGTERM)
            break
        assert time.time() < deadline
    _, rest = proc.communicate(timeout=300)
    lines += rest.splitlines()
    assert proc.returncode == 128 + signal.SIGTERM, "".join(lines)[-3000:]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and "interrupted (SIGTERM) after step" in errors[0]
    assert f"injection run --resume {run_dir}" in errors[0]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    stopped = manifest["last_step"]
    assert manifest["status"] == "interrupted" and 5 <= stopped < 30
    assert (run_dir / "checkpoints" / f"step{stopped}").is_dir()

    resumed = subprocess.run(
        [sys.executable, "-m", "injection", "run", "--resume", str(run_dir)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from the checkpoint after step {stopped}" in resumed.stderr
    key = ["step", "paragraph", "kind", "probe"]
    ours = read_table(run_dir / "probes.parquet").sort_values(key, ignore_index=True)
    expected = read_table(tmp_path / "reference" / "probes.parquet").sort_values(key, ignore_index=True)
    assert ours[key].equals(expected[key])
    np.testing.assert_array_equal(ours.logprob.to_numpy(), expected.logprob.to_numpy())


class PoisonGradients(Hook):
    """Makes every gradient of update `update` infinite while the loss stays finite (a backward hook)."""

    def __init__(self, update: int) -> None:
        self.update, self.calls = update, 0

    def on_start(self, run, k0):
        self.k0, self.micro = k0, run.plan.accumulation
        param = next(run.engine.module.parameters())

        def poison(grad):
            self.calls += 1
            return grad * float("inf") if (self.calls - 1) // self.micro == self.update - self.k0 else grad

        param.register_hook(poison)


def test_the_advice_after_a_divergence_is_one_that_helps(tmp_path):
    """A non-finite gradient norm has already moved the weights: skipping cannot help, and before the first
    checkpoint there is none to name. (Following `--set nonfinite=skip` there used to diverge again, with the same
    advice and a checkpoint that did not exist.)"""
    torch.set_num_threads(1)
    ck = write_tiny_checkpoint(tmp_path / "ck", with_optimizer=True)
    with pytest.raises(UserError) as err:
        run_training(_cfg(tmp_path), synthetic_inputs(ck), progress=False, hooks=[PoisonGradients(update=1)])
    message = str(err.value)
    assert "non-finite gradient norm at update 1 (run step 2)" in message
    assert "no checkpoint was saved before it" in message and "nonfinite=skip" not in message
    assert "lower the learning rate" in message
    assert complete_checkpoints(tmp_path / "run") == []


def test_after_skipping_the_advice_does_not_repeat_itself(tmp_path):
    torch.set_num_threads(1)
    ck = write_tiny_checkpoint(tmp_path / "ck", with_optimizer=True)
    with pytest.raises(UserError) as err:
        run_training(
            _cfg(tmp_path, nonfinite="skip"), synthetic_inputs(ck), progress=False, hooks=[PoisonGradients(update=3)]
        )
    message = str(err.value)
    assert "the checkpoint after step 2 is intact" in message and "nonfinite: skip is already set" in message
    assert "--set nonfinite=skip" not in message
