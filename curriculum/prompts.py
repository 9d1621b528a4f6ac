"""Prompt-level sampling: which row of a distribution comes next.

The distribution-level curriculum (DUMP, SEC, ...) picks a distribution; a
prompt sampler then picks a row of it. Row ids are indices into the
distribution's training rows (deterministic by seed), so they are stable
across epochs and resume. Samplers see every generated group's outcomes per
row (`observe`), whether or not a filter kept the group.

- `shuffle` (the default): a fresh seeded permutation every epoch.
- `pass_rate`: per row, attempts, successes and a recency-weighted pass rate.
  A row whose last `retire_after` samples (at least that many) were all correct
  is retired; each draw re-tests a retired row with probability `recheck`, so
  forgetting is caught (one wrong sample brings the row back). Other rows are
  drawn without replacement with a band-pass weight on their pass rate p:
  1 inside [low, high], max(floor, 4 p (1 - p)) outside; unseen rows count as
  inside (optimistic). A distribution whose rows are all retired is only drawn
  for rechecks: its `availability()` drops to `recheck`, and the scheduler
  scales the curriculum's probability of drawing it by that.

A sampler by path (`curriculum.prompts.kind: my_file.py:MySampler`) needs the
methods `take`, `observe`, `availability`, `stats`, `state_dict` and
`load_state_dict`, and a constructor `(n_rows, seed, **params)`.
"""

from __future__ import annotations

import hashlib
from typing import Any, Sequence

import numpy as np

from gradus.curriculum.registry import Registry

SAMPLER_METHODS = ("take", "observe", "availability", "stats", "state_dict", "load_state_dict")


def derive_seed(*parts: Any, bits: int = 64) -> int:
    """A seed of `bits` bits from any parts (run seed, names, counters): the one
    seeding helper, so a resumed run draws exactly what the uninterrupted run
    drew. bits=31 gives vLLM's per-request sampling seeds."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") & ((1 << bits) - 1)


def _missing_methods(obj: Any) -> list[str]:
    return [f"no method {name}()" for name in SAMPLER_METHODS if not callable(getattr(obj, name, None))]


PROMPT_SAMPLERS: Registry[type] = Registry("prompt sampler", interface=_missing_methods, positional=2)


class PromptSampler:
    """Base: every row equally available; subclasses choose the order."""

    def __init__(self, n_rows: int, seed: tuple) -> None:
        if n_rows < 1:
            raise ValueError("a prompt sampler needs at least one row")
        self.n_rows, self.seed = n_rows, seed

    def take(self, n: int, rng: np.random.Generator | None) -> list[int]:
        """The next n row ids."""
        raise NotImplementedError

    def observe(self, row_id: int, correct: Sequence[bool]) -> None:
        """The outcomes of one generated group of row `row_id`."""

    def availability(self) -> float:
        """How much of the curriculum's probability this distribution keeps (1 = all)."""
        return 1.0

    def stats(self) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        del state


@PROMPT_SAMPLERS.register("shuffle")
class Shuffle(PromptSampler):
    """A fresh seeded permutation of the rows every epoch (needs no rng)."""

    def __init__(self, n_rows: int, seed: tuple) -> None:
        super().__init__(n_rows, seed)
        self.epoch, self.cursor = 0, 0
        self._order = self._permutation()

    def _permutation(self) -> np.ndarray:
        return np.random.default_rng(derive_seed(*self.seed, "epoch", self.epoch)).permutation(self.n_rows)

    def take(self, n: int, rng: np.random.Generator | None) -> list[int]:
        out = []
        for _ in range(n):
            if self.cursor == self.n_rows:
                self.epoch, self.cursor = self.epoch + 1, 0
                self._order = self._permutation()
            out.append(int(self._order[self.cursor]))
            self.cursor += 1
        return out

    def stats(self) -> dict[str, float]:
        return {"rows_seen": float(self.n_rows if self.epoch else self.cursor)}

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])
        self._order = self._permutation()


@PROMPT_SAMPLERS.register("pass_rate")
class PassRate(PromptSampler):
    """Retire solved rows, recheck them now and then, prefer the learnable band."""

    def __init__(
        self,
        n_rows: int,
        seed: tuple,
        retire_after: int = 4,
        recheck: float = 0.05,
        low: float = 0.2,
        high: float = 0.8,
        decay: float = 0.5,
        floor: float = 0.05,
    ) -> None:
        super().__init__(n_rows, seed)
        if (
            retire_after < 1
            or not 0 <= recheck <= 1
            or not 0 <= low <= high <= 1
            or not 0 < decay <= 1
            or not 0 < floor <= 1
        ):
            raise ValueError(
                "pass_rate sampler: need retire_after >= 1, 0 <= recheck <= 1, 0 <= low <= high <= 1, "
                "0 < decay <= 1, 0 < floor <= 1"
            )
        self.retire_after, self.recheck, self.low, self.high, self.decay, self.floor = (
            int(retire_after),
            float(recheck),
            low,
            high,
            decay,
            floor,
        )
        self.attempts = np.zeros(n_rows, dtype=np.int64)
        self.successes = np.zeros(n_rows, dtype=np.int64)
        self.rate = np.full(n_rows, np.nan)  # recency-weighted pass rate; nan = unseen
        self.streak = np.zeros(n_rows, dtype=np.int64)  # correct samples in a row, up to the newest

    def retired(self) -> np.ndarray:
        """Rows whose last retire_after samples were all correct."""
        return self.streak >= self.retire_after

    def weights(self) -> np.ndarray:
        """Band-pass weight per row from its pass rate (unseen rows: 1)."""
        p = self.rate
        inside = np.isnan(p) | ((p >= self.low) & (p <= self.high))
        outside = np.maximum(self.floor, 4 * np.nan_to_num(p) * (1 - np.nan_to_num(p)))
        return np.where(inside, 1.0, outside)

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
        return out

    def observe(self, row_id: int, correct: Sequence[bool]) -> None:
        if not len(correct):
            return
        outcomes = [bool(c) for c in correct]
        self.attempts[row_id] += len(outcomes)
        self.successes[row_id] += sum(outcomes)
        mean = sum(outcomes) / len(outcomes)
        previous = self.rate[row_id]
        self.rate[row_id] = mean if np.isnan(previous) else (1 - self.decay) * previous + self.decay * mean
        wrong = [i for i, c in enumerate(outcomes) if not c]
        self.streak[row_id] = self.streak[row_id] + len(outcomes) if not wrong else len(outcomes) - 1 - wrong[-1]

    def availability(self) -> float:
        return self.recheck if self.retired().all() else 1.0

    def stats(self) -> dict[str, float]:
        seen = self.attempts > 0
        return {
            "rows_retired": float(self.retired().sum()),
            "rows_seen": float(seen.sum()),
            "pass_rate": float(np.mean(self.rate[seen])) if seen.any() else float("nan"),
        }

    def state_dict(self) -> dict:
        return {
            "attempts": self.attempts.tolist(),
            "successes": self.successes.tolist(),
            "rate": [None if np.isnan(r) else float(r) for r in self.rate],
            "streak": self.streak.tolist(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.attempts = np.asarray(state["attempts"], dtype=np.int64)
        self.successes = np.asarray(state["successes"], dtype=np.int64)
        self.rate = np.array([np.nan if r is None else r for r in state["rate"]], dtype=float)
        self.streak = np.asarray(state["streak"], dtype=np.int64)


def make_prompt_sampler(spec: dict | None, n_rows: int, seed: tuple) -> PromptSampler:
    """`spec` as in the config: {"kind": name or path/to/file.py:Name, **params}."""
    spec = dict(spec or {"kind": "shuffle"})
    return PROMPT_SAMPLERS.build(spec.pop("kind", "shuffle"), n_rows, seed, **spec)
