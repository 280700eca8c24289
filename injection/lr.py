"""The learning rate as a pure function of the global step: the original run's schedule, continued.

One `LRSchedule` type serves the catalog (each run's published schedule), checkpoint.json (`lr_schedule`) and the
engine. Two trainers' schedulers are stated here, each as the formula its trainer computes (tests compare them):

ai2-olmo's `CosWithWarmup` / `LinearWithWarmup` (kinds `cosine`, `linear`), at global step s:

    1. s < warmup_steps:  linear warm-up from warmup_min_lr (default 0.1·peak) to peak
    2. s >= t_max:        the floor, alpha_f·peak
    3. otherwise:         cosine (or linear) decay from peak to the floor over [warmup_steps, t_max)

GPT-NeoX's `AnnealingLR` with cosine decay (kind `gpt-neox-cosine`, the Pythia runs), after n applied updates,
with W = warmup_steps and T = t_max (GPT-NeoX's lr_decay_iters):

    1. n <= W:            peak · n / W (from 0)
    2. otherwise:         max(alpha_f·peak, peak/2 · (1 + cos(π · (min(n, T − W) − W) / T)))

    The cosine runs over a period of T, not T − W, and never reaches its end: the floor takes over part-way
    (at n = 115,139 of Pythia's 143,000) and holds to the end of training.

Which step each update uses differs between the two trainers:
- OLMo increments its global step *before* the update, so the update that turns the checkpoint saved at step S
  into the one saved at S+1 is taken with lr(S+1);
- GPT-NeoX sets lr(n) with n = updates applied so far and steps its scheduler *after* each update, so that
  update is taken with lr(S) (the very first update of a run uses lr(0) = 0). Updates GPT-NeoX skipped on an
  fp16 overflow advance neither n nor the checkpoint's weights but do advance the step count; published
  checkpoints do not say how many there were (a few per thousand at most), so n = S is assumed.

Run update k (θ_k → θ_{k+1}, batch S+k) therefore uses `learning_rate(schedule, S + k + UPDATE_OFFSET[kind])`;
see `lr_for_update`.

OLMo's schedules may also run in tokens (`units: tokens`, OLMo 2): warm-up and horizon are token counts and the
position is the trainer's count of tokens trained on, which OLMo advances by rows × row length before each
update. The update from a checkpoint that had seen T tokens, with B rows of L tokens per step, then uses
lr(T + (k + 1)·B·L).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

from harness.errors import UserError

ScheduleKind = Literal["cosine", "linear", "constant", "gpt-neox-cosine"]
Units = Literal["steps", "tokens"]
KINDS: tuple[str, ...] = ("cosine", "linear", "constant", "gpt-neox-cosine")
#: Run update k from global step S uses lr(S + k + offset): 1 where the trainer counts the step before the
#: update (OLMo), 0 where it steps the scheduler after it (GPT-NeoX).
UPDATE_OFFSET = {"cosine": 1, "linear": 1, "constant": 1, "gpt-neox-cosine": 0}


@dataclass(frozen=True)
class LRSchedule:
    """A run's scheduler fields, as the catalog and `checkpoint.json` record them under `lr_schedule`."""

    kind: ScheduleKind
    """`cosine` (OLMo-1B), `linear` (OLMo-7B), `gpt-neox-cosine` (Pythia) or `constant`."""
    peak_lr: float
    """The optimizer's learning rate in the run's config: the value reached at the end of warm-up."""
    warmup_steps: int = 0
    """Linear warm-up length, in the schedule's `units` (steps, or tokens)."""
    alpha_f: float = 0.1
    """Floor as a fraction of the peak: eta_min = alpha_f · peak_lr (GPT-NeoX's min_lr / lr)."""
    t_max: int | None = None
    """Length of the decay: the step (or token count) at which OLMo's reaches the floor (OLMo uses the run's length
    when unset); the cosine's period for `gpt-neox-cosine` (GPT-NeoX's lr_decay_iters)."""
    warmup_min_lr: float | None = None
    """Learning rate at step 0 of OLMo's warm-up; OLMo's default is 0.1 · peak_lr. GPT-NeoX warms up from 0."""
    units: Units = "steps"
    """What `warmup_steps` and `t_max` count and what the schedule's position is: optimizer `steps`, or `tokens`
    trained on (OLMo's `scheduler.units: tokens`)."""

    @classmethod
    def from_dict(cls, d: Any, where: str = "lr_schedule") -> LRSchedule:
        """Validated; unknown keys, missing fields and non-finite or negative values name the field."""
        if not isinstance(d, dict):
            raise UserError(f"{where}: expected a mapping, got {d!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(str(k) for k in set(d) - known)
        if unknown:
            raise UserError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})")
        kind = d.get("kind")
        if kind not in KINDS:
            raise UserError(f"{where}.kind: expected one of {', '.join(KINDS)}, got {kind!r}")
        if "peak_lr" not in d:
            raise UserError(f"{where}: missing field 'peak_lr'")

        def number(name: str, value: Any, integer: bool = False) -> Any:
            if value is None:
                return None
            if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and value != int(value)):
                raise UserError(f"{where}.{name}: expected {'an integer' if integer else 'a number'}, got {value!r}")
            if not math.isfinite(value) or value < 0:
                raise UserError(f"{where}.{name}: must be a finite number >= 0, got {value!r}")
            return int(value) if integer else float(value)

        sched = cls(
            kind=kind,
            peak_lr=number("peak_lr", d["peak_lr"]),
            warmup_steps=number("warmup_steps", d.get("warmup_steps") or 0, integer=True),
            alpha_f=0.1 if d.get("alpha_f") is None else number("alpha_f", d["alpha_f"]),
            t_max=number("t_max", d.get("t_max"), integer=True),
            warmup_min_lr=number("warmup_min_lr", d.get("warmup_min_lr")),
            units=d.get("units") or "steps",
        )
        if sched.units not in ("steps", "tokens"):
            raise UserError(f"{where}.units: expected steps or tokens, got {sched.units!r}")
        if sched.kind == "gpt-neox-cosine" and sched.units != "steps":
            raise UserError(f"{where}.units: GPT-NeoX's schedule counts steps")
        if sched.peak_lr <= 0:
            raise UserError(f"{where}.peak_lr: must be > 0, got {sched.peak_lr}")
        if sched.kind != "constant" and sched.t_max is None:
            raise UserError(
                f"{where}: missing field 't_max' (required for a {kind} schedule: the original run's max steps)"
            )
        if sched.kind != "constant" and sched.t_max <= sched.warmup_steps:
            raise UserError(f"{where}.t_max: ({sched.t_max}) must exceed 'warmup_steps' ({sched.warmup_steps})")
        if sched.kind == "gpt-neox-cosine" and sched.warmup_min_lr is not None:
            raise UserError(f"{where}.warmup_min_lr: GPT-NeoX warms up from 0; leave it unset for {kind}")
        return sched

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def learning_rate(schedule: LRSchedule, step: int) -> float:
    """The learning rate the run's scheduler gives at `step` (pure): OLMo's global step (or its count of tokens, for
    a schedule in token units), or GPT-NeoX's count of applied updates for `gpt-neox-cosine`."""
    peak = schedule.peak_lr
    if schedule.kind == "constant":
        return peak
    if schedule.kind == "gpt-neox-cosine":
        return _gpt_neox_cosine(schedule, step)
    eta_min = peak * schedule.alpha_f
    # 1) linear warm-up
    if step < schedule.warmup_steps:
        start = schedule.warmup_min_lr if schedule.warmup_min_lr is not None else 0.1 * peak
        return start + (peak - start) * min(step, schedule.warmup_steps) / schedule.warmup_steps
    assert schedule.t_max is not None
    # 2) past the end of the decay: the floor
    if step >= schedule.t_max:
        return eta_min
    # 3) decay from peak to floor over [warmup_steps, t_max)
    frac = (step - schedule.warmup_steps) / (schedule.t_max - schedule.warmup_steps)
    if schedule.kind == "cosine":
        return eta_min + (peak - eta_min) * (1 + math.cos(math.pi * frac)) / 2
    return peak - (peak - eta_min) * frac


def _gpt_neox_cosine(schedule: LRSchedule, n: int) -> float:
    peak, warmup, period = schedule.peak_lr, schedule.warmup_steps, schedule.t_max
    assert period is not None
    # 1) linear warm-up from 0 (inclusive of n = W, where it reaches the peak)
    if warmup > 0 and n <= warmup:
        return peak * n / warmup
    # 2) cosine of period T started after warm-up, its argument held at T − 2W from n = T − W on, floored
    x = min(n, period - warmup) - warmup
    return max(schedule.alpha_f * peak, peak / 2 * (1 + math.cos(math.pi * x / period)))


def lr_for_update(
    schedule: LRSchedule, start_step: int, k: int, *, start_tokens: int | None = None, tokens_per_step: int = 0
) -> float:
    """Learning rate of run update k (θ_k → θ_{k+1}) when continuing from global step `start_step`: lr(S+k+1) for
    OLMo's schedules, lr(S+k) for GPT-NeoX's; in token units lr(T + (k+1)·tokens_per_step) from the trainer's
    count T at the checkpoint (see the module docstring)."""
    n = k + UPDATE_OFFSET[schedule.kind]
    if schedule.units == "tokens":
        if start_tokens is None or tokens_per_step <= 0:
            raise UserError("a schedule in token units needs the checkpoint's token count and the tokens per step")
        return learning_rate(schedule, start_tokens + n * tokens_per_step)
    return learning_rate(schedule, start_step + n)
