"""Screening rollouts: k samples first, only prompts whose k disagree completed
to the full group, reproducibly; the ragged groups that result train as their
own groups (tests/test_grpo.py: ragged advantages)."""

import pytest

from gradus.curriculum.items import Item
from gradus.launch.config.load import load_config
from gradus.launch.errors import GradusError
from gradus.launch.run.screening import completion_seed, draw_seed, screened
from gradus.rollout.records import Group, Sample


def test_only_prompts_whose_screening_samples_disagree_are_completed():
    calls = []

    def generate(items, n):  # prompt "easy": always right; "hard": never; "mixed": alternating
        calls.append([(i.prompt, i.seed, n) for i in items])
        pattern = {"easy": [1.0], "hard": [0.0], "mixed": [1.0, 0.0]}
        return [
            Group(
                i, [1], [Sample(tokens=[j], correct=pattern[i.prompt][j % len(pattern[i.prompt])]) for j in range(n)], 0
            )
            for i in items
        ], 1.5

    items = [Item("d", p, "1", "numeric", row_id=r, seed=10 + r) for r, p in enumerate(["easy", "mixed", "hard"])]
    groups, seconds, stopped = screened(generate, items, n=8, screen=2, completion_seed=lambda i: 100 + i)
    assert [len(g.samples) for g in groups] == [2, 8, 2] and stopped == 2 and seconds == 3.0
    assert calls == [[("easy", 10, 2), ("mixed", 11, 2), ("hard", 12, 2)], [("mixed", 101, 6)]]  # one batched call more
    assert [g.item.row_id for g in groups] == [0, 1, 2]  # item order, the curriculum sees every group


def test_completion_seeds_are_fixed_by_where_a_prompt_was_drawn():
    """The same (run seed, step, round, index) gives the same seeds in any process (a resume regenerates the
    same samples); a completion never reuses its screening seed, nor another prompt's."""
    draws = [draw_seed(0, 3, r, i) for r in range(2) for i in range(8)]
    rests = [completion_seed(0, 3, r, i) for r in range(2) for i in range(8)]
    assert len(set(draws + rests)) == 32 and all(0 <= s < 2**31 for s in draws + rests)
    assert (draw_seed(0, 3, 1, 2), completion_seed(0, 3, 1, 2)) == (1087736004, 1893785825)  # sha256: no hash seed
    assert completion_seed(1, 3, 1, 2) != 1893785825


def test_screen_settings_are_checked():
    with pytest.raises(GradusError, match="1 <= k < rollout.group_size=4"):
        load_config("configs/default.yaml", ["rollout.screen={samples: 4}"])
    with pytest.raises(GradusError, match="two policies in one group"):
        load_config("configs/default.yaml", ["rollout.screen={samples: 2}", "rollout.async_generation=true"])
    assert load_config("configs/default.yaml", ["rollout.screen={samples: 2}"]).rollout.screen == {"samples": 2}
