"""Async rollout on CPU (tiny model, real Ray + vLLM + DeepSpeed): staleness 0
reproduces the synchronous run; staleness 1 overlaps generation with training
and never trains on a sample more than one policy version old. Slow (~3 minutes)."""

import json

import pytest

from gradus.launch.config.load import load_config
from gradus.launch.run.loop import train

pytestmark = pytest.mark.e2e

COMMON = [
    "run.steps=4",
    "run.checkpoint_every=0",
    "eval.every=0",
    "rollout.max_tokens=16",
    "trainer.lr=1e-3",
    "rollout.prompts_per_step=6",
    "rollout.threads=1",
    "trainer.threads=1",
    "reward.length=1.0",
    "curriculum.budget={kind: constant, budget: 4}",
]  # rewards vary: every step has something to train


def _run(tiny_model, run_dir, *extra) -> list[dict]:
    cfg = load_config("configs/default.yaml", [f"model.path={tiny_model}", f"run.run_dir={run_dir}", *COMMON, *extra])
    train(cfg)
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_staleness_zero_is_the_synchronous_loop(tiny_model, tmp_path):
    sync = _run(tiny_model, tmp_path / "sync")
    lagged = _run(tiny_model, tmp_path / "async0", "rollout.async_generation=true", "rollout.max_staleness=0")
    assert [m["step"] for m in lagged] == [0, 1, 2, 3]
    for a, b in zip(sync, lagged):
        probs = sorted(k for k in a if k.endswith("/prob"))
        assert [a[k] for k in probs] == [b[k] for k in probs]  # the curriculum: exactly
        for key in ("reward/mean", "accuracy", "train/loss", "train/grad_norm", "length/tokens_mean", "policy_version"):
            assert b[key] == pytest.approx(a[key], abs=1e-6), (a["step"], key)
        assert b["async/lag_max"] == 0 and "train/stale_tokens" not in b


def test_staleness_one_bounds_the_lag_and_corrects_off_policy_tokens(tiny_model, tmp_path):
    metrics = _run(tiny_model, tmp_path / "async1", "rollout.async_generation=true", "rollout.max_staleness=1")
    assert [m["step"] for m in metrics] == [0, 1, 2, 3]
    for m in metrics:  # from the versions each rollout worker stamped on its groups
        assert 0 <= m["async/trained_version"] - m["async/generated_version_min"] == m["async/lag_max"] <= 1
    stale = [m for m in metrics if m["async/lag_max"] == 1]
    assert stale, "generation never overlapped training"
    for m in stale:
        assert m["train/stale_tokens"] > 0
        assert 0 < m["train/importance_weight_mean"] <= 2.0 and m["train/importance_weight_max"] > 0
