"""Curricula over data distributions: the probability each prompt slot draws from each.

Formulas follow the contract in the design notes (shared/DESIGN.md beside the
repository; the formulas are restated in each class's docstring): DUMP's UCB over a sliding window of
|advantage| and SEC's TD(0) value with Boltzmann sampling, plus the uniform,
fixed-mixture and staged baselines that ablations compare against.
"""

from __future__ import annotations

import math
import random
from collections import deque
from typing import Any, Mapping, Sequence

import numpy as np

from gradus.curriculum.registry import Registry, nearest

CURRICULUM_METHODS = ("probabilities", "scores", "set_step", "update", "sample", "state_dict", "load_state_dict")


def curriculum_interface(obj: Any) -> list[str]:
    """What a curriculum plugin (`file.py:Class`) lacks: a class taking
    (names, **params) with the Curriculum methods; subclassing Curriculum
    gives every method but `probabilities`."""
    if not isinstance(obj, type):
        return [f"{obj!r} is not a class; a curriculum is a class taking (names, **params)"]
    missing = [m for m in CURRICULUM_METHODS if not callable(getattr(obj, m, None))]
    if getattr(obj, "probabilities", None) is Curriculum.probabilities:
        missing.append("probabilities")
    return (
        [f"missing method {', '.join(missing)} (subclass curriculum.bandits.Curriculum and define probabilities())"]
        if missing
        else []
    )


CURRICULA: Registry[type["Curriculum"]] = Registry("curriculum", curriculum_interface, positional=1)


def advantage_signals(distributions: Sequence[str], advantages: Sequence[Sequence[float]]) -> dict[str, list[float]]:
    """The curricula's update signal (`Curriculum.update`): per distribution, the
    |advantage| of every sample of every group generated from it this step
    (distributions[i] is group i's)."""
    signals: dict[str, list[float]] = {}
    for name, group in zip(distributions, advantages):
        signals.setdefault(name, []).extend(abs(a) for a in group)
    return signals


def softmax(values: Sequence[float], temperature: float) -> np.ndarray:
    z = np.asarray(values, dtype=np.float64) / temperature
    z = z - z.max()
    e = np.exp(z)
    return e / e.sum()


class Curriculum:
    """Base: a named set of distributions with sampling probabilities."""

    def __init__(self, names: Sequence[str]) -> None:
        names = [str(n) for n in names]
        if not names:
            raise ValueError("a curriculum needs at least one distribution")
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate distribution names in {names}")
        self.names = names

    def probabilities(self) -> dict[str, float]:
        raise NotImplementedError

    def scores(self) -> dict[str, float]:
        """The bandit's own value per distribution (for metrics); probabilities by default."""
        return self.probabilities()

    def set_step(self, step: int) -> None:
        """Schedules that depend on the step (staged) override this."""

    def update(self, signals: Mapping[str, Sequence[float]]) -> None:
        """Per distribution, the per-sample |advantage| values seen this step."""
        self._check_names(signals)

    def sample(self, n: int, rng: Any, scale: Mapping[str, float] | None = None) -> list[str]:
        """n names drawn with the curriculum's probabilities, each optionally
        scaled (e.g. by how much of a distribution is still available)."""
        probs = self.probabilities()
        weights = [probs[name] * (scale[name] if scale else 1.0) for name in self.names]
        if not sum(weights):  # nothing available anywhere: fall back to the curriculum's own probabilities
            weights = [probs[name] for name in self.names]
        if isinstance(rng, random.Random):
            return rng.choices(self.names, weights=weights, k=n)
        return [self.names[i] for i in rng.choice(len(self.names), size=n, p=np.asarray(weights) / sum(weights))]

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: Mapping) -> None:
        del state

    def _check_names(self, signals: Mapping[str, Any], what: str = "signals") -> None:
        unknown = sorted(set(signals) - set(self.names))
        if unknown:
            raise KeyError(
                f"{what} name unknown distributions {unknown}{nearest(unknown[0], self.names)}; "
                f"the distributions are {self.names}"
            )


@CURRICULA.register("uniform")
class Uniform(Curriculum):
    def probabilities(self) -> dict[str, float]:
        return {name: 1.0 / len(self.names) for name in self.names}


@CURRICULA.register("fixed")
class Fixed(Curriculum):
    """A fixed mixture; weights need not sum to one."""

    def __init__(self, names: Sequence[str], weights: Mapping[str, float]) -> None:
        super().__init__(names)
        self._check_names(weights, "fixed curriculum weights")
        total = sum(float(weights.get(name, 0.0)) for name in self.names)
        if total <= 0 or any(float(w) < 0 for w in weights.values()):
            raise ValueError(f"fixed curriculum weights must be >= 0 with a positive sum, got {dict(weights)}")
        self.weights = {name: float(weights.get(name, 0.0)) / total for name in self.names}

    def probabilities(self) -> dict[str, float]:
        return dict(self.weights)


@CURRICULA.register("staged")
class Staged(Curriculum):
    """Easy -> hard: stage i (a list of distributions, sampled uniformly) runs from
    step boundaries[i-1] until boundaries[i]."""

    def __init__(self, names: Sequence[str], stages: Sequence[Sequence[str]], boundaries: Sequence[int]) -> None:
        super().__init__(names)
        if len(boundaries) != len(stages) - 1 or list(boundaries) != sorted(boundaries):
            raise ValueError("staged curriculum: need len(stages)-1 increasing step boundaries")
        for stage in stages:
            self._check_names({name: [] for name in stage}, "staged curriculum stages")
            if not stage:
                raise ValueError("staged curriculum: empty stage")
        self.stages = [list(s) for s in stages]
        self.boundaries = [int(b) for b in boundaries]
        self.step = 0

    def set_step(self, step: int) -> None:
        self.step = int(step)

    def probabilities(self) -> dict[str, float]:
        stage = self.stages[sum(self.step >= b for b in self.boundaries)]
        return {name: (1.0 / len(stage) if name in stage else 0.0) for name in self.names}

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, state: Mapping) -> None:
        self.step = int(state["step"])


@CURRICULA.register("ucb")
class UCB(Curriculum):
    """DUMP: learnability L_j = mean of the last `window` |advantage| values of j,
    UCB_j = L_j + c*sqrt(2 ln(N+1) / (n_j+1)), p = softmax(UCB / temperature)."""

    def __init__(self, names: Sequence[str], c: float = 1.0, window: int = 300, temperature: float = 0.1) -> None:
        super().__init__(names)
        if window < 1 or temperature <= 0:
            raise ValueError("ucb curriculum: window must be >= 1 and temperature > 0")
        self.c, self.window, self.temperature = float(c), int(window), float(temperature)
        self.recent = {name: deque(maxlen=self.window) for name in self.names}
        self.counts = {name: 0 for name in self.names}

    def update(self, signals: Mapping[str, Sequence[float]]) -> None:
        self._check_names(signals)
        for name, values in signals.items():
            values = [float(v) for v in values]
            self.recent[name].extend(values)
            self.counts[name] += len(values)

    def scores(self) -> dict[str, float]:
        total = sum(self.counts.values())
        out = {}
        for name in self.names:
            recent = self.recent[name]
            learnability = sum(recent) / len(recent) if recent else 0.0
            bonus = self.c * math.sqrt(2.0 * math.log(total + 1) / (self.counts[name] + 1))
            out[name] = learnability + bonus
        return out

    def probabilities(self) -> dict[str, float]:
        scores = self.scores()
        probs = softmax([scores[n] for n in self.names], self.temperature)
        return dict(zip(self.names, probs.tolist()))

    def state_dict(self) -> dict:
        return {"recent": {n: list(v) for n, v in self.recent.items()}, "counts": dict(self.counts)}

    def load_state_dict(self, state: Mapping) -> None:
        self.recent = {n: deque(state["recent"][n], maxlen=self.window) for n in self.names}
        self.counts = {n: int(state["counts"][n]) for n in self.names}


@CURRICULA.register("td0")
class TD0(Curriculum):
    """SEC: Q_j <- alpha * mean(values_j) + (1 - alpha) * Q_j for distributions seen
    this step, p = softmax(Q / temperature). Others keep Q, or with
    decay_unsampled (SEC's released code) decay toward 0: Q_j <- (1 - alpha) * Q_j."""

    def __init__(
        self, names: Sequence[str], alpha: float = 0.5, temperature: float = 1.0, decay_unsampled: bool = False
    ) -> None:
        super().__init__(names)
        if not 0 <= alpha <= 1 or temperature <= 0:
            raise ValueError("td0 curriculum: alpha must be in [0, 1] and temperature > 0")
        self.alpha, self.temperature, self.decay_unsampled = float(alpha), float(temperature), bool(decay_unsampled)
        self.q = {name: 0.0 for name in self.names}

    def update(self, signals: Mapping[str, Sequence[float]]) -> None:
        self._check_names(signals)
        for name in self.names:
            values = signals.get(name) or ()
            if len(values):
                reward = sum(float(v) for v in values) / len(values)
                self.q[name] = self.alpha * reward + (1 - self.alpha) * self.q[name]
            elif self.decay_unsampled:
                self.q[name] = (1 - self.alpha) * self.q[name]

    def scores(self) -> dict[str, float]:
        return dict(self.q)

    def probabilities(self) -> dict[str, float]:
        probs = softmax([self.q[n] for n in self.names], self.temperature)
        return dict(zip(self.names, probs.tolist()))

    def state_dict(self) -> dict:
        return {"q": dict(self.q)}

    def load_state_dict(self, state: Mapping) -> None:
        self.q = {n: float(state["q"][n]) for n in self.names}


def make_curriculum(kind: str, names: Sequence[str], **params: Any) -> Curriculum:
    return CURRICULA.build(kind, names, **params)
