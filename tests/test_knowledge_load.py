"""Loading knowledge sets: the reference JSON, a saved `datasets` directory, hub names offline."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from fictional_knowledge.load import knowledge_to_items, load_knowledge
from fictional_knowledge.model import PROBE_KINDS
from harness.errors import UserError
from injection.cli import app
from tests.helpers.knowledge import REFERENCE_FILE, valid_items, write_json


def test_reference_set_loads(reference_dir):
    ks = load_knowledge(reference_dir / REFERENCE_FILE)
    assert len(ks) == 130
    assert [len(p.paraphrases) for p in ks.paragraphs] == [9] * 40 + [0] * 90
    assert all(len(p.probes[k]) == 5 for p in ks.paragraphs for k in PROBE_KINDS)
    assert [p.id for p in ks.paragraphs] == list(range(130))
    refs = list(ks.iter_probes())
    assert len(refs) == 1950 and (refs[0].paragraph, refs[0].kind, refs[0].index) == (0, "mem", 0)
    assert refs[5].kind == "sem" and refs[15].paragraph == 1
    assert ks[3].variant(0) == ks[3].text and ks[3].variant(9) == ks[3].paraphrases[8]
    assert len(ks.subset(120)) == 120
    # The known quirk: some mem probes are not verbatim substrings of their paragraph.
    assert sum(p.probes["mem"][i].text not in p.text for p in ks.paragraphs for i in range(5)) == 12


def test_dataset_directory_round_trip(tmp_path, reference_dir):
    from datasets import Dataset, DatasetDict

    original = load_knowledge(reference_dir / REFERENCE_FILE).subset(45)
    items = knowledge_to_items(original)
    Dataset.from_list(items).save_to_disk(str(tmp_path / "flat"))
    DatasetDict({"train": Dataset.from_list(items)}).save_to_disk(str(tmp_path / "splits"))
    for name in ("flat", "splits"):
        loaded = load_knowledge(tmp_path / name)
        assert loaded.paragraphs == original.paragraphs, name
        assert loaded.source == str(tmp_path / name)


def test_dataset_directory_is_checked_like_json(tmp_path):
    from datasets import Dataset

    items = valid_items(3)
    items[2]["mem_target"][1] = ""
    Dataset.from_list(items).save_to_disk(str(tmp_path / "bad"))
    with pytest.raises(UserError, match=r"item 2, field 'mem_target'\[1\]: empty string"):
        load_knowledge(tmp_path / "bad")


def test_hub_name_offline_gives_a_clear_message(monkeypatch, tmp_path):
    import datasets
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    with pytest.raises(UserError, match=r"cannot load 'someone/fictional-knowledge'.*offline mode is on"):
        load_knowledge("someone/fictional-knowledge")
    result = CliRunner().invoke(app, ["knowledge", "validate", "someone/fictional-knowledge"])
    assert result.exit_code == 2
    assert "offline mode is on" in result.output and "save_to_disk" in result.output
    assert "Traceback" not in result.output


def test_missing_paths_and_plain_directories(tmp_path):
    with pytest.raises(UserError, match="no such file or directory"):
        load_knowledge(tmp_path / "absent.json")
    with pytest.raises(UserError, match="not a dataset saved with save_to_disk"):
        load_knowledge(tmp_path)


def test_round_trip_through_json(tmp_path):
    items = valid_items(4, paraphrases=2)
    ks = load_knowledge(write_json(tmp_path / "k.json", items))
    assert knowledge_to_items(ks) == items
