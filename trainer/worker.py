"""TrainerWorker: one data-parallel rank of a DeepSpeed engine doing the GRPO update.

Ranks are Ray actors that form one torch.distributed group (gloo on CPU, NCCL
on CUDA). Each rank trains on its shard; losses are scaled so that the summed
gradient equals the gradient of the global-batch loss, whatever the number of
ranks and micro-batches.
"""
from __future__ import annotations

import os
import time
from typing import Any, Sequence

import numpy as np
import torch

from trainer.grpo import aggregate, token_policy_loss


def _pad(rows: Sequence[Sequence[int]], value: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([list(r) + [value] * (width - len(r)) for r in rows], dtype=torch.long)


def completion_logprobs(model: torch.nn.Module, samples: Sequence[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs [B, T] of each sample's completion tokens and their mask [B, T]
    (T = longest sequence - 1). The vocabulary projection, the costliest layer of
    a small model, runs only where a completion token is predicted."""
    sequences = [s["prompt_ids"] + s["tokens"] for s in samples]
    input_ids = _pad(sequences, 0)  # [B, L]
    attention = _pad([[1] * len(q) for q in sequences], 0)
    predicts = torch.zeros(input_ids.shape[0], input_ids.shape[1] - 1, dtype=torch.bool)  # [B, L-1]
    for i, s in enumerate(samples):
        start = len(s["prompt_ids"]) - 1  # the position that predicts the first completion token
        predicts[i, start : start + len(s["tokens"])] = True
    hidden = model.base_model(input_ids=input_ids, attention_mask=attention, use_cache=False).last_hidden_state  # [B, L, H]
    logits = model.get_output_embeddings()(hidden[:, :-1][predicts]).float()  # [N, V]
    targets = input_ids[:, 1:][predicts]  # [N]
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)  # [N]
    logp = torch.zeros(predicts.shape, dtype=picked.dtype).masked_scatter(predicts, picked)
    weights = torch.tensor([float(s.get("weight", 1.0) > 0) for s in samples]).unsqueeze(-1)
    return logp, predicts.float() * weights


class TrainerWorker:
    def __init__(self, rank: int, world_size: int, master_addr: str, master_port: int, threads: int = 2) -> None:
        os.environ.update(
            RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK="0", LOCAL_WORLD_SIZE="1",
            MASTER_ADDR=master_addr, MASTER_PORT=str(master_port),
        )
        torch.set_num_threads(threads)
        self.rank, self.world_size = rank, world_size

    def setup(self, model_path: str, dtype: str, cfg: dict[str, Any], seed: int) -> int:
        """Build model, optimizer and engine; a collective, so call on all ranks at once."""
        import deepspeed
        from transformers import AutoModelForCausalLM

        torch.manual_seed(seed)
        deepspeed.init_distributed(dist_backend="gloo" if not torch.cuda.is_available() else "nccl")
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype))
        model.config.use_cache = False
        self.cfg = cfg
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
        self.engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=self._ds_config())
        return sum(p.numel() for p in model.parameters())

    def _ds_config(self) -> dict[str, Any]:
        return {
            "train_micro_batch_size_per_gpu": 1,
            "gradient_accumulation_steps": 1,
            "managed_gradient_accumulation": False,  # we own the boundary: any number of micro-batches, one step()
            "gradient_clipping": self.cfg["grad_clip"],
            "zero_optimization": {"stage": self.cfg["zero_stage"]},
            "zero_force_ds_cpu_optimizer": False,
            "steps_per_print": 10**9,
        }

    def train(self, micro_batches: Sequence[Sequence[dict]], num_tokens: int, num_seqs: int) -> dict[str, float]:
        """One optimiser step over this rank's micro-batches. num_tokens / num_seqs
        are the global batch's trained tokens and sequences (loss denominators),
        so the summed gradient is the global-batch gradient on any number of ranks."""
        start = time.perf_counter()
        cfg, engine = self.cfg, self.engine
        engine.train()
        loss_sum = clipped = tokens = 0.0
        for micro in micro_batches:
            logp, mask = completion_logprobs(engine.module, micro)
            advantages = torch.tensor([s["advantage"] for s in micro], dtype=logp.dtype)
            old = logp.detach()  # one update per batch: the sampling policy is the current one
            losses, clip_mask = token_policy_loss(logp, old, advantages, cfg["clip_low"], cfg["clip_high"])
            loss = aggregate(losses, mask, cfg["loss_agg"], num_tokens=num_tokens, num_seqs=num_seqs)
            engine.backward(loss * self.world_size, scale_wrt_gas=False)  # DeepSpeed averages over ranks
            loss_sum += float(loss)
            clipped += float((clip_mask * mask).sum())
            tokens += float(mask.sum())
        engine.step()
        grad_norm = engine.get_global_grad_norm()
        return {
            "loss": loss_sum,
            "clip_tokens": clipped,
            "tokens": tokens,
            "micro_batches": len(micro_batches),
            "grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
            "lr": float(engine.get_lr()[0]),
            "seconds": time.perf_counter() - start,
        }

    def export_weights(self) -> dict[str, np.ndarray] | None:
        """Full HF-named float32 weights on rank 0, None on other ranks. A tied
        lm_head is sent too: vLLM unties it when weights are reloaded."""
        if self.rank != 0:
            return None
        return {name: t.detach().float().numpy() for name, t in self.engine.module.state_dict().items()}

    def param_sums(self) -> dict[str, float]:
        return {name: float(t.detach().double().sum()) for name, t in self.engine.module.state_dict().items()}
