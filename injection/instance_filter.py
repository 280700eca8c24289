"""OLMo 2's repetition filter: which instances of a batch the original run trained on.

ai2-olmo 0.6.0 (`data.instance_filter` of a run's config) marks an instance as masked when some stretch of it
repeats a pattern of `repetition_min_period` … `repetition_max_period` tokens at least `repetition_max_count`
times; a masked instance stays in its batch and in the data order, but its labels are all ignored, so it adds
nothing to the loss or the gradient. The decision is ai2-olmo's own code (`find_periodic_sequences`, as its
`MemMapDataset` calls it), applied to the instance as read from the token files.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from olmo.data.util import find_periodic_sequences

from harness.errors import UserError


@dataclass(frozen=True)
class InstanceFilter:
    """ai2-olmo's `InstanceFilterConfig`: an instance that repeats a short pattern too often is masked."""

    repetition_max_period: int = 13
    repetition_min_period: int = 1
    repetition_max_count: int = 32

    @classmethod
    def from_dict(cls, data: Any, where: str) -> InstanceFilter:
        if not isinstance(data, dict):
            raise UserError(f"{where}: expected a mapping of repetition_max_period, _min_period, _max_count")
        unknown = sorted(set(data) - {"repetition_max_period", "repetition_min_period", "repetition_max_count"})
        if unknown:
            raise UserError(f"{where}: unknown key {unknown[0]!r}")
        values = {**asdict(cls()), **data}
        for key, value in values.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"{where}.{key}: expected an integer >= 1, got {value!r}")
        if values["repetition_min_period"] > values["repetition_max_period"]:
            raise UserError(f"{where}: repetition_min_period exceeds repetition_max_period")
        return cls(**values)

    def keeps(self, instance: np.ndarray) -> bool:
        """Whether ai2-olmo trains on this instance (its `MemMapDataset._validate_instance`)."""

        repeats = find_periodic_sequences(
            np.asarray(instance, dtype=np.int64),
            max_period=self.repetition_max_period,
            min_period=self.repetition_min_period,
        )
        return all(r.times < self.repetition_max_count for r in repeats)

    def kept_rows(self, tokens: np.ndarray) -> np.ndarray:
        """bool [B]: the rows of a batch [B, L] of original instances that carry loss."""
        return np.fromiter((self.keeps(row) for row in tokens), dtype=bool, count=len(tokens))
