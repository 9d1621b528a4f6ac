"""Length-budget schedules ("train long, think short"; SIRI's compress/expand cycles).

Each schedule maps a training step to a token budget that the scheduler
attaches to every prompt of that step.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from gradus.curriculum.registry import Registry

BudgetSchedule = Callable[[int], int]
BUDGETS: Registry[Callable[..., BudgetSchedule]] = Registry("budget schedule")


@BUDGETS.register("constant")
def constant(budget: int) -> BudgetSchedule:
    return lambda step: int(budget)


@BUDGETS.register("exponential")
def exponential(initial: int, decay: float, every: int, minimum: int = 1) -> BudgetSchedule:
    if every < 1:
        raise ValueError("exponential budget: every must be >= 1")
    return lambda step: max(int(minimum), math.floor(initial * decay ** math.floor(step / every)))


@BUDGETS.register("linear")
def linear(initial: int, final: int, steps: int) -> BudgetSchedule:
    def budget(step: int) -> int:
        frac = 1.0 if steps <= 0 else min(1.0, step / steps)
        return round(initial + (final - initial) * frac)

    return budget


@BUDGETS.register("cyclic")
def cyclic(low: int, high: int, period: int) -> BudgetSchedule:
    if period < 1:
        raise ValueError("cyclic budget: period must be >= 1")
    return lambda step: int(high) if step % period < period / 2 else int(low)


def make_budget_schedule(kind: str, **params: Any) -> BudgetSchedule:
    return BUDGETS.build(kind, **params)
