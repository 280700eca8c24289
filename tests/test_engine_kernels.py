"""The throughput levers compute what the plain path computes: the chunked LM-head loss against transformers'
own loss and gradients (OLMo and GPT-NeoX), a non-finite loss under it, torch.compile, and a clear error for an
attention kernel whose package is missing. (The levers inside a full ZeRO-0/2/3 run: test_engine_train.py.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harness.errors import UserError
from harness.rundir import read_table
from injection.engine.kernels import IGNORE_INDEX, chunked_lm_loss, use_chunked_loss
from injection.engine.loop import run_training
from tests.helpers.engine import synthetic_config, synthetic_inputs, tiny_model, write_tiny_checkpoint


def _gpt_neox():
    import transformers

    cfg = transformers.GPTNeoXConfig(
        vocab_size=200,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=64,
        rotary_pct=0.25,
    )
    torch.manual_seed(1)
    return transformers.GPTNeoXForCausalLM(cfg)


def _grads(model) -> dict[str, torch.Tensor]:
    out = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out


@pytest.mark.parametrize("make", [lambda: tiny_model(0, tie=True), _gpt_neox], ids=["olmo-tied", "gpt-neox"])
@pytest.mark.parametrize("chunk", [7, 29, 1000])
def test_chunked_loss_equals_transformers_loss_and_gradients(make, chunk):
    torch.set_num_threads(1)
    model = make().train()
    vocab = model.config.vocab_size
    ids = torch.randint(2, vocab, (3, 29), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[1, 5:9] = IGNORE_INDEX  # left out of the sum and the count alike

    reference = model(input_ids=ids, labels=labels).loss
    reference.backward()
    expected = _grads(model)

    use_chunked_loss(model, chunk)
    out = model(input_ids=ids, labels=labels)
    assert out.logits is None  # no full-vocabulary logits were returned (nor kept for the backward)
    out.loss.backward()
    got = _grads(model)
    torch.testing.assert_close(out.loss, reference, rtol=1e-6, atol=1e-6)
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-7, msg=name)
    # without labels the model is the original one (logits for every position)
    assert model(input_ids=ids).logits.shape == (3, 29, vocab)


def test_chunked_loss_differs_when_a_chunk_is_lost():
    """The comparison above can fail: dropping the last chunk changes the loss."""
    model = tiny_model(0)
    ids = torch.randint(2, 256, (2, 20), generator=torch.Generator().manual_seed(0))
    hidden = model.model(input_ids=ids).last_hidden_state
    full = chunked_lm_loss(hidden, ids, model.lm_head, 8)
    truncated = chunked_lm_loss(hidden[:, :17], ids[:, :17], model.lm_head, 8)
    assert not torch.isclose(full, truncated)


def _cfg(tmp_path, **kw):
    base = dict(total_steps=3, micro_batch=2, output_dir=tmp_path / "run", checkpoint_interval=0, log_flush_steps=1)
    return synthetic_config(tmp_path / "ck", **{**base, **kw})


def test_a_non_finite_loss_is_skipped_under_the_chunked_loss(tmp_path):
    from tests.test_engine_faults import PoisonLoss

    torch.set_num_threads(1)
    ck = write_tiny_checkpoint(tmp_path / "ck", with_optimizer=True)
    cfg = _cfg(tmp_path, nonfinite="skip", kernels={"loss_chunk_tokens": 16})
    run_dir = run_training(cfg, synthetic_inputs(ck), progress=False, hooks=[PoisonLoss(update=1)])
    metrics = read_table(run_dir / "train_metrics.parquet")
    assert metrics.skipped.tolist() == [False, True, False]
    probes = read_table(run_dir / "probes.parquet")
    before, after = (probes[probes.step == s].logprob.to_numpy() for s in (1, 2))
    np.testing.assert_array_equal(before, after)  # the skipped update moved nothing


@pytest.mark.slow
def test_compiled_model_gives_the_plain_probe_log(tmp_path):
    from torch._dynamo.utils import counters

    torch.set_num_threads(1)
    ck = write_tiny_checkpoint(tmp_path / "ck", with_optimizer=True)
    logs = {}
    for name, kernels in (("plain", {}), ("compiled", {"compile": True})):
        counters.clear()
        cfg = _cfg(tmp_path, total_steps=2, output_dir=str(tmp_path / name), kernels=kernels)
        logs[name] = read_table(run_training(cfg, synthetic_inputs(ck), progress=False) / "probes.parquet")
        assert (counters["stats"]["unique_graphs"] > 0) == (name == "compiled")  # the training forward compiled
    np.testing.assert_allclose(logs["compiled"].logprob, logs["plain"].logprob, atol=2e-5)


def test_missing_attention_package_is_named(tmp_path):
    pytest.importorskip("transformers")
    try:
        import flash_attn  # noqa: F401

        pytest.skip("flash-attn is installed here")
    except ImportError:
        pass
    ck = write_tiny_checkpoint(tmp_path / "ck")
    with pytest.raises(UserError, match="kernels.attention: flash_attention_2 cannot be used here"):
        run_training(_cfg(tmp_path, kernels={"attention": "flash_attention_2"}), synthetic_inputs(ck), progress=False)
    assert not (tmp_path / "run" / "probes.parquet").exists()


def test_kernel_fields_are_validated(tmp_path):
    with pytest.raises(UserError, match=r"kernels.loss_chunk_tokens.*>= 0"):
        _cfg(tmp_path, kernels={"loss_chunk_tokens": -1})
    with pytest.raises(UserError, match=r"kernels.attention"):
        _cfg(tmp_path, kernels={"attention": "fast"})


def test_chunked_loss_in_bf16_agrees_with_transformers_loss():
    """Under bf16 weights (the GPU runs) both paths upcast logits to fp32 for the loss; they agree to bf16's
    rounding, and the gradients point the same way."""
    torch.set_num_threads(1)
    model = tiny_model(0).train().to(torch.bfloat16)
    ids = torch.randint(2, 256, (2, 30), generator=torch.Generator().manual_seed(3))
    reference = model(input_ids=ids, labels=ids).loss
    reference.backward()
    expected = _grads(model)
    use_chunked_loss(model, 16)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    got = _grads(model)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, reference.float(), rtol=2e-3, atol=0)
    flat = lambda grads: torch.cat([g.float().flatten() for g in grads.values()])  # noqa: E731
    assert torch.nn.functional.cosine_similarity(flat(got), flat(expected), dim=0) > 0.999
