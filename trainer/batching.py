"""How a global batch is split: which samples need a forward and backward at
all, those to data-parallel ranks (balanced by tokens) and each rank's to
micro-batches bounded by padded token count. Pure logic; the loss is normalised
globally, so neither the skipping nor the split changes the gradient, only the
speed."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

PAD = -1  # a padding micro-batch slot: the caller sends `dummy(...)`, a zero-weight sample


@dataclass
class TrainSample:
    """One completion as the trainer sees it (the driver builds these from
    rollout's groups)."""

    prompt_ids: list[int]
    tokens: list[int]  # completion token ids
    logprobs: list[float]  # the generating engine's (behaviour) log-prob per token
    advantage: float
    weight: float = 1.0  # 0: padding that fills a rank's share, never trained on
    lag: int = 0  # policy versions between the generating and the trained weights (async)
    old_logp: list[float] = field(default_factory=list)  # set on the rank: the old policy's log-probs


@dataclass
class RankShare:
    """A rank's part of one mini-batch (one optimiser step): its micro-batches and
    the whole mini-batch's trained token and sequence counts (the loss
    denominators, equal on every rank)."""

    micro_batches: list[list[TrainSample]]
    num_tokens: int
    num_seqs: int


def contributes(sample: TrainSample, kl_in_loss: bool) -> bool:
    """Whether a sample's loss term can be non-zero. A zero-weight (padding)
    sample never; with no KL term in the loss, advantage 0 makes every token's
    clipped surrogate -max(ratio * 0, clip(ratio) * 0) = 0 with zero gradient.
    Such samples still count in the loss denominators."""
    return sample.weight > 0 and (kl_in_loss or sample.advantage != 0)


def dummy(sample: TrainSample) -> TrainSample:
    """The cheapest pass a rank can run to keep ZeRO's collectives in step: one
    prompt token and one completion token, zero weight."""
    return TrainSample(
        prompt_ids=list(sample.prompt_ids[:1]),
        tokens=list(sample.tokens[:1]),
        logprobs=list(sample.logprobs[:1]),
        advantage=0.0,
        weight=0.0,
    )


def shard_by_tokens(lengths: Sequence[int], ranks: int) -> list[list[int]]:
    """Sample indices per rank: longest first, each to the least-loaded rank."""
    loads = [0] * ranks
    shards: list[list[int]] = [[] for _ in range(ranks)]
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        r = min(range(ranks), key=lambda r: (loads[r], len(shards[r])))
        shards[r].append(i)
        loads[r] += lengths[i]
    return shards


def micro_batches(indices: Sequence[int], lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Consecutive runs of length-sorted samples whose padded size
    (rows x longest row) stays within max_tokens; a longer sample goes alone."""
    order = sorted(indices, key=lambda i: -lengths[i])
    out: list[list[int]] = []
    for i in order:
        if out and (len(out[-1]) + 1) * lengths[out[-1][0]] <= max_tokens:
            out[-1].append(i)
        else:
            out.append([i])
    return out


def plan(lengths: Sequence[int], ranks: int, max_tokens: int) -> list[list[list[int]]]:
    """Per rank, its micro-batches (lists of sample indices). Every rank gets
    the same number of micro-batches, at least one (ZeRO-2/3 reduce in every
    backward, and an optimiser step follows): the largest are split, and a rank
    with too few samples gets [PAD] micro-batches."""
    per_rank = [micro_batches(shard, lengths, max_tokens) for shard in shard_by_tokens(lengths, ranks)]
    count = max(1, max(len(m) for m in per_rank))
    for batches in per_rank:
        while len(batches) < count and any(len(b) > 1 for b in batches):
            big = max(range(len(batches)), key=lambda j: len(batches[j]) * lengths[batches[j][0]])
            half = len(batches[big]) // 2
            batches[big : big + 1] = [batches[big][:half], batches[big][half:]]
        batches += [[PAD]] * (count - len(batches))
    return per_rank


def units(samples: Sequence[TrainSample], share_prompts: bool, max_tokens: int) -> list[list[TrainSample]]:
    """What stays together in one micro-batch: single samples, or with
    `share_prompts` the samples of one prompt (a group), which become one row
    (prompt once, then every completion), cut into chunks whose row fits
    `max_tokens` (a chunk holds at least one sample)."""
    if not share_prompts:
        return [[s] for s in samples]
    by_prompt: dict[tuple, list[TrainSample]] = {}
    for s in samples:
        by_prompt.setdefault(tuple(s.prompt_ids), []).append(s)
    out: list[list[TrainSample]] = []
    for group in by_prompt.values():
        chunk, width = [], len(group[0].prompt_ids)
        for s in group:
            if chunk and width + len(s.tokens) > max_tokens:
                out.append(chunk)
                chunk, width = [], len(group[0].prompt_ids)
            chunk.append(s)
            width += len(s.tokens)
        out.append(chunk)
    return out


def assign(
    mini: Sequence[TrainSample],
    ranks: int,
    max_tokens: int,
    skip: bool = True,
    kl_in_loss: bool = False,
    share_prompts: bool = False,
) -> list[RankShare]:
    """Per rank, its share of one mini-batch (one optimiser step), the counts
    being the whole mini-batch's trained (weight > 0) samples, the loss
    denominators. With `skip`, samples that cannot contribute get no forward or
    backward (a mini-batch left with none runs one dummy pass per rank, then
    its optimiser step, as the unskipped path would); with `share_prompts` a
    group's samples share micro-batches (`units`). PAD slots become the cheapest
    dummy sample."""
    trained = [s for s in mini if s.weight > 0]
    active = [s for s in mini if contributes(s, kl_in_loss)] if skip else list(mini)
    members = units(active, share_prompts, max_tokens)
    lengths = [len(u[0].prompt_ids) + sum(len(s.tokens) for s in u) for u in members]  # the row each unit becomes
    padding = dummy(mini[0])
    num_tokens, num_seqs = sum(len(s.tokens) for s in trained), len(trained)
    return [
        RankShare(
            [[s for i in micro for s in (members[i] if i != PAD else [padding])] for micro in micros],
            num_tokens,
            num_seqs,
        )
        for micros in plan(lengths, ranks, max_tokens)
    ]
