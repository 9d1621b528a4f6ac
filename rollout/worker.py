"""RolloutWorker: a vLLM engine that generates `group_size` samples per prompt,
scores them, and takes new weights in place (no restart, no disk)."""

from __future__ import annotations

import math
import time
from typing import Any, Iterable, Sequence

from gradus.curriculum.items import Item, Prompt
from gradus.rollout.records import Group, Sample
from gradus.rollout.rewards import RewardWeights, score

# vLLM must read these before it is imported in the actor process.
ENGINE_ENV = {
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",  # engine core in the actor, so collective_rpc takes a plain function
    "VLLM_CPU_OMP_THREADS_BIND": "nobind",
    "TOKENIZERS_PARALLELISM": "false",
    # vLLM 0.32's AOT-compiled model fails to load from its cache ("no attribute 'finalize_loading'")
    # and is compiled again at every start (~90 s on 2 CPU cores); its inductor cache loads (~20 s).
    "VLLM_USE_AOT_COMPILE": "0",
}


def engine_env(threads: int, kv_cache_gib: float) -> dict[str, str]:
    return {**ENGINE_ENV, "OMP_NUM_THREADS": str(threads), "VLLM_CPU_KVCACHE_SPACE": str(max(1, round(kv_cache_gib)))}


def _reload(worker: Any, weights: Iterable[tuple[str, Any]]) -> None:
    """Runs inside vLLM's worker: HF-named tensors in, vLLM fuses q/k/v itself.
    The worker's own reload_weights sets vLLM's config context (its model
    runner's, called directly, fails in 0.32 outside that context on CUDA)."""
    worker.reload_weights(weights_iterator=iter(weights))


def _engine_param_sums(worker: Any) -> dict[str, float]:
    """HF-named checksums of the weights the engine computes with.

    On CPU vLLM packs linear weights into kernels and leaves empty parameters,
    so each packed linear is read back by applying it to the identity matrix
    (exact in float32); fused q/k/v and gate/up are split by their output sizes.
    """
    import torch

    model = worker.model_runner.model
    packed = getattr(model, "packed_modules_mapping", {})
    tensors: dict[str, torch.Tensor] = {}
    for prefix, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            if p.numel():
                tensors[f"{prefix}.{pname}"] = p.detach()
            elif pname == "weight" and hasattr(module, "cpu_linear"):
                eye = torch.eye(module.input_size, dtype=module.params_dtype)
                tensors[f"{prefix}.weight"] = module.cpu_linear(eye, module.weight, None).t()
    sums = {}
    for name, t in tensors.items():
        prefix, leaf, pname = name.rsplit(".", 2) if name.count(".") >= 2 else ("", *name.split("."))
        if leaf in packed and len(packed[leaf]) > 1:
            module = model.get_submodule(f"{prefix}.{leaf}")
            parts = torch.split(t, list(module.output_sizes), dim=0)
            for sub, part in zip(packed[leaf], parts):
                sums[f"{prefix}.{sub}.{pname}"] = float(part.double().sum())
        else:
            sums[name] = float(t.double().sum())
    return sums


def chat_messages(prompt: Prompt, system_prompt: str = "") -> list[dict]:
    """A prompt as chat messages: a string becomes one user message; a message
    list is kept as given. `system_prompt` is added only if there is no system message."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [dict(m) for m in prompt]
    if system_prompt and not any(m["role"] == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": system_prompt})
    return messages


def encode_prompt(tokenizer: Any, prompt: Prompt, system_prompt: str = "") -> list[int]:
    """The token ids vLLM gets: the tokenizer's chat template over chat_messages."""
    ids = tokenizer.apply_chat_template(chat_messages(prompt, system_prompt), add_generation_prompt=True, tokenize=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


SEEDED_PROMPT_TOKENS = 4096  # vLLM's default max_num_batched_tokens


def seeded_chunks(prompt_ids: Sequence[Sequence[int]], seeded: bool, n: int = 1) -> list[list[int]]:
    """Item indices per generate call. vLLM-CPU crashes on per-request seeds once
    a call's prompts are prefilled in chunks (more prompt tokens, n samples
    each, than max_num_batched_tokens: "CPU Generator does not use offset"), so seeded calls are cut
    to stay under it. Each request's samples depend only on its own seed, so
    the cut changes no output."""
    if not seeded:
        return [list(range(len(prompt_ids)))]
    chunks: list[list[int]] = [[]]
    used = 0
    for i, ids in enumerate(prompt_ids):
        if chunks[-1] and used + n * len(ids) > SEEDED_PROMPT_TOKENS:
            chunks.append([])
            used = 0
        chunks[-1].append(i)
        used += n * len(ids)
    return chunks


class RolloutWorker:
    def __init__(self, model_path: str, seed: int = 0, reward: dict | None = None, **engine_args: Any) -> None:
        """`engine_args` go to vllm.LLM as they are (dtype, max_model_len, enforce_eager,
        tensor_parallel_size, gpu_memory_utilization, enable_sleep_mode, ...)."""
        from vllm import LLM

        self.llm = LLM(model=model_path, seed=seed, **engine_args)
        self.tokenizer = self.llm.get_tokenizer()
        from vllm.platforms import current_platform

        self.chunk_seeded = current_platform.is_cpu()  # the seeded chunked-prefill crash is vLLM-CPU's only
        self.weights = RewardWeights(**(reward or {}))
        self.version = 0

    def ready(self) -> bool:
        return True

    def encode(self, prompt: Prompt, system_prompt: str = "") -> list[int]:
        return encode_prompt(self.tokenizer, prompt, system_prompt)

    def generate(
        self,
        items: Sequence[Item],
        n: int,
        max_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        system_prompt: str = "",
        budget_slack: float = 0.0,
    ) -> tuple[list[Group], float]:
        """One group per item (its samples' tokens, texts and reward terms) and the
        seconds it took. With budget_slack > 0 an item's budget also caps its tokens
        (budget * slack)."""
        from vllm import SamplingParams, TokensPrompt

        start = time.perf_counter()
        prompt_ids = [self.encode(item.prompt, system_prompt) for item in items]
        caps = [
            min(max_tokens, math.ceil(item.budget * budget_slack)) if budget_slack > 0 and item.budget else max_tokens
            for item in items
        ]
        params = [
            SamplingParams(
                n=item.n or n,
                temperature=temperature,
                top_p=top_p,
                max_tokens=cap,
                logprobs=0,
                seed=item.seed if temperature > 0 else None,
            )
            for item, cap in zip(items, caps)
        ]
        prompts = [TokensPrompt(prompt_token_ids=ids) for ids in prompt_ids]
        outputs = []
        seeded = self.chunk_seeded and any(p.seed is not None for p in params)
        for chunk in seeded_chunks(prompt_ids, seeded, max((item.n or n for item in items), default=n)):
            outputs += self.llm.generate([prompts[i] for i in chunk], [params[i] for i in chunk], use_tqdm=False)
        groups = []
        for item, ids, out in zip(items, prompt_ids, outputs):
            samples = []
            for completion in out.outputs:
                tokens = list(completion.token_ids)
                terms = score(
                    item.verifier,
                    completion.text,
                    item.answer,
                    len(tokens),
                    item.budget,
                    self.weights,
                    row=item,
                    threshold=item.verifier_threshold,
                )
                logprobs = [lp[t].logprob for lp, t in zip(completion.logprobs or [], tokens)]
                samples.append(
                    Sample(
                        tokens=tokens, text=completion.text, logprobs=logprobs, finish=completion.finish_reason, **terms
                    )
                )
            groups.append(Group(item=item, prompt_ids=ids, samples=samples, version=self.version))
        return groups, time.perf_counter() - start

    def load_weights(self, named: Iterable[tuple[str, Any]], version: int) -> None:
        """HF-named tensors (a list, or a generator that receives them as they
        are loaded) into the running engine, in place; cached prefixes computed
        with the old weights are dropped."""
        self.llm.collective_rpc(_reload, args=(named,))
        self.llm.reset_prefix_cache()
        self.version = version

    def sleep(self, level: int = 2) -> None:
        """Colocated on a GPU: free KV cache and weights' memory for the update.
        Level 2 discards the weights instead of copying them to host memory: the
        update's new weights overwrite them right after wake_up anyway."""
        self.llm.sleep(level=level)

    def wake_up(self) -> None:
        self.llm.wake_up()

    def param_sums(self) -> dict[str, float]:
        return self.llm.collective_rpc(_engine_param_sums)[0]
