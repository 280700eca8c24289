"""The training loop: continue pretraining with DeepSpeed, evaluate every probe after every update.

    k = 0: θ_0 is the checkpoint at global step S; probes are evaluated on it.
    update k (k = 0 … T-1): batch k (original batch S+k, paragraphs spliced in), lr(S+k+1) → θ_{k+1};
    probes evaluated on θ_{k+1} and logged as step k+1.

Logging, checkpointing and probe evaluation hang off the loop as hooks (`Hook`: no-op methods).
"""

from __future__ import annotations

import json
import os
import platform
import random
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from injection.engine.config import ExperimentConfig, resolve_deepspeed_config_path
from injection.engine.evaluate import ProbeScores, evaluate_probes
from injection.engine.inputs import RunInputs
from injection.engine.lr import learning_rate, lr_for_update
from harness.atomic import write_json_atomic
from harness.rundir import write_injections
from injection.engine.probelog import MetricsWriter, ProbeLogWriter
from harness.errors import UserError
from injection.splice import shard_batch

STATE_FILE = "engine_state.json"


# ---- distributed set-up ----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed() -> tuple[int, int]:
    """(rank, world size). Without a launcher, pretend to be rank 0 of 1 so DeepSpeed works in-process."""
    import deepspeed
    import torch.distributed as dist

    if "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(_free_port()))
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))  # NCCL then knows each rank's GPU
    if not dist.is_initialized():
        deepspeed.init_distributed(verbose=False)
    return dist.get_rank(), dist.get_world_size()


def deepspeed_config(cfg: ExperimentConfig, global_batch: int, world: int, grad_clip: float) -> dict[str, Any]:
    """The DeepSpeed JSON with the run's batch sizes, clipping and precision filled in."""
    path = resolve_deepspeed_config_path(cfg.deepspeed_config)
    try:
        ds = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"DeepSpeed config {path}: unreadable: {err}") from None
    accumulation = check_batch_split(global_batch, cfg.micro_batch, world)
    ds.update(
        train_batch_size=global_batch,
        train_micro_batch_size_per_gpu=cfg.micro_batch,
        gradient_accumulation_steps=accumulation,
        gradient_clipping=grad_clip,
    )
    ds["bf16"] = {"enabled": cfg.precision == "bf16"}
    ds["fp16"] = {"enabled": False}
    ds.setdefault("steps_per_print", 10**9)
    ds.setdefault("wall_clock_breakdown", False)
    return ds


# ---- optimizer -----------------------------------------------------------------------------------------


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """OLMo's grouping: weight decay on Linear weights only; embeddings, norms and biases are not decayed
    (ai2-olmo's get_param_groups with decay_norm_and_bias=False, decay_embeddings=False). A weight tied
    between the embedding and the LM head counts as an embedding, as in OLMo-1B."""
    decay, no_decay, seen = [], [], set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if id(p) in seen or not p.requires_grad:
                continue
            seen.add(id(p))
            is_tied_embedding = any(p is e.weight for e in model.modules() if isinstance(e, torch.nn.Embedding))
            if name == "weight" and isinstance(module, torch.nn.Linear) and not is_tied_embedding:
                decay.append(p)
            else:
                no_decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def restore_moments(engine, path: Path) -> int:
    """Load AdamW moments (`exp_avg/NAME`, `exp_avg_sq/NAME`, `step`) into the engine's optimizer.

    DeepSpeed creates its optimizer state lazily at the first step and, under ZeRO, keys it by flat fp32
    partitions; so the state is created here first and then filled per parameter through DeepSpeed's
    fragment API (`safe_set_full_optimizer_state`), which handles ZeRO-1/2/3 and the bf16 optimizer.
    Returns the number of parameters restored.
    """
    from deepspeed.utils import safe_set_full_optimizer_state
    from safetensors import safe_open

    opt = engine.optimizer
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
        step = float(f.get_tensor("step").item()) if "step" in keys else 0.0
        inner = opt if isinstance(opt, torch.optim.Optimizer) and not hasattr(opt, "optimizer") else opt.optimizer
        # ZeRO-3 puts its flat fp32 partitions into the param groups only during step()
        flats = getattr(opt, "fp32_partitioned_groups_flat", None) or [p for g in inner.param_groups
                                                                       for p in g["params"]]
        for flat in flats:
            state = inner.state[flat]
            if not state:
                state["step"] = torch.tensor(step, dtype=torch.float32)
                state["exp_avg"] = torch.zeros_like(flat, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(flat, memory_format=torch.preserve_format)
        if hasattr(opt, "_lazy_init_hp_params_optimizer_state"):
            opt._lazy_init_hp_params_optimizer_state()
        direct = inner is opt  # plain torch optimizer (ZeRO-0 in fp32): state keyed by the parameters
        names = _names_by_param(engine.module)
        restored = 0
        missing = []
        for p, aliases in names.items():
            name = next((a for a in aliases if f"exp_avg/{a}" in keys), None)
            if name is None:
                missing.append(aliases[0])
                continue
            for key in ("exp_avg", "exp_avg_sq"):
                value = f.get_tensor(f"{key}/{name}").float()
                if direct:
                    inner.state[p][key].copy_(value.reshape(p.shape))
                else:
                    safe_set_full_optimizer_state(p, value.to(p.device), key)
            restored += 1
    if missing:
        raise UserError(f"{path}: no moments for parameter(s) {', '.join(missing[:5])}")
    return restored


def restore_master_weights(engine, checkpoint_dir: Path) -> int:
    """In bf16 training, DeepSpeed builds its fp32 master weights from the bf16-cast model, which would
    round away the checkpoint's fp32 precision; put the checkpoint's own fp32 values back. Returns the
    number of parameters set (0 when the checkpoint's weights are not fp32)."""
    from deepspeed.utils import safe_set_full_fp32_param
    from safetensors import safe_open

    files = sorted(checkpoint_dir.glob("model*.safetensors"))
    names = _names_by_param(engine.module)
    by_name = {a: p for p, aliases in names.items() for a in aliases}
    restored = set()
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                p = by_name.get(key)
                if p is None or id(p) in restored:
                    continue
                value = f.get_tensor(key)
                if value.dtype != torch.float32:
                    return 0
                safe_set_full_fp32_param(p, value.to(p.device))
                restored.add(id(p))
    return len(restored)


def _names_by_param(model: torch.nn.Module) -> dict[torch.nn.Parameter, list[str]]:
    names: dict[torch.nn.Parameter, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(p, []).append(name)
    return names


def evaluation_steps(total_steps: int, interval: int, injection_steps: list[int], dense_window: int,
                     explicit: Sequence[int] | None = None) -> set[int]:
    """The run steps whose probe values are logged: 0, every `interval`-th step (or the `explicit` steps
    instead), the last step, and with `dense_window` > 0 every step t_i … t_i + dense_window around each
    injection step t_i (t_i itself is the state before encounter i, which effectivity and retainability are
    measured against)."""
    regular = range(interval, total_steps + 1, interval) if explicit is None else explicit
    steps = {0, total_steps, *regular}
    for t in injection_steps if dense_window > 0 else ():
        steps.update(range(t, min(t + dense_window, total_steps) + 1))
    return steps


def set_lr(engine, lr: float) -> None:
    for group in engine.optimizer.param_groups:
        group["lr"] = lr


# ---- hooks ---------------------------------------------------------------------------------------------


class Hook:
    """Called by the loop; every method is a no-op unless overridden. Only rank 0 gets logging hooks."""

    def on_eval(self, run: "Run", step: int, scores: ProbeScores) -> None: ...
    def on_update(self, run: "Run", step: int, metrics: dict[str, float]) -> None: ...
    def before_checkpoint(self, run: "Run", step: int) -> dict[str, Any]:
        return {}
    def on_end(self, run: "Run") -> None: ...


class ProbeLogHook(Hook):
    def __init__(self, writer: ProbeLogWriter) -> None:
        self.writer = writer

    def on_eval(self, run, step, scores):
        self.writer.log(step, scores)

    def before_checkpoint(self, run, step):
        self.writer.flush()
        return {"probe_parts": self.writer.parts()}

    def on_end(self, run):
        self.writer.flush()


class MetricsHook(Hook):
    def __init__(self, writer: MetricsWriter) -> None:
        self.writer = writer

    def on_update(self, run, step, metrics):
        self.writer.log(step, **metrics)

    def before_checkpoint(self, run, step):
        self.writer.flush()
        return {"metric_parts": self.writer.parts()}

    def on_end(self, run):
        self.writer.flush()


class ProgressHook(Hook):
    """A rich progress bar with the step, loss and throughput."""

    def __init__(self, total: int, start: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[info]}"), TimeRemainingColumn())
        self.task = self.progress.add_task("train", total=total, completed=start, info="")
        self.progress.start()

    def on_update(self, run, step, metrics):
        self.progress.update(self.task, completed=step,
                             info=f"loss {metrics['loss']:.4f}  lr {metrics['lr']:.2e}  "
                                  f"{metrics['tokens_per_s']:,.0f} tok/s")

    def on_end(self, run):
        self.progress.stop()


class ExportHook(Hook):
    """Saves the model at chosen run steps as a checkpoint directory in the pulled layout (docs/design.md):
    HF weights, tokenizer, AdamW moments and checkpoint.json with global step S + k, so that a later run can
    start from it exactly as from a pulled OLMo checkpoint. This is how the demo makes its `tiny` family.

    ZeRO stages 0–2 only (every rank holds whole parameters); the files are written by rank 0.
    """

    def __init__(self, steps: Sequence[int], dest_for_step: Any, meta: dict[str, Any] | None = None) -> None:
        self.steps = set(steps)
        self.dest_for_step = dest_for_step
        """Function: global step -> destination directory."""
        self.meta = meta or {}
        """checkpoint.json fields that replace the starting checkpoint's (e.g. a new `family`)."""

    def on_update(self, run, step, metrics):
        if step in self.steps and run.rank == 0:
            export_checkpoint(run, step, self.dest_for_step(run.inputs.checkpoint.step + step), self.meta)


def export_checkpoint(run: "Run", k: int, dest: Path, meta_overrides: dict[str, Any]) -> Path:
    """Write θ_k and the optimizer moments as a checkpoint directory at global step S + k."""
    from deepspeed.utils import safe_get_full_optimizer_state

    from injection.tiny import save_checkpoint_dir
    from harness.tokenizers import load_tokenizer

    stage = run.engine.zero_optimization_stage()
    if stage > 2:
        raise UserError(f"exporting checkpoints needs ZeRO stage 0-2 (whole parameters on rank 0), not {stage}")
    opt = run.engine.optimizer
    inner = opt if isinstance(opt, torch.optim.Optimizer) and not hasattr(opt, "optimizer") else opt.optimizer
    if hasattr(opt, "_lazy_init_hp_params_optimizer_state"):
        # ZeRO links each parameter to its slice of the moments once, after the first step, from whatever the
        # state held then (nothing, when the run started with fresh moments): link again from the live state
        opt._hp_optimizer_states_linked = False
        opt._lazy_init_hp_params_optimizer_state()
    state: dict[str, torch.Tensor] = {}
    adam_step = 0.0
    for p, aliases in _names_by_param(run.engine.module).items():
        for key in ("exp_avg", "exp_avg_sq"):
            value = inner.state[p].get(key) if inner is opt else safe_get_full_optimizer_state(p, key)
            if value is not None:
                state[f"{key}/{aliases[0]}"] = value.detach().float().reshape(p.shape).clone()
    for s in inner.state.values():
        if "step" in s:
            adam_step = float(s["step"])
            break
    if state:
        state["step"] = torch.tensor(adam_step)
    ckpt = run.inputs.checkpoint
    global_step = ckpt.step + k
    meta = {**ckpt.raw, "step": global_step, "source": "trained",
            "trainer_state": {"global_step": global_step, "run_dir": str(run.run_dir)}, **meta_overrides}
    meta.pop("has_optimizer_state", None)
    has_tokenizer = (ckpt.path / "tokenizer.json").is_file() or (ckpt.path / "tokenizer_config.json").is_file()
    tokenizer = load_tokenizer(str(ckpt.path)) if has_tokenizer else None
    return save_checkpoint_dir(run.engine.module, tokenizer, dest, meta, state or None)


# ---- the run -------------------------------------------------------------------------------------------


@dataclass
class Run:
    cfg: ExperimentConfig
    inputs: RunInputs
    run_dir: Path
    rank: int
    world: int
    engine: Any = None
    hooks: list[Hook] = field(default_factory=list)

    @property
    def checkpoints_dir(self) -> Path:
        return self.run_dir / "checkpoints"


def complete_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(k, dir) of resumable checkpoints, oldest first. A checkpoint counts once its engine state exists:
    that file is written after every rank finished DeepSpeed's save."""
    found = []
    for d in (run_dir / "checkpoints").glob("step*"):
        if (d / STATE_FILE).is_file() and d.name[4:].isdigit():
            found.append((int(d.name[4:]), d))
    return sorted(found)


def save_checkpoint(run: Run, k: int) -> None:
    import torch.distributed as dist

    tag = f"step{k}"
    extra: dict[str, Any] = {}
    for hook in run.hooks:
        extra.update(hook.before_checkpoint(run, k))
    run.engine.save_checkpoint(str(run.checkpoints_dir), tag=tag)
    torch.save({"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
               run.checkpoints_dir / tag / f"rng_rank{run.rank}.pt")
    dist.barrier()  # every rank's shards and RNG are on disk before the checkpoint is declared complete
    if run.rank == 0:
        write_json_atomic(run.checkpoints_dir / tag / STATE_FILE, {"k": k, "world_size": run.world, **extra})
        for _, old in complete_checkpoints(run.run_dir)[: -run.cfg.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()


def resume_from_checkpoint(run: Run) -> int:
    """Load the newest complete checkpoint; drop log parts written after it. Returns k to continue from."""
    ckpts = complete_checkpoints(run.run_dir)
    if not ckpts:
        raise UserError(f"{run.run_dir}: no complete checkpoint to resume from (run it again without --resume)")
    k, path = ckpts[-1]
    state = json.loads((path / STATE_FILE).read_text())
    if state["world_size"] != run.world:
        from rich.console import Console

        Console(stderr=True).print(f"[yellow]resuming a {state['world_size']}-rank checkpoint on {run.world} ranks")
    load_path, _ = run.engine.load_checkpoint(str(run.checkpoints_dir), tag=path.name,
                                              load_optimizer_states=True, load_lr_scheduler_states=False)
    if load_path is None:
        raise UserError(f"{path}: DeepSpeed could not load this checkpoint")
    rng_file = path / f"rng_rank{run.rank}.pt"
    if rng_file.is_file():
        rng = torch.load(rng_file, weights_only=False)
        torch.set_rng_state(rng["torch"])
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
    if run.rank == 0:
        for hook in run.hooks:
            if isinstance(hook, ProbeLogHook):
                hook.writer.keep_only(state.get("probe_parts", []))
            if isinstance(hook, MetricsHook):
                hook.writer.keep_only(state.get("metric_parts", []))
    return k


def build_engine(run: Run):
    """HF causal LM from the checkpoint dir + AdamW (checkpoint hyper-parameters) inside DeepSpeed."""
    import deepspeed
    from transformers import AutoModelForCausalLM

    cfg, ckpt = run.cfg, run.inputs.checkpoint
    global_batch = cfg.global_batch or ckpt.global_batch_size
    grad_clip = cfg.optimizer.grad_clip if cfg.optimizer.grad_clip is not None else ckpt.grad_clip
    ds = deepspeed_config(cfg, global_batch, run.world, grad_clip)
    keep_alive = None
    if ds.get("zero_optimization", {}).get("stage", 0) == 3:
        # Makes from_pretrained build the model already partitioned (zero.Init), so no rank holds it whole.
        # transformers needs `accelerate` for that; without it every rank loads the full model and
        # deepspeed.initialize partitions it (correct, but host memory = ranks per node × model size).
        try:
            import accelerate  # noqa: F401
            from transformers.integrations import HfDeepSpeedConfig

            keep_alive = HfDeepSpeedConfig(ds)  # noqa: F841 (must stay referenced until the model exists)
        except ImportError:
            if run.rank == 0:
                _warn("ZeRO-3 without the `accelerate` package: every rank loads the whole model before "
                      "DeepSpeed partitions it (pip install accelerate to load it partitioned)")
    try:
        model = AutoModelForCausalLM.from_pretrained(str(ckpt.path), dtype=torch.float32)
    except (OSError, ValueError) as err:
        raise UserError(f"checkpoint {ckpt.path}: cannot load the model: {err}") from None
    wd = cfg.optimizer.weight_decay if cfg.optimizer.weight_decay is not None else ckpt.weight_decay
    optimizer = torch.optim.AdamW(param_groups(model, wd), lr=learning_rate(ckpt.lr_schedule, ckpt.step),
                                  betas=ckpt.betas, eps=ckpt.eps, weight_decay=wd)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds)
    del keep_alive
    return engine


def _warn(message: str) -> None:
    from rich.console import Console

    Console(stderr=True).print(f"[bold red]{message}")


def check_run_dir(cfg: ExperimentConfig, resume: bool) -> Path:
    """Refuse a run directory that holds a different run, or this run without --resume."""
    run_dir = Path(cfg.output_dir)
    manifest = run_dir / "manifest.json"
    if manifest.is_file():
        try:
            old = json.loads(manifest.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise UserError(f"{manifest}: unreadable ({err}); choose another output_dir") from None
        if old.get("config_hash") != cfg.config_hash():
            raise UserError(f"output_dir {run_dir} already holds a different run (config hash "
                            f"{old.get('config_hash')} ≠ {cfg.config_hash()}); choose another output_dir")
        if not resume:
            raise UserError(f"output_dir {run_dir} already holds this run; continue it with --resume {run_dir}")
    elif resume:
        raise UserError(f"--resume {run_dir}: no manifest.json there, nothing to resume")
    return run_dir


def preflight(cfg: ExperimentConfig, resume: bool) -> None:
    """The cheap checks, before inputs are prepared or any process group exists: run directory, checkpoint,
    and that the global batch splits evenly over ranks × micro-batch."""
    from injection.engine.inputs import read_checkpoint

    check_run_dir(cfg, resume)
    ckpt = read_checkpoint(cfg.checkpoint)
    global_batch = cfg.global_batch or ckpt.global_batch_size
    check_batch_split(global_batch, cfg.micro_batch, int(os.environ.get("WORLD_SIZE", "1")))


def check_batch_split(global_batch: int, micro_batch: int, world: int) -> int:
    """Gradient-accumulation steps; UserError unless global_batch = micro_batch × accumulation × ranks."""
    per_pass = micro_batch * world
    if global_batch % per_pass:
        raise UserError(
            f"global batch {global_batch} is not divisible by micro_batch ({micro_batch}) × ranks ({world}) "
            f"= {per_pass}: fix 'global_batch' or 'micro_batch'"
        )
    return global_batch // per_pass


def write_config(cfg: ExperimentConfig) -> None:
    run_dir = Path(cfg.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / ".config.yaml.tmp"
    tmp.write_text(cfg.dump_yaml())
    os.replace(tmp, run_dir / "config.yaml")


def run_training(cfg: ExperimentConfig, inputs: RunInputs, resume: bool = False, progress: bool = True,
                 hooks: Sequence[Hook] = ()) -> Path:
    """Train T updates from the checkpoint, writing the run directory (rank 0). Returns the run dir.

    `hooks` are added on every rank (after the rank-0 logging hooks), e.g. `ExportHook`."""
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)
    rank, world = init_distributed()
    run = Run(cfg, inputs, Path(cfg.output_dir), rank, world)
    ckpt = inputs.checkpoint
    global_batch = cfg.global_batch or ckpt.global_batch_size
    if inputs.batches.global_batch_size != global_batch:
        raise UserError(f"batch source has {inputs.batches.global_batch_size} rows per step, the run {global_batch}")
    tokens_per_step = global_batch * inputs.batches.seq_len

    # every rank checks before deepspeed.initialize (a collective), so none can see rank 0's new manifest
    check_run_dir(cfg, resume)
    run.engine = build_engine(run)
    if rank == 0:
        write_config(cfg)
        run.hooks += [ProbeLogHook(ProbeLogWriter(run.run_dir, inputs.probe_items, cfg.log_flush_steps)),
                      MetricsHook(MetricsWriter(run.run_dir, cfg.log_flush_steps))]
    k0 = 0
    if resume:
        k0 = resume_from_checkpoint(run)
    elif cfg.optimizer.fresh_moments or not ckpt.has_optimizer_state:
        if rank == 0:
            why = "fresh_moments is set" if cfg.optimizer.fresh_moments else f"{ckpt.path} has no optimizer state"
            _warn(f"WARNING: training starts with FRESH AdamW moments ({why}); the original run's optimizer "
                  "state is not continued and the first updates will be larger than the original run's.")
    else:
        restore_moments(run.engine, ckpt.path / "optimizer.safetensors")
    if not resume and cfg.precision == "bf16":
        restore_master_weights(run.engine, ckpt.path)
    run.hooks += list(hooks)
    if rank == 0:
        write_manifest(run, tokens_per_step, status="running")
        write_injections(run.run_dir, inputs.records)
        if progress:
            run.hooks.append(ProgressHook(cfg.total_steps, k0))

    def lr_of(k: int) -> float:
        if cfg.optimizer.constant_lr is not None:
            return cfg.optimizer.constant_lr
        return lr_for_update(ckpt.lr_schedule, ckpt.step, k) * cfg.optimizer.lr_scale

    def evaluate(step: int) -> float:
        """Score every probe on the current weights; returns the seconds it took."""
        t0 = time.perf_counter()
        scores = evaluate_probes(run.engine.module, inputs.probe_items, cfg.eval_batch_tokens, rank, world)
        for hook in run.hooks:
            hook.on_eval(run, step, scores)
        return time.perf_counter() - t0

    eval_steps = evaluation_steps(cfg.total_steps, cfg.eval_interval, sorted(inputs.injections),
                                  cfg.eval_dense_window, cfg.eval_steps)
    if k0 == 0:
        evaluate(0)
    accumulation = check_batch_split(global_batch, cfg.micro_batch, world)
    for k in range(k0, cfg.total_steps):
        t0 = time.perf_counter()
        set_lr(run.engine, lr_of(k))
        losses = []
        # this rank's rows of the spliced global batch, as `accumulation` micro-batches
        for micro in shard_batch(inputs.batch(k), rank, world, cfg.micro_batch, accumulation):
            micro = torch.from_numpy(micro).to(run.engine.device)
            out = run.engine(input_ids=micro, labels=micro)
            run.engine.backward(out.loss)
            run.engine.step()  # DeepSpeed applies the update only at the accumulation boundary
            losses.append(out.loss.detach().float())
        loss = torch.stack(losses).mean()
        if world > 1:
            import torch.distributed as dist

            dist.all_reduce(loss)  # sync point: the logged loss is the global batch's mean
            loss /= world
        grad_norm = run.engine.get_global_grad_norm()
        metrics = {"loss": float(loss), "lr": lr_of(k), "grad_norm": float(grad_norm or 0.0),
                   "tokens_per_s": tokens_per_step / (time.perf_counter() - t0)}
        if torch.cuda.is_available():
            metrics["max_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30  # this rank's peak
        step = k + 1
        metrics["eval_s"] = evaluate(step) if step in eval_steps else 0.0
        for hook in run.hooks:
            hook.on_update(run, step, metrics)
        if (cfg.checkpoint_interval and step % cfg.checkpoint_interval == 0) or step == cfg.total_steps:
            save_checkpoint(run, step)

    for hook in run.hooks:
        hook.on_end(run)
    if rank == 0:
        write_manifest(run, tokens_per_step, status="complete")
    return run.run_dir


def write_manifest(run: Run, tokens_per_step: int, status: str) -> None:
    import deepspeed
    import transformers

    import injection

    cfg, ckpt = run.cfg, run.inputs.checkpoint
    versions = {"python": platform.python_version(), "torch": torch.__version__, "deepspeed": deepspeed.__version__,
                "transformers": transformers.__version__, "numpy": np.__version__}
    versions["injection"] = getattr(injection, "__version__", "0.1.0")
    import torch.distributed as dist

    runtime = {"device": str(run.engine.device), "distributed_backend": dist.get_backend(),
               "accelerator": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.machine()}
    write_json_atomic(run.run_dir / "manifest.json", {
        "format": "injection-run/1",
        "status": status,
        "config": cfg.to_dict(),
        "config_hash": cfg.config_hash(),
        "checkpoint": ckpt.identity(),
        "start_step": ckpt.step,
        "total_steps": cfg.total_steps,
        "global_batch_size": cfg.global_batch or ckpt.global_batch_size,
        "seq_len": run.inputs.batches.seq_len,
        "tokens_per_step": int(tokens_per_step),
        "seeds": {"torch": cfg.seed, "numpy": cfg.seed, "python": cfg.seed},
        "world_size": run.world,
        "n_probes": len(run.inputs.probe_items),
        "knowledge": run.inputs.knowledge_source,
        "versions": versions,
        "runtime": runtime,
        **run.inputs.manifest_extra,
    })
