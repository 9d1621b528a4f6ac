"""Data distributions: where each distribution's rows come from, its held-out
split, and the cursor that walks its training rows (part of resumable state)."""
from __future__ import annotations

import hashlib
from typing import Any, Callable

import numpy as np

from curriculum.registry import Registry

Row = dict[str, Any]  # {"prompt": str, "answer": Any}
SOURCES: Registry[Callable[..., Callable[[np.random.Generator], Row]]] = Registry("data source")


@SOURCES.register("arithmetic")
def arithmetic(digits: int = 1, ops: str = "+") -> Callable[[np.random.Generator], Row]:
    """'What is a + b?' with `digits`-digit operands: difficulty grows with digits."""
    if digits < 1 or not ops or set(ops) - set("+-*"):
        raise ValueError("arithmetic: digits must be >= 1 and ops a string of + - *")
    low = 0 if digits == 1 else 10 ** (digits - 1)
    high = 10**digits

    def draw(rng: np.random.Generator) -> Row:
        a, b = (int(x) for x in rng.integers(low, high, size=2))
        op = ops[int(rng.integers(len(ops)))]
        value = {"+": a + b, "-": a - b, "*": a * b}[op]
        return {"prompt": f"What is {a} {op} {b}?", "answer": str(value)}

    return draw


def _seed(*parts: Any) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little")


class Distribution:
    """One named distribution: unique rows split into train and held-out, and a
    shuffled cursor over the train rows that reshuffles every epoch."""

    def __init__(self, name: str, source: str, params: dict, verifier: str, train_size: int, eval_size: int, seed: int) -> None:
        self.name, self.verifier, self.seed = name, verifier, seed
        draw = SOURCES.build(source, **params)
        rows = _unique_rows(draw, np.random.default_rng(_seed(seed, name, "rows")), train_size + eval_size)
        if len(rows) <= eval_size:
            raise ValueError(f"distribution {name!r}: only {len(rows)} distinct rows, fewer than eval_size+1")
        self.eval_rows, self.train_rows = rows[:eval_size], rows[eval_size:]
        self.epoch, self.cursor = 0, 0
        self._order = self._permutation()

    def _permutation(self) -> np.ndarray:
        return np.random.default_rng(_seed(self.seed, self.name, "epoch", self.epoch)).permutation(len(self.train_rows))

    def take(self, n: int) -> list[Row]:
        out = []
        for _ in range(n):
            if self.cursor == len(self.train_rows):
                self.epoch, self.cursor = self.epoch + 1, 0
                self._order = self._permutation()
            out.append(self.train_rows[int(self._order[self.cursor])])
            self.cursor += 1
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])
        self._order = self._permutation()


def _unique_rows(draw: Callable[[np.random.Generator], Row], rng: np.random.Generator, wanted: int) -> list[Row]:
    """Up to `wanted` rows with distinct prompts (small spaces such as 1-digit
    addition run out sooner; that is fine, held-out rows still never leak)."""
    seen: dict[str, Row] = {}
    for _ in range(20 * wanted + 100):
        row = draw(rng)
        seen.setdefault(row["prompt"], row)
        if len(seen) == wanted:
            break
    return list(seen.values())

