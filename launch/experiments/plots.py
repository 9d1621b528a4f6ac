"""PNG plots of runs (one run or an ablation's cells, each a mean over seeds):
sampling probability per distribution, reward/accuracy curves, response length
vs budget. Each function also returns the series it drew, so tests can check
a plot's content and not only that a file exists."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from gradus.launch.experiments.results import compute_curve, distributions  # noqa: E402

Series = dict[str, tuple[list[int], list[float]]]


def _by_step(runs: Sequence[Sequence[dict]], key: str) -> dict[int, list[float]]:
    """Per step, the runs' (seeds') values of `key` where it was logged."""
    by_step: dict[int, list[float]] = {}
    for metrics in runs:
        for m in metrics:
            value = m.get(key)
            if value is not None and not (isinstance(value, float) and math.isnan(value)):
                by_step.setdefault(m["step"], []).append(float(value))
    return by_step


def mean_curve(runs: Sequence[Sequence[dict]], key: str) -> tuple[list[int], list[float]]:
    """Per step, the mean over runs (seeds) of `key` where it was logged."""
    by_step = _by_step(runs, key)
    steps = sorted(by_step)
    return steps, [sum(by_step[s]) / len(by_step[s]) for s in steps]


def spread_curve(runs: Sequence[Sequence[dict]], key: str) -> tuple[list[int], list[float], list[float]]:
    """Per step, the lowest and highest value of `key` over runs (seeds)."""
    by_step = _by_step(runs, key)
    steps = sorted(by_step)
    return steps, [min(by_step[s]) for s in steps], [max(by_step[s]) for s in steps]


def _budget_curve(runs: Sequence[Sequence[dict]], names: list[str]) -> tuple[list[int], list[float]]:
    """Mean over distributions and seeds of the step's length budget."""
    curves = [mean_curve(runs, f"dist/{n}/budget") for n in names]
    by_step: dict[int, list[float]] = {}
    for steps, values in curves:
        for s, v in zip(steps, values):
            by_step.setdefault(s, []).append(v)
    steps = sorted(by_step)
    return steps, [sum(by_step[s]) / len(by_step[s]) for s in steps]


def _band(ax: Any, runs: Sequence[Sequence[dict]], key: str, color: Any, drawn: Series) -> None:
    """The seeds' spread of `key`, min to max, under its mean curve (several seeds only)."""
    if len(runs) > 1:
        steps, low, high = spread_curve(runs, key)
        drawn[f"{key} min"], drawn[f"{key} max"] = (steps, low), (steps, high)
        ax.fill_between(steps, low, high, color=color, alpha=0.15, linewidth=0)


def _panels(n: int, title: str) -> tuple[Any, list[Any]]:
    fig, axes = plt.subplots(1, n, figsize=(4.5 * n, 3.4), squeeze=False, sharey=True)
    fig.suptitle(title)
    return fig, list(axes[0])


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_probabilities(cells: dict[str, list[list[dict]]], path: Path) -> dict[str, Series]:
    fig, axes = _panels(len(cells), "curriculum: sampling probability per distribution")
    drawn: dict[str, Series] = {}
    for ax, (cell, runs) in zip(axes, cells.items()):
        drawn[cell] = {}
        for name in distributions([m for r in runs for m in r]):
            drawn[cell][name] = mean_curve(runs, f"dist/{name}/prob")
            (line,) = ax.plot(*drawn[cell][name], label=name)
            _band(ax, runs, f"dist/{name}/prob", line.get_color(), drawn[cell])
        ax.set(title=f"{cell} (seeds' mean, band min to max)", xlabel="step", ylim=(0, 1))
        ax.legend(fontsize=8)
    axes[0].set_ylabel("probability")
    _save(fig, path)
    return drawn


def plot_rewards(cells: dict[str, list[list[dict]]], path: Path) -> dict[str, Series]:
    fig, (reward_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 3.6))
    drawn: dict[str, Series] = {}
    for cell, runs in cells.items():
        drawn[cell] = {key: mean_curve(runs, key) for key in ("reward/mean", "accuracy", "eval/accuracy")}
        (line,) = reward_ax.plot(*drawn[cell]["reward/mean"], label=cell)
        acc_ax.plot(*drawn[cell]["accuracy"], color=line.get_color(), label=f"{cell} (train)")
        if drawn[cell]["eval/accuracy"][0]:
            acc_ax.plot(*drawn[cell]["eval/accuracy"], "o--", color=line.get_color(), label=f"{cell} (held-out)")
            _band(acc_ax, runs, "eval/accuracy", line.get_color(), drawn[cell])
    reward_ax.set(title="reward (mean over samples)", xlabel="step")
    acc_ax.set(title="accuracy (held-out: seeds' mean, band min to max)", xlabel="step", ylim=(0, 1))
    reward_ax.legend(fontsize=8)
    acc_ax.legend(fontsize=8)
    _save(fig, path)
    return drawn


def plot_lengths(cells: dict[str, list[list[dict]]], path: Path) -> dict[str, Series]:
    fig, axes = _panels(len(cells), "response length vs length budget")
    drawn: dict[str, Series] = {}
    for ax, (cell, runs) in zip(axes, cells.items()):
        drawn[cell] = {"length": mean_curve(runs, "length/tokens_mean")}
        (line,) = ax.plot(*drawn[cell]["length"], label="mean response tokens (seeds' mean, band min to max)")
        _band(ax, runs, "length/tokens_mean", line.get_color(), drawn[cell])
        budget = _budget_curve(runs, distributions([m for r in runs for m in r]))
        if budget[0]:
            drawn[cell]["budget"] = budget
            ax.step(*budget, where="post", linestyle="--", label="budget")
        ax.set(title=cell, xlabel="step")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("tokens")
    _save(fig, path)
    return drawn


def plot_compute(cells: dict[str, list[list[dict]]], path: Path) -> dict[str, Series]:
    """Equal-compute views: held-out accuracy against generated tokens and against
    wall time, each seed a thin line and the cell's spread over seeds a band
    (min to max, drawn at the seeds' mean spend per evaluation)."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    drawn: dict[str, Series] = {}
    for cell, runs in cells.items():
        drawn[cell] = {}
        color = None
        for ax, axis, label in ((axes[0], "tokens", "generated tokens"), (axes[1], "wall", "wall seconds")):
            curves = [compute_curve(r, axis) for r in runs]
            for xs, ys in curves:
                (line,) = ax.plot(xs, ys, color=color, alpha=0.35, linewidth=0.8)
                color = line.get_color()
            n = min((len(ys) for _, ys in curves), default=0)
            if n:
                x = [float(np.mean([xs[i] for xs, _ in curves])) for i in range(n)]
                lo = [min(ys[i] for _, ys in curves) for i in range(n)]
                hi = [max(ys[i] for _, ys in curves) for i in range(n)]
                mean = [float(np.mean([ys[i] for _, ys in curves])) for i in range(n)]
                ax.fill_between(x, lo, hi, color=color, alpha=0.15)
                ax.plot(x, mean, "o-", color=color, label=cell)
                drawn[cell][axis] = (x, mean)
            ax.set(xlabel=label, ylabel="held-out accuracy", ylim=(0, 1))
    axes[0].set_title("accuracy vs generated tokens (band: seeds' range)")
    axes[1].set_title("accuracy vs wall time")
    axes[0].legend(fontsize=8)
    _save(fig, path)
    return drawn


def plot_seeds(
    cells: dict[str, list[list[dict]]], path: Path, seeds: dict[str, list[int]] | None = None
) -> dict[str, Series]:
    """Per-seed small multiples: one panel per cell and seed with that run's
    held-out accuracy against steps beside its cell's mean over seeds (dashed),
    so a crossing that does not last or one seed carrying a mean shows."""
    columns = max((len(runs) for runs in cells.values()), default=1)
    fig, axes = plt.subplots(
        len(cells), columns, figsize=(2.6 * columns, 2.0 * len(cells)), squeeze=False, sharex=True, sharey=True
    )
    fig.suptitle("held-out accuracy per seed (dashed: the cell's mean over seeds)")
    drawn: dict[str, Series] = {}
    for row, (cell, runs) in enumerate(cells.items()):
        mean = mean_curve(runs, "eval/accuracy")
        names = [f"seed {s}" for s in (seeds or {}).get(cell, range(len(runs)))]
        drawn[cell] = {}
        for column, ax in enumerate(axes[row]):
            if column >= len(runs):
                ax.axis("off")
                continue
            steps, accuracy = mean_curve([runs[column]], "eval/accuracy")
            ax.plot(*mean, "--", color="grey", linewidth=0.8)
            ax.plot(steps, accuracy, "o-", markersize=3)
            ax.set_title(f"{cell}, {names[column]}", fontsize=8)
            ax.set_ylim(0, 1)
            drawn[cell][names[column]] = (steps, accuracy)
    _save(fig, path)
    return drawn


def plot_tokens_per_cell(
    cells: dict[str, list[list[dict]]], path: Path, seeds: dict[str, list[int]] | None = None, reference: str = ""
) -> dict[str, Series]:
    """Equal-compute small multiples: one panel per cell with each seed's held-out
    accuracy against generated tokens, beside `reference`'s mean curve (grey,
    dashed; default the first cell), so each cell reads against the baseline at
    equal generation without six other cells in the way."""
    reference = reference if reference in cells else next(iter(cells), "")
    base = [compute_curve(r, "tokens") for r in cells.get(reference, [])]
    n = min((len(ys) for _, ys in base), default=0)
    base_curve = (
        [float(np.mean([xs[i] for xs, _ in base])) for i in range(n)],
        [float(np.mean([ys[i] for _, ys in base])) for i in range(n)],
    )
    columns = min(4, max(len(cells), 1))
    rows = math.ceil(len(cells) / columns)
    fig, axes = plt.subplots(
        rows, columns, figsize=(3.2 * columns, 2.4 * rows), squeeze=False, sharex=True, sharey=True
    )
    fig.suptitle(f"held-out accuracy vs generated tokens, one line per seed (dashed: {reference}'s mean)")
    drawn: dict[str, Series] = {}
    for ax, (cell, runs) in zip(axes.flat, cells.items()):
        ax.plot(*base_curve, "--", color="grey", linewidth=0.9)
        names = (seeds or {}).get(cell, range(len(runs)))
        drawn[cell] = {f"seed {s}": compute_curve(run, "tokens") for s, run in zip(names, runs)}
        for xs, ys in drawn[cell].values():
            ax.plot(xs, ys, "o-", markersize=2.5, linewidth=0.9)
        ax.set_title(cell, fontsize=9)
        ax.set_ylim(0, 1)
    for ax in list(axes.flat)[len(cells) :]:
        ax.axis("off")
    drawn[f"reference: {reference}"] = {"mean": base_curve}
    _save(fig, path)
    return drawn


PLOTS = {
    "probabilities.png": plot_probabilities,
    "rewards.png": plot_rewards,
    "lengths.png": plot_lengths,
    "compute.png": plot_compute,
}


def plot_all(
    cells: dict[str, list[list[dict]]],
    out_dir: Path,
    seeds: dict[str, list[int]] | None = None,
    reference: str = "",
) -> dict[str, dict[str, Series]]:
    """Every plot into out_dir (for more than one seed also seeds.png and
    tokens_per_cell.png, the per-seed panels; `seeds` names each cell's runs,
    `reference` is the baseline drawn in every panel), and what each draws in
    series.json (a published plot's content can be checked, not only its file);
    returns {file name: drawn series}."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    drawn = {name: draw(cells, out_dir / name) for name, draw in PLOTS.items()}
    if any(len(runs) > 1 for runs in cells.values()):
        drawn["seeds.png"] = plot_seeds(cells, out_dir / "seeds.png", seeds)
        drawn["tokens_per_cell.png"] = plot_tokens_per_cell(cells, out_dir / "tokens_per_cell.png", seeds, reference)
    (out_dir / "series.json").write_text(json.dumps(drawn, sort_keys=True) + "\n")
    return drawn
