"""Opening a corpus whatever its format: `corpus.json`'s `format` picks the reader.

- `olmo` (the default): OLMo-format token files with an order per epoch (injection.data.source.Corpus), also
  windows extracted from one and corpora built by `injection data build-corpus`;
- `megatron-indexed`: a pre-packed Megatron indexed dataset in training order (injection.data.indexed).
"""

from __future__ import annotations

from pathlib import Path

from injection.data.indexed import IndexedCorpus, IndexedCorpusInfo
from injection.data.source import INDEXED_FORMAT, Corpus, CorpusInfo, OrderedCorpus, read_corpus_json


def open_corpus(location: str | Path) -> OrderedCorpus:
    """The corpus (a full one, a window, or an indexed dataset) in a directory or at a URL holding `corpus.json`."""
    data, where = read_corpus_json(location)
    if data.get("format") == INDEXED_FORMAT:
        return IndexedCorpus(IndexedCorpusInfo.from_dict(data, where), location)
    return Corpus(CorpusInfo.from_dict(data, where), location)
