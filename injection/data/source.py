"""The original data order: which instances each batch of a continued run holds.

A *corpus* is a list of token files cut into instances of `seq_len` tokens plus, per epoch, an order of those
instances (ai2-olmo's permutation for seed + epoch, or a published `global_indices.npy`). Anything with that
shape is an `OrderedCorpus`: a corpus directory (`corpus.json` + token files + order file, local or over HTTP),
a window extracted from one by `injection data extract`, a pre-packed Megatron indexed dataset (Pythia's published
Pile, injection.data.indexed), or a stand-in in tests. `corpus.json`'s `format` says which: `olmo` (the
default) or `megatron-indexed`.

Where a continued run reads is a *stream position* (epoch, index): the checkpoint's own counter of instances
seen in its epoch (injection.checkpoints.layout.DataPosition). `BatchStream` maps run step k to its batch the way
OLMo's trainer consumes the order: batch k of a run with B rows per step holds positions index + k·B … + B − 1
of the epoch's order; when fewer than B instances are left in an epoch they are dropped and the stream goes on
at position 0 of the next epoch's order. A run with another batch size B' reads the same stream B' at a time.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from harness.errors import UserError
from injection.data.order import GlobalIndices, InMemoryIndices, build_global_indices
from injection.data.remote import ByteReader, is_url, join_location, open_reader, read_text
from injection.instance_filter import InstanceFilter

CORPUS_FILE = "corpus.json"
OLMO_FORMAT = "olmo"
INDEXED_FORMAT = "megatron-indexed"
DTYPES = {"uint16": np.uint16, "uint32": np.uint32, "uint64": np.uint64}


@runtime_checkable
class OrderedCorpus(Protocol):
    """Instances in the original run's order, epoch by epoch."""

    seq_len: int

    def epoch_length(self, epoch: int) -> int:
        """Instances in `epoch`'s order."""
        ...

    def instances(self, epoch: int, start: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """(tokens int64 [count, seq_len], original instance ids int64 [count]) at positions start … start+count−1
        of `epoch`'s order."""
        ...


@dataclass(frozen=True)
class Segment:
    """A run of consecutive positions of one epoch's order."""

    epoch: int
    start: int
    count: int


@dataclass(frozen=True)
class CorpusInfo:
    """`corpus.json`: everything needed to read a run's instances in order. Paths are relative to the corpus
    directory or absolute (local paths or URLs)."""

    paths: list[str]
    """Token files in order: flat arrays of `dtype`, instance i = the i-th chunk of `seq_len` tokens."""
    dtype: str
    """`uint16` (vocabularies under 65,536) or `uint32`."""
    seq_len: int
    """Tokens per instance (the model's context length)."""
    seed: int
    """Data-order seed: epoch e's order is ai2-olmo's permutation for `seed + e`."""
    n_instances: int
    """Instances over all files of the original corpus (each file's remainder dropped): every epoch's length."""
    eos_token_id: int | None = None
    tokenizer: str | None = None
    epoch: int = 0
    """The epoch whose order `global_indices` holds (other epochs are rebuilt from the seed)."""
    global_indices: str | None = "global_indices.npy"
    """The order file; `null` means rebuild it from `seed` and `epoch` (published file gone)."""
    instances_per_file: list[int] | None = None
    """Saves one size request per file for remote corpora."""
    window: list[dict[str, int]] | None = None
    """A window written by `injection data extract`: its segments ({epoch, start, count}, in stream order). Its
    token files hold exactly those instances, in that order; `instance_ids` their original numbers."""
    instance_ids: str | None = None
    """A window's file of original instance ids (uint32), aligned with its instances."""
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Any, where: str) -> CorpusInfo:
        if not isinstance(data, dict):
            raise UserError(f"{where}: expected a JSON object")
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
        if not isinstance(info.paths, list) or not info.paths or not all(isinstance(p, str) for p in info.paths):
            raise UserError(f"{where}: field 'paths' must be a non-empty list of file names")
        for name in ("seq_len", "n_instances"):
            value = getattr(info, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"{where}: field {name!r} must be a positive integer, got {value!r}")
        if info.window is not None:
            try:
                segments = [Segment(int(s["epoch"]), int(s["start"]), int(s["count"])) for s in info.window]
            except (TypeError, KeyError, ValueError):
                raise UserError(f"{where}: field 'window' must be a list of {{epoch, start, count}}") from None
            if not segments or info.instance_ids is None:
                raise UserError(f"{where}: a window needs segments and an 'instance_ids' file")
        return info

    @property
    def segments(self) -> list[Segment]:
        return [Segment(int(s["epoch"]), int(s["start"]), int(s["count"])) for s in (self.window or [])]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_corpus_json(location: str | Path) -> tuple[dict[str, Any], str]:
    """The raw `corpus.json` of a directory or URL, and its location for messages."""
    where = join_location(location, CORPUS_FILE)
    try:
        data = json.loads(read_text(where))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise UserError(f"{where}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected a JSON object")
    fmt = data.get("format", OLMO_FORMAT)
    if fmt not in (OLMO_FORMAT, INDEXED_FORMAT):
        raise UserError(f"{where}: field 'format' is {fmt!r}; expected {OLMO_FORMAT!r} or {INDEXED_FORMAT!r}")
    return data, where


def read_corpus_info(location: str | Path) -> CorpusInfo:
    """The `corpus.json` of an OLMo-format corpus directory."""
    data, where = read_corpus_json(location)
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


class Corpus:
    """An `OrderedCorpus` over a corpus directory (local path or http(s) URL) or an extracted window."""

    def __init__(self, info: CorpusInfo, base: str | Path):
        self.info = info
        self.base = str(base)
        self.seq_len = info.seq_len
        self.files = TokenFiles(
            [join_location(base, p) for p in info.paths], info.dtype, info.seq_len, info.instances_per_file
        )
        self._orders: dict[int, Any] = {}
        self._segments = info.segments
        self._segment_rows = np.cumsum([0] + [s.count for s in self._segments])
        self._window_ids = GlobalIndices(join_location(base, info.instance_ids)) if info.window else None
        if not info.window and len(self.files) != info.n_instances:
            raise UserError(
                f"{join_location(base, CORPUS_FILE)}: n_instances is {info.n_instances:,}, but the token "
                f"files hold {len(self.files):,} instances of {info.seq_len} tokens"
            )

    @property
    def is_window(self) -> bool:
        return bool(self._segments)

    def epoch_length(self, epoch: int) -> int:
        """The order file's length for the epoch it holds (ai2-olmo trims an epoch to a multiple of the number of
        ranks), the number of instances for epochs rebuilt from the seed."""
        if self.is_window or not (epoch == self.info.epoch and self.info.global_indices is not None):
            return self.info.n_instances
        return len(self.order(epoch))

    def order(self, epoch: int):
        """The order of `epoch`: the order file where it holds that epoch, else rebuilt from the seed."""
        if epoch not in self._orders:
            if epoch == self.info.epoch and self.info.global_indices is not None:
                order = GlobalIndices(join_location(self.base, self.info.global_indices))
            else:
                order = InMemoryIndices(build_global_indices(self.info.n_instances, self.info.seed, epoch))
            self._orders[epoch] = order
        return self._orders[epoch]

    def instances(self, epoch: int, start: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        if start < 0 or start + count > self.epoch_length(epoch):
            raise UserError(
                f"{self.base}: positions {start}…{start + count - 1} are outside epoch {epoch}'s order "
                f"of {self.epoch_length(epoch):,} instances"
            )
        if self.is_window:
            rows = self._window_rows(epoch, start, count)
            return self.files.read_instances(rows), self._window_ids.slice(int(rows[0]), int(rows[-1]) + 1)
        order = self.order(epoch)
        ids = order.slice(start, start + count)
        if len(ids) and int(ids.max()) >= len(self.files):
            bad = int(np.argmax(ids >= len(self.files)))
            raise UserError(
                f"{order.location}: entry {start + bad} is instance {int(ids[bad]):,}, but the token files "
                f"hold {len(self.files):,} instances: the order does not belong to these files (a prepared "
                "corpus can use the order rebuilt from the seed: `injection data prepare FAMILY "
                "--rebuild-order`, which cannot be verified)"
            )
        return self.files.read_instances(ids), ids

    def covers(self, epoch: int, start: int, count: int) -> bool:
        """Whether positions start … start+count−1 of `epoch` can be read (always, for a full corpus)."""
        if not self.is_window:
            return 0 <= start and start + count <= self.epoch_length(epoch)
        return any(s.epoch == epoch and s.start <= start and start + count <= s.start + s.count for s in self._segments)

    def _window_rows(self, epoch: int, start: int, count: int) -> np.ndarray:
        for i, seg in enumerate(self._segments):
            if seg.epoch == epoch and seg.start <= start and start + count <= seg.start + seg.count:
                first = int(self._segment_rows[i]) + start - seg.start
                return np.arange(first, first + count)
        held = ", ".join(f"epoch {s.epoch} positions {s.start}…{s.start + s.count - 1}" for s in self._segments)
        raise UserError(
            f"{self.base}: this window holds {held}; positions {start}…{start + count - 1} of epoch "
            f"{epoch} are outside it (extract a window that covers the run)"
        )


#: A run may read its corpus at most this many times over: beyond it the data surely does not match the run (and
#: resolving its batches would be work without bound).
MAX_EPOCHS = 1000


@dataclass(frozen=True)
class BatchStream:
    """Run step k -> the original instances of its batch: `batch_size` at a time from a stream position.

    k may be negative (the batches just before the checkpoint, within the same epoch)."""

    corpus: OrderedCorpus
    epoch: int
    """Epoch of the first batch (the checkpoint's data position)."""
    start: int
    """Position of the first batch's first instance in that epoch's order."""
    batch_size: int
    row_filter: InstanceFilter | None = None
    """The original run's instance filter: which rows of a batch carry loss (None: all of them)."""

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise UserError(f"the data stream needs a batch size >= 1, got {self.batch_size}")
        if self.epoch < 0 or self.start < 0:
            raise UserError(f"stream position epoch {self.epoch}, position {self.start}: both must be >= 0")
        length = self.corpus.epoch_length(self.epoch)
        if self.start > length:
            raise UserError(
                f"stream position {self.start:,} is beyond the end of epoch {self.epoch}'s order of {length:,} "
                "instances (a position counts instances from the start of its epoch)"
            )

    @property
    def seq_len(self) -> int:
        return self.corpus.seq_len

    def _epochs(self):
        """(epoch, first position, full batches from there) of the epochs the stream reads, in order; the data
        ends (UserError, the corpus's own) at an epoch after the first that holds no full batch."""
        epoch, index = self.epoch, self.start
        for _ in range(MAX_EPOCHS):
            length = self.corpus.epoch_length(epoch)
            full = max((length - index) // self.batch_size, 0)
            if full == 0 and epoch != self.epoch:
                self.corpus.instances(epoch, 0, self.batch_size)  # raises the format's own "outside the data" error
                raise UserError(
                    f"the data ends in epoch {epoch}: it holds {length:,} instances, fewer than a batch of "
                    f"{self.batch_size:,}"
                )
            yield epoch, index, length, full
            epoch, index = epoch + 1, 0
        raise UserError(
            f"the run would read its corpus more than {MAX_EPOCHS:,} times over ({self.batch_size:,} rows per step "
            f"from epoch {self.epoch} position {self.start:,}): that many steps cannot be served by this data"
        )

    def position(self, k: int) -> tuple[int, int]:
        """(epoch, first position) of batch k: an epoch's last incomplete batch is dropped, as OLMo's loader does."""
        B = self.batch_size
        if k < 0:
            index = self.start + k * B
            if index < 0:
                raise UserError(
                    f"the batch {-k} step(s) before the checkpoint would start before epoch {self.epoch}'s "
                    f"order (the checkpoint is {self.start:,} instances into it)"
                )
            return self.epoch, index
        epochs, end = self._epochs(), None
        while True:
            try:
                epoch, index, _, full = next(epochs)
            except UserError:
                if k == 0 and end is not None:
                    return end  # where a stream that has ended stands after its last batch (it has no batch k)
                raise
            if k < full:
                return epoch, index + k * B
            k -= full
            end = (epoch, index + full * B)

    def batch(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(tokens int64 [B, L], original instance ids int64 [B]) of run step k."""
        epoch, index = self.position(k)
        return self.corpus.instances(epoch, index, self.batch_size)

    def segments(self, n_steps: int) -> list[Segment]:
        """The stream positions that steps 0 … n_steps − 1 read, as segments per epoch. Where the run crosses into
        the next epoch, the whole tail of the earlier one is included (a smaller batch size would read more of it).
        UserError when the data ends before the last of them."""
        out: list[Segment] = []
        left = n_steps
        for epoch, index, length, full in self._epochs():
            if left <= 0:
                break
            if left <= full:
                out.append(Segment(epoch, index, left * self.batch_size))
                break
            if length > index:
                out.append(Segment(epoch, index, length - index))
            left -= full
        return out
