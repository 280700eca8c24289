"""`injection checkpoints list|show` and `injection pull`: thin wrappers over the catalog and `pull_checkpoint`."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from harness.errors import HarnessTyper
from harness.http import default_policy
from harness.streams import import_deepspeed
from injection.checkpoints.catalog import Family, human_tokens, load_catalog
from injection.checkpoints.pull import pull_checkpoint
from injection.lr import learning_rate

checkpoints_app = HarnessTyper()


def _sources(family: Family, step: int) -> str:
    entry = family.entry(step)
    if family.builtin:
        return "built locally" if step == 0 else "local"
    parts = []
    if entry and entry.urls:
        parts.append("original" + (f" (+{len(entry.urls) - 1} alt)" if len(entry.urls) > 1 else ""))
    if entry and entry.hf_revision:
        parts.append(f"hf:{entry.hf_revision}" + (" (derived)" if entry.hf_revision_guessed else ""))
    return ", ".join(parts)


@checkpoints_app.command("list")
def list_checkpoints(
    family: Annotated[str | None, typer.Argument(help="Family to list (default: all).")] = None,
) -> None:
    """Every catalogued step: tokens seen, stage alias, and where it can be fetched from."""
    catalog = load_catalog()
    families = [catalog.family(family)] if family else list(catalog.families.values())
    console = Console()
    for fam in families:
        table = Table(title=f"{fam.name}: {fam.description}")
        for col in ("step", "tokens", "stage", "sources"):
            table.add_column(col, justify="right" if col in ("step", "tokens") else "left")
        for step in fam.available_steps():
            table.add_row(str(step), human_tokens(fam.tokens_at(step)), fam.stage_of(step) or "", _sources(fam, step))
        console.print(table)


@checkpoints_app.command("show")
def show(ref: Annotated[str, typer.Argument(help="FAMILY@STEP or FAMILY@STAGE, e.g. olmo-7b@mid.")]) -> None:
    """All facts about one checkpoint: URLs, HF revision, batch size, learning rate at that step, run facts."""
    res = load_catalog().resolve(ref)
    fam, step = res.family, res.step
    table = Table(show_header=False, title=res.ref)
    table.add_column(style="bold")
    table.add_column(overflow="fold")  # URLs must stay whole enough to copy, never elided
    rows = [
        ("family", f"{fam.name} ({fam.description})"),
        ("step", str(step) + (f" (stage {res.stage}: {fam.stage_rule})" if res.stage else "")),
        ("tokens seen", f"{fam.tokens_at(step):,} ({human_tokens(fam.tokens_at(step))})"),
        (
            "global batch size",
            f"{fam.batch_size_at(step)} rows x {fam.row_len} tokens"
            + (f" ({fam.seq_len} trained per row)" if fam.row_len != fam.seq_len else ""),
        ),
        ("tokens per step", f"{fam.batch_size_at(step) * fam.seq_len:,}"),
    ]
    if fam.precision:
        rows.append(("trained in", fam.precision))
    rows += [("reported problem", f"{issue.reported} ({issue.source})") for issue in fam.issues_at(step)]
    if res.entry:
        rows += [("original URL", url) for url in res.entry.urls]
        revision = f"{fam.hf_repo} @ {res.entry.hf_revision}" if res.entry.hf_revision else "unknown (not confirmed)"
        if res.entry.hf_revision_guessed:
            revision += " (derived from the step, not confirmed)"
        rows.append(("HF revision", revision))
    elif fam.builtin:
        rows.append(("source", "built offline (step 0) or trained locally"))
    sched, opt = fam.lr_schedule, fam.optimizer
    position = fam.tokens_at(step) if sched.units == "tokens" else step
    decayed = "Linear weights" + (", norms and biases" if opt.decay_norm_and_bias else "")
    decayed += ", the embedding" if opt.decay_embeddings else ""
    rows += [
        ("learning rate here", f"{learning_rate(sched, position):.4g}"),
        (
            "lr schedule",
            f"{sched.kind}, peak {sched.peak_lr:g}, warmup {sched.warmup_steps:,}, "
            f"alpha_f {sched.alpha_f:g}, t_max {sched.t_max if sched.t_max is None else format(sched.t_max, ',')}"
            + (f" ({sched.units})" if sched.units != "steps" else ""),
        ),
        (
            "optimizer",
            f"AdamW betas {opt.betas}, eps {opt.eps:g}, weight decay {opt.weight_decay:g} (on {decayed}), "
            f"grad clip {opt.grad_clip:g}",
        ),
    ]
    if fam.objective.z_loss_multiplier is not None:
        rows.append(("z-loss", f"multiplier {fam.objective.z_loss_multiplier:g}"))
    if fam.objective.instance_filter is not None:
        f = fam.objective.instance_filter
        rows.append(
            (
                "instance filter",
                f"no loss on instances repeating a {f.repetition_min_period}-{f.repetition_max_period} token "
                f"pattern {f.repetition_max_count}+ times",
            )
        )
    arch = dataclasses.asdict(fam.architecture) if dataclasses.is_dataclass(fam.architecture) else fam.architecture
    rows.append(("architecture", f"{fam.kind}: " + ", ".join(f"{k} {v}" for k, v in arch.items())))
    d = fam.data_order
    if d.format == "megatron-indexed":
        rows += [
            ("data order", f"the rows of an indexed dataset in training order (seed {d.seed})"),
            ("data index", str(d.index_url)),
            ("data files", f"{len(d.data_urls)} token file(s)"),
            ("tokenizer", str(d.tokenizer)),
        ]
    else:
        rows += [
            ("data order", f"seed {d.seed}, global_indices {d.global_indices_url}"),
            ("data files", f"{d.data_paths} ({fam.token_dtype})"),
            ("tokenizer", str(d.tokenizer)),
        ]
    for key, value in rows:
        table.add_row(key, value)
    Console().print(table)


def pull(
    ref: Annotated[str, typer.Argument(help="FAMILY@STEP or FAMILY@STAGE, e.g. olmo-1b@early or tiny@0.")],
    source: Annotated[
        str,
        typer.Option(
            help="original: the run's unsharded files (with optimizer state), "
            "converted to HF; hf: the -hf repository's revision (weights only)."
        ),
    ] = "original",
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Destination directory (default "
            "$INJECTION_CACHE/FAMILY/stepN). With --source hf, an HF snapshot "
            "already there is adopted.",
        ),
    ] = None,
    trust_pickle: Annotated[
        bool, typer.Option("--trust-pickle", help="Allow checkpoint files that need full unpickling (can run code).")
    ] = False,
    keep_original: Annotated[bool, typer.Option("--keep-original", help="Keep the downloaded original files.")] = False,
    workers: Annotated[int, typer.Option(help="Files downloaded in parallel.")] = 4,
    retries: Annotated[
        int | None,
        typer.Option(
            help="At most this many failed attempts in a row per file (default: retry within the budget, "
            "INJECTION_HTTP_BUDGET seconds).",
            min=0,
        ),
    ] = None,
) -> None:
    """Fetch a checkpoint and leave it as an HF model directory with checkpoint.json."""

    import_deepspeed()  # transformers may import it: its log lines must not reach stdout

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = pull_checkpoint(
            ref,
            source=source,
            dest=out,
            trust_pickle=trust_pickle,
            policy=dataclasses.replace(default_policy(), retries=retries),
            workers=workers,
            keep_original=keep_original,
        )
    console = Console(stderr=True)
    for w in caught:
        if issubclass(w.category, UserWarning):
            console.print(f"[yellow]warning:[/yellow] {w.message}")
    print(path)  # the result, alone on stdout: DIR=$(injection pull ...)
