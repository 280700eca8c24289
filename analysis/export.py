"""What the analysis writes as data: the JSON documents of `fit --json` / `compare --json` and the curves table.

fit --json       {"options": {...}, "run": {..., "warnings": [...]}, "groups": [...],
                  "raw_groups": [...] (when adjusted), "control_groups": [...] (twin-adjusted, with controls),
                  "control_drift": {...}}
compare --json   {"options": {...}, "runs": [{...}, ...], "groups": [{"run": LABEL, ...}, ...],
                  "raw_groups": [...], "control_groups": [...] (as for fit)}
--curves FILE    Parquet, one row per (run, scenario, kind, t): CURVE_SCHEMA
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from analysis.fit import FitOptions, RunAnalysis
from harness import rundir
from harness.atomic import write_atomic
from harness.errors import UserError

#: Schema metadata that marks a Parquet file as a curves table written here (and so safe to overwrite).
CURVES_MARK = {b"analysis.curves": b"1"}
CURVE_SCHEMA = pa.schema(
    [
        ("run", pa.string()),
        ("path", pa.string()),
        ("scenario", pa.string()),
        ("kind", pa.string()),
        ("control_adjusted", pa.bool_()),
        ("t", pa.int32()),
        ("mean_r", pa.float64()),
        ("se", pa.float64()),
        ("n_kept", pa.int32()),
        ("n_removed", pa.int32()),
        ("n_excluded", pa.int32()),
        ("in_fit", pa.bool_()),
        ("negated", pa.bool_()),
        ("twin_adjusted", pa.bool_()),
    ],
    metadata=CURVES_MARK,
)
CURVE_COLUMNS_DOC = {
    "run": "run label (as in the tables)",
    "path": "run directory",
    "scenario": "scenario of the group",
    "kind": "probe kind of the group",
    "control_adjusted": "true: measured on control-adjusted ℓ; false: on the raw ℓ",
    "t": "steps after the local acquisition maximum of the last encounter",
    "mean_r": "mean retainability R(t) after the interquartile rule at this t",
    "se": "standard error of that mean (sample standard deviation of the kept values / sqrt(n_kept))",
    "n_kept": "probes whose R(t) entered the mean",
    "n_removed": "probes whose R(t) the interquartile rule removed at this t",
    "n_excluded": "probes of the group without retainability (see the group's exclusions)",
    "in_fit": "this t lies in the fitted range",
    "negated": "the curve was negated before the fit (study-code rules; mean R at the first fitted t < 0)",
    "twin_adjusted": "true: measured against the run's twin (Δℓ = ℓ − ℓ of the twin)",
}


def fit_document(analysis: RunAnalysis) -> dict:
    document = {
        "options": analysis.options.record(),
        "run": analysis.run_record(),
        "groups": [g.record() for g in analysis.fits],
    }
    if analysis.raw is not None:
        document["raw_groups"] = [g.record() for g in analysis.raw.fits]
    if analysis.control is not None:
        document["control_groups"] = [g.record() for g in analysis.control.fits]
    document["control_drift"] = drift_record(analysis)
    return document


def drift_record(analysis: RunAnalysis) -> dict:
    """Per kind: the control probes' mean ℓ change at the last logged step and its largest magnitude."""
    return {
        kind: {
            "last": float(d[-1]),
            "max_abs": float(np.abs(d).max()),
            "step_of_max_abs": int(analysis.run.steps[int(np.abs(d).argmax())]),
        }
        for kind, d in analysis.control_drift.items()
    }


def compare_document(labels: list[str], analyses: list[RunAnalysis], options: FitOptions) -> dict:
    document = {
        "options": options.record(),
        "runs": [{**a.run_record(), "label": label} for label, a in zip(labels, analyses)],
        "groups": [
            {"run": label, "path": str(a.run.path), **g.record()} for label, a in zip(labels, analyses) for g in a.fits
        ],
    }
    for key, side in (("raw_groups", "raw"), ("control_groups", "control")):
        if any(getattr(a, side) is not None for a in analyses):
            document[key] = [
                {"run": label, "path": str(a.run.path), **g.record()}
                for label, a in zip(labels, analyses)
                if getattr(a, side) is not None
                for g in getattr(a, side).fits
            ]
    return document


def curves_table(label: str, analysis: RunAnalysis) -> pa.Table:
    """Mean R(t), its standard error and the probe counts for every group with retainability."""
    parts = [_curves(label, a) for a in (analysis, analysis.control, analysis.raw) if a is not None]
    return pa.concat_tables(parts)


def _curves(label: str, analysis: RunAnalysis) -> pa.Table:
    columns: dict[str, list[np.ndarray]] = {name: [] for name in CURVE_SCHEMA.names}
    for g in analysis.fits:
        c = g.curve
        if c is None:
            continue
        n = len(c.t)
        upper = g.t_max if g.t_max is not None else -1
        for name, values in (
            ("run", np.full(n, label, dtype=object)),
            ("path", np.full(n, str(analysis.run.path), dtype=object)),
            ("scenario", np.full(n, g.scenario, dtype=object)),
            ("kind", np.full(n, g.kind, dtype=object)),
            ("control_adjusted", np.full(n, analysis.adjustment == "control")),
            ("t", c.t),
            ("mean_r", c.mean),
            ("se", c.se),
            ("n_kept", c.kept),
            ("n_removed", c.removed),
            ("n_excluded", np.full(n, g.n_excluded)),
            ("in_fit", (c.t >= g.t_min) & (c.t <= upper)),
            ("negated", np.full(n, g.negated)),
            ("twin_adjusted", np.full(n, analysis.adjustment == "twin")),
        ):
            columns[name].append(values)
    arrays = []
    for f in CURVE_SCHEMA:
        chunks = columns[f.name]
        values = np.concatenate(chunks) if chunks else np.zeros(0, dtype=object if f.type == pa.string() else None)
        if f.type == pa.string():
            arrays.append(pa.array(values.tolist(), type=f.type))
        else:
            arrays.append(pa.array(values, type=f.type, from_pandas=True))
    return pa.Table.from_arrays(arrays, schema=CURVE_SCHEMA)


def check_curves_path(path: Path, run_dirs: list[Path]) -> Path:
    """Refuse a curves path that is not a .parquet file name, is a run's own file or directory, or would
    replace a file this command did not write. Checked before any work is done."""
    path = Path(path)
    if path.suffix != ".parquet":
        raise UserError(f"--curves {path}: expected a file name ending in .parquet")
    if path.is_dir():
        raise UserError(f"--curves {path}: is a directory, expected a file name")
    resolved = path.resolve()
    for run in run_dirs:
        run = Path(run).resolve()
        for name in (rundir.PROBES, rundir.INJECTIONS):
            if resolved == run / name or run / name in resolved.parents:
                raise UserError(f"--curves {path}: would write into the run's own {name}")
    if path.exists():
        try:
            metadata = pq.read_schema(path).metadata or {}
        except (pa.ArrowInvalid, OSError):
            metadata = {}
        if metadata.get(b"analysis.curves") != b"1":
            raise UserError(
                f"--curves {path}: exists and is not a curves table written by `analysis`; "
                "choose another name or remove it"
            )
    parent = path.parent
    if parent.exists() and not parent.is_dir():
        raise UserError(f"--curves {path}: {parent} is not a directory")
    if parent.is_dir() and not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"--curves {path}: {parent} is not writable")
    return path


def write_curves(path: Path, tables: list[pa.Table]) -> Path:
    table = pa.concat_tables(tables) if tables else CURVE_SCHEMA.empty_table()
    return write_atomic(path, lambda handle: pq.write_table(table.replace_schema_metadata(CURVES_MARK), handle))
