import math

import pytest
from olmo.optim import CosWithWarmup, LinearWithWarmup

from injection.lr import LRSchedule, learning_rate, lr_for_update
from harness.errors import UserError

STEPS = [0, 1, 999, 1999, 2000, 2001, 5000, 113000, 399999, 739327, 739328, 800000]


@pytest.mark.parametrize("warmup_min_lr", [None, 0.0, 1e-5])
@pytest.mark.parametrize("alpha_f", [0.1, 0.0])
def test_cosine_matches_olmo(alpha_f, warmup_min_lr):
    ours = LRSchedule("cosine", 4e-4, 2000, alpha_f, 739328, warmup_min_lr)
    olmo = CosWithWarmup(grad_clip_warmup_steps=None, grad_clip_warmup_factor=None, warmup_min_lr=warmup_min_lr,
                         warmup_steps=2000, alpha_f=alpha_f, t_max=739328)
    for s in STEPS:
        assert learning_rate(ours, s) == pytest.approx(olmo.get_lr(4e-4, s, 10**9), rel=1e-12, abs=1e-18)


def test_linear_matches_olmo_and_t_max_overrides_max_steps():
    ours = LRSchedule("linear", 3e-4, 5000, 0.1, 557000)
    olmo = LinearWithWarmup(grad_clip_warmup_steps=None, grad_clip_warmup_factor=None, warmup_min_lr=None,
                            warmup_steps=5000, alpha_f=0.1, t_max=557000)
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


def test_bad_schedule_names_the_field():
    with pytest.raises(UserError, match="t_max"):
        LRSchedule.from_dict({"kind": "cosine", "peak_lr": 1e-3, "warmup_steps": 10})
    with pytest.raises(UserError, match=r"lr_schedule.kind"):
        LRSchedule.from_dict({"kind": "exp", "peak_lr": 1e-3})
    with pytest.raises(UserError, match="peak_lr"):
        LRSchedule.from_dict({"kind": "constant"})
