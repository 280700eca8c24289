"""The OLMo 2 family module: original OLMo 2 checkpoints (written by ai2-olmo's own model class, in both published
layouts) convert to Olmo2ForCausalLM with ai2-olmo's logits, moments and groups; the run's config.yaml decides
the objective, the schedule and the optimizer."""

from __future__ import annotations

import pickle
import warnings

import pytest
import torch

from harness.errors import UserError
from injection.checkpoints import olmo2
from injection.checkpoints.catalog import load_catalog
from injection.checkpoints.layout import read_checkpoint_dir
from injection.instance_filter import InstanceFilter
from tests.helpers.olmo_original import TINY_OLMO2_CONFIG, TINY_OLMO2_MODEL, write_original_olmo2_checkpoint


@pytest.fixture(scope="module")
def family():
    return load_catalog().family("olmo2-1b")


def _convert(tmp_path, family, **kwargs):
    src, model = write_original_olmo2_checkpoint(tmp_path / "orig", **kwargs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = olmo2.convert_original(src, tmp_path / "hf", family=family, step=40)
    return out, model, [str(w.message) for w in caught]


@pytest.mark.parametrize("safetensors", [False, True], ids=["model.pt", "model.safetensors"])
def test_converted_logits_equal_ai2_olmos_olmo2_model(tmp_path, family, safetensors, capsys):
    """fp32, the same weights: Olmo2ForCausalLM's logits are ai2-olmo's OLMo 2 model's."""
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(1)
    out, model, _ = _convert(tmp_path, family, safetensors=safetensors)
    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(hf).__name__ == "Olmo2ForCausalLM"
    x = torch.randint(0, 100278, (2, 48), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = model.eval()(x).logits, hf(x).logits
    difference = float((got - expected).abs().max())
    with capsys.disabled():
        print(
            f"\n[OLMo 2 conversion, {'safetensors' if safetensors else 'pickle'}] "
            f"max |logits - ai2-olmo| {difference:.3g}"
        )
    assert expected.abs().max() > 0.1
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_both_layouts_give_the_same_checkpoint(tmp_path, family):
    from safetensors.torch import load_file

    pt, _, _ = _convert(tmp_path / "pt", family)
    st, _, _ = _convert(tmp_path / "st", family, safetensors=True)
    for name in ("model.safetensors", "optimizer.safetensors"):
        a, b = load_file(pt / name), load_file(st / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_moments_follow_their_parameters_norms_included(tmp_path, family):
    from safetensors.torch import load_file

    out, _, _ = _convert(tmp_path, family)
    opt = torch.load(tmp_path / "orig" / "optim.pt", weights_only=True)
    moments = load_file(out / "optimizer.safetensors")
    assert int(moments["step"]) == 3
    att = opt["state"]["transformer.blocks.1.att_proj.weight"]["exp_avg"]
    head_dim = TINY_OLMO2_MODEL["d_model"] // TINY_OLMO2_MODEL["n_heads"]
    kv = TINY_OLMO2_MODEL["n_kv_heads"] * head_dim
    d = TINY_OLMO2_MODEL["d_model"]
    torch.testing.assert_close(moments["exp_avg/model.layers.1.self_attn.k_proj.weight"], att[d : d + kv])
    torch.testing.assert_close(moments["exp_avg/model.layers.1.self_attn.v_proj.weight"], att[d + kv :])
    for olmo_name, hf_name in (
        ("transformer.blocks.0.attn_norm.weight", "model.layers.0.post_attention_layernorm.weight"),
        ("transformer.blocks.0.ff_norm.weight", "model.layers.0.post_feedforward_layernorm.weight"),
        ("transformer.blocks.1.q_norm.weight", "model.layers.1.self_attn.q_norm.weight"),
        ("transformer.blocks.1.k_norm.weight", "model.layers.1.self_attn.k_norm.weight"),
        ("transformer.ln_f.weight", "model.norm.weight"),
        ("transformer.ff_out.weight", "lm_head.weight"),
    ):
        torch.testing.assert_close(moments[f"exp_avg_sq/{hf_name}"], opt["state"][olmo_name]["exp_avg_sq"])


def test_the_runs_config_decides_schedule_optimizer_and_objective(tmp_path, family):
    out, _, messages = _convert(tmp_path, family)
    ckpt = read_checkpoint_dir(out)
    assert ckpt.kind == "olmo2" and ckpt.eos_token_id == 100257
    assert ckpt.lr_schedule.units == "tokens" and ckpt.lr_schedule.t_max == 5_000_000_000_000
    assert ckpt.lr_schedule.warmup_min_lr == 0.0 and ckpt.lr_schedule.warmup_steps == 8_388_608_000
    assert (ckpt.optimizer.eps, ckpt.optimizer.decay_norm_and_bias, ckpt.optimizer.decay_embeddings) == (
        1e-8,
        True,
        False,
    )
    assert ckpt.tokens_seen == 40 * 4 * 64 and ckpt.data_position.instances_seen == 160
    assert ckpt.objective.z_loss_multiplier == 1e-4
    assert ckpt.objective.instance_filter == InstanceFilter(13, 1, 32)
    # the config's 1e-5 is named, with what is applied instead
    assert any("auxiliary_loss_multiplier is 1e-05" in m and "applies 0.0001" in m for m in messages)
    tokenizer = olmo2.tokenizer(family)
    assert (tokenizer.eos_token_id, tokenizer.pad_token_id, len(tokenizer)) == (100257, 100277, 100278)


def test_param_groups_are_ai2_olmos(family):
    """The HF model's decayed and undecayed parameters are those of ai2-olmo's get_param_groups for the same
    config (norms decayed, embedding not)."""
    from olmo.config import TrainConfig
    from olmo.optim import get_param_groups
    from transformers import Olmo2ForCausalLM

    from injection.checkpoints.layout import OptimizerSpec
    from tests.helpers.olmo_original import olmo2_model

    model = olmo2_model()
    cfg = TrainConfig.new(**{k: v for k, v in TINY_OLMO2_CONFIG.items() if k in ("optimizer", "max_grad_norm")})
    reference = {g.get("weight_decay", None) != 0.0: set(g["param_names"]) for g in get_param_groups(cfg, model)}
    arch = olmo2.architecture_from_config(TINY_OLMO2_CONFIG, family.architecture, "config")
    hf = Olmo2ForCausalLM(olmo2.hf_config(arch))
    names = {id(p): n for n, p in hf.named_parameters()}
    spec = OptimizerSpec(eps=1e-8, decay_norm_and_bias=True, decay_embeddings=False)
    decay, no_decay = olmo2.param_groups(hf, 0.1, spec)
    tensors = dict(model.named_parameters())

    def as_hf(olmo_names):
        return {h for o in olmo_names for h, _ in olmo2.olmo2_to_hf(o, tensors[o].detach(), arch)}

    assert {names[id(p)] for p in no_decay["params"]} == as_hf(reference[False]) == {"model.embed_tokens.weight"}
    decayed = {names[id(p)] for p in decay["params"]}
    assert decayed == as_hf(reference[True])
    assert "model.norm.weight" in decayed and "model.layers.0.self_attn.q_norm.weight" in decayed


@pytest.mark.parametrize(
    "change, named",
    [
        ({"norm_after": False}, "norm_after (must be true)"),
        ({"attention_layer_norm": False}, "attention_layer_norm (must be true)"),
        ({"layer_norm_type": "default"}, "layer_norm_type=default"),
        ({"clip_qkv": 8.0}, "clip_qkv"),
    ],
)
def test_settings_olmo2_cannot_express_are_named(family, change, named):
    cfg = {**TINY_OLMO2_CONFIG, "model": {**TINY_OLMO2_MODEL, **change}}
    with pytest.raises(UserError, match="config.yaml: model settings Olmo2ForCausalLM cannot express: ") as err:
        olmo2.architecture_from_config(cfg, family.architecture, "config.yaml")
    assert named in str(err.value)


def test_a_pickled_value_that_needs_a_class_is_refused_without_trust(tmp_path, family):
    """ai2-olmo's safetensors encoding pickles non-tensor values; only plain data is read without --trust-pickle."""
    from olmo.safetensors_util import state_dict_to_safetensors_file

    from injection.checkpoints.safe_load import load_olmo_safetensors

    path = tmp_path / "optim.safetensors"
    state_dict_to_safetensors_file({"state": {}, "param_groups": [{"lr": 1e-3, "path": tmp_path}]}, path)
    with pytest.raises(UserError, match="needs a class.*--trust-pickle"):
        load_olmo_safetensors(path)
    assert load_olmo_safetensors(path, trust_pickle=True)["param_groups"][0]["path"] == tmp_path
    assert pickle.dumps(tmp_path)  # the value is an ordinary Python object, refused only for its class


def test_hf_snapshot_of_another_size_is_refused(family):
    config = olmo2.hf_config(family.architecture).to_dict()
    assert olmo2.check_hf_config(config, family.architecture, "config.json") == {}
    with pytest.raises(UserError, match="num_hidden_layers is 32, the catalog's architecture has 16"):
        olmo2.check_hf_config({**config, "num_hidden_layers": 32}, family.architecture, "config.json")
