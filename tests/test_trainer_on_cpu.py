"""DeepSpeed trainer ranks on a local Ray (no vLLM): data-parallel and ZeRO
equivalence on the same batch."""

import dataclasses

import numpy as np
import pytest
import ray

from gradus.trainer.batching import TrainSample
from gradus.trainer.config import TrainerConfig
from gradus.launch.run.groups import TRAINER_MALLOC, TrainerGroup
from gradus.trainer.rank_setup import FIXED_MMAP_THRESHOLD, MMAP_THRESHOLD_ENV

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _batch(seed: int = 0, n: int = 12) -> list[TrainSample]:
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(n):
        prompt = rng.integers(3, 64, size=int(rng.integers(4, 9))).tolist()
        tokens = rng.integers(3, 64, size=int(rng.integers(2, 12))).tolist()
        samples.append(TrainSample(prompt, tokens, [-2.0] * len(tokens), float(rng.normal())))
    return samples


def _master_is_partition(worker) -> bool:
    opt = worker.engine.optimizer
    return all(
        m.data_ptr() == p.data_ptr() for m, p in zip(opt.fp32_partitioned_groups_flat, opt.fp16_partitioned_groups_flat)
    )


def _train(
    model,
    world_size: int,
    batch: list[dict] | None = None,
    skip: bool = True,
    then: list[dict] | None = None,
    delta: bool = False,
    check_moved: bool = True,
    **overrides,
) -> tuple[dict[str, np.ndarray], list[dict]]:
    """One update on `batch`: the weights after it (with `delta`, minus the weights
    before) and every rank's stats. `then`: a batch with nothing informative,
    trained next, must complete (one dummy pass per rank) without a forward over
    its samples."""
    cfg = dataclasses.replace(
        TrainerConfig(), **{"lr": 1e-4, "threads": 1, "max_tokens_per_micro_batch": 48, **overrides}
    )
    group = TrainerGroup(world_size, threads=1)
    try:
        group.setup(str(model), "float32", cfg, seed=0, total_steps=2)
        group.weight_layout(0.05)  # under ZeRO-3 exports then gather ~50 KB pieces, never the whole model
        saving = overrides.get("zero_stage") == 3 or overrides.get(
            "gradient_checkpointing"
        )  # memory over speed: freed blocks go back
        expected = (
            int(TRAINER_MALLOC[MMAP_THRESHOLD_ENV]) if TRAINER_MALLOC else FIXED_MMAP_THRESHOLD if saving else None
        )
        assert ray.get(group.ranks[0].__ray_call__.remote(lambda w: w.mmap_threshold)) == expected
        if overrides.get("zero_stage") == 3:  # the fp32 master is the partition itself, no second copy
            assert all(ray.get([r.__ray_call__.remote(_master_is_partition) for r in group.ranks]))
        before = ray.get(group.export_weights())
        stats = group.train(batch or _batch(), cfg.mini_batches, cfg.max_tokens_per_micro_batch, skip)
        after = ray.get(group.export_weights())
        if then is not None:
            idle = group.train(then, cfg.mini_batches, cfg.max_tokens_per_micro_batch, skip)
            assert [s["tokens"] for s in idle] == [0.0] * world_size and [s["micro_batches"] for s in idle] == [
                1
            ] * world_size
    finally:
        group.shutdown()
    assert not check_moved or max(np.abs(after[k] - before[k]).max() for k in after) > 5e-5, "the step changed nothing"
    return ({k: after[k] - before[k] for k in after} if delta else after), stats


def _max_rel_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    """Largest difference of two weight updates, relative to the largest update."""
    scale = max(float(np.abs(a[k]).max()) for k in a)
    assert scale > 1e-4
    return _max_diff(a, b) / scale


def _max_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    assert a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)
    return max(float(np.abs(a[k] - b[k]).max()) for k in a)


@pytest.mark.parametrize(
    "extra", [{}, {"ppo_epochs": 2, "mini_batches": 2, "kl_coef": 0.1}], ids=["one-update", "epochs-minibatches-kl"]
)
def test_two_ranks_equal_one_rank(local_ray, tiny_model, extra):
    """Plain SGD (lr 0.1, no clipping): the weights move by lr x gradient, so any gradient error
    shows in proportion (Adam's first step is nearly sign-only and hides a 2x error)."""
    one, stats_one = _train(tiny_model, 1, delta=True, optimizer="sgd", lr=0.1, grad_clip=0.0, **extra)
    two, stats_two = _train(tiny_model, 2, delta=True, optimizer="sgd", lr=0.1, grad_clip=0.0, **extra)
    assert _max_rel_diff(one, two) < 1e-4
    assert len(stats_two) == 2 and all(s["micro_batches"] >= 1 for s in stats_two)
    if extra:
        assert sum(s["kl"] for s in stats_one) > 0


def test_huge_log_ratio_no_longer_drops_the_update(local_ray, tiny_model):
    """Old log-probs (vLLM's) of two samples 100 nats below the trainer's: exp(~98)
    overflowed float32 and every one of the 4 epochs' updates was dropped as
    non-finite. With verl's clamp of the log-ratio to +-20 (dual-clip off) all 4
    apply; the forced tokens saturate the clamp and add no gradient."""
    batch = _batch()
    forced = [i for i, s in enumerate(batch) if s.advantage < 0][:1] + [
        i for i, s in enumerate(batch) if s.advantage > 0
    ][:1]
    for i in forced:
        batch[i].logprobs = [-100.0 - 2.0] * len(batch[i].tokens)
    _, stats = _train(tiny_model, 1, batch, ppo_epochs=4, old_logprobs="rollout")  # asserts the weights moved
    assert stats[0]["skipped_updates"] == 0.0
    assert stats[0]["clip_tokens"] >= sum(len(batch[i].tokens) for i in forced)


@pytest.mark.parametrize("stage", [1, 3])
def test_skipping_and_shared_prompts_under_zero(local_ray, tiny_model, stage):
    """2 ranks: zero-advantage and padding samples get no forward/backward, each
    group's prompt is encoded once, and the update equals the plain path's (the
    gradient equality itself is shown on the model in tests/test_loss.py; with
    plain SGD a wrong gradient shows in proportion)."""
    batch = _batch(n=12)
    for g in range(3):  # three groups of 4 samples sharing a prompt
        for s in batch[4 * g : 4 * g + 4]:
            s.prompt_ids = list(batch[4 * g].prompt_ids)
    for s in batch[4:8]:
        s.advantage = 0.0  # an all-equal group
    batch[-1].weight = 0.0  # padding
    sgd = {"delta": True, "optimizer": "sgd", "lr": 0.1, "grad_clip": 0.0, "zero_stage": stage}
    plain, _ = _train(tiny_model, 2, batch, skip=False, share_prompts=False, **sgd)
    fast, stats = _train(tiny_model, 2, batch, then=[dataclasses.replace(s, advantage=0.0) for s in batch], **sgd)
    assert _max_rel_diff(plain, fast) < 1e-4
    assert sum(s["tokens"] for s in stats) == sum(
        len(s.tokens) for i, s in enumerate(batch) if i not in range(4, 8) and i != 11
    )


def test_zero3_equals_zero2_and_exports_full_weights(local_ray, tiny_model):
    """Two epochs with a KL term: ZeRO-3 (built inside zero.Init, its reference a
    sharded engine of its own, gradient checkpointing on) updates exactly as ZeRO-2
    (a plain reference copy, no checkpointing); its export, gathered piece by
    piece, holds every full tensor."""
    from transformers import AutoModelForCausalLM

    sgd = {
        "ppo_epochs": 2,
        "kl_coef": 0.1,
        "delta": True,
        "optimizer": "sgd",
        "lr": 0.1,
        "grad_clip": 0.0,
    }  # updates, in proportion
    z2, stats2 = _train(tiny_model, 2, zero_stage=2, **sgd)
    z3, stats3 = _train(tiny_model, 2, zero_stage=3, gradient_checkpointing=True, **sgd)
    assert _max_rel_diff(z2, z3) < 1e-4
    assert (
        sum(s["kl"] for s in stats3) == pytest.approx(sum(s["kl"] for s in stats2), rel=1e-4)
        and sum(s["kl"] for s in stats3) > 0
    )
    reference = AutoModelForCausalLM.from_pretrained(tiny_model).state_dict()
    assert {k: tuple(v.shape) for k, v in reference.items()} == {k: v.shape for k, v in z3.items()}


@pytest.mark.parametrize(
    "extra",
    [{"zero_stage": 3}, {"lora": {"rank": 4, "target_modules": ["q_proj", "down_proj"]}}],
    ids=["zero3-sharded", "lora-disabled"],
)
def test_sequence_kl_for_reward_matches_reference_model(local_ray, tiny_model, extra):
    """After an update, the KL-in-reward against the reference (a ZeRO-3 engine of
    its own, or the LoRA policy with adapters disabled) equals the KL against the
    base model loaded separately. Small micro-batches over 2 ranks: rank 1 runs
    padding forwards to keep the sharded forwards in step. With LoRA only the
    adapted weights move (export: merged, base names)."""
    import torch
    from transformers import AutoModelForCausalLM

    from gradus.trainer.config import LoraConfig
    from gradus.trainer.loss import completion_logprobs

    lora = {"lora": LoraConfig(**extra["lora"])} if "lora" in extra else {}
    cfg = dataclasses.replace(
        TrainerConfig(),
        lr=1e-2,
        threads=1,
        kl_coef=0.1,
        kl_in="reward",
        kl_kind="k1",
        max_tokens_per_micro_batch=20,
        **{**extra, **lora},
    )
    group = TrainerGroup(2, threads=1)
    samples = _batch(n=5)
    try:
        group.setup(str(tiny_model), "float32", cfg, seed=0, total_steps=1)
        before = ray.get(group.export_weights())
        group.train(_batch(), 1, 48)
        after = ray.get(group.export_weights())
        kls = group.sequence_kl(samples)
    finally:
        group.shutdown()
    changed = {k for k in after if not np.array_equal(after[k], before[k])}
    targets = extra.get("lora", {}).get("target_modules", [""])
    assert changed == {k for k in after if any(f"{t}.weight" in k for t in targets)}  # LoRA: only the adapted layers
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    for sample, kl in zip(samples, kls):
        with torch.no_grad():
            ref = completion_logprobs(model, [sample])
        expected = sum(-2.0 - v for v in ref["logp"][ref["predicts"]].tolist())  # k1 = logp - ref_logp, vLLM logp = -2
        assert kl == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_nonfinite_loss_skips_the_update_on_every_rank(local_ray, tiny_model, stage):
    cfg = dataclasses.replace(TrainerConfig(), lr=1e-4, threads=1, max_tokens_per_micro_batch=48, zero_stage=stage)
    group = TrainerGroup(2, threads=1)
    try:
        group.setup(str(tiny_model), "float32", cfg, seed=0, total_steps=2)
        before = ray.get(group.export_weights())
        poisoned = _batch()
        poisoned[3].advantage = float("nan")
        stats = group.train(poisoned, 1, cfg.max_tokens_per_micro_batch)
        assert [s["skipped_updates"] for s in stats] == [1.0, 1.0]
        assert _max_diff(before, ray.get(group.export_weights())) == 0.0
        stats = group.train(_batch(), 1, cfg.max_tokens_per_micro_batch)  # training goes on afterwards
        assert [s["skipped_updates"] for s in stats] == [0.0, 0.0]
        assert _max_diff(before, ray.get(group.export_weights())) > 5e-5
    finally:
        group.shutdown()


@pytest.mark.parametrize(
    "saved, resumed",
    [((2, 2), (1, 1)), ((1, 0), (2, 3))],
    ids=["2ranks-zero2-to-1rank-zero1", "1rank-zero0-to-2ranks-zero3"],
)
def test_checkpoint_resumes_on_another_world_size_and_zero_stage(local_ray, tiny_model, tmp_path, saved, resumed):
    """The checkpoint is consolidated: loaded at another world size and ZeRO stage
    it gives back the same fp32 weights and Adam moments, and the next update
    matches the one the saving run makes (up to reduction order)."""

    def group(world_size: int, stage: int) -> TrainerGroup:
        cfg = dataclasses.replace(TrainerConfig(), lr=1e-3, threads=1, max_tokens_per_micro_batch=48, zero_stage=stage)
        trainers = TrainerGroup(world_size, threads=1)
        trainers.setup(str(tiny_model), "float32", cfg, seed=0, total_steps=4)
        return trainers

    first = group(*saved)
    try:
        first.train(_batch(0), 1, 48)
        first.save_checkpoint(str(tmp_path))
        state = first.checkpoint_state()
        stats = first.train(_batch(1), 1, 48)
        expected = ray.get(first.export_weights())
    finally:
        first.shutdown()
    assert {k.split("/")[0] for k in state} == {"param", "exp_avg", "exp_avg_sq"}
    assert (
        max(float(np.abs(v).max()) for k, v in state.items() if k.startswith("exp_avg_sq/")) > 0
    )  # moments exist after one update
    second = group(*resumed)
    try:
        assert second.load_checkpoint(str(tmp_path)) == {"world_size": saved[0], "zero_stage": saved[1]}
        assert _max_diff(state, second.checkpoint_state()) < 1e-6
        resumed_stats = second.train(_batch(1), 1, 48)
        assert _max_diff(expected, ray.get(second.export_weights())) < 1e-5
        assert resumed_stats[0]["lr"] == stats[0]["lr"]
        assert resumed_stats[0]["grad_norm"] == pytest.approx(
            stats[0]["grad_norm"], rel=1e-5
        )  # ZeRO-0 (one rank) keeps the norm too
        second.load_checkpoint(str(tmp_path), {"lr": 5e-3, "weight_decay": 0.1})  # a resume that changes them
        assert second.train(_batch(1), 1, 48)[0]["lr"] == pytest.approx(5e-3)
        assert (
            ray.get(second.ranks[0].__ray_call__.remote(lambda w: w.engine.optimizer.param_groups[0]["weight_decay"]))
            == 0.1
        )
    finally:
        second.shutdown()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("weights")) == sorted(
        ["trainer_state.json", *(f"rng-{r}.json" for r in range(saved[0]))]
    )  # JSON and safetensors only


def test_loss_is_a_mean_over_updates(local_ray, tiny_model):
    """train/loss is the mean over optimiser steps, as grad_norm is: two epochs over
    two mini-batches at a negligible lr report the mean of the two halves' losses
    (a sum would be 4x that)."""
    tiny = {"optimizer": "sgd", "lr": 1e-9}
    _, four = _train(tiny_model, 1, ppo_epochs=2, mini_batches=2, **tiny, check_moved=False)
    halves = [
        _train(tiny_model, 1, batch, **tiny, check_moved=False)[1][0]["loss"] for batch in (_batch()[:6], _batch()[6:])
    ]
    assert four[0]["loss"] == pytest.approx(sum(halves) / 2, rel=1e-3) and abs(sum(halves)) > 1e-3


def test_gpu_smoke_tier_a_runs_on_cpu():
    """benchmarks/gpu_smoke.py's tier A (bf16 with fp32 masters, ZeRO-3 bf16, LoRA +
    checkpointing, the loss under bf16, checkpoint + resume) on CPU: every check passes,
    so on a GPU a FAIL points at the machine, not at the script."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_smoke.py"), "--tier", "A", "--device", "cpu"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    lines = [line for line in out.stdout.splitlines() if line[:4] in ("PASS", "FAIL", "SKIP")]
    assert out.returncode == 0 and [line[:7] for line in lines] == [
        "PASS A1",
        "PASS A2",
        "SKIP A3",
        "PASS A4",
        "PASS A5",
        "PASS A6",
    ], out.stdout + out.stderr[-3000:]
