"""The original data order, local corpora, step-window extraction (`injection data ...`)."""

from injection.data.formats import open_corpus
from injection.data.source import BatchStream, Corpus, CorpusInfo, OrderedCorpus, Segment, read_corpus_info

__all__ = ["BatchStream", "Corpus", "CorpusInfo", "OrderedCorpus", "Segment", "open_corpus", "read_corpus_info"]
