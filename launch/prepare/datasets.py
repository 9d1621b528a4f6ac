"""`gradus data kk`: a verl-format Knights-and-Knaves parquet with one
`data_source` per number of people, DUMP's own set-up (configs/kk_mixture.yaml
trains on it with `split_by: data_source`).

verl's columns: `data_source`, `prompt` (chat messages), `ability`,
`reward_model: {style, ground_truth}`, `extra_info`. The ground truth is the
JSON of {name: knight|knave} (the `kk` verifier reads it), a string so puzzles
with different people share one parquet schema.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from gradus.curriculum.sources import NAMES, knights_knaves
from gradus.launch.errors import GradusError


def kk_rows(people: Sequence[int], rows: int, seed: int = 0) -> list[dict[str, Any]]:
    """`rows` distinct puzzles for each number of people, in verl's row format."""
    bad = [n for n in people if not 3 <= n <= len(NAMES)]
    if bad or not people:
        raise GradusError(
            f"--people: each must be between 3 and {len(NAMES)} (2 people never make a puzzle with one solution), "
            f"got {list(people)}"
        )
    if rows < 1:
        raise GradusError(f"--rows: must be >= 1, got {rows}")
    out = []
    for n in people:
        for index, row in enumerate(knights_knaves(rows, np.random.default_rng([seed, n]), people=n)):
            out.append(
                {
                    "data_source": f"kk_{n}ppl",
                    "prompt": [{"role": "user", "content": row["prompt"]}],
                    "ability": "logic",
                    "reward_model": {"style": "rule", "ground_truth": json.dumps(row["answer"])},
                    "extra_info": {"split": "train", "index": index, "people": n},
                }
            )
    return out


def write_kk(out: str | Path, people: Sequence[int], rows: int, seed: int = 0) -> tuple[Path, dict[str, int]]:
    """Write the parquet; returns its path and the rows per data_source."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = kk_rows(people, rows, seed)
    path = Path(out)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(table), path)
    except OSError as err:
        raise GradusError(f"--out {path}: cannot write ({err.strerror})") from None
    counts: dict[str, int] = {}
    for row in table:
        counts[row["data_source"]] = counts.get(row["data_source"], 0) + 1
    return path, counts
