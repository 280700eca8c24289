"""checkpoints.yaml -> `Catalog`: the checkpoints of each original run and the facts needed to continue it.

`resolve("olmo-7b@mid")` turns a user's reference (FAMILY@STEP or FAMILY@STAGE) into a family and a
step. Loading validates every key: a typo in the YAML is an error naming the family and the key, never a
silently ignored field.
"""

from __future__ import annotations

import bisect
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

import injection
from harness.errors import UserError
from harness.paths import cache_dir

STAGES = ("early", "mid", "late")
LR_KINDS = ("cosine", "linear", "constant")


def catalog_path() -> Path:
    """checkpoints.yaml at the repository root, or the file named by `INJECTION_CATALOG`."""
    override = os.environ.get("INJECTION_CATALOG")
    return Path(override) if override else injection.REPO_ROOT / "checkpoints.yaml"


@dataclass(frozen=True)
class Architecture:
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    mlp_hidden_size: int
    """Output width of OLMo's fused `ff_proj` (up and gate together); the SwiGLU intermediate is half."""
    vocab_size: int
    """Tokens the tokenizer knows."""
    embedding_size: int
    """Rows of the embedding matrix (vocab padded); the HF `vocab_size`."""
    max_sequence_length: int
    rope_theta: float
    layer_norm: str
    """`nonparametric` (OLMo Feb 2024: no affine weights), the only kind the conversion handles."""
    weight_tying: bool
    clip_qkv: float | None
    eos_token_id: int
    pad_token_id: int


@dataclass(frozen=True)
class OptimizerSpec:
    name: str
    betas: tuple[float, float]
    eps: float
    weight_decay: float
    grad_clip: float

    def as_json(self) -> dict[str, Any]:
        """The `optimizer` object of checkpoint.json."""
        return {"betas": list(self.betas), "eps": self.eps, "weight_decay": self.weight_decay, "grad_clip": self.grad_clip}


@dataclass(frozen=True)
class LRSchedule:
    kind: str
    peak_lr: float
    warmup_steps: int
    alpha_f: float
    """Floor as a fraction of the peak."""
    t_max: int | None
    """Step where the decay reaches the floor."""

    def as_json(self) -> dict[str, Any]:
        """The `lr_schedule` object of checkpoint.json (OLMo's scheduler fields)."""
        return dataclasses.asdict(self)

    def lr_at(self, step: int) -> float:
        """The original run's learning rate at a global step, by ai2-olmo's own scheduler classes."""
        from olmo.optim import CosWithWarmup, LinearWithWarmup

        if self.kind == "constant":
            return self.peak_lr
        if self.t_max is None:
            raise UserError(f"lr_schedule.t_max is unknown, so the {self.kind} schedule has no value at step {step}")
        cls = CosWithWarmup if self.kind == "cosine" else LinearWithWarmup
        sched = cls(
            grad_clip_warmup_steps=None,
            grad_clip_warmup_factor=None,
            warmup_min_lr=None,
            warmup_steps=self.warmup_steps,
            alpha_f=self.alpha_f,
            t_max=self.t_max,
        )
        return float(sched.get_lr(self.peak_lr, step, self.t_max))


@dataclass(frozen=True)
class DataOrder:
    seed: int | None
    seq_len: int
    global_indices_url: str | None
    data_paths: str | None
    """Where the run's list of token files is published."""
    tokenizer: str | None


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
    """Branch of the family's HF repo holding this step, where confirmed; null otherwise."""


@dataclass(frozen=True)
class Family:
    name: str
    description: str
    hf_repo: str | None
    hf_revisions_source: str | None
    files: tuple[str, ...]
    """Files of an unsharded checkpoint directory; `model.pt` is required, the others optional."""
    architecture: Architecture
    optimizer: OptimizerSpec
    lr_schedule: LRSchedule
    data_order: DataOrder
    batch_sizes: tuple[BatchSizeRange, ...]
    stage_rule: str
    stages: dict[str, int]
    steps: tuple[StepEntry, ...] = field(repr=False)
    builtin: bool = False
    _by_step: dict[int, StepEntry] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._by_step.update({entry.step: entry for entry in self.steps})

    @property
    def seq_len(self) -> int:
        return self.data_order.seq_len

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
                if d.name.startswith("step") and d.name[4:].isdigit() and (d / "checkpoint.json").is_file():
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
        return f"{self.family.name}@{self.step}"


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
                f"checkpoint reference {ref!r}: {what!r} is neither a step number nor a stage "
                f"({', '.join(fam.stages)})"
            )
        entry = fam.entry(step)
        if not fam.builtin and entry is None:
            near = ", ".join(str(s) for s in fam.nearby(step))
            raise UserError(f"{name} has no checkpoint at step {step} in {self.path}; nearby steps: {near}")
        return Resolved(fam, step, stage, entry)


# --- loading -------------------------------------------------------------------------------------------


def _fields(cls: type, data: Any, where: str) -> dict[str, Any]:
    """Check `data` has exactly the fields of dataclass `cls` (those with defaults may be absent)."""
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected a mapping, got {type(data).__name__}")
    known = {f.name: f for f in dataclasses.fields(cls) if not f.name.startswith("_")}
    unknown = sorted(str(k) for k in set(data) - set(known))
    if unknown:
        raise UserError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(known)})")
    missing = [
        n for n, f in known.items()
        if n not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise UserError(f"{where}: missing field {missing[0]!r}")
    return dict(data)


def _typed(value: Any, kind: type | tuple[type, ...], where: str, nullable: bool = False) -> Any:
    if value is None and nullable:
        return None
    # YAML writes 10000.0 or 10000 as the author likes; ints are fine where floats are asked for.
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, bool) and kind is not bool:
        raise UserError(f"{where}: expected {getattr(kind, '__name__', kind)}, got a boolean")
    if not isinstance(value, kind):
        name = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise UserError(f"{where}: expected {name}{' or null' if nullable else ''}, got {value!r}")
    return value


def _build(cls: type, data: Any, where: str, types: dict[str, tuple]) -> Any:
    d = _fields(cls, data, where)
    for key, (kind, nullable) in types.items():
        if key in d:
            d[key] = _typed(d[key], kind, f"{where}.{key}", nullable)
    return cls(**d)


def _architecture(data: Any, where: str) -> Architecture:
    ints = {k: (int, False) for k in ("d_model", "n_layers", "n_heads", "n_kv_heads", "mlp_hidden_size",
                                      "vocab_size", "embedding_size", "max_sequence_length", "eos_token_id",
                                      "pad_token_id")}
    arch = _build(Architecture, data, where, {**ints, "rope_theta": (float, False), "layer_norm": (str, False),
                                              "weight_tying": (bool, False), "clip_qkv": (float, True)})
    if arch.layer_norm != "nonparametric":
        raise UserError(f"{where}.layer_norm: only 'nonparametric' is supported, got {arch.layer_norm!r}")
    if arch.d_model % arch.n_heads or arch.n_heads % arch.n_kv_heads:
        raise UserError(f"{where}: d_model must divide by n_heads and n_heads by n_kv_heads")
    if arch.embedding_size < arch.vocab_size:
        raise UserError(f"{where}.embedding_size: smaller than vocab_size")
    return arch


def _optimizer(data: Any, where: str) -> OptimizerSpec:
    d = _fields(OptimizerSpec, data, where)
    betas = d["betas"]
    if not (isinstance(betas, list) and len(betas) == 2 and all(isinstance(b, (int, float)) for b in betas)):
        raise UserError(f"{where}.betas: expected two numbers, got {betas!r}")
    return OptimizerSpec(
        name=_typed(d["name"], str, f"{where}.name"),
        betas=(float(betas[0]), float(betas[1])),
        eps=_typed(d["eps"], float, f"{where}.eps"),
        weight_decay=_typed(d["weight_decay"], float, f"{where}.weight_decay"),
        grad_clip=_typed(d["grad_clip"], float, f"{where}.grad_clip"),
    )


def _lr_schedule(data: Any, where: str) -> LRSchedule:
    sched = _build(LRSchedule, data, where, {"kind": (str, False), "peak_lr": (float, False),
                                             "warmup_steps": (int, False), "alpha_f": (float, False),
                                             "t_max": (int, True)})
    if sched.kind not in LR_KINDS:
        raise UserError(f"{where}.kind: expected one of {', '.join(LR_KINDS)}, got {sched.kind!r}")
    return sched


def _steps(data: Any, where: str) -> tuple[StepEntry, ...]:
    if not isinstance(data, list):
        raise UserError(f"{where}: expected a list of steps")
    seen: set[int] = set()
    out = []
    for i, item in enumerate(data):
        w = f"{where}[{i}]"
        d = _fields(StepEntry, item, w)
        step = _typed(d["step"], int, f"{w}.step")
        if step in seen:
            raise UserError(f"{where}: duplicate step {step} (list alternative URLs in one entry's urls)")
        seen.add(step)
        urls = d["urls"]
        if not (isinstance(urls, list) and urls and all(isinstance(u, str) for u in urls)):
            raise UserError(f"{w}.urls: expected a non-empty list of URLs")
        out.append(StepEntry(step, tuple(urls), _typed(d["hf_revision"], str, f"{w}.hf_revision", nullable=True)))
    return tuple(out)


def _family(name: str, data: Any, where: str) -> Family:
    d = _fields(Family, {**data, "name": name} if isinstance(data, dict) else data, where)
    ranges = d["batch_sizes"]
    if not isinstance(ranges, list) or not ranges:
        raise UserError(f"{where}.batch_sizes: expected a non-empty list of ranges")
    batch = tuple(
        _build(BatchSizeRange, r, f"{where}.batch_sizes[{i}]", {"first_step": (int, False), "last_step": (int, True),
                                                                "global_batch_size": (int, False),
                                                                "evidence": (str, False)})
        for i, r in enumerate(ranges)
    )
    stages = d["stages"]
    if not isinstance(stages, dict) or set(stages) != set(STAGES):
        raise UserError(f"{where}.stages: expected exactly {', '.join(STAGES)}")
    for s, v in stages.items():
        _typed(v, int, f"{where}.stages.{s}")
    files = d["files"]
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        raise UserError(f"{where}.files: expected a list of file names")
    fam = Family(
        name=name,
        description=_typed(d["description"], str, f"{where}.description"),
        hf_repo=_typed(d["hf_repo"], str, f"{where}.hf_repo", nullable=True),
        hf_revisions_source=_typed(d["hf_revisions_source"], str, f"{where}.hf_revisions_source", nullable=True),
        files=tuple(files),
        architecture=_architecture(d["architecture"], f"{where}.architecture"),
        optimizer=_optimizer(d["optimizer"], f"{where}.optimizer"),
        lr_schedule=_lr_schedule(d["lr_schedule"], f"{where}.lr_schedule"),
        data_order=_build(DataOrder, d["data_order"], f"{where}.data_order",
                          {"seed": (int, True), "seq_len": (int, False), "global_indices_url": (str, True),
                           "data_paths": (str, True), "tokenizer": (str, True)}),
        batch_sizes=batch,
        stage_rule=_typed(d["stage_rule"], str, f"{where}.stage_rule"),
        stages=dict(stages),
        steps=_steps(d["steps"], f"{where}.steps"),
        builtin=_typed(d.get("builtin", False), bool, f"{where}.builtin"),
    )
    if not fam.builtin:
        missing = [f"{s}={v}" for s, v in fam.stages.items() if fam.entry(v) is None]
        if missing:
            raise UserError(f"{where}.stages: {', '.join(missing)} not among the listed steps")
    return fam


def load_catalog(path: str | Path | None = None) -> Catalog:
    """Read and validate checkpoints.yaml (default: `catalog_path()`)."""
    p = Path(path) if path is not None else catalog_path()
    try:
        # The C loader when libyaml is present: the step lists make this file large for the pure one.
        raw = yaml.load(p.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except FileNotFoundError:
        raise UserError(f"checkpoint catalog {p} not found (set INJECTION_CATALOG to its location)") from None
    except yaml.YAMLError as err:
        raise UserError(f"checkpoint catalog {p}: not valid YAML: {err}") from None
    if not isinstance(raw, dict) or set(raw) != {"families"} or not isinstance(raw["families"], dict):
        raise UserError(f"{p}: expected one top-level key 'families' mapping names to families")
    families = {name: _family(name, data, f"{p}: families.{name}") for name, data in raw["families"].items()}
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

