"""vLLM-CPU rollout (gradus's RolloutWorker) vs Hugging Face `generate` on the
same prompts, samples per prompt, max tokens and sampling temperature.

    python benchmarks/rollout_vs_generate.py [--model smollm2-135m-instruct] [--prompts 8] [--group 4] \
[--max-tokens 64] [--repeat 3]

Tokens/s = generated completion tokens / seconds (best of --repeat, after one
warm-up call each). HF runs all prompts x samples as one left-padded batch
with its KV cache; both in float32 with the same torch threads.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    from gradus.curriculum.items import Item
    from gradus.curriculum.sources import SOURCES
    from gradus.launch.prepare.model_dirs import resolve_model
    from gradus.rollout.worker import engine_env

    model = str(resolve_model(args.model))
    rows = SOURCES.get("arithmetic")(args.prompts, np.random.default_rng(0), digits=2)
    items = [
        Item(distribution="add2", prompt=r["prompt"], answer=r["answer"], verifier="numeric", seed=i)
        for i, r in enumerate(rows)
    ]

    os.environ.update(engine_env(args.threads, 1.0))
    from gradus.rollout.worker import RolloutWorker

    worker = RolloutWorker(model, dtype="float32", max_model_len=512, enforce_eager=True)
    vllm_best = (0.0, float("inf"))
    for i in range(args.repeat + 1):
        groups, seconds = worker.generate(items, n=args.group, max_tokens=args.max_tokens)
        tokens = sum(len(s.tokens) for g in groups for s in g.samples)
        if i and seconds < vllm_best[1]:
            vllm_best = (tokens, seconds)
    prompt_ids = [g.prompt_ids for g in groups]
    del worker

    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(model)
    hf = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
    width = max(len(p) for p in prompt_ids)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompt_ids])
    attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompt_ids])
    hf_best = (0.0, float("inf"))
    for i in range(args.repeat + 1):
        start = time.perf_counter()
        with torch.no_grad():
            out_ids = hf.generate(
                input_ids=input_ids,
                attention_mask=attention,
                do_sample=True,
                temperature=1.0,
                top_p=1.0,
                max_new_tokens=args.max_tokens,
                num_return_sequences=args.group,
                pad_token_id=pad,
            )
        seconds = time.perf_counter() - start
        completions = out_ids[:, width:]
        ended = (completions == tokenizer.eos_token_id).int()
        lengths = torch.where(ended.any(1), ended.argmax(1) + 1, torch.full((len(completions),), completions.shape[1]))
        if i and seconds < hf_best[1]:
            hf_best = (int(lengths.sum()), seconds)

    print(
        f"{args.prompts} prompts x {args.group} samples, <= {args.max_tokens} tokens, {args.threads} threads, "
        f"best of {args.repeat}"
    )
    print(f"{'':<14}{'tokens':>8}{'seconds':>9}{'tokens/s':>10}")
    for name, (tokens, seconds) in (("vLLM-CPU", vllm_best), ("HF generate", hf_best)):
        print(f"{name:<14}{tokens:>8}{seconds:>9.2f}{tokens / seconds:>10.1f}")
    print(f"vLLM / HF tokens/s: {(vllm_best[0] / vllm_best[1]) / (hf_best[0] / hf_best[1]):.1f}x")


if __name__ == "__main__":
    main()
