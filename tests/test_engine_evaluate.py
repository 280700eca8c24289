import numpy as np
import pytest
import torch

from injection.engine.evaluate import ProbeItem, evaluate_probes, plan_batches
from tests.helpers.engine import brute_force_scores, synthetic_probes, tiny_model


@pytest.mark.parametrize("tie", [False, True])
@pytest.mark.parametrize("max_tokens", [20, 4096])
def test_batched_scores_equal_brute_force(tie, max_tokens):
    torch.set_num_threads(1)
    model = tiny_model(seed=3, tie=tie)
    items = synthetic_probes(n_paragraphs=5, per_kind=2, seed=1)
    scores = evaluate_probes(model, items, max_tokens=max_tokens)
    for i, it in enumerate(items):
        mean, total, first, em = brute_force_scores(model, it)
        assert scores["logprob"][i] == pytest.approx(mean, abs=1e-5)
        assert scores["logprob_sum"][i] == pytest.approx(total, abs=1e-5)
        assert scores["first_logprob"][i] == pytest.approx(first, abs=1e-5)
        assert bool(scores["exact_match"][i]) == em
    assert scores["logprob"].dtype == np.float32 and scores["exact_match"].dtype == bool
    assert (scores["first_rank"] >= 0).all() and scores["first_rank"].max() > 0


def test_exact_match_and_rank_when_the_model_predicts_the_target():
    torch.set_num_threads(1)
    model = tiny_model(seed=0)
    ids = [5, 9, 11, 13]
    with torch.no_grad():
        greedy = []
        cur = list(ids)
        for _ in range(3):
            nxt = int(model(input_ids=torch.tensor([cur])).logits[0, -1].argmax())
            greedy.append(nxt)
            cur.append(nxt)
    hit = ProbeItem(0, "once", "mem", 0, tuple(ids + greedy), len(ids), len(ids) + 3)
    miss = ProbeItem(0, "once", "mem", 1, tuple(ids + greedy[:2] + [(greedy[2] + 1) % 256]), len(ids), len(ids) + 3)
    s = evaluate_probes(model, [hit, miss])
    assert s["exact_match"].tolist() == [True, False]
    assert s["first_rank"].tolist() == [0, 0]
    assert s["logprob"][1] < s["logprob"][0]


def test_batches_are_sorted_and_bounded():
    items = synthetic_probes(n_paragraphs=6, per_kind=3, seed=2)
    batches = plan_batches(items, max_tokens=60)
    assert sorted(i for b in batches for i in b) == list(range(len(items)))
    for b in batches:
        assert max(len(items[i].input_ids) for i in b) * len(b) <= 60 or len(b) == 1
    lengths = [len(items[i].input_ids) for b in batches for i in b]
    assert lengths == sorted(lengths)


def test_target_span_is_checked():
    with pytest.raises(ValueError, match="target span"):
        ProbeItem(0, "once", "mem", 0, (1, 2, 3), 0, 2)
