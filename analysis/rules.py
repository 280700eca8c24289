"""The two rule sets the analysis can follow, declared once: `paper` and `study-code`.

`paper` follows the published text of the study. `study-code` reproduces what the study's public analysis
scripts compute where they depart from that text. Every field below is one such departure; the README's
analysis section has the same list as a table. Rules the two sets share (the window search, outlier
removal at every t, pooled overall effectivity) are not fields: they live in `analysis.metrics` and
`analysis.fit` and apply to both.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.errors import UserError


@dataclass(frozen=True)
class Rules:
    name: str
    iqr_factor: float
    """Interquartile-rule factor for outlier removal."""
    drop_only_zero_gain: bool
    """False: a probe whose retainability denominator is <= 0 has no retainability (excluded, counted).
    True: only a denominator of exactly 0 excludes it; a negative one is kept and divides as it is."""
    dropped_probe_has_effectivity: bool
    """Whether a probe excluded for its gain still contributes its effectivity values."""
    reference_at_first_step: bool
    """Where retainability's reference ℓ is read. False: just before the probe's first encounter (t_pre).
    True: at the first logged step of the run, whatever the schedule."""
    shared_t_range: bool
    """False: each group is fitted up to the largest t every one of its probes has. True: every group,
    `once` included, is fitted over the range of the group whose last encounter comes latest."""
    negate_falling_curve: bool
    """True: when mean R at the first fitted t is negative the whole curve is negated before the fit."""


PAPER = Rules(
    name="paper",
    iqr_factor=1.5,
    drop_only_zero_gain=False,
    dropped_probe_has_effectivity=True,
    reference_at_first_step=False,
    shared_t_range=False,
    negate_falling_curve=False,
)
STUDY_CODE = Rules(
    name="study-code",
    iqr_factor=2.0,
    drop_only_zero_gain=True,
    dropped_probe_has_effectivity=False,
    reference_at_first_step=True,
    shared_t_range=True,
    negate_falling_curve=True,
)
RULE_SETS: dict[str, Rules] = {r.name: r for r in (PAPER, STUDY_CODE)}

#: How ℓ is turned into the quantity the metrics work on. `logprob`: ℓ itself (nats, higher is better).
#: `perplexity`: −exp(−ℓ), the negated perplexity of the target, so that "higher is better" still holds:
#: a gain is a fall of perplexity and retainability is the ratio of perplexity changes, as the study's
#: scripts compute by default.
SCALES = ("logprob", "perplexity")


def rule_set(name: str) -> Rules:
    if name not in RULE_SETS:
        raise UserError(f"option rules: must be one of {', '.join(RULE_SETS)}, got {name!r}")
    return RULE_SETS[name]
