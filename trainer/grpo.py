"""GRPO math as pure torch functions: advantages, KL penalties, the clipped policy loss.

Shapes: B sequences, T completion tokens, G samples per prompt group. Each
option names the framework or paper it follows (README: "Loss options and
their sources"); numeric guards are verl's (`core_algos.py`).
"""
from __future__ import annotations

from typing import Callable

import torch

Estimator = Callable[[torch.Tensor, float, str], torch.Tensor]
ADVANTAGE_ESTIMATORS: dict[str, Estimator] = {}
KL_PENALTIES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {}
AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
REWARD_SCALES = ("group", "batch", "none")
RATIO_LEVELS = ("token", "sequence")
LOG_RATIO_CLAMP = 20.0  # verl: exp of at most +-20 keeps ratios finite in float32
KL_CLAMP = 10.0  # verl's bound on the k3 estimate
_TOKEN_DIFF_BOUND = 1e4  # per-token log-ratio bound inside GSPO's mean: finite sums for any finite input


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
def _grpo(rewards: torch.Tensor, eps: float, scale: str) -> torch.Tensor:
    """(r - group mean) / (std + eps): std of the group (GRPO), of the whole batch
    (TRL's scale_rewards="batch") or 1 ("none", which is Dr.GRPO)."""
    centered = rewards - rewards.mean(dim=-1, keepdim=True)
    if scale == "none":
        return centered
    if scale == "batch":
        return centered / (rewards.std() + eps)  # one-sample groups never get here: all-equal, zeroed by the caller
    if rewards.shape[-1] < 2:
        return centered  # one sample: all-equal (zero); std would warn
    return centered / (rewards.std(dim=-1, keepdim=True) + eps)  # unbiased


@_register(ADVANTAGE_ESTIMATORS, "drgrpo")
def _drgrpo(rewards: torch.Tensor, eps: float, scale: str) -> torch.Tensor:
    return rewards - rewards.mean(dim=-1, keepdim=True)


@_register(ADVANTAGE_ESTIMATORS, "rloo")
def _rloo(rewards: torch.Tensor, eps: float, scale: str) -> torch.Tensor:
    g = rewards.shape[-1]
    others_mean = (rewards.sum(dim=-1, keepdim=True) - rewards) / max(g - 1, 1)  # g = 1 is all-equal: zeroed by the caller
    return rewards - others_mean


def group_advantages(rewards: torch.Tensor, estimator: str = "grpo", eps: float = 1e-6, scale: str = "group") -> torch.Tensor:
    """rewards [groups, G] -> float32 advantages [groups, G].

    Computed in float64, and a group whose rewards are all equal gets exactly 0:
    in float32 eight rewards of 0.7 leave a mean residue that 1/(std + eps)
    amplifies to |A| = 0.06, a fake signal for the update and the curriculum.
    `scale` applies to "grpo" only."""
    rewards = torch.as_tensor(rewards)
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [groups, group_size], got shape {tuple(rewards.shape)}")
    if scale not in REWARD_SCALES:
        raise ValueError(f"unknown reward scale {scale!r}; choose one of {list(REWARD_SCALES)}")
    wide = rewards.to(torch.float64)
    advantages = _pick(ADVANTAGE_ESTIMATORS, estimator, "advantage estimator")(wide, eps, scale)
    uninformative = (wide == wide[:, :1]).all(dim=-1, keepdim=True)  # [groups, 1]
    return torch.where(uninformative, torch.zeros_like(advantages), advantages).to(torch.float32)


@_register(KL_PENALTIES, "k1")
def _k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    return logp - ref_logp


@_register(KL_PENALTIES, "k2")
def _k2(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    return 0.5 * (logp - ref_logp) ** 2


@_register(KL_PENALTIES, "k3")
def _k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Schulman's unbiased low-variance estimate, with verl's clamps (at a gap of
    30 it would be 1e13 otherwise)."""
    log_ratio = (ref_logp - logp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    return (torch.exp(log_ratio) - log_ratio - 1).clamp(-KL_CLAMP, KL_CLAMP)


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str = "k3") -> torch.Tensor:
    return _pick(KL_PENALTIES, kind, "KL penalty")(logp, ref_logp)


def log_ratio(logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor | None = None, level: str = "token") -> torch.Tensor:
    """log(pi / pi_old) [B, T], clamped to +-20. "sequence" (GSPO): every token
    takes its sequence's masked mean log-ratio (the length-normalised sequence
    likelihood ratio), so one sequence is clipped as a whole."""
    diff = logp - old_logp
    if level == "token":
        return diff.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    if level != "sequence":
        raise ValueError(f"unknown ratio level {level!r}; choose one of {list(RATIO_LEVELS)}")
    if mask is None:
        mask = torch.ones_like(diff)
    inside = mask > 0
    diff = torch.where(inside, diff.clamp(-_TOKEN_DIFF_BOUND, _TOKEN_DIFF_BOUND), torch.zeros_like(diff))
    seq = diff.sum(dim=-1, keepdim=True) / inside.sum(dim=-1, keepdim=True).clamp(min=1)  # [B, 1]
    return seq.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP).expand_as(diff)


def token_policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    clip_ratio_c: float | None = None,
    ratio_level: str = "token",
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token clipped surrogate [B, T] and a mask of tokens where a clip bit.

    -min(ratio*A, clip(ratio, 1-clip_low, 1+clip_high)*A) (PPO; asymmetric
    clip-higher as in DAPO); with clip_ratio_c (dual-clip, verl) a token with
    A < 0 loses at most -A*clip_ratio_c, however large its ratio."""
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1)  # [B] -> [B, 1], broadcast over tokens
    ratio = torch.exp(log_ratio(logp, old_logp, mask, ratio_level))  # [B, T]
    unclipped = -ratio * advantages
    clipped = -torch.clamp(ratio, 1 - clip_low, 1 + clip_high) * advantages
    losses = torch.maximum(unclipped, clipped)
    clip_bit = clipped > unclipped
    if clip_ratio_c is not None:
        cap = -advantages * clip_ratio_c
        dual = (advantages < 0) & (cap < losses)
        losses = torch.where(dual, cap.expand_as(losses), losses)
        clip_bit = clip_bit | dual
    return losses, clip_bit.detach()


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
    Dr.GRPO's norm_len must be a constant of the run (verl: the response width;
    TRL: max_completion_length), never a micro-batch's padded width."""
    mask = mask.to(values.dtype)
    token_sums = (values * mask).sum(dim=-1)  # [B]
    if agg == "token-mean":
        return token_sums.sum() / (num_tokens if num_tokens is not None else mask.sum().clamp(min=1))
    seqs = num_seqs if num_seqs is not None else max(values.shape[0], 1)
    if agg == "seq-mean-token-mean":
        return (token_sums / mask.sum(dim=-1).clamp(min=1)).sum() / seqs
    if agg == "seq-mean-token-sum":
        return token_sums.sum() / seqs
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
    clip_ratio_c: float | None = None,
    ratio_level: str = "token",
) -> torch.Tensor:
    """The aggregated clipped policy loss: a scalar that carries gradients."""
    losses, _ = token_policy_loss(logp, old_logp, advantages, clip_low, clip_high, clip_ratio_c, ratio_level, mask)
    return aggregate(losses, mask, agg, norm_len)


GSPO_CLIP = (3e-4, 4e-4)  # GSPO paper / TRL defaults for the sequence-level ratio


def loss_options(cfg: dict) -> dict:
    """The trainer config with unset loss options filled in: sequence-level
    ratios (GSPO) default to its clip range and seq-mean-token-mean, token-level
    ones to PPO's 0.2 and token-mean."""
    sequence = cfg.get("ratio_level", "token") == "sequence"
    agg = cfg.get("loss_agg") or ("seq-mean-token-mean" if sequence else "token-mean")
    if agg == "seq-mean-token-sum-norm" and not cfg.get("loss_norm_len"):
        raise ValueError("loss_agg seq-mean-token-sum-norm (Dr.GRPO) needs a constant loss_norm_len (e.g. rollout.max_tokens)")
    return {
        **cfg,
        "clip_low": cfg.get("clip_low") if cfg.get("clip_low") is not None else (GSPO_CLIP[0] if sequence else 0.2),
        "clip_high": cfg.get("clip_high") if cfg.get("clip_high") is not None else (GSPO_CLIP[1] if sequence else 0.2),
        "loss_agg": agg,
    }
