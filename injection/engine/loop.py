"""The training loop: continue pretraining with DeepSpeed, evaluate every probe after every update.

    k = 0: θ_0 is the checkpoint at global step S; probes are evaluated on it.
    update k (k = 0 … T−1): batch k (the next B original rows, paragraphs spliced in), lr(S+k+1) → θ_{k+1};
    probes evaluated on θ_{k+1} and logged as step k+1.

`run_training` sets a run up (run directory, process group, DeepSpeed engine, optimizer state, hooks) and hands
it to `train`, the loop. Every per-update value (rows, micro-batches, learning rate, evaluation and checkpoint
steps) was resolved up front into the `RunPlan`; the batches come from one pipeline (engine.batches).
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

from harness import rundir
from harness.errors import UserError
from injection.engine import run_state, zero
from injection.engine.batches import InjectedBatches
from injection.engine.config import ExperimentConfig
from injection.engine.entropy import KnowledgeEntropyHook
from injection.engine.evaluate import evaluate_probes
from injection.engine.hooks import Hook, MetricsHook, ProbeLogHook, ProgressHook, Run
from injection.engine.inputs import RunInputs, describe_inputs, run_label
from injection.engine.kernels import zero_gradient_loss
from injection.engine.plan import make_plan
from injection.splice import shard_batch


class Interrupted(Exception):
    """The run stopped at a clean point on SIGINT or SIGTERM, after saving a checkpoint."""

    def __init__(self, run_dir: Path, step: int, signum: int, world: int = 1) -> None:
        self.run_dir, self.step, self.signum = run_dir, step, signum
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
        import torch.distributed as dist

        flag = torch.tensor([self.signum or 0], device=run.engine.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)  # sync point, once per update
        return int(flag.item()) or None


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
    """One optimizer update on this rank's rows of the global batch; returns loss, grad_norm and whether it was
    skipped. A micro-batch whose loss is not finite adds no gradient; with `nonfinite: skip` the update is then
    applied at learning rate 0 (parameters unchanged), with `stop` the run stops (Diverged)."""
    engine, plan = run.engine, run.plan
    micro_batches = shard_batch(batch, run.rank, run.world, plan.micro_batch, plan.accumulation)
    zero.set_lr(engine, lr)
    losses, bad = [], 0
    for i, micro in enumerate(micro_batches):
        ids = torch.from_numpy(micro).to(engine.device)
        out = engine(input_ids=ids, labels=ids)
        loss = out.loss * plan.loss_factor  # the original trainer's objective (its normalisation)
        if not torch.isfinite(loss):  # sync point: the decision must come before backward
            bad += 1
            loss = zero_gradient_loss(out)  # backward still runs on every micro-batch, adding nothing
        if i == len(micro_batches) - 1 and _any_rank(run, bad):
            if run.cfg.nonfinite == "stop":
                raise Diverged(0, "non-finite loss")  # the step is filled in by the caller
            zero.set_lr(engine, 0.0)
        engine.backward(loss)
        engine.step()  # DeepSpeed applies the update only at the accumulation boundary
        losses.append((out.loss * plan.loss_factor).detach().float())
    loss = torch.stack(losses).mean()
    if run.world > 1:
        import torch.distributed as dist

        dist.all_reduce(loss)  # sync point: the logged loss is the global batch's mean
        loss /= run.world
    grad_norm = engine.get_global_grad_norm()
    return {
        "loss": float(loss),
        "grad_norm": float(grad_norm if grad_norm is not None else 0.0),
        "skipped": bool(_any_rank(run, bad)),
    }


def _any_rank(run: Run, count: int) -> bool:
    if run.world == 1:
        return count > 0
    import torch.distributed as dist

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
    state = {hook.name: hook.state_dict() for hook in run.hooks}
    run_state.save_checkpoint(run.engine, run.run_dir, step, run.rank, run.world, state, run.cfg.keep_checkpoints)
    if run.rank == 0:
        run.manifest = run_state.write_manifest(run.run_dir, run.manifest, last_checkpoint=step)


# ---- the loop -------------------------------------------------------------------------------------------


def train(run: Run, batches: InjectedBatches, k0: int, stop: StopRequest) -> int:
    """Updates k0 … T−1. Returns the last run step reached; raises Interrupted or Diverged."""
    plan = run.plan
    for k in range(k0, plan.total_steps):
        t0 = time.perf_counter()
        try:
            metrics = update(run, batches.get(k), plan.lrs[k])
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
        if metrics["skipped"] and run.rank == 0:
            run.manifest["skipped_updates"] = [*run.manifest.get("skipped_updates", []), step]
        for hook in run.hooks:
            hook.on_update(run, step, metrics)
        signum = stop.agreed(run)
        if step in plan.checkpoint_steps or signum:
            save(run, step)
        if run.rank == 0:
            run.manifest["last_step"] = step
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
        tokens, _ = stream.batch(j)
        metrics = update(run, np.asarray(tokens, dtype=np.int64), 0.0)
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


def encounter_spacing(inputs: RunInputs) -> int | None:
    """The smallest gap between consecutive encounters of any paragraph (None when none is injected twice)."""
    steps: dict[int, list[int]] = {}
    for k, items in inputs.injections.items():
        for item in items:
            steps.setdefault(item.paragraph, []).append(k)
    gaps = [b - a for s in steps.values() for a, b in zip(sorted(set(s)), sorted(set(s))[1:])]
    return min(gaps) if gaps else None


def first_manifest(run: Run) -> dict[str, Any]:
    cfg, ckpt, plan = run.cfg, run.inputs.checkpoint, run.plan
    return {
        "format": rundir.MANIFEST_FORMAT,
        "status": "running",
        "label": run_label(cfg, ckpt),
        "config": cfg.to_dict(),
        "config_hash": cfg.config_hash(),
        "checkpoint": ckpt.identity(),
        "start_step": ckpt.step,
        "total_steps": plan.total_steps,
        "global_batch_size": plan.global_batch,
        "checkpoint_global_batch_size": ckpt.global_batch_size,
        "seq_len": plan.seq_len,
        "tokens_per_step": plan.tokens_per_step,
        **describe_inputs(run.inputs),
        "analysis_defaults": {"window": cfg.window, "encounter_spacing": encounter_spacing(run.inputs)},
        "seeds": {"torch": cfg.seed, "numpy": cfg.seed, "python": cfg.seed},
        "world_size": run.world,
        "versions": run_state.versions(),
        "runtime": run_state.runtime(run.engine),
        "last_step": 0,
        "skipped_updates": [],
        **run.inputs.manifest_extra,
    }


def run_training(
    cfg: ExperimentConfig, inputs: RunInputs, resume: bool = False, progress: bool = True, hooks: Sequence[Hook] = ()
) -> Path:
    """Train T updates from the checkpoint, writing the run directory (rank 0). Returns the run directory.

    `hooks` are added on every rank after the writing hooks (e.g. an ExportHook). Raises Interrupted after a
    clean stop on SIGINT/SIGTERM, UserError when the run diverges (the manifest says where), LostRank when
    another rank stops answering."""
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)
    rank, world = zero.init_distributed(cfg.distributed_timeout)
    decision = run_state.check_run_dir(cfg, resume)  # every rank, before the first collective
    if decision.action == "done":
        if rank == 0:
            zero.say(decision.message)
        return decision.run_dir
    plan = make_plan(cfg, inputs.checkpoint, world, sorted(inputs.injections))
    if inputs.stream.batch_size != plan.global_batch:
        raise UserError(f"the data stream reads {inputs.stream.batch_size} rows per step, the run {plan.global_batch}")
    run = Run(cfg, inputs, plan, decision.run_dir, rank, world, zero.build_engine(cfg, inputs.checkpoint, plan, rank))
    run.engine.train()  # training mode (from_pretrained returns eval mode; activation checkpointing needs this)
    if rank == 0:
        if decision.message:
            zero.say(decision.message)
        if decision.action == "restart":
            run_state.clear_partial_run(run.run_dir)
        run.run_dir.mkdir(parents=True, exist_ok=True)
        run_state.write_config(cfg)
        old = run_state.read_status(run.run_dir) or {}
        run.manifest = {
            **first_manifest(run),
            **{k: old[k] for k in ("skipped_updates", "optimizer_state") if k in old and decision.action == "resume"},
        }
        run.hooks = [
            ProbeLogHook(
                run.run_dir, inputs.probe_items, cfg.log_flush_steps, rundir.probe_schema(cfg.probe_token_stats)
            ),
            MetricsHook(run.run_dir, cfg.log_flush_steps),
        ]
        from injection.engine.monitor import monitor_hook

        run.hooks += [h for h in (monitor_hook(cfg, run.run_dir),) if h is not None]
        if progress:
            run.hooks.append(ProgressHook(cfg.total_steps, cfg.log_interval))
        rundir.write_injections(run.run_dir, inputs.all_records)
    run.hooks += list(hooks)
    run.hooks += KnowledgeEntropyHook.for_run(run)  # every rank: each runs the forwards, rank 0 writes
    if decision.action == "resume":
        k0, saved = run_state.load_checkpoint(run.engine, run.run_dir, rank, world)
        for hook in run.hooks:
            hook.load_state_dict(saved.get(hook.name, {}))
    else:
        k0 = 0
        optimizer = prepare_optimizer_state(run)
        if rank == 0:
            run.manifest["optimizer_state"] = optimizer
    if rank == 0:
        run.manifest = run_state.write_manifest(run.run_dir, run.manifest, status="running", last_step=k0)
    for hook in run.hooks:
        hook.on_start(run, k0)
    batches = InjectedBatches(inputs.stream, inputs.injections, inputs.records, stop_at=plan.total_steps)
    status, error = "complete", None
    try:
        with StopRequest() as stop, batches:
            if k0 == 0:
                evaluate(run, 0)
            train(run, batches, k0, stop)
    except Interrupted as err:
        status, error = "interrupted", err
    except Diverged as err:
        status = "diverged"
        error = UserError(
            f"{run.run_dir}: the run stopped: {err}; the newest checkpoint is intact: resume it with "
            f"`{run_state.resume_command(run.run_dir, world)} --set nonfinite=skip` to skip such updates, "
            "or lower the learning rate in a new run"
        )
        if rank == 0:
            run.manifest["stop"] = {"step": err.step, "reason": err.what}
    except BaseException as err:
        status, error = "failed", err
        lost = zero.peer_failure(err) if world > 1 else None
        if lost:
            error = LostRank(run.run_dir, rank, world, lost)
            error.__cause__ = err
        if rank == 0:
            reason = (
                f"lost contact with another rank: {lost}"
                if lost
                else f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            )
            run.manifest["stop"] = {"reason": reason}
    for hook in run.hooks:
        try:
            hook.on_end(run, status)
        except OSError:
            if error is None:
                raise
    if rank == 0:
        try:
            run.manifest = run_state.write_manifest(run.run_dir, run.manifest, status=status)
        except OSError:
            if error is None:
                raise  # with an error already in flight (a full disk), report that one
    if error is not None:
        raise error
    return run.run_dir
