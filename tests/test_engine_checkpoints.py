"""Checkpoints that prove themselves: every saved checkpoint records its files' sizes and checksums; a resume whose
newest checkpoint was damaged (a file truncated, a byte flipped, a file missing) names it, sets it aside and
continues from the newest intact one, giving the uninterrupted run's probe log; with none intact it says what to
do. A disk that fills while torch writes a checkpoint is reported as a full disk, naming the intact checkpoint."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from harness.errors import UserError
from harness.rundir import read_table
from injection.engine import run_state
from injection.engine.hooks import Hook
from injection.engine.loop import run_training
from tests.helpers.engine import synthetic_config, synthetic_inputs, write_tiny_checkpoint


class FailAt(Hook):
    """A crash after update `step` (after its checkpoint, if it has one)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_update(self, run, step, metrics):
        if step == self.step:
            raise RuntimeError("simulated crash")


def _cfg(ck, out):
    return synthetic_config(ck, total_steps=6, micro_batch=2, output_dir=out, checkpoint_interval=2, log_flush_steps=1)


def _probes(run_dir):
    key = ["step", "paragraph", "kind", "probe"]
    return read_table(run_dir / "probes.parquet").sort_values(key, ignore_index=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run, and a crashed copy with checkpoints after steps 2 and 4."""
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("ckpts")
    ck = write_tiny_checkpoint(tmp / "ck", with_optimizer=True)
    whole = run_training(_cfg(ck, tmp / "whole"), synthetic_inputs(ck), progress=False)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_training(_cfg(ck, tmp / "crashed"), synthetic_inputs(ck), progress=False, hooks=[FailAt(5)])
    return tmp, ck, whole


def test_every_checkpoint_records_its_files(reference):
    tmp, _, _ = reference
    ckpt = tmp / "crashed" / "checkpoints" / "step4"
    files = json.loads((ckpt / run_state.STATE_FILE).read_text())["files"]
    on_disk = sorted(str(p.relative_to(ckpt)) for p in ckpt.rglob("*") if p.is_file() and p.name != "engine_state.json")
    assert sorted(files) == on_disk and len(on_disk) >= 3
    for name, record in files.items():
        data = (ckpt / name).read_bytes()
        assert record == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert run_state.verify_checkpoint(ckpt) is None


def _truncate(path):
    path.write_bytes(path.read_bytes()[:-100])


def _flip(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["truncated", "byte flipped", "missing"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_intact_one(reference, tmp_path, damage, capsys):
    src, ck, whole = reference
    run_dir = tmp_path / "run"
    shutil.copytree(src / "crashed", run_dir)
    victim = next((run_dir / "checkpoints" / "step4").glob("*model_states.pt"))
    {"truncated": _truncate, "byte flipped": _flip, "missing": lambda p: p.unlink()}[damage](victim)

    resumed = run_training(_cfg(ck, run_dir), synthetic_inputs(ck), resume=True, progress=False)
    said = capsys.readouterr().err
    assert "the checkpoint after step 4 is damaged" in said and victim.name in said
    assert "resuming from the checkpoint after step 2 instead" in said
    assert (run_dir / "checkpoints" / "damaged-step4").is_dir()  # kept for a look, never loaded again
    assert json.loads((resumed / "manifest.json").read_text())["status"] == "complete"
    ours, expected = _probes(resumed), _probes(whole)
    assert ours[["step", "paragraph", "kind", "probe"]].equals(expected[["step", "paragraph", "kind", "probe"]])
    np.testing.assert_array_equal(ours.logprob.to_numpy(), expected.logprob.to_numpy())


def test_with_no_intact_checkpoint_the_resume_says_what_to_do(reference, tmp_path):
    src, ck, _ = reference
    run_dir = tmp_path / "run"
    shutil.copytree(src / "crashed", run_dir)
    for step in ("step2", "step4"):
        _flip(next((run_dir / "checkpoints" / step).glob("*optim_states.pt")))
    with pytest.raises(UserError, match=r"no intact checkpoint to resume from .*again to start over from step 0"):
        run_training(_cfg(ck, run_dir), synthetic_inputs(ck), resume=True, progress=False)
    assert run_state.complete_checkpoints(run_dir) == []  # the next --resume starts over instead of failing again


@pytest.mark.slow
def test_a_disk_that_fills_under_torchs_writer_is_a_full_disk_naming_the_intact_checkpoint(tmp_path, monkeypatch):
    """Through `injection run`: torch reports a full disk as "unexpected pos"; the user sees one line."""
    from injection.cli import app
    from tests.helpers.corpus import make_corpus

    make_corpus(tmp_path / "c", seq_len=64, file_tokens=(20_000,))
    config = {
        "checkpoint": "tiny@0+L64",
        "knowledge": "generate:2:1:0",
        "schedule": "none",
        "data": str(tmp_path / "c"),
        "total_steps": 4,
        "checkpoint_interval": 2,
        "micro_batch": 2,
        "global_batch": 4,
        "output_dir": str(tmp_path / "run"),
    }
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.setenv("INJECTION_CACHE", str(tmp_path / "cache"))
    real_save, real_usage = run_state.torch.save, shutil.disk_usage

    def save(obj, path, *args, **kwargs):
        if "step4" in str(path):
            raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 1216 vs 1112")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(run_state.torch, "save", save)
    monkeypatch.setattr(run_state.shutil, "disk_usage", lambda p: real_usage(p)._replace(free=4096))
    result = CliRunner().invoke(app, ["run", str(tmp_path / "exp.yaml")])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    assert errors[0].startswith(f"error: {tmp_path / 'run' / 'checkpoints' / 'step4'}: no space left on the device")
    assert "the newest intact checkpoint is the one after step 2" in errors[0]
    assert f"injection run --resume {tmp_path / 'run'}" in errors[0]
    assert not (tmp_path / "run" / "checkpoints" / "step4").exists()
