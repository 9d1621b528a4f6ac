"""Where a cell's generation went (spend.md) and the per-seed panels
(seeds.png), on hand-made runs (pure: no Ray, no model)."""

import math

import pytest

from gradus.launch.experiments.plots import plot_rewards, plot_seeds
from gradus.launch.experiments.spend import first_below, shares, spend_rows, write_spend


def _run(noise_probs: list[float], noise_samples: int = 4) -> list[dict]:
    """Two distributions; `noise` drawn with the given probabilities, `clean` with the rest."""
    run = []
    for step, p in enumerate(noise_probs):
        run.append(
            {
                "step": step,
                "dist/clean/prob": 1 - p,
                "dist/noise/prob": p,
                "dist/clean/samples": 8 - noise_samples,
                "dist/noise/samples": noise_samples,
                "dist/clean/length": 10.0,
                "dist/noise/length": 30.0 if noise_samples else math.nan,
                "tokens/generated": (8 - noise_samples) * 10 + noise_samples * 30,
                "eval/accuracy": 0.1 * step,
            }
        )
    return run


def test_shares_of_generated_tokens_and_samples():
    run = _run([0.5, 0.5])  # per step: 4 x 10 clean tokens, 4 x 30 noise tokens
    assert shares(run, "noise") == pytest.approx((0.75, 0.5))
    assert shares(run, "clean") == pytest.approx((0.25, 0.5))
    assert shares(_run([0.5], noise_samples=0), "noise") == (0.0, 0.0)  # nan length of an empty draw counts 0


def test_first_step_below_the_level_first_and_sustained():
    run = _run([0.5, 0.2, 0.3, 0.2, 0.1])
    assert first_below(run, "noise", 0.25) == 1
    assert first_below(run, "noise", 0.25, sustained=True) == 3
    assert first_below(run, "noise", 0.05) is None
    run[0]["dist/noise/draw_prob"] = 0.1  # a sampler that offers fewer rows: what is drawn, not the bandit's share
    assert first_below(run, "noise", 0.25) == 0


def test_spend_table_says_by_which_step_every_seed_got_there(tmp_path):
    cells = {
        "dump": [_run([0.5, 0.2, 0.2]), _run([0.5, 0.5, 0.2])],
        "uniform": [_run([0.5, 0.5, 0.5]), _run([0.5, 0.5, 0.5])],
    }
    rows = {(r["cell"], r["distribution"]): r for r in spend_rows(cells)}
    assert rows["dump", "noise"]["level"] == 0.25  # 1/(2K), K = 2
    assert rows["dump", "noise"]["below"] == "2 (1, 2)" and rows["dump", "noise"]["below_sustained"] == "2 (1, 2)"
    assert rows["uniform", "noise"]["below"] == "never (-, -)"
    assert rows["uniform", "noise"]["token_share_mean"] == pytest.approx(0.75)
    md = write_spend(tmp_path, cells)[1].read_text().splitlines()
    assert "| dump | noise | 2 | 0.750 ± 0.000 | 0.500 | 2 (1, 2) | 2 (1, 2) |" in md


def test_tokens_spent_there_against_the_reference_with_a_paired_interval(tmp_path):
    """dump spends 1 and 2 noise samples a step in seeds 3 and 5, uniform 4: 0.375 of uniform's
    noise tokens; replicates {3, 3}, {5, 5} and a mix give 0.25, 0.5 and 0.375."""
    cells = {"uniform": [_run([0.5] * 3), _run([0.5] * 3)], "dump": [_run([0.5] * 3, 1), _run([0.5] * 3, 2)]}
    seeds = {"uniform": [3, 5], "dump": [3, 5]}
    rows = {(r["cell"], r["distribution"]): r for r in spend_rows(cells, seeds, "uniform")}
    ratio = [rows["dump", "noise"][f"tokens_vs_reference{k}"] for k in ("", "_low", "_high")]
    assert ratio == pytest.approx([0.375, 0.25, 0.5]) and math.isnan(rows["uniform", "noise"]["tokens_vs_reference"])
    md = write_spend(tmp_path, cells, seeds, "uniform")[1].read_text()
    assert "| 0.38 [0.25, 0.50] |" in md and "tokens there / uniform's" in md and (tmp_path / "spend.csv").exists()


def test_per_seed_panels_draw_each_run_under_its_seed(tmp_path):
    cells = {"dump": [_run([0.5, 0.5]), _run([0.5, 0.5, 0.5])], "uniform": [_run([0.5])]}
    drawn = plot_seeds(cells, tmp_path / "seeds.png", {"dump": [3, 7], "uniform": [3]})
    assert drawn["dump"]["seed 7"] == ([0, 1, 2], pytest.approx([0.0, 0.1, 0.2]))
    assert list(drawn["uniform"]) == ["seed 3"] and (tmp_path / "seeds.png").stat().st_size > 1000


def test_each_cell_against_the_reference_at_equal_tokens(tmp_path):
    from gradus.launch.experiments.plots import plot_tokens_per_cell

    cells = {"uniform": [_run([0.5, 0.5]), _run([0.5, 0.5, 0.5])], "dump": [_run([0.5, 0.5], 2)]}
    drawn = plot_tokens_per_cell(cells, tmp_path / "t.png", {"uniform": [3, 7], "dump": [3]}, "uniform")
    assert drawn["dump"]["seed 3"] == ([120.0, 240.0], pytest.approx([0.0, 0.1]))  # 6 x 10 + 2 x 30 tokens a step
    assert drawn["reference: uniform"]["mean"] == ([160.0, 320.0], pytest.approx([0.0, 0.1]))  # its first 2 evals
    assert (tmp_path / "t.png").stat().st_size > 1000


def test_held_out_accuracy_is_drawn_with_the_seeds_band(tmp_path):
    runs = [[{"step": 4, "eval/accuracy": a}, {"step": 9, "eval/accuracy": b}] for a, b in ((0.2, 0.5), (0.4, 0.3))]
    drawn = plot_rewards({"dump": runs}, tmp_path / "rewards.png")["dump"]
    assert drawn["eval/accuracy"] == ([4, 9], pytest.approx([0.3, 0.4]))
    assert drawn["eval/accuracy min"] == ([4, 9], [0.2, 0.3]) and drawn["eval/accuracy max"] == ([4, 9], [0.4, 0.5])


def test_probabilities_and_lengths_are_drawn_with_the_seeds_band(tmp_path):
    from gradus.launch.experiments.plots import plot_lengths, plot_probabilities

    runs = [_run([0.5, 0.2]), _run([0.3, 0.1])]
    for run, length in zip(runs, (10.0, 20.0)):
        for m in run:
            m["length/tokens_mean"] = length
    drawn = plot_probabilities({"dump": runs}, tmp_path / "p.png")["dump"]
    assert drawn["noise"] == ([0, 1], pytest.approx([0.4, 0.15]))
    assert drawn["dist/noise/prob min"] == ([0, 1], [0.3, 0.1]) and drawn["dist/noise/prob max"] == ([0, 1], [0.5, 0.2])
    lengths = plot_lengths({"dump": runs}, tmp_path / "l.png")["dump"]
    assert lengths["length/tokens_mean min"] == ([0, 1], [10.0, 10.0])
    assert lengths["length/tokens_mean max"] == ([0, 1], [20.0, 20.0])
