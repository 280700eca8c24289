"""What a run does at every update, resolved once before the first one: pure functions, no model, no I/O.

The loop reads everything from a `RunPlan`: rows per update and how they split over ranks and micro-batches (one
decision, `batch_geometry`, which the data stream and the launcher's checks also ask), the learning rate of every
update, and the steps at which probes are evaluated and checkpoints saved.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from harness.errors import UserError
from injection.checkpoints.family import model_family
from injection.engine.objective import Objective, make_objective
from injection.lr import LRSchedule, lr_for_update


def valid_micro_batches(global_batch: int, world: int, limit: int = 64) -> list[int]:
    """Micro-batch sizes (up to `limit`) that split `global_batch` rows evenly over `world` ranks."""
    if global_batch % world:
        return []
    per_rank = global_batch // world
    return [m for m in range(1, min(per_rank, limit) + 1) if per_rank % m == 0]


def resolve_micro_batch(global_batch: int, world: int, micro_batch: int | str, max_micro_batch: int) -> int:
    """`micro_batch` itself, or for `auto` the largest size up to `max_micro_batch` that splits `global_batch`
    rows evenly over `world` ranks."""
    if micro_batch != "auto":
        return int(micro_batch)
    valid = [m for m in valid_micro_batches(global_batch, world, max_micro_batch)]
    if not valid:
        raise UserError(
            f"global batch {global_batch} does not split over {world} ranks: choose another number of "
            "ranks (or global_batch)"
        )
    return valid[-1]


def accumulation_steps(global_batch: int, micro_batch: int, world: int) -> int:
    """Gradient-accumulation steps; UserError (with the valid choices) unless
    global_batch = micro_batch × accumulation × ranks."""
    per_pass = micro_batch * world
    if global_batch % per_pass:
        valid = valid_micro_batches(global_batch, world)
        hint = (
            f"micro_batch values that fit {world} rank(s): {', '.join(map(str, valid))}"
            if valid
            else f"{global_batch} rows do not split over {world} ranks at all: choose another number of ranks"
        )
        raise UserError(
            f"global batch {global_batch} is not divisible by micro_batch ({micro_batch}) × ranks ({world}) "
            f"= {per_pass}; {hint}"
        )
    return global_batch // per_pass


def learning_rates(
    schedule: LRSchedule,
    start_step: int,
    total_steps: int,
    *,
    constant_lr: float | None = None,
    lr_scale: float = 1.0,
    start_tokens: int | None = None,
    tokens_per_step: int = 0,
) -> tuple[float, ...]:
    """The learning rate of every update k = 0 … T−1: the original schedule continued (update k uses lr(S+k+1), or
    in token units lr(T + (k+1)·tokens_per_step) from the trainer's count T), or a constant, times `lr_scale`."""
    if constant_lr is not None:
        return (constant_lr,) * total_steps
    return tuple(
        lr_for_update(schedule, start_step, k, start_tokens=start_tokens, tokens_per_step=tokens_per_step) * lr_scale
        for k in range(total_steps)
    )


def evaluation_steps(
    total_steps: int,
    interval: int,
    injection_steps: Sequence[int],
    dense_window: int,
    explicit: Sequence[int] | None = None,
) -> frozenset[int]:
    """The run steps whose probe values are logged: 0, the last, every `interval`-th step (or the `explicit` ones
    instead), and with `dense_window` > 0 every step t_i … t_i + dense_window around each injection step t_i (t_i
    itself is the state before encounter i, which effectivity and retainability are measured against)."""
    regular = range(interval, total_steps + 1, interval) if explicit is None else explicit
    steps = {0, total_steps, *regular}
    for t in injection_steps if dense_window > 0 else ():
        steps.update(range(t, min(t + dense_window, total_steps) + 1))
    return frozenset(steps)


def checkpoint_steps(total_steps: int, interval: int) -> frozenset[int]:
    """Steps after whose update a resumable checkpoint is saved: every `interval` and the last."""
    return frozenset({total_steps, *(range(interval, total_steps + 1, interval) if interval else ())})


@dataclass(frozen=True)
class BatchGeometry:
    """How the rows of one update are split: global_batch = micro_batch × accumulation × world."""

    global_batch: int
    """Rows per update (the run's B, which may differ from the checkpoint's); the data stream reads this many."""
    micro_batch: int
    """Rows per rank per forward/backward pass."""
    accumulation: int
    """Micro-batches per rank per update."""
    world: int
    """Ranks."""

    @property
    def rows_per_rank(self) -> int:
        return self.micro_batch * self.accumulation


def batch_geometry(cfg, ckpt, world: int) -> BatchGeometry:
    """The one decision of how many rows an update reads and how they split over ranks and micro-batches: the
    configured `global_batch` or else the checkpoint's rows per step (CheckpointInfo; may be None when the config
    gives `global_batch`). UserError, naming the valid choices, where the rows do not split."""
    global_batch = cfg.global_batch or ckpt.global_batch_size
    micro_batch = resolve_micro_batch(global_batch, world, cfg.micro_batch, cfg.max_micro_batch)
    return BatchGeometry(global_batch, micro_batch, accumulation_steps(global_batch, micro_batch, world), world)


@dataclass(frozen=True)
class RunPlan:
    total_steps: int
    geometry: BatchGeometry
    seq_len: int
    """Tokens per row fed to the model."""
    lrs: tuple[float, ...]
    """Learning rate of update k (θ_k → θ_{k+1})."""
    eval_steps: frozenset[int]
    checkpoint_steps: frozenset[int]
    objective: Objective = Objective()
    """The original trainer's loss: its normalisation, extra terms and masked rows (injection.engine.objective)."""
    tokens_per_row: int | None = None
    """Tokens a row counts for, as the original run counted them (the checkpoint's); None = seq_len."""

    @property
    def global_batch(self) -> int:
        return self.geometry.global_batch

    @property
    def micro_batch(self) -> int:
        return self.geometry.micro_batch

    @property
    def accumulation(self) -> int:
        return self.geometry.accumulation

    @property
    def world(self) -> int:
        return self.geometry.world

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch * (self.seq_len if self.tokens_per_row is None else self.tokens_per_row)


def make_plan(cfg, ckpt, world: int, injection_steps: Sequence[int]) -> RunPlan:
    """The plan of a run from its configuration and the checkpoint it starts from (CheckpointInfo)."""
    geometry = batch_geometry(cfg, ckpt, world)
    return RunPlan(
        total_steps=cfg.total_steps,
        geometry=geometry,
        seq_len=ckpt.seq_len,
        lrs=learning_rates(
            ckpt.lr_schedule,
            ckpt.step,
            cfg.total_steps,
            constant_lr=cfg.optimizer.constant_lr,
            lr_scale=cfg.optimizer.lr_scale,
            start_tokens=ckpt.tokens_seen if ckpt.tokens_seen is not None else ckpt.step * ckpt.tokens_per_step,
            tokens_per_step=geometry.global_batch * ckpt.tokens_per_row,
        ),
        eval_steps=evaluation_steps(
            cfg.total_steps, cfg.eval_interval, injection_steps, cfg.eval_dense_window, cfg.eval_steps
        ),
        checkpoint_steps=checkpoint_steps(cfg.total_steps, cfg.checkpoint_interval),
        objective=make_objective(
            model_family(ckpt.kind).loss_factor(ckpt.seq_len),
            z_loss_multiplier(cfg, ckpt),
            masks_rows=instance_filter(cfg, ckpt) is not None,
        ),
        tokens_per_row=ckpt.tokens_per_row,
    )


def z_loss_multiplier(cfg, ckpt) -> float | None:
    """The run's z-loss multiplier: the configuration's `objective.z_loss_multiplier` (0 = none), else the
    checkpoint's (None = none)."""
    override = cfg.objective.z_loss_multiplier
    if override is None:
        return ckpt.objective.z_loss_multiplier
    return float(override) or None


def instance_filter(cfg, ckpt):
    """The repetition filter the run masks rows by: the checkpoint's, unless `objective.instance_filter` is false."""
    return ckpt.objective.instance_filter if cfg.objective.instance_filter else None
