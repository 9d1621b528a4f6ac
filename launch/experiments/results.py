"""Summaries of finished runs and of ablation cells (mean +- std over seeds):
results.csv and a markdown table."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from gradus.launch.run.metrics import distribution_names
from gradus.launch.run.rundir import START_EVAL


def read_metrics(run_dir: Path, with_start: bool = False, accuracy_over: Sequence[str] = ()) -> list[dict[str, Any]]:
    """metrics.jsonl's records; `with_start`: led by the before-training
    evaluation as step -1 (for plots; summaries count training steps only);
    `accuracy_over`: overall held-out figures (eval/accuracy, eval/pass@k, ...)
    over these distributions only (see held_out_over)."""
    path = Path(run_dir) / "metrics.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    start = Path(run_dir) / START_EVAL
    records = ([{"step": -1, **json.loads(start.read_text())}] if with_start and start.exists() else []) + records
    return [held_out_over(m, accuracy_over) for m in records] if accuracy_over else records


def held_out_over(record: dict[str, Any], names: Sequence[str]) -> dict[str, Any]:
    """A record whose overall held-out figures are the mean over `names`' own
    (as held_out_metrics' overall figure is over every distribution): a mixture
    with a source no model can learn (the noisy preset's `noise`) is compared on
    what can be learned."""
    out = dict(record)
    for key in [k for k in record if k.startswith("eval/") and k.count("/") == 1]:
        parts = [record.get(f"eval/{name}/{key[len('eval/') :]}") for name in names]
        if all(p is not None for p in parts):
            out[key] = float(np.mean(parts))
    return out


def distributions(metrics: Sequence[dict]) -> list[str]:
    """Every distribution logged in any step (names may contain '/')."""
    return sorted({name for m in metrics for name in distribution_names(m)})


def reach(metrics: Sequence[dict], target: float) -> tuple[float, float, bool]:
    """(steps, generated tokens) until the first held-out evaluation at or above
    `target`, and whether it was reached. A run that never reaches it counts
    its whole length (censored: a lower bound), so averages over seeds are not
    biased toward the lucky ones."""
    tokens = 0.0
    for m in metrics:
        tokens += m.get("tokens/generated", 0.0)
        if m.get("eval/accuracy") is not None and m["eval/accuracy"] >= target:
            return float(m["step"] + 1), tokens, True
    return float(max((m["step"] + 1 for m in metrics), default=0)), tokens, False


@dataclass(frozen=True)
class Reference:
    """The cell an ablation is compared with: its mean final held-out accuracy
    (a target for the others) and half its mean generated tokens (an equal-compute
    point at which every cell's held-out accuracy is read)."""

    cell: str
    accuracy: float
    budget: float


def compute_curve(run: Sequence[dict], axis: str) -> tuple[list[float], list[float]]:
    """A run's held-out accuracy against what it spent so far: cumulative
    generated tokens ("tokens") or wall seconds ("wall"); the before-training
    evaluation (step -1) sits at 0. A step's evaluation follows its update, so
    it counts that step's spend."""
    spent, xs, ys = 0.0, [], []
    for m in run:
        if m["step"] >= 0:
            spent += m.get("tokens/generated" if axis == "tokens" else "time/step", 0.0) or 0.0
        if m.get("eval/accuracy") is not None:
            xs.append(spent)
            ys.append(float(m["eval/accuracy"]))
    return xs, ys


def accuracy_at_budget(run: Sequence[dict], budget: float) -> float:
    """Held-out accuracy of the last evaluation made before the run had generated
    more than `budget` tokens (the before-training one counts at 0 tokens); a
    run that never spent that much gives its final accuracy."""
    within = [y for x, y in zip(*compute_curve(run, "tokens")) if x <= budget]
    return within[-1] if within else math.nan


def run_summary(
    run_dir: Path, target_accuracy: float, reference: Reference | None = None, accuracy_over: Sequence[str] = ()
) -> dict[str, float]:
    """One finished run: final held-out accuracy (avg@n, overall and per distribution) and pass@k,
    the steps and generated tokens until held-out accuracy reached the target
    (and, with a `reference`, its final accuracy, and the accuracy at its half
    token budget), mean response length, tokens generated, the informative share
    of generated groups (rewards not all equal) and tokens per informative group,
    wall seconds. `accuracy_over`: as in read_metrics."""
    everything = read_metrics(run_dir, with_start=True, accuracy_over=accuracy_over)
    metrics = [m for m in everything if m["step"] >= 0]
    evals = [m for m in metrics if m.get("eval/accuracy") is not None]
    final = evals[-1] if evals else {}
    out = {"final_accuracy": final.get("eval/accuracy", math.nan)}
    for name in distributions(metrics):
        out[f"final_accuracy/{name}"] = final.get(f"eval/{name}/accuracy", math.nan)
    for key in sorted(k for k in final if k.startswith("eval/pass@")):  # overall pass@k for each eval.k
        out[f"final_{key[len('eval/') :]}"] = final[key]
    steps, _, reached = reach(metrics, target_accuracy)
    out["steps_to_target"] = steps if reached else math.nan
    if reference is not None:
        out["steps_to_reference"], out["tokens_to_reference"], hit = reach(metrics, reference.accuracy)
        out["reached_reference"] = float(hit)
        out["accuracy_at_reference_budget"] = accuracy_at_budget(everything, reference.budget)
    out["mean_length"] = float(np.mean([m["length/tokens_mean"] for m in metrics]))
    out["tokens_generated"] = float(sum(m["tokens/generated"] for m in metrics))
    counted = [m for m in metrics if "groups/informative_frac" in m]
    informative = sum(m["groups/informative_frac"] * m["groups/generated"] for m in counted)
    generated = sum(m["groups/generated"] for m in counted)
    out["informative_share"] = informative / generated if generated else math.nan
    out["tokens_per_informative_group"] = (
        out["tokens_generated"] / informative if informative else math.nan
    )  # the compute a curriculum saves
    out.update(calibration(metrics))
    done = Path(run_dir) / "done.json"
    out["wall_seconds"] = json.loads(done.read_text())["wall_seconds"] if done.exists() else math.nan
    return out


def calibration(metrics: Sequence[dict]) -> dict[str, float]:
    """A prompt sampler's all-equal share of groups, as its posteriors predicted
    it at the draw and as it came (each step and distribution weighted by the
    groups it covers); nan for samplers without posteriors. Runs logged before
    `observed_groups` (gradus before 2026-12-07) logged a step's shares one step
    late: those are weighted by the previous step's groups, and their last step is lost."""
    pairs = []
    for before, m in zip([{}, *metrics], metrics):
        for d in distribution_names(m):
            predicted, realised = m.get(f"dist/{d}/predicted_zero_var"), m.get(f"dist/{d}/realised_zero_var")
            weight = m.get(f"dist/{d}/observed_groups", before.get(f"dist/{d}/groups", 0))
            if weight and None not in (predicted, realised) and not (math.isnan(predicted) or math.isnan(realised)):
                pairs.append((predicted, realised, weight))
    if not pairs:
        return {"predicted_zero_var": math.nan, "realised_zero_var": math.nan}
    weights = [w for _, _, w in pairs]
    return {
        "predicted_zero_var": float(np.average([p for p, _, _ in pairs], weights=weights)),
        "realised_zero_var": float(np.average([r for _, r, _ in pairs], weights=weights)),
    }


def bootstrap_interval(values: Sequence[float], resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the mean over seeds (nan for fewer
    than 2; with 3 seeds it under-covers: read it as a rough range)."""
    if len(values) < 2:
        return math.nan, math.nan
    data = np.asarray(values, dtype=float)
    means = data[np.random.default_rng(seed).integers(0, len(data), size=(resamples, len(data)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def aggregate(summaries: Sequence[dict[str, float]]) -> dict[str, float]:
    """Mean, sample std and a bootstrap 95% interval over seeds of every field;
    steps/tokens to a target over the seeds that reached it, with how many did."""
    out: dict[str, float] = {"seeds": len(summaries)}
    for key in summaries[0]:
        values = [s[key] for s in summaries if not math.isnan(s[key])]
        out[f"{key}_mean"] = float(np.mean(values)) if values else math.nan
        out[f"{key}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else (0.0 if values else math.nan)
        out[f"{key}_ci_low"], out[f"{key}_ci_high"] = bootstrap_interval(values)
    out["reached_target"] = sum(not math.isnan(s["steps_to_target"]) for s in summaries)
    if "reached_reference" in summaries[0]:
        out["reached_reference"] = sum(int(s["reached_reference"]) for s in summaries)
    return out


def write_results(
    out_dir: Path,
    cells: dict[str, dict[str, float]],
    target_accuracy: float,
    reference: Reference | None = None,
    note: str = "",
) -> tuple[Path, Path]:
    """results.csv (every mean, std and interval column) and results.md (the
    table to paste, then `note`)."""
    out_dir = Path(out_dir)
    csv_path = write_csv(
        out_dir / "results.csv",
        [{"cell": cell, **{k: _csv_value(v) for k, v in row.items()}} for cell, row in cells.items()],
    )
    md_path = out_dir / "results.md"
    md_path.write_text(markdown_table(cells, target_accuracy, reference) + (f"\n{note}\n" if note else ""))
    return csv_path, md_path


def write_csv(path: Path, rows: Sequence[dict]) -> Path:
    """One table's rows as CSV (only a "cell" header when there are none)."""
    with Path(path).open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["cell"])
        writer.writeheader()
        writer.writerows(rows)
    return Path(path)


def _csv_value(value: float) -> str:
    return "" if isinstance(value, float) and math.isnan(value) else f"{value:.6g}"


def _pm(row: dict[str, float], key: str, fmt: str) -> str:
    mean, std = row[f"{key}_mean"], row[f"{key}_std"]
    return "-" if math.isnan(mean) else f"{mean:{fmt}} ± {std:{fmt}}"


def _calibrated(row: dict[str, float]) -> str:
    predicted, seen = row.get("predicted_zero_var_mean", math.nan), row.get("realised_zero_var_mean", math.nan)
    return "-" if math.isnan(predicted) else f"{predicted:.2f} / {seen:.2f}"


def _ci(row: dict[str, float], key: str, fmt: str, censored: bool = False) -> str:
    """mean [95% interval]; ">=" when some seed never got there (its run length counted)."""
    mean, low, high = row[f"{key}_mean"], row[f"{key}_ci_low"], row[f"{key}_ci_high"]
    interval = "" if math.isnan(low) else f" [{low:{fmt}}, {high:{fmt}}]"
    return "-" if math.isnan(mean) else f"{'>=' if censored else ''}{mean:{fmt}}{interval}"


def markdown_table(
    cells: dict[str, dict[str, float]], target_accuracy: float, reference: Reference | None = None
) -> str:
    """Mean ± std over seeds per cell; with a reference cell, steps and tokens to
    reach its final accuracy as mean [bootstrap 95% interval] (reached/seeds),
    and held-out accuracy at half its generated tokens."""
    first = next(iter(cells.values()))
    names = sorted(
        k[len("final_accuracy/") : -len("_mean")]
        for k in first
        if k.startswith("final_accuracy/") and k.endswith("_mean")
    )
    passes = sorted(
        (k[len("final_") : -len("_mean")] for k in first if k.startswith("final_pass@") and k.endswith("_mean")),
        key=lambda k: int(k[5:]),
    )
    header = (
        ["cell", "seeds", "held-out acc"]
        + [f"acc {n}" for n in names]
        + [f"held-out {k}" for k in passes]
        + [
            f"steps to acc {target_accuracy:g} (reached)",
            "mean length",
            "tokens generated",
            "informative share of generated groups",
            "tokens per informative group",
            "all-equal share of a sampler's groups: predicted / seen",
            "wall s",
        ]
    )
    if reference:
        header += [
            f"steps to {reference.cell}'s final acc {reference.accuracy:.3f} [95% CI, its seeds] (reached)",
            "tokens to it [95% CI, its seeds]",
            f"acc at {reference.cell}'s half budget ({reference.budget:.0f} tokens)",
        ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    if reference:  # what each interval resamples, above the table
        lines.insert(
            0,
            f"Mean ± std over seeds. [95% CI, its seeds]: a bootstrap over the cell's own seeds with "
            f"{reference.cell}'s final accuracy held fixed (paired.md resamples {reference.cell}'s seeds too).\n",
        )
    for cell, row in cells.items():
        reach = f"{_pm(row, 'steps_to_target', '.1f')} ({row['reached_target']}/{row['seeds']})"
        values = (
            [cell, str(row["seeds"]), _pm(row, "final_accuracy", ".3f")]
            + [_pm(row, f"final_accuracy/{n}", ".3f") for n in names]
            + [_pm(row, f"final_{k}", ".3f") for k in passes]
            + [
                reach,
                _pm(row, "mean_length", ".1f"),
                _pm(row, "tokens_generated", ".0f"),
                _pm(row, "informative_share", ".2f"),
                _pm(row, "tokens_per_informative_group", ".0f"),
                _calibrated(row),
                _pm(row, "wall_seconds", ".0f"),
            ]
        )
        if reference:
            censored = row["reached_reference"] < row["seeds"]
            values += [
                f"{_ci(row, 'steps_to_reference', '.1f', censored)} ({row['reached_reference']}/{row['seeds']})",
                _ci(row, "tokens_to_reference", ".0f", censored),
                _pm(row, "accuracy_at_reference_budget", ".3f"),
            ]
        lines.append("| " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n"
