"""checkpoints.yaml -> `Catalog`: the checkpoints of each original run and the facts needed to continue it.

`resolve("olmo-7b@mid")` turns a user's reference (FAMILY@STEP or FAMILY@STAGE) into a family and a step.
Loading validates every key (harness.typed): a typo in the YAML is an error naming the file and the dotted
field, never a silently ignored one. Each family's `architecture:` block is validated by its kind's module
(injection.checkpoints.family).
"""

from __future__ import annotations

import bisect
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from harness.errors import UserError
from harness.paths import cache_dir
from harness.typed import from_mapping, load_yaml
from injection import shipped_path
from injection.checkpoints.family import model_family
from injection.checkpoints.layout import ObjectiveSpec, OptimizerSpec, is_complete
from injection.lr import LRSchedule

STAGES = ("early", "mid", "late")


def catalog_path() -> Path:
    """The shipped checkpoints.yaml, or the file named by `INJECTION_CATALOG`."""
    override = os.environ.get("INJECTION_CATALOG")
    return Path(override).expanduser() if override else shipped_path("checkpoints.yaml")


@dataclass(frozen=True)
class DataOrder:
    """How the original run ordered its data (see injection.data)."""

    seed: int | None
    """Data-order seed: epoch e's order is the permutation for seed + e."""
    seq_len: int
    """Tokens per instance that a step trains on (the model's context length): the unit of token counts."""
    global_indices_url: str | None
    """The published order file of the run, where it still exists."""
    data_paths: str | None
    """Where the run's list of token files comes from (format `olmo`)."""
    tokenizer: str | None
    """The tokenizer file the run's config names."""
    format: Literal["olmo", "megatron-indexed"] = "olmo"
    """How the data is published: OLMo token files plus an order (`olmo`), or rows already in training order in
    a Megatron indexed dataset (`megatron-indexed`)."""
    row_len: int | None = None
    """Tokens per row of the data, where a row holds more than `seq_len` (a pre-packed row with the last label
    appended: seq_len + 1); unset = seq_len."""
    index_url: str | None = None
    """`megatron-indexed`: the `.idx` file."""
    data_urls: tuple[str, ...] = ()
    """`megatron-indexed`: the `.bin` token file, or its shards in order."""
    dtype: Literal["uint16", "uint32"] | None = None
    """`olmo`: the token files' integer type (the run's `data.memmap_dtype`); unset = uint16 when the vocabulary fits
    it, else uint32."""


@dataclass(frozen=True)
class KnownIssue:
    """A reported problem with some published checkpoints of a run (`injection pull` warns about it)."""

    steps: tuple[int, ...]
    source: str
    """Where it was reported."""
    reported: str
    """What was reported."""


@dataclass(frozen=True)
class BatchSizeRange:
    first_step: int
    last_step: int | None
    """Inclusive; null = to the end of the run."""
    global_batch_size: int
    evidence: str


@dataclass(frozen=True)
class StepEntry:
    step: int
    urls: tuple[str, ...]
    """Unsharded checkpoint directories (the first is tried first)."""
    hf_revision: str | None
    """Branch of the family's HF repo holding this step, where known; null otherwise."""
    hf_revision_guessed: bool = False
    """The branch name is derived from the step and token count, not confirmed (a pull warns, and tries the name
    without a `stage1-` prefix too)."""


@dataclass(frozen=True)
class Family:
    """One original training run: its checkpoints and the facts needed to continue it."""

    name: str
    kind: str
    """The family implementation, injection/checkpoints/<kind>.py (olmo, tiny, ...)."""
    description: str
    hf_repo: str | None
    hf_revisions_source: str | None
    files: tuple[str, ...]
    """Files of an unsharded checkpoint directory; `model.pt` is required, the others optional."""
    architecture: Any
    """Parsed by the kind's `parse_architecture` (e.g. injection.checkpoints.olmo.Architecture)."""
    optimizer: OptimizerSpec
    lr_schedule: LRSchedule
    data_order: DataOrder
    batch_sizes: tuple[BatchSizeRange, ...]
    stage_rule: str
    stages: dict[str, int]
    steps: tuple[StepEntry, ...] = field(repr=False)
    builtin: bool = False
    precision: str | None = None
    """The precision the original run trained in (informational)."""
    known_issues: tuple[KnownIssue, ...] = ()
    objective: ObjectiveSpec = ObjectiveSpec()
    """Loss terms and instance masking beyond the cross-entropy (OLMo 2's z-loss and repetition filter)."""
    _by_step: dict[int, StepEntry] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._by_step.update({entry.step: entry for entry in self.steps})

    @property
    def seq_len(self) -> int:
        """Tokens per row that a step trains on (token counts use it)."""
        return self.data_order.seq_len

    @property
    def token_dtype(self) -> str:
        """The integer type of the run's token files (`olmo` format)."""
        if self.data_order.dtype is not None:
            return self.data_order.dtype
        vocab = getattr(self.architecture, "embedding_size", None) or getattr(self.architecture, "vocab_size", 0)
        return "uint16" if vocab <= 1 << 16 else "uint32"

    @property
    def row_len(self) -> int:
        """Tokens per row of the data (what the model is fed per row; checkpoint.json's `seq_len`)."""
        return self.data_order.row_len or self.data_order.seq_len

    def issues_at(self, step: int) -> list[KnownIssue]:
        """Reported problems with this step's published checkpoint."""
        return [issue for issue in self.known_issues if step in issue.steps]

    def batch_size_at(self, step: int) -> int:
        """Rows per optimizer step at a global step."""
        for r in self.batch_sizes:
            if r.first_step <= step and (r.last_step is None or step <= r.last_step):
                return r.global_batch_size
        raise UserError(f"{self.name}: no batch_sizes range covers step {step}")

    def tokens_at(self, step: int) -> int:
        """Tokens seen before global step `step` (sum of rows x seq_len over the ranges it passes)."""
        total = 0
        for r in self.batch_sizes:
            if step <= r.first_step:
                break
            end = step if r.last_step is None else min(step, r.last_step + 1)
            total += (end - r.first_step) * r.global_batch_size * self.seq_len
        return total

    def entry(self, step: int) -> StepEntry | None:
        return self._by_step.get(step)

    def stage_of(self, step: int) -> str | None:
        return next((name for name, s in self.stages.items() if s == step), None)

    def local_steps(self) -> list[int]:
        """Steps of a built-in family already saved under the cache directory."""
        root = cache_dir() / self.name
        found = []
        if root.is_dir():
            for d in root.iterdir():
                if d.name.startswith("step") and d.name[4:].isdigit() and is_complete(d):
                    found.append(int(d.name[4:]))
        return sorted(found)

    def available_steps(self) -> list[int]:
        if self.builtin:
            return sorted({0, *self.local_steps()})
        return [entry.step for entry in self.steps]

    def nearby(self, step: int, n: int = 3) -> list[int]:
        steps = self.available_steps()
        i = bisect.bisect_left(steps, step)
        return steps[max(0, i - n) : i + n]


@dataclass(frozen=True)
class Resolved:
    family: Family
    step: int
    stage: str | None
    entry: StepEntry | None

    @property
    def ref(self) -> str:
        """FAMILY@STEP: the canonical name."""
        return f"{self.family.name}@{self.step}"

    @property
    def label(self) -> str:
        """FAMILY@STAGE where the step is a stage, else FAMILY@STEP: the name as people say it."""
        return f"{self.family.name}@{self.stage or self.step}"


@dataclass(frozen=True)
class Catalog:
    path: Path
    families: dict[str, Family]

    def family(self, name: str) -> Family:
        if name not in self.families:
            raise UserError(f"unknown checkpoint family {name!r} in {self.path}; known: {', '.join(self.families)}")
        return self.families[name]

    def resolve(self, ref: str) -> Resolved:
        """FAMILY@STEP or FAMILY@STAGE -> (family, step). Unknown steps name the nearest valid ones."""
        if "@" not in ref:
            raise UserError(f"checkpoint reference {ref!r}: expected FAMILY@STEP or FAMILY@STAGE, e.g. olmo-7b@mid")
        name, _, what = ref.partition("@")
        fam = self.family(name)
        if what in fam.stages:
            step, stage = fam.stages[what], what
        elif what.isdigit():
            step, stage = int(what), fam.stage_of(int(what))
        else:
            raise UserError(
                f"checkpoint reference {ref!r}: {what!r} is neither a step number nor a stage ({', '.join(fam.stages)})"
            )
        entry = fam.entry(step)
        if not fam.builtin and entry is None:
            near = ", ".join(str(s) for s in fam.nearby(step))
            raise UserError(f"{name} has no checkpoint at step {step} in {self.path}; nearby steps: {near}")
        return Resolved(fam, step, stage, entry)


# --- loading -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Raw:
    """A family's block as written in checkpoints.yaml (family-specific parts still untyped)."""

    kind: str
    description: str
    hf_repo: str | None
    hf_revisions_source: str | None
    files: tuple[str, ...]
    architecture: dict[str, Any]
    optimizer: dict[str, Any]
    lr_schedule: dict[str, Any]
    data_order: DataOrder
    batch_sizes: tuple[BatchSizeRange, ...]
    stage_rule: str
    stages: dict[str, int]
    steps: tuple[StepEntry, ...]
    builtin: bool = False
    precision: str | None = None
    known_issues: tuple[KnownIssue, ...] = ()
    objective: dict[str, Any] | None = None


def _family(name: str, data: Any, where: str) -> Family:
    path = f"families.{name}"
    raw: _Raw = from_mapping(_Raw, data, where, path)
    code = model_family(raw.kind, f"{where}: field '{path}.kind'")
    if not raw.batch_sizes:
        raise UserError(f"{where}: field '{path}.batch_sizes': expected a non-empty list of ranges")
    if set(raw.stages) != set(STAGES):
        raise UserError(f"{where}: field '{path}.stages': expected exactly {', '.join(STAGES)}")
    seen: set[int] = set()
    for i, entry in enumerate(raw.steps):
        if entry.step in seen:
            raise UserError(
                f"{where}: field '{path}.steps[{i}]': duplicate step {entry.step} "
                "(list alternative URLs in one entry's urls)"
            )
        if not entry.urls and not entry.hf_revision:
            raise UserError(f"{where}: field '{path}.steps[{i}]': a step needs original URLs or an hf_revision")
        seen.add(entry.step)
    order = raw.data_order
    if order.row_len is not None and order.row_len < order.seq_len:
        raise UserError(
            f"{where}: field '{path}.data_order.row_len': {order.row_len} is shorter than seq_len {order.seq_len}"
        )
    if order.format == "megatron-indexed" and not raw.builtin and not (order.index_url and order.data_urls):
        raise UserError(f"{where}: field '{path}.data_order': format megatron-indexed needs index_url and data_urls")
    fam = Family(
        name=name,
        kind=raw.kind,
        description=raw.description,
        hf_repo=raw.hf_repo,
        hf_revisions_source=raw.hf_revisions_source,
        files=raw.files,
        architecture=code.parse_architecture(raw.architecture, where, f"{path}.architecture"),
        optimizer=OptimizerSpec.from_dict(raw.optimizer, f"{where}: field '{path}.optimizer'"),
        lr_schedule=LRSchedule.from_dict(raw.lr_schedule, f"{where}: field '{path}.lr_schedule'"),
        data_order=raw.data_order,
        batch_sizes=raw.batch_sizes,
        stage_rule=raw.stage_rule,
        stages=dict(raw.stages),
        steps=raw.steps,
        builtin=raw.builtin,
        precision=raw.precision,
        known_issues=raw.known_issues,
        objective=ObjectiveSpec.from_dict(raw.objective, f"{where}: field '{path}.objective'"),
    )
    if not fam.builtin:
        missing = [f"{s}={v}" for s, v in fam.stages.items() if fam.entry(v) is None]
        if missing:
            raise UserError(f"{where}: field '{path}.stages': {', '.join(missing)} not among the listed steps")
    return fam


def load_catalog(path: str | Path | None = None) -> Catalog:
    """Read and validate checkpoints.yaml (default: `catalog_path()`)."""
    p = Path(path) if path is not None else catalog_path()
    try:
        raw = load_yaml(p.read_text(encoding="utf-8"), f"checkpoint catalog {p}")
    except FileNotFoundError:
        raise UserError(f"checkpoint catalog {p} not found (set INJECTION_CATALOG to its location)") from None
    except UnicodeDecodeError as err:
        raise UserError(f"checkpoint catalog {p}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    if not isinstance(raw, dict) or set(raw) != {"families"} or not isinstance(raw["families"], dict):
        raise UserError(f"{p}: expected one top-level key 'families' mapping names to families")
    families = {name: _family(name, data, str(p)) for name, data in raw["families"].items()}
    return Catalog(p, families)


def human_tokens(n: int) -> str:
    """4.2B, 177B, 1.50T."""
    if n >= 1e12:
        return f"{n / 1e12:.2f}T"
    if n >= 1e9:
        return f"{n / 1e9:.0f}B" if n >= 1e10 else f"{n / 1e9:.1f}B"
    if n >= 1e6:
        return f"{n / 1e6:.1f}M"
    return str(n)
