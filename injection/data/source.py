"""Batch sources: global step -> the original run's global batch (SPEC §6).

A corpus directory (local path or URL) holds `corpus.json` and the data it names. Its `format` says which:
- `olmo` (the default): OLMo-format token files and `global_indices.npy`. The same reader serves corpora built
  by `injection data build-corpus`, windows written by `injection data extract`, and the real OLMo runs (whose
  facts come from the catalog as a `CorpusInfo`);
- `megatron-indexed`: a pre-packed, pre-ordered Megatron indexed dataset (Pythia's published Pile), read by
  `injection.data.indexed`.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from injection.data.order import GlobalIndices, InMemoryIndices, build_global_indices
from injection.data.remote import ByteReader, is_url, join_location, open_reader, read_text
from harness.errors import UserError

CORPUS_FILE = "corpus.json"
OLMO_FORMAT = "olmo"
INDEXED_FORMAT = "megatron-indexed"
DTYPES = {"uint16": np.uint16, "uint32": np.uint32, "uint64": np.uint64}


@runtime_checkable
class BatchSource(Protocol):
    global_batch_size: int
    seq_len: int

    def get_batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """(tokens int64 [B, L], instance_ids int64 [B]) of global step `step`."""
        ...


@dataclass(frozen=True)
class CorpusInfo:
    """`corpus.json`: everything needed to rebuild a run's batches. Paths are relative to the corpus
    directory or absolute (local or URL)."""

    paths: list[str]
    """Token files in order: flat arrays of `dtype`, instance i = the i-th chunk of `seq_len` tokens."""
    dtype: str
    """`uint16` (vocabularies under 65,536) or `uint32`."""
    seq_len: int
    """Tokens per instance (the model's context length)."""
    seed: int
    """Data-order seed: the order is ai2-olmo's permutation for `seed + epoch`."""
    n_instances: int
    """Instances over all files (each file's remainder dropped)."""
    eos_token_id: int | None = None
    tokenizer: str | None = None
    epoch: int = 0
    global_indices: str | None = "global_indices.npy"
    """The order file; `null` means rebuild it from `seed` and `epoch` (published file gone)."""
    instances_per_file: list[int] | None = None
    """Saves one size request per file for remote corpora."""
    first_step: int = 0
    """Global step of the first batch in `global_indices` (a window written by `injection data extract`)."""
    global_batch_size: int | None = None
    """Fixed batch size of a window; `null` for a full corpus (any batch size)."""
    instance_ids: str | None = None
    """A window's file of original instance ids, aligned with its own instances."""
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> "CorpusInfo":
        data = dict(data)
        fmt = data.pop("format", OLMO_FORMAT)
        if fmt != OLMO_FORMAT:
            raise UserError(f"{where}: field 'format' is {fmt!r}; this reader takes {OLMO_FORMAT!r}")
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise UserError(f"{where}: unknown field(s) {', '.join(unknown)}")
        for required in ("paths", "dtype", "seq_len", "seed", "n_instances"):
            if required not in data:
                raise UserError(f"{where}: missing field {required!r}")
        info = cls(**data)
        if info.dtype not in DTYPES:
            raise UserError(f"{where}: field 'dtype' is {info.dtype!r}; expected one of {', '.join(DTYPES)}")
        if not info.paths:
            raise UserError(f"{where}: field 'paths' is empty")
        if info.seq_len < 1:
            raise UserError(f"{where}: field 'seq_len' must be positive")
        return info

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _read_corpus_json(location: str | Path) -> tuple[dict[str, Any], str]:
    where = join_location(location, CORPUS_FILE)
    try:
        data = json.loads(read_text(where))
    except json.JSONDecodeError as err:
        raise UserError(f"{where}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected a JSON object")
    fmt = data.get("format", OLMO_FORMAT)
    if fmt not in (OLMO_FORMAT, INDEXED_FORMAT):
        raise UserError(f"{where}: field 'format' is {fmt!r}; expected {OLMO_FORMAT!r} or {INDEXED_FORMAT!r}")
    return data, where


def read_corpus_info(location: str | Path) -> CorpusInfo:
    """The `corpus.json` of an OLMo-format corpus directory."""
    data, where = _read_corpus_json(location)
    return CorpusInfo.from_dict(data, where)


class TokenFiles:
    """Instance number -> tokens over a list of OLMo token files, exactly as ai2-olmo's MemMapDataset."""

    def __init__(self, locations: list[str], dtype: str, seq_len: int, instances_per_file: list[int] | None = None):
        self.dtype = np.dtype(DTYPES[dtype])
        self.seq_len = seq_len
        self.locations = locations
        instance_bytes = self.dtype.itemsize * seq_len
        if instances_per_file is not None and len(instances_per_file) != len(locations):
            raise UserError(f"instances_per_file has {len(instances_per_file)} entries for {len(locations)} files")
        self._readers: list[ByteReader] = []
        counts = []
        for i, loc in enumerate(locations):
            size = None if instances_per_file is None or not is_url(loc) else instances_per_file[i] * instance_bytes
            reader = open_reader(loc, size)
            self._readers.append(reader)
            counts.append(reader.size // instance_bytes)
        self.counts = np.asarray(counts, dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)])
        self.remote = any(is_url(loc) for loc in locations)
        self._pool = ThreadPoolExecutor(max_workers=32) if self.remote else None
        self._memmaps: dict[int, np.memmap] = {}

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def _locate(self, index: int) -> tuple[int, int]:
        if not 0 <= index < len(self):
            raise IndexError(f"instance {index} is out of range: the files hold {len(self)} instances")
        file = int(np.searchsorted(self.offsets, index, side="right") - 1)
        return file, index - int(self.offsets[file])

    def read_instance(self, index: int) -> np.ndarray:
        file, local = self._locate(int(index))
        nbytes = self.dtype.itemsize * self.seq_len
        raw = self._readers[file].read(local * nbytes, nbytes)
        return np.frombuffer(raw, dtype=self.dtype.newbyteorder("<")).astype(np.int64)

    def _memmap(self, file: int) -> np.memmap:
        if file not in self._memmaps:
            self._memmaps[file] = np.memmap(
                self.locations[file], dtype=self.dtype, mode="r", shape=(int(self.counts[file]) * self.seq_len,)
            )
        return self._memmaps[file]

    def read_instances(self, indices: np.ndarray) -> np.ndarray:
        out = np.empty((len(indices), self.seq_len), dtype=np.int64)
        if self._pool is not None:
            for row, tokens in enumerate(self._pool.map(self.read_instance, indices)):
                out[row] = tokens
            return out
        for row, index in enumerate(indices):
            file, local = self._locate(int(index))
            out[row] = self._memmap(file)[local * self.seq_len : (local + 1) * self.seq_len]
        return out


class CorpusBatchSource:
    """A `BatchSource` over a corpus: batch at global step s = instances order[(s - first_step)·B : …+B]."""

    def __init__(self, info: CorpusInfo, base: str | Path, global_batch_size: int, indices=None):
        if info.global_batch_size is not None and info.global_batch_size != global_batch_size:
            raise UserError(
                f"{join_location(base, CORPUS_FILE)}: this corpus is a window extracted with global batch size "
                f"{info.global_batch_size}; asked for {global_batch_size}"
            )
        if global_batch_size < 1:
            raise UserError(f"global batch size must be positive, got {global_batch_size}")
        self.info = info
        self.global_batch_size = global_batch_size
        self.seq_len = info.seq_len
        self.files = TokenFiles(
            [join_location(base, p) for p in info.paths], info.dtype, info.seq_len, info.instances_per_file
        )
        if indices is not None:
            self.indices = indices
        elif info.global_indices is not None:
            self.indices = GlobalIndices(join_location(base, info.global_indices))
        else:
            self.indices = InMemoryIndices(build_global_indices(len(self.files), info.seed, info.epoch))
        self.original_ids = (
            GlobalIndices(join_location(base, info.instance_ids)) if info.instance_ids is not None else None
        )

    @property
    def first_step(self) -> int:
        return self.info.first_step

    @property
    def n_steps(self) -> int:
        """Complete batches available from `first_step` on."""
        return len(self.indices) // self.global_batch_size

    def get_batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        local = step - self.info.first_step
        if not 0 <= local < self.n_steps:
            raise UserError(
                f"global step {step} is outside this corpus: it holds steps {self.info.first_step}.."
                f"{self.info.first_step + self.n_steps - 1} at global batch size {self.global_batch_size}"
            )
        start = local * self.global_batch_size
        order = self.indices.slice(start, start + self.global_batch_size)
        tokens = self.files.read_instances(order)
        ids = order if self.original_ids is None else self.original_ids.slice(start, start + self.global_batch_size)
        return tokens, ids


def open_batch_source(path: str | Path, global_batch_size: int) -> BatchSource:
    """The batch source of a corpus directory (local path or http(s) URL) holding `corpus.json`."""
    data, where = _read_corpus_json(path)
    if data.get("format") == INDEXED_FORMAT:
        from injection.data.indexed import IndexedBatchSource, IndexedCorpusInfo  # it imports this module

        return IndexedBatchSource(IndexedCorpusInfo.from_dict(data, where), path, global_batch_size)
    return CorpusBatchSource(CorpusInfo.from_dict(data, where), path, global_batch_size)


def open_data_order(info: CorpusInfo, global_batch_size: int, base: str | Path = ".") -> CorpusBatchSource:
    """The batch source of a run described by facts (e.g. the catalog's entry for an OLMo family)."""
    return CorpusBatchSource(info, base, global_batch_size)
