"""Item: one prompt of a batch, the record the scheduler hands to rollout."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Prompt = str | list[dict]


@dataclass
class Item:
    """One prompt of a batch, as the scheduler hands it to rollout.

    Also readable as the mapping it once was (`item["prompt"]`, `item.get("data_source")`):
    the row's own extra fields (verl's `data_source`, `extra_info`) are in `extra`."""

    distribution: str  # the curriculum arm it was drawn from
    prompt: Prompt  # a string, or the row's {role, content} messages as given (budget template applied)
    answer: Any  # what the verifier compares against
    verifier: str  # a rollout.rewards kind or a reward file path/to/file.py:fn
    verifier_threshold: float = 1.0  # a score >= this counts as correct
    row_id: int | None = None  # the row's index in its distribution's training (or held-out) rows
    budget: int | None = None  # the step's length budget, None without a budget schedule
    seed: int | None = None  # the sampling seed the driver gives the request (reproducible runs)
    n: int | None = None  # samples to generate for it; None: rollout.group_size (rollout.group_rule sets it)
    extra: dict[str, Any] = field(default_factory=dict)  # every other field of the row

    def __getitem__(self, key: str) -> Any:
        if key in self.__dataclass_fields__ and key != "extra":
            return getattr(self, key)
        return self.extra[key]

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default
