"""Per-step metrics: gathered from the step's groups, written to metrics.jsonl and
wandb, and shown as one progress line."""

from __future__ import annotations

import json
import math
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

from gradus.rollout.records import Group
from gradus.trainer.batching import TrainSample

REWARD_TERMS = ("reward", "score", "correct", "format", "length", "unused_budget")


def distribution_names(metrics: dict[str, Any]) -> list[str]:
    """The distributions in one step's metrics, from their `dist/<name>/prob`
    keys; names may contain '/' themselves (verl's `openai/gsm8k`, split_by's `mix/kk_3ppl`)."""
    return [k[len("dist/") : -len("/prob")] for k in metrics if k.startswith("dist/") and k.endswith("/prob")]


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def distribution_metrics(groups: Sequence[Group], kept: Sequence[bool], report: dict) -> dict[str, float]:
    """Per distribution: what the curriculum did and what the samples achieved."""
    by_dist: dict[str, list[tuple[Group, bool]]] = defaultdict(list)
    for group, keep in zip(groups, kept):
        by_dist[group.distribution].append((group, keep))
    out: dict[str, float] = {}
    for name, prob in report["probabilities"].items():
        pairs = by_dist.get(name, [])
        samples = [s for g, _ in pairs for s in g.samples]
        prefix = f"dist/{name}/"
        out[prefix + "prob"] = prob
        out[prefix + "score"] = report["scores"][name]
        out[prefix + "groups"] = len(pairs)
        out[prefix + "samples"] = len(samples)
        out[prefix + "kept_frac"] = _mean([float(k) for _, k in pairs])
        out[prefix + "accuracy"] = _mean([s.correct for s in samples])
        out[prefix + "reward"] = _mean([s.reward for s in samples])
        out[prefix + "abs_adv"] = _mean([abs(s.advantage) for s in samples])
        out[prefix + "length"] = _mean([len(s.tokens) for s in samples])
        budgets = [g.item.budget for g, _ in pairs if g.item.budget is not None]
        if budgets:
            out[prefix + "budget"] = _mean(budgets)
        out.update(
            {prefix + key: value for key, value in report.get("rows", {}).get(name, {}).items()}
        )  # prompt-level sampler
    return out


def batch_metrics(groups: Sequence[Group]) -> dict[str, float]:
    """Reward terms, lengths and generated tokens over every group of a step."""
    samples = [s for g in groups for s in g.samples]
    out = {f"{term}/mean": _mean([getattr(s, term) for s in samples]) for term in REWARD_TERMS}
    out["accuracy"] = out.pop("correct/mean")
    out["length/tokens_mean"] = _mean([len(s.tokens) for s in samples])
    out["tokens/generated"] = sum(len(s.tokens) for s in samples)
    informative = sum(g.informative for g in groups)  # rewards not all equal: a gradient signal
    out["groups/informative_frac"] = informative / len(groups)
    out["tokens/per_informative_group"] = out["tokens/generated"] / informative if informative else float("nan")
    if samples[0].kl is not None:
        out["kl/reward_mean"] = _mean([s.kl for s in samples])
    out["verify/errors"] = sum(s.verify_error for s in samples)
    out["verify/timeouts"] = sum(s.verify_timeout for s in samples)
    extra: dict[str, list[float]] = defaultdict(
        list
    )  # a reward file's extra keys, mean over the samples that have them
    for s in samples:
        for key, value in s.reward_extra.items():
            extra[key].append(value)
    out.update({f"reward_extra/{key}": _mean(values) for key, values in extra.items()})
    return out


def pass_at_k(n: int, correct: int, k: int) -> float:
    """Unbiased pass@k from n >= k samples of which `correct` are right (Chen et
    al. 2021): 1 - C(n - c, k) / C(n, k)."""
    if n - correct < k:
        return 1.0
    return 1.0 - math.comb(n - correct, k) / math.comb(n, k)


def held_out_metrics(groups: Sequence[Group], names: Sequence[str], ks: Sequence[int] = ()) -> dict[str, float]:
    """Per distribution: accuracy (= avg@n, the mean over n samples per prompt)
    and the mean over prompts of pass@k for each k. Overall: the mean over the
    distributions that hold rows out, each counted once whatever its number of
    rows (a distribution's own `eval_size` changes its precision, not its weight)."""
    n = len(groups[0].samples)
    out: dict[str, float] = {}
    held = [name for name in names if any(g.distribution == name for g in groups)]
    for name in held:
        counts = [sum(g.correct) for g in groups if g.distribution == name]
        out[f"eval/{name}/accuracy"] = sum(counts) / (n * len(counts))
        out[f"eval/{name}/avg@{n}"] = out[f"eval/{name}/accuracy"]
        for k in ks:
            out[f"eval/{name}/pass@{k}"] = _mean([pass_at_k(n, c, k) for c in counts])
    for key in ["accuracy", f"avg@{n}", *(f"pass@{k}" for k in ks)]:
        out[f"eval/{key}"] = _mean([out[f"eval/{name}/{key}"] for name in held])
    return out


def training_batch_metrics(
    samples: Sequence[TrainSample], computed: Sequence[TrainSample], version: int
) -> dict[str, float]:
    """What the update was given: whether anything was kept, the share of samples
    that needed no forward/backward, and (when something trains) how stale the
    samples were (async: lag = the trained version - the generating one)."""
    trained = [s for s in samples if s.weight > 0]
    out = {
        "train/skipped": float(not trained),  # nothing kept: no update
        "train/uninformative": float(
            bool(trained) and not computed
        ),  # kept, all advantage 0: one dummy pass per rank, then the step
        "train/skipped_samples_frac": 1.0 - len(computed) / len(samples) if samples else 1.0,
    }
    if trained:
        lags = [s.lag for s in trained]
        out.update(
            {
                "async/trained_version": version,
                "async/generated_version_min": version - max(lags),
                "async/lag_max": max(lags),
                "async/lag_mean": sum(lags) / len(lags),
            }
        )
    return out


def close_step(
    metrics: dict[str, Any],
    groups: Sequence[Group],
    kept: Sequence[bool],
    report: dict,
    version: int,
    restarts: int,
    start: float,
) -> None:
    """Add a step's closing metrics to `metrics` (which holds time/generate and
    time/scheduler already): policy version, faults, what was generated (overall
    and per distribution), generation speed, and the step's wall time since
    `start` (a perf_counter reading)."""
    metrics.update({"policy_version": version, "faults/rollout_restarts": restarts})
    metrics.update(batch_metrics(groups))
    metrics.update(distribution_metrics(groups, kept, report))
    metrics["perf/gen_tokens_per_s"] = metrics["tokens/generated"] / max(metrics["time/generate"], 1e-9)
    metrics["time/step"] = time.perf_counter() - start
    metrics["time/scheduler_frac"] = metrics["time/scheduler"] / metrics["time/step"]


def write_eval_outcomes(run_dir: Path, step: int, groups: Sequence[Group]) -> Path:
    """<run_dir>/eval/step-NNNNNN.jsonl: each held-out row's samples right of n, for
    bootstraps over rows (launch/experiments/paired.py); NNNNNN = step + 1 (0: the
    evaluation before training)."""
    path = run_dir / "eval" / f"step-{step + 1:06d}.jsonl"
    path.parent.mkdir(exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in eval_outcomes(groups)))
    return path


def eval_outcomes(groups: Sequence[Group]) -> list[dict[str, Any]]:
    """Each held-out row's record: distribution, row id, samples right of n."""
    return [
        {"distribution": g.distribution, "row_id": g.item.row_id, "right": sum(g.correct), "samples": len(g.samples)}
        for g in groups
    ]


def train_metrics(ranks: Sequence[dict]) -> dict[str, float]:
    """Trainer statistics summed over ranks (per-token ones divided by tokens)."""
    total = {k: sum(r[k] for r in ranks) for k in ranks[0] if isinstance(ranks[0][k], (int, float))}
    total["iw_max"] = max(r["iw_max"] for r in ranks)
    tokens = max(total["tokens"], 1.0)
    out = {
        "train/loss": total["loss"],
        "train/clip_frac": total["clip_tokens"] / tokens,
        "train/entropy": total["entropy_sum"] / tokens,
        "train/tokens": total["tokens"],
        "train/micro_batches": ranks[0]["micro_batches"],
        "train/grad_norm": ranks[0]["grad_norm"],
        "train/lr": ranks[0]["lr"],
        "train/skipped_updates": total["skipped_updates"],
        "train/rollout_logprob_gap": total["rollout_gap_sum"] / max(total["rollout_gap_tokens"], 1.0),
    }
    if total["stale_tokens"]:
        out["train/stale_tokens"] = total["stale_tokens"]
    if total["iw_tokens"]:  # tokens weighted by pi_proximal / pi_behaviour (stale ones, or all with importance.on=all)
        out["train/importance_tokens"] = total["iw_tokens"]
        out["train/importance_weight_mean"] = total["iw_sum"] / total["iw_tokens"]
        out["train/importance_weight_max"] = total["iw_max"]
        out["train/importance_capped_frac"] = total["iw_capped"] / total["iw_tokens"]
    if total["kl"]:
        out["train/kl"] = total["kl"]
    return out


class MetricsLogger:
    """metrics.jsonl (always) + wandb (offline by default) + a progress line."""

    def __init__(
        self, run_dir: Path, wandb_cfg: Any, config: dict, total_steps: int, wandb_id: str | None = None
    ) -> None:
        self.path = run_dir / "metrics.jsonl"
        self.last_eval: dict[str, float] = {}  # the newest held-out evaluation logged
        self.total_steps = total_steps
        self.wandb = None
        if wandb_cfg.mode != "disabled":
            import wandb

            if wandb_cfg.mode == "offline":
                # Offline means no network. A run's mode alone leaves wandb's process-wide
                # settings online, and its usage telemetry then resolves and probes
                # api.wandb.ai from background threads, at the latest at exit.
                wandb.setup(settings=wandb.Settings(mode="offline"))
            self.wandb = wandb.init(
                project=wandb_cfg.project,
                mode=wandb_cfg.mode,
                dir=str(run_dir),
                config=config,
                name=run_dir.name,
                id=wandb_id,
                resume="allow" if wandb_id else None,
            )

    @property
    def run_id(self) -> str | None:
        return self.wandb.id if self.wandb is not None else None

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if "eval/accuracy" in metrics:
            self.last_eval = {k: v for k, v in metrics.items() if k.startswith("eval/")}
        record = {
            "step": step,
            **{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()},
        }
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.wandb is not None:
            self.wandb.log(metrics, step=step)
        print(self.progress_line(step, metrics), file=sys.stderr, flush=True)

    def progress_line(self, step: int, m: dict[str, Any]) -> str:
        accs = " ".join(
            f"{name}={m[f'dist/{name}/accuracy']:.2f}@{m[f'dist/{name}/prob']:.2f}"
            for name in distribution_names(m)
            if not math.isnan(m.get(f"dist/{name}/accuracy", math.nan))
        )
        failures = " | ".join(
            f"{m[key]:.0f} verifier {what}"
            for key, what in (("verify/errors", "errors"), ("verify/timeouts", "timeouts"))
            if m.get(key)
        )
        return (
            f"step {step + 1}/{self.total_steps} | reward {m['reward/mean']:.3f} | acc {m['accuracy']:.2f} "
            + (f"| {failures} " if failures else "")
            + f"[{accs}] (acc@prob) | {m['perf/gen_tokens_per_s']:.0f} tok/s | {m['time/step']:.1f}s"
        )

    def close(self) -> None:
        if self.wandb is not None:
            import wandb

            self.wandb.finish()
            wandb.teardown()  # stops wandb's service process and threads: nothing of it outlives the run
