"""The run directory's tables (SPEC §7), written incrementally and atomically.

`probes.parquet/` and `train_metrics.parquet/` are directories of Parquet parts that pyarrow and pandas
read as one table. A part is named by the step range it holds (`part-000000-000024.parquet`), written to a
temporary name and renamed, so a reader (or a resumed run) never sees half a part. Memory stays bounded:
rows are buffered for at most `flush_steps` steps.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from injection.engine.evaluate import ProbeItem, ProbeScores

PROBE_SCHEMA = pa.schema(
    [
        ("step", pa.int32()),
        ("paragraph", pa.int32()),
        ("scenario", pa.string()),
        ("kind", pa.string()),
        ("probe", pa.int16()),
        ("logprob", pa.float32()),
        ("logprob_sum", pa.float32()),
        ("first_logprob", pa.float32()),
        ("exact_match", pa.bool_()),
        ("first_rank", pa.int32()),
    ]
)

INJECTION_SCHEMA = pa.schema(
    [
        ("step", pa.int32()),
        ("paragraph", pa.int32()),
        ("scenario", pa.string()),
        ("variant", pa.int16()),
        ("row", pa.int32()),
        ("offset", pa.int32()),
        ("tokens", pa.int32()),
    ]
)

METRICS_SCHEMA = pa.schema(
    [
        ("step", pa.int32()),  # run step after the update (k+1 for update k)
        ("loss", pa.float32()),
        ("lr", pa.float64()),
        ("grad_norm", pa.float32()),
        ("tokens_per_s", pa.float32()),
        ("max_mem_gib", pa.float32()),  # peak accelerator memory so far (NaN on CPU)
        ("eval_s", pa.float32()),  # seconds spent scoring probes after this update (0 when not evaluated)
    ]
)

_PART = re.compile(r"^part-(\d+)-(\d+)\.parquet$")


def write_table_atomic(table: pa.Table, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


class PartWriter:
    """Rows of one schema, buffered by step and written as step-range parts into a directory."""

    def __init__(self, directory: Path, schema: pa.Schema, flush_steps: int = 25) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.schema = schema
        self.flush_steps = flush_steps
        self._columns: dict[str, list[np.ndarray]] = {name: [] for name in schema.names}
        self._steps: list[int] = []

    def add(self, step: int, columns: dict[str, Any]) -> None:
        """Buffer the rows of one step (`columns` maps every schema column to an array or scalar list)."""
        for name in self.schema.names:
            self._columns[name].append(np.asarray(columns[name]))
        self._steps.append(step)
        if len(self._steps) >= self.flush_steps:
            self.flush()

    def flush(self) -> Path | None:
        if not self._steps:
            return None
        arrays = [
            pa.array(np.concatenate(self._columns[f.name]), type=f.type) if f.type != pa.string()
            else pa.array([str(v) for chunk in self._columns[f.name] for v in chunk], type=pa.string())
            for f in self.schema
        ]
        path = self.directory / f"part-{min(self._steps):06d}-{max(self._steps):06d}.parquet"
        write_table_atomic(pa.Table.from_arrays(arrays, schema=self.schema), path)
        self._columns = {name: [] for name in self.schema.names}
        self._steps = []
        return path

    def parts(self) -> list[str]:
        return sorted(p.name for p in self.directory.iterdir() if _PART.match(p.name))

    def keep_only(self, names: Sequence[str]) -> list[str]:
        """Delete parts (and stray temporaries) not in `names`: rows newer than a resumed checkpoint."""
        keep = set(names)
        removed = []
        for p in self.directory.iterdir():
            if p.name not in keep and (_PART.match(p.name) or p.name.endswith(".tmp")):
                p.unlink()
                removed.append(p.name)
        return sorted(removed)


class ProbeLogWriter(PartWriter):
    """Appends one row per (step, probe) to `RUN_DIR/probes.parquet/` (SPEC §7 schema + `first_rank`)."""

    def __init__(self, run_dir: Path, items: Sequence[ProbeItem], flush_steps: int = 25) -> None:
        super().__init__(Path(run_dir) / "probes.parquet", PROBE_SCHEMA, flush_steps)
        self._keys = {
            "paragraph": np.array([it.paragraph for it in items], dtype=np.int32),
            "scenario": np.array([it.scenario for it in items], dtype=object),
            "kind": np.array([it.kind for it in items], dtype=object),
            "probe": np.array([it.probe for it in items], dtype=np.int16),
        }

    def log(self, step: int, scores: ProbeScores) -> None:
        n = len(self._keys["paragraph"])
        self.add(
            step,
            {
                "step": np.full(n, step, dtype=np.int32),
                **self._keys,
                "logprob": scores.logprob,
                "logprob_sum": scores.logprob_sum,
                "first_logprob": scores.first_logprob,
                "exact_match": scores.exact_match,
                "first_rank": scores.first_rank,
            },
        )


class MetricsWriter(PartWriter):
    """Per-update training metrics in `RUN_DIR/train_metrics.parquet/`."""

    def __init__(self, run_dir: Path, flush_steps: int = 25) -> None:
        super().__init__(Path(run_dir) / "train_metrics.parquet", METRICS_SCHEMA, flush_steps)

    def log(self, step: int, loss: float, lr: float, grad_norm: float, tokens_per_s: float,
            max_mem_gib: float = float("nan"), eval_s: float = 0.0) -> None:
        self.add(step, {"step": [step], "loss": [loss], "lr": [lr], "grad_norm": [grad_norm],
                        "tokens_per_s": [tokens_per_s], "max_mem_gib": [max_mem_gib], "eval_s": [eval_s]})


def write_injections(run_dir: Path, records: Sequence[Any]) -> Path:
    """`injections.parquet`: one row per injected paragraph copy (records carry the SPEC §7 fields)."""
    cols = {f.name: [getattr(r, f.name) for r in records] for f in INJECTION_SCHEMA}
    table = pa.Table.from_pydict(cols, schema=INJECTION_SCHEMA)
    path = Path(run_dir) / "injections.parquet"
    write_table_atomic(table, path)
    return path


def read_table(path: Path):
    """A part directory or single file as one pandas DataFrame, sorted the way it was written."""
    import pandas as pd

    path = Path(path)
    if path.is_dir():
        files = [path / n for n in sorted(os.listdir(path)) if _PART.match(n)]
        if not files:
            return pd.DataFrame()
        return pa.concat_tables([pq.read_table(f) for f in files]).to_pandas()
    return pq.read_table(path).to_pandas()
