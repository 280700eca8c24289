"""The project's batches equal what ai2-olmo's own IterableDataset + MemMapDataset yield."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from injection.data import open_batch_source
from injection.data.order import GlobalIndices, build_global_indices, verify_global_indices
from harness.errors import UserError
from tests.helpers.corpus import make_corpus, serve_directory

B = 8


def olmo_device_batches(corpus: Path, *, seed: int, epoch: int, start_step: int, rank: int, world_size: int, steps: int):
    """Device batches as ai2-olmo's training loader would yield them (tokens, instance ids) per step."""
    from olmo.data import IterableDataset, MemMapDataset

    import json

    info = json.loads((corpus / "corpus.json").read_text())
    dataset = MemMapDataset(
        *[corpus / p for p in info["paths"]], chunk_size=info["seq_len"], memmap_dtype=getattr(np, info["dtype"])
    )
    iterable = IterableDataset(
        dataset, B, seed=seed, epoch=epoch, start_index=start_step * B, world_size=world_size, rank=rank,
        fs_local_rank=0, num_threads=0, drop_last=True,
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


@pytest.mark.parametrize("start_step", [0, 5])
def test_batches_equal_olmo_world_size_1(corpus, start_step):
    source = open_batch_source(corpus, B)
    for k, (tokens, ids) in enumerate(
        olmo_device_batches(corpus, seed=11, epoch=0, start_step=start_step, rank=0, world_size=1, steps=3)
    ):
        ours, our_ids = source.get_batch(start_step + k)
        assert ours.dtype == np.int64 and ours.shape == (B, 16) and our_ids.dtype == np.int64
        assert np.array_equal(our_ids, ids)
        assert np.array_equal(ours, tokens)


def test_batches_equal_olmo_ranks_of_world_size_2_reassembled(corpus):
    """OLMo gives rank r the global batch positions r, r+2, …: interleaving both ranks gives our batch."""
    source = open_batch_source(corpus, B)
    per_rank = [list(olmo_device_batches(corpus, seed=11, epoch=0, start_step=4, rank=r, world_size=2, steps=2)) for r in (0, 1)]
    for k in range(2):
        tokens, ids = source.get_batch(4 + k)
        for r in (0, 1):
            assert np.array_equal(tokens[r::2], per_rank[r][k][0])
            assert np.array_equal(ids[r::2], per_rank[r][k][1])


def test_rebuilt_order_without_index_file_gives_same_batches(tmp_path, corpus):
    import json
    import shutil

    copy = tmp_path / "c"
    shutil.copytree(corpus, copy)
    (copy / "global_indices.npy").unlink()
    info = json.loads((copy / "corpus.json").read_text())
    info["global_indices"] = None
    (copy / "corpus.json").write_text(json.dumps(info))
    a, b = open_batch_source(corpus, B), open_batch_source(copy, B)
    for step in (0, 3, 17):
        assert np.array_equal(a.get_batch(step)[0], b.get_batch(step)[0])


def test_uint32_and_np_save_index_file(tmp_path):
    corpus = make_corpus(tmp_path / "c", dtype="uint32", vocab=100_000, seed=2)
    source = open_batch_source(corpus, 4)
    raw = source.get_batch(2)
    np.save(corpus / "order.npy", build_global_indices(source.info.n_instances, 2))
    (corpus / "order.npy").rename(corpus / "global_indices.npy")
    again = open_batch_source(corpus, 4).get_batch(2)
    assert np.array_equal(raw[0], again[0]) and raw[0].max() >= 65536


def test_remote_corpus_one_range_request_per_instance(corpus):
    local = open_batch_source(corpus, B)
    with serve_directory(corpus) as (url, ranges):
        remote = open_batch_source(url, B)
        ranges.clear()
        tokens, ids = remote.get_batch(6)
        # one request for the batch's slice of the order file + one per instance
        assert len(ranges) == B + 1 and all(r is not None for r in ranges)
    assert np.array_equal(tokens, local.get_batch(6)[0])
    assert np.array_equal(ids, local.get_batch(6)[1])


def test_step_outside_corpus_is_a_user_error(corpus):
    source = open_batch_source(corpus, B)
    with pytest.raises(UserError, match="outside this corpus"):
        source.get_batch(source.n_steps)
