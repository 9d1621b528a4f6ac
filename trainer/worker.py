"""TrainerWorker: one data-parallel rank of a DeepSpeed engine doing the GRPO update.

Ranks are Ray actors that form one torch.distributed group (gloo on CPU, NCCL
on CUDA). Each rank trains on its micro-batches; every loss is divided by the
global batch's token (or sequence) count, so the summed gradient equals the
gradient of the global-batch loss whatever the number of ranks and micro-batches.
"""
from __future__ import annotations

import contextlib
import os
import socket
import time
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from trainer.grpo import aggregate, kl_penalty, token_policy_loss
from trainer.schedules import lr_multiplier
from trainer.sync import WeightSender


def _pad(rows: Sequence[Sequence[int]], value: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([list(r) + [value] * (width - len(r)) for r in rows], dtype=torch.long)


def _per_token(samples: Sequence[dict], key: str, predicts: torch.Tensor) -> torch.Tensor:
    """Per-sample, per-completion-token values (e.g. vLLM log-probs) laid out
    like the log-probs [B, T]: masked_scatter fills row-major, in sample order."""
    values = torch.tensor([v for s in samples for v in s[key]], dtype=torch.float32, device=predicts.device)
    return torch.zeros(predicts.shape, device=predicts.device).masked_scatter(predicts, values)


def completion_logprobs(model: Any, samples: Sequence[dict], with_entropy: bool = False) -> dict[str, torch.Tensor]:
    """Log-probs [B, T] of each sample's completion tokens, the positions that
    predict them ("predicts", bool [B, T]; T = longest sequence - 1) and optionally
    per-token entropy. `logits_to_keep` skips the vocabulary projection (the
    costliest layer of a small model) over the prompt; the call goes through the
    model's (or DeepSpeed engine's) own forward, which ZeRO-3 needs."""
    sequences = [s["prompt_ids"] + s["tokens"] for s in samples]
    device = model.device
    input_ids = _pad(sequences, 0).to(device)  # [B, L]
    attention = _pad([[1] * len(q) for q in sequences], 0).to(device)
    predicts = torch.zeros(input_ids.shape[0], input_ids.shape[1] - 1, dtype=torch.bool)  # [B, L-1]
    for i, s in enumerate(samples):
        start = len(s["prompt_ids"]) - 1  # the position that predicts the first completion token
        predicts[i, start : start + len(s["tokens"])] = True
    predicts = predicts.to(device)
    first = min(len(s["prompt_ids"]) for s in samples) - 1
    keep = torch.arange(first, input_ids.shape[1] - 1, device=device)
    logits = model(input_ids=input_ids, attention_mask=attention, use_cache=False, logits_to_keep=keep).logits.float()  # [B, K, V]
    kept = predicts[:, first:]  # [B, K]
    selected = logits[kept]  # [N, V]
    norm = torch.logsumexp(selected, dim=-1)  # [N]
    picked = selected.gather(-1, input_ids[:, 1:][predicts].unsqueeze(-1)).squeeze(-1) - norm  # [N]
    out = {"logp": torch.zeros(predicts.shape, dtype=picked.dtype).masked_scatter(predicts, picked), "predicts": predicts}
    if with_entropy:
        with torch.no_grad():
            entropy = norm - (torch.softmax(selected, dim=-1) * selected).sum(-1)  # [N]
        out["entropy"] = torch.zeros(predicts.shape, device=device).masked_scatter(predicts, entropy)
    return out


def _rng_state() -> dict[str, Any]:
    import random

    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def _set_rng_state(state: dict[str, Any]) -> None:
    import random

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


class TrainerWorker(WeightSender):
    def __init__(self, rank: int, world_size: int, threads: int = 2) -> None:
        torch.set_num_threads(threads)
        self.rank, self.world_size = rank, world_size

    def address(self) -> tuple[str, int]:
        """This rank's node IP and a free port there: rank 0 hosts the rendezvous
        of the trainer group and of the weight-sync group."""
        import ray

        return ray.util.get_node_ip_address(), free_port()

    def setup(self, master: tuple[str, int], model_path: str, dtype: str, cfg: dict[str, Any], seed: int, total_steps: int) -> int:
        """Build model, optimizer, LR schedule, engine and (if kl_coef > 0) the frozen
        reference model; a collective, so call on all ranks at once with rank 0's address."""
        import deepspeed
        from transformers import AutoModelForCausalLM

        os.environ.update(
            RANK=str(self.rank), WORLD_SIZE=str(self.world_size), LOCAL_RANK="0", LOCAL_WORLD_SIZE="1",
            MASTER_ADDR=master[0], MASTER_PORT=str(master[1]),
        )
        torch.manual_seed(seed)
        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
        self.cfg = cfg
        torch_dtype = getattr(torch, dtype)
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch_dtype)
        model.config.use_cache = False
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
        updates = total_steps * cfg["ppo_epochs"] * cfg["mini_batches"]
        multiplier = lr_multiplier(cfg["lr_schedule"], updates, cfg["warmup_steps"], cfg["min_lr_ratio"], cfg["decay_fraction"])
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
        self.engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=self._ds_config())
        self.ref = None
        if cfg["kl_coef"] > 0:
            self.ref = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch_dtype).to(self.engine.device).eval().requires_grad_(False)
        return sum(p.numel() for p in model.parameters())

    def _ds_config(self) -> dict[str, Any]:
        return {
            "train_micro_batch_size_per_gpu": 1,  # bookkeeping only: micro-batches are sized by tokens
            "gradient_accumulation_steps": 1,
            "managed_gradient_accumulation": False,  # we own the boundary: any number of micro-batches, then step()
            "gradient_clipping": self.cfg["grad_clip"],
            "zero_optimization": {"stage": self.cfg["zero_stage"]},
            "zero_force_ds_cpu_optimizer": False,
            "steps_per_print": 10**9,
        }

    def _old_logprobs(self, mini_batches: Sequence[dict], stats: dict[str, float]) -> None:
        """Attach each sample's old (behaviour) log-probs, from vLLM ("rollout") or
        recomputed here before any update ("recompute")."""
        self.engine.eval()
        for mini in mini_batches:
            for micro in mini["micro_batches"]:
                with torch.no_grad():
                    out = completion_logprobs(self.engine, micro)
                for s, row, mask in zip(micro, out["logp"], out["predicts"]):
                    s["old_logp"] = row[mask].tolist() if self.cfg["old_logprobs"] == "recompute" else s["logprobs"]
                self._rollout_gap(micro, out, stats)

    @staticmethod
    def _rollout_gap(micro: Sequence[dict], out: dict[str, torch.Tensor], stats: dict[str, float]) -> None:
        """Sum of |trainer - vLLM| log-prob over tokens: exposes rollout/trainer mismatch."""
        vllm = _per_token(micro, "logprobs", out["predicts"])
        stats["rollout_gap_sum"] += float(((out["logp"].detach() - vllm).abs() * out["predicts"]).sum())
        stats["rollout_gap_tokens"] += float(out["predicts"].sum())

    def train(self, mini_batches: Sequence[dict]) -> dict[str, float]:
        """ppo_epochs passes over the mini-batches, one optimiser step each. A mini-batch
        is {"micro_batches": [[sample, ...], ...], "num_tokens": int, "num_seqs": int},
        the counts being the whole mini-batch's over all ranks (loss denominators)."""
        start = time.perf_counter()
        cfg, engine = self.cfg, self.engine
        stats = dict.fromkeys(
            ("loss", "kl", "clip_tokens", "tokens", "entropy_sum", "rollout_gap_sum", "rollout_gap_tokens", "skipped_updates",
             "stale_tokens", "iw_sum", "iw_capped"), 0.0
        )
        stats["iw_max"] = 0.0
        # One update per batch: the forward itself is at the sampling weights, so
        # the old log-probs are its own (detached) and no extra pass is needed.
        single = cfg["ppo_epochs"] == 1 and len(mini_batches) == 1
        if not single:
            self._old_logprobs(mini_batches, stats)
        engine.train()
        grad_norms = []
        for _ in range(cfg["ppo_epochs"]):
            for mini in mini_batches:
                # Every rank runs the same number of micro-batches (trainer.batching.plan):
                # ZeRO-2/3 reduce gradients in each backward.
                finite = all([self._micro_step(micro, mini["num_tokens"], mini["num_seqs"], single, stats) for micro in mini["micro_batches"]])
                if self._all_finite(finite):
                    engine.step()
                else:  # a NaN/inf loss or gradient on any rank: drop this update everywhere
                    self._drop_gradients()
                    stats["skipped_updates"] += 1
                    continue
                norm = engine.get_global_grad_norm()
                grad_norms.append(float(norm) if norm is not None else float("nan"))
        return {
            **stats,
            "grad_norm": float(np.mean(grad_norms)) if grad_norms else float("nan"),
            "micro_batches": sum(len(m["micro_batches"]) for m in mini_batches),
            "lr": float(engine.get_lr()[0]),
            "seconds": time.perf_counter() - start,
        }

    def _drop_gradients(self) -> None:
        """Forget this update's gradients wherever they live. ZeRO-1/2 keep reduced
        gradients in partitions and accumulation state that zero_grad() does not
        reset (left there, they would sink the next update too); their own
        overflow path in step() resets all of it: it sees the non-finite gradient
        norm and skips the update and the LR schedule's step."""
        if hasattr(self.engine.optimizer, "averaged_gradients"):  # DeepSpeedZeroOptimizer (stages 1 and 2)
            self.engine.step()
        else:
            self.engine.zero_grad()
            self.engine.optimizer.zero_grad()  # ZeRO-3 keeps reduced gradients in optimizer partitions

    def _all_finite(self, local: bool) -> bool:
        """Whether every rank's losses and (local) gradients are finite; a collective."""
        import torch.distributed as dist

        grads = [p.grad for p in self.engine.module.parameters() if p.grad is not None]
        ok = local and all(bool(torch.isfinite(g).all()) for g in grads)
        flag = torch.tensor([0.0 if ok else 1.0], device=self.engine.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return flag.item() == 0.0

    def _micro_step(self, micro: Sequence[dict], num_tokens: int, num_seqs: int, single: bool, stats: dict[str, float]) -> bool:
        """Forward and backward of one micro-batch; False if its loss was not finite."""
        cfg = self.cfg
        out = completion_logprobs(self.engine, micro, with_entropy=True)
        logp, predicts = out["logp"], out["predicts"]
        mask = predicts.float() * torch.tensor([float(s.get("weight", 1.0) > 0) for s in micro], device=logp.device).unsqueeze(-1)
        old = logp.detach() if single else _per_token(micro, "old_logp", predicts)
        if single:
            self._rollout_gap(micro, out, stats)
        advantages = torch.tensor([s["advantage"] for s in micro], dtype=logp.dtype, device=logp.device)
        losses, clip_mask = token_policy_loss(logp, old, advantages, cfg["clip_low"], cfg["clip_high"])
        if any(s.get("lag", 0) for s in micro):
            losses = losses * self._behaviour_weights(micro, old, predicts, mask, stats)
        loss = aggregate(losses, mask, cfg["loss_agg"], num_tokens=num_tokens, num_seqs=num_seqs)
        if self.ref is not None and cfg["kl_in"] == "loss":
            with torch.no_grad():
                ref_logp = completion_logprobs(self.ref, micro)["logp"]
            kl = aggregate(kl_penalty(logp, ref_logp, cfg["kl_kind"]), mask, cfg["loss_agg"], num_tokens=num_tokens, num_seqs=num_seqs)
            loss = loss + cfg["kl_coef"] * kl
            stats["kl"] += float(kl)
        self.engine.backward(loss * self.world_size, scale_wrt_gas=False)  # DeepSpeed averages over ranks; we normalise globally
        if not torch.isfinite(loss):
            return False
        stats["loss"] += float(loss)
        stats["clip_tokens"] += float((clip_mask * mask).sum())
        stats["tokens"] += float(mask.sum())
        stats["entropy_sum"] += float((out["entropy"] * mask).sum())
        return True

    def _behaviour_weights(
        self, micro: Sequence[dict], proximal: torch.Tensor, predicts: torch.Tensor, mask: torch.Tensor, stats: dict[str, float]
    ) -> torch.Tensor:
        """Decoupled PPO (AReaL): the clipped ratio above is taken against the
        proximal policy (the weights before this update); a stale sample's tokens
        are also weighted by pi_proximal / pi_behaviour (vLLM's log-probs when it
        was generated), truncated at importance_cap. Fresh samples (lag 0) were
        generated by the proximal weights themselves: weight exactly 1."""
        behaviour = _per_token(micro, "logprobs", predicts)
        raw = torch.exp(proximal.detach() - behaviour)
        stale = torch.tensor([s.get("lag", 0) > 0 for s in micro], device=predicts.device).unsqueeze(-1) & (mask > 0)
        cap, seen = self.cfg["importance_cap"], raw[stale]
        stats["stale_tokens"] += float(stale.sum())
        stats["iw_sum"] += float(seen.clamp(max=cap).sum())
        stats["iw_capped"] += float((seen > cap).sum())
        stats["iw_max"] = max(stats["iw_max"], float(seen.max()) if seen.numel() else 0.0)
        return torch.where(stale, raw.clamp(max=cap), torch.ones_like(raw))

    def sequence_kl(self, samples: Sequence[dict]) -> list[float]:
        """Per sample, the sum over its tokens of kl_penalty(sampling log-prob (vLLM's),
        reference log-prob): the KL-in-reward penalty (OpenRLHF/verl style)."""
        out = []
        for sample in samples:
            with torch.no_grad():
                ref = completion_logprobs(self.ref, [sample])
            policy = _per_token([sample], "logprobs", ref["predicts"])
            out.append(float((kl_penalty(policy, ref["logp"], self.cfg["kl_kind"]) * ref["predicts"]).sum()))
        return out

    def save_checkpoint(self, directory: str) -> None:
        """Model, optimizer, LR scheduler and this rank's RNG (all ranks call it)."""
        self.engine.save_checkpoint(directory, tag="trainer", client_state={"rng": _rng_state()})

    def load_checkpoint(self, directory: str) -> None:
        _, client = self.engine.load_checkpoint(directory, tag="trainer", load_optimizer_states=True, load_lr_scheduler_states=True)
        _set_rng_state(client["rng"])

    @contextlib.contextmanager
    def _full_state(self) -> Iterator[dict[str, torch.Tensor]]:
        """HF-named full tensors; under ZeRO-3 gathered from all ranks (a collective)."""
        module = self.engine.module
        if self.cfg["zero_stage"] == 3:
            import deepspeed

            with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
                yield module.state_dict()
        else:
            yield module.state_dict()

    def export_weights(self) -> dict[str, np.ndarray] | None:
        """Full HF-named float32 weights on rank 0, None on other ranks; call on all
        ranks. A tied lm_head is sent too: vLLM unties it when weights are reloaded."""
        with self._full_state() as state:
            if self.rank != 0:
                return None
            gathered = self.cfg["zero_stage"] == 3  # gathered tensors are freed when the context ends
            return {name: t.detach().float().cpu().numpy().copy() if gathered else t.detach().float().cpu().numpy() for name, t in state.items()}

    def save_model(self, directory: str, tokenizer_from: str) -> None:
        """The policy as a Hugging Face directory (weights, config, tokenizer),
        written by rank 0; call on all ranks (ZeRO-3 gathers)."""
        from transformers import AutoTokenizer

        with self._full_state() as state:
            if self.rank == 0:
                self.engine.module.save_pretrained(directory, state_dict=state)
                AutoTokenizer.from_pretrained(tokenizer_from).save_pretrained(directory)

    def param_sums(self) -> dict[str, float]:
        with self._full_state() as state:
            return {name: float(t.detach().double().sum()) for name, t in state.items()}
