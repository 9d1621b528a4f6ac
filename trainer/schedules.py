"""Learning-rate schedules as multipliers of the base lr, each with linear warmup:
constant, linear decay, cosine, and warmup-stable-decay (WSD)."""

from __future__ import annotations

import math
from typing import Callable

from gradus.curriculum.registry import Registry

LRSchedule = Callable[[int], float]
LR_SCHEDULES: Registry[Callable[..., LRSchedule]] = Registry("lr schedule", plugins=False, positional=4)


def _progress(step: int, start: int, end: int) -> float:
    return 1.0 if end <= start else min(1.0, max(0.0, (step - start) / (end - start)))


@LR_SCHEDULES.register("constant")
def constant(total: int, min_ratio: float = 0.0, decay_fraction: float = 0.0, warmup: int = 0) -> LRSchedule:
    return lambda step: 1.0


@LR_SCHEDULES.register("linear")
def linear(total: int, min_ratio: float = 0.0, decay_fraction: float = 0.0, warmup: int = 0) -> LRSchedule:
    return lambda step: 1.0 - (1.0 - min_ratio) * _progress(step, warmup, total)


@LR_SCHEDULES.register("cosine")
def cosine(total: int, min_ratio: float = 0.0, decay_fraction: float = 0.0, warmup: int = 0) -> LRSchedule:
    return lambda step: min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * _progress(step, warmup, total)))


@LR_SCHEDULES.register("wsd")
def wsd(total: int, min_ratio: float = 0.0, decay_fraction: float = 0.2, warmup: int = 0) -> LRSchedule:
    """Warmup, a long stable phase at the peak, then linear decay over the last
    `decay_fraction` of training."""
    decay_start = total - round(decay_fraction * total)
    return lambda step: 1.0 - (1.0 - min_ratio) * _progress(step, max(decay_start, warmup), total)


def lr_multiplier(
    kind: str, total: int, warmup: int = 0, min_ratio: float = 0.0, decay_fraction: float = 0.2
) -> LRSchedule:
    """Multiplier at optimiser step `step` (0-based); warmup ramps (step+1)/warmup."""
    after = LR_SCHEDULES.get(kind)(total, min_ratio, decay_fraction, warmup=warmup)
    return lambda step: (step + 1) / warmup if step < warmup else after(step)
