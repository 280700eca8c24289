"""Write run directories whose probe trajectories have known, planted dynamics.

For every probe q of a scenario with encounter steps t_1 < ... < t_N:

    ℓ(k) = pre_q                                 for k <= t_1
    ℓ(t_i + j) = level_i + s_q·g_i·j/d          ramp over j = 1..d after encounter i (d = peak_delay)
    ℓ(peak_i + t) = pre_q + C_i·(1 − a·log10 t)  decay after the peak, t >= 1, until the next encounter

where level_i = ℓ(t_i), C_i = ℓ(peak_i) − pre_q = C at the peak, peak_i = t_i + d. Hence with d < w
and a >= 0: t_LAM(q,i) = t_i + d, E(q,i) = s_q·g_i, the retainability denominator is C_N and
R(q,t) = 1 − a·log10 t exactly, so the fit returns a, b = 1 and t* = 10^(1/a).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

KIND_SCALE = {"mem": 1.0, "sem": 0.6, "comp": 0.3}


@dataclass
class PlantedScenario:
    name: str
    paragraphs: list[int]
    encounters: list[int]
    gains: list[float]
    """Gain at each encounter (same length as `encounters`), before the per-kind scale."""
    decay: float
    """a: the planted decay constant."""


@dataclass
class PlantedRun:
    path: Path
    scenarios: list[PlantedScenario]
    steps: np.ndarray
    kind_scale: dict[str, float] = field(default_factory=dict)


def curve(steps: np.ndarray, encounters: list[int], gains: list[float], decay: float, peak_delay: int) -> np.ndarray:
    """ℓ(k) − pre for a probe of scale 1 at the given steps (vectorised over steps, loop over encounters)."""
    steps = np.asarray(steps, dtype=np.float64)
    out = np.zeros_like(steps)
    level_at_peak = 0.0  # C_{i-1}
    prev_peak = None
    for i, (t_i, g) in enumerate(zip(encounters, gains)):

        def decayed(k: np.ndarray, prev_peak=prev_peak, level_at_peak=level_at_peak) -> np.ndarray:
            if prev_peak is None:
                return np.zeros_like(k)
            return level_at_peak * (1 - decay * np.log10(np.maximum(k - prev_peak, 1)))

        start = decayed(np.array([float(t_i)]))[0]
        nxt = encounters[i + 1] if i + 1 < len(encounters) else np.inf
        # Between the previous peak and this encounter: the previous decay.
        seg = (steps > (prev_peak if prev_peak is not None else -np.inf)) & (steps <= t_i)
        out[seg] = decayed(steps[seg])
        ramp = (steps > t_i) & (steps <= t_i + peak_delay)
        out[ramp] = start + g * (steps[ramp] - t_i) / peak_delay
        level_at_peak = start + g
        prev_peak = t_i + peak_delay
        after = (steps > prev_peak) & (steps <= nxt)
        out[after] = level_at_peak * (1 - decay * np.log10(steps[after] - prev_peak))
    return out


def write_planted_run(
    path: Path,
    scenarios: list[PlantedScenario],
    *,
    n_steps: int,
    steps: np.ndarray | None = None,
    kinds: tuple[str, ...] = ("mem", "sem", "comp"),
    probes_per_kind: int = 5,
    kind_scale: dict[str, float] | None = None,
    peak_delay: int = 5,
    noise: float = 0.0,
    seed: int = 0,
    tokens_per_step: int = 1000,
    manifest: dict | None = None,
    parts: int = 1,
    extra_columns: bool = False,
    flat_probes: set[tuple[int, str, int]] = frozenset(),
    drift: float = 0.0,
    twin: bool = False,
) -> PlantedRun:
    """Write probes.parquet (a file if parts == 1, else a directory of parts), injections.parquet, manifest.json.

    `steps` overrides the logged steps (default 0..n_steps−1); `flat_probes` lists (paragraph, kind, probe)
    whose ℓ never changes (no gain). `drift` > 0 adds to every probe its own random walk (steps of that standard
    deviation, from 0 at the first logged step): what the model does anyway. With `twin`, PATH/twin is the run's
    twin: the same probes with the same drift and nothing injected, named in both manifests as the engine does.
    """
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    scale = dict(KIND_SCALE if kind_scale is None else kind_scale)
    logged = np.arange(n_steps) if steps is None else np.asarray(steps)

    blocks, ids, pres = [], [], []
    for sc in scenarios:
        base = curve(logged, sc.encounters, sc.gains, sc.decay, peak_delay)
        for p in sc.paragraphs:
            for kind in kinds:
                for q in range(probes_per_kind):
                    pre = -8.0 + 4.0 * rng.random()
                    row = pre + (0.0 if (p, kind, q) in flat_probes else scale[kind]) * base
                    blocks.append(row)
                    pres.append(pre)
                    ids.append((p, sc.name, kind, q))
    matrix = np.stack(blocks)
    if noise:
        matrix = matrix + rng.normal(0.0, noise, matrix.shape)
    walk, pres = np.zeros_like(matrix), np.array(pres)
    if drift:
        steps_drawn = np.random.default_rng([seed, 1]).normal(0.0, drift, matrix.shape)
        walk = np.cumsum(steps_drawn, axis=1) - steps_drawn[:, :1]  # 0 at the first logged step
        # Everything on a grid of 2^-16 nats (|ℓ| < 16): float32 holds every value, sum and difference exactly, so a
        # twin's drift cancels to the last bit and the planted plateau at each peak stays a tie.
        matrix, walk, pres = (np.round(x * 2**16) / 2**16 for x in (matrix, walk, pres))
    if twin:
        _write_log(path / "twin", pres[:, None] + walk, ids, logged, pres, 1, False)
        _write_injections(path / "twin", [], False)
        (path / "twin" / "manifest.json").write_text(json.dumps({"tokens_per_step": tokens_per_step, "twin_of": ".."}))
    _write_log(path, matrix + walk, ids, logged, pres, parts, extra_columns)
    _write_injections(path, scenarios, extra_columns)
    meta = {"tokens_per_step": tokens_per_step, "seed": seed, **({"twin": "twin"} if twin else {})}
    meta.update(manifest or {})
    (path / "manifest.json").write_text(json.dumps(meta))
    return PlantedRun(path=path, scenarios=scenarios, steps=logged, kind_scale=scale)


def _write_log(path: Path, matrix, ids, logged, pres, parts: int, extra_columns: bool) -> None:
    path.mkdir(parents=True, exist_ok=True)
    n_probes, n_cols = matrix.shape
    para = np.array([i[0] for i in ids], dtype=np.int32)
    scen = np.array([i[1] for i in ids], dtype=object)
    kind_col = np.array([i[2] for i in ids], dtype=object)
    probe = np.array([i[3] for i in ids], dtype=np.int16)

    # Rows ordered by step, then probe, as a runner appends them.
    step_col = np.repeat(logged.astype(np.int32), n_probes)
    values = matrix.T.ravel().astype(np.float32)
    # Recalled exactly once ℓ has risen 0.5 nats above its starting value.
    recalled = (matrix - pres[:, None] > 0.5).T.ravel()
    columns = {
        "step": pa.array(step_col, pa.int32()),
        "paragraph": pa.array(np.tile(para, n_cols), pa.int32()),
        "scenario": pa.DictionaryArray.from_arrays(
            np.tile(np.arange(n_probes), n_cols).astype(np.int32), pa.array(scen.tolist())
        ).cast(pa.string()),
        "kind": pa.DictionaryArray.from_arrays(
            np.tile(np.arange(n_probes), n_cols).astype(np.int32), pa.array(kind_col.tolist())
        ).cast(pa.string()),
        "probe": pa.array(np.tile(probe, n_cols), pa.int16()),
        "logprob": pa.array(values, pa.float32()),
        "logprob_sum": pa.array(values * 3, pa.float32()),
        "first_logprob": pa.array(values * 1.5, pa.float32()),
        "exact_match": pa.array(recalled, pa.bool_()),
    }
    if extra_columns:
        columns["rank_first"] = pa.array(np.zeros(len(values), np.int32))
        columns["note"] = pa.array(["x"] * len(values))
    table = pa.table(columns)
    target = path / "probes.parquet"
    if parts == 1:
        pq.write_table(table, target)
    else:
        target.mkdir(exist_ok=True)
        bounds = np.linspace(0, n_cols, parts + 1).astype(int)
        for i in range(parts):
            chunk = table.slice(bounds[i] * n_probes, (bounds[i + 1] - bounds[i]) * n_probes)
            pq.write_table(chunk, target / f"part-{i:05d}.parquet")


def _write_injections(path: Path, scenarios: list[PlantedScenario], extra_columns: bool) -> None:
    inj = {"step": [], "paragraph": [], "scenario": [], "variant": [], "row": [], "offset": [], "tokens": []}
    row = 0
    for sc in scenarios:
        for j, t_i in enumerate(sc.encounters):
            for p in sc.paragraphs:
                for key, v in zip(inj, (t_i, p, sc.name, j, row, 0, 40)):
                    inj[key].append(v)
                row += 1
    inj_table = pa.table(
        {
            "step": pa.array(inj["step"], pa.int32()),
            "paragraph": pa.array(inj["paragraph"], pa.int32()),
            "scenario": pa.array(inj["scenario"], pa.string()),
            "variant": pa.array(inj["variant"], pa.int16()),
            "row": pa.array(inj["row"], pa.int32()),
            "offset": pa.array(inj["offset"], pa.int32()),
            "tokens": pa.array(inj["tokens"], pa.int32()),
        }
    )
    if extra_columns:
        inj_table = inj_table.append_column("source", pa.array(["other-tool"] * inj_table.num_rows))
    pq.write_table(inj_table, path / "injections.parquet")


def paper_scenarios(decay: tuple[float, float, float] = (0.20, 0.25, 0.35), controls: int = 0) -> list[PlantedScenario]:
    """The study's schedule: 40 paragraphs each of paraphrase / duplicate (0..900 every 100) / once (0), and
    `controls` paragraphs from 120 on that are logged but never injected (scenario `none`)."""
    every = list(range(0, 1000, 100))
    scenarios = [
        PlantedScenario("paraphrase", list(range(0, 40)), every, [1.0] + [0.6] * 9, decay[0]),
        PlantedScenario("duplicate", list(range(40, 80)), every, [1.0] + [0.4] * 9, decay[1]),
        PlantedScenario("once", list(range(80, 120)), [0], [1.0], decay[2]),
    ]
    if controls:
        scenarios.append(PlantedScenario("none", list(range(120, 120 + controls)), [], [], 0.0))
    return scenarios


def write_trajectories(
    path: Path,
    trajectories: dict[tuple[int, str, str, int], list[float]],
    injections: list[tuple[int, int, str]],
    *,
    steps: list[int] | None = None,
    tokens_per_step: int = 100,
    manifest: dict | None = None,
) -> Path:
    """A hand-made run: {(paragraph, scenario, kind, probe): ℓ at each logged step}, injections
    (step, paragraph, scenario)."""
    path.mkdir(parents=True, exist_ok=True)
    n = len(next(iter(trajectories.values())))
    logged = list(range(n)) if steps is None else list(steps)
    rows: dict[str, list] = {k: [] for k in ("step", "paragraph", "scenario", "kind", "probe", "logprob")}
    for j, step in enumerate(logged):
        for (p, scenario, kind, q), values in trajectories.items():
            for key, v in zip(rows, (step, p, scenario, kind, q, values[j])):
                rows[key].append(v)
    logprob = np.array(rows["logprob"], dtype=np.float32)
    pq.write_table(
        pa.table(
            {
                "step": pa.array(rows["step"], pa.int32()),
                "paragraph": pa.array(rows["paragraph"], pa.int32()),
                "scenario": pa.array(rows["scenario"]),
                "kind": pa.array(rows["kind"]),
                "probe": pa.array(rows["probe"], pa.int16()),
                "logprob": pa.array(logprob, pa.float32()),
                "logprob_sum": pa.array(logprob * 2, pa.float32()),
                "first_logprob": pa.array(logprob, pa.float32()),
                "exact_match": pa.array(logprob > -3.5),
            }
        ),
        path / "probes.parquet",
    )
    pq.write_table(
        pa.table(
            {
                "step": pa.array([i[0] for i in injections], pa.int32()),
                "paragraph": pa.array([i[1] for i in injections], pa.int32()),
                "scenario": pa.array([i[2] for i in injections]),
                "variant": pa.array([0] * len(injections), pa.int16()),
                "row": pa.array(list(range(len(injections))), pa.int32()),
                "offset": pa.array([0] * len(injections), pa.int32()),
                "tokens": pa.array([10] * len(injections), pa.int32()),
            }
        ),
        path / "injections.parquet",
    )
    meta = {"tokens_per_step": tokens_per_step}
    meta.update(manifest or {})
    (path / "manifest.json").write_text(json.dumps(meta))
    return path


def capacity_manifest(
    attributes: list[tuple[str, int]],
    exposures: dict[str, tuple[list[int], list[float]]],
    *,
    model: str = "m",
    parameters: int = 1000,
    non_embedding: int = 600,
    people: dict[str, int] | None = None,
    name_space: int | None = None,
    context: list[tuple[str, int]] | None = None,
    derived: dict[str, str] | None = None,
) -> dict:
    """`manifest.json["capacity"]` of a capacity run (harness.rundir.CapacityManifest)."""
    derived = derived or {}

    def entries(pairs):
        return [{"name": n, "size": s, **({"derived_from": derived[n]} if n in derived else {})} for n, s in pairs]

    raw = {
        "model": model,
        "parameters": {"total": parameters, "non_embedding": non_embedding},
        "attributes": entries(attributes),
        "exposures": {sc: {"steps": list(st), "exposures": list(ex)} for sc, (st, ex) in exposures.items()},
    }
    if people:
        raw["people"] = dict(people)
    if name_space is not None:
        raw["name_space"] = name_space
    if context:
        raw["context"] = entries(context)
    return {"capacity": raw}


def write_scored_run(
    path: Path,
    scores: dict[tuple[int, str, str, int], tuple[list[float], list[bool]]],
    steps: list[int],
    *,
    manifest: dict | None = None,
    target_tokens: int = 2,
) -> Path:
    """A run directory with nothing injected whose probes have the given summed log-probabilities and exact
    matches: {(paragraph, scenario, kind, probe): (logprob_sum at each step, exact_match at each step)}.
    `logprob` is logprob_sum / target_tokens (a mean over that many target tokens)."""
    path.mkdir(parents=True, exist_ok=True)
    rows: dict[str, list] = {
        k: [] for k in ("step", "paragraph", "scenario", "kind", "probe", "logprob_sum", "exact_match")
    }
    for j, step in enumerate(steps):
        for (p, scenario, kind, q), (sums, matches) in scores.items():
            for key, v in zip(rows, (step, p, scenario, kind, q, sums[j], bool(matches[j]))):
                rows[key].append(v)
    sums = np.array(rows["logprob_sum"], dtype=np.float32)
    pq.write_table(
        pa.table(
            {
                "step": pa.array(rows["step"], pa.int32()),
                "paragraph": pa.array(rows["paragraph"], pa.int32()),
                "scenario": pa.array(rows["scenario"]),
                "kind": pa.array(rows["kind"]),
                "probe": pa.array(rows["probe"], pa.int16()),
                "logprob": pa.array(sums / target_tokens, pa.float32()),
                "logprob_sum": pa.array(sums, pa.float32()),
                "first_logprob": pa.array(sums / target_tokens, pa.float32()),
                "exact_match": pa.array(rows["exact_match"], pa.bool_()),
            }
        ),
        path / "probes.parquet",
    )
    empty = {
        "step": pa.int32(),
        "paragraph": pa.int32(),
        "scenario": pa.string(),
        "variant": pa.int16(),
        "row": pa.int32(),
        "offset": pa.int32(),
        "tokens": pa.int32(),
    }
    pq.write_table(pa.table({k: pa.array([], t) for k, t in empty.items()}), path / "injections.parquet")
    meta = {"tokens_per_step": 1000}
    meta.update(manifest or {})
    (path / "manifest.json").write_text(json.dumps(meta))
    return path


def write_priming_run(
    path: Path,
    keywords: list[tuple[float, float]],
    *,
    controls: int = 2,
    n_steps: int = 40,
    encounter: int = 5,
    primes: int = 4,
    seed: int = 0,
) -> Path:
    """A run whose paragraphs' priming is planted: paragraph i (of `keywords`, each (x_i, y_i)) is injected at
    step `encounter`; its keyword has probability 10^x_i in its own context (its `mem` probe 0, constant) and from
    the step after the encounter on, each of its `primes` priming probes gives the keyword 10^y_i times the
    probability it had before: priming score S_i = 10^y_i exactly. `controls` more paragraphs are never injected
    and never primed (S = 1). manifest.json `priming` says which keyword each priming probe asks for."""
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True, exist_ok=True)
    steps = np.arange(n_steps)
    after = (steps > encounter).astype(np.float64)
    trajectories: dict[tuple[int, str, str, int], np.ndarray] = {}
    recorded = []
    for p, (x, y) in enumerate([*keywords, *[(-2.0, 0.0)] * controls]):
        scenario = "once" if p < len(keywords) else "none"
        trajectories[(p, scenario, "mem", 0)] = np.full(n_steps, x * np.log(10))
        for j in range(primes):
            base = -12.0 + 6.0 * rng.random()
            trajectories[(p, scenario, "prime", j)] = base + after * y * np.log(10)
            recorded.append({"paragraph": p, "probe": j, "keyword": f"keyword {p}", "mem_probe": 0})
    keys = list(trajectories)
    sums = np.stack([trajectories[k] for k in keys]).T.ravel()  # rows by step, then probe
    pq.write_table(
        pa.table(
            {
                "step": pa.array(np.repeat(steps, len(keys)), pa.int32()),
                "paragraph": pa.array([k[0] for k in keys] * n_steps, pa.int32()),
                "scenario": pa.array([k[1] for k in keys] * n_steps),
                "kind": pa.array([k[2] for k in keys] * n_steps),
                "probe": pa.array([k[3] for k in keys] * n_steps, pa.int16()),
                "logprob": pa.array(sums / 2, pa.float64()),
                "logprob_sum": pa.array(sums, pa.float64()),
                "first_logprob": pa.array(sums / 2, pa.float64()),
                "exact_match": pa.array(np.zeros(len(sums), bool)),
            }
        ),
        path / "probes.parquet",
    )
    _write_injections(path, [PlantedScenario("once", list(range(len(keywords))), [encounter], [1.0], 0.0)], False)
    (path / "manifest.json").write_text(json.dumps({"tokens_per_step": 100, "priming": recorded}))
    return path
