"""Original OLMo layout -> HF: logits equal ai2-olmo's own model; moments follow their parameters."""

from __future__ import annotations

import warnings

import pytest
import torch

from harness.errors import UserError
from injection.checkpoints.catalog import load_catalog
from injection.checkpoints.download import safe_name
from injection.checkpoints.olmo import convert_original, olmo_to_hf
from injection.checkpoints.safe_load import safe_torch_load
from tests.helpers.olmo_original import write_original_checkpoint


def _logits_match(tmp_path, **overrides):
    from transformers import AutoModelForCausalLM

    src, olmo = write_original_checkpoint(tmp_path / "orig", **overrides)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = convert_original(src, tmp_path / "hf", family=load_catalog().family("tiny"), step=40)
    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    x = torch.randint(0, 50280, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = olmo.eval()(x).logits, hf(x).logits
    return out, olmo, expected, got


@pytest.mark.parametrize("overrides", [{}, {"weight_tying": False, "clip_qkv": 0.5}])
def test_converted_logits_equal_olmo(tmp_path, overrides):
    torch.set_num_threads(1)
    out, _, expected, got = _logits_match(tmp_path, **overrides)
    assert expected.abs().max() > 0.1
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    meta = (out / "checkpoint.json").read_text()
    assert '"has_optimizer_state": true' in meta and '"global_step": 40' in meta


def test_optimizer_moments_follow_the_split(tmp_path):
    from safetensors.torch import load_file

    out, olmo, _, _ = _logits_match(tmp_path)
    opt = torch.load(tmp_path / "orig" / "optim.pt", weights_only=True)
    names = opt["param_groups"][0]["param_names"]
    att = opt["state"][names.index("transformer.blocks.1.att_proj.weight")]["exp_avg"]
    ff = opt["state"][names.index("transformer.blocks.0.ff_proj.weight")]["exp_avg_sq"]
    moments = load_file(out / "optimizer.safetensors")
    assert int(moments["step"]) == 3
    torch.testing.assert_close(moments["exp_avg/model.layers.1.self_attn.k_proj.weight"], att[32:64])
    torch.testing.assert_close(moments["exp_avg_sq/model.layers.0.mlp.up_proj.weight"], ff[:64])
    torch.testing.assert_close(moments["exp_avg_sq/model.layers.0.mlp.gate_proj.weight"], ff[64:])
    assert "exp_avg/lm_head.weight" not in moments  # tied to the embedding


def test_wrong_swiglu_order_would_be_caught(tmp_path):
    """The logits test can fail: swapping up/gate halves changes the output."""
    _, olmo, expected, _ = _logits_match(tmp_path)
    state = olmo.state_dict()
    w = state["transformer.blocks.0.ff_proj.weight"]
    up, gate = w.chunk(2, dim=0)
    state["transformer.blocks.0.ff_proj.weight"] = torch.cat([gate, up])
    olmo.load_state_dict(state)
    with torch.no_grad():
        swapped = olmo(torch.randint(0, 50280, (2, 24), generator=torch.Generator().manual_seed(1))).logits
    assert (swapped - expected).abs().max() > 1e-3


def test_unknown_parameter_is_refused():
    arch = load_catalog().family("tiny").architecture
    with pytest.raises(UserError, match="unexpected parameter"):
        list(olmo_to_hf("transformer.blocks.0.attn_norm.weight", torch.zeros(64), arch))


class Gadget:
    """Not a tensor: loading it needs full unpickling."""


def test_pickle_needs_trust(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"x": Gadget()}, path)
    with pytest.raises(UserError, match="--trust-pickle"):
        safe_torch_load(path)
    assert isinstance(safe_torch_load(path, trust_pickle=True)["x"], Gadget)
    path.write_bytes(b"\x80\x04garbage" * 10)
    with pytest.raises(UserError, match="corrupted"):
        safe_torch_load(path)


@pytest.mark.parametrize("name", ["../evil.pt", "/etc/passwd", "a/../../b", "..\\x", ""])
def test_hostile_names(name):
    with pytest.raises(UserError, match="refusing remote file name"):
        safe_name(name)
    assert safe_name("sub/model.pt") == "sub/model.pt"


def test_the_data_position_comes_from_train_pt_not_step_times_rows(tmp_path):
    """OLMo resumes its data stream at train.pt's counter (instances seen in its epoch), which is the truth
    where it disagrees with step × rows (a run whose rows per step changed, as OLMo-7B's did)."""
    import json

    src, _ = write_original_checkpoint(tmp_path / "orig", step=40, global_batch_size=4)
    train = torch.load(src / "train.pt", weights_only=False)
    train.update(epoch=1, global_train_examples_seen_this_epoch=173)
    torch.save(train, src / "train.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = convert_original(src, tmp_path / "hf", family=load_catalog().family("tiny"), step=40)
    meta = json.loads((out / "checkpoint.json").read_text())
    assert meta["data_position"] == {"epoch": 1, "instances_seen": 173, "source": "train.pt"}
    assert meta["global_batch_size"] == 4  # rows per step from the checkpoint's own config

    (src / "train.pt").unlink()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = convert_original(src, tmp_path / "hf2", family=load_catalog().family("tiny"), step=40)
    meta = json.loads((out / "checkpoint.json").read_text())
    assert meta["data_position"] == {"epoch": 0, "instances_seen": 160, "source": "step x rows"}
    assert any("no data-stream counter" in str(w.message) for w in caught)


def test_ddp_optimizer_state_names_are_read(tmp_path):
    """optim.pt of a DDP-trained OLMo names parameters through the wrapper (`module.`)."""
    from safetensors.torch import load_file

    src, _ = write_original_checkpoint(tmp_path / "orig")
    opt = torch.load(src / "optim.pt", weights_only=True)
    for group in opt["param_groups"]:
        group["param_names"] = [f"module.{n}" for n in group["param_names"]]
    torch.save(opt, src / "optim.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = convert_original(src, tmp_path / "hf", family=load_catalog().family("tiny"), step=40)
    assert "exp_avg/model.layers.1.self_attn.k_proj.weight" in load_file(out / "optimizer.safetensors")
