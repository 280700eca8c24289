"""The checkpoint directory: the one layout that every pulled, built, converted or exported checkpoint shares,
with its one writer (`write_checkpoint_dir`) and its one reader (`read_checkpoint_dir`).

    DIR/config.json, model.safetensors   an HF causal LM (AutoModelForCausalLM.from_pretrained(DIR))
    DIR/tokenizer.json (+ tokenizer_config.json, special_tokens_map.json)
    DIR/optimizer.safetensors            optional: exp_avg/<hf name>, exp_avg_sq/<hf name> (fp32), step
    DIR/checkpoint.json                  written last: a directory is complete only once it exists

checkpoint.json holds what continuing the original run needs and the HF files do not say: the family and its
kind, the global step S, rows per step and sequence length, the optimizer's hyper-parameters and learning-rate
schedule, whether AdamW moments are present, where the original data stream stands (`data_position`), the
trainer's token count (`tokens_seen`, for schedules in token units) and what the loss adds to the cross-entropy
(`objective`: OLMo 2's z-loss and instance filter).

`seq_len` is the length of the rows the data stream holds and the model is fed; `tokens_per_step` counts the
tokens a step trains on as the original run counted them. They are global_batch_size × seq_len for OLMo; a run
whose rows carry one extra token for the last label (Pythia: rows of 2,049, 2,048 trained tokens each) records
global_batch_size × (seq_len − 1).
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from harness.atomic import replace_dir, staging_dir, write_json_atomic
from harness.errors import UserError
from injection.checkpoints.family import kind_of_model_type
from injection.instance_filter import InstanceFilter
from injection.lr import LRSchedule

CHECKPOINT_JSON = "checkpoint.json"
OPTIMIZER_FILE = "optimizer.safetensors"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class OptimizerSpec:
    """AdamW hyper-parameters of the original run (checkpoint.json's `optimizer`)."""

    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-5
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    decay_norm_and_bias: bool = False
    """OLMo's `optimizer.decay_norm_and_bias`: layer-norm weights and biases get weight decay too."""
    decay_embeddings: bool = False
    """OLMo's `optimizer.decay_embeddings`: the token embedding gets weight decay too."""

    @classmethod
    def from_dict(cls, d: Any, where: str) -> OptimizerSpec:
        if not isinstance(d, dict):
            raise UserError(f"{where}: expected a mapping, got {d!r}")
        known = ("betas", "eps", "weight_decay", "grad_clip", "decay_norm_and_bias", "decay_embeddings")
        unknown = sorted(set(d) - {*known, "name"})
        if unknown:
            raise UserError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(known)})")
        betas = d.get("betas", cls.betas)
        if not (
            isinstance(betas, (list, tuple))
            and len(betas) == 2
            and all(_finite_number(b) and 0 <= b < 1 for b in betas)
        ):
            raise UserError(f"{where}.betas: expected two numbers in [0, 1), got {betas!r}")
        values: dict[str, Any] = {}
        for name in ("eps", "weight_decay", "grad_clip"):
            value = d.get(name, getattr(cls, name))
            if not _finite_number(value) or value < 0:
                raise UserError(f"{where}.{name}: must be a finite number >= 0, got {value!r}")
            values[name] = float(value)
        for name in ("decay_norm_and_bias", "decay_embeddings"):
            value = d.get(name, False)
            if not isinstance(value, bool):
                raise UserError(f"{where}.{name}: expected true or false, got {value!r}")
            values[name] = value
        return cls(betas=(float(betas[0]), float(betas[1])), **values)

    def as_json(self) -> dict[str, Any]:
        return {
            "betas": list(self.betas),
            "eps": self.eps,
            "weight_decay": self.weight_decay,
            "grad_clip": self.grad_clip,
            "decay_norm_and_bias": self.decay_norm_and_bias,
            "decay_embeddings": self.decay_embeddings,
        }


@dataclass(frozen=True)
class ObjectiveSpec:
    """What an update minimises besides the next-token cross-entropy (checkpoint.json's `objective`).

    Empty for most runs. OLMo 2 adds PaLM's z-loss (`z_loss_multiplier` × the squared log-normaliser of the
    softmax at every counted position) and masks the instances ai2-olmo's repetition filter rejects."""

    z_loss_multiplier: float | None = None
    """None: no z-loss."""
    instance_filter: InstanceFilter | None = None
    """None: every instance carries loss."""

    @classmethod
    def from_dict(cls, d: Any, where: str) -> ObjectiveSpec:
        if d is None:
            return cls()
        if not isinstance(d, dict):
            raise UserError(f"{where}: expected a mapping of z_loss_multiplier and instance_filter, got {d!r}")
        unknown = sorted(set(d) - {"z_loss_multiplier", "instance_filter"})
        if unknown:
            raise UserError(f"{where}: unknown key {unknown[0]!r} (known: z_loss_multiplier, instance_filter)")
        z = d.get("z_loss_multiplier")
        if z is not None and (not _finite_number(z) or z < 0):
            raise UserError(f"{where}.z_loss_multiplier: must be a finite number >= 0 or null, got {z!r}")
        filt = d.get("instance_filter")
        return cls(
            None if z is None else float(z),
            None if filt is None else InstanceFilter.from_dict(filt, f"{where}.instance_filter"),
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "z_loss_multiplier": self.z_loss_multiplier,
            "instance_filter": None if self.instance_filter is None else asdict(self.instance_filter),
        }


def _finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class DataPosition:
    """Where the original run's data stream stands at the checkpoint: the first instance of the next batch.

    For OLMo this is its trainer state (`train.pt`): `global_train_examples_seen_this_epoch` within `epoch`, whose
    order is the permutation for seed + epoch. Checkpoints without a trainer state assume step × rows per step.
    """

    epoch: int
    instances_seen: int
    """Instances of `epoch`'s order consumed before the checkpoint: the next batch starts at this index."""
    source: str
    """Where the numbers come from: `train.pt`, `export` (written by the engine), or `step x rows` (assumed)."""

    @classmethod
    def from_dict(cls, d: Any, where: str) -> DataPosition:
        if not isinstance(d, dict) or not all(
            isinstance(d.get(k), int) and d[k] >= 0 for k in ("epoch", "instances_seen")
        ):
            raise UserError(f"{where}: expected {{epoch, instances_seen}} (non-negative integers), got {d!r}")
        return cls(int(d["epoch"]), int(d["instances_seen"]), str(d.get("source", "checkpoint.json")))


@dataclass(frozen=True)
class CheckpointInfo:
    """What checkpoint.json says about a checkpoint the engine starts from (validated)."""

    path: Path
    family: str
    """Catalog family name (`olmo-7b`, `tiny`, ...)."""
    kind: str
    """Family implementation (`olmo`, `tiny`, ...): see injection.checkpoints.family."""
    step: int
    """S: the global step the checkpoint was saved at."""
    global_batch_size: int
    seq_len: int
    """Tokens per row of the data (what the model is fed per row)."""
    tokens_per_row: int
    """Tokens a row counts for in the run's token count (checkpoint.json's tokens_per_step / global_batch_size)."""
    lr_schedule: LRSchedule
    optimizer: OptimizerSpec
    has_optimizer_state: bool
    data_position: DataPosition
    eos_token_id: int | None
    """The run's end-of-text id (the model config's `eos_token_id`): every spliced paragraph ends with it."""
    vocab_size: int | None
    """Rows of the model's embedding (the HF config's `vocab_size`): every token id must be below it."""
    meta: dict[str, Any]
    objective: ObjectiveSpec = ObjectiveSpec()
    """Loss terms and instance masking beyond the plain cross-entropy (none for most runs)."""
    tokens_seen: int | None = None
    """Tokens the original trainer had counted before the checkpoint (OLMo's `global_train_tokens_seen`): where a
    schedule in token units stands. None = step × tokens per step."""

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch_size * self.tokens_per_row

    @property
    def optimizer_file(self) -> Path:
        return self.path / OPTIMIZER_FILE

    def identity(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "family": self.family,
            "kind": self.kind,
            "step": self.step,
            "source": self.meta.get("source"),
        }


def is_complete(path: str | Path) -> bool:
    """A checkpoint directory counts as complete only once checkpoint.json, written last, exists."""
    return (Path(path) / CHECKPOINT_JSON).is_file()


def read_meta(path: str | Path) -> dict[str, Any]:
    """checkpoint.json of a complete directory as a dict (UserError naming the file otherwise)."""
    file = Path(path) / CHECKPOINT_JSON
    if not file.is_file():
        raise UserError(
            f"{path}: not a complete checkpoint directory ({CHECKPOINT_JSON} is missing: an "
            "interrupted pull, or not a checkpoint)"
        )
    try:
        meta = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise UserError(f"{file}: not valid JSON: {err}") from None
    if not isinstance(meta, dict):
        raise UserError(f"{file}: expected a JSON object")
    return meta


def _model_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise UserError(f"{path / 'config.json'}: unreadable: {err}") from None
    if not isinstance(config, dict):
        raise UserError(f"{path / 'config.json'}: expected a JSON object")
    return config


def _model_eos(config: dict[str, Any]) -> int | None:
    """`eos_token_id` of the HF model config (an int, or the first of a list)."""
    eos = config.get("eos_token_id")
    if isinstance(eos, list):
        eos = eos[0] if eos else None
    return eos if isinstance(eos, int) else None


def read_checkpoint_dir(path: str | Path) -> CheckpointInfo:
    """The one reader of the layout: checkpoint.json and config.json, validated field by field."""
    path = Path(path)
    meta = read_meta(path)
    where = str(path / CHECKPOINT_JSON)
    if not (path / "config.json").is_file():
        raise UserError(f"checkpoint {path}: config.json is missing")

    def integer(name: str, minimum: int) -> int:
        value = meta.get(name)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise UserError(f"{where}: field {name!r} must be an integer >= {minimum}, got {value!r}")
        return value

    step, batch, seq_len = integer("step", 0), integer("global_batch_size", 1), integer("seq_len", 1)
    tokens_per_step = meta.get("tokens_per_step", batch * seq_len)
    if (
        isinstance(tokens_per_step, bool)
        or not isinstance(tokens_per_step, int)
        or tokens_per_step % batch
        or not 1 <= tokens_per_step // batch <= seq_len
    ):
        raise UserError(
            f"{where}: field 'tokens_per_step' must be global_batch_size ({batch}) × a number of tokens "
            f"per row from 1 to seq_len ({seq_len}), got {tokens_per_step!r}"
        )
    position = meta.get("data_position")
    data_position = (
        DataPosition.from_dict(position, f"{where}: data_position")
        if position is not None
        else DataPosition(0, step * batch, "step x rows")
    )
    has_state = bool(meta.get("has_optimizer_state", False))
    if has_state and not (path / OPTIMIZER_FILE).is_file():
        raise UserError(f"{where}: has_optimizer_state is true but {path / OPTIMIZER_FILE} is missing")
    family = meta.get("family")
    if not isinstance(family, str) or not family:
        raise UserError(f"{where}: field 'family' must be a non-empty string, got {family!r}")
    model_config = _model_config(path)
    vocab = model_config.get("vocab_size")
    return CheckpointInfo(
        path=path,
        family=family,
        kind=str(meta.get("kind") or _kind_from_model_type(path)),
        step=step,
        global_batch_size=batch,
        seq_len=seq_len,
        tokens_per_row=tokens_per_step // batch,
        lr_schedule=LRSchedule.from_dict(meta.get("lr_schedule"), f"{where}: lr_schedule"),
        optimizer=OptimizerSpec.from_dict(meta.get("optimizer") or {}, f"{where}: optimizer"),
        has_optimizer_state=has_state,
        data_position=data_position,
        eos_token_id=_model_eos(model_config),
        vocab_size=vocab if isinstance(vocab, int) else None,
        meta=meta,
        objective=ObjectiveSpec.from_dict(meta.get("objective"), f"{where}: objective"),
        tokens_seen=_optional_count(meta, "tokens_seen", where),
    )


def _optional_count(meta: dict[str, Any], name: str, where: str) -> int | None:
    value = meta.get(name)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise UserError(f"{where}: field {name!r} must be an integer >= 0 or absent, got {value!r}")
    return value


def _kind_from_model_type(path: Path) -> str:
    """Checkpoints written before `kind` was recorded: the family kind of the HF model type."""
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    return kind_of_model_type(str(config.get("model_type")), str(path / "config.json"))


def checkpoint_meta(
    *,
    family: str,
    kind: str,
    step: int,
    source: str,
    global_batch_size: int,
    seq_len: int,
    lr_schedule: LRSchedule,
    optimizer: OptimizerSpec,
    data_position: DataPosition | None = None,
    tokens_per_row: int | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The checkpoint.json fields, from typed values (`write_checkpoint_dir` adds `has_optimizer_state`).
    `tokens_per_row` defaults to `seq_len` (see the module docstring)."""
    return {
        "family": family,
        "kind": kind,
        "step": step,
        "source": source,
        "global_batch_size": global_batch_size,
        "seq_len": seq_len,
        "tokens_per_step": global_batch_size * (seq_len if tokens_per_row is None else tokens_per_row),
        "lr_schedule": lr_schedule.as_json(),
        "optimizer": optimizer.as_json(),
        "data_position": asdict(data_position) if data_position is not None else None,
        **extra,
    }


def write_checkpoint_dir(
    model, tokenizer, dest: str | Path, meta: dict[str, Any], optimizer_state: dict[str, Any] | None
) -> Path:
    """The one writer: an HF model, its tokenizer, optional AdamW moments and checkpoint.json at `dest`.

    `optimizer_state` maps `exp_avg/<hf param name>`, `exp_avg_sq/<hf param name>` and `step` to tensors.
    Everything is written into a staging directory beside `dest` and renamed into place, so a reader never
    sees a half-written checkpoint; an existing `dest` is replaced.
    """
    dest = Path(dest)
    tmp = staging_dir(dest)
    try:
        model.save_pretrained(str(tmp), safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        if optimizer_state:
            tensors = {k: v.detach().contiguous().cpu() for k, v in optimizer_state.items()}
            save_file(tensors, str(tmp / OPTIMIZER_FILE))
        mark_complete(tmp, {**meta, "has_optimizer_state": bool(optimizer_state)})
        replace_dir(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def mark_complete(directory: Path, meta: dict[str, Any]) -> None:
    """Write checkpoint.json (atomically, last): from here on the directory counts as a complete checkpoint."""
    write_json_atomic(Path(directory) / CHECKPOINT_JSON, {**meta, "format_version": FORMAT_VERSION})
