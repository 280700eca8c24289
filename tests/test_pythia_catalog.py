"""The generated Pythia catalog entries (scripts/make_pythia_catalog.py -> scripts/pythia_catalog.yaml)."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]

SCRIPT = REPO_ROOT / "scripts" / "make_pythia_catalog.py"
SIZES = ["70m", "160m", "410m", "1b", "1.4b", "2.8b", "6.9b", "12b"]


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("make_pythia_catalog", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def families(script) -> dict:
    return yaml.safe_load(script.catalog_yaml())["families"]


def test_committed_yaml_is_the_script_output(script):
    assert (REPO_ROOT / "scripts" / "pythia_catalog.yaml").read_text() == script.catalog_yaml()


def test_sixteen_models_with_all_154_steps(families):
    assert list(families) == [f"pythia-{s}{v}" for s in SIZES for v in ("", "-deduped")]
    expected = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512] + list(range(1000, 143001, 1000))
    assert len(expected) == 154
    for name, fam in families.items():
        steps = [entry["step"] for entry in fam["steps"]]
        assert steps == expected, name
        assert all(entry["hf_revision"] == f"step{entry['step']}" for entry in fam["steps"]), name
        assert fam["hf_repo"] == f"EleutherAI/{name}"
        assert set(fam["stages"]) == {"early", "mid", "late"} and set(fam["stages"].values()) <= set(steps)


def test_stages_are_olmo_1b_fractions_of_training(families):
    """Same fractions of the run as OLMo-1B's stages (40,000 / 117,850 / 358,000 of 739,328 steps)."""
    for fam in families.values():
        assert fam["stages"] == {"early": 8000, "mid": 23000, "late": 69000}
    # 7,737 / 22,794 / 69,244 rounded to the listed steps; the deduped models' late stage is still in epoch 1.
    assert 69000 < 207e9 / 2_097_152


@pytest.mark.parametrize("size", SIZES)
def test_architecture_reproduces_the_published_parameter_counts(families, size):
    """A GPTNeoXConfig built from the entry has the model card's non-embedding parameter count."""
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    arch = families[f"pythia-{size}"]["architecture"]
    assert arch == families[f"pythia-{size}-deduped"]["architecture"]
    config = GPTNeoXConfig(
        hidden_size=arch["d_model"], num_hidden_layers=arch["n_layers"], num_attention_heads=arch["n_heads"],
        intermediate_size=arch["intermediate_size"], vocab_size=arch["embedding_size"],
        max_position_embeddings=arch["max_sequence_length"], rotary_pct=arch["rotary_pct"],
        use_parallel_residual=arch["parallel_residual"], tie_word_embeddings=arch["weight_tying"],
    )
    with torch.device("meta"):
        model = GPTNeoXForCausalLM(config)
    total = sum(p.numel() for p in model.parameters())
    embeddings = 2 * arch["embedding_size"] * arch["d_model"]
    assert total == arch["params"]
    assert total - embeddings == arch["non_embedding_params"]


def test_embedding_rows_follow_the_model_parallel_padding(families):
    """50,277 tokens padded to 128 x model-parallel size: as in the published config.json files."""
    rows = {size: families[f"pythia-{size}"]["architecture"]["embedding_size"] for size in SIZES}
    assert rows == {"70m": 50304, "160m": 50304, "410m": 50304, "1b": 50304, "1.4b": 50304, "2.8b": 50304,
                    "6.9b": 50432, "12b": 50688}


def test_optimizer_and_schedule_facts(families, script):
    peaks = {size: families[f"pythia-{size}"]["lr_schedule"]["peak_lr"] for size in SIZES}
    assert peaks == {"70m": 1e-3, "160m": 6e-4, "410m": 3e-4, "1b": 2.5e-4, "1.4b": 2e-4, "2.8b": 1.6e-4,
                     "6.9b": 1.2e-4, "12b": 1.2e-4}
    for fam in families.values():
        assert fam["lr_schedule"] == {**fam["lr_schedule"], "kind": "gpt-neox-cosine", "warmup_steps": 1430,
                                      "alpha_f": 0.1, "t_max": 143000}
        assert fam["optimizer"]["betas"] == [0.9, 0.95] and fam["optimizer"]["eps"] == 1e-8
        assert (fam["optimizer"]["weight_decay"], fam["optimizer"]["grad_clip"]) == (0.1, 1.0)
        assert fam["batch_sizes"][0]["global_batch_size"] == 1024
        assert (fam["data_order"]["seq_len"], fam["data_order"]["row_len"], fam["data_order"]["seed"]) == (2048, 2049, 1234)
        assert len(fam["data_order"]["data_urls"]) == 21
    assert families["pythia-1b"]["precision"] == "bf16" and families["pythia-1b-deduped"]["precision"] == "bf16"
    assert "pile-deduped-pythia-preshuffled" in families["pythia-12b-deduped"]["data_order"]["index_url"]
    assert "pile-standard-pythia-preshuffled" in families["pythia-12b"]["data_order"]["index_url"]


def test_gpt_neox_learning_rate(script):
    lr = script.neox_lr
    assert lr(0, 1.0) == 0.0 and lr(715, 1.0) == 0.5 and lr(1430, 1.0) == 1.0
    # The cosine's period is 143,000 (not 141,570) and starts after warm-up: 0.5 * (1 + cos(pi * 6570 / 143000)).
    assert lr(8000, 1.0) == pytest.approx(0.5 * (1 + math.cos(math.pi * 6570 / 143000)))
    assert lr(69000, 2.5e-4) == pytest.approx(2.5e-4 * 0.5431, rel=1e-3)
    # It reaches the 10 % floor long before the end and stays there.
    assert script.floor_step() == 115139
    assert lr(115138, 1.0) > 0.1 and lr(115139, 1.0) == 0.1 and lr(143000, 1.0) == 0.1
    values = [lr(n, 1.0) for n in range(1430, 143001, 97)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_reported_broken_revisions_are_flagged(families):
    issues = {name: [s for issue in fam["known_issues"] for s in issue["steps"]] for name, fam in families.items()}
    assert {0, 1, 2} <= set(issues["pythia-70m"])
    assert {8000, 23000, 54000, 143000 - 3000} & set(issues["pythia-2.8b"]) == {8000, 23000, 54000, 140000}
    assert 69000 not in issues["pythia-2.8b"] and {50000, 58000} <= set(issues["pythia-12b"])
    assert 8000 not in issues["pythia-2.8b-deduped"]
