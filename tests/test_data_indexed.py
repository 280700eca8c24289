"""Megatron indexed datasets (Pythia's published data format) as batch sources, local and over HTTP.

The files are written by tests/helpers/indexed.py from the published layout (struct + numpy), and, where
megatron-core is installed, by Megatron's own writer.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from harness.errors import UserError
from injection.cli import app
from injection.data import BatchStream, open_corpus
from injection.data.indexed import IndexedCorpus, IndexedDataset
from tests.helpers.corpus import make_corpus, serve_directory
from tests.helpers.indexed import make_indexed_corpus, write_indexed

runner = CliRunner()


def test_index_arrays_and_sequences_as_written(tmp_path):
    """A raw dataset (documents of different lengths): sizes, pointers, document index and tokens."""
    rng = np.random.default_rng(1)
    seqs = [rng.integers(0, 50000, size=n) for n in (5, 1, 12, 7, 3, 9, 2)]
    idx, bins = write_indexed(tmp_path / "raw", seqs, np.uint16, doc_index=[0, 2, 5, 7])
    ds = IndexedDataset(str(idx), [str(b) for b in bins])
    assert len(ds) == 7 and ds.dtype == np.dtype("<u2")
    assert ds.sizes(0, 7).tolist() == [5, 1, 12, 7, 3, 9, 2]
    assert ds.pointers(0, 7).tolist() == [0, 10, 12, 36, 50, 56, 74]  # cumulative sizes × 2 bytes
    assert ds.document_index().tolist() == [0, 2, 5, 7]
    for i, seq in enumerate(seqs):
        out = ds.sequence(i)
        assert out.dtype == np.int64 and out.tolist() == seq.tolist()
    with pytest.raises(UserError, match="sequence 1 has 1 tokens; rows of this corpus have 5"):
        ds.rows(0, 3, 5)


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int32, np.int64, np.uint16])
def test_every_integer_dtype_code(tmp_path, dtype):
    info = np.iinfo(dtype)
    rows = np.array([[info.min, info.max, 0, 1], [7, info.max - 1, info.min + 1, 2]], dtype=dtype)
    idx, bins = write_indexed(tmp_path / "d", list(rows), dtype)
    ds = IndexedDataset(str(idx), [str(b) for b in bins])
    assert ds.rows(0, 2, 4).tolist() == rows.astype(np.int64).tolist()


def open_batch_source(location, batch_size: int, start_step: int = 0) -> BatchStream:
    return BatchStream(open_corpus(location), 0, start_step * batch_size, batch_size)


def test_pythia_batches_are_consecutive_rows(tmp_path):
    """Rows of 2,049 tokens, 1,024 per step: the batch of step i is rows i·1024 … (i+1)·1024 − 1."""
    rows = make_indexed_corpus(tmp_path, n_rows=3 * 1024 + 5, row_len=2049, seed=3)
    source = open_batch_source(tmp_path, 1024)
    assert isinstance(source.corpus, IndexedCorpus)
    assert (source.batch_size, source.seq_len, source.corpus.epoch_length(0) // 1024) == (1024, 2049, 3)
    for step in (0, 2, 1):
        tokens, ids = source.batch(step)
        assert tokens.dtype == np.int64 and tokens.shape == (1024, 2049) and ids.dtype == np.int64
        assert np.array_equal(tokens, rows[step * 1024 : (step + 1) * 1024])
        assert ids.tolist() == list(range(step * 1024, (step + 1) * 1024))
    assert source.corpus.info.dtype == "uint16" and source.corpus.info.n_instances == 3 * 1024 + 5
    with pytest.raises(UserError, match=r"outside this dataset's 3,077 rows"):
        source.corpus.instances(0, 3 * 1024, 1024)


B, L, N_ROWS = 4, 9, 45  # 11 full steps; one row = 18 bytes


@pytest.fixture(scope="module")
def sharded(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """A token file split in three shards at byte offsets that fall inside rows (and inside a token)."""
    root = tmp_path_factory.mktemp("sharded")
    rows = make_indexed_corpus(root, n_rows=N_ROWS, row_len=L, shard_cuts=[301, 595], seed=4)
    return root, rows


def test_sharded_token_file_local(sharded):
    root, rows = sharded
    assert len(json.loads((root / "corpus.json").read_text())["paths"]) == 3
    source = open_batch_source(root, B)
    assert source.corpus.epoch_length(0) // B == 11
    for step in range(11):
        tokens, ids = source.batch(step)
        assert np.array_equal(tokens, rows[step * B : (step + 1) * B]), step
        assert ids.tolist() == list(range(step * B, (step + 1) * B))


def test_sharded_token_file_over_http_one_range_per_batch(sharded):
    root, rows = sharded
    with serve_directory(root) as (url, ranges):
        source = open_batch_source(url, B)
        for step in range(11):
            assert np.array_equal(source.batch(step)[0], rows[step * B : (step + 1) * B]), step
        # Step 1 (bytes 72…143) lies inside shard 0: sizes, pointers and the tokens are one range request each.
        before = len(ranges)
        source.batch(1)
        assert len(ranges) - before == 3 and all(r.startswith("bytes=") for r in ranges[before:])


def test_rows_follow_the_pointers_not_the_file_order(tmp_path):
    """Rows stored out of order in the token file are read where the pointers say (local and remote)."""
    order = list(np.random.default_rng(5).permutation(12))
    rows = make_indexed_corpus(tmp_path, n_rows=12, row_len=L, physical_order=order, seed=6)
    assert IndexedDataset(str(tmp_path / "document.idx"), [str(tmp_path / "document.bin")]).pointers(0, 3).tolist() == [
        order.index(i) * 2 * L for i in range(3)
    ]
    for where in ("local", "http"):
        if where == "local":
            source = open_batch_source(tmp_path, 3)
            assert np.array_equal(source.batch(2)[0], rows[6:9])
        else:
            with serve_directory(tmp_path) as (url, _):
                assert np.array_equal(open_batch_source(url, 3).batch(3)[0], rows[9:12])


def _corpus_with(tmp_path: Path, **fields) -> Path:
    make_indexed_corpus(tmp_path, n_rows=8, row_len=L, seed=7, corpus_fields=fields)
    return tmp_path


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"magic": b"NOTANIDX\x00"}, "not a Megatron indexed-dataset index"),
        ({"version": 2}, "index version 2"),
        ({"code": 6}, "dtype code 6 is a floating-point type"),
        ({"code": 9}, "dtype code 9 is unknown"),
    ],
)
def test_broken_index_headers(tmp_path, kwargs, message):
    idx, bins = write_indexed(tmp_path / "x", [np.arange(4)] * 2, np.uint16, **kwargs)
    with pytest.raises(UserError, match=message) as err:
        IndexedDataset(str(idx), [str(b) for b in bins])
    assert str(idx) in str(err.value)


def test_truncated_index_and_short_token_file(tmp_path):
    idx, bins = write_indexed(tmp_path / "x", [np.arange(4)] * 5, np.uint16, shard_cuts=[16])
    full = idx.read_bytes()
    idx.write_bytes(full[:-9])
    with pytest.raises(UserError, match=r"truncated: the header announces 5 sequences and 6 document-index entries"):
        IndexedDataset(str(idx), [str(b) for b in bins])
    idx.write_bytes(full)
    with pytest.raises(UserError, match=r"the token file has 16 bytes, but .* up to byte 40 \(a shard missing"):
        IndexedDataset(str(idx), [str(bins[0])])
    with pytest.raises(UserError, match="file not found"):
        IndexedDataset(str(idx), [str(bins[0]), str(tmp_path / "missing.bin")])


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"dtype": "int32"}, "field 'dtype' is 'int32', the index document.idx says 'uint16'"),
        ({"n_instances": 9}, "field 'n_instances' is 9, the index document.idx holds 8"),
        ({"seq_len": 8}, "sequence 0 has 9 tokens; rows of this corpus have 8"),
        ({"global_indices": "x.npy"}, "unknown field"),
        ({"format": "parquet"}, "field 'format' is 'parquet'"),
    ],
)
def test_corpus_json_mistakes_name_the_field(tmp_path, fields, message):
    root = _corpus_with(tmp_path, **fields)
    with pytest.raises(UserError, match=message) as err:
        open_batch_source(root, 4).batch(0)
    if "unknown" in message or "format" in message or "field 'dtype'" in message:
        assert "corpus.json" in str(err.value)


def test_missing_index_field(tmp_path):
    root = _corpus_with(tmp_path)
    data = json.loads((root / "corpus.json").read_text())
    del data["index"]
    (root / "corpus.json").write_text(json.dumps(data))
    with pytest.raises(UserError, match="missing field 'index'"):
        open_batch_source(root, 4)


def test_olmo_format_stays_the_default(tmp_path):
    corpus = make_corpus(tmp_path / "olmo", seed=3)
    plain = open_batch_source(corpus, 4).batch(2)
    data = json.loads((corpus / "corpus.json").read_text())
    (corpus / "corpus.json").write_text(json.dumps({**data, "format": "olmo"}))
    explicit = open_batch_source(corpus, 4).batch(2)
    assert np.array_equal(plain[0], explicit[0]) and np.array_equal(plain[1], explicit[1])


def test_extract_a_window_of_an_indexed_corpus_over_http(tmp_path, sharded):
    root, rows = sharded
    out = tmp_path / "window"
    with serve_directory(root) as (url, _):
        result = runner.invoke(
            app,
            [
                "data",
                "extract",
                "--source",
                url,
                "--batch-size",
                str(B),
                "--start",
                "3",
                "--steps",
                "4",
                "--out",
                str(out),
            ],
        )
    assert result.exit_code == 0, result.output
    window = open_batch_source(out, B, start_step=3)
    info = json.loads((out / "corpus.json").read_text())
    assert info["dtype"] == "uint16" and info["window"] == [{"epoch": 0, "start": 3 * B, "count": 4 * B}]
    assert info["seed"] == 1234
    for step in range(3, 7):
        tokens, ids = window.batch(step - 3)
        assert np.array_equal(tokens, rows[step * B : (step + 1) * B])
        assert ids.tolist() == list(range(step * B, (step + 1) * B))


def test_files_written_by_megatron_core(tmp_path):
    """Megatron's own writer and reader (megatron-core, optional) agree with ours."""
    indexed_dataset = pytest.importorskip("megatron.core.datasets.indexed_dataset")
    import torch

    rng = np.random.default_rng(8)
    rows = rng.integers(0, 50277, size=(10, L)).astype(np.uint16)
    prefix = tmp_path / "mcore"
    builder = indexed_dataset.IndexedDatasetBuilder(f"{prefix}.bin", dtype=np.uint16)
    for row in rows:
        builder.add_item(torch.from_numpy(row.astype(np.int64)))
        builder.end_document()
    builder.finalize(f"{prefix}.idx")

    ours = IndexedDataset(f"{prefix}.idx", [f"{prefix}.bin"])
    theirs = indexed_dataset.IndexedDataset(str(prefix))
    assert len(ours) == len(theirs) == 10
    assert ours.document_index().tolist() == np.asarray(theirs.document_indices).tolist()
    for i in range(10):
        assert ours.sequence(i).tolist() == theirs[i].tolist() == rows[i].tolist()
    (tmp_path / "corpus.json").write_text(
        json.dumps({"format": "megatron-indexed", "index": "mcore.idx", "paths": ["mcore.bin"], "seq_len": L})
    )
    assert np.array_equal(open_batch_source(tmp_path, 5).batch(1)[0], rows[5:10].astype(np.int64))
