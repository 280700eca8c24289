"""Watching a long run: training metrics and probe summaries to CSV, TensorBoard or Weights & Biases.

One config field (`monitor.kind`) picks the back end; each back end is a small `MetricLogger` (`log_dict`, `close`).
What is logged, by step: the update's loss, learning rate, gradient norm, throughput and peak memory, and after
every evaluation the mean ℓ of each (scenario, kind) of probes (`probes/<scenario>/<kind>/logprob`) with its
exact-match rate. The run directory's own Parquet files stay the record; these are for watching.
"""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from harness.errors import UserError
from injection.engine.config import ExperimentConfig
from injection.engine.hooks import Hook

#: The package each back end needs, and the version the harness is tested with.
PACKAGES = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb")}


class MetricLogger(Protocol):
    def log_dict(self, step: int, values: dict[str, float]) -> None: ...
    def truncate(self, last_step: int) -> None: ...
    def close(self) -> None: ...


class CsvLogger:
    """`monitor/metrics.csv`: one row per logged step and name (step, name, value), appended as the run goes."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / "metrics.csv"
        new = not self.path.exists()
        self.file = self.path.open("a", newline="", encoding="utf-8")
        self.writer = csv.writer(self.file)
        if new:
            self.writer.writerow(["step", "name", "value"])

    def log_dict(self, step: int, values: dict[str, float]) -> None:
        for name, value in values.items():
            self.writer.writerow([step, name, repr(float(value))])
        self.file.flush()

    def truncate(self, last_step: int) -> None:
        """Drop rows written after `last_step` (a resumed run logs them again)."""
        self.file.close()
        with self.path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
        kept = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) <= last_step]
        with self.path.open("w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows(kept)
        self.file = self.path.open("a", newline="", encoding="utf-8")
        self.writer = csv.writer(self.file)

    def close(self) -> None:
        self.file.close()


class TensorBoardLogger:
    """TensorBoard event files (`torch.utils.tensorboard`). A resumed run's writer starts with a purge step, so
    TensorBoard drops the events the interrupted run wrote after its checkpoint."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.writer = None  # opened at the first value, so a resume writes one event file, not an empty one too
        self.purge_step: int | None = None

    def log_dict(self, step: int, values: dict[str, float]) -> None:
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(self.directory), purge_step=self.purge_step)
        for name, value in values.items():
            self.writer.add_scalar(name, float(value), global_step=step)
        self.writer.flush()

    def truncate(self, last_step: int) -> None:
        self.close()
        self.writer, self.purge_step = None, last_step + 1

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class WandbLogger:
    """Weights & Biases; `offline` (the default) needs no network and writes files `wandb sync` uploads.

    The W&B run id is derived from the run directory and configuration, so a resumed run continues the same W&B
    run. W&B keeps no step twice: the steps an interrupted run logged after its checkpoint keep those values."""

    def __init__(
        self, directory: Path, project: str, mode: str, name: str, run_id: str, config: dict[str, Any]
    ) -> None:
        import wandb

        directory.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=project, name=name, mode=mode, dir=str(directory), config=config, resume="allow", id=run_id
        )

    def log_dict(self, step: int, values: dict[str, float]) -> None:
        self.run.log(dict(values), step=step)

    def truncate(self, last_step: int) -> None: ...

    def close(self) -> None:
        self.run.finish()


def check_monitor(cfg: ExperimentConfig) -> None:
    """Fail before training when the chosen back end's package is missing."""
    kind = cfg.monitor.kind
    if kind not in PACKAGES:
        return
    module, package = PACKAGES[kind]
    try:
        __import__(module)
    except ImportError:
        raise UserError(
            f"field 'monitor.kind': {kind} needs the `{package}` package, which is not installed "
            f"(pip install {package}); or use monitor.kind csv"
        ) from None


def make_logger(cfg: ExperimentConfig, run_dir: Path) -> MetricLogger | None:
    kind = cfg.monitor.kind
    if kind == "none":
        return None
    check_monitor(cfg)
    directory = Path(cfg.monitor.path) if cfg.monitor.path else run_dir / "monitor"
    if kind == "csv":
        return CsvLogger(directory)
    if kind == "tensorboard":
        return TensorBoardLogger(directory)
    # one id per (run directory, configuration): two runs both named `run` must not become one W&B run
    run_id = hashlib.sha256(f"{Path(run_dir).resolve()}|{cfg.config_hash()}".encode()).hexdigest()[:16]
    return WandbLogger(
        directory, cfg.monitor.project, cfg.monitor.wandb_mode, cfg.label or run_dir.name, run_id, cfg.identity()
    )


class MonitorHook(Hook):
    name = "monitor"

    def __init__(self, logger: MetricLogger) -> None:
        self.logger = logger
        self.last_step = 0
        self._groups: dict[tuple[str, str], np.ndarray] | None = None

    def on_eval(self, run, step, scores):
        if self._groups is None:
            items = run.inputs.probe_items
            keys = [(it.scenario, it.kind) for it in items]
            self._groups = {key: np.flatnonzero([k == key for k in keys]) for key in dict.fromkeys(keys)}
        values = {}
        for (scenario, kind), rows in self._groups.items():
            values[f"probes/{scenario}/{kind}/logprob"] = float(np.mean(scores["logprob"][rows]))
            values[f"probes/{scenario}/{kind}/exact_match"] = float(np.mean(scores["exact_match"][rows]))
        self.logger.log_dict(step, values)

    def on_update(self, run, step, metrics):
        self.last_step = step
        self.logger.log_dict(
            step,
            {
                f"train/{k}": float(v)
                for k, v in metrics.items()
                if isinstance(v, (int, float)) and np.isfinite(float(v))
            },
        )

    def state_dict(self):
        return {"last_step": self.last_step}

    def load_state_dict(self, state):
        if "last_step" in state:
            self.logger.truncate(int(state["last_step"]))

    def on_end(self, run, status):
        self.logger.close()


def monitor_hook(cfg: ExperimentConfig, run_dir: Path) -> MonitorHook | None:
    logger = make_logger(cfg, run_dir)
    return MonitorHook(logger) if logger is not None else None
