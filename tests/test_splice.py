"""Splicing: rows keep L, paragraphs land once at the recorded row/offset, placement independent of sharding."""

from __future__ import annotations

import numpy as np
import pytest

from harness.errors import UserError
from injection.data import BatchStream, open_corpus
from injection.engine.batches import InjectedBatches
from injection.schedule import PlannedInjection
from injection.splice import SpliceItem, apply, assign_rows, place, shard_batch, splice_batch, splice_items
from tests.helpers.corpus import make_corpus

B, L = 8, 32


def batch(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 1000, size=(B, L), dtype=np.int64)


def items(lengths, base: int = 10_000) -> list[SpliceItem]:
    # token ids above the batch's range, unique per paragraph, so each can be found again
    return [
        SpliceItem(p, "s", 0, list(range(base + 100 * p, base + 100 * p + n - 1)) + [99_999])
        for p, n in enumerate(lengths)
    ]


def test_rows_offsets_and_untouched_rows():
    tokens = batch()
    spliced, records = splice_batch(tokens, 7, items([5, 9, 3]))
    assert spliced.shape == (B, L) and spliced.dtype == np.int64
    assert [r.row for r in records] == [0, 2, 5] and all(r.offset == 0 and r.step == 7 for r in records)
    for item, rec in zip(items([5, 9, 3]), records):
        n = len(item.token_ids)
        assert rec.tokens == n
        assert spliced[rec.row, rec.offset : rec.offset + n].tolist() == list(item.token_ids)
        # the injected row continues with the original row's prefix
        assert np.array_equal(spliced[rec.row, n:], tokens[rec.row, : L - n])
        # each paragraph appears exactly once in the whole batch
        assert (spliced == item.token_ids[0]).sum() == 1
    untouched = [r for r in range(B) if r not in {0, 2, 5}]
    assert np.array_equal(spliced[untouched], tokens[untouched])
    assert np.array_equal(tokens, batch()), "splice_batch must not modify its input"


def test_packing_when_paragraphs_outnumber_rows():
    lengths = [3, 4, 2, 5, 3, 2, 4, 3, 2, 5, 3, 4, 2, 3, 4, 2, 3, 5, 2, 4]  # 20 paragraphs, 8 rows
    its = items(lengths)
    tokens = batch(1)
    spliced, records = splice_batch(tokens, 0, its)
    assert sorted({r.row for r in records}) == list(range(B))
    for row in range(B):
        in_row = [r for r in records if r.row == row]
        assert [r.offset for r in in_row] == list(np.cumsum([0] + [r.tokens for r in in_row])[:-1])
        used = sum(r.tokens for r in in_row)
        assert np.array_equal(spliced[row, used:], tokens[row, : L - used])
    for item, rec in zip(its, records):
        assert spliced[rec.row, rec.offset : rec.offset + rec.tokens].tolist() == list(item.token_ids)
    assert assign_rows(20, 8) == [r.row for r in records]


def test_too_long_refused_before_reading_any_batch():
    with pytest.raises(UserError, match="more than the sequence length"):
        splice_batch(batch(), 0, items([L + 1]))
    halves = items([L // 2] * (2 * B))
    records = place(3, halves, B, L)  # exactly fills the packed rows
    assert sorted({r.row for r in records}) == list(range(B)) and max(r.offset for r in records) == L // 2
    longer = halves[:5] + [SpliceItem(5, "s", 0, list(range(L // 2 + 1)))] + halves[6:]
    with pytest.raises(UserError, match="step 3: row 2"):
        place(3, longer, B, L)


def test_apply_equals_splice_batch_and_records_come_from_lengths_alone():
    tokens, its = batch(4), items([3, 9, 4, 12, 5, 6, 2, 8, 7, 11])
    spliced, records = splice_batch(tokens, 5, its)
    assert place(5, its, B, L) == records
    assert np.array_equal(apply(tokens, its, records), spliced)


@pytest.mark.parametrize("world_size", [1, 2, 4])
def test_placement_independent_of_sharding(world_size):
    tokens = batch(2)
    spliced, records = splice_batch(tokens, 0, items([4, 6, 3, 7, 5]))
    for micro in [m for m in (1, 2, 4, 8) if B % (world_size * m) == 0]:
        accum = B // (world_size * micro)
        shards = [shard_batch(spliced, r, world_size, micro, accum) for r in range(world_size)]
        assert all(s.shape == (micro, L) for rank in shards for s in rank)
        rebuilt = np.empty_like(spliced)
        for r in range(world_size):
            rebuilt[r::world_size] = np.concatenate(shards[r])
        assert np.array_equal(rebuilt, spliced)
    with pytest.raises(UserError):
        shard_batch(spliced, 0, 3, 1, 1)


def test_injected_batches_prefetch_matches_direct(tmp_path):
    corpus = make_corpus(tmp_path / "c", seq_len=L, file_tokens=(4000, 3000))
    stream = BatchStream(open_corpus(corpus), 0, 4 * B, B)
    plan = [PlannedInjection(s, p, "s", 0) for s in (0, 2) for p in range(3)]
    tokens = {(p, 0): items([5, 6, 7])[p].token_ids for p in range(3)}
    injections = splice_items(plan, tokens)
    records = {k: place(k, its, B, L) for k, its in injections.items()}
    direct = InjectedBatches(stream, injections, records, prefetch=0)
    with InjectedBatches(stream, injections, records, prefetch=2) as prefetched:
        for k in [0, 1, 2, 3, 1, 2]:  # in order, then a jump back (restarts the prefetch)
            a = direct.get(k)
            b = prefetched.get(k)
            assert np.array_equal(a, b)
            original = stream.batch(k)[0]
            clean = [r for r in range(B) if r not in {x.row for x in records.get(k, [])}]
            assert np.array_equal(b[clean], original[clean])
            assert (len(clean) < B) == (k in (0, 2))
