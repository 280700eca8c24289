"""The training loop on a tiny model in one CPU process: files, step-0 scores, optimizer continuation."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.errors import UserError
from harness.rundir import read_table
from injection.checkpoints.olmo import param_groups
from injection.engine.batches import InjectedBatches
from injection.engine.evaluate import evaluate_probes
from injection.engine.loop import run_training
from injection.engine.plan import make_plan
from injection.engine.zero import build_engine, init_distributed, restore_master_weights, restore_moments
from injection.lr import lr_for_update
from tests.helpers.engine import synthetic_config, synthetic_inputs, tiny_model, write_tiny_checkpoint


def _cfg(tmp_path, **kw):
    base = dict(total_steps=3, micro_batch=1, output_dir=tmp_path / "run", checkpoint_interval=2, log_flush_steps=2)
    return synthetic_config(tmp_path / "ck", **{**base, **kw})


def _update(model, opt, batch: torch.Tensor, micro: int, lr: float) -> None:
    """One plain-torch update with the engine's rules: OLMo's objective (the summed loss over rows × L; HF's mean
    is over rows × (L − 1)), clipping at 1.0, AdamW at `lr`."""
    for g in opt.param_groups:
        g["lr"] = lr
    parts = batch.split(micro)
    L = batch.shape[1]
    for m in parts:
        (model(input_ids=m, labels=m).loss * (L - 1) / L / len(parts)).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad()


def _reference_params(ckpt_dir: Path, inputs, steps: int, micro: int, warmup: int = 0):
    """The same updates with a plain torch AdamW loop (no DeepSpeed): moments from the checkpoint, or rebuilt
    from `warmup` updates at learning rate 0 on the batches before it, AdamW's step count then set to S."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(ckpt_dir), dtype=torch.float32)
    opt = torch.optim.AdamW(param_groups(model, 0.1), lr=1.0, betas=(0.9, 0.95), eps=1e-8)
    ck = inputs.checkpoint
    if warmup:
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        for j in range(-warmup, 0):
            _update(model, opt, torch.from_numpy(inputs.stream.batch(j)[0]), micro, 0.0)
        assert all(torch.equal(before[n], p) for n, p in model.named_parameters())  # lr 0: nothing moves
        for state in opt.state.values():
            state["step"] = torch.tensor(float(ck.step))
    else:
        saved = load_file(str(ckpt_dir / "optimizer.safetensors"))
        for name, p in model.named_parameters():
            opt.state[p] = {
                "step": saved["step"].clone().float(),
                "exp_avg": saved[f"exp_avg/{name}"].clone(),
                "exp_avg_sq": saved[f"exp_avg_sq/{name}"].clone(),
            }
    batches = InjectedBatches(inputs.stream, inputs.injections, inputs.records, prefetch=0)
    for k in range(steps):
        _update(model, opt, torch.from_numpy(batches.get(k)), micro, lr_for_update(ck.lr_schedule, ck.step, k))
    return dict(model.named_parameters())


def test_run_writes_the_run_directory_and_continues_the_optimizer(tmp_path):
    torch.set_num_threads(1)
    ck = write_tiny_checkpoint(tmp_path / "ck", with_optimizer=True)
    cfg = _cfg(tmp_path)
    inputs = synthetic_inputs(ck)
    run_dir = run_training(cfg, inputs, progress=False)

    probes = read_table(run_dir / "probes.parquet")
    assert sorted(probes.step.unique()) == [0, 1, 2, 3]
    assert len(probes) == 4 * len(inputs.probe_items)
    # step 0 is the checkpoint itself
    from transformers import AutoModelForCausalLM

    s0 = evaluate_probes(AutoModelForCausalLM.from_pretrained(str(ck)), inputs.probe_items)
    np.testing.assert_allclose(probes[probes.step == 0].logprob.to_numpy(), s0["logprob"], atol=1e-6)
    assert not np.allclose(probes[probes.step == 3].logprob.to_numpy(), s0["logprob"])

    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["tokens_per_step"] == 4 * 32
    assert manifest["start_step"] == 1000 and manifest["config_hash"] == cfg.config_hash()
    assert (run_dir / "config.yaml").is_file()
    inj = read_table(run_dir / "injections.parquet")
    assert inj.step.tolist() == [0] * 4 + [3] * 2 or set(inj.step) <= {0, 3}
    metrics = read_table(run_dir / "train_metrics.parquet")
    assert metrics.step.tolist() == [1, 2, 3]
    assert (metrics.eval_s > 0).all()  # eval_interval 1: probes scored after every update, and timed
    assert manifest["runtime"]["distributed_backend"] == ("nccl" if torch.cuda.is_available() else "gloo")
    assert metrics.lr.tolist() == pytest.approx(
        [lr_for_update(inputs.checkpoint.lr_schedule, 1000, k) for k in range(3)]
    )
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("step*")) == ["step2", "step3"]

    # the final weights equal a plain-torch AdamW continuation from the same moments
    final = torch.load(run_dir / "checkpoints" / "step3" / "mp_rank_00_model_states.pt", weights_only=False)["module"]
    ref = _reference_params(ck, inputs, 3, micro=1)
    for name, p in ref.items():
        torch.testing.assert_close(final[name].cpu(), p.detach(), atol=2e-6, rtol=1e-5)


def test_the_manifest_on_disk_follows_every_checkpoint(tmp_path):
    """The manifest hook writes manifest.json when the run starts, after each checkpoint (with the step it was
    saved at as the last step reached) and at the end."""
    from injection.engine.hooks import Hook

    seen = {}

    class ReadManifest(Hook):
        def on_start(self, run, k0):
            seen["start"] = json.loads((run.run_dir / "manifest.json").read_text())

        def on_update(self, run, step, metrics):
            seen[step] = json.loads((run.run_dir / "manifest.json").read_text())

    ck = write_tiny_checkpoint(tmp_path / "ck", with_optimizer=True)
    run_dir = run_training(_cfg(tmp_path), synthetic_inputs(ck), progress=False, hooks=[ReadManifest()])
    assert seen["start"]["status"] == "running" and seen["start"]["last_step"] == 0
    assert "last_checkpoint" not in seen[2] and (seen[3]["last_step"], seen[3]["last_checkpoint"]) == (2, 2)
    final = json.loads((run_dir / "manifest.json").read_text())
    assert (final["status"], final["last_step"], final["last_checkpoint"]) == ("complete", 3, 3)


def test_existing_run_directory_is_refused(tmp_path):
    ck = write_tiny_checkpoint(tmp_path / "ck")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "manifest.json").write_text(json.dumps({"config_hash": "0123456789abcdef"}))
    with pytest.raises(UserError, match="different run"):
        run_training(_cfg(tmp_path), synthetic_inputs(ck), progress=False)
    (run_dir / "manifest.json").write_text(json.dumps({"config_hash": _cfg(tmp_path).config_hash()}))
    with pytest.raises(UserError, match="--resume"):
        run_training(_cfg(tmp_path), synthetic_inputs(ck), progress=False)


def test_batch_not_divisible_is_refused(tmp_path):
    ck = write_tiny_checkpoint(tmp_path / "ck")
    with pytest.raises(UserError, match="not divisible"):
        run_training(_cfg(tmp_path, micro_batch=3), synthetic_inputs(ck), progress=False)


def test_only_linear_weights_decay():
    model = tiny_model(tie=True)
    decay, no_decay = param_groups(model, 0.1)
    decayed = {id(p) for p in decay["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in decayed}
    assert "model.embed_tokens.weight" not in names
    assert any(n.endswith("q_proj.weight") for n in names) and decay["weight_decay"] == 0.1
    assert no_decay["weight_decay"] == 0.0


#: Every throughput lever that runs on a CPU at once; the LM-head chunks (20 positions) do not divide a row's 31.
LEVERS = {"attention": "eager", "loss_chunk_tokens": 20, "fused_adamw": True}


@pytest.mark.parametrize("kernels", [{}, LEVERS], ids=["plain", "levers"])
@pytest.mark.parametrize("stage", [0, 2, 3, "zero2_offload", "zero3_offload"])
def test_zero_stages_continue_the_optimizer_like_plain_adamw(tmp_path, stage, kernels):
    """Moments restored through DeepSpeed's fragment API under ZeRO-0/2/3 (ZeRO-1: the test above) and the
    shipped ZeRO-3 config that offloads the optimizer and parameters; ZeRO-3 also evaluates probes through its
    partitioned modules. The throughput levers (`kernels:`) leave the result where the plain path puts it."""
    torch.set_num_threads(1)
    ck = write_tiny_checkpoint(tmp_path / "ck", with_optimizer=True)
    if isinstance(stage, str):
        ds = stage
    else:
        ds = tmp_path / "ds.json"
        ds.write_text(json.dumps({"zero_optimization": {"stage": stage}}))
    cfg = _cfg(tmp_path, total_steps=2, deepspeed_config=str(ds), checkpoint_interval=0, kernels=kernels)
    inputs = synthetic_inputs(ck)
    run_dir = run_training(cfg, inputs, progress=False)
    probes = read_table(run_dir / "probes.parquet")

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(ck))
    model.load_state_dict({k: v.detach() for k, v in _reference_params(ck, inputs, 2, micro=1).items()}, strict=False)
    expected = evaluate_probes(model, inputs.probe_items)
    np.testing.assert_allclose(probes[probes.step == 2].logprob.to_numpy(), expected["logprob"], atol=1e-5)


@pytest.mark.parametrize("stage", [1, 3])
def test_bf16_keeps_the_checkpoints_fp32_master_weights(tmp_path, stage):
    """DeepSpeed's bf16 optimizer would start from bf16-rounded weights; the engine restores the fp32 ones."""
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state
    from safetensors.torch import load_file

    torch.set_num_threads(1)
    ck = write_tiny_checkpoint(tmp_path / "ck", with_optimizer=True)
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"zero_optimization": {"stage": stage}}))
    cfg = _cfg(tmp_path, precision="bf16", deepspeed_config=str(ds))
    rank, world = init_distributed()
    inputs = synthetic_inputs(ck)
    engine = build_engine(cfg, inputs.checkpoint, make_plan(cfg, inputs.checkpoint, world, []), rank)
    assert restore_master_weights(engine, ck) > 0
    restore_moments(engine, ck / "optimizer.safetensors")
    weights, moments = load_file(str(ck / "model.safetensors")), load_file(str(ck / "optimizer.safetensors"))
    for name, p in engine.module.named_parameters():
        assert p.dtype == torch.bfloat16
        torch.testing.assert_close(
            safe_get_full_fp32_param(p).cpu().reshape(-1), weights[name].reshape(-1), atol=0, rtol=0
        )
        torch.testing.assert_close(
            safe_get_full_optimizer_state(p, "exp_avg").cpu().reshape(-1),
            moments[f"exp_avg/{name}"].reshape(-1),
            atol=0,
            rtol=0,
        )


def test_zero3_builds_the_model_partitioned(tmp_path, capsys, monkeypatch):
    """Under ZeRO-3, from_pretrained runs inside deepspeed.zero.Init (via accelerate), so no rank ever holds
    the whole model; without it, every rank would load it whole first."""
    import deepspeed

    entered = []
    real_init = deepspeed.zero.Init

    class RecordingInit(real_init):
        def __init__(self, *args, **kwargs):
            entered.append(True)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(deepspeed.zero, "Init", RecordingInit)
    torch.set_num_threads(1)
    ck = write_tiny_checkpoint(tmp_path / "ck", with_optimizer=True)
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    rank, world = init_distributed()
    cfg, inputs = _cfg(tmp_path, deepspeed_config=str(ds)), synthetic_inputs(ck)
    engine = build_engine(cfg, inputs.checkpoint, make_plan(cfg, inputs.checkpoint, world, []), rank)
    assert entered, "the model was not built under deepspeed.zero.Init"
    assert "without the `accelerate` package" not in capsys.readouterr().err
    assert all(hasattr(p, "ds_id") for p in engine.module.parameters())


def test_moment_warmup_rebuilds_adamw_state_without_moving_the_weights(tmp_path):
    """A checkpoint without optimizer state: K updates at learning rate 0 on the K batches before it rebuild the
    moments, AdamW's step count is set to S, and the run then continues like a plain-torch reference that does
    the same; without the option the moments are fresh (and the result differs)."""
    torch.set_num_threads(1)
    ck = write_tiny_checkpoint(tmp_path / "ck", with_optimizer=False, step=1000)
    inputs = synthetic_inputs(ck)
    run_dir = run_training(
        _cfg(tmp_path, total_steps=2, checkpoint_interval=2, optimizer={"moment_warmup_steps": 3}),
        inputs,
        progress=False,
    )
    manifest = json.loads((run_dir / "manifest.json").read_text())
    state = manifest["optimizer_state"]
    assert state["moments"] == "rebuilt" and state["warmup_steps"] == 3 and state["adam_step"] == 1000
    assert "global steps 997…999" in state["batches"]
    final = torch.load(run_dir / "checkpoints" / "step2" / "mp_rank_00_model_states.pt", weights_only=False)["module"]
    ref = _reference_params(ck, inputs, 2, micro=1, warmup=3)
    for name, p in ref.items():
        torch.testing.assert_close(final[name].cpu(), p.detach(), atol=2e-6, rtol=1e-5)
    fresh_run = run_training(
        _cfg(tmp_path, total_steps=2, checkpoint_interval=2, output_dir=str(tmp_path / "fresh")),
        synthetic_inputs(ck),
        progress=False,
    )
    fresh_final = torch.load(fresh_run / "checkpoints" / "step2" / "mp_rank_00_model_states.pt", weights_only=False)[
        "module"
    ]
    assert max(float((fresh_final[n] - final[n]).abs().max()) for n in final) > 1e-4
