"""Where each cell spent its generation: per distribution, the share of
generated tokens and samples, and the step by which the curriculum's draw
probability for it fell below 1/(2K) (K distributions) in every seed. The
question for a source the model cannot learn (configs/ablation_noisy.yaml):
uniform keeps paying 1/K of its generation there; a curriculum should stop.
Written as spend.md and spend.csv beside results.md."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

from gradus.launch.experiments.results import distributions, write_csv


def shares(run: Sequence[dict], name: str) -> tuple[float, float]:
    """(share of generated tokens, share of generated samples) that went to
    distribution `name` over a run (a step's tokens there: its samples times
    their mean length)."""
    tokens = sum(  # a step that drew none there logs a nan length
        m[f"dist/{name}/samples"] * m[f"dist/{name}/length"] for m in run if m.get(f"dist/{name}/samples")
    )
    samples = sum(m.get(f"dist/{name}/samples", 0) for m in run)
    all_tokens = sum(m.get("tokens/generated", 0) for m in run)
    all_samples = sum(m.get(f"dist/{d}/samples", 0) for d in distributions(run) for m in run)
    return (tokens / all_tokens if all_tokens else math.nan, samples / all_samples if all_samples else math.nan)


def first_below(run: Sequence[dict], name: str, level: float, sustained: bool = False) -> int | None:
    """The first step whose draw probability for `name` is below `level`
    (`sustained`: and stays below at every later step); None if none is. The
    draw probability is the curriculum's, scaled by the rows a prompt sampler
    still offers (`draw_prob`; `prob` in runs from before it was logged)."""
    probs = [
        (m["step"], m.get(f"dist/{name}/draw_prob", m.get(f"dist/{name}/prob")))
        for m in run
        if f"dist/{name}/prob" in m
    ]
    for i, (step, prob) in enumerate(probs):
        if prob < level and (not sustained or all(p < level for _, p in probs[i:])):
            return step
    return None


def _by_every_seed(steps: list[int | None]) -> str:
    """The step by which every seed got there ("never" if one did not), and each seed's."""
    each = ", ".join("-" if s is None else str(s) for s in steps)
    return f"never ({each})" if any(s is None for s in steps) else f"{max(steps)} ({each})"


def spend_rows(cells: dict[str, list[list[dict]]]) -> list[dict]:
    """One row per cell and distribution: mean ± std over seeds of the shares,
    and the steps below 1/(2K), first and sustained."""
    rows = []
    for cell, runs in cells.items():
        names = distributions([m for run in runs for m in run])
        level = 1 / (2 * len(names))
        for name in names:
            tokens, samples = zip(*(shares(run, name) for run in runs))
            rows.append(
                {
                    "cell": cell,
                    "distribution": name,
                    "seeds": len(runs),
                    "token_share_mean": float(np.mean(tokens)),
                    "token_share_std": float(np.std(tokens, ddof=1)) if len(runs) > 1 else 0.0,
                    "sample_share_mean": float(np.mean(samples)),
                    "level": level,
                    "below": _by_every_seed([first_below(run, name, level) for run in runs]),
                    "below_sustained": _by_every_seed([first_below(run, name, level, True) for run in runs]),
                }
            )
    return rows


def write_spend(out_dir: Path, cells: dict[str, list[list[dict]]]) -> tuple[Path, Path]:
    """spend.csv and spend.md."""
    rows = spend_rows(cells)
    csv_path, md_path = Path(out_dir) / "spend.csv", Path(out_dir) / "spend.md"
    write_csv(csv_path, rows)
    lines = [
        "Where each cell's generation went, per distribution (mean ± std over seeds), and the training step by "
        "which the curriculum's draw probability for it fell below 1/(2K) in every seed (each seed's first such "
        "step in brackets; sustained: below at every later step too; never: some seed did not).",
        "",
        "| cell | distribution | seeds | share of generated tokens | share of generated samples | "
        "draw prob < 1/(2K): by step | sustained |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['cell']} | {r['distribution']} | {r['seeds']} | {r['token_share_mean']:.3f} ± "
            f"{r['token_share_std']:.3f} | {r['sample_share_mean']:.3f} | {r['below']} | {r['below_sustained']} |"
        )
    md_path.write_text("\n".join(lines) + "\n")
    return csv_path, md_path
