import numpy as np
import pytest
import torch

from harness.rundir import SCORE_NAMES, TOKEN_NAMES
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


def _brute_force_token_stats(model, item: ProbeItem) -> dict[str, float]:
    """The token columns of one probe the obvious way: full logits of the whole text, one position at a time."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([item.input_ids])).logits[0].double()
    surprisal, entropy, rank = [], [], []
    for t in range(item.target_start, item.target_end):
        p = torch.softmax(logits[t - 1], dim=-1)
        token = item.input_ids[t]
        surprisal.append(-float(torch.log(p[token])))
        entropy.append(-float((p * torch.log(p)).sum()))
        rank.append(int((logits[t - 1] > logits[t - 1, token]).sum()))
    return {
        "surprisal_mean": float(np.mean(surprisal)),
        "surprisal_max": max(surprisal),
        "entropy_mean": float(np.mean(entropy)),
        "rank_mean": float(np.mean(rank)),
        "rank_max": max(rank),
    }


def test_token_columns_equal_brute_force_and_leave_the_scores_alone():
    torch.set_num_threads(1)
    model = tiny_model(seed=4)
    items = synthetic_probes(n_paragraphs=3, per_kind=2, seed=5)
    plain = evaluate_probes(model, items, max_tokens=64)
    full = evaluate_probes(model, items, max_tokens=64, token_stats=True)
    assert list(plain) == list(SCORE_NAMES)  # a run without the option logs exactly what it always did
    assert list(full) == list(SCORE_NAMES) + list(TOKEN_NAMES)
    for name in SCORE_NAMES:
        np.testing.assert_array_equal(full[name], plain[name])
    for i, it in enumerate(items):
        expected = _brute_force_token_stats(model, it)
        for name in ("surprisal_mean", "surprisal_max", "entropy_mean"):
            assert full[name][i] == pytest.approx(expected[name], abs=1e-4), name
        assert full["rank_mean"][i] == pytest.approx(expected["rank_mean"])
        assert full["rank_max"][i] == expected["rank_max"]
        assert full["surprisal_mean"][i] == pytest.approx(-full["logprob"][i], abs=1e-6)
    assert full["rank_max"].dtype == np.int32 and full["entropy_mean"].dtype == np.float32
    # a tiny random model is unsure: entropy near log(vocab), and targets are rarely its first choice
    assert (full["entropy_mean"] > 0.5 * np.log(256)).all() and full["rank_max"].max() > 0
