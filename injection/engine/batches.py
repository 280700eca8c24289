"""The one path from plan to batch: run step k -> the original batch with its paragraphs spliced in.

Used alike by the training loop, the data benchmark and the tests. Each batch is read once and spliced once; a
background thread prepares steps k+1, k+2, … while step k trains, so reading (local or over HTTP) and splicing
overlap the update. A request out of sequence (a resumed run) restarts the thread from there.

Where the original run filtered instances (the stream's `row_filter`: OLMo 2's repetition filter), the filter
reads each original instance before splicing and the batch comes back as a masked array whose masked positions
carry no loss (injection.engine.objective.mask_batch: injected paragraphs always keep theirs).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Mapping, Sequence

import numpy as np

from injection.data.source import BatchStream
from injection.engine.objective import mask_batch
from injection.splice import InjectionRecord, SpliceItem, apply


def original_batch(stream: BatchStream, k: int, items: Sequence[SpliceItem] = (), records=()) -> np.ndarray:
    """The global batch [B, L] (int64) of run step k with `items` spliced where `records` say, masked where the
    stream's row filter rejects the original instance."""
    tokens, _ = stream.batch(k)
    spliced = np.asarray(apply(tokens, items, records) if items else tokens, dtype=np.int64)
    if stream.row_filter is None:
        return spliced
    return mask_batch(spliced, stream.row_filter.kept_rows(tokens), records)


class InjectedBatches:
    def __init__(
        self,
        stream: BatchStream,
        injections: Mapping[int, Sequence[SpliceItem]],
        records: Mapping[int, Sequence[InjectionRecord]],
        *,
        prefetch: int = 2,
        stop_at: int | None = None,
    ) -> None:
        self.stream = stream
        self.stop_at = stop_at
        """The thread prepares no step at or after this one (the run's end)."""
        self.injections = injections
        self.records = records
        self.prefetch = prefetch
        self._thread: threading.Thread | None = None
        self._queue: queue.Queue | None = None
        self._stop = threading.Event()
        self._next = 0

    def compute(self, k: int) -> np.ndarray:
        """The spliced global batch [B, L] (int64) of run step k, synchronously."""
        items = self.injections.get(k)
        return original_batch(self.stream, k, items or (), self.records[k] if items else ())

    def get(self, k: int) -> np.ndarray:
        if self.prefetch <= 0:
            return self.compute(k)
        if self._queue is None or k != self._next:
            self._restart(k)
        while True:
            try:
                got, batch, err = self._queue.get(timeout=5.0)
                break
            except queue.Empty:
                # every read is bounded (the HTTP layer's budget), so a silent, dead thread is a bug, not a wait
                if self._thread is None or not self._thread.is_alive():
                    raise RuntimeError(f"the batch thread stopped without preparing step {k}") from None
        assert got == k
        if err is not None:
            self.close()
            raise err
        self._next = k + 1
        return batch

    def _worker(self, first: int, q: queue.Queue, stop: threading.Event) -> None:
        k = first
        while not stop.is_set() and (self.stop_at is None or k < self.stop_at):
            try:
                result = (k, self.compute(k), None)
            except BaseException as err:  # handed to the consumer, which re-raises it
                result = (k, None, err)
            while not stop.is_set():
                try:
                    q.put(result, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if result[2] is not None:
                return
            k += 1

    def _restart(self, first: int) -> None:
        self.close()
        self._stop = threading.Event()
        self._queue = queue.Queue(maxsize=self.prefetch)
        self._thread = threading.Thread(
            target=self._worker, args=(first, self._queue, self._stop), daemon=True, name="injected-batches"
        )
        self._thread.start()
        self._next = first

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._thread = None
        self._queue = None

    def __enter__(self) -> InjectedBatches:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
