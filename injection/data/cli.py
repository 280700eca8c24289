"""`injection data prepare|extract|build-corpus` and `injection plan`: thin wrappers over the library functions."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from fictional_knowledge.load import load_knowledge
from harness.errors import HarnessTyper, UserError
from harness.http import default_policy
from harness.tokenizers import load_tokenizer
from injection.checkpoints.catalog import load_catalog
from injection.checkpoints.layout import read_checkpoint_dir
from injection.checkpoints.pull import local_checkpoint
from injection.data.build import build_corpus
from injection.data.extract import extract_window
from injection.data.formats import open_corpus
from injection.data.prepare import (
    is_indexed_family,
    open_prepared,
    plan_prepare,
    plan_prepare_indexed,
    prepare_corpus,
    prepare_indexed,
)
from injection.data.source import BatchStream
from injection.schedule import load_schedule, plan_steps
from injection.splice import paragraph_tokens

data_app = HarnessTyper()


def _open_source(family: str | None, source: str | None):
    """The corpus to read: `--source` (a corpus directory or URL), or the family's description prepared by
    `injection data prepare`; checked against the family's facts."""
    if family is None and source is None:
        raise UserError(
            "give --family (the description made by `injection data prepare FAMILY`) and/or --source CORPUS_DIR_OR_URL"
        )
    fam = load_catalog().family(family) if family is not None else None
    if source is None:
        corpus, source = open_prepared(family)
    else:
        corpus = open_corpus(source)
    if fam is not None and (corpus.seq_len, corpus.info.seed) != (fam.row_len, fam.data_order.seed):
        raise UserError(
            f"{source}: seq_len {corpus.seq_len} and seed {corpus.info.seed} do not match the catalog's "
            f"{family!r} (rows of {fam.row_len} tokens, seed {fam.data_order.seed})"
        )
    return corpus, fam


def _start_position(
    checkpoint: str | None, start: int | None, start_instance: int | None, epoch: int, batch_size: int | None, fam
) -> tuple[int, int, int, dict]:
    """(epoch, first position, batch size, label) of the window, from exactly one of the three ways to say it."""
    given = [
        name
        for name, v in (("--checkpoint", checkpoint), ("--start", start), ("--start-instance", start_instance))
        if v is not None
    ]
    if len(given) != 1:
        raise UserError(
            "give exactly one of --checkpoint (the trainer's own data position), --start (a global step: "
            "step × rows per step) or --start-instance" + (f"; got {', '.join(given)}" if given else "")
        )
    if checkpoint is not None:
        ckpt = read_checkpoint_dir(local_checkpoint(checkpoint))
        pos = ckpt.data_position
        return (
            pos.epoch,
            pos.instances_seen,
            batch_size or ckpt.global_batch_size,
            {"checkpoint": checkpoint, "global_step": ckpt.step, "position_source": pos.source},
        )
    if start_instance is not None:
        if start_instance < 0 or epoch < 0:
            raise UserError("--start-instance and --epoch must be >= 0")
        if batch_size is None:
            raise UserError("--batch-size is required with --start-instance (rows per step of the run)")
        return epoch, start_instance, batch_size, {"position_source": "--start-instance"}
    if start < 0:
        raise UserError(f"--start must be >= 0, got {start}")
    batch_size = batch_size or (fam.batch_size_at(start) if fam is not None else None)
    if batch_size is None:
        raise UserError("--batch-size is required with --start and no --family (the run's rows per step)")
    typer.echo(
        f"note: --start {start} assumes the run consumed {start} × {batch_size} instances of epoch 0; "
        "--checkpoint reads the trainer's own counter instead",
        err=True,
    )
    return 0, start * batch_size, batch_size, {"global_step": start, "position_source": "step x rows"}


@data_app.command("extract")
def extract(
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory of the window corpus (resumable).")],
    steps: Annotated[int, typer.Option("--steps", help="Number of steps the window covers.")],
    checkpoint: Annotated[
        str | None,
        typer.Option(
            "--checkpoint", help="Start where this checkpoint's data stream stands (FAMILY@STEP|STAGE or a directory)."
        ),
    ] = None,
    start: Annotated[int | None, typer.Option("--start", help="Start at global step START (START × rows).")] = None,
    start_instance: Annotated[
        int | None, typer.Option("--start-instance", help="Start at this position of the epoch's order.")
    ] = None,
    epoch: Annotated[int, typer.Option("--epoch", help="Epoch of --start-instance.")] = 0,
    family: Annotated[
        str | None, typer.Option("--family", help="Checkpoint family (olmo-1b, olmo-7b, pythia-1b-deduped, ...).")
    ] = None,
    source: Annotated[
        str | None,
        typer.Option(
            "--source",
            help="Corpus directory or URL (default with --family: the description "
            "`injection data prepare FAMILY` left in the cache).",
        ),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(
            "--batch-size", help="Rows per step of the run that will read the window (default: the checkpoint's)."
        ),
    ] = None,
    check: Annotated[int, typer.Option("--check", help="Batches re-read from the source and compared.")] = 4,
) -> None:
    """Materialize the instances that STEPS steps of a continued run read, as a local window corpus."""
    if batch_size is not None and batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {batch_size}")
    corpus, fam = _open_source(family, source)
    first_epoch, first, batch, label = _start_position(checkpoint, start, start_instance, epoch, batch_size, fam)
    stream = BatchStream(corpus, first_epoch, first, batch)
    manifest = extract_window(corpus, stream, steps, out, source_name=str(source), check_samples=check, label=label)
    print(
        f"{out}: {steps} steps of {batch} rows from epoch {first_epoch} position {first:,} "
        f"({manifest['instances']:,} instances), checked steps {manifest['checked_steps']}: equal"
    )


@data_app.command("prepare")
def prepare(
    family: Annotated[
        str,
        typer.Argument(
            help="Checkpoint family whose run's data to describe (olmo-1b, olmo-7b, pythia-1b-deduped, ...)."
        ),
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="Folder for corpus.json and the size cache (default $INJECTION_CACHE/data/FAMILY)."
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the file URLs and what would be fetched; no network.")
    ] = False,
    workers: Annotated[int, typer.Option("--workers", help="Size requests in flight.", min=1)] = 16,
    retries: Annotated[
        int | None,
        typer.Option(
            "--retries",
            help="At most this many failed attempts in a row per request (default: retry within the budget, "
            "INJECTION_HTTP_BUDGET seconds).",
            min=0,
        ),
    ] = None,
    full_order_check: Annotated[
        bool,
        typer.Option(
            "--full-order-check",
            help="Read the whole published order file (3.7 GB for olmo-7b) and check every index; "
            "by default its size is checked here and its indices in every window extracted.",
        ),
    ] = False,
    rebuild_order: Annotated[
        bool,
        typer.Option(
            "--rebuild-order", help="Ignore the published order file; rebuild the order from the seed (unverifiable)."
        ),
    ] = False,
) -> None:
    """Describe a run's corpus (corpus.json): token-file URLs from the shipped list, their sizes, the order; or,
    for data published as a Megatron indexed dataset, its index and token files, checked by opening them."""

    if is_indexed_family(family):
        indexed = plan_prepare_indexed(family, out)
        if dry_run:
            typer.echo("\n".join(indexed.urls))
            for line in indexed.describe():
                typer.echo(line, err=True)
            return
        done = prepare_indexed(indexed, warn=lambda message: typer.echo(f"warning: {message}", err=True))
        typer.echo(
            f"{indexed.out / 'corpus.json'}: {family}, a Megatron indexed dataset of {done['n_instances']:,} "
            f"rows of {done['seq_len']:,} tokens ({done['dtype']}) in {len(done['paths'])} file(s); the order "
            "is the files' own"
        )
        return
    plan = plan_prepare(family, out, rebuild_order=rebuild_order, full_order_check=full_order_check)
    if dry_run:
        typer.echo("\n".join(plan.urls))
        for line in plan.describe():
            typer.echo(line, err=True)
        return
    info = prepare_corpus(
        plan,
        policy=dataclasses.replace(default_policy(), retries=retries),
        workers=workers,
        warn=lambda message: typer.echo(f"warning: {message}", err=True),
    )
    order = info.extra["order"]
    described = (
        f"{order['source']} ({order['entries']:,} entries; checked: {order['checked']})"
        if info.global_indices is not None
        else f"rebuilt from seed {info.seed} + epoch {info.epoch} (unverified)"
    )
    typer.echo(
        f"{plan.out / 'corpus.json'}: {family}, {len(info.paths)} files, {info.n_instances:,} instances of "
        f"{info.seq_len:,} tokens ({info.dtype}); order: {described}"
    )


@data_app.command("build-corpus")
def build_corpus_cmd(
    source: Annotated[
        Path, typer.Argument(help="Text file (blank-line separated), JSON Lines, or a saved HF dataset.")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Corpus directory to create.")],
    seq_len: Annotated[int, typer.Option("--seq-len", help="Tokens per instance.")],
    tokenizer: Annotated[
        str, typer.Option("--tokenizer", help="olmo | tokenizer .json | saved tokenizer dir.")
    ] = "olmo",
    seed: Annotated[int, typer.Option("--seed", help="Data-order seed (ai2-olmo's permutation).")] = 0,
    text_field: Annotated[
        str, typer.Option("--text-field", help="Field holding the text (JSON Lines, datasets).")
    ] = "text",
    split: Annotated[str | None, typer.Option("--split", help="Split of a DatasetDict (default: all, sorted).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing corpus.")] = False,
) -> None:
    """Tokenize text into an OLMo-format corpus (token files, global_indices.npy, corpus.json)."""
    info = build_corpus(
        source, tokenizer, seq_len, out, seed=seed, text_field=text_field, split=split, overwrite=overwrite
    )
    typer.echo(
        f"{out}: {info['extra']['documents']} documents, {info['extra']['tokens']} tokens, "
        f"{info['n_instances']} instances of {seq_len} ({info['dtype']})"
    )


def _ranges(ids: list[int]) -> str:
    parts, start = [], None
    for a, b in zip(ids, ids[1:] + [None]):
        start = a if start is None else start
        if b != a + 1:
            parts.append(f"{start}" if start == a else f"{start}–{a}")
            start = None
    return ", ".join(parts)


def plan(
    knowledge: Annotated[Path, typer.Option("--knowledge", help="Knowledge set (reference JSON or dataset dir).")],
    schedule: Annotated[
        str, typer.Option("--schedule", help="Built-in schedule (paper, demo) or a YAML file.")
    ] = "paper",
    total_steps: Annotated[
        int | None, typer.Option("--total-steps", help="Override the schedule's run length.")
    ] = None,
    tokenizer: Annotated[str, typer.Option("--tokenizer", help="Tokenizer for the token counts.")] = "olmo",
    as_json: Annotated[
        bool, typer.Option("--json", help="A JSON list, one object per injected paragraph copy.")
    ] = False,
) -> None:
    """Print the injection plan: step -> paragraphs, scenario, variant, tokens."""
    sched = load_schedule(schedule)
    ks = load_knowledge(knowledge)
    items = sched.plan(ks, total_steps)
    tokens = paragraph_tokens(load_tokenizer(tokenizer), ks, items)
    if as_json:
        rows = [
            {
                "step": x.step,
                "paragraph": x.paragraph,
                "scenario": x.scenario,
                "variant": x.variant,
                "tokens": len(tokens[(x.paragraph, x.variant)]),
            }
            for x in items
        ]
        typer.echo(json.dumps(rows, indent=1))
        return

    total = total_steps or sched.total_steps
    table = Table(title=f"schedule {sched.name}: {len(items)} injections over {total} steps")
    for col in ("step", "scenario", "paragraphs", "n", "variants", "tokens"):
        table.add_column(col, justify="right" if col in ("step", "n", "tokens") else "left")
    for step, at_step in plan_steps(items).items():
        by_scenario: dict[str, list] = {}
        for x in at_step:
            by_scenario.setdefault(x.scenario, []).append(x)
        for i, (scenario, group) in enumerate(by_scenario.items()):
            variants = sorted({x.variant for x in group})
            table.add_row(
                str(step) if i == 0 else "",
                scenario,
                _ranges([x.paragraph for x in group]),
                str(len(group)),
                ", ".join(map(str, variants)),
                f"{sum(len(tokens[(x.paragraph, x.variant)]) for x in group):,}",
            )
    Console().print(table)
