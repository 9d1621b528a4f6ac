"""Actor groups (OpenRLHF-style): N Ray actors of one role, called all at once."""
from __future__ import annotations

import socket
from typing import Any, Sequence

import numpy as np
import ray
from ray.exceptions import RayActorError
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from rollout.worker import RolloutWorker, engine_env
from trainer.batching import PAD, plan
from trainer.worker import TrainerWorker


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RolloutGroup:
    """Data-parallel vLLM engines; a batch is split into contiguous shards. A
    worker that dies is replaced, given the current weights, and its shard
    generated again (up to `max_restarts` times per call)."""

    def __init__(self, n: int, model_path: str, rollout: Any, dtype: str, seed: int, reward: dict, max_restarts: int = 3) -> None:
        self.actor = ray.remote(num_cpus=1)(RolloutWorker).options(runtime_env={"env_vars": engine_env(rollout.threads, rollout.kv_cache_gib)})
        self.args = [(model_path, dtype, seed + i, rollout.max_model_len, reward, rollout.enforce_eager) for i in range(n)]
        self.workers = [self.actor.remote(*args) for args in self.args]
        self.max_restarts = max_restarts
        self.restarts = 0
        self.weights: tuple[Any, int] | None = None  # (object ref, version) of the newest weights

    def ready(self) -> None:
        ray.get([w.ready.remote() for w in self.workers])

    def _replace(self, i: int) -> None:
        ray.kill(self.workers[i])
        self.workers[i] = self.actor.remote(*self.args[i])
        if self.weights is not None:
            ray.get(self.workers[i].update_weights.remote(*self.weights))
        self.restarts += 1

    def generate(self, items: Sequence[dict], **sampling: Any) -> tuple[list[dict], float]:
        """Groups in item order, and the slowest shard's generation seconds."""
        shards = [[items[i] for i in idx] for idx in np.array_split(np.arange(len(items)), len(self.workers))]
        futures = {i: self.workers[i].generate.remote(shard, **sampling) for i, shard in enumerate(shards) if shard}
        results: dict[int, dict] = {}
        for i, future in futures.items():
            for attempt in range(self.max_restarts + 1):
                try:
                    results[i] = ray.get(future)
                    break
                except RayActorError:
                    if attempt == self.max_restarts:
                        raise
                    self._replace(i)
                    future = self.workers[i].generate.remote(shards[i], **sampling)
        ordered = [results[i] for i in sorted(results)]
        return [g for r in ordered for g in r["groups"]], max(r["seconds"] for r in ordered)

    def update_weights(self, weights_ref: Any, version: int) -> float:
        self.weights = (weights_ref, version)
        futures = [w.update_weights.remote(weights_ref, version) for w in self.workers]
        seconds = []
        for i, future in enumerate(futures):
            try:
                seconds.append(ray.get(future))
            except RayActorError:
                self._replace(i)  # the replacement loads these weights
        return max(seconds, default=0.0)

    def param_sums(self) -> list[dict[str, float]]:
        return ray.get([w.param_sums.remote() for w in self.workers])


class TrainerGroup:
    """DeepSpeed data-parallel ranks forming one process group."""

    def __init__(self, world_size: int, threads: int) -> None:
        # One bundle per rank, packed onto as few nodes as possible (OpenRLHF-style).
        self.placement = placement_group([{"CPU": 1}] * world_size, strategy="PACK")
        ray.get(self.placement.ready())
        port = free_port()
        self.ranks = [
            ray.remote(num_cpus=1)(TrainerWorker)
            .options(
                runtime_env={"env_vars": {"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": str(threads)}},
                scheduling_strategy=PlacementGroupSchedulingStrategy(self.placement, placement_group_bundle_index=r),
            )
            .remote(r, world_size, "127.0.0.1", port, threads)
            for r in range(world_size)
        ]

    def setup(self, model_path: str, dtype: str, cfg: dict, seed: int, total_steps: int) -> int:
        return ray.get([r.setup.remote(model_path, dtype, cfg, seed, total_steps) for r in self.ranks])[0]

    def train(self, samples: Sequence[dict], mini_batches: int, max_tokens_per_micro_batch: int) -> list[dict[str, float]]:
        """Split the batch into mini-batches (one optimiser step each) and those by
        trainer.batching.plan over ranks; PAD slots become zero-weight samples."""
        per_rank: list[list[dict]] = [[] for _ in self.ranks]
        for idx in np.array_split(np.arange(len(samples)), mini_batches):
            mini = [samples[i] for i in idx]
            trained = [s for s in mini if s["weight"] > 0]
            lengths = [len(s["prompt_ids"]) + len(s["tokens"]) for s in mini]
            padding = {**mini[0], "weight": 0.0}
            for rank, micros in enumerate(plan(lengths, len(self.ranks), max_tokens_per_micro_batch)):
                per_rank[rank].append({
                    "micro_batches": [[mini[i] if i != PAD else padding for i in micro] for micro in micros],
                    "num_tokens": sum(len(s["tokens"]) for s in trained),
                    "num_seqs": len(trained),
                })
        return ray.get([r.train.remote(minis) for r, minis in zip(self.ranks, per_rank)])

    def export_weights(self) -> Any:
        """An object-store reference to rank 0's weights (never copied through the
        driver); every rank takes part, as ZeRO-3 gathers the full parameters."""
        return [r.export_weights.remote() for r in self.ranks][0]

    def sequence_kl(self, samples: Sequence[dict]) -> list[float]:
        """Reference-model KL per sample, spread over the ranks."""
        shards = np.array_split(np.arange(len(samples)), len(self.ranks))
        parts = ray.get([r.sequence_kl.remote([samples[i] for i in idx]) for r, idx in zip(self.ranks, shards)])
        return [kl for part in parts for kl in part]

    def save_checkpoint(self, directory: str) -> None:
        ray.get([r.save_checkpoint.remote(directory) for r in self.ranks])

    def load_checkpoint(self, directory: str) -> None:
        ray.get([r.load_checkpoint.remote(directory) for r in self.ranks])

    def param_sums(self) -> dict[str, float]:
        return ray.get([r.param_sums.remote() for r in self.ranks])[0]

    def shutdown(self) -> None:
        for rank in self.ranks:
            ray.kill(rank)
        remove_placement_group(self.placement)
