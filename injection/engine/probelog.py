"""Writers of the run directory's probe log and training metrics (the format lives in harness.rundir)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from harness.rundir import METRICS, METRICS_SCHEMA, PROBE_SCHEMA, PROBES, SCORE_NAMES, PartWriter

from injection.engine.evaluate import ProbeItem


class ProbeLogWriter(PartWriter):
    """Appends one row per (step, probe) to `RUN_DIR/probes.parquet/`."""

    def __init__(self, run_dir: Path, items: Sequence[ProbeItem], flush_steps: int = 25) -> None:
        super().__init__(Path(run_dir) / PROBES, PROBE_SCHEMA, flush_steps)
        self._keys = {
            "paragraph": np.array([it.paragraph for it in items], dtype=np.int32),
            "scenario": np.array([it.scenario for it in items], dtype=object),
            "kind": np.array([it.kind for it in items], dtype=object),
            "probe": np.array([it.probe for it in items], dtype=np.int16),
        }

    def log(self, step: int, scores: dict[str, np.ndarray]) -> None:
        n = len(self._keys["paragraph"])
        self.add(step, {"step": np.full(n, step, dtype=np.int32), **self._keys,
                        **{name: scores[name] for name in SCORE_NAMES}})


class MetricsWriter(PartWriter):
    """Per-update training metrics in `RUN_DIR/train_metrics.parquet/`."""

    def __init__(self, run_dir: Path, flush_steps: int = 25) -> None:
        super().__init__(Path(run_dir) / METRICS, METRICS_SCHEMA, flush_steps)

    def log(self, step: int, loss: float, lr: float, grad_norm: float, tokens_per_s: float,
            max_mem_gib: float = float("nan"), eval_s: float = 0.0, skipped: bool = False) -> None:
        self.add(step, {"step": [step], "loss": [loss], "lr": [lr], "grad_norm": [grad_norm],
                        "tokens_per_s": [tokens_per_s], "max_mem_gib": [max_mem_gib], "eval_s": [eval_s],
                        "skipped": [skipped]})
