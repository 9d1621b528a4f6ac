"""Prompt-level sampling, model-free: a simulated learner with rows of known
difficulty, retirement and rechecks, the band-pass weight, an all-retired
distribution and exact state round-trips. Drives CurriculumScheduler through
its contract (`row_id` on items, `observe_rows`)."""

import numpy as np
import pytest

from gradus.curriculum.prompts import PassRate, Shuffle
from gradus.curriculum.scheduler import CurriculumScheduler

ADD1 = {"name": "add1", "source": "arithmetic", "params": {"digits": 1}, "verifier": "numeric"}
ADD2 = {"name": "add2", "source": "arithmetic", "params": {"digits": 2}, "verifier": "numeric"}


def _simulate(prompts: dict, steps: int = 40, n: int = 6, seed: int = 0) -> tuple[CurriculumScheduler, list[int]]:
    """Rows by row_id % 3: always solved, never solved, solved half the time."""
    scheduler = CurriculumScheduler([ADD1], train_size=None, eval_size=8, seed=seed, prompts=prompts)
    world = np.random.default_rng(seed)
    kinds = []
    for step in range(steps):
        items = scheduler.next_batch(step, n)
        results = []
        for item in items:
            kind = item["row_id"] % 3
            p = (1.0, 0.0, 0.5)[kind]
            results.append(
                {"distribution": item["distribution"], "row_id": item["row_id"], "correct": list(world.random(4) < p)}
            )
            kinds.append(kind)
        scheduler.observe_rows(results)
    return scheduler, kinds


def test_pass_rate_prefers_the_learnable_rows_and_retires_solved_ones():
    shuffled, plain = _simulate({"kind": "shuffle"})
    chosen, picked = _simulate({"kind": "pass_rate", "retire_after": 4, "recheck": 0.05})
    later = picked[len(picked) // 2 :]  # after warm-up
    assert abs(np.mean([k == 2 for k in plain]) - 1 / 3) < 0.1
    assert np.mean([k == 2 for k in later]) > 0.6
    stats = chosen.report(0)["rows"]["add1"]
    retired = chosen.distributions["add1"].sampler.retired()
    kind = np.arange(len(retired)) % 3
    assert retired[kind == 0].mean() > 0.8 and not retired[kind == 1].any() and retired[kind == 2].mean() < 0.3
    assert stats["rows_retired"] == retired.sum() and stats["rows_seen"] > 0.9 * len(retired)


def test_retire_recheck_and_forgetting():
    sampler = PassRate(3, (0, "x"), retire_after=4, recheck=1.0)
    rng = np.random.default_rng(0)
    sampler.observe(0, [True, True])
    assert not sampler.retired()[0]  # fewer than retire_after samples seen
    sampler.observe(0, [True, True])
    assert sampler.retired().tolist() == [True, False, False]
    assert sampler.take(5, rng) == [0] * 5  # recheck=1: every draw re-tests the retired row
    sampler.observe(0, [True, False])  # forgotten: back among the active rows
    assert not sampler.retired().any()
    never = PassRate(3, (0, "x"), retire_after=4, recheck=0.0)
    never.observe(1, [True] * 4)
    assert 1 not in never.take(50, rng)


def test_a_batch_draws_distinct_rows_while_there_are_enough():
    scheduler = CurriculumScheduler([ADD1], eval_size=8, seed=0, prompts={"kind": "pass_rate"})
    rows = [item["row_id"] for item in scheduler.next_batch(0, 40)]
    assert len(set(rows)) == 40


def test_band_pass_weight():
    sampler = PassRate(5, (0, "x"), low=0.2, high=0.8, decay=1.0, floor=0.05)
    for row, correct in [
        (0, [True] * 4),
        (1, [False] * 4),
        (2, [True, False, False, False]),
        (3, [True, True, False, False]),
    ]:
        sampler.observe(row, correct)
    # p = 1, 0, 0.25, 0.5, unseen -> floor, floor, inside the band, inside, optimistic
    assert sampler.weights().tolist() == pytest.approx([0.05, 0.05, 1.0, 1.0, 1.0])
    sampler.observe(2, [False] * 4)  # decay 1: the newest group only -> p = 0, outside
    assert sampler.weights()[2] == pytest.approx(0.05)
    half = PassRate(1, (0, "x"), decay=0.5)
    half.observe(0, [True] * 4)
    half.observe(0, [False] * 4)
    assert half.rate[0] == pytest.approx(0.5)  # recency-weighted: 0.5 * 1 + 0.5 * 0


def test_all_retired_distribution_moves_probability_elsewhere():
    scheduler = CurriculumScheduler(
        [ADD1, ADD2], eval_size=8, seed=1, prompts={"kind": "pass_rate", "retire_after": 2, "recheck": 0.1}
    )
    add1 = scheduler.distributions["add1"]
    scheduler.observe_rows(
        [{"distribution": "add1", "row_id": i, "correct": [True, True]} for i in range(len(add1.train_rows))]
    )
    report = scheduler.report(0)
    assert report["rows"]["add1"]["rows_retired"] == len(add1.train_rows) and report["rows"]["add1"]["available"] == 0.1
    assert report["probabilities"]["add1"] == pytest.approx(0.5)  # the curriculum's own value is unchanged
    assert report["rows"]["add1"]["draw_prob"] == pytest.approx(0.05 / 0.55)  # what the draws below use
    names = [item["distribution"] for item in scheduler.next_batch(0, 400)]
    assert 0.03 < names.count("add1") / 400 < 0.2  # 0.5 * 0.1 / (0.5 * 0.1 + 0.5) ~ 0.09: drawn only for rechecks


@pytest.mark.parametrize("prompts", [{"kind": "shuffle"}, {"kind": "pass_rate", "retire_after": 4}])
def test_state_round_trip_continues_exactly(prompts):
    first, _ = _simulate(prompts, steps=10)
    state = first.state_dict()
    second = CurriculumScheduler([ADD1], train_size=None, eval_size=8, seed=0, prompts=prompts)
    second.load_state_dict(state)
    a, b = first.next_batch(10, 12), second.next_batch(10, 12)
    assert [x["row_id"] for x in a] == [x["row_id"] for x in b]
    assert first.report(10)["rows"] == second.report(10)["rows"]


def test_shuffle_is_the_old_epoch_order():
    sampler = Shuffle(5, (0, "add1"))
    first = sampler.take(5, None)
    assert sorted(first) == list(range(5)) and sampler.state_dict() == {"epoch": 0, "cursor": 5}
    sampler.take(1, None)
    assert sampler.state_dict() == {"epoch": 1, "cursor": 1}
