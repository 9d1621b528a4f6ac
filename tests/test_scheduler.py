import pytest

from gradus.curriculum.scheduler import CurriculumScheduler
from gradus.curriculum.sources import Distribution

DISTS = [
    {"name": "add1", "source": "arithmetic", "params": {"digits": 1}, "verifier": "numeric"},
    {"name": "add3", "source": "arithmetic", "params": {"digits": 3}, "verifier": "numeric"},
]


def test_heldout_disjoint_and_deterministic():
    a = Distribution("add1", "arithmetic", {"digits": 1}, "numeric", 200, 16, seed=3)
    b = Distribution("add1", "arithmetic", {"digits": 1}, "numeric", 200, 16, seed=3)
    assert a.eval_rows == b.eval_rows and len(a.eval_rows) == 16
    assert not {r["prompt"] for r in a.eval_rows} & {r["prompt"] for r in a.train_rows}
    assert len(a.train_rows) == 100 - 16  # 1-digit addition has 100 distinct problems
    for row in a.train_rows[:20]:
        x, y = row["prompt"].removeprefix("What is ").removesuffix("?").split(" + ")
        assert int(row["answer"]) == int(x) + int(y)


def test_cursor_walks_every_row_each_epoch():
    d = Distribution("add1", "arithmetic", {"digits": 1}, "numeric", 200, 16, seed=0)
    rows = d.take(len(d.train_rows))
    assert sorted(r["prompt"] for r in rows) == sorted(r["prompt"] for r in d.train_rows)
    assert d.state_dict() == {"epoch": 0, "cursor": len(d.train_rows)}
    d.take(1)
    assert d.state_dict() == {"epoch": 1, "cursor": 1}


def test_batch_tags_and_budget():
    s = CurriculumScheduler(
        DISTS, budget={"kind": "exponential", "initial": 64, "decay": 0.5, "every": 2, "minimum": 8}, seed=1
    )
    batch = s.next_batch(step=2, n=6)
    assert len(batch) == 6
    assert all(
        b["budget"] == 32 and b["verifier"] == "numeric" and b["distribution"] in ("add1", "add3") for b in batch
    )


def test_filters_and_observe():
    s = CurriculumScheduler(
        DISTS, curriculum="td0", filters=[{"kind": "nonzero_std"}, {"kind": "accuracy_band", "low": 0.2, "high": 0.8}]
    )
    keep = s.keep(
        [
            {"correct": [1, 0, 0, 0], "rewards": [1, 0, 0, 0]},
            {"correct": [1, 1, 1, 1], "rewards": [1, 1, 1, 1]},
            {"correct": [0, 0, 0, 0], "rewards": [0, -0.5, 0, 0]},
        ]
    )
    assert keep == [True, False, False]
    s.observe(0, {"add1": [1.0, 1.0], "add3": []})
    assert s.report(1)["scores"] == pytest.approx({"add1": 0.5, "add3": 0.0})


def test_state_round_trip_continues_identically():
    a = CurriculumScheduler(DISTS, curriculum="ucb", seed=5)
    a.next_batch(0, 7)
    a.observe(0, {"add1": [0.5], "add3": [1.5, 0.1]})
    b = CurriculumScheduler(DISTS, curriculum="ucb", seed=5)
    b.load_state_dict(a.state_dict())
    assert a.next_batch(1, 9) == b.next_batch(1, 9)
    assert a.report(2) == b.report(2)


def test_budget_prompt_and_per_distribution_base():
    dists = [dict(DISTS[0], budget=100), DISTS[1]]
    s = CurriculumScheduler(
        dists,
        curriculum="fixed",
        curriculum_params={"weights": {"add1": 1, "add3": 1}},
        budget={"kind": "exponential", "initial": 64, "decay": 0.5, "every": 1, "minimum": 8},
        budget_prompt="{prompt} Use at most {budget} tokens.",
        seed=0,
    )
    assert s.budget_for("add1", 0) == 100 and s.budget_for("add1", 2) == 25  # base decayed by the schedule's factor
    assert s.budget_for("add3", 2) == 16
    for item in s.next_batch(2, 8):
        assert item["prompt"].endswith(f"Use at most {item['budget']} tokens.")
        assert item["budget"] == (25 if item["distribution"] == "add1" else 16)
