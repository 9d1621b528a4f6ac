"""`gradus eval RUN_DIR|MODEL_DIR`: held-out accuracy (avg@n) and pass@k per distribution with vLLM.

A run directory is evaluated with its own config (the same held-out rows its
training never saw, drawn from its seed) and its final policy (<run_dir>/final);
a model directory or embedded model name with --config (default: the demo's).
No Ray: one vLLM engine in this process.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from gradus.launch.config.load import load_config
from gradus.launch.config.schema import ClusterConfig, Config
from gradus.launch.run.assemble import eval_items, local_scheduler
from gradus.launch.errors import GradusError
from gradus.launch.run.metrics import eval_outcomes, held_out_metrics
from gradus.launch.run.resources import engine_settings, model_dtype, plan
from gradus.launch.prepare.model_dirs import resolve_model
from gradus.rollout.worker import engine_env


def target_of(target: str, config: str | None, overrides: list[str]) -> tuple[Config, Path, Path | None]:
    """(config, model directory, run directory or None) for an eval target."""
    run_dir = Path(target)
    if (run_dir / "config.yaml").is_file() and (run_dir / "metrics.jsonl").is_file():
        cfg = load_config(config or run_dir / "config.yaml", overrides)
        if not (run_dir / "final" / "config.json").is_file():
            raise GradusError(
                f"{run_dir}: no final policy in {run_dir / 'final'} "
                "(written when a run finishes with run.save_final=true); "
                f"finish it with `gradus train {run_dir / 'config.yaml'} --resume`"
            )
        return cfg, run_dir / "final", run_dir
    return load_config(config or "configs/default.yaml", overrides), resolve_model(target), None


def evaluate(cfg: Config, model: Path) -> dict[str, Any]:
    """Per distribution and overall on the held-out rows: accuracy (avg@n over
    eval.samples samples at eval.temperature) and pass@k for each of eval.k;
    `outcomes`: each row's samples right of n, as a run's eval/step-*.jsonl."""
    rows = local_scheduler(cfg).eval_rows()
    os.environ.update(engine_env(cfg.rollout.threads, cfg.rollout.kv_cache_gib))
    from gradus.rollout.worker import RolloutWorker

    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"  # one engine in this process, on what it has
    standalone = dataclasses.replace(cfg, cluster=ClusterConfig())  # no Ray here: its own GPUs, no colocation
    engine = engine_settings(standalone, device, plan(standalone, device))
    engine.pop("distributed_executor_backend", None)
    worker = RolloutWorker(
        str(model),
        cfg.run.seed,
        dataclasses.asdict(cfg.reward),
        dtype=model_dtype(cfg, device, device != "cuda" or torch.cuda.is_bf16_supported()),
        **engine,
    )
    groups, seconds = worker.generate(
        eval_items(rows, cfg.run.seed),
        n=cfg.eval.samples,
        max_tokens=cfg.rollout.max_tokens,
        temperature=cfg.eval.temperature,
        system_prompt=cfg.data.system_prompt,
    )  # the same rows and seeds as the run's own evaluations
    metrics = held_out_metrics(groups, list(rows), cfg.eval.k)
    result: dict[str, Any] = {
        "model": str(model),
        "seconds": seconds,
        "samples": cfg.eval.samples,
        "rows": {name: len(rows[name]) for name in rows},
        "outcomes": eval_outcomes(groups),
    }
    for name in [*(n for n in rows if rows[n]), "all"]:  # a distribution holding out no rows has no figure
        prefix = "eval/" if name == "all" else f"eval/{name}/"
        result.setdefault("accuracy", {})[name] = metrics[prefix + "accuracy"]
        for k in cfg.eval.k:
            result.setdefault(f"pass@{k}", {})[name] = metrics[prefix + f"pass@{k}"]
    return result


def run_eval(
    target: str,
    config: str | None = None,
    overrides: list[str] = (),
    samples: int | None = None,
    temperature: float | None = None,
    out: str | None = None,
) -> dict[str, Any]:
    flags = [
        f"eval.{key}={value}"
        for key, value in (("samples", samples), ("temperature", temperature))
        if value is not None
    ]
    cfg, model, run_dir = target_of(
        target, config, [*overrides, *flags]
    )  # validated like a run's: n > 1 needs temperature > 0
    result = evaluate(cfg, model)
    path = Path(out) if out else (run_dir / "eval.json" if run_dir else None)
    if path is not None:
        path.write_text(json.dumps(result, indent=1))
    return result
