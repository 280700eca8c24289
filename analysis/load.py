"""Read a run directory into a probe matrix: one row per probe, one column per logged step.

Only `probes.parquet` (a file or a directory of parts), `injections.parquet` and `manifest.json` are read;
extra columns and keys are ignored so that a run directory written by any tool in this format works.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from harness import rundir
from harness.errors import UserError

PROBE_KEYS = tuple(c.name for c in rundir.PROBE_KEY_COLUMNS)
#: Probe-log columns that can serve as ℓ.
METRIC_COLUMNS = rundir.LOGPROB_COLUMNS
#: What the analysis needs of injections.parquet (its other columns are informational).
INJECTION_KEYS = ("step", "paragraph")
KIND_ORDER = ("mem", "sem", "comp")
#: Priming probes (kind `prime`) measure something else (analysis.priming): they form no group of the fits.
PRIME_KIND = "prime"
#: Manifest key where a run records how it was designed to be analysed.
ANALYSIS_DEFAULTS = "analysis_defaults"
#: Manifest key naming a run's twin: its directory, relative to the run directory (`twin_of` names the way back).
TWIN = "twin"
#: ℓ of a run and of its twin at the first logged step may differ by this much (nats) before the analysis warns:
#: both score the same checkpoint, so only a different machine's rounding separates them.
TWIN_START_TOLERANCE = 1e-3


@dataclass
class KnowledgeEntropy:
    """A run's knowledge entropy measurements (knowledge_entropy.parquet)."""

    steps: np.ndarray
    """Measured run steps, ascending (int64)."""
    layers: np.ndarray
    """float64 [steps x layers]: each layer's entropy at each measured step."""

    @property
    def total(self) -> np.ndarray:
        """Knowledge entropy: the sum over layers, at each measured step."""
        return self.layers.sum(axis=1)


@dataclass
class Run:
    """One run directory as matrices. Probe i is (paragraph[i], kind[i], probe_index[i]) of scenario[i]."""

    path: Path
    manifest: dict
    steps: np.ndarray
    """Logged run steps, sorted ascending (int64). Column j of every matrix is step `steps[j]`."""
    paragraph: np.ndarray
    kind: np.ndarray
    """Probe kind per probe (object array of str)."""
    probe_index: np.ndarray
    scenario: np.ndarray
    metrics: dict[str, np.ndarray] = field(default_factory=dict)
    """Column name -> float64 matrix [probes x steps] for each metric column present in the log."""
    exact_match: np.ndarray | None = None
    """bool matrix [probes x steps], or None when the log has no `exact_match` column."""
    token_stats: dict[str, np.ndarray] = field(default_factory=dict)
    """Token column (harness.rundir.TOKEN_NAMES) -> float64 matrix [probes x steps], for the columns the log has."""
    encounters: dict[int, np.ndarray] = field(default_factory=dict)
    """Paragraph -> sorted distinct run steps whose batch carried it (from injections.parquet)."""
    injection_steps_by_scenario: dict[str, np.ndarray] = field(default_factory=dict)
    knowledge_entropy: KnowledgeEntropy | None = None
    """Where the run measured it (an optional fourth file of the run directory)."""

    @property
    def n_probes(self) -> int:
        return len(self.paragraph)

    @property
    def tokens_per_step(self) -> int | None:
        value = self.manifest.get("tokens_per_step")
        return int(value) if isinstance(value, (int, float)) and value > 0 else None

    @property
    def start_tokens(self) -> int | None:
        """Tokens the original run had trained on at the run's starting checkpoint, where the manifest says."""
        value = self.manifest.get("start_tokens")
        return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0 else None

    @property
    def label(self) -> str:
        return run_label(self.manifest, self.path)

    @property
    def analysis_defaults(self) -> dict:
        """The manifest's `analysis_defaults` ({"window": W, "encounter_spacing": D or None}), validated on load;
        {} when the run did not record them."""
        return self.manifest.get(ANALYSIS_DEFAULTS) or {}

    def encounter_spacing(self) -> int | None:
        """D: the smallest gap between consecutive encounters of any paragraph (None: no paragraph has two).

        The manifest's value when the run recorded one, else computed from injections.parquet.
        """
        if "encounter_spacing" in self.analysis_defaults:
            return self.analysis_defaults["encounter_spacing"]
        gaps = [int(np.diff(s).min()) for s in self.encounters.values() if len(s) > 1]
        return min(gaps) if gaps else None

    def metric(self, name: str) -> np.ndarray:
        if name not in self.metrics:
            present = ", ".join(sorted(self.metrics)) or "none"
            raise UserError(
                f"{self.path / 'probes.parquet'}: metric column {name!r} is missing (metric columns present: {present})"
            )
        return self.metrics[name]

    def groups(self) -> list[tuple[str, str]]:
        """(scenario, kind) pairs in a stable order: scenarios by first paragraph, kinds mem/sem/comp first
        (priming probes form no group)."""
        first_paragraph: dict[str, int] = {}
        for scenario, paragraph in zip(self.scenario, self.paragraph):
            first_paragraph[scenario] = min(first_paragraph.get(scenario, paragraph), paragraph)
        scenarios = sorted(first_paragraph, key=lambda s: (first_paragraph[s], s))
        kinds = sorted(set(self.kind) - {PRIME_KIND}, key=_kind_sort_key)
        present = set(zip(self.scenario, self.kind))
        return [(s, k) for s in scenarios for k in kinds if (s, k) in present]


def _kind_sort_key(kind: str) -> tuple[int, str]:
    return (KIND_ORDER.index(kind), kind) if kind in KIND_ORDER else (len(KIND_ORDER), kind)


#: A checkpoint as a user names it from the catalog: FAMILY@STEP or FAMILY@STAGE, optionally +options.
_CATALOG_REFERENCE = re.compile(r"^[A-Za-z0-9][\w.-]*@[\w.+-]+$")


def run_label(manifest: dict, path: Path) -> str:
    """A short name for a run, as the user would call it.

    In order: the manifest's `label`; the checkpoint as typed in the run's configuration when it is a catalog
    reference (`tiny@mid`, `olmo-7b@40000`), not a directory; family@step of the loaded checkpoint (plus the
    batch size); the directory name.
    """
    if isinstance(manifest.get("label"), str) and manifest["label"]:
        return manifest["label"]
    config = manifest.get("config") if isinstance(manifest.get("config"), dict) else {}
    typed = config.get("checkpoint")
    if isinstance(typed, str) and _CATALOG_REFERENCE.match(typed):
        return typed
    checkpoint = manifest.get("checkpoint")
    sources = [checkpoint if isinstance(checkpoint, dict) else {}, manifest]
    if isinstance(checkpoint, str) and checkpoint:
        name = checkpoint
    else:
        family = next((s["family"] for s in sources if isinstance(s.get("family"), str)), None)
        step = next((s["step"] for s in sources if isinstance(s.get("step"), (int, str))), None)
        name = f"{family}@{step}" if family and step is not None else (family or "")
    batch = next(
        (s[k] for s in sources for k in ("global_batch_size", "batch_size") if isinstance(s.get(k), int)), None
    )
    if not name:
        return path.name
    return f"{name} bs={batch}" if batch else name


def load_run(path: str | Path) -> Run:
    """Read and validate a run directory; raise UserError naming the file and field on bad input."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(
            f"{path}: not a run directory (expected a directory with probes.parquet, "
            "injections.parquet and manifest.json)"
        )
    manifest = _read_manifest(path)
    table = _read_table(path / rundir.PROBES, PROBE_KEYS, METRIC_COLUMNS + ("exact_match",) + rundir.TOKEN_NAMES)
    metric_names = [c for c in METRIC_COLUMNS if c in table.column_names]
    if not metric_names:
        raise UserError(f"{path / rundir.PROBES}: none of the metric columns {', '.join(METRIC_COLUMNS)} is present")
    injections = _read_table(path / rundir.INJECTIONS, INJECTION_KEYS, ("scenario",))
    run = _to_matrices(path, manifest, table, metric_names)
    _attach_encounters(run, injections)
    _check_agreement(run, injections)
    if (path / rundir.KNOWLEDGE_ENTROPY).exists():
        run.knowledge_entropy = read_knowledge_entropy(path / rundir.KNOWLEDGE_ENTROPY)
    return run


#: Manifest fields that count steps, rows or tokens: whole numbers >= 0 where present (JSON allows Infinity, -1, 1.5).
COUNT_FIELDS = ("start_step", "total_steps", "last_step", "start_tokens", "global_batch_size", "seq_len", "n_probes")
#: The largest step a probe log can hold (its `step` column is int32).
MAX_STEP = 2**31 - 1


def read_knowledge_entropy(file: Path) -> KnowledgeEntropy:
    """knowledge_entropy.parquet as a steps × layers matrix; UserError unless every step has every layer once."""
    table = _read_table(file, ("step", "layer", "entropy"), ())
    if table.num_rows == 0:
        raise UserError(f"{file}: no measurement")
    step, layer = _int_column(table, "step", file), _int_column(table, "layer", file)
    steps, layers = np.unique(step), np.unique(layer)
    matrix = np.full((len(steps), len(layers)), np.nan)
    matrix[np.searchsorted(steps, step), np.searchsorted(layers, layer)] = table.column("entropy").to_numpy()
    if table.num_rows != matrix.size or np.isnan(matrix).any():
        raise UserError(f"{file}: expected one entropy per (step, layer) for {len(layers)} layers at every step")
    return KnowledgeEntropy(steps=steps, layers=matrix)


def _read_manifest(path: Path) -> dict:
    manifest = rundir.read_manifest(path)
    file = path / rundir.MANIFEST
    for key in COUNT_FIELDS:
        value = manifest.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 2**63):
            raise UserError(f"{file}: field {key!r} must be a whole number >= 0, found {value!r}")
    tps = manifest.get("tokens_per_step")
    if tps is not None and (isinstance(tps, bool) or not isinstance(tps, (int, float)) or tps <= 0):
        raise UserError(f"{file}: field 'tokens_per_step' must be a positive integer, found {tps!r}")
    defaults = manifest.get(ANALYSIS_DEFAULTS)
    if defaults is not None:
        if not isinstance(defaults, dict):
            raise UserError(
                f"{file}: field {ANALYSIS_DEFAULTS!r} must be an object "
                f'{{"window": W, "encounter_spacing": D or null}}, found {defaults!r}'
            )
        for key, nullable in (("window", False), ("encounter_spacing", True)):
            if key not in defaults:
                continue
            value = defaults[key]
            if value is None and nullable:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                allowed = "a positive integer" + (" or null" if nullable else "")
                raise UserError(f"{file}: field '{ANALYSIS_DEFAULTS}.{key}' must be {allowed}, found {value!r}")
    return manifest


def _read_table(file: Path, required: tuple[str, ...], optional: tuple[str, ...]) -> pa.Table:
    if not file.exists():
        raise UserError(f"{file}: missing (a run directory needs probes.parquet, injections.parquet and manifest.json)")
    try:
        dataset = ds.dataset(file, format="parquet")
        names = set(dataset.schema.names)
        missing = [c for c in required if c not in names]
        if missing:
            raise UserError(f"{file}: missing required column(s) {', '.join(missing)}")
        wanted = list(required) + [c for c in optional if c in names]
        return dataset.to_table(columns=wanted)
    except (pa.ArrowInvalid, OSError) as err:
        raise UserError(f"{file}: not readable as Parquet ({err})") from None


def _codes(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """Dictionary codes and values of a string column: far cheaper than materialising millions of str."""
    encoded = pc.dictionary_encode(column).combine_chunks()
    return encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64), np.array(
        encoded.dictionary.to_pylist(), dtype=object
    )


def _int_column(table: pa.Table, name: str, file: Path) -> np.ndarray:
    column = table.column(name)
    if column.null_count:
        raise UserError(f"{file}: column {name!r} has {column.null_count} null value(s)")
    if not pa.types.is_integer(column.type):
        raise UserError(f"{file}: column {name!r} must be integer, found {column.type}")
    if pa.types.is_uint64(column.type) and len(column) and pc.max(column).as_py() > np.iinfo(np.int64).max:
        raise UserError(f"{file}: column {name!r} holds {pc.max(column).as_py()}, beyond any run step or paragraph")
    return column.to_numpy().astype(np.int64)


def _to_matrices(path: Path, manifest: dict, table: pa.Table, metric_names: list[str]) -> Run:
    file = path / rundir.PROBES
    if table.num_rows == 0:
        raise UserError(f"{file}: the probe log is empty")
    step = _int_column(table, "step", file)
    paragraph = _int_column(table, "paragraph", file)
    probe = _int_column(table, "probe", file)
    kind_code, kinds = _codes(table.column("kind"))
    scenario_code, scenarios = _codes(table.column("scenario"))
    if (kind_code < 0).any() or (scenario_code < 0).any():
        raise UserError(f"{file}: columns 'kind' and 'scenario' must not be null")

    # One int64 key per probe identity; np.unique's inverse gives each row its probe's matrix row.
    p_lo, k_n, q_lo = paragraph.min(), len(kinds), probe.min()
    q_span = probe.max() - q_lo + 1
    key = ((paragraph - p_lo) * k_n + kind_code) * q_span + (probe - q_lo)
    keys, first_row, row_probe = _unique(key)
    steps, _, row_step = _unique(step)
    n_probes, n_steps = len(keys), len(steps)

    counts = np.bincount(row_probe * n_steps + row_step, minlength=n_probes * n_steps)
    if step.min() < 0 or step.max() > MAX_STEP:
        r = int(np.argmax((step < 0) | (step > MAX_STEP)))
        raise UserError(f"{file}: row {r}: step {step[r]} is not a run step (0 … {MAX_STEP:,})")
    total = manifest.get("total_steps")
    if total is not None and step.max() > total:
        r = int(np.argmax(step > total))
        raise UserError(
            f"{file}: row {r}: step {step[r]} is beyond the run's {total} steps (manifest.json total_steps): the "
            "files belong to different runs"
        )
    if (counts > 1).any():
        cell = int(np.argmax(counts > 1))
        raise UserError(
            f"{file}: duplicate rows for step {steps[cell % n_steps]}, "
            f"{_describe_probe(paragraph, kinds[kind_code], probe, first_row[cell // n_steps])}"
        )
    if (counts == 0).any():
        missing = counts.reshape(n_probes, n_steps) == 0
        bad_steps = steps[missing.any(axis=0)]
        raise UserError(
            f"{file}: {int(missing.sum())} (step, probe) row(s) missing: every logged step must carry every probe; "
            f"incomplete steps: {_short_list(bad_steps)}"
        )

    run = Run(
        path=path,
        manifest=manifest,
        steps=steps,
        paragraph=paragraph[first_row],
        kind=kinds[kind_code[first_row]],
        probe_index=probe[first_row],
        scenario=scenarios[scenario_code[first_row]],
    )
    inconsistent = np.flatnonzero(scenario_code != scenario_code[first_row][row_probe])
    if len(inconsistent):
        r = inconsistent[0]
        raise UserError(
            f"{file}: row {r}: {_describe_probe(paragraph, kinds[kind_code], probe, r)} changes "
            f"scenario from {scenarios[scenario_code[first_row[row_probe[r]]]]!r} to {scenarios[scenario_code[r]]!r}"
        )

    status = manifest.get("status")
    for name in metric_names:
        column = table.column(name)
        if not (pa.types.is_floating(column.type) or pa.types.is_integer(column.type)):
            raise UserError(f"{file}: column {name!r} must be numeric (log-probabilities), found {column.type}")
        values = column.to_numpy(zero_copy_only=False).astype(np.float64)
        bad = np.flatnonzero(~np.isfinite(values))
        if len(bad):
            shown = "; ".join(
                f"row {r} (step {step[r]}, {_describe_probe(paragraph, kinds[kind_code], probe, r)})" for r in bad[:5]
            )
            why = (
                f" (the run diverged: manifest.json says {manifest.get('stop')}; analyse it up to an earlier "
                "step, or resume it with nonfinite: skip)"
                if status == "diverged"
                else ""
            )
            raise UserError(
                f"{file}: column {name!r} has {len(bad)} NaN/infinite value(s): {shown}"
                + (" ..." if len(bad) > 5 else "")
                + why
            )
        matrix = np.empty((n_probes, n_steps))
        matrix[row_probe, row_step] = values
        run.metrics[name] = matrix
    if "exact_match" in table.column_names:
        column = table.column("exact_match")
        if not pa.types.is_boolean(column.type):
            raise UserError(f"{file}: column 'exact_match' must be boolean (true/false), found {column.type}")
        column = column.fill_null(False)
        matrix = np.zeros((n_probes, n_steps), dtype=bool)
        matrix[row_probe, row_step] = column.to_numpy(zero_copy_only=False).astype(bool)
        run.exact_match = matrix
    for name in rundir.TOKEN_NAMES:
        if name in table.column_names:
            matrix = np.full((n_probes, n_steps), np.nan)
            matrix[row_probe, row_step] = table.column(name).to_numpy(zero_copy_only=False).astype(np.float64)
            run.token_stats[name] = matrix
    return run


def _attach_encounters(run: Run, injections: pa.Table) -> None:
    file = run.path / rundir.INJECTIONS
    step = _int_column(injections, "step", file)
    paragraph = _int_column(injections, "paragraph", file)
    pairs = np.unique(np.stack([paragraph, step], axis=1), axis=0) if len(step) else np.zeros((0, 2), np.int64)
    for p in np.unique(pairs[:, 0]):
        run.encounters[int(p)] = pairs[pairs[:, 0] == p, 1]
    # Injection markers per scenario come from the probe log's scenario of each paragraph, so that both
    # files agree even when injections.parquet has no scenario column.
    scenario_of = dict(zip(run.paragraph.tolist(), run.scenario.tolist()))
    by_scenario: dict[str, set[int]] = {}
    for p, steps in run.encounters.items():
        if p in scenario_of:
            by_scenario.setdefault(scenario_of[p], set()).update(steps.tolist())
    run.injection_steps_by_scenario = {s: np.array(sorted(v), dtype=np.int64) for s, v in by_scenario.items()}


def _check_agreement(run: Run, injections: pa.Table) -> None:
    """The three files must describe one run: every injected paragraph has probes (under an injected scenario, with
    the scenario injections.parquet gives it), every injection lies inside the run, and the manifest's counts match
    the tables. UserError naming the row and both files otherwise."""
    file, log = run.path / rundir.INJECTIONS, run.path / rundir.PROBES
    manifest = run.path / rundir.MANIFEST
    step = _int_column(injections, "step", file)
    paragraph = _int_column(injections, "paragraph", file)
    scenario_of = dict(zip(run.paragraph.tolist(), run.scenario.tolist()))
    total = run.manifest.get("total_steps")
    given = injections.column("scenario").to_pylist() if "scenario" in injections.column_names else None
    for r, (k, p) in enumerate(zip(step.tolist(), paragraph.tolist())):
        if p not in scenario_of:
            raise UserError(
                f"{file}: row {r}: paragraph {p} is injected at step {k}, but {log.name} has no probe of it: the "
                "knowledge set of the probes is not the one injected"
            )
        if scenario_of[p] == "none":
            raise UserError(
                f"{file}: row {r}: paragraph {p} is injected at step {k}, but {log.name} logs it as a control "
                "(scenario 'none')"
            )
        if given is not None and given[r] is not None and given[r] != scenario_of[p]:
            raise UserError(
                f"{file}: row {r}: paragraph {p} has scenario {given[r]!r}, {log.name} gives it {scenario_of[p]!r}"
            )
        if k < 0 or (total is not None and k >= total):
            raise UserError(
                f"{file}: row {r}: injection step {k} is outside the run's steps 0 … {(total or 1) - 1} "
                f"({manifest.name} total_steps {total})"
            )
    expected = run.manifest.get("n_probes")
    if expected is not None and expected != run.n_probes:
        raise UserError(
            f"{manifest}: n_probes is {expected}, {log.name} holds {run.n_probes} probes: the probes are not those "
            "of the run's knowledge set"
        )
    copies = run.manifest.get("n_injected_copies")
    if isinstance(copies, int) and not isinstance(copies, bool) and copies != injections.num_rows:
        raise UserError(
            f"{manifest}: n_injected_copies is {copies}, {file.name} has {injections.num_rows} rows: the files belong "
            "to different runs"
        )


@dataclass
class Twin:
    """The twin of a run, aligned with it: the same continuation with nothing spliced (injection.engine.twin)."""

    path: Path
    run: Run
    rows: np.ndarray
    """int64 [run probes]: the twin's probe (matrix row) of each of the run's probes."""
    columns: np.ndarray
    """int64 [run steps]: the twin's column of each of the run's logged steps."""

    def metric(self, name: str) -> np.ndarray:
        """The twin's `name` matrix in the run's probe and step order."""
        return self.run.metric(name)[self.rows][:, self.columns]


def twin_path(run: Run, baseline: str | Path | None = None) -> tuple[Path | None, str | None]:
    """(the twin's directory, or None; a warning, or None): `baseline` where given, else the manifest's `twin`
    where that directory holds a run. A named twin that is not there yet is a warning, not an error."""
    if baseline is not None:
        return Path(baseline), None
    named = run.manifest.get(TWIN)
    if named is None:
        return None, None
    file = run.path / rundir.MANIFEST
    if not isinstance(named, str) or not named:
        raise UserError(f"{file}: field {TWIN!r} must name the twin's directory, found {named!r}")
    path = run.path / named
    if not (path / rundir.MANIFEST).is_file():
        return None, f"the manifest names the twin {path}, which holds no run yet: not measured against a twin"
    return path, None


def load_twin(run: Run, path: Path) -> Twin:
    """The twin run at `path`, aligned with `run` probe by probe (paragraph, kind, probe index) and step by step;
    UserError when it lacks a probe or a logged step of the run."""
    twin = load_run(path)
    key_of = {k: i for i, k in enumerate(zip(twin.paragraph.tolist(), twin.kind.tolist(), twin.probe_index.tolist()))}
    keys = list(zip(run.paragraph.tolist(), run.kind.tolist(), run.probe_index.tolist()))
    missing = [k for k in keys if k not in key_of]
    if missing:
        p, kind, q = missing[0]
        raise UserError(
            f"{path / rundir.PROBES}: the twin lacks {len(missing)} of the run's probes (first: paragraph {p}, "
            f"kind {kind!r}, probe {q}); a twin logs the same probes as its run"
        )
    columns = np.searchsorted(twin.steps, run.steps)
    absent = run.steps[
        (columns >= len(twin.steps)) | (twin.steps[np.minimum(columns, len(twin.steps) - 1)] != run.steps)
    ]
    if len(absent):
        status = twin.manifest.get("status", "unknown")
        raise UserError(
            f"{path / rundir.PROBES}: the twin has not logged step(s) {_short_list(absent)} of the run (its status: "
            f"{status}); finish it with `injection run --resume {path}`, or analyse without it (--no-twin-adjust)"
        )
    return Twin(path=path, run=twin, rows=np.array([key_of[k] for k in keys], dtype=np.int64), columns=columns)


def _unique(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted distinct values, a representative row of each, and each row's position among them.

    Steps and probe keys span small integer ranges, where a lookup table beats np.unique's sort of
    millions of rows by an order of magnitude.
    """
    lo = int(values.min())
    span = int(values.max()) - lo + 1
    if span > 4 * len(values) + 1_000_000:
        uniques, first, inverse = np.unique(values, return_index=True, return_inverse=True)
        return uniques, first, inverse
    shifted = values - lo
    representative = np.full(span, -1, dtype=np.int64)
    representative[shifted] = np.arange(len(values))  # the last row of each value; any row will do
    present = np.flatnonzero(representative >= 0)
    position = np.full(span, -1, dtype=np.int64)
    position[present] = np.arange(len(present))
    return present + lo, representative[present], position[shifted]


def _describe_probe(paragraph: np.ndarray, kind: np.ndarray, probe: np.ndarray, row: int) -> str:
    return f"paragraph {paragraph[row]}, kind {kind[row]!r}, probe {probe[row]}"


def _short_list(values: np.ndarray, limit: int = 8) -> str:
    shown = ", ".join(str(v) for v in values[:limit])
    return shown + (f", ... ({len(values)} in all)" if len(values) > limit else "")
