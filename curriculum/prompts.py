"""Prompt-level sampling: which row of a distribution comes next.

The distribution-level curriculum (DUMP, SEC, ...) picks a distribution; a
prompt sampler then picks a row of it. Row ids are indices into the
distribution's training rows (deterministic by seed), so they are stable
across epochs and resume. Samplers see every generated group's outcomes per
row (`observe`), whether or not a filter kept the group.

- `shuffle` (the default): a fresh seeded permutation every epoch.
- `pass_rate`, `thompson`, `greso`: samplers on per-row Beta posteriors that
  decide before rollout (curriculum/posteriors.py).

A sampler by path (`curriculum.prompts.kind: my_file.py:MySampler`) needs the
methods `take`, `observe`, `availability`, `stats`, `state_dict` and
`load_state_dict`, and a constructor `(n_rows, seed, **params)`; `begin_step`
is optional.
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

    def begin_step(self) -> None:
        """A training step's first draw comes next: per-step statistics restart
        (optional for plugins; a step may draw several times when filters refill)."""

    def stats(self) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        del state


class RowWalk:
    """Rows in a fresh seeded permutation every epoch; its position is its state
    (epoch, cursor), so a resumed walk goes on with the same rows."""

    def __init__(self, n_rows: int, seed: tuple, tag: str) -> None:
        self.n_rows, self.seed, self.tag = n_rows, seed, tag
        self.epoch, self.cursor = 0, 0
        self._order = self._permutation()

    def _permutation(self) -> np.ndarray:
        return np.random.default_rng(derive_seed(*self.seed, self.tag, self.epoch)).permutation(self.n_rows)

    def next(self) -> int:
        if self.cursor == self.n_rows:
            self.epoch, self.cursor = self.epoch + 1, 0
            self._order = self._permutation()
        self.cursor += 1
        return int(self._order[self.cursor - 1])

    def rows_seen(self) -> int:
        return self.n_rows if self.epoch else self.cursor

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])
        self._order = self._permutation()


@PROMPT_SAMPLERS.register("shuffle")
class Shuffle(PromptSampler):
    """A fresh seeded permutation of the rows every epoch (needs no rng)."""

    def __init__(self, n_rows: int, seed: tuple) -> None:
        super().__init__(n_rows, seed)
        self.walk = RowWalk(n_rows, seed, "epoch")

    def take(self, n: int, rng: np.random.Generator | None) -> list[int]:
        return [self.walk.next() for _ in range(n)]

    def stats(self) -> dict[str, float]:
        return {"rows_seen": float(self.walk.rows_seen())}

    def state_dict(self) -> dict:
        return self.walk.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.walk.load_state_dict(state)


def make_prompt_sampler(spec: dict | None, n_rows: int, seed: tuple) -> PromptSampler:
    """`spec` as in the config: {"kind": name or path/to/file.py:Name, **params}."""
    spec = dict(spec or {"kind": "shuffle"})
    kind = spec.pop("kind", "shuffle")
    return PROMPT_SAMPLERS.build(kind, n_rows, seed, **spec)
