"""Runs you can watch: the monitor back ends (CSV, TensorBoard, Weights & Biases offline) write the training
metrics and per-(scenario, kind) probe summaries, read back here and checked against the run directory's own
Parquet files; after a crash and a resume every step is there once. A missing back-end package is one line
and exit 2 before anything starts."""

import csv
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from harness.rundir import read_table
from injection.cli import app
from injection.engine.hooks import Hook
from injection.engine.loop import run_training
from tests.helpers.engine import synthetic_config, synthetic_inputs, write_tiny_checkpoint

TOTAL = 6
CRASH_AT = 3  # checkpoints after steps 2, 4, 6: the crash leaves step 3 logged past the newest one


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.set_num_threads(1)
    return write_tiny_checkpoint(tmp_path_factory.mktemp("monitor") / "ck", with_optimizer=True)


def _config(checkpoint: Path, run_dir: Path, kind: str):
    return synthetic_config(
        checkpoint,
        total_steps=TOTAL,
        micro_batch=1,
        output_dir=run_dir,
        checkpoint_interval=2,
        log_flush_steps=1,
        monitor={"kind": kind},
    )


class CrashAt(Hook):
    """Fails the run after the other hooks have seen update `step` (as a killed process would)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_update(self, run, step, metrics):
        if step == self.step:
            raise RuntimeError("crash for the test")


def _crash_then_resume(checkpoint: Path, run_dir: Path, kind: str, read_monitor):
    cfg = _config(checkpoint, run_dir, kind)
    with pytest.raises(RuntimeError, match="crash for the test"):
        run_training(cfg, synthetic_inputs(checkpoint), progress=False, hooks=[CrashAt(CRASH_AT)])
    before = read_monitor(run_dir / "monitor")
    assert CRASH_AT in before["train/loss"], "nothing was logged past the checkpoint: the resume truncates nothing"
    run_training(cfg, synthetic_inputs(checkpoint), resume=True, progress=False)
    return read_monitor(run_dir / "monitor")


def _expected(run_dir: Path) -> dict[str, dict[int, float]]:
    """What the monitor should show, computed from the run directory's Parquet files."""
    metrics = read_table(run_dir / "train_metrics.parquet")
    out = {
        f"train/{name}": dict(zip(metrics.step, metrics[name].astype(float))) for name in ("loss", "lr", "grad_norm")
    }
    probes = read_table(run_dir / "probes.parquet")
    for (scenario, kind), group in probes.groupby(["scenario", "kind"]):
        means = group.groupby("step")[["logprob", "exact_match"]].mean()
        out[f"probes/{scenario}/{kind}/logprob"] = dict(zip(means.index, means.logprob))
        out[f"probes/{scenario}/{kind}/exact_match"] = dict(zip(means.index, means.exact_match.astype(float)))
    return out


def _assert_matches(logged: dict[str, dict[int, float]], run_dir: Path, rtol: float) -> None:
    expected = _expected(run_dir)
    assert sorted(expected["train/loss"]) == list(range(1, TOTAL + 1))
    assert len([n for n in expected if n.startswith("probes/")]) == 2 * 2 * 3  # (once, duplicate) × 3 kinds × 2
    for name, series in expected.items():
        assert sorted(logged[name]) == sorted(series), name
        np.testing.assert_allclose(
            [logged[name][s] for s in sorted(series)],
            [series[s] for s in sorted(series)],
            rtol=rtol,
            atol=1e-7,
            err_msg=name,
        )


# ---- CSV ---------------------------------------------------------------------------------------------------


def read_csv_monitor(directory: Path) -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = {}
    with (directory / "metrics.csv").open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["step", "name", "value"]
    for step, name, value in rows[1:]:
        assert int(step) not in out.setdefault(name, {}), f"{name} logged twice at step {step}"
        out[name][int(step)] = float(value)
    return out


def test_csv_monitor_after_crash_and_resume(checkpoint, tmp_path):
    run_dir = tmp_path / "csv"
    logged = _crash_then_resume(checkpoint, run_dir, "csv", read_csv_monitor)
    _assert_matches(logged, run_dir, rtol=1e-6)


# ---- TensorBoard -------------------------------------------------------------------------------------------


def read_tensorboard(directory: Path) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(directory), size_guidance={"scalars": 0})  # 0: keep every event
    acc.Reload()
    out: dict[str, dict[int, float]] = {}
    for tag in acc.Tags()["scalars"]:
        events = acc.Scalars(tag)
        out[tag] = {e.step: e.value for e in events}
        assert len(out[tag]) == len(events), f"{tag}: a step logged twice"
    return out


def test_tensorboard_monitor_after_crash_and_resume(checkpoint, tmp_path):
    pytest.importorskip("tensorboard")
    run_dir = tmp_path / "tb"
    logged = _crash_then_resume(checkpoint, run_dir, "tensorboard", read_tensorboard)
    assert len(list((run_dir / "monitor").glob("events.out.tfevents.*"))) == 2  # the first run's, the resumed one's
    _assert_matches(logged, run_dir, rtol=1e-6)  # event files hold float32


# ---- Weights & Biases, offline ------------------------------------------------------------------------------


def read_wandb_history(path: Path) -> dict[str, dict[int, float]]:
    """The `history` records of an offline `.wandb` file: a 7-byte W&B header, then LevelDB's log format
    (32 KiB blocks of records with a 7-byte header: CRC, little-endian length, type FULL/FIRST/MIDDLE/LAST)
    holding protobuf `Record`s."""
    import json

    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path}: not a W&B data file"
    records, chunks, pos = [], [], 7
    while pos + 7 <= len(data):
        left_in_block = 32768 - pos % 32768
        if left_in_block < 7:  # block trailer: padding
            pos += left_in_block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:  # zero-filled end of a block
            pos += left_in_block
            continue
        chunks.append(data[pos + 7 : pos + 7 + length])
        pos += 7 + length
        if kind in (1, 4):  # FULL, LAST
            records.append(b"".join(chunks))
            chunks = []
    out: dict[str, dict[int, float]] = {}
    for raw in records:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") != "history":
            continue
        items = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
        step = int(items.pop("_step"))
        for name, value in items.items():
            if not name.startswith("_"):
                out.setdefault(name, {})[step] = float(value)
    return out


def read_wandb_offline(directory: Path) -> dict[str, dict[int, float]]:
    """Every offline run under DIRECTORY/wandb, oldest first, merged as W&B merges a resumed run: a step already
    logged keeps its first value."""
    out: dict[str, dict[int, float]] = {}
    for path in sorted((directory / "wandb").glob("offline-run-*/run-*.wandb"), key=lambda p: p.stat().st_mtime):
        for name, series in read_wandb_history(path).items():
            out[name] = {**series, **out.get(name, {})}
    return out


@pytest.mark.slow
def test_wandb_monitor_offline_after_crash_and_resume(checkpoint, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))
    monkeypatch.setenv("WANDB_MODE", "offline")  # and no network here anyway
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = tmp_path / "wb"
    logged = _crash_then_resume(checkpoint, run_dir, "wandb", read_wandb_offline)
    files = list((run_dir / "monitor" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 2 and files[0].name == files[1].name, files  # the resumed run continues the same W&B run
    _assert_matches(logged, run_dir, rtol=1e-6)


# ---- a missing package --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["tensorboard", "wandb"])
@pytest.mark.parametrize("command", ["run", "launch"])
def test_missing_monitor_package_is_one_line_and_exit_2(kind, command, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, kind, None)  # `import kind` now raises ImportError, as if not installed
    result = CliRunner().invoke(
        app, [command, "smoke", "--set", f"monitor.kind={kind}", "--set", f"output_dir={tmp_path / 'run'}"]
    )
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines() == [
        f"error: field 'monitor.kind': {kind} needs the `{kind}` package, which is not installed (pip install {kind}); "
        "or use monitor.kind csv"
    ]
    assert not (tmp_path / "run").exists()
