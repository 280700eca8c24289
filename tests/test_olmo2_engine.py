"""An OLMo 2 checkpoint inside the engine: DeepSpeed's bf16 master weights are the checkpoint's fp32 values (as the
original run's FSDP mixed precision kept them), AdamW's groups decay what OLMo 2 decayed, and the objective the
plan builds is the checkpoint's (z-loss, repetition filter), unless the configuration changes it."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from injection.checkpoints import olmo2
from injection.checkpoints.catalog import load_catalog
from injection.engine.plan import make_plan
from injection.engine.zero import build_engine, init_distributed, restore_master_weights, restore_moments
from tests.helpers.engine import synthetic_config, synthetic_inputs
from tests.helpers.olmo_original import write_original_olmo2_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("olmo2")
    src, _ = write_original_olmo2_checkpoint(tmp / "orig")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return olmo2.convert_original(src, tmp / "ck", family=load_catalog().family("olmo2-1b"), step=40)


def _cfg(tmp_path, checkpoint, **kw):
    base = dict(total_steps=2, micro_batch=1, output_dir=tmp_path / "run", checkpoint_interval=2)
    return synthetic_config(checkpoint, **{**base, **kw})


def test_bf16_keeps_the_olmo2_checkpoints_fp32_master_weights_and_its_groups(tmp_path, checkpoint):
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state
    from safetensors.torch import load_file

    torch.set_num_threads(1)
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"zero_optimization": {"stage": 2}}))
    cfg = _cfg(tmp_path, checkpoint, precision="bf16", deepspeed_config=str(ds))
    rank, world = init_distributed()
    inputs = synthetic_inputs(checkpoint)
    engine = build_engine(cfg, inputs.checkpoint, make_plan(cfg, inputs.checkpoint, world, []), rank)
    assert restore_master_weights(engine, checkpoint) > 0
    restore_moments(engine, checkpoint / "optimizer.safetensors")
    weights, moments = (
        load_file(str(checkpoint / "model.safetensors")),
        load_file(str(checkpoint / "optimizer.safetensors")),
    )
    for name, p in engine.module.named_parameters():
        assert p.dtype == torch.bfloat16
        torch.testing.assert_close(
            safe_get_full_fp32_param(p).cpu().reshape(-1), weights[name].reshape(-1), atol=0, rtol=0
        )
        torch.testing.assert_close(
            safe_get_full_optimizer_state(p, "exp_avg_sq").cpu().reshape(-1),
            moments[f"exp_avg_sq/{name}"].reshape(-1),
            atol=0,
            rtol=0,
        )
    # ZeRO keeps the groups the family made, in order, each with its own weight decay
    names = {id(p): n for n, p in engine.module.named_parameters()}
    decay = {
        names[id(p)]: group["weight_decay"]
        for params, group in zip(engine.optimizer.bit16_groups, engine.optimizer.optimizer.param_groups)
        for p in params
    }
    assert decay["model.embed_tokens.weight"] == 0.0 and decay["lm_head.weight"] == 0.1
    assert decay["model.layers.0.post_attention_layernorm.weight"] == decay["model.norm.weight"] == 0.1


def test_the_plan_takes_the_checkpoints_objective_unless_configured(tmp_path, checkpoint):
    inputs = synthetic_inputs(checkpoint)
    ckpt = inputs.checkpoint
    plan = make_plan(_cfg(tmp_path, checkpoint), ckpt, 1, [])
    assert plan.objective.per_token and plan.objective.z_loss == 1e-4
    assert plan.objective.denominator((2, 64)) == 128.0  # OLMo divides by rows x L, masked or not
    off = _cfg(tmp_path, checkpoint, objective={"z_loss_multiplier": 0, "instance_filter": False})
    plain = make_plan(off, ckpt, 1, []).objective
    assert not plain.per_token and plain.z_loss is None
    own = make_plan(_cfg(tmp_path, checkpoint, objective={"z_loss_multiplier": 1e-5}), ckpt, 1, []).objective
    assert own.z_loss == 1e-5
    # the token-unit schedule continues from train.pt's token count: update k uses lr(T + (k + 1) rows x L)
    from injection.lr import learning_rate

    assert plan.lrs[1] == learning_rate(ckpt.lr_schedule, ckpt.tokens_seen + 2 * ckpt.tokens_per_step)


@pytest.mark.slow
def test_an_exported_checkpoint_carries_the_token_count_on(tmp_path, checkpoint):
    """A run's export at step S + k has seen T + k × rows × L tokens, so a token-unit schedule continues from it
    where the first run left off."""
    from injection.engine.hooks import ExportHook
    from injection.engine.inputs import read_checkpoint
    from injection.engine.loop import run_training

    torch.set_num_threads(1)
    inputs = synthetic_inputs(checkpoint)
    export = ExportHook([2], lambda step: tmp_path / f"step{step}")
    run_training(_cfg(tmp_path, checkpoint, total_steps=3), inputs, progress=False, hooks=[export])
    start = inputs.checkpoint
    exported = read_checkpoint(str(tmp_path / f"step{start.step + 2}"))
    assert exported.tokens_seen == start.tokens_seen + 2 * start.tokens_per_step
    assert exported.objective == start.objective and exported.kind == "olmo2"
    first = make_plan(_cfg(tmp_path, checkpoint, total_steps=3), start, 1, [])
    second = make_plan(_cfg(tmp_path, checkpoint, total_steps=1), exported, 1, [])
    assert second.lrs[0] == first.lrs[2]
