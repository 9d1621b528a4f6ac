"""GRPO math as pure torch functions: advantages, KL penalties, the clipped policy loss.

Shapes: B sequences, T completion tokens, G samples per prompt group. Each
option names the framework or paper it follows (docs/reference/losses.md);
numeric guards are verl's (`core_algos.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from gradus.curriculum.registry import Registry
from gradus.trainer.config import TrainerConfig

Estimator = Callable[[torch.Tensor, float, str], torch.Tensor]
ADVANTAGE_ESTIMATORS: Registry[Estimator] = Registry("advantage estimator", plugins=False, positional=3)
KL_PENALTIES: Registry[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = Registry(
    "KL penalty", plugins=False, positional=2
)
AGGREGATIONS: Registry[str] = Registry("loss aggregation", plugins=False)
AGGREGATIONS.add("token-mean", "sum over masked tokens / their number (DAPO, verl's default)")
AGGREGATIONS.add("seq-mean-token-mean", "mean over sequences of each sequence's token mean (GRPO paper)")
AGGREGATIONS.add("seq-mean-token-sum", "mean over sequences of each sequence's token sum")
AGGREGATIONS.add("seq-mean-token-sum-norm", "token sums / a constant of the run, mean over sequences (Dr.GRPO)")
REWARD_SCALES: Registry[str] = Registry("reward scale", plugins=False)
REWARD_SCALES.add("group", "divide centred rewards by the group's std (GRPO)")
REWARD_SCALES.add("batch", "divide by the whole batch's std (TRL's scale_rewards=batch)")
REWARD_SCALES.add("none", "no division (Dr.GRPO)")
RATIO_LEVELS: Registry[str] = Registry("ratio level", plugins=False)
RATIO_LEVELS.add("token", "one importance ratio per token (PPO, GRPO)")
RATIO_LEVELS.add("sequence", "one length-normalised ratio per sequence (GSPO)")
LOG_RATIO_CLAMP = 20.0  # verl: exp of at most +-20 keeps ratios finite in float32
KL_CLAMP = 10.0  # verl's bound on the k3 estimate
_TOKEN_DIFF_BOUND = 1e4  # per-token log-ratio bound inside GSPO's mean: finite sums for any finite input


@ADVANTAGE_ESTIMATORS.register("grpo")
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


@ADVANTAGE_ESTIMATORS.register("drgrpo")
def _drgrpo(rewards: torch.Tensor, eps: float, scale: str) -> torch.Tensor:
    return rewards - rewards.mean(dim=-1, keepdim=True)


@ADVANTAGE_ESTIMATORS.register("rloo")
def _rloo(rewards: torch.Tensor, eps: float, scale: str) -> torch.Tensor:
    g = rewards.shape[-1]
    others_mean = (rewards.sum(dim=-1, keepdim=True) - rewards) / max(
        g - 1, 1
    )  # g = 1 is all-equal: zeroed by the caller
    return rewards - others_mean


def group_advantages(
    rewards: torch.Tensor | Sequence[torch.Tensor], estimator: str = "grpo", eps: float = 1e-6, scale: str = "group"
) -> torch.Tensor | list[torch.Tensor]:
    """rewards [groups, G] -> float32 advantages [groups, G].

    Computed in float64, and a group whose rewards are all equal gets exactly 0:
    in float32 eight rewards of 0.7 leave a mean residue that 1/(std + eps)
    amplifies to |A| = 0.06, a fake signal for the update and the curriculum.
    `scale` applies to "grpo" only.

    Ragged groups (a group size per prompt): a list of 1-D tensors gives a list
    of the same shapes, each what its group alone gives (a group of one: 0);
    with scale="batch" the divisor is the std of every reward of the batch."""
    if isinstance(rewards, (list, tuple)):
        return _ragged_advantages(rewards, estimator, eps, scale)
    rewards = torch.as_tensor(rewards)
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [groups, group_size], got shape {tuple(rewards.shape)}")
    if scale not in REWARD_SCALES:
        raise ValueError(f"unknown reward scale {scale!r}; choose one of {list(REWARD_SCALES)}")
    wide = rewards.to(torch.float64)
    advantages = ADVANTAGE_ESTIMATORS.get(estimator)(wide, eps, scale)
    uninformative = (wide == wide[:, :1]).all(dim=-1, keepdim=True)  # [groups, 1]
    return torch.where(uninformative, torch.zeros_like(advantages), advantages).to(torch.float32)


def _ragged_advantages(groups: Sequence[torch.Tensor], estimator: str, eps: float, scale: str) -> list[torch.Tensor]:
    tensors = [torch.as_tensor(g, dtype=torch.float64) for g in groups]
    if any(t.dim() != 1 for t in tensors):
        raise ValueError("ragged rewards must be a list of 1-D tensors, one per group")
    if scale == "batch" and estimator == "grpo":
        every = torch.cat(tensors) if tensors else torch.zeros(0, dtype=torch.float64)
        std = every.std() if every.numel() > 1 else torch.tensor(1.0, dtype=torch.float64)
        # centred per group (all-equal groups exactly 0), one divisor for the batch
        return [(group_advantages(t[None, :], "grpo", eps, "none")[0].double() / (std + eps)).float() for t in tensors]
    return [group_advantages(t[None, :], estimator, eps, scale)[0] for t in tensors]


def batch_advantages(
    rewards: Sequence[Sequence[float]], estimator: str = "grpo", scale: str = "group"
) -> list[list[float]]:
    """Advantages of every group a step generated, computed together (one batch
    for scale="batch"), as nested lists in the groups' order; groups may differ in size."""
    if len({len(r) for r in rewards}) > 1:
        ragged = [torch.tensor(list(r), dtype=torch.float32) for r in rewards]
        return [a.tolist() for a in group_advantages(ragged, estimator, scale=scale)]
    return group_advantages(
        torch.tensor([list(r) for r in rewards], dtype=torch.float32), estimator, scale=scale
    ).tolist()


@KL_PENALTIES.register("k1")
def _k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    return logp - ref_logp


@KL_PENALTIES.register("k2")
def _k2(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    return 0.5 * (logp - ref_logp) ** 2


@KL_PENALTIES.register("k3")
def _k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Schulman's unbiased low-variance estimate, with verl's clamps (at a gap of
    30 it would be 1e13 otherwise)."""
    log_ratio = (ref_logp - logp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    return (torch.exp(log_ratio) - log_ratio - 1).clamp(-KL_CLAMP, KL_CLAMP)


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str = "k3") -> torch.Tensor:
    return KL_PENALTIES.get(kind)(logp, ref_logp)


def log_ratio(
    logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor | None = None, level: str = "token"
) -> torch.Tensor:
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


@dataclass(frozen=True)
class LossOptions:
    """The loss settings of a run with every default resolved (loss_options)."""

    clip_low: float
    clip_high: float
    clip_ratio_c: float | None
    ratio_level: str
    agg: str
    norm_len: int | None  # Dr.GRPO's divisor, a constant of the run
    kl_coef: float
    kl_kind: str
    importance_on: str  # stale | all
    importance_mode: str  # truncate | mask
    importance_cap: float


def loss_options(cfg: TrainerConfig, norm_len: int | None = None) -> LossOptions:
    """`cfg`'s loss options with unset ones filled in: sequence-level ratios (GSPO)
    default to its clip range and seq-mean-token-mean, token-level ones to PPO's
    0.2 and token-mean; Dr.GRPO's divisor is trainer.loss_norm_len, else `norm_len`
    (the run's rollout.max_tokens)."""
    sequence = cfg.ratio_level == "sequence"
    agg = cfg.loss_agg or ("seq-mean-token-mean" if sequence else "token-mean")
    divisor = cfg.loss_norm_len or norm_len
    if agg == "seq-mean-token-sum-norm" and not divisor:
        raise ValueError(
            "loss_agg seq-mean-token-sum-norm (Dr.GRPO) needs a constant loss_norm_len (e.g. rollout.max_tokens)"
        )
    return LossOptions(
        clip_low=cfg.clip_low if cfg.clip_low is not None else (GSPO_CLIP[0] if sequence else 0.2),
        clip_high=cfg.clip_high if cfg.clip_high is not None else (GSPO_CLIP[1] if sequence else 0.2),
        clip_ratio_c=cfg.clip_ratio_c,
        ratio_level=cfg.ratio_level,
        agg=agg,
        norm_len=divisor,
        kl_coef=cfg.kl_coef,
        kl_kind=cfg.kl_kind,
        importance_on=cfg.importance.on,
        importance_mode=cfg.importance.mode,
        importance_cap=cfg.importance.cap,
    )
