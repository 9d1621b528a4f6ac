"""How a global batch is split: samples to data-parallel ranks (balanced by
tokens) and each rank's samples to micro-batches bounded by padded token count.
Pure logic; the loss is normalised globally, so the split never changes the
gradient, only the speed."""
from __future__ import annotations

from typing import Sequence

PAD = -1  # a padding micro-batch slot: the caller sends a zero-weight sample


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
    the same number of micro-batches (ZeRO-2/3 reduce in every backward): the
    largest are split, and a rank with too few samples gets [PAD] micro-batches."""
    per_rank = [micro_batches(shard, lengths, max_tokens) for shard in shard_by_tokens(lengths, ranks)]
    count = max(len(m) for m in per_rank)
    for batches in per_rank:
        while len(batches) < count and any(len(b) > 1 for b in batches):
            big = max(range(len(batches)), key=lambda j: len(batches[j]) * lengths[batches[j][0]])
            half = len(batches[big]) // 2
            batches[big:big + 1] = [batches[big][:half], batches[big][half:]]
        batches += [[PAD]] * (count - len(batches))
    return per_rank
