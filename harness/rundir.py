"""The run directory: the contract between the training engine and the analysis, declared once.

    RUN_DIR/probes.parquet/          one row per (step, probe): PROBE_SCHEMA, or probe_schema(token_stats=True)
                                     with the token columns (a directory of Parquet parts)
    RUN_DIR/injections.parquet       one row per injected paragraph copy: INJECTION_SCHEMA
    RUN_DIR/manifest.json            resolved configuration, checkpoint identity, tokens_per_step, status, ...
    RUN_DIR/train_metrics.parquet/   one row per update: METRICS_SCHEMA
    RUN_DIR/knowledge_entropy.parquet/  where measured: one row per (step, layer): KNOWLEDGE_ENTROPY_SCHEMA
    RUN_DIR/config.yaml              the resolved experiment configuration
    RUN_DIR/checkpoints/stepK/       resumable training state

The analysis reads only the first three, so a directory written in this format by any tool can be analysed.
A run that trains on a knowledge set with a value space also records `CapacityManifest` under the manifest's
`capacity` key (what `analysis capacity` needs beyond the probe log).
Columns and manifest keys may be added; the ones named here are never renamed. Part directories hold files
named by the step range they cover (`part-000000-000024.parquet`), each written under a temporary name and
renamed, so a reader (or a resumed run) never sees half a part.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from harness.atomic import write_atomic
from harness.errors import UserError

PROBES = "probes.parquet"
INJECTIONS = "injections.parquet"
MANIFEST = "manifest.json"
METRICS = "train_metrics.parquet"
CONFIG = "config.yaml"
CHECKPOINTS = "checkpoints"
KNOWLEDGE_ENTROPY = "knowledge_entropy.parquet"
#: What `manifest.json`'s "format" says for directories written by this version.
MANIFEST_FORMAT = "injection-run/1"


@dataclass(frozen=True)
class Column:
    name: str
    type: pa.DataType
    doc: str

    @property
    def numpy_dtype(self) -> np.dtype:
        return np.dtype(self.type.to_pandas_dtype())


#: Identity of a probe-log row: the run step and the probe's address in the knowledge set.
PROBE_KEY_COLUMNS: tuple[Column, ...] = (
    Column("step", pa.int32(), "run step k (0 = the loaded checkpoint, k = after k updates)"),
    Column("paragraph", pa.int32(), "paragraph index in the knowledge set"),
    Column(
        "scenario", pa.string(), "the paragraph's scenario (paraphrase, duplicate, once, ..., none = never injected)"
    ),
    Column("kind", pa.string(), "probe kind: mem, sem or comp"),
    Column("probe", pa.int16(), "probe index within (paragraph, kind)"),
)

#: What the probe evaluation computes for every probe; `harness.rundir.SCORE_NAMES` is their order.
SCORE_COLUMNS: tuple[Column, ...] = (
    Column("logprob", pa.float32(), "ℓ: mean log-probability of the target tokens (natural log)"),
    Column("logprob_sum", pa.float32(), "sum of the target tokens' log-probabilities"),
    Column("first_logprob", pa.float32(), "log-probability of the first target token"),
    Column("exact_match", pa.bool_(), "greedy decoding of the input yields exactly the target tokens"),
    Column("first_rank", pa.int32(), "vocabulary entries scored above the first target token (0 = greedy pick)"),
)
SCORE_NAMES: tuple[str, ...] = tuple(c.name for c in SCORE_COLUMNS)
#: Per-token dynamics of the target span (a run's `probe_token_stats`), from the same logits as ℓ: one number
#: per probe for what varies along its target tokens.
TOKEN_COLUMNS: tuple[Column, ...] = (
    Column("surprisal_mean", pa.float32(), "mean over the target tokens of −log p (nats)"),
    Column("surprisal_max", pa.float32(), "the largest −log p of a target token (nats)"),
    Column("entropy_mean", pa.float32(), "mean entropy of the predictive distribution at the target positions (nats)"),
    Column("rank_mean", pa.float32(), "mean over the target tokens of the vocabulary entries scored above each"),
    Column("rank_max", pa.int32(), "the worst target token's rank (vocabulary entries scored above it)"),
)
TOKEN_NAMES: tuple[str, ...] = tuple(c.name for c in TOKEN_COLUMNS)
#: Score columns that can serve as ℓ in the analysis (real-valued log-probabilities).
LOGPROB_COLUMNS: tuple[str, ...] = ("logprob", "logprob_sum", "first_logprob")

INJECTION_COLUMNS: tuple[Column, ...] = (
    Column("step", pa.int32(), "run step whose batch carries the copy"),
    Column("paragraph", pa.int32(), "paragraph index"),
    Column("scenario", pa.string(), "the paragraph's scenario"),
    Column("variant", pa.int16(), "0 = original text, j = paraphrase j"),
    Column("row", pa.int32(), "global batch row"),
    Column("offset", pa.int32(), "position of the copy's first token in that row"),
    Column("tokens", pa.int32(), "tokens written, EOS included"),
)

METRIC_COLUMNS: tuple[Column, ...] = (
    Column("step", pa.int32(), "run step after the update (k + 1 for update k)"),
    Column("loss", pa.float32(), "mean training loss of the global batch (the cross-entropy, without z-loss)"),
    Column("lr", pa.float64(), "learning rate of the update"),
    Column("grad_norm", pa.float32(), "global gradient norm before clipping"),
    Column("tokens_per_s", pa.float32(), "training throughput of the update"),
    Column("max_mem_gib", pa.float32(), "peak accelerator memory so far (NaN on a CPU)"),
    Column("eval_s", pa.float32(), "seconds spent scoring probes after this update (0 when not evaluated)"),
    Column("skipped", pa.bool_(), "the update was skipped (non-finite loss or gradient norm, when configured)"),
    Column("z_loss", pa.float32(), "the z-loss term of the objective (NaN for runs without one)"),
    Column("masked_rows", pa.int32(), "rows whose original instance the run's repetition filter gave no loss"),
)


#: `knowledge_entropy.parquet/`: written by runs that measure knowledge entropy (`knowledge_entropy.interval`).
KNOWLEDGE_ENTROPY_COLUMNS: tuple[Column, ...] = (
    Column("step", pa.int32(), "run step k of the measurement"),
    Column("layer", pa.int16(), "decoder layer, from 0"),
    Column("entropy", pa.float64(), "entropy of the layer's normalised mean absolute feed-forward coefficients (nats)"),
)


def schema(columns: Sequence[Column]) -> pa.Schema:
    return pa.schema([(c.name, c.type) for c in columns])


PROBE_SCHEMA = schema(PROBE_KEY_COLUMNS + SCORE_COLUMNS)


def score_columns(token_stats: bool = False) -> tuple[Column, ...]:
    """What the probe evaluation computes for a run: the scores, and the token columns where asked."""
    return SCORE_COLUMNS + (TOKEN_COLUMNS if token_stats else ())


def probe_schema(token_stats: bool = False) -> pa.Schema:
    """The probe log's schema for a run with or without the token columns."""
    return schema(PROBE_KEY_COLUMNS + score_columns(token_stats))


INJECTION_SCHEMA = schema(INJECTION_COLUMNS)
METRICS_SCHEMA = schema(METRIC_COLUMNS)
KNOWLEDGE_ENTROPY_SCHEMA = schema(KNOWLEDGE_ENTROPY_COLUMNS)

_PART = re.compile(r"^part-(\d+)-(\d+)\.parquet$")


def is_part(name: str) -> bool:
    return _PART.match(name) is not None


def write_table_atomic(table: pa.Table, path: Path) -> Path:
    return write_atomic(path, lambda handle: pq.write_table(table, handle))


class PartWriter:
    """Rows of one schema, buffered by step and written as step-range parts into a directory."""

    def __init__(self, directory: Path, table_schema: pa.Schema, flush_steps: int = 25) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.schema = table_schema
        self.flush_steps = flush_steps
        self._columns: dict[str, list[np.ndarray]] = {name: [] for name in table_schema.names}
        self._steps: list[int] = []

    def add(self, step: int, columns: dict[str, Any]) -> None:
        """Buffer the rows of one step (`columns` maps every schema column to an array or list)."""
        for name in self.schema.names:
            self._columns[name].append(np.asarray(columns[name]))
        self._steps.append(step)
        if len(self._steps) >= self.flush_steps:
            self.flush()

    def flush(self) -> Path | None:
        if not self._steps:
            return None
        arrays = [
            pa.array(np.concatenate(self._columns[f.name]), type=f.type)
            if f.type != pa.string()
            else pa.array([str(v) for chunk in self._columns[f.name] for v in chunk], type=pa.string())
            for f in self.schema
        ]
        path = self.directory / f"part-{min(self._steps):06d}-{max(self._steps):06d}.parquet"
        write_table_atomic(pa.Table.from_arrays(arrays, schema=self.schema), path)
        self._columns = {name: [] for name in self.schema.names}
        self._steps = []
        return path

    def parts(self) -> list[str]:
        return sorted(p.name for p in self.directory.iterdir() if is_part(p.name))

    def keep_only(self, names: Sequence[str]) -> list[str]:
        """Delete parts (and stray temporaries) not in `names`: rows newer than a resumed checkpoint."""
        keep = set(names)
        removed = []
        for p in self.directory.iterdir():
            if p.name not in keep and (is_part(p.name) or p.name.endswith(".tmp")):
                p.unlink()
                removed.append(p.name)
        return sorted(removed)


def write_injections(run_dir: Path, records: Sequence[Any]) -> Path:
    """`injections.parquet`: one row per injected paragraph copy (records carry the INJECTION_COLUMNS)."""
    cols = {c.name: [getattr(r, c.name) for r in records] for c in INJECTION_COLUMNS}
    return write_table_atomic(pa.Table.from_pydict(cols, schema=INJECTION_SCHEMA), Path(run_dir) / INJECTIONS)


def read_table(path: Path):
    """A part directory or single file as one pandas DataFrame, in the order it was written."""
    path = Path(path)
    if path.is_dir():
        files = [path / n for n in sorted(os.listdir(path)) if is_part(n)]
        if not files:
            return pd.DataFrame()
        return pa.concat_tables([pq.read_table(f) for f in files]).to_pandas()
    return pq.read_table(path).to_pandas()


def read_manifest(run_dir: Path) -> dict[str, Any]:
    """`manifest.json` as a dict; UserError naming the file when it is missing or not a JSON object."""
    file = Path(run_dir) / MANIFEST
    if not file.is_file():
        raise UserError(f"{file}: missing (a run directory needs {PROBES}, {INJECTIONS} and {MANIFEST})")
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise UserError(
            f"{file}: malformed JSON ({err or 'nested too deeply'}): the run's record is damaged (cut short by a full "
            f"disk or a copy?); restore it, or move {Path(run_dir)} away and run the command again to start the run "
            "over"
        ) from None
    if not isinstance(manifest, dict):
        raise UserError(f"{file}: expected a JSON object at the top level, found {type(manifest).__name__}")
    return manifest


# ---- capacity runs -----------------------------------------------------------------------------------------

#: manifest.json key of a run that trains a model on a knowledge set with a value space (`injection capacity`).
CAPACITY = "capacity"


@dataclass(frozen=True)
class CapacityManifest:
    """`manifest.json["capacity"]`: what the stored-knowledge analysis needs beyond the probe log.

        "capacity": {
          "model": "d64-L2",                                  # runs of one model are compared across data sizes
          "parameters": {"total": 412160, "non_embedding": 150016},
          "attributes": [{"name": "birth_date", "size": 67200}, ...,   # mem/sem probe i asks for attribute i
                         {"name": "employer_city", "size": 200, "derived_from": "employer"}],
          "exposures": {"bios": {"steps": [0, 600], "exposures": [0, 100]}},
          "people": {"bios": 20000},                          # people of each knowledge base (optional)
          "name_space": 160000000,                            # N0, the names the generator can make (optional)
          "context": [{"name": "birth_date", "size": 67200}, ..., {"name": "gender", "size": 2}]   # (optional)
        }

    `exposures` maps each scenario of the probe log (one knowledge base) to the mean number of times each of
    its facts has been seen, as a piecewise-linear function of the run step through the given points (constant
    after the last one). A knowledge base trained first and then left alone (while another is learned) has
    a flat piece at the end.

    `people` is how many people a knowledge base has; the probe log may hold a uniform sample of them (its
    paragraphs), and totals are then estimated from the sample. `context` lists what `ctx` probe j scores: the
    value of context[j] inside the biography's own text (`name` probe 0 scores the name that opens it); an entry
    (attribute or context value) `derived_from` another adds no information of its own.
    """

    model: str
    parameters: int
    non_embedding_parameters: int
    attributes: tuple[tuple[str, int], ...]
    """(name, |V_a|) in probe order."""
    exposures: dict[str, tuple[tuple[float, ...], tuple[float, ...]]]
    """scenario -> (run steps, exposures at those steps). Steps may be fractional: where an epoch ends inside
    an update's batch."""
    people: dict[str, int] = field(default_factory=dict)
    """scenario -> people of that knowledge base (missing: the people of the probe log)."""
    name_space: int | None = None
    """N0: how many full names the generator could have drawn."""
    context: tuple[tuple[str, int], ...] = ()
    """(name, number of choices) that `ctx` probe j scores in context."""
    derived: dict[str, str] = field(default_factory=dict)
    """attribute or context name -> the one it follows (it carries no information of its own)."""

    def exposures_at(self, scenario: str, steps: np.ndarray) -> np.ndarray:
        knots_steps, knots_values = self.exposures[scenario]
        return np.interp(np.asarray(steps, dtype=np.float64), knots_steps, knots_values)

    def to_json(self) -> dict[str, Any]:
        def entries(pairs: tuple[tuple[str, int], ...]) -> list[dict[str, Any]]:
            return [
                {"name": n, "size": size, **({"derived_from": self.derived[n]} if n in self.derived else {})}
                for n, size in pairs
            ]

        out: dict[str, Any] = {
            "model": self.model,
            "parameters": {"total": self.parameters, "non_embedding": self.non_embedding_parameters},
            "attributes": entries(self.attributes),
            "exposures": {s: {"steps": list(st), "exposures": list(ex)} for s, (st, ex) in self.exposures.items()},
        }
        if self.people:
            out["people"] = dict(self.people)
        if self.name_space is not None:
            out["name_space"] = self.name_space
        if self.context:
            out["context"] = entries(self.context)
        return out

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any], file: Path) -> CapacityManifest:
        """Parse and check `manifest[CAPACITY]`; UserError naming the file and the field."""
        raw = manifest.get(CAPACITY)
        where = f"{file}: field {CAPACITY!r}"
        if raw is None:
            raise UserError(
                f"{where} is missing: not a capacity run (written by `injection capacity`, or add it: "
                f"model, parameters, attributes, exposures)"
            )
        if not isinstance(raw, dict):
            raise UserError(f"{where}: expected an object, found {type(raw).__name__}")
        missing = [k for k in ("model", "parameters", "attributes", "exposures") if k not in raw]
        if missing:
            raise UserError(f"{where}: missing {', '.join(map(repr, missing))}")

        def count(value: Any, name: str, minimum: int) -> int:
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise UserError(f"{where}, {name}: expected an integer >= {minimum}, found {value!r}")
            return value

        params = raw["parameters"]
        if not isinstance(params, dict):
            raise UserError(f"{where}, 'parameters': expected {{total, non_embedding}}, found {params!r}")
        total = count(params.get("total"), "'parameters.total'", 1)
        non_embedding = count(params.get("non_embedding"), "'parameters.non_embedding'", 1)
        derived: dict[str, str] = {}

        def named_sizes(key: str, required: bool) -> tuple[tuple[str, int], ...]:
            entries = raw.get(key)
            if entries is None and not required:
                return ()
            if not isinstance(entries, list) or not entries:
                raise UserError(f"{where}, {key!r}: expected a non-empty list of {{name, size}}")
            parsed = []
            for i, a in enumerate(entries):
                if not isinstance(a, dict) or not isinstance(a.get("name"), str):
                    raise UserError(f"{where}, {key!r}[{i}]: expected {{name, size}}, found {a!r}")
                parsed.append((a["name"], count(a.get("size"), f"{key!r}[{i}].size", 2)))
                source = a.get("derived_from")
                if source is not None:
                    if not isinstance(source, str):
                        raise UserError(f"{where}, {key!r}[{i}].derived_from: expected a name, found {source!r}")
                    derived[a["name"]] = source
            return tuple(parsed)

        parsed_attributes = named_sizes("attributes", True)
        context = named_sizes("context", False)
        names = {n for n, _ in parsed_attributes + context}
        for name, source in derived.items():
            if source not in names or source == name:
                raise UserError(
                    f"{where}: {name!r} is derived_from {source!r}, which is not another attribute or context value"
                )
        exposures_raw = raw["exposures"]
        if not isinstance(exposures_raw, dict) or not exposures_raw:
            raise UserError(f"{where}, 'exposures': expected an object mapping each scenario to {{steps, exposures}}")
        exposures = {}
        for scenario, curve in exposures_raw.items():
            here = f"{where}, 'exposures.{scenario}'"
            steps = curve.get("steps") if isinstance(curve, dict) else None
            values = curve.get("exposures") if isinstance(curve, dict) else None
            if not isinstance(steps, list) or not isinstance(values, list) or not steps or len(steps) != len(values):
                raise UserError(f"{here}: expected {{steps, exposures}}: two lists of the same non-zero length")
            if any(isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0 for v in steps) or any(
                b <= a for a, b in zip(steps, steps[1:])
            ):
                raise UserError(f"{here}, steps: expected increasing run steps >= 0, found {steps}")
            if any(isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0 for v in values) or any(
                b < a for a, b in zip(values, values[1:])
            ):
                raise UserError(f"{here}, exposures: expected non-decreasing numbers >= 0, found {values}")
            exposures[str(scenario)] = (tuple(float(v) for v in steps), tuple(float(v) for v in values))
        people_raw = raw.get("people", {})
        if not isinstance(people_raw, dict):
            raise UserError(f"{where}, 'people': expected an object mapping each scenario to its number of people")
        people = {str(s): count(n, f"'people.{s}'", 1) for s, n in people_raw.items()}
        name_space = raw.get("name_space")
        if name_space is not None:
            name_space = count(name_space, "'name_space'", 2)
        return cls(
            str(raw["model"]),
            total,
            non_embedding,
            parsed_attributes,
            exposures,
            people,
            name_space,
            context,
            derived,
        )
