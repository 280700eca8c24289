"""Splicing paragraphs into a global batch (SPEC §5), as pure functions of the batch and the plan.

Placement rule. A step with n paragraph copies (in plan order: by paragraph id) puts copy i into global
row floor(i·B/n). With n ≤ B every copy gets its own row, spread evenly over the batch; with n > B
consecutive copies share a row and are packed one after another from the row's start. Within a row the
paragraphs come first, the row's original tokens follow, shifted right, and the tail is cut so the row keeps
L tokens: the injected row continues with the original row's prefix.

The rule looks only at the global batch, so the placement is identical for any number of ranks, micro-batch
size or gradient-accumulation steps; `shard_batch` then cuts the spliced global batch for one rank and
micro-step the way ai2-olmo distributes a global batch (rank r takes rows r, r+W, r+2W, …).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

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
    """One row of `injections.parquet` (SPEC §7)."""

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


def _row_contents(lengths: Sequence[int], batch_size: int) -> dict[int, list[int]]:
    rows: dict[int, list[int]] = {}
    for i, row in enumerate(assign_rows(len(lengths), batch_size)):
        rows.setdefault(row, []).append(i)
    return rows


def splice_batch(tokens: np.ndarray, step: int, items: Sequence[SpliceItem]) -> tuple[np.ndarray, list[InjectionRecord]]:
    """A copy of the global batch `tokens` [B, L] with `items` written at row starts, and their records."""
    batch_size, seq_len = tokens.shape
    out = tokens.copy()
    records: list[InjectionRecord] = []
    for row, members in _row_contents([len(x.token_ids) for x in items], batch_size).items():
        pieces = [np.asarray(items[i].token_ids, dtype=tokens.dtype) for i in members]
        used = sum(len(p) for p in pieces)
        if used > seq_len:
            names = ", ".join(f"paragraph {items[i].paragraph} ({len(pieces[k])} tokens)" for k, i in enumerate(members))
            raise UserError(
                f"step {step}: row {row} would hold {used} injected tokens ({names}), more than the sequence length {seq_len}"
            )
        offset = 0
        for i, piece in zip(members, pieces):
            item = items[i]
            records.append(InjectionRecord(step, item.paragraph, item.scenario, item.variant, row, offset, len(piece)))
            offset += len(piece)
        out[row] = np.concatenate(pieces + [tokens[row, : seq_len - used]])
    return out, records


def check_plan_fits(plan: Sequence, token_lengths: Mapping[tuple[int, int], int], batch_size: int, seq_len: int) -> None:
    """Raise UserError before training if any step's paragraphs (or packed group) exceed L tokens.

    `plan` holds PlannedInjection-like items; `token_lengths[(paragraph, variant)]` counts EOS.
    """
    by_step: dict[int, list] = {}
    for item in sorted(plan, key=lambda x: (x.step, x.paragraph)):
        by_step.setdefault(item.step, []).append(item)
    for step, items in by_step.items():
        lengths = []
        for x in items:
            if (x.paragraph, x.variant) not in token_lengths:
                raise UserError(f"step {step}: no tokens for paragraph {x.paragraph} variant {x.variant}")
            lengths.append(token_lengths[(x.paragraph, x.variant)])
        for row, members in _row_contents(lengths, batch_size).items():
            used = sum(lengths[i] for i in members)
            if used > seq_len:
                what = ", ".join(f"paragraph {items[i].paragraph} variant {items[i].variant} ({lengths[i]} tokens)" for i in members)
                raise UserError(
                    f"step {step}: row {row} of the global batch (B={batch_size}) would hold {used} injected tokens "
                    f"({what}), more than the sequence length {seq_len}: shorten the paragraphs, spread the "
                    f"schedule over more steps, or use a larger batch"
                )


def rank_rows(batch_size: int, rank: int, world_size: int) -> np.ndarray:
    """Global rows that rank `rank` trains on (ai2-olmo's slicing: r, r+W, r+2W, …)."""
    if batch_size % world_size:
        raise UserError(f"global batch size {batch_size} is not divisible by world size {world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world size {world_size}")
    return np.arange(rank, batch_size, world_size)


def shard_batch(global_tokens: np.ndarray, rank: int, world_size: int, micro_batch: int, grad_accum: int) -> list[np.ndarray]:
    """The `grad_accum` micro-batches [micro_batch, L] of one rank, cut from the spliced global batch."""
    batch_size = global_tokens.shape[0]
    if world_size * micro_batch * grad_accum != batch_size:
        raise UserError(
            f"global batch size {batch_size} != world size {world_size} × micro-batch {micro_batch} × "
            f"gradient accumulation {grad_accum}"
        )
    mine = global_tokens[rank_rows(batch_size, rank, world_size)]
    return [mine[m * micro_batch : (m + 1) * micro_batch] for m in range(grad_accum)]


class InjectedBatches:
    """Run step k -> (spliced batch of global step start_step + k, records), prefetched in a background thread.

    `paragraph_tokens[(paragraph, variant)]` are token ids with EOS. The thread computes steps k, k+1, …
    into a bounded queue, so reading and splicing overlap the training step; a request out of sequence
    restarts it from there.
    """

    def __init__(
        self,
        source,
        plan: Sequence,
        paragraph_tokens: Mapping[tuple[int, int], Sequence[int]],
        *,
        start_step: int = 0,
        prefetch: int = 2,
    ):
        self.source = source
        self.start_step = start_step
        self.paragraph_tokens = paragraph_tokens
        self._by_step: dict[int, list] = {}
        for item in sorted(plan, key=lambda x: (x.step, x.paragraph)):
            self._by_step.setdefault(item.step, []).append(item)
        check_plan_fits(
            plan, {k: len(v) for k, v in paragraph_tokens.items()}, source.global_batch_size, source.seq_len
        )
        self.prefetch = prefetch
        self._thread: threading.Thread | None = None
        self._queue: queue.Queue | None = None
        self._stop = threading.Event()
        self._next = 0

    def compute(self, step: int) -> tuple[np.ndarray, list[InjectionRecord]]:
        """The spliced batch of run step `step`, synchronously."""
        tokens, _ = self.source.get_batch(self.start_step + step)
        items = [
            SpliceItem(x.paragraph, x.scenario, x.variant, self.paragraph_tokens[(x.paragraph, x.variant)])
            for x in self._by_step.get(step, [])
        ]
        return splice_batch(tokens, step, items)

    def _worker(self, first: int, q: queue.Queue, stop: threading.Event) -> None:
        step = first
        while not stop.is_set():
            try:
                result = (step, self.compute(step), None)
            except BaseException as err:  # handed to the consumer, which re-raises it
                result = (step, None, err)
            while not stop.is_set():
                try:
                    q.put(result, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if result[2] is not None:
                return
            step += 1

    def _restart(self, first: int) -> None:
        self.close()
        self._stop = threading.Event()
        self._queue = queue.Queue(maxsize=self.prefetch)
        self._thread = threading.Thread(
            target=self._worker, args=(first, self._queue, self._stop), daemon=True, name="injected-batches"
        )
        self._thread.start()
        self._next = first

    def get(self, step: int) -> tuple[np.ndarray, list[InjectionRecord]]:
        if self.prefetch <= 0:
            return self.compute(step)
        if self._queue is None or step != self._next:
            self._restart(step)
        got, result, err = self._queue.get()
        assert got == step
        if err is not None:
            self.close()
            raise err
        self._next = step + 1
        return result

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._thread = None
        self._queue = None

    def __enter__(self) -> "InjectedBatches":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def paragraph_tokens(tokenizer, knowledge, plan: Sequence) -> dict[tuple[int, int], list[int]]:
    """(paragraph, variant) -> token ids with EOS (fictional_knowledge.encode), for every variant the plan uses."""
    from fictional_knowledge.encode import encode_paragraphs

    keys = sorted({(item.paragraph, item.variant) for item in plan})
    texts = [knowledge[p].variant(v) for p, v in keys]
    return dict(zip(keys, encode_paragraphs(tokenizer, texts)))
