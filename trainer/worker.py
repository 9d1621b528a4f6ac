"""TrainerWorker: one data-parallel rank of a DeepSpeed engine doing the GRPO update.

Ranks are Ray actors that form one torch.distributed group (gloo on CPU, NCCL
on CUDA). Each rank trains on its micro-batches; every loss is divided by the
global batch's token (or sequence) count, so the summed gradient equals the
gradient of the global-batch loss whatever the number of ranks and micro-batches.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from gradus.trainer.batching import RankShare, TrainSample
from gradus.trainer.config import TrainerConfig
from gradus.trainer.grpo import kl_penalty, loss_options
from gradus.trainer.loss import completion_logprobs, micro_batch_loss, per_token, prompt_sharing, rollout_gap
from gradus.trainer.models import add_lora, load_model, streamed_state
from gradus.trainer import engine_checkpoint
from gradus.trainer.schedules import lr_multiplier
from gradus.trainer.rank_setup import allocator, deepspeed_config, free_port
from gradus.trainer.rank_setup import build_cpu_adam_once, optimizer_threads, share_fp32_master
from gradus.trainer.sync import WeightSender


# What a rank's train() sums over its micro-batches (train_metrics turns them into train/*)
RANK_STATS = (
    "loss kl clip_tokens tokens entropy_sum rollout_gap_sum rollout_gap_tokens skipped_updates "
    "stale_tokens iw_tokens iw_sum iw_capped iw_max"
)


class TrainerWorker(WeightSender):
    def __init__(self, rank: int, world_size: int, threads: int = 2, device: str = "cpu") -> None:
        """`device`: the run's cluster.device (cuda or cpu), never probed here: a
        CPU run on a GPU node must not pick NCCL."""
        self.device = device
        torch.set_num_threads(threads)
        self.rank, self.world_size, self.threads = rank, world_size, threads

    def address(self) -> tuple[str, int]:
        """This rank's node IP and a free port there: rank 0 hosts the rendezvous
        of the trainer group and of the weight-sync group."""
        import ray

        return ray.util.get_node_ip_address(), free_port()

    def setup(
        self,
        master: tuple[str, int],
        model_path: str,
        dtype: str,
        cfg: TrainerConfig,
        seed: int,
        total_steps: int,
        norm_len: int | None = None,
    ) -> int:
        """Build model (sharded from the start under ZeRO-3), optimizer, LR schedule,
        engine and, for full fine-tuning with kl_coef > 0, the frozen reference
        model; a collective, so call on all ranks at once with rank 0's address.
        `norm_len`: Dr.GRPO's divisor unless trainer.loss_norm_len sets it (the
        run's rollout.max_tokens). Returns the number of model parameters (LoRA
        adapters included)."""
        import deepspeed
        from transformers import AutoConfig

        os.environ.update(
            RANK=str(self.rank),
            WORLD_SIZE=str(self.world_size),
            LOCAL_RANK="0",
            LOCAL_WORLD_SIZE="1",
            MASTER_ADDR=master[0],
            MASTER_PORT=str(master[1]),
        )
        torch.manual_seed(seed)
        deepspeed.init_distributed(dist_backend="nccl" if self.device == "cuda" else "gloo")
        self.cfg, self.loss = cfg, loss_options(cfg, norm_len)
        self.lora = cfg.lora is not None
        torch_dtype, self.dtype = getattr(torch, dtype), dtype
        self.hidden = getattr(AutoConfig.from_pretrained(model_path), "hidden_size", 4096)
        self.stage = self._engine_stage(say=self.rank == 0)
        self.mmap_threshold = allocator(
            self.stage == 3 or cfg.gradient_checkpointing or "cpu" in self._offload().values()
        )
        ds_config = self._ds_config()
        model = load_model(model_path, torch_dtype, ds_config, cfg.zero_init)
        self.share_prompts = prompt_sharing(model, cfg.share_prompts, say=self.rank == 0)
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if self.lora:
            model = add_lora(model, cfg.lora)
        trainable = [
            p for p in model.parameters() if p.requires_grad
        ]  # with LoRA only the adapters get optimizer state
        if "offload_optimizer" in ds_config["zero_optimization"]:
            from deepspeed.ops.adam import DeepSpeedCPUAdam

            threads = optimizer_threads(self.threads)  # its step runs on the node's cores
            os.environ["OMP_NUM_THREADS"] = str(threads)  # read by the op's OpenMP if it is not torch's own
            build_cpu_adam_once()  # one rank per node compiles the op, the others load it
            torch.set_num_threads(threads)
            optimizer = DeepSpeedCPUAdam(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay, adamw_mode=True)
        elif cfg.optimizer == "sgd":
            optimizer = torch.optim.SGD(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
        else:
            # fused: one pass over the flat partition with no temporaries (CPU and CUDA kernels); the
            # default multi-op AdamW took ~20x longer on CPU and a partition-sized temporary per op
            optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
        updates = total_steps * cfg.ppo_epochs * cfg.mini_batches
        multiplier = lr_multiplier(cfg.lr_schedule, updates, cfg.warmup_steps, cfg.min_lr_ratio, cfg.decay_fraction)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
        self.engine, *_ = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config
        )
        if self.stage == 0:
            self.engine.clip_fp32_gradients = self._clip_keeping_norm
            if self.world_size == 1:  # averaging over one rank is the identity, minus a flatten and copy
                self.engine.enable_backward_allreduce = False
        if self.stage == 3:
            share_fp32_master(self.engine.optimizer)
        self.ref = None
        self._ref_cache: dict[int, torch.Tensor] = {}
        if cfg.kl_coef > 0 and not self.lora:  # LoRA's reference is the policy with its adapters disabled
            self.ref = self._reference_model(model_path, torch_dtype)
        return sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())

    def free_cache(self) -> None:
        """Return cached CUDA blocks to the driver (a colocated vLLM wakes up next)."""
        if self.device == "cuda":
            torch.cuda.empty_cache()

    def shares_prompts(self) -> bool:
        """Whether this rank encodes each group's prompt once (resolved at setup)."""
        return self.share_prompts

    def zero_stage(self) -> int:
        """The ZeRO stage the engine runs (resolved at setup)."""
        return self.stage

    def _engine_stage(self, say: bool) -> int:
        """trainer.zero_stage, except: ZeRO-1/2 on a single rank (fp32, without
        optimizer offload) run as stage 0, where they partition nothing and each step
        would flatten and copy every gradient and keep a second fp32 copy of the
        weights (the same update); and bf16/fp16 run at stage 1 or more, whose
        optimizer keeps the fp32 master weights that checkpoints read."""
        stage = self.cfg.zero_stage
        if self.dtype != "float32":
            if stage == 0 and say:
                print(
                    f"gradus: model.dtype={self.dtype} runs ZeRO stage 1 (fp32 master weights in the optimizer)",
                    flush=True,
                )
            return max(stage, 1)
        if self.world_size > 1 or stage not in (1, 2) or self._offload().get("optimizer") == "cpu":
            return stage
        if say:
            print(
                f"gradus: trainer.zero_stage={stage} on one rank partitions nothing: running ZeRO stage 0 (the same "
                "update, without flat gradient copies or a second fp32 copy of the weights)",
                flush=True,
            )
        return 0

    def _clip_keeping_norm(self) -> None:
        """ZeRO-0's gradient clipping (the engine calls it after reducing), keeping the
        pre-clip norm for train/grad_norm as ZeRO 1-3 do; DeepSpeed's drops it."""
        from deepspeed.runtime.utils import clip_grad_norm_

        engine = self.engine
        engine._global_grad_norm = float(
            clip_grad_norm_(parameters=engine.module.parameters(), max_norm=engine.gradient_clipping(), mpu=engine.mpu)
        )

    def _offload(self) -> dict[str, str]:
        """trainer.offload where it applies: on CUDA (a CPU-only run keeps model and
        optimizer in CPU memory already)."""
        offload = self.cfg.offload
        return {"optimizer": offload.optimizer, "params": offload.params} if self.device == "cuda" else {}

    def _piece_params(self) -> int:
        """Parameters held gathered or merged at once: under one transformer layer
        (~16 h^2). ZeRO-3's live-parameter limit and a weight sync's piece size."""
        return 10 * self.hidden**2

    def _ds_config(self, training: bool = True) -> dict[str, Any]:
        """The policy engine's DeepSpeed config, or (training=False) the optimizer-free
        reference engine's."""
        return deepspeed_config(
            self.stage, self.hidden, self._piece_params(), self._offload(), self.cfg.grad_clip, self.dtype, training
        )

    def _reference_model(self, model_path: str, dtype: torch.dtype) -> Any:
        """Full fine-tuning's frozen reference. Under ZeRO-3 a DeepSpeed engine without
        optimizer, sharded like the policy (as OpenRLHF does); under ZeRO 0-2 a plain
        copy (every rank holds the full policy there too)."""
        import deepspeed

        config = self._ds_config(training=False)
        model = load_model(model_path, dtype, config, self.cfg.zero_init).eval().requires_grad_(False)
        if self.stage != 3:
            return model.to(self.engine.device)
        engine, *_ = deepspeed.initialize(model=model, config=config)
        engine.eval()  # returns None, unlike Module.eval
        return engine

    def _old_logprobs(self, mini_batches: Sequence[RankShare], stats: dict[str, float]) -> None:
        """Attach each sample's old (behaviour) log-probs, from vLLM ("rollout") or
        recomputed here before any update ("recompute")."""
        self.engine.eval()
        for mini in mini_batches:
            for micro in mini.micro_batches:
                with torch.no_grad():
                    out = completion_logprobs(self.engine, micro, share_prompts=self.share_prompts)
                for s, row, mask in zip(micro, out["logp"], out["predicts"]):
                    s.old_logp = row[mask].tolist() if self.cfg.old_logprobs == "recompute" else s.logprobs
                rollout_gap(micro, out, stats)

    def train(self, mini_batches: Sequence[RankShare]) -> dict[str, float]:
        """ppo_epochs passes over the mini-batches, one optimiser step each. A mini-batch
        is this rank's RankShare of it (gradus.trainer.batching.assign)."""
        start = time.perf_counter()
        cfg, engine = self.cfg, self.engine
        stats = dict.fromkeys(RANK_STATS.split(), 0.0)
        # One update per batch: the forward itself is at the sampling weights, so
        # the old log-probs are its own (detached) and no extra pass is needed.
        single = cfg.ppo_epochs == 1 and len(mini_batches) == 1
        if not single:
            self._old_logprobs(mini_batches, stats)
        self._ref_cache = self._reference_pass(mini_batches) if cfg.kl_coef > 0 and cfg.kl_in == "loss" else {}
        engine.train()
        grad_norms = []
        for _ in range(cfg.ppo_epochs):
            for mini in mini_batches:
                # Every rank runs the same number of micro-batches (trainer.batching.plan):
                # ZeRO-2/3 reduce gradients in each backward.
                finite = all(
                    [
                        self._micro_step(micro, mini.num_tokens, mini.num_seqs, single, stats)
                        for micro in mini.micro_batches
                    ]
                )
                if self._all_finite(finite):
                    engine.step()
                else:  # a NaN/inf loss or gradient on any rank: drop this update everywhere
                    self._drop_gradients()
                    stats["skipped_updates"] += 1
                    continue
                norm = engine.get_global_grad_norm()
                grad_norms.append(float(norm) if norm is not None else float("nan"))
        updates = max(cfg.ppo_epochs * len(mini_batches), 1)
        return {
            **stats,
            "loss": stats["loss"] / updates,  # the mean over optimiser steps (this rank's share), as grad_norm
            "kl": stats["kl"] / updates,
            "grad_norm": float(np.mean(grad_norms)) if grad_norms else float("nan"),
            "micro_batches": sum(len(m.micro_batches) for m in mini_batches),
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

    def _micro_step(
        self, micro: Sequence[TrainSample], num_tokens: int, num_seqs: int, single: bool, stats: dict[str, float]
    ) -> bool:
        """Forward and backward of one micro-batch; False if its loss was not finite."""
        ref = self._ref_logprobs if self._ref_cache else None
        loss = micro_batch_loss(
            self.engine, micro, self.loss, self.share_prompts, num_tokens, num_seqs, single, stats, ref
        )
        self.engine.backward(
            loss * self.world_size, scale_wrt_gas=False
        )  # DeepSpeed averages over ranks; we normalise globally
        return bool(torch.isfinite(loss))

    def _reference(self, micro: Sequence[TrainSample]) -> dict[str, torch.Tensor]:
        """The reference policy's completion log-probs of a micro-batch: the frozen
        copy (its own ZeRO-3 engine when sharded) or, with LoRA, the policy with its
        adapters disabled (no second copy). A collective under ZeRO-3: every rank
        must call it equally often."""
        disabled = self.engine.module.disable_adapter() if self.lora else contextlib.nullcontext()
        with torch.no_grad(), disabled:
            return completion_logprobs(self.engine if self.lora else self.ref, micro, share_prompts=self.share_prompts)

    def _reference_pass(self, mini_batches: Sequence[RankShare]) -> dict[int, torch.Tensor]:
        """Reference log-probs [B, T] of every micro-batch (keyed by id), computed once
        per batch before any update: the reference never changes, and the policy's
        forward and backward never interleave with a reference forward."""
        self.engine.eval()
        return {id(micro): self._reference(micro)["logp"] for mini in mini_batches for micro in mini.micro_batches}

    def _ref_logprobs(self, micro: Sequence[TrainSample]) -> torch.Tensor:
        """The reference policy's log-probs [B, T] of the micro-batch's completions."""
        return self._ref_cache[id(micro)]

    def sequence_kl(self, micro_batches: Sequence[Sequence[TrainSample]]) -> list[list[float]]:
        """Per micro-batch, per sample, the sum over its tokens of kl_penalty(sampling
        log-prob (vLLM's), reference log-prob): the KL-in-reward penalty (OpenRLHF/verl
        style). Every rank gets the same number of micro-batches (TrainerGroup.sequence_kl)."""
        self.engine.eval()
        out = []
        for micro in micro_batches:
            ref = self._reference(micro)
            policy = per_token(micro, "logprobs", ref["predicts"])
            out.append((kl_penalty(policy, ref["logp"], self.loss.kl_kind) * ref["predicts"]).sum(-1).tolist())
        return out

    def save_checkpoint(self, directory: str) -> None:
        """Trainable weights, optimizer, LR schedule and this rank's RNG, consolidated
        so that any world size and ZeRO stage can resume (all ranks call it)."""
        engine_checkpoint.save(self.engine, directory, self.rank)

    def load_checkpoint(self, directory: str, changes: dict[str, float] | None = None) -> dict[str, int]:
        """Load a checkpoint saved at any world size and ZeRO stage (with this run's
        `changes` to lr / weight_decay applied); returns those."""
        return engine_checkpoint.load(self.engine, directory, self.rank, changes)

    def checkpoint_state(self) -> dict[str, np.ndarray]:
        """Full fp32 weights and optimizer state as a checkpoint holds them (for tests)."""
        return engine_checkpoint.state(self.engine)

    def _state_pieces(self) -> Iterator[dict[str, torch.Tensor]]:
        """HF-named tensors (with LoRA: base names, adapters merged in), in pieces. Under
        ZeRO-3 each piece is gathered only while in use, so no rank holds the full
        model (a collective); with LoRA each piece's merged weights are new tensors,
        so they never all exist at once. Otherwise one piece of the parameters as they are."""
        zero3 = self.stage == 3
        piece_bytes = (
            self._piece_params() * next(self.engine.module.parameters()).element_size()
            if zero3 or self.lora
            else float("inf")
        )
        return streamed_state(self.engine.module, self.lora, zero3, piece_bytes)

    def export_weights(self) -> dict[str, np.ndarray] | None:
        """Full HF-named float32 weights on rank 0, None on other ranks; call on all
        ranks. A tied lm_head is sent too: vLLM unties it when weights are reloaded."""
        out = {
            name: t.detach().float().cpu().numpy().copy()
            for piece in self._state_pieces()
            for name, t in piece.items()
            if self.rank == 0
        }
        return out if self.rank == 0 else None

    def save_model(self, directory: str, tokenizer_from: str) -> None:
        """The policy as a Hugging Face directory (weights, config, tokenizer; with
        LoRA the merged weights, and the adapters in adapter/), written by rank 0
        from a CPU copy it assembles piece by piece; call on all ranks."""
        from transformers import AutoTokenizer

        state = {
            name: t.detach().to("cpu", copy=True)
            for piece in self._state_pieces()
            for name, t in piece.items()
            if self.rank == 0
        }
        if self.rank == 0:
            module = self.engine.module
            base = module.get_base_model() if self.lora else module
            if getattr(
                base.config, "tie_word_embeddings", False
            ):  # the copies no longer share storage: drop the tied head as HF does
                head = base.get_output_embeddings()
                state.pop(next(f"{name}.weight" for name, m in base.named_modules() if m is head), None)
            base.save_pretrained(directory, state_dict=state)
            AutoTokenizer.from_pretrained(tokenizer_from).save_pretrained(directory)
            if self.lora:  # the adapters alone too, loadable with peft on top of the base model
                module.save_pretrained(os.path.join(directory, "adapter"))

    def param_sums(self) -> dict[str, float]:
        return {name: float(t.detach().double().sum()) for piece in self._state_pieces() for name, t in piece.items()}
