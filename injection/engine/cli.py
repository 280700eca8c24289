"""`injection run` and `injection launch`: thin wrappers over `train.run_training` and DeepSpeed's launcher."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from harness.errors import UserError

Config = Annotated[Optional[str], typer.Argument(help="Experiment YAML file or preset name (smoke, paper-7b-mid, ...).")]
Preset = Annotated[Optional[str], typer.Option("--preset", help="Preset name (same as giving it as CONFIG).")]
Sets = Annotated[Optional[list[str]], typer.Option("--set", help="Dotted override KEY=VALUE (YAML value); repeatable.")]
Resume = Annotated[Optional[Path], typer.Option("--resume", help="Continue the run in this directory from its last complete checkpoint.")]
OutputDir = Annotated[Optional[str], typer.Option("--output-dir", "-o", help="Run directory (overrides output_dir).")]
Steps = Annotated[Optional[int], typer.Option("--total-steps", help="Number of updates T (overrides total_steps).")]
Seed = Annotated[Optional[int], typer.Option("--seed", help="Seed (overrides seed).")]


def resolve_config(config: str | None, preset: str | None, sets: list[str] | None, resume: Path | None,
                   output_dir: str | None = None, total_steps: int | None = None, seed: int | None = None):
    """The experiment config from CONFIG/--preset, or from RUN_DIR/config.yaml when resuming."""
    from injection.engine.config import load_config

    explicit = {"output_dir": output_dir, "total_steps": total_steps, "seed": seed}
    if resume is not None:
        saved = resume / "config.yaml"
        if not saved.is_file():
            raise UserError(f"--resume {resume}: no config.yaml there (not a run directory)")
        return load_config(str(saved), sets, {**explicit, "output_dir": str(resume)})
    source = config or preset
    if source is None:
        raise UserError("give an experiment CONFIG (YAML file or preset name) or --preset NAME")
    if config and preset:
        raise UserError("give CONFIG or --preset, not both")
    return load_config(source, sets, explicit)


def run(config: Config = None, preset: Preset = None, set_: Sets = None, resume: Resume = None,
        output_dir: OutputDir = None, total_steps: Steps = None, seed: Seed = None,
        local_rank: Annotated[Optional[int], typer.Option("--local_rank", "--local-rank", hidden=True)] = None) -> None:
    """Continue pretraining with injections and write the run directory (SPEC §7).

    One process by default; under DeepSpeed's launcher (see `injection launch`) every rank runs this.
    """
    from injection.engine.inputs import prepare_inputs
    from injection.engine.train import preflight, run_training

    cfg = resolve_config(config, preset, set_, resume, output_dir, total_steps, seed)
    preflight(cfg, resume is not None)  # before the (slower) input preparation
    inputs = prepare_inputs(cfg)
    run_dir = run_training(cfg, inputs, resume=resume is not None, progress=sys.stderr.isatty())
    if int(os.environ.get("RANK", "0")) == 0:
        typer.echo(f"run directory: {run_dir}")


def launcher_command(config: str, hostfile: Path | None, num_gpus: int | None, num_nodes: int | None,
                     master_addr: str | None, master_port: int | None, sets: list[str] | None,
                     resume: Path | None, include: str | None = None) -> list[str]:
    """The `deepspeed` command that starts `python -m injection.engine.worker` on every rank."""
    deepspeed = Path(sys.executable).with_name("deepspeed")
    cmd = [str(deepspeed) if deepspeed.exists() else "deepspeed"]
    if hostfile is not None:
        if not hostfile.is_file():
            raise UserError(f"--hostfile {hostfile}: no such file")
        cmd += ["--hostfile", str(hostfile)]
    if include:
        cmd += ["--include", include]
    if num_nodes is not None:
        cmd += ["--num_nodes", str(num_nodes)]
    if num_gpus is not None:
        cmd += ["--num_gpus", str(num_gpus)]
    if master_addr:
        cmd += ["--master_addr", master_addr]
    if master_port is not None:
        cmd += ["--master_port", str(master_port)]
    cmd += ["--module", "injection.engine.worker"]
    cmd += [config] if resume is None else ["--resume", str(resume)]
    for s in sets or []:
        cmd += ["--set", s]
    return cmd


def launch(
    config: Config = None,
    hostfile: Annotated[Optional[Path], typer.Option("--hostfile", help="DeepSpeed hostfile: `host slots=N` per line.")] = None,
    num_gpus: Annotated[Optional[int], typer.Option("--num-gpus", help="Ranks (GPUs) per node.")] = None,
    num_nodes: Annotated[Optional[int], typer.Option("--num-nodes", help="Number of nodes from the hostfile.")] = None,
    master_addr: Annotated[Optional[str], typer.Option("--master-addr", help="Address of rank 0's node.")] = None,
    master_port: Annotated[Optional[int], typer.Option("--master-port", help="Rendezvous port.")] = None,
    include: Annotated[Optional[str], typer.Option("--include", help="DeepSpeed --include filter, e.g. node1:0,1.")] = None,
    set_: Sets = None,
    resume: Resume = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the launcher command and exit.")] = False,
) -> None:
    """Start `injection run` on many GPUs or nodes through DeepSpeed's launcher (one process per rank)."""
    if config is None and resume is None:
        raise UserError("give an experiment CONFIG (YAML file or preset name) or --resume RUN_DIR")
    # the configuration is validated here, once, rather than on every rank after the processes started
    cfg = resolve_config(config, None, set_, resume)

    source = str(Path(config).resolve()) if config and Path(config).is_file() else (config or "")
    cmd = launcher_command(source, hostfile, num_gpus, num_nodes, master_addr, master_port, set_, resume, include)
    typer.echo(shlex.join(cmd))
    if dry_run:
        return
    del cfg
    raise typer.Exit(subprocess.call(cmd))
