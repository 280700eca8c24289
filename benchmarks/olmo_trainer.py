"""Train with ai2-olmo's own Trainer in one process: DDP or FSDP on a single rank, on the CPU (gloo) or one CUDA
device (NCCL). Run as a script, in its own process; it imports nothing from this project, so it runs by path.

    python benchmarks/olmo_trainer.py CONFIG.yaml RECORD.json [--device=cpu|cuda] [--key=value ...]

The steps are those of ai2-olmo's `scripts/train.py` (which the pip package does not ship) for its DDP and
FSDP paths: the same set-up order (seed, data loader, evaluators, model, compile and activation checkpointing,
DDP or FSDP, `reset_parameters`, optimizer, scheduler, data-indices file, Trainer, pre-train checkpoint or
restore, `fit`). `--device` (default `cpu`) picks where; on `cuda` the process binds `LOCAL_RANK`'s GPU (0)
before anything else, as scripts/train.py does. Overrides use OLMo's own `--key=value` syntax. Paths in the
config may be relative to the working directory.

`launch(...)` starts it from Python and returns the records. Users: tests/helpers/olmo_world.py (the reference
worlds, CPU) and benchmarks/bench_peer_olmo.py (OLMo's throughput beside the harness's, CPU or GPU).

RECORD.json receives, for every update this process trained, the metrics dict OLMo's Trainer built for it
(loss, learning rate, gradient norm, its speed monitor's `throughput/...`), the instance ids of the batch, read
off the batch OLMo's data loader produced, and `max_mem_gib`: the accelerator's peak allocated memory so far
(null on the CPU). Nothing in the training itself is changed to record them.

Shims, each the least that lets the unmodified Trainer run on a CPU-only torch:
1. `torch.cuda.get_rng_state` / `set_rng_state`: the Trainer saves and restores the CUDA RNG state
   unconditionally; without CUDA they raise. Here they return / accept an empty state.
2. `train.pt` holds `PosixPath`s and numpy's RNG state, which torch's weights-only `torch.load` refuses.
   The exact types are allow-listed (`TRAIN_PT_GLOBALS`), so loading stays free of arbitrary unpickling.
"""

from __future__ import annotations

import gzip
import json
import os
import pathlib
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import timedelta

import numpy as np
import torch

# numpy's RNG state (np.random.get_state()) pickles as an ndarray of uint32 inside a tuple.
TRAIN_PT_GLOBALS = [
    pathlib.PosixPath,
    np.core.multiarray._reconstruct,
    np.ndarray,
    np.dtype,
    type(np.dtype(np.uint32)),
]
DEVICES = ("cpu", "cuda")


def _install_cpu_shims() -> None:
    if not torch.cuda.is_available():
        torch.cuda.get_rng_state = lambda device="cuda": torch.empty(0, dtype=torch.uint8)
        torch.cuda.set_rng_state = lambda new_state, device="cuda": None
    torch.serialization.add_safe_globals(TRAIN_PT_GLOBALS)


def _bind_device(kind: str) -> torch.device:
    """The device this rank trains on. CUDA: this process's GPU, bound before the process group exists."""
    if kind == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise SystemExit("--device=cuda: torch sees no CUDA device")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def _peak_mem_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def main(config_path: str, record_path: str, overrides: list[str], device_kind: str = "cpu") -> None:
    import torch.distributed as dist

    _install_cpu_shims()
    device = _bind_device(device_kind)
    dist.init_process_group(
        backend="nccl" if device.type == "cuda" else "gloo",
        init_method=f"tcp://127.0.0.1:{_free_port()}",
        rank=0,
        world_size=1,
        timeout=timedelta(minutes=30),
    )

    from pathlib import Path

    from olmo.config import CheckpointType, DistributedStrategy, TrainConfig
    from olmo.data import build_train_dataloader
    from olmo.eval import build_evaluators
    from olmo.model import OLMo
    from olmo.optim import build_optimizer, build_scheduler
    from olmo.torch_util import get_global_rank, get_world_size, seed_all
    from olmo.train import Trainer
    from olmo.util import clean_opt, prepare_cli_environment
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.nn.parallel import DistributedDataParallel as DDP

    @dataclass
    class RecordingTrainer(Trainer):
        """OLMo's Trainer; keeps each step's metrics dict (fit() adds speed and LR metrics to it after the step)."""

        records: list = field(default_factory=list)

        def train_step(self, batch, reduce_global_loss=True):
            instances = [int(i) for i in batch["index"]]
            metrics = super().train_step(batch, reduce_global_loss=reduce_global_loss)
            self.records.append(
                {
                    "step": self.global_step,
                    "epoch": self.epoch or 0,
                    "examples_seen_this_epoch": self.global_train_examples_seen_this_epoch,
                    "instances": instances,
                    "max_mem_gib": _peak_mem_gib(device),  # train_step ended on .item(): the step's work is done
                    "metrics": metrics,  # the same object fit() updates with speed and LR metrics
                }
            )
            return metrics

    prepare_cli_environment()
    cfg = TrainConfig.load(config_path, [clean_opt(s) for s in overrides])
    if cfg.distributed_strategy not in (DistributedStrategy.ddp, DistributedStrategy.fsdp):
        raise SystemExit("this driver runs OLMo's DDP and FSDP paths only")

    # As scripts/train.py fills them in.
    cfg.model.precision = cfg.precision
    cfg.device_train_batch_size = cfg.global_train_batch_size // get_world_size()
    cfg.device_train_grad_accum = cfg.device_train_batch_size // cfg.device_train_microbatch_size
    if cfg.load_path is None or Path(cfg.load_path).parent != Path(cfg.save_folder):
        save_path = Path(cfg.save_folder) / "config.yaml"
        save_path.parent.mkdir(parents=True, exist_ok=True)
        cfg.save(save_path)

    seed_all(cfg.seed)
    train_loader = build_train_dataloader(cfg)
    evaluators = build_evaluators(cfg, device)
    olmo_model = OLMo(cfg.model)
    if cfg.compile is not None:
        for block in olmo_model.transformer.blocks:
            block.compile(**cfg.compile.asdict())
    olmo_model.set_activation_checkpointing(cfg.activation_checkpointing)
    if cfg.distributed_strategy == DistributedStrategy.ddp:
        dist_model = DDP(olmo_model.to(device), find_unused_parameters=cfg.ddp.find_unused_params)
    else:  # FSDP as scripts/train.py wraps it (no hybrid sharding); parameters materialise on `device`
        dist_model = FSDP(
            olmo_model,
            sharding_strategy=cfg.fsdp.sharding_strategy,
            mixed_precision=cfg.fsdp_precision,
            auto_wrap_policy=olmo_model.get_fsdp_wrap_policy(cfg.fsdp.wrapping_strategy),
            use_orig_params=cfg.fsdp.use_orig_params,
            limit_all_gathers=True,
            device_id=device,
            param_init_fn=lambda module: module.to_empty(device=device),
        )
    olmo_model.reset_parameters()  # scripts/train.py does this after wrapping (DDP, or FSDP with param_init_fn)
    optim = build_optimizer(cfg, dist_model)
    scheduler = build_scheduler(cfg)

    indices_file = None
    if cfg.save_data_indices:
        indices_path = Path(cfg.save_folder) / f"data-indices/rank{get_global_rank()}.tsv.gz"
        indices_path.parent.mkdir(parents=True, exist_ok=True)
        indices_file = gzip.open(indices_path, "wt")

    with RecordingTrainer(
        cfg=cfg,
        epoch=cfg.epoch,
        model=olmo_model,
        dist_model=dist_model,
        optim=optim,
        scheduler=scheduler,
        train_loader=train_loader,
        device=device,
        evaluators=evaluators,
        indices_file=indices_file,
    ) as trainer:
        if not cfg.no_pre_train_checkpoint and cfg.load_path is None:
            kind = (
                CheckpointType.sharded
                if (cfg.distributed_strategy == DistributedStrategy.fsdp and cfg.save_num_checkpoints_to_keep != 0)
                else CheckpointType.unsharded
            )
            path, cache = trainer.save_checkpoint(checkpoint_type=kind)
            trainer.restore_checkpoint(path, checkpoint_type=kind, local_cache=cache)
        if cfg.load_path is not None:
            trainer.restore_checkpoint(
                cfg.load_path,
                load_optimizer_state=not cfg.reset_optimizer_state,
                load_trainer_state=not cfg.reset_trainer_state,
            )
        trainer.fit()
        records = [{**r, "metrics": {k: float(v) for k, v in r["metrics"].items()}} for r in trainer.records]
    Path(record_path).write_text(json.dumps(records, indent=1))
    dist.destroy_process_group()


def launch(
    config: pathlib.Path,
    record: pathlib.Path,
    overrides: list[str],
    *,
    cwd: pathlib.Path,
    log: pathlib.Path,
    device: str = "cpu",
    env: dict[str, str] | None = None,
) -> list[dict]:
    """Train in a fresh process with `cwd` as working directory (the config's relative data and save paths
    resolve there), its output into `log`; returns RECORD's list, one dict per update. `env` adds to the
    inherited environment (W&B is always off). Raises RuntimeError with the log's tail when training fails."""
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    with open(log, "w") as out:
        proc = subprocess.run(
            [sys.executable, __file__, str(config), str(record), f"--device={device}", *overrides],
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    if proc.returncode != 0:
        tail = log.read_text()[-4000:]
        raise RuntimeError(f"ai2-olmo training ({' '.join(overrides)}) exited with {proc.returncode}:\n{tail}")
    return json.loads(pathlib.Path(record).read_text())


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _split_device(argv: list[str]) -> tuple[str, list[str]]:
    """(`--device=` value, OLMo's own overrides)."""
    device, rest = "cpu", []
    for arg in argv:
        if arg.startswith("--device="):
            device = arg.split("=", 1)[1]
            if device not in DEVICES:
                raise SystemExit(f"--device must be one of {', '.join(DEVICES)}, got {device!r}")
        else:
            rest.append(arg)
    return device, rest


if __name__ == "__main__":
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    device_kind, olmo_overrides = _split_device(sys.argv[3:])
    main(sys.argv[1], sys.argv[2], olmo_overrides, device_kind)
