"""Never hang on data that ends: a stream asked for a step past the last full batch of any corpus format ends at once
with the format's own error, and the run's coverage is checked before training whatever the format (an OLMo corpus,
a window extracted from one, a Megatron indexed dataset). Positions past an epoch's end are refused, not silently
moved to the next epoch."""

from __future__ import annotations

import pytest

from harness.errors import UserError
from injection.data import BatchStream, open_corpus
from injection.data.extract import extract_window
from injection.engine.inputs import check_stream_covers
from tests.helpers.corpus import make_corpus
from tests.helpers.indexed import make_indexed_corpus

B = 4


def _indexed(tmp_path):
    make_indexed_corpus(tmp_path / "indexed", n_rows=12 * B, row_len=16)  # 12 steps of 4 rows, one epoch
    return open_corpus(tmp_path / "indexed")


def _small_olmo(tmp_path):
    make_corpus(tmp_path / "small", file_tokens=(3 * 16 + 5,), seq_len=16)  # 3 instances: no batch of 4 at all
    return open_corpus(tmp_path / "small")


def _window(tmp_path):
    corpus = open_corpus(make_corpus(tmp_path / "olmo", seq_len=16))
    extract_window(
        corpus, BatchStream(corpus, 0, 0, B), 5, tmp_path / "window", source_name="olmo", show_progress=False
    )
    return open_corpus(tmp_path / "window")


FORMATS = {
    "megatron-indexed, past its one epoch": (_indexed, 13, "(epoch 1) are outside this dataset's 48 rows"),
    "olmo, smaller than a batch": (_small_olmo, 1, "outside epoch 1's order of 3 instances"),
    "olmo window, past what was extracted": (_window, 6, "epoch 0 positions 0…23 that this run reads"),
}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("name", sorted(FORMATS))
def test_every_format_s_coverage_is_checked_before_training(tmp_path, name):
    make, steps, message = FORMATS[name]
    stream = BatchStream(make(tmp_path), 0, 0, B)
    with pytest.raises(UserError, match=r"field 'data': DATA does not hold") as err:
        check_stream_covers(stream, steps, 0, "DATA")
    assert message in str(err.value)
    if name != "olmo, smaller than a batch":
        check_stream_covers(stream, steps - 1, 0, "DATA")  # one step fewer is served


@pytest.mark.timeout(30)
def test_a_step_past_the_last_full_batch_ends_at_once(tmp_path):
    """It used to loop forever: every epoch after the first had length 0 and the loop advanced the epoch unbounded."""
    stream = BatchStream(_indexed(tmp_path), 0, 10 * B, B)
    assert stream.position(1) == (0, 11 * B)
    assert stream.position(2) == (0, 12 * B)  # where the stream stands after its last batch...
    with pytest.raises(UserError, match=r"rows 48…51 \(epoch 0\) are outside this dataset's 48 rows"):
        stream.batch(2)  # ...which holds no batch
    with pytest.raises(UserError, match=r"rows 0…3 \(epoch 1\) are outside this dataset's 48 rows"):
        stream.position(3)
    with pytest.raises(UserError, match=r"outside this dataset's 48 rows"):
        stream.segments(3)


@pytest.mark.timeout(30)
def test_a_run_longer_than_a_thousand_epochs_is_refused(tmp_path):
    stream = BatchStream(open_corpus(make_corpus(tmp_path / "c", seq_len=16)), 0, 0, B)  # 47 steps an epoch
    with pytest.raises(UserError, match="more than 1,000 times over"):
        stream.segments(10**12)


def test_a_position_past_the_end_of_its_epoch_is_refused(tmp_path):
    corpus = open_corpus(make_corpus(tmp_path / "c", seq_len=16))
    n = corpus.epoch_length(0)
    assert BatchStream(corpus, 0, n, B).position(0) == (1, 0)  # the very end: the next epoch, as OLMo's loader goes
    with pytest.raises(UserError, match=f"stream position {n + 1:,} is beyond the end of epoch 0's order of {n}"):
        BatchStream(corpus, 0, n + 1, B)
