"""GRPO math as pure torch functions: advantages, KL penalties, the clipped policy loss.

Shapes: B sequences, T completion tokens, G samples per prompt group.
"""
from __future__ import annotations

from typing import Callable

import torch

Estimator = Callable[[torch.Tensor, float], torch.Tensor]
ADVANTAGE_ESTIMATORS: dict[str, Estimator] = {}
KL_PENALTIES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {}
AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")


def _register(table: dict, name: str):
    def add(fn):
        table[name] = fn
        return fn

    return add


def _pick(table: dict, name: str, what: str):
    if name not in table:
        raise ValueError(f"unknown {what} {name!r}; choose one of {sorted(table)}")
    return table[name]


@_register(ADVANTAGE_ESTIMATORS, "grpo")
def _grpo(rewards: torch.Tensor, eps: float) -> torch.Tensor:
    mean = rewards.mean(dim=-1, keepdim=True)
    if rewards.shape[-1] < 2:
        return torch.zeros_like(rewards)
    std = rewards.std(dim=-1, keepdim=True)  # unbiased
    return (rewards - mean) / (std + eps)


@_register(ADVANTAGE_ESTIMATORS, "drgrpo")
def _drgrpo(rewards: torch.Tensor, eps: float) -> torch.Tensor:
    return rewards - rewards.mean(dim=-1, keepdim=True)


@_register(ADVANTAGE_ESTIMATORS, "rloo")
def _rloo(rewards: torch.Tensor, eps: float) -> torch.Tensor:
    g = rewards.shape[-1]
    if g < 2:
        return torch.zeros_like(rewards)
    others_mean = (rewards.sum(dim=-1, keepdim=True) - rewards) / (g - 1)
    return rewards - others_mean


def group_advantages(rewards: torch.Tensor, estimator: str = "grpo", eps: float = 1e-6) -> torch.Tensor:
    """rewards [groups, G] -> advantages [groups, G]."""
    rewards = torch.as_tensor(rewards, dtype=torch.float32)
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [groups, group_size], got shape {tuple(rewards.shape)}")
    return _pick(ADVANTAGE_ESTIMATORS, estimator, "advantage estimator")(rewards, eps)


@_register(KL_PENALTIES, "k1")
def _k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    return logp - ref_logp


@_register(KL_PENALTIES, "k2")
def _k2(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    return 0.5 * (logp - ref_logp) ** 2


@_register(KL_PENALTIES, "k3")
def _k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    log_ratio = ref_logp - logp
    return torch.exp(log_ratio) - log_ratio - 1


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str = "k3") -> torch.Tensor:
    return _pick(KL_PENALTIES, kind, "KL penalty")(logp, ref_logp)


def token_policy_loss(
    logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, clip_low: float = 0.2, clip_high: float = 0.2
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token clipped surrogate [B, T] and a mask of tokens where clipping bit."""
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1)  # [B] -> [B, 1], broadcast over tokens
    ratio = torch.exp(logp - old_logp)  # [B, T]
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1 - clip_low, 1 + clip_high) * advantages
    return -torch.min(unclipped, clipped), (clipped < unclipped).detach()


def aggregate(
    values: torch.Tensor,
    mask: torch.Tensor,
    agg: str = "token-mean",
    norm_len: float | None = None,
    num_tokens: float | None = None,
    num_seqs: float | None = None,
) -> torch.Tensor:
    """Reduce per-token values [B, T] to a scalar.

    num_tokens / num_seqs override the local denominators, so that micro-batches
    and data-parallel ranks can each add their share of one global-batch mean.
    """
    mask = mask.to(values.dtype)
    token_sums = (values * mask).sum(dim=-1)  # [B]
    if agg == "token-mean":
        return token_sums.sum() / (num_tokens if num_tokens is not None else mask.sum().clamp(min=1))
    seqs = num_seqs if num_seqs is not None else max(values.shape[0], 1)
    if agg == "seq-mean-token-mean":
        return (token_sums / mask.sum(dim=-1).clamp(min=1)).sum() / seqs
    if agg == "seq-mean-token-sum-norm":
        return (token_sums / (norm_len if norm_len is not None else mask.shape[-1])).sum() / seqs
    raise ValueError(f"unknown loss aggregation {agg!r}; choose one of {list(AGGREGATIONS)}")


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    agg: str = "token-mean",
    norm_len: float | None = None,
) -> torch.Tensor:
    losses, _ = token_policy_loss(logp, old_logp, advantages, clip_low, clip_high)
    return aggregate(losses, mask, agg, norm_len)
