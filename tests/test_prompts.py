"""Prompt-level sampling, model-free: a simulated learner with rows of known
difficulty, retirement and rechecks, the band-pass weight, an all-retired
distribution and exact state round-trips. Drives CurriculumScheduler through
its contract (`row_id` on items, `observe_rows`)."""

import json

import numpy as np
import pytest

from gradus.curriculum.posteriors import PassRate
from gradus.curriculum.prompts import Shuffle, make_prompt_sampler
from gradus.curriculum.scheduler import CurriculumScheduler

ADD1 = {"name": "add1", "source": "arithmetic", "params": {"digits": 1}, "verifier": "numeric"}
ADD2 = {"name": "add2", "source": "arithmetic", "params": {"digits": 2}, "verifier": "numeric"}


def _simulate(
    prompts: dict, steps: int = 40, n: int = 6, seed: int = 0, train_size: int | None = 30, rising: bool = False
) -> tuple[CurriculumScheduler, list[int], list[bool]]:
    """A simulated learner: rows by row_id % 3 always solved, never solved, solved
    half the time (with `rising`, a row's pass rate grows by 0.01 each time it is
    generated, as training on it would). Returns the scheduler, each drawn row's
    kind and whether its group was informative (rewards not all equal)."""
    scheduler = CurriculumScheduler([ADD1], train_size=train_size, eval_size=8, seed=seed, prompts=prompts)
    world = np.random.default_rng(seed)
    kinds, informative, trained = [], [], {}
    for step in range(steps):
        results = []
        for item in scheduler.next_batch(step, n):
            kind = item["row_id"] % 3
            p = min(1.0, (1.0, 0.0, 0.5)[kind] + (0.01 * trained.get(item["row_id"], 0) if rising else 0.0))
            trained[item["row_id"]] = trained.get(item["row_id"], 0) + 1
            correct = list(world.random(4) < p)
            results.append({"distribution": item["distribution"], "row_id": item["row_id"], "correct": correct})
            kinds.append(kind)
            informative.append(0 < sum(correct) < 4)
        scheduler.observe_rows(results)
    return scheduler, kinds, informative


def test_pass_rate_prefers_the_learnable_rows_and_retires_solved_ones():
    _, plain, _ = _simulate({"kind": "shuffle"})
    chosen, picked, _ = _simulate({"kind": "pass_rate", "retire_after": 4, "recheck": 0.05}, steps=80)
    later = picked[len(picked) // 2 :]  # after warm-up
    assert abs(np.mean([k == 2 for k in plain]) - 1 / 3) < 0.1
    assert np.mean([k == 2 for k in later]) > 0.5
    stats = chosen.report(0)["rows"]["add1"]
    retired = chosen.distributions["add1"].sampler.retired()
    kind = np.arange(len(retired)) % 3
    assert retired[kind == 0].mean() > 0.6 and not retired[kind == 1].any() and retired[kind == 2].mean() < 0.3
    assert stats["rows_retired"] == retired.sum() and stats["rows_seen"] > 0.9 * len(retired)


def test_retire_recheck_and_forgetting():
    sampler = PassRate(3, (0, "x"), retire_after=4, recheck=1.0)
    rng = np.random.default_rng(0)
    sampler.observe(0, [True, True])
    assert not sampler.retired()[0]  # fewer than retire_after samples seen
    for _ in range(6):
        sampler.observe(0, [True] * 4)
    assert not sampler.retired()[0]  # 26 straight right answers: P(p >= 0.9) = 0.89 on its own evidence
    sampler.observe(0, [True] * 4)
    assert sampler.retired().tolist() == [True, False, False]  # P(p >= 0.9) >= 0.9 after 7 groups of 4
    assert sampler.take(5, rng) == [0] * 5  # recheck=1: every draw re-tests the retired row
    sampler.observe(0, [True, False, False, False])  # forgotten: back among the active rows
    assert not sampler.retired().any()
    never = PassRate(3, (0, "x"), retire_after=4, recheck=0.0)
    for _ in range(7):
        never.observe(1, [True] * 4)
    assert never.retired()[1] and 1 not in never.take(50, rng)


def test_one_lucky_group_no_longer_retires_a_row():
    """Rows of pass rate 0.8, one group of 4 each: the old counting rule retired
    0.8^4 = 41% of them; the posterior needs more evidence than one group."""
    sampler = PassRate(400, (0, "x"), retire_after=4)
    world = np.random.default_rng(0)
    for row in range(400):
        sampler.observe(row, list(world.random(4) < 0.8))
    assert sampler.retired().mean() < 0.05
    solved = PassRate(400, (0, "x"), retire_after=4)  # a distribution whose mean is 0.99: the prior leans solved
    for row in range(1, 400):
        for _ in range(5):
            solved.observe(row, [True] * 4)
    solved.observe(0, [True] * 4)  # one lucky group of a new row
    assert solved.posteriors.mean()[0] > 0.9 and not solved.retired()[0]


def test_a_batch_draws_distinct_rows_while_there_are_enough():
    scheduler = CurriculumScheduler([ADD1], eval_size=8, seed=0, prompts={"kind": "pass_rate"})
    rows = [item["row_id"] for item in scheduler.next_batch(0, 40)]
    assert len(set(rows)) == 40


def test_band_pass_weight():
    sampler = PassRate(5, (0, "x"), low=0.2, high=0.8, floor=0.05)
    for _ in range(10):
        for row, correct in [
            (0, [True] * 4),
            (1, [False] * 4),
            (2, [True, False, False, False]),
            (3, [True, True, False, False]),
        ]:
            sampler.observe(row, correct)
    w = sampler.weights()  # posterior means ~0.95, ~0.05, ~0.26, 0.5, unseen -> low, low, inside, inside, optimistic
    assert w[0] < 0.3 and w[1] < 0.3 and w[2:].tolist() == [1.0, 1.0, 1.0]
    assert sampler.posteriors.mean()[3] == pytest.approx(0.5, abs=0.02)


@pytest.mark.parametrize("kind", ["pass_rate", "thompson", "greso"])
def test_samplers_depend_on_counts_not_on_order(kind):
    """A group [wrong, right x 7] and a group [right x 7, wrong] are the same evidence."""

    states, draws = [], []
    for group in ([False] + [True] * 7, [True] * 7 + [False]):
        sampler = make_prompt_sampler(
            {"kind": kind, "retire_after": 4} if kind == "pass_rate" else {"kind": kind}, 6, (0, "x")
        )
        sampler.take(3, np.random.default_rng(1))
        sampler.observe(2, group)
        sampler.observe(4, [True] * 8)
        states.append(sampler.state_dict())
        draws.append(sampler.take(4, np.random.default_rng(2)))
    assert states[0] == states[1] and draws[0] == draws[1]


def _calibration(scheduler: CurriculumScheduler, start: int, steps: int) -> tuple[list[float], ...]:
    """Continue a simulated run (rows by row_id % 3: always, never, half solved) and
    read each step's skips, predicted and realised all-equal shares for add1."""
    sampler = scheduler.distributions["add1"].sampler
    skipped, predicted, realised = [], [], []
    for step in range(start, start + steps):
        items = scheduler.next_batch(step, 6)
        skipped.append(sampler.last["skipped_before_rollout"])
        results = [
            {
                "distribution": "add1",
                "row_id": i["row_id"],
                "correct": [i["row_id"] % 3 == 0] * 4 if i["row_id"] % 3 < 2 else [True, False, True, False],
            }
            for i in items
        ]
        scheduler.observe_rows(results)
        predicted.append(sampler.last["predicted_zero_var"])
        realised.append(sampler.last["realised_zero_var"])
    return skipped, predicted, realised


def test_thompson_draws_informative_rows():
    _, _, plain = _simulate({"kind": "shuffle"}, steps=30, rising=True)
    chosen, kinds, informative = _simulate({"kind": "thompson", "target": 0.5}, steps=30, rising=True)
    later = informative[len(informative) // 2 :]
    assert np.mean(later) > 0.6 and np.mean(later) > np.mean(plain[len(plain) // 2 :]) + 0.2
    _, predicted, realised = _calibration(chosen, 30, 30)
    assert abs(np.mean(predicted) - np.mean(realised)) < 0.15  # calibrated over 30 steps


def test_greso_skips_before_rollout_and_tracks_its_target():
    """Rows with a run of all-equal groups are skipped before generation; the
    share of all-equal groups moves toward the target, and the posterior's
    prediction of it stays calibrated over the run."""
    _, _, plain = _simulate({"kind": "shuffle"}, steps=60)
    scheduler, _, informative = _simulate({"kind": "greso", "target": 0.3, "step": 0.05}, steps=60)
    skipped, predicted, realised = _calibration(scheduler, 60, 30)  # the same run, read step by step
    assert sum(skipped) > 20  # rows passed over without generating a token
    assert 1 - np.mean(informative[len(informative) // 2 :]) < 1 - np.mean(plain) - 0.2  # fewer all-equal groups
    assert abs(np.mean(predicted) - np.mean(realised)) < 0.15  # calibrated
    assert abs(np.mean(realised) - 0.3) < 0.15  # p_e adapted: the all-equal share sits near its target


def test_all_retired_distribution_moves_probability_elsewhere():
    scheduler = CurriculumScheduler(
        [ADD1, ADD2], eval_size=8, seed=1, prompts={"kind": "pass_rate", "retire_after": 2, "recheck": 0.1}
    )
    add1 = scheduler.distributions["add1"]
    scheduler.observe_rows(
        [{"distribution": "add1", "row_id": i, "correct": [True] * 24} for i in range(len(add1.train_rows))]
    )  # 24 straight right answers each: solved on their own evidence
    report = scheduler.report(0)
    assert report["rows"]["add1"]["rows_retired"] == len(add1.train_rows) and report["rows"]["add1"]["available"] == 0.1
    assert report["probabilities"]["add1"] == pytest.approx(0.5)  # the curriculum's own value is unchanged
    assert report["rows"]["add1"]["draw_prob"] == pytest.approx(0.05 / 0.55)  # what the draws below use
    names = [item["distribution"] for item in scheduler.next_batch(0, 400)]
    assert 0.03 < names.count("add1") / 400 < 0.2  # 0.5 * 0.1 / (0.5 * 0.1 + 0.5) ~ 0.09: drawn only for rechecks


@pytest.mark.parametrize(
    "prompts", [{"kind": "shuffle"}, {"kind": "pass_rate", "retire_after": 4}, {"kind": "thompson"}, {"kind": "greso"}]
)
def test_state_round_trip_continues_exactly(prompts):
    first, _, _ = _simulate(prompts, steps=10, train_size=None)
    state = first.state_dict()
    second = CurriculumScheduler([ADD1], train_size=None, eval_size=8, seed=0, prompts=prompts)
    second.load_state_dict(state)
    a, b = first.next_batch(10, 12), second.next_batch(10, 12)
    assert [x["row_id"] for x in a] == [x["row_id"] for x in b]
    for scheduler in (first, second):  # the same outcomes, so both report step 10's calibration
        scheduler.observe_rows(
            [{"distribution": "add1", "row_id": x["row_id"], "correct": [x["row_id"] % 2 == 0] * 4} for x in a]
        )
    assert first.report(11)["rows"] == second.report(11)["rows"]


def test_shuffle_is_the_old_epoch_order():
    sampler = Shuffle(5, (0, "add1"))
    first = sampler.take(5, None)
    assert sorted(first) == list(range(5)) and sampler.state_dict() == {"epoch": 0, "cursor": 5}
    sampler.take(1, None)
    assert sampler.state_dict() == {"epoch": 1, "cursor": 1}


def test_group_sizes_go_where_a_sample_most_raises_the_informative_chance():
    """Within base x rows samples, every row starts at min and each further sample
    goes where it most lowers the chance of an all-equal group: a leaning row gets
    the most, a p ~ 0.5 row about the base, surely solved or hopeless rows stay low;
    and the greedy allocation is the one with the most expected informative groups."""
    from itertools import product

    from gradus.curriculum.row_posteriors import allocate_group_sizes

    scheduler = CurriculumScheduler([ADD1], train_size=30, eval_size=8, seed=0, prompts={"kind": "thompson"})
    sampler = scheduler.distributions["add1"].sampler
    for _ in range(5):
        sampler.observe(0, [True] * 4)  # solved: a group of any size is almost surely all right
        sampler.observe(1, [True, False, True, False])  # p ~ 0.5: a few samples disagree already
        sampler.observe(2, [True, True, True, False])  # p ~ 0.75: more samples likely break the tie
        sampler.observe(3, [False] * 4)  # hopeless
    batch = scheduler.next_batch(0, 30)
    items = [next(i for i in batch if i["row_id"] == r) for r in range(4)]
    sizes = scheduler.group_sizes(items, base=4, low=2, high=8)
    assert sum(sizes) == 16 and sizes[2] > sizes[1] >= 4 > sizes[3] >= sizes[0] == 2, sizes
    assert allocate_group_sizes(np.array([[1.0, 0.5, 0.25], [0.0, 0.0, 0.0]]), base=3, low=2) == [4, 2]  # capped

    def informative(chances, sizes, low):
        return sum(1 - chances[i, n - low] for i, n in enumerate(sizes))

    rng = np.random.default_rng(0)
    for _ in range(40):  # against every allocation of the budget: none expects more informative groups
        p = rng.beta(0.7, 0.7, size=(int(rng.integers(1, 5)), 200))  # each row a cloud of plausible pass rates
        n = np.arange(2, 8)
        chances = (p[:, :, None] ** n + (1 - p[:, :, None]) ** n).mean(axis=1)
        greedy = allocate_group_sizes(chances, 4, 2)
        best = max(informative(chances, s, 2) for s in product(range(2, 8), repeat=len(p)) if sum(s) == 4 * len(p))
        assert sum(greedy) == 4 * len(p) and informative(chances, greedy, 2) >= best - 1e-12


def test_row_walks_keep_their_order_for_resumed_runs():
    """Checkpoints hold only (epoch, cursor): the permutation each names must not change between versions."""
    shuffle = make_prompt_sampler({"kind": "shuffle"}, 7, ("d", 3))
    assert [shuffle.take(5, None) for _ in range(2)] == [[4, 6, 3, 5, 2], [0, 1, 2, 3, 4]]
    assert shuffle.state_dict() == {"epoch": 1, "cursor": 3}
    greso = make_prompt_sampler({"kind": "greso"}, 7, ("d", 3))
    assert greso.take(5, np.random.default_rng(0)) == [0, 6, 4, 3, 5]


def test_greso_moves_easy_and_hard_exploration_apart():
    """GRESO keeps p_e per kind, each toward its share of the target (a third easy, two thirds hard)."""
    sampler = make_prompt_sampler({"kind": "greso", "target": 0.3, "step": 0.1, "explore": 0.5}, 6, ("d", 0))
    rng = np.random.default_rng(0)
    for _ in range(3):  # every group all right: easy share 1 > 0.1, hard share 0 < 0.2
        for row in sampler.take(2, rng):
            sampler.observe(row, [True] * 4)
    sampler.take(1, rng)
    assert sampler.explore == pytest.approx({"easy": 0.2, "hard": 0.8})
    for _ in range(5):
        for row in sampler.take(2, rng):
            sampler.observe(row, [True] * 4)
    sampler.take(1, rng)
    assert sampler.explore == pytest.approx({"easy": 0.05, "hard": 0.95})  # within [min_explore, max_explore]


def test_calibration_adds_up_over_a_steps_draws_for_each_groups_own_size():
    """Filters refill within a step: the step's statistics cover every draw; a
    new step restarts them; each prediction is the draw-time posterior's chance
    for the size the group then had (a screen stops some at k, rules vary n)."""
    scheduler = CurriculumScheduler([ADD1, ADD2], train_size=30, eval_size=8, seed=0, prompts={"kind": "thompson"})
    sampler = scheduler.distributions["add1"].sampler
    assert isinstance(CurriculumScheduler([ADD1], eval_size=8).distributions["add1"].sampler, Shuffle)

    def outcomes(items, right):
        scheduler.observe_rows(
            [{"distribution": i["distribution"], "row_id": i["row_id"], "correct": [right] * 8} for i in items]
        )

    first = [i for i in scheduler.next_batch(0, 8) if i["distribution"] == "add1"]
    at_draw = [sampler.posteriors.zero_var([i["row_id"]], 8 if k else 2)[0] for k, i in enumerate(first)]
    assert np.isnan(sampler.last["predicted_zero_var"])  # nothing observed yet
    scheduler.observe_rows(  # the first group stopped by a screen at 2 samples, the others groups of 8
        [
            {"distribution": "add1", "row_id": i["row_id"], "correct": [True] * (8 if k else 2)}
            for k, i in enumerate(first)
        ]
    )
    assert sampler.last["predicted_zero_var"] == pytest.approx(np.mean(at_draw))
    refill = [i for i in scheduler.next_batch(0, 8) if i["distribution"] == "add1"]
    predicted = at_draw + list(sampler.posteriors.zero_var([i["row_id"] for i in refill], 8))
    scheduler.observe_rows(
        [{"distribution": "add1", "row_id": i["row_id"], "correct": [True, False] * 4} for i in refill]
    )
    assert first and refill and len(first) > 1
    assert sampler.last["predicted_zero_var"] == pytest.approx(np.mean(predicted))
    stats = scheduler.row_stats()["add1"]  # the step's own statistics, read after its groups came back
    assert stats["realised_zero_var"] == pytest.approx(len(first) / (len(first) + len(refill)))
    assert stats["observed_groups"] == len(first) + len(refill)
    assert scheduler.row_stats()["add2"]["observed_groups"] == 0  # drawn, but no outcome came back
    scheduler.next_batch(1, 0)  # a new step that draws nothing from add1
    assert scheduler.report(2)["rows"]["add1"]["skipped_before_rollout"] == 0.0
    assert np.isnan(scheduler.report(2)["rows"]["add1"]["realised_zero_var"])
    state = scheduler.state_dict()  # no statistic yet: stored as None, so a copy (Ray, JSON) compares equal
    assert json.loads(json.dumps(state)) == state


def test_greso_resumes_its_streaks_and_exploration_exactly():
    """Rows that recur build all-equal streaks: a loaded copy skips the same rows, a fresh one does not."""
    first, _, _ = _simulate({"kind": "greso"}, steps=12, train_size=12)
    sampler = first.distributions["add1"].sampler
    assert sampler.streak.max() >= 3 and sampler.explore != {"easy": 0.5, "hard": 0.5}
    schedulers = [first] + [CurriculumScheduler([ADD1], train_size=12, eval_size=8, seed=0, prompts={"kind": "greso"})
                            for _ in range(2)]  # fmt: skip
    schedulers[1].load_state_dict(first.state_dict())
    drawn: list[list[list[int]]] = [[], [], []]
    skipped = 0
    for step in range(12, 16):
        for scheduler, rows in zip(schedulers, drawn):
            batch = scheduler.next_batch(step, 6)
            rows.append([x["row_id"] for x in batch])
            scheduler.observe_rows(
                [{"distribution": "add1", "row_id": r, "correct": [r % 3 == 0] * 4} for r in rows[-1]]
            )
        skipped += sampler.last["skipped_before_rollout"]
    assert skipped > 0 and drawn[0] == drawn[1] and drawn[0] != drawn[2]
    assert first.state_dict() == schedulers[1].state_dict()


def test_posterior_updates_by_hand():
    """Discounted evidence, the prior from the distribution's running mean, and the all-equal chance."""
    from scipy.integrate import quad
    from scipy.stats import beta

    from gradus.curriculum.row_posteriors import RowPosteriors

    post = RowPosteriors(2, prior_strength=2.0, discount=0.5)
    assert post.zero_var([0], 4)[0] == pytest.approx(2 / 5)  # Beta(1, 1): E[p^n + (1-p)^n] = 2 / (n + 1)
    post.observe(0, 3, 4)
    post.observe(0, 0, 4)  # wins 0.5 * 3 + 0 = 1.5, losses 0.5 * 1 + 4 = 4.5; the running mean (3 + 1) / (8 + 2)
    a, b = post.params()
    assert (a.tolist(), b.tolist()) == pytest.approx(([0.8 + 1.5, 0.8], [1.2 + 4.5, 1.2]))
    assert post.seen.tolist() == [8, 0]  # samples ever seen, undiscounted
    expected = quad(lambda p: (p**4 + (1 - p) ** 4) * beta.pdf(p, 2.3, 5.7), 0, 1)[0]
    assert post.zero_var([0], 4)[0] == pytest.approx(expected)
    assert post.own_prob_at_least(0.9)[0] == pytest.approx(beta.sf(0.9, 2.5, 5.5))  # a flat prior for retirement


def test_a_pass_rate_checkpoint_from_before_the_posteriors_loads_its_counts():
    sampler = PassRate(3, (0, "x"))
    sampler.load_state_dict({"attempts": [8, 0, 4], "successes": [8, 0, 1]})
    assert sampler.posteriors.wins.tolist() == [8, 0, 1] and sampler.posteriors.losses.tolist() == [0, 0, 3]
    assert sampler.posteriors.seen.tolist() == [8, 0, 4] and sampler.posteriors.prior_mean() == pytest.approx(10 / 14)
