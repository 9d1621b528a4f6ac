"""Every pick-by-name of a run config with the registry it picks from: the one
table that validation checks and `gradus list` prints."""

from __future__ import annotations

from typing import Any

from gradus.curriculum.bandits import CURRICULA
from gradus.curriculum.budget import BUDGETS
from gradus.curriculum.filters import FILTERS
from gradus.curriculum import posteriors  # noqa: F401 - registers pass_rate, thompson and greso
from gradus.curriculum.prompts import PROMPT_SAMPLERS
from gradus.curriculum.registry import Registry
from gradus.curriculum.sources import SOURCES
from gradus.launch.config.schema import DEVICES, DTYPES, WANDB_MODES, Config
from gradus.rollout.rewards import VERIFIERS
from gradus.trainer.config import (
    IMPORTANCE_MODES,
    IMPORTANCE_SCOPES,
    KL_PLACEMENTS,
    OFFLOAD_DEVICES,
    OLD_LOGPROBS,
    OPTIMIZERS,
)
from gradus.trainer.grpo import ADVANTAGE_ESTIMATORS, AGGREGATIONS, KL_PENALTIES, RATIO_LEVELS, REWARD_SCALES
from gradus.trainer.schedules import LR_SCHEDULES
from gradus.trainer.sync import TRANSPORTS

# config key (a distribution's, filter's or spec's index written as N) -> registry
REGISTRIES: dict[str, Registry[Any]] = {
    "data.distributions.N.source": SOURCES,
    "data.distributions.N.verifier": VERIFIERS,
    "curriculum.bandit.kind": CURRICULA,
    "curriculum.filters.N.kind": FILTERS,
    "curriculum.budget.kind": BUDGETS,
    "curriculum.prompts.kind": PROMPT_SAMPLERS,
    "trainer.estimator": ADVANTAGE_ESTIMATORS,
    "trainer.scale_rewards": REWARD_SCALES,
    "trainer.ratio_level": RATIO_LEVELS,
    "trainer.loss_agg": AGGREGATIONS,
    "trainer.kl_kind": KL_PENALTIES,
    "trainer.kl_in": KL_PLACEMENTS,
    "trainer.old_logprobs": OLD_LOGPROBS,
    "trainer.lr_schedule": LR_SCHEDULES,
    "trainer.optimizer": OPTIMIZERS,
    "trainer.importance.mode": IMPORTANCE_MODES,
    "trainer.importance.on": IMPORTANCE_SCOPES,
    "trainer.offload.optimizer": OFFLOAD_DEVICES,
    "trainer.offload.params": OFFLOAD_DEVICES,
    "sync.transport": TRANSPORTS,
    "model.dtype": DTYPES,
    "cluster.device": DEVICES,
    "wandb.mode": WANDB_MODES,
}


def picks(cfg: Config, legacy_curriculum: bool = False) -> list[tuple[str, str, Registry[Any]]]:
    """(config key, chosen name, registry) for every pick-by-name `cfg` makes."""
    t = cfg.trainer
    out = []
    for i, dist in enumerate(cfg.data.distributions):
        out += [
            (f"data.distributions.{i}.source", dist.source, SOURCES),
            (f"data.distributions.{i}.verifier", dist.verifier, VERIFIERS),
        ]
    named = "curriculum.kind" if legacy_curriculum else "curriculum.bandit.kind"  # as the config said
    out += [(named, str(cfg.curriculum.bandit.get("kind")), CURRICULA)]
    out += [
        (f"curriculum.filters.{i}.kind", str(spec.get("kind")), FILTERS)
        for i, spec in enumerate(cfg.curriculum.filters)
    ]
    if cfg.curriculum.budget is not None:
        out.append(("curriculum.budget.kind", str(cfg.curriculum.budget.get("kind")), BUDGETS))
    out.append(("curriculum.prompts.kind", str(cfg.curriculum.prompts.get("kind", "shuffle")), PROMPT_SAMPLERS))
    plain = {
        key: registry for key, registry in REGISTRIES.items() if ".N." not in key and not key.startswith("curriculum.")
    }
    values = {
        "trainer.loss_agg": t.loss_agg,
        "trainer.importance.mode": t.importance.mode,
        "trainer.importance.on": t.importance.on,
        "trainer.offload.optimizer": t.offload.optimizer,
        "trainer.offload.params": t.offload.params,
    }
    for key, registry in plain.items():
        section, _, name = key.partition(".")
        value = values[key] if key in values else getattr(getattr(cfg, section), name)
        if value is not None:  # loss_agg None: resolved from ratio_level
            out.append((key, str(value), registry))
    return out


def listing() -> str:
    """Every registry with its entries and their parameters (`gradus list`)."""
    lines = []
    for key, registry in REGISTRIES.items():
        if key in ("trainer.offload.params",):  # the same registry as trainer.offload.optimizer
            continue
        plugins = ", or a plugin path/to/file.py:Name" if registry.plugins else ""
        lines.append(f"{key} ({registry.what}{plugins}):")
        lines += [f"  {name:<24}{registry.describe(name)}".rstrip() for name in registry]
    return "\n".join(lines)
