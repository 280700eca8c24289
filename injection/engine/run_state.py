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
It records the size and SHA-256 of every other file of the checkpoint; a resume verifies them and continues from
the newest intact checkpoint, setting damaged ones aside as `checkpoints/damaged-stepN` and saying so.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import platform
import random
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import transformers

import injection
from harness import rundir
from harness.atomic import write_json_atomic, write_text_atomic
from harness.errors import UserError
from harness.locks import LOCK_FILE, hold_directory, release_directory
from harness.streams import import_deepspeed
from injection.engine.config import ExperimentConfig
from injection.engine.zero import say, warn

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
        if run_dir.is_dir() and any(p.name != LOCK_FILE for p in run_dir.iterdir()):
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


def open_run_dir(cfg: ExperimentConfig, decision: Decision, records: list) -> dict[str, Any] | None:
    """Rank 0, before anything else writes there: the run directory as `decision` says (cleared of a run that
    never reached a checkpoint), with config.yaml and injections.parquet. Returns the manifest a resumed run
    left, else None."""
    if decision.message:
        say(decision.message)
    if decision.action == "restart":
        clear_partial_run(decision.run_dir)
    decision.run_dir.mkdir(parents=True, exist_ok=True)
    write_config(cfg)
    rundir.write_injections(decision.run_dir, records)
    return read_status(decision.run_dir) if decision.action == "resume" else None


def claim_run_dir(cfg: ExperimentConfig, rank: int = 0, world: int = 1) -> None:
    """Make this run the directory's one writer: rank 0 takes its lock (UserError naming the process that has it),
    and every rank learns the outcome before the first collective (none waits for a rank that gave up)."""
    run_dir = Path(cfg.output_dir)
    refusal: list[str | None] = [None]
    if rank == 0 and (run_dir.is_dir() or not run_dir.exists()):
        try:
            hold_directory(run_dir, f"`{resume_command(run_dir, world)}`")
        except UserError as err:
            refusal[0] = str(err)
    if world > 1:
        dist.broadcast_object_list(refusal, src=0)  # sync point, once, at start
    if refusal[0] is not None:
        raise UserError(refusal[0])


def release_run_dir(run_dir: Path, rank: int = 0) -> None:
    if rank == 0:
        release_directory(run_dir)


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
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "deepspeed": import_deepspeed().__version__,
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
    tag = f"step{k}"
    ckpt_dir = run_dir / rundir.CHECKPOINTS
    try:
        engine.save_checkpoint(str(ckpt_dir), tag=tag)
        torch.save(
            {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
            ckpt_dir / tag / f"rng_rank{rank}.pt",
        )
    except BaseException as err:
        shutil.rmtree(ckpt_dir / tag, ignore_errors=True)
        failure = write_failure(err, ckpt_dir / tag)
        if failure is err:
            raise
        raise failure from err
    dist.barrier()  # every rank's shards and RNG are on disk before the checkpoint is declared complete
    if rank == 0:
        state = {"k": k, "world_size": world, "hooks": hook_state, "files": record_files(ckpt_dir / tag)}
        write_json_atomic(ckpt_dir / tag / STATE_FILE, state)
        for _, old in complete_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()


def load_checkpoint(engine, run_dir: Path, rank: int, world: int) -> tuple[int, dict[str, Any]]:
    """Load the newest complete checkpoint into the engine and the RNGs; returns (k, the hooks' saved state)."""
    k, path = newest_intact_checkpoint(run_dir, rank, world)
    state = json.loads((path / STATE_FILE).read_text())
    if state["world_size"] != world and rank == 0:
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


# ---- checkpoints that prove themselves ------------------------------------------------------------------


def _file_record(path: Path) -> dict[str, Any]:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)  # hashlib releases the GIL on large blocks: files hash in parallel
    return {"bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def record_files(ckpt: Path) -> dict[str, dict[str, Any]]:
    """{relative name: {bytes, sha256}} of every file of a checkpoint directory but its state file."""
    names = sorted(str(p.relative_to(ckpt)) for p in ckpt.rglob("*") if p.is_file() and p.name != STATE_FILE)
    with ThreadPoolExecutor(max_workers=min(8, max(1, len(names)))) as pool:
        return dict(zip(names, pool.map(lambda name: _file_record(ckpt / name), names)))


def verify_checkpoint(ckpt: Path) -> str | None:
    """None when every file the checkpoint recorded is there with its size and checksum; else what is wrong.
    (A checkpoint saved before checksums were recorded is taken as it is.)"""
    try:
        files = json.loads((ckpt / STATE_FILE).read_text(encoding="utf-8")).get("files")
    except (OSError, ValueError, AttributeError) as err:
        return f"{STATE_FILE} is unreadable ({type(err).__name__})"
    if files is None:
        return None
    for name, want in sorted(files.items()):
        path = ckpt / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != want["bytes"]:
            return f"{name} has {path.stat().st_size:,} bytes, {want['bytes']:,} were saved (truncated?)"
    for name, want in sorted(files.items()):
        if _file_record(ckpt / name)["sha256"] != want["sha256"]:
            return f"{name} does not match its checksum (changed since it was saved)"
    return None


def newest_intact_checkpoint(run_dir: Path, rank: int = 0, world: int = 1) -> tuple[int, Path]:
    """(k, dir) of the newest checkpoint that verifies. Damaged newer ones are named and set aside as
    `damaged-stepN` (rank 0 decides, every rank follows); UserError saying what to do when none is intact."""
    choice: list[Any] = [None]
    if rank == 0:
        choice[0] = _choose_intact(Path(run_dir))
    if world > 1:
        dist.broadcast_object_list(choice, src=0)  # sync point: every rank loads the same checkpoint
    if isinstance(choice[0], str):
        raise UserError(choice[0])
    k = int(choice[0])
    return k, Path(run_dir) / rundir.CHECKPOINTS / f"step{k}"


def _choose_intact(run_dir: Path) -> int | str:
    """The step of the newest intact checkpoint, or the message of the error to raise."""

    ckpts = complete_checkpoints(run_dir)
    if not ckpts:
        return f"{run_dir}: no complete checkpoint to resume from"
    damaged = []
    for k, path in reversed(ckpts):
        problem = verify_checkpoint(path)
        if problem is None:
            break
        aside = path.with_name(f"damaged-{path.name}")
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(path, aside)
        damaged.append(f"the checkpoint after step {k} is damaged: {problem} (set aside as {aside})")
    else:
        return (
            f"{run_dir}: no intact checkpoint to resume from ({'; '.join(damaged)}); run "
            f"`{resume_command(run_dir)}` again to start over from step 0"
        )
    for line in damaged:
        warn(f"WARNING: {line}; resuming from the checkpoint after step {k} instead")
    return k


def write_failure(err: BaseException, where: Path) -> BaseException:
    """The OSError behind a failed checkpoint write: torch's writer reports a full disk as a RuntimeError
    ("unexpected pos ..."), which says neither where nor why."""
    text = str(err)
    if not isinstance(err, RuntimeError) or not ("unexpected pos" in text or "file write failed" in text):
        return err
    try:
        full = shutil.disk_usage(where.parent).free < (1 << 30)
    except OSError:
        full = True
    code = errno.ENOSPC if full else errno.EIO
    return OSError(code, os.strerror(code), str(where))


def intact_note(run_dir: Path, world: int = 1) -> str:
    """Which checkpoint a run can continue from after a failure, and the command."""
    ckpts = complete_checkpoints(run_dir)
    if not ckpts:
        return f"no checkpoint was saved yet: `{resume_command(run_dir, world)}` starts again from step 0"
    return (
        f"the newest intact checkpoint is the one after step {ckpts[-1][0]}: continue from it with "
        f"`{resume_command(run_dir, world)}`"
    )


def runtime(engine) -> dict[str, str]:
    return {
        "device": str(engine.device),
        "distributed_backend": dist.get_backend(),
        "accelerator": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.machine(),
        "host": platform.node(),
        "pid": str(os.getpid()),
    }
