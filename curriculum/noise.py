"""Label noise on purpose (`corrupt`): a distribution the model cannot learn,
for testing that a curriculum stops paying for it. Only answers change."""

from __future__ import annotations

from typing import Any

import numpy as np

from gradus.curriculum.prompts import derive_seed

Row = dict[str, Any]


def wrong_answer(source: str, answer: Any, rng: np.random.Generator) -> Any:
    """An answer the verifier scores 0 for this row: a sum off by 1-9, another
    countdown target, a knights-and-knaves assignment with at least one role flipped."""
    if source == "arithmetic":
        return str(int(answer) + int(rng.choice([-1, 1])) * int(rng.integers(1, 10)))
    if source == "countdown":
        return {**answer, "target": int(answer["target"]) + int(rng.choice([-1, 1])) * int(rng.integers(1, 10))}
    flips = rng.random(len(answer)) < 0.5
    flips[int(rng.integers(len(answer)))] = True
    swap = {"knight": "knave", "knave": "knight"}
    return {who: swap[role] if flip else role for (who, role), flip in zip(answer.items(), flips)}


CORRUPTIBLE = ("arithmetic", "countdown", "kk")


def corrupt_rows(rows: list[Row], fraction: float, source: str, name: str, seed: int) -> list[Row]:
    """`fraction` of the rows get a wrong answer (`corrupt`), the rows chosen and
    the answers drawn from the run's seed and the distribution's name alone: the
    same rows in every run with that seed, and the rows and their order are those
    of corrupt: 0 (only answers change)."""
    rng = np.random.default_rng(derive_seed(seed, name, "corrupt"))
    chosen = rng.permutation(len(rows))[: int(round(fraction * len(rows)))]
    for i in sorted(int(i) for i in chosen):
        rows[i] = {**rows[i], "answer": wrong_answer(source, rows[i]["answer"], rng)}
    return rows
