"""What a run asks of the cluster, planned before anything is placed: bundles
per device, vLLM tensor parallelism the way vLLM expects it, a preflight that
refuses in one line, colocation rules and the device-dependent defaults.
Ray placement groups are checked against declared GPUs (no GPU needed)."""

import os

import pytest
import ray

from gradus.launch.config.load import load_config
from gradus.launch.errors import GradusError
from gradus.launch.run.faults import Watchdog, placement_ready
from gradus.launch.run.resources import check_combinations, engine_settings, model_dtype, plan, preflight
from gradus.trainer.rank_setup import optimizer_threads

DEFAULT = "configs/default.yaml"
GPU_NODE = {"CPU": 16.0, "GPU": 1.0, "memory": 1e11}


def _cfg(*overrides: str):
    return load_config(DEFAULT, list(overrides))


def test_default_config_on_one_gpu_is_refused_with_the_fix():
    problem = preflight(plan(_cfg(), "cuda"), [GPU_NODE])
    assert "needs 2 GPU (the cluster has 1)" in problem and "set cluster.colocate=true" in problem
    assert preflight(plan(_cfg("cluster.colocate=true"), "cuda"), [GPU_NODE]) is None
    assert preflight(plan(_cfg(), "cpu"), [{"CPU": 2.0}]) is None


def test_tensor_parallel_engines_get_a_group_with_a_gpu_per_bundle():
    placement = plan(_cfg("rollout.tensor_parallel_size=2", "rollout.num_workers=2"), "cuda")
    assert placement.rollout_strategy == "STRICT_PACK" and len(placement.rollout) == 2
    assert [b.get("GPU") for b in placement.rollout[0]] == [1.0, 1.0] and placement.rollout_actor_gpus == 0.0
    four = [{"CPU": 16.0, "GPU": 4.0}]
    assert "needs 5 GPU (the cluster has 4)" in preflight(placement, four)  # 1 trainer + 2 engines x 2
    two_nodes = [{"CPU": 16.0, "GPU": 3.0}, {"CPU": 16.0, "GPU": 3.0}]
    assert preflight(placement, two_nodes) is None
    single = [{"CPU": 16.0, "GPU": 1.0}] * 6  # 6 GPUs in all, but an engine's two never on one node
    assert "on one node" in preflight(placement, single)
    settings = engine_settings(_cfg("rollout.tensor_parallel_size=2"), "cuda", placement)
    assert settings["distributed_executor_backend"] == "ray" and settings["tensor_parallel_size"] == 2


def test_device_dependent_defaults():
    cfg = _cfg()
    assert engine_settings(cfg, "cpu", plan(cfg, "cpu")) == {"max_model_len": 512, "enforce_eager": True}
    gpu = engine_settings(cfg, "cuda", plan(cfg, "cuda"))
    assert gpu["enforce_eager"] is False and gpu["gpu_memory_utilization"] == 0.9
    colocated = _cfg("cluster.colocate=true", "rollout.num_workers=2", "trainer.world_size=1")
    assert (
        engine_settings(colocated, "cuda", plan(colocated, "cuda"))["gpu_memory_utilization"] == 0.25
    )  # 0.5 shared by 2
    assert engine_settings(_cfg("rollout.enforce_eager=true"), "cuda", plan(cfg, "cuda"))["enforce_eager"] is True
    assert [model_dtype(cfg, "cpu"), model_dtype(cfg, "cuda"), model_dtype(cfg, "cuda", bf16_supported=False)] == [
        "float32",
        "bfloat16",
        "float16",
    ]
    assert model_dtype(_cfg("model.dtype=float32"), "cuda") == "float32"


def test_colocation_rules():
    with pytest.raises(GradusError, match="which NCCL refuses; use sync.transport=object_store"):
        check_combinations(_cfg("cluster.colocate=true", "sync.transport=broadcast"), "cuda")
    with pytest.raises(GradusError, match="between sleep and wake-up"):
        check_combinations(_cfg("cluster.colocate=true", "rollout.async_generation=true"), "cuda")
    check_combinations(_cfg("cluster.colocate=true", "sync.transport=broadcast"), "cpu")  # gloo: fine
    with pytest.raises(GradusError, match="no device to receive the broadcast on; use sync.transport=object_store"):
        check_combinations(_cfg("sync.transport=broadcast", "rollout.tensor_parallel_size=2"), "cuda")
    check_combinations(_cfg("rollout.tensor_parallel_size=2"), "cuda")


def test_placement_groups_of_the_plan_are_placed_with_declared_gpus(capsys):
    """Ray schedules the plan's groups on a node that declares 4 GPUs (no GPU needed)."""
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    ray.init(num_cpus=4, num_gpus=4, include_dashboard=False, log_to_driver=False)
    try:
        placement = plan(
            _cfg("rollout.tensor_parallel_size=2", "trainer.cpus_per_rank=0.5", "rollout.cpus_per_worker=0.5"), "cuda"
        )
        groups = [placement_group(placement.trainer, strategy="PACK")]
        groups += [placement_group(g, strategy=placement.rollout_strategy) for g in placement.rollout]
        ray.get([g.ready() for g in groups], timeout=60)
        assert preflight(placement, [n["Resources"] for n in ray.nodes() if n["Alive"]]) is None
        for g in groups:
            remove_placement_group(g)
        too_many = plan(_cfg("rollout.tensor_parallel_size=4"), "cuda")
        assert "needs 5 GPU (the cluster has 4)" in preflight(too_many, [n["Resources"] for n in ray.nodes()])
        # what vLLM's Ray executor relies on: the engine actor (no GPU of its own) captures
        # its workers (a GPU each) into its group, one per bundle
        engine = placement_group(placement.rollout[0], strategy=placement.rollout_strategy)
        actor = Engine.options(
            num_cpus=0,
            num_gpus=placement.rollout_actor_gpus,
            scheduling_strategy=PlacementGroupSchedulingStrategy(engine, 0, placement_group_capture_child_tasks=True),
        ).remote()
        assert ray.get(actor.workers.remote(2), timeout=60) == [engine.id.hex()] * 2
        # an offloaded optimizer step gets the node's cores shared among its 4 GPUs
        cores = len(os.sched_getaffinity(0))
        assert ray.get(ray.remote(optimizer_threads).remote(1), timeout=60) == max(1, cores // 4)
        # a group the cluster can never hold: said on the console, then refused in one line
        stuck = placement_group([{"GPU": 1.0}] * 5, strategy="PACK")
        with pytest.raises(GradusError, match="Ray could not place the test group within 3 s"):
            placement_ready(stuck, Watchdog(3.0), "the test group", notice_s=1.0)
        assert "gradus: Ray has not placed the test group after 1 s" in capsys.readouterr().out
    finally:
        ray.shutdown()


@ray.remote(num_cpus=0)
class Engine:
    """Stands in for a tensor-parallel vLLM engine: starts `n` GPU workers with no
    placement of their own and reports the group each landed in."""

    def workers(self, n: int) -> list[str]:
        where = ray.remote(num_gpus=1, num_cpus=0)(lambda: ray.util.get_current_placement_group().id.hex())
        return ray.get([where.remote() for _ in range(n)])
