"""Screening rollouts (SPEED-RL's idea: Zhang et al. 2025): generate `samples`
per prompt first, and complete to the full group only the prompts whose first
samples disagree; a prompt whose screening samples all agree (all right or all
wrong) stops there, a group of that size whose outcomes still reach the
curriculum and the row posteriors. The completions use their own seeds, derived
like every other, so a run (and its resume) draws the same samples each time."""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

from gradus.curriculum.items import Item
from gradus.curriculum.prompts import derive_seed
from gradus.rollout.records import Group

Generate = Callable[[Sequence[Item], int], tuple[list[Group], float]]


def draw_seed(run_seed: int, step: int, round_: int, i: int) -> int:
    """The vLLM seed of the i-th prompt drawn in a step's refill round: where it was drawn decides, so a resume
    draws the same samples."""
    return derive_seed(run_seed, step, round_, i, bits=31)


def completion_seed(run_seed: int, step: int, round_: int, i: int) -> int:
    """The seed of the same prompt's remaining samples after its screen: never its screening seed, so the
    completion does not repeat the screening samples."""
    return derive_seed(run_seed, step, round_, i, "rest", bits=31)


def screened(
    generate: Generate, items: Sequence[Item], n: int, screen: int, completion_seed: Callable[[int], int]
) -> tuple[list[Group], float, int]:
    """Groups in item order (screened-out ones have `screen` samples, the others n),
    the generation seconds of both calls, and how many prompts stopped at screening.
    `completion_seed(i)` is item i's seed for its remaining n - screen samples."""
    groups, seconds = generate(items, screen)
    survivors = [i for i, g in enumerate(groups) if 0 < sum(g.correct) < len(g.samples)]
    if survivors and n > screen:
        rest = [dataclasses.replace(items[i], seed=completion_seed(i)) for i in survivors]
        completed, more = generate(rest, n - screen)  # one more batched call for every survivor
        for i, extra in zip(survivors, completed):
            groups[i].samples += extra.samples
        seconds += more
    return groups, seconds, len(groups) - len(survivors)
