"""Megatron indexed datasets (an `.idx` index and a `.bin` token file), read locally or by byte ranges.

This is the format Pythia's pre-tokenized, pre-shuffled Pile is published in. The index is little-endian:

    offset  0   9 bytes   magic b"MMIDIDX\\x00\\x00"
            9   u64       version (1)
           17   u8        dtype code of the tokens: 1 uint8, 2 int8, 3 int16, 4 int32, 5 int64, 8 uint16
           18   u64       N, the number of sequences
           26   u64       D, the number of document-index entries
           34   i32[N]    sizes: tokens in each sequence
                i64[N]    pointers: byte offset of each sequence in the token file
                i64[D]    document index: the sequence where each document starts, then N

Codes 6 and 7 are floating-point types whose meaning differs between Megatron-LM and GPT-NeoX; token data
never uses them, so they are rejected. The token file may be published in shards, consecutive byte ranges of
one logical file; the pointers are offsets into their concatenation.

Rows. A pre-packed dataset (Pythia's) stores one training row per sequence, every row the same length
(2,049 tokens: 2,048 inputs plus the label of the last one). The batch of global step s with B rows per step
is sequences s·B … (s+1)·B − 1, the slice the Pythia repository's batch viewer takes; a row's id is its
sequence number. A raw dataset of documents of varying length (which Megatron's GPT dataset packs and
shuffles at training time) has no rows, and reading it as rows is an error naming the first odd sequence.
"""

from __future__ import annotations

import dataclasses
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from harness.errors import UserError
from injection.data.remote import ByteReader, is_url, join_location, open_reader
from injection.data.source import CORPUS_FILE
from injection.data.source import INDEXED_FORMAT as FORMAT

INDEX_MAGIC = b"MMIDIDX\x00\x00"
INDEX_VERSION = 1
#: magic, version, dtype code, N, D: the fixed part of the index.
_HEADER = struct.Struct("<9sQBQQ")
TOKEN_DTYPES = {1: "uint8", 2: "int8", 3: "int16", 4: "int32", 5: "int64", 8: "uint16"}
DTYPE_CODES = {name: code for code, name in TOKEN_DTYPES.items()}


# --- byte readers ---------------------------------------------------------------------------------------


class ConcatReader:
    """Consecutive shards read as one logical file (a range may span a shard boundary)."""

    def __init__(self, readers: list[ByteReader], names: list[str]):
        if not readers:
            raise UserError("a token file needs at least one path")
        self.readers = readers
        self.names = names
        self.starts = np.concatenate([[0], np.cumsum([r.size for r in readers])]).astype(np.int64)
        self.size = int(self.starts[-1])

    @property
    def name(self) -> str:
        return self.names[0] if len(self.names) == 1 else f"{self.names[0]} (+{len(self.names) - 1} shards)"

    def read(self, offset: int, length: int) -> bytes:
        if offset < 0 or offset + length > self.size:
            raise UserError(
                f"{self.name}: {length} bytes at offset {offset} are beyond the token file's {self.size} bytes"
            )
        parts = []
        shard = int(np.searchsorted(self.starts, offset, side="right") - 1)
        while length > 0:
            local = offset - int(self.starts[shard])
            take = min(length, self.readers[shard].size - local)
            if take > 0:
                parts.append(self.readers[shard].read(local, take))
                offset += take
                length -= take
            shard += 1
        return b"".join(parts)


# --- the index and its token file -------------------------------------------------------------------------


@dataclass(frozen=True)
class IndexHeader:
    version: int
    dtype_code: int
    n_sequences: int
    n_doc_index: int

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(TOKEN_DTYPES[self.dtype_code]).newbyteorder("<")

    @property
    def sizes_offset(self) -> int:
        return _HEADER.size

    @property
    def pointers_offset(self) -> int:
        return _HEADER.size + 4 * self.n_sequences

    @property
    def doc_index_offset(self) -> int:
        return _HEADER.size + 12 * self.n_sequences

    @property
    def index_bytes(self) -> int:
        return self.doc_index_offset + 8 * self.n_doc_index


def read_index_header(reader: ByteReader, where: str) -> IndexHeader:
    """The fixed part of an index, validated (magic, version, dtype code, length of the arrays)."""
    if reader.size < _HEADER.size:
        raise UserError(f"{where}: {reader.size} bytes is too short for a Megatron index ({_HEADER.size}-byte header)")
    magic, version, code, n, d = _HEADER.unpack(reader.read(0, _HEADER.size))
    if magic != INDEX_MAGIC:
        raise UserError(
            f"{where}: not a Megatron indexed-dataset index (magic bytes {magic!r}, expected {INDEX_MAGIC!r})"
        )
    if version != INDEX_VERSION:
        raise UserError(f"{where}: index version {version}; only version {INDEX_VERSION} is known")
    if code not in TOKEN_DTYPES:
        kind = "a floating-point type, not token ids" if code in (6, 7) else "unknown"
        raise UserError(f"{where}: dtype code {code} is {kind} (known: {TOKEN_DTYPES})")
    header = IndexHeader(version, code, n, d)
    if reader.size < header.index_bytes:
        raise UserError(
            f"{where}: truncated: the header announces {n} sequences and {d} document-index entries "
            f"({header.index_bytes} bytes), the file has {reader.size}"
        )
    return header


class IndexedDataset:
    """Sequences of a Megatron indexed dataset: the index (`.idx`) and the token file (`.bin` or its shards)."""

    def __init__(self, index: str, data: list[str]):
        self.index_location = str(index)
        self._index = open_reader(self.index_location)
        self.header = read_index_header(self._index, self.index_location)
        self.dtype = self.header.dtype
        self._data = ConcatReader([open_reader(str(p)) for p in data], [str(p) for p in data])
        self.remote = is_url(self.index_location) or any(is_url(str(p)) for p in data)
        self._pool = ThreadPoolExecutor(max_workers=32) if self.remote else None
        n = len(self)
        if n:
            # The last sequence must lie inside the token file: a missing or short shard shows up here.
            end = int(self.pointers(n - 1, n)[0]) + int(self.sizes(n - 1, n)[0]) * self.dtype.itemsize
            if end > self._data.size:
                raise UserError(
                    f"{self._data.name}: the token file has {self._data.size} bytes, but {self.index_location} "
                    f"places its last sequence up to byte {end} (a shard missing or cut short?)"
                )

    def __len__(self) -> int:
        return self.header.n_sequences

    def _array(self, offset: int, itemsize: int, kind: str, start: int, stop: int, count: int) -> np.ndarray:
        if not 0 <= start <= stop <= count:
            raise IndexError(f"{self.index_location}: entries [{start}, {stop}) are outside its {count} entries")
        raw = self._index.read(offset + itemsize * start, itemsize * (stop - start))
        return np.frombuffer(raw, dtype=kind).astype(np.int64)

    def sizes(self, start: int, stop: int) -> np.ndarray:
        """Tokens in sequences start … stop − 1."""
        return self._array(self.header.sizes_offset, 4, "<i4", start, stop, len(self))

    def pointers(self, start: int, stop: int) -> np.ndarray:
        """Byte offsets of sequences start … stop − 1 in the token file."""
        return self._array(self.header.pointers_offset, 8, "<i8", start, stop, len(self))

    def document_index(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Entries of the document index (sequence numbers where documents start)."""
        count = self.header.n_doc_index
        return self._array(self.header.doc_index_offset, 8, "<i8", start, count if stop is None else stop, count)

    def _tokens(self, pointer: int, size: int) -> np.ndarray:
        raw = self._data.read(pointer, size * self.dtype.itemsize)
        return np.frombuffer(raw, dtype=self.dtype).astype(np.int64)

    def sequence(self, i: int) -> np.ndarray:
        """The tokens of sequence i (int64)."""
        return self._tokens(int(self.pointers(i, i + 1)[0]), int(self.sizes(i, i + 1)[0]))

    def rows(self, start: int, stop: int, row_len: int) -> np.ndarray:
        """Sequences start … stop − 1 as an int64 array [stop − start, row_len]; each must have row_len tokens."""
        sizes = self.sizes(start, stop)
        odd = np.flatnonzero(sizes != row_len)
        if len(odd):
            i = int(odd[0])
            raise UserError(
                f"{self.index_location}: sequence {start + i} has {sizes[i]} tokens; rows of this corpus have "
                f"{row_len} (field 'seq_len'). Only pre-packed datasets, one row per sequence, are read as batches"
            )
        pointers = self.pointers(start, stop)
        n, row_bytes = stop - start, row_len * self.dtype.itemsize
        if n and np.all(np.diff(pointers) == row_bytes):
            # Rows stored back to back (Pythia's files): the whole batch is one read, one range request.
            raw = self._data.read(int(pointers[0]), n * row_bytes)
            return np.frombuffer(raw, dtype=self.dtype).reshape(n, row_len).astype(np.int64)
        out = np.empty((n, row_len), dtype=np.int64)

        def read(pointer: int) -> np.ndarray:
            return self._tokens(int(pointer), row_len)

        rows = self._pool.map(read, pointers) if self._pool is not None else map(read, pointers)
        for r, tokens in enumerate(rows):
            out[r] = tokens
        return out


# --- corpus.json and the batch source ---------------------------------------------------------------------


@dataclass(frozen=True)
class IndexedCorpusInfo:
    """`corpus.json` of a corpus stored as a Megatron indexed dataset (`"format": "megatron-indexed"`).

    Paths are relative to the corpus directory, absolute, or URLs.
    """

    index: str
    """The `.idx` file."""
    paths: list[str]
    """The `.bin` token file, or its shards in order (consecutive byte ranges of one file)."""
    seq_len: int
    """Tokens per row, every sequence of the index (Pythia: 2,049, the 2,048 inputs and the last label)."""
    format: str = FORMAT
    dtype: str | None = None
    """Token type; checked against the index's dtype code when given (Pythia: uint16)."""
    n_instances: int | None = None
    """Rows in the index; checked against the index when given."""
    seed: int | None = None
    """Seed the order was made with (provenance only: the order is the file's own)."""
    eos_token_id: int | None = None
    tokenizer: str | None = None
    epoch: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> IndexedCorpusInfo:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise UserError(f"{where}: unknown field(s) {', '.join(unknown)} for format {FORMAT!r}")
        for required in ("index", "paths", "seq_len"):
            if required not in data:
                raise UserError(f"{where}: missing field {required!r} (format {FORMAT!r})")
        info = cls(**data)
        if info.format != FORMAT:
            raise UserError(f"{where}: field 'format' is {info.format!r}, expected {FORMAT!r}")
        if not isinstance(info.index, str) or not info.index:
            raise UserError(f"{where}: field 'index' must name the .idx file")
        if not isinstance(info.paths, list) or not info.paths or not all(isinstance(p, str) for p in info.paths):
            raise UserError(f"{where}: field 'paths' must list the .bin file or its shards")
        if not isinstance(info.seq_len, int) or isinstance(info.seq_len, bool) or info.seq_len < 1:
            raise UserError(f"{where}: field 'seq_len' must be a positive integer, got {info.seq_len!r}")
        if info.dtype is not None and info.dtype not in DTYPE_CODES:
            raise UserError(f"{where}: field 'dtype' is {info.dtype!r}; expected one of {', '.join(DTYPE_CODES)}")
        return info

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class IndexedCorpus:
    """An `OrderedCorpus` over a pre-packed indexed dataset whose rows are already in training order: position p
    of the (single) epoch is row p, so the batch of global step s at B rows per step is rows s·B … (s+1)·B − 1."""

    def __init__(self, info: IndexedCorpusInfo, base: str | Path):
        where = join_location(base, CORPUS_FILE)
        self.base = str(base)
        self.seq_len = info.seq_len
        self.dataset = IndexedDataset(join_location(base, info.index), [join_location(base, p) for p in info.paths])
        index_dtype = TOKEN_DTYPES[self.dataset.header.dtype_code]
        if info.dtype is not None and info.dtype != index_dtype:
            raise UserError(f"{where}: field 'dtype' is {info.dtype!r}, the index {info.index} says {index_dtype!r}")
        if info.n_instances is not None and info.n_instances != len(self.dataset):
            raise UserError(
                f"{where}: field 'n_instances' is {info.n_instances}, the index {info.index} holds {len(self.dataset)}"
            )
        # Resolved from the index, so readers of `info` (extract's window) see the facts, not the omissions.
        self.info = dataclasses.replace(info, dtype=index_dtype, n_instances=len(self.dataset))

    def epoch_length(self, epoch: int) -> int:
        return len(self.dataset) if epoch == 0 else 0

    def instances(self, epoch: int, start: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        if epoch != 0 or start < 0 or start + count > len(self.dataset):
            raise UserError(
                f"{self.base}: rows {start}…{start + count - 1} (epoch {epoch}) are outside this dataset's "
                f"{len(self.dataset):,} rows (its order is the file's own, one pass)"
            )
        return self.dataset.rows(start, start + count, self.seq_len), np.arange(start, start + count, dtype=np.int64)
