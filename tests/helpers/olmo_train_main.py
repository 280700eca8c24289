"""Train with ai2-olmo's own Trainer on the CPU: DDP (or FSDP) on one gloo rank. Run as a script, in its own
process.

    python olmo_train_main.py CONFIG.yaml RECORD.json [--key=value ...]

The steps are those of ai2-olmo's `scripts/train.py` (which the pip package does not ship) for its DDP
and FSDP paths, with the CPU in place of CUDA: the same set-up order (seed, data loader, evaluators, model, DDP,
`reset_parameters`, optimizer, scheduler, data-indices file, Trainer, restore, `fit`). Overrides use
OLMo's own `--key=value` syntax. Paths in the config may be relative to the working directory.

RECORD.json receives, for every update this process trained, the metrics dict OLMo's Trainer built for
it (loss, learning rate, gradient norm, ...) and the instance ids of the batch, read off the batch
OLMo's data loader produced. Nothing in the training itself is changed to record them.

Shims, each the least that lets the unmodified Trainer run on a CPU-only torch:
1. `torch.cuda.get_rng_state` / `set_rng_state`: the Trainer saves and restores the CUDA RNG state
   unconditionally; without CUDA they raise. Here they return / accept an empty state.
2. `train.pt` holds `PosixPath`s and numpy's RNG state, which torch's weights-only `torch.load` refuses.
   The exact types are allow-listed (`TRAIN_PT_GLOBALS`), so loading stays free of arbitrary unpickling.
"""

from __future__ import annotations

import gzip
import json
import pathlib
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


def _install_cpu_shims() -> None:
    if not torch.cuda.is_available():
        torch.cuda.get_rng_state = lambda device="cuda": torch.empty(0, dtype=torch.uint8)
        torch.cuda.set_rng_state = lambda new_state, device="cuda": None
    torch.serialization.add_safe_globals(TRAIN_PT_GLOBALS)


def main(config_path: str, record_path: str, overrides: list[str]) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    _install_cpu_shims()
    dist.init_process_group(backend="gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1,
                            timeout=timedelta(minutes=5))

    from pathlib import Path

    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.nn.parallel import DistributedDataParallel as DDP

    from olmo.config import CheckpointType, DistributedStrategy, TrainConfig
    from olmo.data import build_train_dataloader
    from olmo.eval import build_evaluators
    from olmo.model import OLMo
    from olmo.optim import build_optimizer, build_scheduler
    from olmo.torch_util import get_global_rank, get_world_size, seed_all
    from olmo.train import Trainer
    from olmo.util import clean_opt, prepare_cli_environment

    @dataclass
    class RecordingTrainer(Trainer):
        """OLMo's Trainer; keeps each step's metrics dict (fit() adds the LR to it after the step)."""

        records: list = field(default_factory=list)

        def train_step(self, batch, reduce_global_loss=True):
            instances = [int(i) for i in batch["index"]]
            metrics = super().train_step(batch, reduce_global_loss=reduce_global_loss)
            self.records.append({
                "step": self.global_step,
                "epoch": self.epoch or 0,
                "examples_seen_this_epoch": self.global_train_examples_seen_this_epoch,
                "instances": instances,
                "metrics": metrics,  # the same object fit() updates with speed and LR metrics
            })
            return metrics

    prepare_cli_environment()
    cfg = TrainConfig.load(config_path, [clean_opt(s) for s in overrides])
    if cfg.distributed_strategy not in (DistributedStrategy.ddp, DistributedStrategy.fsdp):
        raise SystemExit("this driver runs OLMo's DDP and FSDP paths only")
    device = torch.device("cpu")

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
    if cfg.distributed_strategy == DistributedStrategy.ddp:
        dist_model = DDP(olmo_model.to(device), find_unused_parameters=cfg.ddp.find_unused_params)
    else:  # FSDP as scripts/train.py wraps it (no hybrid sharding), on the CPU device
        dist_model = FSDP(olmo_model, sharding_strategy=cfg.fsdp.sharding_strategy, mixed_precision=cfg.fsdp_precision,
                          auto_wrap_policy=olmo_model.get_fsdp_wrap_policy(cfg.fsdp.wrapping_strategy),
                          use_orig_params=cfg.fsdp.use_orig_params, limit_all_gathers=True, device_id=device,
                          param_init_fn=lambda module: module.to_empty(device=device))
    olmo_model.reset_parameters()  # scripts/train.py does this after wrapping (DDP, or FSDP with param_init_fn)
    optim = build_optimizer(cfg, dist_model)
    scheduler = build_scheduler(cfg)

    indices_file = None
    if cfg.save_data_indices:
        indices_path = Path(cfg.save_folder) / f"data-indices/rank{get_global_rank()}.tsv.gz"
        indices_path.parent.mkdir(parents=True, exist_ok=True)
        indices_file = gzip.open(indices_path, "wt")

    with RecordingTrainer(cfg=cfg, epoch=cfg.epoch, model=olmo_model, dist_model=dist_model, optim=optim,
                          scheduler=scheduler, train_loader=train_loader, device=device, evaluators=evaluators,
                          indices_file=indices_file) as trainer:
        if not cfg.no_pre_train_checkpoint and cfg.load_path is None:
            kind = CheckpointType.sharded if (cfg.distributed_strategy == DistributedStrategy.fsdp
                                              and cfg.save_num_checkpoints_to_keep != 0) else CheckpointType.unsharded
            path, cache = trainer.save_checkpoint(checkpoint_type=kind)
            trainer.restore_checkpoint(path, checkpoint_type=kind, local_cache=cache)
        if cfg.load_path is not None:
            trainer.restore_checkpoint(cfg.load_path, load_optimizer_state=not cfg.reset_optimizer_state,
                                       load_trainer_state=not cfg.reset_trainer_state)
        trainer.fit()
        records = [{**r, "metrics": {k: float(v) for k, v in r["metrics"].items()}} for r in trainer.records]
    Path(record_path).write_text(json.dumps(records, indent=1))
    dist.destroy_process_group()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
