"""CurriculumScheduler: decides every batch (which distribution, which row, which
length budget), filters uninformative groups, and learns from the signals.

A plain class so it is unit-tested without Ray; `remote_scheduler` wraps it in
an actor for the driver.
"""

from __future__ import annotations

import time
from typing import Any, Mapping, Sequence

import numpy as np

from gradus.curriculum.bandits import make_curriculum
from gradus.curriculum.budget import make_budget_schedule
from gradus.curriculum.filters import make_filter
from gradus.curriculum.items import Item
from gradus.curriculum.row_posteriors import allocate_group_sizes
from gradus.curriculum.sources import Distribution, make_distributions


def with_budget(prompt: str | list[dict], template: str, budget: int) -> str | list[dict]:
    """The budget template applied to a string prompt, or to the last user
    message of a chat prompt (other messages unchanged)."""
    if isinstance(prompt, str):
        return template.format(prompt=prompt, budget=budget)
    last = max(i for i, m in enumerate(prompt) if m["role"] == "user")
    return [
        {**m, "content": template.format(prompt=m["content"], budget=budget)} if i == last else m
        for i, m in enumerate(prompt)
    ]


class CurriculumScheduler:
    def __init__(
        self,
        distributions: Sequence[Mapping[str, Any]],
        curriculum: str = "uniform",
        curriculum_params: Mapping[str, Any] | None = None,
        filters: Sequence[Mapping[str, Any]] = (),
        budget: Mapping[str, Any] | None = None,
        budget_prompt: str = "",
        train_size: int | None = None,
        eval_size: int = 32,
        seed: int = 0,
        prompts: Mapping[str, Any] | None = None,
    ) -> None:
        """`train_size=None`: every row of a file, DEFAULT_SYNTHETIC_ROWS of a generator.
        `prompts`: the prompt-level sampler inside every distribution (curriculum/prompts.py),
        e.g. {"kind": "pass_rate", "retire_after": 8}; default {"kind": "shuffle"}."""
        self.distributions: dict[str, Distribution] = {}
        for spec in distributions:
            for dist in make_distributions(spec, train_size, eval_size, seed, prompts):
                if dist.name in self.distributions:
                    raise ValueError(
                        f"distribution {dist.name!r} appears twice "
                        "(a split_by value may repeat another distribution's name)"
                    )
                self.distributions[dist.name] = dist
        self.notes = [d.note for d in self.distributions.values() if d.note]
        self.curriculum = make_curriculum(curriculum, list(self.distributions), **dict(curriculum_params or {}))
        self.filters = [make_filter(f["kind"], **{k: v for k, v in f.items() if k != "kind"}) for f in filters]
        self.budget = make_budget_schedule(**budget) if budget else None
        self.budget_prompt = budget_prompt
        self.rng = np.random.default_rng(seed)
        self.overhead_s = 0.0
        self._step: int | None = None  # the step of the last draw: a new one restarts per-step statistics

    def next_batch(self, step: int, n: int) -> list[Item]:
        """n prompts tagged with distribution, verifier and the step's budget."""
        start = time.perf_counter()
        if step != self._step:
            self._step = step
            for dist in self.distributions.values():
                getattr(dist.sampler, "begin_step", lambda: None)()
        self.curriculum.set_step(step)
        names = self.curriculum.sample(n, self.rng, scale=self.availability())
        rows = {
            name: iter(self.distributions[name].take(names.count(name), self.rng)) for name in dict.fromkeys(names)
        }  # one draw per distribution
        batch = []
        for name in names:
            dist, row = self.distributions[name], next(rows[name])
            budget = self.budget_for(name, step)
            prompt = (
                row["prompt"]
                if budget is None or not self.budget_prompt
                else with_budget(row["prompt"], self.budget_prompt, budget)
            )
            batch.append(self._item(dist, {**row, "prompt": prompt}, budget))
        self.overhead_s += time.perf_counter() - start
        return batch

    def group_sizes(self, items: Sequence[Item], base: int, low: int, high: int) -> list[int]:
        """A group size per item within the step's budget of base x len(items)
        samples (rollout.group_rule): each sample where the row's posterior says it
        most lowers the chance of an all-equal group (curriculum/row_posteriors.py);
        rows of a sampler without posteriors count as p ~ Beta(1, 1)."""

        sizes = np.arange(low, high + 1)
        chances = np.tile(2.0 / (sizes + 1.0), (len(items), 1))  # E[p^n + (1-p)^n] under a uniform p
        for name in {item.distribution for item in items}:
            posteriors = getattr(self.distributions[name].sampler, "posteriors", None)
            at = [i for i, item in enumerate(items) if item.distribution == name and item.row_id is not None]
            if posteriors is not None and at:
                rows = [items[i].row_id for i in at]
                chances[at] = np.stack([posteriors.zero_var(rows, int(n)) for n in sizes], axis=1)
        return allocate_group_sizes(chances, base, low)

    def budget_for(self, name: str, step: int) -> int | None:
        """The schedule's budget, or a distribution's own base budget decayed by
        the same factor as the schedule (budget(step) / budget(0))."""
        if self.budget is None:
            return None
        base = self.distributions[name].budget
        if base is None:
            return self.budget(step)
        return max(1, round(base * self.budget(step) / self.budget(0)))

    def keep(self, groups: Sequence[Mapping[str, Sequence[float]]]) -> list[bool]:
        """Filter decisions per group ({"correct": [...], "rewards": [...]}); no state change."""
        start = time.perf_counter()
        out = [all(f.keep(g["correct"], g["rewards"]) for f in self.filters) for g in groups]
        self.overhead_s += time.perf_counter() - start
        return out

    def observe(self, step: int, signals: Mapping[str, Sequence[float]]) -> None:
        """One curriculum update per step from the |advantage| of every generated
        sample, filtered or not: dropped groups are exactly the ones that say a
        distribution is too easy or too hard right now."""
        start = time.perf_counter()
        self.curriculum.set_step(step)
        self.curriculum.update({k: list(v) for k, v in signals.items() if len(v)})
        self.overhead_s += time.perf_counter() - start

    def observe_rows(self, results: Sequence[Mapping[str, Any]]) -> None:
        """Every generated group's outcomes per row, filtered or not:
        [{"distribution", "row_id", "correct": [bool, ...]}, ...] (correct as the
        verifier decides, a file verifier's acc/threshold rule included)."""
        start = time.perf_counter()
        for result in results:
            self.distributions[result["distribution"]].sampler.observe(int(result["row_id"]), list(result["correct"]))
        self.overhead_s += time.perf_counter() - start

    def availability(self) -> dict[str, float] | None:
        """Per distribution, the share of the curriculum's probability it keeps
        (a distribution whose rows are all retired is drawn only for rechecks);
        None while every distribution is fully available."""
        shares = {name: d.sampler.availability() for name, d in self.distributions.items()}
        return shares if any(v < 1.0 for v in shares.values()) else None

    def report(self, step: int) -> dict[str, Any]:
        """Probabilities and bandit scores that step's batch is drawn with, and
        each distribution's prompt-level statistics (rows retired, seen, ...)."""
        self.curriculum.set_step(step)
        probs = self.curriculum.probabilities()
        shares = {name: d.sampler.availability() for name, d in self.distributions.items()}
        total = sum(probs[n] * shares[n] for n in probs) or 1.0
        return {
            "probabilities": probs,
            "scores": self.curriculum.scores(),
            "rows": {
                name: {**d.sampler.stats(), "available": shares[name], "draw_prob": probs[name] * shares[name] / total}
                for name, d in self.distributions.items()
            },
        }

    def row_stats(self) -> dict[str, dict[str, float]]:
        """Each distribution's prompt-level statistics once the step's groups are
        observed (report()'s are from before its draw): skips and calibration of
        this step, with `observed_groups`, the groups they cover, where the sampler
        keeps posteriors."""
        out = {name: d.sampler.stats() for name, d in self.distributions.items()}
        for name, d in self.distributions.items():
            if hasattr(d.sampler, "observed_groups"):
                out[name]["observed_groups"] = float(d.sampler.observed_groups)
        return out

    def pop_overhead(self) -> float:
        """The scheduler's own compute seconds since the last call."""
        seconds, self.overhead_s = self.overhead_s, 0.0
        return seconds

    def eval_rows(self) -> dict[str, list[Item]]:
        """Each distribution's held-out rows (never drawn for training) as items,
        `row_id` their index among the held-out rows."""
        return {
            name: [self._item(d, {**row, "row_id": i}) for i, row in enumerate(d.eval_rows)]
            for name, d in self.distributions.items()
        }

    @staticmethod
    def _item(dist: Distribution, row: Mapping[str, Any], budget: int | None = None) -> Item:
        known = ("prompt", "answer", "row_id")
        return Item(
            distribution=dist.name,
            prompt=row["prompt"],
            answer=row["answer"],
            verifier=dist.verifier,
            verifier_threshold=dist.verifier_threshold,
            row_id=row.get("row_id"),
            budget=budget,
            extra={k: v for k, v in row.items() if k not in known},
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "curriculum": self.curriculum.state_dict(),
            "cursors": {name: d.state_dict() for name, d in self.distributions.items()},
            "rng": self.rng.bit_generator.state,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.curriculum.load_state_dict(state["curriculum"])
        for name, cursor in state["cursors"].items():
            self.distributions[name].load_state_dict(cursor)
        self.rng.bit_generator.state = state["rng"]


def remote_scheduler(**kwargs: Any) -> Any:
    """The scheduler as a Ray actor (no CPU reserved: it only does bookkeeping)."""
    import ray

    return ray.remote(num_cpus=0)(CurriculumScheduler).remote(**kwargs)
