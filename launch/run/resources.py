"""What a run asks of the cluster, decided before anything is placed: the
placement bundles of trainer ranks and rollout workers (vLLM tensor
parallelism the way vLLM expects it: one GPU per bundle, its workers in the
rollout worker's own placement group), a preflight that compares them with the
nodes and refuses in one line with the fix, and the settings whose default
depends on the device (compiled vLLM and bf16 on GPUs, eager float32 on CPU)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gradus.launch.config.schema import Config
from gradus.launch.errors import GradusError

COLOCATED_ROLLOUT_GPU_SHARE = 0.5  # of each trainer GPU, split between the rollout workers placed on it
OWN_GPU_MEMORY_UTILIZATION = 0.9  # vLLM's share of a GPU it has to itself


def bundle(cpus: float, gpus: float, resources: dict) -> dict[str, float]:
    return {"CPU": cpus, **({"GPU": gpus} if gpus else {}), **resources}


@dataclass
class Placement:
    """Bundles per placement group, and what each rollout actor itself takes."""

    trainer: list[dict[str, float]]  # one bundle per rank (colocated workers' CPUs and GPU share included)
    rollout: list[list[dict[str, float]]] = field(default_factory=list)  # empty when colocated
    rollout_strategy: str = "PACK"  # STRICT_PACK: a tensor-parallel engine's GPUs on one node
    rollout_actor_gpus: float = 0.0  # the actor's own GPU share (0 with TP > 1: vLLM's Ray workers take them)
    colocated_share: tuple[float, float] = (0.0, 0.0)  # (CPUs, GPU fraction) colocated workers take of a rank's bundle

    def bundles(self) -> list[dict[str, float]]:
        return [*self.trainer, *(b for group in self.rollout for b in group)]


def plan(cfg: Config, device: str) -> Placement:
    t, r = cfg.trainer, cfg.rollout
    gpu = 1.0 if device == "cuda" else 0.0
    if cfg.cluster.colocate:
        per_bundle = -(-r.num_workers // t.world_size)
        share = (per_bundle * r.cpus_per_worker, COLOCATED_ROLLOUT_GPU_SHARE if device == "cuda" else 0.0)
        trainer = [bundle(t.cpus_per_rank + share[0], gpu, t.resources)] * t.world_size
        return Placement(trainer, colocated_share=share, rollout_actor_gpus=share[1] / per_bundle)
    trainer = [bundle(t.cpus_per_rank, gpu, t.resources)] * t.world_size
    tp = r.tensor_parallel_size if device == "cuda" else 1
    if tp > 1:  # one placement group per engine: a GPU bundle per TP rank, the actor on the first (no GPU itself)
        group = [bundle(r.cpus_per_worker, 1.0, r.resources)] + [bundle(0.0, 1.0, {})] * (tp - 1)
        return Placement(trainer, [group] * r.num_workers, "STRICT_PACK", 0.0)
    return Placement(trainer, [[bundle(r.cpus_per_worker, gpu, r.resources)] * r.num_workers], "PACK", gpu)


def preflight(placement: Placement, nodes: list[dict[str, float]]) -> str | None:
    """Why the cluster's alive nodes (their resources) cannot hold the plan, or None:
    totals per resource, every bundle on some node, a tensor-parallel group on one node."""
    need: dict[str, float] = {}
    for b in placement.bundles():
        for key, value in b.items():
            need[key] = need.get(key, 0.0) + value
    have = {key: sum(n.get(key, 0.0) for n in nodes) for key in need}
    short = {key: (need[key], have[key]) for key in need if need[key] > have[key] + 1e-9}
    fixes = (
        "set cluster.colocate=true (rollout workers share the trainer ranks' GPUs), lower rollout.num_workers, "
        "rollout.tensor_parallel_size or trainer.world_size, or add nodes"
    )
    if short:
        listed = ", ".join(f"{need:g} {key} (the cluster has {have:g})" for key, (need, have) in short.items())
        return (
            f"the run needs {listed}: {len(placement.trainer)} trainer rank bundle(s) {placement.trainer[0]}"
            + (f" and rollout bundles {placement.rollout[0]}" if placement.rollout else "")
            + f"; {fixes}"
        )
    groups = [placement.trainer, *placement.rollout] if placement.rollout_strategy == "STRICT_PACK" else []
    for b in placement.bundles():
        if not any(all(n.get(k, 0.0) >= v for k, v in b.items()) for n in nodes):
            return f"no node can hold the bundle {b} (nodes: {nodes}); {fixes}"
    for group in groups[1:]:
        total = {k: sum(b.get(k, 0.0) for b in group) for k in {k for b in group for k in b}}
        if not any(all(n.get(k, 0.0) >= v for k, v in total.items()) for n in nodes):
            return (
                f"a tensor-parallel engine needs {total} on one node and no node has it; "
                "lower rollout.tensor_parallel_size to the GPUs of one node"
            )
    return None


def check_combinations(cfg: Config, device: str) -> None:
    """Settings that cannot work on this device, refused with the reason."""
    if device != "cuda":
        return
    if cfg.sync.transport == "broadcast" and cfg.rollout.tensor_parallel_size > 1:
        raise GradusError(
            "sync.transport=broadcast with rollout.tensor_parallel_size > 1: the rollout actor holds no GPU of its own "
            "(vLLM's tensor-parallel workers hold them), so it has no device to receive the broadcast on; use "
            "sync.transport=object_store (the default), whose CPU buckets reach every tensor-parallel worker"
        )
    if not cfg.cluster.colocate:
        return
    if cfg.sync.transport == "broadcast":
        raise GradusError(
            "cluster.colocate with sync.transport=broadcast would put trainer rank 0 and rollout worker 0 in one NCCL "
            "group on one GPU, which NCCL refuses; use sync.transport=object_store (the default) with colocation"
        )
    if cfg.rollout.async_generation:
        raise GradusError(
            "cluster.colocate with rollout.async_generation: vLLM sleeps through each update on the shared GPU, and a "
            "batch generated ahead would land between sleep and wake-up; use one of the two"
        )


def engine_settings(cfg: Config, device: str, placement: Placement) -> dict[str, Any]:
    """vLLM settings with device-dependent defaults resolved: compiled (CUDA graphs)
    on GPUs and eager on CPU unless rollout.enforce_eager says; a GPU memory share
    of 0.9 with GPUs of its own, or the colocated share divided among the workers
    sharing a GPU, unless rollout.gpu_memory_utilization says."""
    r = cfg.rollout
    eager = r.enforce_eager if r.enforce_eager is not None else device != "cuda"
    settings: dict[str, Any] = {"max_model_len": r.max_model_len, "enforce_eager": eager}
    if device == "cuda":
        share = OWN_GPU_MEMORY_UTILIZATION if not cfg.cluster.colocate else placement.rollout_actor_gpus
        settings.update(
            tensor_parallel_size=r.tensor_parallel_size, gpu_memory_utilization=r.gpu_memory_utilization or share
        )
        if r.tensor_parallel_size > 1 and not cfg.cluster.colocate:
            settings["distributed_executor_backend"] = "ray"  # its workers go into the engine's placement group
    return settings


def model_dtype(cfg: Config, device: str, bf16_supported: bool = True) -> str:
    """model.dtype with "auto" resolved: bf16 on GPUs that support it, else fp16;
    float32 on CPU (bf16 is emulated and ~4x slower there)."""
    if cfg.model.dtype != "auto":
        return cfg.model.dtype
    if device != "cuda":
        return "float32"
    return "bfloat16" if bf16_supported else "float16"
