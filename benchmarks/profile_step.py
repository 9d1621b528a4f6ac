"""Where a GRPO update's time goes, on the demo model without Ray or DeepSpeed:
one batch shaped like the demo's (prompts x group samples through the chat
template, completions of up to --max-tokens tokens), timed piece by piece.

    python benchmarks/profile_step.py [--model smollm2-135m-instruct] [--prompts 8] [--group 4] [--max-tokens 64] \
[--informative 0.5] [--rank]

Rows: the forward alone (per-sample rows vs shared prompts), the entropy's
softmax, forward + loss + backward for the plain path, with uninformative
samples skipped, with shared prompts, and both; an AdamW step; and the
reference model's no-grad forward (what kl_coef > 0 adds). `--informative` is
the fraction of groups whose rewards differ (the rest get advantage 0).
`--rank` adds the default update of the same batch inside a real trainer rank
(a Ray actor with a DeepSpeed engine and the default trainer settings), which
shows what the process around the model costs (allocator, engine, actor).
Median of --repeat runs after a warm-up.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from collections import defaultdict
from typing import Callable

import numpy as np
import torch


def batch(tokenizer, prompts: int, group: int, max_tokens: int, informative: float, seed: int = 0) -> list:
    from gradus.curriculum.sources import SOURCES
    from gradus.trainer.batching import TrainSample

    rng = np.random.default_rng(seed)
    rows = SOURCES.get("arithmetic")(prompts, rng, digits=2)
    samples = []
    for g, row in enumerate(rows):
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": row["prompt"]}], add_generation_prompt=True, tokenize=True
        )
        ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
        useful = g < round(informative * prompts)
        for _ in range(group):
            n = int(rng.integers(max_tokens // 2, max_tokens + 1))
            samples.append(
                TrainSample(
                    ids, rng.integers(100, 20000, size=n).tolist(), [-2.0] * n, float(rng.normal()) if useful else 0.0
                )
            )
    return samples


def timed(fn: Callable[[], object], repeat: int) -> float:
    fn()
    seconds = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def in_rank(path: str, samples: list, args: argparse.Namespace) -> Callable[[], None]:
    """One update of `samples` per call, in a one-rank TrainerGroup on a local Ray."""
    import ray

    from gradus.launch.run.groups import TrainerGroup
    from gradus.trainer.config import TrainerConfig

    ray.init(num_cpus=args.threads, include_dashboard=False, log_to_driver=False)
    group = TrainerGroup(1, args.threads)
    cfg = dataclasses.replace(TrainerConfig(), max_tokens_per_micro_batch=args.micro_tokens)
    group.setup(path, "float32", cfg, seed=0, total_steps=100, norm_len=args.max_tokens)
    return lambda: group.train(samples, 1, args.micro_tokens)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--informative", type=float, default=0.5)
    parser.add_argument("--micro-tokens", type=int, default=1024, help="trainer.max_tokens_per_micro_batch")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--rank", action="store_true", help="also time the update inside a trainer rank (local Ray, DeepSpeed)"
    )
    args = parser.parse_args()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gradus.trainer.config import TrainerConfig
    from gradus.launch.prepare.model_dirs import resolve_model
    from gradus.trainer.batching import assign
    from gradus.trainer.grpo import loss_options
    from gradus.trainer.loss import completion_logprobs, micro_batch_loss

    torch.set_num_threads(args.threads)
    path = str(resolve_model(args.model))
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    samples = batch(AutoTokenizer.from_pretrained(path), args.prompts, args.group, args.max_tokens, args.informative)
    tokens = sum(len(s.tokens) for s in samples)
    opts = loss_options(TrainerConfig(), norm_len=args.max_tokens)

    def update(skip: bool, share: bool) -> Callable[[], None]:
        def run() -> None:
            model.zero_grad()
            stats: dict[str, float] = defaultdict(float)
            (part,) = assign(samples, 1, args.micro_tokens, skip, False, share)
            for micro in part.micro_batches:
                micro_batch_loss(model, micro, opts, share, part.num_tokens, part.num_seqs, True, stats).backward()

        return run

    def forward(share: bool, entropy: bool) -> Callable[[], None]:
        def run() -> None:
            (part,) = assign(samples, 1, args.micro_tokens, False, False, share)
            with torch.no_grad():
                for micro in part.micro_batches:
                    completion_logprobs(model, micro, with_entropy=entropy, share_prompts=share)

        return run

    optimizer = torch.optim.AdamW(model.parameters(), lr=0.0, fused=True)  # as the trainer ranks
    update(False, False)()
    rows = [
        ("forward, per-sample rows (no grad; = reference model's KL forward)", forward(False, False)),
        ("forward, per-sample rows + entropy", forward(False, True)),
        ("forward, shared prompts (no grad)", forward(True, False)),
        ("update: plain (forward + loss + backward)", update(False, False)),
        ("update: skip uninformative", update(True, False)),
        ("update: shared prompts", update(False, True)),
        ("update: skip + shared prompts (default)", update(True, True)),
        ("AdamW step (135M params)", optimizer.step),
    ]
    if args.rank:
        rows.append(("update in a trainer rank (Ray actor, DeepSpeed, optimiser step)", in_rank(path, samples, args)))
    print(
        f"{args.prompts} prompts x {args.group} samples, {tokens} completion tokens, "
        f"prompt {len(samples[0].prompt_ids)} tokens, "
        f"{args.informative:.0%} informative groups, {args.threads} threads; median of {args.repeat}"
    )
    plain = None
    for name, fn in rows:
        seconds = timed(fn, args.repeat)
        plain = seconds if name.startswith("update: plain") else plain
        ratio = f"{plain / seconds:5.2f}x" if plain and name.startswith("update") else ""
        print(f"{name:<68}{seconds:8.2f} s  {1000 * seconds / tokens:7.2f} ms/token  {ratio}")


if __name__ == "__main__":
    main()
