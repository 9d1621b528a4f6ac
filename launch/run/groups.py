"""Actor groups (OpenRLHF-style): N Ray actors of one role, placed by a Ray
placement group and called all at once; the rollout group also owns the
weight sync from trainer rank 0 (trainer/sync.py transports)."""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np
import ray
from ray.exceptions import RayTaskError
from ray.util.placement_group import (
    PlacementGroup,
    placement_group,
    remove_placement_group,
)
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from gradus.launch.run.faults import WORKER_DIED, Watchdog, placement_ready
from gradus.launch.run.resources import Placement, bundle
from gradus.curriculum.items import Item
from gradus.rollout.records import Group
from gradus.rollout.worker import RolloutWorker, engine_env
from gradus.trainer.batching import PAD, RankShare, TrainSample, assign, dummy, plan
from gradus.trainer.config import TrainerConfig
from gradus.trainer.sync import WeightReceiver
from gradus.trainer.rank_setup import MMAP_THRESHOLD_ENV
from gradus.trainer.worker import TrainerWorker


class RolloutActor(WeightReceiver, RolloutWorker):
    """A vLLM rollout worker that can receive bucketed weights (a worker
    extension, like verl's and OpenRLHF's)."""


def node_of(actor: Any) -> dict[str, str]:
    """The node an actor runs on: Ray node id and IP (for placement.json)."""
    where = lambda _: {"node_id": ray.get_runtime_context().get_node_id(), "ip": ray.util.get_node_ip_address()}  # noqa: E731
    return ray.get(actor.__ray_call__.remote(where))


def _on(pg: PlacementGroup, index: int) -> PlacementGroupSchedulingStrategy:
    return PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=index)


# A malloc mmap threshold set in the driver's environment reaches every rank
# (the ranks otherwise choose one by their settings: trainer.rank_setup.allocator).
TRAINER_MALLOC = {MMAP_THRESHOLD_ENV: os.environ[MMAP_THRESHOLD_ENV]} if MMAP_THRESHOLD_ENV in os.environ else {}
# cluster.device=cpu on a GPU node: Ray 2.60 leaves CUDA_VISIBLE_DEVICES alone for an actor that asks for no GPU,
# so without this every CPU rank and engine would open a context on GPU 0
HIDE_GPUS = {"CUDA_VISIBLE_DEVICES": ""}


class TrainerGroup:
    """DeepSpeed data-parallel ranks forming one process group, one placement
    bundle per rank, packed onto as few nodes as possible. With `share` the
    bundles also hold colocated rollout workers: (CPUs, GPU fraction left to them)."""

    def __init__(
        self,
        world_size: int,
        threads: int,
        device: str = "cpu",
        cpus_per_rank: float = 1.0,
        resources: dict | None = None,
        share: tuple[float, float] | None = None,
        watchdog: Watchdog | None = None,
    ) -> None:
        self.watchdog = watchdog or Watchdog()
        gpu = 1.0 if device == "cuda" else 0.0
        self.share = share or (0.0, 0.0)
        extra_cpus, gpu_share = self.share
        self.placement = placement_group(
            [bundle(cpus_per_rank + extra_cpus, gpu, resources or {})] * world_size, strategy="PACK"
        )
        placement_ready(self.placement, self.watchdog, f"{world_size} trainer rank bundle(s)")
        env = {
            "OMP_NUM_THREADS": str(threads),
            **TRAINER_MALLOC,
            **({"DS_ACCELERATOR": "cpu", **HIDE_GPUS} if device == "cpu" else {}),
        }
        self.ranks = [
            ray.remote(TrainerWorker)
            .options(
                num_cpus=cpus_per_rank,
                num_gpus=gpu - gpu_share,
                runtime_env={"env_vars": env},
                scheduling_strategy=_on(self.placement, r),
            )
            .remote(r, world_size, threads, device)
            for r in range(world_size)
        ]

    def _all(self, refs: Any, method: str) -> Any:
        """Every rank's answer under the watchdog; a hung rank kills the group (the run restarts)."""
        slow = method in ("save_checkpoint", "load_checkpoint", "save_model", "checkpoint_state", "setup")
        return self.watchdog.get(refs, f"trainer ranks ({method})", self.ranks, slow=slow)

    def setup(
        self, model_path: str, dtype: str, cfg: TrainerConfig, seed: int, total_steps: int, norm_len: int | None = None
    ) -> int:
        """Every rank's model, optimizer and engine (TrainerWorker.setup); the number of parameters."""
        master = self.address()
        self.max_tokens = cfg.max_tokens_per_micro_batch
        self.kl_in_loss = cfg.kl_coef > 0 and cfg.kl_in == "loss"
        params = self._all(
            [r.setup.remote(master, model_path, dtype, cfg, seed, total_steps, norm_len) for r in self.ranks], "setup"
        )[0]
        self.share_prompts = self._all(
            self.ranks[0].shares_prompts.remote(), "shares_prompts"
        )  # as the ranks resolved it for this model
        self.zero_stage = self._all(
            self.ranks[0].zero_stage.remote(), "zero_stage"
        )  # ZeRO-1/2 on one rank run as stage 0
        return params

    def address(self) -> tuple[str, int]:
        """Rank 0's node IP and a free port there."""
        return self._all(self.ranks[0].address.remote(), "address")

    def train(
        self, samples: Sequence[TrainSample], mini_batches: int, max_tokens_per_micro_batch: int, skip: bool = True
    ) -> list[dict[str, float]]:
        """Split the batch into mini-batches (one optimiser step each) and those by
        trainer.batching.assign over ranks; with `skip`, samples whose loss term is
        identically zero get no forward or backward (the gradient is the same)."""
        per_rank: list[list[RankShare]] = [[] for _ in self.ranks]
        for idx in np.array_split(np.arange(len(samples)), mini_batches):
            if all(samples[i].weight == 0 for i in idx):
                continue  # padding only: no loss to normalise (0/0), so no update, on every rank alike
            shares = assign(
                [samples[i] for i in idx],
                len(self.ranks),
                max_tokens_per_micro_batch,
                skip,
                self.kl_in_loss,
                self.share_prompts,
            )
            for rank, share in enumerate(shares):
                per_rank[rank].append(share)
        return self._all([r.train.remote(minis) for r, minis in zip(self.ranks, per_rank)], "train")

    def export_weights(self) -> Any:
        """An object-store reference to rank 0's full float32 weights as one dict
        (for checks and tests; syncs go through `publish_weights`/`broadcast_weights`)."""
        return [r.export_weights.remote() for r in self.ranks][0]

    def weight_layout(self, bucket_mb: float) -> list:
        return self._all([r.weight_layout.remote(bucket_mb) for r in self.ranks], "weight_layout")[0]

    def publish_weights(self) -> list:
        """Object-store references to rank 0's weight buckets (all ranks take part)."""
        return self._all([r.publish_weights.remote() for r in self.ranks], "publish_weights")[0]

    def broadcast_weights(self) -> list:
        """Futures of every rank's part in one broadcast sync."""
        return [r.broadcast_weights.remote() for r in self.ranks]

    def sequence_kl(self, samples: Sequence[TrainSample]) -> list[float]:
        """Reference-model KL per sample, spread over the ranks in micro-batches
        (trainer.batching.plan): every rank runs the same number of reference
        forwards, which a sharded (ZeRO-3) reference needs; PAD slots are ignored."""
        lengths = [len(s.prompt_ids) + len(s.tokens) for s in samples]
        per_rank, padding = plan(lengths, len(self.ranks), self.max_tokens), dummy(samples[0])
        parts = self._all(
            [
                r.sequence_kl.remote([[samples[i] if i != PAD else padding for i in micro] for micro in micros])
                for r, micros in zip(self.ranks, per_rank)
            ],
            "sequence_kl",
        )
        kls = [0.0] * len(samples)
        for micros, values in zip(per_rank, parts):
            for micro, row in zip(micros, values):
                for i, kl in zip(micro, row):
                    if i != PAD:
                        kls[i] = kl
        return kls

    def save_checkpoint(self, directory: str) -> None:
        self._all([r.save_checkpoint.remote(directory) for r in self.ranks], "save_checkpoint")

    def load_checkpoint(self, directory: str, changes: dict[str, float] | None = None) -> dict[str, int]:
        """Load on every rank (with this run's lr / weight_decay `changes`); returns
        the world size and ZeRO stage it was saved from."""
        return self._all([r.load_checkpoint.remote(directory, changes) for r in self.ranks], "load_checkpoint")[0]

    def checkpoint_state(self) -> dict[str, np.ndarray]:
        """Rank 0's view of the full weights and optimizer state (all ranks take part)."""
        return self._all([r.checkpoint_state.remote() for r in self.ranks], "checkpoint_state")[0]

    def param_sums(self) -> dict[str, float]:
        return self._all([r.param_sums.remote() for r in self.ranks], "param_sums")[0]

    def free_cache(self) -> None:
        self._all([r.free_cache.remote() for r in self.ranks], "free_cache")

    def save_model(self, directory: str, tokenizer_from: str) -> None:
        self._all([r.save_model.remote(directory, tokenizer_from) for r in self.ranks], "save_model")

    def shutdown(self) -> None:
        for rank in self.ranks:
            ray.kill(rank)
        remove_placement_group(self.placement)


class RolloutGroup:
    """Data-parallel vLLM engines; a batch is split into contiguous shards. A
    worker that dies is replaced, given the current weights, and its shard
    generated again (up to `max_restarts` times per call).

    Placement (launch/run/resources.py): the plan's rollout groups (one bundle
    per worker; with tensor parallelism a group per worker whose GPU bundles
    vLLM's own Ray workers take), or with `colocate_with` the trainer ranks'
    bundles (worker i on rank i mod world)."""

    def __init__(
        self,
        n: int,
        model_path: str,
        rollout: Any,
        dtype: str,
        seed: int,
        reward: dict,
        device: str,
        placement: Placement,
        engine: dict[str, Any],
        colocate_with: TrainerGroup | None = None,
        max_restarts: int = 3,
        watchdog: Watchdog | None = None,
    ) -> None:
        self.watchdog = watchdog or Watchdog()
        self.engine_args = {"dtype": dtype, **engine}
        self.owned: list[PlacementGroup] = []
        if colocate_with is not None:
            self.slots = [(colocate_with.placement, i % len(colocate_with.ranks)) for i in range(n)]
            self.engine_args["enable_sleep_mode"] = device == "cuda"
        else:
            for group in placement.rollout:
                self.owned.append(placement_group(group, strategy=placement.rollout_strategy))
                placement_ready(self.owned[-1], self.watchdog, f"rollout bundle(s) {group}")
        # vLLM's Ray workers (tensor parallelism) are scheduled into their engine's own group
        self.capture = colocate_with is None and placement.rollout_strategy == "STRICT_PACK"
        if colocate_with is None:  # a group per (tensor-parallel) engine at its bundle 0, or one with every worker's
            self.slots = [(g, 0) for g in self.owned] if self.capture else [(self.owned[0], i) for i in range(n)]
        self.options = {
            "num_cpus": rollout.cpus_per_worker,
            "num_gpus": placement.rollout_actor_gpus,
            "runtime_env": {
                "env_vars": {
                    **engine_env(rollout.threads, rollout.kv_cache_gib),
                    **(HIDE_GPUS if device == "cpu" else {}),
                }
            },
        }
        self.args = [(model_path, seed + i, reward) for i in range(n)]
        self.workers = [self._start(i) for i in range(n)]
        self.device = device
        self.max_restarts = max_restarts
        self.restarts = 0
        self.version = 0
        self.trainers: TrainerGroup | None = None

    def _start(self, i: int) -> Any:
        group, index = self.slots[i]
        strategy = PlacementGroupSchedulingStrategy(group, index, placement_group_capture_child_tasks=self.capture)
        return (
            ray.remote(RolloutActor)
            .options(**self.options, scheduling_strategy=strategy)
            .remote(*self.args[i], **self.engine_args)
        )

    def _all(self, refs: Any, method: str) -> Any:
        return self.watchdog.get(refs, f"rollout workers ({method})", self.workers)

    def _one(self, i: int, ref: Any, method: str, slow: bool = False) -> Any:
        """Worker i's answer under the watchdog; a hung worker is killed (the caller replaces it)."""
        return self.watchdog.get(ref, f"rollout worker {i} ({method})", [self.workers[i]], slow=slow)

    def ready(self) -> None:
        self._all([w.ready.remote() for w in self.workers], "ready")

    def connect(self, trainers: TrainerGroup, transport: str, bucket_mb: float) -> None:
        """Set up weight sync from trainer rank 0 (once both groups are up)."""
        self.trainers, self.transport = trainers, transport
        self.layout = trainers.weight_layout(bucket_mb)
        self._all([w.set_weight_layout.remote(self.layout) for w in self.workers], "set_weight_layout")
        if transport == "broadcast":
            self._join()

    def _join(self) -> None:
        """(Re)build the broadcast group: trainer rank 0 is rank 0, worker i rank i + 1."""
        host, port = self.trainers.address()
        world, backend = 1 + len(self.workers), "nccl" if self.device == "cuda" else "gloo"
        self._all(
            [self.trainers.ranks[0].join_weight_group.remote(host, port, world, backend)]
            + [w.join_weight_group.remote(host, port, world, i + 1, backend) for i, w in enumerate(self.workers)],
            "join_weight_group",
        )

    def _replace(self, i: int) -> None:
        """A fresh worker with the current weights (through the object store) that
        rejoins the broadcast group."""
        ray.kill(self.workers[i])
        self.workers[i] = self._start(i)
        if self.trainers is not None:
            self._one(i, self.workers[i].set_weight_layout.remote(self.layout), "set_weight_layout")
            if self.version:
                refs = self.trainers.publish_weights()
                self._one(i, self.workers[i].fetch_weights.remote(refs, self.version), "fetch_weights")
            if self.transport == "broadcast":
                self._join()
        self.restarts += 1

    def generate(self, items: Sequence[Item], slow: bool = False, **sampling: Any) -> tuple[list[Group], float]:
        """Groups in item order, and the slowest shard's generation seconds (`slow`:
        not a training step's batch, e.g. held-out evaluation: the watchdog's longer deadline)."""
        shards = [[items[i] for i in idx] for idx in np.array_split(np.arange(len(items)), len(self.workers))]
        futures = {i: self.workers[i].generate.remote(shard, **sampling) for i, shard in enumerate(shards) if shard}
        results: dict[int, tuple[list[Group], float]] = {}
        for i, future in futures.items():
            for attempt in range(self.max_restarts + 1):
                try:
                    results[i] = self._one(i, future, "generate", slow)
                    break
                except WORKER_DIED:
                    if attempt == self.max_restarts:
                        raise
                    self._replace(i)
                    future = self.workers[i].generate.remote(shards[i], **sampling)
        ordered = [results[i] for i in sorted(results)]
        return [g for groups, _ in ordered for g in groups], max(seconds for _, seconds in ordered)

    def update_weights(self, version: int) -> float:
        """Trainer rank 0's weights into every worker; the slowest worker's seconds.
        A worker that dies meanwhile is replaced (and given these weights)."""
        self.version = version
        if self.transport == "broadcast":
            receivers = [w.receive_weights.remote(version, self.device) for w in self.workers]
            senders = self.trainers.broadcast_weights()
        else:
            refs = self.trainers.publish_weights()
            receivers, senders = [w.fetch_weights.remote(refs, version) for w in self.workers], []
        seconds, dead = [], []
        for i, future in enumerate(receivers):
            try:
                seconds.append(self._one(i, future, "update_weights"))
            except WORKER_DIED:
                dead.append(i)
        try:
            self.trainers._all(senders, "broadcast_weights")
        except RayTaskError:
            if not dead:
                raise
        for i in dead:
            self._replace(i)
        return max(seconds, default=0.0)

    def sleep(self) -> None:
        self._all([w.sleep.remote() for w in self.workers], "sleep")

    def wake_up(self) -> None:
        self._all([w.wake_up.remote() for w in self.workers], "wake_up")

    def param_sums(self) -> list[dict[str, float]]:
        return self._all([w.param_sums.remote() for w in self.workers], "param_sums")

    def shutdown(self) -> None:
        for worker in self.workers:
            ray.kill(worker)
        for group in self.owned:
            remove_placement_group(group)
