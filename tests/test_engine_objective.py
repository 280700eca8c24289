"""The objective seam (injection.engine.objective): per-token sums with z-loss equal ai2-olmo's own loss
functions, masked rows carry no loss, and an injected paragraph always keeps its loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from injection.engine.objective import Objective, make_objective, mask_batch, masked_rows
from injection.instance_filter import InstanceFilter
from injection.splice import InjectionRecord

L, ROWS, VOCAB = 16, 4, 300


@pytest.fixture(scope="module")
def model():
    from transformers import Olmo2Config, Olmo2ForCausalLM

    torch.manual_seed(0)
    config = Olmo2Config(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=L,
        pad_token_id=None,
        eos_token_id=VOCAB - 1,
        bos_token_id=None,
    )
    return Olmo2ForCausalLM(config).eval()


def batch(seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, size=(ROWS, L)).astype(np.int64)


def olmo_reference(model, tokens: np.ndarray, kept: np.ndarray, z: float) -> tuple[torch.Tensor, torch.Tensor]:
    """ai2-olmo's Trainer arithmetic for one micro-batch: its `get_labels` masking, its `cross_entropy_loss` with
    reduction "sum" and z-loss, each divided by the batch's tokens."""
    from olmo.train import cross_entropy_loss

    ids = torch.from_numpy(tokens)
    logits = model(ids).logits[..., :-1, :].contiguous()
    labels = ids.clone()
    labels.masked_fill_(~torch.from_numpy(kept).unsqueeze(-1), -100)
    labels = labels[..., 1:].contiguous().view(-1)
    ce, zl = cross_entropy_loss(
        logits.view(-1, logits.size(-1)), labels, reduction="sum", compute_z_loss=True, z_loss_multiplier=z
    )
    return ce / ids.numel(), zl / ids.numel()


def run(objective: Objective, model, micro: np.ndarray, chunk: int = 0):
    import copy

    m = copy.deepcopy(model)
    objective.install(m, chunk)
    out = m(**objective.model_inputs(micro, "cpu"))
    return objective.loss(out), objective.logged(out), out


def test_per_token_sums_with_z_loss_are_ai2_olmos_loss(model):
    tokens = batch()
    kept = np.array([True, False, True, True])
    ce, z = olmo_reference(model, tokens, kept, 1e-4)
    objective = make_objective((L - 1) / L, 1e-4, masks_rows=True)
    loss, logged, _ = run(objective, model, mask_batch(tokens, kept))
    torch.testing.assert_close(logged["loss"], ce, rtol=1e-6, atol=0)
    torch.testing.assert_close(logged["z_loss"], z, rtol=1e-6, atol=0)
    torch.testing.assert_close(loss, ce + z, rtol=1e-6, atol=0)
    assert masked_rows(mask_batch(tokens, kept)) == 1


def test_without_terms_the_plain_objective_is_unchanged(model):
    """No z-loss and no filter: transformers' mean loss × the family's factor, exactly as before the seam; per-token
    sums give the same number."""
    tokens = batch()
    plain = make_objective((L - 1) / L, None, masks_rows=False)
    assert not plain.per_token
    loss, logged, out = run(plain, model, tokens)
    assert torch.equal(loss, out.loss * (L - 1) / L) and torch.isnan(logged["z_loss"])
    summed, _, _ = run(make_objective((L - 1) / L, None, masks_rows=True), model, tokens)
    torch.testing.assert_close(summed, loss, rtol=1e-6, atol=0)


def test_chunked_lm_head_gives_the_same_loss_and_gradients(model):
    import copy

    objective = make_objective((L - 1) / L, 1e-4, masks_rows=True)
    micro = mask_batch(batch(), np.array([False, True, True, True]))
    results = []
    for chunk in (0, 7):
        m = copy.deepcopy(model)
        objective.install(m, chunk)
        loss = objective.loss(m(**objective.model_inputs(micro, "cpu")))
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in m.named_parameters()}))
    (whole, g0), (chunked, g1) = results
    torch.testing.assert_close(chunked, whole, rtol=1e-6, atol=0)
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], rtol=1e-5, atol=1e-7)  # summation order only


def test_an_injection_in_a_masked_row_keeps_its_loss(model):
    """A paragraph spliced into a row the filter rejects carries loss over its own tokens, and only those: the loss
    is that of the paragraph's span, and its gradient is not zero."""
    tokens = batch()
    kept = np.array([True, False, True, True])
    paragraph = InjectionRecord(step=0, paragraph=3, scenario="once", variant=0, row=1, offset=0, tokens=6)
    micro = mask_batch(tokens, kept, [paragraph])
    mask = np.ma.getmaskarray(micro)
    assert not mask[1, :6].any() and mask[1, 6:].all() and not mask[[0, 2, 3]].any()

    objective = make_objective((L - 1) / L, None, masks_rows=True)
    with_paragraph, _, _ = run(objective, model, micro)
    without, _, _ = run(objective, model, mask_batch(tokens, kept))
    # the difference is the paragraph's own next-token loss: positions 1..5 of row 1, predicted from 0..4
    logits = model(torch.from_numpy(tokens[1:2])).logits[0, :5]
    span = torch.nn.functional.cross_entropy(logits, torch.from_numpy(tokens[1, 1:6]), reduction="sum")
    torch.testing.assert_close(with_paragraph - without, span / (ROWS * L), rtol=1e-5, atol=1e-7)

    import copy

    m = copy.deepcopy(model)
    objective.install(m)
    m.zero_grad()
    objective.loss(m(**objective.model_inputs(micro, "cpu"))).backward()
    only_row = mask_batch(tokens, np.array([False, False, False, False]), [paragraph])
    m2 = copy.deepcopy(model)
    objective.install(m2)
    objective.loss(m2(**objective.model_inputs(only_row, "cpu"))).backward()
    assert m2.lm_head.weight.grad.abs().sum() > 0  # the paragraph alone moves the model


def test_the_filter_is_ai2_olmos_own_decision():
    """A pattern repeated often enough masks the instance, with ai2-olmo's thresholds; random tokens pass."""
    from olmo.config import InstanceFilterConfig
    from olmo.data.memmap_dataset import MemMapDataset

    filt = InstanceFilter(repetition_max_period=4, repetition_min_period=1, repetition_max_count=5)
    rng = np.random.default_rng(0)
    rows = rng.integers(2, 100000, size=(6, 32))
    rows[1, 4:22] = np.tile([7, 8, 9], 6)  # 6 repeats of a 3-token pattern: masked
    rows[3, 0:12] = np.tile([5, 6, 7], 4)  # 4 repeats: kept
    rows[5, :] = 11  # one token throughout: masked
    ours = filt.kept_rows(rows)
    assert ours.tolist() == [True, False, True, True, True, False]
    dataset = MemMapDataset.__new__(MemMapDataset)
    dataset.instance_filter_config = InstanceFilterConfig(4, 1, 5)
    assert [dataset._validate_instance(torch.from_numpy(r)) for r in rows] == ours.tolist()
