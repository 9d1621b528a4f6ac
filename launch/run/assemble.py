"""What a run is assembled from before its first step: the scheduler's
arguments (checked in this process first), Ray, held-out items with their
seeds, and the record of a step's generation half (Produced)."""

from __future__ import annotations

import dataclasses
import math
import os
import signal
from dataclasses import dataclass
from typing import Any

import ray

from gradus.curriculum.items import Item
from gradus.curriculum.prompts import derive_seed
from gradus.curriculum.scheduler import CurriculumScheduler
from gradus.launch.config.schema import Config
from gradus.launch.errors import GradusError
from gradus.launch.run.preempt import StartupStopped
from gradus.rollout.records import Group, Sample


def scheduler_args(cfg: Config) -> dict[str, Any]:
    return {
        "distributions": [dataclasses.asdict(d) for d in cfg.data.distributions],
        "curriculum": cfg.curriculum.bandit["kind"],
        "curriculum_params": {k: v for k, v in cfg.curriculum.bandit.items() if k != "kind"},
        "filters": cfg.curriculum.filters,
        "budget": cfg.curriculum.budget,
        "budget_prompt": cfg.curriculum.budget_prompt,
        "train_size": cfg.data.train_size,
        "eval_size": cfg.data.eval_size,
        "seed": cfg.run.seed,
        "prompts": cfg.curriculum.prompts,
    }


@dataclass
class Produced:
    """The generation half of a step: what the trainer half needs, and the
    scheduler's state after it (a checkpoint taken before the step trains keeps it)."""

    report: dict[str, Any]  # the curriculum's probabilities and scores the batch was drawn with
    groups: list[Group]  # every group generated, kept or not
    kept: list[bool]  # the filters' verdict per group
    stats: dict[str, float]  # generation time, refill rounds, group counts
    scheduler: dict[str, Any]  # CurriculumScheduler.state_dict() after this batch

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Produced:
        """The record back from its dataclasses.asdict form (a checkpoint's pending.json)."""
        groups = [
            Group(Item(**g["item"]), g["prompt_ids"], [Sample(**s) for s in g["samples"]], g["version"])
            for g in data["groups"]
        ]
        return cls(data["report"], groups, data["kept"], data["stats"], data["scheduler"])


def local_scheduler(cfg: Config) -> CurriculumScheduler:
    """The run's scheduler as a plain object; bad data or curriculum parameters
    (incl. distribution names that split_by produces) become one clear error."""
    try:
        scheduler = CurriculumScheduler(**scheduler_args(cfg))
    except (ValueError, KeyError, TypeError) as err:
        raise GradusError(str(err).strip("'\"")) from None
    for note in scheduler.notes:  # e.g. a data.train_size cap that cuts a file
        print(f"gradus: {note}", flush=True)
    return scheduler


def eval_items(rows: dict[str, list[Item]], seed: int) -> list[Item]:
    """Every held-out row of every distribution, each with its sampling seed (the
    same in every evaluation of a run, and in `gradus eval`)."""
    items = [row for name in rows for row in rows[name]]
    return [dataclasses.replace(row, seed=derive_seed(seed, "eval", i, bits=31)) for i, row in enumerate(items)]


def bf16_on_gpus() -> bool:
    """Whether the cluster's GPUs compute in bf16 (Ampere and later): asked of one GPU, before anything is placed."""

    def probe() -> bool:
        import torch

        return bool(torch.cuda.is_bf16_supported())

    task = ray.remote(num_gpus=1, num_cpus=0)(probe).remote()
    try:
        return bool(ray.get(task, timeout=300))
    except ray.exceptions.GetTimeoutError:
        ray.cancel(task, force=True)
        raise GradusError(
            "model.dtype=auto asks one GPU whether it computes in bf16, and no GPU was free within 300 s; "
            "set model.dtype=bfloat16 or float16"
        ) from None


def init_ray(cfg: Config) -> None:
    """Join the cluster named by cluster.address (or RAY_ADDRESS), else start a
    local Ray with enough logical CPUs for every actor. ray.init puts its own
    SIGTERM handler (sys.exit) in place while it runs: a SIGTERM then is a stop
    during start-up like any other (StartupStopped), not a bare exit 15."""
    address = cfg.cluster.address or os.environ.get("RAY_ADDRESS")
    need = cfg.rollout.num_workers * cfg.rollout.cpus_per_worker + cfg.trainer.world_size * cfg.trainer.cpus_per_rank
    try:
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=max(os.cpu_count() or 1, math.ceil(need)), include_dashboard=False, log_to_driver=False)
    except SystemExit as err:
        if err.code == signal.SIGTERM:
            raise StartupStopped("SIGTERM") from None
        raise
