"""`injection data prepare|extract|build-corpus` and `injection plan`: thin wrappers over the library functions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from harness.errors import HarnessTyper, UserError

data_app = HarnessTyper()


def _open_source(family: str | None, source: str | None, batch_size: int | None, start: int):
    from injection.data.family import family_data
    from injection.data.prepare import open_checked_source, open_prepared

    if family is None and source is None:
        raise UserError("give --family (the description made by `injection data prepare FAMILY`) "
                        "and/or --source CORPUS_DIR_OR_URL")
    facts = family_data(family, start) if family is not None else None
    batch_size = batch_size or (facts.global_batch_size if facts else None)
    if batch_size is None:
        raise UserError("--batch-size is required with --source (the run's global batch size)")
    if source is None:
        batch_source, source = open_prepared(family, batch_size)
    else:
        batch_source = open_checked_source(source, batch_size)
    if facts is not None and (batch_source.seq_len, batch_source.info.seed) != (facts.seq_len, facts.seed):
        raise UserError(
            f"{source}: seq_len {batch_source.seq_len} and seed {batch_source.info.seed} do not match the catalog's "
            f"{family!r} (seq_len {facts.seq_len}, seed {facts.seed})"
        )
    return batch_source, source


@data_app.command("extract")
def extract(
    out: Annotated[Path, typer.Option("--out", help="Directory of the window corpus (resumable).")],
    start: Annotated[int, typer.Option("--start", help="First global step of the window.")],
    steps: Annotated[int, typer.Option("--steps", help="Number of steps to extract.")],
    family: Annotated[Optional[str], typer.Option("--family", help="Checkpoint family (olmo-1b, olmo-7b).")] = None,
    source: Annotated[
        Optional[str], typer.Option("--source", help="Corpus directory or URL (default with --family: the description "
                                                     "`injection data prepare FAMILY` left in the cache).")
    ] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Global batch size (rows per step).")] = None,
    check: Annotated[int, typer.Option("--check", help="Batches re-read from the source and compared.")] = 4,
) -> None:
    """Materialize global steps START … START+STEPS−1 of a run's data order as a local corpus."""
    from injection.data.extract import extract_window

    batch_source, name = _open_source(family, source, batch_size, start)
    manifest = extract_window(batch_source, start, steps, out, source_name=name, check_samples=check)
    typer.echo(
        f"{out}: steps {manifest['first_step']}…{manifest['first_step'] + manifest['n_steps'] - 1} "
        f"({manifest['instances']} instances), checked steps {manifest['checked_steps']}: equal"
    )


@data_app.command("prepare")
def prepare(
    family: Annotated[str, typer.Argument(help="Checkpoint family whose run's data to describe (olmo-1b, olmo-7b).")],
    out: Annotated[Optional[Path], typer.Option("--out", help="Folder for corpus.json and the size cache "
                                                              "(default $INJECTION_CACHE/data/FAMILY).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the file URLs and what would be fetched; "
                                                            "no network.")] = False,
    workers: Annotated[int, typer.Option("--workers", help="Size requests in flight.", min=1)] = 16,
    retries: Annotated[int, typer.Option("--retries", help="Further attempts per request, with backoff.", min=0)] = 5,
    full_order_check: Annotated[bool, typer.Option(
        "--full-order-check", help="Read the whole published order file (3.7 GB for olmo-7b) and check every index; "
                                   "by default its size is checked here and its indices in every window extracted.")
    ] = False,
    rebuild_order: Annotated[bool, typer.Option(
        "--rebuild-order", help="Ignore the published order file; rebuild the order from the seed (unverifiable).")
    ] = False,
) -> None:
    """Describe a run's corpus (corpus.json): token-file URLs from the shipped list, their sizes, the order."""
    from injection.data.prepare import HttpPolicy, plan_prepare, prepare_corpus

    plan = plan_prepare(family, out, rebuild_order=rebuild_order, full_order_check=full_order_check)
    if dry_run:
        typer.echo("\n".join(plan.urls))
        for line in plan.describe():
            typer.echo(line, err=True)
        return
    info = prepare_corpus(plan, policy=HttpPolicy(retries=retries), workers=workers,
                          warn=lambda message: typer.echo(f"warning: {message}", err=True))
    order = info.extra["order"]
    described = (f"{order['source']} ({order['entries']:,} entries; checked: {order['checked']})"
                 if info.global_indices is not None else f"rebuilt from seed {info.seed} + epoch {info.epoch} (unverified)")
    typer.echo(f"{plan.out / 'corpus.json'}: {family}, {len(info.paths)} files, {info.n_instances:,} instances of "
               f"{info.seq_len:,} tokens ({info.dtype}); order: {described}")


@data_app.command("build-corpus")
def build_corpus_cmd(
    source: Annotated[Path, typer.Argument(help="Text file (blank-line separated), JSON Lines, or a saved HF dataset.")],
    out: Annotated[Path, typer.Option("--out", help="Corpus directory to create.")],
    seq_len: Annotated[int, typer.Option("--seq-len", help="Tokens per instance.")],
    tokenizer: Annotated[str, typer.Option("--tokenizer", help="olmo | tokenizer .json | saved tokenizer dir.")] = "olmo",
    seed: Annotated[int, typer.Option("--seed", help="Data-order seed (ai2-olmo's permutation).")] = 0,
    text_field: Annotated[str, typer.Option("--text-field", help="Field holding the text (JSON Lines, datasets).")] = "text",
    split: Annotated[Optional[str], typer.Option("--split", help="Split of a DatasetDict (default: all, sorted).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing corpus.")] = False,
) -> None:
    """Tokenize text into an OLMo-format corpus (token files, global_indices.npy, corpus.json)."""
    from injection.data.build import build_corpus

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
    schedule: Annotated[str, typer.Option("--schedule", help="Built-in schedule (paper, demo) or a YAML file.")] = "paper",
    total_steps: Annotated[Optional[int], typer.Option("--total-steps", help="Override the schedule's run length.")] = None,
    tokenizer: Annotated[str, typer.Option("--tokenizer", help="Tokenizer for the token counts.")] = "olmo",
    as_json: Annotated[bool, typer.Option("--json", help="A JSON list, one object per injected paragraph copy.")] = False,
) -> None:
    """Print the injection plan: step -> paragraphs, scenario, variant, tokens."""
    from fictional_knowledge.load import load_knowledge
    from injection.schedule import load_schedule, plan_steps
    from injection.splice import paragraph_tokens
    from harness.tokenizers import load_tokenizer

    sched = load_schedule(schedule)
    ks = load_knowledge(knowledge)
    items = sched.plan(ks, total_steps)
    tokens = paragraph_tokens(load_tokenizer(tokenizer), ks, items)
    if as_json:
        rows = [
            {"step": x.step, "paragraph": x.paragraph, "scenario": x.scenario, "variant": x.variant,
             "tokens": len(tokens[(x.paragraph, x.variant)])}
            for x in items
        ]
        typer.echo(json.dumps(rows, indent=1))
        return
    from rich.console import Console
    from rich.table import Table

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
