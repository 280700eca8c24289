"""Priming (Sun et al. 2025, "How new data permeates LLM knowledge and how to dilute it", arXiv 2504.09522): after a
model learns a text, the text's keyword becomes more probable in unrelated contexts, and the keyword's probability
before learning predicts by how much.

Definitions, per paragraph p and keyword x (a fact's target) with priming contexts X_1 … X_n (probes of kind
`prime`) and P_k(x | X) the probability of the keyword's tokens after X at run step k (exp of `logprob_sum`):

    S_p(k) = (1/n) Σ_j P_k(x | X_j) / P_before(x | X_j)        the priming score
    P_before(x | X_c)                                          the keyword's probability in its own context

"before" is the latest logged step at or before the paragraph's first encounter (the first logged step for a
paragraph never injected), and X_c is the paragraph's own sentence cut before the keyword (its `mem` probe with
that target; manifest.json `priming` says which). "After learning" is the end of the last encounter's window,
t_N + w (the latest logged step at or before it; the last logged step for a control). The headline relation is
the least-squares line of log10 S_p(after) against log10 P_before(x | X_c) over the injected paragraphs, with
Pearson's r and Spearman's ρ.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from analysis.fit import resolve_window
from analysis.load import PRIME_KIND, Run
from analysis.metrics import column_at_or_before, probe_encounters
from harness.errors import UserError

#: manifest.json key: for every priming probe, its keyword and the `mem` probe asking for it in the paragraph.
PRIMING = "priming"

#: The per-step priming scores (`analysis priming -o DIR` writes them as DIR/priming_scores.parquet).
SCORES_SCHEMA = pa.schema(
    [
        ("paragraph", pa.int32()),
        ("scenario", pa.string()),
        ("keyword", pa.string()),
        ("step", pa.int32()),
        ("priming_score", pa.float64()),
    ]
)


@dataclass
class PrimingItem:
    """One paragraph's keyword, its priming probes and its priming score at every logged step."""

    paragraph: int
    scenario: str
    keyword: str | None
    """None where the run did not record it (a log written by another tool)."""
    probes: np.ndarray
    """Rows of the run's probe matrix: the keyword's priming probes."""
    own_context: int | None
    """Row of the `mem` probe that asks for the keyword in the paragraph's own words (None: not recorded)."""
    before_step: int
    after_step: int
    steps: np.ndarray = field(repr=False)
    """The run's logged steps."""
    scores: np.ndarray = field(repr=False)
    """S(k) at every logged step of the run."""
    p_before: float = math.nan
    """P_before(x | X_c): the keyword's probability in its own context before learning."""
    injected: bool = False

    @property
    def after(self) -> float:
        """S at the step after learning."""
        return float(self.scores[np.searchsorted(self.steps, self.after_step)])

    def record(self) -> dict:
        return {
            "paragraph": self.paragraph,
            "scenario": self.scenario,
            "keyword": self.keyword,
            "injected": self.injected,
            "n_probes": len(self.probes),
            "before_step": self.before_step,
            "after_step": self.after_step,
            "p_before": _num(self.p_before),
            "score_after": _num(self.after),
            "score_peak": _num(float(self.scores.max())),
        }


@dataclass
class PrimingRelation:
    """log10 S(after) ≈ intercept + slope · log10 P_before(x | X_c) over the injected paragraphs."""

    n: int
    slope: float
    intercept: float
    pearson_r: float
    spearman_rho: float

    def record(self) -> dict:
        return {k: _num(v) if isinstance(v, float) else v for k, v in self.__dict__.items()}


@dataclass
class PrimingAnalysis:
    run: Run
    window: int
    items: list[PrimingItem]
    relation: PrimingRelation | None
    notes: list[str] = field(default_factory=list)

    def record(self) -> dict:
        """What `analysis priming --json` prints."""
        return {
            "run": {"label": self.run.label, "path": str(self.run.path), "window": self.window},
            "paragraphs": [item.record() for item in self.items],
            "relation": self.relation.record() if self.relation is not None else None,
            "notes": list(self.notes),
        }


def _num(value: float) -> float | None:
    return value if math.isfinite(value) else None


def has_priming(run: Run) -> bool:
    return bool((run.kind == PRIME_KIND).any())


def _recorded(run: Run) -> dict[tuple[int, int], tuple[str, int]]:
    """(paragraph, priming probe) -> (keyword, its `mem` probe), from manifest.json; checked field by field."""
    raw = run.manifest.get(PRIMING)
    if raw is None:
        return {}
    file = run.path / "manifest.json"
    if not isinstance(raw, list):
        raise UserError(f"{file}: field {PRIMING!r} must be a list of {{paragraph, probe, keyword, mem_probe}}")
    out = {}
    for i, entry in enumerate(raw):
        ok = isinstance(entry, dict) and isinstance(entry.get("keyword"), str)
        ok = ok and all(isinstance(entry.get(k), int) and entry[k] >= 0 for k in ("paragraph", "probe", "mem_probe"))
        if not ok:
            raise UserError(
                f"{file}: field '{PRIMING}[{i}]': expected {{paragraph, probe, keyword, mem_probe}}, found {entry!r}"
            )
        out[(entry["paragraph"], entry["probe"])] = (entry["keyword"], entry["mem_probe"])
    return out


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks from 1, ties sharing their mean rank."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(1, len(x) + 1)
    for value in np.unique(x):
        tied = x == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def relation(p_before: np.ndarray, score_after: np.ndarray) -> PrimingRelation | None:
    """The least-squares line of log10 S against log10 P_before, Pearson's r and Spearman's ρ (None: < 3 points or
    no spread)."""
    ok = np.isfinite(p_before) & np.isfinite(score_after) & (p_before > 0) & (score_after > 0)
    x, y = np.log10(p_before[ok]), np.log10(score_after[ok])
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    slope, intercept = np.polyfit(x, y, 1)
    return PrimingRelation(
        n=int(len(x)),
        slope=float(slope),
        intercept=float(intercept),
        pearson_r=float(np.corrcoef(x, y)[0, 1]),
        spearman_rho=float(np.corrcoef(_ranks(x), _ranks(y))[0, 1]),
    )


def priming_analysis(run: Run, window: int | None = None) -> PrimingAnalysis | None:
    """Every paragraph's priming score over the run and the headline relation; None for a log without priming
    probes. `window`: w of t_N + w (default: as `analysis fit` resolves it)."""

    if not has_priming(run):
        return None
    if "logprob_sum" not in run.metrics:
        raise UserError(
            f"{run.path / 'probes.parquet'}: priming needs the 'logprob_sum' column (a keyword's probability)"
        )
    window = resolve_window(run, window)[0]
    values = run.metric("logprob_sum")
    enc = probe_encounters(run)
    recorded = _recorded(run)
    notes = [] if recorded else ["manifest.json does not say which keyword each priming probe asks for: no P_before"]
    last = int(run.steps[-1])
    rows_by_key: dict[tuple[int, str | None], list[int]] = {}
    for row in np.flatnonzero(run.kind == PRIME_KIND):
        keyword, _ = recorded.get((int(run.paragraph[row]), int(run.probe_index[row])), (None, None))
        rows_by_key.setdefault((int(run.paragraph[row]), keyword), []).append(int(row))
    items = []
    for (paragraph, keyword), rows in rows_by_key.items():
        rows = np.array(rows)
        count = int(enc.count[rows[0]])
        first = int(enc.steps[rows[0], 0]) if count else int(run.steps[0])
        before = int(max(column_at_or_before(run.steps, np.array([first]))[0], 0))
        end = int(enc.steps[rows[0], count - 1]) + window if count else last
        after = int(max(column_at_or_before(run.steps, np.array([min(end, last)]))[0], 0))
        scores = np.exp(values[rows] - values[rows, before][:, None]).mean(axis=0)
        item = PrimingItem(
            paragraph=paragraph,
            scenario=str(run.scenario[rows[0]]),
            keyword=keyword,
            probes=rows,
            own_context=None,
            before_step=int(run.steps[before]),
            after_step=int(run.steps[after]),
            steps=run.steps,
            scores=scores,
            injected=count > 0,
        )
        if keyword is not None:
            _, mem = recorded[(paragraph, int(run.probe_index[rows[0]]))]
            own = np.flatnonzero((run.paragraph == paragraph) & (run.kind == "mem") & (run.probe_index == mem))
            if len(own):
                item.own_context = int(own[0])
                item.p_before = float(np.exp(values[own[0], before]))
        items.append(item)
    injected = [i for i in items if i.injected]
    line = relation(np.array([i.p_before for i in injected]), np.array([i.after for i in injected]))
    if line is None and injected:
        notes.append("fewer than 3 injected paragraphs with both numbers (or no spread): no relation fitted")
    return PrimingAnalysis(run=run, window=window, items=items, relation=line, notes=notes)


def scores_table(analysis: PrimingAnalysis) -> pa.Table:
    """One row per (paragraph's keyword, logged step): the priming score (SCORES_SCHEMA)."""
    steps = analysis.run.steps
    n = len(steps)
    items = analysis.items
    return pa.table(
        {
            "paragraph": pa.array(np.repeat([i.paragraph for i in items], n), pa.int32()),
            "scenario": pa.array([i.scenario for i in items for _ in range(n)], pa.string()),
            "keyword": pa.array([i.keyword for i in items for _ in range(n)], pa.string()),
            "step": pa.array(np.tile(steps, len(items)), pa.int32()),
            "priming_score": pa.array(np.concatenate([i.scores for i in items]) if items else [], pa.float64()),
        },
        schema=SCORES_SCHEMA,
    )


#: What `analysis priming -o DIR` writes besides the `priming` figure.
PRIMING_JSON, SCORES_FILE = "priming.json", "priming_scores.parquet"
