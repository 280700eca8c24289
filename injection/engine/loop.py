"""The training loop: continue pretraining with DeepSpeed, evaluate every probe after every update.

    k = 0: θ_0 is the checkpoint at global step S; probes are evaluated on it.
    update k (k = 0 … T−1): batch k (the next B original rows, paragraphs spliced in), lr(S+k+1) → θ_{k+1};
    probes evaluated on θ_{k+1} and logged as step k+1.

`run_training` sets a run up (process group, plan, DeepSpeed engine, hooks, optimizer state or the checkpoint it
resumes) and hands it to `train`, the loop. Every per-update value (rows, micro-batches, learning rate, evaluation
and checkpoint steps) was resolved up front into the `RunPlan`; the batches come from one pipeline
(engine.batches); what is written about the run (manifest, probe log, metrics, monitors) hangs off the loop as
hooks (engine.hooks).
"""

from __future__ import annotations

import math
import random
import signal
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from harness import rundir
from harness.errors import Stopped, UserError
from harness.http import HttpError
from injection.engine import run_state, zero
from injection.engine.batches import InjectedBatches, original_batch
from injection.engine.config import ExperimentConfig
from injection.engine.entropy import KnowledgeEntropyHook
from injection.engine.evaluate import evaluate_probes
from injection.engine.hooks import Hook, ManifestHook, MetricsHook, ProbeLogHook, ProgressHook, Run, first_manifest
from injection.engine.inputs import RunInputs
from injection.engine.kernels import zero_gradient_loss
from injection.engine.monitor import monitor_hook
from injection.engine.objective import masked_rows
from injection.engine.plan import RunPlan, make_plan
from injection.engine.transfers import TransferStatsHook
from injection.splice import shard_batch


class Interrupted(Stopped):
    """The run stopped at a clean point on SIGINT or SIGTERM, after saving a checkpoint."""

    def __init__(self, run_dir: Path, step: int, signum: int, world: int = 1) -> None:
        self.run_dir, self.step, self.signum = run_dir, step, signum
        self.exit_code = 128 + signum
        super().__init__(
            f"interrupted ({signal.Signals(signum).name}) after step {step}; the checkpoint is "
            f"saved: continue with `{run_state.resume_command(run_dir, world)}`"
        )


class StopRequest:
    """SIGINT / SIGTERM ask the loop to stop after the current update; a second Ctrl-C stops at once."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def agreed(self, run: Run) -> int | None:
        """The signal if any rank received one (every rank stops at the same step)."""
        if run.world == 1:
            return self.signum

        flag = torch.tensor([self.signum or 0], device=run.engine.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)  # sync point, once per update
        return int(flag.item()) or None


class DataUnavailable(Stopped):
    """The data could not be read (its host kept failing past the retry budget, or stopped serving a file): the run
    stopped before the update that needed it, with a checkpoint of the last completed one."""

    exit_code = 75  # EX_TEMPFAIL: resuming succeeds once the host serves the data again

    def __init__(self, run_dir: Path, step: int, cause: str, world: int = 1) -> None:
        self.run_dir, self.step = run_dir, step
        kept = f"after step {step}, with its checkpoint" if step else "before its first update"
        super().__init__(
            f"{cause}; the run stopped {kept}: continue with `{run_state.resume_command(run_dir, world)}` once the "
            "host serves the data again"
        )


class LostRank(Exception):
    """Another rank stopped answering (its node or process died, it hung past `distributed_timeout`, or the
    network failed): this rank stops too, and the run continues from its newest checkpoint."""

    exit_code = 75  # EX_TEMPFAIL: nothing is wrong with the input; resuming may succeed

    def __init__(self, run_dir: Path, rank: int, world: int, what: str) -> None:
        ckpts = run_state.complete_checkpoints(run_dir)
        since = f"from the checkpoint after step {ckpts[-1][0]}" if ckpts else "from step 0 (no checkpoint yet)"
        super().__init__(
            f"rank {rank} of {world} lost contact with the other ranks ({what}): a node or one of its "
            f"processes stopped (see its log) or the network failed; continue {since} with "
            f"`{run_state.resume_command(run_dir, world)}` on every node"
        )


class Diverged(Exception):
    def __init__(self, step: int, what: str) -> None:
        self.step, self.what = step, what
        super().__init__(f"{what} at update {step - 1} (run step {step})")


# ---- one update -----------------------------------------------------------------------------------------


def update(run: Run, batch: np.ndarray, lr: float) -> dict[str, float]:
    """One optimizer update on this rank's rows of the global batch; returns loss (the cross-entropy), z_loss, the
    masked rows, grad_norm and whether it was skipped. Positions a masked array masks carry no loss (rows the
    original run's filter rejected). A micro-batch whose loss is not finite adds no gradient; with
    `nonfinite: skip` the update is then applied at learning rate 0 (parameters unchanged), with `stop` the run
    stops (Diverged)."""
    engine, plan = run.engine, run.plan
    objective = plan.objective
    micro_batches = shard_batch(batch, run.rank, run.world, plan.micro_batch, plan.accumulation)
    zero.set_lr(engine, lr)
    terms, bad = [], 0
    for i, micro in enumerate(micro_batches):
        out = engine(**objective.model_inputs(micro, engine.device))
        loss = objective.loss(out)  # the original trainer's objective (its normalisation, its extra terms)
        if not torch.isfinite(loss):  # sync point: the decision must come before backward
            bad += 1
            loss = zero_gradient_loss(out)  # backward still runs on every micro-batch, adding nothing
        if i == len(micro_batches) - 1 and _any_rank(run, bad):
            if run.cfg.nonfinite == "stop":
                raise Diverged(0, "non-finite loss")  # the step is filled in by the caller
            zero.set_lr(engine, 0.0)
        engine.backward(loss)
        engine.step()  # DeepSpeed applies the update only at the accumulation boundary
        terms.append(objective.logged(out))
    logged = {name: torch.stack([t[name] for t in terms]).mean() for name in terms[0]}
    if run.world > 1:
        for value in logged.values():
            dist.all_reduce(value)  # sync point: the logged values are the global batch's means
            value /= run.world
    grad_norm = engine.get_global_grad_norm()
    return {
        **{name: float(value) for name, value in logged.items()},
        "masked_rows": masked_rows(batch),
        "grad_norm": float(grad_norm if grad_norm is not None else 0.0),
        "skipped": bool(_any_rank(run, bad)),
    }


def _any_rank(run: Run, count: int) -> bool:
    if run.world == 1:
        return count > 0

    flag = torch.tensor([count], device=run.engine.device)
    dist.all_reduce(flag)
    return int(flag.item()) > 0


def evaluate(run: Run, step: int) -> float:
    """Score every probe on the current weights (split over ranks); returns the seconds it took."""
    t0 = time.perf_counter()
    scores = evaluate_probes(
        run.engine.module,
        run.inputs.probe_items,
        run.cfg.eval_batch_tokens,
        run.rank,
        run.world,
        token_stats=run.cfg.probe_token_stats,
    )
    if scores is not None:
        for hook in run.hooks:
            hook.on_eval(run, step, scores)
    return time.perf_counter() - t0


def save(run: Run, step: int) -> None:
    """A resumable checkpoint of every rank, with each hook's state; then the hooks hear it is complete."""
    state = {hook.name: hook.state_dict() for hook in run.hooks}
    run_state.save_checkpoint(run.engine, run.run_dir, step, run.rank, run.world, state, run.cfg.keep_checkpoints)
    for hook in run.hooks:
        hook.on_checkpoint(run, step)


def next_batch(run: Run, batches: InjectedBatches, k: int, k0: int) -> np.ndarray:
    """Batch k; when its data cannot be read, a clean stop on every rank instead: θ_k is saved (update k has not
    begun, so nothing is half-applied) and DataUnavailable raised."""
    batch, failure = None, None
    try:
        batch = batches.get(k)
    except HttpError as err:  # the reader already retried within its budget
        failure = err
    if not _any_rank(run, failure is not None):  # sync point (several ranks): all stop, or none
        return batch
    if k > k0 and k not in run.plan.checkpoint_steps:
        save(run, k)
    cause = str(failure) if failure is not None else "another rank could not read the data"
    run.stop = {"step": k, "reason": f"data unavailable: {getattr(failure, 'url', cause)}"}
    raise DataUnavailable(run.run_dir, k, cause, run.world)


def diverged_advice(run: Run, err: Diverged) -> str:
    """What to do after a divergence, as things are: the newest checkpoint that exists, and `nonfinite: skip` only
    where it can help (a non-finite loss, not yet skipped; a non-finite gradient norm has already moved the weights)."""
    ckpts = run_state.complete_checkpoints(run.run_dir)
    kept = f"the checkpoint after step {ckpts[-1][0]} is intact" if ckpts else "no checkpoint was saved before it"
    start = f"from step {ckpts[-1][0]}" if ckpts else "from step 0"
    resume = run_state.resume_command(run.run_dir, run.world)
    if err.what == "non-finite loss" and run.cfg.nonfinite == "stop":
        return (
            f"{kept}: resume it {start} with `{resume} --set nonfinite=skip` to skip such updates, or lower the "
            "learning rate in a new run"
        )
    why = "nonfinite: skip is already set" if run.cfg.nonfinite == "skip" else "skipping covers losses, not gradients"
    return (
        f"{kept}; resuming would repeat it ({why}): lower the learning rate (optimizer.lr_scale or "
        "optimizer.constant_lr) in a new run"
    )


# ---- the loop -------------------------------------------------------------------------------------------


def run_training(
    cfg: ExperimentConfig, inputs: RunInputs, resume: bool = False, progress: bool = True, hooks: Sequence[Hook] = ()
) -> Path:
    """Train T updates from the checkpoint, writing the run directory (rank 0). Returns the run directory.

    `hooks` are added on every rank after the writing hooks (e.g. an ExportHook). Raises Interrupted after a
    clean stop on SIGINT/SIGTERM, UserError when the run diverges (the manifest says where), LostRank when
    another rank stops answering."""
    seed_everything(cfg.seed)
    rank, world = zero.init_distributed(cfg.distributed_timeout)
    decision = run_state.check_run_dir(cfg, resume)  # every rank, before the first collective
    run_state.claim_run_dir(cfg, rank, world)  # one writer per run directory, held to the run's end
    if decision.action == "done":
        if rank == 0:
            zero.say(decision.message)
        run_state.release_run_dir(decision.run_dir, rank)
        return decision.run_dir
    plan = plan_run(cfg, inputs, world)
    run = Run(cfg, inputs, plan, decision.run_dir, rank, world, zero.build_engine(cfg, inputs.checkpoint, plan, rank))
    run.engine.train()  # training mode (from_pretrained returns eval mode; activation checkpointing needs this)
    run.hooks = run_hooks(run, decision, progress, hooks)
    k0 = restore(run) if decision.action == "resume" else start_fresh(run)
    for hook in run.hooks:
        hook.on_start(run, k0)
    batches = InjectedBatches(inputs.stream, inputs.injections, inputs.records, stop_at=plan.total_steps)
    status, error = "complete", None
    try:
        with StopRequest() as stop, batches:
            if k0 == 0:
                evaluate(run, 0)
            train(run, batches, k0, stop)
    except BaseException as err:
        status, error = stopped(run, err)
    finish(run, status, error)
    return run.run_dir


def train(run: Run, batches: InjectedBatches, k0: int, stop: StopRequest) -> int:
    """Updates k0 … T−1. Returns the last run step reached; raises Interrupted, DataUnavailable or Diverged."""
    plan = run.plan
    for k in range(k0, plan.total_steps):
        batch = next_batch(run, batches, k, k0)
        t0 = time.perf_counter()
        try:
            metrics = update(run, batch, plan.lrs[k])
        except Diverged as err:
            raise Diverged(k + 1, err.what) from None
        step = k + 1
        if not math.isfinite(metrics["grad_norm"]):
            raise Diverged(step, "non-finite gradient norm")
        metrics.update(
            lr=0.0 if metrics["skipped"] else plan.lrs[k],
            tokens_per_s=plan.tokens_per_step / (time.perf_counter() - t0),
        )
        if torch.cuda.is_available():
            metrics["max_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30  # this rank's peak
        metrics["eval_s"] = evaluate(run, step) if step in plan.eval_steps else 0.0
        for hook in run.hooks:
            hook.on_update(run, step, metrics)
        signum = stop.agreed(run)
        if step in plan.checkpoint_steps or signum:
            save(run, step)
        if signum and step < plan.total_steps:
            raise Interrupted(run.run_dir, step, signum, run.world)
    return plan.total_steps


# ---- setting a run up -----------------------------------------------------------------------------------


def prepare_optimizer_state(run: Run) -> dict[str, Any]:
    """The checkpoint's fp32 weights (bf16 runs) and AdamW moments into the engine; returns what the manifest
    records about them."""
    cfg, ckpt, engine = run.cfg, run.inputs.checkpoint, run.engine
    if cfg.precision == "bf16":
        # DeepSpeed builds its fp32 master weights from the bf16-cast model; put the checkpoint's own back
        zero.restore_master_weights(engine, ckpt.path)
    if cfg.optimizer.fresh_moments:
        _warn_fresh(run, "optimizer.fresh_moments is set")
        return {"moments": "fresh", "why": "optimizer.fresh_moments"}
    if ckpt.has_optimizer_state:
        zero.restore_moments(engine, ckpt.optimizer_file)
        return {"moments": "restored", "from": str(ckpt.optimizer_file)}
    if cfg.optimizer.moment_warmup_steps:
        return warm_up_moments(run, cfg.optimizer.moment_warmup_steps)
    _warn_fresh(run, f"{ckpt.path} has no optimizer state (optimizer.moment_warmup_steps can rebuild it)")
    return {"moments": "fresh", "why": "the checkpoint has no optimizer state"}


def _warn_fresh(run: Run, why: str) -> None:
    if run.rank == 0:
        zero.warn(
            f"WARNING: training starts with FRESH AdamW moments ({why}); the original run's optimizer state "
            "is not continued and the first updates will be larger than the original run's."
        )


def warm_up_moments(run: Run, steps: int) -> dict[str, Any]:
    """Rebuild AdamW's moments from the original batches S−K … S−1 at learning rate 0 (the weights do not move),
    then set AdamW's step count to the original run's, so bias correction continues as if never interrupted."""
    ckpt = run.inputs.checkpoint
    stream = run.inputs.stream
    for j in range(-steps, 0):
        metrics = update(run, original_batch(stream, j), 0.0)
        if not math.isfinite(metrics["grad_norm"]):
            raise UserError(
                f"moment warm-up: the gradient norm of the batch {-j} step(s) before the checkpoint is not finite"
            )
    adam_step = int(ckpt.meta.get("optimizer_step") or ckpt.step)
    zero.set_adam_step(run.engine, adam_step)
    first, last = stream.position(-steps), stream.position(-1)
    return {
        "moments": "rebuilt",
        "warmup_steps": steps,
        "adam_step": adam_step,
        "batches": f"epoch {first[0]} positions {first[1]:,}…{last[1] + stream.batch_size - 1:,} "
        f"(global steps {ckpt.step - steps}…{ckpt.step - 1})",
    }


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def plan_run(cfg: ExperimentConfig, inputs: RunInputs, world: int) -> RunPlan:
    """The run's plan; the data stream must read the rows per update it decides (prepare_inputs builds it so,
    inputs assembled by hand may not)."""
    plan = make_plan(cfg, inputs.checkpoint, world, sorted(inputs.injections))
    if inputs.stream.batch_size != plan.global_batch:
        raise UserError(f"the data stream reads {inputs.stream.batch_size} rows per step, the run {plan.global_batch}")
    return plan


def run_hooks(run: Run, decision: run_state.Decision, progress: bool, extra: Sequence[Hook]) -> list[Hook]:
    """Rank 0's writing hooks, the manifest first (the run directory opened before any), then `extra` and the
    knowledge-entropy measurement on every rank. They start in this order and end in the reverse one, so the
    manifest is written last."""
    earlier = run_state.open_run_dir(run.cfg, decision, run.inputs.all_records) if run.rank == 0 else None
    every_rank = [*extra, *KnowledgeEntropyHook.for_run(run)]  # each rank runs the entropy's forwards, rank 0 writes
    if run.rank != 0:
        return every_rank
    cfg, run_dir = run.cfg, run.run_dir
    writers: list[Hook] = [
        ManifestHook(run_dir, first_manifest(run, earlier)),
        ProbeLogHook(run_dir, run.inputs.probe_items, cfg.log_flush_steps, rundir.probe_schema(cfg.probe_token_stats)),
        MetricsHook(run_dir, cfg.log_flush_steps),
    ]
    writers += [h for h in (monitor_hook(cfg, run_dir),) if h is not None]
    if progress:
        writers.append(ProgressHook(cfg.total_steps, cfg.log_interval))
    writers.append(TransferStatsHook())
    return [*writers, *every_rank]


def restore(run: Run) -> int:
    """The newest complete checkpoint into the engine and the RNGs, each hook's state back; returns its step."""
    k0, saved = run_state.load_checkpoint(run.engine, run.run_dir, run.rank, run.world)
    for hook in run.hooks:
        hook.load_state_dict(saved.get(hook.name, {}))
    return k0


def start_fresh(run: Run) -> int:
    run.optimizer_state = prepare_optimizer_state(run)
    return 0


def stopped(run: Run, err: BaseException) -> tuple[str, BaseException]:
    """The status a run stopped by `err` ends with, and the error to raise; `run.stop` says why."""
    if isinstance(err, (Interrupted, DataUnavailable)):
        return "interrupted", err
    if isinstance(err, Diverged):
        run.stop = {"step": err.step, "reason": err.what}
        return "diverged", UserError(f"{run.run_dir}: the run stopped: {err}; {diverged_advice(run, err)}")
    lost = zero.peer_failure(err) if run.world > 1 else None
    if lost:
        run.stop = {"reason": f"lost contact with another rank: {lost}"}
        error = LostRank(run.run_dir, run.rank, run.world, lost)
        error.__cause__ = err
        return "failed", error
    run.stop = {"reason": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"}
    return "failed", err


def finish(run: Run, status: str, error: BaseException | None) -> None:
    """Every hook's end, in the reverse order of their start (the manifest's last); raises `error`. With an error
    already in flight (a full disk), a hook that cannot write does not hide it."""
    try:
        for hook in reversed(run.hooks):
            try:
                hook.on_end(run, status)
            except OSError:
                if error is None:
                    raise
    finally:
        run_state.release_run_dir(run.run_dir, run.rank)
    if error is not None:
        raise error
