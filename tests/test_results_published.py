"""The published ablations (docs/results from `gradus ablate configs/ablation.yaml
--publish docs/results`, docs/results/noisy from configs/ablation_noisy.yaml)
recompute from the committed runs' files: the same tables, CSVs and plots,
nothing taken on trust."""

import shutil

import pytest

from gradus.launch.experiments.ablate import PUBLISHED, load_ablation, summarize
from tests.conftest import ROOT

GRIDS = [("ablation.yaml", ROOT / "docs" / "results"), ("ablation_noisy.yaml", ROOT / "docs" / "results" / "noisy")]


@pytest.mark.parametrize("config, results", GRIDS, ids=["default", "noisy"])
def test_published_results_recompute_from_committed_runs(config, results, tmp_path):
    if not (results / "results.md").exists():
        pytest.skip(f"not published yet: gradus ablate configs/{config} --publish {results.relative_to(ROOT)}")
    spec, jobs = load_ablation(ROOT / "configs" / config)
    published = {d.parent.name for d in results.glob("*/seed-*")}
    assert published == {job.cell for job in jobs}, "a published cell that the config no longer has (or lacks)"
    for job in jobs:  # the committed copies only, summarized away from the repository
        run = results / job.cell / f"seed-{job.seed}"
        assert (run / "metrics.jsonl").exists() and (run / "done.json").exists(), f"{run} is missing"
        (tmp_path / job.cell).mkdir(exist_ok=True)
        shutil.copytree(run, tmp_path / job.cell / run.name)
        assert {p.name for p in run.iterdir()} <= set(PUBLISHED)
    paths = summarize(spec, jobs, tmp_path)
    assert paths["markdown"].read_text() == (results / "results.md").read_text()
    for name in ("results.csv", "spend.md", "spend.csv", "paired.md", "paired.csv"):
        assert (tmp_path / name).read_text() == (results / name).read_text(), name
    assert {p.name for p in paths["plots"].iterdir()} == {p.name for p in (results / "plots").iterdir()}
    assert (paths["plots"] / "series.json").read_text() == (results / "plots" / "series.json").read_text()
