"""The statistics a published comparison rests on, on hand-made runs whose
answers are known: first versus sustained crossings, a paired bootstrap that
resamples the baseline's seeds too, a bootstrap over held-out rows."""

import json
import math
import tempfile
from pathlib import Path

import pytest

from gradus.launch.experiments.paired import (
    crossing,
    evaluation_se,
    sampling_se,
    eval_rows,
    paired_bootstrap,
    row_bootstrap,
    row_bootstrap_ratios,
    write_paired,
)


def _run(accuracies: dict[int, float], steps: int = 10, tokens: float = 100.0, seconds: float = 2.0) -> list[dict]:
    return [
        {
            "step": s,
            "tokens/generated": tokens,
            "time/step": seconds,
            **({"eval/accuracy": accuracies[s]} if s in accuracies else {}),
        }
        for s in range(steps)
    ]


def test_first_and_sustained_crossings():
    run = _run({1: 0.3, 3: 0.5, 5: 0.4, 7: 0.6, 9: 0.6})
    first, reached = crossing(run, 0.5)
    assert reached and first == {"steps": 4.0, "tokens": 400.0, "wall": 8.0}  # touches 0.5 at step 3...
    sustained, reached = crossing(run, 0.5, sustained=True)
    assert reached and sustained["steps"] == 8.0  # ...but stays at or above it only from step 7
    never, reached = crossing(run, 0.9)
    assert not reached and never["steps"] == 10.0  # censored: the whole run


def test_paired_bootstrap_with_a_known_answer():
    """Every reference seed ends at 0.5 on its last step; every cell seed gets there
    at step 5 of 10: half the steps, tokens and time, with no spread to resample."""
    reference = {s: _run({4: 0.3, 9: 0.5}) for s in range(3)}
    cell = {s: _run({4: 0.5, 9: 0.6}) for s in range(3)}
    result = paired_bootstrap(reference, cell, resamples=200)
    assert (
        result["steps"] == (0.5, 0.5, 0.5) and result["tokens"] == (0.5, 0.5, 0.5) and result["wall"] == (0.5, 0.5, 0.5)
    )


def test_paired_bootstrap_with_a_spread_whose_replicates_can_be_counted():
    """Two seeds: the baseline crosses its target (0.5) at step 10 in both; the cell at
    step 2 in seed 0 and 6 in seed 1. A replicate draws seeds {0, 0} (ratio 0.2) or
    {1, 1} (0.6) with chance 1/4 each, a mix (0.4) with 1/2: the 95% interval is [0.2, 0.6]."""
    reference = {s: _run({4: 0.3, 9: 0.5}) for s in range(2)}
    cell = {0: _run({1: 0.5, 9: 0.6}), 1: _run({3: 0.4, 5: 0.5, 9: 0.6})}
    point, low, high = paired_bootstrap(reference, cell, resamples=2000)["steps"]
    assert (point, low, high) == pytest.approx((0.4, 0.2, 0.6))


def test_seeds_are_paired_not_resampled_apart():
    """Seed 1 is easy for both cells (the baseline crosses in 2 steps, the cell in 1),
    seed 0 hard (10 and 5): every paired replicate's ratio is 0.5. Resampling the
    cells apart would mix the cell's hard seed with the baseline's easy one (5 / 2)."""
    reference = {0: _run({3: 0.3, 9: 0.5}), 1: _run({1: 0.5, 9: 0.5})}
    cell = {0: _run({4: 0.5, 9: 0.6}), 1: _run({0: 0.5, 9: 0.6})}
    assert paired_bootstrap(reference, cell, resamples=500)["steps"] == pytest.approx((0.5, 0.5, 0.5))


def test_the_target_is_recomputed_from_resampled_baseline_seeds():
    """The baseline's seeds end at 0.4 and 0.6 (target 0.5); the cell reaches 0.45
    early and 0.6 only at the end. Replicates drawing the 0.4 seed twice put the
    target at 0.4 (the cell is early: ratio < 1); holding the target at 0.5 would
    never show that, so the interval must reach below the point estimate."""
    reference = {0: _run({4: 0.3, 9: 0.4}), 1: _run({4: 0.3, 9: 0.6})}
    cell = {0: _run({2: 0.45, 9: 0.6}), 1: _run({2: 0.45, 9: 0.6})}
    point, low, high = paired_bootstrap(reference, cell, resamples=400)["steps"]
    assert point == pytest.approx(1.0) and low < 0.5 and high == pytest.approx(1.0)


def test_a_baseline_with_more_seeds_sets_the_target_with_all_of_them():
    """Uniform at 5 seeds, a cell at 3: the target is the mean of all 5 (0.62, as
    results.md shows), not of the 3 paired ones (0.5), in the estimate and in
    every replicate; the table says how many seeds are paired."""
    reference = {s: _run({4: 0.3, 9: (0.5, 0.5, 0.5, 0.7, 0.9)[s]}) for s in range(5)}
    cell = {s: _run({4: 0.6, 9: 0.7}) for s in range(3)}
    result = paired_bootstrap(reference, cell, resamples=300)
    assert result["steps"][0] == pytest.approx(1.0)  # 0.6 at step 4 is below 0.62; against 0.5 it would be 0.5
    assert result["steps"][1] == pytest.approx(0.5)  # replicates drawing seed 3 twice: target 0.58
    write_paired(Path(tmp_dir := tempfile.mkdtemp()), "uniform", {"uniform": reference, "dump": cell}, resamples=50)
    assert "| dump | first | 3 (3 paired of 5) |" in (Path(tmp_dir) / "paired.md").read_text()


def test_row_bootstrap_and_the_published_files(tmp_path):
    point, low, high = row_bootstrap({0: [("a", 2, 4)] * 10, 1: [("a", 3, 4)] * 10}, resamples=200)
    assert (point, low, high) == (pytest.approx(0.625), pytest.approx(0.625), pytest.approx(0.625))
    spread = row_bootstrap({0: [("a", 0, 4), ("a", 4, 4)] * 10}, resamples=500)
    assert spread[1] < 0.5 < spread[2]
    by_design = row_bootstrap({0: [("a", 0, 4), ("b", 4, 4)] * 10}, resamples=500)  # rows differ only by distribution
    assert by_design == (pytest.approx(0.5), pytest.approx(0.5), pytest.approx(0.5))
    run_dir = tmp_path / "run"
    (run_dir / "eval").mkdir(parents=True)
    for step in (0, 10):  # before training (left out) and after training step 9
        (run_dir / "eval" / f"step-{step:06d}.jsonl").write_text(
            "".join(
                json.dumps({"distribution": "ab"[i // 4], "row_id": i, "right": i % 2, "samples": 1}) + "\n"
                for i in range(8)
            )
        )
    assert eval_rows(run_dir, over=["a"]) == {
        9: {("a", 0): (0, 1), ("a", 1): (1, 1), ("a", 2): (0, 1), ("a", 3): (1, 1)}
    }
    assert len(eval_rows(run_dir)[9]) == 8 and eval_rows(tmp_path) == {}
    reference = {s: _run({9: 0.5}) for s in range(2)}
    runs = {"uniform": reference, "dump": {s: _run({4: 0.5, 9: 0.5}) for s in range(2)}}
    rows = {0: {9: {("a", 0): (1, 2), ("a", 1): (2, 2)}}, 1: {9: {("a", 0): (2, 2), ("a", 1): (1, 2)}}}
    _, md = write_paired(tmp_path, "uniform", runs, {"dump": rows}, resamples=100)
    text = md.read_text()
    assert "| dump | first | 2 | 50% [50%, 50%] |" in text and "| dump | sustained | 2 |" in text
    assert "resamples `uniform`'s seeds too" in text and "| dump | 2 of 2 | 0.750 [" in text
    assert not math.isnan(float(text.split("| dump | 2 of 2 | 0.750 [")[1].split(",")[0]))
    # rows at 0.5 and 1 of 3/4: s.e. 1/4, all of it within rows (1 of 2 right: variance 1, of 4 samples); equal seeds
    assert text.rstrip().endswith("| 0.250 | 0.250 | 0.000 | no |")
    # a cell whose seed 1 predates per-row files: accuracy and s.e. from seed 0, the s.d. from both seeds' finals
    runs["dump"][1] = _run({4: 0.5, 9: 0.7})
    part = write_paired(tmp_path, "uniform", runs, {"dump": {0: rows[0], 1: {}}}, resamples=10)[1].read_text()
    assert "| dump | 1 of 2 | 0.750 [" in part and "] | 0.250 | 0.250 | 0.141 | no |" in part
    single = {s: {9: {("a", 0): (1, 1), ("a", 1): (0, 1)}} for s in (0, 1)}  # one sample per row (eval.samples 1)
    text = write_paired(tmp_path, "uniform", runs, {"dump": single}, resamples=10)[1].read_text()
    assert "| dump | 2 of 2 | 0.500 [0.000, 1.000] | 0.500 | - | 0.141 | no |" in text
    assert text.rstrip().endswith("Sampling within rows -: one sample per row, which cannot tell it from the rest.")
    one = write_paired(tmp_path, "uniform", {c: {0: r[0]} for c, r in runs.items()}, resamples=10)[1].read_text()
    assert "| dump | first | 1 | 50% | 50% | 50% |" in one  # one seed: no interval to show


def test_one_evaluations_standard_error_from_its_rows():
    rows = [("a", 0, 4), ("a", 4, 4), ("a", 2, 4), ("a", 2, 4)]  # row accuracies 0, 1, .5, .5: sd 0.408 over 4 rows
    assert evaluation_se(rows) == pytest.approx(0.408248 / 2, rel=1e-5)
    assert evaluation_se([("a", 3, 4)] * 8) == 0.0 and math.isnan(evaluation_se([("a", 1, 2)]))
    # Stratified: two distributions, each the rows above (a: 0, 1; b: .5, .5); the difference between them is design
    two = [("a", 0, 4), ("a", 4, 4), ("b", 2, 4), ("b", 2, 4)]
    assert evaluation_se(two) == pytest.approx(math.sqrt(2 * (2**2 + 2**2)) / 16)
    assert evaluation_se([("a", 0, 4)] * 4 + [("b", 4, 4)] * 4) == 0.0
    # Distributions with their own eval_size: the accuracy is the mean of theirs, each counted once (not pooled)
    unequal = [("a", 0, 4), ("a", 4, 4)] + [("b", 4, 4)] * 4
    assert evaluation_se(unequal) == pytest.approx(math.sqrt(2 * (2**2 + 2**2) / 8**2) / 2)  # a's s.e. 0.5, b's 0
    assert row_bootstrap({0: unequal}, resamples=10)[0] == pytest.approx((0.5 + 1.0) / 2)


def test_the_sampling_part_of_an_evaluations_error():
    # Rows at 2 of 4: no spread between rows, so no row part; r(n-r)/(n-1) = 4/3 each, of 8 samples
    assert sampling_se([("a", 2, 4)] * 2) == pytest.approx(math.sqrt(8 / 3) / 8)
    assert evaluation_se([("a", 2, 4)] * 2) == 0.0
    # Rows all right or all wrong: every bit of the error is which rows were drawn
    rows = [("a", 0, 4), ("a", 4, 4)] * 2
    assert sampling_se(rows) == 0.0 and evaluation_se(rows) > 0
    assert math.isnan(sampling_se([("a", 1, 1)])) and math.isnan(sampling_se([]))
    # Distributions of unequal size: each one's variance over its own samples squared, the sum over 2 squared
    unequal = [("a", 2, 4)] * 2 + [("b", 1, 2)] * 2  # a: 2 x 4/3 over 8 samples; b: 2 x 1 over 4
    assert sampling_se(unequal) == pytest.approx(math.sqrt(2 * 4 / 3 / 8**2 + 2 / 4**2) / 2)


def _rows(rights: dict[int, list[int]]) -> dict:
    """Per step, each held-out row's samples right of 4 (one distribution)."""
    return {step: {("a", i): (r, 4) for i, r in enumerate(row)} for step, row in rights.items()}


def test_row_bootstrap_of_the_ratios_resamples_the_same_rows_in_both_cells():
    """Seeds fixed, held-out rows resampled. A cell identical to the reference
    gives exactly 1 in every replicate only if both cells draw the same rows. In
    the second case the cell crosses the target (0.5) at step 5 when it is read
    on rows 0-1 and at step 10 on rows 2-3: an interval of [50%, 100%]."""
    same = _rows({4: [0, 4, 0, 4], 9: [4, 4, 0, 4]})
    runs = {s: _run({4: 0.5, 9: 0.75}) for s in range(2)}
    result, seeds = row_bootstrap_ratios(runs, runs, ({0: same, 1: same}, {0: same, 1: same}), resamples=200)
    assert seeds == [0, 1] and result["steps"] == (1.0, 1.0, 1.0)
    reference = {0: _run({4: 0.0, 9: 0.5})}
    cell = {0: _run({4: 0.5, 9: 0.75})}
    pair = ({0: _rows({4: [0, 0, 0, 0], 9: [4, 0, 4, 0]})}, {0: _rows({4: [4, 4, 0, 0], 9: [4, 4, 4, 0]})})
    point, low, high = row_bootstrap_ratios(reference, cell, pair, resamples=300)[0]["steps"]
    assert (point, low, high) == (0.5, 0.5, 1.0)
    assert row_bootstrap_ratios(reference, cell, ({}, pair[1]))[1] == []  # no stored rows for the reference: none

    # Unequal distributions (a: 1 row, b: 3): every replicate recomputes the mean over distributions, not the pool.
    # Pooled, the cell's step 4 (a 0 of 4, b all right: 0.75) would cross the target (pooled 0.625) and halve the steps.
    def rows(a: int, b: int) -> dict:
        return {("a", 0): (a, 4), **{("b", i): (b, 4) for i in range(1, 4)}}

    baseline, curriculum = {0: _run({4: 0.0, 9: 0.75})}, {0: _run({4: 0.5, 9: 1.0})}
    unequal = ({0: {4: rows(0, 0), 9: rows(4, 2)}}, {0: {4: rows(0, 4), 9: rows(4, 4)}})
    assert row_bootstrap_ratios(baseline, curriculum, unequal, resamples=50)[0]["steps"] == (1.0, 1.0, 1.0)
    md = write_paired(Path(tempfile.mkdtemp()), "u", {"u": reference, "c": cell}, {"u": pair[0], "c": pair[1]}, 50)
    assert "| c | first | seed 0 | 50% [50%, 100%] |" in md[1].read_text()
