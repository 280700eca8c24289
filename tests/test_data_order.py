"""The project's batches equal what ai2-olmo's own IterableDataset + MemMapDataset yield."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from harness.errors import UserError
from injection.data import BatchStream, open_corpus
from injection.data.order import GlobalIndices, build_global_indices, verify_global_indices
from tests.helpers.corpus import make_corpus, serve_directory

B = 8


def olmo_device_batches(
    corpus: Path, *, seed: int, epoch: int, start_step: int, rank: int, world_size: int, steps: int
):
    """Device batches as ai2-olmo's training loader would yield them (tokens, instance ids) per step."""
    from olmo.data import IterableDataset, MemMapDataset

    info = json.loads((corpus / "corpus.json").read_text())
    dataset = MemMapDataset(
        *[corpus / p for p in info["paths"]], chunk_size=info["seq_len"], memmap_dtype=getattr(np, info["dtype"])
    )
    iterable = IterableDataset(
        dataset,
        B,
        seed=seed,
        epoch=epoch,
        start_index=start_step * B,
        world_size=world_size,
        rank=rank,
        fs_local_rank=0,
        num_threads=0,
        drop_last=True,
    )
    items = list(itertools.islice(iter(iterable), steps * (B // world_size)))
    device = B // world_size
    for s in range(steps):
        chunk = items[s * device : (s + 1) * device]
        yield np.stack([x["input_ids"].numpy() for x in chunk]), np.array([x["index"] for x in chunk])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("corpus"), seed=11)


def test_rebuilt_order_equals_olmo_saved_file(tmp_path, corpus):
    """The order file ai2-olmo saves for a run (work_dir/global_indices.npy) == our rebuild from the seed."""
    from olmo.data import IterableDataset, MemMapDataset

    dataset = MemMapDataset(*sorted(corpus.glob("part-*.npy")), chunk_size=16)
    IterableDataset(dataset, B, seed=11, epoch=3, world_size=1, rank=0, fs_local_rank=0, work_dir=tmp_path)
    saved = GlobalIndices(tmp_path / "global_indices.npy").slice(0, len(dataset))
    rebuilt = build_global_indices(len(dataset), seed=11, epoch=3)
    assert np.array_equal(saved, rebuilt)
    assert verify_global_indices(tmp_path / "global_indices.npy", len(dataset), seed=11, epoch=3) == len(dataset)
    with pytest.raises(ValueError, match="entry"):
        verify_global_indices(tmp_path / "global_indices.npy", len(dataset), seed=12, epoch=3)
    assert not np.array_equal(rebuilt, build_global_indices(len(dataset), seed=11, epoch=0))
    assert sorted(rebuilt.tolist()) == list(range(len(dataset)))


def stream(corpus, start_step: int = 0, batch: int = B, epoch: int = 0) -> BatchStream:
    return BatchStream(open_corpus(corpus), epoch, start_step * B, batch)


@pytest.mark.parametrize("start_step", [0, 5])
def test_batches_equal_olmo_world_size_1(corpus, start_step):
    source = stream(corpus, start_step)
    for k, (tokens, ids) in enumerate(
        olmo_device_batches(corpus, seed=11, epoch=0, start_step=start_step, rank=0, world_size=1, steps=3)
    ):
        ours, our_ids = source.batch(k)
        assert ours.dtype == np.int64 and ours.shape == (B, 16) and our_ids.dtype == np.int64
        assert np.array_equal(our_ids, ids)
        assert np.array_equal(ours, tokens)


def test_batches_equal_olmo_ranks_of_world_size_2_reassembled(corpus):
    """OLMo gives rank r the global batch positions r, r+2, …: interleaving both ranks gives our batch."""
    source = stream(corpus, 4)
    per_rank = [
        list(olmo_device_batches(corpus, seed=11, epoch=0, start_step=4, rank=r, world_size=2, steps=2)) for r in (0, 1)
    ]
    for k in range(2):
        tokens, ids = source.batch(k)
        for r in (0, 1):
            assert np.array_equal(tokens[r::2], per_rank[r][k][0])
            assert np.array_equal(ids[r::2], per_rank[r][k][1])


def test_a_start_position_that_is_not_step_times_rows_is_where_olmo_resumes(corpus):
    """The trainer's counter is the truth: OLMo restarts its loader at start_index = instances seen."""
    from olmo.data import IterableDataset, MemMapDataset

    info = json.loads((corpus / "corpus.json").read_text())
    dataset = MemMapDataset(*[corpus / p for p in info["paths"]], chunk_size=16, memmap_dtype=np.uint16)
    seen = 5 * B + 3  # e.g. a run whose rows per step changed on the way
    olmo = IterableDataset(
        dataset,
        B,
        seed=11,
        epoch=1,
        start_index=seen,
        world_size=1,
        rank=0,
        fs_local_rank=0,
        num_threads=0,
        drop_last=True,
    )
    expected = [x["index"] for x in itertools.islice(iter(olmo), 2 * B)]
    ours = BatchStream(open_corpus(corpus), 1, seen, B)
    assert np.concatenate([ours.batch(0)[1], ours.batch(1)[1]]).tolist() == expected


def test_a_run_crossing_the_epoch_end_continues_in_the_next_epochs_order(corpus):
    """OLMo drops an epoch's last incomplete batch and starts the next epoch (seed + epoch) at position 0."""
    n = open_corpus(corpus).epoch_length(0)
    full = n // B
    source = BatchStream(open_corpus(corpus), 0, (full - 2) * B, B)
    assert source.position(1) == (0, (full - 1) * B)
    assert source.position(2) == (1, 0) and source.position(3) == (1, B)
    next_epoch = build_global_indices(n, 11, 1)
    assert source.batch(2)[1].tolist() == next_epoch[:B].tolist()
    assert source.batch(3)[1].tolist() == next_epoch[B : 2 * B].tolist()
    segments = source.segments(4)
    assert [(s.epoch, s.start, s.count) for s in segments] == [(0, (full - 2) * B, n - (full - 2) * B), (1, 0, 2 * B)]


def test_another_batch_size_reads_the_same_stream(corpus):
    """update k of a run with B' rows holds instances start + k·B' … + B' − 1 of the original stream."""
    original = stream(corpus, 6)
    smaller = BatchStream(open_corpus(corpus), 0, 6 * B, B // 4)
    ids = np.concatenate([original.batch(0)[1], original.batch(1)[1]])
    assert np.concatenate([smaller.batch(k)[1] for k in range(8)]).tolist() == ids.tolist()
    assert smaller.position(-4) == (0, 5 * B)  # the batches just before the checkpoint
    with pytest.raises(UserError, match="before epoch 0"):
        BatchStream(open_corpus(corpus), 0, B, B).position(-2)


def test_rebuilt_order_without_index_file_gives_same_batches(tmp_path, corpus):
    import shutil

    copy = tmp_path / "c"
    shutil.copytree(corpus, copy)
    (copy / "global_indices.npy").unlink()
    info = json.loads((copy / "corpus.json").read_text())
    info["global_indices"] = None
    (copy / "corpus.json").write_text(json.dumps(info))
    a, b = stream(corpus), stream(copy)
    for k in (0, 3, 17):
        assert np.array_equal(a.batch(k)[0], b.batch(k)[0])


def test_uint32_and_np_save_index_file(tmp_path):
    corpus = make_corpus(tmp_path / "c", dtype="uint32", vocab=100_000, seed=2)
    source = BatchStream(open_corpus(corpus), 0, 0, 4)
    raw = source.batch(2)
    np.save(corpus / "order.npy", build_global_indices(open_corpus(corpus).info.n_instances, 2))
    (corpus / "order.npy").rename(corpus / "global_indices.npy")
    again = BatchStream(open_corpus(corpus), 0, 0, 4).batch(2)
    assert np.array_equal(raw[0], again[0]) and raw[0].max() >= 65536


def test_remote_corpus_one_range_request_per_instance(corpus):
    local = stream(corpus)
    with serve_directory(corpus) as (url, ranges):
        remote = BatchStream(open_corpus(url), 0, 0, B)
        remote.batch(0)  # opens the order file (its size and header)
        ranges.clear()
        tokens, ids = remote.batch(6)
        # one request for the batch's slice of the order file + one per instance
        assert len(ranges) == B + 1 and all(r is not None for r in ranges)
    assert np.array_equal(tokens, local.batch(6)[0])
    assert np.array_equal(ids, local.batch(6)[1])


def test_an_order_that_does_not_belong_to_the_files_is_named(tmp_path):
    corpus = make_corpus(tmp_path / "c", seed=3)
    n = open_corpus(corpus).epoch_length(0)
    order = build_global_indices(n, 3)
    order[5] = n + 7  # an index beyond the token files, as in a published order file of another file list
    order.astype(np.uint32).tofile(corpus / "global_indices.npy")
    with pytest.raises(UserError, match=rf"global_indices.npy: entry 5 is instance {n + 7}"):
        BatchStream(open_corpus(corpus), 0, 0, B).batch(0)
