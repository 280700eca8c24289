"""Splicing paragraphs into a global batch, as pure functions of the batch and the plan.

Placement rule. A step with n paragraph copies (in plan order: by paragraph id) puts copy i into global
row floor(i·B/n). With n ≤ B every copy gets its own row, spread evenly over the batch; with n > B
consecutive copies share a row and are packed one after another from the row's start. Within a row the
paragraphs come first, the row's original tokens follow, shifted right, and the tail is cut so the row keeps
L tokens: the injected row continues with the original row's prefix.

The rule looks only at the global batch, so the placement is identical for any number of ranks, micro-batch
size or gradient-accumulation steps; `shard_batch` then cuts the spliced global batch for one rank and
micro-step the way ai2-olmo distributes a global batch (rank r takes rows r, r+W, r+2W, …). `place` decides
where every copy goes from the token counts alone, so the whole run's placements (the rows of
injections.parquet) and every paragraph that does not fit are known before the first batch is read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fictional_knowledge.encode import encode_paragraphs
from harness.errors import UserError


@dataclass(frozen=True)
class SpliceItem:
    paragraph: int
    scenario: str
    variant: int
    token_ids: Sequence[int]
    """The paragraph's tokens with EOS appended."""


@dataclass(frozen=True)
class InjectionRecord:
    """One row of `injections.parquet` (harness.rundir.INJECTION_COLUMNS)."""

    step: int
    paragraph: int
    scenario: str
    variant: int
    row: int
    """Global batch row."""
    offset: int
    """Position of the paragraph's first token in that row."""
    tokens: int
    """Tokens written (EOS included)."""


def assign_rows(n_items: int, batch_size: int) -> list[int]:
    """Row of each of n copies in one step: floor(i·B/n) (evenly spread; packed when n > B)."""
    return [i * batch_size // n_items for i in range(n_items)]


def place(step: int, items: Sequence[SpliceItem], batch_size: int, seq_len: int) -> list[InjectionRecord]:
    """Where each copy of one step goes (row and offset), without reading the batch. UserError, naming the step,
    the row and its paragraphs, when a row would hold more injected tokens than the sequence length."""
    records: list[InjectionRecord] = []
    rows: dict[int, list[int]] = {}
    for i, row in enumerate(assign_rows(len(items), batch_size)):
        rows.setdefault(row, []).append(i)
    for row, members in rows.items():
        used = sum(len(items[i].token_ids) for i in members)
        if used > seq_len:
            what = ", ".join(
                f"paragraph {items[i].paragraph} variant {items[i].variant} ({len(items[i].token_ids)} tokens)"
                for i in members
            )
            raise UserError(
                f"step {step}: row {row} of the global batch (B={batch_size}) would hold {used} injected tokens "
                f"({what}), more than the sequence length {seq_len}: shorten the paragraphs, spread the schedule "
                "over more steps, or use a larger batch"
            )
        offset = 0
        for i in members:
            item = items[i]
            records.append(
                InjectionRecord(step, item.paragraph, item.scenario, item.variant, row, offset, len(item.token_ids))
            )
            offset += len(item.token_ids)
    return records


def apply(tokens: np.ndarray, items: Sequence[SpliceItem], records: Sequence[InjectionRecord]) -> np.ndarray:
    """A copy of the global batch `tokens` [B, L] with each item written where its record says (the records of
    `place`, in the same order): the row's injected paragraphs first, its original tokens after them, cut to L."""
    seq_len = tokens.shape[1]
    out = tokens.copy()
    by_row: dict[int, list[tuple[InjectionRecord, SpliceItem]]] = {}
    for rec, item in zip(records, items):
        by_row.setdefault(rec.row, []).append((rec, item))
    for row, members in by_row.items():
        members.sort(key=lambda m: m[0].offset)
        pieces = [np.asarray(item.token_ids, dtype=tokens.dtype) for _, item in members]
        used = sum(len(piece) for piece in pieces)
        out[row] = np.concatenate(pieces + [tokens[row, : seq_len - used]])
    return out


def splice_batch(
    tokens: np.ndarray, step: int, items: Sequence[SpliceItem]
) -> tuple[np.ndarray, list[InjectionRecord]]:
    """`place` then `apply`: the spliced copy of one global batch and the records of its copies."""
    records = place(step, items, tokens.shape[0], tokens.shape[1])
    return apply(tokens, items, records), records


def rank_rows(batch_size: int, rank: int, world_size: int) -> np.ndarray:
    """Global rows that rank `rank` trains on (ai2-olmo's slicing: r, r+W, r+2W, …)."""
    if batch_size % world_size:
        raise UserError(f"global batch size {batch_size} is not divisible by world size {world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world size {world_size}")
    return np.arange(rank, batch_size, world_size)


def shard_batch(
    global_tokens: np.ndarray, rank: int, world_size: int, micro_batch: int, grad_accum: int
) -> list[np.ndarray]:
    """The `grad_accum` micro-batches [micro_batch, L] of one rank, cut from the spliced global batch."""
    batch_size = global_tokens.shape[0]
    if world_size * micro_batch * grad_accum != batch_size:
        raise UserError(
            f"global batch size {batch_size} != world size {world_size} × micro-batch {micro_batch} × "
            f"gradient accumulation {grad_accum}"
        )
    mine = global_tokens[rank_rows(batch_size, rank, world_size)]
    return [mine[m * micro_batch : (m + 1) * micro_batch] for m in range(grad_accum)]


def paragraph_tokens(
    tokenizer, knowledge, plan: Sequence, eos_token_id: int | None = None
) -> dict[tuple[int, int], list[int]]:
    """(paragraph, variant) -> token ids ending with the run's EOS, for every variant the plan uses."""
    keys = sorted({(item.paragraph, item.variant) for item in plan})
    texts = [knowledge[p].variant(v) for p, v in keys]
    return dict(zip(keys, encode_paragraphs(tokenizer, texts, eos_token_id)))


def splice_items(plan: Sequence, tokens: dict[tuple[int, int], list[int]]) -> dict[int, list[SpliceItem]]:
    """The plan as splice items per run step (paragraphs in id order within a step)."""
    out: dict[int, list[SpliceItem]] = {}
    for x in sorted(plan, key=lambda x: (x.step, x.paragraph)):
        out.setdefault(x.step, []).append(
            SpliceItem(x.paragraph, x.scenario, x.variant, tokens[(x.paragraph, x.variant)])
        )
    return out
