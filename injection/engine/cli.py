"""`injection run` and `injection launch`: thin wrappers over `loop.run_training` and DeepSpeed's launcher."""

from __future__ import annotations

import errno
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import torch
import typer

from harness.errors import UserError, describe_os_error
from harness.locks import check_directory_free
from harness.streams import import_deepspeed
from injection.engine.config import OPERATIONAL_FIELDS, load_config
from injection.engine.inputs import launched_world, prepare_inputs, read_checkpoint
from injection.engine.loop import DataUnavailable, Interrupted, LostRank, run_training
from injection.engine.monitor import check_monitor
from injection.engine.plan import batch_geometry
from injection.engine.run_state import check_run_dir, claim_run_dir, intact_note
from injection.engine.twin import run_twin, twin_config

Config = Annotated[str | None, typer.Argument(help="Experiment YAML file or preset name (smoke, paper-7b-mid, ...).")]
Preset = Annotated[str | None, typer.Option("--preset", help="Preset name (same as giving it as CONFIG).")]
Sets = Annotated[list[str] | None, typer.Option("--set", help="Dotted override KEY=VALUE (YAML value); repeatable.")]
Resume = Annotated[
    Path | None,
    typer.Option(
        "--resume",
        help="Continue the run in this directory (from its newest complete checkpoint, or from step 0 if it has none).",
    ),
]
Out = Annotated[str | None, typer.Option("--out", "-o", help="Run directory (overrides output_dir).")]
Steps = Annotated[int | None, typer.Option("--total-steps", help="Number of updates T (overrides total_steps).")]
Seed = Annotated[int | None, typer.Option("--seed", help="Seed (overrides seed).")]
Twin = Annotated[
    bool,
    typer.Option(
        "--twin",
        help="Also run the twin (same continuation, nothing spliced) in RUN_DIR/twin (sets twin: true); with "
        "--resume, adds the twin to a run that has none.",
    ),
]


def _differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _differences(va, vb, f"{prefix}{key}.")
        elif va != vb:
            out.append(f"{prefix}{key}: {va!r} -> {vb!r}")
    return out


def resolve_config(
    config: str | None,
    preset: str | None,
    sets: list[str] | None,
    resume: Path | None,
    out: str | None = None,
    total_steps: int | None = None,
    seed: int | None = None,
    twin: bool = False,
):
    """The experiment config from CONFIG/--preset, or, with --resume, the run's own config.yaml.

    With --resume, a CONFIG or `--set` may change only how the run is operated (output, checkpoints, logging,
    the non-finite policy); anything that would change its results is refused, naming the fields."""
    explicit = {"output_dir": out, "total_steps": total_steps, "seed": seed, "twin": True if twin else None}
    if config and preset:
        raise UserError("give CONFIG or --preset, not both")
    if resume is None:
        source = config or preset
        if source is None:
            raise UserError("give an experiment CONFIG (YAML file or preset name) or --preset NAME")
        return load_config(source, sets, explicit)
    saved_file = resume / "config.yaml"
    if not saved_file.is_file():
        raise UserError(f"--resume {resume}: no config.yaml there (not a run directory made by `injection run`)")
    if out is not None and Path(out).resolve() != resume.resolve():
        raise UserError(f"--resume {resume} with -o {out}: a resumed run stays in its own directory")
    saved = load_config(str(saved_file), None, {"output_dir": str(resume)})
    asked = load_config(config or preset or str(saved_file), sets, {**explicit, "output_dir": str(resume)})
    changed = _differences(saved.identity(), asked.identity())
    if changed:
        raise UserError(
            f"--resume {resume}: the given configuration differs from the run's ({'; '.join(changed)}); "
            f"a resumed run keeps its configuration (only {', '.join(OPERATIONAL_FIELDS)} may change). "
            "Start a new run in another directory instead"
        )
    return asked


def preflight(cfg, resume: bool) -> None:
    """The cheap checks, before inputs are prepared or any process group exists: run directory, checkpoint, that
    the global batch splits over ranks × micro-batch, the monitor's package."""
    check_monitor(cfg)
    try:
        check_run_dir(cfg, resume)  # before anything is written into the directory: it may not be a run at all
    except UserError:
        if Path(cfg.output_dir).is_dir():
            check_directory_free(cfg.output_dir, "`injection run`")  # "in use by ..." says more than "running"
        raise
    if int(os.environ.get("RANK", "0")) == 0:
        claim_run_dir(cfg)  # held from here to the run's end: a second writer is refused before any work
    batch_geometry(cfg, read_checkpoint(cfg.checkpoint), launched_world())
    if cfg.twin:
        twin = twin_config(cfg)
        check_run_dir(twin, (Path(twin.output_dir) / "manifest.json").is_file())


def run(
    config: Config = None,
    preset: Preset = None,
    set_: Sets = None,
    resume: Resume = None,
    out: Out = None,
    total_steps: Steps = None,
    seed: Seed = None,
    twin: Twin = False,
    local_rank: Annotated[int | None, typer.Option("--local_rank", "--local-rank", hidden=True)] = None,
) -> None:
    """Continue pretraining with injections and write the run directory.

    One process by default; under DeepSpeed's launcher (see `injection launch`) every rank runs this.
    Ctrl-C or SIGTERM stops after the current update, saves a checkpoint and prints the command that continues.
    With --twin (or `twin: true`) the twin follows in RUN_DIR/twin; the run directory is still what is printed.
    """

    import_deepspeed()  # before anything imports it: its log lines go to stderr, the run directory alone to stdout
    cfg = resolve_config(config, preset, set_, resume, out, total_steps, seed, twin)
    preflight(cfg, resume is not None)  # before the (slower) input preparation
    inputs = prepare_inputs(cfg)
    try:
        run_dir = run_training(cfg, inputs, resume=resume is not None, progress=True)
        if cfg.twin:
            run_twin(cfg, inputs, progress=True)
    except (Interrupted, DataUnavailable) as err:
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"error: {err}", file=sys.stderr)
        raise typer.Exit(err.exit_code) from None
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EIO) or int(os.environ.get("RANK", "0")) != 0:
            raise
        print(
            f"error: {describe_os_error(err)}; {intact_note(Path(cfg.output_dir))} once there is space", file=sys.stderr
        )
        raise typer.Exit(2) from None
    except LostRank as err:
        if int(os.environ.get("LOCAL_RANK", "0")) == 0:  # one line per node (rank 0's may be the lost one)
            print(f"error: {err}", file=sys.stderr)
        raise typer.Exit(LostRank.exit_code) from None
    if int(os.environ.get("RANK", "0")) == 0:
        print(run_dir)  # the result, alone on stdout


def read_hostfile(hostfile: Path) -> list[tuple[str, int]]:
    """(host, slots) per line of a DeepSpeed hostfile, in order (the order of the node ranks)."""
    hosts: list[tuple[str, int]] = []
    for n, line in enumerate(hostfile.read_text(encoding="utf-8").splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        found = [p for p in parts[1:] if p.startswith("slots=")]
        if not found or not found[0][6:].isdigit():
            raise UserError(f"--hostfile {hostfile}: line {n}: expected `HOST slots=N`, got {line!r}")
        if parts[0] in dict(hosts):
            raise UserError(
                f"--hostfile {hostfile}: line {n}: host {parts[0]!r} is listed twice (DeepSpeed's "
                "launcher refuses that; two nodes on one machine need two names, e.g. localhost and "
                "127.0.0.1)"
            )
        hosts.append((parts[0], int(found[0][6:])))
    if not hosts:
        raise UserError(f"--hostfile {hostfile}: no hosts listed")
    return hosts


def launch_world_size(hostfile: Path | None, num_gpus: int | None, num_nodes: int | None) -> int:
    """How many ranks DeepSpeed's launcher will start."""
    if hostfile is not None:
        slots = [s for _, s in read_hostfile(hostfile)]
        nodes = slots[:num_nodes] if num_nodes else slots
        return sum(num_gpus or s for s in nodes)
    if num_gpus is not None:
        return num_gpus * (num_nodes or 1)
    return max(torch.cuda.device_count(), 1) * (num_nodes or 1)


def check_node_rank(node_rank: int, hostfile: Path | None, num_nodes: int | None, master_addr: str | None) -> None:
    """What DeepSpeed's launcher needs to start one node's ranks without ssh (`--no_ssh --node_rank N`): every
    node's hostfile lists all nodes in the same order (it numbers the ranks from it), and the master address is
    given (otherwise the launcher asks the first host for it over ssh)."""
    if hostfile is None:
        raise UserError(f"--node-rank {node_rank}: needs --hostfile listing every node (the same file on each node)")
    if not master_addr:
        raise UserError(
            f"--node-rank {node_rank}: needs --master-addr, the address of node 0 as the other nodes reach it"
        )
    nodes = len(read_hostfile(hostfile)[: num_nodes or None])
    if not 0 <= node_rank < nodes:
        raise UserError(
            f"--node-rank {node_rank}: must be 0…{nodes - 1} (the nodes of --hostfile {hostfile}"
            + (f" kept by --num-nodes {num_nodes}" if num_nodes else "")
            + ")"
        )


def launcher_command(
    config: str,
    hostfile: Path | None,
    num_gpus: int | None,
    num_nodes: int | None,
    master_addr: str | None,
    master_port: int | None,
    sets: list[str] | None,
    resume: Path | None,
    include: str | None = None,
    node_rank: int | None = None,
    no_ssh: bool = False,
) -> list[str]:
    """The `deepspeed` command that starts `python -m injection.engine.worker` on every rank."""
    deepspeed = Path(sys.executable).with_name("deepspeed")
    cmd = [str(deepspeed) if deepspeed.exists() else "deepspeed"]
    if hostfile is not None:
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
    if no_ssh:
        cmd += ["--no_ssh", "--node_rank", str(node_rank or 0)]
    cmd += ["--module", "injection.engine.worker"]
    cmd += [config] if resume is None else ["--resume", str(resume)]
    for s in sets or []:
        cmd += ["--set", s]
    return cmd


def launch(
    config: Config = None,
    hostfile: Annotated[
        Path | None, typer.Option("--hostfile", help="DeepSpeed hostfile: `host slots=N` per line.")
    ] = None,
    num_gpus: Annotated[int | None, typer.Option("--num-gpus", help="Ranks (GPUs) per node.")] = None,
    num_nodes: Annotated[int | None, typer.Option("--num-nodes", help="Number of nodes from the hostfile.")] = None,
    master_addr: Annotated[str | None, typer.Option("--master-addr", help="Address of rank 0's node.")] = None,
    master_port: Annotated[int | None, typer.Option("--master-port", help="Rendezvous port.")] = None,
    include: Annotated[
        str | None, typer.Option("--include", help="DeepSpeed --include filter, e.g. node1:0,1.")
    ] = None,
    node_rank: Annotated[
        int | None,
        typer.Option("--node-rank", help="Start only this node's ranks, without ssh (run the command once per node)."),
    ] = None,
    set_: Sets = None,
    resume: Resume = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the launcher command and exit.")] = False,
) -> None:
    """Start `injection run` on many GPUs or nodes through DeepSpeed's launcher (one process per rank).

    Several nodes: with ssh between them, once on node 0 (`--hostfile`, `--num-nodes`); without ssh, once on
    every node with its `--node-rank`, the same hostfile and `--master-addr` (node 0's address)."""
    if config is None and resume is None:
        raise UserError("give an experiment CONFIG (YAML file or preset name) or --resume RUN_DIR")
    if hostfile is not None and not hostfile.is_file():
        raise UserError(f"--hostfile {hostfile}: no such file")
    if node_rank is not None:
        check_node_rank(node_rank, hostfile, num_nodes, master_addr)
    # validated here, once, rather than on every rank after the processes started
    cfg = resolve_config(config, None, set_, resume)
    check_monitor(cfg)
    if not dry_run:
        check_directory_free(cfg.output_dir, "`injection launch`")
    world = launch_world_size(hostfile, num_gpus, num_nodes)
    try:
        ckpt = read_checkpoint(cfg.checkpoint)
    except UserError:
        if not dry_run:
            raise
        ckpt = None  # a dry run may come before the pull: the split is checked where the rows per step are known
    if ckpt is not None or cfg.global_batch:
        batch_geometry(cfg, ckpt, world)
    source = str(Path(config).resolve()) if config and Path(config).is_file() else (config or "")
    cmd = launcher_command(
        source,
        hostfile,
        num_gpus,
        num_nodes,
        master_addr,
        master_port,
        set_,
        resume,
        include,
        node_rank,
        no_ssh=node_rank is not None,
    )
    print(shlex.join(cmd))
    if dry_run:
        return
    code = subprocess.call(cmd)
    if code < 0:
        code = 128 - code
    if code:
        why = (
            f" ({signal.Signals(code - 128).name})"
            if 128 < code < 128 + 32
            else " (a rank lost contact with the others)"
            if code == LostRank.exit_code
            else ""
        )
        again = (
            f"; continue with `injection launch --resume {cfg.output_dir} ...` (the same launcher options"
            + (", on every node)" if node_rank is not None else ")")
            if Path(cfg.output_dir, "manifest.json").is_file()
            else ""
        )
        print(f"error: the launcher exited with code {code}{why}{again}", file=sys.stderr)
    raise typer.Exit(code)
