"""The run directory on disk, from the engine's side: is it new, resumable or finished; the manifest; resumable
checkpoints saved and loaded. (What the files contain is harness.rundir's.)

Every state a run directory can be left in has exactly one command that continues it:

    state                                         what `check_run_dir` decides        the command
    absent or empty                               start at step 0                     injection run CONFIG -o DIR
    a run, no complete checkpoint yet (killed     start again at step 0, in place     injection run --resume DIR
      or stopped before its first one)
    a run with complete checkpoints               continue from the newest            injection run --resume DIR
    a complete run                                nothing to do                       (analysis DIR)
    anything else (not made by this tool)         refused                             choose another -o

A checkpoint counts as complete once `engine_state.json` exists in it: that file is written by rank 0 after
every rank finished writing its shards, so a checkpoint interrupted by a kill or a full disk never looks complete.
"""

from __future__ import annotations

import json
import os
import platform
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness import rundir
from harness.atomic import write_json_atomic, write_text_atomic
from harness.errors import UserError
from injection.engine.config import ExperimentConfig

STATE_FILE = "engine_state.json"


@dataclass(frozen=True)
class Decision:
    """What to do with the run directory."""

    action: str
    """`start` (step 0 in an empty directory), `restart` (step 0, clearing a run that never reached a checkpoint),
    `resume` (from the newest complete checkpoint) or `done` (already complete)."""
    run_dir: Path
    message: str = ""


def resume_command(run_dir: Path, world: int = 1) -> str:
    """The command that continues the run; a run of several ranks goes back through the launcher, with the
    options it was started with (`...`), on every node."""
    return f"injection run --resume {run_dir}" if world == 1 else f"injection launch --resume {run_dir} ..."


def complete_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(k, dir) of resumable checkpoints, oldest first."""
    found = []
    for d in (Path(run_dir) / rundir.CHECKPOINTS).glob("step*"):
        if (d / STATE_FILE).is_file() and d.name[4:].isdigit():
            found.append((int(d.name[4:]), d))
    return sorted(found)


def read_status(run_dir: Path) -> dict[str, Any] | None:
    """The manifest of a run directory, or None where there is none (UserError when it is unreadable)."""
    if not (Path(run_dir) / rundir.MANIFEST).is_file():
        return None
    return rundir.read_manifest(run_dir)


def check_run_dir(cfg: ExperimentConfig, resume: bool) -> Decision:
    """Decide, before any work, what to do with `cfg.output_dir` (see the module docstring)."""
    run_dir = Path(cfg.output_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"output directory {run_dir}: exists and is not a directory")
    manifest = read_status(run_dir) if run_dir.is_dir() else None
    if manifest is None:
        if run_dir.is_dir() and any(run_dir.iterdir()):
            raise UserError(
                f"output directory {run_dir} is not empty and holds no run (no {rundir.MANIFEST}); "
                "choose another -o/--out"
            )
        if resume:
            raise UserError(
                f"--resume {run_dir}: nothing to resume there (no {rundir.MANIFEST}); start the run "
                f"with `injection run CONFIG -o {run_dir}`"
            )
        return Decision("start", run_dir)
    if manifest.get("config_hash") != cfg.config_hash():
        raise UserError(
            f"output directory {run_dir} already holds a different run (config hash "
            f"{manifest.get('config_hash')} ≠ {cfg.config_hash()}); choose another -o/--out"
        )
    status = manifest.get("status")
    if status == "complete":
        if resume:
            return Decision(
                "done",
                run_dir,
                f"{run_dir}: the run is already complete ({manifest.get('total_steps')} steps); nothing to resume",
            )
        raise UserError(
            f"output directory {run_dir} already holds this run, complete; analyse it with "
            f"`analysis fit {run_dir}` or choose another -o/--out"
        )
    if not resume:
        raise UserError(
            f"output directory {run_dir} already holds this run ({status} at step "
            f"{manifest.get('last_step', 0)}); continue it with `{resume_command(run_dir)}`"
        )
    ckpts = complete_checkpoints(run_dir)
    if not ckpts:
        return Decision("restart", run_dir, f"{run_dir}: no complete checkpoint yet; starting again from step 0")
    return Decision("resume", run_dir, f"{run_dir}: resuming from the checkpoint after step {ckpts[-1][0]}")


def clear_partial_run(run_dir: Path) -> None:
    """Remove what a run that never reached a checkpoint left (logs, partial checkpoints), keeping nothing stale."""
    for name in (
        rundir.PROBES,
        rundir.METRICS,
        rundir.KNOWLEDGE_ENTROPY,
        rundir.CHECKPOINTS,
        rundir.INJECTIONS,
        "monitor",
    ):
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def write_config(cfg: ExperimentConfig) -> None:
    write_text_atomic(Path(cfg.output_dir) / rundir.CONFIG, cfg.dump_yaml())


def versions() -> dict[str, str]:
    import deepspeed
    import transformers

    import injection

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "deepspeed": deepspeed.__version__,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
        "injection": injection.__version__,
    }


def write_manifest(run_dir: Path, manifest: dict[str, Any], **status: Any) -> dict[str, Any]:
    """Write manifest.json with `status` fields (status, last_step, ...) updated; returns the new manifest."""
    manifest = {**manifest, **status}
    write_json_atomic(run_dir / rundir.MANIFEST, manifest)
    return manifest


# ---- resumable checkpoints -------------------------------------------------------------------------------


def save_checkpoint(
    engine, run_dir: Path, k: int, rank: int, world: int, hook_state: dict[str, Any], keep: int
) -> None:
    """DeepSpeed's checkpoint of every rank, each rank's RNG state, then (rank 0, last) the engine state that
    marks the checkpoint complete. On a failure (a full disk) the incomplete step directory is removed."""
    import torch.distributed as dist

    tag = f"step{k}"
    ckpt_dir = run_dir / rundir.CHECKPOINTS
    try:
        engine.save_checkpoint(str(ckpt_dir), tag=tag)
        torch.save(
            {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
            ckpt_dir / tag / f"rng_rank{rank}.pt",
        )
    except BaseException:
        shutil.rmtree(ckpt_dir / tag, ignore_errors=True)
        raise
    dist.barrier()  # every rank's shards and RNG are on disk before the checkpoint is declared complete
    if rank == 0:
        write_json_atomic(ckpt_dir / tag / STATE_FILE, {"k": k, "world_size": world, "hooks": hook_state})
        for _, old in complete_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()


def load_checkpoint(engine, run_dir: Path, rank: int, world: int) -> tuple[int, dict[str, Any]]:
    """Load the newest complete checkpoint into the engine and the RNGs; returns (k, the hooks' saved state)."""
    ckpts = complete_checkpoints(run_dir)
    if not ckpts:
        raise UserError(f"{run_dir}: no complete checkpoint to resume from")
    k, path = ckpts[-1]
    state = json.loads((path / STATE_FILE).read_text())
    if state["world_size"] != world and rank == 0:
        from injection.engine.zero import warn

        warn(f"resuming a {state['world_size']}-rank checkpoint on {world} ranks")
    load_path, _ = engine.load_checkpoint(
        str(run_dir / rundir.CHECKPOINTS), tag=path.name, load_optimizer_states=True, load_lr_scheduler_states=False
    )
    if load_path is None:
        raise UserError(f"{path}: DeepSpeed could not load this checkpoint")
    rng_file = path / f"rng_rank{rank}.pt"
    if rng_file.is_file():
        rng = torch.load(rng_file, weights_only=False)  # written by this engine (RNG objects, not tensors only)
        torch.set_rng_state(rng["torch"])
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
    return k, state.get("hooks", {})


def runtime(engine) -> dict[str, str]:
    import torch.distributed as dist

    return {
        "device": str(engine.device),
        "distributed_backend": dist.get_backend(),
        "accelerator": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.machine(),
        "host": platform.node(),
        "pid": str(os.getpid()),
    }
