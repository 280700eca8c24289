"""DeepSpeed ZeRO set-up, and the optimizer state in and out of it.

- `init_distributed`: the process group (one in-process rank without a launcher; NCCL ranks bind their GPU first);
  `peer_failure` tells a lost rank from other errors;
- `build_engine`: the HF model from the checkpoint and AdamW with the family's parameter groups, inside
  DeepSpeed (under ZeRO-3 the model is built already partitioned);
- `restore_moments`, `restore_master_weights`: the checkpoint's AdamW moments and fp32 weights into ZeRO's
  partitions; `set_adam_step`: AdamW's step count (bias correction);
- `optimizer_state`: the moments back out, whole, for exporting a checkpoint.
"""

from __future__ import annotations

import json
import os
import re
import socket
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from harness.errors import UserError
from harness.progress import say as say_line
from harness.streams import import_deepspeed, stdout_to_stderr
from injection.checkpoints.family import model_family
from injection.engine.config import ExperimentConfig, resolve_deepspeed_config_path
from injection.engine.plan import RunPlan


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(timeout_s: int | None = None) -> tuple[int, int]:
    """(rank, world size). Without a launcher, pretend to be rank 0 of 1 so DeepSpeed works in-process.

    `timeout_s` bounds every wait on the other ranks (the rendezvous, collectives); None = DeepSpeed's default."""
    deepspeed = import_deepspeed()
    alone = "RANK" not in os.environ
    if alone:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))  # NCCL then knows each rank's GPU
    timeout = {} if timeout_s is None else {"timeout": timedelta(seconds=timeout_s)}
    for attempt in range(5):
        if dist.is_initialized():
            break
        if alone:
            # a free port can be taken by another process between the probe and the listen: then take another
            os.environ["MASTER_PORT"] = str(_free_port())
        try:
            with stdout_to_stderr():  # DeepSpeed prints while it loads its communication ops
                deepspeed.init_distributed(verbose=False, **timeout)
        except dist.DistNetworkError:
            if not alone or attempt == 4:
                raise
    return dist.get_rank(), dist.get_world_size()


def peer_failure(err: BaseException) -> str | None:
    """What went wrong, in a few words, when `err` says another rank stopped answering (it died, hung past the
    timeout, or the network failed); None for any other error.

    torch raises DistError subclasses for NCCL and the rendezvous store, but a plain RuntimeError that quotes
    gloo's source file for gloo's lost connections and timeouts."""
    text = str(err)
    if not (isinstance(err, dist.DistError) or (isinstance(err, RuntimeError) and "gloo" in text)):
        return None
    text = re.sub(r"\[[^\]]*:\d+\]\s*", "", " ".join(text.split()))  # gloo's "[path/file.cc:553] " prefix
    return text.split(". ")[0].rstrip(".") or type(err).__name__


def deepspeed_config(cfg: ExperimentConfig, plan: RunPlan, grad_clip: float) -> dict[str, Any]:
    """The DeepSpeed JSON with the run's batch sizes, clipping and precision filled in."""
    path = resolve_deepspeed_config_path(cfg.deepspeed_config)
    try:
        ds = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"DeepSpeed config {path}: unreadable: {err}") from None
    if not isinstance(ds, dict):
        raise UserError(f"DeepSpeed config {path}: expected a JSON object")
    ds.update(
        train_batch_size=plan.global_batch,
        train_micro_batch_size_per_gpu=plan.micro_batch,
        gradient_accumulation_steps=plan.accumulation,
        gradient_clipping=grad_clip,
    )
    ds["bf16"] = {"enabled": cfg.precision == "bf16"}
    ds["fp16"] = {"enabled": False}
    ds.setdefault("steps_per_print", 10**9)
    ds.setdefault("wall_clock_breakdown", False)
    return ds


def build_engine(cfg: ExperimentConfig, ckpt, plan: RunPlan, rank: int):
    """HF causal LM from the checkpoint dir + AdamW (the checkpoint's hyper-parameters) inside DeepSpeed."""
    deepspeed = import_deepspeed()
    grad_clip = cfg.optimizer.grad_clip if cfg.optimizer.grad_clip is not None else ckpt.optimizer.grad_clip
    ds = deepspeed_config(cfg, plan, grad_clip)
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
            if rank == 0:
                warn(
                    "ZeRO-3 without the `accelerate` package: every rank loads the whole model before "
                    "DeepSpeed partitions it (pip install accelerate to load it partitioned)"
                )
    kernels = cfg.kernels
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(ckpt.path), dtype=torch.float32, attn_implementation=kernels.attention
        )
    except ImportError as err:  # an attention implementation whose package is missing
        raise UserError(f"kernels.attention: {kernels.attention} cannot be used here: {err}") from None
    except (OSError, ValueError) as err:
        raise UserError(f"checkpoint {ckpt.path}: cannot load the model: {err}") from None
    if cfg.activation_checkpointing:
        model.gradient_checkpointing_enable()
    plan.objective.install(model, kernels.loss_chunk_tokens)  # the trainer's loss, its LM head chunked if asked
    wd = cfg.optimizer.weight_decay if cfg.optimizer.weight_decay is not None else ckpt.optimizer.weight_decay
    groups = model_family(ckpt.kind).param_groups(model, wd, ckpt.optimizer)
    optimizer = torch.optim.AdamW(
        groups,
        lr=plan.lrs[0] if plan.lrs else 0.0,
        betas=ckpt.optimizer.betas,
        eps=ckpt.optimizer.eps,
        weight_decay=wd,
        fused=kernels.fused_adamw or None,
    )
    with stdout_to_stderr():  # DeepSpeed prints what it builds and configures
        engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds)
    del keep_alive
    if kernels.compile:
        engine.compile()
    return engine


def warn(message: str) -> None:
    say_line(message, style="bold red")


def say(message: str) -> None:
    say_line(message)


def set_lr(engine, lr: float) -> None:
    for group in engine.optimizer.param_groups:
        group["lr"] = lr


def _inner_optimizer(engine):
    """The torch optimizer holding the state (DeepSpeed's ZeRO and bf16 optimizers wrap one)."""
    opt = engine.optimizer
    return opt if isinstance(opt, torch.optim.Optimizer) and not hasattr(opt, "optimizer") else opt.optimizer


def set_adam_step(engine, step: int) -> None:
    """Set AdamW's step count (its bias correction) in every parameter's or partition's state."""
    for state in _inner_optimizer(engine).state.values():
        if "step" in state:  # keeps the step's type and device (fused AdamW keeps it beside the parameters)
            state["step"] = (
                torch.full_like(state["step"], float(step)) if torch.is_tensor(state["step"]) else float(step)
            )


def restore_moments(engine, path: Path) -> int:
    """Load AdamW moments (`exp_avg/NAME`, `exp_avg_sq/NAME`, `step`) into the engine's optimizer.

    DeepSpeed creates its optimizer state lazily at the first step and, under ZeRO, keys it by flat fp32
    partitions; so the state is created here first and then filled per parameter through DeepSpeed's
    fragment API (`safe_set_full_optimizer_state`), which handles ZeRO-1/2/3 and the bf16 optimizer.
    Returns the number of parameters restored.
    """
    from deepspeed.utils import safe_set_full_optimizer_state

    opt = engine.optimizer
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
        step = float(f.get_tensor("step").item()) if "step" in keys else 0.0
        inner = _inner_optimizer(engine)
        # ZeRO-3 puts its flat fp32 partitions into the param groups only during step()
        flats = getattr(opt, "fp32_partitioned_groups_flat", None) or [
            p for g in inner.param_groups for p in g["params"]
        ]
        for flat in flats:
            state = inner.state[flat]
            if not state:  # torch keeps the step count beside the parameters for fused or capturable AdamW
                on = flat.device if inner.defaults.get("fused") or inner.defaults.get("capturable") else "cpu"
                state["step"] = torch.tensor(step, dtype=torch.float32, device=on)
                state["exp_avg"] = torch.zeros_like(flat, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(flat, memory_format=torch.preserve_format)
        if hasattr(opt, "_lazy_init_hp_params_optimizer_state"):
            opt._lazy_init_hp_params_optimizer_state()
        direct = inner is opt  # plain torch optimizer (ZeRO-0 in fp32): state keyed by the parameters
        names = names_by_param(engine.module)
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

    files = sorted(checkpoint_dir.glob("model*.safetensors"))
    names = names_by_param(engine.module)
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


def names_by_param(model: torch.nn.Module) -> dict[torch.nn.Parameter, list[str]]:
    names: dict[torch.nn.Parameter, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(p, []).append(name)
    return names


def optimizer_state(engine) -> dict[str, torch.Tensor]:
    """The AdamW moments of every parameter, whole (`exp_avg/<name>`, `exp_avg_sq/<name>`, `step`): the
    optimizer.safetensors of an exported checkpoint. ZeRO stages 0–2 (every rank holds whole parameters)."""
    from deepspeed.utils import safe_get_full_optimizer_state

    opt = engine.optimizer
    inner = _inner_optimizer(engine)
    if hasattr(opt, "_lazy_init_hp_params_optimizer_state"):
        # ZeRO links each parameter to its slice of the moments once, after the first step, from whatever the
        # state held then (nothing, when the run started with fresh moments): link again from the live state
        opt._hp_optimizer_states_linked = False
        opt._lazy_init_hp_params_optimizer_state()
    state: dict[str, torch.Tensor] = {}
    for p, aliases in names_by_param(engine.module).items():
        for key in ("exp_avg", "exp_avg_sq"):
            value = inner.state[p].get(key) if inner is opt else safe_get_full_optimizer_state(p, key)
            if value is not None:
                state[f"{key}/{aliases[0]}"] = value.detach().float().reshape(p.shape).clone()
    adam_step = next((float(s["step"]) for s in inner.state.values() if "step" in s), 0.0)
    if state:
        state["step"] = torch.tensor(adam_step)
    return state
