"""Megatron indexed datasets written from the published layout with `struct` and numpy.

Independent of the reader under test (nothing is imported from `injection.data.indexed`): the layout is
written out here from its description, so a shared misreading of it cannot pass unnoticed.

    b"MMIDIDX\\x00\\x00", u64 version 1, u8 dtype code, u64 N sequences, u64 D doc-index entries,
    i32 sizes[N], i64 pointers[N] (byte offsets into the token file), i64 doc_index[D]
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

# Megatron's dtype codes of integer token types.
CODES = {np.uint8: 1, np.int8: 2, np.int16: 3, np.int32: 4, np.int64: 5, np.uint16: 8}


def write_indexed(
    prefix: Path,
    sequences: list[np.ndarray],
    dtype=np.uint16,
    *,
    doc_index: list[int] | None = None,
    physical_order: list[int] | None = None,
    shard_cuts: list[int] | None = None,
    version: int = 1,
    magic: bytes = b"MMIDIDX\x00\x00",
    code: int | None = None,
) -> tuple[Path, list[Path]]:
    """Write `prefix.idx` and the token file; returns (index path, token file paths).

    `physical_order` stores the sequences in the token file in that order (pointers still list them in their
    own order); `shard_cuts` splits the token file at those byte offsets into Pythia-style shard files
    `prefix-0000i-of-0000n.bin`. `version`, `magic` and `code` write broken indexes on purpose.
    """
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    itemsize = np.dtype(dtype).itemsize
    order = list(range(len(sequences))) if physical_order is None else list(physical_order)
    blob = bytearray()
    pointers = [0] * len(sequences)
    for i in order:
        pointers[i] = len(blob)
        blob += np.asarray(sequences[i], dtype=np.dtype(dtype).newbyteorder("<")).tobytes()
    sizes = [len(s) for s in sequences]
    docs = list(range(len(sequences) + 1)) if doc_index is None else list(doc_index)

    idx = prefix.with_name(prefix.name + ".idx")
    with open(idx, "wb") as f:
        f.write(magic)
        f.write(struct.pack("<Q", version))
        f.write(struct.pack("<B", CODES[dtype] if code is None else code))
        f.write(struct.pack("<Q", len(sizes)))
        f.write(struct.pack("<Q", len(docs)))
        f.write(struct.pack(f"<{len(sizes)}i", *sizes))
        f.write(struct.pack(f"<{len(pointers)}q", *pointers))
        f.write(struct.pack(f"<{len(docs)}q", *docs))
    assert all(p % itemsize == 0 for p in pointers)

    if not shard_cuts:
        bins = [prefix.with_name(prefix.name + ".bin")]
        bins[0].write_bytes(bytes(blob))
        return idx, bins
    edges = [0, *shard_cuts, len(blob)]
    last = len(edges) - 2
    bins = []
    for i in range(len(edges) - 1):
        path = prefix.with_name(f"{prefix.name}-{i:05d}-of-{last:05d}.bin")
        path.write_bytes(bytes(blob[edges[i] : edges[i + 1]]))
        bins.append(path)
    return idx, bins


def make_indexed_corpus(
    root: Path,
    *,
    n_rows: int,
    row_len: int,
    dtype=np.uint16,
    vocab: int = 50277,
    seed: int = 0,
    shard_cuts: list[int] | None = None,
    physical_order: list[int] | None = None,
    corpus_fields: dict | None = None,
) -> np.ndarray:
    """A pre-packed indexed corpus (every sequence one row of `row_len` tokens) with its corpus.json.

    Returns the rows [n_rows, row_len] in their logical order: the batch of step s with B rows is rows[s·B:(s+1)·B].
    """
    rows = np.random.default_rng(seed).integers(0, vocab, size=(n_rows, row_len)).astype(dtype)
    idx, bins = write_indexed(
        root / "document", list(rows), dtype, physical_order=physical_order, shard_cuts=shard_cuts
    )
    info = {
        "format": "megatron-indexed",
        "index": idx.name,
        "paths": [b.name for b in bins],
        "seq_len": row_len,
        "seed": 1234,
        "eos_token_id": 0,
        **(corpus_fields or {}),
    }
    (root / "corpus.json").write_text(json.dumps(info))
    return rows.astype(np.int64)
