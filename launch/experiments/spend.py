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

from gradus.launch.experiments.paired import paired_ratio
from gradus.launch.experiments.results import distributions, write_csv


def tokens_on(run: Sequence[dict], name: str) -> float:
    """Generated tokens that went to distribution `name` over a run (a step's:
    its samples there times their mean length; a step that drew none there logs
    a nan length)."""
    return float(
        sum(m[f"dist/{name}/samples"] * m[f"dist/{name}/length"] for m in run if m.get(f"dist/{name}/samples"))
    )


def shares(run: Sequence[dict], name: str) -> tuple[float, float]:
    """(share of generated tokens, share of generated samples) that went to
    distribution `name` over a run."""
    samples = sum(m.get(f"dist/{name}/samples", 0) for m in run)
    all_tokens = sum(m.get("tokens/generated", 0) for m in run)
    all_samples = sum(m.get(f"dist/{d}/samples", 0) for d in distributions(run) for m in run)
    return (
        tokens_on(run, name) / all_tokens if all_tokens else math.nan,
        samples / all_samples if all_samples else math.nan,
    )


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


def spend_rows(
    cells: dict[str, list[list[dict]]], seeds: dict[str, list[int]] | None = None, reference: str = ""
) -> list[dict]:
    """One row per cell and distribution: mean ± std over seeds of the shares,
    the steps below 1/(2K), first and sustained, and with a `reference` cell the
    tokens spent there as a ratio to the reference's, with a paired bootstrap over
    seeds (`seeds`: cell -> each run's seed; default 0, 1, ...)."""
    seeds = seeds or {cell: list(range(len(runs))) for cell, runs in cells.items()}
    rows = []
    for cell, runs in cells.items():
        names = distributions([m for run in runs for m in run])
        level = 1 / (2 * len(names))
        for name in names:
            tokens, samples = zip(*(shares(run, name) for run in runs))
            row = {
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
            if reference in cells:  # the reference's own row: nan (every row has the same CSV columns)
                spent = {c: {s: tokens_on(run, name) for s, run in zip(seeds[c], cells[c])} for c in (reference, cell)}
                ratio = (math.nan,) * 3 if cell == reference else paired_ratio(spent[reference], spent[cell])
                row.update(zip(("tokens_vs_reference", "tokens_vs_reference_low", "tokens_vs_reference_high"), ratio))
            rows.append(row)
    return rows


def write_spend(
    out_dir: Path, cells: dict[str, list[list[dict]]], seeds: dict[str, list[int]] | None = None, reference: str = ""
) -> tuple[Path, Path]:
    """spend.csv and spend.md."""
    rows = spend_rows(cells, seeds, reference)
    csv_path, md_path = Path(out_dir) / "spend.csv", Path(out_dir) / "spend.md"
    write_csv(csv_path, rows)
    compared = reference in cells
    lines = [
        "Where each cell's generation went, per distribution (mean ± s.d. over seeds), and the training step by "
        "which the curriculum's draw probability for it fell below 1/(2K) in every seed (each seed's first such "
        "step in brackets; sustained: below at every later step too; never: some seed did not)."
        + (
            f" Tokens there as a ratio to `{reference}`'s (mean over seeds), [95% interval from a paired bootstrap "
            "over seeds: seeds both ran drawn together]."
            if compared
            else ""
        ),
        "",
        "| cell | distribution | seeds | share of generated tokens | share of generated samples | "
        "draw prob < 1/(2K): by step | sustained |" + (f" tokens there / {reference}'s |" if compared else ""),
        "|---|---|---|---|---|---|---|" + ("---|" if compared else ""),
    ]
    for r in rows:
        ratio = ""
        if compared:
            ratio = (
                " - |"
                if r["cell"] == reference
                else (
                    f" {r['tokens_vs_reference']:.2f} [{r['tokens_vs_reference_low']:.2f}, "
                    f"{r['tokens_vs_reference_high']:.2f}] |"
                )
            )
        lines.append(
            f"| {r['cell']} | {r['distribution']} | {r['seeds']} | {r['token_share_mean']:.3f} ± "
            f"{r['token_share_std']:.3f} | {r['sample_share_mean']:.3f} | {r['below']} | {r['below_sustained']} |"
            + ratio
        )
    md_path.write_text("\n".join(lines) + "\n")
    return csv_path, md_path
