"""Runs killed with SIGKILL resume exactly; dead rollout workers and trainer
ranks are recovered. Each test drives the real CLI in a subprocess."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
TIMEOUT = 600


def _args(model: Path, run_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "launch.cli", "train", "configs/dump.yaml", f"model.path={model}", f"run.run_dir={run_dir}",
        "run.steps=4", "run.checkpoint_every=1", "wandb.mode=disabled", "rollout.max_tokens=16", "reward.length=1.0",
        "curriculum.budget={kind: constant, budget: 4}", "trainer.lr=1e-3", "eval.every=0", *extra,
    ]


def _metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _wait_for(condition, proc: subprocess.Popen, what: str) -> None:
    deadline = time.time() + TIMEOUT
    while not condition():
        assert proc.poll() is None, f"run exited ({proc.returncode}) before {what}"
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _kill_tree(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    subprocess.run(["ray", "stop", "--force"], capture_output=True)  # Ray's own daemons, if any outlived the driver


ASYNC = ("rollout.async_generation=true", "rollout.max_staleness=1", "run.checkpoint_every=2")


@pytest.mark.parametrize("mode, extra, kept", [
    ("sync", (), ["step-000002", "step-000003"]),  # keep_checkpoints=2
    # Async: step 1 is generated while step 0 trains, step 3 while step 2 trains (lag 1 both times).
    ("async", ASYNC, ["step-000001", "step-000003"]),
])
def test_sigkill_then_resume_matches_uninterrupted_run(tiny_model, tmp_path, mode, extra, kept):
    full, killed = tmp_path / "full", tmp_path / "killed"
    subprocess.run(_args(tiny_model, full, *extra), check=True, timeout=TIMEOUT, capture_output=True)

    proc = subprocess.Popen(_args(tiny_model, killed, *extra), start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(lambda: (killed / "checkpoints" / "step-000001" / "state.json").exists(), proc, "the step-2 checkpoint")
    _kill_tree(proc)
    assert len(_metrics(killed)) < 4, "the run finished before it was killed"

    resumed = subprocess.run([*_args(tiny_model, killed, *extra), "--resume"], timeout=TIMEOUT, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = _metrics(full), _metrics(killed)
    assert [m["step"] for m in b] == [0, 1, 2, 3]
    for ma, mb in zip(a, b):
        probs = sorted(k for k in ma if k.endswith("/prob"))
        assert probs and [ma[k] for k in probs] == [mb[k] for k in probs]  # curriculum: exactly
        for key in ("reward/mean", "accuracy", "train/loss", "length/tokens_mean", "train/grad_norm"):
            assert mb[key] == pytest.approx(ma[key], abs=1e-6), (ma["step"], key)
    if mode == "async":
        assert [m["async/lag_max"] for m in b] == [0, 1, 0, 1]
    assert sorted(p.name for p in (killed / "checkpoints").iterdir()) == kept


def _pids(pattern: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


@pytest.mark.parametrize("victim", ["ray::RolloutActor", "ray::TrainerWorker"])
def test_dead_worker_is_recovered(tiny_model, tmp_path, victim):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(_args(tiny_model, run_dir, "run.steps=5"), start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for(lambda: (run_dir / "checkpoints" / "step-000001" / "state.json").exists() and _pids(victim), proc, "step 2")
        for pid in _pids(victim):
            os.kill(pid, signal.SIGKILL)
        output, _ = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            _kill_tree(proc)
    assert proc.returncode == 0, output[-3000:]
    steps = [m["step"] for m in _metrics(run_dir)]
    assert steps == [0, 1, 2, 3, 4]
    if victim == "ray::RolloutActor":
        assert _metrics(run_dir)[-1]["faults/rollout_restarts"] >= 1
    else:
        assert "restarting from latest" in output
