from gradus.trainer.batching import PAD, micro_batches, plan, shard_by_tokens


def test_shards_balance_tokens():
    shards = shard_by_tokens([100, 90, 10, 10, 5, 5], 2)
    loads = [sum([100, 90, 10, 10, 5, 5][i] for i in s) for s in shards]
    assert sorted(i for s in shards for i in s) == list(range(6))
    assert max(loads) - min(loads) <= 10


def test_micro_batches_bound_padded_tokens():
    lengths = [50, 10, 30, 30, 20, 70]
    batches = micro_batches(range(6), lengths, 60)
    assert sorted(i for b in batches for i in b) == list(range(6))
    for b in batches:
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 60


def test_plan_gives_every_rank_the_same_count():
    lengths = [10, 50, 30, 30, 20, 5]
    per_rank = plan(lengths, 2, 60)
    assert len({len(m) for m in per_rank}) == 1
    assert sorted(i for m in per_rank for b in m for i in b if i != PAD) == list(range(6))
    padded = plan([10, 50, 30], 4, 60)
    assert [b for m in padded for b in m].count([PAD]) == 1
