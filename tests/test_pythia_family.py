"""The Pythia family module (injection/checkpoints/pythia.py): GPT-NeoX architecture and HF config, AdamW groups,
the training objective, the tokenizer, `pythia-tiny`, and `injection pull --source hf` adopting a snapshot."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from harness.errors import UserError
from injection.checkpoints import pythia
from injection.checkpoints.catalog import load_catalog
from injection.checkpoints.layout import read_checkpoint_dir
from injection.cli import app

runner = CliRunner()


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return pythia.build_pythia_tiny(tmp_path_factory.mktemp("pt") / "step0", max_sequence_length=16, seed=3)


def test_hf_config_is_the_published_pythia_1b_config(catalog):
    """The fields of EleutherAI/pythia-1b's config.json, but for the activation GPT-NeoX trained with."""
    config = pythia.hf_config(catalog.family("pythia-1b").architecture).to_dict()
    published = {
        "model_type": "gpt_neox",
        "hidden_size": 2048,
        "num_hidden_layers": 16,
        "num_attention_heads": 8,
        "intermediate_size": 8192,
        "vocab_size": 50304,
        "max_position_embeddings": 2048,
        "layer_norm_eps": 1e-5,
        "use_parallel_residual": True,
        "tie_word_embeddings": False,
        "bos_token_id": 0,
        "eos_token_id": 0,
    }
    assert {k: config[k] for k in published} == published
    assert config["rope_parameters"]["partial_rotary_factor"] == 0.25
    assert config["rope_parameters"]["rope_theta"] == 10000.0
    assert config["hidden_act"] == "gelu_pytorch_tanh"


def test_architecture_counts_parameters_like_the_model(catalog):
    """The closed-form count that validates `params` agrees with the model transformers builds (6.9B: padded
    embeddings)."""
    from transformers import GPTNeoXForCausalLM

    for name in ("pythia-6.9b", "pythia-tiny"):
        arch = catalog.family(name).architecture
        with torch.device("meta"):
            model = GPTNeoXForCausalLM(pythia.hf_config(arch))
        assert pythia.parameter_counts(arch)[0] == sum(p.numel() for p in model.parameters()), name


def test_param_groups_decay_everything_but_biases_and_layer_norms(tiny_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    decay, no_decay = pythia.param_groups(model, 0.1)
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.1, 0.0)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    kept = {names[id(p)] for p in no_decay["params"]}
    assert decayed | kept == set(names.values()) and not decayed & kept
    assert {
        "gpt_neox.embed_in.weight",
        "lm_head.weight",
        "gpt_neox.layers.1.attention.query_key_value.weight",
        "gpt_neox.layers.0.attention.dense.weight",
        "gpt_neox.layers.0.mlp.dense_h_to_4h.weight",
        "gpt_neox.layers.1.mlp.dense_4h_to_h.weight",
    } <= decayed
    assert all(n.endswith(".bias") or "layernorm" in n or "layer_norm" in n for n in kept)
    assert {
        "gpt_neox.final_layer_norm.weight",
        "gpt_neox.layers.0.input_layernorm.weight",
        "gpt_neox.layers.0.post_attention_layernorm.weight",
        "gpt_neox.layers.0.attention.dense.bias",
    } <= kept
    assert len(decayed) == 2 + 2 * 4  # embeddings, output layer and the four matrices of each of two layers


def test_the_objective_is_gpt_neox_loss_on_rows_one_longer_than_the_context(tiny_dir):
    """GPT-NeoX feeds row[:-1] and scores row[1:] (mean over every position); the engine feeds the whole row with
    labels = row and multiplies by loss_factor: the same number, and the 17th position needs no embedding."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    ckpt = read_checkpoint_dir(tiny_dir)
    assert (ckpt.seq_len, model.config.max_position_embeddings) == (17, 16)
    rows = torch.randint(2, 50000, (3, ckpt.seq_len), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model(input_ids=rows, labels=rows).loss * pythia.loss_factor(ckpt.seq_len)
        logits = model(input_ids=rows[:, :-1]).logits
        neox = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), rows[:, 1:].reshape(-1))
    assert float(ours) == pytest.approx(float(neox), rel=1e-6)


@pytest.mark.slow
def test_pythia_tiny_checkpoint(tiny_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    ckpt = read_checkpoint_dir(tiny_dir)
    assert (ckpt.family, ckpt.kind, ckpt.step, ckpt.eos_token_id) == ("pythia-tiny", "pythia", 0, 0)
    assert (ckpt.global_batch_size, ckpt.seq_len, ckpt.tokens_per_row, ckpt.tokens_per_step) == (8, 17, 16, 8 * 16)
    assert ckpt.lr_schedule.kind == "gpt-neox-cosine" and not ckpt.has_optimizer_state
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    assert model.config.model_type == "gpt_neox" and model.config.hidden_act == "gelu_pytorch_tanh"
    again = AutoModelForCausalLM.from_pretrained(
        pythia.build_pythia_tiny(tmp_path / "again", max_sequence_length=16, seed=3)
    )
    other = AutoModelForCausalLM.from_pretrained(pythia.build_pythia_tiny(tmp_path / "other", max_sequence_length=16))
    assert torch.equal(again.gpt_neox.embed_in.weight, model.gpt_neox.embed_in.weight)
    assert not torch.equal(other.gpt_neox.embed_in.weight, model.gpt_neox.embed_in.weight)


def test_offline_tokenizer_speaks_pythia_ids():
    tok = pythia.tokenizer()
    assert (tok.eos_token_id, tok.convert_tokens_to_ids("<|padding|>")) == (0, 1)
    ids = tok("Pythia was trained on the Pile, in 143,000 steps.")["input_ids"]
    assert ids and max(ids) < 50277 and 0 not in ids  # no BOS, nothing beyond Pythia's own vocabulary


@pytest.mark.slow
def test_pull_without_hf_names_the_hf_source(tmp_path, monkeypatch):
    monkeypatch.setenv("INJECTION_CACHE", str(tmp_path))
    result = runner.invoke(app, ["pull", "pythia-1b@mid"])
    assert result.exit_code == 2
    assert "no original URL for this step; its Hugging Face revision can be pulled with --source hf" in result.output
    with pytest.raises(UserError, match="publishes no original checkpoint files"):
        pythia.convert_original(tmp_path, tmp_path / "out", family=load_catalog().family("pythia-1b"), step=1)


# --- pull --source hf, adopting a snapshot fetched elsewhere ----------------------------------------------------


def _test_catalog(tmp_path: Path, catalog, name: str = "pythia-1b") -> Path:
    """A catalog holding the real entry of `name`, except for a pythia-tiny-sized architecture (so that a snapshot
    can be built here); revisions, batch size, schedule and known issues are the real ones."""
    raw = yaml.safe_load(catalog.path.read_text())["families"]
    fam = copy.deepcopy(raw[name])
    fam["architecture"] = {**raw["pythia-tiny"]["architecture"], "vocab_size": 50277}
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump({"families": {name: fam}}))
    return path


def _published_snapshot(directory: Path, arch) -> Path:
    """An HF snapshot as the Pythia repositories publish it: config.json with `hidden_act: gelu`, fp16 weights."""
    from transformers import GPTNeoXForCausalLM

    config = pythia.hf_config(arch)
    config.hidden_act = "gelu"
    GPTNeoXForCausalLM(config).to(torch.float16).save_pretrained(directory)
    pythia.tokenizer().save_pretrained(directory)
    return directory


def test_pull_hf_adopts_a_snapshot_with_pythia_rows_and_tokens(tmp_path, monkeypatch, catalog):
    monkeypatch.setenv("INJECTION_CATALOG", str(_test_catalog(tmp_path, catalog)))
    monkeypatch.setenv("INJECTION_CACHE", str(tmp_path / "cache"))
    snapshot = _published_snapshot(tmp_path / "snap", load_catalog().family("pythia-1b").architecture)
    result = runner.invoke(app, ["pull", "pythia-1b@mid", "--source", "hf", "--out", str(snapshot)])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().endswith(str(snapshot))
    meta = json.loads((snapshot / "checkpoint.json").read_text())
    assert (meta["source"], meta["hf_repo"], meta["hf_revision"]) == ("hf", "EleutherAI/pythia-1b", "step23000")
    assert meta["hf_config_changes"] == {"hidden_act": ["gelu", "gelu_pytorch_tanh"]}
    assert json.loads((snapshot / "config.json").read_text())["hidden_act"] == "gelu_pytorch_tanh"
    ckpt = read_checkpoint_dir(snapshot)
    assert (ckpt.kind, ckpt.step, ckpt.global_batch_size, ckpt.seq_len) == ("pythia", 23000, 1024, 2049)
    assert ckpt.tokens_per_step == 1024 * 2048 and not ckpt.has_optimizer_state
    assert (ckpt.data_position.epoch, ckpt.data_position.instances_seen) == (0, 23000 * 1024)
    assert ckpt.lr_schedule.kind == "gpt-neox-cosine" and ckpt.eos_token_id == 0
    assert "reported" not in result.stderr  # step 23000 of pythia-1b is not reported broken


def test_pull_warns_about_a_reported_broken_revision(tmp_path, monkeypatch, catalog):
    monkeypatch.setenv("INJECTION_CATALOG", str(_test_catalog(tmp_path, catalog, "pythia-2.8b")))
    monkeypatch.setenv("INJECTION_CACHE", str(tmp_path / "cache"))
    snapshot = _published_snapshot(tmp_path / "snap", load_catalog().family("pythia-2.8b").architecture)
    result = runner.invoke(app, ["pull", "pythia-2.8b@early", "--source", "hf", "--out", str(snapshot)])
    assert result.exit_code == 0, result.output
    warning = " ".join(result.stderr.split())
    assert "pythia-2.8b@8000: a problem is reported with this published checkpoint (EleutherAI/pythia#205)" in warning
    assert "byte-identical to main's" in warning


def test_pull_refuses_a_snapshot_of_another_size(tmp_path, monkeypatch, catalog):
    monkeypatch.setenv("INJECTION_CATALOG", str(_test_catalog(tmp_path, catalog)))
    arch = load_catalog().family("pythia-1b").architecture
    from dataclasses import replace

    snapshot = _published_snapshot(tmp_path / "snap", replace(arch, d_model=32, n_heads=2, intermediate_size=128))
    result = runner.invoke(app, ["pull", "pythia-1b@mid", "--source", "hf", "--out", str(snapshot)])
    assert result.exit_code == 2
    assert "hidden_size is 32, the catalog's architecture has 64" in " ".join(result.output.split())
    assert not (snapshot / "checkpoint.json").exists()


@pytest.mark.slow
def test_pull_builds_pythia_tiny_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("INJECTION_CACHE", str(tmp_path))
    result = runner.invoke(app, ["pull", "pythia-tiny@0", "--out", str(tmp_path / "pt")])
    assert result.exit_code == 0, result.output
    ckpt = read_checkpoint_dir(tmp_path / "pt")
    assert (ckpt.family, ckpt.seq_len, ckpt.tokens_per_row) == ("pythia-tiny", 65, 64)
    from injection.checkpoints.pull import local_checkpoint

    longer = read_checkpoint_dir(local_checkpoint("pythia-tiny@0+L96"))
    assert (longer.seq_len, longer.tokens_per_step) == (97, 8 * 96)
    with pytest.raises(UserError, match="of a built-in family"):
        local_checkpoint("pythia-1b@0+L96")


@pytest.mark.slow
def test_checkpoints_show_and_list_a_pythia_model():
    shown = runner.invoke(app, ["checkpoints", "show", "pythia-2.8b@early"], env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    text = " ".join(shown.output.split())
    assert "1024 rows x 2049 tokens (2048 trained per row)" in text and "2,097,152" in text
    assert "reported problem" in text and "EleutherAI/pythia#205" in text and "step8000" in text
    listed = runner.invoke(app, ["checkpoints", "list", "pythia-1b"], env={"COLUMNS": "200"})
    assert listed.exit_code == 0 and listed.output.count("hf:step") == 154
