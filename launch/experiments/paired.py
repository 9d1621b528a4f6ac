"""Evidence against a baseline cell that a reviewer can check: ratios of the
steps, generated tokens and wall time each cell needs to reach the baseline's
final held-out accuracy, with a paired bootstrap over seeds that resamples the
baseline's seeds too and recomputes that target in every replicate (seeds share
held-out rows, so cells are paired by seed), both for the first evaluation at or
above the target and for the sustained crossing (the first after which every
later evaluation stays at or above it). Written as paired.md and paired.csv
beside results.md; every interval says what it resamples."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from gradus.launch.experiments.results import write_csv

Runs = dict[int, list[dict]]  # seed -> that run's metrics.jsonl records
MEASURES = ("steps", "tokens", "wall")


def crossing(metrics: Sequence[dict], target: float, sustained: bool = False) -> tuple[dict[str, float], bool]:
    """Steps, generated tokens and wall seconds until the first held-out
    evaluation at or above `target` (`sustained`: the first after which every
    later one stays at or above it), and whether it was reached. A run that
    never gets there counts its whole length (censored, a lower bound)."""
    evals = [i for i, m in enumerate(metrics) if m.get("eval/accuracy") is not None]
    hit = None
    for position, i in enumerate(evals):
        if metrics[i]["eval/accuracy"] >= target and (
            not sustained or all(metrics[j]["eval/accuracy"] >= target for j in evals[position:])
        ):
            hit = i
            break
    end = hit if hit is not None else len(metrics) - 1
    upto = metrics[: end + 1]
    wall = sum(m.get("time/step", 0.0) for m in upto)
    return {
        "steps": float(end + 1),
        "tokens": float(sum(m.get("tokens/generated", 0.0) for m in upto)),
        "wall": wall,
    }, hit is not None


def final_accuracy(metrics: Sequence[dict]) -> float:
    evals = [m["eval/accuracy"] for m in metrics if m.get("eval/accuracy") is not None]
    return evals[-1] if evals else math.nan


def ratios(
    reference: Runs, cell: Runs, reference_seeds: Sequence[int], cell_seeds: Sequence[int], sustained: bool
) -> dict[str, float]:
    """Mean over `cell_seeds` of the cell's cost to the reference's mean final
    accuracy over `reference_seeds`, divided by the reference's own mean cost to it."""
    target = float(np.mean([final_accuracy(reference[s]) for s in reference_seeds]))
    out = {}
    for measure in MEASURES:
        mine = np.mean([crossing(cell[s], target, sustained)[0][measure] for s in cell_seeds])
        theirs = np.mean([crossing(reference[s], target, sustained)[0][measure] for s in reference_seeds])
        out[measure] = float(mine / theirs) if theirs else math.nan
    return out


def replicates(
    reference_seeds: Sequence[int], cell_seeds: Sequence[int], resamples: int, seed: int = 0
) -> list[tuple[list[int], list[int]]]:
    """Seed lists (reference's, cell's) per bootstrap replicate: the seeds both ran
    drawn with replacement together (paired), the seeds only one ran within that
    cell; none when fewer than two seeds are shared."""
    common = sorted(set(reference_seeds) & set(cell_seeds))
    only_reference = sorted(set(reference_seeds) - set(cell_seeds))
    only_cell = sorted(set(cell_seeds) - set(reference_seeds))
    rng = np.random.default_rng(seed)

    def resample(seeds: list[int]) -> list[int]:
        return [seeds[i] for i in rng.integers(0, len(seeds), size=len(seeds))] if seeds else []

    out = []
    for _ in range(resamples if len(common) > 1 else 0):
        paired = resample(common)
        out.append((paired + resample(only_reference), paired + resample(only_cell)))
    return out


def _percentiles(point: float, draws: list[float]) -> tuple[float, float, float]:
    return (point, *(np.percentile(draws, [2.5, 97.5]).tolist() if draws else (math.nan, math.nan)))


def paired_bootstrap(
    reference: Runs, cell: Runs, sustained: bool = False, resamples: int = 2000, seed: int = 0
) -> dict[str, tuple[float, float, float]]:
    """Per measure (point estimate, 2.5%, 97.5%) over every seed of each cell (the
    target: the reference's mean final accuracy over all its seeds, as in
    results.md). A replicate resamples seeds (`replicates`) and recomputes the
    target from the reference's resampled seeds."""
    point = ratios(reference, cell, sorted(reference), sorted(cell), sustained)
    draws = [ratios(reference, cell, r, c, sustained) for r, c in replicates(reference, cell, resamples, seed)]
    return {m: _percentiles(point[m], [d[m] for d in draws]) for m in MEASURES}


def paired_ratio(
    reference: dict[int, float], cell: dict[int, float], resamples: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """(mean of the cell's per-seed values / the reference's, 2.5%, 97.5%), seeds
    resampled as in `replicates` (e.g. the tokens each spent on one distribution)."""

    def ratio(r: Sequence[int], c: Sequence[int]) -> float:
        theirs = float(np.mean([reference[s] for s in r]))
        return float(np.mean([cell[s] for s in c])) / theirs if theirs else math.nan

    draws = [ratio(r, c) for r, c in replicates(reference, cell, resamples, seed)]
    return _percentiles(ratio(sorted(reference), sorted(cell)), [d for d in draws if not math.isnan(d)])


Outcome = tuple[str, int, int]  # one held-out row of an evaluation: (distribution, samples right, samples)


def _strata(rows: Sequence[Outcome]) -> list[np.ndarray]:
    """(right, samples) arrays per distribution: rows are resampled within their
    distribution, whose number of held-out rows is fixed by design."""
    by_dist: dict[str, list[tuple[int, int]]] = {}
    for distribution, right, samples in rows:
        by_dist.setdefault(distribution, []).append((right, samples))
    return [np.asarray(v, dtype=float) for v in by_dist.values()]


def _accuracy(strata: Sequence[np.ndarray]) -> float:
    """The mean over distributions of each one's accuracy (held_out_metrics' overall figure)."""
    return float(np.mean([s[:, 0].sum() / s[:, 1].sum() for s in strata]))


def row_bootstrap(
    outcomes: dict[int, list[Outcome]], resamples: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """A cell's mean final accuracy over seeds and its 95% interval from
    resampling held-out rows (within each distribution) within each seed:
    evaluation noise alone. `outcomes[seed]` holds the last evaluation's rows."""
    rng = np.random.default_rng(seed)
    per_seed = [_strata(rows) for rows in outcomes.values() if rows]
    point = float(np.mean([_accuracy(strata) for strata in per_seed]))
    replicates = [
        np.mean([_accuracy([s[rng.integers(0, len(s), size=len(s))] for s in strata]) for strata in per_seed])
        for _ in range(resamples)
    ]
    low, high = np.percentile(replicates, [2.5, 97.5]).tolist()
    return point, low, high


def evaluation_se(rows: Sequence[Outcome]) -> float:
    """Standard error of one evaluation's accuracy (the mean over distributions
    of samples right over samples) from its rows' outcomes: each distribution's
    ratio-estimator variance, over the number of distributions squared."""
    strata = _strata(rows)
    if not strata or any(len(s) < 2 for s in strata):
        return math.nan
    variance = sum(
        len(s) / (len(s) - 1) * ((s[:, 0] - s[:, 0].sum() / s[:, 1].sum() * s[:, 1]) ** 2).sum() / s[:, 1].sum() ** 2
        for s in strata
    )
    return float(math.sqrt(variance) / len(strata))


def sampling_se(rows: Sequence[Outcome]) -> float:
    """The part of `evaluation_se` that more samples per row would shrink: the
    binomial noise within each row (unbiased, r(n - r)/(n - 1) per row). The
    rest is which rows were held out, drawn per seed and shared by every cell."""
    if not rows or any(samples < 2 for _, _, samples in rows):
        return math.nan
    strata = _strata(rows)
    variance = sum((s[:, 0] * (s[:, 1] - s[:, 0]) / (s[:, 1] - 1)).sum() / s[:, 1].sum() ** 2 for s in strata)
    return float(math.sqrt(variance) / len(strata))


EvalRows = dict[int, dict[tuple[str, int], tuple[int, int]]]  # step -> {(distribution, row id): (right, samples)}


def eval_rows(run_dir: Path, over: Sequence[str] = ()) -> EvalRows:
    """Every held-out evaluation's per-row outcomes (<run_dir>/eval/step-NNNNNN.jsonl,
    written after training step N - 1), keyed by that step as metrics.jsonl counts
    it; the before-training one (N = 0) left out; `over`: these distributions
    only. Empty for runs from before these files."""
    out: EvalRows = {}
    for path in sorted((Path(run_dir) / "eval").glob("step-*.jsonl")):
        step = int(path.stem.removeprefix("step-")) - 1
        if step < 0:
            continue
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        out[step] = {
            (r["distribution"], int(r["row_id"])): (int(r["right"]), int(r["samples"]))
            for r in rows
            if not over or r["distribution"] in over
        }
    return out


def row_bootstrap_ratios(
    reference: Runs,
    cell: Runs,
    rows: tuple[dict[int, EvalRows], dict[int, EvalRows]],
    sustained: bool = False,
    resamples: int = 2000,
    seed: int = 0,
) -> tuple[dict[str, tuple[float, float, float]], list[int]]:
    """The ratios of `ratios` with a 95% interval from evaluation noise alone:
    each replicate resamples held-out rows (within their distribution) once per
    seed, the same rows for both cells (a seed's held-out rows are the same in
    every cell), recomputes every evaluation's accuracy, the target and both
    crossings; the seeds stay fixed. Over the seeds both cells ran with stored
    outcomes (`rows`: the reference's and the cell's, per seed), which it returns."""
    seeds = sorted(s for s in set(reference) & set(cell) if rows[0].get(s) and rows[1].get(s))
    if not seeds:
        return {m: (math.nan, math.nan, math.nan) for m in MEASURES}, []
    copies = ({s: [dict(m) for m in reference[s]] for s in seeds}, {s: [dict(m) for m in cell[s]] for s in seeds})
    tables = {}  # (side, seed) -> (records to update, [evals, rows] right, [evals, rows] samples); rows in one order
    strata: dict[int, list[np.ndarray]] = {}
    for s in seeds:
        keys = sorted(rows[0][s][max(rows[0][s])])
        by_dist: dict[str, list[int]] = {}
        for i, (distribution, _) in enumerate(keys):
            by_dist.setdefault(distribution, []).append(i)
        strata[s] = [np.asarray(v) for v in by_dist.values()]
        for side in (0, 1):
            steps = sorted(rows[side][s])
            at = {m["step"]: m for m in copies[side][s]}
            table = np.asarray([[rows[side][s][step][k] for k in keys] for step in steps], dtype=float)
            tables[side, s] = ([at[step] for step in steps], table[:, :, 0], table[:, :, 1])
    rng = np.random.default_rng(seed)
    draws = {m: [] for m in MEASURES}
    for _ in range(resamples):
        for s in seeds:
            picks = [idx[rng.integers(0, len(idx), size=len(idx))] for idx in strata[s]]
            for side in (0, 1):
                records, right, samples = tables[side, s]
                per_dist = [right[:, pick].sum(axis=1) / samples[:, pick].sum(axis=1) for pick in picks]
                for record, accuracy in zip(records, np.mean(per_dist, axis=0)):
                    record["eval/accuracy"] = float(accuracy)
        for measure, value in ratios(copies[0], copies[1], seeds, seeds, sustained).items():
            draws[measure].append(value)
    point = ratios(reference, cell, seeds, seeds, sustained)
    return {m: (point[m], *np.percentile(draws[m], [2.5, 97.5]).tolist()) for m in MEASURES}, seeds


def _seeds(reference: Runs, cell: Runs) -> str:
    """The seeds behind a row: the cell's, and how many are paired with the reference's."""
    paired = len(set(reference) & set(cell))
    if paired == len(cell) == len(reference):
        return str(len(cell))
    return f"{len(cell)} ({paired} paired of {len(reference)})"


def _interval(point: float, low: float, high: float) -> str:
    """A ratio with its interval; one seed has none to show."""
    return f"{point:.0%}" + ("" if math.isnan(low) else f" [{low:.0%}, {high:.0%}]")


def _last(rows: EvalRows) -> list[Outcome]:
    """(distribution, samples right, samples) per held-out row of the last evaluation."""
    return [(d, right, n) for (d, _), (right, n) in rows[max(rows)].items()] if rows else []


def write_paired(
    out_dir: Path,
    reference_cell: str,
    runs: dict[str, Runs],
    rows: dict[str, dict[int, EvalRows]] | None = None,
    resamples: int = 2000,
) -> tuple[Path, Path]:
    """paired.csv and paired.md: each cell against `reference_cell`, intervals
    over seeds; with per-row outcomes (`rows`: cell -> seed -> eval_rows), the
    same ratios with intervals over held-out rows, and each cell's final
    accuracy with an interval over held-out rows."""
    rows = rows or {}
    table = []
    for cell, cell_runs in runs.items():
        if cell == reference_cell:
            continue
        for sustained in (False, True):
            crossing_name = "sustained" if sustained else "first"
            result = paired_bootstrap(runs[reference_cell], cell_runs, sustained, resamples)
            table.append(
                {
                    "cell": cell,
                    "crossing": crossing_name,
                    "resampled": "seeds",
                    "seeds": _seeds(runs[reference_cell], cell_runs),
                    **_flat(result),
                }
            )
            pair = (rows.get(reference_cell, {}), rows.get(cell, {}))
            by_rows, seeds = row_bootstrap_ratios(runs[reference_cell], cell_runs, pair, sustained, resamples)
            if seeds:
                table.append(
                    {
                        "cell": cell,
                        "crossing": crossing_name,
                        "resampled": "rows",
                        "seeds": ("seeds " if len(seeds) > 1 else "seed ") + ", ".join(map(str, seeds)),
                        **_flat(by_rows),
                    }
                )
    csv_path, md_path = Path(out_dir) / "paired.csv", Path(out_dir) / "paired.md"
    write_csv(csv_path, table)
    lines = [
        f"Cost to reach `{reference_cell}`'s final held-out accuracy, as a ratio to `{reference_cell}`'s own "
        "(below 1: cheaper). Point estimate [95% interval]; the interval is a paired bootstrap over seeds that "
        f"resamples `{reference_cell}`'s seeds too and recomputes the target in each replicate (seeds both ran are "
        "drawn together; seeds only one ran are drawn within it). The target is the mean over all its seeds. "
        "A run that never reaches the target counts its whole length. First: the first evaluation at or above "
        "the target; sustained: the first after which every later one stays at or above it. With few seeds the "
        "bootstrap has few distinct replicates (10 for 3 paired seeds) and its intervals cover less than 95%; "
        "wall time compares only runs that had the machine to themselves.",
        "",
        *_ratio_table([r for r in table if r["resampled"] == "seeds"]),
    ]
    by_rows = [r for r in table if r["resampled"] == "rows"]
    if by_rows:
        lines += [
            "",
            "The same ratios over the seeds both cells ran with stored per-row outcomes (listed), with a 95% "
            "interval from evaluation noise alone: each replicate resamples held-out rows within their "
            "distribution, once per seed and the same rows in both cells, and recomputes every evaluation, the "
            "target and the crossings; the seeds stay fixed.",
            "",
            *_ratio_table(by_rows),
        ]
    outcomes = {cell: {s: _last(r) for s, r in per_seed.items() if r} for cell, per_seed in rows.items()}
    with_rows = {cell: o for cell, o in outcomes.items() if o}
    if with_rows:
        lines += [
            "",
            "Final held-out accuracy, mean over seeds [95% interval from resampling held-out rows, within their "
            "distribution, within each seed: evaluation noise alone, not the seeds' spread]; one evaluation's "
            "standard error (stratified by distribution, mean over "
            "seeds) and its sampling part (the binomial noise within rows, which more samples per row would shrink; "
            "the rest is which rows a seed holds out, shared by every cell at that seed) beside the seeds' standard "
            "deviation of final accuracy: evaluation noise is small against the spread between seeds when the first "
            "is below a third of the second. Runs that predate stored per-row outcomes (eval/step-NNNNNN.jsonl) "
            "have none: a cell is read on its seeds that have them (counted) for its accuracy and s.e., and on all "
            "its seeds for their s.d.; a cell without any is not listed.",
            "",
            "| cell | seeds with rows | accuracy | one evaluation's s.e. | of it, sampling within rows | seeds' s.d. "
            "| s.e. < s.d./3 |",
            "|---|---|---|---|---|---|---|",
        ]
        single = False  # a cell evaluated with one sample per row
        for cell, o in with_rows.items():
            point, low, high = row_bootstrap(o, resamples)
            se = float(np.mean([evaluation_se(outcome) for outcome in o.values()]))
            sampling = float(np.mean([sampling_se(outcome) for outcome in o.values()]))
            finals = [final_accuracy(run) for run in runs.get(cell, {}).values()]
            sd = float(np.std(finals, ddof=1)) if len(finals) > 1 else math.nan
            small = "-" if math.isnan(sd) else ("yes" if se < sd / 3 else "no")
            spread = "-" if math.isnan(sd) else f"{sd:.3f}"
            within = "-" if math.isnan(sampling) else f"{sampling:.3f}"
            lines.append(
                f"| {cell} | {len(o)} of {len(runs.get(cell, {})) or len(o)} | {point:.3f} [{low:.3f}, {high:.3f}] "
                f"| {se:.3f} | {within} | {spread} | {small} |"
            )
            single = single or math.isnan(sampling)
        if single:
            lines += ["", "Sampling within rows -: one sample per row, which cannot tell it from the rest."]
    md_path.write_text("\n".join(lines) + "\n")
    return csv_path, md_path


def _flat(result: dict[str, tuple[float, float, float]]) -> dict[str, float]:
    return {f"{m}_{k}": v for m, r in result.items() for k, v in zip(("ratio", "low", "high"), r)}


def _ratio_table(rows: list[dict]) -> list[str]:
    lines = ["| cell | crossing | seeds | steps | generated tokens | wall time |", "|---|---|---|---|---|---|"]
    for r in rows:
        cells = [_interval(r[f"{m}_ratio"], r[f"{m}_low"], r[f"{m}_high"]) for m in MEASURES]
        lines.append(f"| {r['cell']} | {r['crossing']} | {r['seeds']} | " + " | ".join(cells) + " |")
    return lines
