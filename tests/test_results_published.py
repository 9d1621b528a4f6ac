"""The published ablation (docs/results, written by `gradus ablate
configs/ablation.yaml --publish docs/results`) recomputes from the committed
runs' metrics: the same table, CSV and plots, nothing taken on trust."""

import shutil

import pytest

from gradus.launch.experiments.ablate import PUBLISHED, load_ablation, summarize
from tests.conftest import ROOT

RESULTS = ROOT / "docs" / "results"


@pytest.mark.skipif(
    not (RESULTS / "results.md").exists(),
    reason="not published yet: gradus ablate configs/ablation.yaml --publish docs/results",
)
def test_published_results_recompute_from_committed_runs(tmp_path):
    spec, jobs = load_ablation(ROOT / "configs" / "ablation.yaml")
    for job in jobs:  # the committed copies only, summarized away from the repository
        run = RESULTS / job.cell / f"seed-{job.seed}"
        assert (run / "metrics.jsonl").exists() and (run / "done.json").exists(), f"{run} is missing"
        (tmp_path / job.cell).mkdir(exist_ok=True)
        shutil.copytree(run, tmp_path / job.cell / run.name)
        assert {p.name for p in run.iterdir()} <= set(PUBLISHED)
    paths = summarize(spec, jobs, tmp_path)
    assert paths["markdown"].read_text() == (RESULTS / "results.md").read_text()
    for name in ("results.csv", "spend.md", "spend.csv", "paired.md", "paired.csv"):
        assert (tmp_path / name).read_text() == (RESULTS / name).read_text(), name
    assert {p.name for p in paths["plots"].iterdir()} == {p.name for p in (RESULTS / "plots").iterdir()}
