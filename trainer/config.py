"""The trainer's settings (the `trainer:` section of a run config), defined
here beside the code that reads them, as rollout.rewards.RewardWeights is for
the reward. The ranks receive this object itself; `loss_options` resolves
what depends on other settings (GSPO's clip range, Dr.GRPO's divisor)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from gradus.curriculum.registry import Registry


def choices(what: str, entries: dict[str, str]) -> Registry[str]:
    """A registry of named settings, each with a one-line description."""
    registry: Registry[str] = Registry(what, plugins=False)
    for name, doc in entries.items():
        registry.add(name, doc)
    return registry


OLD_LOGPROBS = choices(
    "old log-prob source",
    {"recompute": "the trainer's own forward before any update", "rollout": "vLLM's sampling log-probs"},
)
KL_PLACEMENTS = choices(
    "KL placement", {"loss": "a KL term in the loss", "reward": "reward -= kl_coef * summed KL, before advantages"}
)
IMPORTANCE_MODES = choices(
    "importance mode", {"truncate": "min(weight, cap)", "mask": "tokens over the cap get weight 0 (AReaL)"}
)
IMPORTANCE_SCOPES = choices(
    "importance scope", {"stale": "async samples only (decoupled PPO)", "all": "every token (rollout/trainer mismatch)"}
)
OPTIMIZERS = choices(
    "optimizer",
    {
        "adamw": "AdamW (fused): the default",
        "sgd": "plain SGD: an update proportional to the gradient (exactness checks)",
    },
)
OFFLOAD_DEVICES = choices(
    "offload device", {"none": "keep on the accelerator", "cpu": "DeepSpeed ZeRO offload to CPU memory"}
)


@dataclass
class ImportanceConfig:
    """Per-token pi_proximal / pi_behaviour weights (docs/reference/losses.md)."""

    mode: str = "truncate"  # truncate: min(weight, cap) | mask: tokens over the cap get weight 0 (AReaL)
    cap: float = 2.0
    on: str = "stale"  # stale: async samples only (decoupled PPO) | all: every token (rollout/trainer mismatch)


@dataclass
class LoraConfig:
    """LoRA adapters (peft): only they train; syncs and exports carry merged weights."""

    rank: int = 16
    alpha: float = 32.0  # scale = alpha / rank
    dropout: float = 0.0  # 0: the forward that computes the GRPO ratio must be the sampling policy
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )


@dataclass
class OffloadConfig:
    """DeepSpeed ZeRO offload on CUDA (a CPU-only run already keeps everything in CPU memory)."""

    optimizer: str = "none"  # none | cpu: Adam states and step on the CPU (DeepSpeedCPUAdam); ZeRO >= 1
    params: str = "none"  # none | cpu: parameters live in CPU memory between uses; ZeRO-3


@dataclass
class TrainerConfig:
    world_size: int = 1  # data-parallel DeepSpeed ranks
    lr: float = 2e-5
    optimizer: str = "adamw"  # adamw | sgd (OPTIMIZERS)
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    lr_schedule: str = "constant"  # constant | linear | cosine | wsd (trainer/schedules.py)
    warmup_steps: int = 0  # optimiser steps of linear warmup
    min_lr_ratio: float = 0.0  # where decaying schedules end, as a fraction of lr
    decay_fraction: float = 0.2  # wsd: the last fraction of training that decays
    ppo_epochs: int = 1  # passes over each batch
    mini_batches: int = 1  # optimiser steps per pass
    old_logprobs: str = "recompute"  # with several updates per batch: recompute (trainer) | rollout (vLLM's)
    kl_coef: float = 0.0  # 0 = no reference model at all
    kl_kind: str = "k3"
    kl_in: str = "loss"  # loss: a KL term in the loss | reward: reward -= kl_coef * summed KL before advantages
    max_tokens_per_micro_batch: int = 1024  # padded tokens (rows x longest row) per forward/backward
    skip_uninformative: bool = (
        True  # no forward/backward for samples whose loss term is 0 (advantage 0, no KL in the loss; padding)
    )
    share_prompts: bool = True  # a group's prompt goes through the model once, its completions attend to it (4D mask)
    zero_stage: int = 1
    # ZeRO-3: build models already sharded (deepspeed.zero.Init); false loads the full model on each rank first
    zero_init: bool = True
    gradient_checkpointing: bool = (
        False  # recompute activations in backward (HF, non-reentrant): less memory, ~1 extra forward
    )
    lora: Optional[LoraConfig] = None  # e.g. {rank: 16, alpha: 32}; None = full fine-tuning
    offload: OffloadConfig = field(default_factory=OffloadConfig)
    estimator: str = "grpo"  # trainer/grpo.py ADVANTAGE_ESTIMATORS
    scale_rewards: str = "group"  # grpo: divide by the group's std | batch: the batch's std (TRL) | none (= drgrpo)
    ratio_level: str = "token"  # token (PPO/GRPO) | sequence (GSPO: one length-normalised ratio per sequence)
    clip_low: Optional[float] = None  # None: 0.2, or 3e-4 with ratio_level=sequence (GSPO)
    clip_high: Optional[float] = None  # None: 0.2, or 4e-4 with ratio_level=sequence (GSPO)
    clip_ratio_c: Optional[float] = (
        None  # dual-clip (verl): a token with A < 0 loses at most -A * clip_ratio_c; None = off
    )
    loss_agg: Optional[str] = (
        None  # trainer/grpo.py AGGREGATIONS; None: token-mean, or seq-mean-token-mean with ratio_level=sequence
    )
    loss_norm_len: Optional[int] = None  # seq-mean-token-sum-norm (Dr.GRPO) divisor; None = rollout.max_tokens
    importance: ImportanceConfig = field(default_factory=ImportanceConfig)
    importance_cap: Optional[float] = None  # deprecated: trainer.importance.cap
    threads: int = 2
    cpus_per_rank: float = 1.0  # Ray CPUs reserved per rank (on CUDA each rank also takes one GPU)
    resources: dict = field(default_factory=dict)  # custom Ray resources per rank, e.g. {trainer_node: 1}
