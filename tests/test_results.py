"""Run summaries, seed aggregation, the markdown table and ablation-file errors
(pure: no Ray, no model)."""

import json
import math

import pytest
import yaml

from gradus.launch.experiments import ablate
from gradus.launch.experiments.ablate import config_drift, load_ablation, run_jobs
from gradus.launch.config.schema import to_dict
from gradus.launch.errors import GradusError
from gradus.launch.run.preempt import Preempted
from gradus.launch.experiments.results import (
    Reference,
    accuracy_at_budget,
    aggregate,
    bootstrap_interval,
    markdown_table,
    run_summary,
)
from gradus.launch.run.rundir import START_EVAL
from tests.conftest import ROOT


def _write_run(path, evals, wall=12.0):
    path.mkdir(parents=True)
    lines = []
    for step, acc in enumerate(evals):
        m = {
            "step": step,
            "dist/a/prob": 0.5,
            "dist/b/prob": 0.5,
            "length/tokens_mean": 10.0 + step,
            "tokens/generated": 100,
            "groups/generated": 8,
            "groups/informative_frac": 0.25 if step % 2 else 0.0,
        }  # 2 informative groups on odd steps
        if acc is not None:
            m.update(
                {
                    "eval/accuracy": acc,
                    "eval/a/accuracy": acc,
                    "eval/b/accuracy": acc / 2,
                    "eval/pass@4": min(1.0, 2 * acc),
                }
            )
        lines.append(json.dumps(m))
    (path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    (path / "done.json").write_text(json.dumps({"wall_seconds": wall}))


def test_run_summary_reads_final_eval_steps_to_target_length_tokens_wall(tmp_path):
    _write_run(tmp_path / "r", [None, 0.2, None, 0.6, 0.5])
    s = run_summary(tmp_path / "r", target_accuracy=0.5)
    assert s["final_accuracy"] == 0.5 and s["final_accuracy/a"] == 0.5 and s["final_accuracy/b"] == 0.25
    assert s["steps_to_target"] == 4.0  # step index 3 is the 4th step
    assert s["mean_length"] == 12.0 and s["tokens_generated"] == 500 and s["wall_seconds"] == 12.0
    assert s["tokens_per_informative_group"] == 500 / 4  # every generated token over the 2 + 2 informative groups
    assert s["informative_share"] == 4 / 40  # of the 5 x 8 generated groups
    assert math.isnan(run_summary(tmp_path / "r", target_accuracy=0.9)["steps_to_target"])
    assert s["final_pass@4"] == 1.0
    row = aggregate([s, run_summary(tmp_path / "r", 0.5)])
    assert "| held-out pass@4 |" in markdown_table({"cell": row}, 0.5) and row["final_pass@4_mean"] == 1.0


def test_aggregate_mean_std_over_seeds_and_table():
    runs = [{"final_accuracy": 0.2, "steps_to_target": 4.0}, {"final_accuracy": 0.4, "steps_to_target": math.nan}]
    row = aggregate(runs)
    assert row["final_accuracy_mean"] == pytest.approx(0.3) and row["final_accuracy_std"] == pytest.approx(
        0.1414213, abs=1e-6
    )
    assert row["steps_to_target_mean"] == 4.0 and row["steps_to_target_std"] == 0.0 and row["reached_target"] == 1
    full = {
        **row,
        "mean_length_mean": 10.0,
        "mean_length_std": 1.0,
        "tokens_generated_mean": 500.0,
        "tokens_generated_std": 0.0,
        "informative_share_mean": 0.4,
        "informative_share_std": 0.05,
        "tokens_per_informative_group_mean": 125.0,
        "tokens_per_informative_group_std": 5.0,
        "wall_seconds_mean": 60.0,
        "wall_seconds_std": 2.0,
    }
    sampled = {**full, "predicted_zero_var_mean": 0.3, "realised_zero_var_mean": 0.375}
    table = markdown_table({"dump": full, "dump+thompson": sampled}, 0.5).splitlines()
    assert table[0] == (
        "| cell | seeds | held-out acc | steps to acc 0.5 (reached) | mean length | tokens generated "
        "| informative share of generated groups | tokens per informative group"
        " | all-equal share of a sampler's groups: predicted / seen | wall s |"
    )
    assert table[2] == (
        "| dump | 2 | 0.300 ± 0.141 | 4.0 ± 0.0 (1/2) | 10.0 ± 1.0 | 500 ± 0 | 0.40 ± 0.05 | 125 ± 5 | - | 60 ± 2 |"
    )
    assert table[3].endswith("| 125 ± 5 | 0.30 / 0.38 | 60 ± 2 |")


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"curricula": {"u": {}}, "seedz": [0]}, "did you mean 'seeds'"),
        ({"curricula": {}}, "'curricula' is empty"),
        ({"curricula": {"u": {"curriculum.kindd": "uniform"}}}, "cell 'u': unknown config key 'curriculum.kindd'"),
        ({"curricula": {"u": {}}, "overrides": {"eval.every": 0}}, "eval.every=0"),
        ({"curricula": {"u": {}}, "more_seeds": {"uu": [3]}}, "more_seeds names 'uu', not a cell (did you mean 'u'"),
    ],
)
def test_ablation_file_errors_name_the_key(tmp_path, spec, message):
    path = tmp_path / "abl.yaml"
    overrides = {"eval.every": 5, **spec.pop("overrides", {})}
    path.write_text(yaml.safe_dump({"base": str(ROOT / "configs" / "default.yaml"), "overrides": overrides, **spec}))
    with pytest.raises(GradusError, match=message.replace("(", r"\(")):
        load_ablation(path)


def test_shipped_ablation_expands_to_its_cells_and_seeds():
    spec, jobs = load_ablation("configs/ablation.yaml")
    cells = {"uniform", "dump", "sec", "dump+filter", "dump+pass_rate", "dump+thompson", "dump+greso"}
    cells |= {"dump+filter+screen", "dump+thompson+sizes"}
    assert len(jobs) == 9 * 3 + 6 and spec.reference_cell == "uniform" and {j.cell for j in jobs} == cells
    five = {c for c in cells if len([j for j in jobs if j.cell == c]) == 5}  # the reference and the two best: 5 seeds
    assert five == {"uniform", "dump+filter", "dump+pass_rate"}
    dump_filter = next(j for j in jobs if j.cell == "dump+filter" and j.seed == 1)
    assert dump_filter.cfg.curriculum.bandit["kind"] == "ucb"
    assert dump_filter.cfg.curriculum.filters == [{"kind": "nonzero_std"}]
    assert dump_filter.cfg.run.seed == 1 and str(dump_filter.run_dir) == "runs/ablation/dump+filter/seed-1"
    pass_rate = next(j for j in jobs if j.cell == "dump+pass_rate")
    assert pass_rate.cfg.curriculum.prompts["kind"] == "pass_rate"
    assert pass_rate.cfg.eval.samples == 1 and pass_rate.cfg.data.eval_size == 192  # more rows, one sample each


def test_more_seeds_for_named_cells(tmp_path):
    path = tmp_path / "abl.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "base": str(ROOT / "configs" / "default.yaml"),
                "overrides": {"eval.every": 5},
                "seeds": [0, 1],
                "curricula": {"uniform": {}, "dump": {}},
                "more_seeds": {"uniform": [1, 2, 3]},
            },
            sort_keys=False,
        )
    )
    jobs = load_ablation(path)[1]
    assert [(j.cell, j.seed) for j in jobs] == [("uniform", s) for s in (0, 1, 2, 3)] + [("dump", 0), ("dump", 1)]


def _fail_uniform_seed_1(cfg, resume):
    if cfg.run.run_dir.endswith("uniform/seed-1"):
        raise GradusError("a worker died and run.max_restarts=2 restarts are used up")


@pytest.mark.parametrize("parallel", [1, 2])
def test_a_failed_run_does_not_stop_the_others(monkeypatch, parallel):
    """Sequentially and as Ray tasks: every run is tried, the failures are raised together."""
    _, jobs = load_ablation("configs/ablation.yaml")
    jobs = [j for j in jobs if j.cell in ("uniform", "dump")]
    for job in jobs:
        job.cfg.run.run_dir = f"/nonexistent/{job.cell}/seed-{job.seed}"  # none finished
    ran = []
    if parallel == 1:  # each run in a process of its own: the function that starts it
        monkeypatch.setattr(
            ablate,
            "_train",
            lambda job, resume: ran.append(job.cfg.run.run_dir) or _fail_uniform_seed_1(job.cfg, resume),
        )
    else:  # a Ray task each: the function the task runs
        monkeypatch.setattr(ablate, "_train_task", _fail_uniform_seed_1)
    if parallel > 1:
        import ray

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        with pytest.raises(
            GradusError,
            match=r"^1 of 8 runs failed: uniform seed 1 \(GradusError: a worker died.*run `gradus ablate` again",
        ):
            run_jobs(jobs, parallel)
    finally:
        if parallel > 1:
            ray.shutdown()
    assert len(ran) == (8 if parallel == 1 else 0)  # Ray tasks append in their own processes
    if parallel == 1:  # seed by seed: a grid cut off midway has every cell's first seeds; uniform's more_seeds last
        first = [[c, f"seed-{s}"] for s in range(3) for c in ("uniform", "dump")]
        assert [r.split("/")[-2:] for r in ran] == first + [["uniform", "seed-3"], ["uniform", "seed-4"]]

    def stopped(job, resume):
        ran.append(job.cfg.run.run_dir)
        raise Preempted("stopped on SIGTERM")

    if parallel == 1:  # a stop signal ends the ablation at once
        ran.clear()
        monkeypatch.setattr(ablate, "_train", stopped)
        with pytest.raises(Preempted):
            run_jobs(jobs, parallel)
        assert len(ran) == 1


def test_finished_runs_lose_their_checkpoints_unless_kept(monkeypatch, tmp_path):
    """A grid keeps each finished run's model (final/) and drops its checkpoints; a failed run keeps them to resume."""
    _, jobs = load_ablation("configs/ablation.yaml")
    jobs = [j for j in jobs if j.cell in ("uniform", "dump") and j.seed == 0]
    for job in jobs:
        job.cfg.run.run_dir = str(tmp_path / job.cell / "seed-0")
        (job.run_dir / "checkpoints" / "step-000004").mkdir(parents=True)
        (job.run_dir / "final").mkdir()

    def train(job, resume):
        if job.cell == "dump":
            raise GradusError("a worker died")
        (job.run_dir / "done.json").write_text("{}")

    monkeypatch.setattr(ablate, "_train", train)
    with pytest.raises(GradusError, match="1 of 2 runs failed"):
        run_jobs(jobs, 1, keep_checkpoints=False)
    assert [(j.run_dir / "checkpoints").exists() for j in jobs] == [False, True]
    assert all((j.run_dir / "final").is_dir() for j in jobs)
    (tmp_path / "dump" / "seed-0" / "done.json").write_text("{}")  # finished since: skipped, and pruned too
    assert run_jobs(jobs, 1, keep_checkpoints=False) == []
    assert not (tmp_path / "dump" / "seed-0" / "checkpoints").exists()


def test_reach_reference_and_bootstrap_interval(tmp_path):
    _write_run(tmp_path / "r", [None, 0.2, None, 0.6, 0.5])
    s = run_summary(tmp_path / "r", target_accuracy=0.5, reference=Reference("uniform", 0.2, 250.0))
    assert (s["steps_to_reference"], s["tokens_to_reference"], s["reached_reference"]) == (
        2.0,
        200.0,
        1.0,
    )  # 100 tokens a step
    never = run_summary(tmp_path / "r", target_accuracy=0.5, reference=Reference("uniform", 0.9, 50.0))
    assert (never["steps_to_reference"], never["tokens_to_reference"], never["reached_reference"]) == (
        5.0,
        500.0,
        0.0,
    )  # censored
    assert math.isnan(bootstrap_interval([3.0])[0])
    low, high = bootstrap_interval([1.0, 2.0, 6.0])
    assert 1.0 <= low < 3.0 < high <= 6.0
    row = aggregate([s, never])
    assert row["reached_reference"] == 1 and row["steps_to_reference_mean"] == 3.5
    legend, _, *table = markdown_table({"x": row}, 0.5, Reference("uniform", 0.2, 250.0)).splitlines()
    assert "bootstrap over the cell's own seeds with uniform's final accuracy held fixed" in legend
    assert "steps to uniform's final acc 0.200 [95% CI, its seeds] (reached)" in table[0]
    assert "| >=3.5 [2.0, 5.0] (1/2) |" in table[2]
    assert table[0].endswith("| acc at uniform's half budget (250 tokens) |")


def test_accuracy_at_the_reference_half_budget_is_the_last_evaluation_within_it(tmp_path):
    """100 tokens a step; evaluations after steps 1 (0.2), 3 (0.6) and 4 (0.5), and 0.1 before training."""
    _write_run(tmp_path / "r", [None, 0.2, None, 0.6, 0.5])
    (tmp_path / "r" / START_EVAL).write_text(json.dumps({"eval/accuracy": 0.1}))
    at = {
        b: run_summary(tmp_path / "r", 0.5, Reference("u", 0.2, b))["accuracy_at_reference_budget"]
        for b in (50.0, 200.0, 399.0, 400.0, 10_000.0)
    }
    assert at == {50.0: 0.1, 200.0: 0.2, 399.0: 0.2, 400.0: 0.6, 10_000.0: 0.5}
    assert math.isnan(accuracy_at_budget([{"step": 0, "tokens/generated": 100, "eval/accuracy": 0.3}], 50.0))


def test_accuracy_over_leaves_a_distribution_out_of_every_overall_figure(tmp_path):
    """The noisy preset compares cells on what can be learned: with accuracy_over,
    eval/accuracy (final, targets, crossings, plots) is the mean over those
    distributions; per-distribution figures stay; a name no run logs is refused."""
    for cell in ("u", "x"):
        _write_run(tmp_path / cell / "seed-0", [None, 0.2, None, 0.6, 0.5])
    s = run_summary(tmp_path / "u" / "seed-0", 0.5, accuracy_over=["b"])
    assert s["final_accuracy"] == 0.25 and s["final_accuracy/a"] == 0.5 and s["steps_to_target"] != 4.0
    assert s["final_pass@4"] == 1.0  # no per-distribution pass@4 logged: left as it was
    jobs = [ablate.Job(cell, 0, None, ROOT, []) for cell in ("u", "x")]
    spec = ablate.AblationConfig(reference_cell="u", accuracy_over=["b"])
    paths = ablate.summarize(spec, jobs, tmp_path)
    text = paths["markdown"].read_text()
    assert text.endswith("Held-out accuracy (every figure without a distribution's name): over b only.\n")
    assert "| x | 1 | 0.250 ± 0.000 | 0.500 ± 0.000 |" in text  # overall (b only), then a's own
    with pytest.raises(GradusError, match="accuracy_over: 'bb' is not a distribution.*did you mean 'b'"):
        ablate.summarize(ablate.AblationConfig(accuracy_over=["bb"]), jobs, tmp_path)


def test_a_samplers_calibration_is_weighted_by_its_groups():
    from gradus.launch.experiments.results import calibration

    def step(predicted, realised, groups, observed=None):
        extra = {} if observed is None else {"dist/a/observed_groups": observed}
        return {"dist/a/predicted_zero_var": predicted, "dist/a/realised_zero_var": realised, "dist/a/groups": groups,
                "dist/a/prob": 1.0, **extra}  # fmt: skip

    steps = [step(0.2, 0.5, 6, 6), step(0.6, 0.0, 2, 2), step(0.9, 1.0, 0, 0), step(None, 0.5, 4, 4)]
    # a step that observed nothing from a weighs nothing; none predicted (JSON null): left out
    assert calibration(steps) == pytest.approx({"predicted_zero_var": 0.3, "realised_zero_var": 0.375})
    late = [step(math.nan, math.nan, 6), step(0.2, 0.5, 2), step(0.6, 0.0, 0), step(0.9, 1.0, 4)]
    # logged a step late (no observed_groups): each share is weighted by the step before's groups
    assert calibration(late) == pytest.approx({"predicted_zero_var": 0.3, "realised_zero_var": 0.375})
    assert all(math.isnan(v) for v in calibration([{"dist/a/prob": 1.0}]).values())


def test_a_run_made_with_other_settings_stops_the_grid(tmp_path):
    """A finished run whose config.yaml differs from the grid's now is neither skipped nor summarized as a run of it;
    where it lives or logs and what it resolved at run time (dtype, eager mode) are not differences."""
    _, jobs = load_ablation("configs/ablation.yaml")
    job = next(j for j in jobs if j.cell == "uniform" and j.seed == 0)
    job.cfg.run.run_dir = str(tmp_path / "uniform" / "seed-0")
    job.run_dir.mkdir(parents=True)
    (job.run_dir / "done.json").write_text("{}")
    then = to_dict(job.cfg)
    then["run"]["run_dir"], then["model"]["dtype"], then["rollout"]["enforce_eager"] = "elsewhere", "float32", True
    then["wandb"]["mode"] = "online"  # how it logged, not what it computed
    (job.run_dir / "config.yaml").write_text(yaml.safe_dump(then))
    assert config_drift(job.run_dir, job.cfg) == [] and run_jobs([job], 1) == []
    then["eval"]["samples"] = 8
    (job.run_dir / "config.yaml").write_text(yaml.safe_dump(then))
    assert config_drift(job.run_dir, job.cfg) == ["eval.samples: 8 -> 1"]
    with pytest.raises(GradusError, match=r"1 run\(s\) were made with settings .*seed-0 \(eval.samples: 8 -> 1\)"):
        run_jobs([job], 1)
    then["eval"]["samples"], then["rollout"]["screen"] = 1, {"samples": 2}  # a setting the grid now leaves unset
    (job.run_dir / "config.yaml").write_text(yaml.safe_dump(then))
    assert config_drift(job.run_dir, job.cfg) == ["rollout.screen: {'samples': 2} -> None"]


def test_a_grid_still_running_summarizes_and_publishes_what_it_has(tmp_path):
    """Unfinished runs are left out and named; --publish takes a half grid only with --partial, and never
    removes a copy published before of a run this machine has not finished."""
    path = tmp_path / "abl.yaml"
    grid = {"base": str(ROOT / "configs" / "default.yaml"), "out_dir": str(tmp_path / "runs"), "seeds": [0, 1]}
    grid |= {"overrides": {"eval.every": 5}, "curricula": {"uniform": {}, "dump": {}}, "reference_cell": "uniform"}
    path.write_text(yaml.safe_dump(grid))
    spec, jobs = load_ablation(path)
    _write_run(tmp_path / "runs" / "uniform" / "seed-0", [0.2, 0.4])
    _write_run(tmp_path / "runs" / "dump" / "seed-0", [0.3, 0.5])
    (tmp_path / "runs" / "uniform" / "seed-1").mkdir()  # started, not finished
    table = ablate.summarize(spec, jobs)["markdown"].read_text()
    assert sorted([line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ")][1:]) == [
        "dump",
        "uniform",
    ]
    assert "Not finished yet, so not in any figure: dump seed 1, uniform seed 1 (2 of 4)." in table
    dest = tmp_path / "published"
    with pytest.raises(GradusError, match="not yet: dump seed 1, uniform seed 1 .*add --partial"):
        ablate.publish(spec, jobs, dest)
    _write_run(dest / "dump" / "seed-1", [0.1, 0.6])  # published from another machine earlier
    table = ablate.publish(spec, jobs, dest, partial=True)["markdown"].read_text()
    assert sorted(str(p.relative_to(dest)) for p in dest.glob("*/seed-*")) == [
        "dump/seed-0",
        "dump/seed-1",
        "uniform/seed-0",
    ]
    assert "(1 of 4)" in table and "| dump | 2 |" in table
    with pytest.raises(GradusError, match="no finished run under"):
        ablate.summarize(spec, jobs, tmp_path / "empty")
