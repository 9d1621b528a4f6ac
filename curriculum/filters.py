"""Online difficulty filters: which prompt groups are informative enough to train on.

A group whose samples all get the same reward has zero GRPO advantage and
teaches nothing (DAPO's dynamic sampling); groups that are far too easy or far
too hard are dropped by an accuracy band (Online Difficulty Filtering for
Reasoning Oriented RL).
"""

from __future__ import annotations

from typing import Any, Sequence

from gradus.curriculum.registry import Registry

FILTERS: Registry[type] = Registry("filter")


@FILTERS.register("accuracy_band")
class AccuracyBand:
    def __init__(self, low: float = 0.0, high: float = 1.0) -> None:
        if not 0.0 <= low <= high <= 1.0:
            raise ValueError(f"accuracy_band needs 0 <= low <= high <= 1, got low={low} high={high}")
        self.low, self.high = float(low), float(high)

    def keep(self, correct: Sequence[bool], rewards: Sequence[float] | None = None) -> bool:
        if len(correct) == 0:
            return False
        accuracy = sum(bool(c) for c in correct) / len(correct)
        return self.low <= accuracy <= self.high


@FILTERS.register("nonzero_std")
class NonZeroStd:
    def keep(self, correct: Sequence[bool], rewards: Sequence[float]) -> bool:
        return len(rewards) > 1 and max(rewards) != min(rewards)


def make_filter(kind: str, **params: Any):
    return FILTERS.build(kind, **params)
