"""The twin of a run: the same continuation (checkpoint, batches, learning rates, seeds) with nothing spliced,
logged on the same probes. Every probe then has its own counterfactual: what the model would have done at each
step without the injected text, Δℓ_p(k) = ℓ_p(k) − ℓ_p^twin(k) (analysis.fit).

The twin is an ordinary run in RUN_DIR/twin/ (its `config.yaml` says `splice: false`), resumable on its own with
`injection run --resume RUN_DIR/twin`; the run's manifest names it (`twin`), and the twin's names the run
(`twin_of`). Its probes keep the run's scenarios, so both logs group alike; its injections.parquet is empty.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from harness import rundir
from harness.atomic import write_json_atomic
from injection.engine.config import ExperimentConfig
from injection.engine.inputs import RunInputs, read_checkpoint, run_label
from injection.engine.loop import run_training

#: The twin's directory inside the run directory, as the manifests name each other.
TWIN_DIR = "twin"
TWIN_OF = ".."


def twin_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / TWIN_DIR


def twin_config(cfg: ExperimentConfig) -> ExperimentConfig:
    """The twin's configuration: the run's, with nothing spliced, in RUN_DIR/twin, labelled as the twin."""
    label = cfg.label or run_label(cfg, read_checkpoint(cfg.checkpoint))
    return replace(cfg, splice=False, twin=False, output_dir=str(twin_dir(cfg.output_dir)), label=f"{label} twin")


def twin_inputs(inputs: RunInputs) -> RunInputs:
    """The run's inputs without a paragraph to splice (same checkpoint, batches and probes, scenarios kept)."""
    return replace(inputs, injections={}, records={}, manifest_extra={**inputs.manifest_extra, "twin_of": TWIN_OF})


def link_twin(run_dir: Path) -> None:
    """Name the twin in the run's manifest (rank 0), before the twin starts, so an unfinished twin is found too."""
    if int(os.environ.get("RANK", "0")) != 0:
        return
    manifest = rundir.read_manifest(run_dir)
    if manifest.get("twin") != TWIN_DIR:
        write_json_atomic(Path(run_dir) / rundir.MANIFEST, {**manifest, "twin": TWIN_DIR})


def run_twin(cfg: ExperimentConfig, inputs: RunInputs, progress: bool = True) -> Path:
    """Run (or continue, or find complete) the twin of the run `cfg` describes; returns its directory."""

    twin_cfg = twin_config(cfg)
    link_twin(Path(cfg.output_dir))
    started = (Path(twin_cfg.output_dir) / rundir.MANIFEST).is_file()
    return run_training(twin_cfg, twin_inputs(inputs), resume=started, progress=progress)
