"""What hangs off the training loop: the manifest, the probe log, the metrics, progress, monitors, exported
checkpoints.

A hook's methods are no-ops unless it overrides them. A hook that must survive a resume returns its state from
`state_dict()` (called just before every resumable checkpoint, so it can flush first) and gets it back through
`load_state_dict()`; the loop stores it with the checkpoint under the hook's `name`, then calls `on_checkpoint`
once the checkpoint is complete. Only rank 0 gets the writing hooks.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from harness.errors import UserError
from harness.progress import progress
from harness.rundir import (
    MANIFEST_FORMAT,
    METRICS,
    METRICS_SCHEMA,
    PROBE_KEY_COLUMNS,
    PROBE_SCHEMA,
    PROBES,
    PartWriter,
)
from harness.tokenizers import load_tokenizer
from injection.checkpoints.layout import DataPosition, write_checkpoint_dir
from injection.engine import run_state
from injection.engine.config import ExperimentConfig
from injection.engine.evaluate import ProbeItem
from injection.engine.inputs import RunInputs, describe_inputs, run_label
from injection.engine.plan import RunPlan
from injection.engine.zero import optimizer_state


@dataclass
class Run:
    """A training run while it is alive: what the loop and the hooks share."""

    cfg: ExperimentConfig
    inputs: RunInputs
    plan: RunPlan
    run_dir: Path
    rank: int
    world: int
    engine: Any
    hooks: list[Hook] = field(default_factory=list)
    optimizer_state: dict[str, Any] | None = None
    """How AdamW's moments were set up at step 0 (restored, rebuilt or fresh); None on a resume."""
    stop: dict[str, Any] | None = None
    """Why the run stopped before its end (`step`, `reason`), once it has."""
    manifest_extra: dict[str, Any] = field(default_factory=dict)
    """Fields other hooks add to the manifest when the run ends (the manifest's hook ends last and writes them)."""


class Hook:
    name = "hook"

    def on_start(self, run: Run, k0: int) -> None: ...
    def on_eval(self, run: Run, step: int, scores: dict[str, np.ndarray]) -> None: ...
    def on_update(self, run: Run, step: int, metrics: dict[str, float]) -> None: ...
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...
    def on_checkpoint(self, run: Run, step: int) -> None: ...
    def on_end(self, run: Run, status: str) -> None: ...


class ManifestHook(Hook):
    """RUN_DIR/manifest.json: written when the run starts, after every checkpoint and when it ends. Owns the
    manifest: what the run is (`first_manifest`), how far it got, the updates it skipped and why it stopped."""

    name = "manifest"

    def __init__(self, run_dir: Path, manifest: dict[str, Any]) -> None:
        self.run_dir, self.manifest = Path(run_dir), manifest

    def write(self, **fields: Any) -> None:
        self.manifest = run_state.write_manifest(self.run_dir, self.manifest, **fields)

    def on_start(self, run, k0):
        if run.optimizer_state is not None:
            self.manifest["optimizer_state"] = run.optimizer_state
        self.write(status="running", last_step=k0)

    def on_update(self, run, step, metrics):
        if metrics["skipped"]:
            self.manifest["skipped_updates"] = [*self.manifest.get("skipped_updates", []), step]
        self.manifest["last_step"] = step

    def on_checkpoint(self, run, step):
        self.manifest.update(run.manifest_extra)
        self.write(last_checkpoint=step)

    def on_end(self, run, status):
        if run.stop is not None:
            self.manifest["stop"] = run.stop
        self.manifest.update(run.manifest_extra)
        self.write(status=status)


def first_manifest(run: Run, earlier: dict[str, Any] | None) -> dict[str, Any]:
    """The manifest of a run that starts (or resumes: the `earlier` manifest's skipped updates and optimizer
    state carry over)."""
    cfg, ckpt, plan = run.cfg, run.inputs.checkpoint, run.plan
    return {
        "format": MANIFEST_FORMAT,
        "status": "running",
        "label": run_label(cfg, ckpt),
        "config": cfg.to_dict(),
        "config_hash": cfg.config_hash(),
        "checkpoint": ckpt.identity(),
        "start_step": ckpt.step,
        "total_steps": plan.total_steps,
        "global_batch_size": plan.global_batch,
        "checkpoint_global_batch_size": ckpt.global_batch_size,
        "seq_len": plan.seq_len,
        "tokens_per_step": plan.tokens_per_step,
        **describe_inputs(run.inputs),
        "analysis_defaults": {"window": cfg.window, "encounter_spacing": encounter_spacing(run.inputs)},
        "seeds": {"torch": cfg.seed, "numpy": cfg.seed, "python": cfg.seed},
        "world_size": run.world,
        "versions": run_state.versions(),
        "runtime": run_state.runtime(run.engine),
        "last_step": 0,
        "skipped_updates": [],
        **run.inputs.manifest_extra,
        **{k: earlier[k] for k in ("skipped_updates", "optimizer_state") if k in (earlier or {})},
    }


def encounter_spacing(inputs: RunInputs) -> int | None:
    """The smallest gap between consecutive encounters of any paragraph (None when none is injected twice)."""
    steps: dict[int, list[int]] = {}
    for k, items in inputs.injections.items():
        for item in items:
            steps.setdefault(item.paragraph, []).append(k)
    gaps = [b - a for s in steps.values() for a, b in zip(sorted(set(s)), sorted(set(s))[1:])]
    return min(gaps) if gaps else None


PROBE_KEY_NAMES = tuple(c.name for c in PROBE_KEY_COLUMNS)


class ProbeLogHook(Hook):
    """One row per (step, probe) in RUN_DIR/probes.parquet/."""

    name = "probe_log"

    def __init__(
        self, run_dir: Path, items: Sequence[ProbeItem], flush_steps: int, schema: pa.Schema = PROBE_SCHEMA
    ) -> None:
        self.writer = PartWriter(Path(run_dir) / PROBES, schema, flush_steps)
        self.scores = [name for name in schema.names if name not in PROBE_KEY_NAMES]
        self.keys = {
            "paragraph": np.array([it.paragraph for it in items], dtype=np.int32),
            "scenario": np.array([it.scenario for it in items], dtype=object),
            "kind": np.array([it.kind for it in items], dtype=object),
            "probe": np.array([it.probe for it in items], dtype=np.int16),
        }

    def on_eval(self, run, step, scores):
        n = len(self.keys["paragraph"])
        self.writer.add(
            step,
            {"step": np.full(n, step, dtype=np.int32), **self.keys, **{name: scores[name] for name in self.scores}},
        )

    def state_dict(self):
        self.writer.flush()
        return {"parts": self.writer.parts()}

    def load_state_dict(self, state):
        self.writer.keep_only(state.get("parts", []))  # rows newer than the checkpoint are written again

    def on_end(self, run, status):
        self.writer.flush()


class MetricsHook(Hook):
    """One row per update in RUN_DIR/train_metrics.parquet/."""

    name = "metrics"

    def __init__(self, run_dir: Path, flush_steps: int) -> None:
        self.writer = PartWriter(Path(run_dir) / METRICS, METRICS_SCHEMA, flush_steps)

    def on_update(self, run, step, metrics):
        row = {"step": [step], "max_mem_gib": [float("nan")], "eval_s": [0.0], "skipped": [False]}
        row.update(z_loss=[float("nan")], masked_rows=[0])  # runs whose objective has no such term
        row.update({k: [v] for k, v in metrics.items() if k in METRICS_SCHEMA.names})
        self.writer.add(step, row)

    def state_dict(self):
        self.writer.flush()
        return {"parts": self.writer.parts()}

    def load_state_dict(self, state):
        self.writer.keep_only(state.get("parts", []))

    def on_end(self, run, status):
        self.writer.flush()


class ProgressHook(Hook):
    """A live bar on a terminal; elsewhere (batch jobs) a line on stderr every `every` updates, with the ETA."""

    name = "progress"

    def __init__(self, total: int, every: int, stream=None) -> None:
        self.total, self.every = total, every
        self.stream = stream if stream is not None else sys.stderr
        self.bar = None
        self.started = time.monotonic()
        self.k0 = 0

    def on_start(self, run, k0):
        self.k0, self.started = k0, time.monotonic()
        if self.stream.isatty():
            self.bar = progress()
            self.task = self.bar.add_task("train", total=self.total, completed=k0)
            self.bar.start()

    @staticmethod
    def describe(metrics: dict[str, float]) -> str:
        return f"loss {metrics['loss']:.4f}, lr {metrics['lr']:.2e}, {metrics['tokens_per_s']:,.0f} tok/s" + (
            ", update skipped" if metrics.get("skipped") else ""
        )

    def on_update(self, run, step, metrics):
        if self.bar is not None:
            self.bar.update(self.task, completed=step, info=self.describe(metrics))
            return
        if step % self.every and step != self.total:
            return
        elapsed = time.monotonic() - self.started
        rate = (step - self.k0) / elapsed if elapsed > 0 else 0.0
        eta = f", eta {_duration((self.total - step) / rate)}" if rate > 0 and step < self.total else ""
        print(
            f"step {step}/{self.total} ({100 * step / self.total:.1f} %), {self.describe(metrics)}, "
            f"elapsed {_duration(elapsed)}{eta}",
            file=self.stream,
            flush=True,
        )

    def on_end(self, run, status):
        if self.bar is not None:
            self.bar.stop()


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class ExportHook(Hook):
    """Saves the model after chosen run steps as a checkpoint directory in the pulled layout: HF weights,
    tokenizer, AdamW moments and checkpoint.json at global step S + k, with the data position after it, so a
    later run starts from it exactly as from a pulled OLMo checkpoint. This is how the demo makes its `tiny`
    family. ZeRO stages 0–2 only (every rank holds whole parameters); rank 0 writes."""

    name = "export"

    def __init__(
        self, steps: Sequence[int], dest_for_step: Callable[[int], Path], meta: dict[str, Any] | None = None
    ) -> None:
        self.steps = set(steps)
        self.dest_for_step = dest_for_step
        """Function: global step -> destination directory."""
        self.meta = meta or {}
        """checkpoint.json fields that replace the starting checkpoint's (e.g. a new `family`)."""

    def on_update(self, run, step, metrics):
        if step in self.steps and run.rank == 0:
            export_checkpoint(run, step, self.dest_for_step(run.inputs.checkpoint.step + step), self.meta)


def export_checkpoint(run: Run, k: int, dest: Path, meta_overrides: dict[str, Any]) -> Path:
    """Write θ_k and the AdamW moments as a checkpoint directory at global step S + k."""
    stage = run.engine.zero_optimization_stage()
    if stage > 2:
        raise UserError(f"exporting checkpoints needs ZeRO stage 0-2 (whole parameters on rank 0), not {stage}")
    ckpt = run.inputs.checkpoint
    epoch, index = run.inputs.stream.position(k)
    meta = {
        **ckpt.meta,
        "step": ckpt.step + k,
        "source": "trained",
        "global_batch_size": run.plan.global_batch,
        "tokens_per_step": run.plan.tokens_per_step,
        "data_position": asdict(DataPosition(epoch, index, "export")),
        "tokens_seen": (ckpt.tokens_seen if ckpt.tokens_seen is not None else ckpt.step * ckpt.tokens_per_step)
        + k * run.plan.tokens_per_step,
        "trainer_state": {"global_step": ckpt.step + k, "run_dir": str(run.run_dir)},
        **meta_overrides,
    }
    meta.pop("has_optimizer_state", None)
    has_tokenizer = (ckpt.path / "tokenizer.json").is_file() or (ckpt.path / "tokenizer_config.json").is_file()
    tokenizer = load_tokenizer(str(ckpt.path)) if has_tokenizer else None
    return write_checkpoint_dir(run.engine.module, tokenizer, dest, meta, optimizer_state(run.engine) or None)
