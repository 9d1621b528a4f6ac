"""`gradus ablate` end to end on a tiny model (2 curricula x 2 seeds, 3 steps
each, real Ray + vLLM + DeepSpeed), then `gradus plot` and `gradus eval` on its
runs. Checks what the CSV, table and plots say. Slow (~3 minutes)."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import yaml
from matplotlib.image import imread

from gradus.launch.experiments.ablate import PUBLISHED, ablate, load_ablation, publish, run_jobs
from gradus.launch.experiments.plots import plot_all
from gradus.launch.experiments.results import read_metrics
from gradus.launch.experiments.spend import shares
from tests.conftest import ROOT

pytestmark = pytest.mark.e2e


def _final_eval(run_dir) -> float:
    return [m for m in read_metrics(run_dir) if m.get("eval/accuracy") is not None][-1]["eval/accuracy"]


def test_ablation_grid_results_plots_and_eval(tiny_model, tmp_path):
    spec = {
        "base": str(ROOT / "configs" / "default.yaml"),
        "out_dir": str(tmp_path / "abl"),
        "seeds": [0, 1],
        "target_accuracy": 0.0,  # reached at the first evaluation: exercises steps-to-target
        "overrides": {
            "model.path": str(tiny_model),
            "run.steps": 3,
            "eval.every": 2,
            "run.checkpoint_every": 0,
            "rollout.max_tokens": 16,
            "rollout.prompts_per_step": 4,
            "trainer.lr": 1e-3,
            "wandb.mode": "disabled",
        },
        "curricula": {"uniform": {"curriculum.kind": "uniform", "curriculum.params": {}}, "dump": {}},
    }
    path = tmp_path / "ablation.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))  # cells keep the file's order
    paths = ablate(path)

    _, jobs = load_ablation(path)
    runs = {(j.cell, j.seed): j.run_dir for j in jobs}
    assert sorted(runs) == [("dump", 0), ("dump", 1), ("uniform", 0), ("uniform", 1)]
    rows = {r["cell"]: r for r in csv.DictReader(paths["csv"].open())}
    tokens_by_cell = {}
    assert sorted(rows) == ["dump", "uniform"]
    for cell, row in rows.items():
        finals = [_final_eval(runs[cell, s]) for s in (0, 1)]
        tokens = tokens_by_cell[cell] = [
            sum(m["tokens/generated"] for m in read_metrics(runs[cell, s])) for s in (0, 1)
        ]
        assert int(row["seeds"]) == 2 and int(row["reached_target"]) == 2
        assert float(row["final_accuracy_mean"]) == pytest.approx(np.mean(finals), abs=1e-5)
        assert float(row["final_accuracy_std"]) == pytest.approx(np.std(finals, ddof=1), abs=1e-5)
        assert float(row["tokens_generated_mean"]) == pytest.approx(np.mean(tokens), rel=1e-5)
        assert float(row["steps_to_target_mean"]) == 2.0  # the first evaluation (after step 2)
        assert float(row["wall_seconds_mean"]) > 0
        for name in ("add1", "add2", "add3"):
            assert f"final_accuracy/{name}_mean" in row
    table = paths["markdown"].read_text().splitlines()
    assert table[0].startswith("| cell | seeds | held-out acc | acc add1 | acc add2 | acc add3 | steps to acc 0")
    assert [line.split("|")[1].strip() for line in table[2:]] == ["uniform", "dump"]
    assert all("±" in line for line in table[2:])

    # The PNGs are real images, and what they draw is the seeds' mean of the logged metrics.
    for name in ("probabilities.png", "rewards.png", "lengths.png", "compute.png", "seeds.png", "tokens_per_cell.png"):
        image = imread(paths["plots"] / name)
        assert image.shape[0] > 100 and image.std() > 0.01, name
    cells = {c: [read_metrics(runs[c, s]) for s in (0, 1)] for c in ("uniform", "dump")}
    drawn = plot_all(cells, tmp_path / "again")
    steps, probs = drawn["probabilities.png"]["dump"]["add1"]
    assert steps == [0, 1, 2]
    assert probs == pytest.approx([np.mean([m[s]["dist/add1/prob"] for m in cells["dump"]]) for s in steps])
    assert drawn["probabilities.png"]["uniform"]["add2"][1] == pytest.approx([1 / 3] * 3)
    assert drawn["rewards.png"]["uniform"]["eval/accuracy"][0] == [1, 2]
    assert drawn["seeds.png"]["dump"]["seed 1"][1] == [
        m["eval/accuracy"] for m in cells["dump"][1] if "eval/accuracy" in m
    ]
    # Where generation went: per distribution, from the logged samples and lengths; the shares add up to all of it.
    spend = list(csv.DictReader((paths["spend"].parent / "spend.csv").open()))
    assert {(r["cell"], r["distribution"]) for r in spend} == {
        (c, d) for c in ("uniform", "dump") for d in ("add1", "add2", "add3")
    }
    for cell in ("uniform", "dump"):
        for run in cells[cell]:
            assert sum(shares(run, d)[0] for d in ("add1", "add2", "add3")) == pytest.approx(1.0)
    started = {"dump": [read_metrics(runs["dump", s], with_start=True) for s in (0, 1)]}  # eval.at_start (default.yaml)
    assert plot_all(started, tmp_path / "start")["rewards.png"]["dump"]["eval/accuracy"][0] == [-1, 1, 2]

    # Re-running skips every finished cell.
    assert run_jobs(jobs, parallel=1) == []
    # Published: each run's small files, from which the same table is recomputed (docs/results works so).
    stale = tmp_path / "published" / "dump" / "seed-1" / "eval" / "step-000099.jsonl"  # from an earlier publication
    stale.parent.mkdir(parents=True)
    stale.write_text("{}\n")
    published = publish(*load_ablation(path), tmp_path / "published")
    assert not stale.exists()
    assert published["markdown"].read_text() == paths["markdown"].read_text()
    assert sorted(p.name for p in (tmp_path / "published" / "dump" / "seed-1").iterdir()) == sorted(PUBLISHED)
    for cell, row in rows.items():
        informative = [
            sum(m["groups/informative_frac"] * m["groups/generated"] for m in read_metrics(runs[cell, s]))
            for s in (0, 1)
        ]
        per_group = [t / i for t, i in zip(tokens_by_cell[cell], informative) if i]
        assert float(row["tokens_per_informative_group_mean"] or "nan") == pytest.approx(
            np.mean(per_group) if per_group else float("nan"), rel=1e-5, nan_ok=True
        )

    run_dir = runs["dump", 0]
    out = subprocess.run(
        [sys.executable, "-m", "gradus.launch.cli", "plot", str(run_dir)], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert sorted(p.name for p in (run_dir / "plots").iterdir()) == [
        "compute.png",
        "lengths.png",
        "probabilities.png",
        "rewards.png",
        "series.json",  # what each plot draws, so a published plot's content can be checked
    ]

    out = subprocess.run(
        [sys.executable, "-m", "gradus.launch.cli", "eval", str(run_dir)], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads((run_dir / "eval.json").read_text())
    assert set(result["accuracy"]) == {"add1", "add2", "add3", "all"} and result["rows"] == {
        "add1": 32,
        "add2": 32,
        "add3": 32,
    }
    # Greedy decoding of the same final policy on the same held-out rows: what the run's last evaluation measured.
    assert result["accuracy"]["all"] == pytest.approx(_final_eval(run_dir), abs=1e-9)
    last = sorted((run_dir / "eval").glob("step-*.jsonl"))[-1].read_text().splitlines()
    assert result["outcomes"] == [json.loads(line) for line in last]  # row by row, as the run stored them
