"""Row-level posteriors and the samplers that decide before rollout.

Every row keeps a Beta posterior over its pass rate (curriculum/row_posteriors.py);
a group enters only through (successes, size), so what a sampler does next
never depends on the order of samples inside a group. Each sampler reports the
chance of an all-equal group that the posterior gave each drawn row when it was
drawn, for the size its group then had (screens and group rules change sizes),
beside the share of all-equal groups it saw (`predicted_zero_var`,
`realised_zero_var`), and
`skipped_before_rollout`, rows passed over before any token was generated:
over every draw of the last step drawn and observed (filters may refill).

- `pass_rate`: retires a row once P(p >= retire_p) >= confidence (0.9 and 0.9)
  on the row's own evidence (a flat prior: its distribution's mean ranks rows
  but never retires one) with at least `retire_after` samples seen, rechecks retired rows with
  probability `recheck` (a wrong answer lowers the posterior and brings the row
  back), and draws the others with a band-pass weight on the posterior mean p:
  1 inside [low, high], max(floor, 4 p (1 - p)) outside, unseen rows inside;
  `decay` is the share of a row's evidence that fades at each new group. A row
  needs 7 straight all-right groups of 4 (3 of 8) to retire, whatever its
  distribution's mean (the counting rule it replaces retired a p = 0.8 row
  after one group of 4 with probability 0.41, and decided on the order of
  samples in a group; a p = 0.8 row now passes 7 groups with probability 0.002).
- `thompson` (MoPPS, Qu et al. 2025): draw p~ from each candidate row's
  posterior and take the rows whose draw is nearest `target`.
- `greso` (GRESO, Zheng et al. 2025, "Act Only When It Pays"): a row whose
  last z groups were all-equal is kept with probability p_e^z and skipped
  otherwise, before rollout; p_e is kept per kind of run, all right ("easy")
  or all wrong ("hard"). Before each draw (each generation round) each p_e
  moves by `step` toward keeping its kind's share of the groups seen since the
  previous draw at its target: down when at or above, up when below, within
  [`min_explore`, `max_explore`]. The targets split `target` as the authors'
  code does, a third to easy and two thirds to hard groups (hard rows are
  the likelier to change as the policy improves). As equations:
  P(skip row i) = 1 - p_e,k^z_i for its kind k, and after each round
  p_e,k <- clip(p_e,k - step if share_k >= target_k else p_e,k + step,
  min_explore, max_explore) (the paper's probabilistic filter and adaptive
  exploration; Infini-AI-Lab/GRESO, verl/trainer/ppo/ray_trainer.py). A group
  of any size counts: one a screen stopped at k samples is an all-equal group
  (it taught nothing), the evidence GRESO's rule acts on.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from gradus.curriculum.prompts import PROMPT_SAMPLERS, PromptSampler, RowWalk
from gradus.curriculum.row_posteriors import RowPosteriors, zero_var_chance


class PosteriorSampler(PromptSampler):
    """Shared bookkeeping: posteriors, and the calibration of the last step."""

    def __init__(self, n_rows: int, seed: tuple, prior_strength: float = 2.0, discount: float = 0.9) -> None:
        super().__init__(n_rows, seed)
        self.posteriors = RowPosteriors(n_rows, prior_strength, discount)
        self._pending_zero: list[bool] = []  # all-equal groups since the last draw
        self._drawn_params: dict[int, tuple[float, float]] = {}  # (alpha, beta) of rows drawn, not yet observed
        self.begin_step()

    def begin_step(self) -> None:
        """The step's statistics add up over its draws (filters refill): restart
        them (a distribution the step does not draw then reports none)."""
        self._step_skipped, self._step_predicted, self._step_zero = 0, [], []
        self.last = {
            "skipped_before_rollout": 0.0,
            "predicted_zero_var": float("nan"),
            "realised_zero_var": float("nan"),
        }

    def _drawn(self, rows: Sequence[int], skipped: int) -> None:
        self._step_skipped += skipped
        a, b = self.posteriors.params()
        self._drawn_params.update({int(r): (float(a[r]), float(b[r])) for r in rows})
        self.last["skipped_before_rollout"] = float(self._step_skipped)
        self._pending_zero = []

    def observe(self, row_id: int, correct: Sequence[bool]) -> None:
        if not len(correct):
            return
        successes, n = int(sum(bool(c) for c in correct)), len(correct)
        a, b = self._drawn_params.pop(row_id, None) or (x[row_id] for x in self.posteriors.params())
        self._step_predicted.append(float(zero_var_chance(np.array([a]), np.array([b]), n)[0]))
        self.last["predicted_zero_var"] = float(np.mean(self._step_predicted))
        self.posteriors.observe(row_id, successes, n)
        self._pending_zero.append(successes in (0, n))
        self._step_zero.append(successes in (0, n))
        self.last["realised_zero_var"] = float(np.mean(self._step_zero))

    @property
    def observed_groups(self) -> int:
        """Groups observed since the step's first draw: the weight of its calibration."""
        return len(self._step_zero)

    def stats(self) -> dict[str, float]:
        seen = self.posteriors.seen > 0
        mean = self.posteriors.mean()
        return {
            "rows_seen": float(seen.sum()),
            "pass_rate": float(mean[seen].mean()) if seen.any() else float("nan"),
            **self.last,
        }

    def state_dict(self) -> dict:
        return {
            "posteriors": self.posteriors.state_dict(),
            "last": {k: None if math.isnan(v) else v for k, v in self.last.items()},  # None: comparable, JSON-safe
            "pending": list(self._pending_zero),
            "drawn": [[r, a, b] for r, (a, b) in self._drawn_params.items()],
        }

    def load_state_dict(self, state: dict) -> None:
        self.posteriors.load_state_dict(state["posteriors"])
        self.last = {k: float("nan") if v is None else float(v) for k, v in state["last"].items()}
        self._pending_zero = [bool(v) for v in state["pending"]]
        self._drawn_params = {int(r): (float(a), float(b)) for r, a, b in state.get("drawn", [])}  # older: none


@PROMPT_SAMPLERS.register("thompson")
class Thompson(PosteriorSampler):
    """MoPPS: rows whose posterior draw lands nearest the target pass rate."""

    def __init__(
        self,
        n_rows: int,
        seed: tuple,
        target: float = 0.5,
        prior_strength: float = 2.0,
        discount: float = 0.9,
    ) -> None:
        super().__init__(n_rows, seed, prior_strength, discount)
        if not 0 < target < 1:
            raise ValueError("thompson sampler: need 0 < target < 1")
        self.target = float(target)

    def take(self, n: int, rng: np.random.Generator | None) -> list[int]:
        if rng is None:
            raise ValueError("thompson sampler: draws need the scheduler's rng")
        out: list[int] = []
        while len(out) < n:  # without replacement within a call, as far as the rows go
            a, b = self.posteriors.params()
            draws = rng.beta(a, b)
            order = np.argsort(np.abs(draws - self.target), kind="stable")
            out += [int(i) for i in order[: min(n - len(out), self.n_rows)]]
        self._drawn(out, skipped=0)
        return out


@PROMPT_SAMPLERS.register("greso")
class Greso(PosteriorSampler):
    """GRESO: skip rows with a run of all-equal groups before generating them."""

    def __init__(
        self,
        n_rows: int,
        seed: tuple,
        target: float = 0.25,
        step: float = 0.01,
        min_explore: float = 0.05,
        explore: float = 0.5,
        max_explore: float = 0.95,
        prior_strength: float = 2.0,
        discount: float = 0.9,
    ) -> None:
        super().__init__(n_rows, seed, prior_strength, discount)
        if not 0 <= target <= 1 or not 0 < step < 1 or not 0 < min_explore <= explore <= max_explore <= 1:
            raise ValueError(
                "greso sampler: need 0 <= target <= 1, 0 < step < 1, 0 < min_explore <= explore <= max_explore <= 1"
            )
        self.targets = {"easy": float(target) / 3, "hard": 2 * float(target) / 3}
        self.step, self.bounds = float(step), (float(min_explore), float(max_explore))
        self.explore = {"easy": float(explore), "hard": float(explore)}  # p_e per kind of all-equal group
        self.streak = np.zeros(n_rows, dtype=np.int64)  # consecutive all-equal groups, newest last
        self.kind = np.zeros(n_rows, dtype=np.int64)  # 1: the run is all right (easy), 0: all wrong (hard)
        self.walk = RowWalk(n_rows, seed, "greso")
        self._pending_easy: list[bool] = []  # beside _pending_zero: which all-equal groups were all right

    def keep_probability(self, row: int) -> float:
        """p_e^z for a row whose last z groups were all-equal (1 for z = 0)."""
        p = self.explore["easy" if self.kind[row] else "hard"]
        return float(p ** self.streak[row])

    def take(self, n: int, rng: np.random.Generator | None) -> list[int]:
        if rng is None:
            raise ValueError("greso sampler: draws need the scheduler's rng")
        self.end_of_step()  # the groups observed since the last draw are all in: adapt p_e first
        self._pending_easy = []
        out: list[int] = []
        skipped = 0
        while len(out) < n:
            row = self.walk.next()
            if rng.random() < self.keep_probability(row) or skipped >= 20 * self.n_rows:
                out.append(row)
            else:
                skipped += 1
        self._drawn(out, skipped)
        return out

    def observe(self, row_id: int, correct: Sequence[bool]) -> None:
        if not len(correct):
            return
        super().observe(row_id, correct)
        successes = sum(bool(c) for c in correct)
        self._pending_easy.append(successes == len(correct))
        if successes in (0, len(correct)):
            same = self.streak[row_id] > 0 and self.kind[row_id] == int(successes > 0)
            self.streak[row_id] = self.streak[row_id] + 1 if same else 1
            self.kind[row_id] = int(successes > 0)
        else:
            self.streak[row_id] = 0

    def end_of_step(self) -> None:
        """Move each p_e toward its kind's target share of the groups seen since the last draw."""
        if not self._pending_zero:
            return
        easy = float(np.mean(self._pending_easy))
        shares = {"easy": easy, "hard": float(np.mean(self._pending_zero)) - easy}
        low, high = self.bounds
        for kind, share in shares.items():
            moved = self.explore[kind] + (-self.step if share >= self.targets[kind] else self.step)
            self.explore[kind] = float(min(high, max(low, moved)))

    def stats(self) -> dict[str, float]:
        return {**super().stats(), "explore_easy": self.explore["easy"], "explore_hard": self.explore["hard"]}

    def state_dict(self) -> dict:
        return {
            **super().state_dict(),
            "explore": dict(self.explore),
            "streak": self.streak.tolist(),
            "kind": self.kind.tolist(),
            "pending_easy": list(self._pending_easy),
            **self.walk.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.explore = {k: float(v) for k, v in state["explore"].items()}
        self.streak = np.asarray(state["streak"], dtype=np.int64)
        self.kind = np.asarray(state["kind"], dtype=np.int64)
        self._pending_easy = [bool(v) for v in state["pending_easy"]]
        self.walk.load_state_dict(state)


@PROMPT_SAMPLERS.register("pass_rate")
class PassRate(PosteriorSampler):
    """Retire solved rows, recheck them now and then, prefer the learnable band."""

    def __init__(
        self,
        n_rows: int,
        seed: tuple,
        retire_after: int = 4,
        recheck: float = 0.05,
        low: float = 0.2,
        high: float = 0.8,
        decay: float = 0.1,
        floor: float = 0.05,
        retire_p: float = 0.9,
        confidence: float = 0.9,
        prior_strength: float = 2.0,
    ) -> None:
        if (
            retire_after < 1
            or not 0 <= recheck <= 1
            or not 0 <= low <= high <= 1
            or not 0 < decay <= 1
            or not 0 < floor <= 1
            or not 0 < retire_p < 1
            or not 0 < confidence < 1
        ):
            raise ValueError(
                "pass_rate sampler: need retire_after >= 1, 0 <= recheck <= 1, 0 <= low <= high <= 1, "
                "0 < decay <= 1, 0 < floor <= 1, 0 < retire_p < 1, 0 < confidence < 1"
            )
        # decay: the share of a row's evidence that fades at each of its new groups (the posterior's discount)
        super().__init__(n_rows, seed, prior_strength, discount=max(1.0 - decay, 0.05))
        self.retire_after, self.recheck, self.low, self.high, self.floor = (
            int(retire_after),
            float(recheck),
            low,
            high,
            floor,
        )
        self.retire_p, self.confidence = float(retire_p), float(confidence)

    def retired(self) -> np.ndarray:
        """Rows seen at least retire_after times whose own evidence puts P(p >= retire_p) >= confidence."""
        return (self.posteriors.seen >= self.retire_after) & (
            self.posteriors.own_prob_at_least(self.retire_p) >= self.confidence
        )

    def weights(self) -> np.ndarray:
        """Band-pass weight per row from its posterior mean (unseen rows: 1, optimistic)."""
        p = self.posteriors.mean()
        inside = (self.posteriors.seen == 0) | ((p >= self.low) & (p <= self.high))
        return np.where(inside, 1.0, np.maximum(self.floor, 4 * p * (1 - p)))

    def take(self, n: int, rng: np.random.Generator | None) -> list[int]:
        if rng is None:
            raise ValueError("pass_rate sampler: draws need the scheduler's rng")
        retired = self.retired()
        active, dormant = np.flatnonzero(~retired), np.flatnonzero(retired)
        rechecks = n if not len(active) else int((rng.random(n) < self.recheck).sum()) if len(dormant) else 0
        out = [int(i) for i in rng.choice(dormant, size=rechecks)] if rechecks else []
        fresh = n - rechecks
        while fresh > 0:  # without replacement within a call, as far as the active rows go
            w = self.weights()[active]
            picked = rng.choice(active, size=min(fresh, len(active)), replace=False, p=w / w.sum())
            out += [int(i) for i in picked]
            fresh -= len(picked)
        self._drawn(out, skipped=0)
        return out

    def availability(self) -> float:
        return self.recheck if self.retired().all() else 1.0

    def stats(self) -> dict[str, float]:
        return {"rows_retired": float(self.retired().sum()), **super().stats()}

    def load_state_dict(self, state: dict) -> None:
        if "attempts" in state:  # a checkpoint from before the posteriors: its counts become the evidence
            attempts, successes = np.asarray(state["attempts"], float), np.asarray(state["successes"], float)
            state = {
                "posteriors": {
                    "wins": successes.tolist(),
                    "losses": (attempts - successes).tolist(),
                    "seen": attempts.astype(int).tolist(),
                    "total": [successes.sum(), attempts.sum()],
                },
                "last": dict(self.last),
                "pending": [],
            }
        super().load_state_dict(state)
