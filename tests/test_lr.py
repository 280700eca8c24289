import math

import pytest
from olmo.optim import CosWithWarmup, LinearWithWarmup

from harness.errors import UserError
from injection.lr import LRSchedule, learning_rate, lr_for_update

STEPS = [0, 1, 999, 1999, 2000, 2001, 5000, 113000, 399999, 739327, 739328, 800000]


@pytest.mark.parametrize("warmup_min_lr", [None, 0.0, 1e-5])
@pytest.mark.parametrize("alpha_f", [0.1, 0.0])
def test_cosine_matches_olmo(alpha_f, warmup_min_lr):
    ours = LRSchedule("cosine", 4e-4, 2000, alpha_f, 739328, warmup_min_lr)
    olmo = CosWithWarmup(
        grad_clip_warmup_steps=None,
        grad_clip_warmup_factor=None,
        warmup_min_lr=warmup_min_lr,
        warmup_steps=2000,
        alpha_f=alpha_f,
        t_max=739328,
    )
    for s in STEPS:
        assert learning_rate(ours, s) == pytest.approx(olmo.get_lr(4e-4, s, 10**9), rel=1e-12, abs=1e-18)


def test_linear_matches_olmo_and_t_max_overrides_max_steps():
    ours = LRSchedule("linear", 3e-4, 5000, 0.1, 557000)
    olmo = LinearWithWarmup(
        grad_clip_warmup_steps=None,
        grad_clip_warmup_factor=None,
        warmup_min_lr=None,
        warmup_steps=5000,
        alpha_f=0.1,
        t_max=557000,
    )
    for s in STEPS:
        assert learning_rate(ours, s) == pytest.approx(olmo.get_lr(3e-4, s, 42), rel=1e-12)
    assert learning_rate(ours, 5000) == pytest.approx(3e-4)
    assert learning_rate(ours, 10**7) == pytest.approx(3e-5)
    assert learning_rate(ours, 0) == pytest.approx(3e-5)  # OLMo warms up from 0.1 × peak


def test_update_k_uses_the_next_global_step():
    sched = LRSchedule("cosine", 4e-4, 2000, 0.1, 100000)
    assert lr_for_update(sched, 50000, 0) == learning_rate(sched, 50001)
    assert lr_for_update(sched, 50000, 9) == learning_rate(sched, 50010)
    assert learning_rate(LRSchedule("constant", 1e-4), 12345) == 1e-4
    mid = learning_rate(sched, 51000)
    assert 4e-5 < mid < 4e-4 and not math.isclose(mid, learning_rate(sched, 51001))


def test_token_units_follow_olmos_token_count():
    """OLMo 2 (scheduler.units: tokens): the update from a checkpoint that had seen T tokens uses OLMo's schedule at
    T + (k + 1) × rows × row length, the count its trainer advances before each update."""
    tokens_per_step = 512 * 4096
    ours = LRSchedule("cosine", 4e-4, 8_388_608_000, 0.1, 5_000_000_000_000, 0.0, units="tokens")
    olmo = CosWithWarmup(
        grad_clip_warmup_steps=None,
        grad_clip_warmup_factor=None,
        warmup_min_lr=0.0,
        warmup_steps=8_388_608_000,
        alpha_f=0.1,
        t_max=5_000_000_000_000,
    )
    for step, k in ((300000, 0), (300000, 2499), (1000, 3), (1907359, 0)):
        seen = step * tokens_per_step
        expected = olmo.get_lr(4e-4, seen + (k + 1) * tokens_per_step, 10**15)
        got = lr_for_update(ours, step, k, start_tokens=seen, tokens_per_step=tokens_per_step)
        assert got == pytest.approx(expected, rel=1e-12)
        assert got != pytest.approx(learning_rate(ours, step + k + 1))  # a step count would be in warm-up
    with pytest.raises(UserError, match="token count"):
        lr_for_update(ours, 300000, 0)
    with pytest.raises(UserError, match="units: expected steps or tokens"):
        LRSchedule.from_dict({"kind": "cosine", "peak_lr": 1e-3, "t_max": 10, "units": "epochs"})


def test_bad_schedule_names_the_field():
    with pytest.raises(UserError, match="t_max"):
        LRSchedule.from_dict({"kind": "cosine", "peak_lr": 1e-3, "warmup_steps": 10})
    with pytest.raises(UserError, match=r"lr_schedule.kind"):
        LRSchedule.from_dict({"kind": "exp", "peak_lr": 1e-3})
    with pytest.raises(UserError, match="peak_lr"):
        LRSchedule.from_dict({"kind": "constant"})


class _NeoxTrainer:
    """GPT-NeoX's AnnealingLR (cosine) as its trainer drives it, written out here from GPT-NeoX v1.0's
    learning_rates.py and training.py: warm-up = warmup fraction × lr_decay_iters, the scheduler is set for
    0 iterations when built and stepped once after every applied update."""

    def __init__(self, lr: float, warmup: float, decay_iters: int, min_lr: float) -> None:
        self.start_lr, self.min_lr = lr, min_lr
        self.warmup_iter, self.end_iter = warmup * decay_iters, decay_iters
        self.num_iters = 0

    def current(self) -> float:
        n = min(self.num_iters, self.end_iter - self.warmup_iter)
        if self.warmup_iter > 0 and self.num_iters <= self.warmup_iter:
            return self.start_lr * n / self.warmup_iter
        n -= self.warmup_iter
        return max(self.start_lr / 2.0 * (math.cos(math.pi * n / self.end_iter) + 1), self.min_lr)

    def train(self, updates: int) -> list[float]:
        """The learning rate each of the next `updates` updates is taken with."""
        used = []
        for _ in range(updates):
            used.append(self.current())
            self.num_iters += 1  # the engine steps the scheduler after the optimizer
        return used


PYTHIA_1B = LRSchedule("gpt-neox-cosine", 2.5e-4, 1430, 0.1, 143000)


def test_gpt_neox_cosine_matches_the_trainer_at_every_kind_of_step():
    trainer = _NeoxTrainer(2.5e-4, 0.01, 143000, 2.5e-5)
    for n in [0, 1, 715, 1429, 1430, 1431, 8000, 23000, 69000, 115138, 115139, 141569, 141570, 141571, 143000, 150000]:
        trainer.num_iters = n
        assert learning_rate(PYTHIA_1B, n) == pytest.approx(trainer.current(), rel=1e-12, abs=0), n
    # values by hand: warm-up from 0, the cosine's period is 143,000 and starts after warm-up, the floor holds
    assert learning_rate(PYTHIA_1B, 0) == 0.0 and learning_rate(PYTHIA_1B, 1430) == 2.5e-4
    assert learning_rate(PYTHIA_1B, 8000) == pytest.approx(2.5e-4 * (1 + math.cos(math.pi * 6570 / 143000)) / 2)
    assert learning_rate(PYTHIA_1B, 69000) == pytest.approx(1.358e-4, rel=1e-3)
    assert (
        learning_rate(PYTHIA_1B, 115138)
        > 2.5e-5
        == learning_rate(PYTHIA_1B, 115139)
        == learning_rate(PYTHIA_1B, 143000)
    )
    # not OLMo's cosine over the same numbers
    olmo = LRSchedule("cosine", 2.5e-4, 1430, 0.1, 143000)
    assert learning_rate(olmo, 69000) / learning_rate(PYTHIA_1B, 69000) == pytest.approx(0.5821 / 0.5431, rel=1e-3)


def test_gpt_neox_update_k_uses_the_updates_applied_before_it():
    """Continuing from the checkpoint saved after S updates, update k is the trainer's update S + k."""
    start, k = 23000, 7
    trainer = _NeoxTrainer(2.5e-4, 0.01, 143000, 2.5e-5)
    used = trainer.train(start + k + 1)
    assert [lr_for_update(PYTHIA_1B, start, j) for j in range(k + 1)] == pytest.approx(used[start:], rel=1e-12)
    assert lr_for_update(PYTHIA_1B, 0, 0) == 0.0  # GPT-NeoX's first update of all is taken at lr 0


def test_gpt_neox_cosine_equals_the_catalog_generator():
    """scripts/make_pythia_catalog.py states the formula a third time (for the catalog's comments)."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "make_pythia_catalog.py"
    spec = importlib.util.spec_from_file_location("make_pythia_catalog_lr", path)
    script = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = script
    spec.loader.exec_module(script)
    for n in range(0, 143001, 997):
        assert learning_rate(PYTHIA_1B, n) == pytest.approx(script.neox_lr(n, 2.5e-4), rel=1e-12, abs=0)


def test_gpt_neox_schedule_refuses_an_olmo_warmup_start():
    with pytest.raises(UserError, match="warmup_min_lr: GPT-NeoX warms up from 0"):
        LRSchedule.from_dict(
            {"kind": "gpt-neox-cosine", "peak_lr": 1e-3, "warmup_steps": 10, "t_max": 100, "warmup_min_lr": 1e-4}
        )
