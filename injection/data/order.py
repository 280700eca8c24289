"""OLMo's data order: which instances form the global batch of each step.

ai2-olmo builds the order once per epoch in `IterableDataset._build_global_indices`: the instance numbers
0..n-1 as uint32, shuffled in place by `numpy.random.Generator(PCG64(seed + epoch))`, then padded or cut at
the tail to a multiple of the world size. The tail treatment never moves an instance inside the prefix, so
the order of every step that a run actually trained on is the same for any world size; rebuilding it with
world size 1 and no tail cut gives exactly the published `global_indices.npy` prefix.

`global_indices.npy` is, despite its name, a headerless uint32 array (ai2-olmo writes it through
`np.memmap`). Files written with `np.save` are read as well.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from olmo.data.iterable_dataset import IterableDataset

from injection.data.remote import ByteReader, open_reader

_NPY_MAGIC = b"\x93NUMPY"


def build_global_indices(n_instances: int, seed: int, epoch: int = 0) -> np.ndarray:
    """The order of instance numbers for one epoch, built by ai2-olmo's own code.

    Equal to the published `global_indices.npy` of a run with this seed and epoch (up to its tail padding).
    """
    # `range` has the only two things the index builder looks at: a length and no data loading.
    dataset = IterableDataset(
        range(n_instances),  # type: ignore[arg-type]
        global_batch_size=1,
        seed=seed,
        epoch=epoch,
        shuffle=True,
        drop_last=False,
        world_size=1,
        rank=0,
        fs_local_rank=0,
    )
    return np.asarray(dataset.get_global_indices(), dtype=np.uint32)


def write_global_indices(path: Path, indices: np.ndarray) -> None:
    """Write in ai2-olmo's format: a raw uint32 array, no header (so OLMo tools can read it back)."""
    np.asarray(indices, dtype=np.uint32).tofile(path)


def verify_global_indices(location: str | Path, n_instances: int, seed: int, epoch: int = 0) -> int:
    """Compare a published order file with the order rebuilt from the seed; returns the entries compared.

    Raises ValueError at the first difference (wrong seed, epoch or file list).
    """
    published = GlobalIndices(location)
    rebuilt = build_global_indices(n_instances, seed, epoch)
    n = min(len(published), len(rebuilt))
    chunk = 1 << 24
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        diff = np.flatnonzero(published.slice(start, stop) != rebuilt[start:stop])
        if len(diff):
            i = start + int(diff[0])
            raise ValueError(f"{location}: entry {i} is {published.slice(i, i + 1)[0]}, rebuilt order has {rebuilt[i]}")
    return n


class GlobalIndices:
    """Random access to a `global_indices.npy` (local path or URL) without reading all of it.

    A slice is one byte-range read: for real OLMo runs the file holds billions of entries.
    """

    def __init__(self, location: str | Path):
        self.location = str(location)
        self._reader: ByteReader = open_reader(self.location)
        head = self._reader.read(0, min(self._reader.size, 128))
        self._header = 0
        if head.startswith(_NPY_MAGIC):
            # np.save format: magic, version (2 bytes), header length (2 or 4 bytes), header.
            major = head[6]
            if major == 1:
                self._header = 10 + int.from_bytes(head[8:10], "little")
            else:
                self._header = 12 + int.from_bytes(head[8:12], "little")
            header = self._reader.read(0, self._header).decode("latin1")
            if "'<u4'" not in header:
                raise ValueError(f"{self.location}: global indices must be uint32, header says {header.strip()}")
        self._len = (self._reader.size - self._header) // 4

    def __len__(self) -> int:
        return self._len

    def slice(self, start: int, stop: int) -> np.ndarray:
        if not 0 <= start <= stop <= self._len:
            raise IndexError(f"{self.location}: entries [{start}, {stop}) are outside the file's {self._len} entries")
        raw = self._reader.read(self._header + 4 * start, 4 * (stop - start))
        return np.frombuffer(raw, dtype="<u4").astype(np.int64)


class InMemoryIndices:
    """Indices rebuilt from a seed (published file gone) or already in memory; same interface."""

    def __init__(self, indices: np.ndarray):
        self._indices = np.asarray(indices)
        self.location = "<rebuilt>"

    def __len__(self) -> int:
        return len(self._indices)

    def slice(self, start: int, stop: int) -> np.ndarray:
        if not 0 <= start <= stop <= len(self._indices):
            raise IndexError(f"entries [{start}, {stop}) are outside the order's {len(self._indices)} entries")
        return self._indices[start:stop].astype(np.int64)
