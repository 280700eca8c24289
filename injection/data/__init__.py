"""The original data order, local corpora and step-window extraction (SPEC §6)."""

from injection.data.source import (
    BatchSource,
    CorpusBatchSource,
    CorpusInfo,
    open_batch_source,
    open_data_order,
    read_corpus_info,
)
from injection.data.indexed import IndexedBatchSource, IndexedCorpusInfo, IndexedDataset

__all__ = [
    "BatchSource",
    "CorpusBatchSource",
    "CorpusInfo",
    "IndexedBatchSource",
    "IndexedCorpusInfo",
    "IndexedDataset",
    "open_batch_source",
    "open_data_order",
    "read_corpus_info",
]
