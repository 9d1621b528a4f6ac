"""Per-row Beta posteriors over pass rates, and sample allocation from them.

Every row keeps a Beta posterior over its pass rate p: the prior's mean is its
distribution's running pass rate (0.5 before any evidence) with strength
`prior_strength`; each observed group adds its successes and failures to the
row's evidence after multiplying the old evidence by `discount` (old outcomes
fade as the policy changes). The chance that a group of n samples is all-equal
(no gradient signal) is E[p^n + (1-p)^n] = B(a+n, b)/B(a, b) + B(a, b+n)/B(a, b).
"""

from __future__ import annotations

import heapq
from typing import Sequence

import numpy as np
from scipy.special import betainc, betaln


class RowPosteriors:
    """Discounted Beta evidence per row, with a prior from the distribution's mean."""

    def __init__(self, n_rows: int, prior_strength: float = 2.0, discount: float = 0.9) -> None:
        if prior_strength <= 0 or not 0 < discount <= 1:
            raise ValueError("row posteriors: need prior_strength > 0 and 0 < discount <= 1")
        self.prior_strength, self.discount = float(prior_strength), float(discount)
        self.wins = np.zeros(n_rows)  # discounted successes
        self.losses = np.zeros(n_rows)  # discounted failures
        self.seen = np.zeros(n_rows, dtype=np.int64)  # samples ever observed (undiscounted)
        self.total_wins = self.total_samples = 0.0  # the distribution's running pass rate

    def observe(self, row: int, successes: int, n: int) -> None:
        self.wins[row] = self.discount * self.wins[row] + successes
        self.losses[row] = self.discount * self.losses[row] + (n - successes)
        self.seen[row] += n
        self.total_wins += successes
        self.total_samples += n

    def prior_mean(self) -> float:
        return (self.total_wins + 1.0) / (self.total_samples + 2.0)

    def params(self) -> tuple[np.ndarray, np.ndarray]:
        """(alpha, beta) of every row's posterior."""
        m = self.prior_mean()
        return self.prior_strength * m + self.wins, self.prior_strength * (1 - m) + self.losses

    def mean(self) -> np.ndarray:
        a, b = self.params()
        return a / (a + b)

    def own_prob_at_least(self, threshold: float) -> np.ndarray:
        """P(p >= threshold) per row from its own evidence alone (a flat prior):
        a decision that removes a row must not rest on its distribution's mean,
        or a mostly solved distribution retires a row on one lucky group."""
        return 1.0 - betainc(1.0 + self.wins, 1.0 + self.losses, threshold)

    def zero_var(self, rows: Sequence[int], n: int) -> np.ndarray:
        """P(a group of n samples is all right or all wrong) for each row."""
        a, b = (x[np.asarray(rows, dtype=np.int64)] for x in self.params())
        return zero_var_chance(a, b, n)

    def state_dict(self) -> dict:
        return {
            "wins": self.wins.tolist(),
            "losses": self.losses.tolist(),
            "seen": self.seen.tolist(),
            "total": [self.total_wins, self.total_samples],
        }

    def load_state_dict(self, state: dict) -> None:
        self.wins, self.losses = np.asarray(state["wins"], float), np.asarray(state["losses"], float)
        self.seen = np.asarray(state["seen"], dtype=np.int64)
        self.total_wins, self.total_samples = (float(v) for v in state["total"])


def zero_var_chance(a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    """E[p^n + (1-p)^n] for p ~ Beta(a, b): the chance n samples all agree."""
    return np.exp(betaln(a + n, b) - betaln(a, b)) + np.exp(betaln(a, b + n) - betaln(a, b))


def allocate_group_sizes(chances: np.ndarray, base: int, low: int) -> list[int]:
    """A group size per row within the step's budget of base x rows samples
    (CurES/DUET's idea of spending samples per prompt): every row starts at `low`,
    then each further sample goes to the row where it lowers the chance of an
    all-equal group (a group that teaches nothing) the most. `chances[i, k]`: that
    chance for row i with low + k samples (RowPosteriors.zero_var), so rows reach
    at most low + width - 1. The gain of one more sample, E[p^n (1-p) + (1-p)^n p],
    shrinks as n grows, so this greedy rule is the allocation with the most
    expected informative groups: rows with a leaning pass rate (p ~ 0.8) get the
    most, rows near 0.5 about the base (a few samples disagree already), rows
    surely solved or hopeless stay at `low`. Ties go to the earlier row; a heap
    makes it O(budget log rows)."""
    rows, width = chances.shape
    sizes = [low] * rows
    gain = chances[:, :-1] - chances[:, 1:]
    heap = [(-float(gain[i, 0]), i) for i in range(rows)] if width > 1 else []
    heapq.heapify(heap)
    for _ in range(max(0, (base - low) * rows)):
        if not heap:
            break
        _, best = heapq.heappop(heap)
        sizes[best] += 1
        k = sizes[best] - low
        if k < width - 1:
            heapq.heappush(heap, (-float(gain[best, k]), best))
    return sizes
