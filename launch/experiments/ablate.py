"""`gradus ablate ABLATION.yaml`: a grid of curricula (x variants such as
filtering or a length budget) x seeds on the same base run config, then
results.csv, results.md and plots over the cells.

Cells run one after another, each in a process of its own (isolated.py), or
`parallel` at a time as Ray tasks on a cluster (each cell's run places its own
actors). Re-running skips finished cells (done.json) and resumes interrupted
ones from their latest checkpoint; a run made with settings the grid file no
longer has stops it (config_drift).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from gradus.launch.run import checkpoint_dirs as checkpoint
from gradus.curriculum.registry import nearest
from gradus.launch.config.load import load_config
from gradus.launch.config.schema import Config, build, to_dict
from gradus.launch.errors import GradusError
from gradus.launch.experiments.isolated import run_isolated, train_command
from gradus.launch.experiments.paired import eval_rows, write_paired
from gradus.launch.experiments.plots import plot_all
from gradus.launch.run.preempt import Preempted
from gradus.launch.experiments.spend import write_spend
from gradus.launch.experiments.results import (
    Reference,
    aggregate,
    read_metrics,
    run_summary,
    write_results,
)
from gradus.launch.run.rundir import START_EVAL


@dataclass
class AblationConfig:
    base: str = "default.yaml"  # the run preset every cell starts from (relative to the ablation file)
    out_dir: str = "runs/ablation"  # <out_dir>/<cell>/seed-<n>/ per run; results and plots at the top
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    target_accuracy: float = 0.5  # for "steps to reach": the first evaluation whose held-out accuracy >= this
    overrides: dict = field(default_factory=dict)  # dotted key -> value, applied to every cell
    curricula: dict = field(default_factory=dict)  # cell name -> dotted overrides, e.g. {dump: {curriculum.kind: ucb}}
    variants: dict = field(default_factory=lambda: {"": {}})  # crossed with every curriculum; "" = as is
    cells: dict = field(
        default_factory=dict
    )  # more cells with their own overrides, not crossed with variants (e.g. dump+pass_rate)
    reference_cell: str = ""  # report steps and generated tokens to reach this cell's final held-out accuracy
    accuracy_over: list[str] = field(default_factory=list)  # held-out accuracy over these distributions ([]: all)
    more_seeds: dict = field(default_factory=dict)  # cell -> seeds it runs beyond `seeds` (e.g. 5 for the reference)
    parallel: int = 1  # cells at once; > 1 runs them as Ray tasks (a cluster: set overrides cluster.address)
    keep_checkpoints: bool = False  # False: a finished run's checkpoints are deleted (its model stays in final/)


@dataclass
class Job:
    cell: str
    seed: int
    cfg: Config
    config: Path  # the base preset and the overrides that make `cfg`: the run's `gradus train` command
    overrides: list[str]

    @property
    def run_dir(self) -> Path:
        return Path(self.cfg.run.run_dir)


def _dotted(mapping: dict) -> list[str]:
    """{key: value} -> ["key=value"]; JSON is valid YAML, so any value round-trips."""
    return [f"{key}={json.dumps(value)}" for key, value in mapping.items()]


def load_ablation(path: str | Path) -> tuple[AblationConfig, list[Job]]:
    """Parse and expand the grid; every cell's config is validated before anything runs."""
    path = Path(path)
    if not path.is_file():
        raise GradusError(f"ablation file {path} does not exist")
    raw = yaml.safe_load(path.read_text()) or {}
    spec = build(AblationConfig, raw, "")
    if not spec.curricula:
        raise GradusError(
            f"{path}: 'curricula' is empty; name at least one cell, "
            "e.g. curricula: {uniform: {curriculum.kind: uniform}}"
        )
    if not spec.seeds:
        raise GradusError(f"{path}: 'seeds' is empty; e.g. seeds: [0, 1]")
    cells = {
        f"{curriculum}+{variant}" if variant else curriculum: _dotted(cell_overrides or {})
        + _dotted(variant_overrides or {})
        for curriculum, cell_overrides in spec.curricula.items()
        for variant, variant_overrides in spec.variants.items()
    }
    cells.update({name: _dotted(overrides or {}) for name, overrides in spec.cells.items()})
    if spec.reference_cell and spec.reference_cell not in cells:
        raise GradusError(
            f"{path}: reference_cell {spec.reference_cell!r} is not a cell{nearest(spec.reference_cell, cells)}; "
            f"cells: {sorted(cells)}"
        )
    for cell in spec.more_seeds:
        if cell not in cells:
            raise GradusError(
                f"{path}: more_seeds names {cell!r}, not a cell{nearest(cell, cells)}; cells: {sorted(cells)}"
            )
    jobs = []
    for cell, overrides in cells.items():
        for seed in [*spec.seeds, *(s for s in spec.more_seeds.get(cell) or [] if s not in spec.seeds)]:
            run_dir = Path(spec.out_dir) / cell / f"seed-{seed}"
            job_overrides = _dotted(spec.overrides) + overrides + [f"run.seed={seed}", f"run.run_dir={run_dir}"]
            try:
                cfg = load_config(path.parent / spec.base, job_overrides)
            except GradusError as err:
                raise GradusError(f"{path}: cell {cell!r}: {err}") from None
            if cfg.eval.every <= 0:
                raise GradusError(
                    f"{path}: cell {cell!r} has eval.every=0, so no held-out accuracy; add overrides: {{eval.every: 5}}"
                )
            jobs.append(Job(cell, seed, cfg, path.parent / spec.base, job_overrides))
    return spec, jobs


def finished(run_dir: Path) -> bool:
    """A run is finished once it wrote done.json (its last act)."""
    return (run_dir / "done.json").exists()


def _sections(config: dict) -> dict[str, Any]:
    """{section: {key: value}} -> {"section.key": value}."""
    return {f"{name}.{key}": value for name, section in config.items() for key, value in section.items()}


UNCOMPARED = ("run.run_dir", "cluster.", "wandb.")  # where a run lives, is placed and logs
RESOLVED = ("model.dtype", "rollout.enforce_eager", "rollout.gpu_memory_utilization")  # written down resolved


def config_drift(run_dir: Path, cfg: Config) -> list[str]:
    """`key: then -> now` for each setting of `cfg` that differs from the one
    the run in `run_dir` was made with (its config.yaml). Not compared: where a
    run lives, is placed and logs (UNCOMPARED), not what it computes, and the
    settings `cfg` leaves to run time (None, "auto") that runs wrote down
    resolved (RESOLVED). Every other None is a setting: `rollout.screen: None`
    against a run made with screening is a difference."""
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        return []
    then, now = _sections(to_dict(load_config(saved))), _sections(to_dict(cfg))
    return [
        f"{key}: {then.get(key)!r} -> {value!r}"
        for key, value in now.items()
        if not key.startswith(UNCOMPARED)
        and not (key in RESOLVED and value in (None, "auto"))
        and then.get(key) != value
    ]


def check_drift(pairs: list[tuple[Job, Path]]) -> None:
    """A grid whose file changed must not skip, resume or summarize a run made
    under its old settings as if it were a run of the new ones."""
    drifted = [(run_dir, keys) for job, run_dir in pairs if (keys := config_drift(run_dir, job.cfg))]
    if drifted:
        shown = "; ".join(f"{d} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})" for d, keys in drifted[:3])
        raise GradusError(
            f"{len(drifted)} run(s) were made with settings the grid no longer has: {shown}"
            f"{' and more' if len(drifted) > 3 else ''}. Move them away or set out_dir to a new directory "
            "to run the grid as it is now, or restore the ablation file's settings"
        )


def _train(job: Job, resume: str | None) -> None:
    """One run in a process of its own (isolated.py)."""
    signals = [job.cfg.run.preempt_signal] if job.cfg.run.preempt_signal else []
    run_isolated(train_command(job.config, job.overrides, resume), signals)


def _train_task(cfg: Config, resume: str | None) -> str:
    """One run inside a Ray task (a process of its own already, on the cluster)."""
    from gradus.launch.run.loop import train

    return str(train(cfg, overwrite=resume is None, resume=resume))


def _resume_point(job: Job) -> str | None:
    return "latest" if checkpoint.complete(job.run_dir) else None


def prune(job: Job) -> None:
    """Delete a finished run's checkpoints: a grid's runs are compared, not
    resumed once done, and each keeps ~6x its model in checkpoints (a 21-run grid
    of the demo: ~65 GB), which fills a disk before the grid ends."""
    if finished(job.run_dir):
        shutil.rmtree(checkpoint.checkpoint_root(job.run_dir), ignore_errors=True)


def run_jobs(jobs: list[Job], parallel: int, keep_checkpoints: bool = True) -> list[Job]:
    """Run unfinished jobs, seed by seed (every cell's first seed, then every
    cell's second...: a grid cut off midway compares all its cells on the seeds it
    has); returns the ones that were run. A run that fails (its restarts used up,
    say) does not stop the others: the failures are raised together at the end,
    and re-running resumes them. A stop signal does stop all. Without
    `keep_checkpoints`, every finished run's checkpoints are deleted."""
    check_drift([(j, j.run_dir) for j in jobs if finished(j.run_dir) or _resume_point(j)])
    seeds = list(dict.fromkeys(j.seed for j in jobs))
    todo = sorted((j for j in jobs if not finished(j.run_dir)), key=lambda j: seeds.index(j.seed))
    for j in jobs:
        if j not in todo:
            print(f"gradus ablate: {j.cell} seed {j.seed} finished earlier, skipped", flush=True)
    tidy = (lambda job: None) if keep_checkpoints else prune
    for j in jobs:
        tidy(j)
    failed: list[str] = []

    def failure(job: Job, err: Exception) -> None:
        line = f"{job.cell} seed {job.seed} ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
        print(f"gradus ablate: {line} failed; going on with the other runs", flush=True)
        failed.append(line)

    if parallel <= 1:
        for i, job in enumerate(todo):
            print(f"gradus ablate: {job.cell} seed {job.seed} ({i + 1}/{len(todo)})", flush=True)
            try:
                _train(job, _resume_point(job))
                tidy(job)
            except Preempted:
                raise
            except Exception as err:  # noqa: BLE001 - reported with the others below
                failure(job, err)
    else:
        _run_parallel(todo, parallel, failure)
        for job in todo:
            tidy(job)
    if failed:
        raise GradusError(
            f"{len(failed)} of {len(todo)} runs failed: {'; '.join(failed)}. The finished runs are kept; "
            "run `gradus ablate` again to resume the failed ones from their newest checkpoints"
        )
    return todo


def _run_parallel(todo: list[Job], parallel: int, failure: Callable[[Job, Exception], None]) -> None:
    """`parallel` runs at a time as Ray tasks (each places its own actors)."""
    import ray

    from gradus.launch.run.assemble import init_ray

    if not todo:
        return
    if not ray.is_initialized():
        init_ray(todo[0].cfg)
    remote = ray.remote(num_cpus=0, max_retries=0)(_train_task)
    pending: dict[Any, Job] = {}

    def collect(refs: list[Any]) -> None:
        for ref in refs:
            try:
                ray.get(ref)
            except Exception as err:  # noqa: BLE001 - reported with the others
                failure(pending[ref], getattr(err, "cause", None) or err)  # a RayTaskError carries the run's own error
            del pending[ref]

    for job in todo:
        if len(pending) >= parallel:
            collect(ray.wait(list(pending), num_returns=1)[0])
        print(f"gradus ablate: {job.cell} seed {job.seed} submitted", flush=True)
        pending[remote.remote(job.cfg, _resume_point(job))] = job
    collect(list(pending))


# per run: enough to recompute every number and plot; eval/ holds each held-out row's outcomes per evaluation
PUBLISHED = ("metrics.jsonl", START_EVAL, "done.json", "config.yaml", "eval")


def summarize(spec: AblationConfig, jobs: list[Job], root: Path | None = None) -> dict[str, Path]:
    """results.csv/.md, spend.csv/.md, paired.csv/.md (with a reference cell) and
    the plots from the finished runs under `root` (<root>/<cell>/seed-<n>; default
    the jobs' run directories), written there. Unfinished runs are left out and
    named in results.md: a grid still running compares what it has."""
    out_dir = Path(root or spec.out_dir)
    pairs = [(job, out_dir / job.cell / f"seed-{job.seed}" if root else job.run_dir) for job in jobs]
    check_drift(pairs)
    cells: dict[str, list[Path]] = {}
    missing = []
    for job, run_dir in pairs:
        if finished(run_dir):
            cells.setdefault(job.cell, []).append(run_dir)
        else:
            missing.append(f"{job.cell} seed {job.seed}")
    if not cells:
        raise GradusError(f"no finished run under {out_dir} yet: run `gradus ablate` first")
    if missing:
        print(f"gradus ablate: {len(missing)} of {len(jobs)} runs not finished, left out: {', '.join(missing)}")
    reference_cell = spec.reference_cell if spec.reference_cell in cells else ""
    reference, over = None, spec.accuracy_over
    metrics = {cell: [read_metrics(d, True, over) for d in dirs] for cell, dirs in cells.items()}
    logged = {  # the distributions with a held-out figure (one that holds out no rows has none)
        key[len("eval/") : -len("/accuracy")]
        for runs in metrics.values()
        for run in runs
        for m in run
        for key in m
        if key.startswith("eval/") and key.endswith("/accuracy") and key != "eval/accuracy"
    }
    for name in over:
        if name not in logged:
            raise GradusError(
                f"accuracy_over: {name!r} is not a distribution these runs evaluate{nearest(name, logged)}"
            )
    if reference_cell:  # its final accuracy becomes a second target, half its generated tokens a budget
        own = aggregate([run_summary(d, spec.target_accuracy, None, over) for d in cells[reference_cell]])
        reference = Reference(reference_cell, own["final_accuracy_mean"], own["tokens_generated_mean"] / 2)
    table = {
        cell: aggregate([run_summary(d, spec.target_accuracy, reference, over) for d in dirs])
        for cell, dirs in cells.items()
    }
    notes = []
    if over:
        notes.append(f"Held-out accuracy (every figure without a distribution's name): over {', '.join(over)} only.")
    if missing:
        notes.append(f"Not finished yet, so not in any figure: {', '.join(missing)} ({len(missing)} of {len(jobs)}).")
    if spec.reference_cell and not reference_cell:
        notes.append(f"No run of the reference cell {spec.reference_cell} has finished: nothing is compared with it.")
    csv_path, md_path = write_results(out_dir, table, spec.target_accuracy, reference, "\n\n".join(notes))
    seeds = {cell: [int(d.name.removeprefix("seed-")) for d in dirs] for cell, dirs in cells.items()}
    plot_all(metrics, out_dir / "plots", seeds, reference_cell)
    paths = {"csv": csv_path, "markdown": md_path, "plots": out_dir / "plots"}
    paths["spend"] = write_spend(out_dir, metrics, seeds, reference_cell)[1]
    if reference_cell:  # paired over training steps: the before-training evaluation (step -1) left out
        runs = {
            cell: {s: [m for m in ms if m["step"] >= 0] for s, ms in zip(seeds[cell], metrics[cell])} for cell in cells
        }
        rows = {cell: {s: eval_rows(d, over) for s, d in zip(seeds[cell], dirs)} for cell, dirs in cells.items()}
        paths["paired"] = write_paired(out_dir, reference_cell, runs, rows)[1]
    else:  # an earlier summary's comparison would sit beside tables that no longer match it
        for name in ("paired.md", "paired.csv"):
            (out_dir / name).unlink(missing_ok=True)
    return paths


def publish(spec: AblationConfig, jobs: list[Job], dest: Path, partial: bool = False) -> dict[str, Path]:
    """Copy every finished run's small files (PUBLISHED) to <dest>/<cell>/seed-<n>/
    and summarize from those copies, so the committed table and plots can be
    recomputed from the repository alone (`gradus ablate FILE --publish DEST`).
    A grid with runs still to go publishes only with `partial` (its results.md
    names them), so a half grid is never published by accident."""
    check_drift([(j, j.run_dir) for j in jobs if finished(j.run_dir)])  # before any copy
    unfinished = [f"{j.cell} seed {j.seed}" for j in jobs if not finished(j.run_dir)]
    if unfinished and not partial:
        raise GradusError(
            f"--publish needs every run finished; not yet: {', '.join(unfinished)} (run `gradus ablate` again first, "
            "or add --partial to publish the finished ones)"
        )
    for job in jobs:
        if not finished(job.run_dir):  # a copy published before stays
            continue
        target = Path(dest) / job.cell / f"seed-{job.seed}"
        shutil.rmtree(target, ignore_errors=True)  # a run published before must not leave files behind
        target.mkdir(parents=True)
        for name in PUBLISHED:
            if (job.run_dir / name).is_dir():
                shutil.copytree(job.run_dir / name, target / name)
            elif (job.run_dir / name).exists():
                shutil.copyfile(job.run_dir / name, target / name)
    return summarize(spec, jobs, Path(dest))


def ablate(path: str | Path, parallel: int | None = None) -> dict[str, Path]:
    spec, jobs = load_ablation(path)
    run_jobs(jobs, spec.parallel if parallel is None else parallel, spec.keep_checkpoints)
    return summarize(spec, jobs)
